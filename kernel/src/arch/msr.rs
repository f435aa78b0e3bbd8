//! Model-specific registers.

pub const IA32_APIC_BASE: u32 = 0x1B;
pub const IA32_GS_BASE: u32 = 0xC000_0101;

pub fn read(msr: u32) -> u64 {
    // SAFETY: callers pass architectural MSRs that exist on every x86_64 CPU we run on.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// # Safety
/// Writing an MSR can change how the CPU behaves; the caller knows what this one does.
pub unsafe fn write(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
}
