//! Debug checks on object bytes (SLUB's debug caches): poison of free objects
//! (`POISON`), red zones on both sides of an object (`RED_ZONE`), and owner records
//! (`STORE_USER`). The hooks run on every allocation and free of a debug cache, under the
//! node lock; the checks also back `Cache::verify`.

use core::panic::Location;
use core::ptr::{self, NonNull};

use super::SlabParams;
use crate::error::{FreeError, VerifyError};
use crate::layout::SlabLayout;

/// Poison byte of a free object, and its last byte (Linux `POISON_FREE`, `POISON_END`).
pub(crate) const POISON_FREE: u8 = 0x6b;
/// Last byte of a poisoned object.
pub(crate) const POISON_END: u8 = 0xa5;
/// Red-zone byte while the object is allocated (Linux `SLUB_RED_ACTIVE`).
pub(crate) const RED_ACTIVE: u8 = 0xcc;
/// Red-zone byte while the object is free (Linux `SLUB_RED_INACTIVE`).
pub(crate) const RED_INACTIVE: u8 = 0xbb;

/// # Safety
/// `obj` is a slot owned by the caller.
pub(super) unsafe fn poison_object(l: &SlabLayout, obj: *mut u8) {
    // SAFETY: caller's contract; `object_size >= 1`.
    unsafe {
        ptr::write_bytes(obj, POISON_FREE, l.object_size - 1);
        obj.add(l.object_size - 1).write(POISON_END);
    }
}

/// First byte of `[start, start + len)` that is not `byte`, as an offset.
///
/// # Safety
/// The range is readable and owned by the caller (or locked against change).
unsafe fn first_mismatch(start: *const u8, len: usize, byte: u8) -> Option<usize> {
    // SAFETY: caller's contract.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    bytes.iter().position(|&b| b != byte)
}

/// Debug hook on allocation: check and restore the poison (returns whether it was intact),
/// activate the red zone, record the owner.
///
/// # Safety
/// `obj` was just taken off a freelist of this cache by the caller.
pub(crate) unsafe fn debug_on_alloc(
    params: &SlabParams,
    obj: NonNull<u8>,
    owner: &'static Location<'static>,
) -> bool {
    let l = &params.layout;
    let p = obj.as_ptr();
    let mut intact = true;
    // SAFETY: caller's contract; offsets from the layout.
    unsafe {
        if l.poison {
            let body = first_mismatch(p, l.object_size - 1, POISON_FREE);
            if body.is_some() || p.add(l.object_size - 1).read() != POISON_END {
                intact = false;
                poison_object(l, p);
            }
        }
        if let Some((start, end)) = l.red_zone {
            let left = p.sub(l.left_red_zone);
            if first_mismatch(p.add(start), end - start, RED_INACTIVE).is_some()
                || first_mismatch(left, l.left_red_zone, RED_INACTIVE).is_some()
            {
                intact = false;
            }
            ptr::write_bytes(p.add(start), RED_ACTIVE, end - start);
            ptr::write_bytes(left, RED_ACTIVE, l.left_red_zone);
        }
        if let Some(t) = l.track_offset {
            write_track(params, p.add(t), owner);
        }
    }
    intact
}

/// Debug check on free: the red zone must be intact.
///
/// # Safety
/// `obj` is an allocated object of this cache (validated by the caller), owned by the caller.
pub(crate) unsafe fn debug_check_free(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Result<(), FreeError> {
    let l = &params.layout;
    if let Some((start, end)) = l.red_zone {
        // SAFETY: caller's contract; both zones belong to this object's slot layout.
        let (left, right) = unsafe {
            (
                first_mismatch(
                    obj.as_ptr().sub(l.left_red_zone),
                    l.left_red_zone,
                    RED_ACTIVE,
                ),
                first_mismatch(obj.as_ptr().add(start), end - start, RED_ACTIVE),
            )
        };
        if let Some(at) = left {
            return Err(FreeError::RedZoneCorrupted {
                offset: at as isize - l.left_red_zone as isize,
            });
        }
        if let Some(at) = right {
            return Err(FreeError::RedZoneCorrupted {
                offset: (start + at) as isize,
            });
        }
    }
    Ok(())
}

/// Debug hook on free (after [`debug_check_free`]): poison, deactivate the red zone, record
/// the freeing location.
///
/// # Safety
/// As [`debug_check_free`].
pub(crate) unsafe fn debug_on_free(
    params: &SlabParams,
    obj: NonNull<u8>,
    owner: &'static Location<'static>,
) {
    let l = &params.layout;
    let p = obj.as_ptr();
    // SAFETY: caller's contract.
    unsafe {
        if l.poison {
            poison_object(l, p);
        }
        if let Some((start, end)) = l.red_zone {
            ptr::write_bytes(p.add(start), RED_INACTIVE, end - start);
            ptr::write_bytes(p.sub(l.left_red_zone), RED_INACTIVE, l.left_red_zone);
        }
        if let Some(t) = l.track_offset {
            write_track(params, p.add(t), owner);
        }
    }
}

/// # Safety
/// `at` is the owner record of a slot the caller owns.
unsafe fn write_track(params: &SlabParams, at: *mut u8, owner: &'static Location<'static>) {
    let v = owner as *const Location<'static> as usize;
    // SAFETY: caller's contract; 16 bytes reserved.
    unsafe {
        at.cast::<usize>().write_unaligned(v);
        at.add(8)
            .cast::<usize>()
            .write_unaligned(v ^ params.random as usize);
    }
}

/// The last recorded owner (allocating or freeing location) of a slot, if the record is
/// intact.
///
/// # Safety
/// `obj` is a slot of a live slab of this cache with `STORE_USER`, and its record is not
/// being written concurrently.
pub(crate) unsafe fn read_track(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Option<&'static Location<'static>> {
    let t = params.layout.track_offset?;
    // SAFETY: caller's contract.
    let (v, check) = unsafe {
        let at = obj.as_ptr().add(t);
        (
            at.cast::<usize>().read_unaligned(),
            at.add(8).cast::<usize>().read_unaligned(),
        )
    };
    if v == 0 || v ^ params.random as usize != check {
        return None;
    }
    // SAFETY: the record is intact (its check word matches), so `v` was written by
    // `write_track` from a `&'static Location`.
    Some(unsafe { &*(v as *const Location<'static>) })
}

/// Poison and red zone of a free object.
///
/// # Safety
/// `obj` is a free slot of a listed slab; the node lock is held.
pub(super) unsafe fn verify_free_object(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Result<(), VerifyError> {
    let l = &params.layout;
    let p = obj.as_ptr();
    // SAFETY: caller's contract.
    unsafe {
        if l.poison
            && (first_mismatch(p, l.object_size - 1, POISON_FREE).is_some()
                || p.add(l.object_size - 1).read() != POISON_END)
        {
            return Err(VerifyError::PoisonCorrupted);
        }
        if let Some((start, end)) = l.red_zone {
            if first_mismatch(p.add(start), end - start, RED_INACTIVE).is_some()
                || first_mismatch(p.sub(l.left_red_zone), l.left_red_zone, RED_INACTIVE).is_some()
            {
                return Err(VerifyError::RedZoneCorrupted);
            }
        }
    }
    Ok(())
}

/// Red zone of an allocated object.
///
/// # Safety
/// `obj` is an allocated slot of a listed slab (its red zone is not written concurrently).
pub(crate) unsafe fn verify_allocated_object(
    params: &SlabParams,
    obj: NonNull<u8>,
) -> Result<(), VerifyError> {
    let l = &params.layout;
    if let Some((start, end)) = l.red_zone {
        // SAFETY: caller's contract.
        let broken = unsafe {
            first_mismatch(obj.as_ptr().add(start), end - start, RED_ACTIVE).is_some()
                || first_mismatch(
                    obj.as_ptr().sub(l.left_red_zone),
                    l.left_red_zone,
                    RED_ACTIVE,
                )
                .is_some()
        };
        if broken {
            return Err(VerifyError::RedZoneCorrupted);
        }
    }
    Ok(())
}
