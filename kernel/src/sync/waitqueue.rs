//! A queue of blocked threads. The condition is checked under the queue's lock, and a waker
//! changes state before taking that lock, so no wake-up is lost between check and sleep.

use alloc::collections::VecDeque;

use super::checker;
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched::{self, WakeToken};
use crate::time;

pub struct WaitQueue {
    waiters: RawSpinLock<VecDeque<WakeToken>>,
}

impl WaitQueue {
    pub const fn new() -> WaitQueue {
        WaitQueue {
            waiters: RawSpinLock::new(VecDeque::new()),
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
            waiters.push_back(token.clone());
            let was_on = waiters.unlock_keep_irqs_off();
            if sched::block(&token, deadline_ns) {
                self.waiters.lock().retain(|t| !t.is_for(&token));
            }
            interrupts::restore(was_on);
        }
    }

    pub fn wake_one(&self) -> bool {
        let mut waiters = self.waiters.lock();
        while let Some(token) = waiters.pop_front() {
            if sched::wake(&token) {
                return true;
            }
        }
        false
    }

    pub fn wake_all(&self) -> usize {
        let mut waiters = self.waiters.lock();
        let mut woken = 0;
        while let Some(token) = waiters.pop_front() {
            woken += usize::from(sched::wake(&token));
        }
        woken
    }

    pub fn waiting(&self) -> usize {
        self.waiters.lock().len()
    }
}
