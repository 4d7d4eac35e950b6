//! Create a few caches and kmalloc on the host, use them, and print `/proc/slabinfo`.
//!
//! `cargo run -p mmkit-slab --example slabinfo`

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{CacheConfig, CacheFlags, Gfp, Kmalloc, TypedCache, SLABINFO_HEADER};

/// A kernel-ish structure with a constructor (`Default`).
#[derive(Debug, Default)]
struct Task {
    pid: u32,
    state: u8,
    name: [u8; 16],
    vruntime: u64,
}

fn main() {
    let pages = TestPageSource::new(16 << 20);
    let cpus = HostPlatform::new(2);

    let tasks: TypedCache<Task, _, _> = TypedCache::new(
        CacheConfig::new("task_struct", 0).flags(CacheFlags::HWCACHE_ALIGN),
        &pages,
        &cpus,
    )
    .expect("task cache");
    let debug: TypedCache<[u64; 4], _, _> = TypedCache::new(
        CacheConfig::new("debug_objs", 0).flags(CacheFlags::DEBUG),
        &pages,
        &cpus,
    )
    .expect("debug cache");
    let k = Kmalloc::new(&pages, &cpus).expect("kmalloc");

    let mut live = Vec::new();
    for pid in 0..300 {
        let mut t = tasks.alloc().expect("task");
        t.pid = pid;
        t.state = 1;
        t.name[..4].copy_from_slice(b"init");
        t.vruntime = u64::from(pid) * 1000;
        live.push(t);
    }
    let d = debug.alloc().expect("debug object");
    let small: Vec<_> = (1..200)
        .map(|i| k.kmalloc(i * 7, Gfp::empty()).expect("kmalloc"))
        .collect();
    let big = k.kzalloc(100_000, Gfp::empty()).expect("large kmalloc");

    print!("{SLABINFO_HEADER}");
    print!("{}", tasks.cache());
    print!("{}", debug.cache());
    for c in k.caches().filter(|c| c.stats().slabs > 0) {
        print!("{c}");
    }
    let s = tasks.cache().stats();
    println!(
        "\ntask_struct: {} live, fast/slow allocs {}/{}, debug letters of debug_objs: {}",
        s.live_objects,
        s.alloc_fastpath,
        s.alloc_slowpath,
        debug.cache().flags().debug_letters()
    );
    // SAFETY: `big` and `small` came from `k` and are not used again.
    unsafe {
        println!(
            "ksize(100000-byte kzalloc) = {}",
            k.ksize(big).expect("ksize")
        );
        k.kfree(big).expect("kfree");
        for p in small {
            k.kfree(p).expect("kfree");
        }
    }
    drop(d);
    drop(live);
    println!("frames in use before teardown: {}", pages.frames_in_use());
}
