//! The allocator object: nodes, their zones, construction from caller storage, and the boot
//! path that brings memory in.
//!
//! ## Construction and boot
//! 1. [`BuddyAllocator::init_in`] (or [`BuddyAllocator::new`]) takes each node's memory ranges and memmap storage, marks every
//!    present frame [`Reserved`](crate::PageState::Reserved) (and the rest of the span as
//!    holes), sizes ZONE_MOVABLE and cuts each node into zones. With
//!    [`deferred_init`](crate::BuddyConfig::deferred_init) only each node's first part is
//!    marked; the descriptors past it are left unwritten (`deferred.rs`).
//! 2. The boot allocator's hand-off frees every free range with
//!    [`free_boot_block`](BuddyAllocator::free_boot_block) (Linux `__free_pages_core`):
//!    this bypasses the per-CPU lists, adds to the zone's managed count and merges. Frames
//!    never freed stay reserved, which is what lets a bogus free be recognised. Blocks past
//!    a deferred boundary are recorded and freed when the boundary passes them.
//! 3. [`finish_boot`](BuddyAllocator::finish_boot) computes watermarks, lowmem reserve and
//!    per-CPU sizes, and switches mobility grouping off on tiny memory.
//!
//! ## Zonelists
//! An allocation preferring node `n` with highest zone `z` tries zones `z, z-1, .., DMA` of
//! `n`, then of the other nodes by increasing distance (Linux's node-ordered zonelist).

use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use mmkit_addr::{IrqControl, IrqGuard, Order, Pfn, PhysMapper, PhysRange};
use spin::mutex::SpinMutex;
use spin::RwLock;

use crate::compaction::CompactState;
use crate::config::{
    memmap_len, node_span, pcp_storage_len, present_sections, section_shift, BuddyConfig, NodeInit,
};
use crate::deferred::{Deferred, Run, DEFERRED_RUNS};
use crate::error::{BootFreeError, InitError};
use crate::freearea::{Params, ZoneLocked};
use crate::migrate::MigrateType;
use crate::movable::zone_movable_starts;
use crate::mover::{MigrateCounters, MigrationObserver, Mover, MAX_MOVERS};
use crate::page::{Flags, Memmap, PageDesc, PageState};
use crate::pcp::PerCpuPages;
use crate::raw::{
    init_allocator_in, init_by_value, init_slice, AllocatorHead, NodeHead, SectionMap,
};
use crate::zone::{Zone, ZoneType, NR_ZONES};
use crate::{MAX_NUMNODES, MAX_ORDER_LIMIT};

/// A zone lock held inside an interrupts-off section. Fields drop in declaration order, so
/// the lock goes before interrupts come back.
pub(crate) struct ZoneLockedIrq<'a, 'm, P: IrqControl> {
    z: ZoneLocked<'a, 'm>,
    _irq: IrqGuard<'a, P>,
}

impl<'a, 'm, P: IrqControl> Deref for ZoneLockedIrq<'a, 'm, P> {
    type Target = ZoneLocked<'a, 'm>;
    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.z
    }
}

impl<P: IrqControl> DerefMut for ZoneLockedIrq<'_, '_, P> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.z
    }
}

/// Called (without any allocator lock held) when an allocation finds a zone below its low
/// watermark: where Linux wakes kswapd. Arguments: node id and zone.
pub type LowWatermarkHook = fn(node: usize, zone: ZoneType);

pub(crate) struct Node<'m> {
    /// Whether the node has memory. Absent nodes (ids at or above the node count, or nodes
    /// without whole frames) have an empty memmap and empty zones, so every node slot is
    /// initialised and the array can be built in place without an `Option` discriminant.
    pub present: bool,
    pub mm: Memmap<'m>,
    /// What the memmap's deferred part holds (`deferred.rs`); empty when none is deferred.
    pub deferred: SpinMutex<Deferred>,
    pub zones: [Zone<'m>; NR_ZONES],
    /// Other nodes by increasing distance (this node first).
    pub fallback: [u8; MAX_NUMNODES],
    pub distances: [u8; MAX_NUMNODES],
}

/// The buddy page allocator. `Sync`: use it from every CPU through `&self`.
///
/// About 45 KiB (eight nodes of four zones, each zone's free lists for every order up to
/// [`MAX_ORDER_LIMIT`]); build it where it will live with [`init_in`](Self::init_in), whose
/// own stack use is a few KiB (see its docs), rather than with [`new`](Self::new), which
/// returns it by value.
pub struct BuddyAllocator<'m, P: IrqControl> {
    pub(crate) platform: P,
    pub(crate) cfg: BuddyConfig,
    pub(crate) nodes: [Node<'m>; MAX_NUMNODES],
    pub(crate) nr_nodes: usize,
    pub(crate) grouping: AtomicBool,
    pub(crate) pcp_enabled: bool,
    pub(crate) mapper: Option<&'m dyn PhysMapper>,
    pub(crate) low_hook: RwLock<Option<LowWatermarkHook>>,
    /// Node of each CPU (empty: every CPU is on node 0).
    pub(crate) cpu_nodes: &'m [u8],
    /// Registered movers; id `i + 1` is slot `i`.
    pub(crate) movers: RwLock<[Option<&'m dyn Mover>; MAX_MOVERS]>,
    pub(crate) migration_observer: RwLock<Option<&'m dyn MigrationObserver>>,
    /// Told about the frames each deferred growth frees (`deferred.rs`).
    pub(crate) deferred_observer: RwLock<Option<&'m dyn crate::deferred::DeferredObserver>>,
    pub(crate) migrate_counters: MigrateCounters,
    pub(crate) compact_counters: CompactState,
}

impl<'m, P: IrqControl> core::fmt::Debug for BuddyAllocator<'m, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("nr_nodes", &self.nr_nodes)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Node `memory`'s deferred boundary for `span` under `cfg.deferred_init` (`deferred.rs`):
/// the first `frames` frames rounded up to a max-order block, raised until at most
/// [`DEFERRED_RUNS`] memory ranges lie past it; the span's end when nothing is deferred.
fn deferred_boundary(memory: &[PhysRange], (start, end): (u64, u64), cfg: &BuddyConfig) -> u64 {
    let Some(frames) = cfg.deferred_init else {
        return end;
    };
    let max_pages = 1u64 << cfg.max_order;
    let round = |p: u64| p.div_ceil(max_pages).saturating_mul(max_pages).min(end);
    let mut b = round(start.saturating_add(frames));
    loop {
        let past = memory
            .iter()
            .map(|r| r.whole_pfns())
            .filter(|f| f.start < f.end && f.end > b);
        if past.clone().count() <= DEFERRED_RUNS {
            return b;
        }
        // Raise the boundary past the lowest range that reaches beyond it.
        let lowest = past.map(|f| f.end).min().unwrap_or(end);
        b = round(lowest);
    }
}

/// What validation of the construction arguments found, before anything is written.
struct Plan {
    spans: [Option<(u64, u64)>; MAX_NUMNODES],
    /// Per node, the first frame whose descriptor is deferred (the span's end if none).
    boundaries: [u64; MAX_NUMNODES],
    movable: [Option<u64>; MAX_NUMNODES],
    dma_end: u64,
    dma32_end: u64,
    nr_cpus: usize,
    pcp_needed: usize,
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Build the allocator by value over `nodes` (ids are slice positions) with per-CPU
    /// storage `pcp` of at least [`pcp_storage_len`] entries (may be empty when
    /// `per_cpu_lists` is off). Every present frame starts reserved; memory enters with
    /// [`free_boot_block`](Self::free_boot_block).
    ///
    /// A convenience over [`init_in`](Self::init_in): the ~45 KiB value is built in a stack
    /// slot and moved to the caller, so this needs about three times that much stack (less
    /// when the compiler elides the moves). On a small boot stack use `init_in`.
    pub fn new(
        platform: P,
        cfg: BuddyConfig,
        nodes: &mut [NodeInit<'m, '_>],
        pcp: &'m mut [MaybeUninit<PerCpuPages>],
    ) -> Result<Self, InitError> {
        init_by_value(|slot| Self::init_in(slot, platform, cfg, nodes, pcp))
    }

    /// Build the allocator in `slot` (a `static`, or memory from the boot allocator) and
    /// return it there; arguments as for [`new`](Self::new). On error nothing is written:
    /// neither `slot` nor any memmap or per-CPU storage. Like any `MaybeUninit`, the slot
    /// never drops what it holds (for a kernel's allocator, which lives forever, that is
    /// what is wanted); `MaybeUninit::assume_init_drop` drops it, releasing the platform.
    ///
    /// The large arrays (nodes, zones, free lists) are written field by field straight into
    /// `slot`; the largest temporary is one zone (about 1 KiB). The test
    /// `init_in_fits_a_small_boot_stack` runs construction on a thread with a 16 KiB stack
    /// (debug build); measured by stack painting (crate README) it uses about 6 KiB in a
    /// release build and 12 KiB in a debug build, against ~100 KiB for a debug-build `new`.
    ///
    /// ```
    /// use core::mem::MaybeUninit;
    /// use mmkit_addr::{host::HostPlatform, PhysAddr, PhysRange};
    /// use mmkit_buddy::*;
    ///
    /// let ram = [PhysRange::from_start_size(PhysAddr::new(0), 32 << 20).unwrap()];
    /// let cfg = BuddyConfig::default();
    /// let memmap = Vec::leak((0..memmap_len(&ram, 10)).map(|_| MaybeUninit::uninit()).collect());
    /// let pcp = Vec::leak((0..pcp_storage_len(1, 1)).map(|_| MaybeUninit::uninit()).collect());
    /// let mut nodes = [NodeInit { memory: &ram, distances: &[10], memmap }];
    /// // In a kernel: a `static mut` slot or one carved from bootmem.
    /// let slot = Box::leak(Box::new(MaybeUninit::uninit()));
    /// let buddy = BuddyAllocator::init_in(slot, HostPlatform::new(1), cfg, &mut nodes, pcp)
    ///     .unwrap();
    /// buddy.free_boot_range(ram[0]).unwrap();
    /// buddy.finish_boot();
    /// buddy.verify().unwrap();
    /// ```
    pub fn init_in<'s>(
        slot: &'s mut MaybeUninit<Self>,
        platform: P,
        cfg: BuddyConfig,
        nodes: &mut [NodeInit<'m, '_>],
        pcp: &'m mut [MaybeUninit<PerCpuPages>],
    ) -> Result<&'s mut Self, InitError> {
        let plan = Self::validate(&platform, &cfg, nodes, pcp.len())?;
        let nr_nodes = nodes.len();

        // Validation done: initialise the caller's storage, then the allocator in place.
        let pcp_all: &'m [PerCpuPages] =
            init_slice(&mut pcp[..plan.pcp_needed], |_| PerCpuPages::new());
        let mut mms: [Option<Memmap<'m>>; MAX_NUMNODES] = [const { None }; MAX_NUMNODES];
        for (nid, n) in nodes.iter_mut().enumerate() {
            let Some((start, end)) = plan.spans[nid] else {
                continue;
            };
            let boundary = plan.boundaries[nid];
            let storage = core::mem::take(&mut n.memmap);
            let shift = section_shift(cfg.max_order);
            let mm = Memmap {
                base: start,
                span: end - start,
                map: SectionMap::new_in_one(
                    storage,
                    ((end - start) >> shift) as usize,
                    1 + present_sections(n.memory, shift)
                        .map(|(a, b)| (b - a) as usize)
                        .sum::<usize>(),
                    shift,
                    |_| PageDesc::shared_hole(),
                ),
                init: AtomicU64::new(0),
            };
            // Only the sections below the boundary that hold memory get descriptors now.
            for (a, b) in present_sections(n.memory, shift) {
                let (a, b) = (a << shift, (b << shift).min(boundary));
                let mut sec = a;
                while sec < b {
                    let index = ((sec - start) >> shift) as usize;
                    let whole = n.memory.iter().any(|r| {
                        let f = r.whole_pfns();
                        f.start <= sec && sec + (1 << shift) <= f.end
                    });
                    if whole {
                        // The common case: one template, wide stores.
                        mm.init_section(index, |_| PageDesc::with_state(PageState::Reserved));
                        sec += 1 << shift;
                        continue;
                    }
                    mm.init_section(index, |i| {
                        let pfn = sec + i as u64;
                        let present = n.memory.iter().any(|r| {
                            let f = r.whole_pfns();
                            f.start <= pfn && pfn < f.end
                        });
                        PageDesc::with_state(if present {
                            PageState::Reserved
                        } else {
                            PageState::Hole
                        })
                    });
                    sec += 1 << shift;
                }
            }
            mm.set_end(boundary);
            mms[nid] = Some(mm);
        }
        let head = AllocatorHead {
            platform,
            cfg,
            nr_nodes,
            pcp_enabled: plan.pcp_needed > 0,
        };
        let node_head = |nid: usize| {
            let mut distances = [u8::MAX; MAX_NUMNODES];
            if let Some(n) = nodes.get(nid) {
                distances[..nr_nodes].copy_from_slice(&n.distances[..nr_nodes]);
            }
            // Node fallback order: by distance, then id, self first.
            let mut fallback: [u8; MAX_NUMNODES] = core::array::from_fn(|i| i as u8);
            fallback[..nr_nodes]
                .sort_unstable_by_key(|&o| (o as usize != nid, distances[o as usize], o));
            // Memory past the deferred boundary, sorted (validated disjoint; at most
            // `DEFERRED_RUNS` ranges, which `deferred_boundary` saw to).
            let mut deferred = Deferred::new();
            let boundary = plan.boundaries[nid];
            for r in nodes.get(nid).map_or(&[][..], |n| n.memory) {
                let f = r.whole_pfns();
                if f.end > boundary && f.start < f.end && deferred.nr_present < DEFERRED_RUNS {
                    deferred.present[deferred.nr_present] = Run {
                        start: f.start.max(boundary),
                        end: f.end,
                    };
                    deferred.nr_present += 1;
                }
            }
            deferred.present[..deferred.nr_present].sort_unstable_by_key(|r| r.start);
            NodeHead {
                present: plan.spans[nid].is_some(),
                mm: mms[nid].take().unwrap_or(Memmap::empty()),
                deferred,
                fallback,
                distances,
            }
        };
        let zone = |nid: usize, ty: ZoneType| {
            let zi = ty.index();
            let Some((start, end)) = plan.spans[nid] else {
                return Zone::new(ty, nid, 0, 0);
            };
            let ms = plan.movable[nid].unwrap_or(end).clamp(start, end);
            let lo_bounds = [0, plan.dma_end, plan.dma32_end, ms];
            let hi_bounds = [plan.dma_end, plan.dma32_end, u64::MAX, u64::MAX];
            let (lo, hi) = if ty == ZoneType::Movable {
                (ms, end)
            } else {
                let lo = lo_bounds[zi].clamp(start, ms);
                (lo, hi_bounds[zi].clamp(lo, ms))
            };
            let mut z = Zone::new(ty, nid, lo, hi);
            z.set_tally_range(cfg.pageblock_order);
            // Present frames: the node's memory ranges (disjoint, validated) inside the zone.
            z.present = nodes[nid]
                .memory
                .iter()
                .map(|r| {
                    let f = r.whole_pfns();
                    f.end.min(hi).saturating_sub(f.start.max(lo))
                })
                .sum();
            if plan.pcp_needed > 0 {
                let base = (nid * NR_ZONES + zi) * plan.nr_cpus;
                z.pcp = &pcp_all[base..base + plan.nr_cpus];
            }
            z
        };
        Ok(init_allocator_in(slot, head, node_head, zone))
    }

    /// Check every construction argument; touches nothing.
    fn validate(
        platform: &P,
        cfg: &BuddyConfig,
        nodes: &[NodeInit<'m, '_>],
        pcp_len: usize,
    ) -> Result<Plan, InitError> {
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
        if pcp_len < pcp_needed {
            return Err(InitError::PcpStorageTooSmall { needed: pcp_needed });
        }
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
                let needed = memmap_len(n.memory, cfg.max_order);
                if n.memmap.len() < needed {
                    return Err(InitError::MemmapTooSmall { node: nid, needed });
                }
                for (os, oe) in spans.iter().take(nid).flatten() {
                    if s < *oe && *os < e {
                        return Err(InitError::OverlappingNodes);
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
        let movable = zone_movable_starts(&mems[..nr_nodes], cfg, highest_start)?;
        let mut boundaries = [0; MAX_NUMNODES];
        for (nid, n) in nodes.iter().enumerate() {
            if let Some(span) = spans[nid] {
                boundaries[nid] = deferred_boundary(n.memory, span, cfg);
            }
        }
        Ok(Plan {
            spans,
            boundaries,
            movable,
            dma_end,
            dma32_end,
            nr_cpus,
            pcp_needed,
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
        self.cpu_node(self.platform.current_cpu())
    }

    /// The node of CPU `cpu` (Linux `cpu_to_node`): what [`set_cpu_nodes`](Self::set_cpu_nodes)
    /// said, or 0 for CPUs it did not cover and nodes without memory.
    #[inline]
    pub fn cpu_node(&self, cpu: usize) -> usize {
        let nid = self.cpu_nodes.get(cpu).map_or(0, |&n| usize::from(n));
        if nid == 0 || self.node(nid).is_some() {
            nid
        } else {
            0
        }
    }

    /// The node whose memmap covers `pfn` (Linux `pfn_to_nid`), or `None` for a frame no node
    /// has. A frame whose descriptor is still deferred belongs to its node too.
    pub fn pfn_node(&self, pfn: Pfn) -> Option<usize> {
        self.nodes[..self.nr_nodes]
            .iter()
            .position(|n| n.mm.spans(pfn.as_u64()))
    }

    /// Whether `pfn`'s descriptor is initialised (Linux `pfn_valid` plus, with deferred
    /// initialisation, "not past the node's boundary"): `false` for frames no node spans
    /// and for frames still deferred.
    pub fn pfn_initialised(&self, pfn: Pfn) -> bool {
        self.nodes[..self.nr_nodes]
            .iter()
            .any(|n| n.mm.contains(pfn.as_u64()))
    }

    /// Whether `pfn` is a frame of memory with an initialised descriptor of its own (Linux
    /// `pfn_valid` on a sparse memmap, plus "not still deferred"): `false` for frames no
    /// node spans, for holes (whole hole sections have no descriptors at all), and for
    /// frames past a node's deferred boundary.
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        let p = pfn.as_u64();
        self.nodes[..self.nr_nodes]
            .iter()
            .any(|n| n.mm.contains(p) && n.mm.has_own_desc(p) && !n.mm.desc(p).is(PageState::Hole))
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
        self.nodes[..self.nr_nodes]
            .iter()
            .enumerate()
            .filter(|(_, n)| n.present)
    }

    /// Node `nid`, if it exists and has memory.
    #[inline]
    pub(crate) fn node(&self, nid: usize) -> Option<&Node<'m>> {
        self.nodes[..self.nr_nodes].get(nid).filter(|n| n.present)
    }

    /// The node and zone holding `pfn`, if its descriptor is initialised (a frame past a
    /// node's deferred boundary is in no zone for every path that reads descriptors).
    #[inline]
    pub(crate) fn locate(&self, pfn: u64) -> Option<(&Node<'m>, &Zone<'m>)> {
        self.locate_span(pfn).filter(|(n, _)| n.mm.contains(pfn))
    }

    /// The node and zone whose span holds `pfn`, initialised or not.
    #[inline]
    pub(crate) fn locate_span(&self, pfn: u64) -> Option<(&Node<'m>, &Zone<'m>)> {
        // Absent nodes have an empty memmap, so they span no frame.
        for n in &self.nodes[..self.nr_nodes] {
            if n.mm.spans(pfn) {
                let z = n.zones.iter().find(|z| z.contains(pfn))?;
                return Some((n, z));
            }
        }
        None
    }

    /// Take `zone`'s lock with local interrupts off (Linux `spin_lock_irqsave(&zone->lock)`):
    /// an interrupt handler that allocates cannot then spin on a lock its own CPU holds.
    #[inline]
    pub(crate) fn lock<'a>(
        &'a self,
        node: &'a Node<'m>,
        zone: &'a Zone<'m>,
    ) -> ZoneLockedIrq<'a, 'm, P> {
        let irq = self.platform.irq_save();
        ZoneLockedIrq {
            z: ZoneLocked::lock(zone, &node.mm, self.params()),
            _irq: irq,
        }
    }

    /// Check that `[pfn, pfn + 2^order)` is a block that may be freed at boot (order,
    /// alignment, one zone; the frames' states are `check_reserved`'s); returns its node and
    /// zone. The block may lie past the node's deferred boundary.
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
        let (node, zone) = self.locate_span(pfn).ok_or(BootFreeError::OutsideZones)?;
        let end = pfn + (1u64 << order);
        if end > zone.end {
            return Err(BootFreeError::OutsideZones);
        }
        Ok((node, zone))
    }

    /// That every frame of `[pfn, pfn + 2^order)` is still reserved: by its descriptors
    /// below the deferred boundary, by the deferred record past it (the block, aligned and
    /// at most max order, lies wholly on one side: the boundary is max-order aligned).
    fn check_reserved(&self, node: &Node<'m>, pfn: u64, order: u32) -> Result<(), BootFreeError> {
        if !node.mm.contains(pfn) && self.defer_boot_block(node, pfn, order, true)? {
            return Ok(());
        }
        Self::check_reserved_descs(node, pfn, order)
    }

    /// `check_reserved` for a block below the deferred boundary (takes no lock).
    fn check_reserved_descs(node: &Node<'m>, pfn: u64, order: u32) -> Result<(), BootFreeError> {
        match node
            .mm
            .descs(pfn, 1u64 << order)
            .iter()
            .position(|d| !d.is(PageState::Reserved))
        {
            Some(i) => Err(BootFreeError::NotReserved {
                pfn: Pfn::new(pfn + i as u64),
            }),
            None => Ok(()),
        }
    }

    /// Give the boot-time free block `[pfn, pfn + 2^order)` to the allocator (Linux
    /// `__free_pages_core`): every frame must be present and still reserved, the block
    /// naturally aligned and inside one zone. Bypasses the per-CPU lists and merges. A block
    /// past its node's deferred boundary is only recorded, and freed when the boundary
    /// passes it (`deferred.rs`).
    pub fn free_boot_block(&self, pfn: Pfn, order: Order) -> Result<(), BootFreeError> {
        let (pfn, order) = (pfn.as_u64(), order.get());
        let (node, zone) = self.check_boot_block(pfn, order)?;
        if !node.mm.contains(pfn) && self.defer_boot_block(node, pfn, order, false)? {
            return Ok(());
        }
        let mut z = self.lock(node, zone);
        // Checked under the lock: another CPU may be freeing part of it. The block is below
        // the boundary (which only rises), so no deferred lock is taken under the zone lock.
        Self::check_reserved_descs(node, pfn, order)?;
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        for d in &node.mm.descs(pfn, 1u64 << order)[1..] {
            d.set_flags(tail);
        }
        zone.managed.fetch_add(1u64 << order, Relaxed);
        let mt = z.pageblock_type(pfn);
        z.free_one_page(pfn, order, mt, true);
        Ok(())
    }

    /// Give the boot allocator's run of `count` consecutive blocks of `order` from `pfn` to
    /// the allocator: what [`free_boot_block`](Self::free_boot_block) does for each, but a
    /// stretch past a node's deferred boundary is checked and recorded at once, so a
    /// deferred hand-off costs O(runs), not O(blocks). Frees in address order and stops at
    /// the first refused block (the blocks before it stay freed, as with one
    /// `free_boot_block` call per block). Returns the frames given.
    pub fn free_boot_run(&self, pfn: Pfn, order: Order, count: u64) -> Result<u64, BootFreeError> {
        let (start, o) = (pfn.as_u64(), order.get());
        if o > self.cfg.max_order {
            return Err(BootFreeError::OrderTooLarge);
        }
        if start & ((1u64 << o) - 1) != 0 {
            return Err(BootFreeError::Misaligned);
        }
        let end = count
            .checked_mul(1u64 << o)
            .and_then(|n| start.checked_add(n))
            .ok_or(BootFreeError::OutsideZones)?;
        let mut cur = start;
        while cur < end {
            if let Some((node, _)) = self.locate_span(cur) {
                // Blocks are aligned and the boundary is a max-order multiple, so the rest
                // of the run inside this node's span is past the boundary too.
                let stop = end.min(node.mm.span_end());
                if !node.mm.contains(cur) && self.defer_boot_frames(node, cur, stop, false)? {
                    cur = stop;
                    continue;
                }
            }
            self.free_boot_block(Pfn::new(cur), order)?;
            cur += 1u64 << o;
        }
        Ok(end - start)
    }

    /// The largest naturally aligned block at `pfn` that ends by `end` and stays inside one
    /// zone, as the boot allocator's hand-off cuts ranges.
    pub(crate) fn boot_order(&self, pfn: u64, end: u64) -> u32 {
        let align = if pfn == 0 { 63 } else { pfn.trailing_zeros() };
        let fit = 63 - (end - pfn).leading_zeros();
        let mut order = align.min(fit).min(self.cfg.max_order);
        while order > 0 {
            match self.locate_span(pfn) {
                Some((_, z)) if pfn + (1u64 << order) <= z.end => break,
                _ => order -= 1,
            }
        }
        order
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
            let order = self.boot_order(pfn, end);
            f(pfn, order)?;
            pfn += 1u64 << order;
        }
        Ok(())
    }

    /// Free the frames of `range` (partial frames ignored) in the largest naturally aligned
    /// blocks. Every block is checked first: on error nothing is freed. Returns the frames
    /// freed (recorded, for frames past a deferred boundary).
    pub fn free_boot_range(&self, range: PhysRange) -> Result<u64, BootFreeError> {
        self.boot_blocks(range, |pfn, order| {
            let (node, _) = self.check_boot_block(pfn, order)?;
            self.check_reserved(node, pfn, order)
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
        let n = self.node(node)?;
        let z = &n.zones[zone.index()];
        if z.spanned() == 0 {
            return None;
        }
        let fa = z.free.lock();
        let free_blocks = fa.counts.map(|per_type| per_type.map(u64::from));
        Some(ZoneStats {
            start_pfn: Pfn::new(z.start),
            spanned: z.spanned(),
            present: z.present,
            managed: z.managed.load(Relaxed),
            deferred: self.deferred_present(node, zone),
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
    /// Present frames whose descriptors are still deferred (`deferred.rs`): they join
    /// `managed`, as far as the boot hand-off gave them, when initialised.
    pub deferred: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mib, TestBuddy};
    use crate::{memmap_len, GfpFlags};
    use mmkit_addr::host::HostPlatform;
    use mmkit_addr::PhysAddr;
    use std::boxed::Box;
    use std::vec::Vec;

    /// The smallest thread stack the host lets us ask for (glibc's `PTHREAD_STACK_MIN` on
    /// x86-64 and aarch64 rounds anything smaller up to this), a common kernel boot stack.
    /// Debug builds get 32 KiB: the sparse memmap's construction (section table, blocks
    /// written through a generic closure) takes unoptimised frames of a few KiB more; a
    /// release build fits in 8 KiB.
    const SMALL_STACK: usize = if cfg!(debug_assertions) { 32 } else { 16 } * 1024;

    fn leaked<T>(n: usize) -> &'static mut [MaybeUninit<T>] {
        Vec::leak((0..n).map(|_| MaybeUninit::uninit()).collect())
    }

    fn init_on_small_stack(ram: &'static [PhysRange], cfg: BuddyConfig) -> &'static TestBuddy {
        let slot: &'static mut MaybeUninit<TestBuddy> = Box::leak(Box::new(MaybeUninit::uninit()));
        let memmap = leaked(memmap_len(ram, cfg.max_order));
        let pcp = leaked(pcp_storage_len(1, 4));
        // An overflow hits the thread's guard page and kills the test process: the test
        // fails rather than passing silently.
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(move || {
                let mut nodes = [NodeInit {
                    memory: ram,
                    distances: &[10],
                    memmap,
                }];
                let b = BuddyAllocator::init_in(slot, HostPlatform::new(4), cfg, &mut nodes, pcp)
                    .unwrap();
                &*b
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn init_in_fits_a_small_boot_stack() {
        let ram: &'static [PhysRange] = Box::leak(Box::new([mib(0, 64), mib(4096, 16)]));
        let b = init_on_small_stack(ram, BuddyConfig::default());
        for r in ram {
            b.free_boot_range(*r).unwrap();
        }
        b.finish_boot();
        b.verify().unwrap();
        assert!(b.zone_stats(0, ZoneType::Dma).is_some());
        assert!(b.zone_stats(0, ZoneType::Normal).is_some());
        let p = b.alloc_pages(GfpFlags::KERNEL, Order::new(3)).unwrap();
        b.free_pages(p, Order::new(3)).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn init_in_rejects_bad_input_without_writing_storage() {
        let ram = [mib(0, 16)];
        let mut memmap = leaked::<PageDesc>(memmap_len(&ram, 10) - 1);
        let mut nodes = [NodeInit {
            memory: &ram,
            distances: &[10],
            memmap: core::mem::take(&mut memmap),
        }];
        let mut slot = Box::new(MaybeUninit::<TestBuddy>::uninit());
        let r = BuddyAllocator::init_in(
            &mut slot,
            HostPlatform::new(1),
            BuddyConfig::default(),
            &mut nodes,
            leaked(pcp_storage_len(1, 1)),
        );
        assert_eq!(
            r.err(),
            Some(InitError::MemmapTooSmall {
                node: 0,
                needed: 3 + 5 * 1024
            })
        );
        assert_eq!(nodes[0].memmap.len(), 2 + 5 * 1024, "storage not taken");
    }

    #[test]
    fn allocator_is_small_enough_to_build_in_place() {
        // Eight nodes of four zones; each zone's free lists and u32 counts for 16 orders and
        // six migrate types (CMA, the sixth, added about 6 KiB); each node's deferred-memmap
        // record (about 3 KiB in all).
        let size = core::mem::size_of::<TestBuddy>();
        assert!(size <= 46 * 1024, "BuddyAllocator is {size} bytes");
        let zone = core::mem::size_of::<Zone<'static>>();
        assert!(zone <= 1344, "Zone is {zone} bytes");
    }

    #[test]
    fn absent_nodes_hold_no_frames() {
        let b = crate::testutil::build(&[&[mib(16, 16)]], BuddyConfig::default(), 1);
        assert!(b.node(1).is_none());
        assert!(b.node(MAX_NUMNODES).is_none());
        assert!(b.locate(0).is_none());
        assert!(b.locate(16 * 256).is_some());
    }

    /// The zone lock is an interrupts-off section: a cross-CPU call (an interrupt on
    /// hardware) aimed at the holder's CPU runs only after the lock is gone, so a handler
    /// that allocates never spins on a zone lock its own CPU holds.
    #[test]
    fn zone_lock_keeps_interrupts_off_on_its_cpu() {
        use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let b = crate::testutil::build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let (node, zone) = b.locate(16 * 256).unwrap();
        let released = AtomicBool::new(false);
        let entered = AtomicBool::new(false);
        std::thread::scope(|s| {
            let z = b.lock(node, zone);
            let cpu = b.platform.irq_save().cpu();
            let (b, released, entered) = (&b, &released, &entered);
            let caller = s.spawn(move || {
                entered.store(true, SeqCst);
                assert!(b.platform.run_on_cpu(cpu, &|| {
                    assert!(released.load(SeqCst), "ran while the zone lock was held");
                }));
            });
            while !entered.load(SeqCst) {
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            released.store(true, SeqCst);
            drop(z);
            caller.join().unwrap();
        });
    }

    #[test]
    fn boot_frees_refuse_extreme_frames_and_ranges_unchanged() {
        use crate::testutil::{build_reserved, snapshot, EXTREME_PFNS};
        let b = build_reserved(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let before = snapshot(&b);
        for p in EXTREME_PFNS {
            for order in [0, 1, 10, 11, Order::LIMIT] {
                let got = b.free_boot_block(Pfn::new(p), Order::checked(order).unwrap());
                assert!(got.is_err(), "{p:#x} order {order}");
                assert_eq!(snapshot(&b), before, "{p:#x} order {order}");
            }
        }
        let r = |s: u64, l: u64| PhysRange::from_start_size(PhysAddr::new(s), l).unwrap();
        for range in [
            r(u64::MAX - 0x2fff, 0x2000),
            r(u64::MAX - 0x1000, 0x1000),
            r(u64::MAX - 1, 1),
            r(u64::MAX, 0),
            r(0, 0),
            r(0, u64::MAX),
            r(1, u64::MAX - 1),
            r(16 << 20, (16 << 20) + 4096),
            r((32 << 20) - 4096, 8192),
        ] {
            // A range without a whole frame frees nothing; any other reaches past the zone.
            let want = if range.whole_pfns().is_empty() {
                Ok(0)
            } else {
                Err(BootFreeError::OutsideZones)
            };
            assert_eq!(b.free_boot_range(range), want, "{range:?}");
            assert_eq!(snapshot(&b), before, "{range:?}");
        }
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn construction_refuses_nodes_at_the_top_of_memory() {
        let top = [PhysRange::from_start_size(PhysAddr::new(0), u64::MAX).unwrap()];
        let mut mm: [MaybeUninit<PageDesc>; 0] = [];
        let mut nodes = [NodeInit {
            memory: &top,
            distances: &[10],
            memmap: &mut mm,
        }];
        let cfg = BuddyConfig {
            per_cpu_lists: false,
            ..BuddyConfig::default()
        };
        let got = BuddyAllocator::new(HostPlatform::new(1), cfg, &mut nodes, &mut []);
        assert_eq!(got.err(), Some(InitError::NodeTooLarge));
        let cfg = BuddyConfig {
            dma_limit: PhysAddr::new(u64::MAX),
            ..cfg
        };
        let got = BuddyAllocator::new(HostPlatform::new(1), cfg, &mut nodes, &mut []);
        assert_eq!(got.err(), Some(InitError::BadZoneBoundary));
    }
}
