//! Kernel thread stacks with a guard page. Each stack lives in a slot of its own virtual region;
//! the page below it stays unmapped, so running off the end faults and the page-fault handler
//! (on its own IST stack) can name the thread.
//!
//! A freed stack goes back to a pool with its mapping intact and is handed out whole again: no
//! mapping ever changes while another CPU might cache it, so no TLB shootdown is needed, and
//! thread churn (USB hotplug starts and ends a thread per device) costs no new page tables.

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;

use super::paging;
use crate::sync::raw::RawSpinLock;

const STACK_REGION: u64 = 0x0000_4000_0000_0000;
const STACK_REGION_END: u64 = 0x0000_5000_0000_0000;
const GUARD: u64 = 4096;

static NEXT_SLOT: AtomicU64 = AtomicU64::new(STACK_REGION);
/// Freed stacks, mapped, by size: (bottom, pages). Beyond this many, stacks are unmapped and
/// their virtual slot is retired instead.
static POOL: RawSpinLock<Vec<(u64, usize)>> = RawSpinLock::new(Vec::new());
const POOL_LIMIT: usize = 64;

pub struct KernelStack {
    /// Lowest mapped address (the guard page is just below).
    bottom: u64,
    pages: usize,
}

impl KernelStack {
    pub fn new(size: usize) -> Option<KernelStack> {
        let pages = size.div_ceil(4096).max(2);
        {
            let mut pool = POOL.lock();
            if let Some(i) = pool.iter().position(|&(_, p)| p == pages) {
                let (bottom, pages) = pool.swap_remove(i);
                return Some(KernelStack { bottom, pages });
            }
        }
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
        let mut pool = POOL.lock();
        if pool.len() < POOL_LIMIT {
            pool.push((self.bottom, self.pages));
        } else {
            drop(pool);
            paging::unmap_and_free_pages(self.bottom, self.pages);
        }
    }
}

/// Stacks kept for reuse (for the `mem` report: their frames are in use but not leaked).
pub fn pooled() -> usize {
    POOL.lock().len()
}

/// Whether an address lies in the stack region at all (used to judge a fault address).
pub fn in_stack_region(addr: u64) -> bool {
    (STACK_REGION..STACK_REGION_END).contains(&addr)
}
