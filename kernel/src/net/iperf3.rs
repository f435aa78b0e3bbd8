//! iperf3 server (port 5201) for stock `iperf3 -c` clients: TCP in both directions (`-R`),
//! parallel streams (`-P`), time, byte and block limits (`-t`, `-n`, `-k`), block size (`-l`),
//! pacing (`-b`, when the server sends) and `--get-server-output`.
//!
//! The protocol is [`ServerSession`] (host-tested in `tether-netstack`); this module wires it
//! to smoltcp sockets. As in iperf3's own server, one test runs at a time on one port: a
//! connection arriving while the server is free is the control connection; while the session
//! waits for its data streams every new connection is one (its cookie must match); any other
//! connection during a test gets ACCESS_DENIED and is closed. A misbehaving client only ever
//! loses its own connections.
//!
//! Sockets come from a pool: an idle server keeps [`IDLE_LISTENERS`] listening sockets, a test
//! that asks for N streams gets N more before its client is told to connect them, and the pool
//! shrinks back afterwards. A socket that closed is listening again at the next pass.
//!
//! Data moves in the sockets' own buffers: received payload is counted and dropped in place,
//! and payload to send is generated straight into the send buffer, once per buffer lap (see
//! [`fill_payload`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use tether_netstack::iperf3::{
    Action, CloseReason, CookieReader, Limits, ServerSession, BUSY_REPLY,
};
use tether_netstack::smoltcp::iface::{SocketHandle, SocketSet};
use tether_netstack::smoltcp::socket::tcp;
use tether_netstack::smoltcp::time::{Duration, Instant};
use tether_netstack::smoltcp::wire::IpEndpoint;

use crate::time;

/// Receive buffer of every socket: the TCP window a client sending to us gets (smoltcp scales
/// it). 256 KiB covers what a USB 2.0 link can have in flight at its round-trip time with room
/// to spare.
const RX_BUFFER: usize = 256 * 1024;
/// Payload a sending test keeps queued in its sockets in all, split evenly between its streams.
/// What is queued is what can be in flight, and the peer answers what is in flight with ACKs.
/// Before the USB NIC driver held the device back when the stack's receive queue was full, it
/// dropped frames there: 16 streams with 256 KiB each then lost tens of thousands of ACKs and
/// the client's TEST_END with them, and this was 64 KiB. With back-pressure, 256 KiB in all
/// lets one stream keep a few milliseconds of data in flight at the rates TCG reaches
/// (g->h 90-108 -> 117-119 Mbit/s in one A/B on a quiet host).
const SEND_QUEUE_TOTAL: usize = 256 * 1024;
/// Send buffer of every socket: a sending stream never queues more (control messages are a
/// few hundred bytes). A test with 16 streams holds about 5 MiB of buffers.
const TX_BUFFER: usize = SEND_QUEUE_TOTAL;
/// The least one stream may keep queued (a few segments), whatever the number of streams.
const SEND_QUEUE_MIN: usize = 4 * 1024;
/// Listening sockets kept while no test is being set up: one for the next control connection,
/// one to answer a second client with ACCESS_DENIED rather than a reset.
const IDLE_LISTENERS: usize = 2;
/// How long a socket we closed may wait for its peer's side before it is reset.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long the data connections of a finished test may take to deliver what the client sent
/// before its end (counted for the log line) and close. That can be a lot: a client's socket
/// buffers hold megabytes per stream when the link is the bottleneck. Draining only holds
/// sockets; the next client can start meanwhile.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// A peer that acknowledges nothing for this long loses its connection (smoltcp's timeout:
/// also ends half-open connections stuck in SYN-RECEIVED).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);

fn now() -> Instant {
    Instant::from_micros(time::now_us() as i64)
}

pub struct Iperf3Service {
    port: u16,
    limits: Limits,
    slots: Vec<Slot>,
    /// The test that owns the server, if any.
    active: Option<ActiveTest>,
    /// Tests whose session ended normally, waiting for their data connections to finish.
    draining: Vec<DrainingTest>,
    /// Number of the next test (every control connection is one, for the log lines).
    next_test: u64,
}

struct Slot {
    handle: SocketHandle,
    /// Address of the send buffer's storage (see [`fill_payload`]).
    tx_storage: usize,
    role: Role,
}

enum Role {
    Listening,
    /// The active test's control connection.
    Control,
    Data(DataStream),
    /// We closed it; listening again once both sides are closed, reset after [`CLOSE_LINGER`].
    Closing {
        since: Instant,
    },
    /// Reset by us; listening again at the next pass (after a poll sent the RST).
    Aborted,
}

struct DataStream {
    /// The test this connection belongs to.
    test: u64,
    cookie: CookieReader,
    /// The session's index of this stream, once its cookie was accepted.
    index: Option<usize>,
    /// Payload bytes received after the cookie, whatever the test's phase.
    received: u64,
    /// Payload bytes handed to TCP to send.
    sent: u64,
    /// The first `clean` bytes of the send buffer's storage hold generated payload.
    clean: usize,
}

impl DataStream {
    fn new(test: u64) -> Self {
        DataStream {
            test,
            cookie: CookieReader::new(),
            index: None,
            received: 0,
            sent: 0,
            clean: 0,
        }
    }
}

/// Bytes moved by a test's data connections that have ended.
#[derive(Clone, Copy, Default)]
struct Moved {
    received: u64,
    sent: u64,
}

struct ActiveTest {
    number: u64,
    session: ServerSession,
    control: SocketHandle,
    peer: Option<IpEndpoint>,
    /// Control bytes not yet taken by the socket's send buffer.
    outbox: Vec<u8>,
    /// When TEST_RUNNING was sent, and when the client's TEST_END arrived.
    started: Option<Instant>,
    ended: Option<Instant>,
    /// Payload handed to TCP by all streams (for `-b` pacing).
    sent_total: u64,
    moved: Moved,
}

impl ActiveTest {
    fn reverse(&self) -> bool {
        self.session.params().is_some_and(|p| p.reverse)
    }

    fn running(&self) -> bool {
        self.started.is_some() && self.ended.is_none() && !self.session.is_closed()
    }

    /// How many more payload bytes the server may send now: the session's byte or block budget
    /// and the `-b` rate, whichever is smaller; `None` when unlimited.
    fn send_allowance(&self, now: Instant) -> Option<u64> {
        let mut allowance = self.session.send_budget();
        let bits_per_second = self.session.params().map_or(0, |p| p.bandwidth);
        if let (Some(started), true) = (self.started, bits_per_second > 0) {
            let elapsed_us = (now - started).total_micros();
            let allowed = (u128::from(bits_per_second) * u128::from(elapsed_us) / 8_000_000)
                .min(u128::from(u64::MAX)) as u64;
            let paced = allowed.saturating_sub(self.sent_total);
            allowance = Some(allowance.map_or(paced, |a| a.min(paced)));
        }
        allowance
    }
}

/// What the log line of a finished test reports.
struct DrainingTest {
    number: u64,
    peer: Option<IpEndpoint>,
    streams: u32,
    reverse: bool,
    /// Bytes the results sent to the client count (after the omit period, until TEST_END).
    reported: u64,
    /// From TEST_RUNNING to TEST_END.
    seconds: f64,
    moved: Moved,
    deadline: Instant,
    /// Why some connections were reset before they finished (their bytes are not all counted).
    cut_short: Option<String>,
}

impl DrainingTest {
    fn log(&self) {
        let streams = if self.streams == 1 {
            String::from("1 stream")
        } else {
            format!("{} streams", self.streams)
        };
        let mbit_per_second = if self.seconds > 0.0 {
            self.reported as f64 * 8.0 / self.seconds / 1e6
        } else {
            0.0
        };
        let cut_short = self
            .cut_short
            .as_ref()
            .map_or_else(String::new, |why| format!("; count cut short: {why}"));
        log::info!(
            "iperf3: test {} done: client {}, {streams}, server {}, {:.2} s: received={} sent={} reported={} ({mbit_per_second:.1} Mbit/s){cut_short}",
            self.number,
            peer_text(self.peer),
            if self.reverse { "sends" } else { "receives" },
            self.seconds,
            self.moved.received,
            self.moved.sent,
            self.reported,
        );
    }
}

fn peer_text(peer: Option<IpEndpoint>) -> String {
    peer.map_or_else(|| String::from("?"), |p| format!("{p}"))
}

/// A pseudo-random byte for position `at` of the send buffer: payload a compressing link
/// cannot shrink, cheap to make.
fn payload_byte(at: usize) -> u8 {
    let mut x = (at as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    (x >> 24) as u8
}

/// Fills the part of `window` (free space of a send buffer whose storage starts at address
/// `storage`) that does not hold payload yet, and returns nothing to copy: generated payload
/// stays valid where it is, so once the ring buffer has gone round once nothing is written at
/// all. Invariant: bytes `[0, clean)` of the storage were written by this function during this
/// connection (a reused socket may hold an earlier connection's bytes, never sent again).
/// smoltcp writes at the end of its queued data and restarts at offset 0 when the buffer
/// empties, so a window never starts above `clean`; should one ever do, it is filled whole and
/// `clean` stays put.
fn fill_payload(window: &mut [u8], storage: usize, clean: &mut usize) {
    let offset = (window.as_ptr() as usize).wrapping_sub(storage);
    let end = offset.saturating_add(window.len());
    if offset > *clean || end > TX_BUFFER {
        for (i, byte) in window.iter_mut().enumerate() {
            *byte = payload_byte(offset.wrapping_add(i));
        }
        return;
    }
    if end <= *clean {
        return;
    }
    let from = *clean - offset;
    for (i, byte) in window[from..].iter_mut().enumerate() {
        *byte = payload_byte(*clean + i);
    }
    *clean = end;
}

impl Iperf3Service {
    pub fn new(set: &mut SocketSet<'static>, port: u16) -> Iperf3Service {
        let mut service = Iperf3Service {
            port,
            limits: Limits::default(),
            slots: Vec::new(),
            active: None,
            draining: Vec::new(),
            next_test: 1,
        };
        // Listening from the start: a SYN in the first poll must not meet a RST.
        service.grow_pool(set);
        service
    }

    fn add_slot(&mut self, set: &mut SocketSet<'static>) {
        let rx = alloc::vec![0u8; RX_BUFFER];
        let tx = alloc::vec![0u8; TX_BUFFER];
        // The Vec's heap block becomes the ring buffer's storage unchanged.
        let tx_storage = tx.as_ptr() as usize;
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        socket.set_timeout(Some(SOCKET_TIMEOUT));
        let _ = socket.listen(self.port);
        self.slots.push(Slot {
            handle: set.add(socket),
            tx_storage,
            role: Role::Listening,
        });
    }

    /// Listening sockets wanted now: the data streams still expected plus one spare, or the
    /// idle number.
    fn wanted_listeners(&self) -> usize {
        match &self.active {
            Some(active) if active.session.accepting_streams() => {
                let expected = active.session.params().map_or(0, |p| p.parallel as usize);
                let connected = self
                    .slots
                    .iter()
                    .filter(|s| matches!(&s.role, Role::Data(d) if d.test == active.number))
                    .count();
                expected.saturating_sub(connected) + 1
            }
            _ => IDLE_LISTENERS,
        }
    }

    fn listening(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.role, Role::Listening))
            .count()
    }

    /// Adds listening sockets up to the number wanted (within a bound on all sockets). Only
    /// appends to `slots`, so it may run while they are walked by index.
    fn grow_pool(&mut self, set: &mut SocketSet<'static>) {
        let wanted = self.wanted_listeners();
        let max_slots = self.limits.max_parallel as usize + 2 * IDLE_LISTENERS;
        let mut listening = self.listening();
        while listening < wanted && self.slots.len() < max_slots {
            self.add_slot(set);
            listening += 1;
        }
    }

    /// Frees the buffers of listening sockets no longer wanted.
    fn shrink_pool(&mut self, set: &mut SocketSet<'static>) {
        let wanted = self.wanted_listeners();
        let mut listening = self.listening();
        while listening > wanted {
            let idle = self.slots.iter().position(|s| {
                matches!(s.role, Role::Listening)
                    && set.get::<tcp::Socket>(s.handle).state() == tcp::State::Listen
            });
            let Some(at) = idle else { break };
            let slot = self.slots.swap_remove(at);
            drop(set.remove(slot.handle));
            listening -= 1;
        }
    }

    /// Re-arms sockets that finished closing (or were reset at the previous pass); resets
    /// those whose peer lingers.
    fn reap(&mut self, set: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut changed = false;
        for slot in &mut self.slots {
            let socket = set.get_mut::<tcp::Socket>(slot.handle);
            match slot.role {
                Role::Aborted => {}
                Role::Closing { since } => {
                    // Whatever the peer still sends is of no use.
                    while let Ok(n) = socket.recv(|data| (data.len(), data.len())) {
                        if n == 0 {
                            break;
                        }
                    }
                    if socket.is_open() {
                        if now >= since + CLOSE_LINGER {
                            socket.abort();
                            slot.role = Role::Aborted;
                            changed = true;
                        }
                        continue;
                    }
                }
                _ => continue,
            }
            if matches!(slot.role, Role::Aborted) && socket.is_open() {
                socket.abort();
            }
            let _ = socket.listen(self.port);
            slot.role = Role::Listening;
            changed = true;
        }
        changed
    }

    /// Gives every newly connected listening socket its role. Returns whether any got one.
    fn assign(&mut self, set: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut assigned = false;
        for slot in &mut self.slots {
            if !matches!(slot.role, Role::Listening) {
                continue;
            }
            let socket = set.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => continue,
                tcp::State::Closed | tcp::State::TimeWait => {
                    // Reset before we looked at it.
                    let _ = socket.listen(self.port);
                    continue;
                }
                _ => {}
            }
            assigned = true;
            let peer = socket.remote_endpoint();
            match &mut self.active {
                Some(active) if active.session.accepting_streams() => {
                    socket.set_nagle_enabled(true);
                    slot.role = Role::Data(DataStream::new(active.number));
                }
                Some(active) => {
                    log::info!(
                        "iperf3: test {} owns the server; refused {} (ACCESS_DENIED)",
                        active.number,
                        peer_text(peer)
                    );
                    let _ = socket.send_slice(&BUSY_REPLY);
                    socket.close();
                    slot.role = Role::Closing { since: now };
                }
                None => {
                    let number = self.next_test;
                    self.next_test += 1;
                    log::debug!(
                        "iperf3: test {number}: control connection from {}",
                        peer_text(peer)
                    );
                    // State bytes are single bytes that must not wait for an ACK.
                    socket.set_nagle_enabled(false);
                    self.active = Some(ActiveTest {
                        number,
                        session: ServerSession::new(now, self.limits),
                        control: slot.handle,
                        peer,
                        outbox: Vec::new(),
                        started: None,
                        ended: None,
                        sent_total: 0,
                        moved: Moved::default(),
                    });
                    slot.role = Role::Control;
                }
            }
        }
        assigned
    }

    /// Moves payload on every data connection; reads cookies and hands them to the session.
    /// Returns whether anything moved.
    fn serve_data(&mut self, set: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut moved = false;
        for at in 0..self.slots.len() {
            let slot = &mut self.slots[at];
            let Role::Data(stream) = &mut slot.role else {
                continue;
            };
            let socket = set.get_mut::<tcp::Socket>(slot.handle);
            let owned = self.draining.iter().any(|d| d.number == stream.test);
            let active = self.active.as_mut().filter(|a| a.number == stream.test);
            let served = serve_stream(stream, socket, slot.tx_storage, active, owned, now);
            moved |= served.moved;
            if served.next.is_some() {
                moved = true;
                if served.count {
                    self.credit(at);
                }
            }
            if let Some(next) = served.next {
                self.slots[at].role = next;
            }
            moved |= self.apply(set, now, served.actions);
        }
        moved
    }

    /// Adds the counts of the data connection in slot `at` to its test.
    fn credit(&mut self, at: usize) {
        let Role::Data(stream) = &self.slots[at].role else {
            return;
        };
        let moved = match &mut self.active {
            Some(active) if active.number == stream.test => &mut active.moved,
            _ => match self.draining.iter_mut().find(|d| d.number == stream.test) {
                Some(draining) => &mut draining.moved,
                None => return,
            },
        };
        moved.received += stream.received;
        moved.sent += stream.sent;
    }

    /// Reads the control connection into the session, passes on end of stream and timeouts,
    /// and sends what the session says. Returns whether anything moved.
    fn serve_control(&mut self, set: &mut SocketSet<'static>, now: Instant) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let socket = set.get_mut::<tcp::Socket>(active.control);
        let mut actions = Vec::new();
        let mut moved = false;
        while !active.session.is_closed() {
            let session = &mut active.session;
            match socket.recv(|data| (data.len(), (data.len(), session.feed(now, data)))) {
                Ok((n, more)) if n > 0 => {
                    actions.extend(more);
                    moved = true;
                }
                _ => break,
            }
        }
        if !socket.may_recv() {
            actions.extend(active.session.eof(now));
        }
        actions.extend(active.session.poll(now));
        moved |= self.apply(set, now, actions);
        moved | self.flush_control(set)
    }

    /// Hands queued control bytes to the control socket.
    fn flush_control(&mut self, set: &mut SocketSet<'static>) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        if active.outbox.is_empty() {
            return false;
        }
        let socket = set.get_mut::<tcp::Socket>(active.control);
        match socket.send_slice(&active.outbox) {
            Ok(n) if n > 0 => {
                active.outbox.drain(..n);
                true
            }
            _ => false,
        }
    }

    /// Carries out the session's actions. Returns whether a socket changed.
    fn apply(&mut self, set: &mut SocketSet<'static>, now: Instant, actions: Vec<Action>) -> bool {
        let mut changed = false;
        for action in actions {
            let Some(active) = self.active.as_mut() else {
                return changed;
            };
            match action {
                Action::Send(bytes) => {
                    active.outbox.extend_from_slice(&bytes);
                    changed |= self.flush_control(set);
                }
                Action::ExpectDataStreams { count, reverse } => {
                    log::debug!(
                        "iperf3: test {}: expecting {count} data connection(s), server {}",
                        active.number,
                        if reverse { "sends" } else { "receives" }
                    );
                    // The new test owns the link (and the sockets) from now on.
                    let number = active.number;
                    self.cut_drains(set, number);
                    // Listening before the client hears CREATE_STREAMS (at the next poll).
                    self.grow_pool(set);
                }
                Action::StartTest => {
                    active.started = Some(now);
                    changed = true;
                }
                Action::Finish => {
                    active.ended = Some(now);
                    // The server's side of a reverse test is over: what is queued still goes
                    // out (the client drains it), then FIN. A receiving server keeps reading
                    // until the client closes, so that the log counts every byte it sent.
                    if active.reverse() {
                        let number = active.number;
                        for at in 0..self.slots.len() {
                            if matches!(&self.slots[at].role, Role::Data(d) if d.test == number) {
                                self.credit(at);
                                set.get_mut::<tcp::Socket>(self.slots[at].handle).close();
                                self.slots[at].role = Role::Closing { since: now };
                            }
                        }
                    }
                    changed = true;
                }
                Action::Close(reason) => {
                    self.close_test(set, now, reason);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Ends the active test: closes its control connection; a completed test's data
    /// connections drain (see [`DrainingTest`]), an aborted test's are reset.
    fn close_test(&mut self, set: &mut SocketSet<'static>, now: Instant, reason: CloseReason) {
        // Whatever the session still had to say (SERVER_ERROR, the results) goes out before FIN.
        self.flush_control(set);
        let Some(active) = self.active.take() else {
            return;
        };
        let socket = set.get_mut::<tcp::Socket>(active.control);
        socket.close();
        if let Some(slot) = self.slots.iter_mut().find(|s| s.handle == active.control) {
            slot.role = Role::Closing { since: now };
        }
        if reason.is_error() {
            log::warn!(
                "iperf3: test {} from {} closed: {reason}",
                active.number,
                peer_text(active.peer)
            );
            for slot in &mut self.slots {
                if matches!(&slot.role, Role::Data(d) if d.test == active.number) {
                    set.get_mut::<tcp::Socket>(slot.handle).abort();
                    slot.role = Role::Aborted;
                }
            }
            return;
        }
        let seconds = match (active.started, active.ended) {
            (Some(started), Some(ended)) => (ended - started).total_micros() as f64 / 1e6,
            _ => 0.0,
        };
        self.draining.push(DrainingTest {
            number: active.number,
            peer: active.peer,
            streams: active.session.params().map_or(0, |p| p.parallel),
            reverse: active.reverse(),
            reported: active.session.stream_bytes().iter().sum(),
            seconds,
            moved: active.moved,
            deadline: now + DRAIN_LIMIT,
            cut_short: None,
        });
    }

    /// Resets the data connections of finished tests still draining, for test `by`: they are
    /// listening again at once (their peers get a reset for their next segment).
    fn cut_drains(&mut self, set: &mut SocketSet<'static>, by: u64) {
        for at in 0..self.slots.len() {
            let Role::Data(stream) = &self.slots[at].role else {
                continue;
            };
            let test = stream.test;
            let Some(draining) = self.draining.iter_mut().find(|d| d.number == test) else {
                continue;
            };
            draining.cut_short = Some(format!("test {by} started"));
            self.credit(at);
            let socket = set.get_mut::<tcp::Socket>(self.slots[at].handle);
            socket.abort();
            let _ = socket.listen(self.port);
            self.slots[at].role = Role::Listening;
        }
    }

    /// Logs finished tests whose data connections are all closed; resets those that linger.
    fn finish_draining(&mut self, set: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut changed = false;
        let mut at = 0;
        while at < self.draining.len() {
            let number = self.draining[at].number;
            let overdue = now >= self.draining[at].deadline;
            let mut open = 0;
            for slot_at in 0..self.slots.len() {
                if !matches!(&self.slots[slot_at].role, Role::Data(d) if d.test == number) {
                    continue;
                }
                if overdue {
                    self.credit(slot_at);
                    set.get_mut::<tcp::Socket>(self.slots[slot_at].handle)
                        .abort();
                    self.slots[slot_at].role = Role::Aborted;
                    self.draining[at].cut_short =
                        Some(format!("still draining after {} s", DRAIN_LIMIT.secs()));
                    changed = true;
                } else {
                    open += 1;
                }
            }
            if open == 0 {
                self.draining.swap_remove(at).log();
            } else {
                at += 1;
            }
        }
        changed
    }
}

/// What serving one data connection came to.
struct Served {
    moved: bool,
    /// The session's answer to the stream's cookie.
    actions: Vec<Action>,
    /// The slot's next role, when the connection is over for us.
    next: Option<Role>,
    /// Whether the stream's counts go to its test (it was one of its streams).
    count: bool,
}

/// Serves one data connection of test `stream.test`: `active` is that test when it is the
/// active one, `draining` whether it is a finished test still draining.
fn serve_stream(
    stream: &mut DataStream,
    socket: &mut tcp::Socket,
    tx_storage: usize,
    mut active: Option<&mut ActiveTest>,
    draining: bool,
    now: Instant,
) -> Served {
    let mut served = Served {
        moved: false,
        actions: Vec::new(),
        next: None,
        count: true,
    };
    if active.is_none() && !draining {
        // Its test was abandoned; nobody counts on it.
        socket.abort();
        served.next = Some(Role::Aborted);
        served.count = false;
        return served;
    }
    if stream.index.is_none() {
        while stream.cookie.cookie().is_none() {
            match socket.recv(|data| {
                let n = stream.cookie.push(data);
                (n, n)
            }) {
                Ok(n) if n > 0 => served.moved = true,
                _ => break,
            }
        }
        if let Some(cookie) = stream.cookie.cookie() {
            match active
                .as_deref_mut()
                .map(|a| a.session.accept_stream(now, cookie))
            {
                Some(Ok(accepted)) => {
                    stream.index = Some(accepted.index);
                    served.actions = accepted.actions;
                }
                _ => {
                    log::info!(
                        "iperf3: test {}: refused a data connection from {} (wrong or unexpected cookie)",
                        stream.test,
                        peer_text(socket.remote_endpoint())
                    );
                    let _ = socket.send_slice(&BUSY_REPLY);
                    socket.close();
                    served.next = Some(Role::Closing { since: now });
                    served.count = false;
                    return served;
                }
            }
        }
    }
    if stream.index.is_some() {
        served.moved |= move_payload(stream, socket, tx_storage, active, now);
    }
    // The peer closed its side (or reset): this stream's count is final.
    if !socket.is_open() {
        served.next = Some(Role::Aborted);
    } else if !socket.may_recv() {
        socket.close();
        served.next = Some(Role::Closing { since: now });
    }
    served
}

/// Receives (counting in place) and, when this server sends, fills the send buffer. Returns
/// whether anything moved.
fn move_payload(
    stream: &mut DataStream,
    socket: &mut tcp::Socket,
    tx_storage: usize,
    mut active: Option<&mut ActiveTest>,
    now: Instant,
) -> bool {
    let mut moved = false;
    // Two chunks at most: the ring buffer's tail, then its head.
    while let Ok(n) = socket.recv(|data| (data.len(), data.len())) {
        if n == 0 {
            break;
        }
        moved = true;
        stream.received += n as u64;
        if let (Some(active), Some(index)) = (active.as_deref_mut(), stream.index) {
            active.session.record_bytes(now, index, n as u64);
        }
    }
    let Some(active) = active.filter(|a| a.running() && a.reverse()) else {
        return moved;
    };
    let Some(index) = stream.index else {
        return moved;
    };
    let streams = active.session.params().map_or(1, |p| p.parallel.max(1)) as usize;
    let queue_limit = (SEND_QUEUE_TOTAL / streams).max(SEND_QUEUE_MIN);
    while socket.can_send() {
        let room = queue_limit.saturating_sub(socket.send_queue()) as u64;
        let allowance = active.send_allowance(now).unwrap_or(u64::MAX).min(room);
        if allowance == 0 {
            break;
        }
        let clean = &mut stream.clean;
        let queued = socket.send(|window| {
            let n = window
                .len()
                .min(usize::try_from(allowance).unwrap_or(usize::MAX));
            fill_payload(&mut window[..n], tx_storage, clean);
            (n, n)
        });
        match queued {
            Ok(n) if n > 0 => {
                moved = true;
                stream.sent += n as u64;
                active.sent_total += n as u64;
                active.session.record_bytes(now, index, n as u64);
            }
            _ => break,
        }
    }
    moved
}

impl super::service::Service for Iperf3Service {
    fn run(&mut self, set: &mut SocketSet<'static>) -> bool {
        let now = now();
        // Sockets closed or reset at the previous pass are listening again first, so that a
        // client arriving right after a test finds the server free.
        let mut moved = self.reap(set, now);
        // Payload first, so that bytes that arrived before the client's TEST_END count.
        moved |= self.serve_data(set, now);
        moved |= self.serve_control(set, now);
        // New connections, served at once: a data connection's cookie or a control
        // connection's first bytes may have come with the handshake, and nothing else may wake
        // this thread soon.
        if self.assign(set, now) {
            moved = true;
            moved |= self.serve_data(set, now);
            moved |= self.serve_control(set, now);
        }
        moved |= self.finish_draining(set, now);
        self.grow_pool(set);
        self.shrink_pool(set);
        moved
    }
}
