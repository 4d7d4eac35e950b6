//! GFP ("get free pages") flags: where an allocation may come from and how hard to try.
//!
//! The bits and the named combinations follow Linux `include/linux/gfp_types.h`. From a flag
//! set the allocator derives three things (see [`GfpFlags::zone`], [`GfpFlags::migrate_type`]
//! and the reserve rules in `watermark.rs`):
//!
//! * the **highest zone** it may use, by Linux's `GFP_ZONE_TABLE`: `DMA` -> DMA, `DMA32` ->
//!   DMA32, `MOVABLE | HIGHMEM` -> Movable, anything else -> Normal; two zone modifiers at
//!   once (`DMA | DMA32`, `DMA | HIGHMEM`, ...) are rejected;
//! * the **migrate type**: `MOVABLE` -> Movable, `RECLAIMABLE` -> Reclaimable, neither ->
//!   Unmovable; both at once are rejected;
//! * the **reserves** it may dip into: `HIGH` may use half of the min watermark, a request
//!   that cannot sleep (no `DIRECT_RECLAIM`) a further quarter, and a non-blocking request of
//!   order > 0 may use (and grows) the high-atomic reserve.

use bitflags::bitflags;

use crate::migrate::MigrateType;
use crate::zone::ZoneType;

bitflags! {
    /// Allocation flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct GfpFlags: u32 {
        /// Zone modifier: only ZONE_DMA (below 16 MiB by default).
        const DMA = 1 << 0;
        /// Zone modifier: high memory; with `MOVABLE` it allows ZONE_MOVABLE.
        const HIGHMEM = 1 << 1;
        /// Zone modifier: ZONE_DMA32 or lower (below 4 GiB by default).
        const DMA32 = 1 << 2;
        /// Mobility: the pages can be migrated (and, with `HIGHMEM`, placed in ZONE_MOVABLE).
        const MOVABLE = 1 << 3;
        /// Mobility: the pages can be reclaimed (slab caches with shrinkers).
        const RECLAIMABLE = 1 << 4;
        /// High priority: may use half of the min watermark reserve.
        const HIGH = 1 << 5;
        /// The caller may start physical I/O.
        const IO = 1 << 6;
        /// The caller may call into the filesystem.
        const FS = 1 << 7;
        /// Return zeroed pages (needs a `PhysMapper`).
        const ZERO = 1 << 8;
        /// Do not report an allocation failure.
        const NOWARN = 1 << 9;
        /// The caller may sleep to reclaim memory; without it the request is non-blocking
        /// ("atomic") and may use a further quarter of the min reserve.
        const DIRECT_RECLAIM = 1 << 10;
        /// The caller wants the background reclaimer woken when a zone is low.
        const KSWAPD_RECLAIM = 1 << 11;
        /// Only the preferred node; no fallback to other nodes.
        const THISNODE = 1 << 12;
        /// Enforce the cpuset memory policy (accepted, no effect here).
        const HARDWALL = 1 << 13;
        /// Account the pages to the caller's memory cgroup (accepted, no effect here).
        const ACCOUNT = 1 << 14;
        /// Never use the emergency reserves, even when non-blocking.
        const NOMEMALLOC = 1 << 15;

        /// Both reclaim bits (`__GFP_RECLAIM`).
        const RECLAIM = Self::DIRECT_RECLAIM.bits() | Self::KSWAPD_RECLAIM.bits();
        /// `GFP_ATOMIC`: cannot sleep, high priority, wakes the reclaimer.
        const ATOMIC = Self::HIGH.bits() | Self::KSWAPD_RECLAIM.bits();
        /// `GFP_KERNEL`: ordinary kernel allocations.
        const KERNEL = Self::RECLAIM.bits() | Self::IO.bits() | Self::FS.bits();
        /// `GFP_KERNEL_ACCOUNT`.
        const KERNEL_ACCOUNT = Self::KERNEL.bits() | Self::ACCOUNT.bits();
        /// `GFP_KERNEL | __GFP_RECLAIMABLE`: reclaimable kernel objects (slab with shrinkers).
        const KERNEL_RECLAIMABLE = Self::KERNEL.bits() | Self::RECLAIMABLE.bits();
        /// `GFP_NOWAIT`: cannot sleep, no access to reserves beyond "non-blocking".
        const NOWAIT = Self::KSWAPD_RECLAIM.bits();
        /// `GFP_NOIO`.
        const NOIO = Self::RECLAIM.bits();
        /// `GFP_NOFS`.
        const NOFS = Self::RECLAIM.bits() | Self::IO.bits();
        /// `GFP_USER`: user-space allocations the kernel also touches.
        const USER = Self::KERNEL.bits() | Self::HARDWALL.bits();
        /// `GFP_DMA`.
        const GFP_DMA = Self::DMA.bits();
        /// `GFP_DMA32`.
        const GFP_DMA32 = Self::DMA32.bits();
        /// `GFP_HIGHUSER`.
        const HIGHUSER = Self::USER.bits() | Self::HIGHMEM.bits();
        /// `GFP_HIGHUSER_MOVABLE`: user pages; may be placed in ZONE_MOVABLE.
        const HIGHUSER_MOVABLE = Self::HIGHUSER.bits() | Self::MOVABLE.bits();
        /// `GFP_TRANSHUGE_LIGHT`: opportunistic huge pages that must not dig into reserves.
        const TRANSHUGE_LIGHT = (Self::HIGHUSER_MOVABLE.bits() | Self::NOMEMALLOC.bits()
            | Self::NOWARN.bits()) & !Self::RECLAIM.bits();
    }
}

/// Why a flag set cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GfpError {
    /// More than one zone modifier (Linux's `BAD_ZONE` entries of `GFP_ZONE_TABLE`).
    ConflictingZoneModifiers,
    /// Both `MOVABLE` and `RECLAIMABLE`.
    ConflictingMobility,
}

/// Bits of [`GfpFlags`] that choose the zone and the migrate type (`DMA`, `HIGHMEM`,
/// `DMA32`, `MOVABLE`, `RECLAIMABLE`: bits 0..=4).
const PLACEMENT_BITS: u32 = 0x1f;

/// [`GfpFlags::placement`] for every combination of the placement bits, computed at build
/// time from [`GfpFlags::zone`] and [`GfpFlags::migrate_type`] (Linux keeps the zone half
/// as `GFP_ZONE_TABLE`): bits 0..=1 the zone index, bits 2..=3 the migrate type index, bit
/// 7 set when the combination is refused.
const PLACEMENT_TABLE: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let g = GfpFlags::from_bits_truncate(i as u32);
        t[i] = match (g.zone(), g.migrate_type()) {
            (Ok(z), Ok(m)) => (z as u8) | ((m as u8) << 2),
            _ => 0x80,
        };
        i += 1;
    }
    t
};

impl GfpFlags {
    /// [`zone`](Self::zone) and [`migrate_type`](Self::migrate_type) at once, by one table
    /// lookup (the allocation fast path's decode); `None` where either refuses the flags.
    #[inline]
    pub(crate) fn placement(self) -> Option<(usize, MigrateType)> {
        let e = PLACEMENT_TABLE[(self.bits() & PLACEMENT_BITS) as usize];
        if e & 0x80 != 0 {
            return None;
        }
        let mt = match e >> 2 {
            0 => MigrateType::Unmovable,
            1 => MigrateType::Movable,
            _ => MigrateType::Reclaimable,
        };
        Some((usize::from(e & 3), mt))
    }

    /// The highest zone this request may use (Linux `gfp_zone`).
    pub const fn zone(self) -> Result<ZoneType, GfpError> {
        let dma = self.contains(Self::DMA);
        let dma32 = self.contains(Self::DMA32);
        let high = self.contains(Self::HIGHMEM);
        match (dma, dma32, high) {
            (true, false, false) => Ok(ZoneType::Dma),
            (false, true, false) => Ok(ZoneType::Dma32),
            (false, false, true) if self.contains(Self::MOVABLE) => Ok(ZoneType::Movable),
            (false, false, _) => Ok(ZoneType::Normal),
            _ => Err(GfpError::ConflictingZoneModifiers),
        }
    }

    /// The migrate type this request asks for (Linux `gfp_migratetype`), before the
    /// "grouping disabled" override.
    pub const fn migrate_type(self) -> Result<MigrateType, GfpError> {
        match (
            self.contains(Self::MOVABLE),
            self.contains(Self::RECLAIMABLE),
        ) {
            (true, true) => Err(GfpError::ConflictingMobility),
            (true, false) => Ok(MigrateType::Movable),
            (false, true) => Ok(MigrateType::Reclaimable),
            (false, false) => Ok(MigrateType::Unmovable),
        }
    }

    /// Whether the caller cannot sleep (no direct reclaim): Linux's `ALLOC_NON_BLOCK` unless
    /// `NOMEMALLOC` forbids reserves.
    pub const fn is_non_blocking(self) -> bool {
        !self.contains(Self::DIRECT_RECLAIM) && !self.contains(Self::NOMEMALLOC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_table_matches_linux() {
        assert_eq!(GfpFlags::KERNEL.zone(), Ok(ZoneType::Normal));
        assert_eq!(GfpFlags::GFP_DMA.zone(), Ok(ZoneType::Dma));
        assert_eq!(GfpFlags::GFP_DMA32.zone(), Ok(ZoneType::Dma32));
        assert_eq!(GfpFlags::HIGHUSER.zone(), Ok(ZoneType::Normal));
        assert_eq!(GfpFlags::HIGHUSER_MOVABLE.zone(), Ok(ZoneType::Movable));
        // MOVABLE without HIGHMEM stays out of ZONE_MOVABLE, as in Linux.
        assert_eq!(
            (GfpFlags::KERNEL | GfpFlags::MOVABLE).zone(),
            Ok(ZoneType::Normal)
        );
        assert_eq!(
            (GfpFlags::DMA | GfpFlags::DMA32).zone(),
            Err(GfpError::ConflictingZoneModifiers)
        );
        assert_eq!(
            (GfpFlags::DMA | GfpFlags::HIGHMEM).zone(),
            Err(GfpError::ConflictingZoneModifiers)
        );
    }

    #[test]
    fn mobility_comes_from_flags() {
        assert_eq!(GfpFlags::KERNEL.migrate_type(), Ok(MigrateType::Unmovable));
        assert_eq!(
            GfpFlags::HIGHUSER_MOVABLE.migrate_type(),
            Ok(MigrateType::Movable)
        );
        assert_eq!(
            GfpFlags::KERNEL_RECLAIMABLE.migrate_type(),
            Ok(MigrateType::Reclaimable)
        );
        assert_eq!(
            (GfpFlags::MOVABLE | GfpFlags::RECLAIMABLE).migrate_type(),
            Err(GfpError::ConflictingMobility)
        );
    }

    #[test]
    fn placement_table_agrees_with_zone_and_migrate_type() {
        for bits in 0..(1u32 << 16) {
            let g = GfpFlags::from_bits_truncate(bits);
            let slow = match (g.zone(), g.migrate_type()) {
                (Ok(z), Ok(m)) => Some((z.index(), m)),
                _ => None,
            };
            assert_eq!(g.placement(), slow, "{g:?}");
        }
    }

    #[test]
    fn atomic_is_high_and_non_blocking() {
        assert!(GfpFlags::ATOMIC.contains(GfpFlags::HIGH));
        assert!(GfpFlags::ATOMIC.is_non_blocking());
        assert!(GfpFlags::NOWAIT.is_non_blocking());
        assert!(!GfpFlags::KERNEL.is_non_blocking());
        assert!(!GfpFlags::TRANSHUGE_LIGHT.is_non_blocking());
        assert!(!GfpFlags::TRANSHUGE_LIGHT.intersects(GfpFlags::RECLAIM));
    }
}
