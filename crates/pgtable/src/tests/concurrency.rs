//! Multi-threaded stress: "hardware" walker threads set accessed/dirty bits in the live table
//! (as an x86 MMU does, with atomic ORs) while the owning thread rewrites the same leaves with
//! protect and clear-accessed. Every leaf update is an atomic read-modify-write, so a dirty
//! bit the hardware sets is never lost to a concurrent software update that does not clear it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use super::{arena_for, table, X86_64};
use crate::softmmu::x86_64::X86Walker;
use crate::softmmu::{Access, Mode, Walker};
use crate::{AttrChange, Attrs, MapSize, TlbInvalidate};

/// The walker threads keep no TLB, so there is nothing to invalidate.
struct NoTlb;

// SAFETY: the only MMUs using the table in this test are `X86Walker`s, which cache nothing.
unsafe impl TlbInvalidate for NoTlb {
    fn invalidate_page(&mut self, _va: VirtAddr, _size: PageSize, _leaf_only: bool) {}
    fn invalidate_all(&mut self) {}
}

#[test]
fn hardware_dirty_bits_survive_concurrent_protect_and_clear_accessed() {
    const PAGES: u64 = 64;
    const ROUNDS: usize = 100;
    const WALKERS: usize = 2;
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 16);
    let mut pt = table(f, &arena);
    let va = 0x0000_4000_0000_0000u64;
    let len = PAGES * 4096;
    let clean = Attrs::USER_RW - Attrs::ACCESSED;
    let _ = pt
        .map(
            VirtAddr::new(va),
            PhysAddr::new(0x1000_0000),
            len,
            clean,
            MapSize::Largest,
        )
        .unwrap();
    let root = pt.root();
    let start = Barrier::new(WALKERS + 1);
    let end = Barrier::new(WALKERS + 1);
    let finished = AtomicUsize::new(0);
    let mut lost = Vec::new();
    std::thread::scope(|s| {
        let mem = arena.memory();
        for t in 0..WALKERS as u64 {
            let (start, end, finished) = (&start, &end, &finished);
            s.spawn(move || {
                let w = X86Walker::new(mem, root, 4);
                for _ in 0..ROUNDS {
                    start.wait();
                    // Write this thread's pages once each: the MMU sets A and D.
                    // Spread over time so the writes overlap the owner's rewrites.
                    for p in (t..PAGES).step_by(WALKERS) {
                        for _ in 0..500 {
                            core::hint::spin_loop();
                        }
                        w.walk(va + p * 4096, Access::Write, Mode::User, true)
                            .unwrap();
                    }
                    finished.fetch_add(1, Ordering::AcqRel);
                    end.wait();
                }
            });
        }
        for round in 0..ROUNDS {
            let cl = pt
                .clear_accessed_dirty(VirtAddr::new(va), len, Attrs::DIRTY)
                .unwrap();
            let _ = cl.flush.invalidate(&mut NoTlb);
            finished.store(0, Ordering::Release);
            start.wait();
            // Rewrite the same leaves until every walker is done.
            let mut k = 0u64;
            while finished.load(Ordering::Acquire) < WALKERS {
                let sw = if k % 2 == 0 {
                    AttrChange::flags(Attrs::SW0, Attrs::empty())
                } else {
                    AttrChange::flags(Attrs::empty(), Attrs::SW0)
                };
                let fl = pt.protect(VirtAddr::new(va), len, sw).unwrap();
                let _ = fl.invalidate(&mut NoTlb);
                let cl = pt
                    .clear_accessed_dirty(VirtAddr::new(va), len, Attrs::ACCESSED)
                    .unwrap();
                let _ = cl.flush.invalidate(&mut NoTlb);
                k += 1;
            }
            end.wait();
            // Record, do not assert here: a panic would leave the walkers at the barrier.
            for p in 0..PAGES {
                let t = pt.translate(VirtAddr::new(va + p * 4096)).unwrap();
                if !t.attrs().contains(Attrs::DIRTY) {
                    lost.push((round, p));
                }
            }
        }
    });
    assert!(lost.is_empty(), "dirty bits lost (round, page): {lost:?}");
    pt.verify().unwrap();
    let _ = pt.destroy(&mut NoTlb);
    assert_eq!(arena.outstanding(), 0);
}
