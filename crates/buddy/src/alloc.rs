//! The allocation path (Linux `__alloc_pages`, `get_page_from_freelist`, `rmqueue`).
//!
//! 1. Derive the request from the GFP flags: highest zone, migrate type (Unmovable for every
//!    request when grouping is off), reserve entitlements.
//! 2. **Fast pass**: walk the zonelist; take from the first zone that stays above its *low*
//!    watermark plus the lowmem reserve for the request's highest zone.
//! 3. If a node the request may use still has deferred memmap in a zone it may use, grow
//!    it ([`DEFERRED_GROW_FRAMES`](crate::DEFERRED_GROW_FRAMES) at a time) and retry the
//!    fast pass, until it succeeds or nothing is left to grow (`deferred.rs`).
//! 4. Call the low-watermark hook for every zone of the zonelist below low (Linux wakes
//!    kswapd here).
//! 5. **Slow pass** at the *min* watermark, with the reserves the flags allow: `HIGH` half of
//!    min, non-blocking a further quarter; non-blocking order > 0 requests use and grow the
//!    high-atomic reserve.
//! 6. If that fails, release one high-atomic pageblock per zone and try once more, then fail
//!    with `OutOfMemory`. The allocator never empties a zone below what the request may use.
//!
//! Orders up to [`PCP_MAX_ORDER`] come from the CPU's list when it can be locked (refilled
//! in a batch under the zone lock); otherwise straight from the zone. Both paths first check
//! the whole watermark rule as Linux does before `rmqueue` (`zone_watermark_fast`, which
//! falls through to `__zone_watermark_ok`): free pages minus the block, minus the high-atomic
//! reserve unless the request may use it, above the mark (lowered by the request's reserve
//! entitlements) plus the lowmem reserve, and for order > 0 a free block of at least that
//! order on a list the request may take from. The check reads only atomics (see
//! `Zone::watermark_ok`), so the per-CPU fast path stays free of the zone lock; the zone path
//! repeats it under the lock, where it is exact.

use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Order, Pfn, PhysRange};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::AllocError;
use crate::fallback::AllocFlags;
use crate::gfp::GfpFlags;
use crate::migrate::MigrateType;
use crate::pcp::PCP_MAX_ORDER;
use crate::zone::{Watermark, Zone};

/// A decoded request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub order: u32,
    /// The free lists to use (Unmovable for all when grouping is off).
    pub mt: MigrateType,
    /// The mobility the caller declared (recorded on the allocated block).
    pub declared: MigrateType,
    pub highest: usize,
    pub node: usize,
    pub this_node: bool,
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Allocate a block of `2^order` frames, preferring the calling CPU's node (see
    /// [`set_cpu_nodes`](Self::set_cpu_nodes)).
    #[inline]
    pub fn alloc_pages(&self, gfp: GfpFlags, order: Order) -> Result<Pfn, AllocError> {
        self.alloc_pages_node(self.local_node(), gfp, order)
    }

    /// Allocate a block of `2^order` frames preferring node `node`.
    #[inline]
    pub fn alloc_pages_node(
        &self,
        node: usize,
        gfp: GfpFlags,
        order: Order,
    ) -> Result<Pfn, AllocError> {
        if order.get() <= PCP_MAX_ORDER && !gfp.contains(GfpFlags::ZERO) {
            if let Some(pfn) = self.alloc_pcp_hit(node, gfp, order.get()) {
                return Ok(Pfn::new(pfn));
            }
        }
        self.alloc_pages_full(node, gfp, order)
    }

    /// Everything but a per-CPU hit: decode and check the request, then the whole path of
    /// the module docs.
    #[inline(never)]
    fn alloc_pages_full(
        &self,
        node: usize,
        gfp: GfpFlags,
        order: Order,
    ) -> Result<Pfn, AllocError> {
        let req = self.request(node, gfp, order.get())?;
        if gfp.contains(GfpFlags::ZERO) && self.mapper.is_none() {
            return Err(AllocError::NoMapper);
        }
        let pfn = self.alloc_request(&req, gfp)?;
        if gfp.contains(GfpFlags::ZERO) {
            self.zero_block(pfn, req.order)?;
        }
        Ok(Pfn::new(pfn))
    }

    pub(crate) fn request(
        &self,
        node: usize,
        gfp: GfpFlags,
        order: u32,
    ) -> Result<Request, AllocError> {
        if order > self.cfg.max_order {
            return Err(AllocError::OrderTooLarge {
                order,
                max: self.cfg.max_order,
            });
        }
        if self.node(node).is_none() {
            return Err(AllocError::NoSuchNode(node));
        }
        let zone = gfp.zone().map_err(AllocError::InvalidFlags)?;
        let declared = gfp.migrate_type().map_err(AllocError::InvalidFlags)?;
        let mt = if self.grouping.load(Relaxed) {
            declared
        } else {
            MigrateType::Unmovable
        };
        Ok(Request {
            order,
            mt,
            declared,
            highest: zone.index(),
            node,
            this_node: gfp.contains(GfpFlags::THISNODE),
        })
    }

    /// The zones a request may use, in fallback order.
    pub(crate) fn zonelist<'a>(
        &'a self,
        req: &Request,
    ) -> impl Iterator<Item = (&'a Node<'m>, &'a Zone<'m>)> + 'a {
        let pref = self.node(req.node);
        let order = pref.map(|n| n.fallback).unwrap_or([0; crate::MAX_NUMNODES]);
        let nr = if req.this_node { 1 } else { self.nr_nodes };
        let highest = req.highest;
        order
            .into_iter()
            .take(nr)
            .filter_map(move |nid| self.node(nid as usize))
            .flat_map(move |n| n.zones[..=highest].iter().rev().map(move |z| (n, z)))
    }

    fn alloc_request(&self, req: &Request, gfp: GfpFlags) -> Result<u64, AllocError> {
        // An unmovable or reclaimable request that may block first tries not to mix
        // pageblocks: its own lists and whole claimed pageblocks only, then a movable
        // pageblock emptied for it by migration, or else the movable pageblock with the most
        // free pages claimed whole, and only then single stolen blocks.
        let nofragment = self.cfg.compaction
            && req.mt != MigrateType::Movable
            && req.mt.index() < crate::migrate::NR_PCP_TYPES
            && self.grouping.load(Relaxed)
            && !gfp.is_non_blocking();
        if nofragment {
            let flags = AllocFlags {
                nofragment: true,
                ..AllocFlags::default()
            };
            if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Low, flags) {
                return Ok(pfn);
            }
            if self.evacuate_for(req) || self.tidy_for(req) || self.claim_partial_for(req) {
                if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Low, flags) {
                    return Ok(pfn);
                }
            }
        }
        if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Low, AllocFlags::default()) {
            return Ok(pfn);
        }
        // Deferred memmap initialisation: grow a node the request may use and try again,
        // before anything slower (Linux `deferred_grow_zone`).
        while self.grow_for(req.node, req.this_node, req.highest) {
            let flags = AllocFlags::default();
            if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Low, flags) {
                return Ok(pfn);
            }
        }
        // Slow path from here on; a request no zone can serve is a different failure.
        if !self.zonelist(req).any(|(_, z)| z.is_populated()) {
            return Err(AllocError::ZoneNotPresent);
        }
        self.wake_low_watermark_hook(req);
        let non_block = gfp.is_non_blocking();
        let flags = AllocFlags {
            min_reserve: gfp.contains(GfpFlags::HIGH),
            non_block,
            highatomic: non_block && req.order > 0,
            nofragment: false,
        };
        if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Min, flags) {
            return Ok(pfn);
        }
        // Direct compaction (Linux `__alloc_pages_direct_compact`) for a higher-order
        // request that may block, then one more try.
        if self.cfg.compaction && req.order > 0 && !non_block && self.direct_compact(req) {
            if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Min, flags) {
                return Ok(pfn);
            }
        }
        let mut released = false;
        for (n, z) in self.zonelist(req) {
            if z.is_populated() {
                released |= self.lock(n, z).unreserve_highatomic_pageblock(req.mt);
            }
        }
        if released {
            if let Some(pfn) = self.get_page_from_freelist(req, Watermark::Min, flags) {
                return Ok(pfn);
            }
        }
        Err(AllocError::OutOfMemory)
    }

    fn wake_low_watermark_hook(&self, req: &Request) {
        let Some(hook) = *self.low_hook.read() else {
            return;
        };
        for (n, z) in self.zonelist(req) {
            if z.is_populated() && z.free_pages.load(Relaxed) < z.wmark(Watermark::Low) {
                hook(z.node, z.ty);
                let _ = n;
            }
        }
    }

    fn get_page_from_freelist(
        &self,
        req: &Request,
        w: Watermark,
        flags: AllocFlags,
    ) -> Option<u64> {
        // Plain loops over the zonelist (not the `zonelist` iterator chain, whose nested
        // `flat_map` showed up in profiles of the order-0 paths).
        let node = self.node(req.node)?;
        let nr = if req.this_node { 1 } else { self.nr_nodes };
        for &nid in &node.fallback[..nr] {
            let Some(node) = self.node(usize::from(nid)) else {
                continue;
            };
            for zone in node.zones[..=req.highest].iter().rev() {
                if let Some(pfn) = self.try_zone(node, zone, req, w, flags) {
                    return Some(pfn);
                }
            }
        }
        None
    }

    /// One zone of [`get_page_from_freelist`](Self::get_page_from_freelist).
    #[inline]
    fn try_zone(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        req: &Request,
        w: Watermark,
        flags: AllocFlags,
    ) -> Option<u64> {
        if !zone.is_populated() {
            return None;
        }
        let mark = zone.wmark(w);
        // The whole rule, lock-free, before either path (Linux `zone_watermark_fast`
        // falling through to `__zone_watermark_ok`): a per-CPU hit must not take a zone
        // below what the request may use any more than a zone allocation may.
        if !zone.watermark_ok(req.order, mark, req.highest, flags) {
            return None;
        }
        if self.pcp_enabled && req.order <= PCP_MAX_ORDER && !flags.highatomic {
            return self.rmqueue_pcplist(node, zone, req, flags);
        }
        let mut z = self.lock(node, zone);
        if !z.watermark_ok(req.order, mark, req.highest, flags) {
            return None;
        }
        let pfn = z.rmqueue(req.order, req.mt, flags)?;
        self.mark_allocated(&node.mm, pfn, req);
        if flags.highatomic {
            z.reserve_highatomic_pageblock(pfn, req.order);
        }
        Some(pfn)
    }

    /// The fast path (Linux's first `get_page_from_freelist` pass when it finds the page on
    /// the per-CPU list): the first populated zone of the preferred node that the request
    /// may use, above its low watermark, and a block on this CPU's list for the order and
    /// type. `None` sends the request down the full path, which starts with the same step
    /// (and refills the list, falls back to other zones and nodes, reclaims reserves).
    ///
    /// The flags are decoded by one table lookup ([`GfpFlags::placement`]); flags it refuses
    /// take the full path, which reports why.
    #[inline(always)]
    fn alloc_pcp_hit(&self, node: usize, gfp: GfpFlags, order: u32) -> Option<u64> {
        if !self.pcp_enabled {
            return None;
        }
        let (highest, declared) = gfp.placement()?;
        let n = self.node(node)?;
        let mut i = highest;
        let zone = loop {
            let z = &n.zones[i];
            if z.is_populated() {
                break z;
            }
            i = i.checked_sub(1)?;
        };
        let mark = zone.wmark(Watermark::Low);
        if !zone.watermark_ok(order, mark, highest, AllocFlags::default()) {
            return None;
        }
        let mt = if self.grouping.load(Relaxed) {
            declared
        } else {
            MigrateType::Unmovable
        };
        let mut lists = zone
            .pcp
            .get(self.platform.current_cpu())?
            .inner
            .try_lock()?;
        let idx = lists.pop_idx(&n.mm, order, mt)?;
        // Allocated before the list lock goes, as on every path: `verify` holds the lists
        // and counts every per-CPU descriptor on them.
        n.mm.at(idx).set_allocated(order, declared);
        let pfn = n.mm.pfn(idx);
        n.mm.tally_movable(pfn, order, declared, self.cfg.pageblock_order, true);
        drop(lists);
        Some(pfn)
    }

    /// Take a block from this CPU's list, refilling it from the zone when empty. `None` when
    /// the zone has nothing; falls back to the zone itself when the list is busy.
    fn rmqueue_pcplist(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        req: &Request,
        flags: AllocFlags,
    ) -> Option<u64> {
        let lists = zone.pcp.get(self.platform.current_cpu());
        let Some(mut lists) = lists.and_then(|l| l.inner.try_lock()) else {
            return self.rmqueue_buddy(node, zone, req, flags);
        };
        let mm = &node.mm;
        if let Some(pfn) = lists.pop(mm, req.order, req.mt) {
            self.mark_allocated(mm, pfn, req);
            return Some(pfn);
        }
        let batch = zone.pcp_batch.load(Relaxed).max(1);
        let count = if req.order > 0 {
            (batch >> req.order).max(2)
        } else {
            batch
        };
        let mut z = self.lock(node, zone);
        let mut got = None;
        for i in 0..count {
            let Some(pfn) = z.rmqueue(req.order, req.mt, flags) else {
                break;
            };
            if i == 0 {
                // Allocated before the zone lock goes: off the lists with a free head, the
                // block would look free to a merge or a pageblock walk on another CPU.
                self.mark_allocated(mm, pfn, req);
                got = Some(pfn);
            } else {
                lists.push(mm, pfn, req.order, req.mt);
            }
        }
        drop(z);
        got
    }

    fn rmqueue_buddy(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        req: &Request,
        flags: AllocFlags,
    ) -> Option<u64> {
        let mut z = self.lock(node, zone);
        let pfn = z.rmqueue(req.order, req.mt, flags)?;
        self.mark_allocated(&node.mm, pfn, req);
        Some(pfn)
    }

    /// Make `pfn` the head of the block `req` asked for, under the lock that handed it out
    /// (zone or per-CPU), and count it in its pageblock's movable tally.
    #[inline]
    fn mark_allocated(&self, mm: &crate::page::Memmap<'m>, pfn: u64, req: &Request) {
        mm.desc(pfn).set_allocated(req.order, req.declared);
        mm.tally_movable(pfn, req.order, req.declared, self.cfg.pageblock_order, true);
    }

    fn zero_block(&self, pfn: u64, order: u32) -> Result<(), AllocError> {
        let ok = match (
            self.mapper,
            PhysRange::from_pfns(Pfn::new(pfn), 1u64 << order),
        ) {
            (Some(m), Ok(r)) => crate::raw::zero_range(m, r),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        // Could not reach the memory: give the block back so state is unchanged.
        let _ = self.free_pages(Pfn::new(pfn), Order::new(order));
        Err(AllocError::NoMapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{build, mib, no_pcp};
    use crate::{BuddyConfig, CoreSize, ZoneType};
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::Vec;

    fn o(n: u32) -> Order {
        Order::new(n)
    }

    #[test]
    fn zone_modifiers_pick_zones_and_fall_back_downward() {
        let b = build(&[&[mib(0, 32)]], no_pcp(), 1);
        let dma = b.alloc_pages(GfpFlags::GFP_DMA, o(0)).unwrap();
        assert!(dma.as_u64() < 16 * 256);
        // Normal requests prefer the highest zone present (DMA32 here).
        let k = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        assert!(k.as_u64() >= 16 * 256);
        assert_eq!(
            b.alloc_pages(GfpFlags::DMA | GfpFlags::DMA32, o(0)),
            Err(AllocError::InvalidFlags(
                crate::GfpError::ConflictingZoneModifiers
            ))
        );
        b.verify().unwrap();
    }

    #[test]
    fn missing_zone_is_a_specific_error() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        assert_eq!(
            b.alloc_pages(GfpFlags::GFP_DMA, o(0)),
            Err(AllocError::ZoneNotPresent)
        );
        assert_eq!(
            b.alloc_pages_node(3, GfpFlags::KERNEL, o(0)),
            Err(AllocError::NoSuchNode(3))
        );
        assert_eq!(
            b.alloc_pages(GfpFlags::KERNEL, o(11)),
            Err(AllocError::OrderTooLarge { order: 11, max: 10 })
        );
        assert_eq!(
            b.alloc_pages(GfpFlags::KERNEL | GfpFlags::ZERO, o(0)),
            Err(AllocError::NoMapper)
        );
    }

    #[test]
    fn allocation_stops_at_the_watermark_not_at_empty() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert!(st.min > 0);
        let mut got = Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, o(0)) {
            got.push(p);
        }
        let free = b.total_free();
        assert!(free > 0, "the zone was not emptied");
        assert!(free <= st.min + 1, "stopped at min: {free} vs {}", st.min);
        // Atomic requests may dig into the reserve below min.
        assert!(b.alloc_pages(GfpFlags::ATOMIC, o(0)).is_ok());
        assert!(b.total_free() < free);
        b.verify().unwrap();
    }

    static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);
    fn hook(node: usize, zone: ZoneType) {
        assert_eq!((node, zone), (0, ZoneType::Dma32));
        HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn low_watermark_hook_hears_a_zone_below_low() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        b.set_low_watermark_hook(Some(hook));
        let low = b.zone_stats(0, ZoneType::Dma32).unwrap().low;
        while b.total_free() > low + 8 {
            b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        }
        assert_eq!(HOOK_CALLS.load(Ordering::Relaxed), 0, "not yet below low");
        for _ in 0..16 {
            let _ = b.alloc_pages(GfpFlags::KERNEL, o(0));
        }
        assert!(HOOK_CALLS.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn high_order_atomic_requests_reserve_a_pageblock() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let low = b.zone_stats(0, ZoneType::Dma32).unwrap().low;
        // Push the zone below low so the slow path (where Linux reserves) runs.
        let mut keep = Vec::new();
        while b.total_free() > low {
            keep.push(b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, o(0)).unwrap());
        }
        let p = b.alloc_pages(GfpFlags::ATOMIC, o(1)).unwrap();
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(st.reserved_highatomic, 512);
        b.verify().unwrap();
        // Ordinary requests cannot take the reserved pages; once they fail, the reserve is
        // given back.
        b.free_pages(p, o(1)).unwrap();
        while b.alloc_pages(GfpFlags::KERNEL, o(0)).is_ok() {}
        b.verify().unwrap();
        assert_eq!(
            b.zone_stats(0, ZoneType::Dma32)
                .unwrap()
                .reserved_highatomic,
            0
        );
    }

    #[test]
    fn per_cpu_path_keeps_the_whole_watermark_including_the_highatomic_reserve() {
        // 64 MiB with per-CPU lists: min is 256 pages, batch 3.
        let b = build(&[&[mib(16, 64)]], BuddyConfig::default(), 1);
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        let pb = 20 * 256;
        let mut zl = b.lock(n, z);
        zl.split_free_block_covering(pb);
        zl.reserve_highatomic_pageblock(pb, 0);
        drop(zl);
        b.verify().unwrap();
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(st.reserved_highatomic, 512);
        assert!(
            st.min < 512,
            "the reserve alone would pass a free-pages-only check"
        );
        // Allocate until the reserve is given back (what a failing request does): that must
        // happen when the pages outside the reserve reach min, not when they run out.
        let mut last_usable = None;
        loop {
            let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
            if st.reserved_highatomic == 0 {
                break;
            }
            last_usable = Some(st.free - st.reserved_highatomic);
            if b.alloc_pages(GfpFlags::KERNEL, o(0)).is_err() {
                break;
            }
        }
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert_eq!(st.reserved_highatomic, 0, "the reserve was released");
        let usable = last_usable.unwrap();
        assert!(
            usable + u64::from(st.pcp_batch) > st.min,
            "per-CPU allocations went on to {usable} pages outside the reserve, min {}",
            st.min
        );
        b.verify().unwrap();
    }

    #[test]
    fn per_cpu_path_needs_a_free_block_of_the_order_in_the_zone() {
        // Without compaction: direct compaction drains the per-CPU lists into the zone,
        // which would hand the cached block out.
        let cfg = BuddyConfig {
            compaction: false,
            ..BuddyConfig::default()
        };
        let b = build(&[&[mib(16, 64)]], cfg, 1);
        let p = b.alloc_pages(GfpFlags::KERNEL, o(1)).unwrap();
        let mut held = Vec::new();
        while let Ok(q) = b.alloc_pages(GfpFlags::KERNEL, o(0)) {
            held.push(q);
        }
        b.drain_all_pages();
        // Take every block the watermark left free (as if allocated).
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        let mut zl = b.lock(n, z);
        for order in 0..=10 {
            for mt in MigrateType::ALL {
                while let Some(pfn) = zl.first_free(order, mt) {
                    zl.del_from_free_list(pfn, order, mt);
                    n.mm.desc(pfn).set_allocated(order, mt);
                    n.mm.tally_movable(pfn, order, mt, b.cfg.pageblock_order, true);
                }
            }
        }
        drop(zl);
        // Free every other frame (plenty of free pages, no free pair), then cache the
        // order-1 block on the per-CPU list.
        for q in held.iter().filter(|q| q.as_u64() % 2 == 0) {
            b.free_pages(*q, o(0)).unwrap();
        }
        b.drain_all_pages();
        b.free_pages(p, o(1)).unwrap();
        let st = b.zone_stats(0, ZoneType::Dma32).unwrap();
        assert!(st.free > st.low, "enough free pages");
        assert!(st.free_blocks[1..].iter().flatten().all(|&c| c == 0));
        b.verify().unwrap();
        // Linux's rule: an order > 0 request needs such a block in the zone, even when the
        // per-CPU list holds one.
        assert_eq!(
            b.alloc_pages(GfpFlags::KERNEL, o(1)),
            Err(AllocError::OutOfMemory)
        );
        // A per-CPU order-0 hit still works.
        assert!(b.alloc_pages(GfpFlags::KERNEL, o(0)).is_ok());
        b.verify().unwrap();
    }

    #[test]
    fn unmovable_request_claims_a_whole_pageblock_movable_only_steals() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        // All pageblocks start Movable: an unmovable page claims a whole (max-order) block.
        b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        let c = b.pageblock_census();
        assert_eq!(c.by_type[MigrateType::Unmovable.index()], 2);
        // A reclaimable request falls back to Unmovable lists first and claims from them.
        b.alloc_pages(GfpFlags::KERNEL_RECLAIMABLE, o(0)).unwrap();
        let c = b.pageblock_census();
        assert!(c.by_type[MigrateType::Reclaimable.index()] >= 1);
        b.verify().unwrap();
    }

    #[test]
    fn grouping_off_puts_everything_on_one_type() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        b.set_mobility_grouping(false);
        for f in [
            GfpFlags::KERNEL,
            GfpFlags::HIGHUSER_MOVABLE,
            GfpFlags::KERNEL_RECLAIMABLE,
        ] {
            b.alloc_pages(f, o(0)).unwrap();
        }
        let c = b.pageblock_census();
        assert_eq!(c.by_type[MigrateType::Reclaimable.index()], 0);
        b.verify().unwrap();
    }

    #[test]
    fn grouping_switches_itself_off_on_tiny_memory() {
        // 8 MiB = 2048 frames < 5 pageblocks of 512.
        let b = build(&[&[mib(16, 8)]], no_pcp(), 1);
        assert!(!b.mobility_grouping());
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        assert!(b.mobility_grouping());
    }

    #[test]
    fn zone_movable_holds_only_movable_allocations() {
        let cfg = BuddyConfig {
            movablecore: Some(CoreSize::Bytes(16 << 20)),
            ..no_pcp()
        };
        let b = build(&[&[mib(16, 32)]], cfg, 1);
        let mv = b.zone_stats(0, ZoneType::Movable).unwrap();
        assert_eq!(mv.start_pfn.as_u64(), 32 * 256);
        assert_eq!(mv.managed, 16 * 256);
        let mut kernel = Vec::new();
        while let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, o(0)) {
            assert!(p.as_u64() < 32 * 256, "kernel page in ZONE_MOVABLE");
            kernel.push(p);
        }
        let user = b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, o(0)).unwrap();
        assert!(user.as_u64() >= 32 * 256);
        b.verify().unwrap();
    }

    #[test]
    fn other_nodes_are_used_when_the_preferred_is_full() {
        let b = build(&[&[mib(16, 16)], &[mib(32, 16)]], no_pcp(), 1);
        let mut n0 = 0;
        loop {
            let p = b.alloc_pages_node(0, GfpFlags::KERNEL, o(0)).unwrap();
            if p.as_u64() >= 32 * 256 {
                break;
            }
            n0 += 1;
        }
        assert!(n0 > 3000);
        // THISNODE keeps to node 0, down to its min watermark.
        loop {
            match b.alloc_pages_node(0, GfpFlags::KERNEL | GfpFlags::THISNODE, o(0)) {
                Ok(p) => assert!(p.as_u64() < 32 * 256),
                Err(e) => break assert_eq!(e, AllocError::OutOfMemory),
            }
        }
        b.verify().unwrap();
    }

    #[test]
    fn alloc_pages_prefers_the_calling_cpus_node() {
        let mut b = build(&[&[mib(16, 16)], &[mib(32, 16)]], no_pcp(), 2);
        b.set_cpu_nodes(&[1, 0]);
        b.platform().bind_current_thread(0);
        let p = b.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap();
        assert!(p.as_u64() >= 32 * 256, "CPU 0 is on node 1");
        let b = std::sync::Arc::new(b);
        let b2 = b.clone();
        let q = std::thread::spawn(move || {
            b2.platform().bind_current_thread(1);
            b2.alloc_pages(GfpFlags::KERNEL, o(0)).unwrap()
        })
        .join()
        .unwrap();
        assert!(q.as_u64() < 32 * 256, "CPU 1 is on node 0");
        assert_eq!((b.cpu_node(0), b.cpu_node(1), b.cpu_node(7)), (1, 0, 0));
        assert_eq!(b.pfn_node(p), Some(1));
        assert_eq!(b.pfn_node(q), Some(0));
        assert_eq!(b.pfn_node(Pfn::new(1 << 30)), None);
    }

    #[test]
    #[allow(unsafe_code)] // reads and writes the test's own host memory
    fn zero_flag_zeroes_through_the_mapper() {
        use mmkit_addr::host::HostMemory;
        use mmkit_addr::PhysAddr;
        let mem: &'static HostMemory = std::boxed::Box::leak(std::boxed::Box::new(
            HostMemory::new(PhysAddr::new(16 << 20), 16 << 20),
        ));
        let mut b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        b.set_mapper(mem);
        let p = b.alloc_pages(GfpFlags::KERNEL, o(1)).unwrap();
        let ptr = mem.ptr_of(p.addr()).unwrap().as_ptr();
        // SAFETY: the two frames were just allocated to this test and lie in `mem`.
        unsafe { core::ptr::write_bytes(ptr, 0xaa, 8192) };
        b.free_pages(p, o(1)).unwrap();
        let q = b
            .alloc_pages(GfpFlags::KERNEL | GfpFlags::ZERO, o(1))
            .unwrap();
        assert_eq!(p, q, "same block comes back (LIFO)");
        // SAFETY: as above.
        let bytes = unsafe { core::slice::from_raw_parts(ptr, 8192) };
        assert!(bytes.iter().all(|&x| x == 0));
    }

    #[test]
    fn alloc_refuses_extreme_orders_and_nodes_unchanged() {
        use crate::testutil::snapshot;
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 2);
        let before = snapshot(&b);
        for order in [11, 15, Order::LIMIT] {
            for node in [0, 1, usize::MAX - 1, usize::MAX] {
                assert_eq!(
                    b.alloc_pages_node(node, GfpFlags::KERNEL, o(order)),
                    Err(AllocError::OrderTooLarge { order, max: 10 })
                );
            }
            assert_eq!(
                b.alloc_pages(GfpFlags::KERNEL, o(order)),
                Err(AllocError::OrderTooLarge { order, max: 10 })
            );
            assert_eq!(snapshot(&b), before, "order {order}");
        }
        for node in [1, usize::MAX - 1, usize::MAX] {
            for order in [0, 1, 10] {
                assert_eq!(
                    b.alloc_pages_node(node, GfpFlags::KERNEL, o(order)),
                    Err(AllocError::NoSuchNode(node))
                );
            }
            assert_eq!(snapshot(&b), before, "node {node}");
        }
        // Every flag bit at once is refused as contradictory, not misread.
        assert!(matches!(
            b.alloc_pages(GfpFlags::all(), o(0)),
            Err(AllocError::InvalidFlags(_))
        ));
        assert_eq!(snapshot(&b), before);
    }
}
