//! Lays out the ISO tree and runs `grub-mkrescue`.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the kernel ELF sits inside the ISO.
pub const KERNEL_PATH_IN_ISO: &str = "/boot/tether-kernel";

/// What to put in the ISO and where.
#[derive(Debug, Clone)]
pub struct IsoSpec<'a> {
    /// The kernel ELF (multiboot2 header inside).
    pub kernel_elf: &'a Path,
    /// Kernel command line written into `grub.cfg`.
    pub cmdline: &'a str,
    /// The ISO file to write.
    pub output: &'a Path,
    /// A scratch folder for the ISO tree (emptied first).
    pub staging_dir: &'a Path,
}

/// The `grub-mkrescue` invocation for a staged tree.
pub fn grub_mkrescue_command(staging_dir: &Path, output: &Path) -> Command {
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-o").arg(output).arg(staging_dir);
    cmd
}

/// Builds the ISO and returns its path.
pub fn build_iso(spec: &IsoSpec<'_>) -> Result<PathBuf> {
    crate::validate_cmdline(spec.cmdline).map_err(anyhow::Error::msg)?;
    if !spec.kernel_elf.is_file() {
        bail!("kernel ELF {} not found", spec.kernel_elf.display());
    }
    if spec.staging_dir.exists() {
        fs::remove_dir_all(spec.staging_dir)
            .with_context(|| format!("emptying {}", spec.staging_dir.display()))?;
    }
    let grub_dir = spec.staging_dir.join("boot/grub");
    fs::create_dir_all(&grub_dir).with_context(|| format!("creating {}", grub_dir.display()))?;
    let kernel_dest = spec
        .staging_dir
        .join(KERNEL_PATH_IN_ISO.trim_start_matches('/'));
    fs::copy(spec.kernel_elf, &kernel_dest)
        .with_context(|| format!("copying the kernel to {}", kernel_dest.display()))?;
    fs::write(grub_dir.join("grub.cfg"), crate::grub_cfg(spec.cmdline))
        .context("writing grub.cfg")?;
    if let Some(parent) = spec.output.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }

    let mut cmd = grub_mkrescue_command(spec.staging_dir, spec.output);
    let out = cmd
        .output()
        .context("running grub-mkrescue (Debian: apt-get install grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)")?;
    if !out.status.success() {
        bail!(
            "grub-mkrescue failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !spec.output.is_file() {
        bail!(
            "grub-mkrescue succeeded but wrote no {}",
            spec.output.display()
        );
    }
    Ok(spec.output.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkrescue_command_shape() {
        let cmd = grub_mkrescue_command(Path::new("/tmp/iso"), Path::new("/tmp/t.iso"));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "grub-mkrescue");
        assert_eq!(args, ["-o", "/tmp/t.iso", "/tmp/iso"]);
    }

    #[test]
    fn missing_kernel_is_an_error() {
        let dir = std::env::temp_dir().join(format!("tether-image-test-{}", std::process::id()));
        let spec = IsoSpec {
            kernel_elf: &dir.join("no-such-kernel"),
            cmdline: "",
            output: &dir.join("out.iso"),
            staging_dir: &dir.join("staging"),
        };
        let err = build_iso(&spec).unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
    }
}
