//! The free path (Linux `free_pages`, `free_unref_page`, `free_one_page`), per-CPU drains,
//! and the per-frame private word of allocated blocks.
//!
//! A free is validated in O(1) from the block head's descriptor: its state must be
//! "allocated with this order". The transition is a compare-exchange, so two CPUs freeing
//! the same block cannot both succeed. Errors are classified (double free, wrong order,
//! inside another block, reserved, hole) without changing anything.
//!
//! Orders up to [`PCP_MAX_ORDER`] go to this CPU's list (typed by the pageblock) unless the
//! list is busy or the pageblock is high-atomic or isolated; those, and larger orders, go to
//! the zone under its lock and merge at once. A list above its high mark gives a batch of its
//! coldest blocks back to the zone.

use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Order, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::{FreeError, PrivateError};
use crate::freearea::{block_head_state, find_block_head};
use crate::migrate::MigrateType;
use crate::page::{Flags, PageState};
use crate::pcp::PCP_MAX_ORDER;
use crate::zone::Zone;

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Free the block `[pfn, pfn + 2^order)` that an allocation returned.
    pub fn free_pages(&self, pfn: Pfn, order: Order) -> Result<(), FreeError> {
        let (pfn, order) = (pfn.as_u64(), order.get());
        if order > self.cfg.max_order {
            return Err(FreeError::OrderTooLarge {
                order,
                max: self.cfg.max_order,
            });
        }
        let (node, zone) = self.locate(pfn).ok_or(FreeError::OutsideZones)?;
        if pfn & ((1u64 << order) - 1) != 0 {
            return Err(FreeError::Misaligned);
        }
        if self.pcp_enabled && order <= PCP_MAX_ORDER {
            let mt = node
                .mm
                .desc(pfn & !((1u64 << self.cfg.pageblock_order) - 1))
                .block_type();
            if mt.index() < crate::migrate::NR_PCP_TYPES {
                match self.free_to_pcp(node, zone, pfn, order, mt) {
                    PcpFree::Done => return Ok(()),
                    PcpFree::Refused(f) => {
                        return Err(self.classify_free_error(node, pfn, order, f))
                    }
                    PcpFree::Busy => {}
                }
            }
        }
        self.free_to_zone(node, zone, pfn, order)
    }

    fn free_to_zone(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        pfn: u64,
        order: u32,
    ) -> Result<(), FreeError> {
        let mut z = self.lock(node, zone);
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        match node.mm.desc(pfn).begin_free(order, tail) {
            Ok(old) => {
                let pb_order = self.cfg.pageblock_order;
                node.mm.tally_movable(pfn, order, old.mt, pb_order, false);
                if order <= pb_order {
                    let mt = z.pageblock_type(pfn);
                    z.free_one_page(pfn, order, mt, false);
                } else {
                    // A block larger than a pageblock may span pageblocks of different types
                    // (one isolated, or retyped, while the block was allocated): free it
                    // pageblock by pageblock, each onto its own type's list, and let merging
                    // rebuild the large block where the types allow (Linux
                    // `split_large_buddy`).
                    let end = pfn + (1u64 << order);
                    let mut p = pfn;
                    while p < end {
                        let mt = z.pageblock_type(p);
                        z.free_one_page(p, pb_order, mt, false);
                        p += 1u64 << pb_order;
                    }
                }
                Ok(())
            }
            Err(f) => {
                drop(z);
                Err(self.classify_free_error(node, pfn, order, f))
            }
        }
    }

    fn free_to_pcp(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        pfn: u64,
        order: u32,
        mt: MigrateType,
    ) -> PcpFree {
        let lists = zone.pcp.get(self.platform.current_cpu());
        let Some(mut lists) = lists.and_then(|l| l.inner.try_lock()) else {
            return PcpFree::Busy;
        };
        let mm = &node.mm;
        let to = Flags::new(PageState::PerCpu, order, mt);
        match mm.desc(pfn).begin_free(order, to) {
            Ok(old) => mm.tally_movable(pfn, order, old.mt, self.cfg.pageblock_order, false),
            Err(f) => return PcpFree::Refused(f),
        }
        // `begin_free` wrote the per-CPU flags; link the block.
        lists.link(mm, pfn, order, mt);
        if lists.count >= u64::from(zone.pcp_high.load(Relaxed)) {
            self.trim_pcp(node, zone, &mut lists);
        }
        PcpFree::Done
    }

    /// Give a list set above its high mark a batch of its coldest blocks back to the zone.
    #[cold]
    #[inline(never)]
    pub(crate) fn trim_pcp(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        lists: &mut crate::pcp::PcpLists,
    ) {
        let high = u64::from(zone.pcp_high.load(Relaxed));
        let batch = u64::from(zone.pcp_batch.load(Relaxed).max(1));
        let excess = lists.count - high.saturating_sub(batch);
        self.lock(node, zone)
            .free_pcppages_bulk(lists, excess.max(batch));
    }

    /// Say precisely why freeing `(pfn, order)` is wrong, given the head flags seen.
    pub(crate) fn classify_free_error(
        &self,
        node: &Node<'m>,
        pfn: u64,
        order: u32,
        seen: Flags,
    ) -> FreeError {
        match seen.state {
            PageState::Hole => FreeError::Hole,
            PageState::Reserved => FreeError::Reserved,
            PageState::Free | PageState::PerCpu => FreeError::DoubleFree,
            PageState::Allocated => {
                if seen.order != order {
                    FreeError::WrongOrder {
                        allocated: seen.order,
                    }
                } else if seen.migrating {
                    // What the refused compare-exchange saw: the bit may be gone by now.
                    FreeError::Migrating
                } else {
                    // Raced with a concurrent free of the same block that won.
                    FreeError::DoubleFree
                }
            }
            PageState::Tail => match find_block_head(&node.mm, self.cfg.max_order, pfn) {
                Some((head, f)) if f.state == PageState::Allocated => FreeError::InsideBlock {
                    head: Pfn::new(head),
                },
                _ => FreeError::DoubleFree,
            },
        }
    }

    /// Give every per-CPU list of every zone back to the zones (Linux `drain_all_pages`).
    pub fn drain_all_pages(&self) {
        for (_, node) in self.nodes() {
            for zone in node.zones.iter() {
                self.drain_zone_pcp(node, zone);
            }
        }
    }

    pub(crate) fn drain_zone_pcp(&self, node: &Node<'m>, zone: &Zone<'m>) {
        for pcp in zone.pcp {
            // Lock order: the per-CPU lists (interrupts on, as their owner holds them), then
            // interrupts off and the zone (inside `lock`).
            let mut lists = pcp.inner.lock();
            if lists.count > 0 {
                self.lock(node, zone)
                    .free_pcppages_bulk(&mut lists, u64::MAX);
            }
        }
    }

    /// Give this CPU's lists back to the zones (Linux `drain_local_pages`).
    pub fn drain_local_pages(&self) {
        let cpu = self.platform.current_cpu();
        for (_, node) in self.nodes() {
            for zone in node.zones.iter() {
                if let Some(pcp) = zone.pcp.get(cpu) {
                    let mut lists = pcp.inner.lock();
                    if lists.count > 0 {
                        self.lock(node, zone)
                            .free_pcppages_bulk(&mut lists, u64::MAX);
                    }
                }
            }
        }
    }

    /// Frames cached on per-CPU lists, over all zones and CPUs.
    pub fn total_pcp(&self) -> u64 {
        self.nodes()
            .flat_map(|(_, n)| n.zones.iter())
            .flat_map(|z| z.pcp.iter())
            .map(|p| p.inner.lock().count)
            .sum()
    }

    /// The node whose memmap spans `pfn`, found by span alone (no zone search): the private
    /// word is on every slab free's path (`kfree` finds its slab through it).
    /// Node 0 is tried first, without the search loop: on a one-node machine that is the
    /// whole lookup (every allocator has a node 0: `new` refuses zero nodes).
    #[inline]
    fn node_spanning(&self, pfn: u64) -> Option<&Node<'m>> {
        if self.nodes[0].mm.contains(pfn) {
            return Some(&self.nodes[0]);
        }
        self.nodes[1..self.nr_nodes.max(1)]
            .iter()
            .find(|n| n.mm.contains(pfn))
    }

    /// The descriptor of `pfn` if it lies in an allocated block.
    #[inline]
    fn allocated_desc(&self, pfn: u64) -> Result<&'m crate::page::PageDesc, PrivateError> {
        let node = self.node_spanning(pfn).ok_or(PrivateError::OutsideZones)?;
        match block_head_state(&node.mm, self.cfg.max_order, pfn) {
            Some((_, PageState::Allocated)) => Ok(node.mm.desc(pfn)),
            _ => Err(PrivateError::NotAllocated),
        }
    }

    /// Store `value` in the private word of `pfn`, a frame of an allocated block (the slab
    /// allocator keeps its slab pointer there, as Linux keeps `page->slab_cache`).
    #[inline]
    pub fn set_page_private(&self, pfn: Pfn, value: u64) -> Result<(), PrivateError> {
        self.allocated_desc(pfn.as_u64())?.set_private(value);
        Ok(())
    }

    /// Atomically update the low 32 bits of `pfn`'s private word, a frame of an allocated
    /// block (`AtomicU32::fetch_update`: `f` gets the current value and returns the new one,
    /// or `None` to leave it): `Ok(previous)` if it was updated, `Err(current)` if `f`
    /// declined. The high half is untouched. For owners that keep a count there (the facade
    /// keeps page-table share counts, as Linux keeps a table page's `pt_share_count`).
    #[inline]
    pub fn update_page_private_low(
        &self,
        pfn: Pfn,
        f: impl FnMut(u32) -> Option<u32>,
    ) -> Result<Result<u32, u32>, PrivateError> {
        Ok(self.allocated_desc(pfn.as_u64())?.update_private_low(f))
    }

    /// The private word of `pfn`, a frame of an allocated block: what its owner last
    /// stored. A block's first frame reads 0 right after allocation; other frames are
    /// unspecified until set.
    #[inline]
    pub fn page_private(&self, pfn: Pfn) -> Result<u64, PrivateError> {
        Ok(self.allocated_desc(pfn.as_u64())?.private())
    }

    /// The private word of `pfn`, read with its state from the one descriptor, for callers
    /// that clear every word they set before they free the block (the slab does): the word
    /// of an allocated block's first frame, or of any non-first frame (what its last owner
    /// left, 0 once cleared or never set); 0 for the first frame of a free or per-CPU block
    /// (whose word holds list links), for reserved frames and for holes; `None` outside every
    /// node. No walk up to the block head, unlike [`page_private`](Self::page_private).
    #[inline]
    pub fn page_private_fast(&self, pfn: Pfn) -> Option<u64> {
        let p = pfn.as_u64();
        let d = self.node_spanning(p)?.mm.desc(p);
        Some(match d.state() {
            // A frame unlinked from a free list keeps the empty links until someone stores
            // a word: that is "never set".
            PageState::Allocated | PageState::Tail => match d.private() {
                UNLINKED => 0,
                w => w,
            },
            PageState::Free | PageState::PerCpu | PageState::Reserved | PageState::Hole => 0,
        })
    }

    /// The head and order of the allocated block containing `pfn`.
    pub fn allocated_block(&self, pfn: Pfn) -> Option<(Pfn, Order)> {
        let (node, _) = self.locate(pfn.as_u64())?;
        match find_block_head(&node.mm, self.cfg.max_order, pfn.as_u64()) {
            Some((h, f)) if f.state == PageState::Allocated => {
                Some((Pfn::new(h), Order::new(f.order)))
            }
            _ => None,
        }
    }
}

/// The private word of a descriptor whose list links were cleared (`NIL` both ways).
const UNLINKED: u64 = (crate::page::NIL as u64) | ((crate::page::NIL as u64) << 32);

enum PcpFree {
    Done,
    Refused(Flags),
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{build, build_reserved, mib, no_pcp};
    use crate::{BootFreeError, BuddyConfig, GfpFlags};

    fn o(n: u32) -> Order {
        Order::new(n)
    }

    #[test]
    fn free_merges_with_buddy_back_to_max_order() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let before = b.zone_stats(0, crate::ZoneType::Dma32).unwrap();
        let x = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        let y = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        assert_eq!(
            x.as_u64() ^ 1,
            y.as_u64(),
            "order-0 buddies come out of one split"
        );
        b.verify().unwrap();
        b.free_pages(x, o(0)).unwrap();
        b.free_pages(y, o(0)).unwrap();
        b.verify().unwrap();
        let after = b.zone_stats(0, crate::ZoneType::Dma32).unwrap();
        // Everything is back in max-order blocks (the claimed block keeps its new type).
        let max_blocks = |s: &crate::ZoneStats| s.free_blocks[10].iter().sum::<u64>();
        assert_eq!(max_blocks(&after), max_blocks(&before));
        assert_eq!(max_blocks(&after), 4);
        assert_eq!(after.free, before.free);
    }

    #[test]
    fn double_free_is_detected_and_changes_nothing() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let x = b.alloc_pages(GfpFlags::KERNEL, o(3)).unwrap();
        b.free_pages(x, o(3)).unwrap();
        let free = b.total_free();
        assert_eq!(b.free_pages(x, o(3)), Err(FreeError::DoubleFree));
        // A frame inside the now-free (merged) block is a double free too.
        assert_eq!(
            b.free_pages(Pfn::new(x.as_u64() + 1), o(0)),
            Err(FreeError::DoubleFree)
        );
        assert_eq!(b.total_free(), free);
        b.verify().unwrap();
    }

    #[test]
    fn double_free_through_per_cpu_list_is_detected() {
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let x = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        b.free_pages(x, o(0)).unwrap();
        assert_eq!(b.free_pages(x, o(0)), Err(FreeError::DoubleFree));
        b.verify().unwrap();
    }

    #[test]
    fn wrong_order_and_inside_block_are_refused() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let x = b.alloc_pages(GfpFlags::KERNEL, o(2)).unwrap();
        assert_eq!(
            b.free_pages(x, o(1)),
            Err(FreeError::WrongOrder { allocated: 2 })
        );
        assert_eq!(
            b.free_pages(Pfn::new(x.as_u64() + 2), o(1)),
            Err(FreeError::InsideBlock { head: x })
        );
        assert_eq!(
            b.free_pages(Pfn::new(x.as_u64() + 1), o(1)),
            Err(FreeError::Misaligned)
        );
        b.verify().unwrap();
        b.free_pages(x, o(2)).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn reserved_hole_outside_and_too_large_are_refused() {
        // Memory 16..20 MiB and 24..32 MiB; 20..24 MiB is a hole in the node.
        let ram = [mib(16, 4), mib(24, 8)];
        let b = build_reserved(&[&ram], no_pcp(), 1);
        b.free_boot_range(mib(24, 8)).unwrap();
        b.finish_boot();
        let reserved = Pfn::new(16 * 256);
        assert_eq!(b.free_pages(reserved, o(0)), Err(FreeError::Reserved));
        assert_eq!(b.free_pages(Pfn::new(20 * 256), o(0)), Err(FreeError::Hole));
        assert_eq!(
            b.free_pages(Pfn::new(1 << 30), o(0)),
            Err(FreeError::OutsideZones)
        );
        assert_eq!(
            b.free_pages(reserved, o(11)),
            Err(FreeError::OrderTooLarge { order: 11, max: 10 })
        );
        b.verify().unwrap();
    }

    #[test]
    fn boot_free_refuses_already_freed_frames() {
        let b = build_reserved(&[&[mib(16, 16)]], no_pcp(), 1);
        let pfn = Pfn::new(16 * 256);
        b.free_boot_block(pfn, o(4)).unwrap();
        assert_eq!(
            b.free_boot_block(pfn, o(4)),
            Err(BootFreeError::NotReserved { pfn })
        );
        assert_eq!(
            b.free_boot_block(Pfn::new(pfn.as_u64() + 1), o(4)),
            Err(BootFreeError::Misaligned)
        );
        assert_eq!(
            b.free_boot_block(pfn, o(11)),
            Err(BootFreeError::OrderTooLarge)
        );
        // A range overlapping freed frames frees nothing.
        let free = b.total_free();
        assert_eq!(
            b.free_boot_range(mib(16, 1)),
            Err(BootFreeError::NotReserved { pfn })
        );
        assert_eq!(b.total_free(), free);
        assert_eq!(b.free_boot_range(mib(17, 1)), Ok(256));
        b.verify().unwrap();
    }

    #[test]
    fn private_word_is_only_for_allocated_frames() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let x = b.alloc_pages(GfpFlags::KERNEL, o(1)).unwrap();
        assert_eq!(b.page_private(x), Ok(0));
        b.set_page_private(x, 0xfeed).unwrap();
        let tail = Pfn::new(x.as_u64() + 1);
        b.set_page_private(tail, 7).unwrap();
        assert_eq!(b.page_private(x), Ok(0xfeed));
        assert_eq!(b.page_private(tail), Ok(7));
        assert_eq!(b.page_private_fast(tail), Some(7));
        assert_eq!(b.page_private_fast(x), Some(0xfeed));
        assert_eq!(b.page_private_fast(Pfn::new(1 << 30)), None);
        assert_eq!(b.allocated_block(tail), Some((x, o(1))));
        b.free_pages(x, o(1)).unwrap();
        assert_eq!(b.page_private(x), Err(PrivateError::NotAllocated));
        // A free head's word holds list links: never handed out as a private word.
        assert_eq!(b.page_private_fast(x), Some(0));
        assert_eq!(
            b.set_page_private(Pfn::new(1 << 30), 1),
            Err(PrivateError::OutsideZones)
        );
        b.verify().unwrap();
    }

    #[test]
    fn per_cpu_lists_drain_back_and_merge() {
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let managed = b.total_managed();
        let pages: std::vec::Vec<_> = (0..40)
            .map(|_| b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap())
            .collect();
        for p in &pages {
            b.free_pages(*p, o(0)).unwrap();
        }
        b.verify().unwrap();
        b.drain_all_pages();
        assert_eq!(b.total_pcp(), 0);
        assert_eq!(b.total_free(), managed);
        b.verify().unwrap();
    }

    /// Orders at and past the configured max, up to the largest `Order` can hold.
    const EXTREME_ORDERS: [u32; 6] = [0, 1, 10, 11, 15, Order::LIMIT];

    #[test]
    fn frees_and_private_words_refuse_extreme_frames_unchanged() {
        use crate::testutil::{snapshot, EXTREME_PFNS};
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let kept = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        let before = snapshot(&b);
        let mut pfns = EXTREME_PFNS.to_vec();
        // Just before and at the end of memory, and the zone's last frame (free).
        pfns.extend([16 * 256 - 1, 32 * 256 - 1, 32 * 256]);
        for &p in &pfns {
            let pfn = Pfn::new(p);
            for order in EXTREME_ORDERS {
                let got = b.free_pages(pfn, Order::checked(order).unwrap());
                let want_order_err = order > 10;
                assert!(got.is_err(), "free {p:#x} order {order}");
                assert_eq!(
                    matches!(got, Err(FreeError::OrderTooLarge { .. })),
                    want_order_err,
                    "free {p:#x} order {order}: {got:?}"
                );
                assert_eq!(snapshot(&b), before, "free {p:#x} order {order}");
            }
            if pfn != kept {
                assert!(b.set_page_private(pfn, u64::MAX).is_err(), "{p:#x}");
                assert!(b.page_private(pfn).is_err(), "{p:#x}");
                assert_eq!(b.allocated_block(pfn), None, "{p:#x}");
            }
            let spanned = (16 * 256..32 * 256).contains(&p);
            assert_eq!(b.page_private_fast(pfn).is_some(), spanned, "{p:#x}");
            assert_eq!(snapshot(&b), before, "private word of {p:#x}");
        }
        b.free_pages(kept, o(0)).unwrap();
        b.verify().unwrap();
    }
}
