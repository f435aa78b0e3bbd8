//! USB descriptor parsing (USB 2.0 ch. 9, USB 3.2 ch. 9, CDC 1.2 / ECM 1.2).
//!
//! Every parser works on untrusted bytes: it never panics, never loops without
//! advancing, and reports what is wrong and at which byte offset.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Standard descriptor types.
pub mod dt {
    pub const DEVICE: u8 = 0x01;
    pub const CONFIGURATION: u8 = 0x02;
    pub const STRING: u8 = 0x03;
    pub const INTERFACE: u8 = 0x04;
    pub const ENDPOINT: u8 = 0x05;
    pub const DEVICE_QUALIFIER: u8 = 0x06;
    pub const OTHER_SPEED_CONFIGURATION: u8 = 0x07;
    pub const INTERFACE_POWER: u8 = 0x08;
    pub const OTG: u8 = 0x09;
    pub const DEBUG: u8 = 0x0A;
    pub const INTERFACE_ASSOCIATION: u8 = 0x0B;
    pub const BOS: u8 = 0x0F;
    pub const DEVICE_CAPABILITY: u8 = 0x10;
    pub const HID: u8 = 0x21;
    pub const CS_INTERFACE: u8 = 0x24;
    pub const CS_ENDPOINT: u8 = 0x25;
    pub const HUB: u8 = 0x29;
    pub const SS_HUB: u8 = 0x2A;
    pub const SS_ENDPOINT_COMPANION: u8 = 0x30;
    pub const SSP_ISOCH_ENDPOINT_COMPANION: u8 = 0x31;
}

/// Class codes used by the core.
pub mod class {
    pub const PER_INTERFACE: u8 = 0x00;
    pub const AUDIO: u8 = 0x01;
    pub const COMMUNICATIONS: u8 = 0x02;
    pub const HID: u8 = 0x03;
    pub const MASS_STORAGE: u8 = 0x08;
    pub const HUB: u8 = 0x09;
    pub const CDC_DATA: u8 = 0x0A;
    pub const MISC: u8 = 0xEF;
    pub const WIRELESS_CONTROLLER: u8 = 0xE0;
    pub const VENDOR_SPECIFIC: u8 = 0xFF;
}

/// CDC functional descriptor subtypes (CDC 1.2 table 13).
pub mod cdc_subtype {
    pub const HEADER: u8 = 0x00;
    pub const CALL_MANAGEMENT: u8 = 0x01;
    pub const ACM: u8 = 0x02;
    pub const UNION: u8 = 0x06;
    pub const ETHERNET: u8 = 0x0F;
    pub const NCM: u8 = 0x1A;
}

/// Maximum number of distinct interfaces accepted in one configuration.
pub const MAX_INTERFACES: usize = 32;
/// Maximum number of endpoints accepted in one alternate setting.
pub const MAX_ENDPOINTS: usize = 32;

/// What is wrong with a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fewer bytes available than the descriptor needs.
    Truncated { needed: usize, available: usize },
    /// bLength is impossible for this descriptor type (too short, 0 or 1).
    BadLength { length: u8, minimum: u8 },
    /// bDescriptorType is not the one asked for.
    WrongType { expected: u8 },
    /// wTotalLength disagrees with the bytes supplied, or is below the header size.
    TotalLengthMismatch { declared: u16, available: usize },
    /// More than [`MAX_INTERFACES`] distinct interface numbers.
    TooManyInterfaces,
    /// More than [`MAX_ENDPOINTS`] endpoints in one alternate setting.
    TooManyEndpoints { interface: u8, alt: u8 },
    /// An endpoint (or companion) descriptor appeared before any interface descriptor.
    EndpointOutsideInterface,
    /// The same (interface, alternate setting) pair appeared twice.
    DuplicateInterface { interface: u8, alt: u8 },
    /// The same endpoint address appeared twice in one alternate setting.
    DuplicateEndpoint { address: u8 },
    /// Endpoint number 0 or reserved address bits set.
    BadEndpointAddress { address: u8 },
    /// wMaxPacketSize of 0 on a non-isochronous endpoint, or reserved multiplier 3.
    BadMaxPacket { address: u8, raw: u16 },
    /// SuperSpeed companion not directly attached to an endpoint, or a second one.
    MisplacedCompanion,
    /// A descriptor type that cannot appear inside a configuration.
    UnexpectedDescriptor,
    /// bMaxPacketSize0 is not 8, 16, 32, 64 or 9 (SuperSpeed exponent).
    BadMaxPacket0 { value: u8 },
    /// Interface association with bInterfaceCount 0.
    EmptyAssociation,
    /// A CDC union descriptor without a slave interface.
    EmptyUnion,
}

/// A parse failure: what is wrong, which descriptor type, and at which byte offset
/// of the buffer handed to the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub descriptor_type: u8,
    pub kind: ErrorKind,
}

impl ParseError {
    fn new(offset: usize, descriptor_type: u8, kind: ErrorKind) -> Self {
        ParseError {
            offset,
            descriptor_type,
            kind,
        }
    }
}

/// Human-readable name of a descriptor type.
pub fn type_name(ty: u8) -> &'static str {
    match ty {
        dt::DEVICE => "device",
        dt::CONFIGURATION => "configuration",
        dt::STRING => "string",
        dt::INTERFACE => "interface",
        dt::ENDPOINT => "endpoint",
        dt::DEVICE_QUALIFIER => "device qualifier",
        dt::OTHER_SPEED_CONFIGURATION => "other-speed configuration",
        dt::INTERFACE_ASSOCIATION => "interface association",
        dt::BOS => "BOS",
        dt::DEVICE_CAPABILITY => "device capability",
        dt::HID => "HID",
        dt::CS_INTERFACE => "class-specific interface",
        dt::CS_ENDPOINT => "class-specific endpoint",
        dt::HUB => "hub",
        dt::SS_HUB => "SuperSpeed hub",
        dt::SS_ENDPOINT_COMPANION => "SuperSpeed endpoint companion",
        dt::SSP_ISOCH_ENDPOINT_COMPANION => "SuperSpeedPlus isochronous companion",
        _ => "unknown",
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} descriptor (type {:#04x}) at offset {}: ",
            type_name(self.descriptor_type),
            self.descriptor_type,
            self.offset
        )?;
        match self.kind {
            ErrorKind::Truncated { needed, available } => {
                write!(
                    f,
                    "truncated: needs {needed} bytes, only {available} available"
                )
            }
            ErrorKind::BadLength { length, minimum } => {
                write!(f, "bLength {length} is below the minimum {minimum}")
            }
            ErrorKind::WrongType { expected } => {
                write!(f, "expected descriptor type {expected:#04x}")
            }
            ErrorKind::TotalLengthMismatch {
                declared,
                available,
            } => write!(
                f,
                "wTotalLength {declared} does not fit the {available} bytes supplied"
            ),
            ErrorKind::TooManyInterfaces => {
                write!(f, "more than {MAX_INTERFACES} interfaces")
            }
            ErrorKind::TooManyEndpoints { interface, alt } => write!(
                f,
                "interface {interface} alt {alt} has more than {MAX_ENDPOINTS} endpoints"
            ),
            ErrorKind::EndpointOutsideInterface => {
                write!(f, "endpoint descriptor before any interface descriptor")
            }
            ErrorKind::DuplicateInterface { interface, alt } => {
                write!(f, "interface {interface} alt {alt} appears twice")
            }
            ErrorKind::DuplicateEndpoint { address } => {
                write!(
                    f,
                    "endpoint {address:#04x} appears twice in one alt setting"
                )
            }
            ErrorKind::BadEndpointAddress { address } => {
                write!(f, "invalid endpoint address {address:#04x}")
            }
            ErrorKind::BadMaxPacket { address, raw } => {
                write!(
                    f,
                    "endpoint {address:#04x} has invalid wMaxPacketSize {raw:#06x}"
                )
            }
            ErrorKind::MisplacedCompanion => {
                write!(f, "companion descriptor not directly after its endpoint")
            }
            ErrorKind::UnexpectedDescriptor => {
                write!(f, "descriptor type not allowed inside a configuration")
            }
            ErrorKind::BadMaxPacket0 { value } => write!(f, "invalid bMaxPacketSize0 {value}"),
            ErrorKind::EmptyAssociation => write!(f, "interface association with no interfaces"),
            ErrorKind::EmptyUnion => write!(f, "CDC union without slave interfaces"),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks a stand-alone descriptor's header: enough bytes, right type, sane bLength.
/// Returns the descriptor's bytes (`bLength` long).
fn check_header(buf: &[u8], ty: u8, min: u8) -> Result<&[u8], ParseError> {
    if buf.len() < 2 {
        return Err(ParseError::new(
            0,
            ty,
            ErrorKind::Truncated {
                needed: 2,
                available: buf.len(),
            },
        ));
    }
    if buf[1] != ty {
        return Err(ParseError::new(
            0,
            buf[1],
            ErrorKind::WrongType { expected: ty },
        ));
    }
    let len = buf[0];
    if len < min {
        return Err(ParseError::new(
            0,
            ty,
            ErrorKind::BadLength {
                length: len,
                minimum: min,
            },
        ));
    }
    if buf.len() < len as usize {
        return Err(ParseError::new(
            0,
            ty,
            ErrorKind::Truncated {
                needed: len as usize,
                available: buf.len(),
            },
        ));
    }
    Ok(&buf[..len as usize])
}

/// A raw descriptor found while walking a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDescriptor<'a> {
    pub offset: usize,
    pub descriptor_type: u8,
    /// The whole descriptor including bLength and bDescriptorType.
    pub bytes: &'a [u8],
}

/// Iterator over the descriptors of a buffer. Yields an error (once, then stops)
/// on bLength < 2 or a descriptor running past the end.
pub struct DescriptorIter<'a> {
    buf: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> DescriptorIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        DescriptorIter {
            buf,
            offset: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for DescriptorIter<'a> {
    type Item = Result<RawDescriptor<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.buf.len() {
            return None;
        }
        let off = self.offset;
        let rest = &self.buf[off..];
        let fail = |this: &mut Self, e| {
            this.done = true;
            Some(Err(e))
        };
        if rest.len() < 2 {
            let ty = 0;
            return fail(
                self,
                ParseError::new(
                    off,
                    ty,
                    ErrorKind::Truncated {
                        needed: 2,
                        available: rest.len(),
                    },
                ),
            );
        }
        let len = rest[0];
        let ty = rest[1];
        if len < 2 {
            return fail(
                self,
                ParseError::new(
                    off,
                    ty,
                    ErrorKind::BadLength {
                        length: len,
                        minimum: 2,
                    },
                ),
            );
        }
        if rest.len() < len as usize {
            return fail(
                self,
                ParseError::new(
                    off,
                    ty,
                    ErrorKind::Truncated {
                        needed: len as usize,
                        available: rest.len(),
                    },
                ),
            );
        }
        self.offset += len as usize;
        Some(Ok(RawDescriptor {
            offset: off,
            descriptor_type: ty,
            bytes: &rest[..len as usize],
        }))
    }
}

// ---------------------------------------------------------------------------
// Device descriptor

/// Standard device descriptor (18 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    pub usb_version: u16,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// Raw bMaxPacketSize0 (an exponent for SuperSpeed devices).
    pub max_packet_size0: u8,
    pub vendor: u16,
    pub product: u16,
    pub device_version: u16,
    pub manufacturer_index: u8,
    pub product_index: u8,
    pub serial_index: u8,
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    pub const LENGTH: usize = 18;

    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        let d = check_header(buf, dt::DEVICE, Self::LENGTH as u8)?;
        let mps0 = d[7];
        let usb_version = le16(d, 2);
        if !valid_max_packet0(usb_version, mps0) {
            return Err(ParseError::new(
                7,
                dt::DEVICE,
                ErrorKind::BadMaxPacket0 { value: mps0 },
            ));
        }
        Ok(DeviceDescriptor {
            usb_version,
            class: d[4],
            subclass: d[5],
            protocol: d[6],
            max_packet_size0: mps0,
            vendor: le16(d, 8),
            product: le16(d, 10),
            device_version: le16(d, 12),
            manufacturer_index: d[14],
            product_index: d[15],
            serial_index: d[16],
            num_configurations: d[17],
        })
    }

    /// Reads bMaxPacketSize0 from the first 8 bytes of a device descriptor (the
    /// first GET_DESCRIPTOR a full-speed device gets). Returns the packet size in bytes.
    pub fn parse_max_packet0(prefix: &[u8]) -> Result<u16, ParseError> {
        if prefix.len() < 8 {
            return Err(ParseError::new(
                0,
                dt::DEVICE,
                ErrorKind::Truncated {
                    needed: 8,
                    available: prefix.len(),
                },
            ));
        }
        if prefix[1] != dt::DEVICE {
            return Err(ParseError::new(
                0,
                prefix[1],
                ErrorKind::WrongType {
                    expected: dt::DEVICE,
                },
            ));
        }
        let version = le16(prefix, 2);
        let v = prefix[7];
        if !valid_max_packet0(version, v) {
            return Err(ParseError::new(
                7,
                dt::DEVICE,
                ErrorKind::BadMaxPacket0 { value: v },
            ));
        }
        Ok(max_packet0_bytes(version, v))
    }

    /// EP0 max packet size in bytes.
    pub fn max_packet0_bytes(&self) -> u16 {
        max_packet0_bytes(self.usb_version, self.max_packet_size0)
    }
}

fn valid_max_packet0(version: u16, v: u8) -> bool {
    matches!(v, 8 | 16 | 32 | 64) || (v == 9 && version >= 0x0300)
}

fn max_packet0_bytes(version: u16, v: u8) -> u16 {
    if version >= 0x0300 && v == 9 {
        512
    } else {
        v as u16
    }
}

/// Device qualifier descriptor (10 bytes): how a high-speed capable device would
/// look at the other speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceQualifier {
    pub usb_version: u16,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub max_packet_size0: u8,
    pub num_configurations: u8,
}

impl DeviceQualifier {
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        let d = check_header(buf, dt::DEVICE_QUALIFIER, 10)?;
        Ok(DeviceQualifier {
            usb_version: le16(d, 2),
            class: d[4],
            subclass: d[5],
            protocol: d[6],
            max_packet_size0: d[7],
            num_configurations: d[8],
        })
    }
}

// ---------------------------------------------------------------------------
// Endpoints

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferType {
    Control,
    Isochronous,
    Bulk,
    Interrupt,
}

impl TransferType {
    pub fn from_attributes(attributes: u8) -> Self {
        match attributes & 0x3 {
            0 => TransferType::Control,
            1 => TransferType::Isochronous,
            2 => TransferType::Bulk,
            _ => TransferType::Interrupt,
        }
    }
}

/// SuperSpeed endpoint companion descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsCompanion {
    /// bMaxBurst: packets per burst minus one (0..=15).
    pub max_burst: u8,
    pub attributes: u8,
    pub bytes_per_interval: u16,
}

impl SsCompanion {
    /// Bulk: log2 of the number of streams (0 = no streams).
    pub fn max_streams_exponent(&self) -> u8 {
        self.attributes & 0x1F
    }
    /// Isochronous: Mult (bursts per interval minus one).
    pub fn mult(&self) -> u8 {
        self.attributes & 0x3
    }
}

/// Standard endpoint descriptor plus what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress (bit 7 = IN).
    pub address: u8,
    pub attributes: u8,
    /// Raw wMaxPacketSize including the high-bandwidth bits 11..12.
    pub max_packet_raw: u16,
    pub interval: u8,
    pub companion: Option<SsCompanion>,
    /// Class-specific or unknown descriptors after this endpoint.
    pub extra: Vec<ClassDescriptor>,
}

impl Endpoint {
    pub fn number(&self) -> u8 {
        self.address & 0x0F
    }
    pub fn direction(&self) -> Direction {
        if self.address & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }
    pub fn transfer_type(&self) -> TransferType {
        TransferType::from_attributes(self.attributes)
    }
    /// Bytes per packet (bits 0..10).
    pub fn max_packet_size(&self) -> u16 {
        self.max_packet_raw & 0x7FF
    }
    /// High-speed high-bandwidth: additional transactions per microframe (0..=2).
    pub fn additional_transactions(&self) -> u8 {
        ((self.max_packet_raw >> 11) & 0x3) as u8
    }
    /// Transactions per microframe for high-speed periodic endpoints (1..=3).
    pub fn transactions_per_microframe(&self) -> u8 {
        self.additional_transactions() + 1
    }
    /// xHCI Device Context Index: EP0 = 1, else number * 2 + (1 if IN).
    pub fn dci(&self) -> u8 {
        let n = self.number();
        if n == 0 {
            1
        } else {
            n * 2 + u8::from(self.direction() == Direction::In)
        }
    }
    /// xHCI endpoint-context EP Type field.
    pub fn xhci_endpoint_type(&self) -> u8 {
        let dir_in = self.direction() == Direction::In;
        match (self.transfer_type(), dir_in) {
            (TransferType::Control, _) => 4,
            (TransferType::Isochronous, false) => 1,
            (TransferType::Bulk, false) => 2,
            (TransferType::Interrupt, false) => 3,
            (TransferType::Isochronous, true) => 5,
            (TransferType::Bulk, true) => 6,
            (TransferType::Interrupt, true) => 7,
        }
    }
    /// xHCI Max Burst Size: companion bMaxBurst for SuperSpeed, the high-bandwidth
    /// multiplier for high-speed periodic endpoints, else 0.
    pub fn xhci_max_burst(&self) -> u8 {
        if let Some(c) = self.companion {
            return c.max_burst;
        }
        match self.transfer_type() {
            TransferType::Isochronous | TransferType::Interrupt => self.additional_transactions(),
            _ => 0,
        }
    }
    /// Max ESIT payload (bytes per service interval) for periodic endpoints.
    pub fn max_esit_payload(&self) -> u32 {
        match self.transfer_type() {
            TransferType::Isochronous | TransferType::Interrupt => {
                if let Some(c) = self.companion {
                    c.bytes_per_interval as u32
                } else {
                    self.max_packet_size() as u32 * self.transactions_per_microframe() as u32
                }
            }
            _ => 0,
        }
    }

    fn parse(d: &[u8], offset: usize) -> Result<Endpoint, ParseError> {
        let address = d[2];
        let attributes = d[3];
        let raw = le16(d, 4);
        if address & 0x0F == 0 || address & 0x70 != 0 {
            return Err(ParseError::new(
                offset,
                dt::ENDPOINT,
                ErrorKind::BadEndpointAddress { address },
            ));
        }
        let ep = Endpoint {
            address,
            attributes,
            max_packet_raw: raw,
            interval: d[6],
            companion: None,
            extra: Vec::new(),
        };
        let bad_mult = (raw >> 11) & 0x3 == 3;
        let zero = ep.max_packet_size() == 0 && ep.transfer_type() != TransferType::Isochronous;
        if bad_mult || zero {
            return Err(ParseError::new(
                offset,
                dt::ENDPOINT,
                ErrorKind::BadMaxPacket { address, raw },
            ));
        }
        Ok(ep)
    }
}

// ---------------------------------------------------------------------------
// Class-specific descriptors

/// CDC Ethernet Networking functional descriptor (ECM 1.2 table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFunctional {
    /// String index holding the MAC address as 12 hex digits.
    pub mac_string_index: u8,
    pub statistics: u32,
    pub max_segment_size: u16,
    /// Raw wNumberMCFilters (bit 15 = imperfect filtering).
    pub mc_filters_raw: u16,
    pub power_filters: u8,
}

impl EthernetFunctional {
    pub fn multicast_filters(&self) -> u16 {
        self.mc_filters_raw & 0x7FFF
    }
    pub fn multicast_filtering_imperfect(&self) -> bool {
        self.mc_filters_raw & 0x8000 != 0
    }
}

/// A descriptor that belongs to an interface or endpoint beyond the standard ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassDescriptor {
    CdcHeader {
        cdc_version: u16,
    },
    CdcCallManagement {
        capabilities: u8,
        data_interface: u8,
    },
    CdcAcm {
        capabilities: u8,
    },
    CdcUnion {
        master: u8,
        slaves: Vec<u8>,
    },
    CdcEthernet(EthernetFunctional),
    /// Anything else, kept verbatim (whole descriptor including its header).
    Unknown {
        descriptor_type: u8,
        bytes: Vec<u8>,
    },
}

impl ClassDescriptor {
    fn unknown(d: &[u8]) -> Self {
        ClassDescriptor::Unknown {
            descriptor_type: d[1],
            bytes: d.to_vec(),
        }
    }

    /// Parses a CS_INTERFACE descriptor of a Communications-class interface.
    fn parse_cdc(d: &[u8], offset: usize) -> Result<Self, ParseError> {
        let short = |min: u8| {
            Err(ParseError::new(
                offset,
                dt::CS_INTERFACE,
                ErrorKind::BadLength {
                    length: d[0],
                    minimum: min,
                },
            ))
        };
        if d.len() < 3 {
            return short(3);
        }
        match d[2] {
            cdc_subtype::HEADER => {
                if d.len() < 5 {
                    return short(5);
                }
                Ok(ClassDescriptor::CdcHeader {
                    cdc_version: le16(d, 3),
                })
            }
            cdc_subtype::CALL_MANAGEMENT => {
                if d.len() < 5 {
                    return short(5);
                }
                Ok(ClassDescriptor::CdcCallManagement {
                    capabilities: d[3],
                    data_interface: d[4],
                })
            }
            cdc_subtype::ACM => {
                if d.len() < 4 {
                    return short(4);
                }
                Ok(ClassDescriptor::CdcAcm { capabilities: d[3] })
            }
            cdc_subtype::UNION => {
                if d.len() < 4 {
                    return short(5);
                }
                if d.len() < 5 {
                    return Err(ParseError::new(
                        offset,
                        dt::CS_INTERFACE,
                        ErrorKind::EmptyUnion,
                    ));
                }
                Ok(ClassDescriptor::CdcUnion {
                    master: d[3],
                    slaves: d[4..].to_vec(),
                })
            }
            cdc_subtype::ETHERNET => {
                if d.len() < 13 {
                    return short(13);
                }
                Ok(ClassDescriptor::CdcEthernet(EthernetFunctional {
                    mac_string_index: d[3],
                    statistics: le32(d, 4),
                    max_segment_size: le16(d, 8),
                    mc_filters_raw: le16(d, 10),
                    power_filters: d[12],
                }))
            }
            _ => Ok(Self::unknown(d)),
        }
    }
}

/// Interfaces whose CS_INTERFACE descriptors are CDC functional descriptors:
/// Communications class, and RNDIS under the wireless (0xE0/1/3) or
/// miscellaneous (0xEF/4/1) class codes.
fn carries_cdc_functionals(alt: &AltSetting) -> bool {
    matches!(
        (alt.class, alt.subclass, alt.protocol),
        (class::COMMUNICATIONS, _, _)
            | (class::WIRELESS_CONTROLLER, 0x01, 0x03)
            | (class::MISC, 0x04, 0x01)
    )
}

// ---------------------------------------------------------------------------
// Interfaces and configurations

/// Interface Association Descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iad {
    pub first_interface: u8,
    pub interface_count: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub string_index: u8,
}

impl Iad {
    pub fn contains(&self, interface: u8) -> bool {
        let i = interface as u16;
        let first = self.first_interface as u16;
        i >= first && i < first + self.interface_count as u16
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltSetting {
    pub alt: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub string_index: u8,
    /// bNumEndpoints as declared (the parser trusts the endpoints it finds).
    pub declared_endpoints: u8,
    pub endpoints: Vec<Endpoint>,
    pub class_descriptors: Vec<ClassDescriptor>,
}

impl AltSetting {
    pub fn endpoint(&self, address: u8) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }
    /// First endpoint of the given type and direction.
    pub fn find_endpoint(&self, ty: TransferType, dir: Direction) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.transfer_type() == ty && e.direction() == dir)
    }
    pub fn cdc_union(&self) -> Option<(u8, &[u8])> {
        self.class_descriptors.iter().find_map(|c| match c {
            ClassDescriptor::CdcUnion { master, slaves } => Some((*master, slaves.as_slice())),
            _ => None,
        })
    }
    pub fn cdc_ethernet(&self) -> Option<&EthernetFunctional> {
        self.class_descriptors.iter().find_map(|c| match c {
            ClassDescriptor::CdcEthernet(e) => Some(e),
            _ => None,
        })
    }
    pub fn cdc_header(&self) -> Option<u16> {
        self.class_descriptors.iter().find_map(|c| match c {
            ClassDescriptor::CdcHeader { cdc_version } => Some(*cdc_version),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    /// Alternate settings in the order they appeared.
    pub alternates: Vec<AltSetting>,
}

impl Interface {
    pub fn alt(&self, alt: u8) -> Option<&AltSetting> {
        self.alternates.iter().find(|a| a.alt == alt)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub value: u8,
    pub string_index: u8,
    pub attributes: u8,
    /// Raw bMaxPower (2 mA units below SuperSpeed, 8 mA at SuperSpeed).
    pub max_power: u8,
    /// bNumInterfaces as declared.
    pub declared_interfaces: u8,
    pub interfaces: Vec<Interface>,
    pub associations: Vec<Iad>,
    /// Descriptors before the first interface other than IADs (vendor, OTG, ...).
    pub extra: Vec<ClassDescriptor>,
}

impl Configuration {
    pub const HEADER_LENGTH: usize = 9;

    pub fn self_powered(&self) -> bool {
        self.attributes & 0x40 != 0
    }
    pub fn remote_wakeup(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    pub fn max_power_ma(&self, superspeed: bool) -> u16 {
        self.max_power as u16 * if superspeed { 8 } else { 2 }
    }
    pub fn interface(&self, number: u8) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.number == number)
    }
    /// All alternate settings with their interface numbers.
    pub fn alt_settings(&self) -> impl Iterator<Item = (u8, &AltSetting)> {
        self.interfaces
            .iter()
            .flat_map(|i| i.alternates.iter().map(move |a| (i.number, a)))
    }

    /// Reads wTotalLength from the 9-byte configuration header (the first read).
    pub fn parse_total_length(header: &[u8]) -> Result<u16, ParseError> {
        let d = check_header(header, dt::CONFIGURATION, Self::HEADER_LENGTH as u8)?;
        Ok(le16(d, 2))
    }

    /// Parses a full configuration descriptor set. `buf` must hold at least
    /// wTotalLength bytes; bytes past wTotalLength are ignored.
    pub fn parse(buf: &[u8]) -> Result<Configuration, ParseError> {
        Self::parse_typed(buf, dt::CONFIGURATION)
    }

    /// Parses an other-speed configuration descriptor set (same layout).
    pub fn parse_other_speed(buf: &[u8]) -> Result<Configuration, ParseError> {
        Self::parse_typed(buf, dt::OTHER_SPEED_CONFIGURATION)
    }

    fn parse_typed(buf: &[u8], ty: u8) -> Result<Configuration, ParseError> {
        let h = check_header(buf, ty, Self::HEADER_LENGTH as u8)?;
        let total = le16(h, 2);
        if (total as usize) < h.len() || total as usize > buf.len() {
            return Err(ParseError::new(
                2,
                ty,
                ErrorKind::TotalLengthMismatch {
                    declared: total,
                    available: buf.len(),
                },
            ));
        }
        let mut config = Configuration {
            value: h[5],
            string_index: h[6],
            attributes: h[7],
            max_power: h[8],
            declared_interfaces: h[4],
            interfaces: Vec::new(),
            associations: Vec::new(),
            extra: Vec::new(),
        };
        let body_start = h.len();
        let body = &buf[body_start..total as usize];
        // (interface index, alt index) of the current alt setting.
        let mut cur: Option<(usize, usize)> = None;
        // Endpoint index in the current alt setting, and whether the previous
        // descriptor was that endpoint (companions must follow immediately).
        let mut cur_ep: Option<usize> = None;
        let mut just_after_ep = false;

        for item in DescriptorIter::new(body) {
            let raw = item.map_err(|mut e| {
                e.offset += body_start;
                e
            })?;
            let off = raw.offset + body_start;
            let d = raw.bytes;
            let ty = raw.descriptor_type;
            let need = |min: u8| -> Result<(), ParseError> {
                if d.len() < min as usize {
                    Err(ParseError::new(
                        off,
                        ty,
                        ErrorKind::BadLength {
                            length: d[0],
                            minimum: min,
                        },
                    ))
                } else {
                    Ok(())
                }
            };
            let was_after_ep = just_after_ep;
            just_after_ep = false;
            match ty {
                dt::INTERFACE => {
                    need(9)?;
                    let (number, alt) = (d[2], d[3]);
                    let idx = match config.interfaces.iter().position(|i| i.number == number) {
                        Some(i) => i,
                        None => {
                            if config.interfaces.len() >= MAX_INTERFACES {
                                return Err(ParseError::new(off, ty, ErrorKind::TooManyInterfaces));
                            }
                            config.interfaces.push(Interface {
                                number,
                                alternates: Vec::new(),
                            });
                            config.interfaces.len() - 1
                        }
                    };
                    let iface = &mut config.interfaces[idx];
                    if iface.alternates.iter().any(|a| a.alt == alt) {
                        return Err(ParseError::new(
                            off,
                            ty,
                            ErrorKind::DuplicateInterface {
                                interface: number,
                                alt,
                            },
                        ));
                    }
                    iface.alternates.push(AltSetting {
                        alt,
                        declared_endpoints: d[4],
                        class: d[5],
                        subclass: d[6],
                        protocol: d[7],
                        string_index: d[8],
                        endpoints: Vec::new(),
                        class_descriptors: Vec::new(),
                    });
                    cur = Some((idx, iface.alternates.len() - 1));
                    cur_ep = None;
                }
                dt::ENDPOINT => {
                    need(7)?;
                    let Some((i, a)) = cur else {
                        return Err(ParseError::new(
                            off,
                            ty,
                            ErrorKind::EndpointOutsideInterface,
                        ));
                    };
                    let ep = Endpoint::parse(d, off)?;
                    let number = config.interfaces[i].number;
                    let alt = &mut config.interfaces[i].alternates[a];
                    if alt.endpoints.iter().any(|e| e.address == ep.address) {
                        return Err(ParseError::new(
                            off,
                            ty,
                            ErrorKind::DuplicateEndpoint {
                                address: ep.address,
                            },
                        ));
                    }
                    if alt.endpoints.len() >= MAX_ENDPOINTS {
                        return Err(ParseError::new(
                            off,
                            ty,
                            ErrorKind::TooManyEndpoints {
                                interface: number,
                                alt: alt.alt,
                            },
                        ));
                    }
                    alt.endpoints.push(ep);
                    cur_ep = Some(alt.endpoints.len() - 1);
                    just_after_ep = true;
                }
                dt::SS_ENDPOINT_COMPANION => {
                    need(6)?;
                    let (Some((i, a)), Some(e)) = (cur, cur_ep) else {
                        return Err(ParseError::new(
                            off,
                            ty,
                            ErrorKind::EndpointOutsideInterface,
                        ));
                    };
                    let ep = &mut config.interfaces[i].alternates[a].endpoints[e];
                    if !was_after_ep || ep.companion.is_some() {
                        return Err(ParseError::new(off, ty, ErrorKind::MisplacedCompanion));
                    }
                    ep.companion = Some(SsCompanion {
                        max_burst: d[2],
                        attributes: d[3],
                        bytes_per_interval: le16(d, 4),
                    });
                }
                dt::INTERFACE_ASSOCIATION => {
                    need(8)?;
                    if d[3] == 0 {
                        return Err(ParseError::new(off, ty, ErrorKind::EmptyAssociation));
                    }
                    config.associations.push(Iad {
                        first_interface: d[2],
                        interface_count: d[3],
                        class: d[4],
                        subclass: d[5],
                        protocol: d[6],
                        string_index: d[7],
                    });
                    cur_ep = None;
                }
                dt::DEVICE
                | dt::CONFIGURATION
                | dt::STRING
                | dt::DEVICE_QUALIFIER
                | dt::OTHER_SPEED_CONFIGURATION
                | dt::BOS => {
                    return Err(ParseError::new(off, ty, ErrorKind::UnexpectedDescriptor));
                }
                dt::CS_INTERFACE => match cur {
                    Some((i, a)) => {
                        let alt = &mut config.interfaces[i].alternates[a];
                        let cd = if carries_cdc_functionals(alt) {
                            ClassDescriptor::parse_cdc(d, off)?
                        } else {
                            ClassDescriptor::unknown(d)
                        };
                        alt.class_descriptors.push(cd);
                        cur_ep = None;
                    }
                    None => config.extra.push(ClassDescriptor::unknown(d)),
                },
                _ => {
                    // Unknown / class-specific: attach to the innermost owner.
                    let cd = ClassDescriptor::unknown(d);
                    match (cur, cur_ep) {
                        (Some((i, a)), Some(e)) => config.interfaces[i].alternates[a].endpoints[e]
                            .extra
                            .push(cd),
                        (Some((i, a)), None) => config.interfaces[i].alternates[a]
                            .class_descriptors
                            .push(cd),
                        _ => config.extra.push(cd),
                    }
                }
            }
        }
        Ok(config)
    }
}

// ---------------------------------------------------------------------------
// Strings

/// Decodes a string descriptor (UTF-16LE). An odd trailing byte is ignored,
/// invalid UTF-16 becomes U+FFFD, trailing NULs are dropped.
pub fn parse_string(buf: &[u8]) -> Result<String, ParseError> {
    let d = check_header(buf, dt::STRING, 2)?;
    let units = d[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    let mut s: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    while s.ends_with('\0') {
        s.pop();
    }
    Ok(s)
}

/// Decodes string descriptor 0: the list of supported language IDs.
pub fn parse_language_ids(buf: &[u8]) -> Result<Vec<u16>, ParseError> {
    let d = check_header(buf, dt::STRING, 2)?;
    Ok(d[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// US English, the language to ask for when the device lists it (or lists nothing).
pub const LANG_EN_US: u16 = 0x0409;

// ---------------------------------------------------------------------------
// MAC address

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacParseError {
    /// Not exactly 12 characters.
    BadLength(usize),
    /// A character that is not a hex digit, at this character position.
    NotHex(usize),
}

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacParseError::BadLength(n) => {
                write!(f, "MAC string has {n} characters, expected 12 hex digits")
            }
            MacParseError::NotHex(i) => write!(f, "MAC string character {i} is not a hex digit"),
        }
    }
}

impl MacAddress {
    /// Parses the iMACAddress string of a CDC Ethernet device: 12 hex digits,
    /// most significant first, e.g. `"525400123456"`.
    pub fn parse_from_string_descriptor(s: &str) -> Result<MacAddress, MacParseError> {
        let n = s.chars().count();
        if n != 12 {
            return Err(MacParseError::BadLength(n));
        }
        let mut mac = [0u8; 6];
        for (i, c) in s.chars().enumerate() {
            let v = c.to_digit(16).ok_or(MacParseError::NotHex(i))? as u8;
            mac[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        Ok(MacAddress(mac))
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
