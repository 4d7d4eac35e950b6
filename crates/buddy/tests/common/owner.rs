//! A model owner of every live block, for the state-machine test and the fuzz target (which
//! includes this file by path): each block has a tag written into every one of its frames of
//! a simulated memory, a mobility, and — for movable blocks that name it — this owner as its
//! [`Mover`], which copies the frames on migration and records where the block went.
//!
//! The owner is the model: the allocator moves blocks behind the caller's back (compaction,
//! evacuation for unmovable requests, contiguous allocation), so the only record of where a
//! block lives is the one its mover keeps. [`Owner::check`] then holds the allocator to it:
//! every live block still holds its tag in every frame, the allocator says it is an
//! allocated block of its order with its mover and private word, and no frame is live twice.
//!
//! The mover misbehaves on request ([`Behaviour`]): busy on every n-th isolate, a failed
//! migrate on every n-th call, a migrate that copies and then fails anyway, or a flat
//! refusal. It also checks the allocator's side of the contract: it is asked only about its
//! own blocks, with their order and private word, calls come in the order isolate, then
//! migrate or putback, and a target is never live memory.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use mmkit_addr::{IrqControl, Order, Pfn};
use mmkit_buddy::{BuddyAllocator, DeferredError, MoveError, Mover, MoverId, ResizeError};

/// One live block, as its owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Written into every frame of the block; unique over a run.
    pub tag: u64,
    /// Block order.
    pub order: u32,
    /// Allocated as movable.
    pub movable: bool,
    /// Names this owner as its mover.
    pub mover: bool,
    /// The page-private word of the head, as the owner last set it (or its mover returned).
    pub private: u64,
}

/// How the mover misbehaves; a zero `*_every` never triggers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// `isolate` answers `Busy` on every n-th call.
    pub busy_every: u32,
    /// `migrate` fails with `Busy`, copying nothing, on every n-th call.
    pub fail_every: u32,
    /// `migrate` copies the frames to the target and then fails with `Busy` on every n-th
    /// call (the owner keeps using the source).
    pub copy_fail_every: u32,
    /// `isolate` refuses every block.
    pub refuse: bool,
}

/// What the mover has done, for the caller to compare before and after a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoverCounts {
    /// Successful migrations.
    pub moved: u64,
    /// Isolations the mover declined (busy or refused).
    pub declined: u64,
    /// Migrations the mover failed (with or without a copy).
    pub failed: u64,
    /// `putback` calls.
    pub putbacks: u64,
}

struct State {
    /// Head frame -> block.
    blocks: BTreeMap<u64, Live>,
    /// Heads the mover isolated and has not yet migrated or put back.
    isolated: BTreeSet<u64>,
    /// Frame contents, indexed by frame number.
    memory: Vec<u64>,
    behaviour: Behaviour,
    isolate_calls: u64,
    migrate_calls: u64,
    counts: MoverCounts,
    /// (source, target, order) of every migration since the last `take_moves`.
    moves: Vec<(u64, u64, u32)>,
    next_tag: u64,
}

/// The owner of every live block (module docs).
pub struct Owner {
    state: Mutex<State>,
}

fn nth(calls: u64, every: u32) -> bool {
    every > 0 && calls % u64::from(every) == u64::from(every) - 1
}

impl Owner {
    /// An owner of a machine with frames `0..frames`.
    pub fn new(frames: u64) -> Self {
        Owner {
            state: Mutex::new(State {
                blocks: BTreeMap::new(),
                isolated: BTreeSet::new(),
                memory: vec![0; frames as usize],
                behaviour: Behaviour::default(),
                isolate_calls: 0,
                migrate_calls: 0,
                counts: MoverCounts::default(),
                moves: Vec::new(),
                next_tag: 1,
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change how the mover misbehaves.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.st().behaviour = b;
    }

    /// The migrations since the last call: (source, target, order).
    pub fn take_moves(&self) -> Vec<(u64, u64, u32)> {
        std::mem::take(&mut self.st().moves)
    }

    /// What the mover has done so far.
    pub fn counts(&self) -> MoverCounts {
        self.st().counts
    }

    /// Take a block the allocator just handed out: it must not overlap a live block. Writes
    /// a fresh tag into its frames and returns the record (private word = tag; the caller
    /// stores it with `set_page_private`).
    pub fn adopt(&self, pfn: u64, order: u32, movable: bool) -> Live {
        let mut st = self.st();
        let end = pfn + (1 << order);
        assert_eq!(pfn % (1 << order), 0, "{pfn:#x}/{order} misaligned");
        if let Some((&h, l)) = st.blocks.range(..end).next_back() {
            assert!(
                h + (1 << l.order) <= pfn,
                "{pfn:#x}/{order} handed out while {h:#x}/{} is live",
                l.order
            );
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        for f in pfn..end {
            st.memory[f as usize] = tag;
        }
        let live = Live {
            tag,
            order,
            movable,
            mover: false,
            private: tag,
        };
        st.blocks.insert(pfn, live);
        live
    }

    /// Give up the block at `pfn` (about to be freed); it must still hold its tag.
    pub fn release(&self, pfn: u64) -> Live {
        let mut st = self.st();
        let live = st.blocks.remove(&pfn).expect("release of a block not live");
        assert!(
            holds(&st.memory, pfn, &live),
            "block {pfn:#x} lost its contents"
        );
        live
    }

    /// Record whether the block at `pfn` names this mover.
    pub fn set_mover(&self, pfn: u64, on: bool) {
        self.st().blocks.get_mut(&pfn).expect("not live").mover = on;
    }

    /// Every live block, head -> record.
    pub fn blocks(&self) -> BTreeMap<u64, Live> {
        self.st().blocks.clone()
    }

    /// The `i % len`-th live block.
    pub fn pick(&self, i: usize) -> Option<(u64, Live)> {
        let st = self.st();
        let n = st.blocks.len();
        if n == 0 {
            return None;
        }
        st.blocks.iter().nth(i % n).map(|(&p, &l)| (p, l))
    }

    /// Where the block tagged `tag` lives now.
    pub fn find(&self, tag: u64) -> Option<u64> {
        self.st()
            .blocks
            .iter()
            .find(|(_, l)| l.tag == tag)
            .map(|(&p, _)| p)
    }

    /// Whether `[pfn, pfn + 2^order)` overlaps a live block.
    pub fn overlaps(&self, pfn: u64, order: u32) -> bool {
        self.overlaps_range(pfn, pfn + (1 << order))
    }

    /// Whether frames `[start, end)` overlap a live block.
    pub fn overlaps_range(&self, start: u64, end: u64) -> bool {
        let st = self.st();
        st.blocks
            .range(..end)
            .next_back()
            .is_some_and(|(&h, l)| h + (1 << l.order) > start)
    }

    /// Frames in live blocks.
    pub fn live_frames(&self) -> u64 {
        self.st().blocks.values().map(|l| 1u64 << l.order).sum()
    }

    /// Hold the allocator to the model: no migration left half done, no frame live twice,
    /// every live block holds its tag in every frame, and the allocator agrees it is an
    /// allocated block of its order, naming mover `id` exactly when the model says so, with
    /// the private word its owner expects.
    pub fn check<P: IrqControl>(&self, b: &BuddyAllocator<'_, P>, id: MoverId) {
        let st = self.st();
        assert!(st.isolated.is_empty(), "isolated {:x?} left", st.isolated);
        let mut end = 0;
        for (&pfn, l) in &st.blocks {
            assert!(pfn >= end, "{pfn:#x} is live twice");
            end = pfn + (1 << l.order);
            assert!(holds(&st.memory, pfn, l), "{pfn:#x} lost its contents");
            let (p, o) = (Pfn::new(pfn), Order::new(l.order));
            assert_eq!(b.allocated_block(p), Some((p, o)), "{pfn:#x} {l:?}");
            assert_eq!(b.mover_of(p), l.mover.then_some(id), "{pfn:#x} {l:?}");
            assert_eq!(b.page_private(p), Ok(l.private), "{pfn:#x} {l:?}");
        }
    }
}

fn holds(memory: &[u64], pfn: u64, l: &Live) -> bool {
    memory[pfn as usize..(pfn + (1 << l.order)) as usize]
        .iter()
        .all(|&v| v == l.tag)
}

impl Mover for Owner {
    fn isolate(&self, pfn: Pfn, order: Order, private: u64) -> Result<(), MoveError> {
        let mut st = self.st();
        let p = pfn.as_u64();
        let l = *st
            .blocks
            .get(&p)
            .unwrap_or_else(|| panic!("asked to isolate {p:#x}, not a live block"));
        assert!(l.mover, "asked to isolate {p:#x}, which names no mover");
        assert_eq!((l.order, l.private), (order.get(), private), "{p:#x}");
        assert!(st.isolated.insert(p), "{p:#x} isolated twice");
        st.isolate_calls += 1;
        let busy = nth(st.isolate_calls, st.behaviour.busy_every);
        if st.behaviour.refuse || busy {
            st.isolated.remove(&p);
            st.counts.declined += 1;
            return Err(if busy {
                MoveError::Busy
            } else {
                MoveError::Refused
            });
        }
        Ok(())
    }

    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError> {
        let mut st = self.st();
        let (s, d, o) = (src.as_u64(), dst.as_u64(), order.get());
        assert!(st.isolated.contains(&s), "migrate of {s:#x} not isolated");
        let l = st.blocks[&s];
        assert_eq!((l.order, l.private), (o, private), "{s:#x}");
        assert_eq!(d % (1 << o), 0, "target {d:#x}/{o} misaligned");
        let clash = st
            .blocks
            .range(..d + (1 << o))
            .next_back()
            .filter(|(&h, hl)| h + (1 << hl.order) > d);
        assert!(clash.is_none(), "target {d:#x}/{o} is live: {clash:?}");
        assert!(holds(&st.memory, s, &l), "{s:#x} lost its contents");
        st.migrate_calls += 1;
        let (calls, bh) = (st.migrate_calls, st.behaviour);
        let copy =
            |m: &mut Vec<u64>| m.copy_within(s as usize..(s + (1 << o)) as usize, d as usize);
        if nth(calls, bh.fail_every) {
            st.counts.failed += 1;
            return Err(MoveError::Busy);
        }
        copy(&mut st.memory);
        if nth(calls, bh.copy_fail_every) {
            st.counts.failed += 1;
            return Err(MoveError::Busy);
        }
        st.isolated.remove(&s);
        st.blocks.remove(&s);
        // A new private word, so a caller that dropped the mover's answer would be caught.
        let moved = Live {
            private: l.private.wrapping_add(1 << 32),
            ..l
        };
        st.blocks.insert(d, moved);
        st.counts.moved += 1;
        st.moves.push((s, d, o));
        Ok(moved.private)
    }

    fn putback(&self, pfn: Pfn, order: Order, private: u64) {
        let mut st = self.st();
        let p = pfn.as_u64();
        assert!(st.isolated.remove(&p), "putback of {p:#x} not isolated");
        let l = st.blocks[&p];
        assert_eq!((l.order, l.private), (order.get(), private), "{p:#x}");
        st.counts.putbacks += 1;
    }
}

/// What a refused call must leave as it was: the free and per-CPU counts and the
/// `/proc/buddyinfo` and `/proc/pagetypeinfo` reports.
#[derive(Debug, PartialEq, Eq)]
pub struct FreeSnapshot {
    /// Frames on the free lists.
    pub free: u64,
    /// Frames on per-CPU lists.
    pub pcp: u64,
    buddyinfo: String,
    pagetypeinfo: String,
}

impl FreeSnapshot {
    /// Take one.
    pub fn of<P: IrqControl>(b: &BuddyAllocator<'_, P>) -> Self {
        FreeSnapshot {
            free: b.total_free(),
            pcp: b.total_pcp(),
            buddyinfo: b.buddyinfo().to_string(),
            pagetypeinfo: b.pagetypeinfo().to_string(),
        }
    }

    /// Assert `b` has as many free frames (listed or cached per CPU) as this snapshot saw:
    /// for a failed contiguous allocation, which keeps the blocks it already migrated where
    /// they went, so the free lists' layout may differ.
    pub fn assert_same_free<P: IrqControl>(&self, b: &BuddyAllocator<'_, P>, what: &str) {
        let now = Self::of(b);
        assert_eq!(now.free + now.pcp, self.free + self.pcp, "{what}");
    }

    /// Assert `b` is as this snapshot saw it. A call that drained per-CPU lists (isolation
    /// does, before it finds the range busy) changed where free frames are listed, not how
    /// many there are: then only the sum must agree.
    pub fn assert_unchanged<P: IrqControl>(&self, b: &BuddyAllocator<'_, P>, what: &str) {
        let now = Self::of(b);
        if now.pcp == self.pcp {
            assert_eq!(&now, self, "{what} changed the free lists");
        } else {
            assert!(now.pcp < self.pcp, "{what} filled per-CPU lists");
            assert_eq!(now.free + now.pcp, self.free + self.pcp, "{what}");
        }
    }
}

/// One `deferred_init_step(node, frames)` held to its contract, for the state-machine test
/// and the fuzz target: a step that runs made progress on a node with deferred frames (the
/// boot had `deferred` on); a refused one names the right reason and changed nothing.
pub fn deferred_step_checked<P: IrqControl>(
    b: &BuddyAllocator<'_, P>,
    node: usize,
    frames: u64,
    deferred: bool,
) {
    let before = FreeSnapshot::of(b);
    let info = b.deferred_info(node);
    match b.deferred_init_step(node, frames) {
        Ok(p) => {
            let info = info.expect("a step on a node that exists");
            assert!(deferred && frames > 0 && info.spanned > 0);
            assert_eq!(p.remaining, b.deferred_info(node).unwrap().spanned);
            assert!(p.initialised >= frames.min(info.spanned), "{p:?}");
            assert!(p.freed <= info.free, "{p:?} {info:?}");
        }
        Err(e) => {
            let want = match info {
                None => DeferredError::NoSuchNode(node),
                Some(_) if frames == 0 => DeferredError::NoFrames,
                Some(i) => {
                    assert_eq!(i.spanned, 0, "{e:?}");
                    DeferredError::Complete
                }
            };
            assert_eq!(e, want);
            before.assert_unchanged(b, "refused deferred step");
        }
    }
}

/// One `resize_pages_exact` of a fresh exact allocation of `nr` frames at `pfn` to `new_nr`,
/// held to its contract, for the state-machine test and the fuzz target: a count whose first
/// piece is larger than the allocation's is refused and changes nothing; a resize that works
/// moves exactly the difference between the free lists and the allocation; one that cannot
/// stay in place (only growth may fail) changes nothing. Returns the allocation's size now.
pub fn resize_exact_checked<P: IrqControl>(
    b: &BuddyAllocator<'_, P>,
    pfn: Pfn,
    nr: u64,
    new_nr: u64,
) -> u64 {
    let before = b.total_free() + b.total_pcp();
    let wrong = (nr + 1).next_power_of_two();
    assert!(matches!(
        b.resize_pages_exact(pfn, wrong, new_nr),
        Err(ResizeError::Free(_))
    ));
    assert_eq!(b.total_free() + b.total_pcp(), before);
    match b.resize_pages_exact(pfn, nr, new_nr) {
        Ok(()) => {
            assert_eq!(b.total_free() + b.total_pcp() + new_nr, before + nr);
            new_nr
        }
        Err(e) => {
            assert_eq!(e, ResizeError::NotInPlace);
            assert!(new_nr > nr, "shrinking always works");
            assert_eq!(b.total_free() + b.total_pcp(), before);
            nr
        }
    }
}
