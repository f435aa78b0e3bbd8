//! Single-purpose boots: one kernel boot per test, each with its own command line and an
//! expected text. Crash-on-purpose tests cannot share a boot (the kernel dies), so they live
//! here; adding one is one line in [`BOOT_TESTS`].

use crate::protocol::{self, KernelExit};
use std::time::Duration;

/// Whether the test run makes the host-driven hotplug boot ([`crate::hotplug`]): QMP
/// `device_del`/`device_add` cycles of the usb-net device, checking the kernel's leak counters.
/// Off until the kernel side of hotplug works; the kernel engineer turns it on. It then runs
/// as `boot::hotplug_cycles` (`tether test --filter hotplug` alone; `TETHER_HOTPLUG_CYCLES=5`
/// for a quick run instead of 100 cycles).
pub const HOTPLUG_TEST_ENABLED: bool = true;

/// Every single-purpose boot the test run makes, in order.
pub const BOOT_TESTS: &[BootTest] = &[
    //              name                   expected output text
    BootTest::crash(
        "sleep_with_spinlock",
        "while holding spin lock 'ktest.spin'",
    ),
    BootTest::crash(
        "stack_overflow",
        "stack overflow in thread 'ktest-overflow'",
    ),
    //                   name           kernel command line  expected output text
    // Both xHCI models, every device of the USB machine enumerated with its real IDs.
    BootTest::kernel_test("usb_enumeration", USB_DEVICES, "usb: enumeration ok"),
    // Bulk data through usb-net (ECM) with a stall injected on bulk IN mid-stream.
    BootTest::kernel_test(
        "usb_bulk_stall",
        USB_NET_DEVICES,
        "usb: bulk stream complete",
    ),
    // RNDIS (usb-net's configuration 2): bulk-OUT transfers of every length mod 64 reach the
    // host and are answered (a ZLP, never padding, after a multiple of 64: QEMU 7.2's bug).
    BootTest::kernel_test(
        "usb_rndis_lengths",
        USB_NET_DEVICES,
        "usb: rndis every length mod 64 answered",
    ),
    BootTest::boots_with(
        "unknown_key",
        "bogus_key=1",
        "unknown command-line key 'bogus_key'",
    ),
    BootTest::boots_with(
        "usbnet_bad_value",
        "usbnet=ncm",
        "usbnet=ncm: expected ecm or rndis; using ecm",
    ),
];

/// The USB machine: both xHCI models, each with usb-net, usb-kbd, usb-storage and a hub with a
/// mouse behind it (QEMU's devices: 0525:a4a2, 0627:0001, 46f4:0001, 0409:55aa, 0627:0001).
pub const USB_DEVICES: &[&str] = &[
    "-netdev",
    "user,id=n0",
    "-netdev",
    "user,id=n1",
    "-blockdev",
    "driver=null-co,node-name=stick0,size=16777216",
    "-blockdev",
    "driver=null-co,node-name=stick1,size=16777216",
    "-device",
    "qemu-xhci,id=xhci",
    "-device",
    "usb-net,bus=xhci.0,netdev=n0",
    "-device",
    "usb-kbd,bus=xhci.0",
    "-device",
    "usb-storage,bus=xhci.0,drive=stick0",
    "-device",
    "usb-hub,bus=xhci.0,port=4",
    "-device",
    "usb-mouse,bus=xhci.0,port=4.1",
    "-device",
    // The second controller without MSI and MSI-X: it must interrupt through its INTx line.
    "nec-usb-xhci,id=nec,msi=off,msix=off",
    "-device",
    "usb-net,bus=nec.0,netdev=n1",
    "-device",
    "usb-kbd,bus=nec.0",
    "-device",
    "usb-storage,bus=nec.0,drive=stick1",
];

/// One usb-net on qemu-xhci with user networking: the bulk data path test's machine.
pub const USB_NET_DEVICES: &[&str] = &[
    "-netdev",
    "user,id=n0",
    "-device",
    "qemu-xhci,id=xhci",
    "-device",
    "usb-net,bus=xhci.0,netdev=n0",
];

/// How long one single-purpose boot may take before it counts as hung.
pub const BOOT_TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One boot with one expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTest {
    /// Test name, as printed in the results.
    pub name: &'static str,
    /// What kind of boot this is.
    pub kind: BootKind,
    /// Text some serial line must contain.
    pub expect: &'static str,
}

/// The two kinds of single-purpose boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// Boots `test=<name> lockcheck=on`; the kernel must exit with the failure status.
    Crash,
    /// Boots the given command line; the kernel must reach its ready line (QEMU is then killed).
    BootsWith(&'static str),
    /// Boots `test=<name> lockcheck=on` on a machine with extra QEMU arguments; the kernel must
    /// exit with the success status.
    KernelTest(&'static [&'static str]),
}

/// What ends a boot test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exits with [`protocol::EXIT_FAILURE`].
    KernelFailure,
    /// The ready line appears; the runner kills QEMU.
    Ready,
    /// QEMU exits with [`protocol::EXIT_SUCCESS`].
    KernelSuccess,
}

impl BootTest {
    /// A test the kernel runs by crashing on purpose: `test=<name> lockcheck=on`.
    pub const fn crash(name: &'static str, expect: &'static str) -> Self {
        BootTest {
            name,
            kind: BootKind::Crash,
            expect,
        }
    }

    /// A boot with a given command line that must reach the ready line and print `expect`.
    pub const fn boots_with(
        name: &'static str,
        cmdline: &'static str,
        expect: &'static str,
    ) -> Self {
        BootTest {
            name,
            kind: BootKind::BootsWith(cmdline),
            expect,
        }
    }

    /// A named in-kernel test needing its own machine (`qemu_args` added to the base one).
    pub const fn kernel_test(
        name: &'static str,
        qemu_args: &'static [&'static str],
        expect: &'static str,
    ) -> Self {
        BootTest {
            name,
            kind: BootKind::KernelTest(qemu_args),
            expect,
        }
    }

    /// Extra QEMU arguments for this boot.
    pub fn qemu_args(&self) -> &'static [&'static str] {
        match self.kind {
            BootKind::KernelTest(args) => args,
            _ => &[],
        }
    }

    /// The kernel command line (`-append`) for this boot.
    pub fn cmdline(&self) -> String {
        match self.kind {
            BootKind::Crash | BootKind::KernelTest(_) => format!("test={} lockcheck=on", self.name),
            BootKind::BootsWith(cmdline) => cmdline.to_string(),
        }
    }

    /// What ends this boot.
    pub fn ending(&self) -> Ending {
        match self.kind {
            BootKind::Crash => Ending::KernelFailure,
            BootKind::BootsWith(_) => Ending::Ready,
            BootKind::KernelTest(_) => Ending::KernelSuccess,
        }
    }

    /// Judges a finished boot: its serial lines, and how QEMU ended (`None` when the runner
    /// killed it after the ready line).
    pub fn judge(&self, lines: &[String], exit: Option<KernelExit>) -> Result<(), String> {
        let saw_expected = lines.iter().any(|l| l.contains(self.expect));
        match self.ending() {
            Ending::KernelFailure => {
                match exit {
                    Some(KernelExit::Failure) => {}
                    Some(other) => {
                        return Err(format!("expected a kernel failure exit, got {other}"))
                    }
                    None => return Err("QEMU did not exit".to_string()),
                }
                if !saw_expected {
                    return Err(format!("output lacks {:?}", self.expect));
                }
            }
            Ending::KernelSuccess => {
                match exit {
                    Some(KernelExit::Success) => {}
                    Some(other) => {
                        return Err(format!("expected the kernel's success exit, got {other}"))
                    }
                    None => return Err("QEMU did not exit".to_string()),
                }
                if !saw_expected {
                    return Err(format!("output lacks {:?}", self.expect));
                }
            }
            Ending::Ready => {
                if let Some(exit) = exit {
                    return Err(format!("QEMU exited before the ready line: {exit}"));
                }
                if !lines.iter().any(|l| protocol::is_ready_line(l)) {
                    return Err("no ready line".to_string());
                }
                if !saw_expected {
                    return Err(format!("output lacks {:?}", self.expect));
                }
                if let Some(panic) = lines.iter().find(|l| protocol::is_panic_line(l)) {
                    return Err(format!("kernel panicked: {panic}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in BOOT_TESTS.iter().enumerate() {
            for b in &BOOT_TESTS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn crash_command_line_names_the_test() {
        let t = BootTest::crash("stack_overflow", "x");
        assert_eq!(t.cmdline(), "test=stack_overflow lockcheck=on");
        assert_eq!(t.ending(), Ending::KernelFailure);
    }

    #[test]
    fn crash_needs_failure_exit_and_text() {
        let t = BootTest::crash(
            "stack_overflow",
            "stack overflow in thread 'ktest-overflow'",
        );
        let out = lines("boot\nKERNEL PANIC: stack overflow in thread 'ktest-overflow'\n");
        assert_eq!(t.judge(&out, Some(KernelExit::Failure)), Ok(()));
        assert!(t.judge(&out, Some(KernelExit::Success)).is_err());
        assert!(t.judge(&out, None).is_err());
        assert!(t
            .judge(&lines("KERNEL PANIC: other"), Some(KernelExit::Failure))
            .is_err());
    }

    #[test]
    fn warning_boot_needs_ready_and_text() {
        let t = BootTest::boots_with(
            "unknown_key",
            "bogus_key=1",
            "unknown command-line key 'bogus_key'",
        );
        assert_eq!(t.cmdline(), "bogus_key=1");
        assert_eq!(t.ending(), Ending::Ready);
        let good = lines("warning: unknown command-line key 'bogus_key'\nTETHER READY cpus=2");
        assert_eq!(t.judge(&good, None), Ok(()));
        assert!(t.judge(&lines("TETHER READY cpus=2"), None).is_err());
        assert!(t.judge(&good, Some(KernelExit::Failure)).is_err());
    }
}
