//! The buddy allocator as the slab's [`PageSource`].
//!
//! * Slab blocks come from the buddy as `GFP_KERNEL`, reclaimable when the slab asks for a
//!   reclaimable cache, from ZONE_DMA for DMA caches, and are recorded as [`PageUse::Slab`].
//! * The private word is the buddy's per-frame private word. The contract wants every frame
//!   of a new block to read 0 (the buddy only promises that for the head), so the tails are
//!   cleared at allocation; and it wants 0 for frames the slab does not own, so reads check
//!   the owner table first (slab blocks mark their tail frames there too).
//! * `virt_to_pfn` goes back through the [`KernelMap`](crate::KernelMap).

use core::ptr::NonNull;

use mmkit_addr::{IrqControl, Order, Pfn, VirtAddr};
use mmkit_buddy::GfpFlags;
use mmkit_slab::{Gfp, PageBlock, PageSource};

use crate::owner::PageUse;
use crate::pages::PageAllocator;

/// The GFP flags a slab request maps to.
pub(crate) fn slab_gfp(gfp: Gfp) -> GfpFlags {
    let mut flags = GfpFlags::KERNEL;
    if gfp.contains(Gfp::RECLAIMABLE) {
        flags |= GfpFlags::RECLAIMABLE;
    }
    if gfp.contains(Gfp::DMA) {
        flags |= GfpFlags::DMA;
    }
    flags
}

impl<P: IrqControl> PageAllocator<'_, P> {
    /// Whether `pfn` lies in a live block the slab owns (one load in the owner table).
    fn slab_owns(&self, pfn: Pfn) -> bool {
        self.owners.is_slab(pfn)
    }
}

// SAFETY: blocks come from the buddy, which hands each block to one owner until it is freed;
// `page_address` maps the whole block contiguously through the kernel map for `'m`, and a
// buddy block is naturally aligned physically, which the map preserves (checked below). Tail
// private words are cleared before the block is returned and the head's is 0 from the buddy.
// `page_private` answers only for blocks recorded as slab-owned, 0 otherwise. `virt_to_pfn`
// inverts the map (`KernelMap`'s contract). Every method is safe to call from several CPUs
// (the buddy and the owner table are `Sync`).
unsafe impl<P: IrqControl> PageSource for PageAllocator<'_, P> {
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock> {
        let pfn = self.alloc(slab_gfp(gfp), order, PageUse::Slab).ok()?;
        let ptr = self
            .page_address(pfn, order)
            .filter(|p| p.as_ptr() as u64 % order.bytes() == 0);
        let Some(ptr) = ptr else {
            let _ = self.free(pfn, order);
            return None;
        };
        for tail in 1..order.pages() {
            let _ = self
                .buddy
                .set_page_private(Pfn::new(pfn.as_u64() + tail), 0);
        }
        Some(PageBlock { pfn, ptr })
    }

    unsafe fn free_pages(&self, block: PageBlock, order: Order) {
        let freed = self.free(block.pfn, order);
        debug_assert!(
            freed.is_ok(),
            "slab freed a block it does not own: {freed:?}"
        );
    }

    fn set_page_private(&self, pfn: Pfn, value: u64) {
        if self.slab_owns(pfn) {
            let _ = self.buddy.set_page_private(pfn, value);
        }
    }

    fn page_private(&self, pfn: Pfn) -> u64 {
        if self.slab_owns(pfn) {
            self.buddy.page_private(pfn).unwrap_or(0)
        } else {
            0
        }
    }

    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn> {
        Some(
            self.map
                .virt_to_phys(VirtAddr::from_ptr(addr.as_ptr()))?
                .pfn(),
        )
    }
}
