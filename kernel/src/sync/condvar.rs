//! Condition variable over [`Mutex`]: wait releases the mutex and blocks as one step (the
//! waiter is queued before the mutex is released), then re-takes it.

use super::waiters::Waiters;

use super::checker;
use super::mutex::MutexGuard;
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched;
use crate::time;

pub struct CondVar {
    waiters: RawSpinLock<Waiters>,
}

impl CondVar {
    pub const fn new() -> CondVar {
        CondVar {
            waiters: RawSpinLock::new(Waiters::new()),
        }
    }

    #[track_caller]
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait_deadline(guard, None).0
    }

    /// Waits at most `timeout_ns`; the bool is true when it timed out.
    #[track_caller]
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout_ns: u64,
    ) -> (MutexGuard<'a, T>, bool) {
        self.wait_deadline(guard, Some(time::now_ns() + timeout_ns))
    }

    #[track_caller]
    pub fn wait_deadline<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline_ns: Option<u64>,
    ) -> (MutexGuard<'a, T>, bool) {
        checker::assert_may_block("condvar wait");
        let mutex = guard.mutex();
        // The guard's ownership passes to this function: release by hand, re-take by hand.
        core::mem::forget(guard);
        let mut waiters = self.waiters.lock();
        let token = sched::prepare_block();
        waiters.push(token.clone());
        mutex.release_raw();
        let was_on = waiters.unlock_keep_irqs_off();
        // Wake-ups are a compare-and-swap: if the timer won, a racing notify failed on our
        // token and moved on to the next waiter, so nothing is lost.
        let timed_out = sched::block(&token, deadline_ns);
        if timed_out {
            self.waiters.lock().remove(&token);
        }
        interrupts::restore(was_on);
        mutex.acquire_raw();
        (super::mutex::reguard(mutex), timed_out)
    }

    pub fn notify_one(&self) -> bool {
        self.waiters.lock().wake_one().is_some()
    }

    pub fn notify_all(&self) -> usize {
        self.waiters.lock().wake_all()
    }
}
