//! Region-array storage: the only module with raw-memory code.
//!
//! A list starts in an inline array of `N` regions that lives inside the [`Bootmem`] value
//! itself, so a bootmem can be a `static` and needs no heap. When a list fills, bootmem
//! allocates a larger array *from its own free memory* (as Linux's `memblock_double_array`
//! does), reaches it through the caller's [`PhysMapper`], and [`RegionStore::move_to`] copies the
//! regions there. From then on the store points at that external array.
//!
//! ## Why moving a bootmem is fine
//! The store never points into itself: the inline array is addressed through `&self` each time,
//! and the external array is memory outside the value. Moving a `Bootmem` (into a `static`,
//! into the hand-off) therefore cannot leave a dangling pointer.
//!
//! ## The safety boundary
//! The external pointer is valid because of two promises, both made once through `unsafe`:
//! the mapper's (a `PhysMapper` returns memory valid for reads and writes while it lives, see
//! its trait contract) and the caller of [`Bootmem::set_mapper`] (free memory — memory minus
//! reserved — is unused by anybody else). Bootmem reserves the array in its own reserved list
//! before any other allocation can happen and refuses to `free` or `reserve` a range that
//! overlaps it, so no later allocation can hand that memory out while the store uses it.
//!
//! [`Bootmem`]: crate::Bootmem
//! [`Bootmem::set_mapper`]: crate::Bootmem::set_mapper
//! [`PhysMapper`]: mmkit_addr::PhysMapper

use core::ptr::NonNull;

use mmkit_addr::PhysRange;

use crate::region::Region;

/// An array of regions that bootmem allocated from itself.
#[derive(Clone, Copy)]
struct External {
    ptr: NonNull<Region>,
    cap: usize,
    phys: PhysRange,
}

/// Inline array first, external array after the first growth.
pub(crate) struct RegionStore<const N: usize> {
    inline: [Region; N],
    external: Option<External>,
}

// SAFETY: the external array is memory owned exclusively by this store (see `move_to`'s
// contract); sending the store sends that ownership along, like a `Box`.
unsafe impl<const N: usize> Send for RegionStore<N> {}
// SAFETY: `&RegionStore` only reads the array; writes need `&mut`.
unsafe impl<const N: usize> Sync for RegionStore<N> {}

impl<const N: usize> RegionStore<N> {
    /// An inline store with every slot empty.
    pub(crate) const fn new() -> Self {
        Self {
            inline: [Region::EMPTY; N],
            external: None,
        }
    }

    /// How many regions fit.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        match self.external {
            Some(e) => e.cap,
            None => N,
        }
    }

    /// The physical memory of the external array, if the store has moved out of line.
    #[inline]
    pub(crate) fn external_phys(&self) -> Option<PhysRange> {
        self.external.map(|e| e.phys)
    }

    /// Every slot, used or not.
    #[inline]
    pub(crate) fn slots(&self) -> &[Region] {
        match self.external {
            // SAFETY: `move_to`'s contract makes `ptr` valid for `cap` initialised regions,
            // owned by this store; `&self` excludes writers.
            Some(e) => unsafe { core::slice::from_raw_parts(e.ptr.as_ptr(), e.cap) },
            None => &self.inline,
        }
    }

    /// Every slot, mutably.
    #[inline]
    pub(crate) fn slots_mut(&mut self) -> &mut [Region] {
        match self.external {
            // SAFETY: as in `slots`; `&mut self` makes this the only access.
            Some(e) => unsafe { core::slice::from_raw_parts_mut(e.ptr.as_ptr(), e.cap) },
            None => &mut self.inline,
        }
    }

    /// Copy the first `len` regions into the array at `dst` of `cap` slots (the rest are set
    /// empty) and use it from now on. Returns the physical range of the previous external
    /// array, which the caller may now free (`None` if the store was inline).
    ///
    /// # Safety
    /// * `dst` is valid for reads and writes of `cap * size_of::<Region>()` bytes and aligned
    ///   for `Region`;
    /// * that memory does not overlap the current array and is used by nothing else for as long
    ///   as this store (or any value it is moved into) lives — bootmem guarantees this by
    ///   reserving `phys`, the physical memory behind `dst`, before anything else can allocate;
    /// * `len <= self.capacity()` and `len <= cap`.
    pub(crate) unsafe fn move_to(
        &mut self,
        dst: NonNull<u8>,
        cap: usize,
        phys: PhysRange,
        len: usize,
    ) -> Option<PhysRange> {
        debug_assert!(len <= cap && len <= self.capacity());
        debug_assert!(dst.as_ptr().align_offset(core::mem::align_of::<Region>()) == 0);
        let dst = dst.cast::<Region>();
        let src = self.slots().as_ptr();
        // SAFETY: the source has `len` initialised regions (`len <= capacity`); the
        // destination is valid for `cap >= len` regions and does not overlap the source (both
        // per this function's contract).
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_ptr(), len) };
        for i in len..cap {
            // SAFETY: `i < cap`, inside the destination array (contract).
            unsafe { dst.as_ptr().add(i).write(Region::EMPTY) };
        }
        let old = self.external_phys();
        self.external = Some(External {
            ptr: dst,
            cap,
            phys,
        });
        old
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::region::{NodeId, RegionFlags};
    use mmkit_addr::PhysAddr;

    #[test]
    fn move_to_copies_used_slots_and_reports_previous_array() {
        let mut store = RegionStore::<2>::new();
        let r = Region::new(0x1000, 0x2000, RegionFlags::MIRROR, NodeId::new(1));
        store.slots_mut()[0] = r;
        let mut first = std::vec![Region::EMPTY; 4];
        let phys = PhysRange::from_start_size(PhysAddr::new(0x10_0000), 0x1000).unwrap();
        let dst = NonNull::new(first.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `first` holds 4 regions, is aligned, and outlives the store's use of it.
        let old = unsafe { store.move_to(dst, 4, phys, 1) };
        assert_eq!(old, None);
        assert_eq!(store.capacity(), 4);
        assert_eq!(store.slots()[0], r);
        assert_eq!(store.external_phys(), Some(phys));
        let mut second = std::vec![Region::EMPTY; 8];
        let dst = NonNull::new(second.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: as above, for `second`.
        let old = unsafe { store.move_to(dst, 8, PhysRange::EMPTY, 1) };
        assert_eq!(old, Some(phys));
        assert_eq!(store.slots()[0], r);
        assert_eq!(store.slots().len(), 8);
    }
}
