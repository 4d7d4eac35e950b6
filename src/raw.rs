//! All raw-memory code of the facade: carving typed storage out of bootmem.
//!
//! At boot every structure the allocators need (memmaps, per-CPU lists, the page-owner
//! table, the vmalloc bitmaps, the allocator object itself) is placed in memory taken from
//! bootmem and reached through the kernel's [`KernelMap`]. Two helpers do it:
//! [`boot_slice`] hands out `&'m mut [MaybeUninit<T>]` and [`boot_place`] moves a value in.
//!
//! ## Why this is sound
//! [`MmBuilder::new`](crate::MmBuilder::new) is `unsafe` with bootmem's `set_mapper`
//! contract: every free byte of the bootmem is real memory nothing else touches, reachable
//! through the map for `'m`. A range bootmem allocates is removed from the free set for good
//! (bootmem is consumed by the hand-off, and allocated ranges stay reserved in it), so the
//! slice is exclusively ours for `'m`. Alignment is checked on the virtual address.

use core::mem::{align_of, size_of, MaybeUninit};

use mmkit_addr::{PhysRange, PAGE_SIZE};
use mmkit_bootmem::{AllocRequest, Bootmem, NodeId};

use crate::builder::BootError;
use crate::map::KernelMap;

/// Most boot-metadata allocations one boot makes (a handful, plus two per node and three for
/// vmalloc).
pub(crate) const META_MAX: usize = 40;

/// The physical ranges of every boot-metadata allocation, so the page-owner table can mark
/// them as mmkit's own and `Mm::free_reserved_range` can refuse to free them.
pub(crate) struct MetaLog {
    ranges: [PhysRange; META_MAX],
    len: usize,
}

impl MetaLog {
    pub(crate) const fn new() -> Self {
        Self {
            ranges: [PhysRange::EMPTY; META_MAX],
            len: 0,
        }
    }

    fn push(&mut self, r: PhysRange) -> Result<(), BootError> {
        let slot = self
            .ranges
            .get_mut(self.len)
            .ok_or(BootError::MetadataTooLarge)?;
        *slot = r;
        self.len += 1;
        Ok(())
    }

    /// Every range logged.
    pub(crate) fn ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }
}

/// Allocate room for `n` values of `T` from `bm` (preferring `node`), page-aligned, and log
/// the range in `log`.
///
/// The contract of [`MmBuilder::new`](crate::MmBuilder::new) must hold for `bm` and `map`
/// (module docs); the builder is the only caller.
pub(crate) fn boot_slice<'m, T>(
    bm: &mut Bootmem<'m>,
    map: &'m dyn KernelMap,
    log: &mut MetaLog,
    n: usize,
    node: Option<NodeId>,
) -> Result<&'m mut [MaybeUninit<T>], BootError> {
    let bytes = size_of::<T>()
        .checked_mul(n)
        .ok_or(BootError::MetadataTooLarge)? as u64;
    if bytes == 0 {
        return Ok(&mut []);
    }
    let align = (align_of::<T>() as u64).max(PAGE_SIZE);
    let mut req = AllocRequest::new(bytes, align);
    if let Some(nid) = node {
        req = req.prefer_node(nid);
    }
    let pa = bm.alloc_request(&req).map_err(BootError::Bootmem)?;
    let range = PhysRange::from_start_size(pa, bytes).map_err(|_| BootError::MetadataTooLarge)?;
    log.push(range)?;
    let ptr = map.phys_to_virt(range).ok_or(BootError::Unmapped(range))?;
    if ptr.as_ptr() as usize % align_of::<T>() != 0 {
        return Err(BootError::Unmapped(range));
    }
    // SAFETY: bootmem handed `range` to us alone for good (module docs: `MmBuilder::new`'s
    // contract), the map makes `bytes` bytes at `ptr` valid for reads and writes for `'m`
    // (`PhysMapper`'s contract), and `ptr` is aligned for `T` (checked above).
    // `MaybeUninit<T>` needs no initialisation.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr().cast::<MaybeUninit<T>>(), n) })
}

/// Zero `len` bytes at `ptr`.
///
/// # Safety
/// The caller owns `[ptr, ptr + len)` (memory it just allocated) and it is valid for writes.
pub(crate) unsafe fn zero(ptr: core::ptr::NonNull<u8>, len: usize) {
    // SAFETY: caller's contract.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, len) };
}

/// Copy `len` bytes from `from` to `to` (a page migration's copy, `movable.rs`).
///
/// # Safety
/// Both ranges are valid for `len` bytes (reads at `from`, writes at `to`), do not overlap,
/// and nothing else accesses either of them during the copy.
pub(crate) unsafe fn copy_page(
    from: core::ptr::NonNull<u8>,
    to: core::ptr::NonNull<u8>,
    len: usize,
) {
    // SAFETY: caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(from.as_ptr(), to.as_ptr(), len) };
}

/// Initialise every slot of `slots` with `f(index)` and return the initialised slice.
pub(crate) fn fill<T>(slots: &mut [MaybeUninit<T>], mut f: impl FnMut(usize) -> T) -> &mut [T] {
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.write(f(i));
    }
    // SAFETY: every element was written just above, and `MaybeUninit<T>` has the layout of
    // `T`, so the slice may be viewed as initialised.
    unsafe { &mut *(slots as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// Initialise `slots` from `items`, which yields at least `slots.len()` values (the caller
/// counted them); slots the iterator does not reach are impossible by construction, and are
/// filled by repeating the last value rather than left uninitialised.
pub(crate) fn fill_from<T: Copy>(
    slots: &mut [MaybeUninit<T>],
    items: impl Iterator<Item = T>,
) -> &mut [T] {
    let mut items = items.peekable();
    let mut last = None;
    let n = slots.len();
    let mut written = 0;
    for slot in slots.iter_mut() {
        match items.next().or(last) {
            Some(v) => {
                slot.write(v);
                last = Some(v);
                written += 1;
            }
            None => break,
        }
    }
    let slots = &mut slots[..written.min(n)];
    // SAFETY: the first `written` slots were written above; the slice is cut to them.
    unsafe { &mut *(slots as *mut [MaybeUninit<T>] as *mut [T]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_from_initialises_every_slot_in_order() {
        let mut slots = [MaybeUninit::<u32>::uninit(); 4];
        let out = fill_from(&mut slots, [7, 8, 9, 10].into_iter());
        assert_eq!(out, &[7, 8, 9, 10]);
        let mut more = [MaybeUninit::<u32>::uninit(); 3];
        assert_eq!(fill(&mut more, |i| i as u32 * 2), &[0, 2, 4]);
    }
}
