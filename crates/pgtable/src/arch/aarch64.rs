//! aarch64 stage-1 translation (VMSAv8-64) with 4, 16 and 64 KiB granules.
//!
//! A format value is one half of the address space (TTBR0: addresses with the top bits clear;
//! TTBR1: set) for one granule and VA width (`TnSZ = 64 - va_bits`): 39..=48 bits for every
//! granule, and 52 bits (FEAT_LVA) with the 64 KiB granule, whose output addresses may then use
//! 52 bits too (FEAT_LPA: OA\[51:48\] in descriptor bits 15:12). With the 4 and 16 KiB
//! granules, 52-bit VA and PA need FEAT_LPA2 ([`Aarch64::new_lpa2`], for TCR_EL1.DS = 1): OA\[49:12\]
//! sits in descriptor bits 49:12 and OA\[51:50\] in bits 9:8, where the shareability field was
//! (it moves to TCR_EL1), and a 52-bit VA with the 4 KiB granule starts one level higher, at
//! level -1 (16 entries). The 512 GiB (4 KiB) and 64 GiB (16 KiB) blocks LPA2 allows at the
//! top levels are not used.
//!
//! Levels: the hardware's level 3 holds pages; blocks exist at level 2 (2 MiB / 32 MiB /
//! 512 MiB) and, for 4 KiB, level 1 (1 GiB). The root is the highest level the VA width
//! needs, with fewer index bits when the width is not a whole level.
//!
//! Descriptor bits (Arm ARM D8.3): valid 0, table/page 1, AttrIndx 2–4, NS 5, AP\[1\] 6 (EL0
//! access), AP\[2\] 7 (read-only), SH 8–9, AF 10, nG 11, Contiguous 52, PXN 53, UXN 54, software
//! 55–58 (this crate: 55 DIRTY as Linux's PTE_DIRTY, 56–58 SW0–SW2).
//!
//! * Table descriptors carry the child's entry count in bits 2–11 and 52–55 (with LPA2 in
//!   bits 2–7, 10–11 and 52–55, twelve bits, since 9:8 hold address bits), all ignored by the
//!   hardware in table descriptors (APTable/XNTable/PXNTable stay 0).
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
/// TCR_EL1.DS (bit 59): the FEAT_LPA2 descriptor layout, what [`Aarch64::new_lpa2`] formats
/// assume.
pub const TCR_DS: u64 = 1 << 59;
/// Output-address bits 49:12 of an LPA2 descriptor (further masked by the granule).
const OA_LOW_LPA2: u64 = 0x0003_ffff_ffff_f000;
/// Descriptor bits 9:8 holding OA\[51:50\] with LPA2.
const OA_HIGH_LPA2: u64 = 0b11 << 8;

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

    /// The block size at hardware level `hw_level`, if blocks exist there (LPA2's 512 GiB and
    /// 64 GiB blocks are not used).
    pub const fn block_at(self, hw_level: i32) -> Option<PageSize> {
        match (self, hw_level) {
            (Granule::K4, 1) => Some(PageSize::Size1G),
            (Granule::K4, 2) => Some(PageSize::Size2M),
            (Granule::K16, 2) => Some(PageSize::Size32M),
            (Granule::K64, 2) => Some(PageSize::Size512M),
            _ => None,
        }
    }

    /// Entries in a contiguous-hint run at hardware level `hw_level` (Arm ARM D8.6.1).
    pub const fn contiguous_entries(self, hw_level: i32) -> Option<usize> {
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
    /// The VA width is outside 39..=48 (or 52 with the 64 KiB granule, or with LPA2).
    UnsupportedVaBits(u32),
    /// LPA2 was asked for with the 64 KiB granule (which has 52 bits without it).
    Lpa2NeedsSmallGranule,
}

/// One half of an aarch64 stage-1 regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64 {
    levels: [Level; 5],
    depth: usize,
    /// FEAT_LPA2 descriptor layout (TCR_EL1.DS = 1).
    lpa2: bool,
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
        Ok(Self::build(granule, va_bits, half, false))
    }

    /// A format with the FEAT_LPA2 descriptor layout (TCR_EL1.DS = 1) for the 4 or 16 KiB
    /// granule: `va_bits` 39..=48 or 52, 52-bit output addresses. Tables built with it must
    /// be used with [`TCR_DS`] set, on a CPU that has the feature
    /// (ID_AA64MMFR0_EL1.TGran4 = 1 or TGran16 = 2).
    pub const fn new_lpa2(
        granule: Granule,
        va_bits: u32,
        half: VaHalf,
    ) -> Result<Self, Aarch64ConfigError> {
        if matches!(granule, Granule::K64) {
            return Err(Aarch64ConfigError::Lpa2NeedsSmallGranule);
        }
        if !((va_bits >= 39 && va_bits <= 48) || va_bits == 52) {
            return Err(Aarch64ConfigError::UnsupportedVaBits(va_bits));
        }
        Ok(Self::build(granule, va_bits, half, true))
    }

    const fn build(granule: Granule, va_bits: u32, half: VaHalf, lpa2: bool) -> Self {
        let g = granule.shift() as i32;
        let per = g - 3;
        // Hardware level n resolves VA bits [g + (3 - n) * per, + per); 52 bits with the
        // 4 KiB granule start at level -1.
        let mut start = 3i32;
        while g + (4 - start) * per < va_bits as i32 {
            start -= 1;
        }
        let mut levels = [Level {
            shift: 0,
            bits: 0,
            leaf: None,
        }; 5];
        let depth = (4 - start) as usize;
        let mut k = 0;
        while k < depth {
            let hw = start + k as i32;
            let shift = (g + (3 - hw) * per) as u32;
            let bits = if k == 0 { va_bits - shift } else { per as u32 };
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
        Self {
            levels,
            depth,
            lpa2,
            granule,
            va_bits,
            half,
            hw_ad: false,
        }
    }

    /// Whether the format uses the FEAT_LPA2 descriptor layout.
    pub const fn lpa2(&self) -> bool {
        self.lpa2
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

    /// The hardware level number (-1..=3) of level index `level`.
    pub const fn hw_level(&self, level: usize) -> i32 {
        4 - self.depth as i32 + level as i32
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
        let low = if self.lpa2 { OA_LOW_LPA2 } else { OA_LOW };
        low & !((1u64 << self.granule.shift()) - 1)
    }

    /// The descriptor bits holding the top of the output address: 15:12 (64 KiB, FEAT_LPA),
    /// 9:8 (LPA2), none.
    #[inline]
    fn oa_high_mask(&self) -> u64 {
        if self.lpa2 {
            OA_HIGH_LPA2
        } else if matches!(self.granule, Granule::K64) {
            OA_HIGH_64K
        } else {
            0
        }
    }

    #[inline]
    fn encode_oa(&self, pa: u64) -> u64 {
        let mut e = pa & self.oa_mask();
        if self.lpa2 {
            e |= (pa >> 50 & 0b11) << 8;
        } else if self.granule == Granule::K64 {
            e |= (pa >> 48 & 0xf) << 12;
        }
        e
    }

    #[inline]
    fn decode_oa(&self, raw: u64) -> u64 {
        let mut pa = raw & self.oa_mask();
        if self.lpa2 {
            pa |= (raw & OA_HIGH_LPA2) >> 8 << 50;
        } else if self.granule == Granule::K64 {
            pa |= (raw & OA_HIGH_64K) >> 12 << 48;
        }
        pa
    }

    /// The table-descriptor bits holding the low part of the entry count: 2..12, or 2..8
    /// and 10..12 with LPA2.
    #[inline]
    fn count_low(&self, raw: u64) -> u64 {
        if self.lpa2 {
            ((raw >> CNT_LOW_SHIFT) & 0x3f) | ((raw >> 10 & 0b11) << 6)
        } else {
            (raw & CNT_LOW_MASK) >> CNT_LOW_SHIFT
        }
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
            _ if self.lpa2 => 52,
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
        // The high field holds the bits above the low field's 10 (8 with LPA2).
        let low_bits = if self.lpa2 { 8 } else { 10 };
        (self.count_low(raw) | ((raw & CNT_HIGH_MASK) >> CNT_HIGH_SHIFT << low_bits)) as u32
    }

    #[inline]
    fn set_table_count(&self, raw: u64, count: u32) -> u64 {
        let c = count as u64;
        if self.lpa2 {
            // Bits 9:8 are address bits: count bits 5:0 go to 7:2, 7:6 to 11:10, 11:8 to
            // 55:52.
            let low_mask = (0x3f << CNT_LOW_SHIFT) | (0b11 << 10);
            (raw & !(low_mask | CNT_HIGH_MASK))
                | ((c & 0x3f) << CNT_LOW_SHIFT)
                | (((c >> 6) & 0b11) << 10)
                | (((c >> 8) & 0xf) << CNT_HIGH_SHIFT)
        } else {
            (raw & !(CNT_LOW_MASK | CNT_HIGH_MASK))
                | ((c & 0x3ff) << CNT_LOW_SHIFT)
                | (((c >> 10) & 0xf) << CNT_HIGH_SHIFT)
        }
    }

    #[inline]
    fn make_leaf(&self, level: usize, pa: PhysAddr, attrs: Attrs) -> u64 {
        // With LPA2 the shareability comes from TCR_EL1 (bits 9:8 are address bits).
        let sh = if self.lpa2 { 0 } else { SH_INNER };
        let mut e = self.encode_oa(pa.as_u64()) | VALID | sh;
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
        (self.oa_mask() & !(self.levels[level].entry_span() - 1)) | self.oa_high_mask()
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
    fn leaf_attrs(&self, level: usize, raw: u64) -> Attrs {
        Self::decode_leaf_attrs(self.attrs_key(), level, raw)
    }

    #[inline]
    fn attrs_key(&self) -> u32 {
        u32::from(self.hw_ad)
    }

    #[inline]
    fn decode_leaf_attrs(key: u32, _level: usize, raw: u64) -> Attrs {
        let hw_ad = key != 0;
        let mut a = Attrs::READ;
        if raw & AP_EL0 != 0 {
            a |= Attrs::USER;
        }
        if hw_ad && raw & DBM != 0 {
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
        // FEAT_LPA2: 52 bits with the 4 KiB granule start at level -1 (16 entries).
        let f = Aarch64::new_lpa2(Granule::K4, 52, VaHalf::Lower).unwrap();
        assert_eq!(f.depth(), 5);
        assert_eq!((f.levels()[0].shift, f.levels()[0].bits), (48, 4));
        assert_eq!((f.hw_level(0), f.levels()[0].leaf), (-1, None));
        assert_eq!(f.levels()[2].leaf, Some(PageSize::Size1G));
        assert_eq!(f.phys_bits(), 52);
        let f = Aarch64::new_lpa2(Granule::K16, 52, VaHalf::Lower).unwrap();
        assert_eq!(f.depth(), 4);
        assert_eq!((f.levels()[0].shift, f.levels()[0].bits), (47, 5));
        assert_eq!(
            Aarch64::new_lpa2(Granule::K64, 52, VaHalf::Lower),
            Err(Aarch64ConfigError::Lpa2NeedsSmallGranule)
        );
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
    fn lpa2_puts_address_bits_51_50_where_shareability_was() {
        for g in [Granule::K4, Granule::K16] {
            let f = Aarch64::new_lpa2(g, 52, VaHalf::Lower).unwrap();
            let last = f.depth() - 1;
            let pa = PhysAddr::new(0x000f_0000_1234_0000 & !((1 << g.shift()) - 1));
            let e = f.make_leaf(last, pa, Attrs::KERNEL_RW);
            assert_eq!(e >> 8 & 0b11, 0b11, "OA[51:50] in bits 9:8");
            assert_eq!(e & (0b11 << 50), 0);
            assert_eq!(f.leaf_addr(last, e), pa);
            let t = f.make_table(0, pa, 2048);
            assert_eq!(f.table_addr(t), pa);
            assert_eq!(f.table_count(t), 2048);
            assert_eq!(t >> 8 & 0b11, 0b11, "the count keeps off bits 9:8");
            assert_eq!(f.table_count(f.set_table_count(t, 0x2a5)), 0x2a5);
            assert_eq!(f.table_addr(f.set_table_count(t, 0x2a5)), pa);
        }
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
