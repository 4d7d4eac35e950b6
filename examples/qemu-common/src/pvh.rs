//! The x86 PVH boot ABI, as QEMU implements it for `-kernel` with an ELF carrying a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note.
//!
//! QEMU enters the kernel in 32-bit protected mode with paging off and `%ebx` holding the
//! physical address of a [`HvmStartInfo`] (Xen's `struct hvm_start_info`,
//! `xen/include/public/arch-x86/hvm/start_info.h`). From version 1 on, it points at an array
//! of [`HvmMemmapEntry`] (`struct hvm_memmap_table_entry`): the e820 map of the machine.
//!
//! The layouts are fixed by the ABI; the `const` assertions below pin their sizes.

use core::fmt;
use core::mem::size_of;

use crate::memmap::{AddRegionError, MemoryMap, RegionKind};

/// `hvm_start_info.magic`: "xEn3" with the top bit of every byte set.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// The ELF note type QEMU looks for: `XEN_ELFNOTE_PHYS32_ENTRY`, the 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// `struct hvm_start_info` (version 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC`].
    pub magic: u32,
    /// ABI version; the memory map fields exist from version 1.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules (initrds) in the module list.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP, or 0.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version >= 1).
    pub memmap_paddr: u64,
    /// Number of memory-map entries (version >= 1).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`: one e820-style entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    /// Start of the range.
    pub addr: u64,
    /// Size of the range in bytes.
    pub size: u64,
    /// e820 type (`XEN_HVM_MEMMAP_TYPE_*`, the same numbers as e820).
    pub entry_type: u32,
    /// Must be zero.
    pub reserved: u32,
}

const _: () = assert!(size_of::<HvmStartInfo>() == 56);
const _: () = assert!(size_of::<HvmMemmapEntry>() == 24);

/// Why the start info cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvhError {
    /// `magic` is not [`HVM_START_MAGIC`]: `%ebx` did not point at a start info.
    BadMagic(u32),
    /// Version 0 has no memory map.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// The memory map is empty or its address is zero.
    EmptyMemoryMap,
    /// An entry could not be added to the map.
    Entry {
        /// Index of the entry.
        index: usize,
        /// Why.
        error: AddRegionError,
    },
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => {
                write!(f, "start info magic {m:#x}, expected {HVM_START_MAGIC:#x}")
            }
            Self::NoMemoryMap { version } => {
                write!(f, "start info version {version} has no memory map")
            }
            Self::EmptyMemoryMap => f.write_str("start info memory map is empty"),
            Self::Entry { index, error } => write!(f, "memory map entry {index}: {error}"),
        }
    }
}

impl HvmStartInfo {
    /// Check the magic and that a memory map is present; returns the number of entries.
    pub fn memmap_len(&self) -> Result<usize, PvhError> {
        if self.magic != HVM_START_MAGIC {
            return Err(PvhError::BadMagic(self.magic));
        }
        if self.version < 1 {
            return Err(PvhError::NoMemoryMap {
                version: self.version,
            });
        }
        if self.memmap_entries == 0 || self.memmap_paddr == 0 {
            return Err(PvhError::EmptyMemoryMap);
        }
        Ok(self.memmap_entries as usize)
    }
}

/// Add every entry of a PVH memory map to `map` (unsorted, as given). Zero-sized entries are
/// skipped, as Linux's e820 sanitizer drops them. On error, entries before the failing one
/// stay in `map`.
pub fn read_memmap(entries: &[HvmMemmapEntry], map: &mut MemoryMap) -> Result<(), PvhError> {
    for (index, e) in entries.iter().enumerate() {
        if e.size == 0 {
            continue;
        }
        map.add(e.addr, e.size, RegionKind::from_e820(e.entry_type))
            .map_err(|error| PvhError::Entry { index, error })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u32, entries: u32) -> HvmStartInfo {
        HvmStartInfo {
            magic: HVM_START_MAGIC,
            version,
            memmap_paddr: 0x1000,
            memmap_entries: entries,
            ..Default::default()
        }
    }

    #[test]
    fn memmap_len_accepts_version_one_with_entries() {
        assert_eq!(info(1, 5).memmap_len(), Ok(5));
    }

    #[test]
    fn memmap_len_rejects_bad_magic_old_version_and_empty_map() {
        let mut bad = info(1, 5);
        bad.magic = 0x1bad_b002;
        assert_eq!(bad.memmap_len(), Err(PvhError::BadMagic(0x1bad_b002)));
        assert_eq!(
            info(0, 5).memmap_len(),
            Err(PvhError::NoMemoryMap { version: 0 })
        );
        assert_eq!(info(1, 0).memmap_len(), Err(PvhError::EmptyMemoryMap));
        let mut no_addr = info(1, 3);
        no_addr.memmap_paddr = 0;
        assert_eq!(no_addr.memmap_len(), Err(PvhError::EmptyMemoryMap));
    }

    #[test]
    fn read_memmap_translates_e820_types_and_skips_empty_entries() {
        let entries = [
            HvmMemmapEntry {
                addr: 0,
                size: 0x9fc00,
                entry_type: 1,
                reserved: 0,
            },
            HvmMemmapEntry {
                addr: 0x9fc00,
                size: 0,
                entry_type: 2,
                reserved: 0,
            },
            HvmMemmapEntry {
                addr: 0xe0000,
                size: 0x20000,
                entry_type: 3,
                reserved: 0,
            },
        ];
        let mut map = MemoryMap::new();
        read_memmap(&entries, &mut map).unwrap();
        let kinds: Vec<_> = map.regions().iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [RegionKind::Ram, RegionKind::AcpiReclaimable]);
        assert_eq!(map.total(RegionKind::Ram), 0x9fc00);
    }

    #[test]
    fn read_memmap_reports_the_failing_entry() {
        let entries = [HvmMemmapEntry {
            addr: u64::MAX - 0xfff,
            size: 0x2000,
            entry_type: 1,
            reserved: 0,
        }];
        let mut map = MemoryMap::new();
        assert!(matches!(
            read_memmap(&entries, &mut map),
            Err(PvhError::Entry { index: 0, .. })
        ));
        assert!(map.is_empty());
    }
}
