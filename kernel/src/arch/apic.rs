//! The local APIC, in x2APIC mode when the CPU offers it (MSR access) and xAPIC mode otherwise
//! (MMIO at the base from IA32_APIC_BASE). Timer in one-shot mode, IPIs, EOI.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::msr;

pub const TIMER_VECTOR: u8 = 0xFE;
pub const SPURIOUS_VECTOR: u8 = 0xFF;
pub const RESCHEDULE_VECTOR: u8 = 0xF0;

const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xB0;
const REG_SPURIOUS: u32 = 0xF0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3E0;

static X2APIC: AtomicBool = AtomicBool::new(false);
static MMIO_BASE: AtomicU64 = AtomicU64::new(0);

pub fn x2apic_supported() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0
}

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        msr::read(0x800 + (reg >> 4)) as u32
    } else {
        let base = MMIO_BASE.load(Ordering::Relaxed);
        // SAFETY: the APIC page is mapped uncached (a hole below 4 GiB) and reg is a valid
        // 16-byte-aligned register offset.
        unsafe { core::ptr::read_volatile((base + u64::from(reg)) as *const u32) }
    }
}

fn write(reg: u32, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: x2APIC registers are MSRs 0x800 + offset/16; writing them is this module's job.
        unsafe { msr::write(0x800 + (reg >> 4), u64::from(value)) }
    } else {
        let base = MMIO_BASE.load(Ordering::Relaxed);
        // SAFETY: as in read().
        unsafe { core::ptr::write_volatile((base + u64::from(reg)) as *mut u32, value) }
    }
}

/// Enables this CPU's local APIC. The boot CPU decides the mode; application processors follow.
pub fn init_this_cpu(boot_cpu: bool) {
    let mut base = msr::read(msr::IA32_APIC_BASE);
    if boot_cpu {
        X2APIC.store(x2apic_supported(), Ordering::Relaxed);
        MMIO_BASE.store(base & 0xF_FFFF_F000, Ordering::Relaxed);
    }
    base |= 1 << 11;
    if X2APIC.load(Ordering::Relaxed) {
        base |= 1 << 10;
    }
    // SAFETY: sets the global-enable (and x2APIC) bits without moving the APIC base.
    unsafe { msr::write(msr::IA32_APIC_BASE, base) };
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, 1 << 16);
    write(REG_LVT_LINT1, 1 << 16);
    write(REG_LVT_ERROR, 1 << 16);
    write(REG_LVT_TIMER, 1 << 16);
    write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0b0011); // divide by 16
}

pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

pub fn id() -> u32 {
    let raw = read(REG_ID);
    if X2APIC.load(Ordering::Relaxed) {
        raw
    } else {
        raw >> 24
    }
}

pub fn eoi() {
    write(REG_EOI, 0);
}

fn send_icr(apic_id: u32, low: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: in x2APIC mode the ICR is one 64-bit MSR (0x830): destination in the high half.
        unsafe { msr::write(0x830, (u64::from(apic_id) << 32) | u64::from(low)) };
    } else {
        write(REG_ICR_HIGH, apic_id << 24);
        write(REG_ICR_LOW, low);
        while read(REG_ICR_LOW) & (1 << 12) != 0 {
            core::hint::spin_loop();
        }
    }
}

pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, u32::from(vector));
}

/// NMI to every other CPU (panic: stop them where they are).
pub fn send_nmi_all_but_self() {
    send_icr(0, (0b11 << 18) | (0b100 << 8));
}

pub fn send_init(apic_id: u32) {
    send_icr(apic_id, (0b101 << 8) | (1 << 14));
}

pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, (0b110 << 8) | u32::from(page));
}

/// One-shot timer after `ticks` (0 stops it).
pub fn timer_oneshot(ticks: u32) {
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    write(REG_TIMER_INITIAL, ticks);
}

pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Starts the timer free-running from its maximum, masked (for calibration).
pub fn timer_start_calibration() {
    write(REG_LVT_TIMER, 1 << 16);
    write(REG_TIMER_INITIAL, u32::MAX);
}
