//! Hardened free pointers and slab formatting. A free object's link to the next free object
//! is stored at `layout.fp_offset` as `next ^ cache_random ^ swap_bytes(address of the link)`
//! (SLUB's `CONFIG_SLAB_FREELIST_HARDENED`), so a leaked or overwritten link does not read as
//! a plain address. [`format_slab`] turns a fresh block into a slab: every object initialised
//! (red zones, owner record, constructor, poison) and linked, the header written, every
//! frame's private word pointed at the header.

use core::ptr::{self, NonNull};

use super::debug::{poison_object, RED_INACTIVE};
use super::{ListKind, NewSlab, SlabHeader, SlabParams, SlabPtr, PRIVATE_SLAB, SLAB_MAGIC};
use crate::page_source::{PageBlock, PageSource, RcuHead};

#[inline]
fn encode(params: &SlabParams, next: *mut u8, at: *mut u8) -> usize {
    (next as usize) ^ (params.random as usize) ^ (at as usize).swap_bytes()
}

/// Read the free pointer of free object `obj`.
///
/// # Safety
/// `obj` is a slot of a live slab of this cache, currently free.
#[inline]
pub(super) unsafe fn get_free_ptr(params: &SlabParams, obj: *mut u8) -> *mut u8 {
    // SAFETY: caller's contract: the slot is ours; `fp_offset + 8 <= stride` (layout).
    unsafe {
        let at = obj.add(params.layout.fp_offset);
        let stored = at.cast::<usize>().read_unaligned();
        (stored ^ (params.random as usize) ^ (at as usize).swap_bytes()) as *mut u8
    }
}

/// Write the free pointer of `obj`.
///
/// # Safety
/// As [`get_free_ptr`], and the caller is making `obj` free.
#[inline]
pub(super) unsafe fn set_free_ptr(params: &SlabParams, obj: *mut u8, next: *mut u8) {
    // SAFETY: caller's contract.
    unsafe {
        let at = obj.add(params.layout.fp_offset);
        at.cast::<usize>().write_unaligned(encode(params, next, at));
    }
}

/// Format a fresh block as a slab: header, constructors, debug patterns, freelist, private
/// words.
///
/// # Safety
/// `block` is a block of `params.layout.order` just allocated from `src` and owned by the
/// caller; for an off-slab layout, `off_slab_header` is a slot from the cache's
/// [`HeaderPool`](super::HeaderPool) owned by the caller, which the slab keeps until it is
/// released.
pub(crate) unsafe fn format_slab<S: PageSource>(
    src: &S,
    block: PageBlock,
    params: &SlabParams,
    colour: usize,
    node: usize,
    off_slab_header: Option<NonNull<u8>>,
) -> NewSlab {
    let l = &params.layout;
    let base = block.ptr;
    // SAFETY: the block is `slab_bytes` long and ours; the header offset and every slot
    // (with its left red zone) are inside it (layout invariants:
    // colour + lead + objects * stride <= header_offset, left_red_zone <= lead); an
    // off-slab header slot is `HEADER_RESERVE` bytes owned by the caller (contract).
    unsafe {
        let hdr = match off_slab_header {
            Some(h) if l.off_slab => h.cast::<SlabHeader>(),
            _ => base.add(l.header_offset()).cast::<SlabHeader>(),
        };
        let first = base.add(l.first_object_offset(colour));
        for i in 0..l.objects {
            let obj = first.as_ptr().add(i * l.stride);
            init_free_object_bytes(params, obj);
            let next = if i + 1 < l.objects {
                obj.add(l.stride)
            } else {
                ptr::null_mut()
            };
            set_free_ptr(params, obj, next);
        }
        hdr.as_ptr().write(SlabHeader {
            magic: SLAB_MAGIC,
            cache: params.cache,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            freelist: first.as_ptr(),
            base,
            first,
            pfn: block.pfn,
            objects: l.objects,
            inuse: 0,
            rcu: RcuHead::new(),
            tag: params.tag,
            node: node as u16,
            list: ListKind::Detached,
        });
        let word = hdr.as_ptr() as usize as u64 | PRIVATE_SLAB;
        for i in 0..l.order.pages() {
            if let Some(pfn) = block.pfn.checked_add_frames(i) {
                src.set_page_private(pfn, word);
            }
        }
        NewSlab(SlabPtr(hdr))
    }
}

/// Constructor, red zone, owner record and poison of a never-used object.
///
/// # Safety
/// `obj` is a slot of a slab being formatted by the caller.
unsafe fn init_free_object_bytes(params: &SlabParams, obj: *mut u8) {
    let l = &params.layout;
    // SAFETY: caller's contract; all offsets are inside the slot (layout).
    unsafe {
        if let Some((start, end)) = l.red_zone {
            ptr::write_bytes(obj.add(start), RED_INACTIVE, end - start);
            ptr::write_bytes(obj.sub(l.left_red_zone), RED_INACTIVE, l.left_red_zone);
        }
        if let Some(t) = l.track_offset {
            ptr::write_bytes(obj.add(t), 0, crate::layout::TRACK_BYTES);
        }
        if let Some(ctor) = params.ctor {
            ctor(NonNull::new_unchecked(obj));
        }
        if l.poison {
            poison_object(l, obj);
        }
    }
}
