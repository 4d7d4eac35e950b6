//! # mmkit-buddy: Linux's buddy page allocator for `no_std` kernels
//!
//! Physical memory is handed out in naturally aligned blocks of `2^order` 4 KiB frames,
//! identified by [`Pfn`](mmkit_addr::Pfn). The design follows Linux `mm/page_alloc.c`:
//!
//! * **Memmap, not page contents.** One 16-byte [`PageDesc`] per frame in caller-provided
//!   storage; free lists link descriptor indices, so the allocator never reads or writes free
//!   memory, and a bad free (double, wrong order, inside a block, reserved) is caught in O(1)
//!   from the descriptor ([`page`](crate::PageDesc) module docs).
//! * **Nodes and zones** (DMA / DMA32 / Normal / Movable) with Linux's zonelist order,
//!   ZONE_MOVABLE sized from `kernelcore=`/`movablecore=`.
//! * **Free areas** per zone for orders `0..=max_order` × [`MigrateType`]; split and merge in
//!   O(order); a freed block waits at the list tail when its next-higher buddy is free.
//! * **Mobility grouping**: every pageblock has a migrate type; fallback claims whole
//!   pageblocks by Linux's rules or steals single blocks (`fallback.rs`).
//! * **Watermarks** min/low/high, lowmem reserve, the high-atomic reserve, and a hook where
//!   Linux wakes kswapd.
//! * **Per-CPU lists** for orders 0..=3 per mobility type, refilled and drained in batches.
//! * **Isolation** of frame ranges and contiguous allocation beyond the max order, migrating
//!   movable blocks out of the way ([`BuddyAllocator::alloc_contig_range`]); **CMA** areas
//!   declared at boot that movable memory borrows ([`BuddyAllocator::declare_cma`],
//!   [`BuddyAllocator::cma_alloc`]).
//! * **Migration and compaction**: owners register a [`Mover`] for their movable blocks;
//!   [`BuddyAllocator::migrate_block`] moves one block, [`BuddyAllocator::compact_zone`]
//!   runs Linux's two-scanner compaction; [`Extfrag`] gives the fragmentation indices.
//! * **Deferred memmap initialisation** (Linux `CONFIG_DEFERRED_STRUCT_PAGE_INIT`): with
//!   [`BuddyConfig::deferred_init`] a node initialises only its first part at boot; the
//!   rest is initialised by [`BuddyAllocator::deferred_init_step`] (a thread per node) or
//!   by allocations that would otherwise fail (`deferred.rs`).
//! * **Reports** in `/proc/buddyinfo`, `/proc/pagetypeinfo` and `/proc/zoneinfo` layouts.
//! * [`BuddyAllocator::verify`] checks every invariant.
//!
//! ## Using it
//! ```
//! use core::mem::MaybeUninit;
//! use mmkit_addr::{host::HostPlatform, Order, PhysAddr, PhysRange};
//! use mmkit_buddy::*;
//!
//! let ram = [PhysRange::from_start_size(PhysAddr::new(0), 64 << 20).unwrap()];
//! let cfg = BuddyConfig::default();
//! let mut memmap: Vec<MaybeUninit<PageDesc>> =
//!     (0..memmap_len(&ram, cfg.max_order)).map(|_| MaybeUninit::uninit()).collect();
//! let mut pcp: Vec<MaybeUninit<PerCpuPages>> =
//!     (0..pcp_storage_len(1, 2)).map(|_| MaybeUninit::uninit()).collect();
//! let mut nodes = [NodeInit { memory: &ram, distances: &[10], memmap: &mut memmap }];
//! let buddy = BuddyAllocator::new(HostPlatform::new(2), cfg, &mut nodes, &mut pcp).unwrap();
//! buddy.free_boot_range(ram[0]).unwrap(); // the boot allocator's hand-off
//! buddy.finish_boot();
//!
//! let pfn = buddy.alloc_pages(GfpFlags::KERNEL, Order::new(2)).unwrap();
//! buddy.free_pages(pfn, Order::new(2)).unwrap();
//! assert_eq!(buddy.free_pages(pfn, Order::new(2)), Err(FreeError::DoubleFree));
//! buddy.verify().unwrap();
//! ```
//!
//! In a kernel, build the allocator where it will live with [`BuddyAllocator::init_in`]
//! (a `static` slot or bootmem): it writes the ~45 KiB structure in place and needs about
//! 6 KiB of stack (12 KiB in a debug build), where `new` returns it by value.
//!
//! ## Locking (order: per-CPU list lock, then zone lock)
//! Each zone has a spin lock over its free lists; each (zone, CPU) has a per-CPU list lock
//! taken by its CPU with a try-lock inside an interrupt guard. No path takes two zone locks,
//! or a per-CPU lock while holding a zone lock. The low-watermark hook runs with no lock held.
//!
//! ## Unsafe
//! Confined to `raw.rs`: initialising caller storage (the sparse memmap, a section table
//! over blocks of descriptors written as sections are initialised, for holes and deferred
//! initialisation) and zeroing frames through a `PhysMapper`. Descriptors are
//! atomics, so every other access is safe code.
#![no_std]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

#[cfg(test)]
extern crate std;

mod alloc;
mod allocator;
mod cma;
mod compaction;
mod config;
mod deferred;
mod error;
mod exact;
mod fallback;
mod free;
mod freearea;
mod gfp;
mod isolate;
mod migrate;
mod movable;
mod mover;
mod page;
mod pcp;
#[allow(unsafe_code)]
mod raw;
mod report;
mod verify;
mod watermark;
mod zone;

#[cfg(test)]
mod testutil;

pub use allocator::{BuddyAllocator, LowWatermarkHook, ZoneStats};
pub use cma::CmaArea;
pub use compaction::{CompactOutcome, CompactResult, CompactStats, Extfrag, DEFAULT_PROACTIVENESS};
pub use config::{
    memmap_len, memmap_sections, node_span, pcp_storage_len, BuddyConfig, CoreSize, NodeInit,
    DEFAULT_LOWMEM_RESERVE_RATIO,
};
pub use deferred::{
    DeferredInfo, DeferredObserver, DeferredProgress, DEFERRED_GROW_FRAMES, DEFERRED_RUNS,
};
pub use error::{
    AllocError, BootFreeError, CmaError, CompactError, DeferredError, FreeError, InitError,
    IsolateError, MigrateError, MoverError, PrivateError,
};
pub use exact::{exact_pieces, ResizeError};
pub use gfp::{GfpError, GfpFlags};
pub use isolate::CONTIG_CANDIDATES;
pub use migrate::{MigrateType, FALLBACKS, NR_MIGRATE_TYPES, NR_PCP_TYPES};
pub use mover::{MigrationObserver, MoveError, Mover, MoverId, MAX_MOVERS};
pub use page::{PageDesc, PageState};
pub use pcp::{PerCpuPages, PCP_MAX_ORDER};
pub use raw::SectionMap;
pub use report::{BuddyInfo, PageTypeInfo, PageblockCensus, ZoneInfo};
pub use verify::VerifyError;
pub use watermark::default_min_free_kbytes;
pub use zone::{Watermark, ZoneType, NR_ZONES, WATERMARK_BOOST_FACTOR};

/// Largest supported `max_order` (blocks of `2^15` frames, 128 MiB).
pub const MAX_ORDER_LIMIT: u32 = 15;

/// Largest number of NUMA nodes.
pub const MAX_NUMNODES: usize = 8;
