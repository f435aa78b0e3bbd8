//! Host unit tests: `cargo test --release --workspace --exclude tether-kernel`, streamed to the
//! terminal, with its `test result:` lines added up.

use crate::paths::{cargo, repo_root};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The cargo arguments of the host test run.
pub const HOST_TEST_ARGS: &[&str] = &[
    "test",
    "--release",
    "--workspace",
    "--exclude",
    "tether-kernel",
];

/// Totals of a cargo test run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CargoTestTotals {
    /// Tests passed over all test binaries.
    pub passed: u32,
    /// Tests failed over all test binaries.
    pub failed: u32,
    /// Number of `test result:` lines seen (one per test binary and doc-test run).
    pub result_lines: u32,
}

impl CargoTestTotals {
    /// Adds one line of cargo test output if it is a `test result:` line.
    pub fn feed(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result:") else {
            return;
        };
        if let Some((passed, failed)) = tether_tests::protocol::parse_counts(rest) {
            self.passed += passed;
            self.failed += failed;
            self.result_lines += 1;
        }
    }
}

/// Runs the host tests; returns their totals and whether cargo succeeded.
pub fn run_host_tests() -> Result<(CargoTestTotals, bool)> {
    let mut child = Command::new(cargo())
        .current_dir(repo_root())
        .args(HOST_TEST_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut totals = CargoTestTotals::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.feed(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((totals, status.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_result_lines() {
        let mut t = CargoTestTotals::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.10s",
            "   Doc-tests tether_kcore",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.feed(line);
        }
        assert_eq!(
            t,
            CargoTestTotals {
                passed: 8,
                failed: 2,
                result_lines: 3
            }
        );
    }

    #[test]
    fn ignores_other_lines() {
        let mut t = CargoTestTotals::default();
        t.feed("test test_result_parsing ... ok");
        t.feed("ktest done: 1 passed, 0 failed");
        assert_eq!(t, CargoTestTotals::default());
    }
}
