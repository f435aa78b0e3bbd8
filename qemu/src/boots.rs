//! The boots a test run makes: the in-kernel suite, the single-purpose boot tests, the
//! host-driven hotplug test and the ISO boots. Each returns test outcomes; none waits without a deadline.

use crate::hotplug::HotplugConfig;
use crate::instance::{Echo, Instance, Wait};
use crate::preset::Machine;
use crate::report::{TestOutcome, FAILURE_TAIL_LINES};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tether_tests::boot_tests::{BootTest, Ending, BOOT_TEST_TIMEOUT};
use tether_tests::hotplug;
use tether_tests::protocol::{self, KernelExit};
use tether_tests::suites::{
    IsoBoot, KtestTally, ISO_BOOT_TIMEOUT, KTEST_SILENCE_TIMEOUT, KTEST_SUITE_CMDLINE,
    KTEST_SUITE_DEVICES, KTEST_SUITE_TIMEOUT,
};

/// How long QEMU gets to exit after the kernel said it is done (`ktest done`, a panic line).
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long a boot test waits after the ready line for its expected text.
const AFTER_READY_GRACE: Duration = Duration::from_secs(2);

/// Settings shared by the boots of one run.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// Folder for serial logs (one file per boot).
    pub log_dir: PathBuf,
    /// Echo serial output to the terminal, prefixed with the boot's name.
    pub echo: bool,
}

impl BootSettings {
    pub(crate) fn spawn(
        &self,
        name: &str,
        machine: &Machine,
    ) -> Result<(Instance, PathBuf), TestOutcome> {
        let log = self.log_dir.join(format!("{name}.log"));
        let echo = Echo {
            prefix: self.echo.then(|| format!("[{name}] ")),
        };
        Instance::spawn_machine(machine, Some(&log), echo)
            .map(|q| (q, log))
            .map_err(|e| TestOutcome::fail(name, format!("cannot start QEMU: {e:#}")))
    }

    /// Where the boot `name` gets its QMP socket: next to its serial log, or in the system's
    /// temp folder when that path is too long for a unix socket (108 bytes with the NUL).
    pub fn qmp_socket(&self, name: &str) -> PathBuf {
        let beside_log = self.log_dir.join(format!("{name}.qmp"));
        if beside_log.as_os_str().len() < 100 {
            beside_log
        } else {
            std::env::temp_dir().join(format!("tether-{}-{name}.qmp", std::process::id()))
        }
    }
}

/// Lines shown under a failed boot: the serial tail, QEMU's stderr and where the log is.
pub fn failure_context(q: &Instance, log: &Path, machine: &Machine) -> Vec<String> {
    let mut lines = vec![format!("last {FAILURE_TAIL_LINES} serial lines:")];
    let tail = q.tail(FAILURE_TAIL_LINES);
    if tail.is_empty() {
        lines.push("  (no serial output)".to_string());
    }
    lines.extend(tail.iter().map(|l| format!("  {}", printable(l))));
    let stderr = q.stderr_text();
    if !stderr.trim().is_empty() {
        lines.push("QEMU stderr:".to_string());
        lines.extend(stderr.lines().map(|l| format!("  {l}")));
    }
    lines.push(format!("full serial log: {}", log.display()));
    lines.push(format!("QEMU command: {machine}"));
    lines
}

/// A serial line fit for the terminal: firmware's ANSI escape sequences and other control
/// characters removed (the log file keeps the raw bytes).
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in '@'..='~'; other escapes: ESC + one char.
            if chars.next_if_eq(&'[').is_some() {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Boots the in-kernel test suite (`test=all lockcheck=on`, PVH, -smp 2). One outcome per
/// `ktest` line, plus `ktest_suite` for the boot as a whole (ended with `ktest done`, counts
/// and exit status consistent).
pub fn run_ktest_suite(kernel: &Path, settings: &BootSettings) -> Vec<TestOutcome> {
    const NAME: &str = "ktest_suite";
    let mut machine = Machine::pvh(kernel, KTEST_SUITE_CMDLINE);
    for device in KTEST_SUITE_DEVICES {
        machine
            .extra_args
            .extend(["-device".to_string(), device.to_string()]);
    }
    let (mut q, log) = match settings.spawn(NAME, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return vec![failure],
    };
    let started = Instant::now();
    let deadline = started + KTEST_SUITE_TIMEOUT;
    let mut tally = KtestTally::default();
    let mut silent_for = None;
    let exit = loop {
        let silence_deadline = Instant::now() + KTEST_SILENCE_TIMEOUT;
        match q.next_line(deadline.min(silence_deadline)) {
            Wait::Found(line) => {
                tally.feed(&line);
                if tally.done.is_some() {
                    break q.wait_exit(Instant::now() + EXIT_GRACE);
                }
            }
            Wait::Exited(status) => break Some(status),
            Wait::TimedOut => {
                if Instant::now() < deadline {
                    silent_for = Some(KTEST_SILENCE_TIMEOUT);
                }
                break None;
            }
        }
    };
    q.kill();
    let kernel_exit = exit.map(KernelExit::from_status);

    let mut outcomes: Vec<TestOutcome> = tally
        .results
        .iter()
        .map(|(name, result)| match result {
            Ok(Some(ms)) => TestOutcome::pass(format!("ktest::{name}"), format!("{ms} ms")),
            Ok(None) => TestOutcome::pass(format!("ktest::{name}"), ""),
            Err(reason) => TestOutcome::fail(format!("ktest::{name}"), reason.clone()),
        })
        .collect();
    let verdict = match (tally.verdict(kernel_exit), exit) {
        (Ok(()), _) => TestOutcome::pass(NAME, format!("{:.1} s", started.elapsed().as_secs_f64())),
        (Err(_), None) if tally.done.is_none() => {
            let reason = match silent_for {
                Some(silence) => format!("hung: no serial output for {} s", silence.as_secs()),
                None => format!(
                    "no `ktest done` line within {} s",
                    KTEST_SUITE_TIMEOUT.as_secs()
                ),
            };
            TestOutcome::fail(NAME, reason)
        }
        (Err(reason), _) => TestOutcome::fail(NAME, reason),
    };
    outcomes.push(verdict.with_context(failure_context(&q, &log, &machine)));
    outcomes
}

/// Boots one single-purpose boot test from the table in `tether-tests`.
pub fn run_boot_test(kernel: &Path, test: &BootTest, settings: &BootSettings) -> TestOutcome {
    let name = format!("boot::{}", test.name);
    let mut machine = Machine::pvh(kernel, test.cmdline());
    machine
        .extra_args
        .extend(test.qemu_args().iter().map(|a| a.to_string()));
    let (mut q, log) = match settings.spawn(test.name, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return TestOutcome { name, ..failure },
    };
    let started = Instant::now();
    let deadline = started + BOOT_TEST_TIMEOUT;
    let (exit, timed_out) = match test.ending() {
        Ending::KernelFailure | Ending::KernelSuccess => match q.wait_exit(deadline) {
            Some(status) => (Some(KernelExit::from_status(status)), false),
            None => (None, true),
        },
        Ending::Ready => match q.wait_for(deadline, protocol::is_ready_line) {
            Wait::Found(_) => {
                let seen = |q: &Instance| q.lines().iter().any(|l| l.text.contains(test.expect));
                let grace = Instant::now() + AFTER_READY_GRACE;
                while !seen(&q) {
                    if !matches!(q.next_line(grace), Wait::Found(_)) {
                        break;
                    }
                }
                (None, false)
            }
            Wait::Exited(status) => (Some(KernelExit::from_status(status)), false),
            Wait::TimedOut => (None, true),
        },
    };
    q.kill();
    let elapsed = format!("{:.1} s", started.elapsed().as_secs_f64());
    let outcome = if timed_out {
        TestOutcome::fail(
            &name,
            format!("timed out after {} s", BOOT_TEST_TIMEOUT.as_secs()),
        )
    } else {
        match test.judge(&q.texts(), exit) {
            Ok(()) => TestOutcome::pass(&name, elapsed),
            Err(reason) => TestOutcome::fail(&name, reason),
        }
    };
    outcome.with_context(failure_context(&q, &log, &machine))
}

/// Boots the host-driven hotplug test (`tether_tests::hotplug`): a normal boot on a machine with
/// one qemu-xhci + usb-net and a QMP socket, then unplug/replug cycles through QMP
/// ([`crate::hotplug::drive`]); `TETHER_HOTPLUG_CYCLES` overrides the cycle count.
pub fn run_hotplug_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    let cycles = match hotplug::cycles(std::env::var(hotplug::CYCLES_ENV).ok().as_deref()) {
        Ok(cycles) => cycles,
        Err(reason) => return TestOutcome::fail(format!("boot::{}", hotplug::NAME), reason),
    };
    run_with_qmp(kernel, settings, hotplug::NAME, hotplug::QEMU_ARGS, |q| {
        crate::hotplug::drive(q, &HotplugConfig::with_cycles(cycles)).map(|report| report.summary())
    })
}

/// Boots the hub hotplug test ([`crate::hotplug::drive_hub`]).
pub fn run_hub_hotplug_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    run_with_qmp(
        kernel,
        settings,
        hotplug::HUB_NAME,
        hotplug::HUB_QEMU_ARGS,
        |q| crate::hotplug::drive_hub(q, &HotplugConfig::with_cycles(1)),
    )
}

/// A normal boot (no `test=`) with extra QEMU arguments and a QMP socket, handed to `drive`,
/// whose `Ok` text is the pass summary and whose `Err` the failure.
fn run_with_qmp(
    kernel: &Path,
    settings: &BootSettings,
    test: &str,
    qemu_args: &[&str],
    drive: impl FnOnce(&mut Instance) -> Result<String, String>,
) -> TestOutcome {
    let name = format!("boot::{test}");
    let mut machine = Machine::pvh(kernel, hotplug::CMDLINE);
    machine
        .extra_args
        .extend(qemu_args.iter().map(|a| a.to_string()));
    machine.qmp = Some(settings.qmp_socket(test));
    let (mut q, log) = match settings.spawn(test, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return TestOutcome { name, ..failure },
    };
    let result = drive(&mut q);
    q.kill();
    let outcome = match result {
        Ok(summary) => TestOutcome::pass(&name, summary),
        Err(reason) => TestOutcome::fail(&name, reason),
    };
    outcome.with_context(failure_context(&q, &log, &machine))
}

/// `count` free loopback ports, held open together so they differ, then released for QEMU.
pub fn free_loopback_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners: Result<Vec<_>, _> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect();
    listeners
        .and_then(|l| l.iter().map(|l| l.local_addr().map(|a| a.port())).collect())
        .map_err(|e| format!("no free loopback ports: {e}"))
}

/// `len` bytes from a seeded xorshift: reproducible, incompressible.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `data` through the echo service behind 127.0.0.1:`port` while reading it back, and
/// compares byte for byte. Returns the seconds it took.
fn echo_exchange(port: u16, data: &[u8]) -> Result<f64, String> {
    echo_exchange_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), data)
}

/// [`echo_exchange`] with the echo service at `address`.
pub(crate) fn echo_exchange_at(address: std::net::SocketAddr, data: &[u8]) -> Result<f64, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let expected = data.len();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(expected);
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < expected {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
            }
        }
        Ok(got)
    });
    stream.write_all(data).map_err(|e| format!("write: {e}"))?;
    let got = receiver
        .join()
        .map_err(|_| "reader panicked".to_string())??;
    let seconds = started.elapsed().as_secs_f64();
    if got.len() != data.len() {
        return Err(format!("echoed {} of {} bytes", got.len(), data.len()));
    }
    if let Some(at) = got.iter().zip(data).position(|(a, b)| a != b) {
        return Err(format!("echoed bytes differ from byte {at}"));
    }
    Ok(seconds)
}

/// Pushes `net::DISCARD_BYTES` into discard and checks `net::CHARGEN_BYTES` of chargen's
/// RFC 864 pattern.
fn discard_and_chargen(discard_port: u16, chargen_port: u16, data: &[u8]) -> Result<(), String> {
    use std::io::{Read, Write};
    use tether_tests::net;
    let mut sink = std::net::TcpStream::connect(("127.0.0.1", discard_port))
        .map_err(|e| format!("discard connect: {e}"))?;
    sink.write_all(&data[..net::DISCARD_BYTES.min(data.len())])
        .map_err(|e| format!("discard write: {e}"))?;
    drop(sink);
    let mut source = std::net::TcpStream::connect(("127.0.0.1", chargen_port))
        .map_err(|e| format!("chargen connect: {e}"))?;
    source
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut pattern = vec![0u8; net::CHARGEN_BYTES];
    source
        .read_exact(&mut pattern)
        .map_err(|e| format!("chargen read: {e}"))?;
    if let Some(at) = pattern
        .iter()
        .enumerate()
        .position(|(i, &b)| b != net::chargen_byte(i))
    {
        return Err(format!(
            "chargen byte {at} is {:#04x}, expected {:#04x}",
            pattern[at],
            net::chargen_byte(at)
        ));
    }
    Ok(())
}

/// Mbit/s of `bytes` in `seconds`.
fn mbit_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 * 8.0 / seconds / 1e6
}

/// Boots with usb-net and user networking forwarding a free loopback port to the echo
/// service (the USB network driver chosen by `boot`'s command line), sends `net::ECHO_BYTES`
/// random bytes and compares what comes back, then checks discard, chargen and that the
/// driver counted no malformed message.
pub fn run_net_echo_test(
    kernel: &Path,
    boot: &tether_tests::net::EchoBoot,
    settings: &BootSettings,
) -> TestOutcome {
    use tether_tests::net;
    let name = format!("net::{}", boot.name);
    let ports = match free_loopback_ports(3) {
        Ok(ports) => ports,
        Err(reason) => return TestOutcome::fail(name, reason),
    };
    let (port, discard_port, chargen_port) = (ports[0], ports[1], ports[2]);
    let mut machine = Machine::pvh(kernel, boot.cmdline);
    machine
        .extra_args
        .extend(net::echo_machine_args([port, discard_port, chargen_port]));
    let (mut q, log) = match settings.spawn(boot.name, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return TestOutcome { name, ..failure },
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = (|| -> Result<String, String> {
        match q.wait_for(deadline, |l| l.contains(net::INTERFACE_UP)) {
            Wait::Found(line) if line.contains(net::DHCP_LEASE) => {}
            Wait::Found(line) => {
                return Err(format!("expected `{}`, got `{}`", net::DHCP_LEASE, line))
            }
            Wait::Exited(status) => {
                return Err(format!("QEMU exited: {}", KernelExit::from_status(status)))
            }
            Wait::TimedOut => return Err(format!("no `{}` line within 60 s", net::INTERFACE_UP)),
        }
        // The driver logs this before any frame can flow, so it came before the lease.
        if !q
            .lines()
            .iter()
            .any(|l| l.text.contains(boot.driver_receiving))
        {
            return Err(format!(
                "no `{}` line: wrong driver bound?",
                boot.driver_receiving
            ));
        }
        let data = random_bytes(u64::from(port), net::ECHO_BYTES);
        let seconds = echo_exchange(port, &data)?;
        discard_and_chargen(discard_port, chargen_port, &data)?;
        q.send_serial_line(net::IFCONFIG)
            .map_err(|e| format!("console: {e:#}"))?;
        match q.wait_for(Instant::now() + Duration::from_secs(10), |l| {
            l.contains(" malformed")
        }) {
            Wait::Found(line) if line.contains(net::NO_MALFORMED) => {}
            Wait::Found(line) => {
                return Err(format!("the driver dropped malformed messages: {line}"))
            }
            _ => return Err(format!("no answer to `{}` on the console", net::IFCONFIG)),
        }
        Ok(format!(
            "{}; {} MiB echoed byte for byte in {:.2} s ({:.0} Mbit/s each way); discard took 1 MiB, chargen pattern checked over 64 KiB; no malformed messages",
            net::DHCP_LEASE,
            data.len() >> 20,
            seconds,
            mbit_per_s(data.len(), seconds)
        ))
    })();
    q.kill();
    let outcome = match result {
        Ok(summary) => TestOutcome::pass(&name, summary),
        Err(reason) => TestOutcome::fail(&name, reason),
    };
    outcome.with_context(failure_context(&q, &log, &machine))
}

/// Boots a `tether_tests::net::NetBoot`: every interface must announce what it expects (its
/// lease or static address), then `net::ECHO_BYTES` go through each interface's echo at the
/// same time and are compared byte for byte; discard and chargen too when asked. With a virtio
/// interface first, the summary adds the console's interrupt and doorbell counts per frame.
pub fn run_net_boot(
    kernel: &Path,
    boot: &tether_tests::net::NetBoot,
    settings: &BootSettings,
) -> TestOutcome {
    use tether_tests::net::{self, TestNic};
    let name = format!("net::{}", boot.name);
    let count = boot.interfaces.len();
    let ports: Vec<[u16; 3]> = match free_loopback_ports(3 * count) {
        Ok(ports) => ports.chunks(3).map(|c| [c[0], c[1], c[2]]).collect(),
        Err(reason) => return TestOutcome::fail(name, reason),
    };
    let mut machine = Machine::pvh(kernel, boot.cmdline);
    machine.extra_args.extend(boot.machine_args(&ports));
    let (mut q, log) = match settings.spawn(boot.name, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return TestOutcome { name, ..failure },
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = (|| -> Result<String, String> {
        let mut announced = vec![false; count];
        // Each interface's name as the kernel announced it (`eth0`).
        let mut names = vec![String::from("?"); count];
        while announced.contains(&false) {
            match q.wait_for(deadline, |l| l.contains(net::INTERFACE_UP)) {
                Wait::Found(line) => match boot.announced(&line) {
                    Some(index) => {
                        announced[index] = true;
                        if let Some(name) = line
                            .split("net: ")
                            .nth(1)
                            .and_then(|rest| rest.split(':').next())
                        {
                            names[index] = name.to_string();
                        }
                    }
                    None => return Err(format!("unexpected announcement `{line}`")),
                },
                Wait::Exited(status) => {
                    return Err(format!("QEMU exited: {}", KernelExit::from_status(status)))
                }
                Wait::TimedOut => {
                    let missing: Vec<&str> = boot
                        .interfaces
                        .iter()
                        .zip(&announced)
                        .filter(|(_, seen)| !**seen)
                        .map(|(i, _)| i.announces)
                        .collect();
                    return Err(format!("no `{}` line within 60 s", missing.join("`, `")));
                }
            }
        }
        // Every interface at once, each with its own data.
        let data: Vec<Vec<u8>> = ports
            .iter()
            .map(|[echo, _, _]| random_bytes(u64::from(*echo), net::ECHO_BYTES))
            .collect();
        let results: Vec<Result<f64, String>> = std::thread::scope(|scope| {
            let exchanges: Vec<_> = ports
                .iter()
                .zip(&data)
                .map(|([echo, _, _], data)| scope.spawn(move || echo_exchange(*echo, data)))
                .collect();
            exchanges
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("echo thread panicked".into()))
                })
                .collect()
        });
        let mut figures = Vec::new();
        for (iface, result) in names.iter().zip(results) {
            let seconds = result.map_err(|e| format!("{iface}: {e}"))?;
            figures.push(format!(
                "{iface} {:.2} s ({:.0} Mbit/s each way)",
                seconds,
                mbit_per_s(net::ECHO_BYTES, seconds)
            ));
        }
        let mut summary = format!(
            "{}; {} MiB echoed byte for byte through {}",
            boot.interfaces
                .iter()
                .zip(&names)
                .map(|(i, name)| match i.announces.strip_prefix(':') {
                    // Named by attach order: the name comes from the announcement.
                    Some(rest) => format!("{name}:{rest}"),
                    None => i.announces.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            net::ECHO_BYTES >> 20,
            figures.join(", ")
        );
        if boot.streams {
            let [_, discard, chargen] = ports[0];
            discard_and_chargen(discard, chargen, &data[0])?;
            summary.push_str("; discard took 1 MiB, chargen pattern checked over 64 KiB");
        }
        let first_is_virtio = matches!(
            boot.interfaces.first().map(|i| i.nic),
            Some(TestNic::VirtioTransitional | TestNic::VirtioModern)
        );
        if first_is_virtio {
            // The console's counters, for the per-frame cost (informational, never a failure).
            let seen = q.lines().len();
            let asked =
                q.send_serial_line("ifconfig").is_ok() && q.send_serial_line("virtio").is_ok();
            let counters_by = Instant::now() + Duration::from_secs(5);
            if asked
                && matches!(
                    q.wait_for(counters_by, |l| l.contains("doorbells:")),
                    Wait::Found(_)
                )
            {
                let lines: Vec<String> = q.texts().into_iter().skip(seen).collect();
                if let Some(counters) = net::parse_virtio_counters(&lines, "eth0") {
                    summary.push_str(&format!("; eth0 virtio: {}", counters.per_frame()));
                }
            }
        }
        Ok(summary)
    })();
    q.kill();
    let outcome = match result {
        Ok(summary) => TestOutcome::pass(&name, summary),
        Err(reason) => TestOutcome::fail(&name, reason),
    };
    outcome.with_context(failure_context(&q, &log, &machine))
}

/// Boots the ISO through one firmware to the ready line. `iso` is the ISO's path, or why
/// there is none.
pub fn run_iso_boot(
    iso: Result<&Path, &str>,
    boot: &IsoBoot,
    settings: &BootSettings,
) -> TestOutcome {
    let name = format!("iso::{}", boot.name);
    let iso = match iso {
        Ok(iso) => iso,
        Err(reason) => return TestOutcome::fail(name, format!("no ISO: {reason}")),
    };
    let machine = Machine::iso(iso, boot.firmware);
    match boot_to_ready(&machine, boot.name, ISO_BOOT_TIMEOUT, settings) {
        Ok(ready) => TestOutcome::pass(name, format!("{:.1} s to ready", ready.time.as_secs_f64())),
        Err(failure) => TestOutcome { name, ..failure },
    }
}

/// A boot that reached the ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Time from QEMU's spawn to the ready line's arrival.
    pub time: Duration,
    /// The ready line.
    pub line: String,
}

/// Boots `machine` until the ready line, or returns a failed outcome (named `name`) with the
/// serial tail. QEMU is killed either way.
pub fn boot_to_ready(
    machine: &Machine,
    name: &str,
    timeout: Duration,
    settings: &BootSettings,
) -> Result<Ready, TestOutcome> {
    let (mut q, log) = settings.spawn(name, machine)?;
    let deadline = q.spawned_at() + timeout;
    let result = match q.wait_for(deadline, |l| {
        protocol::is_ready_line(l) || protocol::is_panic_line(l)
    }) {
        Wait::Found(line) if protocol::is_ready_line(&line) => {
            let at = q.lines().last().map(|l| l.at).unwrap_or_else(Instant::now);
            Ok(Ready {
                time: at - q.spawned_at(),
                line,
            })
        }
        Wait::Found(line) => {
            q.wait_exit(Instant::now() + EXIT_GRACE);
            Err(format!("kernel panicked before the ready line: {line}"))
        }
        Wait::Exited(status) => Err(format!(
            "QEMU exited before the ready line: {}",
            KernelExit::from_status(status)
        )),
        Wait::TimedOut => Err(format!("no ready line within {} s", timeout.as_secs())),
    };
    q.kill();
    result.map_err(|reason| {
        TestOutcome::fail(name, reason).with_context(failure_context(&q, &log, machine))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_strips_escape_sequences() {
        assert_eq!(
            printable("\u{1b}[0m\u{1b}[30m\u{1b}[47mWelcome to GRUB!\u{1b}[2J\u{1b}[01;01H"),
            "Welcome to GRUB!"
        );
        assert_eq!(printable("\u{1b}[=3hok\u{7}\tx"), "ok\tx");
        assert_eq!(printable("TETHER READY cpus=2"), "TETHER READY cpus=2");
    }
}
