//! Configuration writes filtered so a function's BARs and address decoding stay as enumeration
//! left them.
//!
//! Driver libraries that size BARs themselves (virtio-drivers' `PciRoot::bar_info`, run on every
//! device reset) write all-ones to each BAR with decoding switched off, then restore both. Each
//! such write removes the device's windows from the machine's memory map and puts them back
//! while the other CPUs keep running. QEMU 7.2's TCG (fixed in 8.2 by "softmmu: Use
//! async_run_on_cpu in tcg_commit") can then send another vCPU's MMIO access to the wrong
//! device or crash: an I/O APIC write landed in a virtio-net MSI-X table, and local APIC EOIs
//! were lost. On real hardware a BAR being sized is unreachable for everyone else too.
//!
//! [`SettledBars`] answers the sizing protocol from the BARs found at boot instead: BAR writes
//! never reach the device, and a command write may set decode bits but never clear them.

use crate::bar::Bar;

const COMMAND: u16 = 0x04;
const BAR0: u16 = 0x10;
const BAR_SLOTS: u16 = 6;
/// I/O space and memory space enable.
const DECODE_BITS: u32 = 0b11;

/// One function's BARs as enumerated, and which BAR registers hold all-ones right now (as far
/// as the driver library can tell).
#[derive(Clone, Debug)]
pub struct SettledBars {
    bars: [Option<Bar>; 6],
    sizing: u8,
}

impl SettledBars {
    pub fn new(bars: [Option<Bar>; 6]) -> Self {
        Self { bars, sizing: 0 }
    }

    /// The value of a read at `offset` when it is answered here (a BAR being sized), or None
    /// when the device should be read.
    pub fn read(&self, offset: u16) -> Option<u32> {
        let slot = bar_slot(offset)?;
        (self.sizing & (1 << slot) != 0).then(|| sizing_readback(&self.bars, slot))
    }

    /// What to write to the device for a write of `value` at `offset`: None to drop it.
    /// `current_command` reads the command register (only called for writes to it).
    pub fn write(
        &mut self,
        offset: u16,
        value: u32,
        current_command: impl FnOnce() -> u32,
    ) -> Option<u32> {
        if let Some(slot) = bar_slot(offset) {
            if value == u32::MAX {
                self.sizing |= 1 << slot;
            } else {
                self.sizing &= !(1 << slot);
            }
            return None;
        }
        if offset == COMMAND {
            let current = current_command() & 0xffff;
            // Keep whatever decoding is on; the status half is written as given (its bits are
            // write-one-to-clear, so the zeros a command write carries change nothing).
            let merged = value | (current & DECODE_BITS);
            return (merged & 0xffff != current || merged >> 16 != 0).then_some(merged);
        }
        Some(value)
    }
}

fn bar_slot(offset: u16) -> Option<usize> {
    (BAR0..BAR0 + 4 * BAR_SLOTS)
        .contains(&offset)
        .then(|| usize::from((offset - BAR0) / 4))
}

/// What BAR register `slot` reads back after all-ones was written to it, from the BAR as
/// enumerated: the size mask with the type bits (0 for an unimplemented BAR).
pub fn sizing_readback(bars: &[Option<Bar>; 6], slot: usize) -> u32 {
    let mask = |size: u64| !(size.max(1) - 1);
    match bars.get(slot).copied().flatten() {
        Some(Bar::Io { size, .. }) => (mask(u64::from(size)) as u32 & !0b11) | 1,
        Some(Bar::Memory32 {
            size, prefetchable, ..
        }) => (mask(u64::from(size)) as u32 & !0xf) | u32::from(prefetchable) << 3,
        Some(Bar::Memory64 {
            size, prefetchable, ..
        }) => (mask(size) as u32 & !0xf) | 0b100 | u32::from(prefetchable) << 3,
        // The upper half of a 64-bit BAR.
        None => match slot.checked_sub(1).and_then(|low| bars[low]) {
            Some(Bar::Memory64 { size, .. }) => (mask(size) >> 32) as u32,
            _ => 0,
        },
    }
}
