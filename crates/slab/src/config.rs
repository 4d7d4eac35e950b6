//! Cache creation parameters: the arguments of `kmem_cache_create`, as a builder.

#![deny(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;

use crate::flags::{CacheFlags, Gfp};
use crate::page_source::Rcu;

/// A constructor: called once on every object when its slab is formatted, with the object's
/// (uninitialised) memory. Objects go back to the cache in their constructed state.
pub type Ctor = fn(NonNull<u8>);

/// How to create a cache (`kmem_cache_create` arguments).
#[derive(Clone, Copy)]
pub struct CacheConfig<'a> {
    pub(crate) name: &'a str,
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) flags: CacheFlags,
    pub(crate) ctor: Option<Ctor>,
    pub(crate) random: Option<u64>,
    pub(crate) rcu: Option<&'a dyn Rcu>,
    pub(crate) gfp: Gfp,
    pub(crate) kmalloc_slot: Option<u16>,
}

impl fmt::Debug for CacheConfig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("align", &self.align)
            .field("flags", &self.flags)
            .field("ctor", &self.ctor.is_some())
            .field("gfp", &self.gfp)
            .finish()
    }
}

impl<'a> CacheConfig<'a> {
    /// A cache of `size`-byte objects called `name`, word aligned, no flags, no constructor.
    pub const fn new(name: &'a str, size: usize) -> Self {
        Self {
            name,
            size,
            align: 0,
            flags: CacheFlags::empty(),
            ctor: None,
            random: None,
            rcu: None,
            gfp: Gfp::empty(),
            kmalloc_slot: None,
        }
    }

    /// Object size in bytes.
    pub const fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// Minimum object alignment (a power of two up to [`MAX_ALIGN`](crate::layout::MAX_ALIGN)).
    pub const fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Cache flags.
    pub const fn flags(mut self, flags: CacheFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Constructor run on every object when its slab is created.
    pub const fn ctor(mut self, ctor: Ctor) -> Self {
        self.ctor = Some(ctor);
        self
    }

    /// Secret for freelist hardening. Kernels should pass boot entropy; without it a value
    /// derived from the descriptor address and a counter is used.
    pub const fn random(mut self, random: u64) -> Self {
        self.random = Some(random);
        self
    }

    /// The kernel's RCU: a `TYPESAFE_BY_RCU` cache hands every slab it releases to
    /// [`Rcu::call_rcu`] and frees the pages in the callback, after a grace period.
    pub const fn rcu(mut self, rcu: &'a dyn Rcu) -> Self {
        self.rcu = Some(rcu);
        self
    }

    /// Extra page-source flags for slab pages (for example [`Gfp::DMA`]).
    pub const fn gfp(mut self, gfp: Gfp) -> Self {
        self.gfp = gfp;
        self
    }

    pub(crate) const fn kmalloc_slot(mut self, slot: u16) -> Self {
        self.kmalloc_slot = Some(slot);
        self
    }
}
