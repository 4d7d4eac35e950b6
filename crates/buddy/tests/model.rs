//! A proptest state machine: random allocations, frees (good and bad), drains and mobility
//! switches against a reference model (the set of allocated blocks), with `verify()` after
//! every step.

mod common;

use std::collections::BTreeMap;

use common::{build, mib};
use mmkit_addr::{Order, Pfn};
use mmkit_buddy::{AllocError, BuddyConfig, FreeError, GfpFlags};
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

#[derive(Debug, Clone)]
enum Action {
    Alloc {
        flags: usize,
        order: u32,
        node: usize,
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
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..FLAGS.len(), prop_oneof![4 => 0u32..=3, 1 => 0u32..=11], 0usize..2)
            .prop_map(|(flags, order, node)| Action::Alloc { flags, order, node }),
        5 => any::<usize>().prop_map(|pick| Action::Free { pick }),
        1 => (any::<usize>(), 1u32..3).prop_map(|(pick, delta)| Action::FreeWrongOrder { pick, delta }),
        1 => (0u64..(28 * 256), 0u32..4).prop_map(|(frame, order)| Action::FreeRandom { frame, order }),
        1 => Just(Action::DrainAll),
        1 => Just(Action::DrainLocal),
        1 => (0u64..56).prop_map(|pb| Action::Isolate { pb }),
        1 => any::<usize>().prop_map(|pick| Action::Undo { pick }),
        1 => (0u64..56, 1u64..4).prop_map(|(pb, nr)| Action::Contig { pb, nr }),
        1 => any::<bool>().prop_map(Action::Grouping),
    ]
}

/// Allocated blocks: head -> order.
type Model = BTreeMap<u64, u32>;

fn overlaps(model: &Model, pfn: u64, order: u32) -> bool {
    let end = pfn + (1 << order);
    model
        .range(..end)
        .next_back()
        .is_some_and(|(&h, &o)| h + (1 << o) > pfn)
}

fn present(pfn: u64, order: u32) -> bool {
    // Node 0: 0..8 MiB and 12..16 MiB; node 1: 16..28 MiB (in frames of 4 KiB).
    let end = pfn + (1 << order);
    let inside = |s: u64, e: u64| pfn >= s * 256 && end <= e * 256;
    inside(0, 8) || inside(12, 16) || inside(16, 28)
}

fn run(actions: Vec<Action>, pcp: bool, movable: bool) {
    let cfg = BuddyConfig {
        per_cpu_lists: pcp,
        movablecore: movable.then_some(mmkit_buddy::CoreSize::Percent(30)),
        ..BuddyConfig::default()
    };
    let n0 = [mib(0, 8), mib(12, 4)];
    let n1 = [mib(16, 12)];
    let b = build(&[&n0, &n1], cfg, 2);
    b.verify().unwrap();
    let managed = b.total_managed();
    let movable_zones: Vec<(u64, u64)> = (0..2)
        .filter_map(|n| b.zone_stats(n, mmkit_buddy::ZoneType::Movable))
        .map(|z| (z.start_pfn.as_u64(), z.start_pfn.as_u64() + z.spanned))
        .collect();
    assert_eq!(movable_zones.is_empty(), !movable);
    let mut model = Model::new();
    let mut isolated: Vec<u64> = Vec::new();
    for a in actions {
        match a {
            Action::Alloc { flags, order, node } => {
                match b.alloc_pages_node(node, FLAGS[flags], Order::new(order)) {
                    Ok(pfn) => {
                        let pfn = pfn.as_u64();
                        assert_eq!(pfn % (1 << order), 0, "aligned");
                        assert!(present(pfn, order), "{pfn:#x}/{order} is memory");
                        assert!(
                            !overlaps(&model, pfn, order),
                            "{pfn:#x}/{order} handed out twice"
                        );
                        assert!(
                            !isolated.iter().any(|&pb| pfn >= pb && pfn < pb + 512),
                            "allocated from an isolated pageblock"
                        );
                        if FLAGS[flags] != GfpFlags::HIGHUSER_MOVABLE {
                            assert!(
                                !movable_zones.iter().any(|&(s, e)| pfn >= s && pfn < e),
                                "non-movable allocation in ZONE_MOVABLE"
                            );
                        }
                        if FLAGS[flags] == GfpFlags::GFP_DMA {
                            assert!(pfn < 16 * 256, "GFP_DMA stays below 16 MiB");
                        }
                        model.insert(pfn, order);
                    }
                    Err(AllocError::OrderTooLarge { .. }) => assert!(order > 10),
                    Err(e) => assert_eq!(e, AllocError::OutOfMemory, "order {order}"),
                }
            }
            Action::Free { pick } => {
                if model.is_empty() {
                    continue;
                }
                let (&pfn, &order) = model.iter().nth(pick % model.len()).unwrap();
                b.free_pages(Pfn::new(pfn), Order::new(order)).unwrap();
                model.remove(&pfn);
            }
            Action::FreeWrongOrder { pick, delta } => {
                if model.is_empty() {
                    continue;
                }
                let (&pfn, &order) = model.iter().nth(pick % model.len()).unwrap();
                let wrong = order + delta;
                let r = b.free_pages(Pfn::new(pfn), Order::new(wrong));
                assert!(r.is_err(), "wrong order {wrong} for {order} accepted");
            }
            Action::FreeRandom { frame, order } => {
                let pfn = frame & !((1 << order) - 1);
                if model.get(&pfn) == Some(&order) {
                    continue;
                }
                let free = b.total_free() + b.total_pcp();
                let r = b.free_pages(Pfn::new(pfn), Order::new(order));
                assert!(r.is_err(), "bogus free of {pfn:#x}/{order} accepted");
                if let Err(FreeError::InsideBlock { head }) = r {
                    assert!(model.contains_key(&head.as_u64()));
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
                let start = pb * 512;
                if isolated.iter().any(|&i| i >= start && i < start + nr * 512) {
                    continue;
                }
                if b.alloc_contig_range(Pfn::new(start), nr * 512).is_ok() {
                    for p in start..start + nr * 512 {
                        assert!(!overlaps(&model, p, 0), "contig range overlaps {p:#x}");
                        assert!(present(p, 0));
                        model.insert(p, 0);
                    }
                }
            }
        }
        b.verify().unwrap();
        let allocated: u64 = model.values().map(|&o| 1u64 << o).sum();
        assert_eq!(b.total_free() + b.total_pcp() + allocated, managed);
    }
    for (&pfn, &order) in &model {
        b.free_pages(Pfn::new(pfn), Order::new(order)).unwrap();
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
    ) {
        run(actions, true, movable);
    }

    #[test]
    fn model_zone_path_only(
        actions in proptest::collection::vec(action(), 1..80),
        movable in any::<bool>(),
    ) {
        run(actions, false, movable);
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
    run(actions, true, true);
}
