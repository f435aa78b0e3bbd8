//! Kernel logic that needs no hardware, so it is tested on the host.
//!
//! The kernel crate supplies the hardware (memory, locks, CPUs); everything here is plain data
//! structures and parsers over byte slices.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bootinfo;
pub mod cmdline;
pub mod dma;
pub mod frames;
pub mod level;
pub mod lockorder;
pub mod runqueue;
pub mod trace;
