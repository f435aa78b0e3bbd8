//! A QMP client: QEMU's machine protocol over the unix socket that
//! `-qmp unix:PATH,server=on,wait=off` opens.
//!
//! QMP is JSON, one message per line: QEMU greets (`{"QMP": {...}}`), the client sends
//! `qmp_capabilities`, then `{"execute": NAME, "arguments": {...}, "id": N}` commands, each
//! answered by `{"return": ...}` or `{"error": {"class", "desc"}}` carrying the same `id`;
//! asynchronous `{"event": NAME, "data": {...}}` messages arrive in between.
//!
//! Why not the `qapi` crate (0.15, checked 2026-11): its synchronous client has no timeouts.
//! A read timeout set on the socket breaks its framing (`decode_line` clears its buffer, so the
//! part of a line read before the timeout is lost), it panics on end of stream during the
//! greeting, events are only collected while a command's reply is awaited (no way to wait for
//! `DEVICE_DELETED`), and commands are types with a compile-time name generated from QEMU's
//! schema by `qapi-qmp` (a large generated crate). The runner needs every wait bounded and a
//! hung QEMU reported, not waited for; this small client does that with serde_json and a reader
//! thread: the reader parses lines and hands them over a channel, and every wait is a
//! `recv_timeout` on that channel, so a timeout never cuts a line in half.

use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Events kept while nobody waits for them; older ones are dropped beyond this.
const EVENT_QUEUE_LIMIT: usize = 1024;
/// How often `connect` retries while QEMU has not created its socket yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// What went wrong talking QMP.
#[derive(Debug)]
pub enum QmpError {
    /// The socket could not be reached before the deadline (the last error).
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The last connection error.
        source: io::Error,
    },
    /// Writing to the socket failed.
    Io(io::Error),
    /// QEMU answered a command with an error.
    Command {
        /// The command.
        command: String,
        /// QMP error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// Nothing (or not the awaited message) arrived in time.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// QEMU closed the connection (it exited, most likely).
    Closed {
        /// What was awaited.
        what: String,
    },
    /// A message that is not QMP (bad JSON, a greeting without `QMP`).
    Protocol(String),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Connect { path, source } => {
                write!(f, "QMP: cannot connect to {}: {source}", path.display())
            }
            QmpError::Io(e) => write!(f, "QMP: {e}"),
            QmpError::Command {
                command,
                class,
                desc,
            } => write!(f, "QMP {command}: {class}: {desc}"),
            QmpError::Timeout { what, after } => {
                write!(f, "QMP: no {what} within {} ms", after.as_millis())
            }
            QmpError::Closed { what } => write!(f, "QMP: connection closed awaiting {what}"),
            QmpError::Protocol(text) => write!(f, "QMP protocol: {text}"),
        }
    }
}

impl std::error::Error for QmpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QmpError::Connect { source, .. } => Some(source),
            QmpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl QmpError {
    /// A timeout reports the whole wait, not the last part of it.
    fn waited(self, timeout: Duration) -> QmpError {
        match self {
            QmpError::Timeout { what, .. } => QmpError::Timeout {
                what,
                after: timeout,
            },
            other => other,
        }
    }
}

/// Result of a QMP operation.
pub type Result<T> = std::result::Result<T, QmpError>;

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name (`DEVICE_DELETED`).
    pub name: String,
    /// Its `data` object (`Value::Null` when it has none).
    pub data: Value,
}

/// The VM's run state, from `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Whether the VM runs.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `shutdown`, ...).
    pub status: String,
}

enum Incoming {
    Message(Value),
    Bad { line: String, error: String },
    Closed,
}

/// A connected, capabilities-negotiated QMP session. Every call waits at most the timeout
/// given to [`Qmp::connect`] (or the one passed explicitly).
pub struct Qmp {
    writer: UnixStream,
    incoming: Receiver<Incoming>,
    events: VecDeque<QmpEvent>,
    greeting: Value,
    next_id: u64,
    timeout: Duration,
    closed: bool,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path` (retrying while QEMU has not created it yet),
    /// reads the greeting and sends `qmp_capabilities`, all within `timeout`. `timeout` is
    /// also the bound of every later call.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Qmp> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() + CONNECT_RETRY < deadline && retryable(&e) => {
                    thread::sleep(CONNECT_RETRY)
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        let reader = stream.try_clone().map_err(QmpError::Io)?;
        let (sender, incoming) = mpsc::channel();
        thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || read_messages(reader, sender))
            .map_err(QmpError::Io)?;
        let mut qmp = Qmp {
            writer: stream,
            incoming,
            events: VecDeque::new(),
            greeting: Value::Null,
            next_id: 1,
            timeout,
            closed: false,
        };
        let greeting = qmp.receive(deadline, "greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        qmp.greeting = greeting;
        let left = deadline.saturating_duration_since(Instant::now());
        qmp.execute_within("qmp_capabilities", Value::Null, left)?;
        Ok(qmp)
    }

    /// QEMU's greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The bound of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the bound of each later call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with `args` (an object, or `Value::Null` for none) and returns its
    /// `return` value; a QMP error reply is [`QmpError::Command`].
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        self.execute_within(command, args, self.timeout)
    }

    /// [`Qmp::execute`] with its own bound.
    pub fn execute_within(
        &mut self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "execute": command, "id": id });
        if !args.is_null() {
            message["arguments"] = args;
        }
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(QmpError::Io)?;
        let what = format!("reply to {command}");
        loop {
            let message = self
                .receive(deadline, &what)
                .map_err(|e| e.waited(timeout))?;
            // A reply to an earlier command that timed out: not ours. QEMU answers some
            // malformed input without an id; a reply without one is taken as ours.
            match message.get("id") {
                Some(reply_id) if reply_id != &json!(id) => continue,
                _ => {}
            }
            if let Some(result) = message.get("return") {
                return Ok(result.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Protocol(format!(
                "{what}: neither return nor error: {message}"
            )));
        }
    }

    /// Waits for an event named `name` whose data satisfies `matches` (events queued earlier
    /// count; the one returned is removed, others stay queued).
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent> {
        let is_it = |e: &QmpEvent| e.name == name && matches(&e.data);
        if let Some(index) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(index).expect("index is in range"));
        }
        let deadline = Instant::now() + timeout;
        let what = format!("{name} event");
        loop {
            // Replies to timed-out commands are dropped.
            if self
                .receive_one(deadline, &what)
                .map_err(|e| e.waited(timeout))?
                .is_some()
            {
                continue;
            }
            if let Some(index) = self.events.iter().position(is_it) {
                return Ok(self.events.remove(index).expect("index is in range"));
            }
        }
    }

    /// Events received and not yet waited for, oldest first (the queue empties).
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// `device_del id`, then waits for its `DEVICE_DELETED` event (QEMU only frees the id
    /// then; a `device_add` reusing it earlier fails). Both within the timeout.
    pub fn device_del(&mut self, id: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let is_it = |data: &Value| data.get("device").and_then(Value::as_str) == Some(id);
        // A late event from an earlier, timed-out unplug must not satisfy this one.
        self.events
            .retain(|e| !(e.name == "DEVICE_DELETED" && is_it(&e.data)));
        self.execute_within("device_del", json!({ "id": id }), self.timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_event("DEVICE_DELETED", is_it, left)
            .map_err(|e| e.waited(self.timeout))?;
        Ok(())
    }

    /// `device_add driver,key=value,...` (values as strings, as on QEMU's command line).
    pub fn device_add(&mut self, driver: &str, props: &[(&str, &str)]) -> Result<()> {
        let mut args = Map::new();
        args.insert("driver".into(), driver.into());
        for (key, value) in props {
            args.insert((*key).into(), (*value).into());
        }
        self.execute("device_add", Value::Object(args))?;
        Ok(())
    }

    /// `set_link name up|down`: a NIC backend's link state.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<()> {
        self.execute("set_link", json!({ "name": name, "up": up }))?;
        Ok(())
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<VmStatus> {
        let reply = self.execute("query-status", Value::Null)?;
        match (
            reply.get("running").and_then(Value::as_bool),
            reply.get("status").and_then(Value::as_str),
        ) {
            (Some(running), Some(status)) => Ok(VmStatus {
                running,
                status: status.to_string(),
            }),
            _ => Err(QmpError::Protocol(format!("query-status returned {reply}"))),
        }
    }

    /// The next message that is not an event (events are queued), by `deadline`.
    fn receive(&mut self, deadline: Instant, what: &str) -> Result<Value> {
        loop {
            if let Some(message) = self.receive_one(deadline, what)? {
                return Ok(message);
            }
        }
    }

    /// The next message by `deadline`: `Some` for a reply (or greeting), `None` for an event,
    /// which is queued.
    fn receive_one(&mut self, deadline: Instant, what: &str) -> Result<Option<Value>> {
        if self.closed {
            return Err(QmpError::Closed { what: what.into() });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match self.incoming.recv_timeout(left) {
            Ok(Incoming::Message(message)) => message,
            Ok(Incoming::Bad { line, error }) => {
                return Err(QmpError::Protocol(format!("{error} in {line:?}")))
            }
            Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                return Err(QmpError::Closed { what: what.into() });
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(QmpError::Timeout {
                    what: what.into(),
                    after: left,
                })
            }
        };
        let Some(name) = message.get("event").and_then(Value::as_str) else {
            return Ok(Some(message));
        };
        if self.events.len() == EVENT_QUEUE_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(QmpEvent {
            name: name.to_string(),
            data: message.get("data").cloned().unwrap_or(Value::Null),
        });
        Ok(None)
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        // Ends the reader thread's blocking read.
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// The reader thread: one JSON message per line until end of stream.
fn read_messages(stream: UnixStream, sender: mpsc::Sender<Incoming>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let incoming = match serde_json::from_str::<Value>(line) {
            Ok(message) if message.is_object() => Incoming::Message(message),
            Ok(_) => Incoming::Bad {
                line: line.to_string(),
                error: "not a JSON object".into(),
            },
            Err(e) => Incoming::Bad {
                line: line.to_string(),
                error: e.to_string(),
            },
        };
        if sender.send(incoming).is_err() {
            return;
        }
    }
    let _ = sender.send(Incoming::Closed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A folder under the system's temp folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tether-qmp-{}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("qmp.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The server side of one fake QMP connection.
    struct Peer {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl Peer {
        fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).unwrap();
            self.writer.flush().unwrap();
        }

        /// Reads one command; returns it parsed.
        fn command(&mut self) -> Value {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.ends_with('\n'), "command line {line:?}");
            serde_json::from_str(&line).unwrap()
        }

        /// Reads one command, checks its name, answers `return` with its id.
        fn answer(&mut self, name: &str, result: Value) -> Value {
            let command = self.command();
            assert_eq!(command["execute"], name, "{command}");
            let reply = json!({ "return": result, "id": command["id"] });
            self.send(&format!("{reply}\r\n"));
            command
        }
    }

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}"#;

    /// Serves one connection on `socket` with `script`, after greeting and answering
    /// `qmp_capabilities`.
    fn fake_qemu(
        socket: &Path,
        script: impl FnOnce(&mut Peer) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(socket).unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut peer = Peer {
                reader: BufReader::new(stream.try_clone().unwrap()),
                writer: stream,
            };
            peer.send(&format!("{GREETING}\r\n"));
            peer.answer("qmp_capabilities", json!({}));
            script(&mut peer);
        })
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn handshake_and_commands() {
        let dir = TempDir::new();
        let server = fake_qemu(&dir.socket(), |peer| {
            let status = peer.answer(
                "query-status",
                json!({"status": "running", "singlestep": false, "running": true}),
            );
            assert!(status.get("arguments").is_none(), "{status}");
            let add = peer.answer("device_add", json!({}));
            assert_eq!(
                add["arguments"],
                json!({"driver": "usb-net", "bus": "xhci.0", "netdev": "n0", "id": "usbnet0"})
            );
            let link = peer.answer("set_link", json!({}));
            assert_eq!(link["arguments"], json!({"name": "n0", "up": false}));
            let raw = peer.answer("human-monitor-command", json!("ok\r\n"));
            assert_eq!(raw["arguments"]["command-line"], "info usb");
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        assert_eq!(
            qmp.query_status().unwrap(),
            VmStatus {
                running: true,
                status: "running".into()
            }
        );
        qmp.device_add(
            "usb-net",
            &[("bus", "xhci.0"), ("netdev", "n0"), ("id", "usbnet0")],
        )
        .unwrap();
        qmp.set_link("n0", false).unwrap();
        let out = qmp
            .execute("human-monitor-command", json!({"command-line": "info usb"}))
            .unwrap();
        assert_eq!(out, json!("ok\r\n"));
        server.join().unwrap();
    }

    #[test]
    fn error_reply_is_a_command_error() {
        let dir = TempDir::new();
        let server = fake_qemu(&dir.socket(), |peer| {
            let command = peer.command();
            peer.send(&format!(
                "{}\n",
                json!({"error": {"class": "DeviceNotFound", "desc": "Device 'usbnet9' not found"}, "id": command["id"]})
            ));
            peer.answer(
                "query-status",
                json!({"status": "paused", "running": false}),
            );
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        match qmp.device_del("usbnet9") {
            Err(QmpError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(command, "device_del");
                assert_eq!(class, "DeviceNotFound");
                assert_eq!(desc, "Device 'usbnet9' not found");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        // The session goes on.
        assert!(!qmp.query_status().unwrap().running);
        server.join().unwrap();
    }

    #[test]
    fn timeout_then_late_reply_is_skipped() {
        let dir = TempDir::new();
        let (late, go) = mpsc::channel::<()>();
        let server = fake_qemu(&dir.socket(), move |peer| {
            let slow = peer.command();
            go.recv().unwrap();
            // The reply to the timed-out command arrives late, before the next one's.
            peer.send(&format!(
                "{}\n",
                json!({"return": "late", "id": slow["id"]})
            ));
            peer.answer("query-version", json!("fresh"));
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        qmp.set_timeout(Duration::from_millis(200));
        let started = Instant::now();
        match qmp.execute("stop", Value::Null) {
            Err(QmpError::Timeout { what, .. }) => assert_eq!(what, "reply to stop"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < 3 * SECOND);
        late.send(()).unwrap();
        qmp.set_timeout(5 * SECOND);
        assert_eq!(
            qmp.execute("query-version", Value::Null).unwrap(),
            json!("fresh")
        );
        server.join().unwrap();
    }

    #[test]
    fn framing_split_and_joined_lines_and_events() {
        let dir = TempDir::new();
        let server = fake_qemu(&dir.socket(), |peer| {
            let command = peer.command();
            assert_eq!(command["arguments"], json!({"id": "usbnet0"}));
            // An unrelated event and the return in one write; the awaited event split across
            // two writes.
            peer.send(&format!(
                "{}\r\n{}\r\n{{\"event\": \"DEVICE_DEL",
                json!({"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "n0"}, "timestamp": {"seconds": 1, "microseconds": 2}}),
                json!({"return": {}, "id": command["id"]}),
            ));
            thread::sleep(Duration::from_millis(100));
            peer.send(&format!(
                "ETED\", \"data\": {{\"path\": \"/machine/peripheral/usbnet0/x\"}}}}\n{}\n",
                json!({"event": "DEVICE_DELETED", "data": {"device": "usbnet0", "path": "/machine/peripheral/usbnet0"}})
            ));
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        qmp.device_del("usbnet0").unwrap();
        let events = qmp.take_events();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        // The DEVICE_DELETED without a device id stays queued; the awaited one is consumed.
        assert_eq!(names, ["NIC_RX_FILTER_CHANGED", "DEVICE_DELETED"]);
        assert_eq!(events[0].data["name"], "n0");
        assert!(events[1].data.get("device").is_none());
        server.join().unwrap();
    }

    #[test]
    fn device_del_event_before_return_and_timeout_without_event() {
        let dir = TempDir::new();
        let server = fake_qemu(&dir.socket(), |peer| {
            let command = peer.command();
            // QEMU unplugs USB devices at once: the event can precede the return.
            peer.send(&format!(
                "{}\n{}\n",
                json!({"event": "DEVICE_DELETED", "data": {"device": "usbnet0", "path": "/machine/peripheral/usbnet0"}}),
                json!({"return": {}, "id": command["id"]}),
            ));
            // The second unplug is accepted but never completes.
            peer.answer("device_del", json!({}));
            let mut rest = String::new();
            let _ = peer.reader.read_line(&mut rest);
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        qmp.device_del("usbnet0").unwrap();
        qmp.set_timeout(Duration::from_millis(300));
        match qmp.device_del("usbnet0") {
            Err(QmpError::Timeout { what, .. }) => assert_eq!(what, "DEVICE_DELETED event"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn connect_waits_for_the_socket_and_gives_up() {
        let dir = TempDir::new();
        let socket = dir.socket();
        let path = socket.clone();
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            fake_qemu(&path, |peer| {
                peer.answer(
                    "query-status",
                    json!({"status": "running", "running": true}),
                );
            })
            .join()
            .unwrap();
        });
        let mut qmp = Qmp::connect(&socket, 5 * SECOND).unwrap();
        assert!(qmp.query_status().unwrap().running);
        server.join().unwrap();

        let started = Instant::now();
        match Qmp::connect(dir.0.join("absent.sock"), Duration::from_millis(200)) {
            Err(e @ QmpError::Connect { .. }) => assert!(e.to_string().contains("absent.sock")),
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < 3 * SECOND);
    }

    #[test]
    fn closed_and_not_qmp() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"{\"hello\": 1}\n").unwrap();
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(GREETING.as_bytes()).unwrap();
            stream.write_all(b"\n").unwrap();
            // QEMU goes away after reading qmp_capabilities.
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
        });
        match Qmp::connect(dir.socket(), 5 * SECOND) {
            Err(QmpError::Protocol(text)) => assert!(text.contains("greeting"), "{text}"),
            other => panic!("expected a protocol error, got {:?}", other.map(|_| ())),
        }
        match Qmp::connect(dir.socket(), 5 * SECOND) {
            Err(QmpError::Closed { what }) => assert_eq!(what, "reply to qmp_capabilities"),
            other => panic!("expected closed, got {:?}", other.map(|_| ())),
        }
        server.join().unwrap();
    }

    #[test]
    fn bad_json_is_a_protocol_error() {
        let dir = TempDir::new();
        let server = fake_qemu(&dir.socket(), |peer| {
            peer.command();
            peer.send("{\"return\": \n");
        });
        let mut qmp = Qmp::connect(dir.socket(), 5 * SECOND).unwrap();
        match qmp.execute("query-status", Value::Null) {
            Err(QmpError::Protocol(text)) => assert!(text.contains("{\\\"return\\\":"), "{text}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        server.join().unwrap();
    }

    /// Against the real QEMU when it is installed (skipped otherwise): a paused machine with
    /// the hotplug test's devices, unplugged and plugged back three times.
    #[test]
    fn real_qemu_unplug_replug() {
        // Not $TETHER_QEMU: that may be a stand-in script.
        let program = crate::preset::QEMU;
        if std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("{program} not found: skipped");
            return;
        }
        let dir = TempDir::new();
        let socket = dir.socket();
        let mut child = std::process::Command::new(program)
            .args([
                "-accel",
                "tcg",
                "-M",
                "q35",
                "-nodefaults",
                "-display",
                "none",
                "-S",
            ])
            .args(["-device", "qemu-xhci,id=xhci", "-netdev", "user,id=n0"])
            .args(["-device", "usb-net,bus=xhci.0,netdev=n0,id=usbnet0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let result = (|| -> Result<()> {
            let mut qmp = Qmp::connect(&socket, 20 * SECOND)?;
            assert_eq!(qmp.query_status()?.status, "prelaunch");
            for _ in 0..3 {
                qmp.device_del("usbnet0")?;
                qmp.device_add(
                    "usb-net",
                    &[("bus", "xhci.0"), ("netdev", "n0"), ("id", "usbnet0")],
                )?;
            }
            // The id is taken again: adding it twice fails.
            match qmp.device_add(
                "usb-net",
                &[("bus", "xhci.0"), ("netdev", "n0"), ("id", "usbnet0")],
            ) {
                Err(QmpError::Command { class, .. }) => assert_eq!(class, "GenericError"),
                other => panic!("expected a duplicate-id error, got {other:?}"),
            }
            qmp.set_link("n0", false)?;
            qmp.execute("quit", Value::Null)?;
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        result.unwrap();
    }
}
