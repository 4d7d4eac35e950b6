//! One node's slab lists (SLUB's `kmem_cache_node`): partial slabs (some free objects, or
//! empty and kept) and full slabs, with their counters. Objects are taken from the first
//! partial slab and returned to their own slab's freelist; a slab moves between the lists as
//! it fills and empties, and an empty one is detached for release. Lives inside the node lock:
//! every method runs with it held.

use core::ptr::{self, NonNull};

use super::debug::verify_free_object;
use super::detached::DetachedList;
use super::freelist::{get_free_ptr, set_free_ptr};
use super::list::{list_push, list_unlink};
use super::{ListKind, NewSlab, SlabHeader, SlabParams, SlabPtr, SLAB_MAGIC};
use crate::error::VerifyError;
use crate::layout::MAX_OBJECTS_PER_SLAB;

/// Totals found by [`NodeLists::verify`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VerifySummary {
    /// Objects not on any slab freelist (held by callers or per-CPU arrays).
    pub inuse: usize,
}

/// A cache's slab lists on one node; lives inside the node lock.
#[derive(Debug)]
pub(crate) struct NodeLists {
    partial: *mut SlabHeader,
    full: *mut SlabHeader,
    /// Slabs on the partial list (including kept empty ones).
    pub nr_partial: usize,
    /// Slabs on the full list.
    pub nr_full: usize,
    /// Empty slabs on the partial list.
    pub nr_empty: usize,
    /// Objects not on a freelist, over partial and full slabs.
    pub inuse: usize,
    /// Full magazines in this node's depot (see `percpu::Depots`); their objects count in
    /// `inuse`.
    pub depot_full: usize,
}

// SAFETY: the raw pointers are slab headers owned by the cache; all access goes through the
// node lock that wraps this value.
unsafe impl Send for NodeLists {}

impl NodeLists {
    /// No slabs.
    pub const fn new() -> Self {
        Self {
            partial: ptr::null_mut(),
            full: ptr::null_mut(),
            nr_partial: 0,
            nr_full: 0,
            nr_empty: 0,
            inuse: 0,
            depot_full: 0,
        }
    }

    /// Slabs on partial and full lists.
    pub fn nr_slabs(&self) -> usize {
        self.nr_partial + self.nr_full
    }

    fn head_mut(&mut self, kind: ListKind) -> &mut *mut SlabHeader {
        match kind {
            ListKind::Partial | ListKind::Detached => &mut self.partial,
            ListKind::Full => &mut self.full,
        }
    }

    fn count_mut(&mut self, kind: ListKind) -> &mut usize {
        match kind {
            ListKind::Partial | ListKind::Detached => &mut self.nr_partial,
            ListKind::Full => &mut self.nr_full,
        }
    }

    fn link(&mut self, slab: SlabPtr, kind: ListKind) {
        let h = slab.hdr();
        // SAFETY: `slab` and the list's headers are live headers of this node (lock held).
        unsafe {
            (*h).list = kind;
            list_push(self.head_mut(kind), h);
        }
        *self.count_mut(kind) += 1;
    }

    fn unlink(&mut self, slab: SlabPtr) {
        let h = slab.hdr();
        // SAFETY: `slab` is on one of this node's lists (lock held); its neighbours are too.
        let kind = unsafe { (*h).list };
        debug_assert!(kind != ListKind::Detached, "unlink of a slab on no list");
        // SAFETY: as above: `h` is on the list `kind` names.
        unsafe {
            list_unlink(self.head_mut(kind), h);
            (*h).list = ListKind::Detached;
        }
        *self.count_mut(kind) -= 1;
    }

    /// Put a freshly formatted slab on the partial list.
    pub fn add_new_slab(&mut self, slab: NewSlab) {
        self.link(slab.0, ListKind::Partial);
        self.nr_empty += 1;
    }

    /// Take one free object from the first partial slab.
    pub fn alloc_object(&mut self, params: &SlabParams) -> Option<NonNull<u8>> {
        let slab = SlabPtr(NonNull::new(self.partial)?);
        let h = slab.hdr();
        // SAFETY: partial slabs have a non-empty freelist of free slots of this cache.
        let (obj, next, was_empty, now_full) = unsafe {
            let obj = (*h).freelist;
            let next = get_free_ptr(params, obj);
            (*h).freelist = next;
            let was_empty = (*h).inuse == 0;
            (*h).inuse += 1;
            (obj, next, was_empty, next.is_null())
        };
        let _ = next;
        self.inuse += 1;
        if was_empty {
            self.nr_empty -= 1;
        }
        if now_full {
            self.unlink(slab);
            self.link(slab, ListKind::Full);
        }
        NonNull::new(obj)
    }

    /// Put `obj` back on its slab's freelist; returns whether the slab is now empty.
    ///
    /// # Safety
    /// `slab` is on this node's partial or full list, and `obj` is one of its objects that is
    /// not on its freelist (validated by [`SlabPtr::object_index`] and, where the cache can,
    /// a double-free check); the caller gives up `obj`.
    pub unsafe fn free_object(
        &mut self,
        params: &SlabParams,
        slab: SlabPtr,
        obj: NonNull<u8>,
    ) -> bool {
        let h = slab.hdr();
        // SAFETY: caller's contract.
        let (was_full, empty) = unsafe {
            set_free_ptr(params, obj.as_ptr(), (*h).freelist);
            let was_full = (*h).freelist.is_null();
            (*h).freelist = obj.as_ptr();
            (*h).inuse -= 1;
            (was_full, (*h).inuse == 0)
        };
        self.inuse -= 1;
        if was_full {
            self.unlink(slab);
            self.link(slab, ListKind::Partial);
        }
        if empty {
            self.nr_empty += 1;
        }
        empty
    }

    /// Whether `obj` is on `slab`'s freelist (the SLUB `on_freelist` walk). Also stops at a
    /// corrupt link, reporting `true` so the free is refused.
    ///
    /// # Safety
    /// `slab` is on this node's lists.
    pub unsafe fn on_freelist(&self, params: &SlabParams, slab: SlabPtr, obj: NonNull<u8>) -> bool {
        // SAFETY: caller's contract: the freelist belongs to a live slab under our lock.
        let mut cur = unsafe { (*slab.hdr()).freelist };
        let mut steps = 0;
        while let Some(c) = NonNull::new(cur) {
            if c == obj || steps > slab.objects() || slab.object_index(&params.layout, c).is_err() {
                return true;
            }
            // SAFETY: `c` is a valid free slot of this slab (checked just above).
            cur = unsafe { get_free_ptr(params, c.as_ptr()) };
            steps += 1;
        }
        false
    }

    /// Detach one empty slab from the partial list for release.
    ///
    /// # Safety
    /// `slab` is on this node's partial list with `inuse == 0`.
    pub unsafe fn detach_empty(&mut self, slab: SlabPtr, out: &mut DetachedList) {
        self.unlink(slab);
        self.nr_empty -= 1;
        out.push(slab);
    }

    /// Detach empty slabs from the partial list until at most `keep` empty ones remain.
    pub fn shrink_empty(&mut self, keep: usize, out: &mut DetachedList) {
        let mut cur = self.partial;
        while self.nr_empty > keep {
            let Some(h) = NonNull::new(cur) else { break };
            let slab = SlabPtr(h);
            // SAFETY: `h` is on our partial list (lock held).
            let (next, empty) = unsafe { ((*h.as_ptr()).next, (*h.as_ptr()).inuse == 0) };
            if empty {
                // SAFETY: on the partial list and empty.
                unsafe { self.detach_empty(slab, out) };
            }
            cur = next;
        }
    }

    /// Call `f` on every object not on a freelist (allocated or in a per-CPU array).
    pub fn for_each_inuse(&self, params: &SlabParams, mut f: impl FnMut(NonNull<u8>)) {
        let mut seen = [0u64; MAX_OBJECTS_PER_SLAB / 64];
        for head in [self.partial, self.full] {
            let mut cur = head;
            while let Some(h) = NonNull::new(cur) {
                let slab = SlabPtr(h);
                seen.fill(0);
                // SAFETY: listed slab, lock held by our `&self` borrow of the guard.
                let mut fp = unsafe { (*h.as_ptr()).freelist };
                while let Some(o) = NonNull::new(fp) {
                    let Ok(i) = slab.object_index(&params.layout, o) else {
                        break;
                    };
                    if seen[i / 64] & (1 << (i % 64)) != 0 {
                        break;
                    }
                    seen[i / 64] |= 1 << (i % 64);
                    // SAFETY: `o` is a free slot of this slab.
                    fp = unsafe { get_free_ptr(params, o.as_ptr()) };
                }
                for i in 0..slab.objects() {
                    if seen[i / 64] & (1 << (i % 64)) == 0 {
                        f(slab.object(&params.layout, i));
                    }
                }
                // SAFETY: as above.
                cur = unsafe { (*h.as_ptr()).next };
            }
        }
    }

    /// Whether no slab of this node has an object in use.
    pub fn is_idle(&self) -> bool {
        self.inuse == 0 && self.nr_full == 0
    }

    /// Check every invariant of the lists, the slabs on them and their free objects; `node`
    /// is this node's id, which every listed slab must carry.
    pub fn verify(&self, params: &SlabParams, node: usize) -> Result<VerifySummary, VerifyError> {
        let l = &params.layout;
        let mut seen = [0u64; MAX_OBJECTS_PER_SLAB / 64];
        let mut inuse = 0;
        let mut empty = 0;
        for (head, kind, count) in [
            (self.partial, ListKind::Partial, self.nr_partial),
            (self.full, ListKind::Full, self.nr_full),
        ] {
            let mut n = 0;
            let mut prev: *mut SlabHeader = ptr::null_mut();
            let mut cur = head;
            while let Some(h) = NonNull::new(cur) {
                let slab = SlabPtr(h);
                // SAFETY: listed slabs are live; we hold the node lock.
                let hd = unsafe { &*h.as_ptr() };
                if hd.magic != SLAB_MAGIC || hd.cache != params.cache {
                    return Err(VerifyError::BadHeader);
                }
                if hd.list != kind || hd.prev != prev || usize::from(hd.node) != node {
                    return Err(VerifyError::ListCorrupt);
                }
                if hd.objects != l.objects || hd.inuse > hd.objects {
                    return Err(VerifyError::CountMismatch);
                }
                seen.fill(0);
                let mut free = 0;
                let mut fp = hd.freelist;
                while let Some(o) = NonNull::new(fp) {
                    let i = slab
                        .object_index(l, o)
                        .map_err(|_| VerifyError::FreelistCorrupt)?;
                    if seen[i / 64] & (1 << (i % 64)) != 0 {
                        return Err(VerifyError::FreelistCorrupt);
                    }
                    seen[i / 64] |= 1 << (i % 64);
                    free += 1;
                    // SAFETY: `o` is a free slot of this slab (just checked).
                    unsafe { verify_free_object(params, o)? };
                    // SAFETY: as above.
                    fp = unsafe { get_free_ptr(params, o.as_ptr()) };
                }
                if free + hd.inuse != hd.objects {
                    return Err(VerifyError::CountMismatch);
                }
                match kind {
                    ListKind::Full if hd.inuse != hd.objects => return Err(VerifyError::WrongList),
                    ListKind::Partial if hd.inuse == hd.objects => {
                        return Err(VerifyError::WrongList)
                    }
                    _ => {}
                }
                inuse += hd.inuse;
                if hd.inuse == 0 {
                    empty += 1;
                }
                n += 1;
                prev = cur;
                cur = hd.next;
            }
            if n != count {
                return Err(VerifyError::CountMismatch);
            }
        }
        if inuse != self.inuse || empty != self.nr_empty {
            return Err(VerifyError::CountMismatch);
        }
        Ok(VerifySummary { inuse })
    }
}
