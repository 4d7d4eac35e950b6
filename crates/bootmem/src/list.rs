//! A sorted region list: the memory list and the reserved list are both one of these.
//!
//! ## Invariants (checked by [`RegionList::check`])
//! * regions are sorted by base and do not overlap;
//! * no region is empty;
//! * no two neighbours are mergeable (touching, with equal flags and node);
//! * `len <= capacity` and the cached total equals the sum of the sizes.
//!
//! Every mutation is split in two: a *counting* step that says how many slots the change needs
//! before it merges ([`RegionList::slots_to_add`], [`RegionList::slots_to_isolate`],
//! [`RegionList::slots_to_remove`]) and an *applying* step that cannot fail once the caller has
//! made that room. The bootmem grows the array between the two steps, so an operation either
//! happens whole or not at all. Each operation is O(regions), like memblock's.

use crate::region::{NodeId, Region, RegionFlags};
use crate::storage::RegionStore;

/// Which of the two lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Physical memory known to exist.
    Memory,
    /// Ranges in use (kernel image, firmware tables, early allocations).
    Reserved,
}

impl ListKind {
    /// The list's name as memblock prints it.
    pub const fn name(self) -> &'static str {
        match self {
            ListKind::Memory => "memory",
            ListKind::Reserved => "reserved",
        }
    }
}

/// What [`RegionList::check`] found wrong, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListFault {
    Empty(usize),
    Unsorted(usize),
    Unmerged(usize),
    OverCapacity,
    TotalMismatch { cached: u64, actual: u64 },
}

pub(crate) struct RegionList<const N: usize> {
    store: RegionStore<N>,
    len: usize,
    total: u64,
}

impl<const N: usize> RegionList<N> {
    pub(crate) const fn new() -> Self {
        Self {
            store: RegionStore::new(),
            len: 0,
            total: 0,
        }
    }

    /// The regions, sorted.
    #[inline]
    pub(crate) fn regions(&self) -> &[Region] {
        &self.store.slots()[..self.len]
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.store.capacity()
    }

    /// Sum of the region sizes in bytes.
    #[inline]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    #[inline]
    pub(crate) fn store_mut(&mut self) -> &mut RegionStore<N> {
        &mut self.store
    }

    #[inline]
    pub(crate) fn external_phys(&self) -> Option<mmkit_addr::PhysRange> {
        self.store.external_phys()
    }

    /// Index of the first region that ends after `addr` (the first that could contain it).
    #[inline]
    pub(crate) fn first_ending_after(&self, addr: u64) -> usize {
        self.regions().partition_point(|r| r.raw_end() <= addr)
    }

    /// Whether any region overlaps `[base, end)`.
    pub(crate) fn overlaps(&self, base: u64, end: u64) -> bool {
        let i = self.first_ending_after(base);
        i < self.len && self.regions()[i].raw_base() < end
    }

    /// Whether the regions cover every byte of `[base, end)`.
    pub(crate) fn covers(&self, base: u64, end: u64) -> bool {
        let mut cursor = base;
        for r in &self.regions()[self.first_ending_after(base)..] {
            if cursor >= end {
                break;
            }
            if r.raw_base() > cursor {
                return false;
            }
            cursor = r.raw_end();
        }
        cursor >= end
    }

    /// Slots needed by [`add_range`](Self::add_range): one per uncovered gap in `[base, end)`
    /// that cannot simply widen a touching neighbour with the same flags and node.
    pub(crate) fn slots_to_add(
        &self,
        base: u64,
        end: u64,
        flags: RegionFlags,
        nid: NodeId,
    ) -> usize {
        let mut slots = 0;
        self.for_each_gap(base, end, |i, gs, ge| {
            if self.gap_absorber(i, gs, ge, flags, nid).is_none() {
                slots += 1;
            }
            true
        });
        slots
    }

    /// Call `f(i, gap_start, gap_end)` for each uncovered gap of `[base, end)`, where `i` is
    /// the index a region filling the gap would take, until `f` returns `false`.
    fn for_each_gap(&self, base: u64, end: u64, mut f: impl FnMut(usize, u64, u64) -> bool) {
        let mut i = self.first_ending_after(base);
        let mut cursor = base;
        while cursor < end {
            match self.regions().get(i) {
                Some(r) if r.raw_base() < end => {
                    if r.raw_base() > cursor && !f(i, cursor, r.raw_base()) {
                        return;
                    }
                    cursor = cursor.max(r.raw_end());
                    i += 1;
                }
                _ => {
                    f(i, cursor, end);
                    return;
                }
            }
        }
    }

    /// The neighbour of gap `[gs, ge)` (to be inserted at `i`) that can widen over it: the
    /// region before if it ends at `gs`, else the region after if it starts at `ge`, when its
    /// flags and node match.
    fn gap_absorber(
        &self,
        i: usize,
        gs: u64,
        ge: u64,
        flags: RegionFlags,
        nid: NodeId,
    ) -> Option<usize> {
        let fits = |r: &Region| r.flags() == flags && r.nid() == nid;
        let regions = self.regions();
        if i > 0 && regions[i - 1].raw_end() == gs && fits(&regions[i - 1]) {
            return Some(i - 1);
        }
        match regions.get(i) {
            Some(r) if r.raw_base() == ge && fits(r) => Some(i),
            _ => None,
        }
    }

    /// Add `[base, end)`. Parts already in the list keep their flags and node (memblock's rule:
    /// overlapping firmware input never rewrites what is known); the gaps get `flags`/`nid`,
    /// widening a compatible neighbour where one touches. The caller has made room for
    /// [`slots_to_add`](Self::slots_to_add) more regions.
    pub(crate) fn add_range(&mut self, base: u64, end: u64, flags: RegionFlags, nid: NodeId) {
        debug_assert!(self.len + self.slots_to_add(base, end, flags, nid) <= self.capacity());
        // Only the regions from the left neighbour of `base` to the region starting at `end`
        // can merge afterwards.
        let first = self.first_ending_after(base).saturating_sub(1);
        // Fill gaps one at a time: each edit shifts indices, so find the next gap afresh from
        // the end of the gap just filled.
        let mut added = 0;
        let mut from = base;
        while from < end {
            let mut found = None;
            self.for_each_gap(from, end, |i, gs, ge| {
                found = Some((i, gs, ge));
                false
            });
            let Some((i, gs, ge)) = found else {
                break;
            };
            match self.gap_absorber(i, gs, ge, flags, nid) {
                Some(j) if j < i => self.store.slots_mut()[j].set_end(ge),
                Some(j) => self.store.slots_mut()[j].set_base(gs),
                None => self.insert_at(i, Region::new(gs, ge, flags, nid)),
            }
            added += ge - gs;
            from = ge;
        }
        let last = self.regions().partition_point(|r| r.raw_base() <= end);
        self.merge_window(first, last + 1);
        self.total += added;
    }

    /// Slots needed by [`remove_range`](Self::remove_range): one if `[base, end)` lies strictly
    /// inside a single region (which then splits in two), else none.
    pub(crate) fn slots_to_remove(&self, base: u64, end: u64) -> usize {
        let i = self.first_ending_after(base);
        match self.regions().get(i) {
            Some(r) if r.raw_base() < base && end < r.raw_end() => 1,
            _ => 0,
        }
    }

    /// Remove every byte of `[base, end)` from the list (bytes not in it are ignored). The
    /// caller has made room for [`slots_to_remove`](Self::slots_to_remove) more regions.
    pub(crate) fn remove_range(&mut self, base: u64, end: u64) {
        let mut i = self.first_ending_after(base);
        if i >= self.len {
            return;
        }
        let removed: u64 = self.regions()[i..]
            .iter()
            .take_while(|r| r.raw_base() < end)
            .map(|r| r.raw_end().min(end) - r.raw_base().max(base))
            .sum();
        self.total -= removed;
        let first = self.regions()[i];
        if first.raw_base() < base && end < first.raw_end() {
            let mut tail = first;
            tail.set_base(end);
            self.store.slots_mut()[i].set_end(base);
            self.insert_at(i + 1, tail);
            return;
        }
        if first.raw_base() < base {
            self.store.slots_mut()[i].set_end(base);
            i += 1;
        }
        let mut j = i;
        while j < self.len && self.regions()[j].raw_end() <= end {
            j += 1;
        }
        if j < self.len && self.regions()[j].raw_base() < end {
            self.store.slots_mut()[j].set_base(end);
        }
        self.delete(i, j);
    }

    /// Slots needed by [`isolate`](Self::isolate): one per end of `[base, end)` that falls
    /// strictly inside a region.
    pub(crate) fn slots_to_isolate(&self, base: u64, end: u64) -> usize {
        let inside = |addr: u64| {
            let i = self.first_ending_after(addr);
            matches!(self.regions().get(i), Some(r) if r.raw_base() < addr)
        };
        usize::from(inside(base)) + usize::from(inside(end))
    }

    /// Split regions at `base` and `end` so that the regions inside `[base, end)` are exactly
    /// the index range returned. The caller has made room for
    /// [`slots_to_isolate`](Self::slots_to_isolate) more regions. The list may be left
    /// unmerged: callers finish with [`merge_window`](Self::merge_window).
    pub(crate) fn isolate(&mut self, base: u64, end: u64) -> core::ops::Range<usize> {
        for addr in [base, end] {
            let i = self.first_ending_after(addr);
            if let Some(r) = self.regions().get(i).copied() {
                if r.raw_base() < addr {
                    let mut tail = r;
                    tail.set_base(addr);
                    self.store.slots_mut()[i].set_end(addr);
                    self.insert_at(i + 1, tail);
                }
            }
        }
        let start = self.first_ending_after(base);
        let stop = self.regions().partition_point(|r| r.raw_base() < end);
        start..stop.max(start)
    }

    /// Apply `update` to every region inside `[base, end)` (isolating first), then merge.
    pub(crate) fn update_range(&mut self, base: u64, end: u64, update: impl Fn(&mut Region)) {
        let window = self.isolate(base, end);
        for r in &mut self.store.slots_mut()[window.clone()] {
            update(r);
        }
        self.merge_window(window.start.saturating_sub(1), window.end + 1);
    }

    /// Drop every region `keep` refuses, rewrite the flags of the others with `flags`, then
    /// merge the whole list. Needs no free slot, so it cannot fail (transaction end).
    pub(crate) fn settle(
        &mut self,
        keep: impl Fn(&Region) -> bool,
        flags: impl Fn(RegionFlags) -> RegionFlags,
    ) {
        let mut i = 0;
        while i < self.len {
            let r = self.store.slots()[i];
            if keep(&r) {
                self.store.slots_mut()[i].set_flags(flags(r.flags()));
                i += 1;
            } else {
                self.total -= r.size();
                self.delete(i, i + 1);
            }
        }
        self.merge_window(0, self.len);
    }

    /// Merge every pair of mergeable neighbours among regions `start..end` (clipped to the
    /// list), closing up the tail once.
    pub(crate) fn merge_window(&mut self, start: usize, end: usize) {
        let len = self.len;
        let end = end.min(len);
        if start + 1 >= end {
            return;
        }
        let slots = self.store.slots_mut();
        let mut out = start;
        for i in start + 1..end {
            let r = slots[i];
            if slots[out].merges_with(&r) {
                slots[out].set_end(r.raw_end());
            } else {
                out += 1;
                slots[out] = r;
            }
        }
        let removed = end - (out + 1);
        if removed > 0 {
            slots.copy_within(end..len, out + 1);
            for slot in &mut slots[len - removed..len] {
                *slot = Region::EMPTY;
            }
            self.len = len - removed;
        }
    }

    fn insert_at(&mut self, i: usize, r: Region) {
        assert!(self.len < self.capacity(), "region list: no room reserved");
        let len = self.len;
        let slots = self.store.slots_mut();
        slots.copy_within(i..len, i + 1);
        slots[i] = r;
        self.len += 1;
    }

    fn delete(&mut self, i: usize, j: usize) {
        if i >= j {
            return;
        }
        let len = self.len;
        let slots = self.store.slots_mut();
        slots.copy_within(j..len, i);
        let new_len = len - (j - i);
        for slot in &mut slots[new_len..len] {
            *slot = Region::EMPTY;
        }
        self.len = new_len;
    }

    /// Check the invariants listed in the module docs.
    pub(crate) fn check(&self) -> Result<(), ListFault> {
        if self.len > self.capacity() {
            return Err(ListFault::OverCapacity);
        }
        let regions = self.regions();
        let mut actual: u64 = 0;
        for (i, r) in regions.iter().enumerate() {
            if r.raw_base() >= r.raw_end() {
                return Err(ListFault::Empty(i));
            }
            if i > 0 {
                let prev = &regions[i - 1];
                if prev.raw_end() > r.raw_base() {
                    return Err(ListFault::Unsorted(i));
                }
                if prev.merges_with(r) {
                    return Err(ListFault::Unmerged(i));
                }
            }
            actual = actual.wrapping_add(r.size());
        }
        if actual != self.total {
            return Err(ListFault::TotalMismatch {
                cached: self.total,
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const F0: RegionFlags = RegionFlags::empty();
    const N0: NodeId = NodeId::ZERO;

    fn raw(l: &RegionList<16>) -> Vec<(u64, u64)> {
        l.regions()
            .iter()
            .map(|r| (r.raw_base(), r.raw_end()))
            .collect()
    }

    fn add(l: &mut RegionList<16>, b: u64, e: u64, f: RegionFlags, n: NodeId) {
        let need = l.slots_to_add(b, e, f, n);
        assert!(l.len() + need <= l.capacity());
        l.add_range(b, e, f, n);
        l.check().unwrap();
    }

    #[test]
    fn add_merges_touching_compatible_regions() {
        let mut l = RegionList::<16>::new();
        add(&mut l, 0x3000, 0x4000, F0, N0);
        add(&mut l, 0x1000, 0x2000, F0, N0);
        add(&mut l, 0x2000, 0x3000, F0, N0);
        assert_eq!(raw(&l), [(0x1000, 0x4000)]);
        assert_eq!(l.total(), 0x3000);
    }

    #[test]
    fn add_keeps_existing_attributes_and_fills_gaps() {
        let mut l = RegionList::<16>::new();
        add(&mut l, 0x2000, 0x3000, RegionFlags::MIRROR, N0);
        add(&mut l, 0x5000, 0x6000, RegionFlags::MIRROR, N0);
        assert_eq!(l.slots_to_add(0x1000, 0x8000, F0, NodeId::new(1)), 3);
        assert_eq!(l.slots_to_add(0x1000, 0x8000, RegionFlags::MIRROR, N0), 0);
        add(&mut l, 0x1000, 0x8000, F0, NodeId::new(1));
        assert_eq!(
            raw(&l),
            [
                (0x1000, 0x2000),
                (0x2000, 0x3000),
                (0x3000, 0x5000),
                (0x5000, 0x6000),
                (0x6000, 0x8000)
            ]
        );
        assert_eq!(l.regions()[1].flags(), RegionFlags::MIRROR);
        assert_eq!(l.regions()[2].nid(), NodeId::new(1));
        assert_eq!(l.total(), 0x7000);
    }

    #[test]
    fn remove_inside_splits_and_across_trims() {
        let mut l = RegionList::<16>::new();
        add(&mut l, 0x1000, 0x9000, F0, N0);
        assert_eq!(l.slots_to_remove(0x3000, 0x4000), 1);
        l.remove_range(0x3000, 0x4000);
        l.check().unwrap();
        assert_eq!(raw(&l), [(0x1000, 0x3000), (0x4000, 0x9000)]);
        assert_eq!(l.slots_to_remove(0x2000, 0x5000), 0);
        l.remove_range(0x2000, 0x5000);
        l.check().unwrap();
        assert_eq!(raw(&l), [(0x1000, 0x2000), (0x5000, 0x9000)]);
        l.remove_range(0, 0x10000);
        l.check().unwrap();
        assert_eq!(l.len(), 0);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn update_range_splits_then_merges_back() {
        let mut l = RegionList::<16>::new();
        add(&mut l, 0x1000, 0x9000, F0, N0);
        assert_eq!(l.slots_to_isolate(0x3000, 0x4000), 2);
        l.update_range(0x3000, 0x4000, |r| r.set_flags(RegionFlags::NOMAP));
        l.check().unwrap();
        assert_eq!(
            raw(&l),
            [(0x1000, 0x3000), (0x3000, 0x4000), (0x4000, 0x9000)]
        );
        l.update_range(0x3000, 0x4000, |r| r.set_flags(F0));
        l.check().unwrap();
        assert_eq!(raw(&l), [(0x1000, 0x9000)]);
    }

    #[test]
    fn covers_and_overlaps_see_gaps() {
        let mut l = RegionList::<16>::new();
        add(&mut l, 0x1000, 0x2000, F0, N0);
        add(&mut l, 0x2000, 0x3000, RegionFlags::MIRROR, N0);
        add(&mut l, 0x4000, 0x5000, F0, N0);
        assert!(l.covers(0x1000, 0x3000));
        assert!(!l.covers(0x1000, 0x4001));
        assert!(l.overlaps(0x3fff, 0x4001));
        assert!(!l.overlaps(0x3000, 0x4000));
    }
}
