//! Change attributes of mapped ranges: protect, and clear accessed/dirty.
//!
//! [`PageTable::protect`] requires every page of the range to be mapped (as `mprotect`
//! reports `ENOMEM` for holes) and applies an [`AttrChange`] to each leaf; leaves whose
//! attributes do not change are left alone (no split, no flush). A huge leaf partly inside the
//! range is split first. A leaf the hardware may write on its own
//! ([`PagingFormat::hw_may_update`]: x86 without A, or writable without D) is rewritten with
//! one atomic read-modify-write, so an accessed/dirty bit the hardware sets concurrently is not
//! lost unless the change clears it; any other leaf with a plain store.
//!
//! In last-level tables both passes run one loop per table, and the decode / change / encode
//! of a leaf's attributes is remembered for the last distinct non-address bits seen (a leaf
//! table's entries usually share them), so a typical leaf costs a load, a compare and a
//! store. Only the slots at the two ends of a range can hold a contiguous-hint run that sticks
//! out of it, so only they are checked for one.
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
use crate::split::{run_sticks_out, split_cost, split_leaf, unrun, whole_runs};
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
        let (mut reserve, unshared) = match self.reserve_unsharing(need, span.first, span.last) {
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
        self.may_global |= change.set.contains(Attrs::GLOBAL);
        let flush = self.join_unshare(flush, unshared);
        Ok(self.tag(flush))
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
        let (reserve, unshared) = match self.reserve_unsharing(0, span.first, span.last) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => return Err(ProtectError::OutOfFrames),
            Err(ReserveError::Unreachable(p)) => return Err(ProtectError::FrameUnreachable(p)),
        };
        self.finish_reserve(reserve);
        let ctx = self.ctx();
        let mut out = Cleared {
            flush: Flush::nothing(),
            leaves: 0,
        };
        clear_ad(&ctx, self.root, 0, span.first, span.last, which, &mut out);
        out.flush = self.tag(self.join_unshare(out.flush, unshared));
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

/// What [`AttrChange`] makes of leaves of one level, remembered for the last leaf seen: a
/// leaf table's entries usually share every bit but their address, so the attribute decode,
/// change and encode run once per distinct rest-of-entry, not once per entry.
struct LeafMemo {
    level: usize,
    /// The entry bits outside the output address ([`PagingFormat::leaf_oa_mask`]).
    oa_mask: u64,
    /// The last non-address bits seen, and what the change makes of them (new non-address
    /// bits, whether they differ in attributes).
    key: u64,
    new_key: u64,
    changes: bool,
    valid: bool,
}

impl LeafMemo {
    fn new<F: PagingFormat>(fmt: &F, level: usize) -> Self {
        Self {
            level,
            oa_mask: fmt.leaf_oa_mask(level),
            key: 0,
            new_key: 0,
            changes: false,
            valid: false,
        }
    }

    /// The leaf `raw` after `change` (contiguous hint kept), and whether its attributes
    /// change; the error of an inexpressible result.
    #[inline(always)]
    fn apply<F: PagingFormat>(
        &mut self,
        fmt: &F,
        raw: u64,
        change: &AttrChange,
    ) -> Result<(u64, bool), ProtectError> {
        let key = raw & !self.oa_mask;
        if !self.valid || key != self.key {
            self.learn(fmt, key, change)?;
        }
        Ok((self.new_key | (raw & self.oa_mask), self.changes))
    }

    /// Decode, change and encode `key` (kept out of line: the loops run it once per distinct
    /// key).
    #[inline(never)]
    fn learn<F: PagingFormat>(
        &mut self,
        fmt: &F,
        key: u64,
        change: &AttrChange,
    ) -> Result<(), ProtectError> {
        let old = fmt.leaf_attrs(self.level, key);
        let new = new_attrs(fmt, old, change)?;
        let e = fmt.leaf_template(self.level, new);
        self.new_key = fmt.set_contiguous(e, fmt.is_contiguous(key));
        self.changes = new != old;
        self.key = key;
        self.valid = true;
        Ok(())
    }
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
    if level == ctx.last_level() {
        return plan_protect_leaves(fmt, t, level, first, last, job);
    }
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

/// [`plan_protect`] in a last-level table: every slot must hold a leaf (whole, so only a
/// contiguous run sticking out of the range can need break-before-make), and the change must
/// be expressible for it. Needs no frames.
fn plan_protect_leaves<F: PagingFormat>(
    fmt: &F,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    job: &Job,
) -> Result<usize, ProtectError> {
    let shift = fmt.leaf_span_mask(level).count_ones();
    let i0 = fmt.index_of(level, first);
    let n = ((last - first) >> shift) as usize + 1;
    let mut memo = LeafMemo::new(fmt, level);
    let hw = touches_hw_bits(&job.change);
    let (k_lo, k_hi) = whole_runs(fmt, level, i0, n);
    for (k, e) in t[i0..i0 + n].iter().enumerate() {
        let raw = raw::load_entry(e);
        if fmt.kind(level, raw) != EntryKind::Leaf {
            return Err(ProtectError::NotMapped(VirtAddr::new(
                first + ((k as u64) << shift),
            )));
        }
        let (_, changes) = memo.apply(fmt, raw, &job.change)?;
        if !job.bbm || !(changes || hw) {
            continue;
        }
        // As in `plan_protect`: a change touching accessed/dirty is planned as changing.
        let va = first + ((k as u64) << shift);
        if (k < k_lo || k >= k_hi)
            && fmt.is_contiguous(raw)
            && run_sticks_out(fmt, level, va, job.first, job.last)
        {
            return Err(ProtectError::BreakBeforeMake(VirtAddr::new(va)));
        }
        let old = fmt.leaf_attrs(level, raw);
        let new = new_attrs(fmt, old, &job.change)?;
        if fmt.attr_change_needs_bbm(old, new) {
            return Err(ProtectError::BreakBeforeMake(VirtAddr::new(va)));
        }
    }
    Ok(0)
}

/// [`apply_protect`] in a last-level table: each leaf that changes is rewritten from the
/// memo — with a plain store where the hardware cannot write the entry meanwhile
/// ([`PagingFormat::hw_may_update`]), with a compare-and-swap loop where it can — and the
/// flush grows once by the span from the first to the last leaf changed.
fn apply_protect_leaves<F: PagingFormat>(
    fmt: &F,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    job: &Job,
    flush: &mut Flush,
) {
    let shift = fmt.leaf_span_mask(level).count_ones();
    let i0 = fmt.index_of(level, first);
    let n = ((last - first) >> shift) as usize + 1;
    let slots = &t[i0..i0 + n];
    let mut memo = LeafMemo::new(fmt, level);
    let (k_lo, k_hi) = whole_runs(fmt, level, i0, n);
    // First and last index changed (`first_k > last_k` while none has).
    let (mut first_k, mut last_k) = (usize::MAX, 0);
    for k in 0..n {
        let mut raw = raw::load(slots, k);
        let Ok((mut new, changes)) = memo.apply(fmt, raw, &job.change) else {
            continue;
        };
        if !changes {
            continue;
        }
        if (k < k_lo || k >= k_hi) && fmt.is_contiguous(raw) {
            let va = first + ((k as u64) << shift);
            if run_sticks_out(fmt, level, va, job.first, job.last) {
                unrun(fmt, t, level, i0 + k);
                raw = raw::load(slots, k);
                new = match memo.apply(fmt, raw, &job.change) {
                    Ok((e, _)) => e,
                    Err(_) => continue,
                };
            }
        }
        if fmt.hw_may_update(raw) {
            raw::update(slots, k, |r| {
                memo.apply(fmt, r, &job.change).map_or(r, |(e, _)| e)
            });
        } else {
            raw::store(slots, k, new);
        }
        first_k = first_k.min(k);
        last_k = k;
    }
    flush.cover_slots(fmt, level, first, shift, (first_k, last_k));
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
    if level == ctx.last_level() {
        return apply_protect_leaves(fmt, t, level, first, last, job, flush);
    }
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
