//! The host-driven iperf3 tests ([`tether_tests::iperf3`]): one boot with usb-net and user
//! networking forwarding a free loopback port to the guest's 5201; the malformed control
//! exchanges, then the stock `iperf3` client's runs, each judged against the kernel's line for
//! its test. Every socket operation, client run and wait for a serial line has a timeout.

use crate::boots::{failure_context, BootSettings};
use crate::deps;
use crate::instance::{Instance, Wait};
use crate::preset::Machine;
use crate::report::TestOutcome;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tether_tests::iperf3::{self as spec, ClientRun, MalformedCase};
use tether_tests::net;
use tether_tests::protocol::KernelExit;

/// How long the kernel gets to its DHCP lease.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn outcome_name(test: &str) -> String {
    format!("net::{test}")
}

/// Boots once and runs every iperf3 test: one outcome per test, all failed with the same
/// reason when the boot or the host cannot run them.
pub fn run_iperf3_tests(kernel: &Path, settings: &BootSettings) -> Vec<TestOutcome> {
    run_suite(
        kernel,
        settings,
        spec::BOOT_NAME,
        spec::machine_args,
        true,
        &spec::CLIENT_RUNS,
    )
}

/// The stock client in both directions over virtio-net (issue 5), one boot.
pub fn run_iperf3_virtio_tests(kernel: &Path, settings: &BootSettings) -> Vec<TestOutcome> {
    run_suite(
        kernel,
        settings,
        spec::VIRTIO_BOOT_NAME,
        spec::virtio_machine_args,
        false,
        &spec::VIRTIO_RUNS,
    )
}

/// One boot on the machine `machine_args` describes: the malformed exchanges (when
/// `malformed`), then `runs` in order.
fn run_suite(
    kernel: &Path,
    settings: &BootSettings,
    boot_name: &str,
    machine_args: fn(u16) -> Vec<String>,
    malformed: bool,
    runs: &[spec::ClientRun],
) -> Vec<TestOutcome> {
    let names: Vec<String> = malformed
        .then_some(spec::MALFORMED_NAME)
        .into_iter()
        .chain(runs.iter().map(|run| run.name))
        .map(outcome_name)
        .collect();
    let fail_all = |reason: &str, context: Vec<String>| -> Vec<TestOutcome> {
        names
            .iter()
            .map(|name| TestOutcome::fail(name, reason).with_context(context.clone()))
            .collect()
    };
    if !deps::on_path("iperf3") {
        return fail_all(
            "the iperf3 client is not installed (Debian package iperf3)",
            vec![],
        );
    }
    let port = match crate::boots::free_loopback_ports(1) {
        Ok(ports) => ports[0],
        Err(reason) => return fail_all(&reason, vec![]),
    };
    let mut machine = Machine::pvh(kernel, "");
    machine.extra_args.extend(machine_args(port));
    let (mut q, log) = match settings.spawn(boot_name, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => {
            let reason = failure.result.err().unwrap_or_default();
            return fail_all(&reason, failure.context);
        }
    };
    if let Err(reason) = await_service(&mut q) {
        q.kill();
        return fail_all(&reason, failure_context(&q, &log, &machine));
    }
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut results = Vec::new();
    if malformed {
        results.push((
            outcome_name(spec::MALFORMED_NAME),
            malformed_exchanges(&mut q, address),
        ));
    }
    for run in runs {
        let result = client_run(&mut q, address, run, settings);
        results.push((outcome_name(run.name), result));
    }
    q.kill();
    let context = failure_context(&q, &log, &machine);
    results
        .into_iter()
        .map(|(name, result)| match result {
            Ok(summary) => TestOutcome::pass(name, summary),
            Err(reason) => TestOutcome::fail(name, reason).with_context(context.clone()),
        })
        .collect()
}

/// Waits for the interface's DHCP lease with the iperf3 service listed.
fn await_service(q: &mut Instance) -> Result<(), String> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    match q.wait_for(deadline, |l| l.contains(net::INTERFACE_UP)) {
        Wait::Found(line)
            if line.contains(net::DHCP_LEASE) && line.contains(spec::SERVICE_LISTED) =>
        {
            Ok(())
        }
        Wait::Found(line) => Err(format!(
            "expected `{}` serving `{}`, got `{line}`",
            net::DHCP_LEASE,
            spec::SERVICE_LISTED
        )),
        Wait::Exited(status) => Err(format!("QEMU exited: {}", KernelExit::from_status(status))),
        Wait::TimedOut => Err(format!(
            "no `{}` line within {} s",
            net::INTERFACE_UP,
            BOOT_TIMEOUT.as_secs()
        )),
    }
}

/// The first serial line from index `from` on that satisfies `matches`, waiting until
/// `deadline`; its index and text.
pub(crate) fn find_line(
    q: &mut Instance,
    from: usize,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<(usize, String), String> {
    let deadline = Instant::now() + timeout;
    let mut scanned = from;
    loop {
        if let Some(at) = q.lines()[scanned.min(q.lines().len())..]
            .iter()
            .position(|l| matches(&l.text))
        {
            let at = scanned + at;
            return Ok((at, q.lines()[at].text.clone()));
        }
        scanned = scanned.max(q.lines().len());
        match q.next_line(deadline) {
            Wait::Found(_) => {}
            Wait::Exited(status) => {
                return Err(format!(
                    "QEMU exited before {what}: {}",
                    KernelExit::from_status(status)
                ))
            }
            Wait::TimedOut => return Err(format!("no {what} within {} s", timeout.as_secs())),
        }
    }
}

fn connect(address: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&address, spec::SOCKET_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(spec::SOCKET_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(spec::SOCKET_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Reads until the server closes (or resets) the connection; at most 64 KiB.
fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > 64 * 1024 {
                    return Err(format!("{} bytes and the server still talks", got.len()));
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => {
                return Err(format!(
                    "after {:?}, the server neither closed nor answered: {e}",
                    got
                ))
            }
        }
    }
}

/// Reads exactly `len` bytes (fewer when the server closes first).
fn read_reply(stream: &mut TcpStream, len: usize) -> Result<Vec<u8>, String> {
    let mut got = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match stream.read(&mut got[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("after {:?}: {e}", &got[..filled])),
        }
    }
    got.truncate(filled);
    Ok(got)
}

/// Runs one misbehaving client and checks the server's answer and its log line.
fn malformed_case(
    q: &mut Instance,
    address: SocketAddr,
    case: &MalformedCase,
) -> Result<(), String> {
    let from = q.lines().len();
    let mut control = connect(address)?;
    control
        .write_all(&case.send)
        .map_err(|e| format!("write: {e}"))?;
    let reply = if case.client_closes {
        read_reply(&mut control, case.reply.len())?
    } else {
        read_until_closed(&mut control)?
    };
    if reply != case.reply {
        return Err(format!(
            "the server answered {reply:?}, expected {:?} and the connection closed",
            case.reply
        ));
    }
    if let Some(cookie) = &case.data_cookie {
        let mut data = connect(address).map_err(|e| format!("data connection: {e}"))?;
        data.write_all(cookie)
            .map_err(|e| format!("data connection: write: {e}"))?;
        let answer = read_until_closed(&mut data).map_err(|e| format!("data connection: {e}"))?;
        if answer != [spec::ACCESS_DENIED] {
            return Err(format!(
                "a data connection with a foreign cookie got {answer:?}, expected [255] (ACCESS_DENIED) and close"
            ));
        }
    }
    drop(control);
    find_line(
        q,
        from,
        spec::LOG_TIMEOUT,
        &format!("kernel line `{}`", case.log),
        |l| l.contains(case.log),
    )?;
    Ok(())
}

/// Every malformed exchange in turn, then a stock client killed in the middle of a test; the
/// server must still be free after each (the next case and the client runs depend on it).
fn malformed_exchanges(q: &mut Instance, address: SocketAddr) -> Result<String, String> {
    let cases = spec::malformed_cases();
    for case in &cases {
        malformed_case(q, address, case).map_err(|e| format!("{}: {e}", case.what))?;
    }
    killed_client(q, address).map_err(|e| format!("a client killed during -R: {e}"))?;
    Ok(format!(
        "{} bad clients ({}, a client killed during -R) each lost only their connections, with the right answer and log line",
        cases.len() + 1,
        cases.iter().map(|c| c.what).collect::<Vec<_>>().join(", ")
    ))
}

/// Starts a stock client on a long `-R` test and kills it in the middle.
fn killed_client(q: &mut Instance, address: SocketAddr) -> Result<(), String> {
    let from = q.lines().len();
    let port = address.port().to_string();
    let mut child = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port, "--connect-timeout", "5000"])
        .args(spec::KILLED_CLIENT_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting iperf3: {e}"))?;
    thread::sleep(spec::KILLED_CLIENT_AFTER);
    let exited_early = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    if let Some(status) = exited_early {
        return Err(format!(
            "iperf3 {status} within {} ms, before it could be killed",
            spec::KILLED_CLIENT_AFTER.as_millis()
        ));
    }
    find_line(
        q,
        from,
        spec::LOG_TIMEOUT,
        &format!("kernel line `{}`", spec::KILLED_CLIENT_LOG),
        |l| l.contains(spec::KILLED_CLIENT_LOG),
    )?;
    Ok(())
}

/// A second client while a test runs: it must get exactly ACCESS_DENIED and a closed connection.
fn busy_probe(address: SocketAddr) -> Result<(), String> {
    let mut stream = connect(address)?;
    stream
        .write_all(spec::GOOD_COOKIE)
        .map_err(|e| format!("write: {e}"))?;
    let answer = read_until_closed(&mut stream)?;
    if answer != [spec::ACCESS_DENIED] {
        return Err(format!(
            "got {answer:?}, expected [255] (ACCESS_DENIED) and close"
        ));
    }
    Ok(())
}

/// Runs the stock client once (`-J`, output kept in the log folder) and judges it.
fn client_run(
    q: &mut Instance,
    address: SocketAddr,
    run: &ClientRun,
    settings: &BootSettings,
) -> Result<String, String> {
    let client = start_client(q, address, run, settings)?;
    finish_client(q, address, run, client).map(|finished| finished.summary)
}

/// A stock client started by [`start_client`], running.
pub(crate) struct Client {
    child: Child,
    started: Instant,
    /// The first serial line that may be the kernel's line for its test.
    from: usize,
    json_path: PathBuf,
}

/// A client run judged by [`finish_client`].
pub(crate) struct Finished {
    /// The result line's summary.
    pub summary: String,
    /// Mbit/s at the receiver, by the host's clock.
    pub mbit_per_s: f64,
    /// The client's rate in each interval (a second), Mbit/s.
    pub interval_mbit_per_s: Vec<f64>,
    /// When the client exited.
    pub exited_at: Instant,
}

/// Starts the stock client (`-J`, output kept in the log folder as `RUN.json`).
pub(crate) fn start_client(
    q: &Instance,
    address: SocketAddr,
    run: &ClientRun,
    settings: &BootSettings,
) -> Result<Client, String> {
    let from = q.lines().len();
    let json_path = settings.log_dir.join(format!("{}.json", run.name));
    let json_file =
        File::create(&json_path).map_err(|e| format!("creating {}: {e}", json_path.display()))?;
    let port = address.port().to_string();
    let child = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-J",
            "--connect-timeout",
            "5000",
        ])
        .args(run.args)
        .stdin(Stdio::null())
        .stdout(json_file)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting iperf3: {e}"))?;
    Ok(Client {
        child,
        started: Instant::now(),
        from,
        json_path,
    })
}

/// Waits (bounded) for a client from [`start_client`] and judges its run against the kernel's
/// line for its test.
pub(crate) fn finish_client(
    q: &mut Instance,
    address: SocketAddr,
    run: &ClientRun,
    client: Client,
) -> Result<Finished, String> {
    let Client {
        mut child,
        started,
        from,
        json_path,
    } = client;
    let mut busy = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for iperf3: {e}")),
        }
        if run.busy_probe && busy.is_none() && started.elapsed() >= spec::BUSY_PROBE_AFTER {
            busy = Some(busy_probe(address));
        }
        if started.elapsed() > spec::CLIENT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "iperf3 still running after {} s; killed",
                spec::CLIENT_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let exited_at = Instant::now();
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("reading {}: {e}", json_path.display()))?;
    let report = spec::parse_client_json(&text)
        .map_err(|e| format!("{e} (iperf3 {status}; output in {})", json_path.display()))?;
    if !status.success() {
        return Err(format!(
            "iperf3 {status} (output in {})",
            json_path.display()
        ));
    }
    let (_, line) = find_line(
        q,
        from,
        spec::LOG_TIMEOUT,
        "kernel `iperf3: test N done` line",
        |l| spec::parse_done_line(l).is_some(),
    )?;
    let server = spec::parse_done_line(&line).ok_or("unparsable done line")?;
    let mut summary = spec::judge(run, &report, &server)?;
    if let Some(probe) = busy {
        probe.map_err(|e| format!("a second client during the test: {e}"))?;
        summary.push_str("; a second client got ACCESS_DENIED");
    } else if run.busy_probe {
        return Err(format!(
            "the test ended within {} ms, before the second client's try",
            spec::BUSY_PROBE_AFTER.as_millis()
        ));
    }
    Ok(Finished {
        summary,
        mbit_per_s: spec::receiver_mbit_per_second(run, &report, &server),
        interval_mbit_per_s: report.interval_mbit_per_s,
        exited_at,
    })
}
