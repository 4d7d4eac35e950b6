//! Const alignment helpers on `u64`. Alignments must be powers of two; the helpers say what
//! happens when they are not (a `debug_assert` plus a defined result), so callers validate
//! user-supplied alignments with [`is_power_of_two`] first.

/// Whether `x` is a non-zero power of two.
///
/// ```
/// use mmkit_addr::is_power_of_two;
/// assert!(is_power_of_two(4096));
/// assert!(!is_power_of_two(0));
/// assert!(!is_power_of_two(12));
/// ```
#[inline]
pub const fn is_power_of_two(x: u64) -> bool {
    x != 0 && x & (x - 1) == 0
}

/// Round `x` down to a multiple of `align` (a power of two).
///
/// ```
/// assert_eq!(mmkit_addr::align_down(0x1fff, 0x1000), 0x1000);
/// ```
#[inline]
pub const fn align_down(x: u64, align: u64) -> u64 {
    debug_assert!(is_power_of_two(align));
    x & !(align.wrapping_sub(1))
}

/// Round `x` up to a multiple of `align` (a power of two); `None` if that overflows `u64`.
///
/// ```
/// assert_eq!(mmkit_addr::align_up(0x1001, 0x1000), Some(0x2000));
/// assert_eq!(mmkit_addr::align_up(u64::MAX, 0x1000), None);
/// ```
#[inline]
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(is_power_of_two(align));
    let mask = align.wrapping_sub(1);
    match x.checked_add(mask) {
        Some(v) => Some(v & !mask),
        None => None,
    }
}

/// Whether `x` is a multiple of `align` (a power of two).
///
/// ```
/// assert!(mmkit_addr::is_aligned(0x20_0000, 0x20_0000));
/// assert!(!mmkit_addr::is_aligned(0x1000, 0x2000));
/// ```
#[inline]
pub const fn is_aligned(x: u64, align: u64) -> bool {
    debug_assert!(is_power_of_two(align));
    x & align.wrapping_sub(1) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn align_up_down_bracket_value(x in any::<u64>(), shift in 0u32..63) {
            let a = 1u64 << shift;
            let d = align_down(x, a);
            prop_assert!(d <= x && x - d < a && is_aligned(d, a));
            match align_up(x, a) {
                Some(u) => prop_assert!(u >= x && u - x < a && is_aligned(u, a)),
                None => prop_assert!(x > u64::MAX - (a - 1)),
            }
        }
    }
}
