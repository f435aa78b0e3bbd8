//! What the USB stack found, for the boot log, the console and tests.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use tether_usb::enumerate::UsbDevice;
use tether_usb::speed::Speed;

use super::Xhci;

use crate::sync::{Mutex, WaitQueue};

/// What a driver (or a test) needs to talk to a device: its controller and its descriptors.
#[derive(Clone)]
pub struct DeviceAccess {
    pub controller: Xhci,
    pub device: UsbDevice,
}

#[derive(Clone)]
pub struct DeviceRecord {
    pub controller: String,
    /// "1-5" for root port 5 of controller 1, "1-4.1" for port 1 of the hub on root port 4.
    pub port_path: String,
    pub speed: Speed,
    pub vendor_id: u16,
    pub product_id: u16,
    /// Device class, or the first interface's class when the device leaves it to interfaces.
    pub class: u8,
    pub product: Option<String>,
    pub driver: Option<&'static str>,
    /// Some(true): the device answered GET_DESCRIPTOR(device qualifier) with a protocol STALL
    /// and EP0 worked again right after.
    pub ep0_stall_recovered: Option<bool>,
    pub access: DeviceAccess,
}

static DEVICES: Mutex<Vec<DeviceRecord>> = Mutex::new("usb.registry", Vec::new());
static CONTROLLERS_STARTED: AtomicUsize = AtomicUsize::new(0);
static CONTROLLERS_SETTLED: AtomicUsize = AtomicUsize::new(0);
static SETTLED: WaitQueue = WaitQueue::new();

pub fn controller_started() {
    CONTROLLERS_STARTED.fetch_add(1, Ordering::AcqRel);
}

/// A controller finished its first enumeration of everything plugged in at boot (or failed).
pub fn controller_settled() {
    CONTROLLERS_SETTLED.fetch_add(1, Ordering::AcqRel);
    SETTLED.wake_all();
}

pub fn add(record: DeviceRecord) {
    DEVICES.lock().push(record);
}

pub fn remove(controller: &str, port_path: &str) {
    DEVICES
        .lock()
        .retain(|d| !(d.controller == controller && d.port_path == port_path));
}

pub fn devices() -> Vec<DeviceRecord> {
    DEVICES.lock().clone()
}

/// Waits until every controller started so far has settled; false on timeout.
pub fn wait_settled(timeout_ns: u64) -> bool {
    let deadline = crate::time::now_ns() + timeout_ns;
    SETTLED.wait_while(Some(deadline), || {
        CONTROLLERS_SETTLED.load(Ordering::Acquire) < CONTROLLERS_STARTED.load(Ordering::Acquire)
    })
}
