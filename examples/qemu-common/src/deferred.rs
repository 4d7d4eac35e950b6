//! Deferred memmap initialisation in the kernels (issue 15).
//!
//! The kernels boot mmkit with [`MmBuilder::deferred_init`](mmkit::MmBuilder::deferred_init):
//! each node initialises the page descriptors of its first [`boot_frames`] frames, and the
//! rest of its memory waits in the hand-off. Two checks follow it:
//! * [`boots_with_the_rest_deferred`], right after boot: the deferred part is non-empty, and
//!   meminfo's `Deferred` line holds exactly what the buddy still has to initialise;
//! * [`complete_on_every_cpu`], once the other CPUs are online (on one CPU, the boot CPU
//!   alone): every online CPU runs steps of [`Mm::deferred_init_step`] over every node at
//!   once (Linux starts one `deferred_init_memmap` thread per node and splits the work with
//!   padata), while the timer handlers keep allocating. Afterwards nothing is deferred,
//!   `MemTotal` grew by exactly what `Deferred` held, a second completion is refused with
//!   [`DeferredError::Complete`] and changes nothing, and the full `verify` passes.
//!
//! In between, the single-CPU checks run on the partly initialised memory, so whatever they
//! need past the first part comes from the buddy's on-demand growth (Linux
//! `deferred_grow_zone`). The movable check takes every free huge block, so its allocations
//! grow the deferred part on demand until nothing is left: [`after_movable_check`] checks
//! that. To leave the deferred part for the SMP part, a boot asks for
//! [`COMPLETE_PARAM`]`=smp` and the movable check is skipped ([`before_movable_check`]).

use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use mmkit::addr::{IrqControl, PAGE_SIZE};
use mmkit::buddy::DeferredError;
use mmkit::pgtable::PagingFormat;
use mmkit::{MemInfo, Mm};

use crate::cmdline;
use crate::harness::{CheckResult, Harness, Reason};
use crate::mm_checks::MovableFigures;
use crate::smp::MAX_CPUS;
use crate::stress::SmpKernel;
use crate::{ensure, fail};

/// The command-line parameter: `mmkit.deferred=64M` initialises the first 64 MiB of each node
/// at boot, `mmkit.deferred=off` (or `0`) initialises everything at boot.
pub const DEFERRED_PARAM: &str = "mmkit.deferred";

/// Bytes per node initialised at boot when the command line does not say.
pub const DEFAULT_BOOT_BYTES: u64 = 64 << 20;

/// The command-line parameter that says who completes the deferred part:
/// `mmkit.deferred_complete=smp` (every online CPU at once in the SMP part, which then skips
/// the movable check: it takes every free huge block and so would initialise everything on
/// demand first) or `demand` (the default: whatever allocations need, grown on demand; the
/// movable check's allocations end up initialising all of it).
pub const COMPLETE_PARAM: &str = "mmkit.deferred_complete";

/// Who completes the deferred memmap ([`COMPLETE_PARAM`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Allocations grow it on demand (the movable check takes everything).
    OnDemand,
    /// Every online CPU at once, in the SMP part.
    Smp,
}

/// [`Completion`] from the command line; `Err(value)` for an unknown value.
pub fn completion(cmdline: &str) -> Result<Completion, &str> {
    match cmdline::param(cmdline, COMPLETE_PARAM) {
        None | Some("demand") => Ok(Completion::OnDemand),
        Some("smp") => Ok(Completion::Smp),
        Some(other) => Err(other),
    }
}

/// Frames per step a CPU initialises in [`complete_on_every_cpu`] (4 MiB of 4 KiB frames, one
/// max-order block): small enough that several CPUs share a node's work, and that a step
/// keeps interrupts off only briefly.
pub const STEP_FRAMES: u64 = 1024;

/// Spins a CPU waits at the job's start for the others to arrive before it gives up waiting
/// (a CPU that never arrives must not hang the run).
const START_SPINS: u64 = 1 << 26;

/// Frames per node the kernel initialises at boot as the command line asks: `Ok(None)` for
/// no deferral, `Err(value)` for a value that is neither a size nor `off`.
pub fn boot_frames(cmdline: &str, page_size: u64) -> Result<Option<u64>, &str> {
    let Some(value) = cmdline::param(cmdline, DEFERRED_PARAM) else {
        return Ok(Some(DEFAULT_BOOT_BYTES / page_size));
    };
    if value == "off" {
        return Ok(None);
    }
    match cmdline::parse_size(value) {
        Some(0) => Ok(None),
        Some(bytes) => Ok(Some(bytes.div_ceil(page_size))),
        None => Err(value),
    }
}

/// What the kernel's facade part needs to know about deferral: the boot-time share and who
/// completes the rest, from `cmdline`, with a failing check `mm_deferred_parameters_are_valid`
/// for malformed values (the kernel then boots without deferral).
pub fn plan<W: Write>(h: &mut Harness<W>, cmdline: &str) -> (Option<u64>, Completion) {
    match (boot_frames(cmdline, PAGE_SIZE), completion(cmdline)) {
        (Ok(frames), Ok(c)) => (frames, c),
        (frames, c) => {
            h.run("mm_deferred_parameters_are_valid", || {
                fail!(
                    "{DEFERRED_PARAM}: {:?}, {COMPLETE_PARAM}: {:?}",
                    frames.err(),
                    c.err()
                )
            });
            (None, Completion::OnDemand)
        }
    }
}

/// The movable check (`movable_pages_migrate_under_compaction`, `check` running
/// [`movable_pages_compact`](crate::mm_checks::movable_pages_compact)) as deferral allows
/// it: skipped while the deferred memory waits for the SMP part ([`before_movable_check`]),
/// its figures printed, then [`after_movable_check`].
pub fn movable_check<'m, W, P, F>(
    h: &mut Harness<W>,
    mm: &mut Mm<'m, P, F>,
    completion: Completion,
    check: impl FnOnce(&mut Mm<'m, P, F>) -> Result<MovableFigures, Reason>,
) where
    W: Write,
    P: IrqControl,
    F: PagingFormat,
{
    let Some(before) = before_movable_check(h, mm, completion) else {
        return;
    };
    let mut figures = None;
    h.run("movable_pages_migrate_under_compaction", || {
        figures = Some(check(mm)?);
        Ok(())
    });
    if let Some(f) = figures {
        let _ = writeln!(h.out(), "mmkit-qemu: movable: {f}");
    }
    after_movable_check(h, mm, &before);
}

/// Before the movable check: `Some(meminfo)` if it is to run, `None` (and the check reported
/// as skipped) when deferred memory waits for the SMP part.
pub fn before_movable_check<W: Write, P: IrqControl, F: PagingFormat>(
    h: &mut Harness<W>,
    mm: &Mm<'_, P, F>,
    completion: Completion,
) -> Option<MemInfo> {
    if completion == Completion::Smp && mm.deferred_frames() > 0 {
        h.skip(
            "movable_pages_migrate_under_compaction",
            "it takes every free huge block; the deferred memory waits for the SMP part",
        );
        return None;
    }
    Some(mm.meminfo())
}

/// After the movable check, when memory was deferred before it: its allocations (it takes
/// every free huge block) grew the deferred memmap on demand until nothing was left, and
/// `MemTotal` grew by exactly what `Deferred` held (`mm_deferred_memory_grew_on_demand`).
pub fn after_movable_check<W: Write, P: IrqControl, F: PagingFormat>(
    h: &mut Harness<W>,
    mm: &Mm<'_, P, F>,
    before: &MemInfo,
) {
    if before.deferred_kb == 0 {
        return;
    }
    h.run("mm_deferred_memory_grew_on_demand", || {
        all_initialised(mm, before, &mm.meminfo())
    });
}

/// Nothing is deferred any more, and `MemTotal` (`after`) grew by exactly what `Deferred`
/// held in `before`.
fn all_initialised<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
    before: &MemInfo,
    after: &MemInfo,
) -> CheckResult {
    ensure!(
        mm.deferred_frames() == 0 && after.deferred_kb == 0,
        "{} frames still deferred ({} KiB in meminfo)",
        mm.deferred_frames(),
        after.deferred_kb
    );
    ensure!(
        after.total_kb == before.total_kb + before.deferred_kb,
        "MemTotal {} KiB, expected {} + {} deferred",
        after.total_kb,
        before.total_kb,
        before.deferred_kb
    );
    Ok(())
}

/// The check right after boot, when the kernel booted with deferral: prints the split and
/// runs `mm_boots_with_the_rest_deferred` ([`boots_with_the_rest_deferred`]).
pub fn check_after_boot<W: Write, P: IrqControl, F: PagingFormat>(
    h: &mut Harness<W>,
    mm: &Mm<'_, P, F>,
) {
    let info = mm.meminfo();
    let _ = writeln!(
        h.out(),
        "mmkit-qemu: deferred init: {} KiB in the buddy at boot, {} KiB deferred ({} frames of descriptors not yet written)",
        info.total_kb,
        info.deferred_kb,
        mm.deferred_frames()
    );
    h.run("mm_boots_with_the_rest_deferred", || {
        boots_with_the_rest_deferred(mm)
    });
}

/// Right after boot: the memory past each node's first part is deferred, and meminfo says so.
pub fn boots_with_the_rest_deferred<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
) -> CheckResult {
    let deferred = mm.deferred_frames();
    let info = mm.meminfo();
    ensure!(deferred > 0, "nothing is deferred");
    ensure!(
        info.deferred_kb > 0 && info.deferred_kb <= deferred * (PAGE_SIZE / 1024),
        "meminfo's Deferred is {} KiB for {deferred} deferred frames",
        info.deferred_kb
    );
    Ok(())
}

/// The SMP check `smp_deferred_init_completes_on_every_cpu` ([`complete_on_every_cpu`]),
/// run when something is still deferred (skipped, saying why, when on-demand growth already
/// initialised everything).
pub fn smp_check<W: Write, P, F, K>(
    h: &mut Harness<W>,
    mm: &'static Mm<'static, P, F>,
    kernel: &K,
    out: &mut impl Write,
) where
    P: IrqControl + 'static,
    F: PagingFormat + 'static,
    K: SmpKernel,
{
    if mm.deferred_frames() == 0 {
        h.skip(
            "smp_deferred_init_completes_on_every_cpu",
            "nothing deferred: booted without deferral, or grown on demand",
        );
        return;
    }
    h.run("smp_deferred_init_completes_on_every_cpu", || {
        complete_on_every_cpu(mm, kernel, out)
    });
}

/// Frames each CPU initialised in the last [`complete_on_every_cpu`], and its steps.
static FRAMES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static STEPS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Steps that failed with anything but `Complete` / `NoSuchNode` (their count; the first
/// error's code in [`FIRST_ERROR`]).
static ERRORS: AtomicU64 = AtomicU64::new(0);
static FIRST_ERROR: AtomicU64 = AtomicU64::new(0);
/// The `Mm` the job works on, published by [`complete_on_every_cpu`] for its run.
static MM: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// CPUs that started the job, and how many are expected: every CPU waits for the others
/// first, so the boot CPU (which starts its share at once) does not finish alone before the
/// idle CPUs notice the job.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static EXPECTED: AtomicUsize = AtomicUsize::new(0);

fn error_code(e: DeferredError) -> u64 {
    match e {
        DeferredError::NoFrames => 1,
        DeferredError::NoSuchNode(_) => 2,
        DeferredError::Complete => 3,
    }
}

/// One CPU's share: steps over every node until none has anything left.
fn job<P: IrqControl + 'static, F: PagingFormat + 'static>(cpu: usize) {
    let mm = MM.load(Ordering::Acquire);
    if mm.is_null() || cpu >= MAX_CPUS {
        return;
    }
    // SAFETY: `complete_on_every_cpu::<P, F, _>` published an `Mm<'static, P, F>` (it is
    // `'static`) and publishes only this instantiation of `job`.
    let mm = unsafe { &*mm.cast::<Mm<'static, P, F>>() };
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    let expected = EXPECTED.load(Ordering::Acquire);
    let mut spins = 0u64;
    while ARRIVED.load(Ordering::Acquire) < expected && spins < START_SPINS {
        core::hint::spin_loop();
        spins += 1;
    }
    let nodes = mm.boot_summary().nr_nodes;
    loop {
        let mut busy = false;
        for node in 0..nodes {
            match mm.deferred_init_step(node, STEP_FRAMES) {
                Ok(p) => {
                    busy = true;
                    FRAMES[cpu].fetch_add(p.initialised, Ordering::Relaxed);
                    STEPS[cpu].fetch_add(1, Ordering::Relaxed);
                }
                Err(DeferredError::Complete | DeferredError::NoSuchNode(_)) => {}
                Err(e) => {
                    if ERRORS.fetch_add(1, Ordering::Relaxed) == 0 {
                        FIRST_ERROR.store(error_code(e), Ordering::Relaxed);
                    }
                }
            }
        }
        if !busy {
            return;
        }
    }
}

/// Complete every node's deferred memmap on every online CPU at once, then check the result
/// (module docs). Called with the timer handlers allocating; leaves them allocating.
pub fn complete_on_every_cpu<P, F, K>(
    mm: &'static Mm<'static, P, F>,
    kernel: &K,
    out: &mut impl Write,
) -> CheckResult
where
    P: IrqControl + 'static,
    F: PagingFormat + 'static,
    K: SmpKernel,
{
    let before = mm.meminfo();
    ensure!(
        mm.deferred_frames() > 0,
        "nothing deferred is left to complete"
    );
    for cpu in 0..MAX_CPUS {
        FRAMES[cpu].store(0, Ordering::Relaxed);
        STEPS[cpu].store(0, Ordering::Relaxed);
    }
    ERRORS.store(0, Ordering::Relaxed);
    ARRIVED.store(0, Ordering::Relaxed);
    let online = (0..MAX_CPUS).filter(|&c| kernel.online(c)).count();
    EXPECTED.store(online, Ordering::Release);
    MM.store(core::ptr::from_ref(mm).cast_mut().cast(), Ordering::Release);
    kernel.run_everywhere(job::<P, F>);
    MM.store(core::ptr::null_mut(), Ordering::Release);

    let mut cpus = 0;
    let mut total = 0;
    for cpu in (0..MAX_CPUS).filter(|&c| kernel.online(c)) {
        let (frames, steps) = (
            FRAMES[cpu].load(Ordering::Relaxed),
            STEPS[cpu].load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "mmkit-qemu: deferred init: cpu {cpu} initialised {frames} frames in {steps} steps"
        );
        cpus += usize::from(steps > 0);
        total += frames;
    }
    let arrived = ARRIVED.load(Ordering::Acquire);
    ensure!(
        arrived == online,
        "{arrived} of {online} online CPUs ran their share"
    );
    let errors = ERRORS.load(Ordering::Relaxed);
    ensure!(
        errors == 0,
        "{errors} steps failed (first: error {})",
        FIRST_ERROR.load(Ordering::Relaxed)
    );
    let after = mm.meminfo();
    let _ = writeln!(
        out,
        "mmkit-qemu: deferred init complete: {total} frames on {cpus} CPU(s); MemTotal {} -> {} KiB",
        before.total_kb, after.total_kb
    );
    all_initialised(mm, &before, &after)?;
    ensure!(
        after.reserved_kb == before.reserved_kb,
        "Reserved moved from {} to {} KiB",
        before.reserved_kb,
        after.reserved_kb
    );
    // Bad input: completing again is refused and changes nothing.
    for node in 0..mm.boot_summary().nr_nodes {
        match mm.complete_deferred_init(node) {
            Err(DeferredError::Complete) => {}
            other => fail!("completing node {node} again: {other:?}"),
        }
    }
    let again = mm.meminfo();
    ensure!(
        again.total_kb == after.total_kb && again.deferred_kb == 0,
        "a refused completion changed MemTotal {} -> {} KiB",
        after.total_kb,
        again.total_kb
    );
    kernel.set_timer_allocations(false);
    let verified = kernel.verify_stopped();
    kernel.set_timer_allocations(true);
    verified
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stress::host_kernel::{HostGlobal, Threads};
    use mmkit::addr::host::HostPlatform;
    use mmkit::addr::{PhysAddr, PhysRange};
    use mmkit::host::HostRam;
    use mmkit::MmBuilder;

    const MIB: u64 = 1 << 20;
    const CPUS: usize = 3;

    #[test]
    fn boot_frames_reads_the_command_line() {
        assert_eq!(boot_frames("quiet", 4096), Ok(Some(16384)));
        assert_eq!(boot_frames("mmkit.deferred=16M", 4096), Ok(Some(4096)));
        assert_eq!(boot_frames("mmkit.deferred=5000", 4096), Ok(Some(2)));
        assert_eq!(boot_frames("mmkit.deferred=off", 4096), Ok(None));
        assert_eq!(boot_frames("mmkit.deferred=0", 4096), Ok(None));
        assert_eq!(boot_frames("mmkit.deferred=lots", 4096), Err("lots"));
        assert_eq!(completion("quiet"), Ok(Completion::OnDemand));
        assert_eq!(
            completion("mmkit.deferred_complete=smp"),
            Ok(Completion::Smp)
        );
        assert_eq!(completion("mmkit.deferred_complete=now"), Err("now"));
        let mut h = Harness::new(String::new());
        assert_eq!(
            plan(&mut h, "mmkit.deferred=8M"),
            (Some(2048), Completion::OnDemand)
        );
        assert_eq!(
            plan(&mut h, "mmkit.deferred_complete=x"),
            (None, Completion::OnDemand)
        );
        assert!(h
            .out()
            .contains("check mm_deferred_parameters_are_valid ... FAILED"));
    }

    static GLOBAL: HostGlobal = mmkit::GlobalMm::new();

    #[test]
    fn every_cpu_completes_the_deferred_memmap_and_the_checks_pass() {
        let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 256 * MIB)));
        let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 255 * MIB).unwrap();
        let frames = boot_frames("mmkit.deferred=16M", 4096).unwrap();
        // SAFETY: `mem` stands for the whole map and nothing else uses it.
        let mm = unsafe { MmBuilder::new(HostPlatform::new(CPUS), mem) }
            .memory(ram)
            .deferred_init(frames.unwrap())
            .boot()
            .unwrap();
        let mm = GLOBAL.init(mm).ok().unwrap();
        mm.platform().bind_current_thread(0);
        let mut out = String::new();
        boots_with_the_rest_deferred(mm).unwrap();
        complete_on_every_cpu(mm, &Threads::new(&GLOBAL, CPUS), &mut out).unwrap();
        assert!(out.contains("deferred init complete"), "{out}");
        let total: u64 = (0..CPUS).map(|c| FRAMES[c].load(Ordering::Relaxed)).sum();
        assert!(total > 0, "{out}");
        // Nothing left: a second run is refused before it starts.
        let again = complete_on_every_cpu(mm, &Threads::new(&GLOBAL, CPUS), &mut out).unwrap_err();
        assert!(again.as_str().contains("nothing deferred"), "{again:?}");
        assert!(boots_with_the_rest_deferred(mm).is_err());
    }
}
