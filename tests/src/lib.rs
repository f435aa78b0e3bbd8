//! Tether's boot-time test definitions.
//!
//! This crate says *what* to boot and *what must come out*; `tether-qemu` does the booting.
//! It is pure data and parsing so that every rule here is unit-tested on the host.
//!
//! - [`protocol`]: the kernel's serial protocol (ready line, panic line, `ktest` lines, exit codes).
//! - [`boot_tests`]: the table of single-purpose boots (crash-on-purpose tests, warnings).
//! - [`hotplug`]: the host-driven USB hotplug test (QMP unplug/replug cycles, leak counters).
//! - [`http`]: the host-driven HTTP service and static addressing tests.
//! - [`iperf3`]: the host-driven iperf3 tests (stock client runs judged against the kernel's counts).
//! - [`suites`]: the fixed boots every test run makes (the in-kernel suite, the ISO boots).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod boot_tests;
pub mod hotplug;
pub mod http;
pub mod iperf3;
pub mod net;
pub mod protocol;
pub mod suites;
