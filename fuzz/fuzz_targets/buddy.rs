//! Fuzz mmkit-buddy: an `Arbitrary` list of actions (allocations with arbitrary flags and
//! orders on arbitrary nodes, frees good and bogus, drains, isolation, contiguous ranges,
//! mobility switches, range and frame calls with extreme frames, counts and orders, and —
//! for migration — movable blocks that name a mover, movers set and cleared, single
//! migrations, compaction of zones and nodes, fragmenting fills, and a mover that is busy,
//! fails, copies and then fails, or refuses, as told) against the model owner of every live
//! block that the buddy's state-machine test uses (`crates/buddy/tests/common/owner.rs`:
//! tags in a simulated memory, copied by the mover). After every step: `verify()`, every
//! live block holds its tag where the owner says it lives and is an allocated block of its
//! order with its mover and private word, no frame is live twice, and free + per-CPU + live
//! frames = managed; refused calls leave the free lists and every block as they were. With
//! deferred memmap initialisation on, steps of it run among the actions, allocations grow
//! nodes on demand, and at the end every node is completed step by step.
#![no_main]

use std::mem::MaybeUninit;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit_addr::host::HostPlatform;
use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{
    exact_pieces, memmap_len, pcp_storage_len, AllocError, BuddyAllocator, BuddyConfig,
    CompactError, CompactOutcome, CoreSize, GfpFlags, IsolateError, MigrateError, MigrateType,
    MoverError, NodeInit, PageDesc, PerCpuPages, ZoneType,
};

#[path = "../../crates/buddy/tests/common/owner.rs"]
mod owner;
use owner::{deferred_step_checked, resize_exact_checked, Behaviour, FreeSnapshot, Owner};

#[derive(Arbitrary, Debug)]
enum Action {
    Alloc {
        flags: u16,
        order: u8,
        node: u8,
    },
    /// `alloc_pages_exact`: kept as its pieces, or freed at once with `free_pages_exact`
    /// (after a refused free of one frame too many).
    AllocExact {
        flags: u16,
        nr: u16,
        node: u8,
        keep: bool,
    },
    /// `alloc_pages_exact`, then `resize_pages_exact` in place (after a refused resize with
    /// a count that is not the allocation's); kept as the pieces of its size, or freed.
    ResizeExact {
        flags: u16,
        nr: u16,
        new_nr: u16,
        node: u8,
        keep: bool,
    },
    Free {
        pick: u16,
    },
    FreeBogus {
        frame: u16,
        order: u8,
    },
    DrainAll,
    DrainLocal,
    Isolate {
        pb: u8,
    },
    Undo {
        pick: u8,
    },
    Contig {
        nr: u16,
        flags: u16,
        node: u8,
    },
    Grouping(bool),
    /// A range or frame call with extreme arguments: `op` picks the call, `a` and `b` index
    /// `EXTREMES` for the frame and the count, `order` `EXTREME_ORDERS`.
    Extreme {
        op: u8,
        a: u8,
        b: u8,
        order: u8,
    },
    /// A movable allocation that names the owner as its mover when `mover`.
    AllocMovable {
        order: u8,
        node: u8,
        mover: bool,
    },
    SetMover {
        pick: u16,
        on: bool,
        wrong_order: bool,
    },
    /// Migrate a live block, never into frames `[lo, lo + len)`.
    MigrateBlock {
        pick: u16,
        exclude: Option<(u16, u16)>,
    },
    /// Migrate whatever is at a frame that is no live block's head of that order.
    MigrateRandom {
        frame: u16,
        order: u8,
    },
    CompactZone {
        node: u8,
        zone: u8,
        order: Option<u8>,
    },
    CompactNode {
        node: u8,
    },
    Behave {
        busy_every: u8,
        fail_every: u8,
        copy_fail_every: u8,
        refuse: bool,
    },
    /// Fill node `node` (2: both) with up to `blocks` movable blocks of `order` naming the
    /// mover, then free every `every`-th (`most`: all but every `every`-th).
    Checkerboard {
        node: u8,
        order: u8,
        blocks: u16,
        every: u8,
        most: bool,
    },
    /// One step of deferred memmap initialisation on node `node % 3` (2: no such node).
    DeferredStep {
        node: u8,
        frames: u16,
    },
    /// `pfn_valid` of a frame (the sparse memmap: 8..12 MiB is a whole section of hole,
    /// sharing the hole block; deferred frames are not valid until initialised).
    PfnValid {
        frame: u16,
    },
}

/// Frame numbers and counts at the extremes: 0, 1, a pageblock and one short of it, the
/// nodes' edges (16 MiB, 32 MiB), and the tops of the 40-bit, address-sized and 64-bit spaces.
const EXTREMES: [u64; 12] = [
    0,
    1,
    511,
    512,
    4096,
    8192,
    8191,
    1 << 40,
    (u64::MAX >> 12) - 1,
    u64::MAX >> 12,
    u64::MAX - 1,
    u64::MAX,
];
const EXTREME_ORDERS: [u32; 6] = [0, 1, 10, 11, 15, Order::LIMIT];

#[derive(Arbitrary, Debug)]
struct Input {
    pcp: bool,
    movable: bool,
    compaction: bool,
    /// Boot with deferred memmap initialisation (one max-order block per node at boot).
    deferred: bool,
    actions: Vec<Action>,
}

const MIB: u64 = 1 << 20;

/// Frames of the machine (0..32 MiB, with a hole at 8..12 MiB).
const FRAMES: u64 = 32 * 256;

fn range(s: u64, l: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(s * MIB), l * MIB).unwrap()
}

fuzz_target!(|input: Input| {
    let owner = Owner::new(FRAMES);
    let n0 = [range(0, 8), range(12, 4)];
    let n1 = [range(16, 16)];
    let nodes: [&[PhysRange]; 2] = [&n0, &n1];
    let cfg = BuddyConfig {
        per_cpu_lists: input.pcp,
        movablecore: input.movable.then_some(CoreSize::Percent(25)),
        compaction: input.compaction,
        deferred_init: input.deferred.then_some(1),
        ..BuddyConfig::default()
    };
    let mut mm0: Vec<MaybeUninit<PageDesc>> = (0..memmap_len(&n0, 10))
        .map(|_| MaybeUninit::uninit())
        .collect();
    let mut mm1: Vec<MaybeUninit<PageDesc>> = (0..memmap_len(&n1, 10))
        .map(|_| MaybeUninit::uninit())
        .collect();
    let mut pcp: Vec<MaybeUninit<PerCpuPages>> = (0..pcp_storage_len(2, 2))
        .map(|_| MaybeUninit::uninit())
        .collect();
    let mut inits = [
        NodeInit {
            memory: &n0,
            distances: &[10, 20],
            memmap: &mut mm0,
        },
        NodeInit {
            memory: &n1,
            distances: &[20, 10],
            memmap: &mut mm1,
        },
    ];
    let b = BuddyAllocator::new(HostPlatform::new(2), cfg, &mut inits, &mut pcp).unwrap();
    for mem in nodes {
        for r in mem {
            b.free_boot_range(*r).unwrap();
        }
    }
    b.finish_boot();
    let id = b.register_mover(&owner).unwrap();
    let mut isolated: Vec<u64> = Vec::new();
    // Spanned zones: (node, type, first frame, end frame, populated).
    let zones: Vec<(usize, ZoneType, u64, u64, bool)> = (0..2)
        .flat_map(|n| ZoneType::ALL.iter().map(move |&z| (n, z)))
        .filter_map(|(n, z)| {
            let s = b.zone_stats(n, z)?;
            let start = s.start_pfn.as_u64();
            Some((n, z, start, start + s.spanned, s.managed > 0))
        })
        .collect();
    let zone_of = |p: u64| {
        zones
            .iter()
            .find(|z| (z.2..z.3).contains(&p))
            .map(|z| (z.0, z.1))
    };
    // Take a block the buddy handed out: tag it, store its private word, and name the
    // mover if asked (the block must be movable then).
    let adopt = |p: Pfn, order: u32, movable: bool, mover: bool| {
        let live = owner.adopt(p.as_u64(), order, movable);
        b.set_page_private(p, live.private).unwrap();
        if mover {
            b.set_mover(p, Order::new(order), Some(id)).unwrap();
            owner.set_mover(p.as_u64(), true);
        }
    };
    let is_movable = |g: GfpFlags| g.migrate_type() == Ok(MigrateType::Movable);
    for a in input.actions.into_iter().take(200) {
        match a {
            Action::Alloc { flags, order, node } => {
                let gfp = GfpFlags::from_bits_truncate(u32::from(flags)) & !GfpFlags::ZERO;
                let order = u32::from(order % 12);
                match b.alloc_pages_node(usize::from(node % 3), gfp, Order::new(order)) {
                    Ok(p) => {
                        assert!(!isolated
                            .iter()
                            .any(|&s| p.as_u64() >= s && p.as_u64() < s + 512));
                        adopt(p, order, is_movable(gfp), false);
                    }
                    Err(AllocError::OrderTooLarge { .. }) => assert!(order > 10),
                    Err(_) => {}
                }
            }
            Action::AllocExact {
                flags,
                nr,
                node,
                keep,
            } => {
                let gfp = GfpFlags::from_bits_truncate(u32::from(flags)) & !GfpFlags::ZERO;
                let nr = u64::from(nr % 1100);
                match b.alloc_pages_exact(usize::from(node % 3), gfp, nr) {
                    Ok(p) if keep => {
                        for (q, o) in exact_pieces(p, nr) {
                            adopt(q, o.get(), is_movable(gfp), false);
                        }
                    }
                    Ok(p) => {
                        let before = b.total_free() + b.total_pcp();
                        if nr < 1024 && !(nr + 1).is_power_of_two() {
                            assert!(b.free_pages_exact(p, nr + 1).is_err());
                            assert_eq!(b.total_free() + b.total_pcp(), before);
                        }
                        b.free_pages_exact(p, nr).unwrap();
                    }
                    Err(AllocError::NoPages) => assert_eq!(nr, 0),
                    Err(AllocError::OrderTooLarge { .. }) => assert!(nr > 1024),
                    Err(_) => {}
                }
            }
            Action::ResizeExact {
                flags,
                nr,
                new_nr,
                node,
                keep,
            } => {
                let gfp = GfpFlags::from_bits_truncate(u32::from(flags)) & !GfpFlags::ZERO;
                let (nr, new_nr) = (u64::from(nr % 1100).max(1), u64::from(new_nr % 1100).max(1));
                if let Ok(p) = b.alloc_pages_exact(usize::from(node % 3), gfp, nr) {
                    let size = resize_exact_checked(&b, p, nr, new_nr);
                    if keep {
                        for (q, o) in exact_pieces(p, size) {
                            adopt(q, o.get(), is_movable(gfp), false);
                        }
                    } else {
                        b.free_pages_exact(p, size).unwrap();
                    }
                }
            }
            Action::Free { pick } => {
                if let Some((p, l)) = owner.pick(usize::from(pick)) {
                    owner.release(p);
                    b.free_pages(Pfn::new(p), Order::new(l.order)).unwrap();
                }
            }
            Action::FreeBogus { frame, order } => {
                let order = u32::from(order % 12);
                let p = u64::from(frame) & !((1u64 << order) - 1);
                if owner.blocks().get(&p).map(|l| l.order) != Some(order) {
                    let before = b.total_free() + b.total_pcp();
                    assert!(b.free_pages(Pfn::new(p), Order::new(order)).is_err());
                    assert_eq!(b.total_free() + b.total_pcp(), before);
                }
            }
            Action::DrainAll => b.drain_all_pages(),
            Action::DrainLocal => b.drain_local_pages(),
            Action::Isolate { pb } => {
                let s = u64::from(pb % 64) * 512;
                if b.isolate_range(Pfn::new(s), 512).is_ok() {
                    isolated.push(s);
                }
            }
            Action::Undo { pick } => {
                if !isolated.is_empty() {
                    let s = isolated.swap_remove(usize::from(pick) % isolated.len());
                    b.undo_isolate_range(Pfn::new(s), 512).unwrap();
                }
            }
            Action::Contig { nr, flags, node } => {
                let nr = u64::from(nr % 3000) + 1;
                let gfp = GfpFlags::from_bits_truncate(u32::from(flags)) & !GfpFlags::ZERO;
                match b.alloc_contig_pages(nr, gfp, usize::from(node % 3)) {
                    Ok(p) => {
                        for f in p.as_u64()..p.as_u64() + nr {
                            adopt(Pfn::new(f), 0, true, false);
                        }
                    }
                    // A bad request is named as such, never as a bad range.
                    Err(e) => assert_ne!(e, IsolateError::BadRange, "nr {nr} is never 0"),
                }
            }
            Action::Grouping(on) => b.set_mobility_grouping(on),
            Action::AllocMovable { order, node, mover } => {
                let order = u32::from(order % 11);
                let gfp = GfpFlags::HIGHUSER_MOVABLE;
                if let Ok(p) = b.alloc_pages_node(usize::from(node % 2), gfp, Order::new(order)) {
                    adopt(p, order, true, mover);
                }
            }
            Action::SetMover {
                pick,
                on,
                wrong_order,
            } => {
                if let Some((p, l)) = owner.pick(usize::from(pick)) {
                    let order = Order::new(l.order + u32::from(wrong_order));
                    let before = FreeSnapshot::of(&b);
                    let r = b.set_mover(Pfn::new(p), order, on.then_some(id));
                    if l.movable && !wrong_order {
                        assert_eq!(r, Ok(()));
                        owner.set_mover(p, on);
                    } else {
                        assert_eq!(r, Err(MoverError::NotMovableBlock), "{p:#x} {l:?}");
                    }
                    before.assert_unchanged(&b, "set_mover");
                }
            }
            Action::MigrateBlock { pick, exclude } => {
                let Some((p, l)) = owner.pick(usize::from(pick)) else {
                    continue;
                };
                let (lo, hi) =
                    exclude.map_or((0, 0), |(s, n)| (u64::from(s), u64::from(s) + u64::from(n)));
                let (before, blocks, counts) =
                    (FreeSnapshot::of(&b), owner.blocks(), owner.counts());
                let r = b.migrate_block(
                    Pfn::new(p),
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
                        assert_eq!(zone_of(d), zone_of(p), "moved to another zone");
                        assert!(!isolated.iter().any(|&s| d >= s && d < s + 512));
                    }
                    Err(e) => {
                        match e {
                            MigrateError::NotMovable => assert!(!l.movable),
                            MigrateError::NoMover => assert!(l.movable && !l.mover),
                            MigrateError::Busy | MigrateError::Refused => assert_eq!(
                                now.declined + now.failed,
                                counts.declined + counts.failed + 1,
                                "{e:?} is the mover's answer"
                            ),
                            MigrateError::NoTarget => assert_eq!(now.putbacks, counts.putbacks + 1),
                            _ => panic!("{p:#x} {l:?}: {e:?}"),
                        }
                        before.assert_unchanged(&b, &format!("migrate {p:#x}: {e:?}"));
                        assert_eq!(owner.blocks(), blocks, "a failed migration moved blocks");
                    }
                }
            }
            Action::MigrateRandom { frame, order } => {
                let order = u32::from(order % 13);
                let p = u64::from(frame) & !((1u64 << order.min(10)) - 1);
                if owner.blocks().get(&p).is_none_or(|l| l.order != order) {
                    let (before, counts) = (FreeSnapshot::of(&b), owner.counts());
                    // A frame whose descriptor is still deferred is in no zone yet.
                    let want = if p < FRAMES && b.pfn_initialised(Pfn::new(p)) {
                        MigrateError::NotAllocated
                    } else {
                        MigrateError::OutsideZones
                    };
                    assert_eq!(
                        b.migrate_block(Pfn::new(p), Order::new(order), None),
                        Err(want)
                    );
                    before.assert_unchanged(&b, "migrate of no block");
                    assert_eq!(owner.counts(), counts, "the mover was not asked");
                }
            }
            Action::CompactZone { node, zone, order } => {
                let (node, ty) = (usize::from(node % 3), ZoneType::ALL[usize::from(zone % 4)]);
                let order = order.map(|o| u32::from(o % 12));
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
                let node = usize::from(node % 3);
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
            Action::Behave {
                busy_every,
                fail_every,
                copy_fail_every,
                refuse,
            } => owner.set_behaviour(Behaviour {
                busy_every: u32::from(busy_every % 8),
                fail_every: u32::from(fail_every % 8),
                copy_fail_every: u32::from(copy_fail_every % 8),
                refuse,
            }),
            Action::Checkerboard {
                node,
                order,
                blocks,
                every,
                most,
            } => {
                let (order, every) = (u32::from(order % 4), usize::from(every % 4) + 2);
                let gfp = GfpFlags::HIGHUSER_MOVABLE | GfpFlags::THISNODE;
                let mut got = Vec::new();
                let nodes = if node % 3 < 2 {
                    usize::from(node % 3)..usize::from(node % 3) + 1
                } else {
                    0..2
                };
                for n in nodes {
                    for _ in 0..blocks % 4096 {
                        let Ok(p) = b.alloc_pages_node(n, gfp, Order::new(order)) else {
                            break;
                        };
                        adopt(p, order, true, true);
                        got.push(p);
                    }
                }
                got.sort_unstable();
                for (i, p) in got.into_iter().enumerate() {
                    if (i % every == 0) != most {
                        owner.release(p.as_u64());
                        b.free_pages(p, Order::new(order)).unwrap();
                    }
                }
            }
            Action::Extreme {
                op,
                a,
                b: bi,
                order,
            } => {
                let x = EXTREMES[usize::from(a) % EXTREMES.len()];
                let n = EXTREMES[usize::from(bi) % EXTREMES.len()];
                let order = EXTREME_ORDERS[usize::from(order) % EXTREME_ORDERS.len()];
                let (start, o) = (Pfn::new(x), Order::new(order));
                let in_use = |isolated: &[u64]| {
                    n == 0
                        || x.checked_add(n).is_none_or(|e| {
                            owner.overlaps_range(x, e)
                                || isolated.iter().any(|&s| s < e && x < s + 512)
                        })
                };
                match op % 8 {
                    0 => match b.alloc_contig_pages(
                        x,
                        GfpFlags::HIGHUSER_MOVABLE,
                        usize::from(bi % 3),
                    ) {
                        Ok(p) => {
                            for f in p.as_u64()..p.as_u64() + x {
                                adopt(Pfn::new(f), 0, true, false);
                            }
                        }
                        // Zero pages is the only bad range.
                        Err(e) => assert_eq!(e == IsolateError::BadRange, x == 0, "{x:#x}: {e:?}"),
                    },
                    1 => {
                        // An isolation that works is undone at once (the model tracks only
                        // the single-pageblock isolations above).
                        if !in_use(&isolated) && b.isolate_range(start, n).is_ok() {
                            b.undo_isolate_range(start, n).unwrap();
                        }
                    }
                    2 => {
                        let _ = b.test_range_isolated(start, n);
                    }
                    3 => {
                        if !in_use(&isolated) {
                            assert!(b.undo_isolate_range(start, n).is_err(), "{x:#x}+{n:#x}");
                        }
                    }
                    4 => {
                        let (before, blocks) = (FreeSnapshot::of(&b), owner.blocks());
                        match b.alloc_contig_range(start, n) {
                            Ok(()) => {
                                for f in x..x + n {
                                    adopt(Pfn::new(f), 0, true, false);
                                }
                            }
                            Err(e) => {
                                // Blocks migrated before the failure stay moved (isolate.rs).
                                before.assert_same_free(&b, &format!("contig {x:#x}: {e:?}"));
                                let tags = |m: &std::collections::BTreeMap<u64, owner::Live>| {
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
                    5 => {
                        if b.free_contig_range(start, n).is_ok() {
                            for f in x..x + n {
                                assert_eq!(owner.release(f).order, 0, "freed {f:#x} not ours");
                            }
                        }
                    }
                    6 => {
                        if owner.blocks().get(&x).map(|l| l.order) != Some(order) {
                            assert!(b.free_pages(start, o).is_err(), "{x:#x} order {order}");
                        }
                    }
                    _ => {
                        let _ = (b.pageblock_migratetype(start), b.pfn_node(start));
                        let _ = (b.allocated_block(start), b.page_private(start));
                        let _ = b.page_private_fast(start);
                        let _ = b.free_pages_at_order(order);
                        if let Ok(p) = b.alloc_pages_node(usize::from(a), GfpFlags::KERNEL, o) {
                            assert!(order <= 10, "order {order} allocated");
                            adopt(p, order, false, false);
                        }
                    }
                }
            }
            Action::DeferredStep { node, frames } => {
                let (node, frames) = (usize::from(node % 3), u64::from(frames));
                deferred_step_checked(&b, node, frames, input.deferred);
            }
            Action::PfnValid { frame } => {
                let p = u64::from(frame) % (FRAMES + 1024);
                let memory = nodes.iter().flat_map(|n| n.iter()).any(|r| {
                    let f = r.whole_pfns();
                    f.start <= p && p < f.end
                });
                assert_eq!(
                    b.pfn_valid(Pfn::new(p)),
                    memory && b.pfn_initialised(Pfn::new(p)),
                    "pfn_valid({p})"
                );
            }
        }
        b.verify().unwrap();
        owner.check(&b, id);
        // Whoever migrated, the block stayed in its zone and out of isolated pageblocks.
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
    // Complete what is still deferred, checking every step: then every present frame (0..8
    // and 12..32 MiB) is managed.
    for node in 0..2 {
        while let Ok(p) = b.deferred_init_step(node, 1000) {
            b.verify().unwrap();
            if p.remaining == 0 {
                break;
            }
        }
    }
    let managed = b.total_managed();
    assert_eq!(managed, 28 * 256);
    owner.set_behaviour(Behaviour::default());
    for (p, l) in owner.blocks() {
        owner.release(p);
        b.free_pages(Pfn::new(p), Order::new(l.order)).unwrap();
    }
    for s in isolated {
        b.undo_isolate_range(Pfn::new(s), 512).unwrap();
    }
    b.drain_all_pages();
    b.verify().unwrap();
    assert_eq!(b.total_free(), managed);
});
