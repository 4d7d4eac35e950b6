//! Cache creation flags and allocation (GFP) flags.
//!
//! The names follow Linux's `SLAB_*` and `__GFP_*` flags so a kernel author recognises them.
//! Debug flags ([`CacheFlags::DEBUG`]) move a cache off the per-CPU fast path onto the locked
//! debug path, exactly as SLUB does: a cache without them pays nothing for debugging.

bitflags::bitflags! {
    /// How a cache lays out and treats its objects (Linux `SLAB_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CacheFlags: u32 {
        /// Align objects to a cache line (halved while the object fits twice), as
        /// `SLAB_HWCACHE_ALIGN`.
        const HWCACHE_ALIGN = 1 << 0;
        /// Slab pages are allocated as reclaimable (`SLAB_RECLAIM_ACCOUNT`).
        const RECLAIM_ACCOUNT = 1 << 1;
        /// Slab pages go back to the page source only after an RCU grace period; an object
        /// may be freed and reused, but its memory stays an object of this cache for readers
        /// that still hold a pointer (`SLAB_TYPESAFE_BY_RCU`).
        const TYPESAFE_BY_RCU = 1 << 2;
        /// Never merge this cache with another of the same geometry (`SLAB_NO_MERGE`). mmkit
        /// never merges caches, so this is always in effect; it is accepted for fidelity.
        const NO_MERGE = 1 << 3;
        /// Full sanity checks on every free: double free, owning slab, freelist walk
        /// (`SLAB_CONSISTENCY_CHECKS`, debug letter F).
        const CONSISTENCY_CHECKS = 1 << 8;
        /// Red zones around every object, checked on free and by `verify()` (`SLAB_RED_ZONE`,
        /// letter Z).
        const RED_ZONE = 1 << 9;
        /// Free objects are filled with a poison pattern, checked on allocation and by
        /// `verify()` (`SLAB_POISON`, letter P). Not applied to caches with a constructor or
        /// `TYPESAFE_BY_RCU`, whose free objects must stay intact.
        const POISON = 1 << 10;
        /// Record the source location that allocated and that freed each object
        /// (`SLAB_STORE_USER`, letter U).
        const STORE_USER = 1 << 11;
        /// All debug flags: any of them puts the cache on the locked debug path.
        const DEBUG = Self::CONSISTENCY_CHECKS.bits()
            | Self::RED_ZONE.bits()
            | Self::POISON.bits()
            | Self::STORE_USER.bits();
    }
}

bitflags::bitflags! {
    /// Allocation flags passed down to the page source (Linux `__GFP_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Gfp: u32 {
        /// Zero the returned memory (`__GFP_ZERO`; `kzalloc`).
        const ZERO = 1 << 0;
        /// Pages for reclaimable objects: the page source groups them with other reclaimable
        /// pages (`__GFP_RECLAIMABLE`; kmalloc's `kmalloc-rcl-*` caches).
        const RECLAIMABLE = 1 << 1;
        /// Pages from the DMA zone (`__GFP_DMA`; kmalloc's `dma-kmalloc-*` caches).
        const DMA = 1 << 2;
        /// The caller cannot sleep: a slab that must grow takes its pages without direct
        /// reclaim or compaction (`GFP_NOWAIT`). Without it a grow may block (`GFP_KERNEL`).
        const NOWAIT = 1 << 3;
        /// The caller may use part of the page allocator's reserves below the min
        /// watermark (`__GFP_HIGH`).
        const HIGH = 1 << 4;
        /// Interrupt or atomic context: cannot sleep, may use the atomic reserves
        /// (`GFP_ATOMIC`).
        const ATOMIC = Self::NOWAIT.bits() | Self::HIGH.bits();
    }
}

impl Gfp {
    /// The bits that describe the caller's context (may it block, may it use the reserves)
    /// rather than the memory: a cache's own zone and mobility bits stay the cache's, these
    /// come from the call.
    pub const CONTEXT: Gfp = Gfp::ATOMIC;
}

impl CacheFlags {
    /// Whether the cache takes the locked debug path.
    pub const fn is_debug(self) -> bool {
        self.intersects(Self::DEBUG)
    }

    /// The Linux debug letters (`F`, `Z`, `P`, `U`) this cache has, as `slabinfo` and
    /// `slub_debug=` spell them; empty when debugging is off.
    pub fn debug_letters(self) -> DebugLetters {
        DebugLetters(self)
    }
}

/// Display helper for [`CacheFlags::debug_letters`].
#[derive(Debug, Clone, Copy)]
pub struct DebugLetters(CacheFlags);

/// Debug letters in the order Linux prints them; from `Documentation/mm/slub.rst`.
const DEBUG_LETTERS: [(CacheFlags, char); 4] = [
    (CacheFlags::CONSISTENCY_CHECKS, 'F'),
    (CacheFlags::RED_ZONE, 'Z'),
    (CacheFlags::POISON, 'P'),
    (CacheFlags::STORE_USER, 'U'),
];

impl core::fmt::Display for DebugLetters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (flag, letter) in DEBUG_LETTERS {
            if self.0.contains(flag) {
                core::fmt::Write::write_char(f, letter)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn debug_flags_select_debug_path() {
        assert!(!CacheFlags::HWCACHE_ALIGN.is_debug());
        assert!(!CacheFlags::TYPESAFE_BY_RCU.is_debug());
        assert!(CacheFlags::POISON.is_debug());
        assert!((CacheFlags::RED_ZONE | CacheFlags::NO_MERGE).is_debug());
    }

    #[test]
    fn debug_letters_follow_linux_order() {
        let f = CacheFlags::STORE_USER | CacheFlags::CONSISTENCY_CHECKS | CacheFlags::POISON;
        assert_eq!(f.debug_letters().to_string(), "FPU");
        assert_eq!(CacheFlags::empty().debug_letters().to_string(), "");
    }
}
