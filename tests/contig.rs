//! Contiguous runs and the CMA area through the facade (`Mm::alloc_contig_pages`,
//! `MmBuilder::cma`, `Mm::cma_alloc`), with owner-table records.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit::buddy::{GfpFlags, IsolateError, MigrateType};
use mmkit::host::HostRam as HostMemory;
use mmkit::{BootError, Mm, MmBuilder, PageFreeError, PageUse};

const MIB: u64 = 1 << 20;
const SPAN: u64 = 128 * MIB;

fn boot(mem: &HostMemory, cma: u64) -> Result<Mm<'_, HostPlatform>, BootError> {
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(2), mem) }
        .memory(PhysRange::from_start_size(PhysAddr::new(0), SPAN).unwrap())
        .reserve(PhysRange::from_start_size(PhysAddr::new(MIB), 4 * MIB).unwrap())
        .cma(cma)
        .boot()
}

#[test]
fn contig_runs_are_recorded_and_freed_only_whole() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem, 0).unwrap();
    mm.drain_all();
    let free = mm.buddy().total_free();
    let pfn = mm
        .alloc_contig_pages(3000, GfpFlags::HIGHUSER_MOVABLE)
        .unwrap();
    let owner = mm.page_allocator().owner(pfn).unwrap();
    assert_eq!(owner.usage, PageUse::Pages);
    assert_eq!(owner.mobility, MigrateType::Movable);
    mm.verify().unwrap();
    // Refused, changing nothing: the head alone, a wrong count, a frame inside.
    assert_eq!(
        mm.free_pages(pfn, Order::ZERO),
        Err(PageFreeError::ContiguousRun)
    );
    assert_eq!(
        mm.free_contig_pages(pfn, 2999),
        Err(PageFreeError::RunLength {
            recorded: Some(3000)
        })
    );
    assert_eq!(
        mm.free_contig_pages(Pfn::new(pfn.as_u64() + 1), 2999),
        Err(PageFreeError::RunLength { recorded: None })
    );
    mm.verify().unwrap();
    mm.free_contig_pages(pfn, 3000).unwrap();
    assert_eq!(
        mm.free_contig_pages(pfn, 3000),
        Err(PageFreeError::RunLength { recorded: None })
    );
    mm.drain_all();
    assert_eq!(mm.buddy().total_free(), free);
    mm.verify().unwrap();
    // One frame is recorded as an order-0 block and freed as one.
    let one = mm.alloc_contig_pages(1, GfpFlags::KERNEL).unwrap();
    mm.free_contig_pages(one, 1).unwrap();
    assert_eq!(
        mm.alloc_contig_pages(0, GfpFlags::KERNEL),
        Err(IsolateError::BadRange)
    );
    mm.verify().unwrap();
}

#[test]
fn cma_area_declared_at_boot_serves_cma_alloc_with_owner_records() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mut mm = boot(&mem, 16 * MIB).unwrap();
    let area = mm.cma_area().unwrap();
    assert_eq!(area.nr_pages(), 4096);
    assert_eq!(mm.buddy().cma_total(), 4096);
    assert_eq!(mm.buddy().cma_free(), 4096);
    assert_eq!(
        mm.buddy().pageblock_migratetype(area.start()),
        Some(MigrateType::Cma)
    );
    let run = mm.cma_alloc(1024, 10).unwrap();
    assert!(area.contains(run, 1024));
    assert_eq!(
        mm.page_allocator().owner(run).unwrap().mobility,
        MigrateType::Movable
    );
    mm.verify().unwrap();
    assert_eq!(
        mm.cma_release(Pfn::new(0), 1024),
        Err(PageFreeError::NotInCmaArea)
    );
    assert_eq!(
        mm.cma_release(run, 1000),
        Err(PageFreeError::RunLength {
            recorded: Some(1024)
        })
    );
    mm.cma_release(run, 1024).unwrap();
    mm.drain_all();
    assert_eq!(mm.buddy().cma_free(), 4096);
    mm.verify().unwrap();
}

#[test]
fn cma_without_an_area_and_oversized_areas_are_refused() {
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    let mm = boot(&mem, 0).unwrap();
    assert_eq!(mm.cma_area(), None);
    assert_eq!(mm.cma_alloc(1, 0), Err(IsolateError::NotFound));
    assert_eq!(
        mm.cma_release(Pfn::new(4096), 1),
        Err(PageFreeError::NotInCmaArea)
    );
    drop(mm);
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    assert!(matches!(
        boot(&mem, 2 * SPAN),
        Err(BootError::Cma(IsolateError::TooLarge { .. }))
    ));
    let mem = HostMemory::new(PhysAddr::new(0), SPAN);
    assert!(matches!(
        boot(&mem, u64::MAX),
        Err(BootError::Cma(IsolateError::TooLarge { .. }))
    ));
}

#[path = "common/copier.rs"]
mod copier;

/// A kernel's movable pages: frame -> tag, each page filled with its tag's byte.
type Copier = copier::Copier<u8>;

/// Fill memory with movable pages from `Mm::alloc_pages` that name `copier`, then free
/// every other one: no free pageblock is left.
fn checkerboard(mm: &Mm<'static, HostPlatform>, copier: &'static Copier) {
    let id = mm.buddy().register_mover(copier).unwrap();
    let mut got = Vec::new();
    while let Ok(p) = mm.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::ZERO) {
        let tag = (p.as_u64() % 251) as u8;
        // SAFETY: the page is ours, 4 KiB long.
        unsafe { core::ptr::write_bytes(copier.ptr(p), tag, 4096) };
        copier.pages.lock().unwrap().insert(p.as_u64(), tag);
        mm.buddy().set_mover(p, Order::ZERO, Some(id)).unwrap();
        got.push(p);
    }
    for p in got.iter().step_by(2) {
        copier.pages.lock().unwrap().remove(&p.as_u64());
        mm.free_pages(*p, Order::ZERO).unwrap();
    }
}

/// Every page still holds its bytes at its (possibly new) frame, outside `[s, s + n)`.
fn check_pages(copier: &Copier, s: Pfn, n: u64) {
    for (&f, &tag) in copier.pages.lock().unwrap().iter() {
        assert!(
            f < s.as_u64() || f >= s.as_u64() + n,
            "page left in the run"
        );
        // SAFETY: the page is the copier's, 4 KiB long.
        let bytes = unsafe { core::slice::from_raw_parts(copier.ptr(Pfn::new(f)), 4096) };
        assert!(
            bytes.iter().all(|&b| b == tag),
            "page {f:#x} lost its bytes"
        );
    }
}

#[test]
fn contig_pages_migrate_a_kernels_pages_and_the_owner_table_follows() {
    let mem: &'static HostMemory = Box::leak(Box::new(HostMemory::new(PhysAddr::new(0), SPAN)));
    let mut mm = boot(mem, 0).unwrap();
    let copier: &'static Copier = Box::leak(Box::new(Copier::new(mem)));
    checkerboard(&mm, copier);
    let live = copier.pages.lock().unwrap().len();
    let pages_kb = mm.meminfo().pages_kb;
    let run = mm
        .alloc_contig_pages(512, GfpFlags::HIGHUSER_MOVABLE)
        .unwrap();
    assert!(
        mm.buddy().migrate_counts().0 > 0,
        "the run needed migration"
    );
    assert_eq!(copier.pages.lock().unwrap().len(), live);
    check_pages(copier, run, 512);
    mm.verify().unwrap();
    mm.free_contig_pages(run, 512).unwrap();
    assert_eq!(mm.meminfo().pages_kb, pages_kb);
    mm.verify().unwrap();
}

#[test]
fn cma_alloc_takes_the_whole_area_back_from_a_kernels_pages() {
    let mem: &'static HostMemory = Box::leak(Box::new(HostMemory::new(PhysAddr::new(0), SPAN)));
    let mut mm = boot(mem, 8 * MIB).unwrap();
    let area = mm.cma_area().unwrap();
    let copier: &'static Copier = Box::leak(Box::new(Copier::new(mem)));
    checkerboard(&mm, copier);
    let borrowed = copier
        .pages
        .lock()
        .unwrap()
        .keys()
        .filter(|&&f| area.contains(Pfn::new(f), 1))
        .count();
    assert!(borrowed > 0, "movable pages borrowed the area");
    let run = mm.cma_alloc(area.nr_pages(), 0).unwrap();
    assert_eq!(run, area.start());
    check_pages(copier, run, area.nr_pages());
    mm.verify().unwrap();
    mm.cma_release(run, area.nr_pages()).unwrap();
    mm.verify().unwrap();
}
