//! Host-driven HTTP tests: the kernel's HTTP service (port 80) checked through QEMU's user
//! networking with `curl` and raw TCP, and static addressing (`ip=`, `gw=`). This module says
//! what to send and what must come back; `tether-qemu` (`net_http.rs`) drives the boots.

/// Test name of the HTTP service test.
pub const HTTP_NAME: &str = "net_http";
/// Test name of the static addressing test.
pub const STATIC_NAME: &str = "net_static";
/// Guest port of the HTTP service.
pub const HTTP_PORT: u16 = 80;
/// Kernel command line of the static addressing test: what QEMU's DHCP would have given.
pub const STATIC_CMDLINE: &str = "ip=10.0.2.15/24 gw=10.0.2.2";
/// The interface announcement the static boot must print.
pub const STATIC_ANNOUNCEMENT: &str = "eth0: static 10.0.2.15/24 gateway 10.0.2.2";
/// What the status page must contain: uptime, the interface and its address, the usb-net
/// device (QEMU's 0525:a4a2) in the USB table.
pub const STATUS_PAGE_MUST_CONTAIN: &[&str] = &["uptime", "eth0", "10.0.2.15/24", "0525:a4a2"];
/// Metric families `/metrics` must have (a sample each, for eth0 / the usb-net pipes).
pub const KEY_METRICS: &[&str] = &[
    "tether_uptime_seconds",
    "tether_interface_rx_frames_total",
    "tether_interface_rx_bytes_total",
    "tether_interface_rx_dropped_total",
    "tether_interface_tx_frames_total",
    "tether_interface_tx_bytes_total",
    "tether_interface_tx_dropped_total",
    "tether_usb_pipe_submitted_total",
    "tether_usb_pipe_completed_total",
    "tether_usb_pipe_errors_total",
    "tether_usb_pipe_stalls_total",
    "tether_usb_pipe_bytes_total",
    "tether_threads",
    "tether_thread_cpu_seconds_total",
    "tether_memory_heap_used_bytes",
    "tether_memory_frames_free",
    "tether_http_responses_total",
];
/// Records every boot leaves in the trace ring, which `/trace` must show.
pub const TRACE_MUST_CONTAIN: &[&str] = &["usb: attached xhci1 1-5 0525:a4a2", "eth0: DHCP lease"];

/// QEMU arguments: a usb-net on qemu-xhci with user networking forwarding each
/// `(host port, guest port)` from 127.0.0.1.
pub fn usb_net_forwarding(forwards: &[(u16, u16)]) -> Vec<String> {
    let mut netdev = String::from("user,id=n0");
    for (host, guest) in forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "usb-net,bus=xhci.0,netdev=n0".into(),
    ]
}

/// A request sent over raw TCP and the status it must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCase {
    /// What the case checks.
    pub what: &'static str,
    /// The bytes sent.
    pub request: Vec<u8>,
    /// The status code the answer must have.
    pub status: u16,
}

/// Malformed, oversized, unknown and refused requests, each answered and closed by the server.
pub fn raw_cases() -> Vec<RawCase> {
    let case = |what, request: &[u8], status| RawCase {
        what,
        request: request.to_vec(),
        status,
    };
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let mut many_headers = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..12 {
        many_headers.push_str(&format!("X-{i}: {}\r\n", "v".repeat(900)));
    }
    many_headers.push_str("\r\n");
    vec![
        case("garbage request line", b"HELLO THERE\r\n\r\n", 400),
        case("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
        case(
            "unknown path",
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
            404,
        ),
        case(
            "POST to a read-only path",
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        case("unknown method", b"PUT / HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        case(
            "body above the limit",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n",
            413,
        ),
        case("2000-byte header line", long_header.as_bytes(), 431),
        case("11 KB of headers", many_headers.as_bytes(), 431),
    ]
}

/// The good request sent after the bad ones: the server must still answer it.
pub const GOOD_REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
/// A request that never completes (held open while others are served).
pub const HALF_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHo";

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a whole response as read until the server closed: status line, headers, body. The
/// body must match Content-Length when there is one.
pub fn parse_reply(bytes: &[u8]) -> Result<HttpReply, String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {} bytes", bytes.len()))?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("malformed status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("malformed status line {status_line:?}"));
    }
    let status = code
        .parse()
        .map_err(|_| format!("malformed status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header {line:?}"))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let reply = HttpReply {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    };
    if let Some(length) = reply.header("Content-Length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("malformed Content-Length {length:?}"))?;
        if length != reply.body.len() {
            return Err(format!(
                "Content-Length {length} but {} body bytes",
                reply.body.len()
            ));
        }
    }
    Ok(reply)
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels in order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

type Labels = Vec<(String, String)>;

/// `{a="x",b="y"}` after a metric name: the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value is not quoted"));
        }
        let mut value = String::new();
        let mut closed = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    closed = Some(eq + 1 + i + 1);
                    break;
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in label {name}")),
                },
                '\n' => return Err(format!("newline in label {name}")),
                c => value.push(c),
            }
        }
        let end = closed.ok_or_else(|| format!("label {name} value not closed"))?;
        labels.push((name.to_string(), value));
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ','".to_string());
        }
    }
}

/// Checks a whole Prometheus text exposition: every line a `# HELP`/`# TYPE`/other comment,
/// an empty line, or a valid sample; at most one TYPE per family and before its samples;
/// counters non-negative. Returns the samples.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut sampled: std::collections::HashSet<String> = Default::default();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_metric_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !matches!(
                        *kind,
                        "counter" | "gauge" | "untyped" | "histogram" | "summary"
                    ) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if sampled.contains(*name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("second TYPE for the family".into()));
                    }
                }
                ["HELP", name, ..] if !is_metric_name(name) => {
                    return Err(at("bad metric name".into()))
                }
                ["TYPE", ..] => return Err(at("malformed TYPE".into())),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(after) => parse_labels(after).map_err(at)?,
            None => (Vec::new(), &line[name_end..]),
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| at("bad or missing value".into()))?;
        if let Some(timestamp) = fields.next() {
            if timestamp.parse::<i64>().is_err() {
                return Err(at("bad timestamp".into()));
            }
        }
        if fields.next().is_some() || !rest.starts_with(' ') {
            return Err(at("malformed sample".into()));
        }
        if types.get(name).map(String::as_str) == Some("counter") && (value < 0.0 || value.is_nan())
        {
            return Err(at("negative counter".into()));
        }
        sampled.insert(name.to_string());
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include every `(label, value)` in `labels`.
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_on_loopback() {
        let args = usb_net_forwarding(&[(40080, 80), (40007, 7)]);
        assert!(args.contains(
            &"user,id=n0,hostfwd=tcp:127.0.0.1:40080-:80,hostfwd=tcp:127.0.0.1:40007-:7".into()
        ));
    }

    #[test]
    fn replies_parse() {
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.text(), "no\n");
        // Without Content-Length the body runs to the end (closed by the server).
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc").unwrap();
        assert_eq!(r.body, b"abc");
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabc").is_err());
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"garbage\r\n\r\n").is_err());
        assert!(parse_reply(b"HTTP/1.1 OK\r\n\r\n").is_err());
    }

    #[test]
    fn prometheus_text_accepted() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                    a_total{if=\"eth0\",note=\"q\\\"\\\\\\n\"} 12\n\
                    a_total{if=\"eth1\"} 0 1700000000000\n\
                    # TYPE g gauge\ng -1.5e3\ng{x=\"\"} NaN\nplain +Inf\n\n# just a comment\n";
        let samples = parse_prometheus(text).unwrap();
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0].label("note"), Some("q\"\\\n"));
        assert_eq!(
            sample_value(&samples, "a_total", &[("if", "eth1")]),
            Some(0.0)
        );
        assert_eq!(sample_value(&samples, "g", &[]), Some(-1500.0));
        assert_eq!(sample_value(&samples, "a_total", &[("if", "eth9")]), None);
    }

    #[test]
    fn prometheus_text_refused() {
        for bad in [
            "9bad 1\n",
            "a{b=\"c\" 1\n",
            "a{b=c} 1\n",
            "a{1b=\"c\"} 1\n",
            "a{b=\"c\"}1\n",
            "a\n",
            "a one\n",
            "a 1 2 3\n",
            "a{b=\"\\x\"} 1\n",
            "# TYPE a counter\na -1\n",
            "# TYPE a counter\n# TYPE a counter\n",
            "a 1\n# TYPE a gauge\n",
            "# TYPE a flavour\n",
            "# TYPE a\n",
        ] {
            assert!(parse_prometheus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_cases_are_what_they_say() {
        let cases = raw_cases();
        assert!(cases.iter().any(|c| c.status == 413));
        assert!(cases.iter().any(|c| c.status == 431));
        let big = cases.iter().find(|c| c.what == "11 KB of headers").unwrap();
        assert!(big.request.len() > 8 * 1024 && big.request.len() < 12 * 1024);
        assert!(!HALF_REQUEST.ends_with(b"\r\n\r\n"));
    }
}
