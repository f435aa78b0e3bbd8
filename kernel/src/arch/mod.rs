//! x86_64: everything that touches the CPU directly.

pub mod apic;
pub mod boot;
pub mod gdt;
pub mod idt;
pub mod interrupts;
pub mod ioapic;
pub mod msr;
pub mod pit;
pub mod pmtimer;
pub mod qemu_exit;
pub mod smp;
pub mod trap;
