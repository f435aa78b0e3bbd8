//! DMA buffers: memory a device may read and write, with its physical address. Placement policy
//! (alignment, no crossing of a boundary) is kcore's; this file only supplies the pages. RAM is
//! identity-mapped and x86 DMA is cache-coherent, so the virtual and physical address coincide.

use core::ptr::NonNull;

use tether_kcore::dma::{layout_for, DmaError, DmaLayout, SubPageAllocator, BLOCK_CLASSES};

use super::frames;
use crate::sync::raw::RawSpinLock;

static SUB_PAGES: RawSpinLock<Option<SubPageAllocator>> = RawSpinLock::new(None);

/// A zeroed DMA buffer, freed on drop.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    size: usize,
    layout: DmaLayout,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for DmaBuffer {}
// SAFETY: shared access only reads through &self.
unsafe impl Sync for DmaBuffer {}

#[derive(Debug)]
pub enum DmaAllocError {
    Layout(DmaError),
    OutOfMemory,
}

impl core::fmt::Display for DmaAllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DmaAllocError::Layout(e) => write!(f, "DMA layout: {e}"),
            DmaAllocError::OutOfMemory => f.write_str("DMA: out of memory"),
        }
    }
}

/// Allocates `size` bytes aligned to `align` that do not cross a multiple of `boundary`
/// (0 = no constraint), below `limit` (e.g. 4 GiB for 32-bit devices) when given.
pub fn alloc(
    size: usize,
    align: usize,
    boundary: usize,
    limit: Option<u64>,
) -> Result<DmaBuffer, DmaAllocError> {
    let layout = layout_for(size, align, boundary).map_err(DmaAllocError::Layout)?;
    let phys = match layout {
        DmaLayout::Pages { count, align } => {
            frames::alloc_contiguous(count, align, limit).ok_or(DmaAllocError::OutOfMemory)?
        }
        DmaLayout::SubPage { block } => {
            let mut guard = SUB_PAGES.lock();
            let pool = guard.get_or_insert_with(SubPageAllocator::new);
            match pool.alloc(block) {
                Some(phys) => phys,
                None => {
                    // Sub-page pools always come from below 4 GiB so any device can use them.
                    let page = frames::alloc_contiguous(1, 4096, Some(4 << 30))
                        .ok_or(DmaAllocError::OutOfMemory)?;
                    if pool.add_page(block, page).is_err() {
                        frames::free(page, 1);
                        return Err(DmaAllocError::OutOfMemory);
                    }
                    pool.alloc(block).ok_or(DmaAllocError::OutOfMemory)?
                }
            }
        }
    };
    let byte_len = match layout {
        DmaLayout::Pages { count, .. } => count * 4096,
        DmaLayout::SubPage { block } => block,
    };
    // SAFETY: identity-mapped RAM just handed to us; zero it so no stale data reaches a device.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, byte_len) };
    Ok(DmaBuffer {
        ptr: NonNull::new(phys as *mut u8).ok_or(DmaAllocError::OutOfMemory)?,
        size,
        layout,
    })
}

/// Sub-page DMA blocks in use per size class, 64 to 2048 bytes (for `mem`).
pub fn small_blocks_by_class() -> [usize; BLOCK_CLASSES] {
    SUB_PAGES
        .lock()
        .as_ref()
        .map_or([0; BLOCK_CLASSES], |pool| pool.blocks_by_class())
}

/// Sub-page DMA blocks in use and the pages they occupy (for `mem`: blocks of one size share
/// pages, so the page count can differ with the same blocks in use).
pub fn small_block_usage() -> (usize, usize) {
    SUB_PAGES
        .lock()
        .as_ref()
        .map_or((0, 0), |pool| (pool.blocks_in_use(), pool.pages_in_use()))
}

impl DmaBuffer {
    pub fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer owns `size` initialised (zeroed) bytes.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.size) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique on the CPU side.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let phys = self.phys();
        match self.layout {
            DmaLayout::Pages { count, .. } => frames::free(phys, count),
            DmaLayout::SubPage { block } => {
                let freed_page = SUB_PAGES.lock().as_mut().map(|pool| pool.free(phys, block));
                match freed_page {
                    Some(Ok(Some(page))) => frames::free(page, 1),
                    Some(Ok(None)) => {}
                    Some(Err(error)) => panic!("DMA free: {error}"),
                    None => panic!("DMA free before any allocation"),
                }
            }
        }
    }
}
