//! Addressing for the two configuration mechanisms; the kernel does the actual port I/O or MMIO.

use pci_types::PciAddress;

/// Bytes of configuration space reachable through 0xCF8/0xCFC (the register field is 8 bits).
pub const LEGACY_CONFIG_SPACE_SIZE: u16 = 0x100;

/// The value to write to port 0xCF8 before accessing the dword at `offset` through 0xCFC.
///
/// The mechanism only reaches offsets below [`LEGACY_CONFIG_SPACE_SIZE`] of segment 0: the
/// kernel's accessor must check that first (returning all-ones for reads, dropping writes),
/// because a larger offset would alias onto a header register here. Debug builds assert it.
pub fn legacy_config_address(address: PciAddress, offset: u16) -> u32 {
    debug_assert!(
        offset < LEGACY_CONFIG_SPACE_SIZE,
        "offset {offset:#x} beyond 0xCF8 reach"
    );
    debug_assert_eq!(address.segment(), 0, "0xCF8 only reaches segment 0");
    const ENABLE: u32 = 1 << 31;
    ENABLE
        | u32::from(address.bus()) << 16
        | u32::from(address.device() & 0x1f) << 11
        | u32::from(address.function() & 0x7) << 8
        | u32::from(offset & 0xfc)
}

/// Byte offset of (bus, device, function, offset) from an MCFG entry's base address.
///
/// The MCFG base corresponds to bus 0 even when the entry's start bus is higher, so `bus` is the
/// absolute bus number. `offset` is the byte offset in the function's 4 KiB space.
pub fn ecam_offset(bus: u8, device: u8, function: u8, offset: u16) -> usize {
    debug_assert!(device < 32 && function < 8 && offset < 0x1000);
    (usize::from(bus) << 20)
        | (usize::from(device & 0x1f) << 15)
        | (usize::from(function & 0x7) << 12)
        | usize::from(offset & 0xfff)
}
