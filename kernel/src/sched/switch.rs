//! The context switch: callee-saved registers on the old stack, swap stack pointers, pop them
//! from the new one. Everything else was saved by the caller (Rust ABI) or by the interrupt
//! entry stub. Runs with interrupts off.

use core::arch::global_asm;

global_asm!(
    r#"
.section .text
.global context_switch
context_switch:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

.global thread_entry_trampoline
thread_entry_trampoline:
    xor ebp, ebp
    push rbp
    mov rdi, r12
    call thread_start
    ud2
"#
);

extern "C" {
    /// Saves the current context's stack pointer into `*save_rsp` and resumes `load_rsp`.
    pub fn context_switch(save_rsp: *mut u64, load_rsp: u64);
    pub static thread_entry_trampoline: u8;
}

/// Lays out a new thread's stack so that the first switch to it "returns" into the trampoline
/// with `argument` in r12. Returns the initial stack pointer.
///
/// # Safety
/// `top` must be the 16-byte-aligned top of a mapped stack of at least 128 bytes.
pub unsafe fn prepare_stack(top: u64, argument: u64) -> u64 {
    let trampoline = core::ptr::addr_of!(thread_entry_trampoline) as u64;
    // From the top: a zero "return address" ending backtraces, the trampoline as the return
    // address of context_switch, then rbp, rbx, r12 (= argument), r13, r14, r15.
    let frame: [u64; 8] = [0, 0, 0, argument, 0, 0, trampoline, 0];
    let sp = top - 8 * 8;
    // SAFETY: the caller guarantees the 64 bytes below `top` are mapped and unused.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut u64, frame.len()) };
    sp
}
