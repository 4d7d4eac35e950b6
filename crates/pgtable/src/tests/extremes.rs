//! Every range operation with addresses, lengths and physical addresses at the extremes of the
//! 64-bit space (0, 1, the last granule, `u64::MAX - 1`, `u64::MAX`, the edges of each
//! format's halves), on every format. Each call must return (no overflow panic in debug
//! builds, which run these tests), and a refused call must leave the table as it was:
//! `verify` passes, the frame counts and an existing mapping are unchanged.

use core::ops::ControlFlow;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use super::*;
use crate::host::{ArenaRef, TableArena};
use crate::model::{extreme_lens, extreme_pas, extreme_vas};
use crate::{AttrChange, Attrs, MapSize, PageTable, TlbInvalidate, Translation, Visitor};

/// A TLB for tables never loaded in any MMU.
struct NeverLoaded;

// SAFETY: used only with tables no MMU ever walked, so no TLB holds anything for them.
unsafe impl TlbInvalidate for NeverLoaded {
    fn invalidate_page(&mut self, _: VirtAddr, _: PageSize, _: bool) {}
    fn invalidate_all(&mut self) {}
}

/// Counts what a walk reports, checking each piece stays inside the walked range.
struct Count {
    first: u64,
    last: u64,
    items: usize,
}

impl Visitor for Count {
    fn leaf(&mut self, m: &Translation) -> ControlFlow<()> {
        let end = m.page_va.as_u64() + (m.size.bytes() - 1);
        assert!(end >= self.first && m.page_va.as_u64() <= self.last);
        self.items += 1;
        ControlFlow::Continue(())
    }

    fn hole(&mut self, _: usize, va: VirtAddr, len: u64) -> ControlFlow<()> {
        assert!(len > 0 && va.as_u64() >= self.first);
        assert!(va
            .as_u64()
            .checked_add(len - 1)
            .is_some_and(|l| l <= self.last));
        self.items += 1;
        ControlFlow::Continue(())
    }
}

type Table<'a, F> = PageTable<F, ArenaRef<'a>, ArenaRef<'a>>;

/// What a refused call must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    report: crate::VerifyReport,
    frames: usize,
    outstanding: usize,
    anchor: Option<Translation>,
}

fn snapshot<F: TestFormat>(pt: &Table<'_, F>, arena: &TableArena, anchor: u64) -> Snapshot {
    Snapshot {
        report: pt.verify().unwrap(),
        frames: pt.table_frames(),
        outstanding: arena.outstanding(),
        anchor: pt.translate(VirtAddr::new(anchor)),
    }
}

/// The range operations on a mapping that ends at an edge of the space (`[va, va + len)`
/// was just mapped): each loop that steps to `last` must stop there without wrapping.
fn on_mapped_edge<F: TestFormat>(
    pt: &mut Table<'_, F>,
    dst: &mut Table<'_, F>,
    v: VirtAddr,
    len: u64,
    ctx: (u64, u64),
) {
    let ro = AttrChange::flags(Attrs::empty(), Attrs::WRITE);
    let _ = pt.protect(v, len, ro).unwrap().invalidate(&mut NeverLoaded);
    assert!(
        !pt.translate(v).unwrap().attrs().contains(Attrs::WRITE),
        "{ctx:x?}"
    );
    let c = pt.clear_accessed_dirty(v, len, Attrs::ACCESSED).unwrap();
    let _ = c.flush.invalidate(&mut NeverLoaded);
    let mut count = Count {
        first: v.as_u64(),
        last: v.as_u64() + (len - 1),
        items: 0,
    };
    assert!(pt.walk(v, len, &mut count).unwrap());
    assert!(count.items >= 1, "{ctx:x?}");
    let found: Vec<_> = pt.cursor(v, len).unwrap().collect();
    assert!(
        !found.is_empty() && found.iter().all(|t| t.page_va >= v),
        "{ctx:x?}"
    );
    let _ = pt
        .copy_range_to(dst, v, len)
        .unwrap()
        .invalidate(&mut NeverLoaded);
    assert_eq!(
        dst.translate(v).map(|t| t.page_pa),
        pt.translate(v).map(|t| t.page_pa)
    );
    let freed = dst.unmap(v, len).unwrap().invalidate(&mut NeverLoaded);
    dst.free_tables(freed).unwrap();
}

fn exercise<F: TestFormat>(f: F) {
    let g = f.granule().bytes();
    let arena = arena_for(&f, 64);
    let dst_arena = TableArena::new(
        PhysAddr::new(crate::model::ARENA_BASE + (1 << 32)),
        f.granule(),
        64,
    );
    let mut pt = table(f, &arena);
    let mut dst = table(f, &dst_arena);
    let anchor = f.test_base();
    let _ = pt
        .map(
            VirtAddr::new(anchor),
            PhysAddr::new(0x1_0000_0000),
            g,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .unwrap()
        .invalidate(&mut NeverLoaded);
    let before = snapshot(&pt, &arena, anchor);
    let dst_before = snapshot(&dst, &dst_arena, anchor);
    let mut maps_at_edges = 0;
    for va in extreme_vas(&f) {
        let v = VirtAddr::new(va);
        // Point lookups: any address, no panic, and nothing mapped but the anchor.
        if va != anchor {
            assert_eq!(pt.translate(v), None, "{va:#x}");
            assert_eq!(pt.translate_addr(v), None, "{va:#x}");
            assert_eq!(pt.raw_leaf(v), None, "{va:#x}");
        }
        // Nothing is mapped at these addresses, so there is no block to split.
        let split = pt.split_live(v, &mut NeverLoaded);
        assert!(va == anchor || split.is_err(), "split {va:#x}");
        for len in extreme_lens(g) {
            let ctx = (va, len);
            let covers_anchor =
                len > 0 && va <= anchor && va.checked_add(len - 1).is_some_and(|l| l >= anchor);
            for pa in extreme_pas(g) {
                for size in [MapSize::Largest, MapSize::Exactly(f.granule())] {
                    // A map that succeeds (the top of an upper half is valid) is undone.
                    if let Ok(flush) = pt.map(v, PhysAddr::new(pa), len, Attrs::KERNEL_RW, size) {
                        let _ = flush.invalidate(&mut NeverLoaded);
                        if len > 0 {
                            maps_at_edges += 1;
                            let t = pt.translate(v).expect("mapped");
                            assert_eq!(t.page_pa.as_u64(), pa, "map {ctx:x?} at {pa:#x}");
                            on_mapped_edge(&mut pt, &mut dst, v, len, ctx);
                            let freed = pt.unmap(v, len).unwrap().invalidate(&mut NeverLoaded);
                            pt.free_tables(freed).unwrap();
                        }
                    }
                    assert_eq!(
                        snapshot(&pt, &arena, anchor),
                        before,
                        "map {ctx:x?} {pa:#x}"
                    );
                }
            }
            // Nothing but the anchor is mapped: whatever succeeds changes nothing else.
            if !covers_anchor {
                if let Ok(flush) = pt.unmap(v, len) {
                    let freed = flush.invalidate(&mut NeverLoaded);
                    assert!(freed.is_empty());
                    pt.free_tables(freed).unwrap();
                }
                let change = AttrChange::flags(Attrs::empty(), Attrs::WRITE);
                if let Ok(flush) = pt.protect(v, len, change) {
                    let _ = flush.invalidate(&mut NeverLoaded);
                }
                if let Ok(c) = pt.clear_accessed_dirty(v, len, Attrs::ACCESSED) {
                    assert_eq!(c.leaves, 0);
                    let _ = c.flush.invalidate(&mut NeverLoaded);
                }
                if let Ok(flush) = pt.copy_range_to(&mut dst, v, len) {
                    let _ = flush.invalidate(&mut NeverLoaded);
                }
                assert_eq!(snapshot(&pt, &arena, anchor), before, "{ctx:x?}");
                assert_eq!(snapshot(&dst, &dst_arena, anchor), dst_before, "{ctx:x?}");
            }
            let last = if len == 0 {
                va
            } else {
                va.saturating_add(len - 1)
            };
            let mut count = Count {
                first: va,
                last,
                items: 0,
            };
            if pt.walk(v, len, &mut count).is_ok() && !covers_anchor {
                // Only holes: at most one per entry on each level's path ends.
                assert!(count.items <= 1 << 20, "{ctx:x?}");
            }
            if let Ok(c) = pt.cursor(v, len) {
                assert_eq!(c.count(), usize::from(covers_anchor), "cursor {ctx:x?}");
            }
        }
    }
    assert_eq!(snapshot(&pt, &arena, anchor), before);
    assert!(maps_at_edges > 0, "the last granule of a half maps");
    let _ = pt.destroy(&mut NeverLoaded);
    let _ = dst.destroy(&mut NeverLoaded);
    assert_eq!(arena.outstanding(), 0);
}

#[test]
fn range_operations_take_extreme_addresses_and_lengths_on_x86() {
    for f in all_x86() {
        exercise(f);
    }
}

#[test]
fn range_operations_take_extreme_addresses_and_lengths_on_aarch64() {
    for f in all_aarch64() {
        exercise(f);
    }
}

/// Tables unhooked because their last entry went, and reserved frames never used, go back
/// through `free_zeroed_table` (the arena checks each is all zeroes), and a later map that
/// reuses them without clearing still sees only absent entries: on every format, map a block
/// range as pages, unmap it in quarters (each leaf table emptied entry by entry), map it
/// again, and check translate and `verify` each time.
#[test]
fn emptied_tables_come_back_zeroed_and_are_reused_clean() {
    fn one<F: TestFormat>(f: F) {
        let g = f.granule().bytes();
        let block = sizes_of(&f)[1].bytes();
        let arena = arena_for(&f, 64);
        let mut pt = table(f, &arena);
        let va = f.test_base() + 4 * block;
        let pa = 0x1_0000_0000u64;
        let map = |pt: &mut PageTable<F, _, _>, attrs| {
            let fl = pt
                .map(
                    VirtAddr::new(va),
                    PhysAddr::new(pa),
                    2 * block,
                    attrs,
                    MapSize::Exactly(f.granule()),
                )
                .unwrap();
            pt.free_tables(fl.invalidate(&mut NeverLoaded)).unwrap();
        };
        for round in 0..3 {
            let attrs = if round % 2 == 0 {
                Attrs::KERNEL_RW
            } else {
                Attrs::KERNEL_RO
            };
            map(&mut pt, attrs);
            pt.verify().unwrap();
            for k in [0, 1, 2 * block / g - 1] {
                let t = pt.translate(VirtAddr::new(va + k * g)).unwrap();
                assert_eq!(t.page_pa, PhysAddr::new(pa + k * g));
                assert_eq!(t.attrs(), f.normalize(attrs).unwrap());
            }
            assert_eq!(pt.translate(VirtAddr::new(va + 2 * block)), None);
            assert_eq!(pt.translate(VirtAddr::new(va - g)), None);
            for quarter in 0..4 {
                let fl = pt
                    .unmap(VirtAddr::new(va + quarter * block / 2), block / 2)
                    .unwrap();
                pt.free_tables(fl.invalidate(&mut NeverLoaded)).unwrap();
            }
            pt.verify().unwrap();
            assert_eq!(pt.translate(VirtAddr::new(va)), None);
        }
        assert!(arena.zeroed_frees() >= 3, "{f:?}: {}", arena.zeroed_frees());
        let _ = pt.destroy(&mut NeverLoaded);
        assert_eq!(arena.outstanding(), 0);
    }
    for f in all_x86() {
        one(f);
    }
    for f in all_aarch64() {
        one(f);
    }
}
