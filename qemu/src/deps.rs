//! Host tools the runner needs, installed on demand.
//!
//! Debian packages are installed with `apt-get` when running as root (as CI does); otherwise
//! the error names the packages to install. The kernel's Rust target is added with rustup.

use crate::paths::{repo_root, KERNEL_TARGET};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Something a command needs on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `qemu-system-x86_64`.
    Qemu,
    /// `grub-mkrescue` with BIOS and EFI platform files, `xorriso`, `mtools`.
    IsoTools,
    /// OVMF UEFI firmware.
    Ovmf,
    /// `curl`, for the HTTP service tests.
    Curl,
    /// The stock `iperf3` client (the iperf3 service's tests).
    Iperf3,
}

/// One host file or program, and the Debian package that brings it.
struct HostItem {
    need: Need,
    what: &'static str,
    present: fn() -> bool,
    package: &'static str,
}

const HOST_ITEMS: &[HostItem] = &[
    HostItem {
        need: Need::Qemu,
        what: "qemu-system-x86_64",
        present: || on_path("qemu-system-x86_64"),
        package: "qemu-system-x86",
    },
    HostItem {
        need: Need::IsoTools,
        what: "grub-mkrescue",
        present: || on_path("grub-mkrescue"),
        package: "grub-common",
    },
    HostItem {
        need: Need::IsoTools,
        what: "GRUB BIOS files (/usr/lib/grub/i386-pc)",
        present: || Path::new("/usr/lib/grub/i386-pc/cdboot.img").is_file(),
        package: "grub-pc-bin",
    },
    HostItem {
        need: Need::IsoTools,
        what: "GRUB UEFI files (/usr/lib/grub/x86_64-efi)",
        present: || Path::new("/usr/lib/grub/x86_64-efi/kernel.img").is_file(),
        package: "grub-efi-amd64-bin",
    },
    HostItem {
        need: Need::IsoTools,
        what: "xorriso",
        present: || on_path("xorriso"),
        package: "xorriso",
    },
    HostItem {
        need: Need::IsoTools,
        what: "mformat (mtools)",
        present: || on_path("mformat"),
        package: "mtools",
    },
    HostItem {
        need: Need::Ovmf,
        what: crate::preset::OVMF_PATH,
        present: || Path::new(crate::preset::OVMF_PATH).is_file(),
        package: "ovmf",
    },
    HostItem {
        need: Need::Curl,
        what: "curl",
        present: || on_path("curl"),
        package: "curl",
    },
    HostItem {
        need: Need::Iperf3,
        what: "iperf3",
        present: || on_path("iperf3"),
        package: "iperf3",
    },
];

/// Debian packages missing for `needs`, in a stable order without repeats.
pub fn missing_packages(needs: &[Need]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for item in HOST_ITEMS {
        if needs.contains(&item.need) && !(item.present)() && !packages.contains(&item.package) {
            packages.push(item.package);
        }
    }
    packages
}

/// Makes sure the host has what `needs` lists, installing Debian packages when root.
pub fn ensure_host_tools(needs: &[Need]) -> Result<()> {
    let missing = missing_packages(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let absent: Vec<&str> = HOST_ITEMS
        .iter()
        .filter(|i| needs.contains(&i.need) && !(i.present)())
        .map(|i| i.what)
        .collect();
    let list = missing.join(" ");
    if !is_root() || !on_path("apt-get") {
        bail!(
            "missing on this host: {}.\nInstall them (Debian/Ubuntu) with:\n    sudo apt-get install -y {list}",
            absent.join(", ")
        );
    }
    eprintln!("tether: installing {list} (missing: {})", absent.join(", "));
    run_status(Command::new("apt-get").arg("update"), "apt-get update")?;
    run_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
        "apt-get install",
    )?;
    let still = missing_packages(needs);
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

/// Makes sure the pinned toolchain has the kernel's target (`rust-toolchain.toml` lists it,
/// but a plain `cargo build` does not install it when the toolchain is already present).
pub fn ensure_kernel_target() -> Result<()> {
    if kernel_target_installed() {
        return Ok(());
    }
    if !on_path("rustup") {
        bail!(
            "the Rust target {KERNEL_TARGET} is not installed and rustup is not on PATH: \
             install it for the toolchain in rust-toolchain.toml"
        );
    }
    eprintln!("tether: rustup target add {KERNEL_TARGET}");
    run_status(
        Command::new("rustup")
            .current_dir(repo_root())
            .args(["target", "add", KERNEL_TARGET]),
        "rustup target add",
    )?;
    if !kernel_target_installed() {
        bail!("rustup target add {KERNEL_TARGET} ran, but rustc still lacks the target");
    }
    Ok(())
}

/// Whether the active rustc (in the repository folder) has the kernel target's standard library.
fn kernel_target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .current_dir(repo_root())
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(KERNEL_TARGET)
            .is_dir()
}

fn run_status(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Whether `program` is an executable file in a PATH folder.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether this process runs as root (effective uid 0, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-program-tether"));
    }

    #[test]
    fn every_need_has_a_package() {
        for need in [
            Need::Qemu,
            Need::IsoTools,
            Need::Ovmf,
            Need::Curl,
            Need::Iperf3,
        ] {
            assert!(HOST_ITEMS.iter().any(|i| i.need == need));
        }
    }

    #[test]
    fn missing_packages_are_unique() {
        let packages = missing_packages(&[
            Need::Qemu,
            Need::IsoTools,
            Need::Ovmf,
            Need::Curl,
            Need::Iperf3,
        ]);
        let mut sorted = packages.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), packages.len());
    }
}
