//! Fatal errors: one CPU reports, the others are stopped by NMI where they stand, the trace
//! ring's tail is printed, and QEMU exits with the failure status.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::arch::{apic, interrupts, qemu_exit};

static STOPPING: AtomicBool = AtomicBool::new(false);
static PANICKING_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Claims the right to report; a second CPU failing at the same time just stops.
pub fn begin_fatal() {
    interrupts::disable_save();
    let me = crate::cpu::try_this().map_or(0, |c| c.index);
    if PANICKING_CPU
        .compare_exchange(usize::MAX, me, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
        && PANICKING_CPU.load(Ordering::Acquire) != me
    {
        interrupts::halt_forever();
    }
    if !STOPPING.swap(true, Ordering::AcqRel) && crate::cpu::online_count() > 1 {
        apic::send_nmi_all_but_self();
    }
    crate::console::break_lock_for_panic();
}

pub fn finish_fatal() -> ! {
    crate::trace::dump_tail_for_panic(32);
    qemu_exit::exit(qemu_exit::FAILURE)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    begin_fatal();
    let cpu = crate::cpu::try_this().map_or(0, |c| c.index);
    kprintln!(
        "KERNEL PANIC on cpu {} in thread '{}': {}",
        cpu,
        crate::sched::current_thread_name(),
        info
    );
    let rbp: u64;
    // SAFETY: reading the frame pointer register.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp) };
    crate::arch::trap::backtrace(rbp, 0);
    finish_fatal()
}
