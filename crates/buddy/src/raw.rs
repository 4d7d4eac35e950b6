//! The only `unsafe` in the crate: turning caller-provided uninitialised storage into
//! initialised slices, and zeroing freshly allocated frames through a `PhysMapper`.

use core::mem::MaybeUninit;

use mmkit_addr::{PhysMapper, PhysRange};

/// Initialise every slot of `s` with `f(index)` and return the slice as initialised.
pub(crate) fn init_slice<T>(s: &mut [MaybeUninit<T>], mut f: impl FnMut(usize) -> T) -> &mut [T] {
    for (i, slot) in s.iter_mut().enumerate() {
        slot.write(f(i));
    }
    let len = s.len();
    let ptr = s.as_mut_ptr().cast::<T>();
    // SAFETY: the loop above wrote every element; `MaybeUninit<T>` has the layout of `T`, so
    // the pointer and length describe `len` initialised `T`s, exclusively borrowed from `s` for
    // the returned lifetime.
    unsafe { core::slice::from_raw_parts_mut(ptr, len) }
}

/// Zero `range` through `mapper`. Returns `false` (writing nothing) if the mapper cannot
/// reach all of it. The caller owns the frames (it just allocated them).
pub(crate) fn zero_range(mapper: &dyn PhysMapper, range: PhysRange) -> bool {
    let Some(ptr) = mapper.phys_to_virt(range) else {
        return false;
    };
    // SAFETY: `PhysMapper`'s contract makes `ptr` valid for writes of `range.len()` bytes of
    // exactly these frames; they were just allocated to the caller, so nobody else uses them.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, range.len() as usize) };
    true
}
