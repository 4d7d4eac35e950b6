//! Several threads on one `Mm` at once: pages (per-CPU lists), kmalloc (per-CPU arrays),
//! cross-thread frees and vmalloc (its lock), with contents checked and every invariant
//! verified at the end; on the emulated-lock host platform and on `KernelCpus` (one thread
//! per CPU, a plain counter as the interrupt guard), where another CPU keeps shrinking the
//! kmalloc caches through cross-CPU calls meanwhile.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use mmkit::addr::host::{HostPlatform, KernelCpus};
use mmkit::addr::IrqControl;
use mmkit::addr::{Order, PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::{MmBuilder, NotLoaded};

const MIB: u64 = 1 << 20;
const THREADS: usize = 4;

#[test]
fn threads_share_one_mm_without_losing_or_corrupting_memory() {
    share_one_mm(HostPlatform::new(THREADS + 1), |p, cpu| {
        p.bind_current_thread(cpu);
    });
}

static KERNEL: KernelCpus<{ THREADS + 1 }> = KernelCpus::new();

#[test]
fn threads_share_one_mm_on_kernel_like_cpus_while_another_cpu_shrinks() {
    share_one_mm(&KERNEL, |p, cpu| Some(p.bind(cpu).unwrap()));
}

/// The workload on `platform` with `THREADS + 1` CPUs: `bind(platform, cpu)` makes the
/// calling thread CPU `cpu` (and returns what keeps it so). Threads `0..THREADS` allocate and
/// free; CPU `THREADS` shrinks the kmalloc caches meanwhile.
fn share_one_mm<P: IrqControl + Sync, B>(platform: P, bind: impl Fn(&P, usize) -> B + Sync) {
    let mem = HostRam::new(PhysAddr::new(0), 256 * MIB);
    let window =
        VirtRange::from_start_size(VirtAddr::new(0xffff_c900_0000_0000), 64 * MIB).unwrap();
    // Booting allocates too: this thread is the boot CPU until the workers start.
    let boot_cpu = bind(&platform, 0);
    // SAFETY: `mem` is the whole machine, used by nothing else.
    let mut mm = unsafe { MmBuilder::new(platform, &mem) }
        .memory(PhysRange::from_start_size(PhysAddr::new(MIB), 255 * MIB).unwrap())
        .vmalloc_area(X86_64::FOUR_LEVEL, window)
        .boot()
        .unwrap();
    let before = mm.meminfo();
    drop(boot_cpu);
    // Objects handed from one thread to the next, freed by a thread that did not allocate them.
    let handoff: Mutex<Vec<(usize, u8)>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (mm_ref, bind_ref, done_ref) = (&mm, &bind, &done);
        let shrinker = s.spawn(move || {
            let _cpu = bind_ref(mm_ref.platform(), THREADS);
            let mut rounds = 0u64;
            while !done_ref.load(Relaxed) {
                mm_ref.kmalloc_shrink();
                rounds += 1;
                std::thread::yield_now();
            }
            rounds
        });
        // Stop the shrinker however this closure ends: a worker's failure must fail the
        // test, not leave the scope waiting for a thread that never stops.
        struct DoneOnDrop<'a>(&'a AtomicBool);
        impl Drop for DoneOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let done_guard = DoneOnDrop(&done);
        let mut workers = Vec::new();
        for t in 0..THREADS {
            let (mm, handoff, bind) = (&mm, &handoff, &bind);
            workers.push(s.spawn(move || {
                let _cpu = bind(mm.platform(), t);
                // SAFETY: the kernel page table is in no MMU on the host.
                let mut tlb = unsafe { NotLoaded::new() };
                let tag = t as u8 + 1;
                for round in 0..40 {
                    let mut pages = Vec::new();
                    for i in 0..64 {
                        let order = Order::new((i % 4) as u32);
                        if let Ok(pfn) = mm.alloc_pages(GfpFlags::KERNEL, order) {
                            let p = mm.page_address(pfn, order).unwrap();
                            // SAFETY: the block is ours.
                            unsafe { p.as_ptr().write_bytes(tag, order.bytes() as usize) };
                            pages.push((pfn, order, p));
                        }
                    }
                    let mut objs = Vec::new();
                    for i in 0..200 {
                        let size = 8 + (i * 37 + round) % 3000;
                        let p = mm.kmalloc(size, GfpFlags::KERNEL).unwrap();
                        // SAFETY: `size` bytes are ours.
                        unsafe { p.as_ptr().write_bytes(tag, size) };
                        objs.push((p, size));
                    }
                    let area = mm.vmalloc(3 * PAGE_SIZE as usize, &mut tlb).unwrap();
                    for (pfn, order, p) in pages {
                        // SAFETY: still ours; checked then freed.
                        let s = unsafe {
                            std::slice::from_raw_parts(p.as_ptr(), order.bytes() as usize)
                        };
                        assert!(s.iter().all(|&b| b == tag));
                        mm.free_pages(pfn, order).unwrap();
                    }
                    let mut keep = handoff.lock().unwrap();
                    for (p, size) in objs {
                        // SAFETY: ours until freed or handed off.
                        let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
                        assert!(s.iter().all(|&b| b == tag));
                        if size % 5 == 0 {
                            keep.push((p.as_ptr() as usize, tag));
                        } else {
                            // SAFETY: live kmalloc pointer, freed once.
                            unsafe { mm.kfree(p).unwrap() };
                        }
                    }
                    // Free what other threads handed off.
                    let theirs: Vec<_> = keep.iter().copied().filter(|&(_, o)| o != tag).collect();
                    keep.retain(|&(_, o)| o == tag);
                    drop(keep);
                    for (addr, _) in theirs {
                        let p = std::ptr::NonNull::new(addr as *mut u8).unwrap();
                        // SAFETY: handed to us by its allocating thread, freed once.
                        unsafe { mm.kfree(p).unwrap() };
                    }
                    mm.vfree(area, &mut tlb).unwrap();
                }
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
        drop(done_guard);
        assert!(shrinker.join().unwrap() > 0, "the shrinker ran");
    });
    let _cpu = bind(mm.platform(), 0);
    for (addr, _) in handoff.into_inner().unwrap() {
        // SAFETY: the last handed-off objects, freed once.
        unsafe {
            mm.kfree(std::ptr::NonNull::new(addr as *mut u8).unwrap())
                .unwrap()
        };
    }
    mm.drain_all();
    mm.verify().unwrap();
    let after = mm.meminfo();
    assert_eq!(after.pages_kb, [0; 3]);
    assert_eq!(after.vmalloc_used_kb, 0);
    assert_eq!(
        after.free_kb + after.slab_kb + after.page_tables_kb,
        before.free_kb + before.slab_kb + before.page_tables_kb
    );
    // Tearing down frees pages too: still as CPU 0.
    drop(mm);
}
