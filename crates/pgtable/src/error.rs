//! Error enums, one per operation. Every error leaves the table exactly as it was.

use core::fmt;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::flush::{Flush, FreedTables};

/// Why requested attributes cannot be expressed by a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrError {
    /// READ is missing: every present mapping is readable on the supported architectures.
    NotReadable,
    /// The cache-policy field holds no defined policy.
    BadCachePolicy,
    /// A protection key was given but the format has none.
    PkeyUnsupported,
}

/// What an address argument was misaligned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misaligned {
    /// The virtual start.
    Virt(VirtAddr),
    /// The physical start.
    Phys(PhysAddr),
    /// The length.
    Len(u64),
}

/// Why [`PageTable::free_tables`](crate::PageTable::free_tables) refused a list.
#[derive(Debug, PartialEq, Eq)]
pub enum FreeTablesError {
    /// The list holds tables another [`PageTable`](crate::PageTable) unhooked. It is handed
    /// back untouched and nothing was freed: give it to the table that produced it.
    ForeignList(FreedTables),
}

/// Why [`PageTable::merge_flush`](crate::PageTable::merge_flush) refused two tokens.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeFlushError {
    /// A token carries tables another [`PageTable`](crate::PageTable) unhooked. Both tokens
    /// are handed back untouched (`(a, b)` as passed): invalidate them separately.
    ForeignTables(Flush, Flush),
}

/// Why a table could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewError {
    /// The frame source had no frame for the root table.
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach.
    FrameUnreachable(PhysAddr),
}

/// Why a map failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// An argument is not aligned to the granule (or to the forced page size).
    Unaligned(Misaligned),
    /// The range leaves the canonical address space of the format (or wraps).
    NonCanonical(VirtAddr),
    /// The physical range exceeds the format's output-address width.
    PhysTooWide(PhysAddr),
    /// The forced page size is not one this format can map.
    UnsupportedSize(PageSize),
    /// The attributes cannot be expressed.
    BadAttrs(AttrError),
    /// A mapping already exists at this address.
    AlreadyMapped(VirtAddr),
    /// The range overlaps part of a larger (huge/block) mapping starting at this address.
    OverlapsHugeMapping(VirtAddr, PageSize),
    /// The frame source ran out of table frames; nothing was changed.
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach; nothing was changed.
    FrameUnreachable(PhysAddr),
}

/// Why an unmap failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapError {
    /// An argument is not aligned to the granule.
    Unaligned(Misaligned),
    /// The range leaves the canonical address space of the format (or wraps).
    NonCanonical(VirtAddr),
    /// Splitting a huge mapping needed a table frame and none was left; nothing was changed.
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach; nothing was changed.
    FrameUnreachable(PhysAddr),
    /// Splitting the live block or contiguous run at this address needs break-before-make:
    /// call [`split_live`](crate::PageTable::split_live) first.
    BreakBeforeMake(VirtAddr),
}

/// Why a protect (or accessed/dirty clear) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectError {
    /// An argument is not aligned to the granule.
    Unaligned(Misaligned),
    /// The range leaves the canonical address space of the format (or wraps).
    NonCanonical(VirtAddr),
    /// This page of the range is not mapped.
    NotMapped(VirtAddr),
    /// The resulting attributes cannot be expressed.
    BadAttrs(AttrError),
    /// Splitting a huge mapping needed a table frame and none was left; nothing was changed.
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach; nothing was changed.
    FrameUnreachable(PhysAddr),
    /// The change at this address needs break-before-make on a live table (a cache-policy
    /// change, or splitting a block or contiguous run).
    BreakBeforeMake(VirtAddr),
}

/// Why a copy into another table failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// The source range is invalid (alignment or canonical form).
    Source(ProtectError),
    /// Mapping into the destination failed; the destination is unchanged.
    Destination(MapError),
    /// The two tables have different geometry.
    FormatMismatch,
}

/// Why a live split failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// The address is not aligned to the granule or not canonical.
    BadAddress(VirtAddr),
    /// Nothing is mapped there.
    NotMapped(VirtAddr),
    /// No table frame was left; nothing was changed.
    OutOfFrames,
    /// The frame source returned a frame the mapper cannot reach; nothing was changed.
    FrameUnreachable(PhysAddr),
}

/// An invariant `verify` found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// A table's stored entry count differs from its valid entries.
    CountMismatch {
        /// The table.
        table: PhysAddr,
        /// The count stored in the parent (or the root field).
        recorded: u32,
        /// The valid entries found.
        actual: u32,
    },
    /// A non-root table has no valid entries (unmap must have unhooked it).
    EmptyTable(PhysAddr),
    /// An entry is valid but malformed for its level.
    Malformed {
        /// First address the entry covers.
        va: VirtAddr,
        /// Level index.
        level: usize,
        /// The raw entry.
        raw: u64,
    },
    /// An absent entry is not zero (the generic layer only writes 0).
    DirtyAbsent {
        /// First address the entry covers.
        va: VirtAddr,
        /// The raw entry.
        raw: u64,
    },
    /// A leaf's output address is not aligned to its size or exceeds the physical width.
    BadLeafAddress {
        /// First address the entry covers.
        va: VirtAddr,
        /// The output address.
        pa: PhysAddr,
    },
    /// A leaf's attributes are not in normalized form.
    NotNormalized {
        /// First address the entry covers.
        va: VirtAddr,
    },
    /// A table address is misaligned or exceeds the physical width.
    BadTableAddress(PhysAddr),
    /// The number of reachable tables differs from the number allocated and not yet freed.
    TableCount {
        /// Tables reached by the walk (root included).
        reachable: usize,
        /// Tables the page table believes it owns.
        owned: usize,
    },
    /// A contiguous-hint run is inconsistent (entries differ or the run is misaligned).
    BadContiguousRun(VirtAddr),
}

macro_rules! display_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_debug!(
    AttrError,
    Misaligned,
    NewError,
    MapError,
    UnmapError,
    ProtectError,
    CopyError,
    SplitError,
    VerifyError,
    FreeTablesError,
    MergeFlushError
);
