//! Many CPUs: per-CPU areas, application-processor start-up, interrupts, cross-CPU calls and
//! TLB shootdown.
//!
//! ## CPU ids and per-CPU areas
//! A CPU's id is its local APIC id (QEMU numbers them 0..n-1); the machine's CPUs are the
//! enabled local APICs of the ACPI MADT (`memmap::read_madt`), the platform's CPU count is
//! the highest of their ids plus one, and an id must be below it to come online. Each CPU's
//! `GS` base points at its [`CpuLocal`] (Linux's per-CPU offset in `GS`): word 0 is the id, so
//! [`this_cpu`] is one `mov` from `gs:0`; word 1 points at the area itself. The boot CPU starts
//! on a static area (set before anything asks for the CPU id) and moves to one allocated from
//! mmkit with the others' in [`start_aps`].
//!
//! ## Start-up (Intel SDM vol. 3A 9.4.4)
//! The real-mode trampoline below is copied to a page below 1 MiB that the facade allocated
//! from bootmem, patched with its own address, and the boot CPU broadcasts INIT-SIPI-SIPI.
//! Every AP runs the trampoline at once: real mode → protected mode (the trampoline's GDT) →
//! long mode on the boot tables (`boot_pml4`, identity of the low 4 GiB, below 4 GiB as a
//! 32-bit CR3 must be) → `ap_entry64` in the kernel, which loads the kernel GDT, the facade's
//! page table ([`AP_CR3`]) and the stack the boot CPU allocated for its APIC id
//! ([`AP_STACKS`], vmalloc'ed: the guard page ending the area before lies below each), and
//! calls `ap_main`. `ap_main` switches `GS` to its area, loads the IDT, enables its APIC and
//! timer, marks itself online and waits for work with interrupts on. The trampoline page
//! then goes back to the buddy (`Mm::free_reserved_range`).
//!
//! ## Interrupts
//! Every CPU's APIC timer ticks ([`apic::TIMER_COUNT`]); the handler, while
//! [`set_timer_allocations`] allows it, does a `GFP_ATOMIC` kmalloc/kfree and an order-0
//! `alloc_pages`/`free_pages` — also when it interrupted a worker inside mmkit, which the
//! CPU's `CpuStats::in_mm` tells it (counted in `ticks_in_mm`). The platform's interrupt guard
//! is the real `pushfq/cli … popf` (`platform::Cpus`).
//!
//! ## Cross-CPU calls and shootdown
//! [`run_on_cpu`] puts a pointer to the caller's closure in the target's call slot
//! ([`mmkit_qemu_common::smp::CallSlots`]), sends the [`apic::VECTOR_CALL`] IPI and spins,
//! interrupts on, until the target's handler has run it (interrupts off there: a section of
//! that CPU). One caller per target at a time; the caller must have interrupts on (two CPUs
//! calling each other with interrupts off would wait forever), otherwise the call is refused
//! and counted. A CPU that is not online is not reached (`false`), as mmkit's callers
//! expect. [`ShootdownTlb`] invalidates locally
//! and, at the end of each flush token, replays the same invalidations on every other
//! online CPU through [`run_on_cpu`], waiting for each.
//!
//! With PCIDs on (`mmu::enable_pcids`), each AP sets CR4.PCIDE in `ap_entry64` (still on the
//! boot tables, PCID 0) and loads the boot CPU's CR3 with its PCID, so every CPU runs the
//! facade's table under `mmu::KERNEL_PCID` and nothing else. That keeps [`ShootdownTlb`]
//! correct unchanged: `invlpg` drops the address's translations in the current PCID (the
//! table's, on every CPU) and its global ones, and the CR4.PGE toggle drops every PCID's
//! entries. The facade table's tokens never carry a PCID (its leaves are global), and the
//! ASID-scoped methods fall back to those two anyway.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use mmkit::addr::{PageSize, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::pgtable::arch::x86_64_hw;
use mmkit::pgtable::TlbInvalidate;
use mmkit_qemu_common::harness::Reason;
use mmkit_qemu_common::smp::{self, AllocGate, CallSlots, CpuStats, Jobs};
use mmkit_qemu_common::stress::{SmpKernel, StressHooks};
use mmkit_qemu_common::{ensure, fail};

use crate::apic;
use crate::facade::{KernelMm, GLOBAL};
use crate::mmu::DIRECT_MAP_BASE;
use crate::platform::interrupts_enabled;

/// The most CPUs this kernel runs (APIC ids at or above are not started).
pub const MAX_CPUS: usize = smp::MAX_CPUS;

/// Stack of each application processor (vmalloc'ed: the guard page that ends the area before
/// it lies just below).
pub const AP_STACK_SIZE: usize = 64 * 1024;

/// One CPU's per-CPU area.
#[repr(C)]
pub struct CpuLocal {
    /// The CPU id (APIC id); `gs:0`.
    cpu: usize,
    /// This area's own address; `gs:8`.
    this: *const CpuLocal,
    /// The CPU's counters.
    pub stats: CpuStats,
}

impl CpuLocal {
    const fn new(cpu: usize) -> Self {
        Self {
            cpu,
            this: core::ptr::null(),
            stats: CpuStats::new(),
        }
    }
}

/// The boot CPU's area until [`start_aps`] gives it one from mmkit.
struct BootLocal(UnsafeCell<CpuLocal>);
// SAFETY: written once by `init_boot_cpu` before any other CPU runs; the rest are atomics.
unsafe impl Sync for BootLocal {}
static BOOT_LOCAL: BootLocal = BootLocal(UnsafeCell::new(CpuLocal::new(0)));

/// Every CPU's area, by id (null until allocated).
static LOCALS: [AtomicPtr<CpuLocal>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// Bit `i` set: CPU `i` is online.
static ONLINE: AtomicU64 = AtomicU64::new(0);
/// Cross-CPU calls refused because the caller had interrupts off.
static REFUSED_CALLS: AtomicU64 = AtomicU64::new(0);
/// Shootdowns that did not reach a CPU.
static SHOOTDOWN_FAILURES: AtomicU64 = AtomicU64::new(0);
/// `mmkit.inject=shootdown`: skip the remote part of every shootdown.
static SKIP_SHOOTDOWN: AtomicBool = AtomicBool::new(false);
/// Whether timer handlers allocate.
static TIMER_ALLOCS: AllocGate = AllocGate::new();
/// Every CPU's incoming cross-CPU call.
static CALLS: CallSlots = CallSlots::new();
/// Jobs for every CPU.
static JOBS: Jobs = Jobs::new();

/// The boot CPU's CR3 (the facade's root, with its PCID when PCIDs are on), for `ap_entry64`.
static AP_CR3: AtomicU64 = AtomicU64::new(0);
/// CR4 bits `ap_entry64` sets before loading [`AP_CR3`] (`mmu::ap_cr4_bits`: PCIDE).
static AP_CR4: AtomicU64 = AtomicU64::new(0);
/// Each AP's initial stack pointer, by APIC id (0: no stack, the AP halts).
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

const MSR_GS_BASE: u32 = 0xc000_0101;

fn set_gs_base(local: *const CpuLocal) {
    let v = local as u64;
    // SAFETY: IA32_GS_BASE only changes what `gs:`-relative accesses reach; this kernel
    // uses them only for its per-CPU area, which `local` is and which lives forever.
    unsafe {
        asm!("wrmsr", in("ecx") MSR_GS_BASE, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// Point `GS` at the boot CPU's static area, with its APIC id. Call first thing in `kmain`.
pub fn init_boot_cpu() {
    let id = apic::cpuid_apic_id();
    let local = BOOT_LOCAL.0.get();
    // SAFETY: the only CPU running, before anything reads the area.
    unsafe {
        (*local).cpu = id;
        (*local).this = local;
    }
    set_gs_base(local);
    if id < MAX_CPUS {
        LOCALS[id].store(local, Ordering::Release);
        ONLINE.fetch_or(1 << id, Ordering::AcqRel);
    }
}

/// The calling CPU's id.
#[inline]
pub fn this_cpu() -> usize {
    let cpu: usize;
    // SAFETY: `GS` points at this CPU's `CpuLocal` from `init_boot_cpu`/`ap_main` on, whose
    // first word is the id.
    unsafe { asm!("mov {}, gs:[0]", out(reg) cpu, options(nostack, preserves_flags, readonly)) };
    cpu
}

/// The calling CPU's area.
pub fn local() -> &'static CpuLocal {
    let p: *const CpuLocal;
    // SAFETY: as `this_cpu`; word 1 is the area's address.
    unsafe { asm!("mov {}, gs:[8]", out(reg) p, options(nostack, preserves_flags, readonly)) };
    // SAFETY: the areas are never freed.
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

/// `mmkit.inject=shootdown`.
pub fn skip_shootdowns() {
    SKIP_SHOOTDOWN.store(true, Ordering::SeqCst);
}

/// Counters the self-test checks: refused calls and failed shootdowns.
pub fn failures() -> (u64, u64) {
    (
        REFUSED_CALLS.load(Ordering::SeqCst),
        SHOOTDOWN_FAILURES.load(Ordering::SeqCst),
    )
}

// ---- start-up ------------------------------------------------------------------------------

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline, ap_trampoline_end, tr_gdt, tr_gdtr, tr_pm32, tr_far32, tr_far64, tr_cr3, tr_efer
    .code16
ap_trampoline:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    xor %ebx, %ebx
    mov %ax, %bx
    shl $4, %ebx                    /* %ebx: the trampoline's physical address */
    lgdtl (tr_gdtr - ap_trampoline)
    mov %cr0, %eax
    or $1, %eax                     /* PE */
    mov %eax, %cr0
    ljmpl *(tr_far32 - ap_trampoline)

    .code32
tr_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $(1 << 5), %eax              /* PAE */
    mov %eax, %cr4
    mov (tr_cr3 - ap_trampoline)(%ebx), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER */
    rdmsr
    or (tr_efer - ap_trampoline)(%ebx), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax            /* PG | WP | PE */
    mov %eax, %cr0
    ljmpl *(tr_far64 - ap_trampoline)(%ebx)

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00209b0000000000        /* 0x08: 64-bit code, as the kernel's */
    .quad 0x00cf93000000ffff        /* 0x10: flat 4 GiB data */
    .quad 0x00cf9b000000ffff        /* 0x18: flat 32-bit code */
tr_gdtr:
    .word 4 * 8 - 1
    .long 0                         /* patched: physical address of tr_gdt */
tr_far32:
    .long 0                         /* patched: physical address of tr_pm32 */
    .word 0x18
tr_far64:
    .long 0                         /* patched: ap_entry64 (the kernel is below 4 GiB) */
    .word 0x08
tr_cr3:
    .long 0                         /* patched: boot_pml4 */
tr_efer:
    .long 0                         /* patched: LME, and NXE if the CPU has NX */
ap_trampoline_end:
    .code64

    .section .text.ap, "ax"
    .global ap_entry64
ap_entry64:
    lgdt boot_gdt_ptr(%rip)
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $1, %eax
    cpuid
    shr $24, %ebx                   /* initial APIC id */
    cmp ${max_cpus}, %ebx
    jae 9f
    mov {ap_cr4}(%rip), %rcx        /* PCIDE if the boot CPU has it; CR3 is boot_pml4, */
    mov %cr4, %rdx                  /* PCID 0, as setting PCIDE requires */
    or %rcx, %rdx
    mov %rdx, %cr4
    mov {ap_cr3}(%rip), %rax
    mov %rax, %cr3                  /* the facade's table, with the boot CPU's PCID */
    lea {ap_stacks}(%rip), %rax
    mov (%rax, %rbx, 8), %rsp
    test %rsp, %rsp
    jz 9f
    mov %ebx, %edi
    xor %ebp, %ebp
    call {ap_main}
9:  cli
    hlt
    jmp 9b
    "#,
    max_cpus = const MAX_CPUS,
    ap_cr3 = sym AP_CR3,
    ap_cr4 = sym AP_CR4,
    ap_stacks = sym AP_STACKS,
    ap_main = sym ap_main,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
    static tr_gdt: u8;
    static tr_gdtr: u8;
    static tr_pm32: u8;
    static tr_far32: u8;
    static tr_far64: u8;
    static tr_cr3: u8;
    static tr_efer: u8;
    static ap_entry64: u8;
    static boot_pml4: u8;
}

/// Offset of trampoline symbol `sym` from its start.
fn tr_offset(sym: *const u8) -> usize {
    sym as usize - core::ptr::addr_of!(ap_trampoline) as usize
}

/// Copy the trampoline to `page` (physical, below 1 MiB, reached through the direct map) and
/// patch its addresses.
fn install_trampoline(page: PhysAddr, nx: bool) -> Result<(), Reason> {
    let start = core::ptr::addr_of!(ap_trampoline);
    let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
    ensure!(
        len <= PAGE_SIZE as usize && page.as_u64() < 1 << 20 && page.as_u64() % PAGE_SIZE == 0,
        "trampoline of {len} bytes does not fit at {page:?}"
    );
    let dst = (DIRECT_MAP_BASE + page.as_u64()) as *mut u8;
    let pa = page.as_u64() as u32;
    let patch32 = |sym: *const u8, value: u32| {
        // SAFETY: `sym` is a 4-byte field inside the copied trampoline (offset below `len`).
        unsafe { dst.add(tr_offset(sym)).cast::<u32>().write_unaligned(value) };
    };
    // SAFETY: the page is the trampoline page the facade allocated for this, mapped RW in the
    // direct map, and nothing else uses it; `len` bytes fit.
    unsafe { core::ptr::copy_nonoverlapping(start, dst, len) };
    let efer = (1 << 8) | if nx { 1 << 11 } else { 0 };
    patch32(
        core::ptr::addr_of!(tr_gdtr).wrapping_add(2),
        pa + tr_offset(core::ptr::addr_of!(tr_gdt)) as u32,
    );
    patch32(
        core::ptr::addr_of!(tr_far32),
        pa + tr_offset(core::ptr::addr_of!(tr_pm32)) as u32,
    );
    patch32(
        core::ptr::addr_of!(tr_far64),
        core::ptr::addr_of!(ap_entry64) as u32,
    );
    patch32(
        core::ptr::addr_of!(tr_cr3),
        core::ptr::addr_of!(boot_pml4) as u32,
    );
    patch32(core::ptr::addr_of!(tr_efer), efer);
    Ok(())
}

/// Give every CPU of `ids` (APIC ids, the boot CPU's among them) a per-CPU area from mmkit
/// (the boot CPU moves onto its own), start every other CPU on the trampoline at `trampoline`
/// with a vmalloc'ed stack, and wait for them. Returns how many came online (the boot CPU
/// included).
pub fn start_aps(
    mm: &'static KernelMm,
    trampoline: PhysAddr,
    ids: &[usize],
) -> Result<usize, Reason> {
    let me = this_cpu();
    ensure!(
        ids.contains(&me) && ids.iter().all(|&c| c < MAX_CPUS),
        "CPU ids {ids:?}, boot CPU {me}; ids below {MAX_CPUS}"
    );
    let nr = ids.len();
    for &cpu in ids {
        let p = mm
            .kzalloc(core::mem::size_of::<CpuLocal>(), GfpFlags::KERNEL)
            .map_err(|e| Reason::new(format_args!("per-CPU area: {e:?}")))?;
        let local = p.cast::<CpuLocal>().as_ptr();
        // SAFETY: a fresh, zeroed, suitably aligned (kmalloc aligns to 8) allocation that
        // becomes the CPU's area for good.
        unsafe {
            local.write(CpuLocal::new(cpu));
            (*local).this = local;
        }
        LOCALS[cpu].store(local, Ordering::Release);
        if cpu == me {
            set_gs_base(local);
        }
    }
    if nr == 1 {
        return Ok(1);
    }
    let mut tlb = crate::facade::tlb();
    for &cpu in ids.iter().filter(|&&c| c != me) {
        let va = mm
            .vmalloc(AP_STACK_SIZE, &mut tlb)
            .map_err(|e| Reason::new(format_args!("stack of CPU {cpu}: {e:?}")))?;
        AP_STACKS[cpu].store(va.as_u64() + AP_STACK_SIZE as u64, Ordering::Release);
    }
    // SAFETY: CPL 0; reading CR3 has no side effect.
    let cr3 = unsafe { x86_64_hw::read_cr3() };
    AP_CR4.store(crate::mmu::ap_cr4_bits(), Ordering::Release);
    AP_CR3.store(cr3, Ordering::Release);
    install_trampoline(trampoline, crate::mmu::paging_features().nx)?;
    apic::start_all_others(trampoline.as_u64());
    // Bounded wait: about a second on hardware, far more under TCG.
    for _ in 0..100_000 {
        if nr_online() == nr {
            break;
        }
        apic::udelay(10);
    }
    Ok(nr_online())
}

/// The Rust side of an AP's start: `ap_entry64` calls it on its own stack with the facade's
/// table loaded.
extern "C" fn ap_main(apic_id: usize) -> ! {
    let local = LOCALS[apic_id].load(Ordering::Acquire);
    if local.is_null() {
        crate::platform::halt_forever();
    }
    set_gs_base(local);
    crate::traps::load_idt();
    apic::enable();
    apic::start_timer();
    ONLINE.fetch_or(1 << apic_id, Ordering::AcqRel);
    // SAFETY: the IDT is loaded and handles the timer, call and spurious vectors.
    unsafe { crate::platform::enable_interrupts() };
    idle(apic_id)
}

fn idle(cpu: usize) -> ! {
    let mut seen = 0;
    loop {
        // SAFETY: masking interrupts until the `sti; hlt` pair, which cannot lose a wake-up.
        unsafe { asm!("cli", options(nomem, nostack)) };
        if JOBS.pending(seen) {
            // SAFETY: the IDT is loaded.
            unsafe { crate::platform::enable_interrupts() };
            JOBS.poll(cpu, &mut seen);
            continue;
        }
        // SAFETY: `sti; hlt`: the interrupt that ends the halt is taken after `sti`'s shadow.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

/// Run `job(cpu)` on every online CPU at once (the caller's share on the caller), with
/// interrupts on, and wait for all, halting between looks.
pub fn run_everywhere(job: fn(usize)) {
    JOBS.run_everywhere(this_cpu(), nr_online() - 1, job, || {
        // SAFETY: `sti; hlt` (interrupts were on: the caller's contract) waits for the next
        // timer tick or IPI; every CPU's timer runs, so a tick always comes.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
    });
}

// ---- interrupts ----------------------------------------------------------------------------

/// Start the boot CPU's APIC and timer.
pub fn start_boot_cpu_timer() {
    apic::enable();
    apic::start_timer();
}

/// Let timer handlers allocate (`true`), or stop them and wait until none is allocating.
pub fn set_timer_allocations(on: bool) {
    TIMER_ALLOCS.set(on);
}

/// An interrupt (vector 32 or above) from `traps`.
pub fn handle_irq(vector: u8) {
    match vector {
        apic::VECTOR_TIMER => {
            timer_tick();
            apic::eoi();
        }
        apic::VECTOR_CALL => {
            run_call();
            apic::eoi();
        }
        _ => {} // spurious: no EOI
    }
}

fn timer_tick() {
    let stats = &local().stats;
    stats.tick();
    TIMER_ALLOCS.run(|| {
        if let Some(mm) = GLOBAL.get() {
            let ok = mmkit_qemu_common::stress::atomic_round(mm, this_cpu() as u64);
            stats.timer_allocs.fetch_add(1, Ordering::Relaxed);
            if !ok {
                stats.timer_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

// ---- cross-CPU calls -----------------------------------------------------------------------

fn run_call() {
    if CALLS.handle(this_cpu()) {
        local().stats.calls_run.fetch_add(1, Ordering::Relaxed);
    }
}

/// Run `f` on CPU `cpu` with its interrupts off and wait (see the module docs). `false`, with
/// `f` not run, if `cpu` is offline or the caller has interrupts off for another CPU.
pub fn run_on_cpu(cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
    if cpu == this_cpu() {
        let was = interrupts_enabled();
        // SAFETY: masking interrupts is always allowed.
        unsafe { asm!("cli", options(nomem, nostack)) };
        f();
        if was {
            // SAFETY: interrupts were on, so the IDT is loaded.
            unsafe { crate::platform::enable_interrupts() };
        }
        return true;
    }
    if !online(cpu) {
        // Not started (yet): nothing of it to reach, as mmkit's callers expect.
        return false;
    }
    if !interrupts_enabled() {
        REFUSED_CALLS.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    CALLS.call(cpu, f, || {
        apic::send_ipi(cpu, apic::VECTOR_CALL);
        local().stats.ipis_sent.fetch_add(1, Ordering::Relaxed);
    })
}

// ---- TLB shootdown -------------------------------------------------------------------------

/// Invalidations recorded per token before falling back to a full flush.
const SHOOTDOWN_PAGES: usize = mmkit::pgtable::FLUSH_CEILING as usize;

/// The kernel's TLB invalidation on SMP (module docs): local `invlpg` as the token asks, then
/// the same on every other online CPU through an IPI, waited for, at the token's end.
pub struct ShootdownTlb {
    pages: [u64; SHOOTDOWN_PAGES],
    len: usize,
    all: bool,
}

impl ShootdownTlb {
    /// An invalidator with nothing recorded.
    pub fn new() -> Self {
        Self {
            pages: [0; SHOOTDOWN_PAGES],
            len: 0,
            all: false,
        }
    }
}

fn flush_local(pages: &[u64], all: bool) {
    // SAFETY: CPL 0; interrupts are off (IPI handler or the guard below) for the full flush.
    unsafe {
        if all {
            x86_64_hw::flush_all_including_global();
        } else {
            for &va in pages {
                x86_64_hw::invlpg(VirtAddr::new(va));
            }
        }
    }
}

// SAFETY: `invalidate_page`/`invalidate_all` drop the translations on this CPU at once;
// `finish` drops the same on every other online CPU (the only CPUs that run the facade's
// table) and returns only when they have, counting a CPU it could not reach as a failure the
// self-test reports. Only the `mmkit.inject=shootdown` boot skips them, to prove the
// self-test notices.
unsafe impl TlbInvalidate for ShootdownTlb {
    fn invalidate_page(&mut self, va: VirtAddr, _size: PageSize, _leaf_only: bool) {
        flush_local(&[va.as_u64()], false);
        if self.len < SHOOTDOWN_PAGES {
            self.pages[self.len] = va.as_u64();
            self.len += 1;
        } else {
            self.all = true;
        }
    }

    fn invalidate_all(&mut self) {
        run_on_cpu(this_cpu(), &|| flush_local(&[], true));
        self.all = true;
    }

    fn finish(&mut self) {
        let (pages, all) = (&self.pages[..self.len], self.all);
        if (pages.is_empty() && !all) || SKIP_SHOOTDOWN.load(Ordering::Relaxed) {
            self.len = 0;
            self.all = false;
            return;
        }
        let me = this_cpu();
        for cpu in (0..MAX_CPUS).filter(|&c| c != me && online(c)) {
            if !run_on_cpu(cpu, &|| flush_local(pages, all)) {
                SHOOTDOWN_FAILURES.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.len = 0;
        self.all = false;
    }
}

// ---- the stress test's hooks and the shootdown check ----------------------------------------

/// The kernel side of the stress test: one CPU's hooks.
#[derive(Debug, Default)]
pub struct KernelHooks;

impl StressHooks for KernelHooks {
    type Tlb = ShootdownTlb;

    fn tlb(&self) -> ShootdownTlb {
        ShootdownTlb::new()
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
        Some(unsafe { crate::traps::write_u8_nofault(va.as_u64(), value) }.is_ok())
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
        let was = interrupts_enabled();
        // SAFETY: masking interrupts is always allowed.
        unsafe { asm!("cli", options(nomem, nostack)) };
        // SAFETY: the other CPUs are idle (their jobs returned) and their timer handlers no
        // longer allocate (the caller closed the gate, which waited for the last), this
        // CPU's interrupts are off, and no reference to the `Mm` is used until this returns.
        let verified = unsafe { GLOBAL.verify_stopped() };
        if was {
            // SAFETY: interrupts were on, so the IDT is loaded.
            unsafe { crate::platform::enable_interrupts() };
        }
        match verified {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => fail!("verify after the stress run: {e}"),
            None => fail!("no global allocator"),
        }
    }
}

/// Physical range of the trampoline page for `free_reserved_range`.
pub fn trampoline_range(page: PhysAddr) -> PhysRange {
    PhysRange::from_start_size(page, PAGE_SIZE).unwrap_or(PhysRange::EMPTY)
}
