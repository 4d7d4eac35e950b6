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
//! The choice depends only on the layout, so `dealloc` (which gets the same layout) takes the
//! same path back. `realloc` uses `krealloc` when both sizes stay on the kmalloc path and the
//! alignment is kmalloc's minimum, which resizes in place when the size class allows.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use mmkit_addr::{IrqControl, Order, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit_buddy::GfpFlags;
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::PagingFormat;
use mmkit_slab::layout::MIN_ALIGN;
use mmkit_slab::KMALLOC_MAX_SIZE;
use spin::Once;

use crate::mm::Mm;
use crate::owner::PageUse;

/// An [`Mm`] installed at boot, usable as `#[global_allocator]`.
pub struct GlobalMm<P: IrqControl + 'static, F: PagingFormat + 'static = X86_64> {
    mm: Once<Mm<'static, P, F>>,
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
        let installed = self.mm.call_once(|| slot.take().expect("taken once"));
        match slot {
            Some(mm) => Err(mm),
            None => Ok(installed),
        }
    }

    /// The installed `Mm`, if any.
    pub fn get(&self) -> Option<&Mm<'static, P, F>> {
        self.mm.get()
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

    fn alloc_gfp(&self, layout: Layout, gfp: GfpFlags) -> *mut u8 {
        self.get()
            .and_then(|mm| mm.alloc_layout(layout, gfp))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    /// Allocate memory for `layout` the way [`GlobalMm`] does (module docs): kmalloc up to
    /// [`KMALLOC_MAX_SIZE`] with alignment up to a page, else a naturally aligned buddy
    /// block, else (beyond the largest order) a contiguous run of frames. `None` when no
    /// memory fits.
    pub fn alloc_layout(&self, layout: Layout, gfp: GfpFlags) -> Option<NonNull<u8>> {
        if on_kmalloc_path(&layout) {
            return self
                .kmalloc_aligned(layout.size(), layout.align(), gfp)
                .ok();
        }
        if let Some(n) = self.contig_pages(&layout) {
            return self.alloc_contig_layout(n, gfp);
        }
        let order = block_order(&layout)?;
        let pfn = self.alloc_pages(gfp, order).ok()?;
        let p = self.page_address(pfn, order);
        if p.is_none() {
            let _ = self.free_pages(pfn, order);
        }
        p
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
            let _ = self.pages.free_contig(pfn, n);
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
    /// # Safety
    /// `ptr` came from `alloc_layout(layout, _)` on this `Mm`, is live, and is not used
    /// afterwards.
    pub unsafe fn dealloc_layout(&self, ptr: NonNull<u8>, layout: Layout) {
        if on_kmalloc_path(&layout) {
            // SAFETY: the caller's promise: `ptr` is a live kmalloc allocation (the path
            // depends only on the layout) given up here.
            let freed = unsafe { self.kfree(ptr) };
            debug_assert!(freed.is_ok(), "kfree refused {ptr:p}: {freed:?}");
            return;
        }
        let pa = self
            .pages
            .map()
            .virt_to_phys(VirtAddr::from_ptr(ptr.as_ptr()));
        if let (Some(pa), Some(n)) = (pa, self.contig_pages(&layout)) {
            let freed = self.pages.free_contig(pa.pfn(), n);
            debug_assert!(freed.is_ok(), "free_contig refused {ptr:p}: {freed:?}");
            return;
        }
        if let (Some(pa), Some(order)) = (pa, block_order(&layout)) {
            let freed = self.free_pages(pa.pfn(), order);
            debug_assert!(freed.is_ok(), "free_pages refused {ptr:p}: {freed:?}");
        }
    }
}

// SAFETY: memory comes from kmalloc (objects at least `layout.size()` long, aligned as asked by
// `kmalloc_aligned`) or from naturally aligned buddy blocks of at least `max(size, align)`
// bytes; blocks are exclusively the caller's until `dealloc`, which takes the same path back
// because the path depends only on the layout. Failures return null.
unsafe impl<P: IrqControl, F: PagingFormat> GlobalAlloc for GlobalMm<P, F> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_gfp(layout, GfpFlags::KERNEL)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.alloc_gfp(layout, GfpFlags::KERNEL | GfpFlags::ZERO)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(mm), Some(p)) = (self.get(), NonNull::new(ptr)) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` came from `alloc` with this
            // layout (which is `alloc_layout`) and is not used again.
            unsafe { mm.dealloc_layout(p, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(mm) = self.get() else {
            return ptr::null_mut();
        };
        let new = Layout::from_size_align(new_size, layout.align());
        if let (Some(p), Ok(new)) = (NonNull::new(ptr), &new) {
            if on_kmalloc_path(&layout) && on_kmalloc_path(new) && layout.align() <= MIN_ALIGN {
                // SAFETY: `ptr` is a live kmalloc allocation of ours (same-layout rule), given
                // up on success; on failure it is untouched, as `realloc` requires.
                return unsafe { mm.krealloc(p, new_size, GfpFlags::KERNEL) }
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
            unsafe { self.dealloc_layout(ptr, layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
