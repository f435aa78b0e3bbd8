//! virtio over PCI (virtio 1.x, 4.1.4): the vendor-specific capabilities that say where a
//! device's configuration structures lie in its BARs.
//!
//! The `virtio-drivers` crate walks these itself to build its transport; the kernel reads them
//! too because that transport leaves two registers untouched (the MSI-X vector numbers in the
//! common configuration) and gives no access to the device-specific configuration (the link
//! status). Every field is checked against the BAR it points into, so a hostile capability
//! yields `None`, never an address outside the device's window.

use crate::access::read_config_dword;
use crate::capability::capability_id;
use crate::function::PciFunction;
use pci_types::ConfigRegionAccess;

/// `cfg_type` of `virtio_pci_cap`.
pub mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
}

/// The size of `virtio_pci_cap`: header, bar/id/padding, offset, length.
const VIRTIO_PCI_CAP_LEN: u8 = 16;

/// One configuration structure: `length` bytes at `offset` in memory BAR `bar`, which is at
/// physical `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioStructure {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
    pub address: u64,
}

/// The structures a virtio PCI function offers (the first well-formed capability of each type,
/// as the specification tells drivers to use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioStructures {
    pub common: Option<VirtioStructure>,
    pub notify: Option<VirtioStructure>,
    pub isr: Option<VirtioStructure>,
    pub device: Option<VirtioStructure>,
}

/// Reads the vendor-specific capabilities of `function` (enumerated, so its BARs are known).
/// Capabilities that are too short, name a BAR that is absent or I/O, or reach past the end of
/// their BAR are skipped.
pub fn virtio_structures(
    access: &(impl ConfigRegionAccess + ?Sized),
    function: &PciFunction,
) -> VirtioStructures {
    let mut found = VirtioStructures::default();
    let vendor_capabilities = function
        .capabilities
        .iter()
        .filter(|c| c.id == capability_id::VENDOR_SPECIFIC);
    for capability in vendor_capabilities {
        let header = read_config_dword(access, function.address, capability.offset);
        let cap_len = (header >> 16) as u8;
        let kind = (header >> 24) as u8;
        // The capability's four dwords must lie inside the 256-byte standard space too.
        if cap_len < VIRTIO_PCI_CAP_LEN || !crate::capability::fits(capability.offset, 16) {
            continue;
        }
        let bar = read_config_dword(access, function.address, capability.offset + 4) as u8;
        let offset = read_config_dword(access, function.address, capability.offset + 8);
        let length = read_config_dword(access, function.address, capability.offset + 12);
        let Some(structure) = locate(function, bar, offset, length) else {
            continue;
        };
        let slot = match kind {
            cfg_type::COMMON => &mut found.common,
            cfg_type::NOTIFY => &mut found.notify,
            cfg_type::ISR => &mut found.isr,
            cfg_type::DEVICE => &mut found.device,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(structure);
        }
    }
    found
}

/// The structure at `offset`..`offset + length` of memory BAR `bar`, if it lies inside it.
fn locate(function: &PciFunction, bar: u8, offset: u32, length: u32) -> Option<VirtioStructure> {
    let window = function
        .bars
        .get(usize::from(bar))
        .copied()
        .flatten()
        .filter(|b| b.is_memory())?;
    let end = u64::from(offset).checked_add(u64::from(length))?;
    if length == 0 || end > window.size() {
        return None;
    }
    Some(VirtioStructure {
        bar,
        offset,
        length,
        address: window.address().checked_add(u64::from(offset))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};
    use crate::{enumerate, PciAddress};

    /// `virtio_pci_cap` as QEMU lays it out: cap_len 16 (20 for notify), cfg_type, bar, offset,
    /// length (then notify_off_multiplier for notify).
    fn virtio_cap(
        function: FakeFunction,
        kind: u8,
        bar: u8,
        offset: u32,
        length: u32,
    ) -> FakeFunction {
        let cap_len: u16 = if kind == cfg_type::NOTIFY { 20 } else { 16 };
        let control = u16::from(kind) << 8 | cap_len;
        if kind == cfg_type::NOTIFY {
            function.capability(0x09, control, &[u32::from(bar), offset, length, 4])
        } else {
            function.capability(0x09, control, &[u32::from(bar), offset, length])
        }
    }

    /// QEMU 7.2's transitional virtio-net-pci: I/O BAR0 (legacy), BAR1 the MSI-X table, 64-bit
    /// BAR4 with the four modern structures, 4 KiB apart.
    fn qemu_virtio_net() -> FakeFunction {
        let function = FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00)
            .subsystem(0x1af4, 0x0001)
            .io_bar(0, 0xc000, 0x20)
            .mem32_bar(1, 0xfebf_1000, 0x1000, false)
            .mem64_bar(4, 0xfe00_0000, 0x4000, true)
            .msix(4, 1, 0x0000, 1, 0x0800);
        let function = virtio_cap(function, cfg_type::COMMON, 4, 0x0000, 0x1000);
        let function = virtio_cap(function, cfg_type::ISR, 4, 0x1000, 0x1000);
        let function = virtio_cap(function, cfg_type::DEVICE, 4, 0x2000, 0x1000);
        virtio_cap(function, cfg_type::NOTIFY, 4, 0x3000, 0x1000)
    }

    fn structures_of(function: FakeFunction) -> VirtioStructures {
        let space = FakeConfigSpace::new();
        let address = PciAddress::new(0, 0, 3, 0);
        space.insert(address, function);
        let functions = enumerate(&space);
        virtio_structures(&space, &functions[0])
    }

    #[test]
    fn finds_qemu_structures_in_bar4() {
        let found = structures_of(qemu_virtio_net());
        let at = |offset: u32| VirtioStructure {
            bar: 4,
            offset,
            length: 0x1000,
            address: 0xfe00_0000 + u64::from(offset),
        };
        assert_eq!(found.common, Some(at(0x0000)));
        assert_eq!(found.isr, Some(at(0x1000)));
        assert_eq!(found.device, Some(at(0x2000)));
        assert_eq!(found.notify, Some(at(0x3000)));
    }

    #[test]
    fn first_capability_of_a_type_wins() {
        let function = virtio_cap(qemu_virtio_net(), cfg_type::COMMON, 4, 0x2000, 0x100);
        assert_eq!(structures_of(function).common.map(|s| s.offset), Some(0));
    }

    #[test]
    fn legacy_only_device_has_no_structures() {
        let function = FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00)
            .io_bar(0, 0xc000, 0x20)
            .msix(2, 0, 0, 0, 0x800);
        assert_eq!(structures_of(function), VirtioStructures::default());
    }

    #[test]
    fn hostile_capabilities_are_skipped() {
        let base = FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0x00, 0x00)
            .io_bar(0, 0xc000, 0x20)
            .mem64_bar(4, 0xfe00_0000, 0x4000, true);
        // A BAR that does not exist, an I/O BAR, a BAR index past 5, a structure running past
        // the end of its BAR, one whose offset + length overflows 32 bits, an empty one.
        let cases: [(u8, u32, u32); 6] = [
            (2, 0, 0x100),
            (0, 0, 0x10),
            (9, 0, 0x100),
            (4, 0x3f00, 0x200),
            (4, 0xffff_ff00, 0x200),
            (4, 0x100, 0),
        ];
        for (bar, offset, length) in cases {
            let function = virtio_cap(base.clone(), cfg_type::COMMON, bar, offset, length);
            assert_eq!(
                structures_of(function).common,
                None,
                "bar {bar} offset {offset:#x} length {length:#x}"
            );
        }
        // cap_len below 16: the fields after the header are not part of it.
        let short =
            base.clone()
                .capability(0x09, u16::from(cfg_type::COMMON) << 8 | 8, &[4, 0, 0x100]);
        assert_eq!(structures_of(short).common, None);
        // An unknown cfg_type (5 is the PCI configuration access window) is not a structure.
        let pci_cfg = virtio_cap(base, 5, 4, 0, 0x100);
        assert_eq!(structures_of(pci_cfg), VirtioStructures::default());
    }
}
