//! Fork-style copies that share whole read-only leaf tables (`crate::share`): each side sees
//! exactly its own mappings through `translate`, a cursor and the software MMU after any
//! sequence of writes on either side, every table frame is freed exactly once after both
//! sides are torn down (the arena panics on a double free or on freeing a frame still
//! shared), and nothing leaks.

use proptest::prelude::*;

use super::*;
use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::model::{run_shared, ShareOp, World, SHARE_TABLES};
use crate::{Attrs, MapSize, PagingFormat};

/// Read-only leaf tables are shared (no frame of their own in the copy), writable ones and
/// partly covered ones are copied; writes on either side then un-share exactly the tables
/// they touch, leaving the other side's mappings as they were.
#[test]
fn copy_shares_read_only_leaf_tables_and_writes_unshare_them() {
    fn one<F: TestFormat>(f: F) {
        let arena = arena_for(&f, 64);
        let per = f.levels()[f.depth() - 1].entries() as u64;
        let mut w = World::new(f, &arena, 4 * per);
        // Tables 0 and 1 read-only, table 2 writable, table 3 read-only but copied in part.
        w.map(0, 0, 2 * per, true);
        w.map(0, 2 * per, per, false);
        w.map(0, 3 * per, per, true);
        let before = arena.outstanding();
        w.copy(0, 0, 3 * per + per / 2);
        assert_eq!(arena.shared_frames(), 2, "{f:?}");
        // The destination has its own upper tables (its root was there before), a copy of
        // table 2 and of half of table 3, but no frames for tables 0 and 1.
        let upper = w.sides[0].pt.table_frames() - 4;
        assert_eq!(arena.outstanding() - before, upper - 1 + 2, "{f:?}");
        assert_eq!(w.sides[1].pt.table_frames(), upper + 4);
        w.check();
        // A write on the source un-shares table 0 only.
        w.protect(0, 5, 3, true);
        assert_eq!(arena.shared_frames(), 1);
        w.check();
        // Unmapping part of shared table 1 on the destination un-shares it there.
        w.unmap(1, per + 1, 2);
        assert_eq!(arena.shared_frames(), 0);
        w.check();
        // Share again, then unmap the whole shared table on one side and map into the hole.
        w.unmap(1, 0, 2 * per);
        w.copy(0, per, per);
        assert_eq!(arena.shared_frames(), 1);
        w.unmap(0, per, per);
        w.check();
        w.map(0, per + 3, 4, false);
        w.update(1, per, per);
        w.check();
        w.destroy(&arena, true);
    }
    for f in all_x86() {
        one(f);
    }
    for f in all_aarch64() {
        one(f);
    }
}

/// Without share counts, copies clone every table as before.
#[test]
fn without_share_counts_copy_clones() {
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 64);
    arena.set_sharing(false);
    let mut w = World::new(f, &arena, 1024);
    w.map(0, 0, 1024, true);
    w.copy(0, 0, 1024);
    assert_eq!(arena.shared_frames(), 0);
    assert_eq!(w.sides[0].pt.table_frames(), w.sides[1].pt.table_frames());
    w.check();
    w.destroy(&arena, false);
}

/// Ranges in a window of `tables` leaf tables of `per` pages, mostly whole tables (what a
/// copy shares), sometimes a few pages.
fn arb_range(tables: u64, per: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        3 => (0..tables, 1..=2u64).prop_map(move |(t, n)| (t * per, n.min(tables - t) * per)),
        1 => (0..tables * per, 1..8u64).prop_map(move |(p, n)| (p, n.min(tables * per - p))),
    ]
}

fn arb_share_op(tables: u64, per: u64) -> impl Strategy<Value = ShareOp> {
    let r = move || arb_range(tables, per);
    prop_oneof![
        3 => (0..2usize, r(), prop::bool::weighted(0.75))
            .prop_map(|(s, (a, n), ro)| ShareOp::Map(s, a, n, ro)),
        2 => (0..2usize, r()).prop_map(|(s, (a, n))| ShareOp::Unmap(s, a, n)),
        2 => (0..2usize, r(), any::<bool>())
            .prop_map(|(s, (a, n), w)| ShareOp::Protect(s, a, n, w)),
        1 => (0..2usize, r()).prop_map(|(s, (a, n))| ShareOp::Update(s, a, n)),
        3 => (0..2usize, r()).prop_map(|(s, (a, n))| ShareOp::Copy(s, a, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn x86_64_shared_copies_match_model(
        ops in proptest::collection::vec(arb_share_op(SHARE_TABLES, 512), 1..24),
        order in any::<bool>(),
    ) {
        run_shared(X86_64::FOUR_LEVEL, &ops, order);
    }

    #[test]
    fn aarch64_4k_shared_copies_match_model(
        ops in proptest::collection::vec(arb_share_op(SHARE_TABLES, 512), 1..24),
        order in any::<bool>(),
    ) {
        let f = crate::arch::aarch64::Aarch64::new(
            crate::arch::aarch64::Granule::K4, 48, mmkit_addr::VaHalf::Lower,
        ).unwrap();
        run_shared(f, &ops, order);
    }

    #[test]
    fn aarch64_16k_shared_copies_match_model(
        ops in proptest::collection::vec(arb_share_op(SHARE_TABLES, 2048), 1..16),
        order in any::<bool>(),
    ) {
        let f = crate::arch::aarch64::Aarch64::new(
            crate::arch::aarch64::Granule::K16, 47, mmkit_addr::VaHalf::Upper,
        ).unwrap();
        run_shared(f, &ops, order);
    }
}

/// `split_live` on a shared leaf table (aarch64, a contiguous-hint run) un-shares it first:
/// the run is broken in the splitting tree only, the other tree keeps its hint.
#[test]
fn split_live_unshares_before_breaking_a_run() {
    struct NoTlb;
    // SAFETY: the tables of this test are never loaded in any MMU.
    unsafe impl crate::TlbInvalidate for NoTlb {
        fn invalidate_page(&mut self, _: VirtAddr, _: PageSize, _: bool) {}
        fn invalidate_all(&mut self) {}
    }
    let f = crate::arch::aarch64::Aarch64::new(
        crate::arch::aarch64::Granule::K4,
        48,
        mmkit_addr::VaHalf::Lower,
    )
    .unwrap();
    let arena = arena_for(&f, 32);
    let mut a = table(f, &arena);
    let mut b = table(f, &arena);
    let va = f.test_base();
    let ro = f.normalize(Attrs::KERNEL_RO).unwrap();
    let fl = a
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x1_0000_0000),
            1 << 20,
            ro,
            MapSize::Exactly(PageSize::Size4K),
        )
        .unwrap();
    a.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
    assert!(a.translate(VirtAddr::new(va)).unwrap().contiguous);
    let fl = a.copy_range_to(&mut b, VirtAddr::new(va), 2 << 20).unwrap();
    b.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
    assert_eq!(arena.shared_frames(), 1);
    a.set_live(true);
    a.split_live(VirtAddr::new(va + 0x3000), &mut NoTlb)
        .unwrap();
    assert_eq!(arena.shared_frames(), 0);
    assert!(!a.translate(VirtAddr::new(va + 0x3000)).unwrap().contiguous);
    assert!(b.translate(VirtAddr::new(va + 0x3000)).unwrap().contiguous);
    a.verify().unwrap();
    b.verify().unwrap();
    a.set_live(false);
    let _ = a.destroy(&mut NoTlb);
    let _ = b.destroy(&mut NoTlb);
    assert_eq!(arena.outstanding(), 0);
}
