//! Enumeration against the fake controller: QEMU's devices, stalls, failures at every step,
//! hostile descriptors, and the device table.

use super::*;
use crate::descriptor::{dt, ErrorKind, LANG_EN_US};
use crate::device::*;
use crate::enumerate::*;
use crate::fake::*;
use crate::host::{Attachment, HostController, TransferError};
use crate::request::{std_req, SetupPacket};
use crate::speed::Speed;
use std::string::{String, ToString};
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

/// Plugs `dev` into root port `port`, resets it and enumerates it.
fn plug_and_enumerate(
    hc: &mut FakeHostController,
    port: u8,
    speed: Speed,
    dev: FakeDevice,
) -> Result<UsbDevice, EnumerateError> {
    hc.plug(port, speed, dev);
    let s = hc.reset_port(port).unwrap();
    enumerate(hc, root(port, s), LANG_EN_US)
}

fn requests(hc: &FakeHostController) -> Vec<(u8, u8, u16, u16)> {
    hc.requests
        .iter()
        .map(|r| {
            (
                r.setup.request_type,
                r.setup.request,
                r.setup.value,
                r.setup.length,
            )
        })
        .collect()
}

#[test]
fn qemu_usb_net() {
    let mut hc = FakeHostController::new(8);
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, FakeDevice::qemu_usb_net()).unwrap();
    assert_eq!(
        (d.descriptor.vendor, d.descriptor.product),
        (0x0525, 0xa4a2)
    );
    assert_eq!(d.ep0_max_packet, 64);
    // Full speed starts EP0 at 8; bMaxPacketSize0 64 needs the fix-up.
    assert_eq!(hc.ep0_updates, vec![(d.handle, 64)]);
    assert_eq!(d.configurations.len(), 2);
    assert_eq!(d.configurations[0].value, 2); // RNDIS at index 0
    assert_eq!(d.configurations[1].value, 1); // ECM at index 1
    assert!(d
        .configuration(1)
        .unwrap()
        .interface(1)
        .unwrap()
        .alt(1)
        .is_some());
    assert_eq!(d.language, Some(LANG_EN_US));
    assert_eq!(d.manufacturer.as_deref(), Some("QEMU"));
    assert_eq!(d.product.as_deref(), Some("RNDIS/QEMU USB Network Device"));
    assert_eq!(d.serial.as_deref(), Some("400102030405"));
    assert_eq!(hc.live_handles(), 1);

    // The exact request sequence.
    let gd = |ty: u8, i: u8, len: u16| {
        (
            0x80,
            std_req::GET_DESCRIPTOR,
            (ty as u16) << 8 | i as u16,
            len,
        )
    };
    assert_eq!(
        requests(&hc),
        vec![
            gd(dt::DEVICE, 0, 8),
            gd(dt::DEVICE, 0, 18),
            gd(dt::CONFIGURATION, 0, 9),
            gd(dt::CONFIGURATION, 0, qemu_rndis_config().len() as u16),
            gd(dt::CONFIGURATION, 1, 9),
            gd(dt::CONFIGURATION, 1, qemu_ecm_config().len() as u16),
            gd(dt::STRING, 0, 255),
            gd(dt::STRING, 1, 255),
            gd(dt::STRING, 2, 255),
            gd(dt::STRING, 3, 255),
        ]
    );
    assert!(hc.requests.iter().all(|r| r.result.is_ok()));
    assert_eq!(hc.requests[6].setup.index, 0);
    assert_eq!(hc.requests[7].setup.index, LANG_EN_US);

    // usb-net STALLs the device qualifier: a full-speed-only answer, and EP0 keeps working.
    assert_eq!(probe_device_qualifier(&mut hc, &d), Ok(None));
    assert_eq!(
        hc.requests.last().unwrap().result,
        Err(TransferError::Stall)
    );
    set_configuration(&mut hc, &d, 1).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        hc.control_transfer(d.handle, SetupPacket::get_configuration(), &mut b, 100),
        Ok(1)
    );
    assert_eq!(b[0], 1);
    assert_eq!(
        set_configuration(&mut hc, &d, 3),
        Err(EnumerateError {
            step: step::SET_CONFIGURATION,
            error: StepError::NoSuchConfiguration(3)
        })
    );
}

#[test]
fn device_qualifier_present() {
    let mut hc = FakeHostController::new(8);
    let mut dev = FakeDevice::qemu_usb_storage(true);
    let q = [10, 6, 0x00, 0x02, 0, 0, 0, 64, 1, 0];
    dev.other_descriptors.push((0x0600, q.to_vec()));
    let d = plug_and_enumerate(&mut hc, 1, Speed::High, dev).unwrap();
    assert_eq!(probe_device_qualifier(&mut hc, &d), Ok(Some(q)));
}

#[test]
fn device_qualifier_other_errors_pass_through() {
    let mut hc = FakeHostController::new(8);
    let dev = FakeDevice::qemu_usb_net().failing(FailRule::get_descriptor(
        dt::DEVICE_QUALIFIER,
        0,
        TransferError::Timeout,
    ));
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap();
    assert_eq!(
        probe_device_qualifier(&mut hc, &d),
        Err(TransferError::Timeout)
    );
}

#[test]
fn qemu_usb_kbd_full_and_low_speed() {
    for speed in [Speed::Full, Speed::Low] {
        let mut hc = FakeHostController::new(8);
        let d = plug_and_enumerate(&mut hc, 6, speed, FakeDevice::qemu_usb_kbd()).unwrap();
        assert_eq!(
            (d.descriptor.vendor, d.descriptor.product),
            (0x0627, 0x0001)
        );
        // bMaxPacketSize0 8 is the low/full-speed default: no fix-up.
        assert_eq!(d.ep0_max_packet, 8);
        assert!(hc.ep0_updates.is_empty());
        let alt = d.configurations[0].interface(0).unwrap().alt(0).unwrap();
        assert_eq!((alt.class, alt.subclass, alt.protocol), (3, 1, 1));
        assert_eq!(d.product.as_deref(), Some("QEMU USB Keyboard"));
        assert_eq!(d.serial.as_deref(), Some("42"));
        let s = DeviceSummary::new("xhci0", 1, &d, None);
        assert_eq!((s.class, s.class_name()), (3, "HID (keyboard)"));
        assert_eq!(s.speed, speed);
    }
}

#[test]
fn ep0_not_fixed_up_babbles() {
    // The fake models what a real controller does when EP0 is programmed too small: a
    // device with bMaxPacketSize0 64 at full speed babbles on an 18-byte read. This is what
    // the fix-up step prevents; check the fake really enforces it.
    let mut hc = FakeHostController::new(8);
    hc.plug(5, Speed::Full, FakeDevice::qemu_usb_net());
    hc.reset_port(5).unwrap();
    let h = hc.address_device(root(5, Speed::Full)).unwrap();
    let mut b = [0u8; 18];
    assert_eq!(
        hc.control_transfer(h, SetupPacket::get_device_descriptor(18), &mut b, 100),
        Err(TransferError::Babble)
    );
    assert_eq!(
        hc.control_transfer(h, SetupPacket::get_device_descriptor(8), &mut b, 100),
        Ok(8)
    );
    hc.set_ep0_max_packet(h, 64).unwrap();
    assert_eq!(
        hc.control_transfer(h, SetupPacket::get_device_descriptor(18), &mut b, 100),
        Ok(18)
    );
}

#[test]
fn qemu_usb_storage() {
    let mut hc = FakeHostController::new(8);
    let d =
        plug_and_enumerate(&mut hc, 7, Speed::High, FakeDevice::qemu_usb_storage(true)).unwrap();
    // High speed starts at 64 already.
    assert!(hc.ep0_updates.is_empty());
    assert_eq!(d.descriptor.class, 0);
    let s = DeviceSummary::new("xhci0", 1, &d, Some("usb-storage"));
    assert_eq!(s.class, 8);
    assert_eq!(s.class_name(), "Mass Storage (BOT)");
    assert_eq!(s.port_path, "1-7");
    let alt = d.configurations[0].interface(0).unwrap().alt(0).unwrap();
    assert_eq!(alt.endpoints[0].max_packet_size(), 512);
}

#[test]
fn strings_are_not_fatal() {
    // Product string STALLs: recorded as None, the rest read.
    let mut hc = FakeHostController::new(8);
    let dev = FakeDevice::qemu_usb_net().failing(FailRule::get_descriptor(
        dt::STRING,
        2,
        TransferError::Stall,
    ));
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap();
    assert_eq!(d.manufacturer.as_deref(), Some("QEMU"));
    assert_eq!(d.product, None);
    assert_eq!(d.serial.as_deref(), Some("400102030405"));

    // Language list STALLs: no strings at all, enumeration still succeeds.
    let mut hc = FakeHostController::new(8);
    let dev = FakeDevice::qemu_usb_net().failing(FailRule::get_descriptor(
        dt::STRING,
        0,
        TransferError::Stall,
    ));
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap();
    assert_eq!(
        (d.language, d.manufacturer, d.product, d.serial),
        (None, None, None, None)
    );
    assert_eq!(hc.live_handles(), 1);

    // Every string read times out.
    let mut hc = FakeHostController::new(8);
    let dev = FakeDevice::qemu_usb_net()
        .failing(FailRule::any_descriptor_of_type(dt::STRING, TransferError::Timeout).after(1));
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap();
    assert_eq!(d.language, Some(LANG_EN_US));
    assert_eq!((d.manufacturer, d.product, d.serial), (None, None, None));

    // A garbage string (wrong descriptor type) is None too.
    let mut hc = FakeHostController::new(8);
    let mut dev = FakeDevice::qemu_usb_net();
    dev.strings.retain(|s| s.0 != 1);
    dev.strings.push((1, vec![4, 0x05, b'a', 0]));
    let d = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap();
    assert_eq!(d.manufacturer, None);
    assert_eq!(d.product.as_deref(), Some("RNDIS/QEMU USB Network Device"));
}

#[test]
fn string_language_choice() {
    // Preferred language offered → used; otherwise the first listed.
    for (preferred, expect) in [(0x0407u16, 0x0407u16), (0x040C, 0x0409)] {
        let mut hc = FakeHostController::new(8);
        let mut dev = FakeDevice::qemu_usb_kbd();
        dev.strings.retain(|s| s.0 != 0);
        dev.strings.push((0, languages(&[0x0409, 0x0407])));
        hc.plug(1, Speed::Full, dev);
        hc.reset_port(1).unwrap();
        let d = enumerate(&mut hc, root(1, Speed::Full), preferred).unwrap();
        assert_eq!(d.language, Some(expect));
        assert_eq!(hc.requests.last().unwrap().setup.index, expect);
    }
    // No string indices at all: no string requests.
    let mut hc = FakeHostController::new(8);
    let mut desc = qemu_kbd_device();
    desc[14..17].copy_from_slice(&[0, 0, 0]);
    let dev = FakeDevice::new(&desc, vec![qemu_kbd_config()]);
    let d = plug_and_enumerate(&mut hc, 1, Speed::Full, dev).unwrap();
    assert_eq!(d.language, None);
    assert_eq!(hc.requests.len(), 4);
}

/// A failure at each step releases the device and names the step.
#[test]
fn failure_at_each_step_releases_the_device() {
    type Setup = fn(&mut FakeDevice);
    let cases: Vec<(&str, &'static str, Setup)> = vec![
        ("address", step::ADDRESS, |d| {
            d.address_error = Some(TransferError::Timeout)
        }),
        ("device 8", step::DEVICE8, |d| {
            d.failures.push(FailRule::get_descriptor(
                dt::DEVICE,
                0,
                TransferError::Stall,
            ))
        }),
        ("ep0", step::EP0, |d| {
            d.ep0_error = Some(TransferError::Controller("evaluate context".into()))
        }),
        ("device 18", step::DEVICE18, |d| {
            d.failures
                .push(FailRule::get_descriptor(dt::DEVICE, 0, TransferError::Transaction).after(1))
        }),
        ("config header", step::CONFIG_HEADER, |d| {
            d.failures.push(FailRule::get_descriptor(
                dt::CONFIGURATION,
                1,
                TransferError::Timeout,
            ))
        }),
        ("config full", step::CONFIG_FULL, |d| {
            d.failures.push(
                FailRule::get_descriptor(dt::CONFIGURATION, 1, TransferError::Babble).after(1),
            )
        }),
        ("config disconnected", step::CONFIG_FULL, |d| {
            d.failures.push(
                FailRule::get_descriptor(dt::CONFIGURATION, 0, TransferError::Disconnected)
                    .after(1),
            )
        }),
    ];
    for (name, expected_step, setup) in cases {
        let mut hc = FakeHostController::new(8);
        let mut dev = FakeDevice::qemu_usb_net();
        setup(&mut dev);
        let err = plug_and_enumerate(&mut hc, 5, Speed::Full, dev).unwrap_err();
        assert_eq!(err.step, expected_step, "{name}: {err}");
        assert!(matches!(err.error, StepError::Transfer(_)), "{name}: {err}");
        assert_eq!(hc.live_handles(), 0, "{name} leaked a device");
        if expected_step == step::ADDRESS {
            assert!(hc.released.is_empty());
        } else {
            assert_eq!(hc.released, vec![1], "{name}");
        }
        assert!(err.to_string().starts_with(expected_step), "{name}: {err}");
    }
}

#[test]
fn error_display_names_the_step() {
    let e = EnumerateError {
        step: step::DEVICE18,
        error: StepError::Transfer(TransferError::Stall),
    };
    assert_eq!(e.to_string(), "GET_DESCRIPTOR(device, 18): stall");
    let e = EnumerateError {
        step: step::CONFIG_HEADER,
        error: StepError::ConfigTooLarge {
            declared: 65535,
            max: 4096,
        },
    };
    assert_eq!(
        e.to_string(),
        "GET_DESCRIPTOR(configuration, 9): wTotalLength 65535 exceeds the limit of 4096 bytes"
    );
}

fn enumerate_hostile(dev: FakeDevice, speed: Speed) -> (EnumerateError, FakeHostController) {
    let mut hc = FakeHostController::new(8);
    let err = plug_and_enumerate(&mut hc, 2, speed, dev).unwrap_err();
    assert_eq!(hc.live_handles(), 0, "{err}");
    (err, hc)
}

#[test]
fn hostile_total_length() {
    let mut cfg = qemu_ecm_config();
    cfg[2] = 0xFF;
    cfg[3] = 0xFF;
    let (err, hc) = enumerate_hostile(
        FakeDevice::new(&qemu_net_device(), vec![qemu_rndis_config(), cfg]),
        Speed::Full,
    );
    assert_eq!(err.step, step::CONFIG_HEADER);
    assert_eq!(
        err.error,
        StepError::ConfigTooLarge {
            declared: 65535,
            max: MAX_CONFIG_TOTAL_LENGTH
        }
    );
    // Never asked for the 64 KiB.
    assert!(hc.requests.iter().all(|r| r.setup.length <= 4096));
}

#[test]
fn hostile_200_interfaces() {
    // 200 interface descriptors, bNumInterfaces 200: refused from the header.
    let mut body = Vec::new();
    for i in 0..200u8 {
        body.extend_from_slice(&iface(i, 0, 0, 0xFF, 0, 0));
    }
    let cfg = config(1, 200, &body);
    let dev = FakeDevice::new(&qemu_kbd_device(), vec![cfg.clone()]);
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::CONFIG_HEADER);
    assert_eq!(
        err.error,
        StepError::TooManyInterfaces {
            declared: 200,
            max: 32
        }
    );
    assert!(err.to_string().contains("bNumInterfaces 200"), "{err}");

    // The same body claiming 1 interface: the parser stops at the 33rd.
    let mut cfg = cfg;
    cfg[4] = 1;
    let dev = FakeDevice::new(&qemu_kbd_device(), vec![cfg]);
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::CONFIG_PARSE);
    match err.error {
        StepError::Parse(p) => {
            assert_eq!(p.kind, ErrorKind::TooManyInterfaces);
            assert_eq!(p.offset, 9 + 32 * 9);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_short_and_inconsistent_answers() {
    // Configuration shorter than its wTotalLength.
    let mut dev = FakeDevice::qemu_usb_kbd();
    let c = &mut dev.configurations[0];
    let declared = c.len() as u16 + 20;
    c[2] = declared as u8;
    c[3] = (declared >> 8) as u8;
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::CONFIG_PARSE);
    assert!(matches!(
        err.error,
        StepError::Parse(p) if matches!(p.kind, ErrorKind::TotalLengthMismatch { .. })
    ));

    // Device descriptor of 4 bytes.
    let mut dev = FakeDevice::qemu_usb_kbd();
    dev.device_descriptor.truncate(4);
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::DEVICE8);
    assert!(matches!(err.error, StepError::Parse(_)));

    // bMaxPacketSize0 64 on a low-speed device.
    let dev = FakeDevice::qemu_usb_net();
    let (err, _) = enumerate_hostile(dev, Speed::Low);
    assert_eq!(
        err.error,
        StepError::BadMaxPacket0 {
            value: 64,
            speed: Speed::Low
        }
    );

    // bMaxPacketSize0 7.
    let mut dev = FakeDevice::qemu_usb_kbd();
    dev.device_descriptor[7] = 7;
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::DEVICE8);

    // No configurations.
    let mut dev = FakeDevice::qemu_usb_kbd();
    dev.device_descriptor[17] = 0;
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(
        (err.step, err.error),
        (step::DEVICE18, StepError::NoConfigurations)
    );

    // Claims 3 configurations, has 1: index 1 STALLs.
    let mut dev = FakeDevice::qemu_usb_kbd();
    dev.device_descriptor[17] = 3;
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(
        (err.step, err.error),
        (
            step::CONFIG_HEADER,
            StepError::Transfer(TransferError::Stall)
        )
    );

    // Configuration descriptor index answered with a string descriptor.
    let mut dev = FakeDevice::qemu_usb_kbd();
    dev.configurations[0] = string_desc("hello hello");
    let (err, _) = enumerate_hostile(dev, Speed::Full);
    assert_eq!(err.step, step::CONFIG_HEADER);
}

#[test]
fn many_configurations_are_capped() {
    let mut desc = qemu_kbd_device();
    desc[17] = 200;
    let configs: Vec<Vec<u8>> = (1..=200u8)
        .map(|v| {
            let mut c = qemu_kbd_config();
            c[5] = v;
            c
        })
        .collect();
    let mut hc = FakeHostController::new(8);
    let d = plug_and_enumerate(&mut hc, 1, Speed::Full, FakeDevice::new(&desc, configs)).unwrap();
    assert_eq!(d.configurations.len(), MAX_CONFIGURATIONS);
}

#[test]
fn every_handle_released_across_many_enumerations() {
    let mut hc = FakeHostController::new(8);
    hc.plug(5, Speed::Full, FakeDevice::qemu_usb_net());
    hc.reset_port(5).unwrap();
    for _ in 0..50 {
        let d = enumerate(&mut hc, root(5, Speed::Full), LANG_EN_US).unwrap();
        hc.release_device(d.handle).unwrap();
    }
    assert_eq!(hc.live_handles(), 0);
    // Not reset: address_device fails, nothing to release.
    hc.plug(6, Speed::Full, FakeDevice::qemu_usb_kbd());
    let err = enumerate(&mut hc, root(6, Speed::Full), LANG_EN_US).unwrap_err();
    assert_eq!(err.step, step::ADDRESS);
    assert_eq!(hc.live_handles(), 0);
}

#[test]
fn device_table() {
    let mut hc = FakeHostController::new(8);
    let net = plug_and_enumerate(&mut hc, 5, Speed::Full, FakeDevice::qemu_usb_net()).unwrap();
    let kbd = plug_and_enumerate(&mut hc, 6, Speed::Full, FakeDevice::qemu_usb_kbd()).unwrap();
    let sto =
        plug_and_enumerate(&mut hc, 7, Speed::High, FakeDevice::qemu_usb_storage(true)).unwrap();
    let rows = vec![
        DeviceSummary::new("xhci0", 1, &net, Some("cdc-ecm")),
        DeviceSummary::new("xhci0", 1, &kbd, None),
        DeviceSummary::new("xhci0", 1, &sto, None),
    ];
    let t = format_table(&rows);
    let expected = "\
CONTROLLER  PORT  SPEED  VID:PID    CLASS                  DRIVER
xhci0       1-5   full   0525:a4a2  02 CDC                 cdc-ecm
xhci0       1-6   full   0627:0001  03 HID (keyboard)      no driver
xhci0       1-7   high   46f4:0001  08 Mass Storage (BOT)  no driver
";
    assert_eq!(t, expected, "\n{t}");
    assert_eq!(format_table(&[]).lines().count(), 1);
}

#[test]
fn port_paths_and_class_names() {
    let mut at = root(5, Speed::Full);
    assert_eq!(port_path(1, &at), "1-5");
    at.route = 0x2;
    assert_eq!(port_path(1, &at), "1-5.2");
    at.route = 0x31;
    assert_eq!(port_path(2, &at), "2-5.1.3");
    assert_eq!(class_name(0x09), "Hub");
    assert_eq!(class_name(0xFF), "Vendor");
    assert_eq!(class_name(0x42), "Unknown");
    assert_eq!(function_name(0xE0, 1, 3), "Wireless (RNDIS)");
    assert_eq!(function_name(0xE0, 1, 1), "Wireless");
    assert_eq!(function_name(2, 2, 0xFF), "CDC (RNDIS)");
    let _: String = class_name(8).to_string();
}

/// Randomly corrupted usb-net and keyboard blobs: enumeration never panics, and a device is
/// either returned (one live handle) or released (none).
#[test]
fn fuzzed_devices_never_panic_or_leak() {
    let mut r = super::fuzz::XorShift(0x5eed_1234_abcd_0001);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..3000 {
        let mut dev = if i % 2 == 0 {
            FakeDevice::qemu_usb_net()
        } else {
            FakeDevice::qemu_usb_kbd()
        };
        let blobs: usize = 1 + dev.configurations.len() + dev.strings.len();
        for _ in 0..1 + r.below(4) {
            let which = r.below(blobs);
            let blob = if which == 0 {
                &mut dev.device_descriptor
            } else if which <= dev.configurations.len() {
                &mut dev.configurations[which - 1]
            } else {
                &mut dev.strings[which - 1 - dev.configurations.len()].1
            };
            match r.below(3) {
                0 if !blob.is_empty() => {
                    let at = r.below(blob.len());
                    blob[at] = r.byte();
                }
                1 => {
                    let n = r.below(blob.len() + 1);
                    blob.truncate(n);
                }
                _ => blob.push(r.byte()),
            }
        }
        let speed = [Speed::Low, Speed::Full, Speed::High][r.below(3)];
        let mut hc = FakeHostController::new(2);
        match plug_and_enumerate(&mut hc, 1, speed, dev) {
            Ok(d) => {
                ok += 1;
                assert_eq!(hc.live_handles(), 1);
                let _ = DeviceSummary::new("xhci0", 1, &d, None);
            }
            Err(e) => {
                failed += 1;
                assert_eq!(hc.live_handles(), 0, "{e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Both outcomes are exercised.
    assert!(ok > 100 && failed > 100, "ok {ok} failed {failed}");
}
