//! Criterion benches: mmkit-pgtable beside the `x86_64` crate's `OffsetPageTable`, same
//! workload, same run, both over host memory reached through a direct-map offset.
//!
//! * `map_1GiB_4K/*`, `map_1GiB_2M/*`: map 1 GiB of fresh address space as 262 144 4 KiB pages
//!   or 512 2 MiB pages into an empty 4-level table (mmkit: one range call with the size forced;
//!   x86_64: one `map_to` per page). Only the map is timed; the table is emptied untimed.
//! * `unmap_1GiB_4K/*`, `unmap_1GiB_2M/*`: unmap the same (mmkit: one range call, then the flush
//!   token through a no-op TLB and the freed tables back to the frame source; x86_64: one
//!   `unmap` per page, which leaves its empty tables in place).
//! * `translate_4K/*` (interleaved: each timed batch is followed by an untimed batch of the
//!   other side, so load changes on a shared host hit both): fully translate (address, size,
//!   attributes) 4096 addresses spread over the 1 GiB mapped as 4 KiB pages;
//!   `translate_addr_4K/*`: the same, address only.
//!
//! Throughput is reported per page (PTE), so criterion prints the per-PTE cost directly. The
//! other groups (1 GiB pages, partial protect and unmap, copy, aarch64 beside aarch64-paging,
//! every format on its own) are described at their functions.
//! Run: `cargo bench -p mmkit-pgtable --bench pgtable`
//!
//! Instruction counts (repeatable on a shared host): `MMKIT_ICOUNT=10 valgrind
//! --tool=callgrind <bench binary>` runs each side's translate loops 10 times, and its map
//! 1 GiB of 4 KiB pages, partial protect and half-table unmaps 10 times each, in non-inlined
//! `icount_*` functions instead of criterion; their inclusive counts (`callgrind_annotate
//! --inclusive=yes`) divided by 10 × 4096 are instructions per translate (by 10 × the PTE
//! count for the loops).
//!
//! `MMKIT_AB=<rounds> <bench binary>` prints the best-of-`rounds` time of each side's
//! translate loops (the same `icount_*` functions), batches alternating.
//!
//! The figures, before and after, are in the crate README (section "Performance").

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use aarch64_paging::descriptor::{El1Attributes as A, PhysicalAddress as APhys};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, RootTable, VaRange};
use criterion::{Criterion, Throughput};
use mmkit_addr::host::HostMemory;
use mmkit_addr::VaHalf;
use mmkit_addr::{OffsetMapper, PageSize, PhysAddr, VirtAddr};
use mmkit_pgtable::arch::aarch64::{Aarch64, Granule};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::{AttrChange, PagingFormat};
use mmkit_pgtable::{Attrs, FrameSource, MapSize, PageTable, TableRefs, TlbInvalidate};
use x86_64::structures::paging::mapper::TranslateResult;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as XPageTable, PageTableFlags as XF,
    PhysFrame, Size1GiB, Size2MiB, Size4KiB, Translate,
};

const GIB: u64 = 1 << 30;
const VA: u64 = 0xffff_8000_4000_0000;
const PA: u64 = 0x1_0000_0000;
/// Host memory standing for physical memory at this base, for the tables of each side (low, so
/// that the host buffer lies above it and the direct-map offset does not wrap, also under
/// valgrind, which places heap mappings low).
const TABLE_BASE: u64 = 0x20_0000;
const TABLE_BYTES: u64 = 8 << 20;

/// A LIFO of table frames (4 KiB unless built with [`Frames::with_granule`]) inside a host
/// buffer, zeroed on allocation unless they came back through `free_zeroed_table` (the page
/// table's promise that they are all zeroes: tables emptied entry by entry), as a kernel's
/// cache of zeroed page-table pages would.
struct Frames {
    /// Free frames, each with whether it is known to be all zeroes.
    free: Vec<(u64, bool)>,
    host_offset: u64,
    bytes: u64,
}

impl Frames {
    fn new(mem: &HostMemory) -> Self {
        Self::with_granule(mem, PageSize::Size4K)
    }

    fn with_granule(mem: &HostMemory, gran: PageSize) -> Self {
        let base = mem.range().start().as_u64();
        let host = mem.ptr_of(mem.range().start()).unwrap().as_ptr() as u64;
        let bytes = gran.bytes();
        Self {
            free: (0..mem.range().len() / bytes)
                .rev()
                .map(|i| (base + i * bytes, false))
                .collect(),
            host_offset: host.wrapping_sub(base),
            bytes,
        }
    }

    fn take_zeroed(&mut self) -> Option<u64> {
        let (pa, zeroed) = self.free.pop()?;
        if !zeroed {
            // SAFETY: `pa` is a free frame of the host buffer (offset mapping), exclusively
            // ours.
            unsafe {
                core::ptr::write_bytes(
                    pa.wrapping_add(self.host_offset) as *mut u8,
                    0,
                    self.bytes as usize,
                )
            };
        }
        Some(pa)
    }
}

// SAFETY: frames come from the free list once each, aligned to their size (the buffer's base
// is), zeroed just above.
unsafe impl FrameSource for Frames {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        assert_eq!(size.bytes(), self.bytes);
        self.take_zeroed().map(PhysAddr::new)
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, _size: PageSize) {
        self.free.push((frame.as_u64(), false));
    }

    unsafe fn free_zeroed_table(&mut self, frame: PhysAddr, _size: PageSize) {
        self.free.push((frame.as_u64(), true));
    }
}

// SAFETY: as above; the x86_64 crate zeroes new tables itself.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.take_zeroed()
            .map(|pa| PhysFrame::containing_address(x86_64::PhysAddr::new(pa)))
    }
}

/// The bench tables are never loaded in an MMU.
struct NoTlb;

// SAFETY: the tables benchmarked here are never used by any MMU, so no TLB holds anything.
unsafe impl TlbInvalidate for NoTlb {
    fn invalidate_page(&mut self, _va: VirtAddr, _size: PageSize, _leaf_only: bool) {}
    fn invalidate_all(&mut self) {}
}

fn mapper(mem: &HostMemory) -> OffsetMapper {
    let base = mem.range().start().as_u64();
    let host = mem.ptr_of(mem.range().start()).unwrap().as_ptr() as u64;
    // SAFETY: physical [base, base + len) is the host buffer at `host`; nothing below `base` is
    // ever asked for (tables only come from `Frames` over this buffer).
    unsafe { OffsetMapper::new(host.wrapping_sub(base), mem.range().end().as_u64()) }
}

type Ours = PageTable<X86_64, OffsetMapper, Frames>;

fn ours(mem: &HostMemory) -> Ours {
    PageTable::new(X86_64::FOUR_LEVEL, mapper(mem), Frames::new(mem)).unwrap()
}

fn ours_map(pt: &mut Ours, size: PageSize) {
    let f = pt
        .map(
            VirtAddr::new(VA),
            PhysAddr::new(PA),
            GIB,
            Attrs::KERNEL_RW,
            MapSize::Exactly(size),
        )
        .unwrap();
    let freed = f.invalidate(&mut NoTlb);
    pt.free_tables(freed).expect("tables of this table");
}

fn ours_unmap(pt: &mut Ours) {
    let f = pt.unmap(VirtAddr::new(VA), GIB).unwrap();
    let freed = f.invalidate(&mut NoTlb);
    pt.free_tables(freed).expect("tables of this table");
}

/// The x86_64 crate's table over its own host buffer, rebuilt empty on demand.
struct Theirs<'m> {
    mem: &'m HostMemory,
    frames: Frames,
    root: u64,
}

impl<'m> Theirs<'m> {
    fn new(mem: &'m HostMemory) -> Self {
        let mut t = Self {
            mem,
            frames: Frames::new(mem),
            root: 0,
        };
        t.reset();
        t
    }

    /// A fresh, empty table (all frames free again).
    fn reset(&mut self) {
        self.frames = Frames::new(self.mem);
        self.root = self.frames.take_zeroed().unwrap();
    }

    fn table(&mut self) -> (OffsetPageTable<'static>, &mut Frames) {
        let off = self.frames.host_offset;
        // SAFETY: `root` is a frame of the host buffer holding a valid (possibly empty) level-4
        // table, only accessed through the returned mapper while it lives.
        let pt4 = unsafe { &mut *(self.root.wrapping_add(off) as *mut XPageTable) };
        // SAFETY: every frame the table uses is in the host buffer mapped at `off`.
        (
            unsafe { OffsetPageTable::new(pt4, x86_64::VirtAddr::new(off)) },
            &mut self.frames,
        )
    }

    fn map(&mut self, size: PageSize) {
        let flags =
            XF::PRESENT | XF::WRITABLE | XF::GLOBAL | XF::NO_EXECUTE | XF::ACCESSED | XF::DIRTY;
        let (mut pt, frames) = self.table();
        let step = size.bytes();
        for i in 0..GIB / step {
            let va = x86_64::VirtAddr::new(VA + i * step);
            let pa = x86_64::PhysAddr::new(PA + i * step);
            // SAFETY: the mapped frames are never accessed; the table is never loaded.
            unsafe {
                if size == PageSize::Size4K {
                    pt.map_to(
                        Page::<Size4KiB>::containing_address(va),
                        PhysFrame::containing_address(pa),
                        flags,
                        frames,
                    )
                    .unwrap()
                    .ignore();
                } else {
                    pt.map_to(
                        Page::<Size2MiB>::containing_address(va),
                        PhysFrame::containing_address(pa),
                        flags,
                        frames,
                    )
                    .unwrap()
                    .ignore();
                }
            }
        }
    }

    fn unmap(&mut self, size: PageSize) {
        let (mut pt, _) = self.table();
        let step = size.bytes();
        for i in 0..GIB / step {
            let va = x86_64::VirtAddr::new(VA + i * step);
            if size == PageSize::Size4K {
                pt.unmap(Page::<Size4KiB>::containing_address(va))
                    .unwrap()
                    .1
                    .ignore();
            } else {
                pt.unmap(Page::<Size2MiB>::containing_address(va))
                    .unwrap()
                    .1
                    .ignore();
            }
        }
    }
}

fn map_unmap(c: &mut Criterion) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    for (name, size) in [("1GiB_4K", PageSize::Size4K), ("1GiB_2M", PageSize::Size2M)] {
        let ptes = GIB / size.bytes();
        let mut g = c.benchmark_group(format!("map_{name}"));
        g.throughput(Throughput::Elements(ptes));
        g.sample_size(10).warm_up_time(Duration::from_millis(500));
        let mut pt = ours(&ours_mem);
        g.bench_function("mmkit", |b| {
            b.iter_custom(|n| time_between(n, &mut pt, |_| {}, |pt| ours_map(pt, size), ours_unmap))
        });
        let mut theirs = Theirs::new(&their_mem);
        g.bench_function("x86_64", |b| {
            b.iter_custom(|n| time_between(n, &mut theirs, Theirs::reset, |t| t.map(size), |_| {}))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("unmap_{name}"));
        g.throughput(Throughput::Elements(ptes));
        g.sample_size(10).warm_up_time(Duration::from_millis(500));
        g.bench_function("mmkit", |b| {
            b.iter_custom(|n| time_between(n, &mut pt, |pt| ours_map(pt, size), ours_unmap, |_| {}))
        });
        g.bench_function("x86_64", |b| {
            let before = |t: &mut Theirs<'_>| {
                t.reset();
                t.map(size);
            };
            b.iter_custom(|n| time_between(n, &mut theirs, before, |t| t.unmap(size), |_| {}))
        });
        g.finish();
    }
}

fn translate(c: &mut Criterion) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut pt = ours(&ours_mem);
    ours_map(&mut pt, PageSize::Size4K);
    let mut theirs = Theirs::new(&their_mem);
    theirs.map(PageSize::Size4K);
    let addrs = translate_addrs();
    let (tpt, _) = theirs.table();
    // Each side's loop is its non-inlined `icount_*` function, the code callgrind counts:
    // inlined into these closures instead, either side's loop is compiled differently from
    // build to build (hoisting, register allocation), which moved the ratio between 0.66 and
    // 1.25 with no change to either walk.
    let ours_full = || icount_ours_full(&pt, &addrs);
    let theirs_full = || icount_theirs_full(&tpt, &addrs);
    // Each timed batch of one side is followed by an untimed batch of the other, so load
    // changes on a shared host hit both sides alike.
    let mut g = c.benchmark_group("translate_4K");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("mmkit", |b| {
        b.iter_custom(|n| interleaved(n, ours_full, theirs_full))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| interleaved(n, theirs_full, ours_full))
    });
    g.finish();

    // Address only.
    let ours_addr = || icount_ours_addr(&pt, &addrs);
    let theirs_addr = || icount_theirs_addr(&tpt, &addrs);
    let mut g = c.benchmark_group("translate_addr_4K");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("mmkit", |b| {
        b.iter_custom(|n| interleaved(n, ours_addr, theirs_addr))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| interleaved(n, theirs_addr, ours_addr))
    });
    g.finish();
}

/// 4096 addresses spread over the GiB with a multiplicative hash (same for both sides).
fn translate_addrs() -> Vec<u64> {
    (0..4096u64)
        .map(|i| VA + ((i.wrapping_mul(0x9e37_79b9) % (GIB / 4096)) << 12) + (i & 0xfff))
        .collect()
}

/// Full translation (address, size and the entry's flags as the hardware has them, which
/// is what the `x86_64` crate hands back) of every address, mmkit.
#[inline(always)]
fn ours_full(pt: &Ours, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        let t = pt.translate(VirtAddr::new(a)).unwrap();
        sum = sum.wrapping_add(t.pa_of(VirtAddr::new(a)).as_u64() ^ t.raw);
    }
    sum
}

/// [`ours_full`] with the flags decoded to normalized `Attrs` (no peer counterpart: the
/// `x86_64` crate has no normalized form).
#[inline(always)]
fn ours_full_attrs(pt: &Ours, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        let t = pt.translate(VirtAddr::new(a)).unwrap();
        sum = sum.wrapping_add(t.pa_of(VirtAddr::new(a)).as_u64() ^ u64::from(t.attrs().bits()));
    }
    sum
}

/// Full translation (frame, offset and flags) of every address, x86_64 crate.
#[inline(always)]
fn theirs_full(tpt: &OffsetPageTable<'_>, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        match tpt.translate(x86_64::VirtAddr::new(a)) {
            TranslateResult::Mapped {
                frame,
                offset,
                flags,
            } => {
                sum = sum.wrapping_add((frame.start_address().as_u64() + offset) ^ flags.bits());
            }
            _ => unreachable!(),
        }
    }
    sum
}

/// Address-only translation of every address, mmkit.
#[inline(always)]
fn ours_addr(pt: &Ours, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        sum = sum.wrapping_add(pt.translate_addr(VirtAddr::new(a)).unwrap().as_u64());
    }
    sum
}

/// Address-only translation of every address, x86_64 crate.
#[inline(always)]
fn theirs_addr(tpt: &OffsetPageTable<'_>, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        sum = sum.wrapping_add(
            tpt.translate_addr(x86_64::VirtAddr::new(a))
                .unwrap()
                .as_u64(),
        );
    }
    sum
}

/// The body of criterion's `iter_custom` for work with untimed set-up and clean-up: `n` runs
/// of `before`, `timed` and `after` on `state`, returning the time spent in `timed` alone.
fn time_between<S: ?Sized>(
    n: u64,
    state: &mut S,
    mut before: impl FnMut(&mut S),
    mut timed: impl FnMut(&mut S),
    mut after: impl FnMut(&mut S),
) -> Duration {
    let mut t = Duration::ZERO;
    for _ in 0..n {
        before(state);
        let s = Instant::now();
        timed(state);
        t += s.elapsed();
        after(state);
    }
    t
}

/// Time `n` runs of `timed`, each followed by an untimed run of `other`.
fn interleaved(n: u64, timed: impl Fn() -> u64, other: impl Fn() -> u64) -> Duration {
    let mut t = Duration::ZERO;
    for _ in 0..n {
        let s = Instant::now();
        black_box(timed());
        t += s.elapsed();
        black_box(other());
    }
    t
}

/// Instruction-count probe for `valgrind --tool=callgrind`: builds the translate workload of
/// both sides, then runs `rounds` batches of one side's translate loop in a non-inlined
/// function named after it (`icount_<side>_<kind>`), so callgrind's inclusive count of that
/// function divided by `rounds * 4096` is the instruction count per translate.
///
/// `MMKIT_ICOUNT=<rounds> valgrind --tool=callgrind <bench binary>` runs this instead of
/// criterion.
fn icount(rounds: u64) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut pt = ours(&ours_mem);
    ours_map(&mut pt, PageSize::Size4K);
    let mut theirs = Theirs::new(&their_mem);
    theirs.map(PageSize::Size4K);
    let addrs = translate_addrs();
    let (tpt, _) = theirs.table();
    let mut sum = 0u64;
    for _ in 0..rounds {
        sum = sum.wrapping_add(icount_ours_full(&pt, &addrs));
        sum = sum.wrapping_add(icount_ours_full_attrs(&pt, &addrs));
        sum = sum.wrapping_add(icount_theirs_full(&tpt, &addrs));
        sum = sum.wrapping_add(icount_ours_addr(&pt, &addrs));
        sum = sum.wrapping_add(icount_theirs_addr(&tpt, &addrs));
    }
    println!(
        "checksum {sum:#x} over {rounds} rounds of {} addresses",
        addrs.len()
    );
    // aarch64 4 KiB, 48-bit: full translate beside aarch64-paging's one-page `walk_range`.
    const AVA: u64 = 0x40_0000_0000;
    let amem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let af = Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap();
    let mut apt = PageTable::new(af, mapper(&amem), Frames::new(&amem)).unwrap();
    let aattrs = Attrs::READ | Attrs::WRITE | Attrs::GLOBAL | Attrs::ACCESSED;
    let fl = apt
        .map(
            VirtAddr::new(AVA),
            PhysAddr::new(PA),
            GIB,
            aattrs,
            MapSize::Exactly(PageSize::Size4K),
        )
        .unwrap();
    apt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
    let mut atheirs =
        RootTable::with_va_range(IdTranslation::<A>::new(), 0, El1And0, VaRange::Lower);
    atheirs
        .map_range(
            &MemoryRegion::new(AVA as usize, (AVA + GIB) as usize),
            APhys(PA as usize),
            A::VALID | A::ATTRIBUTE_INDEX_0 | A::INNER_SHAREABLE | A::ACCESSED | A::UXN | A::PXN,
            Constraints::NO_BLOCK_MAPPINGS | Constraints::NO_CONTIGUOUS_HINT,
        )
        .unwrap();
    let aaddrs: Vec<u64> = addrs.iter().map(|a| a - VA + AVA).collect();
    for _ in 0..rounds {
        sum = sum.wrapping_add(icount_ours_aarch64_full(&apt, &aaddrs));
        sum = sum.wrapping_add(icount_theirs_aarch64_full(&atheirs, &aaddrs));
    }
    black_box(sum);

    // The mapping loops, once each per round: map 1 GiB as 4 KiB pages into an empty table,
    // protect the partial range, unmap the upper half of every leaf table.
    let ours_mem2 = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem2 = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut pt = ours(&ours_mem2);
    let mut theirs = Theirs::new(&their_mem2);
    for _ in 0..rounds {
        icount_ours_map_4k(&mut pt);
        theirs.reset();
        icount_theirs_map_4k(&mut theirs);
        icount_ours_protect(&mut pt);
        icount_theirs_protect(&mut theirs);
        icount_ours_unmap_halves(&mut pt);
        icount_theirs_unmap_halves(&mut theirs);
        ours_unmap(&mut pt);
    }
}

#[inline(never)]
fn icount_ours_aarch64_full(pt: &PageTable<Aarch64, OffsetMapper, Frames>, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        let t = pt.translate(VirtAddr::new(a)).unwrap();
        sum = sum.wrapping_add(t.pa_of(VirtAddr::new(a)).as_u64() ^ t.raw);
    }
    sum
}

#[inline(never)]
fn icount_theirs_aarch64_full(theirs: &RootTable<El1And0, IdTranslation<A>>, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        let page = (a & !0xfff) as usize;
        theirs
            .walk_range(&MemoryRegion::new(page, page + 4096), &mut |_, d, _| {
                sum = sum.wrapping_add(
                    (d.output_address().0 as u64 + (a & 0xfff)) ^ d.flags().bits() as u64,
                );
                Ok(())
            })
            .unwrap();
    }
    sum
}

#[inline(never)]
fn icount_ours_map_4k(pt: &mut Ours) {
    ours_map(pt, PageSize::Size4K);
}

#[inline(never)]
fn icount_theirs_map_4k(theirs: &mut Theirs<'_>) {
    theirs.map(PageSize::Size4K);
}

#[inline(never)]
fn icount_ours_protect(pt: &mut Ours) {
    let ch = AttrChange::flags(Attrs::empty(), Attrs::WRITE);
    let f = pt
        .protect(VirtAddr::new(PARTIAL_VA), PARTIAL_LEN, ch)
        .unwrap();
    pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
}

#[inline(never)]
fn icount_theirs_protect(theirs: &mut Theirs<'_>) {
    let (mut tpt, _) = theirs.table();
    let flags = XF::PRESENT | XF::GLOBAL | XF::NO_EXECUTE | XF::ACCESSED | XF::DIRTY;
    for i in 0..PARTIAL_LEN / 4096 {
        let va = x86_64::VirtAddr::new(PARTIAL_VA + i * 4096);
        // SAFETY: the table is never loaded; the flags stay a valid mapping.
        unsafe {
            tpt.update_flags(Page::<Size4KiB>::containing_address(va), flags)
                .unwrap()
                .ignore();
        }
    }
}

#[inline(never)]
fn icount_ours_unmap_halves(pt: &mut Ours) {
    for k in 0..512u64 {
        let va = VA + k * (2 << 20) + (1 << 20);
        let f = pt.unmap(VirtAddr::new(va), 1 << 20).unwrap();
        pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
    }
}

#[inline(never)]
fn icount_theirs_unmap_halves(theirs: &mut Theirs<'_>) {
    let (mut tpt, _) = theirs.table();
    for k in 0..512u64 {
        for p in 0..256u64 {
            let va = x86_64::VirtAddr::new(VA + k * (2 << 20) + (1 << 20) + p * 4096);
            tpt.unmap(Page::<Size4KiB>::containing_address(va))
                .unwrap()
                .1
                .ignore();
        }
    }
}

#[inline(never)]
fn icount_ours_full(pt: &Ours, addrs: &[u64]) -> u64 {
    ours_full(pt, addrs)
}

#[inline(never)]
fn icount_ours_full_attrs(pt: &Ours, addrs: &[u64]) -> u64 {
    ours_full_attrs(pt, addrs)
}

#[inline(never)]
fn icount_theirs_full(tpt: &OffsetPageTable<'_>, addrs: &[u64]) -> u64 {
    theirs_full(tpt, addrs)
}

#[inline(never)]
fn icount_ours_addr(pt: &Ours, addrs: &[u64]) -> u64 {
    ours_addr(pt, addrs)
}

#[inline(never)]
fn icount_theirs_addr(tpt: &OffsetPageTable<'_>, addrs: &[u64]) -> u64 {
    theirs_addr(tpt, addrs)
}

/// `map_512GiB_1G`: 512 GiB as 512 1 GiB pages (mmkit: one call; x86_64: one `map_to` each).
fn map_1g(c: &mut Criterion) {
    const LEN: u64 = 512 * GIB;
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut g = c.benchmark_group("map_512GiB_1G");
    g.throughput(Throughput::Elements(512));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    let mut pt = ours(&ours_mem);
    g.bench_function("mmkit", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                let f = pt
                    .map(
                        VirtAddr::new(VA),
                        PhysAddr::new(PA),
                        LEN,
                        Attrs::KERNEL_RW,
                        MapSize::Exactly(PageSize::Size1G),
                    )
                    .unwrap();
                let freed = f.invalidate(&mut NoTlb);
                t += s.elapsed();
                pt.free_tables(freed).unwrap();
                let f = pt.unmap(VirtAddr::new(VA), LEN).unwrap();
                pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
            }
            t
        })
    });
    let mut theirs = Theirs::new(&their_mem);
    g.bench_function("x86_64", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                theirs.reset();
                let flags = XF::PRESENT
                    | XF::WRITABLE
                    | XF::GLOBAL
                    | XF::NO_EXECUTE
                    | XF::ACCESSED
                    | XF::DIRTY;
                let (mut tpt, frames) = theirs.table();
                let s = Instant::now();
                for i in 0..512 {
                    let va = x86_64::VirtAddr::new(VA + i * GIB);
                    let pa = x86_64::PhysAddr::new(PA + i * GIB);
                    // SAFETY: the mapped frames are never accessed; the table is never loaded.
                    unsafe {
                        tpt.map_to(
                            Page::<Size1GiB>::containing_address(va),
                            PhysFrame::containing_address(pa),
                            flags,
                            frames,
                        )
                        .unwrap()
                        .ignore();
                    }
                }
                t += s.elapsed();
            }
            t
        })
    });
    g.finish();
}

/// The range the partial-range benches work on: 1 GiB less 1 MiB at each end, so the first
/// and last leaf tables are partly inside (261 632 PTEs).
const PARTIAL_VA: u64 = VA + (1 << 20);
const PARTIAL_LEN: u64 = GIB - (2 << 20);

/// `protect_4K`: write-protect, then (next iteration) make writable again, the partial range
/// of 1 GiB mapped as 4 KiB pages (mmkit: one call per iteration, token invalidated; x86_64:
/// one `update_flags` per page).
fn protect(c: &mut Criterion) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut g = c.benchmark_group("protect_4K");
    g.throughput(Throughput::Elements(PARTIAL_LEN / 4096));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    let mut pt = ours(&ours_mem);
    ours_map(&mut pt, PageSize::Size4K);
    let mut writable = true;
    g.bench_function("mmkit", |b| {
        b.iter(|| {
            let ch = if writable {
                AttrChange::flags(Attrs::empty(), Attrs::WRITE)
            } else {
                AttrChange::flags(Attrs::WRITE, Attrs::empty())
            };
            writable = !writable;
            let f = pt
                .protect(VirtAddr::new(PARTIAL_VA), PARTIAL_LEN, ch)
                .unwrap();
            pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
        })
    });
    let mut theirs = Theirs::new(&their_mem);
    theirs.map(PageSize::Size4K);
    let (mut tpt, _) = theirs.table();
    let rw = XF::PRESENT | XF::WRITABLE | XF::GLOBAL | XF::NO_EXECUTE | XF::ACCESSED | XF::DIRTY;
    let mut writable = true;
    g.bench_function("x86_64", |b| {
        b.iter(|| {
            let flags = if writable { rw - XF::WRITABLE } else { rw };
            writable = !writable;
            for i in 0..PARTIAL_LEN / 4096 {
                let va = x86_64::VirtAddr::new(PARTIAL_VA + i * 4096);
                // SAFETY: the table is never loaded; the flags stay a valid mapping.
                unsafe {
                    tpt.update_flags(Page::<Size4KiB>::containing_address(va), flags)
                        .unwrap()
                        .ignore();
                }
            }
        })
    });
    g.finish();
}

/// `unmap_half_tables_4K`: in 1 GiB mapped as 4 KiB pages, unmap the upper half of every leaf
/// table (512 ranges of 256 PTEs, so no table empties and every PTE is cleared one by one;
/// mmkit: one call per range; x86_64: one `unmap` per page). The halves are mapped again
/// untimed.
fn unmap_half_tables(c: &mut Criterion) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    const HALF: u64 = 1 << 20;
    let mut g = c.benchmark_group("unmap_half_tables_4K");
    g.throughput(Throughput::Elements(512 * 256));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    let mut pt = ours(&ours_mem);
    ours_map(&mut pt, PageSize::Size4K);
    g.bench_function("mmkit", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                for k in 0..512u64 {
                    let va = VA + k * (2 << 20) + HALF;
                    let f = pt.unmap(VirtAddr::new(va), HALF).unwrap();
                    pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
                }
                t += s.elapsed();
                for k in 0..512u64 {
                    let off = k * (2 << 20) + HALF;
                    let f = pt
                        .map(
                            VirtAddr::new(VA + off),
                            PhysAddr::new(PA + off),
                            HALF,
                            Attrs::KERNEL_RW,
                            MapSize::Exactly(PageSize::Size4K),
                        )
                        .unwrap();
                    pt.free_tables(f.invalidate(&mut NoTlb)).unwrap();
                }
            }
            t
        })
    });
    let mut theirs = Theirs::new(&their_mem);
    theirs.map(PageSize::Size4K);
    let flags = XF::PRESENT | XF::WRITABLE | XF::GLOBAL | XF::NO_EXECUTE | XF::ACCESSED | XF::DIRTY;
    g.bench_function("x86_64", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let (mut tpt, frames) = theirs.table();
            for _ in 0..iters {
                let s = Instant::now();
                for k in 0..512u64 {
                    for p in 0..256u64 {
                        let va = x86_64::VirtAddr::new(VA + k * (2 << 20) + HALF + p * 4096);
                        tpt.unmap(Page::<Size4KiB>::containing_address(va))
                            .unwrap()
                            .1
                            .ignore();
                    }
                }
                t += s.elapsed();
                for k in 0..512u64 {
                    for p in 0..256u64 {
                        let off = k * (2 << 20) + HALF + p * 4096;
                        // SAFETY: the mapped frames are never accessed; the table is never
                        // loaded.
                        unsafe {
                            tpt.map_to(
                                Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(
                                    VA + off,
                                )),
                                PhysFrame::containing_address(x86_64::PhysAddr::new(PA + off)),
                                flags,
                                frames,
                            )
                            .unwrap()
                            .ignore();
                        }
                    }
                }
            }
            t
        })
    });
    g.finish();
}

/// aarch64, 4 KiB granule, 48-bit TTBR0 beside aarch64-paging 0.12 (its `IdTranslation`:
/// tables from the heap, identity-mapped), both El1:
/// * `aarch64_map_1GiB_4K/*`: map 1 GiB as 4 KiB pages (mmkit: size forced; aarch64-paging:
///   `NO_BLOCK_MAPPINGS`), one range call each; the tables are torn down untimed.
/// * `aarch64_translate_4K/*`: translate the 4096 scattered addresses (mmkit: `translate`;
///   aarch64-paging has no single-address lookup, so its `walk_range` over one page, which
///   reports the descriptor with its attributes and level, is the equivalent).
fn aarch64_vs_peer(c: &mut Criterion) {
    const AVA: u64 = 0x40_0000_0000;
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let f = Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap();
    let new_ours = || PageTable::new(f, mapper(&ours_mem), Frames::new(&ours_mem)).unwrap();
    let normal = A::VALID | A::ATTRIBUTE_INDEX_0 | A::INNER_SHAREABLE | A::ACCESSED;
    let their_flags = normal | A::UXN | A::PXN;
    let region = MemoryRegion::new(AVA as usize, (AVA + GIB) as usize);
    let new_theirs = || {
        let mut t = RootTable::with_va_range(IdTranslation::<A>::new(), 0, El1And0, VaRange::Lower);
        t.map_range(
            &region,
            APhys(PA as usize),
            their_flags,
            Constraints::NO_BLOCK_MAPPINGS | Constraints::NO_CONTIGUOUS_HINT,
        )
        .unwrap();
        t
    };
    let ours_attrs = Attrs::READ | Attrs::WRITE | Attrs::GLOBAL | Attrs::ACCESSED;
    let mut g = c.benchmark_group("aarch64_map_1GiB_4K");
    g.throughput(Throughput::Elements(GIB / 4096));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    let mut pt = new_ours();
    g.bench_function("mmkit", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                let fl = pt
                    .map(
                        VirtAddr::new(AVA),
                        PhysAddr::new(PA),
                        GIB,
                        ours_attrs,
                        MapSize::Exactly(PageSize::Size4K),
                    )
                    .unwrap();
                let freed = fl.invalidate(&mut NoTlb);
                t += s.elapsed();
                pt.free_tables(freed).unwrap();
                let fl = pt.unmap(VirtAddr::new(AVA), GIB).unwrap();
                pt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
            }
            t
        })
    });
    g.bench_function("aarch64-paging", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                let theirs = black_box(new_theirs());
                t += s.elapsed();
                drop(theirs);
            }
            t
        })
    });
    g.finish();

    let fl = pt
        .map(
            VirtAddr::new(AVA),
            PhysAddr::new(PA),
            GIB,
            ours_attrs,
            MapSize::Exactly(PageSize::Size4K),
        )
        .unwrap();
    pt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
    let theirs = new_theirs();
    let addrs: Vec<u64> = translate_addrs().iter().map(|a| a - VA + AVA).collect();
    let ours_t = || {
        let mut sum = 0u64;
        for &a in &addrs {
            let t = pt.translate(VirtAddr::new(a)).unwrap();
            sum =
                sum.wrapping_add(t.pa_of(VirtAddr::new(a)).as_u64() ^ u64::from(t.attrs().bits()));
        }
        sum
    };
    let theirs_t = || {
        let mut sum = 0u64;
        for &a in &addrs {
            let page = (a & !0xfff) as usize;
            theirs
                .walk_range(&MemoryRegion::new(page, page + 4096), &mut |_, d, _| {
                    sum = sum.wrapping_add(
                        (d.output_address().0 as u64 + (a & 0xfff)) ^ d.flags().bits() as u64,
                    );
                    Ok(())
                })
                .unwrap();
        }
        sum
    };
    let mut g = c.benchmark_group("aarch64_translate_4K");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("mmkit", |b| {
        b.iter_custom(|n| interleaved(n, ours_t, theirs_t))
    });
    g.bench_function("aarch64-paging", |b| {
        b.iter_custom(|n| interleaved(n, theirs_t, ours_t))
    });
    g.finish();
}

/// `copy_1GiB_4K/mmkit`: fork-style copy (`copy_range_to`) of 1 GiB mapped as 4 KiB pages
/// (writable) into an empty table of the same format (per PTE; no peer has the operation).
/// The destination is emptied untimed.
///
/// `copy_1GiB_4K_ro/{shared,copied}`: the same copy of 1 GiB of read-only 4 KiB pages, both
/// tables over one frame pool, with share counts (`TableRefs`: every leaf table is shared,
/// the destination gets only its upper tables) and without (every leaf table cloned). The
/// destination is torn down (`destroy`) and created again untimed.
fn copy(c: &mut Criterion) {
    let src_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let dst_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut src = ours(&src_mem);
    ours_map(&mut src, PageSize::Size4K);
    let mut dst = ours(&dst_mem);
    let mut g = c.benchmark_group("copy_1GiB_4K");
    g.throughput(Throughput::Elements(GIB / 4096));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    let mut copy_into = |dst: &mut Ours| {
        let f = src.copy_range_to(dst, VirtAddr::new(VA), GIB).unwrap();
        dst.free_tables(f.invalidate(&mut NoTlb)).unwrap();
    };
    g.bench_function("mmkit", |b| {
        b.iter_custom(|n| time_between(n, &mut dst, |_| {}, &mut copy_into, ours_unmap))
    });
    g.finish();

    let mut g = c.benchmark_group("copy_1GiB_4K_ro");
    g.throughput(Throughput::Elements(GIB / 4096));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for (name, sharing) in [("shared", true), ("copied", false)] {
        let mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
        let pool = Pool::new(&mem, sharing);
        let new_table = || PageTable::new(X86_64::FOUR_LEVEL, mapper(&mem), pool.clone()).unwrap();
        let mut src = new_table();
        let fl = src
            .map(
                VirtAddr::new(VA),
                PhysAddr::new(PA),
                GIB,
                Attrs::KERNEL_RO,
                MapSize::Exactly(PageSize::Size4K),
            )
            .unwrap();
        src.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
        let mut dst = Some(new_table());
        let mut copy_into = |dst: &mut Option<PageTable<X86_64, OffsetMapper, Pool>>| {
            let d = dst.as_mut().unwrap();
            let f = src.copy_range_to(d, VirtAddr::new(VA), GIB).unwrap();
            d.free_tables(f.invalidate(&mut NoTlb)).unwrap();
        };
        let renew = |dst: &mut Option<PageTable<X86_64, OffsetMapper, Pool>>| {
            let _ = dst.take().unwrap().destroy(&mut NoTlb);
            *dst = Some(new_table());
        };
        g.bench_function(name, |b| {
            b.iter_custom(|n| time_between(n, &mut dst, |_| {}, &mut copy_into, renew))
        });
    }
    g.finish();
}

/// Table frames of one host buffer for several tables, with share counts (`TableRefs`) when
/// `sharing`: what a kernel's frame source with page descriptors provides.
#[derive(Clone)]
struct Pool(Rc<PoolInner>);

struct PoolInner {
    frames: RefCell<Frames>,
    /// References beyond the first, per shared frame.
    extra: RefCell<HashMap<u64, u32>>,
    sharing: bool,
}

impl Pool {
    fn new(mem: &HostMemory, sharing: bool) -> Self {
        Pool(Rc::new(PoolInner {
            frames: RefCell::new(Frames::new(mem)),
            extra: RefCell::new(HashMap::new()),
            sharing,
        }))
    }
}

// SAFETY: forwards to one `Frames` (which keeps the contract) for every handle.
unsafe impl FrameSource for Pool {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        self.0.frames.borrow_mut().alloc_table(size)
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, size: PageSize) {
        // SAFETY: forwarded.
        unsafe { self.0.frames.borrow_mut().free_table(frame, size) }
    }

    unsafe fn free_zeroed_table(&mut self, frame: PhysAddr, size: PageSize) {
        // SAFETY: forwarded.
        unsafe { self.0.frames.borrow_mut().free_zeroed_table(frame, size) }
    }

    fn table_refs(&self) -> Option<&dyn TableRefs> {
        self.0.sharing.then_some(self as &dyn TableRefs)
    }
}

// SAFETY: every clone of one pool reports the same domain (the shared allocation's address)
// and keeps its counts in it; frames go back to the one `Frames` through any clone.
unsafe impl TableRefs for Pool {
    fn domain(&self) -> u64 {
        Rc::as_ptr(&self.0) as u64
    }

    fn count(&self, frame: PhysAddr) -> u32 {
        1 + self
            .0
            .extra
            .borrow()
            .get(&frame.as_u64())
            .copied()
            .unwrap_or(0)
    }

    fn get(&self, frame: PhysAddr) {
        *self.0.extra.borrow_mut().entry(frame.as_u64()).or_insert(0) += 1;
    }

    fn put(&self, frame: PhysAddr) -> bool {
        let mut extra = self.0.extra.borrow_mut();
        match extra.get_mut(&frame.as_u64()) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    extra.remove(&frame.as_u64());
                }
                false
            }
            None => true,
        }
    }
}

/// Per-format absolute figures (no peer): for x86_64 4- and 5-level and aarch64 4/16/64 KiB
/// granules (48-bit TTBR0), in `formats_<workload>/<format>`:
/// * `map_1GiB_pages`: 1 GiB as granule pages, size forced (per PTE);
/// * `map_blocks`: 512 blocks of the largest block size of the last table level's parent
///   (2 MiB, 32 MiB, 512 MiB), size forced (per entry);
/// * `protect`: write-protect / unprotect 1 GiB of granule pages less 1 MiB at each end
///   (per PTE);
/// * `translate`: 4096 scattered full translates in the 1 GiB of pages.
fn formats(c: &mut Criterion) {
    fn one<F: PagingFormat + Copy>(c: &mut Criterion, name: &str, f: F, va: u64) {
        let mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
        let gran = f.granule();
        let block = f.levels()[f.depth() - 2]
            .leaf
            .expect("a block level above the pages");
        let mut pt = PageTable::new(f, mapper(&mem), Frames::with_granule(&mem, gran)).unwrap();
        let map_unmap = |pt: &mut PageTable<F, OffsetMapper, Frames>, len: u64, size| {
            let s = Instant::now();
            let fl = pt
                .map(
                    VirtAddr::new(va),
                    PhysAddr::new(PA),
                    len,
                    Attrs::KERNEL_RW,
                    MapSize::Exactly(size),
                )
                .unwrap();
            let freed = fl.invalidate(&mut NoTlb);
            let t = s.elapsed();
            pt.free_tables(freed).unwrap();
            let fl = pt.unmap(VirtAddr::new(va), len).unwrap();
            pt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
            t
        };
        let mut g = c.benchmark_group("formats_map_1GiB_pages");
        g.throughput(Throughput::Elements(GIB / gran.bytes()));
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(2));
        g.bench_function(name, |b| {
            b.iter_custom(|n| (0..n).map(|_| map_unmap(&mut pt, GIB, gran)).sum())
        });
        g.finish();
        let mut g = c.benchmark_group("formats_map_blocks");
        g.throughput(Throughput::Elements(512));
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(2));
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| map_unmap(&mut pt, 512 * block.bytes(), block))
                    .sum()
            })
        });
        g.finish();
        let fl = pt
            .map(
                VirtAddr::new(va),
                PhysAddr::new(PA),
                GIB,
                Attrs::KERNEL_RW,
                MapSize::Exactly(gran),
            )
            .unwrap();
        pt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
        let mut g = c.benchmark_group("formats_protect");
        g.throughput(Throughput::Elements((GIB - (2 << 20)) / gran.bytes()));
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(2));
        let mut writable = true;
        g.bench_function(name, |b| {
            b.iter(|| {
                let ch = if writable {
                    AttrChange::flags(Attrs::empty(), Attrs::WRITE)
                } else {
                    AttrChange::flags(Attrs::WRITE, Attrs::empty())
                };
                writable = !writable;
                let fl = pt
                    .protect(VirtAddr::new(va + (1 << 20)), GIB - (2 << 20), ch)
                    .unwrap();
                pt.free_tables(fl.invalidate(&mut NoTlb)).unwrap();
            })
        });
        g.finish();
        let addrs: Vec<u64> = translate_addrs().iter().map(|a| a - VA + va).collect();
        let mut g = c.benchmark_group("formats_translate");
        g.throughput(Throughput::Elements(addrs.len() as u64));
        g.measurement_time(Duration::from_secs(2));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &addrs {
                    let t = pt.translate(VirtAddr::new(a)).unwrap();
                    sum = sum.wrapping_add(
                        t.pa_of(VirtAddr::new(a)).as_u64() ^ u64::from(t.attrs().bits()),
                    );
                }
                sum
            })
        });
        g.finish();
    }
    one(c, "x86_64_4level", X86_64::FOUR_LEVEL, VA);
    one(
        c,
        "x86_64_5level",
        X86_64::FIVE_LEVEL,
        0xff00_0000_4000_0000,
    );
    for (name, g) in [
        ("aarch64_4K", Granule::K4),
        ("aarch64_16K", Granule::K16),
        ("aarch64_64K", Granule::K64),
    ] {
        one(
            c,
            name,
            Aarch64::new(g, 48, VaHalf::Lower).unwrap(),
            0x40_0000_0000,
        );
    }
}

/// `criterion_group!` generates an undocumented `pub fn`; the allow is scoped to it.
mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(
        benches,
        super::map_unmap,
        super::map_1g,
        super::protect,
        super::unmap_half_tables,
        super::copy,
        super::translate,
        super::aarch64_vs_peer,
        super::formats
    );
}

/// Best-of-`rounds` translate times of both sides, batches alternating (`MMKIT_AB=<rounds>`):
/// the minimum is what a batch costs when the shared host leaves it alone, so the ratio is
/// stable where criterion's means move with the other tenants' load.
fn ab(rounds: u64) {
    let ours_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let their_mem = HostMemory::new(PhysAddr::new(TABLE_BASE), TABLE_BYTES);
    let mut pt = ours(&ours_mem);
    ours_map(&mut pt, PageSize::Size4K);
    let mut theirs = Theirs::new(&their_mem);
    theirs.map(PageSize::Size4K);
    let addrs = translate_addrs();
    let (tpt, _) = theirs.table();
    let n = addrs.len() as f64;
    let best = |f: &dyn Fn() -> u64, best: &mut f64| {
        let s = Instant::now();
        black_box(f());
        *best = best.min(s.elapsed().as_nanos() as f64 / n);
    };
    let mut b = [f64::MAX; 5];
    // The loops are the non-inlined `icount_*` functions: the code timed here is the code
    // callgrind counts.
    for _ in 0..rounds {
        best(&|| icount_ours_full(&pt, &addrs), &mut b[0]);
        best(&|| icount_theirs_full(&tpt, &addrs), &mut b[1]);
        best(&|| icount_ours_addr(&pt, &addrs), &mut b[2]);
        best(&|| icount_theirs_addr(&tpt, &addrs), &mut b[3]);
        best(&|| icount_ours_full_attrs(&pt, &addrs), &mut b[4]);
    }
    println!(
        "translate full: mmkit {:.2} ns, x86_64 {:.2} ns, ratio {:.2}",
        b[0],
        b[1],
        b[1] / b[0]
    );
    println!(
        "translate addr: mmkit {:.2} ns, x86_64 {:.2} ns, ratio {:.2}",
        b[2],
        b[3],
        b[3] / b[2]
    );
    println!(
        "translate full with normalized attrs: mmkit {:.2} ns (x86_64 full {:.2} ns, ratio {:.2})",
        b[4],
        b[1],
        b[1] / b[4]
    );
}

fn main() {
    if let Some(rounds) = std::env::var("MMKIT_AB").ok().and_then(|s| s.parse().ok()) {
        ab(rounds);
        return;
    }
    if let Some(rounds) = std::env::var("MMKIT_ICOUNT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        icount(rounds);
        return;
    }
    group::benches();
    Criterion::default().configure_from_args().final_summary();
}
