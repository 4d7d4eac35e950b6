//! Where table frames come from: the [`FrameSource`] trait.
//!
//! The page-table layer never allocates memory itself. Each table (including the root) is one
//! frame of the format's granule size (4, 16 or 64 KiB), obtained zeroed from a
//! [`FrameSource`] and given back to it only after the caller has invalidated every TLB and
//! walk cache that may still reference it (see [`Flush`](crate::Flush)). The facade implements
//! the trait with the buddy allocator; host tests use [`host::TableArena`](crate::host).

use mmkit_addr::{PageSize, PhysAddr};

/// A supplier of zeroed, naturally aligned table frames.
///
/// # Safety
/// A frame returned by [`alloc_table`](Self::alloc_table)`(size)` must be `size.bytes()`
/// long, aligned to `size.bytes()`, filled with zeroes, and owned exclusively by the caller
/// until it is passed back to [`free_table`](Self::free_table): nothing else may read or write
/// it in between (the page-table layer and the MMU it feeds rely on its contents).
pub unsafe trait FrameSource {
    /// One zeroed frame of `size`, or `None` if none is left.
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr>;

    /// Give back a frame.
    ///
    /// # Safety
    /// `frame` was returned by `alloc_table(size)` on this source, has not been freed since,
    /// and no TLB, walk cache or table entry references it any more. Its contents may be
    /// arbitrary.
    unsafe fn free_table(&mut self, frame: PhysAddr, size: PageSize);
}

// SAFETY: forwards to `S`, which keeps the contract.
unsafe impl<S: FrameSource + ?Sized> FrameSource for &mut S {
    #[inline]
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        (**self).alloc_table(size)
    }

    #[inline]
    unsafe fn free_table(&mut self, frame: PhysAddr, size: PageSize) {
        // SAFETY: the caller's promise is forwarded unchanged.
        unsafe { (**self).free_table(frame, size) }
    }
}
