//! The interface between the USB core and a host controller driver (xHCI today). Narrow on
//! purpose, like Tock's HILs: the core's enumeration and the class drivers are plain code over
//! this trait, tested on the host against a fake controller.
//!
//! All calls block the calling thread (they run in a device's or the hub thread's kernel
//! thread, never in interrupt context) and every one that touches the bus has a timeout.

use alloc::string::String;
use core::fmt;

use crate::request::SetupPacket;
use crate::speed::Speed;

/// A device the controller has addressed (for xHCI: its slot id).
pub type DeviceHandle = u8;

/// How a transfer or a controller operation failed. `Stall` and the other halting errors leave
/// the pipe halted until the framework clears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// The device answered STALL (a protocol stall on EP0, or a halted endpoint).
    Stall,
    /// Nothing came back in time.
    Timeout,
    /// The device went away while the transfer was queued or running.
    Disconnected,
    /// The device sent more data than the buffer or packet allowed.
    Babble,
    /// CRC, bit-stuffing or no-response errors after the controller's retries.
    Transaction,
    /// The pipe is halted after an earlier error; clear it before submitting again.
    PipeHalted,
    /// The controller ran out of a resource (slots, bandwidth, ring space).
    NoResources(&'static str),
    /// The controller or device did something this stack does not understand.
    Controller(String),
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Stall => f.write_str("stall"),
            TransferError::Timeout => f.write_str("timed out"),
            TransferError::Disconnected => f.write_str("device disconnected"),
            TransferError::Babble => f.write_str("babble"),
            TransferError::Transaction => f.write_str("transaction error"),
            TransferError::PipeHalted => f.write_str("pipe halted"),
            TransferError::NoResources(what) => write!(f, "no resources: {what}"),
            TransferError::Controller(what) => write!(f, "controller error: {what}"),
        }
    }
}

/// A root port's state as the controller reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub connected: bool,
    pub enabled: bool,
    /// Known once the port is enabled (USB 2 ports: after a reset).
    pub speed: Option<Speed>,
    /// Major USB revision of the port (2 or 3), from the controller's protocol capability.
    pub usb_major: u8,
    /// A connect/disconnect happened since the last [`HostController::acknowledge_port_change`].
    pub connect_changed: bool,
}

/// Where a new device sits: root port, and the hub path below it (empty for root-port devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub root_port: u8,
    /// USB 3 route string: 4 bits per hub tier, port numbers below the root port.
    pub route: u32,
    pub speed: Speed,
    /// For a full/low-speed device behind a high-speed hub: (hub device, hub port) of the
    /// transaction translator.
    pub tt: Option<(DeviceHandle, u8)>,
}

pub trait HostController {
    /// Number of root ports (numbered 1..=count).
    fn port_count(&self) -> u8;
    fn port_status(&mut self, port: u8) -> PortStatus;
    /// Clears the port's change bits after the caller has looked at them.
    fn acknowledge_port_change(&mut self, port: u8);
    /// Resets the port and returns the speed of the device now enabled on it.
    fn reset_port(&mut self, port: u8) -> Result<Speed, TransferError>;
    /// Creates a device for the one at the default address at `at` and gives it an address.
    /// EP0 starts with the speed's default max packet size.
    fn address_device(&mut self, at: Attachment) -> Result<DeviceHandle, TransferError>;
    /// Tells the controller EP0's real max packet size (from the first 8 descriptor bytes).
    fn set_ep0_max_packet(
        &mut self,
        device: DeviceHandle,
        max_packet: u16,
    ) -> Result<(), TransferError>;
    /// A control transfer on EP0. `data` is read into (device-to-host requests) or sent
    /// (host-to-device); its length must be at least `setup.length`. Returns bytes moved.
    /// A STALL on EP0 is a protocol stall: the controller recovers EP0 itself before returning.
    fn control_transfer(
        &mut self,
        device: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
        timeout_ms: u32,
    ) -> Result<usize, TransferError>;
    /// Frees everything the controller holds for the device.
    fn release_device(&mut self, device: DeviceHandle) -> Result<(), TransferError>;

    /// Tells the controller that `device` is a hub (xHCI: slot context Hub = 1, Number of
    /// Ports, TT Think Time, MTT, via Evaluate Context or Configure Endpoint), which it needs
    /// before it can route split transactions to full/low-speed devices behind a high-speed
    /// hub. Called by the hub logic after SET_CONFIGURATION. The default does nothing (a
    /// controller that needs no such information).
    fn configure_hub(
        &mut self,
        device: DeviceHandle,
        ports: u8,
        tt_think_time_bits: u8,
        multi_tt: bool,
    ) -> Result<(), TransferError> {
        let _ = (device, ports, tt_think_time_bits, multi_tt);
        Ok(())
    }
}
