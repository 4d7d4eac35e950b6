//! The machine as mmkit sees it: serial console, QEMU exit, and the platform hooks.
//!
//! * Serial: the PL011 UART of QEMU's `virt` machine at 0x0900_0000 (the `/chosen`
//!   `stdout-path` of its device tree), polled; QEMU's model needs no set-up. Fixed rather than
//!   read from the tree so that panics while reading the tree can still be reported.
//! * Exit: PSCI `SYSTEM_OFF` for success (QEMU exits with status 0); for failure, the
//!   semihosting `SYS_EXIT` call with status 1 (the boot script enables semihosting), falling
//!   back to PSCI `SYSTEM_RESET` (which `-no-reboot` turns into an exit) if semihosting is off.
//!   The script judges success by the serial success line *and* the status, so a failure can
//!   never pass.
//! * The PSCI conduit (`hvc` or `smc`) comes from the device tree's `/psci/method`
//!   ([`set_psci_conduit`]); until it is known, `hvc`, which is what `virt` uses without EL3.
//! * [`Cpus`]: the machine's CPUs, implementing [`CpuTopology`] (ids from the MPIDRs, read
//!   from the per-CPU area in `TPIDR_EL1`) and [`IrqControl`] with the real `DAIF` mask and
//!   SGIs for `run_on_cpu` ([`crate::smp`]); [`psci_cpu_on`] starts the other CPUs.
//! * While other CPUs run, only the boot CPU prints (the others report through memory),
//!   except for a fatal exception on the way out.
//! * [`IDENTITY`]: the [`OffsetMapper`] for running with the MMU off (virtual = physical);
//!   `mmu::DIRECT` once the MMU is on.
//!
//! MMIO and system-register access is fenced in the small functions below, each with its
//! safety argument.

use core::arch::asm;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use mmkit_addr::{CpuTopology, IrqControl, OffsetMapper};
use mmkit_qemu_common::dtb::PsciConduit;

/// The PL011's base address on `virt`.
const UART_BASE: usize = 0x0900_0000;
/// Data register.
const UART_DR: usize = 0x00;
/// Flag register; bit 5 is "transmit FIFO full".
const UART_FR: usize = 0x18;
const UART_FR_TXFF: u32 = 1 << 5;

/// PSCI 0.2+ function ids (SMC32 calling convention), from the PSCI specification.
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;

/// Semihosting operation `SYS_EXIT` and its "application exit" reason code.
const SEMIHOSTING_SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// How far the identity "mapping" reaches with the MMU off: the whole 48-bit physical space.
pub const IDENTITY_LIMIT: u64 = 1 << 48;

/// How the kernel leaves QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every check passed: PSCI `SYSTEM_OFF`, QEMU status 0.
    Success,
    /// A check failed, a panic, or an unexpected exception: semihosting exit status 1.
    Failure,
}

fn uart_write_byte(byte: u8) {
    let fr = (UART_BASE + UART_FR) as *const u32;
    let dr = (UART_BASE + UART_DR) as *mut u32;
    // SAFETY: the PL011 registers of `virt` are at these addresses (identity, MMU off);
    // polling FR and writing DR only drives the UART.
    unsafe {
        while fr.read_volatile() & UART_FR_TXFF != 0 {}
        dr.write_volatile(u32::from(byte));
    }
}

/// The serial console as a [`fmt::Write`] sink (`\n` becomes `\r\n`).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                uart_write_byte(b'\r');
            }
            uart_write_byte(byte);
        }
        Ok(())
    }
}

/// Print to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::platform::Serial, $($arg)*);
    }};
}

/// Print a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::platform::Serial, $($arg)*);
    }};
}

const CONDUIT_HVC: u8 = 0;
const CONDUIT_SMC: u8 = 1;
static PSCI_CONDUIT: AtomicU8 = AtomicU8::new(CONDUIT_HVC);

/// Use `conduit` for PSCI calls from now on.
pub fn set_psci_conduit(conduit: PsciConduit) {
    let value = match conduit {
        PsciConduit::Hvc => CONDUIT_HVC,
        PsciConduit::Smc => CONDUIT_SMC,
    };
    PSCI_CONDUIT.store(value, Ordering::SeqCst);
}

/// PSCI 0.2+ `CPU_ON` (SMC64 calling convention).
const PSCI_CPU_ON: u32 = 0xc400_0003;

/// PSCI `CPU_ON`: start the CPU `mpidr` at physical `entry`, MMU off, with `context` in `x0`.
/// Returns PSCI's status (0: success; negative: refused).
pub fn psci_cpu_on(mpidr: u64, entry: u64, context: u64) -> i64 {
    let ret: u64;
    // SAFETY: CPU_ON only starts another CPU at `entry` (the kernel's `secondary_entry`, which
    // needs nothing but what it is passed and the statics the caller prepared); the SMC
    // calling convention may clobber x0-x17, which `clobber_abi("C")` declares.
    unsafe {
        if PSCI_CONDUIT.load(Ordering::SeqCst) == CONDUIT_SMC {
            asm!("smc #0", inout("x0") u64::from(PSCI_CPU_ON) => ret, inout("x1") mpidr => _,
                 inout("x2") entry => _, inout("x3") context => _, clobber_abi("C"), options(nostack));
        } else {
            asm!("hvc #0", inout("x0") u64::from(PSCI_CPU_ON) => ret, inout("x1") mpidr => _,
                 inout("x2") entry => _, inout("x3") context => _, clobber_abi("C"), options(nostack));
        }
    }
    ret as i64
}

/// Call PSCI `function` with no arguments; for the calls used here it does not return.
fn psci_call(function: u32) {
    // SAFETY: SYSTEM_OFF / SYSTEM_RESET take no arguments and do not touch kernel memory; the
    // SMC calling convention may clobber x0-x17, which `clobber_abi("C")` declares.
    unsafe {
        if PSCI_CONDUIT.load(Ordering::SeqCst) == CONDUIT_SMC {
            asm!("smc #0", inout("x0") u64::from(function) => _, clobber_abi("C"), options(nomem, nostack));
        } else {
            asm!("hvc #0", inout("x0") u64::from(function) => _, clobber_abi("C"), options(nomem, nostack));
        }
    }
}

/// Set when a failure exit has started: a second failure (say, semihosting is off and its
/// `hlt` traps) must not try semihosting again.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Leave QEMU with `code`.
pub fn exit(code: ExitCode) -> ! {
    match code {
        ExitCode::Success => psci_call(PSCI_SYSTEM_OFF),
        ExitCode::Failure => {
            if !FAILING.swap(true, Ordering::SeqCst) {
                let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, 1];
                // SAFETY: the semihosting SYS_EXIT call reads the two-word parameter block
                // at x1 and ends the VM; if semihosting is disabled the `hlt` traps and the
                // exception handler comes back here with FAILING set.
                unsafe {
                    asm!("hlt #0xf000", in("x0") SEMIHOSTING_SYS_EXIT, in("x1") block.as_ptr(), options(nostack, readonly));
                }
            }
            println!("mmkit-qemu: semihosting unavailable, resetting instead");
            psci_call(PSCI_SYSTEM_RESET);
        }
    }
    println!("mmkit-qemu: PSCI did not stop the machine; halting ({code:?})");
    halt_forever()
}

/// Mask interrupts and wait for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masking all interrupts and waiting touches no memory.
        unsafe { asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) };
    }
}

/// `DAIF.I`: IRQs masked.
const DAIF_I: u64 = 1 << 7;

fn daif() -> u64 {
    let value: u64;
    // SAFETY: reading DAIF has no side effect.
    unsafe { asm!("mrs {}, daif", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Whether IRQs are unmasked (`DAIF.I` clear).
pub fn interrupts_enabled() -> bool {
    daif() & DAIF_I == 0
}

/// Unmask IRQs.
///
/// # Safety
/// The vector table must be installed; IRQs arrive only once the GIC is set up
/// ([`crate::gic`]), and the vector table hands them to [`crate::smp::handle_irq`].
pub unsafe fn enable_interrupts() {
    // SAFETY: the caller guarantees the vector table is in place.
    unsafe { asm!("msr daifclr, #2", options(nomem, nostack)) };
}

/// The machine's CPUs as mmkit sees them: `nr` CPUs whose ids come from their MPIDRs
/// ([`crate::smp`]), the real `DAIF` mask as the guard, and SGIs for cross-CPU calls.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    nr: usize,
}

impl Cpus {
    /// `nr` CPUs (at least 1): the device tree's count.
    pub const fn new(nr: usize) -> Self {
        Self {
            nr: if nr == 0 { 1 } else { nr },
        }
    }
}

// SAFETY: `nr` never changes. `current_cpu` reads the id from the CPU's own per-CPU area
// (`TPIDR_EL1`), set before any mmkit call on that CPU and never changed; a CPU comes online
// only with an id below the tree's CPU count (`smp::start_secondaries`), and a CPU never runs
// another CPU's code path, so the value is stable for a whole section.
unsafe impl CpuTopology for Cpus {
    fn nr_cpus(&self) -> usize {
        self.nr
    }

    #[inline]
    fn current_cpu(&self) -> usize {
        crate::smp::this_cpu()
    }
}

// SAFETY: `save_disable` sets DAIF.I, so no IRQ handler — the only other context on a CPU —
// runs on the calling CPU until `restore` writes back the saved DAIF, which unmasks only if
// the outer state was unmasked. `run_on_cpu` runs `f` here with IRQs masked, or on the target
// inside its SGI handler (IRQs masked, so outside every section of that CPU), and returns
// `true` only after `f` finished (`smp::run_on_cpu`).
unsafe impl IrqControl for Cpus {
    /// The whole DAIF register as it was.
    type State = u64;

    #[inline]
    fn save_disable(&self) -> u64 {
        let saved = daif();
        // SAFETY: masking IRQs is always allowed.
        unsafe { asm!("msr daifset, #2", options(nomem, nostack)) };
        saved
    }

    #[inline]
    unsafe fn restore(&self, saved: u64) {
        // SAFETY: `saved` is a DAIF value read by the matching `save_disable`; if it unmasks
        // IRQs, they were unmasked before, with the vector table in place.
        unsafe { asm!("msr daif, {}", in(reg) saved, options(nomem, nostack)) };
    }

    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        cpu < self.nr && crate::smp::run_on_cpu(cpu, f)
    }
}

/// Physical memory as the kernel sees it with the MMU off (after `mmu::enable`, use
/// `mmu::DIRECT`).
// SAFETY: with the MMU off every physical address is accessible at itself, RAM with read and
// write permission; the kernel uses this mapper only until it turns the MMU on.
pub static IDENTITY: OffsetMapper = unsafe { OffsetMapper::new(0, IDENTITY_LIMIT) };
