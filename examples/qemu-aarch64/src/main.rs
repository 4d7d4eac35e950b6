//! # mmkit's aarch64 QEMU kernel
//!
//! A bare-metal kernel for QEMU's `virt` machine (`-kernel` with an ELF image) that reads the
//! machine's real memory map from the device tree and runs self-tests of the platform pieces
//! mmkit relies on, reporting on the PL011 UART and leaving QEMU with a status the boot
//! script (`scripts/qemu-test.sh`) checks.
//!
//! Modules, in boot order:
//! * [`boot`]: entry, EL2→EL1 drop, FP/SIMD enable, `.bss`, stack, vector table base;
//! * [`exceptions`]: the vector table, exception handler, exception table and probes;
//! * [`platform`]: serial console, QEMU exit (PSCI, semihosting), the mmkit platform hooks
//!   (CPU, IRQ via DAIF, phys→virt);
//! * [`memmap`]: the device tree turned into a memory map, and the kernel's own footprint;
//! * [`mmu`]: the kernel's own tables built with mmkit-pgtable (identity with a W^X image,
//!   direct map) and turning the MMU on with them;
//! * [`gic`]: the GICv2 and the virtual timer;
//! * [`smp`]: per-CPU areas, secondaries through PSCI, interrupts, cross-CPU calls;
//! * [`facade`]: mmkit brought up through its facade (`MmBuilder` on the device tree), and
//!   TTBR1 switched to the facade's page table, on which vmalloc maps;
//! * [`selftest`]: the checks.
//!
//! Raw hardware access (asm, MMIO, system registers) stays in `boot`, `exceptions` and
//! `platform`; every `unsafe` block says why it is sound.
#![no_std]
#![no_main]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod boot;
mod exceptions;
mod facade;
mod gic;
mod memmap;
mod mmu;
mod platform;
mod selftest;
mod smp;

use core::panic::PanicInfo;

use platform::{exit, ExitCode};

/// The Rust entry point, called by `boot.rs` at EL1 on the boot stack with `x0` as QEMU left
/// it and the exception level the CPU entered at.
pub extern "C" fn kmain(x0: u64, entry_el: u64) -> ! {
    let boot_cpu = smp::init_boot_cpu();
    boot::paint_boot_stack();
    println!();
    println!("mmkit-qemu: aarch64 kernel entered at EL{entry_el}, now at EL1, x0 = {x0:#x}");
    if boot_cpu.is_none() {
        println!("mmkit-qemu: the boot CPU's MPIDR gives no CPU id");
        exit(ExitCode::Failure);
    }
    // SAFETY: `boot.rs` installed the vector table; no interrupt controller is programmed.
    unsafe { platform::enable_interrupts() };

    let boot = match memmap::read_boot_info(x0) {
        Ok(boot) => boot,
        Err(e) => {
            println!("mmkit-qemu: cannot use the device tree: {e}");
            exit(ExitCode::Failure);
        }
    };
    if let Some(conduit) = boot.facts.psci {
        platform::set_psci_conduit(conduit);
    }
    println!(
        "mmkit-qemu: device tree {} ({:?}), PSCI via {:?}",
        boot.dtb, boot.dtb_source, boot.facts.psci
    );
    println!(
        "mmkit-qemu: command line: {:?}",
        boot.facts.bootargs.unwrap_or("")
    );
    println!("mmkit-qemu: firmware memory map (device tree):");
    print!("{}", boot.map);
    println!("mmkit-qemu: kernel image {}", memmap::kernel_image());

    let outcome = selftest::run(&boot);
    exit(if outcome.passed() {
        ExitCode::Success
    } else {
        ExitCode::Failure
    });
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!();
    println!("mmkit-qemu: panic: {info}");
    exit(ExitCode::Failure)
}
