//! Allocations of an exact number of frames (Linux `alloc_pages_exact` /
//! `free_pages_exact`).
//!
//! [`BuddyAllocator::alloc_pages_exact`] allocates the power-of-two block covering `nr`
//! frames, cuts its first `nr` frames into the naturally aligned blocks that make them up
//! (one per set bit of `nr`, largest first: the *pieces*), and gives the rest back to the
//! free lists at once, where it merges with its free buddies. Each piece stays an allocated
//! block of its own. [`BuddyAllocator::free_pages_exact`] cuts `[pfn, pfn + nr)` the same
//! way, checks that every piece is an allocated block of its order, and only then frees them
//! all, so a wrong `nr` or pointer frees nothing.

use mmkit_addr::{IrqControl, Order, Pfn};

use crate::allocator::BuddyAllocator;
use crate::error::{AllocError, FreeError};
use crate::gfp::GfpFlags;
use crate::page::PageState;

/// The blocks an exact allocation of `nr` frames at `pfn` consists of (see the module docs),
/// as `(first frame, order)`: what its owner records, and what
/// [`BuddyAllocator::free_pages_exact`] frees.
pub fn exact_pieces(pfn: Pfn, nr: u64) -> impl Iterator<Item = (Pfn, Order)> {
    let start = pfn.as_u64();
    pieces(start, start.saturating_add(nr)).map(|(p, o)| (Pfn::new(p), Order::new(o)))
}

/// The naturally aligned blocks that make up `[start, end)`, greedily from `start`: each is
/// the largest block aligned at its start that fits. For `start` aligned to the power of two
/// covering `end - start`, these are one block per set bit of the length, largest first.
pub(crate) fn pieces(start: u64, end: u64) -> impl Iterator<Item = (u64, u32)> {
    let mut p = start;
    core::iter::from_fn(move || {
        if p >= end {
            return None;
        }
        let align = if p == 0 { 63 } else { p.trailing_zeros() };
        let fit = 63 - (end - p).leading_zeros();
        let o = align.min(fit);
        let at = p;
        p += 1u64 << o;
        Some((at, o))
    })
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Allocate exactly `nr` frames, preferring node `node`, as the blocks the module docs
    /// describe; the frames beyond `nr` of the covering power-of-two block are free again on
    /// return. With [`GfpFlags::ZERO`] the `nr` frames are zeroed. Free with
    /// [`free_pages_exact`](Self::free_pages_exact) and the same `nr`.
    pub fn alloc_pages_exact(
        &self,
        node: usize,
        gfp: GfpFlags,
        nr: u64,
    ) -> Result<Pfn, AllocError> {
        let order = Order::for_pages(nr).ok_or(AllocError::NoPages)?;
        if order.get() > self.cfg.max_order {
            return Err(AllocError::OrderTooLarge {
                order: order.get(),
                max: self.cfg.max_order,
            });
        }
        let pfn = self.alloc_pages_node(node, gfp, order)?;
        self.trim_block(pfn.as_u64(), order.get(), nr);
        Ok(pfn)
    }

    /// Cut the allocated block `[pfn, pfn + 2^order)`, which the caller owns, to its first
    /// `nr` frames (see the module docs).
    fn trim_block(&self, pfn: u64, order: u32, nr: u64) {
        let end = pfn + (1u64 << order);
        let keep = pfn + nr;
        if keep == end {
            return;
        }
        let Some((node, zone)) = self.locate(pfn) else {
            return;
        };
        let pbo = self.cfg.pageblock_order;
        let mt = node.mm.desc(pfn).flags().mt;
        node.mm.tally_movable(pfn, order, mt, pbo, false);
        for (p, o) in pieces(pfn, keep) {
            node.mm.desc(p).set_allocated(o, mt);
            node.mm.tally_movable(p, o, mt, pbo, true);
        }
        let mut z = self.lock(node, zone);
        for (p, o) in pieces(keep, end) {
            // Each piece lies inside one pageblock or covers whole ones of the block, whose
            // types it takes pageblock by pageblock, as `free_pages` does.
            let step = o.min(pbo);
            let mut q = p;
            while q < p + (1u64 << o) {
                let t = z.pageblock_type(q);
                z.free_one_page(q, step, t, false);
                q += 1u64 << step;
            }
        }
    }

    /// Free the `nr` frames at `pfn` that [`alloc_pages_exact`](Self::alloc_pages_exact)
    /// returned. Every piece is checked before any is freed: on error nothing changed, and
    /// the error names what the first wrong piece is (a double free, a wrong `nr` showing as
    /// a wrong order or a frame inside a block, ...).
    pub fn free_pages_exact(&self, pfn: Pfn, nr: u64) -> Result<(), FreeError> {
        let start = pfn.as_u64();
        let order = Order::for_pages(nr).ok_or(FreeError::Misaligned)?;
        if order.get() > self.cfg.max_order {
            return Err(FreeError::OrderTooLarge {
                order: order.get(),
                max: self.cfg.max_order,
            });
        }
        if start & (order.pages() - 1) != 0 {
            return Err(FreeError::Misaligned);
        }
        let end = start.checked_add(nr).ok_or(FreeError::OutsideZones)?;
        for (p, o) in pieces(start, end) {
            let (node, _) = self.locate(p).ok_or(FreeError::OutsideZones)?;
            let f = node.mm.desc(p).flags();
            if f.state != PageState::Allocated || f.order != o || f.migrating {
                return Err(self.classify_free_error(node, p, o, f));
            }
        }
        for (p, o) in pieces(start, end) {
            self.free_pages(Pfn::new(p), Order::new(o))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::testutil::{build, mib, no_pcp};
    use crate::BuddyConfig;
    use std::vec::Vec;

    #[test]
    fn pieces_are_the_set_bits_largest_first_and_cover_the_range() {
        let v: Vec<_> = pieces(64, 64 + 37).collect();
        assert_eq!(v, [(64, 5), (96, 2), (100, 0)]);
        let rest: Vec<_> = pieces(64 + 37, 128).collect();
        assert_eq!(rest, [(101, 0), (102, 1), (104, 3), (112, 4)]);
        assert_eq!(pieces(0, 1).collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(pieces(8, 8).count(), 0);
    }

    #[test]
    fn exact_allocations_keep_nr_frames_and_give_the_rest_back() {
        for cfg in [BuddyConfig::default(), no_pcp()] {
            let b = build(&[&[mib(16, 16)]], cfg, 1);
            let before = b.total_free();
            let mut got = Vec::new();
            for nr in [1u64, 2, 3, 5, 7, 8, 9, 100, 511, 513, 1000] {
                let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, nr).unwrap();
                b.drain_all_pages();
                got.push((p, nr));
                b.verify().unwrap();
            }
            let taken: u64 = got.iter().map(|&(_, nr)| nr).sum();
            b.drain_all_pages();
            assert_eq!(b.total_free(), before - taken, "only nr frames each");
            for (p, nr) in got {
                b.free_pages_exact(p, nr).unwrap();
                b.verify().unwrap();
            }
            b.drain_all_pages();
            assert_eq!(b.total_free(), before);
            assert_eq!(b.free_pages_at_order(10), before, "everything merged back");
        }
    }

    #[test]
    fn a_wrong_free_of_an_exact_allocation_changes_nothing() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let p = b.alloc_pages_exact(0, GfpFlags::KERNEL, 5).unwrap();
        let free = b.total_free();
        let at = |d: u64| Pfn::new(p.as_u64() + d);
        // Too many frames: its second piece would be an order-1 block where an order-0 one is.
        assert_eq!(
            b.free_pages_exact(p, 6),
            Err(FreeError::WrongOrder { allocated: 0 })
        );
        // Too few: the first piece is not the order-2 block.
        assert_eq!(
            b.free_pages_exact(p, 3),
            Err(FreeError::WrongOrder { allocated: 2 })
        );
        assert_eq!(b.free_pages_exact(p, 0), Err(FreeError::Misaligned));
        assert_eq!(b.free_pages_exact(at(1), 2), Err(FreeError::Misaligned));
        assert_eq!(
            b.free_pages_exact(at(2), 2),
            Err(FreeError::InsideBlock { head: p })
        );
        assert_eq!(b.free_pages_exact(at(5), 1), Err(FreeError::DoubleFree));
        assert_eq!(b.total_free(), free);
        b.verify().unwrap();
        b.free_pages_exact(p, 5).unwrap();
        assert_eq!(b.free_pages_exact(p, 5), Err(FreeError::DoubleFree));
        assert_eq!(
            b.alloc_pages_exact(0, GfpFlags::KERNEL, 0),
            Err(AllocError::NoPages)
        );
        b.verify().unwrap();
    }
}
