//! Bad input to migration, compaction and contiguous allocation gets a specific error and
//! leaves the allocator as it was: compaction of a node or zone without memory, or whose
//! memory was never handed over; migration of a free block, a reserved frame, a hole or a
//! block with no mover; a mover that copies and then fails; contiguous ranges over holes and
//! across zone boundaries. (The unit tests in `mover.rs`, `compaction.rs` and `isolate.rs`
//! cover unmovable blocks, wrong orders, tails, busy and refusing movers, bad node numbers
//! and orders, and ranges that are empty, misaligned or outside every zone.)
//!
//! "As it was": the free and per-CPU counts, `/proc/buddyinfo` and `/proc/pagetypeinfo`,
//! every live block where its owner put it with its contents, and the mover not called.

mod common;

use common::owner::{Behaviour, FreeSnapshot, Owner};
use common::{build_freeing, mib, TestBuddy};
use mmkit_addr::{Order, Pfn};
use mmkit_buddy::{
    BuddyConfig, CompactError, CoreSize, GfpFlags, IsolateError, MigrateError, MoverId, ZoneType,
};

/// Node 0: 0..8 MiB and 12..16 MiB (ZONE_DMA, a hole at 8..12 MiB); node 1: 16..28 MiB
/// (ZONE_DMA32, with a ZONE_MOVABLE above it when `movable`). With `reserve_node1`, node 1's
/// memory stays reserved: its zone spans frames but manages none.
fn machine(movable: bool, reserve_node1: bool) -> (TestBuddy, &'static Owner, MoverId) {
    let cfg = BuddyConfig {
        per_cpu_lists: true,
        movablecore: movable.then_some(CoreSize::Percent(30)),
        ..BuddyConfig::default()
    };
    let (n0, n1) = ([mib(0, 8), mib(12, 4)], [mib(16, 12)]);
    let keep = if reserve_node1 { &n1[..] } else { &[] };
    let b = build_freeing(&[&n0, &n1], cfg, 2, keep);
    let owner: &'static Owner = Box::leak(Box::new(Owner::new(28 * 256)));
    let id = b.register_mover(owner).unwrap();
    (b, owner, id)
}

/// A few live blocks of each kind, so that "unchanged" has something to lose: movable with
/// the mover, movable by type only, unmovable.
fn populate(b: &TestBuddy, owner: &Owner, id: MoverId) -> Vec<u64> {
    let mut heads = Vec::new();
    for (i, gfp) in [GfpFlags::HIGHUSER_MOVABLE, GfpFlags::KERNEL]
        .into_iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        let order = (i % 3) as u32;
        let Ok(p) = b.alloc_pages(gfp, Order::new(order)) else {
            continue;
        };
        let movable = gfp == GfpFlags::HIGHUSER_MOVABLE;
        let live = owner.adopt(p.as_u64(), order, movable);
        b.set_page_private(p, live.private).unwrap();
        if movable && i % 4 == 0 {
            b.set_mover(p, Order::new(order), Some(id)).unwrap();
            owner.set_mover(p.as_u64(), true);
        }
        heads.push(p.as_u64());
    }
    owner.check(b, id);
    heads
}

/// Run `f`, which must be refused, and check that nothing changed.
fn refused<T: std::fmt::Debug>(
    b: &TestBuddy,
    owner: &Owner,
    id: MoverId,
    what: &str,
    f: impl FnOnce() -> T,
) -> T {
    let (before, blocks, counts) = (FreeSnapshot::of(b), owner.blocks(), owner.counts());
    let (ok_before, fail_before) = b.migrate_counts();
    let r = f();
    before.assert_unchanged(b, what);
    assert_eq!(owner.blocks(), blocks, "{what} moved a block");
    assert_eq!(owner.counts(), counts, "{what} called the mover");
    assert_eq!(b.migrate_counts().0, ok_before, "{what} migrated");
    assert!(b.migrate_counts().1 <= fail_before + 1);
    b.verify().unwrap();
    owner.check(b, id);
    r
}

#[test]
fn compaction_of_a_zone_without_memory_is_refused_unchanged() {
    let (b, owner, id) = machine(false, false);
    populate(&b, owner, id);
    // ZONE_NORMAL spans nothing here; ZONE_MOVABLE was not configured.
    for ty in [ZoneType::Normal, ZoneType::Movable] {
        for order in [None, Some(0), Some(9)] {
            let r = refused(&b, owner, id, "compact_zone", || {
                b.compact_zone(0, ty, order)
            });
            assert_eq!(r, Err(CompactError::EmptyZone), "{ty:?} {order:?}");
        }
        assert_eq!(b.extfrag(1, ty), Err(CompactError::EmptyZone));
    }
    // Node 0 has no ZONE_DMA32, node 1 no ZONE_DMA.
    let r = refused(&b, owner, id, "compact_zone", || {
        b.compact_zone(0, ZoneType::Dma32, None)
    });
    assert_eq!(r, Err(CompactError::EmptyZone));
    let r = refused(&b, owner, id, "compact_zone", || {
        b.compact_zone(1, ZoneType::Dma, Some(3))
    });
    assert_eq!(r, Err(CompactError::EmptyZone));
}

#[test]
fn compaction_of_a_zone_whose_memory_was_never_handed_over_is_refused_unchanged() {
    // Node 1's ZONE_DMA32 spans 16..28 MiB, all of it reserved: offline memory.
    let (b, owner, id) = machine(false, true);
    assert_eq!(
        b.zone_stats(1, ZoneType::Dma32)
            .map(|z| (z.spanned, z.managed)),
        Some((12 * 256, 0))
    );
    populate(&b, owner, id);
    for order in [None, Some(0), Some(10)] {
        let r = refused(&b, owner, id, "compact_zone", || {
            b.compact_zone(1, ZoneType::Dma32, order)
        });
        assert_eq!(r, Err(CompactError::EmptyZone), "{order:?}");
    }
    // A node without memory to compact compacts nothing and changes nothing.
    let moved = refused(&b, owner, id, "compact_node", || b.compact_node(1));
    assert_eq!(moved, Ok(0));
    // Its frames are reserved, not blocks: no migration either.
    for pfn in [16 * 256, 20 * 256 + 8, 28 * 256 - 1] {
        let r = refused(&b, owner, id, "migrate_block", || {
            b.migrate_block(Pfn::new(pfn), Order::ZERO, None)
        });
        assert_eq!(r, Err(MigrateError::NotAllocated), "{pfn:#x}");
    }
}

#[test]
fn migration_of_a_free_block_a_hole_or_a_block_without_mover_is_refused_unchanged() {
    let (b, owner, id) = machine(false, false);
    let heads = populate(&b, owner, id);
    let blocks = owner.blocks();
    // A free block of each order, found by allocating and freeing it.
    let mut free = Vec::new();
    for order in [0, 3, 9, 10] {
        let p = b
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(order))
            .unwrap();
        b.free_pages(p, Order::new(order)).unwrap();
        free.push((p.as_u64(), order));
    }
    b.drain_all_pages();
    for (pfn, order) in free {
        let r = refused(&b, owner, id, "migrate of a free block", || {
            b.migrate_block(Pfn::new(pfn), Order::new(order), None)
        });
        assert_eq!(r, Err(MigrateError::NotAllocated), "{pfn:#x}/{order}");
    }
    // The hole between node 0's ranges, at every order that fits it.
    for (pfn, order) in [
        (8 * 256, 0),
        (8 * 256, 9),
        (10 * 256 + 1, 0),
        (12 * 256 - 1, 0),
    ] {
        let r = refused(&b, owner, id, "migrate of a hole", || {
            b.migrate_block(Pfn::new(pfn), Order::new(order), None)
        });
        assert_eq!(r, Err(MigrateError::NotAllocated), "{pfn:#x}/{order}");
    }
    // Past the last node.
    let r = refused(&b, owner, id, "migrate outside", || {
        b.migrate_block(Pfn::new(28 * 256), Order::ZERO, None)
    });
    assert_eq!(r, Err(MigrateError::OutsideZones));
    // Live blocks the mover does not own: movable by type only, and unmovable.
    for h in heads {
        let l = blocks[&h];
        if l.mover {
            continue;
        }
        let want = if l.movable {
            MigrateError::NoMover
        } else {
            MigrateError::NotMovable
        };
        let r = refused(&b, owner, id, "migrate without mover", || {
            b.migrate_block(Pfn::new(h), Order::new(l.order), None)
        });
        assert_eq!(r, Err(want), "{h:#x} {l:?}");
    }
}

#[test]
fn a_mover_that_copies_and_then_fails_keeps_the_source_and_loses_no_frame() {
    let (b, owner, id) = machine(false, false);
    populate(&b, owner, id);
    owner.set_behaviour(Behaviour {
        copy_fail_every: 1,
        ..Behaviour::default()
    });
    let movers: Vec<(u64, u32)> = owner
        .blocks()
        .into_iter()
        .filter(|(_, l)| l.mover)
        .map(|(p, l)| (p, l.order))
        .collect();
    assert!(!movers.is_empty());
    for (pfn, order) in movers {
        let before = FreeSnapshot::of(&b);
        let blocks = owner.blocks();
        let counts = owner.counts();
        let r = b.migrate_block(Pfn::new(pfn), Order::new(order), None);
        assert_eq!(r, Err(MigrateError::Busy));
        assert_eq!(owner.counts().failed, counts.failed + 1, "it did copy");
        assert_eq!(owner.counts().putbacks, counts.putbacks + 1);
        before.assert_unchanged(&b, "a failed migrate");
        assert_eq!(owner.blocks(), blocks);
        b.verify().unwrap();
        owner.check(&b, id);
    }
    // And under compaction: every attempt fails, nothing moves, nothing is lost.
    let managed = b.total_managed();
    for ty in [ZoneType::Dma, ZoneType::Dma32] {
        let nid = usize::from(ty == ZoneType::Dma32);
        let r = b.compact_zone(nid, ty, None).unwrap();
        assert_eq!(r.migrated, 0, "{r:?}");
        b.verify().unwrap();
        owner.check(&b, id);
    }
    assert_eq!(
        b.total_free() + b.total_pcp() + owner.live_frames(),
        managed
    );
}

#[test]
fn contig_range_over_a_hole_is_refused_unchanged() {
    let (b, owner, id) = machine(false, false);
    populate(&b, owner, id);
    // 8..12 MiB: pageblocks 4 and 5 of node 0 are all hole; 3..7 straddle it.
    for (start, nr) in [
        (4 * 512, 512),
        (4 * 512, 1024),
        (3 * 512, 1024),
        (5 * 512, 1024),
    ] {
        let r = refused(&b, owner, id, "contig over a hole", || {
            b.alloc_contig_range(Pfn::new(start), nr)
        });
        // The first frame of the hole in the range is named, as a frame not free.
        let first_hole = Pfn::new(start.max(8 * 256));
        assert_eq!(
            r,
            Err(IsolateError::Hole { pfn: first_hole }),
            "{start:#x}+{nr:#x}"
        );
        assert_eq!(
            b.test_range_isolated(Pfn::new(start), nr),
            Err(IsolateError::NotIsolated),
            "the range was left isolated"
        );
    }
}

#[test]
fn contig_range_across_a_zone_boundary_is_refused_unchanged() {
    for movable in [false, true] {
        let (b, owner, id) = machine(movable, false);
        populate(&b, owner, id);
        // ZONE_DMA (node 0) ends where ZONE_DMA32 (node 1) begins, at 16 MiB.
        let mut boundaries = vec![16 * 256];
        if movable {
            let z = b.zone_stats(1, ZoneType::Movable).unwrap();
            boundaries.push(z.start_pfn.as_u64());
        }
        for edge in boundaries {
            assert_eq!(edge % 512, 0, "zone boundaries are pageblock-aligned");
            for (start, nr) in [
                (edge - 512, 1024),
                (edge - 1024, 2048),
                (edge - 512, 512 * 4),
            ] {
                let r = refused(&b, owner, id, "contig across zones", || {
                    b.alloc_contig_range(Pfn::new(start), nr)
                });
                assert_eq!(r, Err(IsolateError::BadRange), "{start:#x}+{nr:#x}");
            }
            // Either side alone is fine.
            for start in [edge - 512, edge] {
                b.alloc_contig_range(Pfn::new(start), 512).unwrap();
                b.free_contig_range(Pfn::new(start), 512).unwrap();
            }
            b.verify().unwrap();
            owner.check(&b, id);
        }
    }
}
