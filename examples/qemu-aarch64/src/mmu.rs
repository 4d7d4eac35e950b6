//! The kernel's own page tables, built with mmkit-pgtable, and turning the MMU on with them.
//!
//! Two tables, 4 KiB granule, 48-bit virtual addresses:
//!
//! | half | virtual | physical | mapping |
//! |---|---|---|---|
//! | TTBR0 | RAM outside the kernel | identity | RW, no-exec, largest blocks |
//! | TTBR0 | kernel `.text` | identity | read + exec |
//! | TTBR0 | kernel `.rodata` (exception table included) | identity | read only, no-exec |
//! | TTBR0 | kernel `.data` / `.bss` (stack) | identity | RW, no-exec |
//! | TTBR0 | lowest page of the boot stack | — | unmapped: the stack's guard page |
//! | TTBR0 | PL011 UART page | identity | Device-nGnRE, RW, no-exec |
//! | TTBR0 | GICv2 distributor and CPU interface | identity | Device-nGnRE, RW, no-exec |
//! | TTBR1 | [`DIRECT_MAP_BASE`] + every RAM range | RAM | RW, no-exec, largest blocks |
//!
//! Nothing else is mapped (flash, the rest of MMIO, address 0). The identity half keeps the
//! running kernel, its stack, the device tree and the table pool where they were with the MMU
//! off, so turning it on needs no jump. Each table draws frames from its own half of the pool
//! bootmem kept (two tables cannot share one `&mut` frame source); the tables reach their
//! frames through a [`WindowMapper`] over the pool, which is identity-mapped RW.
//!
//! The kernel image is mapped once, read + write with 4 KiB pages, and one pass of
//! mmkit-pgtable's mutating cursor (`update_leaves`, through [`wx::seal_kernel_image`]) then
//! makes `.text` read + execute and `.rodata` read only and removes the guard page; the
//! table is not loaded yet, so the pass's token is settled without an invalidation.
//!
//! Turning the MMU on: MAIR_EL1 (pgtable's attribute encodings), TCR_EL1 (both halves' fields
//! from the formats, IPS from `ID_AA64MMFR0_EL1.PARange`, A1 = 0 and AS for 16-bit ASIDs when
//! the CPU has them), TTBR0 with [`KERNEL_ASID`] (`load_ttbr_asid`; the table is tagged
//! with it through `set_asid`), TTBR1, a full TLB
//! invalidation, then `SCTLR_EL1.{M, C, I}`. QEMU does not model caches, so the tables and
//! data written with the MMU off need no cache maintenance here; real hardware would want the
//! tables cleaned to the point of coherency first.

use core::arch::asm;

use mmkit_addr::{
    align_down, align_up, OffsetMapper, PageSize, PhysAddr, PhysMapper, PhysRange, VaHalf, VirtAddr,
};
use mmkit_pgtable::arch::aarch64::{Aarch64, Granule};
use mmkit_pgtable::arch::aarch64_hw::{self, InnerShareableTlb};
use mmkit_pgtable::{
    Asid, Attrs, CachePolicy, FlushScope, FrameSource, MapError, MapSize, PageTable, TlbInvalidate,
    UpdateError,
};
use mmkit_qemu_common::ensure;
use mmkit_qemu_common::frames::{PoolFrames, WindowMapper};
use mmkit_qemu_common::harness::Reason;
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::mmu_checks::KernelSections;
use mmkit_qemu_common::wx;

use crate::memmap::kernel_image;

/// Where the direct map of all RAM starts: the bottom of the TTBR1 half with 48-bit VAs
/// (Linux arm64's `PAGE_OFFSET` for `VA_BITS=48`).
pub const DIRECT_MAP_BASE: u64 = 0xffff_0000_0000_0000;

/// How much physical memory the direct map could cover (the 48-bit TTBR1 half: 256 TiB).
pub const DIRECT_MAP_LIMIT: u64 = 1 << 48;

/// The direct map as mmkit's phys→virt hook. Use it only once [`enable`] has run.
// SAFETY: after `enable`, every RAM address is mapped RW at `DIRECT_MAP_BASE + pa`
// (`build_upper` maps each RAM range of the firmware map there), and the kernel uses this
// mapper only from then on; `DIRECT_MAP_BASE + DIRECT_MAP_LIMIT` is 2^64 exactly, and the
// mapper's range check keeps every sum below it.
pub static DIRECT: OffsetMapper =
    unsafe { OffsetMapper::new(DIRECT_MAP_BASE, DIRECT_MAP_LIMIT - 1) };

/// The PL011 page (see `platform.rs`).
const UART_PAGE: u64 = 0x0900_0000;

/// The identity (TTBR0) format.
pub const LOWER: Aarch64 = match Aarch64::new(Granule::K4, 48, VaHalf::Lower) {
    Ok(f) => f,
    Err(_) => panic!("4 KiB granule with 48-bit VAs is a valid aarch64 format"),
};
/// The direct-map (TTBR1) format.
pub const UPPER: Aarch64 = match Aarch64::new(Granule::K4, 48, VaHalf::Upper) {
    Ok(f) => f,
    Err(_) => panic!("4 KiB granule with 48-bit VAs is a valid aarch64 format"),
};

/// One of the kernel's two tables.
pub type KernelTable<'p> = PageTable<Aarch64, WindowMapper, PoolFrames<'p>>;

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

/// Why the tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// A table had no root frame.
    NoRoot,
    /// The table is loaded already (the W^X pass assumes no TLB holds its entries).
    Live,
    /// The W^X pass of the mutating cursor failed.
    Seal(UpdateError),
    /// The W^X pass handed back tables that are not the table's own.
    ForeignTables,
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
    pt: &mut PageTable<Aarch64, M, S>,
    what: &'static str,
    va: u64,
    pa: u64,
    len: u64,
    attrs: Attrs,
) -> Result<(), BuildError> {
    map_sized(pt, what, va, pa, len, attrs, MapSize::Largest)
}

fn map_sized<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<Aarch64, M, S>,
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
    // The tables are not loaded yet: nothing can be cached for them.
    let _ = flush;
    Ok(())
}

/// Page-aligned inward.
fn whole_pages(r: PhysRange) -> (u64, u64) {
    let page = PageSize::Size4K.bytes();
    let start = align_up(r.start().as_u64(), page).unwrap_or(u64::MAX);
    (start, align_down(r.end().as_u64(), page).max(start))
}

/// Build the identity (TTBR0) table. Returns it with what the W^X pass changed
/// ([`populate_lower`]).
pub fn build_lower<'p>(
    map_: &MemoryMap,
    mapper: WindowMapper,
    frames: PoolFrames<'p>,
) -> Result<(KernelTable<'p>, FlushScope), BuildError> {
    let mut pt = PageTable::new(LOWER, mapper, frames).map_err(|_| BuildError::NoRoot)?;
    let sealed = populate_lower(&mut pt, map_)?;
    Ok((pt, sealed))
}

/// Map the identity half (table above) into a TTBR0 table `pt`, which must not be loaded yet
/// (not live): RAM, the W^X kernel image without the boot stack's guard page, the UART and
/// the GIC. Returns what the W^X pass of the mutating cursor changed (its token's scope).
pub fn populate_lower<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<Aarch64, M, S>,
    map_: &MemoryMap,
) -> Result<FlushScope, BuildError> {
    if pt.is_live() {
        return Err(BuildError::Live);
    }
    let pt = &mut *pt;
    let mut scope = FlushScope::Nothing;
    let kernel = kernel_image();
    let s = sections();
    let rw = Attrs::KERNEL_RW;
    for ram in map_.ram() {
        let (start, end) = whole_pages(ram);
        if kernel.start().as_u64() >= start && kernel.end().as_u64() <= end {
            let (k_start, k_end) = (kernel.start().as_u64(), kernel.end().as_u64());
            map(
                pt,
                "RAM below the kernel",
                start,
                start,
                k_start - start,
                rw,
            )?;
            // The image: read + write 4 KiB pages, then one pass of the mutating cursor makes
            // it W^X (`.text` RX, `.rodata` RO, the boot stack's guard page removed).
            map_sized(
                pt,
                "kernel image",
                k_start,
                k_start,
                k_end - k_start,
                rw,
                MapSize::Exactly(PageSize::Size4K),
            )?;
            let guard = crate::boot::boot_stack_guard();
            let sealed =
                wx::seal_kernel_image(pt, kernel, s, Some(guard)).map_err(BuildError::Seal)?;
            scope = sealed.scope();
            // SAFETY: `pt` is not live (checked above) and the kernel loads tables only
            // through `enable` / `facade::adopt_identity_table`, which mark them live: no
            // MMU has walked `pt`, no TLB holds its entries.
            let freed = unsafe { sealed.assume_invalidated() };
            pt.free_tables(freed)
                .map_err(|_| BuildError::ForeignTables)?;
            map(pt, "RAM above the kernel", k_end, k_end, end - k_end, rw)?;
        } else {
            map(pt, "RAM", start, start, end - start, rw)?;
        }
    }
    let device = Attrs::KERNEL_RW.with_cache(CachePolicy::Device);
    map(
        pt,
        "UART",
        UART_PAGE,
        UART_PAGE,
        PageSize::Size4K.bytes(),
        device,
    )?;
    for (what, base) in [
        ("GIC distributor", crate::gic::GICD_BASE),
        ("GIC CPU interface", crate::gic::GICC_BASE),
    ] {
        map(pt, what, base, base, crate::gic::GIC_REGION_SIZE, device)?;
    }
    Ok(scope)
}

/// Build the direct-map (TTBR1) table.
pub fn build_upper<'p>(
    map_: &MemoryMap,
    mapper: WindowMapper,
    frames: PoolFrames<'p>,
) -> Result<KernelTable<'p>, BuildError> {
    let mut pt = PageTable::new(UPPER, mapper, frames).map_err(|_| BuildError::NoRoot)?;
    populate_upper(&mut pt, map_)?;
    Ok(pt)
}

/// Map the direct map of every RAM range into a TTBR1 table `pt`, which may already serve
/// other ranges (the facade's table holds the vmalloc window).
pub fn populate_upper<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<Aarch64, M, S>,
    map_: &MemoryMap,
) -> Result<(), BuildError> {
    for ram in map_.ram() {
        let (start, end) = whole_pages(ram);
        map(
            pt,
            "direct map",
            DIRECT_MAP_BASE + start,
            start,
            end - start,
            Attrs::KERNEL_RW,
        )?;
    }
    Ok(())
}

fn sctlr() -> u64 {
    let v: u64;
    // SAFETY: reading SCTLR_EL1 at EL1 has no side effect.
    unsafe { asm!("mrs {}, sctlr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// `SCTLR_EL1` bits: MMU, data cache, instruction cache.
const SCTLR_M: u64 = 1 << 0;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_I: u64 = 1 << 12;

/// Whether the MMU is on.
pub fn mmu_enabled() -> bool {
    sctlr() & SCTLR_M != 0
}

/// The current TTBR0_EL1 / TTBR1_EL1 table addresses.
pub fn current_roots() -> (u64, u64) {
    let (t0, t1): (u64, u64);
    // SAFETY: reading the TTBRs at EL1 has no side effect.
    unsafe {
        asm!("mrs {}, ttbr0_el1", "mrs {}, ttbr1_el1", out(reg) t0, out(reg) t1,
             options(nomem, nostack, preserves_flags))
    };
    // Bits 47:1 hold the table address (ASID above, CnP at bit 0).
    (t0 & 0x0000_ffff_ffff_fffe, t1 & 0x0000_ffff_ffff_fffe)
}

/// The ASID the identity (TTBR0) tables are loaded with ([`aarch64_hw::load_ttbr_asid`]).
/// TCR_EL1.A1 is 0, so TTBR0's ASID is the current one for both halves; the kernel's leaves
/// are all global (nG clear), so no TLB entry is tagged with it, and tokens of its tables
/// still invalidate in every address space.
pub const KERNEL_ASID: Asid = Asid(1);

/// TCR_EL1.AS: 16-bit ASIDs.
const TCR_AS: u64 = 1 << 36;

fn mmfr0() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register at EL1 has no side effect.
    unsafe {
        asm!("mrs {}, id_aa64mmfr0_el1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// The ASID width TCR_EL1 selects: 16 bits when the CPU has them
/// (`ID_AA64MMFR0_EL1.ASIDBits` = 0b0010), else 8.
pub fn asid_bits() -> u32 {
    if (mmfr0() >> 4) & 0xf == 0b0010 {
        16
    } else {
        8
    }
}

/// TCR_EL1 for the two formats: both halves' fields, IPS from the CPU's physical address
/// range (`ID_AA64MMFR0_EL1.PARange`, same encoding), TBI off, A1 = 0 (the ASID comes from
/// TTBR0), AS = 1 when the CPU has 16-bit ASIDs ([`asid_bits`]).
pub fn tcr() -> u64 {
    let ips = (mmfr0() & 0xf).min(0b101);
    let as16 = if asid_bits() == 16 { TCR_AS } else { 0 };
    LOWER.tcr_half_bits() | UPPER.tcr_half_bits() | (ips << 32) | as16
}

/// TTBR0_EL1's ASID field (bits 63:48).
pub fn current_asid() -> u16 {
    let t0: u64;
    // SAFETY: reading TTBR0_EL1 at EL1 has no side effect.
    unsafe { asm!("mrs {}, ttbr0_el1", out(reg) t0, options(nomem, nostack, preserves_flags)) };
    (t0 >> 48) as u16
}

/// TTBR0 holds `root` with [`KERNEL_ASID`], and TCR_EL1 takes the ASID from TTBR0 (A1 = 0)
/// with the width of [`asid_bits`].
pub fn check_ttbr0(root: u64) -> Result<(), Reason> {
    let (t0, _) = current_roots();
    let asid = current_asid();
    ensure!(
        t0 == root && asid == KERNEL_ASID.0,
        "TTBR0 holds root {t0:#x} with ASID {asid}, expected {root:#x} with ASID {}",
        KERNEL_ASID.0
    );
    let tcr: u64;
    // SAFETY: reading TCR_EL1 at EL1 has no side effect.
    unsafe { asm!("mrs {}, tcr_el1", out(reg) tcr, options(nomem, nostack, preserves_flags)) };
    ensure!(
        tcr & (1 << 22) == 0,
        "TCR_EL1.A1 is set: the ASID comes from TTBR1"
    );
    ensure!(
        (tcr & TCR_AS != 0) == (asid_bits() == 16),
        "TCR_EL1.AS {}, the CPU has {}-bit ASIDs",
        tcr & TCR_AS != 0,
        asid_bits()
    );
    Ok(())
}

/// Load both tables and turn the MMU (and caches) on.
///
/// # Safety
/// Must run at EL1 with the MMU off. `lower` must identity-map everything the kernel uses
/// (code, data, stack, device tree, UART, the tables' own frames), and both tables must stay
/// alive, changed only through their own operations with their flushes, while loaded.
pub unsafe fn enable(lower: &mut KernelTable<'_>, upper: &mut KernelTable<'_>) {
    lower.set_asid(Some(KERNEL_ASID));
    // SAFETY: EL1 with the MMU off (caller); the values describe the two tables' formats;
    // TCR_EL1.A1 = 0 and AS matches the CPU (`tcr`), so ASID 1 is valid; nothing is cached
    // under it that the full invalidation below does not drop before the MMU comes on.
    unsafe {
        aarch64_hw::write_mair_tcr(tcr());
        aarch64_hw::load_ttbr_asid(lower.root(), KERNEL_ASID);
        aarch64_hw::load_ttbr(upper.root(), false);
    }
    // SAFETY: EL1, the tables' regime.
    let mut tlb = unsafe { InnerShareableTlb::new() };
    tlb.begin();
    tlb.invalidate_all();
    tlb.finish();
    let value = sctlr() | SCTLR_M | SCTLR_C | SCTLR_I;
    // SAFETY: the caller guarantees the identity half maps everything in use at its current
    // address, so execution continues at the next instruction with the MMU on.
    unsafe { asm!("msr sctlr_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
    lower.set_live(true);
    upper.set_live(true);
}
