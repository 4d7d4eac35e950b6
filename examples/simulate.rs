//! Simulate a machine on the host: boot mmkit from a realistic firmware map, run a mixed
//! workload until memory is fragmented, then print the reports, the high-order availability
//! and write an SVG map of physical memory; then give the processes' pages a mover, compact
//! every node, and write the map again (`OUT-compacted.svg`).
//!
//! ```text
//! cargo run --release --example simulate -- [OUT.svg] [--no-grouping] [--movablecore PCT] [--rounds N]
//! ```
//!
//! The machine: 6 GiB of RAM on two NUMA nodes (node 0 below 4 GiB, node 1 above), the PC
//! holes (legacy VGA/BIOS area, the 1 GiB PCI hole below 4 GiB), ACPI tables, a firmware
//! range in the middle of node 1, a 32 MiB kernel image and a 64 MiB initrd. Two worker
//! threads (one per simulated CPU, one CPU per node) each run, every round:
//!
//! * **kernel objects** — kmalloc of 16 B..4 KiB, a third long-lived (unmovable slab);
//! * **dentries/inodes** — a reclaimable slab cache (`RECLAIM_ACCOUNT`);
//! * **page cache** — reclaimable order-0 pages on an LRU, trimmed to a budget (the oldest
//!   go first, as reclaim would);
//! * **processes** — movable user pages (order 0, some order-9 huge pages) that live a few
//!   rounds and exit;
//! * **vmalloc** — areas of 16 KiB..1 MiB (module loads, big tables), freed later.
//!
//! Memory fills to about 85% and then churns, which is what fragments it. Grouping pages by
//! mobility keeps unmovable and reclaimable allocations in few pageblocks; `--no-grouping`
//! shows the difference.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange};
use mmkit::bootmem::firmware::e820::{E820Entry, E820Type};
use mmkit::buddy::{CoreSize, GfpFlags, MoveError, Mover};
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::slab::{CacheConfig, CacheFlags};
use mmkit::{Mm, MmBuilder, MmCache, NotLoaded};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Physical span of the machine: RAM ends at 7 GiB (6 GiB of it present).
const SPAN: u64 = 7 * GIB;
const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
const VMALLOC_SIZE: u64 = 8 * GIB;

/// The firmware map a PC-like machine reports.
fn e820() -> Vec<E820Entry> {
    vec![
        E820Entry::new(0, 0x9_fc00, E820Type::Ram),
        E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved),
        E820Entry::new(0xe_0000, 0x2_0000, E820Type::Reserved),
        E820Entry::new(MIB, 0xbf00_0000 - MIB, E820Type::Ram),
        E820Entry::new(0xbf00_0000, 0x80_0000, E820Type::Acpi),
        E820Entry::new(0xbf80_0000, 0x80_0000, E820Type::Nvs),
        // PCI hole 0xc000_0000..4 GiB: not in the map at all.
        E820Entry::new(4 * GIB, 2 * GIB, E820Type::Ram),
        E820Entry::new(6 * GIB, 16 * MIB, E820Type::Reserved),
        E820Entry::new(6 * GIB + 16 * MIB, SPAN - 6 * GIB - 16 * MIB, E820Type::Ram),
    ]
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Options {
    out: String,
    grouping: bool,
    movablecore: Option<u8>,
    rounds: u32,
}

fn options() -> Options {
    let mut o = Options {
        out: "mmkit-memory.svg".into(),
        grouping: true,
        movablecore: None,
        rounds: 60,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-grouping" => o.grouping = false,
            "--movablecore" => o.movablecore = args.next().and_then(|v| v.parse().ok()),
            "--rounds" => o.rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(60),
            _ => o.out = a,
        }
    }
    o
}

/// What one worker holds.
#[derive(Default)]
struct Pools {
    objects: Vec<(std::ptr::NonNull<u8>, u32)>,
    dentries: Vec<std::ptr::NonNull<u8>>,
    page_cache: std::collections::VecDeque<Pfn>,
    /// Processes: (rounds left, pages (pfn, order)).
    processes: Vec<(u32, Vec<(Pfn, Order)>)>,
    vmalloc: Vec<(VirtAddr, u32)>,
}

// SAFETY: the pointers are allocations owned by this pool; moving the pool moves ownership.
unsafe impl Send for Pools {}

struct Budget {
    /// Frames each worker aims to hold in page cache and user pages.
    page_cache: usize,
    user: u64,
}

fn worker(
    mm: &Mm<'_, HostPlatform>,
    dcache: &MmCache<'_, HostPlatform>,
    cpu: usize,
    round: u32,
    pools: &mut Pools,
    budget: &Budget,
) {
    mm.platform().bind_current_thread(cpu);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((cpu as u64 + 1) << 32) ^ u64::from(round));
    // SAFETY: the kernel page table is loaded in no MMU on the host.
    let mut tlb = unsafe { NotLoaded::new() };

    // Kernel objects: allocate a batch, free most of the older short-lived ones.
    for _ in 0..6_000 {
        let size = 16 << rng.below(9); // 16 B .. 4 KiB
        let size = size + rng.below(size) / 2;
        if let Ok(p) = mm.kmalloc(size as usize, GfpFlags::KERNEL) {
            pools.objects.push((p, round));
        }
    }
    let mut keep = Vec::with_capacity(pools.objects.len());
    for (p, born) in pools.objects.drain(..) {
        // A third of the objects are long-lived; the rest die within two rounds.
        let long_lived = (p.as_ptr() as usize >> 4) % 3 == 0;
        if long_lived || round - born < 2 {
            keep.push((p, born));
        } else {
            // SAFETY: allocated above, freed once.
            unsafe { mm.kfree(p).expect("kfree") };
        }
    }
    pools.objects = keep;

    // Dentries: grow, then shrink some (as a shrinker would).
    for _ in 0..4_000 {
        if let Ok(p) = dcache.alloc() {
            pools.dentries.push(p);
        }
    }
    for _ in 0..pools.dentries.len() / 4 {
        let i = rng.below(pools.dentries.len() as u64) as usize;
        let p = pools.dentries.swap_remove(i);
        // SAFETY: from this cache, freed once.
        unsafe { dcache.free(p).expect("dentry free") };
    }

    // Processes: some exit, new ones start.
    let mut alive = Vec::new();
    for (left, pages) in pools.processes.drain(..) {
        if left == 0 {
            for (pfn, order) in pages {
                mm.free_pages(pfn, order).expect("process page");
            }
        } else {
            alive.push((left - 1, pages));
        }
    }
    pools.processes = alive;
    let held: u64 = pools
        .processes
        .iter()
        .flat_map(|p| p.1.iter())
        .map(|(_, o)| o.pages())
        .sum();
    let mut want = budget.user.saturating_sub(held);
    while want > 0 {
        let size = (4_000 + rng.below(40_000)).min(want);
        let mut pages = Vec::new();
        let mut got = 0;
        while got < size {
            // One in 200 faults is a huge page (THP), if one can be had.
            let order = if rng.below(200) == 0 {
                Order::new(9)
            } else {
                Order::ZERO
            };
            let gfp = if order.get() > 0 {
                GfpFlags::TRANSHUGE_LIGHT
            } else {
                GfpFlags::HIGHUSER_MOVABLE
            };
            match mm.alloc_pages(gfp, order) {
                Ok(pfn) => {
                    pages.push((pfn, order));
                    got += order.pages();
                }
                Err(_) if order.get() > 0 => continue,
                Err(_) => break,
            }
        }
        want = want.saturating_sub(got.max(1));
        pools.processes.push((1 + rng.below(6) as u32, pages));
        if got < size {
            break;
        }
    }

    // Page cache: read files, evict the oldest beyond the budget.
    for _ in 0..20_000 {
        match mm.alloc_pages(GfpFlags::KERNEL_RECLAIMABLE, Order::ZERO) {
            Ok(pfn) => pools.page_cache.push_back(pfn),
            Err(_) => break,
        }
    }
    while pools.page_cache.len() > budget.page_cache {
        let pfn = pools.page_cache.pop_front().unwrap();
        mm.free_pages(pfn, Order::ZERO).expect("page cache page");
    }

    // vmalloc: load a "module" now and then, unload old ones.
    if rng.below(2) == 0 {
        let size = (16 << 10) << rng.below(7);
        if let Ok(va) = mm.vmalloc(size, &mut tlb) {
            pools.vmalloc.push((va, round));
        }
    }
    pools.vmalloc.retain(|&(va, born)| {
        if round - born > 8 && (va.as_u64() >> 14) % 2 == 0 {
            mm.vfree(va, &mut tlb).expect("vfree");
            false
        } else {
            true
        }
    });
}

/// The processes' pages as a kernel's rmap would know them: which frames hold user pages.
/// Registered as a mover after the workload, so compaction can move them; it copies the
/// frames through the host memory that stands for the direct map.
struct UserPages<'a> {
    ram: &'a HostRam,
    frames: Mutex<HashSet<u64>>,
}

impl Mover for UserPages<'_> {
    fn isolate(&self, pfn: Pfn, _: Order, _: u64) -> Result<(), MoveError> {
        match self.frames.lock().unwrap().contains(&pfn.as_u64()) {
            true => Ok(()),
            false => Err(MoveError::Refused),
        }
    }
    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError> {
        let mut frames = self.frames.lock().unwrap();
        if !frames.remove(&src.as_u64()) {
            return Err(MoveError::Refused);
        }
        let at = |p: Pfn| self.ram.ptr_of(PhysAddr::new(p.as_u64() << 12)).unwrap();
        // SAFETY: both blocks are 2^order frames of the simulated machine: `src` is isolated
        // for this migration and `dst` was handed to it by the allocator; they are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(at(src).as_ptr(), at(dst).as_ptr(), 4096 << order.get())
        };
        frames.insert(dst.as_u64());
        Ok(private)
    }
    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}

fn gib(kb: u64) -> f64 {
    kb as f64 / (1024.0 * 1024.0)
}

fn main() {
    let opts = options();
    let started = Instant::now();
    let ram = HostRam::new(PhysAddr::new(0), SPAN);
    let user_pages = UserPages {
        ram: &ram,
        frames: Mutex::new(HashSet::new()),
    };
    let range = |s: u64, l: u64| PhysRange::from_start_size(PhysAddr::new(s), l).unwrap();
    // SAFETY: `ram` is the whole simulated machine and nothing else uses it.
    let mut builder = unsafe { MmBuilder::new(HostPlatform::new(2), &ram) }
        .e820(&e820())
        .reserve(range(16 * MIB, 32 * MIB)) // kernel image
        .reserve(range(GIB, 64 * MIB)) // initrd
        .node(1, range(4 * GIB, SPAN - 4 * GIB))
        .node_distance(0, 1, 21)
        .cpu_node(0, 0)
        .cpu_node(1, 1);
    if let Some(pct) = opts.movablecore {
        builder = builder.movablecore(CoreSize::Percent(pct));
    }
    let mm = builder
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC_START), VMALLOC_SIZE).unwrap(),
        )
        .boot()
        .expect("boot");
    mm.buddy().set_mobility_grouping(opts.grouping);
    let boot = *mm.boot_summary();
    let info = mm.meminfo();
    eprintln!(
        "booted in {:.2?}: {:.2} GiB present on {} nodes, {:.2} GiB managed, memmap {} MiB",
        started.elapsed(),
        boot.memory_bytes as f64 / GIB as f64,
        boot.nr_nodes,
        gib(info.total_kb),
        boot.memmap_bytes / MIB
    );

    let dcache = mm
        .cache_create(
            &CacheConfig::new("dentry", 192)
                .flags(CacheFlags::RECLAIM_ACCOUNT | CacheFlags::HWCACHE_ALIGN),
        )
        .expect("dentry cache");
    let total_frames = info.total_kb / 4;
    // Per worker: 22% of memory in user pages and 16% in page cache, so with the slab the
    // machine runs at about 85% full and every round's churn reuses fragmented space.
    let budget = Budget {
        user: total_frames * 22 / 100,
        page_cache: (total_frames * 16 / 100) as usize,
    };
    let mut pools: [Pools; 2] = Default::default();
    for round in 0..opts.rounds {
        std::thread::scope(|s| {
            for (cpu, pool) in pools.iter_mut().enumerate() {
                let (mm, dcache, budget) = (&mm, &dcache, &budget);
                s.spawn(move || worker(mm, dcache, cpu, round, pool, budget));
            }
        });
        let i = mm.meminfo();
        let high = mm.high_order(9);
        eprint!(
            "\r[round {:>3}/{}] used {:>5.2} GiB | slab {:>6.1} MiB | page cache {:>5.2} GiB | user {:>5.2} GiB | vmalloc {:>5.1} MiB | free in 2 MiB blocks {:>5.1}%   ",
            round + 1,
            opts.rounds,
            gib(i.total_kb - i.free_kb),
            i.slab_kb as f64 / 1024.0,
            gib(i.pages_kb[2]),
            gib(i.pages_kb[1]),
            i.vmalloc_used_kb as f64 / 1024.0,
            high.percent()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();

    let mut mm = mm;
    // Census of pageblocks before draining the per-CPU lists.
    let mut mixed = 0;
    let mut holding_unmovable = 0;
    let mut blocks = 0;
    let mut managed_blocks = 0;
    let mut compactable = 0;
    mm.pageblock_census(|c| {
        if c.reserved == 0 && c.hole == 0 {
            managed_blocks += 1;
            // Free or movable only: reclaim or compaction could make the block whole.
            compactable += usize::from(c.by_mobility[0] + c.by_mobility[2] == 0);
        }
        if c.used() > 0 {
            blocks += 1;
            mixed += usize::from(c.mobilities() > 1);
            holding_unmovable += usize::from(c.by_mobility[0] + c.by_mobility[2] > 0);
        }
    });
    mm.drain_all();
    println!("{}", mm.report());
    println!("== pageblocks in use: {blocks}; mixed mobility: {mixed}; holding unmovable or reclaimable: {holding_unmovable}");
    let i = mm.meminfo();
    let unmovable_share =
        (i.slab_kb + i.page_tables_kb + i.vmalloc_used_kb + i.pages_kb[0] + i.pages_kb[2]) as f64
            / i.total_kb as f64
            * 100.0;
    println!(
        "== unmovable+reclaimable allocations: {:.1}% of memory, in {:.1}% of in-use pageblocks",
        unmovable_share,
        holding_unmovable as f64 * 100.0 / blocks.max(1) as f64
    );
    println!(
        "== pageblocks compaction could empty (free or movable only): {compactable} of {managed_blocks} ({:.1}%)",
        compactable as f64 * 100.0 / managed_blocks.max(1) as f64
    );
    println!(
        "== high-order availability after the workload (grouping {}):",
        if opts.grouping { "on" } else { "off" }
    );
    for order in [3, 9, 10] {
        println!("   {}", mm.high_order(order));
    }
    mm.verify().expect("invariants hold after the workload");
    let title = format!(
        "mmkit: 6 GiB, 2 nodes, {} rounds, grouping by mobility {}",
        opts.rounds,
        if opts.grouping { "on" } else { "off" }
    );
    std::fs::write(&opts.out, mm.svg_map(&title).to_string()).expect("write SVG");

    // Compaction: the processes' pages get a mover (as a kernel's rmap would provide), then
    // every node is compacted; page cache has none (reclaim frees it instead).
    let id = mm.buddy().register_mover(&user_pages).expect("mover");
    for (_, pages) in pools.iter().flat_map(|p| p.processes.iter()) {
        for &(pfn, order) in pages {
            user_pages.frames.lock().unwrap().insert(pfn.as_u64());
            mm.buddy()
                .set_mover(pfn, order, Some(id))
                .expect("user page");
        }
    }
    let before = mm.high_order(9);
    let compacting = Instant::now();
    let nodes = mm.boot_summary().nr_nodes;
    let moved: u64 = (0..nodes)
        .map(|nid| mm.buddy().compact_node(nid).expect("compact"))
        .sum();
    let after = mm.high_order(9);
    mm.verify().expect("invariants hold after compaction");
    println!(
        "== compaction: {moved} user pages moved in {:.1?}; free memory as 2 MiB blocks {:.1}% -> {:.1}%",
        compacting.elapsed(),
        before.percent(),
        after.percent()
    );
    print!("{}", mm.buddy().compact_stats());
    let compacted = opts.out.replace(".svg", "-compacted.svg");
    let title = format!("{title}, after compaction");
    std::fs::write(&compacted, mm.svg_map(&title).to_string()).expect("write SVG");
    eprintln!(
        "SVG maps written to {} and {} ({:.1?} total)",
        opts.out,
        compacted,
        started.elapsed()
    );
}
