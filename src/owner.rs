//! Page ownership: who holds each allocated block, and with what mobility.
//!
//! Linux's `page_owner` records, per allocated page, who allocated it; the facade keeps a
//! smaller version, one byte per frame, for every block it hands out (direct page
//! allocations, slab pages, vmalloc pages, page-table frames). It serves three purposes:
//!
//! * accounting for the meminfo report (frames per use and per mobility);
//! * telling slab pages from other pages, so the slab's private-word lookups answer 0 for
//!   frames the slab does not own (the `PageSource` contract);
//! * the per-pageblock census behind the SVG memory map: how many frames of each pageblock
//!   are free, reserved, or held by each mobility.
//!
//! ## Encoding (one `AtomicU8` per frame of each present section: see [`OwnerMap`])
//! | value | meaning |
//! |---|---|
//! | `0` | not allocated through the facade (free, or on a per-CPU list) |
//! | [`HOLE`] | no memory at this frame |
//! | [`RESERVED`] | memory never handed to the buddy (firmware, kernel image, initrd, ...) |
//! | [`METADATA`] | memory holding mmkit's own boot structures (memmap, this table, ...) |
//! | [`SLAB_TAIL`] | a tail frame of a slab block |
//! | [`CONTIG_TAIL`] | a frame after the head of a contiguous run (`alloc_contig`), whose head is an order-0 block byte |
//! | `mob + 1 | order << 2 | use << 6` | head of an allocated block (`mob` = migrate-type index 0..=2) |
//!
//! Frames the boot hand-off gave past a node's deferred boundary (`MmBuilder::deferred_init`)
//! stay [`RESERVED`] until the buddy initialises and frees them (the [`OwnerMap`] is the buddy's deferred observer).
//!
//! Tail frames of other blocks read 0; the census walks from heads. A contiguous run is not
//! one buddy block, so its length is kept in the table itself: the run's tail frames are
//! marked, and the run ends at the first frame that is not [`CONTIG_TAIL`]. Only the head byte changes on
//! allocation and free, so the cost is one relaxed store each way. The byte is written after
//! the buddy allocation succeeds and cleared *before* the block goes back to the buddy, so a
//! concurrent reallocation of the same frames is never overwritten by a late clear.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use mmkit_addr::{Order, Pfn, PhysRange, PAGE_SIZE};
use mmkit_buddy::{memmap_sections, DeferredObserver, MigrateType, SectionMap};

/// Owner byte of a hole.
pub const HOLE: u8 = 0b0000_0100;
/// Owner byte of a reserved frame.
pub const RESERVED: u8 = 0b0000_1000;
/// Owner byte of a frame holding mmkit's own boot metadata: reserved for good.
pub const METADATA: u8 = 0b0001_0100;
/// Owner byte of a tail frame of a slab block: the slab may store that frame's private word
/// (`PageSource::set_page_private` checks it).
pub const SLAB_TAIL: u8 = 0b0000_1100;

/// Owner byte of a frame after the head of a contiguous run.
pub const CONTIG_TAIL: u8 = 0b0001_1000;

// `slab_frame` tells block heads from the state bytes by the mobility bits alone.
const _: () = {
    let states = [HOLE, RESERVED, METADATA, SLAB_TAIL, CONTIG_TAIL];
    let mut i = 0;
    while i < states.len() {
        assert!(states[i] & 0b11 == 0);
        i += 1;
    }
};

/// What the owner table says about a frame, for the slab's private-word stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlabFrame {
    /// Not a frame of a live slab block.
    NotSlab,
    /// The head frame of a slab block.
    Head,
    /// A tail frame of a slab block.
    Tail,
}

/// What an allocated block is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageUse {
    /// Pages from [`Mm::alloc_pages`](crate::Mm::alloc_pages).
    Pages = 0,
    /// Slab pages and large kmalloc blocks.
    Slab = 1,
    /// Pages backing vmalloc areas.
    Vmalloc = 2,
    /// Page-table frames.
    PageTable = 3,
}

impl PageUse {
    /// Every use, in encoding order.
    pub const ALL: [PageUse; 4] = [
        PageUse::Pages,
        PageUse::Slab,
        PageUse::Vmalloc,
        PageUse::PageTable,
    ];
}

/// A decoded head byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The block order.
    pub order: Order,
    /// The mobility the block was allocated with.
    pub mobility: MigrateType,
    /// What it is used for.
    pub usage: PageUse,
}

impl Owner {
    const fn encode(self) -> u8 {
        (self.mobility as u8 + 1) | ((self.order.get() as u8) << 2) | ((self.usage as u8) << 6)
    }

    #[inline]
    fn decode(b: u8) -> Option<Self> {
        let mob = b & 0b11;
        if mob == 0 {
            return None;
        }
        Some(Self {
            order: Order::new(u32::from((b >> 2) & 0xf)),
            mobility: MigrateType::from_index(usize::from(mob - 1))?,
            usage: PageUse::ALL[usize::from(b >> 6)],
        })
    }
}

/// Frame counts of one pageblock, from [`Mm::pageblock_census`](crate::Mm::pageblock_census).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageblockCensus {
    /// First frame of the pageblock.
    pub pfn: u64,
    /// Frames neither allocated nor reserved nor holes (free, or cached per CPU).
    pub free: u32,
    /// Reserved frames.
    pub reserved: u32,
    /// Frames without memory.
    pub hole: u32,
    /// Allocated frames per mobility (unmovable, movable, reclaimable).
    pub by_mobility: [u32; 3],
    /// The pageblock's migrate type in the buddy allocator (`None` outside every zone).
    pub migratetype: Option<MigrateType>,
}

impl PageblockCensus {
    /// Allocated frames.
    pub fn used(&self) -> u32 {
        self.by_mobility.iter().sum()
    }

    /// How many mobility classes hold frames here (2 or 3 means a mixed pageblock).
    pub fn mobilities(&self) -> usize {
        self.by_mobility.iter().filter(|&&n| n > 0).count()
    }

    /// Whether the pageblock holds allocations of more than one mobility, or of a mobility
    /// other than its migrate type: the blocks that keep large allocations from forming.
    pub fn is_mixed(&self) -> bool {
        if self.mobilities() > 1 {
            return true;
        }
        match self.migratetype {
            Some(mt) if mt.index() < self.by_mobility.len() => self
                .by_mobility
                .iter()
                .enumerate()
                .any(|(i, &n)| n > 0 && i != mt.index()),
            _ => false,
        }
    }
}

/// The owner table's storage: a sparse per-frame byte table (`SectionMap`) over the span
/// of memory, sections of one max-order block. Sections that hold memory get bytes of their
/// own when initialised (at boot below each node's deferred boundary, later when the
/// buddy's deferred growth reaches them); sections without memory read [`HOLE`] from one
/// shared block, and sections still deferred read [`RESERVED`] from another, so the table
/// costs 4 bytes per section of hole and writes nothing at boot for deferred memory.
/// Bytes of the shared blocks are never written ([`OwnerMap::mark`] skips them, and no
/// other writer reaches a frame of a section without bytes of its own: allocated blocks
/// and frames being freed are all initialised).
pub(crate) struct OwnerMap<'m> {
    /// First frame of the first section.
    pub(crate) base: u64,
    pub(crate) map: SectionMap<'m, AtomicU8>,
    /// Every memory range (any node).
    pub(crate) memory: &'m [PhysRange],
    /// mmkit's own boot structures, marked [`METADATA`] when their sections are initialised.
    pub(crate) meta: &'m [PhysRange],
}

/// Offset of the shared [`RESERVED`] block (the shared [`HOLE`] block is at 0).
fn reserved_block(shift: u32) -> u32 {
    1 << shift
}

impl<'m> OwnerMap<'m> {
    /// A table of `table.len()` sections of `2^shift` frames from `base` (section-aligned),
    /// every section reading [`HOLE`]; `storage` holds the two shared blocks and the
    /// present sections' bytes.
    pub(crate) fn new(
        base: u64,
        table: &'m mut [core::mem::MaybeUninit<core::sync::atomic::AtomicU32>],
        storage: &'m mut [core::mem::MaybeUninit<AtomicU8>],
        shift: u32,
        memory: &'m [PhysRange],
        meta: &'m [PhysRange],
    ) -> Self {
        let map = SectionMap::new(table, storage, shift, |_| AtomicU8::new(HOLE));
        let r = map.alloc_block(|_| AtomicU8::new(RESERVED));
        debug_assert_eq!(r, reserved_block(shift));
        Self {
            base,
            map,
            memory,
            meta,
        }
    }

    /// Bytes of storage for `memory` with sections of `2^shift` frames: the two shared
    /// blocks and one block per present section.
    pub(crate) fn storage_len(memory: &[PhysRange], max_order: u32) -> usize {
        let present: u64 = memmap_sections(memory, max_order).map(|(a, b)| b - a).sum();
        ((present + 2) << max_order.min(mmkit_buddy::MAX_ORDER_LIMIT)) as usize
    }

    fn shift(&self) -> u32 {
        self.map.shift()
    }

    /// The section of `pfn`, if the table covers it.
    #[inline]
    fn section(&self, pfn: u64) -> Option<usize> {
        let s = usize::try_from(pfn.checked_sub(self.base)? >> self.shift()).ok()?;
        (s < self.map.sections()).then_some(s)
    }

    /// Whether section `s` has bytes of its own.
    fn is_own(&self, s: usize) -> bool {
        self.map.entry(s) > reserved_block(self.shift())
    }

    #[inline]
    fn slot(&self, pfn: u64) -> Option<&'m AtomicU8> {
        // A frame below `base` wraps to an index past the last section.
        self.map.try_get(pfn.wrapping_sub(self.base))
    }

    /// Whether `pfn` lies in mmkit's boot structures (from the log, not the table: also
    /// right for sections not initialised yet).
    fn in_meta(&self, pfn: u64) -> bool {
        // Partial frames at either end count too.
        self.meta.iter().any(|r| {
            let (s, e) = (
                r.start().pfn().as_u64(),
                r.end().as_u64().div_ceil(PAGE_SIZE),
            );
            s <= pfn && pfn < e
        })
    }

    /// The byte a frame starts with when its section is initialised.
    fn initial_byte(&self, pfn: u64) -> u8 {
        if self.in_meta(pfn) {
            METADATA
        } else if self.memory.iter().any(|r| {
            let f = r.whole_pfns();
            f.start <= pfn && pfn < f.end
        }) {
            RESERVED
        } else {
            HOLE
        }
    }

    /// Give every section overlapping `[start, end)` that holds memory bytes of its own,
    /// written with their boot state ([`RESERVED`] memory, [`HOLE`]s, [`METADATA`]);
    /// sections initialised already are left alone.
    pub(crate) fn init_sections(&self, start: u64, end: u64) {
        let shift = self.shift();
        let step = 1u64 << shift;
        // Only the sections that hold memory: a hole costs nothing here either.
        for (a, b) in memmap_sections(self.memory, shift) {
            let (a, b) = ((a << shift).max(start & !(step - 1)), (b << shift).min(end));
            let mut sec = a;
            while sec < b {
                self.init_section(sec);
                sec += step;
            }
        }
    }

    /// Give the section starting at frame `sec` (which holds memory) bytes of its own,
    /// unless it has them already.
    fn init_section(&self, sec: u64) {
        let Some(s) = self.section(sec) else {
            return;
        };
        if self.is_own(s) {
            return;
        }
        let se = sec + (1u64 << self.shift());
        let whole = self.memory.iter().any(|r| {
            let f = r.whole_pfns();
            f.start <= sec && se <= f.end
        });
        let meta = self.meta.iter().any(|r| {
            let (a, b) = (
                r.start().pfn().as_u64(),
                r.end().as_u64().div_ceil(PAGE_SIZE),
            );
            a < se && sec < b
        });
        let off = if whole && !meta {
            self.map.alloc_block(|_| AtomicU8::new(RESERVED))
        } else {
            self.map
                .alloc_block(|i| AtomicU8::new(self.initial_byte(sec + i as u64)))
        };
        self.map.publish(s, off);
    }

    /// Point every section overlapping `[start, end)` that holds memory at the shared
    /// [`RESERVED`] block (the deferred part of a node, at boot).
    pub(crate) fn defer_sections(&self, start: u64, end: u64) {
        let shift = self.shift();
        for (a, b) in memmap_sections(self.memory, shift) {
            let (a, b) = ((a << shift).max(start), (b << shift).min(end));
            let mut p = a;
            while p < b {
                if let Some(s) = self.section(p) {
                    if !self.is_own(s) {
                        self.map.publish(s, reserved_block(shift));
                    }
                }
                p = (p | ((1 << shift) - 1)) + 1;
            }
        }
    }

    /// Store `value` in the bytes of `[start, end)` that sections with bytes of their own
    /// hold (shared blocks are never written).
    pub(crate) fn mark(&self, start: u64, end: u64, value: u8) {
        let shift = self.shift();
        let span_end = self.base + ((self.map.sections() as u64) << shift);
        let (mut p, end) = (start.max(self.base), end.min(span_end));
        while p < end {
            let next = ((p >> shift) + 1) << shift;
            let e = next.min(end);
            if let Some(s) = self.section(p) {
                if self.is_own(s) {
                    for b in self.map.get_run(p - self.base, e - p) {
                        b.store(value, Relaxed);
                    }
                }
            }
            p = e;
        }
    }
}

/// The facade registers the table as the buddy's [`DeferredObserver`] when booting with
/// deferral: growth gives the sections it reaches bytes of their own, then clears the bytes
/// of the frames it frees (until then a deferred section reads [`RESERVED`] from the
/// shared block).
impl DeferredObserver for OwnerMap<'_> {
    fn initialising(&self, start: Pfn, end: Pfn) {
        self.init_sections(start.as_u64(), end.as_u64());
    }

    fn freeing(&self, start: Pfn, end: Pfn) {
        self.mark(start.as_u64(), end.as_u64(), 0);
    }
}

/// Why [`PageOwners::take_pages`] refused a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakePagesError {
    /// The block belongs to another user.
    NotPages(PageUse),
    /// The frame heads a contiguous run.
    ContiguousRun,
}

/// The owner table and the counters derived from it.
pub(crate) struct PageOwners<'m> {
    map: &'m OwnerMap<'m>,
    /// Frames per use and mobility; the row of [`PageUse::Pages`] stays 0 (those are
    /// counted by a scan when asked, see [`frames`](Self::frames)).
    frames: [[AtomicU64; 3]; 4],
}

impl<'m> PageOwners<'m> {
    pub(crate) fn new(map: &'m OwnerMap<'m>) -> Self {
        Self {
            map,
            frames: Default::default(),
        }
    }

    #[inline]
    fn slot(&self, pfn: u64) -> Option<&'m AtomicU8> {
        self.map.slot(pfn)
    }

    /// Mark `[start, end)` with a boot-time state (`HOLE`, `RESERVED` or free `0`), in the
    /// sections initialised so far.
    #[inline]
    pub(crate) fn mark_range(&self, start: u64, end: u64, value: u8) {
        self.map.mark(start, end, value);
    }

    /// Turn the reserved frames `[start, end)` into free ones (owner byte 0) before they go to
    /// the buddy. Refuses, changing nothing, if a frame is outside the table or not plain
    /// reserved memory: returns that frame and its byte.
    pub(crate) fn release_reserved(&self, start: u64, end: u64) -> Result<(), (u64, Option<u8>)> {
        for pfn in start..end {
            match self.slot(pfn).map(|s| s.load(Relaxed)) {
                // A deferred section reads the shared reserved block: ask the log.
                Some(RESERVED) if self.map.in_meta(pfn) => return Err((pfn, Some(METADATA))),
                Some(RESERVED) => {}
                other => return Err((pfn, other)),
            }
        }
        self.mark_range(start, end, 0);
        Ok(())
    }

    /// Record a freshly allocated block.
    #[inline]
    pub(crate) fn record(&self, pfn: Pfn, owner: Owner) {
        if let Some(s) = self.slot(pfn.as_u64()) {
            s.store(owner.encode(), Relaxed);
        }
        if owner.usage == PageUse::Slab {
            let p = pfn.as_u64();
            self.mark_range(p + 1, p + owner.order.pages(), SLAB_TAIL);
        }
        self.count(&owner, owner.order.pages(), true);
    }

    /// Forget the block at `pfn` before it is freed; returns what it was.
    #[inline]
    pub(crate) fn take(&self, pfn: Pfn) -> Option<Owner> {
        let s = self.slot(pfn.as_u64())?;
        let b = s.load(Relaxed);
        let owner = Owner::decode(b)?;
        // Only one freer of a block can win; a loser sees the free error from the buddy.
        s.compare_exchange(b, 0, Relaxed, Relaxed).ok()?;
        if owner.usage == PageUse::Slab {
            let p = pfn.as_u64();
            self.mark_range(p + 1, p + owner.order.pages(), 0);
        }
        self.count(&owner, owner.order.pages(), false);
        Some(owner)
    }

    /// [`take`](Self::take) for `Mm::free_pages`, with its two checks on the same byte: the
    /// block at `pfn` must be a [`PageUse::Pages`] block, and not the head of a contiguous
    /// run (whose next frame is a [`CONTIG_TAIL`]); otherwise nothing changes and the error
    /// says which. `Ok(None)` when no owner is recorded or another freer took it first.
    #[inline]
    pub(crate) fn take_pages(&self, pfn: Pfn) -> Result<Option<Owner>, TakePagesError> {
        let p = pfn.as_u64();
        let Some(s) = self.slot(p) else {
            return Ok(None);
        };
        let b = s.load(Relaxed);
        let Some(owner) = Owner::decode(b) else {
            return Ok(None);
        };
        if owner.usage != PageUse::Pages {
            return Err(TakePagesError::NotPages(owner.usage));
        }
        if owner.order == Order::ZERO && p.checked_add(1).is_some_and(|q| self.is_contig_tail(q)) {
            return Err(TakePagesError::ContiguousRun);
        }
        if s.compare_exchange(b, 0, Relaxed, Relaxed).is_err() {
            return Ok(None);
        }
        Ok(Some(owner))
    }

    /// Record a freshly allocated contiguous run of `n` frames: the head as an order-0 block
    /// of `owner`, the other frames as [`CONTIG_TAIL`].
    pub(crate) fn record_run(&self, pfn: Pfn, n: u64, owner: Owner) {
        let p = pfn.as_u64();
        let owner = Owner {
            order: Order::ZERO,
            ..owner
        };
        self.mark_range(p.saturating_add(1), p.saturating_add(n), CONTIG_TAIL);
        if let Some(s) = self.slot(p) {
            s.store(owner.encode(), Relaxed);
        }
        self.count(&owner, n, true);
    }

    /// The length of the contiguous run whose head is `pfn`, or `None` if `pfn` is not the
    /// head of one (not an order-0 block byte followed by a [`CONTIG_TAIL`]).
    #[inline]
    pub(crate) fn run_len(&self, pfn: Pfn) -> Option<u64> {
        let head = self.get(pfn)?;
        let p = pfn.as_u64();
        if head.order != Order::ZERO || !self.is_contig_tail(p.checked_add(1)?) {
            return None;
        }
        let mut n = 2;
        while p.checked_add(n).is_some_and(|q| self.is_contig_tail(q)) {
            n += 1;
        }
        Some(n)
    }

    /// Forget the run of `n` frames at `pfn` (as [`run_len`](Self::run_len) measured it)
    /// before it is freed; returns its owner. Only one caller wins the head.
    pub(crate) fn take_run(&self, pfn: Pfn, n: u64) -> Option<Owner> {
        let s = self.slot(pfn.as_u64())?;
        let b = s.load(Relaxed);
        let owner = Owner::decode(b)?;
        s.compare_exchange(b, 0, Relaxed, Relaxed).ok()?;
        let p = pfn.as_u64();
        self.mark_range(p.saturating_add(1), p.saturating_add(n), 0);
        self.count(&owner, n, false);
        Some(owner)
    }

    /// Whether `pfn` is a tail frame of a contiguous run.
    #[inline]
    pub(crate) fn is_contig_tail(&self, pfn: u64) -> bool {
        self.slot(pfn)
            .is_some_and(|s| s.load(Relaxed) == CONTIG_TAIL)
    }

    /// Whether `pfn` holds mmkit's own boot metadata.
    pub(crate) fn is_metadata(&self, pfn: u64) -> bool {
        match self.slot(pfn).map(|s| s.load(Relaxed)) {
            Some(METADATA) => true,
            // A section not initialised yet reads the shared reserved block.
            Some(RESERVED) => self.map.in_meta(pfn),
            _ => false,
        }
    }

    /// Whether `pfn` is a frame of a live slab block, and which kind.
    #[inline]
    pub(crate) fn slab_frame(&self, pfn: Pfn) -> SlabFrame {
        let Some(b) = self.slot(pfn.as_u64()).map(|s| s.load(Relaxed)) else {
            return SlabFrame::NotSlab;
        };
        // Block heads have a mobility in bits 0..2 (`Owner::encode`); every other state
        // byte has them clear. Bits 6..8 of a head are its usage.
        if b & 0b11 != 0 {
            return if b >> 6 == PageUse::Slab as u8 {
                SlabFrame::Head
            } else {
                SlabFrame::NotSlab
            };
        }
        match b {
            SLAB_TAIL => SlabFrame::Tail,
            _ => SlabFrame::NotSlab,
        }
    }

    /// The owner of the block whose head is `pfn`.
    #[inline]
    pub(crate) fn get(&self, pfn: Pfn) -> Option<Owner> {
        Owner::decode(self.slot(pfn.as_u64())?.load(Relaxed))
    }

    /// Frames held for `usage`, per mobility (unmovable, movable, reclaimable). Pages of
    /// `Mm::alloc_pages` (and contiguous runs) are counted by a scan of the table, which
    /// keeps two shared atomic read-modify-writes off every page alloc+free pair.
    pub(crate) fn frames(&self, usage: PageUse) -> [u64; 3] {
        if usage == PageUse::Pages {
            return self.scan_pages();
        }
        core::array::from_fn(|i| self.frames[usage as usize][i].load(Relaxed))
    }

    /// Keep the counter of `owner`'s use and mobility, `n` frames more or fewer; pages of
    /// [`PageUse::Pages`] are not counted here (see [`frames`](Self::frames)).
    #[inline]
    fn count(&self, owner: &Owner, n: u64, add: bool) {
        if owner.usage == PageUse::Pages {
            return;
        }
        if let Some(c) = self.frames[owner.usage as usize].get(owner.mobility.index()) {
            if add {
                c.fetch_add(n, Relaxed);
            } else {
                c.fetch_sub(n, Relaxed);
            }
        }
    }

    /// Frames of [`PageUse::Pages`] blocks per mobility, from the table: each head's block,
    /// and each [`CONTIG_TAIL`] frame right after a run's head or another tail of it.
    /// Only sections with bytes of their own are read (holes and deferred memory hold no
    /// pages).
    fn scan_pages(&self) -> [u64; 3] {
        let mut out = [0u64; 3];
        let mut run = None;
        let shift = self.map.shift();
        let own = (0..self.map.map.sections()).filter(|&s| self.map.is_own(s));
        let frames = own.flat_map(|s| {
            let start = self.map.base + ((s as u64) << shift);
            start..start + (1u64 << shift)
        });
        for pfn in frames {
            let Some(slot) = self.slot(pfn) else {
                run = None;
                continue;
            };
            let b = slot.load(Relaxed);
            match Owner::decode(b) {
                Some(o) if o.usage == PageUse::Pages => {
                    let i = o.mobility.index().min(2);
                    out[i] += o.order.pages();
                    run = Some(i);
                }
                None if b == CONTIG_TAIL => {
                    if let Some(i) = run {
                        out[i] += 1;
                    }
                }
                _ => run = None,
            }
        }
        out
    }

    /// Frames held for `usage`.
    pub(crate) fn frames_by_use(&self, usage: PageUse) -> u64 {
        self.frames(usage).iter().sum()
    }

    /// Walk the covered span pageblock by pageblock (`2^pageblock_order` frames), calling `f`
    /// with each pageblock's counts. A snapshot without locks: exact when nothing runs
    /// concurrently.
    pub(crate) fn census(&self, pageblock_order: u32, mut f: impl FnMut(&PageblockCensus)) {
        let pb = 1u64 << pageblock_order;
        let start = self.map.base & !(pb - 1);
        let end = self.map.base + ((self.map.map.sections() as u64) << self.map.shift());
        let mut cur = PageblockCensus {
            pfn: start,
            ..Default::default()
        };
        // Frames left of the block being walked, and its mobility.
        let mut left = 0u64;
        let mut mob = 0usize;
        let mut pfn = start;
        let sec_mask = (1u64 << self.map.shift()) - 1;
        while pfn < end {
            if pfn - cur.pfn == pb {
                f(&cur);
                cur = PageblockCensus {
                    pfn,
                    ..Default::default()
                };
            }
            // A section without memory: its pageblocks are holes, without reading a byte.
            if left == 0
                && pfn == cur.pfn
                && (pfn - self.map.base) & sec_mask == 0
                && self
                    .map
                    .section(pfn)
                    .is_some_and(|s| self.map.map.entry(s) == 0)
            {
                let sec_end = (pfn + sec_mask + 1).min(end);
                while cur.pfn + pb <= sec_end {
                    cur.hole = pb as u32;
                    f(&cur);
                    cur = PageblockCensus {
                        pfn: cur.pfn + pb,
                        ..Default::default()
                    };
                }
                pfn = cur.pfn;
                continue;
            }
            if left > 0 {
                cur.by_mobility[mob] += 1;
                left -= 1;
            } else {
                match self.slot(pfn).map_or(HOLE, |s| s.load(Relaxed)) {
                    0 | SLAB_TAIL => cur.free += 1,
                    // Tails follow their run's head, which set `mob`.
                    CONTIG_TAIL => cur.by_mobility[mob] += 1,
                    HOLE => cur.hole += 1,
                    RESERVED => cur.reserved += 1,
                    b => match Owner::decode(b) {
                        Some(o) => {
                            mob = o.mobility.index().min(2);
                            cur.by_mobility[mob] += 1;
                            left = o.order.pages() - 1;
                        }
                        None => cur.reserved += 1,
                    },
                }
            }
            pfn += 1;
        }
        if pfn > cur.pfn {
            cur.hole += (pb - (pfn - cur.pfn)) as u32;
            f(&cur);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    use core::mem::MaybeUninit;
    use core::sync::atomic::AtomicU32;
    use mmkit_addr::PhysAddr;

    fn leaked<T>(n: usize) -> &'static mut [MaybeUninit<T>] {
        Vec::leak((0..n).map(|_| MaybeUninit::uninit()).collect())
    }

    /// An owner table over the `n` frames from `base` (all memory, sections of 4 frames),
    /// every section initialised and every byte 0.
    fn table(base: u64, n: u64) -> &'static OwnerMap<'static> {
        let mem: &'static [PhysRange] = Vec::leak(std::vec![PhysRange::from_start_size(
            PhysAddr::new(base * 4096),
            n * 4096
        )
        .unwrap()]);
        let sections = n.div_ceil(4) as usize;
        let map = OwnerMap::new(
            base,
            leaked::<AtomicU32>(sections),
            leaked::<AtomicU8>(OwnerMap::storage_len(mem, 2)),
            2,
            mem,
            &[],
        );
        let map: &'static OwnerMap<'static> = std::boxed::Box::leak(std::boxed::Box::new(map));
        map.init_sections(base, base + n);
        map.mark(base, base + n, 0);
        map
    }

    fn byte(owners: &PageOwners<'_>, pfn: u64) -> u8 {
        owners.slot(pfn).unwrap().load(Relaxed)
    }

    #[test]
    fn holes_and_deferred_sections_share_blocks_and_are_never_written() {
        // Frames 0..8 and 32..40 are memory (sections of 4 frames); 8..32 is a hole.
        let r =
            |s: u64, n: u64| PhysRange::from_start_size(PhysAddr::new(s * 4096), n * 4096).unwrap();
        let mem: &'static [PhysRange] = Vec::leak(std::vec![r(0, 8), r(32, 8)]);
        let meta: &'static [PhysRange] = Vec::leak(std::vec![r(36, 1)]);
        assert_eq!(OwnerMap::storage_len(mem, 2), 4 * 4 + 2 * 4);
        let map = OwnerMap::new(
            0,
            leaked::<AtomicU32>(10),
            leaked::<AtomicU8>(OwnerMap::storage_len(mem, 2)),
            2,
            mem,
            meta,
        );
        let map: &'static OwnerMap<'static> = std::boxed::Box::leak(std::boxed::Box::new(map));
        // The first bank now, the second deferred.
        map.init_sections(0, 32);
        map.defer_sections(32, 40);
        let owners = PageOwners::new(map);
        assert_eq!(
            map.map.written(),
            4 * 4,
            "two shared blocks and the first bank's two sections"
        );
        assert_eq!(byte(&owners, 3), RESERVED);
        assert_eq!(byte(&owners, 20), HOLE);
        assert_eq!(
            byte(&owners, 36),
            RESERVED,
            "deferred: the shared reserved block"
        );
        assert!(
            owners.is_metadata(36),
            "known from the log before its section is"
        );
        assert_eq!(owners.release_reserved(36, 37), Err((36, Some(METADATA))));
        // Writes to shared blocks are dropped; a release of deferred frames only checks.
        owners.mark_range(0, 40, 0);
        assert_eq!(
            (byte(&owners, 3), byte(&owners, 20), byte(&owners, 33)),
            (0, HOLE, RESERVED)
        );
        assert_eq!(owners.release_reserved(32, 36), Ok(()));
        assert_eq!(byte(&owners, 32), RESERVED);
        // Growth reaches the second bank: bytes of its own, then the freed frames clear.
        map.initialising(Pfn::new(32), Pfn::new(40));
        map.freeing(Pfn::new(32), Pfn::new(36));
        assert_eq!(byte(&owners, 33), 0);
        assert_eq!(byte(&owners, 36), METADATA);
        assert_eq!(byte(&owners, 37), RESERVED);
        assert_eq!(byte(&owners, 20), HOLE);
        assert_eq!(map.map.written(), 6 * 4);
        let mut holes = 0;
        owners.census(2, |c| holes += c.hole);
        assert_eq!(holes, 24);
    }

    #[test]
    fn owner_byte_round_trips_every_field() {
        for usage in PageUse::ALL {
            for mob in [
                MigrateType::Unmovable,
                MigrateType::Movable,
                MigrateType::Reclaimable,
            ] {
                for order in 0..=15 {
                    let o = Owner {
                        order: Order::new(order),
                        mobility: mob,
                        usage,
                    };
                    let b = o.encode();
                    assert!(b != HOLE && b != RESERVED && b != 0);
                    assert_eq!(Owner::decode(b), Some(o));
                }
            }
        }
    }

    #[test]
    fn take_clears_once_and_keeps_counters_balanced() {
        let owners = PageOwners::new(table(100, 16));
        let o = Owner {
            order: Order::new(2),
            mobility: MigrateType::Movable,
            usage: PageUse::Pages,
        };
        owners.record(Pfn::new(104), o);
        assert_eq!(owners.frames_by_use(PageUse::Pages), 4);
        assert_eq!(owners.frames(PageUse::Pages), [0, 4, 0]);
        assert_eq!(owners.take(Pfn::new(104)), Some(o));
        assert_eq!(
            owners.take(Pfn::new(104)),
            None,
            "second take finds nothing"
        );
        assert_eq!(owners.frames_by_use(PageUse::Pages), 0);
        assert_eq!(owners.take(Pfn::new(5)), None, "outside the table");
    }

    #[test]
    fn a_contiguous_run_knows_its_length_and_counts_every_frame() {
        let owners = PageOwners::new(table(0, 16));
        let o = Owner {
            order: Order::ZERO,
            mobility: MigrateType::Movable,
            usage: PageUse::Pages,
        };
        owners.record_run(Pfn::new(3), 6, o);
        owners.record(Pfn::new(9), o);
        assert_eq!(owners.run_len(Pfn::new(3)), Some(6));
        assert_eq!(owners.run_len(Pfn::new(9)), None, "a lone order-0 block");
        assert_eq!(owners.run_len(Pfn::new(4)), None, "a tail is not a head");
        assert_eq!(owners.frames(PageUse::Pages), [0, 7, 0]);
        let mut seen = Vec::new();
        owners.census(2, |c| seen.push(*c));
        let movable: u32 = seen.iter().map(|c| c.by_mobility[1]).sum();
        assert_eq!(movable, 7);
        assert_eq!(owners.take_run(Pfn::new(3), 6), Some(o));
        assert_eq!(owners.take_run(Pfn::new(3), 6), None, "taken once");
        assert!((3..9).all(|p| byte(&owners, p) == 0));
        assert_eq!(owners.frames(PageUse::Pages), [0, 1, 0]);
    }

    #[test]
    fn mark_range_writes_only_the_frames_the_table_covers() {
        // 8 frames from pfn 100.
        let owners = PageOwners::new(table(100, 8));
        owners.mark_range(0, 102, HOLE); // starts before the table
        owners.mark_range(106, u64::MAX, RESERVED); // ends past it
        owners.mark_range(200, 300, METADATA); // wholly past it
        owners.mark_range(50, 60, METADATA); // wholly before it
        owners.mark_range(104, 103, METADATA); // empty
        let got: Vec<u8> = (100..108).map(|p| byte(&owners, p)).collect();
        assert_eq!(got, [HOLE, HOLE, 0, 0, 0, 0, RESERVED, RESERVED]);
    }

    #[test]
    fn census_counts_blocks_across_pageblocks() {
        // 16 frames from pfn 0, pageblocks of 4 frames.
        let owners = PageOwners::new(table(0, 16));
        owners.mark_range(0, 2, HOLE);
        owners.mark_range(2, 3, RESERVED);
        assert_eq!(owners.slab_frame(Pfn::new(9)), SlabFrame::NotSlab);
        // An order-3 unmovable block over pageblocks 2 and 3 (frames 8..16)...
        owners.record(
            Pfn::new(8),
            Owner {
                order: Order::new(3),
                mobility: MigrateType::Unmovable,
                usage: PageUse::Slab,
            },
        );
        // ...and one reclaimable frame in pageblock 1.
        owners.record(
            Pfn::new(5),
            Owner {
                order: Order::ZERO,
                mobility: MigrateType::Reclaimable,
                usage: PageUse::Slab,
            },
        );
        assert_eq!(owners.slab_frame(Pfn::new(8)), SlabFrame::Head);
        assert_eq!(owners.slab_frame(Pfn::new(15)), SlabFrame::Tail);
        assert_eq!(owners.slab_frame(Pfn::new(7)), SlabFrame::NotSlab);
        let mut seen = Vec::new();
        owners.census(2, |c| seen.push(*c));
        assert_eq!(seen.len(), 4);
        assert_eq!((seen[0].hole, seen[0].reserved, seen[0].free), (2, 1, 1));
        assert_eq!((seen[1].free, seen[1].by_mobility), (3, [0, 0, 1]));
        assert_eq!(seen[2].by_mobility, [4, 0, 0]);
        assert_eq!(seen[3].by_mobility, [4, 0, 0]);
        assert_eq!(seen[3].pfn, 12);
    }
}
