//! Cross-module tests: fixtures shared by the operation tests, the entry-law tests, the model
//! state machine and the cross-checks against peer crates.

mod laws;
mod model;
mod ops;

use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};

use crate::arch::aarch64::{Aarch64, Granule};
use crate::arch::x86_64::X86_64;
use crate::host::{ArenaRef, TableArena};
use crate::softmmu::aarch64::Aarch64Walker;
use crate::softmmu::x86_64::X86Walker;
use crate::softmmu::{Access, Fault, Mode, SoftMmu, Walker};
use crate::{PageTable, PagingFormat, Translation};

/// Physical base of test arenas (1 GiB, so table frames never collide with low test PAs).
pub(crate) const ARENA_BASE: u64 = 0x4000_0000;

/// A format the tests can build a software MMU for.
pub(crate) trait TestFormat: PagingFormat + Copy + core::fmt::Debug {
    /// A walker for a table of this format rooted at `root`.
    fn walker<'m>(&self, arena: &'m TableArena, root: PhysAddr) -> Box<dyn Walker + 'm>;
    /// Whether the hardware manages accessed/dirty (x86).
    fn hw_ad(&self) -> bool;
    /// A VA near which tests work.
    fn test_base(&self) -> u64;
}

impl TestFormat for X86_64 {
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

impl TestFormat for Aarch64 {
    fn walker<'m>(&self, arena: &'m TableArena, root: PhysAddr) -> Box<dyn Walker + 'm> {
        let r = Some((root, *self));
        match self.half() {
            VaHalf::Lower => Box::new(Aarch64Walker::new(arena.memory(), r, None)),
            VaHalf::Upper => Box::new(Aarch64Walker::new(arena.memory(), None, r)),
        }
    }
    fn hw_ad(&self) -> bool {
        false
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
    fn walk(
        &self,
        va: u64,
        access: Access,
        mode: Mode,
        update: bool,
    ) -> Result<crate::softmmu::Walked, Fault> {
        (**self).walk(va, access, mode, update)
    }
    fn shifts(&self) -> Vec<u32> {
        (**self).shifts()
    }
}

/// Every format configuration the crate supports (a representative VA width set).
pub(crate) fn all_aarch64() -> Vec<Aarch64> {
    let mut v = Vec::new();
    for g in Granule::ALL {
        let mut widths = vec![39, 42, 47, 48];
        if g == Granule::K64 {
            widths.push(52);
        }
        for w in widths {
            for half in [VaHalf::Lower, VaHalf::Upper] {
                v.push(Aarch64::new(g, w, half).unwrap());
            }
        }
    }
    v
}

/// The x86 formats.
pub(crate) fn all_x86() -> [X86_64; 2] {
    [X86_64::FOUR_LEVEL, X86_64::FIVE_LEVEL]
}

/// An arena sized for `f`'s granule.
pub(crate) fn arena_for<F: PagingFormat>(f: &F, frames: usize) -> TableArena {
    TableArena::new(PhysAddr::new(ARENA_BASE), f.granule(), frames)
}

/// A table over `arena`.
pub(crate) fn table<'a, F: PagingFormat>(
    f: F,
    arena: &'a TableArena,
) -> PageTable<F, ArenaRef<'a>, ArenaRef<'a>> {
    PageTable::new(f, arena.handle(), arena.handle()).expect("root frame")
}

/// The software MMU for `pt`.
pub(crate) fn mmu_for<'a, F: TestFormat>(
    pt: &PageTable<F, ArenaRef<'a>, ArenaRef<'a>>,
    arena: &'a TableArena,
) -> SoftMmu<Box<dyn Walker + 'a>> {
    SoftMmu::new(pt.format().walker(arena, pt.root()))
}

/// Leaf sizes of a format, smallest first.
pub(crate) fn sizes_of<F: PagingFormat>(f: &F) -> Vec<PageSize> {
    let mut v: Vec<_> = f.levels().iter().filter_map(|l| l.leaf).collect();
    v.sort();
    v
}
