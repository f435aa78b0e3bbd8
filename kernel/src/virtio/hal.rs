//! What `virtio-drivers` needs from the kernel: DMA memory (`Hal`) and PCI configuration-space
//! access (`ConfigurationAccess`).
//!
//! RAM is identity-mapped and x86 DMA is cache-coherent, so memory the driver shares with a
//! device needs no mapping and no copy when it is RAM at its own address (heap and DMA
//! buffers). Anything else (a buffer on a thread stack, which lives in its own virtual region)
//! goes through a bounce buffer; the net driver never needs one, its buffers all come from
//! `mem::dma`.

use alloc::collections::BTreeMap;
use core::ptr::NonNull;

use tether_pci::{PciAddress, SettledBars};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::mem::dma::{self, DmaBuffer};
use crate::sync::Mutex;

pub struct KernelHal;

/// Queue memory handed to virtio-drivers, by physical address, so `dma_dealloc` gives the
/// owning buffer back to `mem::dma`.
static ALLOCATIONS: Mutex<BTreeMap<PhysAddr, DmaBuffer>> =
    Mutex::new("virtio.dma", BTreeMap::new());
/// Bounce buffers of shared memory outside the identity map, by the address the device got.
static BOUNCES: Mutex<BTreeMap<PhysAddr, DmaBuffer>> = Mutex::new("virtio.bounce", BTreeMap::new());

// SAFETY: dma_alloc returns zeroed, page-aligned memory owned by ALLOCATIONS until dma_dealloc
// (nothing else aliases it); mmio_phys_to_virt returns the identity-mapped, uncached device
// window; share returns an address at which the device sees exactly the buffer's bytes (the
// buffer itself, or a bounce copy that unshare copies back).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // Virtio 1.x devices take 64-bit addresses, so no limit; `mem::dma` zeroes the pages.
        match dma::alloc(size, PAGE_SIZE, 0, None) {
            Ok(buffer) => {
                let phys = buffer.phys();
                let Some(virt) = NonNull::new(buffer.as_ptr()) else {
                    return (0, NonNull::dangling());
                };
                ALLOCATIONS.lock().insert(phys, buffer);
                (phys, virt)
            }
            // virtio-drivers turns a zero address into Error::DmaError.
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        match ALLOCATIONS.lock().remove(&paddr) {
            Some(buffer) => {
                drop(buffer);
                0
            }
            None => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // virtio-drivers has already refused unassigned (zero) BARs, so this is a device window.
        let virt = crate::mem::paging::map_mmio(paddr, size as u64);
        NonNull::new(virt).expect("MMIO at address zero")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let addr = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len();
        if crate::mem::is_identity_mapped_ram(addr, len as u64) {
            return addr;
        }
        let Ok(mut bounce) = dma::alloc(len.max(1), 64, 0, None) else {
            // There is no error path in `share`; an unreachable address makes the device fail
            // the request instead of touching memory it must not.
            log::error!("virtio: no memory for a {len}-byte bounce buffer");
            return !0xfff;
        };
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller guarantees `buffer` is valid for reads of `len` bytes and not
            // accessed by anyone else during this call.
            let source = unsafe { buffer.as_ref() };
            bounce.as_mut_slice()[..len].copy_from_slice(source);
        }
        let phys = bounce.phys();
        BOUNCES.lock().insert(phys, bounce);
        phys
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let Some(bounce) = BOUNCES.lock().remove(&paddr) else {
            return; // shared in place
        };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller guarantees `buffer` is the valid buffer given to `share`, not
            // accessed by anyone else during this call.
            let target = unsafe { buffer.as_mut() };
            let len = target.len();
            target.copy_from_slice(&bounce.as_slice()[..len]);
        }
    }
}

/// Configuration space through the kernel's port I/O accessor (`pci::CONFIG`), for one
/// function. virtio-drivers sizes BARs itself on every transport it builds (at boot and on each
/// reset); [`SettledBars`] answers that from the BARs enumerated at boot, so the device's
/// windows never leave the memory map under the other CPUs (see `tether_pci::SettledBars`).
#[derive(Clone)]
pub struct PciConfig {
    function: PciAddress,
    settled: SettledBars,
}

impl PciConfig {
    pub fn new(function: &tether_pci::PciFunction) -> PciConfig {
        PciConfig {
            function: function.address,
            settled: SettledBars::new(function.bars),
        }
    }
}

fn address(function: DeviceFunction) -> PciAddress {
    PciAddress::new(0, function.bus, function.device, function.function)
}

impl ConfigurationAccess for PciConfig {
    fn read_word(&self, function: DeviceFunction, register_offset: u8) -> u32 {
        let address = address(function);
        let offset = u16::from(register_offset);
        if address == self.function {
            if let Some(value) = self.settled.read(offset) {
                return value;
            }
        }
        tether_pci::read_config_dword(&crate::pci::CONFIG, address, offset)
    }

    fn write_word(&mut self, function: DeviceFunction, register_offset: u8, data: u32) {
        use tether_pci::ConfigRegionAccess;
        let address = address(function);
        let offset = u16::from(register_offset);
        let value = if address == self.function {
            let current = || tether_pci::read_config_dword(&crate::pci::CONFIG, address, offset);
            match self.settled.write(offset, data, current) {
                Some(value) => value,
                None => return,
            }
        } else {
            data
        };
        // SAFETY: the offset is below 256 (a u8), and the accessor drops unaligned ones; BAR
        // writes and decode-off command writes were filtered out above.
        unsafe { crate::pci::CONFIG.write(address, offset, value) };
    }

    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}
