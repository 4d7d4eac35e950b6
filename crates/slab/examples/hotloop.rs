//! The hot alloc+free pair in a loop, for instruction counts under callgrind:
//!
//! ```text
//! cargo build --profile bench -p mmkit-slab --example hotloop
//! valgrind --tool=callgrind target/bench/examples/hotloop 64 100000
//! valgrind --tool=callgrind target/bench/examples/hotloop 64 200000
//! ```
//!
//! The difference of the two totals over 100000 is the instructions per `kmalloc` + `kfree`
//! of a cached object (setup cost cancels out).

use std::hint::black_box;

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{Gfp, Kmalloc};

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let iters: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let pages = TestPageSource::new(8 << 20);
    let cpus = HostPlatform::new(2);
    let k = Kmalloc::new(&pages, &cpus).expect("descriptor pages");
    for _ in 0..iters {
        let p = k.kmalloc(black_box(size), Gfp::empty()).expect("memory");
        // SAFETY: `p` was just allocated by `k` and is not used again.
        unsafe { k.kfree(black_box(p)) }.expect("a valid free");
    }
}
