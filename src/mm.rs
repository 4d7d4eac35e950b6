//! [`Mm`]: what the kernel calls once memory management is up.
//!
//! * pages: [`alloc_pages`](Mm::alloc_pages) / [`free_pages`](Mm::free_pages) on the buddy
//!   (per-CPU lists for orders 0..=3); contiguous runs of any length with
//!   [`alloc_contig_pages`](Mm::alloc_contig_pages) / [`free_contig_pages`](Mm::free_contig_pages)
//!   and from the boot-time CMA area with [`cma_alloc`](Mm::cma_alloc) /
//!   [`cma_release`](Mm::cma_release), which migrate movable blocks that have a mover out of
//!   the way; every run is recorded in the owner table (head byte plus contiguous-tail bytes)
//!   and freed only whole;
//! * objects: the kmalloc family and [`cache_create`](Mm::cache_create) /
//!   [`typed_cache`](Mm::typed_cache) on the slab (per-CPU arrays first);
//! * vmalloc / vmap (`vmalloc.rs`), reports (`report.rs`), and [`verify`](Mm::verify), which
//!   runs every crate's invariant scanner plus the facade's cross-checks;
//! * deferred memmap initialisation, when booted with it:
//!   [`deferred_init_step`](Mm::deferred_init_step) /
//!   [`complete_deferred_init`](Mm::complete_deferred_init), one thread per node.
//!
//! GFP flags are the buddy's [`GfpFlags`] everywhere; the kmalloc calls pass the parts the
//! slab understands (zeroing, reclaimable, DMA).
//!
//! ## Lifetimes
//! `'m` is the life of the kernel map: the page allocator, memmaps and per-CPU storage live
//! in boot memory for that long, so an `Mm<'static, ..>` can back a `#[global_allocator]`.
//! Caches made with [`cache_create`](Mm::cache_create) borrow the page allocator for `'m`,
//! not the `Mm`, so the page allocator is never torn down: dropping an `Mm` drops its kmalloc
//! caches and leaves the page allocator (and the platform value inside it) in boot memory,
//! as a kernel would. On a host, give it a platform that owns no heap memory
//! (`host::HostCpus`, feature `std`) where leak checkers run.

use core::ptr::NonNull;

use mmkit_addr::{IrqControl, Order, Pfn, PhysRange};
use mmkit_buddy::{
    AllocError, BootFreeError, BuddyAllocator, CmaArea, DeferredError, DeferredProgress, FreeError,
    GfpFlags, IsolateError,
};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::PagingFormat;
use mmkit_slab::{Cache, CacheConfig, CreateError, Gfp, Kmalloc, TypedCache};

use crate::owner::{PageUse, PageblockCensus};
use crate::pages::PageAllocator;
use crate::vmalloc::{Vmalloc, VmallocCorruption};

/// A slab cache on the facade's page allocator.
pub type MmCache<'m, P> = Cache<'m, PageAllocator<'m, P>, P>;
/// A typed slab cache on the facade's page allocator.
pub type MmTypedCache<'m, T, P> = TypedCache<'m, T, PageAllocator<'m, P>, P>;
/// The kmalloc caches on the facade's page allocator.
pub type MmKmalloc<'m, P> = Kmalloc<'m, PageAllocator<'m, P>, P>;

/// What the boot sequence measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSummary {
    /// Bytes of memory in the firmware map (after what was dropped, below).
    pub memory_bytes: u64,
    /// Bytes of firmware memory dropped: past the physical address limit
    /// ([`MmBuilder::clipped_bytes`](crate::MmBuilder::clipped_bytes)) or out of the kernel
    /// map's reach at boot. Nonzero means the firmware map or the map given to the builder is
    /// wrong; a kernel should warn.
    pub dropped_bytes: u64,
    /// Bytes reserved at the hand-off (firmware, kernel image, boot metadata).
    pub reserved_bytes: u64,
    /// Bytes of page descriptors (memmaps).
    pub memmap_bytes: u64,
    /// Bytes of boot memory mmkit took for its own structures (memmaps, page-owner table,
    /// per-CPU lists, vmalloc bitmaps, the allocator objects), each rounded up to whole
    /// pages: what [`MmBuilder::boot_cost`](crate::MmBuilder::boot_cost) predicts.
    pub metadata_bytes: u64,
    /// NUMA nodes.
    pub nr_nodes: usize,
    /// Frames `[lo, hi)` spanned by memory.
    pub span: (u64, u64),
}

/// What [`Mm::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The buddy allocator's scanner.
    Buddy(mmkit_buddy::VerifyError),
    /// A kmalloc cache's scanner.
    Slab(mmkit_slab::VerifyError),
    /// The kernel page table's scanner.
    PageTable(mmkit_pgtable::VerifyError),
    /// The vmalloc bookkeeping.
    Vmalloc(VmallocCorruption),
    /// The owner table records a block at this frame that the buddy does not hold as an
    /// allocated block of that order.
    OwnerMismatch(Pfn),
}

impl core::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Buddy(e) => write!(f, "buddy allocator: {e:?}"),
            Self::Slab(e) => write!(f, "kmalloc cache: {e:?}"),
            Self::PageTable(e) => write!(f, "kernel page table: {e:?}"),
            Self::Vmalloc(e) => write!(f, "vmalloc bookkeeping: {e:?}"),
            Self::OwnerMismatch(p) => {
                write!(
                    f,
                    "owner table records a block at {p:?} the buddy does not hold"
                )
            }
        }
    }
}

/// Why [`Mm::free_pages`] refused a block. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFreeError {
    /// The buddy refused the free (double free, wrong order, inside a block, reserved, ...).
    Buddy(FreeError),
    /// The block belongs to another user of the page allocator (slab, vmalloc, page
    /// tables), which frees it itself.
    NotFromAllocPages(PageUse),
    /// The frame is the head of a contiguous run (a [`GlobalMm`](crate::GlobalMm) layout
    /// beyond the largest order), which is freed whole through
    /// [`dealloc_layout`](Mm::dealloc_layout).
    ContiguousRun,
    /// [`free_contig_pages`](Mm::free_contig_pages) was given a count that is not the
    /// run's.
    RunLength {
        /// The length of the run recorded at the frame (`None`: no run starts there).
        recorded: Option<u64>,
    },
    /// [`cma_release`](Mm::cma_release) was given a run outside the CMA area, or there is
    /// no area.
    NotInCmaArea,
}

impl core::fmt::Display for PageFreeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Buddy(e) => write!(f, "page free refused: {e}"),
            Self::NotFromAllocPages(u) => write!(f, "block is owned by {u:?}, not alloc_pages"),
            Self::ContiguousRun => write!(f, "frame heads a contiguous run, freed only whole"),
            Self::RunLength { recorded } => {
                write!(f, "count is not the run's (recorded: {recorded:?})")
            }
            Self::NotInCmaArea => f.write_str("run is not inside the CMA area"),
        }
    }
}

/// Why [`Mm::free_reserved_range`] refused a range. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeReservedError {
    /// The range holds no whole frame.
    Empty,
    /// A frame is not reserved memory: free, allocated, a hole, or outside the machine.
    NotReserved(Pfn),
    /// A frame holds mmkit's own boot structures (memmap, page-owner table, per-CPU lists,
    /// vmalloc bitmaps), which stay reserved for good.
    Metadata(Pfn),
    /// The buddy refused a block (a frame outside its zones).
    Buddy(BootFreeError),
}

impl core::fmt::Display for FreeReservedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty => write!(f, "the range holds no whole frame"),
            Self::NotReserved(p) => write!(f, "frame {p:?} is not reserved memory"),
            Self::Metadata(p) => write!(f, "frame {p:?} holds mmkit's boot metadata"),
            Self::Buddy(e) => write!(f, "the buddy refused the range: {e}"),
        }
    }
}

/// Memory management, up and running.
pub struct Mm<'m, P: IrqControl, F: PagingFormat = X86_64> {
    pub(crate) pages: &'m PageAllocator<'m, P>,
    pub(crate) kmalloc: MmKmalloc<'m, P>,
    pub(crate) vmalloc: Option<&'m Vmalloc<'m, P, F>>,
    pub(crate) boot: BootSummary,
    pub(crate) dealloc_report: crate::global::DeallocReport,
    pub(crate) cma: Option<CmaArea>,
}

impl<P: IrqControl, F: PagingFormat> core::fmt::Debug for Mm<'_, P, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mm")
            .field("boot", &self.boot)
            .field("vmalloc", &self.vmalloc.is_some())
            .finish_non_exhaustive()
    }
}

/// The slab's view of a GFP request.
pub(crate) fn slab_flags(gfp: GfpFlags) -> Gfp {
    let mut g = Gfp::empty();
    if gfp.contains(GfpFlags::ZERO) {
        g |= Gfp::ZERO;
    }
    if gfp.contains(GfpFlags::RECLAIMABLE) {
        g |= Gfp::RECLAIMABLE;
    }
    if gfp.contains(GfpFlags::DMA) {
        g |= Gfp::DMA;
    }
    if !gfp.contains(GfpFlags::DIRECT_RECLAIM) {
        g |= Gfp::NOWAIT;
    }
    if gfp.contains(GfpFlags::HIGH) {
        g |= Gfp::HIGH;
    }
    g
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    pub(crate) fn from_parts(
        pages: &'m PageAllocator<'m, P>,
        kmalloc: MmKmalloc<'m, P>,
        vmalloc: Option<&'m Vmalloc<'m, P, F>>,
        boot: BootSummary,
        cma: Option<CmaArea>,
    ) -> Self {
        Self {
            pages,
            kmalloc,
            vmalloc,
            boot,
            dealloc_report: Default::default(),
            cma,
        }
    }

    /// What the boot sequence measured.
    pub fn boot_summary(&self) -> &BootSummary {
        &self.boot
    }

    /// The page allocator (buddy plus ownership), e.g. to build more slab caches or page
    /// tables on it.
    pub fn page_allocator(&self) -> &'m PageAllocator<'m, P> {
        self.pages
    }

    /// The buddy allocator underneath.
    pub fn buddy(&self) -> &'m BuddyAllocator<'m, P> {
        &self.pages.buddy
    }

    /// The platform hooks.
    pub fn platform(&self) -> &'m P {
        self.pages.buddy.platform()
    }

    /// The kmalloc caches.
    pub fn kmalloc_caches(&self) -> &MmKmalloc<'m, P> {
        &self.kmalloc
    }

    // ---- deferred memmap initialisation ----------------------------------------------

    /// Frames per step of [`complete_deferred_init`](Self::complete_deferred_init): 32 MiB
    /// of 4 KiB frames (512 KiB of descriptors written with interrupts off).
    pub const DEFERRED_INIT_CHUNK: u64 = 8192;

    /// Initialise the next `max_frames` frames (rounded up to a max-order block) of node
    /// `node`'s deferred memmap and free what the boot hand-off gave there to the buddy
    /// ([`MmBuilder::deferred_init`](crate::MmBuilder::deferred_init); the buddy's
    /// [`deferred_init_step`](BuddyAllocator::deferred_init_step)). Call it from one thread
    /// per node (each with its own CPU) while other CPUs allocate; local interrupts stay off
    /// for the step, so `max_frames` bounds that time. Allocations that would otherwise fail
    /// initialise more on their own.
    pub fn deferred_init_step(
        &self,
        node: usize,
        max_frames: u64,
    ) -> Result<DeferredProgress, DeferredError> {
        self.pages.buddy.deferred_init_step(node, max_frames)
    }

    /// Complete node `node`'s deferred memmap, [`DEFERRED_INIT_CHUNK`](Self::DEFERRED_INIT_CHUNK) frames per step (so
    /// interrupts come back between steps). Returns the descriptors initialised; a node
    /// already complete (or never deferred) is [`DeferredError::Complete`].
    pub fn complete_deferred_init(&self, node: usize) -> Result<u64, DeferredError> {
        let mut done = 0;
        loop {
            match self.deferred_init_step(node, Self::DEFERRED_INIT_CHUNK) {
                Ok(p) => {
                    done += p.initialised;
                    if p.remaining == 0 {
                        return Ok(done);
                    }
                }
                // An allocation grew the rest on demand between two steps.
                Err(DeferredError::Complete) if done > 0 => return Ok(done),
                Err(e) => return Err(e),
            }
        }
    }

    /// Frames, over all nodes, whose descriptors are still deferred (0 once every node is
    /// complete).
    pub fn deferred_frames(&self) -> u64 {
        self.pages.buddy.total_deferred()
    }

    // ---- pages ----------------------------------------------------------------------

    /// Allocate `2^order` contiguous frames (`alloc_pages`), preferring this CPU's node.
    pub fn alloc_pages(&self, gfp: GfpFlags, order: Order) -> Result<Pfn, AllocError> {
        self.pages.alloc(gfp, order, PageUse::Pages)
    }

    /// Allocate `2^order` contiguous frames preferring node `node` (`alloc_pages_node`);
    /// with [`GfpFlags::THISNODE`] only that node.
    pub fn alloc_pages_node(
        &self,
        node: usize,
        gfp: GfpFlags,
        order: Order,
    ) -> Result<Pfn, AllocError> {
        self.pages.alloc_node(node, gfp, order, PageUse::Pages)
    }

    /// Give reserved memory to the page allocator after boot (Linux `free_reserved_area`,
    /// `memblock_free_late`): an initrd once unpacked, the kernel's init sections, a boot-time
    /// page-table pool the kernel has switched away from. Frames only partly inside `range`
    /// are left alone. Every frame must be reserved memory the facade did not use for its own
    /// structures; otherwise nothing changes. Watermarks are recomputed for the larger zones.
    /// Returns the frames freed.
    ///
    /// # Safety
    /// Nothing reads or writes the whole frames of `range` from now on, other than through
    /// later allocations of them (they are the page allocator's).
    pub unsafe fn free_reserved_range(&self, range: PhysRange) -> Result<u64, FreeReservedError> {
        let p = range.whole_pfns();
        if p.start >= p.end {
            return Err(FreeReservedError::Empty);
        }
        let owners = &self.pages.owners;
        owners
            .release_reserved(p.start, p.end)
            .map_err(|(pfn, byte)| match byte {
                Some(crate::owner::METADATA) => FreeReservedError::Metadata(Pfn::new(pfn)),
                _ => FreeReservedError::NotReserved(Pfn::new(pfn)),
            })?;
        match self.pages.buddy.free_boot_range(range) {
            Ok(n) => {
                self.pages.buddy.finish_boot();
                Ok(n)
            }
            Err(e) => {
                // The buddy checks every block before freeing any: nothing was freed.
                owners.mark_range(p.start, p.end, crate::owner::RESERVED);
                Err(FreeReservedError::Buddy(e))
            }
        }
    }

    /// Allocate `nr_pages` physically contiguous frames, any count, even beyond the largest
    /// buddy order (Linux `alloc_contig_pages`), preferring this CPU's node. The run starts
    /// on a pageblock boundary (on a boundary of its size when the count is a power of two).
    /// Movable blocks with a mover are migrated out of the chosen run
    /// ([`BuddyAllocator::alloc_contig_pages`]); a `gfp` that may not block takes free runs
    /// only. The run is recorded in the owner table; free it whole with
    /// [`free_contig_pages`](Self::free_contig_pages). `ZERO` is not honoured (zero through
    /// [`page_address`](Self::page_address)).
    pub fn alloc_contig_pages(&self, nr_pages: u64, gfp: GfpFlags) -> Result<Pfn, IsolateError> {
        self.pages.alloc_contig(nr_pages, gfp, PageUse::Pages)
    }

    /// Free the run of `nr_pages` frames [`alloc_contig_pages`](Self::alloc_contig_pages) or
    /// [`cma_alloc`](Self::cma_alloc) returned at `pfn`. The count must be the run's
    /// (`RunLength` names the recorded one); a refused free changes nothing.
    pub fn free_contig_pages(&self, pfn: Pfn, nr_pages: u64) -> Result<(), PageFreeError> {
        if let Some(o) = self.pages.owner(pfn).filter(|o| o.usage != PageUse::Pages) {
            return Err(PageFreeError::NotFromAllocPages(o.usage));
        }
        let recorded = self.pages.contig_len(pfn);
        match (nr_pages, recorded) {
            // A one-frame run is recorded as a plain order-0 block.
            (1, None)
                if self
                    .pages
                    .owner(pfn)
                    .is_some_and(|o| o.order == Order::ZERO) =>
            {
                self.pages
                    .free(pfn, Order::ZERO)
                    .map_err(PageFreeError::Buddy)
            }
            (n, Some(len)) if n == len => self
                .pages
                .free_contig(pfn)
                .map(|_| ())
                .map_err(PageFreeError::Buddy),
            _ => Err(PageFreeError::RunLength { recorded }),
        }
    }

    /// The CMA area [`MmBuilder::cma`](crate::MmBuilder::cma) declared at boot, if any.
    pub fn cma_area(&self) -> Option<CmaArea> {
        self.cma
    }

    /// Allocate `nr_pages` contiguous frames from the CMA area, starting on a multiple of
    /// `2^align_order` frames (Linux `cma_alloc`): movable memory borrowing the area is
    /// migrated out of the chosen run ([`BuddyAllocator::cma_alloc`]). Recorded in the owner
    /// table as a movable run; give it back with [`cma_release`](Self::cma_release).
    /// Without an area, `NotFound`.
    pub fn cma_alloc(&self, nr_pages: u64, align_order: u32) -> Result<Pfn, IsolateError> {
        let area = self.cma.as_ref().ok_or(IsolateError::NotFound)?;
        self.pages.alloc_cma(area, nr_pages, align_order)
    }

    /// Give back a run [`cma_alloc`](Self::cma_alloc) returned (the whole run). Refused,
    /// changing nothing: `NotInCmaArea` for a run outside the area (or without one), else as
    /// [`free_contig_pages`](Self::free_contig_pages).
    pub fn cma_release(&self, pfn: Pfn, nr_pages: u64) -> Result<(), PageFreeError> {
        match self.cma {
            Some(area) if area.contains(pfn, nr_pages) => self.free_contig_pages(pfn, nr_pages),
            _ => Err(PageFreeError::NotInCmaArea),
        }
    }

    /// Free a block [`alloc_pages`](Self::alloc_pages) returned. A bad free (double, wrong
    /// order, not allocated) is refused and changes nothing.
    pub fn free_pages(&self, pfn: Pfn, order: Order) -> Result<(), PageFreeError> {
        self.pages.free_pages_block(pfn, order)
    }

    /// The kernel virtual address of a block (`page_address`).
    pub fn page_address(&self, pfn: Pfn, order: Order) -> Option<NonNull<u8>> {
        self.pages.page_address(pfn, order)
    }

    // ---- kmalloc --------------------------------------------------------------------

    /// Allocate `size` bytes (`kmalloc`): a slab object up to 8 KiB, whole pages beyond.
    /// `kmalloc(0)` returns [`ZERO_SIZE_PTR`](mmkit_slab::ZERO_SIZE_PTR).
    #[track_caller]
    pub fn kmalloc(
        &self,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, mmkit_slab::AllocError> {
        self.kmalloc.kmalloc(size, slab_flags(gfp))
    }

    /// Allocate `size` bytes from node `node`'s memory where it has some (`kmalloc_node`):
    /// the object comes from that node's slabs (see [`mmkit_slab::Cache::alloc_node`]).
    #[track_caller]
    pub fn kmalloc_node(
        &self,
        size: usize,
        gfp: GfpFlags,
        node: usize,
    ) -> Result<NonNull<u8>, mmkit_slab::AllocError> {
        self.kmalloc.kmalloc_node(size, slab_flags(gfp), node)
    }

    /// Allocate `size` zeroed bytes (`kzalloc`).
    #[track_caller]
    pub fn kzalloc(
        &self,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, mmkit_slab::AllocError> {
        self.kmalloc.kzalloc(size, slab_flags(gfp))
    }

    /// Allocate `size` bytes aligned to `align` (a power of two, at most a page).
    #[track_caller]
    pub fn kmalloc_aligned(
        &self,
        size: usize,
        align: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, mmkit_slab::AllocError> {
        self.kmalloc.kmalloc_aligned(size, align, slab_flags(gfp))
    }

    /// Free a kmalloc allocation (`kfree`). Pointers that are not live kmalloc allocations
    /// are refused where detectable and nothing changes.
    ///
    /// # Safety
    /// [`Kmalloc::kfree`](mmkit_slab::Kmalloc::kfree)'s contract: `ptr` is `ZERO_SIZE_PTR`,
    /// or a live allocation of this `Mm`'s kmalloc family owned by the caller and not used
    /// afterwards, or a misuse `kfree` detects (a pointer outside every slab and large block,
    /// into another cache, not at an object start, the object this CPU freed last), which is
    /// defined: it returns the error and changes nothing. Any other second free, and use
    /// after free, is undefined.
    pub unsafe fn kfree(&self, ptr: NonNull<u8>) -> Result<(), mmkit_slab::FreeError> {
        // SAFETY: the caller's promise is `Kmalloc::kfree`'s.
        unsafe { self.kmalloc.kfree(ptr) }
    }

    /// Usable size of a kmalloc allocation (`ksize`).
    ///
    /// # Safety
    /// If `ptr` is a kmalloc allocation, it is live and the caller owns it for the call.
    pub unsafe fn ksize(&self, ptr: NonNull<u8>) -> Result<usize, mmkit_slab::FreeError> {
        // SAFETY: forwarded contract.
        unsafe { self.kmalloc.ksize(ptr) }
    }

    /// Resize a kmalloc allocation (`krealloc`); on error the old one is untouched.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree): `ptr` is given up on success.
    pub unsafe fn krealloc(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        gfp: GfpFlags,
    ) -> Result<NonNull<u8>, mmkit_slab::KreallocError> {
        // SAFETY: forwarded contract.
        unsafe { self.kmalloc.krealloc(ptr, size, slab_flags(gfp)) }
    }

    // ---- caches ---------------------------------------------------------------------

    /// Create an object cache (`kmem_cache_create`).
    pub fn cache_create(&self, config: &CacheConfig<'m>) -> Result<MmCache<'m, P>, CreateError> {
        Cache::new(config, self.pages, self.platform())
    }

    /// Create a cache of `T` handing out owned, constructed objects.
    pub fn typed_cache<T: Default>(
        &self,
        config: CacheConfig<'m>,
    ) -> Result<MmTypedCache<'m, T, P>, CreateError> {
        TypedCache::new(config, self.pages, self.platform())
    }

    // ---- maintenance ----------------------------------------------------------------

    /// Give every cached per-CPU page and object back (Linux `drain_all_pages` plus a slab
    /// shrink); returns slab frames released.
    pub fn drain_all(&mut self) -> u64 {
        let released = self.kmalloc.drain_all();
        self.pages.buddy.drain_all_pages();
        released
    }

    /// Shrink the kmalloc family while it is in use (Linux `kmem_cache_shrink` on every
    /// kmalloc cache, as its slab shrinker does): every CPU's cached objects go back to their
    /// slabs, drained on that CPU through the platform's `run_on_cpu`, and empty slabs and
    /// header pages go back to the page allocator. Returns the frames released. Call it with
    /// interrupts on, as `run_on_cpu` requires.
    pub fn kmalloc_shrink(&self) -> u64 {
        self.kmalloc.shrink()
    }

    /// Free frames obtainable as blocks of at least `order` (the high-order availability
    /// figure).
    pub fn free_pages_at_order(&self, order: u32) -> u64 {
        self.pages.buddy.free_pages_at_order(order)
    }

    /// Walk physical memory pageblock by pageblock with its frame counts (free, reserved,
    /// holes, allocated per mobility) and its migrate type. A lock-free snapshot.
    pub fn pageblock_census(&self, mut f: impl FnMut(&PageblockCensus)) {
        let buddy = &self.pages.buddy;
        let order = buddy.config().pageblock_order;
        self.pages.owners.census(order, &mut |c: &PageblockCensus| {
            let mut c = *c;
            c.migratetype = buddy.pageblock_migratetype(Pfn::new(c.pfn));
            f(&c)
        });
    }

    /// Run every invariant scanner: the buddy's, every kmalloc cache's, the kernel page
    /// table's and the vmalloc bookkeeping, and cross-check the owner table against the
    /// buddy (every recorded block is allocated in the buddy with that order, every frame of
    /// a contiguous run an allocated single frame).
    pub fn verify(&mut self) -> Result<(), VerifyError> {
        self.pages.buddy.verify().map_err(VerifyError::Buddy)?;
        self.kmalloc.verify().map_err(VerifyError::Slab)?;
        self.verify_vmalloc()?;
        let (lo, hi) = self.boot.span;
        let mut pfn = lo;
        while pfn < hi {
            let p = Pfn::new(pfn);
            match self.pages.owners.get(p) {
                Some(o) => {
                    if self.pages.buddy.allocated_block(p) != Some((p, o.order)) {
                        return Err(VerifyError::OwnerMismatch(p));
                    }
                    pfn += o.order.pages();
                }
                // A contiguous run's tail frames are order-0 blocks in the buddy too.
                None if self.pages.owners.is_contig_tail(pfn) => {
                    if self.pages.buddy.allocated_block(p) != Some((p, Order::ZERO)) {
                        return Err(VerifyError::OwnerMismatch(p));
                    }
                    pfn += 1;
                }
                None => pfn += 1,
            }
        }
        Ok(())
    }
}
