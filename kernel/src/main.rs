//! The Tether kernel. Builds only for `x86_64-unknown-none`; on the host it is an empty program
//! so that `cargo test --workspace` can pass over it.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(target_os = "none", deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks))]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("tether-kernel runs only on x86_64-unknown-none: use `cargo run --release`");
}

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod sync;

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kernel_entry(loader_magic: u32, info_phys: u32) -> ! {
    console::init();
    kprintln!("tether: entered long mode (magic {:#x}, info {:#x})", loader_magic, info_phys);
    arch::qemu_exit::exit(arch::qemu_exit::SUCCESS)
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::break_lock_for_panic();
    kprintln!("KERNEL PANIC: {}", info);
    arch::qemu_exit::exit(arch::qemu_exit::FAILURE)
}
