//! The Tether kernel. Builds only for `x86_64-unknown-none`; on the host it is an empty program
//! so that `cargo test --workspace` can pass over it.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(
    target_os = "none",
    deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)
)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("tether-kernel runs only on x86_64-unknown-none: use `cargo run --release`");
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod deferred;
#[cfg(target_os = "none")]
mod ktest;
#[cfg(target_os = "none")]
#[allow(dead_code, unused_imports)] // driver-facing API; the USB stack is its next user
mod mem;
#[cfg(target_os = "none")]
mod metrics;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
#[allow(dead_code, unused_imports)] // driver-facing API; the USB stack is its next user
mod pci;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod sched;
#[cfg(target_os = "none")]
mod shell;
#[cfg(target_os = "none")]
mod status;
#[cfg(target_os = "none")]
#[allow(dead_code, unused_imports)] // driver-facing API; the USB stack is its next user
mod sync;
#[cfg(target_os = "none")]
mod time;
#[cfg(target_os = "none")]
mod trace;
#[cfg(target_os = "none")]
mod usb;
#[cfg(target_os = "none")]
mod virtio;
