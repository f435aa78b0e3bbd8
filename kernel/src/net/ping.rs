//! `ping`: ICMP echo requests from an interface at a steady rate, started from the console.
//! It is the recovery benchmark's light load (one small packet a second, like the seed's ping:
//! unlike TCP it does not back off when replies stop) and an operator's reachability check.

use alloc::vec;

use tether_netstack::smoltcp::iface::{SocketHandle, SocketSet};
use tether_netstack::smoltcp::phy::ChecksumCapabilities;
use tether_netstack::smoltcp::socket::icmp;
use tether_netstack::smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Address};

use crate::sync::SpinLock;
use crate::time;

/// What the console asked for: target, interval, requests left (None: until `ping stop`).
#[derive(Clone, Copy, Debug)]
pub struct PingRequest {
    pub target: Ipv4Address,
    pub interval_ms: u64,
    pub count: Option<u32>,
}

/// The request in force, for every interface (each pings through its own routes).
static REQUEST: SpinLock<Option<PingRequest>> = SpinLock::new("net.ping", None);
/// Bumped by every new request so running pingers restart.
static GENERATION: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

pub fn start(request: Option<PingRequest>) {
    *REQUEST.lock() = request;
    GENERATION.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
}

const IDENT: u16 = 0x7e7e;
const PAYLOAD: usize = 16;

/// One interface's pinger.
pub struct Pinger {
    socket: SocketHandle,
    generation: u32,
    active: Option<PingRequest>,
    next_us: u64,
    seq: u16,
    sent: u32,
    replies: u32,
    name: alloc::string::String,
}

impl Pinger {
    pub fn new(sockets: &mut SocketSet<'static>, name: &str) -> Pinger {
        let buffer =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024]);
        let mut socket = icmp::Socket::new(buffer(), buffer());
        let _ = socket.bind(icmp::Endpoint::Ident(IDENT));
        Pinger {
            socket: sockets.add(socket),
            generation: GENERATION.load(core::sync::atomic::Ordering::Acquire),
            active: None,
            next_us: 0,
            seq: 0,
            sent: 0,
            replies: 0,
            name: name.into(),
        }
    }

    /// Sends what is due and counts replies. Returns microseconds until the next request is
    /// due (None: idle).
    pub fn run(&mut self, sockets: &mut SocketSet<'static>) -> Option<u64> {
        let generation = GENERATION.load(core::sync::atomic::Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            if let Some(done) = self.active {
                log::info!(
                    "{}: ping {}: {} sent, {} replies",
                    self.name,
                    done.target,
                    self.sent,
                    self.replies
                );
            }
            self.active = *REQUEST.lock();
            (self.seq, self.sent, self.replies) = (0, 0, 0);
            self.next_us = time::now_us();
        }
        let socket = sockets.get_mut::<icmp::Socket>(self.socket);
        while let Ok((data, _from)) = socket.recv() {
            if let Ok(packet) = Icmpv4Packet::new_checked(data) {
                if let Ok(Icmpv4Repr::EchoReply { ident: IDENT, .. }) =
                    Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
                {
                    self.replies += 1;
                }
            }
        }
        let request = self.active?;
        // Done one interval after the last request, so its reply can count.
        if request.count.is_some_and(|count| self.sent >= count) && time::now_us() >= self.next_us {
            self.active = None;
            log::info!(
                "{}: ping {}: {} sent, {} replies",
                self.name,
                request.target,
                self.sent,
                self.replies
            );
            return None;
        }
        let now = time::now_us();
        let more = request.count.is_none_or(|count| self.sent < count);
        if more && now >= self.next_us && socket.can_send() {
            let payload = [0x5au8; PAYLOAD];
            let repr = Icmpv4Repr::EchoRequest {
                ident: IDENT,
                seq_no: self.seq,
                data: &payload,
            };
            if let Ok(buffer) = socket.send(repr.buffer_len(), IpAddress::Ipv4(request.target)) {
                let mut packet = Icmpv4Packet::new_unchecked(buffer);
                repr.emit(&mut packet, &ChecksumCapabilities::default());
                self.seq = self.seq.wrapping_add(1);
                self.sent += 1;
            }
            self.next_us = now + request.interval_ms * 1000;
        }
        Some(self.next_us.saturating_sub(now))
    }
}
