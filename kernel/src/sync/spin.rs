//! The checked spin lock: interrupts off while held, so it is usable from interrupt handlers;
//! holding one across anything that blocks is caught by the checker.

use core::ops::{Deref, DerefMut};
use core::panic::Location;

use super::checker::{self, LockClass, LockKind};
use super::raw::{RawSpinGuard, RawSpinLock};

pub struct SpinLock<T> {
    class: LockClass,
    inner: RawSpinLock<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(name: &'static str, value: T) -> SpinLock<T> {
        SpinLock {
            class: LockClass::new(name),
            inner: RawSpinLock::new(value),
        }
    }

    #[track_caller]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let instance = self as *const _ as usize;
        checker::on_acquire(&self.class, LockKind::Spin, instance, Location::caller());
        SpinGuard {
            raw: self.inner.lock(),
            instance,
        }
    }

    pub fn name(&self) -> &'static str {
        self.class.name()
    }
}

pub struct SpinGuard<'a, T> {
    raw: RawSpinGuard<'a, T>,
    instance: usize,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.raw
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.raw
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        checker::on_release(self.instance);
    }
}
