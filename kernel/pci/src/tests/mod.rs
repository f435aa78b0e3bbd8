//! Host tests over `FakeConfigSpace`.

mod hostile;
mod interrupts;
mod misc;
mod q35;
mod settled;

use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::{PciAddress, PciFunction};

pub(crate) fn addr(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

pub(crate) fn find(functions: &[PciFunction], address: PciAddress) -> &PciFunction {
    functions
        .iter()
        .find(|f| f.address == address)
        .unwrap_or_else(|| panic!("{address:?} not enumerated"))
}

/// Command bits: I/O, memory, bus master.
pub(crate) const IO_MEM_MASTER: u16 = 0b111;

/// A q35-like machine:
///
/// ```text
/// 00:00.0 host bridge            00:1f.0 ISA bridge (multi-function)
/// 00:01.0 VGA                    00:1f.2 AHCI (MSI 64-bit)
/// 00:02.0 root port -> bus 1     00:1f.3 SMBus
/// 00:03.0 virtio-net (MSI-X 3)   01:00.0 e1000e (MSI 64-bit + per-vector mask, MSI-X 5)
/// 00:04.0 qemu-xhci (MSI-X 16)   01:01.0 PCI bridge -> bus 2
///                                02:00.0 e1000 (MSI 32-bit, 4 vectors)
/// ```
pub(crate) fn q35() -> FakeConfigSpace {
    let space = FakeConfigSpace::new();
    space.insert(
        addr(0, 0, 0),
        FakeFunction::endpoint(0x8086, 0x29c0, 0x06, 0x00, 0x00).command(0x0006),
    );
    space.insert(
        addr(0, 1, 0),
        FakeFunction::endpoint(0x1234, 0x1111, 0x03, 0x00, 0x00)
            .revision(2)
            .command(0x0003)
            .mem32_bar(0, 0xfd00_0000, 0x0100_0000, true)
            .mem32_bar(2, 0xfebf_4000, 0x1000, false),
    );
    space.insert(
        addr(0, 2, 0),
        FakeFunction::pci_bridge(0x1b36, 0x000c, 1, 2)
            .command(0x0007)
            .interrupt(1, 10)
            .mem32_bar(0, 0xfebf_5000, 0x1000, false)
            .capability(0x10, 0x0042, &[0; 14]),
    );
    space.insert(
        addr(0, 3, 0),
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00)
            .subsystem(0x1af4, 0x0001)
            .command(IO_MEM_MASTER)
            .interrupt(1, 11)
            .io_bar(0, 0xc000, 0x20)
            .mem32_bar(1, 0xfebf_1000, 0x1000, false)
            .mem64_bar(4, 0xfe00_0000, 0x4000, true)
            .msix(3, 1, 0x0000, 1, 0x0800)
            .capability(0x09, 0x1001, &[0x0000_0004, 0x0000_1000])
            .capability(0x09, 0x1003, &[0x0000_0004, 0x0000_1000]),
    );
    space.insert(
        addr(0, 4, 0),
        FakeFunction::endpoint(0x1b36, 0x000d, 0x0c, 0x03, 0x30)
            .revision(1)
            .command(0x0002)
            .interrupt(1, 10)
            .mem64_bar(0, 0xfebf_0000, 0x4000, false)
            .msix(16, 0, 0x3000, 0, 0x3800)
            .capability(0x10, 0x0092, &[0; 14]),
    );
    space.insert(
        addr(0, 0x1f, 0),
        FakeFunction::endpoint(0x8086, 0x2918, 0x06, 0x01, 0x00)
            .revision(2)
            .multi_function(),
    );
    space.insert(
        addr(0, 0x1f, 2),
        FakeFunction::endpoint(0x8086, 0x2922, 0x01, 0x06, 0x01)
            .revision(2)
            .command(0x0007)
            .interrupt(1, 10)
            .io_bar(4, 0xc040, 0x20)
            .mem32_bar(5, 0xfebf_6000, 0x1000, false)
            .msi(true, false, 0),
    );
    space.insert(
        addr(0, 0x1f, 3),
        FakeFunction::endpoint(0x8086, 0x2930, 0x0c, 0x05, 0x00)
            .revision(2)
            .command(0x0001)
            .interrupt(1, 10)
            .io_bar(4, 0x0700, 0x40),
    );
    space.insert(
        addr(1, 0, 0),
        FakeFunction::endpoint(0x8086, 0x10d3, 0x02, 0x00, 0x00)
            .command(IO_MEM_MASTER)
            .interrupt(1, 11)
            .mem32_bar(0, 0xfe80_0000, 0x2_0000, false)
            .mem32_bar(1, 0xfe82_0000, 0x2_0000, false)
            .io_bar(2, 0xd000, 0x20)
            .mem32_bar(3, 0xfe84_0000, 0x4000, false)
            .msi(true, true, 3)
            .msix(5, 3, 0x0000, 3, 0x2000),
    );
    space.insert(
        addr(1, 1, 0),
        FakeFunction::pci_bridge(0x1b36, 0x0001, 2, 2).command(0x0007),
    );
    space.insert(
        addr(2, 0, 0),
        FakeFunction::endpoint(0x8086, 0x100e, 0x02, 0x00, 0x00)
            .command(IO_MEM_MASTER)
            .interrupt(1, 11)
            .mem32_bar(0, 0xfe60_0000, 0x2_0000, false)
            .io_bar(1, 0xe000, 0x40)
            .msi(false, false, 2),
    );
    space
}
