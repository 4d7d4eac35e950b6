//! Error types, one per operation. Every error leaves the allocator exactly as it was.

use core::fmt;

use mmkit_addr::Pfn;

use crate::gfp::GfpError;

/// Why [`BuddyAllocator::alloc_pages`](crate::BuddyAllocator::alloc_pages) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The order is above the configured max order.
    OrderTooLarge {
        /// Requested order.
        order: u32,
        /// Configured max order.
        max: u32,
    },
    /// The flags contradict themselves.
    InvalidFlags(GfpError),
    /// The preferred node does not exist.
    NoSuchNode(usize),
    /// No zone the request may use exists (e.g. `GFP_DMA` on a machine without ZONE_DMA).
    ZoneNotPresent,
    /// `ZERO` was asked for but no `PhysMapper` is configured.
    NoMapper,
    /// Every allowed zone is at its watermark or lacks a large enough block.
    OutOfMemory,
    /// An exact allocation of zero frames was asked for.
    NoPages,
}

/// Why a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The order is above the configured max order.
    OrderTooLarge {
        /// Given order.
        order: u32,
        /// Configured max order.
        max: u32,
    },
    /// The frame is in no zone of any node.
    OutsideZones,
    /// The frame is a hole in its node (no memory there).
    Hole,
    /// The frame is reserved (never given to the allocator).
    Reserved,
    /// The frame is not aligned to the order.
    Misaligned,
    /// The block is already free.
    DoubleFree,
    /// The block was allocated with another order.
    WrongOrder {
        /// The order it was allocated with.
        allocated: u32,
    },
    /// The frame is inside an allocated block whose head is elsewhere.
    InsideBlock {
        /// The allocated block's first frame.
        head: Pfn,
    },
    /// The block is being migrated: its mover promised not to free it until the migration
    /// ends ([`Mover`](crate::Mover)).
    Migrating,
}

/// Why a block could not be migrated ([`BuddyAllocator::migrate_block`](crate::BuddyAllocator::migrate_block)).
/// Nothing changed: the block is still allocated where it was, with its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateError {
    /// The frame is in no zone of any node.
    OutsideZones,
    /// No allocated block of that order starts at the frame (free, a tail, reserved, a hole,
    /// or another order).
    NotAllocated,
    /// The block was not allocated as movable.
    NotMovable,
    /// The block is movable but no mover is registered for it: movable by type only.
    NoMover,
    /// Another migration of the block is under way.
    AlreadyMigrating,
    /// The mover says: not now (the owner is using the block); try later.
    Busy,
    /// The mover says: this block cannot move.
    Refused,
    /// No free block of that order outside the excluded range to move it to.
    NoTarget,
}

/// Why a mover could not be registered ([`BuddyAllocator::register_mover`](crate::BuddyAllocator::register_mover)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoverError {
    /// Every mover slot is taken ([`MAX_MOVERS`](crate::MAX_MOVERS)).
    TableFull,
    /// The id names no registered mover.
    UnknownMover(u8),
    /// No allocated, movable block of that order starts at the frame, or it is being
    /// migrated.
    NotMovableBlock,
}

/// Why a compaction request was refused ([`BuddyAllocator::compact_zone`](crate::BuddyAllocator::compact_zone)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactError {
    /// The node does not exist.
    NoSuchNode(usize),
    /// The zone is empty (not populated) on that node.
    EmptyZone,
    /// The target order is above the configured max order.
    OrderTooLarge {
        /// Requested order.
        order: u32,
        /// Configured max order.
        max: u32,
    },
}

/// Why a boot-time free ([`BuddyAllocator::free_boot_block`](crate::BuddyAllocator::free_boot_block))
/// was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFreeError {
    /// The order is above the configured max order.
    OrderTooLarge,
    /// The frame is not aligned to the order.
    Misaligned,
    /// The block is not wholly inside one zone.
    OutsideZones,
    /// Some frame of the block is a hole or was already freed.
    NotReserved {
        /// The first offending frame.
        pfn: Pfn,
    },
}

/// Why the allocator could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `max_order` above [`MAX_ORDER_LIMIT`](crate::MAX_ORDER_LIMIT) or `pageblock_order`
    /// above `max_order`.
    BadOrder,
    /// A zone boundary is not a multiple of the largest block, or DMA lies above DMA32.
    BadZoneBoundary,
    /// No node, or more than [`MAX_NUMNODES`](crate::MAX_NUMNODES).
    BadNodeCount,
    /// A node's distance table is shorter than the number of nodes.
    BadDistances,
    /// Two nodes' spans overlap.
    OverlappingNodes,
    /// A node spans more frames than 32-bit descriptor indices can address.
    NodeTooLarge,
    /// A node's memmap storage is smaller than [`memmap_len`](crate::memmap_len) says.
    MemmapTooSmall {
        /// The node.
        node: usize,
        /// Descriptors needed.
        needed: usize,
    },
    /// The per-CPU storage is smaller than [`pcp_storage_len`](crate::pcp_storage_len) says.
    PcpStorageTooSmall {
        /// Entries needed.
        needed: usize,
    },
    /// A percentage above 100 in `kernelcore` / `movablecore`.
    BadCoreSize,
}

/// Why a page-private access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateError {
    /// The frame is in no zone.
    OutsideZones,
    /// The frame is not part of an allocated block.
    NotAllocated,
}

/// Why isolating or allocating a frame range failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolateError {
    /// The range is empty, not pageblock-aligned, or not inside one zone.
    BadRange,
    /// A pageblock of the range is already isolated.
    AlreadyIsolated,
    /// A pageblock of the range is not isolated (undo or test of a range never isolated).
    NotIsolated,
    /// A pageblock holds allocated pages that cannot move (unmovable, reclaimable, high-atomic
    /// or reserved frames).
    Unmovable {
        /// A frame in the offending pageblock.
        pfn: Pfn,
    },
    /// A frame of the range is still in use.
    Busy {
        /// The first frame found in use.
        pfn: Pfn,
    },
    /// No suitable range was found (`alloc_contig_pages`).
    NotFound,
    /// The count, rounded up to whole pageblocks, is longer than every zone the request may
    /// use, or does not fit a `u64` (`alloc_contig_pages`).
    TooLarge {
        /// The requested count.
        nr_pages: u64,
    },
    /// The flags contradict themselves (`alloc_contig_pages`).
    InvalidFlags(GfpError),
    /// The preferred node does not exist (`alloc_contig_pages`).
    NoSuchNode(usize),
    /// A frame of the range is a hole (no memory there): the range can never be taken.
    Hole {
        /// The first hole found.
        pfn: Pfn,
    },
    /// An allocated movable block in the range names no [`Mover`](crate::Mover): it is
    /// movable by type only, so the range cannot be cleared.
    NoMover {
        /// The block's first frame.
        pfn: Pfn,
    },
    /// The mover of a block in the range refused to move it (pinned): the range cannot be
    /// cleared.
    Refused {
        /// The block's first frame.
        pfn: Pfn,
    },
    /// No free block outside the range to migrate a block of the range to. Transient:
    /// freeing memory elsewhere may help.
    NoTarget {
        /// The block that could not move.
        pfn: Pfn,
    },
}

impl IsolateError {
    /// Whether the same request may succeed later without the caller changing anything
    /// ("busy, try later": a mover was busy, a block was being freed or migrated, no
    /// migration target was free, another isolation held the range), as opposed to a
    /// request that cannot succeed as asked.
    pub const fn is_transient(&self) -> bool {
        matches!(
            self,
            IsolateError::Busy { .. }
                | IsolateError::NoTarget { .. }
                | IsolateError::AlreadyIsolated
        )
    }
}

/// Why a CMA area could not be declared or a CMA run released
/// ([`BuddyAllocator::declare_cma`](crate::BuddyAllocator::declare_cma),
/// [`cma_release`](crate::BuddyAllocator::cma_release)). Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmaError {
    /// The range is empty, not pageblock-aligned, wraps, or is not inside one zone.
    BadRange,
    /// A frame of the range is not free (allocated, reserved, a hole, or already isolated):
    /// declare areas right after the boot hand-off.
    NotFree {
        /// The first such frame.
        pfn: Pfn,
    },
    /// A pageblock of the range is already CMA, high-atomic or isolated.
    WrongType {
        /// The pageblock's first frame.
        pfn: Pfn,
    },
    /// The run to release is not wholly inside the area.
    OutsideArea,
    /// The run could not be freed (not a run `cma_alloc` returned, or part of one).
    Free(FreeError),
}

/// Why [`BuddyAllocator::deferred_init_step`](crate::BuddyAllocator::deferred_init_step)
/// did nothing. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferredError {
    /// No such node (at or above the node count, or without memory).
    NoSuchNode(usize),
    /// The node's memmap is already wholly initialised (completed, or never deferred).
    Complete,
    /// `max_frames` is 0.
    NoFrames,
}

macro_rules! display_via_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_via_debug!(
    AllocError,
    FreeError,
    BootFreeError,
    InitError,
    PrivateError,
    IsolateError,
    CmaError,
    MigrateError,
    MoverError,
    CompactError,
    DeferredError
);
