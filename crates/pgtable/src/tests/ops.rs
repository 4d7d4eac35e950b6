//! Every operation on every format (x86_64 4/5-level, aarch64 4/16/64 KiB granules at several
//! VA widths and both halves), checked through `translate`, `verify` and the software MMU.

use core::ops::ControlFlow;

use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};

use super::*;
use crate::softmmu::{Access, Fault, Mode};
use crate::{
    AttrChange, Attrs, CachePolicy, Flush, FreedTables, MapError, MapSize, Misaligned, PageTable,
    ProtectError, TlbInvalidate, UnmapError, Visitor,
};

/// Accesses `va` for read (and write when `write`) and checks the outcome.
fn expect_access<W: Walker>(
    mmu: &mut SoftMmu<W>,
    va: u64,
    mode: Mode,
    pa: Option<u64>,
    write: Option<bool>,
) {
    let got = mmu.access(VirtAddr::new(va), Access::Read, mode);
    match pa {
        Some(p) => assert_eq!(got, Ok(PhysAddr::new(p)), "read {va:#x}"),
        None => assert!(
            matches!(got, Err(Fault::Translation { .. })),
            "read {va:#x}: {got:?}"
        ),
    }
    if let Some(w) = write {
        let got = mmu.access(VirtAddr::new(va), Access::Write, mode);
        assert_eq!(got.is_ok(), w, "write {va:#x}: {got:?}");
    }
}

fn exercise_format<F: TestFormat>(f: F) {
    let g = f.granule().bytes();
    let sizes = sizes_of(&f);
    let block = sizes[1].bytes();
    let arena = arena_for(&f, 64);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let base = f.test_base();
    let pa0 = 0x1_0000_0000u64;
    let attrs = Attrs::KERNEL_RW;

    // 1. A range of pages, one block and pages again: largest sizes chosen.
    let va = base + block - g;
    let len = block + 3 * g;
    let flush = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(pa0 + block - g),
            len,
            attrs,
            MapSize::Largest,
        )
        .unwrap();
    assert!(flush.is_empty(), "a new mapping needs no invalidation");
    let _ = flush.invalidate(&mut mmu);
    pt.verify().unwrap();
    let t = pt.translate(VirtAddr::new(va)).unwrap();
    assert_eq!(
        (t.size, t.page_pa),
        (f.granule(), PhysAddr::new(pa0 + block - g))
    );
    let t = pt.translate(VirtAddr::new(base + block + 5 * g)).unwrap();
    assert_eq!(t.size, sizes[1], "the aligned middle is one block");
    assert_eq!(
        t.pa_of(VirtAddr::new(base + block + 5 * g)),
        PhysAddr::new(pa0 + block + 5 * g)
    );
    assert_eq!(t.attrs(), f.normalize(attrs).unwrap());
    let after = base + 2 * block;
    assert_eq!(
        pt.translate(VirtAddr::new(after + g)).unwrap().size,
        f.granule()
    );
    assert!(pt.translate(VirtAddr::new(after + 2 * g)).is_none());
    for v in [va, base + block, base + block + 77 * g, after, after + g] {
        expect_access(
            &mut mmu,
            v,
            Mode::Kernel,
            Some(pa0 + (v - base)),
            Some(true),
        );
    }
    expect_access(&mut mmu, after + 2 * g, Mode::Kernel, None, None);
    // User mode may not touch kernel mappings.
    assert_eq!(
        mmu.access(VirtAddr::new(va), Access::Read, Mode::User),
        Err(Fault::Permission)
    );

    // 2. Conflicts leave everything unchanged.
    let before = pt.verify().unwrap();
    let outstanding = arena.outstanding();
    assert_eq!(
        pt.map(
            VirtAddr::new(base + block + g),
            PhysAddr::new(0),
            g,
            attrs,
            MapSize::Largest
        ),
        Err(MapError::OverlapsHugeMapping(
            VirtAddr::new(base + block),
            sizes[1]
        ))
    );
    assert_eq!(
        pt.map(
            VirtAddr::new(va),
            PhysAddr::new(0),
            g,
            attrs,
            MapSize::Largest
        ),
        Err(MapError::AlreadyMapped(VirtAddr::new(va)))
    );
    assert_eq!(
        pt.map(
            VirtAddr::new(va + 1),
            PhysAddr::new(0),
            g,
            attrs,
            MapSize::Largest
        ),
        Err(MapError::Unaligned(Misaligned::Virt(VirtAddr::new(va + 1))))
    );
    assert!(matches!(
        pt.map(
            VirtAddr::new(base + 8 * block),
            PhysAddr::new(0),
            g,
            Attrs::WRITE,
            MapSize::Largest
        ),
        Err(MapError::BadAttrs(_))
    ));
    assert_eq!(
        pt.map(
            VirtAddr::new(base + 8 * block),
            PhysAddr::new(g),
            block,
            attrs,
            MapSize::Exactly(sizes[1])
        ),
        Err(MapError::Unaligned(Misaligned::Phys(PhysAddr::new(g))))
    );
    let hole = VirtAddr::new(base ^ (1 << 62));
    assert!(matches!(
        pt.map(hole, PhysAddr::new(0), g, attrs, MapSize::Largest),
        Err(MapError::NonCanonical(_))
    ));
    assert!(matches!(
        pt.map(
            VirtAddr::new(base),
            PhysAddr::new(1 << 60),
            g,
            attrs,
            MapSize::Largest
        ),
        Err(MapError::PhysTooWide(_))
    ));
    assert_eq!(pt.verify().unwrap(), before);
    assert_eq!(arena.outstanding(), outstanding);

    // 3. Partial unmap splits the block; the flush drops the stale block translation.
    let hole_va = base + block + 7 * g;
    expect_access(
        &mut mmu,
        hole_va,
        Mode::Kernel,
        Some(pa0 + block + 7 * g),
        None,
    );
    let flush = pt.unmap(VirtAddr::new(hole_va), g).unwrap();
    // Forgetting the flush leaves the stale translation usable: the TLB model keeps it.
    expect_access(
        &mut mmu,
        hole_va,
        Mode::Kernel,
        Some(pa0 + block + 7 * g),
        None,
    );
    let freed = flush.invalidate(&mut mmu);
    pt.free_tables(freed).unwrap();
    expect_access(&mut mmu, hole_va, Mode::Kernel, None, None);
    expect_access(
        &mut mmu,
        hole_va + g,
        Mode::Kernel,
        Some(pa0 + block + 8 * g),
        Some(true),
    );
    let t = pt.translate(VirtAddr::new(hole_va - g)).unwrap();
    assert!(t.size < sizes[1]);
    pt.verify().unwrap();

    // 4. Protect: write-protect a stretch across the split; writes fault after the flush.
    let p_va = base + block + 4 * g;
    assert_eq!(
        pt.protect(
            VirtAddr::new(p_va),
            4 * g,
            AttrChange::flags(Attrs::empty(), Attrs::WRITE)
        )
        .map(|_| ()),
        Err(ProtectError::NotMapped(VirtAddr::new(hole_va))),
        "holes are refused"
    );
    let flush = pt
        .protect(
            VirtAddr::new(p_va),
            3 * g,
            AttrChange::flags(Attrs::SW1, Attrs::WRITE),
        )
        .unwrap();
    let _ = flush.invalidate(&mut mmu);
    expect_access(
        &mut mmu,
        p_va,
        Mode::Kernel,
        Some(pa0 + block + 4 * g),
        Some(false),
    );
    expect_access(
        &mut mmu,
        p_va + 4 * g,
        Mode::Kernel,
        Some(pa0 + block + 8 * g),
        Some(true),
    );
    let t = pt.translate(VirtAddr::new(p_va + g)).unwrap();
    assert!(t.attrs().contains(Attrs::SW1) && !t.attrs().contains(Attrs::WRITE));
    pt.verify().unwrap();

    // 5. Walk and cursor agree, holes are reported.
    struct Collect(Vec<Translation>, u64);
    impl Visitor for Collect {
        fn leaf(&mut self, m: &Translation) -> ControlFlow<()> {
            self.0.push(*m);
            ControlFlow::Continue(())
        }
        fn hole(&mut self, _level: usize, _va: VirtAddr, len: u64) -> ControlFlow<()> {
            self.1 += len;
            ControlFlow::Continue(())
        }
    }
    let mut c = Collect(Vec::new(), 0);
    let wlen = 3 * block;
    assert!(pt.walk(VirtAddr::new(base), wlen, &mut c).unwrap());
    let cur: Vec<_> = pt.cursor(VirtAddr::new(base), wlen).unwrap().collect();
    assert_eq!(c.0, cur);
    let mapped: u64 = c.0.iter().map(|t| t.size.bytes()).sum();
    assert_eq!(mapped + c.1, wlen, "leaves and holes tile the range");
    assert_eq!(mapped, len - g);

    // 6. Clear accessed/dirty.
    let cl = pt
        .clear_accessed_dirty(VirtAddr::new(base), wlen, Attrs::ACCESSED)
        .unwrap();
    assert!(cl.leaves > 0);
    let _ = cl.flush.invalidate(&mut mmu);
    assert!(!pt
        .translate(VirtAddr::new(va))
        .unwrap()
        .attrs()
        .contains(Attrs::ACCESSED));
    if !f.hw_ad() {
        assert_eq!(
            mmu.access(VirtAddr::new(va), Access::Read, Mode::Kernel),
            Err(Fault::AccessFlag)
        );
    } else {
        mmu.access(VirtAddr::new(va), Access::Read, Mode::Kernel)
            .unwrap();
        assert!(
            pt.translate(VirtAddr::new(va))
                .unwrap()
                .attrs()
                .contains(Attrs::ACCESSED),
            "hardware sets A"
        );
    }
    pt.verify().unwrap();

    // 7. Copy into another table gives the same translations.
    let arena2 = arena_for(&f, 64);
    let mut dst = table(f, &arena2);
    let _ = pt
        .copy_range_to(&mut dst, VirtAddr::new(base), wlen)
        .unwrap();
    dst.verify().unwrap();
    let copied: Vec<_> = dst.cursor(VirtAddr::new(base), wlen).unwrap().collect();
    let ad = Attrs::ACCESSED | Attrs::DIRTY;
    let strip = |v: &[Translation]| -> Vec<_> {
        v.iter()
            .map(|t| (t.page_va, t.page_pa, t.size, t.attrs() - ad))
            .collect()
    };
    assert_eq!(
        strip(&copied),
        strip(
            &pt.cursor(VirtAddr::new(base), wlen)
                .unwrap()
                .collect::<Vec<_>>()
        )
    );
    assert!(matches!(
        pt.copy_range_to(&mut dst, VirtAddr::new(base), wlen),
        Err(crate::CopyError::Destination(_))
    ));
    let _ = dst.destroy(&mut mmu);
    assert_eq!(arena2.outstanding(), 0, "no table frame leaked");

    // 8. Forced size: granule pages over a block-aligned stretch.
    let fva = base + 4 * block;
    let _ = pt
        .map(
            VirtAddr::new(fva),
            PhysAddr::new(pa0),
            block,
            Attrs::USER_RW,
            MapSize::Exactly(f.granule()),
        )
        .unwrap();
    assert_eq!(
        pt.translate(VirtAddr::new(fva + block - g)).unwrap().size,
        f.granule()
    );
    expect_access(&mut mmu, fva + g, Mode::User, Some(pa0 + g), Some(true));
    assert_eq!(
        mmu.access(VirtAddr::new(fva), Access::Read, Mode::Kernel),
        Err(Fault::Permission),
        "SMAP/PAN"
    );
    pt.verify().unwrap();

    // 9. Out of frames: nothing changes.
    let bva = base + 6 * block;
    let _ = pt
        .map(
            VirtAddr::new(bva),
            PhysAddr::new(pa0),
            block,
            attrs,
            MapSize::Largest,
        )
        .unwrap();
    assert_eq!(pt.translate(VirtAddr::new(bva)).unwrap().size, sizes[1]);
    let before = pt.verify().unwrap();
    arena.set_limit(arena.outstanding());
    assert_eq!(
        pt.map(
            VirtAddr::new(base + 7 * block + g),
            PhysAddr::new(0),
            g,
            attrs,
            MapSize::Largest
        ),
        Err(MapError::OutOfFrames)
    );
    let fl = pt.unmap(VirtAddr::new(fva), g).unwrap();
    assert_eq!(fl.freed_tables(), 0, "no table emptied");
    let _ = fl.invalidate(&mut mmu);
    assert_eq!(
        pt.unmap(VirtAddr::new(bva + g), g).map(|_| ()),
        Err(UnmapError::OutOfFrames)
    );
    assert_eq!(
        pt.protect(
            VirtAddr::new(bva + g),
            g,
            AttrChange::flags(Attrs::SW2, Attrs::empty())
        )
        .map(|_| ()),
        Err(ProtectError::OutOfFrames)
    );
    arena.set_limit(usize::MAX);
    let b2 = pt.verify().unwrap();
    assert_eq!(b2.tables, before.tables);
    assert_eq!(b2.leaves, before.leaves - 1);
    assert_eq!(pt.translate(VirtAddr::new(bva + g)).unwrap().size, sizes[1]);

    // 10. Unmap everything: emptied tables come back through the flush; destroy frees the rest.
    let flush = pt.unmap(VirtAddr::new(base), 8 * block).unwrap();
    assert!(flush.freed_tables() > 0);
    let freed = flush.invalidate(&mut mmu);
    pt.free_tables(freed).unwrap();
    assert_eq!(pt.verify().unwrap().tables, 1, "only the root is left");
    for v in [va, base + block, fva] {
        expect_access(&mut mmu, v, Mode::Kernel, None, None);
    }
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0, "no table frame leaked");
}

#[test]
fn every_operation_on_x86_64_four_and_five_level() {
    for f in all_x86() {
        exercise_format(f);
    }
}

#[test]
fn every_operation_on_every_aarch64_granule_width_and_half() {
    for f in all_aarch64() {
        exercise_format(f);
    }
}

#[test]
fn x86_one_gib_page_splits_into_2m_and_4k() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = 0xffff_8000_4000_0000u64;
    let _ = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(1 << 30),
            1 << 30,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    assert_eq!(
        pt.translate(VirtAddr::new(va + 12345 * 4096)).unwrap().size,
        PageSize::Size1G
    );
    assert_eq!(pt.table_frames(), 2, "root and PDPT");
    mmu.access(VirtAddr::new(va + 0x30_0000), Access::Read, Mode::Kernel)
        .unwrap();
    let flush = pt.unmap(VirtAddr::new(va + 0x30_0000), 0x1000).unwrap();
    let _ = flush.invalidate(&mut mmu);
    assert_eq!(pt.table_frames(), 4, "1G split to 2M, one 2M split to 4K");
    assert_eq!(
        pt.translate(VirtAddr::new(va + 0x50_0000)).unwrap().size,
        PageSize::Size2M
    );
    assert_eq!(
        pt.translate(VirtAddr::new(va + 0x30_1000)).unwrap().size,
        PageSize::Size4K
    );
    assert!(mmu
        .access(VirtAddr::new(va + 0x30_0000), Access::Read, Mode::Kernel)
        .is_err());
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn x86_pkey_and_user_exec_reach_the_walker() {
    let f = X86_64::FIVE_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = 0x0000_1234_5600_0000u64;
    let a = Attrs::USER_RX
        .with_pkey(9)
        .with_cache(CachePolicy::WriteThrough);
    let _ = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x20_0000),
            0x20_0000,
            a,
            MapSize::Largest,
        )
        .unwrap();
    let t = pt.translate(VirtAddr::new(va)).unwrap();
    assert_eq!(
        (t.attrs().pkey(), t.attrs().cache(), t.size),
        (9, CachePolicy::WriteThrough, PageSize::Size2M)
    );
    assert!(mmu
        .access(VirtAddr::new(va), Access::Exec, Mode::User)
        .is_ok());
    assert_eq!(
        mmu.access(VirtAddr::new(va), Access::Exec, Mode::Kernel),
        Err(Fault::Permission),
        "SMEP"
    );
    assert_eq!(
        mmu.access(VirtAddr::new(va), Access::Write, Mode::User),
        Err(Fault::Permission)
    );
    let _ = pt.destroy(&mut mmu);
}

fn aarch64_4k() -> crate::arch::aarch64::Aarch64 {
    crate::arch::aarch64::Aarch64::new(crate::arch::aarch64::Granule::K4, 48, VaHalf::Lower)
        .unwrap()
}

#[test]
fn aarch64_live_split_needs_break_before_make() {
    let f = aarch64_4k();
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = 0x4000_0000u64;
    let _ = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x8000_0000),
            0x20_0000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    pt.set_live(true);
    let before = pt.verify().unwrap();
    assert_eq!(
        pt.unmap(VirtAddr::new(va + 0x1000), 0x1000).map(|_| ()),
        Err(UnmapError::BreakBeforeMake(VirtAddr::new(va)))
    );
    let to_wc = AttrChange {
        cache: Some(CachePolicy::WriteCombining),
        ..AttrChange::flags(Attrs::empty(), Attrs::empty())
    };
    assert_eq!(
        pt.protect(VirtAddr::new(va), 0x20_0000, to_wc).map(|_| ()),
        Err(ProtectError::BreakBeforeMake(VirtAddr::new(va)))
    );
    assert_eq!(pt.verify().unwrap(), before);
    // Permission changes need no BBM.
    let f1 = pt
        .protect(
            VirtAddr::new(va),
            0x20_0000,
            AttrChange::flags(Attrs::empty(), Attrs::WRITE),
        )
        .unwrap();
    let _ = f1.invalidate(&mut mmu);
    mmu.access(VirtAddr::new(va + 0x1000), Access::Read, Mode::Kernel)
        .unwrap();
    pt.split_live(VirtAddr::new(va + 0x1000), &mut mmu).unwrap();
    assert!(
        mmu.page_invalidations > 0,
        "the break was invalidated before the make"
    );
    let f2 = pt.unmap(VirtAddr::new(va + 0x1000), 0x1000).unwrap();
    let _ = f2.invalidate(&mut mmu);
    assert!(mmu
        .access(VirtAddr::new(va + 0x1000), Access::Read, Mode::Kernel)
        .is_err());
    assert!(mmu
        .access(VirtAddr::new(va + 0x2000), Access::Read, Mode::Kernel)
        .is_ok());
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn aarch64_contiguous_hint_set_on_aligned_runs_and_broken_on_partial_unmap() {
    let f = aarch64_4k();
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = 0x1000_0000u64;
    // 64 KiB-aligned 128 KiB plus one page before: two full runs get the hint, the page not.
    let _ = pt
        .map(
            VirtAddr::new(va - 0x1000),
            PhysAddr::new(0x2000_0000 - 0x1000),
            0x2_1000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    assert!(!pt.translate(VirtAddr::new(va - 0x1000)).unwrap().contiguous);
    assert!(pt.translate(VirtAddr::new(va)).unwrap().contiguous);
    assert!(
        pt.translate(VirtAddr::new(va + 0x1_f000))
            .unwrap()
            .contiguous
    );
    pt.verify().unwrap();
    let fl = pt.unmap(VirtAddr::new(va + 0x3000), 0x1000).unwrap();
    let _ = fl.invalidate(&mut mmu);
    assert!(
        !pt.translate(VirtAddr::new(va)).unwrap().contiguous,
        "first run broken"
    );
    assert!(
        pt.translate(VirtAddr::new(va + 0x1_0000))
            .unwrap()
            .contiguous,
        "second run intact"
    );
    pt.verify().unwrap();
    // Live: breaking the second run needs BBM.
    pt.set_live(true);
    assert!(matches!(
        pt.unmap(VirtAddr::new(va + 0x1_1000), 0x1000),
        Err(UnmapError::BreakBeforeMake(_))
    ));
    pt.split_live(VirtAddr::new(va + 0x1_1000), &mut mmu)
        .unwrap();
    assert!(
        !pt.translate(VirtAddr::new(va + 0x1_0000))
            .unwrap()
            .contiguous
    );
    let fl = pt.unmap(VirtAddr::new(va + 0x1_1000), 0x1000).unwrap();
    let _ = fl.invalidate(&mut mmu);
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn forgotten_protect_flush_leaves_stale_write_permission() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = VirtAddr::new(0x7000_0000_0000);
    let _ = pt
        .map(
            va,
            PhysAddr::new(0x5000),
            0x1000,
            Attrs::USER_RW,
            MapSize::Largest,
        )
        .unwrap();
    mmu.access(va, Access::Write, Mode::User).unwrap();
    let flush = pt
        .protect(va, 0x1000, AttrChange::flags(Attrs::empty(), Attrs::WRITE))
        .unwrap();
    assert!(
        mmu.access(va, Access::Write, Mode::User).is_ok(),
        "stale TLB entry still writable"
    );
    let _ = flush.invalidate(&mut mmu);
    assert_eq!(
        mmu.access(va, Access::Write, Mode::User),
        Err(Fault::Permission)
    );
    let _ = pt.destroy(&mut mmu);
}

#[test]
fn merged_flush_frees_tables_of_both_unmaps() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 32);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let a = VirtAddr::new(0x1000_0000);
    let b = VirtAddr::new(0x80_0000_0000);
    let _ = pt
        .map(
            a,
            PhysAddr::new(0),
            0x1000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    let _ = pt
        .map(
            b,
            PhysAddr::new(0),
            0x1000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    let tables = arena.outstanding();
    let fa = pt.unmap(a, 0x1000).unwrap();
    let fb = pt.unmap(b, 0x1000).unwrap();
    let (na, nb) = (fa.freed_tables(), fb.freed_tables());
    assert_eq!((na, nb), (3, 3));
    let merged = pt.merge_flush(fa, fb).unwrap();
    assert_eq!(merged.freed_tables(), 6);
    assert_eq!(
        arena.outstanding(),
        tables,
        "nothing freed before the flush"
    );
    let freed = merged.invalidate(&mut mmu);
    pt.free_tables(freed).unwrap();
    assert_eq!(arena.outstanding(), 1);
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn protect_touching_hw_bits_reserves_conservatively_and_returns_unused_frames() {
    // Clearing DIRTY on part of a clean block changes nothing, but the plan must reserve a
    // split table in case the hardware dirties the block before apply; the unused frame goes
    // straight back.
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    let va = VirtAddr::new(0x4000_0000);
    let clean = Attrs::KERNEL_RW - Attrs::DIRTY;
    let _ = pt
        .map(
            va,
            PhysAddr::new(0x4000_0000),
            0x20_0000,
            clean,
            MapSize::Largest,
        )
        .unwrap();
    let (tables, frames) = (pt.table_frames(), arena.outstanding());
    let allocs = arena.counters().0;
    let fl = pt
        .protect(
            VirtAddr::new(va.as_u64() + 0x1000),
            0x1000,
            AttrChange::flags(Attrs::empty(), Attrs::DIRTY),
        )
        .unwrap();
    assert!(fl.is_empty(), "nothing changed");
    assert_eq!((pt.table_frames(), arena.outstanding()), (tables, frames));
    assert_eq!(
        arena.counters().0,
        allocs + 1,
        "one split frame was reserved and returned"
    );
    assert_eq!(
        pt.translate(va).unwrap().size,
        PageSize::Size2M,
        "not split"
    );
    // Once the block is dirty, the same protect splits it.
    mmu.access(va, Access::Write, Mode::Kernel).unwrap();
    let fl = pt
        .protect(
            VirtAddr::new(va.as_u64() + 0x1000),
            0x1000,
            AttrChange::flags(Attrs::empty(), Attrs::DIRTY),
        )
        .unwrap();
    let _ = fl.invalidate(&mut mmu);
    assert_eq!(pt.translate(va).unwrap().size, PageSize::Size4K);
    assert!(!pt
        .translate(VirtAddr::new(va.as_u64() + 0x1000))
        .unwrap()
        .attrs()
        .contains(Attrs::DIRTY));
    assert!(pt.translate(va).unwrap().attrs().contains(Attrs::DIRTY));
    pt.verify().unwrap();
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

/// A malformed entry (a leaf where the level allows none) on the path stops every form of
/// translate, with or without the linear window, at every depth the walk specialises and the
/// general one; restoring the entry brings the mapping back. Returns whether the format has
/// such a level (and so was checked).
fn translate_refuses_malformed_path_entry<F: TestFormat>(f: F) -> bool {
    // The first level that can hold no leaf, and an entry there that is malformed.
    let Some(level) = (0..f.depth() - 1).find(|&l| f.leaf_size(l).is_none()) else {
        return false;
    };
    let malformed = f.make_leaf(level, PhysAddr::ZERO, Attrs::KERNEL_RW);
    if f.kind(level, malformed) != crate::EntryKind::Malformed {
        return false;
    }
    let g = f.granule().bytes();
    let pa = PhysAddr::new(0x1_0000_0000);
    for window in [true, false] {
        let arena = arena_for(&f, 16);
        arena.set_linear_window(window);
        let mut pt = table(f, &arena);
        let mut mmu = mmu_for(&pt, &arena);
        let va = VirtAddr::new(f.test_base() + 3 * g);
        let flush = pt
            .map(va, pa, g, Attrs::KERNEL_RW, MapSize::Exactly(f.granule()))
            .unwrap();
        let _ = flush.invalidate(&mut mmu);
        // The table at `level` on the path to `va`, and its entry for `va`.
        let ctx = pt.ctx();
        let mut table_pa = pt.root();
        for l in 0..level {
            let e = crate::raw::load(ctx.table(table_pa), f.index_of(l, va.as_u64()));
            table_pa = f.table_addr(e);
        }
        let t = ctx.table(table_pa);
        let slot = f.index_of(level, va.as_u64());
        let saved = crate::raw::load(t, slot);
        crate::raw::store(t, slot, malformed);
        let what = format!("{f:?} level {level} window {window}");
        assert_eq!(pt.translate(va), None, "{what}");
        assert_eq!(pt.translate_addr(va), None, "{what}");
        assert_eq!(pt.raw_leaf(va), None, "{what}");
        crate::raw::store(t, slot, saved);
        assert_eq!(pt.translate_addr(va), Some(pa), "{what}");
        let _ = pt.destroy(&mut mmu);
    }
    true
}

#[test]
fn translate_refuses_malformed_entries_on_every_format() {
    for f in all_x86() {
        assert!(translate_refuses_malformed_path_entry(f), "{f:?}");
    }
    let checked = all_aarch64()
        .into_iter()
        .filter(|&f| translate_refuses_malformed_path_entry(f))
        .count();
    assert!(checked > 0, "no aarch64 format has a level without blocks");
}

/// A TLB for tables never loaded in any MMU: nothing can be cached, so nothing to drop.
struct NeverLoaded;

// SAFETY: used only with tables no MMU ever walked, so no TLB holds anything for them.
unsafe impl TlbInvalidate for NeverLoaded {
    fn invalidate_page(&mut self, _: VirtAddr, _: PageSize, _: bool) {}
    fn invalidate_all(&mut self) {}
}

type ArenaTable<'a> = PageTable<X86_64, crate::host::ArenaRef<'a>, crate::host::ArenaRef<'a>>;

/// Map one page at `va` in `pt` and unmap it again: the freed list holds the three tables
/// the page needed (x86_64 4-level), unhooked but not yet freed.
fn map_then_unmap(pt: &mut ArenaTable<'_>, va: u64) -> FreedTables {
    let map = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0),
            0x1000,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap();
    assert!(map.invalidate(&mut NeverLoaded).is_empty());
    let flush = pt.unmap(VirtAddr::new(va), 0x1000).unwrap();
    assert_eq!(flush.freed_tables(), 3);
    flush.invalidate(&mut NeverLoaded)
}

#[test]
fn free_tables_refuses_another_tables_list() {
    let f = X86_64::FOUR_LEVEL;
    // Same physical base, so B's mapper reaches A's frame addresses (in B's own memory):
    // before the check, B freed frames it never allocated into its arena. An arena elsewhere
    // is a mapper that cannot reach A's frames at all: before, a panic. Both with and without
    // the linear window (the two table-access paths).
    let arena_a = arena_for(&f, 16);
    let same_base = arena_for(&f, 16);
    let elsewhere_base = PhysAddr::new(crate::model::ARENA_BASE + (1 << 30));
    let elsewhere = crate::host::TableArena::new(elsewhere_base, PageSize::Size4K, 16);
    let mut a = table(f, &arena_a);
    for arena_b in [&same_base, &elsewhere] {
        for window in [true, false] {
            arena_b.set_linear_window(window);
            let mut b = table(f, arena_b);
            // B has tables of its own, so a mixed-up free would also hit frames B uses.
            let map = b
                .map(
                    VirtAddr::new(0x4000_0000),
                    PhysAddr::new(0),
                    0x1000,
                    Attrs::KERNEL_RW,
                    MapSize::Largest,
                )
                .unwrap();
            let _ = map.invalidate(&mut NeverLoaded);
            let (a_out, b_counts) = (arena_a.outstanding(), arena_b.counters());
            let freed = map_then_unmap(&mut a, 0x1000);
            assert_eq!(arena_a.outstanding(), a_out + 3, "unhooked, not freed");
            let refused = b.free_tables(freed);
            let Err(crate::FreeTablesError::ForeignList(freed)) = refused else {
                panic!("B accepted A's list: {refused:?}");
            };
            assert_eq!(freed.len(), 3, "handed back whole");
            assert_eq!(arena_b.counters(), b_counts, "nothing freed into B's arena");
            b.verify().unwrap();
            // The right table takes it.
            a.free_tables(freed).unwrap();
            assert_eq!(arena_a.outstanding(), a_out);
            a.verify().unwrap();
            // An empty list belongs to no table: any table takes it and frees nothing.
            b.free_tables(Flush::nothing().invalidate(&mut NeverLoaded))
                .unwrap();
            assert_eq!(arena_b.counters(), b_counts);
            let _ = b.destroy(&mut NeverLoaded);
            assert_eq!(arena_b.outstanding(), 0);
        }
    }
    let _ = a.destroy(&mut NeverLoaded);
    assert_eq!(arena_a.outstanding(), 0);
}

#[test]
fn merge_flush_refuses_another_tables_tokens() {
    let f = X86_64::FOUR_LEVEL;
    let (arena_a, arena_b) = (arena_for(&f, 16), arena_for(&f, 16));
    let (mut a, mut b) = (table(f, &arena_a), table(f, &arena_b));
    let unmap_one = |pt: &mut ArenaTable<'_>, va: u64| {
        let map = pt
            .map(
                VirtAddr::new(va),
                PhysAddr::new(0),
                0x1000,
                Attrs::KERNEL_RW,
                MapSize::Largest,
            )
            .unwrap();
        let _ = map.invalidate(&mut NeverLoaded);
        pt.unmap(VirtAddr::new(va), 0x1000).unwrap()
    };
    let (b_counts, a_out) = (arena_b.counters(), arena_a.outstanding());
    let fa = unmap_one(&mut a, 0x1000);
    let fb = unmap_one(&mut b, 0x1000);
    // Either token foreign, in either position: both come back untouched.
    let (fa, fb) = match a.merge_flush(fa, fb) {
        Err(crate::MergeFlushError::ForeignTables(x, y)) => (x, y),
        other => panic!("A merged B's token: {other:?}"),
    };
    let (fb, fa) = match a.merge_flush(fb, fa) {
        Err(crate::MergeFlushError::ForeignTables(x, y)) => (x, y),
        other => panic!("A merged B's token first: {other:?}"),
    };
    assert_eq!((fa.freed_tables(), fb.freed_tables()), (3, 3));
    // A token without tables merges with any: only its span joins.
    let spans = a.merge_flush(Flush::nothing(), fa).unwrap();
    let fa = b
        .merge_flush(spans, Flush::nothing())
        .expect_err("B refuses A's tables even when B's token is empty");
    let crate::MergeFlushError::ForeignTables(fa, _) = fa;
    a.free_tables(fa.invalidate(&mut NeverLoaded)).unwrap();
    b.free_tables(fb.invalidate(&mut NeverLoaded)).unwrap();
    assert_eq!(arena_a.outstanding(), a_out);
    assert_eq!(arena_b.counters().1, b_counts.1 + 3);
    a.verify().unwrap();
    b.verify().unwrap();
}

/// A copy whose range holds whole source tables (cloned entry by entry) and partial ones at
/// both ends (mapped leaf by leaf) gives the destination the source's exact leaves — raw
/// entries, contiguous hints included — and nothing outside the range.
fn copy_clones_whole_tables<F: TestFormat>(f: F) {
    let g = f.granule().bytes();
    let block = sizes_of(&f)[1].bytes();
    let base = f.test_base();
    let arena = arena_for(&f, 64);
    let mut src = table(f, &arena);
    let mut mmu = mmu_for(&src, &arena);
    // Granule pages over 3 blocks but one page, a block mapped whole after them.
    for (off, len, size) in [
        (g, 3 * block - g, MapSize::Exactly(f.granule())),
        (3 * block, block, MapSize::Largest),
    ] {
        let fl = src
            .map(
                VirtAddr::new(base + off),
                PhysAddr::new(0x1_0000_0000 + off),
                len,
                Attrs::USER_RW,
                size,
            )
            .unwrap();
        let _ = fl.invalidate(&mut mmu);
    }
    let (first, len) = (base + 5 * g, 4 * block - 5 * g - 3 * g);
    let arena2 = arena_for(&f, 64);
    let mut dst = table(f, &arena2);
    let _ = src
        .copy_range_to(&mut dst, VirtAddr::new(first), len)
        .unwrap();
    dst.verify().unwrap();
    for p in 0..4 * block / g {
        let va = VirtAddr::new(base + p * g);
        let inside = (first..first + len).contains(&va.as_u64());
        let want = if inside { src.translate(va) } else { None };
        let got = dst.translate(va);
        if want.is_some_and(|t| t.size.bytes() > g) {
            // The block sticks out of the range: copied as smaller pages.
            assert_eq!(
                got.map(|t| t.pa_of(va)),
                want.map(|t| t.pa_of(va)),
                "{f:?} {p}"
            );
            continue;
        }
        // Leaves of partly covered tables are mapped one by one, without the hint.
        let plain = |t: Option<Translation>| {
            t.map(|mut t| {
                t.contiguous = false;
                t
            })
        };
        assert_eq!(plain(got), plain(want), "{f:?} page {p}");
        if inside && p >= block / g && p < 2 * block / g {
            // The second block's table is whole in the range: cloned raw.
            assert_eq!(dst.raw_leaf(va), src.raw_leaf(va), "{f:?} page {p}");
        }
    }
    let mut dmmu = mmu_for(&dst, &arena2);
    assert_eq!(
        dmmu.access(VirtAddr::new(first), Access::Read, Mode::User),
        Ok(PhysAddr::new(0x1_0000_0000 + 5 * g))
    );
    let _ = dst.destroy(&mut dmmu);
    assert_eq!(arena2.outstanding(), 0);
    let _ = src.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn copy_clones_whole_tables_on_every_format() {
    for f in all_x86() {
        copy_clones_whole_tables(f);
    }
    for f in all_aarch64() {
        copy_clones_whole_tables(f);
    }
}

/// FEAT_HAFDBS: the walker sets AF on first use and marks a writable leaf dirty on its first
/// write; `clear_accessed_dirty` makes it clean and unaccessed again, and only the flush it
/// returns makes the next write mark it again (a stale TLB entry would take the write
/// silently). Write-protecting a dirty leaf keeps it dirty.
#[test]
fn hafdbs_walker_sets_access_and_dirty_and_clearing_needs_the_flush() {
    use crate::arch::aarch64::{Aarch64, Granule, AP_RO, DBM};
    use crate::PagingFormat;
    for g in Granule::ALL {
        let f = Aarch64::new(g, 48, VaHalf::Lower)
            .unwrap()
            .with_hw_access_dirty(true);
        let gb = f.granule().bytes();
        let arena = arena_for(&f, 16);
        let mut pt = table(f, &arena);
        let mut mmu = mmu_for(&pt, &arena);
        let va = VirtAddr::new(f.test_base());
        let fresh = Attrs::USER_RW - Attrs::ACCESSED;
        let fl = pt
            .map(
                va,
                PhysAddr::new(0x1_0000_0000),
                4 * gb,
                fresh,
                MapSize::Largest,
            )
            .unwrap();
        let _ = fl.invalidate(&mut mmu);
        let attrs = |pt: &PageTable<Aarch64, _, _>| pt.translate(va).unwrap().attrs();
        let (_, raw) = pt.raw_leaf(va).unwrap();
        assert_eq!(
            raw & (DBM | AP_RO),
            DBM | AP_RO,
            "{g:?}: writable and clean"
        );
        assert!(!attrs(&pt).intersects(Attrs::ACCESSED | Attrs::DIRTY));
        mmu.access(va, Access::Read, Mode::User).unwrap();
        assert_eq!(
            attrs(&pt) & (Attrs::ACCESSED | Attrs::DIRTY),
            Attrs::ACCESSED,
            "{g:?}: the walker set AF"
        );
        mmu.access(va, Access::Write, Mode::User).unwrap();
        assert!(
            attrs(&pt).contains(Attrs::DIRTY),
            "{g:?}: the write dirtied it"
        );
        pt.verify().unwrap();

        // Clear both and hold the flush back: the TLB still holds the dirty, writable
        // translation and takes the next write without marking the leaf.
        let c = pt
            .clear_accessed_dirty(va, 4 * gb, Attrs::ACCESSED | Attrs::DIRTY)
            .unwrap();
        assert_eq!(c.leaves, 1);
        assert!(!attrs(&pt).intersects(Attrs::ACCESSED | Attrs::DIRTY));
        mmu.access(va, Access::Write, Mode::User).unwrap();
        assert!(
            !attrs(&pt).contains(Attrs::DIRTY),
            "{g:?}: stale TLB entry used"
        );
        // With the flush, the next write walks and marks the leaf again.
        let _ = c.flush.invalidate(&mut mmu);
        mmu.access(va, Access::Write, Mode::User).unwrap();
        assert!(
            attrs(&pt).contains(Attrs::ACCESSED | Attrs::DIRTY),
            "{g:?}: marked again after the flush"
        );
        // Write-protecting a dirty leaf keeps the dirtiness.
        let fl = pt
            .protect(va, gb, AttrChange::flags(Attrs::empty(), Attrs::WRITE))
            .unwrap();
        let _ = fl.invalidate(&mut mmu);
        let a = attrs(&pt);
        assert!(
            a.contains(Attrs::DIRTY) && !a.contains(Attrs::WRITE),
            "{g:?}: {a:?}"
        );
        assert!(mmu.access(va, Access::Write, Mode::User).is_err());
        pt.verify().unwrap();
        let _ = pt.destroy(&mut mmu);
        assert_eq!(arena.outstanding(), 0);
    }
}

/// FEAT_LPA2: leaf output addresses with bits 51:48 set reach the software walker intact
/// (its own decoder, not the format's).
#[test]
fn lpa2_high_output_addresses_reach_the_walker() {
    use crate::arch::aarch64::{Aarch64, Granule};
    use crate::PagingFormat;
    for g in [Granule::K4, Granule::K16] {
        for half in [VaHalf::Lower, VaHalf::Upper] {
            let f = Aarch64::new_lpa2(g, 52, half).unwrap();
            let arena = arena_for(&f, 16);
            let mut pt = table(f, &arena);
            let mut mmu = mmu_for(&pt, &arena);
            let va = f.test_base();
            let pa = 0x000f_8000_0000_0000u64;
            let gb = f.granule().bytes();
            let fl = pt
                .map(
                    VirtAddr::new(va),
                    PhysAddr::new(pa),
                    4 * gb,
                    Attrs::KERNEL_RW,
                    MapSize::Largest,
                )
                .unwrap();
            let _ = fl.invalidate(&mut mmu);
            pt.verify().unwrap();
            for p in 0..4 {
                let v = VirtAddr::new(va + p * gb + 8);
                assert_eq!(
                    mmu.access(v, Access::Write, Mode::Kernel),
                    Ok(PhysAddr::new(pa + p * gb + 8)),
                    "{f:?}"
                );
            }
            let _ = pt.destroy(&mut mmu);
            assert_eq!(arena.outstanding(), 0);
        }
    }
}
