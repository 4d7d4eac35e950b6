//! [`Cache::verify`]: the invariant scanner. With every node lock held and exclusive access
//! to the cache (so the per-CPU arrays hold still), it checks each node's lists and slabs,
//! the off-slab header count and every per-CPU array and depot entry, then the live-object
//! count (caches with arrays) or the red zones of allocated objects (debug caches).

use core::sync::atomic::Ordering::{Acquire, Relaxed};

use mmkit_addr::IrqControl;
use spin::MutexGuard;

use super::{Cache, MAX_NODES};
use crate::error::VerifyError;
use crate::page_source::PageSource;
use crate::slab::{self, NodeLists, PageKind};

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    /// Check every invariant: each slab's free count matches its freelist, no object is on
    /// two freelists or on a freelist and in a per-CPU array or depot, every slab is on the lists of
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
        let (mut allocs, mut frees) = (0u64, 0u64);
        for c in 0..nr {
            let k = core.cpus.counters(c);
            allocs = allocs.wrapping_add(k.allocs);
            frees = frees.wrapping_add(k.frees);
        }
        for node in nodes.iter().flatten() {
            if node.depot_full > core.depots.mags() {
                return Err(VerifyError::CpuArrayCorrupt);
            }
        }
        // Every cached object: the CPU arrays, then the nodes' depots.
        let cached_objects = || {
            let arrays = (0..nr).flat_map(move |c| {
                // SAFETY: `&mut self`: no CPU is inside this cache.
                let cpu = unsafe { core.cpus.get(c) };
                (0..cpu.len()).map(move |i| cpu.get(i))
            });
            let depots = nodes.iter().enumerate().flat_map(move |(nid, node)| {
                let full = node.as_ref().map_or(0, |n| n.depot_full);
                (0..full * core.batch).map(move |i| {
                    // SAFETY: we hold node `nid`'s lock; `full` is its count, checked
                    // against the depot's size above.
                    unsafe { core.depots.get(nid, full, i) }
                })
            });
            arrays.chain(depots)
        };
        let mut cached = 0usize;
        for (k, obj) in cached_objects().enumerate() {
            let obj = obj.ok_or(VerifyError::CpuArrayCorrupt)?;
            // SAFETY: we hold every node lock, so no listed slab goes away; an object of a
            // live slab has a live header.
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
            // Each cached object once: no earlier entry of any array or depot is it.
            if cached_objects().take(k).any(|o| o == Some(obj)) {
                return Err(VerifyError::CpuArrayCorrupt);
            }
            cached += 1;
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
}
