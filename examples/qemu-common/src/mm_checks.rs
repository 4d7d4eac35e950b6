//! The kernels as users of the facade: checks against a booted [`Mm`].
//!
//! Both kernels bring memory management up with [`mmkit::MmBuilder`] (firmware map through
//! bootmem's e820 / device-tree helpers, kernel image and boot data reserved, the kernel's own
//! CPU / interrupt hooks, the direct map as the kernel map) and then run, in this order:
//!
//! 1. [`run`]: `mm_kmalloc_serves_every_size` (one object of every size in
//!    [`SIZES`], aligned, disjoint, written and read back, `ksize`
//!    at least the size), `mm_kzalloc_zeroes`, `mm_cache_hands_out_aligned_distinct_objects`
//!    (a cache of 200-byte, 64-byte-aligned objects spanning several slabs),
//!    `mm_pages_of_several_orders` (orders 0 to [`MAX_TEST_ORDER`], each block written through
//!    the direct map and read back, then freed), `mm_verify`; then the report on serial.
//! 2. [`vmalloc_through_live_tables`], once the kernel runs on the facade's page table: a
//!    [`VMALLOC_PAGES`]-page vmalloc written and read through its virtual address; every page's
//!    `vmalloc_to_pfn` frame holds, through the direct map, what was written through the
//!    vmalloc address (so both views are the same memory); the guard page after the area faults
//!    (the kernel's probe, through its exception table); `vfree` unmaps it (the probe faults on
//!    the first page too) and `vmalloc_to_pfn` forgets it.
//!
//! The flush tokens of vmalloc / vfree go to the kernel's real TLB invalidation, passed in.

use core::fmt::Write;
use core::ptr::NonNull;

use mmkit::addr::{IrqControl, Order, VirtAddr, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::pgtable::{PagingFormat, TlbInvalidate};
use mmkit::slab::CacheConfig;
use mmkit::Mm;

use crate::harness::{CheckResult, Harness, Reason};
use crate::rawmem;
/// The sizes `kmalloc` is asked for: every Linux kmalloc class (8 B to 8 KiB, with the 96
/// and 192 byte ones) and two page-backed sizes.
pub const SIZES: [usize; 15] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536,
];

/// Objects the cache check allocates (several 4 KiB slabs of 200-byte objects).
pub const CACHE_OBJECTS: usize = 100;
use crate::{ensure, fail};

/// The highest order `mm_pages_of_several_orders` allocates (2 MiB with 4 KiB pages).
pub const MAX_TEST_ORDER: u32 = 9;

/// Pages in the vmalloc check's area.
pub const VMALLOC_PAGES: usize = 5;

/// Run the facade checks (module docs, step 1) and print the report.
pub fn run<W: Write, P: IrqControl + Sync, F: PagingFormat>(
    h: &mut Harness<W>,
    mm: &mut Mm<'_, P, F>,
) {
    let s = mm.boot_summary();
    let _ = writeln!(
        h.out(),
        "mmkit-qemu: mmkit up: {} MiB of memory, {} MiB reserved, {} KiB of page descriptors, {} node(s)",
        s.memory_bytes >> 20,
        s.reserved_bytes >> 20,
        s.memmap_bytes >> 10,
        s.nr_nodes
    );
    h.run("mm_kmalloc_serves_every_size", || serves_every_size(mm));
    h.run("mm_kzalloc_zeroes", || kzalloc_zeroes(mm));
    h.run("mm_cache_hands_out_aligned_distinct_objects", || {
        cache_objects(mm)
    });
    h.run("mm_pages_of_several_orders", || pages_of_several_orders(mm));
    h.run("mm_verify", || {
        mm.verify()
            .map_err(|e| Reason::new(format_args!("verify: {e:?}")))
    });
    let _ = write!(h.out(), "{}", mm.report());
}

fn serves_every_size<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>) -> CheckResult {
    let mut got: [Option<NonNull<u8>>; SIZES.len()] = [None; SIZES.len()];
    let mut result = Ok(());
    for (slot, &size) in got.iter_mut().zip(&SIZES) {
        match mm.kmalloc(size, GfpFlags::KERNEL) {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                result = Err(Reason::new(format_args!("kmalloc({size}): {e:?}")));
                break;
            }
        }
    }
    if result.is_ok() {
        result = check_objects(mm, &got);
    }
    for p in got.iter().flatten() {
        // SAFETY: every pointer came from this `mm`'s kmalloc above and is not used after this.
        if let Err(e) = unsafe { mm.kfree(*p) } {
            fail!("kfree({p:p}): {e:?}");
        }
    }
    result
}

fn check_objects<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
    got: &[Option<NonNull<u8>>],
) -> CheckResult {
    for (i, (p, &size)) in got.iter().zip(&SIZES).enumerate() {
        let Some(p) = *p else {
            fail!("no object for size {size}");
        };
        let addr = p.as_ptr() as usize;
        ensure!(
            addr.is_multiple_of(size.min(8)),
            "kmalloc({size}) = {p:p} is misaligned"
        );
        // SAFETY: `p` is a live allocation from `mm`.
        let usable = unsafe { mm.ksize(p) };
        ensure!(
            usable.is_ok_and(|u| u >= size),
            "ksize of kmalloc({size}) is {usable:?}"
        );
        for (j, (q, &other)) in got[..i].iter().zip(&SIZES).enumerate() {
            if let Some(q) = *q {
                let q = q.as_ptr() as usize;
                ensure!(
                    addr + size <= q || q + other <= addr,
                    "kmalloc({size}) at {addr:#x} overlaps object {j} ({other} bytes at {q:#x})"
                );
            }
        }
        // SAFETY: `size` bytes at `p` are this check's allocation, 8-byte aligned (no size is
        // below 8), so the pattern fits in whole words.
        unsafe { rawmem::write_read_pattern(p, size / 8, addr as u64) }?;
    }
    Ok(())
}

fn kzalloc_zeroes<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>) -> CheckResult {
    const SIZE: usize = 256;
    let dirty = mm
        .kmalloc(SIZE, GfpFlags::KERNEL)
        .map_err(|e| Reason::new(format_args!("kmalloc: {e:?}")))?;
    // SAFETY: a live 256-byte allocation, 8-byte aligned.
    unsafe { rawmem::write_read_pattern(dirty, SIZE / 8, 0x5a) }?;
    // SAFETY: from `mm`, not used afterwards.
    if let Err(e) = unsafe { mm.kfree(dirty) } {
        fail!("kfree: {e:?}");
    }
    let zeroed = mm
        .kzalloc(SIZE, GfpFlags::KERNEL)
        .map_err(|e| Reason::new(format_args!("kzalloc: {e:?}")))?;
    // SAFETY: a live 256-byte allocation, 8-byte aligned.
    let is_zero = unsafe { rawmem::is_zero(zeroed, SIZE / 8) };
    // SAFETY: from `mm`, not used afterwards.
    let freed = unsafe { mm.kfree(zeroed) };
    ensure!(
        is_zero,
        "kzalloc({SIZE}) at {zeroed:p} holds data (the dirtied object was {dirty:p})"
    );
    ensure!(freed.is_ok(), "kfree: {freed:?}");
    Ok(())
}

fn cache_objects<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>) -> CheckResult {
    const SIZE: usize = 200;
    const ALIGN: usize = 64;
    let config = CacheConfig::new("mmkit_qemu_mm", SIZE).align(ALIGN);
    let mut cache = mm
        .cache_create(&config)
        .map_err(|e| Reason::new(format_args!("create: {e:?}")))?;
    let mut objs: [Option<NonNull<u8>>; CACHE_OBJECTS] = [None; CACHE_OBJECTS];
    let mut result = Ok(());
    for slot in objs.iter_mut() {
        match cache.alloc() {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                result = Err(Reason::new(format_args!("alloc: {e:?}")));
                break;
            }
        }
    }
    if result.is_ok() {
        let mut sorted = [0usize; CACHE_OBJECTS];
        for (s, p) in sorted.iter_mut().zip(objs.iter().flatten()) {
            *s = p.as_ptr() as usize;
        }
        sorted.sort_unstable();
        result = objects_aligned_and_disjoint(&sorted, SIZE, ALIGN);
    }
    for p in objs.iter().flatten() {
        // SAFETY: each object came from this cache above and is not used afterwards.
        if let Err(e) = unsafe { cache.free(*p) } {
            fail!("free({p:p}): {e:?}");
        }
    }
    result?;
    if let Err(e) = cache.verify() {
        fail!("verify: {e:?}");
    }
    if let Err(e) = cache.destroy() {
        fail!("destroy: {e:?}");
    }
    Ok(())
}

/// `sorted` addresses are `align`-aligned and `size`-byte objects at them do not overlap.
fn objects_aligned_and_disjoint(sorted: &[usize], size: usize, align: usize) -> CheckResult {
    for &a in sorted {
        ensure!(
            a.is_multiple_of(align),
            "object {a:#x} not {align}-byte aligned"
        );
    }
    for w in sorted.windows(2) {
        ensure!(
            w[0] + size <= w[1],
            "objects at {:#x} and {:#x} overlap",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// Orders 0 to [`MAX_TEST_ORDER`] from `mm`, each written through the kernel map, read back
/// (after all are allocated, so overlaps show), then freed.
pub fn pages_of_several_orders<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>) -> CheckResult {
    let mut blocks = [None; MAX_TEST_ORDER as usize + 1];
    let mut result = Ok(());
    for (o, slot) in blocks.iter_mut().enumerate() {
        let order = Order::new(o as u32);
        let pfn = match mm.alloc_pages(GfpFlags::KERNEL, order) {
            Ok(pfn) => pfn,
            Err(e) => {
                result = Err(Reason::new(format_args!("alloc_pages(order {o}): {e:?}")));
                break;
            }
        };
        *slot = Some((pfn, order));
        if pfn.as_u64() % order.pages() != 0 {
            result = Err(Reason::new(format_args!(
                "order-{o} block at pfn {:#x} is not naturally aligned",
                pfn.as_u64()
            )));
            break;
        }
        let Some(ptr) = mm.page_address(pfn, order) else {
            result = Err(Reason::new(format_args!(
                "order-{o} block at pfn {:#x} has no address",
                pfn.as_u64()
            )));
            break;
        };
        let words = (order.pages() * PAGE_SIZE / 8) as usize;
        // SAFETY: the block is this check's, mapped RW at `ptr` by the kernel map (direct map).
        if let Err(e) = unsafe { rawmem::write_read_pattern(ptr, words, pfn.as_u64()) } {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        // Every block still holds its own pattern: no two overlapped.
        for (pfn, order) in blocks.iter().flatten() {
            let Some(ptr) = mm.page_address(*pfn, *order) else {
                continue;
            };
            let words = (order.pages() * PAGE_SIZE / 8) as usize;
            // SAFETY: as above; the block is still this check's.
            if let Err(e) = unsafe { rawmem::check_pattern(ptr, words, pfn.as_u64()) } {
                result = Err(e);
                break;
            }
        }
    }
    for (pfn, order) in blocks.iter().flatten() {
        if let Err(e) = mm.free_pages(*pfn, *order) {
            fail!("free_pages({:#x}, {}): {e:?}", pfn.as_u64(), order.get());
        }
    }
    result
}

/// What a kernel's fault-tolerant one-word read of an address ran into.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// The read succeeded.
    Readable,
    /// A not-present fault at exactly that address (caught through the exception table).
    NotPresentFault,
    /// Any other fault.
    OtherFault(Reason),
}

/// How a kernel probes a virtual address (through its exception table).
pub type Probe<'a> = &'a dyn Fn(VirtAddr) -> ProbeOutcome;

/// The vmalloc check (module docs, step 2) on a kernel running on `mm`'s page table, with the
/// kernel's TLB invalidation `tlb` and fault-tolerant read `probe`.
pub fn vmalloc_through_live_tables<P: IrqControl, F: PagingFormat>(
    mm: &mut Mm<'_, P, F>,
    tlb: &mut impl TlbInvalidate,
    probe: Probe<'_>,
) -> CheckResult {
    let size = VMALLOC_PAGES * PAGE_SIZE as usize;
    let va = mm
        .vmalloc(size, tlb)
        .map_err(|e| Reason::new(format_args!("vmalloc({size}): {e:?}")))?;
    let result = check_vmalloc_area(mm, va, probe);
    let freed = mm.vfree(va, tlb);
    result?;
    ensure!(freed.is_ok(), "vfree({va:?}): {freed:?}");
    ensure!(
        mm.vmalloc_to_pfn(va).is_none(),
        "vmalloc_to_pfn still finds {va:?} after vfree"
    );
    let after = probe(va);
    ensure!(
        matches!(after, ProbeOutcome::NotPresentFault),
        "reading {va:?} after vfree: {after:?}"
    );
    mm.verify()
        .map_err(|e| Reason::new(format_args!("verify after vfree: {e:?}")))
}

fn check_vmalloc_area<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
    va: VirtAddr,
    probe: Probe<'_>,
) -> CheckResult {
    let page_words = (PAGE_SIZE / 8) as usize;
    let mut frames = [0u64; VMALLOC_PAGES];
    for i in 0..VMALLOC_PAGES {
        let page_va = va.as_u64() + i as u64 * PAGE_SIZE;
        let Some(ptr) = NonNull::new(page_va as *mut u8) else {
            fail!("vmalloc returned null");
        };
        // SAFETY: the area is this check's, `VMALLOC_PAGES` pages mapped RW at `va` in the
        // live table (vmalloc invalidated before returning); this is one of its pages.
        unsafe { rawmem::write_read_pattern(ptr, page_words, page_va) }?;
    }
    for (i, frame) in frames.iter_mut().enumerate() {
        let page_va = va.as_u64() + i as u64 * PAGE_SIZE;
        let Some(pfn) = mm.vmalloc_to_pfn(VirtAddr::new(page_va)) else {
            fail!("vmalloc_to_pfn({page_va:#x}) found nothing");
        };
        *frame = pfn.as_u64();
        let Some(alias) = mm.page_address(pfn, Order::new(0)) else {
            fail!(
                "frame {:#x} of {page_va:#x} has no direct-map address",
                pfn.as_u64()
            );
        };
        // SAFETY: the frame backs this check's area, so reading it through the direct map
        // reads this check's memory; one page of whole words.
        let same = unsafe { rawmem::check_pattern(alias, page_words, page_va) };
        same.map_err(|e| {
            Reason::new(format_args!(
                "frame {:#x} of page {i} differs through the direct map: {}",
                pfn.as_u64(),
                e.as_str()
            ))
        })?;
    }
    for (i, a) in frames.iter().enumerate() {
        ensure!(
            !frames[..i].contains(a),
            "pages {i} and {} share frame {a:#x}",
            frames[..i].iter().position(|b| b == a).unwrap_or(0)
        );
    }
    let guard = VirtAddr::new(va.as_u64() + VMALLOC_PAGES as u64 * PAGE_SIZE);
    let got = probe(guard);
    ensure!(
        matches!(got, ProbeOutcome::NotPresentFault),
        "reading the guard page {guard:?} after the area: {got:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmkit::addr::host::HostPlatform;
    use mmkit::addr::{PhysAddr, PhysRange};
    use mmkit::host::HostRam;
    use mmkit::MmBuilder;

    const MIB: u64 = 1 << 20;

    #[test]
    fn facade_checks_pass_on_a_host_mm_and_print_the_report() {
        let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
        let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 63 * MIB).unwrap();
        let kernel = PhysRange::from_start_size(PhysAddr::new(2 * MIB), 2 * MIB).unwrap();
        // SAFETY: `mem` stands for the whole map and nothing else uses it.
        let mut mm = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
            .memory(ram)
            .reserve(kernel)
            .boot()
            .unwrap();
        let mut h = Harness::new(String::new());
        run(&mut h, &mut mm);
        let out = h.out().clone();
        assert!(h.finish().passed(), "{out}");
        for name in [
            "mm_kmalloc_serves_every_size",
            "mm_kzalloc_zeroes",
            "mm_cache_hands_out_aligned_distinct_objects",
            "mm_pages_of_several_orders",
            "mm_verify",
        ] {
            assert!(out.contains(&format!("check {name} ... ok")), "{out}");
        }
        assert!(out.contains("mmkit up: 63 MiB of memory"), "{out}");
        assert!(out.contains("MemTotal:"), "{out}");
    }

    #[test]
    fn pages_check_fails_when_the_orders_run_out() {
        // 4 MiB of RAM, half of it reserved: no order-9 (2 MiB) block can be free.
        let mem = HostRam::new(PhysAddr::new(0), 4 * MIB);
        let ram = PhysRange::from_start_size(PhysAddr::new(0), 4 * MIB).unwrap();
        let kernel = PhysRange::from_start_size(PhysAddr::new(MIB), 2 * MIB).unwrap();
        // SAFETY: as above.
        let mm = unsafe { MmBuilder::new(HostPlatform::new(1), &mem) }
            .memory(ram)
            .reserve(kernel)
            .boot()
            .unwrap();
        let err = pages_of_several_orders(&mm).unwrap_err();
        assert!(err.as_str().contains("alloc_pages(order"), "{err:?}");
        // Whatever was allocated before the failure went back.
        assert_eq!(mm.meminfo().pages_kb, [0; 3]);
    }

    #[test]
    fn overlapping_or_misaligned_objects_are_reported() {
        assert!(objects_aligned_and_disjoint(&[0, 256, 512], 200, 64).is_ok());
        let overlap = objects_aligned_and_disjoint(&[0, 128], 200, 64).unwrap_err();
        assert!(overlap.as_str().contains("overlap"), "{overlap:?}");
        let misaligned = objects_aligned_and_disjoint(&[0, 264], 200, 64).unwrap_err();
        assert!(misaligned.as_str().contains("aligned"), "{misaligned:?}");
    }
}
