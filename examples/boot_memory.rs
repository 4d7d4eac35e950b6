//! How much memory mmkit's boot structures take, structure by structure.
//!
//! ```text
//! cargo run --example boot_memory
//! ```
//!
//! Boots the facade on simulated machines shaped like the QEMU kernels' (one CPU, the
//! kernels' 1 GiB vmalloc window, their firmware maps) and on a larger one, and prints for
//! each what `MmBuilder::boot` carves out of bootmem: the size of every boot structure as
//! the builder computes it, their sum in frames, and the number of frames the facade marked
//! as its own boot metadata afterwards (`PageAllocator::is_boot_metadata`). The two must
//! agree; the example fails if they do not. `docs/embedding.md` explains the figures.
//!
//! The platform is a one-CPU zero-sized type like the kernels' `Bsp`, so the page
//! allocator's size is the one a kernel gets (a platform that carries data adds its size).

use core::mem::size_of;

use mmkit::addr::{CpuTopology, IrqControl, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange};
use mmkit::bootmem::firmware::e820::{E820Entry, E820Type};
use mmkit::buddy::{
    memmap_len, memmap_sections, pcp_storage_len, BuddyConfig, PageDesc, PerCpuPages,
};
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::PagingFormat;
use mmkit::{MmBuilder, PageAllocator};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// The QEMU kernels' vmalloc window: 1 GiB at Linux's x86_64 `VMALLOC_START`.
const VMALLOC_BASE: u64 = 0xffff_c900_0000_0000;
const VMALLOC_SIZE: u64 = GIB;

/// One CPU, with a guard that does nothing: like the kernels' `Bsp` (zero-sized), for a
/// program that runs on one thread.
struct OneCpu;

// SAFETY: the example runs on one thread, which is CPU 0; there is one CPU for good.
unsafe impl CpuTopology for OneCpu {
    fn nr_cpus(&self) -> usize {
        1
    }
    fn current_cpu(&self) -> usize {
        0
    }
}

// SAFETY: one thread and no signal handler that allocates, so no other context ever runs on
// CPU 0 inside a section: the exclusion the trait asks for holds without doing anything.
unsafe impl IrqControl for OneCpu {
    type State = ();
    fn save_disable(&self) {}
    unsafe fn restore(&self, _: ()) {}
}

struct Machine {
    name: &'static str,
    /// Physical memory the host buffer stands for.
    base: u64,
    span: u64,
    e820: Vec<E820Entry>,
    /// What the kernel reserves before `boot` (low memory, image, boot data, table pool).
    reserve: Vec<(u64, u64)>,
}

/// The e820 map QEMU's q35 machine reports through PVH for `-m <ram>` with `ram` at most
/// 2 GiB (as the x86_64 kernel prints it).
fn q35_low(ram: u64) -> Vec<E820Entry> {
    vec![
        E820Entry::new(0, 0x9_fc00, E820Type::Ram),
        E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved),
        E820Entry::new(0xf_0000, 0x1_0000, E820Type::Reserved),
        E820Entry::new(MIB, ram - MIB - 0x2_1000, E820Type::Ram),
        E820Entry::new(ram - 0x2_1000, 0x2_1000, E820Type::Reserved),
        E820Entry::new(0xb000_0000, 0x1000_0000, E820Type::Reserved),
        E820Entry::new(0xfed1_c000, 0x4000, E820Type::Reserved),
        E820Entry::new(0xfffc_0000, 0x4_0000, E820Type::Reserved),
    ]
}

/// The x86_64 kernel's image: loaded at 1 MiB, a little under 1 MiB long.
const X86_IMAGE: (u64, u64) = (MIB, 0xed000);

fn machines() -> Vec<Machine> {
    // The x86_64 kernel reserves the low 1 MiB, its image (at 1 MiB), the PVH boot data (a
    // few small ranges, left out here) and a 64-frame page-table pool; the aarch64 kernel its
    // image, the device tree and the pool. Sizes and places as the kernels' serial logs show.
    let x86_reserve = vec![(0, MIB), X86_IMAGE, (0x3000_0000, 64 * PAGE)];
    let mut gib3 = q35_low(2 * GIB);
    gib3.push(E820Entry::new(4 * GIB, GIB, E820Type::Ram));
    vec![
        Machine {
            name: "x86_64 kernel, q35 -m 512M",
            base: 0,
            span: 512 * MIB,
            e820: q35_low(512 * MIB),
            reserve: vec![(0, MIB), X86_IMAGE, (0x1f00_0000, 64 * PAGE)],
        },
        Machine {
            name: "x86_64 kernel, q35 -m 3G (1 GiB above 4 GiB)",
            base: 0,
            span: 5 * GIB,
            e820: gib3,
            reserve: x86_reserve,
        },
        Machine {
            name: "aarch64 kernel, virt -m 512M (RAM at 1 GiB)",
            base: GIB,
            span: 512 * MIB,
            e820: vec![E820Entry::new(GIB, 512 * MIB, E820Type::Ram)],
            // The device tree at the start of RAM, the image at 1 GiB + 2 MiB, the pool.
            reserve: vec![
                (GIB, MIB),
                (GIB + 2 * MIB, 0xdd000),
                (0x5ffa_0000, 64 * PAGE),
            ],
        },
        Machine {
            name: "16 GiB, one CPU",
            base: 0,
            span: 16 * GIB,
            e820: vec![
                E820Entry::new(0, 0x9_fc00, E820Type::Ram),
                E820Entry::new(MIB, 16 * GIB - MIB, E820Type::Ram),
            ],
            reserve: vec![(0, MIB), (MIB, 2 * MIB)],
        },
    ]
}

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start), len).expect("range")
}

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE)
}

fn main() {
    println!(
        "values a kernel holds during boot (stack or static): MmBuilder {} B, Mm {} B",
        size_of::<MmBuilder<'static, OneCpu, X86_64>>(),
        size_of::<mmkit::Mm<'static, OneCpu, X86_64>>()
    );
    for m in machines() {
        let mem = HostRam::new(PhysAddr::new(m.base), m.span);
        // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
        let mut builder = unsafe { MmBuilder::new(OneCpu, &mem) }.e820(&m.e820);
        for &(start, len) in &m.reserve {
            builder = builder.reserve(range(start, len));
        }

        // The builder's own inputs, read the way `boot` reads them.
        let cfg = BuddyConfig::default();
        let regions: Vec<PhysRange> = builder
            .bootmem_mut()
            .memory_regions()
            .iter()
            .map(|r| r.range())
            .collect();
        let (lo, hi) = regions.iter().fold((u64::MAX, 0), |(lo, hi), r| {
            let p = r.whole_pfns();
            (lo.min(p.start), hi.max(p.end))
        });
        let (nodes, cpus) = (1, OneCpu.nr_cpus());
        let slots = VMALLOC_SIZE / X86_64::FOUR_LEVEL.granule().bytes();
        let bitmap = slots.div_ceil(64) * 8;
        let memmap = memmap_len(&regions, cfg.max_order) as u64;
        // The owner table is sparse like the memmap: 4-byte entries over the span in
        // sections of 2^max_order frames, bytes for present sections only.
        let sec = 1u64 << cfg.max_order;
        let owner_sections = hi.div_ceil(sec) - lo / sec;
        let present: u64 = memmap_sections(&regions, cfg.max_order)
            .map(|(a, b)| b - a)
            .sum();
        // The owner map object and the copy of the metadata log (40 ranges) are private
        // types: their pages are what `boot_cost` counts beyond the other small structures.
        let builder = builder.vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC_BASE), VMALLOC_SIZE).expect("window"),
        );
        let cost = builder.boot_cost().expect("cost");
        // vmalloc's own state object, beside its three bitmaps.
        let vmalloc_state = cost.vmalloc_bytes - 3 * pages(bitmap) * PAGE;
        let others = pages((regions.len() * size_of::<PhysRange>()) as u64)
            + pages(nodes as u64)
            + pages(size_of::<PageAllocator<'static, OneCpu>>() as u64);
        let owner_object_and_log = cost.other_bytes - others * PAGE;
        let parts: [(String, u64, u64); 11] = [
            (
                format!(
                    "memory ranges: {} × {} B",
                    regions.len(),
                    size_of::<PhysRange>()
                ),
                (regions.len() * size_of::<PhysRange>()) as u64,
                1,
            ),
            (
                format!(
                    "per-CPU page lists: {nodes} node × 4 zones × {cpus} CPU × {} B",
                    size_of::<PerCpuPages>()
                ),
                (pcp_storage_len(nodes, cpus) * size_of::<PerCpuPages>()) as u64,
                1,
            ),
            (format!("CPU→node map: {cpus} × 1 B"), cpus as u64, 1),
            (
                format!("page-owner section table: {owner_sections} sections × 4 B"),
                owner_sections * 4,
                1,
            ),
            (
                format!(
                    "page-owner bytes: ({present} present + 2 shared sections) × 2^{} B",
                    cfg.max_order
                ),
                (present + 2) << cfg.max_order,
                1,
            ),
            (
                "page-owner map and the boot-structure log".to_string(),
                owner_object_and_log,
                1,
            ),
            (format!("vmalloc bitmaps: 3 × {slots} slots / 8"), bitmap, 3),
            ("vmalloc state".to_string(), vmalloc_state, 1),
            (
                "page allocator (buddy, owner table, map)".to_string(),
                size_of::<PageAllocator<'static, OneCpu>>() as u64,
                1,
            ),
            (
                format!(
                    "memmap: {memmap} slots (sparse, sections of 2^{}) × {} B",
                    cfg.max_order,
                    size_of::<PageDesc>()
                ),
                memmap * size_of::<PageDesc>() as u64,
                1,
            ),
            (format!("node distances: {nodes} × 1 B"), nodes as u64, 1),
        ];

        let mm = builder.boot().expect("boot");
        let s = *mm.boot_summary();
        let marked = (s.span.0..s.span.1)
            .filter(|&p| mm.page_allocator().is_boot_metadata(Pfn::new(p)))
            .count() as u64;

        println!("== {}", m.name);
        println!(
            "   firmware map: {} MiB of memory in {} ranges, frames [{:#x}, {:#x})",
            s.memory_bytes / MIB,
            regions.len(),
            s.span.0,
            s.span.1
        );
        let mut frames = 0;
        for (what, bytes, allocations) in &parts {
            let f = allocations * pages(*bytes);
            frames += f;
            println!("   {what:<64} {:>9} B  {f:>5} frames", allocations * bytes);
        }
        println!(
            "   total: {frames} frames = {} KiB ({:.3}% of memory); marked as boot metadata: {marked} frames",
            frames * PAGE / KIB,
            (frames * PAGE) as f64 * 100.0 / s.memory_bytes as f64
        );
        println!(
            "   BootSummary: {} MiB reserved at the hand-off, {} KiB of page descriptors",
            s.reserved_bytes / MIB,
            s.memmap_bytes / KIB
        );
        assert_eq!(
            frames, marked,
            "the formula and the facade's metadata marks disagree"
        );
    }
}
