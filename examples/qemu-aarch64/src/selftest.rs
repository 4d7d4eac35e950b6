//! The aarch64 kernel's self-tests.
//!
//! Shared checks (memory map, RAM size, IRQ guard, direct-map hook) come from
//! [`mmkit_qemu_common::checks`]; the ones here need the hardware: the device tree's place,
//! touching RAM far from the kernel, a `brk` trap, and an external abort provoked on purpose
//! through the exception table. Memory used by a check is chosen with
//! [`MemoryMap::find_free_top_down`] clear of the kernel image and the device tree; nothing
//! else allocates yet, so such memory is the check's own.
//!
//! A write to a read-only mapping cannot be provoked yet: the kernel runs with the MMU off
//! until it builds its tables with mmkit-pgtable.

use mmkit_addr::{
    CpuTopology, IrqControl, PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr, PAGE_SIZE,
};
use mmkit_bootmem::{firmware::fdt, Bootmem};
use mmkit_pgtable::arch::aarch64_hw::InnerShareableTlb;
use mmkit_pgtable::{AttrChange, Attrs, FlushScope, ProtectError};
use mmkit_qemu_common::bootmem_checks;
use mmkit_qemu_common::checks::{self, Injection};
use mmkit_qemu_common::deferred;
use mmkit_qemu_common::frames::{PoolFrames, WindowMapper};
use mmkit_qemu_common::harness::{CheckResult, Harness, Outcome, Reason};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::{ensure, fail};
use mmkit_qemu_common::{mm_checks, mmu_checks};

use crate::exceptions::{
    self, Fault, DFSC_SYNC_EXTERNAL_ABORT, EC_DATA_ABORT_SAME_EL, EC_INSTRUCTION_ABORT_SAME_EL,
    ESR_FNV, ESR_WNR,
};
use crate::facade;
use crate::facade::KernelMm;
use crate::gic;
use crate::memmap::{kernel_image, BootInfo};
use crate::mmu::{self, KernelTable, DIRECT_MAP_BASE};
use crate::platform::{interrupts_enabled, Cpus, Serial, IDENTITY, IDENTITY_LIMIT};
use crate::println;
use crate::smp;
use mmkit_qemu_common::stress;

/// How far above the kernel image the "far" RAM page must be.
const FAR_FROM_KERNEL: u64 = 4 << 20;

/// The `brk` immediate the breakpoint check uses.
const BRK_IMMEDIATE: u16 = 0x4d4d;

/// Run every check and print the summary line.
pub fn run(boot: &BootInfo) -> Outcome {
    let kernel = kernel_image();
    let exclude = [kernel, boot.dtb];
    let map = &boot.map;
    let cmdline = boot.facts.bootargs.unwrap_or("");
    let mut h = Harness::new(Serial);

    h.run("memmap_is_sane", || checks::memmap_is_sane(map));
    match checks::ram_matches_command_line(map, cmdline) {
        Some(result) => h.run("ram_matches_qemu_m", || result),
        None => {
            h.skip(
                "ram_matches_qemu_m",
                "no mmkit.expect_mem= on the command line",
            );
            true
        }
    };
    h.run("kernel_image_in_ram", || {
        checks::range_is_ram(map, kernel, "kernel image")
    });
    h.run("device_tree_in_ram_below_kernel", || {
        device_tree_in_ram_below_kernel(map, boot.dtb, kernel)
    });
    h.run("irq_guard_nests", || {
        checks::irq_guard_nests(&Cpus::new(1), interrupts_enabled)
    });
    h.run("identity_mapper_translates", || {
        checks::mapper_translates(&IDENTITY, 0, IDENTITY_LIMIT, kernel)
    });
    h.run("far_ram_page_write_read", || {
        // SAFETY: nothing allocates memory yet, and `exclude` covers the kernel, the device
        // tree and what bootmem kept; with the MMU off the identity mapper reaches all RAM.
        unsafe {
            mmu_checks::far_ram_page_write_read(
                map,
                kernel,
                &exclude,
                &IDENTITY,
                IDENTITY_LIMIT,
                FAR_FROM_KERNEL,
            )
        }
    });
    h.run("brk_trap_returns", brk_trap_returns);
    h.run("exception_table_has_one_entry_per_address", || {
        match mmkit_qemu_common::extable::duplicate(exceptions::exception_table()) {
            Some(pc) => fail!("two exception-table entries for {pc:#x}"),
            None => Ok(()),
        }
    });
    h.run("read_of_unbacked_address_aborts", || {
        read_of_unbacked_address_aborts(map)
    });
    // Then: the platform checks above used free memory that bootmem is about to manage.
    if checks::injection(cmdline) == Ok(Some(Injection::Shootdown)) {
        smp::local_only_tlbi();
    }
    let keep = [PAGE_TABLE_POOL];
    let outcome = bootmem_sequence(&mut h, boot, &exclude, &keep);
    let pool = outcome.kept[0];
    let live = mmu_sequence(&mut h, map, pool, &exclude);
    match pool {
        Some(pool) if live => facade_sequence(&mut h, boot, &exclude, pool),
        _ => h.skip("mm_*", "needs the MMU on with the direct map"),
    }
    inject_failure(&mut h, cmdline, map);
    let used = crate::boot::boot_stack_used();
    let size = crate::boot::USABLE_STACK_SIZE as u64;
    println!(
        "mmkit-qemu: boot stack: deepest use {} KiB of {} KiB",
        used >> 10,
        size >> 10
    );
    h.run("boot_stack_has_headroom", || {
        checks::stack_has_headroom(used, size)
    });
    h.finish()
}

fn device_tree_in_ram_below_kernel(
    map: &MemoryMap,
    dtb: PhysRange,
    kernel: PhysRange,
) -> CheckResult {
    checks::range_is_ram(map, dtb, "device tree")?;
    ensure!(
        dtb.end() <= kernel.start(),
        "device tree {dtb} is not below the kernel image {kernel}"
    );
    Ok(())
}

fn brk_trap_returns() -> CheckResult {
    let before = exceptions::breakpoints();
    exceptions::breakpoint::<BRK_IMMEDIATE>();
    exceptions::breakpoint::<BRK_IMMEDIATE>();
    let seen = exceptions::breakpoints() - before;
    ensure!(seen == 2, "handler saw {seen} of 2 brk instructions");
    let imm = exceptions::last_brk_immediate();
    ensure!(
        imm == u64::from(BRK_IMMEDIATE),
        "handler read brk immediate {imm:#x}, expected {BRK_IMMEDIATE:#x}"
    );
    Ok(())
}

/// An address nothing on `virt` decodes: 256 MiB above the end of RAM, in the part of the RAM
/// window (0x4000_0000 up to 256 GiB) that `-m` did not populate.
fn unbacked_address(map: &MemoryMap) -> Option<u64> {
    let ram_end = map.ram().map(|r| r.end().as_u64()).max()?;
    let candidate = ram_end.checked_add(256 << 20)?;
    let probe = PhysRange::from_start_size(PhysAddr::new(candidate), 8).ok()?;
    let in_map = map.regions().iter().any(|r| r.range.overlaps(&probe));
    (!in_map && candidate < 0x40_0000_0000).then_some(candidate)
}

fn read_of_unbacked_address_aborts(map: &MemoryMap) -> CheckResult {
    let Some(target) = unbacked_address(map) else {
        fail!("no unbacked address found above RAM");
    };
    // SAFETY: nothing decodes `target`, so the read has no side effect and aborts.
    let got = unsafe { exceptions::read_u64_nofault(target) };
    let Err(fault) = got else {
        fail!("read of unbacked {target:#x} returned {got:?}");
    };
    ensure!(
        fault.class() == EC_DATA_ABORT_SAME_EL,
        "exception class {:#x}, expected a data abort ({EC_DATA_ABORT_SAME_EL:#x}); ESR {:#x}",
        fault.class(),
        fault.esr
    );
    ensure!(
        fault.status_code() == DFSC_SYNC_EXTERNAL_ABORT,
        "fault status {:#x}, expected a synchronous external abort; ESR {:#x}",
        fault.status_code(),
        fault.esr
    );
    ensure!(
        fault.esr & ESR_FNV != 0 || fault.far == target,
        "FAR {:#x}, expected {target:#x}",
        fault.far
    );
    Ok(())
}

/// mmkit-bootmem on the real firmware map: the device tree goes through bootmem's own
/// ingestion, and the kernel image and the tree itself are reserved.
/// `keep` are the sizes of memory bootmem keeps for the kernel past the hand-off.
#[inline(never)]
fn bootmem_sequence(
    h: &mut Harness<Serial>,
    boot: &BootInfo,
    reserved: &[PhysRange],
    keep: &[u64],
) -> bootmem_checks::Outcome {
    let ingest = |bm: &mut Bootmem<'static>| {
        fdt::ingest(bm, boot.blob)
            .map(|_| ())
            .map_err(|e| Reason::new(format_args!("device-tree ingest: {e}")))
    };
    let prepare = |bm: &mut Bootmem<'static>| -> Option<&'static dyn PhysMapper> {
        // SAFETY: everything in use is reserved by now (kernel image with its stack, the
        // device tree); the free RAM is unused (the earlier checks are done with theirs), and
        // with the MMU off all of it is reachable at its physical address.
        unsafe { bm.set_mapper(&IDENTITY) };
        Some(&IDENTITY)
    };
    let outcome = bootmem_checks::run(h, &boot.map, reserved, ingest, prepare, keep);
    if let Some(summary) = outcome.summary {
        println!("mmkit-qemu: bootmem hand-off: {summary}");
    }
    outcome
}

/// Memory kept from bootmem for the kernel's two page tables: 32 frames each, about three
/// times what 512 MiB of RAM needs.
const PAGE_TABLE_POOL: u64 = 64 * PAGE_SIZE;

/// The kernel's own tables: built with mmkit-pgtable from the kept pool, checked, loaded,
/// the MMU turned on, and then checked again through the hardware: W^X, unmapped memory, the
/// direct map, and a `protect` on the live table. Returns whether the MMU is on with them.
#[inline(never)]
fn mmu_sequence(
    h: &mut Harness<Serial>,
    map: &MemoryMap,
    pool: Option<PhysRange>,
    exclude: &[PhysRange],
) -> bool {
    let Some(pool) = pool else {
        h.skip("mmu_*", "bootmem kept no memory for page tables");
        return false;
    };
    let half = pool.len() / 2;
    let (Ok(low_pool), Ok(high_pool)) = (
        PhysRange::from_start_size(pool.start(), half),
        PhysRange::from_start_size(PhysAddr::new(pool.start().as_u64() + half), half),
    ) else {
        h.skip("mmu_*", "pool too small");
        return false;
    };
    // SAFETY: the pool is RAM outside the kernel image: reachable at its physical address
    // with the MMU off, and identity-mapped RW by the lower table once it is on.
    let mapper = unsafe { WindowMapper::new(pool, 0) };
    // SAFETY: bootmem kept the pool zeroed and reserved through the hand-off, so the kernel
    // owns it; the two halves are disjoint and `mapper` reaches both.
    let (low_frames, high_frames) = unsafe {
        (
            PoolFrames::new(low_pool, &mapper),
            PoolFrames::new(high_pool, &mapper),
        )
    };
    println!("mmkit-qemu: page tables from {pool}");

    let mut tables = None;
    h.run("pgtable_builds_kernel_tables", || {
        let err = |e| Reason::new(format_args!("{e:?}"));
        let (lower, sealed) = mmu::build_lower(map, mapper, low_frames).map_err(err)?;
        let upper = mmu::build_upper(map, mapper, high_frames).map_err(err)?;
        for (name, pt) in [("lower", &lower), ("upper", &upper)] {
            if let Err(e) = pt.verify() {
                fail!("{name} table: verify: {e:?}");
            }
        }
        print_w_xor_x_pass(sealed);
        tables = Some((lower, upper));
        Ok(())
    });
    let Some((mut lower, mut upper)) = tables else {
        h.skip("mmu_*", "no tables");
        return false;
    };
    h.run("kernel_image_is_w_xor_x", || {
        mmu_checks::kernel_image_is_w_xor_x(
            &lower,
            kernel_image(),
            mmu::sections(),
            &[crate::boot::boot_stack_guard()],
        )
    });
    h.run("direct_map_uses_large_blocks", || {
        mmu_checks::direct_map_uses_large_pages(&upper, map, DIRECT_MAP_BASE)
    });
    let switched = h.run("mmu_turns_on_with_new_tables", || {
        // SAFETY: EL1 with the MMU off; the lower table identity-maps the kernel image (stack
        // included), all RAM (device tree, table pool) and the UART; both tables live until
        // the kernel exits.
        unsafe { mmu::enable(&mut lower, &mut upper) };
        ensure!(mmu::mmu_enabled(), "SCTLR_EL1.M is clear");
        let (_, t1) = mmu::current_roots();
        ensure!(
            lower.asid() == Some(mmu::KERNEL_ASID),
            "identity table tagged {:?}",
            lower.asid()
        );
        mmu::check_ttbr0(lower.root().as_u64())?;
        println!(
            "mmkit-qemu: ASIDs on: TTBR0 loaded with ASID {} ({}-bit ASIDs, TCR_EL1.A1 = 0)",
            mmu::current_asid(),
            mmu::asid_bits()
        );
        ensure!(
            t1 == upper.root().as_u64(),
            "TTBR1 {t1:#x}, table {:?}",
            upper.root()
        );
        Ok(())
    });
    if !switched {
        h.skip("mmu_*", "the MMU did not come on");
        return false;
    }
    h.run("unmapped_address_faults", unmapped_address_faults);
    h.run("boot_stack_guard_page_faults", boot_stack_guard_page_faults);
    h.run("direct_map_aliases_identity", || {
        let avoid = [exclude[0], exclude[1], pool];
        // SAFETY: after the hand-off no allocator has taken any free page yet, and the
        // kernel's own tables map every free RAM page RW at its physical address.
        unsafe {
            mmu_checks::direct_map_aliases_identity(map, &avoid, IDENTITY_LIMIT, 0, &mmu::DIRECT)
        }
    });
    h.run("write_to_kernel_rodata_faults", || {
        write_faults(
            core::ptr::addr_of!(exceptions::RET_IN_RODATA) as u64,
            "rodata",
        )
    });
    h.run("write_to_kernel_text_faults", || {
        write_faults(exceptions::call_rodata_nofault as *const () as u64, "text")
    });
    h.run("executing_rodata_faults", executing_rodata_faults);
    let mut splits = 0;
    let protected = h.run("protect_on_live_table_takes_effect", || {
        splits = protect_on_live_table_takes_effect(&mut upper, map, exclude, pool)?;
        Ok(())
    });
    if protected {
        println!(
            "mmkit-qemu: protect on the live table needed {splits} break-before-make split(s)"
        );
    }
    for (name, pt) in [("identity", &lower), ("direct map", &upper)] {
        match pt.verify() {
            Ok(r) => println!(
                "mmkit-qemu: {name} table: {} tables, {} leaves, {} MiB mapped; {} pool frames used",
                r.tables,
                r.leaves,
                r.mapped_bytes >> 20,
                pt.frames().frames_in_use()
            ),
            Err(e) => println!("mmkit-qemu: {name} table fails verify: {e:?}"),
        }
    }
    true
}

/// Say what the W^X pass of the mutating cursor changed: its flush token's scope.
fn print_w_xor_x_pass(sealed: FlushScope) {
    let s = mmu::sections();
    match sealed {
        FlushScope::Range { start, pages, .. } => println!(
            "mmkit-qemu: W^X by the mutating cursor: image mapped RW in 4 KiB pages, one update_leaves pass made {} text pages RX, {} rodata pages RO, unmapped the stack guard; token covers {pages} pages from {:#x}",
            s.text.len() / PAGE_SIZE,
            s.rodata.len() / PAGE_SIZE,
            start.as_u64()
        ),
        FlushScope::Nothing => println!("mmkit-qemu: W^X by the mutating cursor changed nothing"),
    }
}

/// A read of the boot stack's guard page (what a stack overflow would touch first) gives a
/// translation fault.
fn boot_stack_guard_page_faults() -> CheckResult {
    let guard = crate::boot::boot_stack_guard().start().as_u64();
    // SAFETY: the guard page is unmapped, so the read faults and touches nothing.
    let got = unsafe { exceptions::read_u64_nofault(guard) };
    let Err(fault) = got else {
        fail!("read of the stack guard page at {guard:#x} returned {got:?}");
    };
    ensure!(
        fault.class() == EC_DATA_ABORT_SAME_EL
            && exceptions::is_translation_fault(fault.status_code())
            && fault.far == guard,
        "read of the stack guard page at {guard:#x}: ESR {:#x}, FAR {:#x}",
        fault.esr,
        fault.far
    );
    Ok(())
}

fn unmapped_address_faults() -> CheckResult {
    // Address 0 (QEMU's flash) is not in the kernel's tables.
    // SAFETY: the address is unmapped, so the read faults and touches nothing.
    let got = unsafe { exceptions::read_u64_nofault(0) };
    let Err(fault) = got else {
        fail!("read of address 0 returned {got:?}");
    };
    ensure!(
        fault.class() == EC_DATA_ABORT_SAME_EL
            && exceptions::is_translation_fault(fault.status_code()),
        "read of address 0: ESR {:#x}, expected a translation fault",
        fault.esr
    );
    ensure!(fault.far == 0, "FAR {:#x}", fault.far);
    Ok(())
}

/// A write fault is a data abort at EL1 with a permission fault status, WnR set, FAR = addr.
fn expect_write_permission_fault(got: Result<(), Fault>, addr: u64, what: &str) -> CheckResult {
    let Err(fault) = got else {
        fail!("write to {what} at {addr:#x} succeeded");
    };
    ensure!(
        fault.class() == EC_DATA_ABORT_SAME_EL
            && exceptions::is_permission_fault(fault.status_code())
            && fault.esr & ESR_WNR != 0,
        "write to {what} at {addr:#x}: ESR {:#x}, expected a write permission fault",
        fault.esr
    );
    ensure!(
        fault.far == addr,
        "write to {what}: FAR {:#x}, expected {addr:#x}",
        fault.far
    );
    Ok(())
}

/// Writing one byte at `addr` (with the value already there, in case the write is allowed)
/// must raise a permission fault.
fn write_faults(addr: u64, what: &str) -> CheckResult {
    // SAFETY: `addr` is kernel image memory, mapped and readable.
    let word = unsafe { exceptions::read_u64_nofault(addr & !7) };
    let Ok(word) = word else {
        fail!("{what} at {addr:#x} is not readable: {word:?}");
    };
    let byte = (word >> ((addr & 7) * 8)) as u8;
    // SAFETY: writing back the byte that is there changes nothing even if the write succeeds.
    let got = unsafe { exceptions::write_u8_nofault(addr, byte) };
    expect_write_permission_fault(got, addr, what)
}

fn executing_rodata_faults() -> CheckResult {
    let target = core::ptr::addr_of!(exceptions::RET_IN_RODATA) as u64;
    let got = exceptions::call_rodata_nofault();
    let Err(fault) = got else {
        fail!("the ret in rodata at {target:#x} executed");
    };
    ensure!(
        fault.class() == EC_INSTRUCTION_ABORT_SAME_EL
            && exceptions::is_permission_fault(fault.status_code()),
        "call into rodata: ESR {:#x}, expected an instruction permission fault",
        fault.esr
    );
    ensure!(
        fault.far == target,
        "FAR {:#x}, expected {target:#x}",
        fault.far
    );
    Ok(())
}

/// Make a 2 MiB block of the direct map read-only on the live table, flush, see the hardware
/// refuse a write; then make it writable again. The block sits in a contiguous-hint run, so
/// the first `protect` is refused with `BreakBeforeMake`; `split_live` then breaks the run
/// the architected way (invalidate, TLBI, make) and the `protect` is retried. Returns how
/// many splits it took.
fn protect_on_live_table_takes_effect(
    pt: &mut KernelTable<'_>,
    map: &MemoryMap,
    exclude: &[PhysRange],
    pool: PhysRange,
) -> Result<u32, Reason> {
    let avoid = [exclude[0], exclude[1], pool];
    let two_mib = PageSize::Size2M.bytes();
    let Some(block) = map.find_free_top_down(two_mib, two_mib, IDENTITY_LIMIT, &avoid) else {
        fail!("no free 2 MiB block");
    };
    let va = VirtAddr::new(DIRECT_MAP_BASE + block.start().as_u64());
    // SAFETY: EL1, the tables' regime.
    let mut tlb = unsafe { InnerShareableTlb::new() };
    let target = va.as_u64() + 0x2468;
    let read_only = AttrChange::flags(Attrs::empty(), Attrs::WRITE);
    let mut splits = 0;
    let flush = loop {
        match pt.protect(va, two_mib, read_only) {
            Ok(flush) => break flush,
            Err(ProtectError::BreakBeforeMake(at)) if splits < 4 => {
                splits += 1;
                if let Err(e) = pt.split_live(at, &mut tlb) {
                    fail!("split_live at {at:?}: {e:?}");
                }
            }
            Err(e) => fail!("protect read-only after {splits} splits: {e:?}"),
        }
    };
    let freed = flush.invalidate(&mut tlb);
    pt.free_tables(freed)
        .map_err(|e| Reason::new(format_args!("free tables: {e:?}")))?;
    // SAFETY: the block is free RAM this check owns; the write is expected to fault.
    let denied = unsafe { exceptions::write_u8_nofault(target, 0x77) };
    let flush = pt
        .protect(va, two_mib, AttrChange::flags(Attrs::WRITE, Attrs::empty()))
        .map_err(|e| Reason::new(format_args!("protect writable: {e:?}")))?;
    let freed = flush.invalidate(&mut tlb);
    pt.free_tables(freed)
        .map_err(|e| Reason::new(format_args!("free tables: {e:?}")))?;
    expect_write_permission_fault(denied, target, "a read-only direct-map block")?;
    // SAFETY: as above.
    let allowed = unsafe { exceptions::write_u8_nofault(target, 0x77) };
    ensure!(allowed.is_ok(), "write after restoring gave {allowed:?}");
    if let Err(e) = pt.verify() {
        fail!("verify after protect: {e:?}");
    }
    Ok(splits)
}

/// mmkit through its facade (see [`facade`](crate::facade)): boot from the device tree on
/// the direct map, the facade checks, the switch of TTBR1 to the facade's page table (frames
/// from the buddy), the direct map checked again through it, and vmalloc through it.
#[inline(never)]
fn facade_sequence(
    h: &mut Harness<Serial>,
    boot: &BootInfo,
    exclude: &[PhysRange],
    pool: PhysRange,
) {
    let reserved = [exclude[0], exclude[1], pool];
    let mpidrs = boot.facts.cpus.mpidrs();
    let nr_cpus = mpidrs.len().clamp(1, smp::MAX_CPUS);
    let (defer, completion) = deferred::plan(h, boot.facts.bootargs.unwrap_or(""));
    let mut booted = None;
    h.run("mm_boots_from_the_device_tree", || {
        let mm = facade::boot(Cpus::new(nr_cpus), boot.blob, &reserved, defer)
            .map_err(|e| Reason::new(format_args!("{e}")))?;
        booted = Some(mm);
        Ok(())
    });
    let Some(mut mm) = booted else {
        h.skip("mm_*", "mmkit did not boot");
        return;
    };
    if defer.is_some() {
        deferred::check_after_boot(h, &mm);
    }
    mm_checks::run(h, &mut mm);

    let adopted = h.run("ttbr1_switches_to_the_mm_page_table", || {
        facade::adopt_page_table(&mm, &boot.map).map(|_| ())
    });
    if !adopted {
        h.skip("mm_table_*", "the switch to the mm page table failed");
        return;
    }
    let identity = h.run("ttbr0_switches_to_buddy_tables", || {
        facade::adopt_identity_table(&mm, &boot.map).map(|_| ())
    });
    if identity {
        h.run("mm_frees_the_interim_table_pool", || {
            // SAFETY: TTBR0 and TTBR1 now hold tables whose frames come from the buddy, and
            // the TLBs were invalidated after each switch; the interim tables in `pool` are no
            // longer walked or written, and nothing else lives in the pool.
            unsafe { mm_checks::frees_reserved_pool(&mut mm, pool) }
        });
        h.run("mm_ttbr0_kernel_image_is_w_xor_x", || {
            write_faults(
                core::ptr::addr_of!(exceptions::RET_IN_RODATA) as u64,
                "rodata",
            )?;
            write_faults(exceptions::call_rodata_nofault as *const () as u64, "text")?;
            executing_rodata_faults()?;
            boot_stack_guard_page_faults()
        });
    }
    h.run("mm_table_direct_map_uses_large_blocks", || {
        let checked = mm.with_page_table(|pt| {
            mmu_checks::direct_map_uses_large_pages(pt, &boot.map, DIRECT_MAP_BASE)
        });
        checked.unwrap_or_else(|| fail!("no kernel page table"))
    });
    h.run("mm_table_pages_of_several_orders", || {
        mm_checks::pages_of_several_orders(&mm)
    });
    let mut tlb = facade::tlb();
    h.run("vmalloc_through_the_live_table", || {
        mm_checks::vmalloc_through_live_tables(&mut mm, &mut tlb, &facade::probe)
    });
    deferred::movable_check(h, &mut mm, completion, |mm| {
        mm_checks::movable_pages_compact(mm, &facade::MOVER_TLB, &mut tlb)
    });
    if let Some(Ok(r)) = mm.with_page_table(|pt| pt.verify()) {
        println!(
            "mmkit-qemu: mm TTBR1 table: {} tables, {} leaves, {} MiB mapped; table frames from the buddy",
            r.tables,
            r.leaves,
            r.mapped_bytes >> 20
        );
    }
    match facade::MM.init(mm) {
        Ok(mm) => smp_sequence(h, mm, boot),
        Err(_) => {
            h.run("smp_mm_is_shared", || fail!("an mm is installed already"));
        }
    }
}

/// kmalloc shrinks done under a fast timer (`smp_atomic_allocations_during_shrink`).
const SHRINK_ROUNDS: u32 = 2_000;

/// Operations each CPU's stress worker does.
const STRESS_OPS: u64 = 4_000;

/// The SMP part (issue 13): the GIC and timers, the other CPUs through PSCI, cross-CPU
/// calls, the shootdown check, and the stress test with its before/after figures and
/// `verify`.
#[inline(never)]
fn smp_sequence(h: &mut Harness<Serial>, mm: &'static KernelMm, boot: &BootInfo) {
    let mpidrs = boot.facts.cpus.mpidrs();
    let nr_cpus = mm.platform().nr_cpus();
    println!(
        "mmkit-qemu: {nr_cpus} CPU(s) in the device tree (MPIDRs {mpidrs:x?}), boot CPU {}",
        smp::this_cpu()
    );
    let gic_found = h.run("gic_v2_where_the_kernel_maps_it", || {
        let expected = Some((gic::GICD_BASE, gic::GICC_BASE));
        ensure!(
            boot.facts.gic_v2 == expected,
            "device tree GICv2 {:x?}, the kernel maps {expected:x?}",
            boot.facts.gic_v2
        );
        Ok(())
    });
    if !gic_found {
        h.skip("smp_*", "no GICv2 where expected");
        return;
    }
    // The boot CPU's timer first: its handler allocates from here on, the other CPUs' as
    // soon as they are online.
    smp::start_boot_cpu_interrupts();
    smp::set_timer_allocations(true);
    h.run("smp_atomic_allocations_during_shrink", || {
        gic::set_fast_timer(true);
        let boot_cpu = smp::local_of(smp::this_cpu());
        let ticks = || boot_cpu.map_or(0, |l| l.stats.snapshot().ticks);
        let taken = stress::shrink_under_interrupts(mm, SHRINK_ROUNDS, ticks);
        gic::set_fast_timer(false);
        let taken = taken?;
        println!(
            "mmkit-qemu: {SHRINK_ROUNDS} kmalloc shrinks with {taken} timer interrupts meanwhile"
        );
        Ok(())
    });
    let started = h.run("smp_brings_up_every_cpu", || {
        let online = smp::start_secondaries(mm, mpidrs)?;
        ensure!(
            online == mpidrs.len(),
            "{online} of {} CPUs came online",
            mpidrs.len()
        );
        Ok(())
    });
    if !started {
        h.skip("smp_*", "not every CPU came up");
        return;
    }
    h.run("smp_run_on_cpu_reaches_every_cpu", || {
        use core::sync::atomic::{AtomicUsize, Ordering};
        for cpu in 0..nr_cpus {
            let seen = AtomicUsize::new(usize::MAX);
            let reached = mm.platform().run_on_cpu(cpu, &|| {
                seen.store(smp::this_cpu(), Ordering::SeqCst);
            });
            let seen = seen.into_inner();
            ensure!(reached, "CPU {cpu} not reached");
            ensure!(seen == cpu, "the call for CPU {cpu} ran on CPU {seen}");
        }
        Ok(())
    });
    h.run("smp_every_cpu_runs_the_tagged_root", || {
        use core::sync::atomic::{AtomicU64, Ordering};
        let (t0, _) = mmu::current_roots();
        let asid = mmu::current_asid();
        for cpu in 0..nr_cpus {
            let seen = AtomicU64::new(u64::MAX);
            let reached = mm.platform().run_on_cpu(cpu, &|| {
                let (root, _) = mmu::current_roots();
                seen.store(
                    root | u64::from(mmu::current_asid()) << 48,
                    Ordering::SeqCst,
                );
            });
            ensure!(reached, "CPU {cpu} not reached");
            let seen = seen.into_inner();
            ensure!(
                seen == t0 | u64::from(asid) << 48 && asid == mmu::KERNEL_ASID.0,
                "CPU {cpu}: TTBR0 {seen:#x}; the boot CPU has root {t0:#x} with ASID {asid}"
            );
        }
        println!("mmkit-qemu: all {nr_cpus} CPUs run TTBR0 root {t0:#x} with ASID {asid}");
        Ok(())
    });
    deferred::smp_check(h, mm, &smp::Kernel, &mut Serial);
    let shootdown_ok = if nr_cpus > 1 {
        h.run("smp_tlb_shootdown_reaches_other_cpus", || {
            let other = (0..nr_cpus).find(|&c| c != smp::this_cpu()).unwrap_or(0);
            stress::shootdown_reaches(mm, &smp::KernelHooks, other)
        })
    } else {
        h.skip("smp_tlb_shootdown_reaches_other_cpus", "one CPU");
        true
    };
    let cfg = stress::StressConfig {
        ops: STRESS_OPS,
        seed: 0x5eed,
    };
    let total = stress::stress_and_report(h, mm, &smp::Kernel, shootdown_ok, cfg, &mut Serial);
    h.run("smp_no_refused_call_or_failed_allocation", || {
        let refused = smp::refused_calls();
        ensure!(refused == 0, "{refused} cross-CPU calls refused");
        let failed = total.timer_failures;
        ensure!(
            failed == 0,
            "{failed} GFP_ATOMIC allocations in timer handlers failed"
        );
        Ok(())
    });
}

/// Fail on purpose if the command line asks for it (`mmkit.inject=`), so the boot script can
/// prove each failure path is caught: a failing check, a panic, an unexpected abort.
fn inject_failure(h: &mut Harness<Serial>, cmdline: &str, map: &MemoryMap) {
    match checks::injection(cmdline) {
        Ok(None) => {}
        Ok(Some(Injection::Check)) => {
            h.run("injected_failure", || {
                fail!("injected by {}=check", checks::INJECT_PARAM)
            });
        }
        Ok(Some(Injection::Panic)) => panic!("injected by {}=panic", checks::INJECT_PARAM),
        Ok(Some(Injection::Shootdown)) => {}
        Ok(Some(Injection::Fault)) => {
            let target = unbacked_address(map).unwrap_or(0x3000_0000) as *const u64;
            // SAFETY: deliberately faulting: nothing decodes the address, so the read aborts
            // into a handler that reports it and ends the run.
            let value = unsafe { target.read_volatile() };
            panic!("read of unbacked {target:p} returned {value:#x}");
        }
        Err(value) => {
            h.run("injected_failure", || {
                fail!("unknown {}={value}", checks::INJECT_PARAM)
            });
        }
    }
}
