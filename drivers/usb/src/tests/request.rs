//! SETUP packets, hub descriptors and port status.

use crate::descriptor::ErrorKind;
use crate::request::*;
use crate::speed::Speed;
use std::vec::Vec;

#[test]
fn standard_requests_bytes() {
    assert_eq!(
        SetupPacket::get_device_descriptor(8).to_bytes(),
        [0x80, 6, 0, 1, 0, 0, 8, 0]
    );
    assert_eq!(
        SetupPacket::get_device_descriptor(18).to_bytes(),
        [0x80, 6, 0, 1, 0, 0, 18, 0]
    );
    assert_eq!(
        SetupPacket::get_configuration_descriptor(1, 9).to_bytes(),
        [0x80, 6, 1, 2, 0, 0, 9, 0]
    );
    assert_eq!(
        SetupPacket::get_configuration_descriptor(0, 0x1234).to_bytes(),
        [0x80, 6, 0, 2, 0, 0, 0x34, 0x12]
    );
    assert_eq!(
        SetupPacket::get_string_descriptor(3, 0x0409, 255).to_bytes(),
        [0x80, 6, 3, 3, 0x09, 0x04, 255, 0]
    );
    assert_eq!(
        SetupPacket::get_string_descriptor(0, 0, 255).to_bytes(),
        [0x80, 6, 0, 3, 0, 0, 255, 0]
    );
    assert_eq!(
        SetupPacket::get_device_qualifier(10).to_bytes(),
        [0x80, 6, 0, 6, 0, 0, 10, 0]
    );
    assert_eq!(
        SetupPacket::get_bos_descriptor(5).to_bytes(),
        [0x80, 6, 0, 0x0F, 0, 0, 5, 0]
    );
    assert_eq!(
        SetupPacket::set_address(5).unwrap().to_bytes(),
        [0, 5, 5, 0, 0, 0, 0, 0]
    );
    assert_eq!(SetupPacket::set_address(127).unwrap().value, 127);
    assert!(SetupPacket::set_address(128).is_none());
    assert_eq!(
        SetupPacket::set_configuration(2).to_bytes(),
        [0, 9, 2, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::get_configuration().to_bytes(),
        [0x80, 8, 0, 0, 0, 0, 1, 0]
    );
    assert_eq!(
        SetupPacket::set_interface(1, 1).to_bytes(),
        [0x01, 11, 1, 0, 1, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::get_interface(1).to_bytes(),
        [0x81, 10, 0, 0, 1, 0, 1, 0]
    );
    assert_eq!(
        SetupPacket::clear_endpoint_halt(0x82).to_bytes(),
        [0x02, 1, 0, 0, 0x82, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::clear_endpoint_halt(0x02).to_bytes(),
        [0x02, 1, 0, 0, 0x02, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::get_status(rt::DEVICE, 0).to_bytes(),
        [0x80, 0, 0, 0, 0, 0, 2, 0]
    );
    assert_eq!(
        SetupPacket::get_status(rt::ENDPOINT, 0x81).to_bytes(),
        [0x82, 0, 0, 0, 0x81, 0, 2, 0]
    );
}

#[test]
fn cdc_requests_bytes() {
    let f = packet_filter::DIRECTED | packet_filter::BROADCAST | packet_filter::ALL_MULTICAST;
    assert_eq!(f, 0x0E);
    assert_eq!(
        SetupPacket::set_ethernet_packet_filter(0, f).to_bytes(),
        [0x21, 0x43, 0x0E, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::send_encapsulated_command(0, 52).to_bytes(),
        [0x21, 0x00, 0, 0, 0, 0, 52, 0]
    );
    assert_eq!(
        SetupPacket::get_encapsulated_response(0, 1025).to_bytes(),
        [0xA1, 0x01, 0, 0, 0, 0, 0x01, 0x04]
    );
}

#[test]
fn hub_requests_bytes() {
    assert_eq!(
        SetupPacket::get_hub_descriptor(false, 71).to_bytes(),
        [0xA0, 6, 0, 0x29, 0, 0, 71, 0]
    );
    assert_eq!(
        SetupPacket::get_hub_descriptor(true, 12).to_bytes(),
        [0xA0, 6, 0, 0x2A, 0, 0, 12, 0]
    );
    assert_eq!(
        SetupPacket::get_hub_status().to_bytes(),
        [0xA0, 0, 0, 0, 0, 0, 4, 0]
    );
    assert_eq!(
        SetupPacket::get_port_status(3).to_bytes(),
        [0xA3, 0, 0, 0, 3, 0, 4, 0]
    );
    assert_eq!(
        SetupPacket::set_port_feature(1, PORT_POWER).to_bytes(),
        [0x23, 3, 8, 0, 1, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::set_port_feature(2, PORT_RESET).to_bytes(),
        [0x23, 3, 4, 0, 2, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::clear_port_feature(2, C_PORT_CONNECTION).to_bytes(),
        [0x23, 1, 16, 0, 2, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::clear_port_feature(2, C_PORT_RESET).to_bytes(),
        [0x23, 1, 20, 0, 2, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::clear_port_feature(4, PortFeature::BhPortReset).value,
        28
    );
    assert_eq!(
        SetupPacket::clear_hub_feature(HubFeature::CHubOverCurrent).to_bytes(),
        [0x20, 1, 1, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        SetupPacket::set_hub_depth(1).to_bytes(),
        [0x20, 12, 1, 0, 0, 0, 0, 0]
    );
}

#[test]
fn setup_roundtrip_and_trt() {
    let p = SetupPacket::new(0xC1, 0x42, 0xBEEF, 0x1234, 0x0102);
    assert_eq!(SetupPacket::from_bytes(p.to_bytes()), p);
    assert_eq!(p.to_u64().to_le_bytes(), p.to_bytes());
    assert_eq!(p.xhci_transfer_type(), 3);
    assert_eq!(SetupPacket::set_configuration(1).xhci_transfer_type(), 0);
    assert_eq!(
        SetupPacket::send_encapsulated_command(0, 8).xhci_transfer_type(),
        2
    );
}

#[test]
fn usb2_hub_descriptor() {
    // QEMU usb-hub style: 8 ports, individual power switching, 2 ms power-on.
    let d = HubDescriptor::parse(&[9, 0x29, 8, 0x09, 0, 1, 0, 0x04, 0xFF]).unwrap();
    assert!(!d.superspeed);
    assert_eq!(d.num_ports, 8);
    assert_eq!(d.power_switching(), PowerSwitching::Individual);
    assert!(!d.compound());
    assert_eq!(d.power_on_to_good_ms, 2);
    assert!(!d.port_removable(2));
    assert!(d.port_removable(1));
    assert_eq!(d.tt_think_time_bits(), 8);
    // 15 ports -> 2 DeviceRemovable bytes.
    let d =
        HubDescriptor::parse(&[11, 0x29, 15, 0xA4, 0, 50, 100, 0x00, 0x80, 0xFF, 0xFF]).unwrap();
    assert_eq!(d.power_switching(), PowerSwitching::Ganged);
    assert!(d.compound() && d.port_indicators());
    assert_eq!(d.tt_think_time_bits(), 16);
    assert_eq!(d.power_on_to_good_ms, 100);
    assert!(!d.port_removable(15));
    assert_eq!(
        HubDescriptor::parse(&[7, 0x29, 4, 2, 0, 1, 0])
            .unwrap()
            .power_switching(),
        PowerSwitching::None
    );
    // Errors.
    assert!(matches!(
        HubDescriptor::parse(&[6, 0x29, 4, 0, 0, 1])
            .unwrap_err()
            .kind,
        ErrorKind::BadLength { .. }
    ));
    assert!(matches!(
        HubDescriptor::parse(&[9, 0x29, 4, 0, 0]).unwrap_err().kind,
        ErrorKind::Truncated { .. }
    ));
    assert!(matches!(
        HubDescriptor::parse(&[9, 0x05, 4]).unwrap_err().kind,
        ErrorKind::WrongType { .. }
    ));
    assert!(HubDescriptor::parse(&[9]).is_err());
    // Many ports, no panic.
    let mut big = std::vec![255u8, 0x29, 255, 0, 0, 0, 0];
    big.resize(255, 0xFF);
    assert_eq!(HubDescriptor::parse(&big).unwrap().num_ports, 255);
    assert!(HubDescriptor::parse(&big).unwrap().port_removable(200));
}

#[test]
fn ss_hub_descriptor() {
    let d =
        HubDescriptor::parse(&[12, 0x2A, 4, 0x09, 0, 10, 0, 0, 0x20, 0x00, 0x04, 0x00]).unwrap();
    assert!(d.superspeed);
    assert_eq!(d.num_ports, 4);
    assert_eq!(d.power_on_to_good_ms, 20);
    assert_eq!(d.hub_delay_ns, 0x20);
    assert!(!d.port_removable(2));
    assert!(!d.port_indicators());
    assert!(HubDescriptor::parse(&[9, 0x2A, 4, 0, 0, 1, 0, 0, 0]).is_err());
}

#[test]
fn usb2_port_status() {
    // Connected, enabled, powered, high speed; connection + reset changed.
    let s = PortStatus::parse(&[0x03, 0x05, 0x11, 0x00], false).unwrap();
    assert!(s.connected() && s.enabled() && s.powered() && !s.resetting());
    assert_eq!(s.speed(), Some(Speed::High));
    assert!(s.connection_changed() && s.reset_changed() && !s.enable_changed());
    let clear: Vec<_> = s.changes_to_clear().collect();
    assert_eq!(clear, [PortFeature::CConnection, PortFeature::CReset]);
    let low = PortStatus::parse(&[0x01, 0x03, 0, 0], false).unwrap();
    assert_eq!(low.speed(), Some(Speed::Low));
    let full = PortStatus::parse(&[0x01, 0x01, 0, 0], false).unwrap();
    assert_eq!(full.speed(), Some(Speed::Full));
    let empty = PortStatus::parse(&[0x00, 0x01, 0x01, 0], false).unwrap();
    assert_eq!(empty.speed(), None);
    assert!(empty.powered() && empty.connection_changed());
    let rst = PortStatus::parse(&[0x19, 0x01, 0x1F, 0], false).unwrap();
    assert!(rst.resetting() && rst.over_current());
    assert_eq!(rst.changes_to_clear().count(), 5);
    assert!(PortStatus::parse(&[0, 0, 0], false).is_err());
}

#[test]
fn ss_port_status() {
    // Connected, enabled, link U0, powered (bit 9).
    let s = PortStatus::parse(&[0x03, 0x02, 0xC1, 0x00], true).unwrap();
    assert!(s.connected() && s.enabled() && s.powered());
    assert_eq!(s.link_state(), Some(0));
    assert_eq!(s.speed(), Some(Speed::Super));
    let clear: Vec<_> = s.changes_to_clear().collect();
    assert_eq!(
        clear,
        [
            PortFeature::CConnection,
            PortFeature::CLinkState,
            PortFeature::CConfigError
        ]
    );
    let rx = PortStatus::parse(&[0xA0, 0x02, 0, 0], true).unwrap();
    assert_eq!(rx.link_state(), Some(5));
    assert_eq!(rx.speed(), None);
    assert_eq!(
        PortStatus::parse(&[0; 4], false).unwrap().link_state(),
        None
    );
}
