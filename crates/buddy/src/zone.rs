//! Zones: the address-range classes of a node, each with its own free lists and lock.
//!
//! A node's span is cut at the zone boundaries (by default 16 MiB for DMA, 4 GiB for DMA32,
//! and the ZONE_MOVABLE start computed from `kernelcore=`/`movablecore=`) into at most four
//! consecutive, non-overlapping zones. Zone boundaries are multiples of the largest block, so
//! no buddy block ever straddles two zones.
//!
//! ## What each part is protected by
//! * `free` (the **zone lock**, a spin mutex): the free lists, their counts, the high-atomic
//!   reserve size, and every descriptor in [`PageState::Free`](crate::PageState::Free) state.
//! * `free_pages`, `managed`: atomics *written* only under the zone lock, read without it for
//!   the fast watermark check and for reports.
//! * watermarks, lowmem reserve, per-CPU batch/high: atomics written by the (rare)
//!   recomputation, read anywhere.
//! * `pcp[cpu]`: per-CPU page lists, each behind its own try-lock (see `pcp.rs`).
//!
//! Lock order: a per-CPU list lock, then the zone lock. Never the reverse; never two zone
//! locks at once; several per-CPU locks only in increasing CPU order (drain, verify).

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use spin::mutex::SpinMutex;

use static_assertions::const_assert;

use crate::fallback::AllocFlags;
use crate::migrate::NR_MIGRATE_TYPES;
use crate::page::{List, Memmap};
use crate::pcp::PerCpuPages;
use crate::MAX_ORDER_LIMIT;

/// Number of zone types.
pub const NR_ZONES: usize = 4;

/// `vm.watermark_boost_factor`: the boost is capped at this many ten-thousandths of the high
/// watermark (Linux's default, 150%).
pub const WATERMARK_BOOST_FACTOR: u64 = 15_000;

/// The zone types, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ZoneType {
    /// Memory for devices limited to 24-bit DMA (below 16 MiB by default).
    Dma = 0,
    /// Memory for devices limited to 32-bit DMA (below 4 GiB by default).
    Dma32 = 1,
    /// Ordinary memory.
    Normal = 2,
    /// Memory that holds only movable allocations (can be offlined, compacts well).
    Movable = 3,
}

impl ZoneType {
    /// Every zone type, lowest first.
    pub const ALL: [ZoneType; NR_ZONES] = [
        ZoneType::Dma,
        ZoneType::Dma32,
        ZoneType::Normal,
        ZoneType::Movable,
    ];

    /// Index in per-zone arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Linux's zone name.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::Movable => "Movable",
        }
    }
}

impl fmt::Display for ZoneType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Watermark levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Below min only reserve-entitled requests succeed.
    Min = 0,
    /// Below low the background reclaimer is woken.
    Low = 1,
    /// Reclaim stops at high.
    High = 2,
}

/// The zone-lock-protected part of a zone.
///
/// Counts are `u32`: a node spans fewer than `u32::MAX` frames (checked at construction), so
/// no list can hold more blocks than that. Halving them keeps a zone near 1 KiB and the whole
/// allocator near 45 KiB (see [`BuddyAllocator::init_in`](crate::BuddyAllocator::init_in)).
pub(crate) struct FreeArea {
    pub lists: [[List; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
    pub counts: [[u32; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
    pub nr_reserved_highatomic: u64,
}

impl FreeArea {
    pub const fn new() -> Self {
        Self {
            lists: [[List::EMPTY; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
            counts: [[0; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
            nr_reserved_highatomic: 0,
        }
    }
}

/// One zone of one node.
pub(crate) struct Zone<'m> {
    pub ty: ZoneType,
    pub node: usize,
    /// First frame of the zone's span.
    pub start: u64,
    /// One past the last frame of the span; `start == end` for an empty zone.
    pub end: u64,
    /// Frames of the span that are memory (not holes).
    pub present: u64,
    /// `[tally_lo, tally_lo + tally_span)`: the whole pageblocks of the span, the ones with
    /// pageblock tallies (see the `page` module); one subtraction and one compare test it.
    pub tally_lo: u64,
    pub tally_span: u64,
    /// Frames handed to the allocator (freed at boot).
    pub managed: AtomicU64,
    /// Frames on the zone's free lists (Linux `NR_FREE_PAGES`).
    pub free_pages: AtomicU64,
    /// Mirror of `FreeArea::nr_reserved_highatomic`, for the lock-free watermark check.
    pub highatomic_pages: AtomicU64,
    /// Frames of the zone's CMA pageblocks (declared with `declare_cma`); written under the
    /// zone lock, read lock-free by `rmqueue` to skip the CMA rule in zones without CMA.
    pub cma_pages: AtomicU64,
    /// Bit `o`: some Unmovable / Movable / Reclaimable / CMA list of order `o` is non-empty; bit
    /// `HIGHATOMIC_MASK_SHIFT + o`: the HighAtomic list of order `o` is. Written under the
    /// zone lock when a list turns empty or non-empty; read lock-free by [`Zone::watermark_ok`]
    /// (the block-availability part of Linux's `__zone_watermark_ok`).
    pub free_order_mask: AtomicU32,
    pub wmark: [AtomicU64; 3],
    pub lowmem_reserve: [AtomicU64; NR_ZONES],
    pub pcp_batch: AtomicU32,
    pub pcp_high: AtomicU32,
    /// Pages of watermark boost (Linux `watermark_boost`): raised by a pageblock each time
    /// an allocation falls back into another type's pageblock, capped at
    /// `WATERMARK_BOOST_FACTOR` of the high watermark, cleared when kcompactd has compacted
    /// the zone (`compaction.rs`).
    pub watermark_boost: AtomicU64,
    pub free: SpinMutex<FreeArea>,
    /// One per CPU; empty when per-CPU lists are off.
    pub pcp: &'m [PerCpuPages],
}

impl<'m> Zone<'m> {
    pub fn new(ty: ZoneType, node: usize, start: u64, end: u64) -> Self {
        Self {
            ty,
            node,
            start,
            end,
            present: 0,
            tally_lo: 0,
            tally_span: 0,
            managed: AtomicU64::new(0),
            free_pages: AtomicU64::new(0),
            highatomic_pages: AtomicU64::new(0),
            cma_pages: AtomicU64::new(0),
            free_order_mask: AtomicU32::new(0),
            wmark: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            lowmem_reserve: [const { AtomicU64::new(0) }; NR_ZONES],
            pcp_batch: AtomicU32::new(1),
            pcp_high: AtomicU32::new(4),
            watermark_boost: AtomicU64::new(0),
            free: SpinMutex::new(FreeArea::new()),
            pcp: &[],
        }
    }

    /// Set the range of whole pageblocks of `2^pageblock_order` frames in the span.
    pub fn set_tally_range(&mut self, pageblock_order: u32) {
        let pages = 1u64 << pageblock_order;
        let lo = self.start.div_ceil(pages) * pages;
        let hi = self.end & !(pages - 1);
        self.tally_lo = lo;
        self.tally_span = hi.saturating_sub(lo);
    }

    /// Raise the watermark boost by `pages` (Linux `boost_watermark`), up to
    /// [`WATERMARK_BOOST_FACTOR`] / 10000 of the high watermark. Returns whether it rose.
    pub fn boost_watermark(&self, pages: u64) -> bool {
        let max = self.wmark(Watermark::High) * WATERMARK_BOOST_FACTOR / 10_000;
        let cur = self.watermark_boost.load(Relaxed);
        if max == 0 || cur >= max {
            return false;
        }
        self.watermark_boost.store((cur + pages).min(max), Relaxed);
        true
    }

    /// Whether the zone has any memory given to the allocator.
    #[inline]
    pub fn is_populated(&self) -> bool {
        self.managed.load(Relaxed) > 0
    }

    /// One past the last frame of the span whose descriptor is initialised (the span's end
    /// unless the node's memmap is still partly deferred; never below `start`): where
    /// every walk over the zone's frames stops.
    #[inline]
    pub fn init_end(&self, mm: &Memmap<'_>) -> u64 {
        self.end.min(mm.end()).max(self.start)
    }

    #[inline]
    pub fn spanned(&self) -> u64 {
        self.end - self.start
    }

    #[inline]
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.start && pfn < self.end
    }

    #[inline]
    pub fn wmark(&self, w: Watermark) -> u64 {
        self.wmark[w as usize].load(Relaxed)
    }

    /// Linux `__zone_watermark_ok`: would the zone stay above `mark` (lowered by the reserve
    /// entitlements in `flags`) plus the lowmem reserve for `highest` after handing out a
    /// block of `order`, not counting the high-atomic reserve unless `flags` may use it, and
    /// does a free block of at least `order` exist on a list the request may take from?
    ///
    /// Reads only atomics, so it runs without the zone lock (as Linux's does); under the lock
    /// the answer is exact. Used for both the per-CPU and the zone path.
    #[inline]
    pub fn watermark_ok(&self, order: u32, mark: u64, highest: usize, flags: AllocFlags) -> bool {
        let mut free = self.free_pages.load(Relaxed) as i64 - ((1i64 << order) - 1);
        let mut min = mark as i64;
        if flags.min_reserve {
            min -= min / 2;
        }
        if flags.non_block {
            min -= min / 4;
        }
        if !flags.any_reserve() {
            free -= self.highatomic_pages.load(Relaxed) as i64;
        }
        if free <= min + self.lowmem_reserve[highest].load(Relaxed) as i64 {
            return false;
        }
        if order == 0 {
            return true;
        }
        let mask = self.free_order_mask.load(Relaxed);
        let usable = (mask & PCP_TYPES_MASK) >> order != 0;
        let atomic = flags.highatomic && (mask >> HIGHATOMIC_MASK_SHIFT) >> order != 0;
        usable || atomic
    }
}

/// Where the HighAtomic bits start in [`Zone::free_order_mask`].
pub(crate) const HIGHATOMIC_MASK_SHIFT: u32 = MAX_ORDER_LIMIT + 1;
/// The Unmovable / Movable / Reclaimable / CMA bits of [`Zone::free_order_mask`].
const PCP_TYPES_MASK: u32 = (1 << HIGHATOMIC_MASK_SHIFT) - 1;
const_assert!(2 * (MAX_ORDER_LIMIT + 1) <= u32::BITS);

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn zone_names_match_linux() {
        let names = ZoneType::ALL.map(ZoneType::name);
        assert_eq!(names, ["DMA", "DMA32", "Normal", "Movable"]);
        assert_eq!(format!("{:>8}", ZoneType::Dma), "     DMA");
    }

    #[test]
    fn empty_zone_is_not_populated() {
        let z = Zone::new(ZoneType::Normal, 0, 10, 10);
        assert!(!z.is_populated());
        assert_eq!(z.spanned(), 0);
        assert!(!z.contains(10));
    }
}
