//! The page-bitmap reference model shared by the proptest state machine (tests/model.rs)
//! and the fuzz target (fuzz/fuzz_targets/bootmem.rs, which includes this file by path).
//!
//! The model keeps, per 4 KiB page of a small physical space, whether it is memory (and with
//! which node and flags), whether the user reserved it, and whether bootmem's own region
//! arrays occupy it. Because every operation here is page-granular, the bootmem's lists must
//! equal the model's maximal runs *exactly* (same ranges, same attributes, merged), and every
//! allocation must land at exactly the address memblock's rules pick. A small inline capacity
//! (4 regions) makes the arrays grow into self-allocated memory all the time. `run` checks
//! `verify()`, both lists, the free ranges in both directions and per node after every step,
//! and the hand-off blocks (coverage, alignment, maximality, attributes) at the end.

// The model is a set of per-page arrays; indexing them by page number is the point.
#![allow(clippy::needless_range_loop, dead_code)]

use mmkit_addr::host::HostMemory;
use mmkit_addr::{Order, PhysAddr, PAGE_SIZE};
use mmkit_bootmem::{
    AllocError, AllocRequest, Bootmem, FreeError, GrowError, HotplugPolicy, NodeId, RangeFilter,
    RegionError, RegionFlags,
};

/// Pages in the modelled physical space.
pub const PAGES: usize = 512;
/// Inline region capacity of the bootmem under test.
pub const CAP: usize = 4;

macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(format!("check failed: {}", stringify!($cond)));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

macro_rules! check_eq {
    ($a:expr, $b:expr) => {
        check_eq!($a, $b, "{}", stringify!($a))
    };
    ($a:expr, $b:expr, $($fmt:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}: left {:?} != right {:?}", format!($($fmt)+), a, b));
        }
    }};
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Attr {
    nid: u16,
    flags: RegionFlags,
}

/// One step of a test sequence; page numbers and counts are within [`PAGES`].
#[derive(Clone, Debug)]
pub enum Op {
    Add {
        start: usize,
        len: usize,
        nid: u16,
        flags: u8,
    },
    Remove {
        start: usize,
        len: usize,
    },
    Reserve {
        start: usize,
        len: usize,
    },
    Free {
        start: usize,
        len: usize,
    },
    Mark {
        start: usize,
        len: usize,
        flags: u8,
        set: bool,
    },
    SetNode {
        start: usize,
        len: usize,
        nid: u16,
    },
    Alloc {
        pages: usize,
        align_shift: u32,
        min: usize,
        max: usize,
        node: Option<u16>,
        exact: bool,
        zeroed: bool,
    },
    BottomUp(bool),
    Limit(usize),
    Hotplug(u8),
    MirrorFirst(bool),
}

/// Bits 0..3 of `bits` as HOTPLUG, MIRROR, NOMAP.
pub fn flags_of(bits: u8) -> RegionFlags {
    let mut f = RegionFlags::empty();
    if bits & 1 != 0 {
        f |= RegionFlags::HOTPLUG;
    }
    if bits & 2 != 0 {
        f |= RegionFlags::MIRROR;
    }
    if bits & 4 != 0 {
        f |= RegionFlags::NOMAP;
    }
    f
}

#[derive(Clone)]
struct Model {
    mem: Vec<Option<Attr>>,
    user: Vec<bool>,
    array: Vec<bool>,
    bottom_up: bool,
    limit: u64,
    hotplug: HotplugPolicy,
    mirror_first: bool,
}

fn pa(page: usize) -> PhysAddr {
    PhysAddr::new(page as u64 * PAGE_SIZE)
}

impl Model {
    fn new() -> Self {
        Self {
            mem: vec![None; PAGES],
            user: vec![false; PAGES],
            array: vec![false; PAGES],
            bottom_up: false,
            limit: u64::MAX,
            hotplug: HotplugPolicy::Allow,
            mirror_first: false,
        }
    }

    fn free(&self, p: usize) -> Option<Attr> {
        let a = self.mem[p]?;
        (!self.user[p] && !self.array[p] && !a.flags.intersects(RegionFlags::NOT_ALLOCATABLE))
            .then_some(a)
    }

    /// Maximal runs of pages where `key` is `Some` and equal: (start, end, key).
    fn runs<K: PartialEq + Copy>(
        &self,
        key: impl Fn(usize) -> Option<K>,
    ) -> Vec<(usize, usize, K)> {
        let mut out: Vec<(usize, usize, K)> = Vec::new();
        for p in 0..PAGES {
            if let Some(k) = key(p) {
                match out.last_mut() {
                    Some(last) if last.1 == p && last.2 == k => last.1 = p + 1,
                    _ => out.push((p, p + 1, k)),
                }
            }
        }
        out
    }

    fn touches_array(&self, start: usize, len: usize) -> bool {
        (start..start + len).any(|p| self.array[p])
    }

    /// memblock's choice for an allocation of `pages` pages.
    fn expect_alloc(
        &self,
        pages: usize,
        align: u64,
        min: u64,
        max: u64,
        node: Option<u16>,
        exact: bool,
    ) -> Result<u64, &'static str> {
        let size = pages as u64 * PAGE_SIZE;
        let lo = min.max(PAGE_SIZE);
        let hi = max.min(self.limit);
        if hi <= lo || hi - lo < size {
            return Err("impossible");
        }
        let mirror_passes: &[bool] = if self.mirror_first {
            &[true, false]
        } else {
            &[false]
        };
        let hotplug_passes: &[bool] = match self.hotplug {
            HotplugPolicy::Allow => &[true],
            HotplugPolicy::PreferOthers => &[false, true],
            HotplugPolicy::Avoid => &[false],
        };
        let node_passes: Vec<Option<u16>> = match (node, exact) {
            (Some(n), true) => vec![Some(n)],
            (Some(n), false) => vec![Some(n), None],
            (None, _) => vec![None],
        };
        let runs = self.runs(|p| self.free(p));
        for &mirror in mirror_passes {
            for &hotplug in hotplug_passes {
                for &want in &node_passes {
                    let ok = |a: &Attr| {
                        want.map_or(true, |n| n == a.nid)
                            && (!mirror || a.flags.contains(RegionFlags::MIRROR))
                            && (hotplug || !a.flags.contains(RegionFlags::HOTPLUG))
                    };
                    let fit = |&(s, e, a): &(usize, usize, Attr)| -> Option<u64> {
                        if !ok(&a) {
                            return None;
                        }
                        let s = (s as u64 * PAGE_SIZE).max(lo);
                        let e = (e as u64 * PAGE_SIZE).min(hi);
                        if e <= s || e - s < size {
                            return None;
                        }
                        if self.bottom_up {
                            let c = s.div_ceil(align) * align;
                            (c + size <= e).then_some(c)
                        } else {
                            let c = (e - size) / align * align;
                            (c >= s).then_some(c)
                        }
                    };
                    let found = if self.bottom_up {
                        runs.iter().find_map(fit)
                    } else {
                        runs.iter().rev().find_map(fit)
                    };
                    if let Some(c) = found {
                        return Ok(c);
                    }
                }
            }
        }
        Err("nofit")
    }
}

fn check_lists(bm: &Bootmem<'_, CAP>, m: &Model) -> Result<(), String> {
    bm.verify().map_err(|e| format!("verify: {e}"))?;
    let mem: Vec<_> = bm
        .memory_regions()
        .iter()
        .map(|r| {
            (
                r.base().as_u64(),
                r.end().as_u64(),
                r.nid().get(),
                r.flags(),
            )
        })
        .collect();
    let want: Vec<_> = m
        .runs(|p| m.mem[p])
        .into_iter()
        .map(|(s, e, a)| (s as u64 * PAGE_SIZE, e as u64 * PAGE_SIZE, a.nid, a.flags))
        .collect();
    check_eq!(mem, want, "memory list");
    let res: Vec<_> = bm
        .reserved_regions()
        .iter()
        .map(|r| (r.base().as_u64(), r.end().as_u64()))
        .collect();
    let want: Vec<_> = m
        .runs(|p| (m.user[p] || m.array[p]).then_some(()))
        .into_iter()
        .map(|(s, e, ())| (s as u64 * PAGE_SIZE, e as u64 * PAGE_SIZE))
        .collect();
    check_eq!(res, want, "reserved list");
    // Free ranges, both directions, equal the model's runs of free pages.
    let free_want: Vec<_> = m
        .runs(|p| m.free(p))
        .into_iter()
        .map(|(s, e, a)| (s as u64 * PAGE_SIZE, e as u64 * PAGE_SIZE, a.nid))
        .collect();
    let fwd: Vec<_> = bm
        .free_ranges(RangeFilter::ALLOCATABLE)
        .map(|f| {
            (
                f.range.start().as_u64(),
                f.range.end().as_u64(),
                f.nid.get(),
            )
        })
        .collect();
    let mut rev: Vec<_> = bm
        .free_ranges_rev(RangeFilter::ALLOCATABLE)
        .map(|f| {
            (
                f.range.start().as_u64(),
                f.range.end().as_u64(),
                f.nid.get(),
            )
        })
        .collect();
    rev.reverse();
    check_eq!(&fwd, &free_want, "free ranges forward");
    check_eq!(&rev, &free_want, "free ranges reverse");
    let node1: Vec<_> = bm
        .free_ranges_rev(RangeFilter::ALLOCATABLE.on_node(NodeId::new(1)))
        .map(|f| {
            (
                f.range.start().as_u64(),
                f.range.end().as_u64(),
                f.nid.get(),
            )
        })
        .collect();
    let mut node1_want: Vec<_> = free_want.iter().copied().filter(|r| r.2 == 1).collect();
    node1_want.reverse();
    check_eq!(node1, node1_want, "free ranges of node 1");
    Ok(())
}

/// Take over the arrays bootmem placed, checking they went into memory that was free.
fn sync_arrays(bm: &Bootmem<'_, CAP>, m: &mut Model, before: &Model) -> Result<(), String> {
    let mut now = vec![false; PAGES];
    for r in bm.region_arrays().into_iter().flatten() {
        for p in r.start().pfn().as_u64() as usize..r.end().pfn().as_u64() as usize {
            now[p] = true;
        }
    }
    for p in 0..PAGES {
        if now[p] && !before.array[p] {
            check!(
                before.free(p).is_some(),
                "array placed on page {p}, which was not free"
            );
            check!(
                (p as u64 + 1) * PAGE_SIZE <= before.limit,
                "array above the limit"
            );
        }
    }
    m.array = now;
    Ok(())
}

fn full_or<T: std::fmt::Debug>(
    r: Result<T, RegionError>,
    with_mapper: bool,
) -> Result<bool, String> {
    match r {
        Ok(_) => Ok(true),
        Err(RegionError::RegionsFull {
            cause: GrowError::NoMapper,
            ..
        }) if !with_mapper => Ok(false),
        Err(RegionError::RegionsFull {
            cause: GrowError::NoMemory,
            ..
        }) if with_mapper => Ok(false),
        Err(e) => Err(format!("unexpected {e:?}")),
    }
}

pub fn run(ops: Vec<Op>, with_mapper: bool, max_order: u32) -> Result<(), String> {
    let host = HostMemory::new(PhysAddr::new(0), (PAGES as u64) * PAGE_SIZE);
    let mut bm: Bootmem<'_, CAP> = Bootmem::new();
    if with_mapper {
        // SAFETY: the host buffer is used by nothing else; the model only lets bootmem write
        // memory that is free.
        unsafe { bm.set_mapper(&host) };
    }
    let mut m = Model::new();
    for op in ops {
        let before = m.clone();
        match op {
            Op::Add {
                start,
                len,
                nid,
                flags,
            } => {
                let attr = Attr {
                    nid,
                    flags: flags_of(flags),
                };
                let r = bm.add_node(
                    pa(start),
                    len as u64 * PAGE_SIZE,
                    NodeId::new(nid),
                    attr.flags,
                );
                if full_or(r, with_mapper)? {
                    for p in start..start + len {
                        m.mem[p].get_or_insert(attr);
                    }
                }
            }
            Op::Remove { start, len } => {
                let r = bm.remove(pa(start), len as u64 * PAGE_SIZE);
                if m.touches_array(start, len) {
                    check!(
                        matches!(r, Err(RegionError::OverlapsRegionArray(_))),
                        "{r:?}"
                    );
                } else if full_or(r, with_mapper)? {
                    m.mem[start..start + len].fill(None);
                }
            }
            Op::Reserve { start, len } => {
                let r = bm.reserve(pa(start), len as u64 * PAGE_SIZE);
                if m.touches_array(start, len) {
                    check!(
                        matches!(r, Err(RegionError::OverlapsRegionArray(_))),
                        "{r:?}"
                    );
                } else if full_or(r, with_mapper)? {
                    m.user[start..start + len].fill(true);
                }
            }
            Op::Free { start, len } => {
                let r = bm.free(pa(start), len as u64 * PAGE_SIZE);
                if m.touches_array(start, len) {
                    check!(matches!(r, Err(FreeError::OverlapsRegionArray(_))), "{r:?}");
                } else if !m.user[start..start + len].iter().all(|&u| u) {
                    check!(matches!(r, Err(FreeError::NotReserved(_))), "{r:?}");
                } else {
                    match r {
                        Ok(()) => m.user[start..start + len].fill(false),
                        Err(FreeError::RegionsFull(GrowError::NoMapper)) if !with_mapper => {}
                        Err(FreeError::RegionsFull(GrowError::NoMemory)) if with_mapper => {}
                        Err(e) => return Err(format!("free: {e:?}")),
                    }
                }
            }
            Op::Mark {
                start,
                len,
                flags,
                set,
            } => {
                let f = flags_of(flags);
                let size = len as u64 * PAGE_SIZE;
                let r = if set {
                    bm.mark(pa(start), size, f)
                } else {
                    bm.clear(pa(start), size, f)
                };
                if full_or(r, with_mapper)? {
                    for a in m.mem[start..start + len].iter_mut().flatten() {
                        a.flags = if set { a.flags | f } else { a.flags - f };
                    }
                }
            }
            Op::SetNode { start, len, nid } => {
                let r = bm.set_node(pa(start), len as u64 * PAGE_SIZE, NodeId::new(nid));
                if full_or(r, with_mapper)? {
                    for a in m.mem[start..start + len].iter_mut().flatten() {
                        a.nid = nid;
                    }
                }
            }
            Op::Alloc {
                pages,
                align_shift,
                min,
                max,
                node,
                exact,
                zeroed,
            } => {
                let align = PAGE_SIZE << align_shift;
                let (lo, hi) = (min as u64 * PAGE_SIZE, max as u64 * PAGE_SIZE);
                let mut req = AllocRequest::new(pages as u64 * PAGE_SIZE, align)
                    .above(PhysAddr::new(lo))
                    .below(PhysAddr::new(hi));
                if let Some(n) = node {
                    req = if exact {
                        req.exact_node(NodeId::new(n))
                    } else {
                        req.prefer_node(NodeId::new(n))
                    };
                }
                let want = m.expect_alloc(pages, align, lo, hi, node, exact);
                let got = if zeroed {
                    bm.alloc_zeroed(&req)
                } else {
                    bm.alloc_request(&req)
                };
                match (got, want) {
                    (Ok(addr), Ok(w)) => {
                        check_eq!(addr.as_u64(), w, "allocation address");
                        let first = (w / PAGE_SIZE) as usize;
                        m.user[first..first + pages].fill(true);
                        if zeroed {
                            let ptr = host.ptr_of(addr).unwrap();
                            // SAFETY: the allocation is inside the host buffer and ours.
                            let bytes = unsafe {
                                std::slice::from_raw_parts(ptr.as_ptr(), pages * PAGE_SIZE as usize)
                            };
                            check!(bytes.iter().all(|&b| b == 0));
                            // Dirty it so a later zeroed allocation of the same memory proves
                            // it zeroes.
                            // SAFETY: as above.
                            unsafe { ptr.as_ptr().write_bytes(0xa5, pages * PAGE_SIZE as usize) };
                        }
                    }
                    (Err(AllocError::ImpossibleWindow { .. }), Err("impossible")) => {}
                    (Err(AllocError::NoFit { .. }), Err("nofit")) => {}
                    (Err(AllocError::RegionsFull(GrowError::NoMapper)), Ok(_)) if !with_mapper => {}
                    (Err(AllocError::RegionsFull(GrowError::NoMemory)), Ok(_)) if with_mapper => {}
                    (Err(AllocError::NoMapper), Ok(_)) if zeroed && !with_mapper => {}
                    (got, want) => return Err(format!("alloc: got {got:?}, model {want:?}")),
                }
            }
            Op::BottomUp(b) => {
                bm.set_bottom_up(b);
                m.bottom_up = b;
            }
            Op::Limit(page) => {
                bm.set_current_limit(pa(page));
                m.limit = page as u64 * PAGE_SIZE;
            }
            Op::Hotplug(p) => {
                let policy = [
                    HotplugPolicy::Allow,
                    HotplugPolicy::PreferOthers,
                    HotplugPolicy::Avoid,
                ][p as usize];
                bm.set_hotplug_policy(policy);
                m.hotplug = policy;
            }
            Op::MirrorFirst(b) => {
                bm.set_mirror_first(b);
                m.mirror_first = b;
            }
        }
        sync_arrays(&bm, &mut m, &before)?;
        check_lists(&bm, &m)?;
    }
    check_handoff(bm, &m, max_order)
}

fn check_handoff(bm: Bootmem<'_, CAP>, m: &Model, max_order: u32) -> Result<(), String> {
    let h = bm.handoff(Order::new(max_order));
    let mut covered = vec![false; PAGES];
    let mut expected_next: Option<u64> = None;
    let runs = m.runs(|p| m.free(p).filter(|_| p != 0));
    let run_of = |pfn: u64| {
        runs.iter()
            .find(|r| r.0 as u64 <= pfn && pfn < r.1 as u64)
            .copied()
    };
    let mut count = 0u64;
    for b in h.blocks() {
        let pfn = b.pfn.as_u64();
        let n = b.order.pages();
        check!(b.order.get() <= max_order);
        check_eq!(pfn % n, 0, "block not naturally aligned");
        let (s, e, a) = run_of(pfn).ok_or_else(|| format!("block {b:?} not free"))?;
        check!(pfn + n <= e as u64, "block {b:?} runs past its free range");
        check_eq!(b.nid.get(), a.nid);
        check_eq!(b.flags, a.flags);
        // Largest block the rule allows at this frame.
        let want = max_order
            .min(pfn.trailing_zeros())
            .min(63 - (e as u64 - pfn).leading_zeros());
        check_eq!(b.order.get(), want, "block {:?} not maximal", b);
        if let Some(next) = expected_next {
            if pfn != s as u64 {
                check_eq!(pfn, next, "blocks inside a range must be contiguous");
            }
        }
        expected_next = Some(pfn + n);
        for p in pfn..pfn + n {
            check!(!covered[p as usize], "page {p} handed off twice");
            covered[p as usize] = true;
        }
        count += n;
    }
    for p in 0..PAGES {
        let want = p != 0 && m.free(p).is_some();
        check_eq!(covered[p], want, "page {} hand-off coverage", p);
    }
    check_eq!(h.free_pages(), count);
    let from_runs: Vec<_> = h
        .block_runs()
        .flat_map(|r| r.blocks().collect::<Vec<_>>())
        .collect();
    let blocks: Vec<_> = h.blocks().collect();
    check_eq!(from_runs, blocks);
    // Per-node accounting.
    for nid in [None, Some(0u16), Some(1), Some(2)] {
        let on = |a: Attr| nid.map_or(true, |n| n == a.nid);
        let present = (0..PAGES).filter(|&p| m.mem[p].is_some_and(on)).count() as u64;
        let managed = (1..PAGES).filter(|&p| m.free(p).is_some_and(on)).count() as u64;
        let got = h.node_pages(nid.map(NodeId::new));
        check_eq!(
            (got.present, got.managed),
            (present, managed),
            "node {:?} pages",
            nid
        );
    }
    // Reserved parts of memory, per page.
    let mut reserved_mem = vec![false; PAGES];
    for part in h.reserved_in_memory() {
        for p in part.range.start().pfn().as_u64()..part.range.end().pfn().as_u64() {
            check_eq!(Some(part.nid.get()), m.mem[p as usize].map(|a| a.nid));
            reserved_mem[p as usize] = true;
        }
    }
    for p in 0..PAGES {
        check_eq!(
            reserved_mem[p],
            m.mem[p].is_some() && (m.user[p] || m.array[p])
        );
    }
    Ok(())
}
