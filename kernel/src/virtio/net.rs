//! virtio-net over `virtio-drivers`' `VirtIONetRaw`: a network interface like the USB NIC.
//!
//! The device thread (`virtio-netN`) sleeps until the queue interrupt (MSI-X; without it, a
//! 1 ms poll), hands every received frame to the stack and posts its buffer again, and reaps
//! finished transmissions. The interface's network thread transmits through [`Transmit`]. Both
//! go through one sleepable mutex around the rings.
//!
//! What a frame costs on this path:
//! - receive: the device (QEMU) writes header + frame into one of [`RX_BUFFERS`] posted DMA
//!   buffers; the driver copies the frame into a heap `Vec` for the stack's queue (one copy,
//!   one allocation) and posts the buffer again. One MSI-X interrupt per batch: the driver
//!   asks (EVENT_IDX) to be interrupted only past the last entry it consumed.
//! - transmit: smoltcp fills a heap `Vec`; the driver copies it behind a 12-byte virtio-net
//!   header into a reused DMA buffer (one copy) and adds it to the transmit queue, up to
//!   [`TX_IN_FLIGHT`] at once. The doorbell (an MMIO write, a QEMU exit) is rung when the
//!   device asked for it; `virtio` on the console counts both doorbells and interrupts.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use tether_pci::{PciAddress, PciFunction};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;

use super::hal::{KernelHal, PciConfig};
use super::transport::{MsixTransport, Registers, TransportStats};
use super::Wakeup;
use crate::mem::dma::{self, DmaBuffer};
use crate::net::{self, Nic, Transmit};
use crate::sync::Mutex;
use crate::{pci, sched, time};

/// Descriptors per virtqueue (QEMU's default queue size; it must offer at least this many).
const QUEUE_SIZE: usize = 256;
/// Receive buffers kept posted to the device.
const RX_BUFFERS: usize = 128;
/// Frames handed to the device and not yet reaped, at most (the bounded transmit queue).
const TX_IN_FLIGHT: usize = 128;
/// One buffer holds the 12-byte header and a 1514-byte frame (virtio-drivers wants >= 1526).
const BUFFER: usize = 2048;
/// Received frames waiting for the network thread, at most (as many as the device may fill).
const RX_QUEUE: usize = RX_BUFFERS;
/// How long a full transmit queue is waited for before the frame is dropped.
const TX_FULL_WAIT_US: u64 = 100_000;
/// The thread's wait with interrupts (work arrives by interrupt; this only bounds a lost one).
const IDLE_WAIT_NS: u64 = 1_000_000_000;
/// The thread's poll period without MSI-X.
const POLL_NS: u64 = 1_000_000;

/// virtio-net device configuration: `status` and its link bit, valid with VIRTIO_NET_F_STATUS.
const CONFIG_STATUS: u32 = 6;
const STATUS_LINK_UP: u16 = 1;
const FEATURE_STATUS: u64 = 1 << 16;

/// The driver thread's stack: virtio-drivers' queues carry two 4 KiB arrays each (a shadow of
/// the descriptor table, the indirect lists), so the device value is about 17 KiB and is moved
/// by value a few times while it is built, more than the default 64 KiB allow.
pub const STACK_SIZE: usize = 256 * 1024;

type Raw = VirtIONetRaw<KernelHal, MsixTransport, QUEUE_SIZE>;

/// The queues and the buffers the device holds. `raw` comes first: fields drop in order, and
/// dropping it resets the device (virtio-drivers' transport does), so the device no longer
/// writes the buffers when they are freed after it.
struct Rings {
    raw: Raw,
    /// Posted receive buffers by token (the descriptor index the device returns).
    rx_posted: Vec<Option<DmaBuffer>>,
    /// Frames being sent by token, with the length that was posted (completion needs it).
    tx_posted: Vec<Option<(DmaBuffer, usize)>>,
    tx_in_flight: usize,
    /// Buffers of completed transmissions, for the next frames.
    tx_spare: Vec<DmaBuffer>,
    tx_allocated: usize,
}

impl Rings {
    fn post_receive(&mut self, mut buffer: DmaBuffer) -> Result<(), String> {
        // SAFETY: the buffer is DMA memory owned by `rx_posted` from here until
        // `receive_complete` returns it; nothing touches it in between.
        let token = unsafe { self.raw.receive_begin(buffer.as_mut_slice()) }
            .map_err(|e| format!("posting a receive buffer: {e}"))?;
        match self.rx_posted.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(buffer);
                Ok(())
            }
            // The device now owns memory this driver no longer tracks: stop (reset) it.
            _ => {
                core::mem::forget(buffer);
                Err(format!("receive token {token} already in use"))
            }
        }
    }

    /// Moves every received frame to `frames` and posts the buffers again. Frames whose
    /// reported length does not fit the buffer are dropped and counted.
    fn receive(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        counters: &DriverCounters,
    ) -> Result<(), String> {
        loop {
            self.receive_completed(frames, counters)?;
            // Popping wrote `used_event` ("interrupt me past here") with a release store, and
            // the check for new entries is a load: x86 may order that load first, so this
            // thread and the device could each miss the other's write, and the device would
            // not interrupt for an entry this pass did not see (1 s stalls, seen under load).
            // A full fence, then a second look, closes it (Linux: virtio_mb in virtqueue_poll).
            fence(Ordering::SeqCst);
            if self.raw.poll_receive().is_none() {
                return Ok(());
            }
        }
    }

    fn receive_completed(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        counters: &DriverCounters,
    ) -> Result<(), String> {
        while let Some(token) = self.raw.poll_receive() {
            let mut buffer = self
                .rx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
                .ok_or_else(|| format!("device returned receive token {token}, never posted"))?;
            // SAFETY: this is the buffer posted with `token`, unchanged since.
            let (header, length) =
                match unsafe { self.raw.receive_complete(token, buffer.as_mut_slice()) } {
                    Ok(lengths) => lengths,
                    Err(error) => {
                        core::mem::forget(buffer);
                        return Err(format!("completing receive {token}: {error}"));
                    }
                };
            match header
                .checked_add(length)
                .and_then(|end| buffer.as_slice().get(header..end))
            {
                Some(frame) => frames.push(frame.to_vec()),
                None => {
                    counters.rx_bad_length.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.post_receive(buffer)?;
        }
        Ok(())
    }

    /// Takes back the buffers of finished transmissions.
    fn reap_transmitted(&mut self) -> Result<(), String> {
        while let Some(token) = self.raw.poll_transmit() {
            let (buffer, length) = self
                .tx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
                .ok_or_else(|| format!("device returned transmit token {token}, never posted"))?;
            // SAFETY: this is the buffer and length posted with `token`, unchanged since.
            if let Err(error) = unsafe {
                self.raw
                    .transmit_complete(token, &buffer.as_slice()[..length])
            } {
                core::mem::forget(buffer);
                return Err(format!("completing transmit {token}: {error}"));
            }
            self.tx_in_flight -= 1;
            self.tx_spare.push(buffer);
        }
        Ok(())
    }

    /// A transmit buffer, if fewer than [`TX_IN_FLIGHT`] frames are in flight.
    fn transmit_buffer(&mut self) -> Option<DmaBuffer> {
        if self.tx_in_flight >= TX_IN_FLIGHT {
            return None;
        }
        if let Some(buffer) = self.tx_spare.pop() {
            return Some(buffer);
        }
        let buffer = dma::alloc(BUFFER, 64, 0, None).ok()?;
        self.tx_allocated += 1;
        Some(buffer)
    }

    fn send(&mut self, mut buffer: DmaBuffer, frame: &[u8]) -> Result<(), &'static str> {
        let header = match self.raw.fill_buffer_header(buffer.as_mut_slice()) {
            Ok(header) => header,
            Err(_) => {
                self.tx_spare.push(buffer);
                return Err("no room for the virtio-net header");
            }
        };
        let length = header + frame.len();
        buffer.as_mut_slice()[header..length].copy_from_slice(frame);
        // SAFETY: the buffer is owned by `tx_posted` until `transmit_complete` returns it and
        // is not written in between.
        match unsafe { self.raw.transmit_begin(&buffer.as_slice()[..length]) } {
            Ok(token) => match self.tx_posted.get_mut(usize::from(token)) {
                Some(slot @ None) => {
                    *slot = Some((buffer, length));
                    self.tx_in_flight += 1;
                    Ok(())
                }
                _ => {
                    core::mem::forget(buffer);
                    Err("transmit token already in use")
                }
            },
            Err(_) => {
                self.tx_spare.push(buffer);
                Err("transmit queue full")
            }
        }
    }
}

#[derive(Default)]
struct DriverCounters {
    /// Received frames dropped because the device reported more bytes than the buffer holds.
    rx_bad_length: AtomicU64,
    /// Transmissions that found every descriptor in flight and waited.
    tx_full_waits: AtomicU64,
}

/// One virtio-net device: what the interface's transmit path and the console see.
pub struct NetDevice {
    interface: String,
    address: PciAddress,
    rings: Mutex<Rings>,
    transport: Arc<TransportStats>,
    wakeup: Arc<Wakeup>,
    msix: bool,
    counters: DriverCounters,
    /// Set when the driver stopped; transmissions are refused from then on.
    stopped: AtomicBool,
}

impl Transmit for NetDevice {
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.len() > BUFFER - 16 {
            return Err("frame larger than the transmit buffers");
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err("device stopped");
        }
        let started = time::now_us();
        let mut waited = false;
        loop {
            let mut rings = self.rings.lock();
            rings
                .reap_transmitted()
                .map_err(|_| "transmit queue inconsistent")?;
            if let Some(buffer) = rings.transmit_buffer() {
                return rings.send(buffer, frame);
            }
            drop(rings);
            if !waited {
                waited = true;
                self.counters.tx_full_waits.fetch_add(1, Ordering::Relaxed);
            }
            if time::now_us().saturating_sub(started) >= TX_FULL_WAIT_US {
                return Err("transmit queue full");
            }
            // The device finishes transmissions in QEMU's own time; look again shortly.
            sched::sleep_ns(100_000);
        }
    }
}

static DEVICES: Mutex<Vec<Arc<NetDevice>>> = Mutex::new("virtio.net.devices", Vec::new());

/// The console's `virtio` lines: per device, interrupts, doorbells and buffers in flight.
pub fn report() -> Vec<String> {
    DEVICES
        .lock()
        .iter()
        .map(|d| {
            let rings = d.rings.lock();
            let rx_posted = rings.rx_posted.iter().filter(|b| b.is_some()).count();
            format!(
                "{}: virtio-net {} interrupts by {}: {} queue, {} config\n  doorbells: {} receive, {} transmit ({} and {} not needed, saved)\n  receive: {} buffers posted, {} frames too long for them\n  transmit: {} in flight, {} buffers, {} waits for a full queue",
                d.interface,
                d.address,
                if d.msix { "MSI-X" } else { "none (polling)" },
                d.wakeup.queue_interrupts.load(Ordering::Relaxed),
                d.wakeup.config_interrupts.load(Ordering::Relaxed),
                d.transport.notifications[0].load(Ordering::Relaxed),
                d.transport.notifications[1].load(Ordering::Relaxed),
                d.transport.suppressed[0].load(Ordering::Relaxed),
                d.transport.suppressed[1].load(Ordering::Relaxed),
                rx_posted,
                d.counters.rx_bad_length.load(Ordering::Relaxed),
                rings.tx_in_flight,
                rings.tx_allocated,
                d.counters.tx_full_waits.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// The driver thread: brings the device up as `interface`, then serves it until it fails.
pub fn run(function: PciFunction, interface: String) {
    let (device, nic, link) = match bring_up(&function, &interface) {
        Ok(up) => up,
        Err(error) => {
            log::error!(
                "{interface}: virtio-net {} {:04x}:{:04x}: {error}; no interface",
                function.address,
                function.vendor_id,
                function.device_id
            );
            return;
        }
    };
    let result = device.serve(&nic, link.as_ref());
    device.stopped.store(true, Ordering::Release);
    nic.detach();
    if let Err(error) = result {
        log::error!("{interface}: virtio-net stopped: {error}");
    }
}

type Up = (Arc<NetDevice>, Arc<Nic>, Option<Registers>);

fn bring_up(function: &PciFunction, interface: &str) -> Result<Up, String> {
    let structures = tether_pci::virtio::virtio_structures(&pci::CONFIG, function);
    let common = structures
        .common
        .ok_or("no virtio 1.x common configuration (a legacy-only device)")?;
    let common = Registers::map(&common).ok_or("common configuration at address 0")?;
    // The device configuration holds the link status; without it the link counts as up.
    let link = structures.device.as_ref().and_then(Registers::map);

    let wakeup = Wakeup::new();
    let msix = super::setup_msix(function, &wakeup);
    tether_pci::enable_bus_master_and_memory(&pci::CONFIG, function.address);
    tether_pci::disable_intx(&pci::CONFIG, function.address);
    let mut root = PciRoot::new(PciConfig);
    let device_function = DeviceFunction {
        bus: function.address.bus(),
        device: function.address.device(),
        function: function.address.function(),
    };
    let pci_transport = PciTransport::new::<KernelHal, _>(&mut root, device_function)
        .map_err(|e| format!("transport: {e}"))?;
    let transport = MsixTransport::new(pci_transport, common, msix);
    let stats = transport.stats.clone();
    let raw = Raw::new(transport).map_err(|e| format!("initialisation: {e}"))?;
    let mut msix = msix.is_some();
    if stats.vector_refused.load(Ordering::Relaxed) {
        log::warn!("{interface}: the device refused its MSI-X vectors; polling");
        msix = false;
    }
    let mac = raw.mac_address();
    let mut rings = Rings {
        raw,
        rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
        tx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
        tx_in_flight: 0,
        tx_spare: Vec::new(),
        tx_allocated: 0,
    };
    for _ in 0..RX_BUFFERS {
        let buffer =
            dma::alloc(BUFFER, 64, 0, None).map_err(|e| format!("receive buffers: {e}"))?;
        rings.post_receive(buffer)?;
    }
    let device = Arc::new(NetDevice {
        interface: String::from(interface),
        address: function.address,
        rings: Mutex::new("virtio.net.rings", rings),
        transport: stats,
        wakeup,
        msix,
        counters: DriverCounters::default(),
        stopped: AtomicBool::new(false),
    });
    let nic = Nic::new(String::from(interface), mac, RX_QUEUE, device.clone());
    let up = link_up(&device, link.as_ref());
    nic.set_carrier(up);
    log::info!(
        "{interface}: virtio-net {} {:04x}:{:04x} MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {RX_BUFFERS} receive buffers posted, interrupts by {}, link {}",
        function.address,
        function.vendor_id,
        function.device_id,
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        if msix { "MSI-X" } else { "polling" },
        if up { "up" } else { "down" },
    );
    DEVICES.lock().push(device.clone());
    net::attach(nic.clone());
    Ok((device, nic, link))
}

/// The link bit of the device configuration's status (up when the device has no status).
fn link_up(device: &NetDevice, link: Option<&Registers>) -> bool {
    let has_status = device.transport.features.load(Ordering::Relaxed) & FEATURE_STATUS != 0;
    match link {
        Some(registers) if has_status => registers
            .read_u16(CONFIG_STATUS)
            .is_some_and(|status| status & STATUS_LINK_UP != 0),
        _ => true,
    }
}

impl NetDevice {
    /// Waits for interrupts (or polls), passes received frames on, reaps transmissions, and
    /// follows the link. Returns only when the rings are found inconsistent.
    fn serve(&self, nic: &Nic, link: Option<&Registers>) -> Result<(), String> {
        let mut carrier = nic.carrier.load(Ordering::Relaxed);
        let mut last_link_check = time::now_us();
        let mut frames = Vec::new();
        loop {
            let wait = if self.msix { IDLE_WAIT_NS } else { POLL_NS };
            self.wakeup.semaphore.down_timeout(wait);
            // One pass handles every interrupt so far.
            while self.wakeup.semaphore.try_down() {}
            {
                let mut rings = self.rings.lock();
                rings.receive(&mut frames, &self.counters)?;
                rings.reap_transmitted()?;
            }
            for frame in frames.drain(..) {
                nic.deliver(frame);
            }
            let config_changed = self.wakeup.config_changed.swap(false, Ordering::AcqRel);
            let polled_long_ago =
                !self.msix && time::now_us().saturating_sub(last_link_check) >= 1_000_000;
            if config_changed || polled_long_ago {
                last_link_check = time::now_us();
                let up = link_up(self, link);
                if up != carrier {
                    carrier = up;
                    nic.set_carrier(up);
                    log::info!(
                        "{}: virtio-net: carrier {}",
                        self.interface,
                        if up { "up" } else { "down" }
                    );
                }
            }
        }
    }
}
