//! Checks of the kernels' own page tables that read the tables (through mmkit-pgtable's
//! `translate`) or compare two mappings of the same memory, so the same code serves both
//! architectures; the checks that need a fault live in the kernels.

use mmkit_addr::{PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit_pgtable::{Attrs, FrameSource, PageTable, PagingFormat};

use crate::harness::CheckResult;
use crate::memmap::MemoryMap;
use crate::{ensure, fail, rawmem};

/// The kernel image's sections (page-aligned by the kernels' linker scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSections {
    /// Code: must be read + execute.
    pub text: PhysRange,
    /// Read-only data: read only, no execute.
    pub rodata: PhysRange,
    /// Data and `.bss`: read + write, no execute.
    pub data: PhysRange,
}

/// Every page of `image` except the `holes` (guard pages) is identity-mapped, never writable
/// and executable at once, and each section has exactly its permissions; the holes are not
/// mapped at all.
pub fn kernel_image_is_w_xor_x<F: PagingFormat, M: PhysMapper, S: FrameSource>(
    pt: &PageTable<F, M, S>,
    image: PhysRange,
    s: KernelSections,
    holes: &[PhysRange],
) -> CheckResult {
    for pfn in image.whole_pfns() {
        let va = pfn * PAGE_SIZE;
        let translation = pt.translate(VirtAddr::new(va));
        if holes.iter().any(|h| h.contains(PhysAddr::new(va))) {
            ensure!(translation.is_none(), "guard page {va:#x} is mapped");
            continue;
        }
        let Some(t) = translation else {
            fail!("kernel page {va:#x} is not mapped");
        };
        ensure!(
            t.pa_of(VirtAddr::new(va)).as_u64() == va,
            "kernel page {va:#x} is not identity-mapped"
        );
        let w = t.attrs().contains(Attrs::WRITE);
        let x = t.attrs().contains(Attrs::KERNEL_EXEC);
        ensure!(!(w && x), "kernel page {va:#x} is writable and executable");
        let pa = PhysAddr::new(va);
        if s.text.contains(pa) {
            ensure!(x && !w, "text page {va:#x}: {:?}", t.attrs());
        } else if s.rodata.contains(pa) {
            ensure!(!x && !w, "rodata page {va:#x}: {:?}", t.attrs());
        } else if s.data.contains(pa) {
            ensure!(!x && w, "data page {va:#x}: {:?}", t.attrs());
        }
    }
    Ok(())
}

/// The direct map (at `direct_base + pa`) maps the first 2 MiB-aligned block of the largest
/// RAM region with a page of at least 2 MiB, to the right frame, not executable.
pub fn direct_map_uses_large_pages<F: PagingFormat, M: PhysMapper, S: FrameSource>(
    pt: &PageTable<F, M, S>,
    map: &MemoryMap,
    direct_base: u64,
) -> CheckResult {
    let Some(biggest) = map.ram().max_by_key(|r| r.len()) else {
        fail!("no RAM");
    };
    let two_mib = PageSize::Size2M.bytes();
    let Some(pa) = biggest.start().align_up(two_mib) else {
        fail!("{biggest} has no 2 MiB boundary");
    };
    ensure!(
        pa.as_u64() + two_mib <= biggest.end().as_u64(),
        "{biggest} holds no 2 MiB block"
    );
    let va = VirtAddr::new(direct_base.wrapping_add(pa.as_u64()));
    let Some(t) = pt.translate(va) else {
        fail!("direct map of {pa:?} is not mapped");
    };
    ensure!(
        t.pa_of(va) == pa,
        "direct map of {pa:?} points at {:?}",
        t.pa_of(va)
    );
    ensure!(
        t.size >= PageSize::Size2M,
        "direct map of {pa:?} uses {:?} pages",
        t.size
    );
    ensure!(
        !t.attrs().contains(Attrs::KERNEL_EXEC),
        "direct map is executable"
    );
    Ok(())
}

/// A pattern written to the highest free page (below `limit`, clear of `avoid`) through the
/// identity map (`pa + identity_offset`) reads back through `direct`: the two mappings alias
/// the same frame.
///
/// # Safety
/// Every free RAM page of `map` below `limit` and outside `avoid` must be nobody's (bootmem
/// handed it off and no allocator took it yet, so the check may use it while it runs) and
/// mapped RW at `pa + identity_offset`; `direct` must be a valid mapper.
pub unsafe fn direct_map_aliases_identity(
    map: &MemoryMap,
    avoid: &[PhysRange],
    limit: u64,
    identity_offset: u64,
    direct: &dyn PhysMapper,
) -> CheckResult {
    let Some(page) = map.find_free_top_down(PAGE_SIZE, PAGE_SIZE, limit, avoid) else {
        fail!("no free page");
    };
    // SAFETY: the caller maps this free page RW at `pa + identity_offset`.
    let identity = unsafe { crate::frames::WindowMapper::new(page, identity_offset) };
    let (Some(a), Some(b)) = (identity.phys_to_virt(page), direct.phys_to_virt(page)) else {
        fail!("{page} is not reachable through both mappings");
    };
    ensure!(a != b, "both mappings put {page} at {a:p}");
    let words = (PAGE_SIZE / 8) as usize;
    // SAFETY: the page is free RAM no allocator has handed out, so this check owns it while it
    // runs (the caller's contract); both mappers reach it RW, page-aligned.
    unsafe {
        rawmem::write_read_pattern(a, words, page.start().as_u64())?;
        rawmem::check_pattern(b, words, page.start().as_u64())
    }
}

/// The highest free RAM page below `limit` (not in `exclude`) lies at least `far` bytes above
/// the kernel image and takes a pattern written and read back through `mapper`: RAM far from
/// where the kernel was loaded is real and reachable before anything else runs.
///
/// # Safety
/// Every RAM page of `map` below `limit` that `exclude` does not cover is unused (nothing
/// allocates memory yet), and `mapper` reaches it for reads and writes.
pub unsafe fn far_ram_page_write_read<M: PhysMapper>(
    map: &MemoryMap,
    kernel: PhysRange,
    exclude: &[PhysRange],
    mapper: &M,
    limit: u64,
    far: u64,
) -> CheckResult {
    let Some(page) = map.find_free_top_down(PAGE_SIZE, PAGE_SIZE, limit, exclude) else {
        fail!("no free RAM page below {limit:#x}");
    };
    ensure!(
        page.start().as_u64() >= kernel.end().as_u64() + far,
        "highest free page {page} is within {far:#x} of the kernel"
    );
    let Some(ptr) = mapper.phys_to_virt(page) else {
        fail!("{page} not reachable through the mapper");
    };
    // SAFETY: `page` is free RAM below `limit` outside `exclude`, so unused (caller), and
    // `mapper` makes it writable at `ptr`, page-aligned (caller, `PhysMapper`'s contract).
    unsafe { rawmem::write_read_pattern(ptr, (PAGE_SIZE / 8) as usize, page.start().as_u64()) }
}

#[cfg(test)]
mod tests {
    use mmkit_addr::host::HostMemory;
    use mmkit_pgtable::arch::x86_64::X86_64;
    use mmkit_pgtable::MapSize;

    use super::*;
    use crate::frames::{PoolFrames, WindowMapper};
    use crate::memmap::RegionKind;

    const MIB: u64 = 1 << 20;
    const DIRECT: u64 = 0xffff_8880_0000_0000;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start), len).unwrap()
    }

    fn sections() -> KernelSections {
        KernelSections {
            text: r(0x10_0000, 0x3000),
            rodata: r(0x10_3000, 0x2000),
            data: r(0x10_5000, 0x3000),
        }
    }

    /// A table over host memory: the "kernel" at 1 MiB mapped with `text_attrs` for text and
    /// the right permissions elsewhere, and a direct map of 16 MiB of RAM at `DIRECT`.
    fn with_table(
        text_attrs: Attrs,
        f: impl FnOnce(&PageTable<X86_64, WindowMapper, PoolFrames<'_>>),
    ) {
        let memory = HostMemory::new(PhysAddr::new(0x4000_0000), 64 * PAGE_SIZE);
        let base = memory.range().start();
        let offset = (memory.ptr_of(base).unwrap().as_ptr() as u64).wrapping_sub(base.as_u64());
        // SAFETY: the host buffer backs the window.
        let mapper = unsafe { WindowMapper::new(memory.range(), offset) };
        // SAFETY: zeroed, owned by this test.
        let frames = unsafe { PoolFrames::new(memory.range(), &memory) };
        let mut pt = PageTable::new(X86_64::FOUR_LEVEL, mapper, frames).unwrap();
        let s = sections();
        for (range, attrs) in [
            (s.text, text_attrs),
            (s.rodata, Attrs::KERNEL_RO),
            (s.data, Attrs::KERNEL_RW),
        ] {
            let va = VirtAddr::new(range.start().as_u64());
            let _ = pt
                .map(va, range.start(), range.len(), attrs, MapSize::Largest)
                .unwrap();
        }
        let _ = pt
            .map(
                VirtAddr::new(DIRECT),
                PhysAddr::new(0),
                16 * MIB,
                Attrs::KERNEL_RW,
                MapSize::Largest,
            )
            .unwrap();
        f(&pt);
    }

    fn image() -> PhysRange {
        r(0x10_0000, 0x8000)
    }

    #[test]
    fn w_xor_x_accepts_a_correct_image_and_rejects_writable_text() {
        with_table(Attrs::KERNEL_RX, |pt| {
            assert!(kernel_image_is_w_xor_x(pt, image(), sections(), &[]).is_ok());
        });
        with_table(Attrs::KERNEL_RX | Attrs::WRITE, |pt| {
            let err = kernel_image_is_w_xor_x(pt, image(), sections(), &[]).unwrap_err();
            assert!(err.as_str().contains("writable and executable"), "{err}");
        });
        with_table(Attrs::KERNEL_RO, |pt| {
            let err = kernel_image_is_w_xor_x(pt, image(), sections(), &[]).unwrap_err();
            assert!(err.as_str().starts_with("text page"), "{err}");
        });
        with_table(Attrs::KERNEL_RX, |pt| {
            let bigger = r(0x10_0000, 0x9000);
            let err = kernel_image_is_w_xor_x(pt, bigger, sections(), &[]).unwrap_err();
            assert!(err.as_str().contains("not mapped"), "{err}");
            // The unmapped page is fine as a declared hole; a mapped page is not.
            let hole = [r(0x10_8000, 0x1000)];
            assert!(kernel_image_is_w_xor_x(pt, bigger, sections(), &hole).is_ok());
            let mapped_hole = [r(0x10_5000, 0x1000)];
            let err = kernel_image_is_w_xor_x(pt, image(), sections(), &mapped_hole).unwrap_err();
            assert!(err.as_str().contains("guard page"), "{err}");
        });
    }

    #[test]
    fn direct_map_check_wants_a_large_page_at_the_right_frame() {
        let mut map = MemoryMap::new();
        map.add(0, 16 * MIB, RegionKind::Ram).unwrap();
        with_table(Attrs::KERNEL_RX, |pt| {
            assert!(direct_map_uses_large_pages(pt, &map, DIRECT).is_ok());
            let err = direct_map_uses_large_pages(pt, &map, DIRECT + 0x20_0000).unwrap_err();
            assert!(err.as_str().contains("points at"), "{err}");
        });
    }

    #[test]
    fn alias_check_sees_two_views_of_one_frame() {
        let memory = HostMemory::new(PhysAddr::new(0), 4 * PAGE_SIZE);
        let mut map = MemoryMap::new();
        map.add(0, 4 * PAGE_SIZE, RegionKind::Ram).unwrap();
        let base = memory.range().start();
        let offset = (memory.ptr_of(base).unwrap().as_ptr() as u64).wrapping_sub(base.as_u64());
        // SAFETY: translation only plus the test's own buffer.
        let same = unsafe { WindowMapper::new(memory.range(), offset) };
        // Two mappers giving the same address prove nothing about aliasing: refused.
        let avoid = [r(0, PAGE_SIZE)];
        // SAFETY: the buffer backs every page at `pa + offset`; the test owns it.
        let err = unsafe { direct_map_aliases_identity(&map, &avoid, u64::MAX, offset, &same) }
            .unwrap_err();
        assert!(err.as_str().contains("both mappings put"), "{err}");
        // A mapper shifted by one page reads another frame: the pattern does not match.
        // SAFETY: as above; the shifted window stays inside the buffer for the pages used.
        let shifted =
            unsafe { WindowMapper::new(r(0, 3 * PAGE_SIZE), offset.wrapping_add(PAGE_SIZE)) };
        let avoid = [r(3 * PAGE_SIZE, PAGE_SIZE)];
        // SAFETY: as above.
        let err = unsafe { direct_map_aliases_identity(&map, &avoid, u64::MAX, offset, &shifted) }
            .unwrap_err();
        assert!(err.as_str().contains("reads"), "{err}");
    }
}
