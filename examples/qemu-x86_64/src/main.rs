//! # mmkit's x86_64 QEMU kernel
//!
//! A bare-metal kernel that QEMU boots through PVH (`-kernel` with a Xen PHYS32 ELF note), that
//! reads the machine's real memory map from the PVH start info, and runs self-tests of the
//! platform pieces mmkit relies on, reporting on COM1 and leaving QEMU with a status the boot
//! script (`scripts/qemu-test.sh`) checks.
//!
//! Modules, in boot order:
//! * [`boot`]: the ELF note, 32-bit entry, identity map, long mode, stack, `.bss`;
//! * [`platform`]: serial console, QEMU exit, the mmkit platform hooks (CPU, IRQ, phys→virt);
//! * [`traps`]: IDT, exception handler, exception table and fault-tolerant probes;
//! * [`memmap`]: the PVH start info turned into a memory map, and the kernel's own footprint;
//! * [`paging`]: the boot page tables' one runtime edit (a read-only block for a test);
//! * [`mmu`]: the kernel's own tables built with mmkit-pgtable (identity, W^X image, direct
//!   map) and the switch to them;
//! * [`facade`]: mmkit brought up through its facade (`MmBuilder`), the switch to the
//!   facade's page table, vmalloc on it, and mmkit as the `#[global_allocator]`;
//! * [`selftest`]: the checks.
//!
//! Raw hardware access (asm, port I/O, page-table writes) stays in `boot`, `platform`, `traps`
//! and `paging`; every `unsafe` block says why it is sound.
#![no_std]
#![no_main]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

extern crate alloc;

mod apic;
mod boot;
mod facade;
mod memmap;
mod mmu;
mod paging;
mod platform;
mod selftest;
mod smp;
mod traps;

use core::panic::PanicInfo;

use platform::{exit, ExitCode};

/// The Rust entry point, called by `boot.rs` on the boot stack with the physical address of
/// QEMU's `hvm_start_info`.
pub extern "C" fn kmain(start_info: u64) -> ! {
    smp::init_boot_cpu();
    platform::serial_init();
    boot::paint_boot_stack();
    println!();
    println!("mmkit-qemu: x86_64 kernel entered through PVH, start info at {start_info:#x}");
    traps::init();
    platform::mask_legacy_pics();
    // SAFETY: the IDT is loaded and every legacy IRQ line is masked.
    unsafe { platform::enable_interrupts() };

    let boot = match memmap::read_boot_info(start_info) {
        Ok(boot) => boot,
        Err(e) => {
            println!("mmkit-qemu: cannot use the PVH start info: {e}");
            exit(ExitCode::Failure);
        }
    };
    println!("mmkit-qemu: command line: {:?}", boot.cmdline);
    println!("mmkit-qemu: firmware memory map (PVH/e820):");
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
