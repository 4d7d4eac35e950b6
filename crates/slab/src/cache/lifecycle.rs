//! A cache's life: [`Cache::new`] places the descriptor and per-CPU arrays in one block from
//! the page source; [`Cache::shrink`] and [`Cache::drain_all`] give cached objects back and
//! release empty slabs; [`Cache::destroy`] releases everything once no object is live and no
//! RCU callback is pending, else hands the cache back with a [`LeakReport`]. `Drop` runs the
//! same teardown and, if it cannot release, leaks the memory rather than free it under live
//! objects.

use core::fmt;
use core::mem::size_of;
use core::panic::Location;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order};
use spin::{Mutex, MutexGuard};

use super::{
    Cache, CacheConfig, CacheCore, NodeSlot, SlowCounters, LEAK_OWNERS, MAX_DEPOT_MAGS, MAX_NODES,
    MIN_DEPOT_MAGS, NAME_MAX, PARTIAL_BOUNDS,
};
use crate::error::CreateError;
use crate::flags::{CacheFlags, Gfp};
use crate::layout::SlabLayout;
use crate::page_source::PageSource;
use crate::percpu;
use crate::slab::{self, DetachedList, HeaderPool, NodeLists, SlabParams};

static RANDOM_COUNTER: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);

/// splitmix64, to spread a seed into a freelist secret.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Create a cache (`kmem_cache_create`). Takes one block from `src` for the descriptor
    /// and per-CPU arrays; slabs come later, on demand.
    pub fn new(config: &CacheConfig<'a>, src: &'a S, platform: &'a P) -> Result<Self, CreateError> {
        Self::new_in_context(config, src, platform, Gfp::empty())
    }

    /// [`new`](Self::new), taking the descriptor block with `ctx`'s context bits (a kmalloc
    /// cache created on its first use, from whatever context that is).
    pub(crate) fn new_in_context(
        config: &CacheConfig<'a>,
        src: &'a S,
        platform: &'a P,
        ctx: Gfp,
    ) -> Result<Self, CreateError> {
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
        let nr_nodes = src.nr_nodes().clamp(1, MAX_NODES);
        // The depots take the block's slack past the CPU arrays, with room for at least
        // `MIN_DEPOT_MAGS` magazines per node.
        let batch = cap.div_ceil(2);
        let magazine = batch * size_of::<*mut u8>();
        let depot_min = nr_nodes * MIN_DEPOT_MAGS * magazine;
        let block_order =
            Order::for_bytes((bytes + depot_min) as u64).ok_or(CreateError::OutOfMemory)?;
        let home = src.cpu_node(platform.current_cpu()).min(nr_nodes - 1);
        let block = src
            .alloc_pages_node(home, block_order, ctx & Gfp::CONTEXT)
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
        let slack = block_order.bytes() as usize - bytes;
        let mags = if batch == 0 {
            0
        } else {
            (slack / (nr_nodes * magazine)).min(MAX_DEPOT_MAGS)
        };
        // SAFETY: `[bytes, bytes + nr_nodes * mags * batch * 8)` is inside the block (the
        // slack), 8-aligned (`block_bytes` is a multiple of 8), and used by nothing else.
        let depots = unsafe {
            percpu::Depots::new(block.ptr.as_ptr().add(bytes).cast::<*mut u8>(), mags, batch)
        };
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
                batch,
                gfp,
                colour: AtomicUsize::new(0),
                nodes: core::array::from_fn(|_| NodeSlot(Mutex::new(NodeLists::new()))),
                nr_nodes,
                cpus,
                depots,
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

    /// Give every CPU's cached objects and every node's depot back to their slabs and
    /// release every empty slab to the page source (`kmem_cache_shrink`). Each CPU's array
    /// is drained on that CPU through [`IrqControl::run_on_cpu`] (SLUB's `flush_all`);
    /// arrays of CPUs the platform cannot reach keep their objects. Returns the number of frames released (in a
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
        self.drain_depots(&mut out);
        self.shrink_nodes(&mut out) + released.load(Relaxed) * core.params.layout.order.pages()
    }

    /// Drain this CPU's array and every node's depot and release every empty slab:
    /// [`shrink`](Self::shrink) without cross-CPU calls, for callers that may have interrupts off. Returns frames released.
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
        self.drain_depots(&mut out);
        self.shrink_nodes(&mut out)
    }

    /// Drain every CPU's array and every node's depot and release every empty slab. Needs
    /// exclusive access, which is what proves no CPU is using its array. Returns the number of frames released.
    pub fn drain_all(&mut self) -> u64 {
        let core = self.core();
        let mut out = DetachedList::new();
        for c in 0..core.cpus.nr_cpus() {
            // SAFETY: `&mut self`: no other handle exists, so no CPU is inside this cache.
            let mut cpu = unsafe { core.cpus.get(c) };
            let n = cpu.len();
            self.flush(&mut cpu, n, &mut out);
        }
        self.drain_depots(&mut out);
        self.shrink_nodes(&mut out)
    }

    /// Detach every empty slab of every node into `out`, release them all, then every
    /// off-slab header page no header uses any more; returns the frames released.
    fn shrink_nodes(&self, out: &mut DetachedList) -> u64 {
        let core = self.core();
        for nid in 0..core.nr_nodes {
            self.lock_node(nid).shrink_empty(0, out);
        }
        let n = out.len() as u64;
        self.release(core::mem::replace(out, DetachedList::new()));
        n * core.params.layout.order.pages() + self.release_empty_header_pages()
    }

    /// Free every header page of the off-slab pool with no slot in use (the pool keeps one
    /// spare while slabs come and go; a shrink gives it back too). Returns how many.
    fn release_empty_header_pages(&self) -> u64 {
        let mut n = 0;
        loop {
            let page = {
                let _irq = self.platform.irq_save();
                self.core().headers.lock().pop_empty_page()
            };
            let Some(page) = page else { return n };
            // SAFETY: a header page from `self.src`, order 0, no slot in use.
            unsafe { self.src.free_pages(page, Order::new(0)) };
            n += 1;
        }
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
        // No slab is left, so no header slot is in use: every header page goes.
        self.release_empty_header_pages();
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

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::cache::testutil::*;
    use crate::testing::TestPageSource;
    use mmkit_addr::host::HostPlatform;
    use std::string::ToString;
    use std::vec::Vec;

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
        assert_eq!(owner.file(), file!());
        assert!(err.leak.to_string().contains("1 objects still allocated"));
        let c = err.cache;
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.destroy().unwrap();
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

    /// A CPU that frees what another allocated hands full batches to the node's depot; the
    /// allocating CPU, its array empty, takes them back whole, and the objects never pass
    /// through their slabs. A shrink empties the depot.
    #[test]
    fn batches_travel_between_cpus_through_the_depot() {
        let src = TestPageSource::new(8 << 20);
        let plat = HostPlatform::new(2);
        let mut c = Cache::new(&CacheConfig::new("d", 64), &src, &plat).unwrap();
        let desc = src.frames_in_use();
        let s = c.stats();
        assert!(
            s.depot_limit > 0,
            "a 2-CPU 64 B cache has room for magazines"
        );
        let (cap, batch) = (s.cpu_limit, s.batch);
        plat.bind_current_thread(0);
        let mut objs: Vec<_> = (0..cap + batch).map(|_| c.alloc().unwrap()).collect();
        // What CPU 0's last refill left over stays in its array.
        let leftover = c.stats().cpu_cached;
        let addrs: Vec<usize> = objs.iter().map(|o| o.as_ptr() as usize).collect();
        on_cpu(&plat, 1, || {
            for &a in &addrs {
                let o = core::ptr::NonNull::new(a as *mut u8).unwrap();
                // SAFETY: allocated above on CPU 0, given to CPU 1, freed once.
                unsafe { c.free(o).unwrap() };
            }
        });
        let s = c.stats();
        assert_eq!((s.depot_puts, s.depot_cached), (1, batch));
        assert_eq!(
            s.cpu_cached,
            leftover + cap,
            "CPU 1 keeps the hottest objects"
        );
        assert_eq!(s.live_objects, 0);
        c.verify().unwrap();
        // Once CPU 0's array is empty, its next refill is the magazine, whole.
        let rest: Vec<_> = (0..leftover).map(|_| c.alloc().unwrap()).collect();
        let refills = c.stats().refills;
        let mut again: Vec<_> = (0..batch).map(|_| c.alloc().unwrap()).collect();
        let s = c.stats();
        assert_eq!((s.depot_gets, s.depot_cached), (1, 0));
        assert_eq!(s.refills, refills + 1);
        objs.truncate(batch);
        objs.sort();
        again.sort();
        assert_eq!(
            objs, again,
            "the oldest batch came back as it was handed over"
        );
        c.verify().unwrap();
        for o in again.into_iter().chain(rest) {
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o).unwrap() };
        }
        c.shrink();
        let s = c.stats();
        assert_eq!((s.cpu_cached, s.depot_cached, s.slabs), (0, 0, 0));
        assert_eq!(src.frames_in_use(), desc, "every slab went back");
        c.verify().unwrap();
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
