//! Off-slab headers: a cache whose layout says `off_slab` keeps its slab headers in pages of
//! [`HEADER_RESERVE`]-byte slots, so the objects fill the whole slab. Slot 0 of each page holds
//! the page's metadata; free slots are linked through their first word. A header page's
//! private word is 0 (not slab memory), so a free of a pointer into it is refused.

use core::ptr::{self, NonNull};

use mmkit_addr::PAGE_SIZE;

use super::list::{list_push, list_unlink, Linked};
use crate::layout::HEADER_RESERVE;
use crate::page_source::PageBlock;

impl Linked for HeaderPage {
    unsafe fn links(p: *mut Self) -> (*mut *mut Self, *mut *mut Self) {
        // SAFETY: caller's contract; field projections of a live page's metadata.
        unsafe { (ptr::addr_of_mut!((*p).next), ptr::addr_of_mut!((*p).prev)) }
    }
}

/// Metadata of a header page, in its first slot.
#[repr(C)]
struct HeaderPage {
    next: *mut HeaderPage,
    prev: *mut HeaderPage,
    /// Free slots, linked through their first word.
    free: *mut u8,
    nr_free: usize,
    block: PageBlock,
    /// Whether the page is on the `partial` list (else on `full`).
    partial: bool,
}

static_assertions::const_assert!(core::mem::size_of::<HeaderPage>() <= HEADER_RESERVE);

/// Header slots per page (slot 0 holds the page's metadata).
pub(crate) const HEADERS_PER_PAGE: usize = PAGE_SIZE as usize / HEADER_RESERVE - 1;

/// A cache's off-slab slab headers: pages of [`HEADER_RESERVE`]-byte slots, on a partial list
/// (some slots free) or a full one. Lives inside the cache's header lock.
#[derive(Debug)]
pub(crate) struct HeaderPool {
    partial: *mut HeaderPage,
    full: *mut HeaderPage,
    /// Pages held.
    pub pages: usize,
    /// Slots handed out.
    pub used: usize,
    nr_partial: usize,
}

// SAFETY: the pointers are header pages owned by the pool; all access goes through the lock
// that wraps it.
unsafe impl Send for HeaderPool {}

impl HeaderPool {
    /// No pages.
    pub const fn new() -> Self {
        Self {
            partial: ptr::null_mut(),
            full: ptr::null_mut(),
            pages: 0,
            used: 0,
            nr_partial: 0,
        }
    }

    fn list(&mut self, partial: bool) -> &mut *mut HeaderPage {
        if partial {
            &mut self.partial
        } else {
            &mut self.full
        }
    }

    /// # Safety
    /// `p` is a page of this pool on no list.
    unsafe fn link(&mut self, p: *mut HeaderPage, partial: bool) {
        // SAFETY: `p` and the list's pages are pages of this pool (caller, lock held).
        unsafe {
            (*p).partial = partial;
            list_push(self.list(partial), p);
        }
        if partial {
            self.nr_partial += 1;
        }
    }

    /// # Safety
    /// `p` is a page of this pool on its list.
    unsafe fn unlink(&mut self, p: *mut HeaderPage) {
        // SAFETY: caller's contract; neighbours are pages of this pool.
        let partial = unsafe { (*p).partial };
        // SAFETY: as above: `p` is on the list `partial` names.
        unsafe { list_unlink(self.list(partial), p) };
        if partial {
            self.nr_partial -= 1;
        }
    }

    /// A free slot, if a page has one.
    pub fn take(&mut self) -> Option<NonNull<u8>> {
        let p = self.partial;
        if p.is_null() {
            return None;
        }
        // SAFETY: pages on the partial list are live pool pages with a free slot.
        unsafe {
            let slot = (*p).free;
            (*p).free = slot.cast::<*mut u8>().read();
            (*p).nr_free -= 1;
            if (*p).nr_free == 0 {
                self.unlink(p);
                self.link(p, false);
            }
            self.used += 1;
            NonNull::new(slot)
        }
    }

    /// Format `block` (one page from the cache's page source, private word cleared) as a
    /// header page and add it.
    ///
    /// # Safety
    /// `block` is an order-0 block owned by the caller and given to the pool.
    pub unsafe fn add_page(&mut self, block: PageBlock) {
        let base = block.ptr.as_ptr();
        let p = base.cast::<HeaderPage>();
        let mut free = ptr::null_mut();
        // SAFETY: the page is ours; every slot lies inside it.
        unsafe {
            for i in (1..=HEADERS_PER_PAGE).rev() {
                let slot = base.add(i * HEADER_RESERVE);
                slot.cast::<*mut u8>().write(free);
                free = slot;
            }
            p.write(HeaderPage {
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                free,
                nr_free: HEADERS_PER_PAGE,
                block,
                partial: true,
            });
            self.link(p, true);
        }
        self.pages += 1;
    }

    /// Give back a slot [`take`](Self::take) returned. Returns its page when the page is now
    /// unused and another page has free slots: the caller frees it.
    ///
    /// # Safety
    /// `slot` came from this pool's `take` and is not used afterwards.
    pub unsafe fn put(&mut self, slot: NonNull<u8>) -> Option<PageBlock> {
        let page = (slot.as_ptr() as usize & !(PAGE_SIZE as usize - 1)) as *mut HeaderPage;
        self.used -= 1;
        // SAFETY: `slot` lies in a live page of this pool, whose first slot is its metadata
        // (caller's contract); writing the link also wipes the header's magic.
        unsafe {
            slot.as_ptr().cast::<*mut u8>().write((*page).free);
            (*page).free = slot.as_ptr();
            (*page).nr_free += 1;
            if !(*page).partial {
                self.unlink(page);
                self.link(page, true);
            }
            if (*page).nr_free == HEADERS_PER_PAGE && self.nr_partial > 1 {
                self.unlink(page);
                self.pages -= 1;
                return Some((*page).block);
            }
        }
        None
    }

    /// Take a page with no slot in use off the pool (for shrink and cache destruction);
    /// `None` when every page hands out a slot.
    pub fn pop_empty_page(&mut self) -> Option<PageBlock> {
        let mut p = self.partial;
        // SAFETY: the partial list links live pages of this pool.
        unsafe {
            while !p.is_null() {
                if (*p).nr_free == HEADERS_PER_PAGE {
                    self.unlink(p);
                    self.pages -= 1;
                    return Some((*p).block);
                }
                p = (*p).next;
            }
        }
        None
    }
}
