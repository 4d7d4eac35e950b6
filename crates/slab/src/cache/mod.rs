//! Object caches: `kmem_cache_create` / `alloc` / `free` / `shrink` / `destroy`.
//!
//! This file holds the [`Cache`] handle, the descriptor it points at (`CacheCore`) and the
//! cache's limits; each path is a submodule adding its methods to [`Cache`]:
//!
//! | submodule | concept |
//! |---|---|
//! | `alloc` | `alloc` / `alloc_node` / `zalloc` / `alloc_bulk`: the per-CPU fast path, array refill, node-directed allocation |
//! | `free` | `free` / `free_bulk`: pointer validation, the per-CPU fast path, array flush, remote-node free |
//! | `debug` | allocation and free in debug caches: node lock, double-free walk, poison, red zones, owner records |
//! | `slabs` | slab supply: `grow` from the page source, off-slab header slots, release (directly or through RCU) |
//! | `lifecycle` | `new`, `shrink` / `drain_all`, `destroy` / `Drop`, [`LeakReport`], [`DestroyError`] |
//! | `verify` | [`Cache::verify`], the invariant scanner |
//! | `report` | [`Cache::stats`], [`Cache::node_stats`], `/proc/slabinfo` |
//!
//! ## Paths
//! * **Fast path** (caches without debug flags): inside an `IrqGuard`, pop from or push to the
//!   current CPU's array. No shared lock, no shared cache line, no slab metadata touched on
//!   allocation. A free first finds the object's slab through the page source's private word
//!   (an O(1) lookup that catches frees of foreign and non-slab pointers, and with
//!   [`HARDENED`](crate::HARDENED) misaligned ones) and rejects the object if it is the one
//!   most recently freed on this CPU (SLUB's naive double-free check). Each fast path is one
//!   well-predicted branch (`alloc_fast`: the array is not empty; `free_fast`: it has room,
//!   `obj` is not on top and, on NUMA caches only, the slab is on the CPU's node); anything
//!   else goes to an out-of-line slow path that runs the full checks. A debug cache's arrays
//!   have no room, so its allocations and frees always take the slow path, with no test of
//!   their own on the fast one. The CPU array's address is computed from the descriptor's,
//!   and a free reaches the descriptor through the slab header's cache id, so few loads wait
//!   on one another.
//! * **Refill / flush**: an empty array takes up to `batch` objects from partial slabs of its
//!   CPU's node under that node's lock (then from other nodes that hold more than
//!   `min_partial` partial slabs, as SLUB's `get_any_partial`); a full array gives its `batch`
//!   oldest objects back to their slabs, each under its own node's lock. A free from another
//!   CPU of the same node is simply absorbed by that CPU's array: arrays hold any object of
//!   the cache, and flushing returns each to its own slab.
//! * **Remote-node free**: an object whose slab lives on another node than the freeing CPU's
//!   goes straight back to its slab under that node's lock, so arrays do not carry remote
//!   memory to be handed out again on the wrong node (what Linux's sheaves do).
//! * **Grow**: with no partial slab, the guard is dropped, a slab is taken from the page
//!   source on the CPU's node (the source may fall back to another), formatted (constructors
//!   run here, with interrupts "on"), published on the partial list of the node its frames
//!   belong to, and the allocation retried.
//! * **Node-directed allocation** ([`Cache::alloc_node`], `kmem_cache_alloc_node`): for
//!   another node than the caller's, an object comes straight from that node's partial slabs
//!   (or a slab grown there), bypassing the array.
//! * **Debug path** (any of `CONSISTENCY_CHECKS`, `RED_ZONE`, `POISON`, `STORE_USER`): no
//!   arrays; every allocation and free takes the node lock and runs the checks (freelist walk
//!   for double frees, red zone, poison, owner records), as SLUB's debug caches do.
//!
//! ## Slab lifetime
//! A slab that becomes empty stays on its node's partial list while the node has at most
//! `min_partial` partial slabs (`clamp(ilog2(size) / 2, 5, 10)`, SLUB's `set_min_partial`),
//! otherwise it is released; `shrink` releases every empty slab. In a `TYPESAFE_BY_RCU`
//! cache, "released" means handed to the kernel's [`Rcu::call_rcu`] with the `RcuHead` in
//! the slab header; the callback returns the pages after a grace period (SLUB's
//! `rcu_free_slab`), so a reader that found an object under `rcu_read_lock` may still read
//! it as memory of this cache.
//!
//! ## Lock order
//! `IrqGuard` (per-CPU exclusion) → node lock (`spin::Mutex<NodeLists>`) → off-slab header
//! pool lock (`spin::Mutex<HeaderPool>`) → page source (which may take its own zone locks).
//! The node and header pool locks are always taken with interrupts off (`Cache::lock_node`
//! outside an `IrqGuard`): an interrupt handler's `GFP_ATOMIC` allocation may need them.
//! No path holds two node locks at once except `verify` and `destroy`, which take them all
//! in node order.
//!
//! What reaches the page source under which lock:
//! * **Under a node lock**, only the lookups [`PageSource::virt_to_pfn`] and
//!   [`PageSource::page_private`]: `flush` finds each returned object's slab through them
//!   while it holds the lock of the node it is freeing into, and `verify` checks every
//!   per-CPU array entry through them while it holds every node lock.
//! * **Under no lock of the cache** (at most the CPU's exclusion: `shrink` releases the
//!   slabs its per-CPU drain emptied inside `run_on_cpu`; a full array's flush releases after
//!   dropping the `IrqGuard`): [`PageSource::alloc_pages_node`] and
//!   [`PageSource::pfn_node`] in `grow` and for header pages,
//!   [`PageSource::set_page_private`] while a slab is formatted or released, and
//!   [`PageSource::free_pages`] / [`Rcu::call_rcu`] when slabs, header pages or the
//!   descriptor are released. The header pool lock is dropped before a header page is
//!   allocated or freed.
//!
//! Calling the lookups under a node lock follows the order above, so it cannot deadlock as
//! long as the page source never calls back into a slab cache (it then never waits for a
//! node lock while holding one of its own). The facade's page source answers both lookups
//! from its `KernelMap` (arithmetic for `LinearMap`) and atomic loads of the page-owner
//! table and the buddy's descriptor words, without taking a lock.
//!
//! ## Nodes
//! `NodeLists` is per node, as SLUB's `kmem_cache_node`: the descriptor holds one per node
//! of the page source (up to [`MAX_NODES`]), each on its own cache line. A slab is filed
//! under the node [`PageSource::pfn_node`] reports for its frames, and each CPU's array
//! knows its CPU's node ([`PageSource::cpu_node`]) from creation.
//!
//! ## Storage
//! The descriptor lives in a block from the page source (`percpu`); the [`Cache`] value is a
//! handle that may move freely. Slab headers point at the descriptor, which is how `kfree`
//! finds a cache from a pointer, and how an RCU callback finds its page source.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order};
use spin::Mutex;

use crate::flags::{CacheFlags, Gfp};
use crate::layout::SlabLayout;
use crate::page_source::{PageBlock, PageSource, Rcu};
use crate::percpu::{CpuArrays, Depots};
use crate::slab::{HeaderPool, NodeLists, SlabParams};

// The paths call the `unsafe fn`s of `slab` and `percpu` (and the page source's), each call
// with its `// SAFETY:` argument; they read and write no raw memory themselves. `report`
// needs no unsafe code.
#[allow(unsafe_code)]
mod alloc;
#[allow(unsafe_code)]
mod debug;
#[allow(unsafe_code)]
mod free;
#[allow(unsafe_code)]
mod lifecycle;
mod report;
#[allow(unsafe_code)]
mod slabs;
#[cfg(test)]
mod testutil;
#[allow(unsafe_code)]
mod verify;

pub use self::lifecycle::{DestroyError, LeakReport};
pub use crate::config::{CacheConfig, Ctor};

/// Longest cache name, in bytes.
pub const NAME_MAX: usize = 32;

/// SLUB's bounds on the number of partial slabs a node keeps (`MIN_PARTIAL`, `MAX_PARTIAL`).
pub const PARTIAL_BOUNDS: (usize, usize) = (5, 10);

/// Owners listed in a [`LeakReport`].
pub const LEAK_OWNERS: usize = 4;

/// Most memory nodes a cache keeps separate lists for; a page source with more has its
/// higher nodes share the last list.
pub const MAX_NODES: usize = 8;

#[derive(Default)]
struct SlowCounters {
    refills: AtomicU64,
    flushes: AtomicU64,
    slabs_allocated: AtomicU64,
    slabs_freed: AtomicU64,
    alloc_failures: AtomicU64,
    poison_corruptions: AtomicU64,
    debug_allocs: AtomicU64,
    debug_frees: AtomicU64,
    /// Allocations served straight from a node's lists (not through a CPU array).
    node_allocs: AtomicU64,
    /// Frees that went straight to a remote node's lists.
    node_frees: AtomicU64,
    /// Batches a full CPU array handed to its node's depot (counted in `flushes` too).
    depot_puts: AtomicU64,
    /// Batches an empty CPU array took from its node's depot (counted in `refills` too).
    depot_gets: AtomicU64,
}

/// Most full magazines a node's depot holds (Linux's barn keeps up to ten full sheaves), when
/// the descriptor block's slack has room for them.
const MAX_DEPOT_MAGS: usize = 8;
/// Fewest magazines a node's depot holds: the descriptor block grows to make room for them.
const MIN_DEPOT_MAGS: usize = 4;

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// One node's lists on a cache line of its own.
#[repr(align(64))]
struct NodeSlot(Mutex<NodeLists>);

/// The cache descriptor, in page-source memory.
pub(crate) struct CacheCore {
    params: SlabParams,
    flags: CacheFlags,
    name: [u8; NAME_MAX],
    name_len: usize,
    min_partial: usize,
    batch: usize,
    gfp: Gfp,
    colour: AtomicUsize,
    nodes: [NodeSlot; MAX_NODES],
    nr_nodes: usize,
    cpus: CpuArrays,
    depots: Depots,
    block: PageBlock,
    block_order: Order,
    slow: SlowCounters,
    /// The page source, type-erased, for RCU callbacks (which get only a head).
    src: *const (),
    /// Slabs handed to RCU whose callback has not run yet.
    rcu_pending: AtomicUsize,
    /// Off-slab headers (caches whose layout says `off_slab`).
    headers: Mutex<HeaderPool>,
}

static_assertions::const_assert!(core::mem::align_of::<CacheCore>() <= 4096);

impl CacheCore {
    #[inline]
    fn node(&self, nid: usize) -> &Mutex<NodeLists> {
        &self.nodes[nid.min(self.nr_nodes - 1)].0
    }

    #[inline]
    fn node_id(&self, nid: usize) -> usize {
        nid.min(self.nr_nodes - 1)
    }
}

/// A slab cache of fixed-size objects (`struct kmem_cache`).
pub struct Cache<'a, S: PageSource, P: IrqControl> {
    core: NonNull<CacheCore>,
    src: &'a S,
    platform: &'a P,
    rcu: Option<&'a dyn Rcu>,
}

#[allow(unsafe_code)]
// SAFETY: the descriptor is shared state protected by the node locks (lists), atomics
// (counters) and per-CPU exclusion through `P`'s IrqGuard (arrays); `S` and `P` are Sync.
unsafe impl<S: PageSource, P: IrqControl> Sync for Cache<'_, S, P> {}
#[allow(unsafe_code)]
// SAFETY: as above; the handle holds no thread-bound state.
unsafe impl<S: PageSource, P: IrqControl> Send for Cache<'_, S, P> {}

impl<S: PageSource, P: IrqControl> fmt::Debug for Cache<'_, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name())
            .field("layout", &self.core().params.layout)
            .finish()
    }
}

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn core(&self) -> &CacheCore {
        // SAFETY: the descriptor lives until `teardown` succeeds, which happens only in
        // `destroy(self)` or `drop`, after which the handle is gone.
        unsafe { self.core.as_ref() }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        let c = self.core();
        core::str::from_utf8(&c.name[..c.name_len]).unwrap_or("?")
    }

    /// Object size asked for at creation (`kmem_cache_size`).
    pub fn object_size(&self) -> usize {
        self.core().params.layout.object_size
    }

    /// The slab geometry.
    pub fn layout(&self) -> &SlabLayout {
        &self.core().params.layout
    }

    /// Creation flags.
    pub fn flags(&self) -> CacheFlags {
        self.core().flags
    }

    /// Empty slabs a node keeps before releasing more.
    pub fn min_partial(&self) -> usize {
        self.core().min_partial
    }

    /// Memory nodes the cache keeps lists for.
    pub fn nr_nodes(&self) -> usize {
        self.core().nr_nodes
    }

    /// The cache's identity, stored in every slab header: its descriptor's address, read
    /// from the handle (no load from the descriptor).
    #[inline]
    pub(crate) fn id(&self) -> usize {
        let id = self.core.as_ptr() as usize;
        debug_assert_eq!(id, self.core().params.cache);
        id
    }

    /// The node of the calling CPU (a preference: the caller may move right after).
    pub(crate) fn local_node(&self) -> usize {
        self.core().cpus.node(self.platform.current_cpu())
    }
}
