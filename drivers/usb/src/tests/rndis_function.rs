//! Finding the RNDIS function's interfaces and endpoints in a configuration.

use super::*;
use crate::descriptor::*;
use crate::rndis::find_interfaces;

fn parse(bytes: &[u8]) -> Configuration {
    Configuration::parse(bytes).unwrap()
}

const RNDIS_COMM: [u8; 9] = [9, 4, 0, 0, 1, 0x02, 0x02, 0xFF, 0];

#[test]
fn qemu_usb_net_rndis_configuration() {
    let found = find_interfaces(&parse(&qemu_rndis_config())).unwrap();
    assert_eq!(found.control_interface, 0);
    assert_eq!(found.data_interface, 1);
    assert_eq!(found.data_alt, 0);
    assert_eq!(found.bulk_in.address, 0x82);
    assert_eq!(found.bulk_out.address, 0x02);
    assert_eq!(found.bulk_out.max_packet_size(), 64);
    assert_eq!(found.notify.map(|e| e.address), Some(0x81));
    // The ECM configuration of the same device has no RNDIS function.
    assert_eq!(find_interfaces(&parse(&qemu_ecm_config())), None);
}

#[test]
fn without_a_union_the_next_interface_carries_data() {
    let body = [
        &RNDIS_COMM[..],
        &ep(0x83, 0x03, 8, 1),
        &iface(1, 0, 0, 0x0A, 0, 0),
        &iface(1, 1, 2, 0x0A, 0, 0),
        &ep(0x81, 0x02, 512, 0),
        &ep(0x01, 0x02, 512, 0),
    ]
    .concat();
    let found = find_interfaces(&parse(&config(1, 2, &body))).unwrap();
    assert_eq!((found.data_interface, found.data_alt), (1, 1));
    assert_eq!(found.bulk_in.max_packet_size(), 512);
    assert_eq!(found.notify.map(|e| e.address), Some(0x83));
}

#[test]
fn wireless_class_rndis_is_found() {
    let body = [
        &iface(0, 0, 0, 0xE0, 0x01, 0x03)[..],
        &[5, 0x24, 0x06, 0, 1],
        &iface(1, 0, 2, 0x0A, 0, 0),
        &ep(0x81, 0x02, 64, 0),
        &ep(0x02, 0x02, 64, 0),
    ]
    .concat();
    let found = find_interfaces(&parse(&config(1, 2, &body))).unwrap();
    assert_eq!(found.control_interface, 0);
    assert_eq!(found.notify, None);
}

#[test]
fn hostile_layouts_are_refused() {
    // The union names an interface that does not exist.
    let dangling = [
        &RNDIS_COMM[..],
        &[5, 0x24, 0x06, 0, 7],
        &iface(1, 0, 2, 0x0A, 0, 0),
        &ep(0x82, 0x02, 64, 0),
        &ep(0x02, 0x02, 64, 0),
    ]
    .concat();
    assert_eq!(find_interfaces(&parse(&config(1, 2, &dangling))), None);
    // The union names the communication interface itself.
    let itself = [&RNDIS_COMM[..], &[5, 0x24, 0x06, 0, 0]].concat();
    assert_eq!(find_interfaces(&parse(&config(1, 1, &itself))), None);
    // The data interface lacks bulk OUT (two bulk IN instead).
    let no_out = [
        &RNDIS_COMM[..],
        &[5, 0x24, 0x06, 0, 1],
        &iface(1, 0, 2, 0x0A, 0, 0),
        &ep(0x82, 0x02, 64, 0),
        &ep(0x83, 0x02, 64, 0),
    ]
    .concat();
    assert_eq!(find_interfaces(&parse(&config(1, 2, &no_out))), None);
    // Interface number 255 without a union: there is no next interface.
    let last = [9, 4, 255, 0, 0, 0x02, 0x02, 0xFF, 0];
    assert_eq!(find_interfaces(&parse(&config(1, 1, &last))), None);
}
