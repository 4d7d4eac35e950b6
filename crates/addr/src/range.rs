//! Half-open address ranges: [`PhysRange`] and [`VirtRange`].
//!
//! A range is `[start, end)` with `start <= end` always (the constructors enforce it), so
//! `len()` cannot underflow. Building a range from a start and a size checks for wrap-around.

use core::fmt;

use crate::addr::{Pfn, PhysAddr, VirtAddr};
use crate::align::is_power_of_two;
use crate::PAGE_SIZE;

/// Why a range could not be built or transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// `end` is below `start`.
    Inverted {
        /// The requested start.
        start: u64,
        /// The requested end.
        end: u64,
    },
    /// `start + size` does not fit in 64 bits.
    Wraps {
        /// The requested start.
        start: u64,
        /// The requested size.
        size: u64,
    },
    /// The alignment is not a power of two.
    BadAlignment(u64),
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inverted { start, end } => write!(f, "range end {end:#x} below start {start:#x}"),
            Self::Wraps { start, size } => {
                write!(
                    f,
                    "range at {start:#x} of size {size:#x} wraps the address space"
                )
            }
            Self::BadAlignment(a) => write!(f, "alignment {a:#x} is not a power of two"),
        }
    }
}

macro_rules! range_type {
    ($name:ident, $addr:ident, $what:literal) => {
        #[doc = concat!("A half-open range of ", $what, " addresses, `[start, end)`.")]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name {
            start: $addr,
            end: $addr,
        }

        impl $name {
            /// The empty range at zero.
            pub const EMPTY: Self = Self {
                start: $addr::ZERO,
                end: $addr::ZERO,
            };

            /// `[start, end)`; an error if `end < start`.
            pub const fn new(start: $addr, end: $addr) -> Result<Self, RangeError> {
                if end.as_u64() < start.as_u64() {
                    Err(RangeError::Inverted {
                        start: start.as_u64(),
                        end: end.as_u64(),
                    })
                } else {
                    Ok(Self { start, end })
                }
            }

            /// `[start, start + size)`; an error if it wraps.
            pub const fn from_start_size(start: $addr, size: u64) -> Result<Self, RangeError> {
                match start.as_u64().checked_add(size) {
                    Some(end) => Ok(Self {
                        start,
                        end: $addr::new(end),
                    }),
                    None => Err(RangeError::Wraps {
                        start: start.as_u64(),
                        size,
                    }),
                }
            }

            /// The first address in the range.
            #[inline]
            pub const fn start(&self) -> $addr {
                self.start
            }

            /// The first address past the range.
            #[inline]
            pub const fn end(&self) -> $addr {
                self.end
            }

            /// The size in bytes.
            #[inline]
            pub const fn len(&self) -> u64 {
                self.end.as_u64() - self.start.as_u64()
            }

            /// Whether the range holds no address.
            #[inline]
            pub const fn is_empty(&self) -> bool {
                self.end.as_u64() == self.start.as_u64()
            }

            /// Whether `addr` lies inside.
            #[inline]
            pub const fn contains(&self, addr: $addr) -> bool {
                self.start.as_u64() <= addr.as_u64() && addr.as_u64() < self.end.as_u64()
            }

            /// Whether `other` lies entirely inside (an empty `other` is inside any range that
            /// contains or ends at its start).
            #[inline]
            pub const fn contains_range(&self, other: &Self) -> bool {
                self.start.as_u64() <= other.start.as_u64()
                    && other.end.as_u64() <= self.end.as_u64()
            }

            /// Whether the two ranges share at least one address (an empty range shares
            /// none, so it overlaps nothing).
            #[inline]
            pub const fn overlaps(&self, other: &Self) -> bool {
                !self.is_empty()
                    && !other.is_empty()
                    && self.start.as_u64() < other.end.as_u64()
                    && other.start.as_u64() < self.end.as_u64()
            }

            /// Whether the two ranges overlap or touch end to start.
            #[inline]
            pub const fn touches(&self, other: &Self) -> bool {
                self.start.as_u64() <= other.end.as_u64()
                    && other.start.as_u64() <= self.end.as_u64()
            }

            /// The common part, or `None` if they do not overlap.
            pub const fn intersect(&self, other: &Self) -> Option<Self> {
                let s = if self.start.as_u64() > other.start.as_u64() {
                    self.start
                } else {
                    other.start
                };
                let e = if self.end.as_u64() < other.end.as_u64() {
                    self.end
                } else {
                    other.end
                };
                if s.as_u64() < e.as_u64() {
                    Some(Self { start: s, end: e })
                } else {
                    None
                }
            }

            /// The largest sub-range whose ends are multiples of `align` (a power of two);
            /// `Ok(None)` if none is left, an error if `align` is not a power of two.
            pub const fn align_inward(&self, align: u64) -> Result<Option<Self>, RangeError> {
                if !is_power_of_two(align) {
                    return Err(RangeError::BadAlignment(align));
                }
                let Some(s) = self.start.align_up(align) else {
                    return Ok(None);
                };
                let e = self.end.align_down(align);
                if s.as_u64() < e.as_u64() {
                    Ok(Some(Self { start: s, end: e }))
                } else {
                    Ok(None)
                }
            }

            /// The smallest range whose ends are multiples of `align` (a power of two) that
            /// covers this one; an error if `align` is bad or the end would wrap.
            pub const fn align_outward(&self, align: u64) -> Result<Self, RangeError> {
                if !is_power_of_two(align) {
                    return Err(RangeError::BadAlignment(align));
                }
                let s = self.start.align_down(align);
                match self.end.align_up(align) {
                    Some(e) => Ok(Self { start: s, end: e }),
                    None => Err(RangeError::Wraps {
                        start: s.as_u64(),
                        size: self.len(),
                    }),
                }
            }

            /// Whether both ends are multiples of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(&self, align: u64) -> bool {
                self.start.is_aligned(align) && self.end.is_aligned(align)
            }

            /// Whether both ends are 4 KiB aligned.
            #[inline]
            pub const fn is_page_aligned(&self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }

            /// The range as raw `start..end`.
            #[inline]
            pub const fn as_raw(&self) -> core::ops::Range<u64> {
                self.start.as_u64()..self.end.as_u64()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "[{:#x}-{:#x})", self.start.as_u64(), self.end.as_u64())
            }
        }

        /// Linux style: `[mem 0x...-0x...]` with an inclusive end, as in boot logs.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.is_empty() {
                    write!(f, "[{:#018x} empty]", self.start.as_u64())
                } else {
                    write!(
                        f,
                        "[{:#018x}-{:#018x}]",
                        self.start.as_u64(),
                        self.end.as_u64() - 1
                    )
                }
            }
        }
    };
}

range_type!(PhysRange, PhysAddr, "physical");
range_type!(VirtRange, VirtAddr, "virtual");

impl PhysRange {
    /// The frames wholly inside this range: `first..end` as frame numbers (partial frames at
    /// either end are left out).
    pub const fn whole_pfns(&self) -> core::ops::Range<u64> {
        let first = match self.start.align_up(PAGE_SIZE) {
            Some(a) => a.pfn().as_u64(),
            None => self.end.pfn().as_u64(),
        };
        let end = self.end.pfn().as_u64();
        if first < end {
            first..end
        } else {
            end..end
        }
    }

    /// The range of frames `[first, first + count)`; an error if it wraps.
    pub const fn from_pfns(first: Pfn, count: u64) -> Result<Self, RangeError> {
        let Some(start) = first.checked_addr() else {
            return Err(RangeError::Wraps {
                start: first.as_u64(),
                size: count,
            });
        };
        match count.checked_mul(PAGE_SIZE) {
            Some(size) => Self::from_start_size(start, size),
            None => Err(RangeError::Wraps {
                start: start.as_u64(),
                size: count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pr(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(s), PhysAddr::new(e)).unwrap()
    }

    #[test]
    fn constructors_reject_inverted_and_wrapping() {
        assert!(PhysRange::new(PhysAddr::new(2), PhysAddr::new(1)).is_err());
        assert_eq!(
            PhysRange::from_start_size(PhysAddr::new(u64::MAX), 2),
            Err(RangeError::Wraps {
                start: u64::MAX,
                size: 2
            })
        );
        assert!(PhysRange::from_pfns(Pfn::new(u64::MAX >> 12), 2).is_err());
        assert_eq!(
            PhysRange::from_pfns(Pfn::new(1), 2).unwrap(),
            pr(0x1000, 0x3000)
        );
    }

    #[test]
    fn overlap_touch_intersect() {
        let a = pr(0x1000, 0x3000);
        let b = pr(0x3000, 0x4000);
        assert!(!a.overlaps(&b));
        assert!(a.touches(&b));
        assert_eq!(a.intersect(&b), None);
        assert_eq!(a.intersect(&pr(0x2000, 0x5000)), Some(pr(0x2000, 0x3000)));
        assert!(a.contains_range(&pr(0x1000, 0x3000)));
        assert!(!a.contains(PhysAddr::new(0x3000)));
        // An empty range inside another shares no address with it.
        assert!(!a.overlaps(&pr(0x2000, 0x2000)));
        assert!(!pr(0x2000, 0x2000).overlaps(&a));
    }

    #[test]
    fn align_inward_and_outward() {
        let r = pr(0x1001, 0x5fff);
        assert_eq!(r.align_inward(0x1000).unwrap(), Some(pr(0x2000, 0x5000)));
        assert_eq!(r.align_outward(0x1000).unwrap(), pr(0x1000, 0x6000));
        assert_eq!(pr(0x1001, 0x1fff).align_inward(0x1000).unwrap(), None);
        assert_eq!(r.align_inward(3), Err(RangeError::BadAlignment(3)));
        assert!(pr(0, u64::MAX).align_outward(0x1000).is_err());
        assert_eq!(pr(0x1001, 0x5fff).whole_pfns(), 2..5);
        assert_eq!(pr(0x1001, 0x1fff).whole_pfns(), 1..1);
    }

    #[test]
    fn display_is_inclusive_like_linux() {
        assert_eq!(
            pr(0x1000, 0x2000).to_string(),
            "[0x0000000000001000-0x0000000000001fff]"
        );
    }

    proptest! {
        #[test]
        fn intersect_is_symmetric_and_inside(a in 0u64..1000, b in 0u64..1000, c in 0u64..1000, d in 0u64..1000) {
            let x = pr(a.min(b), a.max(b));
            let y = pr(c.min(d), c.max(d));
            prop_assert_eq!(x.intersect(&y), y.intersect(&x));
            if let Some(i) = x.intersect(&y) {
                prop_assert!(x.contains_range(&i) && y.contains_range(&i) && !i.is_empty());
                prop_assert!(x.overlaps(&y));
            } else {
                prop_assert!(!x.overlaps(&y));
            }
        }
    }

    #[test]
    fn ranges_at_extremes_refuse_wrapping() {
        const X: [u64; 6] = [0, 1, 0xfff, 0x1000, u64::MAX - 1, u64::MAX];
        for s in X {
            for size in X {
                let r = PhysRange::from_start_size(PhysAddr::new(s), size);
                match s.checked_add(size) {
                    Some(e) => {
                        let r = r.unwrap();
                        assert_eq!((r.len(), r.end().as_u64()), (size, e));
                        let w = r.whole_pfns();
                        assert!(w.start <= w.end && w.end <= u64::MAX >> 12);
                        assert!(u128::from(w.end - w.start) * 4096 <= u128::from(size));
                        match r.align_outward(0x1000) {
                            Ok(o) => assert!(o.contains_range(&r), "{r:?}"),
                            Err(err) => assert_eq!(
                                err,
                                RangeError::Wraps {
                                    start: s & !0xfff,
                                    size
                                }
                            ),
                        }
                        if let Some(i) = r.align_inward(0x1000).unwrap() {
                            assert!(r.contains_range(&i) && i.is_page_aligned());
                        }
                        assert_eq!(r.align_inward(0), Err(RangeError::BadAlignment(0)));
                        assert_eq!(
                            r.align_outward(u64::MAX),
                            Err(RangeError::BadAlignment(u64::MAX))
                        );
                    }
                    None => assert_eq!(r, Err(RangeError::Wraps { start: s, size })),
                }
                let e = size;
                let r = VirtRange::new(VirtAddr::new(s), VirtAddr::new(e));
                assert_eq!(r.is_ok(), s <= e, "[{s:#x}, {e:#x})");
            }
            for count in X {
                let r = PhysRange::from_pfns(Pfn::new(s), count);
                let end = u128::from(s) * 4096 + u128::from(count) * 4096;
                assert_eq!(
                    r.is_ok(),
                    end <= u128::from(u64::MAX),
                    "{s:#x} + {count:#x}"
                );
            }
        }
    }
}
