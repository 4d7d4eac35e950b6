//! The page layer: the buddy allocator plus the facade's page-owner table.
//!
//! [`PageAllocator`] is what every other part of the facade allocates frames from: direct
//! page allocations ([`Mm::alloc_pages`](crate::Mm::alloc_pages)), slab pages (through the
//! [`PageSource`](mmkit_slab::PageSource) adapter in `page_source.rs`), page-table frames
//! (the [`FrameSource`](mmkit_pgtable::FrameSource) adapter in `frame_source.rs`) and
//! vmalloc pages. Each allocation records its owner (`owner.rs`) after the buddy succeeds;
//! each free clears it before the buddy sees the block, and puts it back if the buddy refuses
//! the free, so a refused free changes nothing.
//!
//! The object lives in bootmem memory for the whole life of the kernel (`'m`), which is what
//! lets the slab caches and page tables hold `&'m` references to it.

use core::ptr::NonNull;

use mmkit_addr::{IrqControl, Order, Pfn, PhysRange};
use mmkit_buddy::{
    AllocError, BuddyAllocator, CmaArea, FreeError, GfpFlags, IsolateError, MigrateType,
    MigrationObserver, ResizeError,
};

use crate::map::KernelMap;
use crate::mm::PageFreeError;
use crate::owner::{Owner, PageOwners, PageUse, TakePagesError};

/// The buddy allocator with ownership tracking and a kernel map.
pub struct PageAllocator<'m, P: IrqControl> {
    pub(crate) buddy: BuddyAllocator<'m, P>,
    pub(crate) owners: PageOwners<'m>,
    pub(crate) map: &'m dyn KernelMap,
    /// `map`'s linear window, if it has one: the free path turns a pointer into a frame
    /// with a subtraction and a compare instead of a call through `dyn KernelMap`.
    pub(crate) window: Option<mmkit_addr::LinearWindow>,
}

impl<P: IrqControl> core::fmt::Debug for PageAllocator<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageAllocator")
            .field("buddy", &self.buddy)
            .finish_non_exhaustive()
    }
}

/// Migration moves a block's owner record with it: the head byte goes from the source's
/// frame to the target's (the buddy calls this while both are allocated).
impl<P: IrqControl> MigrationObserver for PageAllocator<'_, P> {
    fn migrated(&self, src: Pfn, dst: Pfn, _: Order) {
        if let Some(owner) = self.owners.take(src) {
            self.owners.record(dst, owner);
        }
    }
}

impl<'m, P: IrqControl> PageAllocator<'m, P> {
    /// The buddy allocator underneath (reports, tunables, contiguous ranges).
    pub fn buddy(&self) -> &BuddyAllocator<'m, P> {
        &self.buddy
    }

    /// The kernel map.
    pub fn map(&self) -> &'m dyn KernelMap {
        self.map
    }

    /// Allocate `2^order` frames for `usage`.
    pub(crate) fn alloc(
        &self,
        gfp: GfpFlags,
        order: Order,
        usage: PageUse,
    ) -> Result<Pfn, AllocError> {
        self.alloc_node(self.buddy.local_node(), gfp, order, usage)
    }

    /// Allocate `2^order` frames for `usage`, preferring node `node`.
    pub(crate) fn alloc_node(
        &self,
        node: usize,
        gfp: GfpFlags,
        order: Order,
        usage: PageUse,
    ) -> Result<Pfn, AllocError> {
        let pfn = self.buddy.alloc_pages_node(node, gfp, order)?;
        // The buddy already rejected contradictory flags.
        let mobility = gfp.migrate_type().unwrap_or(MigrateType::Unmovable);
        self.owners.record(
            pfn,
            Owner {
                order,
                mobility,
                usage,
            },
        );
        Ok(pfn)
    }

    /// Allocate exactly `nr` frames (the buddy's `alloc_pages_exact`) for `usage`, preferring
    /// node `node`; each of its pieces is recorded as a block of its own.
    pub(crate) fn alloc_exact(
        &self,
        node: usize,
        gfp: GfpFlags,
        nr: u64,
        usage: PageUse,
    ) -> Result<Pfn, AllocError> {
        let pfn = self.buddy.alloc_pages_exact(node, gfp, nr)?;
        let mobility = gfp.migrate_type().unwrap_or(MigrateType::Unmovable);
        for (p, order) in mmkit_buddy::exact_pieces(pfn, nr) {
            let owner = Owner {
                order,
                mobility,
                usage,
            };
            self.owners.record(p, owner);
        }
        Ok(pfn)
    }

    /// Free what [`alloc_exact`](Self::alloc_exact) returned; on error nothing changes.
    pub(crate) fn free_exact(&self, pfn: Pfn, nr: u64) -> Result<(), FreeError> {
        let mut taken: [Option<(Pfn, Owner)>; 64] = [None; 64];
        for ((p, _), slot) in mmkit_buddy::exact_pieces(pfn, nr).zip(taken.iter_mut()) {
            *slot = self.owners.take(p).map(|o| (p, o));
        }
        let freed = self.buddy.free_pages_exact(pfn, nr);
        if freed.is_err() {
            for (p, o) in taken.into_iter().flatten() {
                self.owners.record(p, o);
            }
        }
        freed
    }

    /// Resize what [`alloc_exact`](Self::alloc_exact) returned from `nr` to `new_nr` frames
    /// in place (the buddy's `resize_pages_exact`), moving the owner records from the old
    /// pieces to the new ones; on error nothing changes.
    pub(crate) fn resize_exact(&self, pfn: Pfn, nr: u64, new_nr: u64) -> Result<(), ResizeError> {
        let mut taken: [Option<(Pfn, Owner)>; 64] = [None; 64];
        for ((p, _), slot) in mmkit_buddy::exact_pieces(pfn, nr).zip(taken.iter_mut()) {
            *slot = self.owners.take(p).map(|o| (p, o));
        }
        match self.buddy.resize_pages_exact(pfn, nr, new_nr) {
            Ok(()) => {
                if let Some((_, first)) = taken[0] {
                    for (p, order) in mmkit_buddy::exact_pieces(pfn, new_nr) {
                        self.owners.record(p, Owner { order, ..first });
                    }
                }
                Ok(())
            }
            Err(e) => {
                for (p, o) in taken.into_iter().flatten() {
                    self.owners.record(p, o);
                }
                Err(e)
            }
        }
    }

    /// Allocate `nr_pages` contiguous frames, any count, even beyond the max order (the
    /// buddy's `alloc_contig_pages`), for `usage`; every frame is recorded as an order-0
    /// block. `gfp`'s zone and mobility choose where; `ZERO` is the caller's to honour.
    pub(crate) fn alloc_contig(
        &self,
        nr_pages: u64,
        gfp: GfpFlags,
        usage: PageUse,
    ) -> Result<Pfn, IsolateError> {
        let gfp = gfp - GfpFlags::ZERO;
        let pfn = self
            .buddy
            .alloc_contig_pages(nr_pages, gfp, self.buddy.local_node())?;
        let mobility = gfp.migrate_type().unwrap_or(MigrateType::Unmovable);
        let owner = Owner {
            order: Order::ZERO,
            mobility,
            usage,
        };
        self.record_contig(pfn, nr_pages, owner);
        Ok(pfn)
    }

    /// Allocate `nr_pages` contiguous frames from the CMA `area` (the buddy's `cma_alloc`)
    /// for `Mm::cma_alloc`, recorded as a movable run of `PageUse::Pages` like
    /// [`alloc_contig`](Self::alloc_contig)'s.
    pub(crate) fn alloc_cma(
        &self,
        area: &CmaArea,
        nr_pages: u64,
        align_order: u32,
    ) -> Result<Pfn, IsolateError> {
        let pfn = self.buddy.cma_alloc(area, nr_pages, align_order)?;
        let owner = Owner {
            order: Order::ZERO,
            mobility: MigrateType::Movable,
            usage: PageUse::Pages,
        };
        self.record_contig(pfn, nr_pages, owner);
        Ok(pfn)
    }

    /// Record a run of `nr_pages` frames at `pfn` (one frame: a plain order-0 block).
    fn record_contig(&self, pfn: Pfn, nr_pages: u64, owner: Owner) {
        if nr_pages == 1 {
            self.owners.record(pfn, owner);
        } else {
            self.owners.record_run(pfn, nr_pages, owner);
        }
    }

    /// The length of the contiguous run [`alloc_contig`](Self::alloc_contig) returned at
    /// `pfn` (two frames or more), or `None` if no such run starts there.
    pub(crate) fn contig_len(&self, pfn: Pfn) -> Option<u64> {
        self.owners.run_len(pfn)
    }

    /// Free the whole run [`alloc_contig`](Self::alloc_contig) returned at `pfn`, whatever
    /// its length; returns the length. On a refusal nothing changes.
    pub(crate) fn free_contig(&self, pfn: Pfn) -> Result<u64, FreeError> {
        let Some(n) = self.owners.run_len(pfn) else {
            return Err(FreeError::DoubleFree);
        };
        let Some(owner) = self.owners.take_run(pfn, n) else {
            return Err(FreeError::DoubleFree);
        };
        match self.buddy.free_contig_range(pfn, n) {
            Ok(()) => Ok(n),
            Err(e) => {
                self.owners.record_run(pfn, n, owner);
                Err(e)
            }
        }
    }

    /// Free a block [`alloc`](Self::alloc) returned.
    pub(crate) fn free(&self, pfn: Pfn, order: Order) -> Result<(), FreeError> {
        let owner = self.owners.take(pfn);
        match self.buddy.free_pages(pfn, order) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(o) = owner {
                    self.owners.record(pfn, o);
                }
                Err(e)
            }
        }
    }

    /// Free a block of [`Mm::alloc_pages`](crate::Mm::alloc_pages): refused, changing
    /// nothing, when the owner table says another user has it (slab, vmalloc and page-table
    /// frames are freed by their owners only), when `pfn` heads a contiguous run (freeing
    /// its first frame alone would strand the rest), or when the buddy refuses it. One read
    /// of the owner byte serves both checks and the take.
    #[inline]
    pub(crate) fn free_pages_block(&self, pfn: Pfn, order: Order) -> Result<(), PageFreeError> {
        let owner = match self.owners.take_pages(pfn) {
            Ok(o) => o,
            Err(TakePagesError::NotPages(u)) => return Err(PageFreeError::NotFromAllocPages(u)),
            Err(TakePagesError::ContiguousRun) => return Err(PageFreeError::ContiguousRun),
        };
        match self.buddy.free_pages(pfn, order) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(o) = owner {
                    self.owners.record(pfn, o);
                }
                Err(PageFreeError::Buddy(e))
            }
        }
    }

    /// Whether frame `pfn` holds mmkit's own boot structures (memmap, page-owner table,
    /// per-CPU lists, vmalloc bitmaps, the allocator object): memory the kernel must keep
    /// mapped and never hand out or free.
    pub fn is_boot_metadata(&self, pfn: Pfn) -> bool {
        self.owners.is_metadata(pfn.as_u64())
    }

    /// The owner recorded for the block whose head is `pfn`.
    pub fn owner(&self, pfn: Pfn) -> Option<Owner> {
        self.owners.get(pfn)
    }

    /// The kernel virtual address of the block `[pfn, pfn + 2^order)` (Linux
    /// `page_address`), if the map reaches it.
    pub fn page_address(&self, pfn: Pfn, order: Order) -> Option<NonNull<u8>> {
        let range = PhysRange::from_pfns(pfn, order.pages()).ok()?;
        self.map.phys_to_virt(range)
    }
}
