//! The RNDIS driver's data path against QEMU 7.2's usb-net (configuration 2) with user
//! networking: frames whose bulk-OUT transfer has every length mod 64 must reach the host and
//! be answered. QEMU keeps any byte after a message's MessageLength in its reassembly buffer
//! and then loses every later frame, so a transfer of a multiple of 64 bytes must end with a
//! zero-length packet, never padding; one wrong transfer in the sweep and all replies after it
//! stop. ICMP echo requests to the slirp gateway carry the frames; each reply must come back
//! with the request's payload byte for byte. Then a host KEEPALIVE goes through the control
//! channel and traffic must still flow.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use tether_netstack::probe::{self, Peer};
use tether_netstack::smoltcp::wire::Ipv4Address;
use tether_usb::rndis::{receive_transfer, RndisRxStats, SessionEvent, PACKET_HEADER_LEN};

use super::{ensure, TestResult};
use crate::net::Transmit;
use crate::time;
use crate::usb::bulknic::{BulkRx, BulkTx};
use crate::usb::rndis::{self, RndisFraming};

const IDENT: u16 = 0x6464;
const MS_US: u64 = 1000;
/// Ethernet + IPv4 + ICMP echo headers: the payload starts here.
const PAYLOAD_AT: usize = 14 + 20 + 8;
/// Ethernet's minimum frame (without FCS): a shorter reply may arrive padded to it.
const MIN_ETHERNET: usize = 60;
/// Two sweeps of 64 consecutive payload lengths: short frames, and frames up to 1514 bytes.
const SWEEPS: [core::ops::Range<usize>; 2] = [0..64, 1408..1472];
/// Echo requests after the sweep and the keepalive: traffic must still flow.
const AFTER: usize = 8;

const GATEWAY_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
const MY_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);

/// Bulk IN, decoded: frames from completed transfers, and the transfer lengths seen.
struct Receiver {
    rx: BulkRx,
    stats: RndisRxStats,
    transfer_lengths: BTreeSet<usize>,
}

impl Receiver {
    /// The frames of the next completed transfer, or an empty list when none came in
    /// `timeout_us`.
    fn next_frames(&mut self, timeout_us: u64) -> Result<Vec<Vec<u8>>, String> {
        let mut frames = Vec::new();
        if let Some(transfer) = self.rx.receive(timeout_us)? {
            self.transfer_lengths.insert(transfer.len());
            if let Some(error) =
                receive_transfer(&transfer, &mut self.stats, |f| frames.push(f.to_vec()))
            {
                return Err(format!("malformed message from QEMU: {error}"));
            }
        }
        Ok(frames)
    }

    /// Waits up to `timeout_us` for a frame `accept` takes.
    fn wait_for<T>(
        &mut self,
        timeout_us: u64,
        accept: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, String> {
        let deadline = time::now_us() + timeout_us;
        while time::now_us() < deadline {
            for frame in self.next_frames(10 * MS_US)? {
                if let Some(found) = accept(&frame) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

/// Sends one echo request of `payload` bytes and checks its reply.
fn ping(
    tx: &BulkTx<RndisFraming>,
    rx: &mut Receiver,
    me: Peer,
    gateway: Peer,
    seq: u16,
    payload: usize,
) -> TestResult {
    let request = probe::echo_request(me, gateway, IDENT, seq, payload);
    let transfer = PACKET_HEADER_LEN + request.len();
    tx.transmit(&request)
        .map_err(|e| format!("transmit {}-byte frame: {e}", request.len()))?;
    let reply = rx.wait_for(1000 * MS_US, |frame| {
        (probe::echo_reply_seq(frame, IDENT) == Some(seq)).then(|| frame.to_vec())
    })?;
    let Some(reply) = reply else {
        return Err(format!(
            "no reply to echo request {seq}: {}-byte frame in a {transfer}-byte transfer ({} mod 64)",
            request.len(),
            transfer % 64
        ));
    };
    let padded_ok = reply.len() == MIN_ETHERNET && request.len() < MIN_ETHERNET;
    ensure!(
        reply.len() == request.len() || padded_ok,
        "reply {seq} is {} bytes, the request {}",
        reply.len(),
        request.len()
    );
    ensure!(
        reply[PAYLOAD_AT..request.len()] == request[PAYLOAD_AT..],
        "reply {seq}'s payload differs from the request's"
    );
    Ok(())
}

pub fn usb_rndis_lengths() -> TestResult {
    // This test drives the device itself, through the RNDIS driver's pieces.
    let record = super::usb_data::usb_net_unbound()?;
    let mut link = rndis::open(&record.access.controller, &record.access.device)?;
    let info = link.info;
    ensure!(
        link.configuration == 2,
        "RNDIS in configuration {}",
        link.configuration
    );
    ensure!(
        link.link_up,
        "QEMU's usb-net reports the media disconnected"
    );
    ensure!(
        info.max_tx_frame() >= 1514,
        "the device admits frames of {} bytes only",
        info.max_tx_frame()
    );
    // A stand-alone interface (not registered with the stack) to count TX progress in.
    let nic = crate::net::Nic::unlinked(
        "rndis-test".into(),
        info.mac,
        4,
        tether_netstack::watchdog::Policy::Off,
    );
    let tx = BulkTx::new(
        link.bulk_out.clone(),
        rndis::TX_BUFFER,
        RndisFraming {
            max_frame: info.max_tx_frame(),
        },
        link.bulk_in.clone(),
        &nic,
    );
    let mut rx = Receiver {
        rx: BulkRx::start(link.bulk_in.clone(), rndis::RX_BUFFER)?,
        stats: RndisRxStats::default(),
        transfer_lengths: BTreeSet::new(),
    };
    let me = Peer {
        mac: tether_netstack::smoltcp::wire::EthernetAddress(info.mac),
        ip: MY_IP,
    };

    tx.transmit(&probe::arp_request(me.mac, me.ip, GATEWAY_IP))
        .map_err(|e| format!("ARP request: {e}"))?;
    let gateway_mac = rx
        .wait_for(5000 * MS_US, |frame| {
            probe::arp_reply_from(frame, GATEWAY_IP)
        })?
        .ok_or_else(|| String::from("no ARP reply from the gateway"))?;
    let gateway = Peer {
        mac: gateway_mac,
        ip: GATEWAY_IP,
    };

    let mut seq: u16 = 0;
    let mut tx_residues = BTreeSet::new();
    let mut zlps_expected = 0;
    for payload in SWEEPS.into_iter().flatten() {
        seq += 1;
        let transfer = PACKET_HEADER_LEN + PAYLOAD_AT + payload;
        tx_residues.insert(transfer % 64);
        zlps_expected += u64::from(transfer.is_multiple_of(64));
        ping(&tx, &mut rx, me, gateway, seq, payload)?;
    }
    ensure!(
        tx_residues.len() == 64,
        "the sweep covered {} residues mod 64",
        tx_residues.len()
    );
    ensure!(
        tx.zlps() == zlps_expected && zlps_expected >= 2,
        "{} zero-length packets sent, expected {zlps_expected}",
        tx.zlps()
    );
    let rx_residues: BTreeSet<usize> = rx.transfer_lengths.iter().map(|l| l % 64).collect();
    ensure!(
        rx_residues.len() == 64,
        "replies arrived in transfers of only {} residues mod 64",
        rx_residues.len()
    );

    // The control channel still works beside the data, and data after it.
    let request = link
        .control
        .session
        .keepalive()
        .map_err(|e| format!("{e}"))?;
    match link.control.exchange(request).map_err(|e| format!("{e}"))? {
        SessionEvent::KeepaliveDone => {}
        other => return Err(format!("KEEPALIVE completed by {other:?}")),
    }
    for i in 0..AFTER {
        seq += 1;
        ping(&tx, &mut rx, me, gateway, seq, 100 + i * 150)?;
    }
    ensure!(rx.stats.errors() == 0, "receive errors: {:?}", rx.stats);
    kprintln!(
        "usb: rndis every length mod 64 answered: {seq} echo replies byte for byte, {} zero-length packets, no padding; MAC {}, MaxTransferSize {}; keepalive answered; {} frames received, 0 malformed",
        tx.zlps(),
        tether_usb::descriptor::MacAddress(info.mac),
        info.init.max_transfer_size,
        rx.stats.frames
    );
    Ok(())
}
