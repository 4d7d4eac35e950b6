//! The only `unsafe` in the crate: turning caller-provided uninitialised storage into
//! initialised values (memmaps, per-CPU lists, the allocator itself, built in place), and
//! zeroing freshly allocated frames through a `PhysMapper`.
//!
//! ## A sparse memmap initialised section by section
//! [`SectionMap`] holds a node's memmap storage (and the facade's page-owner table): a table
//! of one `u32` entry per section of `2^max_order` frames, pointing each section at a block
//! of elements. Blocks are taken from the storage in order, written through the raw pointer
//! while nothing refers to them, and only then made reachable by a release store of the
//! entry that every lookup's acquire load of it pairs with. Every entry points at a written
//! block from construction on (sections without memory, and sections not initialised yet,
//! share one block), so a lookup is one dependent load with no check of how far the map is
//! initialised. Writers are serialised by a lock inside the map, so no two of them ever
//! write the same element.
//!
//! ## Building the allocator in place
//! [`init_allocator_in`] writes every field of a [`BuddyAllocator`] through raw field
//! pointers into the caller's slot, one zone at a time, so no value larger than a zone
//! (about 1 KiB) is ever on the stack. That every field is written is checked at compile
//! time by [`_every_field_is_written`], which destructures both structs without `..`: adding
//! a field breaks the build until the writer is updated.

use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use mmkit_addr::{IrqControl, PhysMapper, PhysRange};
use spin::mutex::SpinMutex;
use spin::RwLock;

use crate::allocator::{BuddyAllocator, Node};
use crate::compaction::CompactState;
use crate::config::BuddyConfig;
use crate::deferred::Deferred;
use crate::mover::{MigrateCounters, MAX_MOVERS};
use crate::page::Memmap;
use crate::zone::{Zone, ZoneType};
use crate::MAX_NUMNODES;

/// Initialise every slot of `s` with `f(index)` and return the slice as initialised.
pub(crate) fn init_slice<T>(s: &mut [MaybeUninit<T>], mut f: impl FnMut(usize) -> T) -> &mut [T] {
    for (i, slot) in s.iter_mut().enumerate() {
        slot.write(f(i));
    }
    let len = s.len();
    let ptr = s.as_mut_ptr().cast::<T>();
    // SAFETY: the loop above wrote every element; `MaybeUninit<T>` has the layout of `T`, so
    // the pointer and length describe `len` initialised `T`s, exclusively borrowed from `s` for
    // the returned lifetime.
    unsafe { core::slice::from_raw_parts_mut(ptr, len) }
}

/// A sparse, lazily initialised per-frame table (Linux SPARSEMEM's section map): frames
/// are grouped in **sections** of `2^shift` frames, and a table of `u32` entries maps each
/// section to the block of element storage that holds its elements. Only sections that are
/// present get a block of their own; the others share blocks written once (a block of
/// hole descriptors, say), so a table over a span with large holes costs 4 bytes per
/// section of hole, not an element per frame. Used for the buddy's memmap and the facade's
/// page-owner table.
///
/// Blocks are taken from the element storage in order ([`alloc_block`](Self::alloc_block)),
/// written through the raw pointer while nothing refers to them, and only then made
/// reachable by storing their offset in a table entry with release ordering
/// ([`publish`](Self::publish)); [`get`](Self::get) loads the entry with acquire ordering.
/// A section is thus initialised (or re-pointed) whole, while other CPUs read the table:
/// the lookup is one dependent load of the entry, and needs no separate check of how far
/// the table is initialised, because every entry points at an initialised block from
/// construction on. Writers are serialised by a lock inside the map.
///
/// Invariant: every entry is the bias (`bias`) of a block offset `off` with `off + 2^shift
/// <= written <= cap`, and the elements `..written` are initialised and never written again
/// except through `&T`.
pub struct SectionMap<'m, T> {
    table: &'m [AtomicU32],
    /// Per block of storage, the section it holds (`u32::MAX`: none, or shared), when the
    /// map keeps the reverse direction (`slot` / `index_of_slot`); empty otherwise.
    rev: &'m [AtomicU32],
    shift: u32,
    mask: usize,
    ptr: NonNull<T>,
    cap: usize,
    /// Elements written so far (the next block starts here); only grows, under `writer`.
    written: AtomicUsize,
    /// Held while a block is written.
    writer: SpinMutex<()>,
    _storage: PhantomData<&'m mut [MaybeUninit<T>]>,
}

impl<T> core::fmt::Debug for SectionMap<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SectionMap")
            .field("sections", &self.table.len())
            .field("shift", &self.shift)
            .field("written", &self.written.load(Ordering::Relaxed))
            .field("cap", &self.cap)
            .finish()
    }
}

// SAFETY: the map owns exclusive borrows for `'m` of its table and of its element storage.
// Shared access reaches elements only through published entries, which point at written
// blocks (`&T`, so `T: Sync` is required); unwritten storage is written only under
// `writer`, never read.
unsafe impl<T: Sync> Sync for SectionMap<'_, T> {}
// SAFETY: as above; the borrows are `Send` for `Send` `T`.
unsafe impl<T: Send + Sync> Send for SectionMap<'_, T> {}

/// The panic of a block allocation past the storage's end.
#[cold]
#[inline(never)]
fn storage_exhausted() -> ! {
    panic!("section map storage exhausted")
}

/// The panic of a lookup past the last section: out of line and without arguments, so the
/// check costs the fast path a compare and a branch only.
#[cold]
#[inline(never)]
fn past_the_last_section() -> ! {
    panic!("a frame past the last section of a section map")
}

/// Slots of `T` that hold `n` `u32` table entries (the buddy keeps its tables at the
/// start of the memmap storage), saturating.
pub(crate) const fn table_slots_saturating<T>(nr_sections: usize) -> usize {
    nr_sections.div_ceil(core::mem::size_of::<T>() / 4)
}

impl<'m, T> SectionMap<'m, T> {
    /// A map of `table.len()` sections of `2^shift` elements over `storage`, whose first
    /// block (offset 0) is written with `fill(i)` for `i` in `0..2^shift` and is where every
    /// entry points until published otherwise. Writes the table and that one block only.
    /// Panics if the storage cannot hold one block or exceeds `u32` offsets.
    pub fn new(
        table: &'m mut [MaybeUninit<AtomicU32>],
        storage: &'m mut [MaybeUninit<T>],
        shift: u32,
        fill: impl FnMut(usize) -> T,
    ) -> Self {
        Self::with_reverse(table, &mut [], storage, shift, fill)
    }

    /// [`new`](Self::new) keeping the reverse direction too, in `rev` (one entry per block
    /// of storage): then [`index_of_slot`](Self::index_of_slot) answers.
    pub fn with_reverse(
        table: &'m mut [MaybeUninit<AtomicU32>],
        rev: &'m mut [MaybeUninit<AtomicU32>],
        storage: &'m mut [MaybeUninit<T>],
        shift: u32,
        fill: impl FnMut(usize) -> T,
    ) -> Self {
        let sec = 1usize << shift;
        assert!(
            storage.len() >= sec,
            "section map storage smaller than a section"
        );
        assert!(
            u32::try_from(storage.len()).is_ok(),
            "section map storage too large"
        );
        let this = Self {
            ptr: NonNull::from(&mut *storage).cast(),
            cap: storage.len(),
            table: &[],
            rev: &[],
            shift,
            mask: sec - 1,
            written: AtomicUsize::new(0),
            writer: SpinMutex::new(()),
            _storage: PhantomData,
        };
        let first = this.alloc_block(fill);
        debug_assert_eq!(first, 0);
        let table = init_slice(table, |s| AtomicU32::new(Self::bias(0, s, shift)));
        let rev = init_slice(rev, |_| AtomicU32::new(u32::MAX));
        Self { table, rev, ..this }
    }

    /// The buddy's form: the table and the reverse table (`nr_blocks` entries) in the first
    /// slots of `storage` ([`table_slots_saturating`]), the
    /// blocks after it.
    pub(crate) fn new_in_one(
        storage: &'m mut [MaybeUninit<T>],
        nr_sections: usize,
        nr_blocks: usize,
        shift: u32,
        fill: impl FnMut(usize) -> T,
    ) -> Self {
        const { assert!(core::mem::align_of::<T>() >= core::mem::align_of::<AtomicU32>()) };
        const { assert!(core::mem::size_of::<T>() % 4 == 0) };
        let (head, rest) = storage.split_at_mut(table_slots_saturating::<T>(nr_sections));
        let (rev, rest) = rest.split_at_mut(table_slots_saturating::<T>(nr_blocks));
        Self::with_reverse(
            &mut Self::as_words(head)[..nr_sections],
            &mut Self::as_words(rev)[..nr_blocks],
            rest,
            shift,
            fill,
        )
    }

    /// `slots` as the uninitialised `u32` words they are made of.
    fn as_words(slots: &'m mut [MaybeUninit<T>]) -> &'m mut [MaybeUninit<AtomicU32>] {
        let words = slots.len() * core::mem::size_of::<T>() / 4;
        // SAFETY: `slots` is exclusively borrowed for `'m`; its bytes are `words * 4`
        // bytes aligned at least as `AtomicU32` (checked by `new_in_one`'s assertions), and
        // `MaybeUninit` has no validity requirement, so viewing them as `words`
        // uninitialised `AtomicU32`s is sound, and the borrow moves into the new slice.
        unsafe {
            core::slice::from_raw_parts_mut(
                slots.as_mut_ptr().cast::<MaybeUninit<AtomicU32>>(),
                words,
            )
        }
    }

    /// No sections (absent nodes).
    pub const fn empty() -> Self {
        Self {
            table: &[],
            rev: &[],
            shift: 0,
            mask: 0,
            ptr: NonNull::dangling(),
            cap: 0,
            written: AtomicUsize::new(0),
            writer: SpinMutex::new(()),
            _storage: PhantomData,
        }
    }

    /// Sections in the map.
    #[inline]
    pub fn sections(&self) -> usize {
        self.table.len()
    }

    /// Elements per section, as a shift.
    #[inline]
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Elements written so far (shared blocks included): the storage in use.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    /// Elements of storage.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Take the next block of storage, write its elements with `f(i)` for `i` in
    /// `0..2^shift`, and return its offset, for [`publish`](Self::publish). Panics, writing
    /// nothing, if the storage is exhausted.
    pub fn alloc_block(&self, mut f: impl FnMut(usize) -> T) -> u32 {
        let _w = self.writer.lock();
        let (base, off, sec) = self.next_block();
        for i in 0..sec {
            // SAFETY: `next_block` checked that the block `off..off + sec` is inside the
            // borrowed storage; it is at or past `written`, so no entry points into it and no
            // reference to it exists, and no other writer runs (we hold `writer`): plain
            // writes are exclusive.
            unsafe { base.add(i).write(f(i)) };
        }
        self.written.store(off + sec, Ordering::Release);
        off as u32
    }

    /// The next block of storage (its first element, offset and length); panics if the
    /// storage is exhausted. Kept out of the generic `alloc_block`, whose frame is on the
    /// boot stack.
    #[inline(never)]
    fn next_block(&self) -> (*mut T, usize, usize) {
        let sec = self.mask + 1;
        let off = self.written.load(Ordering::Relaxed);
        if off + sec > self.cap {
            storage_exhausted();
        }
        // SAFETY: `off + sec <= cap`: the offset is inside the borrowed storage.
        (unsafe { self.ptr.as_ptr().add(off) }, off, sec)
    }

    /// The table entry pointing section `section` at the block at `off`: the offset minus
    /// the section's first index, modulo 2^32, so that a lookup adds the index to it with no
    /// masking (`(off - (s << shift) + idx) mod 2^32 = off + (idx & mask)`, which is below
    /// the storage size, itself below 2^32).
    #[inline]
    fn bias(off: u32, section: usize, shift: u32) -> u32 {
        off.wrapping_sub(((section as u64) << shift) as u32)
    }

    /// Point section `section` at the block at `off` (from [`alloc_block`](Self::alloc_block),
    /// or 0 for the shared first block). Readers that load the entry afterwards see the
    /// block's elements as written. Panics on a section or offset out of range.
    pub fn publish(&self, section: usize, off: u32) {
        let _w = self.writer.lock();
        assert!(
            off as usize & self.mask == 0
                && off as usize + self.mask < self.written.load(Ordering::Relaxed),
            "publishing an unwritten block"
        );
        if let Some(r) = self.rev.get(off as usize >> self.shift) {
            r.store(section as u32, Ordering::Relaxed);
        }
        self.table[section].store(Self::bias(off, section, self.shift), Ordering::Release);
    }

    /// The block offset section `section` points at.
    #[inline]
    pub fn entry(&self, section: usize) -> u32 {
        let b = self.table[section].load(Ordering::Acquire);
        b.wrapping_add(((section as u64) << self.shift) as u32)
    }

    /// The element of index `idx` (section `idx >> shift`). Panics on an index past the
    /// last section.
    #[inline]
    pub fn get(&self, idx: u64) -> &'m T {
        let s = (idx >> self.shift) as usize;
        if s >= self.table.len() {
            past_the_last_section();
        }
        // SAFETY: `s` is below the table's length (checked just above).
        let b = unsafe { self.table.get_unchecked(s) }.load(Ordering::Acquire);
        let i = b.wrapping_add(idx as u32) as usize;
        debug_assert!(i < self.written.load(Ordering::Relaxed));
        // SAFETY: the entry is the bias of a written block (`off + 2^shift <= written <=
        // cap`, the type invariant kept by `new` and `publish`), so `i = off + (idx & mask)`
        // (`bias`) is inside that block; the
        // acquire load pairs with the release store of `publish`, which came after the
        // block was written. Written elements are only ever accessed as `&T` afterwards.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }

    /// The element of index `idx`, or `None` past the last section (one compare).
    #[inline]
    pub fn try_get(&self, idx: u64) -> Option<&'m T> {
        let b = self
            .table
            .get((idx >> self.shift) as usize)?
            .load(Ordering::Acquire);
        let i = b.wrapping_add(idx as u32) as usize;
        // SAFETY: as in `get`.
        Some(unsafe { &*self.ptr.as_ptr().add(i) })
    }

    /// The storage slot of the element of index `idx` (for links between elements that
    /// need no table lookup: [`at_slot`](Self::at_slot)). Panics past the last section.
    #[inline]
    pub fn slot(&self, idx: u64) -> u32 {
        let s = (idx >> self.shift) as usize;
        if s >= self.table.len() {
            past_the_last_section();
        }
        // SAFETY: `s` is below the table's length (checked just above).
        let b = unsafe { self.table.get_unchecked(s) }.load(Ordering::Acquire);
        b.wrapping_add(idx as u32)
    }

    /// The element in storage slot `slot` (from [`slot`](Self::slot)). Panics on a slot
    /// not written.
    #[inline]
    pub fn at_slot(&self, slot: u32) -> &'m T {
        if slot as usize >= self.written.load(Ordering::Acquire) {
            past_the_last_section();
        }
        // SAFETY: the slot is below `written` (checked above; the acquire load pairs with
        // the release ordering that published the block, see `alloc_block`), so it is an
        // initialised element inside the storage, only ever accessed as `&T` from now on.
        unsafe { &*self.ptr.as_ptr().add(slot as usize) }
    }

    /// The index whose element is in storage slot `slot` of a block published to a
    /// section, with the reverse direction kept ([`with_reverse`](Self::with_reverse)).
    #[inline]
    pub fn index_of_slot(&self, slot: u32) -> u64 {
        let s = self.rev[slot as usize >> self.shift].load(Ordering::Relaxed);
        (u64::from(s) << self.shift) | (slot as usize & self.mask) as u64
    }

    /// The elements of `[idx, idx + n)`, which must lie in one section (panics otherwise).
    #[inline]
    pub fn get_run(&self, idx: u64, n: u64) -> &'m [T] {
        let off = idx as usize & self.mask;
        assert!(off + n as usize <= self.mask + 1, "a run crosses a section");
        let e = self.entry((idx >> self.shift) as usize);
        // SAFETY: as in `get`: the `n` elements from `e + off` are inside one written block.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().add(e as usize + off), n as usize) }
    }
}

/// The allocator's small fields, written as given.
pub(crate) struct AllocatorHead<P> {
    pub platform: P,
    pub cfg: BuddyConfig,
    pub nr_nodes: usize,
    pub pcp_enabled: bool,
}

/// A node's fields other than its zones.
pub(crate) struct NodeHead<'m> {
    pub present: bool,
    pub mm: Memmap<'m>,
    pub deferred: Deferred,
    pub fallback: [u8; MAX_NUMNODES],
    pub distances: [u8; MAX_NUMNODES],
}

/// Build a [`BuddyAllocator`] in `slot`: the head fields from `head`, node `nid`'s fields from
/// `node(nid)` and its zones from `zone(nid, type)`, for every one of the
/// [`MAX_NUMNODES`] node slots. Grouping starts as `cfg.mobility_grouping`, with no mapper,
/// hook or CPU-to-node map.
pub(crate) fn init_allocator_in<'s, 'm, P: IrqControl>(
    slot: &'s mut MaybeUninit<BuddyAllocator<'m, P>>,
    head: AllocatorHead<P>,
    mut node: impl FnMut(usize) -> NodeHead<'m>,
    mut zone: impl FnMut(usize, ZoneType) -> Zone<'m>,
) -> &'s mut BuddyAllocator<'m, P> {
    let this = slot.as_mut_ptr();
    // SAFETY: `this` points to `slot`, valid for writes and exclusively borrowed. Each write
    // goes through `addr_of_mut!` to one field (or one array element: an array's elements
    // are laid out contiguously, so `cast` and `add(i)` for `i < MAX_NUMNODES` / `NR_ZONES`
    // stay inside it), so no reference to uninitialised memory is created, and nothing is
    // read or dropped. `_every_field_is_written` proves the writes cover every field of
    // `BuddyAllocator` and of each `Node`, so afterwards `*this` is fully initialised and
    // may be returned as `&mut`, borrowed from `slot` for `'s`. If a closure panics midway
    // the slot stays a `MaybeUninit` that nobody reads: the partial value only leaks.
    unsafe {
        addr_of_mut!((*this).platform).write(head.platform);
        addr_of_mut!((*this).cfg).write(head.cfg);
        addr_of_mut!((*this).nr_nodes).write(head.nr_nodes);
        addr_of_mut!((*this).grouping).write(AtomicBool::new(head.cfg.mobility_grouping));
        addr_of_mut!((*this).pcp_enabled).write(head.pcp_enabled);
        addr_of_mut!((*this).mapper).write(None);
        addr_of_mut!((*this).low_hook).write(RwLock::new(None));
        addr_of_mut!((*this).cpu_nodes).write(&[]);
        addr_of_mut!((*this).movers).write(RwLock::new([None; MAX_MOVERS]));
        addr_of_mut!((*this).migration_observer).write(RwLock::new(None));
        addr_of_mut!((*this).deferred_observer).write(RwLock::new(None));
        addr_of_mut!((*this).migrate_counters).write(MigrateCounters::default());
        addr_of_mut!((*this).compact_counters).write(CompactState::default());
        let nodes = addr_of_mut!((*this).nodes).cast::<Node<'m>>();
        for nid in 0..MAX_NUMNODES {
            let n = nodes.add(nid);
            let h = node(nid);
            addr_of_mut!((*n).present).write(h.present);
            addr_of_mut!((*n).mm).write(h.mm);
            addr_of_mut!((*n).deferred).write(SpinMutex::new(h.deferred));
            addr_of_mut!((*n).fallback).write(h.fallback);
            addr_of_mut!((*n).distances).write(h.distances);
            let zones = addr_of_mut!((*n).zones).cast::<Zone<'m>>();
            for (zi, ty) in ZoneType::ALL.into_iter().enumerate() {
                zones.add(zi).write(zone(nid, ty));
            }
        }
        &mut *this
    }
}

/// Compile-time proof for [`init_allocator_in`]: lists every field of the structs it writes
/// (no `..`), so adding a field fails to compile here. Never called.
fn _every_field_is_written<P: IrqControl>(b: BuddyAllocator<'_, P>) {
    let BuddyAllocator {
        platform: _,
        cfg: _,
        nodes,
        nr_nodes: _,
        grouping: _,
        pcp_enabled: _,
        mapper: _,
        low_hook: _,
        cpu_nodes: _,
        movers: _,
        migration_observer: _,
        deferred_observer: _,
        migrate_counters: _,
        compact_counters: _,
    } = b;
    let [Node {
        present: _,
        mm: _,
        deferred: _,
        zones: _,
        fallback: _,
        distances: _,
    }, ..] = nodes;
}

/// Run the in-place initialiser `init` on a slot of this stack frame and move the value out
/// (the by-value convenience constructors).
pub(crate) fn init_by_value<T, E>(
    init: impl for<'a> FnOnce(&'a mut MaybeUninit<T>) -> Result<&'a mut T, E>,
) -> Result<T, E> {
    let mut slot = MaybeUninit::uninit();
    let built: *const T = init(&mut slot)?;
    assert!(
        core::ptr::eq(built, slot.as_ptr()),
        "an in-place initialiser returned a value outside its slot"
    );
    // SAFETY: `init` returned a `&mut T` to the slot's own address (checked above), and a
    // live `&mut T` can only point to a valid, initialised `T`: the slot holds one.
    Ok(unsafe { slot.assume_init() })
}

/// Zero `range` through `mapper`. Returns `false` (writing nothing) if the mapper cannot
/// reach all of it. The caller owns the frames (it just allocated them).
pub(crate) fn zero_range(mapper: &dyn PhysMapper, range: PhysRange) -> bool {
    let Some(ptr) = mapper.phys_to_virt(range) else {
        return false;
    };
    // SAFETY: `PhysMapper`'s contract makes `ptr` valid for writes of `range.len()` bytes of
    // exactly these frames; they were just allocated to the caller, so nobody else uses them.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, range.len() as usize) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mib;
    use crate::{memmap_len, BuddyAllocator, NodeInit, PageDesc};
    use mmkit_addr::host::HostPlatform;
    use mmkit_addr::Pfn;
    use std::vec::Vec;

    const PAINT: u8 = 0xa5;

    /// The point of deferral: the memmap past a node's boundary is not written, neither at
    /// construction nor by the boot hand-off; a step writes exactly up to the new boundary.
    #[test]
    fn deferred_descriptors_are_not_written() {
        let ram = [mib(0, 64)];
        let cfg = BuddyConfig {
            deferred_init: Some(1),
            per_cpu_lists: false,
            ..BuddyConfig::default()
        };
        let mut storage: Vec<MaybeUninit<PageDesc>> = (0..memmap_len(&ram, 10))
            .map(|_| MaybeUninit::uninit())
            .collect();
        for slot in storage.iter_mut() {
            // SAFETY: the slot is 16 writable bytes owned by this test.
            unsafe { slot.as_mut_ptr().cast::<u8>().write_bytes(PAINT, 16) };
        }
        {
            let mut nodes = [NodeInit {
                memory: &ram,
                distances: &[10],
                memmap: &mut storage,
            }];
            let b = BuddyAllocator::new(HostPlatform::new(1), cfg, &mut nodes, &mut []).unwrap();
            b.free_boot_range(ram[0]).unwrap();
            b.finish_boot();
            let p = b.deferred_init_step(0, 1024).unwrap();
            assert_eq!(p.remaining, 16384 - 2048);
            assert_eq!(b.deferred_info(0).unwrap().boundary, Pfn::new(2048));
        }
        let painted = |slot: &MaybeUninit<PageDesc>| {
            // SAFETY: every byte of every slot was written above (paint or a descriptor,
            // which has no padding: four `AtomicU32`s), so all 16 are initialised `u8`s.
            let bytes: [u8; 16] = unsafe { slot.as_ptr().cast::<[u8; 16]>().read() };
            bytes == [PAINT; 16]
        };
        // Layout: the section table (16 entries, 4 slots), the reverse table (17 entries, 5
        // slots), the shared hole block, then the blocks of the two sections initialised so
        // far; nothing else is written.
        assert_eq!(storage.len(), 4 + 5 + 17 * 1024);
        let written = 4 + 5 + 3 * 1024;
        assert!(storage[..written].iter().all(|s| !painted(s)));
        assert!(storage[written..].iter().all(painted));
    }
}
