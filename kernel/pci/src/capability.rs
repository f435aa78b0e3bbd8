//! The capability list.
//!
//! Walked here instead of with pci_types' `CapabilityIterator`, which follows `next` pointers
//! forever: a list that loops (or a run of id-0 entries that loops) hangs the boot, and it does
//! not mask the reserved low pointer bits, so a hostile pointer produces unaligned accesses.

use crate::access::read_config_dword;
use alloc::vec::Vec;
use pci_types::{ConfigRegionAccess, PciAddress};

/// Capability IDs this crate and its drivers care about.
pub mod capability_id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// One entry of the capability list: its ID and where its header dword sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    pub offset: u16,
}

/// Capabilities live after the 64-byte standard header and inside the first 256 bytes.
const FIRST_CAPABILITY_OFFSET: u16 = 0x40;
const STANDARD_CONFIG_BYTES: usize = 0x100;

/// Walks the list starting at `first` (the capabilities pointer).
///
/// Terminates on any input: each dword slot is visited at most once, so at most 48 entries are
/// read. A pointer into the header or back to a visited slot ends the walk.
pub(crate) fn walk_capabilities(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    first: u8,
) -> Vec<Capability> {
    let mut capabilities = Vec::new();
    let mut visited = [false; STANDARD_CONFIG_BYTES / 4];
    // The low two bits of every capability pointer are reserved.
    let mut pointer = first & !0x3;
    while pointer != 0 {
        let offset = u16::from(pointer);
        let slot = usize::from(pointer) / 4;
        if offset < FIRST_CAPABILITY_OFFSET || visited[slot] {
            break;
        }
        visited[slot] = true;
        let header = read_config_dword(access, address, offset);
        capabilities.push(Capability {
            id: header as u8,
            offset,
        });
        pointer = (header >> 8) as u8 & !0x3;
    }
    capabilities
}

/// Whether a capability of `length` bytes at `offset` fits in the standard configuration space.
/// Checked before decoding MSI/MSI-X so a hostile offset can never steer later writes past 0xFF,
/// where the 0xCF8 mechanism would alias them onto the header (a BAR, say).
pub(crate) fn fits(offset: u16, length: u16) -> bool {
    usize::from(offset) + usize::from(length) <= STANDARD_CONFIG_BYTES
}
