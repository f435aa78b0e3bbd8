//! One enumerated function and its boot-log line.

use crate::bar::Bar;
use crate::capability::Capability;
use crate::class::class_name;
use crate::msi::{MsiInfo, MsixInfo};
use alloc::vec::Vec;
use core::fmt;
use pci_types::{HeaderType, PciAddress};

/// Everything enumeration learns about a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub header_type: HeaderType,
    /// Header type bit 7 (meaningful on function 0).
    pub multi_function: bool,
    /// Subsystem IDs (type 0 headers only; 0 otherwise). Legacy virtio keeps the device type in
    /// the subsystem ID.
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// Indexed by BAR number; the slot after a 64-bit BAR is `None`.
    pub bars: [Option<Bar>; 6],
    /// 0 = none, 1..=4 = INTA#..INTD#.
    pub interrupt_pin: u8,
    pub interrupt_line: u8,
    pub capabilities: Vec<Capability>,
    pub msi: Option<MsiInfo>,
    pub msix: Option<MsixInfo>,
    /// For PCI-PCI bridges: the bus behind the bridge.
    pub secondary_bus: Option<u8>,
}

impl PciFunction {
    /// Class, subclass and programming interface as the usual 24-bit code (xHCI is 0x0c0330).
    pub fn class_code(&self) -> u32 {
        u32::from(self.class) << 16 | u32::from(self.subclass) << 8 | u32::from(self.prog_if)
    }

    pub fn class_name(&self) -> &'static str {
        class_name(self.class, self.subclass, self.prog_if)
    }

    /// The first capability with `id`, if any.
    pub fn find_capability(&self, id: u8) -> Option<Capability> {
        self.capabilities.iter().copied().find(|c| c.id == id)
    }

    /// Whether this function is a PCI-PCI bridge whose secondary bus the walk followed.
    pub fn is_pci_bridge(&self) -> bool {
        self.header_type == HeaderType::PciPciBridge
    }
}

/// `00:04.0 1b36:000d xHCI USB controller (0c0330) irq pin A bar0 mem64 0xfebf0000+0x4000 msix 16`
///
/// The segment is printed only when it is not 0.
impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.address;
        if a.segment() != 0 {
            write!(f, "{:04x}:", a.segment())?;
        }
        write!(
            f,
            "{:02x}:{:02x}.{} {:04x}:{:04x} {} ({:06x})",
            a.bus(),
            a.device(),
            a.function(),
            self.vendor_id,
            self.device_id,
            self.class_name(),
            self.class_code()
        )?;
        if let pin @ 1..=4 = self.interrupt_pin {
            write!(f, " irq pin {}", char::from(b'A' + pin - 1))?;
        }
        for (index, bar) in self.bars.iter().enumerate() {
            if let Some(bar) = bar {
                write!(
                    f,
                    " bar{index} {} {:#x}+{:#x}",
                    bar.kind_name(),
                    bar.address(),
                    bar.size()
                )?;
            }
        }
        if let Some(msi) = self.msi {
            write!(f, " msi {}", msi.max_vectors())?;
        }
        if let Some(msix) = self.msix {
            write!(f, " msix {}", msix.table_size)?;
        }
        Ok(())
    }
}
