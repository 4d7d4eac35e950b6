//! One report call: meminfo-style totals, `/proc/buddyinfo`, `/proc/pagetypeinfo`, the
//! watermark part of `/proc/zoneinfo`, `/proc/slabinfo` for the kmalloc caches, the
//! high-order availability figure, the migration and compaction lines of `/proc/vmstat` and
//! the debugfs `extfrag` indices — all through `core::fmt::Display`, so a kernel can print
//! it on its console and a host program to a terminal.

use core::fmt;

use mmkit_addr::{IrqControl, PAGE_SIZE};
use mmkit_pgtable::PagingFormat;

use crate::mm::Mm;
use crate::owner::PageUse;

/// `/proc/meminfo`-style totals, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// Memory handed to the buddy (`MemTotal`).
    pub total_kb: u64,
    /// Free on the zones' lists plus cached per CPU (`MemFree`).
    pub free_kb: u64,
    /// Of the free memory, cached on per-CPU lists.
    pub pcp_kb: u64,
    /// Memory in the firmware map.
    pub present_kb: u64,
    /// Memory never handed to the buddy (firmware, kernel, boot metadata).
    pub reserved_kb: u64,
    /// Free memory whose page descriptors are still deferred (`MmBuilder::deferred_init`):
    /// it joins `MemTotal` when initialised, and is not counted as reserved.
    pub deferred_kb: u64,
    /// Of that, page descriptors.
    pub memmap_kb: u64,
    /// Slab pages and large kmalloc blocks (`Slab`).
    pub slab_kb: u64,
    /// Slab memory allocated reclaimable (`SReclaimable`).
    pub slab_reclaimable_kb: u64,
    /// Pages handed out by `alloc_pages`, per mobility (unmovable, movable, reclaimable).
    pub pages_kb: [u64; 3],
    /// Frames mapped by vmalloc (`VmallocUsed`).
    pub vmalloc_used_kb: u64,
    /// Size of the vmalloc window (`VmallocTotal`).
    pub vmalloc_total_kb: u64,
    /// Page-table frames (`PageTables`).
    pub page_tables_kb: u64,
}

impl fmt::Display for MemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, u64); 16] = [
            ("MemTotal", self.total_kb),
            ("MemFree", self.free_kb),
            ("PerCpuCached", self.pcp_kb),
            ("MemPresent", self.present_kb),
            ("Reserved", self.reserved_kb),
            ("Deferred", self.deferred_kb),
            ("Memmap", self.memmap_kb),
            ("Slab", self.slab_kb),
            ("SReclaimable", self.slab_reclaimable_kb),
            (
                "SUnreclaim",
                self.slab_kb - self.slab_reclaimable_kb.min(self.slab_kb),
            ),
            ("PagesUnmovable", self.pages_kb[0]),
            ("PagesMovable", self.pages_kb[1]),
            ("PagesReclaimable", self.pages_kb[2]),
            ("VmallocUsed", self.vmalloc_used_kb),
            ("PageTables", self.page_tables_kb),
            ("VmallocTotal", self.vmalloc_total_kb),
        ];
        for (name, kb) in rows {
            writeln!(f, "{name}:{kb:>width$} kB", width = 24 - name.len())?;
        }
        Ok(())
    }
}

/// How much free memory is obtainable in large blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighOrder {
    /// The order asked about.
    pub order: u32,
    /// Free frames in blocks of at least that order.
    pub frames: u64,
    /// All free frames on the zones' lists.
    pub free_frames: u64,
}

impl HighOrder {
    /// Blocks of exactly `2^order` frames that could be allocated now.
    pub fn blocks(&self) -> u64 {
        self.frames >> self.order
    }

    /// Percentage of free memory available at that order (0 when nothing is free).
    pub fn percent(&self) -> f64 {
        if self.free_frames == 0 {
            0.0
        } else {
            self.frames as f64 * 100.0 / self.free_frames as f64
        }
    }
}

impl fmt::Display for HighOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "order >= {:>2} ({:>5} KiB blocks): {:>8} blocks, {:>5.1}% of free memory",
            self.order,
            (PAGE_SIZE << self.order) / 1024,
            self.blocks(),
            self.percent()
        )
    }
}

/// Everything [`Mm::report`] prints.
pub struct Report<'a, 'm, P: IrqControl, F: PagingFormat> {
    mm: &'a Mm<'m, P, F>,
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    /// The meminfo-style totals.
    pub fn meminfo(&self) -> MemInfo {
        let kb = |frames: u64| frames * (PAGE_SIZE / 1024);
        let buddy = &self.pages.buddy;
        let owners = &self.pages.owners;
        let pcp = buddy.total_pcp();
        let vm = self.vmalloc_stats();
        let managed = buddy.total_managed();
        let deferred: u64 = (0..buddy.nr_nodes())
            .filter_map(|n| buddy.deferred_info(n))
            .map(|d| d.free)
            .sum();
        let slab = owners.frames(PageUse::Slab);
        MemInfo {
            total_kb: kb(managed),
            free_kb: kb(buddy.total_free() + pcp),
            pcp_kb: kb(pcp),
            present_kb: self.boot.memory_bytes / 1024,
            reserved_kb: (self.boot.memory_bytes / 1024).saturating_sub(kb(managed + deferred)),
            deferred_kb: kb(deferred),
            memmap_kb: self.boot.memmap_bytes / 1024,
            slab_kb: kb(slab.iter().sum()),
            slab_reclaimable_kb: kb(slab[2]),
            pages_kb: owners.frames(PageUse::Pages).map(kb),
            vmalloc_used_kb: vm.backed_bytes / 1024,
            vmalloc_total_kb: vm.window_bytes / 1024,
            page_tables_kb: kb(owners.frames_by_use(PageUse::PageTable)),
        }
    }

    /// The high-order availability figure for `order`.
    pub fn high_order(&self, order: u32) -> HighOrder {
        HighOrder {
            order,
            frames: self.free_pages_at_order(order),
            free_frames: self.free_pages_at_order(0),
        }
    }

    /// The full report (meminfo, buddyinfo, pagetypeinfo, zoneinfo watermarks, slabinfo,
    /// high-order availability, compaction vmstat, extfrag), for `Display`.
    pub fn report(&self) -> Report<'_, 'm, P, F> {
        Report { mm: self }
    }
}

impl<P: IrqControl, F: PagingFormat> fmt::Display for Report<'_, '_, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mm = self.mm;
        let buddy = mm.buddy();
        writeln!(f, "== meminfo")?;
        write!(f, "{}", mm.meminfo())?;
        writeln!(f, "\n== buddyinfo")?;
        write!(f, "{}", buddy.buddyinfo())?;
        writeln!(f, "\n== pagetypeinfo")?;
        write!(f, "{}", buddy.pagetypeinfo())?;
        writeln!(f, "\n== zoneinfo (watermarks)")?;
        write!(f, "{}", buddy.zoneinfo())?;
        writeln!(f, "\n== slabinfo")?;
        write!(f, "{}", mm.kmalloc)?;
        writeln!(f, "\n== high-order availability")?;
        let cfg = buddy.config();
        for order in [3, cfg.pageblock_order, cfg.max_order] {
            writeln!(f, "{}", mm.high_order(order))?;
        }
        writeln!(f, "\n== vmstat (migration and compaction)")?;
        write!(f, "{}", buddy.compact_stats())?;
        writeln!(f, "\n== extfrag (debugfs)")?;
        write!(f, "{}", buddy.extfrag_report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn meminfo_prints_aligned_kb_lines_with_derived_unreclaimable_slab() {
        let m = MemInfo {
            total_kb: 1000,
            slab_kb: 300,
            slab_reclaimable_kb: 100,
            ..Default::default()
        };
        let text = format!("{m}");
        let line = |name: &str| {
            let l = text.lines().find(|l| l.starts_with(name)).unwrap();
            l.split_whitespace()
                .skip(1)
                .collect::<std::vec::Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("MemTotal:"), "1000 kB");
        assert_eq!(line("SUnreclaim:"), "200 kB", "{text}");
        assert!(text
            .lines()
            .all(|l| l.len() == text.lines().next().unwrap().len()));
    }

    #[test]
    fn high_order_share_is_of_free_memory() {
        let h = HighOrder {
            order: 9,
            frames: 1024,
            free_frames: 4096,
        };
        assert_eq!(h.blocks(), 2);
        assert!((h.percent() - 25.0).abs() < 1e-9);
        let none = HighOrder {
            free_frames: 0,
            frames: 0,
            ..h
        };
        assert_eq!(none.percent(), 0.0);
    }
}
