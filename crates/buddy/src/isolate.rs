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
//! * **Test** says whether every frame of the range is free.
//! * **Undo** restores the types, moves the free blocks back and lets whole free pageblocks
//!   merge with their neighbours again.
//!
//! ## `alloc_contig_range`: isolate, migrate, test, take
//! 1. *Survey* under the zone lock, changing nothing: a hole is `Hole`, a reserved frame or
//!    a block not allocated as movable is `Unmovable`, a movable block without a
//!    [mover](crate::Mover) is `NoMover`. An allocated block that straddles an end of the
//!    range (larger than a pageblock) widens what is isolated to the whole block.
//! 2. *Isolate* the (widened) range; this drains the per-CPU lists.
//! 3. *Migrate* every allocated block of it with its mover, to the smallest free block
//!    outside it (movable lists first, then CMA, then the other types' lists; isolated
//!    pageblocks are on no such list, and a target inside the range is skipped). A block
//!    freed or reallocated meanwhile is looked at again (up to three walks). Mover answers
//!    map to errors: busy → `Busy`, refused → `Refused`, no free target → `NoTarget` (a
//!    block of order k needs a free block of order k: free memory in smaller pieces does
//!    not do).
//! 4. *Test* that the range is free, take every frame as an order-0 movable allocation,
//!    restore the range's pageblock types, and undo the isolation of the widening.
//!
//! Any failure undoes the isolation: free counts, pageblock types and `verify()` are as
//! before; blocks already migrated stay at their new place with their owner. Errors that
//! may go away by themselves say so ([`IsolateError::is_transient`]).
//!
//! ## `alloc_contig_pages`: choose a run
//! Aligned runs (the count rounded up to pageblocks, on a boundary of its size when it is a
//! power of two) of each zone in zonelist order are costed lock-free: `None` if a frame is
//! a hole, reserved, unmovable, movable without a mover, isolated or CMA, else the number of
//! blocks to migrate. A free run is taken at once; otherwise the [`CONTIG_CANDIDATES`]
//! cheapest runs of the zone are tried in order. When they all fail transiently (a busy
//! mover, no target), the search is made again, up to three times: the blocks a failed
//! candidate already moved changed the costs. Requests that may not block take free runs
//! only. `cma_alloc` (module `cma`) runs the same search over CMA pageblocks only.
//! `free_contig_range` gives runs back.

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::{AllocError, FreeError, IsolateError, MigrateError};
use crate::freearea::ZoneLocked;
use crate::gfp::GfpFlags;
use crate::migrate::MigrateType;
use crate::page::{Flags, PageState};
use crate::zone::Zone;

impl ZoneLocked<'_, '_> {
    /// Split a free block that contains `pfn` but starts before it, so that no free block
    /// crosses `pfn`.
    pub(crate) fn split_free_block_straddling(&mut self, pfn: u64) {
        if pfn >= self.zone.init_end(self.mm) {
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
    pub(crate) fn remerge_free_at(&mut self, pb: u64) {
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
    pub(crate) fn isolation_range(
        &self,
        start: u64,
        nr: u64,
    ) -> Result<(&Node<'m>, &Zone<'m>), IsolateError> {
        let pb = 1u64 << self.cfg.pageblock_order;
        let end = start.checked_add(nr).ok_or(IsolateError::BadRange)?;
        if nr == 0 || start % pb != 0 || nr % pb != 0 {
            return Err(IsolateError::BadRange);
        }
        let (node, zone) = self.locate(start).ok_or(IsolateError::BadRange)?;
        if end > zone.init_end(&node.mm) {
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
                // A pageblock of a section without memory has no descriptors of its own
                // (sparse memmap) and no type to change.
                if !node.mm.has_own_desc(pb) {
                    return Err(IsolateError::Hole { pfn: Pfn::new(pb) });
                }
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
                z.move_freepages_block(pb, MigrateType::Isolate);
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
            z.move_freepages_block(pb, restore);
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
        if end < z.zone.init_end(z.mm) {
            z.remerge_free_at(end);
        }
    }

    /// Allocate every frame of the pageblock-aligned range `[start, start + nr_pages)` as
    /// order-0 pages (free them with [`free_contig_range`](Self::free_contig_range)),
    /// migrating the allocated movable blocks of the range out of it first (module docs).
    ///
    /// Refusals that cannot succeed later: `BadRange`, `Hole`, `Unmovable`, `NoMover`,
    /// `Refused`. Transient ones ([`IsolateError::is_transient`]): `Busy` (a mover was
    /// busy, or a block was being freed or migrated), `NoTarget`, `AlreadyIsolated`. On
    /// every error the isolation is undone, free counts are as before and
    /// [`verify`](Self::verify) holds; blocks already migrated stay where they went (their
    /// owners hold them there, contents intact).
    pub fn alloc_contig_range(&self, start: Pfn, nr_pages: u64) -> Result<(), IsolateError> {
        let (node, zone) = self.isolation_range(start.as_u64(), nr_pages)?;
        let (s, e) = (start.as_u64(), start.as_u64() + nr_pages);
        // What stands in the way, before anything changes; and how far blocks straddling the
        // range reach (those are isolated and migrated whole).
        let (lo, hi) = {
            let z = self.lock(node, zone);
            let survey = Self::survey_range_locked(&z, s, e)?;
            (survey.lo, survey.hi)
        };
        self.isolate_range(Pfn::new(lo), hi - lo)?;
        let evacuated = self.evacuate_range(node, zone, lo, hi);
        let mut z = self.lock(node, zone);
        // A free block may reach over either end (merged with an isolated neighbour, or a
        // straddling block freed whole by its migration): cut it at the ends first.
        z.split_free_block_straddling(s);
        z.split_free_block_straddling(e);
        if let Err(err) = evacuated.and_then(|()| Self::test_isolated_locked(&z, s, e)) {
            self.unisolate_locked(&mut z, lo, hi);
            return Err(err);
        }
        let mut pfn = s;
        while pfn < e {
            let f = z.mm.desc(pfn).flags();
            z.del_from_free_list(pfn, f.order, f.mt);
            for p in pfn..pfn + (1u64 << f.order) {
                node.mm.desc(p).set_allocated(0, MigrateType::Movable);
                node.mm
                    .tally_movable(p, 0, MigrateType::Movable, z.p.pageblock_order, true);
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
        // The pageblocks isolated only for a straddling block go back as they were.
        if lo < s {
            self.unisolate_locked(&mut z, lo, s);
        }
        if e < hi {
            self.unisolate_locked(&mut z, e, hi);
        }
        Ok(())
    }

    /// Check that `[s, e)` could be cleared by migration: no hole, reserved frame,
    /// non-movable block or movable block without a mover. Returns the bounds widened to
    /// whole blocks that straddle the range.
    fn survey_range_locked(z: &ZoneLocked<'_, 'm>, s: u64, e: u64) -> Result<Survey, IsolateError> {
        let mut survey = Survey { lo: s, hi: e };
        let mut pfn = first_block_from(z.mm, z.p.max_order, s);
        survey.lo = survey.lo.min(pfn);
        while pfn < e {
            let f = z.mm.desc(pfn).flags();
            let here = Pfn::new(pfn);
            match f.state {
                PageState::Hole => return Err(IsolateError::Hole { pfn: here }),
                PageState::Reserved | PageState::Tail => {
                    return Err(IsolateError::Unmovable { pfn: here })
                }
                PageState::Allocated => {
                    Self::check_block_movable(z.mm.desc(pfn), f, here)?;
                    survey.hi = survey.hi.max(pfn + (1u64 << f.order));
                }
                PageState::Free | PageState::PerCpu => {}
            }
            pfn += 1u64 << f.order;
        }
        Ok(survey)
    }

    /// Whether the allocated block `d` (flags `f`) at `pfn` can be migrated.
    fn check_block_movable(
        d: &crate::page::PageDesc,
        f: Flags,
        pfn: Pfn,
    ) -> Result<(), IsolateError> {
        if f.mt != MigrateType::Movable {
            Err(IsolateError::Unmovable { pfn })
        } else if d.mover_id() == 0 {
            Err(IsolateError::NoMover { pfn })
        } else {
            Ok(())
        }
    }

    /// Migrate every allocated block of the isolated `[lo, hi)` out of it, to free blocks
    /// outside it. A block freed or changed meanwhile is looked at again on the next pass.
    fn evacuate_range(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        lo: u64,
        hi: u64,
    ) -> Result<(), IsolateError> {
        for _ in 0..EVACUATE_PASSES {
            let mut again = false;
            let mut pfn = lo;
            while pfn < hi {
                let d = node.mm.desc(pfn);
                let f = d.flags();
                let step = match f.state {
                    PageState::Free | PageState::PerCpu => 1u64 << f.order,
                    PageState::Allocated => {
                        let here = Pfn::new(pfn);
                        Self::check_block_movable(d, f, here)?;
                        let moved = self.migrate_block_in(node, zone, pfn, f.order, |z, o| {
                            z.take_contig_target(o, lo, hi)
                        });
                        self.count_migration(&moved);
                        match moved {
                            Ok(_) => {}
                            // Freed or reallocated meanwhile: look again.
                            Err(MigrateError::NotAllocated) => again = true,
                            Err(MigrateError::NotMovable) => {
                                return Err(IsolateError::Unmovable { pfn: here })
                            }
                            Err(MigrateError::NoMover) => {
                                return Err(IsolateError::NoMover { pfn: here })
                            }
                            Err(MigrateError::Refused) => {
                                return Err(IsolateError::Refused { pfn: here })
                            }
                            Err(MigrateError::NoTarget) => {
                                return Err(IsolateError::NoTarget { pfn: here })
                            }
                            Err(
                                MigrateError::Busy
                                | MigrateError::AlreadyMigrating
                                | MigrateError::OutsideZones,
                            ) => return Err(IsolateError::Busy { pfn: here }),
                        }
                        1u64 << f.order
                    }
                    // A head that changed under us (a merge or split in flight) or a tail:
                    // walk on frame by frame and look again.
                    _ => {
                        again = true;
                        1
                    }
                };
                pfn += step;
            }
            if !again {
                return Ok(());
            }
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
        if e > zone.init_end(&node.mm) {
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
            if let Ok(old) = node.mm.desc(p).begin_free(0, tail) {
                node.mm
                    .tally_movable(p, 0, old.mt, z.p.pageblock_order, false);
                let mt = z.pageblock_type(p);
                z.free_one_page(p, 0, mt, false);
            }
        }
        Ok(())
    }

    /// Find and allocate `nr_pages` contiguous frames (any count, even beyond the max
    /// order) in the zones `gfp` allows on `node` and its fallbacks. The run starts on a
    /// boundary of its size rounded up to pageblocks. Free with
    /// [`free_contig_range`](Self::free_contig_range).
    ///
    /// Candidate runs are those whose blocks are all free or movable with a mover (outside
    /// CMA areas); a free run is taken at once, otherwise the [`CONTIG_CANDIDATES`] runs
    /// needing the fewest migrations in each zone are tried in that order with
    /// [`alloc_contig_range`](Self::alloc_contig_range). A request that may not block
    /// ([`GfpFlags::is_non_blocking`]) takes free runs only.
    ///
    /// Errors: `BadRange` for zero pages, `InvalidFlags` / `NoSuchNode` for a bad request,
    /// `TooLarge` when the count (rounded up to pageblocks) is longer than every zone the
    /// request may use (including counts whose rounding would wrap `u64`); when no candidate
    /// could be taken, the last transient error of a tried candidate (`Busy`, `NoTarget`),
    /// else `NotFound`.
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
        let migrate = !gfp.is_non_blocking();
        loop {
            let mut fits_somewhere = false;
            let mut last = IsolateError::NotFound;
            for (n, z) in self.zonelist(&req) {
                if !z.is_populated() || z.spanned() < span {
                    continue;
                }
                fits_somewhere = true;
                let runs = RunSearch {
                    from: z.start,
                    to: z.init_end(&n.mm),
                    span,
                    align,
                    cma: false,
                    migrate,
                };
                match self.take_best_run(n, &runs) {
                    Ok(pfn) => {
                        if span > nr_pages {
                            // Give back the rounding.
                            let _ =
                                self.free_contig_range(Pfn::new(pfn + nr_pages), span - nr_pages);
                        }
                        return Ok(Pfn::new(pfn));
                    }
                    Err(e) if e.is_transient() => last = e,
                    Err(_) => {}
                }
            }
            // No run yet: while a node the request may use has deferred frames in a zone it
            // may use, initialise more of it and look again (Linux grows the zone from the
            // contiguous allocator's path too).
            if self.grow_for(req.node, req.this_node, req.highest) {
                continue;
            }
            return Err(if fits_somewhere { last } else { too_large });
        }
    }

    /// Search `[from, to)` for aligned runs of `span` frames that could be taken, and take
    /// one: a run needing no migration at once, else the cheapest candidates in turn.
    pub(crate) fn take_best_run(
        &self,
        n: &Node<'m>,
        runs: &RunSearch,
    ) -> Result<u64, IsolateError> {
        let mut last = IsolateError::NotFound;
        for _ in 0..CONTIG_ROUNDS {
            match self.take_best_run_once(n, runs) {
                Ok(pfn) => return Ok(pfn),
                // Failed candidates may have moved blocks already, so the costs changed: a
                // fresh search can succeed where the last one's candidates did not.
                Err(e) if e.is_transient() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// One search of [`take_best_run`](Self::take_best_run).
    fn take_best_run_once(&self, n: &Node<'m>, runs: &RunSearch) -> Result<u64, IsolateError> {
        let mut best = [(u64::MAX, 0u64); CONTIG_CANDIDATES];
        let mut last = IsolateError::NotFound;
        let Some(mut pfn) = runs.from.div_ceil(runs.align).checked_mul(runs.align) else {
            return Err(last);
        };
        // `pfn + span` cannot wrap: `from <= pfn` and `pfn + span <= to` are checked first.
        while pfn.checked_add(runs.span).is_some_and(|e| e <= runs.to) {
            match self.run_cost(n, pfn, pfn + runs.span, runs.cma) {
                Some(0) => match self.alloc_contig_range(Pfn::new(pfn), runs.span) {
                    Ok(()) => return Ok(pfn),
                    Err(e) => last = e,
                },
                Some(cost) if runs.migrate => {
                    // Keep the cheapest few, cheapest first (insertion into a tiny array).
                    if let Some(i) = best.iter().position(|&(c, _)| cost < c) {
                        best.copy_within(i..CONTIG_CANDIDATES - 1, i + 1);
                        best[i] = (cost, pfn);
                    }
                }
                _ => {}
            }
            pfn += runs.align;
        }
        for &(cost, pfn) in &best {
            if cost == u64::MAX {
                break;
            }
            match self.alloc_contig_range(Pfn::new(pfn), runs.span) {
                Ok(()) => return Ok(pfn),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A lock-free estimate of the migrations `[s, e)` needs: `None` when it holds a hole,
    /// a reserved frame, an unmovable block, a movable block without a mover, an isolated
    /// pageblock, or (unless `cma`) a CMA pageblock; with `cma`, every pageblock must be CMA.
    fn run_cost(&self, n: &Node<'m>, s: u64, e: u64, cma: bool) -> Option<u64> {
        let pages = 1u64 << self.cfg.pageblock_order;
        let mut pb = s;
        while pb < e {
            let t = n.mm.desc(pb).block_type();
            if (t == MigrateType::Cma) != cma || t == MigrateType::Isolate {
                return None;
            }
            pb += pages;
        }
        let mut cost = 0;
        let mut pfn = first_block_from(&n.mm, self.cfg.max_order, s);
        while pfn < e {
            let d = n.mm.desc(pfn);
            let f = d.flags();
            match f.state {
                PageState::Free | PageState::PerCpu => {}
                PageState::Allocated
                    if Self::check_block_movable(d, f, Pfn::new(pfn)).is_ok()
                        && !d.is_migrating() =>
                {
                    cost += 1
                }
                _ => return None,
            }
            pfn += 1u64 << f.order;
        }
        Some(cost)
    }
}

/// Where a block-by-block walk of a range starting at `s` begins: the head of an allocated
/// block that straddles `s` (it must move whole), the end of a free or per-CPU block that
/// straddles it (nothing of it to look at), else `s`.
fn first_block_from(mm: &crate::page::Memmap<'_>, max_order: u32, s: u64) -> u64 {
    match crate::freearea::find_block_head(mm, max_order, s) {
        Some((h, f)) if h < s && f.state == PageState::Allocated => h,
        Some((h, f)) if h < s => h + (1u64 << f.order),
        _ => s,
    }
}

/// How many candidate runs needing migration [`alloc_contig_pages`] and
/// [`cma_alloc`](BuddyAllocator::cma_alloc) try per zone or area before giving up.
///
/// [`alloc_contig_pages`]: BuddyAllocator::alloc_contig_pages
pub const CONTIG_CANDIDATES: usize = 4;

/// How many searches [`alloc_contig_pages`](BuddyAllocator::alloc_contig_pages) and
/// [`cma_alloc`](BuddyAllocator::cma_alloc) make while their candidates fail transiently.
const CONTIG_ROUNDS: usize = 3;

/// How many times [`alloc_contig_range`](BuddyAllocator::alloc_contig_range) walks its
/// range migrating blocks (a block freed or reallocated meanwhile is seen on the next walk).
const EVACUATE_PASSES: usize = 3;

/// What [`survey_range_locked`](BuddyAllocator::survey_range_locked) found.
struct Survey {
    /// First frame of the first block touching the range.
    lo: u64,
    /// One past the last frame of the last block touching the range.
    hi: u64,
}

/// Where [`take_best_run`](BuddyAllocator::take_best_run) looks.
pub(crate) struct RunSearch {
    pub from: u64,
    pub to: u64,
    pub span: u64,
    pub align: u64,
    /// Search CMA pageblocks (and only those) instead of avoiding them.
    pub cma: bool,
    /// Consider runs that need migration.
    pub migrate: bool,
}

impl ZoneLocked<'_, '_> {
    /// A migration target of `order` for a block leaving the isolated `[lo, hi)`: the
    /// smallest free block of at least that order outside it, from the movable lists, then
    /// CMA, then (stealing, as Linux's target allocation may) the other types' lists. Unlike
    /// compaction's targets these may be split from a whole free pageblock: the range being
    /// cleared matters more than the free pageblock elsewhere.
    pub(crate) fn take_contig_target(&mut self, order: u32, lo: u64, hi: u64) -> Option<u64> {
        const ORDER: [MigrateType; 4] = [
            MigrateType::Movable,
            MigrateType::Cma,
            MigrateType::Reclaimable,
            MigrateType::Unmovable,
        ];
        for mt in ORDER {
            for have in order..=self.p.max_order {
                let mut idx = self.fa.lists[have as usize][mt.index()].head;
                while idx != crate::page::NIL {
                    let h = self.mm.pfn(idx);
                    if h + (1u64 << have) <= lo || h >= hi {
                        return Some(self.take_free_block(h, have, order, mt));
                    }
                    idx = self.mm.at(idx).next();
                }
            }
        }
        None
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
        // Movable by type only (no mover): the range cannot be cleared.
        assert_eq!(
            b.alloc_contig_range(pb, 512),
            Err(IsolateError::NoMover { pfn: m })
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

    // ---- migration (issue 10 item 5) ------------------------------------------------------

    use crate::mover::tests::{free_frames, leaked_mover, TagMover};
    use crate::testutil::{snapshot, TestBuddy};

    /// Allocate movable frames of `order` named on `m` until the zone path refuses (the
    /// watermark); returns them in allocation order.
    fn fill(b: &TestBuddy, m: &'static TagMover, order: u32) -> std::vec::Vec<Pfn> {
        let id = b.register_mover(m).unwrap();
        let mut got = std::vec::Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::MOVABLE, Order::new(order)) {
            m.own(p, Order::new(order), p.as_u64());
            b.set_mover(p, Order::new(order), Some(id)).unwrap();
            got.push(p);
        }
        got
    }

    /// Free every other block of `blocks` (a checkerboard: no free pageblock anywhere).
    fn free_every_other(b: &TestBuddy, m: &TagMover, blocks: &[Pfn], order: u32) {
        for p in blocks.iter().step_by(2) {
            m.blocks.lock().unwrap().remove(&p.as_u64());
            b.free_pages(*p, Order::new(order)).unwrap();
        }
    }

    fn owned_in(m: &TagMover, s: u64, e: u64) -> usize {
        m.blocks
            .lock()
            .unwrap()
            .keys()
            .filter(|&&p| (s..e).contains(&p))
            .count()
    }

    #[test]
    fn contig_range_migrates_movable_blocks_out_and_takes_the_range() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let blocks = fill(&b, m, 0);
        free_every_other(&b, m, &blocks, 0);
        let pb = Pfn::new(blocks[blocks.len() / 2].as_u64() & !511);
        let (s, e) = (pb.as_u64(), pb.as_u64() + 512);
        let inside = owned_in(m, s, e);
        assert!(inside > 0, "the pageblock holds owned blocks");
        let (free, live) = (b.total_free(), m.blocks.lock().unwrap().len());
        let (moved_before, _) = b.migrate_counts();
        b.alloc_contig_range(pb, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(owned_in(m, s, e), 0, "every owned block left the range");
        assert_eq!(m.blocks.lock().unwrap().len(), live, "no block was lost");
        assert_eq!(b.migrate_counts().0 - moved_before, inside as u64);
        assert_eq!(b.total_free(), free - 512, "migration keeps free counts");
        assert_eq!(b.pageblock_migratetype(pb), Some(MigrateType::Movable));
        b.free_contig_range(pb, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(b.total_free(), free);
    }

    #[test]
    fn contig_range_migrates_a_block_straddling_the_range_whole() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let big = b.alloc_pages(GfpFlags::MOVABLE, Order::new(10)).unwrap();
        m.own(big, Order::new(10), 7);
        b.set_mover(big, Order::new(10), Some(id)).unwrap();
        let free = b.total_free();
        // Take only the upper pageblock of the order-10 block.
        let upper = Pfn::new(big.as_u64() + 512);
        b.alloc_contig_range(upper, 512).unwrap();
        b.verify().unwrap();
        let moved_to = *m.blocks.lock().unwrap().keys().next().unwrap();
        assert_ne!(moved_to, big.as_u64(), "the whole block moved");
        assert!(moved_to + 1024 <= big.as_u64() || moved_to >= big.as_u64() + 1024);
        // The lower pageblock is free and allocatable again, not left isolated.
        assert_eq!(b.pageblock_migratetype(big), Some(MigrateType::Movable));
        assert_eq!(b.allocated_block(big), None);
        assert_eq!(b.total_free(), free - 512);
        b.free_contig_range(upper, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(b.total_free(), free);
    }

    #[test]
    fn contig_range_inside_a_larger_free_block_takes_only_its_pageblock() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let managed = b.total_managed();
        // Frames 0x1000..0x1400 are one free order-10 block: take its upper half only.
        let upper = Pfn::new(16 * 256 + 512);
        b.alloc_contig_range(upper, 512).unwrap();
        b.verify().unwrap();
        assert_eq!(b.allocated_block(Pfn::new(16 * 256)), None);
        assert_eq!(b.total_free(), managed - 512);
        b.free_contig_range(upper, 512).unwrap();
        b.verify().unwrap();
        // Every odd pageblock of a free zone is a candidate run too.
        let mut runs = std::vec::Vec::new();
        while let Ok(p) = b.alloc_contig_pages(512, GfpFlags::MOVABLE, 0) {
            runs.push(p);
        }
        assert_eq!(runs.len() as u64, managed / 512);
        for p in runs {
            b.free_contig_range(p, 512).unwrap();
        }
        b.verify().unwrap();
        assert_eq!(b.total_free(), managed);
    }

    /// What a refused `alloc_contig_range` must leave unchanged besides `snapshot`: every
    /// pageblock of the zone has its old type and the range can be isolated again.
    fn assert_range_restored(b: &TestBuddy, pb: Pfn) {
        assert_eq!(b.pageblock_migratetype(pb), Some(MigrateType::Movable));
        b.isolate_range(pb, 512).unwrap();
        b.undo_isolate_range(pb, 512).unwrap();
    }

    #[test]
    fn contig_range_with_a_busy_mover_is_busy_transient_and_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let blocks = fill(&b, m, 0);
        let pb = Pfn::new(blocks[100].as_u64() & !511);
        m.busy_every.store(1, std::sync::atomic::Ordering::Relaxed);
        let before = snapshot(&b);
        let got = b.alloc_contig_range(pb, 512);
        assert!(matches!(got, Err(IsolateError::Busy { .. })), "{got:?}");
        assert!(got.unwrap_err().is_transient());
        assert_eq!(snapshot(&b), before);
        assert_range_restored(&b, pb);
    }

    #[test]
    fn contig_range_with_a_refusing_mover_is_refused_and_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        // Named on the mover, but the mover does not know the block: it refuses.
        let p = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)).unwrap();
        b.set_mover(p, Order::new(0), Some(id)).unwrap();
        let pb = Pfn::new(p.as_u64() & !511);
        let before = snapshot(&b);
        let got = b.alloc_contig_range(pb, 512);
        assert_eq!(got, Err(IsolateError::Refused { pfn: p }));
        assert!(!got.unwrap_err().is_transient());
        assert_eq!(snapshot(&b), before);
        assert_range_restored(&b, pb);
    }

    #[test]
    fn contig_range_with_unmovable_pages_is_refused_and_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let k = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        let pb = Pfn::new(k.as_u64() & !511);
        let before = snapshot(&b);
        assert_eq!(
            b.alloc_contig_range(pb, 512),
            Err(IsolateError::Unmovable { pfn: k })
        );
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn contig_range_over_a_hole_is_refused_and_unchanged() {
        // 16..18 MiB and 20..32 MiB: frames 0x1200..0x1400 are a hole inside DMA32.
        let b = build(&[&[mib(16, 2), mib(20, 12)]], no_pcp(), 1);
        let before = snapshot(&b);
        let hole = Pfn::new(18 * 256);
        assert_eq!(
            b.alloc_contig_range(hole, 512),
            Err(IsolateError::Hole { pfn: hole })
        );
        assert_eq!(
            b.alloc_contig_range(Pfn::new(16 * 256), 1024),
            Err(IsolateError::Hole { pfn: hole })
        );
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn contig_range_across_zones_is_refused_and_unchanged() {
        // DMA ends at 16 MiB: a range over the boundary is in no one zone.
        let b = build(&[&[mib(0, 32)]], no_pcp(), 1);
        let before = snapshot(&b);
        assert_eq!(
            b.alloc_contig_range(Pfn::new(16 * 256 - 512), 1024),
            Err(IsolateError::BadRange)
        );
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn contig_range_with_bad_counts_is_refused_and_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let before = snapshot(&b);
        let s = Pfn::new(16 * 256);
        for nr in [0, 1, 511, 513, 16 * 256 + 512, u64::MAX] {
            assert_eq!(
                b.alloc_contig_range(s, nr),
                Err(IsolateError::BadRange),
                "{nr}"
            );
        }
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn contig_range_without_a_migration_target_is_no_target_and_unchanged() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let p = b.alloc_pages(GfpFlags::MOVABLE, Order::new(0)).unwrap();
        m.own(p, Order::new(0), 1);
        b.set_mover(p, Order::new(0), Some(id)).unwrap();
        let pb = p.as_u64() & !511;
        // Every other pageblock isolated: the only free frames are inside the range.
        let others = (16 * 256..32 * 256).step_by(512).filter(|&o| o != pb);
        for o in others.clone() {
            b.isolate_range(Pfn::new(o), 512).unwrap();
        }
        let before = snapshot(&b);
        let got = b.alloc_contig_range(Pfn::new(pb), 512);
        assert_eq!(got, Err(IsolateError::NoTarget { pfn: p }));
        assert!(got.unwrap_err().is_transient());
        assert_eq!(snapshot(&b), before);
        for o in others {
            b.undo_isolate_range(Pfn::new(o), 512).unwrap();
        }
        // With room elsewhere again, the same request succeeds.
        b.alloc_contig_range(Pfn::new(pb), 512).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn contig_pages_migrate_when_no_run_is_free() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let blocks = fill(&b, m, 0);
        free_every_other(&b, m, &blocks, 0);
        let live = m.blocks.lock().unwrap().len();
        // A request that may not block takes free runs only: there are none.
        assert_eq!(
            b.alloc_contig_pages(512, GfpFlags::MOVABLE, 0),
            Err(IsolateError::NotFound)
        );
        let p = b
            .alloc_contig_pages(512, GfpFlags::HIGHUSER_MOVABLE, 0)
            .unwrap();
        b.verify().unwrap();
        assert_eq!(owned_in(m, p.as_u64(), p.as_u64() + 512), 0);
        assert_eq!(m.blocks.lock().unwrap().len(), live);
        b.free_contig_range(p, 512).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn contig_pages_prefer_the_run_needing_fewest_migrations() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let m = leaked_mover();
        let blocks = fill(&b, m, 0);
        // Free all but one block of one pageblock, every other block elsewhere.
        let cheap = blocks[blocks.len() / 2].as_u64() & !511;
        let keep = blocks
            .iter()
            .find(|p| p.as_u64() & !511 == cheap)
            .copied()
            .unwrap();
        for (i, p) in blocks.iter().enumerate() {
            let in_cheap = p.as_u64() & !511 == cheap;
            if (in_cheap && *p != keep) || (!in_cheap && i % 2 == 0) {
                m.blocks.lock().unwrap().remove(&p.as_u64());
                b.free_pages(*p, Order::new(0)).unwrap();
            }
        }
        let (moved, _) = b.migrate_counts();
        let p = b
            .alloc_contig_pages(512, GfpFlags::HIGHUSER_MOVABLE, 0)
            .unwrap();
        assert_eq!(p.as_u64(), cheap, "the run needing one migration");
        assert_eq!(b.migrate_counts().0 - moved, 1);
        b.free_contig_range(p, 512).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn contig_pages_fail_cleanly_when_every_run_holds_unmovable_pages() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        // One unmovable page per pageblock.
        let mut k = std::vec::Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)) {
            k.push(p);
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &k {
            if !seen.insert(p.as_u64() & !511) {
                b.free_pages(*p, Order::new(0)).unwrap();
            }
        }
        let before = snapshot(&b);
        assert_eq!(free_frames(&b), b.total_free());
        assert_eq!(
            b.alloc_contig_pages(512, GfpFlags::HIGHUSER_MOVABLE, 0),
            Err(IsolateError::NotFound)
        );
        assert_eq!(snapshot(&b), before);
    }
}
