//! Per-cache statistics and the `/proc/slabinfo` report.
//!
//! Counters that the fast path touches live per CPU (see `percpu.rs`) and are summed here;
//! slow-path counters are shared atomics. A snapshot taken while other CPUs allocate is
//! approximate, exactly as `/proc/slabinfo` is.
//!
//! The report follows `slabinfo - version: 2.1` (Linux `mm/slab_common.c`): `active_objs`
//! counts objects not on a slab freelist (SLUB counts objects cached per CPU as active too),
//! `objsize` is the slot size including debug words, `tunables` are the per-CPU array limit,
//! the batch and the depot's magazines per node (where SLAB printed its shared array's
//! factor), `active_slabs` equals `num_slabs` as in SLUB, and `sharedavail` is the objects in
//! the depots (SLAB's node-shared array held the same kind of batch).

#![deny(unsafe_code)]

use core::fmt;

/// One node's slab lists in one cache (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Slabs on the partial list (including empty ones kept for reuse).
    pub partial_slabs: usize,
    /// Slabs with no free object.
    pub full_slabs: usize,
    /// Empty slabs kept on the partial list (at most the cache's `min_partial` after a
    /// free; `shrink` releases them).
    pub empty_slabs: usize,
    /// Objects of this node's slabs not on a freelist (held by callers or CPU arrays).
    pub active_objects: usize,
}

/// A snapshot of one cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Object size asked for at creation.
    pub object_size: usize,
    /// Slot size (object plus debug words and alignment padding).
    pub slot_size: usize,
    /// Objects per slab.
    pub objects_per_slab: usize,
    /// Frames per slab.
    pub pages_per_slab: usize,
    /// Slabs on the partial and full lists.
    pub slabs: usize,
    /// Pages holding off-slab slab headers.
    pub header_pages: usize,
    /// Slabs waiting for an RCU grace period.
    pub rcu_pending_slabs: usize,
    /// Objects in all slabs.
    pub total_objects: usize,
    /// Objects not on a slab freelist (allocated, or cached in a per-CPU array or depot).
    pub active_objects: usize,
    /// Free objects cached in per-CPU arrays.
    pub cpu_cached: usize,
    /// Free objects in the nodes' depots (whole batches handed over by CPU arrays).
    pub depot_cached: usize,
    /// Magazines (of `batch` objects) each node's depot may hold; 0 when the descriptor
    /// block has no room for one.
    pub depot_limit: usize,
    /// Objects held by callers.
    pub live_objects: usize,
    /// Per-CPU array limit.
    pub cpu_limit: usize,
    /// Per-CPU refill/flush batch.
    pub batch: usize,
    /// Allocations served from a per-CPU array without the node lock.
    pub alloc_fastpath: u64,
    /// Allocations that needed the node lock (refill, or the debug path).
    pub alloc_slowpath: u64,
    /// Frees absorbed by a per-CPU array without the node lock.
    pub free_fastpath: u64,
    /// Frees that needed the node lock (flush, or the debug path).
    pub free_slowpath: u64,
    /// Batches moved into an empty per-CPU array, from slabs (SLUB `ALLOC_REFILL`) or from
    /// the node's depot.
    pub refills: u64,
    /// Batches moved out of a per-CPU array, back to slabs (SLUB `CPUSLAB_FLUSH`, including
    /// shrink and drain) or whole into the node's depot.
    pub flushes: u64,
    /// Refills served by a depot magazine.
    pub depot_gets: u64,
    /// Flushes that went whole into a depot.
    pub depot_puts: u64,
    /// Slabs taken from the page source.
    pub slabs_allocated: u64,
    /// Slabs given back to the page source.
    pub slabs_freed: u64,
    /// Allocations that failed for lack of pages.
    pub alloc_failures: u64,
    /// Poison found broken on allocation (use after free), repaired and counted.
    pub poison_corruptions: u64,
}

/// The `/proc/slabinfo` header (two lines, with the trailing newline).
pub const SLABINFO_HEADER: &str = "slabinfo - version: 2.1\n\
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n";

/// One `/proc/slabinfo` line.
#[derive(Debug, Clone, Copy)]
pub struct SlabInfoLine<'n> {
    /// Cache name.
    pub name: &'n str,
    /// The counters.
    pub stats: CacheStats,
}

impl fmt::Display for SlabInfoLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            self.name,
            s.active_objects,
            s.total_objects,
            s.slot_size,
            s.objects_per_slab,
            s.pages_per_slab,
            s.cpu_limit,
            s.batch,
            s.depot_limit,
            s.slabs,
            s.slabs,
            s.depot_cached
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn slabinfo_line_has_linux_columns() {
        let line = SlabInfoLine {
            name: "dentry",
            stats: CacheStats {
                active_objects: 10,
                total_objects: 21,
                slot_size: 192,
                objects_per_slab: 21,
                pages_per_slab: 1,
                cpu_limit: 120,
                batch: 60,
                slabs: 1,
                ..CacheStats::default()
            },
        }
        .to_string();
        let words: std::vec::Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "dentry", "10", "21", "192", "21", "1", ":", "tunables", "120", "60", "0", ":",
                "slabdata", "1", "1", "0"
            ]
        );
        assert!(line.ends_with('\n'));
        assert!(SLABINFO_HEADER.starts_with("slabinfo - version: 2.1\n# name"));
    }
}
