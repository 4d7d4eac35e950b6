//! Fuzz the facade: boot a small machine once, then per input replay an `Arbitrary` list of
//! page, kmalloc and vmalloc actions (including bad frees) against a reference model of what
//! is live, run `Mm::verify` (every crate's scanner plus the owner cross-check) after every
//! step, and give everything back at the end, so each input starts from a clean machine.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit::addr::{Order, Pfn, PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::host::{HostCpus, HostRam};
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::{Mm, MmBuilder, NotLoaded};
use std::sync::{Mutex, OnceLock};

const MIB: u64 = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Action {
    AllocPages { order: u8, mobility: u8 },
    FreePages { index: u16 },
    FreeWrongOrder { index: u16, delta: u8 },
    FreeRandomFrame { pfn: u16, order: u8 },
    Kmalloc { size: u16 },
    Kfree { index: u16 },
    Krealloc { index: u16, size: u16 },
    Vmalloc { pages: u8 },
    Vfree { index: u16 },
    VfreeAt { offset: u32 },
    FreeReserved { first: u16, frames: u8 },
}

fn window() -> VirtRange {
    VirtRange::from_start_size(VirtAddr::new(0xffff_c900_0000_0000), 4 * MIB).unwrap()
}

fn machine() -> &'static Mutex<Mm<'static, HostCpus<2>>> {
    static MM: OnceLock<Mutex<Mm<'static, HostCpus<2>>>> = OnceLock::new();
    MM.get_or_init(|| {
        let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 24 * MIB)));
        // `HostCpus` owns no heap memory: the page allocator (and the platform inside it)
        // lives in boot memory and is never dropped, as in a kernel.
        // SAFETY: `mem` is the whole machine, used by nothing else, and lives forever.
        let mm = unsafe { MmBuilder::new(HostCpus::<2>::new(), mem) }
            .memory(PhysRange::from_start_size(PhysAddr::new(MIB), 23 * MIB).unwrap())
            .vmalloc_area(X86_64::FOUR_LEVEL, window())
            .boot()
            .unwrap();
        Mutex::new(mm)
    })
}

fuzz_target!(|actions: Vec<Action>| {
    let mut mm = machine().lock().unwrap_or_else(|e| e.into_inner());
    let mm = &mut *mm;
    let window = window();
    // SAFETY: the table is loaded in no MMU.
    let mut tlb = unsafe { NotLoaded::new() };
    let mut pages: Vec<(Pfn, Order)> = Vec::new();
    let mut objects: Vec<std::ptr::NonNull<u8>> = Vec::new();
    let mut areas: Vec<VirtAddr> = Vec::new();
    for a in actions.into_iter().take(200) {
        match a {
            Action::AllocPages { order, mobility } => {
                let gfp = [
                    GfpFlags::KERNEL,
                    GfpFlags::HIGHUSER_MOVABLE,
                    GfpFlags::KERNEL_RECLAIMABLE,
                ][usize::from(mobility % 3)];
                if let Ok(pfn) = mm.alloc_pages(gfp, Order::new(u32::from(order % 12))) {
                    pages.push((pfn, Order::new(u32::from(order % 12))));
                }
            }
            Action::FreePages { index } if !pages.is_empty() => {
                let (pfn, order) = pages.swap_remove(usize::from(index) % pages.len());
                mm.free_pages(pfn, order).unwrap();
            }
            Action::FreeWrongOrder { index, delta } if !pages.is_empty() => {
                let (pfn, order) = pages[usize::from(index) % pages.len()];
                let wrong = (order.get() + 1 + u32::from(delta % 10)) % 16;
                if wrong != order.get() {
                    assert!(mm.free_pages(pfn, Order::new(wrong)).is_err());
                }
            }
            Action::FreeRandomFrame { pfn, order } => {
                let pfn = Pfn::new(u64::from(pfn));
                let order = Order::new(u32::from(order % 12));
                if !pages.contains(&(pfn, order)) {
                    assert!(
                        mm.free_pages(pfn, order).is_err(),
                        "freed a block nobody owns"
                    );
                }
            }
            Action::Kmalloc { size } => {
                if let Ok(p) = mm.kmalloc(usize::from(size) * 4, GfpFlags::KERNEL) {
                    objects.push(p);
                }
            }
            Action::Kfree { index } if !objects.is_empty() => {
                let p = objects.swap_remove(usize::from(index) % objects.len());
                // SAFETY: live, freed once.
                unsafe { mm.kfree(p).unwrap() };
            }
            Action::Krealloc { index, size } if !objects.is_empty() => {
                let i = usize::from(index) % objects.len();
                // SAFETY: live; given up on success.
                if let Ok(q) =
                    unsafe { mm.krealloc(objects[i], usize::from(size) * 2, GfpFlags::KERNEL) }
                {
                    objects[i] = q;
                }
            }
            Action::Vmalloc { pages: n } => {
                if let Ok(va) = mm.vmalloc((usize::from(n) + 1) * PAGE_SIZE as usize, &mut tlb) {
                    areas.push(va);
                }
            }
            Action::Vfree { index } if !areas.is_empty() => {
                let va = areas.swap_remove(usize::from(index) % areas.len());
                mm.vfree(va, &mut tlb).unwrap();
            }
            Action::VfreeAt { offset } => {
                let va = VirtAddr::new(window.start().as_u64() + u64::from(offset) % window.len());
                if !areas.contains(&va) {
                    assert!(mm.vfree(va, &mut tlb).is_err());
                }
            }
            Action::FreeReserved { first, frames } => {
                // Only mmkit's own metadata is reserved on this machine: every range is
                // refused, and a refusal changes nothing.
                let start = u64::from(first) % (24 * 256);
                let r = PhysRange::from_pfns(Pfn::new(start), u64::from(frames).max(1)).unwrap();
                let managed = mm.buddy().total_managed();
                // SAFETY: refused without change (asserted), so no memory is given away.
                let result = unsafe { mm.free_reserved_range(r) };
                assert!(result.is_err(), "{r:?} freed: {result:?}");
                assert_eq!(mm.buddy().total_managed(), managed);
            }
            _ => {}
        }
        mm.verify().unwrap();
    }
    // Everything goes back.
    for (pfn, order) in pages {
        mm.free_pages(pfn, order).unwrap();
    }
    for p in objects {
        // SAFETY: live, freed once.
        unsafe { mm.kfree(p).unwrap() };
    }
    for va in areas {
        mm.vfree(va, &mut tlb).unwrap();
    }
    mm.drain_all();
    mm.verify().unwrap();
    assert_eq!(mm.meminfo().pages_kb, [0; 3]);
});
