//! Ingestion of the memory maps kernels receive from firmware, one format per module:
//!
//! * [`e820`] — the x86 BIOS map (also what QEMU's `-kernel` boot and multiboot give);
//! * [`uefi`] — the raw `EFI_MEMORY_DESCRIPTOR` array from `GetMemoryMap()`;
//! * `fdt` (feature `fdt`) — device-tree `/memory` nodes, `/reserved-memory` and the
//!   `/memreserve/` block, through bootmem's own panic-free FDT reader.
//!
//! Every ingestion follows the same rules:
//! * **Malformed input is an error value, never a panic**, naming the bad entry (index,
//!   descriptor or blob offset). Each parser checks the whole input before it changes the
//!   bootmem.
//! * **End-address overflow is refused**: an entry whose `base + size` does not fit in 64 bits
//!   makes the whole input an error (`Wraps`).
//! * **Memory past the physical address limit is clipped**
//!   ([`Bootmem::set_phys_limit`](crate::Bootmem::set_phys_limit), 52 bits by default): those
//!   bytes cannot exist, so they are dropped and counted in the summary's `clipped` field for
//!   the caller to warn about, as Linux trims memblock.
//! * **All-or-nothing**: the edits run inside a bootmem transaction; if one fails (region lists
//!   full and unable to grow, a dynamic device-tree region with no room), the edits before it
//!   are undone and the error says which edit failed. Region arrays that grew on the way stay
//!   grown.

pub mod e820;
#[cfg(feature = "fdt")]
pub mod fdt;
pub mod uefi;
