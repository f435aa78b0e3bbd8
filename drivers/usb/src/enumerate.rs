//! Enumeration: from a device at the default address to a [`UsbDevice`] with every
//! descriptor read and parsed, over any [`HostController`].
//!
//! The sequence (USB 2.0 9.1.2 with xHCI's Address Device doing SET_ADDRESS):
//! address_device → GET_DESCRIPTOR(device, 8) → EP0 max packet fix-up → GET_DESCRIPTOR(device,
//! 18) → per configuration GET_DESCRIPTOR(configuration, 9) then wTotalLength → strings.
//! Every failure names its step; on any failure after addressing, the device is released.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::descriptor::{
    dt, parse_language_ids, parse_string, Configuration, DeviceDescriptor, ParseError,
    MAX_INTERFACES,
};
use crate::host::{Attachment, DeviceHandle, HostController, TransferError};
use crate::matching::{Quirks, DEFAULT_QUIRKS};
use crate::request::SetupPacket;

/// Timeout for every enumeration control transfer.
pub const CONTROL_TIMEOUT_MS: u32 = 1000;
/// Largest configuration descriptor set accepted (wTotalLength).
pub const MAX_CONFIG_TOTAL_LENGTH: usize = 4096;
/// Configurations read at most (Linux reads 8 too); further ones are ignored.
pub const MAX_CONFIGURATIONS: usize = 8;
/// String descriptors are read with this length (the largest a descriptor can be).
const STRING_READ_LENGTH: u16 = 255;

/// An enumerated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbDevice {
    pub handle: DeviceHandle,
    pub attachment: Attachment,
    pub descriptor: DeviceDescriptor,
    /// EP0 max packet size in bytes, as programmed into the controller.
    pub ep0_max_packet: u16,
    /// Configurations in descriptor-index order (not by bConfigurationValue).
    pub configurations: Vec<Configuration>,
    /// The language the strings were read in (None when the device has no strings or its
    /// language list could not be read).
    pub language: Option<u16>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

impl UsbDevice {
    /// The configuration with this bConfigurationValue.
    pub fn configuration(&self, value: u8) -> Option<&Configuration> {
        self.configurations.iter().find(|c| c.value == value)
    }
    pub fn quirks(&self) -> Quirks {
        DEFAULT_QUIRKS.lookup(self.descriptor.vendor, self.descriptor.product)
    }
}

/// What went wrong in one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    Transfer(TransferError),
    Parse(ParseError),
    /// wTotalLength above [`MAX_CONFIG_TOTAL_LENGTH`].
    ConfigTooLarge {
        declared: u16,
        max: usize,
    },
    /// bNumInterfaces above [`MAX_INTERFACES`].
    TooManyInterfaces {
        declared: u8,
        max: usize,
    },
    /// bMaxPacketSize0 that is not valid at the speed the device is attached at.
    BadMaxPacket0 {
        value: u8,
        speed: crate::speed::Speed,
    },
    /// The device answered the full descriptor differently from the first 8 bytes.
    Inconsistent(&'static str),
    /// bNumConfigurations is 0.
    NoConfigurations,
    /// SET_CONFIGURATION with a value the device does not offer.
    NoSuchConfiguration(u8),
    /// Hub logic on a device that is not a hub.
    NotAHub,
    /// A hub whose route string has no room for another tier (5 hub tiers at most).
    HubTooDeep {
        depth: u8,
    },
    /// A hub descriptor with more ports than the stack supports.
    TooManyPorts {
        ports: u8,
        max: u8,
    },
    /// A hub port reset that did not complete.
    ResetTimeout,
    /// A hub port that is not enabled after its reset.
    PortNotEnabled,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Transfer(e) => write!(f, "{e}"),
            StepError::Parse(e) => write!(f, "{e}"),
            StepError::ConfigTooLarge { declared, max } => {
                write!(
                    f,
                    "wTotalLength {declared} exceeds the limit of {max} bytes"
                )
            }
            StepError::TooManyInterfaces { declared, max } => {
                write!(f, "bNumInterfaces {declared} exceeds the limit of {max}")
            }
            StepError::BadMaxPacket0 { value, speed } => {
                write!(f, "bMaxPacketSize0 {value} is invalid at {speed} speed")
            }
            StepError::Inconsistent(what) => write!(f, "inconsistent descriptor: {what}"),
            StepError::NoConfigurations => f.write_str("device has no configurations"),
            StepError::NoSuchConfiguration(v) => write!(f, "no configuration with value {v}"),
            StepError::NotAHub => f.write_str("not a hub"),
            StepError::HubTooDeep { depth } => {
                write!(
                    f,
                    "hub at tier {depth}: no route string tier left for its ports"
                )
            }
            StepError::TooManyPorts { ports, max } => {
                write!(f, "hub has {ports} ports, at most {max} supported")
            }
            StepError::ResetTimeout => f.write_str("port reset did not complete"),
            StepError::PortNotEnabled => f.write_str("port not enabled after reset"),
        }
    }
}

impl From<TransferError> for StepError {
    fn from(e: TransferError) -> Self {
        StepError::Transfer(e)
    }
}
impl From<ParseError> for StepError {
    fn from(e: ParseError) -> Self {
        StepError::Parse(e)
    }
}

/// An enumeration failure: which step, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnumerateError {
    pub step: &'static str,
    pub error: StepError,
}

impl fmt::Display for EnumerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

/// Step names (also what tests match on).
pub mod step {
    pub const ADDRESS: &str = "address device";
    pub const DEVICE8: &str = "GET_DESCRIPTOR(device, 8)";
    pub const EP0: &str = "EP0 max packet fix-up";
    pub const DEVICE18: &str = "GET_DESCRIPTOR(device, 18)";
    pub const CONFIG_HEADER: &str = "GET_DESCRIPTOR(configuration, 9)";
    pub const CONFIG_FULL: &str = "GET_DESCRIPTOR(configuration, wTotalLength)";
    pub const CONFIG_PARSE: &str = "parse configuration";
    pub const SET_CONFIGURATION: &str = "SET_CONFIGURATION";
}

fn fail_at<E: Into<StepError>>(step: &'static str) -> impl FnOnce(E) -> EnumerateError {
    move |e| EnumerateError {
        step,
        error: e.into(),
    }
}

fn get_descriptor(
    hc: &mut impl HostController,
    dev: DeviceHandle,
    setup: SetupPacket,
    buf: &mut [u8],
) -> Result<usize, TransferError> {
    let n = hc.control_transfer(dev, setup, buf, CONTROL_TIMEOUT_MS)?;
    // A controller reporting more than asked for is a controller bug; never trust it.
    Ok(n.min(setup.length as usize).min(buf.len()))
}

/// Enumerates the device at `at` (port already reset and enabled). `lang` is the preferred
/// string language (e.g. [`crate::descriptor::LANG_EN_US`]); the device's first language is
/// used when it does not offer it. On failure the device is released.
pub fn enumerate(
    hc: &mut impl HostController,
    at: Attachment,
    lang: u16,
) -> Result<UsbDevice, EnumerateError> {
    let handle = hc
        .address_device(at)
        .map_err(fail_at::<TransferError>(step::ADDRESS))?;
    match enumerate_addressed(hc, handle, at, lang) {
        Ok(d) => Ok(d),
        Err(e) => {
            // The enumeration error is what matters; a release failure cannot be acted on here.
            let _ = hc.release_device(handle);
            Err(e)
        }
    }
}

fn enumerate_addressed(
    hc: &mut impl HostController,
    handle: DeviceHandle,
    attachment: Attachment,
    lang: u16,
) -> Result<UsbDevice, EnumerateError> {
    let speed = attachment.speed;

    // 1. First 8 bytes: enough for bMaxPacketSize0 at any EP0 packet size.
    let mut prefix = [0u8; 8];
    let n = get_descriptor(
        hc,
        handle,
        SetupPacket::get_device_descriptor(8),
        &mut prefix,
    )
    .map_err(fail_at::<TransferError>(step::DEVICE8))?;
    DeviceDescriptor::parse_max_packet0(&prefix[..n])
        .map_err(fail_at::<ParseError>(step::DEVICE8))?;
    let raw_mps0 = prefix[7];
    let ep0 = speed.ep0_max_packet(raw_mps0).ok_or(EnumerateError {
        step: step::DEVICE8,
        error: StepError::BadMaxPacket0 {
            value: raw_mps0,
            speed,
        },
    })?;

    // 2. EP0 fix-up.
    if ep0 != speed.default_ep0_max_packet() {
        hc.set_ep0_max_packet(handle, ep0)
            .map_err(fail_at::<TransferError>(step::EP0))?;
    }

    // 3. Whole device descriptor.
    let mut full = [0u8; DeviceDescriptor::LENGTH];
    let n = get_descriptor(
        hc,
        handle,
        SetupPacket::get_device_descriptor(DeviceDescriptor::LENGTH as u16),
        &mut full,
    )
    .map_err(fail_at::<TransferError>(step::DEVICE18))?;
    let descriptor =
        DeviceDescriptor::parse(&full[..n]).map_err(fail_at::<ParseError>(step::DEVICE18))?;
    if descriptor.max_packet_size0 != raw_mps0 {
        return Err(EnumerateError {
            step: step::DEVICE18,
            error: StepError::Inconsistent("bMaxPacketSize0 changed between reads"),
        });
    }
    if descriptor.num_configurations == 0 {
        return Err(EnumerateError {
            step: step::DEVICE18,
            error: StepError::NoConfigurations,
        });
    }

    // 4. Configurations.
    let count = (descriptor.num_configurations as usize).min(MAX_CONFIGURATIONS);
    let mut configurations = Vec::with_capacity(count);
    for index in 0..count as u8 {
        configurations.push(read_configuration(hc, handle, index)?);
    }

    let mut dev = UsbDevice {
        handle,
        attachment,
        descriptor,
        ep0_max_packet: ep0,
        configurations,
        language: None,
        manufacturer: None,
        product: None,
        serial: None,
    };

    // 5. Strings: never fatal.
    if !dev.quirks().contains(Quirks::NO_STRINGS) {
        read_strings(hc, &mut dev, lang);
    }
    Ok(dev)
}

fn read_configuration(
    hc: &mut impl HostController,
    handle: DeviceHandle,
    index: u8,
) -> Result<Configuration, EnumerateError> {
    let mut header = [0u8; Configuration::HEADER_LENGTH];
    let n = get_descriptor(
        hc,
        handle,
        SetupPacket::get_configuration_descriptor(index, Configuration::HEADER_LENGTH as u16),
        &mut header,
    )
    .map_err(fail_at::<TransferError>(step::CONFIG_HEADER))?;
    let total = Configuration::parse_total_length(&header[..n])
        .map_err(fail_at::<ParseError>(step::CONFIG_HEADER))?;
    if total as usize > MAX_CONFIG_TOTAL_LENGTH {
        return Err(EnumerateError {
            step: step::CONFIG_HEADER,
            error: StepError::ConfigTooLarge {
                declared: total,
                max: MAX_CONFIG_TOTAL_LENGTH,
            },
        });
    }
    if header[4] as usize > MAX_INTERFACES {
        return Err(EnumerateError {
            step: step::CONFIG_HEADER,
            error: StepError::TooManyInterfaces {
                declared: header[4],
                max: MAX_INTERFACES,
            },
        });
    }
    let mut buf = alloc::vec![0u8; total.max(Configuration::HEADER_LENGTH as u16) as usize];
    let n = get_descriptor(
        hc,
        handle,
        SetupPacket::get_configuration_descriptor(index, buf.len() as u16),
        &mut buf,
    )
    .map_err(fail_at::<TransferError>(step::CONFIG_FULL))?;
    if buf[..n.min(4)] != header[..n.min(4)] {
        return Err(EnumerateError {
            step: step::CONFIG_FULL,
            error: StepError::Inconsistent("configuration header changed between reads"),
        });
    }
    Configuration::parse(&buf[..n]).map_err(fail_at::<ParseError>(step::CONFIG_PARSE))
}

/// Reads one string descriptor; None on any error (STALL included).
pub fn read_string(
    hc: &mut impl HostController,
    handle: DeviceHandle,
    index: u8,
    lang: u16,
) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0u8; STRING_READ_LENGTH as usize];
    let n = get_descriptor(
        hc,
        handle,
        SetupPacket::get_string_descriptor(index, lang, STRING_READ_LENGTH),
        &mut buf,
    )
    .ok()?;
    parse_string(&buf[..n]).ok()
}

fn read_strings(hc: &mut impl HostController, dev: &mut UsbDevice, preferred: u16) {
    let d = dev.descriptor;
    if d.manufacturer_index == 0 && d.product_index == 0 && d.serial_index == 0 {
        return;
    }
    let mut buf = [0u8; STRING_READ_LENGTH as usize];
    let languages = get_descriptor(
        hc,
        dev.handle,
        SetupPacket::get_string_descriptor(0, 0, STRING_READ_LENGTH),
        &mut buf,
    )
    .ok()
    .and_then(|n| parse_language_ids(&buf[..n]).ok())
    .unwrap_or_default();
    let Some(first) = languages.first().copied() else {
        return;
    };
    let lang = if languages.contains(&preferred) {
        preferred
    } else {
        first
    };
    dev.language = Some(lang);
    dev.manufacturer = read_string(hc, dev.handle, d.manufacturer_index, lang);
    dev.product = read_string(hc, dev.handle, d.product_index, lang);
    dev.serial = read_string(hc, dev.handle, d.serial_index, lang);
}

/// SET_CONFIGURATION(value); 0 unconfigures. The value must be one the device offers.
///
/// The controller must already have the endpoints of that configuration set up (xHCI:
/// Configure Endpoint); that is the host controller driver's job, not this function's.
pub fn set_configuration(
    hc: &mut impl HostController,
    dev: &UsbDevice,
    value: u8,
) -> Result<(), EnumerateError> {
    if value != 0 && dev.configuration(value).is_none() {
        return Err(EnumerateError {
            step: step::SET_CONFIGURATION,
            error: StepError::NoSuchConfiguration(value),
        });
    }
    hc.control_transfer(
        dev.handle,
        SetupPacket::set_configuration(value),
        &mut [],
        CONTROL_TIMEOUT_MS,
    )
    .map(|_| ())
    .map_err(fail_at::<TransferError>(step::SET_CONFIGURATION))
}

/// GET_DESCRIPTOR(device qualifier). A STALL is how a full-speed-only device answers (USB 2.0
/// 9.6.2): `Ok(None)`. EP0 recovers from the protocol stall by itself, so the next control
/// transfer works. Devices with the `NO_DEVICE_QUALIFIER` quirk are not asked.
pub fn probe_device_qualifier(
    hc: &mut impl HostController,
    dev: &UsbDevice,
) -> Result<Option<[u8; 10]>, TransferError> {
    if dev.quirks().contains(Quirks::NO_DEVICE_QUALIFIER) {
        return Ok(None);
    }
    let mut buf = [0u8; 10];
    match hc.control_transfer(
        dev.handle,
        SetupPacket::get_device_qualifier(10),
        &mut buf,
        CONTROL_TIMEOUT_MS,
    ) {
        Ok(10) if buf[1] == dt::DEVICE_QUALIFIER => Ok(Some(buf)),
        Ok(n) => Err(TransferError::Controller(alloc::format!(
            "device qualifier answer of {n} bytes, type {:#04x}",
            buf[1]
        ))),
        Err(TransferError::Stall) => Ok(None),
        Err(e) => Err(e),
    }
}
