//! The hot alloc+free pair in a loop, for instruction counts under callgrind, on mmkit or on
//! a peer allocator over an 8 MiB arena:
//!
//! ```text
//! cargo build --profile bench -p mmkit-slab --example hotloop
//! valgrind --tool=callgrind target/release/examples/hotloop mmkit 64 100000
//! valgrind --tool=callgrind target/release/examples/hotloop mmkit 64 200000
//! ```
//!
//! The difference of the two totals over 100000 is the instructions per allocation + free of
//! a cached object (setup cost cancels out). Heaps: `mmkit` (on the host platform: a
//! thread-local CPU id and a per-CPU lock taken and released with atomic read-modify-writes
//! as the "interrupt guard"), `mmkit-kernel` (`KernelCpus`: the thread bound to CPU 0, the
//! guard a per-CPU counter, what a kernel's interrupt disable costs in instructions), `talc`,
//! `linked_list`, `buddy_system`, `system`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use mmkit_addr::host::{HostPlatform, KernelCpus};
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{Gfp, Kmalloc};

const ARENA: usize = 8 << 20;

fn arena() -> &'static mut [u8] {
    Box::leak(vec![0u8; ARENA].into_boxed_slice())
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("a valid layout")
}

/// The kernel-like platform: this thread bound to CPU 0, the guard a per-CPU counter.
static KERNEL: KernelCpus<1> = KernelCpus::new();

fn main() {
    let mut args = std::env::args().skip(1);
    let heap = args.next().unwrap_or_else(|| "mmkit".into());
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let iters: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    match heap.as_str() {
        "mmkit" => {
            let pages = TestPageSource::new(ARENA);
            let cpus = HostPlatform::new(2);
            let k = Kmalloc::new(&pages, &cpus).expect("descriptor pages");
            for _ in 0..iters {
                let p = k.kmalloc(black_box(size), Gfp::empty()).expect("memory");
                // SAFETY: `p` was just allocated by `k` and is not used again.
                unsafe { k.kfree(black_box(p)) }.expect("a valid free");
            }
        }
        "mmkit-kernel" => {
            let pages = TestPageSource::new(ARENA);
            let _cpu = KERNEL.bind(0).expect("the only thread binds CPU 0");
            let k = Kmalloc::new(&pages, &KERNEL).expect("descriptor pages");
            for _ in 0..iters {
                let p = k.kmalloc(black_box(size), Gfp::empty()).expect("memory");
                // SAFETY: `p` was just allocated by `k` and is not used again.
                unsafe { k.kfree(black_box(p)) }.expect("a valid free");
            }
        }
        "talc" => {
            let mut t = talc::Talc::new(talc::ErrOnOom);
            let a = arena();
            // SAFETY: the arena is leaked, so it outlives the allocator.
            unsafe { t.claim(talc::Span::from_base_size(a.as_mut_ptr(), a.len())) }.unwrap();
            for _ in 0..iters {
                // SAFETY: a non-zero layout.
                let p = unsafe { t.malloc(layout(black_box(size))) }.expect("memory");
                // SAFETY: allocated just above with this layout.
                unsafe { t.free(black_box(p), layout(size)) };
            }
        }
        "linked_list" => {
            let mut h = linked_list_allocator::Heap::empty();
            let a = arena();
            // SAFETY: the arena is leaked and used by this heap only.
            unsafe { h.init(a.as_mut_ptr(), a.len()) };
            for _ in 0..iters {
                let p = h
                    .allocate_first_fit(layout(black_box(size)))
                    .expect("memory");
                // SAFETY: allocated just above with this layout.
                unsafe { h.deallocate(black_box(p), layout(size)) };
            }
        }
        "buddy_system" => {
            let mut h = buddy_system_allocator::Heap::<32>::new();
            let a = arena();
            // SAFETY: the arena is leaked and used by this heap only.
            unsafe { h.init(a.as_mut_ptr() as usize, a.len()) };
            for _ in 0..iters {
                let p = h.alloc(layout(black_box(size))).expect("memory");
                h.dealloc(black_box(p), layout(size));
            }
        }
        "system" => {
            for _ in 0..iters {
                // SAFETY: a non-zero layout.
                let p =
                    NonNull::new(unsafe { System.alloc(layout(black_box(size))) }).expect("memory");
                // SAFETY: allocated just above with this layout.
                unsafe { System.dealloc(black_box(p).as_ptr(), layout(size)) };
            }
        }
        other => panic!("unknown heap {other}"),
    }
}
