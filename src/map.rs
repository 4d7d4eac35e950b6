//! How the facade reaches physical memory, in both directions.
//!
//! The allocators below the facade only need phys→virt ([`PhysMapper`]). The facade also
//! needs virt→phys: `kfree(ptr)` must find the frame of a pointer (slab's
//! `PageSource::virt_to_pfn`), and the global allocator must tell its own pointers from
//! others. [`KernelMap`] is a [`PhysMapper`] that can also go back.
//!
//! * [`LinearMap`]: a kernel direct map, `va = pa + offset` for `pa < limit` (Linux's
//!   `__va` / `__pa`; offset 0 is an identity map).
//! * `HostMemory` (feature `std`): the host buffer standing in for physical memory.

use core::ptr::NonNull;

use mmkit_addr::{LinearWindow, OffsetMapper, PhysAddr, PhysMapper, PhysRange, VirtAddr};

/// A [`PhysMapper`] that also translates its own virtual addresses back.
///
/// # Safety
/// For every `pa` and `range` with `phys_to_virt(range) == Some(p)` and `pa` inside `range`,
/// `virt_to_phys(p + (pa - range.start))` returns `Some(pa)`; for an address that
/// `phys_to_virt` never returns, `virt_to_phys` returns `None`. The allocators trust the
/// answer to find the frame (and its metadata) a pointer belongs to.
pub unsafe trait KernelMap: PhysMapper {
    /// The physical address `va` maps, if `va` is inside this map.
    fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr>;
}

/// A kernel direct map: physical `pa` is at virtual `pa + offset`, for `pa < limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearMap {
    offset: u64,
    limit: u64,
}

impl LinearMap {
    /// A direct map at `offset` covering physical `[0, limit)`.
    ///
    /// # Safety
    /// Every physical address in `[0, limit)` that is RAM must be mapped readable and writable
    /// at `pa + offset` for as long as the map is used, and `limit + offset` must not wrap.
    pub const unsafe fn new(offset: u64, limit: u64) -> Self {
        Self { offset, limit }
    }

    /// The virtual offset of the map.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// The end of the physical range covered.
    pub const fn limit(&self) -> u64 {
        self.limit
    }
}

// SAFETY: `new`'s contract is the mapping promise; the bounds check keeps the whole range
// under `limit`.
unsafe impl PhysMapper for LinearMap {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        if range.end().as_u64() > self.limit {
            return None;
        }
        let va = range.start().as_u64().checked_add(self.offset)?;
        NonNull::new(usize::try_from(va).ok()? as *mut u8)
    }

    /// `[0, limit)`, as `mmkit_addr::OffsetMapper` reports the same map.
    #[inline]
    fn linear_window(&self) -> Option<LinearWindow> {
        // SAFETY: `LinearMap::new`'s contract is `OffsetMapper::new`'s, for the same map.
        unsafe { OffsetMapper::new(self.offset, self.limit) }.linear_window()
    }
}

// SAFETY: the exact inverse of `phys_to_virt` over the same window `[offset, offset + limit)`.
unsafe impl KernelMap for LinearMap {
    fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        let pa = va.as_u64().checked_sub(self.offset)?;
        (pa < self.limit).then(|| PhysAddr::new(pa))
    }
}

#[cfg(any(test, feature = "std"))]
// SAFETY: `HostMemory::phys_to_virt` returns `base_ptr + (pa - base)` for ranges inside the
// buffer; this is its inverse over the buffer and `None` outside it.
unsafe impl KernelMap for mmkit_addr::host::HostMemory {
    fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        self.phys_of(va.as_u64() as usize as *const u8)
    }
}

/// `&'m dyn KernelMap` as a [`PhysMapper`] value (the page-table layer takes its mapper by
/// value).
#[derive(Clone, Copy)]
pub struct MapRef<'m>(pub &'m dyn KernelMap);

impl core::fmt::Debug for MapRef<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MapRef")
    }
}

// SAFETY: forwards to the referenced mapper, which keeps the contract for `'m`.
unsafe impl PhysMapper for MapRef<'_> {
    #[inline]
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        self.0.phys_to_virt(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_map_round_trips_inside_its_limit() {
        // SAFETY: only addresses are computed, nothing is dereferenced.
        let m = unsafe { LinearMap::new(0xffff_8000_0000_0000, 1 << 30) };
        let r = PhysRange::from_start_size(PhysAddr::new(0x20_0000), 0x1000).unwrap();
        let p = m.phys_to_virt(r).unwrap();
        assert_eq!(
            m.virt_to_phys(VirtAddr::new(p.as_ptr() as u64 + 8)),
            Some(PhysAddr::new(0x20_0008))
        );
        let past = PhysRange::from_start_size(PhysAddr::new((1 << 30) - 0x800), 0x1000).unwrap();
        assert!(m.phys_to_virt(past).is_none());
        assert_eq!(m.virt_to_phys(VirtAddr::new(0x1000)), None);
        assert_eq!(m.virt_to_phys(VirtAddr::new(0xffff_8000_4000_0000)), None);
    }

    #[test]
    fn host_memory_translates_back() {
        let mem = mmkit_addr::host::HostMemory::new(PhysAddr::new(0x100_0000), 0x4000);
        let r = PhysRange::from_start_size(PhysAddr::new(0x100_2000), 0x1000).unwrap();
        let p = mem.phys_to_virt(r).unwrap();
        assert_eq!(
            mem.virt_to_phys(VirtAddr::new(p.as_ptr() as u64 + 5)),
            Some(PhysAddr::new(0x100_2005))
        );
        assert_eq!(
            mem.virt_to_phys(VirtAddr::new(p.as_ptr() as u64 + 0x2000)),
            None
        );
    }
}
