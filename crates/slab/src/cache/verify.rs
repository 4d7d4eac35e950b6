//! [`Cache::verify`]: the invariant scanner. With every node lock held and exclusive access
//! to the cache (so the per-CPU arrays hold still), it checks each node's lists and slabs,
//! the off-slab header count and every per-CPU array entry, then the live-object count
//! (caches with arrays) or the red zones of allocated objects (debug caches).

use core::sync::atomic::Ordering::{Acquire, Relaxed};

use mmkit_addr::IrqControl;
use spin::MutexGuard;

use super::{Cache, MAX_NODES};
use crate::error::VerifyError;
use crate::page_source::PageSource;
use crate::slab::{self, NodeLists, PageKind};

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
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
}
