//! Booting with deferred memmap initialisation (`MmBuilder::deferred_init`) and completing
//! it per node while other CPUs allocate.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, PhysAddr, PhysRange};
use mmkit::buddy::{DeferredError, GfpFlags};
use mmkit::host::HostRam;
use mmkit::{Mm, MmBuilder};

const MIB: u64 = 1 << 20;
/// Two nodes of 96 MiB from 1 MiB, a kernel image reserved in each.
const SPAN: u64 = 192 * MIB;

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start), len).unwrap()
}

fn boot(mem: &HostRam, deferred: Option<u64>) -> Mm<'_, HostPlatform> {
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    let b = unsafe { MmBuilder::new(HostPlatform::new(3), mem) }
        .memory(range(MIB, SPAN - MIB))
        .reserve(range(2 * MIB, 4 * MIB))
        .reserve(range(150 * MIB, MIB))
        .node(1, range(96 * MIB, SPAN - 96 * MIB));
    match deferred {
        Some(frames) => b.deferred_init(frames),
        None => b,
    }
    .boot()
    .expect("boot")
}

/// (free, reserved, hole) frames per the owner table's pageblock census.
fn census(mm: &Mm<'_, HostPlatform>) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    mm.pageblock_census(|c| {
        t.0 += u64::from(c.free);
        t.1 += u64::from(c.reserved);
        t.2 += u64::from(c.hole);
    });
    t
}

#[test]
fn boot_cost_predicts_a_deferred_boot() {
    let m = HostRam::new(PhysAddr::new(0), SPAN);
    // SAFETY: as in `boot`.
    let b = unsafe { MmBuilder::new(HostPlatform::new(3), &m) }
        .memory(range(MIB, SPAN - MIB))
        .node(1, range(96 * MIB, SPAN - 96 * MIB))
        .deferred_init(1);
    let cost = b.boot_cost().unwrap();
    let mm = b.boot().unwrap();
    assert_eq!(cost.total_bytes(), mm.boot_summary().metadata_bytes);
}

#[test]
fn deferred_boot_serves_kmalloc_and_completes_to_the_same_memory() {
    let (m1, m2) = (
        HostRam::new(PhysAddr::new(0), SPAN),
        HostRam::new(PhysAddr::new(0), SPAN),
    );
    let mut full = boot(&m1, None);
    let mut mm = boot(&m2, Some(1));
    mm.verify().unwrap();
    // Before completion the deferred frames read reserved in the owner table.
    assert!(census(&mm).1 > census(&full).1 + 100 * 256);
    let info = mm.meminfo();
    assert!(info.deferred_kb > 100 * 1024, "{info}");
    assert!(
        info.total_kb < 32 * 1024,
        "only the first blocks are managed: {info}"
    );
    assert!(mm.deferred_frames() > 0);
    let text = format!("{info}");
    assert!(text.contains("Deferred:"), "{text}");
    // Reserved memory is the same either way (the owner table itself is the buddy's
    // deferred observer: no extra metadata): deferred memory is not counted as reserved.
    let extra_kb = (mm.boot_summary().metadata_bytes - full.boot_summary().metadata_bytes) / 1024;
    assert_eq!(extra_kb, 0);
    assert_eq!(info.reserved_kb, full.meminfo().reserved_kb + extra_kb);

    let p = mm.kmalloc(64, GfpFlags::KERNEL).unwrap();
    // SAFETY: live, freed once.
    unsafe { mm.kfree(p).unwrap() };

    // One thread per node completes; this thread allocates and frees meanwhile.
    std::thread::scope(|s| {
        let mm = &mm;
        let workers: Vec<_> = (0..2)
            .map(|node| {
                s.spawn(move || {
                    mm.platform().bind_current_thread(node + 1);
                    mm.complete_deferred_init(node)
                })
            })
            .collect();
        let mut held = Vec::new();
        for i in 0..3000u32 {
            if let Ok(p) = mm.alloc_pages(GfpFlags::KERNEL, Order::new(i % 3)) {
                held.push((p, Order::new(i % 3)));
            }
            if i % 2 == 1 {
                if let Some((p, o)) = held.pop() {
                    mm.free_pages(p, o).unwrap();
                }
            }
        }
        for (p, o) in held {
            mm.free_pages(p, o).unwrap();
        }
        for w in workers {
            // A node may have been grown whole on demand before its thread ran.
            match w.join().unwrap() {
                Ok(_) | Err(DeferredError::Complete) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    });
    mm.verify().unwrap();
    assert_eq!(mm.deferred_frames(), 0);
    let (a, b) = (mm.meminfo(), full.meminfo());
    assert_eq!(a.deferred_kb, 0);
    // The owner table caught up with every frame growth freed: reserved and hole frames per
    // the census are those of a boot without deferral, but for the extra metadata page
    // (free frames differ by the kmalloc slab too).
    let (c, f) = (census(&mm), census(&full));
    assert_eq!((c.1, c.2), (f.1 + extra_kb / 4, f.2), "{c:?} {f:?}");
    assert_eq!(
        (a.total_kb + extra_kb, a.reserved_kb),
        (b.total_kb, b.reserved_kb + extra_kb),
        "{a}\n{b}"
    );
    full.verify().unwrap();

    // Completing again, or a node that does not exist, is refused and changes nothing.
    let before = format!("{}", mm.meminfo());
    assert_eq!(mm.complete_deferred_init(0), Err(DeferredError::Complete));
    assert_eq!(mm.deferred_init_step(1, 1024), Err(DeferredError::Complete));
    assert_eq!(
        mm.complete_deferred_init(7),
        Err(DeferredError::NoSuchNode(7))
    );
    assert_eq!(format!("{}", mm.meminfo()), before);
    mm.verify().unwrap();
}

#[test]
fn allocations_grow_a_deferred_boot_until_memory_runs_out() {
    let (m1, m2) = (
        HostRam::new(PhysAddr::new(0), SPAN),
        HostRam::new(PhysAddr::new(0), SPAN),
    );
    let full = boot(&m1, None);
    let mut mm = boot(&m2, Some(1));
    let count = |mm: &Mm<'_, HostPlatform>| {
        let mut got = Vec::new();
        while let Ok(p) = mm.alloc_pages(GfpFlags::KERNEL, Order::new(2)) {
            got.push(p);
        }
        got
    };
    let (a, b) = (count(&mm), count(&full));
    assert_eq!(mm.deferred_frames(), 0, "pressure grew every node");
    assert!(a.len() >= b.len(), "{} < {}", a.len(), b.len());
    for p in a {
        mm.free_pages(p, Order::new(2)).unwrap();
    }
    mm.verify().unwrap();
}

/// Two 64 MiB banks 1 TiB apart, one node each, deferred: the hole costs table entries
/// only; boot, completion on two threads while a third allocates, and the owner table's
/// census all see memory only where the banks are.
#[test]
fn a_terabyte_hole_between_two_deferred_nodes() {
    const TIB: u64 = 1 << 40;
    let m = HostRam::new(PhysAddr::new(0), TIB + 64 * MIB);
    // SAFETY: as in `boot`.
    let b = unsafe { MmBuilder::new(HostPlatform::new(3), &m) }
        .memory(range(MIB, 63 * MIB))
        .memory(range(TIB, 64 * MIB))
        .node(1, range(TIB, 64 * MIB))
        .deferred_init(1);
    let cost = b.boot_cost().unwrap();
    // 2^18 + 16 sections: 1 MiB of table in each of memmap and owner table, and the rest
    // proportional to the 128 MiB of memory.
    assert!(cost.memmap_bytes < (1 << 20) + 3 * MIB, "{cost:?}");
    assert!(cost.owner_table_bytes < (1 << 20) + MIB, "{cost:?}");
    let mut mm = b.boot().unwrap();
    assert_eq!(mm.boot_summary().metadata_bytes, cost.total_bytes());
    let buddy = mm.buddy();
    assert!(buddy.pfn_valid(mmkit::addr::Pfn::new(300)));
    assert!(!buddy.pfn_valid(mmkit::addr::Pfn::new(1 << 20)), "a hole");
    assert!(
        !buddy.pfn_valid(mmkit::addr::Pfn::new((TIB >> 12) + 8000)),
        "deferred"
    );
    std::thread::scope(|s| {
        let mm = &mm;
        for node in 0..2 {
            s.spawn(move || {
                mm.platform().bind_current_thread(node);
                let _ = mm.complete_deferred_init(node);
            });
        }
        s.spawn(move || {
            let mut held = Vec::new();
            for i in 0..2000u32 {
                if let Ok(p) = mm.alloc_pages(GfpFlags::KERNEL, Order::new(i % 3)) {
                    held.push((p, Order::new(i % 3)));
                }
                if i % 2 == 0 {
                    if let Some((p, o)) = held.pop() {
                        mm.free_pages(p, o).unwrap();
                    }
                }
            }
            for (p, o) in held {
                mm.free_pages(p, o).unwrap();
            }
        });
    });
    assert_eq!(mm.deferred_frames(), 0);
    assert!(mm
        .buddy()
        .pfn_valid(mmkit::addr::Pfn::new((TIB >> 12) + 8000)));
    let (free, reserved, hole) = census(&mm);
    // Every frame of the census is accounted for: the span from 0 to the end of the second
    // bank, almost all of it hole; free and reserved only inside the banks.
    assert_eq!(free + reserved + hole, (TIB + 64 * MIB) >> 12);
    assert!(free + reserved <= 127 * 256 + 256, "{free} {reserved}");
    assert!(free > 100 * 256, "{free}");
    mm.verify().unwrap();
}
