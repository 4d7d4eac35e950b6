//! Leaf tables shared between trees by a fork-style copy, and their copy-on-write.
//!
//! [`PageTable::copy_range_to`] may point the destination at the *same* leaf-table frame as
//! the source instead of copying it (Linux shares hugetlb PMD pages between processes the same
//! way), when the two frame sources keep one share count per table frame
//! ([`FrameSource::table_refs`] returns the same [`TableRefs`] domain for both) and the table
//! holds nothing the hardware may write (every leaf read-only, with accessed set and, where
//! the format has one, dirty settled: [`PagingFormat::hw_may_update`] false). Without share
//! counts (the default), copy clones tables as before.
//!
//! A shared table is never written: every operation that may write a leaf table in its range
//! (map, protect, unmap, the mutating cursor, clearing accessed/dirty, and a copy into this
//! tree) first gives this tree a private copy of each shared leaf table overlapping the range
//! — a new frame with the same entries, published in the parent entry — and the reference
//! to the shared frame is dropped only after the operation's [`Flush`] was invalidated (a
//! stale walk cache of this address space may still reach the shared frame until then, and
//! the other tree, once sole owner, writes it in place). The drop travels in the token as a
//! *ticket*: a reserved frame on the freed list whose entry 1 names the shared frame;
//! [`PageTable::free_tables`] frees the ticket and releases the reference, freeing the shared
//! frame if this tree held the last one. Tearing a tree down ([`PageTable::destroy`])
//! invalidates everything first and then releases each shared table directly. The plan of
//! each operation counts two frames per shared table to un-share (the copy and the ticket),
//! reserved with the rest, so running out of frames still leaves the table unchanged.
//!
//! Un-sharing replaces a table descriptor by one pointing at an identical copy, in place. A
//! copy does not share into or out of a table marked live on a break-before-make format
//! (aarch64), since whether that replacement needs break-before-make there is not settled
//! here; a table that shares and is *later* loaded on aarch64 still un-shares in place (an
//! open point: such a kernel should un-share, or copy without sharing, before loading).

use core::sync::atomic::AtomicU64;

use mmkit_addr::{PhysAddr, PhysMapper};

use crate::attrs::Attrs;
use crate::flush::Flush;
use crate::format::{EntryKind, PagingFormat};
use crate::frame::{FrameSource, TableRefs};
use crate::raw;
use crate::table::{Ctx, PageTable, Reserve};

/// Whether the leaf table `t` (at `level`, the last) may be shared: at least one leaf, and
/// every leaf read-only with nothing the hardware may write. Returns its number of leaves
/// (0: not shareable).
///
/// One compare per entry in the common case: a leaf whose bits outside the output address
/// equal those of a leaf already accepted has the same kind and attributes (the field law of
/// [`PagingFormat`]), so only the first leaf of each distinct attribute pattern is decoded.
pub(crate) fn shareable<F: PagingFormat>(fmt: &F, level: usize, t: &[AtomicU64]) -> u32 {
    let n = fmt.levels()[level].entries();
    let not_oa = !fmt.leaf_oa_mask(level);
    // The non-address bits of the last leaf pattern accepted (0: none yet; a leaf is never 0).
    let mut accepted = 0u64;
    let mut leaves = 0;
    for e in &t[..n] {
        let raw = raw::load_entry(e);
        if raw == 0 {
            continue;
        }
        if raw & not_oa == accepted {
            leaves += 1;
            continue;
        }
        match fmt.kind(level, raw) {
            EntryKind::Absent => {}
            EntryKind::Leaf => {
                if fmt.hw_may_update(raw) || fmt.leaf_attrs(level, raw).contains(Attrs::WRITE) {
                    return 0;
                }
                accepted = raw & not_oa;
                leaves += 1;
            }
            _ => return 0,
        }
    }
    leaves
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// The number of shared leaf tables overlapping `[first, last]`: each needs two frames
    /// (its private copy and the ticket that drops the shared reference after the flush).
    pub(crate) fn shared_in(&self, first: u64, last: u64) -> usize {
        if !self.may_share {
            return 0;
        }
        let Some(refs) = self.frames.table_refs() else {
            return 0;
        };
        let ctx = self.ctx();
        let mut n = 0;
        for_leaf_tables(&ctx, self.root, 0, first, last, &mut |_, _, _, pa| {
            if refs.count(pa) > 1 {
                n += 1;
            }
        });
        n
    }

    /// Give this tree a private copy of every shared leaf table overlapping `[first, last]`
    /// (frames from `reserve`, two per table as [`shared_in`](Self::shared_in) counted);
    /// returns the token covering the re-pointed entries, carrying the tickets.
    pub(crate) fn unshare(&mut self, first: u64, last: u64, reserve: &mut Reserve) -> Flush {
        let mut flush = Flush::nothing();
        if !self.may_share {
            return flush;
        }
        let Some(refs) = self.frames.table_refs() else {
            return flush;
        };
        let ctx = self.ctx();
        let fmt = ctx.fmt;
        let leaf_level = ctx.last_level();
        let n = fmt.levels()[leaf_level].entries();
        let mut moved = 0;
        for_leaf_tables(
            &ctx,
            self.root,
            0,
            first,
            last,
            &mut |parent, i, slot, pa| {
                if refs.count(pa) <= 1 {
                    return;
                }
                let copy = reserve.take(&ctx);
                let (src, dst) = (&ctx.table(pa)[..n], &ctx.table(copy)[..n]);
                for (d, e) in dst.iter().zip(src) {
                    raw::store_entry(d, raw::load_entry(e));
                }
                let old = raw::load(parent, i);
                let level = leaf_level - 1;
                raw::publish(parent, i, fmt.make_table(level, copy, fmt.table_count(old)));
                let ticket = reserve.take(&ctx);
                raw::store(ctx.table(ticket), 1, pa.as_u64());
                ctx.push_ticket(&mut flush.freed, ticket);
                let span = fmt.levels()[level].entry_span();
                flush.add_table(slot, span, fmt.granule());
                moved += 1;
            },
        );
        // The shared frames left the tree (their copies joined it); the tickets are in the
        // token, not the tree.
        self.owned -= 2 * moved;
        flush
    }

    /// The un-sharing pre-pass of a writing operation over `[first, last]` whose own plan
    /// needs `need` frames: reserves both at once and un-shares; `None` when out of frames
    /// (nothing changed).
    pub(crate) fn reserve_unsharing(
        &mut self,
        need: usize,
        first: u64,
        last: u64,
    ) -> Result<(Reserve, Flush), crate::table::ReserveError> {
        let shared = self.shared_in(first, last);
        let mut reserve = self.reserve(need + 2 * shared)?;
        let flush = self.unshare(first, last, &mut reserve);
        Ok((reserve, flush))
    }

    /// Join the un-sharing token `u` into an operation's token `f`.
    pub(crate) fn join_unshare(&self, f: Flush, u: Flush) -> Flush {
        if u.is_empty() {
            // SAFETY: `u` asks for nothing and carries no frames.
            let _ = unsafe { u.assume_invalidated() };
            return f;
        }
        match self.merge_flush(f, u) {
            Ok(f) => f,
            Err(_) => unreachable!("both tokens come from this table"),
        }
    }
}

/// Call `f(parent, index, slot_va, leaf_table)` for every leaf table (a table at the last
/// level) overlapping `[first, last]` below table `table` of `level`.
fn for_leaf_tables<F: PagingFormat, M: PhysMapper>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    f: &mut impl FnMut(&[AtomicU64], usize, u64, PhysAddr),
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
        if fmt.kind(level, raw) == EntryKind::Table {
            let child = fmt.table_addr(raw);
            if level + 2 == fmt.depth() {
                f(t, i, s & !mask, child);
            } else {
                for_leaf_tables(ctx, child, level + 1, s, sl, f);
            }
        }
        if sl == last {
            return;
        }
        s = sl + 1;
    }
}

/// The share counts two frame sources have in common, if any.
pub(crate) fn common_refs<'a, S: FrameSource, S2: FrameSource>(
    src: &S,
    dst: &'a S2,
) -> Option<&'a dyn TableRefs> {
    let (a, b) = (src.table_refs()?, dst.table_refs()?);
    (a.domain() == b.domain()).then_some(b)
}
