//! Allocations of an exact number of frames (Linux `alloc_pages_exact` /
//! `free_pages_exact`).
//!
//! [`BuddyAllocator::alloc_pages_exact`] allocates the power-of-two block covering `nr`
//! frames, cuts its first `nr` frames into the naturally aligned blocks that make them up
//! (one per set bit of `nr`, largest first: the *pieces*), and gives the rest back to the
//! free lists at once, where it merges with its free buddies.
//!
//! Covering blocks of a per-CPU order (≤ [`PCP_MAX_ORDER`], up to 8 frames) for counts that
//! are not a power of two come from this CPU's list as any such block does. Their free puts
//! the whole covering block back on the list when the tail is still free in the zone as the
//! blocks it was cut into (unlinked from the zone's lists under its lock, inside the list's
//! lock): the next allocation of that order cuts the same block, and neither side merges up
//! or splits down through the zone's orders, which is what dominated these sizes before.
//! [`BuddyAllocator::free_pages_exact`] cuts `[pfn, pfn + nr)` the same
//! way, checks that every piece is an allocated block of its order, and only then frees them
//! all, so a wrong `nr` or pointer frees nothing.

use mmkit_addr::{IrqControl, Order, Pfn};

use crate::allocator::BuddyAllocator;
use crate::error::{AllocError, FreeError};
use crate::gfp::GfpFlags;
use core::sync::atomic::Ordering::Relaxed;

use crate::allocator::Node;
use crate::freearea::ZoneLocked;
use crate::migrate::{MigrateType, NR_PCP_TYPES};
use crate::page::{Flags, PageState};
use crate::pcp::PCP_MAX_ORDER;
use crate::zone::Zone;

/// The blocks an exact allocation of `nr` frames at `pfn` consists of (see the module docs),
/// as `(first frame, order)`: what its owner records, and what
/// [`BuddyAllocator::free_pages_exact`] frees.
pub fn exact_pieces(pfn: Pfn, nr: u64) -> impl Iterator<Item = (Pfn, Order)> {
    let start = pfn.as_u64();
    pieces(start, start.saturating_add(nr)).map(|(p, o)| (Pfn::new(p), Order::new(o)))
}

/// The naturally aligned blocks that make up `[start, end)`, greedily from `start`: each is
/// the largest block aligned at its start that fits. For `start` aligned to the power of two
/// covering `end - start`, these are one block per set bit of the length, largest first.
pub(crate) fn pieces(start: u64, end: u64) -> impl Iterator<Item = (u64, u32)> {
    let mut p = start;
    core::iter::from_fn(move || {
        if p >= end {
            return None;
        }
        let align = if p == 0 { 63 } else { p.trailing_zeros() };
        let fit = 63 - (end - p).leading_zeros();
        let o = align.min(fit);
        let at = p;
        p += 1u64 << o;
        Some((at, o))
    })
}

/// Why [`BuddyAllocator::resize_pages_exact`] left an allocation as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeError {
    /// `(pfn, nr)` is not a live exact allocation; why, as a free would say it.
    Free(FreeError),
    /// The allocation cannot change size where it is (a frame it would grow into is not free
    /// in the zone, the start is not aligned to the new covering power of two, or the new
    /// size is beyond the largest order or the zone): allocate, copy and free instead.
    NotInPlace,
}

/// Whether every frame of `[a, b)` lies in a free block on one of the zone's lists of a
/// per-CPU type (not the high-atomic reserve, a CMA area or an isolated range).
fn frames_free(z: &ZoneLocked<'_, '_>, a: u64, b: u64) -> bool {
    let mut q = a;
    while q < b {
        match z.find_block_head(q) {
            Some((h, f))
                if f.state == PageState::Free
                    && f.mt.index() < NR_PCP_TYPES
                    && h + (1u64 << f.order) > q =>
            {
                q = h + (1u64 << f.order);
            }
            _ => return false,
        }
    }
    true
}

/// Free `[start, end)` to the zone `z` holds, as its aligned [`pieces`]. Each piece lies
/// inside one pageblock or covers whole ones, whose types it takes pageblock by pageblock,
/// as `free_pages` does.
fn free_pieces(z: &mut ZoneLocked<'_, '_>, start: u64, end: u64, pbo: u32) {
    for (p, o) in pieces(start, end) {
        let step = o.min(pbo);
        let mut q = p;
        while q < p + (1u64 << o) {
            let t = z.pageblock_type(q);
            z.free_one_page(q, step, t, false);
            q += 1u64 << step;
        }
    }
}

/// Take `[a, b)`, every frame of it free ([`frames_free`]), off the zone's free lists: each
/// free block overlapping it leaves the lists and its parts outside `[a, b)` go back as the
/// aligned blocks they cut into (none of which can merge: each one's buddy overlaps the
/// taken range). The taken frames read as tails; the caller marks the heads it wants.
fn take_free_frames(z: &mut ZoneLocked<'_, '_>, a: u64, b: u64) {
    let mut q = a;
    while q < b {
        let Some((h, f)) = z.find_block_head(q) else {
            return;
        };
        let e = h + (1u64 << f.order);
        z.del_from_free_list(h, f.order, f.mt);
        z.mm.desc(h)
            .set_flags(Flags::new(PageState::Tail, 0, MigrateType::Unmovable));
        for (p, o) in pieces(h, a.max(h)).chain(pieces(b.min(e), e)) {
            z.add_to_free_list(p, o, f.mt, false);
        }
        q = e;
    }
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Allocate exactly `nr` frames, preferring node `node`, as the blocks the module docs
    /// describe; the frames beyond `nr` of the covering power-of-two block are free again on
    /// return, and every one of the `nr` frames' private words reads 0. With [`GfpFlags::ZERO`] the `nr` frames are zeroed. Free with
    /// [`free_pages_exact`](Self::free_pages_exact) and the same `nr`.
    pub fn alloc_pages_exact(
        &self,
        node: usize,
        gfp: GfpFlags,
        nr: u64,
    ) -> Result<Pfn, AllocError> {
        let order = Order::for_pages(nr).ok_or(AllocError::NoPages)?;
        if order.get() > self.cfg.max_order {
            return Err(AllocError::OrderTooLarge {
                order: order.get(),
                max: self.cfg.max_order,
            });
        }
        let pfn = self.alloc_pages_node(node, gfp, order)?;
        self.trim_block(pfn.as_u64(), order.get(), nr);
        self.clear_private(pfn.as_u64(), nr);
        Ok(pfn)
    }

    /// Every frame's private word of `[pfn, pfn + nr)`, an exact allocation the caller owns,
    /// reads 0 (piece heads already do).
    fn clear_private(&self, pfn: u64, nr: u64) {
        if let Some((node, _)) = self.locate(pfn) {
            for d in node.mm.descs(pfn, nr) {
                d.set_private(0);
            }
        }
    }

    /// Cut the allocated block `[pfn, pfn + 2^order)`, which the caller owns, to its first
    /// `nr` frames (see the module docs).
    fn trim_block(&self, pfn: u64, order: u32, nr: u64) {
        let end = pfn + (1u64 << order);
        let keep = pfn + nr;
        if keep == end {
            return;
        }
        let Some((node, zone)) = self.locate(pfn) else {
            return;
        };
        let pbo = self.cfg.pageblock_order;
        let mt = node.mm.desc(pfn).flags().mt;
        node.mm.tally_movable(pfn, order, mt, pbo, false);
        for (p, o) in pieces(pfn, keep) {
            node.mm.desc(p).set_allocated(o, mt);
            node.mm.tally_movable(p, o, mt, pbo, true);
        }
        let mut z = self.lock(node, zone);
        free_pieces(&mut z, keep, end, pbo);
    }

    /// Free the `nr` frames at `pfn` that [`alloc_pages_exact`](Self::alloc_pages_exact)
    /// returned. Every piece is checked before any is freed: on error nothing changed, and
    /// the error names what the first wrong piece is (a double free, a wrong `nr` showing as
    /// a wrong order or a frame inside a block, ...). A count that is not a power of two with
    /// a covering block of a per-CPU order goes back whole onto this CPU's list when its tail
    /// is still free (see the module docs); otherwise each piece is freed as `free_pages`
    /// frees it.
    pub fn free_pages_exact(&self, pfn: Pfn, nr: u64) -> Result<(), FreeError> {
        let start = pfn.as_u64();
        let (node, zone, _) = self.check_exact(start, nr)?;
        let order = Order::for_pages(nr).ok_or(FreeError::Misaligned)?;
        let end = start + nr;
        if !nr.is_power_of_two() && self.pcp_enabled && order.get() <= PCP_MAX_ORDER {
            if let Some(done) = self.free_exact_to_pcp(node, zone, start, nr, order.get()) {
                return done;
            }
        }
        for (p, o) in pieces(start, end) {
            self.free_pages(Pfn::new(p), Order::new(o))?;
        }
        Ok(())
    }

    /// Check that `[start, start + nr)` is a live exact allocation (every piece an allocated
    /// block of its order, not migrating); its node and zone and the mobility it was
    /// allocated with.
    fn check_exact(
        &self,
        start: u64,
        nr: u64,
    ) -> Result<(&Node<'m>, &Zone<'m>, MigrateType), FreeError> {
        let order = Order::for_pages(nr).ok_or(FreeError::Misaligned)?;
        if order.get() > self.cfg.max_order {
            return Err(FreeError::OrderTooLarge {
                order: order.get(),
                max: self.cfg.max_order,
            });
        }
        if start & (order.pages() - 1) != 0 {
            return Err(FreeError::Misaligned);
        }
        let end = start.checked_add(nr).ok_or(FreeError::OutsideZones)?;
        let (node, zone) = self.locate(start).ok_or(FreeError::OutsideZones)?;
        let mut mt = MigrateType::Unmovable;
        for (i, (p, o)) in pieces(start, end).enumerate() {
            let f = node.mm.desc(p).flags();
            if f.state != PageState::Allocated || f.order != o || f.migrating {
                return Err(self.classify_free_error(node, p, o, f));
            }
            if i == 0 {
                mt = f.mt;
            }
        }
        Ok((node, zone, mt))
    }

    /// Resize the exact allocation of `nr` frames at `pfn` to `new_nr` frames in place
    /// (what `krealloc` of a large block wants): shrinking gives the frames past `new_nr`
    /// back to the zone; growing takes the frames past `nr` if every one of them is free in
    /// the zone (not cached on a per-CPU list) and `pfn` is aligned to the power of two
    /// covering `new_nr`. On success the allocation is `new_nr` frames cut into pieces as
    /// [`alloc_pages_exact`](Self::alloc_pages_exact) cuts them (free it with `new_nr`),
    /// with the same mobility; every piece head's private word and every new frame's reads
    /// 0. On error nothing changed: [`ResizeError::Free`] says why `(pfn, nr)` is not a live
    /// exact allocation, [`ResizeError::NotInPlace`] that it stays as it was and the caller
    /// must move it.
    pub fn resize_pages_exact(&self, pfn: Pfn, nr: u64, new_nr: u64) -> Result<(), ResizeError> {
        let start = pfn.as_u64();
        let (node, zone, mt) = self.check_exact(start, nr).map_err(ResizeError::Free)?;
        if new_nr == nr {
            return Ok(());
        }
        let new_order = Order::for_pages(new_nr).ok_or(ResizeError::NotInPlace)?;
        let end = start.checked_add(new_nr).ok_or(ResizeError::NotInPlace)?;
        if new_order.get() > self.cfg.max_order
            || start & (new_order.pages() - 1) != 0
            || (new_nr > nr && end > zone.init_end(&node.mm))
        {
            return Err(ResizeError::NotInPlace);
        }
        let mm = &node.mm;
        let pbo = self.cfg.pageblock_order;
        let old_end = start + nr;
        let mut z = self.lock(node, zone);
        if new_nr > nr && !frames_free(&z, old_end, end) {
            return Err(ResizeError::NotInPlace);
        }
        // Claim every old piece (a racing free of the same allocation loses here or there).
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        for (i, (p, o)) in pieces(start, old_end).enumerate() {
            match mm.desc(p).begin_free(o, tail) {
                Ok(_) => mm.tally_movable(p, o, mt, pbo, false),
                Err(f) => {
                    for (q, qo) in pieces(start, old_end).take(i) {
                        mm.desc(q).set_allocated(qo, mt);
                        mm.tally_movable(q, qo, mt, pbo, true);
                    }
                    drop(z);
                    return Err(ResizeError::Free(self.classify_free_error(node, p, o, f)));
                }
            }
        }
        if new_nr > nr {
            take_free_frames(&mut z, old_end, end);
            for d in mm.descs(old_end, new_nr - nr) {
                d.set_private(0);
            }
        }
        for (p, o) in pieces(start, end) {
            mm.desc(p).set_allocated(o, mt);
            mm.tally_movable(p, o, mt, pbo, true);
        }
        free_pieces(&mut z, end, old_end, pbo);
        Ok(())
    }

    /// Free a checked exact allocation of a per-CPU covering order as its whole covering
    /// block onto this CPU's list, when the tail the allocation gave back is still free in
    /// the zone as the blocks it was cut into: the next exact allocation of that order takes
    /// the block from the list and cuts it again, and neither side merges or splits up
    /// through the zone's orders. `None` (nothing changed) when the list is busy, the
    /// pageblock is not of a per-CPU type, or part of the tail is taken or merged.
    fn free_exact_to_pcp(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        start: u64,
        nr: u64,
        order: u32,
    ) -> Option<Result<(), FreeError>> {
        let mm = &node.mm;
        let pbo = self.cfg.pageblock_order;
        let mt = mm.desc(start & !((1u64 << pbo) - 1)).block_type();
        if mt.index() >= NR_PCP_TYPES {
            return None;
        }
        let mut lists = zone
            .pcp
            .get(self.platform.current_cpu())?
            .inner
            .try_lock()?;
        let (keep, end) = (start + nr, start + (1u64 << order));
        let mut z = self.lock(node, zone);
        let tail_free = pieces(keep, end).all(|(p, o)| {
            let f = mm.desc(p).flags();
            f.state == PageState::Free && f.order == o && f.mt == mt
        });
        if !tail_free {
            return None;
        }
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        for (i, (p, o)) in pieces(start, keep).enumerate() {
            match mm.desc(p).begin_free(o, tail) {
                Ok(old) => mm.tally_movable(p, o, old.mt, pbo, false),
                Err(f) => {
                    // Only a racing free of the same pieces gets here (all were checked):
                    // the pieces already taken go to the zone as a plain free would.
                    for (q, qo) in pieces(start, keep).take(i) {
                        let t = z.pageblock_type(q);
                        z.free_one_page(q, qo, t, false);
                    }
                    drop(z);
                    return Some(Err(self.classify_free_error(node, p, o, f)));
                }
            }
        }
        for (p, o) in pieces(keep, end) {
            z.del_from_free_list(p, o, mt);
            mm.desc(p).set_flags(tail);
        }
        drop(z);
        lists.push(mm, start, order, mt);
        if lists.count >= u64::from(zone.pcp_high.load(Relaxed)) {
            self.trim_pcp(node, zone, &mut lists);
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::testutil::{build, mib, no_pcp};
    use crate::BuddyConfig;
    use std::vec::Vec;

    #[test]
    fn pieces_are_the_set_bits_largest_first_and_cover_the_range() {
        let v: Vec<_> = pieces(64, 64 + 37).collect();
        assert_eq!(v, [(64, 5), (96, 2), (100, 0)]);
        let rest: Vec<_> = pieces(64 + 37, 128).collect();
        assert_eq!(rest, [(101, 0), (102, 1), (104, 3), (112, 4)]);
        assert_eq!(pieces(0, 1).collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(pieces(8, 8).count(), 0);
    }

    #[test]
    fn exact_allocations_keep_nr_frames_and_give_the_rest_back() {
        for cfg in [BuddyConfig::default(), no_pcp()] {
            let b = build(&[&[mib(16, 16)]], cfg, 1);
            let before = b.total_free();
            let mut got = Vec::new();
            for nr in [1u64, 2, 3, 5, 7, 8, 9, 100, 511, 513, 1000] {
                let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, nr).unwrap();
                b.drain_all_pages();
                got.push((p, nr));
                b.verify().unwrap();
            }
            let taken: u64 = got.iter().map(|&(_, nr)| nr).sum();
            b.drain_all_pages();
            assert_eq!(b.total_free(), before - taken, "only nr frames each");
            for (p, nr) in got {
                b.free_pages_exact(p, nr).unwrap();
                b.verify().unwrap();
            }
            b.drain_all_pages();
            assert_eq!(b.total_free(), before);
            assert_eq!(b.free_pages_at_order(10), before, "everything merged back");
        }
    }

    #[test]
    fn exact_allocations_resize_in_place_and_free_with_the_new_count() {
        for cfg in [BuddyConfig::default(), no_pcp()] {
            let b = build(&[&[mib(16, 16)]], cfg, 1);
            b.drain_all_pages();
            let before = b.total_free();
            // Grow inside the covering block, then across it (the start is aligned to 64).
            let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, 33).unwrap();
            b.set_page_private(p, 7).unwrap();
            b.drain_all_pages();
            for (from, to) in [(33u64, 40u64), (40, 64), (64, 100), (100, 37), (37, 5)] {
                if b.resize_pages_exact(p, from, to) == Err(ResizeError::NotInPlace) {
                    assert!(to > from, "shrinking always works");
                    continue;
                }
                b.drain_all_pages();
                b.verify().unwrap();
                assert_eq!(b.total_free(), before - to, "{from} -> {to}");
                let head = exact_pieces(p, to).next().unwrap();
                assert_eq!(b.allocated_block(p), Some(head));
                assert_eq!(b.page_private(p), Ok(0), "a re-cut head reads 0");
            }
            b.free_pages_exact(p, 5).unwrap();
            b.drain_all_pages();
            assert_eq!(b.total_free(), before);
            b.verify().unwrap();
        }
    }

    #[test]
    fn growth_stops_at_a_frame_that_is_not_free_and_changes_nothing() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, 3).unwrap();
        // The frame after it, taken by someone else.
        let mut others = Vec::new();
        let q = loop {
            let q = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
            if q.as_u64() == p.as_u64() + 3 {
                break q;
            }
            others.push(q);
        };
        for o in others {
            b.free_pages(o, Order::new(0)).unwrap();
        }
        let free = b.total_free();
        assert_eq!(b.resize_pages_exact(p, 3, 4), Err(ResizeError::NotInPlace));
        // Misaligned for the new covering block, and a wrong count.
        let r = b.alloc_pages_exact(0, GfpFlags::KERNEL, 1).unwrap();
        if r.as_u64() % 4 != 0 {
            assert_eq!(b.resize_pages_exact(r, 1, 3), Err(ResizeError::NotInPlace));
        }
        assert_eq!(
            b.resize_pages_exact(p, 4, 5),
            Err(ResizeError::Free(FreeError::WrongOrder { allocated: 1 }))
        );
        assert_eq!(b.total_free(), free - 1);
        b.verify().unwrap();
        b.free_pages(q, Order::new(0)).unwrap();
        b.resize_pages_exact(p, 3, 4).unwrap();
        b.free_pages_exact(p, 4).unwrap();
        b.free_pages_exact(r, 1).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn an_exact_free_puts_the_covering_block_back_on_the_per_cpu_list() {
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 1);
        let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, 5).unwrap();
        let pcp = b.total_pcp();
        b.free_pages_exact(p, 5).unwrap();
        assert_eq!(b.total_pcp(), pcp + 8, "the whole order-3 block");
        b.verify().unwrap();
        let q = b.alloc_pages_exact(0, GfpFlags::KERNEL, 6).unwrap();
        assert_eq!(q, p, "cut again from the list");
        b.free_pages_exact(q, 6).unwrap();
        b.drain_all_pages();
        b.verify().unwrap();
    }

    #[test]
    fn a_wrong_free_of_an_exact_allocation_changes_nothing() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, 5).unwrap();
        let free = b.total_free();
        let at = |d: u64| Pfn::new(p.as_u64() + d);
        // Too many frames: its second piece would be an order-1 block where an order-0 one is.
        assert_eq!(
            b.free_pages_exact(p, 6),
            Err(FreeError::WrongOrder { allocated: 0 })
        );
        // Too few: the first piece is not the order-2 block.
        assert_eq!(
            b.free_pages_exact(p, 3),
            Err(FreeError::WrongOrder { allocated: 2 })
        );
        assert_eq!(b.free_pages_exact(p, 0), Err(FreeError::Misaligned));
        assert_eq!(b.free_pages_exact(at(1), 2), Err(FreeError::Misaligned));
        assert_eq!(
            b.free_pages_exact(at(2), 2),
            Err(FreeError::InsideBlock { head: p })
        );
        assert_eq!(b.free_pages_exact(at(5), 1), Err(FreeError::DoubleFree));
        assert_eq!(b.total_free(), free);
        b.verify().unwrap();
        b.free_pages_exact(p, 5).unwrap();
        assert_eq!(b.free_pages_exact(p, 5), Err(FreeError::DoubleFree));
        assert_eq!(
            b.alloc_pages_exact(0, GfpFlags::KERNEL, 0),
            Err(AllocError::NoPages)
        );
        b.verify().unwrap();
    }
}
