//! Slab memory: slab headers, hardened freelists, the per-node slab lists, and every byte the
//! allocator reads or writes inside slab pages (free pointers, poison, red zones, owner
//! records). This is the crate's raw-memory module for slabs; `percpu.rs` is the other one
//! (the cache descriptor block and per-CPU arrays). Everything else is safe code.
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

use core::panic::Location;
use core::ptr::{self, NonNull};

use mmkit_addr::{Order, Pfn, PAGE_SIZE};

use crate::error::{FreeError, VerifyError};
use crate::layout::{SlabLayout, HEADER_RESERVE, MAX_OBJECTS_PER_SLAB};
use crate::page_source::{PageBlock, PageSource, RcuHead};

/// Header magic: "mmkitSLB".
const SLAB_MAGIC: u64 = 0x6d6d_6b69_7453_4c42;
/// Low bits of a private word that say what the frame is.
pub(crate) const PRIVATE_TAG_MASK: u64 = 0x7;
/// Frame of a slab; the rest of the word is the header address.
pub(crate) const PRIVATE_SLAB: u64 = 0x1;
/// Head frame of a large kmalloc; bits 8.. hold the order.
pub(crate) const PRIVATE_LARGE: u64 = 0x2;

/// Poison byte of a free object, and its last byte (Linux `POISON_FREE`, `POISON_END`).
pub(crate) const POISON_FREE: u8 = 0x6b;
/// Last byte of a poisoned object.
pub(crate) const POISON_END: u8 = 0xa5;
/// Red-zone byte while the object is allocated (Linux `SLUB_RED_ACTIVE`).
pub(crate) const RED_ACTIVE: u8 = 0xcc;
/// Red-zone byte while the object is free (Linux `SLUB_RED_INACTIVE`).
pub(crate) const RED_INACTIVE: u8 = 0xbb;

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
    /// The head frame of a large kmalloc of this order.
    Large(Pfn, Order),
}

/// Find what `ptr` belongs to through the page source's private word.
///
/// # Safety
/// If `ptr` lies in a slab, the slab must stay live while the returned [`SlabPtr`] is used:
/// the caller owns an allocated object of that slab (the contract of `free`/`kfree`), or holds
/// the owning cache's node lock with the slab listed.
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
            if unsafe { (*hdr.as_ptr()).magic } != SLAB_MAGIC {
                return PageKind::Unknown;
            }
            PageKind::Slab(SlabPtr(hdr))
        }
        PRIVATE_LARGE => match Order::checked((word >> 8) as u32) {
            Some(order) => PageKind::Large(pfn, order),
            None => PageKind::Unknown,
        },
        _ => PageKind::Unknown,
    }
}

/// A formatted slab not yet on any list, owned by the caller.
#[derive(Debug)]
pub(crate) struct NewSlab(SlabPtr);

/// A slab taken off every list; the caller owns its pages and must release them.
#[derive(Debug)]
pub(crate) struct DetachedSlab {
    block: PageBlock,
    order: Order,
    /// The off-slab header slot, to go back to the cache's [`HeaderPool`].
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

    fn push(&mut self, slab: SlabPtr) {
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
/// Returns the off-slab header slot, which the caller gives back to its [`HeaderPool`].
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

/// An element of a doubly linked intrusive list (slab headers on node lists, header pages on
/// pool lists): where its `next` and `prev` links are.
trait Linked: Sized {
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

impl Linked for HeaderPage {
    unsafe fn links(p: *mut Self) -> (*mut *mut Self, *mut *mut Self) {
        // SAFETY: caller's contract; field projections of a live page's metadata.
        unsafe { (ptr::addr_of_mut!((*p).next), ptr::addr_of_mut!((*p).prev)) }
    }
}

/// Put `p` at the front of the list starting at `head`.
///
/// # Safety
/// `p` and every element on the list are live and owned by the caller (under the lock that
/// guards the list); `p` is on no list.
unsafe fn list_push<T: Linked>(head: &mut *mut T, p: *mut T) {
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
unsafe fn list_unlink<T: Linked>(head: &mut *mut T, p: *mut T) {
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

    /// Take one page off an unused pool (for cache destruction); `None` when the pool has
    /// no pages or still hands out slots.
    pub fn pop_unused_page(&mut self) -> Option<PageBlock> {
        if self.used != 0 || self.partial.is_null() {
            return None;
        }
        let p = self.partial;
        // SAFETY: a live page of this pool.
        unsafe {
            self.unlink(p);
            self.pages -= 1;
            Some((*p).block)
        }
    }
}

#[inline]
fn encode(params: &SlabParams, next: *mut u8, at: *mut u8) -> usize {
    (next as usize) ^ (params.random as usize) ^ (at as usize).swap_bytes()
}

/// Read the free pointer of free object `obj`.
///
/// # Safety
/// `obj` is a slot of a live slab of this cache, currently free.
#[inline]
unsafe fn get_free_ptr(params: &SlabParams, obj: *mut u8) -> *mut u8 {
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
unsafe fn set_free_ptr(params: &SlabParams, obj: *mut u8, next: *mut u8) {
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
/// [`HeaderPool`] owned by the caller, which the slab keeps until it is released.
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

/// # Safety
/// `obj` is a slot owned by the caller.
unsafe fn poison_object(l: &SlabLayout, obj: *mut u8) {
    // SAFETY: caller's contract; `object_size >= 1`.
    unsafe {
        ptr::write_bytes(obj, POISON_FREE, l.object_size - 1);
        obj.add(l.object_size - 1).write(POISON_END);
    }
}

/// First byte of `[start, start + len)` that is not `byte`, as an offset.
///
/// # Safety
/// The range is readable and owned by the caller (or locked against change).
unsafe fn first_mismatch(start: *const u8, len: usize, byte: u8) -> Option<usize> {
    // SAFETY: caller's contract.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    bytes.iter().position(|&b| b != byte)
}

/// Debug hook on allocation: check and restore the poison (returns whether it was intact),
/// activate the red zone, record the owner.
///
/// # Safety
/// `obj` was just taken off a freelist of this cache by the caller.
pub(crate) unsafe fn debug_on_alloc(
    params: &SlabParams,
    obj: NonNull<u8>,
    owner: &'static Location<'static>,
) -> bool {
    let l = &params.layout;
    let p = obj.as_ptr();
    let mut intact = true;
    // SAFETY: caller's contract; offsets from the layout.
    unsafe {
        if l.poison {
            let body = first_mismatch(p, l.object_size - 1, POISON_FREE);
            if body.is_some() || p.add(l.object_size - 1).read() != POISON_END {
                intact = false;
                poison_object(l, p);
            }
        }
        if let Some((start, end)) = l.red_zone {
            let left = p.sub(l.left_red_zone);
            if first_mismatch(p.add(start), end - start, RED_INACTIVE).is_some()
                || first_mismatch(left, l.left_red_zone, RED_INACTIVE).is_some()
            {
                intact = false;
            }
            ptr::write_bytes(p.add(start), RED_ACTIVE, end - start);
            ptr::write_bytes(left, RED_ACTIVE, l.left_red_zone);
        }
        if let Some(t) = l.track_offset {
            write_track(params, p.add(t), owner);
        }
    }
    intact
}

/// Debug check on free: the red zone must be intact.
///
/// # Safety
/// `obj` is an allocated object of this cache (validated by the caller), owned by the caller.
pub(crate) unsafe fn debug_check_free(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Result<(), FreeError> {
    let l = &params.layout;
    if let Some((start, end)) = l.red_zone {
        // SAFETY: caller's contract; both zones belong to this object's slot layout.
        let (left, right) = unsafe {
            (
                first_mismatch(
                    obj.as_ptr().sub(l.left_red_zone),
                    l.left_red_zone,
                    RED_ACTIVE,
                ),
                first_mismatch(obj.as_ptr().add(start), end - start, RED_ACTIVE),
            )
        };
        if let Some(at) = left {
            return Err(FreeError::RedZoneCorrupted {
                offset: at as isize - l.left_red_zone as isize,
            });
        }
        if let Some(at) = right {
            return Err(FreeError::RedZoneCorrupted {
                offset: (start + at) as isize,
            });
        }
    }
    Ok(())
}

/// Debug hook on free (after [`debug_check_free`]): poison, deactivate the red zone, record
/// the freeing location.
///
/// # Safety
/// As [`debug_check_free`].
pub(crate) unsafe fn debug_on_free(
    params: &SlabParams,
    obj: NonNull<u8>,
    owner: &'static Location<'static>,
) {
    let l = &params.layout;
    let p = obj.as_ptr();
    // SAFETY: caller's contract.
    unsafe {
        if l.poison {
            poison_object(l, p);
        }
        if let Some((start, end)) = l.red_zone {
            ptr::write_bytes(p.add(start), RED_INACTIVE, end - start);
            ptr::write_bytes(p.sub(l.left_red_zone), RED_INACTIVE, l.left_red_zone);
        }
        if let Some(t) = l.track_offset {
            write_track(params, p.add(t), owner);
        }
    }
}

/// # Safety
/// `at` is the owner record of a slot the caller owns.
unsafe fn write_track(params: &SlabParams, at: *mut u8, owner: &'static Location<'static>) {
    let v = owner as *const Location<'static> as usize;
    // SAFETY: caller's contract; 16 bytes reserved.
    unsafe {
        at.cast::<usize>().write_unaligned(v);
        at.add(8)
            .cast::<usize>()
            .write_unaligned(v ^ params.random as usize);
    }
}

/// The last recorded owner (allocating or freeing location) of a slot, if the record is
/// intact.
///
/// # Safety
/// `obj` is a slot of a live slab of this cache with `STORE_USER`, and its record is not
/// being written concurrently.
pub(crate) unsafe fn read_track(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Option<&'static Location<'static>> {
    let t = params.layout.track_offset?;
    // SAFETY: caller's contract.
    let (v, check) = unsafe {
        let at = obj.as_ptr().add(t);
        (
            at.cast::<usize>().read_unaligned(),
            at.add(8).cast::<usize>().read_unaligned(),
        )
    };
    if v == 0 || v ^ params.random as usize != check {
        return None;
    }
    // SAFETY: the record is intact (its check word matches), so `v` was written by
    // `write_track` from a `&'static Location`.
    Some(unsafe { &*(v as *const Location<'static>) })
}

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

/// Poison and red zone of a free object.
///
/// # Safety
/// `obj` is a free slot of a listed slab; the node lock is held.
unsafe fn verify_free_object(params: &SlabParams, obj: NonNull<u8>) -> Result<(), VerifyError> {
    let l = &params.layout;
    let p = obj.as_ptr();
    // SAFETY: caller's contract.
    unsafe {
        if l.poison
            && (first_mismatch(p, l.object_size - 1, POISON_FREE).is_some()
                || p.add(l.object_size - 1).read() != POISON_END)
        {
            return Err(VerifyError::PoisonCorrupted);
        }
        if let Some((start, end)) = l.red_zone {
            if first_mismatch(p.add(start), end - start, RED_INACTIVE).is_some()
                || first_mismatch(p.sub(l.left_red_zone), l.left_red_zone, RED_INACTIVE).is_some()
            {
                return Err(VerifyError::RedZoneCorrupted);
            }
        }
    }
    Ok(())
}

/// Red zone of an allocated object.
///
/// # Safety
/// `obj` is an allocated slot of a listed slab (its red zone is not written concurrently).
pub(crate) unsafe fn verify_allocated_object(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Result<(), VerifyError> {
    let l = &params.layout;
    if let Some((start, end)) = l.red_zone {
        // SAFETY: caller's contract.
        let broken = unsafe {
            first_mismatch(obj.as_ptr().add(start), end - start, RED_ACTIVE).is_some()
                || first_mismatch(
                    obj.as_ptr().sub(l.left_red_zone),
                    l.left_red_zone,
                    RED_ACTIVE,
                )
                .is_some()
        };
        if broken {
            return Err(VerifyError::RedZoneCorrupted);
        }
    }
    Ok(())
}
