//! Copy the mappings of a range into another table (fork's `copy_page_range`).
//!
//! The source and destination trees are walked side by side, once: where the source has a
//! table, the destination gets (or reuses) one; where the source has a leaf, the part of it
//! inside the range is mapped in the destination exactly as [`PageTable::map`] would with
//! [`MapSize::Largest`](crate::MapSize::Largest). Physical pages are shared, not copied.
//! Like every operation it plans first, so an error (a destination mapping in the way, or no
//! frames) leaves the destination unchanged. The destination's new entries replace only
//! absent ones, so the returned token is empty (but must be invalidated, as for map).
//!
//! Where a whole source table lies inside the range and the destination has nothing in its
//! slot, the subtree is cloned: a new table per source table, filled by copying the source's
//! table and leaf entries (leaves raw, so contiguous hints and accessed/dirty travel with
//! them) in one loop per table, and counted for the plan from the source's tables alone.
//! A whole read-only leaf table is shared instead of cloned when both frame sources keep
//! share counts in one pool (`crate::share`; "Shared leaf tables" in the crate docs): the
//! destination's entry points at the source's frame and its count goes up. Leaf tables of
//! the destination shared with a third tree are made private first, since the copy writes
//! into them.

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::error::{CopyError, MapError, ProtectError};
use crate::flush::Flush;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::{FrameSource, TableRefs};
use crate::map::{apply_map, count_new, plan_map, wants_leaf, MapOpts};
use crate::raw;
use crate::share::shareable;
use crate::table::{Ctx, PageTable, Reserve, ReserveError, SpanError};

const LARGEST: MapOpts = MapOpts { forced: None };

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Map in `dst` every mapping of `[va, va + len)` of `self`, at the same addresses.
    ///
    /// The source is borrowed mutably: where the copy shares a leaf table (see the module
    /// docs), the source's later writes to it must un-share it first.
    pub fn copy_range_to<M2: PhysMapper, S2: FrameSource>(
        &mut self,
        dst: &mut PageTable<F, M2, S2>,
        va: VirtAddr,
        len: u64,
    ) -> Result<Flush, CopyError> {
        if self.fmt.levels() != dst.fmt.levels() || self.fmt.granule() != dst.fmt.granule() {
            return Err(CopyError::FormatMismatch);
        }
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Flush::nothing()),
            Err(SpanError::Unaligned(m)) => {
                return Err(CopyError::Source(ProtectError::Unaligned(m)))
            }
            Err(SpanError::NonCanonical(v)) => {
                return Err(CopyError::Source(ProtectError::NonCanonical(v)))
            }
        };
        if !dst.fmt.range_is_canonical(va, VirtAddr::new(span.last)) {
            return Err(CopyError::Destination(MapError::NonCanonical(va)));
        }
        let src = self.ctx();
        let mut need = plan_copy(
            &src,
            &dst.ctx(),
            self.root,
            Some(dst.root),
            0,
            span.first,
            span.last,
        )
        .map_err(CopyError::Destination)?;
        // The destination's leaf tables in the range that it shares with another tree are
        // made private first (this copy writes into them).
        need += 2 * dst.shared_in(span.first, span.last);
        let mut reserve = match dst.reserve(need) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => {
                return Err(CopyError::Destination(MapError::OutOfFrames))
            }
            Err(ReserveError::Unreachable(p)) => {
                return Err(CopyError::Destination(MapError::FrameUnreachable(p)))
            }
        };
        let unshared = dst.unshare(span.first, span.last, &mut reserve);
        let dctx = dst.ctx();
        // No sharing into or out of a live table of a break-before-make format: un-sharing
        // swaps a table descriptor for one pointing at an identical copy, which is not done
        // without break-before-make on a live aarch64 table.
        let bbm = (self.live || dst.live) && self.fmt.needs_break_before_make();
        let mut share = Share {
            refs: if bbm {
                None
            } else {
                crate::share::common_refs(&self.frames, &dst.frames)
            },
            shared: 0,
        };
        let added = apply_copy(
            &src,
            &dctx,
            self.root,
            dctx.table(dst.root),
            0,
            span.first,
            span.last,
            &mut reserve,
            &mut share,
        );
        let shared = share.shared;
        dst.root_count += added;
        // Shared tables are the destination's too (reachable, counted), without a frame of
        // its own reserve.
        dst.owned += shared;
        dst.finish_reserve(reserve);
        dst.may_global |= self.may_global;
        if shared > 0 {
            self.may_share = true;
            dst.may_share = true;
        }
        let flush = dst.join_unshare(Flush::nothing(), unshared);
        Ok(dst.tag(flush))
    }
}

/// Tables the destination needs; `dst` is `None` below a destination table still to create.
fn plan_copy<F: PagingFormat, M: PhysMapper, M2: PhysMapper>(
    src: &Ctx<'_, F, M>,
    dst: &Ctx<'_, F, M2>,
    src_table: PhysAddr,
    dst_table: Option<PhysAddr>,
    level: usize,
    first: u64,
    last: u64,
) -> Result<usize, MapError> {
    let fmt = src.fmt;
    let st = src.table(src_table);
    let dt = dst_table.map(|d| dst.table(d));
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut need = 0;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let i = lv.index(s);
        let sraw = raw::load(st, i);
        let draw = dt.map_or(0, |t| raw::load(t, i));
        let dkind = fmt.kind(level, draw);
        let slot = VirtAddr::new(s & !mask);
        match fmt.kind(level, sraw) {
            EntryKind::Leaf => {
                let pa = fmt.leaf_addr(level, sraw).as_u64() + (s & mask);
                match dkind {
                    EntryKind::Absent => {
                        if !wants_leaf(fmt, level, s, sl, pa, LARGEST) {
                            need += 1 + count_new(fmt, level + 1, s, sl, pa, LARGEST);
                        }
                    }
                    EntryKind::Table => {
                        need += plan_map(dst, fmt.table_addr(draw), level + 1, s, sl, pa, LARGEST)?
                    }
                    _ => return Err(MapError::AlreadyMapped(slot)),
                }
            }
            EntryKind::Table => {
                let sc = fmt.table_addr(sraw);
                let whole = s & mask == 0 && sl & mask == mask;
                match dkind {
                    EntryKind::Absent if whole => need += 1 + count_subtree(src, sc, level + 1),
                    EntryKind::Absent => {
                        need += 1 + plan_copy(src, dst, sc, None, level + 1, s, sl)?
                    }
                    EntryKind::Table => {
                        need +=
                            plan_copy(src, dst, sc, Some(fmt.table_addr(draw)), level + 1, s, sl)?
                    }
                    EntryKind::Leaf => {
                        let size = lv.leaf.unwrap_or(fmt.granule());
                        return Err(MapError::OverlapsHugeMapping(slot, size));
                    }
                    EntryKind::Malformed => return Err(MapError::AlreadyMapped(slot)),
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {}
        }
        if sl == last {
            return Ok(need);
        }
        s = sl + 1;
    }
}

/// Sharing of whole read-only leaf tables during one copy (`crate::share`).
struct Share<'r> {
    /// The share counts source and destination have in common, if any.
    refs: Option<&'r dyn TableRefs>,
    /// Leaf tables shared so far.
    shared: usize,
}

#[allow(clippy::too_many_arguments)]
fn apply_copy<F: PagingFormat, M: PhysMapper, M2: PhysMapper>(
    src: &Ctx<'_, F, M>,
    dst: &Ctx<'_, F, M2>,
    src_table: PhysAddr,
    dt: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    reserve: &mut Reserve,
    share: &mut Share<'_>,
) -> u32 {
    let fmt = src.fmt;
    let st = src.table(src_table);
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut added = 0u32;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let i = lv.index(s);
        let sraw = raw::load(st, i);
        let draw = raw::load(dt, i);
        match fmt.kind(level, sraw) {
            EntryKind::Leaf => {
                let attrs = fmt.leaf_attrs(level, sraw);
                let pa = fmt.leaf_addr(level, sraw).as_u64() + (s & mask);
                if fmt.kind(level, draw) == EntryKind::Table {
                    let ct = dst.table(fmt.table_addr(draw));
                    let n = apply_map(dst, ct, level + 1, s, sl, pa, attrs, LARGEST, reserve);
                    if n > 0 {
                        raw::update(dt, i, |r| fmt.set_table_count(r, fmt.table_count(r) + n));
                    }
                } else if wants_leaf(fmt, level, s, sl, pa, LARGEST) {
                    raw::store(dt, i, fmt.make_leaf(level, PhysAddr::new(pa), attrs));
                    added += 1;
                } else {
                    let child = reserve.take(dst);
                    let n = apply_map(
                        dst,
                        dst.table(child),
                        level + 1,
                        s,
                        sl,
                        pa,
                        attrs,
                        LARGEST,
                        reserve,
                    );
                    raw::publish(dt, i, fmt.make_table(level, child, n));
                    added += 1;
                }
            }
            EntryKind::Table => {
                let sc = fmt.table_addr(sraw);
                if fmt.kind(level, draw) == EntryKind::Table {
                    let ct = dst.table(fmt.table_addr(draw));
                    let n = apply_copy(src, dst, sc, ct, level + 1, s, sl, reserve, share);
                    if n > 0 {
                        raw::update(dt, i, |r| fmt.set_table_count(r, fmt.table_count(r) + n));
                    }
                } else if s & mask == 0 && sl & mask == mask {
                    let (child, n) = clone_subtree(src, dst, sc, level + 1, reserve, share);
                    if n > 0 {
                        raw::publish(dt, i, fmt.make_table(level, child, n));
                        added += 1;
                    } else {
                        reserve.give_back(dst, child);
                    }
                } else {
                    let child = reserve.take(dst);
                    let n = apply_copy(
                        src,
                        dst,
                        sc,
                        dst.table(child),
                        level + 1,
                        s,
                        sl,
                        reserve,
                        share,
                    );
                    if n > 0 {
                        raw::publish(dt, i, fmt.make_table(level, child, n));
                        added += 1;
                    } else {
                        // The source table had nothing inside the range: keep the tree free of
                        // empty tables.
                        reserve.give_back(dst, child);
                    }
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {}
        }
        if sl == last {
            return added;
        }
        s = sl + 1;
    }
}

/// Tables below the source table `table` of `level` (its own not counted).
fn count_subtree<F: PagingFormat, M: PhysMapper>(
    src: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
) -> usize {
    if level + 1 >= src.fmt.depth() {
        return 0;
    }
    let t = src.table(table);
    let fmt = src.fmt;
    t[..fmt.levels()[level].entries()]
        .iter()
        .map(|e| {
            let raw = raw::load_entry(e);
            if fmt.kind(level, raw) == EntryKind::Table {
                1 + count_subtree(src, fmt.table_addr(raw), level + 1)
            } else {
                0
            }
        })
        .sum()
}

/// A new destination table reproducing the source table `table` of `level` and everything
/// below it (frames from `reserve`, as many as [`count_subtree`] plus one); returns it with
/// its entry count.
fn clone_subtree<F: PagingFormat, M: PhysMapper, M2: PhysMapper>(
    src: &Ctx<'_, F, M>,
    dst: &Ctx<'_, F, M2>,
    table: PhysAddr,
    level: usize,
    reserve: &mut Reserve,
    share: &mut Share<'_>,
) -> (PhysAddr, u32) {
    let fmt = src.fmt;
    let n = fmt.levels()[level].entries();
    let st = &src.table(table)[..n];
    if let Some(refs) = share.refs {
        if level + 1 == fmt.depth() && dst.tables.reaches(table) {
            let leaves = shareable(fmt, level, st);
            if leaves > 0 {
                refs.get(table);
                share.shared += 1;
                return (table, leaves);
            }
        }
    }
    let child = reserve.take(dst);
    let dt = &dst.table(child)[..n];
    let mut count = 0u32;
    if level + 1 == fmt.depth() {
        for (d, e) in dt.iter().zip(st) {
            let raw = raw::load_entry(e);
            if fmt.kind(level, raw) == EntryKind::Leaf {
                raw::store_entry(d, raw);
                count += 1;
            }
        }
        return (child, count);
    }
    for (k, e) in st.iter().enumerate() {
        let raw = raw::load_entry(e);
        match fmt.kind(level, raw) {
            EntryKind::Leaf => {
                raw::store(dt, k, raw);
                count += 1;
            }
            EntryKind::Table => {
                let (c, m) =
                    clone_subtree(src, dst, fmt.table_addr(raw), level + 1, reserve, share);
                if m > 0 {
                    raw::publish(dt, k, fmt.make_table(level, c, m));
                    count += 1;
                } else {
                    reserve.give_back(dst, c);
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {}
        }
    }
    (child, count)
}
