//! Hubs against the fake controller: bring-up, port reset, route strings, TTs, port paths.

use crate::descriptor::{dt, LANG_EN_US};
use crate::device::*;
use crate::enumerate::*;
use crate::fake::*;
use crate::host::{Attachment, HostController, TransferError};
use crate::hub::*;
use crate::request::{std_req, PortFeature, SetupPacket};
use crate::speed::Speed;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

fn root(port: u8, speed: Speed) -> Attachment {
    Attachment {
        root_port: port,
        route: 0,
        speed,
        tt: None,
    }
}

/// Plugs a hub into a root port, enumerates and initialises it. Returns the hub and the
/// delays requested.
fn bring_up(
    hc: &mut FakeHostController,
    port: u8,
    speed: Speed,
    hub: FakeDevice,
) -> (Hub, Vec<u32>) {
    hc.plug(port, speed, hub);
    hc.reset_port(port).unwrap();
    let dev = enumerate(hc, root(port, speed), LANG_EN_US).unwrap();
    let mut delays = Vec::new();
    let hub = init_hub(hc, &dev, &mut |ms| delays.push(ms)).unwrap();
    (hub, delays)
}

fn attached(e: Result<PortEvent, HubError>) -> UsbDevice {
    match e {
        Ok(PortEvent::Attached(d)) => d,
        other => panic!("expected a device, got {other:?}"),
    }
}

#[test]
fn qemu_hub_with_keyboard_on_port_2() {
    let mut hc = FakeHostController::new(8);
    let hub_dev = FakeDevice::hub(false, 8).plug(2, Speed::Full, FakeDevice::qemu_usb_kbd());
    let (hub, delays) = bring_up(&mut hc, 5, Speed::Full, hub_dev);
    assert_eq!(hub.descriptor.num_ports, 8);
    // bPwrOn2PwrGood 50 = 100 ms.
    assert_eq!(delays, vec![100]);
    assert_eq!(hc.hub_configs, vec![(hub.handle, 8, 8, false)]);
    let to_hub: Vec<SetupPacket> = hc.requests_to(hub.handle).map(|r| r.setup).collect();
    let n = to_hub.len();
    assert_eq!(to_hub[n - 10], SetupPacket::set_configuration(1));
    assert_eq!(to_hub[n - 9], SetupPacket::get_hub_descriptor(false, 71));
    for p in 1..=8u8 {
        assert_eq!(
            to_hub[n - 9 + p as usize],
            SetupPacket::set_port_feature(p, PortFeature::Power)
        );
    }

    // The interrupt endpoint reports port 2.
    let ports: Vec<u8> = hub_port_changes(&[0b0000_0100]).collect();
    assert_eq!(ports, vec![2]);
    let mut delays = Vec::new();
    let kbd = attached(handle_port(&mut hc, &hub, 2, LANG_EN_US, &mut |ms| {
        delays.push(ms)
    }));
    assert_eq!(
        kbd.attachment,
        Attachment {
            root_port: 5,
            route: 0x2,
            speed: Speed::Full,
            tt: None // full-speed hub: no TT
        }
    );
    assert_eq!(delays, vec![DEBOUNCE_MS, RESET_POLL_MS, RESET_RECOVERY_MS]);
    assert_eq!(kbd.product.as_deref(), Some("QEMU USB Keyboard"));
    assert_eq!(hc.live_handles(), 2);
    // Change bits acknowledged: C_CONNECTION and C_RESET cleared.
    let clears: Vec<u16> = hc
        .requests_to(hub.handle)
        .filter(|r| r.setup.request == std_req::CLEAR_FEATURE)
        .map(|r| r.setup.value)
        .collect();
    assert_eq!(
        clears,
        vec![PortFeature::CConnection as u16, PortFeature::CReset as u16]
    );

    let hub_dev = hc.device(hub.handle).unwrap().clone();
    let hub_usb = UsbDevice {
        handle: hub.handle,
        attachment: hub.attachment,
        descriptor: crate::descriptor::DeviceDescriptor::parse(&hub_dev.device_descriptor).unwrap(),
        ep0_max_packet: 8,
        configurations: vec![],
        language: None,
        manufacturer: None,
        product: None,
        serial: None,
    };
    let t = format_table(&[
        DeviceSummary::new("xhci0", 1, &hub_usb, Some("hub")),
        DeviceSummary::new("xhci0", 1, &kbd, None),
    ]);
    assert_eq!(
        t,
        "\
CONTROLLER  PORT   SPEED  VID:PID    CLASS              DRIVER
xhci0       1-5    full   0409:55aa  09 Hub             hub
xhci0       1-5.2  full   0627:0001  03 HID (keyboard)  no driver
",
        "\n{t}"
    );

    // Nothing else changes: the other ports are empty, port 2 unchanged.
    let mut nop = |_| {};
    assert_eq!(
        handle_port(&mut hc, &hub, 3, LANG_EN_US, &mut nop),
        Ok(PortEvent::Empty)
    );
    assert_eq!(
        handle_port(&mut hc, &hub, 2, LANG_EN_US, &mut nop),
        Ok(PortEvent::Unchanged)
    );

    // Unplug: Detached; the child's handle now sees Disconnected.
    hc.device_mut(hub.handle).unwrap().unplug(2).unwrap();
    assert_eq!(
        handle_port(&mut hc, &hub, 2, LANG_EN_US, &mut nop),
        Ok(PortEvent::Detached)
    );
    let mut b = [0u8; 18];
    assert_eq!(
        hc.control_transfer(
            kbd.handle,
            SetupPacket::get_device_descriptor(18),
            &mut b,
            100
        ),
        Err(TransferError::Disconnected)
    );
    hc.release_device(kbd.handle).unwrap();
    assert_eq!(hc.live_handles(), 1);
}

#[test]
fn high_speed_hub_tt_and_nested_route() {
    let inner = FakeDevice::hub(true, 4).plug(2, Speed::Full, FakeDevice::qemu_usb_kbd());
    let outer = FakeDevice::hub(true, 4)
        .plug(1, Speed::High, FakeDevice::qemu_usb_storage(true))
        .plug(3, Speed::Low, FakeDevice::qemu_usb_kbd())
        .plug(4, Speed::High, inner);
    let mut hc = FakeHostController::new(8);
    let (hub, _) = bring_up(&mut hc, 1, Speed::High, outer);
    let mut nop = |_| {};
    let results = scan_ports(&mut hc, &hub, LANG_EN_US, &mut nop);
    assert_eq!(results.len(), 4);
    let mut it = results.into_iter();
    let storage = attached(it.next().unwrap().1);
    assert_eq!(storage.attachment.route, 0x1);
    assert_eq!(storage.attachment.tt, None); // high speed: no TT
    assert_eq!(it.next().unwrap().1, Ok(PortEvent::Empty));
    let kbd = attached(it.next().unwrap().1);
    assert_eq!(kbd.attachment.speed, Speed::Low);
    assert_eq!(kbd.attachment.tt, Some((hub.handle, 3)));
    let inner_dev = attached(it.next().unwrap().1);
    assert_eq!(inner_dev.attachment.route, 0x4);

    let inner = init_hub(&mut hc, &inner_dev, &mut nop).unwrap();
    let kbd2 = attached(handle_port(&mut hc, &inner, 2, LANG_EN_US, &mut nop));
    assert_eq!(
        kbd2.attachment,
        Attachment {
            root_port: 1,
            route: 0x24,
            speed: Speed::Full,
            tt: Some((inner.handle, 2)),
        }
    );
    assert_eq!(port_path(1, &kbd2.attachment), "1-1.4.2");
    assert_eq!(hc.live_handles(), 5);
}

#[test]
fn full_speed_hub_behind_high_speed_hub_inherits_the_tt() {
    let fs_hub = FakeDevice::hub(false, 2).plug(1, Speed::Low, FakeDevice::qemu_usb_kbd());
    let hs_hub = FakeDevice::hub(true, 4).plug(3, Speed::Full, fs_hub);
    let mut hc = FakeHostController::new(8);
    let (hub, _) = bring_up(&mut hc, 2, Speed::High, hs_hub);
    let mut nop = |_| {};
    let fs = attached(handle_port(&mut hc, &hub, 3, LANG_EN_US, &mut nop));
    assert_eq!(fs.attachment.tt, Some((hub.handle, 3)));
    let fs = init_hub(&mut hc, &fs, &mut nop).unwrap();
    let kbd = attached(handle_port(&mut hc, &fs, 1, LANG_EN_US, &mut nop));
    assert_eq!(kbd.attachment.route, 0x13);
    assert_eq!(kbd.attachment.tt, Some((hub.handle, 3)));
}

#[test]
fn route_string_limits() {
    let mut hub = Hub {
        handle: 9,
        attachment: Attachment {
            root_port: 3,
            route: 0x1_2345,
            speed: Speed::High,
            tt: None,
        },
        descriptor: crate::request::HubDescriptor::parse(&crate::fake::blobs::hub_descriptor(4, 1))
            .unwrap(),
        multi_tt: false,
    };
    assert_eq!(route_depth(0), 0);
    assert_eq!(route_depth(0x1_2345), 5);
    assert_eq!(
        child_attachment(&hub, 1, Speed::High),
        Err(StepError::HubTooDeep { depth: 5 })
    );
    hub.attachment.route = 0x2345;
    let c = child_attachment(&hub, 7, Speed::High).unwrap();
    assert_eq!(c.route, 0x7_2345);
    assert_eq!(c.root_port, 3);
    // Ports above 15 are encoded as 15.
    hub.attachment.route = 0;
    assert_eq!(child_attachment(&hub, 20, Speed::High).unwrap().route, 0xF);
}

#[test]
fn port_change_bitmap() {
    assert_eq!(hub_port_changes(&[]).count(), 0);
    assert_eq!(hub_port_changes(&[0x01]).count(), 0);
    assert!(hub_status_changed(&[0x01]));
    assert!(!hub_status_changed(&[0x02]));
    assert_eq!(
        hub_port_changes(&[0xFE, 0x01]).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        hub_port_changes(&[0x00, 0x80, 0x01]).collect::<Vec<_>>(),
        vec![15, 16]
    );
    // A hostile 64-byte bitmap: ports stop at 255.
    assert_eq!(hub_port_changes(&[0xFF; 64]).count(), 255);
}

#[test]
fn slow_and_stuck_port_resets() {
    let mut hub_dev = FakeDevice::hub(true, 2)
        .plug(1, Speed::High, FakeDevice::qemu_usb_storage(true))
        .plug(2, Speed::High, FakeDevice::qemu_usb_storage(true));
    hub_dev.hub.as_mut().unwrap().ports[0].reset_polls = 3;
    hub_dev.hub.as_mut().unwrap().ports[1].reset_polls = 255;
    let mut hc = FakeHostController::new(8);
    let (hub, _) = bring_up(&mut hc, 1, Speed::High, hub_dev);
    let mut delays = Vec::new();
    attached(handle_port(&mut hc, &hub, 1, LANG_EN_US, &mut |ms| {
        delays.push(ms)
    }));
    assert_eq!(delays, vec![100, 10, 10, 10, 10, 10]);
    let err = handle_port(&mut hc, &hub, 2, LANG_EN_US, &mut |_| {}).unwrap_err();
    assert_eq!(err.port, Some(2));
    assert_eq!(err.error.step, crate::hub::step::PORT_RESET);
    assert_eq!(err.error.error, StepError::ResetTimeout);
    assert_eq!(
        err.to_string(),
        "hub port 2: SET_PORT_FEATURE(PORT_RESET): port reset did not complete"
    );
    assert_eq!(hc.live_handles(), 2);
}

#[test]
fn child_failure_names_port_and_step_and_leaks_nothing() {
    let bad = FakeDevice::qemu_usb_kbd().failing(FailRule::get_descriptor(
        dt::CONFIGURATION,
        0,
        TransferError::Stall,
    ));
    let hub_dev = FakeDevice::hub(false, 4).plug(4, Speed::Full, bad);
    let mut hc = FakeHostController::new(8);
    let (hub, _) = bring_up(&mut hc, 5, Speed::Full, hub_dev);
    let err = handle_port(&mut hc, &hub, 4, LANG_EN_US, &mut |_| {}).unwrap_err();
    assert_eq!(err.port, Some(4));
    assert_eq!(err.error.step, crate::enumerate::step::CONFIG_HEADER);
    assert_eq!(hc.live_handles(), 1); // only the hub
                                      // The port was disabled.
    let last = hc.requests_to(hub.handle).last().unwrap().setup;
    assert_eq!(
        last,
        SetupPacket::clear_port_feature(4, PortFeature::Enable)
    );
    assert!(!hc.device(hub.handle).unwrap().hub.as_ref().unwrap().ports[3].enabled);
}

#[test]
fn hub_bring_up_failures() {
    // Not a hub.
    let mut hc = FakeHostController::new(8);
    hc.plug(1, Speed::Full, FakeDevice::qemu_usb_kbd());
    hc.reset_port(1).unwrap();
    let kbd = enumerate(&mut hc, root(1, Speed::Full), LANG_EN_US).unwrap();
    let err = init_hub(&mut hc, &kbd, &mut |_| {}).unwrap_err();
    assert_eq!(err.error.error, StepError::NotAHub);

    // Hub descriptor STALLs.
    let mut hub = FakeDevice::hub(false, 4);
    hub.failures.push(FailRule {
        request_type: Some(0xA0),
        request: std_req::GET_DESCRIPTOR,
        value: Some(0x2900),
        error: TransferError::Stall,
        once: false,
        after: 0,
    });
    let mut hc = FakeHostController::new(8);
    hc.plug(1, Speed::Full, hub);
    hc.reset_port(1).unwrap();
    let dev = enumerate(&mut hc, root(1, Speed::Full), LANG_EN_US).unwrap();
    let err = init_hub(&mut hc, &dev, &mut |_| {}).unwrap_err();
    assert_eq!(err.error.step, crate::hub::step::GET_HUB_DESCRIPTOR);
    assert_eq!(err.to_string(), "hub: GET_HUB_DESCRIPTOR: stall");

    // Hostile hub descriptor: 200 ports.
    let mut hub = FakeDevice::hub(false, 4);
    let d = &mut hub.hub.as_mut().unwrap().descriptor;
    d[2] = 200;
    let mut hc = FakeHostController::new(8);
    hc.plug(1, Speed::Full, hub);
    hc.reset_port(1).unwrap();
    let dev = enumerate(&mut hc, root(1, Speed::Full), LANG_EN_US).unwrap();
    let err = init_hub(&mut hc, &dev, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.error.error,
        StepError::TooManyPorts {
            ports: 200,
            max: 31
        }
    );
}
