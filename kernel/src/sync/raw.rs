//! The spin lock underneath everything else: disables interrupts on this CPU while held, has no
//! name and is invisible to the lock checker. Used by the console, the heap, the scheduler and
//! the checker itself, which must not recurse into the checker. Everything else uses the named,
//! checked [`crate::sync::SpinLock`].

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::interrupts;

pub struct RawSpinLock<T: ?Sized> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data`, so sharing it between CPUs is sound when T
// may be sent between them.
unsafe impl<T: ?Sized + Send> Sync for RawSpinLock<T> {}
// SAFETY: moving the lock moves the T it owns.
unsafe impl<T: ?Sized + Send> Send for RawSpinLock<T> {}

impl<T> RawSpinLock<T> {
    pub const fn new(value: T) -> Self {
        RawSpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(value),
        }
    }
}

impl<T: ?Sized> RawSpinLock<T> {
    pub fn lock(&self) -> RawSpinGuard<'_, T> {
        let irq_was_on = interrupts::disable_save();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        RawSpinGuard {
            lock: self,
            irq_was_on,
        }
    }

    pub fn try_lock(&self) -> Option<RawSpinGuard<'_, T>> {
        let irq_was_on = interrupts::disable_save();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(RawSpinGuard {
                lock: self,
                irq_was_on,
            })
        } else {
            interrupts::restore(irq_was_on);
            None
        }
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Breaks the lock without a guard: only for the panic path, which must print even when the
    /// panicking CPU (or a stopped one) held the console.
    ///
    /// # Safety
    /// The previous holder must never touch the data again.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct RawSpinGuard<'a, T: ?Sized> {
    lock: &'a RawSpinLock<T>,
    irq_was_on: bool,
}

impl<T: ?Sized> RawSpinGuard<'_, T> {
    /// Releases the lock but leaves interrupts off; returns whether the caller must turn them on.
    /// The scheduler uses this to switch threads with interrupts still disabled.
    pub fn unlock_keep_irqs_off(self) -> bool {
        let on = self.irq_was_on;
        self.lock.locked.store(false, Ordering::Release);
        core::mem::forget(self);
        on
    }
}

impl<T: ?Sized> Deref for RawSpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this CPU holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RawSpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this CPU holds the lock, and &mut self makes it unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RawSpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        interrupts::restore(self.irq_was_on);
    }
}
