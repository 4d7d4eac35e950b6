//! Per-CPU page lists: orders 0..=3 per pcp migrate type, refilled from and drained to the
//! zone in batches under the zone lock (Linux `struct per_cpu_pages`, `rmqueue_pcplist`,
//! `free_unref_page`, `free_pcppages_bulk`).
//!
//! ## Locking
//! Each list set has its own lock, taken as Linux takes `pcp->lock` since 6.0
//! (`pcp_spin_trylock`): the calling CPU's set with a *try*-lock and interrupts left on. If
//! the lock is busy (an interrupt handler arriving while the code it interrupted holds the
//! set, a remote drain, or a thread moved to another CPU) the request goes straight to the
//! zone, so an allocating interrupt handler never spins on a lock its own CPU holds. The
//! lock is what excludes remote drains and `verify`, which take it blocking (several only in
//! increasing CPU order) and, like the owner, with interrupts on: a context that spun on it
//! with interrupts off could wait forever for an owner it keeps off its CPU (the host
//! platform's emulated interrupt guard is a per-CPU lock, which makes that a lock-order
//! cycle). Drains therefore run only where Linux's do, in contexts that may wait (never in
//! an interrupt handler). Lock order: per-CPU lists, then interrupts off and the zone lock;
//! never the other way round. The owner holds its set with interrupts on, so a kernel
//! whose scheduler preempts it there makes a drain on that CPU wait for its return (Linux
//! pins the task with preemption off instead; the platform traits have no such hook).
//!
//! The fast path costs one compare-exchange to take the set and a store to release it; it
//! does not disable interrupts (what `local_irq_save` costs is the platform's, and on the
//! emulated host platform that is a lock of its own). Which CPU's set a request uses is a
//! matter of locality only: the lock, not the CPU id, makes it exclusive.

//! ## Sizes (Linux `zone_batchsize`, `zone_highsize`)
//! * batch = `min(managed >> 10, 256) / 4`, then `rounddown_pow_of_two(b + b/2) - 1`, at
//!   least 1 (63 for zones of 1 GiB or more);
//! * high = the zone's low watermark split over the CPUs, at most `managed / 8` but never
//!   below `4 * batch` (the floor wins on tiny zones);
//! * an order-`o` refill takes `batch >> o` blocks (at least 2) for `o > 0`.
//!
//! Pages on a per-CPU list are counted as used by the zone (not in `free_pages`), as in Linux.

use spin::mutex::SpinMutex;

use crate::migrate::{MigrateType, NR_PCP_TYPES};
use crate::page::{Flags, List, PageState};

/// Highest order served by per-CPU lists (Linux `PAGE_ALLOC_COSTLY_ORDER`).
pub const PCP_MAX_ORDER: u32 = 3;

/// The per-CPU lists of one zone on one CPU. Opaque; the caller provides storage for
/// [`pcp_storage_len`](crate::pcp_storage_len) of them.
pub struct PerCpuPages {
    pub(crate) inner: SpinMutex<PcpLists>,
}

impl core::fmt::Debug for PerCpuPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuPages").finish_non_exhaustive()
    }
}

pub(crate) struct PcpLists {
    pub lists: [[List; NR_PCP_TYPES]; PCP_MAX_ORDER as usize + 1],
    /// Frames on all lists.
    pub count: u64,
}

impl PerCpuPages {
    pub(crate) const fn new() -> Self {
        Self {
            inner: SpinMutex::new(PcpLists {
                lists: [[List::EMPTY; NR_PCP_TYPES]; PCP_MAX_ORDER as usize + 1],
                count: 0,
            }),
        }
    }
}

/// Linux `zone_batchsize`.
pub(crate) fn zone_batchsize(managed: u64) -> u32 {
    let mut batch = (managed >> 10).min(256) / 4;
    if batch < 1 {
        batch = 1;
    }
    let b = batch + batch / 2;
    let pow = 1u64 << (63 - b.leading_zeros());
    (pow - 1).max(1) as u32
}

/// Linux `zone_highsize` with the default fraction, bounded by `managed / 8`.
pub(crate) fn zone_highsize(low_wmark: u64, managed: u64, batch: u32, nr_cpus: usize) -> u32 {
    let split = low_wmark / nr_cpus.max(1) as u64;
    let floor = 4 * u64::from(batch);
    split.max(floor).min((managed / 8).max(floor)) as u32
}

impl PcpLists {
    /// Put a block on the front of its list (cache-hot first).
    pub fn push(&mut self, mm: &crate::page::Memmap<'_>, pfn: u64, order: u32, mt: MigrateType) {
        let idx = mm.idx(pfn);
        mm.at(idx)
            .set_flags(Flags::new(PageState::PerCpu, order, mt));
        self.lists[order as usize][mt.index()].push_front(mm, idx);
        self.count += 1 << order;
    }

    /// Put a block whose descriptor already reads per-CPU (`order`, `mt`) on the front of
    /// its list.
    #[inline]
    pub fn link(&mut self, mm: &crate::page::Memmap<'_>, pfn: u64, order: u32, mt: MigrateType) {
        self.lists[order as usize][mt.index()].push_front(mm, mm.idx(pfn));
        self.count += 1 << order;
    }

    /// Take the hottest block of `order` and `mt`; its descriptor index.
    #[inline]
    pub fn pop_idx(
        &mut self,
        mm: &crate::page::Memmap<'_>,
        order: u32,
        mt: MigrateType,
    ) -> Option<u32> {
        let idx = self.lists[order as usize][mt.index()].pop_front(mm)?;
        self.count -= 1 << order;
        Some(idx)
    }

    /// Take the hottest block of `order` and `mt`.
    pub fn pop(
        &mut self,
        mm: &crate::page::Memmap<'_>,
        order: u32,
        mt: MigrateType,
    ) -> Option<u64> {
        let idx = self.lists[order as usize][mt.index()].pop_front(mm)?;
        self.count -= 1 << order;
        Some(mm.pfn(idx))
    }

    /// Take the coldest block of any list, round-robin from `*cursor`. Returns
    /// `(pfn, order)`.
    pub fn pop_cold(
        &mut self,
        mm: &crate::page::Memmap<'_>,
        cursor: &mut usize,
    ) -> Option<(u64, u32)> {
        let n = (PCP_MAX_ORDER as usize + 1) * NR_PCP_TYPES;
        for _ in 0..n {
            let i = *cursor % n;
            *cursor = cursor.wrapping_add(1);
            let (o, t) = (i / NR_PCP_TYPES, i % NR_PCP_TYPES);
            if let Some(idx) = self.lists[o][t].pop_back(mm) {
                self.count -= 1 << o;
                return Some((mm.pfn(idx), o as u32));
            }
        }
        None
    }
}

// Allocation and free through the lists live with the allocator (they need the zone and the
// platform); see `alloc.rs`. Zone-level helpers:

impl crate::freearea::ZoneLocked<'_, '_> {
    /// Give `pages` frames' worth of the coldest per-CPU blocks back to the buddy lists
    /// (Linux `free_pcppages_bulk`); `u64::MAX` drains everything.
    pub fn free_pcppages_bulk(&mut self, lists: &mut PcpLists, pages: u64) {
        let mut freed = 0;
        let mut cursor = 0;
        while freed < pages {
            let mm = self.mm;
            let Some((pfn, order)) = lists.pop_cold(mm, &mut cursor) else {
                break;
            };
            freed += 1 << order;
            mm.desc(pfn)
                .set_flags(Flags::new(PageState::Tail, 0, MigrateType::Unmovable));
            let mt = self.pageblock_type(pfn);
            self.free_one_page(pfn, order, mt, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_63_for_a_gigabyte_zone() {
        assert_eq!(zone_batchsize(262_144), 63);
        assert_eq!(zone_batchsize(1 << 22), 63);
    }

    #[test]
    fn batch_is_at_least_one_on_tiny_zones() {
        assert_eq!(zone_batchsize(0), 1);
        assert_eq!(zone_batchsize(4096), 1);
        // 64 MiB: 16384 >> 10 = 16, /4 = 4, 4 + 2 = 6 -> 4 - 1 = 3.
        assert_eq!(zone_batchsize(16_384), 3);
    }

    #[test]
    fn high_stays_between_four_batches_and_an_eighth() {
        assert_eq!(zone_highsize(0, 1 << 20, 63, 4), 252);
        assert_eq!(zone_highsize(1 << 20, 1 << 20, 63, 1), 1 << 17);
        assert_eq!(zone_highsize(4000, 1 << 20, 63, 2), 2000);
    }

    use crate::testutil::{build, mib};
    use crate::{BuddyConfig, GfpFlags, ZoneType};
    use mmkit_addr::Order;

    #[test]
    fn busy_per_cpu_list_falls_back_to_the_zone() {
        let b = build(&[&[mib(16, 16)]], BuddyConfig::default(), 1);
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        let held = z.pcp[0].inner.lock();
        let p = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        b.free_pages(p, Order::new(0)).unwrap();
        assert_eq!(held.count, 0, "neither path touched the busy list");
        drop(held);
        b.verify().unwrap();
    }

    #[test]
    fn refill_takes_a_batch_and_free_from_another_cpu_lands_on_its_list() {
        let b = std::sync::Arc::new(build(&[&[mib(16, 64)]], BuddyConfig::default(), 2));
        b.platform().bind_current_thread(0);
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        let batch = u64::from(z.pcp_batch.load(core::sync::atomic::Ordering::Relaxed));
        assert!(batch > 1);
        let p = b.alloc_pages(GfpFlags::KERNEL, Order::new(0)).unwrap();
        assert_eq!(z.pcp[0].inner.lock().count, batch - 1, "refilled one batch");
        let b2 = b.clone();
        std::thread::spawn(move || {
            b2.platform().bind_current_thread(1);
            b2.free_pages(p, Order::new(0)).unwrap();
        })
        .join()
        .unwrap();
        let n = b.node(0).unwrap();
        let z = &n.zones[ZoneType::Dma32.index()];
        assert_eq!(z.pcp[1].inner.lock().count, 1);
        b.verify().unwrap();
    }
}
