//! The only `unsafe` in the crate: turning caller-provided uninitialised storage into
//! initialised values (memmaps, per-CPU lists, the allocator itself, built in place), and
//! zeroing freshly allocated frames through a `PhysMapper`.
//!
//! ## Building the allocator in place
//! [`init_allocator_in`] writes every field of a [`BuddyAllocator`] through raw field
//! pointers into the caller's slot, one zone at a time, so no value larger than a zone
//! (about 1 KiB) is ever on the stack. That every field is written is checked at compile
//! time by [`_every_field_is_written`], which destructures both structs without `..`: adding
//! a field breaks the build until the writer is updated.

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use core::sync::atomic::AtomicBool;

use mmkit_addr::{IrqControl, PhysMapper, PhysRange};
use spin::RwLock;

use crate::allocator::{BuddyAllocator, Node};
use crate::compaction::CompactState;
use crate::config::BuddyConfig;
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
        addr_of_mut!((*this).migrate_counters).write(MigrateCounters::default());
        addr_of_mut!((*this).compact_counters).write(CompactState::default());
        let nodes = addr_of_mut!((*this).nodes).cast::<Node<'m>>();
        for nid in 0..MAX_NUMNODES {
            let n = nodes.add(nid);
            let h = node(nid);
            addr_of_mut!((*n).present).write(h.present);
            addr_of_mut!((*n).mm).write(h.mm);
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
        migrate_counters: _,
        compact_counters: _,
    } = b;
    let [Node {
        present: _,
        mm: _,
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
