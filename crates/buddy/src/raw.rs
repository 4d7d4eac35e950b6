//! The only `unsafe` in the crate: turning caller-provided uninitialised storage into
//! initialised values (memmaps, per-CPU lists, the allocator itself, built in place), and
//! zeroing freshly allocated frames through a `PhysMapper`.
//!
//! ## A memmap initialised as a growing prefix
//! [`DescStorage`] holds a node's memmap storage of which only a prefix is initialised
//! (deferred memmap initialisation, `deferred.rs`). It hands out `&PageDesc` only inside the
//! prefix; [`DescStorage::extend`] writes the next descriptors through the raw pointer, never
//! through a reference, and only then publishes the new length with a release store that
//! every reader's acquire load pairs with. Writers are serialised by a lock inside the
//! storage, so no two of them ever write the same descriptor.
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
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use mmkit_addr::{IrqControl, PhysMapper, PhysRange};
use spin::mutex::SpinMutex;
use spin::RwLock;

use crate::allocator::{BuddyAllocator, Node};
use crate::compaction::CompactState;
use crate::config::BuddyConfig;
use crate::deferred::Deferred;
use crate::mover::{MigrateCounters, MAX_MOVERS};
use crate::page::{Memmap, PageDesc};
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

/// Caller storage for `cap` descriptors of which the first [`len`](Self::len) are
/// initialised (module docs). Never drops anything: descriptors need no drop.
pub(crate) struct DescStorage<'m> {
    ptr: NonNull<PageDesc>,
    cap: usize,
    /// Initialised descriptors; only grows, release-stored after they are written.
    len: AtomicUsize,
    /// Held by [`extend`](Self::extend) while it writes past `len`.
    writer: SpinMutex<()>,
    _storage: PhantomData<&'m mut [MaybeUninit<PageDesc>]>,
}

// SAFETY: the storage is an exclusive borrow for `'m` of `PageDesc`s (which are `Sync`:
// atomics only). Shared access reaches only the initialised prefix, as `&PageDesc`; the
// uninitialised part is written only by `extend` under `writer`, never read.
unsafe impl Sync for DescStorage<'_> {}
// SAFETY: as above; the storage is owned as a `&mut` borrow, which is `Send` for `Send` `T`.
unsafe impl Send for DescStorage<'_> {}

impl<'m> DescStorage<'m> {
    /// Take `storage` with nothing initialised; writes nothing.
    pub fn new(storage: &'m mut [MaybeUninit<PageDesc>]) -> Self {
        Self {
            cap: storage.len(),
            ptr: NonNull::from(storage).cast(),
            len: AtomicUsize::new(0),
            writer: SpinMutex::new(()),
            _storage: PhantomData,
        }
    }

    /// No storage (absent nodes).
    pub const fn empty() -> Self {
        Self {
            ptr: NonNull::dangling(),
            cap: 0,
            len: AtomicUsize::new(0),
            writer: SpinMutex::new(()),
            _storage: PhantomData,
        }
    }

    /// Descriptors initialised so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The initialised descriptors.
    #[inline]
    pub fn initialised(&self) -> &'m [PageDesc] {
        let n = self.len.load(Ordering::Acquire);
        // SAFETY: `ptr` is the start of `cap` `PageDesc` slots borrowed for `'m` (`new`),
        // and `n <= cap` (`extend` never stores more). The acquire load pairs with the
        // release store in `extend` that published `n`, after every one of the first `n`
        // slots was written: they are initialised. Nobody writes them again except through
        // `&PageDesc` (atomics), so shared references to them are sound for `'m`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), n) }
    }

    /// Initialise descriptors `len..new_len` with `f(index)` and publish them; does nothing if
    /// `new_len <= len`. Panics if `new_len` exceeds the capacity (before writing anything).
    pub fn extend(&self, new_len: usize, mut f: impl FnMut(usize) -> PageDesc) {
        assert!(new_len <= self.cap, "memmap storage overrun");
        let _w = self.writer.lock();
        let old = self.len.load(Ordering::Relaxed);
        for i in old..new_len {
            // SAFETY: `i < new_len <= cap`, so the slot is inside the borrowed storage. It is
            // at or past `len`, so no reference to it exists (`initialised` covers `..len`
            // only) and no other writer runs (we hold `writer`): a plain write is exclusive.
            unsafe { self.ptr.as_ptr().add(i).write(f(i)) };
        }
        if new_len > old {
            self.len.store(new_len, Ordering::Release);
        }
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
    use crate::{memmap_len, BuddyAllocator, NodeInit};
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
        assert!(storage[..2048].iter().all(|s| !painted(s)));
        assert!(storage[2048..].iter().all(painted));
    }
}
