//! The buddy allocator as the page-table layer's [`FrameSource`].
//!
//! Table frames are zeroed order-0 blocks (or the order of the granule: 16 KiB and 64 KiB
//! granules take order-2 and order-4 blocks), unmovable, recorded as
//! [`PageUse::PageTable`]. The buddy zeroes them through its mapper (`GfpFlags::ZERO`).
//!
//! The source keeps share counts ([`TableRefs`]), so a fork-style
//! [`copy_range_to`](mmkit_pgtable::PageTable::copy_range_to) between two tables over the
//! same [`PageAllocator`] shares whole read-only leaf tables instead of copying them. A
//! table frame's count lives in the low half of its head frame's private word (0 for a
//! frame one tree holds, as every block reads right after allocation): the extra holders.

use mmkit_addr::{IrqControl, Order, PageSize, PhysAddr, PAGE_SHIFT};
use mmkit_buddy::GfpFlags;
use mmkit_pgtable::{FrameSource, TableRefs};

use crate::owner::PageUse;
use crate::pages::PageAllocator;

/// Table frames from a [`PageAllocator`].
pub struct TableFrames<'m, P: IrqControl>(pub &'m PageAllocator<'m, P>);

impl<P: IrqControl> core::fmt::Debug for TableFrames<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TableFrames")
    }
}

/// The buddy order of a table frame of `size`.
fn table_order(size: PageSize) -> Order {
    Order::new(size.shift().saturating_sub(PAGE_SHIFT))
}

// SAFETY: a block from the buddy is naturally aligned, `2^order` frames long (exactly
// `size.bytes()` since the order is the size's shift over the base page), owned by us alone
// until freed, and zeroed by the buddy (`GfpFlags::ZERO`, which fails without a mapper rather
// than returning dirty memory).
unsafe impl<P: IrqControl> FrameSource for TableFrames<'_, P> {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        let order = table_order(size);
        let pfn = self
            .0
            .alloc(GfpFlags::KERNEL | GfpFlags::ZERO, order, PageUse::PageTable)
            .ok()?;
        Some(pfn.addr())
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, size: PageSize) {
        let freed = self.0.free(frame.pfn(), table_order(size));
        debug_assert!(freed.is_ok(), "freeing a table frame failed: {freed:?}");
    }

    #[inline]
    fn table_refs(&self) -> Option<&dyn TableRefs> {
        Some(self)
    }
}

impl<P: IrqControl> TableFrames<'_, P> {
    /// Apply `f` to `frame`'s count of extra holders; `Ok(previous)` or `Err(current)` as
    /// `fetch_update`. A frame that is not an allocated block (a caller bug the page-table
    /// layer never makes) reads as held once and changes nothing.
    fn holders(&self, frame: PhysAddr, f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
        let r = self.0.buddy.update_page_private_low(frame.pfn(), f);
        debug_assert!(r.is_ok(), "share count of a frame that is no table: {r:?}");
        r.unwrap_or(Err(0))
    }
}

// SAFETY: every `TableFrames` over one `PageAllocator` reports that allocator's address as
// its domain, takes its frames from that allocator's buddy and frees them back there, and
// keeps each frame's count in the frame's own descriptor (the low half of its head frame's
// private word, changed only by atomic read-modify-write), so all of them see one count
// per frame. `put` brings the count to zero (returns `true`) only from "no extra holder",
// which a compare-exchange loop decides, so exactly one `put` per frame life returns `true`;
// the next allocation of the frame starts again at 0 (the buddy hands out blocks whose head
// word reads 0).
unsafe impl<P: IrqControl> TableRefs for TableFrames<'_, P> {
    fn domain(&self) -> u64 {
        core::ptr::from_ref(self.0) as u64
    }

    fn count(&self, frame: PhysAddr) -> u32 {
        match self.holders(frame, |_| None) {
            Ok(n) | Err(n) => n.saturating_add(1),
        }
    }

    fn get(&self, frame: PhysAddr) {
        let _ = self.holders(frame, |n| n.checked_add(1));
    }

    fn put(&self, frame: PhysAddr) -> bool {
        // `Err` means there was no extra holder: this was the last reference.
        self.holders(frame, |n| n.checked_sub(1)).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granules_map_to_their_buddy_orders() {
        assert_eq!(table_order(PageSize::Size4K).get(), 0);
        assert_eq!(table_order(PageSize::Size16K).get(), 2);
        assert_eq!(table_order(PageSize::Size64K).get(), 4);
    }
}
