//! [`KernelCpus`]: a host platform that costs what a kernel's does.
//!
//! Each thread that uses the allocators binds itself to one CPU id with
//! [`KernelCpus::bind`], one thread per CPU, as a kernel runs one context per CPU at a time.
//! The "interrupts off" section is then a nesting counter in the CPU's slot that only its own
//! thread writes: entering the outermost section is a plain store and a plain load, leaving
//! it a plain store, with no atomic read-modify-write and no fence — about what
//! `local_irq_save`/`local_irq_restore` cost a kernel (`pushf; cli` / `popf`).
//!
//! Cross-CPU calls still work. [`run_on_cpu`](IrqControl::run_on_cpu) marks the target CPU
//! as taken by a remote call, waits until the target's thread is outside its sections, and
//! runs the function on the calling thread; a thread entering its outermost section while a
//! remote call holds its CPU steps aside until the call ends. The two sides form a Dekker
//! pair (the owner writes its counter then reads the mark; the caller writes the mark then
//! reads the counter), made asymmetric with Linux's `membarrier(2)`
//! (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`), the way user-space RCU and restartable sequences
//! keep their fast side fence-free: the caller's system call puts a full barrier into every
//! running thread of the process, so the owner needs only a compiler barrier. Where
//! `membarrier` is unavailable both sides use a full fence instead (slower, still correct);
//! [`KernelCpus::fence_free`] says which.
//!
//! The mark and the "fence needed" setting share one byte of the CPU's slot, so entering
//! the outermost section costs one load and one well-predicted branch beyond the counter
//! store: the byte is 0 on the fast, fence-free path, and anything else (a remote call, or
//! a process without `membarrier`) goes to an out-of-line entry that fences and steps aside
//! as needed.
//!
//! The function runs on the caller's thread: a remote call never interrupts the target in
//! the middle of something, so (unlike a real IPI handler) it cannot deadlock on a lock the
//! target holds outside its sections.

use core::cell::Cell;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use core::sync::atomic::{compiler_fence, fence, AtomicU64, AtomicU8, AtomicUsize};

use crate::platform::{CpuTopology, IrqControl};

std::thread_local! {
    /// The binding of this thread: (address of the `KernelCpus`, CPU id); address 0 when
    /// unbound.
    static BOUND: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Whether `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` works in this process: 0 not yet
/// known, 1 yes, 2 no. Settled by the first [`KernelCpus::bind`], before any section.
static MEMBARRIER: AtomicU8 = AtomicU8::new(0);

#[cfg(target_os = "linux")]
mod sys {
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    /// Register the process for expedited private barriers; whether that worked.
    pub fn register() -> bool {
        // SAFETY: `membarrier` takes two integer arguments and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                0 as libc::c_long,
            ) == 0
        }
    }

    /// Execute a full memory barrier on every running thread of the process.
    pub fn barrier() -> bool {
        // SAFETY: as in `register`.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_PRIVATE_EXPEDITED,
                0 as libc::c_long,
            ) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn register() -> bool {
        false
    }
    pub fn barrier() -> bool {
        false
    }
}

/// One CPU: its owner thread, its section depth, and the remote-call mark. A cache line of
/// its own, so that CPUs do not share lines.
#[repr(align(64))]
#[derive(Debug)]
struct Slot {
    /// Token of the bound thread, 0 when none.
    owner: AtomicU64,
    /// Section nesting depth; written only by the owner thread.
    depth: AtomicUsize,
    /// [`REMOTE`]: a cross-CPU call holds this CPU (its function runs, or is about to);
    /// [`FENCED`]: `membarrier` is unavailable, so the owner fences on entry. 0 on the fast
    /// path.
    mark: AtomicU8,
}

/// [`Slot::mark`] bit: a remote call holds the CPU.
const REMOTE: u8 = 1;
/// [`Slot::mark`] bit: entries need a full fence (no `membarrier`).
const FENCED: u8 = 2;

impl Slot {
    const fn new() -> Self {
        Self {
            owner: AtomicU64::new(0),
            depth: AtomicUsize::new(0),
            mark: AtomicU8::new(0),
        }
    }
}

/// Why [`KernelCpus::bind`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The CPU id is not below the CPU count.
    NoSuchCpu,
    /// Another thread is bound to that CPU.
    CpuTaken,
    /// This thread is already bound (to this or another `KernelCpus`).
    ThreadBound,
}

impl core::fmt::Display for BindError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BindError::NoSuchCpu => "no such CPU",
            BindError::CpuTaken => "another thread is bound to that CPU",
            BindError::ThreadBound => "this thread is already bound to a CPU",
        })
    }
}

/// `N` CPUs with one bound thread each and a per-CPU counter as the interrupt guard (see
/// the module docs). `const`-constructible and allocation-free, so it can live in a `static`
/// under a `#[global_allocator]`.
///
/// Every thread that enters the allocators must first [`bind`](Self::bind) itself; a thread
/// that is not bound panics on its first section (a harness mistake, not an allocator one).
/// A binding names the `KernelCpus` by its address: keep it where it will stay (a `static`)
/// and hand the allocators `&KernelCpus` (references are platforms too).
#[derive(Debug)]
pub struct KernelCpus<const N: usize> {
    slots: [Slot; N],
}

impl<const N: usize> Default for KernelCpus<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread's binding to a CPU of a [`KernelCpus`]; dropping it unbinds the thread (outside
/// every section) and frees the CPU for another thread.
#[derive(Debug)]
pub struct CpuBinding<'a, const N: usize> {
    cpus: &'a KernelCpus<N>,
    cpu: usize,
    /// Bindings belong to their thread.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl<const N: usize> CpuBinding<'_, N> {
    /// The CPU this thread is bound to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<const N: usize> Drop for CpuBinding<'_, N> {
    fn drop(&mut self) {
        let slot = &self.cpus.slots[self.cpu];
        debug_assert_eq!(slot.depth.load(Relaxed), 0, "unbound inside a section");
        BOUND.with(|b| b.set((0, 0)));
        slot.owner.store(0, Release);
    }
}

impl<const N: usize> KernelCpus<N> {
    /// `N` CPUs (`N` must be at least 1; 0 is a compile-time error), none bound.
    pub const fn new() -> Self {
        assert!(N > 0, "KernelCpus needs at least one CPU");
        Self {
            slots: [const { Slot::new() }; N],
        }
    }

    /// Bind the calling thread to `cpu` until the returned binding is dropped.
    pub fn bind(&self, cpu: usize) -> Result<CpuBinding<'_, N>, BindError> {
        let slot = self.slots.get(cpu).ok_or(BindError::NoSuchCpu)?;
        if BOUND.with(Cell::get).0 != 0 {
            return Err(BindError::ThreadBound);
        }
        let me = Self::thread_token();
        slot.owner
            .compare_exchange(0, me, Acquire, Relaxed)
            .map_err(|_| BindError::CpuTaken)?;
        if MEMBARRIER.load(Acquire) == 0 {
            let ok = sys::register();
            MEMBARRIER.store(if ok { 1 } else { 2 }, Release);
        }
        if MEMBARRIER.load(Acquire) != 1 {
            // Before this thread's first section: its entries take the fenced path.
            slot.mark.fetch_or(FENCED, AcqRel);
        }
        BOUND.with(|b| b.set((self as *const Self as usize, cpu)));
        Ok(CpuBinding {
            cpus: self,
            cpu,
            _not_send: core::marker::PhantomData,
        })
    }

    /// Whether the sections are fence-free (`membarrier` works here); otherwise each
    /// outermost section entry costs a full fence. Known after the first `bind`.
    pub fn fence_free() -> bool {
        MEMBARRIER.load(Relaxed) == 1
    }

    /// This thread's token: the address of its `BOUND` slot (never 0).
    fn thread_token() -> u64 {
        BOUND.with(|c| c as *const Cell<(usize, usize)> as u64)
    }

    /// The calling thread's CPU if it is bound to this `KernelCpus`.
    #[inline(always)]
    fn bound_cpu(&self) -> Option<usize> {
        let (p, cpu) = BOUND.get();
        (p == self as *const Self as usize).then_some(cpu)
    }

    /// The slot of `cpu`, a CPU id this `KernelCpus` handed out (`bound_cpu`, `bind`) or a
    /// section state, so below `N`.
    #[inline]
    fn slot(&self, cpu: usize) -> &Slot {
        debug_assert!(cpu < N);
        // SAFETY: every CPU id reaching here passed `bind`'s range check (`slots.get`).
        unsafe { self.slots.get_unchecked(cpu) }
    }

    /// The rest of entering the outermost section of `slot` after `depth` was set to 1 and
    /// the mark read non-zero: fence if the process has no `membarrier`, and step aside
    /// while a remote call holds the CPU.
    #[cold]
    #[inline(never)]
    fn enter_marked(slot: &Slot) {
        loop {
            if slot.mark.load(Relaxed) & FENCED != 0 {
                fence(SeqCst);
            }
            if slot.mark.load(Acquire) & REMOTE == 0 {
                return;
            }
            slot.depth.store(0, Release);
            while slot.mark.load(Acquire) & REMOTE != 0 {
                core::hint::spin_loop();
            }
            slot.depth.store(1, Relaxed);
            compiler_fence(SeqCst);
        }
    }
}

// SAFETY: `N >= 1` is constant; a thread's CPU is fixed from `bind` to the binding's drop,
// which happens outside sections, so `current_cpu` is in range and stable inside a section.
unsafe impl<const N: usize> CpuTopology for KernelCpus<N> {
    fn nr_cpus(&self) -> usize {
        N
    }

    #[inline(always)]
    fn current_cpu(&self) -> usize {
        match self.bound_cpu() {
            Some(cpu) => cpu,
            None => unbound(),
        }
    }
}

#[cold]
#[inline(never)]
fn unbound() -> ! {
    panic!("KernelCpus: this thread is not bound to a CPU; call `bind` first")
}

// SAFETY: one thread at most is bound to a CPU (`owner` compare-exchange), and only it enters
// that CPU's sections, so its own sections exclude each other by program order. A remote call
// runs only while it holds the mark's `REMOTE` bit and has seen `depth == 0` after a barrier
// that orders its mark store before that load in every thread (`membarrier`, or a full fence
// on both sides: a slot of a process without `membarrier` carries `FENCED`, so its owner
// fences in `enter_marked`); the owner, after its `depth` store and the matching barrier,
// enters only if it sees `REMOTE` clear. So either the owner sees the mark and steps aside, or
// the caller sees the owner inside and waits: the function never overlaps a section of its
// CPU. Acquire and release on `depth` and the mark order the data each side touched. The
// state is the section's CPU, the thread's binding (`section_cpu`), and the depth the
// section found, which `restore` puts back (sections nest strictly).
unsafe impl<const N: usize> IrqControl for KernelCpus<N> {
    /// The section's CPU and the depth to restore (0 for an outermost section).
    type State = (usize, usize);

    #[inline]
    fn save_disable(&self) -> (usize, usize) {
        let cpu = self.current_cpu();
        let slot = self.slot(cpu);
        let d = slot.depth.load(Relaxed);
        slot.depth.store(d + 1, Relaxed);
        if d == 0 {
            // With `membarrier`, the remote caller's system call supplies the full barrier
            // between this store and the load below.
            compiler_fence(SeqCst);
            if slot.mark.load(Acquire) != 0 {
                Self::enter_marked(slot);
            }
            // A constant, so leaving the section stores a value that depends on no load:
            // back-to-back sections do not chain store-to-load forwarding through `depth`.
            return (cpu, 0);
        }
        (cpu, d)
    }

    #[inline]
    fn section_cpu(&self, state: &(usize, usize)) -> usize {
        state.0
    }

    #[inline]
    unsafe fn restore(&self, (cpu, depth): (usize, usize)) {
        self.slot(cpu).depth.store(depth, Release);
    }

    /// Runs `f` on the calling thread once CPU `cpu`'s thread is outside its sections (and
    /// keeps it out until `f` returns); on the caller's own CPU, as a section of it.
    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        let Some(slot) = self.slots.get(cpu) else {
            return false;
        };
        if self.bound_cpu() == Some(cpu) {
            let _guard = self.irq_save();
            f();
            return true;
        }
        let mut spins = 0u32;
        while slot.mark.fetch_or(REMOTE, AcqRel) & REMOTE != 0 {
            backoff(&mut spins);
        }
        if MEMBARRIER.load(Relaxed) != 1 || !sys::barrier() {
            fence(SeqCst);
        }
        let mut spins = 0u32;
        while slot.depth.load(Acquire) != 0 {
            backoff(&mut spins);
        }
        f();
        slot.mark.fetch_and(!REMOTE, Release);
        true
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        core::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    static FOUR: KernelCpus<4> = KernelCpus::new();

    #[test]
    fn binding_is_one_thread_per_cpu() {
        let cpus = KernelCpus::<2>::new();
        assert_eq!(cpus.bind(2).err(), Some(BindError::NoSuchCpu));
        let b = cpus.bind(1).unwrap();
        assert_eq!(b.cpu(), 1);
        assert_eq!(cpus.current_cpu(), 1);
        assert_eq!(cpus.bind(0).err(), Some(BindError::ThreadBound));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(cpus.bind(1).err(), Some(BindError::CpuTaken));
                let b0 = cpus.bind(0).unwrap();
                assert_eq!(cpus.current_cpu(), b0.cpu());
            });
        });
        drop(b);
        let again = cpus.bind(0).unwrap();
        assert_eq!(again.cpu(), 0);
    }

    #[test]
    fn an_unbound_thread_is_told_to_bind() {
        let cpus = KernelCpus::<1>::new();
        let r = std::thread::spawn(move || {
            let cpus = KernelCpus::<1>::new();
            cpus.current_cpu()
        })
        .join();
        assert!(r.is_err());
        assert!(cpus.run_on_cpu(0, &|| {}), "remote calls need no binding");
    }

    /// Widen the window between a load and its store.
    fn dawdle() {
        for _ in 0..50 {
            core::hint::spin_loop();
        }
    }

    /// Each of four bound threads bumps its CPU's counter with a plain load and store inside
    /// nested sections while a fifth thread, for as long as they run, bumps every CPU's
    /// counter the same way through `run_on_cpu`: a lost update would show a remote call
    /// overlapping a section.
    #[test]
    fn remote_calls_never_overlap_sections() {
        check_remote_calls_never_overlap(&FOUR);
    }

    /// The same on the path a process without `membarrier` takes: every entry fences and
    /// reads the mark again out of line.
    #[test]
    fn remote_calls_never_overlap_fenced_sections() {
        static FENCED4: KernelCpus<4> = KernelCpus::new();
        for slot in &FENCED4.slots {
            slot.mark.fetch_or(FENCED, AcqRel);
        }
        check_remote_calls_never_overlap(&FENCED4);
    }

    fn check_remote_calls_never_overlap(cpus: &'static KernelCpus<4>) {
        const ROUNDS: u64 = 20_000;
        let counters: [AtomicU64; 4] = Default::default();
        let remote: [AtomicU64; 4] = Default::default();
        let running = AtomicUsize::new(4);
        std::thread::scope(|s| {
            for cpu in 0..4 {
                let (counters, running) = (&counters, &running);
                s.spawn(move || {
                    let _b = cpus.bind(cpu).unwrap();
                    for _ in 0..ROUNDS {
                        let g = cpus.irq_save();
                        let inner = cpus.irq_save();
                        let c = &counters[g.cpu()];
                        let v = c.load(Relaxed);
                        dawdle();
                        c.store(v + 1, Relaxed);
                        drop(inner);
                        drop(g);
                    }
                    running.fetch_sub(1, Relaxed);
                });
            }
            s.spawn(|| {
                let mut i = 0;
                while running.load(Relaxed) > 0 {
                    let cpu = i % 4;
                    i += 1;
                    assert!(cpus.run_on_cpu(cpu, &|| {
                        let v = counters[cpu].load(Relaxed);
                        dawdle();
                        counters[cpu].store(v + 1, Relaxed);
                    }));
                    remote[cpu].fetch_add(1, Relaxed);
                }
            });
        });
        for (c, r) in counters.iter().zip(&remote) {
            assert_eq!(c.load(Relaxed), ROUNDS + r.load(Relaxed));
        }
    }

    /// Leaving a section puts back the depth it found: nested sections unwind to the outer
    /// one, the outermost to 0.
    #[test]
    fn nested_sections_restore_the_depth_they_found() {
        let cpus = KernelCpus::<2>::new();
        let _b = cpus.bind(1).unwrap();
        let depth = || cpus.slots[1].depth.load(Relaxed);
        let outer = cpus.irq_save();
        let inner = cpus.irq_save();
        let innermost = cpus.irq_save();
        assert_eq!((depth(), innermost.cpu()), (3, 1));
        drop(innermost);
        assert_eq!(depth(), 2);
        drop(inner);
        assert_eq!(depth(), 1);
        drop(outer);
        assert_eq!(depth(), 0);
        assert_eq!(
            cpus.slots[0].depth.load(Relaxed),
            0,
            "another CPU's depth untouched"
        );
    }

    #[test]
    fn a_call_to_the_own_cpu_runs_as_a_section() {
        let cpus = KernelCpus::<2>::new();
        let _b = cpus.bind(0).unwrap();
        let depth = AtomicUsize::new(0);
        assert!(cpus.run_on_cpu(0, &|| depth
            .store(cpus.slots[0].depth.load(Relaxed), Relaxed)));
        assert_eq!(depth.load(Relaxed), 1);
        assert!(!cpus.run_on_cpu(2, &|| unreachable!()));
    }
}
