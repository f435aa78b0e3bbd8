//! x86_64: everything that touches the CPU directly.

pub mod boot;
pub mod interrupts;
pub mod qemu_exit;
