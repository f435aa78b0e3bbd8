//! The kernel's side of the USB stack's DMA trait: device memory from `mem::dma`, accessed
//! with volatile word loads and stores because the controller reads and writes it concurrently.

use alloc::boxed::Box;

use tether_xhci::dma::{DmaBacking, DmaError, DmaMemory, DmaRegion};

use crate::mem::dma::{self, DmaAllocError, DmaBuffer};

struct Backing(DmaBuffer);

impl DmaBacking for Backing {
    fn phys(&self) -> u64 {
        self.0.phys()
    }

    fn len_bytes(&self) -> usize {
        self.0.len() & !3
    }

    fn read_u32(&self, index: usize) -> u32 {
        assert!(
            index < self.len_bytes() / 4,
            "DMA word {index} out of range"
        );
        // SAFETY: in bounds (checked above) of a live, 4-byte-aligned DMA buffer we own.
        unsafe { core::ptr::read_volatile((self.0.as_ptr() as *const u32).add(index)) }
    }

    fn write_u32(&self, index: usize, value: u32) {
        assert!(
            index < self.len_bytes() / 4,
            "DMA word {index} out of range"
        );
        // SAFETY: as in read_u32; the device may access the memory too, hence volatile.
        unsafe { core::ptr::write_volatile((self.0.as_ptr() as *mut u32).add(index), value) }
    }

    fn copy_in(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.0.len(), "DMA copy out of range");
        // SAFETY: in bounds of a live DMA buffer we own; the device does not touch a transfer
        // buffer before the transfer is queued, which happens after this copy (the queueing's
        // volatile TRB writes and doorbell are not moved before it: compiler fence below, and
        // x86 keeps stores in order).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0.as_ptr(), bytes.len()) }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    }

    fn copy_out(&self, out: &mut [u8]) {
        assert!(out.len() <= self.0.len(), "DMA copy out of range");
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
        // SAFETY: in bounds of a live DMA buffer we own, read after the transfer's completion
        // was observed (the device writes nothing more into it).
        unsafe { core::ptr::copy_nonoverlapping(self.0.as_ptr(), out.as_mut_ptr(), out.len()) }
    }
}

/// DMA for controllers that can address all memory (`limit` None) or only 4 GiB.
pub struct KernelDma {
    pub limit: Option<u64>,
}

impl DmaMemory for KernelDma {
    fn alloc(&self, size: usize, align: usize, boundary: usize) -> Result<DmaRegion, DmaError> {
        let size = size.next_multiple_of(4);
        match dma::alloc(size, align.max(4), boundary, self.limit) {
            Ok(buffer) => Ok(DmaRegion::new(Box::new(Backing(buffer)))),
            Err(DmaAllocError::OutOfMemory) => Err(DmaError::OutOfMemory),
            Err(DmaAllocError::Layout(_)) => Err(DmaError::Unsatisfiable),
        }
    }
}
