//! Fork-style page-table copies over the facade's frame source (`TableFrames`): two tables
//! over one `Mm` share whole read-only leaf tables (their share counts live in the buddy's
//! descriptors), a write un-shares, and tearing both down gives every table frame back.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{PhysAddr, PhysRange, VirtAddr};
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::{AttrChange, Attrs, MapSize, PageTable};
use mmkit::{KernelMap, MapRef, Mm, MmBuilder, NotLoaded, PageAllocator, TableFrames};

const MIB: u64 = 1 << 20;
/// Where the test tables map (user half), and how much: four leaf tables of 4 KiB pages.
const VA: u64 = 0x4000_0000;
const LEN: u64 = 8 * MIB;

fn boot(mem: &HostRam) -> Mm<'_, HostPlatform> {
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(1), mem) }
        .memory(PhysRange::from_start_size(PhysAddr::new(0), 64 * MIB).unwrap())
        .reserve(PhysRange::from_start_size(PhysAddr::new(MIB), 4 * MIB).unwrap())
        .boot()
        .unwrap()
}

type Table<'m> = PageTable<X86_64, MapRef<'m>, TableFrames<'m, HostPlatform>>;

fn table<'m>(pages: &'m PageAllocator<'m, HostPlatform>, map: &'m dyn KernelMap) -> Table<'m> {
    PageTable::new(X86_64::FOUR_LEVEL, MapRef(map), TableFrames(pages)).unwrap()
}

/// Page-table frames the `Mm` has handed out (meminfo's `PageTables`).
fn table_frames(mm: &Mm<'_, HostPlatform>) -> u64 {
    mm.meminfo().page_tables_kb / 4
}

fn tlb() -> NotLoaded {
    // SAFETY: these tables are never loaded into an MMU.
    unsafe { NotLoaded::new() }
}

#[test]
fn copies_share_read_only_leaf_tables_and_give_every_frame_back() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let base = table_frames(&mm);
    // Accessed already: the hardware would otherwise set A in a shared table.
    let ro = Attrs::READ | Attrs::USER | Attrs::ACCESSED;
    let pages = mm.page_allocator();
    let mut src = table(pages, &mem);
    let fl = src
        .map(
            VirtAddr::new(VA),
            PhysAddr::new(32 * MIB),
            LEN,
            ro,
            MapSize::Exactly(mmkit::addr::PageSize::Size4K),
        )
        .unwrap();
    src.free_tables(fl.invalidate(&mut tlb())).unwrap();
    let mut dst = table(pages, &mem);
    let before_copy = table_frames(&mm);
    let fl = src.copy_range_to(&mut dst, VirtAddr::new(VA), LEN).unwrap();
    src.free_tables(fl.invalidate(&mut tlb())).unwrap();
    // The copy took its upper tables only: the four leaf tables are shared.
    assert_eq!(
        table_frames(&mm) - before_copy,
        2,
        "PDPT and PD of the copy"
    );
    assert_eq!(
        src.raw_leaf(VirtAddr::new(VA)),
        dst.raw_leaf(VirtAddr::new(VA))
    );
    assert_eq!(src.table_frames(), dst.table_frames());
    // A write on the copy un-shares the table it touches, and only that one.
    let before_write = table_frames(&mm);
    let fl = dst
        .protect(
            VirtAddr::new(VA),
            4096,
            AttrChange::flags(Attrs::WRITE, Attrs::empty()),
        )
        .unwrap();
    dst.free_tables(fl.invalidate(&mut tlb())).unwrap();
    assert_eq!(
        table_frames(&mm) - before_write,
        1,
        "a private copy of one leaf table; the shared one stays with the source"
    );
    assert!(src
        .translate(VirtAddr::new(VA))
        .unwrap()
        .attrs()
        .contains(Attrs::READ));
    assert!(!src
        .translate(VirtAddr::new(VA))
        .unwrap()
        .attrs()
        .contains(Attrs::WRITE));
    assert!(dst
        .translate(VirtAddr::new(VA))
        .unwrap()
        .attrs()
        .contains(Attrs::WRITE));
    mm.verify().unwrap();
    let _ = src.destroy(&mut tlb());
    let _ = dst.destroy(&mut tlb());
    assert_eq!(table_frames(&mm), base, "every table frame went back");
    mm.verify().unwrap();
}
