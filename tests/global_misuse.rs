//! `GlobalAlloc` and `dealloc_layout` misuse: a wrong layout frees the whole allocation and is
//! reported, a pointer that starts no allocation is refused and changes nothing, and nothing
//! panics or unwinds out of the allocator in any build.

use core::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::{AllocatedBlock, DeallocError, Mm, MmBuilder, PageFreeError};

const MIB: u64 = 1 << 20;

fn boot(mem: &HostRam) -> Mm<'_, HostPlatform> {
    let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 63 * MIB).unwrap();
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(2), mem) }
        .memory(ram)
        .boot()
        .expect("boot")
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Free kB and the owner table's page counts: what a refused or recovered free must restore.
/// Free memory and pages in use, once every kmalloc cache these tests touch exists (caches
/// are created on first use and stay, which is not a leak).
fn counts(mm: &mut Mm<'_, HostPlatform>) -> (u64, Vec<u64>) {
    for size in [64, 100] {
        let p = mm.kmalloc(size, GfpFlags::KERNEL).unwrap();
        // SAFETY: live, freed once.
        unsafe { mm.kfree(p) }.unwrap();
    }
    mm.drain_all();
    let info = mm.meminfo();
    (info.free_kb, info.pages_kb.to_vec())
}

#[test]
fn a_contiguous_run_freed_with_a_smaller_layout_is_freed_whole() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let before = counts(&mut mm);
    let six = layout(6 << 20, 8);
    let p = mm.alloc_layout(six, GfpFlags::KERNEL).unwrap();
    // SAFETY: `p` is live and not used again; the layout is wrong on purpose.
    let r = unsafe { mm.dealloc_layout(p, layout(5 << 20, 8)) };
    assert_eq!(
        r,
        Err(DeallocError::LayoutMismatch {
            addr: p.as_ptr() as usize,
            layout: layout(5 << 20, 8),
            block: AllocatedBlock::Contig { frames: 1536 },
        })
    );
    assert_eq!(counts(&mut mm), before, "the whole 6 MiB came back");
    mm.verify().unwrap();
    // The same with a larger layout than the run.
    let p = mm
        .alloc_layout(layout(5 << 20, 8), GfpFlags::KERNEL)
        .unwrap();
    // SAFETY: as above.
    let r = unsafe { mm.dealloc_layout(p, six) };
    assert!(matches!(
        r,
        Err(DeallocError::LayoutMismatch {
            block: AllocatedBlock::Contig { frames: 1280 },
            ..
        })
    ));
    assert_eq!(counts(&mut mm), before);
    mm.verify().unwrap();
}

#[test]
fn a_page_block_freed_with_a_kmalloc_layout_is_freed_whole() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let before = counts(&mut mm);
    // Aligned beyond a page: an order-2 buddy block.
    let p = mm
        .alloc_layout(layout(100, 16384), GfpFlags::KERNEL)
        .unwrap();
    // SAFETY: live, not used again; wrong layout on purpose.
    let r = unsafe { mm.dealloc_layout(p, layout(100, 8)) };
    assert!(matches!(
        r,
        Err(DeallocError::LayoutMismatch {
            block: AllocatedBlock::Pages { order },
            ..
        }) if order == Order::new(2)
    ));
    assert_eq!(counts(&mut mm), before);
    // And with a page layout of the wrong order.
    let p = mm
        .alloc_layout(layout(100, 16384), GfpFlags::KERNEL)
        .unwrap();
    // SAFETY: as above.
    let r = unsafe { mm.dealloc_layout(p, layout(100, 65536)) };
    assert!(matches!(
        r,
        Err(DeallocError::LayoutMismatch {
            block: AllocatedBlock::Pages { .. },
            ..
        })
    ));
    assert_eq!(counts(&mut mm), before);
    mm.verify().unwrap();
}

#[test]
fn a_kmalloc_object_freed_with_a_page_layout_is_freed_whole() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let sizes = [8, 100, 4096, 20_000, 1 << 20];
    // The same objects freed correctly first, so the caches hold the slabs they keep.
    for size in sizes {
        let p = mm.alloc_layout(layout(size, 8), GfpFlags::KERNEL).unwrap();
        // SAFETY: live, freed once with its layout.
        unsafe { mm.dealloc_layout(p, layout(size, 8)) }.unwrap();
    }
    let before = counts(&mut mm);
    for size in sizes {
        let p = mm.alloc_layout(layout(size, 8), GfpFlags::KERNEL).unwrap();
        // SAFETY: live, not used again; wrong layout on purpose.
        let r = unsafe { mm.dealloc_layout(p, layout(size, 1 << 16)) };
        assert!(
            matches!(
                r,
                Err(DeallocError::LayoutMismatch {
                    block: AllocatedBlock::Kmalloc { .. },
                    ..
                })
            ),
            "size {size}: {r:?}"
        );
    }
    assert_eq!(counts(&mut mm), before);
    mm.verify().unwrap();
}

#[test]
fn double_foreign_and_interior_frees_are_refused_and_change_nothing() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let live = mm
        .alloc_layout(layout(100, 16384), GfpFlags::KERNEL)
        .unwrap();
    let run = mm
        .alloc_layout(layout(6 << 20, 8), GfpFlags::KERNEL)
        .unwrap();
    let freed = mm
        .alloc_layout(layout(8192, 16384), GfpFlags::KERNEL)
        .unwrap();
    // SAFETY: live and freed once here.
    unsafe { mm.dealloc_layout(freed, layout(8192, 16384)) }.unwrap();
    let before = counts(&mut mm);
    let mut foreign = [0u8; 64];
    let cases = [
        (freed, layout(8192, 16384)),
        (freed, layout(64, 8)),
        (
            core::ptr::NonNull::new(foreign.as_mut_ptr()).unwrap(),
            layout(64, 8),
        ),
        // SAFETY: inside the live 16 KiB block.
        (unsafe { live.add(4096) }, layout(100, 16384)),
        // SAFETY: inside the live 6 MiB run.
        (unsafe { run.add(4096) }, layout(6 << 20, 8)),
        // SAFETY: inside the live 6 MiB run.
        (unsafe { run.add(8) }, layout(64, 8)),
    ];
    for (p, l) in cases {
        // SAFETY: none of these is a live allocation start; the call must detect it.
        let r = unsafe { mm.dealloc_layout(p, l) };
        assert_eq!(
            r,
            Err(DeallocError::NotAllocated {
                addr: p.as_ptr() as usize,
                layout: l
            }),
            "{p:p} {l:?}"
        );
        assert_eq!(counts(&mut mm), before, "{p:p} {l:?} changed the allocator");
        mm.verify().unwrap();
    }
    // The head frame of a run cannot be freed alone through the page API either.
    let pfn = mm
        .page_allocator()
        .map()
        .virt_to_phys(mmkit::addr::VirtAddr::from_ptr(run.as_ptr()))
        .unwrap()
        .pfn();
    assert_eq!(
        mm.free_pages(pfn, Order::ZERO),
        Err(PageFreeError::ContiguousRun)
    );
    // SAFETY: live, freed once each.
    unsafe {
        mm.dealloc_layout(live, layout(100, 16384)).unwrap();
        mm.dealloc_layout(run, layout(6 << 20, 8)).unwrap();
    }
    mm.verify().unwrap();
}

#[cfg(debug_assertions)]
#[test]
fn a_kmalloc_layout_larger_than_its_object_is_reported_in_debug_builds() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let before = counts(&mut mm);
    let p = mm.alloc_layout(layout(64, 8), GfpFlags::KERNEL).unwrap();
    // SAFETY: live, not used again; wrong layout on purpose.
    let r = unsafe { mm.dealloc_layout(p, layout(1000, 8)) };
    assert!(matches!(
        r,
        Err(DeallocError::LayoutMismatch {
            block: AllocatedBlock::Kmalloc { usable: 64 },
            ..
        })
    ));
    assert_eq!(counts(&mut mm), before);
}

static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);

fn count_hook(e: &DeallocError) {
    assert!(!e.to_string().is_empty());
    HOOK_CALLS.fetch_add(1, Relaxed);
}

#[test]
fn global_alloc_dealloc_reports_misuse_through_the_hook_and_never_panics() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    assert!(mm.set_dealloc_hook(count_hook).is_ok());
    assert!(mm.set_dealloc_hook(count_hook).is_err(), "set once");
    let before = counts(&mut mm);
    let big = layout(6 << 20, 8);
    // SAFETY: `GlobalAlloc` on the scoped `&Mm`: non-zero layouts; the misuse is on purpose
    // and must be detected.
    unsafe {
        let p = GlobalAlloc::alloc(&mm, big);
        assert!(!p.is_null());
        GlobalAlloc::dealloc(&mm, p, layout(5 << 20, 8)); // mismatch, freed whole
        GlobalAlloc::dealloc(&mm, p, big); // now a double free
        let q = GlobalAlloc::alloc(&mm, layout(100, 8));
        GlobalAlloc::dealloc(&mm, q, layout(100, 8));
        GlobalAlloc::dealloc(&mm, q, layout(100, 8)); // double free of an object
    }
    assert_eq!(HOOK_CALLS.load(Relaxed), 3);
    assert_eq!(mm.dealloc_errors(), 3);
    assert_eq!(counts(&mut mm), before);
    mm.verify().unwrap();
}
