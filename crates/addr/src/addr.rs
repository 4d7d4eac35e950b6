//! Address newtypes: [`PhysAddr`], [`VirtAddr`] and [`Pfn`].
//!
//! All three wrap a `u64`. Arithmetic is checked (`checked_add`, `checked_sub`) and alignment
//! helpers are `const fn`. Virtual addresses additionally know the canonical forms of x86_64
//! (48- and 57-bit, sign-extended) and aarch64 (lower half for TTBR0, upper half for TTBR1).

use core::fmt;

use crate::align::{align_down, align_up, is_aligned};
use crate::{PAGE_SHIFT, PAGE_SIZE};

/// Why an address could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// The value is not canonical for the requested virtual-address layout.
    NonCanonical(u64),
    /// The physical address does not fit the 52 bits that x86_64 and aarch64 can address.
    PhysTooWide(u64),
    /// The value is not aligned as required.
    Misaligned(u64),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonCanonical(v) => write!(f, "virtual address {v:#x} is not canonical"),
            Self::PhysTooWide(v) => write!(f, "physical address {v:#x} exceeds 52 bits"),
            Self::Misaligned(v) => write!(f, "address {v:#x} is misaligned"),
        }
    }
}

macro_rules! address_common {
    ($t:ident, $what:literal) => {
        impl $t {
            /// The zero address.
            pub const ZERO: Self = Self(0);

            #[doc = concat!("The raw value of this ", $what, ".")]
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Round down to a multiple of `align` (a power of two).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                Self(align_down(self.0, align))
            }

            /// Round up to a multiple of `align` (a power of two); `None` on overflow.
            #[inline]
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match align_up(self.0, align) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether this is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                is_aligned(self.0, align)
            }

            /// Whether this is 4 KiB aligned.
            #[inline]
            pub const fn is_page_aligned(self) -> bool {
                is_aligned(self.0, PAGE_SIZE)
            }

            /// `self + bytes`, or `None` if that wraps.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` if that goes below zero.
            #[inline]
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// The distance in bytes from `earlier` to `self`, or `None` if `earlier > self`.
            #[inline]
            pub const fn offset_from(self, earlier: Self) -> Option<u64> {
                self.0.checked_sub(earlier.0)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

/// A physical address.
///
/// Any `u64` can be held (firmware maps describe what they describe); [`PhysAddr::new_checked`]
/// rejects values beyond the 52-bit physical address space of x86_64 and aarch64.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(u64);

address_common!(PhysAddr, "physical address");

impl PhysAddr {
    /// The widest physical address space the supported architectures define (52 bits).
    pub const MAX_BITS: u32 = 52;

    /// Wrap a raw physical address.
    #[inline]
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// Wrap a raw physical address, rejecting bits above [`Self::MAX_BITS`].
    pub const fn new_checked(addr: u64) -> Result<Self, AddrError> {
        if addr >> Self::MAX_BITS != 0 {
            Err(AddrError::PhysTooWide(addr))
        } else {
            Ok(Self(addr))
        }
    }

    /// The frame holding this address (rounded down).
    #[inline]
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// The offset of this address inside its 4 KiB frame.
    #[inline]
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
}

/// A page frame number: a physical address divided by the 4 KiB base page size.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(u64);

address_common!(Pfn, "frame number");

impl Pfn {
    /// The largest frame number whose address still fits in a `u64`.
    pub const MAX: Pfn = Pfn(u64::MAX >> PAGE_SHIFT);

    /// Wrap a raw frame number.
    #[inline]
    pub const fn new(pfn: u64) -> Self {
        Self(pfn)
    }

    /// The physical address of the first byte of this frame; `None` if it does not fit `u64`.
    #[inline]
    pub const fn checked_addr(self) -> Option<PhysAddr> {
        if self.0 > Self::MAX.0 {
            None
        } else {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        }
    }

    /// The physical address of the first byte of this frame.
    ///
    /// Frame numbers made from a [`PhysAddr`] always fit; a raw value above [`Pfn::MAX`]
    /// saturates to the last frame (use [`Pfn::checked_addr`] to detect that).
    #[inline]
    pub const fn addr(self) -> PhysAddr {
        match self.checked_addr() {
            Some(a) => a,
            None => PhysAddr(Self::MAX.0 << PAGE_SHIFT),
        }
    }

    /// `self + frames`, or `None` if that wraps.
    #[inline]
    pub const fn checked_add_frames(self, frames: u64) -> Option<Self> {
        self.checked_add(frames)
    }

    /// The buddy of this frame at `order`: the frame number with bit `order` flipped.
    ///
    /// ```
    /// use mmkit_addr::{Order, Pfn};
    /// assert_eq!(Pfn::new(0x200).buddy(Order::new(9)), Pfn::new(0));
    /// assert_eq!(Pfn::new(0x3).buddy(Order::new(0)), Pfn::new(0x2));
    /// ```
    #[inline]
    pub const fn buddy(self, order: crate::Order) -> Self {
        Self(self.0 ^ (1u64 << order.get()))
    }
}

/// Which half of an aarch64 virtual address space an address lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaHalf {
    /// Top bits all zero: translated through TTBR0_EL1 (user / identity half).
    Lower,
    /// Top bits all one: translated through TTBR1_EL1 (kernel half).
    Upper,
}

/// A virtual address.
///
/// Any `u64` can be held; canonical-form checks are explicit because they depend on the paging
/// mode ([`VirtAddr::is_canonical_x86`], [`VirtAddr::aarch64_half`]).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(u64);

address_common!(VirtAddr, "virtual address");

impl VirtAddr {
    /// Wrap a raw virtual address without checks.
    #[inline]
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// The address of a pointer.
    #[inline]
    pub fn from_ptr<T: ?Sized>(ptr: *const T) -> Self {
        Self(ptr.cast::<u8>() as usize as u64)
    }

    /// Sign-extend bit `va_bits - 1` into the upper bits: the canonical form of the low
    /// `va_bits` bits of `addr`. `va_bits` is clamped to `1..=64` (0 reads as 1, anything
    /// above 64 as 64, which leaves `addr` as it is).
    ///
    /// ```
    /// use mmkit_addr::VirtAddr;
    /// assert_eq!(VirtAddr::sign_extend(0x8000_0000_0000, 48).as_u64(), 0xffff_8000_0000_0000);
    /// assert_eq!(VirtAddr::sign_extend(0x8000_0000_0000, 99).as_u64(), 0x8000_0000_0000);
    /// assert_eq!(VirtAddr::sign_extend(1, 0).as_u64(), u64::MAX);
    /// ```
    #[inline]
    pub const fn sign_extend(addr: u64, va_bits: u32) -> Self {
        let bits = if va_bits == 0 {
            1
        } else if va_bits > 64 {
            64
        } else {
            va_bits
        };
        let shift = 64 - bits;
        Self((((addr << shift) as i64) >> shift) as u64)
    }

    /// Whether bits `va_bits-1..64` are all equal (sign-extended), as x86_64 requires:
    /// `va_bits` is 48 for 4-level and 57 for 5-level (LA57) paging (clamped to `1..=64` as
    /// in [`sign_extend`](Self::sign_extend)).
    ///
    /// ```
    /// use mmkit_addr::VirtAddr;
    /// assert!(VirtAddr::new(0xffff_8000_0000_0000).is_canonical_x86(48));
    /// assert!(!VirtAddr::new(0x0000_8000_0000_0000).is_canonical_x86(48));
    /// assert!(VirtAddr::new(0x0000_8000_0000_0000).is_canonical_x86(57));
    /// ```
    #[inline]
    pub const fn is_canonical_x86(self, va_bits: u32) -> bool {
        Self::sign_extend(self.0, va_bits).0 == self.0
    }

    /// Checked constructor for x86_64: `addr` must be canonical for `va_bits` (48 or 57).
    pub const fn new_canonical_x86(addr: u64, va_bits: u32) -> Result<Self, AddrError> {
        if Self(addr).is_canonical_x86(va_bits) {
            Ok(Self(addr))
        } else {
            Err(AddrError::NonCanonical(addr))
        }
    }

    /// The aarch64 half this address belongs to when the translation regime uses `va_bits`
    /// of input address (TCR_ELx.TnSZ = 64 - `va_bits`), or `None` if the top bits are mixed
    /// (a translation fault on hardware). Top-byte-ignore is not assumed. With `va_bits` of 64
    /// or more there are no top bits, so every address is in the lower half.
    ///
    /// ```
    /// use mmkit_addr::{VaHalf, VirtAddr};
    /// assert_eq!(VirtAddr::new(0x0000_7fff_ffff_f000).aarch64_half(48), Some(VaHalf::Lower));
    /// assert_eq!(VirtAddr::new(0xffff_0000_0000_0000).aarch64_half(48), Some(VaHalf::Upper));
    /// assert_eq!(VirtAddr::new(0x0000_0080_0000_0000).aarch64_half(39), None);
    /// assert_eq!(VirtAddr::new(u64::MAX).aarch64_half(64), Some(VaHalf::Lower));
    /// ```
    #[inline]
    pub const fn aarch64_half(self, va_bits: u32) -> Option<VaHalf> {
        if va_bits >= 64 {
            return Some(VaHalf::Lower);
        }
        let top = self.0 >> va_bits;
        if top == 0 {
            Some(VaHalf::Lower)
        } else if top == u64::MAX >> va_bits {
            Some(VaHalf::Upper)
        } else {
            None
        }
    }

    /// The address as a raw pointer (host and kernel code that owns the mapping).
    #[inline]
    pub const fn as_ptr<T>(self) -> *const T {
        self.0 as usize as *const T
    }

    /// The address as a raw mutable pointer.
    #[inline]
    pub const fn as_mut_ptr<T>(self) -> *mut T {
        self.0 as usize as *mut T
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Order;
    use proptest::prelude::*;

    #[test]
    fn phys_checked_arithmetic_never_wraps() {
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr::new(0).checked_sub(1), None);
        assert_eq!(
            PhysAddr::new(0x1000).offset_from(PhysAddr::new(0x2000)),
            None
        );
        assert_eq!(
            PhysAddr::new(0x3000).offset_from(PhysAddr::new(0x1000)),
            Some(0x2000)
        );
    }

    #[test]
    fn phys_new_checked_rejects_beyond_52_bits() {
        assert!(PhysAddr::new_checked((1 << 52) - 1).is_ok());
        assert_eq!(
            PhysAddr::new_checked(1 << 52),
            Err(AddrError::PhysTooWide(1 << 52))
        );
    }

    #[test]
    fn pfn_round_trips_through_phys() {
        let pa = PhysAddr::new(0x1234_5678);
        assert_eq!(pa.pfn(), Pfn::new(0x12345));
        assert_eq!(pa.pfn().addr(), PhysAddr::new(0x1234_5000));
        assert_eq!(pa.page_offset(), 0x678);
        assert_eq!(Pfn::new(u64::MAX).checked_addr(), None);
    }

    #[test]
    fn buddy_flips_order_bit() {
        assert_eq!(Pfn::new(8).buddy(Order::new(3)), Pfn::new(0));
        assert_eq!(Pfn::new(0).buddy(Order::new(3)), Pfn::new(8));
    }

    #[test]
    fn x86_canonical_forms() {
        for (va, ok48, ok57) in [
            (0u64, true, true),
            (0x0000_7fff_ffff_ffff, true, true),
            (0x0000_8000_0000_0000, false, true),
            (0xffff_8000_0000_0000, true, true),
            (0xff00_0000_0000_0000, false, true),
            (0xfe00_0000_0000_0000, false, false),
            (0x0100_0000_0000_0000, false, false),
        ] {
            assert_eq!(
                VirtAddr::new(va).is_canonical_x86(48),
                ok48,
                "{va:#x} at 48"
            );
            assert_eq!(
                VirtAddr::new(va).is_canonical_x86(57),
                ok57,
                "{va:#x} at 57"
            );
        }
        assert_eq!(
            VirtAddr::new_canonical_x86(0x8000_0000_0000, 48),
            Err(AddrError::NonCanonical(0x8000_0000_0000))
        );
    }

    #[test]
    fn aarch64_halves() {
        assert_eq!(VirtAddr::new(0).aarch64_half(39), Some(VaHalf::Lower));
        assert_eq!(
            VirtAddr::new(0x7f_ffff_ffff).aarch64_half(39),
            Some(VaHalf::Lower)
        );
        assert_eq!(
            VirtAddr::new(0xffff_ff80_0000_0000).aarch64_half(39),
            Some(VaHalf::Upper)
        );
        assert_eq!(VirtAddr::new(0xffff_0000_0000_0000).aarch64_half(39), None);
        assert_eq!(
            VirtAddr::new(0x000f_ffff_ffff_ffff).aarch64_half(52),
            Some(VaHalf::Lower)
        );
    }

    proptest! {
        #[test]
        fn sign_extend_is_canonical(x in any::<u64>(), bits in prop_oneof![Just(48u32), Just(57u32)]) {
            let v = VirtAddr::sign_extend(x, bits);
            prop_assert!(v.is_canonical_x86(bits));
            prop_assert_eq!(v.as_u64() & ((1u64 << bits) - 1), x & ((1u64 << bits) - 1));
        }
    }

    /// 0, 1, the largest values and the edges of the 52-bit physical space.
    const EXTREMES: [u64; 6] = [0, 1, (1 << 52) - 1, 1 << 52, u64::MAX - 1, u64::MAX];

    #[test]
    fn address_helpers_never_wrap_at_extremes() {
        for x in EXTREMES {
            for shift in [0, 1, 12, 21, 52, 63] {
                let a = 1u64 << shift;
                let up = u128::from(x).div_ceil(u128::from(a)) * u128::from(a);
                let want_up = u64::try_from(up).ok();
                let want_down = x / a * a;
                for (got_up, got_down, aligned) in [
                    (
                        PhysAddr::new(x).align_up(a).map(PhysAddr::as_u64),
                        PhysAddr::new(x).align_down(a).as_u64(),
                        PhysAddr::new(x).is_aligned(a),
                    ),
                    (
                        VirtAddr::new(x).align_up(a).map(VirtAddr::as_u64),
                        VirtAddr::new(x).align_down(a).as_u64(),
                        VirtAddr::new(x).is_aligned(a),
                    ),
                    (
                        Pfn::new(x).align_up(a).map(Pfn::as_u64),
                        Pfn::new(x).align_down(a).as_u64(),
                        Pfn::new(x).is_aligned(a),
                    ),
                ] {
                    assert_eq!(got_up, want_up, "{x:#x} up to {a:#x}");
                    assert_eq!(got_down, want_down, "{x:#x} down to {a:#x}");
                    assert_eq!(aligned, x % a == 0, "{x:#x} aligned to {a:#x}");
                }
            }
            for y in EXTREMES {
                let sum = x.checked_add(y);
                let diff = x.checked_sub(y);
                assert_eq!(PhysAddr::new(x).checked_add(y).map(PhysAddr::as_u64), sum);
                assert_eq!(VirtAddr::new(x).checked_sub(y).map(VirtAddr::as_u64), diff);
                assert_eq!(Pfn::new(x).checked_add_frames(y).map(Pfn::as_u64), sum);
                assert_eq!(PhysAddr::new(x).offset_from(PhysAddr::new(y)), diff);
            }
            assert_eq!(PhysAddr::new_checked(x).is_ok(), x < 1 << 52, "{x:#x}");
            assert_eq!(PhysAddr::new(x).pfn().as_u64(), x >> 12);
            assert_eq!(PhysAddr::new(x).page_offset(), x & 0xfff);
            let fits = x <= u64::MAX >> 12;
            assert_eq!(Pfn::new(x).checked_addr().is_some(), fits, "{x:#x}");
            let addr = Pfn::new(x).addr().as_u64();
            assert_eq!(
                addr,
                if fits {
                    x << 12
                } else {
                    Pfn::MAX.as_u64() << 12
                }
            );
            for order in [0, 1, Order::LIMIT] {
                let b = Pfn::new(x).buddy(Order::new(order)).as_u64();
                assert_eq!(b ^ x, 1 << order, "{x:#x} order {order}");
            }
        }
    }

    #[test]
    fn canonical_forms_take_any_width() {
        for x in EXTREMES {
            for bits in [0, 1, 2, 39, 48, 52, 57, 63, 64, 65, u32::MAX - 1, u32::MAX] {
                let clamped = bits.clamp(1, 64);
                let shift = 64 - clamped;
                let want = (((x << shift) as i64) >> shift) as u64;
                assert_eq!(
                    VirtAddr::sign_extend(x, bits).as_u64(),
                    want,
                    "{x:#x} {bits}"
                );
                assert_eq!(VirtAddr::new(x).is_canonical_x86(bits), want == x);
                assert_eq!(VirtAddr::new_canonical_x86(x, bits).is_ok(), want == x);
                let half = VirtAddr::new(x).aarch64_half(bits);
                if bits >= 64 || x >> bits == 0 {
                    assert_eq!(half, Some(VaHalf::Lower), "{x:#x} {bits}");
                } else if x >> bits == u64::MAX >> bits {
                    assert_eq!(half, Some(VaHalf::Upper), "{x:#x} {bits}");
                } else {
                    assert_eq!(half, None, "{x:#x} {bits}");
                }
            }
        }
    }
}
