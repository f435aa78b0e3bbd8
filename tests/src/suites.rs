//! The fixed boots of every test run: the in-kernel test suite and the ISO boots.

use crate::protocol::{self, KernelExit, KtestLine};
use std::time::Duration;

/// Kernel command line that runs the whole in-kernel test suite.
pub const KTEST_SUITE_CMDLINE: &str = "test=all lockcheck=on";
/// QEMU devices (`-device` values) the in-kernel suite's machine has on top of the base
/// machine: QEMU's `edu` test device, whose MSI the suite has delivered end to end.
pub const KTEST_SUITE_DEVICES: &[&str] = &["edu"];
/// How long the in-kernel suite may run before it counts as hung.
pub const KTEST_SUITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the in-kernel suite may print nothing before it counts as hung (a test that runs
/// longer should print progress).
pub const KTEST_SILENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Firmware an ISO boot goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (QEMU's default SeaBIOS), El Torito BIOS boot of the hybrid ISO.
    SeaBios,
    /// UEFI (Debian's OVMF.fd), the ISO's EFI boot image.
    Ovmf,
}

/// One boot of the GRUB ISO that must reach the ready line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoBoot {
    /// Test name, as printed in the results.
    pub name: &'static str,
    /// Firmware to boot through.
    pub firmware: Firmware,
}

/// The ISO boots of every test run.
pub const ISO_BOOTS: &[IsoBoot] = &[
    IsoBoot {
        name: "iso_seabios",
        firmware: Firmware::SeaBios,
    },
    IsoBoot {
        name: "iso_ovmf",
        firmware: Firmware::Ovmf,
    },
];

/// How long one ISO boot may take to the ready line (OVMF takes seconds under TCG).
pub const ISO_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Collects the in-kernel suite's results from its serial lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KtestTally {
    /// Tests in the order they reported, with their outcome.
    pub results: Vec<(String, Result<Option<u64>, String>)>,
    /// Counts from the `ktest done` line, once seen.
    pub done: Option<(u32, u32)>,
}

impl KtestTally {
    /// Feeds one serial line; returns the parsed `ktest` line, if it was one.
    pub fn feed(&mut self, line: &str) -> Option<KtestLine> {
        let parsed = protocol::parse_ktest_line(line)?;
        match &parsed {
            KtestLine::Passed { name, millis } => self.results.push((name.clone(), Ok(*millis))),
            KtestLine::Failed { name, reason } => {
                self.results.push((name.clone(), Err(reason.clone())))
            }
            KtestLine::Done { passed, failed } => self.done = Some((*passed, *failed)),
        }
        Some(parsed)
    }

    /// Number of tests that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// Number of tests that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Judges the suite boot as a whole (apart from the individual tests): it must have ended
    /// with `ktest done`, counts that match the lines, and the exit status that matches them.
    /// `exit` is `None` when QEMU had to be killed.
    pub fn verdict(&self, exit: Option<KernelExit>) -> Result<(), String> {
        let Some((passed, failed)) = self.done else {
            return Err(match exit {
                Some(exit) => format!("no `ktest done` line before QEMU ended ({exit})"),
                None => "no `ktest done` line before the timeout".to_string(),
            });
        };
        if (passed as usize, failed as usize) != (self.passed(), self.failed()) {
            return Err(format!(
                "`ktest done` says {passed} passed, {failed} failed but the lines say {} passed, {} failed",
                self.passed(),
                self.failed()
            ));
        }
        let wanted = if failed == 0 {
            KernelExit::Success
        } else {
            KernelExit::Failure
        };
        match exit {
            Some(exit) if exit == wanted => Ok(()),
            Some(exit) => Err(format!("after `ktest done` expected {wanted}, got {exit}")),
            None => Err("QEMU did not exit after `ktest done`".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(text: &str) -> KtestTally {
        let mut t = KtestTally::default();
        for line in text.lines() {
            t.feed(line);
        }
        t
    }

    #[test]
    fn all_ok_suite() {
        let t = tally(
            "boot\nktest a ... ok (1 ms)\nktest b ... ok (2 ms)\nktest done: 2 passed, 0 failed",
        );
        assert_eq!((t.passed(), t.failed()), (2, 0));
        assert_eq!(t.verdict(Some(KernelExit::Success)), Ok(()));
        assert!(t.verdict(Some(KernelExit::Failure)).is_err());
        assert!(t.verdict(None).is_err());
    }

    #[test]
    fn failing_suite_must_exit_with_failure() {
        let t = tally("ktest a ... ok (1 ms)\nktest b ... FAILED: lost wakeup\nktest done: 1 passed, 1 failed");
        assert_eq!((t.passed(), t.failed()), (1, 1));
        assert_eq!(
            t.results[1],
            ("b".to_string(), Err("lost wakeup".to_string()))
        );
        assert_eq!(t.verdict(Some(KernelExit::Failure)), Ok(()));
    }

    #[test]
    fn missing_done_fails() {
        let t = tally("ktest a ... ok (1 ms)");
        assert!(t.verdict(Some(KernelExit::Success)).is_err());
    }

    #[test]
    fn mismatched_counts_fail() {
        let t = tally("ktest a ... ok (1 ms)\nktest done: 2 passed, 0 failed");
        assert!(t.verdict(Some(KernelExit::Success)).is_err());
    }

    #[test]
    fn iso_boot_names_unique() {
        assert_ne!(ISO_BOOTS[0].name, ISO_BOOTS[1].name);
    }
}
