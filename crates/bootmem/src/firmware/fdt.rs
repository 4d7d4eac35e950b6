//! Device-tree ingestion (feature `fdt`): `/memory` nodes, `/reserved-memory` and the
//! `/memreserve/` block, read with the `fdt` crate.
//!
//! Follows Linux's `early_init_dt_scan_memory` and `of_reserved_mem`:
//! * every child of the root with `device_type = "memory"` and an available `status` adds its
//!   `linux,usable-memory` ranges if present, else its `reg` ranges, on the node named by
//!   `numa-node-id` (node 0 without one), flagged [`RegionFlags::HOTPLUG`] if the node has a
//!   `hotpluggable` property;
//! * each `/memreserve/` entry is reserved;
//! * each available child of `/reserved-memory` with a `reg` is reserved — or, with `no-map`,
//!   its memory is flagged [`RegionFlags::NOMAP`] instead (it leaves the linear map); `reusable`
//!   regions (CMA pools) are reserved like the others, for their driver to release;
//! * a child without `reg` but with `size` is allocated now, from its `alloc-ranges` in order
//!   (anywhere without them), aligned to its `alignment` (4 KiB without one); with `no-map` the
//!   allocation then becomes a no-map range.
//!
//! `reg`-like properties are decoded with the parent's `#address-cells` / `#size-cells` (1 or
//! 2 cells each; 0 size cells is rejected). The whole tree is validated before bootmem is
//! touched.
//!
//! The `fdt` crate checks the header (magic, size) but trusts the structure block and panics
//! on a corrupt one; pass the blob the bootloader produced, not untrusted data.

use core::fmt;

use ::fdt::node::FdtNode;
use ::fdt::Fdt;
use mmkit_addr::{PhysAddr, PhysRange, PAGE_SIZE};

use crate::alloc::AllocRequest;
use crate::bootmem::{raw_range, Bootmem};
use crate::error::{AllocError, RegionError};
use crate::region::{NodeId, RegionFlags};

/// Why a device tree could not be ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// The blob header is invalid: bad magic, or the buffer is shorter than the blob says.
    BadHeader,
    /// `#address-cells` or `#size-cells` is outside what a 64-bit `reg` can hold.
    BadCells {
        /// `#address-cells`.
        address: usize,
        /// `#size-cells`.
        size: usize,
    },
    /// A property has a length that is not a whole number of entries.
    BadProperty(&'static str),
    /// A range wraps the address space.
    Wraps {
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// A bootmem edit failed; the edits before it were applied.
    Region {
        /// The range being applied.
        range: PhysRange,
        /// Why it failed.
        error: RegionError,
    },
    /// A dynamically placed reserved region could not be allocated.
    Alloc(AllocError),
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHeader => f.write_str("bad device-tree header"),
            Self::BadCells { address, size } => {
                write!(
                    f,
                    "unsupported #address-cells {address} / #size-cells {size}"
                )
            }
            Self::BadProperty(name) => write!(f, "malformed property {name}"),
            Self::Wraps { base, size } => {
                write!(f, "range at {base:#x} of size {size:#x} wraps")
            }
            Self::Region { range, error } => write!(f, "device-tree range {range}: {error}"),
            Self::Alloc(e) => write!(f, "dynamic reserved-memory region: {e}"),
        }
    }
}

/// What [`ingest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdtSummary {
    /// Memory ranges added.
    pub memory_ranges: usize,
    /// Bytes of memory added.
    pub memory_bytes: u64,
    /// Ranges reserved (`/memreserve/` and `/reserved-memory`).
    pub reserved_ranges: usize,
    /// Ranges turned no-map.
    pub nomap_ranges: usize,
    /// Regions allocated dynamically.
    pub allocated: usize,
}

/// Cell counts for a `reg`-like property.
#[derive(Clone, Copy)]
struct Cells {
    address: usize,
    size: usize,
}

impl Cells {
    fn of_children(node: FdtNode<'_, '_>) -> Result<Self, FdtError> {
        let c = node.cell_sizes();
        if !(1..=2).contains(&c.address_cells) || !(1..=2).contains(&c.size_cells) {
            return Err(FdtError::BadCells {
                address: c.address_cells,
                size: c.size_cells,
            });
        }
        Ok(Self {
            address: c.address_cells,
            size: c.size_cells,
        })
    }
}

/// Big-endian number of 1 or 2 cells.
fn be_cells(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// The `(base, size)` pairs of a `reg`-like property.
fn pairs<'a>(
    value: &'a [u8],
    cells: Cells,
    name: &'static str,
) -> Result<impl Iterator<Item = (u64, u64)> + 'a, FdtError> {
    let stride = (cells.address + cells.size) * 4;
    if value.len() % stride != 0 {
        return Err(FdtError::BadProperty(name));
    }
    Ok(value.chunks_exact(stride).map(move |e| {
        let (a, s) = e.split_at(cells.address * 4);
        (be_cells(a), be_cells(s))
    }))
}

/// A single number of `cells` cells.
fn number(value: &[u8], cells: usize, name: &'static str) -> Result<u64, FdtError> {
    if value.len() != cells * 4 {
        return Err(FdtError::BadProperty(name));
    }
    Ok(be_cells(value))
}

fn available(node: FdtNode<'_, '_>) -> bool {
    match node.property("status").and_then(|p| p.as_str()) {
        None => true,
        Some(s) => s == "okay" || s == "ok",
    }
}

fn checked(base: u64, size: u64) -> Result<(), FdtError> {
    base.checked_add(size)
        .map(|_| ())
        .ok_or(FdtError::Wraps { base, size })
}

/// One edit the tree asks for.
enum Edit<'a> {
    Memory {
        base: u64,
        size: u64,
        nid: NodeId,
        flags: RegionFlags,
    },
    Reserve {
        base: u64,
        size: u64,
    },
    NoMap {
        base: u64,
        size: u64,
    },
    Allocate {
        size: u64,
        align: u64,
        ranges: &'a [u8],
        cells: Cells,
        nomap: bool,
    },
}

/// Walk the tree and hand every edit to `apply`, in the order bootmem must see them.
fn walk<'a>(
    tree: &'a Fdt<'a>,
    apply: &mut dyn FnMut(Edit<'a>) -> Result<(), FdtError>,
) -> Result<(), FdtError> {
    let Some(root) = tree.find_node("/") else {
        return Ok(());
    };
    let root_cells = Cells::of_children(root)?;
    for node in root.children() {
        let is_memory = node.property("device_type").and_then(|p| p.as_str()) == Some("memory");
        if !is_memory || !available(node) {
            continue;
        }
        let nid = match node.property("numa-node-id") {
            Some(p) => {
                let n = number(p.value, 1, "numa-node-id")?;
                NodeId::new(u16::try_from(n).map_err(|_| FdtError::BadProperty("numa-node-id"))?)
            }
            None => NodeId::ZERO,
        };
        let flags = if node.property("hotpluggable").is_some() {
            RegionFlags::HOTPLUG
        } else {
            RegionFlags::empty()
        };
        let (value, name) = match node.property("linux,usable-memory") {
            Some(p) => (p.value, "linux,usable-memory"),
            None => match node.property("reg") {
                Some(p) => (p.value, "reg"),
                None => continue,
            },
        };
        for (base, size) in pairs(value, root_cells, name)? {
            checked(base, size)?;
            if size > 0 {
                apply(Edit::Memory {
                    base,
                    size,
                    nid,
                    flags,
                })?;
            }
        }
    }
    for rsv in tree.memory_reservations() {
        let (base, size) = (rsv.address() as usize as u64, rsv.size() as u64);
        checked(base, size)?;
        if size > 0 {
            apply(Edit::Reserve { base, size })?;
        }
    }
    let Some(resmem) = tree.find_node("/reserved-memory") else {
        return Ok(());
    };
    let cells = Cells::of_children(resmem)?;
    for child in resmem.children() {
        if !available(child) {
            continue;
        }
        let nomap = child.property("no-map").is_some();
        if let Some(reg) = child.property("reg") {
            for (base, size) in pairs(reg.value, cells, "reg")? {
                checked(base, size)?;
                if size == 0 {
                    continue;
                }
                apply(if nomap {
                    Edit::NoMap { base, size }
                } else {
                    Edit::Reserve { base, size }
                })?;
            }
        } else if let Some(size) = child.property("size") {
            let size = number(size.value, cells.size, "size")?;
            let align = match child.property("alignment") {
                Some(p) => number(p.value, cells.size, "alignment")?,
                None => PAGE_SIZE,
            };
            let ranges = match child.property("alloc-ranges") {
                Some(p) => {
                    for (base, len) in pairs(p.value, cells, "alloc-ranges")? {
                        checked(base, len)?;
                    }
                    p.value
                }
                None => &[],
            };
            apply(Edit::Allocate {
                size,
                align,
                ranges,
                cells,
                nomap,
            })?;
        }
    }
    Ok(())
}

/// Parse `blob` and apply its memory, reservations and carve-outs to `bm` (module docs).
pub fn ingest<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    blob: &[u8],
) -> Result<FdtSummary, FdtError> {
    let tree = Fdt::new(blob).map_err(|_| FdtError::BadHeader)?;
    // Validate everything first, so malformed input changes nothing.
    walk(&tree, &mut |_| Ok(()))?;
    let mut summary = FdtSummary::default();
    walk(&tree, &mut |edit| apply(bm, edit, &mut summary))?;
    Ok(summary)
}

fn apply<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    edit: Edit<'_>,
    summary: &mut FdtSummary,
) -> Result<(), FdtError> {
    let region = |base: u64, size: u64| {
        move |error| FdtError::Region {
            range: raw_range(base, base + size),
            error,
        }
    };
    match edit {
        Edit::Memory {
            base,
            size,
            nid,
            flags,
        } => {
            summary.memory_ranges += 1;
            summary.memory_bytes += size;
            bm.add_node(PhysAddr::new(base), size, nid, flags)
                .map_err(region(base, size))
        }
        Edit::Reserve { base, size } => {
            summary.reserved_ranges += 1;
            bm.reserve(PhysAddr::new(base), size)
                .map_err(region(base, size))
        }
        Edit::NoMap { base, size } => {
            summary.nomap_ranges += 1;
            bm.mark(PhysAddr::new(base), size, RegionFlags::NOMAP)
                .map_err(region(base, size))
        }
        Edit::Allocate {
            size,
            align,
            ranges,
            cells,
            nomap,
        } => {
            let req = AllocRequest::new(size, align);
            let mut result = if ranges.is_empty() {
                bm.alloc_request(&req)
            } else {
                Err(AllocError::NoFit { size, align })
            };
            if !ranges.is_empty() {
                for (base, len) in pairs(ranges, cells, "alloc-ranges")? {
                    let within = req
                        .above(PhysAddr::new(base))
                        .below(PhysAddr::new(base + len));
                    result = bm.alloc_request(&within);
                    if result.is_ok() {
                        break;
                    }
                }
            }
            let at = result.map_err(FdtError::Alloc)?;
            summary.allocated += 1;
            if nomap {
                // The range leaves the allocator as no-map memory instead of a reservation.
                bm.free(at, size)
                    .map_err(|_| FdtError::Alloc(AllocError::NoFit { size, align }))?;
                summary.nomap_ranges += 1;
                bm.mark(at, size, RegionFlags::NOMAP)
                    .map_err(region(at.as_u64(), size))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::testing::FdtWriter as Builder;
    use crate::{Bootmem, RangeFilter};
    use std::vec::Vec;

    /// A two-node arm64-like tree (QEMU virt with NUMA): 1 GiB at 0x4000_0000 on node 0,
    /// 1 GiB at 0x8000_0000 on node 1 (hotpluggable), a /memreserve/ for the DTB itself, and
    /// /reserved-memory with a static no-map carve-out, a static reusable CMA pool and a
    /// dynamically placed pool.
    fn virt_tree() -> Vec<u8> {
        let mut b = Builder::new();
        b.memreserve(0x4800_0000, 0x1_0000);
        b.begin("")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2]);
        b.begin("memory@40000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
            .prop_u32s("numa-node-id", &[0])
            .end();
        b.begin("memory@80000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, 0x8000_0000, 0, 0x4000_0000])
            .prop_u32s("numa-node-id", &[1])
            .prop("hotpluggable", &[])
            .end();
        b.begin("memory@c0000000")
            .prop_str("device_type", "memory")
            .prop_str("status", "disabled")
            .prop_u32s("reg", &[0, 0xc000_0000, 0, 0x4000_0000])
            .end();
        b.begin("reserved-memory")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2])
            .prop("ranges", &[]);
        b.begin("secmon@4e000000")
            .prop_u32s("reg", &[0, 0x4e00_0000, 0, 0x20_0000])
            .prop("no-map", &[])
            .end();
        b.begin("linux,cma")
            .prop_str("compatible", "shared-dma-pool")
            .prop("reusable", &[])
            .prop_u32s("reg", &[0, 0x6000_0000, 0, 0x100_0000])
            .end();
        b.begin("dsp-pool")
            .prop_u32s("size", &[0, 0x40_0000])
            .prop_u32s("alignment", &[0, 0x40_0000])
            .prop_u32s("alloc-ranges", &[0, 0x4000_0000, 0, 0x1000_0000])
            .end();
        b.end(); // reserved-memory
        b.end(); // root
        b.finish()
    }

    #[test]
    fn memory_nodes_reservations_and_carve_outs_are_applied() {
        let blob = virt_tree();
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &blob).unwrap();
        bm.verify().unwrap();
        assert_eq!(s.memory_ranges, 2);
        assert_eq!(s.memory_bytes, 0x8000_0000);
        assert_eq!(s.nomap_ranges, 1);
        assert_eq!(s.allocated, 1);
        let mem: Vec<_> = bm
            .memory_regions()
            .iter()
            .map(|r| {
                (
                    r.base().as_u64(),
                    r.end().as_u64(),
                    r.nid().get(),
                    r.flags(),
                )
            })
            .collect();
        assert_eq!(
            mem,
            [
                (0x4000_0000, 0x4e00_0000, 0, RegionFlags::empty()),
                (0x4e00_0000, 0x4e20_0000, 0, RegionFlags::NOMAP),
                (0x4e20_0000, 0x8000_0000, 0, RegionFlags::empty()),
                (0x8000_0000, 0xc000_0000, 1, RegionFlags::HOTPLUG),
            ]
        );
        let res: Vec<_> = bm
            .reserved_regions()
            .iter()
            .map(|r| r.range().as_raw())
            .collect();
        // The dynamic pool went to the top of its alloc-range, 4 MiB aligned.
        assert_eq!(
            res,
            [
                0x4800_0000..0x4801_0000,
                0x4fc0_0000..0x5000_0000,
                0x6000_0000..0x6100_0000
            ]
        );
        assert!(bm
            .free_ranges(RangeFilter::ALLOCATABLE)
            .all(|f| !f.range.overlaps(&raw_range(0x4e00_0000, 0x4e20_0000))));
    }

    #[test]
    fn bad_header_and_bad_cells_change_nothing() {
        let mut bm: Bootmem = Bootmem::new();
        let mut blob = virt_tree();
        blob[0] = 0;
        assert_eq!(ingest(&mut bm, &blob), Err(FdtError::BadHeader));
        assert_eq!(
            ingest(&mut bm, &virt_tree()[..64]),
            Err(FdtError::BadHeader)
        );
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[3])
            .prop_u32s("#size-cells", &[2]);
        b.begin("memory@0")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, 0, 0, 0, 0x1000])
            .end();
        b.end();
        let blob = b.finish();
        assert_eq!(
            ingest(&mut bm, &blob),
            Err(FdtError::BadCells {
                address: 3,
                size: 2
            })
        );
        // A malformed property late in the tree is found before anything is applied.
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        b.begin("memory@0")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0x1000, 0x10_0000])
            .end();
        b.begin("reserved-memory")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        b.begin("bad").prop_u32s("reg", &[0x2000]).end();
        b.end();
        b.end();
        let blob = b.finish();
        assert_eq!(ingest(&mut bm, &blob), Err(FdtError::BadProperty("reg")));
        assert!(bm.memory_regions().is_empty());
    }

    #[test]
    fn usable_memory_property_overrides_reg() {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        b.begin("memory@0")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0x0, 0x1000_0000])
            .prop_u32s("linux,usable-memory", &[0x100_0000, 0x100_0000])
            .end();
        b.end();
        let blob = b.finish();
        let mut bm: Bootmem = Bootmem::new();
        ingest(&mut bm, &blob).unwrap();
        assert_eq!(
            bm.memory_regions()[0].range().as_raw(),
            0x100_0000..0x200_0000
        );
    }
}
