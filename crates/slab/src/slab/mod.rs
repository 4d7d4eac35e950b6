//! Slab memory: slab headers, hardened freelists, the per-node slab lists, and every byte the
//! allocator reads or writes inside slab pages (free pointers, poison, red zones, owner
//! records). This module and its submodules are the crate's raw-memory code for slabs;
//! `percpu` is the other raw-memory module (the cache descriptor block and per-CPU arrays).
//! The cache paths reach slab memory only through the `unsafe fn`s here.
//!
//! | submodule | concept |
//! |---|---|
//! | this file | the slab header, [`SlabPtr`], [`SlabParams`], the private-word tags and [`lookup`], object byte helpers for kmalloc |
//! | `freelist` | hardened free pointers and formatting a fresh block as a slab ([`format_slab`]) |
//! | `node` | [`NodeLists`]: one node's partial and full lists, object alloc / free, the list scanner |
//! | `list` | the intrusive doubly linked list under node lists and header-pool lists |
//! | `detached` | [`DetachedList`] / [`DetachedSlab`]: slabs off every list, their release and the RCU hand-over |
//! | `header_pool` | [`HeaderPool`]: pages of off-slab headers |
//! | `debug` | poison, red zones, owner records: the debug-cache hooks and their checks |
//!
//! ## Invariants
//! * A slab is a block from the cache's page source laid out as `layout.rs` describes. Every
//!   frame's private word is `header address | PRIVATE_SLAB` from formatting until release.
//!   The header is the slab's last [`HEADER_RESERVE`] bytes, or, in an off-slab layout, a slot
//!   of a header page from the cache's [`HeaderPool`] (private word 0: not slab memory),
//!   returned to the pool when the slab is released.
//! * The header fields `magic`, `cache`, `base`, `first`, `pfn`, `objects`, `node` never
//!   change after formatting; `freelist`, `inuse`, `next`, `prev`, `list` change only under
//!   the lock of the slab's node (a `&mut NodeLists`) or while the slab is owned outright
//!   (`NewSlab`, a `DetachedList`); `rcu` belongs to the kernel's RCU from `call_rcu` until
//!   the callback.
//! * `inuse` counts objects not on the slab's freelist: objects held by callers *and* objects
//!   sitting in per-CPU arrays. A slab with `inuse > 0` is never released, so an object a
//!   caller owns keeps its slab (and header) alive.
//! * Freelist links are stored hardened (SLUB's `CONFIG_SLAB_FREELIST_HARDENED`):
//!   `next ^ cache_random ^ swap_bytes(address of the link)`.
//! * Every live slab is on exactly one list of the node its frames belong to: partial (some
//!   free objects, or empty and kept as one of the cache's `min_partial`) or full (no free
//!   objects). An empty slab taken off its list is released: its pages go back to the page
//!   source at once, or, in a `TYPESAFE_BY_RCU` cache, from an RCU callback after a grace
//!   period (its header, with the `RcuHead`, stays intact until then).
//!
//! A [`SlabPtr`] is only ever created for an initialised header and used while its slab is
//! live (see the `# Safety` of [`lookup`]); its methods read only the immutable fields.
//!
//! The header type and its fields are private to this module tree: the submodules share them,
//! the rest of the crate sees only [`SlabPtr`]'s accessors.

use core::ptr::{self, NonNull};

use mmkit_addr::Pfn;

use crate::error::FreeError;
use crate::layout::{SlabLayout, HEADER_RESERVE};
use crate::page_source::{PageSource, RcuHead};

mod debug;
mod detached;
mod freelist;
mod header_pool;
mod list;
mod node;

#[cfg(test)]
pub(crate) use self::debug::RED_ACTIVE;
pub(crate) use self::debug::{
    debug_check_free, debug_on_alloc, debug_on_free, read_track, verify_allocated_object,
};
pub(crate) use self::detached::{
    rcu_slab, rcu_slab_cache, release_slab, DetachedList, DetachedSlab,
};
pub(crate) use self::freelist::format_slab;
pub(crate) use self::header_pool::{HeaderPool, HEADERS_PER_PAGE};
pub(crate) use self::node::NodeLists;

/// Header magic: "mmkitSLB".
const SLAB_MAGIC: u64 = 0x6d6d_6b69_7453_4c42;
/// Low bits of a private word that say what the frame is.
pub(crate) const PRIVATE_TAG_MASK: u64 = 0x7;
/// Frame of a slab; the rest of the word is the header address.
pub(crate) const PRIVATE_SLAB: u64 = 0x1;
/// Head frame of a large kmalloc; bits 8.. hold the order.
pub(crate) const PRIVATE_LARGE: u64 = 0x2;

/// Which list a slab is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ListKind {
    Detached,
    Partial,
    Full,
}

#[repr(C)]
struct SlabHeader {
    magic: u64,
    cache: usize,
    next: *mut SlabHeader,
    prev: *mut SlabHeader,
    freelist: *mut u8,
    base: NonNull<u8>,
    first: NonNull<u8>,
    pfn: Pfn,
    objects: usize,
    inuse: usize,
    rcu: RcuHead,
    tag: u32,
    node: u16,
    list: ListKind,
}

static_assertions::const_assert!(core::mem::size_of::<SlabHeader>() <= HEADER_RESERVE);
static_assertions::const_assert!(HEADER_RESERVE % core::mem::align_of::<SlabHeader>() == 0);

/// What slab code needs to know about its cache; fixed at cache creation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabParams {
    /// Geometry.
    pub layout: SlabLayout,
    /// Freelist hardening secret.
    pub random: u64,
    /// Identity of the owning cache (its descriptor address), stored in every header.
    pub cache: usize,
    /// Constructor run once on every object when its slab is formatted.
    pub ctor: Option<fn(NonNull<u8>)>,
    /// Owner-defined tag copied into every header (kmalloc stores its class slot here).
    pub tag: u32,
}

/// A live, initialised slab header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlabPtr(NonNull<SlabHeader>);

impl SlabPtr {
    fn hdr(self) -> *mut SlabHeader {
        self.0.as_ptr()
    }

    /// The identity of the cache that owns this slab.
    pub fn cache_id(self) -> usize {
        // SAFETY: a SlabPtr points at a live initialised header (module invariant); `cache`
        // is immutable after formatting.
        unsafe { (*self.hdr()).cache }
    }

    /// The owner tag of the slab's cache.
    pub fn tag(self) -> u32 {
        // SAFETY: as in `cache_id`; `tag` is immutable.
        unsafe { (*self.hdr()).tag }
    }

    /// Index of `obj` in this slab, or why it is not the start of one of its objects.
    pub fn object_index(self, layout: &SlabLayout, obj: NonNull<u8>) -> Result<usize, FreeError> {
        // SAFETY: as in `cache_id`; `first` and `objects` are immutable.
        let (first, objects) = unsafe { ((*self.hdr()).first, (*self.hdr()).objects) };
        let off = (obj.as_ptr() as usize).wrapping_sub(first.as_ptr() as usize);
        if (obj.as_ptr() as usize) < first.as_ptr() as usize || off >= objects * layout.stride {
            return Err(FreeError::NotAnObject);
        }
        let index = layout.slot_of(off);
        if off != index * layout.stride {
            return Err(FreeError::Misaligned);
        }
        Ok(index)
    }

    fn object(self, layout: &SlabLayout, index: usize) -> NonNull<u8> {
        // SAFETY: as in `cache_id`; index < objects keeps the slot inside the slab.
        unsafe { (*self.hdr()).first.add(index * layout.stride) }
    }

    fn objects(self) -> usize {
        // SAFETY: as in `cache_id`.
        unsafe { (*self.hdr()).objects }
    }

    /// The node whose lists hold this slab.
    #[inline]
    pub fn node(self) -> usize {
        // SAFETY: as in `cache_id`; `node` is immutable.
        usize::from(unsafe { (*self.hdr()).node })
    }
}

/// What a frame's private word says about a pointer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PageKind {
    /// Not a slab frame or large-kmalloc head.
    Unknown,
    /// A frame of a slab.
    Slab(SlabPtr),
    /// The first frame of a large kmalloc of this many frames.
    Large(Pfn, u64),
}

/// Find what `ptr` belongs to through the page source's private word.
///
/// # Safety
/// If `ptr` lies in a slab, the slab must stay live while the returned [`SlabPtr`] is used:
/// the caller owns an allocated object of that slab (the contract of `free`/`kfree`), or holds
/// the owning cache's node lock with the slab listed.
#[inline(always)]
pub(crate) unsafe fn lookup<S: PageSource>(src: &S, ptr: NonNull<u8>) -> PageKind {
    let Some(pfn) = src.virt_to_pfn(ptr) else {
        return PageKind::Unknown;
    };
    let word = src.page_private(pfn);
    match word & PRIVATE_TAG_MASK {
        PRIVATE_SLAB => {
            let Some(hdr) = NonNull::new((word & !PRIVATE_TAG_MASK) as usize as *mut SlabHeader)
            else {
                return PageKind::Unknown;
            };
            // SAFETY: the page source promises the word is the one we stored on a live slab
            // frame: the header address. The caller keeps that slab live.
            if crate::HARDENED && unsafe { (*hdr.as_ptr()).magic } != SLAB_MAGIC {
                return PageKind::Unknown;
            }
            PageKind::Slab(SlabPtr(hdr))
        }
        PRIVATE_LARGE => match word >> 8 {
            0 => PageKind::Unknown,
            frames => PageKind::Large(pfn, frames),
        },
        _ => PageKind::Unknown,
    }
}

/// A formatted slab not yet on any list, owned by the caller.
#[derive(Debug)]
pub(crate) struct NewSlab(SlabPtr);

/// Zero `len` bytes at `obj`.
///
/// # Safety
/// The caller owns `[obj, obj + len)`.
pub(crate) unsafe fn zero_bytes(obj: NonNull<u8>, len: usize) {
    // SAFETY: caller's contract.
    unsafe { ptr::write_bytes(obj.as_ptr(), 0, len) };
}

/// Copy `len` bytes from `from` to `to`.
///
/// # Safety
/// The caller may read `[from, from + len)` and owns `[to, to + len)`; they do not overlap.
pub(crate) unsafe fn copy_bytes(from: NonNull<u8>, to: NonNull<u8>, len: usize) {
    // SAFETY: caller's contract.
    unsafe { ptr::copy_nonoverlapping(from.as_ptr(), to.as_ptr(), len) };
}
