//! The host-driven hotplug test's driver: QMP `device_del`/`device_add` cycles of the usb-net
//! device on a running kernel, each step awaited on the serial console, and the kernel's `mem`
//! counters compared before and after (rules in `tether_tests::hotplug`).

use crate::instance::{Instance, Wait};
use crate::qmp::Qmp;
use std::thread;
use std::time::{Duration, Instant};
use tether_tests::hotplug;
use tether_tests::protocol::{self, KernelExit, MemStats, UsbEventKind};

/// How long the kernel is left alone after an attach before `mem` is asked: the driver's
/// attach (its rings, its queued bulk-IN transfers) may still be allocating when the line
/// appears. Both samples wait the same.
pub const MEM_SETTLE: Duration = Duration::from_millis(500);
/// `mem` samples taken after the cycles before a difference counts as a leak (a transient
/// allocation goes away, a leak does not), [`MEM_SETTLE`] apart.
pub const MEM_SAMPLES: u32 = 3;

/// How a hotplug run is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugConfig {
    /// Unplug/replug cycles.
    pub cycles: u32,
    /// Bound on QEMU's start to the ready line and the first attach line.
    pub boot_timeout: Duration,
    /// Bound on each step: one QMP command with its kernel line, one `mem` reply.
    pub step_timeout: Duration,
    /// Pause after an attach before `mem`.
    pub settle: Duration,
}

impl HotplugConfig {
    /// The test run's pacing with `cycles` cycles.
    pub fn with_cycles(cycles: u32) -> Self {
        HotplugConfig {
            cycles,
            boot_timeout: hotplug::BOOT_TIMEOUT,
            step_timeout: hotplug::STEP_TIMEOUT,
            settle: MEM_SETTLE,
        }
    }
}

/// What a passed hotplug run measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotplugReport {
    /// Cycles completed (all of them).
    pub cycles: u32,
    /// Total time of the cycles.
    pub total: Duration,
    /// The slowest cycle.
    pub slowest: Duration,
    /// `mem` after the first attach.
    pub before: MemStats,
    /// `mem` after the last cycle.
    pub after: MemStats,
    /// Port paths the device was attached at (QEMU picks the next free port each time).
    pub ports: Vec<String>,
    /// The counters matched only after one more replug (the last device had held more).
    pub extra_cycle: bool,
}

impl HotplugReport {
    /// The test line's detail: cycles, time per cycle, the counters.
    pub fn summary(&self) -> String {
        let per_cycle = self.total.as_secs_f64() / f64::from(self.cycles.max(1));
        let dma = match (self.before.dma_small, self.after.dma_small) {
            (Some((b0, p0)), Some((b1, p1))) => {
                format!(", small DMA blocks {b0} in {p0} pages -> {b1} in {p1}")
            }
            _ => String::new(),
        };
        format!(
            "{} cycles, {:.0} ms/cycle (slowest {:.0} ms); frames free {} -> {}, heap {} -> {} KiB{dma}{}; ports {}",
            self.cycles,
            per_cycle * 1000.0,
            self.slowest.as_secs_f64() * 1000.0,
            self.before.frames_free,
            self.after.frames_free,
            self.before.heap_used_kib,
            self.after.heap_used_kib,
            if self.extra_cycle {
                " (after one more replug: the last device held more than the first)"
            } else {
                ""
            },
            self.ports.join(" "),
        )
    }
}

/// Serial lines read in order: each wait looks at lines after the cursor only.
struct Console<'a> {
    q: &'a mut Instance,
    cursor: usize,
}

impl Console<'_> {
    /// The first line at or after the cursor matching `matches` (the cursor moves past it),
    /// by `deadline`. A panic line, QEMU's exit or the deadline is an error naming `what`.
    fn await_line(
        &mut self,
        what: &str,
        deadline: Instant,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            while let Some(line) = self.q.lines().get(self.cursor) {
                self.cursor += 1;
                if protocol::is_panic_line(&line.text) {
                    return Err(format!("kernel panicked awaiting {what}: {}", line.text));
                }
                if matches(&line.text) {
                    return Ok(line.text.clone());
                }
            }
            match self.q.next_line(deadline) {
                Wait::Found(_) => {}
                Wait::Exited(status) => {
                    return Err(format!(
                        "QEMU exited awaiting {what}: {}",
                        KernelExit::from_status(status)
                    ))
                }
                Wait::TimedOut => {
                    return Err(format!("no {what} within {} s", timeout.as_secs_f64()))
                }
            }
        }
    }

    /// Moves the cursor past every line received so far.
    fn skip_received(&mut self) {
        self.cursor = self.q.lines().len();
    }

    /// Types `mem` and parses the reply.
    fn mem(&mut self, timeout: Duration) -> Result<MemStats, String> {
        self.skip_received();
        self.q
            .send_serial_line("mem")
            .map_err(|e| format!("console: {e:#}"))?;
        let line = self.await_line(
            "reply to the console command `mem`",
            Instant::now() + timeout,
            timeout,
            |l| protocol::parse_mem_line(l).is_some(),
        )?;
        Ok(protocol::parse_mem_line(&line).expect("matched above"))
    }
}

fn usb_net_line(kind: UsbEventKind) -> impl Fn(&str) -> Option<String> {
    move |line| {
        protocol::parse_usb_event(line)
            .filter(|e| e.kind == kind && e.is_device(hotplug::VID_PID.0, hotplug::VID_PID.1))
            .map(|e| e.port_path)
    }
}

/// Runs the hotplug test on a booting instance whose machine has the hotplug devices and a
/// QMP socket: waits for the ready and attach lines, runs `config.cycles` unplug/replug
/// cycles sampling `mem` after the first and the last, and judges the counters. `Err` says
/// which step of which cycle failed, or what leaked.
pub fn drive(q: &mut Instance, config: &HotplugConfig) -> Result<HotplugReport, String> {
    let boot_deadline = q.spawned_at() + config.boot_timeout;
    let mut qmp: Qmp = q
        .connect_qmp(config.step_timeout.min(config.boot_timeout))
        .map_err(|e| format!("{e:#}"))?;
    let mut console = Console { q, cursor: 0 };
    console.await_line(
        "ready line",
        boot_deadline,
        config.boot_timeout,
        protocol::is_ready_line,
    )?;
    // The attach line may come before or after the ready line.
    console.cursor = 0;
    let attached = usb_net_line(UsbEventKind::Attached);
    let attach_what = format!(
        "`usb: attached ... {:04x}:{:04x}` line",
        hotplug::VID_PID.0,
        hotplug::VID_PID.1
    );
    let detach_what = attach_what.replace("attached", "detached");
    let first = console.await_line(&attach_what, boot_deadline, config.boot_timeout, |l| {
        attached(l).is_some()
    })?;
    let mut ports = vec![attached(&first).expect("matched above")];
    let receiving = |l: &str| l.contains(hotplug::DRIVER_RECEIVING);
    let receiving_what = format!("`{}` line", hotplug::DRIVER_RECEIVING);
    console.await_line(
        &receiving_what,
        boot_deadline,
        config.boot_timeout,
        receiving,
    )?;

    // The baseline is taken after the first replug: the boot's attach created the interface
    // (which outlives its device) and got its DHCP lease, which leaves buffers of its own;
    // every replug after it must leave memory exactly as the one before.
    let mut before = None;

    let detached = usb_net_line(UsbEventKind::Detached);
    // One unplug/replug, awaited up to the driver's `receiving` line; returns the new port.
    let mut replug = |console: &mut Console, cycle: u32| -> Result<String, String> {
        let at = |step: &str, e: String| format!("cycle {cycle} of {}: {step}: {e}", config.cycles);
        let step = Instant::now();
        qmp.device_del(hotplug::DEVICE_ID)
            .map_err(|e| at(&format!("device_del {}", hotplug::DEVICE_ID), e.to_string()))?;
        console
            .await_line(
                &detach_what,
                step + config.step_timeout,
                config.step_timeout,
                |l| detached(l).is_some(),
            )
            .map_err(|e| at("unplug", e))?;

        let step = Instant::now();
        qmp.device_add(hotplug::DEVICE_DRIVER, hotplug::DEVICE_PROPS)
            .map_err(|e| {
                at(
                    &format!("device_add {}", hotplug::device_add_text()),
                    e.to_string(),
                )
            })?;
        let line = console
            .await_line(
                &attach_what,
                step + config.step_timeout,
                config.step_timeout,
                |l| attached(l).is_some(),
            )
            .map_err(|e| at("replug", e))?;
        let port = attached(&line).expect("matched above");
        console
            .await_line(
                &receiving_what,
                step + config.step_timeout,
                config.step_timeout,
                receiving,
            )
            .map_err(|e| at("driver start", e))?;
        Ok(port)
    };
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for cycle in 1..=config.cycles {
        let cycle_started = Instant::now();
        let port = replug(&mut console, cycle)?;
        if !ports.contains(&port) {
            ports.push(port);
        }
        slowest = slowest.max(cycle_started.elapsed());
        if cycle == 1 {
            thread::sleep(config.settle);
            before = Some(
                console
                    .mem(config.step_timeout)
                    .map_err(|e| format!("cycle 1 of {}: mem: {e}", config.cycles))?,
            );
        }
    }
    let before = before.ok_or("no cycle ran")?;
    let total = started.elapsed();

    // Samples until the counters match. What the device in place holds may differ from what
    // the one before held (a transfer queued twice, say) without anything being lost; so a
    // difference that outlasts the samples gets one more replug: a leak stays, a difference
    // the device held goes with it.
    let mut after;
    let mut samples = 0;
    let mut extra_cycle = false;
    loop {
        thread::sleep(config.settle);
        after = console.mem(config.step_timeout)?;
        samples += 1;
        match hotplug::judge_leaks(&before, &after) {
            Ok(()) => break,
            Err(_) if samples < MEM_SAMPLES => continue,
            Err(_) if !extra_cycle => {
                extra_cycle = true;
                samples = 0;
                replug(&mut console, config.cycles + 1)?;
            }
            Err(leak) => {
                return Err(format!(
                    "{leak} after {} cycles ({MEM_SAMPLES} samples, and again after one more)",
                    config.cycles
                ))
            }
        }
    }
    Ok(HotplugReport {
        cycles: config.cycles,
        total,
        slowest,
        before,
        after,
        ports,
        extra_cycle,
    })
}

/// The hub hotplug test on a booting instance (machine from `hotplug::HUB_QEMU_ARGS`, with QMP):
/// the hub and its mouse come up; a keyboard plugged into hub port 2 at run time is attached
/// behind the hub (found through the hub's status endpoint) and detached when pulled; pulling
/// the hub detaches the mouse behind it and then the hub.
pub fn drive_hub(q: &mut Instance, config: &HotplugConfig) -> Result<String, String> {
    let boot_deadline = q.spawned_at() + config.boot_timeout;
    let mut qmp: Qmp = q
        .connect_qmp(config.step_timeout.min(config.boot_timeout))
        .map_err(|e| format!("{e:#}"))?;
    let mut console = Console { q, cursor: 0 };
    let event = |kind: UsbEventKind, path: &'static str| {
        move |line: &str| {
            protocol::parse_usb_event(line).is_some_and(|e| e.kind == kind && e.port_path == path)
        }
    };
    let what = |kind: &str, path: &str| format!("`usb: {kind} ... {path}` line");
    console.await_line(
        &what("attached", hotplug::HUB_MOUSE_PATH),
        boot_deadline,
        config.boot_timeout,
        event(UsbEventKind::Attached, hotplug::HUB_MOUSE_PATH),
    )?;
    let step = |what: &str| {
        (
            Instant::now() + config.step_timeout,
            config.step_timeout,
            what.to_string(),
        )
    };

    let started = Instant::now();
    qmp.device_add(
        "usb-kbd",
        &[("bus", "xhci.0"), ("port", "4.2"), ("id", "hubkbd")],
    )
    .map_err(|e| format!("device_add usb-kbd: {e}"))?;
    let (deadline, timeout, w) = step(&what("attached", hotplug::HUB_KEYBOARD_PATH));
    console.await_line(
        &w,
        deadline,
        timeout,
        event(UsbEventKind::Attached, hotplug::HUB_KEYBOARD_PATH),
    )?;
    let attach_time = started.elapsed();

    qmp.device_del("hubkbd")
        .map_err(|e| format!("device_del hubkbd: {e}"))?;
    let (deadline, timeout, w) = step(&what("detached", hotplug::HUB_KEYBOARD_PATH));
    console.await_line(
        &w,
        deadline,
        timeout,
        event(UsbEventKind::Detached, hotplug::HUB_KEYBOARD_PATH),
    )?;

    qmp.device_del("hub0")
        .map_err(|e| format!("device_del hub0: {e}"))?;
    let (deadline, timeout, w) = step(&what("detached", hotplug::HUB_MOUSE_PATH));
    console.await_line(
        &w,
        deadline,
        timeout,
        event(UsbEventKind::Detached, hotplug::HUB_MOUSE_PATH),
    )?;
    let (deadline, timeout, w) = step(&what("detached", hotplug::HUB_PATH));
    console.await_line(
        &w,
        deadline,
        timeout,
        event(UsbEventKind::Detached, hotplug::HUB_PATH),
    )?;
    Ok(format!(
        "keyboard on hub port 2 attached {:.0} ms after device_add, detached; hub removal detached {} then {}",
        attach_time.as_secs_f64() * 1000.0,
        hotplug::HUB_MOUSE_PATH,
        hotplug::HUB_PATH
    ))
}

#[cfg(test)]
mod tests {
    //! The driver against a fake QEMU: this test binary itself, started again to run only
    //! [`fake_qemu_child`], which serves QMP and plays the kernel's serial console.

    use super::*;
    use crate::instance::Echo;
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;

    const MODE_ENV: &str = "TETHER_FAKE_QEMU_MODE";
    const SOCKET_ENV: &str = "TETHER_FAKE_QEMU_QMP";

    /// Not a test when run normally (returns at once). Started with [`MODE_ENV`] set, it is
    /// a fake QEMU: a kernel that prints the ready and attach lines, answers `mem` on stdin,
    /// and prints attach/detach lines as QMP unplugs and replugs usbnet0. Modes: `ok`,
    /// `leak-frames` (a frame lost per unplug), `leak-heap` (1 KiB per unplug), `held-once` (the
    /// fourth device holds a frame more, returned when it is unplugged), `no-detach`
    /// (never prints the detach line), `panic-on-replug`.
    #[test]
    fn fake_qemu_child() {
        let Ok(mode) = std::env::var(MODE_ENV) else {
            return;
        };
        let socket = PathBuf::from(std::env::var(SOCKET_ENV).unwrap());
        let frames = Arc::new(AtomicU64::new(60000));
        let heap = Arc::new(AtomicU64::new(800));
        let listener = UnixListener::bind(&socket).unwrap();
        println!("tether: booted by PVH (-), command line ''");
        println!("TETHER READY cpus=2 uptime_us=28440");
        println!("[    0.066332] INFO  usb: attached xhci1 1-5 0525:a4a2 Full CDC 'QEMU USB Network Device' (cdc-ecm)");
        println!(
            "[    0.071000] INFO  usb::ecm: xhci1 1-5: cdc-ecm: receiving (4 transfers queued)"
        );

        let (f, h) = (Arc::clone(&frames), Arc::clone(&heap));
        thread::spawn(move || {
            let mut input = BufReader::new(std::io::stdin());
            let mut command = Vec::new();
            while input.read_until(b'\r', &mut command).unwrap_or(0) > 0 {
                // The console echoes, then answers on its own line.
                let text = String::from_utf8_lossy(&command).trim().to_string();
                println!("tether> {text}");
                if text == "mem" {
                    println!(
                        "frames: {} free of 65280 (234 MiB free); heap: {} KiB in use of 2048 KiB; 0 thread stacks pooled",
                        f.load(Ordering::SeqCst),
                        h.load(Ordering::SeqCst)
                    );
                }
                command.clear();
            }
        });

        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut send = |v: Value| writeln!(writer, "{v}").unwrap();
        send(json!({"QMP": {"version": {}, "capabilities": []}}));
        let attached = AtomicBool::new(true);
        let port = AtomicU32::new(5);
        let adds = AtomicU32::new(0);
        let holding = AtomicBool::new(false);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let command: Value = serde_json::from_str(&line).unwrap();
            line.clear();
            let id = command["id"].clone();
            match command["execute"].as_str().unwrap() {
                "device_del" if attached.swap(false, Ordering::SeqCst) => {
                    send(json!({"return": {}, "id": id}));
                    if holding.swap(false, Ordering::SeqCst) {
                        frames.fetch_add(1, Ordering::SeqCst);
                    }
                    match mode.as_str() {
                        "leak-frames" => drop(frames.fetch_sub(1, Ordering::SeqCst)),
                        "leak-heap" => drop(heap.fetch_add(1, Ordering::SeqCst)),
                        _ => {}
                    }
                    if mode != "no-detach" {
                        println!(
                            "[    1.000000] INFO  usb: detached xhci1 1-{} 0525:a4a2",
                            port.load(Ordering::SeqCst)
                        );
                    }
                    send(
                        json!({"event": "DEVICE_DELETED", "data": {"device": "usbnet0", "path": "/machine/peripheral/usbnet0"}}),
                    );
                }
                "device_add" if !attached.swap(true, Ordering::SeqCst) => {
                    assert_eq!(command["arguments"]["id"], "usbnet0");
                    send(json!({"return": {}, "id": id}));
                    if mode == "panic-on-replug" {
                        println!("KERNEL PANIC on cpu 1: usb: double free");
                        continue;
                    }
                    if mode == "held-once" && adds.fetch_add(1, Ordering::SeqCst) == 3 {
                        frames.fetch_sub(1, Ordering::SeqCst);
                        holding.store(true, Ordering::SeqCst);
                    }
                    // QEMU takes the next free port: 5, 6, 7, 8, 5, ...
                    let next = port.load(Ordering::SeqCst) % 8 + 1;
                    port.store(next.max(5), Ordering::SeqCst);
                    println!(
                        "[    1.100000] INFO  usb: attached xhci1 1-{} 0525:a4a2 Full CDC",
                        next.max(5)
                    );
                    println!("[    1.100100] INFO  usb::ecm: xhci1 1-{}: cdc-ecm: receiving (4 transfers queued)", next.max(5));
                }
                "qmp_capabilities" => send(json!({"return": {}, "id": id})),
                other => send(
                    json!({"error": {"class": "GenericError", "desc": format!("{other} refused")}, "id": id}),
                ),
            }
        }
        // QMP closed: sleep until killed, like QEMU would run on.
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        thread::sleep(Duration::from_secs(60));
    }

    fn run_fake(
        mode: &str,
        config: &HotplugConfig,
    ) -> (Result<HotplugReport, String>, Vec<String>) {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "tether-hotplug-{}-{}.qmp",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "hotplug::tests::fake_qemu_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(MODE_ENV, mode)
            .env(SOCKET_ENV, &socket);
        let mut q = Instance::spawn_with_qmp(cmd, Some(&socket), None, Echo::default()).unwrap();
        let result = drive(&mut q, config);
        q.kill();
        (result, q.texts())
    }

    fn quick(cycles: u32) -> HotplugConfig {
        HotplugConfig {
            cycles,
            boot_timeout: Duration::from_secs(20),
            step_timeout: Duration::from_secs(5),
            settle: Duration::from_millis(10),
        }
    }

    #[test]
    fn cycles_pass_on_a_kernel_that_returns_everything() {
        let (result, lines) = run_fake("ok", &quick(6));
        let report = result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
        assert_eq!(report.cycles, 6);
        assert_eq!(report.before, report.after);
        assert_eq!(report.before.frames_free, 60000);
        assert_eq!(report.ports, ["1-5", "1-6", "1-7", "1-8"]);
        let summary = report.summary();
        assert!(summary.starts_with("6 cycles, "), "{summary}");
        assert!(
            summary.contains("frames free 60000 -> 60000, heap 800 -> 800 KiB"),
            "{summary}"
        );
        // `mem` was typed twice (after the first cycle and at the end), `\r`-ended.
        assert_eq!(lines.iter().filter(|l| *l == "tether> mem").count(), 2);
    }

    #[test]
    fn a_lost_frame_per_cycle_fails() {
        let (result, _) = run_fake("leak-frames", &quick(4));
        let error = result.unwrap_err();
        assert!(
            error.contains("frames free 59999 -> 59995 (+4 frames not returned)"),
            "{error}"
        );
        assert!(error.contains("after 4 cycles"), "{error}");
    }

    #[test]
    fn a_frame_the_last_device_holds_is_not_a_leak() {
        let (result, lines) = run_fake("held-once", &quick(4));
        let report = result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
        assert_eq!(report.before.frames_free, report.after.frames_free);
        // Three samples, a replug, one more sample (plus the baseline).
        assert_eq!(lines.iter().filter(|l| *l == "tether> mem").count(), 5);
        assert!(report.extra_cycle);
        assert!(report.summary().contains("after one more replug"));
    }

    #[test]
    fn heap_growth_within_slack_passes_beyond_fails() {
        let (result, _) = run_fake("leak-heap", &quick(3));
        assert_eq!(result.unwrap().after.heap_used_kib, 803);
        // The baseline is taken after the first cycle.
        let (result, _) = run_fake("leak-heap", &quick(hotplug::HEAP_SLACK_KIB as u32 + 2));
        let error = result.unwrap_err();
        assert!(error.contains("heap in use 801 KiB -> 867 KiB"), "{error}");
    }

    #[test]
    fn missing_detach_line_times_out_in_the_first_cycle() {
        let mut config = quick(3);
        config.step_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let (result, _) = run_fake("no-detach", &config);
        let error = result.unwrap_err();
        assert!(
            error.starts_with(
                "cycle 1 of 3: unplug: no `usb: detached ... 0525:a4a2` line within 0.3 s"
            ),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    #[test]
    fn a_panic_fails_at_once() {
        let (result, _) = run_fake("panic-on-replug", &quick(3));
        let error = result.unwrap_err();
        assert!(
            error.starts_with("cycle 1 of 3: replug: kernel panicked awaiting"),
            "{error}"
        );
        assert!(error.contains("double free"), "{error}");
    }
}
