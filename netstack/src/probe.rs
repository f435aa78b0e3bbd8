//! Probe frames for data-path tests: an ARP request to learn a neighbour's MAC and ICMP echo
//! requests carrying a sequence number, and the recognisers for their replies. Wire formats are
//! smoltcp's; nothing here is hand-packed.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};

/// Ethernet frame with an ARP request for `target` from (`mac`, `ip`).
pub fn arp_request(mac: EthernetAddress, ip: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut bytes = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut bytes);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    bytes
}

/// The MAC in an ARP reply from `from`, if `frame` is one.
pub fn arp_reply_from(frame: &[u8], from: Ipv4Address) -> Option<EthernetAddress> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            ..
        } if source_protocol_addr == from => Some(source_hardware_addr),
        _ => None,
    }
}

/// Addresses of one side of a probe conversation.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub mac: EthernetAddress,
    pub ip: Ipv4Address,
}

/// Ethernet + IPv4 + ICMP echo request with `payload_len` bytes of payload.
pub fn echo_request(from: Peer, to: Peer, ident: u16, seq: u16, payload_len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload_len).map(|i| (i as u8) ^ (seq as u8)).collect();
    let icmp = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: seq,
        data: &data,
    };
    let ip = Ipv4Repr {
        src_addr: from.ip,
        dst_addr: to.ip,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: from.mac,
        dst_addr: to.mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut bytes = vec![0u8; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    let checksums = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut bytes);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &checksums);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &checksums,
    );
    bytes
}

/// The sequence number of an ICMP echo reply with `ident`, if `frame` is one (checksums
/// verified: a corrupted reply does not count).
pub fn echo_reply_seq(frame: &[u8], ident: u16) -> Option<u16> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let checksums = ChecksumCapabilities::default();
    let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let ip = Ipv4Repr::parse(&packet, &checksums).ok()?;
    if ip.next_header != IpProtocol::Icmp {
        return None;
    }
    match Icmpv4Repr::parse(
        &Icmpv4Packet::new_checked(packet.payload()).ok()?,
        &checksums,
    )
    .ok()?
    {
        Icmpv4Repr::EchoReply {
            ident: id, seq_no, ..
        } if id == ident => Some(seq_no),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Peer = Peer {
        mac: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        ip: Ipv4Address::new(10, 0, 2, 15),
    };
    const GW: Peer = Peer {
        mac: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        ip: Ipv4Address::new(10, 0, 2, 2),
    };

    /// What a peer answering an echo request sends back (swap addresses, change the type).
    fn answer(request: &[u8]) -> Vec<u8> {
        let eth = EthernetFrame::new_checked(request).unwrap();
        let packet = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let c = ChecksumCapabilities::default();
        let ip = Ipv4Repr::parse(&packet, &c).unwrap();
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(packet.payload()).unwrap(), &c).unwrap()
        else {
            panic!("not an echo request")
        };
        let icmp = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let reply_ip = Ipv4Repr {
            src_addr: ip.dst_addr,
            dst_addr: ip.src_addr,
            ..ip
        };
        let reply_eth = EthernetRepr {
            src_addr: eth.dst_addr(),
            dst_addr: eth.src_addr(),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut bytes =
            vec![0u8; reply_eth.buffer_len() + reply_ip.buffer_len() + icmp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes);
        reply_eth.emit(&mut frame);
        let mut p = Ipv4Packet::new_unchecked(frame.payload_mut());
        reply_ip.emit(&mut p, &c);
        icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &c);
        bytes
    }

    #[test]
    fn echo_round_trip_for_every_length_mod_64() {
        for len in 0..130 {
            let request = echo_request(ME, GW, 0x7e7e, len as u16, len);
            assert_eq!(request.len(), 14 + 20 + 8 + len);
            assert_eq!(echo_reply_seq(&answer(&request), 0x7e7e), Some(len as u16));
            assert_eq!(
                echo_reply_seq(&answer(&request), 0x1111),
                None,
                "other ident"
            );
            assert_eq!(
                echo_reply_seq(&request, 0x7e7e),
                None,
                "a request is not a reply"
            );
        }
    }

    #[test]
    fn corrupted_or_truncated_replies_do_not_count() {
        let reply = answer(&echo_request(ME, GW, 1, 9, 32));
        for cut in 0..reply.len() {
            assert_eq!(echo_reply_seq(&reply[..cut], 1), None, "truncated at {cut}");
        }
        let mut bad = reply.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        assert_eq!(
            echo_reply_seq(&bad, 1),
            None,
            "ICMP checksum must be checked"
        );
    }

    #[test]
    fn arp_request_and_reply() {
        let request = arp_request(ME.mac, ME.ip, GW.ip);
        assert_eq!(request.len(), 42);
        assert_eq!(
            arp_reply_from(&request, GW.ip),
            None,
            "a request is not a reply"
        );
        let reply_repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: GW.mac,
            source_protocol_addr: GW.ip,
            target_hardware_addr: ME.mac,
            target_protocol_addr: ME.ip,
        };
        let eth = EthernetRepr {
            src_addr: GW.mac,
            dst_addr: ME.mac,
            ethertype: EthernetProtocol::Arp,
        };
        let mut bytes = vec![0u8; 42];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes);
        eth.emit(&mut frame);
        reply_repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        assert_eq!(arp_reply_from(&bytes, GW.ip), Some(GW.mac));
        assert_eq!(
            arp_reply_from(&bytes, ME.ip),
            None,
            "reply from someone else"
        );
    }
}
