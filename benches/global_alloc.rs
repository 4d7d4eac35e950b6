//! `GlobalAlloc`-level comparison: mmkit's [`GlobalMm`] against the system allocator (glibc
//! malloc), same workloads in the same run, called through the `GlobalAlloc` trait, and
//! order-0 pages through `Mm`. mmkit runs twice: `mmkit-kernel` on `KernelCpus` (the bench
//! thread bound to CPU 0, the interrupt guard a per-CPU counter: what a kernel pays) and
//! `mmkit` on `HostCpus` (a re-entrant per-CPU lock as the guard).
//!
//! `cargo bench -p mmkit --bench global_alloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion};
use mmkit::addr::{IrqControl, Order};
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::{HostCpus, HostRam, KernelCpus};

use mmkit::{GlobalMm, MmBuilder};

static KERNEL: KernelCpus<1> = KernelCpus::new();

fn mmkit_allocator<P: IrqControl + 'static>(platform: P) -> &'static GlobalMm<P> {
    let ram: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 1 << 30)));
    // SAFETY: `ram` is the whole simulated machine, used by nothing else, and lives forever.
    let mm = unsafe { MmBuilder::new(platform, ram) }
        .memory(PhysRange::from_start_size(PhysAddr::new(1 << 20), (1 << 30) - (1 << 20)).unwrap())
        .boot()
        .expect("boot");
    let global: &'static GlobalMm<P> = Box::leak(Box::new(GlobalMm::new()));
    assert!(global.init(mm).is_ok());
    global
}

fn page_pair<P: IrqControl>(g: &GlobalMm<P>) {
    let mm = g.get().unwrap();
    let pfn = mm.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap();
    mm.free_pages(black_box(pfn), Order::ZERO).unwrap();
}

/// Sizes for the mixed batch: a deterministic spread over 16 B .. 4 KiB.
fn sizes() -> Vec<usize> {
    let mut x = 0x2545_f491u64;
    (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            16 << (x % 9)
        })
        .collect()
}

fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        black_box(p).write(1);
        a.dealloc(p, layout);
    }
}

fn batch<A: GlobalAlloc>(a: &A, sizes: &[usize], ptrs: &mut Vec<*mut u8>) {
    ptrs.clear();
    for &s in sizes {
        let l = Layout::from_size_align(s, 8).unwrap();
        // SAFETY: non-zero layout.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        ptrs.push(p);
    }
    for (&p, &s) in ptrs.iter().zip(sizes) {
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(p, Layout::from_size_align(s, 8).unwrap()) };
    }
}

fn bench(c: &mut Criterion) {
    let _cpu = KERNEL.bind(0).expect("bench thread binds CPU 0");
    let mk = mmkit_allocator(&KERNEL);
    let mm = mmkit_allocator(HostCpus::<1>::new());
    let mut g = c.benchmark_group("alloc_free_pair");
    for size in [8usize, 64, 256, 512, 4096, 65536] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        g.bench_with_input(BenchmarkId::new("mmkit-kernel", size), &layout, |b, &l| {
            b.iter(|| pair(mk, l))
        });
        g.bench_with_input(BenchmarkId::new("mmkit", size), &layout, |b, &l| {
            b.iter(|| pair(mm, l))
        });
        g.bench_with_input(BenchmarkId::new("system", size), &layout, |b, &l| {
            b.iter(|| pair(&System, l))
        });
    }
    g.finish();
    let sizes = sizes();
    let mut ptrs = Vec::with_capacity(sizes.len());
    let mut g = c.benchmark_group("batch_1000_mixed");
    g.bench_function("mmkit-kernel", |b| b.iter(|| batch(mk, &sizes, &mut ptrs)));
    g.bench_function("mmkit", |b| b.iter(|| batch(mm, &sizes, &mut ptrs)));
    g.bench_function("system", |b| b.iter(|| batch(&System, &sizes, &mut ptrs)));
    g.finish();
    let mut g = c.benchmark_group("page_order0");
    g.bench_function("mmkit-kernel", |b| b.iter(|| page_pair(mk)));
    g.bench_function("mmkit", |b| b.iter(|| page_pair(mm)));
    g.finish();
}

// `criterion_group!` generates an undocumented `pub fn`; the allow is scoped to it.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
