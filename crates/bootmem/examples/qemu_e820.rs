//! Boot-time walk-through on a realistic QEMU q35 machine with 6 GiB of RAM.
//!
//! Ingests the e820 map SeaBIOS gives such a guest (the 640 KiB conventional-memory hole, the
//! BIOS area, the MMCONFIG window, the 0xfeffc000 "etc/e820" page, RAM above 4 GiB), reserves
//! what a kernel reserves (page 0, the kernel image, the initrd), makes a few early
//! allocations, prints the region report, then hands off and prints the blocks: summarised per
//! order, and in full below 16 MiB.
//!
//! Run: `cargo run -p mmkit-bootmem --example qemu_e820`

use mmkit_addr::{Order, PhysAddr, PAGE_SIZE};
use mmkit_bootmem::firmware::e820::{self, E820Entry, E820Type};
use mmkit_bootmem::{AllocRequest, Bootmem, NodeId};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The map SeaBIOS reports to a `qemu-system-x86_64 -M q35 -m 6G` guest, in firmware order
/// (which is not sorted: the high RAM entry comes first here on purpose, and the BIOS ROM
/// shadow overlaps the reserved 0xf0000 area, as some firmware reports it).
const Q35_6G: [E820Entry; 10] = [
    E820Entry::new(0x1_0000_0000, 4 * GIB, E820Type::Ram),
    E820Entry::new(0x0, 0x9_fc00, E820Type::Ram),
    E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved),
    E820Entry::new(0xf_0000, 0x1_0000, E820Type::Reserved),
    E820Entry::new(0xe_8000, 0x1_8000, E820Type::Reserved),
    E820Entry::new(0x10_0000, 0x7fee_0000, E820Type::Ram),
    E820Entry::new(0x7ffe_0000, 0x2_0000, E820Type::Reserved),
    E820Entry::new(0xb000_0000, 0x1000_0000, E820Type::Reserved),
    E820Entry::new(0xfeff_c000, 0x4000, E820Type::Reserved),
    E820Entry::new(0xfffc_0000, 0x4_0000, E820Type::Reserved),
];

fn main() {
    println!("BIOS-provided physical RAM map (sanitized):");
    for run in e820::sanitized(&Q35_6G) {
        println!("  BIOS-e820: {run}");
    }

    let mut bm: Bootmem = Bootmem::new();
    let summary = e820::ingest(&mut bm, &Q35_6G).expect("e820 map");
    println!(
        "\ne820: {} runs, {} MiB usable RAM, {} KiB other",
        summary.runs,
        summary.ram / MIB,
        summary.other >> 10
    );

    // What every x86 kernel reserves first.
    bm.reserve(PhysAddr::new(0), PAGE_SIZE).expect("page 0");
    bm.reserve(PhysAddr::new(16 * MIB), 28 * MIB)
        .expect("kernel image");
    bm.reserve(PhysAddr::new(0x7b00_0000), 48 * MIB)
        .expect("initrd");

    // Early allocations: top-down below 4 GiB (the early page tables map that much), like
    // memblock's allocations before the direct map is complete.
    bm.set_current_limit(PhysAddr::new(4 * GIB));
    let pgtables = bm.alloc(4 * PAGE_SIZE, PAGE_SIZE).expect("page tables");
    let memmap_bytes = (bm.memory_size() / PAGE_SIZE) * 16;
    let memmap = bm
        .alloc_request(&AllocRequest::new(memmap_bytes, 2 * MIB).prefer_node(NodeId::ZERO))
        .expect("memmap");
    bm.set_current_limit(PhysAddr::new(u64::MAX));
    bm.set_bottom_up(true);
    let trampoline = bm
        .alloc_request(&AllocRequest::new(PAGE_SIZE, PAGE_SIZE).below(PhysAddr::new(MIB)))
        .expect("real-mode trampoline");
    bm.set_bottom_up(false);
    println!(
        "early page tables at {pgtables}, memmap ({} KiB) at {memmap}, trampoline at {trampoline}",
        memmap_bytes >> 10
    );
    bm.verify().expect("bootmem invariants");

    println!("\n{bm}");

    let handoff = bm.handoff(Order::new(10));
    let mut per_order = [0u64; 11];
    let mut blocks = 0u64;
    for b in handoff.blocks() {
        per_order[b.order.get() as usize] += 1;
        blocks += 1;
    }
    println!(
        "hand-off: {} blocks, {} free pages ({} MiB), max order {}",
        blocks,
        handoff.free_pages(),
        handoff.free_pages() * PAGE_SIZE / MIB,
        handoff.max_order()
    );
    println!("blocks per order (like /proc/buddyinfo after the hand-off):");
    print!("  order:");
    for o in 0..per_order.len() {
        print!("{o:>7}");
    }
    print!("\n  count:");
    for c in per_order {
        print!("{c:>7}");
    }
    println!("\n\nblocks below 16 MiB:");
    for b in handoff
        .blocks()
        .take_while(|b| b.range().end().as_u64() <= 16 * MIB)
    {
        println!("  {} order {:>2} node {}", b.range(), b.order, b.nid);
    }
    let reserved: u64 = handoff.reserved_in_memory().map(|r| r.range.len()).sum();
    let node0 = handoff.node_pages(Some(NodeId::ZERO));
    println!(
        "\nnode 0: {} present pages, {} managed; reserved memory {} KiB",
        node0.present,
        node0.managed,
        reserved >> 10
    );
}
