//! Sparse memmaps with deferred initialisation: banks of RAM scattered over a large span
//! (holes of whole sections between them, ragged bank ends inside sections), part of each
//! node initialised at boot, the rest by steps, by allocations under pressure, or by a
//! second thread while the first allocates. `verify()` runs after every action, and
//! `pfn_valid` must answer for holes and for frames not initialised yet.

use core::mem::MaybeUninit;

use mmkit_addr::host::HostPlatform;
use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{
    memmap_len, memmap_sections, pcp_storage_len, BootFreeError, BuddyAllocator, BuddyConfig,
    DeferredError, GfpFlags, NodeInit,
};
use proptest::prelude::*;

type Buddy = BuddyAllocator<'static, HostPlatform>;

const SECTION: u64 = 1024;

fn frames(start: u64, n: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start * 4096), n * 4096).unwrap()
}

fn leaked<T>(n: usize) -> &'static mut [MaybeUninit<T>] {
    Vec::leak((0..n).map(|_| MaybeUninit::uninit()).collect())
}

/// An allocator over `nodes` (banks per node), nothing handed over yet.
fn machine(nodes: &[&'static [PhysRange]], cfg: BuddyConfig, cpus: usize) -> Buddy {
    let dist: &'static [u8] = &[10, 20];
    let dist1: &'static [u8] = &[20, 10];
    let mut inits: Vec<NodeInit<'static, 'static>> = nodes
        .iter()
        .enumerate()
        .map(|(i, mem)| NodeInit {
            memory: mem,
            distances: if i == 0 { dist } else { dist1 },
            memmap: leaked(memmap_len(mem, cfg.max_order)),
        })
        .collect();
    let pcp = leaked(pcp_storage_len(nodes.len(), cpus));
    BuddyAllocator::new(HostPlatform::new(cpus), cfg, &mut inits, pcp).unwrap()
}

fn in_banks(banks: &[PhysRange], pfn: u64) -> bool {
    banks.iter().any(|r| {
        let f = r.whole_pfns();
        f.start <= pfn && pfn < f.end
    })
}

/// `pfn_valid` for `pfn`, from the banks and each node's deferred boundary.
fn expect_valid(b: &Buddy, nodes: &[&[PhysRange]], pfn: u64) -> bool {
    nodes.iter().enumerate().any(|(nid, banks)| {
        in_banks(banks, pfn) && pfn < b.deferred_info(nid).unwrap().boundary.as_u64()
    })
}

#[test]
fn a_terabyte_of_holes_costs_a_table_entry_per_section() {
    // 16 MiB at 0 and 16 MiB at 1 TiB, one node.
    let banks: &'static [PhysRange] = Vec::leak(vec![frames(0, 4096), frames(1 << 28, 4096)]);
    let len = memmap_len(banks, 10);
    // 2^18 + 4 sections (4 bytes each, four per 16-byte slot), a reverse entry per block
    // (three slots), the shared hole block and eight present sections.
    assert_eq!(len, ((1 << 18) + 4) / 4 + 3 + 9 * 1024);
    assert_eq!(
        memmap_sections(banks, 10).collect::<Vec<_>>(),
        [(0, 4), (1 << 18, (1 << 18) + 4)]
    );
    let cfg = BuddyConfig {
        deferred_init: Some(1),
        ..BuddyConfig::default()
    };
    let b = machine(&[banks], cfg, 1);
    for r in banks {
        b.free_boot_range(*r).unwrap();
    }
    b.finish_boot();
    b.verify().unwrap();
    assert!(b.pfn_valid(Pfn::new(5)));
    assert!(!b.pfn_valid(Pfn::new(5000)), "deferred");
    assert!(!b.pfn_valid(Pfn::new(1 << 20)), "a hole");
    assert!(!b.pfn_valid(Pfn::new((1 << 28) + 5)), "deferred");
    // Completion walks 2^18 sections but writes only the present ones.
    let mut steps = 0;
    while b.deferred_init_step(0, 1 << 30).is_ok() {
        steps += 1;
    }
    assert_eq!(steps, 1);
    b.verify().unwrap();
    assert_eq!(b.total_managed(), 8192);
    assert!(b.pfn_valid(Pfn::new((1 << 28) + 5)));
    assert!(
        !b.pfn_valid(Pfn::new((1 << 28) + 5000)),
        "past the last bank"
    );
    assert!(!b.pfn_valid(Pfn::new(1 << 29)), "outside every node");
    // Completing again, and handing a range over twice, are refused and change nothing.
    let free = b.total_free();
    assert_eq!(b.deferred_init_step(0, 1), Err(DeferredError::Complete));
    assert!(matches!(
        b.free_boot_range(banks[1]),
        Err(BootFreeError::NotReserved { .. })
    ));
    assert_eq!(b.total_free(), free);
    b.verify().unwrap();
}

#[test]
fn one_thread_completes_a_sparse_node_while_another_allocates() {
    let banks: &'static [PhysRange] = Vec::leak(vec![
        frames(100, 20_000),
        frames(64 * SECTION + 7, 30_000),
        frames(200 * SECTION, 16_384),
    ]);
    let cfg = BuddyConfig {
        deferred_init: Some(1),
        ..BuddyConfig::default()
    };
    let b: &'static Buddy = Box::leak(Box::new(machine(&[banks], cfg, 2)));
    for r in banks {
        b.free_boot_range(*r).unwrap();
    }
    b.finish_boot();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let stop = &stop;
        let worker = s.spawn(move || {
            let mut held = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 3000 {
                i += 1;
                let order = Order::new(i % 4);
                if let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, order) {
                    assert!(b.pfn_valid(p), "{p:?}");
                    held.push((p, order));
                }
                if held.len() > 300 || i % 3 == 0 {
                    if let Some((p, o)) = held.pop() {
                        b.free_pages(p, o).unwrap();
                    }
                }
                if i % 512 == 0 {
                    b.verify().unwrap();
                }
            }
            for (p, o) in held {
                b.free_pages(p, o).unwrap();
            }
        });
        loop {
            match b.deferred_init_step(0, 2048) {
                Ok(p) if p.remaining == 0 => break,
                Ok(_) => {}
                Err(DeferredError::Complete) => break,
                Err(e) => panic!("{e:?}"),
            }
            b.verify().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap();
    });
    b.drain_all_pages();
    b.verify().unwrap();
    let present: u64 = banks
        .iter()
        .map(|r| r.whole_pfns().end - r.whole_pfns().start)
        .sum();
    assert_eq!(b.total_managed(), present);
    assert_eq!(b.total_free(), present);
}

#[derive(Debug, Clone)]
enum Action {
    Alloc(u32),
    Free(usize),
    Step { node: usize, frames: u64 },
    Query(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u32..6).prop_map(Action::Alloc),
        3 => any::<usize>().prop_map(Action::Free),
        2 => (0usize..3, 0u64..5000).prop_map(|(node, frames)| Action::Step { node, frames }),
        2 => any::<u64>().prop_map(Action::Query),
    ]
}

/// Banks of one node from `start`: (gap in sections, offset in the section, frames).
fn banks_from(start: u64, shape: &[(u64, u64, u64)]) -> (Vec<PhysRange>, u64) {
    let mut at = start;
    let mut out = Vec::new();
    for &(gap, off, n) in shape {
        let s = at + gap * SECTION + off;
        out.push(frames(s, n));
        at = (s + n).div_ceil(SECTION) * SECTION;
    }
    (out, at)
}

fn shape() -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![3 => 0u64..4, 1 => 4u64..40, 1 => Just(1u64 << 12)],
            0u64..SECTION,
            1u64..6000,
        ),
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn sparse_deferred_machines_keep_every_invariant(
        s0 in shape(),
        s1 in shape(),
        deferred in prop_oneof![1 => Just(None), 3 => (1u64..6000).prop_map(Some)],
        pcp in any::<bool>(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let (n0, end0) = banks_from(0, &s0);
        let (n1, _) = banks_from(end0 + SECTION, &s1);
        let (n0, n1): (&'static [PhysRange], &'static [PhysRange]) = (Vec::leak(n0), Vec::leak(n1));
        let nodes = [n0, n1];
        let cfg = BuddyConfig {
            deferred_init: deferred,
            per_cpu_lists: pcp,
            ..BuddyConfig::default()
        };
        let b = machine(&nodes, cfg, 2);
        // Hand over every bank but the first frame of each (stays reserved).
        for r in n0.iter().chain(n1) {
            let f = r.whole_pfns();
            if f.end - f.start > 1 {
                b.free_boot_range(frames(f.start + 1, f.end - f.start - 1)).unwrap();
            }
        }
        b.finish_boot();
        b.verify().unwrap();
        let all: Vec<PhysRange> = n0.iter().chain(n1).copied().collect();
        let handed: u64 = all.iter().map(|r| r.whole_pfns().end - r.whole_pfns().start - 1).sum();
        let span_end = all.iter().map(|r| r.whole_pfns().end).max().unwrap();
        let mut held: Vec<(Pfn, Order)> = Vec::new();
        for a in actions {
            match a {
                Action::Alloc(o) => {
                    if let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::new(o)) {
                        prop_assert!(b.pfn_valid(p));
                        prop_assert!(in_banks(&all, p.as_u64()));
                        held.push((p, Order::new(o)));
                    }
                }
                Action::Free(i) => {
                    if !held.is_empty() {
                        let (p, o) = held.swap_remove(i % held.len());
                        b.free_pages(p, o).unwrap();
                    }
                }
                Action::Step { node, frames } => {
                    let before = (b.total_managed(), b.total_deferred());
                    match b.deferred_init_step(node, frames) {
                        Ok(p) => prop_assert_eq!(p.remaining, b.deferred_info(node).unwrap().spanned),
                        Err(e) => {
                            let want = if node >= 2 {
                                DeferredError::NoSuchNode(node)
                            } else if frames == 0 {
                                DeferredError::NoFrames
                            } else {
                                DeferredError::Complete
                            };
                            prop_assert_eq!(e, want);
                            prop_assert_eq!((b.total_managed(), b.total_deferred()), before);
                        }
                    }
                }
                Action::Query(x) => {
                    let pfn = x % (span_end + 2 * SECTION);
                    prop_assert_eq!(b.pfn_valid(Pfn::new(pfn)), expect_valid(&b, &nodes, pfn), "{}", pfn);
                }
            }
            b.verify().unwrap();
        }
        for (p, o) in held.drain(..) {
            b.free_pages(p, o).unwrap();
        }
        for node in 0..2 {
            while let Ok(p) = b.deferred_init_step(node, 100_000) {
                b.verify().unwrap();
                if p.remaining == 0 {
                    break;
                }
            }
        }
        prop_assert_eq!(b.total_deferred(), 0);
        prop_assert_eq!(b.total_managed(), handed);
        for r in &all {
            let f = r.whole_pfns();
            prop_assert!(b.pfn_valid(Pfn::new(f.start)));
            prop_assert!(b.pfn_valid(Pfn::new(f.end - 1)));
            prop_assert!(!in_banks(&all, f.end) || b.pfn_valid(Pfn::new(f.end)));
            prop_assert_eq!(b.pfn_valid(Pfn::new(f.end)), in_banks(&all, f.end));
        }
        // Bad input after completion: a range handed twice.
        let r = all[0].whole_pfns();
        if r.end - r.start > 1 {
            let free = b.total_free() + b.total_pcp();
            prop_assert!(b.free_boot_range(frames(r.start + 1, 1)).is_err());
            prop_assert_eq!(b.total_free() + b.total_pcp(), free);
        }
        b.verify().unwrap();
    }
}
