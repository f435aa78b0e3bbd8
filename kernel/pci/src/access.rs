//! The crate's only calls into pci_types' `unsafe fn` accessors.
//!
//! Every other module goes through these two wrappers, which refuse offsets that are not a
//! dword inside one function's 4 KiB configuration space instead of handing them to the
//! kernel's accessor.

use pci_types::{ConfigRegionAccess, PciAddress};

/// Size of one function's configuration space under ECAM.
const CONFIG_SPACE_BYTES: u16 = 0x1000;

fn valid_offset(offset: u16) -> bool {
    offset.is_multiple_of(4) && offset < CONFIG_SPACE_BYTES
}

/// Reads the configuration dword at `offset` (a multiple of 4 below 0x1000).
///
/// Invalid offsets read as all-ones, which is what an absent register returns on real hardware,
/// so callers need no special case. Drivers use this to read capability bodies (e.g. virtio's
/// vendor capabilities) without `unsafe`.
#[allow(unsafe_code)]
pub fn read_config_dword(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    offset: u16,
) -> u32 {
    if !valid_offset(offset) {
        return u32::MAX;
    }
    // SAFETY: the offset is dword-aligned and inside the function's configuration space, which
    // is all ConfigRegionAccess asks of a read; reads of absent functions return all-ones.
    unsafe { access.read(address, offset) }
}

/// Writes the configuration dword at `offset`; invalid offsets are dropped, not aliased.
#[allow(unsafe_code)]
pub(crate) fn write_config_dword(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    offset: u16,
    value: u32,
) {
    if !valid_offset(offset) {
        debug_assert!(false, "config write to invalid offset {offset:#x}");
        return;
    }
    // SAFETY: dword-aligned offset inside the function's configuration space; callers only
    // write registers whose meaning they have checked (header registers, or capability
    // registers whose capability was bounds-checked when decoded).
    unsafe { access.write(address, offset, value) }
}
