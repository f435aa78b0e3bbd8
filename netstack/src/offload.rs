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
    let sum = !ones_complement_sum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Ethernet + IPv4 header lengths and the TCP header's offset, if `frame` is IPv4/TCP.
struct TcpFrame {
    ip_start: usize,
    tcp_start: usize,
    tcp_header_len: usize,
}

const ETHERNET_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTOCOL_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;

fn tcp_frame(frame: &[u8]) -> Option<TcpFrame> {
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip_start = ETHERNET_HEADER;
    let version_ihl = *frame.get(ip_start)?;
    let ihl = usize::from(version_ihl & 0xf) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || *frame.get(ip_start + 9)? != PROTOCOL_TCP {
        return None;
    }
    // Fragments (offset or more-fragments set) carry no TCP header to work on.
    let fragment = u16::from_be_bytes([*frame.get(ip_start + 6)?, *frame.get(ip_start + 7)?]);
    if fragment & 0x3fff != 0 {
        return None;
    }
    let tcp_start = ip_start + ihl;
    let tcp_header_len = usize::from(*frame.get(tcp_start + 12)? >> 4) * 4;
    if tcp_header_len < 20 || frame.len() < tcp_start + tcp_header_len {
        return None;
    }
    Some(TcpFrame {
        ip_start,
        tcp_start,
        tcp_header_len,
    })
}

/// A TCP connection seen from this host: remote IPv4 address, remote port, local port.
pub type Flow = ([u8; 4], u16, u16);

/// Which TCP connection a frame belongs to. `outgoing` says whether the frame is sent (the
/// remote end is then its destination).
pub fn flow_of(frame: &[u8], outgoing: bool) -> Option<Flow> {
    let t = tcp_frame(frame)?;
    let address = |at: usize| -> [u8; 4] { frame[at..at + 4].try_into().unwrap() };
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (source, destination) = (port(t.tcp_start), port(t.tcp_start + 2));
    Some(if outgoing {
        (address(t.ip_start + 16), destination, source)
    } else {
        (address(t.ip_start + 12), source, destination)
    })
}

/// For a received SYN carrying an MSS option: raises the option to `mss` (when it is lower)
/// and returns the peer's own value, fixing the TCP checksum unless `partial` (a
/// `NEEDS_CSUM` frame, whose checksum is computed afterwards over the new bytes).
///
/// This is how the stack comes to build segments larger than the link carries: the device
/// (`HOST_TSO4`) cuts them to the peer's real MSS, which the driver keeps per connection.
pub fn raise_syn_mss(frame: &mut [u8], mss: u16, partial: bool) -> Option<u16> {
    let t = tcp_frame(frame)?;
    if frame[t.tcp_start + 13] & TCP_FLAG_SYN == 0 {
        return None;
    }
    let mut at = t.tcp_start + 20;
    let end = t.tcp_start + t.tcp_header_len;
    while at < end {
        match frame[at] {
            TCP_OPTION_END => return None,
            TCP_OPTION_NOP => at += 1,
            kind => {
                let len = usize::from(*frame.get(at + 1)?);
                if len < 2 || at + len > end {
                    return None;
                }
                if kind == TCP_OPTION_MSS && len == 4 {
                    let field = at + 2;
                    let theirs = u16::from_be_bytes([frame[field], frame[field + 1]]);
                    if theirs >= mss {
                        return Some(theirs);
                    }
                    frame[field..field + 2].copy_from_slice(&mss.to_be_bytes());
                    if !partial {
                        // RFC 1624: HC' = ~(~HC + ~m + m').
                        let check = t.tcp_start + 16;
                        let old = u16::from_be_bytes([frame[check], frame[check + 1]]);
                        let sum = checksum::combine(&[!old, !theirs, mss]);
                        frame[check..check + 2].copy_from_slice(&(!sum).to_be_bytes());
                    }
                    return Some(theirs);
                }
                at += len;
            }
        }
    }
    None
}

/// Prepares a TCP frame longer than the link carries for the device to cut into segments
/// of `peer_mss` (less this frame's TCP options): fixes nothing in the headers the device
/// rewrites per segment, seeds the TCP checksum field with the pseudo-header sum, and returns
/// the header that asks for segmentation and checksums. None if `frame` is not IPv4/TCP.
pub fn segmentation_header(frame: &mut [u8], peer_mss: u16) -> Option<NetHeader> {
    let t = tcp_frame(frame)?;
    let options = t.tcp_header_len - 20;
    let gso_size = usize::from(peer_mss)
        .checked_sub(options)
        .filter(|&n| n > 0)?;
    let tcp_len = frame.len() - t.tcp_start;
    let source: [u8; 4] = frame[t.ip_start + 12..t.ip_start + 16].try_into().unwrap();
    let destination: [u8; 4] = frame[t.ip_start + 16..t.ip_start + 20].try_into().unwrap();
    let mut proto_len = [0u8; 4];
    proto_len[1] = PROTOCOL_TCP;
    proto_len[2..].copy_from_slice(&u16::try_from(tcp_len).ok()?.to_be_bytes());
    let pseudo = checksum::combine(&[
        checksum::data(&source),
        checksum::data(&destination),
        checksum::data(&proto_len),
    ]);
    let field = t.tcp_start + 16;
    frame[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    Some(NetHeader {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: u16::try_from(t.tcp_start + t.tcp_header_len).ok()?,
        gso_size: u16::try_from(gso_size).ok()?,
        csum_start: u16::try_from(t.tcp_start).ok()?,
        csum_offset: 16,
        num_buffers: 0,
    })
}

/// The ones'-complement sum of `data` (RFC 1071, not complemented), as a big-endian number,
/// eight bytes per step: the same value as smoltcp's `checksum::data` in a quarter of the
/// iterations, which counts under an emulated CPU.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let add = |acc: u64, value: u64| {
        let (sum, carry) = acc.overflowing_add(value);
        sum + u64::from(carry)
    };
    let mut chunks = data.chunks_exact(8);
    let mut acc = 0u64;
    for chunk in &mut chunks {
        acc = add(acc, u64::from_be_bytes(chunk.try_into().unwrap()));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // An odd byte counts as the high half of a 16-bit word, as if padded with zero.
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        acc = add(acc, u64::from_be_bytes(tail));
    }
    let mut folded = (acc >> 32) + (acc & 0xffff_ffff);
    while folded > 0xffff {
        folded = (folded >> 16) + (folded & 0xffff);
    }
    folded as u16
}

/// Why a received frame was refused by [`verify_checksums`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// An IPv4 header or length that does not hold together.
    Malformed,
    /// The IPv4 header's checksum is wrong.
    Ipv4Header,
    /// The TCP, UDP or ICMP checksum is wrong.
    Payload,
}

const PROTOCOL_ICMP: u8 = 1;
const PROTOCOL_UDP: u8 = 17;

/// Checks every checksum of a received IPv4 frame (header; TCP, UDP unless it carries none,
/// ICMP), so the stack need not: the driver runs this in its own thread while the network
/// thread is the busy one. Frames that are not IPv4 pass; fragments get the header check.
pub fn verify_checksums(frame: &[u8]) -> Result<(), ChecksumError> {
    if frame.get(12..14) != Some(&ETHERTYPE_IPV4[..]) {
        return Ok(());
    }
    let ip = &frame[ETHERNET_HEADER..];
    let version_ihl = *ip.first().ok_or(ChecksumError::Malformed)?;
    let ihl = usize::from(version_ihl & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([
        *ip.get(2).ok_or(ChecksumError::Malformed)?,
        *ip.get(3).ok_or(ChecksumError::Malformed)?,
    ]));
    if version_ihl >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return Err(ChecksumError::Malformed);
    }
    if ones_complement_sum(&ip[..ihl]) != 0xffff {
        return Err(ChecksumError::Ipv4Header);
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    if fragment & 0x3fff != 0 {
        return Ok(());
    }
    // Ethernet pads short frames: the IP length says where the packet ends.
    let payload = &ip[ihl..total];
    let protocol = ip[9];
    let pseudo = || {
        let mut words = [0u8; 12];
        words[..8].copy_from_slice(&ip[12..20]);
        words[9] = protocol;
        words[10..].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        ones_complement_sum(&words)
    };
    let sum = match protocol {
        PROTOCOL_TCP => checksum::combine(&[pseudo(), ones_complement_sum(payload)]),
        PROTOCOL_UDP => match payload.get(6..8) {
            Some([0, 0]) => return Ok(()),
            Some(_) => checksum::combine(&[pseudo(), ones_complement_sum(payload)]),
            None => return Err(ChecksumError::Malformed),
        },
        PROTOCOL_ICMP => ones_complement_sum(payload),
        _ => return Ok(()),
    };
    if sum == 0xffff {
        Ok(())
    } else {
        Err(ChecksumError::Payload)
    }
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
        tcp_frame_with(payload, TcpControl::Psh, None)
    }

    fn tcp_frame_with(payload: &[u8], control: TcpControl, mss: Option<u16>) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 5201,
            dst_port: 40000,
            control,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: Some(7),
            max_seg_size: mss,
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

    fn parsed_mss(bytes: &[u8]) -> Option<u16> {
        let frame = EthernetFrame::new_checked(bytes).unwrap();
        let packet = Ipv4Packet::new_checked(frame.payload()).unwrap();
        let segment = TcpPacket::new_checked(packet.payload()).unwrap();
        let caps = ChecksumCapabilities::default();
        TcpRepr::parse(&segment, &SRC.into(), &DST.into(), &caps)
            .unwrap()
            .max_seg_size
    }

    #[test]
    fn a_syn_mss_is_raised_and_the_checksum_still_holds() {
        let mut frame = tcp_frame_with(&[], TcpControl::Syn, Some(1460));
        assert_eq!(raise_syn_mss(&mut frame, 65_000, false), Some(1460));
        assert!(tcp_checksum_ok(&frame));
        assert_eq!(parsed_mss(&frame), Some(65_000));
        // Already large enough: reported, left alone.
        let before = frame.clone();
        assert_eq!(raise_syn_mss(&mut frame, 9000, false), Some(65_000));
        assert_eq!(frame, before);
    }

    #[test]
    fn a_partial_syn_is_raised_and_completed_afterwards() {
        let mut frame = tcp_frame_with(&[], TcpControl::Syn, Some(1400));
        let tcp_len = (frame.len() - 34) as u32;
        let pseudo = checksum::pseudo_header_v4(&SRC, &DST, IpProtocol::Tcp, tcp_len);
        frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(raise_syn_mss(&mut frame, 65_000, true), Some(1400));
        complete_checksum(&mut frame, 34, 16).unwrap();
        assert!(tcp_checksum_ok(&frame));
        assert_eq!(parsed_mss(&frame), Some(65_000));
    }

    #[test]
    fn only_syns_with_an_mss_option_are_touched() {
        let mut data = tcp_frame_with(b"hello", TcpControl::Psh, None);
        let before = data.clone();
        assert_eq!(raise_syn_mss(&mut data, 65_000, false), None);
        assert_eq!(data, before);
        let mut syn = tcp_frame_with(&[], TcpControl::Syn, None);
        assert_eq!(raise_syn_mss(&mut syn, 65_000, false), None);
        // Truncated or not TCP at all: no panic, nothing done.
        assert_eq!(raise_syn_mss(&mut syn[..40].to_vec(), 65_000, false), None);
        assert_eq!(raise_syn_mss(&mut [0u8; 60], 65_000, false), None);
    }

    #[test]
    fn flows_are_named_from_this_host() {
        let frame = tcp_frame(b"x");
        // Sent from 10.0.2.2:5201 to 10.0.2.15:40000.
        assert_eq!(flow_of(&frame, true), Some(([10, 0, 2, 15], 40000, 5201)));
        assert_eq!(flow_of(&frame, false), Some(([10, 0, 2, 2], 5201, 40000)));
        assert_eq!(flow_of(&[0u8; 20], true), None);
    }

    #[test]
    fn a_large_segment_is_prepared_for_the_device_to_cut() {
        let payload: Vec<u8> = (0..20_000).map(|i| (i % 251) as u8).collect();
        let mut frame = tcp_frame(&payload);
        let header = segmentation_header(&mut frame, 1460).unwrap();
        // The frame's TCP header carries the 3-byte window-scale option padded to 4.
        let tcp_header = usize::from(frame[46] >> 4) * 4;
        assert_eq!(header.flags, FLAG_NEEDS_CSUM);
        assert_eq!(header.gso_type, GSO_TCPV4);
        assert_eq!(usize::from(header.hdr_len), 34 + tcp_header);
        assert_eq!(usize::from(header.gso_size), 1460 - (tcp_header - 20));
        assert_eq!((header.csum_start, header.csum_offset), (34, 16));
        // What the device does for the whole frame gives the real checksum.
        complete_checksum(&mut frame, 34, 16).unwrap();
        assert!(tcp_checksum_ok(&frame));
        assert_eq!(segmentation_header(&mut [0u8; 60], 1460), None);
    }

    #[test]
    fn the_fast_sum_is_smoltcps_sum() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in (0..64).chain([1459, 1460, 1461, 2999, 3000]) {
            let smoltcp = checksum::data(&data[..len]);
            assert_eq!(ones_complement_sum(&data[..len]), smoltcp, "{len} bytes");
        }
        assert_eq!(ones_complement_sum(&[0xff; 64]), 0xffff);
    }

    #[test]
    fn correct_frames_pass_and_any_flipped_bit_fails() {
        let payload: Vec<u8> = (0..1000).map(|i| (i * 13) as u8).collect();
        let frame = tcp_frame(&payload);
        assert_eq!(verify_checksums(&frame), Ok(()));
        for at in [14, 20, 30, 40, 50, 60, 500, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            assert!(verify_checksums(&bad).is_err(), "bit flipped at {at}");
        }
        // Ethernet padding after the packet is not summed.
        let mut padded = tcp_frame(&[]);
        padded.extend_from_slice(&[0xaa; 6]);
        assert_eq!(verify_checksums(&padded), Ok(()));
        // Not IPv4 (ARP): passes untouched; truncated IPv4: refused.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(verify_checksums(&arp), Ok(()));
        assert_eq!(
            verify_checksums(&frame[..30]),
            Err(ChecksumError::Malformed)
        );
    }
}
