//! The x86 e820 map: `(addr, size, type)` entries from BIOS `int 0x15, eax=0xe820`.
//!
//! ## Sanitizing (Linux's `e820__update_table`)
//! Firmware entries may be unsorted, overlapping and fragmented. [`sanitized`] turns them into
//! sorted, non-overlapping, merged runs where, wherever entries overlap, the entry with the
//! **highest type number wins** — so any reserved kind beats RAM (type 1), and a range that
//! one entry calls RAM and another reserved is not RAM. It needs no heap: each step scans the
//! entries for the next boundary, O(entries²) overall, a few thousand steps for real maps.
//!
//! ## What goes into bootmem (Linux's `e820__memblock_setup`)
//! [`E820Type::Ram`] and [`E820Type::ReservedKern`] runs are added as memory on node 0;
//! [`E820Type::SoftReserved`] runs are reserved (they belong to drivers); every other type is
//! not memory for bootmem (ACPI tables and NVS, persistent memory, unusable ranges, holes) and
//! is only counted in the returned [`E820Summary`].
//!
//! ## Refused and clipped input
//! An entry whose end does not fit in 64 bits (`addr + size` wraps) makes the whole map an
//! error ([`E820Error::Wraps`] names it), as Linux refuses such a table. Runs are clipped at
//! the bootmem's physical address limit ([`Bootmem::set_phys_limit`]): bytes past it are not
//! memory the CPU can reach, so they are dropped and counted in [`E820Summary::clipped`] for
//! the caller to warn about (Linux trims memblock the same way). A map is applied
//! all-or-nothing: if an edit fails (region lists full and unable to grow), every edit before
//! it is undone.

use core::fmt;

use mmkit_addr::{PhysAddr, PhysRange};

use crate::bootmem::{raw_range, Bootmem};
use crate::error::RegionError;

/// An e820 entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum E820Type {
    /// 1: usable RAM.
    Ram,
    /// 2: reserved by firmware.
    Reserved,
    /// 3: ACPI tables, reclaimable after they are parsed.
    Acpi,
    /// 4: ACPI non-volatile storage.
    Nvs,
    /// 5: memory with errors.
    Unusable,
    /// 7: persistent memory (NVDIMM).
    Pmem,
    /// 12: legacy persistent memory.
    Pram,
    /// 128: reserved by the kernel itself (Linux-internal).
    ReservedKern,
    /// 0xefffffff: soft-reserved (EFI special-purpose) memory.
    SoftReserved,
    /// Any other value.
    Other(u32),
}

impl E820Type {
    /// The type for a raw value.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            4 => Self::Nvs,
            5 => Self::Unusable,
            7 => Self::Pmem,
            12 => Self::Pram,
            128 => Self::ReservedKern,
            0xefff_ffff => Self::SoftReserved,
            other => Self::Other(other),
        }
    }

    /// The raw value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Ram => 1,
            Self::Reserved => 2,
            Self::Acpi => 3,
            Self::Nvs => 4,
            Self::Unusable => 5,
            Self::Pmem => 7,
            Self::Pram => 12,
            Self::ReservedKern => 128,
            Self::SoftReserved => 0xefff_ffff,
            Self::Other(raw) => raw,
        }
    }

    /// The name Linux prints in its boot log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ram => "usable",
            Self::Reserved => "reserved",
            Self::Acpi => "ACPI data",
            Self::Nvs => "ACPI NVS",
            Self::Unusable => "unusable",
            Self::Pmem | Self::Pram => "persistent (type 7/12)",
            Self::ReservedKern => "reserved (kernel)",
            Self::SoftReserved => "soft reserved",
            Self::Other(_) => "type unknown",
        }
    }
}

/// One raw entry, as in Linux's `struct boot_e820_entry` (packed: 20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// The first byte.
    pub addr: u64,
    /// The size in bytes.
    pub size: u64,
    /// The raw type value.
    pub kind: u32,
}

impl E820Entry {
    /// The size of a packed entry in a boot-parameters table.
    pub const RAW_SIZE: usize = 20;

    /// An entry of a known type.
    pub const fn new(addr: u64, size: u64, kind: E820Type) -> Self {
        Self {
            addr,
            size,
            kind: kind.raw(),
        }
    }

    /// Decode a packed little-endian entry.
    pub fn from_bytes(raw: &[u8; Self::RAW_SIZE]) -> Self {
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&raw[16..20]);
        Self {
            addr: u64_at(0),
            size: u64_at(8),
            kind: u32::from_le_bytes(kind),
        }
    }

    /// The entry type.
    pub const fn kind(&self) -> E820Type {
        E820Type::from_raw(self.kind)
    }

    /// Raw `[addr, addr + size)`, or `None` for zero-sized or wrapping entries.
    fn span(&self) -> Option<(u64, u64)> {
        let end = self.addr.checked_add(self.size)?;
        (self.size != 0).then_some((self.addr, end))
    }
}

/// Why an e820 map could not be ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Error {
    /// Entry `index` wraps the address space (Linux rejects such a table whole).
    Wraps {
        /// The entry's index.
        index: usize,
    },
    /// Adding or reserving a run failed; nothing was applied.
    Region {
        /// The run that failed.
        range: PhysRange,
        /// Why.
        error: RegionError,
    },
}

impl fmt::Display for E820Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wraps { index } => write!(f, "e820 entry {index} wraps the address space"),
            Self::Region { range, error } => write!(f, "e820 run {range}: {error}"),
        }
    }
}

/// One sanitized run: sorted, non-overlapping, merged with neighbours of the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Run {
    /// The bytes of the run.
    pub range: PhysRange,
    /// The winning type.
    pub kind: E820Type,
}

/// Iterator over sanitized runs; see [`sanitized`].
#[derive(Debug, Clone)]
pub struct Sanitized<'a> {
    entries: &'a [E820Entry],
    pos: Option<u64>,
}

/// The sanitized view of `entries` (see the module docs). Zero-sized and wrapping entries are
/// ignored here; [`ingest`] rejects wrapping ones.
pub fn sanitized(entries: &[E820Entry]) -> Sanitized<'_> {
    let pos = entries
        .iter()
        .filter_map(E820Entry::span)
        .map(|(s, _)| s)
        .min();
    Sanitized { entries, pos }
}

impl Sanitized<'_> {
    /// The smallest entry start or end above `after`.
    fn next_boundary(&self, after: u64) -> Option<u64> {
        self.entries
            .iter()
            .filter_map(E820Entry::span)
            .flat_map(|(s, e)| [s, e])
            .filter(|&b| b > after)
            .min()
    }

    /// The winning raw type at `addr` (0: no entry covers it).
    fn type_at(&self, addr: u64) -> u32 {
        self.entries
            .iter()
            .filter(|e| matches!(e.span(), Some((s, end)) if s <= addr && addr < end))
            .map(|e| e.kind)
            .max()
            .unwrap_or(0)
    }
}

impl Iterator for Sanitized<'_> {
    type Item = E820Run;

    fn next(&mut self) -> Option<E820Run> {
        let mut pos = self.pos?;
        loop {
            let kind = self.type_at(pos);
            let Some(mut end) = self.next_boundary(pos) else {
                self.pos = None;
                return None;
            };
            if kind == 0 {
                pos = end;
                continue;
            }
            while self.type_at(end) == kind {
                match self.next_boundary(end) {
                    Some(b) => end = b,
                    None => break,
                }
            }
            self.pos = Some(end);
            return Some(E820Run {
                range: raw_range(pos, end),
                kind: E820Type::from_raw(kind),
            });
        }
    }
}

/// What [`ingest`] did.
///
/// Byte counts are over sanitized (non-overlapping) runs, so they cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct E820Summary {
    /// Bytes added as memory.
    pub ram: u64,
    /// Bytes reserved (soft-reserved runs).
    pub reserved: u64,
    /// Bytes of every other type (not memory for bootmem).
    pub other: u64,
    /// Sanitized runs seen.
    pub runs: usize,
    /// Bytes of RAM and soft-reserved runs dropped because they lie past the physical
    /// address limit.
    pub clipped: u64,
}

/// Sanitize `entries` and apply them to `bm` (see the module docs).
pub fn ingest<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    entries: &[E820Entry],
) -> Result<E820Summary, E820Error> {
    if let Some(index) = entries
        .iter()
        .position(|e| e.addr.checked_add(e.size).is_none())
    {
        return Err(E820Error::Wraps { index });
    }
    bm.atomically(|bm| apply(bm, entries))
}

fn apply<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    entries: &[E820Entry],
) -> Result<E820Summary, E820Error> {
    let mut summary = E820Summary::default();
    for run in sanitized(entries) {
        summary.runs += 1;
        let (start, end) = (run.range.start().as_u64(), run.range.end().as_u64());
        let is_memory = matches!(
            run.kind,
            E820Type::Ram | E820Type::ReservedKern | E820Type::SoftReserved
        );
        if !is_memory {
            summary.other = summary.other.saturating_add(end - start);
            continue;
        }
        let Some((base, clipped_end)) = bm.clip_to_phys_limit(start, end) else {
            summary.clipped = summary.clipped.saturating_add(end - start);
            continue;
        };
        summary.clipped = summary.clipped.saturating_add(end - clipped_end);
        let size = clipped_end - base;
        let applied = if run.kind == E820Type::SoftReserved {
            summary.reserved = summary.reserved.saturating_add(size);
            bm.reserve(PhysAddr::new(base), size)
        } else {
            summary.ram = summary.ram.saturating_add(size);
            bm.add(PhysAddr::new(base), size)
        };
        applied.map_err(|error| E820Error::Region {
            range: raw_range(base, clipped_end),
            error,
        })?;
    }
    Ok(summary)
}
/// Decode a packed table of `count` entries (e.g. `boot_params.e820_table`) into `out`,
/// returning the filled prefix; extra entries beyond `out`'s length are dropped.
pub fn decode_packed<'o>(raw: &[u8], out: &'o mut [E820Entry]) -> &'o [E820Entry] {
    let mut n = 0;
    for (chunk, slot) in raw.chunks_exact(E820Entry::RAW_SIZE).zip(out.iter_mut()) {
        let mut bytes = [0u8; E820Entry::RAW_SIZE];
        bytes.copy_from_slice(chunk);
        *slot = E820Entry::from_bytes(&bytes);
        n += 1;
    }
    &out[..n]
}

/// Format one run like Linux's boot log: `[mem 0x...-0x...] usable`.
impl fmt::Display for E820Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[mem {:#018x}-{:#018x}] {}",
            self.range.start().as_u64(),
            self.range.end().as_u64() - 1,
            self.kind.name()
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Bootmem;
    use std::vec::Vec;

    fn runs(entries: &[E820Entry]) -> Vec<(u64, u64, E820Type)> {
        sanitized(entries)
            .map(|r| (r.range.start().as_u64(), r.range.end().as_u64(), r.kind))
            .collect()
    }

    #[test]
    fn sanitize_sorts_and_merges_same_type() {
        let map = [
            E820Entry::new(0x10_0000, 0x10_0000, E820Type::Ram),
            E820Entry::new(0x0, 0x9_f000, E820Type::Ram),
            E820Entry::new(0x20_0000, 0x10_0000, E820Type::Ram),
        ];
        assert_eq!(
            runs(&map),
            [
                (0x0, 0x9_f000, E820Type::Ram),
                (0x10_0000, 0x30_0000, E820Type::Ram)
            ]
        );
    }

    #[test]
    fn sanitize_worse_type_wins_on_overlap() {
        let map = [
            E820Entry::new(0x0, 0x100_0000, E820Type::Ram),
            E820Entry::new(0x80_0000, 0x10_0000, E820Type::Reserved),
            E820Entry::new(0xc0_0000, 0x80_0000, E820Type::Acpi),
        ];
        assert_eq!(
            runs(&map),
            [
                (0x0, 0x80_0000, E820Type::Ram),
                (0x80_0000, 0x90_0000, E820Type::Reserved),
                (0x90_0000, 0xc0_0000, E820Type::Ram),
                (0xc0_0000, 0x140_0000, E820Type::Acpi),
            ]
        );
    }

    #[test]
    fn ingest_adds_ram_only_and_reserves_soft_reserved() {
        let map = [
            E820Entry::new(0x0, 0x9_fc00, E820Type::Ram),
            E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved),
            E820Entry::new(0xf_0000, 0x1_0000, E820Type::Reserved),
            E820Entry::new(0x10_0000, 0x7fe0_0000, E820Type::Ram),
            E820Entry::new(0x7ff0_0000, 0x10_0000, E820Type::Acpi),
            E820Entry::new(0x1_0000_0000, 0x1000_0000, E820Type::SoftReserved),
            E820Entry::new(0x2_0000_0000, 0x1000_0000, E820Type::Pmem),
        ];
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &map).unwrap();
        bm.verify().unwrap();
        let mem: Vec<_> = bm
            .memory_regions()
            .iter()
            .map(|r| r.range().as_raw())
            .collect();
        assert_eq!(mem, [0x0..0x9_fc00, 0x10_0000..0x7ff0_0000]);
        assert_eq!(bm.reserved_regions().len(), 1);
        assert_eq!(s.ram, 0x9_fc00 + 0x7fe0_0000);
        assert_eq!(s.reserved, 0x1000_0000);
        assert_eq!(s.runs, 7);
    }

    #[test]
    fn ingest_rejects_wrapping_entry_and_changes_nothing() {
        let map = [
            E820Entry::new(0x0, 0x9_fc00, E820Type::Ram),
            E820Entry::new(u64::MAX - 0xfff, 0x2000, E820Type::Ram),
        ];
        let mut bm: Bootmem = Bootmem::new();
        assert_eq!(ingest(&mut bm, &map), Err(E820Error::Wraps { index: 1 }));
        assert!(bm.memory_regions().is_empty());
    }

    #[test]
    fn e820_entry_past_phys_limit_is_clipped() {
        const MIB: u64 = 1 << 20;
        let map = [
            E820Entry::new(0x0, 0x9_fc00, E820Type::Ram),
            E820Entry::new(64 * MIB, u64::MAX - 64 * MIB, E820Type::Ram),
            E820Entry::new(1 << 60, 1 << 40, E820Type::Ram),
            E820Entry::new(1 << 61, 1 << 40, E820Type::SoftReserved),
        ];
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &map).unwrap();
        bm.verify().unwrap();
        let mem: Vec<_> = bm
            .memory_regions()
            .iter()
            .map(|r| r.range().as_raw())
            .collect();
        assert_eq!(mem, [0x0..0x9_fc00, 64 * MIB..crate::DEFAULT_PHYS_LIMIT]);
        assert!(bm.reserved_regions().is_empty());
        // The later entries lie inside the huge one: everything from the limit up is gone.
        assert_eq!(s.clipped, u64::MAX - crate::DEFAULT_PHYS_LIMIT);
        // The next allocation comes from memory the CPU can address.
        assert!(bm.alloc(0x1000, 0x1000).unwrap().as_u64() < crate::DEFAULT_PHYS_LIMIT);

        // A lower limit (what the machine really has) keeps only the real memory.
        let mut bm: Bootmem = Bootmem::new();
        bm.set_phys_limit(PhysAddr::new(1 << 32));
        ingest(&mut bm, &map).unwrap();
        assert_eq!(bm.end_of_memory(), Some(PhysAddr::new(1 << 32)));
        assert_eq!(
            bm.alloc(0x1000, 0x1000).unwrap().as_u64(),
            (1 << 32) - 0x1000
        );
    }

    #[test]
    fn e820_refused_or_failed_map_changes_nothing() {
        let mut bm: Bootmem<'_, 8> = Bootmem::new();
        bm.add(PhysAddr::new(0x10_0000), 0x1000).unwrap();
        bm.reserve(PhysAddr::new(0x10_0000), 0x100).unwrap();
        let before = (bm.memory_regions().to_vec(), bm.reserved_regions().to_vec());
        // Wrapping entry anywhere in the map: refused before anything is applied.
        let wrapping = [
            E820Entry::new(0x100_0000, 0x1000, E820Type::Ram),
            E820Entry::new(u64::MAX, 1, E820Type::Ram),
        ];
        assert_eq!(
            ingest(&mut bm, &wrapping),
            Err(E820Error::Wraps { index: 1 })
        );
        // More runs than the lists hold, no mapper to grow: the runs already added are undone.
        let many: Vec<_> = (1..20u64)
            .map(|i| E820Entry::new(i << 24, 0x1000, E820Type::Ram))
            .collect();
        assert!(matches!(
            ingest(&mut bm, &many),
            Err(E820Error::Region {
                error: RegionError::RegionsFull { .. },
                ..
            })
        ));
        bm.verify().unwrap();
        assert_eq!(
            (bm.memory_regions().to_vec(), bm.reserved_regions().to_vec()),
            before
        );
    }

    #[test]
    fn packed_entries_decode_little_endian() {
        let mut raw = [0u8; 40];
        raw[0..8].copy_from_slice(&0x1000u64.to_le_bytes());
        raw[8..16].copy_from_slice(&0x2000u64.to_le_bytes());
        raw[16..20].copy_from_slice(&1u32.to_le_bytes());
        raw[20..28].copy_from_slice(&0x9_fc00u64.to_le_bytes());
        raw[28..36].copy_from_slice(&0x400u64.to_le_bytes());
        raw[36..40].copy_from_slice(&2u32.to_le_bytes());
        let mut out = [E820Entry::new(0, 0, E820Type::Ram); 8];
        let got = decode_packed(&raw, &mut out);
        assert_eq!(
            got,
            [
                E820Entry::new(0x1000, 0x2000, E820Type::Ram),
                E820Entry::new(0x9_fc00, 0x400, E820Type::Reserved)
            ]
        );
    }

    #[test]
    fn run_display_matches_linux_boot_log() {
        let run = E820Run {
            range: raw_range(0x9_fc00, 0xa_0000),
            kind: E820Type::Reserved,
        };
        assert_eq!(
            std::format!("{run}"),
            "[mem 0x000000000009fc00-0x000000000009ffff] reserved"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Sanitizing equals a byte-by-byte "highest type wins" scan of a small space.
        #[test]
        fn sanitize_matches_bytewise_highest_type(
            raw in proptest::collection::vec((0u64..64, 0u64..24, 1u32..8), 0..12)
        ) {
            let entries: Vec<_> = raw
                .iter()
                .map(|&(addr, size, kind)| E820Entry { addr, size, kind })
                .collect();
            let mut best = [0u32; 96];
            for e in &entries {
                for b in e.addr..e.addr + e.size {
                    best[b as usize] = best[b as usize].max(e.kind);
                }
            }
            let mut want: Vec<(u64, u64, u32)> = Vec::new();
            for (b, &k) in best.iter().enumerate() {
                if k == 0 {
                    continue;
                }
                match want.last_mut() {
                    Some(last) if last.1 == b as u64 && last.2 == k => last.1 += 1,
                    _ => want.push((b as u64, b as u64 + 1, k)),
                }
            }
            let got: Vec<_> = sanitized(&entries)
                .map(|r| (r.range.start().as_u64(), r.range.end().as_u64(), r.kind.raw()))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
