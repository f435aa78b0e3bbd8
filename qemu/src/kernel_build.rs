//! Builds the kernel ELF.

use crate::deps;
use crate::paths::{cargo, kernel_elf, kernel_target_dir, repo_root, KERNEL_TARGET};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo arguments of the kernel build.
pub fn kernel_build_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "build",
        "-p",
        "tether-kernel",
        "--target",
        KERNEL_TARGET,
        "--release",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push("--target-dir".into());
    args.push(kernel_target_dir().into());
    args
}

/// The kernel build as a shell line (for `--dry-run`).
pub fn kernel_build_line() -> String {
    crate::preset::shell_line("cargo", &kernel_build_args())
}

/// The given prebuilt kernel ELF (`--kernel`), or a fresh build.
pub fn prebuilt_or_build(prebuilt: Option<&Path>) -> Result<PathBuf> {
    match prebuilt {
        Some(elf) if elf.is_file() => Ok(elf.to_path_buf()),
        Some(elf) => bail!("kernel ELF {} not found", elf.display()),
        None => build_kernel(),
    }
}

/// Installs the kernel target if needed, builds the kernel (cargo's output goes to the
/// terminal) and returns the ELF's path.
pub fn build_kernel() -> Result<PathBuf> {
    deps::ensure_kernel_target()?;
    eprintln!("tether: building the kernel ({KERNEL_TARGET}, release)");
    let status = Command::new(cargo())
        .current_dir(repo_root())
        .args(kernel_build_args())
        .status()
        .context("running cargo to build the kernel")?;
    if !status.success() {
        bail!("kernel build failed ({status})");
    }
    let elf = kernel_elf();
    if !elf.is_file() {
        bail!("kernel build succeeded but {} is missing", elf.display());
    }
    Ok(elf)
}
