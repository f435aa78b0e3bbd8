//! Tests that need a machine of their own (the runner adds QEMU devices for them); run only
//! when named, each in its own boot (`test=NAME`).

use super::{ensure, TestResult};
use crate::usb;

pub static MACHINE_TESTS: &[super::cases::Case] = &[
    ("usb_enumeration", usb_enumeration),
    ("usb_bulk_stall", super::usb_data::usb_bulk_stall),
    ("usb_rndis_lengths", super::usb_rndis::usb_rndis_lengths),
];

/// Both xHCI models (qemu-xhci, nec-usb-xhci) with QEMU's usb-net, usb-kbd, usb-storage, and on
/// qemu-xhci a hub with a mouse behind it: every device enumerated with its real IDs.
fn usb_enumeration() -> TestResult {
    usb::start();
    ensure!(
        usb::registry::wait_settled(30_000_000_000),
        "USB enumeration did not settle within 30 s"
    );
    let devices = usb::registry::devices();
    for d in &devices {
        kprintln!(
            "usb device: {} {} {:?} {:04x}:{:04x} class {:02x} {}",
            d.controller,
            d.port_path,
            d.speed,
            d.vendor_id,
            d.product_id,
            d.class,
            d.driver.unwrap_or("no driver")
        );
    }
    let expected: [(&str, u16, u16, &str); 7] = [
        ("xhci1", 0x0525, 0xa4a2, "usb-net"),
        ("xhci1", 0x0627, 0x0001, "usb-kbd"),
        ("xhci1", 0x46f4, 0x0001, "usb-storage"),
        ("xhci1", 0x0409, 0x55aa, "usb-hub"),
        ("xhci2", 0x0525, 0xa4a2, "usb-net"),
        ("xhci2", 0x0627, 0x0001, "usb-kbd"),
        ("xhci2", 0x46f4, 0x0001, "usb-storage"),
    ];
    for (controller, vid, pid, what) in expected {
        ensure!(
            devices
                .iter()
                .any(|d| d.controller == controller && d.vendor_id == vid && d.product_id == pid),
            "{what} ({vid:04x}:{pid:04x}) not found on {controller}"
        );
    }
    // xhci1 (qemu-xhci) interrupts by MSI-X; xhci2 (nec-usb-xhci with msi=off,msix=off) has
    // only its INTx pin, routed through the firmware's Interrupt Line: it must really
    // interrupt, not fall back to polling.
    let modes = usb::interrupt_modes();
    for (controller, mode) in [("xhci1", "MSI-X"), ("xhci2", "INTx")] {
        let found = modes.iter().find(|m| m.0 == controller);
        ensure!(
            found.is_some_and(|m| m.1 == mode && m.2 > 0),
            "{controller}: expected interrupts by {mode}, got {found:?}"
        );
    }
    // QEMU's usb-net is full-speed only: GET_DESCRIPTOR(device qualifier) is a real protocol
    // STALL on EP0, and the control transfer right after it must succeed.
    for controller in ["xhci1", "xhci2"] {
        let net = devices
            .iter()
            .find(|d| d.controller == controller && d.vendor_id == 0x0525);
        ensure!(
            net.is_some_and(|d| d.ep0_stall_recovered == Some(true)),
            "{controller}: usb-net's EP0 protocol stall not seen or not recovered: {:?}",
            net.map(|d| d.ep0_stall_recovered)
        );
    }
    let behind_hub = devices
        .iter()
        .find(|d| d.controller == "xhci1" && d.port_path.contains('.'));
    ensure!(behind_hub.is_some(), "no device enumerated behind the hub");
    kprintln!("usb: enumeration ok ({} devices)", devices.len());
    Ok(())
}
