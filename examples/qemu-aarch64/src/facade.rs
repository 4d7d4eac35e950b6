//! mmkit brought up through its facade, with the direct-map half on the facade's page table.
//!
//! Sequence (called by `selftest` once the MMU is on with the interim tables built from the
//! bootmem-kept pool, so the direct map reaches all RAM):
//!
//! 1. [`boot`]: [`MmBuilder`] over the device tree (bootmem's device-tree ingestion:
//!    `/memory`, `/reserved-memory`, `/memreserve/`), with the kernel image, the tree itself
//!    and the interim table pool reserved; the platform hooks are the machine's CPUs
//!    ([`Cpus`]: MPIDR-derived ids, the real `DAIF` guard, SGIs); the kernel map is the direct map ([`KERNEL_MAP`]); the
//!    facade creates a TTBR1 table (4 KiB granule, 48-bit) with a vmalloc window at
//!    [`VMALLOC_BASE`], in the upper half of the TTBR1 space as on Linux arm64.
//! 2. [`adopt_page_table`]: the direct map ([`mmu::populate_upper`]) is mapped into the
//!    facade's table, whose frames come from the buddy (the facade's `TableFrames`), and
//!    TTBR1 is switched to it (the identity half stays on the interim TTBR0 table). From then
//!    on vmalloc maps into the live table and its flush tokens go to [`InnerShareableTlb`]
//!    (`tlbi vale1is` / `vmalle1is` with the barriers).
//!
//! 3. [`adopt_identity_table`]: the identity half is built again ([`mmu::populate_lower`])
//!    on frames from the buddy (its image made W^X by the mutating cursor) and loaded into
//!    TTBR0 with the kernel's ASID (`mmu::KERNEL_ASID`). Nothing uses the interim pool any more
//!    (both its tables are replaced), so `selftest` gives it back to the buddy with
//!    [`Mm::free_reserved_range`], as the x86_64 kernel does.

use mmkit::addr::{PhysRange, VirtAddr, VirtRange};
use mmkit::pgtable::arch::aarch64::Aarch64;
use mmkit::pgtable::arch::aarch64_hw::{self, InnerShareableTlb};
use mmkit::pgtable::PageTable;
use mmkit::pgtable::TlbInvalidate;
use mmkit::{BootError, GlobalMm, LinearMap, MapRef, Mm, MmBuilder, MoverTlb, TableFrames};
use mmkit_qemu_common::harness::Reason;
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::mm_checks::ProbeOutcome;
use mmkit_qemu_common::{ensure, fail};

use crate::exceptions::{self, EC_DATA_ABORT_SAME_EL};
use crate::mmu::{self, DIRECT_MAP_BASE, UPPER};
use crate::platform::Cpus;

/// Physical memory the direct map may cover: the lower half of the TTBR1 space (128 TiB),
/// leaving the upper half to vmalloc (Linux arm64 with 48-bit VAs splits it the same way).
pub const DIRECT_MAP_SPAN: u64 = 1 << 47;

/// The kernel map the facade uses: the direct map.
// SAFETY: `selftest` boots the facade only after `mmu::enable` loaded a TTBR1 table mapping
// every RAM range RW at `DIRECT_MAP_BASE + pa`, and the facade's own table, loaded later,
// maps the same (`mmu::populate_upper`); `DIRECT_MAP_BASE + 2^47` does not wrap.
pub static KERNEL_MAP: LinearMap = unsafe { LinearMap::new(DIRECT_MAP_BASE, DIRECT_MAP_SPAN) };

/// Start of the vmalloc window: the upper half of the TTBR1 space.
pub const VMALLOC_BASE: u64 = DIRECT_MAP_BASE + DIRECT_MAP_SPAN;
/// Size of the vmalloc window (1 GiB keeps the slot bitmaps at 96 KiB).
pub const VMALLOC_SIZE: u64 = 1 << 30;

/// The kernel's memory manager.
pub type KernelMm = Mm<'static, Cpus, Aarch64>;

/// The `Mm` once the single-CPU checks are done with it: shared with the other CPUs and the
/// timer handlers (not the `#[global_allocator]`: this kernel has no `alloc` users).
pub static MM: GlobalMm<Cpus, Aarch64> = GlobalMm::new();

/// Step 1 (module docs): boot mmkit from the device tree for `cpus` with `reserved` kept out.
/// With `deferred` set, each node initialises only its first `deferred` frames at boot
/// ([`MmBuilder::deferred_init`]); the SMP part completes the rest on every CPU.
pub fn boot(
    cpus: Cpus,
    dtb: &[u8],
    reserved: &[PhysRange],
    deferred: Option<u64>,
) -> Result<KernelMm, BootError> {
    let window = VirtRange::from_start_size(VirtAddr::new(VMALLOC_BASE), VMALLOC_SIZE)
        .unwrap_or(VirtRange::EMPTY);
    // SAFETY: everything in use is in `reserved` or in the tree's own reservations (kernel
    // image with its stack; the device tree; the interim page tables); the free RAM is unused
    // (the earlier checks are done with theirs), and the direct map reaches all RAM.
    let mut builder = unsafe { MmBuilder::new(cpus, &KERNEL_MAP) }.device_tree(dtb);
    for r in reserved {
        builder = builder.reserve(*r);
    }
    if let Some(frames) = deferred {
        builder = builder.deferred_init(frames);
    }
    builder.vmalloc_area(UPPER, window).boot()
}

/// Step 2 (module docs): map the direct map into the facade's table and load it into TTBR1.
/// Returns the root now in TTBR1.
pub fn adopt_page_table(mm: &KernelMm, map: &MemoryMap) -> Result<u64, Reason> {
    let adopted = mm.with_page_table(|pt| {
        mmu::populate_upper(pt, map).map_err(|e| Reason::new(format_args!("{e:?}")))?;
        if let Err(e) = pt.verify() {
            fail!("verify: {e:?}");
        }
        let mut t = tlb();
        // The new table's writes reach the walker before TTBR1 points at it.
        t.begin();
        // SAFETY: EL1 with the MMU on; the new table maps the direct map exactly as the
        // interim one did (the only TTBR1 addresses in use), and lives inside `mm`, which the
        // kernel keeps until it exits, changed only through vmalloc with its flushes.
        unsafe { aarch64_hw::load_ttbr(pt.root(), false) };
        t.invalidate_all();
        t.finish();
        pt.set_live(true);
        Ok(pt.root().as_u64())
    });
    let root = adopted.unwrap_or_else(|| Err(Reason::new(format_args!("no kernel page table"))))?;
    let (_, t1) = mmu::current_roots();
    ensure!(t1 == root, "TTBR1 {t1:#x}, table root {root:#x}");
    Ok(root)
}

/// Step 3 (module docs): build the identity half anew on frames from the buddy and load it
/// into TTBR0, so that nothing uses the interim pool any more. The table lives for the rest
/// of the kernel's life (it is never edited again, so it is leaked rather than kept).
/// The table is tagged with, and loaded under, [`mmu::KERNEL_ASID`]. Returns its root.
pub fn adopt_identity_table(mm: &KernelMm, map: &MemoryMap) -> Result<u64, Reason> {
    let frames = TableFrames(mm.page_allocator());
    let mut pt = PageTable::new(mmu::LOWER, MapRef(&KERNEL_MAP), frames)
        .map_err(|e| Reason::new(format_args!("no root: {e:?}")))?;
    mmu::populate_lower(&mut pt, map).map_err(|e| Reason::new(format_args!("{e:?}")))?;
    if let Err(e) = pt.verify() {
        fail!("verify: {e:?}");
    }
    pt.set_asid(Some(mmu::KERNEL_ASID));
    let mut t = tlb();
    t.begin();
    // SAFETY: EL1 with the MMU on; the new table maps everything the interim identity table
    // did (`populate_lower` is what built that one too), so the code, stack, data and devices
    // in use stay where they are; its frames are the buddy's, allocated for it, and never
    // freed (the table is leaked below). TCR_EL1 has A1 = 0 and the ASID width `mmu::tcr`
    // chose. What is cached under the ASID (walks of the interim table, which is loaded
    // under the same ASID) stays valid: that table lives, unchanged, until the invalidation
    // of everything right after the switch.
    unsafe { aarch64_hw::load_ttbr_asid(pt.root(), mmu::KERNEL_ASID) };
    t.invalidate_all();
    t.finish();
    pt.set_live(true);
    let root = pt.root().as_u64();
    core::mem::forget(pt);
    mmu::check_ttbr0(root)?;
    Ok(root)
}

/// Read a word at `va` through the exception table and classify what happened.
pub fn probe(va: VirtAddr) -> ProbeOutcome {
    // SAFETY: a faulting read is caught by the exception table and touches nothing; a
    // successful one reads a mapped kernel address.
    match unsafe { exceptions::read_u64_nofault(va.as_u64()) } {
        Ok(_) => ProbeOutcome::Readable,
        Err(f)
            if f.class() == EC_DATA_ABORT_SAME_EL
                && exceptions::is_translation_fault(f.status_code())
                && f.far == va.as_u64() =>
        {
            ProbeOutcome::NotPresentFault
        }
        Err(f) => ProbeOutcome::OtherFault(Reason::new(format_args!(
            "ESR {:#x}, FAR {:#x}",
            f.esr, f.far
        ))),
    }
}

/// The invalidator of the facade's mover (movable pages): [`tlb`] on each call.
pub struct KernelMoverTlb;

// SAFETY: `tlbi ...is` broadcasts to the inner-shareable domain, which holds every CPU that
// may have loaded the facade's table; EL1, the tables' regime (`tlb`'s contract); the
// facade's tokens carry no ASID, so they invalidate in every address space. `with_tlb`
// calls `f` once and nothing else.
unsafe impl MoverTlb for KernelMoverTlb {
    fn with_tlb(&self, f: &mut dyn FnMut(&mut dyn TlbInvalidate)) {
        f(&mut tlb())
    }
}

/// The one [`KernelMoverTlb`], given to `Mm::enable_movable`.
pub static MOVER_TLB: KernelMoverTlb = KernelMoverTlb;

/// The kernel's TLB invalidation for vmalloc's flush tokens.
pub fn tlb() -> InnerShareableTlb {
    // SAFETY: EL1, with the kernel's tables in the EL1 regime.
    unsafe { InnerShareableTlb::new() }
}
