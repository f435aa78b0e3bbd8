//! PCI logic for Tether that needs no hardware: bus enumeration, BAR sizing, capability
//! walking, MSI and MSI-X programming, class names and the two configuration-space addressing
//! schemes.
//!
//! All configuration-space traffic goes through `pci_types::ConfigRegionAccess`, which the kernel
//! implements over port I/O (0xCF8/0xCFC, see [`legacy_config_address`]) or ECAM (see
//! [`ecam_offset`]). Host tests run the same code against [`fake::FakeConfigSpace`].
//!
//! Layouts come from `pci_types` where its API is sound; the places this crate reads registers
//! itself say why next to the code (mostly: pci_types' capability iterator never terminates on a
//! looped list, its BAR sizing leaves decode enabled and panics on hostile values, and its MSI
//! types cannot be built outside its own iterator).
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod access;
mod bar;
mod capability;
mod class;
mod command;
mod enumerate;
mod function;
mod mechanism;
mod msi;
mod settled;
pub mod virtio;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use access::read_config_dword;
pub use bar::Bar;
pub use capability::{capability_id, Capability};
pub use class::class_name;
pub use command::{
    disable_intx, enable_bus_master_and_memory, enable_intx, enable_memory_decoding, read_command,
};
pub use enumerate::{enumerate, enumerate_segment};
pub use function::PciFunction;
pub use mechanism::{ecam_offset, legacy_config_address, LEGACY_CONFIG_SPACE_SIZE};
pub use msi::{
    configure_msi, enable_msix, msix_message, msix_table_entry, set_msix_function_mask, MsiInfo,
    MsiMessage, MsixInfo, MSIX_TABLE_ENTRY_SIZE,
};
pub use settled::{sizing_readback, SettledBars};

// Re-exported so users name the same types this crate's API takes.
pub use pci_types::{CommandRegister, ConfigRegionAccess, HeaderType, PciAddress};

use core::fmt;

/// Why a PCI operation refused to touch the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// The function has no (well-formed) MSI capability.
    NoMsiCapability,
    /// The function has no (well-formed) MSI-X capability.
    NoMsixCapability,
    /// x86 MSI addresses carry an 8-bit destination APIC ID; larger IDs need interrupt
    /// remapping, which Tether does not do.
    ApicIdOutOfRange(u32),
    /// Vectors 0..=15 are reserved; the local APIC flags them as illegal.
    InvalidVector(u8),
    /// More MSI vectors were asked for than the function can send (both as log2 counts).
    MsiCountUnsupported {
        requested_log2: u8,
        capable_log2: u8,
    },
    /// With 2^n MSI vectors the device ORs the vector number into the low n bits of the data, so
    /// those bits must be zero.
    MsiVectorMisaligned { data: u32, count_log2: u8 },
    /// The function's MSI capability only holds a 32-bit address.
    MsiAddressNot32Bit(u64),
    /// The MSI data register is 16 bits wide.
    MsiDataTooWide(u32),
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PciError::NoMsiCapability => write!(f, "function has no MSI capability"),
            PciError::NoMsixCapability => write!(f, "function has no MSI-X capability"),
            PciError::ApicIdOutOfRange(id) => {
                write!(
                    f,
                    "APIC ID {id} does not fit an MSI address (needs remapping)"
                )
            }
            PciError::InvalidVector(v) => write!(f, "vector {v} is reserved on x86"),
            PciError::MsiCountUnsupported {
                requested_log2,
                capable_log2,
            } => write!(
                f,
                "asked for {} MSI vectors, function supports {}",
                1u32 << requested_log2.min(31),
                1u32 << capable_log2
            ),
            PciError::MsiVectorMisaligned { data, count_log2 } => write!(
                f,
                "MSI data {data:#x} not aligned to {} vectors",
                1u32 << count_log2.min(31)
            ),
            PciError::MsiAddressNot32Bit(a) => {
                write!(f, "MSI address {a:#x} needs a 64-bit capable function")
            }
            PciError::MsiDataTooWide(d) => write!(f, "MSI data {d:#x} wider than 16 bits"),
        }
    }
}
