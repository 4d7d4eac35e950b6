//! Mobility grouping: taking memory from another type's free lists without scattering
//! unmovable pages over every pageblock, and the high-atomic reserve.
//!
//! The rules are Linux's (`mm/page_alloc.c`: `__rmqueue`, `__rmqueue_claim`,
//! `__rmqueue_steal`, `try_to_claim_block`, `reserve_highatomic_pageblock`,
//! `unreserve_highatomic_pageblock`):
//!
//! 1. Take the smallest fitting block of the requested type.
//! 2. **Claim**: scan orders *downward* from the max order for a block on a fallback list
//!    ([`FALLBACKS`](crate::FALLBACKS) order) and try to convert its whole pageblock to the
//!    requested type. A block of pageblock order or more is always claimed. Below that,
//!    claiming is tried only for requests that are unmovable or reclaimable, or when the block
//!    is at least half a pageblock, and succeeds when the free pages plus the pages already
//!    allocated with a compatible mobility fill at least half the pageblock. Small movable
//!    requests never claim (movable pages don't fragment permanently). Linux walks the
//!    pageblock to count those pages on every attempt; here each pageblock keeps a free tally
//!    and a movable tally (changed where blocks enter or leave the free lists and where
//!    movable blocks are allocated and freed; see the `page` module), so a refused claim
//!    reads two words, and only a successful one walks the pageblock to move its free
//!    blocks.
//! 3. **Steal**: scan orders upward and take the smallest foreign block without retyping its
//!    pageblock.
//! 4. Non-blocking requests finally dip into the high-atomic reserve.
//!
//! A claim of a partly used pageblock and every steal raise the zone's watermark boost (Linux
//! `boost_watermark`), which asks kcompactd to repair the mixing (`compaction.rs`). mmkit has
//! no reclaim, so unlike Linux the boost does not raise the watermarks allocations check.
//!
//! With grouping off every request is unmovable and every fallback claims.

use core::sync::atomic::Ordering::Relaxed;

use crate::freearea::ZoneLocked;
use crate::migrate::MigrateType;
use crate::page::PageState;

/// Reserve entitlements of one allocation attempt (Linux `ALLOC_*` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AllocFlags {
    /// `ALLOC_MIN_RESERVE`: may use half of the min watermark (`__GFP_HIGH`).
    pub min_reserve: bool,
    /// `ALLOC_NON_BLOCK`: may use a further quarter; may take high-atomic pages last.
    pub non_block: bool,
    /// `ALLOC_HIGHATOMIC`: order > 0 non-blocking; prefers and grows the high-atomic reserve.
    pub highatomic: bool,
    /// `ALLOC_NOFRAGMENT`: take pages of another type only by claiming their pageblock,
    /// never by stealing single blocks out of it.
    pub nofragment: bool,
}

impl AllocFlags {
    /// Whether any reserve entitlement is set (Linux `ALLOC_RESERVES`).
    #[inline]
    pub fn any_reserve(&self) -> bool {
        self.min_reserve || self.non_block || self.highatomic
    }
}

/// Linux `should_try_claim_block`.
fn should_try_claim_block(order: u32, mt: MigrateType, p_pageblock: u32, grouping: bool) -> bool {
    order >= p_pageblock
        || order >= p_pageblock / 2
        || mt == MigrateType::Reclaimable
        || mt == MigrateType::Unmovable
        || !grouping
}

impl ZoneLocked<'_, '_> {
    /// Take a block of `order` for a request of type `mt` (Linux `__rmqueue` plus the
    /// high-atomic steps of `rmqueue_buddy`). Returns its head; the caller sets its state.
    pub fn rmqueue(&mut self, order: u32, mt: MigrateType, flags: AllocFlags) -> Option<u64> {
        if flags.highatomic {
            if let Some(pfn) = self.rmqueue_smallest(order, MigrateType::HighAtomic) {
                return Some(pfn);
            }
        }
        // CMA (cma.rs): movable requests use it first when it holds more than half of the
        // zone's free memory, and before any fallback when their own lists are empty.
        let cma = mt == MigrateType::Movable && self.zone.cma_pages.load(Relaxed) > 0;
        if cma && self.cma_preferred() {
            if let Some(pfn) = self.rmqueue_smallest(order, MigrateType::Cma) {
                return Some(pfn);
            }
        }
        if let Some(pfn) = self.rmqueue_smallest(order, mt) {
            return Some(pfn);
        }
        if cma {
            if let Some(pfn) = self.rmqueue_smallest(order, MigrateType::Cma) {
                return Some(pfn);
            }
        }
        if let Some(pfn) = self.rmqueue_claim(order, mt) {
            return Some(pfn);
        }
        if !flags.nofragment {
            if let Some(pfn) = self.rmqueue_steal(order, mt) {
                return Some(pfn);
            }
        }
        if flags.non_block {
            return self.rmqueue_smallest(order, MigrateType::HighAtomic);
        }
        None
    }

    fn find_fallback(&self, order: u32, mt: MigrateType) -> Option<MigrateType> {
        mt.fallbacks()
            .iter()
            .copied()
            .find(|fb| self.fa.counts[order as usize][fb.index()] > 0)
    }

    /// Step 2: claim a whole pageblock from a fallback type.
    fn rmqueue_claim(&mut self, order: u32, mt: MigrateType) -> Option<u64> {
        for cur in (order..=self.p.max_order).rev() {
            if !should_try_claim_block(cur, mt, self.p.pageblock_order, self.p.grouping) {
                break;
            }
            let Some(fb) = self.find_fallback(cur, mt) else {
                continue;
            };
            let pfn = self.first_free(cur, fb)?;
            if let Some(got) = self.try_to_claim_block(pfn, cur, order, mt, fb) {
                return Some(got);
            }
        }
        None
    }

    /// Linux `try_to_claim_block`: `pfn` is a free block of order `cur` on list `fb`.
    fn try_to_claim_block(
        &mut self,
        pfn: u64,
        cur: u32,
        order: u32,
        mt: MigrateType,
        fb: MigrateType,
    ) -> Option<u64> {
        if cur >= self.p.pageblock_order {
            self.del_from_free_list(pfn, cur, fb);
            self.set_pageblock_range(pfn, cur, mt);
            self.expand(pfn, order, cur, mt);
            return Some(pfn);
        }
        let pb = self.pageblock_start(pfn);
        if !self.pageblock_in_zone(pb) {
            return None;
        }
        // The pageblock holds the free block at `pfn`, smaller than a pageblock: every
        // block in it is smaller too, so its tallies count all of it.
        let (free, movable) = (
            self.pageblock_free_small(pb),
            self.pageblock_movable_small(pb),
        );
        let pages = self.p.pageblock_pages();
        let alike = if mt == MigrateType::Movable {
            movable
        } else if fb == MigrateType::Movable {
            pages - (free + movable).min(pages)
        } else {
            0
        };
        if free + alike >= pages / 2 || !self.p.grouping {
            self.move_freepages_block(pb, mt);
            if self.p.grouping {
                // A pageblock changed hands with pages of another type in it.
                self.zone.boost_watermark(pages);
            }
            return self.rmqueue_smallest(order, mt);
        }
        None
    }

    /// Step 3: steal the smallest foreign block without retyping its pageblock.
    fn rmqueue_steal(&mut self, order: u32, mt: MigrateType) -> Option<u64> {
        for cur in order..=self.p.max_order {
            let Some(fb) = self.find_fallback(cur, mt) else {
                continue;
            };
            let pfn = self.first_free(cur, fb)?;
            self.del_from_free_list(pfn, cur, fb);
            self.expand(pfn, order, cur, fb);
            if self.p.grouping {
                // Pages of `mt` now sit in a pageblock of type `fb`: ask kcompactd to repair.
                self.zone.boost_watermark(self.p.pageblock_pages());
            }
            return Some(pfn);
        }
        None
    }

    /// Upper bound of the high-atomic reserve: 1% of the zone plus one pageblock.
    fn max_highatomic(&self) -> u64 {
        self.zone.managed.load(Relaxed) / 100 + self.p.pageblock_pages()
    }

    /// After a successful high-order atomic allocation at `pfn`, turn its pageblock into a
    /// high-atomic reserve if the reserve has room (Linux `reserve_highatomic_pageblock`).
    pub fn reserve_highatomic_pageblock(&mut self, pfn: u64, order: u32) {
        if order >= self.p.pageblock_order
            || self.fa.nr_reserved_highatomic >= self.max_highatomic()
        {
            return;
        }
        let pb = self.pageblock_start(pfn);
        let mt = self.pageblock_type(pb);
        if !mt.is_mergeable() || !self.pageblock_in_zone(pb) {
            return;
        }
        let pages = self.fa.nr_reserved_highatomic + self.p.pageblock_pages();
        self.set_reserved_highatomic(pages);
        self.move_freepages_block(pb, MigrateType::HighAtomic);
    }

    /// Give one high-atomic pageblock back to type `to` (Linux
    /// `unreserve_highatomic_pageblock`). Returns whether one was released.
    pub fn unreserve_highatomic_pageblock(&mut self, to: MigrateType) -> bool {
        for order in 0..=self.p.max_order {
            let Some(pfn) = self.first_free(order, MigrateType::HighAtomic) else {
                continue;
            };
            let pb = self.pageblock_start(pfn);
            // A free block larger than a pageblock spans several reserved pageblocks:
            // release the first one only.
            self.split_free_block_covering(pb);
            if self.pageblock_type(pb) == MigrateType::HighAtomic {
                let pages = self.p.pageblock_pages();
                let left = self.fa.nr_reserved_highatomic.saturating_sub(pages);
                self.set_reserved_highatomic(left);
            }
            self.move_freepages_block(pb, to);
            return true;
        }
        false
    }

    /// Linux `__zone_watermark_ok`, exact under the zone lock (see [`Zone::watermark_ok`]).
    ///
    /// [`Zone::watermark_ok`]: crate::zone::Zone::watermark_ok
    #[inline]
    pub fn watermark_ok(&self, order: u32, mark: u64, highest: usize, flags: AllocFlags) -> bool {
        self.zone.watermark_ok(order, mark, highest, flags)
    }

    /// Number of pageblocks in the zone whose type is `mt` (for reports and verify).
    pub fn count_pageblocks(&self, mt: MigrateType) -> u64 {
        let pages = self.p.pageblock_pages();
        let mut pb = self.pageblock_start(self.zone.start);
        let mut n = 0;
        while pb < self.zone.end {
            if self.mm.contains(pb) && self.mm.desc(pb).block_type() == mt {
                n += 1;
            }
            pb += pages;
        }
        n
    }

    /// Whether any descriptor in the pageblock at `pb` is an allocated head of type `mt`.
    pub fn pageblock_holds_allocated(&self, pb: u64, mt: MigrateType) -> bool {
        let end = (pb + self.p.pageblock_pages()).min(self.zone.end);
        let mut pfn = pb.max(self.zone.start);
        if let Some((h, f)) = self.find_block_head(pfn) {
            if h < pfn {
                return f.state == PageState::Allocated && f.mt == mt;
            }
        }
        while pfn < end {
            let f = self.mm.desc(pfn).flags();
            match f.state {
                PageState::Allocated if f.mt == mt => return true,
                PageState::Free | PageState::Allocated | PageState::PerCpu => pfn += 1 << f.order,
                _ => pfn += 1,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_movable_requests_do_not_claim() {
        assert!(!should_try_claim_block(0, MigrateType::Movable, 9, true));
        assert!(!should_try_claim_block(3, MigrateType::Movable, 9, true));
        assert!(should_try_claim_block(4, MigrateType::Movable, 9, true));
        assert!(should_try_claim_block(0, MigrateType::Unmovable, 9, true));
        assert!(should_try_claim_block(0, MigrateType::Reclaimable, 9, true));
        assert!(should_try_claim_block(0, MigrateType::Movable, 9, false));
    }
}

#[cfg(test)]
mod behaviour {
    use crate::testutil::{build, mib, no_pcp};
    use crate::{GfpFlags, MigrateType, ZoneType};
    use mmkit_addr::Order;

    #[test]
    fn small_requests_steal_when_claiming_is_not_allowed() {
        let cfg = crate::BuddyConfig {
            min_free_kbytes: Some(0),
            watermark_scale_factor: 0,
            ..no_pcp()
        };
        let b = build(&[&[mib(16, 16)]], cfg, 1);
        // Fill memory with unmovable order-3 blocks (every pageblock becomes unmovable),
        // then free every other one: only small unmovable free blocks remain.
        let mut held = std::vec::Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::new(3)) {
            held.push(p);
        }
        for p in held.iter().filter(|p| (p.as_u64() / 8) % 2 == 0) {
            b.free_pages(*p, Order::new(3)).unwrap();
        }
        let before = b.pageblock_census();
        assert_eq!(before.by_type[MigrateType::Movable.index()], 0);
        // Small movable requests may not claim below half a pageblock: they steal.
        b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
            .unwrap();
        b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(3))
            .unwrap();
        assert_eq!(b.pageblock_census().by_type, before.by_type);
        b.verify().unwrap();
    }

    #[test]
    fn reclaimable_request_claims_a_pageblock_that_is_half_free() {
        let cfg = crate::BuddyConfig {
            min_free_kbytes: Some(0),
            watermark_scale_factor: 0,
            ..no_pcp()
        };
        let b = build(&[&[mib(16, 16)]], cfg, 1);
        let mut held = std::vec::Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::new(3)) {
            held.push(p);
        }
        for p in held.iter().filter(|p| (p.as_u64() / 8) % 2 == 0) {
            b.free_pages(*p, Order::new(3)).unwrap();
        }
        // Every unmovable pageblock is exactly half free: enough to claim.
        b.alloc_pages(GfpFlags::KERNEL_RECLAIMABLE, Order::new(0))
            .unwrap();
        let c = b.pageblock_census();
        assert_eq!(c.by_type[MigrateType::Reclaimable.index()], 1);
        assert_eq!(c.holding[MigrateType::Reclaimable.index()], 1);
        b.verify().unwrap();
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(st.reserved_highatomic, 0);
    }

    /// The free and movable tallies of the pageblock holding `pfn`, and what a walk counts.
    fn tallies(b: &crate::testutil::TestBuddy, pfn: u64) -> ((u64, u64), (u64, u64)) {
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        let zl = b.lock(n, z);
        let pb = zl.pageblock_start(pfn);
        (
            (zl.pageblock_free_small(pb), zl.pageblock_movable_small(pb)),
            zl.count_pageblock(pb),
        )
    }

    #[test]
    fn tallies_follow_allocations_frees_merges_and_per_cpu_lists() {
        // With per-CPU lists (refills, frees to another CPU's list, drains) and without.
        for cfg in [crate::BuddyConfig::default(), no_pcp()] {
            let b = build(&[&[mib(16, 16)]], cfg, 2);
            let mut held = std::vec::Vec::new();
            for i in 0..300u32 {
                let gfp = if i % 3 == 0 {
                    GfpFlags::KERNEL
                } else {
                    GfpFlags::HIGHUSER_MOVABLE
                };
                let order = Order::new(i % 4);
                held.push((b.alloc_pages(gfp, order).unwrap(), order));
            }
            let first = held[1].0.as_u64();
            let (tally, walked) = tallies(&b, first);
            assert_eq!(tally, walked);
            assert!(tally.1 > 0, "movable pages are counted: {tally:?}");
            for (p, o) in held.iter().step_by(2) {
                b.free_pages(*p, *o).unwrap();
            }
            b.verify().unwrap();
            b.drain_all_pages();
            b.verify().unwrap();
            let (tally, walked) = tallies(&b, first);
            assert_eq!(tally, walked);
            assert!(tally.0 > 0, "free pages are counted: {tally:?}");
            for (p, o) in held.iter().skip(1).step_by(2) {
                b.free_pages(*p, *o).unwrap();
            }
            b.drain_all_pages();
            // Everything merged back: no block smaller than a pageblock is left.
            assert_eq!(tallies(&b, first), ((0, 0), (0, 0)));
            b.verify().unwrap();
        }
    }

    #[test]
    fn verify_reports_a_wrong_tally() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let p = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
            .unwrap()
            .as_u64();
        b.verify().unwrap();
        let n = b.node(0).unwrap();
        let pb = p & !((1u64 << b.cfg.pageblock_order) - 1);
        for (frame, what) in [(pb, "movable"), (pb + 1, "free")] {
            n.mm.desc(frame).change_block_tally(1, true);
            match b.verify() {
                Err(crate::VerifyError::TallyMismatch { pfn, what: w, .. }) => {
                    assert_eq!((pfn.as_u64(), w), (pb, what));
                }
                other => panic!("wrong {what} tally not reported: {other:?}"),
            }
            n.mm.desc(frame).change_block_tally(1, false);
            b.verify().unwrap();
        }
    }
}
