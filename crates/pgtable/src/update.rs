//! The mutating cursor: visit every leaf of a range and rewrite it in one pass (Linux's
//! `apply_to_page_range`, or `walk_page_range` with callbacks that change entries).
//!
//! [`PageTable::update_leaves`] hands each leaf overlapping `[va, va + len)` to a callback, as
//! a [`Translation`], in address order, and does what the callback answers
//! ([`LeafUpdate`]): keep the leaf, give it new attributes, point it at another physical
//! address, or remove it. Leaves are whole, as [`walk`](PageTable::walk) reports them: a
//! huge/block leaf partly inside the range is changed as a whole (split it first with
//! [`protect`](PageTable::protect) or [`split_live`](PageTable::split_live) to change only
//! part of it). A table emptied by removals is unhooked and handed back in the token, as
//! unmap does.
//!
//! # Exactly one outcome per leaf, and errors change nothing
//! The callback is a plain `Fn` and is asked twice per leaf: a *plan* pass checks every
//! answer (attributes the format can express, a remap target aligned to the leaf and within
//! the output width, break-before-make on live tables) without writing anything, and the
//! *apply* pass writes. An answer that was valid in the plan is applied; should a callback
//! answer differently the second time, with an invalid answer or one needing a
//! break-before-make the plan did not allow, that leaf is kept.
//!
//! # Flush token and break-before-make
//! The token covers exactly the leaves that changed (their slots, at the smallest size
//! changed) and, when a table was unhooked, its span with walk caches included. Where the
//! format needs break-before-make (aarch64: a new output address, memory type or nG, or a
//! change inside a contiguous-hint run, whose hint must go first) and the table is live,
//! [`update_leaves`](PageTable::update_leaves) refuses with
//! [`UpdateError::BreakBeforeMake`] before writing anything, while
//! [`update_leaves_live`](PageTable::update_leaves_live) performs it through the given
//! [`TlbInvalidate`]: the entries (the whole run, for a run) are made invalid, invalidated,
//! and only then written with their new value. Leaves changed that way are already
//! invalidated and are not in the token.
//!
//! Where the hardware may set accessed/dirty on its own ([`PagingFormat::hw_may_update`]),
//! each leaf is rewritten with a compare-and-swap, and a bit the hardware set since the
//! callback saw the leaf is kept in the new value.

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::attrs::Attrs;
use crate::error::{AttrError, Misaligned};
use crate::flush::{Flush, TlbInvalidate};
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;
use crate::split::unrun;
use crate::table::{Ctx, PageTable, ReserveError, SpanError, Translation};
use crate::walk::leaf_translation;

/// What [`PageTable::update_leaves`] does to one leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUpdate {
    /// Leave the leaf as it is.
    Keep,
    /// Keep the output address, use these attributes (normalized by the format).
    Attrs(Attrs),
    /// Map the leaf's whole span to this physical address (aligned to the leaf's size) with
    /// these attributes.
    Remap(PhysAddr, Attrs),
    /// Remove the leaf.
    Unmap,
}

/// Why [`PageTable::update_leaves`] failed. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// An argument is not aligned to the granule.
    Unaligned(Misaligned),
    /// The range leaves the canonical address space of the format (or wraps).
    NonCanonical(VirtAddr),
    /// The callback gave the leaf at this address attributes the format cannot express.
    BadAttrs(VirtAddr, AttrError),
    /// The callback remapped the leaf at this address to a physical address not aligned to
    /// the leaf's size or beyond the output width.
    BadRemap(VirtAddr, PhysAddr),
    /// The change of the leaf at this address needs break-before-make on a live table: use
    /// [`update_leaves_live`](PageTable::update_leaves_live).
    BreakBeforeMake(VirtAddr),
    /// Too few table frames to give this tree private copies of the leaf tables it shares
    /// with another tree in the range (see [`PageTable::copy_range_to`]).
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach.
    FrameUnreachable(PhysAddr),
}

impl core::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Per-call constants of an update.
struct Job<'u, U> {
    update: &'u U,
    /// Live table on a break-before-make format.
    bbm: bool,
}

/// A checked answer: the new raw entry (0 to remove), or `None` to keep the leaf.
type Outcome = Option<u64>;

/// The longest contiguous-hint run of any format (aarch64 16 KiB granule, level 3).
const MAX_RUN: usize = 128;

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Visit every leaf overlapping `[va, va + len)` (granule-aligned, canonical), in address
    /// order, and apply what `update` answers for it (Linux's `apply_to_page_range`).
    ///
    /// Leaves are whole, as [`walk`](Self::walk) reports them: a huge/block leaf partly in
    /// the range is changed as a whole (split it first to change part of it). `update` is
    /// asked twice per leaf — once to check every answer before anything is written, once
    /// to apply — so it should answer the same both times (a leaf whose second answer is
    /// invalid, or needs a break the first did not, is kept). Tables emptied by [`LeafUpdate::Unmap`] are unhooked and travel in
    /// the token. The token covers exactly the leaves that changed.
    ///
    /// Errors leave the table unchanged: misaligned or non-canonical range, an answer the
    /// format cannot express, or (live table, break-before-make format: a new output
    /// address, memory type or nG, or any change inside a contiguous-hint run) an answer
    /// that needs break-before-make — use [`update_leaves_live`](Self::update_leaves_live).
    pub fn update_leaves<U: Fn(&Translation) -> LeafUpdate>(
        &mut self,
        va: VirtAddr,
        len: u64,
        update: U,
    ) -> Result<Flush, UpdateError> {
        self.update_leaves_inner(va, len, None, &update)
    }

    /// [`update_leaves`](Self::update_leaves) on a live table: changes that need
    /// break-before-make are made through `tlb` (invalid entries — the whole run for a
    /// contiguous-hint run —, their invalidation, then the new entries) instead of refused.
    /// Leaves changed that way are already invalidated and are not in the token.
    pub fn update_leaves_live<T: TlbInvalidate, U: Fn(&Translation) -> LeafUpdate>(
        &mut self,
        va: VirtAddr,
        len: u64,
        tlb: &mut T,
        update: U,
    ) -> Result<Flush, UpdateError> {
        self.update_leaves_inner(va, len, Some(tlb), &update)
    }

    fn update_leaves_inner<U: Fn(&Translation) -> LeafUpdate>(
        &mut self,
        va: VirtAddr,
        len: u64,
        mut tlb: Option<&mut dyn TlbInvalidate>,
        update: &U,
    ) -> Result<Flush, UpdateError> {
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Flush::nothing()),
            Err(SpanError::Unaligned(m)) => return Err(UpdateError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(UpdateError::NonCanonical(v)),
        };
        let job = Job {
            update,
            bbm: self.live && self.fmt.needs_break_before_make(),
        };
        let ctx = self.ctx();
        // Without a TLB handle, the plan refuses every change that needs break-before-make.
        let refuse_bbm = job.bbm && tlb.is_none();
        plan_update(&ctx, self.root, 0, span.first, span.last, &job, refuse_bbm)?;
        let (reserve, unshared) = match self.reserve_unsharing(0, span.first, span.last) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => return Err(UpdateError::OutOfFrames),
            Err(ReserveError::Unreachable(p)) => return Err(UpdateError::FrameUnreachable(p)),
        };
        self.finish_reserve(reserve);
        let ctx = self.ctx();
        let mut flush = Flush::nothing();
        let root = ctx.table(self.root);
        let removed = apply_update(
            &ctx, root, 0, span.first, span.last, &job, &mut tlb, &mut flush,
        );
        self.root_count -= removed;
        self.owned -= flush.freed.count;
        // `apply_leaf` marks the token when it wrote a global leaf.
        self.may_global |= flush.global;
        let flush = self.join_unshare(flush, unshared);
        Ok(self.tag(flush))
    }
}

/// The raw entry `answer` makes of the leaf `raw` at `level` (described by `t`), or why it
/// cannot be.
fn outcome<F: PagingFormat>(
    fmt: &F,
    level: usize,
    raw: u64,
    t: &Translation,
    answer: LeafUpdate,
) -> Result<Outcome, UpdateError> {
    let (pa, attrs) = match answer {
        LeafUpdate::Keep => return Ok(None),
        LeafUpdate::Unmap => return Ok(Some(0)),
        LeafUpdate::Attrs(a) => (t.page_pa, a),
        LeafUpdate::Remap(pa, a) => {
            let size = t.size.bytes();
            let fits = pa
                .as_u64()
                .checked_add(size - 1)
                .is_some_and(|end| fmt.phys_fits(end));
            if !pa.is_aligned(size) || !fits {
                return Err(UpdateError::BadRemap(t.page_va, pa));
            }
            (pa, a)
        }
    };
    let attrs = fmt
        .normalize(attrs)
        .map_err(|e| UpdateError::BadAttrs(t.page_va, e))?;
    let new = fmt.make_leaf(level, pa, attrs);
    // An unchanged leaf keeps its contiguous hint; a changed one loses it (with its run).
    if new == fmt.set_contiguous(raw, false) {
        return Ok(None);
    }
    Ok(Some(new))
}

/// Whether replacing the valid leaf `old` by `new` (0: removing it) needs break-before-make
/// on a format that has it.
fn needs_bbm<F: PagingFormat>(fmt: &F, level: usize, old: u64, new: u64) -> bool {
    if fmt.is_contiguous(old) {
        // The run's hint goes first, on valid entries.
        return true;
    }
    if new == 0 {
        return false;
    }
    fmt.leaf_addr(level, old) != fmt.leaf_addr(level, new)
        || fmt.attr_change_needs_bbm(fmt.leaf_attrs(level, old), fmt.leaf_attrs(level, new))
}

fn plan_update<F: PagingFormat, M: PhysMapper, U: Fn(&Translation) -> LeafUpdate>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    job: &Job<'_, U>,
    refuse_bbm: bool,
) -> Result<(), UpdateError> {
    let fmt = ctx.fmt;
    let t = ctx.table(table);
    let mask = fmt.leaf_span_mask(level);
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let raw = raw::load(t, fmt.index_of(level, s));
        match fmt.kind(level, raw) {
            EntryKind::Table => {
                plan_update(ctx, fmt.table_addr(raw), level + 1, s, sl, job, refuse_bbm)?
            }
            EntryKind::Leaf => {
                let tr = leaf_translation(fmt, level, s & !mask, raw);
                if let Some(new) = outcome(fmt, level, raw, &tr, (job.update)(&tr))? {
                    if refuse_bbm && needs_bbm(fmt, level, raw, new) {
                        return Err(UpdateError::BreakBeforeMake(tr.page_va));
                    }
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {}
        }
        if sl == last {
            return Ok(());
        }
        s = sl + 1;
    }
}

/// Apply the planned update to `[first, last]` in `t` of `level`; returns the number of
/// entries removed from `t`.
#[allow(clippy::too_many_arguments)]
fn apply_update<F: PagingFormat, M: PhysMapper, U: Fn(&Translation) -> LeafUpdate>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    job: &Job<'_, U>,
    tlb: &mut Option<&mut dyn TlbInvalidate>,
    flush: &mut Flush,
) -> u32 {
    let fmt = ctx.fmt;
    let mask = fmt.leaf_span_mask(level);
    let mut removed = 0u32;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let slot = s & !mask;
        let i = fmt.index_of(level, s);
        let raw = raw::load(t, i);
        match fmt.kind(level, raw) {
            EntryKind::Table => {
                let child = fmt.table_addr(raw);
                let n = apply_update(ctx, ctx.table(child), level + 1, s, sl, job, tlb, flush);
                if n > 0 {
                    let left = fmt.table_count(raw::load(t, i)) - n;
                    if left == 0 {
                        raw::store(t, i, 0);
                        removed += 1;
                        ctx.push_freed(&mut flush.freed, child, true);
                        let stride = flush.stride.unwrap_or(fmt.granule());
                        flush.add_table(slot, mask + 1, stride);
                    } else {
                        raw::update(t, i, |r| fmt.set_table_count(r, left));
                    }
                }
            }
            EntryKind::Leaf => {
                let tr = leaf_translation(fmt, level, slot, raw);
                // An answer that turned invalid since the plan keeps the leaf.
                if let Ok(Some(new)) = outcome(fmt, level, raw, &tr, (job.update)(&tr)) {
                    if apply_leaf(ctx, t, i, level, &tr, raw, new, job.bbm, tlb, flush) {
                        removed += 1;
                    }
                }
            }
            EntryKind::Absent | EntryKind::Malformed => {}
        }
        if sl == last {
            return removed;
        }
        s = sl + 1;
    }
}

/// Replace the leaf `raw` at entry `i` by `new` (0: remove it); returns whether it was
/// removed.
#[allow(clippy::too_many_arguments)]
fn apply_leaf<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    i: usize,
    level: usize,
    tr: &Translation,
    mut raw: u64,
    new: u64,
    bbm: bool,
    tlb: &mut Option<&mut dyn TlbInvalidate>,
    flush: &mut Flush,
) -> bool {
    let fmt = ctx.fmt;
    let slot = tr.page_va.as_u64();
    if new != 0 && fmt.leaf_attrs(level, new).contains(Attrs::GLOBAL) {
        flush.global = true;
    }
    let live_bbm = bbm && needs_bbm(fmt, level, raw, new);
    let tlb = match tlb {
        Some(tlb) if live_bbm => Some(&mut **tlb),
        _ => None,
    };
    if live_bbm && tlb.is_none() {
        // The plan refused every break without a TLB handle: this answer differs from the
        // one it checked, and the leaf is kept rather than changed without the break.
        return false;
    }
    if let Some(tlb) = tlb {
        // Break: the whole run (its hint changes) or this leaf; invalidate; make (the run's
        // other entries come back unchanged but without the hint).
        let (i0, n) = match fmt.contiguous_run(level) {
            Some(r) if fmt.is_contiguous(raw) => (i - i % r, r.min(MAX_RUN)),
            _ => (i, 1),
        };
        let span = tr.size.bytes();
        let va0 = slot - (i - i0) as u64 * span;
        let mut saved = [0u64; MAX_RUN];
        let saved = &mut saved[..n];
        for (k, e) in saved.iter_mut().enumerate() {
            *e = raw::load(t, i0 + k);
            raw::store(t, i0 + k, 0);
        }
        tlb.begin();
        for (k, &e) in saved.iter().enumerate() {
            if e != 0 {
                tlb.invalidate_page(VirtAddr::new(va0 + k as u64 * span), tr.size, true);
            }
        }
        tlb.finish();
        for (k, &e) in saved.iter().enumerate() {
            if i0 + k == i {
                raw::store(t, i, new);
            } else if e != 0 {
                raw::store(t, i0 + k, fmt.set_contiguous(e, false));
            }
        }
        return new == 0;
    }
    if fmt.is_contiguous(raw) {
        // Not live (or the format has no break-before-make): clear the run's hint in place.
        // Invalidating this leaf (inside the run) also drops a TLB entry of the whole run.
        unrun(fmt, t, level, i);
        raw = raw::load(t, i);
    }
    if new == 0 {
        raw::store(t, i, 0);
    } else if fmt.hw_may_update(raw) {
        let seen = fmt.leaf_attrs(level, raw);
        raw::update(t, i, |r| {
            if r == raw {
                return new;
            }
            // Keep accessed/dirty the hardware set since the callback saw the leaf.
            let hw = (fmt.leaf_attrs(level, r) - seen) & (Attrs::ACCESSED | Attrs::DIRTY);
            let attrs = fmt.leaf_attrs(level, new) | hw;
            fmt.make_leaf(level, fmt.leaf_addr(level, new), attrs)
        });
    } else {
        raw::store(t, i, new);
    }
    flush.add(slot, tr.size);
    new == 0
}
