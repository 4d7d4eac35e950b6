//! Isolating frame ranges and allocating physically contiguous runs (Linux
//! `mm/page_isolation.c`: `start_isolate_page_range`, `test_pages_isolated`,
//! `undo_isolate_page_range`; `mm/page_alloc.c`: `alloc_contig_range`, `alloc_contig_pages`).
//!
//! * **Isolate** retypes every pageblock of a pageblock-aligned range to `Isolate` (keeping
//!   the old type to restore), splits free blocks that straddle the range, moves the free
//!   blocks inside to the isolate lists and drains the per-CPU lists. From then on nothing is
//!   allocated from the range, and pages freed there stay on the isolate lists (they do not
//!   merge out of it). Pageblocks holding unmovable, reclaimable or reserved frames are
//!   refused, as Linux's `has_unmovable_pages` refuses them.
//! * **Test** says whether every frame of the range is free (after a caller such as
//!   compaction migrated the movable pages away).
//! * **Undo** restores the types, moves the free blocks back and lets whole free pageblocks
//!   merge with their neighbours again.
//! * **alloc_contig_range** = isolate, test, take every frame out of the buddy as an
//!   order-0 allocation, restore the types. `free_contig_range` gives them back. This is
//!   how runs larger than the max order are allocated; `alloc_contig_pages` searches the
//!   zonelist for a free, suitably aligned run.

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::{AllocError, FreeError, IsolateError};
use crate::freearea::ZoneLocked;
use crate::gfp::GfpFlags;
use crate::migrate::MigrateType;
use crate::page::{Flags, PageState};
use crate::zone::Zone;

impl ZoneLocked<'_, '_> {
    /// Split a free block that contains `pfn` but starts before it, so that no free block
    /// crosses `pfn`.
    fn split_free_block_straddling(&mut self, pfn: u64) {
        if pfn >= self.zone.end {
            return;
        }
        if let Some((head, f)) = self.find_block_head(pfn) {
            if head < pfn && f.state == PageState::Free {
                self.split_free_block_covering(pfn);
            }
        }
    }

    /// If a free block of pageblock order or more starts at `pb`, take it off and free it
    /// again so it merges with whatever became mergeable.
    fn remerge_free_at(&mut self, pb: u64) {
        let f = self.mm.desc(pb).flags();
        if f.state == PageState::Free && f.order >= self.p.pageblock_order {
            self.del_from_free_list(pb, f.order, f.mt);
            self.mm
                .desc(pb)
                .set_flags(Flags::new(PageState::Tail, 0, MigrateType::Unmovable));
            self.free_one_page(pb, f.order, f.mt, false);
        }
    }

    /// Whether the pageblock at `pb` holds frames isolation cannot move.
    fn pageblock_has_unmovable(&self, pb: u64) -> Option<u64> {
        let end = pb + self.p.pageblock_pages();
        let mut pfn = pb;
        if let Some((h, f)) = self.find_block_head(pfn) {
            if h < pfn && f.state == PageState::Allocated && f.mt != MigrateType::Movable {
                return Some(pb);
            }
        }
        while pfn < end {
            let f = self.mm.desc(pfn).flags();
            match f.state {
                PageState::Reserved => return Some(pfn),
                PageState::Allocated if f.mt != MigrateType::Movable => return Some(pfn),
                PageState::Free | PageState::Allocated | PageState::PerCpu => pfn += 1 << f.order,
                _ => pfn += 1,
            }
        }
        None
    }
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Check `[start, start + nr)` is non-empty, pageblock-aligned and in one zone.
    fn isolation_range(&self, start: u64, nr: u64) -> Result<(&Node<'m>, &Zone<'m>), IsolateError> {
        let pb = 1u64 << self.cfg.pageblock_order;
        let end = start.checked_add(nr).ok_or(IsolateError::BadRange)?;
        if nr == 0 || start % pb != 0 || nr % pb != 0 {
            return Err(IsolateError::BadRange);
        }
        let (node, zone) = self.locate(start).ok_or(IsolateError::BadRange)?;
        if end > zone.end {
            return Err(IsolateError::BadRange);
        }
        Ok((node, zone))
    }

    /// Isolate the pageblock-aligned range `[start, start + nr_pages)`. A count of zero, a
    /// range that wraps `u64` or leaves its zone, and a start outside every zone are
    /// `BadRange` (as for [`test_range_isolated`](Self::test_range_isolated),
    /// [`undo_isolate_range`](Self::undo_isolate_range) and
    /// [`alloc_contig_range`](Self::alloc_contig_range)).
    pub fn isolate_range(&self, start: Pfn, nr_pages: u64) -> Result<(), IsolateError> {
        let (node, zone) = self.isolation_range(start.as_u64(), nr_pages)?;
        let (start, end) = (start.as_u64(), start.as_u64() + nr_pages);
        let pages = 1u64 << self.cfg.pageblock_order;
        {
            let mut z = self.lock(node, zone);
            let mut pb = start;
            while pb < end {
                if z.pageblock_type(pb) == MigrateType::Isolate {
                    return Err(IsolateError::AlreadyIsolated);
                }
                if let Some(pfn) = z.pageblock_has_unmovable(pb) {
                    return Err(IsolateError::Unmovable { pfn: Pfn::new(pfn) });
                }
                pb += pages;
            }
            // Validated: now change state. Split free blocks straddling the ends; blocks
            // wholly inside move to the isolate lists whole.
            z.split_free_block_straddling(start);
            z.split_free_block_straddling(end);
            let mut pb = start;
            while pb < end {
                let old = z.pageblock_type(pb);
                if old == MigrateType::HighAtomic {
                    let left = z.fa.nr_reserved_highatomic.saturating_sub(pages);
                    z.set_reserved_highatomic(left);
                }
                node.mm.desc(pb).set_block_type(MigrateType::Isolate, old);
                z.scan_pageblock(pb, Some(MigrateType::Isolate));
                pb += pages;
            }
            // Blocks that could not merge across types before may merge as Isolate now.
            let mut pb = start;
            while pb < end {
                z.remerge_free_at(pb);
                pb += pages;
            }
        }
        // Per-CPU pages of the range go back to the (now isolate) lists.
        self.drain_zone_pcp(node, zone);
        Ok(())
    }

    /// `Ok` if every frame of the isolated range is free; `Busy` names the first in use.
    pub fn test_range_isolated(&self, start: Pfn, nr_pages: u64) -> Result<(), IsolateError> {
        let (node, zone) = self.isolation_range(start.as_u64(), nr_pages)?;
        let z = self.lock(node, zone);
        Self::test_isolated_locked(&z, start.as_u64(), start.as_u64() + nr_pages)
    }

    fn test_isolated_locked(
        z: &ZoneLocked<'_, 'm>,
        start: u64,
        end: u64,
    ) -> Result<(), IsolateError> {
        let pages = z.p.pageblock_pages();
        let mut pb = start;
        while pb < end {
            if z.pageblock_type(pb) != MigrateType::Isolate {
                return Err(IsolateError::NotIsolated);
            }
            pb += pages;
        }
        let mut pfn = start;
        while pfn < end {
            let f = z.mm.desc(pfn).flags();
            if f.state != PageState::Free {
                return Err(IsolateError::Busy { pfn: Pfn::new(pfn) });
            }
            pfn += 1 << f.order;
        }
        Ok(())
    }

    /// Undo [`isolate_range`](Self::isolate_range): restore the pageblock types and let the
    /// free blocks merge again.
    pub fn undo_isolate_range(&self, start: Pfn, nr_pages: u64) -> Result<(), IsolateError> {
        let (node, zone) = self.isolation_range(start.as_u64(), nr_pages)?;
        let mut z = self.lock(node, zone);
        let (start, end) = (start.as_u64(), start.as_u64() + nr_pages);
        let pages = z.p.pageblock_pages();
        let mut pb = start;
        while pb < end {
            if z.pageblock_type(pb) != MigrateType::Isolate {
                return Err(IsolateError::NotIsolated);
            }
            pb += pages;
        }
        self.unisolate_locked(&mut z, start, end);
        Ok(())
    }

    /// Restore the types of the isolated `[start, end)` and let its free blocks merge.
    fn unisolate_locked(&self, z: &mut ZoneLocked<'_, 'm>, start: u64, end: u64) {
        let pages = z.p.pageblock_pages();
        z.split_free_block_straddling(start);
        z.split_free_block_straddling(end);
        let mut pb = start;
        while pb < end {
            z.split_free_block_covering(pb);
            let restore = z.mm.desc(pb).saved_block_type();
            if restore == MigrateType::HighAtomic {
                let now = z.fa.nr_reserved_highatomic + pages;
                z.set_reserved_highatomic(now);
            }
            z.scan_pageblock(pb, Some(restore));
            z.mm.desc(pb).set_block_type(restore, restore);
            pb += pages;
        }
        // Whole free pageblocks may merge with their neighbours again; so may the pieces a
        // straddling split left just outside the range.
        if start >= z.zone.start + pages {
            z.remerge_free_at(start - pages);
        }
        let mut pb = start;
        while pb < end {
            z.remerge_free_at(pb);
            pb += pages;
        }
        if end < z.zone.end {
            z.remerge_free_at(end);
        }
    }

    /// Allocate every frame of the pageblock-aligned range `[start, start + nr_pages)` as
    /// order-0 pages (free them with [`free_contig_range`](Self::free_contig_range)). Fails
    /// with `Busy` (state unchanged) if some frame is in use.
    pub fn alloc_contig_range(&self, start: Pfn, nr_pages: u64) -> Result<(), IsolateError> {
        self.isolate_range(start, nr_pages)?;
        let (node, zone) = self.isolation_range(start.as_u64(), nr_pages)?;
        let (s, e) = (start.as_u64(), start.as_u64() + nr_pages);
        let mut z = self.lock(node, zone);
        if let Err(err) = Self::test_isolated_locked(&z, s, e) {
            self.unisolate_locked(&mut z, s, e);
            return Err(err);
        }
        // A free block may reach past the end (merged with an isolated neighbour): cut it.
        z.split_free_block_straddling(e);
        let mut pfn = s;
        while pfn < e {
            let f = z.mm.desc(pfn).flags();
            z.del_from_free_list(pfn, f.order, f.mt);
            for p in pfn..pfn + (1u64 << f.order) {
                node.mm.desc(p).set_allocated(0, MigrateType::Movable);
            }
            pfn += 1u64 << f.order;
        }
        let pages = z.p.pageblock_pages();
        let mut pb = s;
        while pb < e {
            let restore = node.mm.desc(pb).saved_block_type();
            if restore == MigrateType::HighAtomic {
                let now = z.fa.nr_reserved_highatomic + pages;
                z.set_reserved_highatomic(now);
            }
            node.mm.desc(pb).set_block_type(restore, restore);
            pb += pages;
        }
        Ok(())
    }

    /// Free `nr_pages` order-0 pages from `start` (a contiguous allocation, or part of one).
    /// Every frame is checked first; on error nothing is freed. A range that wraps `u64` or
    /// leaves the zone of `start` is `OutsideZones`; a count of zero frees nothing (`Ok` when
    /// `start` is in a zone).
    pub fn free_contig_range(&self, start: Pfn, nr_pages: u64) -> Result<(), FreeError> {
        let s = start.as_u64();
        let e = s.checked_add(nr_pages).ok_or(FreeError::OutsideZones)?;
        let (node, zone) = self.locate(s).ok_or(FreeError::OutsideZones)?;
        if e > zone.end {
            return Err(FreeError::OutsideZones);
        }
        let mut z = self.lock(node, zone);
        for p in s..e {
            let f = node.mm.desc(p).flags();
            if f.state != PageState::Allocated || f.order != 0 {
                drop(z);
                return Err(match f.state {
                    PageState::Allocated => FreeError::WrongOrder { allocated: f.order },
                    PageState::Reserved => FreeError::Reserved,
                    PageState::Hole => FreeError::Hole,
                    PageState::Tail => FreeError::InsideBlock {
                        head: crate::freearea::find_block_head(&node.mm, self.cfg.max_order, p)
                            .map_or(Pfn::new(p), |(h, _)| Pfn::new(h)),
                    },
                    _ => FreeError::DoubleFree,
                });
            }
        }
        for p in s..e {
            let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
            if node.mm.desc(p).begin_free(0, tail).is_ok() {
                let mt = z.pageblock_type(p);
                z.free_one_page(p, 0, mt, false);
            }
        }
        Ok(())
    }

    /// Find and allocate `nr_pages` contiguous frames (any count, even beyond the max
    /// order) in the zones `gfp` allows on `node` and its fallbacks. The run starts on a
    /// boundary of its size rounded up to pageblocks. Free with
    /// [`free_contig_range`](Self::free_contig_range). Errors: `BadRange` for zero pages,
    /// `InvalidFlags` / `NoSuchNode` for a bad request, `TooLarge` when the count (rounded up
    /// to pageblocks) is longer than every zone the request may use (including counts whose
    /// rounding would wrap `u64`), `NotFound` when no run is free.
    pub fn alloc_contig_pages(
        &self,
        nr_pages: u64,
        gfp: GfpFlags,
        node: usize,
    ) -> Result<Pfn, IsolateError> {
        let pb = 1u64 << self.cfg.pageblock_order;
        if nr_pages == 0 {
            return Err(IsolateError::BadRange);
        }
        let req = self.request(node, gfp, 0).map_err(|e| match e {
            AllocError::InvalidFlags(g) => IsolateError::InvalidFlags(g),
            AllocError::NoSuchNode(n) => IsolateError::NoSuchNode(n),
            // `request` fails only on flags, node, or an order above the max (not 0).
            _ => IsolateError::BadRange,
        })?;
        // Rounded up to whole pageblocks; a count whose rounding wraps is longer than any zone.
        let too_large = IsolateError::TooLarge { nr_pages };
        let span = nr_pages.div_ceil(pb).checked_mul(pb).ok_or(too_large)?;
        let align = if nr_pages.is_power_of_two() { span } else { pb };
        let mut fits_somewhere = false;
        for (n, z) in self.zonelist(&req) {
            if !z.is_populated() || z.spanned() < span {
                continue;
            }
            fits_somewhere = true;
            // `span <= spanned`, so `last_start` cannot underflow and `pfn + span` cannot wrap.
            let last_start = z.end - span;
            let Some(mut pfn) = z.start.div_ceil(align).checked_mul(align) else {
                continue;
            };
            while pfn <= last_start {
                if Self::looks_free(n, pfn, pfn + span)
                    && self.alloc_contig_range(Pfn::new(pfn), span).is_ok()
                {
                    if span > nr_pages {
                        // Give back the rounding.
                        let _ = self.free_contig_range(Pfn::new(pfn + nr_pages), span - nr_pages);
                    }
                    return Ok(Pfn::new(pfn));
                }
                pfn += align;
            }
        }
        Err(if fits_somewhere {
            IsolateError::NotFound
        } else {
            too_large
        })
    }

    /// A lock-free hint: every block in `[s, e)` is free or on a per-CPU list.
    fn looks_free(n: &Node<'m>, s: u64, e: u64) -> bool {
        let mut pfn = s;
        while pfn < e {
            let f = n.mm.desc(pfn).flags();
            match f.state {
                PageState::Free | PageState::PerCpu => pfn += 1 << f.order,
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{build, mib, no_pcp};
    use crate::BuddyConfig;
    use mmkit_addr::Order;

    #[test]
    fn isolated_range_is_not_allocated_from_and_undo_restores() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let free = b.total_free();
        let start = Pfn::new(16 * 256);
        b.isolate_range(start, 2048).unwrap();
        b.verify().unwrap();
        assert_eq!(b.test_range_isolated(start, 2048), Ok(()));
        assert_eq!(b.free_pages_at_order(0), free - 2048);
        for _ in 0..100 {
            let p = b
                .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
                .unwrap();
            assert!(
                p.as_u64() >= 16 * 256 + 2048,
                "allocated from the isolated range"
            );
        }
        assert_eq!(
            b.isolate_range(start, 512),
            Err(IsolateError::AlreadyIsolated)
        );
        b.undo_isolate_range(start, 2048).unwrap();
        b.verify().unwrap();
        assert_eq!(
            b.undo_isolate_range(start, 2048),
            Err(IsolateError::NotIsolated)
        );
    }

    #[test]
    fn isolation_refuses_unmovable_pages_and_test_reports_busy() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let k = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        let pb = Pfn::new(k.as_u64() & !511);
        assert_eq!(
            b.isolate_range(pb, 512),
            Err(IsolateError::Unmovable { pfn: k })
        );
        let m = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
            .unwrap();
        let pbm = Pfn::new(m.as_u64() & !511);
        b.isolate_range(pbm, 512).unwrap();
        assert_eq!(
            b.test_range_isolated(pbm, 512),
            Err(IsolateError::Busy { pfn: m })
        );
        // Freeing into an isolated pageblock keeps the frame on the isolate list.
        b.free_pages(m, Order::new(0)).unwrap();
        assert_eq!(b.test_range_isolated(pbm, 512), Ok(()));
        b.verify().unwrap();
        b.undo_isolate_range(pbm, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(
            b.isolate_range(Pfn::new(16 * 256 + 1), 512),
            Err(IsolateError::BadRange)
        );
    }

    #[test]
    fn contig_allocation_beyond_max_order_and_back() {
        let b = build(&[&[mib(16, 32)]], BuddyConfig::default(), 2);
        let managed = b.total_managed();
        // 3000 frames: more than an order-10 block, not a power of two.
        let p = b
            .alloc_contig_pages(3000, GfpFlags::HIGHUSER_MOVABLE, 0)
            .unwrap();
        b.verify().unwrap();
        assert_eq!(b.allocated_block(p), Some((p, Order::new(0))));
        assert!(b.allocated_block(Pfn::new(p.as_u64() + 2999)).is_some());
        assert_eq!(b.allocated_block(Pfn::new(p.as_u64() + 3000)), None);
        assert_eq!(
            b.free_contig_range(p, 3001),
            Err(FreeError::DoubleFree),
            "one frame too many: nothing freed"
        );
        b.free_contig_range(p, 3000).unwrap();
        b.drain_all_pages();
        b.verify().unwrap();
        assert_eq!(b.total_free(), managed);
    }

    #[test]
    fn contig_allocation_names_bad_flags_and_nodes() {
        let b = build(&[&[mib(16, 32)]], BuddyConfig::default(), 1);
        let free = b.total_free();
        assert_eq!(
            b.alloc_contig_pages(600, GfpFlags::DMA | GfpFlags::DMA32, 0),
            Err(IsolateError::InvalidFlags(
                crate::GfpError::ConflictingZoneModifiers
            ))
        );
        assert_eq!(
            b.alloc_contig_pages(600, GfpFlags::HIGHUSER_MOVABLE, 1),
            Err(IsolateError::NoSuchNode(1))
        );
        assert_eq!(
            b.alloc_contig_pages(0, GfpFlags::HIGHUSER_MOVABLE, 0),
            Err(IsolateError::BadRange)
        );
        assert_eq!(b.total_free(), free, "nothing changed");
        b.verify().unwrap();
    }

    #[test]
    fn contig_range_in_use_fails_cleanly() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
            .unwrap();
        let pb = Pfn::new(m.as_u64() & !511);
        let free = b.total_free();
        assert_eq!(
            b.alloc_contig_range(pb, 512),
            Err(IsolateError::Busy { pfn: m })
        );
        assert_eq!(b.total_free(), free);
        b.verify().unwrap();
        // The range is usable again.
        b.isolate_range(pb, 512).unwrap();
        b.undo_isolate_range(pb, 512).unwrap();
    }

    #[test]
    fn contig_range_beside_an_isolated_pageblock_takes_only_its_range() {
        // Found by the model test: the range's free block merged with the isolated
        // neighbour and the whole merged block was taken.
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let managed = b.total_managed();
        let (a, n) = (Pfn::new(16 * 256), Pfn::new(16 * 256 + 512));
        b.isolate_range(n, 512).unwrap();
        b.alloc_contig_range(a, 512).unwrap();
        assert_eq!(b.allocated_block(n), None, "the neighbour stays free");
        b.verify().unwrap();
        b.free_contig_range(a, 512).unwrap();
        b.undo_isolate_range(n, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(b.total_free(), managed);
    }

    #[test]
    fn range_operations_refuse_extreme_starts_and_counts_unchanged() {
        use crate::testutil::{snapshot, EXTREMES, EXTREME_PFNS};
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let (zs, ze) = (16 * 256, 32 * 256);
        let before = snapshot(&b);
        let mut starts = EXTREME_PFNS.to_vec();
        // The zone's first and last pageblocks, and just past its end.
        starts.extend([zs, ze - 512, ze, ze + 512]);
        let mut counts = EXTREMES.to_vec();
        // One pageblock past the end from the zone start, and the whole zone plus one block.
        counts.extend([ze - zs + 512, 2 * 512]);
        for &s in &starts {
            for &nr in &counts {
                let (start, ctx) = (Pfn::new(s), (s, nr));
                let fits = nr != 0 && nr % 512 == 0 && s >= zs && s % 512 == 0 && s + nr <= ze;
                if !fits {
                    let bad = Err(IsolateError::BadRange);
                    assert_eq!(b.isolate_range(start, nr), bad, "isolate {ctx:x?}");
                    assert_eq!(b.test_range_isolated(start, nr), bad, "test {ctx:x?}");
                    assert_eq!(b.undo_isolate_range(start, nr), bad, "undo {ctx:x?}");
                    assert_eq!(b.alloc_contig_range(start, nr), bad, "contig {ctx:x?}");
                } else {
                    assert_eq!(
                        b.test_range_isolated(start, nr),
                        Err(IsolateError::NotIsolated)
                    );
                    assert_eq!(
                        b.undo_isolate_range(start, nr),
                        Err(IsolateError::NotIsolated)
                    );
                }
                if nr != 0 {
                    // Nothing is allocated, so every non-empty free is refused somehow.
                    assert!(b.free_contig_range(start, nr).is_err(), "free {ctx:x?}");
                } else {
                    let inside = (zs..ze).contains(&s);
                    assert_eq!(
                        b.free_contig_range(start, 0),
                        if inside {
                            Ok(())
                        } else {
                            Err(FreeError::OutsideZones)
                        },
                        "free of nothing at {s:#x}"
                    );
                }
                assert_eq!(snapshot(&b), before, "state changed by {ctx:x?}");
            }
        }
    }

    #[test]
    fn contig_pages_refuses_extreme_counts_unchanged() {
        use crate::testutil::snapshot;
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let before = snapshot(&b);
        let zone = 16 * 256;
        for (nr, want) in [
            (0, Err(IsolateError::BadRange)),
            (zone + 1, Err(IsolateError::TooLarge { nr_pages: zone + 1 })),
            (1 << 52, Err(IsolateError::TooLarge { nr_pages: 1 << 52 })),
            (
                u64::MAX / 2 + 1,
                Err(IsolateError::TooLarge {
                    nr_pages: u64::MAX / 2 + 1,
                }),
            ),
            (
                u64::MAX - 1,
                Err(IsolateError::TooLarge {
                    nr_pages: u64::MAX - 1,
                }),
            ),
            (u64::MAX, Err(IsolateError::TooLarge { nr_pages: u64::MAX })),
        ] {
            for node in [0, 1, usize::MAX] {
                let got = b.alloc_contig_pages(nr, GfpFlags::HIGHUSER_MOVABLE, node);
                let want = if node == 0 || nr == 0 {
                    want
                } else {
                    Err(IsolateError::NoSuchNode(node))
                };
                assert_eq!(got, want, "{nr:#x} pages on node {node}");
                assert_eq!(snapshot(&b), before, "state changed by {nr:#x}");
            }
        }
        // The smallest counts still work and give everything back.
        for nr in [1, 2, zone] {
            let p = b
                .alloc_contig_pages(nr, GfpFlags::HIGHUSER_MOVABLE, 0)
                .unwrap();
            b.free_contig_range(p, nr).unwrap();
            b.drain_all_pages();
            assert_eq!(snapshot(&b), before, "{nr} pages");
        }
    }
}
