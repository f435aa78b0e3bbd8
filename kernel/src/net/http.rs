//! HTTP on port 80: `GET /` a plain-text status page, `GET /metrics` the Prometheus text
//! format, `GET /trace` the trace ring (`?n=N`: the newest N records). One request per
//! connection, every answer with `Connection: close`.
//!
//! Each connection is a small state machine (listening, reading the request, writing the
//! answer, lingering) that the network thread advances whenever it runs the service; nothing
//! here waits. A slow or half-sent request therefore holds only its own connection, and only
//! until [`REQUEST_TIMEOUT_NS`]. Memory is bounded per connection: the request up to the
//! parser's limits, and the answer produced piece by piece as the socket's send buffer takes
//! it (`/trace` formats a few dozen records at a time, so 4096 records never sit in memory as
//! text, nor need to fit in the TCP buffer).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use tether_kcore::trace::Record;
use tether_netstack::http::{self, HttpError, Method, Request, Response};
use tether_netstack::smoltcp::iface::{SocketHandle, SocketSet};
use tether_netstack::smoltcp::socket::tcp;
use tether_netstack::smoltcp::time::Duration;

use crate::time;

/// Connections served at once; a client beyond them is refused (RST) until one ends.
const CONNECTIONS: usize = 8;
/// Socket receive buffer: requests are drained from it into the connection's own buffer.
const RX_BUFFER: usize = 4 * 1024;
/// Socket send buffer: large answers pass through it in pieces.
const TX_BUFFER: usize = 32 * 1024;
/// The most request bytes kept: the parser decides within its head and body limits.
const MAX_REQUEST: usize = http::MAX_HEAD + http::MAX_BODY;
/// A request must be complete this long after the connection opened; then 408.
const REQUEST_TIMEOUT_NS: u64 = 10_000_000_000;
/// An answer the client takes nothing of for this long is abandoned (connection reset).
const STALL_TIMEOUT_NS: u64 = 30_000_000_000;
/// After the whole answer is acknowledged, how long the client gets to close its side
/// (meanwhile whatever it still sends is read and dropped).
const LINGER_NS: u64 = 5_000_000_000;
/// smoltcp gives up on a peer that stops answering while data is queued for it.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Trace records formatted per piece of a `/trace` answer.
const TRACE_RECORDS_PER_PIECE: usize = 64;

/// The rest of an answer's body, produced as the socket takes it.
trait BodySource: Send {
    /// Appends the next piece of the body to `out`; false (nothing appended) when the body
    /// is complete.
    fn fill(&mut self, out: &mut Vec<u8>) -> bool;
}

/// What a handler answers: a complete response, or a head whose body follows from a source
/// (sent without Content-Length, ended by closing the connection).
pub struct Reply {
    response: Response,
    stream: Option<Box<dyn BodySource>>,
}

impl Reply {
    fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            response: Response::new(status, "text/plain; charset=utf-8", body),
            stream: None,
        }
    }

    fn error(error: HttpError) -> Reply {
        Reply {
            response: error.response(),
            stream: None,
        }
    }
}

type Handler = fn(&Request<'_>) -> Reply;

/// A path, the methods it takes, and its handler.
struct Route {
    path: &'static str,
    methods: &'static [Method],
    handler: Handler,
}

const READ_ONLY: &[Method] = &[Method::Get, Method::Head];

/// Every path the server answers; a new endpoint is one more entry.
const ROUTES: &[Route] = &[
    Route {
        path: "/fault",
        methods: &[Method::Post],
        handler: fault,
    },
    Route {
        path: "/",
        methods: READ_ONLY,
        handler: status_page,
    },
    Route {
        path: "/metrics",
        methods: READ_ONLY,
        handler: metrics,
    },
    Route {
        path: "/trace",
        methods: READ_ONLY,
        handler: trace,
    },
];

fn route(request: &Request<'_>) -> Reply {
    let Some(route) = ROUTES.iter().find(|r| r.path == request.path) else {
        return Reply::text(404, format!("404 Not Found: {}\n", request.path));
    };
    if !route.methods.contains(&request.method) {
        let allow: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
        let allow = allow.join(", ");
        let mut reply = Reply::text(
            405,
            format!("405 Method Not Allowed: {} takes {allow}\n", route.path),
        );
        reply.response = reply.response.with_header("Allow", &allow);
        return reply;
    }
    (route.handler)(request)
}

/// `POST /fault` with the form body `token=T&iface=eth0&fault=KIND`: fault injection, only
/// when booted with `faults=T` (see `net::fault`). 403 for a missing or wrong token (counted),
/// 400 for a malformed body or an unknown fault or interface.
fn fault(request: &Request<'_>) -> Reply {
    let parsed = core::str::from_utf8(request.body)
        .ok()
        .and_then(tether_netstack::fault::FaultRequest::from_form);
    let Some(parsed) = parsed else {
        return Reply::text(
            400,
            "400 Bad Request: expected the form body token=T&iface=IFACE&fault=KIND\n",
        );
    };
    match super::fault::request(&parsed) {
        Ok(done) => Reply::text(200, format!("{done}\n")),
        Err(super::fault::Refusal::Forbidden(why)) => {
            Reply::text(403, format!("403 Forbidden: {why}\n"))
        }
        Err(super::fault::Refusal::Invalid(why)) => {
            Reply::text(400, format!("400 Bad Request: {why}\n"))
        }
    }
}

fn status_page(_request: &Request<'_>) -> Reply {
    Reply::text(200, crate::status::status_page())
}

fn metrics(_request: &Request<'_>) -> Reply {
    Reply {
        response: Response::new(200, http::PROMETHEUS_CONTENT_TYPE, crate::metrics::render()),
        stream: None,
    }
}

/// `/trace`, `/trace?n=100`: the ring's records as the console's `trace` shows them, oldest
/// first, up to the newest record at the time of the request.
fn trace(request: &Request<'_>) -> Reply {
    let mut limit = u64::MAX;
    for pair in request.query.unwrap_or("").split('&') {
        if let Some(n) = pair.strip_prefix("n=") {
            match n.parse() {
                Ok(n) => limit = n,
                Err(_) => return Reply::text(400, "400 Bad Request: n must be a number\n"),
            }
        }
    }
    let (oldest, end) = crate::trace::ring_span();
    Reply {
        response: Response::new(200, "text/plain; charset=utf-8", ""),
        stream: Some(Box::new(TraceStream {
            next: end.saturating_sub(limit).max(oldest),
            end,
            started: false,
            records: Vec::new(),
        })),
    }
}

/// Trace records `next..end`, copied from the ring a few at a time.
struct TraceStream {
    next: u64,
    end: u64,
    /// A piece was produced already.
    started: bool,
    /// Reused between pieces.
    records: Vec<Record>,
}

impl BodySource for TraceStream {
    fn fill(&mut self, out: &mut Vec<u8>) -> bool {
        if self.next >= self.end {
            return false;
        }
        self.records.clear();
        let want = ((self.end - self.next) as usize).min(TRACE_RECORDS_PER_PIECE);
        crate::trace::copy_records_since(self.next, want, &mut self.records);
        let Some(first) = self.records.first() else {
            self.next = self.end;
            return false;
        };
        let mut writer = ByteWriter(out);
        if first.seq() > self.next {
            let lost = first.seq().min(self.end) - self.next;
            // Before the first record the answer simply starts later (the ring moved since
            // the request, if only by the request's own log line); after it, a slow reader
            // lost records in the middle, and the text says so.
            if self.started {
                let _ = fmt::Write::write_fmt(
                    &mut writer,
                    format_args!(
                        "(trace records overwritten while this answer was sent: {lost})\n"
                    ),
                );
            }
            self.next += lost;
        }
        self.started = true;
        for record in self.records.iter().take_while(|r| r.seq() < self.end) {
            let _ = record.write_line(&mut writer);
            writer.0.push(b'\n');
            self.next = record.seq() + 1;
        }
        true
    }
}

/// `fmt::Write` into a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Status codes counted for `/metrics` (every code this server answers with).
const COUNTED: [u16; 11] = [200, 400, 403, 404, 405, 408, 413, 414, 431, 500, 505];
static RESPONSES: [AtomicU64; COUNTED.len()] = [const { AtomicU64::new(0) }; COUNTED.len()];

fn count_response(status: u16) {
    if let Some(i) = COUNTED.iter().position(|&c| c == status) {
        RESPONSES[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's own counters, for `/metrics`.
pub fn write_metrics(out: &mut String) {
    use tether_netstack::http::{write_family, write_sample, MetricType};
    let name = "tether_http_responses_total";
    write_family(
        out,
        name,
        "HTTP answers by status code.",
        MetricType::Counter,
    );
    for (code, count) in COUNTED.iter().zip(&RESPONSES) {
        let code = format!("{code}");
        let value = count.load(Ordering::Relaxed);
        write_sample(out, name, &[("code", &code)], value.into());
    }
}

enum Phase {
    /// Waiting for a client.
    Listening,
    /// Receiving the request (bytes so far) since the connection opened.
    Reading { request: Vec<u8>, since_ns: u64 },
    /// Sending `out[sent..]`, then whatever `stream` still produces.
    Writing {
        out: Vec<u8>,
        sent: usize,
        stream: Option<Box<dyn BodySource>>,
        progress_ns: u64,
    },
    /// Everything is queued and our side closed: waiting for the client to take it all and
    /// close too, dropping anything it still sends.
    Lingering {
        queued: usize,
        progress_ns: u64,
        acked_ns: Option<u64>,
    },
}

struct Connection {
    handle: SocketHandle,
    phase: Phase,
}

pub struct HttpService {
    port: u16,
    connections: Vec<Connection>,
}

impl HttpService {
    pub fn new(set: &mut SocketSet<'static>, port: u16) -> HttpService {
        let connections = (0..CONNECTIONS)
            .map(|_| {
                let rx = tcp::SocketBuffer::new(alloc::vec![0u8; RX_BUFFER]);
                let tx = tcp::SocketBuffer::new(alloc::vec![0u8; TX_BUFFER]);
                let mut socket = tcp::Socket::new(rx, tx);
                // Listening from the start: a SYN in the first poll must not meet a RST.
                listen(&mut socket, port);
                Connection {
                    handle: set.add(socket),
                    phase: Phase::Listening,
                }
            })
            .collect();
        HttpService { port, connections }
    }
}

fn listen(socket: &mut tcp::Socket<'_>, port: u16) {
    socket.set_timeout(Some(PEER_TIMEOUT));
    let _ = socket.listen(port);
}

impl super::service::Service for HttpService {
    fn run(&mut self, set: &mut SocketSet<'static>) -> bool {
        let now = time::now_ns();
        let mut moved = false;
        for connection in &mut self.connections {
            let socket = set.get_mut::<tcp::Socket>(connection.handle);
            moved |= connection.advance(socket, self.port, now);
        }
        moved
    }
}

impl Connection {
    /// Moves the connection on as far as it can go now. Returns whether data moved.
    fn advance(&mut self, socket: &mut tcp::Socket<'_>, port: u16, now: u64) -> bool {
        if !socket.is_open() {
            // Closed, reset by the peer, or TIME-WAIT after both closed: take the next client.
            listen(socket, port);
            self.phase = Phase::Listening;
            return false;
        }
        let mut moved = false;
        loop {
            let next = match &mut self.phase {
                Phase::Listening if socket.state() == tcp::State::Listen => return moved,
                Phase::Listening => Phase::Reading {
                    request: Vec::new(),
                    since_ns: now,
                },
                Phase::Reading { request, since_ns } => {
                    moved |= receive(socket, request);
                    let reply = match http::parse_request(request) {
                        Ok(Some(parsed)) => {
                            let reply = route(&parsed);
                            log::debug!(
                                "{} {} -> {}",
                                parsed.method.as_str(),
                                parsed.path,
                                reply.response.status
                            );
                            Some((reply, parsed.method))
                        }
                        Err(error) => {
                            log::debug!("refused a request: {error}");
                            Some((Reply::error(error), Method::Get))
                        }
                        // Cannot happen within the parser's limits; refuse rather than wait.
                        Ok(None) if request.len() >= MAX_REQUEST => Some((
                            Reply::error(HttpError::HeaderFieldsTooLarge("request too large")),
                            Method::Get,
                        )),
                        Ok(None) if peer_done_sending(socket) && request.is_empty() => {
                            // Connected and left without a word.
                            socket.close();
                            None
                        }
                        Ok(None) if peer_done_sending(socket) => Some((
                            Reply::error(HttpError::BadRequest("request cut short")),
                            Method::Get,
                        )),
                        Ok(None) if now.saturating_sub(*since_ns) > REQUEST_TIMEOUT_NS => Some((
                            Reply::text(408, "408 Request Timeout: request incomplete\n"),
                            Method::Get,
                        )),
                        Ok(None) => return moved,
                    };
                    match reply {
                        Some((reply, method)) => start_writing(reply, method, now),
                        None => Phase::Lingering {
                            queued: 0,
                            progress_ns: now,
                            acked_ns: None,
                        },
                    }
                }
                Phase::Writing {
                    out,
                    sent,
                    stream,
                    progress_ns,
                } => {
                    let (sent_some, done) = pump(socket, out, sent, stream);
                    moved |= sent_some;
                    if sent_some {
                        *progress_ns = now;
                    }
                    if done {
                        // FIN goes after the queued data.
                        socket.close();
                        Phase::Lingering {
                            queued: socket.send_queue(),
                            progress_ns: now,
                            acked_ns: None,
                        }
                    } else if now.saturating_sub(*progress_ns) > STALL_TIMEOUT_NS {
                        log::debug!("client stopped reading; connection reset");
                        socket.abort();
                        return true;
                    } else {
                        return moved;
                    }
                }
                Phase::Lingering {
                    queued,
                    progress_ns,
                    acked_ns,
                } => {
                    // Read and drop: a client still sending (an oversized request) must not
                    // meet a full window, nor a reset that could destroy the answer.
                    while let Ok(n) = socket.recv(|data| (data.len(), data.len())) {
                        if n == 0 {
                            break;
                        }
                    }
                    let still_queued = socket.send_queue();
                    if still_queued < *queued {
                        *queued = still_queued;
                        *progress_ns = now;
                    }
                    if still_queued == 0 && acked_ns.is_none() {
                        *acked_ns = Some(now);
                    }
                    let lingered = acked_ns.is_some_and(|t| now.saturating_sub(t) > LINGER_NS);
                    let stalled = now.saturating_sub(*progress_ns) > STALL_TIMEOUT_NS;
                    if lingered || stalled {
                        socket.abort();
                        return true;
                    }
                    return moved;
                }
            };
            self.phase = next;
        }
    }
}

/// The client sent FIN: no more request bytes will come. (Not `!may_recv()`, which is also
/// true before the handshake completes.)
fn peer_done_sending(socket: &tcp::Socket<'_>) -> bool {
    matches!(
        socket.state(),
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    ) && !socket.can_recv()
}

/// Moves received bytes into the request buffer, up to [`MAX_REQUEST`].
fn receive(socket: &mut tcp::Socket<'_>, request: &mut Vec<u8>) -> bool {
    let mut moved = false;
    while socket.can_recv() && request.len() < MAX_REQUEST {
        let room = MAX_REQUEST - request.len();
        let taken = socket.recv(|data| {
            let n = data.len().min(room);
            request.extend_from_slice(&data[..n]);
            (n, n)
        });
        match taken {
            Ok(n) if n > 0 => moved = true,
            _ => break,
        }
    }
    moved
}

/// The head (and a complete body) to send; for HEAD the body and stream are left out.
fn start_writing(reply: Reply, method: Method, now: u64) -> Phase {
    count_response(reply.response.status);
    let mut out = Vec::new();
    let stream = match reply.stream {
        Some(stream) => {
            reply.response.write_streaming_head_to(&mut out);
            (method != Method::Head).then_some(stream)
        }
        None => {
            reply.response.write_for(method, &mut out);
            None
        }
    };
    Phase::Writing {
        out,
        sent: 0,
        stream,
        progress_ns: now,
    }
}

/// Sends as much as the socket takes, refilling from the stream. Returns (anything sent,
/// everything sent).
fn pump(
    socket: &mut tcp::Socket<'_>,
    out: &mut Vec<u8>,
    sent: &mut usize,
    stream: &mut Option<Box<dyn BodySource>>,
) -> (bool, bool) {
    let mut sent_some = false;
    loop {
        if *sent >= out.len() {
            out.clear();
            *sent = 0;
            let more = stream.as_mut().is_some_and(|s| s.fill(out));
            if !more {
                *stream = None;
                return (sent_some, true);
            }
            continue;
        }
        if !socket.can_send() {
            return (sent_some, false);
        }
        match socket.send_slice(&out[*sent..]) {
            Ok(n) if n > 0 => {
                *sent += n;
                sent_some = true;
            }
            _ => return (sent_some, false),
        }
    }
}
