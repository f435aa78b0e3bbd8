//! Per-CPU GDT and TSS. The TSS carries the interrupt stack table: double fault, page fault and
//! NMI run on stacks of their own, so a thread that overflows its stack into the guard page
//! still gets a readable report instead of a triple fault.

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const PAGE_FAULT_IST: u16 = 1;
pub const NMI_IST: u16 = 2;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// Loads a fresh GDT and TSS on the calling CPU. Called once per CPU after the heap exists;
/// the tables live for the kernel's lifetime.
pub fn init_this_cpu() {
    let mut tss = TaskStateSegment::new();
    for ist in [DOUBLE_FAULT_IST, PAGE_FAULT_IST, NMI_IST] {
        let stack: &'static mut IstStack = Box::leak(Box::new(IstStack([0; IST_STACK_SIZE])));
        let top = VirtAddr::from_ptr(stack.0.as_ptr()) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[usize::from(ist)] = top;
    }
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    gdt.load();
    // SAFETY: the selectors were just created in the GDT that is now loaded, and describe the
    // flat 64-bit segments the kernel already runs on.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_selector);
    }
}
