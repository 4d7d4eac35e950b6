//! Memory compaction (Linux `mm/compaction.c`) and the fragmentation indices
//! (`mm/vmstat.c`'s `extfrag` debugfs files).
//!
//! ## One pass over a zone ([`compact_zone`](BuddyAllocator::compact_zone))
//! * The per-CPU lists of the zone are drained first, so cached free pages can merge.
//! * A **migrate scanner** walks the zone's pageblocks upward from its start and migrates
//!   every allocated movable block that has a [mover](crate::Mover); a **free scanner** walks
//!   pageblocks downward from the zone's end and hands out targets: the first free block of
//!   at least the needed order in a movable pageblock, never a free block of a pageblock or
//!   more. It keeps one position per block order, so a pageblock without a big enough hole
//!   for one block is still searched for smaller ones.
//!   The pass ends when the scanners meet (so a target always lies above its source), or, for
//!   a target order, as soon as a free block of that order exists.
//! * A pageblock where the migrate scanner found allocated blocks but could move none
//!   (unmovable, reclaimable, movable without a mover, or busy) gets a **skip hint**, and
//!   later passes pass it by; a pass that ends with the scanners meeting clears every hint
//!   of the zone for the next one (Linux resets its skip bits the same way).
//! * Counters: Linux's `compact_migrate_scanned`, `compact_free_scanned`, `compact_success`,
//!   `compact_fail`, with `pgmigrate_success` / `pgmigrate_fail` from `mover.rs`.
//!
//! ## In the allocation path (`alloc.rs`, with [`BuddyConfig::compaction`](crate::BuddyConfig))
//! * An unmovable or reclaimable request that may block first allocates without stealing
//!   (Linux `ALLOC_NOFRAGMENT`); failing that, it **evacuates** a movable pageblock — the one
//!   with the fewest allocated pages among up to [`EVACUATE_CANDIDATES`] whose blocks all
//!   have movers — and claims it whole; failing that, it claims the movable pageblock with
//!   the most free pages, movable pages and all; only then does it steal pages as Linux
//!   would.
//! * A request of order > 0 that may block runs **direct compaction** (one pass to its
//!   order per zone of its zonelist) when the min-watermark pass fails, then retries.
//!
//! ## kcompactd ([`kcompactd_step`](BuddyAllocator::kcompactd_step))
//! The kernel runs the step from a per-node thread when
//! [`kcompactd_pending`](BuddyAllocator::kcompactd_pending) says so: a zone's watermark boost
//! was raised by a fallback into another type's pageblock (`fallback.rs`), or the node's
//! fragmentation score (share of free memory not in pageblock-sized blocks, weighted by zone
//! size) is above `min(100 - proactiveness + 10, 100)`. The step compacts the boosted zones
//! and those scoring above `max(100 - proactiveness, 5)`, then clears the boosts
//! (Linux's proactive compaction, 5.9, and watermark boosting, 5.0).
//!
//! ## Fragmentation indices ([`Extfrag`])
//! For a zone and an order: the *unusable free index* (share of free memory in blocks too
//! small for the order, 0..=1000) and the *fragmentation index* (Linux's: -1000 when a free
//! block of the order exists, else towards 0 when the failure is lack of memory and towards
//! 1000 when it is fragmentation).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use mmkit_addr::IrqControl;

use crate::alloc::Request;
use crate::allocator::{BuddyAllocator, Node};
use crate::error::CompactError;
use crate::migrate::MigrateType;
use crate::page::{Flags, PageDesc, PageState};
use crate::zone::{Watermark, Zone, ZoneType, HIGHATOMIC_MASK_SHIFT};

/// Compaction counters (Linux `/proc/vmstat`), summed over every pass, and the
/// proactiveness knob.
#[derive(Debug)]
pub(crate) struct CompactState {
    migrate_scanned: AtomicU64,
    free_scanned: AtomicU64,
    success: AtomicU64,
    fail: AtomicU64,
    stall: AtomicU64,
    evacuated: AtomicU64,
    partial_claims: AtomicU64,
    no_mover: AtomicU64,
    proactive: AtomicU64,
    /// `vm.compaction_proactiveness`, 0..=100.
    proactiveness: AtomicU32,
}

impl Default for CompactState {
    fn default() -> Self {
        Self {
            migrate_scanned: AtomicU64::new(0),
            free_scanned: AtomicU64::new(0),
            success: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            stall: AtomicU64::new(0),
            evacuated: AtomicU64::new(0),
            partial_claims: AtomicU64::new(0),
            no_mover: AtomicU64::new(0),
            proactive: AtomicU64::new(0),
            proactiveness: AtomicU32::new(DEFAULT_PROACTIVENESS),
        }
    }
}

/// Linux's default `vm.compaction_proactiveness`.
pub const DEFAULT_PROACTIVENESS: u32 = 20;

/// The order whose availability the fragmentation score measures (Linux
/// `COMPACTION_HPAGE_ORDER`: a pageblock, 2 MiB on x86-64).
fn hpage_order(pageblock_order: u32) -> u32 {
    pageblock_order
}

/// How many movable pageblocks [`evacuate_for`](BuddyAllocator::evacuate_for) examines
/// before it settles for the emptiest one seen.
const EVACUATE_CANDIDATES: usize = 64;

/// Compaction and migration counters, named as in Linux's `/proc/vmstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Frames the migrate scanners walked.
    pub compact_migrate_scanned: u64,
    /// Frames the free scanners walked.
    pub compact_free_scanned: u64,
    /// Passes that reached their target order.
    pub compact_success: u64,
    /// Passes with a target order that ended without it.
    pub compact_fail: u64,
    /// Allocations that ran direct compaction.
    pub compact_stall: u64,
    /// Movable pageblocks emptied for an unmovable or reclaimable request (mmkit's own
    /// counter; Linux steals instead).
    pub compact_evacuated: u64,
    /// Partly used movable pageblocks claimed whole for an unmovable or reclaimable request
    /// when none could be emptied (mmkit's own counter).
    pub compact_partial_claims: u64,
    /// Frames of movable blocks without a mover that migrate scanners passed (mmkit's own:
    /// memory that is movable by type only).
    pub compact_no_mover: u64,
    /// kcompactd steps that compacted (boosted zone or fragmentation score above the
    /// proactiveness mark); Linux's `compact_daemon_wake` counts wake-ups instead.
    pub compact_daemon_runs: u64,
    /// Blocks migrated.
    pub pgmigrate_success: u64,
    /// Migrations that failed (busy, refused, no target).
    pub pgmigrate_fail: u64,
}

impl core::fmt::Display for CompactStats {
    /// `/proc/vmstat` lines.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(f, "pgmigrate_success {}", self.pgmigrate_success)?;
        writeln!(f, "pgmigrate_fail {}", self.pgmigrate_fail)?;
        writeln!(
            f,
            "compact_migrate_scanned {}",
            self.compact_migrate_scanned
        )?;
        writeln!(f, "compact_free_scanned {}", self.compact_free_scanned)?;
        writeln!(f, "compact_stall {}", self.compact_stall)?;
        writeln!(f, "compact_fail {}", self.compact_fail)?;
        writeln!(f, "compact_success {}", self.compact_success)?;
        writeln!(f, "compact_evacuated {}", self.compact_evacuated)?;
        writeln!(f, "compact_partial_claims {}", self.compact_partial_claims)?;
        writeln!(f, "compact_no_mover {}", self.compact_no_mover)?;
        writeln!(f, "compact_daemon_runs {}", self.compact_daemon_runs)
    }
}

/// How a compaction pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactOutcome {
    /// A free block of the target order exists (perhaps before the pass started).
    Success,
    /// The scanners met: the zone is as compact as its movers allow.
    Complete,
    /// Not attempted: the zone lacks the free memory for the order even when compacted
    /// (Linux `compaction_suitable`: the min watermark plus twice the block).
    Skipped,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactResult {
    /// How it ended.
    pub outcome: CompactOutcome,
    /// Frames the migrate scanner walked.
    pub migrate_scanned: u64,
    /// Frames the free scanner walked.
    pub free_scanned: u64,
    /// Blocks migrated.
    pub migrated: u64,
    /// Migrations that failed.
    pub failed: u64,
    /// Frames of movable blocks the migrate scanner passed because they name no mover:
    /// movable by type only.
    pub no_mover: u64,
}

/// The fragmentation figures of one zone at one moment (debugfs `extfrag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extfrag {
    /// Free blocks per order (every list).
    pub free_blocks: [u64; crate::MAX_ORDER_LIMIT as usize + 1],
    /// Largest order with a list (`max_order`).
    pub max_order: u32,
}

impl Extfrag {
    fn free_pages(&self) -> u64 {
        self.free_blocks
            .iter()
            .enumerate()
            .map(|(o, &n)| n << o)
            .sum()
    }

    /// Free blocks of at least `order`, counted in blocks of `order`.
    fn suitable(&self, order: u32) -> u64 {
        self.free_blocks
            .iter()
            .enumerate()
            .skip(order as usize)
            .map(|(o, &n)| n << (o - order as usize))
            .sum()
    }

    /// Linux `unusable_free_index` × 1000: the share of free memory that cannot serve a
    /// request of `order` (0 when memory is empty).
    pub fn unusable_index(&self, order: u32) -> u64 {
        let free = self.free_pages();
        if free == 0 || order > self.max_order {
            return 0;
        }
        (free - (self.suitable(order) << order)) * 1000 / free
    }

    /// Linux `__fragmentation_index`: -1000 when a block of `order` is free; otherwise
    /// 0..=1000, towards 1000 when the free memory is there but in pieces (compaction can
    /// help) and towards 0 when it is not there at all (0 also for no free memory).
    pub fn fragmentation_index(&self, order: u32) -> i64 {
        let total: u64 = self.free_blocks.iter().sum();
        if total == 0 || order > self.max_order {
            return 0;
        }
        if self.suitable(order) > 0 {
            return -1000;
        }
        let requested = 1u64 << order;
        1000 - ((1000 + self.free_pages() * 1000 / requested) / total) as i64
    }
}

impl core::fmt::Display for Extfrag {
    /// One line: the index for each order, as debugfs `extfrag_index` prints them.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for o in 0..=self.max_order {
            let i = self.fragmentation_index(o);
            let sign = if i < 0 { "-" } else { "" };
            let sep = if o == 0 { "" } else { " " };
            write!(f, "{sep}{sign}{}.{:03}", i.abs() / 1000, i.abs() % 1000)?;
        }
        Ok(())
    }
}

/// Both debugfs `extfrag` files for every populated zone: `unusable_index` and
/// `extfrag_index` (one line per zone, one column per order, in thousandths as Linux
/// prints them: `0.250`, `-1.000`). From [`BuddyAllocator::extfrag_report`].
pub struct ExtfragReport<'a, 'm, P: IrqControl>(&'a BuddyAllocator<'m, P>);

impl<P: IrqControl> core::fmt::Display for ExtfragReport<'_, '_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0;
        for (title, unusable) in [("unusable_index", true), ("extfrag_index", false)] {
            writeln!(f, "{title}")?;
            for (nid, node) in b.nodes() {
                for z in node.zones.iter().filter(|z| z.is_populated()) {
                    let Ok(e) = b.extfrag(nid, z.ty) else {
                        continue;
                    };
                    write!(f, "Node {nid}, zone {:>8}", z.ty.name())?;
                    for o in 0..=e.max_order {
                        let v = if unusable {
                            e.unusable_index(o) as i64
                        } else {
                            e.fragmentation_index(o)
                        };
                        let sign = if v < 0 { "-" } else { "" };
                        write!(f, " {sign}{}.{:03}", v.abs() / 1000, v.abs() % 1000)?;
                    }
                    writeln!(f)?;
                }
            }
        }
        Ok(())
    }
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// The debugfs `extfrag` files (`unusable_index`, `extfrag_index`) for every zone.
    pub fn extfrag_report(&self) -> ExtfragReport<'_, 'm, P> {
        ExtfragReport(self)
    }

    fn zone_of(&self, nid: usize, ty: ZoneType) -> Result<(&Node<'m>, &Zone<'m>), CompactError> {
        let node = self.node(nid).ok_or(CompactError::NoSuchNode(nid))?;
        let zone = &node.zones[ty.index()];
        if !zone.is_populated() {
            return Err(CompactError::EmptyZone);
        }
        Ok((node, zone))
    }

    /// The fragmentation figures of zone `ty` of node `nid`.
    pub fn extfrag(&self, nid: usize, ty: ZoneType) -> Result<Extfrag, CompactError> {
        let (node, zone) = self.zone_of(nid, ty)?;
        let z = self.lock(node, zone);
        let mut free_blocks = [0; crate::MAX_ORDER_LIMIT as usize + 1];
        for (o, counts) in
            z.fa.counts
                .iter()
                .enumerate()
                .take(self.cfg.max_order as usize + 1)
        {
            free_blocks[o] = counts.iter().map(|&n| u64::from(n)).sum();
        }
        Ok(Extfrag {
            free_blocks,
            max_order: self.cfg.max_order,
        })
    }

    /// Compaction and migration counters.
    pub fn compact_stats(&self) -> CompactStats {
        let c = &self.compact_counters;
        let (ok, fail) = self.migrate_counts();
        CompactStats {
            compact_migrate_scanned: c.migrate_scanned.load(Relaxed),
            compact_free_scanned: c.free_scanned.load(Relaxed),
            compact_success: c.success.load(Relaxed),
            compact_fail: c.fail.load(Relaxed),
            compact_stall: c.stall.load(Relaxed),
            compact_evacuated: c.evacuated.load(Relaxed),
            compact_partial_claims: c.partial_claims.load(Relaxed),
            compact_no_mover: c.no_mover.load(Relaxed),
            compact_daemon_runs: c.proactive.load(Relaxed),
            pgmigrate_success: ok,
            pgmigrate_fail: fail,
        }
    }

    /// Whether `zone` has a free block of at least `order` on an unmovable, movable or
    /// reclaimable list.
    fn has_free_block(zone: &Zone<'m>, order: u32) -> bool {
        let usable = (1u32 << HIGHATOMIC_MASK_SHIFT) - 1;
        zone.free_order_mask.load(Relaxed) & usable & (u32::MAX << order) != 0
    }

    /// One compaction pass over zone `ty` of node `nid` (module docs). With `order`, stop as
    /// soon as a free block of that order exists; without, run until the scanners meet.
    pub fn compact_zone(
        &self,
        nid: usize,
        ty: ZoneType,
        order: Option<u32>,
    ) -> Result<CompactResult, CompactError> {
        if let Some(o) = order.filter(|&o| o > self.cfg.max_order) {
            return Err(CompactError::OrderTooLarge {
                order: o,
                max: self.cfg.max_order,
            });
        }
        let (node, zone) = self.zone_of(nid, ty)?;
        let mut r = CompactResult {
            outcome: CompactOutcome::Complete,
            migrate_scanned: 0,
            free_scanned: 0,
            migrated: 0,
            failed: 0,
            no_mover: 0,
        };
        self.drain_zone_pcp(node, zone);
        if let Some(o) = order {
            if Self::has_free_block(zone, o) {
                r.outcome = CompactOutcome::Success;
                return Ok(r);
            }
            let need = zone.wmark(Watermark::Min) + (2u64 << o);
            if zone.free_pages.load(Relaxed) < need {
                r.outcome = CompactOutcome::Skipped;
                return Ok(r);
            }
        }
        let pb = 1u64 << self.cfg.pageblock_order;
        let mut migrate_pb = zone.start.div_ceil(pb) * pb;
        // The free scanner's pageblock: the last whole pageblock of the zone.
        // The free scanner, one per block order: the pageblock it is in and the frame it
        // resumes from. A pageblock without a free block of order `o` is passed by the
        // order-`o` scanner only, so smaller blocks still find the holes it left behind.
        let top = ((zone.init_end(&node.mm) / pb) * pb).saturating_sub(pb);
        let mut free_scan = [(top, top); crate::MAX_ORDER_LIMIT as usize + 1];
        'scan: while migrate_pb < free_scan[0].0 {
            let hint = node.mm.desc(migrate_pb);
            if hint.skip_hint() {
                migrate_pb += pb;
                continue;
            }
            let (mut moved_here, mut stuck_here) = (0u64, 0u64);
            let end = migrate_pb + pb;
            let mut pfn = migrate_pb;
            while pfn < end {
                let d = node.mm.desc(pfn);
                let f = d.flags();
                let step = f.span();
                r.migrate_scanned += step.min(end - pfn);
                if f.state == PageState::Allocated && !d.is_migrating() {
                    if f.mt != MigrateType::Movable || d.mover_id() == 0 {
                        stuck_here += 1;
                        if f.mt == MigrateType::Movable {
                            r.no_mover += step;
                        }
                    } else if f.order >= self.cfg.pageblock_order {
                        // A block of a pageblock or more is already what compaction builds;
                        // its target would have to be a free pageblock, which the free
                        // scanner never takes.
                    } else {
                        let got = self.migrate_block_in(node, zone, pfn, f.order, |z, o| {
                            let (free_pb, cursor) = &mut free_scan[o as usize];
                            while *free_pb > migrate_pb {
                                let from = (*cursor).max(*free_pb);
                                let (t, next) = z.take_target_in_pageblock(*free_pb, from, o);
                                r.free_scanned += next - from;
                                *cursor = next;
                                if t.is_some() {
                                    return t;
                                }
                                *free_pb -= pb;
                                *cursor = *free_pb;
                            }
                            None
                        });
                        self.count_migration(&got);
                        match got {
                            Ok(_) => {
                                moved_here += 1;
                                r.migrated += 1;
                            }
                            Err(_) => {
                                stuck_here += 1;
                                r.failed += 1;
                                if free_scan[0].0 <= migrate_pb {
                                    break 'scan;
                                }
                            }
                        }
                        if order.is_some_and(|o| Self::has_free_block(zone, o)) {
                            r.outcome = CompactOutcome::Success;
                            break 'scan;
                        }
                    }
                }
                pfn += step;
            }
            if moved_here == 0 && stuck_here > 0 {
                hint.set_skip_hint(true);
            }
            migrate_pb += pb;
        }
        if r.outcome == CompactOutcome::Complete {
            // The zone was walked to the meeting point: rescan everything next time.
            let mut p = zone.start.div_ceil(pb) * pb;
            while p + pb <= zone.init_end(&node.mm) {
                node.mm.desc(p).set_skip_hint(false);
                p += pb;
            }
            if let Some(o) = order {
                if Self::has_free_block(zone, o) {
                    r.outcome = CompactOutcome::Success;
                }
            }
        }
        let c = &self.compact_counters;
        c.migrate_scanned.fetch_add(r.migrate_scanned, Relaxed);
        c.free_scanned.fetch_add(r.free_scanned, Relaxed);
        c.no_mover.fetch_add(r.no_mover, Relaxed);
        if order.is_some() {
            match r.outcome {
                CompactOutcome::Success => c.success.fetch_add(1, Relaxed),
                _ => c.fail.fetch_add(1, Relaxed),
            };
        }
        Ok(r)
    }

    /// Direct compaction for `req` (Linux `__alloc_pages_direct_compact`): one pass to the
    /// request's order over each populated zone of its zonelist until one succeeds.
    pub(crate) fn direct_compact(&self, req: &Request) -> bool {
        self.compact_counters.stall.fetch_add(1, Relaxed);
        for (_, z) in self.zonelist(req) {
            if !z.is_populated() {
                continue;
            }
            if let Ok(r) = self.compact_zone(z.node, z.ty, Some(req.order)) {
                if r.outcome == CompactOutcome::Success {
                    return true;
                }
            }
        }
        false
    }

    /// Empty one movable pageblock by migration so that an unmovable or reclaimable request
    /// can claim it whole instead of stealing pages from a movable pageblock. Tries the
    /// zones of the request's zonelist in order; in each, examines up to
    /// [`EVACUATE_CANDIDATES`] movable pageblocks whose blocks all have movers and takes the
    /// one with the fewest allocated pages. Returns whether a pageblock was emptied.
    pub(crate) fn evacuate_for(&self, req: &Request) -> bool {
        for (n, z) in self.zonelist(req) {
            if !z.is_populated() || z.ty == ZoneType::Movable {
                continue;
            }
            if let Some(pb) = self.pick_evacuation(n, z) {
                if self.migrate_out(n, z, pb, true).is_some() {
                    self.drain_zone_pcp(n, z);
                    self.compact_counters.evacuated.fetch_add(1, Relaxed);
                    return true;
                }
            }
        }
        false
    }

    /// Make room for an unmovable or reclaimable request inside pageblocks of its own type:
    /// find the pageblock of type `req.mt` holding the most movable pages that have movers
    /// (among the first [`EVACUATE_CANDIDATES`] such pageblocks of each zone of its zonelist)
    /// and migrate those pages out to movable pageblocks. Movable pages land in other types'
    /// pageblocks when small movable requests steal, and in partly claimed pageblocks; moving
    /// them out packs unmovable memory into the pageblocks it already has. Returns whether
    /// anything moved.
    pub(crate) fn tidy_for(&self, req: &Request) -> bool {
        let pages = 1u64 << self.cfg.pageblock_order;
        for (n, z) in self.zonelist(req) {
            if !z.is_populated() || z.ty == ZoneType::Movable {
                continue;
            }
            let mut best: Option<(u64, u64)> = None;
            let mut seen = 0;
            let mut pb = z.start.div_ceil(pages) * pages;
            while pb + pages <= z.init_end(&n.mm) && seen < EVACUATE_CANDIDATES {
                let d = n.mm.desc(pb);
                // The movable tally rules out most pageblocks without a scan; a block of a
                // pageblock or more is not in it, so one starting here is looked at.
                let maybe = d.block_tally() > 0 || d.state() == PageState::Allocated;
                if d.block_type() == req.mt && maybe {
                    let movable = self.movable_with_mover(n, pb);
                    if movable > 0 {
                        seen += 1;
                        if best.map_or(true, |(_, m)| movable > m) {
                            best = Some((pb, movable));
                        }
                    }
                }
                pb += pages;
            }
            if let Some((pb, _)) = best {
                if self.migrate_out(n, z, pb, false).is_some_and(|m| m > 0) {
                    self.drain_zone_pcp(n, z);
                    return true;
                }
            }
        }
        false
    }

    /// The block heads of `[pb, end)` (and single frames that are no head) with their flags,
    /// read without the zone lock: hints that each migration rechecks.
    fn heads<'a>(
        node: &'a Node<'m>,
        pb: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, &'m PageDesc, Flags)> + 'a {
        let mut pfn = pb;
        core::iter::from_fn(move || {
            if pfn >= end {
                return None;
            }
            let d = node.mm.desc(pfn);
            let f = d.flags();
            let at = pfn;
            pfn += f.span();
            Some((at, d, f))
        })
    }

    /// Pages of blocks with movers in the pageblock at `pb` (a lock-free hint).
    fn movable_with_mover(&self, node: &Node<'m>, pb: u64) -> u64 {
        let end = pb + (1u64 << self.cfg.pageblock_order);
        Self::heads(node, pb, end)
            .filter(|(_, d, f)| f.state == PageState::Allocated && d.mover_id() != 0)
            .map(|(_, _, f)| f.span())
            .sum()
    }

    /// Migrate blocks out of the pageblock at `pb` to movable pageblocks elsewhere. With
    /// `every`, each allocated block must go and the first failure stops the walk (`None`);
    /// without, only blocks with a mover are tried, and only running out of targets stops it.
    /// Returns how many moved.
    fn migrate_out(&self, node: &Node<'m>, zone: &Zone<'m>, pb: u64, every: bool) -> Option<u64> {
        let end = pb + (1u64 << self.cfg.pageblock_order);
        let mut moved = 0;
        for (pfn, d, f) in Self::heads(node, pb, end) {
            if f.state != PageState::Allocated || (!every && d.mover_id() == 0) {
                continue;
            }
            let r = self.migrate_block_in(node, zone, pfn, f.order, |z, o| {
                z.take_target_outside(o, pb, end)
            });
            self.count_migration(&r);
            match r {
                Ok(_) => moved += 1,
                Err(_) if every => return None,
                Err(crate::MigrateError::NoTarget) => break,
                Err(_) => {}
            }
        }
        Some(moved)
    }

    /// When no movable pageblock could be emptied for an unmovable or reclaimable request,
    /// claim the movable pageblock with the most free pages among the first
    /// [`EVACUATE_CANDIDATES`] of each zone of its zonelist (retype it, with its free pages),
    /// rather than steal pages out of one: its movable pages stay until they are freed or
    /// migrated, and no movable pageblock ends up holding unmovable pages. Returns whether a
    /// pageblock was claimed.
    pub(crate) fn claim_partial_for(&self, req: &Request) -> bool {
        let pages = 1u64 << self.cfg.pageblock_order;
        for (n, z) in self.zonelist(req) {
            if !z.is_populated() || z.ty == ZoneType::Movable {
                continue;
            }
            let mut zl = self.lock(n, z);
            let mut best: Option<(u64, u64)> = None;
            let mut seen = 0;
            let mut pb = z.start.div_ceil(pages) * pages;
            while pb + pages <= z.init_end(&n.mm) && seen < EVACUATE_CANDIDATES {
                let d = n.mm.desc(pb);
                if d.block_type() == MigrateType::Movable && d.state() != PageState::Tail {
                    seen += 1;
                    let f = d.flags();
                    let free = if f.state == PageState::Free && f.order >= self.cfg.pageblock_order
                    {
                        pages
                    } else {
                        zl.pageblock_free_small(pb)
                    };
                    if free >= 1u64 << req.order && best.map_or(true, |(_, f)| free > f) {
                        best = Some((pb, free));
                    }
                }
                pb += pages;
            }
            if let Some((pb, _)) = best {
                zl.split_free_block_covering(pb);
                zl.move_freepages_block(pb, req.mt);
                z.boost_watermark(pages);
                self.compact_counters.partial_claims.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }

    /// Allocated pages of the movable pageblock at `pb` if every allocated block in it can
    /// move (movable, with a mover, not migrating) and it holds no reserved frame or hole;
    /// `None` otherwise. Reads descriptors without the zone lock: a hint, rechecked by each
    /// migration.
    fn evacuation_cost(&self, node: &Node<'m>, pb: u64) -> Option<u64> {
        let end = pb + (1u64 << self.cfg.pageblock_order);
        let mut used = 0;
        for (_, d, f) in Self::heads(node, pb, end) {
            match f.state {
                PageState::Free | PageState::PerCpu => {}
                PageState::Allocated => {
                    if f.mt != MigrateType::Movable || d.mover_id() == 0 || d.is_migrating() {
                        return None;
                    }
                    used += f.span();
                }
                _ => return None,
            }
        }
        Some(used)
    }

    fn pick_evacuation(&self, node: &Node<'m>, zone: &Zone<'m>) -> Option<u64> {
        let pages = 1u64 << self.cfg.pageblock_order;
        let mut best: Option<(u64, u64)> = None;
        let mut seen = 0;
        let mut pb = zone.start.div_ceil(pages) * pages;
        while pb + pages <= zone.init_end(&node.mm) && seen < EVACUATE_CANDIDATES {
            if node.mm.desc(pb).block_type() == MigrateType::Movable {
                if let Some(used) = self.evacuation_cost(node, pb) {
                    seen += 1;
                    if best.map_or(true, |(_, u)| used < u) {
                        best = Some((pb, used));
                    }
                    if used <= pages / 16 {
                        break;
                    }
                }
            }
            pb += pages;
        }
        best.map(|(pb, _)| pb)
    }

    /// Migrate every allocated block out of the pageblock at `pb`, to targets outside it.
    /// `vm.compaction_proactiveness` (0..=100, default [`DEFAULT_PROACTIVENESS`]): how low
    /// [`kcompactd_step`](Self::kcompactd_step) keeps the fragmentation score; 0 leaves only
    /// boosted zones to it. Larger values are taken as 100.
    pub fn set_compaction_proactiveness(&self, value: u32) {
        self.compact_counters
            .proactiveness
            .store(value.min(100), Relaxed);
    }

    /// The current proactiveness.
    pub fn compaction_proactiveness(&self) -> u32 {
        self.compact_counters.proactiveness.load(Relaxed)
    }

    /// A zone's fragmentation score (Linux `fragmentation_score_zone`): the share of its free
    /// memory, in percent, that is not in free blocks of pageblock order or more.
    fn zone_score(&self, node: &Node<'m>, zone: &Zone<'m>) -> u64 {
        let order = hpage_order(self.cfg.pageblock_order);
        let z = self.lock(node, zone);
        let (mut free, mut big) = (0u64, 0u64);
        for (o, counts) in
            z.fa.counts
                .iter()
                .enumerate()
                .take(self.cfg.max_order as usize + 1)
        {
            let pages: u64 = counts[..MigrateType::Isolate.index()]
                .iter()
                .map(|&n| u64::from(n) << o)
                .sum();
            free += pages;
            if o as u32 >= order {
                big += pages;
            }
        }
        ((free - big) * 100).checked_div(free).unwrap_or(0)
    }

    /// Node `nid`'s fragmentation score, 0..=100 (Linux `fragmentation_score_node`): its
    /// zones' scores weighted by their present pages. `None` for a node that does not exist.
    pub fn fragmentation_score(&self, nid: usize) -> Option<u64> {
        let node = self.node(nid)?;
        let (mut sum, mut present) = (0u64, 0u64);
        for z in node.zones.iter().filter(|z| z.is_populated()) {
            sum += self.zone_score(node, z) * z.present;
            present += z.present;
        }
        Some(sum.checked_div(present).unwrap_or(0))
    }

    /// Whether node `nid` has work for kcompactd: a boosted zone, or (with proactiveness
    /// above 0) a fragmentation score above the high mark `min(100 - proactiveness + 10, 100)`.
    pub fn kcompactd_pending(&self, nid: usize) -> bool {
        let Some(node) = self.node(nid) else {
            return false;
        };
        if node
            .zones
            .iter()
            .any(|z| z.watermark_boost.load(Relaxed) > 0)
        {
            return true;
        }
        let p = u64::from(self.compaction_proactiveness());
        p > 0
            && self
                .fragmentation_score(nid)
                .is_some_and(|s| s > ((100 - p).max(5) + 10).min(100))
    }

    /// One run of kcompactd for node `nid`, the step a kernel calls from its per-node
    /// compaction thread (or timer) when [`kcompactd_pending`](Self::kcompactd_pending) says
    /// so: every boosted zone, and while the score is above the low mark
    /// `max(100 - proactiveness, 5)` every zone with a score above it, gets a full compaction
    /// pass; boosts are then cleared. Returns the blocks migrated, or `None` when there was
    /// nothing to do.
    pub fn kcompactd_step(&self, nid: usize) -> Result<Option<u64>, CompactError> {
        if !self.kcompactd_pending(nid) {
            self.node(nid).ok_or(CompactError::NoSuchNode(nid))?;
            return Ok(None);
        }
        let node = self.node(nid).ok_or(CompactError::NoSuchNode(nid))?;
        let p = u64::from(self.compaction_proactiveness());
        let low = (100 - p).max(5);
        let mut moved = 0;
        for z in node.zones.iter().filter(|z| z.is_populated()) {
            let boosted = z.watermark_boost.load(Relaxed) > 0;
            if boosted || (p > 0 && self.zone_score(node, z) > low) {
                moved += self.compact_zone(nid, z.ty, None)?.migrated;
            }
            z.watermark_boost.store(0, Relaxed);
        }
        self.compact_counters.proactive.fetch_add(1, Relaxed);
        Ok(Some(moved))
    }

    /// Compact every populated zone of node `nid` until its scanners meet (Linux's
    /// `compact_node`, what `/proc/sys/vm/compact_memory` runs). Returns the blocks migrated.
    pub fn compact_node(&self, nid: usize) -> Result<u64, CompactError> {
        let node = self.node(nid).ok_or(CompactError::NoSuchNode(nid))?;
        let mut moved = 0;
        for z in node.zones.iter().filter(|z| z.is_populated()) {
            moved += self.compact_zone(nid, z.ty, None)?.migrated;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec::Vec;

    use mmkit_addr::{Order, Pfn};

    use super::*;
    use crate::mover::tests::{free_frames, leaked_mover, TagMover};
    use crate::testutil::{build, mib, no_pcp, TestBuddy};
    use crate::{BuddyConfig, GfpFlags, MigrateError};

    /// Fill memory with movable order-0 pages owned by `m`, then free every other one
    /// (compaction_test's checkerboard). Returns the live pages.
    fn checkerboard(b: &TestBuddy, m: &'static TagMover) -> Vec<Pfn> {
        let id = b.register_mover(m).unwrap();
        let mut all = Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::ZERO) {
            all.push(p);
        }
        all.sort_unstable();
        let mut live = Vec::new();
        for (i, p) in all.into_iter().enumerate() {
            if i % 2 == 0 {
                b.free_pages(p, Order::ZERO).unwrap();
            } else {
                m.own(p, Order::ZERO, p.as_u64());
                b.set_mover(p, Order::ZERO, Some(id)).unwrap();
                live.push(p);
            }
        }
        live
    }

    /// Share of free memory in blocks of pageblock order or more, in percent.
    fn huge_share(b: &TestBuddy) -> f64 {
        let huge = b.free_pages_at_order(b.config().pageblock_order) as f64;
        100.0 * huge / b.free_pages_at_order(0) as f64
    }

    fn check_contents(b: &TestBuddy, m: &TagMover, live: usize) {
        let blocks = m.blocks.lock().unwrap();
        assert_eq!(blocks.len(), live, "every live block still has its owner");
        for (&pfn, &(order, _)) in blocks.iter() {
            assert_eq!(
                b.allocated_block(Pfn::new(pfn)),
                Some((Pfn::new(pfn), Order::new(order)))
            );
        }
    }

    #[test]
    fn checkerboard_compaction_turns_free_memory_into_huge_pages() {
        for cfg in [no_pcp(), BuddyConfig::default()] {
            let b = build(&[&[mib(0, 64)]], cfg, 2);
            let m = leaked_mover();
            let live = checkerboard(&b, m);
            b.drain_all_pages();
            let before = huge_share(&b);
            assert!(before < 1.0, "checkerboard leaves no huge page: {before}%");
            let free = free_frames(&b);
            let moved = b.compact_node(0).unwrap();
            let after = huge_share(&b);
            assert!(
                after >= 90.0,
                "{after}% of free memory as order-9 after compaction"
            );
            assert_eq!(
                free_frames(&b),
                free,
                "compaction neither frees nor allocates"
            );
            assert!(moved > 0);
            let s = b.compact_stats();
            assert_eq!(s.pgmigrate_success, moved);
            assert!(s.compact_migrate_scanned > 0 && s.compact_free_scanned > 0);
            check_contents(&b, m, live.len());
            b.verify().unwrap();
        }
    }

    #[test]
    fn compaction_to_an_order_stops_when_a_block_is_free() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let live = checkerboard(&b, m);
        let r = b.compact_zone(0, ZoneType::Dma32, Some(9)).unwrap();
        assert_eq!(r.outcome, CompactOutcome::Success);
        assert!(b.free_pages_at_order(9) > 0);
        let partial = r.migrated;
        // A full pass then moves more.
        let full = b.compact_zone(0, ZoneType::Dma32, None).unwrap();
        assert_eq!(full.outcome, CompactOutcome::Complete);
        assert!(full.migrated + partial > partial);
        let again = b.compact_zone(0, ZoneType::Dma32, Some(9)).unwrap();
        assert_eq!(
            (again.outcome, again.migrated),
            (CompactOutcome::Success, 0)
        );
        // A pass that found the order already free did no compaction and counts nothing.
        let s = b.compact_stats();
        assert_eq!((s.compact_success, s.compact_fail), (1, 0));
        check_contents(&b, m, live.len());
        b.verify().unwrap();
    }

    #[test]
    fn blocks_without_a_mover_or_unmovable_stay_and_their_pageblocks_are_skipped() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        // Every frame allocated: half unmovable (kernel), half movable without a mover.
        let mut all = Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::ZERO) {
            all.push(p);
        }
        for p in all.iter().step_by(2) {
            b.free_pages(*p, Order::ZERO).unwrap();
        }
        let free = free_frames(&b);
        let r = b.compact_zone(0, ZoneType::Dma32, None).unwrap();
        assert_eq!((r.migrated, r.failed), (0, 0), "nothing has a mover");
        assert!(r.no_mover > 0, "counted as movable by type only");
        assert_eq!(b.compact_stats().compact_no_mover, r.no_mover);
        assert_eq!(free_frames(&b), free);
        assert!(
            b.extfrag(0, ZoneType::Dma32)
                .unwrap()
                .fragmentation_index(9)
                > 500
        );
        b.verify().unwrap();
    }

    #[test]
    fn a_busy_or_failing_mover_costs_moves_but_never_blocks() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let live = checkerboard(&b, m);
        m.busy_every.store(3, core::sync::atomic::Ordering::Relaxed);
        m.fail_every.store(5, core::sync::atomic::Ordering::Relaxed);
        let r = b.compact_zone(0, ZoneType::Dma32, None).unwrap();
        assert!(r.migrated > 0 && r.failed > 0, "{r:?}");
        check_contents(&b, m, live.len());
        b.verify().unwrap();
        // Nothing is lost: free everything and memory is whole again.
        let blocks: Vec<_> = m.blocks.lock().unwrap().keys().copied().collect();
        for p in blocks {
            b.free_pages(Pfn::new(p), Order::ZERO).unwrap();
        }
        b.verify().unwrap();
        assert!(huge_share(&b) > 99.0);
    }

    #[test]
    fn bad_compaction_requests_are_refused() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        assert_eq!(
            b.compact_zone(3, ZoneType::Dma32, None),
            Err(CompactError::NoSuchNode(3))
        );
        assert_eq!(
            b.compact_zone(0, ZoneType::Normal, None),
            Err(CompactError::EmptyZone)
        );
        assert_eq!(
            b.compact_zone(0, ZoneType::Dma32, Some(11)),
            Err(CompactError::OrderTooLarge { order: 11, max: 10 })
        );
        assert_eq!(
            b.extfrag(0, ZoneType::Movable),
            Err(CompactError::EmptyZone)
        );
        assert_eq!(b.compact_node(9), Err(CompactError::NoSuchNode(9)));
        // Nothing to do on an empty machine: success at once for an order, a quiet full pass.
        let r = b.compact_zone(0, ZoneType::Dma32, Some(10)).unwrap();
        assert_eq!((r.outcome, r.migrated), (CompactOutcome::Success, 0));
        assert_eq!(
            b.compact_zone(0, ZoneType::Dma32, None).unwrap().migrated,
            0
        );
        let _ = MigrateError::NoTarget;
    }

    /// Fill memory with movable pages that have a mover, then free every fourth one: plenty
    /// of free memory, no free pageblock.
    fn full_of_movable_holes(b: &TestBuddy, m: &'static TagMover) {
        let id = b.register_mover(m).unwrap();
        let mut all = Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::ZERO) {
            all.push(p);
        }
        for (i, p) in all.into_iter().enumerate() {
            if i % 4 == 0 {
                b.free_pages(p, Order::ZERO).unwrap();
            } else {
                m.own(p, Order::ZERO, p.as_u64());
                b.set_mover(p, Order::ZERO, Some(id)).unwrap();
            }
        }
        b.drain_all_pages();
    }

    #[test]
    fn an_unmovable_request_gets_an_emptied_pageblock_instead_of_stealing() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        full_of_movable_holes(&b, m);
        assert_eq!(
            b.pageblock_census().holding[MigrateType::Unmovable.index()],
            0
        );
        let mut got = Vec::new();
        for _ in 0..600 {
            got.push(b.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap());
        }
        // 600 pages fill two pageblocks; each was emptied for them, none was mixed.
        let s = b.compact_stats();
        assert!(s.compact_evacuated >= 2, "{s:?}");
        for p in &got {
            assert_eq!(b.pageblock_migratetype(*p), Some(MigrateType::Unmovable));
        }
        let c = b.pageblock_census();
        assert_eq!(c.holding[MigrateType::Unmovable.index()], 2);
        assert_eq!(c.by_type[MigrateType::Unmovable.index()], 2);
        let live = m.blocks.lock().unwrap().len();
        check_contents(&b, m, live);
        b.verify().unwrap();
    }

    #[test]
    fn without_compaction_or_when_it_cannot_block_an_unmovable_request_steals() {
        for (cfg, gfp) in [
            (
                BuddyConfig {
                    compaction: false,
                    ..no_pcp()
                },
                GfpFlags::KERNEL,
            ),
            (no_pcp(), GfpFlags::ATOMIC),
        ] {
            let b = build(&[&[mib(0, 64)]], cfg, 1);
            full_of_movable_holes(&b, leaked_mover());
            let p = b.alloc_pages(gfp, Order::ZERO).unwrap();
            assert_eq!(b.pageblock_migratetype(p), Some(MigrateType::Movable));
            assert_eq!(b.compact_stats().compact_evacuated, 0);
            b.verify().unwrap();
        }
    }

    #[test]
    fn direct_compaction_serves_a_costly_order() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let live = checkerboard(&b, m);
        assert_eq!(b.free_pages_at_order(9), 0);
        let p = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(9))
            .unwrap();
        let s = b.compact_stats();
        assert_eq!((s.compact_stall, s.compact_success), (1, 1));
        check_contents(&b, m, live.len());
        b.free_pages(p, Order::new(9)).unwrap();
        b.verify().unwrap();
        // Without compaction the same request fails.
        let b = build(
            &[&[mib(0, 64)]],
            BuddyConfig {
                compaction: false,
                ..no_pcp()
            },
            1,
        );
        let _ = checkerboard(&b, leaked_mover());
        assert!(b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(9))
            .is_err());
    }

    #[test]
    fn a_steal_boosts_the_watermark_and_kcompactd_works_it_off() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        full_of_movable_holes(&b, m);
        b.set_compaction_proactiveness(0);
        assert!(!b.kcompactd_pending(0));
        assert_eq!(b.kcompactd_step(0), Ok(None));
        // An atomic request cannot wait for an evacuation: it steals, and boosts.
        let p = b.alloc_pages(GfpFlags::ATOMIC, Order::ZERO).unwrap();
        assert_eq!(b.pageblock_migratetype(p), Some(MigrateType::Movable));
        assert!(b.kcompactd_pending(0));
        let moved = b.kcompactd_step(0).unwrap().unwrap();
        assert!(moved > 0);
        assert!(!b.kcompactd_pending(0), "boost cleared");
        assert_eq!(b.compact_stats().compact_daemon_runs, 1);
        let live = m.blocks.lock().unwrap().len();
        check_contents(&b, m, live);
        b.verify().unwrap();
        assert_eq!(b.kcompactd_step(7), Err(CompactError::NoSuchNode(7)));
    }

    #[test]
    fn proactive_compaction_brings_the_score_under_the_mark() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let live = checkerboard(&b, m);
        let before = b.fragmentation_score(0).unwrap();
        assert!(before > 90, "checkerboard scores {before}");
        b.set_compaction_proactiveness(0);
        assert!(!b.kcompactd_pending(0), "proactiveness 0: boosts only");
        b.set_compaction_proactiveness(DEFAULT_PROACTIVENESS);
        assert!(b.kcompactd_pending(0));
        assert!(b.kcompactd_step(0).unwrap().unwrap() > 0);
        let after = b.fragmentation_score(0).unwrap();
        assert!(
            after <= 100 - u64::from(DEFAULT_PROACTIVENESS),
            "score {after}"
        );
        assert!(!b.kcompactd_pending(0));
        assert_eq!(b.kcompactd_step(0), Ok(None));
        check_contents(&b, m, live.len());
        b.set_compaction_proactiveness(1000);
        assert_eq!(b.compaction_proactiveness(), 100);
        assert_eq!(b.fragmentation_score(5), None);
    }

    #[test]
    fn fragmentation_indices_follow_linux() {
        let mut e = Extfrag {
            free_blocks: [0; crate::MAX_ORDER_LIMIT as usize + 1],
            max_order: 10,
        };
        assert_eq!(e.fragmentation_index(3), 0, "no free memory");
        assert_eq!(e.unusable_index(3), 0);
        // 64 free single pages, nothing larger.
        e.free_blocks[0] = 64;
        assert_eq!(e.unusable_index(0), 0);
        assert_eq!(e.unusable_index(1), 1000);
        // Linux: 1000 - (1000 + 64 * 1000 / 8) / 64 = 1000 - 140 = 860.
        assert_eq!(e.fragmentation_index(3), 860);
        e.free_blocks[3] = 1;
        assert_eq!(e.fragmentation_index(3), -1000);
        assert_eq!(e.unusable_index(3), 64 * 1000 / 72);
        assert_eq!(e.to_string().split(' ').count(), 11);
        // Orders 0..=3 have a free block; order 4: 1000 - (1000 + 72 * 1000 / 16) / 65 = 916.
        assert!(
            e.to_string()
                .starts_with("-1.000 -1.000 -1.000 -1.000 0.916"),
            "{e}"
        );
    }

    #[test]
    fn the_extfrag_report_has_a_line_per_zone_and_order() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let _ = checkerboard(&b, leaked_mover());
        let text = b.extfrag_report().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "unusable_index");
        assert!(
            lines[1].starts_with("Node 0, zone      DMA 0.000"),
            "{text}"
        );
        let ext = lines.iter().position(|l| *l == "extfrag_index").unwrap();
        assert_eq!(ext, 3, "two zones: DMA and DMA32");
        assert_eq!(lines[ext + 2].split_whitespace().count(), 4 + 11, "{text}");
    }
}
