//! Server side of the iperf3 3.x control protocol, as a pure state machine (no I/O).
//!
//! One [`ServerSession`] per control connection. The caller feeds it the bytes read from the
//! control socket ([`ServerSession::feed`]), end of stream ([`ServerSession::eof`]) and the passage
//! of time ([`ServerSession::poll`]); the session answers with [`Action`]s: bytes to send on the
//! control connection, when to expect data connections, when to start and stop moving data, and
//! when to close. Data-stream accounting is the caller's: it hands over each data connection's
//! cookie ([`ServerSession::accept_stream`]) and reports the bytes each stream moved
//! ([`ServerSession::record_bytes`]).
//!
//! Wire facts (iperf3 3.12, `iperf_api.c`, `iperf_server_api.c`, `iperf_tcp.c`):
//! - every connection (control and data) starts with a 37-byte cookie: 36 characters + NUL;
//! - the server drives the test with one signed state byte per step on the control connection:
//!   `PARAM_EXCHANGE` after the cookie, `CREATE_STREAMS` after the parameters, `TEST_START` and
//!   `TEST_RUNNING` once all data streams are connected, `EXCHANGE_RESULTS` after the client's
//!   `TEST_END`, then the server's results and `DISPLAY_RESULTS`; the client ends with
//!   `IPERF_DONE` (or aborts with `CLIENT_TERMINATE`);
//! - JSON messages (parameters, results) are a 4-byte big-endian length and that many bytes of
//!   JSON, no NUL;
//! - a parameter the server refuses is answered with `SERVER_ERROR`, then the iperf error number
//!   and `errno`, each a 4-byte big-endian integer; the client prints its text for that number;
//! - data connections arrive on the same port; while the server waits for them, every new
//!   connection is a data stream; one with the wrong cookie gets `ACCESS_DENIED` and is closed;
//! - a control connection arriving while a test runs gets `ACCESS_DENIED` ([`BUSY_REPLY`]);
//! - stream ids are 1, 3, 4, 5, ... (an iperf quirk kept for compatibility), see [`stream_id`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use serde_json::{Map, Number, Value};
use smoltcp::time::{Duration, Instant};

/// The port stock iperf3 clients connect to.
pub const DEFAULT_PORT: u16 = 5201;
/// Bytes of a cookie on the wire: 36 characters and a NUL.
pub const COOKIE_LEN: usize = 37;
/// Largest JSON message accepted (the length prefix is checked before anything is buffered).
pub const MAX_MESSAGE_LEN: u32 = 64 * 1024;
/// Deepest JSON nesting accepted; real messages nest 3 deep. Checked before parsing so that a
/// hostile message cannot make the parser recurse deeply on a small kernel stack.
pub const MAX_JSON_DEPTH: usize = 16;
/// Block size a client uses for TCP when it sends no `len` (`DEFAULT_TCP_BLKSIZE`).
pub const DEFAULT_BLOCK_LEN: u32 = 128 * 1024;

/// Control-connection state bytes (`signed char` on the wire; negative values as two's complement).
pub mod state {
    pub const TEST_START: u8 = 1;
    pub const TEST_RUNNING: u8 = 2;
    pub const TEST_END: u8 = 4;
    pub const PARAM_EXCHANGE: u8 = 9;
    pub const CREATE_STREAMS: u8 = 10;
    pub const SERVER_TERMINATE: u8 = 11;
    pub const CLIENT_TERMINATE: u8 = 12;
    pub const EXCHANGE_RESULTS: u8 = 13;
    pub const DISPLAY_RESULTS: u8 = 14;
    pub const IPERF_START: u8 = 15;
    pub const IPERF_DONE: u8 = 16;
    /// -1
    pub const ACCESS_DENIED: u8 = 0xff;
    /// -2
    pub const SERVER_ERROR: u8 = 0xfe;
}

/// iperf3 error numbers (`i_errno`) sent after `SERVER_ERROR`; the client prints its own text.
pub mod ierr {
    /// "test duration too long (maximum = ... seconds)"
    pub const DURATION: u32 = 5;
    /// "number of parallel streams too large (maximum = ...)"
    pub const NUM_STREAMS: u32 = 6;
    /// "block size too large (maximum = ... bytes)"
    pub const BLOCK_SIZE: u32 = 7;
    /// "bogus value for --omit"
    pub const OMIT: u32 = 12;
    /// "not yet implemented"
    pub const UNIMPLEMENTED: u32 = 13;
    /// "unable to receive parameters from client"
    pub const RECV_PARAMS: u32 = 114;
}

/// What to send on a connection that arrives while a test owns the server, then close it.
/// Also the answer to a data connection whose cookie does not match.
pub const BUSY_REPLY: [u8; 1] = [state::ACCESS_DENIED];

/// The id iperf3 gives the stream created `index`-th (0-based): 1, 3, 4, 5, ...
pub fn stream_id(index: usize) -> u32 {
    if index == 0 {
        1
    } else {
        u32::try_from(index)
            .unwrap_or(u32::MAX - 2)
            .saturating_add(2)
    }
}

/// Server-side limits; a client asking for more gets `SERVER_ERROR` and is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `-P`.
    pub max_parallel: u32,
    /// Largest `-l` in bytes.
    pub max_block_len: u32,
    /// Largest `-t` (and `-O`) in seconds.
    pub max_time_secs: u32,
    /// How long the cookie, parameters, data connections, results and `IPERF_DONE` may each take.
    pub step_timeout: Duration,
    /// Slack after `omit + time` before a running test whose client never sends `TEST_END` is
    /// dropped; tests without a time limit (`-n`, `-k`, `-t 0`) get `max_time_secs` instead.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parallel: 16,
            max_block_len: 1024 * 1024,
            max_time_secs: 3600,
            step_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
        }
    }
}

/// The test the client asked for (its parameter JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestParams {
    /// Always true for an accepted test (UDP and SCTP are refused).
    pub tcp: bool,
    /// `-O`: seconds at the start not counted.
    pub omit: u32,
    /// `-t`: seconds; 0 when the test ends by bytes or blocks (or `-t 0`: until the client stops).
    pub time: u32,
    /// `-n`: bytes to transfer, 0 = no byte limit.
    pub num: u64,
    /// `-k`: blocks to transfer, 0 = no block limit.
    pub blockcount: u64,
    /// `-P`: number of data streams.
    pub parallel: u32,
    /// `-R`: the server sends.
    pub reverse: bool,
    /// `-l`: block size for reads/writes.
    pub len: u32,
    /// `-b` in bits per second, 0 = unlimited (only matters when the server sends).
    pub bandwidth: u64,
    /// `--get-server-output`: the results carry `server_output_text`.
    pub get_server_output: bool,
    /// The client's version string, e.g. "3.12".
    pub client_version: Option<String>,
}

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the 37-byte cookie.
    Cookie,
    /// Sent `PARAM_EXCHANGE`, waiting for the parameter JSON.
    Params,
    /// Sent `CREATE_STREAMS`, waiting for the data connections.
    Streams,
    /// Sent `TEST_RUNNING`; data flows until the client's `TEST_END`.
    Running,
    /// Sent `EXCHANGE_RESULTS`, waiting for the client's results JSON.
    Results,
    /// Sent our results and `DISPLAY_RESULTS`, waiting for `IPERF_DONE`.
    Done,
    /// Finished or aborted; ignores everything.
    Closed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Cookie => "waiting for the cookie",
            Phase::Params => "waiting for the parameters",
            Phase::Streams => "waiting for the data connections",
            Phase::Running => "running the test",
            Phase::Results => "waiting for the client's results",
            Phase::Done => "waiting for IPERF_DONE",
            Phase::Closed => "closed",
        })
    }
}

/// Why a session closed.
#[derive(Clone, Debug, PartialEq)]
pub enum CloseReason {
    /// The test ran and the client said `IPERF_DONE` (or closed after the results).
    Completed,
    /// The cookie was not 36 printable characters followed by a NUL.
    BadCookie(String),
    /// A JSON length prefix above [`MAX_MESSAGE_LEN`].
    MessageTooLong(u32),
    /// A message that is not JSON, nests too deep, or is not an object.
    BadJson(String),
    /// Parameters of the wrong type.
    BadParams(String),
    /// Parameters asking for more than [`Limits`] allow.
    LimitExceeded(String),
    /// Something this server does not implement (UDP, SCTP, bidirectional).
    Unsupported(&'static str),
    /// A results message missing fields or naming unknown streams.
    BadResults(String),
    /// A state byte that makes no sense in this phase.
    UnexpectedState { phase: Phase, byte: u8 },
    /// The client closed the control connection early.
    ClientClosed(Phase),
    /// The client sent `CLIENT_TERMINATE` (e.g. it was interrupted).
    ClientTerminated,
    /// The client took too long.
    Timeout(Phase),
}

impl CloseReason {
    /// False only for a test that ran to its end.
    pub fn is_error(&self) -> bool {
        !matches!(self, CloseReason::Completed)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Completed => f.write_str("test completed"),
            CloseReason::BadCookie(s) => write!(f, "bad cookie: {s}"),
            CloseReason::MessageTooLong(n) => {
                write!(f, "JSON length prefix {n} exceeds {MAX_MESSAGE_LEN}")
            }
            CloseReason::BadJson(s) => write!(f, "bad JSON: {s}"),
            CloseReason::BadParams(s) => write!(f, "bad parameters: {s}"),
            CloseReason::LimitExceeded(s) => write!(f, "limit exceeded: {s}"),
            CloseReason::Unsupported(s) => write!(f, "unsupported: {s}"),
            CloseReason::BadResults(s) => write!(f, "bad results: {s}"),
            CloseReason::UnexpectedState { phase, byte } => {
                write!(f, "unexpected state byte {} while {phase}", *byte as i8)
            }
            CloseReason::ClientClosed(p) => write!(f, "client closed the connection while {p}"),
            CloseReason::ClientTerminated => f.write_str("client terminated the test"),
            CloseReason::Timeout(p) => write!(f, "timed out while {p}"),
        }
    }
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write these bytes to the control connection.
    Send(Vec<u8>),
    /// From now on, new connections to the port are data streams: read each one's cookie (see
    /// [`CookieReader`]) and hand it to [`ServerSession::accept_stream`]. `reverse`: the server
    /// will send on them; otherwise it receives.
    ExpectDataStreams { count: u32, reverse: bool },
    /// All streams are connected and `TEST_RUNNING` is sent: start moving data (in reverse mode
    /// send blocks of `params().len`, within [`ServerSession::send_budget`]) and report it with
    /// [`ServerSession::record_bytes`].
    StartTest,
    /// The client ended the test: stop moving data, close the data connections, report the last
    /// bytes before feeding more control bytes (the results are built from them).
    Finish,
    /// Close the control connection and every data connection of this session. The server is
    /// free for the next client.
    Close(CloseReason),
}

/// Collects the 37 cookie bytes at the start of a connection arriving in pieces.
#[derive(Clone, Debug)]
pub struct CookieReader {
    buf: [u8; COOKIE_LEN],
    len: usize,
}

impl Default for CookieReader {
    fn default() -> Self {
        CookieReader {
            buf: [0; COOKIE_LEN],
            len: 0,
        }
    }
}

impl CookieReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes what it still needs from `data`; returns how many bytes it took. Bytes after the
    /// cookie (data on a stream) are the caller's.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = (COOKIE_LEN - self.len).min(data.len());
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// The cookie once all 37 bytes are in.
    pub fn cookie(&self) -> Option<&[u8; COOKIE_LEN]> {
        (self.len == COOKIE_LEN).then_some(&self.buf)
    }
}

/// Checks a cookie: 36 printable ASCII characters and a NUL (stock clients use `[a-z2-7]`).
pub fn check_cookie(cookie: &[u8]) -> Result<(), String> {
    if cookie.len() != COOKIE_LEN {
        return Err(format!("{} bytes, expected {COOKIE_LEN}", cookie.len()));
    }
    if let Some(nul) = cookie[..COOKIE_LEN - 1].iter().position(|&b| b == 0) {
        return Err(format!("{nul} characters before the NUL, expected 36"));
    }
    if cookie[COOKIE_LEN - 1] != 0 {
        return Err("no NUL after 36 characters".to_string());
    }
    if let Some(at) = cookie[..COOKIE_LEN - 1]
        .iter()
        .position(|&b| !(0x21..=0x7e).contains(&b))
    {
        return Err(format!("byte {:#04x} at {at} is not printable", cookie[at]));
    }
    Ok(())
}

/// A data connection's cookie did not match, or no data connection is expected now. Send
/// [`BUSY_REPLY`] on it and close it; the session goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRejected {
    WrongCookie,
    NotExpected,
}

/// A data connection that [`ServerSession::accept_stream`] took.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAccepted {
    /// Index for [`ServerSession::record_bytes`] (0-based, in connection order).
    pub index: usize,
    /// The iperf3 stream id (see [`stream_id`]).
    pub id: u32,
    /// `[Send(TEST_START, TEST_RUNNING), StartTest]` when this was the last stream, else empty.
    pub actions: Vec<Action>,
}

/// One stream of the client's results message.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientStreamResult {
    pub id: u32,
    pub bytes: u64,
    /// -1 when the client has no retransmit counts.
    pub retransmits: i64,
    pub jitter: f64,
    pub errors: i64,
    pub packets: i64,
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
}

/// The client's results message.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientResults {
    pub cpu_util_total: f64,
    pub cpu_util_user: f64,
    pub cpu_util_system: f64,
    pub sender_has_retransmits: i64,
    pub streams: Vec<ClientStreamResult>,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamCount {
    bytes: u64,
    omitted: u64,
}

/// The server side of one iperf3 control connection. See the module documentation.
#[derive(Debug)]
pub struct ServerSession {
    limits: Limits,
    phase: Phase,
    /// When the current phase began (for its timeout).
    since: Instant,
    /// Control bytes not yet consumed (at most one message plus one fed chunk).
    pending: Vec<u8>,
    cookie: [u8; COOKIE_LEN],
    params: Option<TestParams>,
    streams: Vec<StreamCount>,
    start: Option<Instant>,
    end: Option<Instant>,
    cpu_util: [f64; 3],
    client_results: Option<ClientResults>,
    close_reason: Option<CloseReason>,
}

impl ServerSession {
    /// A session for a control connection accepted at `now`.
    pub fn new(now: Instant, limits: Limits) -> Self {
        ServerSession {
            limits,
            phase: Phase::Cookie,
            since: now,
            pending: Vec::new(),
            cookie: [0; COOKIE_LEN],
            params: None,
            streams: Vec::new(),
            start: None,
            end: None,
            cpu_util: [0.0; 3],
            client_results: None,
            close_reason: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// The accepted parameters, once received.
    pub fn params(&self) -> Option<&TestParams> {
        self.params.as_ref()
    }

    /// True while new connections to the port are this test's data streams.
    pub fn accepting_streams(&self) -> bool {
        self.phase == Phase::Streams
    }

    /// The client's results, once received.
    pub fn client_results(&self) -> Option<&ClientResults> {
        self.client_results.as_ref()
    }

    /// Bytes counted per stream after the omit period (what the results report).
    pub fn stream_bytes(&self) -> Vec<u64> {
        self.streams.iter().map(|s| s.bytes).collect()
    }

    /// Sets the CPU utilisation (percent: total, user, system) reported in the results.
    pub fn set_cpu_util(&mut self, total: f64, user: f64, system: f64) {
        self.cpu_util = [total, user, system];
    }

    /// When [`poll`](Self::poll) must next be called, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let step = self.limits.step_timeout.total_micros();
        let micros = match self.phase {
            Phase::Closed => return None,
            Phase::Running => {
                let p = self.params.as_ref()?;
                let secs = if p.time > 0 {
                    p.time
                } else {
                    self.limits.max_time_secs
                };
                let run = (u64::from(p.omit) + u64::from(secs)).saturating_mul(1_000_000);
                let base = self.start.unwrap_or(self.since).total_micros();
                add_micros(base, run.saturating_add(self.limits.grace.total_micros()))
            }
            _ => add_micros(self.since.total_micros(), step),
        };
        Some(Instant::from_micros(micros))
    }

    /// Closes the session if the client has taken too long.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(deadline) = self.next_deadline() {
            if now >= deadline {
                let phase = self.phase;
                self.close(&mut out, CloseReason::Timeout(phase));
            }
        }
        out
    }

    /// The client closed (or reset) the control connection.
    pub fn eof(&mut self, _now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Closed => {}
            // The results were delivered; a client that skips IPERF_DONE lost nothing.
            Phase::Done => self.close(&mut out, CloseReason::Completed),
            phase => self.close(&mut out, CloseReason::ClientClosed(phase)),
        }
        out
    }

    /// Bytes read from the control connection.
    pub fn feed(&mut self, now: Instant, data: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        let mut buf = core::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        let mut pos = 0;
        while self.phase != Phase::Closed {
            match self.step(now, &buf[pos..], &mut out) {
                Some(used) => pos += used,
                None => break,
            }
        }
        if self.phase == Phase::Closed {
            buf.clear();
        } else {
            buf.drain(..pos);
        }
        self.pending = buf;
        out
    }

    /// A data connection sent its 37-byte cookie.
    pub fn accept_stream(
        &mut self,
        now: Instant,
        cookie: &[u8; COOKIE_LEN],
    ) -> Result<StreamAccepted, StreamRejected> {
        if self.phase != Phase::Streams {
            return Err(StreamRejected::NotExpected);
        }
        if cookie != &self.cookie {
            return Err(StreamRejected::WrongCookie);
        }
        let index = self.streams.len();
        self.streams.push(StreamCount::default());
        let mut actions = Vec::new();
        let wanted = self.params.as_ref().map_or(0, |p| p.parallel as usize);
        if self.streams.len() >= wanted {
            push_send(&mut actions, &[state::TEST_START, state::TEST_RUNNING]);
            actions.push(Action::StartTest);
            self.enter(Phase::Running, now);
            self.start = Some(now);
        }
        Ok(StreamAccepted {
            index,
            id: stream_id(index),
            actions,
        })
    }

    /// Stream `index` moved `n` bytes (received, or sent in reverse mode). Bytes inside the omit
    /// period, or outside the running test, are not reported in the results.
    pub fn record_bytes(&mut self, now: Instant, index: usize, n: u64) {
        let counting = self.phase == Phase::Running && now >= self.omit_end();
        if let Some(s) = self.streams.get_mut(index) {
            if counting {
                s.bytes = s.bytes.saturating_add(n);
            } else {
                s.omitted = s.omitted.saturating_add(n);
            }
        }
    }

    /// In reverse mode, how many more bytes the server may send in total (`-n`, `-k`), or `None`
    /// when only time (or the client) ends the test.
    pub fn send_budget(&self) -> Option<u64> {
        let p = self.params.as_ref()?;
        let sent: u64 = self
            .streams
            .iter()
            .map(|s| s.bytes)
            .fold(0, u64::saturating_add);
        let mut budget: Option<u64> = None;
        if p.num > 0 {
            budget = Some(p.num.saturating_sub(sent));
        }
        if p.blockcount > 0 {
            let b = p
                .blockcount
                .saturating_mul(u64::from(p.len))
                .saturating_sub(sent);
            budget = Some(budget.map_or(b, |x| x.min(b)));
        }
        budget
    }

    fn omit_end(&self) -> Instant {
        let omit = self.params.as_ref().map_or(0, |p| p.omit);
        let base = self.start.unwrap_or(self.since).total_micros();
        Instant::from_micros(add_micros(base, u64::from(omit) * 1_000_000))
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.since = now;
    }

    fn close(&mut self, out: &mut Vec<Action>, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.close_reason = Some(reason.clone());
        out.push(Action::Close(reason));
    }

    /// Refuses the parameters the way iperf3 does: SERVER_ERROR, i_errno, errno (0).
    fn refuse(&mut self, out: &mut Vec<Action>, ierrno: u32, reason: CloseReason) {
        let mut msg = vec![state::SERVER_ERROR];
        msg.extend_from_slice(&ierrno.to_be_bytes());
        msg.extend_from_slice(&0u32.to_be_bytes());
        push_send(out, &msg);
        self.close(out, reason);
    }

    /// Consumes one unit (cookie, message or state byte) from `buf`; `None` = need more bytes.
    fn step(&mut self, now: Instant, buf: &[u8], out: &mut Vec<Action>) -> Option<usize> {
        match self.phase {
            Phase::Closed => None,
            Phase::Cookie => {
                let cookie = buf.get(..COOKIE_LEN)?;
                match check_cookie(cookie) {
                    Ok(()) => {
                        self.cookie.copy_from_slice(cookie);
                        push_send(out, &[state::PARAM_EXCHANGE]);
                        self.enter(Phase::Params, now);
                    }
                    Err(e) => self.close(out, CloseReason::BadCookie(e)),
                }
                Some(COOKIE_LEN)
            }
            Phase::Params | Phase::Results => {
                let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
                let len = u32::from_be_bytes(prefix);
                if len > MAX_MESSAGE_LEN {
                    let reason = CloseReason::MessageTooLong(len);
                    if self.phase == Phase::Params {
                        self.refuse(out, ierr::RECV_PARAMS, reason);
                    } else {
                        self.close(out, reason);
                    }
                    return Some(4);
                }
                let body = buf.get(4..4 + len as usize)?;
                if self.phase == Phase::Params {
                    self.on_params(now, body, out);
                } else {
                    self.on_results(now, body, out);
                }
                Some(4 + len as usize)
            }
            Phase::Streams | Phase::Running | Phase::Done => {
                let byte = *buf.first()?;
                self.on_state(now, byte, out);
                Some(1)
            }
        }
    }

    fn on_params(&mut self, now: Instant, body: &[u8], out: &mut Vec<Action>) {
        let value = match parse_json_object(body) {
            Ok(v) => v,
            Err(e) => return self.refuse(out, ierr::RECV_PARAMS, CloseReason::BadJson(e)),
        };
        match parse_params(&value, &self.limits) {
            Ok(p) => {
                push_send(out, &[state::CREATE_STREAMS]);
                out.push(Action::ExpectDataStreams {
                    count: p.parallel,
                    reverse: p.reverse,
                });
                self.params = Some(p);
                self.enter(Phase::Streams, now);
            }
            Err((code, reason)) => self.refuse(out, code, reason),
        }
    }

    fn on_results(&mut self, now: Instant, body: &[u8], out: &mut Vec<Action>) {
        let value = match parse_json_object(body) {
            Ok(v) => v,
            Err(e) => return self.close(out, CloseReason::BadJson(e)),
        };
        let results = match parse_client_results(&value, self.streams.len()) {
            Ok(r) => r,
            Err(e) => return self.close(out, CloseReason::BadResults(e)),
        };
        self.client_results = Some(results);
        let json = self.results_json();
        let mut msg = Vec::with_capacity(json.len() + 5);
        msg.extend_from_slice(&(json.len() as u32).to_be_bytes());
        msg.extend_from_slice(&json);
        msg.push(state::DISPLAY_RESULTS);
        push_send(out, &msg);
        self.enter(Phase::Done, now);
    }

    fn on_state(&mut self, now: Instant, byte: u8, out: &mut Vec<Action>) {
        match (self.phase, byte) {
            (_, state::CLIENT_TERMINATE) => self.close(out, CloseReason::ClientTerminated),
            // iperf3's server takes a TEST_START from the client as a no-op.
            (Phase::Running, state::TEST_START) => {}
            (Phase::Running, state::TEST_END) => {
                self.end = Some(now);
                out.push(Action::Finish);
                push_send(out, &[state::EXCHANGE_RESULTS]);
                self.enter(Phase::Results, now);
            }
            (Phase::Done, state::IPERF_DONE) => self.close(out, CloseReason::Completed),
            (phase, byte) => self.close(out, CloseReason::UnexpectedState { phase, byte }),
        }
    }

    /// Seconds the reported bytes were counted over (omit end to test end).
    fn measured_secs(&self) -> f64 {
        let from = self.omit_end().total_micros();
        let to = self.end.map_or(from, |e| e.total_micros());
        (to.saturating_sub(from).max(0)) as f64 / 1e6
    }

    /// The server's results message (JSON, no length prefix).
    pub fn results_json(&self) -> Vec<u8> {
        let reverse = self.params.as_ref().is_some_and(|p| p.reverse);
        let secs = self.measured_secs();
        let mut j = Map::new();
        j.insert("cpu_util_total".into(), float(self.cpu_util[0]));
        j.insert("cpu_util_user".into(), float(self.cpu_util[1]));
        j.insert("cpu_util_system".into(), float(self.cpu_util[2]));
        // -1: we are the receiver; 0: we send but have no retransmit counts.
        j.insert(
            "sender_has_retransmits".into(),
            Value::from(if reverse { 0 } else { -1 }),
        );
        if self.params.as_ref().is_some_and(|p| p.get_server_output) {
            j.insert(
                "server_output_text".into(),
                Value::from(self.server_output_text()),
            );
        }
        let streams = self
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut o = Map::new();
                o.insert("id".into(), Value::from(stream_id(i)));
                o.insert("bytes".into(), Value::from(s.bytes));
                o.insert("retransmits".into(), Value::from(-1));
                o.insert("jitter".into(), float(0.0));
                o.insert("errors".into(), Value::from(0));
                o.insert("packets".into(), Value::from(0));
                o.insert("start_time".into(), float(0.0));
                o.insert("end_time".into(), float(secs));
                Value::Object(o)
            })
            .collect();
        j.insert("streams".into(), Value::Array(streams));
        serde_json::to_vec(&Value::Object(j)).unwrap_or_default()
    }

    /// The text a `--get-server-output` client prints under "Server output:".
    pub fn server_output_text(&self) -> String {
        let mut s = String::new();
        let Some(p) = self.params.as_ref() else {
            return s;
        };
        let secs = self.measured_secs();
        let role = if p.reverse { "sender" } else { "receiver" };
        let _ = writeln!(
            s,
            "-----------------------------------------------------------"
        );
        let _ = writeln!(
            s,
            "Tether iperf3 server: TCP, {} stream{}, {} (client {})",
            p.parallel,
            if p.parallel == 1 { "" } else { "s" },
            if p.reverse {
                "reverse: server sends"
            } else {
                "server receives"
            },
            p.client_version.as_deref().unwrap_or("unknown"),
        );
        let _ = writeln!(s, "[ ID] Interval           Transfer     Bitrate");
        let mut total = 0u64;
        for (i, st) in self.streams.iter().enumerate() {
            total = total.saturating_add(st.bytes);
            let _ = writeln!(
                s,
                "[{:>3}] {}  {role}",
                stream_id(i),
                summary_line(st.bytes, secs)
            );
        }
        if self.streams.len() > 1 {
            let _ = writeln!(s, "[SUM] {}  {role}", summary_line(total, secs));
        }
        s
    }
}

fn summary_line(bytes: u64, secs: f64) -> String {
    let bits_per_sec = if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    };
    format!(
        "  0.00-{secs:<5.2}  sec  {}  {}",
        scaled(bytes as f64, 1024.0, "Bytes"),
        scaled(bits_per_sec, 1000.0, "bits/sec")
    )
}

/// iperf-style "12.3 MBytes" / "937 Mbits/sec".
fn scaled(mut v: f64, base: f64, unit: &str) -> String {
    let mut prefix = "";
    for p in ["K", "M", "G", "T"] {
        if v < base {
            break;
        }
        v /= base;
        prefix = p;
    }
    let n = if v < 9.995 {
        format!("{v:4.2}")
    } else if v < 99.95 {
        format!("{v:4.1}")
    } else {
        format!("{v:4.0}")
    };
    format!("{n} {prefix}{unit}")
}

fn add_micros(base: i64, add: u64) -> i64 {
    base.saturating_add(i64::try_from(add).unwrap_or(i64::MAX))
}

/// Appends a Send, merging with a preceding Send so the caller gets one write.
fn push_send(out: &mut Vec<Action>, bytes: &[u8]) {
    if let Some(Action::Send(prev)) = out.last_mut() {
        prev.extend_from_slice(bytes);
    } else {
        out.push(Action::Send(bytes.to_vec()));
    }
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::from(0), Value::Number)
}

/// Nesting depth of a JSON text, counting brackets outside strings (no allocation, no recursion).
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn parse_json_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if json_depth(body) > MAX_JSON_DEPTH {
        return Err(format!("nested deeper than {MAX_JSON_DEPTH}"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A non-negative integer (cJSON prints integers; integral floats are accepted too).
fn as_uint(v: &Value) -> Option<u64> {
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    let f = v.as_f64()?;
    // (No f64::fract in core: integral means the cast round-trips.)
    ((0.0..18_446_744_073_709_551_616.0).contains(&f) && (f as u64) as f64 == f).then_some(f as u64)
}

/// A signed integer. iperf3 3.12's cJSON prints negative integers as unsigned 64-bit
/// (`-1` arrives as `18446744073709551615`), so values above `i64::MAX` wrap.
fn as_wrapping_int(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if let Some(u) = v.as_u64() {
        return Some(u as i64);
    }
    let f = v.as_f64()?;
    ((-9.2e18..=9.2e18).contains(&f) && (f as i64) as f64 == f).then_some(f as i64)
}

type ParamError = (u32, CloseReason);

fn parse_params(j: &Map<String, Value>, limits: &Limits) -> Result<TestParams, ParamError> {
    let bad = |key: &str, what: &str| {
        (
            ierr::RECV_PARAMS,
            CloseReason::BadParams(format!("\"{key}\" must be {what}")),
        )
    };
    let flag = |key: &str| -> Result<bool, ParamError> {
        match j.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(key, "true or false")),
        }
    };
    let uint = |key: &str, default: u64| -> Result<u64, ParamError> {
        match j.get(key) {
            None => Ok(default),
            Some(v) => as_uint(v).ok_or_else(|| bad(key, "a non-negative integer")),
        }
    };
    let small = |key: &str, default: u64| -> Result<u32, ParamError> {
        let v = uint(key, default)?;
        u32::try_from(v).map_err(|_| bad(key, "below 2^32"))
    };
    let tcp = flag("tcp")?;
    let udp = flag("udp")?;
    let sctp = flag("sctp")?;
    let reverse = flag("reverse")?;
    let bidirectional = flag("bidirectional")?;
    flag("nodelay")?;
    let omit = small("omit", 0)?;
    let time = small("time", 0)?;
    let num = uint("num", 0)?;
    let blockcount = uint("blockcount", 0)?;
    let parallel = small("parallel", 1)?;
    let len = small("len", u64::from(DEFAULT_BLOCK_LEN))?;
    let bandwidth = uint("bandwidth", 0)?;
    let get_server_output = match j.get("get_server_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => as_uint(v).ok_or_else(|| bad("get_server_output", "a number"))? != 0,
    };
    let client_version = match j.get("client_version") {
        None => None,
        Some(Value::String(s)) => Some(s.chars().take(64).collect()),
        Some(_) => return Err(bad("client_version", "a string")),
    };
    if udp {
        return Err((ierr::UNIMPLEMENTED, CloseReason::Unsupported("UDP tests")));
    }
    if sctp {
        return Err((ierr::UNIMPLEMENTED, CloseReason::Unsupported("SCTP tests")));
    }
    if bidirectional {
        return Err((
            ierr::UNIMPLEMENTED,
            CloseReason::Unsupported("bidirectional tests"),
        ));
    }
    let limit = |code, what: &str, v: u64, lo: u64, hi: u64| {
        (
            code,
            CloseReason::LimitExceeded(format!("{what} {v} outside {lo}..={hi}")),
        )
    };
    if parallel == 0 || parallel > limits.max_parallel {
        let hi = u64::from(limits.max_parallel);
        return Err(limit(ierr::NUM_STREAMS, "parallel", parallel.into(), 1, hi));
    }
    if len == 0 || len > limits.max_block_len {
        let hi = u64::from(limits.max_block_len);
        return Err(limit(ierr::BLOCK_SIZE, "len", len.into(), 1, hi));
    }
    if time > limits.max_time_secs {
        let hi = u64::from(limits.max_time_secs);
        return Err(limit(ierr::DURATION, "time", time.into(), 0, hi));
    }
    if omit > limits.max_time_secs {
        let hi = u64::from(limits.max_time_secs);
        return Err(limit(ierr::OMIT, "omit", omit.into(), 0, hi));
    }
    Ok(TestParams {
        tcp: tcp || !(udp || sctp),
        omit,
        time,
        num,
        blockcount,
        parallel,
        reverse,
        len,
        bandwidth,
        get_server_output,
        client_version,
    })
}

fn parse_client_results(j: &Map<String, Value>, nstreams: usize) -> Result<ClientResults, String> {
    let num = |o: &Map<String, Value>, key: &str| -> Result<f64, String> {
        o.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("\"{key}\" missing or not a number"))
    };
    let int = |o: &Map<String, Value>, key: &str| -> Result<i64, String> {
        o.get(key)
            .and_then(as_wrapping_int)
            .ok_or_else(|| format!("\"{key}\" missing or not an integer"))
    };
    let cpu_util_total = num(j, "cpu_util_total")?;
    let cpu_util_user = num(j, "cpu_util_user")?;
    let cpu_util_system = num(j, "cpu_util_system")?;
    let sender_has_retransmits = int(j, "sender_has_retransmits")?;
    let Some(Value::Array(list)) = j.get("streams") else {
        return Err("\"streams\" missing or not an array".to_string());
    };
    if list.len() > nstreams {
        return Err(format!(
            "{} streams reported, {nstreams} connected",
            list.len()
        ));
    }
    let mut streams = Vec::with_capacity(list.len());
    for s in list {
        let Value::Object(o) = s else {
            return Err("a stream is not an object".to_string());
        };
        let id = int(o, "id")?;
        if !(0..nstreams).any(|i| i64::from(stream_id(i)) == id) {
            return Err(format!("unknown stream id {id}"));
        }
        let bytes = o
            .get("bytes")
            .and_then(as_uint)
            .ok_or_else(|| "\"bytes\" missing or not a non-negative integer".to_string())?;
        streams.push(ClientStreamResult {
            id: id as u32,
            bytes,
            retransmits: int(o, "retransmits")?,
            jitter: num(o, "jitter")?,
            errors: int(o, "errors")?,
            packets: int(o, "packets")?,
            start_time: o.get("start_time").and_then(Value::as_f64),
            end_time: o.get("end_time").and_then(Value::as_f64),
        });
    }
    Ok(ClientResults {
        cpu_util_total,
        cpu_util_user,
        cpu_util_system,
        sender_has_retransmits,
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: &[u8; COOKIE_LEN] = b"abcdefghijklmnopqrstuvwxyz234567abcd\0";

    fn t(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    /// What JSON_write puts on the wire.
    fn framed(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    fn sends(actions: &[Action]) -> Vec<u8> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn closed(actions: &[Action]) -> Option<&CloseReason> {
        actions.iter().find_map(|a| match a {
            Action::Close(r) => Some(r),
            _ => None,
        })
    }

    /// iperf3 3.12's send_parameters, key order and all, for the given options.
    fn client_params(time: u32, num: u64, parallel: u32, reverse: bool, gso: bool) -> String {
        let mut s = format!(
            "{{\"tcp\":true,\"omit\":0,\"time\":{time},\"num\":{num},\"blockcount\":0,\"parallel\":{parallel}"
        );
        if reverse {
            s.push_str(",\"reverse\":true");
        }
        s.push_str(",\"len\":131072,\"pacing_timer\":1000");
        if gso {
            s.push_str(",\"get_server_output\":1");
        }
        s.push_str(",\"client_version\":\"3.12\"}");
        s
    }

    /// iperf3 3.12's send_results from the client. As receiver (-R) its cJSON prints -1 as
    /// 18446744073709551615 (PRIu64), which the server must take.
    fn client_results(ids: &[u32], bytes: u64, reverse: bool) -> String {
        let minus_one = "18446744073709551615";
        let shr = if reverse { minus_one } else { "1" };
        let retr = if reverse { minus_one } else { "0" };
        let streams: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    "{{\"id\":{id},\"bytes\":{bytes},\"retransmits\":{retr},\"jitter\":0,\"errors\":0,\"packets\":0,\"start_time\":0,\"end_time\":2.000118}}"
                )
            })
            .collect();
        format!(
            "{{\"cpu_util_total\":1.2345678901234,\"cpu_util_user\":0.1,\"cpu_util_system\":1.1345678901234,\"sender_has_retransmits\":{shr},\"streams\":[{}]}}",
            streams.join(",")
        )
    }

    struct Run {
        session: ServerSession,
        wire: Vec<u8>,
    }

    /// Replays a stock client's control exchange; returns the server's bytes.
    fn replay(time: u32, num: u64, parallel: u32, reverse: bool, gso: bool) -> Run {
        let mut s = ServerSession::new(t(0), Limits::default());
        let mut wire = Vec::new();

        let a = s.feed(t(1), COOKIE);
        assert_eq!(a, vec![Action::Send(vec![state::PARAM_EXCHANGE])]);
        wire.extend(sends(&a));

        let a = s.feed(
            t(2),
            &framed(&client_params(time, num, parallel, reverse, gso)),
        );
        assert_eq!(
            a,
            vec![
                Action::Send(vec![state::CREATE_STREAMS]),
                Action::ExpectDataStreams {
                    count: parallel,
                    reverse
                }
            ]
        );
        wire.extend(sends(&a));
        let p = s.params().unwrap().clone();
        assert_eq!(
            (p.time, p.num, p.parallel, p.reverse),
            (time, num, parallel, reverse)
        );
        assert_eq!((p.len, p.get_server_output, p.tcp), (131072, gso, true));
        assert_eq!(p.client_version.as_deref(), Some("3.12"));
        assert!(s.accepting_streams());

        for i in 0..parallel as usize {
            let acc = s.accept_stream(t(3), COOKIE).unwrap();
            assert_eq!((acc.index, acc.id), (i, stream_id(i)));
            if i + 1 < parallel as usize {
                assert!(acc.actions.is_empty());
            } else {
                assert_eq!(
                    acc.actions,
                    vec![
                        Action::Send(vec![state::TEST_START, state::TEST_RUNNING]),
                        Action::StartTest
                    ]
                );
                wire.extend(sends(&acc.actions));
            }
        }
        assert_eq!(s.phase(), Phase::Running);
        for i in 0..parallel as usize {
            s.record_bytes(t(500), i, 1_000_000);
            s.record_bytes(t(1500), i, 1_500_000);
        }
        let a = s.feed(t(2003), &[state::TEST_END]);
        assert_eq!(
            a,
            vec![Action::Finish, Action::Send(vec![state::EXCHANGE_RESULTS])]
        );
        wire.extend(sends(&a));

        let ids: Vec<u32> = (0..parallel as usize).map(stream_id).collect();
        let a = s.feed(t(2004), &framed(&client_results(&ids, 2_500_000, reverse)));
        assert_eq!(a.len(), 1);
        wire.extend(sends(&a));
        assert_eq!(s.phase(), Phase::Done);
        let cr = s.client_results().unwrap();
        assert_eq!(cr.streams.len(), parallel as usize);
        assert_eq!(cr.sender_has_retransmits, if reverse { -1 } else { 1 });

        let a = s.feed(t(2005), &[state::IPERF_DONE]);
        assert_eq!(a, vec![Action::Close(CloseReason::Completed)]);
        assert!(s.is_closed());
        Run { session: s, wire }
    }

    /// Splits the server's bytes: the fixed state bytes, then the results message.
    fn check_wire(wire: &[u8]) -> Value {
        assert_eq!(
            &wire[..5],
            &[
                state::PARAM_EXCHANGE,
                state::CREATE_STREAMS,
                state::TEST_START,
                state::TEST_RUNNING,
                state::EXCHANGE_RESULTS
            ]
        );
        let len = u32::from_be_bytes(wire[5..9].try_into().unwrap()) as usize;
        assert_eq!(
            wire.len(),
            9 + len + 1,
            "length prefix covers exactly the JSON"
        );
        assert_eq!(wire[9 + len], state::DISPLAY_RESULTS);
        let v: Value = serde_json::from_slice(&wire[9..9 + len]).unwrap();
        // What the client's get_results requires.
        for k in [
            "cpu_util_total",
            "cpu_util_user",
            "cpu_util_system",
            "sender_has_retransmits",
        ] {
            assert!(v[k].is_number(), "{k}");
        }
        for st in v["streams"].as_array().unwrap() {
            for k in ["id", "bytes", "retransmits", "jitter", "errors", "packets"] {
                assert!(st[k].is_number(), "{k}");
            }
        }
        v
    }

    #[test]
    fn stock_t2() {
        let run = replay(2, 0, 1, false, false);
        let v = check_wire(&run.wire);
        let json = core::str::from_utf8(&run.wire[9..run.wire.len() - 1]).unwrap();
        assert_eq!(
            json,
            "{\"cpu_util_system\":0.0,\"cpu_util_total\":0.0,\"cpu_util_user\":0.0,\
             \"sender_has_retransmits\":-1,\"streams\":[{\"bytes\":2500000,\"end_time\":2.0,\
             \"errors\":0,\"id\":1,\"jitter\":0.0,\"packets\":0,\"retransmits\":-1,\
             \"start_time\":0.0}]}"
        );
        assert!(v.get("server_output_text").is_none());
        // omit 0: both records count; end_time runs from TEST_RUNNING (3 ms) to TEST_END.
        assert_eq!(run.session.stream_bytes(), vec![2_500_000]);
    }

    #[test]
    fn stock_reverse() {
        let run = replay(2, 0, 1, true, false);
        let v = check_wire(&run.wire);
        assert_eq!(v["sender_has_retransmits"], 0);
        assert_eq!(v["streams"][0]["retransmits"], -1);
    }

    #[test]
    fn stock_parallel_4_ids() {
        let run = replay(2, 0, 4, false, false);
        let v = check_wire(&run.wire);
        let ids: Vec<u64> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![1, 3, 4, 5]);
        assert_eq!(run.session.stream_bytes(), vec![2_500_000; 4]);
    }

    #[test]
    fn stock_bytes_1m() {
        let run = replay(0, 1 << 20, 1, false, false);
        check_wire(&run.wire);
        let p = run.session.params().unwrap();
        assert_eq!((p.time, p.num), (0, 1 << 20));
    }

    #[test]
    fn send_budget_for_reverse_bytes() {
        let mut s = ServerSession::new(t(0), Limits::default());
        s.feed(t(0), COOKIE);
        s.feed(t(0), &framed(&client_params(0, 1 << 20, 2, true, false)));
        assert_eq!(s.send_budget(), Some(1 << 20));
        s.accept_stream(t(0), COOKIE).unwrap();
        s.accept_stream(t(0), COOKIE).unwrap();
        s.record_bytes(t(1), 0, 600_000);
        s.record_bytes(t(1), 1, 600_000);
        assert_eq!(s.send_budget(), Some(0));
    }

    #[test]
    fn stock_get_server_output() {
        let run = replay(2, 0, 4, false, true);
        let v = check_wire(&run.wire);
        let text = v["server_output_text"].as_str().unwrap();
        assert!(text.contains("[  1]"), "{text}");
        assert!(text.contains("[SUM]"), "{text}");
        assert!(text.contains("receiver"), "{text}");
        assert!(text.contains("client 3.12"), "{text}");
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let mut s = ServerSession::new(t(0), Limits::default());
        let mut msg = COOKIE.to_vec();
        msg.extend(framed(&client_params(2, 0, 1, false, false)));
        let mut out = Vec::new();
        for b in &msg {
            out.extend(sends(&s.feed(t(1), core::slice::from_ref(b))));
        }
        assert_eq!(out, vec![state::PARAM_EXCHANGE, state::CREATE_STREAMS]);
    }

    #[test]
    fn omit_period_not_counted() {
        let mut s = ServerSession::new(t(0), Limits::default());
        s.feed(t(0), COOKIE);
        s.feed(
            t(0),
            &framed("{\"tcp\":true,\"omit\":1,\"time\":2,\"parallel\":1}"),
        );
        s.accept_stream(t(0), COOKIE).unwrap();
        s.record_bytes(t(999), 0, 5);
        s.record_bytes(t(1000), 0, 7);
        assert_eq!(s.stream_bytes(), vec![7]);
    }

    #[test]
    fn wrong_data_cookie_rejected_session_goes_on() {
        let mut s = ServerSession::new(t(0), Limits::default());
        assert_eq!(
            s.accept_stream(t(0), COOKIE),
            Err(StreamRejected::NotExpected)
        );
        s.feed(t(0), COOKIE);
        s.feed(t(0), &framed(&client_params(2, 0, 1, false, false)));
        let mut other = *COOKIE;
        other[0] = b'z';
        assert_eq!(
            s.accept_stream(t(0), &other),
            Err(StreamRejected::WrongCookie)
        );
        assert!(s.accept_stream(t(0), COOKIE).is_ok());
        assert_eq!(
            s.accept_stream(t(0), COOKIE),
            Err(StreamRejected::NotExpected)
        );
    }

    #[test]
    fn cookie_reader_splits() {
        let mut r = CookieReader::new();
        assert_eq!(r.push(&COOKIE[..10]), 10);
        assert!(r.cookie().is_none());
        let mut rest = COOKIE[10..].to_vec();
        rest.extend_from_slice(b"payload");
        assert_eq!(r.push(&rest), 27);
        assert_eq!(r.cookie(), Some(COOKIE));
        assert_eq!(r.push(b"more"), 0);
    }

    fn session_after_cookie() -> ServerSession {
        let mut s = ServerSession::new(t(0), Limits::default());
        s.feed(t(0), COOKIE);
        s
    }

    fn server_error(code: u32) -> Vec<u8> {
        let mut v = vec![state::SERVER_ERROR];
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        v
    }

    #[test]
    fn bad_cookies() {
        let mut short = *COOKIE;
        short[20] = 0;
        let mut no_nul = *COOKIE;
        no_nul[36] = b'x';
        let mut ctrl = *COOKIE;
        ctrl[3] = b'\n';
        for c in [short, no_nul, ctrl] {
            let mut s = ServerSession::new(t(0), Limits::default());
            let a = s.feed(t(0), &c);
            assert!(
                matches!(closed(&a), Some(CloseReason::BadCookie(_))),
                "{a:?}"
            );
            assert!(sends(&a).is_empty());
            assert!(
                s.feed(t(0), COOKIE).is_empty(),
                "closed sessions stay closed"
            );
        }
    }

    #[test]
    fn early_close_everywhere() {
        let mut s = ServerSession::new(t(0), Limits::default());
        s.feed(t(0), &COOKIE[..5]);
        assert_eq!(
            s.eof(t(0)),
            vec![Action::Close(CloseReason::ClientClosed(Phase::Cookie))]
        );
        let mut s = session_after_cookie();
        s.feed(t(0), &framed("{\"tcp\":true}")[..7]);
        assert_eq!(
            s.eof(t(0)),
            vec![Action::Close(CloseReason::ClientClosed(Phase::Params))]
        );
        assert!(s.eof(t(0)).is_empty());
    }

    #[test]
    fn hostile_params() {
        let cases: &[(&[u8], u32)] = &[
            (&framed("{\"tcp\":true,\"parallel\":"), ierr::RECV_PARAMS), // truncated JSON
            (&framed("[1,2,3]"), ierr::RECV_PARAMS),
            (&framed(""), ierr::RECV_PARAMS),
            (&framed("{\"parallel\":\"4\"}"), ierr::RECV_PARAMS),
            (&framed("{\"time\":-1}"), ierr::RECV_PARAMS),
            (&framed("{\"time\":2.5}"), ierr::RECV_PARAMS),
            (&framed("{\"reverse\":1}"), ierr::RECV_PARAMS),
            (&framed("{\"client_version\":3.12}"), ierr::RECV_PARAMS),
            (&framed("{\"len\":1e300}"), ierr::RECV_PARAMS),
            (&framed("{\"parallel\":17}"), ierr::NUM_STREAMS),
            (&framed("{\"parallel\":0}"), ierr::NUM_STREAMS),
            (&framed("{\"len\":1048577}"), ierr::BLOCK_SIZE),
            (&framed("{\"len\":0}"), ierr::BLOCK_SIZE),
            (&framed("{\"time\":3601}"), ierr::DURATION),
            (&framed("{\"omit\":99999}"), ierr::OMIT),
            (&framed("{\"udp\":true}"), ierr::UNIMPLEMENTED),
            (&framed("{\"bidirectional\":true}"), ierr::UNIMPLEMENTED),
            (&[0xff, 0xff, 0xff, 0xff], ierr::RECV_PARAMS), // 4 GiB length prefix
            (&[0x00, 0x01, 0x00, 0x01], ierr::RECV_PARAMS), // 64 KiB + 1
        ];
        for (bytes, code) in cases {
            let mut s = session_after_cookie();
            let a = s.feed(t(0), bytes);
            assert_eq!(sends(&a), server_error(*code), "{:?}", closed(&a));
            assert!(closed(&a).is_some_and(CloseReason::is_error));
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let mut s = session_after_cookie();
        let a = s.feed(t(0), &framed(&deep));
        assert!(matches!(closed(&a), Some(CloseReason::BadJson(_))));
        // Unknown keys are ignored; a 64 KiB message is fine.
        let pad = "x".repeat(60_000);
        let mut s = session_after_cookie();
        let a = s.feed(
            t(0),
            &framed(&format!("{{\"title\":\"{pad}\",\"zzz\":[{{}}]}}")),
        );
        assert_eq!(sends(&a), vec![state::CREATE_STREAMS]);
    }

    fn running(parallel: u32) -> ServerSession {
        let mut s = session_after_cookie();
        s.feed(t(0), &framed(&client_params(2, 0, parallel, false, false)));
        for _ in 0..parallel {
            s.accept_stream(t(0), COOKIE).unwrap();
        }
        s
    }

    #[test]
    fn unexpected_states() {
        for b in [0u8, 3, 9, 13, 16, 0x7f, 0x80, 0xff] {
            let mut s = running(1);
            let a = s.feed(t(0), &[b]);
            assert_eq!(
                a,
                vec![Action::Close(CloseReason::UnexpectedState {
                    phase: Phase::Running,
                    byte: b
                })]
            );
        }
        let mut s = running(1);
        assert_eq!(s.feed(t(0), &[state::TEST_START]), vec![]);
        assert_eq!(
            s.feed(t(0), &[state::CLIENT_TERMINATE]),
            vec![Action::Close(CloseReason::ClientTerminated)]
        );
        // A state byte while data streams are awaited.
        let mut s = session_after_cookie();
        s.feed(t(0), &framed(&client_params(2, 0, 2, false, false)));
        let a = s.feed(t(0), &[state::TEST_END]);
        assert!(matches!(
            closed(&a),
            Some(CloseReason::UnexpectedState { .. })
        ));
    }

    #[test]
    fn hostile_results() {
        let cases = [
            "{}".to_string(),
            "{\"cpu_util_total\":1,\"cpu_util_user\":1,\"cpu_util_system\":1,\"sender_has_retransmits\":1}"
                .to_string(),
            "{\"cpu_util_total\":\"1\",\"cpu_util_user\":1,\"cpu_util_system\":1,\"sender_has_retransmits\":1,\"streams\":[]}"
                .to_string(),
            client_results(&[2], 5, false),
            client_results(&[1, 1], 5, false),
            client_results(&[1], 5, false).replace("\"bytes\":5", "\"bytes\":-5"),
            client_results(&[1], 5, false).replace("\"streams\":[", "\"streams\":[7,"),
            client_results(&[1], 5, false).replace("\"jitter\":0,", ""),
            "not json".to_string(),
        ];
        for c in &cases {
            let mut s = running(1);
            s.feed(t(1), &[state::TEST_END]);
            let a = s.feed(t(1), &framed(c));
            assert!(closed(&a).is_some_and(CloseReason::is_error), "{c}: {a:?}");
            assert!(sends(&a).is_empty());
        }
        let mut s = running(1);
        s.feed(t(1), &[state::TEST_END]);
        let a = s.feed(t(1), &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            a,
            vec![Action::Close(CloseReason::MessageTooLong(u32::MAX))]
        );
    }

    #[test]
    fn timeouts() {
        let mut s = ServerSession::new(t(0), Limits::default());
        assert_eq!(s.next_deadline(), Some(t(10_000)));
        assert!(s.poll(t(9_999)).is_empty());
        assert_eq!(
            s.poll(t(10_000)),
            vec![Action::Close(CloseReason::Timeout(Phase::Cookie))]
        );
        let mut s = running(1);
        // time 2 s + grace 10 s from the start (t = 0).
        assert_eq!(s.next_deadline(), Some(t(12_000)));
        assert!(matches!(
            closed(&s.poll(t(12_000))),
            Some(CloseReason::Timeout(Phase::Running))
        ));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn eof_after_results_is_completed() {
        let mut s = running(1);
        s.feed(t(1), &[state::TEST_END]);
        s.feed(t(1), &framed(&client_results(&[1], 5, false)));
        assert_eq!(s.eof(t(2)), vec![Action::Close(CloseReason::Completed)]);
    }

    #[test]
    fn messages_in_one_chunk() {
        // A whole (pipelined) exchange in one read still yields the right sequence.
        let mut s = ServerSession::new(t(0), Limits::default());
        let mut all = COOKIE.to_vec();
        all.extend(framed(&client_params(2, 0, 1, false, false)));
        all.push(state::TEST_END);
        let a = s.feed(t(0), &all);
        assert_eq!(
            sends(&a),
            vec![state::PARAM_EXCHANGE, state::CREATE_STREAMS]
        );
        assert!(matches!(
            closed(&a),
            Some(CloseReason::UnexpectedState { .. })
        ));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn fuzz() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut good = COOKIE.to_vec();
        good.extend(framed(&client_params(2, 0, 2, true, true)));
        good.push(state::TEST_END);
        good.extend(framed(&client_results(&[1, 3], 99, true)));
        good.push(state::IPERF_DONE);
        for round in 0..3000 {
            let mut input = good.clone();
            match round % 3 {
                0 => {
                    for _ in 0..rng.below(4) + 1 {
                        let i = rng.below(input.len() as u64) as usize;
                        input[i] = rng.next() as u8;
                    }
                }
                1 => input.truncate(rng.below(input.len() as u64) as usize),
                _ => input = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            }
            let mut s = ServerSession::new(t(0), Limits::default());
            let mut pos = 0;
            let mut now = 0;
            while pos < input.len() {
                let n = (rng.below(64) as usize + 1).min(input.len() - pos);
                now += rng.below(50) as i64;
                let a = s.feed(t(now), &input[pos..pos + n]);
                pos += n;
                if s.accepting_streams() {
                    let _ = s.accept_stream(t(now), COOKIE);
                }
                s.record_bytes(t(now), rng.below(4) as usize, rng.next());
                let _ = s.send_budget();
                if closed(&a).is_some() {
                    assert!(s.is_closed());
                    assert!(s.feed(t(now), &input).is_empty());
                }
            }
            let _ = s.poll(t(now + 1_000_000_000));
            let _ = s.eof(t(now));
            assert!(s.is_closed());
        }
    }
}
