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
//! Throughput is reported per page (PTE), so criterion prints the per-PTE cost directly.
//! Run: `cargo bench -p mmkit-pgtable --bench pgtable`
//!
//! Instruction counts (repeatable on a shared host): `MMKIT_ICOUNT=10 valgrind
//! --tool=callgrind <bench binary>` runs each side's translate loops 10 times in non-inlined
//! `icount_*` functions instead of criterion; their inclusive counts (`callgrind_annotate
//! --inclusive=yes`) divided by 10 × 4096 are instructions per translate.
//!
//! Figures (shared 2-core host; ranges over several runs, old and new binaries back to back;
//! per translate):
//!
//! | | mmkit | x86_64 crate | peer time ÷ mmkit time |
//! |---|---:|---:|---:|
//! | full translate, instructions (callgrind) | 97 (before the specialised walk: 197) | 113 | |
//! | address only, instructions (callgrind) | 76 (before: 148) | 116 | |
//! | full translate, time (criterion) | 13.5–16 ns (before: 26–27) | 10–16 ns | 0.7–1.0 (before: 0.5) |
//! | address only, time (criterion) | 10.5–15.5 ns (before: 19–27) | 10–14 ns | 0.8–1.15 (before: 0.4–0.6) |

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mmkit_addr::host::HostMemory;
use mmkit_addr::{OffsetMapper, PageSize, PhysAddr, VirtAddr};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::{Attrs, FrameSource, MapSize, PageTable, TlbInvalidate};
use x86_64::structures::paging::mapper::TranslateResult;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as XPageTable, PageTableFlags as XF,
    PhysFrame, Size2MiB, Size4KiB, Translate,
};

const GIB: u64 = 1 << 30;
const VA: u64 = 0xffff_8000_4000_0000;
const PA: u64 = 0x1_0000_0000;
/// Host memory standing for physical memory at this base, for the tables of each side (low, so
/// that the host buffer lies above it and the direct-map offset does not wrap, also under
/// valgrind, which places heap mappings low).
const TABLE_BASE: u64 = 0x20_0000;
const TABLE_BYTES: u64 = 8 << 20;

/// A LIFO of 4 KiB frames inside a host buffer, zeroed on allocation.
struct Frames {
    free: Vec<u64>,
    host_offset: u64,
}

impl Frames {
    fn new(mem: &HostMemory) -> Self {
        let base = mem.range().start().as_u64();
        let host = mem.ptr_of(mem.range().start()).unwrap().as_ptr() as u64;
        Self {
            free: (0..mem.range().len() / 4096)
                .rev()
                .map(|i| base + i * 4096)
                .collect(),
            host_offset: host.wrapping_sub(base),
        }
    }

    fn take_zeroed(&mut self) -> Option<u64> {
        let pa = self.free.pop()?;
        // SAFETY: `pa` is a free frame of the host buffer (offset mapping), exclusively ours.
        unsafe { core::ptr::write_bytes(pa.wrapping_add(self.host_offset) as *mut u8, 0, 4096) };
        Some(pa)
    }
}

// SAFETY: frames come from the free list once each, 4 KiB-aligned, zeroed just above.
unsafe impl FrameSource for Frames {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        assert_eq!(size, PageSize::Size4K);
        self.take_zeroed().map(PhysAddr::new)
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, _size: PageSize) {
        self.free.push(frame.as_u64());
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
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let s = Instant::now();
                    ours_map(&mut pt, size);
                    t += s.elapsed();
                    ours_unmap(&mut pt);
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
                    let s = Instant::now();
                    theirs.map(size);
                    t += s.elapsed();
                }
                t
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("unmap_{name}"));
        g.throughput(Throughput::Elements(ptes));
        g.sample_size(10).warm_up_time(Duration::from_millis(500));
        g.bench_function("mmkit", |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    ours_map(&mut pt, size);
                    let s = Instant::now();
                    ours_unmap(&mut pt);
                    t += s.elapsed();
                }
                t
            })
        });
        g.bench_function("x86_64", |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    theirs.reset();
                    theirs.map(size);
                    let s = Instant::now();
                    theirs.unmap(size);
                    t += s.elapsed();
                }
                t
            })
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
    let ours_full = || ours_full(&pt, &addrs);
    let theirs_full = || theirs_full(&tpt, &addrs);
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
    let ours_addr = || ours_addr(&pt, &addrs);
    let theirs_addr = || theirs_addr(&tpt, &addrs);
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

/// Full translation (address, size and attributes) of every address, mmkit.
#[inline(always)]
fn ours_full(pt: &Ours, addrs: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &a in addrs {
        let t = pt.translate(VirtAddr::new(a)).unwrap();
        sum = sum.wrapping_add(t.pa_of(VirtAddr::new(a)).as_u64() ^ u64::from(t.attrs.bits()));
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
        sum = sum.wrapping_add(icount_theirs_full(&tpt, &addrs));
        sum = sum.wrapping_add(icount_ours_addr(&pt, &addrs));
        sum = sum.wrapping_add(icount_theirs_addr(&tpt, &addrs));
    }
    println!(
        "checksum {sum:#x} over {rounds} rounds of {} addresses",
        addrs.len()
    );
}

#[inline(never)]
fn icount_ours_full(pt: &Ours, addrs: &[u64]) -> u64 {
    ours_full(pt, addrs)
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

/// `criterion_group!` generates an undocumented `pub fn`; the allow is scoped to it.
mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::map_unmap, super::translate);
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
    let mut b = [f64::MAX; 4];
    for _ in 0..rounds {
        best(&|| ours_full(&pt, &addrs), &mut b[0]);
        best(&|| theirs_full(&tpt, &addrs), &mut b[1]);
        best(&|| ours_addr(&pt, &addrs), &mut b[2]);
        best(&|| theirs_addr(&tpt, &addrs), &mut b[3]);
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
