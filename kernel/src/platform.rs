//! What the firmware says about the machine (ACPI, through the `acpi` crate): the CPUs' APIC
//! ids, the I/O APICs and the ISA interrupt overrides. Parsed early, while the boot page tables
//! identity-map the first 4 GiB where the tables live.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::address::AddressSpace;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

#[derive(Clone)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // SAFETY: physical memory is identity-mapped, so the physical address is the virtual one;
        // the acpi crate guarantees the address points to a T of `size` bytes.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(physical_address as *mut T).expect("ACPI table at address 0"),
                size,
                size,
                self.clone(),
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Clone, Copy, Debug)]
pub struct IoApicInfo {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct IsaOverride {
    pub irq: u8,
    pub gsi: u32,
    pub active_low: bool,
    pub level_triggered: bool,
}

#[derive(Default)]
pub struct Platform {
    /// APIC ids of usable processors, boot CPU first.
    pub cpu_apic_ids: Vec<u32>,
    pub io_apics: Vec<IoApicInfo>,
    pub isa_overrides: Vec<IsaOverride>,
    /// The ACPI PM timer, when the FADT names one in I/O space.
    pub pm_timer: Option<crate::arch::pmtimer::PmTimer>,
}

impl Platform {
    /// The GSI an ISA IRQ arrives on, with its polarity and trigger mode.
    pub fn isa_irq(&self, irq: u8) -> IsaOverride {
        self.isa_overrides
            .iter()
            .copied()
            .find(|o| o.irq == irq)
            .unwrap_or(IsaOverride {
                irq,
                gsi: u32::from(irq),
                active_low: false,
                level_triggered: false,
            })
    }
}

/// Reads the MADT. Without ACPI (or with a broken table) the machine is taken to have one CPU
/// and the standard I/O APIC, and the reason is logged.
pub fn discover(rsdp: Option<u64>, boot_apic_id: u32) -> Platform {
    let tables = match rsdp {
        // SAFETY: the boot loader gave this address as the RSDP; memory is identity-mapped.
        Some(addr) => unsafe { AcpiTables::from_rsdp(IdentityHandler, addr as usize) },
        // SAFETY: scans the BIOS areas, which are identity-mapped RAM or ROM.
        None => unsafe { AcpiTables::search_for_rsdp_bios(IdentityHandler) },
    };
    let mut platform = Platform::default();
    platform.cpu_apic_ids.push(boot_apic_id);
    let tables = match tables {
        Ok(tables) => tables,
        Err(error) => {
            log::warn!("ACPI: no tables ({error:?}); assuming one CPU");
            return platform;
        }
    };
    if let Ok(fadt) = tables.find_table::<Fadt>() {
        if let Ok(Some(block)) = fadt.pm_timer_block() {
            if block.address_space == AddressSpace::SystemIo && block.address <= 0xFFFF {
                platform.pm_timer = Some(crate::arch::pmtimer::PmTimer {
                    port: block.address as u16,
                    bits32: { fadt.flags }.pm_timer_is_32_bit(),
                });
            }
        }
    }
    let madt = match tables.find_table::<Madt>() {
        Ok(madt) => madt,
        Err(error) => {
            log::warn!("ACPI: no usable MADT ({error:?}); assuming one CPU");
            return platform;
        }
    };
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                let (id, flags) = (u32::from(e.apic_id), e.flags);
                // bit 0: enabled; bit 1: online-capable (can be started).
                if flags & 0b11 != 0 && id != boot_apic_id && !platform.cpu_apic_ids.contains(&id) {
                    platform.cpu_apic_ids.push(id);
                }
            }
            MadtEntry::LocalX2Apic(e) => {
                let (id, flags) = (e.x2apic_id, e.flags);
                if flags & 0b11 != 0 && id != boot_apic_id && !platform.cpu_apic_ids.contains(&id) {
                    platform.cpu_apic_ids.push(id);
                }
            }
            MadtEntry::IoApic(e) => platform.io_apics.push(IoApicInfo {
                id: e.io_apic_id,
                address: u64::from(e.io_apic_address),
                gsi_base: e.global_system_interrupt_base,
            }),
            MadtEntry::InterruptSourceOverride(e) => {
                let flags = e.flags;
                platform.isa_overrides.push(IsaOverride {
                    irq: e.irq,
                    gsi: e.global_system_interrupt,
                    active_low: flags & 0b11 == 0b11,
                    level_triggered: (flags >> 2) & 0b11 == 0b11,
                });
            }
            _ => {}
        }
    }
    if platform.io_apics.is_empty() {
        platform.io_apics.push(IoApicInfo {
            id: 0,
            address: 0xFEC0_0000,
            gsi_base: 0,
        });
    }
    platform
}
