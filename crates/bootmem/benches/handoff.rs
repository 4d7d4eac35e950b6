//! Criterion benches for the hand-off and for allocation on a fragmented map.
//!
//! * `handoff/1TiB_holes/*`: hand off 1 TiB of memory in 64 regions of 16 GiB minus a
//!   1 MiB hole each, with 100 scattered 64 KiB reservations; `blocks` walks every block the
//!   buddy would free (max order 10: about 262 000 blocks), `block_runs` the compressed runs.
//! * `handoff/16GiB/*`: the same shape at 16 GiB, with a page-by-page baseline — the O(pages)
//!   loop the hand-off is designed to avoid — to give the ratio on one workload.
//! * `alloc/fragmented`: a 4 KiB alloc + free where every free range above the lowest one is
//!   too small (2 KiB), so the top-down search walks all 1000 memory regions;
//!   `alloc/fragmented_low_window` asks for the same below the second region, and the walk
//!   starts there (binary search) instead of at the top.
//!
//! Peers: the one memblock-style crate on crates.io, `moa_memblock`, needs Rust 1.97 in every
//! release (this workspace builds on 1.95), and none has a buddy hand-off, so the comparison
//! point is the naive page-by-page hand-off on the same map.
//!
//! Run: `cargo bench -p mmkit-bootmem --bench handoff`

use criterion::{black_box, criterion_main, BatchSize, Criterion};
use mmkit_addr::{Order, PhysAddr, PAGE_SIZE};
use mmkit_bootmem::{AllocRequest, Bootmem};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `total` bytes in `regions` equal regions, each with a 1 MiB hole at its start, plus
/// `reservations` 64 KiB reservations spread evenly.
fn map_with_holes(total: u64, regions: u64, reservations: u64) -> Bootmem<'static> {
    let mut bm: Bootmem = Bootmem::new();
    let per = total / regions;
    for i in 0..regions {
        bm.add(PhysAddr::new(i * per + MIB), per - MIB).unwrap();
    }
    let stride = total / reservations;
    for i in 0..reservations {
        bm.reserve(PhysAddr::new(i * stride + 3 * MIB + 0x5000), 0x1_0000)
            .unwrap();
    }
    bm
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff");
    // The per-iteration setup (tens of thousands of list edits) is not timed.
    g.bench_function("1TiB_holes/blocks", |b| {
        b.iter_batched(
            || map_with_holes(1024 * GIB, 64, 100),
            |bm| {
                let h = bm.handoff(Order::new(10));
                let mut pages = 0u64;
                for block in h.blocks() {
                    pages += black_box(block).order.pages();
                }
                pages
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("1TiB_holes/block_runs", |b| {
        b.iter_batched(
            || map_with_holes(1024 * GIB, 64, 100),
            |bm| {
                let h = bm.handoff(Order::new(10));
                let mut pages = 0u64;
                for run in h.block_runs() {
                    pages += black_box(run).count << run.first.order.get();
                }
                pages
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("16GiB/blocks", |b| {
        b.iter_batched(
            || map_with_holes(16 * GIB, 4, 16),
            |bm| {
                let h = bm.handoff(Order::new(10));
                let mut pages = 0u64;
                for block in h.blocks() {
                    pages += black_box(block).order.pages();
                }
                pages
            },
            BatchSize::LargeInput,
        )
    });
    g.sample_size(10);
    g.bench_function("16GiB/page_by_page_baseline", |b| {
        b.iter_batched(
            || map_with_holes(16 * GIB, 4, 16),
            |bm| {
                let h = bm.handoff(Order::new(10));
                let mut pages = 0u64;
                for fr in h.free_ranges() {
                    for pfn in fr.range.whole_pfns() {
                        black_box(pfn);
                        pages += 1;
                    }
                }
                pages
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn alloc_fragmented(c: &mut Criterion) {
    // Room for 2048 regions per list inline, so the setup needs no mapper.
    let mut bm: Box<Bootmem<'static, 2048>> = Box::new(Bootmem::new());
    for i in 0..1000u64 {
        bm.add(PhysAddr::new(GIB + i * 2 * MIB), MIB).unwrap();
        if i > 0 {
            // Leave only a 2 KiB gap in each region but the lowest.
            bm.reserve(PhysAddr::new(GIB + i * 2 * MIB), MIB - 0x800)
                .unwrap();
        }
    }
    c.bench_function("alloc/fragmented", |b| {
        b.iter(|| {
            let pa = bm.alloc(PAGE_SIZE, PAGE_SIZE).unwrap();
            bm.free(black_box(pa), PAGE_SIZE).unwrap();
        })
    });
    // The same request with a window at the bottom: the walk starts there by binary search.
    let low = AllocRequest::new(PAGE_SIZE, PAGE_SIZE).below(PhysAddr::new(GIB + 4 * MIB));
    c.bench_function("alloc/fragmented_low_window", |b| {
        b.iter(|| {
            let pa = bm.alloc_request(&low).unwrap();
            bm.free(black_box(pa), PAGE_SIZE).unwrap();
        })
    });
}

/// The group; criterion's macro emits an undocumented `pub fn`, hence the local allow.
mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::handoff, super::alloc_fragmented);
}
criterion_main!(group::benches);
