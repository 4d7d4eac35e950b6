//! Free-range iteration: memory minus reserved, without allocating, in O(regions).
//!
//! A free range is the intersection of one memory region with one *gap* of the reserved list
//! (gap `k` runs from the end of reserved region `k-1` to the start of reserved region `k`;
//! gap 0 starts at address 0 and the last gap runs to the top of the address space). Both
//! lists are sorted, so a two-index walk visits each region and each gap once — the same walk
//! as Linux's `__next_mem_range`, forward ([`FreeRanges`]) or from the top down
//! ([`FreeRangesRev`]). A free range therefore never spans two memory regions: ranges of
//! different node or flags are reported separately, and so are touching regions.

use mmkit_addr::{PhysAddr, PhysRange};

use crate::region::{NodeId, Region, RegionFlags};

/// Which memory regions a walk visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeFilter {
    /// Only regions of this node (`None`: any node).
    pub node: Option<NodeId>,
    /// Only regions that have all of these flags.
    pub require: RegionFlags,
    /// Only regions that have none of these flags.
    pub exclude: RegionFlags,
}

impl RangeFilter {
    /// Every memory region, whatever its flags.
    pub const ALL: RangeFilter = RangeFilter {
        node: None,
        require: RegionFlags::empty(),
        exclude: RegionFlags::empty(),
    };

    /// The regions bootmem may allocate from and hands off: all but
    /// [`RegionFlags::NOT_ALLOCATABLE`] (no-map and driver-managed memory).
    pub const ALLOCATABLE: RangeFilter = RangeFilter {
        node: None,
        require: RegionFlags::empty(),
        exclude: RegionFlags::NOT_ALLOCATABLE,
    };

    /// The same filter restricted to one node.
    #[must_use]
    pub const fn on_node(mut self, nid: NodeId) -> Self {
        self.node = Some(nid);
        self
    }

    /// Whether the walk visits `region`.
    #[inline]
    pub fn accepts(&self, region: &Region) -> bool {
        let node_ok = match self.node {
            Some(n) => n == region.nid(),
            None => true,
        };
        node_ok && region.flags().contains(self.require) && !region.flags().intersects(self.exclude)
    }
}

/// One free range: part of a single memory region that no reserved region covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeRange {
    /// The free bytes.
    pub range: PhysRange,
    /// The node of the memory region it lies in.
    pub nid: NodeId,
    /// The flags of the memory region it lies in.
    pub flags: RegionFlags,
}

impl FreeRange {
    fn new(base: u64, end: u64, m: &Region) -> Self {
        Self {
            range: PhysRange::new(PhysAddr::new(base), PhysAddr::new(end))
                .unwrap_or(PhysRange::EMPTY),
            nid: m.nid(),
            flags: m.flags(),
        }
    }
}

/// Reserved gap `k` as raw `[start, end)`.
#[inline]
fn gap(reserved: &[Region], k: usize) -> (u64, u64) {
    let start = if k == 0 { 0 } else { reserved[k - 1].raw_end() };
    let end = match reserved.get(k) {
        Some(r) => r.raw_base(),
        None => u64::MAX,
    };
    (start, end)
}

/// Free ranges in ascending address order.
#[derive(Debug, Clone)]
pub struct FreeRanges<'a> {
    memory: &'a [Region],
    reserved: &'a [Region],
    filter: RangeFilter,
    mem_idx: usize,
    gap_idx: usize,
}

impl<'a> FreeRanges<'a> {
    pub(crate) fn new(memory: &'a [Region], reserved: &'a [Region], filter: RangeFilter) -> Self {
        Self {
            memory,
            reserved,
            filter,
            mem_idx: 0,
            gap_idx: 0,
        }
    }

    /// Start the walk near the first free range that ends above `addr` (found by binary
    /// search, so a windowed search does not walk the ranges below its window).
    pub(crate) fn above_addr(mut self, addr: u64) -> Self {
        self.mem_idx = self.memory.partition_point(|r| r.raw_end() <= addr);
        self.gap_idx = self.reserved.partition_point(|r| r.raw_end() <= addr);
        self
    }
}

impl Iterator for FreeRanges<'_> {
    type Item = FreeRange;

    fn next(&mut self) -> Option<FreeRange> {
        loop {
            let m = self.memory.get(self.mem_idx)?;
            if !self.filter.accepts(m) {
                self.mem_idx += 1;
                continue;
            }
            loop {
                if self.gap_idx > self.reserved.len() {
                    return None;
                }
                let (gs, ge) = gap(self.reserved, self.gap_idx);
                if gs >= m.raw_end() {
                    self.mem_idx += 1;
                    break;
                }
                let (s, e) = (gs.max(m.raw_base()), ge.min(m.raw_end()));
                // Step past whichever of the region and the gap ends first.
                let region_done = m.raw_end() <= ge;
                if region_done {
                    self.mem_idx += 1;
                } else {
                    self.gap_idx += 1;
                }
                if s < e {
                    return Some(FreeRange::new(s, e, m));
                }
                if region_done {
                    break;
                }
            }
        }
    }
}

/// Free ranges in descending address order (the order of a top-down allocator).
#[derive(Debug, Clone)]
pub struct FreeRangesRev<'a> {
    memory: &'a [Region],
    reserved: &'a [Region],
    filter: RangeFilter,
    /// One past the next memory region to visit.
    mem_end: usize,
    /// One past the next gap to visit (0: exhausted).
    gap_end: usize,
}

impl<'a> FreeRangesRev<'a> {
    pub(crate) fn new(memory: &'a [Region], reserved: &'a [Region], filter: RangeFilter) -> Self {
        Self {
            memory,
            reserved,
            filter,
            mem_end: memory.len(),
            gap_end: reserved.len() + 1,
        }
    }

    /// Start the walk at the last free range that starts below `addr` (found by binary
    /// search, so a windowed search does not walk the ranges above its window).
    pub(crate) fn below_addr(mut self, addr: u64) -> Self {
        self.mem_end = self.memory.partition_point(|r| r.raw_base() < addr);
        self.gap_end = self.reserved.partition_point(|r| r.raw_base() < addr) + 1;
        self
    }
}

impl Iterator for FreeRangesRev<'_> {
    type Item = FreeRange;

    fn next(&mut self) -> Option<FreeRange> {
        loop {
            let m = self.memory.get(self.mem_end.checked_sub(1)?)?;
            if !self.filter.accepts(m) {
                self.mem_end -= 1;
                continue;
            }
            loop {
                let (gs, ge) = gap(self.reserved, self.gap_end.checked_sub(1)?);
                if ge <= m.raw_base() {
                    self.mem_end -= 1;
                    break;
                }
                let (s, e) = (gs.max(m.raw_base()), ge.min(m.raw_end()));
                // Step below whichever of the region and the gap starts last.
                let region_done = m.raw_base() >= gs;
                if region_done {
                    self.mem_end -= 1;
                } else {
                    self.gap_end -= 1;
                }
                if s < e {
                    return Some(FreeRange::new(s, e, m));
                }
                if region_done {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Bootmem;
    use std::vec::Vec;

    fn pa(x: u64) -> PhysAddr {
        PhysAddr::new(x)
    }

    fn raw(it: impl Iterator<Item = FreeRange>) -> Vec<(u64, u64)> {
        it.map(|f| (f.range.start().as_u64(), f.range.end().as_u64()))
            .collect()
    }

    fn sample() -> Bootmem<'static> {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x1000), 0x9000).unwrap(); // [0x1000, 0xa000)
        bm.add_node(pa(0x10000), 0x10000, NodeId::new(1), RegionFlags::empty())
            .unwrap(); // [0x10000, 0x20000)
        bm.add_node(pa(0x20000), 0x4000, NodeId::new(1), RegionFlags::NOMAP)
            .unwrap();
        bm.reserve(pa(0x0), 0x2000).unwrap();
        bm.reserve(pa(0x4000), 0x1000).unwrap();
        bm.reserve(pa(0x9000), 0x8000).unwrap(); // spans the hole
        bm.reserve(pa(0x1f000), 0x1000).unwrap();
        bm
    }

    #[test]
    fn free_ranges_subtract_reserved_in_both_directions() {
        let bm = sample();
        let fwd = raw(bm.free_ranges(RangeFilter::ALLOCATABLE));
        assert_eq!(
            fwd,
            [(0x2000, 0x4000), (0x5000, 0x9000), (0x11000, 0x1f000)]
        );
        let mut rev = raw(bm.free_ranges_rev(RangeFilter::ALLOCATABLE));
        rev.reverse();
        assert_eq!(rev, fwd);
    }

    #[test]
    fn free_ranges_filter_by_node_and_flags() {
        let bm = sample();
        let node1 = raw(bm.free_ranges(RangeFilter::ALLOCATABLE.on_node(NodeId::new(1))));
        assert_eq!(node1, [(0x11000, 0x1f000)]);
        let nomap = RangeFilter {
            node: None,
            require: RegionFlags::NOMAP,
            exclude: RegionFlags::empty(),
        };
        assert_eq!(raw(bm.free_ranges(nomap)), [(0x20000, 0x24000)]);
        assert_eq!(raw(bm.free_ranges_rev(nomap)), [(0x20000, 0x24000)]);
        let all = raw(bm.free_ranges(RangeFilter::ALL));
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn touching_regions_of_different_nodes_stay_separate_ranges() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x1000), 0x1000).unwrap();
        bm.add_node(pa(0x2000), 0x1000, NodeId::new(1), RegionFlags::empty())
            .unwrap();
        let got: Vec<_> = bm
            .free_ranges(RangeFilter::ALL)
            .map(|f| (f.range.start().as_u64(), f.nid))
            .collect();
        assert_eq!(got, [(0x1000, NodeId::ZERO), (0x2000, NodeId::new(1))]);
    }

    #[test]
    fn memory_up_to_the_top_of_the_address_space_is_walked() {
        let mut bm: Bootmem = Bootmem::new();
        // The highest representable region ends at u64::MAX (exclusive).
        bm.add(pa(u64::MAX - 0x4000), 0x4000).unwrap();
        bm.reserve(pa(u64::MAX - 0x3000), 0x1000).unwrap();
        let fwd = raw(bm.free_ranges(RangeFilter::ALL));
        assert_eq!(
            fwd,
            [
                (u64::MAX - 0x4000, u64::MAX - 0x3000),
                (u64::MAX - 0x2000, u64::MAX)
            ]
        );
        let mut rev = raw(bm.free_ranges_rev(RangeFilter::ALL));
        rev.reverse();
        assert_eq!(rev, fwd);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Byte-granular, unaligned input: both walks equal a byte-by-byte model, and a range
        /// never spans two memory regions.
        #[test]
        fn free_ranges_match_a_bytewise_model(
            ops in proptest::collection::vec((0u8..4, 0u64..300, 1u64..60, 0u16..2), 1..32),
            cut in 0u64..360,
        ) {
            let mut bm: Bootmem<'_, 64> = Bootmem::new();
            let mut mem = [None::<u16>; 360];
            let mut res = [false; 360];
            for &(kind, base, size, nid) in &ops {
                let bytes = base as usize..(base + size) as usize;
                match kind {
                    0 => {
                        bm.add_node(pa(base), size, NodeId::new(nid), RegionFlags::empty())
                            .unwrap();
                        for b in bytes {
                            mem[b].get_or_insert(nid);
                        }
                    }
                    1 => {
                        bm.reserve(pa(base), size).unwrap();
                        res[bytes].fill(true);
                    }
                    2 => {
                        bm.remove(pa(base), size).unwrap();
                        mem[bytes].fill(None);
                    }
                    _ => {
                        let all_reserved = res[bytes.clone()].iter().all(|&r| r);
                        proptest::prop_assert_eq!(bm.free(pa(base), size).is_ok(), all_reserved);
                        if all_reserved {
                            res[bytes].fill(false);
                        }
                    }
                }
                proptest::prop_assert_eq!(bm.verify(), Ok(()));
            }
            let want_mem: u64 = mem.iter().filter(|m| m.is_some()).count() as u64;
            let want_res: u64 = res.iter().filter(|&&r| r).count() as u64;
            proptest::prop_assert_eq!((bm.memory_size(), bm.reserved_size()), (want_mem, want_res));
            let mut want: Vec<(u64, u64, u16)> = Vec::new();
            for b in 0..360u64 {
                let Some(nid) = mem[b as usize].filter(|_| !res[b as usize]) else { continue };
                match want.last_mut() {
                    Some(last) if last.1 == b && last.2 == nid => last.1 += 1,
                    _ => want.push((b, b + 1, nid)),
                }
            }
            let fwd: Vec<_> = bm
                .free_ranges(RangeFilter::ALL)
                .map(|f| (f.range.start().as_u64(), f.range.end().as_u64(), f.nid.get()))
                .collect();
            let mut rev: Vec<_> = bm
                .free_ranges_rev(RangeFilter::ALL)
                .map(|f| (f.range.start().as_u64(), f.range.end().as_u64(), f.nid.get()))
                .collect();
            rev.reverse();
            proptest::prop_assert_eq!(&fwd, &want);
            proptest::prop_assert_eq!(&rev, &want);
            // The windowed starts skip only ranges wholly on the far side of the cut.
            let above: Vec<_> = bm
                .free_ranges(RangeFilter::ALL)
                .above_addr(cut)
                .map(|f| (f.range.start().as_u64(), f.range.end().as_u64(), f.nid.get()))
                .filter(|r| r.1 > cut)
                .collect();
            let want_above: Vec<_> = want.iter().copied().filter(|r| r.1 > cut).collect();
            proptest::prop_assert_eq!(above, want_above);
            let mut below: Vec<_> = bm
                .free_ranges_rev(RangeFilter::ALL)
                .below_addr(cut)
                .map(|f| (f.range.start().as_u64(), f.range.end().as_u64(), f.nid.get()))
                .filter(|r| r.0 < cut)
                .collect();
            below.reverse();
            let want_below: Vec<_> = want.iter().copied().filter(|r| r.0 < cut).collect();
            proptest::prop_assert_eq!(below, want_below);
        }
    }
}
