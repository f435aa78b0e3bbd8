//! CDC class notifications (the interrupt IN endpoint of a communications interface): an
//! 8-byte header (bmRequestType 0xA1, bNotification, wValue, wIndex, wLength) and data.

/// What a CDC Ethernet function reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notification {
    /// NETWORK_CONNECTION (0x00): link up (`true`) or down.
    NetworkConnection(bool),
    /// CONNECTION_SPEED_CHANGE (0x2A): downstream and upstream bit rates.
    SpeedChange { downstream: u32, upstream: u32 },
    /// RESPONSE_AVAILABLE (0x01): an encapsulated response waits (RNDIS).
    ResponseAvailable,
    /// Any other notification code.
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationError {
    /// Fewer than 8 bytes, or fewer data bytes than wLength says.
    Truncated { have: usize, need: usize },
    /// bmRequestType is not 0xA1 (class, interface, device-to-host).
    NotClassInterface(u8),
}

impl core::fmt::Display for NotificationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NotificationError::Truncated { have, need } => {
                write!(f, "notification truncated: {have} of {need} bytes")
            }
            NotificationError::NotClassInterface(t) => {
                write!(f, "notification with bmRequestType {t:#04x}, expected 0xa1")
            }
        }
    }
}

/// SET_ETHERNET_PACKET_FILTER (CDC ECM 1.2, 6.2.4): which frames the function passes up.
pub const SET_ETHERNET_PACKET_FILTER: u8 = 0x43;

/// Packet filter bits (ECM 1.2, Table 8).
pub mod packet_filter {
    pub const PROMISCUOUS: u16 = 0x01;
    pub const ALL_MULTICAST: u16 = 0x02;
    pub const DIRECTED: u16 = 0x04;
    pub const BROADCAST: u16 = 0x08;
    pub const MULTICAST: u16 = 0x10;
    /// What an appliance host wants: its own address, broadcasts (ARP, DHCP) and multicast.
    pub const APPLIANCE: u16 = DIRECTED | BROADCAST | ALL_MULTICAST;
}

/// The SET_ETHERNET_PACKET_FILTER request to the communication interface `interface`.
pub fn set_ethernet_packet_filter(interface: u8, filter: u16) -> crate::request::SetupPacket {
    // bmRequestType 0x21: host to device, class, interface.
    crate::request::SetupPacket::new(
        0x21,
        SET_ETHERNET_PACKET_FILTER,
        filter,
        u16::from(interface),
        0,
    )
}

pub const NETWORK_CONNECTION: u8 = 0x00;
pub const RESPONSE_AVAILABLE: u8 = 0x01;
pub const CONNECTION_SPEED_CHANGE: u8 = 0x2A;

/// Parses one notification; never trusts wLength beyond the bytes actually received.
pub fn parse_notification(bytes: &[u8]) -> Result<Notification, NotificationError> {
    if bytes.len() < 8 {
        return Err(NotificationError::Truncated {
            have: bytes.len(),
            need: 8,
        });
    }
    if bytes[0] != 0xA1 {
        return Err(NotificationError::NotClassInterface(bytes[0]));
    }
    let value = u16::from_le_bytes([bytes[2], bytes[3]]);
    let length = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let data = &bytes[8..];
    match bytes[1] {
        NETWORK_CONNECTION => Ok(Notification::NetworkConnection(value != 0)),
        RESPONSE_AVAILABLE => Ok(Notification::ResponseAvailable),
        CONNECTION_SPEED_CHANGE => {
            if length < 8 || data.len() < 8 {
                return Err(NotificationError::Truncated {
                    have: bytes.len(),
                    need: 16,
                });
            }
            let word =
                |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            Ok(Notification::SpeedChange {
                downstream: word(0),
                upstream: word(4),
            })
        }
        other => Ok(Notification::Other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_filter_request() {
        let setup = set_ethernet_packet_filter(0, packet_filter::APPLIANCE);
        assert_eq!(
            (
                setup.request_type,
                setup.request,
                setup.value,
                setup.index,
                setup.length
            ),
            (0x21, 0x43, 0x0e, 0, 0)
        );
    }

    #[test]
    fn connection_and_speed() {
        // What QEMU's usb-net sends every 32 ms in ECM mode: connected.
        assert_eq!(
            parse_notification(&[0xA1, 0, 1, 0, 0, 0, 0, 0]),
            Ok(Notification::NetworkConnection(true))
        );
        assert_eq!(
            parse_notification(&[0xA1, 0, 0, 0, 0, 0, 0, 0]),
            Ok(Notification::NetworkConnection(false))
        );
        let speed = [
            0xA1, 0x2A, 0, 0, 0, 0, 8, 0, 0x00, 0xE1, 0xF5, 0x05, 0x00, 0xE1, 0xF5, 0x05,
        ];
        assert_eq!(
            parse_notification(&speed),
            Ok(Notification::SpeedChange {
                downstream: 100_000_000,
                upstream: 100_000_000
            })
        );
        assert_eq!(
            parse_notification(&[0xA1, 0x01, 0, 0, 0, 0, 0, 0]),
            Ok(Notification::ResponseAvailable)
        );
        assert_eq!(
            parse_notification(&[0xA1, 0x7F, 0, 0, 0, 0, 0, 0]),
            Ok(Notification::Other(0x7F))
        );
    }

    #[test]
    fn hostile_notifications_are_errors() {
        for len in 0..8 {
            assert!(matches!(
                parse_notification(&[0xA1; 8][..len]),
                Err(NotificationError::Truncated { .. })
            ));
        }
        assert_eq!(
            parse_notification(&[0x21, 0, 1, 0, 0, 0, 0, 0]),
            Err(NotificationError::NotClassInterface(0x21))
        );
        // Speed change whose data is shorter than it claims.
        assert!(parse_notification(&[0xA1, 0x2A, 0, 0, 0, 0, 8, 0, 1, 2, 3]).is_err());
        assert!(parse_notification(&[0xA1, 0x2A, 0, 0, 0, 0, 0xFF, 0xFF]).is_err());
    }
}
