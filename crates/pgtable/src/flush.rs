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
//!
//! # Address-space identifiers
//! A table may carry an [`Asid`] (x86 PCID, aarch64 ASID; see
//! [`PageTable::set_asid`](crate::PageTable::set_asid)); its tokens carry it too, and then
//! invalidate that address space only ([`TlbInvalidate::invalidate_page_asid`],
//! [`TlbInvalidate::invalidate_asid`]) — except when the table may hold global leaves, which
//! no TLB tags with an ASID and which an ASID-scoped invalidation (x86 `INVPCID` types 0 and
//! 1, and the stricter reading of aarch64 `TLBI ASIDE1`) leaves in place: such tokens
//! invalidate in every address space. An untagged token invalidates in every address space
//! too. Both new trait methods default to their all-address-space forms, so a
//! [`TlbInvalidate`] that knows nothing of ASIDs stays correct (it just invalidates more).

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

/// Above this many pages, [`Flush::invalidate`] invalidates everything instead.
/// Linux x86 `tlb_single_page_flush_ceiling` default (arch/x86/mm/tlb.c).
///
/// ```
/// assert_eq!(mmkit_pgtable::FLUSH_CEILING, 33);
/// ```
pub const FLUSH_CEILING: u64 = 33;

/// An address-space identifier: the PCID in CR3 bits 0..12 on x86_64 (12 bits), the ASID in
/// TTBRn_EL1 bits 48..64 on aarch64 (8 or 16 bits, per TCR_EL1.AS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Asid(pub u16);

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

    /// [`invalidate_page`](Self::invalidate_page) for address space `asid` only: drop the
    /// non-global translation of the page containing `va` tagged with `asid` (and, unless
    /// `leaf_only`, cached table entries of `asid` used to reach it). Tokens call it only when
    /// no global leaf may have changed. The default invalidates in every address space.
    fn invalidate_page_asid(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool, asid: Asid) {
        let _ = asid;
        self.invalidate_page(va, size, leaf_only);
    }

    /// Drop every non-global translation and cached table entry tagged with `asid`. Tokens
    /// call it only when no global leaf may have changed. The default drops everything.
    fn invalidate_asid(&mut self, asid: Asid) {
        let _ = asid;
        self.invalidate_all();
    }

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
    /// The address space of the table that made the change, if it has one.
    pub(crate) asid: Option<Asid>,
    /// Whether the table may hold global leaves (then the token invalidates in every address
    /// space).
    pub(crate) global: bool,
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
            asid: None,
            global: false,
        }
    }

    /// Tag the token with the address space of the table that made it.
    #[inline]
    pub(crate) fn tagged(mut self, asid: Option<Asid>, global: bool) -> Self {
        self.asid = asid;
        self.global = global;
        self
    }

    /// The address space this token invalidates in: the table's [`Asid`], or `None` (every
    /// address space) when the table has none or may hold global leaves.
    pub fn asid(&self) -> Option<Asid> {
        if self.global {
            None
        } else {
            self.asid
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

    /// Widen the span over the leaves changed in slots `first_k..=last_k` of a table at
    /// `level` whose slot 0 maps `base`, each slot `1 << shift` bytes; nothing when no slot
    /// changed (`first_k > last_k`).
    #[inline]
    pub(crate) fn cover_slots<F: crate::format::PagingFormat>(
        &mut self,
        fmt: &F,
        level: usize,
        base: u64,
        shift: u32,
        (first_k, last_k): (usize, usize),
    ) {
        if first_k <= last_k {
            let size = fmt.leaf_size(level).unwrap_or(fmt.granule());
            self.cover(
                base + ((first_k as u64) << shift),
                base + ((last_k as u64) << shift) + (size.bytes() - 1),
                size,
            );
        }
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
        // Tokens of two address spaces (or an untagged one) invalidate in every space.
        if self.asid != other.asid {
            self.asid = None;
        }
        self.global |= other.global;
    }

    /// Invalidate through `tlb`: page by page up to [`FLUSH_CEILING`] pages, else everything
    /// — in the token's address space ([`asid`](Self::asid)) if it has one, else in all.
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
            let asid = self.asid();
            if pages <= FLUSH_CEILING {
                for p in 0..pages {
                    let va = VirtAddr::new(start.as_u64() + (p << stride.shift()));
                    match asid {
                        Some(a) => tlb.invalidate_page_asid(va, stride, leaf_only, a),
                        None => tlb.invalidate_page(va, stride, leaf_only),
                    }
                }
            } else {
                match asid {
                    Some(a) => tlb.invalidate_asid(a),
                    None => tlb.invalidate_all(),
                }
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
