//! Ingestion of the memory maps kernels receive from firmware, one format per module:
//!
//! * [`e820`] — the x86 BIOS map (also what QEMU's `-kernel` boot and multiboot give);
//! * [`uefi`] — the raw `EFI_MEMORY_DESCRIPTOR` array from `GetMemoryMap()`;
//! * `fdt` (feature `fdt`) — device-tree `/memory` nodes, `/reserved-memory` and the
//!   `/memreserve/` block, through the `fdt` crate.
//!
//! Each parser validates the whole input before it changes the bootmem, so malformed input
//! is an error with the bootmem untouched. The bootmem edits that follow can still fail for
//! lack of room (`RegionsFull`) part-way; the error says so and the ranges applied before it
//! stay applied (each single edit is still atomic).

pub mod e820;
#[cfg(feature = "fdt")]
pub mod fdt;
pub mod uefi;
