//! The GICv2 of QEMU's `virt` machine (its default `gic-version`), and the EL1 virtual timer.
//!
//! The distributor and CPU interface are at the `virt` addresses below (the self-test checks
//! them against the device tree's `arm,cortex-a15-gic` node); the kernel's identity table maps
//! both as Device-nGnRE. Everything is group 0 (no security extensions on `virt` without
//! `secure=on`), signalled as IRQ.
//!
//! * SGI [`SGI_CALL`]: the cross-CPU call IPI ([`send_sgi`] to one CPU interface).
//! * PPI [`PPI_VTIMER`]: the EL1 virtual timer (`CNTV_*`), reprogrammed on each tick. The
//!   virtual timer, not the physical one, because CPUs that PSCI starts at EL1 under
//!   `virtualization=on` find `CNTHCTL_EL2` at its reset value, which may trap EL1's use of
//!   the physical timer; nothing traps the virtual one.
//!
//! References: Arm GIC architecture specification v2 (IHI 0048B), chapters 4 (distributor and
//! CPU interface registers); Arm ARM D11 (generic timer).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// The distributor's base on `virt`.
pub const GICD_BASE: u64 = 0x0800_0000;
/// The CPU interface's base on `virt`.
pub const GICC_BASE: u64 = 0x0801_0000;
/// Size mapped for each of them.
pub const GIC_REGION_SIZE: u64 = 0x1_0000;

/// The cross-CPU call SGI.
pub const SGI_CALL: u32 = 1;
/// The EL1 virtual timer's PPI (as `virt`'s device tree lists it).
pub const PPI_VTIMER: u32 = 27;
/// INTIDs from 1020 up are special (1023: nothing pending).
const FIRST_SPECIAL: u32 = 1020;

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER0: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_ITARGETSR0: u64 = 0x800;
const GICD_SGIR: u64 = 0xf00;
const GICC_CTLR: u64 = 0x000;
const GICC_PMR: u64 = 0x004;
const GICC_IAR: u64 = 0x00c;
const GICC_EOIR: u64 = 0x010;

/// The priority the kernel gives its interrupts (lower is more urgent; the mask lets it in).
const PRIORITY: u8 = 0x80;
const PRIORITY_MASK: u32 = 0xf0;

fn read(addr: u64) -> u32 {
    // SAFETY: `addr` is a GIC register, mapped Device-nGnRE at itself (module docs); reading
    // these registers has no effect on memory.
    unsafe { (addr as *const u32).read_volatile() }
}

fn write(addr: u64, value: u32) {
    // SAFETY: as `read`; the writes only configure the GIC or send SGIs.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

/// Enable the distributor (once, on the boot CPU).
pub fn init_distributor() {
    write(GICD_BASE + GICD_CTLR, 1);
}

/// Enable this CPU's call SGI and timer PPI (banked registers) and its CPU interface.
pub fn init_cpu() {
    for id in [SGI_CALL, PPI_VTIMER] {
        let reg = GICD_BASE + GICD_IPRIORITYR + u64::from(id & !3);
        let shift = (id % 4) * 8;
        let v = read(reg) & !(0xff << shift) | u32::from(PRIORITY) << shift;
        write(reg, v);
    }
    write(
        GICD_BASE + GICD_ISENABLER0,
        (1 << SGI_CALL) | (1 << PPI_VTIMER),
    );
    write(GICC_BASE + GICC_PMR, PRIORITY_MASK);
    write(GICC_BASE + GICC_CTLR, 1);
}

/// This CPU's interface as an SGI target-list bit (`GICD_ITARGETSR0` reads as the calling
/// CPU's own bit for the banked SGI/PPI entries).
pub fn cpu_interface_mask() -> u8 {
    read(GICD_BASE + GICD_ITARGETSR0) as u8
}

/// Acknowledge the highest-priority pending interrupt: `Some(iar)` to pass to [`eoi`], with
/// the INTID in its low 10 bits; `None` when nothing is pending.
pub fn acknowledge() -> Option<u32> {
    let iar = read(GICC_BASE + GICC_IAR);
    (iar & 0x3ff < FIRST_SPECIAL).then_some(iar)
}

/// End the interrupt `iar` acknowledged.
pub fn eoi(iar: u32) {
    write(GICC_BASE + GICC_EOIR, iar);
}

/// Send SGI `id` to the CPU interfaces in `targets`, after making this CPU's earlier writes
/// visible to them (`dsb ishst`, as Linux's `gic_raise_softirq`).
pub fn send_sgi(targets: u8, id: u32) {
    // SAFETY: a barrier.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    write(GICD_BASE + GICD_SGIR, u32::from(targets) << 16 | (id & 0xf));
}

/// Timer ticks per second: 625 (every 1.6 ms, as on x86_64), or 20,000 (every 50 us) while
/// [`set_fast_timer`] asks for it.
static TICKS_PER_SECOND: AtomicU64 = AtomicU64::new(625);

/// Tick every 50 us (`true`) or every 1.6 ms, from each CPU's next tick on.
pub fn set_fast_timer(fast: bool) {
    TICKS_PER_SECOND.store(if fast { 20_000 } else { 625 }, Ordering::SeqCst);
}

/// The timer's period in counter ticks.
fn timer_period() -> u64 {
    let freq: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack, preserves_flags)) };
    (freq / TICKS_PER_SECOND.load(Ordering::Relaxed)).max(1)
}

/// Arm this CPU's virtual timer for one period from now, enabled and unmasked.
pub fn rearm_timer() {
    let tval = timer_period();
    // SAFETY: the EL1 virtual timer registers only program this CPU's timer.
    unsafe {
        asm!("msr cntv_tval_el0, {}", "msr cntv_ctl_el0, {}", "isb",
             in(reg) tval, in(reg) 1u64, options(nomem, nostack, preserves_flags))
    };
}
