//! Exceptions: the EL1 vector table, the handler, and fault-tolerant memory probes.
//!
//! All sixteen vectors share one path: each 128-byte slot reserves an [`ExceptionFrame`] on the
//! stack, saves `x0`/`x1`, puts its slot number in `x0` and branches to `exception_common`,
//! which saves the other general registers, `ELR_EL1`, `SPSR_EL1`, `ESR_EL1`, `FAR_EL1`, all
//! SIMD registers with `FPCR`/`FPSR` (the target's code generation uses NEON registers, so an
//! interrupted function's vector registers must survive the Rust handler), and calls
//! [`handle_exception`]. The handler may change `frame.elr`; the assembly restores everything
//! and `eret`s.
//!
//! The handler's policy for a synchronous exception from EL1, in order:
//! 1. `brk #imm` (EC 0x3c) is counted, its immediate recorded, and execution resumes after it
//!    (`ELR += 4`: a `brk` leaves ELR at the `brk` itself).
//! 2. A fault at an instruction listed in the exception table (see
//!    [`mmkit_qemu_common::extable`]) is recorded (ESR, FAR) and execution resumes at the
//!    table's fixup address: [`read_u64_nofault`] relies on it.
//!
//! An IRQ at EL1 goes to [`crate::smp::handle_irq`] (GIC timer and call SGI).
//!
//! 3. Anything else — FIQ, SError, an exception from a lower EL — is fatal: the
//!    slot, ESR (with its exception class decoded), FAR, ELR and SPSR are printed and QEMU
//!    exits with the failure status.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mmkit_qemu_common::extable::{self, ExEntry};

use crate::platform::{exit, ExitCode};
use crate::println;

/// What the vector stubs save, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    x: [u64; 31],
    _pad: u64,
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
    slot: u64,
    _pad2: u64,
    q: [u128; 32],
    fpcr: u64,
    fpsr: u64,
}

/// Size of [`ExceptionFrame`]; the assembly below uses the same offsets.
const FRAME_SIZE: usize = 832;
const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == FRAME_SIZE);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, elr) == 256);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, slot) == 288);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, q) == 304);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, fpcr) == 816);

global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    .irp slot, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    sub sp, sp, #{frame_size}
    stp x0, x1, [sp, #0]
    mov x0, #\slot
    b exception_common
    .endr

exception_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    str x30, [sp, #240]
    mrs x1, elr_el1
    mrs x2, spsr_el1
    stp x1, x2, [sp, #256]
    mrs x1, esr_el1
    mrs x2, far_el1
    stp x1, x2, [sp, #272]
    str x0, [sp, #288]
    add x1, sp, #304
    stp q0, q1, [x1, #0]
    stp q2, q3, [x1, #32]
    stp q4, q5, [x1, #64]
    stp q6, q7, [x1, #96]
    stp q8, q9, [x1, #128]
    stp q10, q11, [x1, #160]
    stp q12, q13, [x1, #192]
    stp q14, q15, [x1, #224]
    stp q16, q17, [x1, #256]
    stp q18, q19, [x1, #288]
    stp q20, q21, [x1, #320]
    stp q22, q23, [x1, #352]
    stp q24, q25, [x1, #384]
    stp q26, q27, [x1, #416]
    stp q28, q29, [x1, #448]
    stp q30, q31, [x1, #480]
    mrs x2, fpcr
    mrs x3, fpsr
    add x1, sp, #816                /* beyond stp's immediate reach from sp */
    stp x2, x3, [x1]

    mov x0, sp
    bl {handler}

    add x1, sp, #816
    ldp x2, x3, [x1]
    msr fpcr, x2
    msr fpsr, x3
    add x1, sp, #304
    ldp q0, q1, [x1, #0]
    ldp q2, q3, [x1, #32]
    ldp q4, q5, [x1, #64]
    ldp q6, q7, [x1, #96]
    ldp q8, q9, [x1, #128]
    ldp q10, q11, [x1, #160]
    ldp q12, q13, [x1, #192]
    ldp q14, q15, [x1, #224]
    ldp q16, q17, [x1, #256]
    ldp q18, q19, [x1, #288]
    ldp q20, q21, [x1, #320]
    ldp q22, q23, [x1, #352]
    ldp q24, q25, [x1, #384]
    ldp q26, q27, [x1, #416]
    ldp q28, q29, [x1, #448]
    ldp q30, q31, [x1, #480]
    ldp x1, x2, [sp, #256]
    msr elr_el1, x1
    msr spsr_el1, x2
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x19, [sp, #144]
    ldp x20, x21, [sp, #160]
    ldp x22, x23, [sp, #176]
    ldp x24, x25, [sp, #192]
    ldp x26, x27, [sp, #208]
    ldp x28, x29, [sp, #224]
    ldr x30, [sp, #240]
    add sp, sp, #{frame_size}
    eret
    "#,
    frame_size = const FRAME_SIZE,
    handler = sym handle_exception,
);

extern "C" {
    /// Bounds of the exception table, from the linker script.
    static __ex_table_start: ExEntry;
    static __ex_table_end: ExEntry;
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

/// Vector slot names, in table order (Arm ARM D1.10.2).
const SLOT_NAMES: [&str; 16] = [
    "synchronous, current EL, SP_EL0",
    "IRQ, current EL, SP_EL0",
    "FIQ, current EL, SP_EL0",
    "SError, current EL, SP_EL0",
    "synchronous, current EL, SP_ELx",
    "IRQ, current EL, SP_ELx",
    "FIQ, current EL, SP_ELx",
    "SError, current EL, SP_ELx",
    "synchronous, lower EL, AArch64",
    "IRQ, lower EL, AArch64",
    "FIQ, lower EL, AArch64",
    "SError, lower EL, AArch64",
    "synchronous, lower EL, AArch32",
    "IRQ, lower EL, AArch32",
    "FIQ, lower EL, AArch32",
    "SError, lower EL, AArch32",
];

/// The slots taken for synchronous exceptions at EL1 (the kernel runs on SP_EL1).
const SLOT_SYNC_EL1_SP0: u64 = 0;
const SLOT_SYNC_EL1_SPX: u64 = 4;

/// `ESR_ELx.EC` values used here (Arm ARM D17.2.37).
pub const EC_UNKNOWN: u64 = 0x00;
/// Data abort taken without a change in exception level.
pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// `brk` in AArch64 state.
pub const EC_BRK64: u64 = 0x3c;
/// Data fault status code: synchronous external abort, not on a translation table walk.
pub const DFSC_SYNC_EXTERNAL_ABORT: u64 = 0x10;
/// `ESR_ELx.ISS.FnV`: set when FAR is not valid.
pub const ESR_FNV: u64 = 1 << 10;

fn exception_class_name(ec: u64) -> &'static str {
    match ec {
        EC_UNKNOWN => "unknown reason (undefined instruction?)",
        0x01 => "WFI/WFE trapped",
        0x07 => "SIMD/FP access trapped",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access trapped",
        0x20 => "instruction abort, lower EL",
        0x21 => "instruction abort, same EL",
        0x22 => "PC alignment fault",
        0x24 => "data abort, lower EL",
        EC_DATA_ABORT_SAME_EL => "data abort, same EL",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        EC_BRK64 => "BRK",
        _ => "other",
    }
}

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
static LAST_BRK_IMMEDIATE: AtomicU64 = AtomicU64::new(u64::MAX);
static FAULT_TAKEN: AtomicBool = AtomicBool::new(false);
static FAULT_ESR: AtomicU64 = AtomicU64::new(0);
static FAULT_FAR: AtomicU64 = AtomicU64::new(0);

/// How many `brk` instructions the handler has seen.
pub fn breakpoints() -> u64 {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// The immediate of the last `brk` seen (`u64::MAX` before the first).
pub fn last_brk_immediate() -> u64 {
    LAST_BRK_IMMEDIATE.load(Ordering::SeqCst)
}

/// A fault caught through the exception table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// `ESR_EL1` at the fault.
    pub esr: u64,
    /// `FAR_EL1` at the fault (meaningful unless `esr & ESR_FNV`).
    pub far: u64,
}

impl Fault {
    /// The exception class, `ESR_EL1[31:26]`.
    pub fn class(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// The fault status code of an abort, `ESR_EL1[5:0]`.
    pub fn status_code(&self) -> u64 {
        self.esr & 0x3f
    }
}

/// The slot taken for IRQs at EL1 on SP_EL1.
const SLOT_IRQ_EL1_SPX: u64 = 5;

extern "C" fn handle_exception(frame: &mut ExceptionFrame) {
    if frame.slot == SLOT_IRQ_EL1_SPX {
        crate::smp::handle_irq();
        return;
    }
    let ec = (frame.esr >> 26) & 0x3f;
    if frame.slot == SLOT_SYNC_EL1_SPX || frame.slot == SLOT_SYNC_EL1_SP0 {
        if ec == EC_BRK64 {
            BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
            LAST_BRK_IMMEDIATE.store(frame.esr & 0xffff, Ordering::SeqCst);
            frame.elr += 4;
            return;
        }
        if let Some(resume) = extable::search(exception_table(), frame.elr) {
            FAULT_ESR.store(frame.esr, Ordering::SeqCst);
            FAULT_FAR.store(frame.far, Ordering::SeqCst);
            FAULT_TAKEN.store(true, Ordering::SeqCst);
            frame.elr = resume;
            return;
        }
    }
    let slot = SLOT_NAMES.get(frame.slot as usize).copied().unwrap_or("?");
    println!();
    println!("mmkit-qemu: unexpected exception ({slot})");
    println!(
        "  ESR_EL1 {:#010x} (EC {ec:#04x}: {}, ISS {:#x})",
        frame.esr,
        exception_class_name(ec),
        frame.esr & 0x1ff_ffff
    );
    println!(
        "  FAR_EL1 {:#018x}  ELR_EL1 {:#018x}  SPSR_EL1 {:#010x}",
        frame.far, frame.elr, frame.spsr
    );
    for (i, pair) in frame.x.chunks(4).enumerate() {
        print_registers(i * 4, pair);
    }
    exit(ExitCode::Failure);
}

fn print_registers(first: usize, values: &[u64]) {
    crate::print!(" ");
    for (i, v) in values.iter().enumerate() {
        crate::print!(" x{:<2} {v:#018x}", first + i);
    }
    println!();
}

/// Execute `brk #imm`; the handler counts it and execution continues after it.
#[inline(always)]
pub fn breakpoint<const IMM: u16>() {
    // SAFETY: the vector table is installed and resumes after a `brk`.
    unsafe { asm!("brk #{imm}", imm = const IMM, options(nomem, nostack)) };
}

/// Instruction abort taken without a change in exception level.
pub const EC_INSTRUCTION_ABORT_SAME_EL: u64 = 0x21;
/// `ESR_ELx.ISS.WnR` of a data abort: the access was a write.
pub const ESR_WNR: u64 = 1 << 6;

/// Whether a fault status code (DFSC/IFSC) is a translation fault (levels 0-3).
pub fn is_translation_fault(status: u64) -> bool {
    (0x04..=0x07).contains(&status)
}

/// Whether a fault status code (DFSC/IFSC) is a permission fault (levels 1-3; 0x0c is level 0
/// with FEAT_LPA2).
pub fn is_permission_fault(status: u64) -> bool {
    (0x0c..=0x0f).contains(&status)
}

/// Write `value` at address `addr`, reporting a fault instead of dying from it.
///
/// # Safety
/// If `addr` is writable, writing `value` there must not break anything the kernel relies on
/// (the caller owns that byte).
pub unsafe fn write_u8_nofault(addr: u64, value: u8) -> Result<(), Fault> {
    FAULT_TAKEN.store(false, Ordering::SeqCst);
    // SAFETY: the caller owns the byte if it is writable; if it is not, the store faults and
    // the exception-table entry resumes at label 4 with nothing written.
    unsafe {
        asm!(
            "3: strb {value:w}, [{addr}]",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 3b, 4b",
            ".popsection",
            addr = in(reg) addr,
            value = in(reg) u32::from(value),
            options(nostack, preserves_flags),
        )
    };
    take_fault()
}

/// A `ret` instruction placed in read-only data, for the execute-never check.
#[repr(align(4))]
pub struct Instruction(
    // Read by the CPU's instruction fetch, never by Rust code.
    #[allow(dead_code)] u32,
);

/// `ret` (A64 encoding `0xd65f03c0`) in `.rodata`.
pub static RET_IN_RODATA: Instruction = Instruction(0xd65f_03c0);

/// Branch-and-link to the `ret` in [`RET_IN_RODATA`]: with execute-never on read-only data
/// the fetch faults (instruction abort) and the exception-table entry for *that data address*
/// resumes after the branch. Without it, the `ret` simply returns.
///
/// Never inlined: the exception-table entry is keyed by the *data* address, which every copy
/// of this function would share, and the handler takes the first entry it finds; a second,
/// inlined copy once made the fault resume inside the other copy's frame.
#[inline(never)]
pub fn call_rodata_nofault() -> Result<(), Fault> {
    FAULT_TAKEN.store(false, Ordering::SeqCst);
    // SAFETY: the target is one `ret`: executed, it returns to label 4; if its fetch faults,
    // the handler resumes at label 4 too. `blr` overwrites x30, declared through the ABI
    // clobbers along with everything a call may change.
    unsafe {
        asm!(
            "blr {target}",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad {ret_sym}, 4b",
            ".popsection",
            target = in(reg) core::ptr::addr_of!(RET_IN_RODATA),
            ret_sym = sym RET_IN_RODATA,
            clobber_abi("C"),
        )
    };
    take_fault()
}

fn take_fault() -> Result<(), Fault> {
    if FAULT_TAKEN.swap(false, Ordering::SeqCst) {
        Err(Fault {
            esr: FAULT_ESR.load(Ordering::SeqCst),
            far: FAULT_FAR.load(Ordering::SeqCst),
        })
    } else {
        Ok(())
    }
}

/// Read the `u64` at address `addr` (8-byte aligned), reporting a fault instead of dying from
/// it.
///
/// # Safety
/// If `addr` is accessible, reading it must have no side effect (not device memory).
pub unsafe fn read_u64_nofault(addr: u64) -> Result<u64, Fault> {
    FAULT_TAKEN.store(false, Ordering::SeqCst);
    let mut value: u64 = 0;
    // SAFETY: the caller guarantees an accessible `addr` is plain memory; an inaccessible one
    // faults and the exception-table entry resumes at label 4, leaving `value` as it was.
    // Not `readonly`: the handler writes the FAULT_* statics "during" the load.
    unsafe {
        asm!(
            "3: ldr {value}, [{addr}]",
            "4:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 3b, 4b",
            ".popsection",
            addr = in(reg) addr,
            value = inout(reg) value,
            options(nostack, preserves_flags),
        )
    };
    take_fault().map(|()| value)
}
