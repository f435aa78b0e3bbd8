//! `net::virtio_tap_offloads`: virtio-net on a tap device in a private network namespace,
//! where (unlike user networking) QEMU offers the offloads. The host's stack hands over
//! segments of up to 64 KiB with partial checksums, which the driver gathers from several
//! receive buffers and completes; the stack sends segments of up to 60 KB, which the device
//! cuts to the peer's MSS and checksums.
//!
//! Checked: both are negotiated; random bytes sent through the echo service come back byte for
//! byte (both ways through the offloads: a completed checksum would "verify" corrupted bytes
//! too, so only the content comparison can tell); a stock iperf3 client's bytes all arrive;
//! the driver counted frames spanning several buffers, frames it had segmented, and no bad
//! checksum offset.
//!
//! The echo client runs inside the namespace as this same program (`__echo-client`).

use crate::boots::{echo_exchange_at, failure_context, random_bytes, BootSettings};
use crate::instance::{Echo, Instance, Wait};
use crate::preset::Machine;
use crate::report::TestOutcome;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tether_tests::iperf3 as spec;
use tether_tests::net::number_before;

/// The test's name under `net::`.
pub const NAME: &str = "virtio_tap_offloads";
const TAP: &str = "tetap0";
const HOST: &str = "198.18.5.1";
const GUEST: &str = "198.18.5.2";
const ECHO_BYTES: usize = 8 << 20;
/// A stock client for 3 s, host to guest: what large receive speeds up.
const IPERF3_RUN: spec::ClientRun = spec::ClientRun::one_stream(NAME, &["-t", "3"], false);

/// A private namespace with the tap device; removed when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("tether-offload-{}", std::process::id());
        let netns = Netns(name.clone());
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {} (this test needs root for its network namespace)",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["netns", "add", &name])?;
        run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        run(&[
            "netns", "exec", &name, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
        ])?;
        let host = format!("{HOST}/24");
        run(&[
            "netns", "exec", &name, "ip", "addr", "add", &host, "dev", TAP,
        ])?;
        run(&["netns", "exec", &name, "ip", "link", "set", TAP, "up"])?;
        Ok(netns)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        self.command(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Boots Tether on the tap device and runs the checks above.
pub fn run_offload_test(kernel: &Path, settings: &BootSettings) -> TestOutcome {
    let test = format!("net::{NAME}");
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(reason) => return TestOutcome::fail(test, reason),
    };
    let mut machine = Machine::pvh(kernel, format!("ip={GUEST}/24 gw={HOST}"));
    machine.extra_args.extend(
        [
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]
        .map(String::from),
    );
    let mut cmd = netns.command(&crate::preset::qemu_program());
    cmd.args(machine.args());
    let log = settings.log_dir.join(format!("{NAME}.log"));
    let echo = Echo {
        prefix: settings.echo.then(|| format!("[{NAME}] ")),
    };
    let mut q = match Instance::spawn(cmd, Some(&log), echo) {
        Ok(q) => q,
        Err(e) => return TestOutcome::fail(test, format!("cannot start QEMU: {e:#}")),
    };
    let result = exercise(&mut q, &netns);
    q.kill();
    match result {
        Ok(summary) => TestOutcome::pass(&test, summary),
        Err(reason) => TestOutcome::fail(&test, reason),
    }
    .with_context(failure_context(&q, &log, &machine))
}

fn exercise(q: &mut Instance, netns: &Netns) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    match q.wait_for(deadline, |l| l.contains("receive offloads:")) {
        Wait::Found(line) if line.contains("large receive and send") => {}
        Wait::Found(line) => {
            return Err(format!("large receive and send not negotiated: `{line}`"))
        }
        other => return Err(format!("no virtio-net announcement: {other:?}")),
    }
    // The interface may announce itself before the driver's line, or after it.
    let served = |q: &Instance| q.lines().iter().any(|l| l.text.contains("; serving "));
    if !served(q)
        && !matches!(
            q.wait_for(deadline, |l| l.contains("; serving ")),
            Wait::Found(_)
        )
    {
        return Err("the interface never served".into());
    }

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = netns.output(
        &exe.to_string_lossy(),
        &[
            "__echo-client",
            &format!("{GUEST}:7"),
            &ECHO_BYTES.to_string(),
        ],
    )?;
    let echo = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "echo through the tap: {echo} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }

    let out = netns.output(
        "iperf3",
        &["-c", GUEST, "-t", "3", "-J", "--connect-timeout", "10000"],
    )?;
    let report = spec::parse_client_json(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| format!("iperf3 {}: {e}", out.status))?;
    // The kernel's own count of what arrived, once the test is over.
    let Wait::Found(done) = q.wait_for(Instant::now() + spec::LOG_TIMEOUT, |l| {
        spec::parse_done_line(l).is_some()
    }) else {
        return Err("no kernel `iperf3: test N done` line".into());
    };
    let server = spec::parse_done_line(&done).ok_or("unparsable done line")?;
    let iperf3 = spec::judge(&IPERF3_RUN, &report, &server)?;

    q.send_serial_line("virtio").map_err(|e| e.to_string())?;
    let Wait::Found(receive) = q.wait_for(Instant::now() + Duration::from_secs(10), |l| {
        l.trim_start().starts_with("receive:") && l.contains("spanning several")
    }) else {
        return Err("no `virtio` receive line".into());
    };
    let count = |line: &str, what: &str| {
        number_before(line, what).ok_or(format!("no `{what}` count in `{line}`"))
    };
    let merged = count(&receive, " frames spanning several")?;
    let bad = count(&receive, " with a bad checksum offset")?;
    let refused = count(&receive, " refused for a bad checksum")?;
    if merged == 0 {
        return Err(format!("no frame spanned several buffers: `{receive}`"));
    }
    if bad != 0 {
        return Err(format!("{bad} frames with a bad checksum offset"));
    }
    if refused != 0 {
        return Err(format!("{refused} frames refused for a bad checksum"));
    }
    let Wait::Found(transmit) = q.wait_for(Instant::now() + Duration::from_secs(10), |l| {
        l.trim_start().starts_with("transmit:") && l.contains("segmented by the device")
    }) else {
        return Err("no `virtio` transmit line".into());
    };
    let segmented = count(&transmit, " frames segmented by the device")?;
    if segmented == 0 {
        return Err(format!(
            "no frame was handed over for segmentation: `{transmit}`"
        ));
    }
    Ok(format!(
        "{echo}; iperf3 {iperf3}; {merged} frames spanned several receive buffers, {segmented} were sent for the device to segment"
    ))
}

/// `__echo-client ADDRESS BYTES`: random bytes through the echo service at ADDRESS, compared
/// on return. Prints a summary; exit status 0 when every byte came back in order.
pub fn echo_client_main(args: &[String]) -> i32 {
    let parsed = match args {
        [address, bytes] => address
            .parse::<SocketAddr>()
            .ok()
            .zip(bytes.parse::<usize>().ok()),
        _ => None,
    };
    let Some((address, bytes)) = parsed else {
        eprintln!("usage: __echo-client ADDRESS BYTES");
        return 2;
    };
    match echo_exchange_at(address, &random_bytes(7, bytes)) {
        Ok(seconds) => {
            println!("{} MiB echoed byte for byte in {seconds:.2} s", bytes >> 20);
            0
        }
        Err(reason) => {
            println!("{reason}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use tether_tests::net::number_before;

    #[test]
    fn counts_are_read_from_the_receive_line() {
        let line = "  receive: 128 buffers posted, 0 withheld (no room in the stack's queue), 412 frames spanning several, 0 without a header, 3 with a bad checksum offset, 0 refused for a bad checksum";
        assert_eq!(number_before(line, " frames spanning several"), Some(412));
        assert_eq!(number_before(line, " with a bad checksum offset"), Some(3));
        assert_eq!(number_before(line, " refused for a bad checksum"), Some(0));
        assert_eq!(number_before(line, " nothing"), None);
    }
}
