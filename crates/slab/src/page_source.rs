//! What the slab needs from the page allocator, and from RCU.
//!
//! The slab gets memory only through [`PageSource`]: naturally aligned blocks of 2^order
//! frames (slabs are order 0..=3, large kmalloc blocks any order the source supports), a
//! kernel virtual address for each block, and one *private word* per allocated frame. The
//! private word is how `kfree(ptr)` and `ksize(ptr)` get from an arbitrary pointer to its slab
//! (or to the order of a large allocation), as Linux stores `page->slab_cache` in `struct page`:
//!
//! * every frame of a slab holds `address of the slab header | PRIVATE_SLAB`;
//! * the head frame of a large kmalloc holds `order << 8 | PRIVATE_LARGE`; its tail frames 0.
//!
//! The buddy allocator (mmkit-buddy) implements this trait from its page descriptors; the
//! `testing` feature has a host implementation over `mmkit_addr::host::HostMemory`.
//!
//! [`GracePeriod`] is the kernel's RCU, in the polled form Linux offers as
//! `get_state_synchronize_rcu()` / `poll_state_synchronize_rcu()`: a `TYPESAFE_BY_RCU` cache
//! parks an emptied slab with a cookie and returns its pages only once the cookie's grace
//! period has elapsed.

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
/// * All methods may be called concurrently from several CPUs.
pub unsafe trait PageSource: Sync {
    /// Allocate a naturally aligned block of `2^order` frames. `gfp` carries mobility and zone
    /// hints ([`Gfp::RECLAIMABLE`], [`Gfp::DMA`]); the slab never passes [`Gfp::ZERO`].
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
}

/// The kernel's RCU, polled: enough for `TYPESAFE_BY_RCU` caches to defer freeing slab pages.
///
/// # Safety
/// When [`elapsed`](GracePeriod::elapsed) returns `true` for a cookie from
/// [`snapshot`](GracePeriod::snapshot), every RCU read-side critical section that was running
/// when `snapshot` was called has ended.
pub unsafe trait GracePeriod: Sync {
    /// A cookie for "a grace period starting now" (`get_state_synchronize_rcu`).
    fn snapshot(&self) -> u64;

    /// Whether the grace period of `cookie` has elapsed (`poll_state_synchronize_rcu`).
    fn elapsed(&self, cookie: u64) -> bool;
}
