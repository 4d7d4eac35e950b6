//! The mutating cursor beyond the model machine: break-before-make on live aarch64 tables,
//! tables emptied by removals, and errors that must change nothing.

use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};

use super::*;
use crate::arch::aarch64::{Aarch64, Granule};
use crate::softmmu::aarch64::Aarch64Walker;
use crate::softmmu::{Access, Mode};
use crate::{Attrs, LeafUpdate, MapSize, TlbInvalidate, UpdateError};

/// Forwards to the software MMU, and checks at every page invalidation that memory no longer
/// translates the page: the entry was broken before the TLB was told.
struct BreakChecker<'a, 'm, W: Walker> {
    mmu: &'a mut SoftMmu<W>,
    memory: Aarch64Walker<'m, crate::host::ArenaRef<'m>>,
    pages: usize,
}

// SAFETY: forwards every call to the software MMU, which keeps the contract.
unsafe impl<W: Walker> TlbInvalidate for BreakChecker<'_, '_, W> {
    fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool) {
        let walked = self
            .memory
            .walk(va.as_u64(), Access::Read, Mode::Kernel, false);
        assert!(
            walked.is_err(),
            "{va:?} still mapped when invalidated: {walked:?}"
        );
        self.pages += 1;
        self.mmu.invalidate_page(va, size, leaf_only);
    }
    fn invalidate_all(&mut self) {
        self.mmu.invalidate_all();
    }
}

#[test]
fn live_aarch64_remap_is_refused_without_tlb_and_broken_before_made_with_it() {
    let f = Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap();
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let handle = arena.handle();
    // Two 16-page contiguous runs and a 2 MiB block.
    let va = 0x4000_0000u64;
    let pa = 0x8000_0000u64;
    for (v, p, len) in [
        (va, pa, 0x2_0000),
        (va + 0x20_0000, pa + 0x20_0000, 0x20_0000),
    ] {
        let fl = pt
            .map(
                VirtAddr::new(v),
                PhysAddr::new(p),
                len,
                Attrs::KERNEL_RW,
                MapSize::Largest,
            )
            .unwrap();
        let _ = fl.invalidate(&mut mmu);
    }
    assert!(pt.translate(VirtAddr::new(va)).unwrap().contiguous);
    // Warm the TLB with the old translations.
    for v in [va, va + 0x1000, va + 0x1_0000, va + 0x20_0000] {
        mmu.access(VirtAddr::new(v), Access::Read, Mode::Kernel)
            .unwrap();
    }
    pt.set_live(true);
    let before = pt.verify().unwrap();
    // Remap page 1 (inside the first run) and the block by 4 GiB.
    let moved = |t: &Translation| {
        let page1 = t.page_va.as_u64() == va + 0x1000;
        if page1 || t.size == PageSize::Size2M {
            LeafUpdate::Remap(PhysAddr::new(t.page_pa.as_u64() + (4 << 30)), t.attrs())
        } else {
            LeafUpdate::Keep
        }
    };
    assert_eq!(
        pt.update_leaves(VirtAddr::new(va), 0x40_0000, moved)
            .map(|_| ()),
        Err(UpdateError::BreakBeforeMake(VirtAddr::new(va + 0x1000)))
    );
    assert_eq!(
        pt.verify().unwrap(),
        before,
        "a refused update changes nothing"
    );
    // A permission change outside any run needs no break even on a live table.
    let ro = |t: &Translation| {
        if t.size == PageSize::Size2M {
            LeafUpdate::Attrs(t.attrs() - Attrs::WRITE)
        } else {
            LeafUpdate::Keep
        }
    };
    let fl = pt.update_leaves(VirtAddr::new(va), 0x40_0000, ro).unwrap();
    let _ = fl.invalidate(&mut mmu);
    assert!(mmu
        .access(VirtAddr::new(va + 0x20_0000), Access::Write, Mode::Kernel)
        .is_err());

    let mut checker = BreakChecker {
        mmu: &mut mmu,
        memory: Aarch64Walker::new(&handle, Some((pt.root(), f)), None),
        pages: 0,
    };
    let fl = pt
        .update_leaves_live(VirtAddr::new(va), 0x40_0000, &mut checker, moved)
        .unwrap();
    // The first run (16 pages) and the block went through the break.
    assert_eq!(checker.pages, 17);
    let _ = fl.invalidate(&mut mmu);
    pt.verify().unwrap();
    let t = pt.translate(VirtAddr::new(va + 0x1000)).unwrap();
    assert_eq!(t.page_pa, PhysAddr::new(pa + 0x1000 + (4 << 30)));
    assert!(!t.contiguous, "the run lost its hint");
    assert!(!pt.translate(VirtAddr::new(va)).unwrap().contiguous);
    assert!(
        pt.translate(VirtAddr::new(va + 0x1_0000))
            .unwrap()
            .contiguous,
        "the second run is untouched"
    );
    // The TLB serves the new addresses: nothing stale survived.
    assert_eq!(
        mmu.access(VirtAddr::new(va + 0x1000), Access::Read, Mode::Kernel),
        Ok(PhysAddr::new(pa + 0x1000 + (4 << 30)))
    );
    assert_eq!(
        mmu.access(VirtAddr::new(va + 0x20_1000), Access::Read, Mode::Kernel),
        Ok(PhysAddr::new(pa + 0x20_1000 + (4 << 30)))
    );
    assert_eq!(
        mmu.access(VirtAddr::new(va), Access::Read, Mode::Kernel),
        Ok(PhysAddr::new(pa))
    );
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn removing_every_leaf_unhooks_the_tables_into_the_token() {
    for f in all_x86() {
        let arena = arena_for(&f, 32);
        let mut pt = table(f, &arena);
        let mut mmu = mmu_for(&pt, &arena);
        let va = f.test_base() + 0x20_0000 - 0x3000;
        let fl = pt
            .map(
                VirtAddr::new(va),
                PhysAddr::new(0x1_0000_0000),
                0x20_6000,
                Attrs::KERNEL_RW,
                MapSize::Exactly(PageSize::Size4K),
            )
            .unwrap();
        let _ = fl.invalidate(&mut mmu);
        let tables = pt.table_frames();
        for v in [va, va + 0x10_0000, va + 0x20_5000] {
            mmu.access(VirtAddr::new(v), Access::Read, Mode::Kernel)
                .unwrap();
        }
        let fl = pt
            .update_leaves(VirtAddr::new(va), 0x20_6000, |_| LeafUpdate::Unmap)
            .unwrap();
        assert_eq!(fl.freed_tables(), tables - 1, "{f:?}: all but the root");
        let freed = fl.invalidate(&mut mmu);
        pt.free_tables(freed).unwrap();
        assert_eq!(pt.table_frames(), 1);
        pt.verify().unwrap();
        for v in [va, va + 0x10_0000, va + 0x20_5000] {
            assert!(mmu
                .access(VirtAddr::new(v), Access::Read, Mode::Kernel)
                .is_err());
        }
        let _ = pt.destroy(&mut mmu);
        assert_eq!(arena.outstanding(), 0);
    }
}

#[test]
fn a_bad_answer_late_in_the_range_changes_nothing() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = f.test_base();
    let fl = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x1_0000_0000),
            0x40_0000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    let _ = fl.invalidate(&mut mmu);
    let before: Vec<_> = pt.cursor(VirtAddr::new(va), 0x40_0000).unwrap().collect();
    // The first block is made read-only, the second remapped by one page (misaligned).
    let answer = |t: &Translation| {
        if t.page_va.as_u64() == va {
            LeafUpdate::Attrs(t.attrs() - Attrs::WRITE)
        } else {
            LeafUpdate::Remap(PhysAddr::new(t.page_pa.as_u64() + 0x1000), t.attrs())
        }
    };
    assert_eq!(
        pt.update_leaves(VirtAddr::new(va), 0x40_0000, answer)
            .map(|_| ()),
        Err(UpdateError::BadRemap(
            VirtAddr::new(va + 0x20_0000),
            PhysAddr::new(0x1_0020_1000)
        ))
    );
    let unreadable = |_: &Translation| LeafUpdate::Attrs(Attrs::WRITE);
    assert!(matches!(
        pt.update_leaves(VirtAddr::new(va), 0x40_0000, unreadable),
        Err(UpdateError::BadAttrs(..))
    ));
    let after: Vec<_> = pt.cursor(VirtAddr::new(va), 0x40_0000).unwrap().collect();
    assert_eq!(before, after);
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

/// A callback that answers the apply pass differently from the plan cannot slip a change
/// needing break-before-make past a live table: that leaf is kept.
#[test]
fn a_changed_second_answer_needing_a_break_is_not_applied() {
    let f = Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap();
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = 0x4000_0000u64;
    let fl = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x8000_0000),
            0x1000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    let _ = fl.invalidate(&mut mmu);
    pt.set_live(true);
    let calls = core::cell::Cell::new(0);
    let fickle = |t: &Translation| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            LeafUpdate::Keep
        } else {
            LeafUpdate::Remap(PhysAddr::new(0x9000_0000), t.attrs())
        }
    };
    let fl = pt.update_leaves(VirtAddr::new(va), 0x1000, fickle).unwrap();
    assert_eq!(calls.get(), 2);
    assert!(fl.is_empty());
    let _ = fl.invalidate(&mut mmu);
    assert_eq!(
        pt.translate(VirtAddr::new(va)).unwrap().page_pa,
        PhysAddr::new(0x8000_0000)
    );
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}
