//! The page tables the kernel keeps. RAM is identity-mapped write-back with 2 MiB pages; the
//! holes below 4 GiB (where PCI, the APICs and firmware live) are mapped uncached; MMIO above
//! 4 GiB is mapped uncached on demand. Thread stacks live in a separate region of 4 KiB pages
//! with an unmapped guard page below each one.

use core::ops::Range;

use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{MapToError, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as Flags,
    PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use super::frames;
use crate::sync::raw::RawSpinLock;

const FOUR_GIB: u64 = 4 << 30;
const HUGE: u64 = Size2MiB::SIZE;

struct KernelFrames;

// SAFETY: every frame handed out is fresh from the frame allocator and unused elsewhere.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let phys = frames::alloc_zeroed_frame()?;
        Some(PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}

static MAPPER: RawSpinLock<Option<OffsetPageTable<'static>>> = RawSpinLock::new(None);
static KERNEL_CR3: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn is_ram(ram: &[Range<u64>], page: u64) -> bool {
    ram.iter().any(|r| r.start < page + HUGE && page < r.end)
}

/// Builds the kernel's page tables and switches to them. `ram` lists every range that is RAM
/// (usable and ACPI memory), which gets write-back caching; everything else is uncached.
pub fn init(ram: &[Range<u64>]) {
    let pml4_phys = frames::alloc_contiguous(1, 4096, Some(FOUR_GIB)).expect("no frame for PML4");
    // SAFETY: the frame is fresh and identity-mapped; it becomes the root table.
    let pml4 = unsafe {
        core::ptr::write_bytes(pml4_phys as *mut u8, 0, 4096);
        &mut *(pml4_phys as *mut PageTable)
    };
    // SAFETY: all RAM holding page tables is identity-mapped, so the physical offset is 0.
    let mut mapper = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let top = ram
        .iter()
        .map(|r| r.end)
        .max()
        .unwrap_or(0)
        .max(FOUR_GIB)
        .next_multiple_of(HUGE);
    let mut page = 0;
    while page < top {
        let ram_page = is_ram(ram, page);
        if page < FOUR_GIB || ram_page {
            let mut flags = Flags::PRESENT | Flags::WRITABLE | Flags::HUGE_PAGE;
            if !ram_page {
                flags |= Flags::NO_CACHE | Flags::WRITE_THROUGH;
            }
            map_huge(&mut mapper, page, flags).expect("identity map");
        }
        page += HUGE;
    }

    let frame = PhysFrame::containing_address(PhysAddr::new(pml4_phys));
    KERNEL_CR3.store(pml4_phys, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: the new tables map everything the kernel uses at the same addresses as the boot
    // tables (identity), so execution continues unchanged.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    *MAPPER.lock() = Some(mapper);
}

fn map_huge(
    mapper: &mut OffsetPageTable<'static>,
    phys: u64,
    flags: Flags,
) -> Result<(), MapToError<Size2MiB>> {
    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(phys));
    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(phys));
    let table_flags = Flags::PRESENT | Flags::WRITABLE;
    // SAFETY: identity mapping of a physical range; no existing Rust reference aliases it under
    // another address.
    unsafe {
        mapper
            .map_to_with_table_flags(page, frame, flags, table_flags, &mut KernelFrames)?
            .ignore()
    };
    Ok(())
}

/// The physical address of the kernel's root table, for application processors.
pub fn kernel_cr3() -> u64 {
    KERNEL_CR3.load(core::sync::atomic::Ordering::Relaxed)
}

/// Makes `size` bytes of device memory at `phys` accessible, uncached, and returns the pointer.
/// Below 4 GiB the holes are mapped uncached already; above, 2 MiB pages are added on demand.
pub fn map_mmio(phys: u64, size: u64) -> *mut u8 {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().expect("paging not initialised");
    let mut page = phys & !(HUGE - 1);
    while page < phys + size {
        if let TranslateResult::NotMapped = mapper.translate(VirtAddr::new(page)) {
            let flags = Flags::PRESENT
                | Flags::WRITABLE
                | Flags::HUGE_PAGE
                | Flags::NO_CACHE
                | Flags::WRITE_THROUGH;
            map_huge(mapper, page, flags).expect("map MMIO");
        }
        page += HUGE;
    }
    phys as *mut u8
}

/// Maps `count` fresh zeroed 4 KiB frames at `virt` (used for thread stacks).
pub fn map_fresh_pages(virt: u64, count: usize) -> Result<(), &'static str> {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().ok_or("paging not initialised")?;
    for i in 0..count as u64 {
        let frame = KernelFrames.allocate_frame().ok_or("out of memory")?;
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + i * 4096));
        let flags = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE;
        // SAFETY: `virt` lies in the stack region, which nothing else maps or references.
        unsafe {
            mapper
                .map_to_with_table_flags(
                    page,
                    frame,
                    flags,
                    Flags::PRESENT | Flags::WRITABLE,
                    &mut KernelFrames,
                )
                .map_err(|_| "page already mapped")?
                .flush()
        };
    }
    Ok(())
}

/// Unmaps pages mapped by [`map_fresh_pages`] and frees their frames. The virtual range is
/// never handed out again, so a stale TLB entry on another CPU can never be used.
pub fn unmap_and_free_pages(virt: u64, count: usize) {
    let mut guard = MAPPER.lock();
    let Some(mapper) = guard.as_mut() else { return };
    for i in 0..count as u64 {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + i * 4096));
        if let Ok((frame, flush)) = mapper.unmap(page) {
            flush.flush();
            frames::free(frame.start_address().as_u64(), 1);
        }
    }
}

/// Enables the no-execute bit in EFER so NO_EXECUTE mappings are legal (checked by CPUID).
pub fn enable_nx() {
    use x86_64::registers::model_specific::{Efer, EferFlags};
    let edx = core::arch::x86_64::__cpuid(0x8000_0001).edx;
    if edx & (1 << 20) != 0 {
        // SAFETY: setting NXE only adds a permission check on pages that ask for it.
        unsafe { Efer::update(|f| *f |= EferFlags::NO_EXECUTE_ENABLE) };
    }
}
