//! mmkit as this binary's `#[global_allocator]`: real std collections from several threads.
//!
//! The binary has no test harness (`harness = false`), so nothing but `main` runs. Before mmkit
//! is booted, allocations (the runtime's own, the boot's `HostRam`) go to the system
//! allocator; after `GlobalMm::init`, every new allocation goes to mmkit, and frees are routed
//! by address (`GlobalMm::owns`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::host::{HostCpus, HostRam};
use mmkit::{GlobalMm, MmBuilder};

const CPUS: usize = 4;
static MM: GlobalMm<HostCpus<CPUS>> = GlobalMm::new();
static SERVED: AtomicUsize = AtomicUsize::new(0);

struct Routed;

// SAFETY: each pointer is freed by the allocator that produced it: mmkit's are recognised by
// address (its kernel map covers exactly its memory), everything else came from `System`.
unsafe impl GlobalAlloc for Routed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MM.get().is_some() {
            SERVED.fetch_add(1, Relaxed);
            // SAFETY: forwarded `GlobalAlloc` contract.
            unsafe { MM.alloc(layout) }
        } else {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if MM.owns(ptr) {
            // SAFETY: `ptr` is mmkit's and was allocated with `layout`.
            unsafe { MM.dealloc(ptr, layout) }
        } else {
            // SAFETY: `ptr` is the system allocator's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MM.owns(ptr) {
            SERVED.fetch_add(1, Relaxed);
            // SAFETY: forwarded; `ptr` is mmkit's.
            unsafe { MM.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: forwarded; `ptr` is the system allocator's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static GLOBAL: Routed = Routed;

#[repr(align(16384))]
struct Aligned([u8; 64]);

fn workload(seed: u64) -> u64 {
    let mut check = 0u64;
    for round in 0..10u64 {
        let v: Vec<u64> = (0..20_000).map(|i| i * seed + round).collect();
        check = check.wrapping_add(v.iter().sum::<u64>());
        let mut s = String::new();
        for i in 0..2_000 {
            s.push_str(&format!("{seed}-{round}-{i};"));
        }
        assert!(s.starts_with(&format!("{seed}-{round}-0;")));
        let mut tree = BTreeMap::new();
        for i in 0..3_000u64 {
            tree.insert(i * 7 % 3_001, vec![seed as u8; (i % 300) as usize]);
        }
        for i in (0..3_000u64).step_by(2) {
            tree.remove(&(i * 7 % 3_001));
        }
        assert_eq!(tree.len(), 1_500);
        let mut map: HashMap<String, Vec<u32>> = HashMap::new();
        for i in 0..2_000u32 {
            map.entry(format!("k{}", i % 500)).or_default().push(i);
        }
        assert_eq!(map.len(), 500);
        assert!(map.values().all(|v| v.len() == 4));
        // A large buffer beyond the slab classes (page-backed kmalloc), and an object aligned
        // beyond a page (a whole buddy block).
        let big = vec![round as u8; 3 << 20];
        check = check.wrapping_add(u64::from(big[12345]));
        // Beyond the buddy's largest block (4 MiB): a contiguous run of frames.
        let mut huge: Vec<u64> = Vec::with_capacity((9 << 20) / 8);
        huge.extend((0..(9u64 << 20) / 8).map(|i| i ^ seed));
        check = check.wrapping_add(huge[(7 << 20) / 8] ^ huge[12]);
        drop(huge);
        let aligned = Box::new(Aligned([seed as u8; 64]));
        assert_eq!(&*aligned as *const Aligned as usize % 16384, 0);
        check = check.wrapping_add(u64::from(aligned.0[63]));
        check = check.wrapping_add(tree.len() as u64 + map.len() as u64);
    }
    check
}

fn main() {
    let ram: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 512 << 20)));
    let memory =
        PhysRange::from_start_size(PhysAddr::new(0x10_0000), (512 << 20) - 0x10_0000).unwrap();
    // SAFETY: `ram` is the whole simulated machine, used by nothing else, and lives forever.
    let mm = unsafe { MmBuilder::new(HostCpus::<CPUS>::new(), ram) }
        .memory(memory)
        .boot()
        .expect("boot");
    let free_at_boot = mm.meminfo().free_kb;
    assert!(MM.init(mm).is_ok());

    let threads: Vec<_> = (1..=CPUS as u64)
        .map(|seed| std::thread::spawn(move || workload(seed)))
        .collect();
    let results: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Same seeds on one thread must give the same answers.
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, workload(i as u64 + 1));
    }
    let served = SERVED.load(Relaxed);
    assert!(served > 100_000, "mmkit served only {served} allocations");

    // SAFETY: every other thread has ended and nothing allocates meanwhile; no earlier
    // reference to the installed `Mm` is used again.
    let verified = unsafe { MM.verify_stopped() };
    verified
        .expect("installed")
        .expect("every invariant of the installed allocator");
    let mm = MM.get().unwrap();
    let info = mm.meminfo();
    // Everything the workload allocated is back, except what the slab keeps cached.
    assert!(
        info.free_kb + info.slab_kb + 4096 >= free_at_boot,
        "leak: {info}\nfree at boot {free_at_boot} kB"
    );
    println!("global_alloc: {served} allocations served by mmkit over {CPUS} threads; ok");
}
