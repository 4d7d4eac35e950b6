//! Movable kernel mappings (`Mm::vmalloc_movable`) and the facade's mover, checked through
//! the software MMU: migrations change the translation, never the bytes.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{
    Order, PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr, VirtRange, PAGE_SIZE,
};
use mmkit::buddy::{MigrateError, MigrateType};
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::softmmu::x86_64::X86Walker;
use mmkit::pgtable::softmmu::{Access, Fault, Mode, SoftMmu};
use mmkit::pgtable::TlbInvalidate;
use mmkit::{
    Mm, MmBuilder, MovableError, MoverTlb, NotLoaded, PageUse, VerifyError, VfreeError,
    VmallocCorruption, VmallocError,
};

const MIB: u64 = 1 << 20;
const VMALLOC: u64 = 0xffff_c900_0000_0000;

/// One CPU of the simulated machine: its MMU (TLB included). An access holds the lock from
/// translation to the end of the load or store, as an instruction does; the mover's
/// shootdown takes it too, so it waits for accesses in flight.
struct Cpu {
    mem: &'static HostRam,
    mmu: Mutex<SoftMmu<X86Walker<'static, HostRam>>>,
}

// SAFETY: the software MMU is the only TLB that translates the kernel table in these tests,
// and every access goes through it under the lock `with_tlb` takes.
unsafe impl MoverTlb for Cpu {
    fn with_tlb(&self, f: &mut dyn FnMut(&mut dyn TlbInvalidate)) {
        f(&mut *self.mmu())
    }
}

/// The per-call invalidator given to `vmalloc_movable` / `vfree`: it takes the MMU lock for
/// each invalidation only (the vmalloc lock is held around it, so holding the MMU lock
/// across the call would invert the order the mover uses).
struct Shootdown<'a>(&'a Cpu);

// SAFETY: as for `Cpu`: the software MMU is the only TLB.
unsafe impl TlbInvalidate for Shootdown<'_> {
    fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool) {
        self.0.mmu().invalidate_page(va, size, leaf_only)
    }
    fn invalidate_all(&mut self) {
        self.0.mmu().invalidate_all()
    }
}

impl Cpu {
    fn tlb(&self) -> Shootdown<'_> {
        Shootdown(self)
    }

    fn mmu(&self) -> MutexGuard<'_, SoftMmu<X86Walker<'static, HostRam>>> {
        self.mmu.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Load (`None`) or store a word at `va` through the MMU, as kernel code does; a
    /// not-present fault goes to `Mm::movable_fault` and the access is retried.
    fn access(&self, mm: &Mm<'static, HostPlatform>, va: VirtAddr, store: Option<u64>) -> u64 {
        loop {
            let mut guard = self.mmu();
            let mmu = &mut *guard;
            let kind = if store.is_some() {
                Access::Write
            } else {
                Access::Read
            };
            match mmu.access(va, kind, Mode::Kernel) {
                Ok(pa) => {
                    let r = PhysRange::from_start_size(pa, 8).unwrap();
                    let p = self.mem.phys_to_virt(r).unwrap().as_ptr().cast::<u64>();
                    // SAFETY: `pa` is RAM of the simulated machine, 8-aligned, mapped to a
                    // live movable page; accesses to it are serialised by the MMU lock.
                    return unsafe {
                        match store {
                            Some(v) => {
                                p.write_volatile(v);
                                v
                            }
                            None => p.read_volatile(),
                        }
                    };
                }
                Err(Fault::Translation { .. }) => {}
                Err(f) => panic!("{f:?} at {va:?}"),
            }
            drop(guard);
            assert!(mm.movable_fault(va), "{va:?} is not mapped");
        }
    }

    fn pa(&self, va: VirtAddr) -> PhysAddr {
        self.mmu().access(va, Access::Read, Mode::Kernel).unwrap()
    }
}

/// A machine of `ram` bytes on one node, a vmalloc window of four times that, the facade's
/// mover on.
fn machine(ram: u64) -> (&'static mut Mm<'static, HostPlatform>, &'static Cpu) {
    let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), ram)));
    let mem_range = PhysRange::from_start_size(PhysAddr::new(MIB), ram - MIB).unwrap();
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    let mm = unsafe { MmBuilder::new(HostPlatform::new(4), mem) }
        .memory(mem_range)
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC), 4 * ram).unwrap(),
        )
        .boot()
        .expect("boot");
    let mm = Box::leak(Box::new(mm));
    let root = mm.with_page_table(|pt| pt.root()).unwrap();
    let cpu: &'static Cpu = Box::leak(Box::new(Cpu {
        mem,
        mmu: Mutex::new(SoftMmu::new(X86Walker::new(mem, root, 4))),
    }));
    mm.enable_movable(cpu).unwrap();
    (mm, cpu)
}

fn pattern(page: u64, word: u64) -> u64 {
    0x5eed_0000_0000_0000 ^ (page << 20) ^ word
}

fn fill_page(mm: &Mm<'static, HostPlatform>, cpu: &Cpu, va: VirtAddr, page: u64) {
    for w in [0, 1, 255, 511] {
        cpu.access(
            mm,
            VirtAddr::new(va.as_u64() + w * 8),
            Some(pattern(page, w)),
        );
    }
}

fn check_page(mm: &Mm<'static, HostPlatform>, cpu: &Cpu, va: VirtAddr, page: u64) {
    for w in [0, 1, 255, 511] {
        let got = cpu.access(mm, VirtAddr::new(va.as_u64() + w * 8), None);
        assert_eq!(got, pattern(page, w), "page {page} word {w} at {va:?}");
    }
}

#[test]
fn a_migrated_page_keeps_its_bytes_and_its_address_under_a_new_frame() {
    let (mm, cpu) = machine(64 * MIB);
    let before = mm.meminfo();
    let n = 8;
    let va = mm
        .vmalloc_movable(n * PAGE_SIZE as usize, &mut cpu.tlb())
        .unwrap();
    let page_va = |i: u64| VirtAddr::new(va.as_u64() + i * PAGE_SIZE);
    for i in 0..n as u64 {
        fill_page(mm, cpu, page_va(i), i);
    }
    mm.verify().unwrap();
    let id = mm.movable_stats().mover.unwrap();
    for i in 0..n as u64 {
        let src = mm.vmalloc_to_pfn(page_va(i)).unwrap();
        assert_eq!(mm.buddy().mover_of(src), Some(id));
        assert_eq!(mm.buddy().page_private(src), Ok(page_va(i).as_u64()));
        let owner = mm.page_allocator().owner(src).unwrap();
        assert_eq!(
            (owner.usage, owner.mobility),
            (PageUse::Vmalloc, MigrateType::Movable)
        );
        let dst = mm.buddy().migrate_block(src, Order::ZERO, None).unwrap();
        assert_ne!(dst, src);
        assert_eq!(
            mm.vmalloc_to_pfn(page_va(i)),
            Some(dst),
            "the table changed"
        );
        assert_eq!(cpu.pa(page_va(i)).pfn(), dst, "the TLB was invalidated");
        assert_eq!(
            mm.page_allocator().owner(dst),
            Some(owner),
            "owner followed"
        );
        assert_eq!(mm.page_allocator().owner(src), None);
        assert_eq!(mm.buddy().page_private(dst), Ok(page_va(i).as_u64()));
        assert_eq!(mm.buddy().mover_of(dst), Some(id));
        mm.verify().unwrap();
    }
    for i in 0..n as u64 {
        check_page(mm, cpu, page_va(i), i);
    }
    assert_eq!(mm.movable_stats().migrated, n as u64);
    // verify() cross-checks the reverse map.
    let pfn = mm.vmalloc_to_pfn(va).unwrap();
    mm.buddy().set_page_private(pfn, 0).unwrap();
    assert_eq!(
        mm.verify(),
        Err(VerifyError::Vmalloc(VmallocCorruption::StaleReverseMap(va)))
    );
    mm.buddy().set_page_private(pfn, va.as_u64()).unwrap();
    mm.verify().unwrap();
    mm.vfree(va, &mut cpu.tlb()).unwrap();
    mm.drain_all();
    mm.verify().unwrap();
    assert_eq!(mm.meminfo().pages_kb, before.pages_kb);
    assert_eq!(mm.meminfo().vmalloc_used_kb, 0);
}

#[test]
fn refusals_change_nothing() {
    let (mm, cpu) = machine(32 * MIB);
    assert!(matches!(
        mm.enable_movable(cpu),
        Err(MovableError::AlreadyEnabled(_))
    ));
    assert_eq!(
        mm.vmalloc_movable(0, &mut cpu.tlb()),
        Err(VmallocError::ZeroSize)
    );
    // A page alone in its last-level table stays put: moving it would free the table.
    let lone = mm.vmalloc_movable(1, &mut cpu.tlb()).unwrap();
    let pfn = mm.vmalloc_to_pfn(lone).unwrap();
    assert_eq!(
        mm.buddy().migrate_block(pfn, Order::ZERO, None),
        Err(MigrateError::Busy)
    );
    // With a neighbour in the table it moves, but not from under the vmalloc lock (as an
    // allocation's slow path would call it): the mover answers busy instead of deadlocking.
    let other = mm.vmalloc_movable(1, &mut cpu.tlb()).unwrap();
    let under_lock = mm.with_page_table(|_| mm.buddy().migrate_block(pfn, Order::ZERO, None));
    assert_eq!(under_lock, Some(Err(MigrateError::Busy)));
    assert_eq!(mm.vmalloc_to_pfn(lone), Some(pfn));
    let moved = mm.buddy().migrate_block(pfn, Order::ZERO, None).unwrap();
    assert_eq!(mm.vmalloc_to_pfn(lone), Some(moved));
    mm.verify().unwrap();
    mm.vfree(other, &mut cpu.tlb()).unwrap();
    mm.vfree(lone, &mut cpu.tlb()).unwrap();
    assert_eq!(
        mm.vfree(lone, &mut cpu.tlb()),
        Err(VfreeError::NotAnArea(lone))
    );
    mm.verify().unwrap();

    // Without a mover there is no movable vmalloc.
    let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 16 * MIB)));
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    let plain = unsafe { MmBuilder::new(HostPlatform::new(1), mem) }
        .memory(PhysRange::from_start_size(PhysAddr::new(MIB), 15 * MIB).unwrap())
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC), 16 * MIB).unwrap(),
        )
        .boot()
        .unwrap();
    // SAFETY: no MMU has loaded this table.
    let mut none = unsafe { NotLoaded::new() };
    assert_eq!(
        plain.vmalloc_movable(4096, &mut none),
        Err(VmallocError::MovableNotEnabled)
    );
}

#[test]
fn checkerboard_compaction_makes_ninety_percent_of_free_memory_huge() {
    let (mm, cpu) = machine(256 * MIB);
    let free0 = mm.meminfo().free_kb / 4;
    // Fill 80% of free memory with one-page movable areas, then free every other one.
    let n = free0 * 8 / 10;
    let mut areas = Vec::new();
    for i in 0..n {
        let va = mm.vmalloc_movable(1, &mut cpu.tlb()).unwrap();
        cpu.access(mm, va, Some(pattern(i, 0)));
        areas.push((i, va));
    }
    mm.verify().unwrap();
    let mut kept = Vec::new();
    for (k, (i, va)) in areas.into_iter().enumerate() {
        if k % 2 == 0 {
            mm.vfree(va, &mut cpu.tlb()).unwrap();
        } else {
            kept.push((i, va));
        }
    }
    mm.drain_all();
    mm.verify().unwrap();
    let free = mm.meminfo().free_kb / 4;
    let huge_before = mm.free_pages_at_order(9);
    let moved = mm.buddy().compact_node(0).unwrap();
    mm.drain_all();
    mm.verify().unwrap();
    let huge_after = mm.free_pages_at_order(9);
    let free_after = mm.meminfo().free_kb / 4;
    println!(
        "{n} pages mapped, {} kept; free {free} pages; order-9 obtainable {huge_before} -> \
         {huge_after} pages; {moved} migrated",
        kept.len()
    );
    assert_eq!(
        free_after, free,
        "compaction neither leaks nor invents pages"
    );
    assert!(
        huge_after * 10 >= free_after * 9,
        "only {huge_after} of {free_after} free pages as order-9 blocks"
    );
    assert!(huge_after > huge_before);
    for (i, va) in &kept {
        assert_eq!(cpu.access(mm, *va, None), pattern(*i, 0));
    }
    for (_, va) in kept {
        mm.vfree(va, &mut cpu.tlb()).unwrap();
    }
    mm.drain_all();
    mm.verify().unwrap();
}

#[test]
fn compaction_races_mapping_writing_reading_and_freeing_through_the_addresses() {
    let (owner, cpu) = machine(64 * MIB);
    let mm: &Mm<'static, HostPlatform> = owner;
    let stop = AtomicBool::new(false);
    // Pages the workers mapped: the migrating thread moves them, whether still live or not.
    let published = Mutex::new(Vec::<VirtAddr>::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Relaxed) {
                let va = {
                    let p = published.lock().unwrap();
                    if p.is_empty() {
                        None
                    } else {
                        Some(p[i % p.len()])
                    }
                };
                if let Some(pfn) = va.and_then(|va| mm.vmalloc_to_pfn(va)) {
                    let _ = mm.buddy().migrate_block(pfn, Order::ZERO, None);
                }
                i = i.wrapping_mul(31).wrapping_add(7);
                if i % 64 == 0 {
                    let _ = mm.buddy().compact_node(0);
                }
            }
        });
        let published = &published;
        // Stop the migrating thread however this closure ends: a worker's failure must fail
        // the test, not leave the scope waiting for a thread that never stops.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                s.spawn(move || {
                    for round in 0..40u64 {
                        let mut live = Vec::new();
                        for k in 0..24u64 {
                            let pages = 1 + k % 3;
                            let va = mm
                                .vmalloc_movable((pages * PAGE_SIZE) as usize, &mut cpu.tlb())
                                .unwrap();
                            let tag = (t << 40) | (round << 20) | k;
                            for p in 0..pages {
                                let at = VirtAddr::new(va.as_u64() + p * PAGE_SIZE);
                                cpu.access(mm, at, Some(pattern(tag, p)));
                                published.lock().unwrap().push(at);
                            }
                            live.push((tag, va, pages));
                        }
                        for (j, &(tag, va, pages)) in live.iter().enumerate() {
                            for p in 0..pages {
                                let at = VirtAddr::new(va.as_u64() + p * PAGE_SIZE);
                                assert_eq!(cpu.access(mm, at, None), pattern(tag, p));
                            }
                            if j % 2 == 0 {
                                mm.vfree(va, &mut cpu.tlb()).unwrap();
                            }
                        }
                        for (j, &(tag, va, pages)) in live.iter().enumerate() {
                            if j % 2 == 1 {
                                for p in 0..pages {
                                    let at = VirtAddr::new(va.as_u64() + p * PAGE_SIZE);
                                    assert_eq!(cpu.access(mm, at, None), pattern(tag, p));
                                }
                                mm.vfree(va, &mut cpu.tlb()).unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    let stats = owner.movable_stats();
    println!("{stats:?}");
    assert!(
        stats.migrated > 0,
        "compaction moved nothing while the workers ran"
    );
    owner.drain_all();
    owner.verify().unwrap();
    assert_eq!(owner.meminfo().vmalloc_used_kb, 0);
}
