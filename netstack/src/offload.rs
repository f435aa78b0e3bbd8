//! The virtio-net header that precedes every frame, and the checksum work that offloads move
//! between the driver and the device (virtio 1.x 5.1.6).
//!
//! Received with `GUEST_CSUM`, a frame may carry only a partial TCP/UDP checksum (`NEEDS_CSUM`:
//! it came from the host's own stack, which never computed it); [`complete_checksum`] finishes
//! it so the stack's verification holds. With `GUEST_TSO4` such a frame may be a coalesced
//! segment of up to 64 KiB, which the stack takes as one segment.

use smoltcp::wire::checksum;

/// The header with `VIRTIO_F_VERSION_1` (or `MRG_RXBUF`): `num_buffers` included.
pub const HEADER_LEN: usize = 12;
/// Only the checksum from `csum_start` on is missing; its field holds the pseudo-header sum.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// The device checked the checksum.
pub const FLAG_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// The ECN bit that may be or-ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// With `MRG_RXBUF`: how many receive buffers the frame spans (at least 1).
    pub num_buffers: u16,
}

impl NetHeader {
    /// The header at the start of `bytes` (little-endian fields), if it is long enough.
    pub fn parse(bytes: &[u8]) -> Option<NetHeader> {
        let b = bytes.get(..HEADER_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        let b = out.get_mut(..HEADER_LEN)?;
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            b[i..i + 2].copy_from_slice(&value.to_le_bytes());
        }
        Some(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// `csum_start`/`csum_offset` point outside the frame (a device bug or hostile device).
    ChecksumOutside {
        start: usize,
        offset: usize,
        len: usize,
    },
}

impl core::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            OffloadError::ChecksumOutside { start, offset, len } => write!(
                f,
                "partial checksum at {start}+{offset} outside a {len}-byte frame"
            ),
        }
    }
}

/// Finishes a `NEEDS_CSUM` frame as the device would have: the ones'-complement sum of
/// everything from `start` to the end (the checksum field holds the pseudo-header sum), stored
/// complemented at `start + offset`.
pub fn complete_checksum(
    frame: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), OffloadError> {
    let outside = OffloadError::ChecksumOutside {
        start,
        offset,
        len: frame.len(),
    };
    let field = start.checked_add(offset).ok_or(outside)?;
    if field.checked_add(2).is_none_or(|end| end > frame.len()) {
        return Err(outside);
    }
    let sum = !checksum::data(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use std::vec;
    use std::vec::Vec;

    const SRC: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);

    /// An Ethernet/IPv4/TCP frame with a correct checksum and `payload`.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 5201,
            dst_port: 40000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut bytes = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &caps);
        let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
        tcp.emit(&mut segment, &SRC.into(), &DST.into(), &caps);
        bytes
    }

    fn tcp_checksum_ok(bytes: &[u8]) -> bool {
        let frame = EthernetFrame::new_checked(bytes).unwrap();
        let packet = Ipv4Packet::new_checked(frame.payload()).unwrap();
        TcpPacket::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&SRC.into(), &DST.into())
    }

    #[test]
    fn header_round_trips_little_endian() {
        let header = NetHeader {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut bytes = [0u8; HEADER_LEN];
        header.write(&mut bytes).unwrap();
        assert_eq!(bytes, [1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0]);
        assert_eq!(NetHeader::parse(&bytes), Some(header));
        assert_eq!(NetHeader::parse(&bytes[..11]), None);
        assert_eq!(header.write(&mut [0u8; 11]), None);
    }

    #[test]
    fn a_partial_checksum_is_completed_to_the_real_one() {
        for len in [0, 1, 2, 1459, 1460, 65_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut frame = tcp_frame(&payload);
            assert!(tcp_checksum_ok(&frame));
            // What the host's stack hands over: the pseudo-header sum in the field.
            let tcp_len = frame.len() - 34;
            let pseudo = checksum::pseudo_header_v4(&SRC, &DST, IpProtocol::Tcp, tcp_len as u32);
            frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
            complete_checksum(&mut frame, 34, 16).unwrap();
            assert!(tcp_checksum_ok(&frame), "payload of {len} bytes");
        }
    }

    #[test]
    fn a_checksum_field_outside_the_frame_is_refused() {
        let mut frame = vec![0u8; 60];
        assert!(complete_checksum(&mut frame, 34, 16).is_ok());
        assert_eq!(
            complete_checksum(&mut frame, 50, 9),
            Err(OffloadError::ChecksumOutside {
                start: 50,
                offset: 9,
                len: 60
            })
        );
        assert!(complete_checksum(&mut frame, 61, 0).is_err());
        assert!(complete_checksum(&mut frame, usize::MAX, 1).is_err());
    }
}
