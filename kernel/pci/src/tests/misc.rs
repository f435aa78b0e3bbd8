//! Addressing helpers, class names, command register helpers.

use super::{addr, q35};
use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::{
    class_name, ecam_offset, enable_bus_master_and_memory, legacy_config_address, read_config_dword,
};

#[test]
fn legacy_config_address_packs_bus_device_function_register() {
    assert_eq!(legacy_config_address(addr(0, 0, 0), 0), 0x8000_0000);
    assert_eq!(legacy_config_address(addr(0, 4, 0), 0x10), 0x8000_2010);
    assert_eq!(legacy_config_address(addr(1, 31, 7), 0xfc), 0x8001_fffc);
    assert_eq!(legacy_config_address(addr(0xff, 0, 0), 0x3c), 0x80ff_003c);
}

#[test]
fn ecam_offset_packs_bus_device_function_register() {
    assert_eq!(ecam_offset(0, 4, 0, 0), 0x2_0000);
    assert_eq!(ecam_offset(1, 0, 0, 0x100), 0x10_0100);
    assert_eq!(ecam_offset(0, 0x1f, 3, 0x10), 0xf_b010);
    assert_eq!(ecam_offset(255, 31, 7, 0xffc), 0xfff_fffc);
}

#[test]
fn class_names_cover_a_pc() {
    assert_eq!(class_name(0x06, 0x00, 0x00), "host bridge");
    assert_eq!(class_name(0x06, 0x01, 0x00), "ISA bridge");
    assert_eq!(class_name(0x06, 0x04, 0x00), "PCI bridge");
    assert_eq!(class_name(0x01, 0x01, 0x80), "IDE controller");
    assert_eq!(class_name(0x01, 0x06, 0x01), "SATA AHCI controller");
    assert_eq!(class_name(0x01, 0x08, 0x02), "NVMe controller");
    assert_eq!(class_name(0x02, 0x00, 0x00), "Ethernet controller");
    assert_eq!(class_name(0x03, 0x00, 0x00), "VGA controller");
    assert_eq!(class_name(0x0c, 0x03, 0x00), "UHCI USB controller");
    assert_eq!(class_name(0x0c, 0x03, 0x10), "OHCI USB controller");
    assert_eq!(class_name(0x0c, 0x03, 0x20), "EHCI USB controller");
    assert_eq!(class_name(0x0c, 0x03, 0x30), "xHCI USB controller");
    assert_eq!(class_name(0x0c, 0x05, 0x00), "SMBus controller");
    assert_eq!(class_name(0xff, 0x00, 0x00), "unknown");
    assert_eq!(class_name(0x0c, 0x42, 0x00), "unknown");
}

#[test]
fn enable_bus_master_and_memory_keeps_other_bits_and_status() {
    let space = FakeConfigSpace::new();
    let a = addr(0, 3, 0);
    space.insert(
        a,
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00)
            .command(1 << 10)
            .status(1 << 13),
    );
    enable_bus_master_and_memory(&space, a);
    assert_eq!(space.command(a), (1 << 10) | 0b110);
    assert_eq!(
        space.peek(a, 0x04) >> 16,
        1 << 13,
        "write-one-to-clear status untouched"
    );
}

#[test]
fn read_config_dword_refuses_invalid_offsets_without_touching_the_bus() {
    let space = q35();
    let reads = space.reads();
    assert_eq!(read_config_dword(&space, addr(0, 4, 0), 0x02), u32::MAX);
    assert_eq!(read_config_dword(&space, addr(0, 4, 0), 0x1000), u32::MAX);
    assert_eq!(space.reads(), reads);
    assert_eq!(read_config_dword(&space, addr(0, 4, 0), 0x00), 0x000d_1b36);
    assert_eq!(
        read_config_dword(&space, addr(9, 0, 0), 0x00),
        u32::MAX,
        "absent function"
    );
}
