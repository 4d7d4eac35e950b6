//! Host test doubles (feature `testing`): a page source over
//! [`HostMemory`](mmkit_addr::host::HostMemory) and a hand-driven grace period.
//!
//! [`TestPageSource`] is a small, strict buddy allocator (orders 0..=[`TEST_MAX_ORDER`], free
//! lists as ordered sets, merging on free) with a private word per frame. It panics on any
//! contract violation by its caller (freeing a block it did not hand out, a wrong order, a
//! private word on a free frame), which is what a test double should do: a slab bug shows up
//! as a test failure. It can be limited to a number of frames to test out-of-memory paths, and
//! counts reclaimable and DMA blocks so tests can check the GFP hints.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::vec::Vec;

use mmkit_addr::host::HostMemory;
use mmkit_addr::{Order, Pfn, PhysAddr, PAGE_SIZE};

use crate::flags::Gfp;
use crate::page_source::{GracePeriod, PageBlock, PageSource};

/// Largest block order the test source hands out (Linux's default `MAX_PAGE_ORDER`).
pub const TEST_MAX_ORDER: u32 = 10;
/// What the private words of a freshly allocated block read until their owner stores one: an
/// address-like value with the slab tag, the worst thing a stale word could hold.
pub const STALE_PRIVATE: u64 = 0xdead_0000_0000_0001;
/// Physical address the test source's first frame stands for.
pub const TEST_PHYS_BASE: u64 = 0x4000_0000;

struct BuddyState {
    max_order: usize,
    free: Vec<BTreeSet<usize>>,
    /// Order of the allocated block headed by each frame; `u8::MAX` when not a head.
    head_order: Vec<u8>,
    limit: usize,
}

/// A strict host page source: a buddy allocator over zeroed host memory.
pub struct TestPageSource {
    _mem: HostMemory,
    base: usize,
    first_pfn: u64,
    frames: usize,
    state: Mutex<BuddyState>,
    private: Vec<AtomicU64>,
    in_use: AtomicUsize,
    reclaimable_blocks: AtomicUsize,
    dma_blocks: AtomicUsize,
}

impl TestPageSource {
    /// A source of at least `bytes` bytes (rounded up to whole max-order blocks).
    pub fn new(bytes: usize) -> Self {
        Self::with_max_order(bytes, TEST_MAX_ORDER)
    }

    /// A source whose largest block is `max_order` (at most [`TEST_MAX_ORDER`]): a smaller
    /// largest block means less host memory set aside for alignment, which matters when a
    /// fuzzer builds a fresh source for every input.
    pub fn with_max_order(bytes: usize, max_order: u32) -> Self {
        let max_order = max_order.min(TEST_MAX_ORDER);
        let block = (PAGE_SIZE as usize) << max_order;
        let len = bytes.max(block).div_ceil(block) * block;
        // Over-allocate by one block so the frames can start on a block-aligned host address:
        // the page-source contract wants blocks naturally aligned in virtual memory too.
        let mem = HostMemory::new(PhysAddr::new(TEST_PHYS_BASE), (len + block) as u64);
        let host = mem
            .ptr_of(PhysAddr::new(TEST_PHYS_BASE))
            .expect("host memory start")
            .as_ptr() as usize;
        let base = host.div_ceil(block) * block;
        let frames = len / PAGE_SIZE as usize;
        let mut free: Vec<BTreeSet<usize>> = (0..=max_order).map(|_| BTreeSet::new()).collect();
        let per_block = 1usize << max_order;
        for i in (0..frames).step_by(per_block) {
            free[max_order as usize].insert(i);
        }
        Self {
            _mem: mem,
            base,
            // The host buffer is only storage: frame i stands for physical
            // `TEST_PHYS_BASE + i * PAGE_SIZE`, so pfns are as aligned as the frame indices.
            first_pfn: TEST_PHYS_BASE / PAGE_SIZE,
            frames,
            state: Mutex::new(BuddyState {
                max_order: max_order as usize,
                free,
                head_order: std::vec![u8::MAX; frames],
                limit: frames,
            }),
            private: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            in_use: AtomicUsize::new(0),
            reclaimable_blocks: AtomicUsize::new(0),
            dma_blocks: AtomicUsize::new(0),
        }
    }

    /// Frames managed.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frames currently handed out.
    pub fn frames_in_use(&self) -> usize {
        self.in_use.load(SeqCst)
    }

    /// Refuse allocations that would take more than `frames` frames in use.
    pub fn set_limit(&self, frames: usize) {
        self.state.lock().expect("test source lock").limit = frames;
    }

    /// Blocks allocated with [`Gfp::RECLAIMABLE`] so far.
    pub fn reclaimable_blocks(&self) -> usize {
        self.reclaimable_blocks.load(SeqCst)
    }

    /// Blocks allocated with [`Gfp::DMA`] so far.
    pub fn dma_blocks(&self) -> usize {
        self.dma_blocks.load(SeqCst)
    }

    #[inline]
    fn index(&self, pfn: Pfn) -> Option<usize> {
        let i = pfn.as_u64().checked_sub(self.first_pfn)? as usize;
        (i < self.frames).then_some(i)
    }
}

impl core::fmt::Debug for TestPageSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TestPageSource")
            .field("frames", &self.frames)
            .field("in_use", &self.frames_in_use())
            .finish()
    }
}

// SAFETY: blocks come from a buddy allocator over a private host buffer: a block is handed out
// once until freed, starts at a frame index that is a multiple of its size, and the buffer
// start is aligned to the largest block, so `ptr` is naturally aligned and maps the frames
// contiguously. Private words are reset to 0 on free (and start at 0), and `page_private`
// returns 0 for frames outside the buffer. All state is behind a mutex or atomics.
unsafe impl PageSource for TestPageSource {
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock> {
        let o = order.get() as usize;
        let mut st = self.state.lock().expect("test source lock");
        if o > st.max_order {
            return None;
        }
        if self.in_use.load(SeqCst) + (1 << o) > st.limit {
            return None;
        }
        let from = (o..=st.max_order).find(|&k| !st.free[k].is_empty())?;
        let idx = st.free[from].pop_first()?;
        for k in (o..from).rev() {
            st.free[k].insert(idx + (1 << k));
        }
        st.head_order[idx] = o as u8;
        // A fresh block's words hold garbage on purpose: the contract does not promise clean
        // words, so the slab must store one on every frame before relying on it.
        for i in idx..idx + (1 << o) {
            self.private[i].store(STALE_PRIVATE, SeqCst);
        }
        drop(st);
        self.in_use.fetch_add(1 << o, SeqCst);
        if gfp.contains(Gfp::RECLAIMABLE) {
            self.reclaimable_blocks.fetch_add(1, SeqCst);
        }
        if gfp.contains(Gfp::DMA) {
            self.dma_blocks.fetch_add(1, SeqCst);
        }
        let ptr = NonNull::new((self.base + idx * PAGE_SIZE as usize) as *mut u8)?;
        Some(PageBlock {
            pfn: Pfn::new(self.first_pfn + idx as u64),
            ptr,
        })
    }

    unsafe fn free_pages(&self, block: PageBlock, order: Order) {
        let mut idx = self
            .index(block.pfn)
            .expect("free of a frame outside the test source");
        assert_eq!(
            block.ptr.as_ptr() as usize,
            self.base + idx * PAGE_SIZE as usize,
            "pointer does not match pfn"
        );
        let mut st = self.state.lock().expect("test source lock");
        assert_eq!(
            st.head_order[idx],
            order.get() as u8,
            "free of a block not allocated at this order"
        );
        st.head_order[idx] = u8::MAX;
        for i in idx..idx + (1usize << order.get()) {
            self.private[i].store(0, SeqCst);
        }
        let mut o = order.get() as usize;
        while o < st.max_order {
            let buddy = idx ^ (1 << o);
            if !st.free[o].remove(&buddy) {
                break;
            }
            idx = idx.min(buddy);
            o += 1;
        }
        st.free[o].insert(idx);
        drop(st);
        self.in_use.fetch_sub(1 << order.get(), SeqCst);
    }

    fn set_page_private(&self, pfn: Pfn, value: u64) {
        let i = self
            .index(pfn)
            .expect("private word outside the test source");
        self.private[i].store(value, Relaxed);
    }

    #[inline]
    fn page_private(&self, pfn: Pfn) -> u64 {
        self.index(pfn).map_or(0, |i| self.private[i].load(Relaxed))
    }

    #[inline]
    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn> {
        let off = (addr.as_ptr() as usize).checked_sub(self.base)?;
        let i = off / PAGE_SIZE as usize;
        (i < self.frames).then(|| Pfn::new(self.first_pfn + i as u64))
    }
}

/// A grace period the test advances by hand.
#[derive(Debug, Default)]
pub struct TestGracePeriod {
    completed: AtomicU64,
}

impl TestGracePeriod {
    /// No grace period completed yet.
    pub const fn new() -> Self {
        Self {
            completed: AtomicU64::new(0),
        }
    }

    /// End a grace period: every cookie taken before this call has elapsed.
    ///
    /// # Safety
    /// No RCU reader that started before this call still reads objects of a cache using this
    /// grace period.
    pub unsafe fn advance(&self) {
        self.completed.fetch_add(1, SeqCst);
    }
}

// SAFETY: `elapsed(c)` is true only after `advance` ran after `snapshot` returned `c`, and
// `advance`'s contract is that all readers that began before it have finished.
unsafe impl GracePeriod for TestGracePeriod {
    fn snapshot(&self) -> u64 {
        self.completed.load(SeqCst) + 1
    }

    fn elapsed(&self, cookie: u64) -> bool {
        self.completed.load(SeqCst) >= cookie
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
        assert_eq!(s.page_private(b.pfn), 0);
        assert_eq!(s.frames_in_use(), 0);
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
    fn test_source_limit_refuses() {
        let s = TestPageSource::new(4 << 20);
        s.set_limit(2);
        let a = s.alloc_pages(Order::new(1), Gfp::empty()).unwrap();
        assert!(s.alloc_pages(Order::new(0), Gfp::empty()).is_none());
        // SAFETY: from `s` at order 1.
        unsafe { s.free_pages(a, Order::new(1)) };
    }
}
