//! QEMU usb-net descriptors end to end.

use super::*;
use crate::descriptor::*;
use crate::matching::*;
use crate::request::SetupPacket;
use crate::speed::*;

#[test]
fn device_descriptor() {
    let d = DeviceDescriptor::parse(&qemu_net_device()).unwrap();
    assert_eq!((d.vendor, d.product), (0x0525, 0xa4a2));
    assert_eq!((d.class, d.subclass, d.protocol), (2, 0, 0));
    assert_eq!(d.max_packet_size0, 64);
    assert_eq!(d.max_packet0_bytes(), 64);
    assert_eq!(d.num_configurations, 2);
    assert_eq!(d.usb_version, 0x0200);
    assert_eq!(d.serial_index, 3);
    assert_eq!(
        DeviceDescriptor::parse_max_packet0(&qemu_net_device()[..8]),
        Ok(64)
    );
    assert_eq!(Speed::Full.ep0_max_packet(d.max_packet_size0), Some(64));
}

#[test]
fn ecm_configuration_tree() {
    let c = Configuration::parse(&qemu_ecm_config()).unwrap();
    assert_eq!(c.value, 1);
    assert_eq!(c.declared_interfaces, 2);
    assert!(c.self_powered());
    assert_eq!(c.max_power_ma(false), 100);
    assert_eq!(c.interfaces.len(), 2);
    assert!(c.associations.is_empty());

    let comm = c.interface(0).unwrap();
    assert_eq!(comm.alternates.len(), 1);
    let a = &comm.alternates[0];
    assert_eq!((a.class, a.subclass, a.protocol), (2, 6, 0));
    assert_eq!(a.cdc_header(), Some(0x0110));
    assert_eq!(a.cdc_union(), Some((0, &[1u8][..])));
    let eth = a.cdc_ethernet().unwrap();
    assert_eq!(eth.mac_string_index, 3);
    assert_eq!(eth.max_segment_size, 1514);
    assert_eq!(eth.statistics, 0);
    assert_eq!(eth.multicast_filters(), 0);
    assert_eq!(eth.power_filters, 0);
    assert_eq!(a.class_descriptors.len(), 3);
    assert_eq!(a.endpoints.len(), 1);
    let int = &a.endpoints[0];
    assert_eq!(int.address, 0x81);
    assert_eq!(int.direction(), Direction::In);
    assert_eq!(int.transfer_type(), TransferType::Interrupt);
    assert_eq!(int.max_packet_size(), 16);
    assert_eq!(int.interval, 32);
    assert_eq!(int.dci(), 3);
    assert_eq!(int.xhci_endpoint_type(), 7);
    // 32 frames = 32 ms = 2^8 * 125 us.
    assert_eq!(
        xhci_interval(Speed::Full, int.transfer_type(), int.interval),
        8
    );
    assert_eq!(interval_micros(8), 32_000);

    let data = c.interface(1).unwrap();
    assert_eq!(data.alternates.len(), 2);
    assert!(data.alt(0).unwrap().endpoints.is_empty());
    let a1 = data.alt(1).unwrap();
    assert_eq!(a1.class, 0x0A);
    let bin = a1.find_endpoint(TransferType::Bulk, Direction::In).unwrap();
    let bout = a1
        .find_endpoint(TransferType::Bulk, Direction::Out)
        .unwrap();
    assert_eq!(
        (
            bin.address,
            bin.max_packet_size(),
            bin.dci(),
            bin.xhci_endpoint_type()
        ),
        (0x82, 64, 5, 6)
    );
    assert_eq!(
        (
            bout.address,
            bout.max_packet_size(),
            bout.dci(),
            bout.xhci_endpoint_type()
        ),
        (0x02, 64, 4, 2)
    );
    assert_eq!(
        xhci_interval(Speed::Full, TransferType::Bulk, bin.interval),
        0
    );
}

#[test]
fn rndis_configuration_tree() {
    let c = Configuration::parse(&qemu_rndis_config()).unwrap();
    assert_eq!(c.value, 2);
    let a = c.interface(0).unwrap().alt(0).unwrap();
    assert!(is_rndis(a));
    assert!(!is_ecm(a));
    assert_eq!(
        a.class_descriptors[1],
        ClassDescriptor::CdcCallManagement {
            capabilities: 0,
            data_interface: 1
        }
    );
    assert_eq!(
        a.class_descriptors[2],
        ClassDescriptor::CdcAcm { capabilities: 0 }
    );
    assert_eq!(a.cdc_union(), Some((0, &[1u8][..])));
    assert_eq!(c.interface(1).unwrap().alt(0).unwrap().endpoints.len(), 2);
}

#[test]
fn choose_ecm_from_qemu_order() {
    let dev = DeviceDescriptor::parse(&qemu_net_device()).unwrap();
    // Descriptor index 0 = RNDIS (value 2), index 1 = ECM (value 1).
    let configs = [
        Configuration::parse(&qemu_rndis_config()).unwrap(),
        Configuration::parse(&qemu_ecm_config()).unwrap(),
    ];
    assert_eq!(
        choose_configuration(&dev, &configs, ConfigPreference::Ecm),
        Some(1)
    );
    assert_eq!(
        choose_configuration(&dev, &configs, ConfigPreference::Rndis),
        Some(2)
    );
    assert_eq!(
        choose_configuration(&dev, &configs, ConfigPreference::Default),
        Some(1)
    );
    assert_eq!(
        choose_configuration(&dev, &configs, ConfigPreference::Value(2)),
        Some(2)
    );
    assert_eq!(
        choose_configuration(&dev, &configs, ConfigPreference::Value(3)),
        None
    );
    // Only RNDIS offered: ECM is not available, Default falls back to the first.
    assert_eq!(
        choose_configuration(&dev, &configs[..1], ConfigPreference::Ecm),
        None
    );
    assert_eq!(
        choose_configuration(&dev, &configs[..1], ConfigPreference::Default),
        Some(2)
    );
    // SET_CONFIGURATION for the chosen value.
    assert_eq!(
        SetupPacket::set_configuration(1).to_bytes(),
        [0, 9, 1, 0, 0, 0, 0, 0]
    );
}

#[test]
fn mac_from_string_descriptor() {
    let s = parse_string(&string_desc("525400123456")).unwrap();
    let mac = MacAddress::parse_from_string_descriptor(&s).unwrap();
    assert_eq!(mac.0, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(std::format!("{mac}"), "52:54:00:12:34:56");
    assert!(!mac.is_multicast());
}

#[test]
fn quirks_for_usb_net() {
    let q = DEFAULT_QUIRKS.lookup(0x0525, 0xa4a2);
    assert!(q.contains(Quirks::ZLP_ON_64_MULTIPLE));
    assert!(DEFAULT_QUIRKS.lookup(0x0525, 0xa4a3).is_empty());
}
