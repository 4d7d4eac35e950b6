//! The invariant scanner: [`Bootmem::verify`].
//!
//! Checks, for both lists: regions sorted, non-overlapping, non-empty, merged where mergeable,
//! count within capacity, cached total equal to the sum of sizes (ranges cannot wrap: every
//! region is `base <= end` by construction). Across the lists: each region array bootmem
//! allocated from itself is reserved, and the two arrays do not overlap. Tests, the proptest
//! state machine and the fuzz target call it after every step.

use core::fmt;

use mmkit_addr::PhysRange;

use crate::bootmem::Bootmem;
use crate::list::{ListFault, ListKind};

/// A broken invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Region `index` of `list` is empty.
    EmptyRegion {
        /// The list.
        list: ListKind,
        /// The region's index.
        index: usize,
    },
    /// Region `index` of `list` starts before the previous one ends.
    Unsorted {
        /// The list.
        list: ListKind,
        /// The region's index.
        index: usize,
    },
    /// Region `index` of `list` should have merged into the previous one.
    Unmerged {
        /// The list.
        list: ListKind,
        /// The region's index.
        index: usize,
    },
    /// The list holds more regions than its array.
    OverCapacity(ListKind),
    /// The cached total size disagrees with the regions.
    TotalMismatch {
        /// The list.
        list: ListKind,
        /// The cached total.
        cached: u64,
        /// The sum of the region sizes.
        actual: u64,
    },
    /// A self-allocated region array is not (wholly) reserved.
    ArrayNotReserved(PhysRange),
    /// The two self-allocated region arrays overlap.
    ArraysOverlap,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyRegion { list, index } => {
                write!(f, "{} region {index} is empty", list.name())
            }
            Self::Unsorted { list, index } => {
                write!(
                    f,
                    "{} region {index} overlaps or precedes its neighbour",
                    list.name()
                )
            }
            Self::Unmerged { list, index } => {
                write!(f, "{} region {index} is not merged", list.name())
            }
            Self::OverCapacity(list) => write!(f, "{} list exceeds its array", list.name()),
            Self::TotalMismatch {
                list,
                cached,
                actual,
            } => write!(f, "{} total {cached:#x} != {actual:#x}", list.name()),
            Self::ArrayNotReserved(r) => write!(f, "region array {r} is not reserved"),
            Self::ArraysOverlap => f.write_str("region arrays overlap"),
        }
    }
}

impl<const N: usize> Bootmem<'_, N> {
    /// Check every invariant; see the module docs.
    pub fn verify(&self) -> Result<(), VerifyError> {
        for kind in [ListKind::Memory, ListKind::Reserved] {
            self.list(kind).check().map_err(|fault| match fault {
                ListFault::Empty(index) => VerifyError::EmptyRegion { list: kind, index },
                ListFault::Unsorted(index) => VerifyError::Unsorted { list: kind, index },
                ListFault::Unmerged(index) => VerifyError::Unmerged { list: kind, index },
                ListFault::OverCapacity => VerifyError::OverCapacity(kind),
                ListFault::TotalMismatch { cached, actual } => VerifyError::TotalMismatch {
                    list: kind,
                    cached,
                    actual,
                },
            })?;
        }
        let arrays = self.region_arrays();
        for array in arrays.into_iter().flatten() {
            if !self
                .reserved
                .covers(array.start().as_u64(), array.end().as_u64())
            {
                return Err(VerifyError::ArrayNotReserved(array));
            }
        }
        if let [Some(a), Some(b)] = arrays {
            if a.overlaps(&b) {
                return Err(VerifyError::ArraysOverlap);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Bootmem, DEFAULT_REGIONS};

    #[test]
    fn bootmem_can_live_in_a_lock_shared_by_cpus() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Bootmem<'static>>();
        send_sync::<crate::Handoff<'static, DEFAULT_REGIONS>>();
    }
}
