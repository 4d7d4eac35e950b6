//! The arch-neutral half of the kernels' SMP support: per-CPU counters, cross-CPU calls,
//! jobs for every CPU, and the gate that lets timer handlers allocate.
//!
//! A kernel supplies the hardware: how to send an IPI, which CPU it runs on, its interrupt
//! flag. What is left is ordinary atomics, and lives here so it is tested on the host (with
//! threads standing in for CPUs and a thread polling for "IPIs").
//!
//! ## Cross-CPU calls ([`CallSlots`])
//! Each CPU has one incoming slot. A caller takes the target's slot (a spin on `busy`, one
//! caller per target at a time), stores the address of its `&dyn Fn` (which lives on its
//! stack until the call is done), sends the IPI and spins until the target's handler has run
//! the function and set `done`. The handler runs with interrupts off, so the function is a
//! section of the target CPU. The caller must have interrupts on while it waits: a CPU that
//! waits for another with interrupts off never runs that CPU's call to it.
//!
//! ## Jobs ([`Jobs`])
//! A job is a `fn(cpu)` every online CPU runs once, outside interrupt context (so timer
//! interrupts arrive in the middle of it). The boot CPU publishes it with a new generation
//! number and runs its own share; idle CPUs notice the generation change and run theirs.
//!
//! ## Timer allocations ([`AllocGate`])
//! A handler announces itself before looking at the switch (`run`), so turning the switch
//! off and waiting for the count to reach zero guarantees no handler allocates afterwards.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The most CPUs the kernels run.
pub const MAX_CPUS: usize = 16;

/// One CPU's counters, kept in its per-CPU area.
#[derive(Debug, Default)]
pub struct CpuStats {
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
    /// Of those, taken while this CPU's code was inside an mmkit call.
    pub ticks_in_mm: AtomicU64,
    /// Depth of mmkit calls the interrupted code is in (the stress hooks count it).
    pub in_mm: AtomicU64,
    /// Allocation rounds the timer handler did.
    pub timer_allocs: AtomicU64,
    /// Rounds in which a `GFP_ATOMIC` allocation failed.
    pub timer_failures: AtomicU64,
    /// IPIs this CPU sent.
    pub ipis_sent: AtomicU64,
    /// Cross-CPU calls this CPU ran for others.
    pub calls_run: AtomicU64,
}

/// A plain copy of [`CpuStats`] for printing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`CpuStats::ticks`].
    pub ticks: u64,
    /// See [`CpuStats::ticks_in_mm`].
    pub ticks_in_mm: u64,
    /// See [`CpuStats::timer_allocs`].
    pub timer_allocs: u64,
    /// See [`CpuStats::timer_failures`].
    pub timer_failures: u64,
    /// See [`CpuStats::ipis_sent`].
    pub ipis_sent: u64,
    /// See [`CpuStats::calls_run`].
    pub calls_run: u64,
}

impl CpuStats {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            ticks: AtomicU64::new(0),
            ticks_in_mm: AtomicU64::new(0),
            in_mm: AtomicU64::new(0),
            timer_allocs: AtomicU64::new(0),
            timer_failures: AtomicU64::new(0),
            ipis_sent: AtomicU64::new(0),
            calls_run: AtomicU64::new(0),
        }
    }

    /// Count a timer interrupt (and whether it arrived inside mmkit).
    pub fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        if self.in_mm.load(Ordering::Relaxed) > 0 {
            self.ticks_in_mm.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StatsSnapshot {
            ticks: load(&self.ticks),
            ticks_in_mm: load(&self.ticks_in_mm),
            timer_allocs: load(&self.timer_allocs),
            timer_failures: load(&self.timer_failures),
            ipis_sent: load(&self.ipis_sent),
            calls_run: load(&self.calls_run),
        }
    }
}

impl StatsSnapshot {
    /// Field-wise sum.
    pub fn add(&mut self, o: &StatsSnapshot) {
        self.ticks += o.ticks;
        self.ticks_in_mm += o.ticks_in_mm;
        self.timer_allocs += o.timer_allocs;
        self.timer_failures += o.timer_failures;
        self.ipis_sent += o.ipis_sent;
        self.calls_run += o.calls_run;
    }
}

/// A cross-CPU call's function as the caller passes it.
pub type CallFn<'a> = &'a (dyn Fn() + Sync);

struct CallSlot {
    busy: AtomicBool,
    request: AtomicPtr<()>,
    done: AtomicBool,
}

/// Every CPU's incoming call slot (module docs).
pub struct CallSlots {
    slots: [CallSlot; MAX_CPUS],
}

impl CallSlots {
    /// No call pending anywhere.
    pub const fn new() -> Self {
        Self {
            slots: [const {
                CallSlot {
                    busy: AtomicBool::new(false),
                    request: AtomicPtr::new(core::ptr::null_mut()),
                    done: AtomicBool::new(false),
                }
            }; MAX_CPUS],
        }
    }

    /// Run `f` on CPU `target` (below [`MAX_CPUS`], not the caller's): publish it, call
    /// `send_ipi()`, and wait until the target's [`handle`](Self::handle) ran it. The caller
    /// must be able to take its own calls meanwhile (interrupts on). `false` for a target out
    /// of range.
    pub fn call(&self, target: usize, f: CallFn<'_>, send_ipi: impl FnOnce()) -> bool {
        let Some(slot) = self.slots.get(target) else {
            return false;
        };
        while slot
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        slot.done.store(false, Ordering::Relaxed);
        slot.request
            .store(core::ptr::addr_of!(f) as *mut (), Ordering::Release);
        send_ipi();
        while !slot.done.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        slot.busy.store(false, Ordering::Release);
        true
    }

    /// The IPI handler of CPU `me`: run the pending call, if any. Returns whether one ran.
    pub fn handle(&self, me: usize) -> bool {
        let Some(slot) = self.slots.get(me) else {
            return false;
        };
        let request = slot.request.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if request.is_null() {
            return false;
        }
        // SAFETY: `call` stored the address of a `CallFn` on its stack and does not return
        // (so the `CallFn` and what it borrows stay alive) until `done` is set below.
        let f = unsafe { *request.cast::<CallFn<'_>>() };
        f();
        slot.done.store(true, Ordering::Release);
        true
    }
}

impl Default for CallSlots {
    fn default() -> Self {
        Self::new()
    }
}

/// Jobs for every CPU (module docs).
pub struct Jobs {
    job: AtomicPtr<()>,
    generation: AtomicU64,
    done: AtomicUsize,
}

impl Jobs {
    /// No job.
    pub const fn new() -> Self {
        Self {
            job: AtomicPtr::new(core::ptr::null_mut()),
            generation: AtomicU64::new(0),
            done: AtomicUsize::new(0),
        }
    }

    /// Publish `job`, run it as CPU `me`, and wait until `others` other CPUs have run it too,
    /// calling `idle` between looks (a kernel halts until its next interrupt there: a CPU
    /// that finished early must not spin on a host core its emulated siblings need).
    pub fn run_everywhere(&self, me: usize, others: usize, job: fn(usize), idle: impl Fn()) {
        self.done.store(0, Ordering::SeqCst);
        self.job.store(job as *mut (), Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        job(me);
        while self.done.load(Ordering::Acquire) < others {
            idle();
        }
        self.job.store(core::ptr::null_mut(), Ordering::SeqCst);
    }

    /// For an idle CPU `me` that last saw generation `seen`: run a newer job if there is
    /// one, and update `seen`. Returns whether it ran one.
    pub fn poll(&self, me: usize, seen: &mut u64) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return false;
        }
        *seen = generation;
        let job = self.job.load(Ordering::Acquire);
        if !job.is_null() {
            // SAFETY: `run_everywhere` stores only `fn(usize)` pointers, and keeps the job
            // published until every CPU reported done.
            let job = unsafe { core::mem::transmute::<*mut (), fn(usize)>(job) };
            job(me);
        }
        self.done.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Whether a job newer than `seen` is published (to decide whether to halt).
    pub fn pending(&self, seen: u64) -> bool {
        self.generation.load(Ordering::Acquire) != seen
    }
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new()
    }
}

/// The switch that lets timer handlers allocate (module docs).
pub struct AllocGate {
    on: AtomicBool,
    inside: AtomicUsize,
}

impl AllocGate {
    /// Closed.
    pub const fn new() -> Self {
        Self {
            on: AtomicBool::new(false),
            inside: AtomicUsize::new(0),
        }
    }

    /// Open (`true`), or close and wait until no handler is inside [`run`](Self::run).
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
        if !on {
            while self.inside.load(Ordering::SeqCst) != 0 {
                core::hint::spin_loop();
            }
        }
    }

    /// Run `f` if the gate is open, counted as inside until it returns.
    pub fn run(&self, f: impl FnOnce()) {
        self.inside.fetch_add(1, Ordering::SeqCst);
        if self.on.load(Ordering::SeqCst) {
            f();
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for AllocGate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn calls_run_once_on_the_target_and_wait_for_it() {
        static SLOTS: CallSlots = CallSlots::new();
        let stop = AtomicBool::new(false);
        let ran_on = AtomicUsize::new(usize::MAX);
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // CPU 3's "IPI handler": polls its slot.
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    SLOTS.handle(3);
                }
            });
            for caller in 0..3 {
                let (ran_on, count) = (&ran_on, &count);
                s.spawn(move || {
                    for _ in 0..100 {
                        let f = || {
                            ran_on.store(3, Ordering::SeqCst);
                            count.fetch_add(1, Ordering::SeqCst);
                        };
                        let before = count.load(Ordering::SeqCst);
                        assert!(SLOTS.call(3, &f, || {}));
                        assert!(count.load(Ordering::SeqCst) > before, "caller {caller}");
                    }
                });
            }
            s.spawn(|| {
                while count.load(Ordering::SeqCst) < 300 {
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::SeqCst);
            });
        });
        assert_eq!(count.load(Ordering::SeqCst), 300);
        assert_eq!(ran_on.load(Ordering::SeqCst), 3);
        assert!(!SLOTS.handle(3), "nothing left pending");
        assert!(!SLOTS.call(MAX_CPUS, &|| unreachable!(), || {}));
    }

    #[test]
    fn every_cpu_runs_each_job_once() {
        static JOBS: Jobs = Jobs::new();
        static RUNS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
        fn job(cpu: usize) {
            RUNS[cpu].fetch_add(1, Ordering::SeqCst);
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for cpu in 1..4 {
                let stop = &stop;
                s.spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::SeqCst) {
                        JOBS.poll(cpu, &mut seen);
                    }
                });
            }
            JOBS.run_everywhere(0, 3, job, core::hint::spin_loop);
            JOBS.run_everywhere(0, 3, job, std::thread::yield_now);
            stop.store(true, Ordering::SeqCst);
        });
        for r in &RUNS {
            assert_eq!(r.load(Ordering::SeqCst), 2);
        }
    }

    #[test]
    fn a_closed_gate_lets_nothing_through() {
        let gate = AllocGate::new();
        let ran = AtomicUsize::new(0);
        gate.run(|| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        gate.set(true);
        gate.run(|| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        gate.set(false);
        gate.run(|| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ticks_inside_mmkit_are_counted_apart() {
        let s = CpuStats::new();
        s.tick();
        s.in_mm.fetch_add(1, Ordering::SeqCst);
        s.tick();
        let snap = s.snapshot();
        assert_eq!((snap.ticks, snap.ticks_in_mm), (2, 1));
    }
}
