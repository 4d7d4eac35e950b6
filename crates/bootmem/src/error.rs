//! Error enums, one per family of operations. Every error leaves the bootmem exactly as it
//! was before the call.

use core::fmt;

use mmkit_addr::PhysRange;

use crate::list::ListKind;

/// Why a region array could not grow (the cause inside a `RegionsFull` error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowError {
    /// No [`PhysMapper`](mmkit_addr::PhysMapper) was given, so bootmem cannot reach memory
    /// to move the array into.
    NoMapper,
    /// The doubled array would not fit in the address space.
    CapacityOverflow,
    /// No free memory below the current limit can hold the larger array.
    NoMemory,
    /// The mapper could not map the memory chosen for the larger array.
    Unmappable(PhysRange),
}

impl fmt::Display for GrowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMapper => f.write_str("no phys->virt mapper to grow into"),
            Self::CapacityOverflow => f.write_str("array size overflows"),
            Self::NoMemory => f.write_str("no free memory for a larger array"),
            Self::Unmappable(r) => write!(f, "mapper cannot reach {r}"),
        }
    }
}

/// Errors of `add`, `remove`, `reserve` and the flag/node setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    /// The size is zero.
    ZeroSize,
    /// `base + size` does not fit in 64 bits.
    Wraps {
        /// The requested base.
        base: u64,
        /// The requested size.
        size: u64,
    },
    /// The list has no free slot and could not grow.
    RegionsFull {
        /// The list that is full.
        list: ListKind,
        /// Why it could not grow.
        cause: GrowError,
    },
    /// The range overlaps an array bootmem allocated for its own region lists.
    OverlapsRegionArray(PhysRange),
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroSize => f.write_str("zero-sized range"),
            Self::Wraps { base, size } => {
                write!(f, "range at {base:#x} of size {size:#x} wraps")
            }
            Self::RegionsFull { list, cause } => {
                write!(f, "{} region list is full: {cause}", list.name())
            }
            Self::OverlapsRegionArray(r) => {
                write!(f, "range overlaps bootmem's own region array {r}")
            }
        }
    }
}

/// Errors of `free` (un-reserving a range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The size is zero.
    ZeroSize,
    /// `base + size` does not fit in 64 bits.
    Wraps {
        /// The requested base.
        base: u64,
        /// The requested size.
        size: u64,
    },
    /// Part of the range is not reserved: a double free, or a free of something never
    /// allocated.
    NotReserved(PhysRange),
    /// The range overlaps an array bootmem allocated for its own region lists.
    OverlapsRegionArray(PhysRange),
    /// Freeing the middle of a reserved region needs one more slot, and the list could not
    /// grow.
    RegionsFull(GrowError),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroSize => f.write_str("zero-sized free"),
            Self::Wraps { base, size } => {
                write!(f, "free at {base:#x} of size {size:#x} wraps")
            }
            Self::NotReserved(r) => write!(f, "{r} is not (wholly) reserved"),
            Self::OverlapsRegionArray(r) => {
                write!(f, "free overlaps bootmem's own region array {r}")
            }
            Self::RegionsFull(cause) => write!(f, "reserved region list is full: {cause}"),
        }
    }
}

/// Errors of the allocation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The size is zero.
    ZeroSize,
    /// The alignment is not a power of two.
    BadAlignment(u64),
    /// The `[min, max)` window, clipped to the current limit and to the pages above page 0, is
    /// empty or smaller than the size: no memory could ever satisfy the request.
    ImpossibleWindow {
        /// The effective lower bound.
        min: u64,
        /// The effective upper bound (exclusive).
        max: u64,
    },
    /// No free memory satisfies the request (out of memory for these constraints).
    NoFit {
        /// The requested size.
        size: u64,
        /// The requested alignment.
        align: u64,
    },
    /// Recording the allocation needs a new reserved slot and the list could not grow.
    RegionsFull(GrowError),
    /// Zeroing was requested but no mapper was given.
    NoMapper,
    /// Zeroing was requested but the mapper cannot reach the chosen memory.
    Unmappable(PhysRange),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroSize => f.write_str("zero-sized allocation"),
            Self::BadAlignment(a) => write!(f, "alignment {a:#x} is not a power of two"),
            Self::ImpossibleWindow { min, max } => {
                write!(f, "empty allocation window [{min:#x}, {max:#x})")
            }
            Self::NoFit { size, align } => {
                write!(
                    f,
                    "no free memory for {size:#x} bytes aligned to {align:#x}"
                )
            }
            Self::RegionsFull(cause) => write!(f, "reserved region list is full: {cause}"),
            Self::NoMapper => f.write_str("zeroing needs a phys->virt mapper"),
            Self::Unmappable(r) => write!(f, "mapper cannot reach {r}"),
        }
    }
}
