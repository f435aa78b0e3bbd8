//! Class drivers and the device thread they run in. A driver's `run` is straight-line,
//! blocking code: attach (control transfers, endpoint set-up), work until the device goes away,
//! detach. When a device is unplugged the bus fails every pending transfer with
//! `Disconnected` first, so a driver waiting on one returns promptly.

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use tether_usb::enumerate::UsbDevice;
use tether_usb::matching::{choose_net_function, NetFunction};

use super::Xhci;
use crate::sync::WaitQueue;

/// Tells a device's thread its device is gone.
pub struct DeviceLife {
    detached: AtomicBool,
    changed: WaitQueue,
}

impl DeviceLife {
    pub fn new() -> Arc<DeviceLife> {
        Arc::new(DeviceLife {
            detached: AtomicBool::new(false),
            changed: WaitQueue::new(),
        })
    }

    pub fn detach(&self) {
        self.detached.store(true, Ordering::Release);
        self.changed.wake_all();
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// Sleeps until detached or `timeout_ns`; returns whether detached.
    pub fn wait_detached(&self, timeout_ns: Option<u64>) -> bool {
        let deadline = timeout_ns.map(|t| crate::time::now_ns() + t);
        self.changed.wait_while(deadline, || !self.is_detached());
        self.is_detached()
    }
}

/// What a driver gets: the device, its controller, and its life.
pub struct DeviceContext {
    pub controller: Xhci,
    pub device: UsbDevice,
    /// "xhci1 1-5", for log lines.
    pub name: String,
    pub life: Arc<DeviceLife>,
}

pub trait UsbDriver: Sync {
    fn name(&self) -> &'static str;
    fn matches(&self, device: &UsbDevice) -> bool;
    /// Attach, work until `ctx.life` says detached, detach. Runs in the device's own thread.
    fn run(&self, ctx: &DeviceContext);
}

static DRIVERS: &[&dyn UsbDriver] = &[
    &super::ecm::EcmDriver,
    &super::rndis::RndisDriver,
    &super::hubdriver::HubDriver,
];
static BINDING: AtomicBool = AtomicBool::new(true);
/// `usbnet=rndis`: bind RNDIS rather than CDC-ECM on devices offering both.
static PREFER_RNDIS: AtomicBool = AtomicBool::new(false);

/// Whether class drivers bind to new devices (`usbdrivers=off` on the command line, or a test
/// that drives a device itself, turns it off).
pub fn set_binding(on: bool) {
    BINDING.store(on, Ordering::Release);
}

/// Which network function class drivers bind on devices offering both (`usbnet=`).
pub fn set_net_preference(function: NetFunction) {
    PREFER_RNDIS.store(function == NetFunction::Rndis, Ordering::Release);
}

pub fn net_preference() -> NetFunction {
    if PREFER_RNDIS.load(Ordering::Acquire) {
        NetFunction::Rndis
    } else {
        NetFunction::Ecm
    }
}

/// The network function (and its configuration) to bind on `device`, per the preference.
pub fn net_function_for(device: &UsbDevice) -> Option<(NetFunction, u8)> {
    choose_net_function(&device.descriptor, &device.configurations, net_preference())
}

pub fn find_driver(device: &UsbDevice) -> Option<&'static dyn UsbDriver> {
    if !BINDING.load(Ordering::Acquire) {
        return None;
    }
    DRIVERS.iter().copied().find(|d| d.matches(device))
}
