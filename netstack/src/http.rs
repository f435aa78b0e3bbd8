//! A minimal HTTP/1.1 server side for the status page: request parser, response writer and a
//! Prometheus text-format encoder. Pure code over byte slices, no I/O.
//!
//! The parser takes the bytes received so far and either asks for more (`Ok(None)`), returns the
//! first complete request (its `len` says how many bytes it used; anything after it, such as a
//! pipelined second request, is left alone: the server answers one request per connection and
//! closes), or returns an [`HttpError`] whose [`status`](HttpError::status) is the 4xx/5xx to
//! answer with. Limits: request line and header lines at most [`MAX_LINE`] bytes, at most
//! [`MAX_HEADERS`] headers, head at most [`MAX_HEAD`] bytes, body (Content-Length only) at most
//! [`MAX_BODY`] bytes. Lines may end in CRLF or a bare LF; a bare CR is an error.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

/// Longest request line or header line, without its line ending.
pub const MAX_LINE: usize = 1024;
/// Most header fields.
pub const MAX_HEADERS: usize = 32;
/// Longest head: request line, headers and the empty line, with line endings.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest body (Content-Length).
pub const MAX_BODY: usize = 4 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// A parsed request, borrowing from the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The request target as sent.
    pub target: &'a str,
    /// The path part of the target ("/metrics"), also for absolute-form targets.
    pub path: &'a str,
    /// What follows '?', if anything.
    pub query: Option<&'a str>,
    pub version: Version,
    pub headers: Vec<Header<'a>>,
    pub body: &'a [u8],
    /// Bytes of the buffer this request used (head and body).
    pub len: usize,
}

impl<'a> Request<'a> {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Why a request was refused; [`status`](Self::status) is the answer's status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: malformed request line, header, Content-Length, missing Host, ...
    BadRequest(&'static str),
    /// 405: a well-formed method other than GET, HEAD, POST.
    MethodNotAllowed,
    /// 413: Content-Length above [`MAX_BODY`].
    PayloadTooLarge,
    /// 414: request line above [`MAX_LINE`].
    UriTooLong,
    /// 431: a header line above [`MAX_LINE`], more than [`MAX_HEADERS`] headers, or a head
    /// above [`MAX_HEAD`].
    HeaderFieldsTooLarge(&'static str),
    /// 505: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::MethodNotAllowed => 405,
            HttpError::PayloadTooLarge => 413,
            HttpError::UriTooLong => 414,
            HttpError::HeaderFieldsTooLarge(_) => 431,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// The answer to send: a short text body, and `Allow` for 405.
    pub fn response(&self) -> Response {
        let body = format!(
            "{} {}: {self}\n",
            self.status(),
            reason_phrase(self.status())
        );
        let r = Response::new(self.status(), "text/plain; charset=utf-8", body);
        match self {
            HttpError::MethodNotAllowed => r.with_header("Allow", "GET, HEAD, POST"),
            _ => r,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::MethodNotAllowed => f.write_str("method not allowed"),
            HttpError::PayloadTooLarge => write!(f, "body larger than {MAX_BODY} bytes"),
            HttpError::UriTooLong => write!(f, "request line longer than {MAX_LINE} bytes"),
            HttpError::HeaderFieldsTooLarge(why) => write!(f, "header fields too large: {why}"),
            HttpError::VersionNotSupported => f.write_str("HTTP version not supported"),
        }
    }
}

enum Line<'a> {
    /// A line without its ending, and where the next one starts.
    Complete(&'a [u8], usize),
    /// No line ending yet.
    Partial,
}

/// The line starting at `pos`. `max` is the longest content allowed; `too_long` the error for
/// longer lines (raised as soon as the buffer proves it, complete or not).
fn line_at(buf: &[u8], pos: usize, max: usize, too_long: HttpError) -> Result<Line<'_>, HttpError> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    // Look no further than a maximal line and its CRLF.
    let window = &rest[..rest.len().min(max + 2)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if rest.len() > max + 1 {
            Err(too_long)
        } else {
            Ok(Line::Partial)
        };
    };
    let mut content = &rest[..nl];
    if let [head @ .., b'\r'] = content {
        content = head;
    }
    if content.len() > max {
        return Err(too_long);
    }
    if content.contains(&b'\r') {
        return Err(HttpError::BadRequest("bare CR in a line"));
    }
    Ok(Line::Complete(content, pos + nl + 1))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Parses the first request in `buf`. See the module documentation.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request<'_>>, HttpError> {
    let head_full = HttpError::HeaderFieldsTooLarge("head too long");
    // RFC 9112 2.2: ignore empty lines before the request line.
    let mut pos = 0;
    while let Some(&b) = buf.get(pos) {
        match b {
            b'\n' => pos += 1,
            b'\r' if buf.get(pos + 1) == Some(&b'\n') => pos += 2,
            b'\r' if pos + 1 == buf.len() => return Ok(None),
            _ => break,
        }
        if pos > MAX_HEAD {
            return Err(head_full);
        }
    }
    let (line, mut pos) = match line_at(buf, pos, MAX_LINE, HttpError::UriTooLong)? {
        Line::Complete(l, next) => (l, next),
        Line::Partial => return Ok(None),
    };
    let (method, target, path, query, version) = parse_request_line(line)?;

    let mut headers: Vec<Header<'_>> = Vec::new();
    let line_full = HttpError::HeaderFieldsTooLarge("header line too long");
    loop {
        if pos > MAX_HEAD {
            return Err(head_full);
        }
        let (line, next) = match line_at(buf, pos, MAX_LINE, line_full)? {
            Line::Complete(l, next) => (l, next),
            Line::Partial if buf.len() > MAX_HEAD => return Err(head_full),
            Line::Partial => return Ok(None),
        };
        if next > MAX_HEAD {
            return Err(head_full);
        }
        pos = next;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::HeaderFieldsTooLarge("too many headers"));
        }
        headers.push(parse_header(line)?);
    }

    let mut content_length: Option<usize> = None;
    let mut hosts = 0;
    for h in &headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::BadRequest("Transfer-Encoding is not supported"));
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if hosts > 1 || (version == Version::Http11 && hosts == 0) {
        return Err(HttpError::BadRequest(
            "HTTP/1.1 needs exactly one Host header",
        ));
    }
    let body_len = content_length.unwrap_or(0);
    let Some(body) = buf.get(pos..pos + body_len) else {
        return Ok(None);
    };
    Ok(Some(Request {
        method,
        target,
        path,
        query,
        version,
        headers,
        body,
        len: pos + body_len,
    }))
}

type RequestLine<'a> = (Method, &'a str, &'a str, Option<&'a str>, Version);

fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, HttpError> {
    let bad = HttpError::BadRequest;
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(t), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line is not METHOD SP TARGET SP VERSION"));
    };
    let version = match v {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::VersionNotSupported);
        }
        _ => return Err(bad("malformed HTTP version")),
    };
    if !is_token(m) {
        return Err(bad("malformed method"));
    }
    let method = match m {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        b"POST" => Method::Post,
        _ => return Err(HttpError::MethodNotAllowed),
    };
    if t.is_empty() || !t.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad("malformed request target"));
    }
    // Printable ASCII, so valid UTF-8.
    let target = core::str::from_utf8(t).map_err(|_| bad("malformed request target"))?;
    let origin = if target.starts_with('/') {
        target
    } else {
        let lower_scheme = target.get(..8).map(str::to_ascii_lowercase);
        let after = match lower_scheme.as_deref() {
            Some(s) if s.starts_with("http://") => &target[7..],
            Some("https://") => &target[8..],
            _ => return Err(bad("request target is not a path")),
        };
        match after.find('/') {
            Some(i) => &after[i..],
            None => "/",
        }
    };
    let origin = origin.split('#').next().unwrap_or(origin);
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    Ok((method, target, path, query, version))
}

fn parse_header(line: &[u8]) -> Result<Header<'_>, HttpError> {
    let bad = HttpError::BadRequest;
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(bad("folded header line"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(bad("header without ':'"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_token(name) {
        return Err(bad("malformed header name"));
    }
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    let value = &value[start..end];
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad("control character in a header value"));
    }
    let name = core::str::from_utf8(name).map_err(|_| bad("malformed header name"))?;
    let value = core::str::from_utf8(value).map_err(|_| bad("header value is not UTF-8"))?;
    Ok(Header { name, value })
}

fn parse_content_length(v: &str) -> Result<usize, HttpError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadRequest("malformed Content-Length"));
    }
    // All digits: anything that does not fit is certainly too large.
    match v.parse::<usize>() {
        Ok(n) if n <= MAX_BODY => Ok(n),
        _ => Err(HttpError::PayloadTooLarge),
    }
}

/// The reason phrase for the status codes this server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response; always `Connection: close` with a `Content-Length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Drops CR, LF and other controls so a value cannot end the header early.
fn header_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type: header_safe(content_type),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (CR, LF and other controls are dropped from both parts).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii() && is_tchar(*c as u8))
            .collect();
        if !name.is_empty() {
            self.headers.push((name, header_safe(value)));
        }
        self
    }

    /// Status line and headers, Content-Length being the body's length.
    pub fn write_head_to(&self, out: &mut Vec<u8>) {
        self.write_head(Some(self.body.len()), out);
    }

    /// Status line and headers for a body produced while it is sent, of a length not known
    /// up front: no Content-Length, so the body ends where the server closes the connection
    /// (RFC 9112 6.3, the last rule; fine for HTTP/1.0 and 1.1 clients alike). `self.body` is
    /// not part of it.
    pub fn write_streaming_head_to(&self, out: &mut Vec<u8>) {
        self.write_head(None, out);
    }

    fn write_head(&self, content_length: Option<usize>, out: &mut Vec<u8>) {
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
        );
        if let Some(length) = content_length {
            let _ = write!(head, "Content-Length: {length}\r\n");
        }
        head.push_str("Connection: close\r\n");
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
    }

    /// The whole response.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_head_to(out);
        out.extend_from_slice(&self.body);
    }

    /// The response to a request with `method`: without the body for HEAD.
    pub fn write_for(&self, method: Method, out: &mut Vec<u8>) {
        if method == Method::Head {
            self.write_head_to(out);
        } else {
            self.write_to(out);
        }
    }
}

/// Prometheus metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Untyped,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
        }
    }
}

/// A sample value; integers are printed exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricValue {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl From<u64> for MetricValue {
    fn from(v: u64) -> Self {
        MetricValue::U64(v)
    }
}
impl From<u32> for MetricValue {
    fn from(v: u32) -> Self {
        MetricValue::U64(v.into())
    }
}
impl From<usize> for MetricValue {
    fn from(v: usize) -> Self {
        MetricValue::U64(v as u64)
    }
}
impl From<i64> for MetricValue {
    fn from(v: i64) -> Self {
        MetricValue::I64(v)
    }
}
impl From<f64> for MetricValue {
    fn from(v: f64) -> Self {
        MetricValue::F64(v)
    }
}

impl fmt::Display for MetricValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MetricValue::U64(v) => write!(f, "{v}"),
            MetricValue::I64(v) => write!(f, "{v}"),
            MetricValue::F64(v) if v.is_nan() => f.write_str("NaN"),
            MetricValue::F64(v) if v == f64::INFINITY => f.write_str("+Inf"),
            MetricValue::F64(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            MetricValue::F64(v) => write!(f, "{v}"),
        }
    }
}

/// A metric or label name made valid: `[a-zA-Z_:][a-zA-Z0-9_:]*` (no ':' in label names);
/// other characters become '_'.
fn push_name(out: &mut String, name: &str, colon_ok: bool) {
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon_ok && c == ':') {
            c
        } else {
            '_'
        }
    }));
}

/// `# HELP` and `# TYPE` lines for a metric family.
pub fn write_family(out: &mut String, name: &str, help: &str, kind: MetricType) {
    out.push_str("# HELP ");
    push_name(out, name, true);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    push_name(out, name, true);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// One sample line: `name{label="value",...} value`, label values escaped.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: MetricValue) {
    push_name(out, name, true);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_name(out, k, false);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A metric family with one sample, in Prometheus text format (content type
/// [`PROMETHEUS_CONTENT_TYPE`]). For several samples of one family, call [`write_family`] once
/// and [`write_sample`] per sample.
pub fn metric(
    name: &str,
    help: &str,
    kind: MetricType,
    labels: &[(&str, &str)],
    value: impl Into<MetricValue>,
) -> String {
    let mut out = String::new();
    write_family(&mut out, name, help, kind);
    write_sample(&mut out, name, labels, value.into());
    out
}

/// The content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn ok(buf: &[u8]) -> Request<'_> {
        parse_request(buf).unwrap().unwrap()
    }

    fn err(buf: &[u8]) -> u16 {
        match parse_request(buf) {
            Err(e) => e.status(),
            Ok(r) => panic!(
                "expected an error for {:?}, got {r:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn curl_get() {
        let raw = b"GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let r = ok(raw);
        assert_eq!(r.method, Method::Get);
        assert_eq!(
            (r.path, r.query, r.version),
            ("/metrics", Some("x=1"), Version::Http11)
        );
        assert_eq!(r.header("user-agent"), Some("curl/7.88.1"));
        assert_eq!(r.header("HOST"), Some("127.0.0.1:8080"));
        assert_eq!(r.len, raw.len());
        assert!(r.body.is_empty());
    }

    #[test]
    fn lf_only_and_http10_without_host() {
        let r = ok(b"HEAD / HTTP/1.0\nAccept: */*\n\n");
        assert_eq!(
            (r.method, r.path, r.version),
            (Method::Head, "/", Version::Http10)
        );
        // Leading empty lines are skipped.
        let r = ok(b"\r\n\nGET /trace HTTP/1.0\r\n\r\n");
        assert_eq!(r.path, "/trace");
    }

    #[test]
    fn need_more_at_every_split() {
        let raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        for i in 0..raw.len() {
            assert_eq!(parse_request(&raw[..i]), Ok(None), "prefix {i}");
        }
        let r = ok(raw);
        assert_eq!((r.method, r.body), (Method::Post, &b"hello"[..]));
    }

    #[test]
    fn pipelined_second_request_ignored() {
        let raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let r = ok(raw);
        assert_eq!(r.path, "/a");
        assert_eq!(r.len, raw.len() / 2);
        // Garbage after the first request does not matter either.
        let r = ok(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\x00\xff garbage");
        assert_eq!(r.path, "/a");
    }

    #[test]
    fn absolute_form() {
        assert_eq!(
            ok(b"GET http://h:80/metrics HTTP/1.1\r\nHost: h\r\n\r\n").path,
            "/metrics"
        );
        assert_eq!(ok(b"GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n").path, "/");
    }

    #[test]
    fn malformed_request_lines() {
        for raw in [
            &b"GET / HTTP/1.1 extra\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTX/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/11\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rHost: h\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
        ] {
            assert_eq!(err(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        for raw in [
            &b"PUT / HTTP/1.1\r\n\r\n"[..],
            b"DELETE / HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
        ] {
            assert_eq!(err(raw), 405);
        }
        for raw in [
            &b"GET / HTTP/2.0\r\n"[..],
            b"GET / HTTP/1.2\r\n",
            b"GET / HTTP/0.9\r\n",
        ] {
            assert_eq!(err(raw), 505);
        }
    }

    #[test]
    fn malformed_headers() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\n: h\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: \xff\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(err(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        // Same Content-Length twice is fine; OWS is trimmed.
        let r =
            ok(b"POST / HTTP/1.1\r\nHost:\th \r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab");
        assert_eq!((r.header("host"), r.body), (Some("h"), &b"ab"[..]));
    }

    #[test]
    fn oversized_everything() {
        // Request line: 414, complete or still arriving.
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(err(long.as_bytes()), 414);
        assert_eq!(err(&long.as_bytes()[..MAX_LINE + 10]), 414);
        let fits = format!(
            "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
            "a".repeat(MAX_LINE - 14)
        );
        assert_eq!(ok(fits.as_bytes()).path.len(), MAX_LINE - 13);
        // Header line: 431.
        let hl = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "v".repeat(MAX_LINE)
        );
        assert_eq!(err(hl.as_bytes()), 431);
        assert_eq!(err(&hl.as_bytes()[..hl.len() - 4]), 431);
        // Header count: 32 fine, 33 not.
        let mut h = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..MAX_HEADERS - 1 {
            h.push_str(&format!("X-{i}: v\r\n"));
        }
        assert!(ok(format!("{h}\r\n").as_bytes()).headers.len() == MAX_HEADERS);
        assert_eq!(err(format!("{h}X-last: v\r\n\r\n").as_bytes()), 431);
        // Head: 8 KiB in lines that are each fine.
        let mut h = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..10 {
            h.push_str(&format!("X-{i}: {}\r\n", "v".repeat(1000)));
        }
        assert_eq!(err(h.as_bytes()), 431);
        assert_eq!(err(format!("{h}\r\n").as_bytes()), 431);
        // Endless empty lines before the request line.
        assert_eq!(err(&[b'\n'; MAX_HEAD + 2]), 431);
        // Body: 413 at once, without waiting for it.
        let b = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(err(b.as_bytes()), 413);
        let huge = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(err(huge.as_bytes()), 413);
        let exact = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(parse_request(exact.as_bytes()), Ok(None));
        let mut full = exact.into_bytes();
        full.extend(vec![b'x'; MAX_BODY]);
        assert_eq!(ok(&full).body.len(), MAX_BODY);
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        Response::new(200, "text/plain", "hi\n").write_to(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
        );
        let mut out = Vec::new();
        Response::new(200, "text/plain", "hi\n").write_for(Method::Head, &mut out);
        assert!(out.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\n"));
        let mut out = Vec::new();
        Response::new(200, "a\r\nSet-Cookie: x", "")
            .with_header("X\r\n", "1\r\n2")
            .write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: aSet-Cookie: x\r\n"), "{text}");
        assert!(text.contains("X: 12\r\n"), "{text}");
        let mut out = Vec::new();
        Response::new(200, "text/plain", "ignored")
            .with_header("X", "1")
            .write_streaming_head_to(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nX: 1\r\n\r\n"
        );
        let mut out = Vec::new();
        HttpError::MethodNotAllowed.response().write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("Allow: GET, HEAD, POST\r\n"));
        for e in [HttpError::UriTooLong, HttpError::HeaderFieldsTooLarge("x")] {
            let r = e.response();
            assert_eq!(r.status, e.status());
            assert!(r.body.starts_with(e.status().to_string().as_bytes()));
        }
    }

    #[test]
    fn prometheus() {
        let m = metric(
            "tether_rx_bytes_total",
            "Bytes received.\nPer \\ interface",
            MetricType::Counter,
            &[("if", "usb0"), ("note", "a\"b\\c\nd")],
            12345u64,
        );
        assert_eq!(
            m,
            "# HELP tether_rx_bytes_total Bytes received.\\nPer \\\\ interface\n\
             # TYPE tether_rx_bytes_total counter\n\
             tether_rx_bytes_total{if=\"usb0\",note=\"a\\\"b\\\\c\\nd\"} 12345\n"
        );
        assert_eq!(
            metric(
                "0bad-name",
                "h",
                MetricType::Gauge,
                &[("la:bel", "v")],
                -1i64
            ),
            "# HELP _0bad_name h\n# TYPE _0bad_name gauge\n_0bad_name{la_bel=\"v\"} -1\n"
        );
        let mut s = String::new();
        write_sample(&mut s, "x", &[], f64::NAN.into());
        write_sample(&mut s, "x", &[], f64::INFINITY.into());
        write_sample(&mut s, "x", &[], 0.25.into());
        assert_eq!(s, "x NaN\nx +Inf\nx 0.25\n");
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let seed =
            b"POST /metrics?a=b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nX: y\r\n\r\nbody";
        let alphabet = b"GET POST/: \r\n\t\x00\xffHTP1.0-9Content-Length";
        for round in 0..20_000 {
            let mut buf = seed.to_vec();
            match round % 3 {
                0 => {
                    for _ in 0..(rng.next() % 4 + 1) {
                        let i = (rng.next() % buf.len() as u64) as usize;
                        buf[i] = alphabet[(rng.next() % alphabet.len() as u64) as usize];
                    }
                }
                1 => {
                    let i = (rng.next() % buf.len() as u64) as usize;
                    let n = (rng.next() % 2000) as usize;
                    let b = alphabet[(rng.next() % alphabet.len() as u64) as usize];
                    buf.splice(i..i, core::iter::repeat_n(b, n));
                }
                _ => {
                    let n = (rng.next() % 600) as usize;
                    buf = (0..n).map(|_| rng.next() as u8).collect();
                }
            }
            match parse_request(&buf) {
                Ok(Some(r)) => {
                    assert!(r.len <= buf.len());
                    assert!(r.body.len() <= MAX_BODY && r.headers.len() <= MAX_HEADERS);
                }
                Ok(None) => assert!(buf.len() <= MAX_HEAD + MAX_BODY),
                Err(e) => assert!(matches!(e.status(), 400 | 405 | 413 | 414 | 431 | 505)),
            }
        }
    }
}
