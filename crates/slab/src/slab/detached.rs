//! Detached slabs: slabs taken off every node list, owned outright by whoever holds them, on
//! their way back to the page source — at once ([`release_slab`]) or, in a
//! `TYPESAFE_BY_RCU` cache, through the kernel's RCU: [`DetachedList::pop_rcu`] hands out the
//! `RcuHead` embedded in the header, and the callback turns it back into the slab
//! ([`rcu_slab`], [`rcu_slab_cache`]).

use core::ptr::{self, NonNull};

use mmkit_addr::Order;

use super::{ListKind, SlabHeader, SlabPtr};
use crate::layout::SlabLayout;
use crate::page_source::{PageBlock, PageSource, RcuHead};

/// A slab taken off every list; the caller owns its pages and must release them.
#[derive(Debug)]
pub(crate) struct DetachedSlab {
    block: PageBlock,
    order: Order,
    /// The off-slab header slot, to go back to the cache's [`HeaderPool`](super::HeaderPool).
    header: Option<NonNull<u8>>,
}

/// Detached slabs chained through their headers.
#[derive(Debug)]
pub(crate) struct DetachedList {
    head: *mut SlabHeader,
    len: usize,
}

impl DetachedList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// Number of slabs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no slab.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push(&mut self, slab: SlabPtr) {
        // SAFETY: the slab was just unlinked from every node list; we own it.
        unsafe {
            (*slab.hdr()).list = ListKind::Detached;
            (*slab.hdr()).next = self.head;
        }
        self.head = slab.hdr();
        self.len += 1;
    }

    /// Take one slab to hand to RCU: the head embedded in its header. The header stays
    /// intact until [`rcu_slab`] turns the head back into the slab in the callback.
    pub fn pop_rcu(&mut self) -> Option<NonNull<RcuHead>> {
        let hdr = NonNull::new(self.head)?;
        // SAFETY: slabs on this list are owned by it and their headers are live.
        unsafe {
            self.head = (*hdr.as_ptr()).next;
            (*hdr.as_ptr()).rcu = RcuHead::new();
        }
        self.len -= 1;
        // SAFETY: a field of a live header.
        Some(unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*hdr.as_ptr()).rcu)) })
    }

    /// Take one slab.
    pub fn pop(&mut self, layout: &SlabLayout) -> Option<DetachedSlab> {
        let hdr = NonNull::new(self.head)?;
        // SAFETY: slabs on this list are owned by it and their headers are live.
        let (next, base, pfn) = unsafe {
            let h = hdr.as_ptr();
            ((*h).next, (*h).base, (*h).pfn)
        };
        self.head = next;
        self.len -= 1;
        Some(DetachedSlab {
            block: PageBlock { pfn, ptr: base },
            order: layout.order,
            header: layout.off_slab.then_some(hdr.cast()),
        })
    }
}

/// The cache identity and pages of the slab whose header embeds `head`.
///
/// # Safety
/// `head` came from [`DetachedList::pop_rcu`] and its RCU callback is running: the slab is
/// owned by the callback, its header intact.
pub(crate) unsafe fn rcu_slab(head: NonNull<RcuHead>, layout: &SlabLayout) -> DetachedSlab {
    let off = core::mem::offset_of!(SlabHeader, rcu);
    // SAFETY: `head` is the `rcu` field of a live header (caller's contract).
    let h = unsafe { head.as_ptr().byte_sub(off).cast::<SlabHeader>() };
    // SAFETY: as above.
    let (base, pfn) = unsafe { ((*h).base, (*h).pfn) };
    DetachedSlab {
        block: PageBlock { pfn, ptr: base },
        order: layout.order,
        // SAFETY: `h` is derived from a non-null head by a field offset.
        header: layout
            .off_slab
            .then(|| unsafe { NonNull::new_unchecked(h.cast::<u8>()) }),
    }
}

/// The cache identity stored in the header that embeds `head`.
///
/// # Safety
/// As [`rcu_slab`].
pub(crate) unsafe fn rcu_slab_cache(head: NonNull<RcuHead>) -> usize {
    let off = core::mem::offset_of!(SlabHeader, rcu);
    // SAFETY: caller's contract: `head` is the `rcu` field of a live header.
    unsafe { (*head.as_ptr().byte_sub(off).cast::<SlabHeader>()).cache }
}

/// Return a detached slab's pages to `src`: clear every frame's private word, then free.
/// Returns the off-slab header slot, which the caller gives back to its
/// [`HeaderPool`](super::HeaderPool).
///
/// # Safety
/// `src` must be the page source the slab was allocated from.
#[must_use]
pub(crate) unsafe fn release_slab<S: PageSource>(
    src: &S,
    slab: DetachedSlab,
) -> Option<NonNull<u8>> {
    for i in 0..slab.order.pages() {
        if let Some(pfn) = slab.block.pfn.checked_add_frames(i) {
            src.set_page_private(pfn, 0);
        }
    }
    // SAFETY: a DetachedSlab is the only owner of a block `src` handed out at this order
    // (caller's contract), and nothing refers to its memory any more (inuse was 0).
    unsafe { src.free_pages(slab.block, slab.order) };
    slab.header
}
