//! Error types, one per operation.

#![deny(unsafe_code)]

use core::fmt;

use crate::layout::LayoutError;

/// Why a cache could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateError {
    /// The object geometry is impossible (see [`LayoutError`]).
    Layout(LayoutError),
    /// The name is longer than [`crate::cache::NAME_MAX`] bytes.
    NameTooLong,
    /// The page source could not provide the cache descriptor block.
    OutOfMemory,
    /// `TYPESAFE_BY_RCU` was asked for without an [`crate::Rcu`] to defer slab freeing to.
    RcuWithoutCallback,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The page source has no block for a new slab (or a large kmalloc).
    OutOfMemory,
    /// The request is larger than any supported size.
    TooLarge,
    /// The alignment is not a power of two, or larger than a page.
    BadAlign,
}

/// Why a free (or `ksize`, or `krealloc`) refused a pointer. State is unchanged after any of
/// these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The pointer is not in a slab or at the head of a large kmalloc.
    NotSlabMemory,
    /// The pointer is in a slab of another cache.
    WrongCache,
    /// The pointer is in a slab but outside its objects.
    NotAnObject,
    /// The pointer is inside an object but not at its start.
    Misaligned,
    /// The object is already free.
    DoubleFree,
    /// The object's red zone was overwritten (at this offset from the object start:
    /// negative before the object, past its size after it); the object is left allocated so
    /// the evidence stays.
    RedZoneCorrupted {
        /// Offset of the first bad byte from the object start.
        offset: isize,
    },
}

/// An invariant `verify()` found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// A slab header has a wrong magic or owner.
    BadHeader,
    /// A list link or list tag is inconsistent.
    ListCorrupt,
    /// A counter disagrees with what the lists hold.
    CountMismatch,
    /// A freelist leaves its slab, is misaligned, or loops.
    FreelistCorrupt,
    /// A slab is on the wrong list for its fill level.
    WrongList,
    /// A free object's poison was overwritten (use after free).
    PoisonCorrupted,
    /// A red zone was overwritten.
    RedZoneCorrupted,
    /// A per-CPU array holds something that is not an allocated object of this cache, or one
    /// object twice.
    CpuArrayCorrupt,
    /// The per-CPU counters do not add up to the objects in use.
    LiveCountMismatch,
}

macro_rules! display_via_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_via_debug!(CreateError, AllocError, FreeError, VerifyError);

impl From<LayoutError> for CreateError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}
