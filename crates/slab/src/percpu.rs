//! The cache descriptor block and its per-CPU object arrays.
//!
//! A cache is created without a heap: its descriptor and one object array per CPU live in a
//! block taken from the page source at creation (Linux bootstraps `kmem_cache` from a cache
//! of itself; mmkit takes whole pages, which is simpler and needs no bootstrap order).
//!
//! ```text
//! | descriptor | pad to 64 | CpuArray 0 | CpuArray 1 | ... | objs of CPU 0 | objs of CPU 1 | ...
//! ```
//!
//! Each [`CpuArray`] is a LIFO stack of free objects (Linux's per-CPU *sheaves*, earlier SLAB's
//! `array_cache`), one cache line of bookkeeping per CPU so CPUs never share a line. Only the
//! owning CPU writes its array, inside an `IrqGuard`; the counters are atomics so reports may
//! read them from elsewhere (plain loads and stores, no read-modify-write, so they cost what a
//! plain counter costs). The fast path bumps exactly one counter per operation (`allocs` or
//! `frees`); the slow-path counts are bumped on the slow path only, and the fast-path counts
//! are derived as the difference when a report asks.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::page_source::PageBlock;

/// One CPU's array bookkeeping.
#[repr(C, align(64))]
pub(crate) struct CpuArray {
    count: AtomicUsize,
    alloc_slow: AtomicU64,
    free_slow: AtomicU64,
    allocs: AtomicU64,
    frees: AtomicU64,
    objs: *mut *mut u8,
    /// The CPU's memory node (fixed at creation).
    node: usize,
}

/// Counters of one CPU.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuCounters {
    pub cached: usize,
    pub alloc_fast: u64,
    pub free_fast: u64,
    pub allocs: u64,
    pub frees: u64,
}

/// The per-CPU arrays of one cache.
#[derive(Debug)]
pub(crate) struct CpuArrays {
    base: *mut CpuArray,
    nr: usize,
    cap: usize,
}

/// Bytes of the descriptor block for a descriptor of type `T`.
pub(crate) const fn block_bytes<T>(nr_cpus: usize, cap: usize) -> usize {
    arrays_offset::<T>() + nr_cpus * (size_of::<CpuArray>() + cap * size_of::<*mut u8>())
}

const fn arrays_offset<T>() -> usize {
    let a = align_of::<CpuArray>();
    (size_of::<T>() + a - 1) & !(a - 1)
}

/// Write `make(arrays)` at the start of `block` and format `nr_cpus` empty arrays of `cap`
/// objects after it. Returns the descriptor.
///
/// # Safety
/// `block` is valid for writes of `block_bytes::<T>(nr_cpus, cap)` bytes, aligned to at least
/// a page, owned by the caller, and stays so while the descriptor is used.
pub(crate) unsafe fn place_descriptor<T>(
    block: PageBlock,
    nr_cpus: usize,
    cap: usize,
    cpu_node: impl Fn(usize) -> usize,
    make: impl FnOnce(CpuArrays) -> T,
) -> NonNull<T> {
    let base = block.ptr.as_ptr();
    // SAFETY: caller's contract; offsets stay inside `block_bytes`, and the page alignment
    // satisfies the 64-byte alignment of `CpuArray` and of `T` (asserted by the caller's
    // static checks).
    unsafe {
        let arrays = base.add(arrays_offset::<T>()).cast::<CpuArray>();
        let objs = arrays.add(nr_cpus).cast::<*mut u8>();
        for cpu in 0..nr_cpus {
            arrays.add(cpu).write(CpuArray {
                count: AtomicUsize::new(0),
                alloc_slow: AtomicU64::new(0),
                free_slow: AtomicU64::new(0),
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                objs: objs.add(cpu * cap),
                node: cpu_node(cpu),
            });
        }
        let desc = base.cast::<T>();
        desc.write(make(CpuArrays {
            base: arrays,
            nr: nr_cpus,
            cap,
        }));
        NonNull::new_unchecked(desc)
    }
}

/// Exclusive use of one CPU's array for the length of a borrow.
pub(crate) struct CpuRef<'g> {
    arr: &'g CpuArray,
    cap: usize,
}

// SAFETY: the arrays point into the descriptor block; all writes to one CPU's array happen
// under that CPU's IrqGuard (or with exclusive access to the cache), see `CpuArrays::get`.
unsafe impl Send for CpuArrays {}
// SAFETY: as above.
unsafe impl Sync for CpuArrays {}

impl CpuArrays {
    /// Number of CPUs.
    pub fn nr_cpus(&self) -> usize {
        self.nr
    }

    /// Capacity of each array.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The array of `cpu`.
    ///
    /// # Safety
    /// `cpu < nr_cpus()`, and while the result lives nobody else uses this CPU's array: the
    /// caller holds an `IrqGuard` for `cpu` of the platform the cache was built for and does
    /// not re-enter the cache on this CPU, or the caller has exclusive access to the cache.
    pub unsafe fn get(&self, cpu: usize) -> CpuRef<'_> {
        CpuRef {
            // SAFETY: `cpu < nr` (caller), and the array was formatted by `place_descriptor`.
            arr: unsafe { &*self.base.add(cpu) },
            cap: self.cap,
        }
    }

    /// The node of `cpu` (0 for CPUs out of range).
    pub fn node(&self, cpu: usize) -> usize {
        if cpu >= self.nr {
            return 0;
        }
        // SAFETY: in range; `node` is immutable after formatting.
        unsafe { (*self.base.add(cpu)).node }
    }

    /// Counters of `cpu` (racy snapshot; exact when no CPU is using the cache).
    pub fn counters(&self, cpu: usize) -> CpuCounters {
        if cpu >= self.nr {
            return CpuCounters::default();
        }
        // SAFETY: in range; only atomics are read.
        let a = unsafe { &*self.base.add(cpu) };
        let (allocs, frees) = (a.allocs.load(Relaxed), a.frees.load(Relaxed));
        CpuCounters {
            cached: a.count.load(Relaxed),
            alloc_fast: allocs.wrapping_sub(a.alloc_slow.load(Relaxed)),
            free_fast: frees.wrapping_sub(a.free_slow.load(Relaxed)),
            allocs,
            frees,
        }
    }
}

#[inline]
fn bump(c: &AtomicU64, by: u64) {
    // Only the owning CPU writes: a load and a store, no locked RMW.
    c.store(c.load(Relaxed).wrapping_add(by), Relaxed);
}

impl CpuRef<'_> {
    /// The CPU's memory node.
    #[inline]
    pub fn node(&self) -> usize {
        self.arr.node
    }

    /// Objects held.
    #[inline]
    pub fn len(&self) -> usize {
        self.arr.count.load(Relaxed)
    }

    /// Whether the array is full.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// Take the most recently pushed object.
    #[inline]
    pub fn pop(&mut self) -> Option<NonNull<u8>> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        // SAFETY: n - 1 < cap: slot written by a previous push; we own the array (`get`).
        let obj = unsafe { self.arr.objs.add(n - 1).read() };
        self.arr.count.store(n - 1, Relaxed);
        NonNull::new(obj)
    }

    /// The most recently pushed object, if any.
    #[inline]
    pub fn last(&self) -> Option<NonNull<u8>> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        // SAFETY: as in `pop`.
        NonNull::new(unsafe { self.arr.objs.add(n - 1).read() })
    }

    /// Push an object; `false` if full.
    #[inline]
    pub fn push(&mut self, obj: NonNull<u8>) -> bool {
        let n = self.len();
        if n >= self.cap {
            return false;
        }
        // SAFETY: n < cap; we own the array (`get`).
        unsafe { self.arr.objs.add(n).write(obj.as_ptr()) };
        self.arr.count.store(n + 1, Relaxed);
        true
    }

    /// Room left.
    #[inline]
    pub fn room(&self) -> usize {
        self.cap - self.len()
    }

    /// Object at position `i` (0 = oldest).
    pub fn get(&self, i: usize) -> Option<NonNull<u8>> {
        if i >= self.len() {
            return None;
        }
        // SAFETY: i < count <= cap.
        NonNull::new(unsafe { self.arr.objs.add(i).read() })
    }

    /// Remove the `n` oldest objects (bottom of the stack), handing each to `f`, and slide
    /// the rest down.
    pub fn take_oldest(&mut self, n: usize, mut f: impl FnMut(NonNull<u8>)) {
        let len = self.len();
        let n = n.min(len);
        for i in 0..n {
            if let Some(o) = self.get(i) {
                f(o);
            }
        }
        // SAFETY: both ranges are inside `[0, len)`; `copy` handles the overlap.
        unsafe { core::ptr::copy(self.arr.objs.add(n), self.arr.objs, len - n) };
        self.arr.count.store(len - n, Relaxed);
    }

    /// Count one allocation (`fast`: served from the array without the node lock).
    #[inline]
    pub fn count_alloc(&self, fast: bool) {
        bump(&self.arr.allocs, 1);
        if !fast {
            bump(&self.arr.alloc_slow, 1);
        }
    }

    /// Count one free (`fast`: absorbed by the array without the node lock).
    #[inline]
    pub fn count_free(&self, fast: bool) {
        bump(&self.arr.frees, 1);
        if !fast {
            bump(&self.arr.free_slow, 1);
        }
    }
}
