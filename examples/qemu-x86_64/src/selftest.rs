//! The x86_64 kernel's self-tests.
//!
//! Shared checks (memory map, RAM size, IRQ guard, direct-map hook) come from
//! [`mmkit_qemu_common::checks`]; the ones here need the hardware: touching RAM far from the
//! kernel, a breakpoint trap, and page faults provoked on purpose through the exception table.
//! Memory used by a check is chosen with [`MemoryMap::find_free_top_down`] clear of the kernel
//! image and the boot data; nothing else allocates yet, so such memory is the check's own.

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange, PAGE_SIZE};
use mmkit_bootmem::firmware::e820::{self, E820Entry, E820Type};
use mmkit_bootmem::Bootmem;
use mmkit_qemu_common::bootmem_checks;
use mmkit_qemu_common::checks::Injection;
use mmkit_qemu_common::harness::{CheckResult, Harness, Outcome, Reason};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::{checks, ensure, fail, rawmem};

use crate::memmap::{kernel_image, BootInfo};
use crate::paging::{self, BLOCK_SIZE};
use crate::platform::{interrupts_enabled, Bsp, Serial, IDENTITY, IDENTITY_LIMIT};
use crate::println;
use crate::traps::{self, Fault, PF_PRESENT, PF_WRITE, VECTOR_PAGE_FAULT};

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
        checks::irq_guard_nests(&Bsp, interrupts_enabled)
    });
    h.run("identity_mapper_translates", || {
        checks::mapper_translates(&IDENTITY, 0, IDENTITY_LIMIT, kernel)
    });
    h.run("far_ram_page_write_read", || {
        far_ram_page_write_read(map, kernel, &exclude)
    });
    h.run("breakpoint_trap_returns", breakpoint_trap_returns);
    h.run("write_to_read_only_block_faults", || {
        write_to_read_only_block_faults(map, &exclude)
    });
    h.run(
        "read_of_unmapped_address_faults",
        read_of_unmapped_address_faults,
    );
    // Last: the platform checks above used free memory that bootmem is about to manage.
    bootmem_sequence(&mut h, boot, &exclude);
    inject_failure(&mut h, boot.cmdline);
    h.finish()
}

/// mmkit-bootmem on the real firmware map: the PVH table goes through bootmem's e820
/// ingestion, the kernel, boot data and low 1 MiB are reserved, and allocations stay below
/// the 4 GiB the boot identity map reaches (memblock's "current limit").
fn bootmem_sequence(h: &mut Harness<Serial>, boot: &BootInfo, exclude: &[PhysRange]) {
    let low = PhysRange::from_start_size(PhysAddr::ZERO, LOW_MEMORY).unwrap_or(PhysRange::EMPTY);
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
    if let Some(summary) =
        bootmem_checks::run(h, map, &reserved[..exclude.len() + 1], ingest, prepare)
    {
        println!("mmkit-qemu: bootmem hand-off: {summary}");
    }
}

/// Fail on purpose if the command line asks for it (`mmkit.inject=`), so the boot script can
/// prove each failure path is caught: a failing check, a panic, an unexpected page fault.
fn inject_failure(h: &mut Harness<Serial>, cmdline: &str) {
    match checks::injection(cmdline) {
        Ok(None) => {}
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

fn far_ram_page_write_read(
    map: &MemoryMap,
    kernel: PhysRange,
    exclude: &[PhysRange],
) -> CheckResult {
    let Some(page) = map.find_free_top_down(PAGE_SIZE, PAGE_SIZE, IDENTITY_LIMIT, exclude) else {
        fail!("no free RAM page below {IDENTITY_LIMIT:#x}");
    };
    ensure!(
        page.start().as_u64() >= kernel.end().as_u64() + FAR_FROM_KERNEL,
        "highest free page {page} is within {FAR_FROM_KERNEL:#x} of the kernel"
    );
    let Some(ptr) = IDENTITY.phys_to_virt(page) else {
        fail!("{page} not reachable through the identity map");
    };
    // SAFETY: `page` is RAM, not reserved, clear of the kernel and boot data, and nothing else
    // allocates memory yet, so this check owns it; the identity map makes it writable at `ptr`
    // (page-aligned).
    unsafe { rawmem::write_read_pattern(ptr, (PAGE_SIZE / 8) as usize, page.start().as_u64()) }
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
