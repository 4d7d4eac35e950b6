//! Platform hooks: what the allocators need from the kernel they run in.
//!
//! * [`CpuTopology`]: how many CPUs there are and which one runs the caller.
//! * [`IrqControl`]: disable and restore local interrupts. Inside an [`IrqGuard`] the caller is
//!   the only context on its CPU that can touch that CPU's per-CPU data, so per-CPU lists need
//!   no lock. This is the only exclusion per-CPU code relies on. Its optional
//!   [`run_on_cpu`](IrqControl::run_on_cpu) is the cross-CPU call (an IPI in a kernel) that
//!   lets a cache drain other CPUs' per-CPU data.
//! * [`PhysMapper`]: a virtual address for physical memory the kernel can touch, used only for
//!   explicit requests (zeroing an allocation, slab object storage); the allocators never touch
//!   free memory.
//!
//! The traits are `unsafe` because allocator soundness depends on their promises: a wrong CPU
//! id or a guard that does not exclude would let two contexts share one per-CPU list, and a
//! wrong mapping would let a zeroing write land on somebody else's memory.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::range::PhysRange;

/// The CPUs of the machine.
///
/// # Safety
/// * [`nr_cpus`](CpuTopology::nr_cpus) is at least 1 and never changes for the life of the
///   implementor.
/// * [`current_cpu`](CpuTopology::current_cpu) returns a value below `nr_cpus()`, and returns
///   the same value for the whole of an [`IrqControl`] section on the calling context.
pub unsafe trait CpuTopology: Sync {
    /// The number of CPUs (the possible CPUs, fixed at boot).
    fn nr_cpus(&self) -> usize;

    /// The id of the CPU running the caller, in `0..nr_cpus()`.
    fn current_cpu(&self) -> usize;
}

/// Local interrupt control.
///
/// # Safety
/// Between [`save_disable`](IrqControl::save_disable) and the matching
/// [`restore`](IrqControl::restore), no other context may run on the caller's CPU *inside its
/// own* `save_disable` section: the caller is neither preempted by nor interleaved with another
/// user of the same per-CPU data. In a kernel this holds when local interrupts are off (and no
/// NMI handler allocates); the host implementation holds a per-CPU lock. Sections nest.
///
/// When [`run_on_cpu(cpu, f)`](IrqControl::run_on_cpu) returns `true`, `f` ran to completion
/// exactly once, as a section of CPU `cpu`: excluded from every other `save_disable` section
/// on `cpu` exactly as that CPU's own sections are.
///
/// [`section_cpu(state)`](IrqControl::section_cpu) returns what `current_cpu` returns inside
/// the section that returned `state`.
pub unsafe trait IrqControl: CpuTopology {
    /// What `save_disable` saved (on hardware, the previous interrupt flag).
    type State;

    /// Disable local interrupts and return the previous state.
    fn save_disable(&self) -> Self::State;

    /// Restore the state saved by the matching `save_disable`.
    ///
    /// # Safety
    /// `state` must come from the most recent `save_disable` on this context that has not been
    /// restored yet (sections are strictly nested, restored last-in first-out).
    unsafe fn restore(&self, state: Self::State);

    /// The CPU of the section `state` opened: what [`current_cpu`](CpuTopology::current_cpu)
    /// returns inside it. The default asks `current_cpu`; a platform whose state already names
    /// the CPU returns that and saves a lookup per section.
    #[inline]
    fn section_cpu(&self, state: &Self::State) -> usize {
        let _ = state;
        self.current_cpu()
    }

    /// Disable interrupts until the returned guard is dropped.
    #[inline]
    fn irq_save(&self) -> IrqGuard<'_, Self>
    where
        Self: Sized,
    {
        IrqGuard::new(self)
    }

    /// Run `f` on CPU `cpu` with its interrupts off and wait for it (Linux
    /// `smp_call_function_single(cpu, f, wait = true)`, which a kernel implements with an
    /// IPI). Returns `false`, without running `f`, if the platform cannot reach `cpu`.
    ///
    /// Call it with interrupts on (outside any section): two CPUs waiting for each other's
    /// call with interrupts off would deadlock, on hardware as on the host.
    ///
    /// The default reaches only the calling CPU, which is all a uniprocessor kernel or one
    /// without cross-CPU calls needs.
    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool
    where
        Self: Sized,
    {
        let guard = self.irq_save();
        if guard.cpu() != cpu {
            return false;
        }
        f();
        true
    }
}

// SAFETY: a reference forwards every call to the platform it names, which keeps the promises.
unsafe impl<T: CpuTopology + ?Sized> CpuTopology for &T {
    #[inline]
    fn nr_cpus(&self) -> usize {
        (**self).nr_cpus()
    }
    #[inline]
    fn current_cpu(&self) -> usize {
        (**self).current_cpu()
    }
}

// SAFETY: as above; a kernel may keep its platform in a `static` and hand the allocators a
// reference to it.
unsafe impl<T: IrqControl> IrqControl for &T {
    type State = T::State;

    #[inline]
    fn save_disable(&self) -> T::State {
        (**self).save_disable()
    }

    #[inline]
    unsafe fn restore(&self, state: T::State) {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).restore(state) }
    }

    #[inline]
    fn section_cpu(&self, state: &T::State) -> usize {
        (**self).section_cpu(state)
    }

    fn run_on_cpu(&self, cpu: usize, f: &(dyn Fn() + Sync)) -> bool {
        (**self).run_on_cpu(cpu, f)
    }
}

/// Local interrupts are off (or the host equivalent is held) while this lives. The guard knows
/// the CPU it pinned; it cannot move to another thread.
pub struct IrqGuard<'a, P: IrqControl> {
    platform: &'a P,
    state: ManuallyDrop<P::State>,
    cpu: usize,
    _not_send: PhantomData<*const ()>,
}

impl<'a, P: IrqControl> IrqGuard<'a, P> {
    /// Disable interrupts on `platform` until the guard is dropped.
    #[inline]
    pub fn new(platform: &'a P) -> Self {
        let state = platform.save_disable();
        let cpu = platform.section_cpu(&state);
        Self {
            platform,
            state: ManuallyDrop::new(state),
            cpu,
            _not_send: PhantomData,
        }
    }

    /// The CPU this section runs on; stable for the guard's life.
    #[inline]
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<P: IrqControl> Drop for IrqGuard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `state` is taken exactly once, here, and never used again.
        let state = unsafe { ManuallyDrop::take(&mut self.state) };
        // SAFETY: guards are created by `new` (which called `save_disable`) and are `!Send`, so
        // the state is restored on the same context; Rust drops nested guards in reverse order
        // of creation, which is the nesting `restore` requires.
        unsafe { self.platform.restore(state) };
    }
}

impl<P: IrqControl> fmt::Debug for IrqGuard<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IrqGuard").field("cpu", &self.cpu).finish()
    }
}

/// Physical-to-virtual translation for memory the kernel can touch.
///
/// # Safety
/// When [`phys_to_virt`](PhysMapper::phys_to_virt) returns `Some(p)` for `range`, then `p` is
/// valid for reads and writes of `range.len()` bytes, it is the virtual address of
/// `range.start()` (successive bytes map successive physical addresses), and it stays valid for
/// as long as the mapper is alive. Whether writing there is *allowed* is the caller's business:
/// callers only write memory they own.
///
/// When [`linear_window`](PhysMapper::linear_window) returns `Some(w)`, then for every
/// non-empty `range` with `w.start <= range.start()` and `range.end() <= w.end`,
/// `phys_to_virt(range)` returns `Some(p)` with `p` equal to `range.start() + w.offset`
/// (wrapping), so callers may compute that address instead of asking.
pub unsafe trait PhysMapper: Sync {
    /// The virtual address of `range.start()`, or `None` if any part of `range` is not
    /// reachable through this mapper.
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>>;

    /// A stretch of physical memory this mapper maps at a fixed offset, if any, so that hot
    /// paths (page-table walks) can turn a physical address into a virtual one with one
    /// compare and one add instead of a call per access. The default, `None`, promises
    /// nothing; callers must still work (through [`phys_to_virt`](PhysMapper::phys_to_virt))
    /// outside the window.
    #[inline]
    fn linear_window(&self) -> Option<LinearWindow> {
        None
    }
}

/// Physical `[start, end)` mapped at `pa + offset` (wrapping add), as reported by
/// [`PhysMapper::linear_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearWindow {
    /// First physical address of the window.
    pub start: u64,
    /// End of the window (exclusive).
    pub end: u64,
    /// Added (wrapping) to a physical address inside the window to get its virtual address.
    pub offset: u64,
}

/// A mapper for a kernel direct map: physical address `pa` is at virtual `pa + offset`, for
/// physical addresses below `limit`. Offset 0 is the identity map.
#[derive(Debug, Clone, Copy)]
pub struct OffsetMapper {
    offset: u64,
    limit: u64,
}

impl OffsetMapper {
    /// A direct map at `offset` covering physical `[0, limit)`.
    ///
    /// # Safety
    /// Every physical address in `[0, limit)` that is RAM must be mapped readable and writable
    /// at `pa + offset` for as long as the mapper is used, and `limit + offset` must not wrap.
    pub const unsafe fn new(offset: u64, limit: u64) -> Self {
        Self { offset, limit }
    }
}

// SAFETY: `new`'s contract is exactly the mapping promise the trait requires; the bounds check
// below keeps the whole range under `limit`.
unsafe impl PhysMapper for OffsetMapper {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        if range.end().as_u64() > self.limit {
            return None;
        }
        let va = range.start().as_u64().checked_add(self.offset)?;
        // A virtual address wider than the host's pointers is not mapped (32-bit hosts).
        NonNull::new(usize::try_from(va).ok()? as *mut u8)
    }

    /// All of `[0, limit)`, except physical 0 under an identity map (whose virtual address
    /// would be null, which `phys_to_virt` refuses).
    #[inline]
    fn linear_window(&self) -> Option<LinearWindow> {
        self.limit.checked_add(self.offset)?;
        Some(LinearWindow {
            start: u64::from(self.offset == 0),
            end: self.limit,
            offset: self.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhysAddr;

    /// The window promise: inside it, `phys_to_virt` is exactly `start + offset`.
    #[test]
    fn offset_mapper_window_agrees_with_phys_to_virt() {
        for (offset, limit) in [
            (0u64, 1u64 << 30),
            (0xffff_8000_0000_0000, 1 << 40),
            (4096, 8192),
        ] {
            // SAFETY: the mapper is only asked for addresses, never dereferenced.
            let m = unsafe { OffsetMapper::new(offset, limit) };
            let w = m.linear_window().expect("offset mappers have a window");
            assert_eq!((w.end, w.offset), (limit, offset));
            for start in [w.start, w.start + 1, 4096, limit / 2, limit - 8] {
                for len in [1u64, 8, 4096] {
                    if start < w.start || start + len > w.end {
                        continue;
                    }
                    let r = PhysRange::from_start_size(PhysAddr::new(start), len).unwrap();
                    let p = m.phys_to_virt(r).expect("inside the window");
                    assert_eq!(p.as_ptr() as u64, start.wrapping_add(w.offset));
                }
            }
            // Just outside: the window must not claim what phys_to_virt refuses.
            let past = PhysRange::from_start_size(PhysAddr::new(w.end - 8), 16).unwrap();
            assert!(m.phys_to_virt(past).is_none());
            if w.start > 0 {
                let zero = PhysRange::from_start_size(PhysAddr::new(0), 8).unwrap();
                assert!(m.phys_to_virt(zero).is_none());
            }
        }
        // A mapper whose window would wrap has none.
        // SAFETY: as above.
        let m = unsafe { OffsetMapper::new(u64::MAX - 10, 100) };
        assert_eq!(m.linear_window(), None);
    }
}
