//! A kernel's own mover on pages from `Mm::alloc_pages`: migration moves the bytes (the
//! mover copies through the direct map) and the facade's page-owner table follows the block,
//! so `verify()` holds and the page is freed at its new frame.

use mmkit::addr::{Order, Pfn, PhysAddr};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::PageUse;

const MIB: u64 = 1 << 20;

#[path = "common/copier.rs"]
mod copier;

/// A kernel's movable pages: frame -> tag, each page filled with its tag's byte.
type Copier = copier::Copier<u64>;

#[path = "common/small.rs"]
mod small;
use small::boot;

#[test]
fn a_kernel_mover_moves_bytes_and_the_owner_table_follows() {
    let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 64 * MIB)));
    let mut mm = boot(mem);
    let copier: &'static Copier = Box::leak(Box::new(Copier::new(mem)));
    let id = mm.buddy().register_mover(copier).unwrap();
    let mut live = Vec::new();
    for i in 0..64u64 {
        let p = mm
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::ZERO)
            .unwrap();
        // SAFETY: the page is ours, 4 KiB long.
        unsafe { core::ptr::write_bytes(copier.ptr(p), i as u8, 4096) };
        copier.pages.lock().unwrap().insert(p.as_u64(), i);
        mm.buddy().set_mover(p, Order::ZERO, Some(id)).unwrap();
        live.push(i);
    }
    let pages_kb = mm.meminfo().pages_kb;
    // Move each page once, directly.
    let frames: Vec<u64> = copier.pages.lock().unwrap().keys().copied().collect();
    for f in frames {
        let to = mm
            .buddy()
            .migrate_block(Pfn::new(f), Order::ZERO, None)
            .unwrap();
        assert_ne!(to.as_u64(), f);
        let owner = mm
            .page_allocator()
            .owner(to)
            .expect("the owner record moved");
        assert_eq!(owner.usage, PageUse::Pages);
        assert!(mm.page_allocator().owner(Pfn::new(f)).is_none());
    }
    assert_eq!(mm.meminfo().pages_kb, pages_kb);
    mm.verify().unwrap();
    // Every page still holds its bytes at its new frame, and frees there.
    let t: Vec<(u64, u64)> = copier.pages.lock().unwrap().drain().collect();
    for (f, tag) in t {
        let p = Pfn::new(f);
        // SAFETY: the page is ours, 4 KiB long.
        let bytes = unsafe { core::slice::from_raw_parts(copier.ptr(p), 4096) };
        assert!(
            bytes.iter().all(|&b| b == tag as u8),
            "page {tag} lost its bytes"
        );
        mm.free_pages(p, Order::ZERO).unwrap();
    }
    assert_eq!(mm.meminfo().pages_kb, [0, 0, 0]);
    mm.verify().unwrap();
    assert_eq!(live.len(), 64);
}
