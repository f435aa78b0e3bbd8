//! `tether bench boot`: time from QEMU's spawn to the kernel's ready line (PVH, TCG, -smp 2).

use crate::boots::{boot_to_ready, BootSettings};
use crate::deps::{self, Need};
use crate::kernel_build;
use crate::paths;
use crate::preset::Machine;
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Duration;

/// The target the issue sets for the median.
pub const BOOT_TARGET: Duration = Duration::from_millis(150);
/// Timeout of one benchmark boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Min, median and max of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Shortest.
    pub min: Duration,
    /// Median (mean of the middle two for an even count).
    pub median: Duration,
    /// Longest.
    pub max: Duration,
}

/// Summarises `samples`; `None` when empty.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    };
    Some(Summary {
        min: sorted[0],
        median,
        max: sorted[n - 1],
    })
}

/// Reads `uptime_us=N` from the ready line, if the kernel printed it.
pub fn kernel_uptime(ready_line: &str) -> Option<Duration> {
    ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime_us="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the boot benchmark with `boots` boots and prints its table.
pub fn bench_boot(boots: usize, verbose: bool, kernel: Option<&Path>) -> Result<()> {
    if boots == 0 {
        bail!("--boots must be at least 1");
    }
    deps::ensure_host_tools(&[Need::Qemu])?;
    let kernel = kernel_build::prebuilt_or_build(kernel)?;
    let settings = BootSettings {
        log_dir: paths::repo_root().join("target/bench-logs"),
        echo: verbose,
    };
    let machine = Machine::pvh(&kernel, "");
    println!("boot benchmark: {boots} boots of {machine}");
    let mut samples = Vec::with_capacity(boots);
    let mut uptimes = Vec::with_capacity(boots);
    for i in 1..=boots {
        match boot_to_ready(&machine, "bench_boot", BOOT_TIMEOUT, &settings) {
            Ok(ready) => {
                println!("boot {i:>3}: {}   ({})", ms(ready.time), ready.line.trim());
                samples.push(ready.time);
                uptimes.extend(kernel_uptime(&ready.line));
            }
            Err(failure) => {
                failure.print();
                bail!("boot {i} did not reach the ready line");
            }
        }
    }
    let s = summarize(&samples).expect("at least one boot");
    let verdict = if s.median < BOOT_TARGET {
        "met"
    } else {
        "MISSED"
    };
    println!();
    println!("| QEMU spawn -> TETHER READY (PVH, TCG, q35, -smp 2) | value |");
    println!("|---|---|");
    println!("| boots | {boots} |");
    println!("| median | {} |", ms(s.median));
    println!("| min | {} |", ms(s.min));
    println!("| max | {} |", ms(s.max));
    if let Some(u) = summarize(&uptimes) {
        println!(
            "| kernel's own uptime_us at ready (median) | {} |",
            ms(u.median)
        );
    }
    println!("| target (median) | < {} ({verdict}) |", ms(BOOT_TARGET));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn summary_odd_and_even() {
        assert_eq!(
            summarize(&[ms(30), ms(10), ms(20)]),
            Some(Summary {
                min: ms(10),
                median: ms(20),
                max: ms(30)
            })
        );
        assert_eq!(
            summarize(&[ms(40), ms(10), ms(20), ms(30)]).unwrap().median,
            ms(25)
        );
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn uptime_from_ready_line() {
        assert_eq!(
            kernel_uptime("TETHER READY cpus=2 uptime_us=81234"),
            Some(Duration::from_micros(81234))
        );
        assert_eq!(kernel_uptime("TETHER READY"), None);
    }
}
