//! aarch64 stage-1 translation (VMSAv8-64) with 4, 16 and 64 KiB granules.
//!
//! A format value is one half of the address space (TTBR0: addresses with the top bits clear;
//! TTBR1: set) for one granule and VA width (`TnSZ = 64 - va_bits`): 39..=48 bits for every
//! granule, and 52 bits (FEAT_LVA) with the 64 KiB granule, whose output addresses may then use
//! 52 bits too (FEAT_LPA: OA\[51:48\] in descriptor bits 15:12). 52-bit VA with 4/16 KiB
//! granules needs FEAT_LPA2's different descriptor layout and is not supported.
//!
//! Levels: the hardware's level 3 holds pages; blocks exist at level 2 (2 MiB / 32 MiB /
//! 512 MiB) and, for 4 KiB, level 1 (1 GiB). The root is the highest level the VA width
//! needs, with fewer index bits when the width is not a whole level.
//!
//! Descriptor bits (Arm ARM D8.3): valid 0, table/page 1, AttrIndx 2–4, NS 5, AP\[1\] 6 (EL0
//! access), AP\[2\] 7 (read-only), SH 8–9, AF 10, nG 11, Contiguous 52, PXN 53, UXN 54, software
//! 55–58 (this crate: 55 DIRTY as Linux's PTE_DIRTY, 56–58 SW0–SW2).
//!
//! * Table descriptors carry the child's entry count in bits 2–11 and 52–55, all ignored by
//!   the hardware in table descriptors (APTable/XNTable/PXNTable stay 0).
//! * Permissions: EL0 access = USER; read-only = !WRITE; UXN = !USER_EXEC; PXN =
//!   !KERNEL_EXEC. The hardware treats EL0-writable memory as PXN, so normalization drops
//!   KERNEL_EXEC on USER|WRITE mappings.
//! * Memory type through AttrIndx into [`MAIR_EL1`]; every mapping is inner shareable.
//! * Break-before-make: changing a valid entry's output address, size (split), memory type,
//!   nG or contiguous hint must pass through an invalid entry and a TLB invalidation.
//!   Permission, AF, dirty and software-bit changes may be made in place.
//! * Hardware access/dirty management (FEAT_HAFDBS, [`Aarch64::with_hw_access_dirty`], for
//!   TCR_EL1.HA and HD set): the walker sets AF on first use, and a writable leaf carries
//!   DBM (bit 51) with AP\[2\] standing for "clean" — the walker clears AP\[2\] on the first
//!   write, which is the dirty state (Linux's `pte_hw_dirty`). So WRITE encodes as DBM,
//!   DIRTY of a writable leaf as AP\[2\] clear; a read-only leaf keeps its dirtiness in the
//!   software bit 55 as without the feature. Leaves without AF, or writable and clean, may
//!   then change under the table's feet ([`PagingFormat::hw_may_update`]), so they are
//!   rewritten with compare-and-swap.

use mmkit_addr::{PageSize, PhysAddr, VaHalf, VirtAddr};

use crate::attrs::{Attrs, CachePolicy};
use crate::error::AttrError;
use crate::format::{EntryKind, Level, PagingFormat};

/// Valid.
pub const VALID: u64 = 1 << 0;
/// Table (levels 0-2) or page (level 3) descriptor.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// AttrIndx shift.
pub const ATTR_INDX_SHIFT: u32 = 2;
/// AP\[1\]: EL0 may access.
pub const AP_EL0: u64 = 1 << 6;
/// AP\[2\]: read-only.
pub const AP_RO: u64 = 1 << 7;
/// Inner shareable (SH = 0b11).
pub const SH_INNER: u64 = 0b11 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Not global.
pub const NG: u64 = 1 << 11;
/// Contiguous hint.
pub const CONT: u64 = 1 << 52;
/// Privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// Unprivileged execute-never.
pub const UXN: u64 = 1 << 54;
/// Software dirty bit (Linux PTE_DIRTY).
pub const SW_DIRTY: u64 = 1 << 55;
/// Dirty bit modifier (FEAT_HAFDBS): the walker may clear AP\[2\] on a write.
pub const DBM: u64 = 1 << 51;
/// TCR_EL1.HA (bit 39) and HD (bit 40): hardware access flag and dirty state management,
/// what [`Aarch64::with_hw_access_dirty`] formats assume.
pub const TCR_HA_HD: u64 = (1 << 39) | (1 << 40);
/// Shift of SW0..SW2.
const SW_SHIFT: u32 = 56;
/// Output-address bits 47:12 (further masked by the granule).
const OA_LOW: u64 = 0x0000_ffff_ffff_f000;
/// Descriptor bits 15:12 holding OA\[51:48\] with the 64 KiB granule and 52-bit PA.
const OA_HIGH_64K: u64 = 0xf000;

/// MAIR_EL1 value for this crate's cache policies (index = AttrIndx):
/// 0 Normal WB RW-allocate (0xff), 1 Normal WT RW-allocate (0xbb), 2 Device-nGnRnE (0x00),
/// 3 Normal non-cacheable (0x44), 4 Device-nGnRE (0x04). Linux uses the same encodings
/// (arch/arm64/include/asm/memory.h, MT_*).
///
/// ```
/// use mmkit_pgtable::arch::aarch64::MAIR_EL1;
/// assert_eq!(MAIR_EL1.to_le_bytes()[..5], [0xff, 0xbb, 0x00, 0x44, 0x04]);
/// ```
pub const MAIR_EL1: u64 = 0x0000_0004_4400_bbff;

/// AttrIndx used for each [`CachePolicy`], in field order.
pub const ATTR_INDEX: [u8; 5] = [0, 1, 2, 3, 4];

/// Translation granule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB.
    K4,
    /// 16 KiB.
    K16,
    /// 64 KiB.
    K64,
}

impl Granule {
    /// Every granule.
    pub const ALL: [Granule; 3] = [Granule::K4, Granule::K16, Granule::K64];

    /// log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// The granule as a page size.
    pub const fn page_size(self) -> PageSize {
        match self {
            Granule::K4 => PageSize::Size4K,
            Granule::K16 => PageSize::Size16K,
            Granule::K64 => PageSize::Size64K,
        }
    }

    /// The block size at hardware level `hw_level`, if blocks exist there (without LPA2).
    pub const fn block_at(self, hw_level: u32) -> Option<PageSize> {
        match (self, hw_level) {
            (Granule::K4, 1) => Some(PageSize::Size1G),
            (Granule::K4, 2) => Some(PageSize::Size2M),
            (Granule::K16, 2) => Some(PageSize::Size32M),
            (Granule::K64, 2) => Some(PageSize::Size512M),
            _ => None,
        }
    }

    /// Entries in a contiguous-hint run at hardware level `hw_level` (Arm ARM D8.6.1).
    pub const fn contiguous_entries(self, hw_level: u32) -> Option<usize> {
        match (self, hw_level) {
            (Granule::K4, 1..=3) => Some(16),
            (Granule::K16, 2) => Some(32),
            (Granule::K16, 3) => Some(128),
            (Granule::K64, 2 | 3) => Some(32),
            _ => None,
        }
    }

    /// Largest supported VA width.
    pub const fn max_va_bits(self) -> u32 {
        match self {
            Granule::K64 => 52,
            _ => 48,
        }
    }
}

/// Why an aarch64 format could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aarch64ConfigError {
    /// The VA width is outside 39..=48 (or 52 with the 64 KiB granule).
    UnsupportedVaBits(u32),
}

/// One half of an aarch64 stage-1 regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64 {
    levels: [Level; 4],
    depth: usize,
    granule: Granule,
    va_bits: u32,
    half: VaHalf,
    /// FEAT_HAFDBS on (TCR_EL1.HA and HD).
    hw_ad: bool,
}

impl Aarch64 {
    /// A format for `granule`, `va_bits` of input address, translating `half`.
    pub const fn new(
        granule: Granule,
        va_bits: u32,
        half: VaHalf,
    ) -> Result<Self, Aarch64ConfigError> {
        let ok = (va_bits >= 39 && va_bits <= 48) || va_bits == granule.max_va_bits();
        if !ok {
            return Err(Aarch64ConfigError::UnsupportedVaBits(va_bits));
        }
        let g = granule.shift();
        let per = g - 3;
        // Hardware level n resolves VA bits [g + (3 - n) * per, + per).
        let mut start = 3u32;
        while g + (4 - start) * per < va_bits {
            start -= 1;
        }
        let mut levels = [Level {
            shift: 0,
            bits: 0,
            leaf: None,
        }; 4];
        let depth = (4 - start) as usize;
        let mut k = 0;
        while k < depth {
            let hw = start + k as u32;
            let shift = g + (3 - hw) * per;
            let bits = if k == 0 { va_bits - shift } else { per };
            levels[k] = Level {
                shift,
                bits,
                leaf: if hw == 3 {
                    Some(granule.page_size())
                } else {
                    granule.block_at(hw)
                },
            };
            k += 1;
        }
        Ok(Self {
            levels,
            depth,
            granule,
            va_bits,
            half,
            hw_ad: false,
        })
    }

    /// This format with hardware access-flag and dirty-state management (FEAT_HAFDBS) on or
    /// off: see the module docs for the encoding. Tables built with it must be used with
    /// TCR_EL1.HA and HD set ([`TCR_HA_HD`]), on a CPU that has the feature
    /// (ID_AA64MMFR1_EL1.HAFDBS = 2).
    pub const fn with_hw_access_dirty(mut self, on: bool) -> Self {
        self.hw_ad = on;
        self
    }

    /// Whether the hardware manages the access flag and dirty state.
    pub const fn hw_access_dirty(&self) -> bool {
        self.hw_ad
    }

    /// The granule.
    pub const fn granule_kind(&self) -> Granule {
        self.granule
    }

    /// The VA width.
    pub const fn va_bits(&self) -> u32 {
        self.va_bits
    }

    /// The half this format translates.
    pub const fn half(&self) -> VaHalf {
        self.half
    }

    /// The hardware level number (0..=3) of level index `level`.
    pub const fn hw_level(&self, level: usize) -> u32 {
        (4 - self.depth + level) as u32
    }

    /// The TCR_EL1 fields for this half: TnSZ, TGn, SHn = inner, IRGNn/ORGNn = WB-WA, EPDn = 0.
    pub const fn tcr_half_bits(&self) -> u64 {
        let tsz = (64 - self.va_bits) as u64;
        let attrs = 0b01 | (0b01 << 2) | (0b11 << 4); // IRGN, ORGN = WBWA; SH = inner
        match self.half {
            VaHalf::Lower => {
                let tg0 = match self.granule {
                    Granule::K4 => 0b00,
                    Granule::K64 => 0b01,
                    Granule::K16 => 0b10,
                };
                tsz | (attrs << 8) | (tg0 << 14)
            }
            VaHalf::Upper => {
                let tg1 = match self.granule {
                    Granule::K16 => 0b01,
                    Granule::K4 => 0b10,
                    Granule::K64 => 0b11,
                };
                (tsz << 16) | (attrs << 24) | (tg1 << 30)
            }
        }
    }

    #[inline]
    fn oa_mask(&self) -> u64 {
        OA_LOW & !((1u64 << self.granule.shift()) - 1)
    }

    #[inline]
    fn encode_oa(&self, pa: u64) -> u64 {
        let mut e = pa & self.oa_mask();
        if self.granule == Granule::K64 {
            e |= (pa >> 48 & 0xf) << 12;
        }
        e
    }

    #[inline]
    fn decode_oa(&self, raw: u64) -> u64 {
        let mut pa = raw & self.oa_mask();
        if self.granule == Granule::K64 {
            pa |= (raw & OA_HIGH_64K) >> 12 << 48;
        }
        pa
    }

    #[inline]
    fn is_last(&self, level: usize) -> bool {
        level + 1 == self.depth
    }
}

/// Table-descriptor count field: low 10 bits in 2..12, high 4 bits in 52..56.
const CNT_LOW_SHIFT: u32 = 2;
const CNT_LOW_MASK: u64 = 0x3ff << CNT_LOW_SHIFT;
const CNT_HIGH_SHIFT: u32 = 52;
const CNT_HIGH_MASK: u64 = 0xf << CNT_HIGH_SHIFT;

// SAFETY: table descriptors store the granule-aligned address in the OA field and
// `table_addr` decodes exactly that field (including OA[51:48] for 64 KiB); the count bits
// (2..12, 52..56) are disjoint from the address and type bits; `kind(l, 0)` is Absent (valid
// bit clear); table descriptors are `0b11` at non-last levels, which `kind` reports as Table,
// leaves are `0b01` blocks where blocks exist or `0b11` pages at the last level. `new` builds at
// most 4 levels whose bits (`granule shift - 3` at most) fit one granule-sized frame.
unsafe impl PagingFormat for Aarch64 {
    #[inline]
    fn levels(&self) -> &[Level] {
        &self.levels[..self.depth]
    }

    #[inline]
    fn granule(&self) -> PageSize {
        self.granule.page_size()
    }

    #[inline]
    fn is_canonical(&self, va: VirtAddr) -> bool {
        va.aarch64_half(self.va_bits) == Some(self.half)
    }

    #[inline]
    fn range_is_canonical(&self, first: VirtAddr, last: VirtAddr) -> bool {
        first <= last && self.is_canonical(first) && self.is_canonical(last)
    }

    #[inline]
    fn phys_bits(&self) -> u32 {
        match self.granule {
            Granule::K64 => 52,
            _ => 48,
        }
    }

    #[inline]
    fn kind(&self, level: usize, raw: u64) -> EntryKind {
        if raw & VALID == 0 {
            return EntryKind::Absent;
        }
        let table_bit = raw & TABLE_OR_PAGE != 0;
        if self.is_last(level) {
            if table_bit {
                EntryKind::Leaf
            } else {
                EntryKind::Malformed
            }
        } else if table_bit {
            EntryKind::Table
        } else if self.levels[level].leaf.is_some() {
            EntryKind::Leaf
        } else {
            EntryKind::Malformed
        }
    }

    #[inline]
    fn make_table(&self, _level: usize, table: PhysAddr, count: u32) -> u64 {
        self.set_table_count(
            self.encode_oa(table.as_u64()) | VALID | TABLE_OR_PAGE,
            count,
        )
    }

    #[inline]
    fn table_addr(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(self.decode_oa(raw))
    }

    #[inline]
    fn table_count(&self, raw: u64) -> u32 {
        (((raw & CNT_LOW_MASK) >> CNT_LOW_SHIFT) | ((raw & CNT_HIGH_MASK) >> (CNT_HIGH_SHIFT - 10)))
            as u32
    }

    #[inline]
    fn set_table_count(&self, raw: u64, count: u32) -> u64 {
        let c = count as u64;
        (raw & !(CNT_LOW_MASK | CNT_HIGH_MASK))
            | ((c & 0x3ff) << CNT_LOW_SHIFT)
            | (((c >> 10) & 0xf) << CNT_HIGH_SHIFT)
    }

    #[inline]
    fn make_leaf(&self, level: usize, pa: PhysAddr, attrs: Attrs) -> u64 {
        let mut e = self.encode_oa(pa.as_u64()) | VALID | SH_INNER;
        if self.is_last(level) {
            e |= TABLE_OR_PAGE;
        }
        e |= (ATTR_INDEX[attrs.cache() as usize] as u64) << ATTR_INDX_SHIFT;
        if attrs.contains(Attrs::USER) {
            e |= AP_EL0;
        }
        let write = attrs.contains(Attrs::WRITE);
        let dirty = attrs.contains(Attrs::DIRTY);
        if self.hw_ad && write {
            // Writable: DBM; clean is AP[2] set until the walker's first write clears it.
            e |= DBM;
            if !dirty {
                e |= AP_RO;
            }
        } else {
            if !write {
                e |= AP_RO;
            }
            if dirty {
                e |= SW_DIRTY;
            }
        }
        if !attrs.contains(Attrs::USER_EXEC) {
            e |= UXN;
        }
        if !attrs.contains(Attrs::KERNEL_EXEC) {
            e |= PXN;
        }
        if !attrs.contains(Attrs::GLOBAL) {
            e |= NG;
        }
        if attrs.contains(Attrs::ACCESSED) {
            e |= AF;
        }
        e | ((((attrs.bits() >> 8) & 0b111) as u64) << SW_SHIFT)
    }

    #[inline]
    fn leaf_oa_bits(&self, _level: usize, pa: PhysAddr) -> u64 {
        self.encode_oa(pa.as_u64())
    }

    #[inline]
    fn leaf_oa_mask(&self, level: usize) -> u64 {
        let high = if self.granule == Granule::K64 {
            OA_HIGH_64K
        } else {
            0
        };
        (self.oa_mask() & !(self.levels[level].entry_span() - 1)) | high
    }

    /// Without FEAT_HAFDBS the walker never writes a descriptor; with it, it sets AF where it
    /// is clear and clears AP\[2\] of a clean DBM leaf on a write.
    #[inline]
    fn hw_may_update(&self, raw: u64) -> bool {
        self.hw_ad && (raw & AF == 0 || raw & (DBM | AP_RO) == DBM | AP_RO)
    }

    #[inline]
    fn leaf_addr(&self, level: usize, raw: u64) -> PhysAddr {
        let size_mask = self.levels[level].entry_span() - 1;
        PhysAddr::new(self.decode_oa(raw) & !size_mask)
    }

    #[inline]
    fn leaf_attrs(&self, _level: usize, raw: u64) -> Attrs {
        let mut a = Attrs::READ;
        if raw & AP_EL0 != 0 {
            a |= Attrs::USER;
        }
        if self.hw_ad && raw & DBM != 0 {
            a |= Attrs::WRITE;
            if raw & AP_RO == 0 {
                a |= Attrs::DIRTY;
            }
        } else if raw & AP_RO == 0 {
            a |= Attrs::WRITE;
        }
        if raw & UXN == 0 {
            a |= Attrs::USER_EXEC;
        }
        if raw & PXN == 0 {
            a |= Attrs::KERNEL_EXEC;
        }
        if raw & NG == 0 {
            a |= Attrs::GLOBAL;
        }
        if raw & AF != 0 {
            a |= Attrs::ACCESSED;
        }
        if raw & SW_DIRTY != 0 {
            a |= Attrs::DIRTY;
        }
        a |= Attrs::from_bits_retain((((raw >> SW_SHIFT) & 0b111) as u32) << 8);
        let idx = (raw >> ATTR_INDX_SHIFT) & 0b111;
        let cache = match idx {
            1 => CachePolicy::WriteThrough,
            2 => CachePolicy::Uncached,
            3 => CachePolicy::WriteCombining,
            4 => CachePolicy::Device,
            _ => CachePolicy::WriteBack,
        };
        a.with_cache(cache)
    }

    #[inline]
    fn normalize(&self, attrs: Attrs) -> Result<Attrs, AttrError> {
        if !attrs.contains(Attrs::READ) {
            return Err(AttrError::NotReadable);
        }
        if !attrs.cache_is_valid() {
            return Err(AttrError::BadCachePolicy);
        }
        if attrs.pkey() != 0 {
            return Err(AttrError::PkeyUnsupported);
        }
        let mut a = attrs;
        if a.contains(Attrs::USER | Attrs::WRITE) {
            a.remove(Attrs::KERNEL_EXEC);
        }
        Ok(a)
    }

    fn needs_break_before_make(&self) -> bool {
        true
    }

    fn attr_change_needs_bbm(&self, old: Attrs, new: Attrs) -> bool {
        old.cache() != new.cache() || old.contains(Attrs::GLOBAL) != new.contains(Attrs::GLOBAL)
    }

    fn contiguous_run(&self, level: usize) -> Option<usize> {
        self.levels[level].leaf?;
        self.granule.contiguous_entries(self.hw_level(level))
    }

    #[inline]
    fn is_contiguous(&self, raw: u64) -> bool {
        raw & CONT != 0
    }

    #[inline]
    fn set_contiguous(&self, raw: u64, on: bool) -> u64 {
        if on {
            raw | CONT
        } else {
            raw & !CONT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(g: Granule, va: u32) -> Aarch64 {
        Aarch64::new(g, va, VaHalf::Lower).unwrap()
    }

    #[test]
    fn geometry_matches_the_arm_tables() {
        let f = fmt(Granule::K4, 48);
        assert_eq!(
            f.levels()
                .iter()
                .map(|l| l.shift)
                .collect::<std::vec::Vec<_>>(),
            [39, 30, 21, 12]
        );
        assert_eq!(f.hw_level(0), 0);
        let f = fmt(Granule::K4, 39);
        assert_eq!(f.depth(), 3);
        assert_eq!(f.levels()[0].leaf, Some(PageSize::Size1G));
        let f = fmt(Granule::K4, 40);
        assert_eq!((f.depth(), f.levels()[0].bits), (4, 1));
        let f = fmt(Granule::K16, 48);
        assert_eq!(
            f.levels()
                .iter()
                .map(|l| (l.shift, l.bits))
                .collect::<std::vec::Vec<_>>(),
            [(47, 1), (36, 11), (25, 11), (14, 11)]
        );
        let f = fmt(Granule::K16, 47);
        assert_eq!(f.depth(), 3);
        let f = fmt(Granule::K64, 48);
        assert_eq!(
            f.levels()
                .iter()
                .map(|l| (l.shift, l.bits))
                .collect::<std::vec::Vec<_>>(),
            [(42, 6), (29, 13), (16, 13)]
        );
        let f = fmt(Granule::K64, 52);
        assert_eq!(f.levels()[0].bits, 10);
        assert_eq!(f.levels()[1].leaf, Some(PageSize::Size512M));
        assert!(Aarch64::new(Granule::K4, 52, VaHalf::Lower).is_err());
        assert!(Aarch64::new(Granule::K16, 38, VaHalf::Lower).is_err());
    }

    #[test]
    fn mair_holds_the_documented_attributes() {
        let bytes = [0xffu64, 0xbb, 0x00, 0x44, 0x04];
        for c in CachePolicy::ALL {
            let idx = ATTR_INDEX[c as usize] as u64;
            assert_eq!((MAIR_EL1 >> (idx * 8)) & 0xff, bytes[c as usize]);
        }
    }

    #[test]
    fn table_count_uses_fourteen_ignored_bits() {
        let f = fmt(Granule::K64, 52);
        let t = PhysAddr::new(0x000f_1234_5678_0000);
        let e = f.make_table(0, t, 8192);
        assert_eq!(f.table_addr(e), t);
        assert_eq!(f.table_count(e), 8192);
        assert_eq!(f.kind(0, e), EntryKind::Table);
        assert_eq!(
            e & (PXN | UXN | (0b11111 << 59)),
            0,
            "APTable/XNTable stay clear"
        );
    }

    #[test]
    fn el0_writable_drops_kernel_exec() {
        let f = fmt(Granule::K4, 48);
        let a = f.normalize(Attrs::USER_RW | Attrs::KERNEL_EXEC).unwrap();
        assert!(!a.contains(Attrs::KERNEL_EXEC));
        assert_eq!(
            f.normalize(Attrs::KERNEL_RW.with_pkey(1)),
            Err(AttrError::PkeyUnsupported)
        );
    }

    #[test]
    fn tcr_fields_encode_granule_and_size() {
        let lo = fmt(Granule::K4, 48).tcr_half_bits();
        assert_eq!(lo & 0x3f, 16);
        assert_eq!((lo >> 14) & 3, 0);
        let hi = Aarch64::new(Granule::K64, 52, VaHalf::Upper)
            .unwrap()
            .tcr_half_bits();
        assert_eq!((hi >> 16) & 0x3f, 12);
        assert_eq!((hi >> 30) & 3, 0b11);
    }
}
