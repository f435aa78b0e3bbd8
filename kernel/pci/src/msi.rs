//! MSI and MSI-X.
//!
//! Register layouts are written out here because pci_types' `MsiCapability` and
//! `MsixCapability` can only be obtained from its (unbounded) capability iterator, and its MSI
//! mask accessors ignore the 32-bit-address-with-per-vector-masking layout (mask at +0x0C).

use crate::access::{read_config_dword, write_config_dword};
use crate::capability::fits;
use crate::command::disable_intx;
use crate::{PciError, PciFunction};
use pci_types::ConfigRegionAccess;

/// Bits of the capability's first dword: Message Control is the upper half.
const MSI_ENABLE: u32 = 1 << 16;
const MSI_MULTIPLE_MESSAGE_CAPABLE_SHIFT: u32 = 17;
const MSI_MULTIPLE_MESSAGE_ENABLE_SHIFT: u32 = 20;
const MSI_64BIT: u32 = 1 << 23;
const MSI_PER_VECTOR_MASKING: u32 = 1 << 24;
const MSI_ADDRESS_LOW: u16 = 0x04;
const MSI_ADDRESS_HIGH: u16 = 0x08;

const MSIX_TABLE_SIZE_MASK: u32 = 0x7ff << 16;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_TABLE: u16 = 0x04;
const MSIX_PBA: u16 = 0x08;
const MSIX_CAPABILITY_LENGTH: u16 = 0x0c;

/// Bytes per MSI-X table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u32 = 16;
/// Bit 0 of an entry's vector control: the entry is masked.
const MSIX_ENTRY_MASKED: u32 = 1;

/// The x86 interrupt address window (Intel SDM vol. 3, "Message Signalled Interrupts").
const X86_MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
const X86_MSI_DESTINATION_SHIFT: u32 = 12;
/// The lowest vector the local APIC accepts; 0..=15 raise an illegal-vector error.
const FIRST_VALID_VECTOR: u8 = 16;

/// An MSI or MSI-X message: the device writes `data` to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The x86 message that delivers `vector` to the local APIC `apic_id`: physical destination,
/// fixed delivery, edge triggered. Serves both MSI and MSI-X.
///
/// Only 8-bit APIC IDs fit the address; larger ones need interrupt remapping (not supported).
pub fn msix_message(apic_id: u32, vector: u8) -> Result<MsiMessage, PciError> {
    if apic_id > 0xff {
        return Err(PciError::ApicIdOutOfRange(apic_id));
    }
    if vector < FIRST_VALID_VECTOR {
        return Err(PciError::InvalidVector(vector));
    }
    // Data: vector in bits 7:0; delivery mode fixed (000), edge (bit 15 = 0) are all zero bits.
    Ok(MsiMessage {
        address: X86_MSI_ADDRESS_BASE | u64::from(apic_id) << X86_MSI_DESTINATION_SHIFT,
        data: u32::from(vector),
    })
}

/// The 16-byte MSI-X table entry for `message` as the four dwords the kernel stores at
/// [`MsixInfo::table_entry_offset`]: address low, address high, data, vector control.
///
/// Write the first three before the fourth so an unmasked entry is never half-written.
pub fn msix_table_entry(message: MsiMessage, masked: bool) -> [u32; 4] {
    [
        message.address as u32,
        (message.address >> 32) as u32,
        message.data,
        if masked { MSIX_ENTRY_MASKED } else { 0 },
    ]
}

/// A decoded MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiInfo {
    pub cap_offset: u16,
    pub is_64bit: bool,
    pub per_vector_masking: bool,
    /// log2 of the vectors the function can send (0..=5).
    pub multiple_message_capable_log2: u8,
}

impl MsiInfo {
    /// Decodes the capability whose header dword `header` sits at `cap_offset`; `None` if it
    /// would extend past the standard configuration space.
    pub(crate) fn decode(cap_offset: u16, header: u32) -> Option<MsiInfo> {
        let capable = ((header >> MSI_MULTIPLE_MESSAGE_CAPABLE_SHIFT) & 0b111) as u8;
        let info = MsiInfo {
            cap_offset,
            is_64bit: header & MSI_64BIT != 0,
            per_vector_masking: header & MSI_PER_VECTOR_MASKING != 0,
            // 0b110 and 0b111 are reserved; assume the one vector every function has.
            multiple_message_capable_log2: if capable <= 5 { capable } else { 0 },
        };
        fits(cap_offset, info.length()).then_some(info)
    }

    pub fn max_vectors(&self) -> u32 {
        1 << self.multiple_message_capable_log2
    }

    /// Offset of Message Data from the capability start.
    fn data_offset(&self) -> u16 {
        if self.is_64bit {
            0x0c
        } else {
            0x08
        }
    }

    /// Offset of the Mask Bits register (present only with per-vector masking).
    fn mask_offset(&self) -> Option<u16> {
        self.per_vector_masking.then(|| self.data_offset() + 4)
    }

    /// Bytes the capability occupies: the mask and pending registers follow data when present.
    fn length(&self) -> u16 {
        self.data_offset() + 4 + if self.per_vector_masking { 8 } else { 0 }
    }
}

/// A decoded MSI-X capability. The table and PBA live in memory BARs the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    pub cap_offset: u16,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR index (0..=5) holding the table.
    pub table_bar: u8,
    /// Byte offset of the table inside `table_bar`.
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixInfo {
    /// Decodes from the three capability dwords; `None` if the capability overruns the
    /// standard configuration space or names a reserved BAR index (6, 7), which the kernel
    /// could not map.
    pub(crate) fn decode(cap_offset: u16, header: u32, table: u32, pba: u32) -> Option<MsixInfo> {
        let info = MsixInfo {
            cap_offset,
            table_size: ((header & MSIX_TABLE_SIZE_MASK) >> 16) as u16 + 1,
            table_bar: (table & 0x7) as u8,
            table_offset: table & !0x7,
            pba_bar: (pba & 0x7) as u8,
            pba_offset: pba & !0x7,
        };
        let valid =
            fits(cap_offset, MSIX_CAPABILITY_LENGTH) && info.table_bar <= 5 && info.pba_bar <= 5;
        valid.then_some(info)
    }

    /// Byte offset of table entry `index` inside BAR `table_bar`, or `None` past the table.
    pub fn table_entry_offset(&self, index: u16) -> Option<u32> {
        (index < self.table_size)
            .then(|| self.table_offset + MSIX_TABLE_ENTRY_SIZE * u32::from(index))
    }

    /// Where entry `index`'s pending bit lives: byte offset of its qword inside BAR `pba_bar`,
    /// and the bit number in that qword.
    pub fn pending_bit(&self, index: u16) -> Option<(u32, u32)> {
        (index < self.table_size).then(|| {
            (
                self.pba_offset + 8 * (u32::from(index) / 64),
                u32::from(index) % 64,
            )
        })
    }
}

pub(crate) fn decode_msi(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    cap_offset: u16,
) -> Option<MsiInfo> {
    MsiInfo::decode(
        cap_offset,
        read_config_dword(access, function.address, cap_offset),
    )
}

pub(crate) fn decode_msix(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    cap_offset: u16,
) -> Option<MsixInfo> {
    let address = function.address;
    // Checked before reading the table/PBA dwords so even the reads stay below 0x100.
    if !fits(cap_offset, MSIX_CAPABILITY_LENGTH) {
        return None;
    }
    MsixInfo::decode(
        cap_offset,
        read_config_dword(access, address, cap_offset),
        read_config_dword(access, address, cap_offset + MSIX_TABLE),
        read_config_dword(access, address, cap_offset + MSIX_PBA),
    )
}

fn update_capability_header(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    cap_offset: u16,
    f: impl FnOnce(u32) -> u32,
) {
    let old = read_config_dword(access, function.address, cap_offset);
    // The ID and next-pointer bytes written back are read-only; Message Control has no
    // write-one-to-clear bits, so a read-modify-write of the dword is safe.
    write_config_dword(access, function.address, cap_offset, f(old));
}

/// Turns MSI-X on: disables MSI if it was on (the two must never be enabled together), disables
/// INTx, then sets MSI-X Enable, and Function Mask if `function_mask`.
///
/// Program the table entries (see [`msix_table_entry`]) while the function is masked, then call
/// [`set_msix_function_mask`]`(.., false)`; or enable unmasked with every entry masked.
pub fn enable_msix(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    function_mask: bool,
) -> Result<(), PciError> {
    let msix = function.msix.ok_or(PciError::NoMsixCapability)?;
    if let Some(msi) = function.msi {
        update_capability_header(access, function, msi.cap_offset, |h| h & !MSI_ENABLE);
    }
    disable_intx(access, function.address);
    update_capability_header(access, function, msix.cap_offset, |h| {
        let h = h | MSIX_ENABLE;
        if function_mask {
            h | MSIX_FUNCTION_MASK
        } else {
            h & !MSIX_FUNCTION_MASK
        }
    });
    Ok(())
}

/// Sets or clears MSI-X Function Mask, which holds back every vector of the function.
pub fn set_msix_function_mask(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    masked: bool,
) -> Result<(), PciError> {
    let msix = function.msix.ok_or(PciError::NoMsixCapability)?;
    update_capability_header(access, function, msix.cap_offset, |h| {
        if masked {
            h | MSIX_FUNCTION_MASK
        } else {
            h & !MSIX_FUNCTION_MASK
        }
    });
    Ok(())
}

/// Programs MSI with `message` for 2^`count_log2` vectors and enables it; disables MSI-X and
/// INTx.
///
/// With several vectors the device ORs the vector number into the low data bits, so the
/// message's vector must be aligned to the count. With per-vector masking, the vectors in use
/// are unmasked and the rest masked. MSI is disabled while address and data change so the
/// device never sends a half-updated message.
pub fn configure_msi(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
    message: MsiMessage,
    count_log2: u8,
) -> Result<(), PciError> {
    let msi = function.msi.ok_or(PciError::NoMsiCapability)?;
    if count_log2 > msi.multiple_message_capable_log2 {
        return Err(PciError::MsiCountUnsupported {
            requested_log2: count_log2,
            capable_log2: msi.multiple_message_capable_log2,
        });
    }
    if message.data & ((1 << count_log2) - 1) != 0 {
        return Err(PciError::MsiVectorMisaligned {
            data: message.data,
            count_log2,
        });
    }
    if message.data > 0xffff {
        return Err(PciError::MsiDataTooWide(message.data));
    }
    if !msi.is_64bit && message.address > u64::from(u32::MAX) {
        return Err(PciError::MsiAddressNot32Bit(message.address));
    }

    let address = function.address;
    let base = msi.cap_offset;
    if let Some(msix) = function.msix {
        update_capability_header(access, function, msix.cap_offset, |h| h & !MSIX_ENABLE);
    }
    update_capability_header(access, function, base, |h| h & !MSI_ENABLE);

    write_config_dword(
        access,
        address,
        base + MSI_ADDRESS_LOW,
        message.address as u32,
    );
    if msi.is_64bit {
        write_config_dword(
            access,
            address,
            base + MSI_ADDRESS_HIGH,
            (message.address >> 32) as u32,
        );
    }
    write_config_dword(access, address, base + msi.data_offset(), message.data);
    if let Some(mask_offset) = msi.mask_offset() {
        // One mask bit per vector; set every bit above the vectors in use (none when all 32).
        let masked = u32::MAX.checked_shl(1 << count_log2).unwrap_or(0);
        write_config_dword(access, address, base + mask_offset, masked);
    }

    disable_intx(access, address);
    update_capability_header(access, function, base, |h| {
        let h = h & !(0b111 << MSI_MULTIPLE_MESSAGE_ENABLE_SHIFT);
        h | u32::from(count_log2) << MSI_MULTIPLE_MESSAGE_ENABLE_SHIFT | MSI_ENABLE
    });
    Ok(())
}
