//! The x86_64 kernel's self-tests.
//!
//! Shared checks (memory map, RAM size, IRQ guard, direct-map hook) come from
//! [`mmkit_qemu_common::checks`]; the ones here need the hardware: touching RAM far from the
//! kernel, a breakpoint trap, and page faults provoked on purpose through the exception table.
//! Memory used by a check is chosen with [`MemoryMap::find_free_top_down`] clear of the kernel
//! image and the boot data; nothing else allocates yet, so such memory is the check's own.

use mmkit_addr::{IrqControl, PageSize, PhysAddr, PhysMapper, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit_bootmem::firmware::e820::{self, E820Entry, E820Type};
use mmkit_bootmem::Bootmem;
use mmkit_pgtable::{AttrChange, Attrs, FlushScope};
use mmkit_qemu_common::bootmem_checks;
use mmkit_qemu_common::checks::Injection;
use mmkit_qemu_common::deferred;
use mmkit_qemu_common::frames::{PoolFrames, WindowMapper};
use mmkit_qemu_common::harness::{CheckResult, Harness, Outcome, Reason};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::stress;
use mmkit_qemu_common::{checks, ensure, fail};
use mmkit_qemu_common::{mm_checks, mmu_checks};

use crate::apic;
use crate::facade::{self, KernelMm};
use crate::memmap::{kernel_image, BootInfo};
use crate::mmu::{self, KernelTable, DIRECT_MAP_BASE};
use crate::paging::{self, BLOCK_SIZE};
use crate::platform::{interrupts_enabled, Cpus, Serial, IDENTITY, IDENTITY_LIMIT};
use crate::println;
use crate::smp;
use crate::traps::{self, Fault, PF_INSTRUCTION, PF_PRESENT, PF_WRITE, VECTOR_PAGE_FAULT};

/// Linux keeps the first 1 MiB of an x86 machine reserved (BIOS data, real-mode trampolines:
/// `arch/x86/realmode/init.c`); so does this kernel.
const LOW_MEMORY: u64 = 1 << 20;

/// How far above the kernel image the "far" RAM page must be.
const FAR_FROM_KERNEL: u64 = 4 << 20;

/// Run every check and print the summary line.
pub fn run(boot: &BootInfo) -> Outcome {
    let kernel = kernel_image();
    let exclude = [
        kernel,
        boot.boot_data[0],
        boot.boot_data[1],
        boot.boot_data[2],
    ];
    let map = &boot.map;
    let mut h = Harness::new(Serial);

    h.run("memmap_is_sane", || checks::memmap_is_sane(map));
    match checks::ram_matches_command_line(map, boot.cmdline) {
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
    h.run("irq_guard_nests", || {
        checks::irq_guard_nests(&Cpus::new(1), interrupts_enabled)
    });
    h.run("identity_mapper_translates", || {
        checks::mapper_translates(&IDENTITY, 0, IDENTITY_LIMIT, kernel)
    });
    h.run("far_ram_page_write_read", || {
        // SAFETY: nothing allocates memory yet, and `exclude` covers the kernel and the boot
        // data; the boot identity map reaches RAM below `IDENTITY_LIMIT` writable.
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
    h.run("breakpoint_trap_returns", breakpoint_trap_returns);
    h.run("exception_table_has_one_entry_per_address", || {
        match mmkit_qemu_common::extable::duplicate(traps::exception_table()) {
            Some(pc) => fail!("two exception-table entries for {pc:#x}"),
            None => Ok(()),
        }
    });
    h.run("write_to_read_only_block_faults", || {
        write_to_read_only_block_faults(map, &exclude)
    });
    h.run(
        "read_of_unmapped_address_faults",
        read_of_unmapped_address_faults,
    );
    // Then: the platform checks above used free memory that bootmem is about to manage.
    let (e820, nr_e820) = facade::e820_entries(boot);
    let keep = [PAGE_TABLE_POOL];
    let outcome = bootmem_sequence(&mut h, boot, &exclude, &keep);
    let pool = outcome.kept[0];
    let live = mmu_sequence(&mut h, map, pool, &exclude);
    let injection = checks::injection(boot.cmdline);
    if injection == Ok(Some(Injection::Shootdown)) {
        smp::skip_shootdowns();
    }
    match pool {
        Some(pool) if live => facade_sequence(&mut h, boot, &e820[..nr_e820], &exclude, pool),
        _ => h.skip("mm_*", "needs the interim tables with the direct map"),
    }
    inject_failure(&mut h, injection);
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

/// mmkit-bootmem on the real firmware map: the PVH table goes through bootmem's e820
/// ingestion, the kernel, boot data and low 1 MiB are reserved, and allocations stay below
/// the 4 GiB the boot identity map reaches (memblock's "current limit").
/// `keep` are the sizes of memory bootmem keeps for the kernel past the hand-off.
#[inline(never)]
fn bootmem_sequence(
    h: &mut Harness<Serial>,
    boot: &BootInfo,
    exclude: &[PhysRange],
    keep: &[u64],
) -> bootmem_checks::Outcome {
    let low = low_memory();
    let mut reserved = [PhysRange::EMPTY; 5];
    reserved[..exclude.len()].copy_from_slice(exclude);
    reserved[exclude.len()] = low;
    let ingest = |bm: &mut Bootmem<'static>| {
        let mut entries = [E820Entry::new(0, 0, E820Type::Ram); MemoryMap::CAPACITY];
        let n = boot.firmware_table.len().min(entries.len());
        for (out, e) in entries.iter_mut().zip(boot.firmware_table) {
            *out = E820Entry {
                addr: e.addr,
                size: e.size,
                kind: e.entry_type,
            };
        }
        e820::ingest(bm, &entries[..n])
            .map(|_| ())
            .map_err(|e| Reason::new(format_args!("e820 ingest: {e}")))
    };
    let prepare = |bm: &mut Bootmem<'static>| -> Option<&'static dyn PhysMapper> {
        bm.set_current_limit(PhysAddr::new(IDENTITY_LIMIT));
        // SAFETY: everything in use is reserved by now (kernel image with its stack, page
        // tables and IDT; the PVH start info, memory map and command line; the low 1 MiB);
        // the free RAM below 4 GiB is unused (the earlier checks are done with theirs), and
        // the identity map reaches all of it.
        unsafe { bm.set_mapper(&IDENTITY) };
        Some(&IDENTITY)
    };
    let map = &boot.map;
    let reserved = &reserved[..exclude.len() + 1];
    let outcome = bootmem_checks::run(h, map, reserved, ingest, prepare, keep);
    if let Some(summary) = outcome.summary {
        println!("mmkit-qemu: bootmem hand-off: {summary}");
    }
    outcome
}

/// The first 1 MiB, which the kernel keeps reserved (see [`LOW_MEMORY`]).
fn low_memory() -> PhysRange {
    PhysRange::from_start_size(PhysAddr::ZERO, LOW_MEMORY).unwrap_or(PhysRange::EMPTY)
}

/// Memory kept from bootmem for the kernel's page tables: 64 frames; the tables need about
/// 20 with 2 MiB pages and 3 GiB of RAM.
const PAGE_TABLE_POOL: u64 = 64 * PAGE_SIZE;

/// The kernel's own tables: built with mmkit-pgtable from the kept pool, checked, loaded into
/// CR3, and then checked again through the hardware: W^X, the unmapped null page, the direct
/// map, and a `protect` on the live table. Returns whether the new tables are live.
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
    // SAFETY: the pool is RAM below 4 GiB outside the kernel image: identity-mapped RW by the
    // boot tables and by the tables built here, for as long as either is loaded.
    let mapper = unsafe { WindowMapper::new(pool, 0) };
    // SAFETY: bootmem kept the pool zeroed and reserved through the hand-off, so the kernel
    // owns it, and nothing else uses it; `mapper` reaches all of it.
    let frames = unsafe { PoolFrames::new(pool, &mapper) };
    let cpu = mmu::paging_features();
    println!(
        "mmkit-qemu: page tables from {pool}; CPU: NX {}, 1 GiB pages {}, PCID {}, INVPCID {}",
        cpu.nx, cpu.gib_pages, cpu.pcid, cpu.invpcid
    );

    let mut table = None;
    h.run("pgtable_builds_kernel_tables", || {
        let (pt, sealed) =
            mmu::build(map, mapper, frames, cpu).map_err(|e| Reason::new(format_args!("{e:?}")))?;
        if let Err(e) = pt.verify() {
            fail!("verify: {e:?}");
        }
        print_w_xor_x_pass(sealed);
        table = Some(pt);
        Ok(())
    });
    let Some(mut pt) = table else {
        h.skip("mmu_*", "no tables");
        return false;
    };
    h.run("kernel_image_is_w_xor_x", || {
        mmu_checks::kernel_image_is_w_xor_x(
            &pt,
            kernel_image(),
            mmu::sections(),
            &[crate::boot::boot_stack_guard()],
        )
    });
    h.run("direct_map_uses_large_pages", || {
        mmu_checks::direct_map_uses_large_pages(&pt, map, DIRECT_MAP_BASE)
    });
    let pcids = mmu::enable_pcids(cpu);
    if pcids {
        println!(
            "mmkit-qemu: PCIDs on (CR4.PCIDE): the kernel's tables are loaded with PCID {} and invalidated with INVPCID",
            mmu::KERNEL_PCID.0
        );
    } else {
        println!(
            "mmkit-qemu: PCIDs off: the CPU lacks {}; tables loaded with PCID 0, invalidated with INVLPG",
            match (cpu.pcid, cpu.invpcid) {
                (false, false) => "PCID and INVPCID",
                (false, true) => "PCID",
                _ => "INVPCID",
            }
        );
    }
    let switched = h.run("mmu_switches_to_new_tables", || {
        // SAFETY: `build` mapped the whole kernel image, the low memory holding the boot data,
        // the page-table pool and every other address below 4 GiB the kernel touches (I/O
        // ports need no mapping); `pt` lives until the kernel exits.
        let pcid = unsafe { mmu::switch_to(&mut pt) };
        ensure!(
            pcid.is_some() == pcids,
            "PCIDs are {pcids}, switch used {pcid:?}"
        );
        ensure!(
            pt.asid() == pcid,
            "table tagged {:?}, loaded with {pcid:?}",
            pt.asid()
        );
        mmu::check_cr3(pt.root().as_u64(), pcid)
    });
    if !switched {
        h.skip("mmu_*", "the switch failed");
        return false;
    }
    h.run("null_page_is_unmapped", null_page_is_unmapped);
    h.run("boot_stack_guard_page_faults", boot_stack_guard_page_faults);
    h.run("direct_map_aliases_identity", || {
        let avoid = [
            exclude[0],
            exclude[1],
            exclude[2],
            exclude[3],
            pool,
            low_memory(),
        ];
        // SAFETY: after the hand-off no allocator has taken any free page yet, and the
        // kernel's own tables map every free RAM page RW at its physical address.
        unsafe {
            mmu_checks::direct_map_aliases_identity(map, &avoid, IDENTITY_LIMIT, 0, &mmu::DIRECT)
        }
    });
    h.run("write_to_kernel_rodata_faults", || {
        write_faults(core::ptr::addr_of!(traps::RET_IN_RODATA) as u64, "rodata")
    });
    h.run("write_to_kernel_text_faults", || {
        write_faults(traps::call_rodata_nofault as *const () as u64, "text")
    });
    h.run("executing_rodata_faults", executing_rodata_faults);
    h.run("protect_on_live_table_takes_effect", || {
        protect_on_live_table_takes_effect(&mut pt, map, exclude, pool)
    });
    match pt.verify() {
        Ok(r) => println!(
            "mmkit-qemu: kernel tables: {} tables, {} leaves, {} MiB mapped; {} of {} pool frames used",
            r.tables,
            r.leaves,
            r.mapped_bytes >> 20,
            pt.frames().frames_in_use(),
            pool.len() / PAGE_SIZE
        ),
        Err(e) => println!("mmkit-qemu: kernel tables fail verify: {e:?}"),
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

/// A read of the boot stack's guard page (what a stack overflow would touch first) faults.
fn boot_stack_guard_page_faults() -> CheckResult {
    let guard = crate::boot::boot_stack_guard().start().as_u64();
    // SAFETY: the guard page is unmapped, so the read faults and touches nothing.
    let got = unsafe { traps::read_u64_nofault(guard) };
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: 0,
        address: guard,
    };
    ensure!(
        got == Err(expected),
        "read of the stack guard page at {guard:#x} gave {got:?}"
    );
    Ok(())
}

fn null_page_is_unmapped() -> CheckResult {
    // SAFETY: page 0 is not mapped, so the read faults and touches nothing.
    let got = unsafe { traps::read_u64_nofault(0) };
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: 0,
        address: 0,
    };
    ensure!(got == Err(expected), "read of address 0 gave {got:?}");
    Ok(())
}

/// Writing one byte at `addr` (with the value already there, in case the write is allowed)
/// must raise a protection `#PF`.
fn write_faults(addr: u64, what: &str) -> CheckResult {
    // SAFETY: `addr` is kernel image memory, mapped and readable.
    let word = unsafe { traps::read_u64_nofault(addr & !7) };
    let Ok(word) = word else {
        fail!("{what} at {addr:#x} is not readable: {word:?}");
    };
    let byte = (word >> ((addr & 7) * 8)) as u8;
    // SAFETY: writing back the byte that is there changes nothing even if the write succeeds.
    let got = unsafe { traps::write_u8_nofault(addr, byte) };
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: PF_PRESENT | PF_WRITE,
        address: addr,
    };
    ensure!(
        got == Err(expected),
        "write to {what} at {addr:#x} gave {got:?}"
    );
    Ok(())
}

fn executing_rodata_faults() -> CheckResult {
    let got = traps::call_rodata_nofault();
    let target = core::ptr::addr_of!(traps::RET_IN_RODATA) as u64;
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: PF_PRESENT | PF_INSTRUCTION,
        address: target,
    };
    ensure!(
        got == Err(expected),
        "call into rodata at {target:#x} gave {got:?}"
    );
    Ok(())
}

/// Make a 2 MiB piece of the direct map read-only on the live table (splitting a 1 GiB page
/// if there is one), flush, and see the hardware refuse a write; then make it writable again.
fn protect_on_live_table_takes_effect(
    pt: &mut KernelTable<'_>,
    map: &MemoryMap,
    exclude: &[PhysRange],
    pool: PhysRange,
) -> CheckResult {
    let avoid = [exclude[0], exclude[1], exclude[2], exclude[3], pool];
    let two_mib = PageSize::Size2M.bytes();
    let Some(block) = map.find_free_top_down(two_mib, two_mib, IDENTITY_LIMIT, &avoid) else {
        fail!("no free 2 MiB block");
    };
    let va = VirtAddr::new(DIRECT_MAP_BASE + block.start().as_u64());
    // SAFETY: one CPU, interrupts do not touch these tables, and the table is only loaded here.
    let mut tlb = unsafe { mmu::CpuTlb::new() };
    let target = va.as_u64() + 0x2468;

    let flush = pt
        .protect(va, two_mib, AttrChange::flags(Attrs::empty(), Attrs::WRITE))
        .map_err(|e| Reason::new(format_args!("protect read-only: {e:?}")))?;
    let freed = flush.invalidate(&mut tlb);
    pt.free_tables(freed)
        .map_err(|e| Reason::new(format_args!("free tables: {e:?}")))?;
    // SAFETY: the block is free RAM this check owns; the write is expected to fault.
    let denied = unsafe { traps::write_u8_nofault(target, 0x77) };
    let flush = pt
        .protect(va, two_mib, AttrChange::flags(Attrs::WRITE, Attrs::empty()))
        .map_err(|e| Reason::new(format_args!("protect writable: {e:?}")))?;
    let freed = flush.invalidate(&mut tlb);
    pt.free_tables(freed)
        .map_err(|e| Reason::new(format_args!("free tables: {e:?}")))?;
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: PF_PRESENT | PF_WRITE,
        address: target,
    };
    ensure!(
        denied == Err(expected),
        "write to read-only {target:#x} gave {denied:?}"
    );
    // SAFETY: as above.
    let allowed = unsafe { traps::write_u8_nofault(target, 0x77) };
    ensure!(allowed.is_ok(), "write after restoring gave {allowed:?}");
    if let Err(e) = pt.verify() {
        fail!("verify after protect: {e:?}");
    }
    Ok(())
}

/// mmkit through its facade (see [`facade`](crate::facade)): boot from the firmware map on
/// the direct map, the facade checks, the switch to the facade's page table (frames from the
/// buddy), the image checks again on it, vmalloc through it, and the global allocator.
#[inline(never)]
fn facade_sequence(
    h: &mut Harness<Serial>,
    boot: &BootInfo,
    e820: &[E820Entry],
    exclude: &[PhysRange],
    pool: PhysRange,
) {
    let reserved = [exclude[0], exclude[1], exclude[2], exclude[3], pool];
    let nr_cpus = match &boot.cpus {
        // CPU ids are APIC ids: enough ids for the highest.
        Ok(cpus) => cpus
            .apic_ids()
            .iter()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(1)
            .clamp(1, smp::MAX_CPUS),
        Err(_) => 1,
    };
    let (defer, completion) = deferred::plan(h, boot.cmdline);
    let mut booted = None;
    h.run("mm_boots_from_the_firmware_map", || {
        let booted_mm = facade::boot(Cpus::new(nr_cpus), e820, &reserved, low_memory(), defer)
            .map_err(|e| Reason::new(format_args!("{e}")))?;
        booted = Some(booted_mm);
        Ok(())
    });
    let Some((mut mm, trampoline)) = booted else {
        h.skip("mm_*", "mmkit did not boot");
        return;
    };
    if defer.is_some() {
        deferred::check_after_boot(h, &mm);
    }
    mm_checks::run(h, &mut mm);

    let cpu = mmu::paging_features();
    let adopted = h.run("mmu_switches_to_the_mm_page_table", || {
        let (root, pcid) = facade::adopt_page_table(&mm, &boot.map, cpu)?;
        println!(
            "mmkit-qemu: CR3 now holds the facade's table {root:#x} with PCID {} ({})",
            pcid.map_or(0, |p| p.0),
            if pcid.is_some() {
                "tagged"
            } else {
                "PCIDs off"
            }
        );
        Ok(())
    });
    if adopted {
        h.run("mm_table_kernel_image_is_w_xor_x", || {
            let checked = mm.with_page_table(|pt| {
                mmu_checks::kernel_image_is_w_xor_x(
                    pt,
                    kernel_image(),
                    mmu::sections(),
                    &[crate::boot::boot_stack_guard()],
                )
            });
            checked.unwrap_or_else(|| fail!("no kernel page table"))
        });
        h.run("mm_frees_the_interim_table_pool", || {
            // SAFETY: CR3 now holds the facade's table, whose frames come from the buddy; the
            // interim tables built in `pool` are no longer walked or written, and nothing
            // else lives in the pool.
            unsafe { mm_checks::frees_reserved_pool(&mut mm, pool) }
        });
        h.run("mm_table_null_page_is_unmapped", null_page_is_unmapped);
        h.run(
            "mm_table_boot_stack_guard_page_faults",
            boot_stack_guard_page_faults,
        );
        h.run("mm_table_write_to_kernel_rodata_faults", || {
            write_faults(core::ptr::addr_of!(traps::RET_IN_RODATA) as u64, "rodata")
        });
        h.run("mm_table_write_to_kernel_text_faults", || {
            write_faults(traps::call_rodata_nofault as *const () as u64, "text")
        });
        h.run("mm_table_executing_rodata_faults", executing_rodata_faults);
        let mut tlb = facade::tlb();
        h.run("vmalloc_through_the_live_table", || {
            mm_checks::vmalloc_through_live_tables(&mut mm, &mut tlb, &facade::probe)
        });
        deferred::movable_check(h, &mut mm, completion, |mm| {
            mm_checks::movable_pages_compact(mm, &facade::MOVER_TLB, &mut tlb)
        });
        if let Some(Ok(r)) = mm.with_page_table(|pt| pt.verify()) {
            println!(
                "mmkit-qemu: mm page table: {} tables, {} leaves, {} MiB mapped; table frames from the buddy",
                r.tables,
                r.leaves,
                r.mapped_bytes >> 20
            );
        }
    } else {
        h.skip("mm_table_*", "the switch to the mm page table failed");
    }
    match facade::install_global(mm) {
        Ok(mm) => {
            h.run("collections_on_the_global_allocator", || {
                facade::collections_on_global(mm)
            });
            println!("mmkit-qemu: after the collections:\n{}", mm.meminfo());
            if adopted {
                smp_sequence(h, mm, boot, trampoline, nr_cpus);
            } else {
                h.skip("smp_*", "the APs need the mm page table");
            }
        }
        Err(e) => {
            h.run("collections_on_the_global_allocator", || Err(e));
        }
    }
}

/// kmalloc shrinks done under a fast timer (`smp_atomic_allocations_during_shrink`).
const SHRINK_ROUNDS: u32 = 2_000;

/// Operations each CPU's stress worker does.
const STRESS_OPS: u64 = 4_000;

/// The SMP part (issue 13): start the other CPUs, give the trampoline back, timers on every
/// CPU (allocating in their handlers), cross-CPU calls, the shootdown check, and the stress
/// test with its before/after figures and `verify`.
#[inline(never)]
fn smp_sequence(
    h: &mut Harness<Serial>,
    mm: &'static KernelMm,
    boot: &BootInfo,
    trampoline: Option<PhysAddr>,
    nr_cpus: usize,
) {
    match &boot.cpus {
        Ok(cpus) => println!(
            "mmkit-qemu: ACPI MADT: APIC ids {:?}; {nr_cpus} CPU id(s), boot CPU APIC id {}",
            cpus.apic_ids(),
            smp::this_cpu()
        ),
        Err(e) => println!("mmkit-qemu: {e}: running on the boot CPU only"),
    }
    // The boot CPU's timer first: its handler allocates from here on, the other CPUs' as
    // soon as they are online.
    smp::start_boot_cpu_timer();
    smp::set_timer_allocations(true);
    h.run("smp_atomic_allocations_during_shrink", || {
        apic::set_fast_timer(true);
        let boot_cpu = smp::local_of(smp::this_cpu());
        let ticks = || boot_cpu.map_or(0, |l| l.stats.snapshot().ticks);
        let taken = stress::shrink_under_interrupts(mm, SHRINK_ROUNDS, ticks);
        apic::set_fast_timer(false);
        let taken = taken?;
        println!(
            "mmkit-qemu: {SHRINK_ROUNDS} kmalloc shrinks with {taken} timer interrupts meanwhile"
        );
        Ok(())
    });
    // The CPUs to start: the MADT's APIC ids (just the boot CPU without a MADT).
    let mut ids = [0usize; smp::MAX_CPUS];
    let mut nr_ids = 0;
    match &boot.cpus {
        Ok(cpus) => {
            for &id in cpus
                .apic_ids()
                .iter()
                .filter(|&&id| (id as usize) < nr_cpus)
            {
                ids[nr_ids] = id as usize;
                nr_ids += 1;
            }
        }
        Err(_) => {
            ids[0] = smp::this_cpu();
            nr_ids = 1;
        }
    }
    let ids = &ids[..nr_ids];
    let started = h.run("smp_brings_up_every_cpu", || {
        let Some(page) = trampoline else {
            fail!("bootmem gave no trampoline page below 1 MiB");
        };
        let online = smp::start_aps(mm, page, ids)?;
        ensure!(
            online == ids.len(),
            "{online} of {} CPUs came online",
            ids.len()
        );
        Ok(())
    });
    if let Some(page) = trampoline {
        h.run("smp_trampoline_goes_back_to_the_buddy", || {
            let range = smp::trampoline_range(page);
            // SAFETY: every AP has left the trampoline (it is online and runs kernel code on
            // the facade's table) or never will (the start-up IPIs were sent once, before
            // the wait ended); nothing else uses the page.
            let freed = unsafe { mm.free_reserved_range(range) }
                .map_err(|e| Reason::new(format_args!("{e}")))?;
            ensure!(
                freed == 1,
                "freed {freed} frames of the trampoline page {range}"
            );
            Ok(())
        });
    }
    if !started {
        h.skip("smp_*", "not every CPU came up");
        return;
    }
    h.run("smp_run_on_cpu_reaches_every_cpu", || {
        for &cpu in ids {
            let seen = core::sync::atomic::AtomicUsize::new(usize::MAX);
            let apic_id = core::sync::atomic::AtomicUsize::new(usize::MAX);
            let reached = mm.platform().run_on_cpu(cpu, &|| {
                seen.store(smp::this_cpu(), core::sync::atomic::Ordering::SeqCst);
                apic_id.store(apic::id(), core::sync::atomic::Ordering::SeqCst);
            });
            let (seen, apic_id) = (seen.into_inner(), apic_id.into_inner());
            ensure!(reached, "CPU {cpu} not reached");
            ensure!(
                seen == cpu && apic_id == cpu,
                "the call for CPU {cpu} ran on CPU {seen} (APIC id {apic_id})"
            );
        }
        Ok(())
    });
    h.run("smp_every_cpu_runs_the_tagged_root", || {
        let cr3 = mmu::current_cr3();
        let pcids = mmu::pcids_enabled();
        for &cpu in ids {
            let seen = core::sync::atomic::AtomicU64::new(u64::MAX);
            let pcide = core::sync::atomic::AtomicBool::new(false);
            let reached = mm.platform().run_on_cpu(cpu, &|| {
                seen.store(mmu::current_cr3(), core::sync::atomic::Ordering::SeqCst);
                pcide.store(mmu::pcids_enabled(), core::sync::atomic::Ordering::SeqCst);
            });
            ensure!(reached, "CPU {cpu} not reached");
            let (seen, pcide) = (seen.into_inner(), pcide.into_inner());
            ensure!(
                seen == cr3 && pcide == pcids,
                "CPU {cpu}: CR3 {seen:#x}, CR4.PCIDE {pcide}; the boot CPU has CR3 {cr3:#x}, PCIDE {pcids}"
            );
        }
        println!(
            "mmkit-qemu: all {} CPUs run root {:#x} with PCID {} (CR4.PCIDE {pcids})",
            ids.len(),
            cr3 & !0xfff,
            cr3 & 0xfff
        );
        ensure!(
            pcids == mmu::paging_features().pcids(),
            "CR4.PCIDE {pcids}, but the CPU has PCID and INVPCID: {}",
            mmu::paging_features().pcids()
        );
        Ok(())
    });
    deferred::smp_check(h, mm, &smp::Kernel, &mut Serial);
    let shootdown_ok = if ids.len() > 1 {
        h.run("smp_tlb_shootdown_reaches_other_cpus", || {
            let other = ids
                .iter()
                .copied()
                .find(|&c| c != smp::this_cpu())
                .unwrap_or(0);
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
    h.run("smp_no_refused_call_or_failed_shootdown", || {
        let (refused, shootdowns) = smp::failures();
        ensure!(
            refused == 0 && shootdowns == 0,
            "{refused} cross-CPU calls refused, {shootdowns} shootdowns failed"
        );
        let failed = total.timer_failures;
        ensure!(
            failed == 0,
            "{failed} GFP_ATOMIC allocations in timer handlers failed"
        );
        Ok(())
    });
}

/// Fail on purpose if the command line asks for it (`mmkit.inject=`), so the boot script can
/// prove each failure path is caught: a failing check, a panic, an unexpected page fault. (A
/// skipped shootdown was injected before the SMP checks, which must fail by themselves.)
fn inject_failure(h: &mut Harness<Serial>, injection: Result<Option<Injection>, &str>) {
    match injection {
        Ok(None) | Ok(Some(Injection::Shootdown)) => {}
        Ok(Some(Injection::Check)) => {
            h.run("injected_failure", || {
                fail!("injected by {}=check", checks::INJECT_PARAM)
            });
        }
        Ok(Some(Injection::Panic)) => panic!("injected by {}=panic", checks::INJECT_PARAM),
        Ok(Some(Injection::Fault)) => {
            let unmapped = (IDENTITY_LIMIT + PAGE_SIZE) as *const u64;
            // SAFETY: deliberately faulting: the address is unmapped, so the read traps to a
            // handler that reports it and ends the run; nothing is read.
            let value = unsafe { unmapped.read_volatile() };
            panic!("read of unmapped {unmapped:p} returned {value:#x}");
        }
        Err(value) => {
            h.run("injected_failure", || {
                fail!("unknown {}={value}", checks::INJECT_PARAM)
            });
        }
    }
}

fn breakpoint_trap_returns() -> CheckResult {
    let before = traps::breakpoints();
    traps::breakpoint();
    traps::breakpoint();
    let seen = traps::breakpoints() - before;
    ensure!(seen == 2, "handler saw {seen} of 2 breakpoints");
    Ok(())
}

fn write_to_read_only_block_faults(map: &MemoryMap, exclude: &[PhysRange]) -> CheckResult {
    let Some(block) = map.find_free_top_down(BLOCK_SIZE, BLOCK_SIZE, IDENTITY_LIMIT, exclude)
    else {
        fail!("no free 2 MiB RAM block below {IDENTITY_LIMIT:#x}");
    };
    let target = block.start().as_u64() + 0x1234;
    // SAFETY: the block is free RAM this check owns (see the module docs); so are the writes
    // and reads of the probes below.
    let before = unsafe { traps::write_u8_nofault(target, 0xa5) };
    ensure!(before.is_ok(), "writable block faulted: {before:?}");

    // SAFETY: only the probe below writes the block while it is read-only.
    if let Err(e) = unsafe { paging::set_block_writable(block.start(), false) } {
        fail!("cannot make {block} read-only: {e:?}");
    }
    // SAFETY: the check owns the block; the write is expected to fault.
    let denied = unsafe { traps::write_u8_nofault(target, 0x5a) };
    // SAFETY: making it writable again has no precondition.
    let restored = unsafe { paging::set_block_writable(block.start(), true) };
    ensure!(restored.is_ok(), "cannot restore {block}: {restored:?}");

    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: PF_PRESENT | PF_WRITE,
        address: target,
    };
    ensure!(
        denied == Err(expected),
        "write to read-only {target:#x} gave {denied:?}, expected {expected:?}"
    );
    // SAFETY: the check owns the block, which is plain RAM.
    let value =
        unsafe { traps::read_u64_nofault(target & !7) }.map(|w| (w >> ((target & 7) * 8)) as u8);
    ensure!(value == Ok(0xa5), "read-only byte changed to {value:?}");
    // SAFETY: the check owns the block.
    let after = unsafe { traps::write_u8_nofault(target, 0x5a) };
    ensure!(
        after.is_ok(),
        "block still faults after restoring write access: {after:?}"
    );
    Ok(())
}

fn read_of_unmapped_address_faults() -> CheckResult {
    // The boot map ends at 4 GiB: the next page has no PDPT entry.
    let target = PhysAddr::new(IDENTITY_LIMIT + PAGE_SIZE).as_u64();
    // SAFETY: `target` is not mapped, so the read faults instead of touching anything.
    let got = unsafe { traps::read_u64_nofault(target) };
    let expected = Fault {
        vector: VECTOR_PAGE_FAULT,
        error_code: 0,
        address: target,
    };
    ensure!(
        got == Err(expected),
        "read of unmapped {target:#x} gave {got:?}, expected {expected:?}"
    );
    Ok(())
}
