//! `verify()`: a full invariant scan, for tests, fuzzing and debugging.
//!
//! For every zone (per-CPU locks in CPU order, then the zone lock, so the scan sees a
//! consistent state even while other threads run):
//! * every free list is a well-linked chain whose members are free heads of the list's order
//!   and type, naturally aligned and inside the zone; its length equals its counter;
//! * every per-CPU list likewise, and the list set's page count equals its lists;
//! * walking the zone block by block, every block head is followed by exactly `2^order - 1`
//!   tail descriptors (so no block overlaps another, or a reserved frame or hole); every free
//!   head found is on a list (the counts match); no two free buddies of equal order are left
//!   unmerged unless Linux forbids the merge;
//! * each free block's type is its pageblock's type (every covered pageblock for large
//!   blocks);
//! * each pageblock wholly inside the zone has free and movable tallies equal to the pages
//!   of its free and allocated-movable blocks smaller than a pageblock;
//! * `free_pages` equals the pages on the lists; `managed` equals free + per-CPU + allocated;
//!   the high-atomic reserve equals its pageblocks; the zone's CMA size equals its CMA
//!   pageblocks (isolated ones included);
//! * memmap frames outside every zone are holes (initialised frames only: the scan stops at
//!   a node's deferred boundary, as every walk does);
//! * the deferred boundary is a multiple of the largest block or the span's end, and the
//!   free runs recorded past it are present memory and disjoint (`deferred.rs`).

use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::freearea::ZoneLocked;
use crate::migrate::{MigrateType, NR_MIGRATE_TYPES, NR_PCP_TYPES};
use crate::page::{List, Memmap, PageState, NIL};
use crate::pcp::PCP_MAX_ORDER;
use crate::zone::{Zone, ZoneType, HIGHATOMIC_MASK_SHIFT};

/// An invariant the scan found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// A free or per-CPU list is mislinked, cyclic, or its length differs from its counter.
    ListCorrupt {
        /// Node.
        node: usize,
        /// Zone.
        zone: ZoneType,
        /// Order of the list.
        order: u32,
    },
    /// A list member is not a head of the list's order and type, misaligned, or outside the
    /// zone.
    BadListMember {
        /// The member.
        pfn: Pfn,
    },
    /// A block's frames overlap another block, a reserved frame or a hole, or a tail has no
    /// head.
    Overlap {
        /// The frame in question.
        pfn: Pfn,
    },
    /// A free block is on no list (or listed twice).
    UnlistedFree {
        /// Node.
        node: usize,
        /// Zone.
        zone: ZoneType,
    },
    /// Two free buddies of equal order were left unmerged.
    UnmergedBuddies {
        /// The lower buddy.
        pfn: Pfn,
        /// Their order.
        order: u32,
    },
    /// A free block's type differs from its pageblock's.
    PageblockMismatch {
        /// The block.
        pfn: Pfn,
    },
    /// An allocated block names a mover but was not allocated as movable.
    MoverOnUnmovable {
        /// The block.
        pfn: Pfn,
    },
    /// A pageblock's free or movable tally disagrees with its blocks.
    TallyMismatch {
        /// The pageblock's first frame.
        pfn: Pfn,
        /// Which tally.
        what: &'static str,
        /// What the tally says.
        tally: u64,
        /// What the blocks say.
        actual: u64,
    },
    /// A node's deferred-memmap state is inconsistent: its boundary is not a multiple of
    /// the largest block (and not the span's end), or a recorded free run past it is not
    /// present memory or overlaps another.
    Deferred {
        /// Node.
        node: usize,
    },
    /// A counter disagrees with the lists.
    CounterMismatch {
        /// Node.
        node: usize,
        /// Zone.
        zone: ZoneType,
        /// Which counter.
        what: &'static str,
        /// What the counter says.
        counter: u64,
        /// What the lists say.
        actual: u64,
    },
}

impl core::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Walk one list; returns (blocks, pages).
fn walk_list(
    mm: &Memmap<'_>,
    list: &List,
    zone: &Zone<'_>,
    order: u32,
    mt: MigrateType,
    state: PageState,
) -> Result<(u64, u64), VerifyError> {
    let corrupt = VerifyError::ListCorrupt {
        node: zone.node,
        zone: zone.ty,
        order,
    };
    let mut prev = NIL;
    let mut cur = list.head;
    let mut n = 0u64;
    while cur != NIL {
        if cur as usize >= mm.map.written() || n > zone.spanned() {
            return Err(corrupt);
        }
        let d = mm.at(cur);
        if d.prev() != prev {
            return Err(corrupt);
        }
        let pfn = mm.pfn(cur);
        let f = d.flags();
        let fits =
            pfn % (1u64 << order) == 0 && zone.contains(pfn) && pfn + (1u64 << order) <= zone.end;
        if f.state != state || f.order != order || f.mt != mt || !fits {
            return Err(VerifyError::BadListMember { pfn: Pfn::new(pfn) });
        }
        n += 1;
        prev = cur;
        cur = d.next();
    }
    if list.tail != prev {
        return Err(corrupt);
    }
    Ok((n, n << order))
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Check every invariant of every zone; see the module docs for the list.
    pub fn verify(&self) -> Result<(), VerifyError> {
        for (nid, node) in self.nodes() {
            self.verify_deferred(nid, node)?;
            let mut pfn = node.mm.base;
            while pfn < node.mm.end() {
                if let Some(next) = node.mm.skip_hole_section(pfn) {
                    pfn = next;
                    continue;
                }
                if !node.zones.iter().any(|z| z.contains(pfn))
                    && node.mm.desc(pfn).state() != PageState::Hole
                {
                    return Err(VerifyError::Overlap { pfn: Pfn::new(pfn) });
                }
                pfn += 1;
            }
            for zone in node.zones.iter() {
                self.verify_zone(nid, node, zone)?;
            }
        }
        Ok(())
    }

    fn verify_deferred(&self, nid: usize, node: &Node<'m>) -> Result<(), VerifyError> {
        let bad = VerifyError::Deferred { node: nid };
        let _irq = self.platform.irq_save();
        let d = node.deferred.lock();
        let (b, e) = (node.mm.end(), node.mm.span_end());
        let max_pages = 1u64 << self.cfg.max_order;
        if b > e || (b != e && (b - node.mm.base) % max_pages != 0) {
            return Err(bad);
        }
        let live = |r: &crate::deferred::Run| (r.start.max(b), r.end.min(e));
        for (i, r) in d.free().iter().enumerate() {
            let (s, t) = live(r);
            if s >= t {
                continue;
            }
            if d.present_in(s, t) != t - s {
                return Err(bad);
            }
            for o in &d.free()[i + 1..] {
                if o.start < r.end && r.start < o.end {
                    return Err(bad);
                }
            }
        }
        Ok(())
    }

    fn verify_zone(&self, nid: usize, node: &Node<'m>, zone: &Zone<'m>) -> Result<(), VerifyError> {
        let mm = &node.mm;
        let mismatch = |what, counter, actual| VerifyError::CounterMismatch {
            node: nid,
            zone: zone.ty,
            what,
            counter,
            actual,
        };
        // Per-CPU lists first (lock order), all held until the zone scan is done.
        let mut pcp_blocks = 0;
        let mut pcp_pages = 0;
        if zone.pcp.len() > MAX_VERIFY_CPUS {
            self.drain_zone_pcp(node, zone);
        }
        // Lock order: the per-CPU lists (with interrupts on, as their owners hold them),
        // then interrupts off and the zone.
        let held = HeldPcp::lock_all(zone);
        let _irq = self.platform.irq_save();
        for lists in held.iter() {
            let mut pages = 0;
            for o in 0..=PCP_MAX_ORDER {
                for t in 0..NR_PCP_TYPES {
                    let mt = MigrateType::ALL[t];
                    let (b, p) = walk_list(
                        mm,
                        &lists.lists[o as usize][t],
                        zone,
                        o,
                        mt,
                        PageState::PerCpu,
                    )?;
                    pcp_blocks += b;
                    pages += p;
                }
            }
            if pages != lists.count {
                return Err(mismatch("pcp count", lists.count, pages));
            }
            pcp_pages += pages;
        }
        let z = self.lock(node, zone);
        let mut list_blocks = 0;
        let mut list_pages = 0;
        for o in 0..=self.cfg.max_order {
            for t in 0..NR_MIGRATE_TYPES {
                let mt = MigrateType::ALL[t];
                let (b, p) =
                    walk_list(mm, &z.fa.lists[o as usize][t], zone, o, mt, PageState::Free)?;
                let count = u64::from(z.fa.counts[o as usize][t]);
                if b != count {
                    return Err(mismatch("free-list count", count, b));
                }
                list_blocks += b;
                list_pages += p;
            }
        }
        let (walk_free, walk_pcp, allocated) = self.walk_zone(&z)?;
        Self::check_tallies(&z)?;
        if walk_free != list_blocks {
            return Err(VerifyError::UnlistedFree {
                node: nid,
                zone: zone.ty,
            });
        }
        if walk_pcp != pcp_blocks {
            return Err(mismatch("pcp blocks", pcp_blocks, walk_pcp));
        }
        let free = zone.free_pages.load(Relaxed);
        if free != list_pages {
            return Err(mismatch("free_pages", free, list_pages));
        }
        let managed = zone.managed.load(Relaxed);
        if managed != list_pages + pcp_pages + allocated {
            return Err(mismatch(
                "managed",
                managed,
                list_pages + pcp_pages + allocated,
            ));
        }
        let ha = z.count_pageblocks(MigrateType::HighAtomic) << self.cfg.pageblock_order;
        if ha != z.fa.nr_reserved_highatomic {
            return Err(mismatch(
                "highatomic reserve",
                z.fa.nr_reserved_highatomic,
                ha,
            ));
        }
        let cma = zone.cma_pages.load(Relaxed);
        if cma != z.count_cma_pages() {
            return Err(mismatch("cma pages", cma, z.count_cma_pages()));
        }
        let mirror = zone.highatomic_pages.load(Relaxed);
        if mirror != z.fa.nr_reserved_highatomic {
            return Err(mismatch(
                "highatomic mirror",
                z.fa.nr_reserved_highatomic,
                mirror,
            ));
        }
        let mut mask = 0u32;
        for (o, c) in z.fa.counts.iter().enumerate() {
            if c[..NR_PCP_TYPES].iter().any(|&n| n > 0) || c[MigrateType::Cma.index()] > 0 {
                mask |= 1 << o;
            }
            if c[MigrateType::HighAtomic.index()] > 0 {
                mask |= 1 << (HIGHATOMIC_MASK_SHIFT as usize + o);
            }
        }
        let seen = zone.free_order_mask.load(Relaxed);
        if seen != mask {
            return Err(mismatch(
                "free-order mask",
                u64::from(mask),
                u64::from(seen),
            ));
        }
        drop(z);
        drop(held);
        Ok(())
    }

    /// Every pageblock wholly inside the zone: its free and movable tallies equal a count of
    /// its blocks.
    fn check_tallies(z: &ZoneLocked<'_, 'm>) -> Result<(), VerifyError> {
        let pages = z.p.pageblock_pages();
        if pages == 1 {
            return Ok(());
        }
        let mut pb = z.zone.start.div_ceil(pages) * pages;
        while pb + pages <= z.zone.init_end(z.mm) {
            if let Some(next) = z.mm.skip_hole_section(pb) {
                pb = next;
                continue;
            }
            let (free, movable) = z.count_pageblock(pb);
            for (what, tally, actual) in [
                ("free", z.pageblock_free_small(pb), free),
                ("movable", z.pageblock_movable_small(pb), movable),
            ] {
                if tally != actual {
                    return Err(VerifyError::TallyMismatch {
                        pfn: Pfn::new(pb),
                        what,
                        tally,
                        actual,
                    });
                }
            }
            pb += pages;
        }
        Ok(())
    }

    /// Walk the zone block by block. Returns (free heads, per-CPU heads, allocated pages).
    fn walk_zone(&self, z: &ZoneLocked<'_, 'm>) -> Result<(u64, u64, u64), VerifyError> {
        let (mm, zone) = (z.mm, z.zone);
        let pb_order = self.cfg.pageblock_order;
        let (mut free, mut pcp, mut allocated) = (0, 0, 0);
        let mut pfn = zone.start;
        let end = zone.init_end(mm);
        while pfn < end {
            if let Some(next) = mm.skip_hole_section(pfn) {
                pfn = next;
                continue;
            }
            let f = mm.desc(pfn).flags();
            let order = f.order;
            match f.state {
                PageState::Hole | PageState::Reserved => {
                    pfn += 1;
                    continue;
                }
                PageState::Tail => return Err(VerifyError::Overlap { pfn: Pfn::new(pfn) }),
                PageState::Free | PageState::Allocated | PageState::PerCpu => {}
            }
            let end = pfn + (1u64 << order);
            if pfn % (1u64 << order) != 0 || end > zone.end || order > self.cfg.max_order {
                return Err(VerifyError::Overlap { pfn: Pfn::new(pfn) });
            }
            if let Some(bad) = (pfn + 1..end).find(|&p| mm.desc(p).state() != PageState::Tail) {
                return Err(VerifyError::Overlap { pfn: Pfn::new(bad) });
            }
            match f.state {
                PageState::Free => {
                    free += 1;
                    let mut pb = z.pageblock_start(pfn);
                    while pb < end {
                        if mm.desc(pb).block_type() != f.mt {
                            return Err(VerifyError::PageblockMismatch { pfn: Pfn::new(pfn) });
                        }
                        pb += 1u64 << pb_order;
                    }
                    let buddy = pfn ^ (1u64 << order);
                    if order < self.cfg.max_order
                        && buddy >= zone.start
                        && buddy + (1u64 << order) <= zone.end
                    {
                        let bf = mm.desc(buddy).flags();
                        if bf.state == PageState::Free && bf.order == order {
                            let bt = z.pageblock_type(buddy);
                            let forbidden = order >= pb_order
                                && bt != f.mt
                                && (!bt.is_mergeable() || !f.mt.is_mergeable());
                            if !forbidden {
                                return Err(VerifyError::UnmergedBuddies {
                                    pfn: Pfn::new(pfn.min(buddy)),
                                    order,
                                });
                            }
                        }
                    }
                }
                PageState::PerCpu => pcp += 1,
                _ => {
                    if mm.desc(pfn).mover_id() != 0 && f.mt != MigrateType::Movable {
                        return Err(VerifyError::MoverOnUnmovable { pfn: Pfn::new(pfn) });
                    }
                    allocated += 1u64 << order;
                }
            }
            pfn = end;
        }
        Ok((free, pcp, allocated))
    }
}

/// All per-CPU list locks of a zone, taken in CPU order.
struct HeldPcp<'a> {
    guards: [Option<spin::mutex::SpinMutexGuard<'a, crate::pcp::PcpLists>>; MAX_VERIFY_CPUS],
    n: usize,
}

/// `verify` holds every CPU's list of a zone at once, for up to this many CPUs; with more,
/// it drains the zone's lists first and checks the first this-many.
const MAX_VERIFY_CPUS: usize = 256;

impl<'a> HeldPcp<'a> {
    fn lock_all(zone: &'a Zone<'_>) -> Self {
        let mut guards: [Option<_>; MAX_VERIFY_CPUS] = core::array::from_fn(|_| None);
        let n = zone.pcp.len().min(MAX_VERIFY_CPUS);
        for (g, pcp) in guards.iter_mut().zip(zone.pcp.iter()) {
            *g = Some(pcp.inner.lock());
        }
        Self { guards, n }
    }

    fn iter(&self) -> impl Iterator<Item = &crate::pcp::PcpLists> {
        self.guards[..self.n].iter().flatten().map(|g| &**g)
    }
}
