//! Movable kernel mappings and the facade's mover: pages that compaction can move because the
//! facade knows every reference to them.
//!
//! [`Mm::vmalloc_movable`] is vmalloc with movable pages: each page comes from the buddy with
//! [`GfpFlags::HIGHUSER_MOVABLE`] (zeroed), is recorded in the page-owner table as a
//! [`PageUse::Vmalloc`](crate::PageUse::Vmalloc) page of movable mobility, and is mapped once,
//! read-write, at its slot of the vmalloc window. The only reference to the page is that
//! page-table entry, so the page can move: the block's private word in the buddy holds the
//! reverse map (the virtual address), and the block names the facade's mover, which the
//! buddy's compaction, pageblock evacuation and [`migrate_block`] call.
//!
//! ## What the mover does (Linux `movable_operations`, `migrate_pages` for one PTE)
//! * `isolate(src, va)`: under the vmalloc lock, `va` must lie in the window and map `src`
//!   with a granule-sized leaf; otherwise [`MoveError::Refused`] (the area was freed, or the
//!   page was never ours). A page that is the only leaf of its last-level table is
//!   [`MoveError::Busy`]: unmapping it would free the table and remapping would need a new
//!   one, an allocation that could fail half-way. Isolation takes nothing: the buddy's
//!   *migrating* bit already keeps the block from being freed, and `migrate` rechecks.
//! * `migrate(src, dst, va)`, all under the vmalloc lock: recheck as `isolate`; unmap `va`;
//!   invalidate through the kernel's [`MoverTlb`] (no CPU can write `src` any more); copy the
//!   page through the direct map; map `va` to `dst` with the same attributes; invalidate
//!   again (the barrier aarch64 needs before the walker sees the new entry); return `va` as
//!   `dst`'s private word. The buddy then tells the page allocator (its migration observer),
//!   which moves the owner-table head byte from `src` to `dst`, and frees `src`. On any refusal before the unmap nothing has changed; after it nothing
//!   can fail (the table is still there, the map needs no frame).
//! * `putback`: nothing to release.
//! * The mover never waits for the vmalloc lock: it tries it a bounded number of times
//!   (`MOVER_LOCK_TRIES`) and answers busy, because the buddy may call it from an
//!   allocation made with that lock held (a page-table frame whose slow path evacuates a
//!   pageblock), where waiting would deadlock.
//!
//! ## Guarantees and the access contract
//! * The bytes at `va` are the same before and after a migration; only the translation
//!   changes. A CPU that accesses `va` *during* the migration faults (not present): the
//!   kernel's page-fault handler calls [`Mm::movable_fault`], which waits for the migration
//!   to end and says whether to retry the access (Linux waits on a migration entry the same
//!   way). Code that cannot fault must not touch movable areas; the direct-map alias of a
//!   movable page must not be used at all (it changes under the caller).
//! * `vfree` never frees a page twice nor leaks one: it unmaps under the lock, and a page the
//!   buddy refuses to free because it is migrating ([`FreeError::Migrating`]) — or a target
//!   whose migration bookkeeping has not finished — is freed after the migration ends, with
//!   the lock dropped (the migration needs it to notice the area is gone and give up).
//! * Only granule-sized pages of vmalloc areas made here move; vmap areas and plain vmalloc
//!   pages (unmovable) never name the mover.
//!
//! ## Locks (outermost first)
//! vmalloc lock → the [`MoverTlb`]'s own locks (e.g. a shootdown's); vmalloc lock → buddy
//! per-CPU and zone locks. The buddy calls the mover with none of *its* locks held; the
//! mover only tries the vmalloc lock (above); `vfree` never waits for a migration with the
//! vmalloc lock held; [`Mm::movable_fault`] waits for it with nothing held. The
//! [`MoverTlb`] must not call back into the `Mm`.
//!
//! [`migrate_block`]: mmkit_buddy::BuddyAllocator::migrate_block
//! [`MoveError::Refused`]: mmkit_buddy::MoveError::Refused
//! [`MoveError::Busy`]: mmkit_buddy::MoveError::Busy
//! [`FreeError::Migrating`]: mmkit_buddy::FreeError::Migrating

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order, Pfn, VirtAddr};
use mmkit_buddy::{GfpFlags, MoveError, Mover, MoverError, MoverId};
use mmkit_pgtable::{Attrs, MapSize, PagingFormat, TlbInvalidate};

use crate::mm::Mm;
use crate::owner::PageUse;
use crate::vmalloc::{Inner, Vmalloc, VmallocError};

/// The TLB invalidation the facade's mover uses: it runs on whatever CPU migrates (the
/// compaction caller, an allocation's slow path), at any time, so it cannot be handed in per
/// call like the `tlb` argument of `vmalloc`.
///
/// # Safety
/// Every invalidation made through the invalidator `with_tlb` passes to `f` meets the
/// [`TlbInvalidate`] contract for *every* CPU that may have loaded the kernel page table (a
/// shootdown on SMP; the local instructions on a single CPU; the software MMU's TLB on a
/// host): the mover copies a page and frees it on the strength of it. `with_tlb` is called
/// with the vmalloc lock held and must not call into the `Mm`.
pub unsafe trait MoverTlb: Sync {
    /// Run `f` with an invalidator for the kernel page table.
    fn with_tlb(&self, f: &mut dyn FnMut(&mut dyn TlbInvalidate));
}

/// The facade's mover once [`Mm::enable_movable`] registered it.
pub(crate) struct MovableState<'m> {
    pub(crate) id: MoverId,
    tlb: &'m dyn MoverTlb,
    migrated: AtomicU64,
    refused: AtomicU64,
}

/// Why [`Mm::enable_movable`] refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovableError {
    /// The `Mm` was built without a vmalloc window.
    NoVmallocArea,
    /// The mover is registered already.
    AlreadyEnabled(MoverId),
    /// The buddy refused to register the mover (its table is full).
    Register(MoverError),
}

impl fmt::Display for MovableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the facade's mover did, from [`Mm::movable_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MovableStats {
    /// The mover's id, once enabled.
    pub mover: Option<MoverId>,
    /// Pages it migrated.
    pub migrated: u64,
    /// Isolations and migrations it declined (busy or refused).
    pub declined: u64,
}

/// A page the mover may touch: `va` (the private word) is a granule-aligned window address
/// whose granule leaf maps `pfn`. Returns the leaf's attributes.
fn mapped_here<P: IrqControl, F: PagingFormat>(
    vm: &Vmalloc<'_, P, F>,
    inner: &Inner<'_, P, F>,
    pfn: Pfn,
    order: Order,
    va: u64,
) -> Result<Attrs, MoveError> {
    let va = VirtAddr::new(va);
    if order != vm.order || vm.slot_of(va).is_none() {
        return Err(MoveError::Refused);
    }
    match inner.pt.translate(va) {
        Some(t) if t.page_va == va && t.page_pa == pfn.addr() && t.size.bytes() == vm.unit => {
            Ok(t.attrs())
        }
        _ => Err(MoveError::Refused),
    }
}

/// Whether another leaf shares the last-level table of the leaf at `va`, so unmapping `va`
/// leaves the table in place. Looks outward from `va`, nearest entries first.
fn shares_table<P: IrqControl, F: PagingFormat>(
    vm: &Vmalloc<'_, P, F>,
    inner: &Inner<'_, P, F>,
    va: u64,
) -> bool {
    let pt = &inner.pt;
    let Some(t) = pt.translate(VirtAddr::new(va)) else {
        return false;
    };
    let Some(parent) = t.level.checked_sub(1) else {
        return true; // a leaf in the root: nothing is freed by unmapping it
    };
    let span = pt.format().levels()[parent].entry_span();
    let base = va & !(span - 1);
    let entries = span / vm.unit;
    let here = (va - base) / vm.unit;
    (1..entries).any(|d| {
        [here.checked_sub(d), Some(here + d)]
            .into_iter()
            .flatten()
            .filter(|&e| e < entries)
            .any(|e| pt.translate(VirtAddr::new(base + e * vm.unit)).is_some())
    })
}

impl<P: IrqControl + Sync, F: PagingFormat + Send + Sync> Mover for Vmalloc<'_, P, F> {
    fn isolate(&self, pfn: Pfn, order: Order, private: u64) -> Result<(), MoveError> {
        let Some(inner) = self.lock_for_mover() else {
            self.count_declined();
            return Err(MoveError::Busy);
        };
        let r = mapped_here(self, &inner, pfn, order, private).and_then(|_| {
            if shares_table(self, &inner, private) {
                Ok(())
            } else {
                Err(MoveError::Busy)
            }
        });
        if r.is_err() {
            self.count_declined();
        }
        r
    }

    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError> {
        let Some(state) = self.movable.get() else {
            return Err(MoveError::Refused);
        };
        let Some(mut inner) = self.lock_for_mover() else {
            self.count_declined();
            return Err(MoveError::Busy);
        };
        let checked = mapped_here(self, &inner, src, order, private).and_then(|attrs| {
            if !shares_table(self, &inner, private) {
                return Err(MoveError::Busy);
            }
            // Both blocks must be reachable for the copy.
            match (
                self.pages.page_address(src, order),
                self.pages.page_address(dst, order),
            ) {
                (Some(s), Some(d)) => Ok((attrs, s, d)),
                _ => Err(MoveError::Refused),
            }
        });
        let (attrs, from, to) = match checked {
            Ok(c) => c,
            Err(e) => {
                self.count_declined();
                return Err(e);
            }
        };
        let va = VirtAddr::new(private);
        let granule = inner.pt.format().granule();
        // Unmap and shoot down: from here no CPU reads or writes `src` through `va`.
        let flush = inner
            .pt
            .unmap(va, self.unit)
            .expect("a granule leaf unmaps without a split");
        let freed = flush_through(state.tlb, flush);
        debug_assert!(freed.is_empty(), "the table is shared, so it stays");
        let _ = inner.pt.free_tables(freed);
        // SAFETY: `from` and `to` are the direct-map addresses of two distinct allocated
        // blocks of `unit` bytes: `src` is ours and no longer mapped anywhere else (the
        // invalidation above is done, and the buddy keeps it allocated while it migrates);
        // `dst` is free memory the buddy handed to this migration alone.
        unsafe { crate::raw::copy_page(from, to, self.unit as usize) };
        // The owner record follows through the page allocator, the buddy's migration
        // observer, once this returns.
        let mapped = inner
            .pt
            .map(va, dst.addr(), self.unit, attrs, MapSize::Exactly(granule))
            .expect("the slot is empty and its table is still there");
        let freed = flush_through(state.tlb, mapped);
        let _ = inner.pt.free_tables(freed);
        state.migrated.fetch_add(1, Relaxed);
        Ok(private)
    }

    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}

/// Invalidate `flush` through the kernel's shared invalidator.
fn flush_through(tlb: &dyn MoverTlb, flush: mmkit_pgtable::Flush) -> mmkit_pgtable::FreedTables {
    let mut flush = Some(flush);
    let mut freed = None;
    tlb.with_tlb(&mut |t| {
        if let Some(f) = flush.take() {
            freed = Some(f.invalidate(t));
        }
    });
    // `MoverTlb::with_tlb` runs `f`; an implementation that does not leaves the token
    // pending, and going on would copy a page some CPU may still write: stop instead.
    match (freed, flush) {
        (Some(freed), None) => freed,
        _ => panic!("MoverTlb::with_tlb did not run its closure"),
    }
}

/// How many times the mover tries the vmalloc lock before it answers busy.
const MOVER_LOCK_TRIES: u32 = 1 << 12;

impl<'m, P: IrqControl, F: PagingFormat> Vmalloc<'m, P, F> {
    /// The vmalloc lock for the mover, or `None` if it stays taken: the buddy may call the
    /// mover from an allocation made *under* the vmalloc lock (a page-table frame or a
    /// vmalloc page whose slow path compacts or evacuates a pageblock), where waiting would
    /// deadlock on this CPU's own lock.
    fn lock_for_mover(&self) -> Option<spin::MutexGuard<'_, Inner<'m, P, F>>> {
        for _ in 0..MOVER_LOCK_TRIES {
            if let Some(g) = self.inner.try_lock() {
                return Some(g);
            }
            core::hint::spin_loop();
        }
        None
    }

    fn count_declined(&self) {
        if let Some(s) = self.movable.get() {
            s.refused.fetch_add(1, Relaxed);
        }
    }
}

impl<'m, P: IrqControl + Sync, F: PagingFormat + Send + Sync> Mm<'m, P, F> {
    /// Register the facade's mover with the buddy (once), invalidating through `tlb` when it
    /// migrates; [`vmalloc_movable`](Self::vmalloc_movable) works from then on. Returns the
    /// mover's id.
    pub fn enable_movable(&self, tlb: &'m dyn MoverTlb) -> Result<MoverId, MovableError> {
        let vm = self.vm().map_err(|_| MovableError::NoVmallocArea)?;
        let mut registered_now = false;
        let state = vm.movable.try_call_once(|| {
            let mover: &'m dyn Mover = vm;
            let id = self
                .buddy()
                .register_mover(mover)
                .map_err(MovableError::Register)?;
            registered_now = true;
            Ok::<_, MovableError>(MovableState {
                id,
                tlb,
                migrated: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            })
        })?;
        if registered_now {
            Ok(state.id)
        } else {
            Err(MovableError::AlreadyEnabled(state.id))
        }
    }
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    /// Allocate `size` bytes of virtually contiguous, zeroed kernel memory whose pages can
    /// move (module docs): vmalloc with [`GfpFlags::HIGHUSER_MOVABLE`] pages that name the
    /// facade's mover, so compaction may migrate them. Free with [`vfree`](Self::vfree).
    /// Access the memory only through the returned addresses, from code whose page faults
    /// reach [`movable_fault`](Self::movable_fault).
    pub fn vmalloc_movable(
        &self,
        size: usize,
        tlb: &mut (impl TlbInvalidate + ?Sized),
    ) -> Result<VirtAddr, VmallocError> {
        let vm = self.vm()?;
        let state = vm.movable.get().ok_or(VmallocError::MovableNotEnabled)?;
        if size == 0 {
            return Err(VmallocError::ZeroSize);
        }
        let n = usize::try_from((size as u64).div_ceil(vm.unit))
            .map_err(|_| VmallocError::NoVirtualSpace)?;
        let buddy = self.buddy();
        let mut inner = vm.inner.lock();
        let gfp = GfpFlags::HIGHUSER_MOVABLE | GfpFlags::ZERO;
        let start = vm.map_area(&mut inner, n, Attrs::KERNEL_RW, tlb, false, |_, va| {
            let pfn = vm
                .pages
                .alloc(gfp, vm.order, PageUse::Vmalloc)
                .map_err(|_| VmallocError::OutOfMemory)?;
            // The reverse map; it cannot fail on a block just allocated.
            let _ = buddy.set_page_private(pfn, va.as_u64());
            Ok(pfn.addr())
        })?;
        // Only now, with every page mapped (and under the lock), do the pages become
        // movable: an undo inside `map_area` never races a migration.
        for i in 0..n as u64 {
            let va = VirtAddr::new(start.as_u64() + i * vm.unit);
            if let Some(t) = inner.pt.translate(va) {
                let named = buddy.set_mover(t.page_pa.pfn(), vm.order, Some(state.id));
                debug_assert!(named.is_ok(), "set_mover on a fresh page: {named:?}");
            }
        }
        Ok(start)
    }

    /// For the kernel's page-fault handler: a not-present fault at `va`. Waits until no
    /// migration is changing the vmalloc window (it takes the vmalloc lock) and returns
    /// whether `va` is mapped now, i.e. whether to retry the faulting access (`false`: a
    /// real fault, e.g. a guard page or a freed area).
    pub fn movable_fault(&self, va: VirtAddr) -> bool {
        self.vmalloc_to_pfn(va).is_some()
    }

    /// What the facade's mover did.
    pub fn movable_stats(&self) -> MovableStats {
        let Some(s) = self.vmalloc.and_then(|vm| vm.movable.get()) else {
            return MovableStats::default();
        };
        MovableStats {
            mover: Some(s.id),
            migrated: s.migrated.load(Relaxed),
            declined: s.refused.load(Relaxed),
        }
    }
}
