//! virtio-drivers' PCI transport with the two things it leaves out: MSI-X vectors for the
//! queues and configuration changes (its `PciTransport` never writes `queue_msix_vector` or
//! `msix_config`, so with MSI-X enabled the device would never interrupt), and counters of the
//! notifications the driver sends. Everything else is delegated unchanged.

use alloc::sync::Arc;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tether_pci::virtio::VirtioStructure;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `virtio_pci_common_cfg` registers the kernel writes itself (virtio 1.x, 4.1.4.3).
const MSIX_CONFIG: u32 = 0x10;
const QUEUE_SELECT: u32 = 0x16;
const QUEUE_MSIX_VECTOR: u32 = 0x1a;

/// A few 16-bit registers of a structure in a device's memory BAR, bounds-checked.
pub struct Registers {
    base: NonNull<u8>,
    length: u32,
}

// SAFETY: device registers may be accessed from any CPU; every access is a single volatile load
// or store.
unsafe impl Send for Registers {}
// SAFETY: as above; the hardware serialises concurrent accesses.
unsafe impl Sync for Registers {}

impl Registers {
    /// Maps `structure` (checked against its BAR by `tether_pci::virtio`).
    pub fn map(structure: &VirtioStructure) -> Option<Registers> {
        let base = crate::mem::paging::map_mmio(structure.address, u64::from(structure.length));
        Some(Registers {
            base: NonNull::new(base)?,
            length: structure.length,
        })
    }

    fn in_bounds(&self, offset: u32) -> bool {
        offset.is_multiple_of(2) && offset.checked_add(2).is_some_and(|end| end <= self.length)
    }

    pub fn read_u16(&self, offset: u32) -> Option<u16> {
        if !self.in_bounds(offset) {
            return None;
        }
        // SAFETY: aligned and inside the mapped, uncached structure (checked above).
        Some(unsafe { core::ptr::read_volatile(self.base.as_ptr().add(offset as usize).cast()) })
    }

    pub fn write_u16(&self, offset: u32, value: u16) {
        if self.in_bounds(offset) {
            // SAFETY: as in read_u16.
            unsafe {
                core::ptr::write_volatile(self.base.as_ptr().add(offset as usize).cast(), value)
            }
        }
    }
}

/// MSI-X table entries the device should signal.
#[derive(Clone, Copy, Debug)]
pub struct MsixEntries {
    pub queues: u16,
    pub config: u16,
}

/// What the transport saw, for the driver and the console.
#[derive(Default)]
pub struct TransportStats {
    /// Notifications (doorbell writes) per queue: 0 receive, 1 transmit.
    pub notifications: [AtomicU64; 2],
    /// Features the driver accepted.
    pub features: AtomicU64,
    /// The device refused an MSI-X entry (answered NO_VECTOR): it will not interrupt.
    pub vector_refused: AtomicBool,
}

pub struct MsixTransport {
    inner: PciTransport,
    common: Registers,
    msix: Option<MsixEntries>,
    pub stats: Arc<TransportStats>,
}

impl MsixTransport {
    pub fn new(inner: PciTransport, common: Registers, msix: Option<MsixEntries>) -> Self {
        MsixTransport {
            inner,
            common,
            msix,
            stats: Arc::new(TransportStats::default()),
        }
    }

    /// Writes a vector register and checks the device took it.
    fn set_vector(&self, register: u32, entry: u16) {
        self.common.write_u16(register, entry);
        if self.common.read_u16(register) != Some(entry) {
            self.stats.vector_refused.store(true, Ordering::Relaxed);
        }
    }
}

impl Transport for MsixTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.stats
            .features
            .store(driver_features, Ordering::Relaxed);
        self.inner.write_driver_features(driver_features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        if let Some(count) = self.stats.notifications.get(usize::from(queue)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    /// The vectors go in while the queue is set up (after begin_init's reset cleared them,
    /// before DRIVER_OK), the order virtio 1.x 4.1.5.1.3 gives; the same `&mut self` call holds
    /// the queue selection, so the inner transport's own selection cannot interleave.
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if let Some(msix) = self.msix {
            self.set_vector(MSIX_CONFIG, msix.config);
            self.common.write_u16(QUEUE_SELECT, queue);
            self.set_vector(QUEUE_MSIX_VECTOR, msix.queues);
        }
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
