//! The buddy core: free lists of one zone, split (`expand`) and merge (`free_one_page`).
//!
//! Everything here runs with the zone lock held: [`ZoneLocked`] owns the lock guard, so a
//! method on it is the `_locked` variant by construction.
//!
//! ## Invariants kept here
//! * A free block of order `o` is naturally aligned, lies inside the zone, has a
//!   [`PageState::Free`] head with order `o` and list type `t`, and is on list `(o, t)`;
//!   `counts[o][t]` is the length of that list and `Zone::free_pages` the sum of their pages.
//! * `t` is the migrate type of the block's (first) pageblock; a free block of pageblock
//!   order or more covers pageblocks that all have type `t`.
//! * No two free buddies of equal order stay unmerged, except where Linux forbids the merge:
//!   at or above pageblock order when the types differ and one of them is HighAtomic or
//!   Isolate, or when the merged block would exceed the max order.
//!
//! Split and merge touch O(order) descriptors and never scan a list.

use core::sync::atomic::Ordering::Relaxed;

use spin::mutex::SpinMutexGuard;

use crate::migrate::{MigrateType, NR_PCP_TYPES};
use crate::page::{Flags, Memmap, PageState};
use crate::zone::{FreeArea, Zone, HIGHATOMIC_MASK_SHIFT};

/// Allocator-wide parameters the locked code needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub max_order: u32,
    pub pageblock_order: u32,
    pub grouping: bool,
}

impl Params {
    #[inline]
    pub fn pageblock_pages(&self) -> u64 {
        1 << self.pageblock_order
    }
}

/// A zone with its lock held.
pub(crate) struct ZoneLocked<'a, 'm> {
    pub zone: &'a Zone<'m>,
    pub mm: &'a Memmap<'m>,
    pub fa: SpinMutexGuard<'a, FreeArea>,
    pub p: Params,
}

impl<'a, 'm> ZoneLocked<'a, 'm> {
    #[inline]
    pub fn lock(zone: &'a Zone<'m>, mm: &'a Memmap<'m>, p: Params) -> Self {
        Self {
            zone,
            mm,
            fa: zone.free.lock(),
            p,
        }
    }

    // ---- free-list primitives -------------------------------------------------------------

    /// Mark `pfn` a free head of `order` and `mt` and put it on that list.
    #[inline]
    pub fn add_to_free_list(&mut self, pfn: u64, order: u32, mt: MigrateType, to_tail: bool) {
        self.link_free(pfn, order, mt, to_tail);
        self.tally_free(pfn, order, true);
    }

    /// Take the free head `pfn` (order `order`, list `mt`) off its list. The caller gives the
    /// descriptor its next state.
    #[inline]
    pub fn del_from_free_list(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        self.unlink_free(pfn, order, mt);
        self.tally_free(pfn, order, false);
    }

    /// [`add_to_free_list`](Self::add_to_free_list) without the pageblock's free tally, for
    /// callers that settle the tally once for several blocks (`expand`, `free_one_page`).
    #[inline]
    fn link_free(&mut self, pfn: u64, order: u32, mt: MigrateType, to_tail: bool) {
        let idx = self.mm.idx(pfn);
        self.mm
            .at(idx)
            .set_flags(Flags::new(PageState::Free, order, mt));
        let list = &mut self.fa.lists[order as usize][mt.index()];
        if to_tail {
            list.push_back(self.mm, idx);
        } else {
            list.push_front(self.mm, idx);
        }
        let count = &mut self.fa.counts[order as usize][mt.index()];
        *count += 1;
        if *count == 1 {
            self.mark_order_nonempty(order, mt);
        }
        // Written only under the zone lock: a plain load/store, no locked RMW.
        let free = self.zone.free_pages.load(Relaxed);
        self.zone.free_pages.store(free + (1 << order), Relaxed);
    }

    /// [`del_from_free_list`](Self::del_from_free_list) without the pageblock's free tally.
    #[inline]
    fn unlink_free(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        let idx = self.mm.idx(pfn);
        self.fa.lists[order as usize][mt.index()].remove(self.mm, idx);
        let count = &mut self.fa.counts[order as usize][mt.index()];
        *count -= 1;
        if *count == 0 {
            self.refresh_order_mask(order);
        }
        let free = self.zone.free_pages.load(Relaxed);
        self.zone.free_pages.store(free - (1 << order), Relaxed);
    }

    /// Keep the free tally of the pageblock holding a free block smaller than a pageblock
    /// (see the `page` module docs); only pageblocks wholly inside the zone have one.
    #[inline(always)]
    fn tally_free(&self, pfn: u64, order: u32, add: bool) {
        if order < self.p.pageblock_order {
            self.tally_free_pages(pfn, 1 << order, add);
        }
    }

    /// Add `pages` to (or take them from) the free tally of the pageblock holding `pfn`.
    #[inline(always)]
    fn tally_free_pages(&self, pfn: u64, pages: u32, add: bool) {
        let z = self.zone;
        if pages != 0 && pfn.wrapping_sub(z.tally_lo) < z.tally_span {
            let pb = self.pageblock_start(pfn);
            self.mm.desc(pb + 1).change_block_tally_locked(pages, add);
        }
    }

    /// Free pages of the pageblock at `pb` (wholly inside the zone) in free blocks smaller
    /// than a pageblock: its free tally, no scan.
    #[inline]
    pub fn pageblock_free_small(&self, pb: u64) -> u64 {
        self.mm.desc(pb + 1).block_tally()
    }

    /// Pages of the pageblock at `pb` held by allocated movable blocks smaller than a
    /// pageblock: its movable tally, no scan.
    #[inline]
    pub fn pageblock_movable_small(&self, pb: u64) -> u64 {
        self.mm.desc(pb).block_tally()
    }

    /// Set the bit of `(order, mt)` in [`Zone::free_order_mask`] (a list just turned
    /// non-empty).
    #[inline]
    fn mark_order_nonempty(&mut self, order: u32, mt: MigrateType) {
        // CMA blocks serve movable requests, so they count as usable for the fast check.
        let bit = if mt.index() < NR_PCP_TYPES || mt == MigrateType::Cma {
            1u32 << order
        } else if mt == MigrateType::HighAtomic {
            1u32 << (HIGHATOMIC_MASK_SHIFT + order)
        } else {
            return;
        };
        let old = self.zone.free_order_mask.load(Relaxed);
        if old & bit == 0 {
            self.zone.free_order_mask.store(old | bit, Relaxed);
        }
    }

    /// Recompute the bits of `order` in [`Zone::free_order_mask`] from the counts (a list of
    /// that order just turned empty).
    fn refresh_order_mask(&mut self, order: u32) {
        let c = &self.fa.counts[order as usize];
        let usable = c[..NR_PCP_TYPES].iter().any(|&n| n > 0) || c[MigrateType::Cma.index()] > 0;
        let atomic = c[MigrateType::HighAtomic.index()] > 0;
        let (u_bit, a_bit) = (1u32 << order, 1u32 << (HIGHATOMIC_MASK_SHIFT + order));
        let old = self.zone.free_order_mask.load(Relaxed);
        let mut mask = old & !(u_bit | a_bit);
        if usable {
            mask |= u_bit;
        }
        if atomic {
            mask |= a_bit;
        }
        if mask != old {
            self.zone.free_order_mask.store(mask, Relaxed);
        }
    }

    /// Set the high-atomic reserve size (and its lock-free mirror).
    pub fn set_reserved_highatomic(&mut self, pages: u64) {
        self.fa.nr_reserved_highatomic = pages;
        self.zone.highatomic_pages.store(pages, Relaxed);
    }

    /// Move a free block to another list of the same order.
    pub fn move_to_free_list(&mut self, pfn: u64, order: u32, from: MigrateType, to: MigrateType) {
        self.del_from_free_list(pfn, order, from);
        self.add_to_free_list(pfn, order, to, true);
    }

    #[inline]
    pub fn first_free(&self, order: u32, mt: MigrateType) -> Option<u64> {
        let l = &self.fa.lists[order as usize][mt.index()];
        if l.is_empty() {
            None
        } else {
            Some(self.mm.pfn(l.head))
        }
    }

    // ---- pageblocks -----------------------------------------------------------------------

    #[inline]
    pub fn pageblock_start(&self, pfn: u64) -> u64 {
        pfn & !(self.p.pageblock_pages() - 1)
    }

    #[inline]
    pub fn pageblock_type(&self, pfn: u64) -> MigrateType {
        self.mm.desc(self.pageblock_start(pfn)).block_type()
    }

    /// Set the type of every pageblock overlapping `[pfn, pfn + 2^order)`.
    pub fn set_pageblock_range(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        let start = self.pageblock_start(pfn);
        let end = pfn + (1u64 << order);
        let mut pb = start;
        while pb < end {
            self.mm.desc(pb).set_block_type(mt, mt);
            pb += self.p.pageblock_pages();
        }
    }

    // ---- split and merge ------------------------------------------------------------------

    /// Split the block at `pfn` of order `high` down to order `low`, giving the upper halves
    /// back to list `mt` (Linux `expand`). The caller owns `[pfn, pfn + 2^low)`.
    pub fn expand(&mut self, pfn: u64, low: u32, high: u32, mt: MigrateType) {
        let mut o = high;
        while o > low {
            o -= 1;
            self.link_free(pfn + (1u64 << o), o, mt, false);
        }
        // The halves below a pageblock all lie in `pfn`'s pageblock: one tally update.
        let pbo = self.p.pageblock_order;
        if low < pbo && high > low {
            let pages = (1u32 << high.min(pbo)) - (1u32 << low);
            self.tally_free_pages(pfn, pages, true);
        }
    }

    /// Take the smallest free block of at least `order` from list type `mt`, split it and
    /// return the head of the `order` part (Linux `__rmqueue_smallest`).
    pub fn rmqueue_smallest(&mut self, order: u32, mt: MigrateType) -> Option<u64> {
        for cur in order..=self.p.max_order {
            if let Some(pfn) = self.first_free(cur, mt) {
                self.del_from_free_list(pfn, cur, mt);
                self.expand(pfn, order, cur, mt);
                return Some(pfn);
            }
        }
        None
    }

    /// Whether the free block `buddy` of `order` can merge with a block of type `mt` being
    /// freed. Returns the buddy's list type.
    #[inline]
    fn mergeable_buddy(&self, buddy: u64, order: u32, mt: MigrateType) -> Option<MigrateType> {
        let end = buddy.checked_add(1u64 << order)?;
        if buddy < self.zone.start || end > self.zone.end {
            return None;
        }
        let f = self.mm.desc(buddy).flags();
        if f.state != PageState::Free || f.order != order {
            return None;
        }
        if order >= self.p.pageblock_order {
            let bt = self.pageblock_type(buddy);
            if bt != mt && (!bt.is_mergeable() || !mt.is_mergeable()) {
                return None;
            }
        }
        Some(f.mt)
    }

    /// Free the block `[pfn, pfn + 2^order)` (whose descriptors the caller owns: head in any
    /// non-free state, interior `Tail`) onto list `mt`, merging with free buddies upward
    /// (Linux `__free_one_page`). `force_tail` puts the result at the list tail regardless.
    pub fn free_one_page(
        &mut self,
        mut pfn: u64,
        mut order: u32,
        mt: MigrateType,
        force_tail: bool,
    ) {
        let (pfn0, order0) = (pfn, order);
        while order < self.p.max_order {
            let buddy = pfn ^ (1u64 << order);
            let Some(buddy_list) = self.mergeable_buddy(buddy, order, mt) else {
                break;
            };
            if order < self.p.pageblock_order {
                self.unlink_free(buddy, order, buddy_list);
            } else {
                self.del_from_free_list(buddy, order, buddy_list);
            }
            if order >= self.p.pageblock_order && self.pageblock_type(buddy) != mt {
                // Match the buddy's pageblocks to the merged block's type so that a later
                // split puts the pieces on the right lists.
                self.set_pageblock_range(buddy, order, mt);
            }
            let higher = pfn.max(buddy);
            self.mm
                .desc(higher)
                .set_flags(Flags::new(PageState::Tail, 0, MigrateType::Unmovable));
            pfn &= buddy;
            order += 1;
        }
        let to_tail = force_tail || self.buddy_merge_likely(pfn, order, mt);
        self.link_free(pfn, order, mt, to_tail);
        // One tally update for the merges below a pageblock: the freed pages join the
        // pageblock's small free blocks, or, merged into a whole pageblock or more, take all
        // of them along.
        let pbo = self.p.pageblock_order;
        if order0 < pbo {
            if order < pbo {
                self.tally_free_pages(pfn0, 1 << order0, true);
            } else {
                self.tally_free_pages(pfn0, (1u32 << pbo) - (1u32 << order0), false);
            }
        }
    }

    /// Whether the next-higher buddy of the block just freed is free, so that the block is
    /// likely to merge soon and should wait at the list tail (Linux `buddy_merge_likely`).
    fn buddy_merge_likely(&self, pfn: u64, order: u32, mt: MigrateType) -> bool {
        if order + 1 >= self.p.max_order {
            return false;
        }
        let parent = pfn & !((1u64 << (order + 1)) - 1);
        let parent_buddy = parent ^ (1u64 << (order + 1));
        self.mergeable_buddy(parent_buddy, order + 1, mt).is_some()
    }

    /// The head of the block containing `pfn` (`pfn` itself if it is a head), as
    /// `(head, flags)`; `None` if `pfn` is a hole, reserved, or (impossibly) an orphan tail.
    pub fn find_block_head(&self, pfn: u64) -> Option<(u64, Flags)> {
        find_block_head(self.mm, self.p.max_order, pfn)
    }

    /// Make sure no free block larger than a pageblock covers the pageblock at `pb`: split a
    /// covering block so that `[pb, pb + pageblock)` becomes a free block of its own.
    pub fn split_free_block_covering(&mut self, pb: u64) {
        let Some((head, f)) = self.find_block_head(pb) else {
            return;
        };
        if f.state != PageState::Free || f.order <= self.p.pageblock_order {
            return;
        }
        self.del_from_free_list(head, f.order, f.mt);
        let (mut h, mut o) = (head, f.order);
        while o > self.p.pageblock_order {
            o -= 1;
            let upper = h + (1u64 << o);
            if pb >= upper {
                self.add_to_free_list(h, o, f.mt, false);
                h = upper;
            } else {
                self.add_to_free_list(upper, o, f.mt, false);
            }
        }
        self.add_to_free_list(h, o, f.mt, false);
    }

    /// Move every free block of the pageblock at `pb` (inside the zone, not covered by a
    /// larger free block) to list `to` and retype the pageblock, keeping the type isolation
    /// saved (Linux `move_freepages_block`).
    pub fn move_freepages_block(&mut self, pb: u64, to: MigrateType) {
        let end = pb + self.p.pageblock_pages();
        let mut pfn = pb;
        while pfn < end {
            let f = self.mm.desc(pfn).flags();
            if f.state == PageState::Free && f.mt != to {
                self.move_to_free_list(pfn, f.order, f.mt, to);
            }
            pfn += f.span();
        }
        let saved = self.mm.desc(pb).saved_block_type();
        self.mm.desc(pb).set_block_type(to, saved);
    }

    /// Walk the pageblock at `pb` and count what its tallies must say: `(pages in free
    /// blocks, pages in allocated movable blocks)`, both among blocks smaller than a
    /// pageblock (for `verify`).
    pub fn count_pageblock(&self, pb: u64) -> (u64, u64) {
        let end = pb + self.p.pageblock_pages();
        let (mut free, mut movable) = (0, 0);
        let mut pfn = pb;
        while pfn < end {
            let f = self.mm.desc(pfn).flags();
            if f.order < self.p.pageblock_order {
                match f.state {
                    PageState::Free => free += 1 << f.order,
                    PageState::Allocated if f.mt == MigrateType::Movable => movable += 1 << f.order,
                    _ => {}
                }
            }
            pfn += f.span();
        }
        (free, movable)
    }

    /// Whether the whole pageblock at `pb` lies inside this zone.
    #[inline]
    pub fn pageblock_in_zone(&self, pb: u64) -> bool {
        pb >= self.zone.start && pb + self.p.pageblock_pages() <= self.zone.end
    }
}

/// See [`ZoneLocked::find_block_head`]; usable without the lock for error classification.
pub(crate) fn find_block_head(mm: &Memmap<'_>, max_order: u32, pfn: u64) -> Option<(u64, Flags)> {
    let (head, _) = block_head_state(mm, max_order, pfn)?;
    Some((head, mm.desc(head).flags()))
}

/// The head of the block containing `pfn` and its state, reading only state and order bits
/// (no migrate-type decode): the walk behind [`find_block_head`], and on its own the
/// private-word lookups' check that a frame is allocated, which every `kfree` makes.
#[inline]
pub(crate) fn block_head_state(
    mm: &Memmap<'_>,
    max_order: u32,
    pfn: u64,
) -> Option<(u64, PageState)> {
    match mm.desc(pfn).state_order().0 {
        s @ (PageState::Free | PageState::Allocated | PageState::PerCpu) => return Some((pfn, s)),
        PageState::Hole | PageState::Reserved => return None,
        PageState::Tail => {}
    }
    for o in 1..=max_order {
        // The candidate head only changes where bit `o - 1` of `pfn` is set; an unchanged
        // candidate was a tail at the previous order and still is.
        if pfn & (1u64 << (o - 1)) == 0 {
            continue;
        }
        let h = pfn & !((1u64 << o) - 1);
        if !mm.contains(h) {
            return None;
        }
        match mm.desc(h).state_order() {
            (s @ (PageState::Free | PageState::Allocated | PageState::PerCpu), order)
                if order >= o =>
            {
                return Some((h, s))
            }
            (PageState::Tail, _) => {}
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::testutil::{build, mib, no_pcp, TestBuddy};
    use crate::{GfpFlags, MigrateType, PageState, ZoneType};
    use mmkit_addr::{Order, Pfn};

    fn dma32(
        b: &TestBuddy,
    ) -> (
        &crate::allocator::Node<'static>,
        &crate::zone::Zone<'static>,
    ) {
        let n = b.node(0).unwrap();
        (n, &n.zones[ZoneType::Dma32.index()])
    }

    #[test]
    fn split_gives_upper_halves_back_one_per_order() {
        let b = build(&[&[mib(16, 4)]], no_pcp(), 1);
        let p = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(0))
            .unwrap();
        assert_eq!(p.as_u64(), 16 * 256, "lowest frame of the only block");
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        for o in 0..10 {
            assert_eq!(st.free_blocks[o].iter().sum::<u64>(), 1, "order {o}");
        }
        assert_eq!(st.free_blocks[10].iter().sum::<u64>(), 0);
    }

    #[test]
    fn freed_block_waits_at_tail_when_its_parent_buddy_is_free() {
        let b = build(&[&[mib(16, 4)]], no_pcp(), 1);
        let (n, z) = dma32(&b);
        let base = 16 * 256;
        // Hand-craft: take the order-10 block and free pieces so that order-0 list has
        // one block, then free a page whose order-1 parent's buddy is free.
        let mut zl = b.lock(n, z);
        let head = zl.rmqueue_smallest(10, MigrateType::Movable).unwrap();
        assert_eq!(head, base);
        for p in base..base + 1024 {
            n.mm.desc(p).set_flags(crate::page::Flags::new(
                PageState::Tail,
                0,
                MigrateType::Unmovable,
            ));
        }
        // Free [2,4) (order 1) -> its buddy [0,2) is in use: stays order 1.
        zl.free_one_page(base + 2, 1, MigrateType::Movable, false);
        // Free page 5: buddy 4 in use; parent [4,6)'s buddy [6,8) is in use: head.
        zl.free_one_page(base + 5, 0, MigrateType::Movable, false);
        // Free page 1: buddy 0 in use; parent [0,2)'s buddy [2,4) is free: tail.
        zl.free_one_page(base + 1, 0, MigrateType::Movable, false);
        let l = zl.fa.lists[0][MigrateType::Movable.index()];
        assert_eq!(n.mm.pfn(l.head), base + 5);
        assert_eq!(n.mm.pfn(l.tail), base + 1);
    }

    #[test]
    fn isolate_and_highatomic_do_not_merge_with_other_types_at_pageblock_order() {
        let b = build(&[&[mib(16, 4)]], no_pcp(), 1);
        let base = Pfn::new(16 * 256);
        b.isolate_range(base, 512).unwrap();
        // [base, +512) isolated, [+512, +1024) movable: both free order 9, not merged.
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(st.free_blocks[9][MigrateType::Isolate.index()], 1);
        assert_eq!(st.free_blocks[9][MigrateType::Movable.index()], 1);
        assert_eq!(st.free_blocks[10].iter().sum::<u64>(), 0);
        b.verify().unwrap();
        b.undo_isolate_range(base, 512).unwrap();
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(
            st.free_blocks[10][MigrateType::Movable.index()],
            1,
            "merged again"
        );
    }

    #[test]
    fn mergeable_types_merge_above_pageblock_order_and_take_one_type() {
        let b = build(&[&[mib(16, 4)]], no_pcp(), 1);
        let (n, z) = dma32(&b);
        let base = 16 * 256;
        let mut zl = b.lock(n, z);
        let head = zl.rmqueue_smallest(10, MigrateType::Movable).unwrap();
        for p in head + 1..head + 1024 {
            n.mm.desc(p).set_flags(crate::page::Flags::new(
                PageState::Tail,
                0,
                MigrateType::Unmovable,
            ));
        }
        zl.set_pageblock_range(base, 9, MigrateType::Unmovable);
        zl.free_one_page(base, 9, MigrateType::Unmovable, false);
        zl.free_one_page(base + 512, 9, MigrateType::Movable, false);
        assert_eq!(zl.fa.counts[10][MigrateType::Movable.index()], 1);
        assert_eq!(zl.pageblock_type(base), MigrateType::Movable);
        drop(zl);
        b.verify().unwrap();
    }
}
