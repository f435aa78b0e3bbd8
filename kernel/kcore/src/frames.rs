//! Physical frame allocator policy: a bitmap of 4 KiB frames.
//!
//! The bitmap spans only the lowest..highest usable address, so a machine with RAM above 4 GiB and
//! a PCI hole below it costs one bit per frame of that span (32 KiB of bitmap per GiB). A set bit
//! means "free". Frames outside the usable ranges, including holes, are permanently used and can
//! never be freed into the pool.
//!
//! Allocation is next-fit: the search starts where the previous allocation ended, so a series of
//! small allocations walks forward through memory instead of rescanning the already-full start.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

pub const FRAME_SIZE: u64 = 4096;

const BITS: usize = 64;

/// Why [`FrameAllocator::free`] refused; each names the offending frame address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// `addr` is not a multiple of [`FRAME_SIZE`].
    Unaligned { addr: u64 },
    /// `count` was zero.
    ZeroCount { addr: u64 },
    /// The frame was never usable RAM (outside every usable range, or in a hole).
    NotUsable { frame: u64 },
    /// The frame is already free.
    DoubleFree { frame: u64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Unaligned { addr } => {
                write!(f, "free of unaligned frame address {addr:#x}")
            }
            FrameError::ZeroCount { addr } => write!(f, "free of zero frames at {addr:#x}"),
            FrameError::NotUsable { frame } => {
                write!(f, "free of frame {frame:#x}, which is not usable RAM")
            }
            FrameError::DoubleFree { frame } => {
                write!(f, "double free of frame {frame:#x}")
            }
        }
    }
}

pub struct FrameAllocator {
    /// Address of frame index 0 (frame aligned).
    base: u64,
    /// Number of frames the bitmap covers.
    frames: usize,
    /// One bit per frame, set = free. Bits past `frames` in the last word stay clear.
    free_bits: Vec<u64>,
    /// Usable ranges after shrinking to frame boundaries, sorted and merged; `free` checks
    /// against them so a hole can never be handed out.
    usable: Vec<Range<u64>>,
    free_count: usize,
    total: usize,
    /// Frame index where the next search starts.
    hint: usize,
}

impl FrameAllocator {
    /// `usable` ranges may be unaligned (they shrink inward to whole frames), unsorted or
    /// overlapping. Everything else is used.
    pub fn new(usable: &[Range<u64>]) -> Self {
        let mut ranges: Vec<Range<u64>> = usable
            .iter()
            .filter_map(|r| {
                let start = align_up(r.start, FRAME_SIZE)?;
                let end = r.end & !(FRAME_SIZE - 1);
                (start < end).then_some(start..end)
            })
            .collect();
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }

        let base = merged.first().map_or(0, |r| r.start);
        let top = merged.last().map_or(0, |r| r.end);
        let frames = ((top - base) / FRAME_SIZE) as usize;
        let mut allocator = FrameAllocator {
            base,
            frames,
            free_bits: vec![0; frames.div_ceil(BITS)],
            usable: Vec::new(),
            free_count: 0,
            total: 0,
            hint: 0,
        };
        for r in &merged {
            let first = allocator.index_of(r.start);
            let count = ((r.end - r.start) / FRAME_SIZE) as usize;
            allocator.set_free(first, count);
            allocator.free_count += count;
        }
        allocator.total = allocator.free_count;
        allocator.usable = merged;
        allocator
    }

    /// Marks every frame touched by `range` as used (kernel image, heap, low 1 MiB, ...).
    /// Idempotent; parts outside the usable RAM are ignored.
    pub fn reserve(&mut self, range: Range<u64>) {
        if range.start >= range.end || self.frames == 0 {
            return;
        }
        // Grow outward: a partly reserved frame is not free.
        let start = (range.start & !(FRAME_SIZE - 1)).max(self.base);
        let end = align_up(range.end, FRAME_SIZE)
            .unwrap_or(!(FRAME_SIZE - 1))
            .min(self.end_addr());
        if start >= end {
            return;
        }
        let first = self.index_of(start);
        let last = self.index_of(end);
        self.free_count -= self.fill(first, last, false);
    }

    /// `count` contiguous frames whose start is aligned to `align` bytes (a power of two; values
    /// below 4096 mean 4096) and which end at or below `limit` (exclusive end address, e.g.
    /// `Some(1 << 32)` for 32-bit DMA). Returns the physical start address.
    pub fn alloc(&mut self, count: usize, align: u64, limit: Option<u64>) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(FRAME_SIZE);
        let end = match limit {
            None => self.frames,
            Some(limit) if limit <= self.base => return None,
            Some(limit) => (((limit - self.base) / FRAME_SIZE) as usize).min(self.frames),
        };
        let hint = if self.hint < end { self.hint } else { 0 };
        // Next-fit: from the hint to the end, then runs that start before the hint.
        let found = self.find_run(hint, end, count, align).or_else(|| {
            let wrap_end = end.min(hint.saturating_add(count - 1));
            (hint > 0)
                .then(|| self.find_run(0, wrap_end, count, align))
                .flatten()
        })?;
        self.fill(found, found + count, false);
        self.free_count -= count;
        self.hint = found + count;
        Some(self.addr_of(found))
    }

    /// Returns `count` frames starting at `addr`. Checks everything before changing anything,
    /// so a refused free leaves the allocator untouched. Reserved frames inside usable RAM may be
    /// freed (that is how boot-time memory is reclaimed).
    pub fn free(&mut self, addr: u64, count: usize) -> Result<(), FrameError> {
        if !addr.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::Unaligned { addr });
        }
        if count == 0 {
            return Err(FrameError::ZeroCount { addr });
        }
        let bytes = (count as u64)
            .checked_mul(FRAME_SIZE)
            .and_then(|b| addr.checked_add(b));
        let Some(end) = bytes else {
            return Err(FrameError::NotUsable { frame: addr });
        };
        // Every frame must lie in one usable range; ranges are merged, so a run straddling two
        // of them crosses a hole.
        let range = self.usable.iter().find(|r| r.start <= addr && addr < r.end);
        match range {
            None => return Err(FrameError::NotUsable { frame: addr }),
            Some(r) if end > r.end => return Err(FrameError::NotUsable { frame: r.end }),
            Some(_) => {}
        }
        let first = self.index_of(addr);
        if let Some(index) = (first..first + count).find(|&i| self.is_free(i)) {
            return Err(FrameError::DoubleFree {
                frame: self.addr_of(index),
            });
        }
        self.set_free(first, count);
        self.free_count += count;
        Ok(())
    }

    pub fn free_frames(&self) -> usize {
        self.free_count
    }

    /// Frames of usable RAM given to `new` (reservations do not lower it).
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Whether the frame containing `addr` is free (for diagnostics and tests).
    pub fn is_frame_free(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end_addr() && self.is_free(self.index_of(addr))
    }

    /// Lowest-index aligned run of `count` free frames with start >= `from` and end <= `end`.
    fn find_run(&self, from: usize, end: usize, count: usize, align: u64) -> Option<usize> {
        let mut pos = from;
        loop {
            pos = self.next_free(pos, end)?;
            let start = self.align_index(pos, align)?;
            let run_end = start.checked_add(count)?;
            if run_end > end {
                return None;
            }
            match self.next_used(start, run_end) {
                None => return Some(start),
                Some(used) => pos = used + 1,
            }
        }
    }

    /// First free frame in `from..end`, skipping whole used words.
    fn next_free(&self, from: usize, end: usize) -> Option<usize> {
        let mut index = from;
        while index < end {
            let word = self.free_bits[index / BITS] >> (index % BITS);
            if word != 0 {
                let found = index + word.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            index = (index / BITS + 1) * BITS;
        }
        None
    }

    /// First used frame in `from..end`, skipping whole free words.
    fn next_used(&self, from: usize, end: usize) -> Option<usize> {
        let mut index = from;
        while index < end {
            let word = !self.free_bits[index / BITS] >> (index % BITS);
            if word != 0 {
                let found = index + word.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            index = (index / BITS + 1) * BITS;
        }
        None
    }

    /// Smallest index >= `index` whose address is a multiple of `align`.
    fn align_index(&self, index: usize, align: u64) -> Option<usize> {
        let addr = align_up(self.addr_of(index), align)?;
        Some(((addr - self.base) / FRAME_SIZE) as usize)
    }

    fn set_free(&mut self, first: usize, count: usize) {
        self.fill(first, first + count, true);
    }

    /// Sets bits `first..end` to `free` a word at a time (boot marks gigabytes at once) and
    /// returns how many bits changed.
    fn fill(&mut self, first: usize, end: usize, free: bool) -> usize {
        let mut changed = 0;
        let mut index = first;
        while index < end {
            let bit = index % BITS;
            let span = (BITS - bit).min(end - index);
            let mask = if span == BITS {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            let word = &mut self.free_bits[index / BITS];
            let before = *word;
            if free {
                *word |= mask;
            } else {
                *word &= !mask;
            }
            changed += (before ^ *word).count_ones() as usize;
            index += span;
        }
        changed
    }

    fn is_free(&self, index: usize) -> bool {
        self.free_bits[index / BITS] & (1 << (index % BITS)) != 0
    }

    fn index_of(&self, addr: u64) -> usize {
        ((addr - self.base) / FRAME_SIZE) as usize
    }

    fn addr_of(&self, index: usize) -> u64 {
        self.base + index as u64 * FRAME_SIZE
    }

    fn end_addr(&self) -> u64 {
        self.addr_of(self.frames)
    }
}

impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("usable", &self.usable)
            .field("free_frames", &self.free_count)
            .field("total_frames", &self.total)
            .finish()
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
// A memory map with a single range is the common case under test, not a mistaken `0..n` list.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn frames(n: u64) -> u64 {
        n * FRAME_SIZE
    }

    #[test]
    fn unaligned_ranges_shrink_inward() {
        let a = FrameAllocator::new(&[0x1001..0x5fff]);
        // 0x2000..0x5000 is all that is whole.
        assert_eq!(a.total_frames(), 3);
        assert_eq!(a.free_frames(), 3);
        assert!(!a.is_frame_free(0x1000));
        assert!(a.is_frame_free(0x2000));
        assert!(a.is_frame_free(0x4000));
        assert!(!a.is_frame_free(0x5000));
    }

    #[test]
    fn empty_and_sub_frame_ranges_give_nothing() {
        let mut a = FrameAllocator::new(&[0x1001..0x1fff, 0x3000..0x3000]);
        assert_eq!(a.total_frames(), 0);
        assert_eq!(a.alloc(1, FRAME_SIZE, None), None);
        let mut empty = FrameAllocator::new(&[]);
        empty.reserve(0..GIB);
        assert_eq!(empty.alloc(1, FRAME_SIZE, None), None);
        assert_eq!(
            empty.free(0x1000, 1),
            Err(FrameError::NotUsable { frame: 0x1000 })
        );
    }

    #[test]
    fn overlapping_and_unsorted_ranges_count_once() {
        let a = FrameAllocator::new(&[frames(10)..frames(20), frames(5)..frames(15)]);
        assert_eq!(a.total_frames(), 15);
        assert_eq!(a.free_frames(), 15);
    }

    #[test]
    fn alloc_returns_aligned_runs_of_free_frames() {
        let mut a = FrameAllocator::new(&[0x1000..16 * MIB]);
        for align in [FRAME_SIZE, 0x2000, 0x10000, 2 * MIB] {
            let addr = a.alloc(3, align, None).unwrap();
            assert_eq!(addr % align, 0, "align {align:#x}");
            for i in 0..3 {
                assert!(!a.is_frame_free(addr + frames(i)));
            }
        }
        assert_eq!(a.free_frames(), a.total_frames() - 12);
    }

    #[test]
    fn alignment_below_frame_size_means_frame_and_non_power_of_two_is_refused() {
        let mut a = FrameAllocator::new(&[0..MIB]);
        assert_eq!(a.alloc(1, 1, None), Some(0));
        assert_eq!(a.alloc(1, 0x3000, None), None);
        assert_eq!(a.alloc(1, 0, None), None);
        assert_eq!(a.alloc(0, FRAME_SIZE, None), None);
    }

    #[test]
    fn limit_keeps_whole_run_below_it() {
        // RAM below 4 GiB is 3 GiB..3 GiB+64 KiB, plus lots above 4 GiB.
        let low = 3 * GIB..3 * GIB + 0x10000;
        let mut a = FrameAllocator::new(&[low.clone(), 4 * GIB..8 * GIB]);
        let limit = Some(4 * GIB);
        let mut got = Vec::new();
        while let Some(addr) = a.alloc(2, FRAME_SIZE, limit) {
            assert!(addr + frames(2) <= 4 * GIB);
            got.push(addr);
        }
        assert_eq!(got.len(), 8, "64 KiB holds eight 2-frame runs");
        // Unlimited allocations still work, above 4 GiB.
        let high = a.alloc(2, FRAME_SIZE, None).unwrap();
        assert!(high >= 4 * GIB);
        // A limit that ends mid-run is respected exactly.
        let mut b = FrameAllocator::new(&[0..frames(10)]);
        assert_eq!(b.alloc(4, FRAME_SIZE, Some(frames(3))), None);
        assert_eq!(b.alloc(3, FRAME_SIZE, Some(frames(3))), Some(0));
        // Limit below all RAM.
        let mut c = FrameAllocator::new(&[MIB..2 * MIB]);
        assert_eq!(c.alloc(1, FRAME_SIZE, Some(MIB)), None);
        assert_eq!(c.alloc(1, FRAME_SIZE, Some(MIB + FRAME_SIZE)), Some(MIB));
    }

    #[test]
    fn hole_between_ranges_is_never_allocated_or_freed() {
        let mut a = FrameAllocator::new(&[0..frames(4), frames(8)..frames(12)]);
        assert_eq!(a.total_frames(), 8);
        // A 5-frame run would have to span the hole.
        assert_eq!(a.alloc(5, FRAME_SIZE, None), None);
        let mut all = Vec::new();
        while let Some(addr) = a.alloc(1, FRAME_SIZE, None) {
            assert!(!(frames(4)..frames(8)).contains(&addr));
            all.push(addr);
        }
        assert_eq!(all.len(), 8);
        assert_eq!(
            a.free(frames(5), 1),
            Err(FrameError::NotUsable { frame: frames(5) })
        );
        // A run starting in RAM but running into the hole is refused and changes nothing.
        assert_eq!(
            a.free(frames(3), 2),
            Err(FrameError::NotUsable { frame: frames(4) })
        );
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn next_fit_moves_forward_then_wraps() {
        let mut a = FrameAllocator::new(&[0..frames(8)]);
        let first = a.alloc(1, FRAME_SIZE, None).unwrap();
        let second = a.alloc(1, FRAME_SIZE, None).unwrap();
        assert_eq!((first, second), (0, frames(1)));
        a.free(first, 1).unwrap();
        // Next-fit does not go back to frame 0 while later frames are free.
        assert_eq!(a.alloc(1, FRAME_SIZE, None), Some(frames(2)));
        for _ in 3..8 {
            a.alloc(1, FRAME_SIZE, None).unwrap();
        }
        // Now only frame 0 is free: found by wrapping around.
        assert_eq!(a.alloc(1, FRAME_SIZE, None), Some(0));
        assert_eq!(a.alloc(1, FRAME_SIZE, None), None);
    }

    #[test]
    fn wrap_finds_run_straddling_the_hint() {
        let mut a = FrameAllocator::new(&[0..frames(10)]);
        a.alloc(3, FRAME_SIZE, None).unwrap();
        let second = a.alloc(3, FRAME_SIZE, None).unwrap(); // hint now at frame 6
        a.reserve(frames(8)..frames(10));
        a.free(second + frames(1), 2).unwrap();
        // Free: 4..8. From the hint only 6..8 fits; the wrap pass must find 4..8.
        assert_eq!(a.alloc(4, FRAME_SIZE, None), Some(frames(4)));
    }

    #[test]
    fn fragmentation_needs_a_contiguous_run() {
        let mut a = FrameAllocator::new(&[0..frames(16)]);
        let singles: Vec<u64> = (0..16)
            .map(|_| a.alloc(1, FRAME_SIZE, None).unwrap())
            .collect();
        // Free every other frame: 8 free frames, no two adjacent.
        for addr in singles.iter().step_by(2) {
            a.free(*addr, 1).unwrap();
        }
        assert_eq!(a.free_frames(), 8);
        assert_eq!(a.alloc(2, FRAME_SIZE, None), None);
        // Free frame 5 too: 4..7 is now a run of three.
        a.free(frames(5), 1).unwrap();
        assert_eq!(a.alloc(3, FRAME_SIZE, None), Some(frames(4)));
        assert_eq!(a.alloc(2, FRAME_SIZE, None), None);
    }

    #[test]
    fn double_free_and_bad_frees_name_the_frame_and_change_nothing() {
        let mut a = FrameAllocator::new(&[MIB..2 * MIB]);
        let addr = a.alloc(4, FRAME_SIZE, None).unwrap();
        a.free(addr + frames(2), 1).unwrap();
        let before = a.free_frames();
        let err = a.free(addr, 4).unwrap_err();
        assert_eq!(
            err,
            FrameError::DoubleFree {
                frame: addr + frames(2)
            }
        );
        assert_eq!(
            std::format!("{err}"),
            std::format!("double free of frame {:#x}", addr + frames(2))
        );
        assert_eq!(
            a.free_frames(),
            before,
            "refused free must not free anything"
        );
        assert_eq!(
            a.free(addr + 1, 1),
            Err(FrameError::Unaligned { addr: addr + 1 })
        );
        assert_eq!(a.free(addr, 0), Err(FrameError::ZeroCount { addr }));
        assert_eq!(
            a.free(3 * MIB, 1),
            Err(FrameError::NotUsable { frame: 3 * MIB })
        );
        assert_eq!(
            a.free(!0xfff, 4),
            Err(FrameError::NotUsable { frame: !0xfff })
        );
    }

    #[test]
    fn reserve_is_idempotent_grows_outward_and_ignores_outside() {
        let mut a = FrameAllocator::new(&[0..frames(32)]);
        a.reserve(0x1800..0x2001); // touches frames 1 and 2
        assert_eq!(a.free_frames(), 30);
        assert!(a.is_frame_free(0));
        assert!(!a.is_frame_free(frames(1)));
        assert!(!a.is_frame_free(frames(2)));
        assert!(a.is_frame_free(frames(3)));
        a.reserve(0x1000..0x3000);
        a.reserve(frames(2)..frames(4)); // overlaps frame 2
        assert_eq!(a.free_frames(), 29);
        a.reserve(frames(30)..frames(100)); // runs past RAM
        assert_eq!(a.free_frames(), 27);
        a.reserve(GIB..2 * GIB);
        a.reserve(frames(5)..frames(5));
        a.reserve(u64::MAX - 10..u64::MAX);
        assert_eq!(a.free_frames(), 27);
        assert_eq!(a.total_frames(), 32);
        // Reserved frames are not handed out.
        while let Some(addr) = a.alloc(1, FRAME_SIZE, None) {
            assert!(![1, 2, 3, 30, 31].contains(&(addr / FRAME_SIZE)));
        }
        // Reclaiming reserved boot memory is allowed.
        a.free(frames(1), 3).unwrap();
        assert_eq!(a.free_frames(), 3);
    }

    #[test]
    fn high_memory_bitmap_is_small() {
        // 1 MiB..3 GiB and 4 GiB..6 GiB: bitmap covers ~6 GiB = 1.5 M frames = 24 KiB of words.
        let a = FrameAllocator::new(&[MIB..3 * GIB, 4 * GIB..6 * GIB]);
        assert!(a.free_bits.len() * 8 <= 200 * 1024);
        assert_eq!(a.total_frames() as u64, (5 * GIB - MIB) / FRAME_SIZE);
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_alloc_free_cycles_return_counts_to_start() {
        let mut a = FrameAllocator::new(&[MIB..64 * MIB, 80 * MIB..96 * MIB]);
        a.reserve(MIB..2 * MIB);
        let start = a.free_frames();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut live: Vec<(u64, usize)> = Vec::new();
        for round in 0..4000 {
            if !xorshift(&mut rng).is_multiple_of(3) || live.is_empty() {
                let count = (xorshift(&mut rng) % 16 + 1) as usize;
                let align = FRAME_SIZE << (xorshift(&mut rng) % 5);
                let limit = (round % 5 == 0).then_some(32 * MIB);
                if let Some(addr) = a.alloc(count, align, limit) {
                    assert_eq!(addr % align, 0);
                    if let Some(limit) = limit {
                        assert!(addr + frames(count as u64) <= limit);
                    }
                    // No overlap with anything live.
                    for &(other, n) in &live {
                        let disjoint = addr + frames(count as u64) <= other
                            || other + frames(n as u64) <= addr;
                        assert!(disjoint, "overlap {addr:#x} with {other:#x}");
                    }
                    live.push((addr, count));
                }
            } else {
                let victim = (xorshift(&mut rng) as usize) % live.len();
                let (addr, count) = live.swap_remove(victim);
                a.free(addr, count).unwrap();
            }
            let in_use: usize = live.iter().map(|&(_, n)| n).sum();
            assert_eq!(a.free_frames() + in_use, start);
        }
        for (addr, count) in live.drain(..) {
            a.free(addr, count).unwrap();
        }
        assert_eq!(a.free_frames(), start);
    }
}
