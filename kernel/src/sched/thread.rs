//! A kernel thread: its stack, saved stack pointer, state and accounting.

use alloc::boxed::Box;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub use tether_kcore::runqueue::Priority;

use crate::mem::stacks::KernelStack;
use crate::sync::checker::HeldLocks;
use crate::sync::WaitQueue;

/// Thread states; packed with a block sequence number in one atomic (`seq << 8 | state`) so a
/// wake-up meant for one sleep can never end a later one.
pub(super) const RUNNABLE: u64 = 1;
pub(super) const RUNNING: u64 = 2;
pub(super) const BLOCKED: u64 = 3;
pub(super) const EXITED: u64 = 4;

pub(super) fn pack(seq: u64, state: u64) -> u64 {
    (seq << 8) | state
}

pub struct Thread {
    pub id: u64,
    name: String,
    pub priority: Priority,
    /// Pin to one CPU (tests, per-CPU work), or None to let the scheduler place it.
    pub affinity: Option<usize>,
    pub(super) state: AtomicU64,
    /// True from the moment a CPU picks the thread until that CPU has switched away from its
    /// stack; another CPU must not resume it before.
    pub(super) on_cpu: AtomicBool,
    pub(super) saved_rsp: UnsafeCell<u64>,
    pub(super) stack: Option<KernelStack>,
    pub(super) last_cpu: AtomicUsize,
    pub(super) cpu_time_ns: AtomicU64,
    pub(super) ran_since_ns: AtomicU64,
    pub(super) entry: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    pub(super) woke_by_timeout: AtomicBool,
    pub(super) exited: AtomicBool,
    pub(super) joiners: WaitQueue,
    pub(super) is_idle: bool,
    /// The lock checker's list of locks this thread holds; only the thread itself touches it.
    pub(crate) held_locks: UnsafeCell<HeldLocks>,
}

// SAFETY: the UnsafeCell fields are accessed only by the thread itself (held_locks, entry) or
// by the scheduler while it owns the thread's CPU slot (saved_rsp), never concurrently.
unsafe impl Sync for Thread {}
// SAFETY: as above.
unsafe impl Send for Thread {}

impl Thread {
    pub(super) fn new(
        id: u64,
        name: String,
        priority: Priority,
        affinity: Option<usize>,
        stack: Option<KernelStack>,
        entry: Option<Box<dyn FnOnce() + Send>>,
        is_idle: bool,
    ) -> Thread {
        Thread {
            id,
            name,
            priority,
            affinity,
            state: AtomicU64::new(pack(0, RUNNABLE)),
            on_cpu: AtomicBool::new(false),
            saved_rsp: UnsafeCell::new(0),
            stack,
            last_cpu: AtomicUsize::new(affinity.unwrap_or(0)),
            cpu_time_ns: AtomicU64::new(0),
            ran_since_ns: AtomicU64::new(0),
            entry: UnsafeCell::new(entry),
            woke_by_timeout: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            joiners: WaitQueue::new(),
            is_idle,
            held_locks: UnsafeCell::new(HeldLocks::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) & 0xFF {
            RUNNABLE => "ready",
            RUNNING => "running",
            BLOCKED => "blocked",
            EXITED => "exited",
            _ => "?",
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    pub fn last_cpu(&self) -> usize {
        self.last_cpu.load(Ordering::Relaxed)
    }

    /// CPU time used so far, including the current run if it is running now.
    pub fn cpu_time_ns(&self) -> u64 {
        let mut total = self.cpu_time_ns.load(Ordering::Relaxed);
        if self.state.load(Ordering::Relaxed) & 0xFF == RUNNING {
            total +=
                crate::time::now_ns().saturating_sub(self.ran_since_ns.load(Ordering::Relaxed));
        }
        total
    }

    pub(super) fn stack_guard_contains(&self, addr: u64) -> bool {
        self.stack.as_ref().is_some_and(|s| s.guard_contains(addr))
    }

    pub(super) fn stack_range(&self) -> Option<(u64, u64)> {
        self.stack.as_ref().map(|s| (s.bottom(), s.top()))
    }
}
