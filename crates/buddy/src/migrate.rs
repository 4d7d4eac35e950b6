//! Migrate types (mobility classes) and the fallback policy between them.
//!
//! Every pageblock carries a migrate type; a free block sits on the free list of its
//! pageblock's type. Allocations name the type they want through their GFP flags; when its
//! lists are empty the allocator falls back to other types in the order of [`FALLBACKS`].
//!
//! Which types exist and the fallback order are Linux's (`include/linux/mmzone.h`,
//! `mm/page_alloc.c: fallbacks[]`). `Cma` pageblocks are declared at boot
//! ([`declare_cma`](crate::BuddyAllocator::declare_cma)); they have no fallbacks of their
//! own, and movable allocations borrow them by the rule in `fallback.rs` (`rmqueue`).

use core::fmt;

/// The mobility class of an allocation, a free list, or a pageblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MigrateType {
    /// Kernel memory that can never move (page tables, slab without reclaim).
    Unmovable = 0,
    /// Memory whose contents can be migrated (user pages, page cache).
    Movable = 1,
    /// Memory that can be freed on demand (reclaimable slab caches).
    Reclaimable = 2,
    /// Pageblocks reserved for high-order atomic allocations.
    HighAtomic = 3,
    /// Pageblocks of a contiguous memory area (Linux `MIGRATE_CMA`): reserved at boot for
    /// [`cma_alloc`](crate::BuddyAllocator::cma_alloc), lent to movable allocations until a
    /// contiguous request migrates them out.
    Cma = 4,
    /// Pageblocks taken out of use (compaction, contiguous allocation, hot-unplug).
    Isolate = 5,
}

/// Number of migrate types.
pub const NR_MIGRATE_TYPES: usize = 6;

/// The three types per-CPU lists and ordinary allocations use ("pcp types" in Linux).
pub const NR_PCP_TYPES: usize = 3;

impl MigrateType {
    /// Every type, in index order.
    pub const ALL: [MigrateType; NR_MIGRATE_TYPES] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
        MigrateType::HighAtomic,
        MigrateType::Cma,
        MigrateType::Isolate,
    ];

    /// The index of this type in per-type arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The type with index `i`, if any.
    #[inline]
    pub const fn from_index(i: usize) -> Option<Self> {
        if i < NR_MIGRATE_TYPES {
            Some(Self::ALL[i])
        } else {
            None
        }
    }

    /// Linux's name for the type, as `/proc/pagetypeinfo` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Cma => "CMA",
            MigrateType::Isolate => "Isolate",
        }
    }

    /// Whether free blocks of this type may merge with buddies of another type at or above
    /// pageblock order (Linux `migratetype_is_mergeable`: not HighAtomic, CMA or Isolate).
    #[inline]
    pub const fn is_mergeable(self) -> bool {
        (self as u8) < NR_PCP_TYPES as u8
    }

    /// The types this one may fall back to, in order; empty for HighAtomic, Cma and Isolate.
    #[inline]
    pub const fn fallbacks(self) -> &'static [MigrateType] {
        match self {
            MigrateType::Unmovable => &FALLBACKS[0],
            MigrateType::Movable => &FALLBACKS[1],
            MigrateType::Reclaimable => &FALLBACKS[2],
            MigrateType::HighAtomic | MigrateType::Cma | MigrateType::Isolate => &[],
        }
    }
}

impl fmt::Display for MigrateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The fallback table, indexed by the requested pcp type: which foreign free lists an
/// allocation may take from, in preference order. From Linux `mm/page_alloc.c: fallbacks[]`.
pub const FALLBACKS: [[MigrateType; 2]; NR_PCP_TYPES] = [
    // Unmovable
    [MigrateType::Reclaimable, MigrateType::Movable],
    // Movable
    [MigrateType::Reclaimable, MigrateType::Unmovable],
    // Reclaimable
    [MigrateType::Unmovable, MigrateType::Movable],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_table_matches_linux() {
        assert_eq!(
            MigrateType::Unmovable.fallbacks(),
            &[MigrateType::Reclaimable, MigrateType::Movable]
        );
        assert_eq!(
            MigrateType::Movable.fallbacks(),
            &[MigrateType::Reclaimable, MigrateType::Unmovable]
        );
        assert_eq!(
            MigrateType::Reclaimable.fallbacks(),
            &[MigrateType::Unmovable, MigrateType::Movable]
        );
        assert!(MigrateType::HighAtomic.fallbacks().is_empty());
        assert!(MigrateType::Cma.fallbacks().is_empty());
        assert!(MigrateType::Isolate.fallbacks().is_empty());
    }

    #[test]
    fn only_pcp_types_are_mergeable() {
        let mergeable: [bool; NR_MIGRATE_TYPES] = MigrateType::ALL.map(MigrateType::is_mergeable);
        assert_eq!(mergeable, [true, true, true, false, false, false]);
    }

    #[test]
    fn index_round_trips() {
        for t in MigrateType::ALL {
            assert_eq!(MigrateType::from_index(t.index()), Some(t));
        }
        assert_eq!(MigrateType::from_index(NR_MIGRATE_TYPES), None);
    }
}
