//! virtio-net over `virtio-drivers`' queues and transport (`netdev.rs` sets the device up): a
//! network interface like the USB NIC.
//!
//! The device thread (`virtio-netN`) sleeps until the queue interrupt (MSI-X; without it, a
//! 1 ms poll), hands every received frame to the stack, posts receive buffers again for as
//! many frames as the stack's queue can still take (receive back-pressure: the device holds
//! frames back, nothing is dropped), and reaps finished transmissions. The interface's network
//! thread transmits through [`Transmit`]. Both go through one sleepable mutex around the rings.
//!
//! Frames handed to the device and completed are counted for the TX watchdog
//! (`Nic::tx_progress`). A reset (the watchdog's, an operator's, or after the rings were found
//! inconsistent) is a real virtio reset done in the device thread: the device is stopped, what
//! it completed is taken (received frames delivered, sent frames counted), the queues are set
//! up afresh (features negotiated again, MSI-X vectors reprogrammed), receive buffers posted
//! again and the frames it had not used queued again in their order.
//!
//! Offloads, when the back-end offers them (tap does, user networking does not; `offload=off`
//! declines them):
//! - large receive (GUEST_TSO4, GUEST_CSUM, MRG_RXBUF): the host hands over TCP segments of up
//!   to 64 KiB spread over several receive buffers, with a partial checksum the driver
//!   completes;
//! - large send (HOST_TSO4, CSUM): a peer's SYN is raised to [`RAISED_MSS`] so the stack
//!   builds segments of up to [`SEGMENTED_FRAME`]; the device cuts them to the MSS the peer
//!   asked for (remembered per connection) and fills in the checksums.
//!
//! What a frame costs on this path:
//! - receive: the device (QEMU) writes header + frame into one (or, large, several) of
//!   [`RX_BUFFERS`] posted DMA buffers; the driver copies the frame into a heap `Vec` for the
//!   stack's queue (one copy, one allocation) and posts the buffers again. One MSI-X interrupt
//!   per batch: the driver asks (EVENT_IDX) to be interrupted only past the last entry it
//!   consumed.
//! - transmit: smoltcp fills a heap `Vec`; the driver copies it behind a 12-byte virtio-net
//!   header into a reused DMA buffer (one copy) and adds it to the transmit queue, up to
//!   [`TX_IN_FLIGHT`] at once. The doorbell (an MMIO write, a QEMU exit) is rung when the
//!   device asked for it; `virtio` on the console counts both doorbells and interrupts. The
//!   watchdog's counters cost one atomic add per frame sent and one per batch reaped.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::net::nic::ETHERNET_MAX_FRAME;
use tether_netstack::fault::Fault;
use tether_netstack::offload::{self, NetHeader, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, HEADER_LEN};
use tether_pci::{PciAddress, PciFunction};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;

use super::hal::{KernelHal, PciConfig};
use super::netdev::{NetFeatures, NetQueues};
use super::transport::{MsixEntries, MsixTransport, Registers, TransportStats};
use super::Wakeup;
use crate::mem::dma::{self, DmaBuffer};
use crate::net::nic::{ResetSchedule, TxProgress};
use crate::net::{self, Nic, Transmit};
use crate::sync::Mutex;
use crate::{pci, sched, time};

/// Descriptors per virtqueue (QEMU's default queue size; it must offer at least this many).
const QUEUE_SIZE: usize = 256;
/// Receive buffers the driver owns; all of them are posted while the stack's queue has room.
const RX_BUFFERS: usize = 128;
/// Frames handed to the device and not yet reaped, at most (the bounded transmit queue).
const TX_IN_FLIGHT: usize = 128;
/// A receive buffer holds the 12-byte header and a 1514-byte frame; a large received segment
/// (GUEST_TSO4, up to 64 KiB) spreads over several (MRG_RXBUF). Transmit buffers are the same.
const BUFFER: usize = 4096;
/// With HOST_TSO4, the largest frame the stack builds: the device cuts it into segments the
/// peer takes. Below 64 KiB with room for the TCP options smoltcp adds to its segment size.
const SEGMENTED_FRAME: usize = 14 + 60_000;
/// The MSS a peer's SYN is raised to, so that the stack builds such frames.
const RAISED_MSS: u16 = 59_000;
/// A transmit buffer for a frame to be segmented (header included, whole pages).
const SEGMENTED_BUFFER: usize = (HEADER_LEN + SEGMENTED_FRAME).next_multiple_of(4096);
/// Such buffers at most (each is 60 KiB).
const SEGMENTED_BUFFERS: usize = 32;
/// A peer's MSS when its SYN was not seen (Ethernet's 1500-byte MTU less the headers).
const DEFAULT_PEER_MSS: u16 = 1460;
/// Connections whose peer MSS is remembered, at most (the oldest is forgotten first).
const PEER_MSS_ENTRIES: usize = 64;
/// Received frames waiting for the network thread, at most. Posted buffers never exceed the
/// room left in it, so every frame the device delivers fits. Twice the buffers: all of them
/// stay posted until the stack falls a full ring behind; with the queue as long as the ring,
/// every frame waiting in it was a buffer withheld, and under load the device often ran dry
/// and needed a doorbell per handful of buffers posted again (0.03 more per frame measured).
const RX_QUEUE: usize = 2 * RX_BUFFERS;
/// How long a full transmit queue is waited for before the frame is dropped.
const TX_FULL_WAIT_US: u64 = 100_000;
/// The thread's wait with interrupts (work arrives by interrupt; this only bounds a lost one).
const IDLE_WAIT_NS: u64 = 1_000_000_000;
/// The thread's poll period without MSI-X.
const POLL_NS: u64 = 1_000_000;
/// While receive buffers are withheld (the stack's queue is full), the stack wakes the thread
/// when its queue is half empty (`Nic::want_rx_room`); this only bounds a missed wake.
const RX_ROOM_POLL_NS: u64 = 100_000_000;
/// How long a reset waits for the device to acknowledge it.
const RESET_TIMEOUT_US: u64 = 100_000;

/// virtio-net device configuration: `status` and its link bit, valid with VIRTIO_NET_F_STATUS.
const CONFIG_STATUS: u32 = 6;
const STATUS_LINK_UP: u16 = 1;
const FEATURE_STATUS: u64 = 1 << 16;

/// The driver thread's stack: virtio-drivers' queues carry two 4 KiB arrays each (a shadow of
/// the descriptor table, the indirect lists), so the device value is about 17 KiB and is moved
/// by value a few times while it is built, more than the default 64 KiB allow.
pub const STACK_SIZE: usize = 256 * 1024;

type Raw = NetQueues<KernelHal, MsixTransport, QUEUE_SIZE>;

/// What it takes to set the device up again: at bring-up and after every reset.
struct Setup {
    function: DeviceFunction,
    /// Its configuration space, with BAR sizing answered from enumeration.
    config: PciConfig,
    /// The common configuration, for the transport and for stopping the device.
    common: Registers,
    msix: Option<MsixEntries>,
    stats: Arc<TransportStats>,
    /// Whether receive offloads are asked for (`offload=off` on the command line turns them off).
    offloads: bool,
}

impl Setup {
    /// A new transport and virtio-drivers device: the device is reset, features negotiated,
    /// both queues set up with their MSI-X vectors, DRIVER_OK set.
    fn new_raw(&self) -> Result<Raw, String> {
        let mut root = PciRoot::new(self.config.clone());
        let pci_transport = PciTransport::new::<KernelHal, _>(&mut root, self.function)
            .map_err(|e| format!("transport: {e}"))?;
        let transport = MsixTransport::new(
            pci_transport,
            self.common.clone(),
            self.msix,
            self.stats.clone(),
        );
        Raw::new(transport, NetFeatures::wanted(self.offloads))
            .map_err(|e| format!("initialisation: {e}"))
    }
}

/// A frame handed to the device: its buffer, the length posted (completion needs it) and its
/// place in the sending order (a reset requeues unsent frames in that order).
struct TxFrame {
    buffer: DmaBuffer,
    length: usize,
    sequence: u64,
}

/// The queues and the buffers the device holds. `raw` comes first: fields drop in order, and
/// dropping it resets the device (virtio-drivers' transport does), so the device no longer
/// writes the buffers when they are freed after it.
struct Rings {
    /// None from a reset's teardown until the device is set up again (a failed set-up leaves
    /// it so until the retry; transmissions are refused meanwhile).
    raw: Option<Raw>,
    /// Posted receive buffers by token (the descriptor index the device returns).
    rx_posted: Vec<Option<DmaBuffer>>,
    rx_outstanding: usize,
    /// Receive buffers not posted: the stack's queue has no room for their frames yet.
    rx_spare: Vec<DmaBuffer>,
    /// Frames being sent, by token.
    tx_posted: Vec<Option<TxFrame>>,
    tx_in_flight: usize,
    /// Buffers of completed transmissions, for the next frames.
    tx_spare: Vec<DmaBuffer>,
    tx_allocated: usize,
    /// The same for frames the device segments (HOST_TSO4).
    tx_segmented_spare: Vec<DmaBuffer>,
    tx_segmented_allocated: usize,
    /// With HOST_TSO4, the MSS each peer really asked for (its SYN is raised to
    /// [`RAISED_MSS`]): large frames are segmented at it.
    peer_mss: Vec<(offload::Flow, u16)>,
    /// Frames handed over for the device to segment.
    tx_segmented: u64,
    tx_sequence: u64,
    /// The queue was full and nothing completed within a wait: later frames are not waited
    /// for (each would cost the network thread a wait) until something completes.
    tx_stalled: bool,
    /// The watchdog's counters.
    progress: Arc<TxProgress>,
    /// When the last reset finished (us), until a frame completes after it.
    reset_done_us: Option<u64>,
}

/// Posts `buffer` for the device to receive into, tracked in `posted` by its token.
fn post_receive_on(
    raw: &mut Raw,
    posted: &mut [Option<DmaBuffer>],
    outstanding: &mut usize,
    mut buffer: DmaBuffer,
) -> Result<(), String> {
    // SAFETY: the buffer is DMA memory owned by `posted` from here until `receive_complete`
    // returns it (or a reset stops the device); nothing touches it in between.
    let token = unsafe { raw.receive_begin(buffer.as_mut_slice()) }
        .map_err(|e| format!("posting a receive buffer: {e}"))?;
    match posted.get_mut(usize::from(token)) {
        Some(slot @ None) => {
            *slot = Some(buffer);
            *outstanding += 1;
            Ok(())
        }
        // The device now owns memory this driver no longer tracks: stop (reset) it.
        _ => {
            core::mem::forget(buffer);
            Err(format!("receive token {token} already in use"))
        }
    }
}

impl Rings {
    fn post_receive(&mut self, buffer: DmaBuffer) -> Result<(), String> {
        let raw = self
            .raw
            .as_mut()
            .ok_or_else(|| String::from("the device is being reset"))?;
        post_receive_on(raw, &mut self.rx_posted, &mut self.rx_outstanding, buffer)
    }

    /// Posts spare receive buffers while fewer than `limit` are posted (none while the device
    /// is being reset).
    fn post_receive_buffers(&mut self, limit: usize) -> Result<(), String> {
        if self.raw.is_none() {
            return Ok(());
        }
        while self.rx_outstanding < limit {
            let Some(buffer) = self.rx_spare.pop() else {
                return Ok(());
            };
            self.post_receive(buffer)?;
        }
        Ok(())
    }

    /// Moves every received frame to `frames`. `room`: frames the stack's queue takes besides
    /// what it holds; a buffer is posted again at once while the frames it may bring, those
    /// in `frames` and those the other posted buffers may bring still fit, and is kept spare
    /// otherwise. Frames whose reported length does not fit the buffer are dropped and counted.
    fn receive(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        counters: &DriverCounters,
        room: usize,
    ) -> Result<(), String> {
        loop {
            self.receive_completed(frames, counters, room)?;
            // Popping wrote `used_event` ("interrupt me past here") with a release store, and
            // the check for new entries is a load: x86 may order that load first, so this
            // thread and the device could each miss the other's write, and the device would
            // not interrupt for an entry this pass did not see (1 s stalls, seen under load).
            // A full fence, then a second look, closes it (Linux: virtio_mb in virtqueue_poll).
            fence(Ordering::SeqCst);
            if self
                .raw
                .as_ref()
                .is_none_or(|raw| raw.poll_receive().is_none())
            {
                return Ok(());
            }
        }
    }

    fn receive_completed(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        counters: &DriverCounters,
        room: usize,
    ) -> Result<(), String> {
        let Some(raw) = self.raw.as_ref() else {
            return Ok(());
        };
        let mergeable = raw.features().contains(NetFeatures::MRG_RXBUF);
        let segmenting = raw.features().contains(NetFeatures::HOST_TSO4);
        while let Some(token) = self.raw.as_ref().and_then(Raw::poll_receive) {
            let (buffer, written) = self.take_received(token)?;
            let filled = &buffer.as_slice()[..written];
            let header = NetHeader::parse(filled);
            let parts = match header {
                Some(h) if mergeable => usize::from(h.num_buffers.max(1)),
                _ => 1,
            };
            if parts > RX_BUFFERS {
                // The count is the device's word: no frame spans more buffers than are posted.
                self.recycle_receive(buffer, frames.len(), room)?;
                return Err(format!("a frame of {parts} buffers, {RX_BUFFERS} posted"));
            }
            let first = filled.get(HEADER_LEN..).unwrap_or(&[]);
            // Sized for what arrives: most frames are one buffer (an ACK is 60 bytes).
            let mut frame = Vec::with_capacity(first.len() + (parts - 1) * BUFFER);
            frame.extend_from_slice(first);
            self.recycle_receive(buffer, frames.len(), room)?;
            // The rest of a frame spread over several buffers: the device completes them
            // together, so each is already in the used ring.
            for part in 1..parts {
                let token = self
                    .raw
                    .as_ref()
                    .and_then(Raw::poll_receive)
                    .ok_or_else(|| format!("frame of {parts} buffers ends after {part}"))?;
                let (buffer, written) = self.take_received(token)?;
                frame.extend_from_slice(&buffer.as_slice()[..written]);
                self.recycle_receive(buffer, frames.len(), room)?;
            }
            let Some(header) = header else {
                counters.rx_bad_length.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let partial = header.flags & FLAG_NEEDS_CSUM != 0;
            if segmenting {
                if let Some(theirs) = offload::raise_syn_mss(&mut frame, RAISED_MSS, partial) {
                    if let Some(flow) = offload::flow_of(&frame, false) {
                        self.remember_peer_mss(flow, theirs);
                    }
                }
            }
            if partial {
                let start = usize::from(header.csum_start);
                let offset = usize::from(header.csum_offset);
                if offload::complete_checksum(&mut frame, start, offset).is_err() {
                    counters
                        .rx_bad_checksum_offsets
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            } else if header.flags & FLAG_DATA_VALID == 0
                && offload::verify_checksums(&frame).is_err()
            {
                // Checked here, in the device's thread, so the busier network thread need not.
                counters.rx_bad_checksums.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if parts > 1 {
                counters.rx_merged_frames.fetch_add(1, Ordering::Relaxed);
            }
            frames.push(frame);
        }
        Ok(())
    }

    /// Pops the receive buffer the device returned with `token`, with the bytes it wrote
    /// (never more than the buffer holds).
    fn take_received(&mut self, token: u16) -> Result<(DmaBuffer, usize), String> {
        let raw = self
            .raw
            .as_mut()
            .ok_or_else(|| String::from("the device is being reset"))?;
        let mut buffer = self
            .rx_posted
            .get_mut(usize::from(token))
            .and_then(Option::take)
            .ok_or_else(|| format!("device returned receive token {token}, never posted"))?;
        self.rx_outstanding -= 1;
        // SAFETY: this is the buffer posted with `token`, unchanged since.
        match unsafe { raw.receive_complete(token, buffer.as_mut_slice()) } {
            Ok(written) => {
                let written = written.min(buffer.as_slice().len());
                Ok((buffer, written))
            }
            Err(error) => {
                core::mem::forget(buffer);
                Err(format!("completing receive {token}: {error}"))
            }
        }
    }

    /// Posts a returned receive buffer again while the frames it may bring, the `waiting`
    /// ones and those the other posted buffers may bring still fit the stack's `room`; keeps
    /// it spare otherwise.
    fn recycle_receive(
        &mut self,
        buffer: DmaBuffer,
        waiting: usize,
        room: usize,
    ) -> Result<(), String> {
        if self.rx_outstanding + waiting < room {
            self.post_receive(buffer)
        } else {
            self.rx_spare.push(buffer);
            Ok(())
        }
    }

    /// Takes back the buffers of finished transmissions and counts them for the watchdog.
    fn reap_transmitted(&mut self, name: &str) -> Result<(), String> {
        let mut finished = 0;
        let result = loop {
            let before = finished;
            if let Err(error) = self.pop_transmitted(&mut finished) {
                break Err(error);
            }
            if finished == before {
                break Ok(());
            }
            // As in `receive`: popping moved `used_event`; without a full fence and a second
            // look, a completion racing with it gets no interrupt, and its frame would sit
            // unreaped (stuck, to the watchdog) until the next pass.
            fence(Ordering::SeqCst);
        };
        if finished > 0 {
            self.progress.finished(finished);
            self.tx_stalled = false;
            if let Some(reset_at) = self.reset_done_us.take() {
                // As the USB NICs log it (the recovery benchmark reads this line).
                log::warn!(
                    "{name}: first frame completed {} us after the reset",
                    time::now_us().saturating_sub(reset_at)
                );
            }
        }
        result
    }

    /// Pops every transmission the used ring shows finished, counting them in `finished`.
    fn pop_transmitted(&mut self, finished: &mut u64) -> Result<(), String> {
        while let Some(token) = self.raw.as_ref().and_then(Raw::poll_transmit) {
            let Some(raw) = self.raw.as_mut() else {
                return Ok(());
            };
            let frame = self
                .tx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
                .ok_or_else(|| format!("device returned transmit token {token}, never posted"))?;
            // SAFETY: this is the buffer and length posted with `token`, unchanged since.
            let completed =
                unsafe { raw.transmit_complete(token, &frame.buffer.as_slice()[..frame.length]) };
            if let Err(error) = completed {
                core::mem::forget(frame);
                return Err(format!("completing transmit {token}: {error}"));
            }
            self.tx_in_flight -= 1;
            self.spare_tx(frame.buffer);
            *finished += 1;
        }
        Ok(())
    }

    /// A transmit buffer, if fewer than [`TX_IN_FLIGHT`] frames are in flight; a large one
    /// for a frame the device segments.
    fn transmit_buffer(&mut self, segmented: bool) -> Option<DmaBuffer> {
        if self.tx_in_flight >= TX_IN_FLIGHT {
            return None;
        }
        if segmented {
            if let Some(buffer) = self.tx_segmented_spare.pop() {
                return Some(buffer);
            }
            if self.tx_segmented_allocated >= SEGMENTED_BUFFERS {
                return None;
            }
            let buffer = dma::alloc(SEGMENTED_BUFFER, 64, 0, None).ok()?;
            self.tx_segmented_allocated += 1;
            return Some(buffer);
        }
        if let Some(buffer) = self.tx_spare.pop() {
            return Some(buffer);
        }
        let buffer = dma::alloc(BUFFER, 64, 0, None).ok()?;
        self.tx_allocated += 1;
        Some(buffer)
    }

    /// A transmit buffer back to its pool.
    fn spare_tx(&mut self, buffer: DmaBuffer) {
        if buffer.as_slice().len() >= SEGMENTED_BUFFER {
            self.tx_segmented_spare.push(buffer);
        } else {
            self.tx_spare.push(buffer);
        }
    }

    fn remember_peer_mss(&mut self, flow: offload::Flow, mss: u16) {
        self.peer_mss.retain(|(f, _)| *f != flow);
        if self.peer_mss.len() >= PEER_MSS_ENTRIES {
            self.peer_mss.remove(0);
        }
        self.peer_mss.push((flow, mss));
    }

    fn peer_mss_of(&self, frame: &[u8]) -> u16 {
        offload::flow_of(frame, true)
            .and_then(|flow| self.peer_mss.iter().find(|(f, _)| *f == flow))
            .map_or(DEFAULT_PEER_MSS, |&(_, mss)| mss)
    }

    fn send(&mut self, mut buffer: DmaBuffer, frame: &[u8]) -> Result<(), &'static str> {
        if self.raw.is_none() {
            self.spare_tx(buffer);
            return Err("the device is being reset");
        }
        let length = HEADER_LEN + frame.len();
        if length > buffer.as_slice().len() {
            self.spare_tx(buffer);
            return Err("frame larger than the transmit buffers");
        }
        let bytes = buffer.as_mut_slice();
        bytes[HEADER_LEN..length].copy_from_slice(frame);
        let header = if frame.len() > ETHERNET_MAX_FRAME {
            let mss = self.peer_mss_of(frame);
            match offload::segmentation_header(&mut bytes[HEADER_LEN..length], mss) {
                Some(header) => {
                    self.tx_segmented += 1;
                    header
                }
                None => {
                    self.spare_tx(buffer);
                    return Err("a frame larger than the MTU that is not TCP");
                }
            }
        } else {
            NetHeader::default()
        };
        header.write(buffer.as_mut_slice());
        let sequence = self.tx_sequence;
        self.tx_sequence += 1;
        self.post_transmit(TxFrame {
            buffer,
            length,
            sequence,
        })?;
        self.progress.started();
        Ok(())
    }

    /// Hands a filled frame to the device (counted in flight; the caller counts it for the
    /// watchdog when it is new).
    fn post_transmit(&mut self, frame: TxFrame) -> Result<(), &'static str> {
        let Some(raw) = self.raw.as_mut() else {
            self.spare_tx(frame.buffer);
            return Err("the device is being reset");
        };
        // SAFETY: the buffer is owned by `tx_posted` until `transmit_complete` returns it (or a
        // reset stops the device) and is not written in between.
        match unsafe { raw.transmit_begin(&frame.buffer.as_slice()[..frame.length]) } {
            Ok(token) => match self.tx_posted.get_mut(usize::from(token)) {
                Some(slot @ None) => {
                    *slot = Some(frame);
                    self.tx_in_flight += 1;
                    Ok(())
                }
                _ => {
                    core::mem::forget(frame);
                    Err("transmit token already in use")
                }
            },
            Err(_) => {
                self.spare_tx(frame.buffer);
                Err("transmit queue full")
            }
        }
    }

    /// One pass of the device thread: received frames to `frames`, finished transmissions
    /// reaped (unless a wedge is injected), receive buffers posted for what the stack's queue
    /// can take besides `frames`. Returns whether buffers are withheld for want of room.
    fn service(
        &mut self,
        nic: &Nic,
        frames: &mut Vec<Vec<u8>>,
        counters: &DriverCounters,
        tx_wedged: bool,
    ) -> Result<bool, String> {
        let room = nic.rx_room();
        self.receive(frames, counters, room)?;
        if !tx_wedged {
            self.reap_transmitted(&nic.name)?;
        }
        // Buffers kept spare for want of room earlier, if the stack has taken frames since.
        self.post_receive_buffers(room.saturating_sub(frames.len()))?;
        Ok(self.raw.is_some() && !self.rx_spare.is_empty())
    }
}

#[derive(Default)]
struct DriverCounters {
    /// Received frames dropped because the device wrote less than a header.
    rx_bad_length: AtomicU64,
    /// Received frames dropped because their partial checksum pointed outside them.
    rx_bad_checksum_offsets: AtomicU64,
    /// Received frames dropped for a wrong checksum (or an IPv4 header that does not hold).
    rx_bad_checksums: AtomicU64,
    /// Received frames that spanned several buffers (large receive).
    rx_merged_frames: AtomicU64,
    /// Transmissions that found every descriptor in flight and waited.
    tx_full_waits: AtomicU64,
}

/// What a reset did.
struct ResetOutcome {
    /// Frames the device had not used, queued again in their order.
    requeued: u64,
    /// Frames the device had not used that could not be queued again (dropped).
    dropped: u64,
    /// Frames the device had sent without the driver noticing (a wedge).
    finished: u64,
}

/// One virtio-net device: what the interface's transmit path and the console see.
pub struct NetDevice {
    interface: String,
    address: PciAddress,
    rings: Mutex<Rings>,
    setup: Setup,
    transport: Arc<TransportStats>,
    wakeup: Arc<Wakeup>,
    msix: bool,
    counters: DriverCounters,
    /// The stack asked for a reset; the device thread does it.
    reset_requested: AtomicBool,
    /// Resets still to fail on purpose (fault injection).
    fail_resets: AtomicU32,
    /// HOST_TSO4 negotiated: frames up to [`SEGMENTED_FRAME`] are taken.
    segmenting: bool,
}

impl Transmit for NetDevice {
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str> {
        let segmented = frame.len() > ETHERNET_MAX_FRAME;
        if frame.len() > SEGMENTED_FRAME || (segmented && !self.segmenting) {
            return Err("frame larger than the MTU");
        }
        let started = time::now_us();
        let mut waited = false;
        loop {
            let mut rings = self.rings.lock();
            if !self.tx_wedged() {
                rings.reap_transmitted(&self.interface).map_err(|_| {
                    // The device thread would find it at its next pass; ask now.
                    self.request_reset();
                    "transmit queue inconsistent"
                })?;
            }
            if let Some(buffer) = rings.transmit_buffer(segmented) {
                return rings.send(buffer, frame);
            }
            if rings.tx_stalled {
                return Err("transmit queue full");
            }
            if time::now_us().saturating_sub(started) >= TX_FULL_WAIT_US {
                rings.tx_stalled = true;
                return Err("transmit queue full");
            }
            drop(rings);
            if !waited {
                waited = true;
                self.counters.tx_full_waits.fetch_add(1, Ordering::Relaxed);
            }
            // The device finishes transmissions in QEMU's own time; look again shortly.
            sched::sleep_ns(100_000);
        }
    }

    fn request_reset(&self) -> bool {
        self.reset_requested.store(true, Ordering::Release);
        self.wakeup.semaphore.up();
        true
    }

    fn rx_room(&self) {
        self.wakeup.semaphore.up();
    }

    fn inject(&self, fault: Fault) -> Result<(), &'static str> {
        match fault {
            Fault::WedgeTx => self.transport.tx_wedged.store(true, Ordering::Release),
            Fault::FailReset { count } => self.fail_resets.store(count, Ordering::Release),
            Fault::Reset => {
                self.request_reset();
            }
            Fault::WedgeRx | Fault::Stall | Fault::DropIrq { .. } => {
                return Err("virtio-net injects wedge, fail-reset and reset")
            }
        }
        Ok(())
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
            format!(
                "{}: virtio-net {} interrupts by {}: {} queue, {} config\n  doorbells: {} receive, {} transmit ({} and {} not needed, saved)\n  receive: {} buffers posted, {} withheld (no room in the stack's queue), {} frames spanning several, {} without a header, {} with a bad checksum offset, {} refused for a bad checksum\n  transmit: {} in flight, {} buffers, {} waits for a full queue, {} frames segmented by the device{}",
                d.interface,
                d.address,
                if d.msix { "MSI-X" } else { "none (polling)" },
                d.wakeup.queue_interrupts.load(Ordering::Relaxed),
                d.wakeup.config_interrupts.load(Ordering::Relaxed),
                d.transport.notifications[0].load(Ordering::Relaxed),
                d.transport.notifications[1].load(Ordering::Relaxed),
                d.transport.suppressed[0].load(Ordering::Relaxed),
                d.transport.suppressed[1].load(Ordering::Relaxed),
                rings.rx_outstanding,
                rings.rx_spare.len(),
                d.counters.rx_merged_frames.load(Ordering::Relaxed),
                d.counters.rx_bad_length.load(Ordering::Relaxed),
                d.counters.rx_bad_checksum_offsets.load(Ordering::Relaxed),
                d.counters.rx_bad_checksums.load(Ordering::Relaxed),
                rings.tx_in_flight,
                rings.tx_allocated + rings.tx_segmented_allocated,
                d.counters.tx_full_waits.load(Ordering::Relaxed),
                rings.tx_segmented,
                if d.tx_wedged() { "; wedged (fault injected)" } else { "" },
            )
        })
        .collect()
}

/// The driver thread: brings the device up as `interface`, then serves it.
pub fn run(function: PciFunction, interface: String) {
    match bring_up(&function, &interface) {
        Ok((device, nic, link)) => device.serve(&nic, link.as_ref()),
        Err(error) => {
            log::error!(
                "{interface}: virtio-net {} {:04x}:{:04x}: {error}; no interface",
                function.address,
                function.vendor_id,
                function.device_id
            );
        }
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
    let setup = Setup {
        function: DeviceFunction {
            bus: function.address.bus(),
            device: function.address.device(),
            function: function.address.function(),
        },
        config: PciConfig::new(function),
        common,
        msix,
        stats: Arc::new(TransportStats::default()),
        offloads: offloads_wanted(),
    };
    let raw = setup.new_raw()?;
    let stats = setup.stats.clone();
    let mut msix = msix.is_some();
    if stats.vector_refused.load(Ordering::Relaxed) {
        log::warn!("{interface}: the device refused its MSI-X vectors; polling");
        msix = false;
    }
    let mac = raw.mac_address();
    let offloads = offload_summary(raw.features(), setup.offloads);
    let segmenting = raw.features().contains(NetFeatures::HOST_TSO4);
    // The interface (with the watchdog policy of the command line) before the rings, which
    // count into its TX progress.
    let nic = net::attach_link_named(String::from(interface), mac, RX_QUEUE);
    nic.tx_queue_capacity.store(TX_IN_FLIGHT, Ordering::Relaxed);
    let max_frame = if segmenting {
        SEGMENTED_FRAME
    } else {
        ETHERNET_MAX_FRAME
    };
    nic.max_frame.store(max_frame, Ordering::Relaxed);
    nic.rx_checksums_verified.store(true, Ordering::Relaxed);
    let mut rings = Rings {
        raw: Some(raw),
        rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
        rx_outstanding: 0,
        rx_spare: Vec::new(),
        tx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
        tx_in_flight: 0,
        tx_spare: Vec::new(),
        tx_allocated: 0,
        tx_segmented_spare: Vec::new(),
        tx_segmented_allocated: 0,
        peer_mss: Vec::new(),
        tx_segmented: 0,
        tx_sequence: 0,
        tx_stalled: false,
        progress: nic.tx_progress.clone(),
        reset_done_us: None,
    };
    for _ in 0..RX_BUFFERS {
        let buffer =
            dma::alloc(BUFFER, 64, 0, None).map_err(|e| format!("receive buffers: {e}"))?;
        rings.rx_spare.push(buffer);
    }
    rings.post_receive_buffers(nic.rx_room())?;
    let device = Arc::new(NetDevice {
        interface: String::from(interface),
        address: function.address,
        rings: Mutex::new("virtio.net.rings", rings),
        setup,
        transport: stats,
        wakeup,
        msix,
        counters: DriverCounters::default(),
        reset_requested: AtomicBool::new(false),
        fail_resets: AtomicU32::new(0),
        segmenting,
    });
    nic.set_link(device.clone());
    let up = link_up(&device, link.as_ref());
    nic.set_carrier(up);
    log::info!(
        "{interface}: virtio-net {} {:04x}:{:04x} MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {RX_BUFFERS} receive buffers posted, receive offloads: {offloads}, interrupts by {}, link {}, watchdog {}",
        function.address,
        function.vendor_id,
        function.device_id,
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        if msix { "MSI-X" } else { "polling" },
        if up { "up" } else { "down" },
        nic.tx_progress.policy(),
    );
    DEVICES.lock().push(device.clone());
    Ok((device, nic, link))
}

/// The receive offloads in `features`, for the log.
fn offload_summary(features: NetFeatures, wanted: bool) -> &'static str {
    if !wanted {
        return "off (offload=off)";
    }
    let lro = features.contains(NetFeatures::GUEST_TSO4);
    let tso = features.contains(NetFeatures::HOST_TSO4);
    if lro && tso {
        "large receive and send (TSO4), partial checksums"
    } else if lro {
        "large receive (TSO4), partial checksums"
    } else if features.contains(NetFeatures::GUEST_CSUM) {
        "partial checksums"
    } else {
        "none (the back-end offers none)"
    }
}

/// `offload=off` turns the receive offloads off (for comparison); anything but `on`/`off` is
/// reported and the default (on) kept.
fn offloads_wanted() -> bool {
    let Ok(cmdline) = tether_kcore::cmdline::Cmdline::parse(&crate::boot::state().cmdline) else {
        return true;
    };
    match cmdline.bool("offload") {
        Ok(value) => value.unwrap_or(true),
        Err(error) => {
            log::warn!("{error}; offloads stay on");
            true
        }
    }
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
    fn tx_wedged(&self) -> bool {
        self.transport.tx_wedged.load(Ordering::Relaxed)
    }

    /// Waits for interrupts (or polls), passes received frames on, reaps transmissions,
    /// follows the link, and resets the device when asked to (or when its rings are found
    /// inconsistent), retrying a failed reset with backoff.
    fn serve(&self, nic: &Nic, link: Option<&Registers>) -> ! {
        let mut carrier = nic.carrier.load(Ordering::Relaxed);
        let mut last_link_check = time::now_us();
        let mut frames = Vec::new();
        let mut rx_withheld = false;
        let mut reset = ResetSchedule::new();
        loop {
            let mut wait_ns = if self.msix { IDLE_WAIT_NS } else { POLL_NS };
            if rx_withheld {
                wait_ns = wait_ns.min(RX_ROOM_POLL_NS);
            }
            if let Some(due_us) = reset.wait_us(time::now_us()) {
                wait_ns = wait_ns.min(due_us * 1000);
            }
            if wait_ns > 0 {
                self.wakeup.semaphore.down_timeout(wait_ns);
            }
            // One pass handles every interrupt so far.
            while self.wakeup.semaphore.try_down() {}
            if self.reset_requested.swap(false, Ordering::AcqRel) {
                reset.request();
            }
            if reset.due(time::now_us()) {
                let started = time::now_us();
                match self.reset(nic, &mut frames) {
                    Ok(outcome) => {
                        log::warn!(
                            "{}: reset done in {} us; {} frames requeued, {} dropped, {} found sent",
                            nic.name,
                            time::now_us() - started,
                            outcome.requeued,
                            outcome.dropped,
                            outcome.finished,
                        );
                        reset.finished(nic, started, Ok(()));
                    }
                    Err(error) => reset.finished(nic, started, Err(&error)),
                }
            }
            let pass =
                self.rings
                    .lock()
                    .service(nic, &mut frames, &self.counters, self.tx_wedged());
            match pass {
                Ok(withheld) => rx_withheld = withheld,
                Err(error) => {
                    log::error!("{}: virtio-net: {error}; resetting the device", nic.name);
                    reset.request();
                }
            }
            for frame in frames.drain(..) {
                nic.deliver(frame);
            }
            if rx_withheld {
                // Ask first, then look: a frame taken before the request shows in the room
                // (both go through the queue's lock), one taken after it wakes the thread.
                nic.want_rx_room();
                if nic.rx_room() >= RX_QUEUE / 2 {
                    self.wakeup.semaphore.up();
                }
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

    /// A virtio device reset, in the device thread, holding the rings (new frames wait behind
    /// the requeued ones): stops the device so the rings are final, takes what it completed
    /// (received frames to `frames`, sent frames counted as finished), sets the device up
    /// again, posts receive buffers as the stack's queue allows and queues the frames it had
    /// not used again in their order. Frames that cannot be queued again are dropped and
    /// counted (`tx_dropped_reset`), never counted as sent.
    fn reset(&self, nic: &Nic, frames: &mut Vec<Vec<u8>>) -> Result<ResetOutcome, String> {
        let mut guard = self.rings.lock();
        let rings = &mut *guard;
        if self
            .fail_resets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("injected reset failure".into());
        }
        let mut finished = 0;
        if rings.raw.is_some() {
            self.setup
                .common
                .reset_device(RESET_TIMEOUT_US)
                .map_err(String::from)?;
            // The device has stopped: its used rings are final. What they hold was done;
            // entries that do not add up are abandoned with the rings.
            let _ = rings.receive_completed(frames, &self.counters, 0);
            let in_flight = rings.tx_in_flight;
            let _ = rings.reap_transmitted(&nic.name);
            finished = (in_flight - rings.tx_in_flight) as u64;
            // Frees the queues (virtio-drivers resets the device again on the way: a no-op).
            rings.raw = None;
        }
        self.transport.tx_wedged.store(false, Ordering::Release);
        // Every buffer is the driver's again.
        for slot in rings.rx_posted.iter_mut() {
            if let Some(buffer) = slot.take() {
                rings.rx_spare.push(buffer);
            }
        }
        rings.rx_outstanding = 0;
        let mut unsent: Vec<TxFrame> = rings
            .tx_posted
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        unsent.sort_unstable_by_key(|frame| frame.sequence);
        rings.tx_in_flight = 0;
        rings.tx_stalled = false;
        let raw = match self.setup.new_raw() {
            Ok(raw) => raw,
            Err(error) => {
                let dropped = unsent.len() as u64;
                for frame in unsent {
                    rings.spare_tx(frame.buffer);
                }
                self.drop_unsent(nic, dropped);
                return Err(error);
            }
        };
        rings.raw = Some(raw);
        // A failure here fails the reset (retried), once the frames below are accounted for.
        let posted = rings.post_receive_buffers(nic.rx_room().saturating_sub(frames.len()));
        let (mut requeued, mut dropped) = (0, 0);
        for frame in unsent {
            match rings.post_transmit(frame) {
                Ok(()) => requeued += 1,
                Err(_) => dropped += 1,
            }
        }
        self.drop_unsent(nic, dropped);
        nic.counters
            .tx_requeued
            .fetch_add(requeued, Ordering::Relaxed);
        posted?;
        rings.reset_done_us = Some(time::now_us());
        Ok(ResetOutcome {
            requeued,
            dropped,
            finished,
        })
    }

    /// Frames a reset took back and could not queue again: no longer in the device.
    fn drop_unsent(&self, nic: &Nic, frames: u64) {
        if frames > 0 {
            nic.tx_progress.withdrawn(frames);
            nic.counters
                .tx_dropped_reset
                .fetch_add(frames, Ordering::Relaxed);
        }
    }
}
