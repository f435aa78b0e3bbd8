//! The interrupt descriptor table and the 256 entry stubs. Every vector enters through one
//! common path that saves all general registers into a [`TrapFrame`] on the current stack and
//! calls [`crate::arch::trap::dispatch`]. Saving everything on the thread's own stack is what
//! lets the timer interrupt switch threads: the frame simply waits on the old thread's stack.

use core::arch::global_asm;

use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

use super::gdt;

/// Registers as the entry stub leaves them on the stack (lowest address first).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
.section .text
.balign 16
.global trap_stubs
trap_stubs:
.set vec, 0
.rept 256
.balign 16
.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
.else
    push 0
.endif
    push vec
    jmp trap_common
.set vec, vec + 1
.endr

trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call trap_dispatch
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
"#
);

extern "C" {
    static trap_stubs: u8;
}

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

fn stub_address(vector: usize) -> VirtAddr {
    // The stubs are 16 bytes apart by construction.
    let base = core::ptr::addr_of!(trap_stubs) as u64;
    VirtAddr::new(base + 16 * vector as u64)
}

/// Builds the IDT once and loads it on the calling CPU.
pub fn load() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: for every set_handler_addr call below, the address is the stub for that very vector,
        // which follows the interrupt calling convention (ends in iretq, pops the error code
        // exactly when the CPU pushed one).
        unsafe {
            idt.divide_error.set_handler_addr(stub_address(0));
            idt.debug.set_handler_addr(stub_address(1));
            idt.non_maskable_interrupt
                .set_handler_addr(stub_address(2))
                .set_stack_index(gdt::NMI_IST);
            idt.breakpoint.set_handler_addr(stub_address(3));
            idt.overflow.set_handler_addr(stub_address(4));
            idt.bound_range_exceeded.set_handler_addr(stub_address(5));
            idt.invalid_opcode.set_handler_addr(stub_address(6));
            idt.device_not_available.set_handler_addr(stub_address(7));
            idt.double_fault
                .set_handler_addr(stub_address(8))
                .set_stack_index(gdt::DOUBLE_FAULT_IST);
            idt.invalid_tss.set_handler_addr(stub_address(10));
            idt.segment_not_present.set_handler_addr(stub_address(11));
            idt.stack_segment_fault.set_handler_addr(stub_address(12));
            idt.general_protection_fault
                .set_handler_addr(stub_address(13));
            idt.page_fault
                .set_handler_addr(stub_address(14))
                .set_stack_index(gdt::PAGE_FAULT_IST);
            idt.x87_floating_point.set_handler_addr(stub_address(16));
            idt.alignment_check.set_handler_addr(stub_address(17));
            idt.machine_check.set_handler_addr(stub_address(18));
            idt.simd_floating_point.set_handler_addr(stub_address(19));
            idt.virtualization.set_handler_addr(stub_address(20));
            idt.cp_protection_exception
                .set_handler_addr(stub_address(21));
            idt.hv_injection_exception
                .set_handler_addr(stub_address(28));
            idt.vmm_communication_exception
                .set_handler_addr(stub_address(29));
            idt.security_exception.set_handler_addr(stub_address(30));
            for vector in 32..=255u8 {
                idt[vector].set_handler_addr(stub_address(usize::from(vector)));
            }
        }
        idt
    });
    idt.load();
}
