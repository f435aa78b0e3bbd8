//! The sleepable mutex. A contended locker parks; unlock hands ownership straight to the
//! longest waiter (FIFO), so no waiter starves and no wake-up is lost.

use super::waiters::Waiters;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::panic::Location;

use super::checker::{self, LockClass, LockKind};
use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::sched;

struct State {
    owner: Option<u64>,
    waiters: Waiters,
}

pub struct Mutex<T> {
    class: LockClass,
    state: RawSpinLock<State>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex serialises access to `data`.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the T it owns.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    pub const fn new(name: &'static str, value: T) -> Mutex<T> {
        Mutex {
            class: LockClass::new(name),
            state: RawSpinLock::new(State {
                owner: None,
                waiters: Waiters::new(),
            }),
            data: UnsafeCell::new(value),
        }
    }

    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        checker::assert_may_block(self.class.name());
        checker::on_acquire(
            &self.class,
            LockKind::Sleep,
            self.instance(),
            Location::caller(),
        );
        self.acquire_raw();
        MutexGuard { mutex: self }
    }

    /// Takes the lock if it is free, without blocking.
    #[track_caller]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let me = sched::current_ref().id;
        let mut state = self.state.lock();
        if state.owner.is_some() {
            return None;
        }
        state.owner = Some(me);
        drop(state);
        checker::on_acquire(
            &self.class,
            LockKind::Sleep,
            self.instance(),
            Location::caller(),
        );
        Some(MutexGuard { mutex: self })
    }

    pub fn name(&self) -> &'static str {
        self.class.name()
    }

    pub fn is_locked(&self) -> bool {
        self.state.lock().owner.is_some()
    }

    fn instance(&self) -> usize {
        self as *const _ as usize
    }

    /// Ownership without the checker bookkeeping (CondVar re-locking uses it too).
    pub(super) fn acquire_raw(&self) {
        let me = sched::current_ref().id;
        let mut state = self.state.lock();
        if state.owner.is_none() {
            state.owner = Some(me);
            return;
        }
        assert_ne!(
            state.owner,
            Some(me),
            "mutex '{}' locked twice by the same thread",
            self.class.name()
        );
        let token = sched::prepare_block();
        state.waiters.push(token.clone());
        let was_on = state.unlock_keep_irqs_off();
        sched::block(&token, None);
        interrupts::restore(was_on);
        // The unlocker made us the owner before waking us.
    }

    pub(super) fn release_raw(&self) {
        // Hand-off: the woken waiter owns the mutex when it runs. Nobody can look at `owner`
        // between the wake and this store: the state lock is held throughout.
        let mut state = self.state.lock();
        state.owner = state.waiters.wake_one();
    }
}

pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<'a, T> MutexGuard<'a, T> {
    pub(super) fn mutex(&self) -> &'a Mutex<T> {
        self.mutex
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread owns the mutex.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves ownership, &mut self makes the access unique.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        checker::on_release(self.mutex.instance());
        self.mutex.release_raw();
    }
}

/// A guard for a mutex the caller already owns (CondVar re-taking it). The checker entry was
/// never removed while waiting, so none is added.
pub(super) fn reguard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    MutexGuard { mutex }
}
