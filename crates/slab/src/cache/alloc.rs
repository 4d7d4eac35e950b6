//! Allocation: [`Cache::alloc`] pops from the calling CPU's array inside an `IrqGuard`,
//! refilling an empty array with a whole magazine from its node's depot, else with up to
//! `batch` objects from partial slabs (its node first, then the node a grow just filled, then
//! nodes with partial slabs to spare) and growing the cache when there are none. [`Cache::alloc_node`] for another node bypasses the array and
//! takes from that node's lists. Debug caches go to `debug`.

use core::panic::Location;
use core::ptr::NonNull;

use mmkit_addr::IrqControl;

use super::{inc, Cache, CacheCore};
use crate::error::AllocError;
use crate::flags::Gfp;
use crate::page_source::PageSource;
use crate::percpu::CpuRef;
use crate::slab;

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Allocate one object (`kmem_cache_alloc`). Its contents are whatever the constructor
    /// (or the previous owner) left; with a constructor, a constructed object.
    #[track_caller]
    #[inline]
    pub fn alloc(&self) -> Result<NonNull<u8>, AllocError> {
        self.alloc_flags(Gfp::empty())
    }

    /// [`alloc`](Self::alloc) in the caller's context (`kmem_cache_alloc(s, gfp)`): a slab
    /// that must grow takes its pages with `gfp`'s [context bits](Gfp::CONTEXT) (atomic
    /// callers never block and may use the reserves); [`Gfp::ZERO`] zeroes the object.
    /// The cache's own zone and mobility bits are not the caller's to change.
    #[track_caller]
    #[inline]
    pub fn alloc_flags(&self, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        let obj = match self.alloc_fast() {
            Some(obj) => obj,
            None => self.alloc_slow(gfp, Location::caller())?,
        };
        if gfp.contains(Gfp::ZERO) {
            // SAFETY: we just allocated `obj`; its object bytes are ours.
            unsafe { slab::zero_bytes(obj, self.object_size()) };
        }
        Ok(obj)
    }

    /// The fast path: one pop from this CPU's array inside its `IrqGuard`. `None` when the
    /// array is empty, which is always the case in a debug cache (no arrays).
    #[inline(always)]
    pub(crate) fn alloc_fast(&self) -> Option<NonNull<u8>> {
        let core = self.core();
        let guard = self.platform.irq_save();
        // SAFETY: we hold this CPU's guard of the platform the arrays were sized for, and do
        // not re-enter the cache while `cpu` lives; `core.cpus` belongs to `core`.
        let mut cpu = unsafe { core.cpus.get_beside(core, guard.cpu()) };
        cpu.pop_fast()
    }

    /// Everything past the fast path: debug caches, refilling an empty array, growing.
    #[cold]
    #[inline(never)]
    fn alloc_slow(
        &self,
        gfp: Gfp,
        owner: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        if self.core().params.layout.cpu_capacity == 0 {
            return self.alloc_debug(None, gfp, owner);
        }
        match self.alloc_cached(None) {
            Some(obj) => Ok(obj),
            None => self.alloc_grow(gfp),
        }
    }

    #[cold]
    fn alloc_grow(&self, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        loop {
            let grown = self.grow(self.local_node(), gfp)?;
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
        self.alloc_node_flags(node, Gfp::empty())
    }

    /// [`alloc_node`](Self::alloc_node) in the caller's context, as
    /// [`alloc_flags`](Self::alloc_flags) (`kmem_cache_alloc_node(s, gfp, node)`).
    #[track_caller]
    pub fn alloc_node_flags(&self, node: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        let node = core.node_id(node);
        let obj = if core.params.layout.cpu_capacity == 0 {
            self.alloc_debug(Some(node), gfp, Location::caller())?
        } else if node == self.local_node() {
            return self.alloc_flags(gfp);
        } else {
            self.alloc_remote_node(node, gfp)?
        };
        if gfp.contains(Gfp::ZERO) {
            // SAFETY: we just allocated `obj`; its object bytes are ours.
            unsafe { slab::zero_bytes(obj, self.object_size()) };
        }
        Ok(obj)
    }

    /// An object from another node's lists, growing a slab there when they are empty.
    fn alloc_remote_node(&self, node: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        loop {
            let got = self.lock_node(node).alloc_object(&core.params);
            if let Some(obj) = got {
                inc(&core.slow.node_allocs);
                return Ok(obj);
            }
            let grown = self.grow(node, gfp)?;
            if grown != node {
                // The source fell back to another node: take the object from there.
                let got = self.lock_node(grown).alloc_object(&core.params);
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
        self.alloc_flags(Gfp::ZERO)
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
        let mut got = Self::take_from_depot(core, local, cpu);
        if got == 0 {
            got = Self::take_from(core, local, want, 0, cpu);
        }
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

    /// Move a whole magazine from node `nid`'s depot to the empty `cpu`; returns how many
    /// objects moved (0: the depot had none).
    fn take_from_depot(core: &CacheCore, nid: usize, cpu: &mut CpuRef<'_>) -> usize {
        if core.depots.mags() == 0 {
            return 0;
        }
        let nid = core.node_id(nid);
        let mut node = core.node(nid).lock();
        // SAFETY: we hold node `nid`'s lock, `depot_full` is its count, and `nid` is one of
        // the cache's nodes, which the depots were sized for.
        if unsafe { core.depots.take_into(nid, &mut node.depot_full, cpu) } {
            inc(&core.slow.depot_gets);
            return core.batch;
        }
        0
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

    /// Fill `out` with objects (`kmem_cache_alloc_bulk`): all or nothing.
    #[track_caller]
    pub fn alloc_bulk(&self, out: &mut [Option<NonNull<u8>>]) -> Result<(), AllocError> {
        let core = self.core();
        let mut i = 0;
        let mut extra = None;
        while i < out.len() {
            if core.params.layout.cpu_capacity == 0 {
                match self.alloc_debug(None, Gfp::empty(), Location::caller()) {
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
                match self.grow(self.local_node(), Gfp::empty()) {
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
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::cache::testutil::*;
    use crate::cache::CacheConfig;
    use crate::flags::Gfp;
    use crate::testing::TestPageSource;
    use mmkit_addr::host::HostPlatform;
    use mmkit_addr::Order;
    use std::vec::Vec;

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

    /// A grow takes its pages in the caller's context (its `NOWAIT`/`HIGH` bits, with the
    /// cache's own mobility), for an on-slab and a debug cache, on the local and a named
    /// node; `ZERO` zeroes the object and is not passed down.
    #[test]
    fn a_grow_takes_its_pages_with_the_callers_context() {
        for flags in [
            crate::CacheFlags::RECLAIM_ACCOUNT,
            crate::CacheFlags::RED_ZONE,
        ] {
            let (src, plat) = env();
            let cfg = CacheConfig::new("ctx", 200).flags(flags);
            let mut c = Cache::new(&cfg, &src, &plat).unwrap();
            let o = c.alloc_flags(Gfp::ATOMIC | Gfp::ZERO).unwrap();
            assert!((0..200).all(|k| read(o, k) == 0));
            let mut want = Gfp::ATOMIC;
            if flags.contains(crate::CacheFlags::RECLAIM_ACCOUNT) {
                want |= Gfp::RECLAIMABLE;
            }
            assert_eq!(src.last_gfp(), want);
            // SAFETY: allocated above, freed once.
            unsafe { c.free(o).unwrap() };
            c.shrink();
            let o = c.alloc_node_flags(0, Gfp::NOWAIT).unwrap();
            assert_eq!(src.last_gfp(), want - Gfp::HIGH);
            // SAFETY: as above.
            unsafe { c.free(o).unwrap() };
            c.shrink();
            let o = c.alloc().unwrap();
            assert_eq!(src.last_gfp(), want - Gfp::ATOMIC);
            // SAFETY: as above.
            unsafe { c.free(o).unwrap() };
            c.verify().unwrap();
        }
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
}
