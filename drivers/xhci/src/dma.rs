//! DMA memory as seen by the ring layer.
//!
//! The kernel implements [`DmaMemory`] (and [`DmaBacking`] around its own DMA buffer, doing the
//! volatile accesses there); this crate only ever touches DMA memory through the safe word
//! accessors of [`DmaRegion`].

use alloc::boxed::Box;
use core::fmt;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// No memory left that satisfies the request.
    OutOfMemory,
    /// The request cannot be satisfied (e.g. `size > boundary`, alignment not a power of two).
    Unsatisfiable,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::OutOfMemory => f.write_str("out of DMA memory"),
            DmaError::Unsatisfiable => f.write_str("unsatisfiable DMA allocation request"),
        }
    }
}

/// Allocator of device-visible memory (shape of virtio-drivers' `Hal`).
pub trait DmaMemory {
    /// Allocates `size` bytes, zeroed, physically contiguous, aligned to `align` bytes and not
    /// crossing a `boundary`-byte boundary (`boundary == 0`: no constraint).
    fn alloc(&self, size: usize, align: usize, boundary: usize) -> Result<DmaRegion, DmaError>;
}

/// One owned piece of DMA memory, implemented by the kernel. Dropping it frees the memory.
///
/// Accesses take `&self`: the device may read and write the memory concurrently, so
/// implementations use volatile (or atomic) word accesses.
pub trait DmaBacking: Send + Sync {
    /// Physical (bus) address of the first byte.
    fn phys(&self) -> u64;
    /// Length in bytes (a multiple of 4).
    fn len_bytes(&self) -> usize;
    /// Reads 32-bit word `index` (byte offset `4 * index`). Panics when out of range.
    fn read_u32(&self, index: usize) -> u32;
    /// Writes 32-bit word `index`. Panics when out of range.
    fn write_u32(&self, index: usize, value: u32);

    /// Copies `bytes` to the start of the region (a frame into a transfer buffer, before the
    /// transfer is queued). The default goes word by word; a backing that can address its
    /// memory directly copies it in one go: this is on every packet's path.
    fn copy_in(&self, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u32(i, u32::from_le_bytes(w));
        }
    }

    /// Copies the start of the region into `out` (a received frame, after the transfer
    /// completed).
    fn copy_out(&self, out: &mut [u8]) {
        for (i, chunk) in out.chunks_mut(4).enumerate() {
            let w = self.read_u32(i).to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(&w[..n]);
        }
    }
}

/// Owned DMA memory, accessed as little-endian 32-bit words.
pub struct DmaRegion {
    backing: Box<dyn DmaBacking>,
}

impl fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaRegion")
            .field("phys", &format_args!("{:#x}", self.phys()))
            .field("len", &self.len_bytes())
            .finish()
    }
}

impl DmaRegion {
    /// Wraps a backing (called by `DmaMemory` implementations).
    pub fn new(backing: Box<dyn DmaBacking>) -> Self {
        Self { backing }
    }
    /// Physical address of the first byte.
    pub fn phys(&self) -> u64 {
        self.backing.phys()
    }
    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.backing.len_bytes()
    }
    /// Length in 32-bit words.
    pub fn len_words(&self) -> usize {
        self.backing.len_bytes() / 4
    }
    /// Reads word `index`.
    pub fn read(&self, index: usize) -> u32 {
        self.backing.read_u32(index)
    }
    /// Writes word `index`.
    pub fn write(&self, index: usize, value: u32) {
        self.backing.write_u32(index, value)
    }
    /// Reads `out.len()` words starting at word `start`.
    pub fn read_words(&self, start: usize, out: &mut [u32]) {
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.read(start + i);
        }
    }
    /// Writes `words` starting at word `start`, in order.
    pub fn write_words(&self, start: usize, words: &[u32]) {
        for (i, w) in words.iter().enumerate() {
            self.write(start + i, *w);
        }
    }
    /// Zeroes the whole region.
    /// Copies `bytes` to the start of the region.
    ///
    /// # Panics
    /// If `bytes` is longer than the region.
    pub fn copy_in(&self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.len_bytes(),
            "copy beyond the DMA region"
        );
        self.backing.copy_in(bytes);
    }

    /// Copies the start of the region into `out`.
    ///
    /// # Panics
    /// If `out` is longer than the region.
    pub fn copy_out(&self, out: &mut [u8]) {
        assert!(out.len() <= self.len_bytes(), "copy beyond the DMA region");
        self.backing.copy_out(out);
    }

    pub fn fill_zero(&self) {
        for i in 0..self.len_words() {
            self.write(i, 0);
        }
    }
}
