//! The kernel heap: `talc` behind an interrupt-safe spin lock (interrupt handlers may wake
//! threads, and waking may allocate). It starts on a 4 MiB array in .bss — boot-info parsing
//! needs `Vec` before the frame allocator exists — and grows from the frame allocator on demand.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use talc::{OomHandler, Span, Talc};

use super::frames;
use crate::sync::raw::RawSpinLock;

const EARLY_HEAP_SIZE: usize = 4 << 20;
/// Smallest growth step: fewer, larger spans keep talc fast.
const GROW_STEP: usize = 2 << 20;

#[repr(C, align(4096))]
struct EarlyHeap([u8; EARLY_HEAP_SIZE]);
static mut EARLY_HEAP: EarlyHeap = EarlyHeap([0; EARLY_HEAP_SIZE]);

/// Grows the heap with whole frames. The kernel identity-maps RAM, so a frame's physical
/// address is usable as a pointer straight away.
struct GrowFromFrames;

impl OomHandler for GrowFromFrames {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        let bytes = (layout.size() + layout.align() + 4096)
            .max(GROW_STEP)
            .next_multiple_of(4096);
        let phys = frames::alloc_contiguous(bytes / 4096, 4096, None).ok_or(())?;
        GROWN_BYTES.fetch_add(bytes, Ordering::Relaxed);
        // SAFETY: the frames were just taken from the allocator for the heap's sole use and are
        // identity-mapped writable RAM.
        unsafe {
            talc.claim(Span::from_base_size(phys as *mut u8, bytes))
                .map(|_| ())
        }
    }
}

struct KernelHeap(RawSpinLock<Talc<GrowFromFrames>>);

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static GROWN_BYTES: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(RawSpinLock::new(Talc::new(GrowFromFrames)));

// SAFETY: talc is a correct allocator; the lock gives it exclusive access on every call.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: layout comes from the caller of alloc, as GlobalAlloc requires.
        match unsafe { self.0.lock().malloc(layout) } {
            Ok(ptr) => {
                IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
                ptr.as_ptr()
            }
            Err(()) => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: GlobalAlloc's contract: ptr came from alloc with this layout.
        unsafe { self.0.lock().free(NonNull::new_unchecked(ptr), layout) }
    }
}

/// Gives the heap its first memory. Must run before anything allocates.
pub fn init_early() {
    let base = ptr::addr_of_mut!(EARLY_HEAP) as *mut u8;
    // SAFETY: the array is valid, writable, and handed to talc exclusively.
    unsafe {
        HEAP.0
            .lock()
            .claim(Span::from_base_size(base, EARLY_HEAP_SIZE))
            .expect("early heap claim");
    }
}

/// Bytes currently allocated (requested sizes).
pub fn bytes_in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// Bytes the heap owns: the early array plus what it grew by.
pub fn bytes_owned() -> usize {
    EARLY_HEAP_SIZE + GROWN_BYTES.load(Ordering::Relaxed)
}
