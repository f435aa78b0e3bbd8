//! Time: the TSC is the clock (calibrated once against the PIT), the local APIC timer (same
//! calibration) drives preemption and sleeps in one-shot mode.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{apic, pit};

static TSC_PER_US: AtomicU64 = AtomicU64::new(1000);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(100_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

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
    TSC_PER_US.store(((tsc1 - tsc0) / CALIBRATION_US).max(1), Ordering::Relaxed);
    APIC_TICKS_PER_MS.store(
        (u64::from(apic0 - apic1) * 1000 / CALIBRATION_US).max(1),
        Ordering::Relaxed,
    );
    apic::timer_oneshot(0);
}

/// Marks time zero (the kernel's uptime starts at its entry).
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
}

pub fn now_ns() -> u64 {
    let ticks = rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((ticks as u128 * 1000) / u128::from(TSC_PER_US.load(Ordering::Relaxed))) as u64
}

pub fn now_us() -> u64 {
    now_ns() / 1000
}

pub fn tsc_mhz() -> u64 {
    TSC_PER_US.load(Ordering::Relaxed)
}

/// APIC timer ticks for a delay, clamped to what the 32-bit counter holds (the timer then just
/// fires early and the scheduler re-arms it).
pub fn apic_ticks_for_ns(ns: u64) -> u32 {
    let ticks = (ns as u128 * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed))) / 1_000_000;
    ticks.clamp(1, u128::from(u32::MAX)) as u32
}

/// Spins for a short time without the scheduler (early boot, AP start-up delays).
pub fn spin_delay_us(us: u64) {
    let end = rdtsc() + us * TSC_PER_US.load(Ordering::Relaxed);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}
