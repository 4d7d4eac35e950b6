//! mmkit brought up through its facade, on the kernel's own page table, as the global allocator.
//!
//! Sequence (called by `selftest` once the interim tables built from the bootmem-kept pool are
//! live, so the direct map reaches all RAM):
//!
//! 1. [`boot`]: [`MmBuilder`] over the PVH e820 table (bootmem's e820 ingestion), with the
//!    kernel image, the boot data, the low 1 MiB and the interim table pool reserved, and one
//!    page below 1 MiB allocated from bootmem first for the APs' real-mode trampoline (given
//!    back once they run); the platform hooks are the machine's CPUs ([`Cpus`]: APIC ids,
//!    the real `cli`/`sti` guard, IPIs); the
//!    kernel map is the direct map ([`KERNEL_MAP`]); the facade creates its kernel page table
//!    (4-level) with a vmalloc window at [`VMALLOC_BASE`] (Linux's `VMALLOC_START` for 4-level
//!    paging).
//! 2. [`adopt_page_table`]: the kernel's address space (identity with the W^X image, direct
//!    map: [`mmu::populate`]) is mapped into the facade's table, whose frames come from the
//!    buddy (the facade's `TableFrames`), and CR3 is switched to it. From then on vmalloc maps
//!    into the live table and its flush tokens go to [`CpuTlb`] (`invlpg`, or INVPCID with
//!    PCIDs on: the table is then loaded with `mmu::KERNEL_PCID`).
//! 3. [`install_global`]: the `Mm` becomes the `#[global_allocator]` ([`GLOBAL`]), and
//!    `alloc` collections run on it.
//!
//! Once CR3 holds the facade's table, `selftest` gives the interim tables' pool back to the
//! buddy with [`Mm::free_reserved_range`] (Linux's `free_reserved_area`).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use mmkit::addr::{PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE};
use mmkit::bootmem::firmware::e820::{E820Entry, E820Type};
use mmkit::bootmem::AllocRequest;
use mmkit::pgtable::arch::x86_64::X86_64;
use mmkit::pgtable::{Asid, TlbInvalidate};
use mmkit::{BootError, GlobalMm, LinearMap, Mm, MmBuilder, MoverTlb};
use mmkit_qemu_common::harness::{CheckResult, Reason};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::mm_checks::ProbeOutcome;
use mmkit_qemu_common::{ensure, fail};

use crate::memmap::BootInfo;
use crate::mmu::{self, CpuTlb, PagingFeatures, DIRECT_MAP_BASE, DIRECT_MAP_LIMIT};
use crate::platform::Cpus;
use crate::traps::{self, Fault, VECTOR_PAGE_FAULT};

/// The kernel map the facade uses: the direct map.
// SAFETY: `selftest` boots the facade only after `mmu::switch_to` loaded tables mapping every
// RAM range RW at `DIRECT_MAP_BASE + pa` (`mmu::populate`), and the facade's own table, loaded
// later, maps the same; the sum cannot wrap.
pub static KERNEL_MAP: LinearMap = unsafe { LinearMap::new(DIRECT_MAP_BASE, DIRECT_MAP_LIMIT) };

/// Start of the vmalloc window (Linux x86_64 4-level `VMALLOC_START`).
pub const VMALLOC_BASE: u64 = 0xffff_c900_0000_0000;
/// Size of the vmalloc window (Linux has 32 TiB; 1 GiB keeps the slot bitmaps at 96 KiB).
pub const VMALLOC_SIZE: u64 = 1 << 30;

/// The kernel's memory manager.
pub type KernelMm = Mm<'static, Cpus, X86_64>;

/// The kernel's heap: mmkit's `GlobalAlloc` adapter (kmalloc up to its largest class, whole
/// buddy blocks above). Allocations fail until [`install_global`].
#[global_allocator]
pub static GLOBAL: GlobalMm<Cpus, X86_64> = GlobalMm::new();

/// The PVH memory map as e820 entries for bootmem's ingestion. Call it while the boot
/// tables are loaded: the PVH table may sit in page 0, which the kernel's own tables leave
/// unmapped.
pub fn e820_entries(info: &BootInfo) -> ([E820Entry; MemoryMap::CAPACITY], usize) {
    let mut entries = [E820Entry::new(0, 0, E820Type::Ram); MemoryMap::CAPACITY];
    let n = info.firmware_table.len().min(entries.len());
    for (out, e) in entries.iter_mut().zip(info.firmware_table) {
        *out = E820Entry {
            addr: e.addr,
            size: e.size,
            kind: e.entry_type,
        };
    }
    (entries, n)
}

/// Step 1 (module docs): boot mmkit from the e820 map for `cpus` with `reserved` and `low`
/// kept out, after taking the APs' trampoline page below `low`'s end from bootmem. Returns the
/// trampoline page too (`None` if bootmem had none: the kernel then stays on one CPU).
/// With `deferred` set, each node initialises only its first `deferred` frames at boot
/// ([`MmBuilder::deferred_init`]); the SMP part completes the rest on every CPU.
pub fn boot(
    cpus: Cpus,
    e820: &[E820Entry],
    reserved: &[PhysRange],
    low: PhysRange,
    deferred: Option<u64>,
) -> Result<(KernelMm, Option<PhysAddr>), BootError> {
    let window = VirtRange::from_start_size(VirtAddr::new(VMALLOC_BASE), VMALLOC_SIZE)
        .unwrap_or(VirtRange::EMPTY);
    // SAFETY: everything in use is in `reserved` (kernel image with its stack, boot tables
    // and IDT; the PVH start info, map and command line; the interim page tables) or in `low`
    // (the first 1 MiB, reserved once the trampoline page is taken from its free RAM, which
    // nothing uses), the free RAM is unused (the earlier checks are done with theirs), and the
    // direct map reaches all RAM.
    let mut builder = unsafe { MmBuilder::new(cpus, &KERNEL_MAP) }.e820(e820);
    for r in reserved {
        builder = builder.reserve(*r);
    }
    // Above the real-mode interrupt table and BIOS data, below the end of low memory.
    let request = AllocRequest::new(PAGE_SIZE, PAGE_SIZE)
        .above(PhysAddr::new(0x1000))
        .below(low.end());
    let trampoline = builder.bootmem_mut().alloc_request(&request).ok();
    builder = builder.reserve(low);
    if let Some(frames) = deferred {
        builder = builder.deferred_init(frames);
    }
    let mm = builder.vmalloc_area(X86_64::FOUR_LEVEL, window).boot()?;
    Ok((mm, trampoline))
}

/// Step 2 (module docs): map the kernel into the facade's table and load it into CR3.
/// Returns the root now in CR3 and the PCID it was loaded with (`None`: PCIDs off).
pub fn adopt_page_table(
    mm: &KernelMm,
    map: &MemoryMap,
    cpu: PagingFeatures,
) -> Result<(u64, Option<Asid>), Reason> {
    let adopted = mm.with_page_table(|pt| {
        mmu::populate(pt, map, cpu).map_err(|e| Reason::new(format_args!("{e:?}")))?;
        if let Err(e) = pt.verify() {
            fail!("verify: {e:?}");
        }
        // SAFETY: `populate` mapped the whole kernel image, the low memory holding the boot
        // data and everything else below 4 GiB the kernel touches, and the direct map; the
        // table lives inside `mm`, which the kernel keeps until it exits, and changes only
        // through vmalloc with its flushes.
        let pcid = unsafe { mmu::switch_to(pt) };
        ensure!(
            pt.asid() == pcid,
            "table tagged {:?}, loaded with {pcid:?}",
            pt.asid()
        );
        Ok((pt.root().as_u64(), pcid))
    });
    let (root, pcid) =
        adopted.unwrap_or_else(|| Err(Reason::new(format_args!("no kernel page table"))))?;
    mmu::check_cr3(root, pcid)?;
    Ok((root, pcid))
}

/// Read a word at `va` through the exception table and classify what happened.
pub fn probe(va: VirtAddr) -> ProbeOutcome {
    // SAFETY: a faulting read is caught by the exception table and touches nothing; a
    // successful one reads a mapped kernel address.
    match unsafe { traps::read_u64_nofault(va.as_u64()) } {
        Ok(_) => ProbeOutcome::Readable,
        Err(Fault {
            vector: VECTOR_PAGE_FAULT,
            error_code: 0,
            address,
        }) if address == va.as_u64() => ProbeOutcome::NotPresentFault,
        Err(f) => ProbeOutcome::OtherFault(Reason::new(format_args!("{f:?}"))),
    }
}

/// The invalidator of the facade's mover (movable pages): a [`crate::smp::ShootdownTlb`] on
/// each call, because the mover runs whenever a compaction does — in the single-CPU checks,
/// and in any later allocation's direct compaction, when the other CPUs may hold the page's
/// translation.
pub struct KernelMoverTlb;

// SAFETY: `ShootdownTlb` invalidates on this CPU and then on every other online CPU, waiting
// for each (its own contract); a CPU it cannot reach is counted as a failure the self-test
// reports. `with_tlb` calls `f` once and nothing else.
unsafe impl MoverTlb for KernelMoverTlb {
    fn with_tlb(&self, f: &mut dyn FnMut(&mut dyn TlbInvalidate)) {
        f(&mut crate::smp::ShootdownTlb::new())
    }
}

/// The one [`KernelMoverTlb`], given to `Mm::enable_movable`.
pub static MOVER_TLB: KernelMoverTlb = KernelMoverTlb;

/// The kernel's TLB invalidation for vmalloc's flush tokens before the APs start (then
/// [`crate::smp::ShootdownTlb`]): INVPCID with PCIDs on, INVLPG without.
pub fn tlb() -> CpuTlb {
    // SAFETY: used only while one CPU runs, and no interrupt handler touches the page tables.
    unsafe { CpuTlb::new() }
}

/// Step 3 (module docs): make `mm` the global allocator.
pub fn install_global(mm: KernelMm) -> Result<&'static KernelMm, Reason> {
    GLOBAL
        .init(mm)
        .map_err(|_| Reason::new(format_args!("a global allocator is installed already")))
}

/// `Vec`, `String` and `BTreeMap` on the global allocator: growth through several kmalloc
/// classes into buddy blocks, contents checked, and every byte given back (the kmalloc and
/// page count returns to where it was: the large `Vec` buffers are whole buddy blocks).
pub fn collections_on_global(mm: &KernelMm) -> CheckResult {
    let before = mm.meminfo();
    {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..100_000u64 {
            v.push(i * 3);
        }
        ensure!(v.len() == 100_000, "Vec holds {} elements", v.len());
        ensure!(
            v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3),
            "Vec contents changed"
        );
        let heap = v.as_ptr() as u64;
        ensure!(
            GLOBAL.owns(v.as_ptr().cast()),
            "Vec's {} KiB buffer at {heap:#x} is not mmkit memory",
            v.capacity() * 8 / 1024
        );
        let mut tree = BTreeMap::new();
        for i in 0..5_000u32 {
            let mut name = String::new();
            let _ = write!(name, "key-{:05}", i.wrapping_mul(7919) % 5_000);
            tree.insert(name, i);
        }
        ensure!(tree.len() == 5_000, "BTreeMap holds {} keys", tree.len());
        let mut last: Option<&String> = None;
        for k in tree.keys() {
            ensure!(last.is_none_or(|l| l < k), "BTreeMap out of order at {k}");
            last = Some(k);
        }
        for i in (0..5_000u32).step_by(2) {
            let mut name = String::new();
            let _ = write!(name, "key-{i:05}");
            ensure!(tree.remove(&name).is_some(), "{name} missing");
        }
        ensure!(
            tree.len() == 2_500,
            "BTreeMap holds {} keys after removals",
            tree.len()
        );
    }
    let after = mm.meminfo();
    ensure!(
        after.pages_kb == before.pages_kb,
        "alloc_pages memory went from {:?} KiB to {:?} KiB after the collections were dropped",
        before.pages_kb,
        after.pages_kb
    );
    Ok(())
}
