//! Per-CPU data, reached through the GS base: `gs:[0]` holds a pointer to this CPU's
//! [`PerCpu`], so finding it costs one load and no lock.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::arch::msr;
use crate::sched::CpuSched;
use crate::sync::checker::HeldLocks;

pub const MAX_CPUS: usize = 64;

#[repr(C)]
pub struct PerCpu {
    /// Must stay first: `gs:[0]`.
    self_ptr: *const PerCpu,
    pub index: usize,
    pub apic_id: u32,
    /// Nesting depth of interrupt handlers running on this CPU (0 = thread context).
    pub irq_depth: AtomicU32,
    pub online: AtomicBool,
    pub sched: CpuSched,
    /// Locks taken by interrupt handlers (and by boot code before threads exist) are tracked
    /// here rather than on the interrupted thread, so the checker learns no false orders.
    pub irq_held_locks: core::cell::UnsafeCell<HeldLocks>,
}

// SAFETY: cross-CPU fields are atomics or locked; `irq_held_locks` is touched only by the
// owning CPU with interrupts off.
unsafe impl Sync for PerCpu {}

static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Creates the calling CPU's data and points GS at it.
pub fn init_this(index: usize, apic_id: u32) -> &'static PerCpu {
    let cpu: &'static mut PerCpu = Box::leak(Box::new(PerCpu {
        self_ptr: core::ptr::null(),
        index,
        apic_id,
        irq_depth: AtomicU32::new(0),
        online: AtomicBool::new(false),
        sched: CpuSched::new(),
        irq_held_locks: core::cell::UnsafeCell::new(HeldLocks::new()),
    }));
    cpu.self_ptr = cpu;
    CPUS[index].store(cpu, Ordering::Release);
    COUNT.fetch_max(index + 1, Ordering::AcqRel);
    // SAFETY: GS is not used for anything else in this kernel; the pointer lives forever.
    unsafe { msr::write(msr::IA32_GS_BASE, cpu as *const PerCpu as u64) };
    cpu
}

/// This CPU's data. Only valid after [`init_this`] on this CPU.
pub fn this() -> &'static PerCpu {
    let ptr: *const PerCpu;
    // SAFETY: GS base points at this CPU's PerCpu whose first field is its own address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: the PerCpu was leaked and lives forever.
    unsafe { &*ptr }
}

/// Like [`this`], but safe to call before per-CPU data exists (fault and panic paths).
pub fn try_this() -> Option<&'static PerCpu> {
    let base = msr::read(msr::IA32_GS_BASE);
    if base == 0 {
        return None;
    }
    // SAFETY: a non-zero GS base was set by init_this to a leaked PerCpu.
    Some(unsafe { &*(base as *const PerCpu) })
}

pub fn get(index: usize) -> Option<&'static PerCpu> {
    let ptr = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point to leaked PerCpu values.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Number of CPU slots created so far (online or starting).
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

pub fn online_count() -> usize {
    (0..count())
        .filter_map(get)
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}

pub fn in_interrupt() -> bool {
    try_this().is_some_and(|c| c.irq_depth.load(Ordering::Relaxed) > 0)
}
