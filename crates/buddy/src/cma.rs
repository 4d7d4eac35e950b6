//! Contiguous memory areas (Linux `mm/cma.c`, `MIGRATE_CMA`, the `cma=` boot option).
//!
//! A CMA area is a pageblock-aligned frame range of one zone whose pageblocks get the
//! migrate type [`MigrateType::Cma`]. It is declared once, at boot, right after the hand-off
//! freed its memory ([`declare_cma`](BuddyAllocator::declare_cma)); its frames stay managed
//! and free, and:
//!
//! * **Movable allocations borrow it** (Linux `__rmqueue` with `ALLOC_CMA`): a movable
//!   request takes from the CMA lists first when more than half of the zone's free memory is
//!   CMA, and otherwise before any fallback when the movable lists are empty. Nothing else
//!   ever takes a CMA page: CMA has no fallbacks of its own and is in no other type's
//!   fallback list, so unmovable memory never lands in an area.
//! * **A contiguous request takes it back**: [`cma_alloc`](BuddyAllocator::cma_alloc)
//!   picks the aligned run of the area that needs the fewest migrations and clears it with
//!   [`alloc_contig_range`](BuddyAllocator::alloc_contig_range), which migrates the borrowed
//!   movable blocks out of it (to movable memory first, module `isolate`).
//!   [`cma_release`](BuddyAllocator::cma_release) gives a run back to the area.
//! * **Free blocks of CMA pageblocks never merge** with other types' buddies at or above
//!   pageblock order (Linux `migratetype_is_mergeable`), so the area keeps its bounds.
//! * **Per-CPU lists**: a CMA page is freed straight to its zone's CMA list, never cached on
//!   a per-CPU list (Linux caches it on the movable list; going to the zone keeps every free
//!   CMA frame on a CMA list, so the free-CMA count and the isolation of an area are exact).
//!   A per-CPU refill for a movable request may take CMA pages onto the movable per-CPU list,
//!   as Linux does; isolating a range drains those back.
//!
//! Limits: runs start on pageblock boundaries (a smaller run leaves the rest of its pageblock
//! free but not usable by the next `cma_alloc`), and the watermark check counts free CMA pages
//! for every request, where Linux subtracts them for requests that may not use CMA; a
//! non-movable request that passes on CMA pages alone fails in the free-list search instead.

use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::BuddyAllocator;
use crate::error::{CmaError, IsolateError};
use crate::freearea::ZoneLocked;
use crate::isolate::RunSearch;
use crate::migrate::MigrateType;
use crate::page::PageState;

/// A contiguous memory area, as [`declare_cma`](BuddyAllocator::declare_cma) returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmaArea {
    start: Pfn,
    nr_pages: u64,
}

impl CmaArea {
    /// The area's first frame (pageblock-aligned).
    pub const fn start(&self) -> Pfn {
        self.start
    }

    /// The area's length in frames (whole pageblocks).
    pub const fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    /// Whether `[pfn, pfn + nr)` lies inside the area (`false` if it wraps).
    pub fn contains(&self, pfn: Pfn, nr: u64) -> bool {
        let s = self.start.as_u64();
        pfn.as_u64() >= s
            && pfn
                .as_u64()
                .checked_add(nr)
                .is_some_and(|e| e <= s + self.nr_pages)
    }
}

impl ZoneLocked<'_, '_> {
    /// Free frames on the zone's CMA lists (Linux `NR_FREE_CMA_PAGES`).
    pub(crate) fn nr_free_cma(&self) -> u64 {
        let t = MigrateType::Cma.index();
        (0..=self.p.max_order)
            .map(|o| u64::from(self.fa.counts[o as usize][t]) << o)
            .sum()
    }

    /// Linux's CMA balance rule: a movable request uses CMA first when more than half of the
    /// zone's free memory is CMA.
    pub(crate) fn cma_preferred(&self) -> bool {
        self.nr_free_cma() * 2 > self.zone.free_pages.load(Relaxed)
    }

    /// Frames in the zone's CMA pageblocks, isolated ones included (what
    /// `Zone::cma_pages` must equal; checked by `verify`).
    pub(crate) fn count_cma_pages(&self) -> u64 {
        let pages = self.p.pageblock_pages();
        let mut n = 0;
        let mut pb = self.zone.start;
        let end = self.zone.init_end(self.mm);
        while pb < end {
            let d = self.mm.desc(pb);
            let t = d.block_type();
            if t == MigrateType::Cma
                || (t == MigrateType::Isolate && d.saved_block_type() == MigrateType::Cma)
            {
                n += pages;
            }
            pb += pages;
        }
        n
    }
}

impl<P: IrqControl> BuddyAllocator<'_, P> {
    /// Turn the free, pageblock-aligned range `[start, start + nr_pages)` of one zone into
    /// a CMA area (Linux `cma_declare_contiguous` + `cma_activate_area`). Call after the
    /// boot hand-off freed the range and before it is used. Refused, changing nothing:
    /// `BadRange` (empty, unaligned, wrapping or not in one zone), `NotFree` (a frame is
    /// allocated, reserved or a hole), `WrongType` (a pageblock is already CMA, high-atomic
    /// or isolated).
    pub fn declare_cma(&self, start: Pfn, nr_pages: u64) -> Result<CmaArea, CmaError> {
        let (node, zone) = self
            .isolation_range(start.as_u64(), nr_pages)
            .map_err(|_| CmaError::BadRange)?;
        let (s, e) = (start.as_u64(), start.as_u64() + nr_pages);
        // Cached free pages of the range go back to the zone first.
        self.drain_zone_pcp(node, zone);
        let mut z = self.lock(node, zone);
        let pages = z.p.pageblock_pages();
        let mut pb = s;
        while pb < e {
            if !z.pageblock_type(pb).is_mergeable() {
                return Err(CmaError::WrongType { pfn: Pfn::new(pb) });
            }
            pb += pages;
        }
        let mut pfn = s;
        if let Some((h, f)) = z.find_block_head(s) {
            if h < s && f.state != PageState::Free {
                return Err(CmaError::NotFree { pfn: Pfn::new(s) });
            }
        }
        while pfn < e {
            let f = z.mm.desc(pfn).flags();
            if f.state != PageState::Free {
                return Err(CmaError::NotFree { pfn: Pfn::new(pfn) });
            }
            pfn += 1u64 << f.order;
        }
        // Validated: retype. Free blocks straddling the ends are split first; the blocks
        // inside move to the CMA lists, then whole free pageblocks merge as CMA.
        z.split_free_block_straddling(s);
        z.split_free_block_straddling(e);
        let mut pb = s;
        while pb < e {
            z.mm.desc(pb)
                .set_block_type(MigrateType::Cma, MigrateType::Cma);
            z.move_freepages_block(pb, MigrateType::Cma);
            pb += pages;
        }
        let mut pb = s;
        while pb < e {
            z.remerge_free_at(pb);
            pb += pages;
        }
        let now = zone.cma_pages.load(Relaxed) + nr_pages;
        zone.cma_pages.store(now, Relaxed);
        Ok(CmaArea { start, nr_pages })
    }

    /// Allocate `nr_pages` contiguous frames from `area`, starting on a multiple of
    /// `2^align_order` frames and on a pageblock boundary (Linux `cma_alloc`): the aligned
    /// run needing the fewest migrations is cleared by migrating its borrowed movable blocks
    /// out (up to [`CONTIG_CANDIDATES`](crate::CONTIG_CANDIDATES) runs are tried). Free with
    /// [`cma_release`](Self::cma_release).
    ///
    /// Errors, changing nothing: `BadRange` for zero pages or an alignment of 64 or more
    /// bits, `TooLarge` for more pages than the area holds; when no run could be taken, the
    /// last transient error (`Busy`, `NoTarget`) or else `NotFound`.
    pub fn cma_alloc(
        &self,
        area: &CmaArea,
        nr_pages: u64,
        align_order: u32,
    ) -> Result<Pfn, IsolateError> {
        if nr_pages == 0 {
            return Err(IsolateError::BadRange);
        }
        if nr_pages > area.nr_pages {
            return Err(IsolateError::TooLarge { nr_pages });
        }
        let pb = 1u64 << self.cfg.pageblock_order;
        let align = 1u64
            .checked_shl(align_order)
            .ok_or(IsolateError::BadRange)?
            .max(pb);
        // `nr_pages <= area.nr_pages`, a multiple of pageblocks: the rounding cannot wrap.
        let span = nr_pages.div_ceil(pb) * pb;
        let (node, _) = self
            .locate(area.start.as_u64())
            .ok_or(IsolateError::BadRange)?;
        let runs = RunSearch {
            from: area.start.as_u64(),
            to: area.start.as_u64() + area.nr_pages,
            span,
            align,
            cma: true,
            migrate: true,
        };
        let pfn = self.take_best_run(node, &runs)?;
        if span > nr_pages {
            // Give the rounding back to the area.
            let _ = self.free_contig_range(Pfn::new(pfn + nr_pages), span - nr_pages);
        }
        Ok(Pfn::new(pfn))
    }

    /// Give back `nr_pages` frames from `pfn` that [`cma_alloc`](Self::cma_alloc) returned
    /// from `area` (or part of them). Refused, changing nothing: `OutsideArea` for a run
    /// not wholly inside the area, `Free(..)` for frames that are not all allocated.
    pub fn cma_release(&self, area: &CmaArea, pfn: Pfn, nr_pages: u64) -> Result<(), CmaError> {
        if !area.contains(pfn, nr_pages) {
            return Err(CmaError::OutsideArea);
        }
        self.free_contig_range(pfn, nr_pages)
            .map_err(CmaError::Free)
    }

    /// Frames in CMA pageblocks, over every zone (Linux `CmaTotal`).
    pub fn cma_total(&self) -> u64 {
        self.nodes()
            .flat_map(|(_, n)| n.zones.iter())
            .map(|z| z.cma_pages.load(Relaxed))
            .sum()
    }

    /// Free frames on CMA lists, over every zone (Linux `CmaFree`).
    pub fn cma_free(&self) -> u64 {
        self.nodes()
            .flat_map(|(_, n)| n.zones.iter().map(move |z| (n, z)))
            .filter(|(_, z)| z.cma_pages.load(Relaxed) > 0)
            .map(|(n, z)| self.lock(n, z).nr_free_cma())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use mmkit_addr::Order;

    use super::*;
    use crate::mover::tests::leaked_mover;
    use crate::testutil::{build, mib, no_pcp, snapshot};
    use crate::{BuddyConfig, FreeError, GfpFlags};

    /// 64 MiB from 16 MiB (all DMA32); the CMA area is 8 MiB at 48 MiB.
    fn with_area() -> (crate::testutil::TestBuddy, CmaArea) {
        let b = build(&[&[mib(16, 64)]], no_pcp(), 1);
        let area = b.declare_cma(Pfn::new(48 * 256), 8 * 256).unwrap();
        b.verify().unwrap();
        (b, area)
    }

    fn in_area(area: &CmaArea, p: Pfn) -> bool {
        area.contains(p, 1)
    }

    #[test]
    fn declared_area_is_cma_in_reports_and_stays_free() {
        let (b, area) = with_area();
        assert_eq!(b.cma_total(), 8 * 256);
        assert_eq!(b.cma_free(), 8 * 256);
        assert_eq!(b.total_free(), b.total_managed(), "nothing allocated");
        assert_eq!(
            b.pageblock_migratetype(area.start()),
            Some(MigrateType::Cma)
        );
        let census = b.pageblock_census();
        assert_eq!(census.by_type[MigrateType::Cma.index()], 4);
        let info = std::format!("{}", b.pagetypeinfo());
        assert!(info.contains("CMA"), "{info}");
        // The area's free blocks do not merge with the movable memory around them.
        assert_eq!(
            b.zone_stats(0, crate::ZoneType::Dma32).unwrap().free_blocks[10]
                [MigrateType::Cma.index()],
            2
        );
    }

    #[test]
    fn unmovable_memory_never_lands_in_the_area() {
        let (b, area) = with_area();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)) {
            assert!(!in_area(&area, p), "unmovable page {p:?} in CMA");
        }
        assert_eq!(b.cma_free(), 8 * 256, "the area is untouched");
        b.verify().unwrap();
    }

    #[test]
    fn movable_memory_borrows_the_area_when_its_own_lists_are_empty() {
        let (b, area) = with_area();
        let mut used_cma = false;
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)) {
            if in_area(&area, p) {
                used_cma = true;
                break;
            }
        }
        assert!(used_cma, "movable allocations reached the area");
        b.verify().unwrap();
    }

    #[test]
    fn movable_memory_prefers_the_area_when_it_holds_over_half_the_free_memory() {
        // 16 MiB, 12 MiB of it CMA: the first movable page comes from the area.
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let area = b.declare_cma(Pfn::new(20 * 256), 12 * 256).unwrap();
        let p = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)).unwrap();
        assert!(in_area(&area, p));
        // A small area is left alone while movable memory lasts.
        let (b, area) = with_area();
        let p = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)).unwrap();
        assert!(!in_area(&area, p));
    }

    #[test]
    fn cma_pages_are_freed_to_the_zone_not_a_per_cpu_list() {
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 1);
        let area = b.declare_cma(Pfn::new(20 * 256), 12 * 256).unwrap();
        let p = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)).unwrap();
        assert!(in_area(&area, p));
        b.drain_all_pages();
        let free = b.cma_free();
        b.free_pages(p, Order::new(0)).unwrap();
        assert_eq!(b.total_pcp(), 0);
        assert_eq!(b.cma_free(), free + 1);
        b.verify().unwrap();
    }

    #[test]
    fn cma_alloc_migrates_borrowed_pages_out_and_release_gives_the_run_back() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let area = b.declare_cma(Pfn::new(20 * 256), 12 * 256).unwrap();
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        // Movable pages with a mover, spread over the area and the rest of the zone.
        let mut pages = std::vec::Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)) {
            m.own(p, Order::new(0), p.as_u64());
            b.set_mover(p, Order::new(0), Some(id)).unwrap();
            pages.push(p);
        }
        for p in pages.iter().step_by(2) {
            m.blocks.lock().unwrap().remove(&p.as_u64());
            b.free_pages(*p, Order::new(0)).unwrap();
        }
        let live = m.blocks.lock().unwrap().len();
        let free = b.total_free();
        let run = b.cma_alloc(&area, 1024, 10).unwrap();
        b.verify().unwrap();
        assert!(area.contains(run, 1024));
        assert_eq!(run.as_u64() % 1024, 0, "aligned to 2^10");
        let owned = m.blocks.lock().unwrap();
        assert_eq!(owned.len(), live, "no block lost");
        assert!(owned
            .keys()
            .all(|&p| p < run.as_u64() || p >= run.as_u64() + 1024));
        drop(owned);
        assert_eq!(b.total_free(), free - 1024);
        b.cma_release(&area, run, 1024).unwrap();
        b.verify().unwrap();
        assert_eq!(b.total_free(), free);
        assert_eq!(b.cma_total(), 12 * 256);
    }

    #[test]
    fn cma_alloc_of_a_partial_pageblock_gives_the_rest_back() {
        let (b, area) = with_area();
        let free = b.total_free();
        let run = b.cma_alloc(&area, 3, 0).unwrap();
        assert_eq!(b.total_free(), free - 3);
        b.verify().unwrap();
        b.cma_release(&area, run, 3).unwrap();
        assert_eq!(b.cma_free(), 8 * 256);
        b.verify().unwrap();
    }

    #[test]
    fn declare_refuses_bad_ranges_used_frames_and_typed_pageblocks_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let k = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        let before = snapshot(&b);
        let s = Pfn::new(24 * 256);
        for (start, nr) in [
            (s, 0),
            (s, 511),
            (Pfn::new(s.as_u64() + 1), 512),
            (s, 16 * 256),
            (Pfn::new(u64::MAX - 511), 512),
            (Pfn::new(0), 512),
        ] {
            assert_eq!(b.declare_cma(start, nr), Err(CmaError::BadRange));
        }
        let kb = Pfn::new(k.as_u64() & !511);
        assert_eq!(b.declare_cma(kb, 512), Err(CmaError::NotFree { pfn: k }));
        assert_eq!(snapshot(&b), before);
        b.declare_cma(s, 512).unwrap();
        let before = snapshot(&b);
        assert_eq!(b.declare_cma(s, 1024), Err(CmaError::WrongType { pfn: s }));
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn cma_alloc_and_release_refuse_bad_requests_unchanged() {
        let (b, area) = with_area();
        let before = snapshot(&b);
        assert_eq!(b.cma_alloc(&area, 0, 0), Err(IsolateError::BadRange));
        assert_eq!(b.cma_alloc(&area, 1, 64), Err(IsolateError::BadRange));
        assert_eq!(b.cma_alloc(&area, 1, u32::MAX), Err(IsolateError::BadRange));
        let more = area.nr_pages() + 1;
        assert_eq!(
            b.cma_alloc(&area, more, 0),
            Err(IsolateError::TooLarge { nr_pages: more })
        );
        // Aligned beyond the area: no run.
        assert_eq!(b.cma_alloc(&area, 512, 30), Err(IsolateError::NotFound));
        assert_eq!(
            b.cma_release(&area, Pfn::new(0), 1),
            Err(CmaError::OutsideArea)
        );
        assert_eq!(
            b.cma_release(&area, area.start(), u64::MAX),
            Err(CmaError::OutsideArea)
        );
        assert_eq!(
            b.cma_release(&area, area.start(), 1),
            Err(CmaError::Free(FreeError::DoubleFree))
        );
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn contig_pages_outside_cma_leave_the_area_alone() {
        let (b, area) = with_area();
        let mut runs = std::vec::Vec::new();
        while let Ok(p) = b.alloc_contig_pages(512, GfpFlags::HIGHUSER_MOVABLE, 0) {
            assert!(!area.contains(p, 1));
            runs.push(p);
        }
        assert_eq!(b.cma_free(), 8 * 256);
        for p in runs {
            b.free_contig_range(p, 512).unwrap();
        }
        b.verify().unwrap();
    }
}
