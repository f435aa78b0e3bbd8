//! The FIFO of blocked threads every sleeping primitive keeps under its own raw lock. A token
//! whose thread was already woken (by a timeout) fails to wake, and the next one is tried, so
//! a wake-up is never spent on a thread that no longer waits.

use alloc::collections::VecDeque;

use crate::sched::{self, WakeToken};

pub(super) struct Waiters(VecDeque<WakeToken>);

impl Waiters {
    pub const fn new() -> Waiters {
        Waiters(VecDeque::new())
    }

    pub fn push(&mut self, token: WakeToken) {
        self.0.push_back(token);
    }

    /// Wakes the longest waiter still blocked; returns its thread id.
    pub fn wake_one(&mut self) -> Option<u64> {
        while let Some(token) = self.0.pop_front() {
            if sched::wake(&token) {
                return Some(token.thread().id);
            }
        }
        None
    }

    pub fn wake_all(&mut self) -> usize {
        let mut woken = 0;
        while self.wake_one().is_some() {
            woken += 1;
        }
        woken
    }

    /// Drops a waiter that gave up (timed out).
    pub fn remove(&mut self, token: &WakeToken) {
        self.0.retain(|t| !t.is_for(token));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}
