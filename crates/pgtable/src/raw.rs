//! The only module that turns physical table addresses into memory.
//!
//! A table is viewed as a slice of `AtomicU64` entries: hardware walkers and (on x86) the
//! hardware's accessed/dirty updates may touch entries concurrently with us, so every access is
//! a single atomic load, store or read-modify-write, never a torn or cached plain access.
//!
//! Freed tables waiting for a TLB flush are linked through their entry 0, encoded as an
//! *invalid* entry on both architectures (bit 0 clear, bit 1 set), so a stale walk-cache entry
//! that still reaches such a table before the flush sees a fault, never a mapping we did not
//! make.

use core::sync::atomic::{AtomicU64, Ordering};

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange};

/// Link value for the last table of a freed-table list.
const LINK_END: u64 = 0b10;

/// The entries of the table frame at `pa` (`bytes` long), or `None` if the mapper cannot reach
/// it or the address is misaligned.
#[inline(always)]
pub(crate) fn table_at<M: PhysMapper>(
    mapper: &M,
    pa: PhysAddr,
    bytes: u64,
) -> Option<&[AtomicU64]> {
    if !pa.is_aligned(bytes) {
        return None;
    }
    let range = PhysRange::from_start_size(pa, bytes).ok()?;
    let ptr = mapper.phys_to_virt(range)?;
    if ptr.as_ptr() as usize % core::mem::align_of::<AtomicU64>() != 0 {
        return None;
    }
    // SAFETY: the `PhysMapper` contract makes `ptr` valid for reads and writes of `bytes` bytes
    // for as long as `mapper` (which the returned borrow outlives not) is alive; the alignment is
    // checked above; table frames are only ever accessed through atomics (this module, the
    // software MMU and the hardware), so shared `&AtomicU64` views are sound.
    Some(unsafe {
        core::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU64>(), (bytes / 8) as usize)
    })
}

/// Read an entry.
#[inline]
pub(crate) fn load(t: &[AtomicU64], i: usize) -> u64 {
    t[i].load(Ordering::Relaxed)
}

/// Write an entry that the hardware may not be walking through yet, or clear one.
#[inline]
pub(crate) fn store(t: &[AtomicU64], i: usize, v: u64) {
    t[i].store(v, Ordering::Relaxed)
}

/// Install an entry that publishes a table filled just before (release ordering, so the
/// child's entries are visible before the pointer to it).
#[inline]
pub(crate) fn publish(t: &[AtomicU64], i: usize, v: u64) {
    t[i].store(v, Ordering::Release)
}

/// Atomically replace bits: `new = f(old)`, retried if the hardware changed the entry (for
/// example by setting accessed/dirty) in between. Returns the old value.
#[inline]
pub(crate) fn update(t: &[AtomicU64], i: usize, mut f: impl FnMut(u64) -> u64) -> u64 {
    let mut old = t[i].load(Ordering::Relaxed);
    loop {
        match t[i].compare_exchange_weak(old, f(old), Ordering::AcqRel, Ordering::Relaxed) {
            Ok(v) => return v,
            Err(v) => old = v,
        }
    }
}

/// Zero a whole table (host arena).
#[cfg(any(test, feature = "std"))]
pub(crate) fn zero(t: &[AtomicU64]) {
    for e in t {
        e.store(0, Ordering::Relaxed);
    }
}

/// Link a detached table to the next one of a list (`None` ends the list).
#[inline]
pub(crate) fn set_link(t: &[AtomicU64], next: Option<PhysAddr>) {
    let v = match next {
        Some(pa) => pa.as_u64() | LINK_END,
        None => LINK_END,
    };
    t[0].store(v, Ordering::Relaxed);
}

/// The next table of a list.
#[inline]
pub(crate) fn link(t: &[AtomicU64]) -> Option<PhysAddr> {
    let v = t[0].load(Ordering::Relaxed);
    if v == LINK_END {
        None
    } else {
        Some(PhysAddr::new(v & !LINK_END))
    }
}
