//! The allocator object: nodes, their zones, construction from caller storage, and the boot
//! path that brings memory in.
//!
//! ## Construction and boot
//! 1. [`BuddyAllocator::new`] takes each node's memory ranges and memmap storage, marks every
//!    present frame [`Reserved`](crate::PageState::Reserved) (and the rest of the span as
//!    holes), sizes ZONE_MOVABLE and cuts each node into zones.
//! 2. The boot allocator's hand-off frees every free range with
//!    [`free_boot_block`](BuddyAllocator::free_boot_block) (Linux `__free_pages_core`):
//!    this bypasses the per-CPU lists, adds to the zone's managed count and merges. Frames
//!    never freed stay reserved, which is what lets a bogus free be recognised.
//! 3. [`finish_boot`](BuddyAllocator::finish_boot) computes watermarks, lowmem reserve and
//!    per-CPU sizes, and switches mobility grouping off on tiny memory.
//!
//! ## Zonelists
//! An allocation preferring node `n` with highest zone `z` tries zones `z, z-1, .., DMA` of
//! `n`, then of the other nodes by increasing distance (Linux's node-ordered zonelist).

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order, Pfn, PhysMapper, PhysRange};
use spin::RwLock;

use crate::config::{node_span, pcp_storage_len, BuddyConfig, NodeInit};
use crate::error::{BootFreeError, InitError};
use crate::freearea::{Params, ZoneLocked};
use crate::migrate::MigrateType;
use crate::movable::zone_movable_starts;
use crate::page::{Flags, Memmap, PageDesc, PageState};
use crate::pcp::PerCpuPages;
use crate::raw::init_slice;
use crate::zone::{Zone, ZoneType, NR_ZONES};
use crate::{MAX_NUMNODES, MAX_ORDER_LIMIT};

/// Called (without any allocator lock held) when an allocation finds a zone below its low
/// watermark: where Linux wakes kswapd. Arguments: node id and zone.
pub type LowWatermarkHook = fn(node: usize, zone: ZoneType);

pub(crate) struct Node<'m> {
    pub mm: Memmap<'m>,
    pub zones: [Zone<'m>; NR_ZONES],
    /// Other nodes by increasing distance (this node first).
    pub fallback: [u8; MAX_NUMNODES],
    pub distances: [u8; MAX_NUMNODES],
}

/// The buddy page allocator. `Sync`: use it from every CPU through `&self`.
pub struct BuddyAllocator<'m, P: IrqControl> {
    pub(crate) platform: P,
    pub(crate) cfg: BuddyConfig,
    pub(crate) nodes: [Option<Node<'m>>; MAX_NUMNODES],
    pub(crate) nr_nodes: usize,
    pub(crate) grouping: AtomicBool,
    pub(crate) pcp_enabled: bool,
    pub(crate) mapper: Option<&'m dyn PhysMapper>,
    pub(crate) low_hook: RwLock<Option<LowWatermarkHook>>,
    /// Node of each CPU (empty: every CPU is on node 0).
    pub(crate) cpu_nodes: &'m [u8],
}

impl<'m, P: IrqControl> core::fmt::Debug for BuddyAllocator<'m, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("nr_nodes", &self.nr_nodes)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Build the allocator over `nodes` (ids are slice positions) with per-CPU storage `pcp`
    /// of at least [`pcp_storage_len`] entries (may be empty when `per_cpu_lists` is off).
    /// Every present frame starts reserved; memory enters with
    /// [`free_boot_block`](Self::free_boot_block).
    pub fn new(
        platform: P,
        cfg: BuddyConfig,
        nodes: &mut [NodeInit<'m, '_>],
        pcp: &'m mut [core::mem::MaybeUninit<PerCpuPages>],
    ) -> Result<Self, InitError> {
        if cfg.max_order > MAX_ORDER_LIMIT || cfg.pageblock_order > cfg.max_order {
            return Err(InitError::BadOrder);
        }
        let max_bytes = 4096u64 << cfg.max_order;
        let (dma, dma32) = (cfg.dma_limit.as_u64(), cfg.dma32_limit.as_u64());
        if dma % max_bytes != 0 || dma32 % max_bytes != 0 || dma > dma32 {
            return Err(InitError::BadZoneBoundary);
        }
        let nr_nodes = nodes.len();
        if nr_nodes == 0 || nr_nodes > MAX_NUMNODES {
            return Err(InitError::BadNodeCount);
        }
        let nr_cpus = platform.nr_cpus();
        let pcp_needed = if cfg.per_cpu_lists {
            pcp_storage_len(nr_nodes, nr_cpus)
        } else {
            0
        };
        if pcp.len() < pcp_needed {
            return Err(InitError::PcpStorageTooSmall { needed: pcp_needed });
        }
        // Validate every node before touching any storage.
        let mut spans = [None; MAX_NUMNODES];
        for (nid, n) in nodes.iter().enumerate() {
            if n.distances.len() < nr_nodes {
                return Err(InitError::BadDistances);
            }
            let span = node_span(n.memory, cfg.max_order);
            if let Some((s, e)) = span {
                if e - s >= u64::from(u32::MAX) {
                    return Err(InitError::NodeTooLarge);
                }
                if n.memmap.len() < (e - s) as usize {
                    return Err(InitError::MemmapTooSmall {
                        node: nid,
                        needed: (e - s) as usize,
                    });
                }
                for (os, oe) in spans.iter().take(nid).flatten() {
                    {
                        if s < *oe && *os < e {
                            return Err(InitError::OverlappingNodes);
                        }
                    }
                }
            }
            spans[nid] = span;
        }
        // The highest populated zone type decides where ZONE_MOVABLE may start.
        let (dma_end, dma32_end) = (dma >> 12, dma32 >> 12);
        let bounds = [0, dma_end, dma32_end];
        let mut highest_start = 0;
        for n in nodes.iter() {
            for r in n.memory {
                let p = r.whole_pfns();
                if p.start < p.end {
                    let top = p.end - 1;
                    let zi = bounds.iter().rposition(|&b| top >= b).unwrap_or(0);
                    highest_start = highest_start.max(bounds[zi]);
                }
            }
        }
        let mems: [&[PhysRange]; MAX_NUMNODES] =
            core::array::from_fn(|i| nodes.get(i).map_or(&[][..], |n| n.memory));
        let movable = zone_movable_starts(&mems[..nr_nodes], &cfg, highest_start)?;

        // Validation done: build.
        let pcp_all: &'m [PerCpuPages] = init_slice(&mut pcp[..pcp_needed], |_| PerCpuPages::new());
        let mut built: [Option<Node<'m>>; MAX_NUMNODES] = core::array::from_fn(|_| None);
        for (nid, n) in nodes.iter_mut().enumerate() {
            let Some((start, end)) = spans[nid] else {
                continue;
            };
            let len = (end - start) as usize;
            let storage = core::mem::take(&mut n.memmap);
            let descs: &'m [PageDesc] = init_slice(&mut storage[..len], |_| PageDesc::new());
            let mm = Memmap { base: start, descs };
            for r in n.memory {
                for pfn in r.whole_pfns() {
                    mm.desc(pfn).set_flags(Flags::new(
                        PageState::Reserved,
                        0,
                        MigrateType::Unmovable,
                    ));
                }
            }
            let ms = movable[nid].unwrap_or(end).clamp(start, end);
            let lo_bounds = [0, dma_end, dma32_end, ms];
            let hi_bounds = [dma_end, dma32_end, u64::MAX, u64::MAX];
            let zones: [Zone<'m>; NR_ZONES] = core::array::from_fn(|zi| {
                let (lo, hi) = if zi == ZoneType::Movable.index() {
                    (ms, end)
                } else {
                    let lo = lo_bounds[zi].clamp(start, ms);
                    (lo, hi_bounds[zi].clamp(lo, ms))
                };
                let mut z = Zone::new(ZoneType::ALL[zi], nid, lo, hi);
                z.present = (lo..hi)
                    .filter(|&p| mm.desc(p).state() != PageState::Hole)
                    .count() as u64;
                if pcp_needed > 0 {
                    let base = (nid * NR_ZONES + zi) * nr_cpus;
                    z.pcp = &pcp_all[base..base + nr_cpus];
                }
                z
            });
            let mut distances = [u8::MAX; MAX_NUMNODES];
            distances[..nr_nodes].copy_from_slice(&n.distances[..nr_nodes]);
            built[nid] = Some(Node {
                mm,
                zones,
                fallback: [0; MAX_NUMNODES],
                distances,
            });
        }
        // Node fallback order: by distance, then id, self first.
        for (nid, slot) in built.iter_mut().enumerate().take(nr_nodes) {
            let Some(node) = slot.as_mut() else {
                continue;
            };
            let mut order: [u8; MAX_NUMNODES] = core::array::from_fn(|i| i as u8);
            let d = node.distances;
            order[..nr_nodes].sort_unstable_by_key(|&o| (o as usize != nid, d[o as usize], o));
            node.fallback = order;
        }
        Ok(Self {
            platform,
            cfg,
            nodes: built,
            nr_nodes,
            grouping: AtomicBool::new(cfg.mobility_grouping),
            pcp_enabled: pcp_needed > 0,
            mapper: None,
            low_hook: RwLock::new(None),
            cpu_nodes: &[],
        })
    }

    /// Use `mapper` to zero pages for `GfpFlags::ZERO` requests.
    pub fn set_mapper(&mut self, mapper: &'m dyn PhysMapper) {
        self.mapper = Some(mapper);
    }

    /// Say which node each CPU belongs to (`map[cpu]`); [`alloc_pages`](Self::alloc_pages)
    /// prefers the calling CPU's node. CPUs beyond the map, or mapped to a node that does
    /// not exist, use node 0.
    pub fn set_cpu_nodes(&mut self, map: &'m [u8]) {
        self.cpu_nodes = map;
    }

    /// The calling CPU's node.
    #[inline]
    pub fn local_node(&self) -> usize {
        if self.cpu_nodes.is_empty() {
            return 0;
        }
        let nid = self
            .cpu_nodes
            .get(self.platform.current_cpu())
            .map_or(0, |&n| usize::from(n));
        if self.nodes.get(nid).is_some_and(Option::is_some) {
            nid
        } else {
            0
        }
    }

    /// Register the low-watermark hook (replacing any previous one).
    pub fn set_low_watermark_hook(&self, hook: Option<LowWatermarkHook>) {
        *self.low_hook.write() = hook;
    }

    /// The platform (CPU ids, interrupt guard).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration in force.
    pub fn config(&self) -> &BuddyConfig {
        &self.cfg
    }

    /// Whether pages are grouped by mobility.
    pub fn mobility_grouping(&self) -> bool {
        self.grouping.load(Relaxed)
    }

    /// Switch grouping by mobility on or off (for comparisons; takes effect for later
    /// allocations).
    pub fn set_mobility_grouping(&self, on: bool) {
        self.grouping.store(on, Relaxed);
    }

    pub(crate) fn params(&self) -> Params {
        Params {
            max_order: self.cfg.max_order,
            pageblock_order: self.cfg.pageblock_order,
            grouping: self.grouping.load(Relaxed),
        }
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = (usize, &Node<'m>)> + Clone {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// The node and zone holding `pfn`.
    #[inline]
    pub(crate) fn locate(&self, pfn: u64) -> Option<(&Node<'m>, &Zone<'m>)> {
        for n in self.nodes.iter().flatten() {
            if n.mm.contains(pfn) {
                let z = n.zones.iter().find(|z| z.contains(pfn))?;
                return Some((n, z));
            }
        }
        None
    }

    pub(crate) fn lock<'a>(&'a self, node: &'a Node<'m>, zone: &'a Zone<'m>) -> ZoneLocked<'a, 'm> {
        ZoneLocked::lock(zone, node.mm, self.params())
    }

    /// Check that `[pfn, pfn + 2^order)` may be freed at boot; returns its node and zone.
    fn check_boot_block(
        &self,
        pfn: u64,
        order: u32,
    ) -> Result<(&Node<'m>, &Zone<'m>), BootFreeError> {
        if order > self.cfg.max_order {
            return Err(BootFreeError::OrderTooLarge);
        }
        if pfn & ((1u64 << order) - 1) != 0 {
            return Err(BootFreeError::Misaligned);
        }
        let (node, zone) = self.locate(pfn).ok_or(BootFreeError::OutsideZones)?;
        let end = pfn + (1u64 << order);
        if end > zone.end {
            return Err(BootFreeError::OutsideZones);
        }
        if let Some(bad) = (pfn..end).find(|&p| node.mm.desc(p).state() != PageState::Reserved) {
            return Err(BootFreeError::NotReserved { pfn: Pfn::new(bad) });
        }
        Ok((node, zone))
    }

    /// Give the boot-time free block `[pfn, pfn + 2^order)` to the allocator (Linux
    /// `__free_pages_core`): every frame must be present and still reserved, the block
    /// naturally aligned and inside one zone. Bypasses the per-CPU lists and merges.
    pub fn free_boot_block(&self, pfn: Pfn, order: Order) -> Result<(), BootFreeError> {
        let (pfn, order) = (pfn.as_u64(), order.get());
        let (node, zone) = self.check_boot_block(pfn, order)?;
        let mut z = self.lock(node, zone);
        // Re-check under the lock (another CPU may have freed part of it meanwhile).
        self.check_boot_block(pfn, order)?;
        for p in pfn + 1..pfn + (1u64 << order) {
            node.mm
                .desc(p)
                .set_flags(Flags::new(PageState::Tail, 0, MigrateType::Unmovable));
        }
        zone.managed.fetch_add(1u64 << order, Relaxed);
        let mt = z.pageblock_type(pfn);
        z.free_one_page(pfn, order, mt, true);
        Ok(())
    }

    /// Split the frames of `range` (partial frames ignored) into the largest naturally
    /// aligned blocks that stay inside one zone, as the boot allocator's hand-off does.
    fn boot_blocks(
        &self,
        range: PhysRange,
        mut f: impl FnMut(u64, u32) -> Result<(), BootFreeError>,
    ) -> Result<(), BootFreeError> {
        let r = range.whole_pfns();
        let (mut pfn, end) = (r.start, r.end);
        while pfn < end {
            let align = if pfn == 0 { 63 } else { pfn.trailing_zeros() };
            let fit = 63 - (end - pfn).leading_zeros();
            let mut order = align.min(fit).min(self.cfg.max_order);
            while order > 0 {
                match self.locate(pfn) {
                    Some((_, z)) if pfn + (1u64 << order) <= z.end => break,
                    _ => order -= 1,
                }
            }
            f(pfn, order)?;
            pfn += 1u64 << order;
        }
        Ok(())
    }

    /// Free the frames of `range` (partial frames ignored) in the largest naturally aligned
    /// blocks. Every block is checked first: on error nothing is freed. Returns the frames
    /// freed.
    pub fn free_boot_range(&self, range: PhysRange) -> Result<u64, BootFreeError> {
        self.boot_blocks(range, |pfn, order| {
            self.check_boot_block(pfn, order).map(|_| ())
        })?;
        let mut freed = 0;
        self.boot_blocks(range, |pfn, order| {
            freed += 1u64 << order;
            self.free_boot_block(Pfn::new(pfn), Order::new(order))
        })?;
        Ok(freed)
    }

    /// End of boot: compute watermarks, lowmem reserve and per-CPU sizes, and switch
    /// grouping by mobility off when memory is smaller than one pageblock per migrate type
    /// (Linux `build_all_zonelists`). Call again after changing memory or tunables.
    pub fn finish_boot(&self) {
        let total: u64 = self.total_managed();
        let min_for_grouping =
            (1u64 << self.cfg.pageblock_order) * crate::migrate::NR_MIGRATE_TYPES as u64;
        if total < min_for_grouping {
            self.grouping.store(false, Relaxed);
        }
        crate::watermark::setup_zones(
            self.nodes().map(|(_, n)| &n.zones),
            self.cfg.min_free_kbytes,
            self.cfg.watermark_scale_factor,
            &self.cfg.lowmem_reserve_ratio,
            self.platform.nr_cpus(),
        );
    }

    /// Frames given to the allocator, over all zones.
    pub fn total_managed(&self) -> u64 {
        self.nodes()
            .flat_map(|(_, n)| n.zones.iter())
            .map(|z| z.managed.load(Relaxed))
            .sum()
    }

    /// Frames on the zones' free lists (excluding per-CPU lists), over all zones.
    pub fn total_free(&self) -> u64 {
        self.nodes()
            .flat_map(|(_, n)| n.zones.iter())
            .map(|z| z.free_pages.load(Relaxed))
            .sum()
    }

    /// Number of nodes.
    pub fn nr_nodes(&self) -> usize {
        self.nr_nodes
    }

    /// Statistics of one zone, or `None` if the node or zone does not exist (empty span).
    pub fn zone_stats(&self, node: usize, zone: ZoneType) -> Option<ZoneStats> {
        let n = self.nodes.get(node)?.as_ref()?;
        let z = &n.zones[zone.index()];
        if z.spanned() == 0 {
            return None;
        }
        let fa = z.free.lock();
        let mut free_blocks =
            [[0u64; crate::migrate::NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1];
        free_blocks.copy_from_slice(&fa.counts);
        Some(ZoneStats {
            start_pfn: Pfn::new(z.start),
            spanned: z.spanned(),
            present: z.present,
            managed: z.managed.load(Relaxed),
            free: z.free_pages.load(Relaxed),
            min: z.wmark[0].load(Relaxed),
            low: z.wmark[1].load(Relaxed),
            high: z.wmark[2].load(Relaxed),
            protection: core::array::from_fn(|j| z.lowmem_reserve[j].load(Relaxed)),
            reserved_highatomic: fa.nr_reserved_highatomic,
            pcp_batch: z.pcp_batch.load(Relaxed),
            pcp_high: z.pcp_high.load(Relaxed),
            free_blocks,
        })
    }
}

/// A snapshot of one zone's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneStats {
    /// First frame of the span.
    pub start_pfn: Pfn,
    /// Frames spanned.
    pub spanned: u64,
    /// Frames of memory in the span.
    pub present: u64,
    /// Frames handed to the allocator.
    pub managed: u64,
    /// Frames on the free lists.
    pub free: u64,
    /// Min watermark (frames).
    pub min: u64,
    /// Low watermark.
    pub low: u64,
    /// High watermark.
    pub high: u64,
    /// Lowmem reserve against allocations whose highest zone is each zone type.
    pub protection: [u64; NR_ZONES],
    /// Frames in high-atomic pageblocks.
    pub reserved_highatomic: u64,
    /// Per-CPU batch.
    pub pcp_batch: u32,
    /// Per-CPU high mark.
    pub pcp_high: u32,
    /// Free blocks per order per migrate type.
    pub free_blocks: [[u64; crate::migrate::NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
}
