//! `tether bench recovery`: how fast the appliance gets a wedged USB NIC moving again, per TX
//! watchdog policy and load, and how it rides out an unplug/replug, measured end to end.
//!
//! Each (policy, load) boots Tether with `faults=bench watchdog=POLICY` on qemu-xhci + usb-net
//! (user networking, the echo port forwarded) and keeps a TCP echo connection busy from the
//! host with random bytes that are checked on return:
//! - busy: the host writes as fast as the connection takes;
//! - light: a 32-byte message a second, plus the kernel pinging the gateway once a second (a
//!   steady packet a second that, unlike TCP, does not back off: the seed's ping);
//! - idle: a 32-byte message every 7 s (more than 5 s between packets).
//!
//! Then `fault bench eth0 wedge` on the console, N times. From the kernel's console lines (its
//! own clock): wedge -> watchdog decision, wedge -> first frame completed after the reset. From
//! the host: wedge -> the echo stream moving again. Survival: the connection never failed and
//! every byte came back in order.

use crate::instance::{Echo, Instance, Wait};
use crate::preset::Machine;
use crate::{deps, kernel_build, paths};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tether_tests::hotplug;

const TOKEN: &str = "bench";
const MESSAGE: usize = 32;

/// A load from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// A packet every 7 s.
    Idle,
    /// Full rate.
    Busy,
    /// A packet a second.
    Light,
}

impl Load {
    /// Its name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Busy => "busy",
            Load::Light => "light",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Result<Load, String> {
        [Load::Idle, Load::Busy, Load::Light]
            .into_iter()
            .find(|l| l.name() == text)
            .ok_or_else(|| format!("unknown load {text:?} (idle, busy, light)"))
    }
}

/// Options of `tether bench recovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// `watchdog=` values to compare.
    pub policies: Vec<String>,
    /// Loads.
    pub loads: Vec<Load>,
    /// Wedges per policy and load.
    pub wedges: usize,
    /// Also measure an unplug/replug under load.
    pub unplug: bool,
    /// Boot this kernel ELF instead of building one.
    pub kernel: Option<PathBuf>,
    /// Echo the serial output.
    pub verbose: bool,
    /// More kernel command-line keys (e.g. `txqueue=100`, the seed's queue length).
    pub append: String,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            policies: vec!["progress".into(), "classic".into()],
            loads: vec![Load::Idle, Load::Busy, Load::Light],
            wedges: 3,
            unplug: true,
            kernel: None,
            verbose: false,
            append: String::new(),
        }
    }
}

/// The kernel's clock from a console line's `[   12.345678]` prefix, in seconds.
pub fn kernel_time(line: &str) -> Option<f64> {
    // A prompt may precede it (`tether> [ ...`).
    let rest = &line[line.find('[')? + 1..];
    let (number, _) = rest.split_once(']')?;
    number.trim().parse().ok()
}

/// One wedge's figures (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WedgeFigures {
    /// Wedge -> the watchdog decided to reset (kernel clock).
    pub detect: Option<f64>,
    /// Wedge -> first frame completed after the reset (kernel clock).
    pub first_frame: Option<f64>,
    /// Wedge -> the echo stream moving again (host clock).
    pub moving: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The xorshift byte stream both ends of the echo check agree on.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// The host's side of the load: when bytes came back, how many, and whether all was right.
#[derive(Default)]
pub(crate) struct Timeline {
    /// (when, total bytes verified) after every read.
    marks: Vec<(Instant, u64)>,
    /// When the last message was sent (light, idle).
    last_send: Option<Instant>,
    error: Option<String>,
}

pub(crate) struct Traffic {
    timeline: Arc<Mutex<Timeline>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stream: TcpStream,
}

impl Traffic {
    pub(crate) fn start(port: u16, load: Load) -> Result<Traffic> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to echo")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(240)))?;
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        match load {
            Load::Busy => {
                let mut writer = stream.try_clone()?;
                let stop_w = stop.clone();
                let timeline_w = timeline.clone();
                threads.push(std::thread::spawn(move || {
                    let mut pattern = Pattern(0x5eed);
                    let mut buf = vec![0u8; 8192];
                    while !stop_w.load(Ordering::Acquire) {
                        pattern.fill(&mut buf);
                        if let Err(e) = writer.write_all(&buf) {
                            timeline_w
                                .lock()
                                .unwrap()
                                .error
                                .get_or_insert(format!("write: {e}"));
                            return;
                        }
                    }
                    let _ = writer.shutdown(Shutdown::Write);
                }));
                let mut reader = stream.try_clone()?;
                let timeline_r = timeline.clone();
                threads.push(std::thread::spawn(move || {
                    let mut pattern = Pattern(0x5eed);
                    let (mut buf, mut expected) = (vec![0u8; 65536], vec![0u8; 65536]);
                    let mut total = 0u64;
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                pattern.fill(&mut expected[..n]);
                                let mut t = timeline_r.lock().unwrap();
                                if buf[..n] != expected[..n] {
                                    t.error.get_or_insert(format!("wrong bytes after {total}"));
                                    return;
                                }
                                total += n as u64;
                                t.marks.push((Instant::now(), total));
                            }
                            Err(e) => {
                                timeline_r
                                    .lock()
                                    .unwrap()
                                    .error
                                    .get_or_insert(format!("read after {total} bytes: {e}"));
                                return;
                            }
                        }
                    }
                }));
            }
            Load::Light | Load::Idle => {
                let period = Duration::from_secs(if load == Load::Light { 1 } else { 7 });
                let mut socket = stream.try_clone()?;
                let stop_m = stop.clone();
                let timeline_m = timeline.clone();
                threads.push(std::thread::spawn(move || {
                    let mut pattern = Pattern(0xfeed);
                    let mut total = 0u64;
                    while !stop_m.load(Ordering::Acquire) {
                        let started = Instant::now();
                        let mut message = [0u8; MESSAGE];
                        pattern.fill(&mut message);
                        timeline_m.lock().unwrap().last_send = Some(started);
                        let mut back = [0u8; MESSAGE];
                        let result = socket
                            .write_all(&message)
                            .and_then(|()| socket.read_exact(&mut back));
                        let mut t = timeline_m.lock().unwrap();
                        match result {
                            Ok(()) if back == message => {
                                total += MESSAGE as u64;
                                t.marks.push((Instant::now(), total));
                            }
                            Ok(()) => {
                                t.error.get_or_insert(format!("wrong reply after {total}"));
                                return;
                            }
                            Err(e) => {
                                t.error.get_or_insert(format!("after {total} bytes: {e}"));
                                return;
                            }
                        }
                        drop(t);
                        // Sleep in small steps so that stopping is prompt.
                        while started.elapsed() < period && !stop_m.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }));
            }
        }
        Ok(Traffic {
            timeline,
            stop,
            threads,
            stream,
        })
    }

    /// The first time bytes came back after `after`.
    pub(crate) fn moved_after(&self, after: Instant) -> Option<Instant> {
        let t = self.timeline.lock().unwrap();
        t.marks
            .iter()
            .find(|(at, _)| *at > after)
            .map(|(at, _)| *at)
    }

    pub(crate) fn error(&self) -> Option<String> {
        self.timeline.lock().unwrap().error.clone()
    }

    fn last_send(&self) -> Option<Instant> {
        self.timeline.lock().unwrap().last_send
    }

    /// Stops; returns (bytes verified, error).
    pub(crate) fn finish(self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Release);
        // The busy reader ends when the echo closes after our shutdown; give it a bound.
        let deadline = Instant::now() + Duration::from_secs(60);
        for thread in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !thread.is_finished() {
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            let _ = thread.join();
        }
        let t = self.timeline.lock().unwrap();
        (t.marks.last().map_or(0, |m| m.1), t.error.clone())
    }
}

/// One boot for a policy and a load.
struct Bench {
    q: Instance,
    port: u16,
}

fn boot(
    kernel: &std::path::Path,
    policy: &str,
    name: &str,
    options: &RecoveryOptions,
) -> Result<Bench> {
    let verbose = options.verbose;
    let port = crate::boots::free_loopback_ports(1).map_err(anyhow::Error::msg)?[0];
    let mut machine = Machine::pvh(
        kernel,
        format!("faults={TOKEN} watchdog={policy} {}", options.append)
            .trim()
            .to_string(),
    );
    machine.extra_args.extend(
        [
            "-device",
            "qemu-xhci,id=xhci",
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7"),
            "-device",
            &hotplug::device_add_text(),
        ]
        .map(String::from),
    );
    let logs = paths::repo_root().join("target/bench-logs");
    machine.qmp = Some(logs.join(format!("{name}.qmp")));
    let echo = Echo {
        prefix: verbose.then(|| format!("[{name}] ")),
    };
    let mut q = Instance::spawn_machine(&machine, Some(&logs.join(format!("{name}.log"))), echo)?;
    match q.wait_for(Instant::now() + Duration::from_secs(60), |l| {
        l.contains("; serving ")
    }) {
        Wait::Found(_) => Ok(Bench { q, port }),
        other => bail!("{name}: the interface did not come up ({other:?})"),
    }
}

impl Bench {
    /// Waits for a console line containing `text`; returns its kernel time and arrival.
    fn line(&mut self, text: &str, timeout: Duration) -> Option<(f64, Instant)> {
        match self
            .q
            .wait_for(Instant::now() + timeout, |l| l.contains(text))
        {
            Wait::Found(line) => {
                let at = self.q.lines().last().map_or_else(Instant::now, |l| l.at);
                kernel_time(&line).map(|k| (k, at))
            }
            _ => None,
        }
    }

    fn wedge(&mut self, traffic: &Traffic, load: Load, classic: bool) -> WedgeFigures {
        let mut figures = WedgeFigures::default();
        if load == Load::Idle {
            // Just before the next message: the wedge meets the next packet 0.5 s later.
            let due = traffic
                .last_send()
                .map_or(Instant::now(), |s| s + Duration::from_millis(6500));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let injected_at = Instant::now();
        if let Err(e) = self
            .q
            .send_serial_line(&format!("fault {TOKEN} eth0 wedge"))
        {
            figures.error = Some(format!("console: {e}"));
            return figures;
        }
        let Some((k0, _)) = self.line("fault injected: wedge", Duration::from_secs(10)) else {
            figures.error = Some("no 'fault injected' line".into());
            return figures;
        };
        let detect_timeout = Duration::from_secs(if classic { 200 } else { 30 });
        let Some((k1, detected_at)) = self.line("no completion; resetting", detect_timeout) else {
            figures.error = Some(format!(
                "not detected within {} s",
                detect_timeout.as_secs()
            ));
            return figures;
        };
        figures.detect = Some(k1 - k0);
        if let Some((k3, _)) = self.line("first frame completed", Duration::from_secs(30)) {
            figures.first_frame = Some(k3 - k0);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(at) = traffic.moved_after(detected_at) {
                figures.moving = Some((at - injected_at).as_secs_f64());
                break;
            }
            if let Some(error) = traffic.error() {
                figures.error = Some(error);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if figures.moving.is_none() && figures.error.is_none() {
            figures.error = Some("traffic did not resume within 60 s".into());
        }
        figures
    }
}

/// Figures of one policy and load.
#[derive(Debug, Clone, Default)]
pub struct RecoveryRow {
    /// `watchdog=` value.
    pub policy: String,
    /// Load.
    pub load: Option<Load>,
    /// Every wedge.
    pub wedges: Vec<WedgeFigures>,
    /// The connection survived with every byte verified.
    pub survived: bool,
    /// Bytes verified end to end.
    pub bytes: u64,
    /// Error that ended the row.
    pub error: Option<String>,
}

fn measure(
    kernel: &std::path::Path,
    policy: &str,
    load: Load,
    options: &RecoveryOptions,
) -> RecoveryRow {
    let mut row = RecoveryRow {
        policy: policy.to_string(),
        load: Some(load),
        ..RecoveryRow::default()
    };
    let name = format!("recovery-{policy}-{}", load.name()).replace(':', "_");
    let result = (|| -> Result<()> {
        let mut bench = boot(kernel, policy, &name, options)?;
        if load == Load::Light {
            bench.q.send_serial_line("ping 10.0.2.2 1000")?;
        }
        let traffic = Traffic::start(bench.port, load)?;
        std::thread::sleep(Duration::from_secs(3));
        let classic = policy.starts_with("classic");
        for i in 0..options.wedges {
            let figures = bench.wedge(&traffic, load, classic);
            println!(
                "  {policy}/{} wedge {}: detect {} s, first frame {} s, moving {} s{}",
                load.name(),
                i + 1,
                secs(figures.detect),
                secs(figures.first_frame),
                secs(figures.moving),
                figures
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            let failed = figures.error.is_some();
            row.wedges.push(figures);
            if failed {
                break;
            }
            // Healthy traffic between wedges.
            std::thread::sleep(Duration::from_secs(3));
        }
        let (bytes, error) = traffic.finish();
        row.bytes = bytes;
        row.survived = error.is_none() && row.wedges.iter().all(|w| w.error.is_none());
        if let Some(error) = error {
            row.error = Some(error);
        }
        bench.q.kill();
        Ok(())
    })();
    if let Err(e) = result {
        row.error = Some(format!("{e:#}"));
    }
    row
}

/// Unplug and replug the usb-net under busy load: seconds from `device_add` to the echo stream
/// moving, and whether the connection survived.
fn measure_unplug(kernel: &std::path::Path, options: &RecoveryOptions) -> Result<(f64, bool, u64)> {
    let mut bench = boot(kernel, "progress", "recovery-unplug", options)?;
    let mut qmp = bench.q.connect_qmp(Duration::from_secs(10))?;
    let traffic = Traffic::start(bench.port, Load::Busy)?;
    std::thread::sleep(Duration::from_secs(3));
    qmp.device_del(hotplug::DEVICE_ID)?;
    if bench
        .line("usb: detached", Duration::from_secs(20))
        .is_none()
    {
        bail!("no detach line after device_del");
    }
    std::thread::sleep(Duration::from_secs(1));
    let added_at = Instant::now();
    qmp.device_add(hotplug::DEVICE_DRIVER, hotplug::DEVICE_PROPS)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let moving = loop {
        if let Some(at) = traffic.moved_after(added_at) {
            break (at - added_at).as_secs_f64();
        }
        if let Some(error) = traffic.error() {
            bail!("the connection failed: {error}");
        }
        if Instant::now() > deadline {
            bail!("traffic did not resume within 60 s of device_add");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_secs(2));
    let (bytes, error) = traffic.finish();
    bench.q.kill();
    Ok((moving, error.is_none(), bytes))
}

fn secs(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn median_max(values: impl Iterator<Item = Option<f64>>) -> String {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.2} / {:.2}", v[v.len() / 2], v[v.len() - 1])
}

/// `tether bench recovery`.
pub fn bench_recovery(options: &RecoveryOptions) -> Result<()> {
    if options.wedges == 0 {
        bail!("--wedges must be at least 1");
    }
    deps::ensure_host_tools(&[deps::Need::Qemu])?;
    let kernel = kernel_build::prebuilt_or_build(options.kernel.as_deref())?;
    let mut rows = Vec::new();
    for policy in &options.policies {
        for &load in &options.loads {
            println!("{policy} / {}:", load.name());
            rows.push(measure(&kernel, policy, load, options));
        }
    }
    let unplug = options.unplug.then(|| measure_unplug(&kernel, options));
    println!();
    println!(
        "TX watchdog recovery, {} wedge(s) per row{}; seconds, median / max; detect and first \
         frame on the kernel's clock, moving on the host's",
        options.wedges,
        if options.append.is_empty() {
            String::new()
        } else {
            format!(", kernel `{}`", options.append)
        }
    );
    println!("| policy | load | wedge -> detect | wedge -> first frame after reset | wedge -> TCP moving | connection survived | bytes verified |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.policy,
            row.load.map_or("-", Load::name),
            median_max(row.wedges.iter().map(|w| w.detect)),
            median_max(row.wedges.iter().map(|w| w.first_frame)),
            median_max(row.wedges.iter().map(|w| w.moving)),
            if row.survived {
                "yes".to_string()
            } else {
                format!("NO ({})", row.error.as_deref().unwrap_or("a wedge failed"))
            },
            row.bytes
        );
    }
    match unplug {
        Some(Ok((moving, survived, bytes))) => println!(
            "| progress | busy, device_del + device_add | - | - | {moving:.2} after device_add | {} | {bytes} |",
            if survived { "yes" } else { "NO" }
        ),
        Some(Err(e)) => println!("| progress | busy, device_del + device_add | unplug run failed: {e:#} |||||"),
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_time_from_console_lines() {
        assert_eq!(
            kernel_time("[    6.361299] WARN  net::fault: eth0: fault injected"),
            Some(6.361299)
        );
        assert_eq!(kernel_time("tether> [   12.5] INFO x"), Some(12.5));
        assert_eq!(kernel_time("[x] y"), None);
        assert_eq!(kernel_time("no prefix"), None);
    }

    #[test]
    fn loads_round_trip() {
        for load in [Load::Idle, Load::Busy, Load::Light] {
            assert_eq!(Load::parse(load.name()), Ok(load));
        }
        assert!(Load::parse("heavy").is_err());
    }

    #[test]
    fn median_and_max() {
        assert_eq!(
            median_max([Some(1.0), None, Some(3.0), Some(2.0)].into_iter()),
            "2.00 / 3.00"
        );
        assert_eq!(median_max([None].into_iter()), "-");
    }
}
