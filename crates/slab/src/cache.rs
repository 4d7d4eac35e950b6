//! Object caches: `kmem_cache_create` / `alloc` / `free` / `shrink` / `destroy`.
//!
//! ## Paths
//! * **Fast path** (caches without debug flags): inside an `IrqGuard`, pop from or push to the
//!   current CPU's array. No shared lock, no shared cache line, no slab metadata touched on
//!   allocation. A free first finds the object's slab through the page source's private word
//!   (an O(1) lookup that catches frees of foreign, misaligned and non-slab pointers) and
//!   rejects the object if it is the one most recently freed on this CPU (SLUB's naive
//!   double-free check).
//! * **Refill / flush**: an empty array takes up to `batch` objects from the node's partial
//!   slabs under the node lock; a full array gives its `batch` oldest objects back to their
//!   slabs. A free from another CPU is simply absorbed by that CPU's array: arrays hold any
//!   object of the cache, and flushing returns each to its own slab.
//! * **Grow**: with no partial slab, the guard is dropped, a slab is taken from the page
//!   source and formatted (constructors run here, with interrupts "on"), then published on
//!   the partial list and the allocation retried.
//! * **Debug path** (any of `CONSISTENCY_CHECKS`, `RED_ZONE`, `POISON`, `STORE_USER`): no
//!   arrays; every allocation and free takes the node lock and runs the checks (freelist walk
//!   for double frees, red zone, poison, owner records), as SLUB's debug caches do.
//!
//! ## Slab lifetime
//! A slab that becomes empty stays on the partial list while the node has at most
//! `min_partial` partial slabs (`clamp(ilog2(size) / 2, 5, 10)`, SLUB's `set_min_partial`),
//! otherwise it is released; `shrink` releases every empty slab. In a `TYPESAFE_BY_RCU`
//! cache, "released" means parked with a grace-period cookie; the pages go back only once
//! [`GracePeriod::elapsed`] says so (checked on grow, shrink and destroy).
//!
//! ## Lock order
//! `IrqGuard` (per-CPU exclusion) → node lock (`spin::Mutex<NodeLists>`) → page source
//! (which may take its own zone locks). The page source is never called with the node lock
//! held; slabs are formatted and released outside it.
//!
//! ## Nodes
//! `NodeLists` is per node, as SLUB's `kmem_cache_node`. The platform hooks in mmkit-addr do
//! not describe NUMA nodes yet, so a cache has exactly one; when they do, the descriptor
//! holds one `NodeLists` per node and slabs go to the node the page source says their frames
//! belong to.
//!
//! ## Storage
//! The descriptor lives in a block from the page source (`percpu.rs`); the [`Cache`] value is a
//! handle that may move freely. Slab headers point at the descriptor, which is how `kfree`
//! finds a cache from a pointer.

use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order};
use spin::Mutex;

pub use crate::config::{CacheConfig, Ctor};
use crate::error::{AllocError, CreateError, FreeError, VerifyError};
use crate::flags::{CacheFlags, Gfp};
use crate::layout::SlabLayout;
use crate::page_source::{GracePeriod, PageBlock, PageSource};
use crate::percpu::{self, CpuArrays, CpuRef};
use crate::slab::{self, DetachedList, NodeLists, PageKind, SlabParams, SlabPtr};
use crate::stats::{CacheStats, SlabInfoLine};

/// Longest cache name, in bytes.
pub const NAME_MAX: usize = 32;
/// SLUB's bounds on the number of partial slabs a node keeps (`MIN_PARTIAL`, `MAX_PARTIAL`).
pub const PARTIAL_BOUNDS: (usize, usize) = (5, 10);
/// Owners listed in a [`LeakReport`].
pub const LEAK_OWNERS: usize = 4;

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
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

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
    node: Mutex<NodeLists>,
    cpus: CpuArrays,
    block: PageBlock,
    block_order: Order,
    slow: SlowCounters,
}

static_assertions::const_assert!(core::mem::align_of::<CacheCore>() <= 4096);

/// Why `destroy` refused: objects are still live (or slabs wait for a grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakReport {
    /// Objects still allocated.
    pub live_objects: usize,
    /// Slabs still waiting for an RCU grace period.
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
    grace: Option<&'a dyn GracePeriod>,
}

// SAFETY: the descriptor is shared state protected by the node lock (lists), atomics
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

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Create a cache (`kmem_cache_create`). Takes one block from `src` for the descriptor
    /// and per-CPU arrays; slabs come later, on demand.
    pub fn new(config: &CacheConfig<'a>, src: &'a S, platform: &'a P) -> Result<Self, CreateError> {
        if config.name.len() > NAME_MAX {
            return Err(CreateError::NameTooLong);
        }
        if config.flags.contains(CacheFlags::TYPESAFE_BY_RCU) && config.grace.is_none() {
            return Err(CreateError::RcuWithoutGracePeriod);
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
        let block = src
            .alloc_pages(block_order, Gfp::empty())
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
        // SAFETY: `block` is ours, page aligned and `block_bytes` long (order from its size);
        // it stays allocated until `teardown` frees it after the last use.
        let core = unsafe {
            percpu::place_descriptor(block, nr_cpus, cap, |cpus| CacheCore {
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
                node: Mutex::new(NodeLists::new()),
                cpus,
                block,
                block_order,
                slow: SlowCounters::default(),
            })
        };
        Ok(Self {
            core,
            src,
            platform,
            grace: config.grace,
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

    pub(crate) fn id(&self) -> usize {
        self.core().params.cache
    }

    pub(crate) fn kmalloc_slot(&self) -> Option<u16> {
        self.core().kmalloc_slot
    }

    /// Allocate one object (`kmem_cache_alloc`). Its contents are whatever the constructor
    /// (or the previous owner) left; with a constructor, a constructed object.
    #[track_caller]
    #[inline]
    pub fn alloc(&self) -> Result<NonNull<u8>, AllocError> {
        if self.core().params.layout.cpu_capacity == 0 {
            return self.alloc_debug(Location::caller());
        }
        loop {
            if let Some(obj) = self.alloc_cached() {
                return Ok(obj);
            }
            self.grow()?;
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

    /// Pop from this CPU's array, refilling it from the node once.
    #[inline]
    fn alloc_cached(&self) -> Option<NonNull<u8>> {
        let core = self.core();
        let guard = self.platform.irq_save();
        // SAFETY: we hold this CPU's guard of the platform the arrays were sized for, and do
        // not re-enter the cache while `cpu` lives (no callbacks below).
        let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
        if let Some(obj) = cpu.pop() {
            cpu.count_alloc(true);
            return Some(obj);
        }
        let want = core.batch.min(cpu.room());
        {
            let mut node = core.node.lock();
            for _ in 0..want {
                match node.alloc_object(&core.params) {
                    Some(o) => {
                        cpu.push(o);
                    }
                    None => break,
                }
            }
        }
        let obj = cpu.pop()?;
        cpu.count_alloc(false);
        inc(&core.slow.refills);
        Some(obj)
    }

    /// Take a slab from the page source and publish it on the partial list.
    fn grow(&self) -> Result<(), AllocError> {
        let core = self.core();
        self.reap_rcu();
        let Some(block) = self.src.alloc_pages(core.params.layout.order, core.gfp) else {
            inc(&core.slow.alloc_failures);
            return Err(AllocError::OutOfMemory);
        };
        let colour = core.colour.fetch_add(1, Relaxed);
        // SAFETY: a fresh block of the slab order from our source, owned here.
        let slab = unsafe { slab::format_slab(self.src, block, &core.params, colour) };
        core.node.lock().add_new_slab(slab);
        inc(&core.slow.slabs_allocated);
        Ok(())
    }

    fn alloc_debug(&self, owner: &'static Location<'static>) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        loop {
            {
                let mut node = core.node.lock();
                if let Some(obj) = node.alloc_object(&core.params) {
                    // SAFETY: just taken off our freelist, under the node lock.
                    if !unsafe { slab::debug_on_alloc(&core.params, obj, owner) } {
                        inc(&core.slow.poison_corruptions);
                    }
                    inc(&core.slow.debug_allocs);
                    return Ok(obj);
                }
            }
            self.grow()?;
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
    /// `obj` was returned by an allocation from this cache and is not used after this call.
    /// (Caches with debug flags catch every double free; others catch an immediate one only,
    /// so the contract stands.)
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
        self.free_cached(obj)
    }

    /// Push a validated object on this CPU's array, flushing a batch first if it is full.
    #[inline]
    fn free_cached(&self, obj: NonNull<u8>) -> Result<(), FreeError> {
        let core = self.core();
        let mut released = DetachedList::new();
        {
            let guard = self.platform.irq_save();
            // SAFETY: as in `alloc_cached`.
            let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
            if cpu.last() == Some(obj) {
                return Err(FreeError::DoubleFree);
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

    /// Give the `n` oldest objects of `cpu` back to their slabs; emptied slabs beyond
    /// `min_partial` go to `out` (or wait for RCU).
    fn flush(&self, cpu: &mut CpuRef<'_>, n: usize, out: &mut DetachedList) {
        if n == 0 || cpu.len() == 0 {
            return;
        }
        let core = self.core();
        let cookie = self.grace.map(|g| g.snapshot());
        let rcu = core.flags.contains(CacheFlags::TYPESAFE_BY_RCU);
        inc(&core.slow.flushes);
        let mut node = core.node.lock();
        cpu.take_oldest(n, |obj| {
            // SAFETY: objects in our arrays are objects of this cache counted in their slab's
            // `inuse`, so the slab is live; we hold the node lock.
            let PageKind::Slab(slab) = (unsafe { slab::lookup(self.src, obj) }) else {
                return;
            };
            // SAFETY: the slab is on our lists and `obj` is one of its in-use objects.
            let empty = unsafe { node.free_object(&core.params, slab, obj) };
            if empty && node.nr_partial > core.min_partial {
                match (rcu, cookie) {
                    // SAFETY: empty slab on our partial list.
                    (true, Some(c)) => unsafe { node.park_for_rcu(slab, c) },
                    // SAFETY: as above.
                    _ => unsafe { node.detach_empty(slab, out) },
                }
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
        let cookie = self.grace.map(|g| g.snapshot());
        let mut released = DetachedList::new();
        {
            let mut node = core.node.lock();
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
                match cookie.filter(|_| core.flags.contains(CacheFlags::TYPESAFE_BY_RCU)) {
                    // SAFETY: empty slab on our partial list.
                    Some(c) => unsafe { node.park_for_rcu(slab, c) },
                    // SAFETY: as above.
                    None => unsafe { node.detach_empty(slab, &mut released) },
                }
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
        while i < out.len() {
            if core.params.layout.cpu_capacity == 0 {
                match self.alloc_debug(Location::caller()) {
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
                    let want = core.batch.min(cpu.room());
                    let mut got = 0;
                    let mut node = core.node.lock();
                    while got < want {
                        let Some(o) = node.alloc_object(&core.params) else {
                            break;
                        };
                        cpu.push(o);
                        got += 1;
                    }
                    if got == 0 {
                        break;
                    }
                    inc(&core.slow.refills);
                }
            }
            if i < out.len() {
                if let Err(e) = self.grow() {
                    return Err(self.undo_bulk(out, i, e));
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

    /// Give this CPU's cached objects back to their slabs and release every empty slab (and
    /// RCU-parked slabs whose grace period has elapsed) to the page source
    /// (`kmem_cache_shrink`). Other CPUs' arrays are drained by [`drain_all`](Self::drain_all).
    /// Returns the number of frames released.
    pub fn shrink(&self) -> u64 {
        let core = self.core();
        let mut out = DetachedList::new();
        if core.params.layout.cpu_capacity > 0 {
            let guard = self.platform.irq_save();
            // SAFETY: as in `alloc_cached`.
            let mut cpu = unsafe { core.cpus.get(guard.cpu()) };
            let n = cpu.len();
            self.flush(&mut cpu, n, &mut out);
        }
        self.shrink_nodes(&mut out)
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
        self.shrink_nodes(&mut out)
    }

    fn shrink_nodes(&self, out: &mut DetachedList) -> u64 {
        let core = self.core();
        let rcu = core
            .flags
            .contains(CacheFlags::TYPESAFE_BY_RCU)
            .then(|| self.grace.map(|g| g.snapshot()))
            .flatten();
        core.node.lock().shrink_empty(0, rcu, out);
        let n = out.len() as u64 + self.reap_rcu();
        self.release(core::mem::replace(out, DetachedList::new()));
        n * core.params.layout.order.pages()
    }

    /// Release RCU-parked slabs whose grace period has elapsed; returns how many.
    fn reap_rcu(&self) -> u64 {
        let Some(grace) = self.grace else { return 0 };
        let core = self.core();
        let mut out = DetachedList::new();
        {
            let mut node = core.node.lock();
            if node.nr_rcu == 0 {
                return 0;
            }
            node.reap_rcu(|c| grace.elapsed(c), &mut out);
        }
        let n = out.len() as u64;
        self.release(out);
        n
    }

    fn release(&self, mut list: DetachedList) {
        let core = self.core();
        while let Some(s) = list.pop(&core.params.layout) {
            // SAFETY: every slab of this cache comes from `self.src`.
            unsafe { slab::release_slab(self.src, s) };
            inc(&core.slow.slabs_freed);
        }
    }

    /// Objects held by callers.
    pub fn live_objects(&self) -> usize {
        let s = self.stats();
        s.live_objects
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let core = self.core();
        let l = &core.params.layout;
        let (slabs, rcu, inuse) = {
            let node = core.node.lock();
            (node.nr_slabs(), node.nr_rcu, node.inuse)
        };
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
            rcu_pending_slabs: rcu,
            total_objects: slabs * l.objects,
            active_objects: inuse,
            cpu_cached: cached,
            live_objects: inuse.saturating_sub(cached),
            cpu_limit: core.cpus.capacity(),
            batch: core.batch,
            alloc_fastpath: fast_a,
            alloc_slowpath: allocs.wrapping_sub(fast_a) + slow.debug_allocs.load(Relaxed),
            free_fastpath: fast_f,
            free_slowpath: frees.wrapping_sub(fast_f) + slow.debug_frees.load(Relaxed),
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
    /// two freelists or on a freelist and in a per-CPU array, lists and counters agree, the
    /// per-CPU counters add up, and (debug caches) poison and red zones are intact. Needs
    /// exclusive access so the per-CPU arrays hold still.
    pub fn verify(&mut self) -> Result<(), VerifyError> {
        let core = self.core();
        let node = core.node.lock();
        let summary = node.verify(&core.params)?;
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
                // SAFETY: we hold the node lock, so no listed slab goes away; an object of a
                // live slab has a live header.
                let PageKind::Slab(slab) = (unsafe { slab::lookup(self.src, obj) }) else {
                    return Err(VerifyError::CpuArrayCorrupt);
                };
                if slab.cache_id() != core.params.cache
                    || slab.object_index(&core.params.layout, obj).is_err()
                {
                    return Err(VerifyError::CpuArrayCorrupt);
                }
                // SAFETY: the slab is ours and listed; node lock held.
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
            let live = allocs.wrapping_sub(frees) as usize;
            if summary.inuse != live.wrapping_add(cached) {
                return Err(VerifyError::LiveCountMismatch);
            }
        } else {
            let mut result = Ok(());
            node.for_each_inuse(&core.params, |obj| {
                // SAFETY: an allocated object of a listed slab, node lock held; callers may
                // write the object but not its red zone.
                if let Err(e) = unsafe { slab::verify_allocated_object(&core.params, obj) } {
                    result = Err(e);
                }
            });
            result?;
        }
        Ok(())
    }

    /// Drain, then release everything if no object is live; else report what is.
    fn teardown(&mut self) -> Result<(), LeakReport> {
        self.drain_all();
        self.reap_rcu();
        let core = self.core();
        let mut out = DetachedList::new();
        {
            let mut node = core.node.lock();
            if !node.detach_all_if_empty(&mut out) {
                let mut owners = [None; LEAK_OWNERS];
                let mut k = 0;
                if core.params.layout.track_offset.is_some() {
                    node.for_each_inuse(&core.params, |obj| {
                        if k < LEAK_OWNERS {
                            // SAFETY: an in-use object of a listed slab under the node lock;
                            // its owner record is written only by alloc/free of this cache,
                            // which cannot run (we have `&mut self`).
                            owners[k] = unsafe { slab::read_track(&core.params, obj) };
                            k += 1;
                        }
                    });
                }
                return Err(LeakReport {
                    live_objects: node.inuse,
                    rcu_pending_slabs: node.nr_rcu,
                    owners,
                });
            }
        }
        self.release(out);
        let (block, order) = (core.block, core.block_order);
        // SAFETY: the descriptor block came from `self.src` at this order; no slab refers to
        // it any more and the handle is not used after teardown succeeds.
        unsafe { self.src.free_pages(block, order) };
        Ok(())
    }

    /// Destroy the cache (`kmem_cache_destroy`): every slab and the descriptor go back to the
    /// page source. Fails with a [`LeakReport`] while objects are live (or slabs still wait for
    /// a grace period), handing the cache back unchanged apart from drained per-CPU arrays.
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
    use crate::testing::{TestGracePeriod, TestPageSource};
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

    #[test]
    fn typesafe_by_rcu_keeps_pages_until_grace_period() {
        let (src, plat) = env();
        let gp = TestGracePeriod::new();
        let config = CacheConfig::new("rcu", 128)
            .flags(CacheFlags::TYPESAFE_BY_RCU)
            .grace_period(&gp);
        assert_eq!(
            Cache::new(
                &CacheConfig::new("x", 8).flags(CacheFlags::TYPESAFE_BY_RCU),
                &src,
                &plat
            )
            .unwrap_err(),
            CreateError::RcuWithoutGracePeriod
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
        assert!(c.stats().rcu_pending_slabs > 0);
        assert_eq!(
            src.frames_in_use(),
            held,
            "no page freed before the grace period"
        );
        // SAFETY: no readers exist in this test.
        unsafe { gp.advance() };
        c.shrink();
        assert_eq!(c.stats().rcu_pending_slabs, 0);
        assert!(src.frames_in_use() < held);
        c.verify().unwrap();
        c.destroy().unwrap();
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
