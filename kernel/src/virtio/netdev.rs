//! The virtio-net device over `virtio-drivers`' virtqueues and transport: feature negotiation,
//! the MAC, and the two queues. The driver (`net.rs`) writes and reads the 12-byte header of
//! every buffer itself (`tether_netstack::offload`).
//!
//! Why not virtio-drivers' `VirtIONetRaw`: it negotiates a fixed feature set without any
//! offload and keeps the header private. Over tap, per-frame work in QEMU (one tap read or
//! write per frame) bounds throughput, and Linux guests get past it with `GUEST_TSO4`: the
//! host hands over 64 KiB segments. That needs `GUEST_CSUM` (partial checksums) and
//! `MRG_RXBUF` (a frame spread over several receive buffers), which this type negotiates when
//! the device offers them; user networking (slirp) offers no offloads, and nothing changes.

use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::{Hal, Result};

use tether_netstack::offload::HEADER_LEN;

bitflags! {
    /// The virtio-net feature bits this driver knows (virtio 1.x 5.1.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NetFeatures: u64 {
        const CSUM = 1 << 0;
        const GUEST_CSUM = 1 << 1;
        const MAC = 1 << 5;
        const GUEST_TSO4 = 1 << 7;
        const HOST_TSO4 = 1 << 11;
        const MRG_RXBUF = 1 << 15;
        const STATUS = 1 << 16;
        const RING_INDIRECT_DESC = 1 << 28;
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

impl NetFeatures {
    /// What is asked for when `offloads` is on (the default). `GUEST_TSO4` needs `GUEST_CSUM`,
    /// and both only pay with `MRG_RXBUF` (without it every buffer would have to hold 64 KiB).
    pub fn wanted(offloads: bool) -> NetFeatures {
        let base = NetFeatures::MAC
            | NetFeatures::STATUS
            | NetFeatures::RING_INDIRECT_DESC
            | NetFeatures::RING_EVENT_IDX
            | NetFeatures::VERSION_1
            | NetFeatures::MRG_RXBUF;
        if offloads {
            base | NetFeatures::GUEST_CSUM
                | NetFeatures::GUEST_TSO4
                | NetFeatures::CSUM
                | NetFeatures::HOST_TSO4
        } else {
            base
        }
    }

    /// The negotiated set, made consistent: large receive only with partial checksums and
    /// mergeable buffers, and mergeable buffers only for large receive (a 1514-byte frame
    /// fits one buffer; without large receive they would change nothing but the device's path).
    fn consistent(self) -> NetFeatures {
        let mut features = self;
        if !features.contains(NetFeatures::GUEST_CSUM | NetFeatures::MRG_RXBUF) {
            features.remove(NetFeatures::GUEST_TSO4);
        }
        if !features.contains(NetFeatures::GUEST_TSO4) {
            features.remove(NetFeatures::MRG_RXBUF);
        }
        // Segmentation needs the device to fill in checksums.
        if !features.contains(NetFeatures::CSUM) {
            features.remove(NetFeatures::HOST_TSO4);
        }
        features
    }
}

const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;

/// A set-up device: features negotiated, both queues live, DRIVER_OK set. Dropping it unsets
/// the queues (the caller resets the device before freeing the buffers it had posted).
pub struct NetQueues<H: Hal, T: Transport, const SIZE: usize> {
    transport: T,
    mac: [u8; 6],
    features: NetFeatures,
    receive: VirtQueue<H, SIZE>,
    transmit: VirtQueue<H, SIZE>,
}

impl<H: Hal, T: Transport, const SIZE: usize> NetQueues<H, T, SIZE> {
    /// Resets the device, negotiates `wanted` (less what it does not offer), reads the MAC and
    /// sets up both queues.
    pub fn new(mut transport: T, wanted: NetFeatures) -> Result<Self> {
        let offered = transport.begin_init(wanted);
        let features = offered.consistent();
        if features != offered {
            // Dropping a feature after FEATURES_OK is not allowed: start over with the subset.
            transport.begin_init(features);
        }
        if !features.contains(NetFeatures::VERSION_1) {
            // The 12-byte header and modern layout are assumed throughout.
            return Err(virtio_drivers::Error::Unsupported);
        }
        let mac = transport.read_consistent(|| {
            let mut mac = [0u8; 6];
            for (i, byte) in mac.iter_mut().enumerate() {
                *byte = transport.read_config_space::<u8>(i)?;
            }
            Ok(mac)
        })?;
        let indirect = features.contains(NetFeatures::RING_INDIRECT_DESC);
        let event_idx = features.contains(NetFeatures::RING_EVENT_IDX);
        let receive = VirtQueue::new(&mut transport, RECEIVE_QUEUE, indirect, event_idx)?;
        let transmit = VirtQueue::new(&mut transport, TRANSMIT_QUEUE, indirect, event_idx)?;
        transport.finish_init();
        Ok(NetQueues {
            transport,
            mac,
            features,
            receive,
            transmit,
        })
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    pub fn features(&self) -> NetFeatures {
        self.features
    }

    /// Posts `buffer` to receive into (header included); returns its token.
    ///
    /// # Safety
    /// The device owns `buffer` until [`Self::receive_complete`] returns it with this token (or
    /// the device is reset): nothing may touch or free it before.
    pub unsafe fn receive_begin(&mut self, buffer: &mut [u8]) -> Result<u16> {
        if buffer.len() <= HEADER_LEN {
            return Err(virtio_drivers::Error::InvalidParam);
        }
        // SAFETY: the caller's promise above.
        let token = unsafe { self.receive.add(&[], &mut [buffer])? };
        if self.receive.should_notify() {
            self.transport.notify(RECEIVE_QUEUE);
        }
        Ok(token)
    }

    /// The token of the next filled receive buffer, if any.
    pub fn poll_receive(&self) -> Option<u16> {
        self.receive.peek_used()
    }

    /// Takes back the buffer posted with `token`; returns how many bytes the device wrote.
    ///
    /// # Safety
    /// `buffer` must be the one posted with `token`.
    pub unsafe fn receive_complete(&mut self, token: u16, buffer: &mut [u8]) -> Result<usize> {
        // SAFETY: the caller's promise above.
        Ok(unsafe { self.receive.pop_used(token, &[], &mut [buffer])? } as usize)
    }

    /// Hands `frame` (header included) to the device; returns its token.
    ///
    /// # Safety
    /// As for [`Self::receive_begin`], until [`Self::transmit_complete`].
    pub unsafe fn transmit_begin(&mut self, frame: &[u8]) -> Result<u16> {
        if frame.len() < HEADER_LEN {
            return Err(virtio_drivers::Error::InvalidParam);
        }
        // SAFETY: the caller's promise above.
        let token = unsafe { self.transmit.add(&[frame], &mut [])? };
        if self.transmit.should_notify() {
            self.transport.notify(TRANSMIT_QUEUE);
        }
        Ok(token)
    }

    /// The token of the next finished transmission, if any.
    pub fn poll_transmit(&self) -> Option<u16> {
        self.transmit.peek_used()
    }

    /// Takes back the frame posted with `token`.
    ///
    /// # Safety
    /// `frame` must be the one posted with `token`.
    pub unsafe fn transmit_complete(&mut self, token: u16, frame: &[u8]) -> Result<()> {
        // SAFETY: the caller's promise above.
        unsafe { self.transmit.pop_used(token, &[frame], &mut [])? };
        Ok(())
    }
}

impl<H: Hal, T: Transport, const SIZE: usize> Drop for NetQueues<H, T, SIZE> {
    fn drop(&mut self) {
        // The device must not use queue memory that is about to be freed.
        self.transport.queue_unset(RECEIVE_QUEUE);
        self.transport.queue_unset(TRANSMIT_QUEUE);
    }
}
