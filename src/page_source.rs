//! The buddy allocator as the slab's [`PageSource`].
//!
//! * Slab blocks come from the buddy as `GFP_KERNEL`, reclaimable when the slab asks for a
//!   reclaimable cache, from ZONE_DMA for DMA caches, and are recorded as [`PageUse::Slab`].
//! * The private word is the buddy's per-frame private word. The contract wants every frame
//!   of a new block to read 0 (the buddy only promises that for the head) and 0 for frames
//!   the slab does not own, so reads consult the owner table first: slab blocks mark their
//!   tail frames there, and a tail's mark changes when the slab sets its private word. An
//!   unset tail reads 0 without asking the buddy, so a new block needs no clearing pass (a
//!   4 MiB kmalloc would otherwise touch 1023 descriptors).
//! * `virt_to_pfn` goes back through the [`KernelMap`](crate::KernelMap).
//! * Nodes are the buddy's: its node count, its CPU-to-node map (from
//!   [`MmBuilder::cpu_node`](crate::MmBuilder::cpu_node)) and the node of each frame, so
//!   every cache keeps per-node slab lists on a NUMA machine.

use core::ptr::NonNull;

use mmkit_addr::{IrqControl, Order, Pfn, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit_buddy::GfpFlags;
use mmkit_slab::{Gfp, PageBlock, PageSource};

use crate::owner::{PageUse, SlabFrame};
use crate::pages::PageAllocator;

/// The GFP flags a slab request maps to.
pub(crate) fn slab_gfp(gfp: Gfp) -> GfpFlags {
    let mut flags = if gfp.contains(Gfp::NOWAIT) {
        GfpFlags::NOWAIT
    } else {
        GfpFlags::KERNEL
    };
    if gfp.contains(Gfp::HIGH) {
        flags |= GfpFlags::HIGH;
    }
    if gfp.contains(Gfp::RECLAIMABLE) {
        flags |= GfpFlags::RECLAIMABLE;
    }
    if gfp.contains(Gfp::DMA) {
        flags |= GfpFlags::DMA;
    }
    flags
}

impl<P: IrqControl> PageAllocator<'_, P> {
    /// `virt_to_pfn` outside the linear window: the kernel map's walk, out of line so that
    /// the window's arithmetic stays small enough to inline into `kfree`.
    #[inline(never)]
    fn virt_to_pfn_mapped(&self, va: VirtAddr) -> Option<Pfn> {
        Some(self.map.virt_to_phys(va)?.pfn())
    }
}

// SAFETY: blocks come from the buddy, which hands each block to one owner until it is freed;
// `page_address` maps the whole block contiguously through the kernel map for `'m`, and a
// buddy block is naturally aligned physically, which the map preserves (checked below). The
// head's private word is 0 from the buddy; a tail's reads 0 until the slab sets it (the owner
// table says which tails were set). `page_private` answers only for frames of blocks recorded
// as slab-owned, 0 otherwise. `virt_to_pfn`
// inverts the map (`KernelMap`'s contract). Every method is safe to call from several CPUs
// (the buddy and the owner table are `Sync`).
unsafe impl<P: IrqControl> PageSource for PageAllocator<'_, P> {
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock> {
        self.alloc_pages_node(self.buddy.local_node(), order, gfp)
    }

    fn alloc_pages_node(&self, node: usize, order: Order, gfp: Gfp) -> Option<PageBlock> {
        let pfn = self
            .alloc_node(node, slab_gfp(gfp), order, PageUse::Slab)
            .ok()?;
        let ptr = self
            .page_address(pfn, order)
            .filter(|p| p.as_ptr() as u64 % order.bytes() == 0);
        let Some(ptr) = ptr else {
            let _ = self.free(pfn, order);
            return None;
        };
        Some(PageBlock { pfn, ptr })
    }

    fn alloc_pages_exact(&self, node: usize, nr: u64, gfp: Gfp) -> Option<PageBlock> {
        let pfn = self
            .alloc_exact(node, slab_gfp(gfp), nr, PageUse::Slab)
            .ok()?;
        let ptr = PhysRange::from_pfns(pfn, nr)
            .ok()
            .and_then(|r| self.map().phys_to_virt(r))
            .filter(|p| p.as_ptr() as u64 % PAGE_SIZE == 0);
        let Some(ptr) = ptr else {
            let _ = self.free_exact(pfn, nr);
            return None;
        };
        Some(PageBlock { pfn, ptr })
    }

    unsafe fn resize_pages_exact(&self, block: PageBlock, nr: u64, new_nr: u64) -> bool {
        self.resize_exact(block.pfn, nr, new_nr).is_ok()
    }

    unsafe fn free_pages_exact(&self, block: PageBlock, nr: u64) {
        let freed = self.free_exact(block.pfn, nr);
        debug_assert!(
            freed.is_ok(),
            "slab freed an exact block it does not own: {freed:?}"
        );
    }

    unsafe fn free_pages(&self, block: PageBlock, order: Order) {
        let freed = self.free(block.pfn, order);
        debug_assert!(
            freed.is_ok(),
            "slab freed a block it does not own: {freed:?}"
        );
    }

    fn set_page_private(&self, pfn: Pfn, value: u64) {
        // Only frames of the slab's own blocks: every other frame's word stays its owner's.
        match self.owners.slab_frame(pfn) {
            SlabFrame::NotSlab => {}
            SlabFrame::Head | SlabFrame::Tail => {
                let _ = self.buddy.set_page_private(pfn, value);
            }
        }
    }

    #[inline]
    fn page_private(&self, pfn: Pfn) -> u64 {
        // One descriptor read, as Linux reads `page->slab`: only slab frames ever get a word
        // (`set_page_private` above), the slab clears every word it set before it frees the
        // block, and the buddy reads free heads (whose word holds list links) as 0.
        self.buddy.page_private_fast(pfn).unwrap_or(0)
    }

    #[inline]
    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn> {
        let va = VirtAddr::from_ptr(addr.as_ptr());
        if let Some(w) = &self.window {
            // Inside the window `phys_to_virt(pa)` is `pa + offset` (`PhysMapper`'s promise),
            // so `KernelMap`'s would give this `pa` back.
            let pa = va.as_u64().wrapping_sub(w.offset);
            if (w.start..w.end).contains(&pa) {
                return Some(PhysAddr::new(pa).pfn());
            }
        }
        self.virt_to_pfn_mapped(va)
    }

    fn nr_nodes(&self) -> usize {
        self.buddy.nr_nodes()
    }

    fn cpu_node(&self, cpu: usize) -> usize {
        self.buddy.cpu_node(cpu)
    }

    fn pfn_node(&self, pfn: Pfn) -> usize {
        self.buddy.pfn_node(pfn).unwrap_or(0)
    }
}
