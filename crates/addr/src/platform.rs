//! Platform hooks: what the allocators need from the kernel they run in.
//!
//! * [`CpuTopology`]: how many CPUs there are and which one runs the caller.
//! * [`IrqControl`]: disable and restore local interrupts. Inside an [`IrqGuard`] the caller is
//!   the only context on its CPU that can touch that CPU's per-CPU data, so per-CPU lists need
//!   no lock. This is the only exclusion per-CPU code relies on.
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

    /// Disable interrupts until the returned guard is dropped.
    #[inline]
    fn irq_save(&self) -> IrqGuard<'_, Self>
    where
        Self: Sized,
    {
        IrqGuard::new(self)
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
        let cpu = platform.current_cpu();
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
pub unsafe trait PhysMapper: Sync {
    /// The virtual address of `range.start()`, or `None` if any part of `range` is not
    /// reachable through this mapper.
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>>;
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
        NonNull::new(va as usize as *mut u8)
    }
}
