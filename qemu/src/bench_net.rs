//! `tether bench net`: iperf3 throughput and boot-to-service time of Tether and of the Linux
//! guest from ../shared/peer-linux, on the same QEMU devices and back-ends, in one run.
//!
//! Both guests run inside a private network namespace (so the tap back-end needs no host
//! configuration and nothing leaves the machine): QEMU user networking forwards 127.0.0.1:15201
//! of the namespace to the guest's iperf3 port; the tap back-end is `tbtap0` 198.18.0.1/24 (the
//! RFC 2544 benchmark range) with the guest at 198.18.0.2. The stock iperf3 client runs in the
//! namespace: `srv-rx` sends host -> guest, `srv-tx` (`-R`) guest -> host; the figure is the
//! receiver's rate. "ready" is QEMU start -> the guest announcing its iperf3 server.

use crate::instance::{Echo, Instance, Wait};
use crate::preset::Machine;
use crate::{deps, kernel_build, paths};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The namespace Tether's runs use (the peer makes its own, `peerbench`).
const NETNS: &str = "tetherbench";
const TAP: &str = "tbtap0";
const TAP_HOST: &str = "198.18.0.1";
const TAP_GUEST: &str = "198.18.0.2";
const FORWARD_PORT: u16 = 15201;
const IPERF_PORT: u16 = 5201;
const MAC: &str = "52:54:00:12:34:56";
/// How long a boot may take to announce its service.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A NIC model both guests can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// qemu-xhci + usb-net, CDC-ECM configuration.
    UsbEcm,
    /// qemu-xhci + usb-net, RNDIS configuration.
    UsbRndis,
    /// virtio-net-pci.
    Virtio,
}

impl Device {
    /// The peer's name for it (also ours on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Device::UsbEcm => "usb-ecm",
            Device::UsbRndis => "usb-rndis",
            Device::Virtio => "virtio",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Result<Device, String> {
        [Device::UsbEcm, Device::UsbRndis, Device::Virtio]
            .into_iter()
            .find(|d| d.name() == text)
            .ok_or_else(|| format!("unknown device {text:?} (usb-ecm, usb-rndis, virtio)"))
    }

    fn qemu_args(self) -> Vec<String> {
        match self {
            // One usb-net offers both configurations; the kernel's `usbnet=` picks one.
            Device::UsbEcm | Device::UsbRndis => vec![
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-device".into(),
                format!("usb-net,bus=xhci.0,netdev=n0,mac={MAC}"),
            ],
            Device::Virtio => vec![
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
            ],
        }
    }

    /// Kernel command-line keys choosing the driver.
    fn cmdline(self) -> &'static str {
        match self {
            Device::UsbRndis => "usbnet=rndis",
            Device::UsbEcm | Device::Virtio => "",
        }
    }
}

/// A QEMU network back-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// User networking with a port forward.
    User,
    /// A tap device in the namespace.
    Tap,
}

impl Backend {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::User => "user",
            Backend::Tap => "tap",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Result<Backend, String> {
        match text {
            "user" => Ok(Backend::User),
            "tap" => Ok(Backend::Tap),
            _ => Err(format!("unknown backend {text:?} (user, tap)")),
        }
    }

    fn netdev(self) -> String {
        match self {
            Backend::User => format!(
                "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{FORWARD_PORT}-:{IPERF_PORT}"
            ),
            Backend::Tap => format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        }
    }

    /// Static addressing, as the peer uses (no DHCP in the boot-to-service time).
    fn cmdline(self) -> String {
        match self {
            Backend::User => "ip=10.0.2.15/24 gw=10.0.2.2".into(),
            Backend::Tap => format!("ip={TAP_GUEST}/24 gw={TAP_HOST}"),
        }
    }

    /// Where the iperf3 client connects, from inside the namespace.
    fn server(self) -> (&'static str, u16) {
        match self {
            Backend::User => ("127.0.0.1", FORWARD_PORT),
            Backend::Tap => (TAP_GUEST, IPERF_PORT),
        }
    }
}

/// Options of `tether bench net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetBenchOptions {
    /// NIC models.
    pub devices: Vec<Device>,
    /// Back-ends.
    pub backends: Vec<Backend>,
    /// iperf3 runs per direction (the median is reported).
    pub runs: usize,
    /// Seconds per run.
    pub seconds: u32,
    /// Also run the Linux peer.
    pub peer: bool,
    /// The peer's folder.
    pub peer_dir: PathBuf,
    /// Boot this kernel ELF instead of building one.
    pub kernel: Option<PathBuf>,
    /// Echo Tether's serial output.
    pub verbose: bool,
}

impl Default for NetBenchOptions {
    fn default() -> Self {
        NetBenchOptions {
            devices: vec![Device::UsbEcm],
            backends: vec![Backend::User, Backend::Tap],
            runs: 3,
            seconds: 10,
            peer: true,
            peer_dir: std::env::var_os("TETHER_PEER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| paths::repo_root().join("../shared/peer-linux")),
            kernel: None,
            verbose: false,
        }
    }
}

/// A device and back-end with one guest's figures.
pub type Row = ((Device, Backend), Figures);

/// One guest's figures for one device and back-end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// QEMU start -> iperf3 announced, seconds.
    pub ready: Option<f64>,
    /// Median Mbit/s host -> guest.
    pub host_to_guest: Option<f64>,
    /// Median Mbit/s guest -> host.
    pub guest_to_host: Option<f64>,
    /// Median QEMU CPU use over the runs, % of one core.
    pub qemu_cpu: Option<f64>,
    /// The same for QEMU's main thread alone (its main loop: slirp, the tap, virtio-net's
    /// back-end), % of one core; near 100 it, not the guest, bounds the rate. Tether only: the
    /// peer does not report it.
    pub qemu_main_thread_cpu: Option<f64>,
    /// Runs that failed.
    pub failures: usize,
}

/// The receiver's rate in Mbit/s from `iperf3 -J` output.
pub fn receiver_mbps(json: &str) -> Result<f64, String> {
    let start = json.find('{').ok_or("no JSON from iperf3")?;
    let value: Value =
        serde_json::from_str(&json[start..]).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {error}"));
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .map(|bps| bps / 1e6)
        .ok_or_else(|| "iperf3 JSON without end.sum_received".to_string())
}

/// Median of the present values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn run_quiet(program: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

fn in_netns(program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NETNS, program]);
    cmd
}

/// The private namespace with loopback up and the tap device; removed when dropped.
struct Netns;

impl Netns {
    fn create() -> Result<Netns> {
        let _ = run_quiet("ip", &["netns", "del", NETNS]);
        let steps: &[&[&str]] = &[
            &["netns", "add", NETNS],
            &["netns", "exec", NETNS, "ip", "link", "set", "lo", "up"],
            &[
                "netns", "exec", NETNS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
            ],
            &[
                "netns",
                "exec",
                NETNS,
                "ip",
                "addr",
                "add",
                &format!("{TAP_HOST}/24"),
                "dev",
                TAP,
            ],
            &["netns", "exec", NETNS, "ip", "link", "set", TAP, "up"],
        ];
        let netns = Netns;
        for step in steps {
            let out = run_quiet("ip", step)?;
            if !out.status.success() {
                bail!(
                    "ip {}: {} (the benchmark needs root for its network namespace)",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_quiet("ip", &["netns", "del", NETNS]);
    }
}

/// CPU time (user + system) of a process and of its main thread, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let ticks = |path: String| stat_cpu_ticks(&std::fs::read_to_string(path).ok()?);
    Some((
        ticks(format!("/proc/{pid}/stat"))?,
        ticks(format!("/proc/{pid}/task/{pid}/stat"))?,
    ))
}

/// utime + stime from a `/proc/.../stat` line (the fields after the parenthesised name).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // Linux's USER_HZ is 100 on every architecture the runner supports.
    100.0
}

/// Runs the iperf3 client in the namespace; returns Mbit/s at the receiver.
fn iperf3(backend: Backend, seconds: u32, reverse: bool, bytes: Option<&str>) -> Result<f64> {
    let (host, port) = backend.server();
    let mut cmd = in_netns("iperf3");
    cmd.args(["-c", host, "-p", &port.to_string(), "-J"]);
    cmd.args(["--connect-timeout", "10000"]);
    match bytes {
        Some(n) => cmd.args(["-n", n]),
        None => cmd.args(["-t", &seconds.to_string()]),
    };
    if reverse {
        cmd.arg("-R");
    }
    cmd.stdin(Stdio::null());
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let output = wait_with_timeout(child, Duration::from_secs(u64::from(seconds) + 60))?;
    receiver_mbps(&String::from_utf8_lossy(&output.stdout)).map_err(anyhow::Error::msg)
}

fn wait_with_timeout(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Boots Tether for one device and back-end and measures it.
fn measure_tether(
    kernel: &Path,
    device: Device,
    backend: Backend,
    options: &NetBenchOptions,
) -> Result<Figures> {
    let cmdline = format!("{} {}", backend.cmdline(), device.cmdline())
        .trim()
        .to_string();
    let mut machine = Machine::pvh(kernel, cmdline);
    machine
        .extra_args
        .extend(["-netdev".into(), backend.netdev()]);
    machine.extra_args.extend(device.qemu_args());
    let mut cmd = in_netns(&crate::preset::qemu_program());
    cmd.args(machine.args());
    let log = paths::repo_root().join(format!(
        "target/bench-logs/net-{}-{}.log",
        device.name(),
        backend.name()
    ));
    let echo = Echo {
        prefix: options
            .verbose
            .then(|| format!("[{}/{}] ", device.name(), backend.name())),
    };
    let mut q = Instance::spawn(cmd, Some(&log), echo)?;
    let started = q.spawned_at();
    let mut figures = Figures::default();
    match q.wait_for(Instant::now() + READY_TIMEOUT, |l| {
        l.contains("; serving ") && l.contains("iperf3")
    }) {
        Wait::Found(_) => {
            let at = q
                .lines()
                .iter()
                .rev()
                .find(|l| l.text.contains("; serving "))
                .map(|l| l.at)
                .unwrap_or_else(Instant::now);
            figures.ready = Some((at - started).as_secs_f64());
        }
        other => bail!(
            "{}/{}: no iperf3 announcement ({other:?}); serial log {}",
            device.name(),
            backend.name(),
            log.display()
        ),
    }
    // A short transfer first: the forward and ARP are warm before the timed runs.
    iperf3(backend, 5, false, Some("256K")).context("probe transfer")?;
    let pid = q.pid();
    let (mut cpu, mut main_thread_cpu) = (Vec::new(), Vec::new());
    let mut directions = [Vec::new(), Vec::new()];
    for (reverse, rates) in [false, true].into_iter().zip(directions.iter_mut()) {
        for run in 0..options.runs {
            let (t0, c0) = (Instant::now(), cpu_ticks(pid));
            match iperf3(backend, options.seconds, reverse, None) {
                Ok(mbps) => {
                    println!(
                        "  tether {}/{} {} run {}: {mbps:.1} Mbit/s",
                        device.name(),
                        backend.name(),
                        if reverse {
                            "guest->host"
                        } else {
                            "host->guest"
                        },
                        run + 1
                    );
                    rates.push(mbps);
                    if let (Some(c0), Some(c1)) = (c0, cpu_ticks(pid)) {
                        let seconds = t0.elapsed().as_secs_f64();
                        let percent =
                            |ticks: u64| ticks as f64 / clock_ticks_per_second() / seconds * 100.0;
                        cpu.push(percent(c1.0 - c0.0));
                        main_thread_cpu.push(percent(c1.1 - c0.1));
                    }
                }
                Err(error) => {
                    println!(
                        "  tether {}/{} run {} failed: {error:#}",
                        device.name(),
                        backend.name(),
                        run + 1
                    );
                    figures.failures += 1;
                }
            }
        }
    }
    figures.host_to_guest = median(&directions[0]);
    figures.guest_to_host = median(&directions[1]);
    figures.qemu_cpu = median(&cpu);
    figures.qemu_main_thread_cpu = median(&main_thread_cpu);
    q.kill();
    Ok(figures)
}

/// Runs the peer's benchmark and reads its results for each device/back-end.
fn measure_peer(options: &NetBenchOptions) -> Result<Vec<Row>> {
    let script = options.peer_dir.join("run-baseline.sh");
    if !script.is_file() {
        bail!("peer not found: {} (set TETHER_PEER_DIR)", script.display());
    }
    let workdir = paths::repo_root().join("target/peer-linux");
    let devices: Vec<&str> = options.devices.iter().map(|d| d.name()).collect();
    let backends: Vec<&str> = options.backends.iter().map(|b| b.name()).collect();
    println!(
        "peer: {} (Linux guest, same devices and back-ends)",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .args(["--devices", &devices.join(",")])
        .args(["--backends", &backends.join(",")])
        .args(["--modes", "srv-rx,srv-tx"])
        .args(["--runs", &options.runs.to_string()])
        .args(["--time", &options.seconds.to_string()])
        .args(["--boots", "1"])
        .env("PEER_WORKDIR", &workdir)
        .env("ACCEL", "tcg")
        .status()
        .context("running the peer")?;
    if !status.success() {
        bail!("the peer's benchmark failed ({status})");
    }
    let text = std::fs::read_to_string(workdir.join("results.json"))
        .context("reading the peer's results.json")?;
    parse_peer_results(&text).map_err(anyhow::Error::msg)
}

/// Reads the peer's results.json (median of its runs per mode).
pub fn parse_peer_results(text: &str) -> Result<Vec<Row>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("peer results: {e}"))?;
    let rows = value
        .get("results")
        .and_then(Value::as_array)
        .ok_or("peer results without `results`")?;
    let mut out = Vec::new();
    for row in rows {
        let device = Device::parse(row.get("device").and_then(Value::as_str).unwrap_or(""))?;
        let backend = Backend::parse(row.get("backend").and_then(Value::as_str).unwrap_or(""))?;
        let runs = |mode: &str, field: &str| -> Vec<f64> {
            row.pointer(&format!("/runs/{mode}"))
                .and_then(Value::as_array)
                .map(|runs| {
                    runs.iter()
                        .filter_map(|r| r.get(field).and_then(Value::as_f64))
                        .collect()
                })
                .unwrap_or_default()
        };
        let ready: Vec<f64> = row
            .get("boots")
            .and_then(Value::as_array)
            .map(|boots| {
                boots
                    .iter()
                    .filter_map(|b| b.get("t_ready").and_then(Value::as_f64))
                    .collect()
            })
            .unwrap_or_default();
        let mut cpu = runs("srv-rx", "qemu_cpu_pct");
        cpu.extend(runs("srv-tx", "qemu_cpu_pct"));
        let failures = ["srv-rx", "srv-tx"]
            .iter()
            .map(|mode| {
                row.pointer(&format!("/runs/{mode}"))
                    .and_then(Value::as_array)
                    .map_or(0, |runs| {
                        runs.iter().filter(|r| r.get("error").is_some()).count()
                    })
            })
            .sum();
        out.push((
            (device, backend),
            Figures {
                ready: median(&ready),
                host_to_guest: median(&runs("srv-rx", "mbps")),
                guest_to_host: median(&runs("srv-tx", "mbps")),
                qemu_cpu: median(&cpu),
                qemu_main_thread_cpu: None,
                failures,
            },
        ));
    }
    Ok(out)
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    }
}

/// The table the benchmark prints.
pub fn table(rows: &[Row], peer: &[Row], options: &NetBenchOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "iperf3 Mbit/s at the receiver, median of {} x {} s per direction; ready = QEMU start -> \
         iperf3 server announced (s); QEMU CPU % of one core (main = its main-loop thread: \
         slirp or the tap, virtio-net's back-end); TCG, q35, -smp 2",
        options.runs, options.seconds
    );
    let _ = writeln!(
        out,
        "| device | backend | Tether h->g | Linux h->g | ratio | Tether g->h | Linux g->h | ratio | Tether ready s | Linux ready s | Tether QEMU cpu% | Linux QEMU cpu% | Tether QEMU main cpu% |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (key, ours) in rows {
        let theirs = peer
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        let failed = |f: &Figures| {
            if f.failures > 0 {
                format!(" ({} failed)", f.failures)
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            key.0.name(),
            key.1.name(),
            cell(ours.host_to_guest, 1) + &failed(ours),
            cell(theirs.host_to_guest, 1) + &failed(&theirs),
            ratio(ours.host_to_guest, theirs.host_to_guest),
            cell(ours.guest_to_host, 1),
            cell(theirs.guest_to_host, 1),
            ratio(ours.guest_to_host, theirs.guest_to_host),
            cell(ours.ready, 3),
            cell(theirs.ready, 2),
            cell(ours.qemu_cpu, 0),
            cell(theirs.qemu_cpu, 0),
            cell(ours.qemu_main_thread_cpu, 0),
        );
    }
    out
}

/// `tether bench net`.
pub fn bench_net(options: &NetBenchOptions) -> Result<()> {
    if options.runs == 0 || options.seconds == 0 {
        bail!("--runs and --time must be at least 1");
    }
    deps::ensure_host_tools(&[deps::Need::Qemu])?;
    if run_quiet("iperf3", &["--version"]).is_err() {
        bail!("iperf3 is not installed (apt-get install iperf3)");
    }
    let kernel = kernel_build::prebuilt_or_build(options.kernel.as_deref())?;
    let mut rows = Vec::new();
    {
        let _netns = Netns::create()?;
        for &device in &options.devices {
            for &backend in &options.backends {
                println!("tether {}/{}:", device.name(), backend.name());
                let figures = measure_tether(&kernel, device, backend, options)?;
                rows.push(((device, backend), figures));
            }
        }
    }
    let peer = if options.peer {
        measure_peer(options)?
    } else {
        Vec::new()
    };
    println!();
    print!("{}", table(&rows, &peer, options));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_rate_from_iperf3_json() {
        let json = r#"{"start":{},"end":{"sum_received":{"bits_per_second":123456789.0}}}"#;
        assert!((receiver_mbps(json).unwrap() - 123.456789).abs() < 1e-9);
        assert!(receiver_mbps(r#"{"error":"unable to connect"}"#)
            .unwrap_err()
            .contains("unable to connect"));
        assert!(receiver_mbps("garbage").is_err());
        assert!(receiver_mbps(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn peer_results_are_read_per_device_and_backend() {
        let json = r#"{"env":{},"results":[{"device":"usb-ecm","backend":"user",
            "boots":[{"t_ready":7.15}],
            "runs":{"srv-rx":[{"mbps":190.0,"qemu_cpu_pct":130},{"mbps":200.0,"qemu_cpu_pct":140},{"error":"x"}],
                    "srv-tx":[{"mbps":115.0,"qemu_cpu_pct":150}]}}]}"#;
        let rows = parse_peer_results(json).unwrap();
        assert_eq!(rows.len(), 1);
        let ((device, backend), f) = &rows[0];
        assert_eq!((*device, *backend), (Device::UsbEcm, Backend::User));
        assert_eq!(f.host_to_guest, Some(195.0));
        assert_eq!(f.guest_to_host, Some(115.0));
        assert_eq!(f.ready, Some(7.15));
        assert_eq!(f.qemu_cpu, Some(140.0));
        assert_eq!(f.failures, 1);
        assert!(parse_peer_results(r#"{"results":[{"device":"floppy"}]}"#).is_err());
    }

    #[test]
    fn table_has_ratios() {
        let ours = Figures {
            ready: Some(0.2),
            host_to_guest: Some(400.0),
            guest_to_host: Some(230.0),
            qemu_cpu: Some(150.0),
            qemu_main_thread_cpu: Some(99.0),
            failures: 0,
        };
        let theirs = Figures {
            ready: Some(7.1),
            host_to_guest: Some(200.0),
            guest_to_host: Some(115.0),
            qemu_cpu: Some(140.0),
            qemu_main_thread_cpu: None,
            failures: 0,
        };
        let key = (Device::UsbEcm, Backend::Tap);
        let text = table(
            &[(key, ours)],
            &[(key, theirs)],
            &NetBenchOptions::default(),
        );
        assert!(
            text.contains("| usb-ecm | tap | 400.0 | 200.0 | 2.00x | 230.0 | 115.0 | 2.00x |"),
            "{text}"
        );
        assert!(text.contains("| 150 | 140 | 99 |"), "{text}");
    }

    #[test]
    fn cpu_ticks_from_a_stat_line() {
        // A thread name with a space and a parenthesis: the fields are counted after the last `)`.
        let stat = "4242 (qemu (main) x) R 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 4";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("4242 (qemu) R 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn names_round_trip() {
        for d in [Device::UsbEcm, Device::UsbRndis, Device::Virtio] {
            assert_eq!(Device::parse(d.name()), Ok(d));
        }
        for b in [Backend::User, Backend::Tap] {
            assert_eq!(Backend::parse(b.name()), Ok(b));
        }
        assert!(Device::parse("e1000").is_err());
        assert!(Backend::parse("vde").is_err());
    }
}
