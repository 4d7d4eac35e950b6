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
//! 3. [`movable_pages_compact`], on the live table too: movable pages mapped with
//!    `vmalloc_movable` are written and read through their virtual addresses; every free
//!    block of a huge page's order is taken first (held as movable blocks without a mover)
//!    and [`MOVABLE_HOLD_RELEASED`] of them given back, so only the mapped pages can make a
//!    huge page; every other page is freed, the nodes are compacted (the facade's mover runs
//!    with the kernel's `MoverTlb`: unmap, shootdown, copy, remap), the pages are read again
//!    through the same addresses, and a huge page is allocated.
//!
//! The flush tokens of vmalloc / vfree go to the kernel's real TLB invalidation, passed in.

use core::fmt::Write;
use core::ptr::NonNull;

use mmkit::addr::Pfn;
use mmkit::addr::{IrqControl, Order, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::pgtable::{PagingFormat, TlbInvalidate};
use mmkit::slab::CacheConfig;
use mmkit::{MemInfo, Mm, MovableError, MoverTlb, VmallocError};

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

/// `mm_frees_the_interim_table_pool`: the kernel's boot page-table pool goes back to the
/// buddy with [`Mm::free_reserved_range`]: every frame of it is freed, and `MemTotal` plus
/// `Deferred` grow by exactly that (frames past a deferred boundary join the deferred part),
/// with `verify` clean afterwards.
///
/// # Safety
/// As [`Mm::free_reserved_range`] for `pool`: nothing uses its frames any more.
pub unsafe fn frees_reserved_pool<P: IrqControl + Sync, F: PagingFormat>(
    mm: &mut Mm<'_, P, F>,
    pool: PhysRange,
) -> CheckResult {
    let managed = |i: MemInfo| (i.total_kb + i.deferred_kb) / (PAGE_SIZE / 1024);
    let before = managed(mm.meminfo());
    // SAFETY: the caller's promise.
    let freed =
        unsafe { mm.free_reserved_range(pool) }.map_err(|e| Reason::new(format_args!("{e}")))?;
    ensure!(
        freed == pool.len() / PAGE_SIZE,
        "freed {freed} frames of a {}-frame pool",
        pool.len() / PAGE_SIZE
    );
    ensure!(
        managed(mm.meminfo()) == before + freed,
        "managed and deferred frames did not grow by {freed}"
    );
    mm.verify()
        .map_err(|e| Reason::new(format_args!("verify: {e:?}")))
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

/// Huge-page blocks the movable check gives back after taking every free one (16 MiB).
pub const MOVABLE_HOLD_RELEASED: u64 = 8;

/// The huge-page order the movable check builds (2 MiB with 4 KiB pages).
pub const HUGE_ORDER: u32 = 9;

/// What [`movable_pages_compact`] measured, for the kernel to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct MovableFigures {
    /// Movable pages mapped.
    pub mapped: u64,
    /// Pages kept (mapped) through the compaction.
    pub kept: u64,
    /// Kept pages whose frame changed (the translation moved, the bytes stayed).
    pub moved: u64,
    /// Pages the facade's mover migrated in all.
    pub migrated: u64,
    /// Free frames obtainable as huge-order blocks before compaction.
    pub huge_free_before: u64,
    /// The same after compaction.
    pub huge_free_after: u64,
    /// The huge page allocated after compaction.
    pub huge_page: u64,
}

impl core::fmt::Display for MovableFigures {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} pages mapped, {} kept, {} moved to new frames ({} migrated by the mover); free order-9 frames {} -> {}; huge page at pfn {:#x}",
            self.mapped,
            self.kept,
            self.moved,
            self.migrated,
            self.huge_free_before,
            self.huge_free_after,
            self.huge_page
        )
    }
}

/// The movable-page check (module docs, step 3). `mover_tlb` is the kernel's invalidator for
/// the facade's mover, `tlb` its per-call one for vmalloc / vfree.
pub fn movable_pages_compact<'m, P: IrqControl + Sync, F: PagingFormat + Send + Sync>(
    mm: &mut Mm<'m, P, F>,
    mover_tlb: &'m dyn MoverTlb,
    tlb: &mut impl TlbInvalidate,
) -> Result<MovableFigures, Reason> {
    match mm.enable_movable(mover_tlb) {
        Ok(_) | Err(MovableError::AlreadyEnabled(_)) => {}
        Err(e) => fail!("enable_movable: {e:?}"),
    }
    let huge = Order::new(HUGE_ORDER);
    let gfp = GfpFlags::HIGHUSER_MOVABLE;
    // Take every free huge block (a list through the blocks' private words), then give
    // `MOVABLE_HOLD_RELEASED` back: the mapped pages land in those and in smaller holes.
    let mut held: Option<Pfn> = None;
    let mut nr_held = 0u64;
    while let Ok(pfn) = mm.alloc_pages(gfp, huge) {
        let next = held.map_or(0, |p| p.as_u64() + 1);
        if mm.buddy().set_page_private(pfn, next).is_err() {
            fail!("private word of a fresh block refused");
        }
        held = Some(pfn);
        nr_held += 1;
    }
    let pop = |mm: &Mm<'m, P, F>, held: &mut Option<Pfn>| -> Option<Pfn> {
        let pfn = (*held)?;
        let next = mm.buddy().page_private(pfn).unwrap_or(0);
        *held = next.checked_sub(1).map(Pfn::new);
        Some(pfn)
    };
    for _ in 0..MOVABLE_HOLD_RELEASED.min(nr_held) {
        if let Some(pfn) = pop(mm, &mut held) {
            if let Err(e) = mm.free_pages(pfn, huge) {
                fail!("freeing a held huge block: {e:?}");
            }
        }
    }
    let result = map_fragment_compact(mm, tlb);
    while let Some(pfn) = pop(mm, &mut held) {
        let _ = mm.buddy().set_page_private(pfn, 0);
        if let Err(e) = mm.free_pages(pfn, huge) {
            fail!("freeing a held huge block: {e:?}");
        }
    }
    let figures = result?;
    mm.verify()
        .map_err(|e| Reason::new(format_args!("verify after the movable check: {e:?}")))?;
    Ok(figures)
}

fn map_fragment_compact<P: IrqControl + Sync, F: PagingFormat + Send + Sync>(
    mm: &mut Mm<'_, P, F>,
    tlb: &mut impl TlbInvalidate,
) -> Result<MovableFigures, Reason> {
    let page_words = (PAGE_SIZE / 8) as usize;
    // As many pages as were given back: they fill the smaller holes first, then the given-back
    // blocks, so no free huge block is left; mapping stops early if memory runs out first.
    let want = MOVABLE_HOLD_RELEASED << HUGE_ORDER;
    let mut f = MovableFigures::default();
    // The index: page k's address and frame, in an ordinary (unmovable) vmalloc area.
    let index = mm
        .vmalloc((want * 16) as usize, tlb)
        .map_err(|e| Reason::new(format_args!("vmalloc for the index: {e:?}")))?;
    let Some(idx) = NonNull::new(index.as_u64() as *mut u8) else {
        fail!("vmalloc returned null");
    };
    let result = (|| {
        for k in 0..want as usize {
            let va = match mm.vmalloc_movable(PAGE_SIZE as usize, tlb) {
                Ok(va) => va,
                Err(VmallocError::OutOfMemory) if k as u64 >= want / 2 => break,
                Err(e) => fail!("vmalloc_movable, page {k}: {e:?}"),
            };
            f.mapped += 1;
            let Some(p) = NonNull::new(va.as_u64() as *mut u8) else {
                fail!("vmalloc_movable returned null");
            };
            // SAFETY: one page this check just mapped RW in the live table (vmalloc_movable
            // invalidated before returning); `idx` holds `2n` words, all this check's.
            unsafe {
                rawmem::write_read_pattern(p, page_words, va.as_u64())?;
                rawmem::store_word(idx, 2 * k, va.as_u64());
            }
        }
        let n = f.mapped;
        mm.verify()
            .map_err(|e| Reason::new(format_args!("verify after mapping: {e:?}")))?;
        // Free every other page; note the kept pages' frames.
        for k in 0..n as usize {
            // SAFETY: word `2k` of the index, written above.
            let va = VirtAddr::new(unsafe { rawmem::load_word(idx, 2 * k) });
            if k % 2 == 0 {
                mm.vfree(va, tlb)
                    .map_err(|e| Reason::new(format_args!("vfree({va:?}): {e:?}")))?;
            } else {
                let pfn = mm.vmalloc_to_pfn(va).map_or(0, |p| p.as_u64());
                // SAFETY: word `2k + 1` of the index.
                unsafe { rawmem::store_word(idx, 2 * k + 1, pfn) };
            }
        }
        mm.drain_all();
        f.kept = n / 2;
        f.huge_free_before = mm.free_pages_at_order(HUGE_ORDER);
        let migrated_before = mm.movable_stats().migrated;
        for nid in 0..mm.boot_summary().nr_nodes {
            mm.buddy()
                .compact_node(nid)
                .map_err(|e| Reason::new(format_args!("compact_node({nid}): {e:?}")))?;
        }
        mm.drain_all();
        f.migrated = mm.movable_stats().migrated - migrated_before;
        f.huge_free_after = mm.free_pages_at_order(HUGE_ORDER);
        mm.verify()
            .map_err(|e| Reason::new(format_args!("verify after compaction: {e:?}")))?;
        // Read every kept page again through its address.
        for k in (1..n as usize).step_by(2) {
            // SAFETY: words `2k` and `2k + 1` of the index.
            let (va, pfn) = unsafe {
                (
                    rawmem::load_word(idx, 2 * k),
                    rawmem::load_word(idx, 2 * k + 1),
                )
            };
            let Some(p) = NonNull::new(va as *mut u8) else {
                fail!("null address in the index");
            };
            // SAFETY: a page of this check, still mapped (possibly to a new frame: the
            // mover's shootdown ran before any read here).
            unsafe { rawmem::check_pattern(p, page_words, va) }.map_err(|e| {
                Reason::new(format_args!(
                    "page {k} at {va:#x} after compaction: {}",
                    e.as_str()
                ))
            })?;
            if mm.vmalloc_to_pfn(VirtAddr::new(va)).map(Pfn::as_u64) != Some(pfn) {
                f.moved += 1;
            }
        }
        ensure!(
            f.huge_free_after > f.huge_free_before,
            "compaction made no huge block: {} -> {} frames ({} pages migrated)",
            f.huge_free_before,
            f.huge_free_after,
            f.migrated
        );
        let huge = mm
            .alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(HUGE_ORDER))
            .map_err(|e| Reason::new(format_args!("huge page after compaction: {e:?}")))?;
        f.huge_page = huge.as_u64();
        mm.free_pages(huge, Order::new(HUGE_ORDER))
            .map_err(|e| Reason::new(format_args!("freeing the huge page: {e:?}")))?;
        for k in (1..f.mapped as usize).step_by(2) {
            // SAFETY: word `2k` of the index.
            let va = VirtAddr::new(unsafe { rawmem::load_word(idx, 2 * k) });
            mm.vfree(va, tlb)
                .map_err(|e| Reason::new(format_args!("vfree({va:?}): {e:?}")))?;
        }
        Ok(f)
    })();
    let freed = mm.vfree(index, tlb);
    let f = result?;
    ensure!(freed.is_ok(), "vfree of the index: {freed:?}");
    Ok(f)
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
