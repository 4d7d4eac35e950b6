//! Host implementations of the platform hooks, for tests, benches and simulations.
//!
//! [`HostPlatform`] registers threads as CPUs: the first call on a thread binds it to the next
//! CPU id round-robin (or [`HostPlatform::bind_current_thread`] picks one). Because more
//! threads than CPUs may exist, the "interrupts off" section is a re-entrant per-CPU lock: two
//! threads bound to the same CPU exclude each other exactly as two contexts on one CPU do when
//! interrupts are off. [`HostMemory`] is a zeroed, page-aligned buffer that stands in for a
//! stretch of physical memory at a chosen physical base.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::alloc::{self, Layout};
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::vec::Vec;

use crate::platform::{CpuTopology, IrqControl, PhysMapper};
use crate::range::PhysRange;
use crate::PhysAddr;

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

#[derive(Default)]
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
// of `f`, so `f` is excluded from that CPU's sections as they are from each other.
unsafe impl IrqControl for HostPlatform {
    type State = usize;

    #[inline]
    fn save_disable(&self) -> usize {
        let (cpu, me) = self.cpu_and_token();
        self.lock_cpu(cpu, me);
        cpu
    }

    #[inline]
    unsafe fn restore(&self, cpu: usize) {
        let lock = &self.cpus[cpu];
        debug_assert_eq!(lock.owner.load(Ordering::Relaxed), THREAD.with(|t| t.token));
        if lock.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            lock.owner.store(0, Ordering::Release);
        }
    }

    /// Takes `cpu`'s lock for the calling thread (as a thread bound to `cpu` would for its
    /// own section), runs `f`, and releases it.
    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        if cpu >= self.cpus.len() {
            return false;
        }
        let me = THREAD.with(|t| t.token);
        self.lock_cpu(cpu, me);
        f();
        // SAFETY: `lock_cpu` just took (or re-entered) this CPU's lock for this thread.
        unsafe { self.restore(cpu) };
        true
    }
}

impl HostPlatform {
    /// Take `cpu`'s lock for the thread `me`, re-entrantly.
    #[inline]
    fn lock_cpu(&self, cpu: usize, me: u64) {
        let lock = &self.cpus[cpu];
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
}

/// A zeroed, page-aligned host buffer standing in for physical memory `[base, base + len)`.
pub struct HostMemory {
    base: PhysAddr,
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value; sharing the pointer between threads
// is as safe as sharing any heap buffer, and all writes go through raw pointers whose users
// promise exclusive ownership of the bytes they write (the `PhysMapper` contract).
unsafe impl Send for HostMemory {}
// SAFETY: see `Send`; `&HostMemory` only hands out addresses.
unsafe impl Sync for HostMemory {}

impl HostMemory {
    /// Allocate `len` bytes (rounded up to 4 KiB) of zeroed memory standing for physical
    /// addresses starting at `base`. The host pages are committed lazily by the OS.
    ///
    /// Panics if the host cannot allocate the buffer (this is test scaffolding).
    pub fn new(base: PhysAddr, len: u64) -> Self {
        let len = crate::align_up(len.max(1), crate::PAGE_SIZE).expect("size overflow");
        let layout = Layout::from_size_align(len as usize, crate::PAGE_SIZE as usize)
            .expect("host memory layout");
        // SAFETY: `layout` has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { base, ptr, layout }
    }

    /// The physical range this buffer stands for.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_start_size(self.base, self.layout.size() as u64).expect("host range")
    }

    /// The host address of physical `pa`, if it is inside.
    pub fn ptr_of(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let off = pa.offset_from(self.base)?;
        if off >= self.layout.size() as u64 {
            return None;
        }
        // SAFETY: `off` is inside the allocation.
        Some(unsafe { self.ptr.add(off as usize) })
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
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
        let p = Arc::new(HostPlatform::new(1));
        let counter = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                let c = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let _g = p.irq_save();
                        let _inner = p.irq_save();
                        // A non-atomic read-modify-write: lost updates would show if two
                        // threads were inside at once.
                        let v = c.load(Ordering::Relaxed);
                        std::hint::black_box(());
                        c.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
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
