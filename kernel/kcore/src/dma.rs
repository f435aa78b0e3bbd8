//! DMA buffer placement policy.
//!
//! Controllers such as xHCI want structures aligned (64 bytes) that never cross a 4 KiB or
//! 64 KiB boundary. A power-of-two block aligned to its own size never crosses any power-of-two
//! boundary at least as large, and lies inside one chunk of any smaller one; so a buffer of
//! `size <= boundary` bytes placed at the start of such a block is always safe. [`layout_for`]
//! picks the block; [`SubPageAllocator`] carves small blocks out of whole pages.

use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt;

/// Smallest sub-page block: covers the common 64-byte alignment with no extra work.
pub const MIN_BLOCK: usize = 64;
/// Largest sub-page block; anything bigger gets whole pages.
pub const MAX_BLOCK: usize = 2048;
pub const PAGE_SIZE: usize = 4096;
/// Largest buffer or alignment accepted (1 GiB): anything bigger is a caller bug, and keeps
/// `next_power_of_two` far from overflow.
pub const MAX_DMA_BYTES: usize = 1 << 30;

pub const BLOCK_CLASSES: usize = 6; // 64, 128, 256, 512, 1024, 2048

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaLayout {
    /// A `block`-byte block (power of two, 64..=2048) aligned to `block`, from [`SubPageAllocator`].
    SubPage { block: usize },
    /// `count` contiguous frames whose start is aligned to `align` bytes, from the frame allocator.
    Pages { count: usize, align: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    ZeroSize,
    /// Alignment that is not a power of two.
    BadAlign(usize),
    /// Boundary that is neither 0 nor a power of two.
    BadBoundary(usize),
    /// The buffer is larger than the boundary it must not cross.
    Impossible {
        size: usize,
        boundary: usize,
    },
    /// Size or alignment above [`MAX_DMA_BYTES`].
    TooLarge(usize),
    /// Not a sub-page block size (64, 128, ..., 2048).
    BadBlock(usize),
    /// `add_page` with an address that is not 4 KiB aligned.
    UnalignedPage(u64),
    /// `add_page` with a page the allocator already holds.
    PageInUse(u64),
    /// `free` of a block that is already free.
    DoubleFree(u64),
    /// `free` of an address this allocator never handed out for that block size.
    Foreign(u64),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DmaError::ZeroSize => f.write_str("zero-sized DMA buffer"),
            DmaError::BadAlign(a) => write!(f, "DMA alignment {a} is not a power of two"),
            DmaError::BadBoundary(b) => {
                write!(f, "DMA boundary {b:#x} is neither 0 nor a power of two")
            }
            DmaError::Impossible { size, boundary } => write!(
                f,
                "DMA buffer of {size} bytes cannot avoid crossing a {boundary:#x} boundary"
            ),
            DmaError::TooLarge(n) => {
                write!(f, "DMA size or alignment {n:#x} exceeds {MAX_DMA_BYTES:#x}")
            }
            DmaError::BadBlock(b) => write!(f, "{b} is not a DMA sub-page block size"),
            DmaError::UnalignedPage(p) => write!(f, "DMA page {p:#x} is not 4 KiB aligned"),
            DmaError::PageInUse(p) => write!(f, "DMA page {p:#x} was added twice"),
            DmaError::DoubleFree(p) => write!(f, "double free of DMA block {p:#x}"),
            DmaError::Foreign(p) => {
                write!(
                    f,
                    "free of DMA block {p:#x}, which this allocator did not hand out"
                )
            }
        }
    }
}

/// Where a buffer of `size` bytes, aligned to `align` (a power of two, >= 1), that must not cross
/// a multiple of `boundary` (0 = no boundary, else a power of two) should live.
pub fn layout_for(size: usize, align: usize, boundary: usize) -> Result<DmaLayout, DmaError> {
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    if !align.is_power_of_two() {
        return Err(DmaError::BadAlign(align));
    }
    if boundary != 0 && !boundary.is_power_of_two() {
        return Err(DmaError::BadBoundary(boundary));
    }
    if size > MAX_DMA_BYTES || align > MAX_DMA_BYTES {
        return Err(DmaError::TooLarge(size.max(align)));
    }
    if boundary != 0 && size > boundary {
        return Err(DmaError::Impossible { size, boundary });
    }
    let natural = size.next_power_of_two();
    let block = natural.max(align).max(MIN_BLOCK);
    if block <= MAX_BLOCK {
        return Ok(DmaLayout::SubPage { block });
    }
    // Whole pages. With a boundary, aligning to the buffer's own power-of-two size is what keeps
    // it inside one boundary chunk (natural <= boundary because size <= boundary).
    let mut page_align = align.max(PAGE_SIZE);
    if boundary != 0 {
        page_align = page_align.max(natural);
    }
    Ok(DmaLayout::Pages {
        count: size.div_ceil(PAGE_SIZE),
        align: page_align as u64,
    })
}

/// Whether `[start, start + size)` stays inside one `boundary`-sized chunk (0 = no boundary).
pub fn crosses_boundary(start: u64, size: usize, boundary: usize) -> bool {
    if boundary == 0 || size == 0 {
        return false;
    }
    let last = start + size as u64 - 1;
    start / boundary as u64 != last / boundary as u64
}

struct Page {
    block: usize,
    /// Bit i set = block i free. 4096 / 64 = 64 blocks, so one word covers the smallest class.
    free: u64,
}

impl Page {
    fn full_mask(block: usize) -> u64 {
        let blocks = PAGE_SIZE / block;
        if blocks == 64 {
            u64::MAX
        } else {
            (1u64 << blocks) - 1
        }
    }
}

/// Carves sub-page DMA blocks out of 4 KiB pages the caller supplies. Each page holds blocks of
/// one size only, so every block is aligned to its size.
#[derive(Default)]
pub struct SubPageAllocator {
    pages: BTreeMap<u64, Page>,
    /// Per block class, the pages that still have a free block.
    with_room: [BTreeSet<u64>; BLOCK_CLASSES],
}

impl SubPageAllocator {
    pub const fn new() -> Self {
        SubPageAllocator {
            pages: BTreeMap::new(),
            with_room: [const { BTreeSet::new() }; BLOCK_CLASSES],
        }
    }

    /// A free `block`-byte block, or `None` when the caller must supply a page via
    /// [`add_page`](Self::add_page) (also `None` for a block size that is not valid; `add_page`
    /// then reports that).
    pub fn alloc(&mut self, block: usize) -> Option<u64> {
        let class = class_of(block)?;
        let page_phys = *self.with_room[class].first()?;
        let page = self.pages.get_mut(&page_phys)?;
        let index = page.free.trailing_zeros() as usize;
        page.free &= !(1u64 << index);
        if page.free == 0 {
            self.with_room[class].remove(&page_phys);
        }
        Some(page_phys + (index * block) as u64)
    }

    /// Gives a wholly free 4 KiB page to the `block` size class.
    pub fn add_page(&mut self, block: usize, page_phys: u64) -> Result<(), DmaError> {
        let class = class_of(block).ok_or(DmaError::BadBlock(block))?;
        if !page_phys.is_multiple_of(PAGE_SIZE as u64) {
            return Err(DmaError::UnalignedPage(page_phys));
        }
        if self.pages.contains_key(&page_phys) {
            return Err(DmaError::PageInUse(page_phys));
        }
        let free = Page::full_mask(block);
        self.pages.insert(page_phys, Page { block, free });
        self.with_room[class].insert(page_phys);
        Ok(())
    }

    /// Frees a block. `Ok(Some(page))` when its page became wholly free: the allocator has let go
    /// of it and the caller returns it to the frame allocator.
    pub fn free(&mut self, phys: u64, block: usize) -> Result<Option<u64>, DmaError> {
        let class = class_of(block).ok_or(DmaError::BadBlock(block))?;
        let page_phys = phys & !(PAGE_SIZE as u64 - 1);
        let offset = (phys - page_phys) as usize;
        let page = match self.pages.get_mut(&page_phys) {
            Some(page) if page.block == block && offset.is_multiple_of(block) => page,
            _ => return Err(DmaError::Foreign(phys)),
        };
        let bit = 1u64 << (offset / block);
        if page.free & bit != 0 {
            return Err(DmaError::DoubleFree(phys));
        }
        page.free |= bit;
        if page.free == Page::full_mask(block) {
            // Hand empty pages back at once: DMA pages are few and the frame allocator is the
            // one place that should hold spare memory.
            self.pages.remove(&page_phys);
            self.with_room[class].remove(&page_phys);
            return Ok(Some(page_phys));
        }
        self.with_room[class].insert(page_phys);
        Ok(None)
    }

    /// Pages currently held (each has at least one block in use).
    pub fn pages_in_use(&self) -> usize {
        self.pages.len()
    }

    /// Blocks in use per size class (64, 128, ..., 2048 bytes).
    pub fn blocks_by_class(&self) -> [usize; BLOCK_CLASSES] {
        let mut counts = [0; BLOCK_CLASSES];
        for page in self.pages.values() {
            if let Some(class) = class_of(page.block) {
                counts[class] += (Page::full_mask(page.block) & !page.free).count_ones() as usize;
            }
        }
        counts
    }

    /// Blocks handed out and not freed, over all pages.
    pub fn blocks_in_use(&self) -> usize {
        self.blocks_by_class().iter().sum()
    }
}

fn class_of(block: usize) -> Option<usize> {
    (block.is_power_of_two() && (MIN_BLOCK..=MAX_BLOCK).contains(&block))
        .then(|| (block.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    #[test]
    fn blocks_in_use_counts_every_class() {
        let mut pool = SubPageAllocator::new();
        pool.add_page(64, 0x1000).unwrap();
        pool.add_page(2048, 0x2000).unwrap();
        let a = pool.alloc(64).unwrap();
        let _b = pool.alloc(64).unwrap();
        let _c = pool.alloc(2048).unwrap();
        assert_eq!((pool.blocks_in_use(), pool.pages_in_use()), (3, 2));
        pool.free(a, 64).unwrap();
        assert_eq!((pool.blocks_in_use(), pool.pages_in_use()), (2, 2));
    }

    #[test]
    fn small_buffers_get_power_of_two_blocks_of_at_least_64() {
        assert_eq!(layout_for(1, 1, 0), Ok(DmaLayout::SubPage { block: 64 }));
        assert_eq!(layout_for(64, 64, 0), Ok(DmaLayout::SubPage { block: 64 }));
        assert_eq!(layout_for(65, 16, 0), Ok(DmaLayout::SubPage { block: 128 }));
        assert_eq!(
            layout_for(16, 1024, 0),
            Ok(DmaLayout::SubPage { block: 1024 })
        );
        assert_eq!(
            layout_for(2048, 64, 4096),
            Ok(DmaLayout::SubPage { block: 2048 })
        );
    }

    #[test]
    fn large_buffers_get_pages_and_boundary_forces_natural_alignment() {
        assert_eq!(
            layout_for(2049, 64, 0),
            Ok(DmaLayout::Pages {
                count: 1,
                align: 4096
            })
        );
        assert_eq!(
            layout_for(16, 4096, 0),
            Ok(DmaLayout::Pages {
                count: 1,
                align: 4096
            })
        );
        assert_eq!(
            layout_for(3 * 4096, 64, 0),
            Ok(DmaLayout::Pages {
                count: 3,
                align: 4096
            })
        );
        // 12 KiB that must not cross 64 KiB: align to 16 KiB.
        assert_eq!(
            layout_for(3 * 4096, 64, 0x10000),
            Ok(DmaLayout::Pages {
                count: 3,
                align: 0x4000
            })
        );
        assert_eq!(
            layout_for(4096, 0x20000, 0x10000),
            Ok(DmaLayout::Pages {
                count: 1,
                align: 0x20000
            })
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(layout_for(0, 64, 0), Err(DmaError::ZeroSize));
        assert_eq!(layout_for(8, 0, 0), Err(DmaError::BadAlign(0)));
        assert_eq!(layout_for(8, 48, 0), Err(DmaError::BadAlign(48)));
        assert_eq!(layout_for(8, 64, 3000), Err(DmaError::BadBoundary(3000)));
        assert_eq!(
            layout_for(4097, 64, 4096),
            Err(DmaError::Impossible {
                size: 4097,
                boundary: 4096
            })
        );
        assert_eq!(
            layout_for(MAX_DMA_BYTES + 1, 64, 0),
            Err(DmaError::TooLarge(MAX_DMA_BYTES + 1))
        );
        assert_eq!(
            layout_for(usize::MAX, 1, 0),
            Err(DmaError::TooLarge(usize::MAX))
        );
        let text = std::format!("{}", layout_for(4097, 64, 4096).unwrap_err());
        assert_eq!(
            text,
            "DMA buffer of 4097 bytes cannot avoid crossing a 0x1000 boundary"
        );
    }

    #[test]
    fn crosses_boundary_checks_the_last_byte() {
        assert!(!crosses_boundary(0, 4096, 4096));
        assert!(crosses_boundary(1, 4096, 4096));
        assert!(!crosses_boundary(4095, 1, 4096));
        assert!(crosses_boundary(4095, 2, 4096));
        assert!(!crosses_boundary(4095, 2, 0));
    }

    #[test]
    fn blocks_are_distinct_aligned_and_pages_come_back_when_empty() {
        let mut a = SubPageAllocator::new();
        assert_eq!(a.alloc(64), None, "no pages yet");
        a.add_page(64, 0x10_0000).unwrap();
        let blocks: Vec<u64> = (0..64).map(|_| a.alloc(64).unwrap()).collect();
        assert_eq!(a.alloc(64), None, "page full");
        let unique: HashSet<u64> = blocks.iter().copied().collect();
        assert_eq!(unique.len(), 64);
        assert!(blocks.iter().all(|b| b % 64 == 0 && b >> 12 == 0x100));
        assert_eq!(a.pages_in_use(), 1);
        for b in &blocks[..63] {
            assert_eq!(a.free(*b, 64), Ok(None));
        }
        assert_eq!(a.free(blocks[63], 64), Ok(Some(0x10_0000)));
        assert_eq!(a.pages_in_use(), 0);
        assert_eq!(a.alloc(64), None, "page was given back");
    }

    #[test]
    fn size_classes_use_separate_pages() {
        let mut a = SubPageAllocator::new();
        a.add_page(2048, 0x2000).unwrap();
        assert_eq!(a.alloc(128), None);
        a.add_page(128, 0x5000).unwrap();
        let big = a.alloc(2048).unwrap();
        let small = a.alloc(128).unwrap();
        assert_eq!(big >> 12, 0x2);
        assert_eq!(small >> 12, 0x5);
        // Freeing with the wrong size is refused: the block is not of that class.
        assert_eq!(a.free(big, 128), Err(DmaError::Foreign(big)));
        assert_eq!(a.free(big, 2048), Ok(Some(0x2000)));
    }

    #[test]
    fn double_free_foreign_and_bad_pages_are_errors() {
        let mut a = SubPageAllocator::new();
        a.add_page(256, 0x8000).unwrap();
        let x = a.alloc(256).unwrap();
        let y = a.alloc(256).unwrap();
        assert_eq!(a.free(x, 256), Ok(None));
        assert_eq!(a.free(x, 256), Err(DmaError::DoubleFree(x)));
        assert_eq!(a.free(y + 8, 256), Err(DmaError::Foreign(y + 8)));
        assert_eq!(a.free(0x9000, 256), Err(DmaError::Foreign(0x9000)));
        assert_eq!(a.free(y, 100), Err(DmaError::BadBlock(100)));
        assert_eq!(a.add_page(256, 0x8000), Err(DmaError::PageInUse(0x8000)));
        assert_eq!(
            a.add_page(256, 0x8010),
            Err(DmaError::UnalignedPage(0x8010))
        );
        assert_eq!(a.add_page(4096, 0xa000), Err(DmaError::BadBlock(4096)));
        assert_eq!(a.alloc(32), None);
        assert_eq!(a.free(y, 256), Ok(Some(0x8000)));
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Stand-in for the frame allocator: hands out pages from a bump pointer and takes them back.
    struct FakeFrames {
        next: u64,
        returned: Vec<u64>,
    }

    impl FakeFrames {
        fn alloc(&mut self, count: usize, align: u64) -> u64 {
            let start = self.next.next_multiple_of(align);
            self.next = start + count as u64 * 4096;
            start
        }
    }

    #[test]
    fn random_layouts_never_misalign_or_cross_and_pages_return() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut sub = SubPageAllocator::new();
        let mut frames = FakeFrames {
            next: 0x10_0000 + 0x1000,
            returned: Vec::new(),
        };
        let mut sub_pages_given = 0usize;
        let mut live: Vec<(u64, usize, usize)> = Vec::new(); // (phys, size, block) of sub-page
        let mut checked = 0;
        for _ in 0..5000 {
            let size = match xorshift(&mut rng) % 4 {
                0 => (xorshift(&mut rng) % 64 + 1) as usize,
                1 => (xorshift(&mut rng) % 4096 + 1) as usize,
                _ => (xorshift(&mut rng) % 70_000 + 1) as usize,
            };
            let align = 1usize << (xorshift(&mut rng) % 14);
            let boundary = [0, 4096, 0x10000, 1 << 20][(xorshift(&mut rng) % 4) as usize];
            let layout = match layout_for(size, align, boundary) {
                Ok(layout) => layout,
                Err(DmaError::Impossible { .. }) => {
                    assert!(boundary != 0 && size > boundary);
                    continue;
                }
                Err(e) => panic!("unexpected {e}"),
            };
            let start = match layout {
                DmaLayout::SubPage { block } => {
                    assert!(block >= size && block.is_power_of_two());
                    let phys = match sub.alloc(block) {
                        Some(p) => p,
                        None => {
                            sub.add_page(block, frames.alloc(1, 4096)).unwrap();
                            sub_pages_given += 1;
                            sub.alloc(block).unwrap()
                        }
                    };
                    assert_eq!(phys % block as u64, 0);
                    live.push((phys, size, block));
                    phys
                }
                DmaLayout::Pages { count, align } => {
                    assert!(count * 4096 >= size);
                    frames.alloc(count, align)
                }
            };
            assert_eq!(start % align as u64, 0, "size {size} align {align}");
            assert!(
                !crosses_boundary(start, size, boundary),
                "size {size} at {start:#x} crosses {boundary:#x}"
            );
            checked += 1;
            // Free a random live sub-page block now and then.
            if !live.is_empty() && xorshift(&mut rng).is_multiple_of(2) {
                let (phys, _, block) = live.swap_remove((xorshift(&mut rng) as usize) % live.len());
                if let Some(page) = sub.free(phys, block).unwrap() {
                    frames.returned.push(page);
                }
            }
        }
        assert!(checked > 3000);
        for (phys, _, block) in live.drain(..) {
            if let Some(page) = sub.free(phys, block).unwrap() {
                frames.returned.push(page);
            }
        }
        assert_eq!(sub.pages_in_use(), 0);
        assert_eq!(frames.returned.len(), sub_pages_given);
        let unique: HashSet<u64> = frames.returned.iter().copied().collect();
        assert_eq!(unique.len(), sub_pages_given, "each page returned once");
    }
}
