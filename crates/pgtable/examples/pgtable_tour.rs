//! A tour of mmkit-pgtable on the host: build an x86_64 4-level table and an aarch64 16 KiB
//! granule table over a frame arena, map with automatic page sizes, split with a partial
//! unmap, invalidate through the software MMU, and walk the result.
//!
//! Run: `cargo run -p mmkit-pgtable --features std --example pgtable_tour`

use mmkit_addr::{PhysAddr, VaHalf, VirtAddr};
use mmkit_pgtable::arch::aarch64::{Aarch64, Granule};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::host::TableArena;
use mmkit_pgtable::model::HostFormat;
use mmkit_pgtable::softmmu::{Access, Mode, SoftMmu};
use mmkit_pgtable::{Attrs, MapSize, PageTable};

fn tour<F: HostFormat>(name: &str, f: F, va: u64) {
    let arena = TableArena::new(PhysAddr::new(0x4000_0000), f.granule(), 64);
    let mut pt = PageTable::new(f, arena.handle(), arena.handle()).expect("root frame");
    let mut mmu = SoftMmu::new(f.walker(&arena, pt.root()));
    let block = pt
        .format()
        .levels()
        .iter()
        .rev()
        .find_map(|l| l.leaf.filter(|s| *s != f.granule()))
        .unwrap();
    let g = f.granule().bytes();
    // A block-aligned range plus a page on each side.
    let start = va + block.bytes() - g;
    let len = block.bytes() + 2 * g;
    let flush = pt
        .map(
            VirtAddr::new(start),
            PhysAddr::new(0x1_0000_0000 + block.bytes() - g),
            len,
            Attrs::KERNEL_RW,
            MapSize::Largest,
        )
        .expect("map");
    let _ = flush.invalidate(&mut mmu);
    println!(
        "{name}: mapped {len:#x} bytes with {} tables",
        pt.table_frames()
    );
    for m in pt.cursor(VirtAddr::new(start), len).unwrap() {
        println!(
            "  {:#x} -> {:#x} {} {:?}",
            m.page_va,
            m.page_pa,
            m.size,
            m.attrs()
        );
    }
    // Unmap one page inside the block: the block is split, the flush drops the stale entry.
    let hole = VirtAddr::new(va + block.bytes() + 3 * g);
    mmu.access(hole, Access::Read, Mode::Kernel)
        .expect("mapped");
    let flush = pt.unmap(hole, g).expect("unmap");
    let freed = flush.invalidate(&mut mmu);
    pt.free_tables(freed).expect("tables of this table");
    println!(
        "  after unmapping {hole:#x}: {:?}, {} tables",
        mmu.access(hole, Access::Read, Mode::Kernel),
        pt.table_frames()
    );
    let report = pt.verify().expect("invariants hold");
    println!("  verify: {report:?}");
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0);
}

fn main() {
    tour("x86_64 4-level", X86_64::FOUR_LEVEL, 0xffff_8000_0000_0000);
    tour(
        "aarch64 16K/47-bit TTBR0",
        Aarch64::new(Granule::K16, 47, VaHalf::Lower).unwrap(),
        1 << 36,
    );
}
