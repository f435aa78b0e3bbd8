//! Driver matching, quirks, configuration choice.

use super::*;
use crate::descriptor::*;
use crate::matching::*;

fn dev() -> DeviceDescriptor {
    DeviceDescriptor::parse(&qemu_net_device()).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drv {
    Ecm,
    Rndis,
    Vendor,
    Hub,
    CdcAny,
}

const TABLE: &[DriverEntry<Drv>] = &[
    DriverEntry {
        rule: Match::InterfaceClass {
            class: 2,
            subclass: None,
            protocol: None,
        },
        driver: Drv::CdcAny,
    },
    DriverEntry {
        rule: Match::InterfaceClass {
            class: 2,
            subclass: Some(6),
            protocol: None,
        },
        driver: Drv::Ecm,
    },
    DriverEntry {
        rule: Match::InterfaceClass {
            class: 2,
            subclass: Some(2),
            protocol: Some(0xFF),
        },
        driver: Drv::Rndis,
    },
    DriverEntry {
        rule: Match::InterfaceClass {
            class: 0xE0,
            subclass: Some(1),
            protocol: Some(3),
        },
        driver: Drv::Rndis,
    },
    DriverEntry {
        rule: Match::DeviceClass {
            class: 9,
            subclass: None,
            protocol: None,
        },
        driver: Drv::Hub,
    },
    DriverEntry {
        rule: Match::VendorProduct {
            vendor: 0x0b95,
            product: 0x1790,
        },
        driver: Drv::Vendor,
    },
];

#[test]
fn device_id_from_descriptors() {
    let d = dev();
    let id = DeviceId::from_device(&d);
    assert_eq!(
        id,
        DeviceId {
            vendor: 0x0525,
            product: 0xa4a2,
            class: 2,
            subclass: 0,
            protocol: 0
        }
    );
    let c = Configuration::parse(&qemu_ecm_config()).unwrap();
    let i = DeviceId::for_interface(&d, c.interface(0).unwrap().alt(0).unwrap());
    assert_eq!(
        (i.vendor, i.class, i.subclass, i.protocol),
        (0x0525, 2, 6, 0)
    );
}

#[test]
fn class_matching_specificity() {
    let d = dev();
    let dev_id = DeviceId::from_device(&d);
    let ecm = Configuration::parse(&qemu_ecm_config()).unwrap();
    let rndis = Configuration::parse(&qemu_rndis_config()).unwrap();
    let ecm_if = DeviceId::for_interface(&d, ecm.interface(0).unwrap().alt(0).unwrap());
    let rndis_if = DeviceId::for_interface(&d, rndis.interface(0).unwrap().alt(0).unwrap());
    assert_eq!(
        best_driver(TABLE, &dev_id, Some(&ecm_if)).unwrap().driver,
        Drv::Ecm
    );
    assert_eq!(
        best_driver(TABLE, &dev_id, Some(&rndis_if)).unwrap().driver,
        Drv::Rndis
    );
    // Data interface (0x0A) matches nothing.
    let data_if = DeviceId::for_interface(&d, ecm.interface(1).unwrap().alt(1).unwrap());
    assert!(best_driver(TABLE, &dev_id, Some(&data_if)).is_none());
    // Interface rules never match at device level.
    assert!(best_driver(TABLE, &dev_id, None).is_none());
    // ACM (2/2/1) only matches the wildcard.
    let acm = DeviceId {
        protocol: 1,
        subclass: 2,
        ..ecm_if
    };
    assert_eq!(
        best_driver(TABLE, &dev_id, Some(&acm)).unwrap().driver,
        Drv::CdcAny
    );
    // Wireless RNDIS.
    let wl = DeviceId {
        class: 0xE0,
        subclass: 1,
        protocol: 3,
        ..ecm_if
    };
    assert_eq!(
        best_driver(TABLE, &dev_id, Some(&wl)).unwrap().driver,
        Drv::Rndis
    );
}

#[test]
fn vendor_product_beats_class() {
    let asix = DeviceId {
        vendor: 0x0b95,
        product: 0x1790,
        class: 0xFF,
        subclass: 0xFF,
        protocol: 0,
    };
    let cdc_if = DeviceId {
        class: 2,
        subclass: 6,
        protocol: 0,
        ..asix
    };
    assert_eq!(
        best_driver(TABLE, &asix, Some(&cdc_if)).unwrap().driver,
        Drv::Vendor
    );
    assert_eq!(best_driver(TABLE, &asix, None).unwrap().driver, Drv::Vendor);
    let hub = DeviceId {
        vendor: 0x0409,
        product: 0x55aa,
        class: 9,
        subclass: 0,
        protocol: 0,
    };
    assert_eq!(best_driver(TABLE, &hub, None).unwrap().driver, Drv::Hub);
    let rules = [
        Match::VendorProduct {
            vendor: 1,
            product: 2,
        },
        Match::InterfaceClass {
            class: 2,
            subclass: Some(6),
            protocol: Some(0),
        },
        Match::InterfaceClass {
            class: 2,
            subclass: None,
            protocol: None,
        },
        Match::DeviceClass {
            class: 2,
            subclass: Some(0),
            protocol: Some(0),
        },
        Match::DeviceClass {
            class: 2,
            subclass: None,
            protocol: None,
        },
    ];
    for w in rules.windows(2) {
        assert!(w[0].priority() > w[1].priority(), "{w:?}");
    }
    // Device class with subclass/protocol filters.
    let m = Match::DeviceClass {
        class: 9,
        subclass: None,
        protocol: Some(2),
    };
    assert!(!m.matches(&hub, None));
    assert!(m.matches(&DeviceId { protocol: 2, ..hub }, None));
}

#[test]
fn ties_go_to_first_entry() {
    let t = [
        DriverEntry {
            rule: Match::DeviceClass {
                class: 9,
                subclass: None,
                protocol: None,
            },
            driver: 1,
        },
        DriverEntry {
            rule: Match::DeviceClass {
                class: 9,
                subclass: None,
                protocol: None,
            },
            driver: 2,
        },
    ];
    let hub = DeviceId {
        vendor: 0,
        product: 0,
        class: 9,
        subclass: 0,
        protocol: 0,
    };
    assert_eq!(best_driver(&t, &hub, None).unwrap().driver, 1);
    assert!(best_driver::<u8>(&[], &hub, None).is_none());
}

#[test]
fn quirk_flags() {
    let q = Quirks::NO_DEVICE_QUALIFIER | Quirks::PREFER_CONFIG(1) | Quirks::ZLP_ON_64_MULTIPLE;
    assert!(q.contains(Quirks::NO_DEVICE_QUALIFIER));
    assert!(q.contains(Quirks::ZLP_ON_64_MULTIPLE));
    assert!(!q.contains(Quirks::NO_STRINGS));
    assert!(q.contains(Quirks::PREFER_CONFIG(1)));
    assert!(!q.contains(Quirks::PREFER_CONFIG(2)));
    assert_eq!(q.preferred_config(), Some(1));
    assert_eq!((q | Quirks::PREFER_CONFIG(2)).preferred_config(), Some(2));
    assert!(Quirks::NONE.is_empty() && !q.is_empty());
    assert_eq!(Quirks::default(), Quirks::NONE);

    static ROWS: &[QuirkEntry] = &[
        QuirkEntry {
            vendor: 0x1234,
            product: None,
            quirks: Quirks::NO_STRINGS,
        },
        QuirkEntry {
            vendor: 0x1234,
            product: Some(5),
            quirks: Quirks::PREFER_CONFIG(2).with(Quirks::NO_DEVICE_QUALIFIER),
        },
        QuirkEntry {
            vendor: 0x9999,
            product: Some(5),
            quirks: Quirks::RESET_ON_TX_TIMEOUT,
        },
    ];
    let t = QuirkTable::new(ROWS);
    let a = t.lookup(0x1234, 5);
    assert!(a.contains(Quirks::NO_STRINGS) && a.contains(Quirks::NO_DEVICE_QUALIFIER));
    assert_eq!(a.preferred_config(), Some(2));
    let b = t.lookup(0x1234, 6);
    assert!(b.contains(Quirks::NO_STRINGS) && b.preferred_config().is_none());
    assert!(t.lookup(0x4321, 5).is_empty());
}

#[test]
fn choose_configuration_edge_cases() {
    let mut d = dev();
    assert_eq!(
        choose_configuration(&d, &[], ConfigPreference::Default),
        None
    );
    assert_eq!(choose_configuration(&d, &[], ConfigPreference::Ecm), None);
    let configs = [
        Configuration::parse(&qemu_rndis_config()).unwrap(),
        Configuration::parse(&qemu_ecm_config()).unwrap(),
    ];
    // bNumConfigurations limits what is considered.
    d.num_configurations = 1;
    assert_eq!(
        choose_configuration(&d, &configs, ConfigPreference::Ecm),
        None
    );
    assert_eq!(
        choose_configuration(&d, &configs, ConfigPreference::Default),
        Some(2)
    );
    // Vendor-specific first interface is skipped by Default.
    d.num_configurations = 2;
    let vendor = Configuration::parse(&config(7, 1, &iface(0, 0, 0, 0xFF, 0, 0))).unwrap();
    let hid = Configuration::parse(&config(3, 1, &iface(0, 0, 0, 3, 1, 1))).unwrap();
    assert_eq!(
        choose_configuration(&d, &[vendor.clone(), hid], ConfigPreference::Default),
        Some(3)
    );
    // Empty configuration (no interfaces) is skipped too, but is the fallback.
    let empty = Configuration::parse(&config(4, 0, &[])).unwrap();
    assert_eq!(
        choose_configuration(&d, &[empty.clone(), vendor], ConfigPreference::Default),
        Some(4)
    );
    assert_eq!(
        choose_configuration(&d, &[empty], ConfigPreference::Value(4)),
        Some(4)
    );
    // ECM in an alternate setting other than the first still counts.
    let alt_ecm = Configuration::parse(&config(
        5,
        1,
        &[&iface(0, 0, 0, 0xFF, 0, 0)[..], &iface(0, 1, 0, 2, 6, 0)].concat(),
    ))
    .unwrap();
    assert_eq!(
        choose_configuration(&d, &[alt_ecm], ConfigPreference::Ecm),
        Some(5)
    );
}

#[test]
fn quirk_config_preference() {
    let d = dev();
    let configs = [
        Configuration::parse(&qemu_rndis_config()).unwrap(),
        Configuration::parse(&qemu_ecm_config()).unwrap(),
    ];
    let p = ConfigPreference::with_quirks(ConfigPreference::Ecm, Quirks::PREFER_CONFIG(2));
    assert_eq!(p, ConfigPreference::Value(2));
    assert_eq!(choose_configuration(&d, &configs, p), Some(2));
    let p = ConfigPreference::with_quirks(
        ConfigPreference::Ecm,
        DEFAULT_QUIRKS.lookup(d.vendor, d.product),
    );
    assert_eq!(choose_configuration(&d, &configs, p), Some(1));
}

#[test]
fn usbnet_values() {
    assert_eq!(NetFunction::parse("ecm"), Some(NetFunction::Ecm));
    assert_eq!(NetFunction::parse("rndis"), Some(NetFunction::Rndis));
    for bad in ["", "RNDIS", "ecm ", "ncm", "rndis,ecm"] {
        assert_eq!(NetFunction::parse(bad), None, "{bad:?}");
    }
    for f in [NetFunction::Ecm, NetFunction::Rndis] {
        assert_eq!(NetFunction::parse(f.name()), Some(f));
    }
}

#[test]
fn net_function_follows_the_preference_when_the_device_offers_both() {
    let d = dev();
    let configs = [
        Configuration::parse(&qemu_rndis_config()).unwrap(),
        Configuration::parse(&qemu_ecm_config()).unwrap(),
    ];
    assert_eq!(
        choose_net_function(&d, &configs, NetFunction::Ecm),
        Some((NetFunction::Ecm, 1))
    );
    assert_eq!(
        choose_net_function(&d, &configs, NetFunction::Rndis),
        Some((NetFunction::Rndis, 2))
    );
}

#[test]
fn net_function_falls_back_to_what_the_device_has() {
    let mut d = dev();
    d.num_configurations = 1;
    let rndis_only = [Configuration::parse(&qemu_rndis_config()).unwrap()];
    let ecm_only = [Configuration::parse(&qemu_ecm_config()).unwrap()];
    for preferred in [NetFunction::Ecm, NetFunction::Rndis] {
        assert_eq!(
            choose_net_function(&d, &rndis_only, preferred),
            Some((NetFunction::Rndis, 2))
        );
        assert_eq!(
            choose_net_function(&d, &ecm_only, preferred),
            Some((NetFunction::Ecm, 1))
        );
    }
    let hid = [Configuration::parse(&config(3, 1, &iface(0, 0, 0, 3, 1, 1))).unwrap()];
    assert_eq!(choose_net_function(&d, &hid, NetFunction::Rndis), None);
    // A configuration beyond bNumConfigurations is not offered.
    let both = [
        Configuration::parse(&qemu_ecm_config()).unwrap(),
        Configuration::parse(&qemu_rndis_config()).unwrap(),
    ];
    assert_eq!(
        choose_net_function(&d, &both, NetFunction::Rndis),
        Some((NetFunction::Ecm, 1))
    );
}
