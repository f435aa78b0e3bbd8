//! What USB Ethernet class drivers (CDC-ECM, RNDIS) share: the bulk data path and the device
//! thread's shape. Bulk IN keeps several transfers queued (QEMU's usb-net holds a single
//! received frame) and reuses completed transfers' DMA buffers; bulk OUT has at most
//! [`TX_IN_FLIGHT`] transfers in flight, reuses their buffers, and follows a transfer whose
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
use core::sync::atomic::{AtomicU64, Ordering};

use tether_usb::descriptor::Endpoint;
use tether_usb::host::TransferError;
use tether_usb::rndis::transfer_needs_zlp;
use tether_xhci::pipe::{EndpointConfig, Pipe, PipeKind, TransferBuffer, TransferHandle};

use super::driver::DeviceContext;
use crate::net::{Nic, Transmit};
use crate::sync::Mutex;

/// Bulk IN transfers kept queued.
pub const RX_QUEUED: usize = 4;
/// Transfers to the device queued and not yet completed, at most (the bounded TX queue).
pub const TX_IN_FLIGHT: usize = 32;
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

/// The transmit side: bulk OUT transfers in flight, reaped as they complete.
pub struct BulkTx<F> {
    pipe: Pipe,
    max_packet: usize,
    buffer_len: usize,
    framing: F,
    queue: Mutex<TxQueue>,
    /// Zero-length packets sent after transfers of a multiple of the packet size.
    zlps: AtomicU64,
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
    pub fn new(pipe: Pipe, buffer_len: usize, framing: F) -> Arc<Self> {
        Arc::new(BulkTx {
            max_packet: usize::from(pipe.max_packet()),
            pipe,
            buffer_len,
            framing,
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

    /// Drops completed transfers from the front; a failed one (counted by the pipe) that
    /// halted the pipe gets it cleared so sending resumes.
    fn reap(&self, queue: &mut TxQueue) {
        while let Some(result) = queue.in_flight.front().and_then(|h| h.try_result()) {
            let done = queue.in_flight.pop_front().expect("front exists");
            if queue.spare.len() < TX_IN_FLIGHT {
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
        if queue.in_flight.len() >= TX_IN_FLIGHT {
            // Full: wait (bounded) for the oldest transfer without holding the queue's lock.
            let oldest = queue.in_flight.pop_front().expect("the queue is full");
            drop(queue);
            oldest.poll_wait(100_000);
            queue = self.queue.lock();
            queue.in_flight.push_front(oldest);
            self.reap(&mut queue);
            if queue.in_flight.len() >= TX_IN_FLIGHT {
                return Err("transmit queue full");
            }
        }
        let mut scratch = core::mem::take(&mut queue.scratch);
        scratch.clear();
        let result = self.send(&mut queue, frame, &mut scratch);
        queue.scratch = scratch;
        result
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
        rx.refill()?;
        Ok(rx)
    }

    pub fn queued(&self) -> usize {
        self.in_flight.len()
    }

    /// Tops the queue up to [`RX_QUEUED`], reusing completed transfers' buffers first.
    fn refill(&mut self) -> Result<(), String> {
        while self.in_flight.len() < RX_QUEUED {
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
        self.refill()?;
        let Some(head) = self.in_flight.front() else {
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
}

/// The data loop of a USB NIC: receives on `rx`, keeps the notification pipe (if any) armed,
/// hands everything to `class`, until the device is detached. Logs
/// `NAME: DRIVER: receiving (N transfers queued)` once transfers are in flight (the hotplug
/// test waits for it).
pub fn run_data_path(
    ctx: &DeviceContext,
    driver: &str,
    rx: &mut BulkRx,
    notify: Option<&Pipe>,
    class: &mut impl ClassDataPath,
) -> Result<(), String> {
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
        if let Some(transfer) = rx.receive(POLL_US)? {
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
    if let Some(nic) = nic {
        nic.detach();
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
