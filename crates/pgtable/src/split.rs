//! Splitting huge/block mappings and contiguous-hint runs.
//!
//! A partial unmap or protect of a leaf larger than the range needs the leaf replaced by a
//! table of next-level leaves with the same attributes (and so on down until the range edge is
//! aligned): [`split_cost`] counts the frames for the plan pass, [`split_leaf`] does it in the
//! apply pass. Only the first and last slot of a range at each level can be partial, so
//! planning a split costs O(levels), not O(pages).
//!
//! On formats that need break-before-make (aarch64), replacing a valid block by a valid table,
//! or changing the contiguous hint of valid entries, must go through an invalid entry and a TLB
//! invalidation. On a live table the range operations therefore refuse such a change with a
//! `BreakBeforeMake` error, and [`PageTable::split_live`] performs it properly with a
//! [`TlbInvalidate`] in hand: break, invalidate, make.

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PageSize, PhysAddr, PhysMapper, VirtAddr};

use crate::error::SplitError;
use crate::flush::TlbInvalidate;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;
use crate::table::{Ctx, PageTable, Reserve, ReserveError};

/// Tables needed to split the leaf of `level` whose slot `[s, sl]` is only partly in the range.
pub(crate) fn split_cost<F: PagingFormat>(fmt: &F, level: usize, s: u64, sl: u64) -> usize {
    let next = level + 1;
    if next >= fmt.depth() {
        return 0;
    }
    let mask = fmt.levels()[next].entry_span() - 1;
    let mut need = 1;
    // Inside the new table only the edge slots can be partial.
    let a = s;
    let a_last = (a | mask).min(sl);
    if a & mask != 0 || a_last & mask != mask {
        need += split_cost(fmt, next, a, a_last);
    }
    let b = sl & !mask;
    if b > a_last {
        let b_first = b.max(s);
        if sl & mask != mask || b_first & mask != 0 {
            need += split_cost(fmt, next, b_first, sl);
        }
    }
    need
}

/// Whether the contiguous run holding slot `s` of `level` sticks out of `[first, last]`.
pub(crate) fn run_sticks_out<F: PagingFormat>(
    fmt: &F,
    level: usize,
    s: u64,
    first: u64,
    last: u64,
) -> bool {
    let Some(r) = fmt.contiguous_run(level) else {
        return false;
    };
    let run_bytes = fmt.levels()[level].entry_span() * r as u64;
    let run_first = s & !(run_bytes - 1);
    let run_last = run_first + (run_bytes - 1);
    run_first < first || run_last > last
}

/// For the `n` slots of a table of `level` from index `i0`: the slots `k_lo..k_hi` (counted
/// from `i0`) whose contiguous-hint run lies wholly among them. Only slots outside it can
/// hold a run that [`run_sticks_out`] of the range; without the hint at `level` every slot
/// is inside.
#[inline]
pub(crate) fn whole_runs<F: PagingFormat>(
    fmt: &F,
    level: usize,
    i0: usize,
    n: usize,
) -> (usize, usize) {
    match fmt.contiguous_run(level) {
        None => (0, n),
        Some(r) => {
            let lo = (r - i0 % r) % r;
            let hi = n.saturating_sub((i0 + n) % r);
            if lo < hi {
                (lo, hi)
            } else {
                (0, 0)
            }
        }
    }
}

/// Clear the contiguous hint on the whole run holding entry `i` (needs BBM when live).
pub(crate) fn unrun<F: PagingFormat>(fmt: &F, t: &[AtomicU64], level: usize, i: usize) {
    if let Some(r) = fmt.contiguous_run(level) {
        let i0 = i - i % r;
        for j in i0..i0 + r {
            raw::update(t, j, |e| {
                if fmt.kind(level, e) == EntryKind::Leaf {
                    fmt.set_contiguous(e, false)
                } else {
                    e
                }
            });
        }
    }
}

/// Fill a fresh table of `level + 1` with leaves reproducing the leaf `raw` of `level`.
/// Returns the table (not yet linked) and its entry count.
pub(crate) fn build_split<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    level: usize,
    raw: u64,
    reserve: &mut Reserve,
) -> (PhysAddr, u32) {
    let fmt = ctx.fmt;
    let next = level + 1;
    let nl = fmt.levels()[next];
    let base = fmt.leaf_addr(level, raw).as_u64();
    let attrs = fmt.leaf_attrs(level, raw);
    let child = reserve.take(ctx);
    let ct = ctx.table(child);
    let n = nl.entries();
    for j in 0..n {
        let pa = PhysAddr::new(base + ((j as u64) << nl.shift));
        raw::store(ct, j, fmt.make_leaf(next, pa, attrs));
    }
    (child, n as u32)
}

/// Replace the leaf at entry `i` of `level` by a table of next-level leaves (valid to valid:
/// callers have ruled out break-before-make or are not live). Returns the new table.
pub(crate) fn split_leaf<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    i: usize,
    level: usize,
    raw: u64,
    reserve: &mut Reserve,
) -> PhysAddr {
    if ctx.fmt.is_contiguous(raw) {
        unrun(ctx.fmt, t, level, i);
    }
    let raw = raw::load(t, i);
    let (child, n) = build_split(ctx, level, raw, reserve);
    raw::publish(t, i, ctx.fmt.make_table(level, child, n));
    child
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Split the huge/block mapping (or contiguous run) containing `va` by one level, with
    /// break-before-make: the entries are invalidated, `tlb` drops them, then the next-level
    /// table is installed. Use it on live tables before an unmap or protect that would
    /// otherwise fail with `BreakBeforeMake`. A base page or a run-free leaf at the last level
    /// is left as is. Nothing changes on error.
    pub fn split_live<T: TlbInvalidate + ?Sized>(
        &mut self,
        va: VirtAddr,
        tlb: &mut T,
    ) -> Result<(), SplitError> {
        if !va.is_aligned(self.fmt.granule().bytes()) || !self.fmt.is_canonical(va) {
            return Err(SplitError::BadAddress(va));
        }
        // A leaf table shared with another tree (`crate::share`) is made private first (the
        // split may rewrite a contiguous run in it), and the shared one released at once,
        // through `tlb`.
        let first = va.as_u64();
        if self.shared_in(first, first) > 0 {
            let (r, unshared) = match self.reserve_unsharing(0, first, first) {
                Ok(r) => r,
                Err(ReserveError::OutOfFrames) => return Err(SplitError::OutOfFrames),
                Err(ReserveError::Unreachable(p)) => return Err(SplitError::FrameUnreachable(p)),
            };
            self.finish_reserve(r);
            let freed = self.tag(unshared).invalidate(tlb);
            if self.free_tables(freed).is_err() {
                unreachable!("the token came from this table");
            }
        }
        let ctx = self.ctx();
        let levels = self.fmt.levels();
        let mut table = self.root;
        let mut level = 0;
        let (i, raw) = loop {
            let t = ctx.table(table);
            let i = levels[level].index(va.as_u64());
            let raw = raw::load(t, i);
            match self.fmt.kind(level, raw) {
                EntryKind::Table => {
                    table = self.fmt.table_addr(raw);
                    level += 1;
                }
                EntryKind::Leaf => break (i, raw),
                _ => return Err(SplitError::NotMapped(va)),
            }
        };
        let last = level + 1 == self.fmt.depth();
        let cont = self.fmt.is_contiguous(raw);
        if last && !cont {
            return Ok(());
        }
        let mut reserve = if last {
            Reserve::empty()
        } else {
            match self.reserve(1) {
                Ok(r) => r,
                Err(ReserveError::OutOfFrames) => return Err(SplitError::OutOfFrames),
                Err(ReserveError::Unreachable(p)) => return Err(SplitError::FrameUnreachable(p)),
            }
        };
        let ctx = self.ctx();
        let levels = self.fmt.levels();
        let t = ctx.table(table);
        let lv = levels[level];
        let size = lv.leaf.unwrap_or(PageSize::Size4K);
        let slot = va.as_u64() & !(lv.entry_span() - 1);
        // The entries to break: the whole contiguous run, or just this leaf.
        let (i0, n) = match (cont, self.fmt.contiguous_run(level)) {
            (true, Some(r)) => (i - i % r, r),
            _ => (i, 1),
        };
        let span = lv.entry_span();
        let run_va0 = slot - (i - i0) as u64 * span;
        let mut saved = [0u64; 128];
        let saved = &mut saved[..n.min(128)];
        for (k, e) in saved.iter_mut().enumerate() {
            *e = raw::load(t, i0 + k);
            raw::store(t, i0 + k, 0);
        }
        for k in 0..saved.len() {
            tlb.invalidate_page(VirtAddr::new(run_va0 + k as u64 * span), size, true);
        }
        for (k, &e) in saved.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let e = self.fmt.set_contiguous(e, false);
            if i0 + k == i && !last {
                let (child, cnt) = build_split(&ctx, level, e, &mut reserve);
                raw::publish(t, i, self.fmt.make_table(level, child, cnt));
            } else {
                raw::store(t, i0 + k, e);
            }
        }
        self.finish_reserve(reserve);
        Ok(())
    }
}
