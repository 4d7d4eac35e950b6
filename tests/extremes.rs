//! Every public facade call with caller-supplied counts, sizes, orders, frames and nodes at
//! the extremes (0, 1, max − 1, max, and the edges of each limit): each answers with an error
//! value or a valid result, never a panic (these run with overflow checks on), and a refused
//! call leaves the free counts and every invariant as they were.

use core::alloc::Layout;
use core::ptr::NonNull;

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::Attrs;
use mmkit::slab::{CacheConfig, KMALLOC_MAX_SIZE};
use mmkit::{Mm, MmBuilder, NotLoaded};

const MIB: u64 = 1 << 20;
const SIZES: [usize; 9] = [
    0,
    1,
    KMALLOC_MAX_SIZE,
    KMALLOC_MAX_SIZE + 1,
    isize::MAX as usize - 4095,
    isize::MAX as usize,
    usize::MAX / 2 + 1,
    usize::MAX - 1,
    usize::MAX,
];
const FRAMES: [u64; 7] = [
    0,
    1,
    0x1_0000,
    u64::MAX >> 12,
    u64::MAX / 2,
    u64::MAX - 1,
    u64::MAX,
];

fn boot(mem: &HostRam) -> Mm<'_, HostPlatform> {
    let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 63 * MIB).unwrap();
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(2), mem) }
        .memory(ram)
        .vmalloc_area(
            X86_64::FOUR_LEVEL,
            VirtRange::from_start_size(VirtAddr::new(0xffff_c900_0000_0000), 64 * MIB).unwrap(),
        )
        .boot()
        .expect("boot")
}

fn tlb() -> NotLoaded {
    // SAFETY: the kernel page table of these tests is never loaded into an MMU.
    unsafe { NotLoaded::new() }
}

/// Free memory and live allocations, after the per-CPU caches are drained.
fn state(mm: &mut Mm<'_, HostPlatform>) -> (u64, [u64; 3], u64) {
    mm.drain_all();
    mm.verify().unwrap();
    let info = mm.meminfo();
    (info.free_kb, info.pages_kb, info.slab_kb)
}

#[test]
fn kmalloc_family_at_extreme_sizes_alignments_and_nodes() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    // kmalloc caches are created on first use and stay: create the ones the valid calls
    // below use before taking the figures.
    for size in [64, 100] {
        let p = mm.kmalloc(size, GfpFlags::KERNEL).unwrap();
        // SAFETY: live, freed once.
        unsafe { mm.kfree(p) }.unwrap();
    }
    let before = state(&mut mm);
    for size in SIZES.into_iter().filter(|&s| s > KMALLOC_MAX_SIZE) {
        assert!(
            mm.kmalloc(size, GfpFlags::KERNEL).is_err(),
            "kmalloc({size})"
        );
        assert!(
            mm.kzalloc(size, GfpFlags::KERNEL).is_err(),
            "kzalloc({size})"
        );
        assert!(mm.kmalloc_node(size, GfpFlags::KERNEL, 0).is_err());
        for shift in [0, 3, 12, 20, 62, 63] {
            assert!(mm
                .kmalloc_aligned(size, 1 << shift, GfpFlags::KERNEL)
                .is_err());
        }
        if size > 64 << 20 {
            assert!(mm.vmalloc(size, &mut tlb()).is_err(), "vmalloc({size})");
        }
    }
    for align in [0, 3, usize::MAX, 1 << 63] {
        let r = mm.kmalloc_aligned(64, align, GfpFlags::KERNEL);
        if align.is_power_of_two() {
            // Rounded up to a power of two past every limit: refused.
            assert!(r.is_err(), "align {align}");
        } else {
            assert!(r.is_err(), "align {align} is not a power of two");
        }
    }
    for node in [1, 7, 8, usize::MAX] {
        // kmalloc_node takes a node out of range as the last one (`Cache::alloc_node`).
        let p = mm.kmalloc_node(64, GfpFlags::KERNEL, node).unwrap();
        // SAFETY: live, freed once.
        unsafe { mm.kfree(p) }.unwrap();
        assert!(mm
            .alloc_pages_node(node, GfpFlags::KERNEL, Order::ZERO)
            .is_err());
    }
    let p = mm.kmalloc(100, GfpFlags::KERNEL).unwrap();
    for size in SIZES.into_iter().filter(|&s| s > KMALLOC_MAX_SIZE) {
        // SAFETY: `p` is live; a refused krealloc leaves it untouched.
        assert!(unsafe { mm.krealloc(p, size, GfpFlags::KERNEL) }.is_err());
    }
    // SAFETY: live, freed once.
    unsafe { mm.kfree(p) }.unwrap();
    // Pointers at the ends of the address space are not allocations.
    for addr in [8usize, 4096, usize::MAX & !7, (usize::MAX & !4095) - 4096] {
        let bad = NonNull::new(addr as *mut u8).unwrap();
        // SAFETY: not an allocation of this `Mm`: kfree / ksize must refuse it.
        unsafe {
            assert!(mm.kfree(bad).is_err(), "kfree({addr:#x})");
            assert!(mm.ksize(bad).is_err(), "ksize({addr:#x})");
        }
    }
    assert_eq!(state(&mut mm), before);
}

#[test]
fn caches_at_extreme_sizes_and_alignments() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mm = boot(&mem);
    for size in SIZES {
        for align in [0, 1, 8, 4096, 1 << 15, 1 << 16, usize::MAX, 1 << 63] {
            let r = mm.cache_create(&CacheConfig::new("extreme", size).align(align));
            let fits = (1..=(32 << 10)).contains(&size)
                && (align == 0 || align.is_power_of_two() && align <= 1 << 15);
            if !fits {
                assert!(r.is_err(), "size {size} align {align}");
            }
        }
    }
}

#[test]
fn page_calls_at_extreme_orders_frames_and_ranges() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let before = state(&mut mm);
    for order in [11, 12, Order::LIMIT] {
        assert!(mm.alloc_pages(GfpFlags::KERNEL, Order::new(order)).is_err());
    }
    for pfn in FRAMES {
        for order in [0, 1, 10, 11, Order::LIMIT] {
            let (pfn, order) = (Pfn::new(pfn), Order::new(order));
            assert!(
                mm.free_pages(pfn, order).is_err(),
                "free_pages({pfn:?}, {order:?})"
            );
            let _ = mm.page_address(pfn, order);
        }
    }
    for start in [0, 1, 4095, u64::MAX - 4096, u64::MAX - 1] {
        for len in [1, 4096, u64::MAX - start] {
            if let Ok(r) = PhysRange::from_start_size(PhysAddr::new(start), len) {
                // SAFETY: none of these ranges is plain reserved memory of this machine:
                // each must be refused.
                assert!(unsafe { mm.free_reserved_range(r) }.is_err(), "{r:?}");
            }
        }
    }
    for order in [0, 9, 10, 11, 63, 64, u32::MAX] {
        let _ = mm.free_pages_at_order(order);
        let _ = mm.high_order(order).percent();
    }
    let _ = mm.report().to_string();
    assert_eq!(state(&mut mm), before);
}

#[test]
fn layouts_and_vmalloc_at_the_extremes() {
    let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
    let mut mm = boot(&mem);
    let layouts = || {
        SIZES.into_iter().filter(|&s| s > 0).flat_map(|size| {
            [0, 12, 13, 22, 23, 40, 62]
                .into_iter()
                .filter_map(move |shift| Layout::from_size_align(size, 1 << shift).ok())
        })
    };
    let round = |mm: &Mm<'_, HostPlatform>| {
        for l in layouts() {
            if let Some(p) = mm.alloc_layout(l, GfpFlags::KERNEL) {
                // SAFETY: just allocated with `l`, freed once.
                unsafe { mm.dealloc_layout(p, l) }.unwrap();
            }
        }
    };
    // The first round leaves the slabs a cache keeps; the second must change nothing.
    round(&mm);
    let before = state(&mut mm);
    round(&mm);
    assert_eq!(state(&mut mm), before);
    for va in [
        0u64,
        1,
        u64::MAX,
        u64::MAX - 4095,
        0xffff_c900_0000_0000 + (64 << 20),
    ] {
        let va = VirtAddr::new(va);
        assert!(mm.vfree(va, &mut tlb()).is_err());
        assert!(mm.vunmap(va, &mut tlb()).is_err());
        assert_eq!(mm.vmalloc_to_pfn(va), None);
    }
    for pfn in FRAMES {
        let r = mm.vmap(&[Pfn::new(pfn)], Attrs::KERNEL_RW, &mut tlb());
        if pfn > (u64::MAX >> 12) {
            assert!(r.is_err(), "vmap of frame {pfn:#x}");
        } else if let Ok(va) = r {
            mm.vunmap(va, &mut tlb()).unwrap();
        }
    }
    assert_eq!(state(&mut mm), before);
}
