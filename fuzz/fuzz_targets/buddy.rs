//! Fuzz mmkit-buddy: an `Arbitrary` list of actions (allocations with arbitrary flags and
//! orders on arbitrary nodes, frees good and bogus, drains, isolation, contiguous ranges,
//! mobility switches, and range and frame calls with extreme frames, counts and orders)
//! against a model of allocated blocks, with `verify()` after every step.
#![no_main]

use std::collections::BTreeMap;
use std::mem::MaybeUninit;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit_addr::host::HostPlatform;
use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{
    memmap_len, pcp_storage_len, AllocError, BuddyAllocator, BuddyConfig, CoreSize, GfpFlags,
    IsolateError, NodeInit, PageDesc, PerCpuPages,
};

#[derive(Arbitrary, Debug)]
enum Action {
    Alloc {
        flags: u16,
        order: u8,
        node: u8,
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
    actions: Vec<Action>,
}

const MIB: u64 = 1 << 20;

fn range(s: u64, l: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(s * MIB), l * MIB).unwrap()
}

fuzz_target!(|input: Input| {
    let n0 = [range(0, 8), range(12, 4)];
    let n1 = [range(16, 16)];
    let nodes: [&[PhysRange]; 2] = [&n0, &n1];
    let cfg = BuddyConfig {
        per_cpu_lists: input.pcp,
        movablecore: input.movable.then_some(CoreSize::Percent(25)),
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
    let managed = b.total_managed();
    let mut model: BTreeMap<u64, u32> = BTreeMap::new();
    let mut isolated: Vec<u64> = Vec::new();
    let overlaps = |m: &BTreeMap<u64, u32>, p: u64, o: u32| {
        m.range(..p + (1 << o))
            .next_back()
            .is_some_and(|(&h, &ho)| h + (1 << ho) > p)
    };
    for a in input.actions.into_iter().take(200) {
        match a {
            Action::Alloc { flags, order, node } => {
                let gfp = GfpFlags::from_bits_truncate(u32::from(flags)) & !GfpFlags::ZERO;
                let order = u32::from(order % 12);
                match b.alloc_pages_node(usize::from(node % 3), gfp, Order::new(order)) {
                    Ok(p) => {
                        let p = p.as_u64();
                        assert_eq!(p % (1 << order), 0);
                        assert!(!overlaps(&model, p, order), "double hand-out {p:#x}");
                        assert!(!isolated.iter().any(|&s| p >= s && p < s + 512));
                        model.insert(p, order);
                    }
                    Err(AllocError::OrderTooLarge { .. }) => assert!(order > 10),
                    Err(_) => {}
                }
            }
            Action::Free { pick } => {
                if let Some((&p, &o)) = model.iter().nth(usize::from(pick) % model.len().max(1)) {
                    b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
                    model.remove(&p);
                }
            }
            Action::FreeBogus { frame, order } => {
                let order = u32::from(order % 12);
                let p = u64::from(frame) & !((1u64 << order) - 1);
                if model.get(&p) != Some(&order) {
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
                            assert!(!overlaps(&model, f, 0));
                            model.insert(f, 0);
                        }
                    }
                    // A bad request is named as such, never as a bad range.
                    Err(e) => assert_ne!(e, IsolateError::BadRange, "nr {nr} is never 0"),
                }
            }
            Action::Grouping(on) => b.set_mobility_grouping(on),
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
                let in_use = |m: &BTreeMap<u64, u32>, isolated: &[u64]| {
                    n == 0
                        || x.checked_add(n).is_none_or(|e| {
                            m.range(..e)
                                .next_back()
                                .is_some_and(|(&h, &ho)| h + (1 << ho) > x)
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
                                assert!(!overlaps(&model, f, 0));
                                model.insert(f, 0);
                            }
                        }
                        // Zero pages is the only bad range.
                        Err(e) => assert_eq!(e == IsolateError::BadRange, x == 0, "{x:#x}: {e:?}"),
                    },
                    1 => {
                        // An isolation that works is undone at once (the model tracks only
                        // the single-pageblock isolations above).
                        if !in_use(&model, &isolated) && b.isolate_range(start, n).is_ok() {
                            b.undo_isolate_range(start, n).unwrap();
                        }
                    }
                    2 => {
                        let _ = b.test_range_isolated(start, n);
                    }
                    3 => {
                        if !in_use(&model, &isolated) {
                            assert!(b.undo_isolate_range(start, n).is_err(), "{x:#x}+{n:#x}");
                        }
                    }
                    4 => {
                        if b.alloc_contig_range(start, n).is_ok() {
                            for f in x..x + n {
                                assert!(!overlaps(&model, f, 0));
                                model.insert(f, 0);
                            }
                        }
                    }
                    5 => {
                        if b.free_contig_range(start, n).is_ok() {
                            for f in x..x + n {
                                assert_eq!(model.remove(&f), Some(0), "freed {f:#x} not ours");
                            }
                        }
                    }
                    6 => {
                        if model.get(&x) != Some(&order) {
                            assert!(b.free_pages(start, o).is_err(), "{x:#x} order {order}");
                        }
                    }
                    _ => {
                        let _ = (b.pageblock_migratetype(start), b.pfn_node(start));
                        let _ = (b.allocated_block(start), b.page_private(start));
                        let _ = b.page_private_unchecked(start);
                        let _ = b.free_pages_at_order(order);
                        if let Ok(p) = b.alloc_pages_node(usize::from(a), GfpFlags::KERNEL, o) {
                            assert!(order <= 10, "order {order} allocated");
                            assert!(!overlaps(&model, p.as_u64(), order));
                            model.insert(p.as_u64(), order);
                        }
                    }
                }
            }
        }
        b.verify().unwrap();
        let allocated: u64 = model.values().map(|&o| 1u64 << o).sum();
        assert_eq!(b.total_free() + b.total_pcp() + allocated, managed);
    }
    for (&p, &o) in &model {
        b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
    }
    for s in isolated {
        b.undo_isolate_range(Pfn::new(s), 512).unwrap();
    }
    b.drain_all_pages();
    b.verify().unwrap();
    assert_eq!(b.total_free(), managed);
});
