//! Deferred memmap initialisation (Linux `CONFIG_DEFERRED_STRUCT_PAGE_INIT`).
//!
//! With [`BuddyConfig::deferred_init`](crate::BuddyConfig::deferred_init) set, construction
//! initialises only the first part of each node's memmap: the node's first `frames` frames,
//! rounded up to a max-order block (Linux's `first_deferred_pfn`). The descriptors past
//! that **boundary** are not written at all: the memmap is sparse (`raw::SectionMap`), and
//! a section past the boundary reads the shared block of hole descriptors until growth
//! gives it descriptors of its own; every frame walker stops at the boundary.
//!
//! What the deferred part holds is remembered in the node's [`Deferred`] record, at most
//! [`DEFERRED_RUNS`] runs each:
//! * `present`: the node's memory ranges past the boundary (taken at construction; a node
//!   with more such ranges gets its boundary raised until the rest fit);
//! * `free`: the boot hand-off's free blocks past the boundary
//!   ([`free_boot_block`](crate::BuddyAllocator::free_boot_block) records them there,
//!   merging adjacent blocks; when the record is full it initialises up to the block and
//!   frees it at once).
//!
//! **Growth** moves the boundary up by whole max-order blocks (memmap sections), zone by
//! zone under the zone lock: it gives each section that holds memory a block of
//! descriptors written in their final state (tails for the recorded free runs, reserved for
//! other present frames, holes elsewhere; a section wholly free or wholly reserved from one
//! template), publishes them, leaves sections without memory on the shared hole block, and
//! frees the
//! recorded free runs below the new boundary to the buddy in the largest aligned blocks, as
//! the hand-off would have. Two callers grow a node:
//! * [`deferred_init_step`](crate::BuddyAllocator::deferred_init_step), one chunk at a
//!   time, from a thread per node (Linux `deferred_init_memmap`);
//! * the allocation path, when a request fails while a node it may use has deferred frames
//!   in a zone it may use (Linux `deferred_grow_zone`): [`DEFERRED_GROW_FRAMES`] at a time
//!   until the request succeeds or nothing is left to grow.
//!
//! When a node's boundary reaches its span's end the watermarks are computed again, as
//! [`finish_boot`](crate::BuddyAllocator::finish_boot) does.
//!
//! Because the boundary is a multiple of the largest block, and zone boundaries are too, no
//! buddy merge and no block ever crosses it.
//!
//! ## Locking
//! The node's `deferred` spin lock (taken with interrupts off, like a zone lock, so an
//! interrupt handler that allocates never spins on it while its own CPU holds it) protects
//! the record and serialises growth. Lock order: `deferred`, then a zone lock; nothing
//! takes `deferred` while holding a zone or per-CPU lock. Growth holds a zone's lock while
//! it writes and frees that zone's part of a chunk, so the chunk size bounds how long it
//! keeps other CPUs out of the zone. Readers of the memmap take no lock: the boundary is
//! published with release ordering after the descriptors are written.

use core::sync::atomic::Ordering::Relaxed;

use mmkit_addr::{IrqControl, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::{BootFreeError, DeferredError};
use crate::page::{PageDesc, PageState};
use crate::zone::ZoneType;

/// Runs of each kind a node's deferred record holds.
pub const DEFERRED_RUNS: usize = 8;

/// Frames the allocation path initialises at a time when it grows a node on demand (128
/// MiB with 4 KiB frames, Linux's `PAGES_PER_SECTION` on x86-64), rounded up to a max-order
/// block.
pub const DEFERRED_GROW_FRAMES: u64 = 1 << 15;

/// Told about the frames deferred growth gives to the buddy
/// ([`BuddyAllocator::set_deferred_observer`]), e.g. to keep a per-frame table of its own
/// in step without writing the deferred part of it at boot.
pub trait DeferredObserver: Sync {
    /// Frames `[start, end)`, until now held back as deferred, are about to go on the free
    /// lists. Called with the node's deferred lock and a zone lock held and interrupts off:
    /// it must not call into the allocator.
    fn freeing(&self, start: Pfn, end: Pfn);

    /// Frames `[start, end)` of a node are about to be initialised (before any of them is
    /// freed, with the same locks held as for [`freeing`](Self::freeing) except the zone
    /// lock): a sparse table of the observer's own can give their sections storage here.
    /// The default does nothing.
    fn initialising(&self, start: Pfn, end: Pfn) {
        let _ = (start, end);
    }
}

/// A run of frames `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Run {
    pub start: u64,
    pub end: u64,
}

impl Run {
    fn overlap(&self, s: u64, e: u64) -> u64 {
        self.end.min(e).saturating_sub(self.start.max(s))
    }
}

/// What a node's deferred part holds (module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deferred {
    /// Present memory past the boundary, sorted and disjoint.
    pub present: [Run; DEFERRED_RUNS],
    pub nr_present: usize,
    /// Free boot blocks past the boundary, disjoint, in the order they came.
    pub free: [Run; DEFERRED_RUNS],
    pub nr_free: usize,
}

impl Deferred {
    pub const fn new() -> Self {
        Self {
            present: [Run { start: 0, end: 0 }; DEFERRED_RUNS],
            nr_present: 0,
            free: [Run { start: 0, end: 0 }; DEFERRED_RUNS],
            nr_free: 0,
        }
    }

    pub fn present(&self) -> &[Run] {
        &self.present[..self.nr_present]
    }

    pub fn free(&self) -> &[Run] {
        &self.free[..self.nr_free]
    }

    /// Present frames of `[s, e)`.
    pub fn present_in(&self, s: u64, e: u64) -> u64 {
        self.present().iter().map(|r| r.overlap(s, e)).sum()
    }

    /// Recorded free frames of `[s, e)`.
    pub fn free_in(&self, s: u64, e: u64) -> u64 {
        self.free().iter().map(|r| r.overlap(s, e)).sum()
    }

    /// Whether `[s, e)` may be recorded as free: every frame present, none recorded yet.
    /// Returns the first offending frame otherwise.
    fn check_free(&self, s: u64, e: u64) -> Result<(), u64> {
        if let Some(r) = self.free().iter().find(|r| r.overlap(s, e) > 0) {
            return Err(r.start.max(s));
        }
        if self.present_in(s, e) == e - s {
            return Ok(());
        }
        // The first frame no present run holds.
        let mut p = s;
        for r in self.present() {
            if r.start <= p && p < r.end {
                p = r.end;
            }
        }
        Err(p.min(e - 1))
    }

    /// Record `[s, e)` as free, merging with an adjacent run; `false` if the record is full.
    fn record_free(&mut self, s: u64, e: u64) -> bool {
        if let Some(r) = self.free[..self.nr_free]
            .iter_mut()
            .find(|r| r.end == s || r.start == e)
        {
            r.start = r.start.min(s);
            r.end = r.end.max(e);
            return true;
        }
        if self.nr_free == DEFERRED_RUNS {
            return false;
        }
        self.free[self.nr_free] = Run { start: s, end: e };
        self.nr_free += 1;
        true
    }
}

/// What one [`deferred_init_step`](BuddyAllocator::deferred_init_step) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredProgress {
    /// Descriptors initialised by this step.
    pub initialised: u64,
    /// Frames this step gave to the buddy.
    pub freed: u64,
    /// Frames of the node's span still not initialised (0: the node is complete).
    pub remaining: u64,
}

/// A node's deferred state, for reports ([`BuddyAllocator::deferred_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredInfo {
    /// First frame not initialised (the span's end when complete).
    pub boundary: Pfn,
    /// Frames of the span past the boundary.
    pub spanned: u64,
    /// Present frames past the boundary.
    pub present: u64,
    /// Frames past the boundary the boot hand-off gave, waiting to be freed to the buddy.
    pub free: u64,
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Initialise the next `max_frames` frames (rounded up to a max-order block) of node
    /// `node`'s deferred part and free what the boot hand-off gave there to the buddy (Linux
    /// `deferred_init_memmap`, one chunk). Call it from one thread per node, repeatedly until
    /// [`remaining`](DeferredProgress::remaining) is 0, while other CPUs allocate; each call
    /// keeps local interrupts off while it runs, so `max_frames` bounds that time.
    ///
    /// A node with nothing deferred (complete, or never deferred) gives
    /// [`DeferredError::Complete`]; nothing changes on any error.
    pub fn deferred_init_step(
        &self,
        node: usize,
        max_frames: u64,
    ) -> Result<DeferredProgress, DeferredError> {
        let n = self.node(node).ok_or(DeferredError::NoSuchNode(node))?;
        if max_frames == 0 {
            return Err(DeferredError::NoFrames);
        }
        let (initialised, freed) = self
            .grow_node(n, max_frames)
            .ok_or(DeferredError::Complete)?;
        Ok(DeferredProgress {
            initialised,
            freed,
            remaining: n.mm.span_end() - n.mm.end(),
        })
    }

    /// Register the observer of deferred growth (one; `false`, changing nothing, if one is
    /// registered already). Register it before the boot hand-off: growth may run from
    /// there on (a full deferred record initialises up to a block).
    pub fn set_deferred_observer(&self, observer: &'m dyn DeferredObserver) -> bool {
        let mut slot = self.deferred_observer.write();
        if slot.is_some() {
            return false;
        }
        *slot = Some(observer);
        true
    }

    /// Node `node`'s deferred state, or `None` for a node that does not exist.
    pub fn deferred_info(&self, node: usize) -> Option<DeferredInfo> {
        let n = self.node(node)?;
        let _irq = self.platform.irq_save();
        let d = n.deferred.lock();
        let (b, e) = (n.mm.end(), n.mm.span_end());
        Some(DeferredInfo {
            boundary: Pfn::new(b),
            spanned: e - b,
            present: d.present_in(b, e),
            free: d.free_in(b, e),
        })
    }

    /// Present frames of zone `zone` of node `node` not initialised yet (0 for a zone or
    /// node that does not exist).
    pub fn deferred_present(&self, node: usize, zone: ZoneType) -> u64 {
        let Some(n) = self.node(node) else {
            return 0;
        };
        let z = &n.zones[zone.index()];
        let _irq = self.platform.irq_save();
        let d = n.deferred.lock();
        d.present_in(z.start.max(n.mm.end()), z.end)
    }

    /// Frames not initialised yet, over all nodes.
    pub fn total_deferred(&self) -> u64 {
        self.nodes()
            .map(|(_, n)| n.mm.span_end() - n.mm.end())
            .sum()
    }

    /// Grow node `n`'s initialised part by `frames` (rounded up to a max-order block), or
    /// to the span's end. Returns (descriptors initialised, frames freed), `None` if the
    /// node was already complete.
    pub(crate) fn grow_node(&self, n: &Node<'m>, frames: u64) -> Option<(u64, u64)> {
        let _irq = self.platform.irq_save();
        let mut d = n.deferred.lock();
        let old = n.mm.end();
        if old >= n.mm.span_end() {
            return None;
        }
        let target = old.saturating_add(frames);
        Some(self.grow_to_locked(n, &mut d, target))
    }

    /// Move node `n`'s boundary up to cover `target` (rounded up to a max-order block,
    /// clamped to the span), with its deferred lock held as `d`. Returns (descriptors
    /// initialised, frames freed).
    fn grow_to_locked(&self, n: &Node<'m>, d: &mut Deferred, target: u64) -> (u64, u64) {
        let max_pages = 1u64 << self.cfg.max_order;
        let (base, old) = (n.mm.base, n.mm.end());
        let new = target
            .div_ceil(max_pages)
            .saturating_mul(max_pages)
            .min(n.mm.span_end());
        if new <= old {
            return (0, 0);
        }
        // What the hand-off gave in [old, new), sorted (the record keeps arrival order).
        let mut free = [Run::default(); DEFERRED_RUNS];
        let mut nr_free = 0;
        for r in d.free() {
            let (s, e) = (r.start.max(old), r.end.min(new));
            if s < e {
                free[nr_free] = Run { start: s, end: e };
                nr_free += 1;
            }
        }
        let free = &mut free[..nr_free];
        free.sort_unstable_by_key(|r| r.start);
        if let Some(obs) = *self.deferred_observer.read() {
            obs.initialising(Pfn::new(old), Pfn::new(new));
        }
        let present_runs = d.present();
        // Zone by zone (zones tile the span; their boundaries are max-order aligned), with
        // the zone lock held from publication to the last free, so a scan under the lock
        // sees the new frames either not yet initialised or already free. Descriptors are
        // written in their final state: tails for frames about to be freed (each block's
        // head is set when it goes on its list), reserved for other memory, holes
        // elsewhere; so each is written once and nothing is read back.
        let mut freed = 0;
        let (mut pc, mut fc) = (0, 0);
        for z in n.zones.iter().filter(|z| z.start < z.end) {
            let (zs, ze) = (z.start.max(old), z.end.min(new));
            if zs >= ze {
                continue;
            }
            let mut zl = self.lock(n, z);
            let shift = n.mm.map.shift();
            let step = 1u64 << shift;
            let mut sec = zs;
            while sec < ze {
                let sec_end = sec + step;
                let index = ((sec - base) >> shift) as usize;
                let whole_free = free.iter().any(|r| r.start <= sec && sec_end <= r.end);
                let has_free = free.iter().any(|r| r.overlap(sec, sec_end) > 0);
                let present = d.present_in(sec, sec_end);
                if whole_free {
                    // The common case: one template, wide stores.
                    n.mm.init_section(index, |_| PageDesc::with_state(PageState::Tail));
                } else if present == step && !has_free {
                    n.mm.init_section(index, |_| PageDesc::with_state(PageState::Reserved));
                } else if present > 0 {
                    n.mm.init_section(index, |i| {
                        let pfn = sec + i as u64;
                        while fc < free.len() && free[fc].end <= pfn {
                            fc += 1;
                        }
                        if free.get(fc).is_some_and(|r| r.start <= pfn) {
                            return PageDesc::with_state(PageState::Tail);
                        }
                        while pc < present_runs.len() && present_runs[pc].end <= pfn {
                            pc += 1;
                        }
                        match present_runs.get(pc) {
                            Some(r) if r.start <= pfn => PageDesc::with_state(PageState::Reserved),
                            _ => PageDesc::with_state(PageState::Hole),
                        }
                    });
                }
                // A section without memory keeps sharing the hole block.
                sec = sec_end;
            }
            n.mm.set_end(ze);
            let observer = *self.deferred_observer.read();
            for r in free.iter() {
                let (s, e) = (r.start.max(zs), r.end.min(ze));
                if let (Some(obs), true) = (observer, s < e) {
                    obs.freeing(Pfn::new(s), Pfn::new(e));
                }
                let mut pfn = s;
                while pfn < e {
                    let order = self.boot_order(pfn, e);
                    z.managed.fetch_add(1u64 << order, Relaxed);
                    let mt = zl.pageblock_type(pfn);
                    zl.free_one_page(pfn, order, mt, true);
                    freed += 1u64 << order;
                    pfn += 1u64 << order;
                }
            }
        }
        debug_assert_eq!(n.mm.end(), new, "the zones tile the node's span");
        if new == n.mm.span_end() {
            // Complete: watermarks and per-CPU sizes from the full managed counts.
            self.finish_boot();
        }
        (new - old, freed)
    }

    /// Record the boot block `[pfn, pfn + 2^order)` of node `n`, which lies past the boundary
    /// when checked, as free (`free_boot_block`'s deferred half). With `check_only` only
    /// checks. `Ok(false)`: the boundary has passed the block meanwhile, so free it normally.
    pub(crate) fn defer_boot_block(
        &self,
        n: &Node<'m>,
        pfn: u64,
        order: u32,
        check_only: bool,
    ) -> Result<bool, BootFreeError> {
        self.defer_boot_frames(n, pfn, pfn + (1u64 << order), check_only)
    }

    /// [`defer_boot_block`](Self::defer_boot_block) for the frames `[pfn, end)` of node
    /// `n`, all past the boundary when checked, at once.
    pub(crate) fn defer_boot_frames(
        &self,
        n: &Node<'m>,
        pfn: u64,
        end: u64,
        check_only: bool,
    ) -> Result<bool, BootFreeError> {
        let _irq = self.platform.irq_save();
        let mut d = n.deferred.lock();
        if n.mm.contains(pfn) {
            return Ok(false);
        }
        d.check_free(pfn, end)
            .map_err(|p| BootFreeError::NotReserved { pfn: Pfn::new(p) })?;
        if check_only || d.record_free(pfn, end) {
            return Ok(true);
        }
        // The record is full: initialise up to these frames (freeing the recorded runs
        // below them), then the caller frees them itself.
        self.grow_to_locked(n, &mut d, end);
        Ok(false)
    }

    /// Grow, on demand, a node the request may use that has deferred frames in a zone the
    /// request may use (Linux `deferred_grow_zone`). Returns whether anything grew.
    pub(crate) fn grow_for(&self, preferred: usize, this_node: bool, highest: usize) -> bool {
        let Some(pref) = self.node(preferred) else {
            return false;
        };
        let nr = if this_node { 1 } else { self.nr_nodes };
        for &nid in &pref.fallback[..nr] {
            let Some(n) = self.node(usize::from(nid)) else {
                continue;
            };
            let boundary = n.mm.end();
            let usable = n.zones[..=highest]
                .iter()
                .any(|z| z.start < z.end && z.end > boundary);
            if usable && self.grow_node(n, DEFERRED_GROW_FRAMES).is_some() {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{build, build_reserved, mib, no_pcp, snapshot, TestBuddy};
    use crate::{AllocError, BuddyConfig, FreeError, GfpFlags};
    use mmkit_addr::Order;
    use mmkit_addr::PhysRange;
    use std::vec::Vec;

    /// 64 MiB from 0 with the first 8 MiB (2048 frames) initialised at boot.
    fn cfg(frames: u64) -> BuddyConfig {
        BuddyConfig {
            deferred_init: Some(frames),
            ..BuddyConfig::default()
        }
    }

    fn drain_steps(b: &TestBuddy, node: usize, chunk: u64) -> u64 {
        let mut steps = 0;
        loop {
            match b.deferred_init_step(node, chunk) {
                Ok(p) => {
                    b.verify().unwrap();
                    steps += 1;
                    if p.remaining == 0 {
                        return steps;
                    }
                }
                Err(e) => panic!("step failed: {e:?}"),
            }
        }
    }

    #[test]
    fn boot_initialises_only_the_first_part() {
        let ram = [mib(0, 64)];
        let b = build(&[&ram], cfg(2000), 1);
        // 2000 frames round up to two order-10 blocks.
        assert_eq!(b.total_managed(), 2048);
        let info = b.deferred_info(0).unwrap();
        assert_eq!(info.boundary, Pfn::new(2048));
        assert_eq!(
            (info.spanned, info.present, info.free),
            (14336, 14336, 14336)
        );
        assert!(b.pfn_initialised(Pfn::new(2047)));
        assert!(!b.pfn_initialised(Pfn::new(2048)));
        assert_eq!(
            b.pfn_node(Pfn::new(2048)),
            Some(0),
            "a deferred frame keeps its node"
        );
        assert_eq!(b.total_deferred(), 14336);
        let z = b.zone_stats(0, ZoneType::Dma).unwrap();
        assert_eq!((z.present, z.managed, z.deferred), (4096, 2048, 2048));
        assert!(std::format!("{}", b.zoneinfo()).contains("deferred 2048"));
        // Frames past the boundary are in no zone for frees and queries.
        assert_eq!(
            b.free_pages(Pfn::new(4096), Order::new(0)),
            Err(FreeError::OutsideZones)
        );
        assert_eq!(b.pageblock_migratetype(Pfn::new(4096)), None);
    }

    #[test]
    fn steps_complete_the_node_and_a_second_completion_changes_nothing() {
        let ram = [mib(0, 64)];
        let b = build(&[&ram], cfg(1), 1);
        assert_eq!(b.total_managed(), 1024);
        let steps = drain_steps(&b, 0, 1500);
        assert_eq!(steps, 8, "1500 frames round up to two blocks of 1024");
        assert_eq!(b.total_managed(), 16384);
        assert_eq!(b.total_free(), 16384);
        assert_eq!(b.total_deferred(), 0);
        let full = build(&[&ram], BuddyConfig::default(), 1);
        assert_eq!(
            std::format!("{}", b.buddyinfo()),
            std::format!("{}", full.buddyinfo())
        );
        assert_eq!(
            b.zone_stats(0, ZoneType::Dma).unwrap().min,
            full.zone_stats(0, ZoneType::Dma).unwrap().min,
            "watermarks recomputed on completion"
        );
        let before = snapshot(&b);
        assert_eq!(b.deferred_init_step(0, 1), Err(DeferredError::Complete));
        assert_eq!(
            b.deferred_init_step(1, 1),
            Err(DeferredError::NoSuchNode(1))
        );
        assert_eq!(
            b.deferred_init_step(usize::MAX, 1),
            Err(DeferredError::NoSuchNode(usize::MAX))
        );
        assert_eq!(snapshot(&b), before);
        // A node that never deferred is complete from the start.
        assert_eq!(full.deferred_init_step(0, 1), Err(DeferredError::Complete));
    }

    #[test]
    fn bad_steps_change_nothing() {
        let ram = [mib(0, 64)];
        let b = build(&[&ram], cfg(1), 1);
        let before = snapshot(&b);
        assert_eq!(b.deferred_init_step(0, 0), Err(DeferredError::NoFrames));
        assert_eq!(b.deferred_info(0).unwrap().boundary, Pfn::new(1024));
        assert_eq!(snapshot(&b), before);
    }

    #[test]
    fn reserved_frames_and_holes_past_the_boundary_stay_so() {
        // Two banks with a hole between; only part of the second bank is handed over.
        let ram = [mib(0, 16), mib(32, 32)];
        let b = build_reserved(&[&ram], no_pcp(), 1);
        let b2 = build_reserved(
            &[&ram],
            BuddyConfig {
                deferred_init: Some(1),
                ..no_pcp()
            },
            1,
        );
        for b in [&b, &b2] {
            b.free_boot_range(ram[0]).unwrap();
            b.free_boot_range(mib(32, 16)).unwrap();
            b.finish_boot();
        }
        // The deferred half knows what was handed over: a second hand-off of it is refused,
        // and so is a range with a hole in it.
        let before = snapshot(&b2);
        assert_eq!(
            b2.free_boot_range(mib(40, 4)),
            Err(BootFreeError::NotReserved {
                pfn: Pfn::new(40 * 256)
            })
        );
        assert_eq!(
            b2.free_boot_block(Pfn::new(16 * 256), Order::new(10)),
            Err(BootFreeError::NotReserved {
                pfn: Pfn::new(16 * 256)
            })
        );
        assert_eq!(snapshot(&b2), before);
        drain_steps(&b2, 0, 4096);
        assert_eq!(
            std::format!("{}", b.buddyinfo()),
            std::format!("{}", b2.buddyinfo())
        );
        assert_eq!(b.total_managed(), b2.total_managed());
        // Never handed over: still reserved after completion.
        assert_eq!(
            b2.free_pages(Pfn::new(50 * 256), Order::new(0)),
            Err(FreeError::Reserved)
        );
        assert_eq!(
            b2.free_pages(Pfn::new(20 * 256), Order::new(0)),
            Err(FreeError::Hole)
        );
        // The rest may still be handed over after completion, as without deferral.
        b2.free_boot_range(mib(48, 16)).unwrap();
        b2.verify().unwrap();
    }

    #[test]
    fn a_full_record_initialises_up_to_the_block() {
        let ram = [mib(0, 64)];
        let b = build_reserved(
            &[&ram],
            BuddyConfig {
                deferred_init: Some(1),
                ..no_pcp()
            },
            1,
        );
        // Every other order-0 frame from 32 MiB: no two blocks merge into one run.
        let first = 32 * 256;
        for i in 0..DEFERRED_RUNS as u64 {
            b.free_boot_block(Pfn::new(first + 2 * i), Order::new(0))
                .unwrap();
        }
        assert_eq!(b.deferred_info(0).unwrap().boundary, Pfn::new(1024));
        let next = first + 2 * DEFERRED_RUNS as u64;
        b.free_boot_block(Pfn::new(next), Order::new(0)).unwrap();
        let info = b.deferred_info(0).unwrap();
        assert_eq!(
            info.boundary,
            Pfn::new(first + 1024),
            "grown to cover the block"
        );
        assert_eq!(info.free, 0);
        assert_eq!(b.total_managed(), DEFERRED_RUNS as u64 + 1);
        b.verify().unwrap();
    }

    #[test]
    fn allocations_grow_the_node_on_demand_until_memory_runs_out() {
        let ram = [mib(0, 64)];
        let b = build(
            &[&ram],
            BuddyConfig {
                deferred_init: Some(1),
                ..no_pcp()
            },
            1,
        );
        let mut got = Vec::new();
        loop {
            match b.alloc_pages(GfpFlags::KERNEL, Order::new(3)) {
                Ok(p) => got.push(p),
                Err(e) => break assert_eq!(e, AllocError::OutOfMemory),
            }
        }
        assert_eq!(b.total_deferred(), 0, "everything was grown into");
        // As many as without deferral (watermarks are recomputed on completion).
        let full = build(&[&ram], no_pcp(), 1);
        let mut n = 0;
        while full.alloc_pages(GfpFlags::KERNEL, Order::new(3)).is_ok() {
            n += 1;
        }
        assert!(got.len() >= n, "{} < {n}", got.len());
        for p in got {
            b.free_pages(p, Order::new(3)).unwrap();
        }
        b.verify().unwrap();
        assert_eq!(b.total_free(), 16384);
    }

    #[test]
    fn a_contiguous_request_grows_the_node_until_a_run_fits() {
        // 512 MiB with one block initialised at boot: a 256 MiB run needs growth first.
        let ram = [mib(0, 512)];
        let b = build(
            &[&ram],
            BuddyConfig {
                deferred_init: Some(1),
                ..no_pcp()
            },
            1,
        );
        let before = b.total_deferred();
        let p = b
            .alloc_contig_pages(65536, GfpFlags::KERNEL, 0)
            .expect("growth makes room");
        assert!(b.total_deferred() < before);
        assert!(b.pfn_valid(p) && b.pfn_valid(Pfn::new(p.as_u64() + 65535)));
        b.verify().unwrap();
        b.free_contig_range(p, 65536).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn a_dma_request_grows_only_as_far_as_its_zone() {
        // DMA is the first 16 MiB: one growth (128 MiB) covers it, and once DMA is
        // exhausted the rest stays deferred.
        let ram = [mib(0, 512)];
        let b = build(
            &[&ram],
            BuddyConfig {
                deferred_init: Some(1),
                ..no_pcp()
            },
            1,
        );
        while b.alloc_pages(GfpFlags::DMA, Order::new(0)).is_ok() {}
        assert_eq!(
            b.deferred_info(0).unwrap().boundary,
            Pfn::new(1024 + DEFERRED_GROW_FRAMES)
        );
        b.verify().unwrap();
    }

    #[test]
    fn boundary_rises_until_the_ranges_past_it_fit_the_record() {
        let ram: Vec<PhysRange> = (0..DEFERRED_RUNS as u64 + 3)
            .map(|i| mib(8 * i, 4))
            .collect();
        let ram: &'static [PhysRange] = Vec::leak(ram);
        let b = build(&[ram], cfg(1), 1);
        let info = b.deferred_info(0).unwrap();
        // 11 ranges of 4 MiB, 8 MiB apart: the boundary rises from 4 MiB past the ends of
        // the ranges at 8 and 16 MiB, leaving 8 past it.
        assert_eq!(info.boundary, Pfn::new(20 * 256));
        assert_eq!(info.present, DEFERRED_RUNS as u64 * 1024);
        drain_steps(&b, 0, 1 << 20);
        assert_eq!(b.total_managed(), ram.len() as u64 * 1024);
    }

    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(u64, u64)>>);

    impl DeferredObserver for Seen {
        fn freeing(&self, start: Pfn, end: Pfn) {
            self.0.lock().unwrap().push((start.as_u64(), end.as_u64()));
        }
    }

    #[test]
    fn the_observer_hears_every_frame_growth_frees_and_nothing_else() {
        let ram = [mib(0, 64)];
        let b = build_reserved(&[&ram], cfg(1), 1);
        let seen: &'static Seen = std::boxed::Box::leak(std::boxed::Box::default());
        assert!(b.set_deferred_observer(seen));
        assert!(!b.set_deferred_observer(seen), "one observer");
        // Handed over: 0..40 MiB and 48..64 MiB; 40..48 MiB stays reserved.
        b.free_boot_range(mib(0, 40)).unwrap();
        b.free_boot_range(mib(48, 16)).unwrap();
        b.finish_boot();
        assert!(seen.0.lock().unwrap().is_empty(), "nothing grown yet");
        drain_steps(&b, 0, 3000);
        let mut got = seen.0.lock().unwrap().clone();
        got.sort_unstable();
        let frames: u64 = got.iter().map(|(s, e)| e - s).sum();
        assert_eq!(frames, b.total_managed() - 1024);
        assert!(got
            .iter()
            .all(|&(s, e)| s >= 1024 && (e <= 40 * 256 || s >= 48 * 256)));
    }

    #[test]
    fn a_boot_run_is_recorded_at_once_and_ends_as_its_blocks_would() {
        // Node 0: 0..48 MiB, node 1: 64..128 MiB, 8 MiB of each at boot; each node's memory
        // handed over as one run of order-10 blocks across its boundary.
        let (n0, n1) = ([mib(0, 48)], [mib(64, 64)]);
        let c = BuddyConfig {
            deferred_init: Some(2048),
            ..no_pcp()
        };
        let by_run = build_reserved(&[&n0, &n1], c, 1);
        let by_block = build_reserved(&[&n0, &n1], c, 1);
        for (start, count) in [(0u64, 12u64), (64 * 256, 16)] {
            let freed = by_run
                .free_boot_run(Pfn::new(start), Order::new(10), count)
                .unwrap();
            assert_eq!(freed, count * 1024);
            for i in 0..count {
                by_block
                    .free_boot_block(Pfn::new(start + i * 1024), Order::new(10))
                    .unwrap();
            }
        }
        for node in 0..2 {
            assert_eq!(by_run.deferred_info(node), by_block.deferred_info(node));
            assert_eq!(
                by_run.deferred_info(node).unwrap().boundary.as_u64() % 1024,
                0
            );
        }
        // Handing any of it over again is refused and changes nothing.
        let before = snapshot(&by_run);
        assert!(by_run
            .free_boot_run(Pfn::new(64 * 256), Order::new(10), 2)
            .is_err());
        assert_eq!(
            by_run.free_boot_run(Pfn::new(1), Order::new(1), 1),
            Err(BootFreeError::Misaligned)
        );
        assert_eq!(snapshot(&by_run), before);
        for b in [&by_run, &by_block] {
            b.finish_boot();
            for node in 0..2 {
                drain_steps(b, node, 4096);
            }
        }
        assert_eq!(
            std::format!("{}", by_run.buddyinfo()),
            std::format!("{}", by_block.buddyinfo())
        );
        assert_eq!(by_run.total_managed(), 28 * 1024);
    }

    #[test]
    fn one_thread_completes_while_another_allocates_and_frees() {
        let ram = [mib(0, 256)];
        let b: &'static TestBuddy =
            std::boxed::Box::leak(std::boxed::Box::new(build(&[&ram], cfg(1), 2)));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let stop = &stop;
            let worker = s.spawn(move || {
                let mut held = Vec::new();
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 2000 {
                    i += 1;
                    let order = Order::new(i % 4);
                    if let Ok(p) = b.alloc_pages(GfpFlags::KERNEL, order) {
                        held.push((p, order));
                    }
                    if held.len() > 200 || i % 3 == 0 {
                        if let Some((p, o)) = held.pop() {
                            b.free_pages(p, o).unwrap();
                        }
                    }
                    // The scan runs while the other thread grows the node: it must see
                    // each chunk either not yet initialised or initialised and freed.
                    if i % 256 == 0 {
                        b.verify().unwrap();
                    }
                }
                for (p, o) in held {
                    b.free_pages(p, o).unwrap();
                }
            });
            let mut remaining = u64::MAX;
            while remaining > 0 {
                match b.deferred_init_step(0, 1024) {
                    Ok(p) => remaining = p.remaining,
                    // The allocating thread may have grown the last part on demand.
                    Err(DeferredError::Complete) => remaining = 0,
                    Err(e) => panic!("{e:?}"),
                }
                b.verify().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            worker.join().unwrap();
        });
        b.drain_all_pages();
        b.verify().unwrap();
        assert_eq!(b.total_managed(), 65536);
        assert_eq!(b.total_free(), 65536);
    }
}
