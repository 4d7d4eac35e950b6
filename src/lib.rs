//! # mmkit: Linux-grade physical memory management for Rust kernels
//!
//! This is the facade: it composes the member crates into what a kernel calls.
//!
//! | crate | role |
//! |---|---|
//! | [`addr`] (`mmkit-addr`) | addresses, frames, orders, ranges; the platform hooks (CPU id, interrupt guard, phys→virt) |
//! | [`bootmem`] (`mmkit-bootmem`) | memblock-style early allocator fed by the firmware map; the hand-off |
//! | [`buddy`] (`mmkit-buddy`) | zones, nodes, mobility grouping, ZONE_MOVABLE, per-CPU page lists |
//! | [`slab`] (`mmkit-slab`) | object caches and kmalloc, SLUB-style |
//! | [`pgtable`] (`mmkit-pgtable`) | arch-neutral page tables (x86_64, aarch64), flush tokens |
//!
//! ## Boot
//! ```
//! use mmkit::{addr::host::HostPlatform, host::HostRam, addr::{Order, PhysAddr, PhysRange}};
//! use mmkit::buddy::GfpFlags;
//! use mmkit::MmBuilder;
//!
//! let mem = HostRam::new(PhysAddr::new(0), 64 << 20);
//! let ram = PhysRange::from_start_size(PhysAddr::new(0x10_0000), (64 << 20) - 0x10_0000).unwrap();
//! let kernel = PhysRange::from_start_size(PhysAddr::new(0x20_0000), 0x20_0000).unwrap();
//! // SAFETY: `mem` stands for the whole map and nothing else uses it.
//! let mm = unsafe { MmBuilder::new(HostPlatform::new(2), &mem) }
//!     .memory(ram)
//!     .reserve(kernel)
//!     .boot()
//!     .unwrap();
//! let pfn = mm.alloc_pages(GfpFlags::KERNEL, Order::new(2)).unwrap();
//! mm.free_pages(pfn, Order::new(2)).unwrap();
//! let p = mm.kmalloc(100, GfpFlags::KERNEL).unwrap();
//! // SAFETY: `p` came from kmalloc and is not used again.
//! unsafe { mm.kfree(p).unwrap() };
//! ```
//!
//! [`MmBuilder::boot`] runs the sequence of `DESIGN.md` (firmware map → bootmem → memmap,
//! per-CPU storage and zones from bootmem → hand-off → slab → kernel page table); see the
//! `builder` module docs. [`Mm`] then offers pages, kmalloc and caches, vmalloc/vmap,
//! [`Mm::report`] and [`Mm::verify`]; [`GlobalMm`] makes it a `#[global_allocator]`, and
//! with feature `allocator-api2` `&Mm` is an `allocator_api2::alloc::Allocator`.
//!
//! ## Embedding
//! A kernel implements the platform hooks of [`addr`] (CPU id, interrupt guard, cross-CPU
//! call) and a [`KernelMap`] (usually a [`LinearMap`] over its direct map), then boots:
//! `MmBuilder::new` → firmware map (`e820` / `uefi` / `device_tree` / `memory`) →
//! `reserve` everything in use → `vmalloc_area` → `boot`, and maps its address space into
//! the facade's page table with [`Mm::with_page_table`]. The embedding guide,
//! [`docs/embedding.md`](https://github.com/mmkit-rs/mmkit/blob/main/docs/embedding.md),
//! walks through it as the two QEMU kernels (`examples/qemu-*`) do it, gives the memory boot
//! takes (`cargo run --example boot_memory` measures it), and says which kernel files to
//! copy.
//!
//! ## Features
//! * `std`: host stand-ins (`host::HostRam`, `host::HostCpus`) for tests, benches and
//!   the `simulate` example; never for a kernel build.
//! * `fdt`: `MmBuilder::device_tree` through mmkit-bootmem's device-tree ingestion.
//! * `allocator-api2`: the `Allocator` impl.
//!
//! ## Map of the crate
//! | module | concept |
//! |---|---|
//! | `builder` | [`MmBuilder`], [`BootError`]: the boot sequence |
//! | `mm` | [`Mm`]: pages, kmalloc, caches, verify |
//! | `pages` | [`PageAllocator`]: the buddy plus ownership tracking |
//! | `owner` | the page-owner table: per-block use and mobility, pageblock census |
//! | `page_source` | the buddy as slab's `PageSource` |
//! | `frame_source` | the buddy as pgtable's `FrameSource` ([`TableFrames`]) |
//! | `vmalloc` | vmalloc / vfree / vmap / vunmap / vmalloc_to_pfn on the kernel page table |
//! | `movable` | `vmalloc_movable` and the facade's mover ([`MoverTlb`]): mapped pages compaction migrates by unmap → copy → remap |
//! | `report` | meminfo, buddyinfo, pagetypeinfo, zoneinfo, slabinfo, high-order figure |
//! | `svg` | an SVG map of physical memory by pageblock |
//! | `global` | [`GlobalMm`]: `GlobalAlloc` over an `Mm` initialised at boot |
//! | `map` | [`KernelMap`] (phys↔virt), [`LinearMap`] |
//! | `raw` | all raw-memory code: typed storage carved from bootmem |
//! | `host` (feature `std`) | `host::HostRam` (simulated physical memory), `host::HostCpus` (a platform that never allocates) |
//!
//! ## Locks (outermost first)
//! vmalloc lock → slab node locks → buddy per-CPU list lock → buddy zone lock; the buddy calls
//! the facade's mover with no buddy lock held, and the mover takes the vmalloc lock, then the
//! kernel's [`MoverTlb`]. With a node
//! lock held the slab calls only the page allocator's lookups (`virt_to_pfn`,
//! `page_private`: the kernel map and atomic loads, no lock); it allocates and frees pages
//! with no node lock held. The buddy never holds two zone locks; per-CPU sections are the
//! platform's interrupt guard.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod builder;
mod frame_source;
mod global;
#[cfg(any(test, feature = "std"))]
pub mod host;
mod map;
mod mm;
mod movable;
mod owner;
mod page_source;
mod pages;
mod raw;
mod report;
mod svg;
mod vmalloc;

pub use mmkit_addr as addr;
pub use mmkit_bootmem as bootmem;
pub use mmkit_buddy as buddy;
pub use mmkit_pgtable as pgtable;
pub use mmkit_slab as slab;

pub use builder::{
    BootCost, BootError, MmBuilder, LOCAL_DISTANCE, MAX_CPU_NODE_MAP, REMOTE_DISTANCE,
};
pub use frame_source::TableFrames;
pub use global::{AllocatedBlock, DeallocError, DeallocHook, GlobalMm};
pub use map::{KernelMap, LinearMap, MapRef};
pub use mm::{
    BootSummary, FreeReservedError, Mm, MmCache, MmKmalloc, MmTypedCache, PageFreeError,
    VerifyError,
};
pub use movable::{MovableError, MovableStats, MoverTlb};
pub use owner::{Owner, PageUse, PageblockCensus};
pub use pages::PageAllocator;
pub use report::{HighOrder, MemInfo, Report};
pub use svg::{SvgMap, COLUMNS, PALETTE};
pub use vmalloc::{
    KernelPageTable, VfreeError, VmallocCorruption, VmallocError, VmallocStats, VFREE_BATCH,
};

/// A TLB invalidator for code that has not loaded the kernel page table into any MMU yet
/// (and for host tests without a software MMU): there is nothing to invalidate.
#[derive(Debug)]
pub struct NotLoaded(());

impl NotLoaded {
    /// An invalidator that does nothing.
    ///
    /// # Safety
    /// Use it only with page tables that no MMU has loaded (and whose translations no TLB
    /// can hold), e.g. on a host, or before the kernel switches to the table.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: `new`'s contract: no MMU uses the table, so no TLB holds a translation from it.
unsafe impl pgtable::TlbInvalidate for NotLoaded {
    fn invalidate_page(&mut self, _: addr::VirtAddr, _: addr::PageSize, _: bool) {}
    fn invalidate_all(&mut self) {}
}
