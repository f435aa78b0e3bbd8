//! Turning this CPU's interrupts off and on.

use core::arch::asm;

pub fn are_enabled() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS has no side effects.
    unsafe { asm!("pushfq; pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Disables interrupts and returns whether they were on.
pub fn disable_save() -> bool {
    let was_on = are_enabled();
    // SAFETY: cli only masks maskable interrupts on this CPU.
    unsafe { asm!("cli", options(nomem, nostack)) };
    was_on
}

pub fn restore(was_on: bool) {
    if was_on {
        enable();
    }
}

pub fn enable() {
    // SAFETY: the kernel is ready for interrupts once the IDT is loaded (done before any lock use
    // that would turn them on).
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Enables interrupts and halts in one step, so a wake-up interrupt cannot slip in between.
pub fn enable_and_halt() {
    // SAFETY: sti takes effect after the next instruction, so hlt is reached with interrupts
    // still masked and any pending one wakes it.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) };
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stopping this CPU for good.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}
