//! One `GlobalAlloc` alloc+dealloc pair through [`GlobalMm`] in a loop, for instruction
//! counts under callgrind (what the facade adds on top of the slab, and what the platform's
//! interrupt guard costs):
//!
//! ```text
//! cargo build --profile bench --example global_hotloop
//! valgrind --tool=callgrind target/release/examples/global_hotloop kernel 64 100000
//! valgrind --tool=callgrind target/release/examples/global_hotloop kernel 64 200000
//! ```
//!
//! The difference of the two totals over 100000 is the instructions per pair. Platforms:
//! `kernel` (`KernelCpus`: the thread bound to CPU 0, the guard a per-CPU counter) and
//! `host` (`HostCpus`: a re-entrant per-CPU lock as the guard). A size of 0 runs an order-0
//! page pair through `Mm::alloc_pages` instead.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use mmkit::addr::{IrqControl, Order, PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::{HostCpus, HostRam, KernelCpus};
use mmkit::{GlobalMm, MmBuilder};

static KERNEL: KernelCpus<1> = KernelCpus::new();

fn run<P: IrqControl + 'static>(platform: P, size: usize, iters: u64) {
    let ram: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 256 << 20)));
    let mem = PhysRange::from_start_size(PhysAddr::new(1 << 20), (256 << 20) - (1 << 20));
    // SAFETY: `ram` is the whole simulated machine, used by nothing else, and lives forever.
    let mm = unsafe { MmBuilder::new(platform, ram) }
        .memory(mem.expect("a valid range"))
        .boot()
        .expect("boot");
    let global: &'static GlobalMm<P> = Box::leak(Box::new(GlobalMm::new()));
    assert!(global.init(mm).is_ok());
    if size == 0 {
        let mm = global.get().expect("initialised");
        for _ in 0..iters {
            let pfn = mm
                .alloc_pages(GfpFlags::KERNEL, Order::ZERO)
                .expect("memory");
            mm.free_pages(black_box(pfn), Order::ZERO)
                .expect("a valid free");
        }
        return;
    }
    let layout = Layout::from_size_align(size, 8).expect("a valid layout");
    for _ in 0..iters {
        // SAFETY: non-zero layout; the block is freed with the same layout.
        unsafe {
            let p = global.alloc(black_box(layout));
            assert!(!p.is_null());
            global.dealloc(black_box(p), layout);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let platform = args.next().unwrap_or_else(|| "kernel".into());
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let iters: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    match platform.as_str() {
        "kernel" => {
            let _cpu = KERNEL.bind(0).expect("the only thread binds CPU 0");
            run(&KERNEL, size, iters);
        }
        "host" => run(HostCpus::<1>::new(), size, iters),
        other => panic!("unknown platform {other}: kernel or host"),
    }
}
