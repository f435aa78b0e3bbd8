//! virtio-drivers' PCI transport with what it leaves out:
//! - MSI-X vectors for the queues and configuration changes (its `PciTransport` never writes
//!   `queue_msix_vector` or `msix_config`, so with MSI-X enabled the device never interrupts);
//! - doorbell suppression as the specification means it: virtio-drivers 0.13 asks for a
//!   doorbell whenever the device's `avail_event` is behind (`avail_idx >= avail_event + 1`),
//!   which with QEMU is after nearly every buffer (1.02 doorbells per frame measured), while
//!   the device only needs one when it has caught up and waits (`avail_event == avail_idx - 1`,
//!   Linux's `vring_need_event` for one new buffer; virtio-drivers checks after every add). Its
//!   check is a superset of that one, so filtering the doorbells it asks for here loses none;
//! - counters of the doorbells rung and saved.
//!
//! Everything else is delegated unchanged.

use alloc::sync::Arc;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use tether_pci::virtio::VirtioStructure;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `virtio_pci_common_cfg` registers the kernel writes itself (virtio 1.x, 4.1.4.3).
const MSIX_CONFIG: u32 = 0x10;
const DEVICE_STATUS: u32 = 0x14;
const QUEUE_SELECT: u32 = 0x16;
const QUEUE_MSIX_VECTOR: u32 = 0x1a;

/// A few 8- and 16-bit registers of a structure in a device's memory BAR, bounds-checked.
/// Copies address the same registers (the transport and the driver's reset both use the
/// common configuration).
#[derive(Clone)]
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

    fn in_bounds(&self, offset: u32, size: u32) -> bool {
        offset.is_multiple_of(size)
            && offset
                .checked_add(size)
                .is_some_and(|end| end <= self.length)
    }

    pub fn read_u16(&self, offset: u32) -> Option<u16> {
        if !self.in_bounds(offset, 2) {
            return None;
        }
        // SAFETY: aligned and inside the mapped, uncached structure (checked above).
        Some(unsafe { core::ptr::read_volatile(self.base.as_ptr().add(offset as usize).cast()) })
    }

    pub fn write_u16(&self, offset: u32, value: u16) {
        if self.in_bounds(offset, 2) {
            // SAFETY: as in read_u16.
            unsafe {
                core::ptr::write_volatile(self.base.as_ptr().add(offset as usize).cast(), value)
            }
        }
    }

    fn read_u8(&self, offset: u32) -> Option<u8> {
        if !self.in_bounds(offset, 1) {
            return None;
        }
        // SAFETY: inside the mapped, uncached structure (checked above).
        Some(unsafe { core::ptr::read_volatile(self.base.as_ptr().add(offset as usize)) })
    }

    fn write_u8(&self, offset: u32, value: u8) {
        if self.in_bounds(offset, 1) {
            // SAFETY: as in read_u8.
            unsafe { core::ptr::write_volatile(self.base.as_ptr().add(offset as usize), value) }
        }
    }

    /// Resets the device through this common configuration (`device_status` = 0), waiting up to
    /// `timeout_us` for it to read back 0 (virtio 1.x 4.1.4.3.2: until then the device may
    /// still use the rings). Err: it did not.
    pub fn reset_device(&self, timeout_us: u64) -> Result<(), &'static str> {
        self.write_u8(DEVICE_STATUS, 0);
        let started = crate::time::now_us();
        loop {
            match self.read_u8(DEVICE_STATUS) {
                Some(0) => return Ok(()),
                None => return Err("no device_status register"),
                Some(_) if crate::time::now_us().saturating_sub(started) >= timeout_us => {
                    return Err("the device did not finish its reset")
                }
                Some(_) => crate::sched::sleep_ns(10_000),
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

/// virtio-net's transmit queue (`transmitq1`; 0 is `receiveq1`).
const TRANSMIT_QUEUE: usize = 1;

/// VIRTIO_F_RING_EVENT_IDX: the device publishes `avail_event`.
const FEATURE_EVENT_IDX: u64 = 1 << 29;

/// Where a split queue keeps the two indices the doorbell decision compares (identity-mapped
/// queue memory owned by the virtio-drivers queue, which lives as long as this transport is
/// used).
#[derive(Clone, Copy)]
struct EventIndices {
    /// The driver's `avail.idx` (offset 2 of the driver area).
    avail_idx: *const u16,
    /// The device's `used.avail_event` (after the used ring's `size` 8-byte elements).
    avail_event: *const u16,
}

impl EventIndices {
    fn of(size: u32, driver_area: PhysAddr, device_area: PhysAddr) -> Option<EventIndices> {
        let avail_event = device_area.checked_add(4 + 8 * u64::from(size))?;
        let identity = |addr: u64| crate::mem::is_identity_mapped_ram(addr, 2);
        (identity(driver_area + 2) && identity(avail_event)).then_some(EventIndices {
            avail_idx: (driver_area + 2) as *const u16,
            avail_event: avail_event as *const u16,
        })
    }

    /// Whether the device waits for the buffer just added: it has consumed everything before it.
    fn device_waits(&self) -> bool {
        // The driver's store of avail.idx must be visible before avail_event is read, or both
        // sides could miss the other's update (the device does the mirror image with its own
        // barrier); a release store followed by a load gives no such order on x86.
        fence(Ordering::SeqCst);
        // SAFETY: both point into the live queue's identity-mapped memory (checked in `of`),
        // 2-byte aligned by the split-ring layout; the device writes avail_event concurrently,
        // hence volatile.
        let (new, event) = unsafe {
            (
                core::ptr::read_volatile(self.avail_idx),
                core::ptr::read_volatile(self.avail_event),
            )
        };
        event == new.wrapping_sub(1)
    }
}

/// What the transport saw, for the driver and the console.
#[derive(Default)]
pub struct TransportStats {
    /// Notifications (doorbell writes) per queue: 0 receive, 1 transmit.
    pub notifications: [AtomicU64; 2],
    /// Doorbells virtio-drivers asked for that the device did not need, per queue.
    pub suppressed: [AtomicU64; 2],
    /// Features the driver accepted.
    pub features: AtomicU64,
    /// The device refused an MSI-X entry (answered NO_VECTOR): it will not interrupt.
    pub vector_refused: AtomicBool,
    /// Fault injection (`wedge`): transmit doorbells are withheld, and the driver ignores
    /// transmit completions, until the next reset clears it.
    pub tx_wedged: AtomicBool,
}

pub struct MsixTransport {
    inner: PciTransport,
    common: Registers,
    msix: Option<MsixEntries>,
    /// Per queue (0 receive, 1 transmit), once set up with EVENT_IDX negotiated.
    event_indices: [Option<EventIndices>; 2],
    pub stats: Arc<TransportStats>,
}

// SAFETY: the raw pointers in `event_indices` address queue memory that any CPU may read.
unsafe impl Send for MsixTransport {}
// SAFETY: shared access only reads through them.
unsafe impl Sync for MsixTransport {}

impl MsixTransport {
    /// `stats` carry over from the device's previous transport (a reset makes a new one).
    pub fn new(
        inner: PciTransport,
        common: Registers,
        msix: Option<MsixEntries>,
        stats: Arc<TransportStats>,
    ) -> Self {
        MsixTransport {
            inner,
            common,
            msix,
            event_indices: [None; 2],
            stats,
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
        let index = usize::from(queue);
        if index == TRANSMIT_QUEUE && self.stats.tx_wedged.load(Ordering::Relaxed) {
            return;
        }
        if let Some(Some(indices)) = self.event_indices.get(index) {
            if !indices.device_waits() {
                self.stats.suppressed[index].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(count) = self.stats.notifications.get(index) {
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
        let event_idx = self.stats.features.load(Ordering::Relaxed) & FEATURE_EVENT_IDX != 0;
        if let Some(slot) = self.event_indices.get_mut(usize::from(queue)) {
            *slot = event_idx
                .then(|| EventIndices::of(size, driver_area, device_area))
                .flatten();
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
