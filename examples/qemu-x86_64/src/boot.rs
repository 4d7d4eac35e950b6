//! From QEMU's PVH entry to Rust: the ELF note, 32-bit entry, long-mode switch.
//!
//! QEMU's `-kernel` loader looks for a `XEN_ELFNOTE_PHYS32_ENTRY` note in an ELF kernel and,
//! when it finds one, boots it the PVH way: the loadable segments are copied to their physical
//! addresses and the CPU starts at the note's address in 32-bit protected mode, paging off,
//! flat segments, interrupts off, with `%ebx` = physical address of the `hvm_start_info`.
//!
//! `pvh_start32` then:
//! 1. zeroes `.bss` (which holds the boot stack and page tables, so nothing touches either
//!    before this);
//! 2. checks CPUID for long mode (exits QEMU with the failure code if absent) and NX;
//! 3. builds an identity map of the first 4 GiB with 2 MiB pages: one PML4 entry, four PDPT
//!    entries, four page directories of 512 entries (`boot_pml4`, `boot_pdpt`, `boot_pd`) —
//!    it covers all RAM QEMU gives a `-m` up to ~3 GiB and the MMIO hole below 4 GiB;
//! 4. enables PAE, sets EFER.LME (and EFER.NXE when the CPU has NX), turns on paging with
//!    CR0.WP (so supervisor writes honour read-only pages, which the self-tests rely on);
//! 5. loads a three-entry GDT and far-jumps to 64-bit code, which loads data segments, sets
//!    the stack and calls `kmain(start_info_paddr)`. The descriptors carry the "accessed"
//!    bit already, so the CPU never writes the GDT, which can then live in read-only data.
//!
//! The identity map is the "early" map. [`crate::paging`] edits it for one self-test; then
//! the kernel replaces it with its own tables built with mmkit-pgtable ([`crate::mmu`]) and,
//! later, with the facade's table.

use mmkit_qemu_common::bootstack::{self, BootStack};
use mmkit_qemu_common::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

use crate::platform::ExitCode;

/// Size of the boot stack in bytes. The `boot_stack_has_headroom` check measures the deepest
/// use (about 300 KiB on x86_64): `BuddyAllocator::new` alone takes over 100 KiB, building
/// its ~45 KiB value on the stack and moving it, and bootmem and its hand-off are ~6 KiB each.
pub const BOOT_STACK_SIZE: usize = 512 * 1024;

/// The GDT's 64-bit kernel code selector (used by the IDT gates too).
pub const KERNEL_CS: u16 = 0x08;

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: a 64-bit address (QEMU reads 8 bytes for ELF64) */
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4, boot_pdpt, boot_pd
boot_pml4:  .space 4096
boot_pdpt:  .space 4096
boot_pd:    .space 4 * 4096
    .balign 4096                    /* the lowest page becomes the guard page */
    .global boot_stack, boot_stack_top
boot_stack: .space {stack_size}
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0                     /* null */
    .quad 0x00209b0000000000    /* 0x08: 64-bit code, present, ring 0, accessed */
    .quad 0x0000930000000000    /* 0x10: data, present, writable, accessed */
boot_gdt_end:
    .balign 8
    .global boot_gdt_ptr
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info, kept in %esi until kmain */

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 9f
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx                /* long mode */
    jnc 9f
    mov %edx, %ebp              /* keep the NX bit (20) for below */

    mov $boot_pdpt, %eax
    or $0x3, %eax               /* present | writable */
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b
    mov $0x83, %eax             /* present | writable | 2 MiB page, address 0 */
    mov $boot_pd, %edi
    mov $2048, %ecx
2:  mov %eax, (%edi)            /* high dword stays 0 (zeroed .bss) */
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax          /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    or $(1 << 8), %eax          /* LME */
    bt $20, %ebp
    jnc 3f
    or $(1 << 11), %eax         /* NXE */
3:  wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp ${kernel_cs}, $4f

9:  mov ${fail}, %eax           /* no long mode: leave QEMU with the failure code */
    mov $0xf4, %dx
    out %eax, %dx
8:  hlt
    jmp 8b

    .code64
4:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    lea boot_stack_top(%rip), %rsp
    mov %esi, %edi              /* zero-extends: kmain's first argument */
    xor %ebp, %ebp
    call {kmain}
5:  hlt
    jmp 5b
    "#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    stack_size = const BOOT_STACK_SIZE,
    kernel_cs = const KERNEL_CS,
    fail = const ExitCode::Failure as u32,
    kmain = sym crate::kmain,
    options(att_syntax)
);

extern "C" {
    /// The lowest byte of the boot stack (assembly above).
    static boot_stack: u8;
}

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reading the stack pointer has no side effect.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
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
