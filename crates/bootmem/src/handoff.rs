//! The hand-off: bootmem is consumed and its free memory comes out as buddy-ready blocks.
//!
//! [`Bootmem::handoff`] takes the bootmem by value (typestate: nothing can allocate from it
//! afterwards) and returns a [`Handoff`], which keeps the region lists for accounting and
//! yields every free range — memory minus reserved, no-map and driver-managed memory left out
//! — as whole 4 KiB frames cut into naturally aligned blocks, Linux's `memblock_free_all`
//! rule: at frame `pfn` with `n` frames left, the block order is
//! `min(max_order, trailing_zeros(pfn), floor(log2(n)))`. Frame 0 is never handed off.
//!
//! ## Cost
//! [`Handoff::blocks`] is O(regions + blocks): per block it does a handful of integer
//! operations and touches no page. [`Handoff::block_runs`] compresses each range's middle —
//! all blocks of `max_order` — into one run, so it is O(regions × max_order) whatever the
//! memory size; a buddy allocator can free each run in a tight loop.
//!
//! ## After the hand-off
//! Reserved ranges stay reserved: [`Handoff::reserved_in_memory`] lists the reserved parts of
//! memory per node (the pages a buddy accounts as present but not managed). The region arrays
//! bootmem allocated from itself are among them; once the consumer is done with the `Handoff`,
//! [`Handoff::into_region_arrays`] gives their ranges back so they can be freed too (as Linux
//! frees its memblock arrays in `memblock_discard`).

use core::fmt;
use core::marker::PhantomData;

use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange, PAGE_SHIFT, PAGE_SIZE};

use crate::bootmem::{raw_range, Bootmem, DEFAULT_REGIONS};
use crate::iter::{FreeRange, FreeRanges, RangeFilter};
use crate::list::RegionList;
use crate::region::{NodeId, Region, RegionFlags};

/// A naturally aligned block of `2^order` frames starting at `pfn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The first frame.
    pub pfn: Pfn,
    /// The block holds `2^order` frames; `pfn` is a multiple of that.
    pub order: Order,
    /// The node of the memory it lies in.
    pub nid: NodeId,
    /// The flags of the memory it lies in (e.g. `HOTPLUG`, `MIRROR`).
    pub flags: RegionFlags,
}

impl Block {
    /// The physical range of the block.
    pub fn range(&self) -> PhysRange {
        let start = self.pfn.as_u64() << PAGE_SHIFT;
        raw_range(start, start + self.order.bytes())
    }
}

/// Frame counts of a node after the hand-off; see [`Handoff::node_pages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodePages {
    /// Whole frames of memory.
    pub present: u64,
    /// Frames handed off as blocks.
    pub managed: u64,
}

/// `count` consecutive blocks of the same order: `pfn`, `pfn + 2^order`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRun {
    /// The first block.
    pub first: Block,
    /// How many blocks follow each other.
    pub count: u64,
}

impl BlockRun {
    /// The blocks of the run.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let step = self.first.order.pages();
        (0..self.count).map(move |i| Block {
            pfn: Pfn::new(self.first.pfn.as_u64() + i * step),
            ..self.first
        })
    }
}

/// The bootmem after the hand-off: its lists, read-only, and the free memory as blocks.
pub struct Handoff<'m, const N: usize = DEFAULT_REGIONS> {
    memory: RegionList<N>,
    reserved: RegionList<N>,
    max_order: Order,
    /// The region arrays may live in memory reached through the `'m` mapper.
    _mapper: PhantomData<&'m ()>,
}

impl<'m, const N: usize> Bootmem<'m, N> {
    /// End early allocation: consume the bootmem and describe its free memory as blocks of at
    /// most `max_order` (memblock's `memblock_free_all`).
    #[must_use = "dropping the hand-off loses every free frame"]
    pub fn handoff(self, max_order: Order) -> Handoff<'m, N> {
        Handoff {
            memory: self.memory,
            reserved: self.reserved,
            max_order,
            _mapper: PhantomData,
        }
    }
}

impl<'m, const N: usize> Handoff<'m, N> {
    /// The largest block order handed out.
    pub fn max_order(&self) -> Order {
        self.max_order
    }

    /// Every free frame, as naturally aligned blocks in ascending address order.
    pub fn blocks(&self) -> Blocks<'_> {
        Blocks {
            cursor: Cursor::new(self),
        }
    }

    /// The same blocks, with each stretch of equal-order blocks folded into one run.
    pub fn block_runs(&self) -> BlockRuns<'_> {
        BlockRuns {
            cursor: Cursor::new(self),
        }
    }

    /// The free ranges the blocks are cut from (byte-exact, before rounding to frames), with
    /// physical page 0 cut out as it is from the blocks: feeding these ranges to a page
    /// allocator hands over exactly the frames [`Handoff::blocks`] does.
    pub fn free_ranges(&self) -> HandoffRanges<'_> {
        HandoffRanges {
            inner: FreeRanges::new(
                self.memory.regions(),
                self.reserved.regions(),
                RangeFilter::ALLOCATABLE,
            ),
        }
    }

    /// The number of frames the blocks cover, computed from the ranges in O(regions).
    pub fn free_pages(&self) -> u64 {
        self.free_ranges()
            .map(|fr| {
                let frames = frames_of(&fr);
                frames.end - frames.start
            })
            .sum()
    }

    /// The memory regions (present memory, for node and zone spans).
    pub fn memory_regions(&self) -> &[Region] {
        self.memory.regions()
    }

    /// The reserved regions (may lie outside memory).
    pub fn reserved_regions(&self) -> &[Region] {
        self.reserved.regions()
    }

    /// Bytes of memory.
    pub fn memory_size(&self) -> u64 {
        self.memory.total()
    }

    /// Bytes reserved.
    pub fn reserved_size(&self) -> u64 {
        self.reserved.total()
    }

    /// Reserved parts of memory, each with the node and flags of the memory it lies in, in
    /// ascending order: what a buddy allocator counts as present but not managed.
    pub fn reserved_in_memory(&self) -> ReservedInMemory<'_> {
        ReservedInMemory {
            memory: self.memory.regions(),
            reserved: self.reserved.regions(),
            m: 0,
            r: 0,
        }
    }

    /// Frame counts of one node (`None`: all nodes), for zone accounting in O(regions):
    /// `present` counts the whole frames of memory (no-map and driver-managed included),
    /// `managed` the frames the blocks hand off; the difference is what stays behind
    /// (reserved, no-map, driver-managed, partly reserved frames, frame 0).
    pub fn node_pages(&self, nid: Option<NodeId>) -> NodePages {
        let on_node = |n: NodeId| nid.is_none() || nid == Some(n);
        let present = self
            .memory
            .regions()
            .iter()
            .filter(|r| on_node(r.nid()))
            .map(|r| {
                let f = r.range().whole_pfns();
                f.end - f.start
            })
            .sum();
        let managed = self
            .free_ranges()
            .filter(|fr| on_node(fr.nid))
            .map(|fr| {
                let f = frames_of(&fr);
                f.end - f.start
            })
            .sum();
        NodePages { present, managed }
    }

    /// The region arrays bootmem allocated from itself (still reserved).
    pub fn region_arrays(&self) -> [Option<PhysRange>; 2] {
        [self.memory.external_phys(), self.reserved.external_phys()]
    }

    /// Drop the lists and return the ranges of the self-allocated region arrays, which the
    /// caller may now free to the page allocator.
    #[must_use = "the arrays are free memory to give to the page allocator"]
    pub fn into_region_arrays(self) -> [Option<PhysRange>; 2] {
        self.region_arrays()
    }
}

impl<const N: usize> fmt::Display for Handoff<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::report::write_lists(f, self.memory.regions(), self.reserved.regions())
    }
}

impl<const N: usize> fmt::Debug for Handoff<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("memory", &self.memory_regions())
            .field("reserved", &self.reserved_regions())
            .field("max_order", &self.max_order)
            .finish()
    }
}

/// The whole frames of a free range ([`HandoffRanges`] has already cut out frame 0).
fn frames_of(fr: &FreeRange) -> core::ops::Range<u64> {
    fr.range.whole_pfns()
}

/// The free ranges of a [`Handoff`], physical page 0 excluded (see [`Handoff::free_ranges`]).
pub struct HandoffRanges<'a> {
    inner: FreeRanges<'a>,
}

impl Iterator for HandoffRanges<'_> {
    type Item = FreeRange;

    fn next(&mut self) -> Option<FreeRange> {
        loop {
            let mut fr = self.inner.next()?;
            let start = fr.range.start().as_u64();
            if start < PAGE_SIZE {
                let end = fr.range.end();
                if end.as_u64() <= PAGE_SIZE {
                    continue;
                }
                fr.range = PhysRange::new(PhysAddr::new(PAGE_SIZE), end)
                    .expect("end lies above the first page");
            }
            return Some(fr);
        }
    }
}

/// Shared walk state of [`Blocks`] and [`BlockRuns`].
struct Cursor<'a> {
    ranges: HandoffRanges<'a>,
    max_order: u32,
    /// The next frame to hand off.
    next: u64,
    /// The end of the current range, in frames.
    end: u64,
    /// Below this frame, every block from an aligned `next` has `max_order` (the steady
    /// state in the middle of a large range, served without recomputing the order).
    steady_end: u64,
    nid: NodeId,
    flags: RegionFlags,
}

impl<'a> Cursor<'a> {
    fn new<const N: usize>(h: &'a Handoff<'_, N>) -> Self {
        Self {
            ranges: h.free_ranges(),
            max_order: h.max_order.get(),
            next: 0,
            end: 0,
            steady_end: 0,
            nid: NodeId::NONE,
            flags: RegionFlags::empty(),
        }
    }

    /// Move to the next free range with at least one whole frame.
    #[cold]
    fn refill(&mut self) -> Option<()> {
        while self.next >= self.end {
            let fr = self.ranges.next()?;
            let frames = frames_of(&fr);
            self.next = frames.start;
            self.end = frames.end;
            self.nid = fr.nid;
            self.flags = fr.flags;
        }
        Some(())
    }

    /// The next block's first frame and order, moving to the next range when one is used up.
    #[inline]
    fn peek(&mut self) -> Option<(u64, u32)> {
        if self.next < self.steady_end {
            return Some((self.next, self.max_order));
        }
        if self.next >= self.end {
            self.refill()?;
        }
        let left = self.end - self.next;
        let order = self
            .max_order
            .min(self.next.trailing_zeros())
            .min(63 - left.leading_zeros());
        if order == self.max_order {
            // Aligned to the maximum order with at least one such block left: every block up
            // to the last whole max-order boundary is a max-order block.
            self.steady_end = self.end & !((1u64 << order) - 1);
        }
        Some((self.next, order))
    }

    #[inline]
    fn block(&self, pfn: u64, order: u32) -> Block {
        Block {
            pfn: Pfn::new(pfn),
            order: Order::new(order),
            nid: self.nid,
            flags: self.flags,
        }
    }
}

/// Iterator over the hand-off blocks; see [`Handoff::blocks`].
pub struct Blocks<'a> {
    cursor: Cursor<'a>,
}

impl Iterator for Blocks<'_> {
    type Item = Block;

    #[inline]
    fn next(&mut self) -> Option<Block> {
        let (pfn, order) = self.cursor.peek()?;
        self.cursor.next = pfn + (1 << order);
        Some(self.cursor.block(pfn, order))
    }
}

/// Iterator over runs of equal-order blocks; see [`Handoff::block_runs`].
pub struct BlockRuns<'a> {
    cursor: Cursor<'a>,
}

impl Iterator for BlockRuns<'_> {
    type Item = BlockRun;

    fn next(&mut self) -> Option<BlockRun> {
        let (pfn, order) = self.cursor.peek()?;
        // Once a block of the maximum order fits, every following one is aligned to it too:
        // all the whole max-order blocks left form one run.
        let count = if order == self.cursor.max_order {
            (self.cursor.end - pfn) >> order
        } else {
            1
        };
        self.cursor.next = pfn + (count << order);
        Some(BlockRun {
            first: self.cursor.block(pfn, order),
            count,
        })
    }
}

/// A reserved part of memory; see [`Handoff::reserved_in_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedPart {
    /// The reserved bytes.
    pub range: PhysRange,
    /// The node of the memory they lie in.
    pub nid: NodeId,
    /// The flags of the memory they lie in.
    pub flags: RegionFlags,
}

/// Iterator over reserved ∩ memory; see [`Handoff::reserved_in_memory`].
pub struct ReservedInMemory<'a> {
    memory: &'a [Region],
    reserved: &'a [Region],
    m: usize,
    r: usize,
}

impl Iterator for ReservedInMemory<'_> {
    type Item = ReservedPart;

    fn next(&mut self) -> Option<ReservedPart> {
        loop {
            let mem = self.memory.get(self.m)?;
            let res = self.reserved.get(self.r)?;
            let (s, e) = (
                mem.raw_base().max(res.raw_base()),
                mem.raw_end().min(res.raw_end()),
            );
            if mem.raw_end() <= res.raw_end() {
                self.m += 1;
            } else {
                self.r += 1;
            }
            if s < e {
                return Some(ReservedPart {
                    range: raw_range(s, e),
                    nid: mem.nid(),
                    flags: mem.flags(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use mmkit_addr::PhysAddr;
    use std::vec::Vec;

    fn pa(x: u64) -> PhysAddr {
        PhysAddr::new(x)
    }

    fn blocks(h: &Handoff<'_>) -> Vec<(u64, u32)> {
        h.blocks()
            .map(|b| (b.pfn.as_u64(), b.order.get()))
            .collect()
    }

    #[test]
    fn blocks_are_largest_naturally_aligned() {
        let mut bm: Bootmem = Bootmem::new();
        // Frames 3..21: 3 (o0), 4..8 (o2), 8..16 (o3), 16..20 (o2), 20 (o0).
        bm.add(pa(3 << 12), 18 << 12).unwrap();
        bm.reserve(pa(20 << 12), 0x1000).unwrap();
        let h = bm.handoff(Order::new(10));
        assert_eq!(blocks(&h), [(3, 0), (4, 2), (8, 3), (16, 2)]);
        assert_eq!(h.free_pages(), 17);
    }

    #[test]
    fn max_order_caps_blocks() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x40_0000), 0x80_0000).unwrap();
        let h = bm.handoff(Order::new(9));
        assert_eq!(blocks(&h), [(0x400, 9), (0x600, 9), (0x800, 9), (0xa00, 9)]);
        let runs: Vec<_> = h
            .block_runs()
            .map(|r| (r.first.pfn.as_u64(), r.count))
            .collect();
        assert_eq!(runs, [(0x400, 4)]);
    }

    #[test]
    fn partial_pages_and_page_zero_are_not_handed_off() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0), 0x3800).unwrap();
        bm.reserve(pa(0x1800), 0x10).unwrap();
        let h = bm.handoff(Order::new(10));
        // Page 0 never; page 1 is partly reserved; page 3 is partial memory.
        assert_eq!(blocks(&h), [(2, 0)]);
    }

    #[test]
    fn nomap_memory_is_kept_back_and_attributes_travel_with_blocks() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add_node(
            pa(0x10_0000),
            0x10_0000,
            NodeId::new(2),
            RegionFlags::MIRROR,
        )
        .unwrap();
        bm.mark(pa(0x18_0000), 0x8_0000, RegionFlags::NOMAP)
            .unwrap();
        let h = bm.handoff(Order::new(10));
        let got: Vec<_> = h.blocks().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].range(), raw_range(0x10_0000, 0x18_0000));
        assert_eq!(got[0].nid, NodeId::new(2));
        assert_eq!(got[0].flags, RegionFlags::MIRROR);
    }

    #[test]
    fn reserved_in_memory_reports_per_node_accounting() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x1000), 0xf000).unwrap();
        bm.add_node(pa(0x10000), 0x10000, NodeId::new(1), RegionFlags::empty())
            .unwrap();
        bm.reserve(pa(0xe000), 0x4000).unwrap(); // straddles the node boundary
        bm.reserve(pa(0x40000), 0x1000).unwrap(); // not memory at all
        let h = bm.handoff(Order::new(10));
        let parts: Vec<_> = h
            .reserved_in_memory()
            .map(|p| (p.range.as_raw(), p.nid))
            .collect();
        assert_eq!(
            parts,
            [
                (0xe000..0x10000, NodeId::ZERO),
                (0x10000..0x12000, NodeId::new(1))
            ]
        );
        assert_eq!(h.reserved_size(), 0x5000);
        // Node 0: frames 1..16, of which 14 and 15 are reserved and frame 0 is not memory.
        assert_eq!(
            h.node_pages(Some(NodeId::ZERO)),
            NodePages {
                present: 15,
                managed: 13
            }
        );
        assert_eq!(
            h.node_pages(Some(NodeId::new(1))),
            NodePages {
                present: 16,
                managed: 14
            }
        );
        assert_eq!(h.node_pages(None).managed, h.free_pages());
    }

    #[test]
    fn free_ranges_leave_out_page_zero_like_the_blocks() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0), 0x9_fc00).unwrap();
        bm.add(pa(0x10_0000), 0x10_0000).unwrap();
        bm.reserve(pa(0x10_0000), 0x800).unwrap();
        let h = bm.handoff(Order::new(10));
        let ranges: Vec<_> = h.free_ranges().map(|f| f.range.as_raw()).collect();
        assert_eq!(ranges, [0x1000..0x9_fc00, 0x10_0800..0x20_0000]);
        let range_frames: u64 = h
            .free_ranges()
            .map(|f| f.range.whole_pfns().end - f.range.whole_pfns().start)
            .sum();
        let block_frames: u64 = h.blocks().map(|b| b.order.pages()).sum();
        assert_eq!(range_frames, block_frames);
        assert_eq!(block_frames, h.free_pages());
    }

    #[test]
    fn region_arrays_come_back_after_the_handoff() {
        let host = mmkit_addr::host::HostMemory::new(pa(0), 0x100_0000);
        let mut bm: Bootmem<'_, 2> = Bootmem::new();
        // SAFETY: nothing else uses the host buffer.
        unsafe { bm.set_mapper(&host) };
        for i in 0..8 {
            bm.add(pa(0x10_0000 + i * 0x2000), 0x1000).unwrap();
        }
        let array = bm.region_arrays()[0].unwrap();
        let h = bm.handoff(Order::new(10));
        assert!(h.blocks().all(|b| !b.range().overlaps(&array)));
        assert_eq!(h.memory_regions().len(), 8);
        assert_eq!(h.into_region_arrays()[0], Some(array));
    }

    #[test]
    fn one_tib_handoff_is_o_blocks() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x1000), (1 << 40) - 0x1000).unwrap();
        let h = bm.handoff(Order::new(10));
        let runs: Vec<_> = h.block_runs().collect();
        // Head from frame 1 up to order 10, then one run for the rest.
        assert_eq!(runs.len(), 11);
        assert_eq!(runs[10].count, (1 << 28) / 1024 - 1);
        assert_eq!(h.free_pages(), (1 << 28) - 1);
    }
}
