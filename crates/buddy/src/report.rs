//! Reports in Linux's `/proc` layouts, via `Display`, and a pageblock census for
//! fragmentation studies.
//!
//! * [`BuddyInfo`]: `/proc/buddyinfo` (`mm/vmstat.c: frag_show_print`).
//! * [`PageTypeInfo`]: `/proc/pagetypeinfo`, free blocks per order and type, and the
//!   "Number of blocks type" table (`pagetypeinfo_showfree_print`,
//!   `pagetypeinfo_showblockcount_print`).
//! * [`ZoneInfo`]: the watermark and protection lines of `/proc/zoneinfo`
//!   (`zoneinfo_show_print`).
//!
//! Each report takes the zone locks one at a time while it formats that zone, so it is a
//! per-zone snapshot.

use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::BuddyAllocator;
use crate::migrate::{MigrateType, NR_MIGRATE_TYPES};
use crate::zone::Zone;

/// `/proc/buddyinfo`.
pub struct BuddyInfo<'a, 'm, P: IrqControl>(pub &'a BuddyAllocator<'m, P>);
/// `/proc/pagetypeinfo`.
pub struct PageTypeInfo<'a, 'm, P: IrqControl>(pub &'a BuddyAllocator<'m, P>);
/// The watermark part of `/proc/zoneinfo`.
pub struct ZoneInfo<'a, 'm, P: IrqControl>(pub &'a BuddyAllocator<'m, P>);

/// How many pageblocks of each type exist, and how many hold allocated pages of each
/// mobility (what the fragmentation experiment reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageblockCensus {
    /// Pageblocks per pageblock type.
    pub by_type: [u64; NR_MIGRATE_TYPES],
    /// Pageblocks holding at least one block allocated with each declared mobility.
    pub holding: [u64; NR_MIGRATE_TYPES],
    /// Pageblocks wholly inside zones.
    pub total: u64,
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    fn populated_zones(
        &self,
    ) -> impl Iterator<Item = (usize, &crate::allocator::Node<'m>, &Zone<'m>)> {
        self.nodes().flat_map(|(nid, n)| {
            n.zones
                .iter()
                .filter(|z| z.spanned() > 0)
                .map(move |z| (nid, n, z))
        })
    }

    /// `/proc/buddyinfo`.
    pub fn buddyinfo(&self) -> BuddyInfo<'_, 'm, P> {
        BuddyInfo(self)
    }

    /// `/proc/pagetypeinfo`.
    pub fn pagetypeinfo(&self) -> PageTypeInfo<'_, 'm, P> {
        PageTypeInfo(self)
    }

    /// The watermark and protection lines of `/proc/zoneinfo`.
    pub fn zoneinfo(&self) -> ZoneInfo<'_, 'm, P> {
        ZoneInfo(self)
    }

    /// Count pageblocks by type and by the mobility of the allocations they hold.
    /// O(managed frames); for studies and tests.
    pub fn pageblock_census(&self) -> PageblockCensus {
        let mut c = PageblockCensus::default();
        let pages = 1u64 << self.cfg.pageblock_order;
        for (_, n, z) in self.populated_zones() {
            let zl = self.lock(n, z);
            let mut pb = z.start.div_ceil(pages) * pages;
            while pb + pages <= z.init_end(&n.mm) {
                c.total += 1;
                c.by_type[n.mm.desc(pb).block_type().index()] += 1;
                for mt in MigrateType::ALL {
                    if zl.pageblock_holds_allocated(pb, mt) {
                        c.holding[mt.index()] += 1;
                    }
                }
                pb += pages;
            }
        }
        c
    }

    /// The migrate type of the pageblock holding `pfn` (Linux's
    /// `get_pageblock_migratetype`), or `None` for a frame outside every zone. Read without
    /// the zone lock, so a concurrent claim may make it stale at once: a snapshot for
    /// reports and memory maps.
    pub fn pageblock_migratetype(&self, pfn: Pfn) -> Option<MigrateType> {
        let (n, _) = self.locate(pfn.as_u64())?;
        let start = pfn.as_u64() & !((1u64 << self.cfg.pageblock_order) - 1);
        n.mm.contains(start).then(|| n.mm.desc(start).block_type())
    }

    /// Free frames obtainable as blocks of at least `order` (on the zones' lists, every
    /// type but Isolate).
    pub fn free_pages_at_order(&self, order: u32) -> u64 {
        let mut total = 0;
        for (_, _, z) in self.populated_zones() {
            let fa = z.free.lock();
            for o in order..=self.cfg.max_order {
                let blocks: u64 = fa.counts[o as usize][..MigrateType::Isolate.index()]
                    .iter()
                    .map(|&n| u64::from(n))
                    .sum();
                total += blocks << o;
            }
        }
        total
    }
}

impl<P: IrqControl> fmt::Display for BuddyInfo<'_, '_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (nid, _, z) in self.0.populated_zones() {
            let fa = z.free.lock();
            write!(f, "Node {}, zone {:>8} ", nid, z.ty.name())?;
            for o in 0..=self.0.cfg.max_order {
                let n: u64 = fa.counts[o as usize].iter().map(|&n| u64::from(n)).sum();
                write!(f, "{:>6} ", n)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl<P: IrqControl> fmt::Display for PageTypeInfo<'_, '_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        writeln!(f, "Page block order: {}", b.cfg.pageblock_order)?;
        writeln!(f, "Pages per block:  {}", 1u64 << b.cfg.pageblock_order)?;
        writeln!(f)?;
        write!(f, "{:<43} ", "Free pages count per migrate type at order")?;
        for o in 0..=b.cfg.max_order {
            write!(f, "{:>6} ", o)?;
        }
        writeln!(f)?;
        for (nid, _, z) in b.populated_zones() {
            let fa = z.free.lock();
            for mt in MigrateType::ALL {
                write!(
                    f,
                    "Node {:>4}, zone {:>8}, type {:>12} ",
                    nid,
                    z.ty.name(),
                    mt.name()
                )?;
                for o in 0..=b.cfg.max_order {
                    write!(f, "{:>6} ", fa.counts[o as usize][mt.index()])?;
                }
                writeln!(f)?;
            }
        }
        write!(f, "\n{:<23}", "Number of blocks type ")?;
        for mt in MigrateType::ALL {
            write!(f, "{:>12} ", mt.name())?;
        }
        writeln!(f)?;
        for (nid, n, z) in b.populated_zones() {
            let zl = b.lock(n, z);
            write!(f, "Node {}, zone {:>8} ", nid, z.ty.name())?;
            for mt in MigrateType::ALL {
                write!(f, "{:>12} ", zl.count_pageblocks(mt))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl<P: IrqControl> fmt::Display for ZoneInfo<'_, '_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (nid, _, z) in self.0.populated_zones() {
            writeln!(f, "Node {}, zone {:>8}", nid, z.ty.name())?;
            writeln!(f, "  pages free     {}", z.free_pages.load(Relaxed))?;
            writeln!(f, "        boost    0")?;
            writeln!(f, "        min      {}", z.wmark[0].load(Relaxed))?;
            writeln!(f, "        low      {}", z.wmark[1].load(Relaxed))?;
            writeln!(f, "        high     {}", z.wmark[2].load(Relaxed))?;
            writeln!(f, "        spanned  {}", z.spanned())?;
            writeln!(f, "        present  {}", z.present)?;
            writeln!(f, "        managed  {}", z.managed.load(Relaxed))?;
            let deferred = self.0.deferred_present(nid, z.ty);
            if deferred > 0 {
                // Not in Linux's file: present frames not initialised yet.
                writeln!(f, "        deferred {deferred}")?;
            }
            writeln!(f, "        cma      0")?;
            write!(f, "        protection: (")?;
            for (j, r) in z.lowmem_reserve.iter().enumerate() {
                if j > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{}", r.load(Relaxed))?;
            }
            writeln!(f, ")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{build, mib, no_pcp};
    use crate::{GfpFlags, MigrateType};
    use mmkit_addr::{Order, Pfn};
    use std::string::ToString;

    #[test]
    fn buddyinfo_has_linux_layout() {
        let b = build(&[&[mib(0, 32)]], no_pcp(), 1);
        let s = b.buddyinfo().to_string();
        let mut lines = s.lines();
        // 0..16 MiB: the first frame-aligned max blocks of DMA, 4 of 4 MiB.
        assert_eq!(
            lines.next().unwrap(),
            "Node 0, zone      DMA      0      0      0      0      0      0      0      0      0      0      4 "
        );
        assert!(lines.next().unwrap().starts_with("Node 0, zone    DMA32 "));
        assert!(lines.next().is_none());
    }

    #[test]
    fn pagetypeinfo_counts_blocks_per_type() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        let s = b.pagetypeinfo().to_string();
        assert!(s.starts_with("Page block order: 9\nPages per block:  512\n\n"));
        assert!(s.contains(
            "Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate \n"
        ));
        // The unmovable page claimed one max-order block: 2 pageblocks of 8.
        assert!(
            s.contains("Node 0, zone    DMA32            2            6            0            0            0            0 \n"),
            "{s}"
        );
        assert!(s.contains("Node    0, zone    DMA32, type    Unmovable "));
        let c = b.pageblock_census();
        assert_eq!(c.total, 8);
        assert_eq!(c.by_type[MigrateType::Unmovable.index()], 2);
        assert_eq!(c.holding[MigrateType::Unmovable.index()], 1);
    }

    #[test]
    fn pageblock_migratetype_follows_claims() {
        let b = build(&[&[mib(16, 16)]], no_pcp(), 1);
        let pb = |pfn: u64| b.pageblock_migratetype(Pfn::new(pfn));
        // Boot leaves every pageblock movable, as Linux's memmap_init does.
        assert_eq!(pb(0x1000), Some(MigrateType::Movable));
        let got = b.alloc_pages(GfpFlags::KERNEL, Order::new(9)).unwrap();
        assert_eq!(pb(got.as_u64() + 7), Some(MigrateType::Unmovable));
        // Outside the zone: no pageblock.
        assert_eq!(pb(0), None);
        assert_eq!(pb(0x2000), None);
    }

    #[test]
    fn zoneinfo_prints_watermarks_and_protection() {
        let b = build(&[&[mib(0, 32)]], no_pcp(), 1);
        let s = b.zoneinfo().to_string();
        let dma = b.zone_stats(0, crate::ZoneType::Dma).unwrap();
        assert!(s.starts_with("Node 0, zone      DMA\n  pages free     "));
        assert!(s.contains(&std::format!("        min      {}\n", dma.min)));
        assert!(s.contains(&std::format!(
            "        protection: (0, {}, {}, {})\n",
            dma.protection[1],
            dma.protection[2],
            dma.protection[3]
        )));
        assert!(
            dma.protection[1] > 0,
            "DMA is protected from DMA32 requests"
        );
    }

    #[test]
    fn lookups_and_reports_take_extreme_arguments() {
        use crate::testutil::{snapshot, EXTREME_PFNS};
        use crate::ZoneType;
        let b = build(&[&[mib(16, 16)]], no_pcp(), 2);
        let before = snapshot(&b);
        for p in EXTREME_PFNS {
            assert_eq!(b.pageblock_migratetype(Pfn::new(p)), None, "{p:#x}");
            assert_eq!(b.pfn_node(Pfn::new(p)), None, "{p:#x}");
        }
        for order in [0, 1, 10, 11, u32::MAX - 1, u32::MAX] {
            let want = if order <= 10 {
                before_free(&b, order)
            } else {
                0
            };
            assert_eq!(b.free_pages_at_order(order), want, "order {order}");
        }
        for n in [1, usize::MAX - 1, usize::MAX] {
            assert_eq!(b.zone_stats(n, ZoneType::Normal), None);
            assert_eq!(b.cpu_node(n), 0);
        }
        assert_eq!(b.cpu_node(0), 0);
        assert_eq!(snapshot(&b), before);
    }

    /// Free frames in blocks of at least `order`, counted from the zone statistics.
    fn before_free(b: &crate::testutil::TestBuddy, order: u32) -> u64 {
        let mut total = 0;
        for zt in crate::ZoneType::ALL {
            if let Some(s) = b.zone_stats(0, zt) {
                for (o, per_type) in s.free_blocks.iter().enumerate().skip(order as usize) {
                    let blocks: u64 = per_type[..MigrateType::Isolate.index()].iter().sum();
                    total += blocks << o;
                }
            }
        }
        total
    }
}
