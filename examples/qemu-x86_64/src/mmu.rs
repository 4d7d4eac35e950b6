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
//! The image is mapped once, read + write with 4 KiB pages, and one pass of mmkit-pgtable's
//! mutating cursor (`update_leaves`, through [`wx::seal_kernel_image`]) then makes `.text`
//! read + execute and `.rodata` read only and removes the guard page; the pass's flush token
//! covers exactly those pages and is settled without an invalidation, since the table is not
//! loaded yet. So the kernel image is W^X, and all RAM has a higher-half alias (Linux's
//! `page_offset_base` for 4-level paging). Table frames come from memory bootmem kept through
//! the hand-off ([`PoolFrames`]); the tables reach them through a [`WindowMapper`] over that
//! pool, which is identity-mapped RW in both the boot tables and these, so the table stays
//! editable after the switch (the self-tests use `protect` on the live table).
//!
//! The boot tables of `boot.rs` stay in `.bss` but are no longer used once CR3 points here.
//!
//! ## PCIDs
//! With PCID and INVPCID (CPUID; QEMU 7.2's TCG offers neither, even with `-cpu max`),
//! [`enable_pcids`] sets CR4.PCIDE while the boot tables run in PCID 0, and [`switch_to`]
//! loads every kernel table with [`KERNEL_PCID`] (`load_cr3_pcid`) and tags the table with
//! it (`set_asid`), so its flush tokens know their address space; single-CPU invalidation
//! then goes through [`PcidTlb`] (INVPCID) instead of [`LocalTlb`] ([`CpuTlb`] picks). The
//! kernel's leaves are global, so their tokens still invalidate in every address space (the
//! crate's rule); CR4.PGE stays off, so the hardware tags even those with the PCID. Without
//! PCIDs everything runs in PCID 0 as before.

use mmkit_addr::{
    align_down, align_up, OffsetMapper, PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr,
};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::arch::x86_64_hw;
use mmkit_pgtable::arch::x86_64_hw::{LocalTlb, PcidTlb};
use mmkit_pgtable::{
    Asid, Attrs, FlushScope, FrameSource, MapError, MapSize, PageTable, TlbInvalidate, UpdateError,
};
use mmkit_qemu_common::ensure;
use mmkit_qemu_common::frames::{PoolFrames, WindowMapper};
use mmkit_qemu_common::harness::Reason;
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::mmu_checks::KernelSections;
use mmkit_qemu_common::wx;

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

/// Paging features of this CPU (CPUID leaves 0x8000_0001, 1 and 7).
#[derive(Debug, Clone, Copy)]
pub struct PagingFeatures {
    /// Execute-disable (0x8000_0001 EDX bit 20); `boot.rs` set EFER.NXE when present.
    pub nx: bool,
    /// 1 GiB pages (0x8000_0001 EDX bit 26).
    pub gib_pages: bool,
    /// Process-context identifiers (leaf 1 ECX bit 17).
    pub pcid: bool,
    /// The INVPCID instruction (leaf 7 subleaf 0 EBX bit 10).
    pub invpcid: bool,
}

impl PagingFeatures {
    /// Whether the kernel runs with PCIDs: it needs both PCID and INVPCID ([`PcidTlb`]
    /// invalidates other PCIDs with INVPCID).
    pub fn pcids(&self) -> bool {
        self.pcid && self.invpcid
    }
}

/// Read the paging features.
pub fn paging_features() -> PagingFeatures {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 0x8000_0001 exists on every CPU that reached long mode (`boot.rs` checked), and
    // leaf 1 on every x86_64 CPU; leaf 7 only when leaf 0 reports it.
    let edx = __cpuid(0x8000_0001).edx;
    let ecx1 = __cpuid(1).ecx;
    let ebx7 = if __cpuid(0).eax >= 7 {
        __cpuid_count(7, 0).ebx
    } else {
        0
    };
    PagingFeatures {
        nx: edx & (1 << 20) != 0,
        gib_pages: edx & (1 << 26) != 0,
        pcid: ecx1 & (1 << 17) != 0,
        invpcid: ebx7 & (1 << 10) != 0,
    }
}

/// The PCID the kernel's tables are loaded with when PCIDs are on. Every CPU runs the same
/// kernel table under it, so an `invlpg` (which drops the address in the current PCID and
/// its global translation) reaches every CPU's cached entries of that table.
pub const KERNEL_PCID: Asid = Asid(1);

/// CR4.PCIDE.
const CR4_PCIDE: u64 = 1 << 17;

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Whether CR4.PCIDE is set on this CPU.
pub fn pcids_enabled() -> bool {
    read_cr4() & CR4_PCIDE != 0
}

/// The CR4 bits an AP must set before it loads the kernel's CR3 (PCIDE when the boot CPU
/// runs with PCIDs).
pub fn ap_cr4_bits() -> u64 {
    read_cr4() & CR4_PCIDE
}

/// Turn PCIDs on (CR4.PCIDE) if the CPU has PCID and INVPCID. Returns whether they are on.
/// The CPU must run in PCID 0 (CR3 bits 0..12 clear: the boot tables), which the SDM requires
/// for setting PCIDE; otherwise PCIDs stay off.
pub fn enable_pcids(cpu: PagingFeatures) -> bool {
    if pcids_enabled() {
        return true;
    }
    // SAFETY: CPL 0; reading CR3 has no side effect.
    let cr3 = unsafe { x86_64_hw::read_cr3() };
    if !cpu.pcids() || cr3 & 0xfff != 0 {
        return false;
    }
    let v = read_cr4() | CR4_PCIDE;
    // SAFETY: the CPU has PCID (CPUID), runs in long mode with CR3 bits 0..12 clear, the
    // conditions under which setting CR4.PCIDE cannot fault; it only tags TLB entries with
    // the current PCID (0) from now on.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
    pcids_enabled()
}

/// This CPU's TLB for the kernel's tables while one CPU runs: [`PcidTlb`] (INVPCID) with
/// PCIDs on, [`LocalTlb`] (INVLPG, CR4.PGE toggle) without.
#[derive(Debug)]
pub enum CpuTlb {
    /// PCIDs off.
    Local(LocalTlb),
    /// PCIDs on (CR4.PCIDE, so the CPU has INVPCID: [`enable_pcids`] requires it).
    Pcid(PcidTlb),
}

impl CpuTlb {
    /// The invalidator matching CR4.PCIDE.
    ///
    /// # Safety
    /// As [`LocalTlb::new`]: CPL 0, used with interrupts off for the full flush, only for
    /// tables no other CPU has loaded.
    pub unsafe fn new() -> Self {
        if pcids_enabled() {
            // SAFETY: the caller's contract; PCIDE is set, and `enable_pcids` sets it only
            // on a CPU with INVPCID.
            Self::Pcid(unsafe { PcidTlb::new() })
        } else {
            // SAFETY: the caller's contract; PCIDs are off.
            Self::Local(unsafe { LocalTlb::new() })
        }
    }
}

// SAFETY: every call forwards to the invalidator matching CR4.PCIDE, chosen in `new`, which
// keeps the contract for this CPU (the only one that loaded the tables: `new`'s contract).
unsafe impl TlbInvalidate for CpuTlb {
    fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool) {
        match self {
            Self::Local(t) => t.invalidate_page(va, size, leaf_only),
            Self::Pcid(t) => t.invalidate_page(va, size, leaf_only),
        }
    }

    fn invalidate_all(&mut self) {
        match self {
            Self::Local(t) => t.invalidate_all(),
            Self::Pcid(t) => t.invalidate_all(),
        }
    }

    fn invalidate_page_asid(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool, asid: Asid) {
        match self {
            Self::Local(t) => t.invalidate_page_asid(va, size, leaf_only, asid),
            Self::Pcid(t) => t.invalidate_page_asid(va, size, leaf_only, asid),
        }
    }

    fn invalidate_asid(&mut self, asid: Asid) {
        match self {
            Self::Local(t) => t.invalidate_asid(asid),
            Self::Pcid(t) => t.invalidate_asid(asid),
        }
    }
}

/// Why the tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The CPU has no execute-disable bit, so W^X cannot be expressed.
    NoNx,
    /// The table had no root frame.
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

/// Build the kernel's tables (see the module docs) from `frames`. Returns them with what the
/// W^X pass changed ([`populate`]).
pub fn build<'p>(
    map_: &MemoryMap,
    mapper: WindowMapper,
    frames: PoolFrames<'p>,
    cpu: PagingFeatures,
) -> Result<(KernelTable<'p>, FlushScope), BuildError> {
    if !cpu.nx {
        return Err(BuildError::NoNx);
    }
    let mut pt =
        PageTable::new(X86_64::FOUR_LEVEL, mapper, frames).map_err(|_| BuildError::NoRoot)?;
    let sealed = populate(&mut pt, map_, cpu)?;
    Ok((pt, sealed))
}

/// Map the kernel's address space (module docs) into `pt`, which may already serve other
/// ranges (the facade's table holds the vmalloc window) but must not be loaded yet (not
/// live: [`switch_to`] marks it): identity with the W^X image, and the direct map. Returns
/// what the W^X pass of the mutating cursor changed (its flush token's scope).
pub fn populate<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<X86_64, M, S>,
    map_: &MemoryMap,
    cpu: PagingFeatures,
) -> Result<FlushScope, BuildError> {
    if !cpu.nx {
        return Err(BuildError::NoNx);
    }
    if pt.is_live() {
        return Err(BuildError::Live);
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
    // The image: read + write 4 KiB pages, then one pass of the mutating cursor makes it
    // W^X (`.text` RX, `.rodata` RO, the boot stack's guard page removed).
    map(
        pt,
        "kernel image",
        k_start,
        k_start,
        k_end - k_start,
        Attrs::KERNEL_RW,
        MapSize::Exactly(PageSize::Size4K),
    )?;
    let guard = crate::boot::boot_stack_guard();
    let sealed = wx::seal_kernel_image(pt, kernel, s, Some(guard)).map_err(BuildError::Seal)?;
    let sealed_scope = sealed.scope();
    // SAFETY: `pt` is not live (checked above) and the kernel loads tables only through
    // `switch_to`, which marks them live: no MMU has walked `pt`, no TLB holds its entries.
    let freed = unsafe { sealed.assume_invalidated() };
    pt.free_tables(freed)
        .map_err(|_| BuildError::ForeignTables)?;
    let rw = Attrs::KERNEL_RW;
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
    Ok(sealed_scope)
}

/// Load `pt` into CR3: with PCIDs on (CR4.PCIDE), tagged with [`KERNEL_PCID`] (and the
/// table's flush tokens with it), else with PCID 0 as before. Returns the PCID used.
///
/// # Safety
/// `pt` must map everything the kernel uses from now on at its current address (it does:
/// see [`build`]) and must stay alive, unchanged except through its own operations with
/// their flushes, for as long as it is loaded.
pub unsafe fn switch_to<M: PhysMapper, S: FrameSource>(
    pt: &mut PageTable<X86_64, M, S>,
) -> Option<Asid> {
    let pcid = pcids_enabled().then_some(KERNEL_PCID);
    match pcid {
        Some(p) => {
            pt.set_asid(Some(p));
            // SAFETY: CPL 0, CR4.PCIDE set; the caller guarantees the table keeps the
            // running kernel mapped. Without `keep`, whatever was cached under the PCID
            // (another table's entries) is dropped by the load.
            unsafe { x86_64_hw::load_cr3_pcid(pt.root(), p, false) };
        }
        // SAFETY: CPL 0; the caller guarantees the table keeps the running kernel mapped.
        None => unsafe { x86_64_hw::load_cr3(pt.root()) },
    }
    pt.set_live(true);
    pcid
}

/// CR3's current table address.
pub fn current_root() -> u64 {
    // SAFETY: the kernel runs at CPL 0; reading CR3 has no side effect.
    unsafe { x86_64_hw::read_cr3() & !0xfff }
}

/// CR3 as it is: table address and PCID.
pub fn current_cr3() -> u64 {
    // SAFETY: the kernel runs at CPL 0; reading CR3 has no side effect.
    unsafe { x86_64_hw::read_cr3() }
}

/// CR3's PCID field (bits 0..12; always 0 with PCIDs off).
pub fn current_pcid() -> u16 {
    // SAFETY: the kernel runs at CPL 0; reading CR3 has no side effect.
    (unsafe { x86_64_hw::read_cr3() } & 0xfff) as u16
}

/// CR3 holds `root` with PCID `pcid` (0 for `None`), and CR4.PCIDE agrees.
pub fn check_cr3(root: u64, pcid: Option<Asid>) -> Result<(), Reason> {
    let (cr3, got) = (current_root(), current_pcid());
    let want = pcid.map_or(0, |p| p.0);
    ensure!(
        cr3 == root && got == want,
        "CR3 holds root {cr3:#x} with PCID {got}, expected {root:#x} with PCID {want}"
    );
    ensure!(
        pcids_enabled() == pcid.is_some(),
        "CR4.PCIDE is {}, but the table was loaded with PCID {pcid:?}",
        pcids_enabled()
    );
    Ok(())
}
