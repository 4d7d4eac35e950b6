//! The boot stack both kernels start on: a guard page at its bottom (left unmapped by the
//! kernels' own tables, so running off the stack faults) and painting to measure how deep
//! the stack has been.

use core::ptr::NonNull;

use mmkit_addr::{PhysAddr, PhysRange};

use crate::rawmem;

/// Size of the guard page at the bottom of the boot stack.
pub const GUARD_SIZE: usize = 4096;

/// Bytes of boot stack below the current stack pointer that are left out of painting, for
/// the frames of the painting code itself.
const PAINT_MARGIN: usize = 4096;

/// A boot stack of `size` bytes from `bottom` (an identity-mapped address), its lowest page
/// the guard.
#[derive(Debug, Clone, Copy)]
pub struct BootStack {
    bottom: usize,
    size: usize,
}

impl BootStack {
    /// The stack `[bottom, bottom + size)`.
    ///
    /// # Safety
    /// The range is the boot stack: page-aligned, at least two pages, the same address
    /// physically and virtually, and everything above the guard page is mapped in every
    /// address space the kernel runs in.
    pub const unsafe fn new(bottom: usize, size: usize) -> Self {
        Self { bottom, size }
    }

    /// The guard page, which the kernel's tables leave unmapped.
    pub fn guard(&self) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(self.bottom as u64), GUARD_SIZE as u64)
            .unwrap_or(PhysRange::EMPTY)
    }

    /// Bytes above the guard page.
    pub const fn usable(&self) -> usize {
        self.size - GUARD_SIZE
    }

    /// Fill the unused part of the stack (above the guard page, below `sp` minus a margin)
    /// with a known word, so [`used`](Self::used) can later find how deep the stack went.
    /// Call once, early, with the current stack pointer.
    pub fn paint(&self, sp: usize) {
        let bottom = self.bottom + GUARD_SIZE;
        let end = sp.saturating_sub(PAINT_MARGIN) & !7;
        if let (Some(ptr), true) = (NonNull::new(bottom as *mut u8), end > bottom) {
            // SAFETY: `[bottom, end)` is boot stack (`new`'s contract) below the caller's
            // stack pointer minus a margin that covers this function's callees: nothing live
            // is there.
            unsafe { rawmem::paint(ptr, (end - bottom) / 8) };
        }
    }

    /// The deepest the stack has been since [`paint`](Self::paint), in bytes of
    /// [`usable`](Self::usable).
    pub fn used(&self) -> u64 {
        let bottom = self.bottom + GUARD_SIZE;
        let Some(ptr) = NonNull::new(bottom as *mut u8) else {
            return self.usable() as u64;
        };
        // SAFETY: above the guard page the stack is `usable()` bytes of mapped memory,
        // page-aligned (`new`'s contract).
        let untouched = unsafe { rawmem::painted_prefix(ptr, self.usable() / 8) };
        (self.usable() - untouched * 8) as u64
    }
}
