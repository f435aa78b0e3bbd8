//! Control requests as 8-byte SETUP packets (USB 2.0 9.3/9.4, hub class 11.24,
//! USB 3.2 10.16, CDC 1.2 6.2) and hub descriptor / port status parsing.

use crate::descriptor::{dt, ErrorKind, ParseError};
use crate::speed::Speed;

/// bmRequestType bits.
pub mod rt {
    pub const HOST_TO_DEVICE: u8 = 0x00;
    pub const DEVICE_TO_HOST: u8 = 0x80;
    pub const STANDARD: u8 = 0x00;
    pub const CLASS: u8 = 0x20;
    pub const VENDOR: u8 = 0x40;
    pub const DEVICE: u8 = 0x00;
    pub const INTERFACE: u8 = 0x01;
    pub const ENDPOINT: u8 = 0x02;
    pub const OTHER: u8 = 0x03;
}

/// Standard request codes.
pub mod std_req {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const SET_ADDRESS: u8 = 5;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const SET_DESCRIPTOR: u8 = 7;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const GET_INTERFACE: u8 = 10;
    pub const SET_INTERFACE: u8 = 11;
    pub const SYNCH_FRAME: u8 = 12;
    /// SuperSpeed hubs.
    pub const SET_HUB_DEPTH: u8 = 12;
}

/// Feature selector ENDPOINT_HALT.
pub const ENDPOINT_HALT: u16 = 0;
/// Feature selector DEVICE_REMOTE_WAKEUP.
pub const DEVICE_REMOTE_WAKEUP: u16 = 1;

/// CDC class request codes.
pub mod cdc_req {
    pub const SEND_ENCAPSULATED_COMMAND: u8 = 0x00;
    pub const GET_ENCAPSULATED_RESPONSE: u8 = 0x01;
    pub const SET_ETHERNET_MULTICAST_FILTERS: u8 = 0x40;
    pub const SET_ETHERNET_PACKET_FILTER: u8 = 0x43;
}

/// SET_ETHERNET_PACKET_FILTER bits (ECM 1.2 table 8).
pub mod packet_filter {
    pub const PROMISCUOUS: u16 = 1 << 0;
    pub const ALL_MULTICAST: u16 = 1 << 1;
    pub const DIRECTED: u16 = 1 << 2;
    pub const BROADCAST: u16 = 1 << 3;
    pub const MULTICAST: u16 = 1 << 4;
}

/// An 8-byte SETUP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupPacket {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl SetupPacket {
    pub const fn new(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> Self {
        SetupPacket {
            request_type,
            request,
            value,
            index,
            length,
        }
    }

    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    pub fn from_bytes(b: [u8; 8]) -> Self {
        SetupPacket {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// As the 64-bit immediate data of an xHCI Setup Stage TRB.
    pub fn to_u64(&self) -> u64 {
        u64::from_le_bytes(self.to_bytes())
    }

    pub fn is_device_to_host(&self) -> bool {
        self.request_type & rt::DEVICE_TO_HOST != 0
    }

    /// xHCI Setup Stage TRT field: 0 no data, 2 OUT data, 3 IN data.
    pub fn xhci_transfer_type(&self) -> u8 {
        if self.length == 0 {
            0
        } else if self.is_device_to_host() {
            3
        } else {
            2
        }
    }

    // ----- standard requests

    pub fn get_descriptor(descriptor_type: u8, index: u8, language: u16, length: u16) -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | rt::STANDARD | rt::DEVICE,
            std_req::GET_DESCRIPTOR,
            (descriptor_type as u16) << 8 | index as u16,
            language,
            length,
        )
    }
    pub fn get_device_descriptor(length: u16) -> Self {
        Self::get_descriptor(dt::DEVICE, 0, 0, length)
    }
    /// `index` is the configuration's position (0-based), not its bConfigurationValue.
    pub fn get_configuration_descriptor(index: u8, length: u16) -> Self {
        Self::get_descriptor(dt::CONFIGURATION, index, 0, length)
    }
    pub fn get_string_descriptor(index: u8, language: u16, length: u16) -> Self {
        Self::get_descriptor(dt::STRING, index, language, length)
    }
    pub fn get_device_qualifier(length: u16) -> Self {
        Self::get_descriptor(dt::DEVICE_QUALIFIER, 0, 0, length)
    }
    pub fn get_bos_descriptor(length: u16) -> Self {
        Self::get_descriptor(dt::BOS, 0, 0, length)
    }
    /// None for addresses above 127.
    pub fn set_address(address: u8) -> Option<Self> {
        (address <= 127).then(|| Self::new(0, std_req::SET_ADDRESS, address as u16, 0, 0))
    }
    pub fn set_configuration(value: u8) -> Self {
        Self::new(0, std_req::SET_CONFIGURATION, value as u16, 0, 0)
    }
    pub fn get_configuration() -> Self {
        Self::new(rt::DEVICE_TO_HOST, std_req::GET_CONFIGURATION, 0, 0, 1)
    }
    pub fn set_interface(interface: u8, alt: u8) -> Self {
        Self::new(
            rt::INTERFACE,
            std_req::SET_INTERFACE,
            alt as u16,
            interface as u16,
            0,
        )
    }
    pub fn get_interface(interface: u8) -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | rt::INTERFACE,
            std_req::GET_INTERFACE,
            0,
            interface as u16,
            1,
        )
    }
    /// CLEAR_FEATURE(ENDPOINT_HALT) for an endpoint address (bit 7 = IN).
    pub fn clear_endpoint_halt(endpoint_address: u8) -> Self {
        Self::new(
            rt::ENDPOINT,
            std_req::CLEAR_FEATURE,
            ENDPOINT_HALT,
            endpoint_address as u16,
            0,
        )
    }
    /// GET_STATUS; `recipient` is [`rt::DEVICE`], [`rt::INTERFACE`] or [`rt::ENDPOINT`].
    pub fn get_status(recipient: u8, index: u16) -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | (recipient & 0x1F),
            std_req::GET_STATUS,
            0,
            index,
            2,
        )
    }

    // ----- CDC

    pub fn set_ethernet_packet_filter(interface: u8, filter: u16) -> Self {
        Self::new(
            rt::HOST_TO_DEVICE | rt::CLASS | rt::INTERFACE,
            cdc_req::SET_ETHERNET_PACKET_FILTER,
            filter,
            interface as u16,
            0,
        )
    }
    pub fn send_encapsulated_command(interface: u8, length: u16) -> Self {
        Self::new(
            rt::HOST_TO_DEVICE | rt::CLASS | rt::INTERFACE,
            cdc_req::SEND_ENCAPSULATED_COMMAND,
            0,
            interface as u16,
            length,
        )
    }
    pub fn get_encapsulated_response(interface: u8, length: u16) -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | rt::CLASS | rt::INTERFACE,
            cdc_req::GET_ENCAPSULATED_RESPONSE,
            0,
            interface as u16,
            length,
        )
    }

    // ----- hub class

    /// GET_DESCRIPTOR(hub); `superspeed` selects the SuperSpeed hub descriptor (0x2A).
    pub fn get_hub_descriptor(superspeed: bool, length: u16) -> Self {
        let ty = if superspeed { dt::SS_HUB } else { dt::HUB };
        Self::new(
            rt::DEVICE_TO_HOST | rt::CLASS | rt::DEVICE,
            std_req::GET_DESCRIPTOR,
            (ty as u16) << 8,
            0,
            length,
        )
    }
    pub fn get_hub_status() -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | rt::CLASS | rt::DEVICE,
            std_req::GET_STATUS,
            0,
            0,
            4,
        )
    }
    pub fn get_port_status(port: u8) -> Self {
        Self::new(
            rt::DEVICE_TO_HOST | rt::CLASS | rt::OTHER,
            std_req::GET_STATUS,
            0,
            port as u16,
            4,
        )
    }
    pub fn set_port_feature(port: u8, feature: PortFeature) -> Self {
        Self::new(
            rt::CLASS | rt::OTHER,
            std_req::SET_FEATURE,
            feature as u16,
            port as u16,
            0,
        )
    }
    pub fn clear_port_feature(port: u8, feature: PortFeature) -> Self {
        Self::new(
            rt::CLASS | rt::OTHER,
            std_req::CLEAR_FEATURE,
            feature as u16,
            port as u16,
            0,
        )
    }
    pub fn clear_hub_feature(feature: HubFeature) -> Self {
        Self::new(
            rt::CLASS | rt::DEVICE,
            std_req::CLEAR_FEATURE,
            feature as u16,
            0,
            0,
        )
    }
    /// SuperSpeed hubs: SET_HUB_DEPTH (0 for a hub on a root port).
    pub fn set_hub_depth(depth: u8) -> Self {
        Self::new(
            rt::CLASS | rt::DEVICE,
            std_req::SET_HUB_DEPTH,
            depth as u16,
            0,
            0,
        )
    }
}

/// Hub feature selectors (recipient device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum HubFeature {
    CHubLocalPower = 0,
    CHubOverCurrent = 1,
}

/// Port feature selectors (USB 2.0 table 11-17, USB 3.2 table 10-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum PortFeature {
    Connection = 0,
    Enable = 1,
    Suspend = 2,
    OverCurrent = 3,
    Reset = 4,
    LinkState = 5,
    Power = 8,
    LowSpeed = 9,
    CConnection = 16,
    CEnable = 17,
    CSuspend = 18,
    COverCurrent = 19,
    CReset = 20,
    Test = 21,
    Indicator = 22,
    U1Timeout = 23,
    U2Timeout = 24,
    CLinkState = 25,
    CConfigError = 26,
    RemoteWakeMask = 27,
    BhPortReset = 28,
    CBhPortReset = 29,
    ForceLinkPmAccept = 30,
}

pub const PORT_POWER: PortFeature = PortFeature::Power;
pub const PORT_RESET: PortFeature = PortFeature::Reset;
pub const C_PORT_CONNECTION: PortFeature = PortFeature::CConnection;
pub const C_PORT_RESET: PortFeature = PortFeature::CReset;
pub const C_PORT_ENABLE: PortFeature = PortFeature::CEnable;

// ---------------------------------------------------------------------------
// Hub descriptor

/// Hub descriptor (USB 2.0 11.23.2.1 or SuperSpeed USB 3.2 10.15.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubDescriptor {
    pub superspeed: bool,
    pub num_ports: u8,
    pub characteristics: u16,
    /// bPwrOn2PwrGood in milliseconds.
    pub power_on_to_good_ms: u16,
    pub controller_current: u8,
    /// Bit n set = device on port n is non-removable (ports 1..=31 tracked).
    pub removable_mask: u32,
    /// SuperSpeed only: wHubDelay in ns.
    pub hub_delay_ns: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerSwitching {
    Ganged,
    Individual,
    None,
}

impl HubDescriptor {
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < 2 {
            return Err(ParseError {
                offset: 0,
                descriptor_type: dt::HUB,
                kind: ErrorKind::Truncated {
                    needed: 2,
                    available: buf.len(),
                },
            });
        }
        let ty = buf[1];
        let superspeed = match ty {
            dt::HUB => false,
            dt::SS_HUB => true,
            _ => {
                return Err(ParseError {
                    offset: 0,
                    descriptor_type: ty,
                    kind: ErrorKind::WrongType { expected: dt::HUB },
                })
            }
        };
        let len = buf[0];
        let min: u8 = if superspeed { 12 } else { 7 };
        let err = |kind| ParseError {
            offset: 0,
            descriptor_type: ty,
            kind,
        };
        if len < min {
            return Err(err(ErrorKind::BadLength {
                length: len,
                minimum: min,
            }));
        }
        if buf.len() < len as usize {
            return Err(err(ErrorKind::Truncated {
                needed: len as usize,
                available: buf.len(),
            }));
        }
        let d = &buf[..len as usize];
        let num_ports = d[2];
        let characteristics = u16::from_le_bytes([d[3], d[4]]);
        let mut removable_mask = 0u32;
        let hub_delay_ns;
        if superspeed {
            hub_delay_ns = u16::from_le_bytes([d[8], d[9]]);
            removable_mask = u16::from_le_bytes([d[10], d[11]]) as u32;
        } else {
            hub_delay_ns = 0;
            // DeviceRemovable: one bit per port (bit 0 reserved), then PortPwrCtrlMask.
            let bytes = (num_ports as usize + 1).div_ceil(8);
            for (i, b) in d[7..].iter().take(bytes.min(4)).enumerate() {
                removable_mask |= (*b as u32) << (8 * i);
            }
        }
        Ok(HubDescriptor {
            superspeed,
            num_ports,
            characteristics,
            power_on_to_good_ms: d[5] as u16 * 2,
            controller_current: d[6],
            removable_mask,
            hub_delay_ns,
        })
    }

    pub fn power_switching(&self) -> PowerSwitching {
        match self.characteristics & 0x3 {
            0 => PowerSwitching::Ganged,
            1 => PowerSwitching::Individual,
            _ => PowerSwitching::None,
        }
    }
    pub fn compound(&self) -> bool {
        self.characteristics & 0x4 != 0
    }
    /// USB 2.0 TT think time in FS bit times (8, 16, 24, 32).
    pub fn tt_think_time_bits(&self) -> u8 {
        (((self.characteristics >> 5) & 0x3) as u8 + 1) * 8
    }
    pub fn port_indicators(&self) -> bool {
        !self.superspeed && self.characteristics & 0x80 != 0
    }
    pub fn port_removable(&self, port: u8) -> bool {
        port >= 32 || self.removable_mask & (1u32 << port) == 0
    }
}

// ---------------------------------------------------------------------------
// Port status

/// wPortStatus bits.
pub mod port_status {
    pub const CONNECTION: u16 = 1 << 0;
    pub const ENABLE: u16 = 1 << 1;
    pub const SUSPEND: u16 = 1 << 2;
    pub const OVER_CURRENT: u16 = 1 << 3;
    pub const RESET: u16 = 1 << 4;
    /// USB 2.0 hubs.
    pub const POWER: u16 = 1 << 8;
    pub const LOW_SPEED: u16 = 1 << 9;
    pub const HIGH_SPEED: u16 = 1 << 10;
    pub const TEST: u16 = 1 << 11;
    pub const INDICATOR: u16 = 1 << 12;
    /// SuperSpeed hubs.
    pub const SS_POWER: u16 = 1 << 9;
    pub const SS_LINK_STATE_SHIFT: u16 = 5;
    pub const SS_LINK_STATE_MASK: u16 = 0xF << 5;
}

/// wPortChange bits.
pub mod port_change {
    pub const C_CONNECTION: u16 = 1 << 0;
    pub const C_ENABLE: u16 = 1 << 1;
    pub const C_SUSPEND: u16 = 1 << 2;
    pub const C_OVER_CURRENT: u16 = 1 << 3;
    pub const C_RESET: u16 = 1 << 4;
    /// SuperSpeed hubs.
    pub const C_BH_RESET: u16 = 1 << 5;
    pub const C_LINK_STATE: u16 = 1 << 6;
    pub const C_CONFIG_ERROR: u16 = 1 << 7;
}

/// GET_PORT_STATUS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStatus {
    pub status: u16,
    pub change: u16,
    pub superspeed: bool,
}

impl PortStatus {
    /// Parses the 4-byte answer; `superspeed` says whether the hub is a SuperSpeed hub.
    pub fn parse(buf: &[u8], superspeed: bool) -> Result<Self, ParseError> {
        if buf.len() < 4 {
            return Err(ParseError {
                offset: 0,
                descriptor_type: 0,
                kind: ErrorKind::Truncated {
                    needed: 4,
                    available: buf.len(),
                },
            });
        }
        Ok(PortStatus {
            status: u16::from_le_bytes([buf[0], buf[1]]),
            change: u16::from_le_bytes([buf[2], buf[3]]),
            superspeed,
        })
    }

    pub fn connected(&self) -> bool {
        self.status & port_status::CONNECTION != 0
    }
    pub fn enabled(&self) -> bool {
        self.status & port_status::ENABLE != 0
    }
    pub fn resetting(&self) -> bool {
        self.status & port_status::RESET != 0
    }
    pub fn over_current(&self) -> bool {
        self.status & port_status::OVER_CURRENT != 0
    }
    pub fn powered(&self) -> bool {
        let bit = if self.superspeed {
            port_status::SS_POWER
        } else {
            port_status::POWER
        };
        self.status & bit != 0
    }
    pub fn suspended(&self) -> bool {
        !self.superspeed && self.status & port_status::SUSPEND != 0
    }
    /// SuperSpeed link state (0 = U0 ... 5 = RxDetect, 7 = Polling).
    pub fn link_state(&self) -> Option<u8> {
        self.superspeed.then_some(
            ((self.status & port_status::SS_LINK_STATE_MASK) >> port_status::SS_LINK_STATE_SHIFT)
                as u8,
        )
    }
    /// Speed of the attached device; None when nothing is connected.
    pub fn speed(&self) -> Option<Speed> {
        if !self.connected() {
            return None;
        }
        Some(if self.superspeed {
            Speed::Super
        } else if self.status & port_status::LOW_SPEED != 0 {
            Speed::Low
        } else if self.status & port_status::HIGH_SPEED != 0 {
            Speed::High
        } else {
            Speed::Full
        })
    }

    pub fn connection_changed(&self) -> bool {
        self.change & port_change::C_CONNECTION != 0
    }
    pub fn reset_changed(&self) -> bool {
        self.change & port_change::C_RESET != 0
    }
    pub fn enable_changed(&self) -> bool {
        !self.superspeed && self.change & port_change::C_ENABLE != 0
    }
    pub fn over_current_changed(&self) -> bool {
        self.change & port_change::C_OVER_CURRENT != 0
    }

    /// The CLEAR_PORT_FEATURE selectors that acknowledge every change bit set.
    pub fn changes_to_clear(&self) -> impl Iterator<Item = PortFeature> + '_ {
        let table: &[(u16, PortFeature)] = if self.superspeed {
            &[
                (port_change::C_CONNECTION, PortFeature::CConnection),
                (port_change::C_OVER_CURRENT, PortFeature::COverCurrent),
                (port_change::C_RESET, PortFeature::CReset),
                (port_change::C_BH_RESET, PortFeature::CBhPortReset),
                (port_change::C_LINK_STATE, PortFeature::CLinkState),
                (port_change::C_CONFIG_ERROR, PortFeature::CConfigError),
            ]
        } else {
            &[
                (port_change::C_CONNECTION, PortFeature::CConnection),
                (port_change::C_ENABLE, PortFeature::CEnable),
                (port_change::C_SUSPEND, PortFeature::CSuspend),
                (port_change::C_OVER_CURRENT, PortFeature::COverCurrent),
                (port_change::C_RESET, PortFeature::CReset),
            ]
        };
        table
            .iter()
            .filter(move |(bit, _)| self.change & bit != 0)
            .map(|(_, f)| *f)
    }
}
