//! CPU exceptions: the IDT, the entry stubs, the handler, and fault-tolerant memory probes.
//!
//! All 32 exception vectors go through one assembly path: a per-vector stub pushes a dummy
//! error code where the CPU pushes none, then the vector number, and jumps to `trap_common`,
//! which saves the general registers into a [`TrapFrame`] on the current stack and calls
//! [`handle_trap`] with it. The handler may change `frame.rip`; `trap_common` restores the
//! registers and returns with `iretq`.
//!
//! The handler's policy, in order:
//! 1. `#BP` (vector 3, `int3`) is counted in [`breakpoints`] and execution continues after
//!    the `int3` (a trap: the CPU already advanced RIP).
//! 2. A fault at an instruction listed in the exception table (see
//!    [`mmkit_qemu_common::extable`]) is recorded (vector, error code, CR2) and execution
//!    resumes at the table's fixup address: this is how [`write_u8_nofault`] and
//!    [`read_u64_nofault`] report a fault instead of dying.
//! 3. Anything else is fatal: the vector, error code, RIP, CR2 and RSP are printed on the
//!    serial port and QEMU exits with the failure status.
//!
//! There is no IST stack: a kernel stack overflow would double-fault into a triple fault, which
//! QEMU (`-no-reboot`) turns into an exit with status 0 — the boot script treats that as
//! failure because it expects 33.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mmkit_qemu_common::extable::{self, ExEntry};

use crate::boot::KERNEL_CS;
use crate::platform::{exit, ExitCode};
use crate::println;

/// Number of exception vectors handled.
const VECTORS: usize = 32;
/// Entries in the IDT: every vector, so the APIC's (timer, call IPI, spurious) fit.
const IDT_ENTRIES: usize = 256;
/// The interrupt vectors with a stub (`crate::apic`'s), handled by `crate::smp::handle_irq`.
const IRQ_VECTORS: [u8; 3] = [0x40, 0x41, 0xff];

/// The registers saved on exception entry, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

// Vectors 8, 10-14, 17, 21, 29 and 30 push an error code (Intel SDM vol. 3, table 6-1); the
// others get a dummy 0 so every frame has the same layout.
global_asm!(
    r#"
    .macro TRAP_NO_ERROR n
    .balign 16
trap_stub_\n:
    push $0
    push $\n
    jmp trap_common
    .endm

    .macro TRAP_ERROR n
    .balign 16
trap_stub_\n:
    push $\n
    jmp trap_common
    .endm

    .section .text.traps, "ax"
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    TRAP_NO_ERROR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    TRAP_ERROR \n
    .endr
    .irp n, 64,65,255
    TRAP_NO_ERROR \n
    .endr

trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi              /* &mut TrapFrame; %rsp is 16-byte aligned here */
    cld
    call {handler}
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp               /* vector and error code */
    iretq

    .section .rodata.traps, "a"
    .balign 8
    .global trap_stubs
trap_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_stub_\n
    .endr
    .global irq_stubs
irq_stubs:
    .quad trap_stub_64, trap_stub_65, trap_stub_255
    "#,
    handler = sym handle_trap,
    options(att_syntax)
);

extern "C" {
    /// Addresses of the 32 entry stubs, from the assembly above.
    static trap_stubs: [u64; VECTORS];
    /// Addresses of the interrupt stubs, in the order of `IRQ_VECTORS`.
    static irq_stubs: [u64; IRQ_VECTORS.len()];
    /// Bounds of the exception table, from the linker script.
    static __ex_table_start: ExEntry;
    static __ex_table_end: ExEntry;
}

/// One 64-bit IDT gate descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present, ring-0 interrupt gate (interrupts disabled on entry) to `handler`.
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The IDT. Written once by [`init`] before `lidt`, then only read by the CPUs.
static mut IDT: [Gate; IDT_ENTRIES] = [Gate::MISSING; IDT_ENTRIES];

/// The operand of `lidt`.
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Fill and load the IDT. Call once, early, with interrupts disabled.
pub fn init() {
    // SAFETY: `trap_stubs` and `irq_stubs` are initialised, immutable tables emitted by the
    // assembly above.
    let (stubs, irqs) = unsafe {
        (
            &*core::ptr::addr_of!(trap_stubs),
            &*core::ptr::addr_of!(irq_stubs),
        )
    };
    // SAFETY: one CPU, interrupts off, called once before the IDT is loaded: nothing else
    // reads or writes `IDT` while it is filled.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for (gate, &stub) in idt.iter_mut().zip(stubs) {
        *gate = Gate::interrupt(stub);
    }
    for (&vector, &stub) in IRQ_VECTORS.iter().zip(irqs) {
        idt[usize::from(vector)] = Gate::interrupt(stub);
    }
    load_idt();
}

/// Load the IDT [`init`] filled on the calling CPU (each AP does, once).
pub fn load_idt() {
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<[Gate; IDT_ENTRIES]>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: the IDT is a static (lives forever), filled before any CPU loads it, whose every
    // present gate points at a stub that saves state and calls `handle_trap` with a valid
    // frame.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

/// The exception table the linker gathered.
/// The exception table the linker gathered.
pub fn exception_table() -> &'static [ExEntry] {
    let start = core::ptr::addr_of!(__ex_table_start);
    let end = core::ptr::addr_of!(__ex_table_end);
    let len = (end as usize - start as usize) / core::mem::size_of::<ExEntry>();
    // SAFETY: the linker script places every `.ex_table` entry, 8-byte aligned and 16 bytes
    // each, between the two symbols, in read-only data that is never written.
    unsafe { core::slice::from_raw_parts(start, len) }
}

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
static FAULT_TAKEN: AtomicBool = AtomicBool::new(false);
static FAULT_VECTOR: AtomicU64 = AtomicU64::new(0);
static FAULT_ERROR_CODE: AtomicU64 = AtomicU64::new(0);
static FAULT_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// How many `int3` breakpoints the handler has seen.
pub fn breakpoints() -> u64 {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// A fault caught through the exception table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector (14 for a page fault).
    pub vector: u64,
    /// The error code the CPU pushed (for `#PF`: bit 0 present, bit 1 write, ...).
    pub error_code: u64,
    /// CR2 at the time of the fault (the faulting linear address, for `#PF`).
    pub address: u64,
}

/// `#PF` error-code bit: the page was present (a protection violation, not a missing page).
pub const PF_PRESENT: u64 = 1 << 0;
/// `#PF` error-code bit: the access was a write.
pub const PF_WRITE: u64 = 1 << 1;
/// The page-fault vector.
pub const VECTOR_PAGE_FAULT: u64 = 14;

fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    cr2
}

const EXCEPTION_NAMES: [&str; VECTORS] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

extern "C" fn handle_trap(frame: &mut TrapFrame) {
    if frame.vector >= VECTORS as u64 {
        crate::smp::handle_irq(frame.vector as u8);
        return;
    }
    let cr2 = read_cr2();
    if frame.vector == 3 {
        BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if let Some(resume) = extable::search(exception_table(), frame.rip) {
        FAULT_VECTOR.store(frame.vector, Ordering::SeqCst);
        FAULT_ERROR_CODE.store(frame.error_code, Ordering::SeqCst);
        FAULT_ADDRESS.store(cr2, Ordering::SeqCst);
        FAULT_TAKEN.store(true, Ordering::SeqCst);
        frame.rip = resume;
        return;
    }
    let name = EXCEPTION_NAMES
        .get(frame.vector as usize)
        .copied()
        .unwrap_or("?");
    println!();
    println!(
        "mmkit-qemu: unexpected exception {} ({name}), error code {:#x}",
        frame.vector, frame.error_code
    );
    println!(
        "  rip {:#018x}  cs {:#x}  rflags {:#x}  rsp {:#018x}  cr2 {cr2:#018x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp
    );
    println!(
        "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp
    );
    println!(
        "  r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
        frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15
    );
    exit(ExitCode::Failure);
}

/// Execute `int3` once; the handler counts it and execution continues here.
pub fn breakpoint() {
    // SAFETY: `init` installed a `#BP` gate that returns to the next instruction.
    unsafe { asm!("int3", options(nomem, nostack)) };
}

fn begin_probe() {
    FAULT_TAKEN.store(false, Ordering::SeqCst);
}

fn end_probe() -> Result<(), Fault> {
    if FAULT_TAKEN.swap(false, Ordering::SeqCst) {
        Err(Fault {
            vector: FAULT_VECTOR.load(Ordering::SeqCst),
            error_code: FAULT_ERROR_CODE.load(Ordering::SeqCst),
            address: FAULT_ADDRESS.load(Ordering::SeqCst),
        })
    } else {
        Ok(())
    }
}

/// Write `value` at virtual address `addr`, reporting a fault instead of dying from it.
///
/// # Safety
/// If `addr` is mapped writable, writing `value` there must not break anything the kernel
/// relies on (the caller owns that byte).
pub unsafe fn write_u8_nofault(addr: u64, value: u8) -> Result<(), Fault> {
    begin_probe();
    // SAFETY: the caller owns the byte if it is writable; if it is not, the store faults and
    // the exception-table entry makes the handler resume at label 4 with nothing written.
    unsafe {
        asm!(
            "3: mov byte ptr [{addr}], {value}",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 3b, 4b",
            ".popsection",
            addr = in(reg) addr,
            value = in(reg_byte) value,
            options(nostack, preserves_flags),
        )
    };
    end_probe()
}

/// A `ret` instruction placed in read-only data, for the execute-disable check.
pub static RET_IN_RODATA: u8 = 0xc3;

/// Call the `ret` in [`RET_IN_RODATA`]: with W^X tables the instruction fetch faults (`#PF`
/// with the instruction-fetch bit) and the exception-table entry for *that data address*
/// resumes at a fixup that drops the return address `call` pushed. Without execute-disable it
/// simply returns.
///
/// Never inlined: the exception-table entry is keyed by the *data* address, which every copy
/// of this function would share, and the handler takes the first entry it finds; a second,
/// inlined copy once made the fault resume inside the other copy's frame.
#[inline(never)]
pub fn call_rodata_nofault() -> Result<(), Fault> {
    begin_probe();
    // SAFETY: the target is one `ret` byte: executed, it returns here with the stack as it
    // was; if its fetch faults, the handler resumes at label 3, which pops the return address
    // `call` pushed. Registers the call could clobber are declared.
    unsafe {
        asm!(
            "call {target}",
            "jmp 4f",
            "3: add rsp, 8",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad {ret_sym}, 3b",
            ".popsection",
            target = in(reg) core::ptr::addr_of!(RET_IN_RODATA),
            ret_sym = sym RET_IN_RODATA,
            clobber_abi("C"),
        )
    };
    end_probe()
}

/// `#PF` error-code bit: the access was an instruction fetch.
pub const PF_INSTRUCTION: u64 = 1 << 4;

/// Read the `u64` at virtual address `addr` (8-byte aligned), reporting a fault instead of
/// dying from it.
///
/// # Safety
/// If `addr` is mapped, reading it must have no side effect (not device memory).
pub unsafe fn read_u64_nofault(addr: u64) -> Result<u64, Fault> {
    begin_probe();
    let mut value: u64 = 0;
    // SAFETY: the caller guarantees a mapped `addr` is plain memory; an unmapped one faults and
    // the exception-table entry resumes at label 4, leaving `value` as it was (0).
    unsafe {
        asm!(
            "3: mov {value}, qword ptr [{addr}]",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 3b, 4b",
            ".popsection",
            addr = in(reg) addr,
            value = inout(reg) value,
            // Not `readonly`: the fault handler writes the FAULT_* statics "during" this
            // instruction, so the compiler must not move their reads above it.
            options(nostack, preserves_flags),
        )
    };
    end_probe().map(|()| value)
}
