//! Host tests. Descriptor bytes are built by hand from the USB/CDC layouts.

mod descriptor;
mod fuzz;
mod matching;
mod qemu;
mod request;
mod speed;

use std::vec::Vec;

/// Wraps a configuration body with a 9-byte header carrying the right wTotalLength.
pub fn config(value: u8, num_interfaces: u8, body: &[u8]) -> Vec<u8> {
    let total = (9 + body.len()) as u16;
    let mut v = std::vec![
        9,
        2,
        total as u8,
        (total >> 8) as u8,
        num_interfaces,
        value,
        0,
        0xC0,
        50
    ];
    v.extend_from_slice(body);
    v
}

pub fn iface(number: u8, alt: u8, eps: u8, class: u8, sub: u8, proto: u8) -> [u8; 9] {
    [9, 4, number, alt, eps, class, sub, proto, 0]
}

pub fn ep(address: u8, attributes: u8, max_packet: u16, interval: u8) -> [u8; 7] {
    [
        7,
        5,
        address,
        attributes,
        max_packet as u8,
        (max_packet >> 8) as u8,
        interval,
    ]
}

/// QEMU usb-net device descriptor (from FACTS.md).
pub fn qemu_net_device() -> [u8; 18] {
    [
        18, 1, 0x00, 0x02, 2, 0, 0, 64, 0x25, 0x05, 0xa2, 0xa4, 0x00, 0x01, 1, 2, 3, 2,
    ]
}

/// QEMU usb-net CDC-ECM configuration (value 1, descriptor index 1).
pub fn qemu_ecm_config() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&iface(0, 0, 1, 0x02, 0x06, 0x00));
    b.extend_from_slice(&[5, 0x24, 0x00, 0x10, 0x01]); // header, CDC 1.10
    b.extend_from_slice(&[5, 0x24, 0x06, 0, 1]); // union master 0, slave 1
    b.extend_from_slice(&[13, 0x24, 0x0F, 3, 0, 0, 0, 0, 0xEA, 0x05, 0, 0, 0]); // ethernet
    b.extend_from_slice(&ep(0x81, 0x03, 16, 32));
    b.extend_from_slice(&iface(1, 0, 0, 0x0A, 0, 0));
    b.extend_from_slice(&iface(1, 1, 2, 0x0A, 0, 0));
    b.extend_from_slice(&ep(0x82, 0x02, 64, 0));
    b.extend_from_slice(&ep(0x02, 0x02, 64, 0));
    config(1, 2, &b)
}

/// QEMU usb-net RNDIS configuration (value 2, descriptor index 0).
pub fn qemu_rndis_config() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&iface(0, 0, 1, 0x02, 0x02, 0xFF));
    b.extend_from_slice(&[5, 0x24, 0x00, 0x10, 0x01]); // header
    b.extend_from_slice(&[5, 0x24, 0x01, 0x00, 0x01]); // call management
    b.extend_from_slice(&[4, 0x24, 0x02, 0x00]); // ACM
    b.extend_from_slice(&[5, 0x24, 0x06, 0, 1]); // union
    b.extend_from_slice(&ep(0x81, 0x03, 16, 32));
    b.extend_from_slice(&iface(1, 0, 2, 0x0A, 0, 0));
    b.extend_from_slice(&ep(0x82, 0x02, 64, 0));
    b.extend_from_slice(&ep(0x02, 0x02, 64, 0));
    config(2, 2, &b)
}

/// A string descriptor from a &str.
pub fn string_desc(s: &str) -> Vec<u8> {
    let units: Vec<u16> = s.encode_utf16().collect();
    let mut v = std::vec![(2 + units.len() * 2) as u8, 3];
    for u in units {
        v.extend_from_slice(&u.to_le_bytes());
    }
    v
}
