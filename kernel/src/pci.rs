//! PCI in the kernel: configuration access through ports 0xCF8/0xCFC, enumeration at boot (the
//! logic is in `tether-pci`), interrupt vector allocation, and MSI / MSI-X set-up.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

use tether_pci::{ConfigRegionAccess, PciAddress, PciFunction, LEGACY_CONFIG_SPACE_SIZE};
use x86_64::instructions::port::Port;

use crate::arch::trap::{self, IrqHandler};
use crate::sync::raw::RawSpinLock;

/// Config space through the legacy mechanism #1. Reaches the first 256 bytes of every function
/// on segment 0, which is where the capabilities this kernel needs live.
pub struct PortIo {
    lock: RawSpinLock<()>,
}

pub static CONFIG: PortIo = PortIo {
    lock: RawSpinLock::new(()),
};

impl ConfigRegionAccess for PortIo {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        if address.segment() != 0
            || usize::from(offset) >= usize::from(LEGACY_CONFIG_SPACE_SIZE)
            || !offset.is_multiple_of(4)
        {
            return u32::MAX;
        }
        let _guard = self.lock.lock();
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports; the lock keeps the two-step
        // access from interleaving with another CPU's.
        unsafe {
            Port::<u32>::new(0xCF8).write(tether_pci::legacy_config_address(address, offset));
            Port::<u32>::new(0xCFC).read()
        }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        if address.segment() != 0
            || usize::from(offset) >= usize::from(LEGACY_CONFIG_SPACE_SIZE)
            || !offset.is_multiple_of(4)
        {
            return;
        }
        let _guard = self.lock.lock();
        // SAFETY: as in read().
        unsafe {
            Port::<u32>::new(0xCF8).write(tether_pci::legacy_config_address(address, offset));
            Port::<u32>::new(0xCFC).write(value);
        }
    }
}

static FUNCTIONS: spin::Once<Vec<PciFunction>> = spin::Once::new();

/// Enumerates every bus once, turns on memory decoding where firmware assigned a window but
/// left it off, and logs one line per function.
///
/// This must run before the other CPUs start: sizing a BAR takes it out of the memory map, and
/// nothing may change that map while another CPU does MMIO (QEMU 7.2's TCG then delivers the
/// access to the wrong device; see `tether_pci::SettledBars`). For the same reason decoding is
/// switched on here rather than by a driver later.
pub fn init() {
    let functions = FUNCTIONS.call_once(|| tether_pci::enumerate(&CONFIG));
    log::info!("PCI: {} functions", functions.len());
    for function in functions {
        let memory_bars = || function.bars.iter().flatten().filter(|b| b.is_memory());
        if !function.is_pci_bridge()
            && memory_bars().next().is_some()
            && memory_bars().all(|b| b.address() != 0)
        {
            tether_pci::enable_memory_decoding(&CONFIG, function.address);
        }
        log::info!("  {function}");
    }
}

pub fn functions() -> &'static [PciFunction] {
    FUNCTIONS.get().map_or(&[], Vec::as_slice)
}

/// Dynamic vectors for MSI/MSI-X: 0x50..0xEF.
const FIRST_DYNAMIC_VECTOR: u8 = 0x50;
const LAST_DYNAMIC_VECTOR: u8 = 0xEF;
static NEXT_VECTOR: AtomicU8 = AtomicU8::new(FIRST_DYNAMIC_VECTOR);

/// Reserves an interrupt vector and installs `handler` on it.
pub fn allocate_vector(handler: IrqHandler) -> Option<u8> {
    let vector = NEXT_VECTOR.fetch_add(1, Ordering::Relaxed);
    if !(FIRST_DYNAMIC_VECTOR..=LAST_DYNAMIC_VECTOR).contains(&vector) {
        return None;
    }
    trap::set_handler(vector, handler);
    Some(vector)
}

#[derive(Debug)]
pub enum InterruptSetupError {
    NoVector,
    NoCapability,
    Pci(tether_pci::PciError),
    TableOutside,
}

/// Points MSI-X entry `entry` of `function` at `vector` on CPU `apic_id` and enables MSI-X.
pub fn enable_msix_entry(
    function: &PciFunction,
    entry: u16,
    vector: u8,
    apic_id: u32,
) -> Result<(), InterruptSetupError> {
    let msix = function.msix.ok_or(InterruptSetupError::NoCapability)?;
    let bar = function
        .bars
        .get(usize::from(msix.table_bar))
        .copied()
        .flatten()
        .ok_or(InterruptSetupError::TableOutside)?;
    let offset = msix
        .table_entry_offset(entry)
        .ok_or(InterruptSetupError::TableOutside)?;
    if u64::from(offset) + 16 > bar.size() {
        return Err(InterruptSetupError::TableOutside);
    }
    tether_pci::enable_bus_master_and_memory(&CONFIG, function.address);
    tether_pci::enable_msix(&CONFIG, function, true).map_err(InterruptSetupError::Pci)?;
    let message = tether_pci::msix_message(apic_id, vector).map_err(InterruptSetupError::Pci)?;
    let words = tether_pci::msix_table_entry(message, false);
    let base = crate::mem::paging::map_mmio(bar.address(), bar.size());
    // SAFETY: the entry lies inside the mapped, uncached BAR (checked against its size above);
    // vector control is written last so the entry is complete before it is unmasked.
    unsafe {
        let entry_ptr = base.add(offset as usize) as *mut u32;
        for (i, word) in words.iter().enumerate() {
            core::ptr::write_volatile(entry_ptr.add(i), *word);
        }
    }
    tether_pci::set_msix_function_mask(&CONFIG, function, false)
        .map_err(InterruptSetupError::Pci)?;
    Ok(())
}

/// Lets the function interrupt by its INTx pin (the caller routes the line).
pub fn enable_intx(function: &PciFunction) -> Result<(), &'static str> {
    tether_pci::enable_intx(&CONFIG, function.address);
    Ok(())
}

/// Single-vector MSI to `vector` on CPU `apic_id`.
pub fn enable_msi(
    function: &PciFunction,
    vector: u8,
    apic_id: u32,
) -> Result<(), InterruptSetupError> {
    let message = tether_pci::msix_message(apic_id, vector).map_err(InterruptSetupError::Pci)?;
    tether_pci::enable_bus_master_and_memory(&CONFIG, function.address);
    tether_pci::configure_msi(&CONFIG, function, message, 0).map_err(InterruptSetupError::Pci)
}
