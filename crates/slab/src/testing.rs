//! Host test doubles (feature `testing`): the real buddy allocator over host memory as the
//! page source, and a hand-driven RCU.
//!
//! [`TestPageSource`] is an [`mmkit_buddy::BuddyAllocator`] (zones, mobility grouping, per-CPU
//! page lists, NUMA nodes) over a [`HostMemory`] arena, so every slab test, bench and fuzz run
//! takes its pages from the allocator a kernel would use. Around the buddy it is strict: it
//! panics on any contract violation by its caller (freeing a block it did not hand out, a
//! wrong order, a private word on a frame outside the arena), which is what a test double
//! should do: a slab bug shows up as a test failure. It can be limited to a number of frames
//! to test out-of-memory paths, counts reclaimable and DMA blocks so tests can check the GFP
//! hints, and fills the private words of fresh blocks with [`STALE_PRIVATE`] (the slab must
//! not trust a word it did not write).
//!
//! Physical layout: node `n` owns `[TEST_PHYS_BASE + n * node_bytes, ...)`; the first
//! max-order block of node 0 is ZONE_DMA (the buddy puts zone boundaries on max-order
//! blocks), the rest ZONE_DMA32. Ordinary requests prefer ZONE_DMA32 and fall back to
//! ZONE_DMA, as in Linux.
//!
//! [`TestRcu`] queues `call_rcu` callbacks on an intrusive list through [`RcuHead::next`], as
//! a kernel's RCU does, and runs them when the test says a grace period has ended.

extern crate std;

use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::boxed::Box;
use std::sync::Mutex;
use std::vec::Vec;

use mmkit_addr::host::{HostMemory, HostPlatform};
use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange, PAGE_SIZE};
use mmkit_buddy::{
    memmap_len, pcp_storage_len, BuddyAllocator, BuddyConfig, GfpFlags, NodeInit, PageDesc,
    PerCpuPages, MAX_NUMNODES,
};

use crate::flags::Gfp;
use crate::page_source::{PageBlock, PageSource, Rcu, RcuCallback, RcuHead};

/// Largest block order the test source hands out (Linux's default `MAX_PAGE_ORDER`).
pub const TEST_MAX_ORDER: u32 = 10;
/// What the private words of a freshly allocated block read until their owner stores one: an
/// address-like value with the slab tag, the worst thing a stale word could hold.
pub const STALE_PRIVATE: u64 = 0xdead_0000_0000_0001;
/// Physical address the test source's first frame stands for.
pub const TEST_PHYS_BASE: u64 = 0x4000_0000;
/// CPUs the buddy under the test source keeps per-CPU page lists for.
const TEST_BUDDY_CPUS: usize = 4;

type Buddy = BuddyAllocator<'static, HostPlatform>;

/// A page source for tests: the real buddy allocator over host memory.
pub struct TestPageSource {
    /// The buddy, built in place in a leaked box. It borrows the storage below (also leaked
    /// boxes), so `Drop` drops it first and then frees the storage; it is only ever lent out
    /// for the lifetime of `&self`.
    buddy: NonNull<Buddy>,
    storage: Storage,
    _mem: HostMemory,
    /// Host address of the first frame (aligned like the physical address).
    base: usize,
    first_pfn: u64,
    frames: usize,
    nr_nodes: usize,
    node_frames: usize,
    limit: AtomicUsize,
    in_use: AtomicUsize,
    reclaimable_blocks: AtomicUsize,
    dma_blocks: AtomicUsize,
    /// The flags of the last `alloc_pages*` call.
    last_gfp: AtomicU32,
}

// SAFETY: the buddy is `Sync` (its own locks and per-CPU exclusion); the storage boxes are
// only reached through it; the counters are atomics.
unsafe impl Sync for TestPageSource {}
// SAFETY: as above; nothing is bound to the creating thread.
unsafe impl Send for TestPageSource {}

/// The buddy's slot and the memory it borrows, as leaked boxes freed in `Drop`.
struct Storage {
    slot: *mut MaybeUninit<Buddy>,
    memmaps: Vec<*mut [MaybeUninit<PageDesc>]>,
    pcp: *mut [MaybeUninit<PerCpuPages>],
    cpu_map: *mut [u8],
}

/// Leak `b` for the buddy to borrow; `Storage` frees it.
fn leak<T: ?Sized>(b: Box<T>) -> (*mut T, &'static mut T) {
    let p = Box::into_raw(b);
    // SAFETY: `p` is a fresh, unique allocation; the returned reference is its only user
    // until `Drop` reclaims the box after dropping the buddy that holds the reference.
    (p, unsafe { &mut *p })
}

impl TestPageSource {
    /// A one-node source of at least `bytes` (rounded up to max-order blocks), handing out
    /// orders up to [`TEST_MAX_ORDER`].
    pub fn new(bytes: usize) -> Self {
        Self::with_max_order(bytes, TEST_MAX_ORDER)
    }

    /// As [`new`](Self::new) with a smaller largest order.
    pub fn with_max_order(bytes: usize, max_order: u32) -> Self {
        Self::build(bytes, 1, &[], max_order)
    }

    /// A source of `nodes` NUMA nodes of at least `node_bytes` each; CPU `c` is on node
    /// `cpu_nodes[c]` (node 0 for CPUs beyond the slice).
    pub fn numa(node_bytes: usize, nodes: usize, cpu_nodes: &[u8]) -> Self {
        Self::build(node_bytes, nodes, cpu_nodes, TEST_MAX_ORDER)
    }

    /// As [`numa`](Self::numa) with a smaller largest order (small arenas for fuzzing).
    pub fn numa_with_max_order(
        node_bytes: usize,
        nodes: usize,
        cpu_nodes: &[u8],
        max_order: u32,
    ) -> Self {
        Self::build(node_bytes, nodes, cpu_nodes, max_order)
    }

    fn build(node_bytes: usize, nodes: usize, cpu_nodes: &[u8], max_order: u32) -> Self {
        assert!(
            (1..=MAX_NUMNODES).contains(&nodes),
            "1..={MAX_NUMNODES} nodes"
        );
        let max_order = max_order.min(TEST_MAX_ORDER);
        let block = (PAGE_SIZE as usize) << max_order;
        let node_len = node_bytes.max(block).div_ceil(block) * block;
        let len = node_len * nodes;
        // HostMemory keeps physical alignment in its host addresses, so every block's pointer
        // is aligned to the block size, as the page-source contract wants.
        let mem = HostMemory::new(PhysAddr::new(TEST_PHYS_BASE), len as u64);
        let base = mem
            .ptr_of(PhysAddr::new(TEST_PHYS_BASE))
            .expect("host memory start")
            .as_ptr() as usize;
        let ranges: Vec<[PhysRange; 1]> = (0..nodes)
            .map(|n| {
                let start = TEST_PHYS_BASE + (n * node_len) as u64;
                [
                    PhysRange::from_start_size(PhysAddr::new(start), node_len as u64)
                        .expect("node range"),
                ]
            })
            .collect();
        let distances: Vec<Vec<u8>> = (0..nodes)
            .map(|a| (0..nodes).map(|b| if a == b { 10 } else { 20 }).collect())
            .collect();
        let mut memmap_ptrs = Vec::new();
        let mut memmaps: Vec<&'static mut [MaybeUninit<PageDesc>]> = Vec::new();
        for r in &ranges {
            let (p, m) = leak(
                (0..memmap_len(r, max_order))
                    .map(|_| MaybeUninit::uninit())
                    .collect::<Box<[_]>>(),
            );
            memmap_ptrs.push(p);
            memmaps.push(m);
        }
        let (pcp_ptr, pcp) = leak(
            (0..pcp_storage_len(nodes, TEST_BUDDY_CPUS))
                .map(|_| MaybeUninit::uninit())
                .collect::<Box<[_]>>(),
        );
        let cfg = BuddyConfig {
            max_order,
            pageblock_order: 9.min(max_order),
            dma_limit: PhysAddr::new(TEST_PHYS_BASE + block as u64),
            dma32_limit: PhysAddr::new(1 << 40),
            // The whole arena is usable: tests fill it exactly.
            min_free_kbytes: Some(0),
            ..BuddyConfig::default()
        };
        let mut inits: Vec<NodeInit<'static, '_>> = ranges
            .iter()
            .zip(&distances)
            .zip(memmaps)
            .map(|((r, d), memmap)| NodeInit {
                memory: r,
                distances: d,
                memmap,
            })
            .collect();
        let (cpu_map_ptr, cpu_map) = leak(Box::<[u8]>::from(cpu_nodes));
        let (slot_ptr, slot) = leak(Box::new(MaybeUninit::<Buddy>::uninit()));
        let buddy = BuddyAllocator::init_in(
            slot,
            HostPlatform::new(TEST_BUDDY_CPUS),
            cfg,
            &mut inits,
            pcp,
        )
        .expect("test buddy");
        buddy.set_cpu_nodes(cpu_map);
        for r in &ranges {
            buddy.free_boot_range(r[0]).expect("boot free");
        }
        buddy.finish_boot();
        let buddy = NonNull::from(buddy);
        Self {
            buddy,
            storage: Storage {
                slot: slot_ptr,
                memmaps: memmap_ptrs,
                pcp: pcp_ptr,
                cpu_map: cpu_map_ptr,
            },
            _mem: mem,
            base,
            first_pfn: TEST_PHYS_BASE / PAGE_SIZE,
            frames: len / PAGE_SIZE as usize,
            nr_nodes: nodes,
            node_frames: node_len / PAGE_SIZE as usize,
            limit: AtomicUsize::new(usize::MAX),
            in_use: AtomicUsize::new(0),
            reclaimable_blocks: AtomicUsize::new(0),
            last_gfp: AtomicU32::new(0),
            dma_blocks: AtomicUsize::new(0),
        }
    }

    /// The buddy allocator underneath (for reports, `verify()` and pageblock checks). Its
    /// `'static` names the arena this source owns: valid for as long as `self` is.
    pub fn buddy(&self) -> &BuddyAllocator<'static, HostPlatform> {
        // SAFETY: initialised in `build`, dropped only in `drop`.
        unsafe { self.buddy.as_ref() }
    }

    /// Frames in the arena.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frames currently handed out.
    pub fn frames_in_use(&self) -> usize {
        self.in_use.load(SeqCst)
    }

    /// Refuse allocations that would take more than `frames` frames in all.
    pub fn set_limit(&self, frames: usize) {
        self.limit.store(frames, SeqCst);
    }

    /// Hand out `n` frames that `alloc` takes from the buddy, within the limit; every frame
    /// after the first gets a stale private word, as a reused frame would have.
    /// Zero the private words of a live block's frames before it goes back to the buddy,
    /// so that free frames read 0 through `page_private_fast` (a word the slab never wrote,
    /// such as [`STALE_PRIVATE`] on a cache descriptor block, would otherwise outlive it).
    fn clear_words(&self, pfn: Pfn, frames: u64) {
        for i in 0..frames {
            let _ = self.buddy().set_page_private(Pfn::new(pfn.as_u64() + i), 0);
        }
    }

    fn take(
        &self,
        n: usize,
        gfp: Gfp,
        alloc: impl FnOnce(&BuddyAllocator<'static, HostPlatform>) -> Option<Pfn>,
    ) -> Option<PageBlock> {
        self.last_gfp.store(gfp.bits(), SeqCst);
        let limit = self.limit.load(SeqCst);
        if self
            .in_use
            .fetch_update(SeqCst, SeqCst, |u| (u + n <= limit).then_some(u + n))
            .is_err()
        {
            return None;
        }
        let Some(pfn) = alloc(self.buddy()) else {
            self.in_use.fetch_sub(n, SeqCst);
            return None;
        };
        let idx = self.index(pfn).expect("buddy frame inside the arena");
        for i in 1..n as u64 {
            self.buddy()
                .set_page_private(Pfn::new(pfn.as_u64() + i), STALE_PRIVATE)
                .expect("frame of a fresh block");
        }
        if gfp.contains(Gfp::RECLAIMABLE) {
            self.reclaimable_blocks.fetch_add(1, SeqCst);
        }
        if gfp.contains(Gfp::DMA) {
            self.dma_blocks.fetch_add(1, SeqCst);
        }
        let ptr = NonNull::new((self.base + idx * PAGE_SIZE as usize) as *mut u8)?;
        Some(PageBlock { pfn, ptr })
    }

    /// A block given back is inside the source and its pointer is its frame's address.
    fn check_block(&self, block: PageBlock) {
        let idx = self
            .index(block.pfn)
            .expect("free of a frame outside the test source");
        assert_eq!(
            block.ptr.as_ptr() as usize,
            self.base + idx * PAGE_SIZE as usize,
            "pointer does not match pfn"
        );
    }

    /// The flags the last `alloc_pages` / `alloc_pages_node` call passed.
    pub fn last_gfp(&self) -> Gfp {
        Gfp::from_bits_retain(self.last_gfp.load(SeqCst))
    }

    /// Blocks handed out for `Gfp::RECLAIMABLE` requests so far.
    pub fn reclaimable_blocks(&self) -> usize {
        self.reclaimable_blocks.load(SeqCst)
    }

    /// Blocks handed out for `Gfp::DMA` requests so far.
    pub fn dma_blocks(&self) -> usize {
        self.dma_blocks.load(SeqCst)
    }

    #[inline]
    fn index(&self, pfn: Pfn) -> Option<usize> {
        let i = pfn.as_u64().checked_sub(self.first_pfn)? as usize;
        (i < self.frames).then_some(i)
    }

    fn gfp(gfp: Gfp) -> GfpFlags {
        let mut f = if gfp.contains(Gfp::NOWAIT) {
            GfpFlags::NOWAIT
        } else {
            GfpFlags::KERNEL
        };
        if gfp.contains(Gfp::HIGH) {
            f |= GfpFlags::HIGH;
        }
        if gfp.contains(Gfp::RECLAIMABLE) {
            f |= GfpFlags::RECLAIMABLE;
        }
        if gfp.contains(Gfp::DMA) {
            f |= GfpFlags::DMA;
        }
        f
    }
}

impl Drop for TestPageSource {
    fn drop(&mut self) {
        let st = &self.storage;
        // SAFETY: the buddy was initialised in `build` and nothing borrows it any more
        // (`&mut self`); each box was leaked by `leak` in `build` and is reclaimed once, the
        // buddy's slot after dropping the buddy, then the storage the buddy borrowed.
        unsafe {
            self.buddy.as_ptr().drop_in_place();
            drop(Box::from_raw(st.slot));
            for &m in &st.memmaps {
                drop(Box::from_raw(m));
            }
            drop(Box::from_raw(st.pcp));
            drop(Box::from_raw(st.cpu_map));
        }
    }
}

impl core::fmt::Debug for TestPageSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TestPageSource")
            .field("frames", &self.frames)
            .field("nodes", &self.nr_nodes)
            .field("in_use", &self.frames_in_use())
            .finish()
    }
}

// SAFETY: blocks come from the buddy, which hands each to one owner until it is freed, and
// are naturally aligned physically; the arena maps physical frames linearly onto host memory
// whose first frame is aligned to a max-order block, so `ptr` is aligned to the block size
// and valid for the whole block. Private words are the buddy's per-frame words: the buddy
// answers only for frames of allocated blocks (an error, read as 0, otherwise), and every
// allocated frame of this arena belongs to the slab under test. The buddy is `Sync`.
unsafe impl PageSource for TestPageSource {
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock> {
        self.alloc_pages_node(self.buddy().local_node(), order, gfp)
    }

    fn alloc_pages_node(&self, node: usize, order: Order, gfp: Gfp) -> Option<PageBlock> {
        self.take(1 << order.get(), gfp, |b| {
            b.alloc_pages_node(node.min(self.nr_nodes - 1), Self::gfp(gfp), order)
                .ok()
        })
    }

    fn alloc_pages_exact(&self, node: usize, nr: u64, gfp: Gfp) -> Option<PageBlock> {
        self.take(usize::try_from(nr).ok()?, gfp, |b| {
            b.alloc_pages_exact(node.min(self.nr_nodes - 1), Self::gfp(gfp), nr)
                .ok()
        })
    }

    unsafe fn resize_pages_exact(&self, block: PageBlock, nr: u64, new_nr: u64) -> bool {
        self.check_block(block);
        let (Ok(old), Ok(new)) = (usize::try_from(nr), usize::try_from(new_nr)) else {
            return false;
        };
        let limit = self.limit.load(SeqCst);
        if new > old
            && self
                .in_use
                .fetch_update(SeqCst, SeqCst, |u| {
                    (u + (new - old) <= limit).then_some(u + (new - old))
                })
                .is_err()
        {
            return false;
        }
        if self
            .buddy()
            .resize_pages_exact(block.pfn, nr, new_nr)
            .is_err()
        {
            if new > old {
                self.in_use.fetch_sub(new - old, SeqCst);
            }
            return false;
        }
        // New frames carry a stale word, as fresh blocks do here.
        for i in nr..new_nr {
            self.buddy()
                .set_page_private(Pfn::new(block.pfn.as_u64() + i), STALE_PRIVATE)
                .expect("frame of the grown block");
        }
        if new < old {
            self.in_use.fetch_sub(old - new, SeqCst);
        }
        true
    }

    unsafe fn free_pages_exact(&self, block: PageBlock, nr: u64) {
        self.check_block(block);
        self.clear_words(block.pfn, nr);
        self.buddy()
            .free_pages_exact(block.pfn, nr)
            .expect("buddy free of a live exact allocation");
        self.in_use.fetch_sub(nr as usize, SeqCst);
    }

    unsafe fn free_pages(&self, block: PageBlock, order: Order) {
        self.check_block(block);
        assert_eq!(
            self.buddy().allocated_block(block.pfn),
            Some((block.pfn, order)),
            "free of a block not allocated at this order"
        );
        self.clear_words(block.pfn, 1 << order.get());
        self.buddy()
            .free_pages(block.pfn, order)
            .expect("buddy free of a live block");
        self.in_use.fetch_sub(1 << order.get(), SeqCst);
    }

    fn set_page_private(&self, pfn: Pfn, value: u64) {
        self.index(pfn)
            .expect("private word outside the test source");
        self.buddy()
            .set_page_private(pfn, value)
            .expect("private word of a frame not handed out");
    }

    /// One descriptor read, as the facade's source does (`page_private_fast`): a free
    /// block's head reads 0, and its other frames read 0 because `free_pages` cleared them.
    #[inline]
    fn page_private(&self, pfn: Pfn) -> u64 {
        self.buddy().page_private_fast(pfn).unwrap_or(0)
    }

    #[inline]
    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn> {
        let off = (addr.as_ptr() as usize).checked_sub(self.base)?;
        let i = off / PAGE_SIZE as usize;
        (i < self.frames).then(|| Pfn::new(self.first_pfn + i as u64))
    }

    fn nr_nodes(&self) -> usize {
        self.nr_nodes
    }

    fn cpu_node(&self, cpu: usize) -> usize {
        self.buddy().cpu_node(cpu)
    }

    fn pfn_node(&self, pfn: Pfn) -> usize {
        self.index(pfn).map_or(0, |i| i / self.node_frames)
    }
}

/// The kernel's RCU, driven by hand: `call_rcu` queues, [`advance`](TestRcu::advance) ends a
/// grace period and runs what was queued before it.
#[derive(Debug, Default)]
pub struct TestRcu {
    queue: Mutex<Queue>,
    invoked: AtomicUsize,
}

/// Heads queued through their `next` links, newest first.
#[derive(Debug, Default)]
struct Queue {
    head: Option<NonNull<RcuHead>>,
    len: usize,
}

// SAFETY: the heads are owned by the RCU machinery while queued (the `call_rcu` contract) and
// only touched under the mutex or after being taken off the queue.
unsafe impl Send for Queue {}

impl TestRcu {
    /// No callbacks queued.
    pub const fn new() -> Self {
        Self {
            queue: Mutex::new(Queue { head: None, len: 0 }),
            invoked: AtomicUsize::new(0),
        }
    }

    /// Callbacks waiting for a grace period.
    pub fn pending(&self) -> usize {
        self.queue.lock().expect("rcu queue").len
    }

    /// Callbacks run so far.
    pub fn invoked(&self) -> usize {
        self.invoked.load(SeqCst)
    }

    /// End a grace period: run every callback queued before this call, oldest first.
    /// Returns how many ran.
    ///
    /// # Safety
    /// No RCU reader that started before this call still reads objects of a cache using this
    /// RCU.
    pub unsafe fn advance(&self) -> usize {
        let mut list = {
            let mut q = self.queue.lock().expect("rcu queue");
            q.len = 0;
            q.head.take()
        };
        // Reverse into queue order.
        let mut ordered: Option<NonNull<RcuHead>> = None;
        while let Some(h) = list {
            // SAFETY: queued heads are valid until their callback runs.
            unsafe {
                list = (*h.as_ptr()).next;
                (*h.as_ptr()).next = ordered;
            }
            ordered = Some(h);
        }
        let mut ran = 0;
        while let Some(h) = ordered {
            // SAFETY: as above; the link and callback are read before the callback may free
            // the head's memory.
            let (next, func) = unsafe { ((*h.as_ptr()).next, (*h.as_ptr()).func) };
            ordered = next;
            let func = func.expect("queued head without a callback");
            // SAFETY: `call_rcu`'s contract: `func(h)` is what the caller asked for, once,
            // after a grace period (ours, by this function's contract).
            unsafe { func(h) };
            ran += 1;
        }
        self.invoked.fetch_add(ran, SeqCst);
        ran
    }
}

// SAFETY: `advance` runs each queued callback exactly once, after the grace period its
// caller vouches for, and does not touch a head after its callback; callbacks run with no
// lock of ours held.
unsafe impl Rcu for TestRcu {
    unsafe fn call_rcu(&self, head: NonNull<RcuHead>, func: RcuCallback) {
        let mut q = self.queue.lock().expect("rcu queue");
        // SAFETY: the caller hands us `head` until the callback runs.
        unsafe {
            (*head.as_ptr()).func = Some(func);
            (*head.as_ptr()).next = q.head;
        }
        q.head = Some(head);
        q.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_source_blocks_are_aligned_and_merge_back() {
        let s = TestPageSource::new(4 << 20);
        let a = s.alloc_pages(Order::new(3), Gfp::empty()).unwrap();
        let b = s.alloc_pages(Order::new(0), Gfp::RECLAIMABLE).unwrap();
        assert_eq!(a.ptr.as_ptr() as usize % (8 * 4096), 0);
        assert_eq!(a.pfn.as_u64() % 8, 0);
        assert_eq!(s.frames_in_use(), 9);
        assert_eq!(s.reclaimable_blocks(), 1);
        assert_eq!(s.virt_to_pfn(a.ptr), Some(a.pfn));
        s.set_page_private(b.pfn, 42);
        assert_eq!(s.page_private(b.pfn), 42);
        // SAFETY: both blocks came from `s` at these orders.
        unsafe {
            s.free_pages(a, Order::new(3));
            s.free_pages(b, Order::new(0));
        }
        assert_eq!(s.page_private(b.pfn), 0, "a free frame reads 0");
        assert_eq!(s.frames_in_use(), 0);
        s.buddy().verify().unwrap();
        // Small blocks wait on the buddy's per-CPU lists until drained.
        s.buddy().drain_all_pages();
        let whole = s.alloc_pages(Order::new(TEST_MAX_ORDER), Gfp::empty());
        assert!(
            whole.is_some(),
            "buddies merged back into a max-order block"
        );
    }

    #[test]
    fn smaller_max_order_source_still_serves_its_largest_block() {
        let s = TestPageSource::with_max_order(1 << 20, 4);
        assert_eq!(s.frames(), 256);
        assert!(s.alloc_pages(Order::new(5), Gfp::empty()).is_none());
        let blocks: Vec<_> = (0..16)
            .map(|_| s.alloc_pages(Order::new(4), Gfp::empty()).unwrap())
            .collect();
        assert!(s.alloc_pages(Order::new(0), Gfp::empty()).is_none());
        for b in blocks {
            assert_eq!(b.ptr.as_ptr() as usize % (16 * 4096), 0);
            // SAFETY: from `s` at order 4.
            unsafe { s.free_pages(b, Order::new(4)) };
        }
    }

    #[test]
    fn fresh_blocks_have_stale_private_words_and_gfp_hints_reach_the_buddy() {
        use mmkit_buddy::MigrateType;
        let s = TestPageSource::new(16 << 20);
        let a = s.alloc_pages(Order::new(2), Gfp::RECLAIMABLE).unwrap();
        assert_eq!(
            s.page_private(a.pfn.checked_add_frames(1).unwrap()),
            STALE_PRIVATE
        );
        assert_eq!(
            s.buddy().pageblock_migratetype(a.pfn),
            Some(MigrateType::Reclaimable)
        );
        let d = s.alloc_pages(Order::new(0), Gfp::DMA).unwrap();
        assert!(
            d.pfn.addr().as_u64() < TEST_PHYS_BASE + (4 << 20),
            "ZONE_DMA"
        );
        assert_eq!(s.dma_blocks(), 1);
        // SAFETY: both from `s` at these orders.
        unsafe {
            s.free_pages(a, Order::new(2));
            s.free_pages(d, Order::new(0));
        }
    }

    /// `page_private` reads one descriptor (`page_private_fast`), so a freed block's frames
    /// must read 0 again, whatever they held while the block was live; also after the buddy
    /// merges the block with its neighbours.
    #[test]
    fn freed_blocks_read_zero_private_words() {
        let s = TestPageSource::new(4 << 20);
        for (order, exact) in [(3u32, None), (0, None), (2, Some(3u64))] {
            let (b, frames) = match exact {
                None => (
                    s.alloc_pages(Order::new(order), Gfp::empty()).unwrap(),
                    1u64 << order,
                ),
                Some(n) => (s.alloc_pages_exact(0, n, Gfp::empty()).unwrap(), n),
            };
            let pfn = |i: u64| b.pfn.checked_add_frames(i).unwrap();
            s.set_page_private(pfn(0), 0x1234_5671);
            for i in 1..frames {
                assert_eq!(s.page_private(pfn(i)), STALE_PRIVATE);
            }
            // SAFETY: `b` came from `s` with this order / frame count.
            unsafe {
                match exact {
                    None => s.free_pages(b, Order::new(order)),
                    Some(n) => s.free_pages_exact(b, n),
                }
            }
            for i in 0..frames {
                assert_eq!(s.page_private(pfn(i)), 0, "frame {i} of a freed block");
            }
        }
    }

    #[test]
    fn numa_source_allocates_on_the_asked_node() {
        let s = TestPageSource::numa(8 << 20, 2, &[0, 1]);
        assert_eq!(
            (s.nr_nodes(), s.cpu_node(0), s.cpu_node(1), s.cpu_node(9)),
            (2, 0, 1, 0)
        );
        let a = s.alloc_pages_node(1, Order::new(0), Gfp::empty()).unwrap();
        let b = s.alloc_pages_node(0, Order::new(3), Gfp::empty()).unwrap();
        assert_eq!((s.pfn_node(a.pfn), s.pfn_node(b.pfn)), (1, 0));
        assert_eq!(s.virt_to_pfn(a.ptr), Some(a.pfn));
        // SAFETY: from `s` at these orders.
        unsafe {
            s.free_pages(a, Order::new(0));
            s.free_pages(b, Order::new(3));
        }
        assert_eq!(s.frames_in_use(), 0);
    }

    #[test]
    fn test_rcu_runs_callbacks_in_queue_order_once() {
        use std::sync::Mutex as M;
        static ORDER: M<Vec<usize>> = M::new(Vec::new());
        #[repr(C)]
        struct Obj {
            head: RcuHead,
            id: usize,
        }
        unsafe fn done(h: NonNull<RcuHead>) {
            // SAFETY: `head` is the first field of a live `Obj` (repr(C)).
            let id = unsafe { (*h.as_ptr().cast::<Obj>()).id };
            ORDER.lock().unwrap().push(id);
        }
        let rcu = TestRcu::new();
        let mut objs: Vec<Obj> = (0..3)
            .map(|id| Obj {
                head: RcuHead::new(),
                id,
            })
            .collect();
        for o in &mut objs {
            // SAFETY: `o` lives until after `advance`.
            unsafe { rcu.call_rcu(NonNull::from(&mut o.head), done) };
        }
        assert_eq!((rcu.pending(), rcu.invoked()), (3, 0));
        assert!(
            ORDER.lock().unwrap().is_empty(),
            "nothing before the grace period"
        );
        // SAFETY: no readers.
        assert_eq!(unsafe { rcu.advance() }, 3);
        assert_eq!(*ORDER.lock().unwrap(), [0, 1, 2]);
        // SAFETY: as above.
        assert_eq!(unsafe { rcu.advance() }, 0, "each callback runs once");
        assert_eq!((rcu.pending(), rcu.invoked()), (0, 3));
    }

    #[test]
    fn test_source_limit_refuses() {
        let s = TestPageSource::new(4 << 20);
        s.set_limit(2);
        let a = s.alloc_pages(Order::new(1), Gfp::empty()).unwrap();
        assert!(s.alloc_pages(Order::new(0), Gfp::empty()).is_none());
        // SAFETY: from `s` at order 1.
        unsafe { s.free_pages(a, Order::new(1)) };
    }
}
