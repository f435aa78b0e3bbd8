//! I/O APICs: routes global system interrupts (legacy ISA IRQs and PCI INTx) to a vector on a
//! CPU. Everything starts masked.

use alloc::vec::Vec;

use crate::platform::{IoApicInfo, Platform};
use crate::sync::raw::RawSpinLock;

/// GSIs map to vectors 0x30 + gsi (up to 0x30 + 31).
pub const GSI_VECTOR_BASE: u8 = 0x30;

struct IoApic {
    base: *mut u32,
    gsi_base: u32,
    entries: u32,
}

// SAFETY: the MMIO pointer is only used under the IOAPICS lock.
unsafe impl Send for IoApic {}

impl IoApic {
    fn read(&self, reg: u32) -> u32 {
        // SAFETY: IOREGSEL at +0, IOWIN at +0x10 of a mapped I/O APIC; serialised by the lock.
        unsafe {
            core::ptr::write_volatile(self.base, reg);
            core::ptr::read_volatile(self.base.add(4))
        }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as in read().
        unsafe {
            core::ptr::write_volatile(self.base, reg);
            core::ptr::write_volatile(self.base.add(4), value);
        }
    }
}

static IOAPICS: RawSpinLock<Vec<IoApic>> = RawSpinLock::new(Vec::new());

pub fn init(platform: &Platform) {
    let mut apics = IOAPICS.lock();
    for info in &platform.io_apics {
        let IoApicInfo {
            address, gsi_base, ..
        } = *info;
        let base = crate::mem::paging::map_mmio(address, 0x20) as *mut u32;
        let mut apic = IoApic {
            base,
            gsi_base,
            entries: 0,
        };
        apic.entries = ((apic.read(1) >> 16) & 0xFF) + 1;
        for i in 0..apic.entries {
            apic.write(0x10 + 2 * i, 1 << 16);
            apic.write(0x11 + 2 * i, 0);
        }
        log::info!(
            "I/O APIC {} at {:#x}: GSIs {}..{}",
            info.id,
            address,
            gsi_base,
            gsi_base + apic.entries - 1
        );
        apics.push(apic);
    }
}

/// Routes `gsi` to `vector` on the CPU with `apic_id` and unmasks it.
pub fn route(
    gsi: u32,
    vector: u8,
    apic_id: u32,
    active_low: bool,
    level: bool,
) -> Result<(), &'static str> {
    let apics = IOAPICS.lock();
    let apic = apics
        .iter()
        .find(|a| gsi >= a.gsi_base && gsi < a.gsi_base + a.entries)
        .ok_or("no I/O APIC serves this GSI")?;
    let index = gsi - apic.gsi_base;
    let low = u32::from(vector) | (u32::from(active_low) << 13) | (u32::from(level) << 15);
    apic.write(0x11 + 2 * index, apic_id << 24);
    apic.write(0x10 + 2 * index, low);
    Ok(())
}

/// Unmasks `gsi` (routed before with [`route`]).
pub fn unmask(gsi: u32) {
    set_mask(gsi, false);
}

pub fn mask(gsi: u32) {
    set_mask(gsi, true);
}

/// Sets or clears the mask bit (16) of `gsi`'s redirection entry.
fn set_mask(gsi: u32, masked: bool) {
    let apics = IOAPICS.lock();
    if let Some(apic) = apics
        .iter()
        .find(|a| gsi >= a.gsi_base && gsi < a.gsi_base + a.entries)
    {
        let reg = 0x10 + 2 * (gsi - apic.gsi_base);
        let low = apic.read(reg) & !(1 << 16);
        apic.write(reg, low | (u32::from(masked) << 16));
    }
}
