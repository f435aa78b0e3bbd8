//! Base address registers: decoding and sizing.
//!
//! Written here rather than with pci_types' `EndpointHeader::bar` because that one (0.10) writes
//! all-ones while the function still decodes (the BAR briefly claims a bogus window), panics on
//! the reserved memory type, overflows its shift on a BAR that reads back only flag bits, has no
//! size for I/O BARs and does not cover bridges' two BARs. The result type is ours for the same
//! reason (I/O size).

use crate::access::{read_config_dword, write_config_dword};
use crate::command::{read_command, write_command};
use pci_types::{CommandRegister, ConfigRegionAccess, PciAddress};

/// Offset of BAR 0; BAR n is at `BAR0 + 4 * n` in type 0 and type 1 headers.
const BAR0: u16 = 0x10;

/// One decoded, sized BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Memory32 {
        address: u32,
        size: u32,
        prefetchable: bool,
    },
    /// Occupies its slot and the next; the next slot of [`crate::PciFunction::bars`] is `None`.
    Memory64 {
        address: u64,
        size: u64,
        prefetchable: bool,
    },
    Io {
        port: u32,
        size: u32,
    },
}

impl Bar {
    /// Base address (memory) or first port (I/O).
    pub fn address(&self) -> u64 {
        match *self {
            Bar::Memory32 { address, .. } => u64::from(address),
            Bar::Memory64 { address, .. } => address,
            Bar::Io { port, .. } => u64::from(port),
        }
    }

    /// Size in bytes (memory) or ports (I/O); always a power of two.
    pub fn size(&self) -> u64 {
        match *self {
            Bar::Memory32 { size, .. } => u64::from(size),
            Bar::Memory64 { size, .. } => size,
            Bar::Io { size, .. } => u64::from(size),
        }
    }

    pub fn is_memory(&self) -> bool {
        !matches!(self, Bar::Io { .. })
    }

    pub fn is_prefetchable(&self) -> bool {
        match *self {
            Bar::Memory32 { prefetchable, .. } | Bar::Memory64 { prefetchable, .. } => prefetchable,
            Bar::Io { .. } => false,
        }
    }

    /// Short kind for log lines: `io`, `mem32`, `mem64`, with `-pref` when prefetchable.
    pub fn kind_name(&self) -> &'static str {
        match *self {
            Bar::Io { .. } => "io",
            Bar::Memory32 {
                prefetchable: false,
                ..
            } => "mem32",
            Bar::Memory32 {
                prefetchable: true, ..
            } => "mem32-pref",
            Bar::Memory64 {
                prefetchable: false,
                ..
            } => "mem64",
            Bar::Memory64 {
                prefetchable: true, ..
            } => "mem64-pref",
        }
    }
}

/// Decodes and sizes the first `count` BARs (6 for endpoints, 2 for bridges).
///
/// Decode is switched off in the command register around the all-ones writes so the BAR never
/// claims the window its size mask describes, then the saved command is restored. Host bridges
/// are the exception (as in Linux's `mmio_always_on`): turning their decode off can cut the CPU
/// off from memory, and they rarely have BARs anyway.
pub(crate) fn read_bars(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    count: usize,
    is_host_bridge: bool,
) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let count = count.min(6);
    if count == 0 {
        return bars;
    }
    let saved = read_command(access, address);
    let decode = CommandRegister::IO_ENABLE | CommandRegister::MEMORY_ENABLE;
    let toggle = !is_host_bridge && saved.intersects(decode);
    if toggle {
        write_command(access, address, saved - decode);
    }
    let mut slot = 0;
    while slot < count {
        let (bar, slots_used) = size_bar(access, address, slot, count);
        bars[slot] = bar;
        slot += slots_used;
    }
    if toggle {
        write_command(access, address, saved);
    }
    bars
}

/// Writes all-ones to the BAR dword at `offset`, returns what reads back, restores `original`.
fn probe(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    offset: u16,
    original: u32,
) -> u32 {
    write_config_dword(access, address, offset, u32::MAX);
    let readback = read_config_dword(access, address, offset);
    write_config_dword(access, address, offset, original);
    readback
}

/// The lowest set bit of a size mask is the size; 0 means the BAR is not implemented.
fn size_from_mask(mask: u64) -> Option<u64> {
    (mask != 0).then(|| mask & mask.wrapping_neg())
}

/// Sizes the BAR in `slot`; returns it (None if unimplemented or malformed) and how many slots
/// it occupies.
fn size_bar(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    slot: usize,
    count: usize,
) -> (Option<Bar>, usize) {
    let offset = BAR0 + 4 * slot as u16;
    let original = read_config_dword(access, address, offset);

    if original & 1 == 1 {
        // I/O BAR: bits 1:0 are flags. Devices with 16-bit decode read the upper half as zero,
        // which the lowest-set-bit rule handles.
        let mask = probe(access, address, offset, original) & !0x3;
        let bar = size_from_mask(u64::from(mask)).map(|size| Bar::Io {
            port: original & !0x3,
            size: size as u32,
        });
        return (bar, 1);
    }

    let prefetchable = original & (1 << 3) != 0;
    match (original >> 1) & 0b11 {
        // 0b01 is PCI 2.x's "below 1 MiB" type, still a 32-bit BAR.
        0b00 | 0b01 => {
            let mask = probe(access, address, offset, original) & !0xf;
            let bar = size_from_mask(u64::from(mask)).map(|size| Bar::Memory32 {
                address: original & !0xf,
                size: size as u32,
                prefetchable,
            });
            (bar, 1)
        }
        0b10 => {
            if slot + 1 >= count {
                // A 64-bit BAR needs the next slot; in the last one it is malformed.
                return (None, 1);
            }
            let original_high = read_config_dword(access, address, offset + 4);
            write_config_dword(access, address, offset, u32::MAX);
            write_config_dword(access, address, offset + 4, u32::MAX);
            let low = read_config_dword(access, address, offset) & !0xf;
            let high = read_config_dword(access, address, offset + 4);
            write_config_dword(access, address, offset, original);
            write_config_dword(access, address, offset + 4, original_high);
            let mask = u64::from(high) << 32 | u64::from(low);
            let bar = size_from_mask(mask).map(|size| Bar::Memory64 {
                address: u64::from(original_high) << 32 | u64::from(original & !0xf),
                size,
                prefetchable,
            });
            (bar, 2)
        }
        // Reserved type: skip it rather than guess (pci_types panics here).
        _ => (None, 1),
    }
}
