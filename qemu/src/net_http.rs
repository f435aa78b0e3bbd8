//! The host-driven HTTP tests ([`tether_tests::http`]): a boot with usb-net and user
//! networking forwarding a free loopback port to the guest's port 80, then `curl` and raw TCP
//! against the kernel's HTTP service; and the same machine with static addressing.

use crate::boots::{failure_context, free_loopback_ports, BootSettings};
use crate::instance::{Instance, Wait};
use crate::preset::Machine;
use crate::report::TestOutcome;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tether_tests::http::{self as cases, HttpReply, Sample};
use tether_tests::net;
use tether_tests::protocol::KernelExit;

/// From QEMU's start to the interface's announcement.
const INTERFACE_TIMEOUT: Duration = Duration::from_secs(60);
/// Per request: curl's `--max-time`, and raw TCP's connect, read and write timeouts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `net::net_http`: `/`, `/metrics` twice, `/trace` with `curl`; malformed, oversized, unknown
/// and refused requests over raw TCP; all while two half-sent requests hold connections.
pub fn run_net_http_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot_forwarding(kernel, settings, cases::HTTP_NAME, "", |_, port, line| {
        if !line.contains(net::DHCP_LEASE) {
            return Err(format!("expected `{}`, got `{line}`", net::DHCP_LEASE));
        }
        check_http(port)
    })
}

/// `net::net_static`: `ip=`/`gw=` on the command line; the announcement says `static` and the
/// status page, fetched through the forward, shows the static address.
pub fn run_net_static_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    let name = cases::STATIC_NAME;
    boot_forwarding(
        kernel,
        settings,
        name,
        cases::STATIC_CMDLINE,
        |_, port, line| {
            if !line.contains(cases::STATIC_ANNOUNCEMENT) {
                return Err(format!(
                    "expected `{}`, got `{line}`",
                    cases::STATIC_ANNOUNCEMENT
                ));
            }
            let page = curl(port, "/")?;
            expect_status(&page, 200, "/")?;
            let text = page.text();
            if !text.contains("10.0.2.15/24 gateway 10.0.2.2 (static)") {
                return Err(format!("the status page lacks the static address:\n{text}"));
            }
            Ok(format!(
                "{}; status page through the forward shows it",
                cases::STATIC_ANNOUNCEMENT
            ))
        },
    )
}

/// Boots `name` on usb-net with a free loopback port forwarded to guest port 80, waits for
/// the interface's announcement and hands the port and that line to `drive`.
fn boot_forwarding(
    kernel: &Path,
    settings: &BootSettings,
    name: &str,
    cmdline: &str,
    drive: impl FnOnce(&mut Instance, u16, &str) -> Result<String, String>,
) -> TestOutcome {
    let test = format!("net::{name}");
    let port = match free_loopback_ports(1) {
        Ok(ports) => ports[0],
        Err(reason) => return TestOutcome::fail(test, reason),
    };
    let mut machine = Machine::pvh(kernel, cmdline);
    machine
        .extra_args
        .extend(cases::usb_net_forwarding(&[(port, cases::HTTP_PORT)]));
    let (mut q, log) = match settings.spawn(name, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => {
            return TestOutcome {
                name: test,
                ..failure
            }
        }
    };
    let started = Instant::now();
    let result = match q.wait_for(started + INTERFACE_TIMEOUT, |l| {
        l.contains(net::INTERFACE_UP)
    }) {
        Wait::Found(line) => drive(&mut q, port, &line),
        Wait::Exited(status) => Err(format!("QEMU exited: {}", KernelExit::from_status(status))),
        Wait::TimedOut => Err(format!(
            "no `{}` line within {} s",
            net::INTERFACE_UP,
            INTERFACE_TIMEOUT.as_secs()
        )),
    };
    q.kill();
    let outcome = match result {
        Ok(summary) => TestOutcome::pass(
            &test,
            format!("{summary} ({:.1} s)", started.elapsed().as_secs_f64()),
        ),
        Err(reason) => TestOutcome::fail(&test, reason),
    };
    outcome.with_context(failure_context(&q, &log, &machine))
}

/// `curl` of `path` on the forwarded port: the whole reply, head included.
fn curl(port: u16, path: &str) -> Result<HttpReply, String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--include", "--noproxy", "*"])
        .args(["--max-time", &REQUEST_TIMEOUT.as_secs().to_string()])
        .arg(&url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ));
    }
    cases::parse_reply(&out.stdout).map_err(|e| format!("curl {url}: {e}"))
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends `request` over a fresh connection and reads until the server closes.
fn exchange(port: u16, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = connect(port)?;
    // A server that answers before taking the whole request may make this write fail; its
    // answer is what counts.
    let written = stream.write_all(request);
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if reply.is_empty() => {
                return Err(format!("read: {e} (write: {written:?})"));
            }
            // Reset after the answer: the answer is complete or the parse below says not.
            Err(_) => break,
        }
    }
    Ok(reply)
}

fn expect_status(reply: &HttpReply, status: u16, what: &str) -> Result<(), String> {
    if reply.status != status {
        return Err(format!(
            "{what}: status {} (expected {status}): {}",
            reply.status,
            reply.text().chars().take(300).collect::<String>()
        ));
    }
    if reply.header("Connection") != Some("close") {
        return Err(format!("{what}: no `Connection: close`"));
    }
    Ok(())
}

fn scrape(port: u16) -> Result<Vec<Sample>, String> {
    let reply = curl(port, "/metrics")?;
    expect_status(&reply, 200, "/metrics")?;
    let content_type = reply.header("Content-Type").unwrap_or("");
    if !content_type.starts_with("text/plain; version=0.0.4") {
        return Err(format!("/metrics: content type {content_type:?}"));
    }
    cases::parse_prometheus(&reply.text()).map_err(|e| format!("/metrics: {e}"))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    cases::sample_value(samples, name, labels)
        .ok_or_else(|| format!("/metrics: no sample {name}{labels:?}"))
}

fn check_http(port: u16) -> Result<String, String> {
    // Two clients that send half a request and wait: they must not hold up anyone else.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(port)?;
        stream
            .write_all(cases::HALF_REQUEST)
            .map_err(|e| format!("half request: {e}"))?;
        stalled.push(stream);
    }

    let page = curl(port, "/")?;
    expect_status(&page, 200, "/")?;
    let text = page.text();
    for needle in cases::STATUS_PAGE_MUST_CONTAIN {
        if !text.contains(needle) {
            return Err(format!("/ lacks {needle:?}:\n{text}"));
        }
    }

    let first = scrape(port)?;
    for name in cases::KEY_METRICS {
        if !first.iter().any(|s| s.name == *name) {
            return Err(format!("/metrics: no {name}"));
        }
    }
    let eth0 = [("interface", "eth0")];
    let rx_before = value(&first, "tether_interface_rx_frames_total", &eth0)?;
    if rx_before <= 0.0 {
        return Err(format!("/metrics: eth0 rx frames {rx_before}"));
    }
    let bulk_bytes: f64 = first
        .iter()
        .filter(|s| s.name == "tether_usb_pipe_bytes_total" && s.label("kind") == Some("bulk"))
        .map(|s| s.value)
        .sum();
    if bulk_bytes <= 0.0 {
        return Err("/metrics: no bytes on any bulk pipe".to_string());
    }

    let trace = curl(port, "/trace")?;
    expect_status(&trace, 200, "/trace")?;
    let trace_text = trace.text();
    for needle in cases::TRACE_MUST_CONTAIN {
        if !trace_text.contains(needle) {
            return Err(format!("/trace lacks {needle:?}"));
        }
    }
    let records = trace_text.lines().count();

    let raw_cases = cases::raw_cases();
    for case in &raw_cases {
        let bytes = exchange(port, &case.request).map_err(|e| format!("{}: {e}", case.what))?;
        let reply = cases::parse_reply(&bytes).map_err(|e| format!("{}: {e}", case.what))?;
        expect_status(&reply, case.status, case.what)?;
    }
    let good = exchange(port, cases::GOOD_REQUEST).map_err(|e| format!("good request: {e}"))?;
    let good = cases::parse_reply(&good).map_err(|e| format!("good request: {e}"))?;
    expect_status(&good, 200, "GET /metrics after the refused requests")?;
    cases::parse_prometheus(&good.text()).map_err(|e| format!("/metrics: {e}"))?;

    let second = scrape(port)?;
    let rx_after = value(&second, "tether_interface_rx_frames_total", &eth0)?;
    if rx_after <= rx_before {
        return Err(format!(
            "eth0 rx frames did not grow between scrapes: {rx_before} -> {rx_after}"
        ));
    }
    // Every answer above is counted by status (the half requests are not answered yet).
    let mut expected_counts = std::collections::BTreeMap::new();
    for status in raw_cases.iter().map(|c| c.status).chain([200; 4]) {
        *expected_counts.entry(status).or_insert(0u32) += 1;
    }
    for (status, count) in &expected_counts {
        let code = status.to_string();
        let counted = value(
            &second,
            "tether_http_responses_total",
            &[("code", code.as_str())],
        )?;
        if counted < f64::from(*count) {
            return Err(format!(
                "tether_http_responses_total{{code=\"{status}\"}} is {counted}, expected at least {count}"
            ));
        }
    }
    drop(stalled);
    Ok(format!(
        "/ {} bytes; /metrics {} samples, eth0 rx frames {rx_before} -> {rx_after}; /trace {records} records; {} refused requests answered {:?} and a good one after; 2 half requests held meanwhile",
        page.body.len(),
        second.len(),
        raw_cases.len(),
        expected_counts.keys().filter(|s| **s != 200).collect::<Vec<_>>()
    ))
}
