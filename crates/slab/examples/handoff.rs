//! The two-thread workload's object flow in one thread, for instruction counts under
//! callgrind: CPU 0 allocates a batch of 256 objects, CPU 1 frees them, repeated. The thread
//! moves between the two CPUs of a `KernelCpus<2>` (unbinding and binding again), so the run
//! is deterministic and every object crosses CPUs as in `benches/slab.rs`'s `two_threads`:
//!
//! ```text
//! cargo build --profile bench -p mmkit-slab --example handoff
//! valgrind --tool=callgrind target/release/examples/handoff mmkit 64 1000
//! valgrind --tool=callgrind target/release/examples/handoff mmkit 64 2000
//! ```
//!
//! The difference of the two totals over 256000 is the instructions per allocation + free.
//! Heaps: `mmkit` (kmalloc on `KernelCpus`) and `talc` (the same batches, one thread).

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;

use mmkit_addr::host::KernelCpus;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{Gfp, Kmalloc};

const BATCH: usize = 256;
const ARENA: usize = 32 << 20;

static CPUS: KernelCpus<2> = KernelCpus::new();

fn main() {
    let mut args = std::env::args().skip(1);
    let heap = args.next().unwrap_or_else(|| "mmkit".into());
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut batch: Vec<NonNull<u8>> = Vec::with_capacity(BATCH);
    match heap.as_str() {
        "mmkit" => {
            let pages = TestPageSource::new(ARENA);
            let k = {
                let _cpu = CPUS.bind(0).expect("CPU 0 is free");
                Kmalloc::new(&pages, &CPUS).expect("descriptor pages")
            };
            for _ in 0..rounds {
                {
                    let _cpu = CPUS.bind(0).expect("CPU 0 is free");
                    for _ in 0..BATCH {
                        batch.push(k.kmalloc(black_box(size), Gfp::empty()).expect("memory"));
                    }
                }
                let _cpu = CPUS.bind(1).expect("CPU 1 is free");
                for p in batch.drain(..) {
                    // SAFETY: allocated above by `k`, freed once.
                    unsafe { k.kfree(black_box(p)) }.expect("a valid free");
                }
            }
        }
        "talc" => {
            let mut t = talc::Talc::new(talc::ErrOnOom);
            let a: &'static mut [u8] = Box::leak(vec![0u8; ARENA].into_boxed_slice());
            // SAFETY: the arena is leaked, so it outlives the allocator.
            unsafe { t.claim(talc::Span::from_base_size(a.as_mut_ptr(), a.len())) }.unwrap();
            let layout = Layout::from_size_align(size, 8).expect("a valid layout");
            for _ in 0..rounds {
                for _ in 0..BATCH {
                    // SAFETY: a non-zero layout.
                    batch.push(unsafe { t.malloc(black_box(layout)) }.expect("memory"));
                }
                for p in batch.drain(..) {
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { t.free(black_box(p), layout) };
                }
            }
        }
        other => panic!("unknown heap {other}: mmkit or talc"),
    }
}
