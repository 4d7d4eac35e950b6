//! Property test: random sequences of facade calls against a simple reference model, with
//! `Mm::verify` (every crate's scanner plus the owner cross-check) after every step.
//!
//! The model tracks what each live allocation should hold (a tag byte written over all of
//! it) and how many frames each kind of allocation takes; the `Mm` must agree on the
//! accounting, keep every byte intact, refuse every bad free without changing anything, and
//! give every frame back at the end.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::softmmu::x86_64::X86Walker;
use mmkit::pgtable::softmmu::{Access, Mode, SoftMmu};
use mmkit::{FreeReservedError, Mm, MmBuilder};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const SPAN: u64 = 48 * MIB;

#[derive(Debug, Clone)]
enum Action {
    AllocPages {
        order: u32,
        mobility: u8,
    },
    FreePages(usize),
    FreeWrongOrder(usize),
    Kmalloc(usize),
    Kfree(usize),
    Krealloc(usize, usize),
    Vmalloc(usize),
    Vfree(usize),
    VfreeInside(usize),
    /// Give back one 256 KiB chunk of the reserved 4..6 MiB range.
    FreeReserved(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u32..6, 0u8..3).prop_map(|(order, mobility)| Action::AllocPages { order, mobility }),
        3 => any::<usize>().prop_map(Action::FreePages),
        1 => any::<usize>().prop_map(Action::FreeWrongOrder),
        4 => (1usize..20_000).prop_map(Action::Kmalloc),
        3 => any::<usize>().prop_map(Action::Kfree),
        2 => (any::<usize>(), 1usize..12_000).prop_map(|(i, s)| Action::Krealloc(i, s)),
        2 => (1usize..40_000).prop_map(Action::Vmalloc),
        2 => any::<usize>().prop_map(Action::Vfree),
        1 => any::<usize>().prop_map(Action::VfreeInside),
        1 => (0usize..8).prop_map(Action::FreeReserved),
    ]
}

struct Model {
    pages: Vec<(Pfn, Order, u8, u8)>, // pfn, order, mobility, tag
    objects: Vec<(std::ptr::NonNull<u8>, usize, u8)>,
    areas: Vec<(VirtAddr, usize, u8)>,
    next_tag: u8,
}

fn gfp(mobility: u8) -> GfpFlags {
    match mobility {
        0 => GfpFlags::KERNEL,
        1 => GfpFlags::HIGHUSER_MOVABLE,
        _ => GfpFlags::KERNEL_RECLAIMABLE,
    }
}

fn fill(p: *mut u8, len: usize, tag: u8) {
    // SAFETY: callers pass memory they own of at least `len` bytes.
    unsafe { p.write_bytes(tag, len) };
}

fn check(p: *const u8, len: usize, tag: u8) {
    // SAFETY: callers pass live memory of at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    assert!(s.iter().all(|&b| b == tag), "allocation contents changed");
}

fn run(actions: Vec<Action>) {
    let mem = HostRam::new(PhysAddr::new(0), SPAN);
    let window = VirtRange::from_start_size(VirtAddr::new(0xffff_c900_0000_0000), 8 * MIB).unwrap();
    // SAFETY: `mem` is the whole machine, used by nothing else.
    let mut mm: Mm<'_, HostPlatform> = unsafe { MmBuilder::new(HostPlatform::new(2), &mem) }
        .memory(PhysRange::from_start_size(PhysAddr::new(MIB), SPAN - MIB).unwrap())
        .reserve(PhysRange::from_start_size(PhysAddr::new(4 * MIB), 2 * MIB).unwrap())
        .vmalloc_area(X86_64::FOUR_LEVEL, window)
        .boot()
        .unwrap();
    let root = mm.with_page_table(|pt| pt.root()).unwrap();
    let mut mmu = SoftMmu::new(X86Walker::new(&mem, root, 4));
    let boot = mm.meminfo();
    let held_at_boot = boot.free_kb + boot.slab_kb + boot.page_tables_kb;
    let mut freed_chunks = [false; 8];
    let mut m = Model {
        pages: Vec::new(),
        objects: Vec::new(),
        areas: Vec::new(),
        next_tag: 1,
    };
    for a in actions {
        let tag = m.next_tag;
        m.next_tag = m.next_tag.wrapping_add(1).max(1);
        match a {
            Action::AllocPages { order, mobility } => {
                if let Ok(pfn) = mm.alloc_pages(gfp(mobility), Order::new(order)) {
                    let p = mm.page_address(pfn, Order::new(order)).unwrap();
                    fill(p.as_ptr(), (PAGE_SIZE << order) as usize, tag);
                    m.pages.push((pfn, Order::new(order), mobility, tag));
                }
            }
            Action::FreePages(i) if !m.pages.is_empty() => {
                let (pfn, order, _, tag) = m.pages.swap_remove(i % m.pages.len());
                check(
                    mm.page_address(pfn, order).unwrap().as_ptr(),
                    order.bytes() as usize,
                    tag,
                );
                mm.free_pages(pfn, order).unwrap();
                assert!(mm.free_pages(pfn, order).is_err(), "double free refused");
            }
            Action::FreeWrongOrder(i) if !m.pages.is_empty() => {
                let (pfn, order, _, _) = m.pages[i % m.pages.len()];
                assert!(mm.free_pages(pfn, Order::new(order.get() + 1)).is_err());
            }
            Action::Kmalloc(size) => {
                if let Ok(p) = mm.kmalloc(size, GfpFlags::KERNEL) {
                    fill(p.as_ptr(), size, tag);
                    m.objects.push((p, size, tag));
                }
            }
            Action::Kfree(i) if !m.objects.is_empty() => {
                let (p, size, tag) = m.objects.swap_remove(i % m.objects.len());
                check(p.as_ptr(), size, tag);
                // SAFETY: live kmalloc pointer, freed once.
                unsafe { mm.kfree(p).unwrap() };
            }
            Action::Krealloc(i, size) if !m.objects.is_empty() => {
                let k = i % m.objects.len();
                let (p, old, tag) = m.objects[k];
                // SAFETY: live kmalloc pointer, given up on success.
                if let Ok(q) = unsafe { mm.krealloc(p, size, GfpFlags::KERNEL) } {
                    check(q.as_ptr(), old.min(size), tag);
                    fill(q.as_ptr(), size, tag);
                    m.objects[k] = (q, size, tag);
                }
            }
            Action::Vmalloc(size) => {
                if let Ok(va) = mm.vmalloc(size, &mut mmu) {
                    for page in 0..(size as u64).div_ceil(PAGE_SIZE) {
                        let va = VirtAddr::new(va.as_u64() + page * PAGE_SIZE);
                        let pa = mmu.access(va, Access::Write, Mode::Kernel).unwrap();
                        let p = mm.page_address(pa.pfn(), Order::ZERO).unwrap();
                        fill(p.as_ptr(), PAGE_SIZE as usize, tag);
                    }
                    m.areas.push((va, size, tag));
                }
            }
            Action::Vfree(i) if !m.areas.is_empty() => {
                let (va, size, tag) = m.areas.swap_remove(i % m.areas.len());
                let last = VirtAddr::new(va.as_u64() + (size as u64 - 1) / PAGE_SIZE * PAGE_SIZE);
                let pfn = mm.vmalloc_to_pfn(last).unwrap();
                check(
                    mm.page_address(pfn, Order::ZERO).unwrap().as_ptr(),
                    PAGE_SIZE as usize,
                    tag,
                );
                mm.vfree(va, &mut mmu).unwrap();
                assert!(mmu.access(va, Access::Read, Mode::Kernel).is_err());
            }
            Action::VfreeInside(i) if !m.areas.is_empty() => {
                let (va, _, _) = m.areas[i % m.areas.len()];
                assert!(mm.vfree(VirtAddr::new(va.as_u64() + 8), &mut mmu).is_err());
            }
            Action::FreeReserved(c) => {
                let chunk = PhysRange::from_start_size(
                    PhysAddr::new(4 * MIB + c as u64 * (256 << 10)),
                    256 << 10,
                )
                .unwrap();
                // SAFETY: the reserved range stands for memory nothing uses.
                let r = unsafe { mm.free_reserved_range(chunk) };
                if freed_chunks[c] {
                    assert_eq!(
                        r,
                        Err(FreeReservedError::NotReserved(chunk.start().pfn())),
                        "freed twice"
                    );
                } else {
                    assert_eq!(r, Ok(64));
                    freed_chunks[c] = true;
                }
            }
            _ => {}
        }
        mm.verify().unwrap();
        let info = mm.meminfo();
        let mut by_mob = [0u64; 3];
        for (_, order, mob, _) in &m.pages {
            by_mob[*mob as usize] += order.bytes() / 1024;
        }
        assert_eq!(info.pages_kb, by_mob);
        let vm_pages: u64 = m
            .areas
            .iter()
            .map(|(_, s, _)| (*s as u64).div_ceil(PAGE_SIZE))
            .sum();
        assert_eq!(info.vmalloc_used_kb, vm_pages * 4);
    }
    // Tear down: everything goes back.
    for (pfn, order, _, _) in m.pages.drain(..) {
        mm.free_pages(pfn, order).unwrap();
    }
    for (p, _, _) in m.objects.drain(..) {
        // SAFETY: live, freed once.
        unsafe { mm.kfree(p).unwrap() };
    }
    for (va, _, _) in m.areas.drain(..) {
        mm.vfree(va, &mut mmu).unwrap();
    }
    mm.drain_all();
    mm.verify().unwrap();
    let info = mm.meminfo();
    assert_eq!(info.pages_kb, [0; 3]);
    // Every frame is free again or back where it was at boot: slab (caches keep partial
    // slabs) or page tables (vmalloc keeps upper-level tables for its window).
    let given_back = freed_chunks.iter().filter(|&&f| f).count() as u64 * 256;
    assert_eq!(
        info.free_kb + info.slab_kb + info.page_tables_kb,
        held_at_boot + given_back,
        "{info}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn facade_matches_the_model(actions in proptest::collection::vec(action(), 1..60)) {
        run(actions);
    }
}
