//! The kernel's own page tables, built with mmkit-pgtable, and the switch to them.
//!
//! Layout of the new address space (4-level paging):
//!
//! | virtual | physical | mapping |
//! |---|---|---|
//! | `0x0000` page | — | unmapped (null pointers fault) |
//! | `[4 KiB, 4 GiB)` outside the kernel | identity | RW, no-exec; 4 KiB pages below 2 MiB, then 1 GiB pages if the CPU has them, else 2 MiB |
//! | kernel `.text` | identity | read + exec |
//! | kernel `.rodata` (GDT, exception table included) | identity | read only, no-exec |
//! | kernel `.data` / `.bss` (stack, IDT) | identity | RW, no-exec |
//! | lowest page of the boot stack | — | unmapped: the stack's guard page |
//! | [`DIRECT_MAP_BASE`] + every RAM range | RAM | RW, no-exec, largest pages alignment allows |
//!
//! So the kernel image is W^X, and all RAM has a higher-half alias (Linux's `page_offset_base`
//! for 4-level paging). Table frames come from memory bootmem kept through the hand-off
//! ([`PoolFrames`]); the tables reach them through a [`WindowMapper`] over that pool, which is
//! identity-mapped RW in both the boot tables and these, so the table stays editable after the
//! switch (the self-tests use `protect` on the live table).
//!
//! The boot tables of `boot.rs` stay in `.bss` but are no longer used once CR3 points here.

use mmkit_addr::{
    align_down, align_up, OffsetMapper, PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr,
};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::arch::x86_64_hw;
use mmkit_pgtable::{Attrs, FrameSource, MapError, MapSize, PageTable};
use mmkit_qemu_common::frames::{PoolFrames, WindowMapper};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::mmu_checks::KernelSections;

use crate::memmap::kernel_image;
use crate::platform::IDENTITY_LIMIT;

/// Where the direct map of all RAM starts (Linux x86_64, 4-level: `0xffff888000000000`).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;

/// How much physical memory the direct map could cover (Linux x86_64 4-level: 64 TiB).
pub const DIRECT_MAP_LIMIT: u64 = 1 << 46;

/// The direct map as mmkit's phys→virt hook. Use it only once [`switch_to`] has run.
// SAFETY: after `switch_to`, every RAM address (all below 64 TiB) is mapped RW at
// `DIRECT_MAP_BASE + pa` (`build` maps each RAM range of the firmware map there), and the
// kernel uses this mapper only from then on; the sum cannot wrap.
pub static DIRECT: OffsetMapper = unsafe { OffsetMapper::new(DIRECT_MAP_BASE, DIRECT_MAP_LIMIT) };

/// The kernel's table type.
pub type KernelTable<'p> = PageTable<X86_64, WindowMapper, PoolFrames<'p>>;

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

fn symbol_range(start: *const u8, end: *const u8) -> PhysRange {
    PhysRange::new(PhysAddr::new(start as u64), PhysAddr::new(end as u64))
        .unwrap_or(PhysRange::EMPTY)
}

/// The kernel image's sections, from the linker script's symbols (page-aligned there).
pub fn sections() -> KernelSections {
    use core::ptr::addr_of;
    KernelSections {
        text: symbol_range(addr_of!(__text_start), addr_of!(__text_end)),
        rodata: symbol_range(addr_of!(__rodata_start), addr_of!(__rodata_end)),
        data: symbol_range(addr_of!(__data_start), addr_of!(__data_end)),
    }
}

/// Paging features of this CPU (CPUID leaf 0x8000_0001, EDX).
#[derive(Debug, Clone, Copy)]
pub struct PagingFeatures {
    /// Execute-disable (bit 20); `boot.rs` set EFER.NXE when present.
    pub nx: bool,
    /// 1 GiB pages (bit 26).
    pub gib_pages: bool,
}

/// Read the paging features.
pub fn paging_features() -> PagingFeatures {
    // Leaf 0x8000_0001 exists on every CPU that reached long mode (`boot.rs` checked).
    let edx = core::arch::x86_64::__cpuid(0x8000_0001).edx;
    PagingFeatures {
        nx: edx & (1 << 20) != 0,
        gib_pages: edx & (1 << 26) != 0,
    }
}

/// Why the tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The CPU has no execute-disable bit, so W^X cannot be expressed.
    NoNx,
    /// The table had no root frame.
    NoRoot,
    /// A mapping failed.
    Map {
        /// What was being mapped.
        what: &'static str,
        /// Its first virtual address.
        va: u64,
        /// Why.
        error: MapError,
    },
}

fn map<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<X86_64, M, S>,
    what: &'static str,
    va: u64,
    pa: u64,
    len: u64,
    attrs: Attrs,
    size: MapSize,
) -> Result<(), BuildError> {
    if len == 0 {
        return Ok(());
    }
    let flush = pt
        .map(VirtAddr::new(va), PhysAddr::new(pa), len, attrs, size)
        .map_err(|error| BuildError::Map { what, va, error })?;
    // Building a table that is not loaded: nothing can be cached for it yet.
    let _ = flush;
    Ok(())
}

/// Map `[pa, pa + len)` at `va` with the largest pages the CPU supports: 1 GiB pages need
/// CPU support, so without it the 2 MiB-aligned middle is mapped with 2 MiB pages exactly.
fn map_large<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<X86_64, M, S>,
    what: &'static str,
    va: u64,
    pa: u64,
    len: u64,
    gib_pages: bool,
) -> Result<(), BuildError> {
    let attrs = Attrs::KERNEL_RW;
    if gib_pages {
        return map(pt, what, va, pa, len, attrs, MapSize::Largest);
    }
    let two_mib = PageSize::Size2M.bytes();
    let end = pa + len;
    let mid_start = align_up(pa, two_mib).unwrap_or(end).min(end);
    let mid_end = align_down(end, two_mib).max(mid_start);
    map(pt, what, va, pa, mid_start - pa, attrs, MapSize::Largest)?;
    map(
        pt,
        what,
        va + (mid_start - pa),
        mid_start,
        mid_end - mid_start,
        attrs,
        MapSize::Exactly(PageSize::Size2M),
    )?;
    map(
        pt,
        what,
        va + (mid_end - pa),
        mid_end,
        end - mid_end,
        attrs,
        MapSize::Largest,
    )
}

/// Build the kernel's tables (see the module docs) from `frames`.
pub fn build<'p>(
    map_: &MemoryMap,
    mapper: WindowMapper,
    frames: PoolFrames<'p>,
    cpu: PagingFeatures,
) -> Result<KernelTable<'p>, BuildError> {
    if !cpu.nx {
        return Err(BuildError::NoNx);
    }
    let mut pt =
        PageTable::new(X86_64::FOUR_LEVEL, mapper, frames).map_err(|_| BuildError::NoRoot)?;
    populate(&mut pt, map_, cpu)?;
    Ok(pt)
}

/// Map the kernel's address space (module docs) into `pt`, which may already serve other
/// ranges (the facade's table holds the vmalloc window): identity with the W^X image, and
/// the direct map.
pub fn populate<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<X86_64, M, S>,
    map_: &MemoryMap,
    cpu: PagingFeatures,
) -> Result<(), BuildError> {
    if !cpu.nx {
        return Err(BuildError::NoNx);
    }
    let pt = &mut *pt;
    let kernel = kernel_image();
    let s = sections();
    let two_mib = PageSize::Size2M.bytes();
    let (k_start, k_end) = (kernel.start().as_u64(), kernel.end().as_u64());
    let low_end = align_up(k_end, two_mib).unwrap_or(k_end);

    // Identity, below and around the kernel (4 KiB pages; page 0 stays unmapped).
    let page = PageSize::Size4K.bytes();
    map(
        pt,
        "low memory",
        page,
        page,
        k_start - page,
        Attrs::KERNEL_RW,
        MapSize::Largest,
    )?;
    let rx = Attrs::KERNEL_RX;
    map(
        pt,
        ".text",
        s.text.start().as_u64(),
        s.text.start().as_u64(),
        s.text.len(),
        rx,
        MapSize::Largest,
    )?;
    let ro = Attrs::KERNEL_RO;
    let rodata = s.rodata.start().as_u64();
    map(
        pt,
        ".rodata",
        rodata,
        rodata,
        s.rodata.len(),
        ro,
        MapSize::Largest,
    )?;
    let rw = Attrs::KERNEL_RW;
    // `.data` and `.bss`, minus the boot stack's guard page.
    let guard = crate::boot::boot_stack_guard();
    let (data, data_end) = (s.data.start().as_u64(), s.data.end().as_u64());
    let (g_start, g_end) = (guard.start().as_u64(), guard.end().as_u64());
    map(
        pt,
        ".data",
        data,
        data,
        g_start - data,
        rw,
        MapSize::Largest,
    )?;
    map(
        pt,
        ".bss above the guard",
        g_end,
        g_end,
        data_end - g_end,
        rw,
        MapSize::Largest,
    )?;
    map(
        pt,
        "above the kernel",
        k_end,
        k_end,
        low_end - k_end,
        rw,
        MapSize::Largest,
    )?;
    // Identity for the rest of the first 4 GiB (RAM, firmware, MMIO).
    map_large(
        pt,
        "identity",
        low_end,
        low_end,
        IDENTITY_LIMIT - low_end,
        cpu.gib_pages,
    )?;

    // The direct map of all RAM.
    for ram in map_.ram() {
        let start = align_up(ram.start().as_u64(), page).unwrap_or(u64::MAX);
        let end = align_down(ram.end().as_u64(), page);
        if start < end {
            map_large(
                pt,
                "direct map",
                DIRECT_MAP_BASE + start,
                start,
                end - start,
                cpu.gib_pages,
            )?;
        }
    }
    Ok(())
}

/// Load `pt` into CR3.
///
/// # Safety
/// `pt` must map everything the kernel uses from now on at its current address (it does:
/// see [`build`]) and must stay alive, unchanged except through its own operations with
/// their flushes, for as long as it is loaded.
pub unsafe fn switch_to<M: PhysMapper, S: FrameSource>(pt: &mut PageTable<X86_64, M, S>) {
    // SAFETY: CPL 0; the caller guarantees the table keeps the running kernel mapped.
    unsafe { x86_64_hw::load_cr3(pt.root()) };
    pt.set_live(true);
}

/// CR3's current table address.
pub fn current_root() -> u64 {
    // SAFETY: the kernel runs at CPL 0; reading CR3 has no side effect.
    unsafe { x86_64_hw::read_cr3() & !0xfff }
}
