//! The cache descriptor block, its per-CPU object arrays and its node depots.
//!
//! A cache is created without a heap: its descriptor, one object array per CPU and the
//! depots' magazines live in a block taken from the page source at creation (Linux
//! bootstraps `kmem_cache` from a cache of itself; mmkit takes whole pages, which is simpler
//! and needs no bootstrap order).
//!
//! ```text
//! | descriptor | pad to 64 | CpuArray 0 | CpuArray 1 | ... | objs of CPU 0 | objs of CPU 1 | ...
//!   ... | node 0's magazines | node 1's magazines | ... (the rest of the block)
//! ```
//!
//! The magazines take the block's slack, and the block is sized so each node gets at least
//! four (more, up to eight, where the slack has room): see [`Depots`].
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

    /// [`get`](Self::get) for the arrays of descriptor `desc`, found from its address
    /// (`place_descriptor` put them at a fixed offset after it) rather than through a load
    /// of `base`: one dependent load fewer on the fast paths.
    ///
    /// # Safety
    /// As [`get`](Self::get), and `self` is the `CpuArrays` that `place_descriptor::<T>`
    /// passed to the descriptor `desc` it placed.
    #[inline(always)]
    pub unsafe fn get_beside<T>(&self, desc: &T, cpu: usize) -> CpuRef<'_> {
        let base = (desc as *const T)
            .cast::<u8>()
            .wrapping_add(arrays_offset::<T>())
            .cast::<CpuArray>();
        debug_assert_eq!(base, self.base);
        CpuRef {
            // SAFETY: `base` is this block's first array (caller: `desc` was placed with
            // these arrays), `cpu < nr` (caller), and the array was formatted.
            arr: unsafe { &*base.add(cpu) },
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

    /// [`pop`](Self::pop) and count a fast allocation: the allocation fast path's one
    /// branch (an empty array, which is every array of a debug cache, returns `None`).
    #[inline(always)]
    pub fn pop_fast(&mut self) -> Option<NonNull<u8>> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        // SAFETY: n - 1 < cap: slot written by a previous push; we own the array (`get`).
        let obj = unsafe { self.arr.objs.add(n - 1).read() };
        self.arr.count.store(n - 1, Relaxed);
        bump(&self.arr.allocs, 1);
        NonNull::new(obj)
    }

    /// Push `obj` and count a fast free, unless the array is full (every array of a debug
    /// cache is) or `obj` is the object on top (a double free): then `false` and nothing
    /// changed, for the slow path to sort out.
    #[inline(always)]
    pub fn push_fast(&mut self, obj: NonNull<u8>) -> bool {
        let n = self.len();
        if n >= self.cap {
            return false;
        }
        // SAFETY: n - 1 < cap when n > 0: a slot written by a previous push; n < cap for the
        // write; we own the array (`get`).
        unsafe {
            if n > 0 && self.arr.objs.add(n - 1).read() == obj.as_ptr() {
                return false;
            }
            self.arr.objs.add(n).write(obj.as_ptr());
        }
        self.arr.count.store(n + 1, Relaxed);
        bump(&self.arr.frees, 1);
        true
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

    /// Move the `n` oldest objects (`n <= len()`) to `dst` and slide the rest down.
    ///
    /// # Safety
    /// `dst` is valid for writes of `n` pointers and does not overlap the array.
    pub unsafe fn take_oldest_into(&mut self, dst: *mut *mut u8, n: usize) {
        let len = self.len();
        let n = n.min(len);
        // SAFETY: `[0, n)` is filled; `dst` is the caller's; the slide stays in `[0, len)`.
        unsafe {
            core::ptr::copy_nonoverlapping(self.arr.objs, dst, n);
            core::ptr::copy(self.arr.objs.add(n), self.arr.objs, len - n);
        }
        self.arr.count.store(len - n, Relaxed);
    }

    /// Push `n` objects (`n <= room()`) from `src`, in order.
    ///
    /// # Safety
    /// `src` is valid for reads of `n` pointers to objects of this cache and does not
    /// overlap the array.
    pub unsafe fn push_from(&mut self, src: *const *mut u8, n: usize) {
        let len = self.len();
        let n = n.min(self.cap - len);
        // SAFETY: `[len, len + n)` is inside the array (`n <= room`); `src` is the caller's.
        unsafe { core::ptr::copy_nonoverlapping(src, self.arr.objs.add(len), n) };
        self.arr.count.store(len + n, Relaxed);
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

/// Most objects a refill or flush batch moves: half the largest per-CPU array.
pub(crate) const MAX_BATCH: usize = crate::layout::CPU_ARRAY_SMALL.div_ceil(2);

/// The per-node depots of one cache: for each node, room for `mags` magazines of `batch`
/// objects each, in the descriptor block's slack after the CPU arrays (Bonwick's magazine
/// depot; Linux's per-node "barn" of full sheaves). A CPU whose array is full hands its
/// `batch` oldest objects to its node's depot in one copy instead of returning them to their
/// slabs one by one; a CPU whose array is empty takes a magazine back the same way. How many
/// magazines a node holds lives in its lists (`NodeLists::depot_full`), under the node lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depots {
    base: *mut *mut u8,
    mags: usize,
    batch: usize,
}

// SAFETY: the region belongs to the descriptor block; every access to a node's magazines
// happens under that node's lock (the contract of the methods below).
unsafe impl Send for Depots {}
// SAFETY: as above.
unsafe impl Sync for Depots {}

impl Depots {
    /// Depots of `mags` magazines of `batch` objects per node for `nr_nodes` nodes at `base`.
    ///
    /// # Safety
    /// `base` is valid for `nr_nodes * mags * batch` pointers, 8-aligned, owned by the cache
    /// for its life and used for nothing else.
    pub unsafe fn new(base: *mut *mut u8, mags: usize, batch: usize) -> Self {
        Self { base, mags, batch }
    }

    /// Magazines a node may hold.
    pub fn mags(&self) -> usize {
        self.mags
    }

    fn magazine(&self, nid: usize, m: usize) -> *mut *mut u8 {
        // SAFETY (of the offset): `m < mags` at every caller and `nid` below the node count
        // the region was sized for, so the offset stays inside it.
        self.base.wrapping_add((nid * self.mags + m) * self.batch)
    }

    /// Move the `batch` oldest objects of `cpu` into a magazine of node `nid`; `false` (and
    /// nothing moved) if the depot is full or `cpu` holds fewer.
    ///
    /// # Safety
    /// The caller holds node `nid`'s lock, `full` is that node's magazine count, and `nid` is
    /// below the node count the depots were sized for.
    pub unsafe fn put_oldest(&self, nid: usize, full: &mut usize, cpu: &mut CpuRef<'_>) -> bool {
        if *full >= self.mags || cpu.len() < self.batch {
            return false;
        }
        let dst = self.magazine(nid, *full);
        // SAFETY: the magazine is inside the region (caller: node in range; `full < mags`)
        // and ours under the node lock; `cpu` is owned by the caller.
        unsafe { cpu.take_oldest_into(dst, self.batch) };
        *full += 1;
        true
    }

    /// Move the last magazine of node `nid` into `cpu`; `false` if there is none or `cpu`
    /// has no room for a whole one.
    ///
    /// # Safety
    /// As [`put_oldest`](Self::put_oldest).
    pub unsafe fn take_into(&self, nid: usize, full: &mut usize, cpu: &mut CpuRef<'_>) -> bool {
        if *full == 0 || cpu.room() < self.batch {
            return false;
        }
        *full -= 1;
        let src = self.magazine(nid, *full);
        // SAFETY: a magazine filled by `put_oldest`, under the node lock.
        unsafe { cpu.push_from(src, self.batch) };
        true
    }

    /// Move the last magazine of node `nid` into `buf`; returns how many objects (0: none).
    ///
    /// # Safety
    /// As [`put_oldest`](Self::put_oldest).
    pub unsafe fn pop_into(&self, nid: usize, full: &mut usize, buf: &mut [*mut u8]) -> usize {
        if *full == 0 || buf.len() < self.batch {
            return 0;
        }
        *full -= 1;
        let src = self.magazine(nid, *full);
        // SAFETY: a filled magazine of `batch` pointers, under the node lock; `buf` holds them.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), self.batch) };
        self.batch
    }

    /// Object `i` of node `nid`'s depot (`i < full * batch`).
    ///
    /// # Safety
    /// As [`put_oldest`](Self::put_oldest).
    pub unsafe fn get(&self, nid: usize, full: usize, i: usize) -> Option<NonNull<u8>> {
        if i >= full * self.batch {
            return None;
        }
        // SAFETY: inside the filled magazines of this node (`i < full * batch`).
        NonNull::new(unsafe { self.magazine(nid, 0).add(i).read() })
    }
}
