//! What USB Ethernet class drivers (CDC-ECM, RNDIS) share: the bulk data path and the device
//! thread's shape. Bulk IN keeps several transfers queued (QEMU's usb-net holds a single
//! received frame) and reuses completed transfers' DMA buffers; bulk OUT has at most
//! [`TX_IN_FLIGHT`] transfers in flight by default (`txqueue=N`), reuses their buffers, and follows a transfer whose
//! length is a multiple of the endpoint's packet size with a zero-length packet (never padding:
//! QEMU 7.2's RNDIS keeps padding bytes and loses every later frame). A failed transfer that
//! halted its pipe gets the pipe cleared and traffic resumes. How a frame is put into a
//! transfer ([`TxFraming`]) and what a received transfer holds ([`ClassDataPath::received`])
//! are the class driver's.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tether_netstack::fault::Fault;

use tether_usb::descriptor::Endpoint;
use tether_usb::host::TransferError;
use tether_usb::rndis::transfer_needs_zlp;
use tether_xhci::pipe::{EndpointConfig, Pipe, PipeKind, TransferBuffer, TransferHandle};

use super::driver::DeviceContext;
use crate::net::nic::{ResetSchedule, TxProgress};
use crate::net::{Nic, Transmit};
use crate::sync::Mutex;
use crate::time;

/// Bulk IN transfers kept queued. The device completes one per frame and waits while none is
/// queued. Refilling takes an interrupt, the controller's thread and this device's thread, so
/// the queue must cover that time. Measured on usb-net with user networking (one 8 s iperf3 run
/// host -> guest each): 4 gave 87-95 Mbit/s, 16 gave 264-300, 32 gave 297, 64 gave 320.
pub const RX_QUEUED: usize = 32;
/// Transfers to the device queued and not yet completed, at most (the bounded TX queue).
pub const TX_IN_FLIGHT: usize = 32;
/// Bounds of `txqueue=`.
pub const TX_QUEUE_RANGE: core::ops::RangeInclusive<usize> = 4..=512;

/// The TX queue's size: `txqueue=N` (transfers in flight, zero-length packets included), else
/// [`TX_IN_FLIGHT`]. A bad value is reported and the default used.
pub fn tx_queue_len() -> usize {
    let Ok(cmdline) = tether_kcore::cmdline::Cmdline::parse(&crate::boot::state().cmdline) else {
        return TX_IN_FLIGHT;
    };
    match cmdline.get("txqueue") {
        None => TX_IN_FLIGHT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if TX_QUEUE_RANGE.contains(&n) => n,
            _ => {
                log::warn!(
                    "txqueue={text}: expected {}-{}; using {TX_IN_FLIGHT}",
                    TX_QUEUE_RANGE.start(),
                    TX_QUEUE_RANGE.end()
                );
                TX_IN_FLIGHT
            }
        },
    }
}
/// Received frames waiting for the network thread, at most.
pub const RX_QUEUE: usize = 64;
/// How long the data loop waits for a bulk IN completion before looking at the rest.
const POLL_US: u64 = 100_000;

/// The pipe set-up for an endpoint descriptor.
pub fn endpoint_config(ep: &Endpoint, kind: PipeKind) -> EndpointConfig {
    EndpointConfig {
        address: ep.address,
        kind,
        max_packet: ep.max_packet_size(),
        interval: ep.interval,
        max_burst: 0,
    }
}

/// How a class puts one Ethernet frame into one bulk-OUT transfer.
pub trait TxFraming: Send + Sync {
    /// The transfer's bytes: `frame` itself, or `frame` framed into `scratch` (cleared by the
    /// caller, reused between frames). Err: the frame cannot be sent (too long).
    fn frame<'a>(
        &self,
        frame: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], &'static str>;
}

/// The transmit side: bulk OUT transfers in flight, reaped as they complete; and the link's
/// control for the stack (reset requests, fault injection).
pub struct BulkTx<F> {
    pipe: Pipe,
    max_packet: usize,
    buffer_len: usize,
    framing: F,
    queue: Mutex<TxQueue>,
    /// Zero-length packets sent after transfers of a multiple of the packet size.
    zlps: AtomicU64,
    /// The bulk IN pipe (for fault injection; the device thread receives on it).
    rx_pipe: Pipe,
    /// The watchdog's two counters: frames started, frames finished.
    progress: Arc<TxProgress>,
    /// The interface's name, for log lines.
    name: String,
    /// The stack asked for a reset; the device thread does it.
    reset_requested: AtomicBool,
    /// Resets still to fail on purpose (fault injection).
    fail_resets: AtomicU32,
    /// When the last reset finished (us), until the first frame completes after it.
    reset_done_us: AtomicU64,
    /// The queue was full and its oldest transfer did not complete within a wait.
    stalled: AtomicBool,
    /// Transfers in flight at most (the bounded TX queue).
    queue_len: usize,
}

/// Transfers in flight, buffers of completed ones kept for the next frames, and the framing
/// scratch space.
struct TxQueue {
    in_flight: VecDeque<TransferHandle>,
    spare: Vec<TransferBuffer>,
    scratch: Vec<u8>,
}

impl<F: TxFraming> BulkTx<F> {
    /// `buffer_len`: every transmit buffer's size, the longest transfer this side sends.
    /// Frames are counted in `nic`'s TX progress; `rx_pipe` is the bulk IN pipe.
    pub fn new(pipe: Pipe, buffer_len: usize, framing: F, rx_pipe: Pipe, nic: &Nic) -> Arc<Self> {
        let queue_len = tx_queue_len();
        nic.tx_queue_capacity.store(queue_len, Ordering::Relaxed);
        Arc::new(BulkTx {
            max_packet: usize::from(pipe.max_packet()),
            pipe,
            buffer_len,
            framing,
            rx_pipe,
            progress: nic.tx_progress.clone(),
            name: nic.name.clone(),
            reset_requested: AtomicBool::new(false),
            fail_resets: AtomicU32::new(0),
            reset_done_us: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            queue_len,
            queue: Mutex::new(
                "usbnet.tx",
                TxQueue {
                    in_flight: VecDeque::new(),
                    spare: Vec::new(),
                    scratch: Vec::new(),
                },
            ),
            zlps: AtomicU64::new(0),
        })
    }

    pub fn zlps(&self) -> u64 {
        self.zlps.load(Ordering::Relaxed)
    }

    /// Drops completed transfers from the front, counting finished frames for the watchdog;
    /// a failed one (counted by the pipe) that halted the pipe gets it cleared so sending
    /// resumes (the frames failed back with it are lost; TCP resends).
    fn reap(&self, queue: &mut TxQueue) {
        while let Some(result) = queue.in_flight.front().and_then(|h| h.try_result()) {
            let done = queue.in_flight.pop_front().expect("front exists");
            self.stalled.store(false, Ordering::Release);
            // A zero-length packet is the tail of the frame before it, not a frame.
            if !done.buffer().is_empty() {
                self.progress.finished(1);
                if result.is_ok() {
                    self.first_frame_after_reset();
                }
            }
            if queue.spare.len() < self.queue_len {
                queue.spare.push(done.buffer().with_len(self.buffer_len));
            }
            if let Err(error) = result {
                if self.pipe.is_halted() && !matches!(error, TransferError::Disconnected) {
                    let _ = self.pipe.clear_halt();
                }
            }
        }
    }

    /// A transmit buffer: a completed transfer's, or a new one.
    fn buffer(&self, queue: &mut TxQueue) -> Result<TransferBuffer, &'static str> {
        match queue.spare.pop() {
            Some(buffer) => Ok(buffer),
            None => self
                .pipe
                .alloc_buffer(self.buffer_len)
                .map_err(|_| "no DMA memory"),
        }
    }
}

impl<F: TxFraming> Transmit for BulkTx<F> {
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str> {
        let mut queue = self.queue.lock();
        self.reap(&mut queue);
        if queue.in_flight.len() >= self.queue_len {
            // A device that did not complete the oldest transfer within the last wait is not
            // waited for again (each frame would cost the network thread a wait) until
            // something completes.
            if self.stalled.load(Ordering::Acquire) {
                return Err("transmit queue full");
            }
            // Full: wait (bounded) for the oldest transfer without holding the queue's lock.
            let oldest = queue.in_flight.pop_front().expect("the queue is full");
            drop(queue);
            oldest.poll_wait(100_000);
            queue = self.queue.lock();
            queue.in_flight.push_front(oldest);
            self.reap(&mut queue);
            if queue.in_flight.len() >= self.queue_len {
                self.stalled.store(true, Ordering::Release);
                return Err("transmit queue full");
            }
        }
        let mut scratch = core::mem::take(&mut queue.scratch);
        scratch.clear();
        let result = self.send(&mut queue, frame, &mut scratch);
        queue.scratch = scratch;
        result
    }
    fn request_reset(&self) -> bool {
        self.reset_requested.store(true, Ordering::Release);
        true
    }

    fn inject(&self, fault: Fault) -> Result<(), &'static str> {
        match fault {
            Fault::WedgeTx => self.pipe.inject_wedge(),
            Fault::WedgeRx => self.rx_pipe.inject_wedge(),
            Fault::Stall => self.rx_pipe.inject_stall_on_next_completion(),
            Fault::DropIrq { ms } => super::os::drop_interrupts(u64::from(ms) * 1000),
            Fault::FailReset { count } => self.fail_resets.store(count, Ordering::Release),
            Fault::Reset => {
                self.request_reset();
            }
        }
        Ok(())
    }
}

impl<F: TxFraming> BulkTx<F> {
    /// Reaps what completed (the data loop calls this often, so the watchdog sees completions
    /// even when nothing new is sent).
    pub fn poll(&self) {
        let mut queue = self.queue.lock();
        self.reap(&mut queue);
    }

    fn take_reset_request(&self) -> bool {
        self.reset_requested.swap(false, Ordering::AcqRel)
    }

    fn first_frame_after_reset(&self) {
        // Called for every completed frame: a plain load first, the swap only after a reset.
        if self.reset_done_us.load(Ordering::Relaxed) == 0 {
            return;
        }
        let reset_at = self.reset_done_us.swap(0, Ordering::AcqRel);
        if reset_at != 0 {
            // The recovery benchmark reads this line.
            log::warn!(
                "{}: first frame completed {} us after the reset",
                self.name,
                time::now_us().saturating_sub(reset_at)
            );
        }
    }

    /// Resets the data path in the device thread: stops bulk OUT (what the device did not
    /// complete fails back and is kept), stops bulk IN, lets the class reset its function
    /// (`class_reset`), then queues the kept frames again in their order. The TX queue's lock
    /// is held throughout, so new frames wait behind the kept ones. Returns the frames
    /// requeued.
    fn reset(
        &self,
        rx: &mut BulkRx,
        class_reset: impl FnOnce() -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut queue = self.queue.lock();
        if self
            .fail_resets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("injected reset failure".into());
        }
        self.pipe
            .clear_halt()
            .map_err(|e| format!("bulk OUT: {e}"))?;
        let mut unsent = Vec::new();
        while let Some(handle) = queue.in_flight.pop_front() {
            let buffer = handle.buffer().clone();
            match handle.try_result() {
                // Zero-length packets are sent again with their frames.
                _ if buffer.is_empty() => queue.spare.push(buffer.with_len(self.buffer_len)),
                Some(Ok(_)) => {
                    self.progress.finished(1);
                    queue.spare.push(buffer.with_len(self.buffer_len));
                }
                // Never reached the device (failed back by the clear): send again.
                _ => unsent.push(buffer),
            }
        }
        rx.reset()?;
        class_reset()?;
        let requeued = unsent.len();
        for buffer in unsent {
            let len = buffer.len();
            let handle = self
                .pipe
                .submit(buffer)
                .map_err(|e| format!("requeue: {e}"))?;
            queue.in_flight.push_back(handle);
            if transfer_needs_zlp(len, self.max_packet) {
                let zlp = self.buffer(&mut queue).map_err(String::from)?.with_len(0);
                let handle = self.pipe.submit(zlp).map_err(|e| format!("requeue: {e}"))?;
                queue.in_flight.push_back(handle);
            }
        }
        self.reset_done_us
            .store(time::now_us().max(1), Ordering::Release);
        Ok(requeued)
    }
}

impl<F: TxFraming> BulkTx<F> {
    fn send(
        &self,
        queue: &mut TxQueue,
        frame: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        let bytes = self.framing.frame(frame, scratch)?;
        if bytes.len() > self.buffer_len {
            return Err("frame larger than the transmit buffers");
        }
        let buffer = self.buffer(queue)?.with_len(bytes.len());
        buffer.write(bytes);
        let handle = self.pipe.submit(buffer).map_err(|_| "submit refused")?;
        queue.in_flight.push_back(handle);
        self.progress.started();
        if transfer_needs_zlp(bytes.len(), self.max_packet) {
            let zlp = self.buffer(queue)?.with_len(0);
            let handle = self.pipe.submit(zlp).map_err(|_| "submit refused")?;
            queue.in_flight.push_back(handle);
            self.zlps.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The receive side: a fixed number of bulk IN transfers always queued; they complete in
/// order.
pub struct BulkRx {
    pipe: Pipe,
    buffer_len: usize,
    in_flight: VecDeque<TransferHandle>,
    spare: Vec<TransferBuffer>,
}

impl BulkRx {
    /// Queues [`RX_QUEUED`] transfers of `buffer_len` bytes (the longest transfer the device
    /// may send).
    pub fn start(pipe: Pipe, buffer_len: usize) -> Result<BulkRx, String> {
        let mut rx = BulkRx {
            pipe,
            buffer_len,
            in_flight: VecDeque::new(),
            spare: Vec::new(),
        };
        rx.refill(RX_QUEUED)?;
        Ok(rx)
    }

    pub fn queued(&self) -> usize {
        self.in_flight.len()
    }

    /// Tops the queue up to `budget` transfers (at most [`RX_QUEUED`]), reusing completed
    /// transfers' buffers first.
    fn refill(&mut self, budget: usize) -> Result<(), String> {
        while self.in_flight.len() < budget.min(RX_QUEUED) {
            let buffer = match self.spare.pop() {
                Some(buffer) => buffer,
                None => self
                    .pipe
                    .alloc_buffer(self.buffer_len)
                    .map_err(|e| format!("RX buffer: {e}"))?,
            };
            match self.pipe.submit(buffer) {
                Ok(handle) => self.in_flight.push_back(handle),
                Err(TransferError::Disconnected) => return Err("device gone".into()),
                Err(error) => return Err(format!("RX submit: {error}")),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout_us` for the oldest transfer: its bytes when it completed (empty
    /// for a zero-length packet), None when nothing came or a failed transfer was recovered
    /// from. Err: the device is gone, or the pipe could not be recovered.
    pub fn receive(&mut self, timeout_us: u64) -> Result<Option<Vec<u8>>, String> {
        self.receive_within(timeout_us, RX_QUEUED)
    }

    /// [`Self::receive`] with at most `budget` transfers queued: the frames they may bring
    /// must fit in the stack's queue. With none allowed, waits a millisecond for the stack to
    /// take frames: the device then holds its frame (QEMU queues behind it, a real device
    /// NAKs) instead of the driver dropping one.
    pub fn receive_within(
        &mut self,
        timeout_us: u64,
        budget: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        self.refill(budget)?;
        let Some(head) = self.in_flight.front() else {
            crate::sched::sleep_ns(1_000_000);
            return Ok(None);
        };
        let Some(result) = head.poll_wait(timeout_us) else {
            return Ok(None);
        };
        let head = self.in_flight.pop_front().expect("head exists");
        match result {
            Ok(len) => {
                let mut bytes = alloc::vec![0u8; len];
                head.buffer().read(&mut bytes);
                self.spare.push(head.buffer().with_len(self.buffer_len));
                Ok(Some(bytes))
            }
            Err(TransferError::Disconnected) => Err("device gone".into()),
            Err(error) => {
                self.recover(error)?;
                Ok(None)
            }
        }
    }

    /// Stops bulk IN for a reset: what is queued fails back (frames in it are lost, TCP
    /// resends); the next receive queues afresh.
    fn reset(&mut self) -> Result<(), String> {
        self.pipe
            .clear_halt()
            .map_err(|e| format!("bulk IN: {e}"))?;
        while let Some(handle) = self.in_flight.pop_front() {
            if handle.try_result().is_some() {
                self.spare.push(handle.buffer().with_len(self.buffer_len));
            }
        }
        Ok(())
    }

    /// A receive failed: the pipe halted; what was queued behind fails back with PipeHalted.
    /// Drain it, clear the halt, and carry on (frames in between are lost; TCP resends).
    fn recover(&mut self, error: TransferError) -> Result<(), String> {
        log::warn!(
            "usb net: receive on endpoint {:#04x} failed ({error}); clearing the halt",
            self.pipe.address()
        );
        while let Some(handle) = self.in_flight.pop_front() {
            if let Err(TransferError::Disconnected) = handle.wait(1_000_000) {
                return Err("device gone".into());
            }
        }
        self.pipe
            .clear_halt()
            .map_err(|e| format!("clear_halt: {e}"))
    }
}

/// What a class driver does with what arrives while its interface runs.
pub trait ClassDataPath {
    /// A completed bulk IN transfer (empty for a zero-length packet).
    fn received(&mut self, transfer: Vec<u8>);
    /// A completed interrupt IN transfer of the communication interface.
    fn notified(&mut self, notification: &[u8]) -> Result<(), String>;
    /// Called at least every 100 ms, for periodic work.
    fn tick(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The class's part of a reset (its own function reset, re-applying its settings), done
    /// while bulk traffic is stopped.
    fn reset(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// The data loop of a USB NIC: receives on `rx`, keeps the notification pipe (if any) armed,
/// hands everything to `class`, until the device is detached. Logs
/// `NAME: DRIVER: receiving (N transfers queued)` once transfers are in flight (the hotplug
/// test waits for it).
pub fn run_data_path<F: TxFraming>(
    ctx: &DeviceContext,
    driver: &str,
    nic: &Nic,
    tx: &BulkTx<F>,
    rx: &mut BulkRx,
    notify: Option<&Pipe>,
    class: &mut impl ClassDataPath,
) -> Result<(), String> {
    let mut reset = ResetSchedule::new();
    log::info!(
        "{}: {driver}: receiving ({} transfers queued)",
        ctx.name,
        rx.queued()
    );
    let mut notification: Option<TransferHandle> = None;
    loop {
        if notification.is_none() {
            if let Some(pipe) = notify {
                let buffer = pipe
                    .alloc_buffer(usize::from(pipe.max_packet().max(8)))
                    .map_err(|e| format!("{e}"))?;
                notification = Some(pipe.submit(buffer).map_err(|e| format!("{e}"))?);
            }
        }
        // Completions come in order: wait for the oldest, looking at the notification pipe
        // and the device's life every 100 ms.
        // Frames already queued to the stack plus those the transfers in flight may bring stay
        // within the stack's queue: no frame is dropped for want of room.
        let budget = nic.rx_room().saturating_sub(rx.queued()) + rx.queued();
        if let Some(transfer) = rx.receive_within(POLL_US, budget)? {
            class.received(transfer);
        }
        if let Some(result) = notification.as_ref().and_then(|h| h.try_result()) {
            let handle = notification.take().expect("checked above");
            match result {
                Ok(len) => {
                    let mut bytes = alloc::vec![0u8; len];
                    handle.buffer().read(&mut bytes);
                    class.notified(&bytes)?;
                }
                Err(TransferError::Disconnected) => return Err("device gone".into()),
                Err(error) => {
                    log::debug!("{}: {driver}: notification pipe: {error}", ctx.name);
                    if let Some(pipe) = notify {
                        pipe.clear_halt()
                            .map_err(|e| format!("notification clear_halt: {e}"))?;
                    }
                }
            }
        }
        class.tick()?;
        tx.poll();
        if tx.take_reset_request() {
            reset.request();
        }
        if reset.due(time::now_us()) {
            let started = time::now_us();
            match tx.reset(rx, || class.reset()) {
                Ok(requeued) => {
                    log::warn!(
                        "{}: reset done in {} us; {requeued} frames requeued",
                        nic.name,
                        time::now_us() - started
                    );
                    nic.counters
                        .tx_requeued
                        .fetch_add(requeued as u64, Ordering::Relaxed);
                    reset.finished(nic, started, Ok(()));
                }
                Err(_) if ctx.life.is_detached() => return Ok(()),
                Err(error) => reset.finished(nic, started, Err(&error)),
            }
        }
        if ctx.life.is_detached() {
            return Ok(());
        }
    }
}

/// A USB NIC driver's device thread: `attach_and_work` (which puts its interface in `nic`
/// once registered), then the interface is detached; a failure is logged and the thread waits
/// for the device to go away.
pub fn run_nic_driver(
    ctx: &DeviceContext,
    driver: &str,
    attach_and_work: impl FnOnce(&mut Option<Arc<Nic>>) -> Result<(), String>,
) {
    let mut nic = None;
    let result = attach_and_work(&mut nic);
    // The interface stays (addresses, sockets) for the device's return.
    if let Some(nic) = nic {
        nic.unlink();
    }
    if let Err(error) = result {
        if ctx.life.is_detached() {
            log::info!("{}: {driver}: stopped: device gone ({error})", ctx.name);
        } else {
            log::warn!("{}: {driver}: {error}", ctx.name);
            // Nothing more to do with this device until it goes away.
            ctx.life.wait_detached(None);
        }
    }
}
