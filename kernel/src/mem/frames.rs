//! The global physical frame allocator: kcore's bitmap policy behind a raw spin lock.

use core::ops::Range;

use tether_kcore::frames::FrameAllocator;

use crate::sync::raw::RawSpinLock;

static FRAMES: RawSpinLock<Option<FrameAllocator>> = RawSpinLock::new(None);

pub fn init(usable: &[Range<u64>], reserved: &[Range<u64>]) {
    let mut allocator = FrameAllocator::new(usable);
    for range in reserved {
        allocator.reserve(range.clone());
    }
    *FRAMES.lock() = Some(allocator);
}

/// `count` contiguous 4 KiB frames aligned to `align` bytes, below `limit` if given.
pub fn alloc_contiguous(count: usize, align: u64, limit: Option<u64>) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc(count, align, limit)
}

pub fn alloc_zeroed_frame() -> Option<u64> {
    let phys = alloc_contiguous(1, 4096, None)?;
    // SAFETY: RAM is identity-mapped and the frame was just handed to us.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, 4096) };
    Some(phys)
}

pub fn free(phys: u64, count: usize) {
    if let Some(allocator) = FRAMES.lock().as_mut() {
        if let Err(error) = allocator.free(phys, count) {
            panic!("frame allocator: {error}");
        }
    }
}

pub fn free_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}

pub fn total_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |a| a.total_frames())
}
