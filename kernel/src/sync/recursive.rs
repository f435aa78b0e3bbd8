//! A recursive sleepable lock (owner + depth) for driver paths that re-enter, such as a
//! driver's stop() calling helpers that lock again. Gives shared access only: wrap mutable
//! state in a Cell/RefCell inside.

use super::waiters::Waiters;
use core::cell::UnsafeCell;
use core::ops::Deref;
use core::panic::Location;

use super::checker::{self, LockClass, LockKind};
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched;

struct State {
    owner: Option<u64>,
    depth: u32,
    waiters: Waiters,
}

pub struct RecursiveMutex<T> {
    class: LockClass,
    state: RawSpinLock<State>,
    data: UnsafeCell<T>,
}

// SAFETY: only one thread at a time holds the lock; it gets &T, so T must be Send to move
// between threads' use.
unsafe impl<T: Send> Sync for RecursiveMutex<T> {}

impl<T> RecursiveMutex<T> {
    pub const fn new(name: &'static str, value: T) -> RecursiveMutex<T> {
        RecursiveMutex {
            class: LockClass::new(name),
            state: RawSpinLock::new(State {
                owner: None,
                depth: 0,
                waiters: Waiters::new(),
            }),
            data: UnsafeCell::new(value),
        }
    }

    #[track_caller]
    pub fn lock(&self) -> RecursiveGuard<'_, T> {
        let me = sched::current_ref().id;
        let mut state = self.state.lock();
        if state.owner == Some(me) {
            state.depth += 1;
            return RecursiveGuard { lock: self };
        }
        drop(state);
        checker::assert_may_block(self.class.name());
        checker::on_acquire(
            &self.class,
            LockKind::Sleep,
            self as *const _ as usize,
            Location::caller(),
        );
        let mut state = self.state.lock();
        if state.owner.is_none() {
            state.owner = Some(me);
            state.depth = 1;
            return RecursiveGuard { lock: self };
        }
        let token = sched::prepare_block();
        state.waiters.push(token.clone());
        let was_on = state.unlock_keep_irqs_off();
        sched::block(&token, None);
        interrupts::restore(was_on);
        RecursiveGuard { lock: self }
    }

    /// How deep the current owner has locked (0 = free).
    pub fn depth(&self) -> u32 {
        self.state.lock().depth
    }
}

pub struct RecursiveGuard<'a, T> {
    lock: &'a RecursiveMutex<T>,
}

impl<T> Deref for RecursiveGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread owns the lock; only shared access is given.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for RecursiveGuard<'_, T> {
    fn drop(&mut self) {
        let mut state = self.lock.state.lock();
        state.depth -= 1;
        if state.depth > 0 {
            return;
        }
        checker::on_release(self.lock as *const _ as usize);
        // Hand-off to the longest waiter, under the state lock (see Mutex::release_raw).
        state.owner = state.waiters.wake_one();
        state.depth = u32::from(state.owner.is_some());
    }
}
