//! # mmkit: Linux-grade physical memory management for Rust kernels
//!
//! This is the facade package. It re-exports the member crates:
//!
//! * [`addr`] (`mmkit-addr`): addresses, frame numbers, orders, page sizes, ranges, and the
//!   platform hooks (CPU id, interrupt guard, phys→virt) every other crate uses;
//! * [`bootmem`] (`mmkit-bootmem`): the memblock-style early allocator fed by the firmware
//!   memory map, shut down by a hand-off that yields every free range as large aligned blocks.
//!
//! Boot order (see `DESIGN.md`): firmware map → bootmem → memmap and zones → hand-off to the
//! buddy → slab → page tables. The composing API lands with the buddy, slab and page-table
//! crates.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

pub use mmkit_addr as addr;
