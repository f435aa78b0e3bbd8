//! smoltcp's `phy::Device` over a [`Nic`]: receive pops the driver's queue, transmit hands
//! the frame to the driver. One copy each way (smoltcp's buffer <-> the DMA buffer).

use alloc::vec::Vec;

use tether_netstack::smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use tether_netstack::smoltcp::time::Instant;

use super::nic::Nic;

pub struct NicDevice<'a> {
    pub nic: &'a Nic,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a Nic);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = alloc::vec![0u8; len];
        let result = f(&mut frame);
        self.0.send(&frame);
        result
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
        Some((Rx(frame), Tx(self.nic)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(self.nic))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}
