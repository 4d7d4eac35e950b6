//! The intrusive doubly linked list under the node lists (slab headers) and the header-pool
//! lists (header pages): elements carry their own `next` / `prev` links, the list is a head
//! pointer, and every operation runs under the lock that guards the list.

use core::ptr;

use super::SlabHeader;

/// An element of a doubly linked intrusive list (slab headers on node lists, header pages on
/// pool lists): where its `next` and `prev` links are.
pub(super) trait Linked: Sized {
    /// The `next` and `prev` fields of `p`.
    ///
    /// # Safety
    /// `p` points at a live element.
    unsafe fn links(p: *mut Self) -> (*mut *mut Self, *mut *mut Self);
}

impl Linked for SlabHeader {
    unsafe fn links(p: *mut Self) -> (*mut *mut Self, *mut *mut Self) {
        // SAFETY: caller's contract; field projections of a live header.
        unsafe { (ptr::addr_of_mut!((*p).next), ptr::addr_of_mut!((*p).prev)) }
    }
}

/// Put `p` at the front of the list starting at `head`.
///
/// # Safety
/// `p` and every element on the list are live and owned by the caller (under the lock that
/// guards the list); `p` is on no list.
pub(super) unsafe fn list_push<T: Linked>(head: &mut *mut T, p: *mut T) {
    // SAFETY: caller's contract.
    unsafe {
        let (next, prev) = T::links(p);
        *prev = ptr::null_mut();
        *next = *head;
        if !head.is_null() {
            *T::links(*head).1 = p;
        }
    }
    *head = p;
}

/// Take `p` off the list starting at `head`.
///
/// # Safety
/// As [`list_push`], and `p` is on this list.
pub(super) unsafe fn list_unlink<T: Linked>(head: &mut *mut T, p: *mut T) {
    // SAFETY: caller's contract: `p` and its neighbours are live elements of this list.
    unsafe {
        let (next, prev) = T::links(p);
        let (n, pr) = (*next, *prev);
        if !n.is_null() {
            *T::links(n).1 = pr;
        }
        if pr.is_null() {
            *head = n;
        } else {
            *T::links(pr).0 = n;
        }
    }
}
