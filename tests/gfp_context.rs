//! The caller's GFP context reaches the pages a slab grows with, on Linux's ladder: below the
//! min watermark a request that cannot block (`NOWAIT`) may use a quarter of the reserve, and
//! an atomic one (`ATOMIC`, `__GFP_HIGH`) more; `KERNEL` none.

use mmkit::addr::{Order, PhysAddr};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;

const MIB: u64 = 1 << 20;

#[path = "common/small.rs"]
mod small;
use small::boot;

#[test]
fn an_atomic_kmalloc_grows_a_slab_from_the_reserve_where_kernel_fails() {
    let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 64 * MIB)));
    let mut mm = boot(mem);
    // Take every page a KERNEL request may have: what is left is the reserve.
    let mut held = Vec::new();
    while let Ok(p) = mm.alloc_pages(GfpFlags::KERNEL, Order::ZERO) {
        held.push(p);
    }
    // Size classes nothing has used yet: their first object needs a new slab.
    assert!(mm.kmalloc(6000, GfpFlags::KERNEL).is_err());
    // (Kept live to the end: an empty slab would be shrunk back for the next request.)
    let q = mm
        .kmalloc(6000, GfpFlags::NOWAIT)
        .expect("the non-blocking share");
    // Now take the non-blocking share too.
    while let Ok(p) = mm.alloc_pages(GfpFlags::NOWAIT, Order::ZERO) {
        held.push(p);
    }
    let size = 3000;
    assert!(mm.kmalloc(size, GfpFlags::KERNEL).is_err());
    assert!(mm.kmalloc(size, GfpFlags::NOWAIT).is_err());
    let p = mm
        .kmalloc(size, GfpFlags::ATOMIC)
        .expect("the atomic reserve");
    // SAFETY: a live kmalloc allocation of ours, 6000 bytes, not used afterwards.
    unsafe {
        p.as_ptr().write_bytes(0xa5, size);
        mm.kfree(p).unwrap();
        mm.kfree(q).unwrap();
    }
    mm.verify().unwrap();
    for q in held {
        mm.free_pages(q, Order::ZERO).unwrap();
    }
    mm.verify().unwrap();
}
