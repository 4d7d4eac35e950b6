//! Read-only traversal: range walks with per-level callbacks, and a cursor.
//!
//! [`PageTable::walk`] visits `[va, va + len)` in address order, descending once: it calls
//! [`Visitor::table`] before entering a table, [`Visitor::leaf`] for each mapping (whole, even
//! if the range covers part of it) and [`Visitor::hole`] for each absent slot (clipped to the
//! range), at the level where the hole was found — the shape of Linux's `walk_page_range` with
//! its `pte_hole` callback. Any callback can stop the walk.
//!
//! [`Cursor`] iterates the mappings from an address upwards, remembering the path of tables
//! to the last leaf so sequential steps restart from the deepest table still covering the next
//! address instead of from the root.

use core::ops::ControlFlow;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use crate::error::ProtectError;
use crate::format::{EntryKind, PagingFormat, MAX_LEVELS};
use crate::frame::FrameSource;
use crate::raw;
use crate::table::{Ctx, PageTable, SpanError, Translation};

/// Callbacks of [`PageTable::walk`]. Each returns `ControlFlow::Break(())` to stop the walk.
pub trait Visitor {
    /// About to descend into `table` at `level` (the table's entries are at `level`), whose
    /// part in the range starts at `va`.
    fn table(&mut self, level: usize, va: VirtAddr, table: PhysAddr) -> ControlFlow<()> {
        let _ = (level, va, table);
        ControlFlow::Continue(())
    }

    /// A mapping overlapping the range.
    fn leaf(&mut self, mapping: &Translation) -> ControlFlow<()>;

    /// `[va, va + len)` of the range is unmapped; the absent entry is at `level`.
    fn hole(&mut self, level: usize, va: VirtAddr, len: u64) -> ControlFlow<()> {
        let _ = (level, va, len);
        ControlFlow::Continue(())
    }
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// Walk `[va, va + len)` (granule-aligned, canonical). Returns whether the walk ran to the
    /// end (`true`) or a callback stopped it.
    pub fn walk<V: Visitor + ?Sized>(
        &self,
        va: VirtAddr,
        len: u64,
        visitor: &mut V,
    ) -> Result<bool, ProtectError> {
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(true),
            Err(SpanError::Unaligned(m)) => return Err(ProtectError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(ProtectError::NonCanonical(v)),
        };
        let ctx = self.ctx();
        Ok(walk_table(&ctx, self.root, 0, span.first, span.last, visitor).is_continue())
    }

    /// A cursor over the mappings at or above `va`, up to `va + len - 1`.
    pub fn cursor(&self, va: VirtAddr, len: u64) -> Result<Cursor<'_, F, M, S>, ProtectError> {
        let span = match self.check_span(va, len, self.fmt.granule().bytes()) {
            Ok(s) => s,
            Err(SpanError::Unaligned(m)) => return Err(ProtectError::Unaligned(m)),
            Err(SpanError::NonCanonical(v)) => return Err(ProtectError::NonCanonical(v)),
        };
        let (next, last, done) = match span {
            Some(s) => (s.first, s.last, false),
            None => (0, 0, true),
        };
        Ok(Cursor {
            pt: self,
            next,
            last,
            done,
            path: [PhysAddr::ZERO; MAX_LEVELS],
            path_base: [0; MAX_LEVELS],
            depth: 0,
        })
    }
}

fn walk_table<F: PagingFormat, M: PhysMapper, V: Visitor + ?Sized>(
    ctx: &Ctx<'_, F, M>,
    table: PhysAddr,
    level: usize,
    first: u64,
    last: u64,
    v: &mut V,
) -> ControlFlow<()> {
    let fmt = ctx.fmt;
    let t = ctx.table(table);
    let lv = fmt.levels()[level];
    let mask = lv.entry_span() - 1;
    let mut s = first;
    loop {
        let sl = (s | mask).min(last);
        let raw = raw::load(t, lv.index(s));
        match fmt.kind(level, raw) {
            EntryKind::Table => {
                let child = fmt.table_addr(raw);
                v.table(level + 1, VirtAddr::new(s), child)?;
                walk_table(ctx, child, level + 1, s, sl, v)?;
            }
            EntryKind::Leaf => {
                let m = leaf_translation(fmt, level, s & !mask, raw);
                v.leaf(&m)?;
            }
            EntryKind::Absent | EntryKind::Malformed => {
                v.hole(level, VirtAddr::new(s), sl - s + 1)?;
            }
        }
        if sl == last {
            return ControlFlow::Continue(());
        }
        s = sl + 1;
    }
}

pub(crate) fn leaf_translation<F: PagingFormat>(
    fmt: &F,
    level: usize,
    slot: u64,
    raw: u64,
) -> Translation {
    let size = fmt.levels()[level].leaf.unwrap_or(fmt.granule());
    Translation::new(fmt, level, VirtAddr::new(slot), size, raw)
}

/// Sequential iteration over mappings; see the module docs.
pub struct Cursor<'t, F: PagingFormat, M: PhysMapper, S: FrameSource> {
    pt: &'t PageTable<F, M, S>,
    next: u64,
    last: u64,
    done: bool,
    /// Table at each level on the path to the last position (`path[0]` is the root).
    path: [PhysAddr; MAX_LEVELS],
    /// First VA covered by `path[l]`.
    path_base: [u64; MAX_LEVELS],
    /// Number of valid path entries.
    depth: usize,
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> Cursor<'_, F, M, S> {
    /// Step past `[_, end]`; finishes the cursor when that reaches the end of the range.
    fn advance_past(&mut self, end: u64) {
        if end >= self.last {
            self.done = true;
        } else {
            self.next = end + 1;
        }
    }

    /// The deepest path level whose table still covers `va`.
    fn resume_level(&self, va: u64) -> usize {
        let levels = self.pt.fmt.levels();
        let mut l = self.depth;
        while l > 1 {
            let parent = levels[l - 2];
            let covered_mask = parent.entry_span() - 1;
            if va & !covered_mask == self.path_base[l - 1] {
                return l - 1;
            }
            l -= 1;
        }
        0
    }
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> Iterator for Cursor<'_, F, M, S> {
    type Item = Translation;

    fn next(&mut self) -> Option<Translation> {
        let fmt = &self.pt.fmt;
        let ctx = self.pt.ctx();
        let levels = fmt.levels();
        'outer: while !self.done {
            let va = self.next;
            let mut level = self.resume_level(va);
            if level == 0 {
                self.path[0] = self.pt.root;
                self.path_base[0] = 0;
            }
            loop {
                let lv = levels[level];
                let mask = lv.entry_span() - 1;
                let raw = raw::load(ctx.table(self.path[level]), lv.index(va));
                match fmt.kind(level, raw) {
                    EntryKind::Table => {
                        self.path[level + 1] = fmt.table_addr(raw);
                        self.path_base[level + 1] = va & !mask;
                        level += 1;
                        self.depth = level + 1;
                    }
                    EntryKind::Leaf => {
                        self.depth = level + 1;
                        let m = leaf_translation(fmt, level, va & !mask, raw);
                        self.advance_past(va | mask);
                        return Some(m);
                    }
                    EntryKind::Absent | EntryKind::Malformed => {
                        self.depth = level + 1;
                        self.advance_past(va | mask);
                        continue 'outer;
                    }
                }
            }
        }
        None
    }
}
