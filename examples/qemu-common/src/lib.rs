//! # mmkit-qemu-common: what mmkit's two QEMU kernels share
//!
//! The kernels in `examples/qemu-x86_64` and `examples/qemu-aarch64` differ in how they boot,
//! talk to the serial port and take exceptions; everything else they do is ordinary logic, and
//! it lives here so that it runs — and is tested — on the host too:
//!
//! * [`acpi`]: an x86 machine's CPUs (APIC ids) from the ACPI MADT, reached from the RSDP;
//! * [`bootmem_checks`]: the kernels as users of mmkit-bootmem: ingest, reserve, allocate,
//!   zero, double free, hand-off checked against a page-by-page model;
//! * [`bootstack`]: the boot stack's guard page and stack painting;
//! * [`mm_checks`]: the kernels as users of the facade: kmalloc, caches, pages and `verify`
//!   on a booted `mmkit::Mm`, and vmalloc through the kernel's live page table;
//! * [`mmu_checks`]: checks of the kernels' own page tables through `translate`, and of the
//!   direct map aliasing the identity map;
//! * [`checks`]: the checks both kernels run identically (memory map, RAM size, IRQ guard,
//!   direct-map hook);
//! * [`harness`]: named self-test checks printing `ok` / `FAILED` lines and one summary line
//!   that the boot script looks for;
//! * [`memmap`]: the firmware memory map as a fixed-capacity list of typed physical ranges
//!   (RAM, reserved, ACPI, ...), with sorting, totals, sanity checks and a small top-down
//!   search for free memory that is neither reserved nor excluded;
//! * [`pvh`]: the x86 PVH boot ABI (`struct hvm_start_info` and its e820-style memory map);
//! * [`dtb`] (feature `fdt`): `/memory`, `/reserved-memory`, `/memreserve/`, `/chosen` and
//!   `/psci` from a flattened device tree;
//! * [`deferred`]: deferred memmap initialisation: the boot-time share from the command line,
//!   the check after boot, and completion on every online CPU at once;
//! * [`cmdline`]: `key=value` parameters and `memparse`-style sizes (`512M`) from the kernel
//!   command line QEMU passes with `-append`;
//! * [`frames`]: page-table frames for mmkit-pgtable from memory bootmem kept for the kernel,
//!   and a mapper that reaches exactly that memory;
//! * [`extable`]: the exception fixup table (Linux's `__ex_table`): instructions allowed to
//!   fault, each with the address to resume at, so a kernel can *expect* a fault in a test;
//! * [`smp`]: the arch-neutral half of SMP: per-CPU counters, cross-CPU call slots, jobs for
//!   every CPU, the gate for allocating timer handlers;
//! * [`stress`]: the cross-CPU stress self-test (per-CPU workers, remote frees through a
//!   shared ring, quiesce, before/after figures);
//! * [`wx`]: the kernel image made W^X in one pass of mmkit-pgtable's mutating cursor;
//! * [`rawmem`]: every raw-memory access (pattern write and verify, zero, zero test, stack
//!   paint, uninitialised slices), each an `unsafe fn` with its contract.
//!
//! Nothing here touches hardware registers and nothing needs a heap: every structure has a
//! fixed capacity and every fallible operation returns a specific error.
//!
//! ## Unsafe code
//! Raw memory is touched only in [`rawmem`]. The modules that call it on memory a kernel
//! vouches for (`bootmem_checks`, `mm_checks`, `mmu_checks`) and the one implementing
//! mmkit's unsafe traits (`frames`: `FrameSource` / `PhysMapper`) allow `unsafe_code` with a
//! `// SAFETY:` argument at every use; everything else denies it. (The buddy and the slab
//! are checked through the facade, which implements the slab's `PageSource` itself.)
#![cfg_attr(not(test), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]
// See "Unsafe code" above: allowed module by module.
#![deny(unsafe_code)]

pub mod acpi;
// Calls `rawmem`'s unsafe functions on memory bootmem hands out.
#[allow(unsafe_code)]
pub mod bootmem_checks;
// Paints and measures the boot stack through `rawmem`.
#[allow(unsafe_code)]
pub mod bootstack;
pub mod checks;
pub mod cmdline;
// Reads the `Mm` its per-CPU job works on from a static pointer (as `stress` does).
#[allow(unsafe_code)]
pub mod deferred;
#[cfg(feature = "fdt")]
pub mod dtb;
pub mod extable;
// Implements the unsafe `FrameSource` / `PhysMapper` traits over kernel-owned memory.
#[allow(unsafe_code)]
pub mod frames;
pub mod harness;
pub mod memmap;
// Calls `rawmem`'s unsafe functions on memory a booted `Mm` hands out.
#[allow(unsafe_code)]
pub mod mm_checks;
// Writes patterns through `rawmem` into pages the caller vouches for.
#[allow(unsafe_code)]
pub mod mmu_checks;
pub mod pvh;
// Turns a cross-CPU call's published pointer back into the caller's closure, and a job's
// published pointer back into its `fn`.
#[allow(unsafe_code)]
pub mod smp;
// Writes and checks content patterns through `rawmem` in memory a booted `Mm` hands out.
#[allow(unsafe_code)]
pub mod rawmem;
#[allow(unsafe_code)]
pub mod stress;
pub mod wx;
