//! Enumeration of the q35-like topology.

use super::{addr, find, q35, IO_MEM_MASTER};
use crate::{
    enumerate, enumerate_segment, Bar, Capability, HeaderType, MsiInfo, MsixInfo, PciAddress,
};
use alloc::format;
use alloc::vec::Vec;

#[test]
fn enumerate_finds_every_function_in_address_order() {
    let functions = enumerate(&q35());
    let found: Vec<PciAddress> = functions.iter().map(|f| f.address).collect();
    let expected = [
        addr(0, 0, 0),
        addr(0, 1, 0),
        addr(0, 2, 0),
        addr(0, 3, 0),
        addr(0, 4, 0),
        addr(0, 0x1f, 0),
        addr(0, 0x1f, 2),
        addr(0, 0x1f, 3),
        addr(1, 0, 0),
        addr(1, 1, 0),
        addr(2, 0, 0),
    ];
    assert_eq!(found, expected);
}

#[test]
fn identity_and_class_fields_are_decoded() {
    let functions = enumerate(&q35());
    let xhci = find(&functions, addr(0, 4, 0));
    assert_eq!((xhci.vendor_id, xhci.device_id), (0x1b36, 0x000d));
    assert_eq!(
        (xhci.class, xhci.subclass, xhci.prog_if),
        (0x0c, 0x03, 0x30)
    );
    assert_eq!(xhci.class_code(), 0x0c0330);
    assert_eq!(xhci.revision, 1);
    assert_eq!(xhci.header_type, HeaderType::Endpoint);
    assert_eq!((xhci.interrupt_pin, xhci.interrupt_line), (1, 10));

    let virtio = find(&functions, addr(0, 3, 0));
    assert_eq!(
        (virtio.subsystem_vendor_id, virtio.subsystem_id),
        (0x1af4, 0x0001)
    );
}

#[test]
fn xhci_bar0_is_a_64_bit_16k_window_taking_two_slots() {
    let functions = enumerate(&q35());
    let xhci = find(&functions, addr(0, 4, 0));
    assert_eq!(
        xhci.bars[0],
        Some(Bar::Memory64 {
            address: 0xfebf_0000,
            size: 0x4000,
            prefetchable: false
        })
    );
    assert!(xhci.bars[1..].iter().all(Option::is_none));
}

#[test]
fn virtio_net_bars_cover_io_mem32_and_prefetchable_mem64() {
    let functions = enumerate(&q35());
    let virtio = find(&functions, addr(0, 3, 0));
    assert_eq!(
        virtio.bars[0],
        Some(Bar::Io {
            port: 0xc000,
            size: 0x20
        })
    );
    assert_eq!(
        virtio.bars[1],
        Some(Bar::Memory32 {
            address: 0xfebf_1000,
            size: 0x1000,
            prefetchable: false
        })
    );
    assert_eq!(virtio.bars[2], None);
    assert_eq!(virtio.bars[3], None);
    assert_eq!(
        virtio.bars[4],
        Some(Bar::Memory64 {
            address: 0xfe00_0000,
            size: 0x4000,
            prefetchable: true
        })
    );
    assert_eq!(virtio.bars[5], None, "upper half of BAR4");
}

#[test]
fn vga_prefetchable_framebuffer_and_sparse_bars() {
    let functions = enumerate(&q35());
    let vga = find(&functions, addr(0, 1, 0));
    assert_eq!(
        vga.bars[0],
        Some(Bar::Memory32 {
            address: 0xfd00_0000,
            size: 0x0100_0000,
            prefetchable: true
        })
    );
    assert_eq!(vga.bars[1], None);
    assert_eq!(
        vga.bars[2].map(|b| (b.address(), b.size())),
        Some((0xfebf_4000, 0x1000))
    );
}

#[test]
fn multi_function_device_yields_each_present_function() {
    let functions = enumerate(&q35());
    let lpc = find(&functions, addr(0, 0x1f, 0));
    assert!(lpc.multi_function);
    assert_eq!(lpc.class_name(), "ISA bridge");
    let ahci = find(&functions, addr(0, 0x1f, 2));
    assert_eq!(ahci.class_name(), "SATA AHCI controller");
    assert_eq!(
        ahci.bars[4],
        Some(Bar::Io {
            port: 0xc040,
            size: 0x20
        })
    );
    let smbus = find(&functions, addr(0, 0x1f, 3));
    assert_eq!(smbus.class_name(), "SMBus controller");
    assert_eq!(
        smbus.bars[4],
        Some(Bar::Io {
            port: 0x0700,
            size: 0x40
        })
    );
    assert!(!functions.iter().any(|f| f.address == addr(0, 0x1f, 1)));
}

#[test]
fn devices_behind_bridges_are_found_two_levels_deep() {
    let functions = enumerate(&q35());
    let root_port = find(&functions, addr(0, 2, 0));
    assert!(root_port.is_pci_bridge());
    assert_eq!(root_port.secondary_bus, Some(1));
    assert_eq!(
        root_port.bars[0],
        Some(Bar::Memory32 {
            address: 0xfebf_5000,
            size: 0x1000,
            prefetchable: false
        })
    );
    assert_eq!(
        root_port.capabilities,
        [Capability {
            id: 0x10,
            offset: 0x40
        }]
    );
    assert_eq!(root_port.interrupt_pin, 1);

    let e1000e = find(&functions, addr(1, 0, 0));
    assert_eq!(e1000e.bars[0].map(|b| b.size()), Some(0x2_0000));
    assert_eq!(
        e1000e.bars[2],
        Some(Bar::Io {
            port: 0xd000,
            size: 0x20
        })
    );
    assert_eq!(find(&functions, addr(1, 1, 0)).secondary_bus, Some(2));
    let e1000 = find(&functions, addr(2, 0, 0));
    assert_eq!(
        e1000.bars[1],
        Some(Bar::Io {
            port: 0xe000,
            size: 0x40
        })
    );
}

#[test]
fn xhci_capabilities_and_msix_table_location() {
    let functions = enumerate(&q35());
    let xhci = find(&functions, addr(0, 4, 0));
    assert_eq!(
        xhci.capabilities,
        [
            Capability {
                id: 0x11,
                offset: 0x40
            },
            Capability {
                id: 0x10,
                offset: 0x4c
            }
        ]
    );
    assert_eq!(
        xhci.msix,
        Some(MsixInfo {
            cap_offset: 0x40,
            table_size: 16,
            table_bar: 0,
            table_offset: 0x3000,
            pba_bar: 0,
            pba_offset: 0x3800,
        })
    );
    assert_eq!(xhci.msi, None);
}

#[test]
fn virtio_msix_in_bar1_and_vendor_capabilities_listed() {
    let functions = enumerate(&q35());
    let virtio = find(&functions, addr(0, 3, 0));
    let ids: Vec<u8> = virtio.capabilities.iter().map(|c| c.id).collect();
    assert_eq!(ids, [0x11, 0x09, 0x09]);
    let msix = virtio.msix.expect("virtio-net has MSI-X");
    assert_eq!(
        (msix.table_size, msix.table_bar, msix.table_offset),
        (3, 1, 0)
    );
    assert_eq!((msix.pba_bar, msix.pba_offset), (1, 0x800));
}

#[test]
fn msi_variants_are_decoded() {
    let functions = enumerate(&q35());
    assert_eq!(
        find(&functions, addr(1, 0, 0)).msi,
        Some(MsiInfo {
            cap_offset: 0x40,
            is_64bit: true,
            per_vector_masking: true,
            multiple_message_capable_log2: 3
        })
    );
    let e1000 = find(&functions, addr(2, 0, 0)).msi.unwrap();
    assert!(!e1000.is_64bit && !e1000.per_vector_masking);
    assert_eq!(e1000.max_vectors(), 4);
    assert_eq!(
        find(&functions, addr(1, 0, 0)).msix.map(|m| m.table_size),
        Some(5)
    );
}

#[test]
fn sizing_restores_every_header_register_and_never_writes_a_decoding_bar() {
    let addresses: Vec<PciAddress> = enumerate(&q35()).iter().map(|f| f.address).collect();
    let space = q35();
    let snapshot = |space: &crate::fake::FakeConfigSpace| -> Vec<u32> {
        addresses
            .iter()
            .flat_map(|&a| (0..0x40).step_by(4).map(move |o| (a, o)))
            .map(|(a, o)| space.peek(a, o))
            .collect()
    };
    let before = snapshot(&space);
    enumerate(&space);
    assert_eq!(snapshot(&space), before);
    assert!(space.writes() > 0, "BARs were probed");
    assert_eq!(space.bar_writes_while_decoding(), 0);
    assert_eq!(space.command(addr(0, 3, 0)), IO_MEM_MASTER);
}

#[test]
fn sizing_keeps_latched_status_error_bits() {
    use crate::fake::{FakeConfigSpace, FakeFunction};
    let space = FakeConfigSpace::new();
    let received_master_abort = 1 << 13;
    space.insert(
        addr(0, 5, 0),
        FakeFunction::endpoint(0x8086, 0x100e, 0x02, 0x00, 0x00)
            .command(0x0003)
            .status(received_master_abort)
            .mem32_bar(0, 0xfe60_0000, 0x2_0000, false),
    );
    enumerate(&space);
    assert_eq!(
        space.peek(addr(0, 5, 0), 0x04) >> 16,
        u32::from(received_master_abort)
    );
    assert_eq!(space.command(addr(0, 5, 0)), 0x0003);
}

#[test]
fn boot_log_line_for_xhci_matches_the_documented_format() {
    let functions = enumerate(&q35());
    assert_eq!(
        format!("{}", find(&functions, addr(0, 4, 0))),
        "00:04.0 1b36:000d xHCI USB controller (0c0330) irq pin A bar0 mem64 0xfebf0000+0x4000 msix 16"
    );
    assert_eq!(
        format!("{}", find(&functions, addr(0, 3, 0))),
        "00:03.0 1af4:1000 Ethernet controller (020000) irq pin A bar0 io 0xc000+0x20 \
         bar1 mem32 0xfebf1000+0x1000 bar4 mem64-pref 0xfe000000+0x4000 msix 3"
    );
    assert_eq!(
        format!("{}", find(&functions, addr(0, 0, 0))),
        "00:00.0 8086:29c0 host bridge (060000)"
    );
    assert_eq!(
        format!("{}", find(&functions, addr(1, 0, 0))),
        "01:00.0 8086:10d3 Ethernet controller (020000) irq pin A bar0 mem32 0xfe800000+0x20000 \
         bar1 mem32 0xfe820000+0x20000 bar2 io 0xd000+0x20 bar3 mem32 0xfe840000+0x4000 msi 8 msix 5"
    );
}

#[test]
fn nonzero_segment_is_printed() {
    let functions = enumerate_segment(&q35(), 1);
    assert!(format!("{}", functions[0]).starts_with("0001:00:00.0 8086:29c0"));
}

#[test]
fn enumerate_accepts_a_trait_object() {
    let space = q35();
    let access: &dyn crate::ConfigRegionAccess = &space;
    assert_eq!(enumerate(access).len(), 11);
}
