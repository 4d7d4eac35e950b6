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

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange, PAGE_SIZE};
use mmkit_bootmem::{firmware::fdt, Bootmem};
use mmkit_qemu_common::bootmem_checks;
use mmkit_qemu_common::checks::{self, Injection};
use mmkit_qemu_common::harness::{CheckResult, Harness, Outcome, Reason};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::{ensure, fail, rawmem};

use crate::exceptions::{self, DFSC_SYNC_EXTERNAL_ABORT, EC_DATA_ABORT_SAME_EL, ESR_FNV};
use crate::memmap::{kernel_image, BootInfo};
use crate::platform::{interrupts_enabled, Bsp, Serial, IDENTITY, IDENTITY_LIMIT};
use crate::println;

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
        checks::irq_guard_nests(&Bsp, interrupts_enabled)
    });
    h.run("identity_mapper_translates", || {
        checks::mapper_translates(&IDENTITY, 0, IDENTITY_LIMIT, kernel)
    });
    h.run("far_ram_page_write_read", || {
        far_ram_page_write_read(map, kernel, &exclude)
    });
    h.run("brk_trap_returns", brk_trap_returns);
    h.run("read_of_unbacked_address_aborts", || {
        read_of_unbacked_address_aborts(map)
    });
    // Last: the platform checks above used free memory that bootmem is about to manage.
    bootmem_sequence(&mut h, boot, &exclude);
    inject_failure(&mut h, cmdline, map);
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

fn far_ram_page_write_read(
    map: &MemoryMap,
    kernel: PhysRange,
    exclude: &[PhysRange],
) -> CheckResult {
    let Some(page) = map.find_free_top_down(PAGE_SIZE, PAGE_SIZE, IDENTITY_LIMIT, exclude) else {
        fail!("no free RAM page");
    };
    ensure!(
        page.start().as_u64() >= kernel.end().as_u64() + FAR_FROM_KERNEL,
        "highest free page {page} is within {FAR_FROM_KERNEL:#x} of the kernel"
    );
    let Some(ptr) = IDENTITY.phys_to_virt(page) else {
        fail!("{page} not reachable");
    };
    // SAFETY: `page` is RAM, not reserved, clear of the kernel and the device tree, and
    // nothing else allocates memory yet, so this check owns it; with the MMU off it is
    // accessible at `ptr` (page-aligned).
    unsafe { rawmem::write_read_pattern(ptr, (PAGE_SIZE / 8) as usize, page.start().as_u64()) }
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
fn bootmem_sequence(h: &mut Harness<Serial>, boot: &BootInfo, reserved: &[PhysRange]) {
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
    let outcome = bootmem_checks::run(h, &boot.map, reserved, ingest, prepare, 0);
    if let Some(summary) = outcome.summary {
        println!("mmkit-qemu: bootmem hand-off: {summary}");
    }
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
