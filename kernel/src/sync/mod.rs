//! Synchronisation. [`SpinLock`] for interrupt context and short sections (interrupts off while
//! held); [`Mutex`] parks a contended locker so the CPU runs other threads; [`RecursiveMutex`]
//! for driver paths that re-enter; [`CondVar`] waits atomically releasing a Mutex;
//! [`Semaphore`] and [`WaitQueue`]. All but the raw lock go through the lock checker.

pub mod checker;
mod condvar;
mod mutex;
pub mod raw;
mod recursive;
mod semaphore;
mod spin;
mod waiters;
mod waitqueue;

pub use condvar::CondVar;
pub use mutex::{Mutex, MutexGuard};
pub use recursive::{RecursiveGuard, RecursiveMutex};
pub use semaphore::Semaphore;
pub use spin::{SpinGuard, SpinLock};
pub use waitqueue::WaitQueue;
