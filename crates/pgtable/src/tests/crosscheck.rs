//! Cross-checks against peer crates, comparing raw leaf entries written for the same map
//! calls: the `x86_64` crate's `OffsetPageTable` (4-level) and `aarch64-paging`'s `RootTable`
//! (4 KiB granule, EL1&0 regime). Table entries differ by design (this crate keeps entry
//! counts in ignored bits and presets A), so only leaves are compared, bit for bit.

use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress as APhys};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, RootTable, VaRange};
use mmkit_addr::host::HostMemory;
use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as XPageTable, PageTableFlags as XF,
    PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};

use super::{arena_for, table, X86_64};
use crate::arch::aarch64::{Aarch64, Granule};
use crate::{Attrs, CachePolicy, MapSize, PagingFormat};

/// Frames for the `x86_64` crate, bump-allocated from host memory.
struct Bump<'a> {
    mem: &'a HostMemory,
    next: u64,
}

// SAFETY: frames are handed out once each from the host buffer, zeroed (HostMemory starts
// zeroed and nothing else writes these frames), 4 KiB-aligned physically.
unsafe impl FrameAllocator<Size4KiB> for Bump<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.mem.range().start().as_u64() + self.next;
        if self.next >= self.mem.range().len() {
            return None;
        }
        self.next += 4096;
        Some(PhysFrame::containing_address(x86_64::PhysAddr::new(pa)))
    }
}

/// One map call as both crates express it.
struct Call {
    va: u64,
    pa: u64,
    size: PageSize,
    ours: Attrs,
    theirs: XF,
}

#[test]
fn x86_64_leaves_match_offset_page_table() {
    let calls = [
        Call {
            va: 0xffff_8000_0000_0000,
            pa: 0x1234_5000,
            size: PageSize::Size4K,
            ours: Attrs::READ | Attrs::WRITE | Attrs::GLOBAL,
            theirs: XF::PRESENT | XF::WRITABLE | XF::GLOBAL | XF::NO_EXECUTE,
        },
        Call {
            va: 0xffff_8000_0000_1000,
            pa: 0x9_9999_0000,
            size: PageSize::Size4K,
            ours: Attrs::KERNEL_RW,
            theirs: XF::PRESENT
                | XF::WRITABLE
                | XF::GLOBAL
                | XF::NO_EXECUTE
                | XF::ACCESSED
                | XF::DIRTY,
        },
        Call {
            va: 0x0000_7fff_0000_0000,
            pa: 0x4000,
            size: PageSize::Size4K,
            ours: Attrs::USER_RX,
            theirs: XF::PRESENT | XF::USER_ACCESSIBLE | XF::ACCESSED,
        },
        Call {
            va: 0x0000_7fff_0000_1000,
            pa: 0x5000,
            size: PageSize::Size4K,
            ours: Attrs::KERNEL_RW.with_cache(CachePolicy::Device) - Attrs::DIRTY,
            theirs: XF::PRESENT
                | XF::WRITABLE
                | XF::GLOBAL
                | XF::NO_EXECUTE
                | XF::ACCESSED
                | XF::WRITE_THROUGH
                | XF::NO_CACHE,
        },
        Call {
            va: 0x0000_7fff_0000_2000,
            pa: 0x6000,
            size: PageSize::Size4K,
            ours: Attrs::USER_RW.with_cache(CachePolicy::WriteCombining),
            theirs: XF::PRESENT
                | XF::WRITABLE
                | XF::USER_ACCESSIBLE
                | XF::NO_EXECUTE
                | XF::ACCESSED
                | XF::WRITE_THROUGH,
        },
        Call {
            va: 0x0000_0040_0020_0000,
            pa: 0x8020_0000,
            size: PageSize::Size2M,
            ours: Attrs::KERNEL_RX,
            theirs: XF::PRESENT | XF::GLOBAL | XF::ACCESSED,
        },
        Call {
            va: 0x0000_0040_0040_0000,
            pa: 0x8040_0000,
            size: PageSize::Size2M,
            ours: Attrs::KERNEL_RW | Attrs::SW1,
            theirs: XF::PRESENT
                | XF::WRITABLE
                | XF::GLOBAL
                | XF::NO_EXECUTE
                | XF::ACCESSED
                | XF::DIRTY
                | XF::BIT_10,
        },
        Call {
            va: 0xffff_c000_4000_0000,
            pa: 0x1_c000_0000,
            size: PageSize::Size1G,
            ours: Attrs::KERNEL_RW,
            theirs: XF::PRESENT
                | XF::WRITABLE
                | XF::GLOBAL
                | XF::NO_EXECUTE
                | XF::ACCESSED
                | XF::DIRTY,
        },
    ];
    let f = X86_64::FOUR_LEVEL;
    let arena = arena_for(&f, 32);
    let mut ours = table(f, &arena);
    let mem = HostMemory::new(PhysAddr::new(0x100_0000), 64 * 4096);
    let mut bump = Bump {
        mem: &mem,
        next: 4096,
    };
    let host_base = mem.ptr_of(PhysAddr::new(0x100_0000)).unwrap().as_ptr() as u64;
    let offset = x86_64::VirtAddr::new(host_base.wrapping_sub(0x100_0000));
    // SAFETY: the first frame of `mem` is the zeroed level-4 table, used only through `pt4`.
    let pt4 = unsafe { &mut *(host_base as *mut XPageTable) };
    // SAFETY: all of `mem` is mapped at `offset` (the host buffer), and frames only come from it.
    let mut theirs = unsafe { OffsetPageTable::new(pt4, offset) };
    for c in &calls {
        let _ = ours
            .map(
                VirtAddr::new(c.va),
                PhysAddr::new(c.pa),
                c.size.bytes(),
                c.ours,
                MapSize::Exactly(c.size),
            )
            .unwrap();
        let va = x86_64::VirtAddr::new(c.va);
        let pa = x86_64::PhysAddr::new(c.pa);
        // SAFETY: the mapped frames are never accessed; the table is never loaded.
        unsafe {
            match c.size {
                PageSize::Size4K => theirs
                    .map_to(
                        Page::<Size4KiB>::containing_address(va),
                        PhysFrame::containing_address(pa),
                        c.theirs,
                        &mut bump,
                    )
                    .unwrap()
                    .ignore(),
                PageSize::Size2M => theirs
                    .map_to(
                        Page::<Size2MiB>::containing_address(va),
                        PhysFrame::containing_address(pa),
                        c.theirs,
                        &mut bump,
                    )
                    .unwrap()
                    .ignore(),
                _ => theirs
                    .map_to(
                        Page::<Size1GiB>::containing_address(va),
                        PhysFrame::containing_address(pa),
                        c.theirs,
                        &mut bump,
                    )
                    .unwrap()
                    .ignore(),
            }
        }
    }
    let their_root = PhysAddr::new(0x100_0000);
    for c in &calls {
        let (level, raw) = ours.raw_leaf(VirtAddr::new(c.va)).unwrap();
        let (tlevel, traw) = x86_leaf(&mem, their_root, c.va).unwrap();
        assert_eq!(level, tlevel, "{:#x}", c.va);
        assert_eq!(raw, traw, "{:#x}: ours {raw:#x} theirs {traw:#x}", c.va);
    }
}

/// Walk a 4-level x86 table in `mem` for `va`, returning the leaf entry and its level.
fn x86_leaf(mem: &HostMemory, root: PhysAddr, va: u64) -> Option<(usize, u64)> {
    let mut table = root;
    for level in 0..4usize {
        let shift = 39 - 9 * level as u32;
        let t = crate::raw::table_at(mem, table, 4096)?;
        let e = crate::raw::load(t, ((va >> shift) & 511) as usize);
        if e & 1 == 0 {
            return None;
        }
        if level == 3 || e & 0x80 != 0 {
            return Some((level, e));
        }
        table = PhysAddr::new(e & 0x000f_ffff_ffff_f000);
    }
    None
}

/// aarch64-paging 0.12 has a `NO_CONTIGUOUS_HINT` constraint but never sets the hint, so the
/// hint bit is masked out of our side; this crate's own tests check the runs.
#[test]
fn aarch64_4k_leaves_match_aarch64_paging() {
    type A = El1Attributes;
    let normal = A::VALID | A::ATTRIBUTE_INDEX_0 | A::INNER_SHAREABLE | A::ACCESSED;
    let cases: [(u64, u64, u64, Attrs, A); 6] = [
        // A range with pages, 2 MiB blocks and a 1 GiB block.
        (
            0x3fdf_d000,
            0x4_3fdf_d000,
            0x8060_3000 - 0x3fdf_d000,
            Attrs::READ | Attrs::WRITE | Attrs::GLOBAL | Attrs::ACCESSED,
            normal | A::UXN | A::PXN,
        ),
        (
            0x80_0000_0000,
            0x1_0000_0000,
            0x5000,
            Attrs::USER_RX - Attrs::GLOBAL,
            normal | A::USER | A::READ_ONLY | A::PXN | A::NON_GLOBAL,
        ),
        (
            0x80_0001_0000,
            0x2_0000_0000,
            0x2000,
            Attrs::USER_RW,
            normal | A::USER | A::UXN | A::PXN | A::NON_GLOBAL,
        ),
        (
            0x80_0002_0000,
            0x3_0000_0000,
            0x1000,
            Attrs::KERNEL_RX.with_cache(CachePolicy::WriteThrough),
            (normal - A::ATTRIBUTE_INDEX_0) | A::ATTRIBUTE_INDEX_1 | A::UXN | A::READ_ONLY,
        ),
        // Two aligned 16-page runs and three pages more.
        (
            0x80_0010_0000,
            0x5_0000_0000,
            0x2_3000,
            Attrs::KERNEL_RO,
            normal | A::UXN | A::PXN | A::READ_ONLY,
        ),
        (
            0x80_0003_0000,
            0x4_0000_0000,
            0x1000,
            (Attrs::READ | Attrs::WRITE | Attrs::GLOBAL | Attrs::ACCESSED)
                .with_cache(CachePolicy::Device),
            A::VALID | A::ATTRIBUTE_INDEX_4 | A::INNER_SHAREABLE | A::ACCESSED | A::UXN | A::PXN,
        ),
    ];
    let f = Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap();
    let arena = arena_for(&f, 64);
    let mut ours = table(f, &arena);
    let mut theirs =
        RootTable::with_va_range(IdTranslation::<A>::new(), 0, El1And0, VaRange::Lower);
    for &(va, pa, len, a, ta) in &cases {
        let _ = ours
            .map(
                VirtAddr::new(va),
                PhysAddr::new(pa),
                len,
                a,
                MapSize::Largest,
            )
            .unwrap();
        let region = MemoryRegion::new(va as usize, (va + len) as usize);
        theirs
            .map_range(
                &region,
                APhys(pa as usize),
                ta,
                Constraints::NO_CONTIGUOUS_HINT,
            )
            .unwrap();
    }
    let mut compared = 0;
    let mut conts = 0;
    for &(va, _, len, ..) in &cases {
        let region = MemoryRegion::new(va as usize, (va + len) as usize);
        theirs
            .walk_range(&region, &mut |mr, desc, level| {
                if !desc.is_valid() {
                    return Ok(());
                }
                let traw = desc.flags().bits() as u64 | desc.output_address().0 as u64;
                let (olevel, raw) = ours
                    .raw_leaf(VirtAddr::new(mr.start().0 as u64))
                    .expect("ours mapped");
                assert_eq!(olevel + (4 - ours.format().levels().len()), level, "{mr:?}");
                let cont = crate::arch::aarch64::CONT;
                assert_eq!(raw & !cont, traw, "{mr:?}: ours {raw:#x} theirs {traw:#x}");
                conts += usize::from(raw & cont != 0);
                compared += 1;
                Ok(())
            })
            .unwrap();
    }
    assert!(compared > 10, "compared {compared} leaves");
    assert_eq!(conts, 32, "ours marks the two aligned 16-page runs");
    let sizes: Vec<_> = ours
        .cursor(VirtAddr::new(cases[0].0), cases[0].2)
        .unwrap()
        .map(|t| t.size)
        .collect();
    assert!(sizes.contains(&PageSize::Size1G) && sizes.contains(&PageSize::Size2M));
}
