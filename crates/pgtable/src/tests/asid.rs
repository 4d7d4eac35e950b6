//! Address-space identifiers: tokens of a tagged table invalidate in its address space only,
//! the software MMU never serves one address space's entry in another, and global leaves
//! make tokens invalidate everywhere.

use mmkit_addr::{PhysAddr, VirtAddr};

use super::*;
use crate::softmmu::{Access, Fault, Mode};
use crate::{Asid, Attrs, MapSize, PagingFormat, TlbInvalidate};

/// Two tables of `f` in one arena (address spaces 1 and 2) mapping the same 64 pages at
/// `va` to different frames, non-global.
fn two_spaces<F: TestFormat>(f: F) {
    let g = f.granule().bytes();
    let arena = arena_for(&f, 32);
    let mut a = table(f, &arena);
    let mut b = table(f, &arena);
    a.set_asid(Some(Asid(1)));
    b.set_asid(Some(Asid(2)));
    let mut mmu = mmu_for(&a, &arena);
    let va = f.test_base() + 0x20_0000;
    let (pa_a, pa_b) = (0x1_0000_0000u64, 0x2_0000_0000u64);
    let user = Attrs::USER_RW; // not global
    for (t, pa) in [(&mut a, pa_a), (&mut b, pa_b)] {
        let fl = t
            .map(
                VirtAddr::new(va),
                PhysAddr::new(pa),
                64 * g,
                user,
                MapSize::Largest,
            )
            .unwrap();
        assert_eq!(fl.asid(), t.asid());
        let _ = fl.invalidate(&mut mmu);
    }
    let (root_a, root_b) = (a.root(), b.root());
    let walker_a = || f.walker(&arena, root_a);
    let walker_b = || f.walker(&arena, root_b);
    let read = |mmu: &mut SoftMmu<_>, p: u64| {
        mmu.access(VirtAddr::new(va + p * g), Access::Read, Mode::User)
    };
    // Fill the TLB in both spaces.
    mmu.set_asid(Asid(1));
    mmu.set_walker(walker_a());
    for p in 0..64 {
        assert_eq!(read(&mut mmu, p), Ok(PhysAddr::new(pa_a + p * g)));
    }
    mmu.set_asid(Asid(2));
    mmu.set_walker(walker_b());
    for p in 0..64 {
        assert_eq!(
            read(&mut mmu, p),
            Ok(PhysAddr::new(pa_b + p * g)),
            "{f:?}: space 2 must not use space 1's entry"
        );
    }
    mmu.set_asid(Asid(1));
    mmu.set_walker(walker_a());
    assert_eq!(read(&mut mmu, 0), Ok(PhysAddr::new(pa_a)));

    // Unmap one page in space 1: its token invalidates that page in space 1 only.
    let fl = a.unmap(VirtAddr::new(va), g).unwrap();
    assert_eq!(fl.asid(), Some(Asid(1)));
    let freed = fl.invalidate(&mut mmu);
    a.free_tables(freed).unwrap();
    assert!(matches!(read(&mut mmu, 0), Err(Fault::Translation { .. })));
    // Space 2's entry survived: unmap it in memory without a flush, and the TLB still serves
    // the old translation (proof that space 1's token did not touch it).
    let fl = b.unmap(VirtAddr::new(va), g).unwrap();
    // SAFETY: deliberately skipped to observe the stale entry; nothing was freed (the
    // table keeps 63 pages) and the page is invalidated below before the test ends.
    let freed = unsafe { fl.assume_invalidated() };
    assert!(freed.is_empty());
    mmu.set_asid(Asid(2));
    mmu.set_walker(walker_b());
    assert_eq!(
        read(&mut mmu, 0),
        Ok(PhysAddr::new(pa_b)),
        "{f:?}: space 2's entry must survive space 1's invalidation"
    );
    mmu.invalidate_page(VirtAddr::new(va), f.granule(), true);
    assert!(read(&mut mmu, 0).is_err());

    // Beyond the ceiling: one whole-address-space invalidation, not a full one.
    mmu.set_asid(Asid(1));
    mmu.set_walker(walker_a());
    let full = mmu.full_invalidations;
    let fl = a.unmap(VirtAddr::new(va), 64 * g).unwrap();
    let freed = fl.invalidate(&mut mmu);
    a.free_tables(freed).unwrap();
    assert_eq!(mmu.asid_invalidations, 1);
    assert_eq!(mmu.full_invalidations, full);
    for p in 1..64 {
        assert!(read(&mut mmu, p).is_err(), "{f:?} page {p}");
    }
    mmu.set_asid(Asid(2));
    mmu.set_walker(walker_b());
    for p in 1..64 {
        assert_eq!(read(&mut mmu, p), Ok(PhysAddr::new(pa_b + p * g)));
    }
    for t in [a, b] {
        let _ = t.destroy(&mut mmu);
    }
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn a_stale_entry_of_another_address_space_is_never_used() {
    for f in all_x86() {
        two_spaces(f);
    }
    for f in all_aarch64() {
        two_spaces(f);
    }
}

#[test]
fn global_leaves_make_tokens_invalidate_every_address_space() {
    for f in all_x86() {
        let g = f.granule().bytes();
        let arena = arena_for(&f, 16);
        let mut kernel = table(f, &arena);
        let other = table(f, &arena);
        kernel.set_asid(Some(Asid(1)));
        let mut mmu = mmu_for(&kernel, &arena);
        mmu.set_asid(Asid(1));
        let va = f.test_base();
        let fl = kernel
            .map(
                VirtAddr::new(va),
                PhysAddr::new(0x1_0000_0000),
                g,
                Attrs::KERNEL_RW,
                MapSize::Largest,
            )
            .unwrap();
        assert_eq!(
            fl.asid(),
            None,
            "a table with global leaves flushes everywhere"
        );
        let _ = fl.invalidate(&mut mmu);
        mmu.access(VirtAddr::new(va), Access::Read, Mode::Kernel)
            .unwrap();
        // The global entry is used in another address space, as on the hardware.
        mmu.set_asid(Asid(2));
        mmu.set_walker(f.walker(&arena, other.root()));
        assert_eq!(
            mmu.access(VirtAddr::new(va), Access::Read, Mode::Kernel),
            Ok(PhysAddr::new(0x1_0000_0000))
        );
        // Unmapping it must reach that space too.
        let fl = kernel.unmap(VirtAddr::new(va), g).unwrap();
        assert_eq!(fl.asid(), None);
        let freed = fl.invalidate(&mut mmu);
        kernel.free_tables(freed).unwrap();
        assert!(mmu
            .access(VirtAddr::new(va), Access::Read, Mode::Kernel)
            .is_err());
        for t in [kernel, other] {
            let _ = t.destroy(&mut mmu);
        }
        assert_eq!(arena.outstanding(), 0);
    }
}

#[test]
fn merged_tokens_of_two_spaces_invalidate_everywhere() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut a = table(f, &arena);
    a.set_asid(Some(Asid(3)));
    let mut mmu = mmu_for(&a, &arena);
    let va = f.test_base();
    let map = |t: &mut PageTable<_, _, _>, off: u64| {
        t.map(
            VirtAddr::new(va + off),
            PhysAddr::new(0x1_0000_0000 + off),
            0x1000,
            Attrs::USER_RW,
            MapSize::Largest,
        )
        .unwrap()
    };
    let t1 = map(&mut a, 0);
    let t2 = map(&mut a, 0x1000);
    let m = a.merge_flush(t1, t2).unwrap();
    assert_eq!(m.asid(), Some(Asid(3)), "same space stays tagged");
    let _ = m.invalidate(&mut mmu);
    let u1 = a.unmap(VirtAddr::new(va), 0x1000).unwrap();
    a.set_asid(Some(Asid(4)));
    let u2 = a.unmap(VirtAddr::new(va + 0x1000), 0x1000).unwrap();
    let m = a.merge_flush(u1, u2).unwrap();
    assert_eq!(m.asid(), None, "two spaces merge to every space");
    let freed = m.invalidate(&mut mmu);
    a.free_tables(freed).unwrap();
    let _ = a.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}
