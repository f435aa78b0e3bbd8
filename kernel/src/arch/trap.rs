//! Where every interrupt and exception lands. Exceptions are fatal in this kernel (no user
//! mode, no demand paging): they print a register dump and a backtrace, name the thread, and
//! stop. Device interrupts run their registered handler — which only acknowledges the device
//! and wakes a thread — then EOI; leaving the outermost interrupt is a preemption point.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::idt::TrapFrame;
use super::{apic, interrupts};
use crate::cpu;

/// A handler runs in interrupt context: it may not block, allocate large, or take a Mutex.
pub type IrqHandler = fn(vector: u8);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static SPURIOUS: AtomicUsize = AtomicUsize::new(0);

pub fn set_handler(vector: u8, handler: IrqHandler) {
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}

pub fn clear_handler(vector: u8) {
    HANDLERS[usize::from(vector)].store(0, Ordering::Release);
}

pub fn spurious_count() -> usize {
    SPURIOUS.load(Ordering::Relaxed)
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "non-maskable interrupt",
    "breakpoint",
    "overflow",
    "bound range exceeded",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection fault",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    if vector < 32 {
        if vector == 2 && crate::panic::is_stopping() {
            // Another CPU panicked and asked everyone to stop where they are.
            interrupts::halt_forever();
        }
        exception(frame);
    }
    if vector == apic::SPURIOUS_VECTOR {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if (0x20..0x30).contains(&vector) {
        // Legacy PIC vectors (masked): spurious IRQ7/15. The PIC wants no APIC EOI.
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let cpu = cpu::this();
    cpu.irq_depth.fetch_add(1, Ordering::Relaxed);
    let handler = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: only set_handler stores here, and it stores IrqHandler function pointers.
        let handler: IrqHandler = unsafe { core::mem::transmute::<usize, IrqHandler>(handler) };
        handler(vector);
    } else {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
    }
    apic::eoi();
    let depth = cpu.irq_depth.fetch_sub(1, Ordering::Relaxed) - 1;
    if depth == 0 {
        crate::sched::preempt_point_from_interrupt();
    }
}

fn exception(frame: &TrapFrame) -> ! {
    let vector = frame.vector as usize;
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    crate::panic::begin_fatal();
    let thread = crate::sched::current_thread_name();
    let guard_hit = (vector == 14 || vector == 8) && crate::mem::stacks::in_stack_region(cr2);
    if guard_hit && crate::sched::current_stack_guard_contains(cr2) {
        kprintln!(
            "KERNEL PANIC: stack overflow in thread '{}' (fault address {:#x})",
            thread,
            cr2
        );
    } else {
        kprintln!(
            "KERNEL PANIC: CPU exception {} ({}) in thread '{}', error code {:#x}",
            vector,
            EXCEPTION_NAMES[vector],
            thread,
            frame.error_code
        );
    }
    dump_registers(frame, cr2);
    backtrace(frame.rbp, frame.rip);
    crate::panic::finish_fatal()
}

fn dump_registers(f: &TrapFrame, cr2: u64) {
    let cpu = cpu::try_this().map_or(0, |c| c.index);
    kprintln!(
        "  cpu {}  rip {:#018x}  rsp {:#018x}  rflags {:#x}",
        cpu,
        f.rip,
        f.rsp,
        f.rflags
    );
    kprintln!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx
    );
    kprintln!(
        "  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8
    );
    kprintln!(
        "  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        f.r9,
        f.r10,
        f.r11,
        f.r12
    );
    kprintln!(
        "  r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        f.r13,
        f.r14,
        f.r15
    );
    let cr3 = x86_64::registers::control::Cr3::read()
        .0
        .start_address()
        .as_u64();
    kprintln!(
        "  cs {:#x} ss {:#x} cr2 {:#018x} cr3 {:#x}",
        f.cs,
        f.ss,
        cr2,
        cr3
    );
}

/// Walks the frame-pointer chain (the kernel is built with frame pointers). Addresses are
/// checked to lie in identity-mapped RAM or a stack before being read.
pub fn backtrace(mut rbp: u64, rip: u64) {
    kprintln!("  backtrace (resolve with addr2line -e tether-kernel):");
    if rip != 0 {
        kprintln!("    #0 {:#018x}", rip);
    }
    for depth in 1..32 {
        if rbp == 0 || !rbp.is_multiple_of(8) || !crate::mem::readable(rbp, 16) {
            break;
        }
        // SAFETY: checked readable and aligned just above.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        kprintln!("    #{} {:#018x}", depth, ret);
        if next <= rbp {
            break;
        }
        rbp = next;
    }
}
