//! What the slab needs from the page allocator, and from RCU.
//!
//! The slab gets memory only through [`PageSource`]: naturally aligned blocks of 2^order
//! frames for slabs (order 0..=3), runs of exactly the frames a large kmalloc needs
//! ([`alloc_pages_exact`](PageSource::alloc_pages_exact), Linux's `alloc_pages_exact`), a
//! kernel virtual address for each block, and one *private word* per allocated frame. The
//! private word is how `kfree(ptr)` and `ksize(ptr)` get from an arbitrary pointer to its slab
//! (or to the order of a large allocation), as Linux stores `page->slab_cache` in `struct page`:
//!
//! * every frame of a slab holds `address of the slab header | PRIVATE_SLAB`;
//! * the first frame of a large kmalloc holds `frames << 8 | PRIVATE_LARGE`; its other
//!   frames 0.
//!
//! The buddy allocator (mmkit-buddy) implements this trait from its page descriptors; the
//! `testing` feature wraps a real `mmkit_buddy::BuddyAllocator` over host memory.
//!
//! ## Nodes
//! A page source with several NUMA nodes says so through [`nr_nodes`](PageSource::nr_nodes),
//! [`cpu_node`](PageSource::cpu_node) and [`pfn_node`](PageSource::pfn_node), and takes
//! node-directed requests through [`alloc_pages_node`](PageSource::alloc_pages_node). The
//! defaults describe one node, so a single-node source implements only the five required
//! methods.
//!
//! ## RCU
//! [`Rcu`] is the kernel's `call_rcu`: a `TYPESAFE_BY_RCU` cache hands each emptied slab to
//! it with an [`RcuHead`] kept in the slab header, and the slab's pages go back to the page
//! source only when the kernel invokes the callback after a grace period, as SLUB's
//! `rcu_free_slab` does.

use core::ptr::NonNull;

use mmkit_addr::{Order, Pfn};

use crate::flags::Gfp;

/// A block of frames handed out by a [`PageSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBlock {
    /// The first frame.
    pub pfn: Pfn,
    /// The kernel virtual address of the first byte of the block.
    pub ptr: NonNull<u8>,
}

/// A page allocator the slab can take blocks from.
///
/// # Safety
/// Implementors promise, for every method:
/// * [`alloc_pages`](PageSource::alloc_pages) returns `Some(b)` only for a block of
///   `2^order` frames starting at `b.pfn` that nobody else owns until it is given back with
///   [`free_pages`](PageSource::free_pages); `b.ptr` is aligned to the block size
///   (`PAGE_SIZE << order`), maps the block's frames contiguously and is valid for reads and
///   writes of the whole block until it is freed.
/// * [`virt_to_pfn`](PageSource::virt_to_pfn) returns, for any address inside a live block,
///   the frame that address lies in; for other addresses it returns `None` or a frame whose
///   private word is 0 (a frame this source did not hand out to the slab).
/// * [`page_private`](PageSource::page_private) returns the value last stored by
///   [`set_page_private`](PageSource::set_page_private) on a frame of a live block handed out
///   by this source (the slab stores a word on every frame of every block before relying on
///   it, so a fresh block's words may hold anything), and 0 for every other frame (free
///   frames, frames owned by other subsystems, frames outside the source). The word belongs
///   to the slab: nothing else writes it while the block is live. A buddy allocator that
///   shares its page descriptors with other users meets the "0 for other frames" part with
///   a page-type mark, as Linux does with `PageSlab`.
/// * [`alloc_pages_exact`](PageSource::alloc_pages_exact) returns `Some(b)` only for at
///   least `nr` contiguous frames from `b.pfn` that nobody else owns until they are given back
///   with [`free_pages_exact`](PageSource::free_pages_exact) and the same `nr`; `b.ptr` is
///   aligned to a page and maps them contiguously; the first `nr` frames are frames of a
///   live block for the private-word rules above.
/// * All methods may be called concurrently from several CPUs.
pub unsafe trait PageSource: Sync {
    /// Allocate a naturally aligned block of `2^order` frames. `gfp` carries mobility and zone
    /// hints ([`Gfp::RECLAIMABLE`], [`Gfp::DMA`]) and the allocating caller's context
    /// ([`Gfp::NOWAIT`]: do not block; [`Gfp::HIGH`]: may use the reserves); the slab never
    /// passes [`Gfp::ZERO`].
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock>;

    /// Give back a block.
    ///
    /// # Safety
    /// `block` and `order` must be exactly what a previous `alloc_pages` returned and was
    /// asked for, the block must not have been freed since, and the caller must not touch
    /// the block's memory afterwards.
    unsafe fn free_pages(&self, block: PageBlock, order: Order);

    /// Store the private word of `pfn`, a frame of a live block this source handed out to the
    /// caller.
    fn set_page_private(&self, pfn: Pfn, value: u64);

    /// The private word of `pfn` (0 unless set on a live block of this source).
    fn page_private(&self, pfn: Pfn) -> u64;

    /// The frame of kernel virtual address `addr`.
    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn>;

    /// Number of memory nodes; node ids are `0..nr_nodes()`. The default is one node.
    fn nr_nodes(&self) -> usize {
        1
    }

    /// The node of CPU `cpu` (Linux `cpu_to_node`): the node whose memory that CPU's
    /// allocations prefer. The default is node 0.
    fn cpu_node(&self, cpu: usize) -> usize {
        let _ = cpu;
        0
    }

    /// The node holding frame `pfn` (Linux `page_to_nid`), asked only for frames of live
    /// blocks from this source. The default is node 0.
    fn pfn_node(&self, pfn: Pfn) -> usize {
        let _ = pfn;
        0
    }

    /// Allocate as [`alloc_pages`](Self::alloc_pages) does, preferring node `node`. The
    /// source may fall back to another node; the slab files a block under the node
    /// [`pfn_node`](Self::pfn_node) reports for it. The default ignores `node`.
    fn alloc_pages_node(&self, node: usize, order: Order, gfp: Gfp) -> Option<PageBlock> {
        let _ = node;
        self.alloc_pages(order, gfp)
    }

    /// Allocate `nr` contiguous frames preferring node `node` (Linux `alloc_pages_exact`),
    /// for large kmalloc. A source that can give the frames beyond `nr` of the covering
    /// power-of-two block back at once should; the default takes the whole covering block
    /// through [`alloc_pages_node`](Self::alloc_pages_node). A source overrides both this
    /// and [`free_pages_exact`](Self::free_pages_exact), or neither.
    fn alloc_pages_exact(&self, node: usize, nr: u64, gfp: Gfp) -> Option<PageBlock> {
        self.alloc_pages_node(node, Order::for_pages(nr)?, gfp)
    }

    /// Resize what [`alloc_pages_exact`](Self::alloc_pages_exact) returned from `nr` to
    /// `new_nr` frames where it is (`krealloc` of a large block tries this before moving
    /// it); `false`, nothing changed, when the source cannot. The default cannot.
    ///
    /// On `true` the allocation is `new_nr` frames at the same place, to be freed with
    /// `new_nr`; the private words of its frames follow the rules of a fresh
    /// `alloc_pages_exact` block (the caller sets again what it keeps there).
    ///
    /// # Safety
    /// `block` and `nr` must be exactly what a previous `alloc_pages_exact` (or resize)
    /// returned and was asked for, not freed since; on `true` the caller does not touch
    /// frames past `new_nr` afterwards.
    unsafe fn resize_pages_exact(&self, block: PageBlock, nr: u64, new_nr: u64) -> bool {
        let _ = (block, nr, new_nr);
        false
    }

    /// Give back what [`alloc_pages_exact`](Self::alloc_pages_exact) returned.
    ///
    /// # Safety
    /// `block` and `nr` must be exactly what a previous `alloc_pages_exact` returned and was
    /// asked for, not freed since; the caller does not touch the frames afterwards.
    unsafe fn free_pages_exact(&self, block: PageBlock, nr: u64) {
        if let Some(order) = Order::for_pages(nr) {
            // SAFETY: the default `alloc_pages_exact` took exactly this block of `order`.
            unsafe { self.free_pages(block, order) };
        }
    }
}

/// A callback run after a grace period (Linux `rcu_callback_t`).
pub type RcuCallback = unsafe fn(NonNull<RcuHead>);

/// The two words `call_rcu` needs (Linux `struct rcu_head`), embedded in what is to be freed.
///
/// While a head is queued (from [`Rcu::call_rcu`] until its callback runs) both fields belong
/// to the kernel's RCU: `next` for chaining heads into its callback lists, `func` for the
/// callback it was given.
#[repr(C)]
#[derive(Debug)]
pub struct RcuHead {
    /// Link for the kernel's list of pending callbacks.
    pub next: Option<NonNull<RcuHead>>,
    /// The callback to run after the grace period.
    pub func: Option<RcuCallback>,
}

impl RcuHead {
    /// A head not queued anywhere.
    pub const fn new() -> Self {
        Self {
            next: None,
            func: None,
        }
    }
}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel's RCU, as the slab uses it: `call_rcu`.
///
/// # Safety
/// Implementors promise that for every [`call_rcu(head, func)`](Rcu::call_rcu), `func(head)`
/// is called exactly once, after every RCU read-side critical section that was running when
/// `call_rcu` was called has ended, and that they do not touch `head` after calling `func`.
/// The callback may run on any CPU, in any context where the page source may be called;
/// it takes no lock the caller of `call_rcu` might hold.
pub unsafe trait Rcu: Sync {
    /// Queue `func(head)` to run after a grace period (Linux `call_rcu`).
    ///
    /// # Safety
    /// `head` is valid for reads and writes until `func` is called, and is not queued
    /// already; `func` may be called with `head` on any CPU.
    unsafe fn call_rcu(&self, head: NonNull<RcuHead>, func: RcuCallback);
}
