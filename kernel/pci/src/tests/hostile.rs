//! Malformed and hostile configuration spaces: the walk must terminate and never panic.

use super::{addr, find};
use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::{enumerate, Bar, Capability, PciAddress};
use alloc::vec::Vec;

fn nic() -> FakeFunction {
    FakeFunction::endpoint(0x8086, 0x100e, 0x02, 0x00, 0x00)
}

fn single(function: FakeFunction) -> (FakeConfigSpace, PciAddress) {
    let space = FakeConfigSpace::new();
    let a = addr(0, 5, 0);
    space.insert(a, function);
    (space, a)
}

#[test]
fn capability_pointing_at_itself_terminates() {
    // One vendor capability at 0x40 whose next pointer is 0x40.
    let (space, a) = single(
        nic()
            .capability(0x09, 0, &[])
            .raw(0x40, 0x40 << 8 | 0x09, 0),
    );
    let functions = enumerate(&space);
    assert_eq!(
        find(&functions, a).capabilities,
        [Capability {
            id: 0x09,
            offset: 0x40
        }]
    );
}

#[test]
fn two_capability_cycle_terminates() {
    let (space, a) = single(
        nic()
            .capability(0x01, 0, &[0])
            .capability(0x09, 0, &[])
            .raw(0x48, 0x40 << 8 | 0x09, 0),
    );
    let functions = enumerate(&space);
    assert_eq!(
        find(&functions, a).capabilities,
        [
            Capability {
                id: 0x01,
                offset: 0x40
            },
            Capability {
                id: 0x09,
                offset: 0x48
            }
        ]
    );
}

#[test]
fn id_zero_self_loop_terminates() {
    // pci_types' CapabilityIterator spins forever on this one: id 0 is skipped inside next().
    let (space, a) = single(nic().capability(0x09, 0, &[]).raw(0x40, 0x40 << 8, 0));
    let functions = enumerate(&space);
    assert_eq!(
        find(&functions, a).capabilities,
        [Capability {
            id: 0,
            offset: 0x40
        }]
    );
}

#[test]
fn every_slot_chained_reads_at_most_48_capabilities() {
    let mut function = nic().capability(0x09, 0, &[]);
    for offset in (0x40u32..0x100).step_by(4) {
        // Each slot points to the next; the last wraps to 0x40.
        let next = if offset == 0xfc { 0x40 } else { offset + 4 };
        function = function.raw(offset as u16, next << 8 | 0x09, 0);
    }
    let (space, a) = single(function);
    assert_eq!(find(&enumerate(&space), a).capabilities.len(), 48);
}

#[test]
fn capability_pointer_into_header_or_unaligned_is_contained() {
    let (space, a) = single(nic().capability(0x09, 0, &[]).raw(0x34, 0x10, 0));
    assert!(find(&enumerate(&space), a).capabilities.is_empty());

    let (space, a) = single(nic().capability(0x09, 0, &[]).raw(0x34, 0x43, 0));
    assert_eq!(
        find(&enumerate(&space), a).capabilities,
        [Capability {
            id: 0x09,
            offset: 0x40
        }],
        "reserved low bits ignored"
    );
}

#[test]
fn msi_capability_overrunning_256_bytes_is_not_decoded() {
    // A 64-bit MSI with per-vector masking at 0xf8 would reach 0x110: past what 0xCF8 reaches.
    let (space, a) = single(
        nic()
            .capability(0x09, 0, &[])
            .raw(0x40, 0xf8 << 8 | 0x09, 0)
            .raw(0xf8, 1 << 24 | 1 << 23 | 0x05, 0),
    );
    let function = find(&enumerate(&space), a).clone();
    assert_eq!(
        function.capabilities.last(),
        Some(&Capability {
            id: 0x05,
            offset: 0xf8
        })
    );
    assert_eq!(function.msi, None);
}

#[test]
fn msix_naming_a_reserved_bar_is_not_decoded() {
    let (space, a) = single(nic().msix(4, 0, 0, 0, 0x800).raw(0x44, 0x7, 0));
    let function = find(&enumerate(&space), a).clone();
    assert_eq!(
        function.capabilities,
        [Capability {
            id: 0x11,
            offset: 0x40
        }]
    );
    assert_eq!(function.msix, None);
}

#[test]
fn bridges_looping_back_terminate_and_find_each_function_once() {
    let space = FakeConfigSpace::new();
    space.insert(
        addr(0, 0, 0),
        FakeFunction::endpoint(0x8086, 0x29c0, 0x06, 0x00, 0x00),
    );
    space.insert(
        addr(0, 1, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 1, 1),
    );
    // Bus 1: a bridge claiming bus 0 as its secondary is followed nowhere new...
    space.insert(
        addr(1, 0, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 0, 0),
    );
    // ...one pointing at its own bus, and one to bus 2 whose bridge points back to bus 1.
    space.insert(
        addr(1, 1, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 1, 1),
    );
    space.insert(
        addr(1, 2, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 2, 2),
    );
    space.insert(
        addr(2, 0, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 1, 1),
    );
    // And a second bridge on bus 0 also claiming bus 1.
    space.insert(
        addr(0, 2, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 1, 1),
    );

    let functions = enumerate(&space);
    let found: Vec<PciAddress> = functions.iter().map(|f| f.address).collect();
    assert_eq!(
        found,
        [
            addr(0, 0, 0),
            addr(0, 1, 0),
            addr(0, 2, 0),
            addr(1, 0, 0),
            addr(1, 1, 0),
            addr(1, 2, 0),
            addr(2, 0, 0)
        ]
    );
    assert_eq!(
        find(&functions, addr(1, 0, 0)).secondary_bus,
        None,
        "secondary 0 = unconfigured"
    );
    // Three buses scanned once each: 3 x 32 vendor probes plus per-function work.
    assert!(space.reads() < 3 * 32 + 7 * 40, "reads: {}", space.reads());
}

#[test]
fn multi_function_host_bridge_roots_one_bus_per_function() {
    let space = FakeConfigSpace::new();
    let host = || FakeFunction::endpoint(0x8086, 0x1237, 0x06, 0x00, 0x00);
    space.insert(addr(0, 0, 0), host().multi_function());
    space.insert(addr(0, 0, 1), host());
    space.insert(addr(0, 0, 3), host());
    // No bridge leads to buses 1 and 3; only the host bridge functions do.
    space.insert(
        addr(1, 3, 0),
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00),
    );
    space.insert(
        addr(3, 0, 0),
        FakeFunction::endpoint(0x1b36, 0x000d, 0x0c, 0x03, 0x30),
    );
    space.insert(
        addr(2, 0, 0),
        FakeFunction::endpoint(0x1b36, 0x000d, 0x0c, 0x03, 0x30),
    );

    let found: Vec<PciAddress> = enumerate(&space).iter().map(|f| f.address).collect();
    assert_eq!(
        found,
        [
            addr(0, 0, 0),
            addr(0, 0, 1),
            addr(0, 0, 3),
            addr(1, 3, 0),
            addr(3, 0, 0)
        ],
        "bus 2 has no host bridge function and no bridge"
    );
}

#[test]
fn single_function_device_is_not_probed_beyond_function_0() {
    let space = FakeConfigSpace::new();
    space.insert(addr(0, 3, 0), nic());
    // Old devices answer on every function number; without the multi-function bit it is noise.
    space.insert(addr(0, 3, 1), nic());
    let found: Vec<PciAddress> = enumerate(&space).iter().map(|f| f.address).collect();
    assert_eq!(found, [addr(0, 3, 0)]);
}

#[test]
fn malformed_bars_are_skipped_without_panicking() {
    let (space, a) = single(
        nic()
            // Reserved memory type 0b11 (pci_types panics).
            .raw(0x10, 0xfe00_0006, 0xffff_f000)
            // Only a flag bit reads back: no size (pci_types' shift overflows).
            .raw(0x14, 0x8, 0)
            // Unimplemented.
            .raw(0x18, 0, 0)
            // 64-bit BAR in the last slot has no upper half.
            .raw(0x24, 0xfd00_0004, 0xffff_f000),
    );
    let function = find(&enumerate(&space), a).clone();
    assert_eq!(function.bars, [None; 6]);
}

#[test]
fn bar_larger_than_4g_is_sized_from_the_upper_half() {
    let (space, a) = single(
        nic()
            .command(0x2)
            .mem64_bar(2, 0x40_0000_0000, 0x2_0000_0000, true),
    );
    let function = find(&enumerate(&space), a).clone();
    assert_eq!(
        function.bars[2],
        Some(Bar::Memory64 {
            address: 0x40_0000_0000,
            size: 0x2_0000_0000,
            prefetchable: true
        })
    );
    assert_eq!(space.bar_writes_while_decoding(), 0);
}

#[test]
fn absent_bus_costs_only_vendor_probes() {
    let space = FakeConfigSpace::new();
    assert!(enumerate(&space).is_empty());
    // One read for the multi-function host bridge check, then one vendor probe per device.
    assert_eq!(space.reads(), 1 + 32);
}

#[test]
fn host_bridge_bars_are_sized_without_touching_its_decode() {
    // Deliberate: switching a host bridge's decode off can cut the CPU off from memory.
    let space = FakeConfigSpace::new();
    let a = addr(0, 0, 0);
    space.insert(
        a,
        FakeFunction::endpoint(0x8086, 0x29c0, 0x06, 0x00, 0x00)
            .command(0x0006)
            .mem32_bar(0, 0xfed0_0000, 0x4000, false),
    );
    let bar = find(&enumerate(&space), a).bars[0];
    assert_eq!(
        bar.map(|b| (b.address(), b.size())),
        Some((0xfed0_0000, 0x4000))
    );
    assert_eq!(space.command(a), 0x0006);
    assert_eq!(
        space.bar_writes_while_decoding(),
        2,
        "all-ones, then restore"
    );
}
