//! Device-tree ingestion (feature `fdt`): `/memory` nodes, `/reserved-memory` and the
//! `/memreserve/` block, read with our own panic-free FDT reader (`blob`).
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
//! `reg`-like properties are decoded with the parent's `#address-cells` / `#size-cells`
//! (DTSpec defaults 2 and 1 when absent; each must be 1 or 2). Ranges are clipped at the
//! bootmem's physical address limit ([`Bootmem::set_phys_limit`]); the memory bytes dropped
//! are counted in [`FdtSummary::clipped`] for the caller to warn about.
//!
//! ## Errors and atomicity
//! Every malformed blob is an error value, never a panic: the reader checks the header, the
//! blocks and the whole structure block before anything reads a node (see `blob`), and
//! the ingestion walk then checks every property it uses (lengths, cell counts, wrapping
//! ranges, a dynamic region's `size` and `alignment`) before the first bootmem edit. The edits
//! are applied all-or-nothing: if one fails (region lists full and unable to grow, or a dynamic
//! region that finds no room), every edit before it is undone and the bootmem is as it was.

use core::fmt;

use mmkit_addr::{PhysAddr, PhysRange, PAGE_SIZE};

use crate::alloc::AllocRequest;
use crate::bootmem::{raw_range, Bootmem};
use crate::error::{AllocError, RegionError};
use crate::region::{NodeId, RegionFlags};

mod blob;

use blob::{Blob, Node};

/// Which block of the blob a header fault is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPart {
    /// The memory reservation block (`off_mem_rsvmap`).
    MemReserve,
    /// The structure block (`off_dt_struct`, `size_dt_struct`).
    Structure,
    /// The strings block (`off_dt_strings`, `size_dt_strings`).
    Strings,
}

/// What is wrong with a blob's header or structure block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobFault {
    /// The buffer is shorter than a v17 header.
    TooShort {
        /// The buffer length.
        len: usize,
    },
    /// The magic is not `0xd00dfeed`.
    BadMagic(u32),
    /// The blob is older than v17 or needs a reader newer than v17.
    Version {
        /// `version`.
        version: u32,
        /// `last_comp_version`.
        last_comp: u32,
    },
    /// `totalsize` is below the header size or beyond the buffer.
    TotalSize {
        /// `totalsize`.
        total: u32,
        /// The buffer length.
        len: usize,
    },
    /// A block starts inside the header, is misaligned or ends past `totalsize`.
    Block {
        /// The block.
        part: BlobPart,
        /// Its offset field.
        offset: u32,
        /// Its size field (for the reservation block: what is left of `totalsize`).
        size: u32,
    },
    /// A structure-block token is not one DTSpec defines.
    UnknownToken(u32),
    /// A node name runs past the structure block without a NUL.
    UnterminatedName,
    /// A property's header or value runs past the structure block.
    PropertyOverrun,
    /// A property's name offset is outside the strings block or its name has no NUL.
    BadNameOffset(u32),
    /// A property appears outside any node.
    PropertyOutsideNode,
    /// Nodes nest deeper than the reader allows (64 levels).
    TooDeep,
    /// An `FDT_END_NODE` closes no node.
    UnbalancedEnd,
    /// A second top-level node follows the root.
    SecondRoot,
    /// The structure block ends (or `FDT_END` comes) with nodes open or no root.
    NoEnd,
}

/// Why a device tree could not be ingested. Offsets are byte offsets in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// The header is invalid.
    Header(BlobFault),
    /// The memory reservation block has no `(0, 0)` terminator inside `totalsize`.
    UnterminatedMemReserve,
    /// The structure block is malformed at `offset`.
    Structure {
        /// Where.
        offset: usize,
        /// What.
        fault: BlobFault,
    },
    /// `#address-cells` or `#size-cells` of the node at `node` is outside what a 64-bit
    /// `reg` can hold.
    BadCells {
        /// The node whose children the cells describe.
        node: usize,
        /// `#address-cells`.
        address: u32,
        /// `#size-cells`.
        size: u32,
    },
    /// Property `name` of the node at `node` has a length that is not a whole number of
    /// entries, or a value out of range.
    BadProperty {
        /// The node.
        node: usize,
        /// The property.
        name: &'static str,
    },
    /// A range of the node at `node` wraps the address space.
    Wraps {
        /// The node (`None`: a `/memreserve/` entry).
        node: Option<usize>,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// The dynamic reserved-memory node at `node` asks for a zero `size`.
    ZeroSize {
        /// The node.
        node: usize,
    },
    /// The dynamic reserved-memory node at `node` has an `alignment` that is zero or not a
    /// power of two.
    BadAlignment {
        /// The node.
        node: usize,
        /// The alignment.
        align: u64,
    },
    /// A bootmem edit failed; nothing was applied.
    Region {
        /// The range being applied.
        range: PhysRange,
        /// Why it failed.
        error: RegionError,
    },
    /// The dynamic reserved-memory node at `node` could not be allocated; nothing was
    /// applied.
    Alloc {
        /// The node.
        node: usize,
        /// Why.
        error: AllocError,
    },
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(fault) => write!(f, "bad device-tree header: {fault:?}"),
            Self::UnterminatedMemReserve => f.write_str("unterminated /memreserve/ block"),
            Self::Structure { offset, fault } => {
                write!(f, "bad device-tree structure at {offset:#x}: {fault:?}")
            }
            Self::BadCells {
                node,
                address,
                size,
            } => write!(
                f,
                "node at {node:#x}: unsupported #address-cells {address} / #size-cells {size}"
            ),
            Self::BadProperty { node, name } => {
                write!(f, "node at {node:#x}: malformed property {name}")
            }
            Self::Wraps {
                node: Some(node),
                base,
                size,
            } => write!(
                f,
                "node at {node:#x}: range at {base:#x} of size {size:#x} wraps"
            ),
            Self::Wraps {
                node: None,
                base,
                size,
            } => write!(f, "/memreserve/ at {base:#x} of size {size:#x} wraps"),
            Self::ZeroSize { node } => write!(f, "reserved-memory node at {node:#x}: size 0"),
            Self::BadAlignment { node, align } => {
                write!(
                    f,
                    "reserved-memory node at {node:#x}: bad alignment {align:#x}"
                )
            }
            Self::Region { range, error } => write!(f, "device-tree range {range}: {error}"),
            Self::Alloc { node, error } => {
                write!(f, "dynamic reserved-memory node at {node:#x}: {error}")
            }
        }
    }
}

/// What [`ingest`] did.
///
/// Byte counts add up entry by entry (overlapping entries count twice) and saturate at
/// `u64::MAX`.
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
    /// Bytes of memory dropped because they lie past the physical address limit.
    pub clipped: u64,
}

/// Cell counts for a `reg`-like property.
#[derive(Clone, Copy)]
struct Cells {
    address: usize,
    size: usize,
}

impl Cells {
    /// The cells `node` declares for its children.
    fn of_children(node: Node<'_>) -> Result<Self, FdtError> {
        let cells = |name: &'static str, default: u32| match node.property(name) {
            None => Ok(default),
            Some(v) => match <[u8; 4]>::try_from(v) {
                Ok(b) => Ok(u32::from_be_bytes(b)),
                Err(_) => Err(FdtError::BadProperty {
                    node: node.offset(),
                    name,
                }),
            },
        };
        let address = cells("#address-cells", 2)?;
        let size = cells("#size-cells", 1)?;
        if !(1..=2).contains(&address) || !(1..=2).contains(&size) {
            return Err(FdtError::BadCells {
                node: node.offset(),
                address,
                size,
            });
        }
        Ok(Self {
            address: address as usize,
            size: size as usize,
        })
    }
}

/// Big-endian number of 1 or 2 cells.
fn be_cells(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// The `(base, size)` pairs of a `reg`-like property of `node`, each checked not to wrap.
fn pairs<'a>(
    node: Node<'_>,
    value: &'a [u8],
    cells: Cells,
    name: &'static str,
) -> Result<impl Iterator<Item = (u64, u64)> + 'a, FdtError> {
    let stride = (cells.address + cells.size) * 4;
    if value.len() % stride != 0 {
        return Err(FdtError::BadProperty {
            node: node.offset(),
            name,
        });
    }
    let pairs = value.chunks_exact(stride).map(move |e| {
        let (a, s) = e.split_at(cells.address * 4);
        (be_cells(a), be_cells(s))
    });
    for (base, size) in pairs.clone() {
        if base.checked_add(size).is_none() {
            return Err(FdtError::Wraps {
                node: Some(node.offset()),
                base,
                size,
            });
        }
    }
    Ok(pairs)
}

/// A single number of `cells` cells.
fn number(node: Node<'_>, value: &[u8], cells: usize, name: &'static str) -> Result<u64, FdtError> {
    if value.len() != cells * 4 {
        return Err(FdtError::BadProperty {
            node: node.offset(),
            name,
        });
    }
    Ok(be_cells(value))
}

fn available(node: Node<'_>) -> bool {
    match node.str_property("status") {
        None => true,
        Some(s) => s == b"okay" || s == b"ok",
    }
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
        node: usize,
        size: u64,
        align: u64,
        /// `alloc-ranges` pairs, already checked.
        ranges: &'a [u8],
        cells: Cells,
        nomap: bool,
    },
}

/// Walk the tree and hand every edit to `apply`, in the order bootmem must see them. Every
/// check on the input happens here, so a dry run with a no-op `apply` validates the tree.
fn walk<'a>(
    tree: &Blob<'a>,
    apply: &mut dyn FnMut(Edit<'a>) -> Result<(), FdtError>,
) -> Result<(), FdtError> {
    let Some(root) = tree.root() else {
        return Ok(());
    };
    let root_cells = Cells::of_children(root)?;
    for node in root.children() {
        if node.str_property("device_type") != Some(b"memory") || !available(node) {
            continue;
        }
        let nid = match node.property("numa-node-id") {
            Some(p) => {
                let n = number(node, p, 1, "numa-node-id")?;
                NodeId::new(u16::try_from(n).map_err(|_| FdtError::BadProperty {
                    node: node.offset(),
                    name: "numa-node-id",
                })?)
            }
            None => NodeId::ZERO,
        };
        let flags = if node.property("hotpluggable").is_some() {
            RegionFlags::HOTPLUG
        } else {
            RegionFlags::empty()
        };
        let (value, name) = match node.property("linux,usable-memory") {
            Some(p) => (p, "linux,usable-memory"),
            None => match node.property("reg") {
                Some(p) => (p, "reg"),
                None => continue,
            },
        };
        for (base, size) in pairs(node, value, root_cells, name)? {
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
    for (base, size) in tree.memory_reservations() {
        if base.checked_add(size).is_none() {
            return Err(FdtError::Wraps {
                node: None,
                base,
                size,
            });
        }
        if size > 0 {
            apply(Edit::Reserve { base, size })?;
        }
    }
    let Some(resmem) = root
        .children()
        .find(|n| n.base_name() == b"reserved-memory")
    else {
        return Ok(());
    };
    let cells = Cells::of_children(resmem)?;
    for child in resmem.children() {
        if !available(child) {
            continue;
        }
        let nomap = child.property("no-map").is_some();
        if let Some(reg) = child.property("reg") {
            for (base, size) in pairs(child, reg, cells, "reg")? {
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
            let node = child.offset();
            let size = number(child, size, cells.size, "size")?;
            if size == 0 {
                return Err(FdtError::ZeroSize { node });
            }
            let align = match child.property("alignment") {
                Some(p) => number(child, p, cells.size, "alignment")?,
                None => PAGE_SIZE,
            };
            if !align.is_power_of_two() {
                return Err(FdtError::BadAlignment { node, align });
            }
            let ranges = match child.property("alloc-ranges") {
                Some(p) => {
                    // Checked here (length, wrapping); read again when allocating.
                    drop(pairs(child, p, cells, "alloc-ranges")?);
                    p
                }
                None => &[],
            };
            apply(Edit::Allocate {
                node,
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
    let tree = Blob::new(blob)?;
    // Validate everything first, so malformed input changes nothing.
    walk(&tree, &mut |_| Ok(()))?;
    bm.atomically(|bm| {
        let mut summary = FdtSummary::default();
        walk(&tree, &mut |edit| apply(bm, edit, &mut summary))?;
        Ok(summary)
    })
}

fn apply<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    edit: Edit<'_>,
    summary: &mut FdtSummary,
) -> Result<(), FdtError> {
    let region = |base: u64, end: u64| {
        move |error| FdtError::Region {
            range: raw_range(base, end),
            error,
        }
    };
    // Clip a static range at the physical address limit; `None`: nothing left.
    let clip = |bm: &Bootmem<'_, N>, base: u64, size: u64| {
        bm.clip_to_phys_limit(base, base.saturating_add(size))
    };
    match edit {
        Edit::Memory {
            base,
            size,
            nid,
            flags,
        } => {
            let Some((base, end)) = clip(bm, base, size) else {
                summary.clipped = summary.clipped.saturating_add(size);
                return Ok(());
            };
            summary.clipped = summary.clipped.saturating_add(size - (end - base));
            summary.memory_ranges += 1;
            summary.memory_bytes = summary.memory_bytes.saturating_add(end - base);
            bm.add_node(PhysAddr::new(base), end - base, nid, flags)
                .map_err(region(base, end))
        }
        Edit::Reserve { base, size } => {
            let Some((base, end)) = clip(bm, base, size) else {
                return Ok(());
            };
            summary.reserved_ranges += 1;
            bm.reserve(PhysAddr::new(base), end - base)
                .map_err(region(base, end))
        }
        Edit::NoMap { base, size } => {
            let Some((base, end)) = clip(bm, base, size) else {
                return Ok(());
            };
            summary.nomap_ranges += 1;
            bm.mark(PhysAddr::new(base), end - base, RegionFlags::NOMAP)
                .map_err(region(base, end))
        }
        Edit::Allocate {
            node,
            size,
            align,
            ranges,
            cells,
            nomap,
        } => {
            let req = AllocRequest::new(size, align);
            let mut result = Err(AllocError::NoFit { size, align });
            if ranges.is_empty() {
                result = bm.alloc_request(&req);
            }
            let stride = (cells.address + cells.size) * 4;
            for e in ranges.chunks_exact(stride) {
                let (a, s) = e.split_at(cells.address * 4);
                let (base, len) = (be_cells(a), be_cells(s));
                let within = req
                    .above(PhysAddr::new(base))
                    .below(PhysAddr::new(base.saturating_add(len)));
                result = bm.alloc_request(&within);
                if result.is_ok() {
                    break;
                }
            }
            let at = result.map_err(|error| FdtError::Alloc { node, error })?;
            summary.allocated += 1;
            if nomap {
                // The range leaves the allocator as no-map memory instead of a reservation.
                bm.free(at, size).map_err(|_| FdtError::Alloc {
                    node,
                    error: AllocError::NoFit { size, align },
                })?;
                summary.nomap_ranges += 1;
                let end = at.as_u64() + size;
                bm.mark(at, size, RegionFlags::NOMAP)
                    .map_err(region(at.as_u64(), end))?;
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
    use crate::{Bootmem, RangeFilter, Region};
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
        assert_eq!(
            ingest(&mut bm, &blob),
            Err(FdtError::Header(BlobFault::BadMagic(0x000d_feed)))
        );
        assert!(matches!(
            ingest(&mut bm, &virt_tree()[..64]),
            Err(FdtError::Header(BlobFault::TotalSize { len: 64, .. }))
        ));
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
                node: STRUCT_OFF,
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
        assert!(matches!(
            ingest(&mut bm, &blob),
            Err(FdtError::BadProperty { name: "reg", .. })
        ));
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

    /// Where `FdtWriter` puts the structure block with no `/memreserve/` entry: header plus
    /// the terminating reservation entry.
    const STRUCT_OFF: usize = 40 + 16;

    /// Everything observable about a bootmem: both region lists and the free bytes.
    fn snapshot(bm: &Bootmem) -> (Vec<Region>, Vec<Region>, u64) {
        let free = bm
            .free_ranges(RangeFilter::ALLOCATABLE)
            .map(|f| f.range.len())
            .sum();
        (
            bm.memory_regions().to_vec(),
            bm.reserved_regions().to_vec(),
            free,
        )
    }

    /// A bootmem that already holds something, so "unchanged" means more than "empty".
    fn populated() -> Bootmem<'static> {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(PhysAddr::new(0x1000_0000), 0x100_0000).unwrap();
        bm.reserve(PhysAddr::new(0x1010_0000), 0x1000).unwrap();
        bm
    }

    /// Ingest `blob` into a populated bootmem; on error, assert nothing changed.
    fn ingest_or_unchanged(blob: &[u8]) -> Result<FdtSummary, FdtError> {
        let mut bm = populated();
        let before = snapshot(&bm);
        let r = ingest(&mut bm, blob);
        bm.verify().unwrap();
        if r.is_err() {
            assert_eq!(snapshot(&bm), before, "{r:?} changed bootmem");
        }
        r
    }

    #[test]
    fn fdt_struct_offset_past_totalsize_is_an_error() {
        let mut blob = virt_tree();
        for off in [blob.len() as u32, 1 << 20, u32::MAX - 3] {
            blob[8..12].copy_from_slice(&off.to_be_bytes());
            assert!(matches!(
                ingest_or_unchanged(&blob),
                Err(FdtError::Header(BlobFault::Block {
                    part: BlobPart::Structure,
                    ..
                }))
            ));
        }
    }

    #[test]
    fn fdt_every_struct_word_set_to_all_ones_is_handled() {
        let blob = virt_tree();
        let word = |i: usize| u32::from_be_bytes(blob[i * 4..i * 4 + 4].try_into().unwrap());
        let (off, len) = (word(2) as usize, word(9) as usize);
        let mut errors = 0;
        for at in (off..off + len).step_by(4) {
            let mut bad = blob.clone();
            bad[at..at + 4].copy_from_slice(&[0xff; 4]);
            errors += usize::from(ingest_or_unchanged(&bad).is_err());
        }
        // Tokens, lengths and name offsets are caught; words inside values need not be.
        assert!(errors > len / 8, "only {errors} of {} errors", len / 4);
    }

    #[test]
    fn fdt_every_header_word_corrupted_never_panics() {
        let blob = virt_tree();
        for at in (0..40).step_by(4) {
            for v in [0, 1, 3, 0xffff_ffff, 0x8000_0000, blob.len() as u32 + 1] {
                let mut bad = blob.clone();
                bad[at..at + 4].copy_from_slice(&u32::to_be_bytes(v));
                let _ = ingest_or_unchanged(&bad);
            }
        }
        for cut in 0..blob.len() {
            let _ = ingest_or_unchanged(&blob[..cut]);
        }
    }

    #[test]
    fn fdt_deep_nesting_is_refused() {
        let mut b = Builder::new();
        for _ in 0..=blob::MAX_DEPTH {
            b.begin("n");
        }
        for _ in 0..=blob::MAX_DEPTH {
            b.end();
        }
        assert!(matches!(
            ingest_or_unchanged(&b.finish()),
            Err(FdtError::Structure {
                fault: BlobFault::TooDeep,
                ..
            })
        ));
    }

    /// A tree with memory at 0x4000_0000 and one dynamic reserved-memory child.
    fn tree_with_dynamic(size: u32, align: Option<u32>) -> Vec<u8> {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        b.begin("memory@40000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0x4000_0000, 0x1000_0000])
            .end();
        b.begin("reserved-memory")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        b.begin("static@41000000")
            .prop_u32s("reg", &[0x4100_0000, 0x1000])
            .end();
        b.begin("pool").prop_u32s("size", &[size]);
        if let Some(a) = align {
            b.prop_u32s("alignment", &[a]);
        }
        b.end();
        b.end();
        b.end();
        b.finish()
    }

    #[test]
    fn fdt_bad_reserved_alignment_changes_nothing() {
        for (size, align) in [(0x1000, Some(3)), (0x1000, Some(0)), (0, None)] {
            let r = ingest_or_unchanged(&tree_with_dynamic(size, align));
            match align {
                Some(a) => assert!(
                    matches!(r, Err(FdtError::BadAlignment { align, .. }) if align == u64::from(a))
                ),
                None => assert!(matches!(r, Err(FdtError::ZeroSize { .. }))),
            }
        }
        assert!(ingest_or_unchanged(&tree_with_dynamic(0x1000, Some(0x1000))).is_ok());
    }

    #[test]
    fn fdt_dynamic_region_without_room_rolls_everything_back() {
        // 512 MiB cannot fit in 256 MiB of memory: the memory and the static reservation
        // already applied are undone.
        let r = ingest_or_unchanged(&tree_with_dynamic(0x2000_0000, None));
        assert!(matches!(
            r,
            Err(FdtError::Alloc {
                error: AllocError::NoFit { .. },
                ..
            })
        ));
    }

    #[test]
    fn fdt_full_region_list_changes_nothing() {
        // 20 separate memory ranges into lists of 8 slots, no mapper to grow with.
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1]);
        let reg: Vec<u32> = (0..20)
            .flat_map(|i| [0x100_0000 * (i + 1), 0x1000])
            .collect();
        b.begin("memory@1000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &reg)
            .end();
        b.end();
        let blob = b.finish();
        let mut bm: Bootmem<'_, 8> = Bootmem::new();
        bm.add(PhysAddr::new(0x10_0000), 0x1000).unwrap();
        let before = bm.memory_regions().to_vec();
        assert!(matches!(
            ingest(&mut bm, &blob),
            Err(FdtError::Region {
                error: RegionError::RegionsFull { .. },
                ..
            })
        ));
        assert_eq!(bm.memory_regions(), &before[..]);
        bm.verify().unwrap();
    }

    #[test]
    fn fdt_memory_past_phys_limit_is_clipped() {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2]);
        b.begin("memory@0")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
            .prop_u32s("reg", &[0x1000_0000, 0, 0x100, 0]) // shadowed duplicate
            .end();
        b.begin("memory@1000000000000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0x1000_0000, 0, 0x100, 0])
            .end();
        b.end();
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &b.finish()).unwrap();
        assert_eq!(s.clipped, 0x100 << 32);
        assert_eq!(
            bm.memory_regions()[0].range().as_raw(),
            0x4000_0000..0x5000_0000
        );
        assert_eq!(bm.memory_regions().len(), 1);
    }

    /// Found by the `fdt` fuzz target: the clipped-byte count overflowed.
    #[test]
    fn fdt_huge_overlapping_memory_ranges_saturate_the_summary() {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2]);
        for i in 0..3 {
            b.begin(&std::format!("memory@{i}"))
                .prop_str("device_type", "memory")
                .prop_u32s("reg", &[0, 0, 0xffff_ffff, 0xffff_f000])
                .end();
        }
        b.end();
        let s = ingest_or_unchanged(&b.finish()).unwrap();
        assert_eq!(s.clipped, u64::MAX);
        assert_eq!(s.memory_bytes, 3 * crate::DEFAULT_PHYS_LIMIT);
    }
}
