//! Unmap a range.
//!
//! Holes inside the range are allowed (as with `munmap`). Leaves wholly inside the range are
//! cleared; a huge/block leaf partly inside is split first. A table whose whole span is inside
//! the range is unhooked with a single store and handed back in the token together with every
//! table below it — its leaves are not cleared one by one, because nothing can reach them once
//! the parent entry is gone and the flush has run (Linux's `free_pgtables` relies on the same
//! fact). A table emptied by the unmap is unhooked the same way. Tables are never freed here.
//!
//! The plan pass looks only at the range's edge slots (where splits and contiguous-run breaks
//! happen), so an unmap costs one descent plus the work on the tables it touches; in a
//! partly covered last-level table the leaves are cleared in one loop and the token grows
//! once, by the span from the first to the last leaf cleared.

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::error::UnmapError;
use crate::flush::Flush;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;
use crate::split::{run_sticks_out, split_cost, split_leaf, unrun};
use crate::table::{Ctx, PageTable, Reserve, ReserveError, SpanError};

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Remove every mapping in `[va, va + len)`, splitting huge mappings that stick out.
    ///
    /// Errors leave the table unchanged: misaligned or non-canonical range, too few frames to
    /// split, or (live table, break-before-make format) a block or contiguous run that would
    /// need splitting — call [`split_live`](Self::split_live) at the edges first.
    pub fn unmap(&mut self, va: VirtAddr, len: u64) -> Result<Flush, UnmapError> {
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Flush::nothing()),
            Err(SpanError::Unaligned(m)) => return Err(UnmapError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(UnmapError::NonCanonical(v)),
        };
        let bbm = self.live && self.fmt.needs_break_before_make();
        let ctx = self.ctx();
        let need = plan_unmap(&ctx, self.root, 0, span.first, span.last, bbm)?;
        let (mut reserve, unshared) = match self.reserve_unsharing(need, span.first, span.last) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => return Err(UnmapError::OutOfFrames),
            Err(ReserveError::Unreachable(p)) => return Err(UnmapError::FrameUnreachable(p)),
        };
        let ctx = self.ctx();
        let mut flush = Flush::nothing();
        let removed = apply_unmap(
            &ctx,
            ctx.table(self.root),
            0,
            span.first,
            span.last,
            &mut reserve,
            &mut flush,
        );
        self.root_count -= removed;
        self.owned -= flush.freed.count;
        self.finish_reserve(reserve);
        let flush = self.join_unshare(flush, unshared);
        Ok(self.tag(flush))
    }
}

/// Plan the edge work of an unmap of `[first, last]` inside table `table` of `level`: count
/// split tables, refuse break-before-make on live tables.
fn plan_unmap<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    bbm: bool,
) -> Result<usize, UnmapError> {
    let t = ctx.table(table);
    let lv = ctx.fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut need = 0;
    let a = first;
    let a_last = (a | mask).min(last);
    need += plan_unmap_slot(ctx, t, level, a, a_last, first, last, bbm)?;
    let b = last & !mask;
    if b > a_last {
        need += plan_unmap_slot(ctx, t, level, b, last, first, last, bbm)?;
    }
    Ok(need)
}

#[allow(clippy::too_many_arguments)]
fn plan_unmap_slot<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    level: usize,
    s: u64,
    sl: u64,
    first: u64,
    last: u64,
    bbm: bool,
) -> Result<usize, UnmapError> {
    let lv = ctx.fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let whole = s & mask == 0 && sl & mask == mask;
    let raw = raw::load(t, lv.index(s));
    match ctx.fmt.kind(level, raw) {
        EntryKind::Leaf => {
            let breaks_run =
                ctx.fmt.is_contiguous(raw) && run_sticks_out(ctx.fmt, level, s, first, last);
            if bbm && (breaks_run || !whole) {
                return Err(UnmapError::BreakBeforeMake(VirtAddr::new(s & !mask)));
            }
            Ok(if whole {
                0
            } else {
                split_cost(ctx.fmt, level, s, sl)
            })
        }
        EntryKind::Table if !whole => {
            plan_unmap(ctx, ctx.fmt.table_addr(raw), level + 1, s, sl, bbm)
        }
        _ => Ok(0),
    }
}

/// Unmap `[first, last]` inside `t` of `level`; returns the number of entries removed from `t`.
fn apply_unmap<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    reserve: &mut Reserve,
    flush: &mut Flush,
) -> u32 {
    let fmt = ctx.fmt;
    if level == ctx.last_level() {
        return unmap_leaves(fmt, t, level, first, last, flush);
    }
    let lv = fmt.levels()[level];
    let span = lv.entry_span();
    let mask = span - 1;
    let mut removed = 0u32;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let whole = s & mask == 0 && sl & mask == mask;
        let slot = s & !mask;
        let i = lv.index(s);
        let mut raw = raw::load(t, i);
        let mut kind = fmt.kind(level, raw);
        if kind == EntryKind::Leaf {
            let size = lv.leaf.unwrap_or(fmt.granule());
            if fmt.is_contiguous(raw) && run_sticks_out(fmt, level, s, first, last) {
                // Invalidating the removed part (inside the run) also drops a TLB entry
                // that cached the whole run.
                unrun(fmt, t, level, i);
                raw = raw::load(t, i);
            }
            if whole {
                raw::store(t, i, 0);
                removed += 1;
                flush.add(slot, size);
            } else {
                // The removed part lies inside the old leaf, so invalidating it also drops
                // the old huge translation.
                split_leaf(ctx, t, i, level, raw, reserve);
                flush.tables = true;
                raw = raw::load(t, i);
                kind = EntryKind::Table;
            }
        }
        if kind == EntryKind::Table {
            let child = fmt.table_addr(raw);
            if whole {
                ctx.retire_subtree(child, level + 1, flush);
                raw::store(t, i, 0);
                removed += 1;
                let stride = flush.stride.unwrap_or(fmt.granule());
                flush.cover(slot, slot + mask, stride);
            } else {
                let n = apply_unmap(ctx, ctx.table(child), level + 1, s, sl, reserve, flush);
                if n > 0 {
                    let left = fmt.table_count(raw::load(t, i)) - n;
                    if left == 0 {
                        raw::store(t, i, 0);
                        removed += 1;
                        ctx.push_freed(&mut flush.freed, child, true);
                        flush.add_table(s, sl - s + 1, flush.stride.unwrap_or(fmt.granule()));
                    } else {
                        raw::update(t, i, |r| fmt.set_table_count(r, left));
                    }
                }
            }
        }
        if sl == last {
            return removed;
        }
        s = sl + 1;
    }
}

/// [`apply_unmap`] in a last-level table: every leaf is whole, so each slot is cleared in
/// one loop (after the contiguous runs sticking out at the two edges lost their hint: a run
/// is all valid or all absent, so an edge slot tells whether one sticks out), and the flush
/// grows once by the span from the first to the last leaf cleared.
fn unmap_leaves<F: PagingFormat>(
    fmt: &F,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    flush: &mut Flush,
) -> u32 {
    let shift = fmt.leaf_span_mask(level).count_ones();
    let i0 = fmt.index_of(level, first);
    let n = ((last - first) >> shift) as usize + 1;
    if fmt.contiguous_run(level).is_some() {
        for (i, va) in [(i0, first), (i0 + n - 1, last)] {
            let raw = raw::load(t, i);
            if fmt.kind(level, raw) == EntryKind::Leaf
                && fmt.is_contiguous(raw)
                && run_sticks_out(fmt, level, va, first, last)
            {
                // Invalidating the removed part (inside the run) also drops a TLB entry
                // that cached the whole run.
                unrun(fmt, t, level, i);
            }
        }
    }
    let mut removed = 0u32;
    // First and last index cleared (`first_k > last_k` while none is).
    let (mut first_k, mut last_k) = (usize::MAX, 0);
    for (k, e) in t[i0..i0 + n].iter().enumerate() {
        if fmt.kind(level, raw::load_entry(e)) == EntryKind::Leaf {
            raw::clear_entry(e);
            removed += 1;
            first_k = first_k.min(k);
            last_k = k;
        }
    }
    flush.cover_slots(fmt, level, first, shift, (first_k, last_k));
    removed
}
