//! The buddy allocator as the page-table layer's [`FrameSource`].
//!
//! Table frames are zeroed order-0 blocks (or the order of the granule: 16 KiB and 64 KiB
//! granules take order-2 and order-4 blocks), unmovable, recorded as
//! [`PageUse::PageTable`]. The buddy zeroes them through its mapper (`GfpFlags::ZERO`).

use mmkit_addr::{IrqControl, Order, PageSize, PhysAddr, PAGE_SHIFT};
use mmkit_buddy::GfpFlags;
use mmkit_pgtable::FrameSource;

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
