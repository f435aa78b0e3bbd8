//! MSI-X and MSI programming.

use super::{addr, find, q35};
use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::{
    configure_msi, enable_intx, enable_msix, enumerate, msix_message, msix_table_entry,
    set_msix_function_mask, MsiMessage, PciError, PciFunction, MSIX_TABLE_ENTRY_SIZE,
};

const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
const MSI_ENABLE: u32 = 1 << 16;
const INTX_DISABLE: u16 = 1 << 10;

fn function_at(space: &FakeConfigSpace, bus: u8, device: u8, function: u8) -> PciFunction {
    find(&enumerate(space), addr(bus, device, function)).clone()
}

/// Multiple Message Enable field of an MSI header dword.
fn msi_enabled_log2(header: u32) -> u32 {
    (header >> 20) & 0b111
}

#[test]
fn msix_message_targets_the_apic_in_physical_fixed_edge_mode() {
    assert_eq!(
        msix_message(0, 0x30),
        Ok(MsiMessage {
            address: 0xfee0_0000,
            data: 0x30
        })
    );
    assert_eq!(msix_message(255, 0xfe).map(|m| m.address), Ok(0xfeef_f000));
    assert_eq!(msix_message(3, 0x41).map(|m| m.address), Ok(0xfee0_3000));
}

#[test]
fn msix_message_rejects_wide_apic_ids_and_reserved_vectors() {
    assert_eq!(
        msix_message(256, 0x30),
        Err(PciError::ApicIdOutOfRange(256))
    );
    assert_eq!(msix_message(0, 15), Err(PciError::InvalidVector(15)));
    assert!(msix_message(0, 16).is_ok());
}

#[test]
fn msix_table_entry_layout_and_offsets() {
    let message = msix_message(2, 0x50).unwrap();
    assert_eq!(msix_table_entry(message, false), [0xfee0_2000, 0, 0x50, 0]);
    assert_eq!(msix_table_entry(message, true), [0xfee0_2000, 0, 0x50, 1]);
    let high = MsiMessage {
        address: 0x1_2345_6780,
        data: 7,
    };
    assert_eq!(msix_table_entry(high, false), [0x2345_6780, 1, 7, 0]);

    let msix = function_at(&q35(), 0, 4, 0).msix.unwrap();
    assert_eq!(MSIX_TABLE_ENTRY_SIZE, 16);
    assert_eq!(msix.table_entry_offset(0), Some(0x3000));
    assert_eq!(msix.table_entry_offset(15), Some(0x30f0));
    assert_eq!(msix.table_entry_offset(16), None);
    assert_eq!(msix.pending_bit(15), Some((0x3800, 15)));
    assert_eq!(msix.pending_bit(16), None);
}

#[test]
fn enable_msix_sets_enable_and_function_mask_and_disables_intx() {
    let space = q35();
    let xhci = function_at(&space, 0, 4, 0);
    let cap = xhci.msix.unwrap().cap_offset;
    let header_before = space.peek(xhci.address, cap);
    enable_msix(&space, &xhci, true).unwrap();

    let header = space.peek(xhci.address, cap);
    assert_eq!(
        header & (MSIX_ENABLE | MSIX_FUNCTION_MASK),
        MSIX_ENABLE | MSIX_FUNCTION_MASK
    );
    assert_eq!(
        header & !(MSIX_ENABLE | MSIX_FUNCTION_MASK),
        header_before,
        "table size, id, next kept"
    );
    let command = space.command(xhci.address);
    assert_eq!(command & INTX_DISABLE, INTX_DISABLE);
    assert_eq!(command & 0x2, 0x2, "memory decode kept");

    set_msix_function_mask(&space, &xhci, false).unwrap();
    assert_eq!(
        space.peek(xhci.address, cap) & (MSIX_ENABLE | MSIX_FUNCTION_MASK),
        MSIX_ENABLE
    );
}

#[test]
fn enable_intx_clears_interrupt_disable_and_enables_decoding() {
    let space = q35();
    let xhci = function_at(&space, 0, 4, 0);
    enable_msix(&space, &xhci, true).unwrap();
    assert_eq!(space.command(xhci.address) & INTX_DISABLE, INTX_DISABLE);
    enable_intx(&space, xhci.address);
    let command = space.command(xhci.address);
    assert_eq!(command & INTX_DISABLE, 0);
    assert_eq!(command & 0x6, 0x6, "memory decode and bus master on");
}

#[test]
fn enable_msix_unmasked_and_without_capability() {
    let space = q35();
    let virtio = function_at(&space, 0, 3, 0);
    enable_msix(&space, &virtio, false).unwrap();
    let header = space.peek(virtio.address, virtio.msix.unwrap().cap_offset);
    assert_eq!(header & (MSIX_ENABLE | MSIX_FUNCTION_MASK), MSIX_ENABLE);

    let ahci = function_at(&space, 0, 0x1f, 2);
    assert_eq!(
        enable_msix(&space, &ahci, false),
        Err(PciError::NoMsixCapability)
    );
    assert_eq!(
        set_msix_function_mask(&space, &ahci, true),
        Err(PciError::NoMsixCapability)
    );
}

#[test]
fn msi_32bit_without_masking() {
    let space = q35();
    let e1000 = function_at(&space, 2, 0, 0);
    let cap = e1000.msi.unwrap().cap_offset;
    configure_msi(&space, &e1000, msix_message(1, 0x40).unwrap(), 2).unwrap();

    assert_eq!(space.peek(e1000.address, cap + 4), 0xfee0_1000);
    assert_eq!(
        space.peek(e1000.address, cap + 8),
        0x40,
        "data follows a 32-bit address"
    );
    let header = space.peek(e1000.address, cap);
    assert_eq!(header & MSI_ENABLE, MSI_ENABLE);
    assert_eq!(msi_enabled_log2(header), 2);
    assert_eq!(space.command(e1000.address) & INTX_DISABLE, INTX_DISABLE);
}

#[test]
fn msi_64bit_with_per_vector_masking_unmasks_only_vectors_in_use() {
    let space = q35();
    let e1000e = function_at(&space, 1, 0, 0);
    let cap = e1000e.msi.unwrap().cap_offset;
    let message = msix_message(3, 0x48).unwrap();
    configure_msi(&space, &e1000e, message, 3).unwrap();

    assert_eq!(space.peek(e1000e.address, cap + 0x4), 0xfee0_3000);
    assert_eq!(space.peek(e1000e.address, cap + 0x8), 0, "address high");
    assert_eq!(space.peek(e1000e.address, cap + 0xc), 0x48);
    assert_eq!(
        space.peek(e1000e.address, cap + 0x10),
        0xffff_ff00,
        "mask: vectors 8.. masked"
    );
    let header = space.peek(e1000e.address, cap);
    assert_eq!(header & MSI_ENABLE, MSI_ENABLE);
    assert_eq!(msi_enabled_log2(header), 3);
}

#[test]
fn msi_32bit_with_per_vector_masking_keeps_mask_at_0x0c() {
    let space = FakeConfigSpace::new();
    space.insert(
        addr(0, 6, 0),
        FakeFunction::endpoint(0x8086, 0x1234, 0x02, 0x00, 0x00).msi(false, true, 5),
    );
    let function = function_at(&space, 0, 6, 0);
    let cap = function.msi.unwrap().cap_offset;
    space.poke(function.address, cap + 0xc, u32::MAX);
    configure_msi(&space, &function, msix_message(0, 0x40).unwrap(), 5).unwrap();

    assert_eq!(space.peek(function.address, cap + 0x8), 0x40);
    assert_eq!(
        space.peek(function.address, cap + 0xc),
        0,
        "all 32 vectors unmasked"
    );
    assert_eq!(msi_enabled_log2(space.peek(function.address, cap)), 5);
}

#[test]
fn msi_64bit_accepts_an_address_above_4g() {
    let space = q35();
    let ahci = function_at(&space, 0, 0x1f, 2);
    let cap = ahci.msi.unwrap().cap_offset;
    let message = MsiMessage {
        address: 0x1_0000_1000,
        data: 0x30,
    };
    configure_msi(&space, &ahci, message, 0).unwrap();
    assert_eq!(space.peek(ahci.address, cap + 0x4), 0x1000);
    assert_eq!(space.peek(ahci.address, cap + 0x8), 1);
    assert_eq!(space.peek(ahci.address, cap + 0xc), 0x30);
}

#[test]
fn msi_rejects_what_the_function_cannot_do() {
    let space = q35();
    let e1000 = function_at(&space, 2, 0, 0);
    let message = msix_message(0, 0x40).unwrap();
    assert_eq!(
        configure_msi(&space, &e1000, message, 3),
        Err(PciError::MsiCountUnsupported {
            requested_log2: 3,
            capable_log2: 2
        })
    );
    let misaligned = msix_message(0, 0x42).unwrap();
    assert_eq!(
        configure_msi(&space, &e1000, misaligned, 2),
        Err(PciError::MsiVectorMisaligned {
            data: 0x42,
            count_log2: 2
        })
    );
    let high = MsiMessage {
        address: 0x1_0000_0000,
        data: 0x40,
    };
    assert_eq!(
        configure_msi(&space, &e1000, high, 0),
        Err(PciError::MsiAddressNot32Bit(0x1_0000_0000))
    );
    let xhci = function_at(&space, 0, 4, 0);
    assert_eq!(
        configure_msi(&space, &xhci, message, 0),
        Err(PciError::NoMsiCapability)
    );
    assert_eq!(
        space.peek(e1000.address, e1000.msi.unwrap().cap_offset) & MSI_ENABLE,
        0,
        "refused calls leave MSI off"
    );
}

#[test]
fn msi_and_msix_are_never_enabled_together() {
    let space = q35();
    let e1000e = function_at(&space, 1, 0, 0);
    let msi_cap = e1000e.msi.unwrap().cap_offset;
    let msix_cap = e1000e.msix.unwrap().cap_offset;

    configure_msi(&space, &e1000e, msix_message(0, 0x40).unwrap(), 0).unwrap();
    enable_msix(&space, &e1000e, false).unwrap();
    assert_eq!(space.peek(e1000e.address, msi_cap) & MSI_ENABLE, 0);
    assert_eq!(
        space.peek(e1000e.address, msix_cap) & MSIX_ENABLE,
        MSIX_ENABLE
    );

    configure_msi(&space, &e1000e, msix_message(0, 0x40).unwrap(), 0).unwrap();
    assert_eq!(space.peek(e1000e.address, msix_cap) & MSIX_ENABLE, 0);
    assert_eq!(space.peek(e1000e.address, msi_cap) & MSI_ENABLE, MSI_ENABLE);
}
