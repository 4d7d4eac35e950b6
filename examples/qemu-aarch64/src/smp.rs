//! Many CPUs: per-CPU areas, secondary start-up through PSCI, interrupts, cross-CPU calls.
//!
//! ## CPU ids and per-CPU areas
//! A CPU's id comes from its MPIDR ([`mpidr_to_cpu`]: `Aff1 * 8 + Aff0`, `virt`'s numbering
//! with up to eight CPUs per cluster); the machine's CPUs are the device tree's
//! `/cpus/cpu@*`. `TPIDR_EL1` points at the CPU's [`CpuLocal`]; word 0 is the id, so
//! [`this_cpu`] is an `mrs` and a load. The boot CPU starts on a static area and moves to
//! one from mmkit in [`start_secondaries`].
//!
//! ## Start-up (PSCI `CPU_ON`)
//! For every other CPU of the tree the boot CPU allocates a per-CPU area (kmalloc) and a
//! stack (vmalloc: the guard page that ends the area before it lies just below), publishes
//! the MMU registers it runs with ([`AP_MMU`]: MAIR, TCR, both TTBRs, SCTLR) and calls
//! `CPU_ON(mpidr, secondary_entry, cpu id)` through the tree's conduit. The CPU starts with
//! the MMU off at `secondary_entry`, at EL1 or — PSCI starts CPUs at the highest EL below
//! EL3, so with `virtualization=on` — at EL2, which it leaves for EL1 as the boot CPU did.
//! It then enables FP/SIMD, installs the vector table, loads those MMU registers (the same
//! identity TTBR0 table and the facade's TTBR1 table) after a local TLB invalidation,
//! switches to its stack and calls `secondary_main`: `TPIDR_EL1`, the GIC CPU interface, the
//! timer, online, then idle with IRQs unmasked. (QEMU does not model caches, so the values
//! written with caches on are read with the MMU off without maintenance; real hardware would
//! clean them to the point of coherency first.)
//!
//! ## Interrupts and calls
//! IRQs go through [`handle_irq`]: the timer PPI does the `GFP_ATOMIC` round of
//! [`mmkit_qemu_common::stress::atomic_round`] while the gate allows it; the call SGI runs the
//! CPU's pending cross-CPU call ([`mmkit_qemu_common::smp::CallSlots`]). TLB invalidation
//! needs no IPI on aarch64: `TLBI ...IS` reaches every CPU of the inner-shareable domain
//! ([`KernelTlb`]); `mmkit.inject=shootdown` makes it local (`TLBI VALE1`, `DSB NSH`), which
//! the shootdown check must notice.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};

use mmkit::addr::{PageSize, VirtAddr};
use mmkit::buddy::GfpFlags;
use mmkit::pgtable::arch::aarch64_hw::InnerShareableTlb;
use mmkit::pgtable::TlbInvalidate;
use mmkit_qemu_common::harness::Reason;
use mmkit_qemu_common::smp::{self, AllocGate, CallSlots, CpuStats, Jobs};
use mmkit_qemu_common::stress::{SmpKernel, StressHooks};
use mmkit_qemu_common::{ensure, fail};

use crate::facade::{KernelMm, MM};
use crate::gic;
use crate::platform::{interrupts_enabled, psci_cpu_on};

/// The most CPUs this kernel runs.
pub const MAX_CPUS: usize = smp::MAX_CPUS;

/// Stack of each secondary CPU.
pub const STACK_SIZE: usize = 64 * 1024;

/// One CPU's per-CPU area.
#[repr(C)]
pub struct CpuLocal {
    /// The CPU id; `[TPIDR_EL1]`.
    cpu: usize,
    /// This CPU's GIC CPU interface as an SGI target bit.
    gic_mask: AtomicU8,
    /// The CPU's counters.
    pub stats: CpuStats,
}

impl CpuLocal {
    const fn new(cpu: usize) -> Self {
        Self {
            cpu,
            gic_mask: AtomicU8::new(0),
            stats: CpuStats::new(),
        }
    }
}

/// The boot CPU's area until [`start_secondaries`] gives it one from mmkit.
struct BootLocal(UnsafeCell<CpuLocal>);
// SAFETY: written once by `init_boot_cpu` before any other CPU runs; the rest are atomics.
unsafe impl Sync for BootLocal {}
static BOOT_LOCAL: BootLocal = BootLocal(UnsafeCell::new(CpuLocal::new(0)));

static LOCALS: [AtomicPtr<CpuLocal>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static ONLINE: AtomicU64 = AtomicU64::new(0);
static REFUSED_CALLS: AtomicU64 = AtomicU64::new(0);
static LOCAL_ONLY_TLBI: AtomicBool = AtomicBool::new(false);
static TIMER_ALLOCS: AllocGate = AllocGate::new();
static CALLS: CallSlots = CallSlots::new();
static JOBS: Jobs = Jobs::new();

/// MAIR, TCR, TTBR0, TTBR1, SCTLR for `secondary_entry`.
static AP_MMU: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// Each secondary's initial stack pointer, by CPU id.
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The CPU id of `mpidr` (module docs), if below [`MAX_CPUS`].
pub fn mpidr_to_cpu(mpidr: u64) -> Option<usize> {
    let (aff0, aff1) = (mpidr & 0xff, (mpidr >> 8) & 0xff);
    let id = (aff1 * 8 + aff0) as usize;
    (aff0 < 8 && mpidr >> 16 & 0xff == 0 && id < MAX_CPUS).then_some(id)
}

fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & 0xff_00ff_ffff
}

fn set_tpidr(local: *const CpuLocal) {
    // SAFETY: TPIDR_EL1 is the kernel's own register for its per-CPU area, which `local` is
    // and which lives forever.
    unsafe {
        asm!("msr tpidr_el1, {}", in(reg) local as u64, options(nomem, nostack, preserves_flags))
    };
}

/// Point `TPIDR_EL1` at the boot CPU's static area with its id. Call first thing in `kmain`.
/// `None` if its MPIDR gives no usable id.
pub fn init_boot_cpu() -> Option<usize> {
    let id = mpidr_to_cpu(mpidr())?;
    let local = BOOT_LOCAL.0.get();
    // SAFETY: the only CPU running, before anything reads the area.
    unsafe { (*local).cpu = id };
    set_tpidr(local);
    LOCALS[id].store(local, Ordering::Release);
    ONLINE.fetch_or(1 << id, Ordering::AcqRel);
    Some(id)
}

/// The calling CPU's id.
#[inline]
pub fn this_cpu() -> usize {
    let cpu: usize;
    // SAFETY: `TPIDR_EL1` points at this CPU's `CpuLocal` from `init_boot_cpu` /
    // `secondary_main` on; its first word is the id.
    unsafe {
        asm!("mrs {0}, tpidr_el1", "ldr {0}, [{0}]", out(reg) cpu, options(nostack, preserves_flags, readonly))
    };
    cpu
}

/// The calling CPU's area.
pub fn local() -> &'static CpuLocal {
    let p: *const CpuLocal;
    // SAFETY: reading TPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) p, options(nomem, nostack, preserves_flags)) };
    // SAFETY: it points at a per-CPU area (see `this_cpu`), never freed.
    unsafe { &*p }
}

/// CPU `cpu`'s area, if it has one.
pub fn local_of(cpu: usize) -> Option<&'static CpuLocal> {
    let p = LOCALS.get(cpu)?.load(Ordering::Acquire);
    // SAFETY: the areas are never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether CPU `cpu` is online.
pub fn online(cpu: usize) -> bool {
    cpu < MAX_CPUS && ONLINE.load(Ordering::Acquire) & (1 << cpu) != 0
}

/// Number of CPUs online.
pub fn nr_online() -> usize {
    ONLINE.load(Ordering::Acquire).count_ones() as usize
}

/// `mmkit.inject=shootdown`: TLB invalidation stays on the calling CPU.
pub fn local_only_tlbi() {
    LOCAL_ONLY_TLBI.store(true, Ordering::SeqCst);
}

/// Cross-CPU calls refused so far because the caller had IRQs masked.
pub fn refused_calls() -> u64 {
    REFUSED_CALLS.load(Ordering::SeqCst)
}

// ---- start-up ------------------------------------------------------------------------------

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global secondary_entry
secondary_entry:
    mov x19, x0                     /* context id: the CPU id */
    mrs x0, CurrentEL
    ubfx x0, x0, #2, #2
    cmp x0, #1
    b.eq 1f
    cmp x0, #2
    b.ne 9f
    /* EL2 (PSCI starts CPUs at the highest EL below EL3): to EL1 as `_start` does. */
    mov x0, #(1 << 31)              /* HCR_EL2.RW */
    msr hcr_el2, x0
    mov x0, #3                      /* CNTHCTL_EL2.EL1PCTEN | EL1PCEN */
    msr cnthctl_el2, x0
    msr cntvoff_el2, xzr
    movz x0, #0x0800
    movk x0, #0x30d0, lsl #16       /* SCTLR_EL1 RES1 bits only */
    msr sctlr_el1, x0
    mov x0, #0x3c5                  /* SPSR: EL1h, everything masked */
    msr spsr_el2, x0
    adr x0, 1f
    msr elr_el2, x0
    eret
1:  mov x0, #(3 << 20)              /* CPACR_EL1.FPEN */
    msr cpacr_el1, x0
    isb
    adrp x0, exception_vectors
    add x0, x0, :lo12:exception_vectors
    msr vbar_el1, x0
    adrp x1, {mmu}
    add x1, x1, :lo12:{mmu}
    ldp x2, x3, [x1]
    msr mair_el1, x2
    msr tcr_el1, x3
    ldp x2, x3, [x1, #16]
    msr ttbr0_el1, x2
    msr ttbr1_el1, x3
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x2, [x1, #32]
    msr sctlr_el1, x2
    isb
    cmp x19, #{max_cpus}
    b.hs 9f
    adrp x1, {stacks}
    add x1, x1, :lo12:{stacks}
    ldr x2, [x1, x19, lsl #3]
    cbz x2, 9f
    mov sp, x2
    mov x0, x19
    bl {main}
9:  wfe
    b 9b
    "#,
    mmu = sym AP_MMU,
    stacks = sym AP_STACKS,
    max_cpus = const MAX_CPUS,
    main = sym secondary_main,
);

extern "C" {
    static secondary_entry: u8;
}

fn read_mmu_registers() -> [u64; 5] {
    let (mair, tcr, ttbr0, ttbr1, sctlr): (u64, u64, u64, u64, u64);
    // SAFETY: reading these EL1 system registers has no side effect.
    unsafe {
        asm!("mrs {}, mair_el1", "mrs {}, tcr_el1", "mrs {}, ttbr0_el1", "mrs {}, ttbr1_el1", "mrs {}, sctlr_el1",
             out(reg) mair, out(reg) tcr, out(reg) ttbr0, out(reg) ttbr1, out(reg) sctlr,
             options(nomem, nostack, preserves_flags))
    };
    [mair, tcr, ttbr0, ttbr1, sctlr]
}

/// Set up the boot CPU's GIC interface and timer (the distributor too).
pub fn start_boot_cpu_interrupts() {
    gic::init_distributor();
    gic::init_cpu();
    local()
        .gic_mask
        .store(gic::cpu_interface_mask(), Ordering::Release);
    gic::rearm_timer();
}

/// Give every CPU of `mpidrs` a per-CPU area from mmkit (the boot CPU moves onto its own),
/// start the others with PSCI `CPU_ON` on vmalloc'ed stacks, and wait for them. Returns how
/// many are online (the boot CPU included).
pub fn start_secondaries(mm: &'static KernelMm, mpidrs: &[u64]) -> Result<usize, Reason> {
    let me = this_cpu();
    let mut ids = [0usize; MAX_CPUS];
    ensure!(
        mpidrs.len() <= MAX_CPUS,
        "{} CPUs, at most {MAX_CPUS}",
        mpidrs.len()
    );
    for (id, &m) in ids.iter_mut().zip(mpidrs) {
        let Some(cpu) = mpidr_to_cpu(m) else {
            fail!("MPIDR {m:#x} gives no CPU id below {MAX_CPUS}");
        };
        ensure!(
            cpu < mpidrs.len(),
            "MPIDR {m:#x} is CPU {cpu} of {}",
            mpidrs.len()
        );
        *id = cpu;
    }
    for &cpu in &ids[..mpidrs.len()] {
        let p = mm
            .kzalloc(core::mem::size_of::<CpuLocal>(), GfpFlags::KERNEL)
            .map_err(|e| Reason::new(format_args!("per-CPU area: {e:?}")))?;
        let area = p.cast::<CpuLocal>().as_ptr();
        // SAFETY: a fresh, zeroed, 8-byte-aligned allocation that becomes the area for good.
        unsafe { area.write(CpuLocal::new(cpu)) };
        if cpu == me {
            let mask = local().gic_mask.load(Ordering::Acquire);
            // SAFETY: as above; the boot CPU's GIC bit carries over.
            unsafe { (*area).gic_mask.store(mask, Ordering::Release) };
            set_tpidr(area);
        }
        LOCALS[cpu].store(area, Ordering::Release);
    }
    for (reg, value) in AP_MMU.iter().zip(read_mmu_registers()) {
        reg.store(value, Ordering::Release);
    }
    let mut tlb = crate::facade::tlb();
    let entry = core::ptr::addr_of!(secondary_entry) as u64;
    for (&m, &cpu) in mpidrs.iter().zip(&ids) {
        if cpu == me {
            continue;
        }
        let stack = mm
            .vmalloc(STACK_SIZE, &mut tlb)
            .map_err(|e| Reason::new(format_args!("stack of CPU {cpu}: {e:?}")))?;
        AP_STACKS[cpu].store(stack.as_u64() + STACK_SIZE as u64, Ordering::Release);
        // SAFETY: a barrier: the stores above reach memory before the CPU starts.
        unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
        let ret = psci_cpu_on(m, entry, cpu as u64);
        ensure!(ret == 0, "PSCI CPU_ON({m:#x}) returned {ret}");
    }
    for _ in 0..50_000_000u64 {
        if nr_online() == mpidrs.len() {
            break;
        }
        core::hint::spin_loop();
    }
    Ok(nr_online())
}

extern "C" fn secondary_main(cpu: usize) -> ! {
    let local = LOCALS[cpu].load(Ordering::Acquire);
    if local.is_null() {
        crate::platform::halt_forever();
    }
    set_tpidr(local);
    gic::init_cpu();
    self::local()
        .gic_mask
        .store(gic::cpu_interface_mask(), Ordering::Release);
    gic::rearm_timer();
    ONLINE.fetch_or(1 << cpu, Ordering::AcqRel);
    // SAFETY: the vector table is installed and the GIC delivers only the call SGI and the
    // timer PPI, both handled.
    unsafe { crate::platform::enable_interrupts() };
    let mut seen = 0;
    loop {
        // SAFETY: masking IRQs; `wfi` still wakes on a pending one, taken once unmasked.
        unsafe { asm!("msr daifset, #2", options(nomem, nostack)) };
        if JOBS.pending(seen) {
            // SAFETY: as above.
            unsafe { crate::platform::enable_interrupts() };
            JOBS.poll(cpu, &mut seen);
            continue;
        }
        // SAFETY: waiting for an interrupt, then taking it with IRQs unmasked.
        unsafe { asm!("wfi", "msr daifclr, #2", options(nomem, nostack)) };
    }
}

/// Run `job(cpu)` on every online CPU at once and wait for all, waiting for interrupts
/// between looks.
pub fn run_everywhere(job: fn(usize)) {
    JOBS.run_everywhere(this_cpu(), nr_online() - 1, job, || {
        // SAFETY: waits for the next interrupt (IRQs are unmasked: the caller's contract);
        // every CPU's timer runs, so one always comes.
        unsafe { asm!("wfi", options(nomem, nostack)) }
    });
}

// ---- interrupts ----------------------------------------------------------------------------

/// Let timer handlers allocate, or stop them and wait until none is allocating.
pub fn set_timer_allocations(on: bool) {
    TIMER_ALLOCS.set(on);
}

/// An IRQ, from the vector table.
pub fn handle_irq() {
    while let Some(iar) = gic::acknowledge() {
        match iar & 0x3ff {
            gic::PPI_VTIMER => {
                gic::rearm_timer();
                timer_tick();
            }
            gic::SGI_CALL => {
                if CALLS.handle(this_cpu()) {
                    local().stats.calls_run.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        gic::eoi(iar);
    }
}

fn timer_tick() {
    let stats = &local().stats;
    stats.tick();
    TIMER_ALLOCS.run(|| {
        if let Some(mm) = MM.get() {
            let ok = mmkit_qemu_common::stress::atomic_round(mm, this_cpu() as u64);
            stats.timer_allocs.fetch_add(1, Ordering::Relaxed);
            if !ok {
                stats.timer_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// Run `f` on CPU `cpu` with its IRQs masked and wait. `false`, with `f` not run, if `cpu`
/// is offline or the caller has IRQs masked for another CPU (module docs of
/// [`mmkit_qemu_common::smp`]).
pub fn run_on_cpu(cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
    if cpu == this_cpu() {
        let saved: u64;
        // SAFETY: saving DAIF and masking IRQs is always allowed.
        unsafe { asm!("mrs {}, daif", "msr daifset, #2", out(reg) saved, options(nomem, nostack)) };
        f();
        // SAFETY: restoring the DAIF read above.
        unsafe { asm!("msr daif, {}", in(reg) saved, options(nomem, nostack)) };
        return true;
    }
    let target = match local_of(cpu) {
        // Not started (yet): nothing of it to reach, as mmkit's callers expect.
        _ if !online(cpu) => return false,
        Some(l) if interrupts_enabled() => l.gic_mask.load(Ordering::Acquire),
        _ => {
            REFUSED_CALLS.fetch_add(1, Ordering::SeqCst);
            return false;
        }
    };
    CALLS.call(cpu, f, || {
        gic::send_sgi(target, gic::SGI_CALL);
        local().stats.ipis_sent.fetch_add(1, Ordering::Relaxed);
    })
}

// ---- TLB -----------------------------------------------------------------------------------

/// The kernel's TLB invalidation: inner-shareable broadcast, or (`mmkit.inject=shootdown`)
/// this CPU only.
pub struct KernelTlb {
    shared: InnerShareableTlb,
    local_only: bool,
}

impl KernelTlb {
    /// As the command line chose.
    pub fn new() -> Self {
        Self {
            shared: crate::facade::tlb(),
            local_only: LOCAL_ONLY_TLBI.load(Ordering::Relaxed),
        }
    }
}

// SAFETY: without the injection every call forwards to `InnerShareableTlb`, which reaches
// every CPU. With `mmkit.inject=shootdown` the contract is deliberately broken (other CPUs
// keep their entries) so that the self-test can prove it notices; that boot must fail.
unsafe impl TlbInvalidate for KernelTlb {
    fn invalidate_page(&mut self, va: VirtAddr, size: PageSize, leaf_only: bool) {
        if self.local_only {
            let op = (va.as_u64() >> 12) & ((1 << 44) - 1);
            // SAFETY: EL1; TLBI only drops this CPU's cached translations.
            unsafe { asm!("tlbi vae1, {}", in(reg) op, options(nostack, preserves_flags)) };
        } else {
            self.shared.invalidate_page(va, size, leaf_only);
        }
    }

    fn invalidate_all(&mut self) {
        if self.local_only {
            // SAFETY: EL1; as above.
            unsafe { asm!("tlbi vmalle1", options(nostack, preserves_flags)) };
        } else {
            self.shared.invalidate_all();
        }
    }

    fn begin(&mut self) {
        self.shared.begin();
    }

    fn finish(&mut self) {
        if self.local_only {
            // SAFETY: barriers, this CPU only.
            unsafe { asm!("dsb nsh", "isb", options(nostack, preserves_flags)) };
        } else {
            self.shared.finish();
        }
    }
}

// ---- the stress test's hooks ---------------------------------------------------------------

/// The kernel side of the stress test: one CPU's hooks.
#[derive(Debug, Default)]
pub struct KernelHooks;

impl StressHooks for KernelHooks {
    type Tlb = KernelTlb;

    fn tlb(&self) -> KernelTlb {
        KernelTlb::new()
    }

    fn vmalloc_ptr(&self, va: VirtAddr) -> Option<NonNull<u8>> {
        NonNull::new(va.as_u64() as *mut u8)
    }

    fn enter_mm(&self) {
        local().stats.in_mm.fetch_add(1, Ordering::Relaxed);
    }

    fn leave_mm(&self) {
        local().stats.in_mm.fetch_sub(1, Ordering::Relaxed);
    }

    fn write_nofault(&self, va: VirtAddr, value: u8) -> Option<bool> {
        // SAFETY: the caller owns the byte if it is writable; a fault is caught.
        Some(unsafe { crate::exceptions::write_u8_nofault(va.as_u64(), value) }.is_ok())
    }
}

/// The kernel as the stress test drives it.
pub struct Kernel;

impl SmpKernel for Kernel {
    type Hooks = KernelHooks;

    fn cpu_stats(&self, cpu: usize) -> Option<mmkit_qemu_common::smp::StatsSnapshot> {
        local_of(cpu).map(|l| l.stats.snapshot())
    }

    fn online(&self, cpu: usize) -> bool {
        online(cpu)
    }

    fn run_everywhere(&self, job: fn(usize)) {
        run_everywhere(job);
    }

    fn set_timer_allocations(&self, on: bool) {
        set_timer_allocations(on);
    }

    fn this_cpu(&self) -> usize {
        this_cpu()
    }

    fn verify_stopped(&self) -> Result<(), Reason> {
        let saved: u64;
        // SAFETY: saving DAIF and masking IRQs is always allowed.
        unsafe { asm!("mrs {}, daif", "msr daifset, #2", out(reg) saved, options(nomem, nostack)) };
        // SAFETY: the other CPUs are idle (their jobs returned) and their timer handlers no
        // longer allocate (the caller closed the gate, which waited for the last), this
        // CPU's IRQs are masked, and no reference to the `Mm` is used until this returns.
        let verified = unsafe { MM.verify_stopped() };
        // SAFETY: restoring the DAIF read above.
        unsafe { asm!("msr daif, {}", in(reg) saved, options(nomem, nostack)) };
        match verified {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => fail!("verify after the stress run: {e}"),
            None => fail!("no mm installed"),
        }
    }
}
