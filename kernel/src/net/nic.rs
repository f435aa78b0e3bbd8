//! A network interface as the stack sees it: a bounded receive queue the driver fills, a
//! transmit hook the driver implements, the carrier, and counters. Frames that do not fit are
//! dropped and counted, never reported as sent.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sync::{Semaphore, SpinLock};

/// What a NIC driver does with an outgoing frame.
pub trait Transmit: Send + Sync {
    /// Queues `frame` to the device. Err: not queued (the caller counts it as dropped).
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str>;
}

#[derive(Default)]
pub struct NicCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped_queue_full: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
}

pub struct Nic {
    pub name: String,
    pub mac: [u8; 6],
    rx: SpinLock<VecDeque<Vec<u8>>>,
    rx_limit: usize,
    tx: Arc<dyn Transmit>,
    pub carrier: AtomicBool,
    pub counters: NicCounters,
    /// Wakes the interface's network thread (a frame arrived, the carrier changed).
    pub wake: Semaphore,
    /// Set when the driver is gone; the network thread then ends.
    pub gone: AtomicBool,
}

impl Nic {
    pub fn new(name: String, mac: [u8; 6], rx_limit: usize, tx: Arc<dyn Transmit>) -> Arc<Nic> {
        Arc::new(Nic {
            name,
            mac,
            rx: SpinLock::new("net.rx_queue", VecDeque::new()),
            rx_limit,
            tx,
            carrier: AtomicBool::new(false),
            counters: NicCounters::default(),
            wake: Semaphore::new(0),
            gone: AtomicBool::new(false),
        })
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

    pub fn take_frame(&self) -> Option<Vec<u8>> {
        self.rx.lock().pop_front()
    }

    pub fn send(&self, frame: &[u8]) {
        match self.tx.transmit(frame) {
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

    pub fn detach(&self) {
        self.gone.store(true, Ordering::Release);
        self.wake.up();
    }
}
