//! Object caches: `kmem_cache_create` / `alloc` / `free` / `shrink` / `destroy`.
//!
//! ## Paths
//! * **Fast path** (caches without debug flags): inside an `IrqGuard`, pop from or push to the
//!   current CPU's array. No shared lock, no shared cache line, no slab metadata touched on
//!   allocation. A free first finds the object's slab through the page source's private word
//!   (an O(1) lookup that catches frees of foreign, misaligned and non-slab pointers) and
//!   rejects the object if it is the one most recently freed on this CPU (SLUB's naive
//!   double-free check).
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
//! The descriptor lives in a block from the page source (`percpu.rs`); the [`Cache`] value is a
//! handle that may move freely. Slab headers point at the descriptor, which is how `kfree`
//! finds a cache from a pointer, and how an RCU callback finds its page source.

use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use mmkit_addr::{IrqControl, Order};
use spin::{Mutex, MutexGuard};

pub use crate::config::{CacheConfig, Ctor};
use crate::error::{AllocError, CreateError, FreeError, VerifyError};
use crate::flags::{CacheFlags, Gfp};
use crate::layout::SlabLayout;
use crate::page_source::{PageBlock, PageSource, Rcu, RcuHead};
use crate::percpu::{self, CpuArrays, CpuRef};
use crate::slab::{self, DetachedList, HeaderPool, NodeLists, PageKind, SlabParams, SlabPtr};
use crate::stats::{CacheStats, NodeStats, SlabInfoLine};

/// Longest cache name, in bytes.
pub const NAME_MAX: usize = 32;
/// SLUB's bounds on the number of partial slabs a node keeps (`MIN_PARTIAL`, `MAX_PARTIAL`).
pub const PARTIAL_BOUNDS: (usize, usize) = (5, 10);
/// Owners listed in a [`LeakReport`].
pub const LEAK_OWNERS: usize = 4;
/// Most memory nodes a cache keeps separate lists for; a page source with more has its
/// higher nodes share the last list.
pub const MAX_NODES: usize = 8;

static RANDOM_COUNTER: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);

/// splitmix64, to spread a seed into a freelist secret.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

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
}

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
    kmalloc_slot: Option<u16>,
    colour: AtomicUsize,
    nodes: [NodeSlot; MAX_NODES],
    nr_nodes: usize,
    cpus: CpuArrays,
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

    /// An off-slab header slot, adding a header page from `src` (preferring node `nid`) if
    /// every page is full.
    fn take_header<S: PageSource>(&self, src: &S, nid: usize) -> Option<NonNull<u8>> {
        if let Some(h) = self.headers.lock().take() {
            return Some(h);
        }
        let page = src.alloc_pages_node(nid, Order::new(0), Gfp::empty())?;
        src.set_page_private(page.pfn, 0);
        let mut pool = self.headers.lock();
        // SAFETY: a fresh order-0 block from the cache's source, given to the pool; its
        // private word says "not slab memory", so kfree refuses pointers into it.
        unsafe { pool.add_page(page) };
        pool.take()
    }

    /// Give back an off-slab header slot, freeing its page to `src` if the pool lets go.
    ///
    /// # Safety
    /// `slot` came from [`take_header`](Self::take_header) with this `src` and is unused.
    unsafe fn put_header<S: PageSource>(&self, src: &S, slot: NonNull<u8>) {
        // SAFETY: caller's contract.
        let page = unsafe { self.headers.lock().put(slot) };
        if let Some(page) = page {
            // SAFETY: a header page from `src`, order 0, no slot in use.
            unsafe { src.free_pages(page, Order::new(0)) };
        }
    }

    /// Release a detached slab to `src` (and its off-slab header to the pool).
    ///
    /// # Safety
    /// The slab belongs to this cache, whose page source is `src`.
    unsafe fn release_to<S: PageSource>(&self, src: &S, slab: slab::DetachedSlab) {
        // SAFETY: caller's contract.
        if let Some(h) = unsafe { slab::release_slab(src, slab) } {
            // SAFETY: the header slot of a slab of this cache, now unused.
            unsafe { self.put_header(src, h) };
        }
        inc(&self.slow.slabs_freed);
    }
}

/// The RCU callback of a `TYPESAFE_BY_RCU` cache: the grace period is over, so the slab's
/// pages go back to the page source (SLUB's `rcu_free_slab`).
///
/// # Safety
/// `head` is the `RcuHead` of a slab of a cache over page source `S`, handed to
/// [`Rcu::call_rcu`] by that cache's `release`, and this is its one callback.
unsafe fn rcu_free_slab<S: PageSource>(head: NonNull<RcuHead>) {
    // SAFETY: the header embedding `head` is intact until its pages are freed below, and its
    // cache identity is the descriptor's address. The descriptor outlives the callback: a
    // cache with `rcu_pending > 0` refuses to be destroyed, and the count drops only at the
    // end of this function.
    let core = unsafe { &*(slab::rcu_slab_cache(head) as *const CacheCore) };
    // SAFETY: as above; the slab is owned by this callback.
    let detached = unsafe { slab::rcu_slab(head, &core.params.layout) };
    // SAFETY: `core.src` is the `&S` the cache was created with (the callback was
    // instantiated for that `S`), which outlives the cache.
    let src = unsafe { &*(core.src as *const S) };
    // SAFETY: the slab came from `src`; nothing refers to it any more.
    unsafe { core.release_to(src, detached) };
    core.rcu_pending.fetch_sub(1, Release);
}

/// Why `destroy` refused: objects are still live (or slabs wait for a grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakReport {
    /// Objects still allocated.
    pub live_objects: usize,
    /// Slabs handed to RCU whose callback has not run yet (call the kernel's `rcu_barrier`
    /// and retry, as Linux's `kmem_cache_destroy` does for these caches).
    pub rcu_pending_slabs: usize,
    /// Allocation sites of some live objects (with `STORE_USER`).
    pub owners: [Option<&'static Location<'static>>; LEAK_OWNERS],
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects still allocated, {} slabs waiting for RCU",
            self.live_objects, self.rcu_pending_slabs
        )?;
        for o in self.owners.iter().flatten() {
            write!(f, "; allocated at {o}")?;
        }
        Ok(())
    }
}

/// `destroy` failed: the cache is handed back with the report.
pub struct DestroyError<'a, S: PageSource, P: IrqControl> {
    /// The cache, still usable.
    pub cache: Cache<'a, S, P>,
    /// What is still live.
    pub leak: LeakReport,
}

impl<S: PageSource, P: IrqControl> fmt::Debug for DestroyError<'_, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestroyError")
            .field("cache", &self.cache.name())
            .field("leak", &self.leak)
            .finish()
    }
}

/// A slab cache of fixed-size objects (`struct kmem_cache`).
pub struct Cache<'a, S: PageSource, P: IrqControl> {
    core: NonNull<CacheCore>,
    src: &'a S,
    platform: &'a P,
    rcu: Option<&'a dyn Rcu>,
}

// SAFETY: the descriptor is shared state protected by the node locks (lists), atomics
// (counters) and per-CPU exclusion through `P`'s IrqGuard (arrays); `S` and `P` are Sync.
unsafe impl<S: PageSource, P: IrqControl> Sync for Cache<'_, S, P> {}
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

/// The node lock currently held while returning objects, switched as objects of other
/// nodes come along.
struct HeldNode<'c> {
    id: usize,
    lists: MutexGuard<'c, NodeLists>,
}

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Create a cache (`kmem_cache_create`). Takes one block from `src` for the descriptor
    /// and per-CPU arrays; slabs come later, on demand.
    pub fn new(config: &CacheConfig<'a>, src: &'a S, platform: &'a P) -> Result<Self, CreateError> {
        if config.name.len() > NAME_MAX {
            return Err(CreateError::NameTooLong);
        }
        if config.flags.contains(CacheFlags::TYPESAFE_BY_RCU) && config.rcu.is_none() {
            return Err(CreateError::RcuWithoutCallback);
        }
        let nr_cpus = platform.nr_cpus().max(1);
        let layout = SlabLayout::new(
            config.size,
            config.align,
            config.flags,
            config.ctor.is_some(),
            nr_cpus,
        )?;
        let cap = layout.cpu_capacity;
        let bytes = percpu::block_bytes::<CacheCore>(nr_cpus, cap);
        let block_order = Order::for_bytes(bytes as u64).ok_or(CreateError::OutOfMemory)?;
        let nr_nodes = src.nr_nodes().clamp(1, MAX_NODES);
        let home = src.cpu_node(platform.current_cpu()).min(nr_nodes - 1);
        let block = src
            .alloc_pages_node(home, block_order, Gfp::empty())
            .ok_or(CreateError::OutOfMemory)?;
        let id = block.ptr.as_ptr() as usize;
        let random = config
            .random
            .unwrap_or_else(|| mix(id as u64 ^ RANDOM_COUNTER.fetch_add(0x9e37_79b9, Relaxed)));
        let mut name = [0u8; NAME_MAX];
        name[..config.name.len()].copy_from_slice(config.name.as_bytes());
        let log2 = usize::BITS - 1 - layout.object_size.leading_zeros();
        let min_partial = (log2 as usize / 2).clamp(PARTIAL_BOUNDS.0, PARTIAL_BOUNDS.1);
        let mut gfp = config.gfp - Gfp::ZERO;
        if config.flags.contains(CacheFlags::RECLAIM_ACCOUNT) {
            gfp |= Gfp::RECLAIMABLE;
        }
        let cpu_node = |cpu: usize| src.cpu_node(cpu).min(nr_nodes - 1);
        // SAFETY: `block` is ours, page aligned and `block_bytes` long (order from its size);
        // it stays allocated until `teardown` frees it after the last use.
        let core = unsafe {
            percpu::place_descriptor(block, nr_cpus, cap, cpu_node, |cpus| CacheCore {
                params: SlabParams {
                    layout,
                    random,
                    cache: id,
                    ctor: config.ctor,
                    tag: config.kmalloc_slot.map_or(u32::MAX, u32::from),
                },
                flags: config.flags,
                name,
                name_len: config.name.len(),
                min_partial,
                batch: cap.div_ceil(2),
                gfp,
                kmalloc_slot: config.kmalloc_slot,
                colour: AtomicUsize::new(0),
                nodes: core::array::from_fn(|_| NodeSlot(Mutex::new(NodeLists::new()))),
                nr_nodes,
                cpus,
                block,
                block_order,
                slow: SlowCounters::default(),
                src: src as *const S as *const (),
                rcu_pending: AtomicUsize::new(0),
                headers: Mutex::new(HeaderPool::new()),
            })
        };
        Ok(Self {
            core,
            src,
            platform,
            rcu: config.rcu,
        })
    }

    #[inline]
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

    pub(crate) fn id(&self) -> usize {
        self.core().params.cache
    }

    pub(crate) fn kmalloc_slot(&self) -> Option<u16> {
        self.core().kmalloc_slot
    }

    /// The node of the calling CPU (a preference: the caller may move right after).
    fn local_node(&self) -> usize {
        self.core().cpus.node(self.platform.current_cpu())
    }

    /// Allocate one object (`kmem_cache_alloc`). Its contents are whatever the constructor
    /// (or the previous owner) left; with a constructor, a constructed object.
    #[track_caller]
    #[inline]
    pub fn alloc(&self) -> Result<NonNull<u8>, AllocError> {
        if self.core().params.layout.cpu_capacity == 0 {
            return self.alloc_debug(None, Location::caller());
        }
        if let Some(obj) = self.alloc_cached(None) {
            return Ok(obj);
        }
        self.alloc_grow()
    }

    #[cold]
    fn alloc_grow(&self) -> Result<NonNull<u8>, AllocError> {
        loop {
            let grown = self.grow(self.local_node())?;
            if let Some(obj) = self.alloc_cached(Some(grown)) {
                return Ok(obj);
            }
        }
    }

    /// Allocate one object from memory of node `node` where the page source has it
    /// (`kmem_cache_alloc_node`; a node out of range means the last one). For another node
    /// than the caller's the object comes straight from that node's lists, not through the
    /// CPU array; if that node has no memory left, the page source's fallback decides.
    #[track_caller]
    pub fn alloc_node(&self, node: usize) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        let node = core.node_id(node);
        if core.params.layout.cpu_capacity == 0 {
            return self.alloc_debug(Some(node), Location::caller());
        }
        if node == self.local_node() {
            return self.alloc();
        }
        loop {
            let got = core.node(node).lock().alloc_object(&core.params);
            if let Some(obj) = got {
                inc(&core.slow.node_allocs);
                return Ok(obj);
            }
            let grown = self.grow(node)?;
            if grown != node {
                // The source fell back to another node: take the object from there.
                let got = core.node(grown).lock().alloc_object(&core.params);
                if let Some(obj) = got {
                    inc(&core.slow.node_allocs);
                    return Ok(obj);
                }
            }
        }
    }

    /// Allocate and zero the object's bytes (`kmem_cache_zalloc`).
    #[track_caller]
    pub fn zalloc(&self) -> Result<NonNull<u8>, AllocError> {
        let obj = self.alloc()?;
        // SAFETY: we just allocated `obj`; its object bytes are ours.
        unsafe { slab::zero_bytes(obj, self.object_size()) };
        Ok(obj)
    }

    /// Pop from this CPU's array, refilling it once (from the CPU's node, then `extra`, then
    /// other nodes with partial slabs to spare).
    #[inline]
    fn alloc_cached(&self, extra: Option<usize>) -> Option<NonNull<u8>> {
        let core = self.core();
        let guard = self.platform.irq_save();
        // SAFETY: we hold this CPU's guard of the platform the arrays were sized for, and do
        // not re-enter the cache while `cpu` lives (no callbacks below).
        let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
        if let Some(obj) = cpu.pop() {
            cpu.count_alloc(true);
            return Some(obj);
        }
        self.refill(&mut cpu, extra)
    }

    /// Fill an empty array with up to `batch` objects and pop one.
    #[inline(never)]
    fn refill(&self, cpu: &mut CpuRef<'_>, extra: Option<usize>) -> Option<NonNull<u8>> {
        let core = self.core();
        let want = core.batch.min(cpu.room());
        let local = cpu.node();
        let mut got = Self::take_from(core, local, want, 0, cpu);
        if got == 0 {
            if let Some(e) = extra.filter(|&e| e != local) {
                got = Self::take_from(core, e, want, 0, cpu);
            }
        }
        if got == 0 && core.nr_nodes > 1 {
            for nid in (0..core.nr_nodes).filter(|&n| n != local && Some(n) != extra) {
                got = Self::take_from(core, nid, want, core.min_partial, cpu);
                if got > 0 {
                    break;
                }
            }
        }
        let obj = cpu.pop()?;
        cpu.count_alloc(false);
        inc(&core.slow.refills);
        Some(obj)
    }

    /// Move up to `want` objects from node `nid`'s partial slabs to `cpu`, if the node has
    /// more than `spare` partial slabs. Returns how many moved.
    fn take_from(
        core: &CacheCore,
        nid: usize,
        want: usize,
        spare: usize,
        cpu: &mut CpuRef<'_>,
    ) -> usize {
        let mut node = core.node(nid).lock();
        if node.nr_partial <= spare && spare > 0 {
            return 0;
        }
        let mut got = 0;
        while got < want {
            match node.alloc_object(&core.params) {
                Some(o) => {
                    cpu.push(o);
                    got += 1;
                }
                None => break,
            }
        }
        got
    }

    /// Take a slab from the page source, preferring node `nid`, and publish it on the
    /// partial list of the node its frames belong to; returns that node.
    fn grow(&self, nid: usize) -> Result<usize, AllocError> {
        let core = self.core();
        let header = if core.params.layout.off_slab {
            let Some(h) = core.take_header(self.src, nid) else {
                inc(&core.slow.alloc_failures);
                return Err(AllocError::OutOfMemory);
            };
            Some(h)
        } else {
            None
        };
        let Some(block) = self
            .src
            .alloc_pages_node(nid, core.params.layout.order, core.gfp)
        else {
            if let Some(h) = header {
                // SAFETY: taken just above and unused.
                unsafe { core.put_header(self.src, h) };
            }
            inc(&core.slow.alloc_failures);
            return Err(AllocError::OutOfMemory);
        };
        let node = core.node_id(self.src.pfn_node(block.pfn));
        let colour = core.colour.fetch_add(1, Relaxed);
        // SAFETY: a fresh block of the slab order from our source, owned here, and (for an
        // off-slab layout) a header slot of this cache's pool, owned here.
        let slab =
            unsafe { slab::format_slab(self.src, block, &core.params, colour, node, header) };
        core.node(node).lock().add_new_slab(slab);
        inc(&core.slow.slabs_allocated);
        Ok(node)
    }

    fn alloc_debug(
        &self,
        want: Option<usize>,
        owner: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        let first = want.unwrap_or_else(|| self.local_node());
        let mut extra = None;
        loop {
            for nid in [Some(first), extra].into_iter().flatten() {
                let mut node = core.node(nid).lock();
                if let Some(obj) = node.alloc_object(&core.params) {
                    // SAFETY: just taken off our freelist, under the node lock.
                    if !unsafe { slab::debug_on_alloc(&core.params, obj, owner) } {
                        inc(&core.slow.poison_corruptions);
                    }
                    inc(&core.slow.debug_allocs);
                    return Ok(obj);
                }
            }
            extra = Some(self.grow(first)?);
        }
    }

    /// Find the slab of `obj` and check that `obj` is the start of one of its objects.
    ///
    /// # Safety
    /// If `obj` is an object of this cache, the caller owns it (so its slab stays live).
    unsafe fn owning_slab(&self, obj: NonNull<u8>) -> Result<SlabPtr, FreeError> {
        // SAFETY: caller's contract.
        match unsafe { slab::lookup(self.src, obj) } {
            PageKind::Slab(s) => {
                self.check_object(s, obj)?;
                Ok(s)
            }
            _ => Err(FreeError::NotSlabMemory),
        }
    }

    fn check_object(&self, slab: SlabPtr, obj: NonNull<u8>) -> Result<(), FreeError> {
        if slab.cache_id() != self.id() {
            return Err(FreeError::WrongCache);
        }
        slab.object_index(&self.core().params.layout, obj)?;
        Ok(())
    }

    /// Return an object (`kmem_cache_free`). Detected misuse (a pointer that is not an object
    /// of this cache, a double free the cache can see, a broken red zone) is reported and
    /// changes nothing.
    ///
    /// # Safety
    /// Either `obj` is an object allocated from this cache, owned by the caller and not used
    /// after this call, or it is a misuse this call detects. Detected misuse is defined: it
    /// returns an error and changes nothing.
    /// * [`FreeError::NotSlabMemory`]: `obj` is not in a slab of this cache's page source (a
    ///   stack, static or foreign pointer, a page the source gave to another user);
    /// * [`FreeError::WrongCache`], [`FreeError::NotAnObject`], [`FreeError::Misaligned`]:
    ///   `obj` is in a slab of another cache, in a slab but outside its objects, or inside an
    ///   object but not at its start;
    /// * [`FreeError::DoubleFree`]: `obj` is the object most recently freed on this CPU, or,
    ///   in a cache with debug flags (no per-CPU arrays), any free object of a slab the cache
    ///   still holds;
    /// * [`FreeError::RedZoneCorrupted`] (`RED_ZONE` caches): the object's red zone was
    ///   overwritten; the object stays allocated.
    ///
    /// The check reads the header of the slab `obj` points into, so that slab must not be
    /// released (and its frames reused) during the call. Everything else is undefined: a
    /// second free the cache cannot see (without debug flags, an object freed before this
    /// CPU's most recent free sits in a per-CPU array or on its slab's freelist and would be
    /// handed out twice), a late double free of an object allocated again since (to someone
    /// else), or of one whose slab was released and whose frames now hold another slab, and
    /// any use of `obj` after a successful free.
    #[track_caller]
    #[inline]
    pub unsafe fn free(&self, obj: NonNull<u8>) -> Result<(), FreeError> {
        // SAFETY: caller's contract.
        let slab = unsafe { self.owning_slab(obj)? };
        // SAFETY: validated by `owning_slab`; caller's contract otherwise.
        unsafe { self.free_validated(slab, obj, Location::caller()) }
    }

    /// Free `obj`, found (by the caller, through [`slab::lookup`]) in `slab`.
    ///
    /// # Safety
    /// As [`free`](Self::free); `slab` is what `lookup` returned for `obj`.
    #[inline]
    pub(crate) unsafe fn free_in_slab(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        self.check_object(slab, obj)?;
        // SAFETY: validated just above; caller's contract otherwise.
        unsafe { self.free_validated(slab, obj, owner) }
    }

    /// # Safety
    /// `slab`/`obj` passed `check_object`; the caller owns `obj` and gives it up.
    #[inline]
    unsafe fn free_validated(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        if self.core().params.layout.cpu_capacity == 0 {
            // SAFETY: caller's contract.
            return unsafe { self.free_debug(slab, obj, owner) };
        }
        // SAFETY: caller's contract.
        unsafe { self.free_cached(slab, obj) }
    }

    /// Push a validated object on this CPU's array, flushing a batch first if it is full;
    /// an object of another node goes back to its slab instead.
    ///
    /// # Safety
    /// As [`free_validated`](Self::free_validated).
    #[inline]
    unsafe fn free_cached(&self, slab: SlabPtr, obj: NonNull<u8>) -> Result<(), FreeError> {
        let core = self.core();
        let mut released = DetachedList::new();
        {
            let guard = self.platform.irq_save();
            // SAFETY: as in `alloc_cached`.
            let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
            if cpu.last() == Some(obj) {
                return Err(FreeError::DoubleFree);
            }
            if slab.node() != cpu.node() {
                drop(guard);
                // SAFETY: caller's contract.
                return unsafe { self.free_remote(slab, obj) };
            }
            let fast = !cpu.is_full();
            if !fast {
                self.flush(&mut cpu, core.batch, &mut released);
            }
            cpu.push(obj);
            cpu.count_free(fast);
        }
        self.release(released);
        Ok(())
    }

    /// Return `obj` straight to its slab on another node.
    ///
    /// # Safety
    /// As [`free_validated`](Self::free_validated).
    #[cold]
    unsafe fn free_remote(&self, slab: SlabPtr, obj: NonNull<u8>) -> Result<(), FreeError> {
        let core = self.core();
        let mut released = DetachedList::new();
        {
            let mut node = core.node(slab.node()).lock();
            // SAFETY: the slab is live (the caller owns `obj`) and listed on its node, whose
            // lock we hold.
            let empty = unsafe { node.free_object(&core.params, slab, obj) };
            if empty && node.nr_partial > core.min_partial {
                // SAFETY: empty slab on our partial list.
                unsafe { node.detach_empty(slab, &mut released) };
            }
            inc(&core.slow.node_frees);
        }
        self.release(released);
        Ok(())
    }

    /// Give the `n` oldest objects of `cpu` back to their slabs; emptied slabs beyond
    /// `min_partial` go to `out`.
    fn flush(&self, cpu: &mut CpuRef<'_>, n: usize, out: &mut DetachedList) {
        if n == 0 || cpu.len() == 0 {
            return;
        }
        let core = self.core();
        inc(&core.slow.flushes);
        let mut held: Option<HeldNode<'_>> = None;
        cpu.take_oldest(n, |obj| {
            // SAFETY: objects in our arrays are objects of this cache counted in their slab's
            // `inuse`, so the slab is live.
            let PageKind::Slab(slab) = (unsafe { slab::lookup(self.src, obj) }) else {
                return;
            };
            let nid = slab.node();
            if held.as_ref().map(|h| h.id) != Some(nid) {
                drop(held.take());
                held = Some(HeldNode {
                    id: nid,
                    lists: core.node(nid).lock(),
                });
            }
            let Some(h) = held.as_mut() else { return };
            let node = &mut h.lists;
            // SAFETY: the slab is on the lists of its node, whose lock we hold, and `obj` is
            // one of its in-use objects.
            let empty = unsafe { node.free_object(&core.params, slab, obj) };
            if empty && node.nr_partial > core.min_partial {
                // SAFETY: empty slab on our partial list.
                unsafe { node.detach_empty(slab, out) };
            }
        });
    }

    /// # Safety
    /// `slab`/`obj` come from `owning_slab` on an object the caller owns.
    unsafe fn free_debug(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        let core = self.core();
        let mut released = DetachedList::new();
        {
            let mut node = core.node(slab.node()).lock();
            // SAFETY: the slab is live (caller owns an object of it) and we hold the lock.
            if unsafe { node.on_freelist(&core.params, slab, obj) } {
                return Err(FreeError::DoubleFree);
            }
            // SAFETY: `obj` is an allocated object of this cache (not on its freelist).
            unsafe { slab::debug_check_free(&core.params, obj)? };
            // SAFETY: as above.
            unsafe { slab::debug_on_free(&core.params, obj, owner) };
            // SAFETY: as above; the slab is listed.
            let empty = unsafe { node.free_object(&core.params, slab, obj) };
            if empty && node.nr_partial > core.min_partial {
                // SAFETY: empty slab on our partial list.
                unsafe { node.detach_empty(slab, &mut released) };
            }
            inc(&core.slow.debug_frees);
        }
        self.release(released);
        Ok(())
    }

    /// Fill `out` with objects (`kmem_cache_alloc_bulk`): all or nothing.
    #[track_caller]
    pub fn alloc_bulk(&self, out: &mut [Option<NonNull<u8>>]) -> Result<(), AllocError> {
        let core = self.core();
        let mut i = 0;
        let mut extra = None;
        while i < out.len() {
            if core.params.layout.cpu_capacity == 0 {
                match self.alloc_debug(None, Location::caller()) {
                    Ok(o) => out[i] = Some(o),
                    Err(e) => return Err(self.undo_bulk(out, i, e)),
                }
                i += 1;
                continue;
            }
            {
                let guard = self.platform.irq_save();
                // SAFETY: as in `alloc_cached`.
                let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
                while i < out.len() {
                    if let Some(o) = cpu.pop() {
                        cpu.count_alloc(true);
                        out[i] = Some(o);
                        i += 1;
                        continue;
                    }
                    let Some(o) = self.refill(&mut cpu, extra) else {
                        break;
                    };
                    out[i] = Some(o);
                    i += 1;
                }
            }
            if i < out.len() {
                match self.grow(self.local_node()) {
                    Ok(n) => extra = Some(n),
                    Err(e) => return Err(self.undo_bulk(out, i, e)),
                }
            }
        }
        Ok(())
    }

    fn undo_bulk(&self, out: &mut [Option<NonNull<u8>>], n: usize, e: AllocError) -> AllocError {
        for slot in out[..n].iter_mut() {
            if let Some(o) = slot.take() {
                // SAFETY: allocated above from this cache and never handed out.
                let _ = unsafe { self.free(o) };
            }
        }
        e
    }

    /// Free many objects (`kmem_cache_free_bulk`). Every pointer is validated first; if any is
    /// refused, nothing is freed.
    ///
    /// # Safety
    /// As [`free`](Self::free), for each object; no object appears twice.
    #[track_caller]
    pub unsafe fn free_bulk(&self, objs: &[NonNull<u8>]) -> Result<(), FreeError> {
        for &o in objs {
            // SAFETY: caller's contract.
            unsafe { self.owning_slab(o)? };
        }
        for &o in objs {
            // SAFETY: caller's contract; validated above.
            unsafe { self.free(o)? };
        }
        Ok(())
    }

    /// Give every CPU's cached objects back to their slabs and release every empty slab to
    /// the page source (`kmem_cache_shrink`). Each CPU's array is drained on that CPU through
    /// [`IrqControl::run_on_cpu`] (SLUB's `flush_all`); arrays of CPUs the platform cannot
    /// reach keep their objects. Returns the number of frames released (in a
    /// `TYPESAFE_BY_RCU` cache: handed to RCU, to be freed after the grace period).
    ///
    /// Call it with interrupts on (not from inside an `IrqGuard`), as `run_on_cpu` requires.
    pub fn shrink(&self) -> u64 {
        let core = self.core();
        let released = AtomicU64::new(0);
        if core.params.layout.cpu_capacity > 0 {
            for c in 0..core.cpus.nr_cpus() {
                let drain = || {
                    // SAFETY: `run_on_cpu` runs this as a section of CPU `c`: nobody else
                    // uses `c`'s array meanwhile, and we do not re-enter the cache.
                    let mut cpu = unsafe { self.core().cpus.get(c) };
                    let mut out = DetachedList::new();
                    let n = cpu.len();
                    self.flush(&mut cpu, n, &mut out);
                    released.fetch_add(out.len() as u64, Relaxed);
                    self.release(out);
                };
                self.platform.run_on_cpu(c, &drain);
            }
        }
        let mut out = DetachedList::new();
        let n = self.shrink_nodes(&mut out) + released.load(Relaxed);
        n * core.params.layout.order.pages()
    }

    /// Drain this CPU's array and release every empty slab: [`shrink`](Self::shrink) without
    /// cross-CPU calls, for callers that may have interrupts off. Returns frames released.
    pub(crate) fn shrink_this_cpu(&self) -> u64 {
        let core = self.core();
        let mut out = DetachedList::new();
        if core.params.layout.cpu_capacity > 0 {
            let guard = self.platform.irq_save();
            // SAFETY: as in `alloc_cached`.
            let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
            let n = cpu.len();
            self.flush(&mut cpu, n, &mut out);
        }
        self.shrink_nodes(&mut out) * core.params.layout.order.pages()
    }

    /// Drain every CPU's array and release every empty slab. Needs exclusive access, which
    /// is what proves no CPU is using its array. Returns the number of frames released.
    pub fn drain_all(&mut self) -> u64 {
        let core = self.core();
        let mut out = DetachedList::new();
        for c in 0..core.cpus.nr_cpus() {
            // SAFETY: `&mut self`: no other handle exists, so no CPU is inside this cache.
            let mut cpu = unsafe { core.cpus.get(c) };
            let n = cpu.len();
            self.flush(&mut cpu, n, &mut out);
        }
        self.shrink_nodes(&mut out) * core.params.layout.order.pages()
    }

    /// Detach every empty slab of every node into `out`, release them all; returns how many.
    fn shrink_nodes(&self, out: &mut DetachedList) -> u64 {
        let core = self.core();
        for slot in &core.nodes[..core.nr_nodes] {
            slot.0.lock().shrink_empty(0, out);
        }
        let n = out.len() as u64;
        self.release(core::mem::replace(out, DetachedList::new()));
        n
    }

    /// Release detached slabs: to the page source, or in a `TYPESAFE_BY_RCU` cache to the
    /// kernel's RCU, whose callback frees them after a grace period.
    fn release(&self, mut list: DetachedList) {
        let core = self.core();
        if let Some(rcu) = self
            .rcu
            .filter(|_| core.flags.contains(CacheFlags::TYPESAFE_BY_RCU))
        {
            while let Some(head) = list.pop_rcu() {
                core.rcu_pending.fetch_add(1, Relaxed);
                // SAFETY: the head is in the header of a slab we own outright (detached,
                // empty) and not queued; the header stays intact until the callback, which
                // `rcu_free_slab::<S>` is for a cache over `S` (its contract).
                unsafe { rcu.call_rcu(head, rcu_free_slab::<S>) };
            }
            return;
        }
        while let Some(s) = list.pop(&core.params.layout) {
            // SAFETY: every slab of this cache comes from `self.src`.
            unsafe { core.release_to(self.src, s) };
        }
    }

    /// Objects held by callers.
    pub fn live_objects(&self) -> usize {
        let s = self.stats();
        s.live_objects
    }

    /// The lists of node `node` (`/sys/kernel/slab/<cache>/partial` and friends).
    pub fn node_stats(&self, node: usize) -> Option<NodeStats> {
        let core = self.core();
        if node >= core.nr_nodes {
            return None;
        }
        let n = core.node(node).lock();
        Some(NodeStats {
            partial_slabs: n.nr_partial,
            full_slabs: n.nr_full,
            empty_slabs: n.nr_empty,
            active_objects: n.inuse,
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let core = self.core();
        let l = &core.params.layout;
        let (mut slabs, mut inuse) = (0, 0);
        for slot in &core.nodes[..core.nr_nodes] {
            let node = slot.0.lock();
            slabs += node.nr_slabs();
            inuse += node.inuse;
        }
        let header_pages = core.headers.lock().pages;
        let mut cached = 0usize;
        let (mut fast_a, mut fast_f, mut allocs, mut frees) = (0u64, 0u64, 0u64, 0u64);
        for c in 0..core.cpus.nr_cpus() {
            let k = core.cpus.counters(c);
            cached += k.cached;
            fast_a = fast_a.wrapping_add(k.alloc_fast);
            fast_f = fast_f.wrapping_add(k.free_fast);
            allocs = allocs.wrapping_add(k.allocs);
            frees = frees.wrapping_add(k.frees);
        }
        let slow = &core.slow;
        CacheStats {
            object_size: l.object_size,
            slot_size: l.stride,
            objects_per_slab: l.objects,
            pages_per_slab: l.order.pages() as usize,
            slabs,
            rcu_pending_slabs: core.rcu_pending.load(Acquire),
            header_pages,
            total_objects: slabs * l.objects,
            active_objects: inuse,
            cpu_cached: cached,
            live_objects: inuse.saturating_sub(cached),
            cpu_limit: core.cpus.capacity(),
            batch: core.batch,
            alloc_fastpath: fast_a,
            alloc_slowpath: allocs.wrapping_sub(fast_a)
                + slow.debug_allocs.load(Relaxed)
                + slow.node_allocs.load(Relaxed),
            free_fastpath: fast_f,
            free_slowpath: frees.wrapping_sub(fast_f)
                + slow.debug_frees.load(Relaxed)
                + slow.node_frees.load(Relaxed),
            refills: slow.refills.load(Relaxed),
            flushes: slow.flushes.load(Relaxed),
            slabs_allocated: slow.slabs_allocated.load(Relaxed),
            slabs_freed: slow.slabs_freed.load(Relaxed),
            alloc_failures: slow.alloc_failures.load(Relaxed),
            poison_corruptions: slow.poison_corruptions.load(Relaxed),
        }
    }

    /// This cache's `/proc/slabinfo` line.
    pub fn slabinfo(&self) -> SlabInfoLine<'_> {
        SlabInfoLine {
            name: self.name(),
            stats: self.stats(),
        }
    }

    /// Check every invariant: each slab's free count matches its freelist, no object is on
    /// two freelists or on a freelist and in a per-CPU array, every slab is on the lists of
    /// its own node, lists and counters agree, the per-CPU counters add up, and (debug
    /// caches) poison and red zones are intact. Needs exclusive access so the per-CPU arrays
    /// hold still.
    pub fn verify(&mut self) -> Result<(), VerifyError> {
        let core = self.core();
        let nodes: [Option<MutexGuard<'_, NodeLists>>; MAX_NODES] =
            core::array::from_fn(|n| (n < core.nr_nodes).then(|| core.nodes[n].0.lock()));
        let (mut inuse, mut slabs) = (0, 0);
        for (nid, node) in nodes.iter().enumerate() {
            if let Some(node) = node {
                inuse += node.verify(&core.params, nid)?.inuse;
                slabs += node.nr_slabs();
            }
        }
        if core.params.layout.off_slab {
            let pool = core.headers.lock();
            if pool.used != slabs + core.rcu_pending.load(Acquire)
                || pool.used > pool.pages * slab::HEADERS_PER_PAGE
            {
                return Err(VerifyError::CountMismatch);
            }
        }
        let nr = core.cpus.nr_cpus();
        let mut cached = 0usize;
        let (mut allocs, mut frees) = (0u64, 0u64);
        for c in 0..nr {
            // SAFETY: `&mut self`: no CPU is inside this cache.
            let cpu = unsafe { core.cpus.get(c) };
            let k = core.cpus.counters(c);
            allocs = allocs.wrapping_add(k.allocs);
            frees = frees.wrapping_add(k.frees);
            for i in 0..cpu.len() {
                let obj = cpu.get(i).ok_or(VerifyError::CpuArrayCorrupt)?;
                // SAFETY: we hold every node lock, so no listed slab goes away; an object of
                // a live slab has a live header.
                let PageKind::Slab(slab) = (unsafe { slab::lookup(self.src, obj) }) else {
                    return Err(VerifyError::CpuArrayCorrupt);
                };
                if slab.cache_id() != core.params.cache
                    || slab.object_index(&core.params.layout, obj).is_err()
                {
                    return Err(VerifyError::CpuArrayCorrupt);
                }
                let Some(Some(node)) = nodes.get(slab.node()) else {
                    return Err(VerifyError::CpuArrayCorrupt);
                };
                // SAFETY: the slab is ours and listed on `node`, whose lock we hold.
                if unsafe { node.on_freelist(&core.params, slab, obj) } {
                    return Err(VerifyError::CpuArrayCorrupt);
                }
                // Duplicates: earlier entries of this CPU and all entries of earlier CPUs.
                for c2 in 0..=c {
                    // SAFETY: as above.
                    let other = unsafe { core.cpus.get(c2) };
                    let end = if c2 == c { i } else { other.len() };
                    if (0..end).any(|j| other.get(j) == Some(obj)) {
                        return Err(VerifyError::CpuArrayCorrupt);
                    }
                }
            }
            cached += cpu.len();
        }
        if core.params.layout.cpu_capacity > 0 {
            let live = allocs
                .wrapping_add(core.slow.node_allocs.load(Relaxed))
                .wrapping_sub(frees)
                .wrapping_sub(core.slow.node_frees.load(Relaxed)) as usize;
            if inuse != live.wrapping_add(cached) {
                return Err(VerifyError::LiveCountMismatch);
            }
        } else {
            let mut result = Ok(());
            for node in nodes.iter().flatten() {
                node.for_each_inuse(&core.params, |obj| {
                    // SAFETY: an allocated object of a listed slab, node lock held; callers
                    // may write the object but not its red zone.
                    if let Err(e) = unsafe { slab::verify_allocated_object(&core.params, obj) } {
                        result = Err(e);
                    }
                });
            }
            result?;
        }
        Ok(())
    }

    /// Drain, then release everything if no object is live and no RCU callback is pending;
    /// else report what is.
    fn teardown(&mut self) -> Result<(), LeakReport> {
        self.drain_all();
        let core = self.core();
        let mut out = DetachedList::new();
        {
            let mut nodes: [Option<MutexGuard<'_, NodeLists>>; MAX_NODES] =
                core::array::from_fn(|n| (n < core.nr_nodes).then(|| core.nodes[n].0.lock()));
            let pending = core.rcu_pending.load(Acquire);
            if pending > 0 || nodes.iter().flatten().any(|n| !n.is_idle()) {
                let mut owners = [None; LEAK_OWNERS];
                let mut k = 0;
                if core.params.layout.track_offset.is_some() {
                    for node in nodes.iter().flatten() {
                        node.for_each_inuse(&core.params, |obj| {
                            if k < LEAK_OWNERS {
                                // SAFETY: an in-use object of a listed slab under the node
                                // lock; its owner record is written only by alloc/free of
                                // this cache, which cannot run (we have `&mut self`).
                                owners[k] = unsafe { slab::read_track(&core.params, obj) };
                                k += 1;
                            }
                        });
                    }
                }
                return Err(LeakReport {
                    live_objects: nodes.iter().flatten().map(|n| n.inuse).sum(),
                    rcu_pending_slabs: pending,
                    owners,
                });
            }
            for node in nodes.iter_mut().flatten() {
                node.shrink_empty(0, &mut out);
            }
        }
        // `drain_all` released every empty slab already; anything found here goes the same
        // way, and in an RCU cache the descriptor must then wait for its callbacks.
        self.release(out);
        let pending = core.rcu_pending.load(Acquire);
        if pending > 0 {
            return Err(LeakReport {
                live_objects: 0,
                rcu_pending_slabs: pending,
                owners: [None; LEAK_OWNERS],
            });
        }
        loop {
            let page = core.headers.lock().pop_unused_page();
            let Some(page) = page else { break };
            // SAFETY: a header page from `self.src`, order 0, no slot in use.
            unsafe { self.src.free_pages(page, Order::new(0)) };
        }
        let (block, order) = (core.block, core.block_order);
        // SAFETY: the descriptor block came from `self.src` at this order; no slab refers to
        // it any more and the handle is not used after teardown succeeds.
        unsafe { self.src.free_pages(block, order) };
        Ok(())
    }

    /// Destroy the cache (`kmem_cache_destroy`): every slab and the descriptor go back to the
    /// page source. Fails with a [`LeakReport`] while objects are live (or slabs still wait for
    /// their RCU callback), handing the cache back unchanged apart from drained per-CPU
    /// arrays.
    pub fn destroy(mut self) -> Result<(), DestroyError<'a, S, P>> {
        match self.teardown() {
            Ok(()) => {
                core::mem::forget(self);
                Ok(())
            }
            Err(leak) => Err(DestroyError { cache: self, leak }),
        }
    }
}

impl<S: PageSource, P: IrqControl> Drop for Cache<'_, S, P> {
    /// Destroys the cache; if objects are still live, its memory is leaked rather than freed
    /// under them.
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl<S: PageSource, P: IrqControl> fmt::Display for Cache<'_, S, P> {
    /// The cache's `/proc/slabinfo` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.slabinfo(), f)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::testing::{TestPageSource, TestRcu};
    use crate::NodeStats;
    use mmkit_addr::host::HostPlatform;
    use std::string::ToString;
    use std::vec::Vec;

    fn env() -> (TestPageSource, HostPlatform) {
        (TestPageSource::new(8 << 20), HostPlatform::new(1))
    }

    fn fill(obj: NonNull<u8>, len: usize, byte: u8) {
        // SAFETY: tests only fill objects they own, within the object size.
        unsafe { core::ptr::write_bytes(obj.as_ptr(), byte, len) };
    }

    fn read(obj: NonNull<u8>, i: usize) -> u8 {
        // SAFETY: tests only read objects they own, within the object size.
        unsafe { obj.as_ptr().add(i).read() }
    }

    #[test]
    fn alloc_returns_distinct_aligned_objects_that_keep_their_bytes() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("t", 40).align(16), &src, &plat).unwrap();
        let objs: Vec<_> = (0..500).map(|_| c.alloc().unwrap()).collect();
        for (i, &o) in objs.iter().enumerate() {
            assert_eq!(o.as_ptr() as usize % 16, 0);
            fill(o, 40, i as u8);
        }
        let mut sorted: Vec<usize> = objs.iter().map(|o| o.as_ptr() as usize).collect();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[1] - w[0] >= 40),
            "objects overlap"
        );
        c.verify().unwrap();
        for (i, &o) in objs.iter().enumerate() {
            assert!(
                (0..40).all(|k| read(o, k) == i as u8),
                "object {i} lost its bytes"
            );
        }
        for o in objs {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o).unwrap() };
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 0);
    }

    #[test]
    fn free_reuses_most_recent_object_first() {
        let (src, plat) = env();
        let c = Cache::new(&CacheConfig::new("t", 64), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        assert_eq!(
            c.alloc().unwrap(),
            a,
            "per-CPU array is LIFO (cache-hot reuse)"
        );
    }

    #[test]
    fn free_rejects_pointers_that_are_not_objects_of_this_cache() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("a", 64), &src, &plat).unwrap();
        let other = Cache::new(&CacheConfig::new("b", 64), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        let b = other.alloc().unwrap();
        let mut local = 0u64;
        // SAFETY: every free below is refused, which changes and frees nothing.
        unsafe {
            assert_eq!(c.free(b), Err(FreeError::WrongCache));
            assert_eq!(c.free(a.add(8)), Err(FreeError::Misaligned));
            assert_eq!(
                c.free(NonNull::from(&mut local).cast()),
                Err(FreeError::NotSlabMemory)
            );
            let header = a.as_ptr() as usize & !4095;
            let tail = NonNull::new((header + 4096 - 8) as *mut u8).unwrap();
            assert_eq!(c.free(tail), Err(FreeError::NotAnObject));
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 1);
        // SAFETY: allocated above.
        unsafe {
            c.free(a).unwrap();
            other.free(b).unwrap();
        }
    }

    #[test]
    fn immediate_double_free_detected_on_fast_path() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("t", 32), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        // SAFETY: the second free is the misuse under test; it is refused.
        unsafe {
            c.free(a).unwrap();
            assert_eq!(c.free(a), Err(FreeError::DoubleFree));
        }
        c.verify().unwrap();
    }

    #[test]
    fn debug_cache_detects_any_double_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("t", 32).flags(CacheFlags::CONSISTENCY_CHECKS),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        let b = c.alloc().unwrap();
        // SAFETY: the repeated free of `a` is the misuse under test; it is refused.
        unsafe {
            c.free(a).unwrap();
            c.free(b).unwrap();
            assert_eq!(c.free(a), Err(FreeError::DoubleFree));
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 0);
    }

    #[derive(Default)]
    struct Counter;
    static CTOR_CALLS: AtomicUsize = AtomicUsize::new(0);
    fn ctor_0x5a(p: NonNull<u8>) {
        CTOR_CALLS.fetch_add(1, Relaxed);
        fill(p, 48, 0x5a);
    }

    #[test]
    fn constructor_runs_once_per_object_and_freeing_keeps_it_intact() {
        let _ = Counter;
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("ctor", 48).ctor(ctor_0x5a), &src, &plat).unwrap();
        assert!(c.layout().fp_outside);
        let before = CTOR_CALLS.load(Relaxed);
        let objs: Vec<_> = (0..3 * c.layout().objects)
            .map(|_| c.alloc().unwrap())
            .collect();
        let built = CTOR_CALLS.load(Relaxed) - before;
        assert_eq!(
            built % c.layout().objects,
            0,
            "constructor runs per slab object"
        );
        for &o in &objs {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        c.drain_all();
        for _ in 0..objs.len() {
            let o = c.alloc().unwrap();
            assert!(
                (0..48).all(|k| read(o, k) == 0x5a),
                "free pointer clobbered the object"
            );
        }
        c.verify().unwrap();
    }

    #[test]
    fn hardened_free_pointer_is_not_stored_in_the_clear() {
        let (src, plat) = env();
        let c = Cache::new(
            &CacheConfig::new("t", 64).random(0x1234_5678_9abc_def0),
            &src,
            &plat,
        )
        .unwrap();
        let first = c.alloc().unwrap();
        // Slot 0 was taken by the array refill's first object or later; find two adjacent free
        // slots through the node: allocate a full slab then free everything back.
        let objs: Vec<_> = (0..c.layout().objects * 2)
            .map(|_| c.alloc().unwrap())
            .collect();
        for &o in objs.iter().rev() {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        let mut c = c;
        c.drain_all();
        // Every free slot's link word must differ from any plain slot address.
        let lo = first.as_ptr() as usize & !4095;
        let fp = c.layout().fp_offset;
        let mut plain = 0;
        for i in 1..c.layout().objects {
            let slot = lo + i * c.layout().stride;
            // SAFETY: reading a free slot's link word inside a live slab we own.
            let word = unsafe { ((slot + fp) as *const usize).read_unaligned() };
            if word != 0 && word & !4095 == lo {
                plain += 1;
            }
        }
        assert_eq!(plain, 0, "free pointers stored in the clear");
        // SAFETY: allocated above.
        unsafe { c.free(first).unwrap() };
        c.verify().unwrap();
    }

    #[test]
    fn shrink_and_destroy_return_every_page() {
        let (src, plat) = env();
        let base = src.frames_in_use();
        let mut c = Cache::new(&CacheConfig::new("t", 256), &src, &plat).unwrap();
        let desc = src.frames_in_use() - base;
        let objs: Vec<_> = (0..1000).map(|_| c.alloc().unwrap()).collect();
        assert!(src.frames_in_use() > base + desc);
        for o in objs {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        c.drain_all();
        c.verify().unwrap();
        let st = c.stats();
        assert!(
            st.slabs <= c.min_partial(),
            "emptied slabs beyond min_partial released"
        );
        assert!(c.shrink() > 0 || st.slabs == 0);
        assert_eq!(
            src.frames_in_use(),
            base + desc,
            "only the descriptor remains"
        );
        c.destroy().unwrap();
        assert_eq!(src.frames_in_use(), base);
    }

    #[test]
    fn destroy_with_live_objects_reports_owner_and_keeps_cache() {
        let (src, plat) = env();
        let c = Cache::new(
            &CacheConfig::new("owned", 24).flags(CacheFlags::STORE_USER),
            &src,
            &plat,
        )
        .unwrap();
        let line = line!() + 1;
        let a = c.alloc().unwrap();
        let err = c.destroy().unwrap_err();
        assert_eq!(err.leak.live_objects, 1);
        let owner = err.leak.owners[0].expect("owner recorded");
        assert_eq!(owner.line(), line);
        assert!(owner.file().ends_with("cache.rs"));
        assert!(err.leak.to_string().contains("1 objects still allocated"));
        let c = err.cache;
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.destroy().unwrap();
    }

    #[test]
    fn red_zone_overwrite_refused_on_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("rz", 20).flags(CacheFlags::RED_ZONE),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        c.verify().unwrap();
        // One byte past the object: the classic off-by-one.
        // SAFETY: deliberately writing the red zone of our own slot (inside the slab).
        unsafe { a.as_ptr().add(20).write(0) };
        assert_eq!(c.verify(), Err(VerifyError::RedZoneCorrupted));
        // SAFETY: refused, nothing freed.
        let refused = unsafe { c.free(a) };
        assert_eq!(refused, Err(FreeError::RedZoneCorrupted { offset: 20 }));
        assert_eq!(c.live_objects(), 1, "object stays allocated as evidence");
        // SAFETY: restoring our own red zone byte.
        unsafe { a.as_ptr().add(20).write(crate::slab::RED_ACTIVE) };
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.verify().unwrap();
    }

    #[test]
    fn underflow_into_left_red_zone_refused_on_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("rz", 40).flags(CacheFlags::RED_ZONE),
            &src,
            &plat,
        )
        .unwrap();
        let objs: Vec<_> = (0..3).map(|_| c.alloc().unwrap()).collect();
        for &a in &objs {
            // One byte before the object: an underflow.
            // SAFETY: deliberately writing the left red zone of our own object.
            unsafe { a.as_ptr().sub(1).write(0) };
            assert_eq!(c.verify(), Err(VerifyError::RedZoneCorrupted));
            // SAFETY: refused, nothing freed.
            let refused = unsafe { c.free(a) };
            assert_eq!(refused, Err(FreeError::RedZoneCorrupted { offset: -1 }));
            // SAFETY: restoring the byte we broke.
            unsafe { a.as_ptr().sub(1).write(crate::slab::RED_ACTIVE) };
            c.verify().unwrap();
        }
        for a in objs {
            // SAFETY: allocated above.
            unsafe { c.free(a).unwrap() };
        }
        c.verify().unwrap();
    }

    #[test]
    fn use_after_free_write_caught_by_poison() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("p", 64).flags(CacheFlags::POISON),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.verify().unwrap();
        // SAFETY: deliberate use-after-free write into a poisoned slot of a live slab.
        unsafe { a.as_ptr().add(3).write(0) };
        assert_eq!(c.verify(), Err(VerifyError::PoisonCorrupted));
        let again = c.alloc().unwrap();
        assert_eq!(again, a);
        assert_eq!(c.stats().poison_corruptions, 1);
        // SAFETY: allocated above.
        unsafe { c.free(again).unwrap() };
        c.verify().unwrap();
    }

    #[test]
    fn reclaim_account_takes_reclaimable_pages() {
        let (src, plat) = env();
        let c = Cache::new(
            &CacheConfig::new("r", 64).flags(CacheFlags::RECLAIM_ACCOUNT),
            &src,
            &plat,
        )
        .unwrap();
        assert_eq!(src.reclaimable_blocks(), 0);
        let a = c.alloc().unwrap();
        assert_eq!(src.reclaimable_blocks(), 1);
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
    }

    /// CPU 0 on node 0, CPU 1 on node 1; run `f` on a thread bound to `cpu`.
    fn on_cpu<R: Send>(plat: &HostPlatform, cpu: usize, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                plat.bind_current_thread(cpu);
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn slabs_are_filed_under_the_node_of_their_frames() {
        let src = TestPageSource::numa(8 << 20, 2, &[0, 1]);
        let plat = HostPlatform::new(2);
        let mut c = Cache::new(&CacheConfig::new("numa", 256), &src, &plat).unwrap();
        assert_eq!(c.nr_nodes(), 2);
        let node_of = |o: NonNull<u8>| src.pfn_node(src.virt_to_pfn(o).unwrap());
        let far: Vec<usize> = on_cpu(&plat, 1, || {
            (0..100)
                .map(|_| c.alloc().unwrap().as_ptr() as usize)
                .collect()
        });
        let far: Vec<NonNull<u8>> = far
            .into_iter()
            .map(|a| NonNull::new(a as *mut u8).unwrap())
            .collect();
        assert!(
            far.iter().all(|&o| node_of(o) == 1),
            "CPU 1 allocates on node 1"
        );
        assert_eq!(c.node_stats(0).unwrap(), NodeStats::default());
        let n1 = c.node_stats(1).unwrap();
        assert_eq!(n1.active_objects, 100 + c.stats().cpu_cached);
        assert!(c.node_stats(2).is_none());
        // CPU 0 frees node-1 objects: they go straight back to their slabs, not into
        // CPU 0's array, where they would be handed out again as node-0 memory.
        plat.bind_current_thread(0);
        let cached = c.stats().cpu_cached;
        let slow = c.stats().free_slowpath;
        for &o in &far[..10] {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o).unwrap() };
        }
        assert_eq!(c.stats().cpu_cached, cached);
        assert_eq!(c.stats().free_slowpath, slow + 10);
        let near = c.alloc().unwrap();
        assert_eq!(node_of(near), 0);
        c.verify().unwrap();
        // SAFETY: allocated above, freed once.
        unsafe { c.free(near).unwrap() };
        for &o in &far[10..] {
            // SAFETY: as above.
            unsafe { c.free(o).unwrap() };
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 0);
        c.drain_all();
        c.destroy().unwrap();
        assert_eq!(src.frames_in_use(), 0);
    }

    #[test]
    fn alloc_node_serves_the_asked_node_and_falls_back_when_it_is_full() {
        let src = TestPageSource::numa(4 << 20, 2, &[0, 1]);
        let plat = HostPlatform::new(2);
        plat.bind_current_thread(0);
        let mut c = Cache::new(&CacheConfig::new("node", 512), &src, &plat).unwrap();
        let node_of = |o: NonNull<u8>| src.pfn_node(src.virt_to_pfn(o).unwrap());
        let first = [
            c.alloc_node(1).unwrap(),
            c.alloc_node(0).unwrap(),
            c.alloc_node(99).unwrap(),
        ];
        assert_eq!(node_of(first[0]), 1);
        assert_eq!(node_of(first[1]), 0);
        assert_eq!(node_of(first[2]), 1, "out of range: the last node");
        // Fill node 1 with pages taken behind the cache's back.
        let mut hog = Vec::new();
        while let Some(b) = src.alloc_pages_node(1, Order::new(0), Gfp::empty()) {
            if src.pfn_node(b.pfn) != 1 {
                // SAFETY: just allocated from `src` at order 0.
                unsafe { src.free_pages(b, Order::new(0)) };
                break;
            }
            hog.push(b);
        }
        let mut objs = Vec::new();
        let mut fell_back = false;
        for _ in 0..200 {
            let o = c.alloc_node(1).unwrap();
            fell_back |= node_of(o) == 0;
            objs.push(o);
        }
        assert!(
            fell_back,
            "a full node falls back to another instead of failing"
        );
        c.verify().unwrap();
        for o in objs {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        for b in hog {
            // SAFETY: allocated above at order 0.
            unsafe { src.free_pages(b, Order::new(0)) };
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 3);
        for o in first {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 0);
    }

    #[test]
    fn off_slab_headers_fill_slabs_and_come_and_go_with_them() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("4k", 4096), &src, &plat).unwrap();
        assert!(c.layout().off_slab);
        let per_slab = c.layout().objects;
        assert_eq!(per_slab * 4096, c.layout().slab_bytes());
        let n = per_slab * (slab::HEADERS_PER_PAGE + 2);
        let objs: Vec<_> = (0..n).map(|_| c.alloc().unwrap()).collect();
        for (i, &o) in objs.iter().enumerate() {
            assert_eq!(o.as_ptr() as usize % 4096, 0, "naturally aligned");
            fill(o, 4096, i as u8);
        }
        assert_eq!(c.stats().header_pages, 2, "31 headers per page");
        c.verify().unwrap();
        // The header is outside the slab, in a page that is not slab memory: a free of a
        // pointer into it is refused.
        let word = src.page_private(src.virt_to_pfn(objs[0]).unwrap());
        let hdr = NonNull::new((word & !slab::PRIVATE_TAG_MASK) as usize as *mut u8).unwrap();
        let slab_start = objs[0].as_ptr() as usize & !(c.layout().slab_bytes() - 1);
        assert!(
            !(slab_start..slab_start + c.layout().slab_bytes()).contains(&(hdr.as_ptr() as usize))
        );
        // SAFETY: refused without any change.
        assert_eq!(unsafe { c.free(hdr) }, Err(FreeError::NotSlabMemory));
        for (i, &o) in objs.iter().enumerate() {
            assert!((0..4096).all(|k| read(o, k) == i as u8), "object {i}");
        }
        for o in objs {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o).unwrap() };
        }
        c.shrink();
        c.verify().unwrap();
        assert_eq!(c.stats().slabs, 0);
        assert_eq!(
            c.stats().header_pages,
            1,
            "one header page kept for the next slab"
        );
        c.destroy().unwrap();
        assert_eq!(src.frames_in_use(), 0);
    }

    #[test]
    fn shrink_drains_every_cpus_array() {
        let src = TestPageSource::new(8 << 20);
        let plat = HostPlatform::new(2);
        let mut c = Cache::new(&CacheConfig::new("s", 64), &src, &plat).unwrap();
        let desc = src.frames_in_use();
        on_cpu(&plat, 1, || {
            let objs: Vec<_> = (0..50).map(|_| c.alloc().unwrap()).collect();
            for o in objs {
                // SAFETY: allocated above.
                unsafe { c.free(o).unwrap() };
            }
        });
        assert!(c.stats().cpu_cached > 0, "CPU 1 keeps freed objects cached");
        plat.bind_current_thread(0);
        let released = c.shrink();
        assert_eq!(c.stats().cpu_cached, 0, "CPU 1's array drained from CPU 0");
        assert!(released > 0);
        assert_eq!(src.frames_in_use(), desc, "every slab went back");
        c.verify().unwrap();
    }

    #[test]
    fn typesafe_by_rcu_keeps_pages_until_grace_period() {
        let (src, plat) = env();
        let rcu = TestRcu::new();
        let config = CacheConfig::new("rcu", 128)
            .flags(CacheFlags::TYPESAFE_BY_RCU)
            .rcu(&rcu);
        assert_eq!(
            Cache::new(
                &CacheConfig::new("x", 8).flags(CacheFlags::TYPESAFE_BY_RCU),
                &src,
                &plat
            )
            .unwrap_err(),
            CreateError::RcuWithoutCallback
        );
        let mut c = Cache::new(&config, &src, &plat).unwrap();
        assert!(c.layout().fp_outside);
        let objs: Vec<_> = (0..200).map(|_| c.alloc().unwrap()).collect();
        let held = src.frames_in_use();
        for o in objs {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        c.drain_all();
        c.verify().unwrap();
        let pending = c.stats().rcu_pending_slabs;
        assert!(pending > 0);
        assert_eq!(
            rcu.pending(),
            pending,
            "every released slab went to call_rcu"
        );
        assert_eq!(
            src.frames_in_use(),
            held,
            "no page freed before the grace period"
        );
        // The slab memory still reads as this cache's: a reader that found an object under
        // rcu_read_lock sees the slab header and freelist intact.
        let c = match c.destroy() {
            Err(e) => {
                assert_eq!(e.leak.rcu_pending_slabs, pending);
                assert_eq!(e.leak.live_objects, 0);
                e.cache
            }
            Ok(()) => panic!("destroyed with RCU callbacks pending"),
        };
        // SAFETY: no readers exist in this test.
        assert_eq!(unsafe { rcu.advance() }, pending);
        assert_eq!(c.stats().rcu_pending_slabs, 0);
        assert_eq!(c.stats().slabs_freed, pending as u64);
        assert!(src.frames_in_use() < held);
        let mut c = c;
        c.verify().unwrap();
        src.buddy().verify().unwrap();
        c.destroy().unwrap();
        assert_eq!(
            src.frames_in_use(),
            0,
            "descriptor and slabs all back in the buddy"
        );
    }

    #[test]
    fn out_of_memory_is_an_error_and_bulk_is_all_or_nothing() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("t", 1024), &src, &plat).unwrap();
        let first = c.alloc().unwrap();
        src.set_limit(src.frames_in_use());
        let mut got = Vec::new();
        while let Ok(o) = c.alloc() {
            got.push(o);
        }
        assert_eq!(c.alloc(), Err(AllocError::OutOfMemory));
        for o in got.drain(..) {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
        let live = c.live_objects();
        let mut out = [None; 64];
        let room = c.layout().objects - 1;
        assert!(room < 64);
        assert_eq!(c.alloc_bulk(&mut out), Err(AllocError::OutOfMemory));
        assert!(out.iter().all(Option::is_none));
        assert_eq!(c.live_objects(), live);
        c.verify().unwrap();
        let mut few = [None; 4];
        c.alloc_bulk(&mut few).unwrap();
        let objs: Vec<_> = few.iter().map(|o| o.unwrap()).collect();
        // SAFETY: allocated above.
        unsafe {
            c.free_bulk(&objs).unwrap();
            c.free(first).unwrap();
        }
        c.verify().unwrap();
        assert_eq!(c.alloc_bulk(&mut []), Ok(()));
    }

    #[test]
    fn free_bulk_refuses_whole_batch_on_bad_pointer() {
        let (src, plat) = env();
        let mut c = Cache::new(&CacheConfig::new("t", 64), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        let b = c.alloc().unwrap();
        // SAFETY: refused batch frees nothing.
        let refused = unsafe { c.free_bulk(&[a, b.add(1)]) };
        assert_eq!(refused, Err(FreeError::Misaligned));
        assert_eq!(c.live_objects(), 2);
        // SAFETY: allocated above.
        unsafe { c.free_bulk(&[a, b]).unwrap() };
        c.verify().unwrap();
    }

    #[test]
    fn consecutive_slabs_get_different_colours() {
        let (src, plat) = env();
        let c = Cache::new(&CacheConfig::new("col", 200), &src, &plat).unwrap();
        assert!(c.layout().colours > 1);
        let n = c.layout().objects;
        let objs: Vec<_> = (0..n * 3).map(|_| c.alloc().unwrap()).collect();
        let slab_bytes = c.layout().slab_bytes();
        let mut offsets: Vec<usize> = objs
            .iter()
            .map(|o| (o.as_ptr() as usize % slab_bytes) % c.layout().stride)
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert!(
            offsets.len() >= 2,
            "all slabs share one colour: {offsets:?}"
        );
        for o in objs {
            // SAFETY: allocated above.
            unsafe { c.free(o).unwrap() };
        }
    }

    #[test]
    fn creation_rejects_bad_configs() {
        let (src, plat) = env();
        let long = "a-name-that-is-much-longer-than-32-bytes";
        assert_eq!(
            Cache::new(&CacheConfig::new(long, 8), &src, &plat).unwrap_err(),
            CreateError::NameTooLong
        );
        assert_eq!(
            Cache::new(&CacheConfig::new("z", 0), &src, &plat).unwrap_err(),
            CreateError::Layout(crate::layout::LayoutError::ZeroSize)
        );
        src.set_limit(0);
        assert_eq!(
            Cache::new(&CacheConfig::new("z", 8), &src, &plat).unwrap_err(),
            CreateError::OutOfMemory
        );
    }

    #[test]
    fn stats_split_fast_and_slow_paths_and_slabinfo_prints_them() {
        let (src, plat) = env();
        let c = Cache::new(&CacheConfig::new("st", 64), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        let b = c.alloc().unwrap();
        let s = c.stats();
        assert_eq!(
            (s.alloc_slowpath, s.alloc_fastpath, s.free_fastpath),
            (1, 1, 1)
        );
        assert_eq!(s.live_objects, 1);
        assert_eq!(s.slabs_allocated, 1);
        assert_eq!((s.refills, s.flushes), (1, 0));
        let line = c.to_string();
        assert!(line.starts_with("st "));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[2], s.objects_per_slab.to_string());
        assert_eq!(cols[3], "64");
        // SAFETY: allocated above.
        unsafe { c.free(b).unwrap() };
    }

    #[test]
    fn drop_with_live_objects_leaks_instead_of_freeing() {
        let (src, plat) = env();
        let c = Cache::new(&CacheConfig::new("t", 64), &src, &plat).unwrap();
        let a = c.alloc().unwrap();
        fill(a, 64, 7);
        drop(c);
        assert!(
            src.frames_in_use() > 0,
            "pages under a live object stay allocated"
        );
        assert_eq!(read(a, 63), 7);
    }
}
