//! [`PageTable`]: one translation-table tree of some [`PagingFormat`], and the parts every
//! operation shares: range checks, the frame reserve, translation, freeing, verification.
//!
//! # Invariants (checked by [`PageTable::verify`])
//! * Every table reachable from the root was allocated from the frame source, is reached
//!   exactly once, and [`PageTable::table_frames`] counts them (root included) plus nothing
//!   else: tables waiting in a [`Flush`] are no longer owned by the tree.
//! * Every non-root table has at least one valid entry: unmap unhooks a table the moment its
//!   last entry goes. The count of valid entries of each child table is stored in its parent
//!   entry (bits the hardware ignores), the root's in the `PageTable`; all counts are exact.
//! * Absent entries are 0; leaves are aligned to their size, within the physical width, and
//!   their attributes are in normalized form; contiguous-hint runs are whole and uniform.
//!
//! # How operations keep "bad input leaves state unchanged"
//! Each range operation runs in two passes over the range, each descending the tree once per
//! range (not once per page): a *plan* pass that only reads, finds every error and counts the
//! table frames the change needs; then the frames are reserved from the source (all or none);
//! then an *apply* pass that cannot fail. So an error — including running out of frames —
//! leaves the tree, the TLBs and the frame source as they were.

use core::sync::atomic::{AtomicU64, Ordering};

use mmkit_addr::{PageSize, PhysAddr, PhysMapper, VirtAddr};

use crate::attrs::Attrs;
use crate::error::{FreeTablesError, MergeFlushError, Misaligned, NewError, VerifyError};
use crate::flush::{Asid, Flush, FreedTables, TlbInvalidate};
use crate::format::{EntryKind, PagingFormat};
use crate::frame::FrameSource;
use crate::raw;

/// How map chooses page sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapSize {
    /// The largest page or block sizes that the alignment of each piece allows (and that fit
    /// between existing tables).
    Largest,
    /// Exactly this size for every page; the range must be aligned to it.
    Exactly(PageSize),
}

/// One leaf mapping, as found by translate, walk or a cursor.
///
/// It keeps the leaf entry as the hardware reads it and decodes the normalized attributes
/// only when [`attrs`](Self::attrs) is asked (the `x86_64` crate likewise hands back raw
/// flags): a translate that wants the address and size pays nothing for them.
#[derive(Clone, Copy)]
pub struct Translation {
    /// First virtual address of the page or block.
    pub page_va: VirtAddr,
    /// First physical address of the page or block.
    pub page_pa: PhysAddr,
    /// Its size.
    pub size: PageSize,
    /// The level (from the root, 0-based) holding the leaf.
    pub level: usize,
    /// Whether the entry carries the contiguous hint (aarch64).
    pub contiguous: bool,
    /// The leaf entry itself.
    pub raw: u64,
    /// The format's [`attrs_key`](PagingFormat::attrs_key), and its decoder.
    attrs_key: u32,
    decode: fn(u32, usize, u64) -> Attrs,
}

impl Translation {
    /// The mapping a leaf entry `raw` at `level` of a `fmt` table makes, its first virtual
    /// address `page_va`.
    #[inline(always)]
    pub(crate) fn new<F: PagingFormat>(
        fmt: &F,
        level: usize,
        page_va: VirtAddr,
        size: PageSize,
        raw: u64,
    ) -> Self {
        Self {
            page_va,
            page_pa: fmt.leaf_addr(level, raw),
            size,
            level,
            contiguous: fmt.is_contiguous(raw),
            raw,
            attrs_key: fmt.attrs_key(),
            decode: F::decode_leaf_attrs,
        }
    }

    /// Its attributes (normalized), decoded from [`raw`](Self::raw).
    #[inline]
    pub fn attrs(&self) -> Attrs {
        (self.decode)(self.attrs_key, self.level, self.raw)
    }

    /// The physical address `va` (inside this mapping) translates to.
    #[inline]
    pub fn pa_of(&self, va: VirtAddr) -> PhysAddr {
        PhysAddr::new(self.page_pa.as_u64() + (va.as_u64() - self.page_va.as_u64()))
    }
}

impl PartialEq for Translation {
    /// The same mapping: addresses, size, level, hint and decoded attributes (two formats
    /// that encode the same attributes differently compare equal).
    fn eq(&self, o: &Self) -> bool {
        (
            self.page_va,
            self.page_pa,
            self.size,
            self.level,
            self.contiguous,
        ) == (o.page_va, o.page_pa, o.size, o.level, o.contiguous)
            && self.attrs() == o.attrs()
    }
}

impl Eq for Translation {}

impl core::fmt::Debug for Translation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Translation")
            .field("page_va", &self.page_va)
            .field("page_pa", &self.page_pa)
            .field("size", &self.size)
            .field("attrs", &self.attrs())
            .field("level", &self.level)
            .field("contiguous", &self.contiguous)
            .field("raw", &format_args!("{:#x}", self.raw))
            .finish()
    }
}

/// What [`PageTable::verify`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Tables reached, root included.
    pub tables: usize,
    /// Leaf entries.
    pub leaves: usize,
    /// Bytes mapped.
    pub mapped_bytes: u128,
}

/// A translation-table tree of format `F`, reading tables through `M` and getting table
/// frames from `S`.
pub struct PageTable<F: PagingFormat, M: PhysMapper, S: FrameSource> {
    pub(crate) fmt: F,
    pub(crate) mapper: M,
    pub(crate) frames: S,
    pub(crate) root: PhysAddr,
    pub(crate) root_count: u32,
    pub(crate) owned: usize,
    pub(crate) live: bool,
    /// The mapper's linear window for table frames, taken once in `new` (see `raw::Window`).
    window: Option<raw::Window>,
    /// This table's identity, stamped on the [`FreedTables`] it hands out.
    id: u64,
    /// The address space the table is loaded under, stamped on its flush tokens.
    asid: Option<Asid>,
    /// Whether a global leaf was ever written (then tokens invalidate in every address
    /// space, since no TLB tags global translations with an ASID).
    pub(crate) may_global: bool,
    /// Whether a copy ever shared a leaf table into or out of this tree (`crate::share`):
    /// never cleared; it only enables the un-sharing pre-pass of the writing operations. A
    /// plain `bool` (the source of a copy is borrowed mutably): interior mutability here
    /// would make `&PageTable` non-`Freeze`, and the optimiser would then reload the table's
    /// fields on every step of a loop of translates.
    pub(crate) may_share: bool,
}

/// The next table id (0 is never handed out). A 64-bit counter does not wrap in practice.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// Split borrow of a table's read-only parts, so frames can be allocated while tables are
/// borrowed.
pub(crate) struct Ctx<'a, F, M> {
    pub(crate) fmt: &'a F,
    pub(crate) tables: raw::Tables<'a, M>,
    /// The id of the table, stamped on freed lists.
    id: u64,
}

impl<'a, F: PagingFormat, M: PhysMapper> Ctx<'a, F, M> {
    /// # Safety
    /// `window` is `None` or `raw::Window::of(mapper, fmt.granule().bytes())` for this mapper.
    #[inline(always)]
    pub(crate) unsafe fn new(
        fmt: &'a F,
        mapper: &'a M,
        window: Option<raw::Window>,
        id: u64,
    ) -> Self {
        Self {
            fmt,
            // SAFETY: forwarded from this function's contract.
            tables: unsafe { raw::Tables::new(mapper, fmt.granule().bytes(), window) },
            id,
        }
    }

    /// The entries of a table of this tree. Tables enter the tree only after
    /// `alloc_checked` proved the mapper reaches them, so failure is a broken `PhysMapper`.
    #[inline(always)]
    pub(crate) fn table(&self, pa: PhysAddr) -> &'a [AtomicU64] {
        self.tables.get_or(pa, |pa| table_unreachable(pa))
    }

    #[inline]
    pub(crate) fn last_level(&self) -> usize {
        self.fmt.depth() - 1
    }

    /// Push a detached table on a freed list; `zeroed`: every entry of it is 0 (a table
    /// unhooked because its last entry went), so it can go back to the frame source as a
    /// zeroed frame once the link is cleared.
    pub(crate) fn push_freed(&self, list: &mut FreedTables, pa: PhysAddr, zeroed: bool) {
        debug_assert!(list.belongs_to(self.id), "mixing two tables' freed lists");
        list.owner = self.id;
        raw::init_link(self.table(pa), zeroed);
        match list.tail {
            Some(tail) => raw::set_link(self.table(tail), Some(pa)),
            None => list.head = Some(pa),
        }
        list.tail = Some(pa);
        list.count += 1;
    }

    /// Push a ticket (a reserved frame whose entry 1 names a shared table) on a freed list.
    pub(crate) fn push_ticket(&self, list: &mut FreedTables, pa: PhysAddr) {
        debug_assert!(list.belongs_to(self.id), "mixing two tables' freed lists");
        list.owner = self.id;
        raw::init_ticket_link(self.table(pa));
        match list.tail {
            Some(tail) => raw::set_link(self.table(tail), Some(pa)),
            None => list.head = Some(pa),
        }
        list.tail = Some(pa);
        list.count += 1;
    }

    /// Detach-free a whole subtree rooted at table `pa` of `level`: push every table of it on
    /// `flush`'s freed list (children first; entries are left as they are, the frames are
    /// unreachable once the parent entry is cleared) and widen the flush stride to the
    /// smallest leaf inside.
    pub(crate) fn retire_subtree(&self, pa: PhysAddr, level: usize, flush: &mut Flush) {
        let lv = self.fmt.levels()[level];
        if level == self.last_level() {
            flush.tables = true;
            flush.stride = Some(
                self.fmt
                    .granule()
                    .min(flush.stride.unwrap_or(PageSize::Size1G)),
            );
        } else {
            let t = self.table(pa);
            for i in 0..lv.entries() {
                let rawv = raw::load(t, i);
                match self.fmt.kind(level, rawv) {
                    EntryKind::Table => {
                        self.retire_subtree(self.fmt.table_addr(rawv), level + 1, flush)
                    }
                    EntryKind::Leaf => {
                        if let Some(sz) = lv.leaf {
                            flush.stride = Some(sz.min(flush.stride.unwrap_or(sz)));
                        }
                    }
                    _ => {}
                }
            }
            flush.tables = true;
        }
        self.push_freed(&mut flush.freed, pa, false);
    }
}

/// A table of the tree no longer reachable through the mapper: a broken `PhysMapper` (kept
/// out of line so walks carry no formatting code).
#[cold]
#[inline(never)]
fn table_unreachable(pa: PhysAddr) -> ! {
    panic!("table frame {pa:?} became unreachable through the PhysMapper")
}

/// Table frames reserved for one operation, linked through entry 0 (invalid encoding).
pub(crate) struct Reserve {
    head: Option<PhysAddr>,
    pub(crate) count: usize,
}

impl Reserve {
    pub(crate) const fn empty() -> Self {
        Self {
            head: None,
            count: 0,
        }
    }

    /// Take one zeroed frame. The plan pass counted exactly what apply takes, so running dry
    /// is a bug in this crate.
    pub(crate) fn take<F: PagingFormat, M: PhysMapper>(&mut self, ctx: &Ctx<'_, F, M>) -> PhysAddr {
        let pa = match self.head {
            Some(pa) => pa,
            None => panic!("page-table frame reserve ran dry: plan and apply disagree"),
        };
        let t = ctx.table(pa);
        self.head = raw::link(t);
        raw::store(t, 0, 0);
        self.count -= 1;
        pa
    }
}

impl Reserve {
    /// Put back an unused (zeroed) frame taken by [`Reserve::take`].
    pub(crate) fn give_back<F: PagingFormat, M: PhysMapper>(
        &mut self,
        ctx: &Ctx<'_, F, M>,
        pa: PhysAddr,
    ) {
        let t = ctx.table(pa);
        raw::init_link(t, true);
        raw::set_link(t, self.head);
        self.head = Some(pa);
        self.count += 1;
    }
}

/// Why frames could not be reserved.
pub(crate) enum ReserveError {
    OutOfFrames,
    Unreachable(PhysAddr),
}

/// Allocate one table frame and prove the mapper reaches it.
fn alloc_checked<M: PhysMapper, S: FrameSource>(
    mapper: &M,
    frames: &mut S,
    gran: PageSize,
) -> Result<PhysAddr, ReserveError> {
    let pa = frames.alloc_table(gran).ok_or(ReserveError::OutOfFrames)?;
    if raw::table_at(mapper, pa, gran.bytes()).is_none() {
        // SAFETY: `pa` was just allocated from `frames` with this size and never used.
        unsafe { frames.free_table(pa, gran) };
        return Err(ReserveError::Unreachable(pa));
    }
    Ok(pa)
}

/// Checked arguments of a range operation: `first..=last`.
pub(crate) struct Span {
    pub(crate) first: u64,
    pub(crate) last: u64,
}

pub(crate) enum SpanError {
    Unaligned(Misaligned),
    NonCanonical(VirtAddr),
}

impl<F: PagingFormat, M: PhysMapper, S: FrameSource> PageTable<F, M, S> {
    /// A new, empty table: allocates the root from `frames`.
    pub fn new(fmt: F, mapper: M, mut frames: S) -> Result<Self, NewError> {
        let gran = fmt.granule();
        let root = match alloc_checked(&mapper, &mut frames, gran) {
            Ok(pa) => pa,
            Err(ReserveError::OutOfFrames) => return Err(NewError::OutOfFrames),
            Err(ReserveError::Unreachable(pa)) => return Err(NewError::FrameUnreachable(pa)),
        };
        // Pointers the window promises stay valid while the mapper lives, moves included (the
        // `PhysMapper` contract), so it can be taken before the mapper moves into the table.
        let window = raw::Window::of(&mapper, gran.bytes());
        Ok(Self {
            fmt,
            mapper,
            frames,
            root,
            root_count: 0,
            owned: 1,
            live: false,
            window,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            asid: None,
            may_global: false,
            may_share: false,
        })
    }

    /// The address-space identifier the table is loaded under (x86 PCID, aarch64 ASID), if
    /// any.
    pub fn asid(&self) -> Option<Asid> {
        self.asid
    }

    /// Set the address space the table is loaded under: its flush tokens then invalidate
    /// in that address space only, unless the table may hold global leaves (a global leaf
    /// was ever mapped in it), whose translations no TLB tags with an ASID. Load the table
    /// with the same identifier (CR3 bits 0..12 with CR4.PCIDE, TTBRn_EL1 bits 48..64) and
    /// invalidate through a [`TlbInvalidate`] that implements the ASID methods.
    pub fn set_asid(&mut self, asid: Option<Asid>) {
        self.asid = asid;
    }

    /// Tag a token this table made with its address space.
    #[inline]
    pub(crate) fn tag(&self, f: Flush) -> Flush {
        f.tagged(self.asid, self.may_global)
    }

    /// The root table's physical address (what CR3 / TTBRn_EL1 point to).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// The frame source.
    pub fn frames(&self) -> &S {
        &self.frames
    }

    /// Number of table frames in the tree (root included).
    pub fn table_frames(&self) -> usize {
        self.owned
    }

    /// Whether the table is marked as loaded in an MMU (enables break-before-make checks).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Mark the table as loaded (or no longer loaded) in some MMU. While live, changes that a
    /// format says need break-before-make are refused (see [`split_live`](Self::split_live)).
    pub fn set_live(&mut self, live: bool) {
        self.live = live;
    }

    #[inline(always)]
    pub(crate) fn ctx(&self) -> Ctx<'_, F, M> {
        // SAFETY: `window` was taken from `mapper` for the granule in `new`, and neither field
        // is ever replaced.
        unsafe { Ctx::new(&self.fmt, &self.mapper, self.window, self.id) }
    }

    /// Check `va`/`len` (granule-aligned, canonical, no wrap). `None` for an empty range.
    pub(crate) fn check_span(
        &self,
        va: VirtAddr,
        len: u64,
        align: u64,
    ) -> Result<Option<Span>, SpanError> {
        if !va.is_aligned(align) {
            return Err(SpanError::Unaligned(Misaligned::Virt(va)));
        }
        if len % align != 0 {
            return Err(SpanError::Unaligned(Misaligned::Len(len)));
        }
        if len == 0 {
            return Ok(None);
        }
        let last = va
            .as_u64()
            .checked_add(len - 1)
            .ok_or(SpanError::NonCanonical(va))?;
        if !self.fmt.range_is_canonical(va, VirtAddr::new(last)) {
            return Err(SpanError::NonCanonical(va));
        }
        Ok(Some(Span {
            first: va.as_u64(),
            last,
        }))
    }

    /// Reserve `n` table frames, all or none.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<Reserve, ReserveError> {
        let gran = self.fmt.granule();
        let mut r = Reserve::empty();
        while r.count < n {
            match alloc_checked(&self.mapper, &mut self.frames, gran) {
                Ok(pa) => {
                    let t = raw::table_at(&self.mapper, pa, gran.bytes())
                        .unwrap_or_else(|| unreachable!("checked by alloc_checked"));
                    raw::init_link(t, true);
                    raw::set_link(t, r.head);
                    r.head = Some(pa);
                    r.count += 1;
                }
                Err(e) => {
                    self.unreserve(r);
                    return Err(e);
                }
            }
        }
        self.owned += n;
        Ok(r)
    }

    /// Give back frames a reserve did not use.
    pub(crate) fn unreserve(&mut self, mut r: Reserve) {
        let gran = self.fmt.granule();
        while r.count > 0 {
            let pa = r.take(&self.ctx());
            // SAFETY: reserved frames were allocated from `frames` and never linked into the
            // tree, so nothing references them; they came zeroed (or were given back zeroed,
            // `Reserve::give_back`) and `take` cleared the link, so they are all zeroes.
            unsafe { self.frames.free_zeroed_table(pa, gran) };
        }
    }

    /// Account for frames of a reserve that were consumed (`owned` was raised by `reserve`).
    pub(crate) fn finish_reserve(&mut self, r: Reserve) {
        self.owned -= r.count;
        self.unreserve(r);
    }

    /// Find the leaf entry mapping `va` and hand it, with its level, to `found`: the one walk
    /// that [`translate`](Self::translate), [`translate_addr`](Self::translate_addr) and
    /// [`raw_leaf`](Self::raw_leaf) share.
    ///
    /// Per level it is one table lookup (through the linear window: a compare and an add), one
    /// entry load at [`PagingFormat::index_of`] and one [`PagingFormat::kind`]. With a window,
    /// the common depths (4 and 5) get their own copy of the loop with the depth a constant,
    /// so it unrolls: a format with arithmetic geometry (x86_64) turns the index, the leaf
    /// check and the table bounds check into immediate shifts and masks, with no loads from the
    /// level table and no loop counter, and `found` is inlined at each level with the level a
    /// constant, so decoding the leaf (its size, address mask, attribute bits) is specialised
    /// too. Other depths, and mappers without a window, share one general loop.
    #[inline(always)]
    fn find_leaf<R>(&self, va: VirtAddr, found: impl Fn(usize, u64) -> R) -> Option<R> {
        let ctx = self.ctx();
        match ctx.tables.windowed() {
            Some(w) => {
                let table = |pa| w.get_or(pa, |pa| table_unreachable(pa));
                match self.fmt.depth() {
                    4 => self.find_leaf_via(va, 4, table, found),
                    5 => self.find_leaf_via(va, 5, table, found),
                    depth => self.find_leaf_via(va, depth, table, found),
                }
            }
            None => self.find_leaf_via(va, self.fmt.depth(), |pa| ctx.table(pa), found),
        }
    }

    /// The walk of [`find_leaf`](Self::find_leaf), reading tables through `table`; `depth ==
    /// self.fmt.depth()`, passed in so that a call with a literal depth is specialised (the
    /// canonical check too, where the format derives its VA width from its depth).
    #[inline(always)]
    fn find_leaf_via<'a, R>(
        &self,
        va: VirtAddr,
        depth: usize,
        table: impl Fn(PhysAddr) -> &'a [AtomicU64],
        found: impl Fn(usize, u64) -> R,
    ) -> Option<R> {
        if !self.fmt.is_canonical_at_depth(va, depth) {
            return None;
        }
        let va = va.as_u64();
        let mut t = table(self.root);
        let mut level = 0;
        while level < depth {
            let raw = raw::load(t, self.fmt.index_of(level, va));
            match self.fmt.kind(level, raw) {
                EntryKind::Table => t = table(self.fmt.table_addr(raw)),
                EntryKind::Leaf => return Some(found(level, raw)),
                EntryKind::Absent | EntryKind::Malformed => return None,
            }
            level += 1;
        }
        None
    }

    /// The leaf mapping `va`, if any.
    #[inline]
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        self.find_leaf(
            va,
            #[inline(always)]
            |level, raw| {
                Some(Translation::new(
                    &self.fmt,
                    level,
                    VirtAddr::new(va.as_u64() & !self.fmt.leaf_span_mask(level)),
                    self.fmt.leaf_size(level)?,
                    raw,
                ))
            },
        )
        .flatten()
    }

    /// The raw leaf entry mapping `va` and its level, if any (for diagnostics and
    /// cross-checks against other implementations).
    pub fn raw_leaf(&self, va: VirtAddr) -> Option<(usize, u64)> {
        self.find_leaf(va, |level, raw| (level, raw))
    }

    /// The physical address `va` translates to, if mapped: [`translate`](Self::translate)
    /// without decoding the attributes.
    #[inline]
    pub fn translate_addr(&self, va: VirtAddr) -> Option<PhysAddr> {
        self.find_leaf(
            va,
            #[inline(always)]
            |level, raw| {
                let off = va.as_u64() & self.fmt.leaf_span_mask(level);
                PhysAddr::new(self.fmt.leaf_addr(level, raw).as_u64() | off)
            },
        )
    }

    /// Merge two tokens from this table into one (for batching a shootdown). Tokens whose
    /// freed tables came from another table are refused, both handed back untouched; tokens
    /// without freed tables merge with any (only their spans join).
    // The error hands both tokens back (a dropped token would leak its tables and skip its
    // invalidation), and without `alloc` there is no box to shrink it into.
    #[allow(clippy::result_large_err)]
    pub fn merge_flush(&self, mut a: Flush, b: Flush) -> Result<Flush, MergeFlushError> {
        if !a.freed.belongs_to(self.id) || !b.freed.belongs_to(self.id) {
            return Err(MergeFlushError::ForeignTables(a, b));
        }
        a.merge_span(&b);
        let mut b = b;
        if let Some(bh) = b.freed.head {
            match a.freed.tail {
                Some(at) => raw::set_link(self.ctx().table(at), Some(bh)),
                None => a.freed.head = Some(bh),
            }
            a.freed.tail = b.freed.tail;
            a.freed.count += b.freed.count;
            a.freed.owner = self.id;
        }
        b.freed = FreedTables::none();
        // SAFETY: `b` now carries no frames; its span was merged into `a`.
        let _ = unsafe { b.assume_invalidated() };
        Ok(a)
    }

    /// Free tables handed back by an invalidated [`Flush`] of this table. A list another
    /// table produced is refused and handed back in the error, with nothing freed (its
    /// frames belong to that table's frame source, and may not even be reachable through
    /// this table's mapper). An empty list is accepted from anywhere.
    pub fn free_tables(&mut self, freed: FreedTables) -> Result<(), FreeTablesError> {
        if !freed.belongs_to(self.id) {
            return Err(FreeTablesError::ForeignList(freed));
        }
        let gran = self.fmt.granule();
        let mut next = freed.head;
        while let Some(pa) = next {
            let t = self.ctx().table(pa);
            next = raw::link(t);
            if raw::is_ticket(t) {
                // A ticket of `crate::share`: drop this tree's reference to the shared table
                // it names (freeing the table if it was the last), then free the ticket.
                let shared = PhysAddr::new(raw::load(t, 1));
                raw::store(t, 0, 0);
                raw::store(t, 1, 0);
                let last = self.frames.table_refs().is_some_and(|r| r.put(shared));
                // SAFETY: the ticket was reserved from `frames` and is all zeroes now; the
                // shared table left this tree before the flush that carried the ticket was
                // invalidated, and with `last` no other tree holds it (its source shares
                // this one's pool, the `TableRefs` contract).
                unsafe {
                    self.frames.free_zeroed_table(pa, gran);
                    if last {
                        self.frames.free_table(shared, gran);
                    }
                }
                continue;
            }
            let zeroed = raw::is_marked_zeroed(t);
            // SAFETY: the list holds tables unhooked from this tree (its owner id is this
            // table's) by an operation whose flush was invalidated (`Flush::invalidate` is the
            // only safe way to get the list), so nothing references them; each was allocated
            // from `frames` with this size. A table marked zeroed had every entry but the
            // link at 0 (`push_freed`), and the link is cleared first.
            unsafe {
                if zeroed {
                    raw::store(t, 0, 0);
                    self.frames.free_zeroed_table(pa, gran);
                } else {
                    self.frames.free_table(pa, gran);
                }
            }
        }
        Ok(())
    }

    /// Tear the tree down: invalidate everything through `tlb` and free every table, root
    /// included, returning the frame source. The table must not be loaded in any MMU.
    pub fn destroy<T: TlbInvalidate + ?Sized>(mut self, tlb: &mut T) -> S {
        if self.may_share && self.frames.table_refs().is_some() {
            // Leaf tables may be shared with other trees: invalidate first, then free every
            // table directly, dropping one reference of each leaf table (freed only by the
            // tree that held the last one), without ever linking through a shared frame.
            tlb.invalidate_all();
            self.free_subtree(self.root, 0);
            return self.frames;
        }
        let mut flush = Flush::nothing();
        let ctx = self.ctx();
        ctx.retire_subtree(self.root, 0, &mut flush);
        let freed = flush.freed;
        tlb.invalidate_all();
        if let Err(FreeTablesError::ForeignList(_)) = self.free_tables(freed) {
            unreachable!("retire_subtree stamps this table's id");
        }
        self.frames
    }

    /// Free table `pa` of `level` and everything below it, children first; leaf tables drop
    /// one share reference and are freed only with the last. For [`destroy`](Self::destroy)
    /// after invalidating everything.
    fn free_subtree(&mut self, pa: PhysAddr, level: usize) {
        let gran = self.fmt.granule();
        let last_level = self.fmt.depth() - 1;
        if level < last_level {
            let n = self.fmt.levels()[level].entries();
            for i in 0..n {
                let raw = raw::load(self.ctx().table(pa), i);
                if self.fmt.kind(level, raw) == EntryKind::Table {
                    self.free_subtree(self.fmt.table_addr(raw), level + 1);
                }
            }
        }
        let free = level < last_level || self.frames.table_refs().is_none_or(|r| r.put(pa));
        if free {
            // SAFETY: the tree is being destroyed and everything was invalidated; the table
            // came from `frames` (or from a source sharing its pool), and no other tree holds
            // it (`put` said this was the last reference, or it was never a leaf table that
            // could be shared).
            unsafe { self.frames.free_table(pa, gran) };
        }
    }

    /// Check every invariant listed in the module docs.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let mut rep = VerifyReport::default();
        self.verify_table(self.root, 0, 0, self.root_count, &mut rep)?;
        if rep.tables != self.owned {
            return Err(VerifyError::TableCount {
                reachable: rep.tables,
                owned: self.owned,
            });
        }
        Ok(rep)
    }

    fn verify_table(
        &self,
        pa: PhysAddr,
        level: usize,
        base: u64,
        recorded: u32,
        rep: &mut VerifyReport,
    ) -> Result<(), VerifyError> {
        let gran = self.fmt.granule().bytes();
        if !pa.is_aligned(gran) || !self.fmt.phys_fits(pa.as_u64()) {
            return Err(VerifyError::BadTableAddress(pa));
        }
        rep.tables += 1;
        let t = self.ctx().table(pa);
        let lv = self.fmt.levels()[level];
        let mut count = 0u32;
        for i in 0..lv.entries() {
            let raw = raw::load(t, i);
            let va = base | ((i as u64) << lv.shift);
            match self.fmt.kind(level, raw) {
                EntryKind::Absent => {
                    if raw != 0 {
                        return Err(VerifyError::DirtyAbsent {
                            va: VirtAddr::new(va),
                            raw,
                        });
                    }
                }
                EntryKind::Malformed => {
                    return Err(VerifyError::Malformed {
                        va: VirtAddr::new(va),
                        level,
                        raw,
                    })
                }
                EntryKind::Table => {
                    count += 1;
                    let child = self.fmt.table_addr(raw);
                    let n = self.fmt.table_count(raw);
                    self.verify_table(child, level + 1, va, n, rep)?;
                }
                EntryKind::Leaf => {
                    count += 1;
                    self.verify_leaf(t, i, level, va, raw)?;
                    rep.leaves += 1;
                    rep.mapped_bytes += u128::from(lv.entry_span());
                }
            }
        }
        if count != recorded {
            return Err(VerifyError::CountMismatch {
                table: pa,
                recorded,
                actual: count,
            });
        }
        if level > 0 && count == 0 {
            return Err(VerifyError::EmptyTable(pa));
        }
        Ok(())
    }

    fn verify_leaf(
        &self,
        t: &[AtomicU64],
        i: usize,
        level: usize,
        va: u64,
        raw: u64,
    ) -> Result<(), VerifyError> {
        let lv = self.fmt.levels()[level];
        let Some(size) = lv.leaf else {
            return Err(VerifyError::Malformed {
                va: VirtAddr::new(va),
                level,
                raw,
            });
        };
        let pa = self.fmt.leaf_addr(level, raw);
        if !pa.is_aligned(size.bytes()) || !self.fmt.phys_fits(pa.as_u64() + size.bytes() - 1) {
            return Err(VerifyError::BadLeafAddress {
                va: VirtAddr::new(va),
                pa,
            });
        }
        let attrs = self.fmt.leaf_attrs(level, raw);
        if self.fmt.normalize(attrs) != Ok(attrs) {
            return Err(VerifyError::NotNormalized {
                va: VirtAddr::new(va),
            });
        }
        let cont = self.fmt.is_contiguous(raw);
        if self
            .fmt
            .set_contiguous(self.fmt.make_leaf(level, pa, attrs), cont)
            != raw
        {
            return Err(VerifyError::Malformed {
                va: VirtAddr::new(va),
                level,
                raw,
            });
        }
        if cont {
            let run = self.fmt.contiguous_run(level).unwrap_or(1);
            let first = i - i % run;
            let first_raw = raw::load(t, first);
            let run_bytes = size.bytes() * run as u64;
            let first_pa = self.fmt.leaf_addr(level, first_raw);
            let ad = Attrs::ACCESSED | Attrs::DIRTY;
            let mut ok = self.fmt.kind(level, first_raw) == EntryKind::Leaf
                && self.fmt.is_contiguous(first_raw)
                && first_pa.is_aligned(run_bytes)
                && self.fmt.leaf_attrs(level, first_raw).difference(ad) == attrs.difference(ad)
                && first_pa.as_u64() + (i - first) as u64 * size.bytes() == pa.as_u64();
            if ok && i == first {
                ok = (first..first + run).all(|j| {
                    let r = raw::load(t, j);
                    self.fmt.kind(level, r) == EntryKind::Leaf && self.fmt.is_contiguous(r)
                });
            }
            if !ok {
                return Err(VerifyError::BadContiguousRun(VirtAddr::new(va)));
            }
        }
        Ok(())
    }
}
