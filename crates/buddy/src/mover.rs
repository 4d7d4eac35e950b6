//! Movable operations and page migration (Linux `movable_operations`, `migrate_pages`).
//!
//! The buddy never reads or writes page contents, so it cannot move a block by itself: the
//! block's owner can. An owner registers a [`Mover`] once ([`register_mover`]) and names it
//! on each movable block it allocates ([`set_mover`]); the id lives in four spare bits of the
//! block head's descriptor, so the memmap stays at 16 bytes a frame. A movable block without
//! a mover is movable by type only: compaction skips it and counts it as such.
//!
//! ## Migrating one block ([`migrate_block`])
//! 1. Claim the block: a compare-exchange sets the head's *migrating* bit, so a second
//!    migration fails with [`MigrateError::AlreadyMigrating`] and a free of the block fails
//!    with [`FreeError::Migrating`](crate::FreeError::Migrating) until the migration ends.
//! 2. `Mover::isolate`: the owner agrees to stop using and freeing the block, or answers
//!    busy / refused.
//! 3. Take a target block of the same order under the zone lock, never inside the range the
//!    caller excludes (compaction excludes everything below its free scanner), from a movable
//!    pageblock and never by splitting a free block of a pageblock or more.
//! 4. `Mover::migrate(src, dst)`: the owner copies the contents and repoints its references.
//!    On success the target becomes the owner's block (same order, mobility, mover, and the
//!    private word the mover returns) and the source is freed to its zone, where it merges.
//!    On failure the target goes back to the free lists, `Mover::putback` returns the source
//!    to its owner, and nothing has changed.
//!
//! A [`MigrationObserver`] (one per allocator, e.g. the facade's page-owner table) hears of
//! every successful migration between steps 4 and the source's free.
//!
//! [`register_mover`]: BuddyAllocator::register_mover
//! [`set_mover`]: BuddyAllocator::set_mover
//! [`migrate_block`]: BuddyAllocator::migrate_block

use core::num::NonZeroU8;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Order, Pfn};

use crate::allocator::{BuddyAllocator, Node};
use crate::error::{MigrateError, MoverError};
use crate::freearea::ZoneLocked;
use crate::migrate::MigrateType;
use crate::page::{Flags, PageState};
use crate::zone::Zone;

/// Largest number of registered movers (ids 1..=15 fit the descriptor's four spare bits).
pub const MAX_MOVERS: usize = 15;

/// Why a mover declined to isolate or migrate a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// Not now: the owner is using the block. Migration may succeed later.
    Busy,
    /// Never: this block cannot move (pinned, or its owner lost track of it).
    Refused,
}

/// How an owner moves its blocks (Linux `movable_operations`).
///
/// Calls for one block come in the order `isolate`, then `migrate` or `putback` (or both:
/// `putback` follows a failed `migrate`), from whatever thread migrates; none is called
/// with an allocator lock held, so a mover may take its own locks.
pub trait Mover: Sync {
    /// The block `[pfn, pfn + 2^order)` with private word `private` is about to move: from
    /// `Ok` until `migrate` or `putback` returns, the owner must not free it, and must not
    /// change its contents unless `migrate` copes with that.
    fn isolate(&self, pfn: Pfn, order: Order, private: u64) -> Result<(), MoveError>;

    /// Copy the contents of `src` to `dst` (both `2^order` frames; `dst` is free memory the
    /// allocator hands over, already naming this mover) and repoint every reference the owner
    /// holds to `dst`. Returns the private word for the block at `dst` (the owner does not
    /// set it itself). From the moment the owner can reach `dst` it may use it; a free of it
    /// fails with [`FreeError::Migrating`](crate::FreeError::Migrating) until this call has
    /// returned and the allocator has recorded the private word (retry). On `Err` the owner
    /// must still be using `src` with its contents intact, and must not have kept `dst`;
    /// `putback(src)` follows.
    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError>;

    /// The migration of the isolated block at `pfn` is over without a move: the owner may
    /// use and free it again.
    fn putback(&self, pfn: Pfn, order: Order, private: u64);
}

/// Told about every migration that succeeded, after the mover moved the block and before
/// the source is freed: for bookkeeping that follows blocks by frame number, such as a
/// page-owner table. Called without allocator locks; must not allocate or free.
pub trait MigrationObserver: Sync {
    /// The block `[src, src + 2^order)` now lives at `dst`.
    fn migrated(&self, src: Pfn, dst: Pfn, order: Order);
}

/// A registered mover, as [`BuddyAllocator::register_mover`] returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MoverId(NonZeroU8);

impl MoverId {
    /// The id as stored in a descriptor (1..=[`MAX_MOVERS`]).
    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

/// Migration counters (Linux `/proc/vmstat`'s `pgmigrate_*`).
#[derive(Debug, Default)]
pub(crate) struct MigrateCounters {
    pub success: AtomicU64,
    pub fail: AtomicU64,
}

impl<'m, P: IrqControl> BuddyAllocator<'m, P> {
    /// Register `mover`; its id goes on every block it moves ([`set_mover`](Self::set_mover)).
    pub fn register_mover(&self, mover: &'m dyn Mover) -> Result<MoverId, MoverError> {
        let mut table = self.movers.write();
        let slot = table
            .iter()
            .position(Option::is_none)
            .ok_or(MoverError::TableFull)?;
        table[slot] = Some(mover);
        let id = NonZeroU8::new(slot as u8 + 1).ok_or(MoverError::TableFull)?;
        Ok(MoverId(id))
    }

    /// Install the [`MigrationObserver`]; there is one. Returns whether none was set before
    /// (an existing observer stays).
    pub fn set_migration_observer(&self, observer: &'m dyn MigrationObserver) -> bool {
        let mut slot = self.migration_observer.write();
        if slot.is_some() {
            return false;
        }
        *slot = Some(observer);
        true
    }

    fn mover(&self, id: u8) -> Option<&'m dyn Mover> {
        let slot = usize::from(id).checked_sub(1)?;
        self.movers.read().get(slot).copied().flatten()
    }

    /// Name the mover of the allocated movable block `[pfn, pfn + 2^order)` (`None`: movable
    /// by type only). Refused, changing nothing, for a block that is not an allocated movable
    /// block of that order, is being migrated, or for an unregistered id.
    pub fn set_mover(
        &self,
        pfn: Pfn,
        order: Order,
        mover: Option<MoverId>,
    ) -> Result<(), MoverError> {
        let id = mover.map_or(0, MoverId::get);
        if id != 0 && self.mover(id).is_none() {
            return Err(MoverError::UnknownMover(id));
        }
        let (node, _) = self
            .locate(pfn.as_u64())
            .ok_or(MoverError::NotMovableBlock)?;
        let d = node.mm.desc(pfn.as_u64());
        if d.flags().mt != MigrateType::Movable {
            return Err(MoverError::NotMovableBlock);
        }
        d.set_mover_id(order.get(), id)
            .map_err(|_| MoverError::NotMovableBlock)
    }

    /// The mover named on the allocated block whose head is `pfn`, if any.
    pub fn mover_of(&self, pfn: Pfn) -> Option<MoverId> {
        let (node, _) = self.locate(pfn.as_u64())?;
        let d = node.mm.desc(pfn.as_u64());
        if d.state() != PageState::Allocated {
            return None;
        }
        NonZeroU8::new(d.mover_id()).map(MoverId)
    }

    /// Move the allocated block `[pfn, pfn + 2^order)` to a free block of the same zone
    /// (module docs); returns where it went. The target is never inside `exclude` (frames
    /// `[start, end)`). Errors leave everything as it was.
    pub fn migrate_block(
        &self,
        pfn: Pfn,
        order: Order,
        exclude: Option<(Pfn, Pfn)>,
    ) -> Result<Pfn, MigrateError> {
        let (node, zone) = self
            .locate(pfn.as_u64())
            .ok_or(MigrateError::OutsideZones)?;
        let (lo, hi) = exclude.map_or((0, 0), |(a, b)| (a.as_u64(), b.as_u64()));
        let result = self.migrate_block_in(node, zone, pfn.as_u64(), order.get(), |z, o| {
            z.take_target_outside(o, lo, hi)
        });
        self.count_migration(&result);
        result.map(Pfn::new)
    }

    pub(crate) fn count_migration(&self, r: &Result<u64, MigrateError>) {
        match r {
            Ok(_) => self.migrate_counters.success.fetch_add(1, Relaxed),
            Err(_) => self.migrate_counters.fail.fetch_add(1, Relaxed),
        };
    }

    /// The migration of one block, with `target` choosing the destination under the zone
    /// lock.
    pub(crate) fn migrate_block_in(
        &self,
        node: &Node<'m>,
        zone: &Zone<'m>,
        pfn: u64,
        order: u32,
        mut target: impl FnMut(&mut ZoneLocked<'_, 'm>, u32) -> Option<u64>,
    ) -> Result<u64, MigrateError> {
        if order > self.cfg.max_order || pfn & ((1u64 << order) - 1) != 0 || !zone.contains(pfn) {
            return Err(MigrateError::NotAllocated);
        }
        let src = node.mm.desc(pfn);
        // Only a block that names a mover is claimed, so a claim never gets in the way of an
        // owner naming one (`set_mover` fails on a claimed block).
        let (_, id) = src.begin_migration(order).map_err(|(f, id, migrating)| {
            if f.state != PageState::Allocated || f.order != order {
                MigrateError::NotAllocated
            } else if migrating {
                MigrateError::AlreadyMigrating
            } else if f.mt != MigrateType::Movable {
                MigrateError::NotMovable
            } else {
                debug_assert_eq!(id, 0);
                MigrateError::NoMover
            }
        })?;
        let abort = |e| {
            src.end_migration();
            Err(e)
        };
        let Some(mover) = self.mover(id) else {
            return abort(MigrateError::NoMover);
        };
        let private = src.private();
        let (p, o) = (Pfn::new(pfn), Order::new(order));
        if let Err(e) = mover.isolate(p, o, private) {
            return abort(move_error(e));
        }
        // The target is born claimed, with the mover named: once `migrate` returns, the
        // owner may use and free it at once, so everything the buddy writes to it afterwards
        // (the private word) happens before the claim ends.
        let dst = {
            let mut z = self.lock(node, zone);
            let t = target(&mut z, order);
            if let Some(t) = t {
                node.mm
                    .desc(t)
                    .set_migration_target(order, MigrateType::Movable, id);
                node.mm
                    .tally_movable(t, order, MigrateType::Movable, z.p.pageblock_order, true);
            }
            t
        };
        let Some(dst) = dst else {
            mover.putback(p, o, private);
            return abort(MigrateError::NoTarget);
        };
        let d = node.mm.desc(dst);
        match mover.migrate(p, Pfn::new(dst), o, private) {
            Ok(new_private) => {
                d.set_private(new_private);
                if let Some(obs) = *self.migration_observer.read() {
                    obs.migrated(p, Pfn::new(dst), o);
                }
                d.end_migration();
                // Free the source straight from the migrating state: clearing the bit first
                // would let another migration claim it, and this free would then fail.
                self.free_claimed_block(node, zone, pfn, order);
                Ok(dst)
            }
            Err(e) => {
                self.free_claimed_block(node, zone, dst, order);
                mover.putback(p, o, private);
                abort(move_error(e))
            }
        }
    }

    /// Free a block this migration claimed straight to its zone (not a per-CPU list), so it
    /// merges at once.
    fn free_claimed_block(&self, node: &Node<'m>, zone: &Zone<'m>, pfn: u64, order: u32) {
        let mut z = self.lock(node, zone);
        let tail = Flags::new(PageState::Tail, 0, MigrateType::Unmovable);
        if let Ok(old) = node.mm.desc(pfn).end_migration_free(order, tail) {
            node.mm
                .tally_movable(pfn, order, old.mt, z.p.pageblock_order, false);
            let mt = z.pageblock_type(pfn);
            z.free_one_page(pfn, order, mt, false);
        }
    }

    /// `(pgmigrate_success, pgmigrate_fail)`.
    pub fn migrate_counts(&self) -> (u64, u64) {
        (
            self.migrate_counters.success.load(Relaxed),
            self.migrate_counters.fail.load(Relaxed),
        )
    }
}

fn move_error(e: MoveError) -> MigrateError {
    match e {
        MoveError::Busy => MigrateError::Busy,
        MoveError::Refused => MigrateError::Refused,
    }
}

impl ZoneLocked<'_, '_> {
    /// Whether a free block at `pfn` of `order` is a migration target: in a movable
    /// pageblock, and smaller than a pageblock (splitting a free pageblock would undo what
    /// compaction builds; Linux `suitable_migration_target`).
    fn suitable_target(&self, pfn: u64, order: u32) -> bool {
        order < self.p.pageblock_order && self.pageblock_type(pfn) == MigrateType::Movable
    }

    /// Take the free block at head `h` (order `have`, list `mt`) and keep its first
    /// `2^order` frames; the rest goes back to the free lists. Returns `h`.
    pub(crate) fn take_free_block(
        &mut self,
        h: u64,
        have: u32,
        order: u32,
        mt: MigrateType,
    ) -> u64 {
        self.del_from_free_list(h, have, mt);
        self.expand(h, order, have, mt);
        h
    }

    /// A migration target of `order` outside frames `[lo, hi)`: the smallest suitable free
    /// block of at least that order on the movable lists.
    pub(crate) fn take_target_outside(&mut self, order: u32, lo: u64, hi: u64) -> Option<u64> {
        let mt = MigrateType::Movable;
        for have in order..self.p.pageblock_order {
            let mut idx = self.fa.lists[have as usize][mt.index()].head;
            while idx != crate::page::NIL {
                let h = self.mm.pfn(idx);
                let end = h + (1u64 << have);
                if (end <= lo || h >= hi) && self.suitable_target(h, have) {
                    return Some(self.take_free_block(h, have, order, mt));
                }
                idx = self.mm.at(idx).next();
            }
        }
        None
    }

    /// Take the first suitable free block of at least `order` in the pageblock at `pb`,
    /// walking from `from` (compaction's free scanner, which resumes where it stopped).
    /// Returns the block's head (its first `2^order` frames now the caller's) and the frame
    /// to resume from (`from` itself for a pageblock passed without a walk).
    pub(crate) fn take_target_in_pageblock(
        &mut self,
        pb: u64,
        from: u64,
        order: u32,
    ) -> (Option<u64>, u64) {
        let end = pb + self.p.pageblock_pages();
        if self.pageblock_type(pb) != MigrateType::Movable || order >= self.p.pageblock_order {
            // Not a target pageblock: passed without a walk.
            return (None, from);
        }
        let mut pfn = from;
        while pfn < end {
            let f = self.mm.desc(pfn).flags();
            if f.state == PageState::Free && f.order >= order && self.suitable_target(pfn, f.order)
            {
                return (Some(self.take_free_block(pfn, f.order, order, f.mt)), pfn);
            }
            pfn += f.span();
        }
        (None, end)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use std::sync::Mutex;

    use super::*;
    use crate::testutil::{build, mib, no_pcp, TestBuddy};
    use crate::{FreeError, GfpFlags};

    /// An owner of movable blocks: each block's "contents" is a tag; migrating moves the
    /// tag. `busy_every` > 0 answers busy on every n-th isolate; `fail_every` fails every
    /// n-th migrate.
    #[derive(Default)]
    pub(crate) struct TagMover {
        pub blocks: Mutex<HashMap<u64, (u32, u64)>>,
        pub busy_every: AtomicU32,
        pub fail_every: AtomicU32,
        calls: AtomicU32,
    }

    impl TagMover {
        pub fn own(&self, pfn: Pfn, order: Order, tag: u64) {
            self.blocks
                .lock()
                .unwrap()
                .insert(pfn.as_u64(), (order.get(), tag));
        }
        fn nth(&self, every: &AtomicU32) -> bool {
            let n = every.load(Relaxed);
            n > 0 && self.calls.fetch_add(1, Relaxed) % n == n - 1
        }
    }

    impl Mover for TagMover {
        fn isolate(&self, pfn: Pfn, order: Order, _: u64) -> Result<(), MoveError> {
            match self.blocks.lock().unwrap().get(&pfn.as_u64()) {
                Some(&(o, _)) if o == order.get() => {}
                _ => return Err(MoveError::Refused),
            }
            if self.nth(&self.busy_every) {
                return Err(MoveError::Busy);
            }
            Ok(())
        }
        fn migrate(&self, src: Pfn, dst: Pfn, _: Order, private: u64) -> Result<u64, MoveError> {
            if self.nth(&self.fail_every) {
                return Err(MoveError::Busy);
            }
            let mut b = self.blocks.lock().unwrap();
            let v = b.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
            assert!(
                b.insert(dst.as_u64(), v).is_none(),
                "target {dst:?} was owned"
            );
            Ok(private + 1)
        }
        fn putback(&self, _: Pfn, _: Order, _: u64) {}
    }

    pub(crate) fn leaked_mover() -> &'static TagMover {
        std::boxed::Box::leak(std::boxed::Box::default())
    }

    pub(crate) fn free_frames(b: &TestBuddy) -> u64 {
        crate::ZoneType::ALL
            .iter()
            .filter_map(|&z| b.zone_stats(0, z))
            .map(|s| s.free)
            .sum()
    }

    fn movable(b: &TestBuddy, order: u32) -> Pfn {
        b.alloc_pages(GfpFlags::MOVABLE, Order::new(order)).unwrap()
    }

    #[test]
    fn a_migrated_block_keeps_its_owner_tag_and_mover_and_the_source_is_free() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let src = movable(&b, 2);
        m.own(src, Order::new(2), 77);
        b.set_mover(src, Order::new(2), Some(id)).unwrap();
        b.set_page_private(src, 5).unwrap();
        let free = free_frames(&b);
        let dst = b.migrate_block(src, Order::new(2), None).unwrap();
        assert_ne!(dst, src);
        assert_eq!(m.blocks.lock().unwrap().get(&dst.as_u64()), Some(&(2, 77)));
        assert_eq!(b.mover_of(dst), Some(id));
        assert_eq!(b.page_private(dst), Ok(6), "the mover's new private word");
        assert_eq!(b.allocated_block(dst), Some((dst, Order::new(2))));
        assert_eq!(b.allocated_block(src), None, "the source went back");
        assert_eq!(free_frames(&b), free);
        assert_eq!(b.migrate_counts(), (1, 0));
        b.verify().unwrap();
        b.free_pages(dst, Order::new(2)).unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn migration_refuses_what_cannot_move_and_changes_nothing() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let unmovable = b.alloc_pages(GfpFlags::KERNEL, Order::ZERO).unwrap();
        let bare = movable(&b, 0);
        let owned = movable(&b, 1);
        m.own(owned, Order::new(1), 1);
        b.set_mover(owned, Order::new(1), Some(id)).unwrap();
        assert_eq!(
            b.set_mover(unmovable, Order::ZERO, Some(id)),
            Err(MoverError::NotMovableBlock)
        );
        let snapshot = |b: &TestBuddy| (free_frames(b), b.migrate_counts());
        let before = snapshot(&b);
        let o0 = Order::ZERO;
        let cases = [
            (unmovable, o0, MigrateError::NotMovable),
            (bare, o0, MigrateError::NoMover),
            (owned, o0, MigrateError::NotAllocated),
            (Pfn::new(owned.as_u64() + 1), o0, MigrateError::NotAllocated),
            (Pfn::new(0x3000), o0, MigrateError::NotAllocated),
            (Pfn::new(1 << 40), o0, MigrateError::OutsideZones),
            (owned, Order::new(40), MigrateError::NotAllocated),
        ];
        for (pfn, order, want) in cases {
            assert_eq!(b.migrate_block(pfn, order, None), Err(want), "{pfn:?}");
        }
        // A mover that is busy, or refuses a block it does not know.
        m.busy_every.store(1, Relaxed);
        assert_eq!(
            b.migrate_block(owned, Order::new(1), None),
            Err(MigrateError::Busy)
        );
        m.busy_every.store(0, Relaxed);
        m.blocks.lock().unwrap().clear();
        assert_eq!(
            b.migrate_block(owned, Order::new(1), None),
            Err(MigrateError::Refused)
        );
        // No target outside an excluded range covering the whole zone.
        m.own(owned, Order::new(1), 1);
        let all = (Pfn::new(0), Pfn::new(u64::MAX));
        assert_eq!(
            b.migrate_block(owned, Order::new(1), Some(all)),
            Err(MigrateError::NoTarget)
        );
        let (stats, (ok, fail)) = snapshot(&b);
        assert_eq!((stats, ok), (before.0, 0));
        assert!(fail > 0);
        assert_eq!(b.allocated_block(owned), Some((owned, Order::new(1))));
        assert!(m.blocks.lock().unwrap().contains_key(&owned.as_u64()));
        b.verify().unwrap();
    }

    #[test]
    fn a_failed_migrate_returns_the_target_and_keeps_the_source() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let src = movable(&b, 0);
        m.own(src, Order::ZERO, 9);
        b.set_mover(src, Order::ZERO, Some(id)).unwrap();
        let free = free_frames(&b);
        m.fail_every.store(1, Relaxed);
        assert_eq!(
            b.migrate_block(src, Order::ZERO, None),
            Err(MigrateError::Busy)
        );
        assert_eq!(free_frames(&b), free);
        assert_eq!(b.mover_of(src), Some(id));
        assert_eq!(m.blocks.lock().unwrap().get(&src.as_u64()), Some(&(0, 9)));
        b.verify().unwrap();
    }

    /// A mover that tries to free the block it is asked to move.
    struct FreeingMover(&'static TestBuddy);

    impl Mover for FreeingMover {
        fn isolate(&self, pfn: Pfn, order: Order, _: u64) -> Result<(), MoveError> {
            assert_eq!(self.0.free_pages(pfn, order), Err(FreeError::Migrating));
            Ok(())
        }
        fn migrate(&self, _: Pfn, _: Pfn, _: Order, p: u64) -> Result<u64, MoveError> {
            Ok(p)
        }
        fn putback(&self, _: Pfn, _: Order, _: u64) {}
    }

    #[test]
    fn a_block_cannot_be_freed_while_it_migrates() {
        let b: &'static TestBuddy =
            std::boxed::Box::leak(std::boxed::Box::new(build(&[&[mib(0, 64)]], no_pcp(), 1)));
        let m: &'static FreeingMover = std::boxed::Box::leak(std::boxed::Box::new(FreeingMover(b)));
        let id = b.register_mover(m).unwrap();
        let src = movable(b, 0);
        b.set_mover(src, Order::ZERO, Some(id)).unwrap();
        let dst = b.migrate_block(src, Order::ZERO, None).unwrap();
        b.free_pages(dst, Order::ZERO).unwrap();
        b.verify().unwrap();
    }

    #[derive(Default)]
    struct Seen(Mutex<std::vec::Vec<(u64, u64, u32)>>);

    impl MigrationObserver for Seen {
        fn migrated(&self, src: Pfn, dst: Pfn, order: Order) {
            self.0
                .lock()
                .unwrap()
                .push((src.as_u64(), dst.as_u64(), order.get()));
        }
    }

    #[test]
    fn the_observer_hears_each_successful_migration_once() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let seen: &'static Seen = std::boxed::Box::leak(std::boxed::Box::default());
        assert!(b.set_migration_observer(seen));
        assert!(!b.set_migration_observer(seen), "one observer");
        let m = leaked_mover();
        let id = b.register_mover(m).unwrap();
        let src = movable(&b, 1);
        m.own(src, Order::new(1), 3);
        b.set_mover(src, Order::new(1), Some(id)).unwrap();
        m.fail_every.store(1, Relaxed);
        assert!(b.migrate_block(src, Order::new(1), None).is_err());
        assert!(
            seen.0.lock().unwrap().is_empty(),
            "a failed migration is not reported"
        );
        m.fail_every.store(0, Relaxed);
        let dst = b.migrate_block(src, Order::new(1), None).unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [(src.as_u64(), dst.as_u64(), 1)]);
    }

    #[test]
    fn the_mover_table_fills_and_unknown_ids_are_refused() {
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        for i in 1..=MAX_MOVERS {
            assert_eq!(b.register_mover(leaked_mover()).unwrap().get(), i as u8);
        }
        assert_eq!(b.register_mover(leaked_mover()), Err(MoverError::TableFull));
        let b = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let other = build(&[&[mib(0, 64)]], no_pcp(), 1);
        let foreign = other.register_mover(leaked_mover()).unwrap();
        let p = movable(&b, 0);
        assert_eq!(
            b.set_mover(p, Order::ZERO, Some(foreign)),
            Err(MoverError::UnknownMover(1))
        );
        assert_eq!(b.mover_of(p), None);
    }
}
