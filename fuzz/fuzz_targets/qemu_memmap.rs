//! Fuzz the QEMU kernels' firmware memory map (examples/qemu-common `memmap`): an `Arbitrary`
//! sequence of add / sort / check / is-RAM / find-free / total actions, replayed against a
//! plain list of regions and byte-exact brute force over a small address space.
//!
//! The map is what the kernels build from PVH e820 tables and device trees before any
//! allocator runs, and `find_free_top_down` chooses the memory their self-tests write to, so a
//! wrong answer there would corrupt the kernel under test.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit_addr::{PhysAddr, PhysRange};
use mmkit_qemu_common::memmap::{AddRegionError, MapProblem, MemoryMap, RegionKind};

/// The modelled address space: 256 pages of 4 KiB. Region starts have a 256-byte granule so
/// partial pages occur.
const PAGE: u64 = 4096;
const SPACE: u64 = 256 * PAGE;

#[derive(Arbitrary, Debug)]
enum Action {
    Add {
        start: u16,
        len: u16,
        kind: u8,
    },
    AddHuge {
        start: u64,
        len: u64,
    },
    Sort,
    Check,
    IsRam {
        start: u16,
        len: u16,
    },
    FindFree {
        pages: u8,
        align_shift: u8,
        limit: u16,
        exclude: Option<(u8, u8)>,
    },
    Total {
        kind: u8,
    },
}

fn kind_of(k: u8) -> RegionKind {
    match k % 4 {
        0 | 1 => RegionKind::Ram,
        2 => RegionKind::Reserved,
        _ => RegionKind::from_e820(u32::from(k)),
    }
}

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
}

struct Model {
    regions: Vec<(u64, u64, RegionKind)>,
}

impl Model {
    fn ram(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .filter(|r| r.2 == RegionKind::Ram)
            .map(|r| (r.0, r.1))
    }

    /// Every byte of `[s, e)` is in some RAM region (checked per 256-byte granule, the
    /// finest granule starts and ends have here).
    fn is_ram(&self, s: u64, e: u64) -> bool {
        s < e
            && (s..e)
                .step_by(256)
                .all(|b| self.ram().any(|(rs, re)| rs <= b && b + 256 <= re))
    }

    fn find_free(
        &self,
        size: u64,
        align: u64,
        limit: u64,
        exclude: &[(u64, u64)],
    ) -> Option<PhysRange> {
        let top = SPACE.min(limit);
        let mut start = (top.checked_sub(size)? / align) * align;
        loop {
            let end = start + size;
            let in_one_ram = self.ram().any(|(rs, re)| rs <= start && end <= re);
            let blocked = self
                .regions
                .iter()
                .filter(|r| r.2 != RegionKind::Ram)
                .map(|r| (r.0, r.1))
                .chain(exclude.iter().copied())
                .any(|(bs, be)| bs < end && start < be);
            if in_one_ram && !blocked {
                return Some(range(start, end));
            }
            start = start.checked_sub(align)?;
        }
    }
}

fuzz_target!(|actions: Vec<Action>| {
    let mut map = MemoryMap::new();
    let mut model = Model {
        regions: Vec::new(),
    };
    let mut sorted = true;
    for action in actions.into_iter().take(64) {
        match action {
            Action::Add { start, len, kind } => {
                let start = u64::from(start) * 256 % SPACE;
                let len = u64::from(len) * 256 % (SPACE - start);
                let kind = kind_of(kind);
                let got = map.add(start, len, kind);
                if len == 0 {
                    assert_eq!(got, Err(AddRegionError::Empty));
                } else if model.regions.len() == MemoryMap::CAPACITY {
                    assert_eq!(got, Err(AddRegionError::Full));
                } else {
                    assert_eq!(got, Ok(()));
                    model.regions.push((start, start + len, kind));
                    sorted = model.regions.len() <= 1 && sorted;
                }
            }
            Action::AddHuge { start, len } => {
                let before = map.regions().to_vec();
                if start.checked_add(len).is_none() {
                    assert!(matches!(
                        map.add(start, len, RegionKind::Ram),
                        Err(AddRegionError::Wraps(_))
                    ));
                    assert_eq!(map.regions(), &before[..], "a refused add changed the map");
                }
            }
            Action::Sort => {
                map.sort();
                model.regions.sort_by_key(|r| (r.0, r.1, r.2));
                sorted = true;
            }
            Action::Check => {
                let got = map.check();
                let has_ram = model.ram().next().is_some();
                if !has_ram {
                    assert_eq!(got, Err(MapProblem::NoRam));
                } else if sorted {
                    let mut ram: Vec<_> = model.ram().collect();
                    ram.sort();
                    let overlap = ram.windows(2).any(|w| w[1].0 < w[0].1);
                    assert_eq!(
                        got.is_err(),
                        overlap,
                        "check {got:?}, model overlap {overlap}"
                    );
                }
            }
            Action::IsRam { start, len } => {
                if sorted {
                    let s = u64::from(start) * 256 % SPACE;
                    let e = (s + u64::from(len) * 256).min(SPACE);
                    let want = model.is_ram(s, e);
                    let got = if s < e {
                        map.is_ram(range(s, e))
                    } else {
                        false
                    };
                    assert_eq!(got, want, "is_ram [{s:#x}, {e:#x})");
                }
            }
            Action::FindFree {
                pages,
                align_shift,
                limit,
                exclude,
            } => {
                let size = (u64::from(pages) % 16 + 1) * PAGE;
                let align = PAGE << (align_shift % 4);
                let limit = u64::from(limit) * 256;
                let exclude: Vec<(u64, u64)> = exclude
                    .map(|(s, l)| {
                        let s = u64::from(s) * PAGE;
                        (s, (s + (u64::from(l) % 32 + 1) * PAGE).min(SPACE))
                    })
                    .into_iter()
                    .filter(|(s, e)| s < e)
                    .collect();
                let ex: Vec<PhysRange> = exclude.iter().map(|&(s, e)| range(s, e)).collect();
                let got = map.find_free_top_down(size, align, limit, &ex);
                let want = model.find_free(size, align, limit, &exclude);
                assert_eq!(
                    got, want,
                    "find_free size {size:#x} align {align:#x} limit {limit:#x}"
                );
            }
            Action::Total { kind } => {
                let kind = kind_of(kind);
                let want: u64 = model
                    .regions
                    .iter()
                    .filter(|r| r.2 == kind)
                    .map(|r| r.1 - r.0)
                    .sum();
                assert_eq!(map.total(kind), want);
            }
        }
        assert_eq!(map.regions().len(), model.regions.len());
    }
});
