//! Buddy orders and page sizes.
//!
//! An [`Order`] counts 4 KiB frames as a power of two: order `o` is `2^o` frames. A
//! [`PageSize`] is one of the mapping sizes the supported MMUs use, as a value (not a type
//! parameter), so one page-table API serves every granule.

use core::fmt;

use crate::{PAGE_SHIFT, PAGE_SIZE};

/// A buddy order: a block of `2^order` base (4 KiB) pages.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Order(u8);

impl Order {
    /// The largest order whose byte size fits a `u64` (`2^51` frames of 4 KiB).
    pub const LIMIT: u32 = 63 - PAGE_SHIFT;

    /// Order 0: one page.
    pub const ZERO: Order = Order(0);

    /// Make an order. `order` must be at most [`Order::LIMIT`]; use [`Order::checked`] for
    /// untrusted values (a larger value is clamped in release builds).
    #[inline]
    pub const fn new(order: u32) -> Self {
        debug_assert!(order <= Self::LIMIT);
        if order > Self::LIMIT {
            Order(Self::LIMIT as u8)
        } else {
            Order(order as u8)
        }
    }

    /// Make an order, or `None` if it is above [`Order::LIMIT`].
    #[inline]
    pub const fn checked(order: u32) -> Option<Self> {
        if order > Self::LIMIT {
            None
        } else {
            Some(Order(order as u8))
        }
    }

    /// The order as a number.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0 as u32
    }

    /// Number of base pages in a block of this order.
    #[inline]
    pub const fn pages(self) -> u64 {
        1 << self.0
    }

    /// Size in bytes of a block of this order.
    ///
    /// ```
    /// use mmkit_addr::Order;
    /// assert_eq!(Order::new(9).bytes(), 2 << 20);
    /// ```
    #[inline]
    pub const fn bytes(self) -> u64 {
        PAGE_SIZE << self.0
    }

    /// The smallest order whose block holds `pages` pages; `None` for zero or too many pages.
    ///
    /// ```
    /// use mmkit_addr::Order;
    /// assert_eq!(Order::for_pages(1), Some(Order::new(0)));
    /// assert_eq!(Order::for_pages(3), Some(Order::new(2)));
    /// assert_eq!(Order::for_pages(0), None);
    /// ```
    pub const fn for_pages(pages: u64) -> Option<Self> {
        if pages == 0 {
            return None;
        }
        let order = 64 - (pages - 1).leading_zeros();
        if pages == 1 {
            Some(Order(0))
        } else {
            Self::checked(order)
        }
    }

    /// The smallest order whose block holds `bytes` bytes; `None` for zero or too large sizes.
    ///
    /// ```
    /// use mmkit_addr::Order;
    /// assert_eq!(Order::for_bytes(4097), Some(Order::new(1)));
    /// ```
    pub const fn for_bytes(bytes: u64) -> Option<Self> {
        if bytes == 0 {
            return None;
        }
        Self::for_pages(((bytes - 1) >> PAGE_SHIFT) + 1)
    }

    /// The next larger order, or `None` past [`Order::LIMIT`].
    #[inline]
    pub const fn next(self) -> Option<Self> {
        Self::checked(self.0 as u32 + 1)
    }
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Order({})", self.0)
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A page or block mapping size used by x86_64 or aarch64 translation tables.
///
/// | size   | x86_64            | aarch64                                     |
/// |--------|-------------------|---------------------------------------------|
/// | 4 KiB  | page              | 4K-granule page                             |
/// | 16 KiB |                   | 16K-granule page                            |
/// | 64 KiB |                   | 64K-granule page (or 16 contiguous 4K)      |
/// | 2 MiB  | PD huge page      | 4K-granule level-2 block                    |
/// | 32 MiB |                   | 16K-granule level-2 block                   |
/// | 512 MiB|                   | 64K-granule level-2 block                   |
/// | 1 GiB  | PDPT huge page    | 4K-granule level-1 block                    |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 16 KiB.
    Size16K,
    /// 64 KiB.
    Size64K,
    /// 2 MiB.
    Size2M,
    /// 32 MiB.
    Size32M,
    /// 512 MiB.
    Size512M,
    /// 1 GiB.
    Size1G,
}

impl PageSize {
    /// Every size, smallest first.
    pub const ALL: [PageSize; 7] = [
        PageSize::Size4K,
        PageSize::Size16K,
        PageSize::Size64K,
        PageSize::Size2M,
        PageSize::Size32M,
        PageSize::Size512M,
        PageSize::Size1G,
    ];

    /// log2 of the size in bytes.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size16K => 14,
            PageSize::Size64K => 16,
            PageSize::Size2M => 21,
            PageSize::Size32M => 25,
            PageSize::Size512M => 29,
            PageSize::Size1G => 30,
        }
    }

    /// The size in bytes.
    ///
    /// ```
    /// use mmkit_addr::PageSize;
    /// assert_eq!(PageSize::Size2M.bytes(), 0x20_0000);
    /// assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
    /// ```
    #[inline]
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// The size whose byte count is `bytes`, if it is one of the supported sizes.
    pub const fn from_bytes(bytes: u64) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].bytes() == bytes {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The size whose shift is `shift`, if it is one of the supported sizes.
    pub const fn from_shift(shift: u32) -> Option<Self> {
        if shift >= 64 {
            return None;
        }
        Self::from_bytes(1 << shift)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shift();
        if s >= 30 {
            write!(f, "{}G", 1u64 << (s - 30))
        } else if s >= 20 {
            write!(f, "{}M", 1u64 << (s - 20))
        } else {
            write!(f, "{}K", 1u64 << (s - 10))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_sizes() {
        assert_eq!(Order::new(0).pages(), 1);
        assert_eq!(Order::new(10).pages(), 1024);
        assert_eq!(Order::new(10).bytes(), 4 << 20);
        assert_eq!(Order::checked(Order::LIMIT + 1), None);
        assert_eq!(Order::new(Order::LIMIT).next(), None);
        assert_eq!(Order::for_pages(1024), Some(Order::new(10)));
        assert_eq!(Order::for_pages(1025), Some(Order::new(11)));
        assert_eq!(Order::for_pages(u64::MAX), None);
        assert_eq!(Order::for_bytes(u64::MAX), None);
        assert_eq!(Order::for_bytes(4096), Some(Order::ZERO));
    }

    #[test]
    fn page_size_round_trips() {
        for s in PageSize::ALL {
            assert_eq!(PageSize::from_bytes(s.bytes()), Some(s));
            assert_eq!(PageSize::from_shift(s.shift()), Some(s));
        }
        assert_eq!(PageSize::from_bytes(8192), None);
        assert_eq!(PageSize::from_shift(64), None);
        assert_eq!(PageSize::Size512M.to_string(), "512M");
        assert_eq!(PageSize::Size16K.to_string(), "16K");
        assert_eq!(PageSize::Size1G.to_string(), "1G");
    }

    #[test]
    fn orders_and_sizes_at_extremes() {
        for o in [0, 1, Order::LIMIT - 1, Order::LIMIT] {
            let order = Order::checked(o).unwrap();
            assert_eq!(order.pages(), 1 << o);
            assert_eq!(order.bytes(), PAGE_SIZE << o);
            assert_eq!(order.next().is_some(), o < Order::LIMIT);
        }
        for o in [Order::LIMIT + 1, 64, u32::MAX - 1, u32::MAX] {
            assert_eq!(Order::checked(o), None, "{o}");
        }
        let most = 1u64 << Order::LIMIT;
        for (pages, want) in [
            (0, None),
            (1, Some(0)),
            (2, Some(1)),
            (most - 1, Some(Order::LIMIT)),
            (most, Some(Order::LIMIT)),
            (most + 1, None),
            (u64::MAX - 1, None),
            (u64::MAX, None),
        ] {
            assert_eq!(
                Order::for_pages(pages).map(Order::get),
                want,
                "{pages:#x} pages"
            );
        }
        for (bytes, want) in [
            (0, None),
            (1, Some(0)),
            (PAGE_SIZE, Some(0)),
            (PAGE_SIZE << Order::LIMIT, Some(Order::LIMIT)),
            ((PAGE_SIZE << Order::LIMIT) + 1, None),
            (u64::MAX - 1, None),
            (u64::MAX, None),
        ] {
            assert_eq!(
                Order::for_bytes(bytes).map(Order::get),
                want,
                "{bytes:#x} bytes"
            );
        }
        for v in [0, 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(PageSize::from_bytes(v), None, "{v:#x}");
        }
        for s in [0, 1, 63, 64, u32::MAX - 1, u32::MAX] {
            assert_eq!(PageSize::from_shift(s), None, "{s}");
        }
    }
}
