//! Tether's host-side runner, shared by `cargo run`, the tests and the benchmarks.
//!
//! - [`deps`]: installs what the host lacks (QEMU, GRUB tools, OVMF; the kernel's Rust target).
//! - [`kernel_build`]: builds the kernel ELF into `target/kernel`.
//! - [`preset`]: QEMU command lines (PVH or ISO boot, SeaBIOS or OVMF, usb-net networking).
//! - [`instance`]: a running QEMU, its serial console read line by line under deadlines.
//! - [`qmp`]: a QMP client (QEMU's machine protocol) for host-driven tests such as hotplug.
//! - [`hotplug`]: the host-driven USB hotplug test (QMP unplug/replug cycles).
//! - [`net_http`]: the host-driven HTTP service and static addressing tests (curl, raw TCP).
//! - [`net_iperf3`]: the host-driven iperf3 tests (the stock client against the kernel's server).
//! - [`boots`], [`test_run`], [`host_tests`], [`pool`], [`report`]: `tether test`.
//! - [`bench`]: `tether bench boot`; [`bench_net`]: `tether bench net` (Tether beside the Linux
//!   peer); [`bench_recovery`]: `tether bench recovery` (TX watchdog policies, wedges, replug).
//! - [`appliance`]: the NICs, back-ends, forwards and passthrough of `tether run`.
//! - [`run`]: `tether run` (the interactive boot) and `tether iso`.
//! - [`cli`]: argument parsing.
//!
//! What each boot must print is defined in the `tether-tests` crate.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod appliance;
pub mod bench;
pub mod bench_net;
pub mod bench_recovery;
pub mod boots;
pub mod cli;
pub mod deps;
pub mod host_tests;
pub mod hotplug;
pub mod instance;
pub mod kernel_build;
pub mod net_http;
pub mod net_iperf3;
pub mod net_offload;
pub mod net_recovery;
pub mod paths;
pub mod pool;
pub mod preset;
pub mod profile;
pub mod qmp;
pub mod report;
pub mod run;
pub mod test_run;
