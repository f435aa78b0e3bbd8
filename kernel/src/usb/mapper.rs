//! MMIO mapping for the `xhci` crate's register accessors: physical memory is identity-mapped,
//! device memory uncached (`mem::paging::map_mmio`), so mapping is making sure and returning
//! the same address.

use core::num::NonZeroUsize;

use tether_xhci::xhci::accessor::Mapper;

#[derive(Clone, Copy, Default)]
pub struct IdentityMapper;

impl Mapper for IdentityMapper {
    unsafe fn map(&mut self, phys_start: usize, bytes: usize) -> NonZeroUsize {
        let virt = crate::mem::paging::map_mmio(phys_start as u64, bytes as u64) as usize;
        NonZeroUsize::new(virt).expect("MMIO at address 0")
    }

    fn unmap(&mut self, _virt_start: usize, _bytes: usize) {}
}
