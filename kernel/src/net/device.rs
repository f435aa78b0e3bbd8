//! smoltcp's `phy::Device` over a [`Nic`]: receive pops the driver's queue, transmit hands
//! the frame to the driver. One copy each way (smoltcp's buffer <-> the DMA buffer); frames
//! to send are built in one buffer the device keeps, so sending allocates nothing.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tether_netstack::smoltcp::phy::{
    Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken,
};
use tether_netstack::smoltcp::time::Instant;

use super::nic::Nic;

use super::nic::ETHERNET_MAX_FRAME;

pub struct NicDevice<'a> {
    nic: &'a Nic,
    /// Where frames to send are built (reused: no allocation or zeroing per frame).
    tx_frame: Vec<u8>,
}

impl<'a> NicDevice<'a> {
    pub fn new(nic: &'a Nic) -> Self {
        NicDevice {
            nic,
            tx_frame: alloc::vec![0u8; ETHERNET_MAX_FRAME],
        }
    }
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a> {
    nic: &'a Nic,
    frame: &'a mut [u8],
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.frame.get_mut(..len) {
            Some(frame) => {
                let result = f(frame);
                self.nic.send(frame);
                result
            }
            // Longer than the MTU smoltcp was given: cannot happen, but never panic on it.
            None => {
                let mut frame = alloc::vec![0u8; len];
                let result = f(&mut frame);
                self.nic.send(&frame);
                result
            }
        }
    }
}

impl Device for NicDevice<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.nic.take_frame()?;
        Some((
            Rx(frame),
            Tx {
                nic: self.nic,
                frame: &mut self.tx_frame,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let max_frame = self.nic.max_frame.load(Ordering::Relaxed);
        if self.tx_frame.len() < max_frame {
            self.tx_frame.resize(max_frame, 0);
        }
        Some(Tx {
            nic: self.nic,
            frame: &mut self.tx_frame,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // Larger than Ethernet's when the device segments TCP itself.
        caps.max_transmission_unit = self.nic.max_frame.load(Ordering::Relaxed);
        if self.nic.rx_checksums_verified.load(Ordering::Relaxed) {
            // Computed on transmit, not checked again on receive.
            let checksums = &mut caps.checksum;
            checksums.ipv4 = Checksum::Tx;
            checksums.tcp = Checksum::Tx;
            checksums.udp = Checksum::Tx;
            checksums.icmpv4 = Checksum::Tx;
        }
        caps
    }
}
