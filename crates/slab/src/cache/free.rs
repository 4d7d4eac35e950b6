//! Free: every pointer is validated first — its slab found through the page source's private
//! word, the cache and the object start checked — then, unless it is the object this CPU
//! freed last, pushed on the calling CPU's array (when it is full, its `batch` oldest objects
//! go whole to its node's depot, or back to their slabs when the depot is full), or, for a
//! slab of another node, returned straight to that slab under its node's lock. Debug caches
//! go to `debug`.

use core::panic::Location;
use core::ptr::NonNull;

use mmkit_addr::IrqControl;
use spin::MutexGuard;

use super::{inc, Cache, CacheCore};
use crate::error::FreeError;
use crate::page_source::PageSource;
use crate::percpu::{CpuRef, MAX_BATCH};
use crate::slab::{self, DetachedList, NodeLists, PageKind, SlabPtr};

/// The node lock currently held while returning objects, switched as objects of other
/// nodes come along.
struct HeldNode<'c> {
    id: usize,
    lists: MutexGuard<'c, NodeLists>,
}

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
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

    /// That `slab` is a slab of this cache, and (when [`HARDENED`](crate::HARDENED), and
    /// always for debug caches, whose paths use the index) that `obj` starts one of its
    /// objects.
    #[inline]
    fn check_object(&self, slab: SlabPtr, obj: NonNull<u8>) -> Result<(), FreeError> {
        if slab.cache_id() != self.id() {
            return Err(FreeError::WrongCache);
        }
        if crate::HARDENED || self.core().params.layout.cpu_capacity == 0 {
            slab.object_index(&self.core().params.layout, obj)?;
        }
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
    /// * [`FreeError::WrongCache`]: `obj` is in a slab of another cache;
    /// * [`FreeError::NotAnObject`], [`FreeError::Misaligned`]: `obj` is in a slab but
    ///   outside its objects, or inside an object but not at its start: detected when
    ///   [`HARDENED`](crate::HARDENED) (debug builds, the `hardened` feature) and in debug
    ///   caches; otherwise undefined;
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

    /// Free `obj`, found (by the caller, through [`slab::lookup`]) in `slab`, whose header
    /// the caller found naming this cache (`slab.cache_id() == self.id()`).
    ///
    /// # Safety
    /// As [`free`](Self::free); `slab` is what `lookup` returned for `obj`.
    #[inline(always)]
    pub(crate) unsafe fn free_in_own_slab(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        debug_assert_eq!(slab.cache_id(), self.id());
        if crate::HARDENED {
            slab.object_index(&self.core().params.layout, obj)?;
        }
        // SAFETY: the object's slab is ours; in a debug cache `free_slow` proves the index
        // before the debug path uses it; caller's contract otherwise.
        unsafe { self.free_validated(slab, obj, owner) }
    }

    /// # Safety
    /// `slab` is `obj`'s slab and names this cache, and the index is proven when the cache is
    /// a debug cache or [`HARDENED`](crate::HARDENED) (`check_object`), or the cache is a
    /// debug cache and the proof is left to `free_slow`; the caller owns `obj` and gives it
    /// up.
    #[inline(always)]
    unsafe fn free_validated(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        if self.free_fast(slab, obj) {
            return Ok(());
        }
        // SAFETY: caller's contract.
        unsafe { self.free_slow(slab, obj, owner) }
    }

    /// The fast path: one push on this CPU's array inside its `IrqGuard`. `false` (nothing
    /// changed) when the array is full, `obj` is on its top (a double free), the slab lives
    /// on another node, or the cache is a debug cache (no arrays).
    ///
    /// The descriptor is reached through the slab header's cache id (our descriptor's
    /// address, which every caller checked), not through the handle: for `kfree`, whose
    /// handle comes out of the kmalloc table, that takes a table load off the chain of
    /// dependent loads from the pointer to the CPU array.
    #[inline(always)]
    fn free_fast(&self, slab: SlabPtr, obj: NonNull<u8>) -> bool {
        debug_assert_eq!(slab.cache_id(), self.id());
        // SAFETY: the callers checked `slab.cache_id() == self.id()`, and a cache's id is the
        // address of its descriptor (`lifecycle`), which lives as long as `self`.
        let core = unsafe { &*(slab.cache_id() as *const CacheCore) };
        let guard = self.platform.irq_save();
        // SAFETY: as in `alloc_fast`.
        let mut cpu = unsafe { core.cpus.get_beside(core, guard.cpu()) };
        if core.nr_nodes > 1 && slab.node() != cpu.node() {
            return false;
        }
        cpu.push_fast(obj)
    }

    /// Everything past the fast path: debug caches, double frees, remote nodes, full arrays.
    ///
    /// # Safety
    /// As [`free_validated`](Self::free_validated).
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        if self.core().params.layout.cpu_capacity == 0 {
            slab.object_index(&self.core().params.layout, obj)?;
            // SAFETY: caller's contract; the index is proven just above.
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
                self.flush_full(&mut cpu, &mut released);
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
            let mut node = self.lock_node(slab.node());
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

    /// Make room in a full array: its `batch` oldest objects go whole to its node's depot
    /// when that has room for a magazine, else back to their slabs.
    fn flush_full(&self, cpu: &mut CpuRef<'_>, out: &mut DetachedList) {
        let core = self.core();
        let nid = core.node_id(cpu.node());
        {
            let mut node = core.node(nid).lock();
            // SAFETY: we hold node `nid`'s lock, `depot_full` is its count, and `nid` is one
            // of the cache's nodes, which the depots were sized for.
            if unsafe { core.depots.put_oldest(nid, &mut node.depot_full, cpu) } {
                inc(&core.slow.flushes);
                inc(&core.slow.depot_puts);
                return;
            }
        }
        self.flush(cpu, core.batch, out);
    }

    /// Give the `n` oldest objects of `cpu` back to their slabs; emptied slabs beyond
    /// `min_partial` go to `out`.
    pub(super) fn flush(&self, cpu: &mut CpuRef<'_>, n: usize, out: &mut DetachedList) {
        if n == 0 || cpu.len() == 0 {
            return;
        }
        inc(&self.core().slow.flushes);
        let mut held: Option<HeldNode<'_>> = None;
        cpu.take_oldest(n, |obj| self.give_back(&mut held, obj, out));
    }

    /// Give every magazine of every node's depot back to the slabs; emptied slabs beyond
    /// `min_partial` go to `out`.
    pub(super) fn drain_depots(&self, out: &mut DetachedList) {
        let core = self.core();
        if core.depots.mags() == 0 {
            return;
        }
        let mut buf = [core::ptr::null_mut::<u8>(); MAX_BATCH];
        // Interrupts off for the node locks here and in `give_back` (see `lock_node`).
        let _irq = self.platform.irq_save();
        for nid in 0..core.nr_nodes {
            loop {
                let n = {
                    let mut node = core.node(nid).lock();
                    // SAFETY: as in `flush_full`.
                    unsafe { core.depots.pop_into(nid, &mut node.depot_full, &mut buf) }
                };
                if n == 0 {
                    break;
                }
                let mut held: Option<HeldNode<'_>> = None;
                for obj in buf[..n].iter().filter_map(|&p| NonNull::new(p)) {
                    self.give_back(&mut held, obj, out);
                }
            }
        }
    }

    /// Return one cached object (from a CPU array or a depot) to its slab, switching the
    /// node lock `held` to the slab's node.
    fn give_back<'c>(
        &'c self,
        held: &mut Option<HeldNode<'c>>,
        obj: NonNull<u8>,
        out: &mut DetachedList,
    ) {
        let core = self.core();
        // SAFETY: cached objects are objects of this cache counted in their slab's `inuse`,
        // so the slab is live.
        let PageKind::Slab(slab) = (unsafe { slab::lookup(self.src, obj) }) else {
            return;
        };
        let nid = slab.node();
        if held.as_ref().map(|h| h.id) != Some(nid) {
            drop(held.take());
            *held = Some(HeldNode {
                id: nid,
                lists: core.node(nid).lock(),
            });
        }
        let Some(h) = held.as_mut() else { return };
        let node = &mut h.lists;
        // SAFETY: the slab is on the lists of its node, whose lock we hold, and `obj` is one
        // of its in-use objects.
        let empty = unsafe { node.free_object(&core.params, slab, obj) };
        if empty && node.nr_partial > core.min_partial {
            // SAFETY: empty slab on our partial list.
            unsafe { node.detach_empty(slab, out) };
        }
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
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::cache::testutil::*;
    use crate::cache::CacheConfig;

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
            assert_eq!(
                c.free(NonNull::from(&mut local).cast()),
                Err(FreeError::NotSlabMemory)
            );
            // Pointers that start no object: proven with the full proof only.
            if crate::HARDENED {
                assert_eq!(c.free(a.add(8)), Err(FreeError::Misaligned));
                let header = a.as_ptr() as usize & !4095;
                let tail = NonNull::new((header + 4096 - 8) as *mut u8).unwrap();
                assert_eq!(c.free(tail), Err(FreeError::NotAnObject));
            }
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
    fn free_bulk_refuses_whole_batch_on_bad_pointer() {
        if !crate::HARDENED {
            // The bad pointer (not an object start) is found only by the full proof.
            return;
        }
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
}
