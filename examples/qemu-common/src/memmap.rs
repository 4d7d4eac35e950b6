//! The firmware memory map as the kernels see it before any allocator exists.
//!
//! A [`MemoryMap`] is a fixed-capacity list of [`Region`]s, each a physical range with a
//! [`RegionKind`]. The two firmware sources fill it differently:
//!
//! * PVH (x86): e820-style entries that partition the address space; RAM and the other kinds do
//!   not overlap.
//! * Device tree (aarch64): `/memory` nodes give RAM, and `/reserved-memory` children and
//!   `/memreserve/` entries give [`RegionKind::Reserved`] ranges that lie *inside* RAM.
//!
//! So the map does not require kinds to be disjoint; what it requires, and what
//! [`MemoryMap::check`] verifies after [`MemoryMap::sort`], is that RAM regions do not overlap
//! each other (two firmware entries claiming the same RAM is a firmware bug worth reporting).
//!
//! "Free" memory ([`MemoryMap::find_free_top_down`]) is RAM minus every non-RAM region minus the
//! caller's exclusions (kernel image, boot data): the same rule memblock applies, in a form
//! small enough to need no allocator. The kernels use it to pick memory for their checks,
//! as the model bootmem's ingestion and hand-off are compared with, and to lay out the direct
//! map of their page tables.

use core::fmt;

use mmkit_addr::{align_down, PhysAddr, PhysRange, RangeError};

/// What a region of the physical address space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegionKind {
    /// Usable RAM (e820 type 1, device-tree `/memory`).
    Ram,
    /// Reserved by firmware or a device (e820 type 2, `/reserved-memory`, `/memreserve/`).
    Reserved,
    /// ACPI tables, reclaimable after they are parsed (e820 type 3).
    AcpiReclaimable,
    /// ACPI non-volatile storage (e820 type 4).
    AcpiNvs,
    /// Memory that reported errors (e820 type 5).
    Unusable,
    /// Disabled memory (e820 type 6).
    Disabled,
    /// Persistent memory (e820 type 7).
    Persistent,
    /// A type this code does not know (the raw e820 type).
    Unknown(u32),
}

impl RegionKind {
    /// The kind for an e820 / PVH memory-map entry type (the numbering of the ACPI spec's
    /// address range types, which Linux's `enum e820_type` and Xen's `XEN_HVM_MEMMAP_TYPE_*`
    /// both follow).
    pub const fn from_e820(entry_type: u32) -> Self {
        match entry_type {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            6 => Self::Disabled,
            7 => Self::Persistent,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for RegionKind {
    /// The names Linux prints in its boot-time e820 table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ram => f.write_str("usable"),
            Self::Reserved => f.write_str("reserved"),
            Self::AcpiReclaimable => f.write_str("ACPI data"),
            Self::AcpiNvs => f.write_str("ACPI NVS"),
            Self::Unusable => f.write_str("unusable"),
            Self::Disabled => f.write_str("disabled"),
            Self::Persistent => f.write_str("persistent (type 7)"),
            Self::Unknown(t) => write!(f, "type {t}"),
        }
    }
}

/// One entry of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The physical range; never empty.
    pub range: PhysRange,
    /// What it is.
    pub kind: RegionKind,
}

/// Why a region could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRegionError {
    /// The map already holds [`MemoryMap::CAPACITY`] regions.
    Full,
    /// The region has size zero.
    Empty,
    /// `start + size` wraps the 64-bit address space.
    Wraps(RangeError),
}

impl fmt::Display for AddRegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => write!(f, "memory map full ({} regions)", MemoryMap::CAPACITY),
            Self::Empty => f.write_str("empty region"),
            Self::Wraps(e) => write!(f, "{e}"),
        }
    }
}

/// What [`MemoryMap::check`] found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapProblem {
    /// The map has no RAM at all.
    NoRam,
    /// Regions are not in ascending order of start address (call [`MemoryMap::sort`]).
    Unsorted {
        /// Index of the first region that starts below its predecessor.
        index: usize,
    },
    /// Two RAM regions overlap.
    RamOverlap {
        /// The earlier region.
        first: PhysRange,
        /// The region overlapping it.
        second: PhysRange,
    },
}

impl fmt::Display for MapProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRam => f.write_str("no RAM in the memory map"),
            Self::Unsorted { index } => write!(f, "region {index} starts below its predecessor"),
            Self::RamOverlap { first, second } => {
                write!(f, "RAM regions {first} and {second} overlap")
            }
        }
    }
}

/// A firmware memory map with room for [`MemoryMap::CAPACITY`] regions.
#[derive(Clone)]
pub struct MemoryMap {
    regions: [Region; MemoryMap::CAPACITY],
    len: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryMap {
    /// How many regions fit. QEMU's maps have fewer than ten; real e820 tables rarely exceed
    /// a hundred (Linux's static table holds 128 before it grows).
    pub const CAPACITY: usize = 128;

    /// An empty map.
    pub const fn new() -> Self {
        Self {
            regions: [Region {
                range: PhysRange::EMPTY,
                kind: RegionKind::Ram,
            }; Self::CAPACITY],
            len: 0,
        }
    }

    /// Add `[start, start + size)` of `kind`. On error the map is unchanged.
    pub fn add(&mut self, start: u64, size: u64, kind: RegionKind) -> Result<(), AddRegionError> {
        if size == 0 {
            return Err(AddRegionError::Empty);
        }
        let range = PhysRange::from_start_size(PhysAddr::new(start), size)
            .map_err(AddRegionError::Wraps)?;
        if self.len == Self::CAPACITY {
            return Err(AddRegionError::Full);
        }
        self.regions[self.len] = Region { range, kind };
        self.len += 1;
        Ok(())
    }

    /// The regions, in insertion order until [`sort`](Self::sort) is called.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Whether the map holds no region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Order the regions by start address (then end, then kind), as firmware maps are not
    /// promised to be sorted.
    pub fn sort(&mut self) {
        self.regions[..self.len].sort_unstable_by_key(|r| (r.range.start(), r.range.end(), r.kind));
    }

    /// The RAM regions.
    pub fn ram(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.range)
    }

    /// Total bytes of `kind`.
    pub fn total(&self, kind: RegionKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.range.len())
            .sum()
    }

    /// Sanity of a sorted map: some RAM, ascending starts, no two RAM regions overlapping.
    pub fn check(&self) -> Result<(), MapProblem> {
        if self.ram().next().is_none() {
            return Err(MapProblem::NoRam);
        }
        for (index, pair) in self.regions().windows(2).enumerate() {
            if pair[1].range.start() < pair[0].range.start() {
                return Err(MapProblem::Unsorted { index: index + 1 });
            }
        }
        let mut previous: Option<PhysRange> = None;
        for ram in self.ram() {
            if let Some(prev) = previous {
                if prev.overlaps(&ram) {
                    return Err(MapProblem::RamOverlap {
                        first: prev,
                        second: ram,
                    });
                }
            }
            previous = Some(ram);
        }
        Ok(())
    }

    /// Whether every byte of `range` is RAM (possibly spread over adjacent RAM regions). Needs
    /// a sorted map; an empty range is never "in RAM".
    pub fn is_ram(&self, range: PhysRange) -> bool {
        if range.is_empty() {
            return false;
        }
        let mut covered_to = range.start();
        for ram in self.ram() {
            if ram.start() <= covered_to && ram.end() > covered_to {
                covered_to = ram.end();
                if covered_to >= range.end() {
                    return true;
                }
            }
        }
        false
    }

    /// The highest `size`-byte range aligned to `align` (a power of two) that is RAM, ends at
    /// or below `limit`, and overlaps neither a non-RAM region of the map nor any of `exclude`.
    /// `None` if there is none (or `align` is not a power of two, or `size`
    /// is zero).
    pub fn find_free_top_down(
        &self,
        size: u64,
        align: u64,
        limit: u64,
        exclude: &[PhysRange],
    ) -> Option<PhysRange> {
        if size == 0 || !mmkit_addr::is_power_of_two(align) {
            return None;
        }
        // Overlapping RAM regions are tolerated here (`check` reports them), so look at every
        // RAM region and keep the highest candidate rather than stopping at the first.
        self.ram()
            .filter_map(|ram| self.highest_free_in(ram, size, align, limit, exclude))
            .max()
    }

    /// [`find_free_top_down`](Self::find_free_top_down) within one RAM region.
    fn highest_free_in(
        &self,
        ram: PhysRange,
        size: u64,
        align: u64,
        limit: u64,
        exclude: &[PhysRange],
    ) -> Option<PhysRange> {
        let obstacle_below = |candidate: &PhysRange| {
            self.regions()
                .iter()
                .filter(|r| r.kind != RegionKind::Ram)
                .map(|r| r.range)
                .chain(exclude.iter().copied())
                .filter(|b| b.overlaps(candidate))
                .map(|b| b.start().as_u64())
                .min()
        };
        let mut top = ram.end().as_u64().min(limit);
        loop {
            let start = align_down(top.checked_sub(size)?, align);
            if start < ram.start().as_u64() {
                return None;
            }
            let candidate = PhysRange::from_start_size(PhysAddr::new(start), size).ok()?;
            match obstacle_below(&candidate) {
                None => return Some(candidate),
                // Every candidate above the lowest obstacle's start overlaps it: jump below.
                Some(obstacle_start) => top = obstacle_start,
            }
        }
    }
}

/// One line per region in the layout of Linux's boot-time e820 table:
/// `  [mem 0x0000000000100000-0x000000001ffdffff] usable`.
impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.regions() {
            writeln!(
                f,
                "  [mem {:#018x}-{:#018x}] {}",
                r.range.start().as_u64(),
                r.range.end().as_u64() - 1,
                r.kind
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    /// The map QEMU's PVH boot reports for `-m 512M` (as printed by the x86 kernel).
    fn qemu_pvh_512m() -> MemoryMap {
        let mut m = MemoryMap::new();
        m.add(0x100000, 0x1fee0000, RegionKind::Ram).unwrap();
        m.add(0, 0x9fc00, RegionKind::Ram).unwrap();
        m.add(0x9fc00, 0x400, RegionKind::Reserved).unwrap();
        m.add(0xf0000, 0x10000, RegionKind::Reserved).unwrap();
        m.add(0x1ffe0000, 0x20000, RegionKind::Reserved).unwrap();
        m.add(0xfffc0000, 0x40000, RegionKind::Reserved).unwrap();
        m
    }

    #[test]
    fn sort_orders_by_start_and_check_accepts_a_real_map() {
        let mut m = qemu_pvh_512m();
        assert_eq!(m.check(), Err(MapProblem::Unsorted { index: 1 }));
        m.sort();
        assert!(m
            .regions()
            .windows(2)
            .all(|w| w[0].range.start() <= w[1].range.start()));
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.total(RegionKind::Ram), 0x9fc00 + 0x1fee0000);
    }

    #[test]
    fn check_rejects_a_map_without_ram() {
        let mut m = MemoryMap::new();
        assert_eq!(m.check(), Err(MapProblem::NoRam));
        m.add(0, 4096, RegionKind::Reserved).unwrap();
        assert_eq!(m.check(), Err(MapProblem::NoRam));
    }

    #[test]
    fn check_rejects_overlapping_ram_but_allows_reserved_inside_ram() {
        let mut m = MemoryMap::new();
        m.add(0x4000_0000, 512 * MIB, RegionKind::Ram).unwrap();
        m.add(0x4000_0000, MIB, RegionKind::Reserved).unwrap();
        m.sort();
        assert_eq!(m.check(), Ok(()));
        m.add(0x5000_0000, 512 * MIB, RegionKind::Ram).unwrap();
        m.sort();
        assert!(matches!(m.check(), Err(MapProblem::RamOverlap { .. })));
    }

    #[test]
    fn add_rejects_bad_regions_and_leaves_the_map_unchanged() {
        let mut m = MemoryMap::new();
        assert_eq!(
            m.add(0x1000, 0, RegionKind::Ram),
            Err(AddRegionError::Empty)
        );
        assert!(matches!(
            m.add(u64::MAX - 10, 4096, RegionKind::Ram),
            Err(AddRegionError::Wraps(_))
        ));
        assert!(m.is_empty());
        for i in 0..MemoryMap::CAPACITY as u64 {
            m.add(i * 0x2000, 0x1000, RegionKind::Ram).unwrap();
        }
        let before = m.regions().to_vec();
        assert_eq!(
            m.add(0x1_0000_0000, 0x1000, RegionKind::Ram),
            Err(AddRegionError::Full)
        );
        assert_eq!(m.regions(), &before[..]);
    }

    #[test]
    fn is_ram_spans_adjacent_regions_and_stops_at_holes() {
        let mut m = MemoryMap::new();
        m.add(0x1000, 0x1000, RegionKind::Ram).unwrap();
        m.add(0x2000, 0x1000, RegionKind::Ram).unwrap();
        m.add(0x4000, 0x1000, RegionKind::Ram).unwrap();
        m.sort();
        assert!(m.is_ram(range(0x1800, 0x2800)));
        assert!(!m.is_ram(range(0x2800, 0x4800)));
        assert!(!m.is_ram(range(0x0, 0x1800)));
        assert!(!m.is_ram(range(0x1000, 0x1000)));
    }

    #[test]
    fn find_free_top_down_skips_reserved_and_excluded_ranges() {
        let mut m = qemu_pvh_512m();
        m.sort();
        // The top of RAM is below the reserved ACPI area at 0x1ffe0000.
        let top = m.find_free_top_down(4096, 4096, u64::MAX, &[]).unwrap();
        assert_eq!(top, range(0x1ffdf000, 0x1ffe0000));
        // Excluding it moves the choice down.
        let next = m.find_free_top_down(4096, 4096, u64::MAX, &[top]).unwrap();
        assert_eq!(next, range(0x1ffde000, 0x1ffdf000));
        // 2 MiB aligned: the highest whole 2 MiB block below the reserved tail.
        let big = m
            .find_free_top_down(2 * MIB, 2 * MIB, u64::MAX, &[])
            .unwrap();
        assert_eq!(big, range(0x1fc00000, 0x1fe00000));
        // A limit caps the search.
        let low = m.find_free_top_down(4096, 4096, 0x9fc00, &[]).unwrap();
        assert_eq!(low, range(0x9e000, 0x9f000));
    }

    #[test]
    fn find_free_top_down_respects_reserved_ranges_inside_ram() {
        let mut m = MemoryMap::new();
        m.add(0x4000_0000, 16 * MIB, RegionKind::Ram).unwrap();
        m.add(0x40f0_0000, MIB, RegionKind::Reserved).unwrap();
        m.sort();
        let got = m.find_free_top_down(MIB, MIB, u64::MAX, &[]).unwrap();
        assert_eq!(got, range(0x40e0_0000, 0x40f0_0000));
    }

    #[test]
    fn find_free_top_down_fails_cleanly() {
        let mut m = MemoryMap::new();
        m.add(0x1000, 0x1000, RegionKind::Ram).unwrap();
        m.sort();
        assert_eq!(m.find_free_top_down(0x2000, 0x1000, u64::MAX, &[]), None);
        assert_eq!(m.find_free_top_down(0, 0x1000, u64::MAX, &[]), None);
        assert_eq!(m.find_free_top_down(0x1000, 3, u64::MAX, &[]), None);
        let all = [range(0, 0x10000)];
        assert_eq!(m.find_free_top_down(0x1000, 0x1000, u64::MAX, &all), None);
    }

    /// Brute force over a small address space: the search returns exactly the highest aligned
    /// candidate that a page-by-page scan accepts.
    #[test]
    fn find_free_top_down_matches_a_brute_force_scan() {
        let mut seed = 0x1234_5678_9abc_def0_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut m = MemoryMap::new();
            for _ in 0..(next() % 6) {
                let start = (next() % 64) * 0x1000;
                let len = (next() % 16 + 1) * 0x1000;
                let kind = if next() % 3 == 0 {
                    RegionKind::Reserved
                } else {
                    RegionKind::Ram
                };
                m.add(start, len, kind).unwrap();
            }
            m.sort();
            let exclude = [range((next() % 64) * 0x1000, (next() % 64 + 64) * 0x1000)];
            let exclude = &exclude[..(next() % 2) as usize];
            let size = (next() % 4 + 1) * 0x1000;
            let align = 0x1000 << (next() % 3);
            let expected = (0..=128u64)
                .rev()
                .map(|p| p * 0x1000)
                .filter(|s| s % align == 0)
                .map(|s| range(s, s + size))
                .find(|c| {
                    m.regions()
                        .iter()
                        .any(|r| r.kind == RegionKind::Ram && r.range.contains_range(c))
                        && !m
                            .regions()
                            .iter()
                            .filter(|r| r.kind != RegionKind::Ram)
                            .any(|r| r.range.overlaps(c))
                        && !exclude.iter().any(|e| e.overlaps(c))
                });
            assert_eq!(
                m.find_free_top_down(size, align, u64::MAX, exclude),
                expected,
                "map {m:?} exclude {exclude:?} size {size:#x} align {align:#x}"
            );
        }
    }

    #[test]
    fn display_uses_linux_e820_layout() {
        let mut m = MemoryMap::new();
        m.add(0x100000, 0x100000, RegionKind::Ram).unwrap();
        m.add(0xf0000, 0x10000, RegionKind::from_e820(2)).unwrap();
        m.add(0x300000, 0x1000, RegionKind::from_e820(9)).unwrap();
        m.sort();
        assert_eq!(
            m.to_string(),
            "  [mem 0x00000000000f0000-0x00000000000fffff] reserved\n\
             \x20 [mem 0x0000000000100000-0x00000000001fffff] usable\n\
             \x20 [mem 0x0000000000300000-0x0000000000300fff] type 9\n"
        );
    }
}
