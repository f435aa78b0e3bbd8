//! Builds Tether's bootable image: a GRUB hybrid ISO made by `grub-mkrescue`.
//!
//! The ISO boots the kernel ELF by multiboot2 under legacy BIOS (El Torito) and UEFI (its EFI
//! system partition image), and works written raw to a USB stick. GRUB is told to use the serial
//! console and, where the machine has one, a graphical framebuffer (real PCs often lack COM1).
//!
//! Host tools needed: `grub-mkrescue` with the i386-pc and x86_64-efi platform files (Debian
//! `grub-common grub-pc-bin grub-efi-amd64-bin`), `xorriso`, and `mformat` (`mtools`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod grub_cfg;
mod iso;

pub use grub_cfg::{grub_cfg, validate_cmdline};
pub use iso::{build_iso, grub_mkrescue_command, IsoSpec, KERNEL_PATH_IN_ISO};
