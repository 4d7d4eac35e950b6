//! Typed caches: the Rust face of `kmem_cache_create` for kernel structures.
//!
//! A [`TypedCache<T>`] hands out [`SlabBox<T>`]: an owner of one `T` that returns the object
//! to the cache when dropped. Objects are built by `T::default()` once, when their slab is
//! created (the constructor), and are *recycled in whatever state their last owner left
//! them*, exactly as Linux caches with a constructor expect objects back in constructed state.
//! `T`'s destructor never runs: when a slab's pages go back to the page source its objects are
//! simply forgotten. That is the kernel-structure contract (locks, list heads, counters); a `T`
//! that owns resources needing `Drop` should not live in a slab cache.
//!
//! With `TYPESAFE_BY_RCU`, memory of a freed object stays a valid `T` of this cache until a
//! grace period has passed since its slab emptied, so RCU readers holding a stale pointer read
//! a `T` (possibly reused), never foreign memory.

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, ManuallyDrop};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use mmkit_addr::IrqControl;

use crate::cache::{Cache, CacheConfig, DestroyError};
use crate::error::{AllocError, CreateError, FreeError, VerifyError};
use crate::page_source::PageSource;

/// The constructor of a typed cache: write `T::default()` into a fresh slot.
fn construct<T: Default>(slot: NonNull<u8>) {
    // SAFETY: the cache was created with `size_of::<T>()` (at least 1) and `align_of::<T>()`,
    // so every slot handed to the constructor is valid for a write of one aligned `T`.
    unsafe { slot.cast::<T>().write(T::default()) };
}

/// A cache of `T`s built by `T::default()`.
pub struct TypedCache<'a, T, S: PageSource, P: IrqControl> {
    cache: Cache<'a, S, P>,
    _t: PhantomData<T>,
}

impl<T, S: PageSource, P: IrqControl> fmt::Debug for TypedCache<'_, T, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypedCache").field(&self.cache).finish()
    }
}

impl<'a, T: Default, S: PageSource, P: IrqControl> TypedCache<'a, T, S, P> {
    /// Create the cache. Size, alignment and constructor in `config` are replaced by `T`'s;
    /// name, flags, grace period and GFP hints are kept.
    pub fn new(config: CacheConfig<'a>, src: &'a S, platform: &'a P) -> Result<Self, CreateError> {
        let config = config
            .size(size_of::<T>().max(1))
            .align(align_of::<T>())
            .ctor(construct::<T>);
        Ok(Self {
            cache: Cache::new(&config, src, platform)?,
            _t: PhantomData,
        })
    }

    /// Take a constructed (possibly recycled) object.
    #[track_caller]
    pub fn alloc(&self) -> Result<SlabBox<'_, 'a, T, S, P>, AllocError> {
        let obj = self.cache.alloc()?;
        Ok(SlabBox {
            ptr: obj.cast(),
            cache: self,
        })
    }

    /// Take an object and overwrite it with `value` (the old value is dropped in place).
    #[track_caller]
    pub fn alloc_with(&self, value: T) -> Result<SlabBox<'_, 'a, T, S, P>, AllocError> {
        let mut b = self.alloc()?;
        *b = value;
        Ok(b)
    }

    /// The untyped cache (statistics, slabinfo, shrink).
    pub fn cache(&self) -> &Cache<'a, S, P> {
        &self.cache
    }

    /// Exclusive access to the untyped cache (verify, drain).
    pub fn cache_mut(&mut self) -> &mut Cache<'a, S, P> {
        &mut self.cache
    }

    /// Destroy the cache; fails while boxes are live (which the borrow checker already
    /// prevents) or objects were leaked with [`SlabBox::leak`].
    pub fn destroy(self) -> Result<(), DestroyError<'a, S, P>> {
        self.cache.destroy()
    }

    /// Check the cache's invariants.
    pub fn verify(&mut self) -> Result<(), VerifyError> {
        self.cache.verify()
    }
}

/// One `T` owned from a [`TypedCache`]; dropping it returns the object to the cache.
pub struct SlabBox<'c, 'a, T, S: PageSource, P: IrqControl> {
    ptr: NonNull<T>,
    cache: &'c TypedCache<'a, T, S, P>,
}

// SAFETY: a SlabBox owns its `T` exclusively (like `Box<T>`); the cache it frees into is Sync.
unsafe impl<T: Send, S: PageSource, P: IrqControl> Send for SlabBox<'_, '_, T, S, P> {}
// SAFETY: `&SlabBox` only gives `&T`.
unsafe impl<T: Sync, S: PageSource, P: IrqControl> Sync for SlabBox<'_, '_, T, S, P> {}

impl<T, S: PageSource, P: IrqControl> Deref for SlabBox<'_, '_, T, S, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` is an allocated slot holding a constructed `T` (constructor at slab
        // creation, kept valid by every owner since), owned by this box.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, S: PageSource, P: IrqControl> DerefMut for SlabBox<'_, '_, T, S, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the box is borrowed mutably.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: fmt::Debug, S: PageSource, P: IrqControl> fmt::Debug for SlabBox<'_, '_, T, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<'c, 'a, T, S: PageSource, P: IrqControl> SlabBox<'c, 'a, T, S, P> {
    /// The object's address.
    pub fn as_ptr(this: &Self) -> NonNull<T> {
        this.ptr
    }

    /// Keep the object allocated forever; the cache will then refuse to be destroyed.
    pub fn leak(this: Self) -> &'c mut T {
        let mut this = ManuallyDrop::new(this);
        // SAFETY: as in `deref_mut`; the box is never dropped, so the object stays ours.
        unsafe { this.ptr.as_mut() }
    }

    /// Return the object now, reporting what the cache found (a broken red zone keeps the
    /// object allocated).
    pub fn free(this: Self) -> Result<(), FreeError> {
        let this = ManuallyDrop::new(this);
        // SAFETY: the box owned an object of this cache and is consumed.
        unsafe { this.cache.cache.free(this.ptr.cast()) }
    }
}

impl<T, S: PageSource, P: IrqControl> Drop for SlabBox<'_, '_, T, S, P> {
    fn drop(&mut self) {
        // SAFETY: the box owns an object of this cache and is going away. An error (a broken
        // red zone) leaves the object allocated, which is safe.
        let _ = unsafe { self.cache.cache.free(self.ptr.cast()) };
    }
}
