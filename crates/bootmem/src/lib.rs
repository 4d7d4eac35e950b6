//! # mmkit-bootmem: the early boot allocator (Linux's memblock)
//!
//! Before any real allocator exists, a kernel must know where memory is and take a few
//! allocations from it (page descriptors, zone tables, early page tables). This crate keeps two
//! sorted lists of physical ranges — **memory** (what exists) and **reserved** (what is in
//! use) — and allocates from memory minus reserved. When the buddy allocator is ready,
//! [`Bootmem::handoff`] consumes the bootmem and yields every free frame as large naturally
//! aligned blocks for the buddy's free-pages path.
//!
//! ```
//! use mmkit_addr::{Order, PhysAddr};
//! use mmkit_bootmem::{firmware::e820::{self, E820Entry, E820Type}, Bootmem};
//!
//! let map = [
//!     E820Entry::new(0x0, 0x9fc00, E820Type::Ram),
//!     E820Entry::new(0x9fc00, 0x400, E820Type::Reserved),
//!     E820Entry::new(0x100000, 0x7ff00000, E820Type::Ram),
//! ];
//! let mut bm: Bootmem = Bootmem::new();
//! e820::ingest(&mut bm, &map).unwrap();
//! bm.reserve(PhysAddr::new(0x100_0000), 0x200_0000).unwrap(); // kernel image
//! let table = bm.alloc(0x1000, 0x1000).unwrap();
//! let handoff = bm.handoff(Order::new(10));
//! assert!(handoff.blocks().all(|b| !b.range().contains(table)));
//! ```
//!
//! ## Map of the crate
//! | module | concept |
//! |---|---|
//! | `region` | [`Region`], [`RegionFlags`] (hotplug, mirror, no-map, driver-managed), [`NodeId`] |
//! | `storage` | the region arrays: inline first, moved into self-allocated memory when full (all raw-memory code) |
//! | `list` | a sorted, merged region list: add / remove / isolate with split and merge |
//! | `bootmem` | [`Bootmem`]: add, remove, reserve, free, flags, nodes, policy, array growth |
//! | `alloc` | [`AllocRequest`], top-down / bottom-up search, node and mirror fallback |
//! | `iter` | [`FreeRanges`] / [`FreeRangesRev`]: memory minus reserved, per node, both directions |
//! | `handoff` | [`Handoff`]: the typestate end of bootmem, blocks for the buddy, accounting |
//! | `report` | `Display`: the memblock debugfs view |
//! | `verify` | [`Bootmem::verify`], the invariant scanner |
//! | [`firmware`] | e820, UEFI memory map and device-tree (feature `fdt`) ingestion |
//!
//! ## Decisions
//! * Ranges are bytes (firmware maps are); only the hand-off rounds inward to whole frames.
//! * Overlapping input follows memblock: adding memory over memory keeps the existing node and
//!   flags; reserving over a reservation is fine; `free` of bytes that are not reserved is an
//!   error ([`FreeError::NotReserved`]) so double frees are caught.
//! * Physical page 0 is never allocated and never handed off.
//! * Errors are values and leave the bootmem unchanged (see `bootmem`'s module docs for how
//!   growth keeps that promise).
//! * The only `unsafe` API is [`Bootmem::set_mapper`]: by giving a phys→virt mapper the caller
//!   promises that free memory is really free, which lets bootmem write region arrays and zero
//!   allocations there.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]
// Unsafe code is fenced: `storage` holds the raw array code, and the only other sites — the
// `set_mapper` contract, the array move during growth, zeroing an allocation — each carry an
// explicit `allow` (tests are exempt: they hand host memory to `set_mapper`).
#![cfg_attr(not(test), deny(unsafe_code))]

mod alloc;
mod bootmem;
pub mod firmware;
mod handoff;
mod iter;
mod list;
mod region;
mod report;
#[allow(unsafe_code)]
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod verify;

pub use alloc::AllocRequest;
pub use bootmem::{Bootmem, HotplugPolicy, DEFAULT_PHYS_LIMIT, DEFAULT_REGIONS};
pub use error::{AllocError, FreeError, GrowError, RegionError};
pub use handoff::{
    Block, BlockRun, BlockRuns, Blocks, Handoff, HandoffRanges, NodePages, ReservedInMemory,
    ReservedPart,
};
pub use iter::{FreeRange, FreeRanges, FreeRangesRev, RangeFilter};
pub use list::ListKind;
pub use region::{NodeId, Region, RegionFlags};
pub use verify::VerifyError;

mod error;
