//! Where things are in the repository.

use std::path::{Path, PathBuf};

/// The kernel's Rust target.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Repository root (the workspace folder), known at compile time: this crate is `<root>/qemu`.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the qemu crate lives one level below the workspace root")
}

/// Cargo target folder for the kernel build (its own, so the outer `cargo run`'s lock on
/// `target/` is never in the way).
pub fn kernel_target_dir() -> PathBuf {
    repo_root().join("target/kernel")
}

/// The kernel ELF a release build produces.
pub fn kernel_elf() -> PathBuf {
    kernel_target_dir()
        .join(KERNEL_TARGET)
        .join("release/tether-kernel")
}

/// The bootable ISO.
pub fn iso_path() -> PathBuf {
    repo_root().join("target/tether.iso")
}

/// Scratch folder the ISO tree is laid out in.
pub fn iso_staging_dir() -> PathBuf {
    repo_root().join("target/iso-root")
}

/// Folder for the serial logs of test boots.
pub fn test_log_dir() -> PathBuf {
    repo_root().join("target/test-logs")
}

/// The cargo binary running us (`$CARGO` under `cargo run`), else `cargo` from PATH.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}
