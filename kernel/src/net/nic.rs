//! A network interface as the stack sees it: a bounded receive queue the driver fills, a
//! transmit link the driver implements (replaceable: a replugged device takes over its old
//! interface), the carrier, the TX watchdog's two counters, and counters. Frames that do not fit
//! are dropped and counted, never reported as sent.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tether_netstack::fault::Fault;
use tether_netstack::watchdog::{Policy, TxActivity, Verdict, Watchdog};

use crate::sync::{Semaphore, SpinLock};

/// What a NIC driver does for the stack.
pub trait Transmit: Send + Sync {
    /// Queues `frame` to the device. Err: not queued (the caller counts it as dropped).
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str>;

    /// Asks the driver to reset its device, in the driver's own thread, and returns at once.
    /// false: this driver cannot reset.
    fn request_reset(&self) -> bool {
        false
    }

    /// Injects `fault` into the device. Err: this driver does not support it.
    fn inject(&self, fault: Fault) -> Result<(), &'static str> {
        let _ = fault;
        Err("this driver has no fault injection")
    }

    /// The stack's receive queue has room again after [`Nic::want_rx_room`] (it is half
    /// empty): the driver may post the buffers it held back. Called from the network thread.
    fn rx_room(&self) {}
}

#[derive(Default)]
pub struct NicCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped_queue_full: AtomicU64,
    /// Received messages the driver's framing check refused (e.g. RNDIS), dropped.
    pub rx_malformed: AtomicU64,
    /// Frames (and their bytes) the driver accepted for sending.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the driver refused (queue full, no buffer).
    pub tx_dropped: AtomicU64,
    /// Frames dropped because the interface had no device (unplugged).
    pub tx_dropped_no_link: AtomicU64,
    /// Frames a reset took back from the device and queued again.
    pub tx_requeued: AtomicU64,
    /// Frames a reset took back and dropped (TCP resends them).
    pub tx_dropped_reset: AtomicU64,
    /// Times the watchdog decided to reset.
    pub watchdog_fired: AtomicU64,
    /// Resets completed, and attempts that failed.
    pub resets: AtomicU64,
    pub reset_failures: AtomicU64,
    /// Times a device (re)bound to this interface.
    pub links: AtomicU64,
    /// Passes of the interface's thread through the stack and the services. Every `wake` is
    /// one pass (the semaphore counts them), so under a stream this is about one per frame.
    pub stack_passes: AtomicU64,
}

/// The TX watchdog's inputs, kept by the driver: frames handed to the device and not yet
/// completed, frames completed in total. The classic policy's start/complete hooks ride on the
/// same calls.
pub struct TxProgress {
    queued: AtomicU64,
    completed: AtomicU64,
    classic: bool,
    watchdog: SpinLock<Watchdog>,
}

impl TxProgress {
    pub fn new(policy: Policy) -> TxProgress {
        TxProgress {
            queued: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            classic: matches!(policy, Policy::Classic { .. }),
            watchdog: SpinLock::new("net.watchdog", Watchdog::new(policy)),
        }
    }

    /// The driver handed one frame to the device.
    pub fn started(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.classic {
            self.watchdog.lock().on_start();
        }
    }

    /// The device completed `frames` (sent, or failed and given up).
    pub fn finished(&self, frames: u64) {
        if frames == 0 {
            return;
        }
        self.completed.fetch_add(frames, Ordering::AcqRel);
        let before = self.queued.fetch_sub(frames, Ordering::AcqRel);
        if self.classic && before == frames {
            self.watchdog.lock().on_queue_empty();
        }
    }

    /// A reset took `frames` back from the device without completing them.
    pub fn withdrawn(&self, frames: u64) {
        self.queued.fetch_sub(frames, Ordering::AcqRel);
    }

    pub fn activity(&self) -> TxActivity {
        TxActivity {
            queued: self.queued.load(Ordering::Acquire),
            completed: self.completed.load(Ordering::Acquire),
        }
    }

    pub fn policy(&self) -> Policy {
        self.watchdog.lock().policy()
    }

    /// The watchdog's timer (for status pages).
    pub fn timer(&self) -> u32 {
        self.watchdog.lock().timer()
    }

    fn tick(&self) -> Verdict {
        let activity = self.activity();
        self.watchdog.lock().tick(activity)
    }

    fn after_reset(&self) {
        let activity = self.activity();
        self.watchdog.lock().after_reset(activity);
    }
}

/// An Ethernet frame at a 1500-byte MTU, without the FCS.
pub const ETHERNET_MAX_FRAME: usize = 1514;

pub struct Nic {
    pub name: String,
    pub mac: [u8; 6],
    rx: SpinLock<VecDeque<Vec<u8>>>,
    rx_limit: usize,
    link: SpinLock<Option<Arc<dyn Transmit>>>,
    pub carrier: AtomicBool,
    pub counters: NicCounters,
    /// The watchdog's counters; the driver updates them.
    pub tx_progress: Arc<TxProgress>,
    /// The last reset attempt failed (the driver retries with backoff).
    pub reset_failing: AtomicBool,
    /// The driver's TX queue size (transfers in flight at most; 0: not reported).
    pub tx_queue_capacity: AtomicUsize,
    /// The largest frame the driver takes: the Ethernet MTU, or more when the device cuts
    /// large TCP segments itself (virtio-net's HOST_TSO4).
    pub max_frame: AtomicUsize,
    /// The driver checks every received frame's checksums itself (in its own thread), so the
    /// stack does not check them again.
    pub rx_checksums_verified: AtomicBool,
    /// The IPv4 address in use and how it came ("static", "DHCP lease"), for status reports;
    /// None while there is none.
    pub address: SpinLock<Option<(super::Addressing, &'static str)>>,
    /// Wakes the interface's network thread (a frame arrived, the carrier changed). Counted:
    /// one pass per signal, even when an earlier pass took the whole queue. The spare passes
    /// keep the thread awake between frames. A flag instead (tried on 2026-11-22) cut the
    /// thread's CPU per frame by more than half, but usb-net host -> guest lost 30%, because the
    /// vCPU had to be woken from halt for each frame. With 32 bulk IN transfers queued, the
    /// same change was mixed: some directions gained, others lost 10-35%.
    pub wake: Semaphore,
    /// Set when the interface is removed; the network thread then ends.
    pub gone: AtomicBool,
    /// The driver holds receive buffers back for want of room and wants to hear of some.
    rx_room_wanted: AtomicBool,
}

impl Nic {
    /// An interface without a device yet; [`Nic::set_link`] adds one.
    pub fn unlinked(name: String, mac: [u8; 6], rx_limit: usize, policy: Policy) -> Arc<Nic> {
        Arc::new(Nic {
            name,
            mac,
            rx: SpinLock::new("net.rx_queue", VecDeque::new()),
            rx_limit,
            link: SpinLock::new("net.link", None),
            carrier: AtomicBool::new(false),
            counters: NicCounters::default(),
            tx_progress: Arc::new(TxProgress::new(policy)),
            reset_failing: AtomicBool::new(false),
            tx_queue_capacity: AtomicUsize::new(0),
            max_frame: AtomicUsize::new(ETHERNET_MAX_FRAME),
            rx_checksums_verified: AtomicBool::new(false),
            address: SpinLock::new("net.address", None),
            wake: Semaphore::new(0),
            gone: AtomicBool::new(false),
            rx_room_wanted: AtomicBool::new(false),
        })
    }

    /// A device (new, or replugged) drives this interface from now on.
    pub fn set_link(&self, tx: Arc<dyn Transmit>) {
        *self.link.lock() = Some(tx);
        self.counters.links.fetch_add(1, Ordering::Relaxed);
        self.tx_progress.after_reset();
        self.wake.up();
    }

    /// The device went away; the interface, its addresses and sockets stay for its return.
    pub fn unlink(&self) {
        self.link.lock().take();
        self.set_carrier(false);
        // Whatever was queued to the old device will never complete.
        let queued = self.tx_progress.activity().queued;
        self.tx_progress.withdrawn(queued);
    }

    pub fn has_link(&self) -> bool {
        self.link.lock().is_some()
    }

    fn link(&self) -> Option<Arc<dyn Transmit>> {
        self.link.lock().clone()
    }

    /// The driver hands over a received frame.
    pub fn deliver(&self, frame: Vec<u8>) {
        let mut rx = self.rx.lock();
        if rx.len() >= self.rx_limit {
            self.counters
                .rx_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rx_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        rx.push_back(frame);
        drop(rx);
        self.wake.up();
    }

    /// Frames the receive queue still takes.
    pub fn rx_room(&self) -> usize {
        self.rx_limit.saturating_sub(self.rx.lock().len())
    }

    pub fn take_frame(&self) -> Option<Vec<u8>> {
        let mut rx = self.rx.lock();
        let frame = rx.pop_front();
        let half_empty = rx.len() <= self.rx_limit / 2;
        drop(rx);
        // One relaxed load per frame; the link is only looked up when the driver waits.
        if half_empty
            && self.rx_room_wanted.load(Ordering::Relaxed)
            && self.rx_room_wanted.swap(false, Ordering::AcqRel)
        {
            if let Some(link) = self.link() {
                link.rx_room();
            }
        }
        frame
    }

    /// The driver withholds receive buffers: [`Transmit::rx_room`] is called once the queue
    /// is half empty again.
    pub fn want_rx_room(&self) {
        self.rx_room_wanted.store(true, Ordering::Release);
    }

    pub fn send(&self, frame: &[u8]) {
        let Some(link) = self.link() else {
            self.counters
                .tx_dropped_no_link
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        match link.transmit(frame) {
            Ok(()) => {
                self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn set_carrier(&self, up: bool) {
        self.carrier.store(up, Ordering::Release);
        self.wake.up();
    }

    /// Removes the interface (its network thread ends).
    pub fn detach(&self) {
        self.gone.store(true, Ordering::Release);
        self.wake.up();
    }

    /// The network thread's periodic watchdog check: asks the driver to reset when the policy
    /// says so. Every firing is a trace record and a counter.
    pub fn watchdog_tick(&self) {
        if self.tx_progress.tick() != Verdict::Reset {
            return;
        }
        self.counters.watchdog_fired.fetch_add(1, Ordering::Relaxed);
        let activity = self.tx_progress.activity();
        log::warn!(
            "{}: watchdog ({}): {} frames queued, no completion; resetting",
            self.name,
            self.tx_progress.policy(),
            activity.queued
        );
        self.request_reset();
    }

    /// Asks the driver for a reset. false: no device, or it cannot reset.
    pub fn request_reset(&self) -> bool {
        match self.link() {
            Some(link) if link.request_reset() => true,
            Some(_) => {
                log::warn!("{}: the driver cannot reset its device", self.name);
                false
            }
            None => false,
        }
    }

    /// The driver reports a reset attempt's outcome.
    pub fn reset_finished(&self, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                self.counters.resets.fetch_add(1, Ordering::Relaxed);
                self.reset_failing.store(false, Ordering::Release);
                self.tx_progress.after_reset();
            }
            Err(error) => {
                self.counters.reset_failures.fetch_add(1, Ordering::Relaxed);
                self.reset_failing.store(true, Ordering::Release);
                log::warn!("{}: reset failed: {error}", self.name);
            }
        }
        self.wake.up();
    }

    /// Fault injection through the driver.
    pub fn inject(&self, fault: Fault) -> Result<(), &'static str> {
        match (fault, self.link()) {
            (_, None) => Err("the interface has no device"),
            (Fault::Reset, Some(_)) => {
                if self.request_reset() {
                    Ok(())
                } else {
                    Err("the driver cannot reset its device")
                }
            }
            (fault, Some(link)) => link.inject(fault),
        }
    }
}

/// When a NIC driver's own thread resets its device: as soon as asked, and after a failed
/// attempt again after a backoff doubling from 200 ms up to 5 s. Shared by every NIC driver,
/// which only says when an attempt started and how it ended.
pub struct ResetSchedule {
    due_us: Option<u64>,
    backoff_us: u64,
}

impl ResetSchedule {
    const FIRST_BACKOFF_US: u64 = 200_000;
    const MAX_BACKOFF_US: u64 = 5_000_000;

    pub const fn new() -> ResetSchedule {
        ResetSchedule {
            due_us: None,
            backoff_us: Self::FIRST_BACKOFF_US,
        }
    }

    /// A reset is wanted: now, unless one is already scheduled.
    pub fn request(&mut self) {
        self.due_us.get_or_insert(0);
    }

    /// Whether an attempt is due at `now_us`.
    pub fn due(&self, now_us: u64) -> bool {
        self.due_us.is_some_and(|due| now_us >= due)
    }

    /// Microseconds until the next attempt, if one is scheduled.
    pub fn wait_us(&self, now_us: u64) -> Option<u64> {
        self.due_us.map(|due| due.saturating_sub(now_us))
    }

    /// An attempt that started at `started_us` ended: reports it to `nic` and, on failure,
    /// schedules the next one.
    pub fn finished(&mut self, nic: &Nic, started_us: u64, result: Result<(), &str>) {
        nic.reset_finished(result);
        if result.is_ok() {
            *self = ResetSchedule::new();
            return;
        }
        log::warn!(
            "{}: retrying the reset in {} ms",
            nic.name,
            self.backoff_us / 1000
        );
        self.due_us = Some(self.due_us.unwrap_or(0).max(started_us) + self.backoff_us);
        self.backoff_us = (self.backoff_us * 2).min(Self::MAX_BACKOFF_US);
    }
}
