//! Time: the TSC is the clock, calibrated at boot against the PIT (5 ms, so boot stays fast)
//! and then refined in the background against the ACPI PM timer over whole seconds. The boot
//! calibration can only err high (a vCPU descheduled by the host inside its window stretches
//! the TSC count, seen at 1.3-1.9x on loaded hosts), which would make every timeout and the
//! watchdog tick run slow; the refinement corrects it without a jump: the clock is kept as
//! `base_ns + (tsc - base_tsc) / rate`, re-based at the moment the rate changes. The local APIC
//! timer (calibrated in the same window) is corrected by the same factor.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::arch::pmtimer::{PmTimer, PM_TIMER_HZ};
use crate::arch::{apic, pit};

/// TSC ticks per millisecond.
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(100_000);
/// The clock's base: TSC value and nanoseconds at the last rate change.
static BASE_TSC: AtomicU64 = AtomicU64::new(0);
static BASE_NS: AtomicU64 = AtomicU64::new(0);
/// Sequence count of the (rate, base) triple: odd while it changes.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// 5 ms of PIT (5966 ticks of 1.19 MHz): one tick of error is 0.02%.
const CALIBRATION_US: u64 = 5_000;

/// Called on the boot CPU with its local APIC enabled.
pub fn calibrate() {
    let (mut tsc0, mut tsc1, mut apic0, mut apic1) = (0, 0, 0, 0);
    apic::timer_start_calibration();
    pit::wait_micros(
        CALIBRATION_US,
        || {
            tsc0 = rdtsc();
            apic0 = apic::timer_current();
        },
        || {
            tsc1 = rdtsc();
            apic1 = apic::timer_current();
        },
    );
    TSC_PER_MS.store(
        ((tsc1 - tsc0) * 1000 / CALIBRATION_US).max(1),
        Ordering::Relaxed,
    );
    APIC_TICKS_PER_MS.store(
        (u64::from(apic0 - apic1) * 1000 / CALIBRATION_US).max(1),
        Ordering::Relaxed,
    );
    apic::timer_oneshot(0);
}

/// Marks time zero (the kernel's uptime starts at its entry).
pub fn mark_boot() {
    BASE_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// (base TSC, base ns, TSC per ms), consistent with each other.
fn clock() -> (u64, u64, u64) {
    loop {
        let before = SEQUENCE.load(Ordering::Acquire);
        if before & 1 == 0 {
            let clock = (
                BASE_TSC.load(Ordering::Relaxed),
                BASE_NS.load(Ordering::Relaxed),
                TSC_PER_MS.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if SEQUENCE.load(Ordering::Relaxed) == before {
                return clock;
            }
        }
        core::hint::spin_loop();
    }
}

pub fn now_ns() -> u64 {
    let (base_tsc, base_ns, per_ms) = clock();
    let ticks = rdtsc().saturating_sub(base_tsc);
    base_ns + ((ticks as u128 * 1_000_000) / u128::from(per_ms)) as u64
}

pub fn now_us() -> u64 {
    now_ns() / 1000
}

pub fn tsc_mhz() -> u64 {
    TSC_PER_MS.load(Ordering::Relaxed) / 1000
}

/// Changes the TSC rate from now on, keeping the clock continuous; scales the APIC timer's
/// rate by the same factor (both came from the same window). Only the refinement thread calls
/// this.
fn set_rate(per_ms: u64) {
    let old = TSC_PER_MS.load(Ordering::Relaxed);
    // Interrupts off while the sequence is odd: an interrupt handler on this CPU reading the
    // clock would otherwise spin forever waiting for this very update.
    let interrupts_were_on = crate::arch::interrupts::disable_save();
    let tsc = rdtsc();
    let ns = now_ns();
    SEQUENCE.fetch_add(1, Ordering::AcqRel);
    BASE_TSC.store(tsc, Ordering::Relaxed);
    BASE_NS.store(ns, Ordering::Relaxed);
    TSC_PER_MS.store(per_ms, Ordering::Relaxed);
    SEQUENCE.fetch_add(1, Ordering::Release);
    crate::arch::interrupts::restore(interrupts_were_on);
    let apic = APIC_TICKS_PER_MS.load(Ordering::Relaxed);
    APIC_TICKS_PER_MS.store(
        ((u128::from(apic) * u128::from(per_ms)) / u128::from(old)).max(1) as u64,
        Ordering::Relaxed,
    );
}

/// A (TSC, PM timer) pair read close together: the PM timer read twice around the TSC, kept
/// when both reads are within a few PM ticks (nothing preempted the vCPU between them).
fn sample(pm: &PmTimer) -> Option<(u64, u32)> {
    for _ in 0..20 {
        let before = pm.read();
        let tsc = rdtsc();
        let after = pm.read();
        if pm.elapsed(before, after) <= 8 {
            return Some((tsc, before));
        }
    }
    None
}

/// Measures the TSC against the PM timer over one-second windows and corrects the rate when
/// it is off by more than 0.1%. Runs in its own thread for the kernel's life: three rounds at
/// boot, then one a minute (the thread never ends, so its stack is never returned mid-run).
pub fn refine(pm: PmTimer) -> ! {
    let mut round = 0u64;
    loop {
        if round >= 3 {
            crate::sched::sleep_ns(60_000_000_000);
        }
        round += 1;
        let Some((tsc0, pm0)) = sample(&pm) else {
            continue;
        };
        crate::sched::sleep_ns(1_000_000_000);
        let Some((tsc1, pm1)) = sample(&pm) else {
            continue;
        };
        let pm_ticks = pm.elapsed(pm0, pm1);
        if pm_ticks < PM_TIMER_HZ / 2 {
            // A 24-bit counter wraps every 4.7 s: a window this short means something is off.
            continue;
        }
        let per_ms = ((u128::from(tsc1 - tsc0) * u128::from(PM_TIMER_HZ))
            / (u128::from(pm_ticks) * 1000)) as u64;
        let old = TSC_PER_MS.load(Ordering::Relaxed);
        if per_ms.abs_diff(old) * 1000 > old {
            set_rate(per_ms.max(1));
            log::info!(
                "TSC {}.{:03} MHz by the ACPI PM timer (the boot calibration said {}.{:03})",
                per_ms / 1000,
                per_ms % 1000,
                old / 1000,
                old % 1000
            );
        }
    }
}

/// APIC timer ticks for a delay, clamped to what the 32-bit counter holds (the timer then just
/// fires early and the scheduler re-arms it).
pub fn apic_ticks_for_ns(ns: u64) -> u32 {
    let ticks = (ns as u128 * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed))) / 1_000_000;
    ticks.clamp(1, u128::from(u32::MAX)) as u32
}

/// Spins for a short time without the scheduler (early boot, AP start-up delays).
pub fn spin_delay_us(us: u64) {
    let end = rdtsc() + us * TSC_PER_MS.load(Ordering::Relaxed) / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}
