//! [`GlobalMm`]: the facade as a `#[global_allocator]`.
//!
//! A `static GlobalMm` starts empty (every allocation returns null, as a kernel allocator
//! before its memory is up) and is filled once at boot with [`GlobalMm::init`]. After that:
//!
//! * layouts up to [`KMALLOC_MAX_SIZE`] with alignment up to a page go to kmalloc (slab
//!   objects up to 8 KiB on the per-CPU fast path, page-backed blocks beyond);
//! * anything larger, or aligned beyond a page, takes a naturally aligned buddy block of the
//!   smallest order covering both size and alignment;
//! * beyond the buddy's largest order, a run of contiguous frames from
//!   `alloc_contig_pages` (Linux's gigantic-page path): a `Vec` may outgrow 4 MiB, as long as
//!   a free run of that size exists. The run is aligned to 2 MiB pageblocks, or to its own
//!   power-of-two size when the layout asks for more.
//!
//! `dealloc` does not trust the layout to find the block: a kmalloc object is freed by
//! `kfree` (which proves the pointer is one), a buddy block by the order in its head frame's
//! owner byte, a contiguous run by the length the owner table records for it. A layout that
//! disagrees with the allocation still frees it whole and is reported as
//! [`DeallocError::LayoutMismatch`]; a pointer that starts no live allocation (double free,
//! foreign, interior) frees nothing and is reported as [`DeallocError::NotAllocated`].
//! `GlobalAlloc::dealloc` cannot return an error, so it counts each one
//! ([`Mm::dealloc_errors`]) and calls the hook set with [`Mm::set_dealloc_hook`]; nothing in
//! this module panics, so nothing unwinds out of the allocator. `realloc` uses `krealloc`
//! when both sizes stay on the kmalloc path and the alignment is kmalloc's minimum, which
//! resizes in place when the size class allows.
//!
//! `GlobalAlloc` is implemented for [`Mm`] itself, so code holding a scoped `&Mm` can use it
//! as one; [`GlobalMm`] forwards to the `Mm` installed in it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use core::cell::UnsafeCell;
use mmkit_addr::{IrqControl, Order, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit_buddy::GfpFlags;
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::PagingFormat;
use mmkit_slab::layout::MIN_ALIGN;
use mmkit_slab::{KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_SIZE};

use spin::Once;

use crate::mm::Mm;
use crate::owner::PageUse;

/// An [`Mm`] installed at boot, usable as `#[global_allocator]`.
pub struct GlobalMm<P: IrqControl + 'static, F: PagingFormat + 'static = X86_64> {
    mm: Once<Installed<P, F>>,
}

/// The installed `Mm`, in a cell so that [`GlobalMm::verify_stopped`] can take it
/// exclusively; every other access is shared.
struct Installed<P: IrqControl + 'static, F: PagingFormat + 'static>(UnsafeCell<Mm<'static, P, F>>);

// SAFETY: all access but `verify_stopped`'s is through `&Mm`, which `Mm: Sync` allows from
// any thread; `verify_stopped`'s exclusive access is the caller's promise.
unsafe impl<P: IrqControl, F: PagingFormat> Sync for Installed<P, F> where Mm<'static, P, F>: Sync {}
// SAFETY: the cell owns the `Mm`; sending it sends the `Mm`.
unsafe impl<P: IrqControl, F: PagingFormat> Send for Installed<P, F> where Mm<'static, P, F>: Send {}

impl<P: IrqControl, F: PagingFormat> Installed<P, F> {
    fn shared(&self) -> &Mm<'static, P, F> {
        // SAFETY: only `verify_stopped` makes a `&mut`, and its caller promises no shared
        // reference is used meanwhile.
        unsafe { &*self.0.get() }
    }
}

impl<P: IrqControl, F: PagingFormat> core::fmt::Debug for GlobalMm<P, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GlobalMm")
            .field("initialised", &self.mm.is_completed())
            .finish()
    }
}

impl<P: IrqControl, F: PagingFormat> Default for GlobalMm<P, F> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a layout is served by kmalloc (else by whole buddy blocks).
fn on_kmalloc_path(layout: &Layout) -> bool {
    layout.size() <= KMALLOC_MAX_SIZE && layout.align() as u64 <= PAGE_SIZE
}

/// The buddy order for a layout off the kmalloc path.
fn block_order(layout: &Layout) -> Option<Order> {
    Order::for_bytes(layout.size().max(layout.align()) as u64)
}

/// Frames of the contiguous run for a layout beyond the buddy's largest order (`max_order`),
/// with `pageblock` frames per pageblock: the size in frames, or for an alignment beyond a
/// pageblock the power of two covering size and alignment (`alloc_contig_pages` aligns such
/// runs to their size). `None` for layouts the buddy serves as one block.
fn contig_pages(layout: &Layout, max_order: u32, pageblock: u64) -> Option<u64> {
    let order = block_order(layout)?;
    if order.get() <= max_order {
        return None;
    }
    let pages = (layout.size() as u64).div_ceil(PAGE_SIZE);
    let align = layout.align() as u64 / PAGE_SIZE;
    if align <= pageblock {
        Some(pages)
    } else {
        pages.max(align).checked_next_power_of_two()
    }
}

impl<P: IrqControl, F: PagingFormat> GlobalMm<P, F> {
    /// An empty global allocator: allocations fail (null) until [`init`](Self::init).
    pub const fn new() -> Self {
        Self { mm: Once::new() }
    }

    /// Install `mm`. Returns it back if one is installed already.
    #[allow(clippy::result_large_err)]
    pub fn init(&self, mm: Mm<'static, P, F>) -> Result<&Mm<'static, P, F>, Mm<'static, P, F>> {
        let mut slot = Some(mm);
        let installed = self
            .mm
            .call_once(|| Installed(UnsafeCell::new(slot.take().expect("taken once"))));
        match slot {
            Some(mm) => Err(mm),
            None => Ok(installed.shared()),
        }
    }

    /// The installed `Mm`, if any.
    pub fn get(&self) -> Option<&Mm<'static, P, F>> {
        self.mm.get().map(Installed::shared)
    }

    /// Run the full [`Mm::verify`] on the installed allocator; `None` if none is installed.
    ///
    /// # Safety
    /// Nothing else uses the allocator until this returns: no other CPU and no interrupt
    /// handler (a kernel calls it with the other CPUs stopped and interrupts off, as Linux's
    /// `stop_machine` runs its callback). References that [`get`](Self::get) or
    /// [`init`](Self::init) returned before the call are not used again: call `get` anew.
    pub unsafe fn verify_stopped(&self) -> Option<Result<(), crate::VerifyError>> {
        let cell = self.mm.get()?;
        // SAFETY: the caller's promise: this is the only access for the call.
        let mm = unsafe { &mut *cell.0.get() };
        Some(mm.verify())
    }

    /// Whether `ptr` points into memory this allocator manages (its kernel map reaches it).
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.get().is_some_and(|mm| {
            mm.page_allocator()
                .map()
                .virt_to_phys(VirtAddr::from_ptr(ptr))
                .is_some()
        })
    }
}

/// A misuse of the allocation interface found by [`Mm::dealloc_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeallocError {
    /// `addr` is not the start of a live allocation of this `Mm` (a double free, a pointer
    /// from another allocator, or one into the middle of a block). Nothing was freed.
    NotAllocated {
        /// The pointer given.
        addr: usize,
        /// The layout given.
        layout: Layout,
    },
    /// The allocation at `addr` was freed whole, but `layout` is not one it could have been
    /// allocated with: `block` says what it really was.
    LayoutMismatch {
        /// The pointer given.
        addr: usize,
        /// The layout given.
        layout: Layout,
        /// What the allocation was.
        block: AllocatedBlock,
    },
}

/// What an allocation of [`Mm::alloc_layout`] turned out to be, in a
/// [`DeallocError::LayoutMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatedBlock {
    /// A kmalloc allocation (`usable` bytes where the check ran, else 0).
    Kmalloc {
        /// Its usable size (`ksize`), 0 when not measured.
        usable: usize,
    },
    /// A buddy block of this order.
    Pages {
        /// The block order.
        order: Order,
    },
    /// A contiguous run of this many frames.
    Contig {
        /// Frames in the run.
        frames: u64,
    },
}

impl core::fmt::Display for DeallocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotAllocated { addr, layout } => write!(
                f,
                "dealloc of {addr:#x} ({} bytes, align {}): not a live allocation, nothing freed",
                layout.size(),
                layout.align()
            ),
            Self::LayoutMismatch {
                addr,
                layout,
                block,
            } => write!(
                f,
                "dealloc of {addr:#x} with {} bytes, align {}: allocated as {block:?}; freed whole",
                layout.size(),
                layout.align()
            ),
        }
    }
}

/// A function told about every [`DeallocError`] that [`GlobalAlloc::dealloc`] meets (it
/// cannot return an error). It runs in the caller's context, perhaps with interrupts off:
/// it must not allocate or free through the same allocator.
pub type DeallocHook = fn(&DeallocError);

/// Where `dealloc` reports what it found: a hook set once, and a count.
#[derive(Default)]
pub(crate) struct DeallocReport {
    hook: Once<DeallocHook>,
    errors: AtomicU64,
}

impl DeallocReport {
    fn report(&self, e: &DeallocError) {
        self.errors.fetch_add(1, Relaxed);
        if let Some(hook) = self.hook.get() {
            hook(e);
        }
    }
}

/// Which path a layout takes (module docs); `dealloc_layout` compares it with what the
/// pointer turns out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutPath {
    Kmalloc,
    Pages(Order),
    Contig(u64),
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    fn layout_path(&self, layout: &Layout) -> Option<LayoutPath> {
        if on_kmalloc_path(layout) {
            return Some(LayoutPath::Kmalloc);
        }
        if let Some(n) = self.contig_pages(layout) {
            return Some(LayoutPath::Contig(n));
        }
        block_order(layout).map(LayoutPath::Pages)
    }

    /// Allocate memory for `layout` the way [`GlobalMm`] does (module docs): kmalloc up to
    /// [`KMALLOC_MAX_SIZE`] with alignment up to a page, else a naturally aligned buddy
    /// block, else (beyond the largest order) a contiguous run of frames. `None` when no
    /// memory fits.
    pub fn alloc_layout(&self, layout: Layout, gfp: GfpFlags) -> Option<NonNull<u8>> {
        match self.layout_path(&layout)? {
            LayoutPath::Kmalloc => self
                .kmalloc_aligned(layout.size(), layout.align(), gfp)
                .ok(),
            LayoutPath::Contig(n) => self.alloc_contig_layout(n, gfp),
            LayoutPath::Pages(order) => {
                let pfn = self.alloc_pages(gfp, order).ok()?;
                let p = self.page_address(pfn, order);
                if p.is_none() {
                    let _ = self.free_pages(pfn, order);
                }
                p
            }
        }
    }

    fn contig_pages(&self, layout: &Layout) -> Option<u64> {
        let cfg = self.buddy().config();
        contig_pages(layout, cfg.max_order, 1u64 << cfg.pageblock_order)
    }

    /// A contiguous run of `n` frames for a layout beyond the largest buddy order.
    fn alloc_contig_layout(&self, n: u64, gfp: GfpFlags) -> Option<NonNull<u8>> {
        let pfn = self.pages.alloc_contig(n, gfp, PageUse::Pages).ok()?;
        let p = PhysRange::from_pfns(pfn, n)
            .ok()
            .and_then(|r| self.pages.map().phys_to_virt(r));
        let Some(p) = p else {
            let _ = self.pages.free_contig(pfn);
            return None;
        };
        if gfp.contains(GfpFlags::ZERO) {
            // SAFETY: the run was just allocated for us and the map makes all `n` frames
            // writable at `p`.
            unsafe { crate::raw::zero(p, (n * PAGE_SIZE) as usize) };
        }
        Some(p)
    }

    /// Free what [`alloc_layout`](Self::alloc_layout) returned.
    ///
    /// The block to free is found from the pointer, not the layout: a kmalloc object, a
    /// buddy block from its head frame's owner byte, a contiguous run from its recorded
    /// length. So a wrong layout never frees part of a block or the wrong kind of block; it
    /// frees the whole allocation and returns [`DeallocError::LayoutMismatch`]. A layout
    /// on the kmalloc path whose size or alignment disagrees with the object it names is
    /// found only in builds with debug assertions (it costs a `ksize`); every other mismatch
    /// is found in every build. A pointer that starts no live allocation is refused with
    /// [`DeallocError::NotAllocated`] and nothing changes.
    ///
    /// # Safety
    /// `ptr` came from `alloc_layout(layout, _)` on this `Mm`, is live, and is not used
    /// afterwards. A pointer that breaks this is detected (and so defined) when it is not a
    /// live allocation start; freeing someone else's live allocation is not detectable.
    pub unsafe fn dealloc_layout(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Result<(), DeallocError> {
        let addr = ptr.as_ptr() as usize;
        let expected = self.layout_path(&layout);
        let mismatch = |block| DeallocError::LayoutMismatch {
            addr,
            layout,
            block,
        };
        if expected == Some(LayoutPath::Kmalloc) {
            // SAFETY: the caller's promise; a pointer that is not a live kmalloc allocation
            // is refused by `kfree` and nothing changes, and the search below takes over.
            if let Some(done) = unsafe { self.kfree_layout(ptr, layout) } {
                return done;
            }
        }
        let not_allocated = DeallocError::NotAllocated { addr, layout };
        let pa = self
            .pages
            .map()
            .virt_to_phys(VirtAddr::from_ptr(ptr.as_ptr()))
            .ok_or(not_allocated)?;
        let pfn = pa.pfn();
        let page_start = pa.as_u64() % PAGE_SIZE == 0;
        if page_start {
            if let Some(frames) = self.pages.contig_len(pfn) {
                self.pages.free_contig(pfn).map_err(|_| not_allocated)?;
                return match expected {
                    Some(LayoutPath::Contig(n)) if n == frames => Ok(()),
                    _ => Err(mismatch(AllocatedBlock::Contig { frames })),
                };
            }
            if let Some(o) = self.pages.owner(pfn).filter(|o| o.usage == PageUse::Pages) {
                self.pages.free(pfn, o.order).map_err(|_| not_allocated)?;
                return match expected {
                    Some(LayoutPath::Pages(order)) if order == o.order => Ok(()),
                    _ => Err(mismatch(AllocatedBlock::Pages { order: o.order })),
                };
            }
        }
        if expected != Some(LayoutPath::Kmalloc) {
            // SAFETY: as above: `kfree` refuses what is not a live kmalloc allocation.
            if unsafe { self.kfree(ptr) }.is_ok() {
                return Err(mismatch(AllocatedBlock::Kmalloc { usable: 0 }));
            }
        }
        Err(not_allocated)
    }

    /// `kfree(ptr)` for a layout on the kmalloc path: `None` (nothing changed) when `ptr` is
    /// not a live kmalloc allocation, else the outcome. Builds with debug assertions also
    /// check the layout against the object freed (it costs a `ksize`).
    ///
    /// # Safety
    /// As [`dealloc_layout`](Self::dealloc_layout).
    #[inline(always)]
    unsafe fn kfree_layout(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Option<Result<(), DeallocError>> {
        #[cfg(debug_assertions)]
        // SAFETY: the caller's promise: `ptr` is a live allocation of ours; `ksize` only
        // reads metadata and refuses pointers that are not kmalloc objects.
        let usable = unsafe { self.ksize(ptr) }.ok();
        // SAFETY: as above; `kfree` refuses what is not a live kmalloc allocation.
        unsafe { self.kfree(ptr) }.ok()?;
        #[cfg(debug_assertions)]
        if let Some(usable) = usable {
            let addr = ptr.as_ptr() as usize;
            if usable < layout.size() || addr % layout.align() != 0 {
                return Some(Err(DeallocError::LayoutMismatch {
                    addr,
                    layout,
                    block: AllocatedBlock::Kmalloc { usable },
                }));
            }
        }
        let _ = layout;
        Some(Ok(()))
    }

    /// Tell `hook` about every [`DeallocError`] that [`GlobalAlloc::dealloc`] on this `Mm`
    /// (or on a [`GlobalMm`] holding it) meets. Set once; a second hook is returned.
    pub fn set_dealloc_hook(&self, hook: DeallocHook) -> Result<(), DeallocHook> {
        let mut set = false;
        self.dealloc_report.hook.call_once(|| {
            set = true;
            hook
        });
        if set {
            Ok(())
        } else {
            Err(hook)
        }
    }

    /// How many [`DeallocError`]s [`GlobalAlloc::dealloc`] has met on this `Mm`.
    pub fn dealloc_errors(&self) -> u64 {
        self.dealloc_report.errors.load(Relaxed)
    }
}

impl<P: IrqControl, F: PagingFormat> Mm<'_, P, F> {
    /// `GlobalAlloc::alloc` past the per-CPU fast path.
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> *mut u8 {
        self.alloc_layout(layout, GfpFlags::KERNEL)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    /// `GlobalAlloc::dealloc` past the fast path: the full search, errors reported.
    ///
    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract: `p` came from `alloc` with `layout` and is not
    /// used again.
    #[inline(never)]
    unsafe fn dealloc_slow(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract; `alloc` is `alloc_layout` with the same layout.
        if let Err(e) = unsafe { self.dealloc_layout(p, layout) } {
            self.dealloc_report.report(&e);
        }
    }
}

// SAFETY: memory comes from kmalloc (objects at least `layout.size()` long, aligned as asked by
// `kmalloc_aligned`), from naturally aligned buddy blocks of at least `max(size, align)` bytes,
// or from contiguous runs aligned as `alloc_contig_pages` promises; blocks are exclusively the
// caller's until `dealloc`, which finds the block from the pointer. Failures return null;
// nothing here panics (errors are values, reported through the dealloc hook).
unsafe impl<P: IrqControl, F: PagingFormat> GlobalAlloc for Mm<'_, P, F> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // The per-CPU fast path first: every kmalloc class is aligned to at least
        // `MIN_ALIGN`, and a pop needs no page-allocation context.
        if layout.align() <= MIN_ALIGN {
            if let Some(p) = self.kmalloc.kmalloc_cached(layout.size()) {
                return p.as_ptr();
            }
        }
        self.alloc_slow(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.alloc_layout(layout, GfpFlags::KERNEL | GfpFlags::ZERO)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else {
            return;
        };
        // A small layout is a kmalloc object if `kfree` takes it; anything `kfree` refuses
        // (it then changes nothing) goes through the full search.
        if layout.size() <= KMALLOC_MAX_CACHE_SIZE {
            // SAFETY: `GlobalAlloc::dealloc`'s contract; `kfree` refuses what is not a live
            // kmalloc allocation of ours.
            match unsafe { self.kfree_layout(p, layout) } {
                Some(Ok(())) => return,
                Some(Err(e)) => return self.dealloc_report.report(&e),
                None => {}
            }
        }
        // SAFETY: `GlobalAlloc::dealloc`'s contract.
        unsafe { self.dealloc_slow(p, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align());
        if let (Some(p), Ok(new)) = (NonNull::new(ptr), &new) {
            if on_kmalloc_path(&layout) && on_kmalloc_path(new) && layout.align() <= MIN_ALIGN {
                // SAFETY: `ptr` is a live kmalloc allocation of ours (same-layout rule), given
                // up on success; on failure it is untouched, as `realloc` requires.
                return unsafe { self.krealloc(p, new_size, GfpFlags::KERNEL) }
                    .map_or(ptr::null_mut(), NonNull::as_ptr);
            }
        }
        let Ok(new) = new else {
            return ptr::null_mut();
        };
        // SAFETY: `new` has non-zero size (`realloc`'s contract) and our alignment.
        let fresh = unsafe { self.alloc(new) };
        if !fresh.is_null() {
            // SAFETY: both blocks are live and distinct; we copy the smaller size.
            unsafe {
                ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

// SAFETY: forwarded to the installed `Mm`'s `GlobalAlloc` (above); before `init` every
// allocation fails with null and `dealloc` has nothing to free.
unsafe impl<P: IrqControl, F: PagingFormat> GlobalAlloc for GlobalMm<P, F> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.get() {
            // SAFETY: forwarded contract.
            Some(mm) => unsafe { mm.alloc(layout) },
            None => ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.get() {
            // SAFETY: forwarded contract.
            Some(mm) => unsafe { mm.alloc_zeroed(layout) },
            None => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(mm) = self.get() {
            // SAFETY: forwarded contract.
            unsafe { mm.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match self.get() {
            // SAFETY: forwarded contract.
            Some(mm) => unsafe { mm.realloc(ptr, layout, new_size) },
            None => ptr::null_mut(),
        }
    }
}

#[cfg(feature = "allocator-api2")]
// SAFETY: blocks come from `alloc_layout` (at least `layout.size()` bytes, aligned as asked,
// exclusively the caller's until deallocated) and go back through `dealloc_layout` with the
// same layout, which takes the same path. `&Mm` is `Copy`, so clones share one allocator.
unsafe impl<P: IrqControl, F: PagingFormat> allocator_api2::alloc::Allocator for Mm<'_, P, F> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if layout.size() == 0 {
            // A dangling, well-aligned pointer, as the trait allows for empty blocks.
            let dangling =
                NonNull::new(layout.align() as *mut u8).ok_or(allocator_api2::alloc::AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        let p = self
            .alloc_layout(layout, GfpFlags::KERNEL)
            .ok_or(allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: `Allocator::deallocate`'s contract: `ptr` is a live block from
            // `allocate` with this layout.
            if let Err(e) = unsafe { self.dealloc_layout(ptr, layout) } {
                self.dealloc_report.report(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_stopped_without_an_installed_mm_is_none() {
        let g: GlobalMm<mmkit_addr::host::HostCpus<1>> = GlobalMm::new();
        // SAFETY: nothing else uses `g`.
        assert!(unsafe { g.verify_stopped() }.is_none());
    }

    #[test]
    fn path_choice_depends_on_size_and_alignment() {
        assert!(on_kmalloc_path(&Layout::from_size_align(100, 8).unwrap()));
        assert!(on_kmalloc_path(
            &Layout::from_size_align(KMALLOC_MAX_SIZE, 4096).unwrap()
        ));
        assert!(!on_kmalloc_path(
            &Layout::from_size_align(64, 8192).unwrap()
        ));
        assert!(!on_kmalloc_path(
            &Layout::from_size_align(KMALLOC_MAX_SIZE + 1, 8).unwrap()
        ));
        let big = Layout::from_size_align(64, 16384).unwrap();
        assert_eq!(block_order(&big), Some(Order::new(2)));
    }
}
