//! x86_64 4-level (48-bit) and 5-level (LA57, 57-bit) paging.
//!
//! Levels, root first: PML5 (5-level only), PML4, PDPT (1 GiB pages), PD (2 MiB pages), PT
//! (4 KiB pages); 9 index bits each, 4 KiB tables. 1 GiB pages assume `CPUID.80000001H:EDX
//! .Page1GB`.
//!
//! Entry bits (Intel SDM vol. 3A §4.5): P 0, RW 1, US 2, PWT 3, PCD 4, A 5, D 6, PS 7 (PAT in
//! a 4 KiB PTE), G 8, available 9–11, PAT 12 (in 2 MiB / 1 GiB leaves), address 12–51,
//! available 52–58, protection key 59–62, NX 63.
//!
//! * Table entries are `P | RW | US | A` with NX clear, so leaves alone decide permissions;
//!   A is preset so the CPU never writes a table entry. The child table's entry count is kept
//!   in bits 52–61, which the CPU ignores in non-leaf entries.
//! * Execute: x86 has one NX bit. A user page's NX is `!USER_EXEC`, a kernel page's
//!   `!KERNEL_EXEC`; the other execute flag is dropped by normalization (with SMEP, the
//!   kernel never executes user pages).
//! * Software bits SW0–SW2 are bits 9–11; the protection key is bits 59–62.
//! * Cache policy goes through the PAT index `PAT << 2 | PCD << 1 | PWT` into [`PAT_MSR`].

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::attrs::{Attrs, CachePolicy};
use crate::error::AttrError;
use crate::format::{EntryKind, Level, PagingFormat};

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User accessible.
pub const US: u64 = 1 << 2;
/// Page-level write-through (PAT index bit 0).
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable (PAT index bit 1).
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty.
pub const D: u64 = 1 << 6;
/// Page size (in PDPT/PD entries) — the PAT bit in a PT entry.
pub const PS: u64 = 1 << 7;
/// PAT index bit 2 in a 4 KiB PTE.
pub const PAT_4K: u64 = 1 << 7;
/// Global.
pub const G: u64 = 1 << 8;
/// PAT index bit 2 in a 2 MiB / 1 GiB leaf.
pub const PAT_HUGE: u64 = 1 << 12;
/// No-execute.
pub const NX: u64 = 1 << 63;
/// Address bits 12..52.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Shift of the software bits SW0..SW2 (bits 9-11).
const SW_SHIFT: u32 = 9;
/// Shift of the protection key (bits 59-62).
const PKEY_SHIFT: u32 = 59;
/// Shift and width of the child-table entry count in table entries (bits 52-61).
const COUNT_SHIFT: u32 = 52;
const COUNT_MASK: u64 = 0x3ff << COUNT_SHIFT;

/// The PAT MSR (IA32_PAT, 0x277) value this crate's cache policies assume, as Linux programs
/// it (arch/x86/mm/pat/memtype.c): PA0 WB, PA1 WC, PA2 UC-, PA3 UC, PA4 WB, PA5 WP, PA6 UC-,
/// PA7 WT. Memory types: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7.
///
/// ```
/// use mmkit_pgtable::arch::x86_64::PAT_MSR;
/// assert_eq!(PAT_MSR.to_le_bytes(), [6, 1, 7, 0, 6, 5, 7, 4]);
/// ```
pub const PAT_MSR: u64 = 0x0407_0506_0007_0106;

/// PAT index used for each [`CachePolicy`], in field order (see [`PAT_MSR`]).
pub const PAT_INDEX: [u8; 5] = [
    0, // WriteBack -> PA0 WB
    7, // WriteThrough -> PA7 WT
    2, // Uncached -> PA2 UC-
    1, // WriteCombining -> PA1 WC
    3, // Device -> PA3 UC
];

/// x86_64 paging with 4 or 5 levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64 {
    levels: &'static [Level],
    va_bits: u32,
}

const L_PML5: Level = Level {
    shift: 48,
    bits: 9,
    leaf: None,
};
const L_PML4: Level = Level {
    shift: 39,
    bits: 9,
    leaf: None,
};
const L_PDPT: Level = Level {
    shift: 30,
    bits: 9,
    leaf: Some(PageSize::Size1G),
};
const L_PD: Level = Level {
    shift: 21,
    bits: 9,
    leaf: Some(PageSize::Size2M),
};
const L_PT: Level = Level {
    shift: 12,
    bits: 9,
    leaf: Some(PageSize::Size4K),
};
static LEVELS4: [Level; 4] = [L_PML4, L_PDPT, L_PD, L_PT];
static LEVELS5: [Level; 5] = [L_PML5, L_PML4, L_PDPT, L_PD, L_PT];

impl X86_64 {
    /// 4-level paging, 48-bit virtual addresses.
    pub const FOUR_LEVEL: X86_64 = X86_64 {
        levels: &LEVELS4,
        va_bits: 48,
    };
    /// 5-level paging (CR4.LA57), 57-bit virtual addresses.
    pub const FIVE_LEVEL: X86_64 = X86_64 {
        levels: &LEVELS5,
        va_bits: 57,
    };

    /// Virtual-address width.
    pub const fn va_bits(&self) -> u32 {
        self.va_bits
    }

    #[inline]
    fn is_last(&self, level: usize) -> bool {
        level + 1 == self.levels.len()
    }

    /// log2 of the span of one entry at `level`: 12 at the last level, 9 more per level above
    /// (the same as `levels[level].shift`, computed instead of loaded so that walks compile to
    /// shifts; `x86_geometry_is_arithmetic` checks the two agree).
    #[inline]
    fn shift_of(&self, level: usize) -> u32 {
        12 + 9 * (self.levels.len() - 1 - level) as u32
    }

    #[inline]
    fn pat_bit(&self, level: usize) -> u64 {
        if self.is_last(level) {
            PAT_4K
        } else {
            PAT_HUGE
        }
    }
}

/// The cache-policy field value of each PAT index, per [`PAT_MSR`]: WB, WC, UC-, UC, WB, WP,
/// UC-, WT. WP (write-protect) has no arch-neutral policy and reads back as write-through; the
/// encoder never produces index 5.
const POLICY_FIELD_OF_PAT_INDEX: [u8; 8] = [
    CachePolicy::WriteBack as u8,
    CachePolicy::WriteCombining as u8,
    CachePolicy::Uncached as u8,
    CachePolicy::Device as u8,
    CachePolicy::WriteBack as u8,
    CachePolicy::WriteThrough as u8,
    CachePolicy::Uncached as u8,
    CachePolicy::WriteThrough as u8,
];

/// The attributes a leaf's low nine bits decode to, as though NX were clear, indexed by bits
/// 0..9 of the entry with the PAT bit in bit 7 (a 4 KiB PTE's own layout): READ always; RW 1
/// -> WRITE 1, US 2 -> USER 4, A 5 -> 6, D 6 -> 7, G 8 -> GLOBAL 5; the execute bit of the
/// page's privilege (USER_EXEC 2 if US, else KERNEL_EXEC 3); and the cache policy of PAT
/// index `PAT << 2 | PCD << 1 | PWT` ([`POLICY_FIELD_OF_PAT_INDEX`]). Derived at compile time
/// from those tables, so a decode is one load instead of a dozen bit moves;
/// `low_bits_table_matches_bitwise_decode` checks it against the bitwise form.
static ATTRS_OF_LOW_BITS: [u32; 512] = {
    let mut t = [0u32; 512];
    let mut i = 0;
    while i < 512 {
        let raw = i as u64;
        let user = (raw >> 2) & 1;
        let exec = 0b1000 >> user;
        let pat = ((raw >> 3) & 0b11) | (((raw >> 7) & 1) << 2);
        let cache = POLICY_FIELD_OF_PAT_INDEX[pat as usize] as u64;
        let bits = 1 // READ
            | (raw & RW)
            | (user << 4)
            | exec
            | ((raw & (A | D)) << 1)
            | ((raw & G) >> 3)
            | (cache << Attrs::CACHE_SHIFT);
        t[i] = bits as u32;
        i += 1;
    }
    t
};

// SAFETY: `make_table` stores the 4 KiB-aligned address in bits 12..52 and `table_addr` reads
// exactly those; the count lives in bits 52..62, disjoint from the address and the flags;
// `kind(l, 0)` is Absent (P clear); a table entry has P set and PS clear, and `kind` reports
// Table for it at every non-last level; leaves have P (and PS above the last level). The level
// tables are constant statics of at most 5 levels of 9 bits in 4 KiB frames.
unsafe impl PagingFormat for X86_64 {
    #[inline]
    fn levels(&self) -> &[Level] {
        self.levels
    }

    #[inline]
    fn granule(&self) -> PageSize {
        PageSize::Size4K
    }

    #[inline]
    fn is_canonical(&self, va: VirtAddr) -> bool {
        va.is_canonical_x86(self.va_bits)
    }

    /// 48 or 57 bits: 12 + 9 per level (`va_bits` agrees: `x86_geometry_is_arithmetic`), so
    /// a walk specialised for its depth checks with constant shifts.
    #[inline]
    fn is_canonical_at_depth(&self, va: VirtAddr, depth: usize) -> bool {
        va.is_canonical_x86(12 + 9 * depth as u32)
    }

    #[inline]
    fn range_is_canonical(&self, first: VirtAddr, last: VirtAddr) -> bool {
        self.is_canonical(first)
            && self.is_canonical(last)
            && first <= last
            && (first.as_u64() >> 63) == (last.as_u64() >> 63)
    }

    #[inline]
    fn phys_bits(&self) -> u32 {
        52
    }

    #[inline]
    fn kind(&self, level: usize, raw: u64) -> EntryKind {
        if raw & P == 0 {
            return EntryKind::Absent;
        }
        if self.is_last(level) {
            return EntryKind::Leaf;
        }
        if raw & PS == 0 {
            EntryKind::Table
        } else if level + 3 >= self.levels.len() {
            // PS is honoured in the PDPT (1 GiB) and PD (2 MiB): the two levels above the PT.
            EntryKind::Leaf
        } else {
            EntryKind::Malformed
        }
    }

    #[inline]
    fn make_table(&self, _level: usize, table: PhysAddr, count: u32) -> u64 {
        (table.as_u64() & ADDR_MASK) | P | RW | US | A | ((count as u64) << COUNT_SHIFT)
    }

    #[inline]
    fn table_addr(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR_MASK)
    }

    #[inline]
    fn table_count(&self, raw: u64) -> u32 {
        ((raw & COUNT_MASK) >> COUNT_SHIFT) as u32
    }

    #[inline]
    fn set_table_count(&self, raw: u64, count: u32) -> u64 {
        (raw & !COUNT_MASK) | (((count as u64) << COUNT_SHIFT) & COUNT_MASK)
    }

    #[inline]
    fn make_leaf(&self, level: usize, pa: PhysAddr, attrs: Attrs) -> u64 {
        let mut e = (pa.as_u64() & ADDR_MASK) | P;
        if !self.is_last(level) {
            e |= PS;
        }
        if attrs.contains(Attrs::WRITE) {
            e |= RW;
        }
        let user = attrs.contains(Attrs::USER);
        if user {
            e |= US;
        }
        let exec = if user {
            attrs.contains(Attrs::USER_EXEC)
        } else {
            attrs.contains(Attrs::KERNEL_EXEC)
        };
        if !exec {
            e |= NX;
        }
        if attrs.contains(Attrs::GLOBAL) {
            e |= G;
        }
        if attrs.contains(Attrs::ACCESSED) {
            e |= A;
        }
        if attrs.contains(Attrs::DIRTY) {
            e |= D;
        }
        e |= (((attrs.bits() >> 8) & 0b111) as u64) << SW_SHIFT;
        e |= (attrs.pkey() as u64) << PKEY_SHIFT;
        let pat = PAT_INDEX[attrs.cache() as usize] as u64;
        if pat & 1 != 0 {
            e |= PWT;
        }
        if pat & 2 != 0 {
            e |= PCD;
        }
        if pat & 4 != 0 {
            e |= self.pat_bit(level);
        }
        e
    }

    #[inline]
    fn leaf_oa_bits(&self, _level: usize, pa: PhysAddr) -> u64 {
        pa.as_u64() & ADDR_MASK
    }

    #[inline]
    fn leaf_oa_mask(&self, level: usize) -> u64 {
        ADDR_MASK & !self.leaf_span_mask(level)
    }

    /// The CPU sets A on any use of an entry without it and D on a write through a writable
    /// entry without it (Intel SDM vol. 3A §4.8); an entry with A set and D set or RW clear is
    /// never written by it.
    #[inline]
    fn hw_may_update(&self, raw: u64) -> bool {
        raw & A == 0 || raw & (RW | D) == RW
    }

    #[inline]
    fn leaf_addr(&self, level: usize, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR_MASK & !self.leaf_span_mask(level))
    }

    #[inline]
    fn index_of(&self, level: usize, va: u64) -> usize {
        ((va >> self.shift_of(level)) & 0x1ff) as usize
    }

    #[inline]
    fn leaf_size(&self, level: usize) -> Option<PageSize> {
        match self.levels.len() - 1 - level {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size2M),
            2 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    #[inline]
    fn leaf_span_mask(&self, level: usize) -> u64 {
        (1u64 << self.shift_of(level)) - 1
    }

    #[inline]
    fn leaf_attrs(&self, level: usize, raw: u64) -> Attrs {
        Self::decode_leaf_attrs(self.attrs_key(), level, raw)
    }

    #[inline]
    fn attrs_key(&self) -> u32 {
        // The last level's index: bit 7 is PAT there and PS above.
        (self.levels.len() - 1) as u32
    }

    #[inline]
    fn decode_leaf_attrs(key: u32, level: usize, raw: u64) -> Attrs {
        // The low nine bits, with the PAT bit moved to bit 7 (where a 4 KiB PTE has it; a
        // huge leaf has PS there), index `ATTRS_OF_LOW_BITS`; the rest moves bit by bit (see
        // the bit table in the module docs and `Attrs`): AVL 9..12 -> SW 8..11, pkey 59..63
        // -> 16..20, and NX clears both execute bits.
        let low = if level == key as usize {
            raw & 0x1ff
        } else {
            (raw & 0x17f) | ((raw >> 5) & PS)
        };
        let nx_clears =
            ((raw as i64 >> 63) as u64) & (Attrs::USER_EXEC | Attrs::KERNEL_EXEC).bits() as u64;
        let bits = (ATTRS_OF_LOW_BITS[low as usize] as u64 & !nx_clears)
            | ((raw >> 1) & 0x700)
            | (((raw >> PKEY_SHIFT) & 0xf) << Attrs::PKEY_SHIFT);
        Attrs::from_bits_retain(bits as u32)
    }

    #[inline]
    fn normalize(&self, attrs: Attrs) -> Result<Attrs, AttrError> {
        if !attrs.contains(Attrs::READ) {
            return Err(AttrError::NotReadable);
        }
        if !attrs.cache_is_valid() {
            return Err(AttrError::BadCachePolicy);
        }
        let mut a = attrs;
        if a.contains(Attrs::USER) {
            a.remove(Attrs::KERNEL_EXEC);
        } else {
            a.remove(Attrs::USER_EXEC);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pat_msr_matches_linux_layout() {
        // Linux: WB WC UC- UC WB WP UC- WT (memory types 6 1 7 0 6 5 7 4).
        let types = [6u64, 1, 7, 0, 6, 5, 7, 4];
        for (i, t) in types.iter().enumerate() {
            assert_eq!((PAT_MSR >> (i * 8)) & 0xff, *t, "PA{i}");
        }
        // Memory type of each PAT entry -> the policy it stands for.
        let policy_of_type = |t: u64| match t {
            0 => CachePolicy::Device,
            1 => CachePolicy::WriteCombining,
            4 | 5 => CachePolicy::WriteThrough,
            6 => CachePolicy::WriteBack,
            _ => CachePolicy::Uncached,
        };
        for (i, field) in POLICY_FIELD_OF_PAT_INDEX.iter().enumerate() {
            assert_eq!(
                *field,
                policy_of_type((PAT_MSR >> (i * 8)) & 0xff) as u8,
                "PA{i}"
            );
        }
        for c in CachePolicy::ALL {
            assert_eq!(
                POLICY_FIELD_OF_PAT_INDEX[PAT_INDEX[c as usize] as usize],
                c as u8
            );
        }
    }

    #[test]
    fn pat_bit_moves_between_4k_and_huge_leaves() {
        let f = X86_64::FOUR_LEVEL;
        let wt = Attrs::KERNEL_RW.with_cache(CachePolicy::WriteThrough);
        let pte = f.make_leaf(3, PhysAddr::new(0x2000), wt);
        assert_ne!(pte & PAT_4K, 0);
        assert_eq!(pte & PAT_HUGE, 0);
        let pde = f.make_leaf(2, PhysAddr::new(0x20_0000), wt);
        assert_ne!(pde & PAT_HUGE, 0);
        assert_ne!(pde & PS, 0);
        assert_eq!(f.leaf_addr(2, pde), PhysAddr::new(0x20_0000));
        assert_eq!(f.leaf_attrs(2, pde), wt);
    }

    #[test]
    fn user_page_exec_is_user_exec_only() {
        let f = X86_64::FOUR_LEVEL;
        let a = f.normalize(Attrs::USER_RX | Attrs::KERNEL_EXEC).unwrap();
        assert!(!a.contains(Attrs::KERNEL_EXEC));
        let e = f.make_leaf(3, PhysAddr::new(0x5000), a);
        assert_eq!(e & NX, 0);
        assert_eq!(f.leaf_attrs(3, e), a);
        assert_eq!(f.normalize(Attrs::WRITE), Err(AttrError::NotReadable));
    }

    #[test]
    fn x86_geometry_is_arithmetic() {
        for f in [X86_64::FOUR_LEVEL, X86_64::FIVE_LEVEL] {
            for (level, lv) in f.levels().iter().enumerate() {
                assert_eq!(12 + 9 * f.depth() as u32, f.va_bits());
                assert_eq!(f.shift_of(level), lv.shift, "{f:?} level {level}");
                assert_eq!(f.leaf_size(level), lv.leaf, "{f:?} level {level}");
                assert_eq!(f.leaf_span_mask(level), lv.entry_span() - 1);
                for va in [
                    0u64,
                    0x1ff << lv.shift,
                    0xffff_ffff_ffff_ffff,
                    0x1234_5678_9abc,
                ] {
                    assert_eq!(f.index_of(level, va), lv.index(va), "{f:?} {level} {va:#x}");
                }
            }
        }
    }

    /// The bitwise decode the lookup table replaced (each bit moved on its own).
    fn bitwise_leaf_attrs(f: &X86_64, level: usize, raw: u64) -> Attrs {
        let user = (raw >> 2) & 1;
        let exec = ((raw >> 63) ^ 1) << (3 - user);
        let pat = (raw >> 3) & 0b11 | (((raw & f.pat_bit(level)) != 0) as u64) << 2;
        let cache = POLICY_FIELD_OF_PAT_INDEX[pat as usize] as u64;
        let bits = 1
            | (raw & RW)
            | (user << 4)
            | exec
            | ((raw >> 3) & 0x20)
            | ((raw & (A | D)) << 1)
            | ((raw >> 1) & 0x700)
            | (cache << Attrs::CACHE_SHIFT)
            | (((raw >> PKEY_SHIFT) & 0xf) << Attrs::PKEY_SHIFT);
        Attrs::from_bits_retain(bits as u32)
    }

    #[test]
    fn low_bits_table_matches_bitwise_decode() {
        let f = X86_64::FOUR_LEVEL;
        for level in 1..4 {
            for low in 0..512u64 {
                for high in [
                    0,
                    NX,
                    G | PAT_HUGE,
                    0b101 << SW_SHIFT,
                    0xa << PKEY_SHIFT,
                    NX | G,
                ] {
                    let raw = low | P | high | 0x1234_5000;
                    let raw = if level < 3 { raw | PS } else { raw };
                    assert_eq!(
                        f.leaf_attrs(level, raw),
                        bitwise_leaf_attrs(&f, level, raw),
                        "level {level} raw {raw:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn ps_in_pml4_is_malformed() {
        let f = X86_64::FOUR_LEVEL;
        assert_eq!(f.kind(0, P | PS), EntryKind::Malformed);
        assert_eq!(f.kind(1, P | PS), EntryKind::Leaf);
        assert_eq!(f.kind(3, P | PS), EntryKind::Leaf);
        assert_eq!(f.kind(2, 0), EntryKind::Absent);
    }
}
