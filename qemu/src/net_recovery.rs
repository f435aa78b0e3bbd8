//! Host-driven recovery tests (issues 5 and 6): a wedged NIC (usb-net, virtio-net) under an
//! echo stream of random bytes is detected by the TX watchdog and reset, a failing reset is
//! retried, the fault-injection endpoint refuses requests without the boot token, an
//! unplug/replug under load keeps the interface and the TCP connection, and a usb-net wedged
//! and reset beside a virtio-net leaves the virtio interface's iperf3 throughput standing.
//! Every byte of an echo stream is checked once and in order.

use crate::bench_recovery::{kernel_time, Load, Traffic};
use crate::boots::{failure_context, free_loopback_ports, BootSettings};
use crate::instance::{Instance, Wait};
use crate::net_iperf3;
use crate::preset::Machine;
use crate::report::TestOutcome;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tether_tests::hotplug;
use tether_tests::iperf3::ClientRun;

/// The boot token these tests use.
const TOKEN: &str = "t0ken";
const MAC: &str = "52:54:00:12:34:56";
/// The virtio-net's MAC beside a usb-net (QEMU would give it the usb-net's `MAC` too).
const VIRTIO_MAC: &str = "52:54:00:12:34:57";
const ECHO_PORT: u16 = 7;
const HTTP_PORT: u16 = 80;
const IPERF3_PORT: u16 = 5201;

/// `net::wedge_recovery`.
pub const WEDGE_NAME: &str = "wedge_recovery";
/// `net::virtio_wedge_recovery`.
pub const VIRTIO_WEDGE_NAME: &str = "virtio_wedge_recovery";
/// `net::fault_token`.
pub const TOKEN_NAME: &str = "fault_token";
/// `net::unplug_under_load`.
pub const UNPLUG_NAME: &str = "unplug_under_load";
/// `net::link_down_under_load`.
pub const LINK_NAME: &str = "link_down_under_load";
/// `net::nic_isolation`.
pub const ISOLATION_NAME: &str = "nic_isolation";

/// The network of a recovery boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nics {
    /// usb-net (QMP id `usbnet0`) as eth0, echo and HTTP forwarded.
    UsbNet,
    /// virtio-net as eth0, echo and HTTP forwarded.
    Virtio,
    /// virtio-net as eth0 (DHCP on 10.0.2.0/24, iperf3 forwarded) beside usb-net as eth1 (its
    /// own user network 10.0.3.0/24, static, echo forwarded).
    VirtioBesideUsb,
}

/// Host ports forwarded to the guest's services (those a boot does not forward stay unused).
struct Ports {
    echo: u16,
    http: u16,
    iperf3: u16,
}

impl Nics {
    fn cmdline(self) -> String {
        match self {
            Nics::UsbNet | Nics::Virtio => format!("faults={TOKEN}"),
            Nics::VirtioBesideUsb => {
                format!("faults={TOKEN} ip.eth1=10.0.3.15/24 gw.eth1=10.0.3.2")
            }
        }
    }

    fn qemu_args(self, ports: &Ports) -> Vec<String> {
        let forward = |host: u16, guest: u16| format!("hostfwd=tcp:127.0.0.1:{host}-:{guest}");
        let services = format!(
            "user,id=n0,{},{}",
            forward(ports.echo, ECHO_PORT),
            forward(ports.http, HTTP_PORT)
        );
        let args: Vec<String> = match self {
            Nics::UsbNet => vec![
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-netdev".into(),
                services,
                "-device".into(),
                hotplug::device_add_text(),
            ],
            Nics::Virtio => vec![
                "-netdev".into(),
                services,
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,romfile=,mac={MAC}"),
            ],
            Nics::VirtioBesideUsb => vec![
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-netdev".into(),
                format!(
                    "user,id=n0,net=10.0.2.0/24,{}",
                    forward(ports.iperf3, IPERF3_PORT)
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,romfile=,mac={VIRTIO_MAC}"),
                "-netdev".into(),
                format!(
                    "user,id=n1,net=10.0.3.0/24,{}",
                    forward(ports.echo, ECHO_PORT)
                ),
                "-device".into(),
                format!("usb-net,bus=xhci.0,netdev=n1,id=usbnet0,mac={MAC}"),
            ],
        };
        args
    }

    /// What the interfaces' announcements start with, one per interface.
    fn announcements(self) -> &'static [&'static str] {
        match self {
            Nics::UsbNet | Nics::Virtio => &["eth0: "],
            Nics::VirtioBesideUsb => {
                &["eth0: DHCP lease 10.0.2.15/24", "eth1: static 10.0.3.15/24"]
            }
        }
    }
}

/// Boots `nics` with a QMP socket, waits for every interface, and hands the instance and the
/// host ports to `drive`.
fn boot(
    kernel: &Path,
    settings: &BootSettings,
    name: &str,
    nics: Nics,
    drive: impl FnOnce(&mut Instance, &Ports) -> Result<String, String>,
) -> TestOutcome {
    boot_with(kernel, settings, name, nics, &[], drive)
}

/// [`boot`] with extra QEMU arguments.
fn boot_with(
    kernel: &Path,
    settings: &BootSettings,
    name: &str,
    nics: Nics,
    qemu_args: &[&str],
    drive: impl FnOnce(&mut Instance, &Ports) -> Result<String, String>,
) -> TestOutcome {
    let test = format!("net::{name}");
    let ports = match free_loopback_ports(3).as_deref() {
        Ok(&[echo, http, iperf3]) => Ports { echo, http, iperf3 },
        Ok(_) => unreachable!("three ports were asked for"),
        Err(reason) => return TestOutcome::fail(test, reason),
    };
    let mut machine = Machine::pvh(kernel, nics.cmdline());
    machine.extra_args.extend(nics.qemu_args(&ports));
    machine
        .extra_args
        .extend(qemu_args.iter().map(|a| a.to_string()));
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
    let result = interfaces_up(
        &mut q,
        nics.announcements(),
        started + Duration::from_secs(60),
    )
    .and_then(|()| drive(&mut q, &ports));
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

/// Waits until every interface announced itself (a line with `INTERFACE_UP` starting as one of
/// `expected`).
fn interfaces_up(q: &mut Instance, expected: &[&str], deadline: Instant) -> Result<(), String> {
    let mut missing: Vec<&str> = expected.to_vec();
    while !missing.is_empty() {
        match q.wait_for(deadline, |l| l.contains(tether_tests::net::INTERFACE_UP)) {
            Wait::Found(line) => missing.retain(|start| !line.contains(start)),
            other => {
                return Err(format!(
                    "no `{}` announcement within 60 s ({other:?})",
                    missing.join("`, `")
                ))
            }
        }
    }
    Ok(())
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

/// A wedge of usb-net during an echo stream: see [`wedge_and_recover`].
pub fn run_wedge_recovery_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot(kernel, settings, WEDGE_NAME, Nics::UsbNet, |q, ports| {
        wedge_and_recover(q, ports.echo)
    })
}

/// The same for virtio-net: its reset is a virtio device reset. QEMU traces every change of a
/// BAR mapping: none may happen after boot, since moving a window while other CPUs do MMIO
/// misroutes their accesses under QEMU 7.2's TCG (see `tether_pci::SettledBars`), and
/// virtio-drivers sizes BARs on every transport it builds.
pub fn run_virtio_wedge_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot_with(
        kernel,
        settings,
        VIRTIO_WEDGE_NAME,
        Nics::Virtio,
        &["-trace", "pci_update_mappings*"],
        |q, ports| {
            let at_boot = bar_mapping_changes(q);
            if at_boot == 0 {
                return Err("QEMU traced no BAR mapping at all (tracing unavailable?)".into());
            }
            let summary = wedge_and_recover(q, ports.echo)?;
            let later = bar_mapping_changes(q) - at_boot;
            if later != 0 {
                return Err(format!(
                    "{later} BAR mapping changes after boot (a reset sized BARs)"
                ));
            }
            Ok(format!("{summary}; no BAR mapping changed after boot"))
        },
    )
}

/// How many BAR mappings QEMU added or removed so far (its `pci_update_mappings_*` trace).
fn bar_mapping_changes(q: &Instance) -> usize {
    q.stderr_text()
        .lines()
        .filter(|l| l.contains("pci_update_mappings_"))
        .count()
}

/// A wedge of eth0 during an echo stream: the watchdog resets, unsent frames are requeued, the
/// stream resumes with every byte once and in order. Then a reset made to fail twice is
/// retried with backoff until it succeeds, and the stream is still intact. No received frame
/// was dropped for want of room (the drivers hold the device back instead).
fn wedge_and_recover(q: &mut Instance, echo: u16) -> Result<String, String> {
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
    let queue_full_drops = rx_dropped_queue_full(q, "eth0")?;
    if queue_full_drops != 0 {
        return Err(format!(
            "{queue_full_drops} received frames dropped for a full queue (back-pressure failed)"
        ));
    }
    Ok(format!(
        "wedge detected in {:.2} s, {requeued} frames requeued; a reset failing twice was retried; {bytes} bytes echoed once and in order; no received frame dropped",
        detect.unwrap_or(f64::NAN)
    ))
}

/// `ifconfig`'s count of frames `interface` dropped because the stack's queue was full.
fn rx_dropped_queue_full(q: &mut Instance, interface: &str) -> Result<u64, String> {
    let from = q.lines().len();
    q.send_serial_line(tether_tests::net::IFCONFIG)
        .map_err(|e| e.to_string())?;
    let header = format!("{interface}: mac ");
    let (at, _) = net_iperf3::find_line(q, from, Duration::from_secs(10), "ifconfig", |l| {
        l.starts_with(&header)
    })?;
    let (_, rx) = net_iperf3::find_line(q, at, Duration::from_secs(10), "ifconfig rx", |l| {
        l.trim_start().starts_with("rx ")
    })?;
    queue_full_drops(&rx).ok_or(format!("no queue-full count in `{rx}`"))
}

/// `  rx 5623 frames 4500500 bytes, 7 dropped (queue full), 0 malformed` gives 7.
fn queue_full_drops(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" dropped (queue full)")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// An iperf3 run over the virtio interface for the isolation test.
const fn isolation_run(name: &'static str) -> ClientRun {
    ClientRun::one_stream(name, &["-t", "5"], false)
}
const ISOLATION_BASELINE: ClientRun = isolation_run("nic_isolation_baseline");
const ISOLATION_DURING: ClientRun = isolation_run("nic_isolation_during_wedge");
/// When, after the second iperf3 client starts, usb-net is wedged.
const WEDGE_AFTER: Duration = Duration::from_millis(500);
/// The virtio interface's throughput while usb-net is wedged and reset must be at least this
/// share of the baseline. It is expected to be about the same, or higher (the wedged usb-net's
/// echo stream stops competing for the guest's CPUs), but other guests on the host swing a
/// run's rate: 62-167% measured beside another engineer's QEMU benchmarks, whose load also
/// moved a baseline's own seconds between 84 and 294 Mbit/s.
const ISOLATION_MIN_RATIO: f64 = 0.4;
/// No second of that run may fall below this share of the baseline: the wedge and reset last
/// 2-3 s of the 5, so a virtio interface held up by them would show seconds near zero, which
/// the whole run's rate could average away.
const ISOLATION_MIN_SECOND_RATIO: f64 = 0.1;

/// Issue 5's isolation: virtio-net (eth0) and usb-net (eth1) in one guest, an echo stream of
/// random bytes busy on usb-net throughout. A stock iperf3 client runs 5 s over virtio-net for
/// a baseline, then again while usb-net is wedged (0.5 s in) and reset by its watchdog: the
/// second run completes, its throughput does not collapse against the baseline (as a whole and
/// in any second of it), the wedge and the reset both fall inside it, and the usb-net echo
/// stream recovers with every byte intact.
pub fn run_nic_isolation_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    if !crate::deps::on_path("iperf3") {
        return TestOutcome::fail(
            format!("net::{ISOLATION_NAME}"),
            "the iperf3 client is not installed (Debian package iperf3)",
        );
    }
    boot(
        kernel,
        settings,
        ISOLATION_NAME,
        Nics::VirtioBesideUsb,
        |q, ports| {
            let traffic = Traffic::start(ports.echo, Load::Busy).map_err(|e| format!("{e:#}"))?;
            std::thread::sleep(Duration::from_secs(1));
            let iperf3 = SocketAddr::from(([127, 0, 0, 1], ports.iperf3));
            let client = net_iperf3::start_client(q, iperf3, &ISOLATION_BASELINE, settings)?;
            let baseline = net_iperf3::finish_client(q, iperf3, &ISOLATION_BASELINE, client)
                .map_err(|e| format!("baseline iperf3 run: {e}"))?;

            let from = q.lines().len();
            let client = net_iperf3::start_client(q, iperf3, &ISOLATION_DURING, settings)?;
            let client_started = Instant::now();
            std::thread::sleep(WEDGE_AFTER);
            q.send_serial_line(&format!("fault {TOKEN} eth1 wedge"))
                .map_err(|e| e.to_string())?;
            let during = net_iperf3::finish_client(q, iperf3, &ISOLATION_DURING, client)
                .map_err(|e| format!("iperf3 run during the usb-net wedge: {e}"))?;
            let arrival = |q: &mut Instance, text: &str| {
                net_iperf3::find_line(q, from, Duration::from_secs(10), text, |l| l.contains(text))
                    .map(|(at, line)| (q.lines()[at].at, line))
            };
            let (injected_at, injected) = arrival(q, "eth1: fault injected: wedge")?;
            let (_, fired) = arrival(q, "eth1: watchdog")?;
            let (reset_at, _) = arrival(q, "eth1: reset done")?;
            if injected_at < client_started || reset_at > during.exited_at {
                return Err(format!(
                    "the usb-net wedge and reset ({:.2} s to {:.2} s after the client started) fell outside the iperf3 run ({:.2} s)",
                    (injected_at - client_started).as_secs_f64(),
                    (reset_at - client_started).as_secs_f64(),
                    (during.exited_at - client_started).as_secs_f64(),
                ));
            }
            let detect = kernel_time(&fired)
                .zip(kernel_time(&injected))
                .map(|(b, a)| b - a);
            let moving = resumed(&traffic, reset_at, "usb-net after its reset")?;
            std::thread::sleep(Duration::from_secs(1));
            let (bytes, error) = traffic.finish();
            if let Some(error) = error {
                return Err(format!("usb-net echo stream: {error}"));
            }
            let ratio = during.mbit_per_s / baseline.mbit_per_s;
            let slowest_second = during
                .interval_mbit_per_s
                .iter()
                .copied()
                .reduce(f64::min)
                .ok_or("the iperf3 run during the wedge reported no intervals")?;
            let figures = format!(
                "virtio iperf3 {:.0} Mbit/s before, {:.0} Mbit/s while usb-net was wedged and reset ({:.0}%; slowest second {slowest_second:.0})",
                baseline.mbit_per_s,
                during.mbit_per_s,
                ratio * 100.0
            );
            if ratio < ISOLATION_MIN_RATIO {
                return Err(format!(
                    "{figures}: below {:.0}% of the baseline",
                    ISOLATION_MIN_RATIO * 100.0
                ));
            }
            if slowest_second < baseline.mbit_per_s * ISOLATION_MIN_SECOND_RATIO {
                return Err(format!(
                    "{figures}: a second below {:.0}% of the baseline",
                    ISOLATION_MIN_SECOND_RATIO * 100.0
                ));
            }
            Ok(format!(
                "{figures}; usb-net wedge detected in {:.2} s and reset within the run, its echo stream moving {moving:.2} s after, {bytes} bytes echoed once and in order",
                detect.unwrap_or(f64::NAN)
            ))
        },
    )
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
    boot(kernel, settings, TOKEN_NAME, Nics::UsbNet, |q, ports| {
        let http_port = ports.http;
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
    boot(kernel, settings, UNPLUG_NAME, Nics::UsbNet, |q, ports| {
        let echo = ports.echo;
        let mut qmp = q
            .connect_qmp(Duration::from_secs(10))
            .map_err(|e| format!("QMP: {e:#}"))?;
        let traffic = Traffic::start(echo, Load::Busy).map_err(|e| format!("{e:#}"))?;
        std::thread::sleep(Duration::from_secs(2));
        qmp.device_del(hotplug::DEVICE_ID)
            .map_err(|e| format!("device_del: {e:#}"))?;
        line(q, "usb: detached", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(500));
        let added = Instant::now();
        qmp.device_add(hotplug::DEVICE_DRIVER, hotplug::DEVICE_PROPS)
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

/// QMP `set_link off` for 3 s under an echo stream, then `on`: QEMU's usb-net drops every
/// frame meanwhile without telling the guest (FACTS.md), so nothing in the kernel notices; TCP
/// retransmits, and the stream must resume with every byte intact once the link is back. (The
/// TX watchdog must not fire: the device still completes every transfer.)
pub fn run_link_down_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    boot(kernel, settings, LINK_NAME, Nics::UsbNet, |q, ports| {
        let echo = ports.echo;
        let mut qmp = q
            .connect_qmp(Duration::from_secs(10))
            .map_err(|e| format!("QMP: {e:#}"))?;
        let traffic = Traffic::start(echo, Load::Busy).map_err(|e| format!("{e:#}"))?;
        std::thread::sleep(Duration::from_secs(2));
        qmp.set_link("n0", false)
            .map_err(|e| format!("set_link off: {e:#}"))?;
        let down = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        // Taken before the command: QEMU brings the link up before it answers, and a
        // retransmission can come back while the answer is on its way.
        let back = Instant::now();
        qmp.set_link("n0", true)
            .map_err(|e| format!("set_link on: {e:#}"))?;
        // The link really was down: nothing came back from half a second after `off` (what was
        // in flight may still arrive) until `on` was sent.
        if let Some(at) = traffic
            .moved_after(down + Duration::from_millis(500))
            .filter(|at| *at < back)
        {
            return Err(format!(
                "bytes came back {:.2} s after set_link off",
                (at - down).as_secs_f64()
            ));
        }
        let moving = resumed(&traffic, back, "after set_link on")?;
        std::thread::sleep(Duration::from_secs(1));
        let (bytes, error) = traffic.finish();
        if let Some(error) = error {
            return Err(format!("echo stream: {error}"));
        }
        if q.texts()
            .iter()
            .any(|l| l.contains("no completion; resetting"))
        {
            return Err("the TX watchdog fired although the device kept completing".into());
        }
        Ok(format!(
            "link down 3 s: stream moving {moving:.2} s after set_link on; {bytes} bytes echoed once and in order; no watchdog reset"
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
        assert_eq!(
            requeued("[ 3.07] WARN  virtio::net: eth0: reset done in 8798 us; 84 frames requeued, 0 dropped, 44 found sent"),
            Some(84)
        );
    }

    #[test]
    fn queue_full_drops_from_ifconfig() {
        assert_eq!(
            queue_full_drops("  rx 5623 frames 4500500 bytes, 7 dropped (queue full), 0 malformed"),
            Some(7)
        );
        assert_eq!(queue_full_drops("  rx 5623 frames"), None);
    }

    #[test]
    fn isolation_machine_forwards_iperf3_to_virtio_and_echo_to_usb() {
        let ports = Ports {
            echo: 1,
            http: 2,
            iperf3: 3,
        };
        let args = Nics::VirtioBesideUsb.qemu_args(&ports);
        let pairs: Vec<(&str, &str)> = args
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("-device", "qemu-xhci,id=xhci"),
                (
                    "-netdev",
                    "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:3-:5201"
                ),
                (
                    "-device",
                    "virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:12:34:57"
                ),
                (
                    "-netdev",
                    "user,id=n1,net=10.0.3.0/24,hostfwd=tcp:127.0.0.1:1-:7"
                ),
                (
                    "-device",
                    "usb-net,bus=xhci.0,netdev=n1,id=usbnet0,mac=52:54:00:12:34:56"
                ),
            ]
        );
        assert!(Nics::VirtioBesideUsb
            .cmdline()
            .contains("ip.eth1=10.0.3.15/24"));
        assert_eq!(Nics::VirtioBesideUsb.announcements().len(), 2);
    }
}
