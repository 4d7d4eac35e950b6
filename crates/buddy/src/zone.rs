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

use crate::migrate::NR_MIGRATE_TYPES;
use crate::page::List;
use crate::pcp::PerCpuPages;
use crate::MAX_ORDER_LIMIT;

/// Number of zone types.
pub const NR_ZONES: usize = 4;

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
pub(crate) struct FreeArea {
    pub lists: [[List; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
    pub counts: [[u64; NR_MIGRATE_TYPES]; MAX_ORDER_LIMIT as usize + 1],
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
    /// Frames handed to the allocator (freed at boot).
    pub managed: AtomicU64,
    /// Frames on the zone's free lists (Linux `NR_FREE_PAGES`).
    pub free_pages: AtomicU64,
    pub wmark: [AtomicU64; 3],
    pub lowmem_reserve: [AtomicU64; NR_ZONES],
    pub pcp_batch: AtomicU32,
    pub pcp_high: AtomicU32,
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
            managed: AtomicU64::new(0),
            free_pages: AtomicU64::new(0),
            wmark: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            lowmem_reserve: [const { AtomicU64::new(0) }; NR_ZONES],
            pcp_batch: AtomicU32::new(1),
            pcp_high: AtomicU32::new(4),
            free: SpinMutex::new(FreeArea::new()),
            pcp: &[],
        }
    }

    /// Whether the zone has any memory given to the allocator.
    #[inline]
    pub fn is_populated(&self) -> bool {
        self.managed.load(Relaxed) > 0
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
}

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
