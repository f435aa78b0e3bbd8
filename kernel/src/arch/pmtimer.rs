//! The ACPI power-management timer: a free-running 3.579545 MHz counter (24 or 32 bits) read
//! from an I/O port the FADT names. It needs no setup and never stops, so it can measure the
//! TSC over long windows while the kernel runs.

use x86_64::instructions::port::Port;

pub const PM_TIMER_HZ: u64 = 3_579_545;

#[derive(Clone, Copy, Debug)]
pub struct PmTimer {
    pub port: u16,
    pub bits32: bool,
}

impl PmTimer {
    pub fn read(&self) -> u32 {
        // SAFETY: the FADT names this port as the PM timer's (a read-only counter); reading it
        // has no side effects.
        let value = unsafe { Port::<u32>::new(self.port).read() };
        value & self.mask()
    }

    pub fn mask(&self) -> u32 {
        if self.bits32 {
            u32::MAX
        } else {
            0x00FF_FFFF
        }
    }

    /// Counter ticks from `earlier` to `later`, across one wrap.
    pub fn elapsed(&self, earlier: u32, later: u32) -> u64 {
        u64::from(later.wrapping_sub(earlier) & self.mask())
    }
}
