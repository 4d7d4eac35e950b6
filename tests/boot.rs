//! Full boot from a synthetic firmware map and every facade API, on the host.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE};
use mmkit::bootmem::firmware::e820::{E820Entry, E820Type};
use mmkit::buddy::{CoreSize, FreeError, GfpFlags, ZoneType};
use mmkit::host::HostRam as HostMemory;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::softmmu::x86_64::X86Walker;
use mmkit::pgtable::softmmu::{Access, Mode, SoftMmu};
use mmkit::pgtable::Attrs;
use mmkit::slab::{CacheConfig, KmallocKind};
use mmkit::{
    BootError, FreeReservedError, Mm, MmBuilder, PageFreeError, PageUse, VfreeError, VmallocError,
};

const MIB: u64 = 1 << 20;
/// Memory spans 0..160 MiB: two nodes of 80 MiB, with a hole and firmware ranges.
const SPAN: u64 = 160 * MIB;
const VMALLOC: u64 = 0xffff_c900_0000_0000;

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start), len).unwrap()
}

fn e820_map() -> [E820Entry; 6] {
    [
        E820Entry::new(0, 0x9_fc00, E820Type::Ram),
        E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved),
        E820Entry::new(0xf_0000, 0x1_0000, E820Type::Reserved),
        E820Entry::new(MIB, 63 * MIB, E820Type::Ram),
        // A hole at 64..72 MiB, then ACPI tables.
        E820Entry::new(72 * MIB, MIB, E820Type::Acpi),
        E820Entry::new(73 * MIB, SPAN - 73 * MIB, E820Type::Ram),
    ]
}

fn boot(mem: &HostMemory) -> Mm<'_, HostPlatform> {
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(4), mem) }
        .e820(&e820_map())
        .reserve(range(2 * MIB, 4 * MIB)) // kernel image
        .reserve(range(8 * MIB, MIB)) // initrd
        .node(1, range(80 * MIB, SPAN - 80 * MIB))
        .node_distance(0, 1, 21)
        .cpu_node(2, 1)
        .cpu_node(3, 1)
        .movablecore(CoreSize::Percent(25))
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC), 64 * MIB).unwrap(),
        )
        .boot()
        .expect("boot")
}

#[test]
fn boot_accounts_every_frame_of_the_map() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    mm.verify().unwrap();
    let s = *mm.boot_summary();
    assert_eq!(s.nr_nodes, 2);
    // e820 RAM: 0x9fc00 + 63 MiB + (160 - 73) MiB.
    assert_eq!(s.memory_bytes, 0x9_fc00 + 63 * MIB + (SPAN - 73 * MIB));
    let info = mm.meminfo();
    assert!(
        info.total_kb > 140 * 1024 && info.total_kb < 150 * 1024,
        "{info}"
    );
    assert!(
        info.reserved_kb >= 5 * 1024,
        "kernel + initrd are reserved: {info}"
    );
    // Boot metadata came from bootmem: page tables were built. kmalloc caches come with
    // their first use.
    assert!(info.page_tables_kb > 0);
    assert_eq!(
        info.slab_kb, 0,
        "no kmalloc cache before its first use: {info}"
    );
    let p = mm.kmalloc(64, GfpFlags::KERNEL).unwrap();
    assert!(mm.meminfo().slab_kb > 0);
    // SAFETY: live, freed once.
    unsafe { mm.kfree(p).unwrap() };
    // ZONE_MOVABLE was carved and node 1 exists.
    assert!(mm
        .buddy()
        .zone_stats(1, ZoneType::Movable)
        .is_some_and(|z| z.managed > 0));
    assert!(mm.buddy().zone_stats(1, ZoneType::Dma32).is_some());
}

#[test]
fn reserved_ranges_are_never_allocated() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mm = boot(&mem);
    let forbidden = [
        range(2 * MIB, 4 * MIB),
        range(8 * MIB, MIB),
        range(64 * MIB, 9 * MIB),
    ];
    let mut got = Vec::new();
    while let Ok(pfn) = mm.alloc_pages(GfpFlags::KERNEL, Order::new(4)) {
        let r = PhysRange::from_pfns(pfn, 16).unwrap();
        assert!(
            forbidden.iter().all(|f| !f.overlaps(&r)),
            "{r:?} is reserved"
        );
        got.push(pfn);
    }
    assert!(got.len() > 1000);
    for pfn in got {
        mm.free_pages(pfn, Order::new(4)).unwrap();
    }
}

#[test]
fn pages_round_trip_and_bad_frees_change_nothing() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let free_before = mm.meminfo().free_kb;
    let pfn = mm
        .alloc_pages(GfpFlags::HIGHUSER_MOVABLE | GfpFlags::ZERO, Order::new(3))
        .unwrap();
    let p = mm.page_address(pfn, Order::new(3)).unwrap();
    // SAFETY: the block is ours and mapped by the host memory.
    unsafe { p.as_ptr().write_bytes(0xab, 8 * PAGE_SIZE as usize) };
    assert_eq!(
        mm.page_allocator().owner(pfn).unwrap().usage,
        PageUse::Pages
    );
    assert_eq!(mm.meminfo().pages_kb[1], 32);
    assert_eq!(
        mm.free_pages(pfn, Order::new(2)),
        Err(PageFreeError::Buddy(FreeError::WrongOrder { allocated: 3 }))
    );
    mm.verify().unwrap();
    mm.free_pages(pfn, Order::new(3)).unwrap();
    assert_eq!(
        mm.free_pages(pfn, Order::new(3)),
        Err(PageFreeError::Buddy(FreeError::DoubleFree))
    );
    assert_eq!(mm.meminfo().pages_kb, [0, 0, 0]);
    mm.drain_all();
    assert_eq!(mm.meminfo().free_kb, free_before, "every frame came back");
    mm.verify().unwrap();
}

#[test]
fn kmalloc_family_and_caches_work_and_refuse_bad_pointers() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let p = mm.kzalloc(200, GfpFlags::KERNEL).unwrap();
    // SAFETY: 200 zeroed bytes are ours.
    unsafe {
        assert!(core::slice::from_raw_parts(p.as_ptr(), 200)
            .iter()
            .all(|&b| b == 0));
        // ksize is the usable size of the size class (the slab's policy): at least what was
        // asked, and all of it writable.
        let usable = mm.ksize(p).unwrap();
        assert!((200..=256).contains(&usable), "{usable}");
        p.as_ptr().write_bytes(7, usable);
    }
    // SAFETY: `p` is live and given up.
    let q = unsafe { mm.krealloc(p, 5000, GfpFlags::KERNEL) }.unwrap();
    // SAFETY: the first 200 bytes were copied.
    assert_eq!(unsafe { *q.as_ptr().add(199) }, 7);
    let big = mm.kmalloc(100_000, GfpFlags::KERNEL).unwrap();
    assert!(mm.meminfo().slab_kb >= 128);
    // SAFETY: each pointer is live and freed once; the second free of `big` must be refused.
    unsafe {
        mm.kfree(q).unwrap();
        mm.kfree(big).unwrap();
        assert!(mm.kfree(big).is_err());
    }
    // A page from alloc_pages is not a kmalloc pointer.
    let pfn = mm.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap();
    let page = mm.page_address(pfn, Order::ZERO).unwrap();
    // SAFETY: refused without touching the page.
    assert!(unsafe { mm.kfree(page) }.is_err());
    mm.free_pages(pfn, Order::ZERO).unwrap();
    // A slab page cannot be freed through free_pages.
    let obj = mm.kmalloc(64, GfpFlags::KERNEL).unwrap();
    let slab_pfn = mm
        .page_allocator()
        .map()
        .virt_to_phys(VirtAddr::from_ptr(obj.as_ptr()))
        .unwrap()
        .pfn();
    let (head, order) = mm.buddy().allocated_block(slab_pfn).unwrap();
    assert_eq!(
        mm.free_pages(head, order),
        Err(PageFreeError::NotFromAllocPages(PageUse::Slab))
    );
    // SAFETY: live, freed once.
    unsafe { mm.kfree(obj).unwrap() };

    #[derive(Default)]
    struct Inode {
        ino: u64,
        _pad: [u64; 7],
    }
    let inodes = mm
        .typed_cache::<Inode>(CacheConfig::new("inode", 64))
        .unwrap();
    let mut a = inodes.alloc().unwrap();
    a.ino = 42;
    assert_eq!(a.ino, 42);
    drop(a);
    let cache = mm.cache_create(&CacheConfig::new("dentry", 192)).unwrap();
    let o = cache.alloc().unwrap();
    // SAFETY: `o` came from this cache.
    unsafe { cache.free(o).unwrap() };
    let report = format!("{}", mm.report());
    assert!(
        report.contains("kmalloc-64") && report.contains("Node 1"),
        "{report}"
    );
    assert!(
        report.contains("compact_migrate_scanned ")
            && report.contains("pgmigrate_success ")
            && report.contains("extfrag_index\nNode 0, zone")
            && report.contains("unusable_index\nNode 0, zone"),
        "{report}"
    );
    mm.verify().unwrap();
}

#[test]
fn vmalloc_maps_pages_with_a_guard_and_frees_after_invalidation() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let root = mm.with_page_table(|pt| pt.root()).unwrap();
    let mut mmu = SoftMmu::new(X86Walker::new(&mem, root, 4));
    let before = mm.meminfo();
    let a = mm.vzalloc(5 * PAGE_SIZE as usize + 1, &mut mmu).unwrap();
    let b = mm.vmalloc(PAGE_SIZE as usize, &mut mmu).unwrap();
    // Six pages then a guard: `b` starts after the guard.
    assert_eq!(b.as_u64(), a.as_u64() + 7 * PAGE_SIZE);
    for i in 0..6 {
        let va = VirtAddr::new(a.as_u64() + i * PAGE_SIZE + 8);
        let pa = mmu.access(va, Access::Write, Mode::Kernel).unwrap();
        assert_eq!(mm.vmalloc_to_pfn(va), Some(pa.pfn()));
    }
    let guard = VirtAddr::new(a.as_u64() + 6 * PAGE_SIZE);
    assert!(mmu.access(guard, Access::Read, Mode::Kernel).is_err());
    assert!(
        mmu.access(a, Access::Read, Mode::User).is_err(),
        "kernel only"
    );
    assert_eq!(mm.meminfo().vmalloc_used_kb, 28);
    mm.verify().unwrap();

    assert_eq!(
        mm.vfree(VirtAddr::new(a.as_u64() + PAGE_SIZE), &mut mmu),
        Err(VfreeError::NotAnArea(VirtAddr::new(a.as_u64() + PAGE_SIZE)))
    );
    mm.vfree(a, &mut mmu).unwrap();
    assert!(
        mmu.access(a, Access::Read, Mode::Kernel).is_err(),
        "TLB was invalidated"
    );
    assert_eq!(mm.vfree(a, &mut mmu), Err(VfreeError::NotAnArea(a)));
    mm.vfree(b, &mut mmu).unwrap();
    assert_eq!(mm.meminfo().vmalloc_used_kb, 0);

    // vmap borrows frames; vunmap leaves them allocated.
    let pfn = mm.alloc_pages(GfpFlags::KERNEL, Order::new(1)).unwrap();
    let frames = [pfn, Pfn::new(pfn.as_u64() + 1)];
    let v = mm.vmap(&frames, Attrs::KERNEL_RO, &mut mmu).unwrap();
    assert_eq!(
        mmu.access(
            VirtAddr::new(v.as_u64() + PAGE_SIZE),
            Access::Read,
            Mode::Kernel
        )
        .map_err(|e| format!("{e:?} at {v:?} frames {frames:?} root {root:?}"))
        .unwrap()
        .pfn(),
        frames[1]
    );
    assert!(
        mmu.access(v, Access::Write, Mode::Kernel).is_err(),
        "read-only"
    );
    assert_eq!(mm.vfree(v, &mut mmu), Err(VfreeError::WrongKind(v)));
    mm.vunmap(v, &mut mmu).unwrap();
    mm.free_pages(pfn, Order::new(1)).unwrap();
    assert_eq!(mm.vmalloc(0, &mut mmu), Err(VmallocError::ZeroSize));
    assert_eq!(
        mm.vmalloc(128 * MIB as usize, &mut mmu),
        Err(VmallocError::NoVirtualSpace)
    );
    mm.drain_all();
    mm.verify().unwrap();
    let after = mm.meminfo();
    assert_eq!(after.pages_kb, before.pages_kb);
    assert_eq!(after.vmalloc_used_kb, 0);
}

#[test]
fn boot_errors_are_reported_not_panicked() {
    let mem = HostMemory::new(PhysAddr::new(0), 16 * MIB);
    // SAFETY: as in `boot`.
    let empty = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }.boot();
    assert_eq!(empty.err(), Some(BootError::NoMemory));
    // SAFETY: as in `boot`.
    let bad_node = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
        .memory(range(MIB, 8 * MIB))
        .node(9, range(MIB, MIB))
        .boot();
    assert_eq!(bad_node.err(), Some(BootError::BadNode(9)));
    // SAFETY: as in `boot`.
    let bad_window = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
        .memory(range(MIB, 8 * MIB))
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(0x8000_0000_0000), 4096).unwrap(),
        )
        .boot();
    assert!(matches!(
        bad_window.err(),
        Some(BootError::BadVmallocRange(_))
    ));
}

#[test]
fn svg_map_draws_every_pageblock_with_memory() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mm = boot(&mem);
    let pfn = mm
        .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(9))
        .unwrap();
    let svg = mm.svg_map("test <map>").to_string();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("test &lt;map&gt;"));
    let mut with_memory = 0;
    mm.pageblock_census(|c| with_memory += usize::from(c.hole < 512));
    // One cell per pageblock that has memory, plus eight legend swatches and zone bars.
    let cells = svg.matches("<rect x=").count();
    let zones = svg.matches("#1f3fbf\"/>").count();
    assert_eq!(cells, with_memory + 8 + zones, "{svg}");
    assert!(
        svg.contains(mmkit::PALETTE[1]),
        "the movable huge page is drawn"
    );
    mm.free_pages(pfn, Order::new(9)).unwrap();
}

#[test]
fn allocator_api2_collections_live_in_mm() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    {
        let mut v = allocator_api2::vec::Vec::new_in(&mm);
        for i in 0..100_000u64 {
            v.push(i);
        }
        assert_eq!(v.iter().sum::<u64>(), 100_000 * 99_999 / 2);
        let p = v.as_ptr() as *const u8;
        assert!(mm
            .page_allocator()
            .map()
            .virt_to_phys(VirtAddr::from_ptr(p))
            .is_some());
        let empty: allocator_api2::vec::Vec<u64, _> =
            allocator_api2::vec::Vec::with_capacity_in(0, &mm);
        assert!(empty.is_empty());
    }
    mm.drain_all();
    mm.verify().unwrap();
    assert_eq!(mm.meminfo().pages_kb, [0; 3]);
}

#[test]
fn vmalloc_on_aarch64_16k_tables_maps_granule_sized_pages() {
    use mmkit::addr::VaHalf;
    use mmkit::pgtable::arch::aarch64::{Aarch64, Granule};
    use mmkit::pgtable::softmmu::aarch64::Aarch64Walker;

    let mem = HostMemory::new(PhysAddr::new(0), 64 * MIB);
    let fmt = Aarch64::new(Granule::K16, 48, VaHalf::Upper).unwrap();
    let window =
        VirtRange::from_start_size(VirtAddr::new(0xffff_0000_1000_0000), 16 * MIB).unwrap();
    // SAFETY: `mem` is the whole machine and nothing else uses it.
    let mut mm = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
        .memory(range(MIB, 63 * MIB))
        .vmalloc_area(fmt, window)
        .boot()
        .unwrap();
    let root = mm.with_page_table(|pt| pt.root()).unwrap();
    let mut mmu = SoftMmu::new(Aarch64Walker::new(&mem, None, Some((root, fmt))));
    let va = mm.vmalloc(40 << 10, &mut mmu).unwrap(); // three 16 KiB pages
    for i in 0..3u64 {
        let at = VirtAddr::new(va.as_u64() + i * (16 << 10) + 100);
        let pa = mmu.access(at, Access::Write, Mode::Kernel).unwrap();
        assert_eq!(
            pa.as_u64() % (16 << 10),
            100,
            "16 KiB frames are 16 KiB aligned"
        );
        assert_eq!(mm.vmalloc_to_pfn(at), Some(pa.pfn()));
    }
    let guard = VirtAddr::new(va.as_u64() + 3 * (16 << 10));
    assert!(mmu.access(guard, Access::Read, Mode::Kernel).is_err());
    assert_eq!(mm.meminfo().vmalloc_used_kb, 48);
    mm.verify().unwrap();
    mm.vfree(va, &mut mmu).unwrap();
    assert_eq!(mm.meminfo().vmalloc_used_kb, 0);
    mm.verify().unwrap();
}

#[test]
fn kmalloc_and_caches_keep_per_node_slabs() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let node_of = |p: core::ptr::NonNull<u8>| {
        let pa = mm
            .page_allocator()
            .map()
            .virt_to_phys(VirtAddr::from_ptr(p.as_ptr()))
            .unwrap();
        mm.buddy().pfn_node(pa.pfn()).unwrap()
    };
    mm.platform().bind_current_thread(0);
    let near = mm.kmalloc(100, GfpFlags::KERNEL).unwrap();
    let far = mm.kmalloc_node(100, GfpFlags::KERNEL, 1).unwrap();
    let big = mm.kmalloc_node(64 << 10, GfpFlags::KERNEL, 1).unwrap();
    assert_eq!((node_of(near), node_of(far), node_of(big)), (0, 1, 1));
    let cache = mm
        .kmalloc_caches()
        .cache_for(100, KmallocKind::Normal)
        .unwrap();
    assert_eq!(cache.nr_nodes(), 2);
    assert!(cache.node_stats(1).unwrap().active_objects >= 1);
    let pfn = mm
        .alloc_pages_node(1, GfpFlags::KERNEL | GfpFlags::THISNODE, Order::new(2))
        .unwrap();
    assert_eq!(mm.buddy().pfn_node(pfn), Some(1));
    mm.free_pages(pfn, Order::new(2)).unwrap();
    // SAFETY: each allocated above and freed once.
    unsafe {
        mm.kfree(far).unwrap();
        mm.kfree(near).unwrap();
        mm.kfree(big).unwrap();
    }
    mm.verify().unwrap();
}

#[test]
fn reserved_memory_goes_back_to_the_buddy_after_boot() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let initrd = range(8 * MIB, MIB);
    let managed = mm.buddy().total_managed();
    let reserved_kb = mm.meminfo().reserved_kb;
    // SAFETY: the simulated initrd is never read in this test.
    assert_eq!(unsafe { mm.free_reserved_range(initrd) }, Ok(256));
    assert_eq!(mm.buddy().total_managed(), managed + 256);
    assert_eq!(mm.meminfo().reserved_kb, reserved_kb - 1024);
    mm.verify().unwrap();
    // Twice is refused; so are free memory, holes and mmkit's own structures.
    let initrd_pfn = initrd.start().pfn();
    // SAFETY: refused without any change (checked below).
    unsafe {
        assert_eq!(
            mm.free_reserved_range(initrd),
            Err(FreeReservedError::NotReserved(initrd_pfn))
        );
        assert_eq!(
            mm.free_reserved_range(range(100 * MIB, MIB)),
            Err(FreeReservedError::NotReserved(Pfn::new(100 * 256)))
        );
        assert_eq!(
            mm.free_reserved_range(range(64 * MIB, 4096)),
            Err(FreeReservedError::NotReserved(Pfn::new(64 * 256))),
            "a hole"
        );
        assert_eq!(
            mm.free_reserved_range(range(8 * MIB + 100, 4000)),
            Err(FreeReservedError::Empty)
        );
    }
    let meta = (0..SPAN / PAGE_SIZE)
        .map(Pfn::new)
        .find(|&p| mm.page_allocator().is_boot_metadata(p))
        .expect("the memmap and owner table live somewhere");
    // A range holding mmkit metadata is refused as a whole.
    let r = PhysRange::from_pfns(meta, 4).unwrap();
    // SAFETY: refused without any change.
    let e = unsafe { mm.free_reserved_range(r) };
    assert_eq!(e, Err(FreeReservedError::Metadata(meta)));
    assert_eq!(mm.buddy().total_managed(), managed + 256);
    mm.verify().unwrap();
    // The frames are allocatable now.
    let mut got = Vec::new();
    let mut seen = false;
    while let Ok(p) = mm.alloc_pages(GfpFlags::KERNEL, Order::new(0)) {
        seen |= initrd.contains(p.addr());
        got.push(p);
    }
    assert!(seen, "a frame of the old initrd was handed out");
    for p in got {
        mm.free_pages(p, Order::new(0)).unwrap();
    }
    mm.verify().unwrap();
}

#[test]
fn layouts_beyond_the_largest_block_take_contiguous_runs() {
    use core::alloc::Layout;
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem);
    let pages_before = mm.meminfo().pages_kb;
    // 6 MiB + 1 byte: more than an order-10 block, 1537 frames.
    let odd = Layout::from_size_align((6 << 20) + 1, 8).unwrap();
    let p = mm
        .alloc_layout(odd, GfpFlags::KERNEL | GfpFlags::ZERO)
        .unwrap();
    // SAFETY: the run is ours; every byte was zeroed.
    let bytes = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), odd.size()) };
    assert!(bytes.iter().all(|&b| b == 0));
    bytes.fill(0x5a);
    assert_eq!(
        mm.meminfo().pages_kb.iter().sum::<u64>(),
        pages_before.iter().sum::<u64>() + 1537 * 4
    );
    // An 8 MiB alignment asks for a run aligned to its power-of-two size.
    let aligned = Layout::from_size_align(5 << 20, 8 << 20).unwrap();
    let q = mm.alloc_layout(aligned, GfpFlags::KERNEL).unwrap();
    assert_eq!(q.as_ptr() as usize % (8 << 20), 0);
    mm.verify().unwrap();
    // SAFETY: each came from `alloc_layout` with this layout and is not used again.
    unsafe {
        mm.dealloc_layout(p, odd).unwrap();
        mm.dealloc_layout(q, aligned).unwrap();
    }
    assert_eq!(mm.meminfo().pages_kb, pages_before);
    mm.verify().unwrap();
    // Larger than any free run: refused, nothing changes.
    let free = mm.meminfo().free_kb;
    assert!(mm
        .alloc_layout(
            Layout::from_size_align(200 << 20, 8).unwrap(),
            GfpFlags::KERNEL
        )
        .is_none());
    assert_eq!(mm.meminfo().free_kb, free);
}

/// A kernel's RCU in miniature: `call_rcu` queues, `synchronize` ends a grace period.
#[derive(Default)]
struct QueueRcu {
    queue: std::sync::Mutex<Vec<(usize, mmkit::slab::RcuCallback)>>,
}

impl QueueRcu {
    /// Run every queued callback. No reader exists in the test, so the grace period is over.
    fn synchronize(&self) -> usize {
        let queued = std::mem::take(&mut *self.queue.lock().unwrap());
        for &(head, func) in &queued {
            let head = core::ptr::NonNull::new(head as *mut mmkit::slab::RcuHead).unwrap();
            // SAFETY: each head was queued by `call_rcu` with this callback, and runs once.
            unsafe { func(head) };
        }
        queued.len()
    }
}

// SAFETY: `synchronize` runs each callback once, after the (trivial) grace period, and
// never touches a head afterwards.
unsafe impl mmkit::slab::Rcu for QueueRcu {
    unsafe fn call_rcu(
        &self,
        head: core::ptr::NonNull<mmkit::slab::RcuHead>,
        func: mmkit::slab::RcuCallback,
    ) {
        self.queue
            .lock()
            .unwrap()
            .push((head.as_ptr() as usize, func));
    }
}

#[test]
fn typesafe_by_rcu_cache_frees_slab_pages_from_the_rcu_callback() {
    use mmkit::slab::CacheFlags;
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let rcu: &'static QueueRcu = Box::leak(Box::default());
    let mut mm = boot(&mem);
    let config = CacheConfig::new("sighand", 2048)
        .flags(CacheFlags::TYPESAFE_BY_RCU)
        .rcu(rcu);
    let mut cache = mm.cache_create(&config).unwrap();
    let objs: Vec<_> = (0..200).map(|_| cache.alloc().unwrap()).collect();
    let slab_kb = mm.meminfo().slab_kb;
    for o in objs {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(o).unwrap() };
    }
    cache.drain_all();
    let pending = cache.stats().rcu_pending_slabs;
    assert!(pending > 0);
    assert_eq!(
        mm.meminfo().slab_kb,
        slab_kb,
        "no slab page freed before the grace period"
    );
    assert_eq!(rcu.synchronize(), pending);
    assert!(mm.meminfo().slab_kb < slab_kb);
    cache.verify().unwrap();
    cache.destroy().unwrap();
    mm.verify().unwrap();
}

/// `boot_cost` predicts what boot takes for mmkit's own structures, to the byte of whole
/// pages, for a two-node machine with vmalloc and per-CPU lists, and for one node without
/// either; and a hole of 1 TiB in the map costs next to nothing (sparse memmap and owner
/// table).
#[test]
fn boot_cost_predicts_the_boot_metadata() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    let b = unsafe { MmBuilder::new(HostPlatform::new(4), &mem) }
        .e820(&e820_map())
        .reserve(range(2 * MIB, 4 * MIB))
        .node(1, range(80 * MIB, SPAN - 80 * MIB))
        .cpu_node(2, 1)
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(VMALLOC), 64 * MIB).unwrap(),
        );
    let cost = b.boot_cost().unwrap();
    assert!(cost.vmalloc_bytes > 0 && cost.per_cpu_bytes > 0);
    assert_eq!(cost.memmap_bytes % PAGE_SIZE, 0);
    let mm = b.boot().unwrap();
    assert_eq!(
        mm.boot_summary().metadata_bytes,
        cost.total_bytes(),
        "{cost:?}"
    );
    assert!(cost.memmap_bytes >= mm.boot_summary().memmap_bytes);

    let mem = HostMemory::new(PhysAddr::new(0), 64 * MIB);
    let cfg = mmkit::buddy::BuddyConfig {
        per_cpu_lists: false,
        ..Default::default()
    };
    // SAFETY: as above.
    let b = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
        .memory(range(MIB, 63 * MIB))
        .buddy_config(cfg);
    let cost = b.boot_cost().unwrap();
    assert_eq!((cost.vmalloc_bytes, cost.per_cpu_bytes), (0, PAGE_SIZE));
    let mm = b.boot().unwrap();
    assert_eq!(
        mm.boot_summary().metadata_bytes,
        cost.total_bytes(),
        "{cost:?}"
    );

    // SAFETY: `boot_cost` reads the map only; nothing is booted on this memory.
    let b = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
        .memory(range(MIB, 31 * MIB))
        .memory(range(1 << 40, 32 * MIB));
    let far = b.boot_cost().unwrap();
    // A 1 TiB hole costs a 4-byte entry per 4 MiB section in the memmap and the owner
    // table (sparse), not 16 bytes + 1 byte per frame.
    // 2^18 + 8 sections of 4 MiB; 16 of them hold memory.
    let table = (4 * ((1 << 18) + 8) as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    assert_eq!(far.owner_table_bytes, table + 5 * PAGE_SIZE, "{far:?}");
    let memmap = (16 * ((1 << 18) + 8) / 4 + 5 * 16 + 17 * 16 * 1024) as u64;
    assert_eq!(
        far.memmap_bytes,
        memmap.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        "{far:?}"
    );
    // SAFETY: as above.
    let empty = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) };
    assert_eq!(empty.boot_cost(), Err(BootError::NoMemory));
}
