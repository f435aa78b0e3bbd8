//! Driver matching, quirks and configuration choice. Pure functions over the
//! parsed descriptors.

use crate::descriptor::{class, AltSetting, Configuration, DeviceDescriptor};
use core::ops::BitOr;

/// Identity used for matching: the device's vendor/product plus either the
/// device's class triple or one interface's class triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceId {
    pub vendor: u16,
    pub product: u16,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
}

impl DeviceId {
    pub fn from_device(d: &DeviceDescriptor) -> Self {
        DeviceId {
            vendor: d.vendor,
            product: d.product,
            class: d.class,
            subclass: d.subclass,
            protocol: d.protocol,
        }
    }

    /// The device's vendor/product with an interface's class triple.
    pub fn for_interface(d: &DeviceDescriptor, alt: &AltSetting) -> Self {
        DeviceId {
            vendor: d.vendor,
            product: d.product,
            class: alt.class,
            subclass: alt.subclass,
            protocol: alt.protocol,
        }
    }
}

/// A driver's match rule. `None` fields are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    VendorProduct {
        vendor: u16,
        product: u16,
    },
    InterfaceClass {
        class: u8,
        subclass: Option<u8>,
        protocol: Option<u8>,
    },
    DeviceClass {
        class: u8,
        subclass: Option<u8>,
        protocol: Option<u8>,
    },
}

fn triple_matches(id: &DeviceId, class: u8, subclass: Option<u8>, protocol: Option<u8>) -> bool {
    id.class == class
        && subclass.is_none_or(|s| s == id.subclass)
        && protocol.is_none_or(|p| p == id.protocol)
}

impl Match {
    /// `device` is the device-level identity; `interface` the interface being
    /// bound, if matching per interface.
    pub fn matches(&self, device: &DeviceId, interface: Option<&DeviceId>) -> bool {
        match *self {
            Match::VendorProduct { vendor, product } => {
                device.vendor == vendor && device.product == product
            }
            Match::InterfaceClass {
                class,
                subclass,
                protocol,
            } => interface.is_some_and(|i| triple_matches(i, class, subclass, protocol)),
            Match::DeviceClass {
                class,
                subclass,
                protocol,
            } => triple_matches(device, class, subclass, protocol),
        }
    }

    /// Higher wins: vendor/product beats any class rule; interface class beats
    /// device class; among class rules, more specified fields win.
    pub fn priority(&self) -> u8 {
        let spec = |s: Option<u8>, p: Option<u8>| s.is_some() as u8 + p.is_some() as u8;
        match *self {
            Match::VendorProduct { .. } => 100,
            Match::InterfaceClass {
                subclass, protocol, ..
            } => 50 + spec(subclass, protocol),
            Match::DeviceClass {
                subclass, protocol, ..
            } => 20 + spec(subclass, protocol),
        }
    }
}

/// One row of a driver table.
#[derive(Debug, Clone, Copy)]
pub struct DriverEntry<D> {
    pub rule: Match,
    pub driver: D,
}

/// Highest-priority matching entry; ties go to the earlier entry.
pub fn best_driver<'a, D>(
    table: &'a [DriverEntry<D>],
    device: &DeviceId,
    interface: Option<&DeviceId>,
) -> Option<&'a DriverEntry<D>> {
    let mut best: Option<&DriverEntry<D>> = None;
    for e in table.iter().filter(|e| e.rule.matches(device, interface)) {
        if best.is_none_or(|b| e.rule.priority() > b.rule.priority()) {
            best = Some(e);
        }
    }
    best
}

// ---------------------------------------------------------------------------
// Quirks

/// A set of quirk flags plus an optional preferred configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    bits: u32,
    prefer_config: Option<u8>,
}

impl Quirks {
    pub const NONE: Quirks = Quirks {
        bits: 0,
        prefer_config: None,
    };
    /// Do not ask for the device qualifier descriptor.
    pub const NO_DEVICE_QUALIFIER: Quirks = Quirks::bit(0);
    /// End bulk OUT transfers whose length is a multiple of 64 with a zero-length
    /// packet (QEMU's RNDIS reassembly bug; never pad with one byte).
    pub const ZLP_ON_64_MULTIPLE: Quirks = Quirks::bit(1);
    /// Do not fetch string descriptors.
    pub const NO_STRINGS: Quirks = Quirks::bit(2);
    /// Skip SET_INTERFACE to alt 0 at bind time.
    pub const NO_SET_INTERFACE: Quirks = Quirks::bit(3);
    /// Answer a transmit timeout with a full device reset.
    pub const RESET_ON_TX_TIMEOUT: Quirks = Quirks::bit(4);

    const fn bit(n: u32) -> Quirks {
        Quirks {
            bits: 1 << n,
            prefer_config: None,
        }
    }

    /// Prefer the configuration with this bConfigurationValue.
    #[allow(non_snake_case)]
    pub const fn PREFER_CONFIG(value: u8) -> Quirks {
        Quirks {
            bits: 0,
            prefer_config: Some(value),
        }
    }

    /// Union usable in `const` tables; the right side's preferred config wins.
    pub const fn with(self, other: Quirks) -> Quirks {
        Quirks {
            bits: self.bits | other.bits,
            prefer_config: match other.prefer_config {
                Some(v) => Some(v),
                None => self.prefer_config,
            },
        }
    }

    /// True if every flag of `other` is set (its preferred config too, if any).
    pub fn contains(self, other: Quirks) -> bool {
        self.bits & other.bits == other.bits
            && (other.prefer_config.is_none() || other.prefer_config == self.prefer_config)
    }

    pub fn preferred_config(self) -> Option<u8> {
        self.prefer_config
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0 && self.prefer_config.is_none()
    }
}

impl BitOr for Quirks {
    type Output = Quirks;
    fn bitor(self, rhs: Quirks) -> Quirks {
        self.with(rhs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuirkEntry {
    pub vendor: u16,
    /// None = every product of the vendor.
    pub product: Option<u16>,
    pub quirks: Quirks,
}

/// A quirks table; lookup returns the union of all matching rows.
#[derive(Debug, Clone, Copy)]
pub struct QuirkTable<'a> {
    pub entries: &'a [QuirkEntry],
}

impl<'a> QuirkTable<'a> {
    pub const fn new(entries: &'a [QuirkEntry]) -> Self {
        QuirkTable { entries }
    }

    pub fn lookup(&self, vendor: u16, product: u16) -> Quirks {
        self.entries
            .iter()
            .filter(|e| e.vendor == vendor && e.product.is_none_or(|p| p == product))
            .fold(Quirks::NONE, |acc, e| acc.with(e.quirks))
    }
}

/// Built-in quirks.
pub static DEFAULT_QUIRKS: QuirkTable<'static> = QuirkTable::new(&[
    // QEMU usb-net (also the Linux g_ether gadget id): QEMU's RNDIS keeps bytes
    // past MessageLength in its reassembly buffer, so 64-multiple OUT transfers
    // must end with a ZLP instead of one padding byte.
    QuirkEntry {
        vendor: 0x0525,
        product: Some(0xa4a2),
        quirks: Quirks::ZLP_ON_64_MULTIPLE,
    },
]);

// ---------------------------------------------------------------------------
// Configuration choice

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigPreference {
    /// The configuration holding a CDC-ECM communication interface.
    Ecm,
    /// The configuration holding an RNDIS communication interface.
    Rndis,
    /// A specific bConfigurationValue.
    Value(u8),
    /// First configuration that is not RNDIS-only or vendor-specific-only,
    /// else the first configuration.
    Default,
}

impl ConfigPreference {
    /// A `PREFER_CONFIG(n)` quirk overrides `fallback`.
    pub fn with_quirks(fallback: ConfigPreference, quirks: Quirks) -> ConfigPreference {
        match quirks.preferred_config() {
            Some(v) => ConfigPreference::Value(v),
            None => fallback,
        }
    }
}

/// RNDIS: wireless controller 0xE0/1/3, or CDC 0x02/0x02/0xFF (ACM with vendor protocol).
pub fn is_rndis(alt: &AltSetting) -> bool {
    matches!(
        (alt.class, alt.subclass, alt.protocol),
        (class::WIRELESS_CONTROLLER, 0x01, 0x03) | (class::COMMUNICATIONS, 0x02, 0xFF)
    )
}

/// CDC Ethernet Control Model: 0x02/0x06.
pub fn is_ecm(alt: &AltSetting) -> bool {
    alt.class == class::COMMUNICATIONS && alt.subclass == 0x06
}

fn has_alt(c: &Configuration, f: fn(&AltSetting) -> bool) -> bool {
    c.alt_settings().any(|(_, a)| f(a))
}

/// Picks a bConfigurationValue among the device's configurations (in descriptor
/// index order). Only the first bNumConfigurations entries are considered.
/// Returns None when nothing fits the preference.
pub fn choose_configuration(
    device: &DeviceDescriptor,
    configs: &[Configuration],
    preference: ConfigPreference,
) -> Option<u8> {
    let n = configs.len().min(device.num_configurations as usize);
    let configs = &configs[..n];
    let pick = |f: &dyn Fn(&Configuration) -> bool| configs.iter().find(|c| f(c)).map(|c| c.value);
    match preference {
        ConfigPreference::Ecm => pick(&|c| has_alt(c, is_ecm)),
        ConfigPreference::Rndis => pick(&|c| has_alt(c, is_rndis)),
        ConfigPreference::Value(v) => pick(&|c| c.value == v),
        ConfigPreference::Default => pick(&|c| {
            let first = c.interfaces.first().and_then(|i| i.alternates.first());
            match first {
                Some(a) => !is_rndis(a) && a.class != class::VENDOR_SPECIFIC,
                None => false,
            }
        })
        .or_else(|| configs.first().map(|c| c.value)),
    }
}

// ---------------------------------------------------------------------------
// USB network functions

/// The USB Ethernet functions Tether drives. Devices such as QEMU's usb-net (and many
/// phones and gadgets) offer both, in different configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFunction {
    /// CDC Ethernet Control Model.
    Ecm,
    /// Microsoft Remote NDIS.
    Rndis,
}

impl NetFunction {
    /// A `usbnet=` value: `ecm` or `rndis` (exact, lower case).
    pub fn parse(text: &str) -> Option<NetFunction> {
        match text {
            "ecm" => Some(NetFunction::Ecm),
            "rndis" => Some(NetFunction::Rndis),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NetFunction::Ecm => "ecm",
            NetFunction::Rndis => "rndis",
        }
    }

    fn config_preference(self) -> ConfigPreference {
        match self {
            NetFunction::Ecm => ConfigPreference::Ecm,
            NetFunction::Rndis => ConfigPreference::Rndis,
        }
    }

    fn other(self) -> NetFunction {
        match self {
            NetFunction::Ecm => NetFunction::Rndis,
            NetFunction::Rndis => NetFunction::Ecm,
        }
    }
}

/// Which network function to bind on a device, and the bConfigurationValue that holds it:
/// `preferred` when the device offers it, else the other one (so a device offering only one
/// works whatever the preference), None when it offers neither.
pub fn choose_net_function(
    device: &DeviceDescriptor,
    configs: &[Configuration],
    preferred: NetFunction,
) -> Option<(NetFunction, u8)> {
    [preferred, preferred.other()].into_iter().find_map(|f| {
        choose_configuration(device, configs, f.config_preference()).map(|value| (f, value))
    })
}
