//! Host-driven recovery tests (issue 6): a wedged usb-net under an echo stream of random bytes
//! is detected by the TX watchdog and reset, a failing reset is retried, the fault-injection
//! endpoint refuses requests without the boot token, and an unplug/replug under load keeps the
//! interface and the TCP connection. Every byte of the stream is checked once and in order.

use crate::bench_recovery::{kernel_time, Load, Traffic};
use crate::boots::{failure_context, BootSettings};
use crate::instance::{Instance, Wait};
use crate::preset::Machine;
use crate::report::TestOutcome;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The boot token these tests use.
const TOKEN: &str = "t0ken";
const MAC: &str = "52:54:00:12:34:56";
const ECHO_PORT: u16 = 7;
const HTTP_PORT: u16 = 80;

/// `net::wedge_recovery`.
pub const WEDGE_NAME: &str = "wedge_recovery";
/// `net::fault_token`.
pub const TOKEN_NAME: &str = "fault_token";
/// `net::unplug_under_load`.
pub const UNPLUG_NAME: &str = "unplug_under_load";

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Boots usb-net with echo and HTTP forwarded and a QMP socket, waits for the interface, and
/// hands the instance and the two host ports to `drive`.
fn boot(
    kernel: &Path,
    settings: &BootSettings,
    name: &str,
    drive: impl FnOnce(&mut Instance, u16, u16) -> Result<String, String>,
) -> TestOutcome {
    let test = format!("net::{name}");
    let (echo, http) = match (free_port(), free_port()) {
        (Ok(a), Ok(b)) if a != b => (a, b),
        _ => return TestOutcome::fail(test, "no free loopback ports"),
    };
    let mut machine = Machine::pvh(kernel, format!("faults={TOKEN}"));
    machine.extra_args.extend(
        [
            "-device",
            "qemu-xhci,id=xhci",
            "-netdev",
            &format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{echo}-:{ECHO_PORT},hostfwd=tcp:127.0.0.1:{http}-:{HTTP_PORT}"
            ),
            "-device",
            &format!("usb-net,bus=xhci.0,netdev=n0,id=usbnet0,mac={MAC}"),
        ]
        .map(String::from),
    );
    machine.qmp = Some(settings.qmp_socket(name));
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
    let result = match q.wait_for(started + Duration::from_secs(60), |l| {
        l.contains(tether_tests::net::INTERFACE_UP)
    }) {
        Wait::Found(_) => drive(&mut q, echo, http),
        other => Err(format!("the interface did not come up: {other:?}")),
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

/// Waits for a console line containing `text`; returns it.
fn line(q: &mut Instance, text: &str, timeout: Duration) -> Result<String, String> {
    match q.wait_for(Instant::now() + timeout, |l| l.contains(text)) {
        Wait::Found(line) => Ok(line),
        other => Err(format!(
            "no `{text}` line within {} s ({other:?})",
            timeout.as_secs()
        )),
    }
}

/// Waits until the stream moved after `after`; fails if the connection failed.
fn resumed(traffic: &Traffic, after: Instant, what: &str) -> Result<f64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = traffic.moved_after(after) {
            return Ok((at - after).as_secs_f64());
        }
        if let Some(error) = traffic.error() {
            return Err(format!("{what}: the echo stream failed: {error}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: the echo stream did not resume within 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn requeued(line: &str) -> Option<u64> {
    line.split("; ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A wedge during an echo stream: the watchdog resets, unsent frames are requeued, the stream
/// resumes with every byte once and in order. Then a reset made to fail twice is retried with
/// backoff until it succeeds, and the stream is still intact.
pub fn run_wedge_recovery_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot(kernel, settings, WEDGE_NAME, |q, echo, _| {
        let traffic = Traffic::start(echo, Load::Busy).map_err(|e| format!("{e:#}"))?;
        std::thread::sleep(Duration::from_secs(2));
        q.send_serial_line(&format!("fault {TOKEN} eth0 wedge"))
            .map_err(|e| e.to_string())?;
        let injected = line(q, "fault injected: wedge", Duration::from_secs(10))?;
        let fired = line(q, "no completion; resetting", Duration::from_secs(10))?;
        let detected_at = Instant::now();
        let done = line(q, "reset done", Duration::from_secs(10))?;
        let detect = kernel_time(&fired)
            .zip(kernel_time(&injected))
            .map(|(b, a)| b - a);
        let requeued = requeued(&done).ok_or(format!("no requeue count in `{done}`"))?;
        resumed(&traffic, detected_at, "after the reset")?;

        // A reset that fails twice: retried with backoff, then done.
        q.send_serial_line(&format!("fault {TOKEN} eth0 fail-reset:2"))
            .map_err(|e| e.to_string())?;
        line(q, "fault injected: fail-reset:2", Duration::from_secs(10))?;
        q.send_serial_line(&format!("fault {TOKEN} eth0 wedge"))
            .map_err(|e| e.to_string())?;
        line(q, "fault injected: wedge", Duration::from_secs(10))?;
        for attempt in 1..=2 {
            line(
                q,
                "reset failed: injected reset failure",
                Duration::from_secs(10),
            )
            .map_err(|e| format!("failed attempt {attempt}: {e}"))?;
            line(q, "retrying the reset in", Duration::from_secs(5))?;
        }
        line(q, "reset done", Duration::from_secs(10))?;
        let retried_at = Instant::now();
        resumed(&traffic, retried_at, "after the retried reset")?;
        std::thread::sleep(Duration::from_secs(1));
        let (bytes, error) = traffic.finish();
        if let Some(error) = error {
            return Err(format!("echo stream: {error}"));
        }
        if bytes < 1 << 20 {
            return Err(format!("only {bytes} bytes came back"));
        }
        Ok(format!(
            "wedge detected in {:.2} s, {requeued} frames requeued; a reset failing twice was retried; {bytes} bytes echoed once and in order",
            detect.unwrap_or(f64::NAN)
        ))
    })
}

/// One HTTP request over raw TCP; returns the status code and the body.
fn http(port: u16, request: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn post_fault(port: u16, body: &str) -> Result<(u16, String), String> {
    http(
        port,
        &format!(
            "POST /fault HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn metric(port: u16, name: &str) -> Result<u64, String> {
    let (status, body) = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .ok_or(format!("/metrics has no {name}"))
}

/// The injection endpoint refuses requests without the boot token (HTTP 403, console refusal,
/// counted), rejects unknown faults and interfaces (400), and injects with the token.
pub fn run_fault_token_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot(kernel, settings, TOKEN_NAME, |q, _, http_port| {
        let refused = "tether_fault_requests_refused_total";
        let before = metric(http_port, refused)?;
        for (body, expected) in [
            ("iface=eth0&fault=wedge", 400),
            ("token=&iface=eth0&fault=wedge", 403),
            ("token=t0ke&iface=eth0&fault=wedge", 403),
            ("token=t0ken!&iface=eth0&fault=wedge", 403),
            (&format!("token={TOKEN}&iface=eth0&fault=melt") as &str, 400),
            (&format!("token={TOKEN}&iface=eth7&fault=wedge"), 400),
        ] {
            let (status, reply) = post_fault(http_port, body)?;
            if status != expected {
                return Err(format!(
                    "POST /fault {body:?}: {status} ({reply:?}), expected {expected}"
                ));
            }
        }
        q.send_serial_line("fault wrong eth0 wedge")
            .map_err(|e| e.to_string())?;
        line(
            q,
            "fault: refused: wrong or missing token",
            Duration::from_secs(10),
        )?;
        let after = metric(http_port, refused)?;
        if after != before + 4 {
            return Err(format!("refusals counted {before} -> {after}, expected +4"));
        }
        // With the token: a real injection (a stall on bulk IN, which the driver clears).
        let (status, reply) =
            post_fault(http_port, &format!("token={TOKEN}&iface=eth0&fault=stall"))?;
        if status != 200 {
            return Err(format!("POST /fault with the token: {status} ({reply:?})"));
        }
        if metric(http_port, "tether_faults_injected_total")? != 1 {
            return Err("the injection was not counted".into());
        }
        Ok("4 requests without the right token refused (403, console) and counted; bad fault and interface 400; injection with the token done".into())
    })
}

/// `device_del` + `device_add` of the usb-net under an echo stream: the interface keeps its
/// name and addresses, and the TCP connection resumes with every byte intact.
pub fn run_unplug_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot(kernel, settings, UNPLUG_NAME, |q, echo, _| {
        let mut qmp = q
            .connect_qmp(Duration::from_secs(10))
            .map_err(|e| format!("QMP: {e:#}"))?;
        let traffic = Traffic::start(echo, Load::Busy).map_err(|e| format!("{e:#}"))?;
        std::thread::sleep(Duration::from_secs(2));
        qmp.device_del("usbnet0")
            .map_err(|e| format!("device_del: {e:#}"))?;
        line(q, "usb: detached", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(500));
        let added = Instant::now();
        qmp.device_add(
            "usb-net",
            &[
                ("bus", "xhci.0"),
                ("netdev", "n0"),
                ("id", "usbnet0"),
                ("mac", MAC),
            ],
        )
        .map_err(|e| format!("device_add: {e:#}"))?;
        line(
            q,
            "eth0: device back, interface kept",
            Duration::from_secs(20),
        )?;
        let moving = resumed(&traffic, added, "after device_add")?;
        std::thread::sleep(Duration::from_secs(1));
        let (bytes, error) = traffic.finish();
        if let Some(error) = error {
            return Err(format!("echo stream: {error}"));
        }
        Ok(format!(
            "eth0 kept across the replug; stream moving {moving:.2} s after device_add; {bytes} bytes echoed once and in order"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_count_from_the_reset_line() {
        assert_eq!(
            requeued(
                "[ 14.05] WARN  usb::bulknic: eth0: reset done in 8435 us; 31 frames requeued"
            ),
            Some(31)
        );
        assert_eq!(requeued("reset done"), None);
    }
}
