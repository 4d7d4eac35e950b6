//! The page descriptor (one per frame, 16 bytes) and the memmap of a node.
//!
//! A descriptor is four `AtomicU32` words:
//!
//! | word    | free / per-CPU block head | allocated block head        | pageblock head frame |
//! |---------|---------------------------|-----------------------------|----------------------|
//! | `next`  | next index on its list    | private word, low half      |                      |
//! | `prev`  | previous index on its list| private word, high half     |                      |
//! | `flags` | state, order, list type   | state, order, alloc type, mover id, migrating bit |  |
//! | `block` |                           |                             | pageblock type, movable tally |
//!
//! List links are descriptor *indices* within the node's memmap (`NIL` ends a list), so free
//! lists never touch page contents and unlinking is O(1).
//!
//! ## Invariants
//! * Exactly the first frame of a block (free, on a per-CPU list, or allocated) has a head
//!   state; every other frame of the block is [`PageState::Tail`]. Splits and merges keep this
//!   in O(order) because only heads change.
//! * Present frames never given to the allocator are [`PageState::Reserved`]; frames outside
//!   every memory range of the node are [`PageState::Hole`].
//! * The `block` word of the first frame of every pageblock holds the pageblock's migrate type
//!   (bits 0..4), while isolated the type to restore (bits 4..8), compaction's skip hint
//!   (bit 8), and (bits 16..32) the pages of the pageblock held by allocated movable blocks
//!   smaller than a pageblock. The `block` word of the pageblock's *second* frame holds
//!   (bits 16..32) the pages of the pageblock in free blocks (on the zone's lists) smaller
//!   than a pageblock. The free tally is kept, and both are read, only for pageblocks wholly
//!   inside one zone; they replace a scan of the pageblock when a fallback decides whether
//!   to claim it.
//! * An allocated head's `flags` word also holds its mover id (bits 12..16, 0 for none) and
//!   the migrating bit (16), which makes every free of the block fail while it is set.
//!
//! ## Who writes what
//! Free heads and their links belong to the zone lock; per-CPU heads and links to that CPU's
//! per-CPU lock; allocated blocks to their owner. The only transition two parties can race on
//! is "allocated -> being freed" (a double free from two CPUs), so it is a compare-exchange
//! ([`PageDesc::begin_free`]); everything else is a relaxed store made under the owning lock.
//! Atomics make every access data-race free without `unsafe`; on x86-64 and aarch64 relaxed
//! loads and stores compile to plain moves.

use core::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use static_assertions::const_assert;

use crate::migrate::MigrateType;
use crate::raw::SectionMap;

/// End-of-list marker for descriptor indices.
pub(crate) const NIL: u32 = u32::MAX;

/// The life-cycle state of a frame's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// No memory at this frame (a hole in the node's span).
    Hole = 0,
    /// Present memory not managed by the allocator (never freed to it).
    Reserved = 1,
    /// A non-first frame of a block.
    Tail = 2,
    /// The first frame of a free block on a zone free list.
    Free = 3,
    /// The first frame of an allocated block.
    Allocated = 4,
    /// The first frame of a free block cached on a per-CPU list.
    PerCpu = 5,
}

impl PageState {
    const fn from_bits(b: u32) -> Self {
        match b & 0x7 {
            0 => PageState::Hole,
            1 => PageState::Reserved,
            2 => PageState::Tail,
            3 => PageState::Free,
            4 => PageState::Allocated,
            _ => PageState::PerCpu,
        }
    }
}

/// A decoded `flags` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags {
    pub state: PageState,
    pub order: u32,
    pub mt: MigrateType,
    /// The migrating bit as read (decode only: [`Flags::encode`] never sets it).
    pub migrating: bool,
}

impl Flags {
    pub const fn new(state: PageState, order: u32, mt: MigrateType) -> Self {
        Self {
            state,
            order,
            mt,
            migrating: false,
        }
    }
    /// Frames from this descriptor to the next one that may be a block head: the block's
    /// size for a head, one frame otherwise.
    #[inline]
    pub const fn span(&self) -> u64 {
        match self.state {
            PageState::Free | PageState::Allocated | PageState::PerCpu => 1u64 << self.order,
            _ => 1,
        }
    }

    const fn encode(self) -> u32 {
        (self.state as u32) | ((self.order & 0x3f) << 3) | ((self.mt as u32) << 9)
    }
    const fn decode(w: u32) -> Self {
        let mt = match MigrateType::from_index(((w >> 9) & 0x7) as usize) {
            Some(mt) => mt,
            None => MigrateType::Unmovable,
        };
        Self {
            state: PageState::from_bits(w),
            order: (w >> 3) & 0x3f,
            mt,
            migrating: w & MIGRATING != 0,
        }
    }
}

/// Bits 12..16 of the `flags` word of an allocated head: the block's mover (0: none).
const MOVER_SHIFT: u32 = 12;
const MOVER_MASK: u32 = 0xf << MOVER_SHIFT;
/// Bit 16 of the `flags` word of an allocated head: the block is being migrated.
const MIGRATING: u32 = 1 << 16;
/// Bit 20 of the `flags` word: a descriptor of the memmap's shared hole block (`Memmap`),
/// which stands for every frame of every section without descriptors of its own. Its
/// pageblock word is never changed (isolation or a skip-hint reset walking over a hole
/// section would otherwise change it for all of them).
const SHARED_HOLE: u32 = 1 << 20;
/// Bit 8 of a pageblock's `block` word: compaction's skip hint.
const SKIP_HINT: u32 = 1 << 8;
/// Bits 16..32 of a `block` word: a pageblock tally (movable pages on the pageblock's first
/// frame, free pages on its second). A tally is below 2^15 (`MAX_ORDER_LIMIT`).
const TALLY_SHIFT: u32 = 16;
const TALLY_LOW: u32 = (1 << TALLY_SHIFT) - 1;

/// One frame's descriptor. Opaque: the caller only provides storage for an array of them.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PageDesc {
    next: AtomicU32,
    prev: AtomicU32,
    flags: AtomicU32,
    block: AtomicU32,
}

// The memmap budget: at most 16 bytes per 4 KiB frame (Linux's `struct page` is 64).
const_assert!(core::mem::size_of::<PageDesc>() <= 16);
const_assert!(core::mem::align_of::<PageDesc>() <= 8);

impl PageDesc {
    /// A descriptor for a hole, the initial state.
    pub const fn new() -> Self {
        Self::with_state(PageState::Hole)
    }

    /// A descriptor of the shared hole block (`Memmap`).
    pub(crate) const fn shared_hole() -> Self {
        let d = Self::with_state(PageState::Hole);
        Self {
            flags: AtomicU32::new(
                Flags::new(PageState::Hole, 0, MigrateType::Unmovable).encode() | SHARED_HOLE,
            ),
            ..d
        }
    }

    /// Whether this is a descriptor of the shared hole block.
    #[inline]
    pub(crate) fn is_shared_hole(&self) -> bool {
        self.flags.load(Relaxed) & SHARED_HOLE != 0
    }

    /// A fresh descriptor in `state` (a hole or a reserved frame), not on any list.
    pub(crate) const fn with_state(state: PageState) -> Self {
        Self {
            next: AtomicU32::new(NIL),
            prev: AtomicU32::new(NIL),
            flags: AtomicU32::new(Flags::new(state, 0, MigrateType::Unmovable).encode()),
            block: AtomicU32::new(MigrateType::Movable as u32),
        }
    }

    #[inline]
    pub(crate) fn flags(&self) -> Flags {
        Flags::decode(self.flags.load(Relaxed))
    }
    #[inline]
    pub(crate) fn set_flags(&self, f: Flags) {
        self.flags.store(f.encode(), Relaxed);
    }
    /// State and order without decoding the migrate type (the block-head walk's inner loop).
    #[inline]
    pub(crate) fn state_order(&self) -> (PageState, u32) {
        let w = self.flags.load(Relaxed);
        (PageState::from_bits(w), (w >> 3) & 0x3f)
    }
    #[inline]
    pub(crate) fn state(&self) -> PageState {
        self.state_order().0
    }
    /// Whether the frame is `state`, without decoding anything else (boot-time scans).
    #[inline]
    pub(crate) fn is(&self, state: PageState) -> bool {
        self.flags.load(Relaxed) & 0x7 == state as u32
    }

    /// Atomically turn an allocated head of `order` into `to`. On failure returns what was
    /// there, unchanged.
    #[inline]
    pub(crate) fn begin_free(&self, order: u32, to: Flags) -> Result<Flags, Flags> {
        self.update_head(order, false, |_| Some(to.encode()))
            .map(Flags::decode)
            .map_err(Flags::decode)
    }

    /// Atomically replace the `flags` word of an allocated head of `order` by `next(word)`,
    /// if the head's migrating bit is `migrating` and `next` gives a word. Returns the word
    /// it replaced, or on refusal the word it saw.
    #[inline]
    fn update_head(
        &self,
        order: u32,
        migrating: bool,
        next: impl Fn(u32) -> Option<u32>,
    ) -> Result<u32, u32> {
        self.flags.fetch_update(Relaxed, Relaxed, |cur| {
            let f = Flags::decode(cur);
            if f.state != PageState::Allocated || f.order != order || f.migrating != migrating {
                return None;
            }
            next(cur)
        })
    }

    /// The mover id of an allocated head (0: none).
    #[inline]
    pub(crate) fn mover_id(&self) -> u8 {
        ((self.flags.load(Relaxed) & MOVER_MASK) >> MOVER_SHIFT) as u8
    }

    /// Whether an allocated head is being migrated.
    #[inline]
    pub(crate) fn is_migrating(&self) -> bool {
        self.flags.load(Relaxed) & MIGRATING != 0
    }

    /// Set the mover id of an allocated head of `order` (not being migrated). On failure
    /// returns what was there, unchanged.
    pub(crate) fn set_mover_id(&self, order: u32, id: u8) -> Result<(), Flags> {
        self.update_head(order, false, |cur| {
            Some((cur & !MOVER_MASK) | (u32::from(id & 0xf) << MOVER_SHIFT))
        })
        .map(|_| ())
        .map_err(Flags::decode)
    }

    /// Claim an allocated head of `order` that names a mover for migration: set the
    /// migrating bit, which makes every free of the block fail until
    /// [`end_migration`](Self::end_migration). Returns the flags and the mover id; on
    /// failure what was there (flags, mover id, migrating bit), unchanged.
    pub(crate) fn begin_migration(&self, order: u32) -> Result<(Flags, u8), (Flags, u8, bool)> {
        let id = |w: u32| ((w & MOVER_MASK) >> MOVER_SHIFT) as u8;
        self.update_head(order, false, |cur| {
            (id(cur) != 0).then_some(cur | MIGRATING)
        })
        .map(|w| (Flags::decode(w), id(w)))
        .map_err(|w| (Flags::decode(w), id(w), w & MIGRATING != 0))
    }

    /// Turn a head this migration claimed (allocated with `order`, migrating bit set) into
    /// `to`, ending the migration and the block together, so that no one can claim the block
    /// between the two. On failure returns what was there, unchanged.
    pub(crate) fn end_migration_free(&self, order: u32, to: Flags) -> Result<Flags, Flags> {
        self.update_head(order, true, |_| Some(to.encode()))
            .map(Flags::decode)
            .map_err(Flags::decode)
    }

    /// Clear the migrating bit (the block stays allocated with its mover).
    pub(crate) fn end_migration(&self) {
        self.flags.fetch_and(!MIGRATING, Relaxed);
    }

    /// Make this the head of a freshly allocated migration target: allocated with `order`
    /// and `mt`, naming mover `id`, claimed by the migration (frees fail until it ends),
    /// private word cleared.
    pub(crate) fn set_migration_target(&self, order: u32, mt: MigrateType, id: u8) {
        self.set_private(0);
        let f = Flags::new(PageState::Allocated, order, mt).encode();
        self.flags.store(
            f | (u32::from(id & 0xf) << MOVER_SHIFT) | MIGRATING,
            Relaxed,
        );
    }

    /// Make this the head of a freshly allocated block (private word cleared).
    #[inline]
    pub(crate) fn set_allocated(&self, order: u32, mt: MigrateType) {
        self.set_private(0);
        self.set_flags(Flags::new(PageState::Allocated, order, mt));
    }

    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.next.load(Relaxed)
    }
    #[inline]
    pub(crate) fn prev(&self) -> u32 {
        self.prev.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_next(&self, v: u32) {
        self.next.store(v, Relaxed);
    }
    #[inline]
    pub(crate) fn set_prev(&self, v: u32) {
        self.prev.store(v, Relaxed);
    }

    /// The private word of an allocated block (kept in the unused link fields).
    #[inline]
    pub(crate) fn private(&self) -> u64 {
        u64::from(self.next()) | (u64::from(self.prev()) << 32)
    }
    #[inline]
    pub(crate) fn set_private(&self, v: u64) {
        self.set_next(v as u32);
        self.set_prev((v >> 32) as u32);
    }

    /// `fetch_update` on the low half of the private word (the high half is untouched).
    #[inline]
    pub(crate) fn update_private_low(&self, f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
        self.next.fetch_update(AcqRel, Acquire, f)
    }

    /// Pageblock type (meaningful on the first frame of a pageblock).
    #[inline]
    pub(crate) fn block_type(&self) -> MigrateType {
        MigrateType::from_index((self.block.load(Relaxed) & 0xf) as usize)
            .unwrap_or(MigrateType::Movable)
    }
    /// Type saved by isolation (meaningful on an isolated pageblock's first frame).
    #[inline]
    pub(crate) fn saved_block_type(&self) -> MigrateType {
        MigrateType::from_index(((self.block.load(Relaxed) >> 4) & 0xf) as usize)
            .unwrap_or(MigrateType::Movable)
    }
    /// Compaction's skip hint on a pageblock's first frame (Linux `PG_migrate_skip`):
    /// the last scan found nothing to migrate here.
    #[inline]
    pub(crate) fn skip_hint(&self) -> bool {
        self.block.load(Relaxed) & SKIP_HINT != 0
    }
    #[inline]
    pub(crate) fn set_skip_hint(&self, on: bool) {
        if self.is_shared_hole() {
            return;
        }
        if on {
            self.block.fetch_or(SKIP_HINT, Relaxed);
        } else {
            self.block.fetch_and(!SKIP_HINT, Relaxed);
        }
    }
    /// Set the pageblock type and the type isolation saved (clears the skip hint; keeps the
    /// movable tally, which allocations and frees change without the zone lock).
    #[inline]
    pub(crate) fn set_block_type(&self, mt: MigrateType, saved: MigrateType) {
        if self.is_shared_hole() {
            return;
        }
        let bits = (mt as u32) | ((saved as u32) << 4);
        // The closure always returns `Some`: this cannot fail.
        let _ = self
            .block
            .fetch_update(Relaxed, Relaxed, |w| Some((w & !TALLY_LOW) | bits));
    }

    /// The tally in bits 16..32 of the `block` word (see the module docs for which).
    #[inline]
    pub(crate) fn block_tally(&self) -> u64 {
        u64::from(self.block.load(Relaxed) >> TALLY_SHIFT)
    }

    /// Add `pages` to (or with `!add`, take them from) the tally, atomically: the movable
    /// tally changes under per-CPU locks of different CPUs at once.
    #[inline]
    pub(crate) fn change_block_tally(&self, pages: u32, add: bool) {
        if add {
            self.block.fetch_add(pages << TALLY_SHIFT, Relaxed);
        } else {
            self.block.fetch_sub(pages << TALLY_SHIFT, Relaxed);
        }
    }

    /// Add or take `pages` with a plain load and store, for a tally only the zone lock
    /// writes (the free tally).
    #[inline]
    pub(crate) fn change_block_tally_locked(&self, pages: u32, add: bool) {
        let w = self.block.load(Relaxed);
        let d = pages << TALLY_SHIFT;
        self.block.store(if add { w + d } else { w - d }, Relaxed);
    }
}

/// The descriptors of one node, frame `base + i` at index `i` of the section map. The memmap is
/// sparse (Linux SPARSEMEM, `raw::SectionMap`): each section of `2^max_order` frames
/// (one max-order block) that holds memory has its own descriptors; sections without
/// memory, and sections past the deferred boundary until they are initialised
/// (`deferred.rs`), share one block of hole descriptors. So every accessor below answers
/// for any frame of the span (a hole descriptor for a frame without its own), and the
/// lookup is one load of the section's entry; walkers still stop at [`end`](Self::end).
///
/// The shared hole block is never written: holes are never freed or allocated, and the
/// pageblock-word writers that can walk over a hole section (isolation, a skip-hint reset)
/// leave its descriptors alone (`PageDesc::is_shared_hole`).
pub(crate) struct Memmap<'m> {
    pub base: u64,
    /// Frames of the span.
    pub span: u64,
    pub map: SectionMap<'m, PageDesc>,
    /// Frames from `base` initialised so far (the deferred boundary); only grows, stored
    /// with release ordering after the sections below it are published.
    pub init: AtomicU64,
}

impl<'m> Memmap<'m> {
    /// An empty memmap (absent nodes).
    pub const fn empty() -> Self {
        Self {
            base: 0,
            span: 0,
            map: SectionMap::empty(),
            init: AtomicU64::new(0),
        }
    }

    /// One past the last initialised frame (the deferred boundary while one remains).
    #[inline]
    pub fn end(&self) -> u64 {
        self.base + self.init.load(Acquire)
    }
    /// One past the last frame of the span.
    #[inline]
    pub fn span_end(&self) -> u64 {
        self.base + self.span
    }
    /// Whether `pfn` is below the deferred boundary, inside the span.
    #[inline]
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.base && pfn < self.end()
    }
    /// Whether `pfn` lies in the node's span, initialised or not.
    #[inline]
    pub fn spans(&self, pfn: u64) -> bool {
        pfn >= self.base && pfn < self.span_end()
    }
    /// Whether `pfn` (inside the span) has descriptors of its own: its section holds memory
    /// and is initialised. Frames of hole sections, and of sections past the deferred
    /// boundary, share the hole block.
    #[inline]
    pub fn has_own_desc(&self, pfn: u64) -> bool {
        self.spans(pfn)
            && self
                .map
                .entry(((pfn - self.base) >> self.map.shift()) as usize)
                != 0
    }
    /// For a walker at the first frame of a section without descriptors of its own (all
    /// holes, or past the deferred boundary), the first frame of the next section; `None`
    /// anywhere else.
    #[inline]
    pub fn skip_hole_section(&self, pfn: u64) -> Option<u64> {
        let mask = (1u64 << self.map.shift()) - 1;
        ((pfn - self.base) & mask == 0 && !self.has_own_desc(pfn)).then(|| pfn + mask + 1)
    }
    /// Give section `section` descriptors of its own, written with `f(i)` for its `i`-th
    /// frame, and publish them.
    pub fn init_section(&self, section: usize, f: impl FnMut(usize) -> PageDesc) {
        let off = self.map.alloc_block(f);
        self.map.publish(section, off);
    }
    /// Publish the deferred boundary `end` (a frame number), after the sections below it.
    pub fn set_end(&self, end: u64) {
        self.init.store(end - self.base, Release);
    }
    /// Record that the allocated head at `pfn` (`order`, allocated as `mt`) joined (`add`)
    /// or left its pageblock's movable tally; only movable blocks smaller than a pageblock
    /// (`order < pb_order`) count.
    #[inline]
    pub fn tally_movable(&self, pfn: u64, order: u32, mt: MigrateType, pb_order: u32, add: bool) {
        if mt == MigrateType::Movable && order < pb_order {
            self.desc(pfn & !((1u64 << pb_order) - 1))
                .change_block_tally(1 << order, add);
        }
    }

    /// Descriptors of `[pfn, pfn + n)`, for loops over a range (one lookup, not one per
    /// frame); the range must lie in one section (a block of at most max order does).
    #[inline]
    pub fn descs(&self, pfn: u64, n: u64) -> &'m [PageDesc] {
        self.map.get_run(pfn - self.base, n)
    }

    /// Descriptor of `pfn`; callers pass frames inside the node's span (checked at the API
    /// boundary).
    #[inline]
    pub fn desc(&self, pfn: u64) -> &'m PageDesc {
        self.map.get(pfn - self.base)
    }
    /// The descriptor of list index `idx` (from [`idx`](Self::idx) or a list link): a
    /// storage slot, reached without the section table.
    #[inline]
    pub fn at(&self, idx: u32) -> &'m PageDesc {
        self.map.at_slot(idx)
    }
    /// The list index of `pfn`'s descriptor: its storage slot (lists link descriptors by
    /// slot, so walking a list needs no section lookup).
    #[inline]
    pub fn idx(&self, pfn: u64) -> u32 {
        self.map.slot(pfn - self.base)
    }
    /// The frame of list index `idx`.
    #[inline]
    pub fn pfn(&self, idx: u32) -> u64 {
        self.base + self.map.index_of_slot(idx)
    }
}

/// An intrusive doubly linked list of descriptor indices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    pub head: u32,
    pub tail: u32,
}

impl List {
    pub const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }

    #[inline]
    pub fn push_front(&mut self, mm: &Memmap<'_>, idx: u32) {
        let d = mm.at(idx);
        d.set_prev(NIL);
        d.set_next(self.head);
        if self.head == NIL {
            self.tail = idx;
        } else {
            mm.at(self.head).set_prev(idx);
        }
        self.head = idx;
    }

    #[inline]
    pub fn push_back(&mut self, mm: &Memmap<'_>, idx: u32) {
        let d = mm.at(idx);
        d.set_next(NIL);
        d.set_prev(self.tail);
        if self.tail == NIL {
            self.head = idx;
        } else {
            mm.at(self.tail).set_next(idx);
        }
        self.tail = idx;
    }

    /// Unlink `idx`, which the caller knows is on this list.
    #[inline]
    pub fn remove(&mut self, mm: &Memmap<'_>, idx: u32) {
        let d = mm.at(idx);
        let (prev, next) = (d.prev(), d.next());
        if prev == NIL {
            self.head = next;
        } else {
            mm.at(prev).set_next(next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            mm.at(next).set_prev(prev);
        }
        d.set_next(NIL);
        d.set_prev(NIL);
    }

    #[inline]
    pub fn pop_front(&mut self, mm: &Memmap<'_>) -> Option<u32> {
        let h = self.head;
        if h == NIL {
            return None;
        }
        self.remove(mm, h);
        Some(h)
    }

    #[inline]
    pub fn pop_back(&mut self, mm: &Memmap<'_>) -> Option<u32> {
        let t = self.tail;
        if t == NIL {
            return None;
        }
        self.remove(mm, t);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fits_sixteen_bytes() {
        assert_eq!(core::mem::size_of::<PageDesc>(), 16);
    }

    #[test]
    fn flags_round_trip() {
        for st in [
            PageState::Hole,
            PageState::Reserved,
            PageState::Tail,
            PageState::Free,
            PageState::Allocated,
            PageState::PerCpu,
        ] {
            for mt in MigrateType::ALL {
                let f = Flags::new(st, 13, mt);
                assert_eq!(Flags::decode(f.encode()), f);
            }
        }
    }

    #[test]
    fn begin_free_only_from_allocated_of_same_order() {
        let d = PageDesc::new();
        let pcp = Flags::new(PageState::PerCpu, 2, MigrateType::Movable);
        assert!(d.begin_free(0, pcp).is_err());
        d.set_flags(Flags::new(PageState::Allocated, 2, MigrateType::Unmovable));
        assert_eq!(d.begin_free(1, pcp).unwrap_err().order, 2);
        assert!(d.begin_free(2, pcp).is_ok());
        assert_eq!(d.state(), PageState::PerCpu);
        assert!(d.begin_free(2, pcp).is_err(), "second free is refused");
    }

    #[test]
    fn list_push_remove_pop_keeps_links() {
        let mut storage: [core::mem::MaybeUninit<PageDesc>; 10] =
            core::array::from_fn(|_| core::mem::MaybeUninit::uninit());
        let mm = Memmap {
            base: 100,
            span: 4,
            map: SectionMap::new_in_one(&mut storage, 1, 2, 2, |_| PageDesc::new()),
            init: AtomicU64::new(0),
        };
        mm.init_section(0, |_| PageDesc::new());
        mm.set_end(104);
        let i = |p: u64| mm.idx(p);
        let mut l = List::EMPTY;
        l.push_back(&mm, i(101));
        l.push_front(&mm, i(100));
        l.push_back(&mm, i(103));
        l.remove(&mm, i(101));
        assert_eq!(l.pop_front(&mm).map(|x| mm.pfn(x)), Some(100));
        assert_eq!(l.pop_back(&mm).map(|x| mm.pfn(x)), Some(103));
        assert!(l.is_empty());
        assert_eq!(l.pop_front(&mm), None);
    }

    #[test]
    fn mover_id_and_migration_bit_live_beside_the_flags() {
        let d = PageDesc::new();
        assert!(d.set_mover_id(0, 3).is_err(), "not allocated");
        d.set_allocated(1, MigrateType::Movable);
        assert!(d.begin_migration(1).is_err(), "no mover: not claimable");
        assert!(d.set_mover_id(0, 3).is_err(), "wrong order");
        d.set_mover_id(1, 3).unwrap();
        assert_eq!(d.mover_id(), 3);
        assert_eq!(
            d.flags(),
            Flags::new(PageState::Allocated, 1, MigrateType::Movable)
        );
        let (f, id) = d.begin_migration(1).unwrap();
        assert_eq!((f.order, id), (1, 3));
        assert!(d.is_migrating());
        assert!(d.begin_migration(1).is_err(), "claimed once");
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        assert!(d.begin_free(1, tail).is_err(), "no free while migrating");
        assert!(d.set_mover_id(1, 4).is_err());
        d.end_migration();
        assert!(!d.is_migrating());
        assert_eq!(d.mover_id(), 3);
        assert!(d.begin_free(1, tail).is_ok());
        d.set_allocated(0, MigrateType::Movable);
        assert_eq!(d.mover_id(), 0, "a new allocation has no mover");
    }

    #[test]
    fn private_word_uses_link_fields() {
        let d = PageDesc::new();
        d.set_private(0xdead_beef_1234_5678);
        assert_eq!(d.private(), 0xdead_beef_1234_5678);
    }
}
