//! Tests whose pass condition is a kernel crash with a particular report.

use crate::sched::{self, Spawn};
use crate::sync::SpinLock;

pub static FATAL: &[(&str, fn())] = &[
    ("sleep_with_spinlock", sleep_with_spinlock),
    ("stack_overflow", stack_overflow),
];

/// Expected report: "sleeping while holding spin lock 'ktest.spin'".
fn sleep_with_spinlock() {
    static LOCK: SpinLock<u32> = SpinLock::new("ktest.spin", 0);
    let guard = LOCK.lock();
    sched::sleep_ms(1);
    drop(guard);
}

/// Expected report: "stack overflow in thread 'ktest-overflow'".
fn stack_overflow() {
    #[inline(never)]
    fn recurse(depth: u64) -> u64 {
        let mut pad = [depth; 64];
        core::hint::black_box(&mut pad);
        if depth == u64::MAX {
            return 0;
        }
        recurse(depth + 1).wrapping_add(pad[3])
    }
    Spawn::new("ktest-overflow")
        .stack_size(16 * 1024)
        .start(|| {
            core::hint::black_box(recurse(0));
        });
    sched::sleep_ms(5_000);
}
