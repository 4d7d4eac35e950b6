//! Slab supply: [`Cache::grow`] takes a block from the page source, formats it and files it
//! on the partial list of the node its frames belong to; `release` gives detached slabs back
//! — to the page source, or in a `TYPESAFE_BY_RCU` cache to the kernel's RCU, whose callback
//! (`rcu_free_slab`) frees them after a grace period. Off-slab headers come from and go back
//! to the cache's header pool alongside their slabs.

use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Relaxed, Release};

use core::ops::{Deref, DerefMut};

use mmkit_addr::{IrqControl, IrqGuard, Order};
use spin::MutexGuard;

use super::{inc, Cache, CacheCore};
use crate::error::AllocError;
use crate::flags::{CacheFlags, Gfp};
use crate::page_source::{PageSource, RcuHead};
use crate::slab::{self, DetachedList, NodeLists};

/// A node's lists locked with interrupts off ([`Cache::lock_node`]); the lock is released
/// before interrupts are restored (fields drop in order).
pub(super) struct NodeLocked<'c, P: IrqControl> {
    lists: MutexGuard<'c, NodeLists>,
    _irq: IrqGuard<'c, P>,
}

impl<P: IrqControl> Deref for NodeLocked<'_, P> {
    type Target = NodeLists;
    fn deref(&self) -> &NodeLists {
        &self.lists
    }
}

impl<P: IrqControl> DerefMut for NodeLocked<'_, P> {
    fn deref_mut(&mut self) -> &mut NodeLists {
        &mut self.lists
    }
}

impl CacheCore {
    /// An off-slab header slot, adding a header page from `src` (preferring node `nid`) if
    /// every page is full.
    fn take_header<S: PageSource>(&self, src: &S, nid: usize, gfp: Gfp) -> Option<NonNull<u8>> {
        if let Some(h) = self.headers.lock().take() {
            return Some(h);
        }
        let page = src.alloc_pages_node(nid, Order::new(0), gfp & Gfp::CONTEXT)?;
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
/// [`Rcu::call_rcu`](crate::Rcu::call_rcu) by that cache's `release`, and this is its one callback.
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

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Take a slab from the page source, preferring node `nid`, and publish it on the
    /// partial list of the node its frames belong to; returns that node.
    pub(super) fn grow(&self, nid: usize, ctx: Gfp) -> Result<usize, AllocError> {
        let core = self.core();
        // The cache's zone and mobility, the caller's context.
        let gfp = core.gfp | (ctx & Gfp::CONTEXT);
        let header = if core.params.layout.off_slab {
            // Interrupts off around the header pool lock (see `lock_node`).
            let taken = {
                let _irq = self.platform.irq_save();
                core.take_header(self.src, nid, gfp)
            };
            let Some(h) = taken else {
                inc(&core.slow.alloc_failures);
                return Err(AllocError::OutOfMemory);
            };
            Some(h)
        } else {
            None
        };
        let Some(block) = self
            .src
            .alloc_pages_node(nid, core.params.layout.order, gfp)
        else {
            if let Some(h) = header {
                let _irq = self.platform.irq_save();
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
        self.lock_node(node).add_new_slab(slab);
        inc(&core.slow.slabs_allocated);
        Ok(node)
    }

    /// Node `nid`'s lists, locked with this CPU's interrupts off (Linux's
    /// `spin_lock_irqsave(&n->list_lock)`). Every path that may run with interrupts on takes
    /// a node lock (and the header pool lock) this way: an interrupt handler's `GFP_ATOMIC`
    /// allocation refills its CPU's array under the node lock, and would spin forever on a
    /// lock that the code it interrupted on the same CPU holds (`shrink` did, found by the
    /// SMP QEMU kernels of issue 13). Paths already inside an `IrqGuard` (array refill and
    /// flush) lock directly.
    pub(super) fn lock_node(&self, nid: usize) -> NodeLocked<'_, P> {
        let irq = self.platform.irq_save();
        NodeLocked {
            lists: self.core().node(nid).lock(),
            _irq: irq,
        }
    }

    /// Release detached slabs: to the page source, or in a `TYPESAFE_BY_RCU` cache to the
    /// kernel's RCU, whose callback frees them after a grace period. Most frees release
    /// nothing; they pay one compare here.
    #[inline]
    pub(super) fn release(&self, list: DetachedList) {
        if !list.is_empty() {
            self.release_slabs(list);
        }
    }

    #[cold]
    #[inline(never)]
    fn release_slabs(&self, mut list: DetachedList) {
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
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::cache::testutil::*;
    use crate::cache::CacheConfig;
    use crate::error::{CreateError, FreeError};
    use crate::testing::{TestPageSource, TestRcu};
    use crate::NodeStats;
    use core::sync::atomic::AtomicUsize;
    use mmkit_addr::host::HostPlatform;
    use std::vec::Vec;

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

    /// Regression (issue 13): `shrink` held node locks with interrupts on, and a timer
    /// handler's `GFP_ATOMIC` kmalloc on the same CPU, refilling its empty array, spun on
    /// the lock forever. A node lock now keeps its CPU's interrupts off: a cross-CPU call
    /// (standing in for the interrupt) at the holder's CPU waits for the lock to go.
    #[test]
    fn node_lock_keeps_interrupts_off_on_its_cpu() {
        use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let src = TestPageSource::new(8 << 20);
        let plat = HostPlatform::new(2);
        let c = Cache::new(&CacheConfig::new("irqsafe", 64), &src, &plat).unwrap();
        let released = AtomicBool::new(false);
        let entered = AtomicBool::new(false);
        let ran_while_held = AtomicBool::new(false);
        std::thread::scope(|s| {
            plat.bind_current_thread(0);
            let held = c.lock_node(0);
            let (plat, released, entered, ran_while_held) =
                (&plat, &released, &entered, &ran_while_held);
            let caller = s.spawn(move || {
                plat.bind_current_thread(1);
                entered.store(true, SeqCst);
                plat.run_on_cpu(0, &|| {
                    if !released.load(SeqCst) {
                        ran_while_held.store(true, SeqCst);
                    }
                })
            });
            while !entered.load(SeqCst) {
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            released.store(true, SeqCst);
            drop(held);
            assert!(caller.join().unwrap(), "CPU 0 not reached");
        });
        assert!(
            !ran_while_held.load(SeqCst),
            "a call ran on CPU 0 while it held the node lock"
        );
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
            0,
            "a shrink gives the spare header page back too"
        );
        c.destroy().unwrap();
        assert_eq!(src.frames_in_use(), 0);
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
}
