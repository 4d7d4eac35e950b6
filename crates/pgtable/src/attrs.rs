//! Arch-neutral mapping attributes.
//!
//! [`Attrs`] is what callers ask for and what [`translate`](crate::PageTable::translate)
//! reports: access rights (read, write, user-execute and kernel-execute separately), user
//! access, global, accessed and dirty, three software bits for the OS, a cache policy and an
//! x86 protection key. Each format decides how to encode them and which combinations exist;
//! [`PagingFormat::normalize`](crate::PagingFormat::normalize) turns a request into the
//! canonical form the format stores, so `decode(encode(normalize(a))) == normalize(a)` (the
//! round-trip law every format is tested against).
//!
//! Invariants of the representation:
//! * the cache policy lives in a 3-bit field ([`Attrs::cache`]); every value of the field is
//!   a valid [`CachePolicy`] after normalization;
//! * the protection key lives in a 4-bit field ([`Attrs::pkey`]);
//! * READ is implied by any present mapping on both supported architectures, so a request
//!   without READ is rejected rather than silently widened.

use bitflags::bitflags;

bitflags! {
    /// Mapping attributes. Combine the permission flags with a [`CachePolicy`] through
    /// [`Attrs::with_cache`] and a protection key through [`Attrs::with_pkey`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Attrs: u32 {
        /// Readable. Every present mapping is readable on x86_64 and aarch64.
        const READ = 1 << 0;
        /// Writable.
        const WRITE = 1 << 1;
        /// Executable from user mode (EL0 / CPL3).
        const USER_EXEC = 1 << 2;
        /// Executable from kernel mode (EL1 / CPL0).
        const KERNEL_EXEC = 1 << 3;
        /// Accessible from user mode.
        const USER = 1 << 4;
        /// Global: survives address-space switches in the TLB (x86 G, aarch64 !nG).
        const GLOBAL = 1 << 5;
        /// Accessed (x86 A, aarch64 AF). On aarch64 a mapping without it faults on first use.
        const ACCESSED = 1 << 6;
        /// Dirty (x86 D; a software bit on aarch64, as Linux's PTE_DIRTY).
        const DIRTY = 1 << 7;
        /// Software bit 0, free for the OS.
        const SW0 = 1 << 8;
        /// Software bit 1, free for the OS.
        const SW1 = 1 << 9;
        /// Software bit 2, free for the OS.
        const SW2 = 1 << 10;
        /// Cache-policy field (3 bits); read it with [`Attrs::cache`].
        const CACHE_FIELD = 0b111 << Attrs::CACHE_SHIFT;
        /// Protection-key field (4 bits, x86 only); read it with [`Attrs::pkey`].
        const PKEY_FIELD = 0b1111 << Attrs::PKEY_SHIFT;
    }
}

/// How memory behind a mapping is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CachePolicy {
    /// Normal memory, write-back cacheable (the default for RAM).
    WriteBack = 0,
    /// Normal memory, write-through cacheable.
    WriteThrough = 1,
    /// Uncached, strongly ordered (x86 UC-, aarch64 Device-nGnRnE).
    Uncached = 2,
    /// Write-combining (x86 WC, aarch64 Normal non-cacheable).
    WriteCombining = 3,
    /// Device registers (x86 UC, aarch64 Device-nGnRE).
    Device = 4,
}

impl CachePolicy {
    /// Every policy, in field order.
    pub const ALL: [CachePolicy; 5] = [
        CachePolicy::WriteBack,
        CachePolicy::WriteThrough,
        CachePolicy::Uncached,
        CachePolicy::WriteCombining,
        CachePolicy::Device,
    ];

    /// The policy with field value `v`, if any.
    #[inline]
    pub const fn from_field(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::WriteBack),
            1 => Some(Self::WriteThrough),
            2 => Some(Self::Uncached),
            3 => Some(Self::WriteCombining),
            4 => Some(Self::Device),
            _ => None,
        }
    }
}

impl Attrs {
    /// Bit position of the cache-policy field.
    pub const CACHE_SHIFT: u32 = 12;
    /// Bit position of the protection-key field.
    pub const PKEY_SHIFT: u32 = 16;

    /// Permission-like bits (everything but A/D, software bits and the fields).
    pub const PERMS: Attrs = Attrs::READ
        .union(Attrs::WRITE)
        .union(Attrs::USER_EXEC)
        .union(Attrs::KERNEL_EXEC)
        .union(Attrs::USER)
        .union(Attrs::GLOBAL);

    /// Kernel read-only data: read, global, accessed.
    pub const KERNEL_RO: Attrs = Attrs::READ.union(Attrs::GLOBAL).union(Attrs::ACCESSED);
    /// Kernel data: read, write, global, accessed, dirty.
    pub const KERNEL_RW: Attrs = Attrs::KERNEL_RO.union(Attrs::WRITE).union(Attrs::DIRTY);
    /// Kernel text: read, kernel-execute, global, accessed.
    pub const KERNEL_RX: Attrs = Attrs::KERNEL_RO.union(Attrs::KERNEL_EXEC);
    /// User data: read, write, user, accessed.
    pub const USER_RW: Attrs = Attrs::READ
        .union(Attrs::WRITE)
        .union(Attrs::USER)
        .union(Attrs::ACCESSED);
    /// User text: read, user, user-execute, accessed.
    pub const USER_RX: Attrs = Attrs::READ
        .union(Attrs::USER)
        .union(Attrs::USER_EXEC)
        .union(Attrs::ACCESSED);

    /// The cache policy. An out-of-range field reads as [`CachePolicy::Uncached`], the safe
    /// choice; normalization rejects such values, so formats never store them.
    #[inline]
    pub const fn cache(self) -> CachePolicy {
        match CachePolicy::from_field((self.bits() >> Self::CACHE_SHIFT) & 0b111) {
            Some(c) => c,
            None => CachePolicy::Uncached,
        }
    }

    /// These attributes with the cache policy replaced.
    #[inline]
    pub const fn with_cache(self, c: CachePolicy) -> Self {
        let bits = (self.bits() & !Self::CACHE_FIELD.bits()) | ((c as u32) << Self::CACHE_SHIFT);
        Self::from_bits_retain(bits)
    }

    /// Whether the cache field holds a defined policy.
    #[inline]
    pub const fn cache_is_valid(self) -> bool {
        CachePolicy::from_field((self.bits() >> Self::CACHE_SHIFT) & 0b111).is_some()
    }

    /// The protection key (0..=15).
    #[inline]
    pub const fn pkey(self) -> u8 {
        ((self.bits() >> Self::PKEY_SHIFT) & 0b1111) as u8
    }

    /// These attributes with the protection key replaced (`key` is taken modulo 16).
    #[inline]
    pub const fn with_pkey(self, key: u8) -> Self {
        let bits = (self.bits() & !Self::PKEY_FIELD.bits())
            | (((key & 0b1111) as u32) << Self::PKEY_SHIFT);
        Self::from_bits_retain(bits)
    }
}

/// A change to the attributes of existing mappings: `new = (old - clear) | set`, applied to the
/// flag bits; the cache policy and protection key are replaced when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttrChange {
    /// Flags to set.
    pub set: Attrs,
    /// Flags to clear (applied before `set`).
    pub clear: Attrs,
    /// A new cache policy, if it changes.
    pub cache: Option<CachePolicy>,
    /// A new protection key, if it changes.
    pub pkey: Option<u8>,
}

impl AttrChange {
    /// Set `set` and clear `clear`, keeping cache policy and key.
    pub const fn flags(set: Attrs, clear: Attrs) -> Self {
        Self {
            set: set
                .difference(Attrs::CACHE_FIELD)
                .difference(Attrs::PKEY_FIELD),
            clear: clear
                .difference(Attrs::CACHE_FIELD)
                .difference(Attrs::PKEY_FIELD),
            cache: None,
            pkey: None,
        }
    }

    /// Replace every attribute by `attrs`.
    pub const fn replace(attrs: Attrs) -> Self {
        Self {
            set: attrs
                .difference(Attrs::CACHE_FIELD)
                .difference(Attrs::PKEY_FIELD),
            clear: Attrs::all()
                .difference(Attrs::CACHE_FIELD)
                .difference(Attrs::PKEY_FIELD),
            cache: Some(attrs.cache()),
            pkey: Some(attrs.pkey()),
        }
    }

    /// Apply the change to `old`.
    pub const fn apply(&self, old: Attrs) -> Attrs {
        let set = self
            .set
            .difference(Attrs::CACHE_FIELD)
            .difference(Attrs::PKEY_FIELD);
        let clear = self
            .clear
            .difference(Attrs::CACHE_FIELD)
            .difference(Attrs::PKEY_FIELD);
        let mut a = old.difference(clear).union(set);
        if let Some(c) = self.cache {
            a = a.with_cache(c);
        }
        if let Some(k) = self.pkey {
            a = a.with_pkey(k);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_field_round_trips_every_policy() {
        for c in CachePolicy::ALL {
            let a = Attrs::KERNEL_RW.with_cache(c);
            assert_eq!(a.cache(), c);
            assert!(a.cache_is_valid());
            assert_eq!(a.difference(Attrs::CACHE_FIELD), Attrs::KERNEL_RW);
        }
        let bad = Attrs::from_bits_retain(7 << Attrs::CACHE_SHIFT);
        assert!(!bad.cache_is_valid());
        assert_eq!(bad.cache(), CachePolicy::Uncached);
    }

    #[test]
    fn pkey_field_is_four_bits() {
        let a = Attrs::USER_RW.with_pkey(0x1f);
        assert_eq!(a.pkey(), 0xf);
        assert_eq!(a.with_pkey(3).pkey(), 3);
        assert_eq!(a.with_pkey(0), Attrs::USER_RW);
    }

    #[test]
    fn attr_change_clears_before_setting_and_keeps_fields() {
        let old = Attrs::KERNEL_RW
            .with_cache(CachePolicy::Device)
            .with_pkey(5);
        let ch = AttrChange::flags(Attrs::KERNEL_EXEC, Attrs::WRITE | Attrs::KERNEL_EXEC);
        let new = ch.apply(old);
        assert!(new.contains(Attrs::KERNEL_EXEC));
        assert!(!new.contains(Attrs::WRITE));
        assert_eq!(new.cache(), CachePolicy::Device);
        assert_eq!(new.pkey(), 5);
        let rep = AttrChange::replace(Attrs::USER_RX.with_cache(CachePolicy::WriteThrough));
        assert_eq!(
            rep.apply(old),
            Attrs::USER_RX.with_cache(CachePolicy::WriteThrough)
        );
    }
}
