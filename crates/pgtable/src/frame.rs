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

    /// Give back a frame whose every byte is zero: a table unhooked because its last entry
    /// went (so the range operations cleared it entry by entry), or a reserved frame never
    /// used. A source that keeps such frames apart may hand them out again without clearing
    /// them (the old quicklists of page-table pages), which saves zeroing a whole table for
    /// each table a later map allocates; the default forgets the hint.
    ///
    /// # Safety
    /// As for [`free_table`](Self::free_table).
    #[inline]
    unsafe fn free_zeroed_table(&mut self, frame: PhysAddr, size: PageSize) {
        // SAFETY: the caller's promise is forwarded unchanged.
        unsafe { self.free_table(frame, size) }
    }

    /// The share counts of this source's table frames, if it keeps them: then a fork-style
    /// copy ([`PageTable::copy_range_to`](crate::PageTable::copy_range_to)) into a table
    /// whose source has the same [`TableRefs::domain`] shares whole read-only leaf tables
    /// instead of copying them (see "Shared leaf tables" in the crate docs). The default,
    /// `None`, means no sharing: copy clones every table. A source answers the same for its
    /// whole life (a tree holding shared tables releases them through it).
    #[inline]
    fn table_refs(&self) -> Option<&dyn TableRefs> {
        None
    }
}

/// Per-table-frame share counts, kept by a frame source (a kernel keeps them in its page
/// descriptors, as Linux keeps a page-table page's `pt_share_count`).
///
/// A frame nobody shared counts 1. A fork-style copy that shares a leaf table calls
/// [`get`](Self::get) through the destination's source; each tree that lets go of it (after
/// invalidating) calls [`put`](Self::put) through its own source, and the one that drops the
/// last reference frees the frame through its source.
///
/// # Safety
/// Sources reporting the same [`domain`](Self::domain) hand out frames from one pool and
/// keep one count per frame between them: a frame allocated by one of them may be freed
/// through any other (`free_table` of the same size), and `count`/`get`/`put` through any of
/// them see and change the same count. `put` returns `true` exactly once per frame life, for
/// the reference that brought the count to zero.
pub unsafe trait TableRefs {
    /// The identity of the pool and its counts.
    fn domain(&self) -> u64;

    /// How many trees hold table `frame` (1 if it was never shared).
    fn count(&self, frame: PhysAddr) -> u32;

    /// One more tree holds table `frame`.
    fn get(&self, frame: PhysAddr);

    /// One tree fewer holds table `frame`; `true` if that was the last (the caller frees it).
    fn put(&self, frame: PhysAddr) -> bool;
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

    #[inline]
    unsafe fn free_zeroed_table(&mut self, frame: PhysAddr, size: PageSize) {
        // SAFETY: the caller's promise is forwarded unchanged.
        unsafe { (**self).free_zeroed_table(frame, size) }
    }

    #[inline]
    fn table_refs(&self) -> Option<&dyn TableRefs> {
        (**self).table_refs()
    }
}
