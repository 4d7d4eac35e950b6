//! The local APIC (xAPIC, memory-mapped): identity, enabling, the periodic timer, IPIs and
//! the INIT-SIPI-SIPI start-up sequence (Intel SDM vol. 3A, 11.4-11.6 and 9.4.4).
//!
//! The registers are at the physical base in `IA32_APIC_BASE` (0xfee0_0000 on QEMU), which
//! both the kernel's tables and the facade's map RW at itself (the identity map of the low
//! 4 GiB). Each CPU reaches its *own* APIC at that address. The ICR is written high word
//! first: the low-word write sends, so both writes happen with interrupts off.

use core::arch::asm;

/// The timer's vector.
pub const VECTOR_TIMER: u8 = 0x40;
/// The cross-CPU call IPI's vector.
pub const VECTOR_CALL: u8 = 0x41;
/// The spurious-interrupt vector (SVR); its handler does nothing and sends no EOI.
pub const VECTOR_SPURIOUS: u8 = 0xff;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_PERIODIC: u32 = 1 << 17;
const ICR_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
/// Timer divide configuration 0b0011: divide the bus clock by 16.
const DIVIDE_BY_16: u32 = 0b0011;

/// The timer's initial count: QEMU's APIC timer counts at 1 GHz before the divider, so this
/// is a tick about every 1.6 ms of virtual time (a guess on other machines: nothing here
/// depends on the period).
pub const TIMER_COUNT: u32 = 100_000;

fn base() -> usize {
    let (lo, hi): (u32, u32);
    // SAFETY: reading IA32_APIC_BASE (MSR 0x1b) has no side effect.
    unsafe {
        asm!("rdmsr", in("ecx") 0x1bu32, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags))
    };
    ((u64::from(hi) << 32 | u64::from(lo)) & !0xfff) as usize
}

fn read(reg: usize) -> u32 {
    // SAFETY: `base() + reg` is an architectural APIC register, mapped RW at itself (module
    // docs); reading it has no side effect on memory.
    unsafe { ((base() + reg) as *const u32).read_volatile() }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as `read`; the callers' writes only configure this CPU's APIC or send IPIs.
    unsafe { ((base() + reg) as *mut u32).write_volatile(value) }
}

/// This CPU's APIC id as CPUID reports it (leaf 1, `EBX[31:24]`); needs no mapping.
pub fn cpuid_apic_id() -> usize {
    (core::arch::x86_64::__cpuid(1).ebx >> 24) as usize
}

/// This CPU's APIC id as its APIC reports it.
pub fn id() -> usize {
    (read(REG_ID) >> 24) as usize
}

/// Software-enable this CPU's APIC with the spurious vector, accepting every priority.
pub fn enable() {
    write(REG_TPR, 0);
    write(REG_SVR, SVR_ENABLE | u32::from(VECTOR_SPURIOUS));
}

/// Start this CPU's periodic timer on [`VECTOR_TIMER`].
pub fn start_timer() {
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_PERIODIC | u32::from(VECTOR_TIMER));
    write(REG_TIMER_INITIAL, TIMER_COUNT);
}

/// Make this CPU's timer tick every ~50 us (`true`, a 32nd of the period) or at the normal
/// period again.
pub fn set_fast_timer(fast: bool) {
    write(
        REG_TIMER_INITIAL,
        if fast { TIMER_COUNT / 32 } else { TIMER_COUNT },
    );
}

/// Signal the end of the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Send `low` to the ICR with `dest` in the destination field, with interrupts off, and wait
/// until the APIC has accepted it.
fn send(dest: usize, low: u32) {
    let flags: u64;
    // SAFETY: saving RFLAGS and clearing IF only masks interrupts on this CPU.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    write(REG_ICR_HIGH, (dest as u32) << 24);
    write(REG_ICR_LOW, low);
    while read(REG_ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    if flags & (1 << 9) != 0 {
        // SAFETY: interrupts were on before; the IDT that allowed it is still loaded.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// Send the fixed IPI `vector` to the CPU with APIC id `apic_id`.
pub fn send_ipi(apic_id: usize, vector: u8) {
    send(apic_id, u32::from(vector));
}

/// Roughly `us` microseconds: one write to the POST port 0x80 per microsecond, Linux's
/// classic `io_delay`. Only the order of the start-up steps matters under QEMU; on hardware
/// the delays are at least this long.
pub fn udelay(us: u64) {
    for _ in 0..us {
        // SAFETY: port 0x80 is the POST diagnostic port; writing it has no effect.
        unsafe { asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack, preserves_flags)) };
    }
}

/// INIT, then two STARTUP IPIs, to every other CPU (SDM 9.4.4.1's broadcast sequence): they
/// start in real mode at physical `trampoline`, which must be page-aligned below 1 MiB.
pub fn start_all_others(trampoline: u64) {
    let vector = (trampoline >> 12) as u32 & 0xff;
    send(0, ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_INIT);
    udelay(10_000);
    for _ in 0..2 {
        send(0, ICR_ALL_BUT_SELF | ICR_STARTUP | vector);
        udelay(200);
    }
}
