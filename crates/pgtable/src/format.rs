//! The paging-format trait: what an architecture's translation tables look like.
//!
//! A format is a *value* (so one type can describe every aarch64 granule and VA width) that
//! answers three kinds of questions:
//!
//! * **geometry** — the levels from the root down ([`Level`]: the VA shift of the level's
//!   index, its index bits, and the leaf size it can hold if any), the table granule, the
//!   virtual-address width and canonical form, the physical-address width;
//! * **entry encoding** — classify a raw entry ([`EntryKind`]), build and take apart table
//!   and leaf entries, and keep the per-table entry count that this crate stores in bits the
//!   hardware ignores in every *table* descriptor (so emptiness of a child table is O(1)
//!   without any side allocation; the root's count lives in [`PageTable`](crate::PageTable));
//! * **policy** — [`normalize`](PagingFormat::normalize) requested attributes to the canonical
//!   form the format stores, whether changing a live valid entry needs break-before-make, and
//!   the contiguous-hint run length per level (aarch64).
//!
//! Absent entries are always the value 0: the generic layer writes 0 to clear an entry.
//!
//! # Round-trip laws (the safety contract, tested for every format)
//! For every level `l`, aligned table address `t`, count `n` up to the table's entry count,
//! leaf address `p` aligned to the level's leaf size and below `1 << phys_bits`, and
//! normalized attributes `a`:
//! * `kind(l, 0) == Absent`;
//! * `kind(l, make_table(l, t, n)) == Table`, `table_addr(make_table(l, t, n)) == t`,
//!   `table_count(make_table(l, t, n)) == n`, and `set_table_count` changes only the count;
//! * `kind(l, make_leaf(l, p, a)) == Leaf`, `leaf_addr(l, make_leaf(l, p, a)) == p`,
//!   `leaf_attrs(l, make_leaf(l, p, a)) == a`, and `decode_leaf_attrs(attrs_key(), l, e) ==
//!   leaf_attrs(l, e)` for every entry `e`;
//! * `normalize(normalize(a)?) == normalize(a)`;
//! * the output address and the attributes of a leaf are separate fields:
//!   `make_leaf(l, p, a) == leaf_template(l, a) | leaf_oa_bits(l, p)`, the two operands share
//!   no bit, `leaf_oa_bits(l, p) & !leaf_oa_mask(l) == 0`, and `leaf_attrs`, `kind` and
//!   `is_contiguous` of a leaf do not depend on its `leaf_oa_mask(l)` bits (the fast paths of
//!   map and protect build one template per table and rewrite entries by mask).

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::attrs::Attrs;
use crate::error::AttrError;

/// The most levels any supported format has (x86_64 5-level paging).
pub const MAX_LEVELS: usize = 5;

/// One level of a translation-table tree, counted from the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// log2 of the span of one entry: the VA bit where this level's index starts.
    pub shift: u32,
    /// Number of index bits at this level (the table has `1 << bits` entries).
    pub bits: u32,
    /// The leaf (page or block) size an entry at this level may map, if any.
    pub leaf: Option<PageSize>,
}

impl Level {
    /// Bytes covered by one entry.
    #[inline]
    pub const fn entry_span(&self) -> u64 {
        1u64 << self.shift
    }

    /// Number of entries in a table of this level.
    #[inline]
    pub const fn entries(&self) -> usize {
        1usize << self.bits
    }

    /// Index of `va` in a table of this level.
    #[inline]
    pub const fn index(&self, va: u64) -> usize {
        ((va >> self.shift) & ((1u64 << self.bits) - 1)) as usize
    }
}

/// What a raw entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Not valid: the hardware faults (the generic layer only ever writes 0 here).
    Absent,
    /// A pointer to the next-level table.
    Table,
    /// A page or block mapping.
    Leaf,
    /// Valid but malformed for this level (e.g. a block where none is allowed); the hardware
    /// would fault or misbehave. `verify` reports it.
    Malformed,
}

/// An architecture's translation-table format. See the module docs for the laws.
///
/// # Safety
/// The generic layer writes table memory at the addresses [`table_addr`](Self::table_addr)
/// decodes, so an implementation must obey the round-trip laws in the module docs exactly:
/// `table_addr(make_table(l, t, n)) == t`, `kind` of a table entry is [`EntryKind::Table`] and
/// of a leaf entry [`EntryKind::Leaf`], `kind(l, 0)` is [`EntryKind::Absent`], and the
/// geometry ([`levels`](Self::levels)) is constant for the value's lifetime with every
/// level's table fitting in one [`granule`](Self::granule)-sized frame (`bits + 3 <=
/// granule.shift()`), and at most [`MAX_LEVELS`] levels. The walk hooks
/// [`index_of`](Self::index_of), [`leaf_size`](Self::leaf_size) and
/// [`leaf_span_mask`](Self::leaf_span_mask), if overridden, must return exactly what their
/// defaults compute from [`levels`](Self::levels) (in particular `index_of(l, va) < 1 <<
/// levels()[l].bits`, since walks index tables with it), and
/// [`is_canonical_at_depth`](Self::is_canonical_at_depth)`(va, self.depth())` exactly what
/// [`is_canonical`](Self::is_canonical)`(va)` does.
pub unsafe trait PagingFormat {
    /// The levels, root first. The last level's leaf size is the granule.
    fn levels(&self) -> &[Level];

    /// Size (and alignment) of one table frame, which is also the smallest page.
    fn granule(&self) -> PageSize;

    /// Whether `va` may be translated by a table of this format.
    fn is_canonical(&self, va: VirtAddr) -> bool;

    /// Whether `[first, last]` (inclusive) is one canonical stretch with no hole inside.
    fn range_is_canonical(&self, first: VirtAddr, last: VirtAddr) -> bool;

    /// Width of the output (physical) address.
    fn phys_bits(&self) -> u32;

    /// Classify a raw entry at `level`.
    fn kind(&self, level: usize, raw: u64) -> EntryKind;

    /// A table entry at `level` pointing to `table`, with entry count `count`.
    fn make_table(&self, level: usize, table: PhysAddr, count: u32) -> u64;

    /// The address of the next table from a table entry.
    fn table_addr(&self, raw: u64) -> PhysAddr;

    /// The entry count stored in a table entry.
    fn table_count(&self, raw: u64) -> u32;

    /// A table entry with its count replaced.
    fn set_table_count(&self, raw: u64, count: u32) -> u64;

    /// A leaf entry at `level` mapping `pa` with `attrs` (already normalized).
    fn make_leaf(&self, level: usize, pa: PhysAddr, attrs: Attrs) -> u64;

    /// The output address of a leaf entry.
    fn leaf_addr(&self, level: usize, raw: u64) -> PhysAddr;

    /// The attributes of a leaf entry, in normalized form.
    fn leaf_attrs(&self, level: usize, raw: u64) -> Attrs;

    /// What besides a leaf entry and its level decides how the entry's attribute bits read
    /// (x86_64: which level is the last, where bit 7 is PAT rather than PS; aarch64: whether
    /// the DBM bit means hardware-managed dirty state). A [`Translation`](crate::Translation)
    /// keeps it with the raw entry and decodes its attributes only when asked, so a
    /// translate does not pay for a decode nobody reads.
    fn attrs_key(&self) -> u32;

    /// [`leaf_attrs`](Self::leaf_attrs) of a format whose [`attrs_key`](Self::attrs_key) is
    /// `key`: `decode_leaf_attrs(self.attrs_key(), l, raw) == self.leaf_attrs(l, raw)`.
    fn decode_leaf_attrs(key: u32, level: usize, raw: u64) -> Attrs
    where
        Self: Sized;

    /// The canonical form of `attrs` for this format, or why it cannot be expressed.
    fn normalize(&self, attrs: Attrs) -> Result<Attrs, AttrError>;

    /// Whether changing a *valid* entry of a live table to another valid entry (other than a
    /// permission change) must go through an invalid entry and a TLB invalidation first.
    fn needs_break_before_make(&self) -> bool {
        false
    }

    /// Whether changing leaf attributes from `old` to `new` in place needs break-before-make.
    fn attr_change_needs_bbm(&self, old: Attrs, new: Attrs) -> bool {
        let _ = (old, new);
        false
    }

    /// The bits of a leaf at `level` with (normalized) `attrs` other than its output address:
    /// `make_leaf(level, pa, attrs) == leaf_template(level, attrs) | leaf_oa_bits(level, pa)`.
    /// Map computes it once per table and fills the table from it.
    #[inline]
    fn leaf_template(&self, level: usize, attrs: Attrs) -> u64 {
        self.make_leaf(level, PhysAddr::ZERO, attrs)
    }

    /// The output-address field of a leaf at `level` mapping `pa` (aligned to the level's
    /// leaf size, within [`phys_bits`](Self::phys_bits)). The default derives it from
    /// [`make_leaf`](Self::make_leaf), which the field law makes exact; formats override it
    /// with the direct encoding.
    #[inline]
    fn leaf_oa_bits(&self, level: usize, pa: PhysAddr) -> u64 {
        self.make_leaf(level, pa, Attrs::READ) & !self.make_leaf(level, PhysAddr::ZERO, Attrs::READ)
    }

    /// Every bit a leaf at `level` may use for its output address (see the field law in the
    /// module docs).
    #[inline]
    fn leaf_oa_mask(&self, level: usize) -> u64 {
        let top = (1u64 << self.phys_bits()) - 1;
        self.leaf_oa_bits(level, PhysAddr::new(top & !self.leaf_span_mask(level)))
    }

    /// Whether the hardware may write the leaf `raw` of a live table on its own (x86: set
    /// accessed, or dirty on a writable page). Where it cannot, a rewrite may read and then
    /// store the entry instead of a compare-and-swap loop. The default says it always may.
    #[inline]
    fn hw_may_update(&self, raw: u64) -> bool {
        let _ = raw;
        true
    }

    /// Number of entries in a contiguous-hint run at `level`, if the format has the hint.
    fn contiguous_run(&self, level: usize) -> Option<usize> {
        let _ = level;
        None
    }

    /// Whether a leaf entry carries the contiguous hint.
    fn is_contiguous(&self, raw: u64) -> bool {
        let _ = raw;
        false
    }

    /// A leaf entry with the contiguous hint set or cleared.
    fn set_contiguous(&self, raw: u64, on: bool) -> u64 {
        let _ = on;
        raw
    }

    /// Index of `va` in a table at `level` (`level < depth()`).
    ///
    /// A walk hook: the default reads [`levels`](Self::levels); a format whose geometry is
    /// arithmetic (x86_64: 9 bits per level above a 12-bit page) overrides it with shifts, so
    /// a monomorphised walk has no per-level table loads or bounds checks.
    #[inline]
    fn index_of(&self, level: usize, va: u64) -> usize {
        self.levels()[level].index(va)
    }

    /// The leaf size an entry at `level` may map, if any (`levels()[level].leaf`; a walk hook
    /// like [`index_of`](Self::index_of)).
    #[inline]
    fn leaf_size(&self, level: usize) -> Option<PageSize> {
        self.levels()[level].leaf
    }

    /// `levels()[level].entry_span() - 1`: the VA bits below one entry of `level` (a walk hook
    /// like [`index_of`](Self::index_of)).
    #[inline]
    fn leaf_span_mask(&self, level: usize) -> u64 {
        self.levels()[level].entry_span() - 1
    }

    /// [`is_canonical`](Self::is_canonical) for a walk that knows the format's depth
    /// (`depth == self.depth()`): a walk hook like [`index_of`](Self::index_of), so a format
    /// whose VA width follows from its depth (x86_64) checks with constant shifts in a walk
    /// specialised for that depth.
    #[inline]
    fn is_canonical_at_depth(&self, va: VirtAddr, depth: usize) -> bool {
        let _ = depth;
        self.is_canonical(va)
    }

    /// Number of levels.
    #[inline]
    fn depth(&self) -> usize {
        self.levels().len()
    }

    /// The level index whose leaf is `size`, if any.
    fn level_of_size(&self, size: PageSize) -> Option<usize> {
        self.levels().iter().position(|l| l.leaf == Some(size))
    }

    /// Whether `pa` fits the output-address width.
    #[inline]
    fn phys_fits(&self, pa: u64) -> bool {
        pa >> self.phys_bits() == 0
    }
}
