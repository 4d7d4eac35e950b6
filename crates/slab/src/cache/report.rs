//! Reports: [`Cache::stats`] sums the node lists, the per-CPU counters and the slow-path
//! counters into a [`CacheStats`] snapshot; [`Cache::node_stats`] reads one node's lists;
//! `Display` prints the `/proc/slabinfo` line.

use core::fmt;
use core::sync::atomic::Ordering::{Acquire, Relaxed};

use mmkit_addr::IrqControl;

use super::Cache;
use crate::page_source::PageSource;
use crate::stats::{CacheStats, NodeStats, SlabInfoLine};

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
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
        let n = self.lock_node(node);
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
        let (mut slabs, mut inuse, mut depot) = (0, 0, 0);
        for nid in 0..core.nr_nodes {
            let node = self.lock_node(nid);
            slabs += node.nr_slabs();
            inuse += node.inuse;
            depot += node.depot_full * core.batch;
        }
        let header_pages = {
            let _irq = self.platform.irq_save();
            core.headers.lock().pages
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
            rcu_pending_slabs: core.rcu_pending.load(Acquire),
            header_pages,
            total_objects: slabs * l.objects,
            active_objects: inuse,
            cpu_cached: cached,
            depot_cached: depot,
            depot_limit: core.depots.mags(),
            live_objects: inuse.saturating_sub(cached + depot),
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
            depot_gets: slow.depot_gets.load(Relaxed),
            depot_puts: slow.depot_puts.load(Relaxed),
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
    use crate::cache::testutil::*;
    use crate::cache::CacheConfig;
    use std::string::ToString;
    use std::vec::Vec;

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
}
