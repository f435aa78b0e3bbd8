//! Starting the application processors: a real-mode trampoline copied to 0x8000 walks each AP
//! from 16-bit real mode through protected mode into long mode, switches to the kernel's page
//! tables and stack, and calls [`crate::smp_main`]. INIT-SIPI-SIPI through the local APIC, one
//! AP at a time.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use super::apic;

const TRAMPOLINE_PHYS: u64 = 0x8000;

global_asm!(
    r#"
.section .text
.balign 16
.global ap_trampoline_start
.global ap_trampoline_end
.global ap_trampoline_data
ap_trampoline_start:
.code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_gdt_ptr - ap_trampoline_start + 0x8000)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(ap_protected - ap_trampoline_start + 0x8000)

.code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (ap_trampoline_data - ap_trampoline_start + 0x8000), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl (ap_trampoline_data - ap_trampoline_start + 0x8000 + 40), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(ap_long - ap_trampoline_start + 0x8000)

.code64
ap_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (ap_trampoline_data - ap_trampoline_start + 0x8000 + 8), %rax
    movq %rax, %cr3
    movq (ap_trampoline_data - ap_trampoline_start + 0x8000 + 16), %rsp
    movq (ap_trampoline_data - ap_trampoline_start + 0x8000 + 32), %rdi
    movq (ap_trampoline_data - ap_trampoline_start + 0x8000 + 24), %rax
    xorl %ebp, %ebp
    callq *%rax
1:
    cli
    hlt
    jmp 1b

.balign 16
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
ap_gdt_ptr:
    .short ap_gdt_ptr - ap_gdt - 1
    .long ap_gdt - ap_trampoline_start + 0x8000

.balign 8
ap_trampoline_data:
    .quad 0   /* +0  boot page tables (below 4 GiB, identity 4 GiB) */
    .quad 0   /* +8  kernel page tables */
    .quad 0   /* +16 stack top */
    .quad 0   /* +24 entry */
    .quad 0   /* +32 argument: CPU index */
    .quad 0   /* +40 EFER bits to set (LME, NXE) */
ap_trampoline_end:
"#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_data: u8;
    static boot_pml4: u8;
}

/// Set by the AP once it runs Rust code; the BSP waits for it before starting the next one.
pub static AP_STARTED: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct TrampolineData {
    boot_cr3: u64,
    kernel_cr3: u64,
    stack_top: u64,
    entry: u64,
    argument: u64,
    efer_bits: u64,
}

/// The wait after INIT. The MP specification's 10 ms is for old CPUs; like Linux, skip it on
/// Intel family 6 and later and AMD family 0xF and later, which need none.
fn init_delay_us() -> u64 {
    let leaf0 = core::arch::x86_64::__cpuid(0);
    let vendor = [
        leaf0.ebx.to_le_bytes(),
        leaf0.edx.to_le_bytes(),
        leaf0.ecx.to_le_bytes(),
    ]
    .concat();
    let eax = core::arch::x86_64::__cpuid(1).eax;
    let family = ((eax >> 8) & 0xF)
        + if (eax >> 8) & 0xF == 0xF {
            (eax >> 20) & 0xFF
        } else {
            0
        };
    let modern = match vendor.as_slice() {
        b"GenuineIntel" => family >= 6,
        b"AuthenticAMD" | b"HygonGenuine" => family >= 0xF,
        _ => false,
    };
    if modern {
        0
    } else {
        10_000
    }
}

/// Starts one AP and waits (up to ~200 ms) until it reports in. Returns whether it did.
pub fn start_ap(
    apic_id: u32,
    cpu_index: usize,
    stack_top: u64,
    entry: extern "C" fn(u64) -> !,
) -> bool {
    let (start, end, data, pml4) = (
        core::ptr::addr_of!(ap_trampoline_start) as u64,
        core::ptr::addr_of!(ap_trampoline_end) as u64,
        core::ptr::addr_of!(ap_trampoline_data) as u64,
        core::ptr::addr_of!(boot_pml4) as u64,
    );
    let len = (end - start) as usize;
    let nx = x86_64::registers::model_specific::Efer::read()
        .contains(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE);
    let params = TrampolineData {
        boot_cr3: pml4,
        kernel_cr3: crate::mem::paging::kernel_cr3(),
        stack_top,
        entry: entry as usize as u64,
        argument: cpu_index as u64,
        efer_bits: 0x100 | if nx { 0x800 } else { 0 },
    };
    // SAFETY: the first MiB is reserved from the frame allocator, so 0x8000.. belongs to the
    // trampoline; it is identity-mapped; only one AP starts at a time.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE_PHYS as *mut u8, len);
        let data_ptr = (TRAMPOLINE_PHYS + (data - start)) as *mut TrampolineData;
        core::ptr::write_volatile(data_ptr, params);
    }
    AP_STARTED.store(false, Ordering::SeqCst);
    apic::send_init(apic_id);
    crate::time::spin_delay_us(init_delay_us());
    for _ in 0..2 {
        apic::send_startup(apic_id, (TRAMPOLINE_PHYS >> 12) as u8);
        crate::time::spin_delay_us(200);
        if AP_STARTED.load(Ordering::SeqCst) {
            return true;
        }
    }
    for _ in 0..2000 {
        if AP_STARTED.load(Ordering::SeqCst) {
            return true;
        }
        crate::time::spin_delay_us(100);
    }
    false
}
