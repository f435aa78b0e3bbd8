//! The Tether kernel. Builds only for `x86_64-unknown-none`; on the host it is an empty program
//! so that `cargo test --workspace` can pass over it.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("tether-kernel runs only on x86_64-unknown-none: use `cargo run --release`");
}
