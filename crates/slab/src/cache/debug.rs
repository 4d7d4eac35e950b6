//! Debug caches (any of `CONSISTENCY_CHECKS`, `RED_ZONE`, `POISON`, `STORE_USER`) have no
//! per-CPU arrays: every allocation and free takes the node lock and runs the checks, as
//! SLUB's debug caches do. An allocation checks and restores the poison, activates the red
//! zone and records the owner; a free walks the slab's freelist for a double free, refuses a
//! broken red zone (the object stays allocated), then poisons the object and records the
//! freeing site. The byte-level work is `slab::debug`'s.

use core::panic::Location;
use core::ptr::NonNull;

use mmkit_addr::IrqControl;

use super::{inc, Cache};
use crate::error::{AllocError, FreeError};
use crate::flags::Gfp;
use crate::page_source::PageSource;
use crate::slab::{self, DetachedList, SlabPtr};

impl<'a, S: PageSource, P: IrqControl> Cache<'a, S, P> {
    pub(super) fn alloc_debug(
        &self,
        want: Option<usize>,
        gfp: Gfp,
        owner: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        let core = self.core();
        let first = want.unwrap_or_else(|| self.local_node());
        let mut extra = None;
        loop {
            for nid in [Some(first), extra].into_iter().flatten() {
                let mut node = self.lock_node(nid);
                if let Some(obj) = node.alloc_object(&core.params) {
                    // SAFETY: just taken off our freelist, under the node lock.
                    if !unsafe { slab::debug_on_alloc(&core.params, obj, owner) } {
                        inc(&core.slow.poison_corruptions);
                    }
                    inc(&core.slow.debug_allocs);
                    return Ok(obj);
                }
            }
            extra = Some(self.grow(first, gfp)?);
        }
    }

    /// # Safety
    /// `slab`/`obj` come from `owning_slab` on an object the caller owns.
    pub(super) unsafe fn free_debug(
        &self,
        slab: SlabPtr,
        obj: NonNull<u8>,
        owner: &'static Location<'static>,
    ) -> Result<(), FreeError> {
        let core = self.core();
        let mut released = DetachedList::new();
        {
            let mut node = self.lock_node(slab.node());
            // SAFETY: the slab is live (caller owns an object of it) and we hold the lock.
            if unsafe { node.on_freelist(&core.params, slab, obj) } {
                return Err(FreeError::DoubleFree);
            }
            // SAFETY: `obj` is an allocated object of this cache (not on its freelist).
            unsafe { slab::debug_check_free(&core.params, obj)? };
            // SAFETY: as above.
            unsafe { slab::debug_on_free(&core.params, obj, owner) };
            // SAFETY: as above; the slab is listed.
            let empty = unsafe { node.free_object(&core.params, slab, obj) };
            if empty && node.nr_partial > core.min_partial {
                // SAFETY: empty slab on our partial list.
                unsafe { node.detach_empty(slab, &mut released) };
            }
            inc(&core.slow.debug_frees);
        }
        self.release(released);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::cache::testutil::*;
    use crate::cache::CacheConfig;
    use crate::error::VerifyError;
    use crate::flags::CacheFlags;
    use std::vec::Vec;

    #[test]
    fn debug_cache_detects_any_double_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("t", 32).flags(CacheFlags::CONSISTENCY_CHECKS),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        let b = c.alloc().unwrap();
        // SAFETY: the repeated free of `a` is the misuse under test; it is refused.
        unsafe {
            c.free(a).unwrap();
            c.free(b).unwrap();
            assert_eq!(c.free(a), Err(FreeError::DoubleFree));
        }
        c.verify().unwrap();
        assert_eq!(c.live_objects(), 0);
    }

    #[test]
    fn red_zone_overwrite_refused_on_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("rz", 20).flags(CacheFlags::RED_ZONE),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        c.verify().unwrap();
        // One byte past the object: the classic off-by-one.
        // SAFETY: deliberately writing the red zone of our own slot (inside the slab).
        unsafe { a.as_ptr().add(20).write(0) };
        assert_eq!(c.verify(), Err(VerifyError::RedZoneCorrupted));
        // SAFETY: refused, nothing freed.
        let refused = unsafe { c.free(a) };
        assert_eq!(refused, Err(FreeError::RedZoneCorrupted { offset: 20 }));
        assert_eq!(c.live_objects(), 1, "object stays allocated as evidence");
        // SAFETY: restoring our own red zone byte.
        unsafe { a.as_ptr().add(20).write(crate::slab::RED_ACTIVE) };
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.verify().unwrap();
    }

    #[test]
    fn underflow_into_left_red_zone_refused_on_free() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("rz", 40).flags(CacheFlags::RED_ZONE),
            &src,
            &plat,
        )
        .unwrap();
        let objs: Vec<_> = (0..3).map(|_| c.alloc().unwrap()).collect();
        for &a in &objs {
            // One byte before the object: an underflow.
            // SAFETY: deliberately writing the left red zone of our own object.
            unsafe { a.as_ptr().sub(1).write(0) };
            assert_eq!(c.verify(), Err(VerifyError::RedZoneCorrupted));
            // SAFETY: refused, nothing freed.
            let refused = unsafe { c.free(a) };
            assert_eq!(refused, Err(FreeError::RedZoneCorrupted { offset: -1 }));
            // SAFETY: restoring the byte we broke.
            unsafe { a.as_ptr().sub(1).write(crate::slab::RED_ACTIVE) };
            c.verify().unwrap();
        }
        for a in objs {
            // SAFETY: allocated above.
            unsafe { c.free(a).unwrap() };
        }
        c.verify().unwrap();
    }

    #[test]
    fn use_after_free_write_caught_by_poison() {
        let (src, plat) = env();
        let mut c = Cache::new(
            &CacheConfig::new("p", 64).flags(CacheFlags::POISON),
            &src,
            &plat,
        )
        .unwrap();
        let a = c.alloc().unwrap();
        // SAFETY: allocated above.
        unsafe { c.free(a).unwrap() };
        c.verify().unwrap();
        // SAFETY: deliberate use-after-free write into a poisoned slot of a live slab.
        unsafe { a.as_ptr().add(3).write(0) };
        assert_eq!(c.verify(), Err(VerifyError::PoisonCorrupted));
        let again = c.alloc().unwrap();
        assert_eq!(again, a);
        assert_eq!(c.stats().poison_corruptions, 1);
        // SAFETY: allocated above.
        unsafe { c.free(again).unwrap() };
        c.verify().unwrap();
    }
}
