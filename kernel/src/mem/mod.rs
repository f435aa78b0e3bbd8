//! Memory: physical frames, the kernel's page tables, the heap, DMA buffers, guarded stacks.

pub mod dma;
pub mod frames;
pub mod heap;
pub mod paging;
pub mod stacks;

use alloc::vec::Vec;
use core::ops::Range;

use tether_kcore::bootinfo::{BootInfo, RegionKind};

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image's physical range (identity-mapped: same as its addresses).
pub fn kernel_image() -> Range<u64> {
    core::ptr::addr_of!(__kernel_start) as u64..core::ptr::addr_of!(__kernel_end) as u64
}

static RAM: spin::Once<Vec<Range<u64>>> = spin::Once::new();

/// Frame allocator from the memory map, then the kernel's own page tables.
pub fn init(boot: &BootInfo) {
    let usable = boot.usable_ranges();
    let reserved = [
        // Real-mode IVT, BIOS data, the AP trampoline at 0x8000, EBDA, VGA, option ROMs.
        0..0x10_0000,
        kernel_image(),
    ];
    frames::init(&usable, &reserved);
    let ram: Vec<Range<u64>> = boot
        .memory_map
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                RegionKind::Usable | RegionKind::AcpiReclaimable | RegionKind::AcpiNvs
            )
        })
        .map(|r| r.start..r.start.saturating_add(r.len))
        .collect();
    paging::enable_nx();
    paging::init(&ram);
    RAM.call_once(|| ram);
}

/// Whether `len` bytes at `addr` can be read without faulting (RAM or a live thread stack);
/// used by the backtrace walker, which must never fault itself.
pub fn readable(addr: u64, len: u64) -> bool {
    let end = addr.saturating_add(len);
    if let Some((bottom, top)) = crate::sched::current_stack_range() {
        if addr >= bottom && end <= top {
            return true;
        }
    }
    RAM.get()
        .is_some_and(|ram| ram.iter().any(|r| addr >= r.start && end <= r.end))
}

/// Whether `len` bytes at `addr` are RAM at their own physical address (the identity map), so a
/// device given `addr` reaches them. Heap and DMA buffers are; thread stacks (their own virtual
/// region) are not.
pub fn is_identity_mapped_ram(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    RAM.get()
        .is_some_and(|ram| ram.iter().any(|r| addr >= r.start && end <= r.end))
}
