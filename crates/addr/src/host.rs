//! Host implementations of the platform hooks, for tests, benches and simulations.
//!
//! [`HostPlatform`] registers threads as CPUs: the first call on a thread binds it to the next
//! CPU id round-robin (or [`HostPlatform::bind_current_thread`] picks one). Because more
//! threads than CPUs may exist, the "interrupts off" section is a re-entrant per-CPU lock: two
//! threads bound to the same CPU exclude each other exactly as two contexts on one CPU do when
//! interrupts are off. [`HostCpus`] is the same with a fixed CPU count, a constant
//! thread-local id and no allocation, for use under a `#[global_allocator]`. [`KernelCpus`]
//! binds one thread per CPU and makes the guard cost what it costs a kernel (see its
//! module). [`HostMemory`] is
//! zeroed host memory standing for a stretch of physical memory at a chosen base, its virtual
//! addresses keeping the physical alignment of large blocks.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::alloc::{self, Layout};
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::vec::Vec;

use crate::platform::{CpuTopology, IrqControl, LinearWindow, PhysMapper};

mod kernel;
use crate::range::PhysRange;
use crate::PhysAddr;
pub use kernel::{BindError, CpuBinding, KernelCpus};

static NEXT_PLATFORM_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Per-thread state: a token naming the thread, and its CPU bindings, one per platform.
struct ThreadState {
    token: u64,
    /// The most recently used binding: the fast path of `current_cpu`.
    last: Cell<(u64, usize)>,
    /// Every (platform id, cpu) binding of this thread.
    bindings: RefCell<Vec<(u64, usize)>>,
}

std::thread_local! {
    static THREAD: ThreadState = ThreadState {
        token: NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed),
        last: Cell::new((0, 0)),
        bindings: RefCell::new(Vec::new()),
    };
}

#[derive(Debug, Default)]
struct CpuLock {
    /// Thread token of the owner, 0 when free.
    owner: AtomicU64,
    /// Nesting depth; only the owner reads or writes it.
    depth: AtomicUsize,
}

/// Threads as CPUs, with a re-entrant per-CPU lock as the interrupt guard.
pub struct HostPlatform {
    id: u64,
    next_cpu: AtomicUsize,
    cpus: Box<[CpuLock]>,
}

impl HostPlatform {
    /// A platform with `nr_cpus` CPUs (at least 1).
    pub fn new(nr_cpus: usize) -> Self {
        let n = nr_cpus.max(1);
        Self {
            id: NEXT_PLATFORM_ID.fetch_add(1, Ordering::Relaxed),
            next_cpu: AtomicUsize::new(0),
            cpus: (0..n).map(|_| CpuLock::default()).collect(),
        }
    }

    /// Bind the calling thread to `cpu` (taken modulo the CPU count). A thread keeps its
    /// binding for the life of the platform; call this before the thread's first allocation.
    /// Returns the CPU bound.
    pub fn bind_current_thread(&self, cpu: usize) -> usize {
        let cpu = cpu % self.cpus.len();
        THREAD.with(|t| {
            let mut b = t.bindings.borrow_mut();
            match b.iter_mut().find(|(id, _)| *id == self.id) {
                Some(entry) => entry.1 = cpu,
                None => b.push((self.id, cpu)),
            }
            t.last.set((self.id, cpu));
        });
        cpu
    }

    /// The calling thread's CPU on this platform (bound round-robin on first use) and the
    /// thread's token, in one thread-local access.
    #[inline]
    fn cpu_and_token(&self) -> (usize, u64) {
        THREAD.with(|t| {
            let (id, cpu) = t.last.get();
            if id == self.id {
                return (cpu, t.token);
            }
            (self.bind_slow(t), t.token)
        })
    }

    #[cold]
    fn bind_slow(&self, t: &ThreadState) -> usize {
        let mut b = t.bindings.borrow_mut();
        let cpu = match b.iter().find(|(id, _)| *id == self.id) {
            Some(&(_, cpu)) => cpu,
            None => {
                let cpu = self.next_cpu.fetch_add(1, Ordering::Relaxed) % self.cpus.len();
                b.push((self.id, cpu));
                cpu
            }
        };
        t.last.set((self.id, cpu));
        cpu
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        let id = self.id;
        // Only this thread's binding can be removed; other threads' entries are harmless
        // (platform ids are never reused).
        let _ = THREAD.try_with(|t| {
            t.bindings.borrow_mut().retain(|(p, _)| *p != id);
            if t.last.get().0 == id {
                t.last.set((0, 0));
            }
        });
    }
}

// SAFETY: `cpus` is never empty and never resized, so `nr_cpus` is constant and >= 1; a
// thread's binding is chosen once (modulo the count) and only changed by an explicit
// `bind_current_thread`, which callers make before allocating, so `current_cpu` is in range and
// stable inside a section.
unsafe impl CpuTopology for HostPlatform {
    fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    #[inline]
    fn current_cpu(&self) -> usize {
        self.cpu_and_token().0
    }
}

// SAFETY: `save_disable` takes the current CPU's lock (re-entrantly for its owner) and
// `restore` releases it when the outermost section ends, so at most one thread is inside a
// section for a given CPU at a time. `run_on_cpu` holds the target CPU's lock for the whole
// of `f`, so `f` is excluded from that CPU's sections as they are from each other. The state
// is the CPU `save_disable` found, which stays the thread's CPU for the section
// (`section_cpu`).
unsafe impl IrqControl for HostPlatform {
    type State = usize;

    #[inline]
    fn save_disable(&self) -> usize {
        let (cpu, me) = self.cpu_and_token();
        lock_cpu(&self.cpus[cpu], me);
        cpu
    }

    #[inline]
    fn section_cpu(&self, cpu: &usize) -> usize {
        *cpu
    }

    #[inline]
    unsafe fn restore(&self, cpu: usize) {
        let lock = &self.cpus[cpu];
        debug_assert_eq!(lock.owner.load(Ordering::Relaxed), THREAD.with(|t| t.token));
        unlock_cpu(lock);
    }

    /// Takes `cpu`'s lock for the calling thread (as a thread bound to `cpu` would for its
    /// own section), runs `f`, and releases it.
    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        if cpu >= self.cpus.len() {
            return false;
        }
        let me = THREAD.with(|t| t.token);
        let lock = &self.cpus[cpu];
        lock_cpu(lock, me);
        f();
        unlock_cpu(lock);
        true
    }
}

/// Take `lock` for the thread `me`, re-entrantly.
#[inline]
fn lock_cpu(lock: &CpuLock, me: u64) {
    if lock.owner.load(Ordering::Relaxed) == me {
        lock.depth.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut spins = 0u32;
    while lock
        .owner
        .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if spins < 64 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    lock.depth.store(1, Ordering::Relaxed);
}

/// Leave one level of `lock`, releasing it at the outermost.
#[inline]
fn unlock_cpu(lock: &CpuLock) {
    if lock.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
        lock.owner.store(0, Ordering::Release);
    }
}

/// Zeroed host memory standing for physical `[base, base + len)`, whose *virtual* addresses
/// keep the physical alignment of every block that fits in it, up to [`HostMemory::ALIGN`],
/// as a kernel's
/// direct map does (the slab's page-source contract wants a block's pointer aligned to the
/// block size). It comes zeroed and mapped lazily by the host (`calloc`, or on Linux a
/// `MAP_NORESERVE` mapping for sizes the heap refuses), so a simulated machine of several
/// GiB, or of more than the host has, costs only the memory touched.
pub struct HostMemory {
    base: PhysAddr,
    len: u64,
    /// `base` lives here; `ptr ≡ base` modulo `min(ALIGN, len.next_power_of_two())`.
    ptr: NonNull<u8>,
    raw: NonNull<u8>,
    layout: Layout,
    /// `raw` is our own `mmap` (else a heap block).
    mapped: bool,
}

// SAFETY: the buffer is plain memory owned by this value; sharing the pointer between threads
// is as safe as sharing any heap buffer, and all writes go through raw pointers whose users
// promise exclusive ownership of the bytes they write (the `PhysMapper` contract).
unsafe impl Send for HostMemory {}
// SAFETY: see `Send`; `&HostMemory` only hands out addresses.
unsafe impl Sync for HostMemory {}

impl core::fmt::Debug for HostMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostMemory")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl HostMemory {
    /// Virtual addresses agree with physical ones modulo this (128 MiB, more than the
    /// largest buddy block mmkit-buddy supports).
    pub const ALIGN: u64 = 128 << 20;

    /// `len` bytes (rounded up to 4 KiB) of zeroed memory standing for physical addresses
    /// starting at `base`.
    ///
    /// Panics if the host cannot reserve the address space (this is test scaffolding).
    pub fn new(base: PhysAddr, len: u64) -> Self {
        let len = crate::align_up(len.max(1), crate::PAGE_SIZE).expect("size overflow");
        // No block larger than the memory fits in it, so aligning beyond its size buys
        // nothing (and a smaller over-allocation keeps sanitizer builds fast).
        let align = Self::ALIGN.min(len.next_power_of_two());
        let total = usize::try_from(len + align).expect("host address space");
        let layout = Layout::from_size_align(total, 1).expect("host memory layout");
        let (raw, mapped) = lazy_zeroed(layout);
        let want = base.as_u64() % align;
        let have = raw.as_ptr() as u64 % align;
        let skip = (want + align - have) % align;
        // SAFETY: `skip < align` and the allocation is `len + align` bytes, so `ptr` and the
        // `len` bytes after it are inside it.
        let ptr = unsafe { raw.add(skip as usize) };
        Self {
            base,
            len,
            ptr,
            raw,
            layout,
            mapped,
        }
    }

    /// The physical range this buffer stands for.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_start_size(self.base, self.len).expect("host range")
    }

    /// The host address of physical `pa`, if it is inside.
    pub fn ptr_of(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let off = pa.offset_from(self.base)?;
        if off >= self.len {
            return None;
        }
        // SAFETY: `off` is inside the buffer.
        Some(unsafe { self.ptr.add(off as usize) })
    }

    /// The physical address of host address `va`, if it is inside (the inverse of
    /// [`ptr_of`](Self::ptr_of)).
    pub fn phys_of(&self, va: *const u8) -> Option<PhysAddr> {
        let off = (va as u64).checked_sub(self.ptr.as_ptr() as u64)?;
        (off < self.len).then(|| PhysAddr::new(self.base.as_u64() + off))
    }
}

/// `layout.size()` bytes of zeroed memory whose pages the host maps on first touch, and
/// whether they are an `mmap` of our own (`true`) rather than a heap block. The heap first:
/// `calloc` (alignment 1 keeps std on that path) maps fresh zero pages lazily, and leak
/// checkers scan heap blocks, which keeps the pointers tests park in boot memory visible.
/// On Linux, a size the heap refuses (more than the host has, under the default overcommit
/// policy) gets an anonymous `MAP_NORESERVE` mapping instead: a simulated 1 TiB machine
/// whose boot touches a few GiB.
fn lazy_zeroed(layout: Layout) -> (NonNull<u8>, bool) {
    // SAFETY: `layout` has non-zero size.
    if let Some(p) = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }) {
        return (p, false);
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            if let Some(p) = NonNull::new(p.cast::<u8>()) {
                return (p, true);
            }
        }
    }
    alloc::handle_alloc_error(layout)
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        if self.mapped {
            #[cfg(target_os = "linux")]
            // SAFETY: mapped in `lazy_zeroed` with this size, unmapped once; nothing refers
            // to the buffer after its owner is dropped.
            unsafe {
                libc::munmap(self.raw.as_ptr().cast(), self.layout.size());
            }
        } else {
            // SAFETY: allocated in `lazy_zeroed` with this layout, freed once.
            unsafe { alloc::dealloc(self.raw.as_ptr(), self.layout) };
        }
    }
}

// SAFETY: the pointer returned lies inside the live buffer and the whole `range` fits in it;
// the buffer lives as long as `self`.
unsafe impl PhysMapper for HostMemory {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        if !self.range().contains_range(&range) {
            return None;
        }
        self.ptr_of(range.start()).or(if range.is_empty() {
            Some(self.ptr)
        } else {
            None
        })
    }

    /// The whole buffer: `ptr_of(pa)` is `ptr + (pa - base)`.
    #[inline]
    fn linear_window(&self) -> Option<LinearWindow> {
        let r = self.range();
        Some(LinearWindow {
            start: r.start().as_u64(),
            end: r.end().as_u64(),
            offset: (self.ptr.as_ptr() as u64).wrapping_sub(r.start().as_u64()),
        })
    }
}

std::thread_local! {
    /// This thread's [`HostCpus`] id (`usize::MAX` until first use). Constant-initialised:
    /// reading it never allocates.
    static CPU_ID: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// `N` host CPUs that never allocate: threads take CPU ids round-robin on first use (shared
/// by every `HostCpus` in the process, taken modulo `N`), and the "interrupts off" section is
/// a re-entrant lock per CPU. `const`-constructible, so it can live in a `static` under a
/// `#[global_allocator]` built on mmkit, where [`HostPlatform`] (whose first call on a thread
/// grows a thread-local list) would re-enter the allocator.
#[derive(Debug)]
pub struct HostCpus<const N: usize> {
    locks: [CpuLock; N],
}

impl<const N: usize> Default for HostCpus<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> HostCpus<N> {
    /// `N` CPUs (`N` must be at least 1; 0 is a compile-time error).
    pub const fn new() -> Self {
        assert!(N > 0, "HostCpus needs at least one CPU");
        Self {
            locks: [const {
                CpuLock {
                    owner: AtomicU64::new(0),
                    depth: AtomicUsize::new(0),
                }
            }; N],
        }
    }

    /// This thread's lock token: the address of its `CPU_ID` slot (never 0).
    fn thread_token() -> u64 {
        CPU_ID.with(|c| c as *const Cell<usize> as u64)
    }
}

// SAFETY: `N >= 1` is constant; a thread's id is chosen once and never changes, so
// `current_cpu` is in range and stable inside a section.
unsafe impl<const N: usize> CpuTopology for HostCpus<N> {
    fn nr_cpus(&self) -> usize {
        N
    }

    fn current_cpu(&self) -> usize {
        CPU_ID.with(|c| {
            if c.get() == usize::MAX {
                c.set(NEXT_CPU.fetch_add(1, Ordering::Relaxed));
            }
            c.get() % N
        })
    }
}

// SAFETY: as for `HostPlatform`: `save_disable` takes the current CPU's lock (re-entrantly for
// its owner thread), `restore` releases it when the outermost section ends, and `run_on_cpu`
// holds the target CPU's lock for the whole of `f`; the state is the section's CPU.
unsafe impl<const N: usize> IrqControl for HostCpus<N> {
    type State = usize;

    #[inline]
    fn save_disable(&self) -> usize {
        let cpu = self.current_cpu();
        lock_cpu(&self.locks[cpu], Self::thread_token());
        cpu
    }

    #[inline]
    fn section_cpu(&self, cpu: &usize) -> usize {
        *cpu
    }

    #[inline]
    unsafe fn restore(&self, cpu: usize) {
        unlock_cpu(&self.locks[cpu]);
    }

    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        let Some(lock) = self.locks.get(cpu) else {
            return false;
        };
        lock_cpu(lock, Self::thread_token());
        f();
        unlock_cpu(lock);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_bind_round_robin() {
        let p = Arc::new(HostPlatform::new(2));
        let a = p.current_cpu();
        assert_eq!(a, p.current_cpu(), "binding is stable");
        let p2 = p.clone();
        let b = std::thread::spawn(move || p2.current_cpu()).join().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.bind_current_thread(5), 1);
        assert_eq!(p.current_cpu(), 1);
    }

    #[test]
    fn bindings_are_per_platform_when_alternating() {
        let a = HostPlatform::new(4);
        let b = HostPlatform::new(4);
        a.bind_current_thread(3);
        b.bind_current_thread(1);
        for _ in 0..3 {
            assert_eq!(a.current_cpu(), 3);
            assert_eq!(b.current_cpu(), 1);
        }
        drop(a);
        let c = HostPlatform::new(2);
        assert_eq!(
            c.current_cpu(),
            0,
            "a new platform starts its own round-robin"
        );
        assert_eq!(b.current_cpu(), 1);
    }

    /// Four threads on `p`'s one CPU bump a counter non-atomically inside nested sections:
    /// a lost update would show two threads inside at once.
    fn sections_exclude_four_threads<P: IrqControl>(p: &P) {
        let counter = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let _g = p.irq_save();
                        let _inner = p.irq_save();
                        let v = counter.load(Ordering::Relaxed);
                        std::hint::black_box(());
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
    }

    #[test]
    fn host_cpus_sections_nest_and_exclude_threads_on_one_cpu() {
        static CPUS: HostCpus<1> = HostCpus::new();
        sections_exclude_four_threads(&CPUS);
        let ran = std::sync::atomic::AtomicBool::new(false);
        assert!(CPUS.run_on_cpu(0, &|| ran.store(true, Ordering::SeqCst)));
        assert!(ran.load(Ordering::SeqCst));
        assert!(!CPUS.run_on_cpu(1, &|| unreachable!()));
    }

    #[test]
    fn host_cpus_id_is_stable_and_in_range() {
        let cpus: HostCpus<3> = HostCpus::new();
        let a = cpus.current_cpu();
        assert!(a < 3);
        assert_eq!(a, cpus.current_cpu());
    }

    #[test]
    fn host_memory_keeps_physical_alignment_and_round_trips() {
        let mem = HostMemory::new(PhysAddr::new(0x20_0000), 8 << 20);
        let r = PhysRange::from_start_size(PhysAddr::new(0x40_0000), 0x40_0000).unwrap();
        let p = mem.phys_to_virt(r).unwrap();
        assert_eq!(
            p.as_ptr() as u64 % 0x40_0000,
            0,
            "4 MiB block stays 4 MiB aligned"
        );
        assert_eq!(
            mem.phys_of(p.as_ptr().wrapping_add(3)),
            Some(PhysAddr::new(0x40_0003))
        );
        assert_eq!(mem.phys_of(core::ptr::null()), None);
        // SAFETY: inside the buffer, zeroed.
        assert_eq!(unsafe { p.as_ptr().read() }, 0);
    }

    #[test]
    fn run_on_cpu_excludes_that_cpus_sections() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let p = Arc::new(HostPlatform::new(2));
        p.bind_current_thread(0);
        assert!(!p.run_on_cpu(2, &|| unreachable!()), "no such CPU");
        let inside = Arc::new(AtomicBool::new(false));
        let (p2, in2) = (p.clone(), inside.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            p2.bind_current_thread(1);
            let g = p2.irq_save();
            in2.store(true, Ordering::SeqCst);
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            in2.store(false, Ordering::SeqCst);
            drop(g);
        });
        rx.recv().unwrap();
        let saw = AtomicBool::new(true);
        assert!(p.run_on_cpu(1, &|| saw
            .store(inside.load(Ordering::SeqCst), Ordering::SeqCst)));
        assert!(
            !saw.load(Ordering::SeqCst),
            "ran while CPU 1 was in a section"
        );
        t.join().unwrap();
        // Re-entrant for a thread already inside CPU 0's section.
        let _g = p.irq_save();
        let ran = AtomicBool::new(false);
        assert!(p.run_on_cpu(0, &|| ran.store(true, Ordering::SeqCst)));
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn irq_sections_nest_and_exclude() {
        sections_exclude_four_threads(&HostPlatform::new(1));
    }

    #[test]
    fn host_memory_maps_its_range_only() {
        let m = HostMemory::new(PhysAddr::new(0x10_0000), 0x4000);
        let inside = PhysRange::from_start_size(PhysAddr::new(0x10_1000), 0x1000).unwrap();
        let p = m.phys_to_virt(inside).unwrap();
        // SAFETY: inside the buffer, which is zeroed.
        assert_eq!(unsafe { p.as_ptr().read() }, 0);
        let outside = PhysRange::from_start_size(PhysAddr::new(0x10_3000), 0x2000).unwrap();
        assert!(m.phys_to_virt(outside).is_none());
    }
}
