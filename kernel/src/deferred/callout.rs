//! Callouts: work that runs at a time, in thread context (the `softclock` thread), so it may
//! take sleepable locks. `cancel` and `schedule` are safe against a callout that is running:
//! cancel then reports "not stopped" and prevents any re-arm; [`Callout::cancel_sync`] also
//! waits for the running call to return.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sched::{self, Priority};
use crate::sync::{SpinLock, WaitQueue};
use crate::time;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    Pending {
        key: (u64, u64),
    },
    /// Running now; `rearm` is a deadline asked for while it ran.
    Running {
        rearm: Option<u64>,
    },
}

struct Inner {
    func: Box<dyn Fn() + Send + Sync>,
    state: SpinLock<State>,
    finished: WaitQueue,
    runs: AtomicU64,
    /// Set while `cancel_sync` waits: re-arming (from the running function itself) is ignored.
    draining: AtomicBool,
}

/// A handle to one callout; clones refer to the same callout.
#[derive(Clone)]
pub struct Callout {
    inner: Arc<Inner>,
}

static WHEEL: SpinLock<BTreeMap<(u64, u64), Arc<Inner>>> =
    SpinLock::new("callout.wheel", BTreeMap::new());
static WHEEL_CHANGED: WaitQueue = WaitQueue::new();
static KICKED: AtomicBool = AtomicBool::new(false);
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Starts the softclock thread.
pub fn init() {
    sched::Spawn::new("softclock")
        .priority(Priority::Driver)
        .start(softclock);
}

impl Callout {
    pub fn new(func: impl Fn() + Send + Sync + 'static) -> Callout {
        Callout {
            inner: Arc::new(Inner {
                func: Box::new(func),
                state: SpinLock::new("callout.state", State::Idle),
                finished: WaitQueue::new(),
                runs: AtomicU64::new(0),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// (Re)arms the callout to run `delay_ns` from now, replacing any earlier arming.
    pub fn schedule(&self, delay_ns: u64) {
        let deadline = time::now_ns() + delay_ns;
        let mut state = self.inner.state.lock();
        if self.inner.draining.load(Ordering::Acquire) {
            return;
        }
        match *state {
            State::Running { .. } => {
                *state = State::Running {
                    rearm: Some(deadline),
                }
            }
            State::Pending { key } => {
                let mut wheel = WHEEL.lock();
                wheel.remove(&key);
                let key = (deadline, NEXT_KEY.fetch_add(1, Ordering::Relaxed));
                wheel.insert(key, self.inner.clone());
                *state = State::Pending { key };
            }
            State::Idle => {
                let key = (deadline, NEXT_KEY.fetch_add(1, Ordering::Relaxed));
                WHEEL.lock().insert(key, self.inner.clone());
                *state = State::Pending { key };
            }
        }
        drop(state);
        KICKED.store(true, Ordering::Release);
        WHEEL_CHANGED.wake_all();
    }

    /// Stops a pending callout. Returns true if this prevented a run; false if it was idle or
    /// is running right now (a re-arm asked for during that run is dropped too).
    pub fn cancel(&self) -> bool {
        let mut state = self.inner.state.lock();
        match *state {
            State::Pending { key } => {
                WHEEL.lock().remove(&key);
                *state = State::Idle;
                true
            }
            State::Running { .. } => {
                *state = State::Running { rearm: None };
                false
            }
            State::Idle => false,
        }
    }

    /// Like [`cancel`](Self::cancel), and also waits for a running call to return, ignoring any
    /// re-arm it asks for meanwhile: once this returns the function is not running and will not
    /// run until scheduled again.
    pub fn cancel_sync(&self) -> bool {
        self.inner.draining.store(true, Ordering::Release);
        let stopped = self.cancel();
        let inner = self.inner.clone();
        self.inner.finished.wait_while(None, || {
            matches!(*inner.state.lock(), State::Running { .. })
        });
        self.inner.draining.store(false, Ordering::Release);
        stopped
    }

    pub fn is_pending(&self) -> bool {
        matches!(*self.inner.state.lock(), State::Pending { .. })
    }

    pub fn runs(&self) -> u64 {
        self.inner.runs.load(Ordering::Relaxed)
    }
}

fn next_expired(now: u64) -> Option<((u64, u64), Arc<Inner>)> {
    let mut wheel = WHEEL.lock();
    let (&key, _) = wheel.first_key_value()?;
    if key.0 > now {
        return None;
    }
    wheel.remove_entry(&key)
}

fn softclock() {
    loop {
        let now = time::now_ns();
        while let Some((key, callout)) = next_expired(now) {
            {
                let mut state = callout.state.lock();
                if *state != (State::Pending { key }) {
                    continue; // cancelled or re-armed between wheel and state
                }
                *state = State::Running { rearm: None };
            }
            (callout.func)();
            callout.runs.fetch_add(1, Ordering::Relaxed);
            let mut state = callout.state.lock();
            if let State::Running {
                rearm: Some(deadline),
            } = *state
            {
                let key = (deadline, NEXT_KEY.fetch_add(1, Ordering::Relaxed));
                WHEEL.lock().insert(key, callout.clone());
                *state = State::Pending { key };
            } else {
                *state = State::Idle;
            }
            drop(state);
            callout.finished.wake_all();
        }
        let first = WHEEL.lock().first_key_value().map(|(k, _)| k.0);
        WHEEL_CHANGED.wait_while(first, || !KICKED.swap(false, Ordering::AcqRel));
    }
}
