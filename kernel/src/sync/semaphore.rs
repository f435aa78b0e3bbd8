//! Counting semaphore. `up` hands a permit straight to the longest waiter.

use super::waiters::Waiters;

use super::checker;
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched;
use crate::time;

struct State {
    permits: usize,
    waiters: Waiters,
}

pub struct Semaphore {
    state: RawSpinLock<State>,
}

impl Semaphore {
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: RawSpinLock::new(State {
                permits,
                waiters: Waiters::new(),
            }),
        }
    }

    #[track_caller]
    pub fn down(&self) {
        self.down_deadline(None);
    }

    /// Returns false when the timeout passed without a permit.
    #[track_caller]
    pub fn down_timeout(&self, timeout_ns: u64) -> bool {
        self.down_deadline(Some(time::now_ns() + timeout_ns))
    }

    #[track_caller]
    fn down_deadline(&self, deadline_ns: Option<u64>) -> bool {
        checker::assert_may_block("semaphore");
        let mut state = self.state.lock();
        if state.permits > 0 {
            state.permits -= 1;
            return true;
        }
        let token = sched::prepare_block();
        state.waiters.push(token.clone());
        let was_on = state.unlock_keep_irqs_off();
        let timed_out = sched::block(&token, deadline_ns);
        if timed_out {
            // If the timer won, a racing up() failed to wake us and passed the permit on.
            self.state.lock().waiters.remove(&token);
        }
        interrupts::restore(was_on);
        !timed_out
    }

    pub fn try_down(&self) -> bool {
        let mut state = self.state.lock();
        if state.permits > 0 {
            state.permits -= 1;
            true
        } else {
            false
        }
    }

    /// Safe in interrupt context.
    pub fn up(&self) {
        let mut state = self.state.lock();
        if state.waiters.wake_one().is_none() {
            state.permits += 1;
        }
    }

    pub fn permits(&self) -> usize {
        self.state.lock().permits
    }
}
