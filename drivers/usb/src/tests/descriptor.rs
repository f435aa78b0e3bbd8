//! Descriptor parser: valid trees and hostile input.

use super::*;
use crate::descriptor::*;
use std::string::ToString;
use std::vec;

fn err(buf: &[u8]) -> ParseError {
    Configuration::parse(buf).unwrap_err()
}

#[test]
fn device_descriptor_errors() {
    let good = qemu_net_device();
    for n in 0..18 {
        let e = DeviceDescriptor::parse(&good[..n]).unwrap_err();
        if n >= 2 {
            assert_eq!(
                e.kind,
                ErrorKind::Truncated {
                    needed: 18,
                    available: n
                }
            );
        }
    }
    let mut b = good;
    b[1] = 2;
    assert_eq!(
        DeviceDescriptor::parse(&b).unwrap_err().kind,
        ErrorKind::WrongType { expected: 1 }
    );
    let mut b = good;
    b[0] = 12;
    assert_eq!(
        DeviceDescriptor::parse(&b).unwrap_err().kind,
        ErrorKind::BadLength {
            length: 12,
            minimum: 18
        }
    );
    let mut b = good;
    b[7] = 0;
    let e = DeviceDescriptor::parse(&b).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (7, ErrorKind::BadMaxPacket0 { value: 0 })
    );
    // 9 means 512 only for USB 3.
    b[7] = 9;
    assert!(DeviceDescriptor::parse(&b).is_err());
    b[2] = 0x00;
    b[3] = 0x03;
    assert_eq!(
        DeviceDescriptor::parse(&b).unwrap().max_packet0_bytes(),
        512
    );
    // Longer buffer than bLength is fine.
    let mut long = good.to_vec();
    long.extend_from_slice(&[0xAA; 10]);
    assert!(DeviceDescriptor::parse(&long).is_ok());
}

#[test]
fn device_qualifier() {
    let q = DeviceQualifier::parse(&[10, 6, 0, 2, 0, 0, 0, 64, 1, 0]).unwrap();
    assert_eq!(
        (q.usb_version, q.max_packet_size0, q.num_configurations),
        (0x200, 64, 1)
    );
    assert!(DeviceQualifier::parse(&[10, 6, 0, 2]).is_err());
}

#[test]
fn total_length() {
    let c = qemu_ecm_config();
    assert_eq!(
        Configuration::parse_total_length(&c[..9]).unwrap() as usize,
        c.len()
    );
    // wTotalLength larger than the buffer.
    let e = err(&c[..c.len() - 1]);
    assert_eq!(e.offset, 2);
    assert!(matches!(e.kind, ErrorKind::TotalLengthMismatch { .. }));
    // Smaller than the header.
    let mut b = c.clone();
    b[2] = 5;
    b[3] = 0;
    assert!(matches!(
        err(&b).kind,
        ErrorKind::TotalLengthMismatch { declared: 5, .. }
    ));
    // Buffer longer than wTotalLength: trailing bytes (even garbage) ignored.
    let mut b = c.clone();
    b.extend_from_slice(&[0, 0, 0, 0xFF]);
    assert_eq!(
        Configuration::parse(&b).unwrap(),
        Configuration::parse(&c).unwrap()
    );
    // wTotalLength cutting a descriptor in half.
    let mut b = c.clone();
    let total = (c.len() - 3) as u16;
    b[2] = total as u8;
    b[3] = (total >> 8) as u8;
    let e = err(&b);
    assert_eq!(e.descriptor_type, dt::ENDPOINT);
    assert_eq!(
        e.kind,
        ErrorKind::Truncated {
            needed: 7,
            available: 4
        }
    );
    assert_eq!(e.offset, c.len() - 7);
}

#[test]
fn zero_and_one_blength() {
    for bad in [0u8, 1] {
        let b = config(1, 1, &[bad, 4, 0, 0, 0, 0, 0, 0, 0]);
        let e = err(&b);
        assert_eq!(e.offset, 9);
        assert_eq!(
            e.kind,
            ErrorKind::BadLength {
                length: bad,
                minimum: 2
            }
        );
    }
    // A single trailing byte.
    let e = err(&config(1, 0, &[7]));
    assert_eq!(
        e.kind,
        ErrorKind::Truncated {
            needed: 2,
            available: 1
        }
    );
    // Header itself with bLength 0.
    let mut b = qemu_ecm_config();
    b[0] = 0;
    assert!(matches!(
        err(&b).kind,
        ErrorKind::BadLength { length: 0, .. }
    ));
}

#[test]
fn blength_past_end() {
    let mut body = iface(0, 0, 0, 3, 0, 0).to_vec();
    body.extend_from_slice(&[40, 0x21, 1, 2, 3]);
    let e = err(&config(1, 1, &body));
    assert_eq!((e.offset, e.descriptor_type), (18, 0x21));
    assert_eq!(
        e.kind,
        ErrorKind::Truncated {
            needed: 40,
            available: 5
        }
    );
}

#[test]
fn short_standard_descriptors() {
    let e = err(&config(1, 1, &[5, 4, 0, 0, 0]));
    assert_eq!(
        e.kind,
        ErrorKind::BadLength {
            length: 5,
            minimum: 9
        }
    );
    let mut body = iface(0, 0, 1, 3, 0, 0).to_vec();
    body.extend_from_slice(&[6, 5, 0x81, 3, 8, 0]);
    let e = err(&config(1, 1, &body));
    assert_eq!(
        (e.offset, e.kind),
        (
            18,
            ErrorKind::BadLength {
                length: 6,
                minimum: 7
            }
        )
    );
}

#[test]
fn endpoint_before_interface() {
    let e = err(&config(1, 0, &ep(0x81, 3, 8, 10)));
    assert_eq!(
        (e.offset, e.descriptor_type, e.kind),
        (9, 5, ErrorKind::EndpointOutsideInterface)
    );
    let e = err(&config(1, 0, &[6, 0x30, 0, 0, 0, 0]));
    assert_eq!(e.kind, ErrorKind::EndpointOutsideInterface);
}

#[test]
fn duplicate_interface() {
    let mut body = iface(0, 0, 0, 3, 0, 0).to_vec();
    body.extend_from_slice(&iface(0, 1, 0, 3, 0, 0));
    body.extend_from_slice(&iface(0, 0, 0, 3, 0, 0));
    let e = err(&config(1, 1, &body));
    assert_eq!(
        (e.offset, e.kind),
        (
            27,
            ErrorKind::DuplicateInterface {
                interface: 0,
                alt: 0
            }
        )
    );
}

#[test]
fn interleaved_alternates_are_grouped() {
    let mut body = iface(0, 0, 0, 3, 0, 0).to_vec();
    body.extend_from_slice(&iface(1, 0, 0, 3, 0, 0));
    body.extend_from_slice(&iface(0, 1, 0, 3, 0, 0));
    let c = Configuration::parse(&config(1, 2, &body)).unwrap();
    assert_eq!(c.interfaces.len(), 2);
    assert_eq!(c.interface(0).unwrap().alternates.len(), 2);
    assert_eq!(c.alt_settings().count(), 3);
}

#[test]
fn too_many_interfaces() {
    let mut body = vec![];
    for i in 0..32 {
        body.extend_from_slice(&iface(i, 0, 0, 0xFF, 0, 0));
    }
    assert_eq!(
        Configuration::parse(&config(1, 32, &body))
            .unwrap()
            .interfaces
            .len(),
        32
    );
    body.extend_from_slice(&iface(32, 0, 0, 0xFF, 0, 0));
    let e = err(&config(1, 33, &body));
    assert_eq!(
        (e.offset, e.kind),
        (9 + 32 * 9, ErrorKind::TooManyInterfaces)
    );
    // Many alternates of one interface are not "many interfaces".
    let mut body = vec![];
    for a in 0..40 {
        body.extend_from_slice(&iface(0, a, 0, 0xFF, 0, 0));
    }
    assert_eq!(
        Configuration::parse(&config(1, 1, &body))
            .unwrap()
            .interfaces[0]
            .alternates
            .len(),
        40
    );
}

#[test]
fn too_many_endpoints_and_duplicates() {
    let mut body = iface(0, 0, 32, 0xFF, 0, 0).to_vec();
    for n in 1..=15u8 {
        body.extend_from_slice(&ep(n, 2, 64, 0));
        body.extend_from_slice(&ep(0x80 | n, 2, 64, 0));
    }
    assert_eq!(
        Configuration::parse(&config(1, 1, &body))
            .unwrap()
            .interfaces[0]
            .alternates[0]
            .endpoints
            .len(),
        30
    );
    // A duplicate address.
    let mut dup = body.clone();
    dup.extend_from_slice(&ep(0x81, 3, 8, 1));
    assert_eq!(
        err(&config(1, 1, &dup)).kind,
        ErrorKind::DuplicateEndpoint { address: 0x81 }
    );
    // Only 30 distinct valid addresses exist, so a 31st endpoint is always a
    // duplicate or an invalid address (TooManyEndpoints is a backstop).
    let mut bad = body.clone();
    bad.extend_from_slice(&ep(0x10 | 1, 2, 64, 0));
    assert_eq!(
        err(&config(1, 1, &bad)).kind,
        ErrorKind::BadEndpointAddress { address: 0x11 }
    );
    let e0 = err(&config(
        1,
        1,
        &[&iface(0, 0, 1, 0xFF, 0, 0)[..], &ep(0x80, 2, 64, 0)].concat(),
    ));
    assert_eq!(e0.kind, ErrorKind::BadEndpointAddress { address: 0x80 });
}

#[test]
fn max_packet_checks() {
    let one = |attr: u8, mps: u16| {
        Configuration::parse(&config(
            1,
            1,
            &[&iface(0, 0, 1, 0xFF, 0, 0)[..], &ep(0x81, attr, mps, 1)].concat(),
        ))
    };
    assert_eq!(
        one(2, 0).unwrap_err().kind,
        ErrorKind::BadMaxPacket {
            address: 0x81,
            raw: 0
        }
    );
    assert_eq!(
        one(3, 0).unwrap_err().kind,
        ErrorKind::BadMaxPacket {
            address: 0x81,
            raw: 0
        }
    );
    // Isochronous zero-bandwidth is allowed.
    assert!(one(1, 0).is_ok());
    // Reserved multiplier 3.
    assert!(matches!(
        one(1, 0x1800 | 1024).unwrap_err().kind,
        ErrorKind::BadMaxPacket { .. }
    ));
    // High-bandwidth: 2 additional transactions of 1024.
    let c = one(1, 0x1000 | 1024).unwrap();
    let e = &c.interfaces[0].alternates[0].endpoints[0];
    assert_eq!(e.max_packet_size(), 1024);
    assert_eq!(e.additional_transactions(), 2);
    assert_eq!(e.transactions_per_microframe(), 3);
    assert_eq!(e.max_esit_payload(), 3072);
    assert_eq!(e.xhci_max_burst(), 2);
}

#[test]
fn superspeed_companion() {
    let mut body = iface(0, 0, 2, 8, 6, 0x50).to_vec();
    body.extend_from_slice(&ep(0x81, 2, 1024, 0));
    body.extend_from_slice(&[6, 0x30, 15, 4, 0, 0]);
    body.extend_from_slice(&ep(0x83, 3, 64, 4));
    body.extend_from_slice(&[6, 0x30, 0, 0, 64, 0]);
    let c = Configuration::parse(&config(1, 1, &body)).unwrap();
    let a = &c.interfaces[0].alternates[0];
    let bulk = a.endpoint(0x81).unwrap();
    let comp = bulk.companion.unwrap();
    assert_eq!((comp.max_burst, comp.max_streams_exponent()), (15, 4));
    assert_eq!(bulk.xhci_max_burst(), 15);
    let int = a.endpoint(0x83).unwrap();
    assert_eq!(int.max_esit_payload(), 64);
    // Second companion for the same endpoint.
    let mut twice = body.clone();
    twice.extend_from_slice(&[6, 0x30, 0, 0, 64, 0]);
    assert_eq!(
        err(&config(1, 1, &twice)).kind,
        ErrorKind::MisplacedCompanion
    );
    // Companion after a class descriptor rather than the endpoint.
    let mut late = iface(0, 0, 1, 1, 2, 0).to_vec();
    late.extend_from_slice(&ep(0x81, 1, 192, 1));
    late.extend_from_slice(&[7, 0x25, 1, 0, 0, 0, 0]);
    late.extend_from_slice(&[6, 0x30, 0, 0, 192, 0]);
    assert_eq!(
        err(&config(1, 1, &late)).kind,
        ErrorKind::MisplacedCompanion
    );
    // Short companion.
    let mut short = iface(0, 0, 1, 8, 6, 0x50).to_vec();
    short.extend_from_slice(&ep(0x81, 2, 1024, 0));
    short.extend_from_slice(&[5, 0x30, 0, 0, 0]);
    assert_eq!(
        err(&config(1, 1, &short)).kind,
        ErrorKind::BadLength {
            length: 5,
            minimum: 6
        }
    );
}

#[test]
fn iad_and_unknown_descriptors() {
    let mut body = vec![8, 0x0B, 0, 2, 0x0E, 3, 0, 5]; // IAD video, interfaces 0..2
    body.extend_from_slice(&iface(0, 0, 1, 0x0E, 1, 0));
    body.extend_from_slice(&[13, 0x24, 1, 0, 1, 0x33, 0, 0, 0, 0, 0, 1, 1]); // VC header (not CDC)
    body.extend_from_slice(&ep(0x83, 3, 16, 6));
    body.extend_from_slice(&[5, 0x25, 3, 16, 0]); // CS endpoint
    body.extend_from_slice(&iface(1, 0, 0, 0x0E, 2, 0));
    body.extend_from_slice(&[9, 0x21, 0x11, 1, 0, 1, 0x22, 50, 0]); // HID-like, kept raw
    let mut pre = vec![5, 0x09, 3, 0, 2]; // OTG descriptor before the first interface
    pre.extend_from_slice(&body);
    let c = Configuration::parse(&config(1, 2, &pre)).unwrap();
    assert_eq!(
        c.extra,
        vec![ClassDescriptor::Unknown {
            descriptor_type: 9,
            bytes: vec![5, 9, 3, 0, 2]
        }]
    );
    assert_eq!(c.associations.len(), 1);
    let iad = c.associations[0];
    assert_eq!(
        (
            iad.first_interface,
            iad.interface_count,
            iad.class,
            iad.string_index
        ),
        (0, 2, 0x0E, 5)
    );
    assert!(iad.contains(1) && !iad.contains(2));
    let a0 = c.interface(0).unwrap().alt(0).unwrap();
    assert!(
        matches!(&a0.class_descriptors[0], ClassDescriptor::Unknown { descriptor_type: 0x24, bytes } if bytes.len() == 13)
    );
    assert_eq!(
        a0.endpoints[0].extra,
        vec![ClassDescriptor::Unknown {
            descriptor_type: 0x25,
            bytes: vec![5, 0x25, 3, 16, 0]
        }]
    );
    let a1 = c.interface(1).unwrap().alt(0).unwrap();
    assert_eq!(a1.class_descriptors.len(), 1);
    // IAD with zero interfaces.
    let e = err(&config(1, 0, &[8, 0x0B, 0, 0, 2, 2, 0, 0]));
    assert_eq!(e.kind, ErrorKind::EmptyAssociation);
    assert!(matches!(
        err(&config(1, 0, &[7, 0x0B, 0, 1, 2, 2, 0])).kind,
        ErrorKind::BadLength {
            length: 7,
            minimum: 8
        }
    ));
}

#[test]
fn cdc_functional_errors_and_unknown_subtypes() {
    let with = |cs: &[u8]| {
        Configuration::parse(&config(1, 1, &[&iface(0, 0, 0, 2, 6, 0)[..], cs].concat()))
    };
    assert!(matches!(
        with(&[4, 0x24, 0, 0x10]).unwrap_err().kind,
        ErrorKind::BadLength { minimum: 5, .. }
    ));
    assert_eq!(
        with(&[4, 0x24, 6, 0]).unwrap_err().kind,
        ErrorKind::EmptyUnion
    );
    assert!(matches!(
        with(&[12, 0x24, 0x0F, 3, 0, 0, 0, 0, 0xEA, 5, 0, 0])
            .unwrap_err()
            .kind,
        ErrorKind::BadLength { minimum: 13, .. }
    ));
    assert!(matches!(
        with(&[2, 0x24]).unwrap_err().kind,
        ErrorKind::BadLength { minimum: 3, .. }
    ));
    // Union with several slaves.
    let c = with(&[7, 0x24, 6, 0, 1, 2, 3]).unwrap();
    assert_eq!(
        c.interfaces[0].alternates[0].cdc_union(),
        Some((0, &[1u8, 2, 3][..]))
    );
    // Unknown CDC subtype (NCM) kept raw.
    let c = with(&[6, 0x24, 0x1A, 0, 1, 0]).unwrap();
    assert!(matches!(
        c.interfaces[0].alternates[0].class_descriptors[0],
        ClassDescriptor::Unknown {
            descriptor_type: 0x24,
            ..
        }
    ));
    // Ethernet with statistics and imperfect multicast filters.
    let c = with(&[13, 0x24, 0x0F, 4, 0xFF, 0, 0, 0, 0xEA, 5, 0x10, 0x80, 2]).unwrap();
    let e = c.interfaces[0].alternates[0]
        .cdc_ethernet()
        .copied()
        .unwrap();
    assert_eq!(
        (
            e.statistics,
            e.multicast_filters(),
            e.multicast_filtering_imperfect(),
            e.power_filters
        ),
        (0xFF, 16, true, 2)
    );
    // Longer-than-needed functional descriptor is accepted.
    assert!(with(&[6, 0x24, 0, 0x10, 1, 0xAA]).is_ok());
}

#[test]
fn unexpected_descriptor_inside_configuration() {
    let e = err(&config(1, 0, &qemu_net_device()));
    assert_eq!(
        (e.offset, e.descriptor_type, e.kind),
        (9, 1, ErrorKind::UnexpectedDescriptor)
    );
}

#[test]
fn other_speed_configuration() {
    let mut c = qemu_ecm_config();
    assert!(matches!(
        Configuration::parse_other_speed(&c).unwrap_err().kind,
        ErrorKind::WrongType { expected: 7 }
    ));
    c[1] = 7;
    assert_eq!(Configuration::parse_other_speed(&c).unwrap().value, 1);
}

#[test]
fn error_display() {
    let mut body = iface(0, 0, 0, 3, 0, 0).to_vec();
    body.extend_from_slice(&[40, 0x21, 1, 2, 3]);
    let s = err(&config(1, 1, &body)).to_string();
    assert_eq!(
        s,
        "HID descriptor (type 0x21) at offset 18: truncated: needs 40 bytes, only 5 available"
    );
    let s = err(&config(1, 0, &ep(0x81, 3, 8, 10))).to_string();
    assert!(
        s.contains("endpoint") && s.contains("offset 9") && s.contains("before any interface"),
        "{s}"
    );
    // Every kind renders without panicking.
    let kinds = [
        ErrorKind::Truncated {
            needed: 1,
            available: 0,
        },
        ErrorKind::BadLength {
            length: 0,
            minimum: 2,
        },
        ErrorKind::WrongType { expected: 2 },
        ErrorKind::TotalLengthMismatch {
            declared: 1,
            available: 0,
        },
        ErrorKind::TooManyInterfaces,
        ErrorKind::TooManyEndpoints {
            interface: 0,
            alt: 0,
        },
        ErrorKind::EndpointOutsideInterface,
        ErrorKind::DuplicateInterface {
            interface: 0,
            alt: 0,
        },
        ErrorKind::DuplicateEndpoint { address: 1 },
        ErrorKind::BadEndpointAddress { address: 0 },
        ErrorKind::BadMaxPacket { address: 1, raw: 0 },
        ErrorKind::MisplacedCompanion,
        ErrorKind::UnexpectedDescriptor,
        ErrorKind::BadMaxPacket0 { value: 0 },
        ErrorKind::EmptyAssociation,
        ErrorKind::EmptyUnion,
    ];
    for k in kinds {
        let s = ParseError {
            offset: 3,
            descriptor_type: 0x77,
            kind: k,
        }
        .to_string();
        assert!(
            s.starts_with("unknown descriptor (type 0x77) at offset 3: "),
            "{s}"
        );
    }
}

#[test]
fn strings() {
    assert_eq!(
        parse_string(&string_desc("QEMU USB Network Interface")).unwrap(),
        "QEMU USB Network Interface"
    );
    assert_eq!(parse_string(&string_desc("")).unwrap(), "");
    assert_eq!(parse_string(&string_desc("Grüße €")).unwrap(), "Grüße €");
    // Odd length: the stray byte is ignored.
    assert_eq!(parse_string(&[5, 3, b'A', 0, b'B']).unwrap(), "A");
    // Unpaired surrogate replaced.
    assert_eq!(
        parse_string(&[6, 3, 0x00, 0xD8, b'x', 0]).unwrap(),
        "\u{FFFD}x"
    );
    // Trailing NUL padding dropped.
    assert_eq!(parse_string(&[8, 3, b'a', 0, 0, 0, 0, 0]).unwrap(), "a");
    // bLength past the data, 0/1, wrong type.
    assert_eq!(
        parse_string(&[10, 3, b'a', 0]).unwrap_err().kind,
        ErrorKind::Truncated {
            needed: 10,
            available: 4
        }
    );
    assert!(matches!(
        parse_string(&[0, 3]).unwrap_err().kind,
        ErrorKind::BadLength { .. }
    ));
    assert!(matches!(
        parse_string(&[1, 3]).unwrap_err().kind,
        ErrorKind::BadLength { .. }
    ));
    assert!(matches!(
        parse_string(&[4, 2, 0, 0]).unwrap_err().kind,
        ErrorKind::WrongType { .. }
    ));
    assert!(parse_string(&[]).is_err());
    // Language IDs.
    assert_eq!(
        parse_language_ids(&[4, 3, 0x09, 0x04]).unwrap(),
        vec![LANG_EN_US]
    );
    assert_eq!(
        parse_language_ids(&[7, 3, 0x09, 0x04, 0x07, 0x04, 0xFF]).unwrap(),
        vec![0x0409, 0x0407]
    );
    assert_eq!(parse_language_ids(&[2, 3]).unwrap(), vec![]);
}

#[test]
fn mac_parse_errors() {
    assert_eq!(
        MacAddress::parse_from_string_descriptor("525400ABCdef")
            .unwrap()
            .0,
        [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF]
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor(""),
        Err(MacParseError::BadLength(0))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("52540012345"),
        Err(MacParseError::BadLength(11))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("5254001234567"),
        Err(MacParseError::BadLength(13))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("52:54:00:12:"),
        Err(MacParseError::NotHex(2))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("52540012345g"),
        Err(MacParseError::NotHex(11))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("5254001234\u{FFFD}5"),
        Err(MacParseError::NotHex(10))
    );
    assert_eq!(
        MacAddress::parse_from_string_descriptor("+25400123456"),
        Err(MacParseError::NotHex(0))
    );
    assert!(MacAddress::parse_from_string_descriptor("010000000000")
        .unwrap()
        .is_multicast());
}

#[test]
fn descriptor_iter() {
    let c = qemu_ecm_config();
    let all: std::vec::Vec<_> = DescriptorIter::new(&c).collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0].descriptor_type, dt::CONFIGURATION);
    assert_eq!(all.iter().map(|d| d.bytes.len()).sum::<usize>(), c.len());
    // Error is yielded once, then the iterator ends.
    let mut it = DescriptorIter::new(&[9, 2, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
}

#[test]
fn rndis_wireless_class_gets_cdc_parsing() {
    let body = [
        &iface(0, 0, 0, 0xE0, 1, 3)[..],
        &[5, 0x24, 6, 0, 1],
        &iface(1, 0, 0, 0x0A, 0, 0),
        &[5, 0x24, 6, 0, 1],
    ]
    .concat();
    let c = Configuration::parse(&config(1, 2, &body)).unwrap();
    assert_eq!(
        c.interface(0).unwrap().alternates[0].cdc_union(),
        Some((0, &[1u8][..]))
    );
    // Same bytes under a non-CDC interface stay raw.
    assert!(c.interface(1).unwrap().alternates[0].cdc_union().is_none());
    assert!(matches!(
        c.interface(1).unwrap().alternates[0].class_descriptors[0],
        ClassDescriptor::Unknown { .. }
    ));
}
