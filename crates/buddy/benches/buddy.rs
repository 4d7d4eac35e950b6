//! Criterion benches: mmkit-buddy beside `buddy_system_allocator`'s `FrameAllocator` (the
//! spin-locked `LockedFrameAllocator`, its thread-safe form) on the same workloads in the
//! same run.
//!
//! * `order0/pcp`, `order0/zone`: one order-0 alloc + free (per-CPU lists on / off);
//! * `order0_batch64`: 64 order-0 allocations then 64 frees;
//! * `order3`, `order9`: one alloc + free of that order;
//! * `long_lists`: order-0 alloc + free with every other frame of 256 MiB allocated, so the
//!   order-0 free list holds 32768 blocks (zone path for mmkit);
//! * `two_threads`: two threads each doing order-0 alloc + free pairs at once.
//!
//! mmkit runs on two platforms: `mmkit_kernel_*` on `KernelCpus` (the bench thread bound to
//! CPU 0, the interrupt guard a per-CPU flag: what a kernel pays), `mmkit_*` on the emulated
//! host platform (`HostPlatform`, whose interrupt guard is a per-CPU lock). `two_threads`
//! runs on the host platform only.
//!
//! Run: `cargo bench -p mmkit-buddy --bench buddy`

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::sync::{Arc, Barrier, Once};
use std::time::{Duration, Instant};

use buddy_system_allocator::LockedFrameAllocator;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmkit_addr::host::{HostPlatform, KernelCpus};
use mmkit_addr::{IrqControl, Order, PhysAddr, PhysRange};
use mmkit_buddy::{
    memmap_len, pcp_storage_len, BuddyAllocator, BuddyConfig, GfpFlags, NodeInit, PageDesc,
    PerCpuPages,
};

/// The kernel-like platform (threads bound to CPU ids, a per-CPU flag as the interrupt
/// guard): the bench thread binds CPU 0 once, for the whole run.
static KERNEL: KernelCpus<2> = KernelCpus::new();

fn bind_bench_thread() {
    static BIND: Once = Once::new();
    BIND.call_once(|| std::mem::forget(KERNEL.bind(0).expect("the bench thread binds CPU 0")));
}

const BASE: u64 = 16 << 20;
const SIZE: u64 = 256 << 20;
const FRAMES: usize = (SIZE >> 12) as usize;

fn mmkit(pcp: bool, cpus: usize) -> BuddyAllocator<'static, HostPlatform> {
    mmkit_on(HostPlatform::new(cpus), pcp, cpus)
}

fn mmkit_kernel(pcp: bool) -> BuddyAllocator<'static, &'static KernelCpus<2>> {
    bind_bench_thread();
    mmkit_on(&KERNEL, pcp, 2)
}

fn mmkit_on<P: IrqControl>(platform: P, pcp: bool, cpus: usize) -> BuddyAllocator<'static, P> {
    let ram: &'static [PhysRange] = Box::leak(Box::new([PhysRange::from_start_size(
        PhysAddr::new(BASE),
        SIZE,
    )
    .unwrap()]));
    let cfg = BuddyConfig {
        per_cpu_lists: pcp,
        ..BuddyConfig::default()
    };
    let mm: &'static mut [MaybeUninit<PageDesc>] = Box::leak(
        (0..memmap_len(ram, cfg.max_order))
            .map(|_| MaybeUninit::uninit())
            .collect(),
    );
    let pcps: &'static mut [MaybeUninit<PerCpuPages>] = Box::leak(
        (0..pcp_storage_len(1, cpus))
            .map(|_| MaybeUninit::uninit())
            .collect(),
    );
    let mut nodes = [NodeInit {
        memory: ram,
        distances: &[10],
        memmap: mm,
    }];
    let b = BuddyAllocator::new(platform, cfg, &mut nodes, pcps).unwrap();
    b.free_boot_range(ram[0]).unwrap();
    b.finish_boot();
    b
}

fn peer() -> LockedFrameAllocator {
    // The default ORDER (32): buddy_system_allocator needs ORDER > log2(total frames) or
    // merged blocks above its top class are lost.
    let f = LockedFrameAllocator::<32>::new();
    let first = (BASE >> 12) as usize;
    f.lock().add_frame(first, first + FRAMES);
    f
}

fn alloc_free(c: &mut Criterion, group: &str, order: u32) {
    let mut g = c.benchmark_group(group);
    for (name, pcp) in [("mmkit_kernel_pcp", true), ("mmkit_kernel_zone", false)] {
        if order > 3 && pcp {
            continue;
        }
        let b = mmkit_kernel(pcp);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let p = b.alloc_pages(GfpFlags::KERNEL, Order::new(order)).unwrap();
                b.free_pages(black_box(p), Order::new(order)).unwrap();
            })
        });
    }
    for (name, pcp) in [("mmkit_pcp", true), ("mmkit_zone", false)] {
        if order > 3 && pcp {
            continue;
        }
        let b = mmkit(pcp, 1);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let p = b.alloc_pages(GfpFlags::KERNEL, Order::new(order)).unwrap();
                b.free_pages(black_box(p), Order::new(order)).unwrap();
            })
        });
    }
    let f = peer();
    g.bench_function("buddy_system_allocator", |bench| {
        bench.iter(|| {
            let p = f.lock().alloc(1 << order).unwrap();
            f.lock().dealloc(black_box(p), 1 << order);
        })
    });
    g.finish();
}

fn order0(c: &mut Criterion) {
    alloc_free(c, "order0", 0);
}

fn order3(c: &mut Criterion) {
    alloc_free(c, "order3", 3);
}

fn order9(c: &mut Criterion) {
    alloc_free(c, "order9", 9);
}

fn order0_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("order0_batch64");
    let mut buf = Vec::with_capacity(64);
    for (name, pcp) in [("mmkit_kernel_pcp", true), ("mmkit_kernel_zone", false)] {
        let b = mmkit_kernel(pcp);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                for _ in 0..64 {
                    buf.push(b.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap());
                }
                for p in buf.drain(..) {
                    b.free_pages(p, Order::ZERO).unwrap();
                }
            })
        });
    }
    for (name, pcp) in [("mmkit_pcp", true), ("mmkit_zone", false)] {
        let b = mmkit(pcp, 1);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                for _ in 0..64 {
                    buf.push(b.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap());
                }
                for p in buf.drain(..) {
                    b.free_pages(p, Order::ZERO).unwrap();
                }
            })
        });
    }
    let f = peer();
    let mut fbuf = Vec::with_capacity(64);
    g.bench_function("buddy_system_allocator", |bench| {
        bench.iter(|| {
            for _ in 0..64 {
                fbuf.push(f.lock().alloc(1).unwrap());
            }
            for p in fbuf.drain(..) {
                f.lock().dealloc(p, 1);
            }
        })
    });
    g.finish();
}

/// Leave every other frame of `b` allocated: the order-0 free list holds 32768 blocks.
fn fragment<P: IrqControl>(b: &BuddyAllocator<'static, P>) {
    let mut held = Vec::new();
    while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, Order::ZERO) {
        held.push(p);
    }
    for p in held.iter().filter(|p| p.as_u64() % 2 == 0) {
        b.free_pages(*p, Order::ZERO).unwrap();
    }
}

fn long_lists(c: &mut Criterion) {
    let mut g = c.benchmark_group("long_lists");
    let k = mmkit_kernel(false);
    fragment(&k);
    g.bench_function("mmkit_kernel_zone", |bench| {
        bench.iter(|| {
            let p = k.alloc_pages(GfpFlags::ATOMIC, Order::ZERO).unwrap();
            k.free_pages(black_box(p), Order::ZERO).unwrap();
        })
    });
    let b = mmkit(false, 1);
    fragment(&b);
    g.bench_function("mmkit_zone", |bench| {
        bench.iter(|| {
            let p = b.alloc_pages(GfpFlags::ATOMIC, Order::ZERO).unwrap();
            b.free_pages(black_box(p), Order::ZERO).unwrap();
        })
    });
    let f = peer();
    let mut fheld = Vec::new();
    while let Some(p) = f.lock().alloc(1) {
        fheld.push(p);
    }
    for p in fheld.iter().filter(|p| *p % 2 == 0) {
        f.lock().dealloc(*p, 1);
    }
    g.bench_function("buddy_system_allocator", |bench| {
        bench.iter(|| {
            let p = f.lock().alloc(1).unwrap();
            f.lock().dealloc(black_box(p), 1);
        })
    });
    g.finish();
}

/// Run `work(iters)` on two threads at once; the time is the slower thread's.
fn two_threads<S: Sync + Send + 'static>(
    shared: Arc<S>,
    iters: u64,
    work: fn(&S, usize, u64),
) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let (s, bar) = (shared.clone(), barrier.clone());
            std::thread::spawn(move || {
                bar.wait();
                let start = Instant::now();
                work(&s, t, iters);
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap()
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    let b = Arc::new(mmkit(true, 2));
    g.bench_function(BenchmarkId::new("mmkit_pcp", "order0"), |bench| {
        bench.iter_custom(|iters| {
            two_threads(b.clone(), iters, |b, t, n| {
                b.platform().bind_current_thread(t);
                for _ in 0..n {
                    let p = b.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap();
                    b.free_pages(black_box(p), Order::ZERO).unwrap();
                }
            })
        })
    });
    let f = Arc::new(peer());
    g.bench_function(
        BenchmarkId::new("buddy_system_allocator", "order0"),
        |bench| {
            bench.iter_custom(|iters| {
                two_threads(f.clone(), iters, |f, _, n| {
                    for _ in 0..n {
                        let p = f.lock().alloc(1).unwrap();
                        f.lock().dealloc(black_box(p), 1);
                    }
                })
            })
        },
    );
    g.finish();
}

// `criterion_group!` generates an undocumented `pub fn`; the allow is scoped to it.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        targets = order0, order0_batch, order3, order9, long_lists, threads
    }
}
criterion_main!(group::benches);
