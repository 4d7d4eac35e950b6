//! vmalloc: virtually contiguous kernel memory from scattered frames (Linux `mm/vmalloc.c`).
//!
//! The kernel page table (created at boot from buddy frames, in the format the builder was
//! given) serves a fixed virtual window. An area of `n` pages takes `n + 1` consecutive
//! window slots: the pages, then one **guard page** that stays unmapped, so running off the
//! end of an area faults instead of corrupting the next one.
//!
//! ## Bookkeeping without a heap
//! Three bitmaps over the window's slots, carved from bootmem at boot:
//! * `used`: the slot belongs to an area (its pages or its guard);
//! * `starts`: the slot is the first of an area — `vfree(va)` accepts only these;
//! * `borrowed`: the area maps frames its caller owns (`vmap`), so `vunmap` must be used and
//!   the frames are not freed.
//!
//! An area's length is the run of used slots from its start up to the next start or unused
//! slot; its last slot is the guard. Allocation is first fit.
//!
//! ## TLB maintenance
//! Every call that changes the table takes the kernel's [`TlbInvalidate`] and invalidates
//! before returning; on `vfree`, pages and emptied tables go back to the buddy only after the
//! invalidation (the page-table layer's token order: unhook → invalidate → free). Teardown is
//! batched [`VFREE_BATCH`] pages per invalidation, as Linux purges lazily in batches.
//!
//! ## Movable areas
//! [`Mm::vmalloc_movable`] areas (`movable.rs`) are vmalloc areas whose pages the facade's
//! mover may migrate at any time, under the vmalloc lock. `vfree` serves both kinds: it
//! takes the area's start bit first (the area is dying: a second `vfree` is refused, its
//! slots stay used), unmaps batch by batch, and a page the buddy refuses to free because it is
//! migrating is freed once the migration ends, waited for with the lock dropped.
//!
//! ## Locking
//! One spin lock over the table and the bitmaps. Lock order: vmalloc lock, then the buddy's
//! per-CPU and zone locks (page allocations happen under it). The table is the kernel's, so
//! [`Mm::with_page_table`] takes the same lock. The `tlb` passed to each call is used with the
//! lock held.

use core::fmt;

use mmkit_addr::{IrqControl, Order, Pfn, PhysAddr, VirtAddr, VirtRange, PAGE_SHIFT};
use mmkit_bootmem::Bootmem;
use mmkit_buddy::{GfpFlags, MigrateType};
use mmkit_pgtable::{
    Attrs, Flush, MapError, MapSize, PageTable, PagingFormat, TlbInvalidate, UnmapError,
};
use spin::Mutex;

use crate::builder::BootError;
use crate::frame_source::TableFrames;
use crate::map::{KernelMap, MapRef};
use crate::mm::Mm;
use crate::owner::PageUse;
use crate::pages::PageAllocator;
use crate::raw::{boot_slice, fill, MetaLog};

/// Pages unmapped per TLB invalidation in `vfree` / `vunmap`.
pub const VFREE_BATCH: usize = 32;

/// The kernel page table as the facade keeps it.
pub type KernelPageTable<'m, P, F> = PageTable<F, MapRef<'m>, TableFrames<'m, P>>;

/// Why a vmalloc or vmap failed. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmallocError {
    /// The `Mm` was built without a vmalloc window.
    NoVmallocArea,
    /// Zero bytes (or no frames) asked for.
    ZeroSize,
    /// No run of free window slots is long enough (area plus guard page).
    NoVirtualSpace,
    /// [`Mm::vmalloc_movable`] before [`Mm::enable_movable`].
    MovableNotEnabled,
    /// The buddy had no page.
    OutOfMemory,
    /// A frame given to `vmap` is not a granule-aligned frame.
    BadFrame(Pfn),
    /// The page table refused a mapping.
    Map(MapError),
}

/// Why a vfree or vunmap was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfreeError {
    /// The `Mm` was built without a vmalloc window.
    NoVmallocArea,
    /// The address is not the start of a live area.
    NotAnArea(VirtAddr),
    /// `vfree` on a `vmap` area, or `vunmap` on a `vmalloc` area.
    WrongKind(VirtAddr),
    /// The page table refused to unmap (it could not split a mapping).
    Unmap(UnmapError),
}

impl fmt::Display for VmallocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for VfreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The slot bitmaps (module docs).
pub(crate) struct VmallocSpace<'m> {
    used: &'m mut [u64],
    starts: &'m mut [u64],
    borrowed: &'m mut [u64],
    slots: usize,
}

fn bit(map: &[u64], i: usize) -> bool {
    map[i / 64] & (1 << (i % 64)) != 0
}

fn set(map: &mut [u64], i: usize, on: bool) {
    if on {
        map[i / 64] |= 1 << (i % 64);
    } else {
        map[i / 64] &= !(1 << (i % 64));
    }
}

impl<'m> VmallocSpace<'m> {
    /// Check `window` against `fmt` and carve the bitmaps from bootmem.
    pub(crate) fn carve<F: PagingFormat>(
        bm: &mut Bootmem<'m>,
        map: &'m dyn KernelMap,
        log: &mut MetaLog,
        fmt: &F,
        window: VirtRange,
    ) -> Result<Self, BootError> {
        let unit = fmt.granule().bytes();
        let last = window.end().as_u64().wrapping_sub(1);
        if window.is_empty()
            || !window.is_aligned(unit)
            || !fmt.is_canonical(window.start())
            || !fmt.is_canonical(VirtAddr::new(last))
        {
            return Err(BootError::BadVmallocRange(window));
        }
        let slots =
            usize::try_from(window.len() / unit).map_err(|_| BootError::MetadataTooLarge)?;
        let words = slots.div_ceil(64);
        let carve = |bm: &mut Bootmem<'m>, log: &mut MetaLog| -> Result<&'m mut [u64], BootError> {
            Ok(fill(boot_slice::<u64>(bm, map, log, words, None)?, |_| 0))
        };
        Ok(Self {
            used: carve(bm, log)?,
            starts: carve(bm, log)?,
            borrowed: carve(bm, log)?,
            slots,
        })
    }

    /// First fit for `n` slots; returns the first slot.
    fn find(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        let mut i = 0;
        while i < self.slots {
            if i % 64 == 0 && self.used[i / 64] == u64::MAX {
                run = 0;
                i += 64;
                continue;
            }
            if bit(self.used, i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
            i += 1;
        }
        None
    }

    fn claim(&mut self, first: usize, n: usize, borrowed: bool) {
        for i in first..first + n {
            set(self.used, i, true);
        }
        set(self.starts, first, true);
        set(self.borrowed, first, borrowed);
    }

    /// Slots of the area starting at `first`, guard included: its pages, which `mapped`
    /// says are mapped, and the unmapped guard slot after them. The guard ends the area even
    /// where the next slots are used and no start: an area being freed on another CPU, which
    /// gave up the lock to wait for a migration, has cleared its start but not yet released
    /// its slots.
    fn area_slots(&self, first: usize, mapped: impl Fn(usize) -> bool) -> Option<usize> {
        if first >= self.slots || !bit(self.starts, first) {
            return None;
        }
        let mut n = 1;
        while first + n < self.slots
            && bit(self.used, first + n)
            && !bit(self.starts, first + n)
            && mapped(first + n - 1)
        {
            n += 1;
        }
        Some(n)
    }

    fn release(&mut self, first: usize, n: usize) {
        for i in first..first + n {
            set(self.used, i, false);
        }
        set(self.starts, first, false);
        set(self.borrowed, first, false);
    }

    fn used_slots(&self) -> u64 {
        self.used.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn areas(&self) -> u64 {
        self.starts.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

pub(crate) struct Inner<'m, P: IrqControl, F: PagingFormat> {
    pub(crate) pt: KernelPageTable<'m, P, F>,
    space: VmallocSpace<'m>,
    /// Frames mapped by vmalloc areas (not vmap).
    backed: u64,
}

/// The vmalloc window and the kernel page table. Lives in boot memory for `'m` (the builder
/// places it there), so the movable-page mover (`movable.rs`) can refer to it.
pub struct Vmalloc<'m, P: IrqControl, F: PagingFormat> {
    pub(crate) inner: Mutex<Inner<'m, P, F>>,
    pub(crate) pages: &'m PageAllocator<'m, P>,
    pub(crate) window: VirtRange,
    pub(crate) unit: u64,
    pub(crate) order: Order,
    /// The facade's mover, once [`Mm::enable_movable`] registered it.
    pub(crate) movable: spin::Once<crate::movable::MovableState<'m>>,
}

impl<'m, P: IrqControl, F: PagingFormat> Vmalloc<'m, P, F> {
    pub(crate) fn new(
        pages: &'m PageAllocator<'m, P>,
        fmt: F,
        window: VirtRange,
        space: VmallocSpace<'m>,
    ) -> Result<Self, BootError> {
        let unit = fmt.granule().bytes();
        let order = Order::new(fmt.granule().shift() - PAGE_SHIFT);
        let pt = PageTable::new(fmt, MapRef(pages.map), TableFrames(pages))
            .map_err(BootError::PageTable)?;
        Ok(Self {
            inner: Mutex::new(Inner {
                pt,
                space,
                backed: 0,
            }),
            pages,
            window,
            unit,
            order,
            movable: spin::Once::new(),
        })
    }

    pub(crate) fn va_of(&self, slot: usize) -> VirtAddr {
        VirtAddr::new(self.window.start().as_u64() + slot as u64 * self.unit)
    }

    pub(crate) fn slot_of(&self, va: VirtAddr) -> Option<usize> {
        if !self.window.contains(va) || !va.is_aligned(self.unit) {
            return None;
        }
        usize::try_from((va.as_u64() - self.window.start().as_u64()) / self.unit).ok()
    }

    /// Map `n` pages at `first`, page `i` (at `va`) to the frame `frame(i, va)` returns; on
    /// failure undo everything. Returns the area's start.
    pub(crate) fn map_area<T: TlbInvalidate + ?Sized>(
        &self,
        inner: &mut Inner<'m, P, F>,
        n: usize,
        attrs: Attrs,
        tlb: &mut T,
        borrowed: bool,
        mut frame: impl FnMut(usize, VirtAddr) -> Result<PhysAddr, VmallocError>,
    ) -> Result<VirtAddr, VmallocError> {
        let first = inner
            .space
            .find(n + 1)
            .ok_or(VmallocError::NoVirtualSpace)?;
        inner.space.claim(first, n + 1, borrowed);
        let mut done = 0;
        let mut failure = None;
        let mut flush: Option<Flush> = None;
        for i in 0..n {
            let va = self.va_of(first + i);
            let pa = match frame(i, va) {
                Ok(pa) => pa,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            match inner.pt.map(
                va,
                pa,
                self.unit,
                attrs,
                MapSize::Exactly(inner.pt.format().granule()),
            ) {
                Ok(f) => {
                    flush = Some(match flush.take() {
                        Some(acc) => inner
                            .pt
                            .merge_flush(acc, f)
                            .expect("both tokens come from this area's own table"),
                        None => f,
                    });
                    done += 1;
                }
                Err(e) => {
                    if !borrowed {
                        let _ = self.pages.free(pa.pfn(), self.order);
                    }
                    failure = Some(VmallocError::Map(e));
                    break;
                }
            }
        }
        if let Some(f) = flush {
            let freed = f.invalidate(tlb);
            let refused = inner.pt.free_tables(freed);
            debug_assert!(refused.is_ok(), "own tables refused: {refused:?}");
        }
        if let Some(e) = failure {
            // Undo: unmap what was mapped (frames freed unless borrowed), release the slots.
            let _ = self.unmap_slots(inner, first, done, tlb, !borrowed);
            inner.space.release(first, n + 1);
            return Err(e);
        }
        if !borrowed {
            inner.backed += n as u64;
        }
        Ok(self.va_of(first))
    }

    /// Unmap `n` pages from slot `first` in batches, invalidating before frames (if
    /// `free_frames`) and emptied tables go back.
    fn unmap_slots<T: TlbInvalidate + ?Sized>(
        &self,
        inner: &mut Inner<'m, P, F>,
        first: usize,
        n: usize,
        tlb: &mut T,
        free_frames: bool,
    ) -> Result<(), UnmapError> {
        let mut i = 0;
        while i < n {
            let batch = (n - i).min(VFREE_BATCH);
            let mut frames = [None::<Pfn>; VFREE_BATCH];
            for (j, f) in frames.iter_mut().enumerate().take(batch) {
                *f = inner
                    .pt
                    .translate(self.va_of(first + i + j))
                    .map(|t| t.page_pa.pfn());
            }
            let flush = inner
                .pt
                .unmap(self.va_of(first + i), batch as u64 * self.unit)?;
            let freed = flush.invalidate(tlb);
            let refused = inner.pt.free_tables(freed);
            debug_assert!(refused.is_ok(), "own tables refused: {refused:?}");
            if free_frames {
                for pfn in frames.iter().take(batch).flatten() {
                    let freed = self.pages.free(*pfn, self.order);
                    debug_assert!(freed.is_ok(), "vmalloc page free failed: {freed:?}");
                }
            }
            i += batch;
        }
        Ok(())
    }

    fn free_area<T: TlbInvalidate + ?Sized>(
        &self,
        va: VirtAddr,
        tlb: &mut T,
        borrowed: bool,
    ) -> Result<(), VfreeError> {
        let mut inner = self.inner.lock();
        let first = self.slot_of(va).ok_or(VfreeError::NotAnArea(va))?;
        let slots = inner
            .space
            .area_slots(first, |slot| inner.pt.translate(self.va_of(slot)).is_some())
            .ok_or(VfreeError::NotAnArea(va))?;
        if bit(inner.space.borrowed, first) != borrowed {
            return Err(VfreeError::WrongKind(va));
        }
        let n = slots - 1;
        if borrowed {
            self.unmap_slots(&mut inner, first, n, tlb, false)
                .map_err(VfreeError::Unmap)?;
            inner.space.release(first, slots);
            return Ok(());
        }
        // From here the area is dying: no longer a start (a second vfree is refused), its
        // slots still used (nothing reuses them) until every page is unmapped and freed.
        set(inner.space.starts, first, false);
        let mut i = 0;
        while i < n {
            let batch = (n - i).min(VFREE_BATCH);
            let mut pending = [None::<Pfn>; VFREE_BATCH];
            let mut frames = [None::<Pfn>; VFREE_BATCH];
            for (j, f) in frames.iter_mut().enumerate().take(batch) {
                *f = inner
                    .pt
                    .translate(self.va_of(first + i + j))
                    .map(|t| t.page_pa.pfn());
            }
            let flush = match inner
                .pt
                .unmap(self.va_of(first + i), batch as u64 * self.unit)
            {
                Ok(f) => f,
                Err(e) if i == 0 => {
                    // Nothing was unmapped yet: the refusal changes nothing.
                    set(inner.space.starts, first, true);
                    return Err(VfreeError::Unmap(e));
                }
                Err(e) => unreachable!("granule leaves unmap without splits: {e:?}"),
            };
            let freed = flush.invalidate(tlb);
            let refused = inner.pt.free_tables(freed);
            debug_assert!(refused.is_ok(), "own tables refused: {refused:?}");
            for (p, f) in pending.iter_mut().zip(frames.iter().take(batch)) {
                if let Some(pfn) = *f {
                    if !self.try_free_page(pfn) {
                        *p = Some(pfn);
                    }
                }
            }
            // A page in the middle of a migration is freed once the migration is over,
            // which needs the vmalloc lock (`movable.rs`): wait without it.
            if pending.iter().any(Option::is_some) {
                drop(inner);
                for pfn in pending.iter().flatten() {
                    while !self.try_free_page(*pfn) {
                        core::hint::spin_loop();
                    }
                }
                inner = self.inner.lock();
            }
            i += batch;
        }
        inner.space.release(first, slots);
        inner.backed -= n as u64;
        Ok(())
    }

    /// Free the unmapped vmalloc page `pfn` unless a migration still owns it: the buddy
    /// refuses to free a block that is migrating, and the target of a migration that has
    /// just been mapped is settled only once the buddy has named its mover.
    fn try_free_page(&self, pfn: Pfn) -> bool {
        if let Some(m) = self.movable.get() {
            let movable = self
                .pages
                .owner(pfn)
                .is_some_and(|o| o.mobility == mmkit_buddy::MigrateType::Movable);
            if movable && self.pages.buddy.mover_of(pfn) != Some(m.id) {
                return false;
            }
        }
        match self.pages.free(pfn, self.order) {
            Ok(()) => true,
            Err(mmkit_buddy::FreeError::Migrating) => false,
            Err(e) => {
                debug_assert!(false, "vmalloc page free failed: {e:?}");
                true
            }
        }
    }
}

/// vmalloc usage, for the reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmallocStats {
    /// Bytes of the window.
    pub window_bytes: u64,
    /// Bytes of the window taken by areas, guard pages included.
    pub used_bytes: u64,
    /// Bytes of frames vmalloc allocated and maps (`VmallocUsed`).
    pub backed_bytes: u64,
    /// Live areas.
    pub areas: u64,
    /// Frames of the kernel page table.
    pub table_frames: u64,
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    pub(crate) fn vm(&self) -> Result<&'m Vmalloc<'m, P, F>, VmallocError> {
        self.vmalloc.ok_or(VmallocError::NoVmallocArea)
    }

    fn vmalloc_gfp(
        &self,
        size: usize,
        gfp: GfpFlags,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<VirtAddr, VmallocError> {
        let vm = self.vm()?;
        if size == 0 {
            return Err(VmallocError::ZeroSize);
        }
        let n = usize::try_from((size as u64).div_ceil(vm.unit))
            .map_err(|_| VmallocError::NoVirtualSpace)?;
        let mut inner = vm.inner.lock();
        vm.map_area(&mut inner, n, Attrs::KERNEL_RW, tlb, false, |_, _| {
            vm.pages
                .alloc(gfp, vm.order, PageUse::Vmalloc)
                .map(Pfn::addr)
                .map_err(|_| VmallocError::OutOfMemory)
        })
    }

    /// Allocate `size` bytes of virtually contiguous kernel memory (`vmalloc`), page by page
    /// from the buddy, mapped read-write in the kernel page table with a guard page after.
    /// `tlb` is invoked before returning.
    pub fn vmalloc(
        &self,
        size: usize,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<VirtAddr, VmallocError> {
        self.vmalloc_gfp(size, GfpFlags::KERNEL, tlb)
    }

    /// [`vmalloc`](Self::vmalloc) with zeroed pages (`vzalloc`).
    pub fn vzalloc(
        &self,
        size: usize,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<VirtAddr, VmallocError> {
        self.vmalloc_gfp(size, GfpFlags::KERNEL | GfpFlags::ZERO, tlb)
    }

    /// Free a [`vmalloc`](Self::vmalloc) or [`vmalloc_movable`](Self::vmalloc_movable) area:
    /// unmap, invalidate through `tlb`, then give the pages and emptied tables back. A page
    /// that is being migrated is freed as soon as its migration ends (the call waits for it,
    /// without the vmalloc lock).
    pub fn vfree(
        &self,
        va: VirtAddr,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<(), VfreeError> {
        let vm = self.vmalloc.as_ref().ok_or(VfreeError::NoVmallocArea)?;
        vm.free_area(va, tlb, false)
    }

    /// Map caller-owned frames contiguously (`vmap`) with `attrs`; each entry of `frames` is
    /// one granule-sized frame. The frames stay the caller's; undo with
    /// [`vunmap`](Self::vunmap).
    pub fn vmap(
        &self,
        frames: &[Pfn],
        attrs: Attrs,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<VirtAddr, VmallocError> {
        let vm = self.vm()?;
        if frames.is_empty() {
            return Err(VmallocError::ZeroSize);
        }
        let mut inner = vm.inner.lock();
        vm.map_area(&mut inner, frames.len(), attrs, tlb, true, |i, _| {
            let pfn = frames[i];
            if pfn.as_u64() % vm.order.pages() != 0 {
                return Err(VmallocError::BadFrame(pfn));
            }
            pfn.checked_addr().ok_or(VmallocError::BadFrame(pfn))
        })
    }

    /// Undo a [`vmap`](Self::vmap): unmap and invalidate; the frames are not freed.
    pub fn vunmap(
        &self,
        va: VirtAddr,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<(), VfreeError> {
        let vm = self.vmalloc.as_ref().ok_or(VfreeError::NoVmallocArea)?;
        vm.free_area(va, tlb, true)
    }

    /// The frame backing vmalloc address `va` (`vmalloc_to_pfn`).
    pub fn vmalloc_to_pfn(&self, va: VirtAddr) -> Option<Pfn> {
        let vm = self.vmalloc.as_ref()?;
        if !vm.window.contains(va) {
            return None;
        }
        let t = vm.inner.lock().pt.translate(va)?;
        Some(t.pa_of(va).pfn())
    }

    /// Run `f` on the kernel page table (under the vmalloc lock): map the kernel image and
    /// the direct map, load the root into the MMU. Mappings inside the vmalloc window belong
    /// to vmalloc; do not touch them here.
    pub fn with_page_table<R>(
        &self,
        f: impl FnOnce(&mut KernelPageTable<'m, P, F>) -> R,
    ) -> Option<R> {
        let vm = self.vmalloc.as_ref()?;
        Some(f(&mut vm.inner.lock().pt))
    }

    /// vmalloc usage (zero when there is no window).
    pub fn vmalloc_stats(&self) -> VmallocStats {
        let Some(vm) = self.vmalloc.as_ref() else {
            return VmallocStats::default();
        };
        let inner = vm.inner.lock();
        VmallocStats {
            window_bytes: vm.window.len(),
            used_bytes: inner.space.used_slots() * vm.unit,
            backed_bytes: inner.backed * vm.unit,
            areas: inner.space.areas(),
            table_frames: inner.pt.table_frames() as u64,
        }
    }

    /// Check the kernel page table's invariants and that every area start is in use.
    pub(crate) fn verify_vmalloc(&self) -> Result<(), crate::mm::VerifyError> {
        let Some(vm) = self.vmalloc.as_ref() else {
            return Ok(());
        };
        let inner = vm.inner.lock();
        inner
            .pt
            .verify()
            .map_err(crate::mm::VerifyError::PageTable)?;
        let s = &inner.space;
        for i in 0..s.slots {
            if bit(s.starts, i) && !bit(s.used, i) {
                return Err(crate::mm::VerifyError::Vmalloc(
                    self::VmallocCorruption::StartNotUsed(i),
                ));
            }
            if bit(s.starts, i) && !bit(s.borrowed, i) {
                // Every mapped page of a vmalloc area must be a frame vmalloc owns.
                let mapped = |slot| inner.pt.translate(vm.va_of(slot)).is_some();
                let n = s.area_slots(i, mapped).unwrap_or(1) - 1;
                for j in 0..n {
                    let va = vm.va_of(i + j);
                    let Some(t) = inner.pt.translate(va) else {
                        return Err(crate::mm::VerifyError::Vmalloc(
                            VmallocCorruption::Unmapped(va),
                        ));
                    };
                    let pfn = t.page_pa.pfn();
                    let owner = vm.pages.owner(pfn);
                    if owner.map(|o| o.usage) != Some(PageUse::Vmalloc) {
                        return Err(crate::mm::VerifyError::Vmalloc(
                            VmallocCorruption::NotVmallocFrame(va),
                        ));
                    }
                    // A movable page (`movable.rs`) names the facade's mover and keeps its
                    // address as the reverse map.
                    let movable = owner.is_some_and(|o| o.mobility == MigrateType::Movable);
                    if movable {
                        let buddy = &vm.pages.buddy;
                        let id = vm.movable.get().map(|m| m.id);
                        if id.is_none()
                            || buddy.mover_of(pfn) != id
                            || buddy.page_private(pfn) != Ok(va.as_u64())
                        {
                            return Err(crate::mm::VerifyError::Vmalloc(
                                VmallocCorruption::StaleReverseMap(va),
                            ));
                        }
                    }
                }
                // The guard page stays unmapped.
                if inner.pt.translate(vm.va_of(i + n)).is_some() {
                    return Err(crate::mm::VerifyError::Vmalloc(
                        VmallocCorruption::GuardMapped(vm.va_of(i + n)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What [`Mm::verify`] found wrong with the vmalloc bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmallocCorruption {
    /// An area start slot is not marked used.
    StartNotUsed(usize),
    /// A page of a vmalloc area is not mapped.
    Unmapped(VirtAddr),
    /// A page of a vmalloc area maps a frame not recorded as a vmalloc page.
    NotVmallocFrame(VirtAddr),
    /// A guard page is mapped.
    GuardMapped(VirtAddr),
    /// A movable page does not name the facade's mover or its private word is not its
    /// address.
    StaleReverseMap(VirtAddr),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn space(slots: usize) -> VmallocSpace<'static> {
        let words = slots.div_ceil(64);
        VmallocSpace {
            used: vec![0; words].leak(),
            starts: vec![0; words].leak(),
            borrowed: vec![0; words].leak(),
            slots,
        }
    }

    #[test]
    fn areas_keep_a_guard_slot_between_them() {
        let mut s = space(100);
        let a = s.find(4).unwrap(); // 3 pages + guard
        s.claim(a, 4, false);
        let b = s.find(2).unwrap();
        s.claim(b, 2, true);
        assert_eq!((a, b), (0, 4));
        // Slots 0..3 and 4 hold pages; 3 and 5 are guards.
        let mapped = |slot: usize| slot != 3 && slot != 5;
        assert_eq!(
            s.area_slots(a, mapped),
            Some(4),
            "length stops at the next area's start"
        );
        assert_eq!(s.area_slots(b, mapped), Some(2));
        assert_eq!(s.area_slots(1, mapped), None, "not a start");
        assert!(bit(s.borrowed, b) && !bit(s.borrowed, a));
        assert_eq!((s.used_slots(), s.areas()), (6, 2));
        // An area being freed elsewhere has cleared its start, its slots still used: the
        // guard still ends the area before it.
        set(s.starts, b, false);
        assert_eq!(s.area_slots(a, mapped), Some(4), "the guard ends the area");
    }

    #[test]
    fn release_makes_the_hole_reusable_first_fit() {
        let mut s = space(130);
        s.claim(0, 70, false);
        s.claim(70, 10, false);
        s.release(0, 70);
        assert_eq!(s.find(70), Some(0));
        assert_eq!(
            s.find(71),
            None,
            "neither the hole nor the 50 slots at the end fit"
        );
        assert_eq!(s.find(50), Some(0), "first fit takes the lowest hole");
        s.claim(0, 70, false);
        assert_eq!(s.find(50), Some(80));
    }
}
