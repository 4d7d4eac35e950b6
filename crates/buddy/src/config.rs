//! Configuration and the caller-provided storage the allocator needs.
//!
//! The allocator uses no heap. Its variable-size metadata lives in memory the caller hands
//! over at construction (from bootmem in a kernel, from a leaked `Vec` or a stack array in
//! tests):
//!
//! * per node, a memmap of [`memmap_len`] [`PageDesc`]s (16 bytes each) covering the node's
//!   span rounded out to max-order blocks;
//! * [`pcp_storage_len`] [`PerCpuPages`](crate::PerCpuPages) for the per-CPU lists (one per
//!   node, zone and CPU).
//!
//! Pageblock migrate types are kept in the memmap (the descriptor of each pageblock's first
//! frame has a spare word), so no separate bitmap is needed.

use core::mem::MaybeUninit;

use mmkit_addr::{PhysAddr, PhysRange};

use crate::page::PageDesc;
use crate::zone::NR_ZONES;
use crate::{MAX_NUMNODES, MAX_ORDER_LIMIT};

/// A `kernelcore=` / `movablecore=` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreSize {
    /// An amount of memory in bytes.
    Bytes(u64),
    /// A percentage (0..=100) of all present memory.
    Percent(u8),
}

/// Allocator-wide settings. [`BuddyConfig::default`] gives Linux's x86-64 defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuddyConfig {
    /// Largest order (Linux `MAX_PAGE_ORDER`), at most [`MAX_ORDER_LIMIT`]. Default 10.
    pub max_order: u32,
    /// log2 of the pageblock size in frames, at most `max_order`. Default 9 (2 MiB).
    pub pageblock_order: u32,
    /// End of ZONE_DMA. Default 16 MiB.
    pub dma_limit: PhysAddr,
    /// End of ZONE_DMA32. Default 4 GiB.
    pub dma32_limit: PhysAddr,
    /// `kernelcore=`: memory kept out of ZONE_MOVABLE (the rest becomes movable).
    pub kernelcore: Option<CoreSize>,
    /// `movablecore=`: memory put into ZONE_MOVABLE. When both are given, `kernelcore` wins
    /// if it keeps more memory out of ZONE_MOVABLE, as in Linux.
    pub movablecore: Option<CoreSize>,
    /// Group pages by mobility. Switched off automatically on tiny memory (less than one
    /// pageblock per migrate type), as Linux does.
    pub mobility_grouping: bool,
    /// Serve orders 0..=3 from per-CPU lists.
    pub per_cpu_lists: bool,
    /// `vm.watermark_scale_factor` (units of 0.01% of the zone). Default 10.
    pub watermark_scale_factor: u32,
    /// `vm.min_free_kbytes`; `None` computes Linux's default from lowmem size.
    pub min_free_kbytes: Option<u64>,
    /// `vm.lowmem_reserve_ratio` per zone. Default `[256, 256, 32, 0]`.
    pub lowmem_reserve_ratio: [u32; NR_ZONES],
    /// Compact in the allocation slow path of requests that may block: direct compaction
    /// for costly orders, and for an unmovable or reclaimable request that would otherwise
    /// take pages from a movable pageblock, emptying a whole movable pageblock for it first
    /// (`compaction.rs`). Only blocks with a [`Mover`](crate::Mover) move. Default on.
    pub compaction: bool,
    /// Deferred memmap initialisation (Linux `CONFIG_DEFERRED_STRUCT_PAGE_INIT`):
    /// `Some(frames)` initialises only each node's first `frames` frames at construction
    /// (rounded up to a max-order block) and leaves the rest to
    /// [`deferred_init_step`](crate::BuddyAllocator::deferred_init_step) and to allocations
    /// that would fail otherwise (`deferred.rs`). `None` (the default) initialises
    /// everything at construction.
    pub deferred_init: Option<u64>,
}

/// Linux's `sysctl_lowmem_reserve_ratio` defaults (`mm/page_alloc.c`), DMA, DMA32, Normal,
/// Movable; 0 means "no protection from this zone".
pub const DEFAULT_LOWMEM_RESERVE_RATIO: [u32; NR_ZONES] = [256, 256, 32, 0];

impl Default for BuddyConfig {
    fn default() -> Self {
        Self {
            max_order: 10,
            pageblock_order: 9,
            dma_limit: PhysAddr::new(16 << 20),
            dma32_limit: PhysAddr::new(4 << 30),
            kernelcore: None,
            movablecore: None,
            mobility_grouping: true,
            per_cpu_lists: true,
            watermark_scale_factor: 10,
            min_free_kbytes: None,
            lowmem_reserve_ratio: DEFAULT_LOWMEM_RESERVE_RATIO,
            compaction: true,
            deferred_init: None,
        }
    }
}

/// What the caller tells the allocator about one NUMA node. Node ids are positions in the
/// slice passed to [`BuddyAllocator::new`](crate::BuddyAllocator::new).
pub struct NodeInit<'m, 'r> {
    /// The node's memory (present frames), reserved or not. Partial frames are ignored.
    pub memory: &'r [PhysRange],
    /// Distance to each node (Linux's SLIT values; 10 = local). At least as long as the
    /// number of nodes.
    pub distances: &'r [u8],
    /// Storage for the node's memmap: at least [`memmap_len`] descriptors.
    pub memmap: &'m mut [MaybeUninit<PageDesc>],
}

/// The span of frames a node's memmap covers: its memory rounded out to `2^max_order`
/// frames. `None` for a node without whole frames.
pub fn node_span(memory: &[PhysRange], max_order: u32) -> Option<(u64, u64)> {
    let max_pages = 1u64 << max_order.min(MAX_ORDER_LIMIT);
    let mut lo = u64::MAX;
    let mut hi = 0;
    for r in memory {
        let p = r.whole_pfns();
        if p.start < p.end {
            lo = lo.min(p.start);
            hi = hi.max(p.end);
        }
    }
    if lo >= hi {
        return None;
    }
    let start = lo & !(max_pages - 1);
    let end = hi.div_ceil(max_pages) * max_pages;
    Some((start, end))
}

/// Descriptor slots a node's memmap needs (the caller provides `memmap_len * 16` bytes
/// aligned to 8). The memmap is sparse (`PageDesc` storage only for present memory):
/// the span, rounded out to max-order blocks, is cut into **sections** of one max-order
/// block each, and the storage holds a table of one 4-byte entry per section, one shared
/// block of hole descriptors, a block of descriptors per section that holds memory, and a
/// 4-byte entry per block naming its section.
/// Holes of whole sections cost 4 bytes per section (1 MiB per TiB of hole with 4 MiB
/// sections) instead of 16 bytes per frame.
///
/// ```
/// use mmkit_addr::{PhysAddr, PhysRange};
/// let ram = [PhysRange::from_start_size(PhysAddr::new(0x10_0000), 0x30_0000).unwrap()];
/// // 1 MiB..4 MiB rounded out to one 4 MiB (order-10) section: a one-entry table (one
/// // slot), a two-entry reverse table (one slot), the shared hole block and the
/// // section's block, 1024 slots each.
/// assert_eq!(mmkit_buddy::memmap_len(&ram, 10), 2 + 2 * 1024);
/// // Two 4 MiB banks 1 TiB apart: 2^18 sections, two of them present.
/// let far = [
///     PhysRange::from_start_size(PhysAddr::new(0), 4 << 20).unwrap(),
///     PhysRange::from_start_size(PhysAddr::new(1 << 40), 4 << 20).unwrap(),
/// ];
/// assert_eq!(mmkit_buddy::memmap_len(&far, 10), (1 << 18) / 4 + 1 + 1 + 3 * 1024);
/// ```
///
/// A span too large for `usize` saturates to `usize::MAX` (no storage can be that large, so
/// construction then fails with `NodeTooLarge` or `MemmapTooSmall`).
pub fn memmap_len(memory: &[PhysRange], max_order: u32) -> usize {
    let Some((s, e)) = node_span(memory, max_order) else {
        return 0;
    };
    let shift = section_shift(max_order);
    let sections = usize::try_from((e - s) >> shift).unwrap_or(usize::MAX);
    let present: u64 = present_sections(memory, shift).map(|(a, b)| b - a).sum();
    let nr_blocks = usize::try_from(present.saturating_add(1)).unwrap_or(usize::MAX);
    let blocks = nr_blocks.saturating_mul(1usize << shift);
    crate::raw::table_slots_saturating::<PageDesc>(sections)
        .saturating_add(crate::raw::table_slots_saturating::<PageDesc>(nr_blocks))
        .saturating_add(blocks)
}

/// The sections of a node's sparse memmap ([`memmap_len`]) that hold memory of `memory`,
/// numbered `pfn >> max_order`, as sorted, disjoint, non-adjacent runs `[first, end)`:
/// the sections that get descriptors of their own. For per-frame tables of the caller's
/// that want the same layout (the facade's page-owner table).
pub fn memmap_sections(
    memory: &[PhysRange],
    max_order: u32,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    present_sections(memory, section_shift(max_order))
}

/// The memmap's section size for `max_order`, as a shift: one max-order block.
pub(crate) fn section_shift(max_order: u32) -> u32 {
    max_order.min(MAX_ORDER_LIMIT)
}

/// The sections (numbered `pfn >> shift`) that hold memory of `memory`, as sorted,
/// disjoint, non-adjacent runs `[first, end)`.
pub(crate) fn present_sections(
    memory: &[PhysRange],
    shift: u32,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    let sec = move |r: &PhysRange| {
        let f = r.whole_pfns();
        (f.start < f.end).then(move || (f.start >> shift, ((f.end - 1) >> shift) + 1))
    };
    let mut cursor = 0u64;
    let mut done = false;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        // The lowest run reaching past the cursor, then every run touching it.
        let (mut lo, mut hi) = memory
            .iter()
            .filter_map(sec)
            .filter(|&(_, e)| e > cursor)
            .min_by_key(|&(s, _)| s)?;
        lo = lo.max(cursor);
        loop {
            let grown = memory
                .iter()
                .filter_map(sec)
                .filter(|&(s, e)| s <= hi && e > hi)
                .map(|(_, e)| e)
                .max();
            match grown {
                Some(e) => hi = e,
                None => break,
            }
        }
        if hi == u64::MAX {
            done = true;
        }
        cursor = hi;
        Some((lo, hi))
    })
}

/// Entries of per-CPU storage needed for `nr_nodes` nodes and `nr_cpus` CPUs. Nodes past
/// [`MAX_NUMNODES`] are not counted; a CPU count too large for the product saturates to
/// `usize::MAX` (no storage can be that large, so construction then fails with
/// `PcpStorageTooSmall`).
///
/// ```
/// assert_eq!(mmkit_buddy::pcp_storage_len(usize::MAX, usize::MAX), usize::MAX);
/// ```
pub const fn pcp_storage_len(nr_nodes: usize, nr_cpus: usize) -> usize {
    let n = if nr_nodes > MAX_NUMNODES {
        MAX_NUMNODES
    } else {
        nr_nodes
    };
    (n * NR_ZONES).saturating_mul(nr_cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_rounds_out_to_max_order_blocks() {
        let ram = [
            PhysRange::from_start_size(PhysAddr::new(0x1000), 0x1000).unwrap(),
            PhysRange::from_start_size(PhysAddr::new(0x50_0000), 0x1800).unwrap(),
        ];
        assert_eq!(node_span(&ram, 10), Some((0, 2048)));
        assert_eq!(node_span(&ram, 0), Some((1, 0x501)));
        assert_eq!(node_span(&[], 10), None);
    }

    #[test]
    fn present_sections_merge_and_skip_holes() {
        let r = |s: u64, l: u64| PhysRange::from_start_size(PhysAddr::new(s), l).unwrap();
        let m = 1u64 << 20;
        // Sections of 4 MiB: [0, 6 MiB) and [5, 7 MiB) share sections 0..2; 64 MiB stands
        // alone.
        let ram = [r(64 * m, m), r(0, 6 * m), r(5 * m, 2 * m)];
        let got: std::vec::Vec<_> = present_sections(&ram, 10).collect();
        assert_eq!(got, [(0, 2), (16, 17)]);
        assert_eq!(memmap_len(&ram, 10), 5 + 1 + 4 * 1024);
    }

    #[test]
    fn defaults_are_linux_x86_64() {
        let c = BuddyConfig::default();
        assert_eq!((c.max_order, c.pageblock_order), (10, 9));
        assert_eq!(c.dma_limit.as_u64(), 16 << 20);
        assert_eq!(c.dma32_limit.as_u64(), 4 << 30);
        assert_eq!(c.lowmem_reserve_ratio, [256, 256, 32, 0]);
        assert_eq!(pcp_storage_len(2, 3), 24);
    }

    #[test]
    fn sizes_saturate_at_extreme_counts() {
        assert_eq!(pcp_storage_len(0, usize::MAX), 0);
        assert_eq!(pcp_storage_len(1, usize::MAX), usize::MAX);
        assert_eq!(pcp_storage_len(usize::MAX, 1), MAX_NUMNODES * NR_ZONES);
        assert_eq!(pcp_storage_len(usize::MAX - 1, usize::MAX - 1), usize::MAX);
        assert_eq!(pcp_storage_len(1, 0), 0);
        for pages in [0, 1, u64::MAX - 1, u64::MAX] {
            let kb = crate::default_min_free_kbytes(pages);
            assert!((128..=262_144).contains(&kb), "{pages:#x} -> {kb}");
        }
        // The whole 64-bit physical space, and ranges touching its top.
        let top = |s: u64, l: u64| PhysRange::from_start_size(PhysAddr::new(s), l).unwrap();
        for ram in [
            top(0, u64::MAX),
            top(u64::MAX - 1, 1),
            top(u64::MAX - 0x2000, 0x2000),
            top(1, u64::MAX - 1),
        ] {
            for max_order in [0, 1, MAX_ORDER_LIMIT, MAX_ORDER_LIMIT + 1, u32::MAX] {
                let span = node_span(&[ram], max_order);
                if let Some((s, e)) = span {
                    assert!(s < e, "{ram:?} at {max_order}");
                    assert!(memmap_len(&[ram], max_order) as u64 >= e - s);
                } else {
                    assert_eq!(memmap_len(&[ram], max_order), 0);
                }
            }
        }
    }
}
