//! Change attributes of mapped ranges: protect, and clear accessed/dirty.
//!
//! [`PageTable::protect`] requires every page of the range to be mapped (as `mprotect`
//! reports `ENOMEM` for holes) and applies an [`AttrChange`] to each leaf; leaves whose
//! attributes do not change are left alone (no split, no flush). A huge leaf partly inside the
//! range is split first. Each leaf is rewritten with one atomic read-modify-write, so an
//! accessed/dirty bit the hardware sets concurrently is not lost unless the change clears it.
//!
//! [`PageTable::clear_accessed_dirty`] clears A and/or D on every leaf in the range (holes
//! allowed, huge leaves cleared whole — the bits are per translation) and reports how many
//! leaves had them, for reclaim's "young" scan and for writeback.

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::attrs::{AttrChange, Attrs};
use crate::error::ProtectError;
use crate::flush::Flush;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;
use crate::split::{run_sticks_out, split_cost, split_leaf, unrun};
use crate::table::{Ctx, PageTable, Reserve, ReserveError, SpanError};

/// The outcome of [`PageTable::clear_accessed_dirty`].
#[must_use = "the flush token inside must be invalidated"]
#[derive(Debug)]
pub struct Cleared {
    /// What to invalidate.
    pub flush: Flush,
    /// Leaves that had at least one of the requested bits set.
    pub leaves: usize,
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Apply `change` to every leaf of `[va, va + len)`, splitting huge leaves that stick out.
    ///
    /// Errors leave the table unchanged: misaligned or non-canonical range, a page of the
    /// range not mapped, a resulting attribute set the format cannot express, too few frames
    /// to split, or (live table, break-before-make format) a change that needs
    /// break-before-make — a cache-policy change or a split.
    pub fn protect(
        &mut self,
        va: VirtAddr,
        len: u64,
        change: AttrChange,
    ) -> Result<Flush, ProtectError> {
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Flush::nothing()),
            Err(SpanError::Unaligned(m)) => return Err(ProtectError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(ProtectError::NonCanonical(v)),
        };
        let bbm = self.live && self.fmt.needs_break_before_make();
        let ctx = self.ctx();
        let job = Job {
            first: span.first,
            last: span.last,
            change,
            bbm,
        };
        let need = plan_protect(&ctx, self.root, 0, span.first, span.last, &job)?;
        let mut reserve = match self.reserve(need) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => return Err(ProtectError::OutOfFrames),
            Err(ReserveError::Unreachable(p)) => return Err(ProtectError::FrameUnreachable(p)),
        };
        let ctx = self.ctx();
        let mut flush = Flush::nothing();
        apply_protect(
            &ctx,
            ctx.table(self.root),
            0,
            span.first,
            span.last,
            &job,
            &mut reserve,
            &mut flush,
        );
        self.finish_reserve(reserve);
        Ok(flush)
    }

    /// Clear `which` (a subset of ACCESSED | DIRTY) on every leaf in `[va, va + len)`.
    pub fn clear_accessed_dirty(
        &mut self,
        va: VirtAddr,
        len: u64,
        which: Attrs,
    ) -> Result<Cleared, ProtectError> {
        let which = which & (Attrs::ACCESSED | Attrs::DIRTY);
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Ok(Cleared {
                    flush: Flush::nothing(),
                    leaves: 0,
                })
            }
            Err(SpanError::Unaligned(m)) => return Err(ProtectError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(ProtectError::NonCanonical(v)),
        };
        let ctx = self.ctx();
        let mut out = Cleared {
            flush: Flush::nothing(),
            leaves: 0,
        };
        clear_ad(&ctx, self.root, 0, span.first, span.last, which, &mut out);
        Ok(out)
    }
}

struct Job {
    first: u64,
    last: u64,
    change: AttrChange,
    bbm: bool,
}

/// Whether `change` sets or clears a bit the hardware may set on its own (x86 A/D).
#[inline]
fn touches_hw_bits(change: &AttrChange) -> bool {
    (change.set | change.clear).intersects(Attrs::ACCESSED | Attrs::DIRTY)
}

/// The attributes a leaf gets, in stored form.
#[inline]
fn new_attrs<F: PagingFormat>(
    fmt: &F,
    old: Attrs,
    change: &AttrChange,
) -> Result<Attrs, ProtectError> {
    fmt.normalize(change.apply(old))
        .map_err(ProtectError::BadAttrs)
}

fn plan_protect<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    job: &Job,
) -> Result<usize, ProtectError> {
    let fmt = ctx.fmt;
    let t = ctx.table(table);
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut need = 0;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let whole = s & mask == 0 && sl & mask == mask;
        let slot = VirtAddr::new(s & !mask);
        let raw = raw::load(t, lv.index(s));
        match fmt.kind(level, raw) {
            EntryKind::Absent | EntryKind::Malformed => {
                return Err(ProtectError::NotMapped(VirtAddr::new(s)))
            }
            EntryKind::Table => {
                need += plan_protect(ctx, fmt.table_addr(raw), level + 1, s, sl, job)?;
            }
            EntryKind::Leaf => {
                let old = fmt.leaf_attrs(level, raw);
                let new = new_attrs(fmt, old, &job.change)?;
                // The hardware may set accessed/dirty between plan and apply; a change that
                // touches those bits is planned as changing the leaf whatever they are now,
                // so apply never needs a frame or a BBM decision the plan did not see.
                if new != old || touches_hw_bits(&job.change) {
                    let breaks_run = fmt.is_contiguous(raw)
                        && run_sticks_out(fmt, level, s, job.first, job.last);
                    if job.bbm && (breaks_run || !whole || fmt.attr_change_needs_bbm(old, new)) {
                        return Err(ProtectError::BreakBeforeMake(slot));
                    }
                    if !whole {
                        need += split_cost(fmt, level, s, sl);
                    }
                }
            }
        }
        if sl == last {
            return Ok(need);
        }
        s = sl + 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_protect<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    job: &Job,
    reserve: &mut Reserve,
    flush: &mut Flush,
) {
    let fmt = ctx.fmt;
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let whole = s & mask == 0 && sl & mask == mask;
        let slot = s & !mask;
        let i = lv.index(s);
        let raw = raw::load(t, i);
        match fmt.kind(level, raw) {
            EntryKind::Table => {
                let ct = ctx.table(fmt.table_addr(raw));
                apply_protect(ctx, ct, level + 1, s, sl, job, reserve, flush);
            }
            EntryKind::Leaf => {
                let old = fmt.leaf_attrs(level, raw);
                let changes = new_attrs(fmt, old, &job.change).is_ok_and(|n| n != old);
                if changes {
                    if fmt.is_contiguous(raw) && run_sticks_out(fmt, level, s, job.first, job.last)
                    {
                        unrun(fmt, t, level, i);
                    }
                    if whole {
                        let size = lv.leaf.unwrap_or(fmt.granule());
                        raw::update(t, i, |r| {
                            let a = fmt.leaf_attrs(level, r);
                            let n = new_attrs(fmt, a, &job.change).unwrap_or(a);
                            let e = fmt.make_leaf(level, fmt.leaf_addr(level, r), n);
                            fmt.set_contiguous(e, fmt.is_contiguous(r))
                        });
                        flush.add(slot, size);
                    } else {
                        let child = split_leaf(ctx, t, i, level, raw::load(t, i), reserve);
                        flush.tables = true;
                        apply_protect(ctx, ctx.table(child), level + 1, s, sl, job, reserve, flush);
                    }
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {
                debug_assert!(false, "plan_protect let a hole through at {s:#x}");
            }
        }
        if sl == last {
            return;
        }
        s = sl + 1;
    }
}

fn clear_ad<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    which: Attrs,
    out: &mut Cleared,
) {
    let fmt = ctx.fmt;
    let t = ctx.table(table);
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let i = lv.index(s);
        let raw = raw::load(t, i);
        match fmt.kind(level, raw) {
            EntryKind::Table => clear_ad(ctx, fmt.table_addr(raw), level + 1, s, sl, which, out),
            EntryKind::Leaf if fmt.leaf_attrs(level, raw).intersects(which) => {
                raw::update(t, i, |r| {
                    let a = fmt.leaf_attrs(level, r).difference(which);
                    let e = fmt.make_leaf(level, fmt.leaf_addr(level, r), a);
                    fmt.set_contiguous(e, fmt.is_contiguous(r))
                });
                out.leaves += 1;
                out.flush.add(s & !mask, lv.leaf.unwrap_or(fmt.granule()));
            }
            _ => {}
        }
        if sl == last {
            return;
        }
        s = sl + 1;
    }
}
