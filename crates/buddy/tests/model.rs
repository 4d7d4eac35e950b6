//! A proptest state machine: random allocations, frees (good and bad), drains, mobility
//! switches, isolation and contiguous ranges, and — with a model owner of every live block
//! (`common::owner`) — movers named and cleared, single migrations, compaction of zones and
//! nodes, and a mover that answers busy, fails, copies and then fails, or refuses, as told.
//!
//! After every step: `verify()`; every live block still holds its tag in every frame of the
//! simulated memory, wherever compaction or migration took it, and the allocator agrees it is
//! an allocated block of its order with its mover and private word; no frame is live twice;
//! free + per-CPU + live frames = managed. A refused call leaves the free lists and every
//! block where they were. With deferred memmap initialisation on, steps of it run among the
//! other actions (and allocations grow nodes on demand); at the end every node is completed
//! step by step and every present frame must be managed.

mod common;

use common::owner::{deferred_step_checked, resize_exact_checked, Behaviour, FreeSnapshot, Owner};
use common::{build, mib, TestBuddy};
use mmkit_addr::{Order, Pfn};
use mmkit_buddy::{
    exact_pieces, AllocError, BuddyConfig, CompactError, CompactOutcome, FreeError, GfpFlags,
    MigrateError, MigrateType, MoverError, MoverId, ZoneType,
};
use proptest::prelude::*;

const FLAGS: [GfpFlags; 7] = [
    GfpFlags::KERNEL,
    GfpFlags::HIGHUSER_MOVABLE,
    GfpFlags::KERNEL_RECLAIMABLE,
    GfpFlags::ATOMIC,
    GfpFlags::NOWAIT,
    GfpFlags::GFP_DMA32,
    GfpFlags::GFP_DMA,
];

/// The machine: node 0 has 0..8 MiB and 12..16 MiB, node 1 16..28 MiB.
const FRAMES: u64 = 28 * 256;

#[derive(Debug, Clone)]
enum Action {
    Alloc {
        flags: usize,
        order: u32,
        node: usize,
    },
    /// `alloc_pages_exact` of `nr` frames: kept as its pieces (each freed later on its own),
    /// or given straight back with `free_pages_exact`.
    AllocExact {
        flags: usize,
        nr: u64,
        node: usize,
        keep: bool,
    },
    /// `alloc_pages_exact` of `nr` frames, then `resize_pages_exact` to `new_nr` in place:
    /// kept as the pieces of whichever size it has, or freed with that size.
    ResizeExact {
        flags: usize,
        nr: u64,
        new_nr: u64,
        node: usize,
        keep: bool,
    },
    /// A movable allocation, naming the owner as its mover when `mover`.
    AllocMovable {
        order: u32,
        node: usize,
        mover: bool,
    },
    Free {
        pick: usize,
    },
    FreeWrongOrder {
        pick: usize,
        delta: u32,
    },
    FreeRandom {
        frame: u64,
        order: u32,
    },
    DrainAll,
    DrainLocal,
    Isolate {
        pb: u64,
    },
    Undo {
        pick: usize,
    },
    Contig {
        pb: u64,
        nr: u64,
    },
    Grouping(bool),
    /// Name or clear the mover of a live block (`wrong_order`: with an order it does not have).
    SetMover {
        pick: usize,
        on: bool,
        wrong_order: bool,
    },
    /// Migrate a live block, never into frames `[lo, lo + len)`.
    MigrateBlock {
        pick: usize,
        exclude: Option<(u64, u64)>,
    },
    /// Migrate whatever is at a frame that is no live block's head of that order.
    MigrateRandom {
        frame: u64,
        order: u32,
    },
    CompactZone {
        node: usize,
        zone: usize,
        order: Option<u32>,
    },
    CompactNode {
        node: usize,
    },
    Behave(Behaviour),
    /// Fill node `node` (2: both) with up to `blocks` movable blocks of `order` that name
    /// the mover, then free every `every`-th (`most`: all but every `every`-th):
    /// fragmentation for compaction to undo, and movable pageblocks too full to claim, for
    /// unmovable requests to have emptied.
    Checkerboard {
        node: usize,
        order: u32,
        blocks: usize,
        every: usize,
        most: bool,
    },
    /// One step of deferred memmap initialisation on `node` (2: no such node).
    DeferredStep {
        node: usize,
        frames: u64,
    },
}

fn action() -> impl Strategy<Value = Action> {
    // Mostly well behaved, so that whole pageblocks can still be emptied.
    let every = || prop_oneof![3 => Just(0u32), 1 => 1u32..8];
    let behaviour = (every(), every(), every(), prop::bool::weighted(0.1)).prop_map(
        |(busy_every, fail_every, copy_fail_every, refuse)| Behaviour {
            busy_every,
            fail_every,
            copy_fail_every,
            refuse,
        },
    );
    prop_oneof![
        4 => (0..FLAGS.len(), prop_oneof![4 => 0u32..=3, 1 => 0u32..=11], 0usize..2)
            .prop_map(|(flags, order, node)| Action::Alloc { flags, order, node }),
        2 => (0..FLAGS.len(), prop_oneof![3 => 1u64..=16, 1 => 17u64..=1100], 0usize..2, any::<bool>())
            .prop_map(|(flags, nr, node, keep)| Action::AllocExact { flags, nr, node, keep }),
        2 => (0..FLAGS.len(), 1u64..=40, 1u64..=40, 0usize..2, any::<bool>())
            .prop_map(|(flags, nr, new_nr, node, keep)| Action::ResizeExact { flags, nr, new_nr, node, keep }),
        5 => (prop_oneof![4 => 0u32..=3, 1 => 4u32..=10], 0usize..2, prop::bool::weighted(0.8))
            .prop_map(|(order, node, mover)| Action::AllocMovable { order, node, mover }),
        5 => any::<usize>().prop_map(|pick| Action::Free { pick }),
        1 => (any::<usize>(), 1u32..3).prop_map(|(pick, delta)| Action::FreeWrongOrder { pick, delta }),
        1 => (0u64..FRAMES, 0u32..4).prop_map(|(frame, order)| Action::FreeRandom { frame, order }),
        1 => Just(Action::DrainAll),
        1 => Just(Action::DrainLocal),
        1 => (0u64..56).prop_map(|pb| Action::Isolate { pb }),
        1 => any::<usize>().prop_map(|pick| Action::Undo { pick }),
        1 => (0u64..56, 1u64..4).prop_map(|(pb, nr)| Action::Contig { pb, nr }),
        1 => any::<bool>().prop_map(Action::Grouping),
        2 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, on, wrong_order)| Action::SetMover { pick, on, wrong_order }),
        3 => (any::<usize>(), prop::option::weighted(0.3, (0u64..FRAMES, 0u64..4096)))
            .prop_map(|(pick, exclude)| Action::MigrateBlock { pick, exclude }),
        1 => (0u64..FRAMES + 512, prop_oneof![0u32..=3, 10u32..=12])
            .prop_map(|(frame, order)| Action::MigrateRandom { frame, order }),
        2 => (0usize..3, 0usize..4, prop::option::of(prop_oneof![0u32..=3, 9u32..=11]))
            .prop_map(|(node, zone, order)| Action::CompactZone { node, zone, order }),
        1 => (0usize..3).prop_map(|node| Action::CompactNode { node }),
        1 => behaviour.prop_map(Action::Behave),
        2 => (0usize..3, 0u32..3, 64usize..4096, 2usize..5, any::<bool>()).prop_map(
            |(node, order, blocks, every, most)| Action::Checkerboard { node, order, blocks, every, most }
        ),
        2 => (0usize..3, prop_oneof![0u64..=1, 2u64..3000])
            .prop_map(|(node, frames)| Action::DeferredStep { node, frames }),
    ]
}

fn present(pfn: u64, order: u32) -> bool {
    // Node 0: 0..8 MiB and 12..16 MiB; node 1: 16..28 MiB (in frames of 4 KiB).
    let end = pfn + (1 << order);
    let inside = |s: u64, e: u64| pfn >= s * 256 && end <= e * 256;
    inside(0, 8) || inside(12, 16) || inside(16, 28)
}

/// Every spanned zone: (node, type, first frame, end frame, populated).
fn zones(b: &TestBuddy) -> Vec<(usize, ZoneType, u64, u64, bool)> {
    (0..b.nr_nodes())
        .flat_map(|n| ZoneType::ALL.iter().map(move |&z| (n, z)))
        .filter_map(|(n, z)| {
            let s = b.zone_stats(n, z)?;
            let start = s.start_pfn.as_u64();
            Some((n, z, start, start + s.spanned, s.managed > 0))
        })
        .collect()
}

/// The allocator of a run, with the owner registered as a mover.
fn machine(cfg: BuddyConfig) -> (TestBuddy, &'static Owner, MoverId) {
    let n0 = [mib(0, 8), mib(12, 4)];
    let n1 = [mib(16, 12)];
    let b = build(&[&n0, &n1], cfg, 2);
    let owner: &'static Owner = Box::leak(Box::new(Owner::new(FRAMES)));
    let id = b.register_mover(owner).unwrap();
    (b, owner, id)
}

/// Allocate a block for the owner: tag its frames, store its private word, name the mover.
fn adopt(b: &TestBuddy, owner: &Owner, id: MoverId, pfn: Pfn, order: u32, gfp: GfpFlags) {
    let movable = gfp.migrate_type() == Ok(MigrateType::Movable);
    let live = owner.adopt(pfn.as_u64(), order, movable);
    b.set_page_private(pfn, live.private).unwrap();
    if movable {
        b.set_mover(pfn, Order::new(order), Some(id)).unwrap();
        owner.set_mover(pfn.as_u64(), true);
    }
}

struct Config {
    pcp: bool,
    movable: bool,
    compaction: bool,
    /// Boot with deferred memmap initialisation (one max-order block per node at boot).
    deferred: bool,
}

/// Present frames of the machine, all handed to the allocator once initialised.
const PRESENT: u64 = 24 * 256;

fn run(actions: Vec<Action>, c: Config) {
    let cfg = BuddyConfig {
        per_cpu_lists: c.pcp,
        movablecore: c.movable.then_some(mmkit_buddy::CoreSize::Percent(30)),
        compaction: c.compaction,
        deferred_init: c.deferred.then_some(1),
        ..BuddyConfig::default()
    };
    let (b, owner, id) = machine(cfg);
    b.verify().unwrap();
    if !c.deferred {
        assert_eq!(b.total_managed(), PRESENT);
    }
    let zones = zones(&b);
    let zone_of = |pfn: u64| {
        zones
            .iter()
            .find(|z| (z.2..z.3).contains(&pfn))
            .map(|z| (z.0, z.1))
    };
    let movable_zones: Vec<(u64, u64)> = zones
        .iter()
        .filter(|z| z.1 == ZoneType::Movable)
        .map(|z| (z.2, z.3))
        .collect();
    assert_eq!(movable_zones.is_empty(), !c.movable);
    let mut isolated: Vec<u64> = Vec::new();
    for a in actions {
        match a {
            Action::Alloc { flags, order, node } => {
                let gfp = FLAGS[flags];
                match b.alloc_pages_node(node, gfp, Order::new(order)) {
                    Ok(pfn) => {
                        let p = pfn.as_u64();
                        assert!(present(p, order), "{p:#x}/{order} is memory");
                        assert!(
                            !isolated.iter().any(|&pb| p >= pb && p < pb + 512),
                            "allocated from an isolated pageblock"
                        );
                        if gfp != GfpFlags::HIGHUSER_MOVABLE {
                            assert!(
                                !movable_zones.iter().any(|&(s, e)| p >= s && p < e),
                                "non-movable allocation in ZONE_MOVABLE"
                            );
                        }
                        if gfp == GfpFlags::GFP_DMA {
                            assert!(p < 16 * 256, "GFP_DMA stays below 16 MiB");
                        }
                        // Movable blocks of this action stay movable by type only.
                        let live = owner.adopt(p, order, gfp == GfpFlags::HIGHUSER_MOVABLE);
                        b.set_page_private(pfn, live.private).unwrap();
                    }
                    Err(AllocError::OrderTooLarge { .. }) => assert!(order > 10),
                    Err(e) => assert_eq!(e, AllocError::OutOfMemory, "order {order}"),
                }
            }
            Action::AllocExact {
                flags,
                nr,
                node,
                keep,
            } => {
                let gfp = FLAGS[flags];
                match b.alloc_pages_exact(node, gfp, nr) {
                    Ok(pfn) if keep => {
                        for (p, o) in exact_pieces(pfn, nr) {
                            assert!(present(p.as_u64(), o.get()));
                            let live =
                                owner.adopt(p.as_u64(), o.get(), gfp == GfpFlags::HIGHUSER_MOVABLE);
                            b.set_page_private(p, live.private).unwrap();
                        }
                    }
                    Ok(pfn) => {
                        assert!(present(pfn.as_u64(), 0));
                        b.free_pages_exact(pfn, nr).unwrap();
                    }
                    Err(AllocError::OrderTooLarge { .. }) => assert!(nr > 1024),
                    Err(e) => assert_eq!(e, AllocError::OutOfMemory, "{nr} frames"),
                }
            }
            Action::ResizeExact {
                flags,
                nr,
                new_nr,
                node,
                keep,
            } => {
                let gfp = FLAGS[flags];
                match b.alloc_pages_exact(node, gfp, nr) {
                    Ok(pfn) => {
                        let size = resize_exact_checked(&b, pfn, nr, new_nr);
                        for (p, o) in exact_pieces(pfn, size) {
                            assert_eq!(b.allocated_block(p), Some((p, o)));
                        }
                        if keep {
                            for (p, o) in exact_pieces(pfn, size) {
                                let live = owner.adopt(
                                    p.as_u64(),
                                    o.get(),
                                    gfp == GfpFlags::HIGHUSER_MOVABLE,
                                );
                                b.set_page_private(p, live.private).unwrap();
                            }
                        } else {
                            b.free_pages_exact(pfn, size).unwrap();
                        }
                    }
                    Err(e) => assert_eq!(e, AllocError::OutOfMemory, "{nr} frames"),
                }
            }
            Action::AllocMovable { order, node, mover } => {
                let gfp = GfpFlags::HIGHUSER_MOVABLE;
                match b.alloc_pages_node(node, gfp, Order::new(order)) {
                    Ok(pfn) => {
                        assert!(present(pfn.as_u64(), order));
                        if mover {
                            adopt(&b, owner, id, pfn, order, gfp);
                        } else {
                            let live = owner.adopt(pfn.as_u64(), order, true);
                            b.set_page_private(pfn, live.private).unwrap();
                        }
                    }
                    Err(e) => assert_eq!(e, AllocError::OutOfMemory, "order {order}"),
                }
            }
            Action::Free { pick } => {
                let Some((pfn, l)) = owner.pick(pick) else {
                    continue;
                };
                owner.release(pfn);
                b.free_pages(Pfn::new(pfn), Order::new(l.order)).unwrap();
            }
            Action::FreeWrongOrder { pick, delta } => {
                let Some((pfn, l)) = owner.pick(pick) else {
                    continue;
                };
                let wrong = l.order + delta;
                let r = b.free_pages(Pfn::new(pfn), Order::new(wrong));
                assert!(r.is_err(), "wrong order {wrong} for {} accepted", l.order);
            }
            Action::FreeRandom { frame, order } => {
                let pfn = frame & !((1 << order) - 1);
                if owner.blocks().get(&pfn).is_some_and(|l| l.order == order) {
                    continue;
                }
                let free = b.total_free() + b.total_pcp();
                let r = b.free_pages(Pfn::new(pfn), Order::new(order));
                assert!(r.is_err(), "bogus free of {pfn:#x}/{order} accepted");
                if let Err(FreeError::InsideBlock { head }) = r {
                    assert!(owner.blocks().contains_key(&head.as_u64()));
                }
                assert_eq!(b.total_free() + b.total_pcp(), free, "state unchanged");
            }
            Action::DrainAll => b.drain_all_pages(),
            Action::DrainLocal => b.drain_local_pages(),
            Action::Grouping(on) => b.set_mobility_grouping(on),
            Action::Isolate { pb } => {
                let start = pb * 512;
                if b.isolate_range(Pfn::new(start), 512).is_ok() {
                    assert!(!isolated.contains(&start));
                    isolated.push(start);
                }
            }
            Action::Undo { pick } => {
                if isolated.is_empty() {
                    continue;
                }
                let start = isolated.swap_remove(pick % isolated.len());
                b.undo_isolate_range(Pfn::new(start), 512).unwrap();
            }
            Action::Contig { pb, nr } => {
                let (start, nr) = (pb * 512, nr * 512);
                if isolated.iter().any(|&i| i >= start && i < start + nr) {
                    continue;
                }
                let (before, blocks) = (FreeSnapshot::of(&b), owner.blocks());
                match b.alloc_contig_range(Pfn::new(start), nr) {
                    // Whatever lived in the range moved out first (the owner says where);
                    // every frame of it is now an order-0 block of the caller's.
                    Ok(()) => {
                        for p in start..start + nr {
                            assert!(present(p, 0));
                            let live = owner.adopt(p, 0, true);
                            b.set_page_private(Pfn::new(p), live.private).unwrap();
                        }
                    }
                    Err(e) => {
                        before.assert_same_free(&b, &format!("contig {start:#x}+{nr:#x}: {e:?}"));
                        // Blocks it migrated before failing stay where they went (isolate.rs
                        // documents this, as Linux does); their owner moved them, so the
                        // same tags are still live, and the per-step checks see their bytes.
                        let tags = |m: &std::collections::BTreeMap<_, common::owner::Live>| {
                            let mut t: Vec<u64> = m.values().map(|l| l.tag).collect();
                            t.sort_unstable();
                            t
                        };
                        assert_eq!(
                            tags(&owner.blocks()),
                            tags(&blocks),
                            "a failed contig lost a block"
                        );
                    }
                }
            }
            Action::SetMover {
                pick,
                on,
                wrong_order,
            } => {
                let Some((pfn, l)) = owner.pick(pick) else {
                    continue;
                };
                let order = Order::new(if wrong_order { l.order + 1 } else { l.order });
                let before = FreeSnapshot::of(&b);
                let r = b.set_mover(Pfn::new(pfn), order, on.then_some(id));
                if l.movable && !wrong_order {
                    assert_eq!(r, Ok(()));
                    owner.set_mover(pfn, on);
                } else {
                    assert_eq!(r, Err(MoverError::NotMovableBlock), "{pfn:#x} {l:?}");
                }
                before.assert_unchanged(&b, "set_mover");
            }
            Action::MigrateBlock { pick, exclude } => {
                let Some((pfn, l)) = owner.pick(pick) else {
                    continue;
                };
                let (lo, hi) = exclude.map_or((0, 0), |(s, n)| (s, s + n));
                let (before, blocks, counts) =
                    (FreeSnapshot::of(&b), owner.blocks(), owner.counts());
                let r = b.migrate_block(
                    Pfn::new(pfn),
                    Order::new(l.order),
                    exclude.map(|_| (Pfn::new(lo), Pfn::new(hi))),
                );
                let now = owner.counts();
                match r {
                    Ok(dst) => {
                        let d = dst.as_u64();
                        assert!(l.movable && l.mover, "{l:?} moved");
                        assert_eq!(owner.find(l.tag), Some(d), "the owner followed it");
                        assert_eq!(now.moved, counts.moved + 1);
                        assert!(d + (1 << l.order) <= lo || d >= hi, "{d:#x} excluded");
                        assert_eq!(zone_of(d), zone_of(pfn), "moved to another zone");
                        assert!(!isolated.iter().any(|&s| d >= s && d < s + 512));
                        assert_eq!(b.allocated_block(Pfn::new(pfn)).map(|x| x.0.as_u64()), None);
                    }
                    Err(e) => {
                        let want = if !l.movable {
                            MigrateError::NotMovable
                        } else if !l.mover {
                            MigrateError::NoMover
                        } else {
                            e
                        };
                        assert_eq!(e, want, "{pfn:#x} {l:?}");
                        match e {
                            MigrateError::Busy | MigrateError::Refused => assert_eq!(
                                now.declined + now.failed,
                                counts.declined + counts.failed + 1,
                                "{e:?} is the mover's answer"
                            ),
                            MigrateError::NoTarget => {
                                assert_eq!(now.putbacks, counts.putbacks + 1)
                            }
                            MigrateError::NotMovable | MigrateError::NoMover => {
                                assert_eq!(now, counts, "the mover was not asked")
                            }
                            _ => panic!("{pfn:#x} {l:?}: {e:?}"),
                        }
                        before.assert_unchanged(&b, &format!("migrate {pfn:#x}: {e:?}"));
                        assert_eq!(owner.blocks(), blocks, "a failed migration moved blocks");
                    }
                }
            }
            Action::MigrateRandom { frame, order } => {
                let pfn = frame & !((1u64 << order.min(10)) - 1);
                if owner.blocks().get(&pfn).is_some_and(|l| l.order == order) {
                    continue;
                }
                let (before, counts) = (FreeSnapshot::of(&b), owner.counts());
                let r = b.migrate_block(Pfn::new(pfn), Order::new(order), None);
                // A frame whose descriptor is still deferred is in no zone yet.
                let want = if pfn < FRAMES && b.pfn_initialised(Pfn::new(pfn)) {
                    MigrateError::NotAllocated
                } else {
                    MigrateError::OutsideZones
                };
                assert_eq!(r, Err(want), "{pfn:#x}/{order}");
                before.assert_unchanged(&b, "migrate of no block");
                assert_eq!(owner.counts(), counts, "the mover was not asked");
            }
            Action::CompactZone { node, zone, order } => {
                let ty = ZoneType::ALL[zone];
                // Populated now: deferred initialisation may have populated it since boot.
                let populated = b.zone_stats(node, ty).is_some_and(|s| s.managed > 0);
                let want = match order {
                    Some(o) if o > 10 => Some(CompactError::OrderTooLarge { order: o, max: 10 }),
                    _ if node >= 2 => Some(CompactError::NoSuchNode(node)),
                    _ if !populated => Some(CompactError::EmptyZone),
                    _ => None,
                };
                let (before, blocks, counts) =
                    (FreeSnapshot::of(&b), owner.blocks(), owner.counts());
                owner.take_moves();
                match b.compact_zone(node, ty, order) {
                    Ok(r) => {
                        for (src, dst, o) in owner.take_moves() {
                            assert!(dst > src, "compaction moved {src:#x}/{o} down to {dst:#x}");
                        }
                        assert_eq!(want, None, "{node} {ty:?} {order:?}");
                        assert_eq!(r.migrated, owner.counts().moved - counts.moved, "{r:?}");
                        if let (Some(o), CompactOutcome::Success) = (order, r.outcome) {
                            let free = b.extfrag(node, ty).unwrap().free_blocks;
                            assert!(free[o as usize..].iter().any(|&n| n > 0), "{r:?}");
                        }
                    }
                    Err(e) => {
                        assert_eq!(Some(e), want);
                        before.assert_unchanged(&b, "refused compaction");
                        assert_eq!(owner.blocks(), blocks);
                    }
                }
            }
            Action::CompactNode { node } => {
                let (before, counts) = (FreeSnapshot::of(&b), owner.counts());
                match b.compact_node(node) {
                    Ok(moved) => {
                        assert!(node < 2);
                        assert_eq!(moved, owner.counts().moved - counts.moved);
                    }
                    Err(e) => {
                        assert_eq!(e, CompactError::NoSuchNode(node));
                        before.assert_unchanged(&b, "compaction of no node");
                    }
                }
            }
            Action::Behave(bh) => owner.set_behaviour(bh),
            Action::Checkerboard {
                node,
                order,
                blocks,
                every,
                most,
            } => {
                let gfp = GfpFlags::HIGHUSER_MOVABLE;
                let mut got = Vec::new();
                let nodes = if node < 2 { node..node + 1 } else { 0..2 };
                for node in nodes {
                    let gfp = gfp | GfpFlags::THISNODE;
                    for _ in 0..blocks {
                        let Ok(pfn) = b.alloc_pages_node(node, gfp, Order::new(order)) else {
                            break;
                        };
                        adopt(&b, owner, id, pfn, order, gfp);
                        got.push(pfn);
                    }
                }
                got.sort_unstable();
                for (i, pfn) in got.into_iter().enumerate() {
                    if (i % every == 0) != most {
                        owner.release(pfn.as_u64());
                        b.free_pages(pfn, Order::new(order)).unwrap();
                    }
                }
            }
            Action::DeferredStep { node, frames } => {
                deferred_step_checked(&b, node, frames, c.deferred);
            }
        }
        b.verify().unwrap();
        owner.check(&b, id);
        // Whoever migrated (compaction, evacuation, contig, a caller), the block stayed in
        // its zone and went to no isolated pageblock.
        for (src, dst, o) in owner.take_moves() {
            assert_eq!(zone_of(dst), zone_of(src), "{src:#x}/{o} left its zone");
            assert!(
                !isolated
                    .iter()
                    .any(|&s| dst < s + 512 && s < dst + (1 << o)),
                "{src:#x}/{o} moved into an isolated pageblock at {dst:#x}"
            );
        }
        assert_eq!(
            b.total_free() + b.total_pcp() + owner.live_frames(),
            b.total_managed()
        );
    }
    // Complete what is still deferred, checking every step.
    for node in 0..2 {
        while let Ok(p) = b.deferred_init_step(node, 1000) {
            b.verify().unwrap();
            if p.remaining == 0 {
                break;
            }
        }
        assert_eq!(b.deferred_info(node).unwrap().spanned, 0);
    }
    let managed = b.total_managed();
    assert_eq!(managed, PRESENT);
    owner.set_behaviour(Behaviour::default());
    for (pfn, l) in owner.blocks() {
        owner.release(pfn);
        b.free_pages(Pfn::new(pfn), Order::new(l.order)).unwrap();
    }
    for start in isolated {
        b.undo_isolate_range(Pfn::new(start), 512).unwrap();
    }
    b.drain_all_pages();
    b.verify().unwrap();
    assert_eq!(b.total_free(), managed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_with_per_cpu_lists(
        actions in proptest::collection::vec(action(), 1..80),
        movable in any::<bool>(),
        deferred in any::<bool>(),
    ) {
        run(actions, Config { pcp: true, movable, compaction: true, deferred });
    }

    #[test]
    fn model_zone_path_only(
        actions in proptest::collection::vec(action(), 1..80),
        movable in any::<bool>(),
        deferred in any::<bool>(),
    ) {
        run(actions, Config { pcp: false, movable, compaction: true, deferred });
    }

    #[test]
    fn model_without_compaction(
        actions in proptest::collection::vec(action(), 1..80),
        movable in any::<bool>(),
        pcp in any::<bool>(),
        deferred in any::<bool>(),
    ) {
        run(actions, Config { pcp, movable, compaction: false, deferred });
    }
}

/// Found by the state machine: isolating a pageblock while mobility grouping is off, then
/// freeing into it.
#[test]
fn regression_isolate_with_grouping_off() {
    use Action::*;
    let actions = vec![
        Alloc {
            flags: 6,
            order: 0,
            node: 0,
        },
        Free { pick: 0 },
        Alloc {
            flags: 1,
            order: 10,
            node: 0,
        },
        Alloc {
            flags: 0,
            order: 0,
            node: 1,
        },
        Alloc {
            flags: 1,
            order: 0,
            node: 0,
        },
        Alloc {
            flags: 2,
            order: 0,
            node: 0,
        },
        Free {
            pick: 17115388448873904,
        },
        Free {
            pick: 18342168559449498229,
        },
        Alloc {
            flags: 3,
            order: 3,
            node: 0,
        },
        Alloc {
            flags: 0,
            order: 3,
            node: 0,
        },
        Alloc {
            flags: 1,
            order: 2,
            node: 0,
        },
        Alloc {
            flags: 2,
            order: 0,
            node: 1,
        },
        Free {
            pick: 12339782606507103857,
        },
        Alloc {
            flags: 4,
            order: 2,
            node: 0,
        },
        Alloc {
            flags: 4,
            order: 2,
            node: 0,
        },
        Alloc {
            flags: 5,
            order: 1,
            node: 1,
        },
        Grouping(false),
        Alloc {
            flags: 2,
            order: 2,
            node: 1,
        },
        Alloc {
            flags: 6,
            order: 2,
            node: 0,
        },
        Isolate { pb: 3 },
        Alloc {
            flags: 1,
            order: 1,
            node: 0,
        },
        Free {
            pick: 15781438701277829630,
        },
    ];
    run(
        actions,
        Config {
            pcp: true,
            movable: true,
            compaction: true,
            deferred: false,
        },
    );
}
