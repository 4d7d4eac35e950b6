//! [`MmBuilder`]: from a firmware memory map to a running [`Mm`].
//!
//! The builder collects what a kernel knows at boot — the firmware memory map (e820, UEFI,
//! device tree, or plain ranges), what is already in use (kernel image, initrd, firmware
//! tables), the NUMA layout, `kernelcore=` / `movablecore=` / `cma=`, the platform hooks and the
//! vmalloc window — and [`boot`](MmBuilder::boot) runs the sequence of `DESIGN.md`:
//!
//! 1. **bootmem**: the map and the reservations go into an [`mmkit_bootmem::Bootmem`];
//!    memory past the physical address limit is clipped as the map goes in, and at boot
//!    memory the kernel map does not reach is dropped (both counted in
//!    [`BootSummary::dropped_bytes`](crate::BootSummary::dropped_bytes));
//! 2. **metadata from bootmem**: per-node memmaps, per-CPU page lists, the CPU→node map, the
//!    page-owner table, the vmalloc bitmaps and the slot the page allocator will live in —
//!    all carved out of bootmem and reached through the kernel map (`raw.rs`); no heap;
//! 3. **zones**: the buddy sizes DMA / DMA32 / Normal / Movable per node;
//! 4. **hand-off**: bootmem is consumed; every run of free blocks goes to the buddy's
//!    `free_boot_run` (largest aligned blocks, never page by page), then bootmem's own
//!    region arrays, if it grew them; then the CMA area (`cma=`,
//!    [`MmBuilder::cma`]) is declared on the first free run that fits;
//! 5. **slab**: the kmalloc caches come up on the buddy;
//! 6. **vmalloc**: the kernel page table's root comes from the buddy.
//!
//! Builder steps never fail on the spot: the first error is kept and returned by `boot`, so
//! a boot sequence reads as one chain. Everything before the hand-off is undone by simply
//! dropping the builder (bootmem owns nothing else).

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU8};

use mmkit_addr::{IrqControl, PhysAddr, PhysMapper, PhysRange, VirtRange};
use mmkit_bootmem::firmware::{e820, uefi};
use mmkit_bootmem::{Bootmem, NodeId, RegionError};
use mmkit_buddy::{
    memmap_len, node_span, pcp_storage_len, BootFreeError, BuddyAllocator, BuddyConfig, CmaArea,
    CoreSize, GfpFlags, InitError, IsolateError, NodeInit, PageDesc, PerCpuPages, MAX_NUMNODES,
};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::{NewError, PagingFormat};
use mmkit_slab::{CacheFlags, CreateError, Kmalloc};

use crate::map::KernelMap;
use crate::mm::{BootSummary, Mm};
use crate::owner::{OwnerMap, PageOwners};
use crate::pages::PageAllocator;
use crate::raw::{boot_slice, fill, fill_from, MetaLog, META_MAX};
use crate::vmalloc::{Vmalloc, VmallocSpace};
use mmkit_addr::PAGE_SIZE;

/// CPUs the builder can place on nodes; CPUs beyond it belong to node 0.
pub const MAX_CPU_NODE_MAP: usize = 256;

/// The distance Linux assumes between a node and itself (ACPI SLIT `LOCAL_DISTANCE`).
pub const LOCAL_DISTANCE: u8 = 10;
/// The distance Linux assumes between distinct nodes without a SLIT (`REMOTE_DISTANCE`).
pub const REMOTE_DISTANCE: u8 = 20;

/// Why the boot sequence failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The e820 map was refused.
    E820(e820::E820Error),
    /// The UEFI memory map was refused.
    Uefi(uefi::UefiError),
    /// The device tree was refused.
    #[cfg(feature = "fdt")]
    Fdt(mmkit_bootmem::firmware::fdt::FdtError),
    /// A memory, reservation or node range was refused by bootmem.
    Region(RegionError),
    /// A node id at or above [`MAX_NUMNODES`](mmkit_buddy::MAX_NUMNODES).
    BadNode(u16),
    /// The map holds no memory.
    NoMemory,
    /// Bootmem could not provide boot metadata.
    Bootmem(mmkit_bootmem::AllocError),
    /// Boot metadata landed where the kernel map does not reach (or misaligned there).
    Unmapped(PhysRange),
    /// The metadata size overflows.
    MetadataTooLarge,
    /// The buddy refused its configuration or layout.
    Buddy(InitError),
    /// The buddy refused a block of the hand-off.
    Handoff(BootFreeError),
    /// The kmalloc caches could not be created.
    Slab(CreateError),
    /// The vmalloc window is empty, unaligned, or not canonical for the paging format.
    BadVmallocRange(VirtRange),
    /// The kernel page table could not be created.
    PageTable(NewError),
    /// No free run of the size [`MmBuilder::cma`] asked for was found after the hand-off
    /// (the buddy's reason), or the size overflows.
    Cma(IsolateError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::E820(e) => write!(f, "e820 map refused: {e}"),
            Self::Uefi(e) => write!(f, "UEFI memory map refused: {e}"),
            #[cfg(feature = "fdt")]
            Self::Fdt(e) => write!(f, "device tree refused: {e}"),
            Self::Region(e) => write!(f, "memory range refused: {e}"),
            Self::BadNode(n) => write!(f, "node {n} is beyond the supported {MAX_NUMNODES}"),
            Self::NoMemory => f.write_str("the memory map holds no memory"),
            Self::Bootmem(e) => write!(f, "no boot memory for allocator metadata: {e}"),
            Self::Unmapped(r) => write!(f, "boot metadata at {r:?} is not reachable"),
            Self::MetadataTooLarge => f.write_str("allocator metadata size overflows"),
            Self::Buddy(e) => write!(f, "buddy allocator refused the layout: {e}"),
            Self::Handoff(e) => write!(f, "buddy refused a hand-off block: {e}"),
            Self::Slab(e) => write!(f, "kmalloc caches could not be created: {e:?}"),
            Self::BadVmallocRange(r) => write!(f, "bad vmalloc window {r:?}"),
            Self::PageTable(e) => write!(f, "kernel page table: {e:?}"),
            Self::Cma(e) => write!(f, "no room for the CMA area: {e}"),
        }
    }
}

/// Find a free run of `bytes` (rounded up to pageblocks) right after the hand-off and make
/// it the CMA area (`MmBuilder::cma`). The run is found the way `alloc_contig_pages` finds
/// one (aligned to its size when that is a power of two), taken, given back, and declared:
/// nothing else runs during boot, so it is still free.
fn declare_cma<P: IrqControl>(
    buddy: &BuddyAllocator<'_, P>,
    bytes: u64,
) -> Result<Option<CmaArea>, BootError> {
    if bytes == 0 {
        return Ok(None);
    }
    let pb = 1u64 << buddy.config().pageblock_order;
    let frames = bytes.div_ceil(PAGE_SIZE);
    let too_large = BootError::Cma(IsolateError::TooLarge { nr_pages: frames });
    let pages = frames.div_ceil(pb);
    let pages = pages.checked_mul(pb).ok_or(too_large)?;
    let start = buddy
        .alloc_contig_pages(pages, GfpFlags::KERNEL, 0)
        .map_err(BootError::Cma)?;
    buddy
        .free_contig_range(start, pages)
        .map_err(|_| BootError::Cma(IsolateError::Busy { pfn: start }))?;
    buddy.drain_all_pages();
    buddy
        .declare_cma(start, pages)
        .map(Some)
        .map_err(|_| BootError::Cma(IsolateError::Busy { pfn: start }))
}

/// Whether `map` reaches every byte of `[start, end)`.
fn reaches(map: &dyn KernelMap, start: u64, end: u64) -> bool {
    PhysRange::from_start_size(PhysAddr::new(start), end - start)
        .ok()
        .and_then(|r| map.phys_to_virt(r))
        .is_some()
}

/// Remove from bootmem the memory `map` does not reach: boot metadata must be reachable, and
/// frames the kernel cannot address are no use to kmalloc or `page_address` either. A region
/// keeps the longest frame-aligned prefix the map reaches (found by bisection, so a map whose
/// window is one contiguous range is honoured exactly); the rest is dropped. Returns the
/// bytes dropped.
fn drop_unreachable_memory(bm: &mut Bootmem<'_>, map: &dyn KernelMap) -> Result<u64, BootError> {
    let mut dropped = 0u64;
    loop {
        let Some((start, end)) = bm
            .memory_regions()
            .iter()
            .map(|r| (r.range().start().as_u64(), r.range().end().as_u64()))
            .find(|&(s, e)| !reaches(map, s, e))
        else {
            return Ok(dropped);
        };
        // Largest `keep` in [start, end] with [start, keep) reachable, in whole frames.
        let (mut lo, mut hi) = (start, end);
        while hi - lo > PAGE_SIZE {
            let mid = lo + (((hi - lo) / 2) & !(PAGE_SIZE - 1)).max(PAGE_SIZE);
            if mid < hi && reaches(map, start, mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let keep = if lo > start && reaches(map, start, lo) {
            lo
        } else {
            start
        };
        bm.remove(PhysAddr::new(keep), end - keep)
            .map_err(BootError::Region)?;
        dropped = dropped.saturating_add(end - keep);
    }
}

/// Collects the boot parameters; [`boot`](Self::boot) brings memory management up.
pub struct MmBuilder<'m, P: IrqControl, F: PagingFormat = X86_64> {
    bm: Bootmem<'m>,
    map: &'m dyn KernelMap,
    phys: &'m dyn PhysMapper,
    platform: P,
    cfg: BuddyConfig,
    distances: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    cpu_nodes: [u8; MAX_CPU_NODE_MAP],
    vmalloc: Option<(F, VirtRange)>,
    slab_flags: CacheFlags,
    clipped: u64,
    /// `cma=`: bytes for the CMA area (0: none).
    cma_bytes: u64,
    error: Option<BootError>,
}

impl<P: IrqControl, F: PagingFormat> fmt::Debug for MmBuilder<'_, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmBuilder")
            .field("bootmem", &self.bm)
            .field("config", &self.cfg)
            .field("vmalloc", &self.vmalloc.as_ref().map(|v| v.1))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<'m, P: IrqControl> MmBuilder<'m, P, X86_64> {
    /// Start a boot on `platform`, reaching physical memory through `map`.
    ///
    /// # Safety
    /// Bootmem's [`set_mapper`](Bootmem::set_mapper) contract, from now until the [`Mm`] and
    /// everything allocated from it are gone: every byte the builder is told is memory and
    /// that is not reserved and that `map` reaches must be real memory that nothing else reads
    /// or writes (memory `map` does not reach is dropped at boot). In other words, reserve the kernel
    /// image, boot stacks, initrd and firmware tables before [`boot`](Self::boot).
    pub unsafe fn new<M: KernelMap>(platform: P, map: &'m M) -> Self {
        let mut bm = Bootmem::new();
        // SAFETY: this function's contract is `set_mapper`'s, passed on to our caller.
        unsafe { bm.set_mapper(map) };
        let mut distances = [[REMOTE_DISTANCE; MAX_NUMNODES]; MAX_NUMNODES];
        for (i, row) in distances.iter_mut().enumerate() {
            row[i] = LOCAL_DISTANCE;
        }
        Self {
            bm,
            map,
            phys: map,
            platform,
            cfg: BuddyConfig::default(),
            distances,
            cpu_nodes: [0; MAX_CPU_NODE_MAP],
            vmalloc: None,
            slab_flags: CacheFlags::empty(),
            clipped: 0,
            cma_bytes: 0,
            error: None,
        }
    }
}

impl<'m, P: IrqControl, F: PagingFormat> MmBuilder<'m, P, F> {
    fn record<E>(mut self, r: Result<(), E>, wrap: impl FnOnce(E) -> BootError) -> Self {
        if let Err(e) = r {
            self.error.get_or_insert(wrap(e));
        }
        self
    }

    /// The first physical address the CPU cannot reach (x86 `MAXPHYADDR`, arm64
    /// `PHYS_MASK_SHIFT`); 52 bits unless set. Firmware memory past it is clipped by the map
    /// steps that follow ([`clipped_bytes`](Self::clipped_bytes) counts it), so set it before
    /// [`e820`](Self::e820), [`uefi`](Self::uefi) or `device_tree`.
    pub fn phys_limit(mut self, end: PhysAddr) -> Self {
        self.bm.set_phys_limit(end);
        self
    }

    /// Bytes of firmware memory dropped so far because they lie past the physical address
    /// limit: nonzero means the firmware map is wrong, and a kernel should warn.
    pub fn clipped_bytes(&self) -> u64 {
        self.clipped
    }

    /// Add an e820 map (sanitized as Linux does; RAM becomes memory, soft-reserved memory is
    /// reserved, everything else is left out). A refused map changes nothing.
    pub fn e820(mut self, entries: &[e820::E820Entry]) -> Self {
        let r = e820::ingest(&mut self.bm, entries).map(|s| self.clipped += s.clipped);
        self.record(r, BootError::E820)
    }

    /// Add a UEFI memory map (`GetMemoryMap` output). A refused map changes nothing.
    pub fn uefi(mut self, map: &uefi::UefiMemoryMap<'_>) -> Self {
        let r = uefi::ingest(&mut self.bm, map).map(|s| self.clipped += s.clipped);
        self.record(r, BootError::Uefi)
    }

    /// Add the memory, reservations and carve-outs of a flattened device tree. A malformed
    /// blob is an error (never a panic) and changes nothing.
    #[cfg(feature = "fdt")]
    pub fn device_tree(mut self, blob: &[u8]) -> Self {
        let r = mmkit_bootmem::firmware::fdt::ingest(&mut self.bm, blob)
            .map(|s| self.clipped += s.clipped);
        self.record(r, BootError::Fdt)
    }

    /// Add a range of memory (on node 0 unless [`node`](Self::node) says otherwise).
    pub fn memory(mut self, range: PhysRange) -> Self {
        let r = if range.is_empty() {
            Ok(())
        } else {
            self.bm.add(range.start(), range.len())
        };
        self.record(r, BootError::Region)
    }

    /// Mark `range` as in use (kernel image, initrd, firmware tables, boot stacks).
    pub fn reserve(mut self, range: PhysRange) -> Self {
        let r = if range.is_empty() {
            Ok(())
        } else {
            self.bm.reserve(range.start(), range.len())
        };
        self.record(r, BootError::Region)
    }

    /// Put the memory inside `range` on NUMA node `nid` (ACPI SRAT / device-tree
    /// `numa-node-id`).
    pub fn node(mut self, nid: u16, range: PhysRange) -> Self {
        if usize::from(nid) >= MAX_NUMNODES {
            self.error.get_or_insert(BootError::BadNode(nid));
            return self;
        }
        let r = if range.is_empty() {
            Ok(())
        } else {
            self.bm
                .set_node(range.start(), range.len(), NodeId::new(nid))
        };
        self.record(r, BootError::Region)
    }

    /// The distance between nodes `a` and `b`, both ways (ACPI SLIT; default 10 local, 20
    /// remote).
    pub fn node_distance(mut self, a: u16, b: u16, distance: u8) -> Self {
        let (ai, bi) = (usize::from(a), usize::from(b));
        if ai >= MAX_NUMNODES || bi >= MAX_NUMNODES {
            self.error.get_or_insert(BootError::BadNode(a.max(b)));
            return self;
        }
        self.distances[ai][bi] = distance;
        self.distances[bi][ai] = distance;
        self
    }

    /// CPU `cpu` sits on node `nid`: its page allocations prefer that node.
    pub fn cpu_node(mut self, cpu: usize, nid: u16) -> Self {
        if usize::from(nid) >= MAX_NUMNODES {
            self.error.get_or_insert(BootError::BadNode(nid));
        } else if let Some(slot) = self.cpu_nodes.get_mut(cpu) {
            *slot = nid as u8;
        }
        self
    }

    /// `cma=`: reserve a contiguous memory area of `bytes` (rounded up to whole pageblocks)
    /// at boot (Linux `cma=`). Right after the hand-off, the first free, suitably aligned
    /// run of the highest zone a `GFP_KERNEL` request may use becomes the area: its
    /// pageblocks are CMA, lent to movable allocations until [`Mm::cma_alloc`] takes runs
    /// of it back. 0 (the default) declares none; a size no zone can hold fails the boot
    /// with [`BootError::Cma`].
    pub fn cma(mut self, bytes: u64) -> Self {
        self.cma_bytes = bytes;
        self
    }

    /// `kernelcore=`: memory kept out of ZONE_MOVABLE.
    pub fn kernelcore(mut self, size: CoreSize) -> Self {
        self.cfg.kernelcore = Some(size);
        self
    }

    /// `movablecore=`: memory put into ZONE_MOVABLE.
    pub fn movablecore(mut self, size: CoreSize) -> Self {
        self.cfg.movablecore = Some(size);
        self
    }

    /// Replace the buddy configuration (max order, pageblock order, zone limits, watermark
    /// tunables). `kernelcore` / `movablecore` / [`deferred_init`](Self::deferred_init) set
    /// earlier are kept unless `cfg` sets them.
    pub fn buddy_config(mut self, cfg: BuddyConfig) -> Self {
        let (kc, mc, di) = (
            self.cfg.kernelcore,
            self.cfg.movablecore,
            self.cfg.deferred_init,
        );
        self.cfg = cfg;
        self.cfg.kernelcore = self.cfg.kernelcore.or(kc);
        self.cfg.movablecore = self.cfg.movablecore.or(mc);
        self.cfg.deferred_init = self.cfg.deferred_init.or(di);
        self
    }

    /// Deferred memmap initialisation (Linux `CONFIG_DEFERRED_STRUCT_PAGE_INIT`): boot
    /// initialises the page descriptors of only each node's first `frames_per_node` frames
    /// (rounded up to a max-order block) and gives only those to the buddy; the rest is
    /// initialised by [`Mm::deferred_init_step`] / [`Mm::complete_deferred_init`] (one
    /// thread per node) or by allocations that would otherwise fail. The page-owner table
    /// follows: its deferred sections read reserved from one shared block until the buddy's
    /// growth gives them bytes of their own, so boot writes nothing per deferred frame.
    pub fn deferred_init(mut self, frames_per_node: u64) -> Self {
        self.cfg.deferred_init = Some(frames_per_node);
        self
    }

    /// Extra flags on every kmalloc cache (the `slub_debug=` boot option).
    pub fn slab_debug(mut self, flags: CacheFlags) -> Self {
        self.slab_flags = flags;
        self
    }

    /// Direct access to the bootmem before boot (custom firmware formats, early
    /// allocations the kernel needs for itself, allocation limits).
    pub fn bootmem_mut(&mut self) -> &mut Bootmem<'m> {
        &mut self.bm
    }

    /// Create the kernel page table in format `fmt` and serve vmalloc from `window`
    /// (granule-aligned, canonical). The kernel maps the rest of its address space into the
    /// same table through [`Mm::with_page_table`].
    pub fn vmalloc_area<G: PagingFormat>(self, fmt: G, window: VirtRange) -> MmBuilder<'m, P, G> {
        MmBuilder {
            bm: self.bm,
            map: self.map,
            phys: self.phys,
            platform: self.platform,
            cfg: self.cfg,
            distances: self.distances,
            cpu_nodes: self.cpu_nodes,
            vmalloc: Some((fmt, window)),
            slab_flags: self.slab_flags,
            clipped: self.clipped,
            cma_bytes: self.cma_bytes,
            error: self.error,
        }
    }

    /// What [`boot`](Self::boot) will take from boot memory for mmkit's own structures, from
    /// the memory map and configuration given so far: a kernel can check it fits, or size a
    /// machine, before booting. Every structure is page-aligned, so each is counted in whole
    /// pages; after boot [`BootSummary::metadata_bytes`] gives the same total. The estimate
    /// assumes the kernel map reaches all memory (boot drops what it cannot reach, which
    /// only shrinks the figures). kmalloc caches are not in it: each is created, from the
    /// page allocator, by its first allocation.
    ///
    /// [`BootSummary::metadata_bytes`]: crate::BootSummary::metadata_bytes
    pub fn boot_cost(&self) -> Result<BootCost, BootError>
    where
        P: 'm,
        F: 'm,
    {
        if let Some(e) = self.error {
            return Err(e);
        }
        let regions = self.bm.memory_regions();
        let (nr_nodes, lo, hi) = memory_shape(regions)?;
        let bytes = |size: usize, n: usize| page_round((size as u64).saturating_mul(n as u64));
        let nr_cpus = self.platform.nr_cpus();
        let mut memmap = 0;
        let mut distances = 0;
        for nid in 0..nr_nodes {
            let mut node = [PhysRange::EMPTY; MAX_NODE_RANGES];
            let mut n = 0;
            for r in regions.iter().filter(|r| usize::from(r.nid().get()) == nid) {
                if let Some(slot) = node.get_mut(n) {
                    *slot = r.range();
                    n += 1;
                }
            }
            memmap += bytes(
                size_of::<PageDesc>(),
                memmap_len(&node[..n], self.cfg.max_order),
            );
            distances += bytes(1, nr_nodes);
        }
        let pcp_len = if self.cfg.per_cpu_lists {
            pcp_storage_len(nr_nodes, nr_cpus)
        } else {
            0
        };
        let vmalloc = match &self.vmalloc {
            Some((fmt, window)) => {
                let slots = window.len() / fmt.granule().bytes();
                3 * page_round(slots.div_ceil(64) * 8) + bytes(size_of::<Vmalloc<'m, P, F>>(), 1)
            }
            None => 0,
        };
        let shift = self.cfg.max_order.min(mmkit_buddy::MAX_ORDER_LIMIT);
        let (olo, ohi) = owner_span(lo, hi, shift);
        let mut all = [PhysRange::EMPTY; MAX_NODE_RANGES];
        let mut n_all = 0;
        for r in regions {
            if let Some(slot) = all.get_mut(n_all) {
                *slot = r.range();
                n_all += 1;
            }
        }
        Ok(BootCost {
            memmap_bytes: memmap,
            owner_table_bytes: bytes(4, ((ohi - olo) >> shift) as usize)
                + bytes(1, OwnerMap::storage_len(&all[..n_all], self.cfg.max_order)),
            per_cpu_bytes: bytes(size_of::<PerCpuPages>(), pcp_len) + bytes(1, nr_cpus),
            vmalloc_bytes: vmalloc,
            other_bytes: bytes(size_of::<PhysRange>(), regions.len())
                + distances
                + bytes(size_of::<PageAllocator<'m, P>>(), 1)
                + bytes(size_of::<OwnerMap<'m>>(), 1)
                + bytes(size_of::<PhysRange>(), META_MAX),
        })
    }

    /// Run the boot sequence (module docs).
    pub fn boot(self) -> Result<Mm<'m, P, F>, BootError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Self {
            mut bm,
            map,
            phys,
            platform,
            cfg,
            distances,
            cpu_nodes,
            vmalloc,
            slab_flags,
            clipped,
            cma_bytes,
            ..
        } = self;
        let bm = &mut bm;
        let mut meta = MetaLog::new();
        let unreachable = drop_unreachable_memory(bm, map)?;

        // The shape of memory: node count, frame span, regions per node.
        let regions = bm.memory_regions();
        let (nr_nodes, lo, hi) = memory_shape(regions)?;
        let nr_regions = regions.len();
        let memory_bytes = bm.memory_size();

        // Per-node memory ranges, grouped by node.
        let slots = boot_slice::<PhysRange>(bm, map, &mut meta, nr_regions, None)?;
        let regions = bm.memory_regions();
        let mut bounds = [0usize; MAX_NUMNODES + 1];
        for nid in 0..nr_nodes {
            let here = regions
                .iter()
                .filter(|r| usize::from(r.nid().get()) == nid)
                .count();
            bounds[nid + 1] = bounds[nid] + here;
        }
        let by_node = (0..nr_nodes).flat_map(|nid| {
            regions
                .iter()
                .filter(move |r| usize::from(r.nid().get()) == nid)
                .map(|r| r.range())
        });
        let ranges: &'m [PhysRange] = fill_from(slots, by_node);

        // Boot metadata from bootmem.
        let nr_cpus = platform.nr_cpus();
        let pcp_len = if cfg.per_cpu_lists {
            pcp_storage_len(nr_nodes, nr_cpus)
        } else {
            0
        };
        let pcp = boot_slice::<PerCpuPages>(bm, map, &mut meta, pcp_len, None)?;
        let cpu_map = fill(
            boot_slice::<u8>(bm, map, &mut meta, nr_cpus, None)?,
            |cpu| cpu_nodes.get(cpu).copied().unwrap_or(0),
        );
        // The page-owner table: sparse, like the memmap (`OwnerMap`).
        let shift = cfg.max_order.min(mmkit_buddy::MAX_ORDER_LIMIT);
        let (olo, ohi) = owner_span(lo, hi, shift);
        let owner_table =
            boot_slice::<AtomicU32>(bm, map, &mut meta, ((ohi - olo) >> shift) as usize, None)?;
        let owner_storage = boot_slice::<AtomicU8>(
            bm,
            map,
            &mut meta,
            OwnerMap::storage_len(ranges, cfg.max_order),
            None,
        )?;
        let owner_slot = boot_slice::<OwnerMap<'m>>(bm, map, &mut meta, 1, None)?;
        let meta_slot = boot_slice::<PhysRange>(bm, map, &mut meta, META_MAX, None)?;
        let space = match &vmalloc {
            Some((fmt, window)) => Some(VmallocSpace::carve(bm, map, &mut meta, fmt, *window)?),
            None => None,
        };
        let slot = boot_slice::<PageAllocator<'m, P>>(bm, map, &mut meta, 1, None)?;
        // The vmalloc state lives in boot memory too, so the movable-page mover can refer to
        // it for `'m` (`movable.rs`).
        let vm_slot = match &vmalloc {
            Some(_) => Some(boot_slice::<Vmalloc<'m, P, F>>(
                bm, map, &mut meta, 1, None,
            )?),
            None => None,
        };
        let mut nodes: [Option<NodeInit<'m, 'm>>; MAX_NUMNODES] = Default::default();
        let mut memmap_bytes = 0u64;
        for nid in 0..nr_nodes {
            let memory = &ranges[bounds[nid]..bounds[nid + 1]];
            let len = memmap_len(memory, cfg.max_order);
            memmap_bytes += (len * core::mem::size_of::<PageDesc>()) as u64;
            let memmap =
                boot_slice::<PageDesc>(bm, map, &mut meta, len, Some(NodeId::new(nid as u16)))?;
            let row: &'m [u8] = fill(boot_slice::<u8>(bm, map, &mut meta, nr_nodes, None)?, |j| {
                distances[nid][j]
            });
            nodes[nid] = Some(NodeInit {
                memory,
                distances: row,
                memmap,
            });
        }
        let mut inits: [NodeInit<'m, 'm>; MAX_NUMNODES] = nodes.map(|n| {
            n.unwrap_or(NodeInit {
                memory: &[],
                distances: &[],
                memmap: &mut [],
            })
        });
        // Every boot structure is allocated: the log is complete.
        let logged = meta.ranges();
        let meta_ranges: &'m [PhysRange] = &fill(meta_slot, |i| {
            logged.get(i).copied().unwrap_or(PhysRange::EMPTY)
        })[..logged.len()];
        let owner_map: &'m OwnerMap<'m> = owner_slot[0].write(OwnerMap::new(
            olo,
            owner_table,
            owner_storage,
            shift,
            ranges,
            meta_ranges,
        ));
        let owners = PageOwners::new(owner_map);

        let mut buddy = BuddyAllocator::new(platform, cfg, &mut inits[..nr_nodes], pcp)
            .map_err(BootError::Buddy)?;
        buddy.set_mapper(phys);
        buddy.set_cpu_nodes(cpu_map);
        // The owner table gets bytes for what the buddy initialised; the rest of each node
        // reads reserved until the buddy's growth reaches it.
        for nid in 0..nr_nodes {
            let memory = &ranges[bounds[nid]..bounds[nid + 1]];
            let (Some((start, end)), Some(info)) =
                (node_span(memory, cfg.max_order), buddy.deferred_info(nid))
            else {
                continue;
            };
            let boundary = info.boundary.as_u64();
            owner_map.init_sections(start, boundary);
            owner_map.defer_sections(boundary, end);
        }
        // With deferral, the buddy tells the table which frames its growth initialises and
        // frees.
        if cfg.deferred_init.is_some() {
            buddy.set_deferred_observer(owner_map);
        }

        // Hand-off: bootmem is consumed here.
        let reserved_bytes = bm.reserved_size();
        let handoff = core::mem::take(bm).handoff(mmkit_addr::Order::new(cfg.max_order));
        for run in handoff.block_runs() {
            // One call per run: the part past a deferred boundary is recorded at once.
            buddy
                .free_boot_run(run.first.pfn, run.first.order, run.count)
                .map_err(BootError::Handoff)?;
            // Frames past a deferred boundary are only recorded: their sections read
            // reserved until the buddy frees them (`OwnerMap` as the deferred observer), and `mark_range`
            // writes only sections with bytes of their own.
            let s = run.first.pfn.as_u64();
            owners.mark_range(s, s + run.count * run.first.order.pages(), 0);
        }
        for array in handoff.into_region_arrays().into_iter().flatten() {
            buddy.free_boot_range(array).map_err(BootError::Handoff)?;
            let p = array.whole_pfns();
            owners.mark_range(p.start, p.end, 0);
        }
        let cma = declare_cma(&buddy, cma_bytes)?;
        buddy.finish_boot();

        let pages: &'m PageAllocator<'m, P> = slot[0].write(PageAllocator {
            buddy,
            owners,
            map,
            window: map.linear_window(),
        });
        // The owner table follows every block a mover migrates.
        pages.buddy.set_migration_observer(pages);
        let kmalloc = Kmalloc::with_flags(pages, pages.buddy.platform(), slab_flags)
            .map_err(BootError::Slab)?;
        let vmalloc = match (vmalloc, space, vm_slot) {
            (Some((fmt, window)), Some(space), Some(vm_slot)) => {
                let vm: &'m Vmalloc<'m, P, F> =
                    vm_slot[0].write(Vmalloc::new(pages, fmt, window, space)?);
                Some(vm)
            }
            _ => None,
        };
        let summary = BootSummary {
            memory_bytes,
            dropped_bytes: clipped.saturating_add(unreachable),
            reserved_bytes,
            memmap_bytes,
            metadata_bytes: meta.ranges().iter().map(|r| page_round(r.len())).sum(),
            nr_nodes,
            span: (lo, hi),
        };
        Ok(Mm::from_parts(pages, kmalloc, vmalloc, summary, cma))
    }
}

/// The shape of memory from bootmem's regions: `(node count, first frame, end frame)`.
fn memory_shape(regions: &[mmkit_bootmem::Region]) -> Result<(usize, u64, u64), BootError> {
    let mut nr_nodes = 1;
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for r in regions {
        let nid = r.nid().get();
        if usize::from(nid) >= MAX_NUMNODES {
            return Err(BootError::BadNode(nid));
        }
        nr_nodes = nr_nodes.max(usize::from(nid) + 1);
        let p = r.range().whole_pfns();
        if p.start < p.end {
            lo = lo.min(p.start);
            hi = hi.max(p.end);
        }
    }
    if lo >= hi {
        return Err(BootError::NoMemory);
    }
    Ok((nr_nodes, lo, hi))
}

/// The owner table's span: `[lo, hi)` rounded out to sections of `2^shift` frames.
fn owner_span(lo: u64, hi: u64, shift: u32) -> (u64, u64) {
    let sec = 1u64 << shift;
    (lo & !(sec - 1), hi.div_ceil(sec) * sec)
}

/// Page-aligned size: what a boot structure of `bytes` bytes takes.
fn page_round(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

/// Memory ranges per node [`MmBuilder::boot_cost`] looks at (bootmem keeps fewer regions).
const MAX_NODE_RANGES: usize = 128;

/// What booting takes for mmkit's own structures ([`MmBuilder::boot_cost`]), in bytes of
/// whole pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCost {
    /// Page descriptors: 16 bytes per frame of each max-order section that holds memory,
    /// plus a 4-byte entry per section of each node's span and one shared block of hole
    /// descriptors per node (sparse memmap: see `mmkit_buddy::memmap_len`).
    pub memmap_bytes: u64,
    /// The page-owner table: one byte per frame of each section that holds memory, a
    /// 4-byte entry per section from the first to the last frame of memory, and two shared
    /// blocks (holes, deferred memory).
    pub owner_table_bytes: u64,
    /// The buddy's per-CPU lists and the CPU-to-node map.
    pub per_cpu_bytes: u64,
    /// vmalloc's bitmaps and state (0 without a vmalloc area).
    pub vmalloc_bytes: u64,
    /// The page allocator object, the memory ranges and the node distance table.
    pub other_bytes: u64,
}

impl BootCost {
    /// Everything.
    pub fn total_bytes(&self) -> u64 {
        self.memmap_bytes
            + self.owner_table_bytes
            + self.per_cpu_bytes
            + self.vmalloc_bytes
            + self.other_bytes
    }
}
