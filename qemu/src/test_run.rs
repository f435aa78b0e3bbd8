//! `tether test`: every test, in order — host unit tests, the in-kernel suite, the
//! crash-on-purpose and warning boots, the ISO under SeaBIOS and OVMF — then `N passed, N failed`.

use crate::boots::{self, BootSettings};
use crate::deps::{self, Need};
use crate::host_tests;
use crate::kernel_build;
use crate::net_http;
use crate::net_iperf3;
use crate::net_offload;
use crate::net_recovery;
use crate::paths;
use crate::pool;
use crate::profile;
use crate::report::{TestOutcome, Totals};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tether_tests::boot_tests::{BootTest, BOOT_TESTS, HOTPLUG_TEST_ENABLED};
use tether_tests::hotplug;
use tether_tests::net::{NetBoot, NET_BOOTS};
use tether_tests::suites::{IsoBoot, ISO_BOOTS};

/// QEMU boots run at once (these hosts have 2 cores; each TCG guest wants more).
pub const PARALLEL_BOOTS: usize = 2;
/// Kernel command line baked into the test ISO.
pub const TEST_ISO_CMDLINE: &str = "";

/// Options of `tether test`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestOptions {
    /// Echo every boot's serial output.
    pub verbose: bool,
    /// Skip the host unit tests (`cargo test`).
    pub skip_host_tests: bool,
    /// Run only boots whose name contains this text.
    pub filter: Option<String>,
    /// Boot this kernel ELF instead of building one.
    pub kernel: Option<PathBuf>,
}

enum BootJob<'a> {
    KtestSuite,
    Single(&'a BootTest),
    Hotplug,
    HubHotplug,
    NetEcho(&'a tether_tests::net::EchoBoot),
    NetHttp,
    NetStatic,
    /// A recovery test (issues 5 and 6): its name and runner.
    Recovery(&'static str, fn(&Path, &BootSettings) -> TestOutcome),
    NetIperf3,
    NetIperf3Virtio,
    Net(&'a NetBoot),
    Iso(&'a IsoBoot),
}

impl BootJob<'_> {
    fn name(&self) -> &str {
        match self {
            BootJob::KtestSuite => "ktest_suite",
            BootJob::Single(test) => test.name,
            BootJob::Hotplug => hotplug::NAME,
            BootJob::HubHotplug => hotplug::HUB_NAME,
            BootJob::NetEcho(boot) => boot.name,
            BootJob::NetHttp => tether_tests::http::HTTP_NAME,
            BootJob::NetStatic => tether_tests::http::STATIC_NAME,
            BootJob::Recovery(name, _) => name,
            BootJob::NetIperf3 => tether_tests::iperf3::BOOT_NAME,
            BootJob::NetIperf3Virtio => tether_tests::iperf3::VIRTIO_BOOT_NAME,
            BootJob::Net(boot) => boot.name,
            BootJob::Iso(boot) => boot.name,
        }
    }
}

/// Runs every test; returns whether all passed.
pub fn run_all_tests(options: &TestOptions) -> Result<bool> {
    let started = Instant::now();
    deps::ensure_host_tools(&[
        Need::Qemu,
        Need::IsoTools,
        Need::Ovmf,
        Need::Curl,
        Need::Iperf3,
    ])?;
    let mut totals = Totals::default();

    if options.skip_host_tests {
        println!("== host unit tests: skipped");
    } else {
        println!(
            "== host unit tests: cargo {}",
            host_tests::HOST_TEST_ARGS.join(" ")
        );
        let (counts, cargo_ok) = host_tests::run_host_tests()?;
        totals.add_counts(
            "host unit tests",
            counts.passed.into(),
            counts.failed.into(),
        );
        if !cargo_ok && counts.failed == 0 {
            // A build failure or a crashed test binary: no `test result` line says so.
            totals.add(&TestOutcome::fail(
                "host_unit_tests",
                "cargo test failed (see above)",
            ));
        }
        println!(
            "== host unit tests: {} passed, {} failed in {} test binaries",
            counts.passed, counts.failed, counts.result_lines
        );
    }

    match &options.kernel {
        Some(elf) => println!("== kernel: prebuilt {}", elf.display()),
        None => println!("== kernel build"),
    }
    match kernel_build::prebuilt_or_build(options.kernel.as_deref()) {
        Ok(kernel) => run_boots(&kernel, options, &mut totals),
        Err(e) => {
            let outcome = TestOutcome::fail("kernel_build", format!("{e:#}"));
            outcome.print();
            totals.add(&outcome);
            println!("== boots skipped: no kernel");
        }
    }

    println!("== done in {:.0} s", started.elapsed().as_secs_f64());
    if !totals.failures.is_empty() {
        println!("failures:");
        for name in &totals.failures {
            println!("    {name}");
        }
    }
    println!("{}", totals.closing_line());
    Ok(totals.failed == 0)
}

fn run_boots(kernel: &Path, options: &TestOptions, totals: &mut Totals) {
    println!("== ISO build");
    let iso: Result<PathBuf, String> = build_test_iso(kernel).map_err(|e| format!("{e:#}"));
    match &iso {
        Ok(path) => println!("ISO: {}", path.display()),
        Err(e) => println!("ISO build FAILED: {e}"),
    }

    // The in-kernel suite boots alone: its tests measure timeouts and fairness, and a second
    // TCG guest on a 2-core host would steal its vCPUs' time. So does the isolation test, which
    // compares two iperf3 runs a few seconds apart: a neighbouring boot starting between them
    // cut the second to 29% of the first. The short boots then share.
    let mut alone = vec![
        BootJob::KtestSuite,
        BootJob::Recovery(
            net_recovery::ISOLATION_NAME,
            net_recovery::run_nic_isolation_test,
        ),
    ];
    let mut shared: Vec<BootJob> = BOOT_TESTS.iter().map(BootJob::Single).collect();
    if HOTPLUG_TEST_ENABLED {
        shared.push(BootJob::Hotplug);
        shared.push(BootJob::HubHotplug);
    }
    shared.extend(tether_tests::net::ECHO_BOOTS.iter().map(BootJob::NetEcho));
    shared.extend([BootJob::NetHttp, BootJob::NetStatic]);
    shared.extend([
        BootJob::Recovery(
            net_recovery::WEDGE_NAME,
            net_recovery::run_wedge_recovery_test,
        ),
        BootJob::Recovery(net_recovery::TOKEN_NAME, net_recovery::run_fault_token_test),
        BootJob::Recovery(net_recovery::UNPLUG_NAME, net_recovery::run_unplug_test),
        BootJob::Recovery(net_recovery::LINK_NAME, net_recovery::run_link_down_test),
        BootJob::Recovery(
            net_recovery::VIRTIO_WEDGE_NAME,
            net_recovery::run_virtio_wedge_test,
        ),
        BootJob::Recovery(net_offload::NAME, net_offload::run_offload_test),
        BootJob::Recovery(profile::TEST_NAME, profile::run_profile_test),
    ]);
    shared.push(BootJob::NetIperf3);
    shared.push(BootJob::NetIperf3Virtio);
    shared.extend(NET_BOOTS.iter().map(BootJob::Net));
    shared.extend(ISO_BOOTS.iter().map(BootJob::Iso));
    if let Some(filter) = &options.filter {
        alone.retain(|job| job.name().contains(filter.as_str()));
        shared.retain(|job| job.name().contains(filter.as_str()));
    }
    let settings = BootSettings {
        log_dir: paths::test_log_dir(),
        echo: options.verbose,
    };
    println!(
        "== boots: {} under QEMU/TCG (serial logs in {})",
        alone.len() + shared.len(),
        settings.log_dir.display()
    );
    let iso = iso.as_deref().map_err(String::as_str);
    let run_job = |job| match job {
        BootJob::KtestSuite => boots::run_ktest_suite(kernel, &settings),
        BootJob::Single(test) => vec![boots::run_boot_test(kernel, test, &settings)],
        BootJob::Hotplug => vec![boots::run_hotplug_test(kernel, &settings)],
        BootJob::HubHotplug => vec![boots::run_hub_hotplug_test(kernel, &settings)],
        BootJob::NetEcho(boot) => vec![boots::run_net_echo_test(kernel, boot, &settings)],
        BootJob::NetHttp => vec![net_http::run_net_http_test(kernel, &settings)],
        BootJob::NetStatic => vec![net_http::run_net_static_test(kernel, &settings)],
        BootJob::Recovery(_, run) => vec![run(kernel, &settings)],
        BootJob::NetIperf3 => net_iperf3::run_iperf3_tests(kernel, &settings),
        BootJob::NetIperf3Virtio => net_iperf3::run_iperf3_virtio_tests(kernel, &settings),
        BootJob::Net(boot) => vec![boots::run_net_boot(kernel, boot, &settings)],
        BootJob::Iso(boot) => vec![boots::run_iso_boot(iso, boot, &settings)],
    };
    let mut report = |outcomes: Vec<TestOutcome>| {
        for outcome in outcomes {
            outcome.print();
            totals.add(&outcome);
        }
    };
    pool::run_ordered(alone, 1, run_job, &mut report);
    pool::run_ordered(shared, PARALLEL_BOOTS, run_job, &mut report);
}

/// Builds `target/tether.iso` for the ISO boots.
fn build_test_iso(kernel: &Path) -> Result<PathBuf> {
    tether_image::build_iso(&tether_image::IsoSpec {
        kernel_elf: kernel,
        cmdline: TEST_ISO_CMDLINE,
        output: &paths::iso_path(),
        staging_dir: &paths::iso_staging_dir(),
    })
}
