//! From QEMU's ELF entry to Rust on the `virt` machine.
//!
//! For an ELF `-kernel` (not a Linux `Image`), QEMU copies the segments to their physical
//! addresses and starts the boot CPU at the ELF entry with the MMU off. It does *not* run its
//! Linux boot stub, so `x0` is not promised to hold the device tree: the tree is placed at the
//! start of RAM (0x4000_0000) because the kernel is linked above it. The entry code keeps `x0`
//! anyway and `kmain` uses it if it points at a valid tree, else the start of RAM.
//!
//! The CPU arrives at EL1 by default, or at EL2 with `-machine virt,virtualization=on`. At EL2
//! `_start` makes EL1 AArch64 (`HCR_EL2.RW`), lets EL1 use the physical counter/timer, gives
//! `SCTLR_EL1` its architectural reset value (MMU and caches off), and `eret`s to EL1h with
//! every exception masked. EL3 and EL0 entries are refused (the CPU parks in `wfe`).
//!
//! At EL1 it then: enables FP/SIMD (`CPACR_EL1.FPEN`; the target's code generation uses NEON
//! registers), zeroes `.bss` (which holds the boot stack), sets `SP_EL1`, installs the vector
//! table ([`crate::exceptions`]) in `VBAR_EL1`, and calls `kmain(x0 at entry, entry EL)`.

use mmkit_qemu_common::bootstack::{self, BootStack};

/// Size of the boot stack in bytes. The `boot_stack_has_headroom` check measures the deepest
/// use (about 300 KiB on x86_64): `BuddyAllocator::new` alone takes over 100 KiB, building
/// its ~45 KiB value on the stack and moving it, and bootmem and its hand-off are ~6 KiB each.
pub const BOOT_STACK_SIZE: usize = 512 * 1024;

core::arch::global_asm!(
    r#"
    .section .bss.boot, "aw", @nobits
    .balign 4096                    /* the lowest page becomes the guard page */
    .global boot_stack, boot_stack_top
boot_stack: .space {stack_size}
boot_stack_top:

    .section .text.boot, "ax"
    .global _start
_start:
    mov x19, x0                     /* maybe the device tree */
    mrs x20, CurrentEL
    ubfx x20, x20, #2, #2           /* entry exception level */
    cmp x20, #1
    b.eq 3f
    cmp x20, #2
    b.ne 9f

    /* EL2: run the kernel at EL1. */
    mov x0, #(1 << 31)              /* HCR_EL2.RW: EL1 is AArch64; nothing trapped to EL2 */
    msr hcr_el2, x0
    mov x0, #3                      /* CNTHCTL_EL2.EL1PCTEN | EL1PCEN */
    msr cnthctl_el2, x0
    msr cntvoff_el2, xzr
    movz x0, #0x0800
    movk x0, #0x30d0, lsl #16       /* SCTLR_EL1 RES1 bits only: MMU, caches, alignment off */
    msr sctlr_el1, x0
    mov x0, #0x3c5                  /* SPSR: EL1h, D, A, I, F masked */
    msr spsr_el2, x0
    adr x0, 3f
    msr elr_el2, x0
    eret

3:  /* EL1 */
    mov x0, #(3 << 20)              /* CPACR_EL1.FPEN: FP/SIMD not trapped */
    msr cpacr_el1, x0
    isb
    adrp x0, __bss_start
    add x0, x0, :lo12:__bss_start
    adrp x1, __bss_end
    add x1, x1, :lo12:__bss_end
4:  cmp x0, x1
    b.hs 5f
    stp xzr, xzr, [x0], #16         /* both symbols are 16-byte aligned (linker script) */
    b 4b
5:  adrp x0, boot_stack_top
    add x0, x0, :lo12:boot_stack_top
    mov sp, x0
    adrp x0, exception_vectors
    add x0, x0, :lo12:exception_vectors
    msr vbar_el1, x0
    isb
    mov x0, x19
    mov x1, x20
    bl {kmain}

9:  wfe
    b 9b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    kmain = sym crate::kmain,
);

extern "C" {
    /// The lowest byte of the boot stack (assembly above).
    static boot_stack: u8;
}

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reading the stack pointer has no side effect.
    unsafe {
        core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

fn stack() -> BootStack {
    // SAFETY: `boot_stack` is the page-aligned `BOOT_STACK_SIZE`-byte stack of the assembly
    // above, identity-placed at its link address; the kernel's tables map all of it but the
    // lowest page.
    unsafe { BootStack::new(core::ptr::addr_of!(boot_stack) as usize, BOOT_STACK_SIZE) }
}

/// The lowest page of the boot stack, which the kernel's own page tables leave unmapped so
/// that running off the stack faults instead of overwriting what lies below it.
pub fn boot_stack_guard() -> mmkit_addr::PhysRange {
    stack().guard()
}

/// The usable boot stack: everything above the guard page.
pub const USABLE_STACK_SIZE: usize = BOOT_STACK_SIZE - bootstack::GUARD_SIZE;

/// Fill the unused part of the boot stack (above the guard page) with a known word, so
/// [`boot_stack_used`] can later find how deep the stack went. Call once, early in `kmain`.
pub fn paint_boot_stack() {
    stack().paint(stack_pointer());
}

/// The deepest the boot stack has been since [`paint_boot_stack`], in bytes of the
/// [`USABLE_STACK_SIZE`].
pub fn boot_stack_used() -> u64 {
    stack().used()
}
