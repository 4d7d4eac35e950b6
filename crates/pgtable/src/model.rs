//! A reference model of a page table and a replay machine, shared by the proptest state
//! machine and the fuzz target (host only, feature `std`).
//!
//! The model is one virtual page → (physical page, attributes). [`run`] replays a sequence of
//! [`Op`]s (map / unmap / protect / frame limits, and calls with extreme addresses and lengths
//! outside the window) on a fresh table of a [`HostFormat`] inside a window of two blocks, and
//! after every step invalidates the flush token through the software MMU, runs `verify()`,
//! and checks every page of the window three ways: the model, `translate`, and a read and a
//! write through the software MMU (whose TLB keeps whatever a missing or too-narrow flush
//! left behind; most runs tag the table and the MMU with an address-space identifier). Errors must be the ones the model predicts and leave everything unchanged;
//! running out of frames is allowed only under a limit. At the end the table is destroyed and
//! the arena must have every frame back. Any disagreement panics with the operation that
//! caused it.
//!
//! [`run_shared`] replays [`ShareOp`]s on two tables over one arena with share counts, so
//! fork-style copies share read-only leaf tables and later writes on either side un-share
//! them: both sides are checked against their own models after every step (cursor,
//! `translate`, `verify`, the software MMU), and tearing both down must free every frame
//! exactly once.

extern crate std;

use std::boxed::Box;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};

use crate::arch::aarch64::{Aarch64, Granule};
use crate::arch::x86_64::X86_64;
use crate::host::{ArenaRef, TableArena};
use crate::softmmu::aarch64::Aarch64Walker;
use crate::softmmu::x86_64::X86Walker;
use crate::softmmu::{Access, Fault, Mode, SoftMmu, WalkCache, Walked, Walker};
use crate::{
    AttrChange, Attrs, CachePolicy, Flush, LeafUpdate, MapError, MapSize, PageTable, PagingFormat,
    ProtectError, UnmapError, UpdateError,
};

/// Physical base of test arenas (1 GiB, so table frames never collide with low test PAs).
pub const ARENA_BASE: u64 = 0x4000_0000;

/// A format the tests can build a software MMU for.
pub trait HostFormat: PagingFormat + Copy + core::fmt::Debug {
    /// A walker for a table of this format rooted at `root`.
    fn walker<'m>(&self, arena: &'m TableArena, root: PhysAddr) -> Box<dyn Walker + 'm>;
    /// Whether the hardware manages accessed/dirty (x86).
    fn hw_ad(&self) -> bool;
    /// A VA near which tests work.
    fn test_base(&self) -> u64;
}

impl HostFormat for X86_64 {
    fn walker<'m>(&self, arena: &'m TableArena, root: PhysAddr) -> Box<dyn Walker + 'm> {
        Box::new(X86Walker::new(
            arena.memory(),
            root,
            self.levels().len() as u32,
        ))
    }
    fn hw_ad(&self) -> bool {
        true
    }
    fn test_base(&self) -> u64 {
        if self.va_bits() == 57 {
            0xff00_0000_0000_0000
        } else {
            0xffff_8000_0000_0000
        }
    }
}

impl HostFormat for Aarch64 {
    fn walker<'m>(&self, arena: &'m TableArena, root: PhysAddr) -> Box<dyn Walker + 'm> {
        let r = Some((root, *self));
        match self.half() {
            VaHalf::Lower => Box::new(Aarch64Walker::new(arena.memory(), r, None)),
            VaHalf::Upper => Box::new(Aarch64Walker::new(arena.memory(), None, r)),
        }
    }
    fn hw_ad(&self) -> bool {
        self.hw_access_dirty()
    }
    fn test_base(&self) -> u64 {
        match self.half() {
            VaHalf::Lower => 1 << 32,
            VaHalf::Upper => {
                VirtAddr::sign_extend(1 << (self.va_bits() - 1), self.va_bits()).as_u64()
            }
        }
    }
}

impl Walker for Box<dyn Walker + '_> {
    fn walk_cached(
        &self,
        va: u64,
        access: Access,
        mode: Mode,
        update: bool,
        psc: Option<&mut WalkCache>,
    ) -> Result<Walked, Fault> {
        (**self).walk_cached(va, access, mode, update, psc)
    }
    fn shifts(&self) -> Vec<u32> {
        (**self).shifts()
    }
}

/// Every format configuration the crate supports (a representative VA width set), each
/// granule's 48-bit halves also with hardware access/dirty management (FEAT_HAFDBS), and the
/// 4 and 16 KiB granules with FEAT_LPA2 at 48 and 52 bits.
pub fn all_aarch64() -> Vec<Aarch64> {
    let mut v = Vec::new();
    for g in Granule::ALL {
        let mut widths = vec![39, 42, 47, 48];
        if g == Granule::K64 {
            widths.push(52);
        }
        for w in widths {
            for half in [VaHalf::Lower, VaHalf::Upper] {
                let f = Aarch64::new(g, w, half).unwrap();
                v.push(f);
                if w == 48 {
                    v.push(f.with_hw_access_dirty(true));
                }
            }
        }
        // FEAT_LPA2: the 52-bit layout at 48 and 52 bits (4 KiB: five levels at 52).
        if g != Granule::K64 {
            for w in [48, 52] {
                for half in [VaHalf::Lower, VaHalf::Upper] {
                    v.push(Aarch64::new_lpa2(g, w, half).unwrap());
                }
            }
        }
    }
    v
}

/// The x86 formats.
pub fn all_x86() -> [X86_64; 2] {
    [X86_64::FOUR_LEVEL, X86_64::FIVE_LEVEL]
}

/// An arena sized for `f`'s granule.
pub fn arena_for<F: PagingFormat>(f: &F, frames: usize) -> TableArena {
    TableArena::new(PhysAddr::new(ARENA_BASE), f.granule(), frames)
}

/// A table over `arena`.
pub fn table<'a, F: PagingFormat>(
    f: F,
    arena: &'a TableArena,
) -> PageTable<F, ArenaRef<'a>, ArenaRef<'a>> {
    PageTable::new(f, arena.handle(), arena.handle()).expect("root frame")
}

/// The software MMU for `pt`.
pub fn mmu_for<'a, F: HostFormat>(
    pt: &PageTable<F, ArenaRef<'a>, ArenaRef<'a>>,
    arena: &'a TableArena,
) -> SoftMmu<Box<dyn Walker + 'a>> {
    SoftMmu::new(pt.format().walker(arena, pt.root()))
}

/// Leaf sizes of a format, smallest first.
pub fn sizes_of<F: PagingFormat>(f: &F) -> Vec<PageSize> {
    let mut v: Vec<_> = f.levels().iter().filter_map(|l| l.leaf).collect();
    v.sort();
    v
}

/// Attribute sets the machine maps with (index 5 is invalid: not readable).
pub const ATTRS: [Attrs; 7] = [
    Attrs::KERNEL_RW,
    Attrs::KERNEL_RO,
    Attrs::KERNEL_RX,
    Attrs::USER_RW,
    Attrs::USER_RX,
    Attrs::WRITE,
    Attrs::USER_RW.union(Attrs::SW2).difference(Attrs::ACCESSED),
];

/// The attribute change number `i` the machine protects with (some are invalid).
pub fn change(i: u8) -> AttrChange {
    match i % 8 {
        0 => AttrChange::flags(Attrs::empty(), Attrs::WRITE),
        1 => AttrChange::flags(Attrs::WRITE | Attrs::DIRTY, Attrs::empty()),
        2 => AttrChange::flags(Attrs::SW0, Attrs::SW2),
        3 => AttrChange::flags(Attrs::empty(), Attrs::ACCESSED),
        4 => AttrChange {
            cache: Some(CachePolicy::WriteCombining),
            ..AttrChange::flags(Attrs::ACCESSED, Attrs::empty())
        },
        5 => AttrChange::replace(Attrs::USER_RX),
        6 => AttrChange::flags(Attrs::empty(), Attrs::READ),
        _ => AttrChange {
            pkey: Some(3),
            ..AttrChange::flags(Attrs::empty(), Attrs::empty())
        },
    }
}

/// One step of the machine. Pages count granules from the window base; every field is
/// reduced into range by [`run`], so any value is a valid step.
#[derive(Debug, Clone)]
pub enum Op {
    /// Map `pages` pages at `start` to physical page `pa_page` with `ATTRS[attrs]`, at the
    /// largest sizes or (with `forced`) exactly the format's size number `forced`.
    Map {
        /// First page.
        start: u64,
        /// Number of pages.
        pages: u64,
        /// First physical page (counted from 4 GiB).
        pa_page: u64,
        /// Index into [`ATTRS`].
        attrs: u8,
        /// Index into the format's leaf sizes, smallest first.
        forced: Option<u8>,
    },
    /// Unmap `pages` pages at `start`.
    Unmap {
        /// First page.
        start: u64,
        /// Number of pages.
        pages: u64,
    },
    /// Apply [`change`]`(change)` to `pages` pages at `start`.
    Protect {
        /// First page.
        start: u64,
        /// Number of pages.
        pages: u64,
        /// Which change.
        change: u8,
    },
    /// Allow this many more table frames than are in use (`None`: no limit).
    Limit(Option<u8>),
    /// Rewrite the leaves overlapping `pages` pages at `start` with the mutating cursor
    /// ([`PageTable::update_leaves`](crate::PageTable::update_leaves)), each as
    /// [`update_rule`]`(rule, leaf)` answers.
    Update {
        /// First page.
        start: u64,
        /// Number of pages.
        pages: u64,
        /// Which rule.
        rule: u8,
    },
    /// Call range operation `op` (map, unmap, protect, clear accessed, walk, cursor, mutating
    /// cursor, in that order, taken modulo 7) with raw extreme arguments: `va`, `len` and `pa` index (modulo
    /// their length) [`extreme_vas`], [`extreme_lens`] and [`extreme_pas`]. Skipped when the
    /// range meets the window; otherwise nothing is mapped there, so whatever the call
    /// returns, the table must be as before (a map that succeeds is unmapped again).
    Extreme {
        /// Which operation.
        op: u8,
        /// Index of the virtual address.
        va: u8,
        /// Index of the length.
        len: u8,
        /// Index of the physical address.
        pa: u8,
    },
}

/// What the mutating cursor does to leaf `t` under rule `rule`: a pure function of the
/// leaf, so the model can predict it. Rules cover every [`LeafUpdate`] answer, mixtures of
/// them keyed by the leaf's address, and invalid answers (unreadable attributes, a remap
/// target not aligned to a huge leaf).
pub fn update_rule(rule: u8, t: &crate::Translation) -> LeafUpdate {
    let size = t.size.bytes();
    let nth = t.page_va.as_u64() / size;
    match rule % 6 {
        0 => LeafUpdate::Attrs(change(rule / 6).apply(t.attrs())),
        1 if nth % 2 == 0 => LeafUpdate::Unmap,
        1 => LeafUpdate::Keep,
        2 => LeafUpdate::Remap(PhysAddr::new(t.page_pa.as_u64() + 2 * size), t.attrs()),
        // W^X: writable leaves lose execute, the others become read-only.
        3 if t.attrs().contains(Attrs::WRITE) => {
            LeafUpdate::Attrs(t.attrs() - Attrs::KERNEL_EXEC - Attrs::USER_EXEC)
        }
        3 => LeafUpdate::Attrs(t.attrs() - Attrs::WRITE),
        4 => match nth % 3 {
            0 => LeafUpdate::Unmap,
            1 => LeafUpdate::Attrs(ATTRS[(rule / 6) as usize % ATTRS.len()]),
            _ => LeafUpdate::Keep,
        },
        // A remap by one granule: misaligned for any leaf larger than a granule.
        _ => LeafUpdate::Remap(
            PhysAddr::new(t.page_pa.as_u64() + (1 << t.size.shift().min(12)) * 16),
            t.attrs(),
        ),
    }
}

/// Virtual addresses at the edges of the 64-bit space and of `f`'s halves: 0, 1, one granule,
/// the last granules below and at the lower half's end and the upper half's start, the last
/// granules of the space, `u64::MAX - 1` and `u64::MAX`.
pub fn extreme_vas<F: PagingFormat>(f: &F) -> Vec<u64> {
    let g = f.granule().bytes();
    let top = f.levels()[0];
    let va_bits = top.shift + top.entries().trailing_zeros();
    let top_lower = (1u64 << va_bits) - g;
    let bottom_upper = VirtAddr::sign_extend(1 << (va_bits - 1), va_bits).as_u64();
    vec![
        0,
        1,
        g,
        top_lower,
        top_lower + g,
        (1u64 << (va_bits - 1)) - g,
        1u64 << (va_bits - 1),
        bottom_upper,
        bottom_upper - g,
        u64::MAX - 2 * g + 1,
        u64::MAX - g + 1,
        u64::MAX - 1,
        u64::MAX,
    ]
}

/// Lengths at the extremes for granule `g`: 0, 1, one and two granules, one byte short of a
/// granule, and the largest (aligned and not).
pub fn extreme_lens(g: u64) -> [u64; 9] {
    [
        0,
        1,
        g,
        2 * g,
        g - 1,
        u64::MAX - 2 * g + 1,
        u64::MAX - g + 1,
        u64::MAX - 1,
        u64::MAX,
    ]
}

/// Physical addresses at the extremes for granule `g`: 0, one granule, the edge of the 52-bit
/// physical space, and the top of the 64-bit space.
pub fn extreme_pas(g: u64) -> [u64; 6] {
    [0, g, (1 << 52) - g, 1 << 52, u64::MAX - g + 1, u64::MAX]
}

/// What the model says an operation must do.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok,
    Unaligned,
    BadAttrs,
    Conflict,
    NotMapped,
}

/// The reference model.
pub type Model = BTreeMap<u64, (u64, Attrs)>;

/// Replay `ops` on a fresh table of format `f`; panics on any disagreement.
pub fn run<F: HostFormat>(f: F, ops: &[Op]) {
    let g = f.granule().bytes();
    let sizes = sizes_of(&f);
    let block_pages = sizes[1].bytes() / g;
    let window = 2 * block_pages;
    let base = f.test_base();
    let pa_base = 0x1_0000_0000u64;
    let arena = arena_for(&f, 256);
    // Even-length runs reach the tables through the arena's linear window, odd-length ones
    // through `phys_to_virt` calls (a table takes the window once, when it is created): both
    // paths must agree with the model.
    arena.set_linear_window(ops.len() % 2 == 0);
    let mut pt = table(f, &arena);
    let mut mmu = mmu_for(&pt, &arena);
    // Two runs in three give the table an address-space identifier (the MMU runs in it, so
    // ASID-scoped tokens must still reach every stale entry), one in three none.
    if ops.len() % 3 != 0 {
        let asid = crate::Asid(ops.len() as u16 % 5 + 1);
        pt.set_asid(Some(asid));
        mmu.set_asid(asid);
    }
    let mut model: Model = BTreeMap::new();
    let mut limited = false;
    let ad = if f.hw_ad() {
        Attrs::ACCESSED | Attrs::DIRTY
    } else {
        Attrs::empty()
    };

    let (vas, lens, pas) = (extreme_vas(&f), extreme_lens(g), extreme_pas(g));
    let clamp = |start: u64, pages: u64| {
        let start = start % window;
        (start, pages.clamp(1, window - start))
    };
    for (step, op) in ops.iter().enumerate() {
        let op = &match *op {
            Op::Map {
                start,
                pages,
                pa_page,
                attrs,
                forced,
            } => {
                let (start, pages) = clamp(start, pages);
                Op::Map {
                    start,
                    pages,
                    pa_page: pa_page % (1 << 24),
                    attrs: attrs % ATTRS.len() as u8,
                    forced,
                }
            }
            Op::Unmap { start, pages } => {
                let (start, pages) = clamp(start, pages);
                Op::Unmap { start, pages }
            }
            Op::Protect {
                start,
                pages,
                change,
            } => {
                let (start, pages) = clamp(start, pages);
                Op::Protect {
                    start,
                    pages,
                    change,
                }
            }
            Op::Limit(l) => Op::Limit(l.map(|n| n % 4)),
            Op::Update { start, pages, rule } => {
                let (start, pages) = clamp(start, pages);
                Op::Update { start, pages, rule }
            }
            Op::Extreme { op, va, len, pa } => {
                let va = vas[va as usize % vas.len()];
                let len = lens[len as usize % lens.len()];
                let pa = pas[pa as usize % pas.len()];
                let last = va.saturating_add(len.saturating_sub(1));
                let window_last = base + (window * g - 1);
                if len > 0 && va <= window_last && last >= base {
                    continue;
                }
                extreme_step(&mut pt, &mut mmu, op, va, len, pa);
                pt.verify()
                    .unwrap_or_else(|e| panic!("after {op:?} at {va:#x}+{len:#x}: {e:?}"));
                continue;
            }
        };
        let (outcome, expect): (Result<crate::Flush, Expect>, Expect) = match *op {
            Op::Extreme { .. } => unreachable!("handled above"),
            Op::Limit(l) => {
                limited = l.is_some();
                arena.set_limit(l.map_or(usize::MAX, |n| arena.outstanding() + n as usize));
                continue;
            }
            Op::Map {
                start,
                pages,
                pa_page,
                attrs,
                forced,
            } => {
                let size = forced.map(|i| sizes[i as usize % sizes.len()]);
                let align = size.map_or(1, |s| s.bytes() / g);
                let a = ATTRS[attrs as usize];
                let expect = if start % align != 0 || pages % align != 0 || pa_page % align != 0 {
                    Expect::Unaligned
                } else if f.normalize(a).is_err() {
                    Expect::BadAttrs
                } else if model.range(start..start + pages).next().is_some() {
                    Expect::Conflict
                } else {
                    Expect::Ok
                };
                let r = pt.map(
                    VirtAddr::new(base + start * g),
                    PhysAddr::new(pa_base + pa_page * g),
                    pages * g,
                    a,
                    size.map_or(MapSize::Largest, MapSize::Exactly),
                );
                let r = r.map_err(|e| match e {
                    MapError::Unaligned(_) => Expect::Unaligned,
                    MapError::BadAttrs(_) => Expect::BadAttrs,
                    MapError::AlreadyMapped(_) | MapError::OverlapsHugeMapping(..) => {
                        Expect::Conflict
                    }
                    MapError::OutOfFrames => Expect::Ok,
                    e => panic!("unexpected {e:?}"),
                });
                if r.is_ok() {
                    let n = f.normalize(a).unwrap();
                    for p in 0..pages {
                        model.insert(start + p, (pa_page + p, n));
                    }
                }
                (r, expect)
            }
            Op::Unmap { start, pages } => {
                let r = pt
                    .unmap(VirtAddr::new(base + start * g), pages * g)
                    .map_err(|e| match e {
                        UnmapError::OutOfFrames => Expect::Ok,
                        e => panic!("unexpected {e:?}"),
                    });
                if r.is_ok() {
                    for p in start..start + pages {
                        model.remove(&p);
                    }
                }
                (r, Expect::Ok)
            }
            Op::Update { start, pages, rule } => {
                // The leaves the cursor will visit, as the table has them now (translate has
                // been checked against the model after the last step).
                let leaves: Vec<crate::Translation> = pt
                    .cursor(VirtAddr::new(base + start * g), pages * g)
                    .unwrap()
                    .collect();
                let mut expect = Expect::Ok;
                let mut next = model.clone();
                for t in &leaves {
                    let first = (t.page_va.as_u64() - base) / g;
                    let n = t.size.bytes() / g;
                    let (pa, a) = match update_rule(rule, t) {
                        LeafUpdate::Keep => continue,
                        LeafUpdate::Unmap => {
                            for p in first..first + n {
                                next.remove(&p);
                            }
                            continue;
                        }
                        LeafUpdate::Attrs(a) => (t.page_pa.as_u64(), a),
                        LeafUpdate::Remap(pa, a) => (pa.as_u64(), a),
                    };
                    if pa % t.size.bytes() != 0 {
                        expect = Expect::Unaligned;
                        break;
                    }
                    let Ok(a) = f.normalize(a) else {
                        expect = Expect::BadAttrs;
                        break;
                    };
                    for k in 0..n {
                        next.insert(first + k, ((pa - pa_base) / g + k, a));
                    }
                }
                let r = pt
                    .update_leaves(VirtAddr::new(base + start * g), pages * g, |t| {
                        update_rule(rule, t)
                    })
                    .map_err(|e| match e {
                        UpdateError::BadRemap(..) => Expect::Unaligned,
                        UpdateError::BadAttrs(..) => Expect::BadAttrs,
                        e => panic!("unexpected {e:?}"),
                    });
                if r.is_ok() {
                    model = next;
                }
                (r, expect)
            }
            Op::Protect {
                start,
                pages,
                change: c,
            } => {
                let ch = change(c);
                let mut expect = Expect::Ok;
                for p in start..start + pages {
                    match model.get(&p) {
                        None => {
                            expect = Expect::NotMapped;
                            break;
                        }
                        Some(&(_, old)) if f.normalize(ch.apply(old)).is_err() => {
                            expect = Expect::BadAttrs;
                            break;
                        }
                        _ => {}
                    }
                }
                let r = pt
                    .protect(VirtAddr::new(base + start * g), pages * g, ch)
                    .map_err(|e| match e {
                        ProtectError::NotMapped(_) => Expect::NotMapped,
                        ProtectError::BadAttrs(_) => Expect::BadAttrs,
                        ProtectError::OutOfFrames => Expect::Ok,
                        e => panic!("unexpected {e:?}"),
                    });
                if r.is_ok() {
                    for p in start..start + pages {
                        let e = model.get_mut(&p).unwrap();
                        e.1 = f.normalize(ch.apply(e.1)).unwrap();
                    }
                }
                (r, expect)
            }
        };
        match outcome {
            Ok(flush) => {
                assert_eq!(expect, Expect::Ok, "{op:?}");
                let freed = flush.invalidate(&mut mmu);
                pt.free_tables(freed).unwrap();
            }
            // Running out of frames is only allowed under a limit, and changes nothing.
            Err(Expect::Ok) => assert!(limited && expect == Expect::Ok, "{op:?} ran out of frames"),
            Err(e) => assert_eq!(e, expect, "{op:?}"),
        }
        pt.verify()
            .unwrap_or_else(|e| panic!("after {op:?}: {e:?}"));
        // Large windows (64 KiB granule) are checked a rotating third at a time.
        let stride = if window > 4096 { 3 } else { 1 };
        check_window(
            &pt,
            &mut mmu,
            &model,
            base,
            (window, stride, step as u64 % stride),
            g,
            pa_base,
            ad,
            f.hw_ad(),
        );
    }
    let _ = pt.destroy(&mut mmu);
    assert_eq!(arena.outstanding(), 0, "table frames leaked");
}

/// One [`Op::Extreme`] on a range outside the window, where nothing is mapped. Any result is
/// allowed but a panic; walks and cursors must find no mapping, and a map that succeeds must
/// translate and is unmapped again.
fn extreme_step<F: HostFormat, W: Walker>(
    pt: &mut PageTable<F, ArenaRef<'_>, ArenaRef<'_>>,
    mmu: &mut SoftMmu<W>,
    op: u8,
    va: u64,
    len: u64,
    pa: u64,
) {
    struct NoLeaves;
    impl crate::Visitor for NoLeaves {
        fn leaf(&mut self, m: &crate::Translation) -> core::ops::ControlFlow<()> {
            panic!("a walk outside the window found {m:?}")
        }
    }
    let v = VirtAddr::new(va);
    let flush = match op % 7 {
        0 => match pt.map(v, PhysAddr::new(pa), len, ATTRS[0], MapSize::Largest) {
            Ok(flush) => {
                let _ = flush.invalidate(mmu);
                if len > 0 {
                    let t = pt.translate(v).expect("a successful map translates");
                    assert_eq!(t.page_pa, PhysAddr::new(pa));
                }
                pt.unmap(v, len).ok()
            }
            Err(_) => None,
        },
        1 => pt.unmap(v, len).ok(),
        2 => pt.protect(v, len, change(0)).ok(),
        3 => pt
            .clear_accessed_dirty(v, len, Attrs::ACCESSED)
            .ok()
            .map(|c| {
                assert_eq!(c.leaves, 0);
                c.flush
            }),
        4 => {
            let _ = pt.walk(v, len, &mut NoLeaves);
            None
        }
        6 => pt
            .update_leaves(v, len, |t| {
                panic!("the cursor found {t:?} outside the window")
            })
            .ok(),
        _ => {
            if let Ok(mut c) = pt.cursor(v, len) {
                assert_eq!(
                    c.next(),
                    None,
                    "a cursor outside the window found a mapping"
                );
            }
            None
        }
    };
    if let Some(flush) = flush {
        let freed = flush.invalidate(mmu);
        pt.free_tables(freed).unwrap();
    }
}

#[allow(clippy::too_many_arguments)]
fn check_window<W: Walker, F: HostFormat>(
    pt: &PageTable<F, crate::host::ArenaRef<'_>, crate::host::ArenaRef<'_>>,
    mmu: &mut SoftMmu<W>,
    model: &Model,
    base: u64,
    (window, stride, phase): (u64, u64, u64),
    g: u64,
    pa_base: u64,
    ad: Attrs,
    hw_ad: bool,
) {
    for p in (phase..window).step_by(stride as usize) {
        let va = VirtAddr::new(base + p * g);
        let t = pt.translate(va);
        // The three views of the one walk agree (the address-only form also inside the page).
        let inside = VirtAddr::new(va.as_u64() + (p * 8) % g);
        assert_eq!(pt.translate(inside), t, "page {p}");
        assert_eq!(
            pt.translate_addr(inside),
            t.map(|t| t.pa_of(inside)),
            "page {p}"
        );
        assert_eq!(
            pt.raw_leaf(va).map(|(l, _)| l),
            t.map(|t| t.level),
            "page {p}"
        );
        match model.get(&p) {
            None => {
                assert_eq!(t, None, "page {p} should be unmapped");
                let r = mmu.access(va, Access::Read, Mode::Kernel);
                assert!(
                    matches!(r, Err(Fault::Translation { .. })),
                    "page {p}: stale {r:?}"
                );
            }
            Some(&(pp, a)) => {
                let t = t.unwrap_or_else(|| panic!("page {p} should be mapped"));
                let pa = pa_base + pp * g;
                assert_eq!(t.pa_of(va), PhysAddr::new(pa), "page {p}");
                assert_eq!(t.attrs() - ad, a - ad, "page {p}");
                let mode = if a.contains(Attrs::USER) {
                    Mode::User
                } else {
                    Mode::Kernel
                };
                let readable = hw_ad || a.contains(Attrs::ACCESSED);
                let r = mmu.access(va, Access::Read, mode);
                if readable {
                    assert_eq!(r, Ok(PhysAddr::new(pa)), "page {p} {a:?}");
                } else {
                    assert_eq!(r, Err(Fault::AccessFlag), "page {p}");
                }
                let w = mmu.access(va, Access::Write, mode);
                assert_eq!(
                    w.is_ok(),
                    readable && a.contains(Attrs::WRITE),
                    "write page {p} {a:?}: {w:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Two tables sharing leaf tables (fork-style copies): the machine of the sharing proptests
// and of the fuzz target's shared mode.

/// Leaf tables in the window of [`run_shared`].
pub const SHARE_TABLES: u64 = 3;

type SharePt<'a, F> = PageTable<F, ArenaRef<'a>, ArenaRef<'a>>;
type ShareMmu<'a> = SoftMmu<Box<dyn Walker + 'a>>;

/// One side of a [`World`]: its table, its software MMU and its model (page index ->
/// (pa, attrs)).
pub struct Side<'a, F: HostFormat> {
    /// The table.
    pub pt: SharePt<'a, F>,
    mmu: ShareMmu<'a>,
    model: BTreeMap<u64, (u64, Attrs)>,
}

const SHARE_PA_BASE: u64 = 0x1_0000_0000;

/// Two tables over one arena, for [`run_shared`].
pub struct World<'a, F: HostFormat> {
    f: F,
    base: u64,
    g: u64,
    pages: u64,
    /// The two sides; `sides[s].pt` is side `s`'s table.
    pub sides: [Side<'a, F>; 2],
}

impl<'a, F: HostFormat> World<'a, F> {
    /// Two empty tables of `f` over `arena`, checked over a window of `pages` granules.
    pub fn new(f: F, arena: &'a TableArena, pages: u64) -> Self {
        let side = || {
            let pt = table(f, arena);
            let mmu = mmu_for(&pt, arena);
            Side {
                pt,
                mmu,
                model: BTreeMap::new(),
            }
        };
        World {
            f,
            base: f.test_base(),
            g: f.granule().bytes(),
            pages,
            sides: [side(), side()],
        }
    }

    fn va(&self, page: u64) -> VirtAddr {
        VirtAddr::new(self.base + page * self.g)
    }

    fn finish(&mut self, s: usize, flush: Flush) {
        let side = &mut self.sides[s];
        let freed = flush.invalidate(&mut side.mmu);
        side.pt.free_tables(freed).unwrap();
    }

    /// Map pages `first..first + n` on side `s` (read-only, accessed: shareable, or writable), as the model predicts.
    pub fn map(&mut self, s: usize, first: u64, n: u64, ro: bool) {
        let attrs = if ro {
            Attrs::KERNEL_RO
        } else {
            Attrs::KERNEL_RW
        };
        let attrs = self.f.normalize(attrs).unwrap();
        let free = (first..first + n).all(|p| !self.sides[s].model.contains_key(&p));
        let r = self.sides[s].pt.map(
            self.va(first),
            PhysAddr::new(SHARE_PA_BASE + first * self.g),
            n * self.g,
            attrs,
            MapSize::Exactly(self.f.granule()),
        );
        assert_eq!(r.is_ok(), free, "map {first}+{n}: {r:?}");
        if let Ok(fl) = r {
            self.finish(s, fl);
            for p in first..first + n {
                self.sides[s]
                    .model
                    .insert(p, (SHARE_PA_BASE + p * self.g, attrs));
            }
        }
    }

    /// Unmap pages on side `s`.
    pub fn unmap(&mut self, s: usize, first: u64, n: u64) {
        let fl = self.sides[s].pt.unmap(self.va(first), n * self.g).unwrap();
        self.finish(s, fl);
        for p in first..first + n {
            self.sides[s].model.remove(&p);
        }
    }

    /// Make pages of side `s` writable or read-only (refused unless all are mapped).
    pub fn protect(&mut self, s: usize, first: u64, n: u64, write: bool) {
        let all = (first..first + n).all(|p| self.sides[s].model.contains_key(&p));
        let ch = if write {
            AttrChange::flags(Attrs::WRITE | Attrs::DIRTY, Attrs::empty())
        } else {
            AttrChange::flags(Attrs::empty(), Attrs::WRITE)
        };
        let r = self.sides[s].pt.protect(self.va(first), n * self.g, ch);
        assert_eq!(r.is_ok(), all, "protect {first}+{n}: {r:?}");
        if let Ok(fl) = r {
            self.finish(s, fl);
            for p in first..first + n {
                let e = self.sides[s].model.get_mut(&p).unwrap();
                e.1 = self.f.normalize(ch.apply(e.1)).unwrap();
            }
        }
    }

    /// The mutating cursor on side `s`: make every leaf of the range read-only.
    pub fn update(&mut self, s: usize, first: u64, n: u64) {
        let f = self.f;
        let fl = self.sides[s]
            .pt
            .update_leaves(self.va(first), n * self.g, |t| {
                LeafUpdate::Attrs(
                    f.normalize(t.attrs() - Attrs::WRITE - Attrs::DIRTY)
                        .unwrap(),
                )
            })
            .unwrap();
        self.finish(s, fl);
        for p in first..first + n {
            if let Some(e) = self.sides[s].model.get_mut(&p) {
                e.1 = f.normalize(e.1 - Attrs::WRITE - Attrs::DIRTY).unwrap();
            }
        }
    }

    /// `copy_range_to` from side `from` to the other (refused where both map a page).
    pub fn copy(&mut self, from: usize, first: u64, n: u64) {
        let to = 1 - from;
        // Copy refuses only where the source maps a page the destination maps too.
        let free = (first..first + n).all(|p| {
            !self.sides[from].model.contains_key(&p) || !self.sides[to].model.contains_key(&p)
        });
        let (va, len) = (self.va(first), n * self.g);
        let [a, b] = &mut self.sides;
        let (src, dst) = if from == 0 { (a, b) } else { (b, a) };
        let r = src.pt.copy_range_to(&mut dst.pt, va, len);
        assert_eq!(r.is_ok(), free, "copy {first}+{n}: {r:?}");
        if let Ok(fl) = r {
            self.finish(to, fl);
            let moved: Vec<_> = self.sides[from]
                .model
                .range(first..first + n)
                .map(|(&p, &e)| (p, e))
                .collect();
            self.sides[to].model.extend(moved);
        }
    }

    /// Each side, through translate, a cursor over the window, `verify` and the software
    /// MMU, holds exactly its model.
    pub fn check(&mut self) {
        let (base, g, pages) = (self.base, self.g, self.pages);
        for side in &mut self.sides {
            side.pt.verify().unwrap();
            let got: BTreeMap<u64, (u64, Attrs)> = side
                .pt
                .cursor(VirtAddr::new(base), pages * g)
                .unwrap()
                .flat_map(|t| {
                    let n = t.size.bytes() / g;
                    let p0 = (t.page_va.as_u64() - base) / g;
                    (0..n).map(move |k| (p0 + k, (t.page_pa.as_u64() + k * g, t.attrs())))
                })
                .collect();
            assert_eq!(got, side.model);
            for (&p, &(pa, attrs)) in side.model.iter().step_by(7) {
                let va = VirtAddr::new(base + p * g);
                assert_eq!(side.pt.translate(va).map(|t| t.attrs()), Some(attrs));
                let r = side.mmu.access(va, Access::Read, Mode::Kernel);
                assert_eq!(r, Ok(PhysAddr::new(pa)), "read page {p}");
                let w = side.mmu.access(va, Access::Write, Mode::Kernel);
                assert_eq!(w.is_ok(), attrs.contains(Attrs::WRITE), "write page {p}");
            }
            for p in (0..pages).step_by(13) {
                if !side.model.contains_key(&p) {
                    let va = VirtAddr::new(base + p * g);
                    assert!(side.mmu.access(va, Access::Read, Mode::Kernel).is_err());
                }
            }
        }
    }

    /// Tear both sides down (side 0 first if `order`) and check every frame came back
    /// exactly once.
    pub fn destroy(self, arena: &TableArena, order: bool) {
        let [a, b] = self.sides;
        let (first, second) = if order { (a, b) } else { (b, a) };
        let mut mmu = first.mmu;
        let _ = first.pt.destroy(&mut mmu);
        assert_eq!(arena.outstanding(), second.pt.table_frames());
        let mut mmu = second.mmu;
        let _ = second.pt.destroy(&mut mmu);
        assert_eq!(arena.outstanding(), 0, "table frames leaked");
        assert_eq!(arena.shared_frames(), 0);
    }
}

/// One step of [`run_shared`]: side (0 or 1), first page, page count, and a flag.
#[derive(Debug, Clone)]
pub enum ShareOp {
    /// Map pages on a side, read-only (`true`) or writable.
    Map(usize, u64, u64, bool),
    /// Unmap pages on a side.
    Unmap(usize, u64, u64),
    /// Make pages of a side writable (`true`) or read-only.
    Protect(usize, u64, u64, bool),
    /// Make every leaf of the pages read-only through the mutating cursor.
    Update(usize, u64, u64),
    /// Copy pages from a side to the other.
    Copy(usize, u64, u64),
}

/// Replay `ops` on two tables of `f` over one arena with share counts, in a window of
/// [`SHARE_TABLES`] leaf tables (op pages taken modulo the window, so any input is valid),
/// checking both sides after every step, and tear them down (side 0 first if `order`):
/// every frame must come back exactly once.
pub fn run_shared<F: HostFormat>(f: F, ops: &[ShareOp], order: bool) {
    let tables = SHARE_TABLES;
    let per = f.levels()[f.depth() - 1].entries() as u64;
    let arena = arena_for(&f, 128);
    let mut w = World::new(f, &arena, tables * per);
    let pages = tables * per;
    for op in ops {
        let clip = |a: u64, n: u64| (a % pages, n.clamp(1, pages - a % pages));
        match *op {
            ShareOp::Map(s, a, n, ro) => {
                let (a, n) = clip(a, n);
                w.map(s & 1, a, n, ro)
            }
            ShareOp::Unmap(s, a, n) => {
                let (a, n) = clip(a, n);
                w.unmap(s & 1, a, n)
            }
            ShareOp::Protect(s, a, n, wr) => {
                let (a, n) = clip(a, n);
                w.protect(s & 1, a, n, wr)
            }
            ShareOp::Update(s, a, n) => {
                let (a, n) = clip(a, n);
                w.update(s & 1, a, n)
            }
            ShareOp::Copy(s, a, n) => {
                let (a, n) = clip(a, n);
                w.copy(s & 1, a, n)
            }
        }
        w.check();
    }
    w.destroy(&arena, order);
}
