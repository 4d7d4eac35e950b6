//! The machine as mmkit sees it: serial console, QEMU exit, and the platform hooks.
//!
//! * Serial: the 16550 UART at COM1 (I/O port 0x3f8), 115200 8N1, polled. `println!` writes
//!   there; only the boot CPU prints (see below), so no lock is needed.
//! * Exit: QEMU's `isa-debug-exit` device at port 0xf4 (`-device
//!   isa-debug-exit,iobase=0xf4,iosize=0x04`); writing `v` ends QEMU with status
//!   `(v << 1) | 1`, so [`ExitCode::Success`] gives 33 and [`ExitCode::Failure`] 35 — neither
//!   can be confused with QEMU's own 0/1 (for instance a triple fault under `-no-reboot`).
//!   While other CPUs run, only the boot CPU prints (the others report through memory), except
//!   for a fatal exception on the way out.
//! * [`Cpus`]: the machine's CPUs, implementing [`CpuTopology`] (ids are APIC ids, read from
//!   the per-CPU area in `GS`) and [`IrqControl`] with the real interrupt flag
//!   (`pushfq`/`cli`, `sti` on restore) and IPIs for `run_on_cpu` ([`crate::smp`]).
//! * [`IDENTITY`]: the [`OffsetMapper`] for the boot identity map of the first 4 GiB (until
//!   the kernel switches to its own tables; `mmu::DIRECT` after that).
//!
//! Port I/O is the only raw hardware access here; each `asm!` is wrapped in a function whose
//! safety argument is the port's documented meaning.

use core::arch::asm;
use core::fmt::{self, Write};

use mmkit_addr::{CpuTopology, IrqControl, OffsetMapper};

/// COM1's base I/O port.
const COM1: u16 = 0x3f8;
/// The `isa-debug-exit` I/O port the boot script configures.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// How far the boot identity map reaches (see `boot.rs`).
pub const IDENTITY_LIMIT: u64 = 4 << 30;

/// The values written to `isa-debug-exit`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every check passed: QEMU exits with status 33.
    Success = 0x10,
    /// A check failed, a panic, or an unexpected exception: QEMU exits with status 35.
    Failure = 0x11,
}

/// Write `value` to I/O port `port`.
///
/// # Safety
/// The port must belong to a device whose reaction to the write cannot break memory safety
/// (the UART and `isa-debug-exit` ports used in this file qualify).
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Read I/O port `port`.
///
/// # Safety
/// As [`outb`]: reading the port must have no effect on memory safety.
unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Program COM1 for 115200 8N1 with FIFOs and no interrupts.
pub fn serial_init() {
    const SETUP: [(u16, u8); 7] = [
        (1, 0x00), // IER: no interrupts
        (3, 0x80), // LCR: DLAB on, to reach the divisor
        (0, 0x01), // DLL: divisor 1 = 115200 baud
        (1, 0x00), // DLM
        (3, 0x03), // LCR: 8 data bits, no parity, 1 stop bit, DLAB off
        (2, 0xc7), // FCR: enable and clear FIFOs, 14-byte threshold
        (4, 0x03), // MCR: DTR | RTS
    ];
    for (offset, value) in SETUP {
        // SAFETY: COM1's registers only configure the UART.
        unsafe { outb(COM1 + offset, value) };
    }
}

fn serial_write_byte(byte: u8) {
    // SAFETY: reading LSR and writing THR of COM1 only drive the UART.
    unsafe {
        while inb(COM1 + 5) & 0x20 == 0 {}
        outb(COM1, byte);
    }
}

/// The serial console as a [`fmt::Write`] sink (`\n` becomes `\r\n`).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                serial_write_byte(b'\r');
            }
            serial_write_byte(byte);
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

/// Leave QEMU with `code`. If the exit device is missing (the kernel was started by hand
/// without it), say so and halt.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is `isa-debug-exit` (or nothing): the write ends the VM or is ignored.
    unsafe {
        asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") code as u32, options(nomem, nostack))
    };
    println!("mmkit-qemu: no isa-debug-exit device at {DEBUG_EXIT_PORT:#x}; halting ({code:?})");
    halt_forever()
}

/// Disable interrupts and halt for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` stops this CPU; nothing else runs, so nothing is left inconsistent.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Mask every line of both legacy 8259 PICs, so that enabling interrupts delivers none: the
/// firmware left them programmed with vectors that would land on CPU exceptions.
pub fn mask_legacy_pics() {
    // SAFETY: writing OCW1 (the mask register) of each PIC only masks IRQ lines.
    unsafe {
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
}

const RFLAGS_IF: u64 = 1 << 9;

fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: reading RFLAGS through the stack has no side effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags
}

/// Whether local interrupts are enabled (RFLAGS.IF).
pub fn interrupts_enabled() -> bool {
    rflags() & RFLAGS_IF != 0
}

/// Enable local interrupts.
///
/// # Safety
/// An IDT must be loaded that handles every interrupt that can arrive (the kernel masks the
/// PICs first, so none should).
pub unsafe fn enable_interrupts() {
    // SAFETY: the caller guarantees an IDT is in place.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// The machine's CPUs as mmkit sees them: `nr` CPUs whose ids are their APIC ids
/// ([`crate::smp`]), the real interrupt flag as the guard, and IPIs for cross-CPU calls.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    nr: usize,
}

impl Cpus {
    /// `nr` CPUs (at least 1), the count QEMU reports.
    pub const fn new(nr: usize) -> Self {
        Self {
            nr: if nr == 0 { 1 } else { nr },
        }
    }
}

// SAFETY: `nr` never changes. `current_cpu` reads the id from the CPU's own per-CPU area
// (`GS`), set before any mmkit call on that CPU and never changed; a CPU comes online only if
// its id is below `nr` (`smp::start_aps`, and the self-test checks the boot CPU's), and a CPU
// never runs another CPU's code path, so the value is stable for a whole section.
unsafe impl CpuTopology for Cpus {
    fn nr_cpus(&self) -> usize {
        self.nr
    }

    #[inline]
    fn current_cpu(&self) -> usize {
        crate::smp::this_cpu()
    }
}

// SAFETY: `save_disable` clears RFLAGS.IF, so until `restore` no interrupt handler — the only
// other context on a CPU — can run on the calling CPU; `restore` sets IF again only if it was
// set before, so nested sections keep interrupts off until the outermost one ends.
// `run_on_cpu` runs `f` either here with IF clear, or on the target inside its IPI handler
// (IF clear, so outside every section of that CPU), and returns `true` only after `f`
// finished (`smp::run_on_cpu`).
unsafe impl IrqControl for Cpus {
    /// Whether interrupts were enabled.
    type State = bool;

    #[inline]
    fn save_disable(&self) -> bool {
        let was_enabled = interrupts_enabled();
        // SAFETY: disabling interrupts is always allowed.
        unsafe { asm!("cli", options(nomem, nostack)) };
        was_enabled
    }

    #[inline]
    unsafe fn restore(&self, was_enabled: bool) {
        if was_enabled {
            // SAFETY: interrupts were enabled when the matching `save_disable` ran, so the
            // IDT that made that safe is still in place.
            unsafe { enable_interrupts() };
        }
    }

    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        cpu < self.nr && crate::smp::run_on_cpu(cpu, f)
    }
}

/// The boot identity map of physical `[0, 4 GiB)` as a phys→virt hook, for use while the boot
/// tables are loaded (after `mmu::switch_to`, use `mmu::DIRECT`).
// SAFETY: `boot.rs` maps every address below 4 GiB readable and writable at itself, and the
// kernel uses this mapper only while those tables are loaded (the self-tests make one block
// read-only for the duration of a check, through a fault-tolerant probe, and restore it).
pub static IDENTITY: OffsetMapper = unsafe { OffsetMapper::new(0, IDENTITY_LIMIT) };
