//! Pipes: one queue per endpoint with the framework's stall semantics.
//!
//! A [`Pipe`] is a cheap handle (an `Arc`) to an endpoint's shared state. [`Pipe::submit`]
//! enqueues a TD on the endpoint's transfer ring and rings its doorbell; the controller's
//! `process_events` matches Transfer Events to the queued TDs and completes them, each exactly
//! once, through a per-transfer [`Completion`] the OS supplies.
//!
//! Stall semantics: when a TD fails with an error (Stall, Babble, Transaction, Split, TRB
//! error...) or times out, the pipe **halts**: that transfer completes with its error, every
//! other queued transfer completes with [`TransferError::PipeHalted`] in order, and new
//! submissions are refused with `PipeHalted` until [`Pipe::clear_halt`] (Reset Endpoint if the
//! endpoint context is Halted, else Stop Endpoint; Set TR Dequeue Pointer to the next free TRB;
//! CLEAR_FEATURE(ENDPOINT_HALT) on EP0). The driver then resubmits. Buffers of transfers
//! completed while their TRBs were still on the ring stay referenced ("limbo") until the ring
//! has been made consistent, so the controller never writes into freed memory.
//!
//! Locking: every endpoint has one short, non-blocking lock (the kernel's raw mutex `R`) over
//! its ring and queue; it is never held while waiting, and never while taking the event ring
//! or command ring locks.

use crate::completion::{check, Completed, UsbError};
use crate::controller::{CommandDone, Completion};
use crate::dma::{DmaMemory, DmaRegion};
use crate::ring::TransferRing;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use lock_api::{Mutex, RawMutex};
use tether_usb::host::{DeviceHandle, TransferError};
use xhci::ring::trb::event::CompletionCode;
use xhci::ring::trb::{command, transfer};

/// Largest data length of one Normal TRB (TRB Transfer Length is 17 bits, max 64 KiB).
pub const MAX_TRB_BYTES: usize = 64 * 1024;
/// A TRB's data buffer must not cross a 64 KiB boundary (xHCI 6.4.1).
pub const TRB_BUFFER_BOUNDARY: u64 = 64 * 1024;

/// Endpoint Context states (xHCI 6.2.3, Table 6-8).
pub(crate) const EP_STATE_RUNNING: u32 = 1;
pub(crate) const EP_STATE_HALTED: u32 = 2;
pub(crate) const EP_STATE_STOPPED: u32 = 3;
pub(crate) const EP_STATE_ERROR: u32 = 4;

/// Tries at bringing an endpoint to a stop and setting its dequeue pointer (see
/// `resync_ring`).
const RESYNC_ATTEMPTS: u32 = 4;

/// Kind of a configured (non-control) endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeKind {
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
    /// The default control endpoint (EP0; internal, never returned as a [`Pipe`]).
    Control,
}

/// One endpoint to configure (from its endpoint descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    /// bEndpointAddress (bit 7 = IN).
    pub address: u8,
    /// Bulk or Interrupt.
    pub kind: PipeKind,
    /// wMaxPacketSize (bits 0-10 used).
    pub max_packet: u16,
    /// bInterval as the descriptor has it (interrupt endpoints; ignored for bulk).
    pub interval: u8,
    /// SuperSpeed companion bMaxBurst (ignored, i.e. 0, below SuperSpeed).
    pub max_burst: u8,
}

/// Counters of one pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeCounters {
    /// Transfers accepted by `submit`.
    pub submitted: u64,
    /// Transfers completed (successfully or not); each submitted transfer completes once.
    pub completed: u64,
    /// Completed with an error (including `PipeHalted`, `Timeout`, `Disconnected`).
    pub errors: u64,
    /// Stalls (real or injected).
    pub stalls: u64,
    /// Bytes moved by successful transfers.
    pub bytes: u64,
    /// `clear_halt`s whose CLEAR_FEATURE(ENDPOINT_HALT) the device answered with a STALL.
    pub clear_feature_rejected: u64,
}

/// One line of [`crate::controller::Controller::pipes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeInfo {
    /// Slot (device handle).
    pub slot: DeviceHandle,
    /// Endpoint address (0 for EP0).
    pub address: u8,
    /// Kind.
    pub kind: PipeKind,
    /// The pipe is halted.
    pub halted: bool,
    /// Its counters.
    pub counters: PipeCounters,
}

/// A transfer's data: a DMA region shared with the caller (clone it to read the data after
/// completion) and the length to transfer from its start.
#[derive(Clone, Debug)]
pub struct TransferBuffer {
    region: Arc<DmaRegion>,
    len: usize,
}

impl TransferBuffer {
    /// `len` bytes at the start of `region`.
    ///
    /// # Panics
    /// If `len` exceeds the region.
    pub fn new(region: DmaRegion, len: usize) -> Self {
        Self::shared(Arc::new(region), len)
    }

    /// `len` bytes at the start of a shared region.
    ///
    /// # Panics
    /// If `len` exceeds the region.
    pub fn shared(region: Arc<DmaRegion>, len: usize) -> Self {
        assert!(len <= region.len_bytes(), "transfer longer than its buffer");
        Self { region, len }
    }

    /// Allocates a zeroed buffer of `len` bytes (64-byte aligned; any length, TRBs are split
    /// at 64 KiB boundaries).
    pub fn alloc(dma: &dyn DmaMemory, len: usize) -> Result<Self, TransferError> {
        let r = dma
            .alloc(len.max(4).next_multiple_of(4), 64, 0)
            .map_err(|_| TransferError::NoResources("DMA memory"))?;
        r.fill_zero();
        Ok(Self::new(r, len))
    }

    /// The same memory with another transfer length.
    pub fn with_len(&self, len: usize) -> Self {
        Self::shared(self.region.clone(), len)
    }

    /// Transfer length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Zero-length transfer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The DMA region.
    pub fn region(&self) -> &Arc<DmaRegion> {
        &self.region
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> u64 {
        self.region.phys()
    }

    /// Copies `bytes` to the start of the buffer.
    pub fn write(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.region.len_bytes());
        crate::controller::copy_to_dma(&self.region, bytes);
    }

    /// Copies the start of the buffer into `out`.
    pub fn read(&self, out: &mut [u8]) {
        assert!(out.len() <= self.region.len_bytes());
        crate::controller::copy_from_dma(&self.region, out);
    }
}

/// What the endpoints need from the controller (object-safe, so that pipes and transfer
/// handles are not generic over the mapper).
pub(crate) trait HostOps: Send + Sync {
    fn now_us(&self) -> u64;
    fn delay_us(&self, us: u64);
    fn new_completion(&self) -> Arc<dyn Completion>;
    fn dma_memory(&self) -> &dyn DmaMemory;
    fn doorbell(&self, slot: u8, target: u8);
    fn run_command(&self, trb: command::Allowed) -> Result<CommandDone, TransferError>;
    /// Enqueues a command nobody waits for (from event processing, which must not block).
    fn command_nowait(&self, trb: command::Allowed);
    /// Waits until `done()` or `deadline`, on `completion` or by draining events itself.
    fn wait_until(&self, done: &dyn Fn() -> bool, completion: &dyn Completion, deadline: u64);
    fn drain_events(&self) -> usize;
    fn ep_state(&self, slot: u8, dci: u8) -> u32;
    /// CLEAR_FEATURE(ENDPOINT_HALT) for `address` on the device's EP0.
    fn clear_feature_halt(&self, slot: u8, address: u8) -> Result<(), TransferError>;
    fn count_recovery(&self);
}

/// One transfer's completion, set exactly once.
pub(crate) struct Xfer {
    result: spin::Once<Result<usize, TransferError>>,
    completion: Arc<dyn Completion>,
}

impl Xfer {
    pub(crate) fn new(completion: Arc<dyn Completion>) -> Arc<Self> {
        Arc::new(Self {
            result: spin::Once::new(),
            completion,
        })
    }

    /// Completes the transfer unless it already is; wakes its waiter. Returns whether this call
    /// completed it.
    fn complete(&self, r: Result<usize, TransferError>) -> bool {
        let mut first = false;
        self.result.call_once(|| {
            first = true;
            r
        });
        if first {
            self.completion.signal();
        }
        first
    }

    pub(crate) fn is_done(&self) -> bool {
        self.result.is_completed()
    }

    pub(crate) fn result(&self) -> Option<Result<usize, TransferError>> {
        self.result.get().cloned()
    }

    pub(crate) fn completion(&self) -> &dyn Completion {
        &*self.completion
    }
}

/// A TD on the ring.
struct Queued {
    xfer: Arc<Xfer>,
    /// (TRB address, data length) of every TRB of the TD, in order.
    trbs: Vec<(u64, u32)>,
    len: usize,
    /// Caller's buffer (None for EP0, whose bounce buffer belongs to the device).
    buffer: Option<TransferBuffer>,
    /// Control transfer: the data stage TRB (events on it only record the length).
    data_stage: Option<u64>,
    /// Control transfer: bytes moved by the data stage when it ended short.
    short_actual: Option<usize>,
}

struct EpState {
    ring: TransferRing,
    queue: VecDeque<Queued>,
    halted: bool,
    gone: bool,
    /// The controller's dequeue pointer was set to the ring's enqueue pointer and nothing has
    /// been enqueued since.
    hw_synced: bool,
    /// Buffers of TDs completed early (halt, timeout) while their TRBs may still be on the ring.
    limbo: Vec<TransferBuffer>,
    counters: PipeCounters,
    /// Events that matched no queued TD.
    stray: u64,
    /// Times the pipe halted (to tell a halt that raced with a cancel).
    halts: u64,
    /// Completions swallowed by an injected wedge.
    swallowed: u64,
}

impl EpState {
    fn finish(&mut self, q: Queued, r: Result<usize, TransferError>, to_limbo: bool) {
        let c = &mut self.counters;
        match &r {
            Ok(n) => c.bytes += *n as u64,
            Err(e) => {
                c.errors += 1;
                if *e == TransferError::Stall {
                    c.stalls += 1;
                }
            }
        }
        if q.xfer.complete(r) {
            c.completed += 1;
        }
        if to_limbo {
            if let Some(b) = q.buffer {
                self.limbo.push(b);
            }
        }
    }

    /// Halts the pipe: `failing` (an index into the queue) completes with `err`, everything
    /// else queued with `PipeHalted`, in order. TRBs stay accounted as in flight until the ring
    /// is made consistent.
    fn halt(&mut self, failing: Option<usize>, err: TransferError) {
        self.halted = true;
        self.halts += 1;
        if let Some(i) = failing {
            if let Some(q) = self.queue.remove(i) {
                self.finish(q, Err(err), true);
            }
        }
        while let Some(q) = self.queue.pop_front() {
            self.finish(q, Err(TransferError::PipeHalted), true);
        }
    }

    fn fail_all(&mut self, err: TransferError) {
        while let Some(q) = self.queue.pop_front() {
            self.finish(q, Err(err.clone()), true);
        }
    }
}

/// An endpoint's shared state (the object behind [`Pipe`]).
pub(crate) struct Endpoint<R: RawMutex> {
    host: Weak<dyn HostOps>,
    slot: u8,
    dci: u8,
    address: u8,
    kind: PipeKind,
    max_packet: u16,
    state: Mutex<R, EpState>,
    inject_stall: AtomicBool,
    /// Fault injection: transfers are queued but the doorbell is not rung, and completions the
    /// controller reports anyway (an IN endpoint it already polls) are swallowed: to the driver
    /// the device stopped completing. Cleared by `clear_halt`.
    wedged: AtomicBool,
    /// One recovery (cancel, clear_halt) at a time; others sleep-wait (no lock held).
    recovering: AtomicBool,
}

fn dci_of(address: u8) -> u8 {
    crate::context::dci(address) as u8
}

impl<R: RawMutex + Send + Sync + 'static> Endpoint<R> {
    pub(crate) fn new(
        host: Weak<dyn HostOps>,
        slot: u8,
        address: u8,
        kind: PipeKind,
        max_packet: u16,
        ring: TransferRing,
    ) -> Arc<Self> {
        Arc::new(Self {
            host,
            slot,
            dci: dci_of(address),
            address,
            kind,
            max_packet,
            state: Mutex::new(EpState {
                ring,
                queue: VecDeque::new(),
                halted: false,
                gone: false,
                hw_synced: true,
                limbo: Vec::new(),
                counters: PipeCounters::default(),
                stray: 0,
                halts: 0,
                swallowed: 0,
            }),
            inject_stall: AtomicBool::new(false),
            wedged: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
        })
    }

    fn host(&self) -> Result<Arc<dyn HostOps>, TransferError> {
        self.host.upgrade().ok_or(TransferError::Disconnected)
    }

    pub(crate) fn dci(&self) -> u8 {
        self.dci
    }

    /// TR Dequeue Pointer | DCS for the endpoint context.
    pub(crate) fn ring_pointer(&self) -> u64 {
        self.state.lock().ring.dequeue_pointer_for_reset()
    }

    pub(crate) fn info(&self) -> PipeInfo {
        let st = self.state.lock();
        PipeInfo {
            slot: self.slot,
            address: self.address,
            kind: self.kind,
            halted: st.halted,
            counters: st.counters,
        }
    }

    fn dir_in(&self) -> bool {
        self.address & 0x80 != 0
    }

    /// Normal TRBs for `len` bytes at `phys`: split at 64 KiB boundaries, TD Size per TRB,
    /// Chain on all but the last, ISP on IN TRBs, IOC on the last.
    pub(crate) fn normal_trbs(&self, phys: u64, len: usize) -> Vec<transfer::Allowed> {
        let mut pieces = Vec::new();
        let mut at = phys;
        let mut left = len;
        loop {
            let to_boundary = (TRB_BUFFER_BOUNDARY - at % TRB_BUFFER_BOUNDARY) as usize;
            let n = left.min(to_boundary).min(MAX_TRB_BYTES);
            pieces.push((at, n));
            at += n as u64;
            left -= n;
            if left == 0 {
                break;
            }
        }
        let mps = usize::from(self.max_packet.max(1));
        let count = pieces.len();
        let mut sent = 0;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, (p, n))| {
                sent += n;
                let last = i + 1 == count;
                // xHCI 4.11.2.4: packets still to come after this TRB, 0 on the last.
                let td_size = if last {
                    0
                } else {
                    (len - sent).div_ceil(mps).min(31) as u8
                };
                let mut t = transfer::Normal::new();
                t.set_data_buffer_pointer(p)
                    .set_trb_transfer_length(n as u32)
                    .set_td_size(td_size);
                if self.dir_in() {
                    t.set_interrupt_on_short_packet();
                }
                if last {
                    t.set_interrupt_on_completion();
                } else {
                    t.set_chain_bit();
                }
                t.into()
            })
            .collect()
    }

    /// Puts a TD on the ring (all or nothing) and rings the doorbell.
    pub(crate) fn enqueue(
        &self,
        trbs: &[transfer::Allowed],
        lens: &[u32],
        buffer: Option<TransferBuffer>,
        data_stage_index: Option<usize>,
    ) -> Result<Arc<Xfer>, TransferError> {
        let host = self.host()?;
        let xfer = Xfer::new(host.new_completion());
        let len = lens.iter().map(|l| *l as usize).sum();
        {
            let mut st = self.state.lock();
            if st.gone {
                return Err(TransferError::Disconnected);
            }
            if st.halted {
                return Err(TransferError::PipeHalted);
            }
            if st.ring.free_slots() < trbs.len() {
                return Err(TransferError::NoResources("transfer ring full"));
            }
            let mut placed = Vec::with_capacity(trbs.len());
            for (t, l) in trbs.iter().zip(lens) {
                let phys = st
                    .ring
                    .enqueue(*t)
                    .map_err(|_| TransferError::NoResources("transfer ring full"))?;
                placed.push((phys, *l));
            }
            let data_stage = data_stage_index.map(|i| placed[i].0);
            st.queue.push_back(Queued {
                xfer: xfer.clone(),
                trbs: placed,
                len,
                buffer,
                data_stage,
                short_actual: None,
            });
            st.counters.submitted += 1;
            st.hw_synced = false;
        }
        if !self.wedged.load(Ordering::Acquire) {
            host.doorbell(self.slot, self.dci);
        }
        Ok(xfer)
    }

    /// A Transfer Event for this endpoint (called by the controller's event processing).
    pub(crate) fn on_event(&self, trb_ptr: u64, code: Result<CompletionCode, u8>, residual: u32) {
        let mut stop_needed = false;
        {
            let mut st = self.state.lock();
            if self.wedged.load(Ordering::Acquire) {
                // Swallowed: the TD stays queued until `clear_halt` fails it back.
                st.swallowed += 1;
                return;
            }
            let found = st.queue.iter().enumerate().find_map(|(i, q)| {
                q.trbs
                    .iter()
                    .position(|(p, _)| *p == trb_ptr)
                    .map(|k| (i, k))
            });
            let Some((i, k)) = found else {
                // Stopped events of a cancelled TD, a second event after a short packet on
                // controllers that send one, or events for TDs already failed back.
                st.stray += 1;
                return;
            };
            let r = check(code);
            match r {
                Err(UsbError::Stopped)
                | Err(UsbError::StoppedLengthInvalid)
                | Err(UsbError::StoppedShortPacket) => {
                    // Stop Endpoint ran: whoever stopped the endpoint decides the TD's fate.
                }
                Ok(kind) => {
                    let q = &mut st.queue[i];
                    let before: usize = q.trbs[..k].iter().map(|(_, l)| *l as usize).sum();
                    let this = q.trbs[k].1;
                    let moved = before + (this - residual.min(this)) as usize;
                    if q.data_stage == Some(trb_ptr) {
                        // Control data stage: only short packets report here; the status
                        // stage's event completes the transfer.
                        if kind == Completed::Short {
                            q.short_actual = Some(moved);
                        }
                        return;
                    }
                    let actual = if q.data_stage.is_some() {
                        q.short_actual.unwrap_or(q.len)
                    } else {
                        moved
                    };
                    if self.inject_stall.swap(false, Ordering::AcqRel) {
                        // Fault injection: the controller's success counts as a STALL. The
                        // real endpoint keeps running: stop it (asynchronously, event
                        // processing must not block) so that it stops consuming the TDs that
                        // are now failed back.
                        st.halt(Some(i), TransferError::Stall);
                        stop_needed = true;
                    } else {
                        let q = st.queue.remove(i).expect("found above");
                        let last = q.trbs.last().expect("TD has TRBs").0;
                        let _ = st.ring.complete_up_to(last);
                        st.finish(q, Ok(actual), false);
                    }
                }
                Err(e) => st.halt(Some(i), e.into()),
            }
        }
        if stop_needed {
            if let Ok(host) = self.host() {
                let mut c = command::StopEndpoint::new();
                c.set_slot_id(self.slot).set_endpoint_id(self.dci);
                host.command_nowait(c.into());
            }
        }
    }

    fn begin_recovery(&self, host: &dyn HostOps) {
        while self
            .recovering
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            host.delay_us(100);
        }
    }

    fn end_recovery(&self) {
        self.recovering.store(false, Ordering::Release);
    }

    /// Stops the endpoint if it runs and moves the controller's dequeue pointer to the ring's
    /// enqueue pointer (Reset Endpoint first if it is Halted), then forgets whatever was on the
    /// ring. Queued transfers must already have been completed (or are completed here with
    /// `leftover`).
    fn resync_ring(
        &self,
        host: &dyn HostOps,
        leftover: TransferError,
    ) -> Result<(), TransferError> {
        host.count_recovery();
        // QEMU restarts a Stopped endpoint when its device has data (the device's wake-up
        // kicks it like a doorbell), so between our Stop Endpoint and Set TR Dequeue Pointer
        // the endpoint can be Running again; the command then fails with a Context State
        // Error (seen in `net::fault_token` under traffic). Start over from the stop then, a
        // bounded number of times.
        let mut attempt = 1;
        loop {
            match self.resync_ring_once(host, &leftover) {
                Err(TransferError::Controller(_))
                    if attempt < RESYNC_ATTEMPTS
                        && host.ep_state(self.slot, self.dci) == EP_STATE_RUNNING =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn resync_ring_once(
        &self,
        host: &dyn HostOps,
        leftover: &TransferError,
    ) -> Result<(), TransferError> {
        match host.ep_state(self.slot, self.dci) {
            EP_STATE_HALTED => {
                let mut c = command::ResetEndpoint::new();
                c.set_slot_id(self.slot).set_endpoint_id(self.dci);
                host.run_command(c.into())?;
            }
            EP_STATE_RUNNING => {
                let mut c = command::StopEndpoint::new();
                c.set_slot_id(self.slot).set_endpoint_id(self.dci);
                match host.run_command(c.into()) {
                    // Context State Error: it stopped or halted meanwhile (e.g. an earlier
                    // asynchronous Stop Endpoint); the state is read again below.
                    Ok(_) | Err(TransferError::Controller(_)) => {}
                    Err(e) => return Err(e),
                }
                if host.ep_state(self.slot, self.dci) == EP_STATE_HALTED {
                    let mut c = command::ResetEndpoint::new();
                    c.set_slot_id(self.slot).set_endpoint_id(self.dci);
                    host.run_command(c.into())?;
                }
            }
            _ => {}
        }
        // Events the controller wrote before it stopped.
        host.drain_events();
        let deq = {
            let mut st = self.state.lock();
            st.fail_all(leftover.clone());
            if st.hw_synced {
                None
            } else {
                Some(st.ring.dequeue_pointer_for_reset())
            }
        };
        if let Some(deq) = deq {
            let state = host.ep_state(self.slot, self.dci);
            if state == EP_STATE_RUNNING {
                // Restarted since the stop: the dequeue pointer cannot be set now.
                return Err(TransferError::Controller(
                    "the endpoint was running again before its dequeue pointer was set".into(),
                ));
            }
            if state == EP_STATE_STOPPED || state == EP_STATE_ERROR {
                let mut c = command::SetTrDequeuePointer::new();
                c.set_slot_id(self.slot)
                    .set_endpoint_id(self.dci)
                    .set_new_tr_dequeue_pointer(deq & !0xf);
                if deq & 1 != 0 {
                    c.set_dequeue_cycle_state();
                } else {
                    c.clear_dequeue_cycle_state();
                }
                host.run_command(c.into())?;
            }
        }
        let mut st = self.state.lock();
        st.ring.discard_in_flight();
        st.limbo.clear();
        st.hw_synced = true;
        Ok(())
    }

    /// Cancels `xfer` after its waiter timed out: halts the pipe (the transfer completes with
    /// `Timeout`, the rest with `PipeHalted`), stops the endpoint and makes the ring consistent.
    /// Returns the transfer's final result (which may be a real completion that raced).
    pub(crate) fn cancel(&self, xfer: &Arc<Xfer>) -> Result<usize, TransferError> {
        let host = match self.host() {
            Ok(h) => h,
            Err(e) => {
                xfer.complete(Err(e));
                return xfer.result().expect("completed");
            }
        };
        self.begin_recovery(&*host);
        let r = self.cancel_locked(&*host, xfer);
        self.end_recovery();
        r
    }

    fn cancel_locked(&self, host: &dyn HostOps, xfer: &Arc<Xfer>) -> Result<usize, TransferError> {
        let (was_halted, halts_before) = {
            let mut st = self.state.lock();
            if let Some(r) = xfer.result() {
                return r;
            }
            let before = (st.halted, st.halts);
            // Refuse new submissions while the endpoint is stopped and resynchronised.
            st.halted = true;
            before
        };
        if host.ep_state(self.slot, self.dci) == EP_STATE_RUNNING {
            let mut c = command::StopEndpoint::new();
            c.set_slot_id(self.slot).set_endpoint_id(self.dci);
            match host.run_command(c.into()) {
                // Context State Error: it halted or stopped by itself meanwhile.
                Ok(_) | Err(TransferError::Controller(_)) => {}
                Err(_) => {
                    // The controller does not answer: fail the transfer anyway (buffers stay
                    // in limbo, the pipe stays halted).
                    let mut st = self.state.lock();
                    Self::fail_xfer(&mut st, xfer, TransferError::Timeout);
                    return xfer.result().expect("completed");
                }
            }
        }
        // Events the controller wrote before it stopped.
        host.drain_events();
        {
            let mut st = self.state.lock();
            if let Some(r) = xfer.result() {
                // It completed after all. Unless an error halted the pipe meanwhile, leave the
                // queue alone and restart the endpoint (a doorbell restarts a Stopped one).
                if st.halts == halts_before {
                    st.halted = was_halted;
                    drop(st);
                    host.doorbell(self.slot, self.dci);
                    return r;
                }
                drop(st);
                let _ = self.resync_ring(host, TransferError::PipeHalted);
                return r;
            }
            Self::fail_xfer(&mut st, xfer, TransferError::Timeout);
        }
        let _ = self.resync_ring(host, TransferError::PipeHalted);
        xfer.result().expect("completed")
    }

    /// Completes `xfer` with `err` and the rest of the queue with `PipeHalted`.
    fn fail_xfer(st: &mut EpState, xfer: &Arc<Xfer>, err: TransferError) {
        let i = st.queue.iter().position(|q| Arc::ptr_eq(&q.xfer, xfer));
        if i.is_none() {
            xfer.complete(Err(err.clone()));
        }
        st.halt(i, err);
    }

    /// Clears a halted pipe (see the module documentation). `clear_feature`: send
    /// CLEAR_FEATURE(ENDPOINT_HALT) (not for EP0, whose stalls are protocol stalls).
    pub(crate) fn clear_halt(&self, clear_feature: bool) -> Result<(), TransferError> {
        let host = self.host()?;
        self.begin_recovery(&*host);
        let r = self.clear_halt_locked(&*host, clear_feature);
        self.end_recovery();
        r
    }

    fn clear_halt_locked(
        &self,
        host: &dyn HostOps,
        clear_feature: bool,
    ) -> Result<(), TransferError> {
        {
            let st = self.state.lock();
            if st.gone {
                return Err(TransferError::Disconnected);
            }
        }
        // Make sure nothing is left queued (a pipe may be cleared without having halted).
        self.state.lock().halted = true;
        // A wedge ends here: what it held back is failed back below and never reaches the
        // controller (the dequeue pointer skips it).
        self.wedged.store(false, Ordering::Release);
        self.resync_ring(host, TransferError::PipeHalted)?;
        if clear_feature {
            match host.clear_feature_halt(self.slot, self.address) {
                Ok(()) => {}
                // Some devices (QEMU's usb-net among them) answer CLEAR_FEATURE(ENDPOINT_HALT)
                // with a STALL. That is a protocol stall on EP0, which the control path has
                // already recovered; the device's endpoint is evidently not halted, so the
                // host-side clear stands. Counted, not fatal: the driver can resume.
                Err(TransferError::Stall) => {
                    self.state.lock().counters.clear_feature_rejected += 1;
                }
                Err(other) => return Err(other),
            }
        }
        let mut st = self.state.lock();
        if st.gone {
            return Err(TransferError::Disconnected);
        }
        st.halted = false;
        Ok(())
    }

    /// The device went away: everything queued completes with `Disconnected`, new submissions
    /// are refused. `hw_stopped`: the controller no longer uses the ring (Disable Slot done),
    /// so buffers need not be kept.
    pub(crate) fn disconnect(&self, hw_stopped: bool) {
        let mut st = self.state.lock();
        st.gone = true;
        st.fail_all(TransferError::Disconnected);
        if hw_stopped {
            st.limbo.clear();
        }
    }

    pub(crate) fn is_halted(&self) -> bool {
        self.state.lock().halted
    }
}

/// What a [`Pipe`] / [`TransferHandle`] needs, without the raw-mutex type parameter.
pub(crate) trait PipeOps: Send + Sync {
    fn host(&self) -> Result<Arc<dyn HostOps>, TransferError>;
    fn slot(&self) -> u8;
    fn address(&self) -> u8;
    fn kind(&self) -> PipeKind;
    fn max_packet(&self) -> u16;
    fn submit(&self, buffer: TransferBuffer) -> Result<Arc<Xfer>, TransferError>;
    fn cancel(&self, xfer: &Arc<Xfer>) -> Result<usize, TransferError>;
    fn clear_halt(&self) -> Result<(), TransferError>;
    fn inject(&self);
    fn wedge(&self);
    fn info(&self) -> PipeInfo;
    fn stray_events(&self) -> u64;
    fn in_flight_trbs(&self) -> usize;
}

impl<R: RawMutex + Send + Sync + 'static> PipeOps for Endpoint<R> {
    fn host(&self) -> Result<Arc<dyn HostOps>, TransferError> {
        Endpoint::host(self)
    }
    fn slot(&self) -> u8 {
        self.slot
    }
    fn address(&self) -> u8 {
        self.address
    }
    fn kind(&self) -> PipeKind {
        self.kind
    }
    fn max_packet(&self) -> u16 {
        self.max_packet
    }
    fn submit(&self, buffer: TransferBuffer) -> Result<Arc<Xfer>, TransferError> {
        let trbs = self.normal_trbs(buffer.phys(), buffer.len());
        let lens: Vec<u32> = trbs
            .iter()
            .map(|t| match t {
                transfer::Allowed::Normal(n) => n.trb_transfer_length(),
                _ => 0,
            })
            .collect();
        self.enqueue(&trbs, &lens, Some(buffer), None)
    }
    fn cancel(&self, xfer: &Arc<Xfer>) -> Result<usize, TransferError> {
        Endpoint::cancel(self, xfer)
    }
    fn clear_halt(&self) -> Result<(), TransferError> {
        Endpoint::clear_halt(self, true)
    }
    fn inject(&self) {
        self.inject_stall.store(true, Ordering::Release);
    }
    fn wedge(&self) {
        self.wedged.store(true, Ordering::Release);
    }
    fn info(&self) -> PipeInfo {
        Endpoint::info(self)
    }
    fn stray_events(&self) -> u64 {
        self.state.lock().stray
    }
    fn in_flight_trbs(&self) -> usize {
        self.state.lock().ring.in_flight()
    }
}

/// A bulk or interrupt endpoint of a configured device. Clones share the endpoint.
#[derive(Clone)]
pub struct Pipe {
    ep: Arc<dyn PipeOps>,
}

impl core::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pipe")
            .field("slot", &self.ep.slot())
            .field("address", &format_args!("{:#04x}", self.ep.address()))
            .field("kind", &self.ep.kind())
            .finish()
    }
}

impl Pipe {
    pub(crate) fn new(ep: Arc<dyn PipeOps>) -> Self {
        Self { ep }
    }

    /// The device.
    pub fn device(&self) -> DeviceHandle {
        self.ep.slot()
    }

    /// bEndpointAddress.
    pub fn address(&self) -> u8 {
        self.ep.address()
    }

    /// Bulk or Interrupt.
    pub fn kind(&self) -> PipeKind {
        self.ep.kind()
    }

    /// wMaxPacketSize.
    pub fn max_packet(&self) -> u16 {
        self.ep.max_packet()
    }

    /// An IN endpoint.
    pub fn is_in(&self) -> bool {
        self.ep.address() & 0x80 != 0
    }

    /// Queues a transfer of `buffer` (direction from the endpoint) and returns at once.
    /// Refused with `PipeHalted` while the pipe is halted, `Disconnected` once the device is
    /// gone, `NoResources` when the ring is full.
    pub fn submit(&self, buffer: TransferBuffer) -> Result<TransferHandle, TransferError> {
        let xfer = self.ep.submit(buffer.clone())?;
        Ok(TransferHandle {
            ep: self.ep.clone(),
            xfer,
            buffer,
        })
    }

    /// Clears a halt: Reset Endpoint (endpoint context Halted) or Stop Endpoint, Set TR Dequeue
    /// Pointer to the next free TRB, CLEAR_FEATURE(ENDPOINT_HALT). Anything still queued
    /// completes with `PipeHalted` first. The driver then resubmits.
    pub fn clear_halt(&self) -> Result<(), TransferError> {
        self.ep.clear_halt()
    }

    /// The pipe refuses submissions until [`Self::clear_halt`].
    pub fn is_halted(&self) -> bool {
        self.ep.info().halted
    }

    /// Test hook (always compiled, one atomic flag): the pipe's next successful completion is
    /// reported as a STALL (the pipe halts, the rest of the queue fails back). The endpoint
    /// itself is not halted, so `clear_halt` takes the Stop Endpoint path.
    pub fn inject_stall_on_next_completion(&self) {
        self.ep.inject();
    }

    /// Fault injection (always compiled, one atomic flag): from now on transfers are queued
    /// but the controller is not told (no doorbell), so they never complete, as with a device
    /// that stopped answering. [`Self::clear_halt`] ends the wedge and fails them back with
    /// `PipeHalted` (they never reached the device).
    pub fn inject_wedge(&self) {
        self.ep.wedge();
    }

    /// Counters.
    pub fn counters(&self) -> PipeCounters {
        self.ep.info().counters
    }

    /// Slot, address, state and counters.
    pub fn info(&self) -> PipeInfo {
        self.ep.info()
    }

    /// Transfer events that matched no queued transfer (diagnostics).
    pub fn stray_events(&self) -> u64 {
        self.ep.stray_events()
    }

    /// TRBs on the ring not yet reported complete (diagnostics).
    pub fn in_flight_trbs(&self) -> usize {
        self.ep.in_flight_trbs()
    }

    /// A DMA buffer from the controller's allocator.
    pub fn alloc_buffer(&self, len: usize) -> Result<TransferBuffer, TransferError> {
        let host = self.ep.host()?;
        TransferBuffer::alloc(host.dma_memory(), len)
    }

    fn blocking(
        &self,
        want_in: bool,
        len: usize,
        timeout_us: u64,
    ) -> Result<(TransferBuffer, usize), TransferError> {
        if self.is_in() != want_in {
            return Err(TransferError::Controller(format!(
                "endpoint {:#04x} has the other direction",
                self.address()
            )));
        }
        let buf = self.alloc_buffer(len)?;
        let n = self.submit(buf.clone())?.wait(timeout_us)?;
        Ok((buf, n))
    }

    /// Blocking bulk IN into `buf`; returns the bytes received.
    pub fn bulk_in(&self, buf: &mut [u8], timeout_us: u64) -> Result<usize, TransferError> {
        let (b, n) = self.blocking(true, buf.len(), timeout_us)?;
        b.read(&mut buf[..n]);
        Ok(n)
    }

    /// Blocking interrupt IN into `buf`; returns the bytes received.
    pub fn interrupt_in(&self, buf: &mut [u8], timeout_us: u64) -> Result<usize, TransferError> {
        self.bulk_in(buf, timeout_us)
    }

    /// Blocking bulk OUT of `data`; returns the bytes sent.
    pub fn bulk_out(&self, data: &[u8], timeout_us: u64) -> Result<usize, TransferError> {
        if self.is_in() {
            return Err(TransferError::Controller(format!(
                "endpoint {:#04x} is IN",
                self.address()
            )));
        }
        let b = self.alloc_buffer(data.len())?;
        b.write(data);
        self.submit(b)?.wait(timeout_us)
    }
}

/// A submitted transfer. Dropping it does not cancel the transfer.
pub struct TransferHandle {
    ep: Arc<dyn PipeOps>,
    xfer: Arc<Xfer>,
    buffer: TransferBuffer,
}

impl core::fmt::Debug for TransferHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransferHandle")
            .field("address", &format_args!("{:#04x}", self.ep.address()))
            .field("len", &self.buffer.len())
            .field("result", &self.xfer.result())
            .finish()
    }
}

impl TransferHandle {
    /// The result if the transfer has completed.
    pub fn try_result(&self) -> Option<Result<usize, TransferError>> {
        self.xfer.result()
    }

    /// Waits up to `timeout_us` without cancelling: `None` if still pending.
    pub fn poll_wait(&self, timeout_us: u64) -> Option<Result<usize, TransferError>> {
        let host = match self.ep.host() {
            Ok(h) => h,
            Err(_) => return self.xfer.result(),
        };
        let deadline = host.now_us().saturating_add(timeout_us);
        let x = self.xfer.clone();
        host.wait_until(&move || x.is_done(), self.xfer.completion(), deadline);
        self.xfer.result()
    }

    /// Waits for completion and returns the bytes moved. After `timeout_us` the transfer is
    /// cancelled: it completes with `Timeout` and the pipe halts (the rest of its queue
    /// completes with `PipeHalted`); other pipes are not touched.
    pub fn wait(&self, timeout_us: u64) -> Result<usize, TransferError> {
        if let Some(r) = self.poll_wait(timeout_us) {
            return r;
        }
        self.ep.cancel(&self.xfer)
    }

    /// The transfer's buffer (read IN data from it after completion).
    pub fn buffer(&self) -> &TransferBuffer {
        &self.buffer
    }
}
