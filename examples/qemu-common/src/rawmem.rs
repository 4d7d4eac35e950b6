//! The one place this crate touches memory through raw pointers: a pattern write-and-verify
//! over a range the caller owns (both kernels' "RAM far from the kernel works" check, the
//! bootmem zeroing check) and a zero test.

use core::ptr::NonNull;

use crate::ensure;
use crate::harness::CheckResult;

/// The value of 64-bit word `index` in a region whose physical start is `base`: different for
/// every word and every region, so a wrong mapping or a stuck address line shows up.
pub fn pattern(base: u64, index: u64) -> u64 {
    (base ^ 0xa5a5_5a5a_0f0f_f0f0).rotate_left((index % 64) as u32) ^ index
}

/// Fill `words` 64-bit words at `ptr` with [`pattern`]`(base, i)` using volatile writes, then
/// read them all back and fail at the first mismatch.
///
/// # Safety
/// `ptr` must be valid for volatile reads and writes of `words * 8` bytes, 8-byte aligned, and
/// owned by the caller for the duration of the call (nothing else reads or writes it).
pub unsafe fn write_read_pattern(ptr: NonNull<u8>, words: usize, base: u64) -> CheckResult {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    for i in 0..words {
        // SAFETY: in bounds, aligned and owned per the caller's contract.
        unsafe { words_ptr.add(i).write_volatile(pattern(base, i as u64)) };
    }
    // SAFETY: the caller's contract covers reading back.
    unsafe { check_pattern(ptr, words, base) }
}

/// Check that the `words` 64-bit words at `ptr` hold [`pattern`]`(base, i)` (volatile reads),
/// failing at the first mismatch: to read back, through another mapping, what
/// [`write_read_pattern`] wrote.
///
/// # Safety
/// `ptr` must be valid for volatile reads of `words * 8` bytes and 8-byte aligned.
pub unsafe fn check_pattern(ptr: NonNull<u8>, words: usize, base: u64) -> CheckResult {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    for i in 0..words {
        // SAFETY: in bounds and aligned per the caller's contract.
        let got = unsafe { words_ptr.add(i).read_volatile() };
        let want = pattern(base, i as u64);
        ensure!(
            got == want,
            "word {i} at {base:#x} reads {got:#x}, wrote {want:#x}"
        );
    }
    Ok(())
}

/// Store `value` in 64-bit word `index` at `ptr` (a volatile write).
///
/// # Safety
/// `ptr` must be valid for a volatile write of word `index`, 8-byte aligned, and owned by the
/// caller.
pub unsafe fn store_word(ptr: NonNull<u8>, index: usize, value: u64) {
    // SAFETY: in bounds, aligned and owned per the caller's contract.
    unsafe { ptr.cast::<u64>().as_ptr().add(index).write_volatile(value) };
}

/// Load 64-bit word `index` at `ptr` (a volatile read).
///
/// # Safety
/// `ptr` must be valid for a volatile read of word `index` and 8-byte aligned.
pub unsafe fn load_word(ptr: NonNull<u8>, index: usize) -> u64 {
    // SAFETY: in bounds and aligned per the caller's contract.
    unsafe { ptr.cast::<u64>().as_ptr().add(index).read_volatile() }
}

/// Zero the `words` 64-bit words at `ptr` (volatile writes).
///
/// # Safety
/// `ptr` must be valid for volatile writes of `words * 8` bytes, 8-byte aligned, and owned by
/// the caller.
pub unsafe fn zero(ptr: NonNull<u8>, words: usize) {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    for i in 0..words {
        // SAFETY: in bounds, aligned and owned per the caller's contract.
        unsafe { words_ptr.add(i).write_volatile(0) };
    }
}

/// Whether the `words` 64-bit words at `ptr` are all zero (volatile reads).
///
/// # Safety
/// `ptr` must be valid for volatile reads of `words * 8` bytes and 8-byte aligned.
pub unsafe fn is_zero(ptr: NonNull<u8>, words: usize) -> bool {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    // SAFETY: in bounds and aligned per the caller's contract.
    (0..words).all(|i| unsafe { words_ptr.add(i).read_volatile() } == 0)
}

/// The word [`paint`] fills unused stack with.
pub const STACK_PAINT: u64 = 0x5354_4143_4b21_5354; // "ST!KCATS"

/// Fill `words` 64-bit words at `ptr` with [`STACK_PAINT`] (volatile writes).
///
/// # Safety
/// `ptr` must be valid for volatile writes of `words * 8` bytes, 8-byte aligned, and unused
/// by anything live (for a stack: strictly below the current stack pointer).
pub unsafe fn paint(ptr: NonNull<u8>, words: usize) {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    for i in 0..words {
        // SAFETY: in bounds, aligned and unused per the caller's contract.
        unsafe { words_ptr.add(i).write_volatile(STACK_PAINT) };
    }
}

/// How many of the `words` words at `ptr`, from the lowest address up, still hold
/// [`STACK_PAINT`]: for a downward-growing stack painted by [`paint`], the part never used.
///
/// # Safety
/// `ptr` must be valid for volatile reads of `words * 8` bytes and 8-byte aligned.
pub unsafe fn painted_prefix(ptr: NonNull<u8>, words: usize) -> usize {
    let words_ptr = ptr.cast::<u64>().as_ptr();
    // SAFETY: in bounds and aligned per the caller's contract.
    (0..words)
        .position(|i| unsafe { words_ptr.add(i).read_volatile() } != STACK_PAINT)
        .unwrap_or(words)
}

/// `len` uninitialised `T`s at `ptr`, as a slice that lives for the rest of the kernel.
///
/// # Safety
/// `ptr` must be aligned for `T` and valid for reads and writes of `len * size_of::<T>()`
/// bytes for the rest of the program, and owned exclusively by the returned slice (nothing
/// else may access that memory, and this is called at most once for it).
pub unsafe fn uninit_slice<T>(
    ptr: NonNull<u8>,
    len: usize,
) -> &'static mut [core::mem::MaybeUninit<T>] {
    // SAFETY: alignment, size, lifetime and exclusivity are the caller's contract;
    // `MaybeUninit` needs no initialised contents.
    unsafe { core::slice::from_raw_parts_mut(ptr.cast().as_ptr(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn painted_prefix_measures_the_untouched_bottom() {
        let mut buf = vec![0u64; 64];
        let ptr = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` is 64 aligned words owned by this test.
        unsafe { paint(ptr, 64) };
        // SAFETY: as above.
        assert_eq!(unsafe { painted_prefix(ptr, 64) }, 64);
        buf[40] = 7; // the "stack" reached down to word 40
                     // SAFETY: as above.
        assert_eq!(unsafe { painted_prefix(ptr, 64) }, 40);
    }

    #[test]
    fn pattern_differs_between_words_and_regions() {
        let a: Vec<u64> = (0..512).map(|i| pattern(0x1000, i)).collect();
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len());
        assert_ne!(pattern(0x1000, 0), pattern(0x2000, 0));
    }

    #[test]
    fn write_read_pattern_fills_and_verifies_a_buffer() {
        let mut buf = vec![0u64; 512];
        let ptr = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` is 512 aligned words owned by this test.
        assert!(unsafe { write_read_pattern(ptr, 512, 0x7000) }.is_ok());
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &w)| w == pattern(0x7000, i as u64)));
    }
}
