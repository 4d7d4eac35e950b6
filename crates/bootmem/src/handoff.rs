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

use mmkit_addr::{Order, Pfn, PhysRange, PAGE_SHIFT};

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

    /// The free ranges the blocks are cut from (byte-exact, before rounding to frames).
    pub fn free_ranges(&self) -> FreeRanges<'_> {
        FreeRanges::new(
            self.memory.regions(),
            self.reserved.regions(),
            RangeFilter::ALLOCATABLE,
        )
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

    /// The region arrays bootmem allocated from itself (still reserved).
    pub fn region_arrays(&self) -> [Option<PhysRange>; 2] {
        [self.memory.external_phys(), self.reserved.external_phys()]
    }

    /// Drop the lists and return the ranges of the self-allocated region arrays, which the
    /// caller may now free to the page allocator.
    pub fn into_region_arrays(self) -> [Option<PhysRange>; 2] {
        self.region_arrays()
    }
}

impl<const N: usize> fmt::Display for Handoff<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::report::write_lists(f, self.memory.regions(), self.reserved.regions())
    }
}

/// The whole frames of a free range, frame 0 excluded.
fn frames_of(fr: &FreeRange) -> core::ops::Range<u64> {
    let frames = fr.range.whole_pfns();
    frames.start.max(1)..frames.end.max(1)
}

/// Shared walk state of [`Blocks`] and [`BlockRuns`].
struct Cursor<'a> {
    ranges: FreeRanges<'a>,
    max_order: u32,
    next: u64,
    end: u64,
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
            nid: NodeId::NONE,
            flags: RegionFlags::empty(),
        }
    }

    /// The next block's first frame and order, moving to the next range when one is used up.
    #[inline]
    fn peek(&mut self) -> Option<(u64, u32)> {
        while self.next >= self.end {
            let fr = self.ranges.next()?;
            let frames = frames_of(&fr);
            self.next = frames.start;
            self.end = frames.end;
            self.nid = fr.nid;
            self.flags = fr.flags;
        }
        let left = self.end - self.next;
        let order = self
            .max_order
            .min(self.next.trailing_zeros())
            .min(63 - left.leading_zeros());
        Some((self.next, order))
    }

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
