//! The host-driven iperf3 tests (`net::iperf3_*`): one boot with usb-net and user networking
//! forwarding a loopback port to the guest's iperf3 server (5201), then, in order, malformed
//! control exchanges that must each cost the client only its own connection, and runs of
//! Debian's stock `iperf3` client (`-J`) whose JSON is checked against the kernel's own count
//! of every test (its `iperf3: test N done: ...` line).
//!
//! What the figures mean: the client's JSON holds its own count (bytes it wrote, or read while
//! the test ran) and the server's (the results the server sent back: bytes it moved between
//! TEST_RUNNING and the client's TEST_END). The kernel's line adds `received=`/`sent=`: every
//! payload byte its data connections moved, including what was still in flight when the client
//! said TEST_END. So, client sending: `received=` is exactly the client's byte count; server
//! sending: the client cannot have read more than `sent=`.

use serde_json::Value;
use std::time::Duration;

/// Name of the boot (`--filter iperf3` selects it).
pub const BOOT_NAME: &str = "net_iperf3";
/// The guest port of the iperf3 service.
pub const GUEST_PORT: u16 = 5201;
/// What the interface-up line lists when the iperf3 service runs.
pub const SERVICE_LISTED: &str = "iperf3 5201";
/// How long one client run may take before it is killed (a 3 s test takes about 4 s).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the kernel gets to print a test's line after its client exits: the data
/// connections may take up to 30 s (the kernel's drain limit) to deliver what the client's
/// socket buffers still held.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(40);
/// Timeout of each socket operation of the malformed exchanges.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// When, after the forward run's client starts, a second client tries its luck (it must get
/// ACCESS_DENIED: the test owns the server).
pub const BUSY_PROBE_AFTER: Duration = Duration::from_millis(1500);

/// QEMU arguments: usb-net on qemu-xhci, user networking forwarding `127.0.0.1:host_port` to
/// the guest's 5201.
pub fn machine_args(host_port: u16) -> Vec<String> {
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}"),
        "-device".into(),
        "usb-net,bus=xhci.0,netdev=n0".into(),
    ]
}

/// Name of the boot of the iperf3 runs over virtio-net (`--filter iperf3` selects it too).
pub const VIRTIO_BOOT_NAME: &str = "net_iperf3_virtio";

/// QEMU arguments: virtio-net-pci (transitional, QEMU's default ID), user networking
/// forwarding `127.0.0.1:host_port` to the guest's 5201.
pub fn virtio_machine_args(host_port: u16) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}"),
        "-device".into(),
        "virtio-net-pci,netdev=n0,romfile=".into(),
    ]
}

/// The client runs over virtio-net: both directions.
pub const VIRTIO_RUNS: [ClientRun; 2] = [
    ClientRun::one_stream("iperf3_virtio_forward", &["-t", "3"], false),
    ClientRun::one_stream("iperf3_virtio_reverse", &["-t", "3", "-R"], true),
];

/// One run of the stock client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRun {
    /// Test name (`net::iperf3_NAME`).
    pub name: &'static str,
    /// Client options besides `-c HOST -p PORT -J`.
    pub args: &'static [&'static str],
    /// Data streams (`-P`).
    pub streams: usize,
    /// `-R`: the server sends.
    pub reverse: bool,
    /// `-n`: bytes the test moves in all, exactly (the server sends no more than asked).
    pub bytes: Option<u64>,
    /// `--get-server-output`: the server's text report must come back.
    pub server_output: bool,
    /// While this run's test is going, a second client must be refused.
    pub busy_probe: bool,
}

impl ClientRun {
    /// One stream for as long as `args` say, nothing else checked.
    pub const fn one_stream(
        name: &'static str,
        args: &'static [&'static str],
        reverse: bool,
    ) -> ClientRun {
        ClientRun {
            name,
            args,
            streams: 1,
            reverse,
            bytes: None,
            server_output: false,
            busy_probe: false,
        }
    }
}

/// The client runs, in order, after the malformed exchanges.
pub const CLIENT_RUNS: [ClientRun; 5] = [
    ClientRun {
        name: "iperf3_forward",
        args: &["-t", "3", "--get-server-output"],
        streams: 1,
        reverse: false,
        bytes: None,
        server_output: true,
        busy_probe: true,
    },
    ClientRun::one_stream("iperf3_reverse", &["-t", "3", "-R"], true),
    ClientRun {
        name: "iperf3_parallel",
        args: &["-t", "3", "-P", "4"],
        streams: 4,
        reverse: false,
        bytes: None,
        server_output: false,
        busy_probe: false,
    },
    // Many sending streams: their peer's ACKs once overflowed the NIC's receive queue and
    // drowned the client's TEST_END (the server went on sending until its timeout).
    ClientRun {
        name: "iperf3_reverse_parallel",
        args: &["-t", "2", "-R", "-P", "16"],
        streams: 16,
        reverse: true,
        bytes: None,
        server_output: false,
        busy_probe: false,
    },
    ClientRun {
        name: "iperf3_bytes",
        args: &["-n", "8M", "-R", "-P", "2", "-l", "64K"],
        streams: 2,
        reverse: true,
        bytes: Some(8 << 20),
        server_output: false,
        busy_probe: false,
    },
];

/// Name of the test made of the malformed exchanges.
pub const MALFORMED_NAME: &str = "iperf3_malformed";

/// The last misbehaving client: a stock client killed (SIGKILL) this long into a test in which
/// the server sends; its connections vanish under the server's feet.
pub const KILLED_CLIENT_AFTER: Duration = Duration::from_millis(1500);
/// That client's options (a test long enough to be killed in the middle).
pub const KILLED_CLIENT_ARGS: &[&str] = &["-t", "10", "-R"];
/// What the kernel says about that test.
pub const KILLED_CLIENT_LOG: &str = "closed: client closed the connection while running the test";

/// A cookie as stock clients make them: 36 characters of `[a-z2-7]` and a NUL.
pub const GOOD_COOKIE: &[u8; 37] = b"tetherhostteststetherhostteststether\0";
/// Another well-formed cookie (a data connection claiming to belong to another test).
pub const OTHER_COOKIE: &[u8; 37] = b"someoneelsesomeoneelsesomeoneelse234\0";

/// iperf3 state bytes the exchanges expect.
pub const PARAM_EXCHANGE: u8 = 9;
/// Sent after the parameters are accepted.
pub const CREATE_STREAMS: u8 = 10;
/// -1: the answer to a connection the server refuses.
pub const ACCESS_DENIED: u8 = 0xff;
/// -2: followed by the iperf error number and errno (4 bytes big-endian each).
pub const SERVER_ERROR: u8 = 0xfe;

/// A JSON message as iperf3 frames it: 4-byte big-endian length, then the text.
pub fn framed(json: &str) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes
}

/// `PARAM_EXCHANGE`, then `SERVER_ERROR` with iperf error `ierrno` and errno 0.
fn refused_params(ierrno: u32) -> Vec<u8> {
    let mut reply = vec![PARAM_EXCHANGE, SERVER_ERROR];
    reply.extend_from_slice(&ierrno.to_be_bytes());
    reply.extend_from_slice(&0u32.to_be_bytes());
    reply
}

fn cookie_then(rest: &[u8]) -> Vec<u8> {
    let mut bytes = GOOD_COOKIE.to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

/// One misbehaving client: it connects, sends `send`, and must get exactly `reply` and then
/// see the server close the connection (unless it closes first); the kernel must report the
/// test closed with a reason containing `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedCase {
    /// What the client does wrong.
    pub what: &'static str,
    /// Control bytes sent after connecting.
    pub send: Vec<u8>,
    /// The server's complete answer.
    pub reply: Vec<u8>,
    /// After the reply, a data connection with this cookie must get ACCESS_DENIED.
    pub data_cookie: Option<[u8; 37]>,
    /// The client closes right after the reply instead of waiting for the server to.
    pub client_closes: bool,
    /// Text of the kernel's `iperf3: test N from ... closed: REASON` line.
    pub log: &'static str,
}

/// The malformed exchanges, each followed (by the runner) by a check that the server is free.
pub fn malformed_cases() -> Vec<MalformedCase> {
    let mut bad_cookie = *GOOD_COOKIE;
    bad_cookie[17] = b'\n';
    vec![
        MalformedCase {
            what: "cookie with a control character",
            send: bad_cookie.to_vec(),
            reply: vec![],
            data_cookie: None,
            client_closes: false,
            log: "closed: bad cookie: byte 0x0a at 17 is not printable",
        },
        MalformedCase {
            what: "4 GiB parameter length",
            send: cookie_then(&[0xff; 4]),
            reply: refused_params(114),
            data_cookie: None,
            client_closes: false,
            log: "closed: JSON length prefix 4294967295 exceeds 65536",
        },
        MalformedCase {
            what: "parameters that are not JSON",
            send: cookie_then(&framed("this is not JSON")),
            reply: refused_params(114),
            data_cookie: None,
            client_closes: false,
            log: "closed: bad JSON",
        },
        MalformedCase {
            what: "a UDP test",
            send: cookie_then(&framed("{\"udp\":true,\"time\":1,\"parallel\":1}")),
            reply: refused_params(13),
            data_cookie: None,
            client_closes: false,
            log: "closed: unsupported: UDP tests",
        },
        MalformedCase {
            what: "closing in the middle of the cookie",
            send: GOOD_COOKIE[..10].to_vec(),
            reply: vec![],
            data_cookie: None,
            client_closes: true,
            log: "closed: client closed the connection while waiting for the cookie",
        },
        MalformedCase {
            what: "a data connection with a foreign cookie, then closing",
            send: cookie_then(&framed("{\"tcp\":true,\"time\":1,\"parallel\":1}")),
            reply: vec![PARAM_EXCHANGE, CREATE_STREAMS],
            data_cookie: Some(*OTHER_COOKIE),
            client_closes: true,
            log: "closed: client closed the connection while waiting for the data connections",
        },
    ]
}

/// How much longer than the client's the server's test may have lasted (TEST_RUNNING sent to
/// TEST_END received, by the kernel's clock): the two control messages' trips. A late TEST_END
/// means the client's control connection was starved (it once drowned among dropped frames
/// while the server went on sending). The kernel's clock can only run slow, never fast (its
/// one-shot TSC calibration under a loaded host overestimates the TSC's rate), so a slow clock
/// cannot fail this check.
pub const SERVER_TIME_SLACK: f64 = 1.0;

/// The kernel's line for a finished test.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLine {
    /// The kernel's test number.
    pub test: u64,
    /// Data streams.
    pub streams: usize,
    /// The server sent.
    pub reverse: bool,
    /// Payload received on the data connections, all of it.
    pub received: u64,
    /// Payload handed to TCP to send.
    pub sent: u64,
    /// What the results reported to the client count.
    pub reported: u64,
    /// TEST_RUNNING sent to TEST_END received, by the kernel's clock.
    pub seconds: f64,
}

/// What the kernel's finished-test lines contain.
pub const DONE_MARK: &str = "iperf3: test ";
/// The kernel's line for a test closed by an error (`iperf3: test N from PEER closed: ...`).
pub const CLOSED_MARK: &str = " closed: ";

/// Parses `iperf3: test 3 done: client 10.0.2.2:4000, 4 streams, server receives, 3.00 s:
/// received=1 sent=0 reported=1 (1.0 Mbit/s)` (anywhere in a serial line).
pub fn parse_done_line(line: &str) -> Option<ServerLine> {
    let rest = &line[line.find(DONE_MARK)? + DONE_MARK.len()..];
    let (number, rest) = rest.split_once(" done: ")?;
    let test = number.parse().ok()?;
    let field = |key: &str| -> Option<u64> {
        let at = rest.find(&format!(" {key}="))? + key.len() + 2;
        let digits: String = rest[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let streams = rest
        .split(", ")
        .find_map(|part| {
            part.strip_suffix(" streams")
                .or_else(|| part.strip_suffix(" stream"))
        })?
        .parse()
        .ok()?;
    let (reverse, after) = if let Some((_, after)) = rest.split_once(", server sends, ") {
        (true, after)
    } else if let Some((_, after)) = rest.split_once(", server receives, ") {
        (false, after)
    } else {
        return None;
    };
    let seconds = after.split_once(" s: ")?.0.parse().ok()?;
    Some(ServerLine {
        test,
        streams,
        reverse,
        received: field("received")?,
        sent: field("sent")?,
        reported: field("reported")?,
        seconds,
    })
}

/// One side's total in the client's JSON (`end.sum_sent`, `end.sum_received`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Total {
    /// Bytes.
    pub bytes: u64,
    /// Seconds, by the clock of whoever counted.
    pub seconds: f64,
}

/// The parts of `iperf3 -c ... -J` output the tests check.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReport {
    /// `start.test_start.reverse`.
    pub reverse: bool,
    /// `start.test_start.num_streams`.
    pub num_streams: usize,
    /// `end.sum_sent`: the sender's count (the client's, or the server's with `-R`).
    pub sum_sent: Total,
    /// `end.sum_received`: the receiver's count (the server's, or the client's with `-R`).
    pub sum_received: Total,
    /// `end.streams[i].receiver.bytes`.
    pub stream_received: Vec<u64>,
    /// `server_output_text` (`--get-server-output`).
    pub server_output_text: Option<String>,
    /// `intervals[i].sum.bits_per_second` in Mbit/s, the client's per-interval rate (`-i`, a
    /// second by default), of the intervals lasting at least half a second (a run can end with
    /// a sliver whose rate means little).
    pub interval_mbit_per_s: Vec<f64>,
}

impl ClientReport {
    /// The client's own byte count and the seconds of its own clock.
    pub fn client_total(&self) -> Total {
        if self.reverse {
            self.sum_received
        } else {
            self.sum_sent
        }
    }
}

/// Parses the client's JSON; an `error` member (the client's own failure report) is an error.
pub fn parse_client_json(text: &str) -> Result<ClientReport, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("client output is not JSON: {e}"))?;
    if let Some(error) = json.get("error") {
        return Err(format!(
            "the client reports: {}",
            error.as_str().unwrap_or("?")
        ));
    }
    let uint = |v: &Value, path: &str| -> Result<u64, String> {
        v.pointer(path)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{path} missing or not a count"))
    };
    let total = |path: &str| -> Result<Total, String> {
        Ok(Total {
            bytes: uint(&json, &format!("{path}/bytes"))?,
            seconds: json
                .pointer(&format!("{path}/seconds"))
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("{path}/seconds missing"))?,
        })
    };
    let streams = json
        .pointer("/end/streams")
        .and_then(Value::as_array)
        .ok_or("/end/streams missing")?;
    Ok(ClientReport {
        reverse: uint(&json, "/start/test_start/reverse")? != 0,
        num_streams: uint(&json, "/start/test_start/num_streams")? as usize,
        sum_sent: total("/end/sum_sent")?,
        sum_received: total("/end/sum_received")?,
        stream_received: streams
            .iter()
            .map(|s| uint(s, "/receiver/bytes"))
            .collect::<Result<_, _>>()?,
        server_output_text: json
            .get("server_output_text")
            .and_then(Value::as_str)
            .map(str::to_string),
        interval_mbit_per_s: json
            .pointer("/intervals")
            .and_then(Value::as_array)
            .map(|intervals| {
                intervals
                    .iter()
                    .filter_map(|i| {
                        let seconds = i.pointer("/sum/seconds")?.as_f64()?;
                        let rate = i.pointer("/sum/bits_per_second")?.as_f64()?;
                        (seconds >= 0.5).then_some(rate / 1e6)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn mbit_per_second(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e6
    } else {
        0.0
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The receiver's bytes and the client's test time (the host's clock).
fn receiver_count(run: &ClientRun, client: &ClientReport, server: &ServerLine) -> (u64, f64) {
    if run.reverse {
        (client.sum_received.bytes, client.sum_received.seconds)
    } else {
        (server.reported, client.sum_sent.seconds)
    }
}

/// A run's rate: the receiver's bytes over the client's test time, by the host's clock.
pub fn receiver_mbit_per_second(
    run: &ClientRun,
    client: &ClientReport,
    server: &ServerLine,
) -> f64 {
    let (bytes, seconds) = receiver_count(run, client, server);
    mbit_per_second(bytes, seconds)
}

/// Checks a client run against the kernel's line for it. `Ok`: the result line's summary.
pub fn judge(
    run: &ClientRun,
    client: &ClientReport,
    server: &ServerLine,
) -> Result<String, String> {
    let mut problems = Vec::new();
    if client.reverse != run.reverse || server.reverse != run.reverse {
        problems.push(format!(
            "direction: asked reverse={}, client says {}, server says {}",
            run.reverse, client.reverse, server.reverse
        ));
    }
    if client.num_streams != run.streams
        || server.streams != run.streams
        || client.stream_received.len() != run.streams
    {
        problems.push(format!(
            "streams: asked {}, client started {} and reports {}, server ran {}",
            run.streams,
            client.num_streams,
            client.stream_received.len(),
            server.streams
        ));
    }
    if let Some(idle) = client.stream_received.iter().position(|&b| b == 0) {
        problems.push(format!("stream {} moved nothing", idle + 1));
    }
    // The results the client got back are the server's count (sender's with -R).
    let server_in_json = if run.reverse {
        client.sum_sent.bytes
    } else {
        client.sum_received.bytes
    };
    if server_in_json != server.reported {
        problems.push(format!(
            "the results sent to the client say {server_in_json} bytes, the kernel's line reported={}",
            server.reported
        ));
    }
    if server.reported == 0 {
        problems.push("the server counted nothing".to_string());
    }
    let client_seconds = client.client_total().seconds;
    if server.seconds > client_seconds + SERVER_TIME_SLACK {
        problems.push(format!(
            "the server's test lasted {:.2} s, the client's {client_seconds:.2} s: its TEST_END came late",
            server.seconds
        ));
    }
    let client_bytes = client.client_total().bytes;
    if run.reverse {
        if server.sent != server.reported || server.received != 0 {
            problems.push(format!(
                "the server sends only during the test and receives nothing: sent={} reported={} received={}",
                server.sent, server.reported, server.received
            ));
        }
        if client_bytes > server.sent {
            problems.push(format!(
                "the client read {client_bytes} bytes, more than the server's sent={}",
                server.sent
            ));
        }
    } else {
        if server.received != client_bytes {
            problems.push(format!(
                "the client wrote {client_bytes} bytes, the server's data connections received={}",
                server.received
            ));
        }
        if server.reported > server.received || server.sent != 0 {
            problems.push(format!(
                "reported={} received={} sent={}: the server reports what it received and sends nothing",
                server.reported, server.received, server.sent
            ));
        }
    }
    if let Some(bytes) = run.bytes {
        if client_bytes != bytes || server.reported != bytes {
            problems.push(format!(
                "-n {bytes}: the client counted {client_bytes}, the server reported {}",
                server.reported
            ));
        }
    }
    if run.server_output {
        let role = if run.reverse { "sender" } else { "receiver" };
        match &client.server_output_text {
            Some(text) if text.contains("Tether iperf3 server") && text.contains(role) => {}
            Some(text) => problems.push(format!("unexpected server output: {text:?}")),
            None => problems.push("no server_output_text in the JSON".to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let seconds = receiver_count(run, client, server).1;
    let direction = if run.reverse {
        "guest->host"
    } else {
        "host->guest"
    };
    let counts = if run.reverse {
        format!(
            "client read {} of the server's {}",
            mib(client_bytes),
            mib(server.sent)
        )
    } else {
        format!(
            "server received all {} the client wrote, {} of it during the test",
            mib(server.received),
            mib(server.reported)
        )
    };
    Ok(format!(
        "{:.1} Mbit/s {direction}, {} stream{} in {seconds:.2} s; {counts}",
        receiver_mbit_per_second(run, client, server),
        run.streams,
        if run.streams == 1 { "" } else { "s" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "[    7.286266] INFO  net::iperf3: iperf3: test 12 done: client 10.0.2.2:35724, 4 streams, server receives, 3.01 s: received=7733248 sent=0 reported=4579383 (22.2 Mbit/s)";

    #[test]
    fn done_line_parses() {
        assert_eq!(
            parse_done_line(LINE),
            Some(ServerLine {
                test: 12,
                streams: 4,
                reverse: false,
                received: 7733248,
                sent: 0,
                reported: 4579383,
                seconds: 3.01,
            })
        );
        let one = LINE
            .replace("4 streams, server receives", "1 stream, server sends")
            .replace("sent=0", "sent=5");
        let parsed = parse_done_line(&one).unwrap();
        assert_eq!((parsed.streams, parsed.reverse, parsed.sent), (1, true, 5));
        assert_eq!(
            parse_done_line("iperf3: test 3 from 10.0.2.2:1 closed: bad cookie"),
            None
        );
        assert_eq!(parse_done_line(&LINE.replace("received=", "rx=")), None);
        assert_eq!(
            parse_done_line(&LINE.replace("server receives", "server idles")),
            None
        );
    }

    /// Trimmed output of `iperf3 -c ... -t 1 -J --get-server-output` (3.12) against a Linux
    /// server.
    const FORWARD_JSON: &str = r#"{"start":{"test_start":{"protocol":"TCP","num_streams":1,"blksize":131072,"omit":0,"duration":1,"bytes":0,"blocks":0,"reverse":0,"tos":0,"target_bitrate":0}},
      "intervals":[],
      "end":{"streams":[{"sender":{"socket":5,"start":0,"end":1.000615,"seconds":1.000615,"bytes":2137653248,"bits_per_second":17090715194.1,"retransmits":10,"sender":true},
                         "receiver":{"socket":5,"start":0,"end":1.00127,"seconds":1.000615,"bytes":2137600000,"bits_per_second":17079534974.5,"sender":true}}],
             "sum_sent":{"start":0,"end":1.000615,"seconds":1.000615,"bytes":2137653248,"bits_per_second":17090715194.1,"retransmits":10,"sender":true},
             "sum_received":{"start":0,"end":1.00127,"seconds":1.00127,"bytes":2137600000,"bits_per_second":17079534974.5,"sender":true}},
      "server_output_text":"Tether iperf3 server: TCP, 1 stream, server receives (client 3.12)\n[  1]   0.00-1.00   sec  1.99 GBytes  17.1 Gbits/sec  receiver\n"}"#;

    fn forward_run() -> ClientRun {
        CLIENT_RUNS[0]
    }

    fn forward_server() -> ServerLine {
        ServerLine {
            test: 1,
            streams: 1,
            reverse: false,
            received: 2137653248,
            sent: 0,
            reported: 2137600000,
            seconds: 1.0,
        }
    }

    #[test]
    fn client_json_parses() {
        let report = parse_client_json(FORWARD_JSON).unwrap();
        assert!(!report.reverse);
        assert_eq!(report.num_streams, 1);
        assert_eq!(report.sum_sent.bytes, 2137653248);
        assert_eq!(report.sum_received.bytes, 2137600000);
        assert_eq!(report.stream_received, vec![2137600000]);
        assert_eq!(report.client_total(), report.sum_sent);
        assert!(report.server_output_text.unwrap().contains("receiver"));
        assert!(report.interval_mbit_per_s.is_empty());
        let with_intervals = FORWARD_JSON.replace(
            r#""intervals":[]"#,
            r#""intervals":[{"streams":[],"sum":{"start":0,"end":1,"seconds":1,"bytes":12500000,"bits_per_second":100000000}},
                            {"streams":[],"sum":{"start":1,"end":2,"seconds":1,"bytes":2500000,"bits_per_second":20000000}},
                            {"streams":[],"sum":{"start":2,"end":2.1,"seconds":0.1,"bytes":0,"bits_per_second":0}}]"#,
        );
        assert_eq!(
            parse_client_json(&with_intervals)
                .unwrap()
                .interval_mbit_per_s,
            vec![100.0, 20.0]
        );
        let failed = r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert_eq!(
            parse_client_json(failed).unwrap_err(),
            "the client reports: unable to connect to server: Connection refused"
        );
        assert!(parse_client_json("iperf3: error").is_err());
        assert!(parse_client_json(&FORWARD_JSON.replace("\"sum_received\"", "\"sum\"")).is_err());
    }

    #[test]
    fn forward_judged_on_exact_counts() {
        let report = parse_client_json(FORWARD_JSON).unwrap();
        let summary = judge(&forward_run(), &report, &forward_server()).unwrap();
        assert!(
            summary.starts_with("17090.3 Mbit/s host->guest, 1 stream in 1.00 s"),
            "{summary}"
        );
        // One byte the client wrote that the server's connections never received.
        let short = ServerLine {
            received: 2137653247,
            ..forward_server()
        };
        let error = judge(&forward_run(), &report, &short).unwrap_err();
        assert!(error.contains("received=2137653247"), "{error}");
        // Results that do not match what the kernel counted.
        let other = ServerLine {
            reported: 5,
            ..forward_server()
        };
        assert!(judge(&forward_run(), &report, &other)
            .unwrap_err()
            .contains("reported=5"));
        // A server that sent on a forward test, or reported more than it received.
        let sent = ServerLine {
            sent: 1,
            ..forward_server()
        };
        assert!(judge(&forward_run(), &report, &sent).is_err());
        // The wrong number of streams or the wrong direction.
        let parallel = ClientRun {
            streams: 4,
            ..forward_run()
        };
        assert!(judge(&parallel, &report, &forward_server())
            .unwrap_err()
            .contains("streams"));
        let reversed = ServerLine {
            reverse: true,
            ..forward_server()
        };
        assert!(judge(&forward_run(), &report, &reversed)
            .unwrap_err()
            .contains("direction"));
    }

    #[test]
    fn server_output_required_when_asked() {
        let mut report = parse_client_json(FORWARD_JSON).unwrap();
        report.server_output_text = None;
        assert!(judge(&forward_run(), &report, &forward_server())
            .unwrap_err()
            .contains("server_output_text"));
        let quiet = ClientRun {
            server_output: false,
            ..forward_run()
        };
        assert!(judge(&quiet, &report, &forward_server()).is_ok());
    }

    fn reverse_report(client_read: u64, server_sent: u64, streams: usize) -> ClientReport {
        ClientReport {
            reverse: true,
            num_streams: streams,
            sum_sent: Total {
                bytes: server_sent,
                seconds: 2.0,
            },
            sum_received: Total {
                bytes: client_read,
                seconds: 2.0,
            },
            stream_received: vec![client_read / streams as u64; streams],
            server_output_text: None,
            interval_mbit_per_s: Vec::new(),
        }
    }

    fn reverse_server(sent: u64, streams: usize) -> ServerLine {
        ServerLine {
            test: 2,
            streams,
            reverse: true,
            received: 0,
            sent,
            reported: sent,
            seconds: 2.0,
        }
    }

    #[test]
    fn reverse_judged() {
        let run = CLIENT_RUNS[1];
        let summary = judge(
            &run,
            &reverse_report(25_000_000, 26_000_000, 1),
            &reverse_server(26_000_000, 1),
        )
        .unwrap();
        assert!(summary.starts_with("100.0 Mbit/s guest->host"), "{summary}");
        // The client cannot read more than the server sent.
        assert!(judge(
            &run,
            &reverse_report(26_000_001, 26_000_000, 1),
            &reverse_server(26_000_000, 1)
        )
        .is_err());
        // Sending outside the test (sent beyond what was reported) is wrong.
        let mut late = reverse_server(26_000_000, 1);
        late.seconds = 3.5;
        assert!(
            judge(&run, &reverse_report(25_000_000, 26_000_000, 1), &late)
                .unwrap_err()
                .contains("TEST_END came late")
        );
        // A kernel clock running slow is not a failure.
        late.seconds = 1.1;
        assert!(judge(&run, &reverse_report(25_000_000, 26_000_000, 1), &late).is_ok());
        let mut server = reverse_server(26_000_000, 1);
        server.sent += 1;
        assert!(judge(&run, &reverse_report(1, 26_000_000, 1), &server).is_err());
    }

    #[test]
    fn byte_limit_is_exact() {
        let run = CLIENT_RUNS[4];
        let n = 8 << 20;
        assert!(judge(&run, &reverse_report(n, n, 2), &reverse_server(n, 2)).is_ok());
        assert!(judge(
            &run,
            &reverse_report(n, n + 1, 2),
            &reverse_server(n + 1, 2)
        )
        .unwrap_err()
        .contains("-n"));
        let mut idle = reverse_report(n, n, 2);
        idle.stream_received = vec![n, 0];
        assert!(judge(&run, &idle, &reverse_server(n, 2))
            .unwrap_err()
            .contains("stream 2"));
    }

    #[test]
    fn malformed_cases_are_well_formed() {
        let cases = malformed_cases();
        assert!(cases.len() >= 5);
        for case in &cases {
            assert!(
                !case.send.is_empty() && !case.log.is_empty(),
                "{}",
                case.what
            );
        }
        // The oversized case: cookie, then a length prefix of 4 GiB - 1, nothing else.
        assert_eq!(cases[1].send.len(), 37 + 4);
        assert_eq!(cases[1].reply, vec![9, 0xfe, 0, 0, 0, 114, 0, 0, 0, 0]);
        assert_eq!(framed("ab"), vec![0, 0, 0, 2, b'a', b'b']);
        assert!(GOOD_COOKIE[..36].iter().all(|b| b.is_ascii_alphanumeric()));
        assert!(OTHER_COOKIE[..36].iter().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(GOOD_COOKIE, OTHER_COOKIE);
    }

    #[test]
    fn forwards_loopback_only() {
        let args = machine_args(40201);
        assert!(args.contains(&"user,id=n0,hostfwd=tcp:127.0.0.1:40201-:5201".to_string()));
    }
}
