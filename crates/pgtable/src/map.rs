//! Map a range: plan (find conflicts, count tables), reserve, apply.
//!
//! Page sizes: with [`MapSize::Largest`] each entry slot fully inside the range whose physical
//! address is aligned to the slot's span becomes a leaf at the highest level that allows one,
//! unless a table already exists there (then the mapping continues inside it with smaller
//! pages). With [`MapSize::Exactly`] every leaf has the given size. On formats with a
//! contiguous hint, every run-aligned group of fresh leaves that lies wholly in the range, is
//! physically aligned to the run and was wholly absent gets the hint — decided before the
//! entries are written, so no valid entry ever changes its hint in place.
//!
//! Cost: the plan reads only the slots of tables that already exist (it counts the tables a
//! fresh stretch needs without visiting its pages), and the apply pass writes each leaf table
//! (or each table of forced-size leaves) in one loop from a template computed once per table
//! ([`PagingFormat::leaf_template`] | [`PagingFormat::leaf_oa_bits`]), since the plan has
//! proved every slot it writes absent.
//!
//! A new mapping replaces only absent entries, so it needs no invalidation on either
//! architecture; the returned token is empty but must still be invalidated (on aarch64 the
//! hardware TLB type issues the barrier that makes new entries visible to the walker).

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::attrs::Attrs;
use crate::error::{MapError, Misaligned};
use crate::flush::Flush;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;
use crate::table::{Ctx, MapSize, PageTable, Reserve, ReserveError, SpanError};

/// Per-call constants of a map.
#[derive(Clone, Copy)]
pub(crate) struct MapOpts {
    /// The level every leaf must be at, for [`MapSize::Exactly`].
    pub(crate) forced: Option<usize>,
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Map `[va, va + len)` to `[pa, pa + len)` with `attrs`.
    ///
    /// Errors leave the table unchanged: misaligned arguments, a non-canonical or wrapping
    /// range, a physical range beyond the format's width, attributes the format cannot express,
    /// an existing mapping anywhere in the range, or too few table frames.
    pub fn map(
        &mut self,
        va: VirtAddr,
        pa: PhysAddr,
        len: u64,
        attrs: Attrs,
        size: MapSize,
    ) -> Result<Flush, MapError> {
        let (align, forced) = match size {
            MapSize::Largest => (self.fmt.granule().bytes(), None),
            MapSize::Exactly(s) => match self.fmt.level_of_size(s) {
                Some(l) => (s.bytes(), Some(l)),
                None => return Err(MapError::UnsupportedSize(s)),
            },
        };
        let span = match self.check_span(va, len, align) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Flush::nothing()),
            Err(SpanError::Unaligned(m)) => return Err(MapError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(MapError::NonCanonical(v)),
        };
        if !pa.is_aligned(align) {
            return Err(MapError::Unaligned(Misaligned::Phys(pa)));
        }
        match pa.as_u64().checked_add(len - 1) {
            Some(end) if self.fmt.phys_fits(end) => {}
            _ => return Err(MapError::PhysTooWide(pa)),
        }
        let attrs = self.fmt.normalize(attrs).map_err(MapError::BadAttrs)?;
        let opts = MapOpts { forced };
        let ctx = self.ctx();
        let need = plan_map(&ctx, self.root, 0, span.first, span.last, pa.as_u64(), opts)?;
        let (mut reserve, unshared) = match self.reserve_unsharing(need, span.first, span.last) {
            Ok(r) => r,
            Err(ReserveError::OutOfFrames) => return Err(MapError::OutOfFrames),
            Err(ReserveError::Unreachable(p)) => return Err(MapError::FrameUnreachable(p)),
        };
        let ctx = self.ctx();
        let root = ctx.table(self.root);
        let added = apply_map(
            &ctx,
            root,
            0,
            span.first,
            span.last,
            pa.as_u64(),
            attrs,
            opts,
            &mut reserve,
        );
        self.root_count += added;
        self.finish_reserve(reserve);
        self.may_global |= attrs.contains(Attrs::GLOBAL);
        let flush = self.join_unshare(Flush::nothing(), unshared);
        Ok(self.tag(flush))
    }
}

/// Whether the slot `[s, slot_last]` of `level` gets a leaf.
#[inline]
pub(crate) fn wants_leaf<F: PagingFormat>(
    fmt: &F,
    level: usize,
    s: u64,
    sl: u64,
    pa: u64,
    opts: MapOpts,
) -> bool {
    // Called per entry: the walk hooks, not the level table, so a format with arithmetic
    // geometry pays no loads or bounds checks here.
    if fmt.leaf_size(level).is_none() {
        return false;
    }
    let mask = fmt.leaf_span_mask(level);
    let whole = s & mask == 0 && sl & mask == mask && pa & mask == 0;
    whole
        && match opts.forced {
            None => true,
            Some(f) => f == level,
        }
}

/// Check `[first, last]` (inside one table of `level`) for conflicts; return the number of
/// new tables the mapping needs.
pub(crate) fn plan_map<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    pa0: u64,
    opts: MapOpts,
) -> Result<usize, MapError> {
    let t = ctx.table(table);
    let lv = ctx.fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut need = 0;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let pa = pa0 + (s - first);
        let raw = raw::load(t, lv.index(s));
        let slot = VirtAddr::new(s & !mask);
        match ctx.fmt.kind(level, raw) {
            EntryKind::Absent => {
                if !wants_leaf(ctx.fmt, level, s, sl, pa, opts) {
                    need += 1 + count_new(ctx.fmt, level + 1, s, sl, pa, opts);
                }
            }
            EntryKind::Table => {
                if opts.forced == Some(level) {
                    return Err(MapError::AlreadyMapped(VirtAddr::new(s)));
                }
                need += plan_map(ctx, ctx.fmt.table_addr(raw), level + 1, s, sl, pa, opts)?;
            }
            EntryKind::Leaf => {
                let size = lv.leaf.unwrap_or(ctx.fmt.granule());
                return Err(
                    if level == ctx.last_level() || wants_leaf(ctx.fmt, level, s, sl, pa, opts) {
                        MapError::AlreadyMapped(slot)
                    } else {
                        MapError::OverlapsHugeMapping(slot, size)
                    },
                );
            }
            EntryKind::Malformed => return Err(MapError::AlreadyMapped(slot)),
        }
        if sl == last {
            return Ok(need);
        }
        s = sl + 1;
    }
}

/// Tables needed below a new table of `level` to map `[first, last]`.
pub(crate) fn count_new<F: PagingFormat>(
    fmt: &F,
    level: usize,
    first: u64,
    last: u64,
    pa0: u64,
    opts: MapOpts,
) -> usize {
    // The last level, and the level of a forced size (every slot aligned to it), hold only
    // leaves.
    if level + 1 >= fmt.depth() || opts.forced == Some(level) {
        return 0;
    }
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut need = 0;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let pa = pa0 + (s - first);
        if !wants_leaf(fmt, level, s, sl, pa, opts) {
            need += 1 + count_new(fmt, level + 1, s, sl, pa, opts);
        }
        if sl == last {
            return need;
        }
        s = sl + 1;
    }
}

/// Whether the contiguous-hint run starting at slot `s` (run-aligned) of `level` can be
/// written with the hint by this map.
fn cont_run_ok<F: PagingFormat>(
    fmt: &F,
    t: &[AtomicU64],
    level: usize,
    s: u64,
    last: u64,
    pa: u64,
    run: usize,
) -> bool {
    let lv = fmt.levels()[level];
    let run_bytes = lv.entry_span() * run as u64;
    if s & (run_bytes - 1) != 0 || pa & (run_bytes - 1) != 0 {
        return false;
    }
    match s.checked_add(run_bytes - 1) {
        Some(run_last) if run_last <= last => {}
        _ => return false,
    }
    let i0 = lv.index(s);
    (i0..i0 + run).all(|i| raw::load(t, i) == 0)
}

/// Write the mapping planned by [`plan_map`]; returns the number of entries added to `t`.
///
/// Where every slot of `[first, last]` in `t` becomes a leaf of this level (the last level,
/// or the level a forced size names), the plan has seen each of them absent, so the slots
/// are filled in one loop from a template computed once ([`fill_leaves`]) without reading
/// them. Elsewhere each slot is looked at: a leaf where [`wants_leaf`], a new or existing
/// table below otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_map<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    pa0: u64,
    attrs: Attrs,
    opts: MapOpts,
    reserve: &mut Reserve,
) -> u32 {
    let fmt = ctx.fmt;
    let leaf_here = fmt.leaf_size(level).is_some();
    if leaf_here && (level == ctx.last_level() || opts.forced == Some(level)) {
        let tmpl = fmt.leaf_template(level, attrs);
        return fill_leaves(fmt, t, level, first, last, pa0, tmpl);
    }
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let run = fmt.contiguous_run(level);
    let tmpl = if leaf_here {
        fmt.leaf_template(level, attrs)
    } else {
        0
    };
    let mut cont_until: Option<u64> = None;
    let mut added = 0u32;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let pa = pa0 + (s - first);
        let i = lv.index(s);
        let raw = raw::load(t, i);
        match fmt.kind(level, raw) {
            EntryKind::Absent => {
                if wants_leaf(fmt, level, s, sl, pa, opts) {
                    if let Some(r) = run {
                        if cont_until.is_some_and(|u| s > u) {
                            cont_until = None;
                        }
                        if cont_until.is_none() && cont_run_ok(fmt, t, level, s, last, pa, r) {
                            cont_until = Some(s + (lv.entry_span() * r as u64 - 1));
                        }
                    }
                    let mut e = tmpl | fmt.leaf_oa_bits(level, PhysAddr::new(pa));
                    if cont_until.is_some() {
                        e = fmt.set_contiguous(e, true);
                    }
                    raw::store(t, i, e);
                    added += 1;
                } else {
                    let child = reserve.take(ctx);
                    let ct = ctx.table(child);
                    let n = apply_map(ctx, ct, level + 1, s, sl, pa, attrs, opts, reserve);
                    raw::publish(t, i, fmt.make_table(level, child, n));
                    added += 1;
                }
            }
            EntryKind::Table => {
                let ct = ctx.table(fmt.table_addr(raw));
                let n = apply_map(ctx, ct, level + 1, s, sl, pa, attrs, opts, reserve);
                if n > 0 {
                    raw::update(t, i, |r| fmt.set_table_count(r, fmt.table_count(r) + n));
                }
            }
            EntryKind::Leaf | EntryKind::Malformed => {
                debug_assert!(false, "plan_map let a conflict through at {s:#x}");
            }
        }
        if sl == last {
            return added;
        }
        s = sl + 1;
    }
}

/// Write a leaf of `level` into every slot of `[first, last]` of `t` (each whole and absent,
/// `first` and `pa0` aligned to the leaf size), mapping from `pa0` upwards with the bits of
/// `tmpl` ([`PagingFormat::leaf_template`]). Contiguous-hint runs that lie wholly in the
/// range and are physically aligned get the hint. Returns the number of entries written.
pub(crate) fn fill_leaves<F: PagingFormat>(
    fmt: &F,
    t: &[AtomicU64],
    level: usize,
    first: u64,
    last: u64,
    pa0: u64,
    tmpl: u64,
) -> u32 {
    let shift = fmt.leaf_span_mask(level).count_ones();
    let i0 = fmt.index_of(level, first);
    let n = ((last - first) >> shift) as usize + 1;
    let slots = &t[i0..i0 + n];
    match fmt.contiguous_run(level) {
        None => raw::fill(slots, |k| {
            tmpl | fmt.leaf_oa_bits(level, PhysAddr::new(pa0 + ((k as u64) << shift)))
        }),
        Some(run) => {
            // Runs are aligned in the index and in the physical address; only whole runs in
            // the range get the hint.
            let run_mask = run - 1;
            let pa_run_mask = ((run as u64) << shift) - 1;
            let cont = fmt.set_contiguous(tmpl, true);
            let mut k = 0;
            while k < n {
                let i = i0 + k;
                let pa = pa0 + ((k as u64) << shift);
                let len = if i & run_mask == 0 && pa & pa_run_mask == 0 && k + run <= n {
                    raw::fill(&slots[k..k + run], |j| {
                        cont | fmt.leaf_oa_bits(level, PhysAddr::new(pa + ((j as u64) << shift)))
                    });
                    run
                } else {
                    raw::store(slots, k, tmpl | fmt.leaf_oa_bits(level, PhysAddr::new(pa)));
                    1
                };
                k += len;
            }
        }
    }
    n as u32
}
