//! Kernel thread stacks with a guard page. Each stack gets a fresh, never-reused slot in its
//! own virtual region; the page below it stays unmapped, so running off the end faults and the
//! page-fault handler (on its own IST stack) can name the thread.

use core::sync::atomic::{AtomicU64, Ordering};

use super::paging;

const STACK_REGION: u64 = 0x0000_4000_0000_0000;
const STACK_REGION_END: u64 = 0x0000_5000_0000_0000;
const GUARD: u64 = 4096;

static NEXT_SLOT: AtomicU64 = AtomicU64::new(STACK_REGION);

pub struct KernelStack {
    /// Lowest mapped address (the guard page is just below).
    bottom: u64,
    pages: usize,
}

impl KernelStack {
    pub fn new(size: usize) -> Option<KernelStack> {
        let pages = size.div_ceil(4096).max(2);
        let slot = NEXT_SLOT.fetch_add(GUARD + pages as u64 * 4096, Ordering::Relaxed);
        if slot + GUARD + pages as u64 * 4096 > STACK_REGION_END {
            return None;
        }
        let bottom = slot + GUARD;
        paging::map_fresh_pages(bottom, pages).ok()?;
        Some(KernelStack { bottom, pages })
    }

    pub fn top(&self) -> u64 {
        self.bottom + self.pages as u64 * 4096
    }

    pub fn bottom(&self) -> u64 {
        self.bottom
    }

    pub fn size(&self) -> usize {
        self.pages * 4096
    }

    pub fn guard_contains(&self, addr: u64) -> bool {
        (self.bottom - GUARD..self.bottom).contains(&addr)
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        paging::unmap_and_free_pages(self.bottom, self.pages);
    }
}

/// Whether an address lies in the stack region at all (used to judge a fault address).
pub fn in_stack_region(addr: u64) -> bool {
    (STACK_REGION..STACK_REGION_END).contains(&addr)
}
