//! Flush tokens: what a change requires the TLBs to forget, and the tables it freed.
//!
//! Every changing operation returns a `#[must_use]` [`Flush`]. It records the virtual span
//! the change touched, the smallest mapping size changed (the stride at which per-page
//! invalidation must step), and whether table entries (not only leaves) changed, in which
//! case walk caches must be invalidated too (aarch64 `TLBI VAE1` instead of `VALE1`; on x86
//! `INVLPG` always drops paging-structure caches). Tokens from several operations on one
//! table merge with [`PageTable::merge_flush`](crate::PageTable::merge_flush), so a kernel can
//! batch and shoot down once (Linux's `mmu_gather`).
//!
//! Tables emptied by unmap are unhooked and handed back *inside* the token as
//! [`FreedTables`]; the only way to get them out is [`Flush::invalidate`] (or the unsafe
//! [`Flush::assume_invalidated`] after a shootdown done by other means), and the only way to
//! free them is [`PageTable::free_tables`](crate::PageTable::free_tables). The order "unhook →
//! invalidate → free" is therefore kept by the types. That the list goes back to the table
//! that unhooked it is checked at run time: each list carries its table's id, and another
//! table refuses it ([`FreeTablesError::ForeignList`](crate::FreeTablesError::ForeignList),
//! [`MergeFlushError::ForeignTables`](crate::MergeFlushError::ForeignTables)) with nothing
//! freed or linked.
//!
//! [`Flush::invalidate`] invalidates page by page up to [`FLUSH_CEILING`] pages and the whole
//! TLB beyond, as Linux's `tlb_single_page_flush_ceiling` does.

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

/// Above this many pages, [`Flush::invalidate`] invalidates everything instead.
/// Linux x86 `tlb_single_page_flush_ceiling` default (arch/x86/mm/tlb.c).
///
/// ```
/// assert_eq!(mmkit_pgtable::FLUSH_CEILING, 33);
/// ```
pub const FLUSH_CEILING: u64 = 33;

/// Something that can drop translations from the TLBs that may hold them: the local CPU's
/// instructions, an IPI shootdown, or the software MMU's TLB model.
///
/// # Safety
/// When a method returns, no TLB or walk cache that may be used with the table any more holds
/// a translation (or, unless `leaf_only`, a cached table entry) for the given addresses; the
/// page-table layer frees table frames on the strength of it.
pub unsafe trait TlbInvalidate {
    /// Drop the translation of the `size`-sized page containing `va`; unless `leaf_only`,
    /// also drop cached table entries used to reach it.
    fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool);

    /// Drop every translation and cached table entry.
    fn invalidate_all(&mut self);

    /// Called before the invalidations of one token, even an empty one (aarch64: `DSB ISHST`
    /// so the walker sees the new entries).
    fn begin(&mut self) {}

    /// Called after the invalidations of one token (aarch64: `DSB ISH; ISB`).
    fn finish(&mut self) {}
}

/// What a [`Flush`] asks to invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushScope {
    /// Nothing changed that a TLB may hold.
    Nothing,
    /// `[start, start + pages * stride)`, stepping by `stride`.
    Range {
        /// First address.
        start: VirtAddr,
        /// Number of `stride`-sized steps.
        pages: u64,
        /// The smallest mapping size changed.
        stride: PageSize,
        /// Only leaf entries changed (no table entry was unhooked or replaced).
        leaf_only: bool,
    },
}

/// Table frames unhooked by an operation, waiting to be freed after the flush.
///
/// Linked through their own entry 0 (see the `raw` module), so no allocation is needed. A
/// non-empty list remembers which [`PageTable`](crate::PageTable) unhooked its frames (an id
/// unique per table, taken from a global counter when the table is created), so
/// [`free_tables`](crate::PageTable::free_tables) and
/// [`merge_flush`](crate::PageTable::merge_flush) of any other table refuse it instead of
/// handing its frames to a frame source that never allocated them. An empty list belongs to
/// no table.
#[must_use = "freed tables leak unless given to PageTable::free_tables"]
#[derive(Debug, PartialEq, Eq)]
pub struct FreedTables {
    pub(crate) head: Option<PhysAddr>,
    pub(crate) tail: Option<PhysAddr>,
    pub(crate) count: usize,
    /// The id of the table whose frames these are; meaningful only when `count > 0`.
    pub(crate) owner: u64,
}

impl FreedTables {
    pub(crate) const fn none() -> Self {
        Self {
            head: None,
            tail: None,
            count: 0,
            owner: 0,
        }
    }

    /// Whether table `id` may take this list: it is empty or holds `id`'s frames.
    #[inline]
    pub(crate) const fn belongs_to(&self, id: u64) -> bool {
        self.count == 0 || self.owner == id
    }

    /// Number of table frames waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no table is waiting.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What must be invalidated after a change, plus the tables it freed.
#[must_use = "the TLB must be invalidated (Flush::invalidate) before the change is reliable"]
#[derive(Debug, PartialEq, Eq)]
pub struct Flush {
    /// First touched address (valid when `any`).
    pub(crate) first: u64,
    /// Last touched address, inclusive.
    pub(crate) last: u64,
    /// Smallest changed mapping size.
    pub(crate) stride: Option<PageSize>,
    /// Table entries changed.
    pub(crate) tables: bool,
    pub(crate) freed: FreedTables,
}

impl Flush {
    /// A token that asks for nothing.
    pub(crate) const fn nothing() -> Self {
        Self {
            first: u64::MAX,
            last: 0,
            stride: None,
            tables: false,
            freed: FreedTables::none(),
        }
    }

    /// Record that the mapping `[va, va + size)` changed.
    #[inline]
    pub(crate) fn add(&mut self, va: u64, size: PageSize) {
        self.first = self.first.min(va);
        self.last = self.last.max(va + (size.bytes() - 1));
        self.stride = Some(match self.stride {
            Some(s) if s <= size => s,
            _ => size,
        });
    }

    /// Widen the span to `[first, last]` and the stride to `size` without marking tables.
    #[inline]
    pub(crate) fn cover(&mut self, first: u64, last: u64, size: PageSize) {
        self.first = self.first.min(first);
        self.last = self.last.max(last);
        self.stride = Some(match self.stride {
            Some(s) if s <= size => s,
            _ => size,
        });
    }

    /// Record that a table entry covering `[va, va + span)` changed, stepping at `stride`.
    #[inline]
    pub(crate) fn add_table(&mut self, va: u64, span: u64, stride: PageSize) {
        self.first = self.first.min(va);
        self.last = self.last.max(va + (span - 1));
        self.stride = Some(match self.stride {
            Some(s) if s <= stride => s,
            _ => stride,
        });
        self.tables = true;
    }

    /// Whether nothing needs invalidating and no table is waiting.
    pub fn is_empty(&self) -> bool {
        self.stride.is_none() && self.freed.is_empty()
    }

    /// Number of tables this token will hand back.
    pub fn freed_tables(&self) -> usize {
        self.freed.count
    }

    /// What to invalidate.
    pub fn scope(&self) -> FlushScope {
        match self.stride {
            None => FlushScope::Nothing,
            Some(stride) => {
                let first = self.first & !(stride.bytes() - 1);
                let pages = ((self.last - first) >> stride.shift()) + 1;
                FlushScope::Range {
                    start: VirtAddr::new(first),
                    pages,
                    stride,
                    leaf_only: !self.tables,
                }
            }
        }
    }

    /// Merge the span of `other` into this token (the freed lists are merged by
    /// [`PageTable::merge_flush`](crate::PageTable::merge_flush), which can write the links).
    pub(crate) fn merge_span(&mut self, other: &Flush) {
        if let Some(s) = other.stride {
            self.first = self.first.min(other.first);
            self.last = self.last.max(other.last);
            self.stride = Some(match self.stride {
                Some(t) if t <= s => t,
                _ => s,
            });
        }
        self.tables |= other.tables;
    }

    /// Invalidate through `tlb`: page by page up to [`FLUSH_CEILING`] pages, else everything.
    /// Returns the tables that may now be freed.
    pub fn invalidate<T: TlbInvalidate + ?Sized>(self, tlb: &mut T) -> FreedTables {
        tlb.begin();
        if let FlushScope::Range {
            start,
            pages,
            stride,
            leaf_only,
        } = self.scope()
        {
            if pages <= FLUSH_CEILING {
                for p in 0..pages {
                    let va = start.as_u64() + (p << stride.shift());
                    tlb.invalidate_page(VirtAddr::new(va), stride, leaf_only);
                }
            } else {
                tlb.invalidate_all();
            }
        }
        tlb.finish();
        self.freed
    }

    /// Take the freed tables without invalidating here.
    ///
    /// # Safety
    /// Every TLB and walk cache that may hold entries for [`scope`](Self::scope) has been
    /// invalidated by other means (for example a cross-CPU shootdown of a merged range), or
    /// the table was never used by any MMU.
    pub unsafe fn assume_invalidated(self) -> FreedTables {
        self.freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    struct Log(Vec<(u64, PageSize, bool)>, usize);
    // SAFETY: a recorder used only to observe calls; no frame is freed on its strength.
    unsafe impl TlbInvalidate for Log {
        fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool) {
            self.0.push((va.as_u64(), size, leaf_only));
        }
        fn invalidate_all(&mut self) {
            self.1 += 1;
        }
    }

    #[test]
    fn empty_token_invalidates_nothing() {
        let f = Flush::nothing();
        assert!(f.is_empty());
        assert_eq!(f.scope(), FlushScope::Nothing);
        let mut log = Log(Vec::new(), 0);
        assert!(f.invalidate(&mut log).is_empty());
        assert!(log.0.is_empty() && log.1 == 0);
    }

    #[test]
    fn small_range_invalidates_each_page_at_smallest_stride() {
        let mut f = Flush::nothing();
        f.add(0x20_0000, PageSize::Size4K);
        f.add(0x20_2000, PageSize::Size4K);
        let mut log = Log(Vec::new(), 0);
        let _ = f.invalidate(&mut log);
        assert_eq!(
            log.0,
            [0x20_0000, 0x20_1000, 0x20_2000].map(|v| (v, PageSize::Size4K, true))
        );
    }

    #[test]
    fn huge_range_invalidates_all_and_tables_clear_leaf_only() {
        let mut f = Flush::nothing();
        f.add_table(0, 1 << 30, PageSize::Size4K);
        match f.scope() {
            FlushScope::Range {
                pages, leaf_only, ..
            } => {
                assert_eq!(pages, 1 << 18);
                assert!(!leaf_only);
            }
            FlushScope::Nothing => panic!("range expected"),
        }
        let mut log = Log(Vec::new(), 0);
        let _ = f.invalidate(&mut log);
        assert_eq!(log.1, 1);
        assert!(log.0.is_empty());
    }

    #[test]
    fn merge_takes_hull_and_smallest_stride() {
        let mut a = Flush::nothing();
        a.add(0x40_0000, PageSize::Size2M);
        let mut b = Flush::nothing();
        b.add(0x1000, PageSize::Size4K);
        a.merge_span(&b);
        assert_eq!(a.first, 0x1000);
        assert_eq!(a.last, 0x5f_ffff);
        assert_eq!(a.stride, Some(PageSize::Size4K));
    }
}
