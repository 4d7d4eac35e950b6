//! Host stand-ins for a machine (feature `std`): memory and platform hooks.
//!
//! ## [`HostRam`]
//! Simulated physical memory whose *virtual* addresses keep the physical alignment of every
//! block up to [`HostRam::ALIGN`], as a kernel's direct map does (the slab's page-source
//! contract wants a block's pointer aligned to the block size). It is taken zeroed from the
//! host's `calloc`, which on Linux hands out untouched pages, so a machine of several GiB
//! costs only the memory actually used. It implements [`KernelMap`].
//!
//! ## [`HostCpus`]
//! `mmkit_addr::host::HostPlatform` keeps its thread→CPU bindings in a growable thread-local
//! list, so its first call on a thread allocates — fatal under a `#[global_allocator]` built
//! on it (the allocation would re-enter the platform mid-update). [`HostCpus`] does the same
//! job with a constant-initialised thread-local id and a fixed array of re-entrant per-CPU
//! locks, so it can sit under the global allocator of a test or benchmark binary.

use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::{self, Layout};

use mmkit_addr::{CpuTopology, IrqControl, PhysAddr, PhysMapper, PhysRange, VirtAddr, PAGE_SIZE};

use crate::map::KernelMap;

/// Zeroed host memory standing for physical `[base, base + len)`, alignment-preserving.
pub struct HostRam {
    base: u64,
    len: u64,
    /// `base` lives here; `ptr ≡ base (mod ALIGN)`.
    ptr: NonNull<u8>,
    raw: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain memory owned by this value; writers own the bytes they write (the
// `PhysMapper` contract), so sharing the pointer between threads is sound.
unsafe impl Send for HostRam {}
// SAFETY: as `Send`; `&HostRam` only hands out addresses.
unsafe impl Sync for HostRam {}

impl core::fmt::Debug for HostRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostRam")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl HostRam {
    /// Virtual addresses agree with physical ones modulo this (128 MiB, the largest buddy
    /// block mmkit-buddy supports).
    pub const ALIGN: u64 = 128 << 20;

    /// `len` bytes (rounded up to pages) standing for physical memory from `base`.
    ///
    /// Panics if the host cannot reserve the address space (test scaffolding).
    pub fn new(base: PhysAddr, len: u64) -> Self {
        let len = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let total = usize::try_from(len + Self::ALIGN).expect("host address space");
        // Alignment 1 keeps std on the `calloc` path, which maps fresh zero pages lazily.
        let layout = Layout::from_size_align(total, 1).expect("host layout");
        // SAFETY: `layout` has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let raw = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let want = base.as_u64() % Self::ALIGN;
        let have = raw.as_ptr() as u64 % Self::ALIGN;
        let skip = (want + Self::ALIGN - have) % Self::ALIGN;
        // SAFETY: `skip < ALIGN` and the allocation is `len + ALIGN` bytes, so `ptr` and the
        // `len` bytes after it are inside it.
        let ptr = unsafe { raw.add(skip as usize) };
        Self {
            base: base.as_u64(),
            len,
            ptr,
            raw,
            layout,
        }
    }

    /// The physical range this memory stands for.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(self.base), self.len).expect("host range")
    }
}

impl Drop for HostRam {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.raw.as_ptr(), self.layout) };
    }
}

// SAFETY: the pointer returned is `ptr + (start - base)` for ranges wholly inside the buffer,
// which lives as long as `self`.
unsafe impl PhysMapper for HostRam {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        if !self.range().contains_range(&range) {
            return None;
        }
        let off = range.start().as_u64() - self.base;
        // SAFETY: `off <= len`, inside (or one past) the buffer.
        Some(unsafe { self.ptr.add(off as usize) })
    }
}

// SAFETY: the inverse of `phys_to_virt` over `[ptr, ptr + len)`, `None` elsewhere.
unsafe impl KernelMap for HostRam {
    fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        let off = va.as_u64().checked_sub(self.ptr.as_ptr() as u64)?;
        (off < self.len).then(|| PhysAddr::new(self.base + off))
    }
}

std::thread_local! {
    /// This thread's CPU id (`usize::MAX` until first use).
    static CPU_ID: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct CpuLock {
    /// Owner thread token (address of its `CPU_ID` slot), 0 when free.
    owner: AtomicUsize,
    depth: AtomicUsize,
}

impl CpuLock {
    const fn new() -> Self {
        CpuLock {
            owner: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
        }
    }
}

/// `N` host CPUs: threads take CPU ids round-robin on first use (shared by every `HostCpus`
/// in the process, taken modulo `N`), and the "interrupts off" section is a re-entrant lock
/// per CPU. `const`-constructible, so it can live in a `static`.
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
    /// `N` CPUs (`N` must be at least 1; 0 is treated as a compile-time error).
    pub const fn new() -> Self {
        assert!(N > 0, "HostCpus needs at least one CPU");
        Self {
            locks: [const { CpuLock::new() }; N],
        }
    }

    fn thread_token() -> usize {
        CPU_ID.with(|c| c as *const Cell<usize> as usize)
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

// SAFETY: `save_disable` takes the current CPU's lock (re-entrantly for its owner thread) and
// `restore` releases it when the outermost section ends, so at most one thread is inside a
// section for a CPU at a time.
unsafe impl<const N: usize> IrqControl for HostCpus<N> {
    type State = usize;

    fn save_disable(&self) -> usize {
        let cpu = self.current_cpu();
        let lock = &self.locks[cpu];
        let me = Self::thread_token();
        if lock.owner.load(Ordering::Relaxed) == me {
            lock.depth.fetch_add(1, Ordering::Relaxed);
            return cpu;
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
        cpu
    }

    unsafe fn restore(&self, cpu: usize) {
        let lock = &self.locks[cpu];
        if lock.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            lock.owner.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sections_nest_and_exclude_threads_on_one_cpu() {
        static CPUS: HostCpus<1> = HostCpus::new();
        let counter = Arc::new(AtomicUsize::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let c = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let _g = CPUS.irq_save();
                        let _inner = CPUS.irq_save();
                        // Non-atomic read-modify-write: lost updates show a broken lock.
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
    fn host_ram_keeps_physical_alignment_and_round_trips() {
        let base = PhysAddr::new(0x20_0000);
        let ram = HostRam::new(base, 8 << 20);
        let r = PhysRange::from_start_size(PhysAddr::new(0x40_0000), 0x40_0000).unwrap();
        let p = ram.phys_to_virt(r).unwrap();
        assert_eq!(
            p.as_ptr() as u64 % 0x40_0000,
            0,
            "4 MiB block stays 4 MiB aligned"
        );
        assert_eq!(
            ram.virt_to_phys(VirtAddr::new(p.as_ptr() as u64 + 3)),
            Some(PhysAddr::new(0x40_0003))
        );
        let outside = PhysRange::from_start_size(PhysAddr::new(0x9f_f000), 0x2000).unwrap();
        assert!(ram.phys_to_virt(outside).is_none());
        // SAFETY: inside the buffer, zeroed.
        assert_eq!(unsafe { p.as_ptr().read() }, 0);
    }

    #[test]
    fn cpu_id_is_stable_and_in_range() {
        let cpus: HostCpus<3> = HostCpus::new();
        let a = cpus.current_cpu();
        assert!(a < 3);
        assert_eq!(a, cpus.current_cpu());
    }
}
