//! The kernel image made W^X in one pass of mmkit-pgtable's mutating cursor.
//!
//! Both kernels map their whole image once, read + write with 4 KiB pages, and then hand the
//! range to [`PageTable::update_leaves`] with [`image_leaf_update`] as the callback: `.text`
//! becomes read + execute, `.rodata` read only, the boot stack's guard page is removed, and
//! everything else (`.data`, `.bss`) keeps its read + write leaf. That is one walk of the
//! image's leaf tables instead of one `map` per section with the guard page cut out by hand,
//! and the flush token covers exactly the pages that changed ([`seal_kernel_image`] hands it
//! back for the kernel to print and settle).

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange, VirtAddr};
use mmkit_pgtable::{
    Attrs, Flush, FrameSource, LeafUpdate, PageTable, PagingFormat, Translation, UpdateError,
};

use crate::mmu_checks::KernelSections;

/// What the cursor does to the identity-mapped image leaf `t`: read + execute in `.text`,
/// read only in `.rodata`, removed if it is the `guard` page, kept otherwise.
pub fn image_leaf_update(
    t: &Translation,
    s: &KernelSections,
    guard: Option<PhysRange>,
) -> LeafUpdate {
    let pa = PhysAddr::new(t.page_va.as_u64());
    if guard.is_some_and(|g| g.contains(pa)) {
        LeafUpdate::Unmap
    } else if s.text.contains(pa) {
        LeafUpdate::Attrs(Attrs::KERNEL_RX)
    } else if s.rodata.contains(pa) {
        LeafUpdate::Attrs(Attrs::KERNEL_RO)
    } else {
        LeafUpdate::Keep
    }
}

/// Run the W^X pass ([`image_leaf_update`]) over the identity-mapped `image` of `pt`, which
/// must map it with 4 KiB pages (a larger leaf would change as a whole). Returns the token.
pub fn seal_kernel_image<F: PagingFormat, M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<F, M, S>,
    image: PhysRange,
    sections: KernelSections,
    guard: Option<PhysRange>,
) -> Result<Flush, UpdateError> {
    pt.update_leaves(
        VirtAddr::new(image.start().as_u64()),
        image.len(),
        |t: &Translation| image_leaf_update(t, &sections, guard),
    )
}

#[cfg(test)]
// The test builds a table over host memory, which needs the unsafe constructors.
#[allow(unsafe_code)]
mod tests {
    use mmkit_addr::host::HostMemory;
    use mmkit_addr::{PageSize, PAGE_SIZE};
    use mmkit_pgtable::arch::x86_64::X86_64;
    use mmkit_pgtable::{FlushScope, MapSize};

    use super::*;
    use crate::frames::{PoolFrames, WindowMapper};
    use crate::mmu_checks::kernel_image_is_w_xor_x;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start), len).unwrap()
    }

    #[test]
    fn one_cursor_pass_makes_the_image_w_xor_x_with_a_guard_hole() {
        let memory = HostMemory::new(PhysAddr::new(0x4000_0000), 16 * PAGE_SIZE);
        let base = memory.range().start();
        let offset = (memory.ptr_of(base).unwrap().as_ptr() as u64).wrapping_sub(base.as_u64());
        // SAFETY: the host buffer backs the window.
        let mapper = unsafe { WindowMapper::new(memory.range(), offset) };
        // SAFETY: zeroed, owned by this test.
        let frames = unsafe { PoolFrames::new(memory.range(), &memory) };
        let mut pt = PageTable::new(X86_64::FOUR_LEVEL, mapper, frames).unwrap();
        let s = KernelSections {
            text: r(0x10_0000, 0x3000),
            rodata: r(0x10_3000, 0x2000),
            data: r(0x10_5000, 0x4000),
        };
        let image = r(0x10_0000, 0x9000);
        let guard = r(0x10_6000, 0x1000);
        let _ = pt
            .map(
                VirtAddr::new(0x10_0000),
                image.start(),
                image.len(),
                Attrs::KERNEL_RW,
                MapSize::Exactly(PageSize::Size4K),
            )
            .unwrap();
        // Before the pass the image is writable everywhere: the check refuses it.
        assert!(kernel_image_is_w_xor_x(&pt, image, s, &[guard]).is_err());
        let fl = seal_kernel_image(&mut pt, image, s, Some(guard)).unwrap();
        // The token covers text, rodata and the guard page, not the data above the guard.
        assert_eq!(
            fl.scope(),
            FlushScope::Range {
                start: VirtAddr::new(0x10_0000),
                pages: 7,
                stride: PageSize::Size4K,
                leaf_only: true,
            }
        );
        // SAFETY: the table was never loaded.
        let freed = unsafe { fl.assume_invalidated() };
        pt.free_tables(freed).unwrap();
        kernel_image_is_w_xor_x(&pt, image, s, &[guard]).unwrap();
        pt.verify().unwrap();
    }
}
