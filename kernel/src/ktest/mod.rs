//! The in-kernel test suite, booted under QEMU by the host runner (`test=all`, or `test=NAME`
//! for one test). Each test prints `ktest NAME ... ok (N ms)` or `... FAILED: reason`; the
//! suite ends with `ktest done: N passed, N failed` and leaves QEMU with status 33 or 35.
//! Tests that must crash the kernel (a stack overflow, sleeping with a spin lock held) run
//! only when named, one per boot; the runner checks what the crash report says.

mod cases;
mod fatal;
mod machine;
mod usb_data;
mod usb_rndis;

use alloc::string::String;

use crate::arch::qemu_exit;
use crate::time;

pub type TestResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($arg)*));
        }
    };
}
pub(crate) use ensure;

pub fn run(which: &str) {
    if let Some(test) = fatal::FATAL.iter().find(|(name, _)| *name == which) {
        kprintln!("ktest {} (expected to crash the kernel)", test.0);
        (test.1)();
        kprintln!("ktest {} ... FAILED: the kernel did not crash", test.0);
        qemu_exit::exit(qemu_exit::FAILURE);
    }
    let mut passed = 0;
    let mut failed = 0;
    // Machine tests need devices the suite's machine lacks: they run only when named.
    let machine_test = machine::MACHINE_TESTS
        .iter()
        .filter(|(name, _)| *name == which);
    let suite = cases::ALL
        .iter()
        .filter(|(name, _)| which == "all" || *name == which);
    for (name, test) in suite.chain(machine_test) {
        let start = time::now_ns();
        let result = test();
        let ms = (time::now_ns() - start) / 1_000_000;
        match result {
            Ok(()) => {
                passed += 1;
                kprintln!("ktest {name} ... ok ({ms} ms)");
            }
            Err(reason) => {
                failed += 1;
                kprintln!("ktest {name} ... FAILED: {reason}");
            }
        }
    }
    if passed + failed == 0 {
        kprintln!("ktest: no test named '{which}'");
        failed = 1;
    }
    kprintln!("ktest done: {passed} passed, {failed} failed");
    qemu_exit::exit(if failed == 0 {
        qemu_exit::SUCCESS
    } else {
        qemu_exit::FAILURE
    });
}
