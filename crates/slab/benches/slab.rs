//! mmkit-slab against talc, linked_list_allocator, buddy_system_allocator and the system
//! allocator, the same workloads in the same run:
//!
//! * `hot/<size>`: one allocation and its free, repeated (the per-CPU fast path for mmkit);
//! * `random/<max>`: talc's random-actions workload: a pre-generated sequence of allocations
//!   (4..max bytes), frees and reallocs over a pool of live blocks;
//! * `two_threads/<size>`: one thread allocates batches of 256 blocks, the other frees them;
//!   the time reported is the CPU time of both threads per pair (a thread blocked on the
//!   other costs nothing; one spinning on a peer's lock does);
//! * heap efficiency (printed, not timed): fill a 4 MiB heap with random actions until the
//!   first allocation fails and report the share of the heap in use.
//!
//! mmkit runs on `TestPageSource` (the real mmkit-buddy over host memory, per-CPU page lists
//! on) and `HostPlatform` (threads as CPUs, a per-CPU lock as the interrupt guard);
//! `mmkit-kernel` is the same on `mmkit_addr::host::KernelCpus` (one thread bound per CPU,
//! the guard a per-CPU counter: what a kernel pays). Peers get a plain host arena. Peers with a `&mut` API are wrapped in a
//! `spin::Mutex` for the two-thread workload, as their own `Locked*` types do.
//!
//! Run: `cargo bench -p mmkit-slab --bench slab`, then
//! `scripts/bench-ratios.py hot random two_threads` for the ratio tables.
//!
//! ## Figures (2026-11-25, 2-core host otherwise idle, one run)
//! Peer median / mmkit median (above 1: mmkit faster):
//!
//! | workload        | talc | linked_list | buddy_system | system |
//! |-----------------|------|-------------|--------------|--------|
//! | hot/8           | 0.54 | 0.35        | 0.39         | 0.33   |
//! | hot/64          | 0.54 | 0.35        | 0.29         | 0.33   |
//! | hot/256         | 0.57 | 0.36        | 0.30         | 0.33   |
//! | hot/4096        | 0.56 | 0.34        | 0.27         | 1.11   |
//! | random/200      | 0.45 | 3.61        | 0.85         | 0.84   |
//! | random/1000     | 0.39 | 3.97        | 1.69         | 1.11   |
//! | random/3000     | 0.53 | 3.77        | 0.81         | 0.86   |
//! | random/10000    | 0.34 | 3.74        | 0.72         | 0.84   |
//! | random/30000    | 0.40 | 3.32        | 0.82         | 0.91   |
//! | two_threads/64  | 1.60 | 1.21        | 1.03         | 0.99   |
//! | two_threads/1k  | 2.04 | 1.42        | 1.42         | 3.56   |
//!
//! Heap efficiency (share of 4 MiB in use at the first failure, max 200 / 1000 / 3000 /
//! 10000 / 30000): mmkit 82.0 / 84.2 / 79.1 / 65.6 / 64.4 % (+102 descriptor frames),
//! talc 88.7 / 96.6 / 97.5 / 97.2 / 96.6 %, buddy_system 68.5 / 74.0 / 67.1 / 67.2 / 70.9 %.
//!
//! Timings on this host swing by 2x between runs; `examples/hotloop.rs` gives repeatable
//! instruction counts under callgrind instead (see the crate docs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use std::sync::mpsc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmkit_addr::host::{HostPlatform, KernelCpus};
use mmkit_addr::IrqControl;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{Gfp, Kmalloc};

const ARENA: usize = 64 << 20;
const EFFICIENCY_HEAP: usize = 4 << 20;

/// The allocators under test, through one interface. Every block is 8-aligned.
trait Heap {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>>;
    /// # Safety
    /// `p` came from `alloc`/`realloc` of this heap with `size`.
    unsafe fn free(&mut self, p: NonNull<u8>, size: usize);
    /// # Safety
    /// As `free`.
    unsafe fn realloc(&mut self, p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>>;
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size.max(1), 8).unwrap()
}

fn arena(size: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; size].into_boxed_slice())
}

/// Realloc by allocate, copy, free, for heaps without one.
///
/// # Safety
/// As `Heap::realloc`.
unsafe fn realloc_by_copy<H: Heap + ?Sized>(
    h: &mut H,
    p: NonNull<u8>,
    old: usize,
    new: usize,
) -> Option<NonNull<u8>> {
    let n = h.alloc(new)?;
    // SAFETY: both blocks are live and distinct; `min(old, new)` bytes fit in each.
    unsafe {
        core::ptr::copy_nonoverlapping(p.as_ptr(), n.as_ptr(), old.min(new));
        h.free(p, old);
    }
    Some(n)
}

/// The kernel-like platform for the `mmkit-kernel` rows: one thread bound per CPU, the
/// interrupt guard a per-CPU counter (what `local_irq_save` costs a kernel).
static KERNEL: KernelCpus<2> = KernelCpus::new();

/// A `Kmalloc` on the kernel-like platform over its own page source.
fn kernel_kmalloc() -> Kmalloc<'static, TestPageSource, KernelCpus<2>> {
    let src: &'static TestPageSource = Box::leak(Box::new(TestPageSource::new(ARENA)));
    Kmalloc::new(src, &KERNEL).unwrap()
}

struct Mmkit<'k, 'a, P: IrqControl>(&'k Kmalloc<'a, TestPageSource, P>);

impl<P: IrqControl> Heap for Mmkit<'_, '_, P> {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        self.0.kmalloc(size, Gfp::empty()).ok()
    }
    unsafe fn free(&mut self, p: NonNull<u8>, _size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.0.kfree(p) }.unwrap();
    }
    unsafe fn realloc(&mut self, p: NonNull<u8>, _old: usize, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe { self.0.krealloc(p, new, Gfp::empty()) }.ok()
    }
}

struct Talc(talc::Talc<talc::ErrOnOom>);

impl Talc {
    fn new(size: usize) -> Self {
        let mut t = talc::Talc::new(talc::ErrOnOom);
        let a = arena(size);
        // SAFETY: the arena is leaked, so it outlives the allocator.
        unsafe { t.claim(talc::Span::from_base_size(a.as_mut_ptr(), a.len())) }.unwrap();
        Self(t)
    }
}

impl Heap for Talc {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        // SAFETY: `layout` has non-zero size.
        unsafe { self.0.malloc(layout(size)) }.ok()
    }
    unsafe fn free(&mut self, p: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.0.free(p, layout(size)) }
    }
    unsafe fn realloc(&mut self, p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract; grow/shrink as talc's own realloc does.
        unsafe {
            if new >= old {
                self.0.grow(p, layout(old), new.max(1)).ok()
            } else {
                self.0.shrink(p, layout(old), new.max(1));
                Some(p)
            }
        }
    }
}

struct LinkedList(linked_list_allocator::Heap);

impl LinkedList {
    fn new(size: usize) -> Self {
        let mut h = linked_list_allocator::Heap::empty();
        let a = arena(size);
        // SAFETY: the arena is leaked and used by this heap only.
        unsafe { h.init(a.as_mut_ptr(), a.len()) };
        Self(h)
    }
}

impl Heap for LinkedList {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        self.0.allocate_first_fit(layout(size)).ok()
    }
    unsafe fn free(&mut self, p: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.0.deallocate(p, layout(size)) }
    }
    unsafe fn realloc(&mut self, p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe { realloc_by_copy(self, p, old, new) }
    }
}

struct Buddy(buddy_system_allocator::Heap<32>);

impl Buddy {
    fn new(size: usize) -> Self {
        let mut h = buddy_system_allocator::Heap::<32>::new();
        let a = arena(size);
        // SAFETY: the arena is leaked and used by this heap only.
        unsafe { h.init(a.as_mut_ptr() as usize, a.len()) };
        Self(h)
    }
}

impl Heap for Buddy {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        self.0.alloc(layout(size)).ok()
    }
    unsafe fn free(&mut self, p: NonNull<u8>, size: usize) {
        self.0.dealloc(p, layout(size))
    }
    unsafe fn realloc(&mut self, p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe { realloc_by_copy(self, p, old, new) }
    }
}

struct Sys;

impl Heap for Sys {
    fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        // SAFETY: non-zero size.
        NonNull::new(unsafe { System.alloc(layout(size)) })
    }
    unsafe fn free(&mut self, p: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { System.dealloc(p.as_ptr(), layout(size)) }
    }
    unsafe fn realloc(&mut self, p: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        NonNull::new(unsafe { System.realloc(p.as_ptr(), layout(old), new.max(1)) })
    }
}

/// xorshift64*: deterministic workloads, the same for every allocator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
enum Action {
    Alloc(usize),
    Free(usize),
    Realloc(usize, usize),
}

const POOL: usize = 512;

/// talc's random-actions mix: allocate (4..max), free or realloc a random live block.
fn random_actions(max: usize, n: usize, seed: u64) -> Vec<Action> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| match rng.below(10) {
            0..=4 => Action::Alloc(4 + rng.below(max - 3)),
            5..=7 => Action::Free(rng.next() as usize),
            _ => Action::Realloc(rng.next() as usize, 4 + rng.below(max - 3)),
        })
        .collect()
}

/// Run `actions` on `h`; returns how many allocations failed. Frees what is left.
fn run_actions<H: Heap + ?Sized>(h: &mut H, actions: &[Action]) -> usize {
    let mut live: Vec<(NonNull<u8>, usize)> = Vec::with_capacity(POOL);
    let mut failed = 0;
    for &a in actions {
        match a {
            Action::Alloc(size) if live.len() < POOL => match h.alloc(size) {
                Some(p) => {
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { p.as_ptr().write(size as u8) };
                    live.push((p, size));
                }
                None => failed += 1,
            },
            Action::Alloc(_) => {}
            Action::Free(i) if !live.is_empty() => {
                let (p, size) = live.swap_remove(i % live.len());
                // SAFETY: a live block of this heap.
                unsafe { h.free(black_box(p), size) };
            }
            Action::Realloc(i, new) if !live.is_empty() => {
                let j = i % live.len();
                let (p, old) = live[j];
                // SAFETY: a live block of this heap.
                match unsafe { h.realloc(p, old, new) } {
                    Some(n) => live[j] = (n, new),
                    None => failed += 1,
                }
            }
            _ => {}
        }
    }
    for (p, size) in live {
        // SAFETY: live blocks of this heap.
        unsafe { h.free(p, size) };
    }
    failed
}

fn criterion_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn mmkit_env(bytes: usize) -> (&'static TestPageSource, &'static HostPlatform) {
    (
        Box::leak(Box::new(TestPageSource::new(bytes))),
        Box::leak(Box::new(HostPlatform::new(2))),
    )
}

fn peers(size: usize) -> Vec<(&'static str, Box<dyn Heap>)> {
    vec![
        ("talc", Box::new(Talc::new(size))),
        ("linked_list_allocator", Box::new(LinkedList::new(size))),
        ("buddy_system_allocator", Box::new(Buddy::new(size))),
        ("system", Box::new(Sys)),
    ]
}

fn bench_hot(c: &mut Criterion) {
    let (src, plat) = mmkit_env(ARENA);
    let k = Kmalloc::new(src, plat).unwrap();
    let _cpu = KERNEL.bind(0).expect("bench thread binds CPU 0");
    let k_kernel = kernel_kmalloc();
    let mut heaps: Vec<(&str, Box<dyn Heap + '_>)> = vec![
        ("mmkit-kernel", Box::new(Mmkit(&k_kernel))),
        ("mmkit", Box::new(Mmkit(&k))),
    ];
    heaps.extend(peers(ARENA));
    let mut g = c.benchmark_group("hot");
    for size in [8usize, 64, 96, 256, 1024, 4096] {
        for (name, h) in heaps.iter_mut() {
            g.bench_with_input(BenchmarkId::new(*name, size), &size, |b, &size| {
                b.iter(|| {
                    let p = h.alloc(black_box(size)).unwrap();
                    // SAFETY: allocated just above.
                    unsafe { h.free(black_box(p), size) };
                })
            });
        }
    }
    g.finish();
}

fn bench_random(c: &mut Criterion) {
    let (src, plat) = mmkit_env(ARENA);
    let k = Kmalloc::new(src, plat).unwrap();
    let _cpu = KERNEL.bind(0).expect("bench thread binds CPU 0");
    let k_kernel = kernel_kmalloc();
    let mut heaps: Vec<(&str, Box<dyn Heap + '_>)> = vec![
        ("mmkit-kernel", Box::new(Mmkit(&k_kernel))),
        ("mmkit", Box::new(Mmkit(&k))),
    ];
    heaps.extend(peers(ARENA));
    let mut g = c.benchmark_group("random");
    for max in [200usize, 1000, 3000, 10_000, 30_000] {
        let actions = random_actions(max, 4000, 0x5eed ^ max as u64);
        for (name, h) in heaps.iter_mut() {
            g.bench_with_input(BenchmarkId::new(*name, max), &max, |b, _| {
                b.iter(|| assert_eq!(run_actions(h.as_mut(), &actions), 0))
            });
        }
    }
    g.finish();
}

/// Thread-safe face for the two-thread workload.
trait SharedHeap: Sync {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// # Safety
    /// As `Heap::free`.
    unsafe fn free(&self, p: NonNull<u8>, size: usize);
}

impl<H: Heap + Send> SharedHeap for spin::Mutex<H> {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        self.lock().alloc(size)
    }
    unsafe fn free(&self, p: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.lock().free(p, size) }
    }
}

// SAFETY: the peers own leaked arenas and are only used through the mutex above, one thread
// at a time.
unsafe impl Send for Talc {}
// SAFETY: as above.
unsafe impl Send for LinkedList {}
// SAFETY: as above.
unsafe impl Send for Buddy {}

struct SharedMmkit<'k, 'a, P: IrqControl>(&'k Kmalloc<'a, TestPageSource, P>);

impl<P: IrqControl> SharedHeap for SharedMmkit<'_, '_, P> {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        self.0.kmalloc(size, Gfp::empty()).ok()
    }
    unsafe fn free(&self, p: NonNull<u8>, _size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.0.kfree(p) }.unwrap();
    }
}

struct SharedSys;

impl SharedHeap for SharedSys {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        Sys.alloc(size)
    }
    unsafe fn free(&self, p: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { Sys.free(p, size) }
    }
}

const BATCH: usize = 256;

/// CPU time this thread has run.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; the clock id is a constant the host supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "the thread CPU clock");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// How a thread of the two-thread workload takes CPU `cpu`; the value keeps the binding.
type Bind<'p> = &'p (dyn Fn(usize) -> Box<dyn std::any::Any> + Sync);

/// Allocate `iters` blocks on this thread in batches; a second thread frees them. Returns
/// the CPU time both threads spent (a thread waiting on the other blocks and costs none),
/// scaled to `iters` pairs.
fn producer_consumer(h: &dyn SharedHeap, bind: Bind<'_>, size: usize, iters: u64) -> Duration {
    let batches = (iters as usize).div_ceil(BATCH);
    let (to_free, freed_rx) = mpsc::sync_channel::<Vec<usize>>(4);
    let (recycle, recycled) = mpsc::sync_channel::<Vec<usize>>(8);
    for _ in 0..6 {
        recycle.send(Vec::with_capacity(BATCH)).unwrap();
    }
    std::thread::scope(|s| {
        let consumer = s.spawn(move || {
            let _cpu = bind(1);
            let start = thread_cpu_time();
            for mut v in freed_rx {
                for &a in &v {
                    // SAFETY: ownership moved to this thread through the channel.
                    unsafe { h.free(NonNull::new(a as *mut u8).unwrap(), size) };
                }
                v.clear();
                if recycle.send(v).is_err() {
                    break;
                }
            }
            thread_cpu_time() - start
        });
        let _cpu = bind(0);
        let start = thread_cpu_time();
        for _ in 0..batches {
            let mut v = recycled.recv().unwrap();
            for _ in 0..BATCH {
                v.push(h.alloc(size).unwrap().as_ptr() as usize);
            }
            to_free.send(v).unwrap();
        }
        drop(to_free);
        // Wait for the last batch to be freed before stopping the clock.
        let mut back = 0;
        while back < 6 {
            if recycled.recv().is_err() {
                break;
            }
            back += 1;
        }
        let producer = thread_cpu_time() - start;
        drop(recycled);
        let consumer = consumer.join().expect("the consumer thread");
        (producer + consumer).mul_f64(iters as f64 / (batches * BATCH) as f64)
    })
}

fn bench_two_threads(c: &mut Criterion) {
    let (src, plat) = mmkit_env(ARENA);
    let k = Kmalloc::new(src, plat).unwrap();
    let mmkit = SharedMmkit(&k);
    let k_kernel = {
        let _cpu = KERNEL.bind(0).expect("CPU 0 is free");
        kernel_kmalloc()
    };
    let mmkit_kernel = SharedMmkit(&k_kernel);
    let talc = spin::Mutex::new(Talc::new(ARENA));
    let ll = spin::Mutex::new(LinkedList::new(ARENA));
    let buddy = spin::Mutex::new(Buddy::new(ARENA));
    let host_bind = |cpu: usize| -> Box<dyn std::any::Any> {
        plat.bind_current_thread(cpu);
        Box::new(())
    };
    let kernel_bind = |cpu: usize| -> Box<dyn std::any::Any> {
        Box::new(
            KERNEL
                .bind(cpu)
                .expect("each CPU is bound by one thread at a time"),
        )
    };
    let heaps: [(&str, &dyn SharedHeap, Bind<'_>); 6] = [
        ("mmkit-kernel", &mmkit_kernel, &kernel_bind),
        ("mmkit", &mmkit, &host_bind),
        ("talc", &talc, &host_bind),
        ("linked_list_allocator", &ll, &host_bind),
        ("buddy_system_allocator", &buddy, &host_bind),
        ("system", &SharedSys, &host_bind),
    ];
    let mut g = c.benchmark_group("two_threads");
    for size in [64usize, 1024] {
        for (name, h, bind) in heaps {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_custom(|iters| producer_consumer(h, bind, size, iters))
            });
        }
    }
    g.finish();
    // Dropping the caches drains their arrays and depots inside sections of their platform:
    // on `KernelCpus` that takes a bound thread.
    let _cpu = KERNEL.bind(0).expect("CPU 0 is free again");
    drop(k_kernel);
}

/// Random actions with allocation bias until the first failure: the share of the heap held
/// by live requested bytes at that point.
fn efficiency<H: Heap + ?Sized>(h: &mut H, heap_bytes: usize, max: usize, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let mut live: Vec<(NonNull<u8>, usize)> = Vec::new();
    let mut in_use = 0usize;
    let result = loop {
        let r = rng.below(10);
        if r < 7 || live.is_empty() {
            let size = 4 + rng.below(max - 3);
            match h.alloc(size) {
                Some(p) => {
                    live.push((p, size));
                    in_use += size;
                }
                None => break in_use as f64 / heap_bytes as f64,
            }
        } else if r < 9 {
            let (p, size) = live.swap_remove(rng.below(live.len()));
            // SAFETY: a live block of this heap.
            unsafe { h.free(p, size) };
            in_use -= size;
        } else {
            let j = rng.below(live.len());
            let (p, old) = live[j];
            let new = 4 + rng.below(max - 3);
            // SAFETY: a live block of this heap.
            match unsafe { h.realloc(p, old, new) } {
                Some(n) => {
                    live[j] = (n, new);
                    in_use = in_use - old + new;
                }
                None => break in_use as f64 / heap_bytes as f64,
            }
        }
    };
    for (p, size) in live {
        // SAFETY: live blocks of this heap.
        unsafe { h.free(p, size) };
    }
    result
}

fn heap_efficiency(_c: &mut Criterion) {
    if std::env::var_os("SLAB_BENCH_SKIP_EFFICIENCY").is_some() {
        return;
    }
    println!(
        "heap efficiency: share of a {} MiB heap in use at the first failed allocation (mean of 3 seeds)",
        EFFICIENCY_HEAP >> 20
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "allocator", 200, 1000, 3000, 10000, 30000
    );
    let maxes = [200usize, 1000, 3000, 10_000, 30_000];
    let seeds = |max: usize| (1..=3u64).map(move |s| s * 7919 + max as u64);
    print!("{:<24}", "mmkit");
    let mut desc_frames = 0;
    for &max in &maxes {
        let mut sum = 0.0;
        for seed in seeds(max) {
            // The heap is every page the kmalloc family may take, its caches' descriptors
            // and per-CPU arrays included: caches are created on first use, inside the
            // heap, as a booted kernel's would be.
            let (src, plat) = mmkit_env(EFFICIENCY_HEAP * 2);
            let k = Kmalloc::new(src, plat).unwrap();
            src.set_limit(src.frames_in_use() + EFFICIENCY_HEAP / 4096);
            sum += efficiency(&mut Mmkit(&k), EFFICIENCY_HEAP, max, seed);
            desc_frames = k.caches().count();
        }
        print!(" {:>7.1}%", sum / 3.0 * 100.0);
    }
    println!("   ({desc_frames} caches created, their descriptors inside the heap; 2 CPUs)");
    type Make = fn(usize) -> Box<dyn Heap>;
    let makers: [(&str, Make); 3] = [
        ("talc", |s| Box::new(Talc::new(s))),
        ("linked_list_allocator", |s| Box::new(LinkedList::new(s))),
        ("buddy_system_allocator", |s| Box::new(Buddy::new(s))),
    ];
    for (name, make) in makers {
        print!("{name:<24}");
        for &max in &maxes {
            let mut sum = 0.0;
            for seed in seeds(max) {
                let mut h = make(EFFICIENCY_HEAP);
                sum += efficiency(h.as_mut(), EFFICIENCY_HEAP, max, seed);
            }
            print!(" {:>7.1}%", sum / 3.0 * 100.0);
        }
        println!();
    }
}

/// The criterion entry points; `criterion_group!` generates an undocumented `pub fn`.
mod harness {
    #![allow(missing_docs)]
    use super::*;

    criterion_group! {
        name = benches;
        config = criterion_config();
        targets = heap_efficiency, bench_hot, bench_random, bench_two_threads
    }
}
criterion_main!(harness::benches);
