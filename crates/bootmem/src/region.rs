//! One entry of a region list: a physical range with flags and a NUMA node id.
//!
//! A [`Region`] is plain data (`Copy`, no pointers) so that a list of them can live in a fixed
//! inline array or be copied into memory that bootmem allocated from itself. Its range is
//! half-open and byte-granular: firmware describes memory in bytes, and only the hand-off
//! rounds to whole 4 KiB frames. Two regions are *compatible* (and merge when they touch) when
//! their flags and node ids are equal.

use core::fmt;

use mmkit_addr::{PhysAddr, PhysRange};

bitflags::bitflags! {
    /// Attributes of a memory region, after Linux's `enum memblock_flags`.
    ///
    /// Reserved regions normally carry no flags; the flags describe *memory*.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RegionFlags: u32 {
        /// Hot-removable memory (firmware marked it hotpluggable). With
        /// [`HotplugPolicy::Avoid`](crate::HotplugPolicy) bootmem never allocates from it, so
        /// it stays removable.
        const HOTPLUG = 1 << 0;
        /// Address-range-mirrored (more reliable) memory; preferred for kernel allocations when
        /// [`Bootmem::set_mirror_first`](crate::Bootmem::set_mirror_first) is on.
        const MIRROR = 1 << 1;
        /// Memory that must not be put in the kernel's linear map (firmware runtime areas,
        /// device-tree `no-map` carve-outs). Never allocated, never handed off.
        const NOMAP = 1 << 2;
        /// Memory owned by a driver (e.g. EFI soft-reserved / special-purpose memory). Never
        /// allocated, never handed off.
        const DRIVER_MANAGED = 1 << 3;
    }
}

impl RegionFlags {
    /// Flags whose memory bootmem never allocates from and never hands to the buddy.
    pub const NOT_ALLOCATABLE: RegionFlags = RegionFlags::NOMAP.union(RegionFlags::DRIVER_MANAGED);

    /// Transaction bookkeeping (see `Bootmem::atomically`), never visible outside one:
    /// a region whose bytes an open transaction added.
    pub(crate) const TXN_NEW: RegionFlags = RegionFlags::from_bits_retain(1 << 31);
    /// Transaction bookkeeping: flag bit `k` set by an open transaction is recorded as bit
    /// `k + TXN_SHADOW_SHIFT`, so a rollback clears exactly what the transaction set.
    pub(crate) const TXN_SHADOW_SHIFT: u32 = 16;

    /// The shadow bits recording that `set` was set by an open transaction.
    pub(crate) const fn txn_shadow(set: RegionFlags) -> RegionFlags {
        RegionFlags::from_bits_retain((set.bits() & 0xffff) << Self::TXN_SHADOW_SHIFT)
    }

    /// The flags with the transaction's edits undone: shadowed bits cleared, bookkeeping gone.
    pub(crate) const fn txn_undone(self) -> RegionFlags {
        let set_by_txn = (self.bits() >> Self::TXN_SHADOW_SHIFT) & 0x7fff;
        RegionFlags::from_bits_retain(self.bits() & 0xffff & !set_by_txn)
    }

    /// The flags with the transaction's edits kept, bookkeeping gone.
    pub(crate) const fn txn_committed(self) -> RegionFlags {
        RegionFlags::from_bits_retain(self.bits() & 0xffff)
    }

    /// Names used by the region report, in bit order (as memblock's debugfs prints them).
    const NAMES: [(RegionFlags, &'static str); 4] = [
        (RegionFlags::HOTPLUG, "HOTPLUG"),
        (RegionFlags::MIRROR, "MIRROR"),
        (RegionFlags::NOMAP, "NOMAP"),
        (RegionFlags::DRIVER_MANAGED, "DRV_MNG"),
    ];
}

impl fmt::Debug for RegionFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `NONE` for no flags, else the flag names joined by `|`.
impl fmt::Display for RegionFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.pad("NONE");
        }
        // Pad as one string so report columns line up: build it in a small stack buffer.
        let mut buf = [0u8; 40];
        let mut len = 0;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if len > 0 {
                    buf[len] = b'|';
                    len += 1;
                }
                buf[len..len + name.len()].copy_from_slice(name.as_bytes());
                len += name.len();
            }
        }
        let unknown = self.bits() & !Self::all().bits();
        if unknown != 0 {
            return write!(
                f,
                "{}|{unknown:#x}",
                core::str::from_utf8(&buf[..len]).unwrap_or("?")
            );
        }
        f.pad(core::str::from_utf8(&buf[..len]).unwrap_or("?"))
    }
}

/// A NUMA node id.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(u16);

impl NodeId {
    /// Node 0, where memory goes when firmware says nothing about NUMA.
    pub const ZERO: NodeId = NodeId(0);
    /// "No node": the node id of reserved regions (which describe use, not placement).
    pub const NONE: NodeId = NodeId(u16::MAX);

    /// Wrap a node number.
    #[inline]
    pub const fn new(nid: u16) -> Self {
        Self(nid)
    }

    /// The node number.
    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::NONE {
            f.pad("-")
        } else {
            // Format through a small buffer so width/alignment flags apply to the number.
            let mut buf = [0u8; 5];
            let mut n = self.0;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            f.pad(core::str::from_utf8(&buf[i..]).unwrap_or("?"))
        }
    }
}

/// A region of a bootmem list: `[base, end)` with flags and a node id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    base: u64,
    end: u64,
    flags: RegionFlags,
    nid: NodeId,
}

// Layout budget: 24 bytes a region (base, end, flags, node; padded), so
// the two inline lists of `DEFAULT_REGIONS` cost 6 KiB.
const _: () = assert!(core::mem::size_of::<Region>() == 24);

impl Region {
    /// The placeholder that fills unused array slots.
    pub(crate) const EMPTY: Region = Region {
        base: 0,
        end: 0,
        flags: RegionFlags::empty(),
        nid: NodeId::NONE,
    };

    /// A region `[base, end)`; the caller guarantees `base <= end`.
    #[inline]
    pub(crate) const fn new(base: u64, end: u64, flags: RegionFlags, nid: NodeId) -> Self {
        debug_assert!(base <= end);
        Self {
            base,
            end,
            flags,
            nid,
        }
    }

    /// The physical range covered.
    #[inline]
    pub fn range(&self) -> PhysRange {
        PhysRange::new(PhysAddr::new(self.base), PhysAddr::new(self.end))
            .unwrap_or(PhysRange::EMPTY)
    }

    /// The first byte.
    #[inline]
    pub const fn base(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// The first byte past the region.
    #[inline]
    pub const fn end(&self) -> PhysAddr {
        PhysAddr::new(self.end)
    }

    /// The size in bytes.
    #[inline]
    pub const fn size(&self) -> u64 {
        self.end - self.base
    }

    /// The region's flags.
    #[inline]
    pub const fn flags(&self) -> RegionFlags {
        self.flags
    }

    /// The region's NUMA node.
    #[inline]
    pub const fn nid(&self) -> NodeId {
        self.nid
    }

    #[inline]
    pub(crate) const fn raw_base(&self) -> u64 {
        self.base
    }

    #[inline]
    pub(crate) const fn raw_end(&self) -> u64 {
        self.end
    }

    #[inline]
    pub(crate) fn set_base(&mut self, base: u64) {
        debug_assert!(base <= self.end);
        self.base = base;
    }

    #[inline]
    pub(crate) fn set_end(&mut self, end: u64) {
        debug_assert!(self.base <= end);
        self.end = end;
    }

    #[inline]
    pub(crate) fn set_flags(&mut self, flags: RegionFlags) {
        self.flags = flags;
    }

    #[inline]
    pub(crate) fn set_nid(&mut self, nid: NodeId) {
        self.nid = nid;
    }

    /// Whether `next` may merge into `self`: it starts where `self` ends and has the same
    /// flags and node.
    #[inline]
    pub(crate) fn merges_with(&self, next: &Region) -> bool {
        self.end == next.base && self.flags == next.flags && self.nid == next.nid
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Region([{:#x}-{:#x}) nid {} {})",
            self.base, self.end, self.nid, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn flags_display_like_memblock_debugfs() {
        assert_eq!(format!("{}", RegionFlags::empty()), "NONE");
        assert_eq!(
            format!("{}", RegionFlags::HOTPLUG | RegionFlags::NOMAP),
            "HOTPLUG|NOMAP"
        );
        assert_eq!(format!("{:<8}|", RegionFlags::MIRROR), "MIRROR  |");
    }

    #[test]
    fn node_display_pads_and_none_is_dash() {
        assert_eq!(format!("{:>4}", NodeId::new(12)), "  12");
        assert_eq!(format!("{}", NodeId::new(0)), "0");
        assert_eq!(format!("{}", NodeId::NONE), "-");
    }

    #[test]
    fn merge_requires_touching_and_equal_attributes() {
        let a = Region::new(0x1000, 0x2000, RegionFlags::empty(), NodeId::ZERO);
        let b = Region::new(0x2000, 0x3000, RegionFlags::empty(), NodeId::ZERO);
        let c = Region::new(0x2000, 0x3000, RegionFlags::MIRROR, NodeId::ZERO);
        let d = Region::new(0x2001, 0x3000, RegionFlags::empty(), NodeId::ZERO);
        assert!(a.merges_with(&b));
        assert!(!a.merges_with(&c));
        assert!(!a.merges_with(&d));
        assert_eq!(a.range().len(), 0x1000);
    }
}
