//! A queue of blocked threads. The condition is checked under the queue's lock, and a waker
//! changes state before taking that lock, so no wake-up is lost between check and sleep.

use super::waiters::Waiters;

use super::checker;
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched;
use crate::time;

pub struct WaitQueue {
    waiters: RawSpinLock<Waiters>,
}

impl WaitQueue {
    pub const fn new() -> WaitQueue {
        WaitQueue {
            waiters: RawSpinLock::new(Waiters::new()),
        }
    }

    /// Blocks while `condition()` holds, until woken and it no longer holds, or until
    /// `deadline_ns`. Returns false on timeout.
    #[track_caller]
    pub fn wait_while(
        &self,
        deadline_ns: Option<u64>,
        mut condition: impl FnMut() -> bool,
    ) -> bool {
        checker::assert_may_block("wait queue");
        loop {
            let mut waiters = self.waiters.lock();
            if !condition() {
                return true;
            }
            if deadline_ns.is_some_and(|d| time::now_ns() >= d) {
                return false;
            }
            let token = sched::prepare_block();
            waiters.push(token.clone());
            let was_on = waiters.unlock_keep_irqs_off();
            if sched::block(&token, deadline_ns) {
                self.waiters.lock().remove(&token);
            }
            interrupts::restore(was_on);
        }
    }

    pub fn wake_one(&self) -> bool {
        self.waiters.lock().wake_one().is_some()
    }

    pub fn wake_all(&self) -> usize {
        self.waiters.lock().wake_all()
    }

    pub fn waiting(&self) -> usize {
        self.waiters.lock().len()
    }
}
