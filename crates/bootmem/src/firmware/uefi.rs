//! The UEFI memory map: the raw `EFI_MEMORY_DESCRIPTOR` array `GetMemoryMap()` returns.
//!
//! Descriptors are read with the firmware-given stride (`DescriptorSize`, larger than the 40
//! bytes of version 1 on most firmware, so never index by `size_of`), little-endian, from an
//! unaligned byte slice. Layout (version 1): `u32 Type`, 4 bytes padding, `u64 PhysicalStart`,
//! `u64 VirtualStart`, `u64 NumberOfPages` (4 KiB each), `u64 Attribute`.
//!
//! ## Policy (Linux's `reserve_regions()` / `is_usable_memory()`, drivers/firmware/efi/efi-init.c)
//! * A descriptor is *memory* when it can be mapped cacheable (attribute WB, WT or WC); other
//!   descriptors (MMIO, port space, plain uncached reserved ranges) are skipped.
//! * [`EFI_USE`] says what each type becomes: boot-services, loader and conventional memory is
//!   RAM (when write-back capable; otherwise it stays in the map as no-map); ACPI reclaim
//!   memory is RAM that stays reserved (the tables live there); runtime-services code and data,
//!   ACPI NVS, reserved and PAL code memory is kept as [`RegionFlags::NOMAP`] so that firmware
//!   keeps owning it; unusable, persistent and unaccepted memory is skipped.
//! * `EFI_MEMORY_SP` (special purpose, "soft reserved") RAM is added as
//!   [`RegionFlags::DRIVER_MANAGED`]: present, but never allocated or handed off.
//! * `EFI_MEMORY_MORE_RELIABLE` marks the range [`RegionFlags::MIRROR`] (x86's
//!   `efi_find_mirror`).
//!
//! Memory is added first and the flags and reservations applied in a second pass, so
//! overlapping descriptors resolve the same whatever their order.
//!
//! ## Refused and clipped input
//! [`UefiMemoryMap::new`] refuses the whole map if a descriptor is not page aligned or its
//! end (`PhysicalStart + NumberOfPages * 4 KiB`) does not fit in 64 bits, naming the
//! descriptor. [`ingest`] clips every descriptor at the bootmem's physical address limit
//! ([`Bootmem::set_phys_limit`]) and counts the dropped bytes of memory descriptors in
//! [`UefiSummary::clipped`], for the caller to warn about. The map is applied
//! all-or-nothing: if an edit fails (region lists full and unable to grow), every edit before
//! it is undone.

use core::fmt;

use mmkit_addr::{PhysAddr, PhysRange, PAGE_SIZE};

use crate::bootmem::{raw_range, Bootmem};
use crate::error::RegionError;
use crate::region::{NodeId, RegionFlags};

/// Memory-type numbers from the UEFI specification (`EFI_MEMORY_TYPE`).
pub mod memory_type {
    /// `EfiReservedMemoryType`.
    pub const RESERVED: u32 = 0;
    /// `EfiLoaderCode`.
    pub const LOADER_CODE: u32 = 1;
    /// `EfiLoaderData`.
    pub const LOADER_DATA: u32 = 2;
    /// `EfiBootServicesCode`.
    pub const BOOT_SERVICES_CODE: u32 = 3;
    /// `EfiBootServicesData`.
    pub const BOOT_SERVICES_DATA: u32 = 4;
    /// `EfiRuntimeServicesCode`.
    pub const RUNTIME_SERVICES_CODE: u32 = 5;
    /// `EfiRuntimeServicesData`.
    pub const RUNTIME_SERVICES_DATA: u32 = 6;
    /// `EfiConventionalMemory`.
    pub const CONVENTIONAL: u32 = 7;
    /// `EfiUnusableMemory`.
    pub const UNUSABLE: u32 = 8;
    /// `EfiACPIReclaimMemory`.
    pub const ACPI_RECLAIM: u32 = 9;
    /// `EfiACPIMemoryNVS`.
    pub const ACPI_NVS: u32 = 10;
    /// `EfiMemoryMappedIO`.
    pub const MMIO: u32 = 11;
    /// `EfiMemoryMappedIOPortSpace`.
    pub const MMIO_PORT_SPACE: u32 = 12;
    /// `EfiPalCode`.
    pub const PAL_CODE: u32 = 13;
    /// `EfiPersistentMemory`.
    pub const PERSISTENT: u32 = 14;
    /// `EfiUnacceptedMemoryType`.
    pub const UNACCEPTED: u32 = 15;
}

/// Attribute bits from the UEFI specification.
pub mod attribute {
    /// Write-combining capable.
    pub const WC: u64 = 1 << 1;
    /// Write-through capable.
    pub const WT: u64 = 1 << 2;
    /// Write-back capable.
    pub const WB: u64 = 1 << 3;
    /// `EFI_MEMORY_MORE_RELIABLE`: address-range mirrored.
    pub const MORE_RELIABLE: u64 = 1 << 16;
    /// `EFI_MEMORY_SP`: specific-purpose (soft-reserved) memory.
    pub const SP: u64 = 1 << 18;
    /// `EFI_MEMORY_RUNTIME`: needs a runtime mapping.
    pub const RUNTIME: u64 = 1 << 63;
}

/// The descriptor version this parser understands (`EFI_MEMORY_DESCRIPTOR_VERSION`).
pub const DESCRIPTOR_VERSION: u32 = 1;

/// The bytes of a version-1 descriptor; the firmware's stride may be larger.
pub const DESCRIPTOR_MIN_SIZE: usize = 40;

/// What a memory type becomes in bootmem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfiUse {
    /// RAM (if write-back capable, else kept as no-map).
    Ram,
    /// RAM that stays reserved (ACPI reclaim: the tables live there).
    RamReserved,
    /// Memory the kernel must not map or use: added with [`RegionFlags::NOMAP`].
    NoMap,
    /// Not memory for bootmem.
    Skip,
}

/// Policy per memory type, indexed by type number (after Linux's `is_usable_memory()` and
/// `reserve_regions()`; persistent memory is left to its driver as x86 does). Types past the
/// table (OEM and OS-loader ranges) are [`EfiUse::Skip`].
///
/// ```
/// use mmkit_bootmem::firmware::uefi::{memory_type, EfiUse, EFI_USE};
/// assert_eq!(EFI_USE[memory_type::CONVENTIONAL as usize], EfiUse::Ram);
/// assert_eq!(EFI_USE[memory_type::BOOT_SERVICES_DATA as usize], EfiUse::Ram);
/// assert_eq!(EFI_USE[memory_type::ACPI_RECLAIM as usize], EfiUse::RamReserved);
/// assert_eq!(EFI_USE[memory_type::RUNTIME_SERVICES_DATA as usize], EfiUse::NoMap);
/// assert_eq!(EFI_USE[memory_type::MMIO as usize], EfiUse::Skip);
/// ```
pub const EFI_USE: [EfiUse; 16] = [
    EfiUse::NoMap,       // 0 reserved
    EfiUse::Ram,         // 1 loader code
    EfiUse::Ram,         // 2 loader data
    EfiUse::Ram,         // 3 boot services code
    EfiUse::Ram,         // 4 boot services data
    EfiUse::NoMap,       // 5 runtime services code
    EfiUse::NoMap,       // 6 runtime services data
    EfiUse::Ram,         // 7 conventional
    EfiUse::Skip,        // 8 unusable
    EfiUse::RamReserved, // 9 ACPI reclaim
    EfiUse::NoMap,       // 10 ACPI NVS
    EfiUse::Skip,        // 11 MMIO
    EfiUse::Skip,        // 12 MMIO port space
    EfiUse::NoMap,       // 13 PAL code
    EfiUse::Skip,        // 14 persistent
    EfiUse::Skip,        // 15 unaccepted
];

/// One decoded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfiDescriptor {
    /// The memory type number (see [`memory_type`]).
    pub ty: u32,
    /// The first byte.
    pub phys_start: u64,
    /// The virtual address firmware was told (0 before `SetVirtualAddressMap`).
    pub virt_start: u64,
    /// The size in 4 KiB pages.
    pub pages: u64,
    /// Attribute bits (see [`attribute`]).
    pub attribute: u64,
}

impl EfiDescriptor {
    /// Encode as a version-1 descriptor (for building test maps and firmware emulators; a
    /// firmware stride larger than 40 bytes pads after these bytes).
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_MIN_SIZE] {
        let mut out = [0u8; DESCRIPTOR_MIN_SIZE];
        out[0..4].copy_from_slice(&self.ty.to_le_bytes());
        out[8..16].copy_from_slice(&self.phys_start.to_le_bytes());
        out[16..24].copy_from_slice(&self.virt_start.to_le_bytes());
        out[24..32].copy_from_slice(&self.pages.to_le_bytes());
        out[32..40].copy_from_slice(&self.attribute.to_le_bytes());
        out
    }

    fn read(raw: &[u8]) -> Self {
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut ty = [0u8; 4];
        ty.copy_from_slice(&raw[0..4]);
        Self {
            ty: u32::from_le_bytes(ty),
            phys_start: u64_at(8),
            virt_start: u64_at(16),
            pages: u64_at(24),
            attribute: u64_at(32),
        }
    }

    /// What the policy makes of this descriptor.
    pub fn usage(&self) -> EfiUse {
        let cacheable = self.attribute & (attribute::WB | attribute::WT | attribute::WC) != 0;
        if !cacheable {
            return EfiUse::Skip;
        }
        match EFI_USE
            .get(self.ty as usize)
            .copied()
            .unwrap_or(EfiUse::Skip)
        {
            EfiUse::Ram | EfiUse::RamReserved if self.attribute & attribute::WB == 0 => {
                EfiUse::NoMap
            }
            other => other,
        }
    }

    /// The bytes described, or `None` if they wrap.
    fn span(&self) -> Option<(u64, u64)> {
        let size = self.pages.checked_mul(PAGE_SIZE)?;
        Some((self.phys_start, self.phys_start.checked_add(size)?))
    }
}

/// Why a UEFI memory map was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UefiError {
    /// The descriptor version is not [`DESCRIPTOR_VERSION`].
    UnsupportedVersion(u32),
    /// The descriptor size is below 40 bytes or not a multiple of 8.
    BadDescriptorSize(usize),
    /// The buffer length is not a whole number of descriptors.
    Truncated {
        /// The buffer length.
        len: usize,
        /// The descriptor size.
        desc_size: usize,
    },
    /// Descriptor `index` does not start on a 4 KiB boundary.
    Misaligned {
        /// The descriptor's index.
        index: usize,
    },
    /// Descriptor `index` wraps the address space.
    Wraps {
        /// The descriptor's index.
        index: usize,
    },
    /// A bootmem edit failed; nothing was applied.
    Region {
        /// The range being applied.
        range: PhysRange,
        /// Why it failed.
        error: RegionError,
    },
}

impl fmt::Display for UefiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(v) => write!(f, "descriptor version {v} unsupported"),
            Self::BadDescriptorSize(s) => write!(f, "bad descriptor size {s}"),
            Self::Truncated { len, desc_size } => {
                write!(f, "map of {len} bytes is not a multiple of {desc_size}")
            }
            Self::Misaligned { index } => write!(f, "descriptor {index} is not page aligned"),
            Self::Wraps { index } => write!(f, "descriptor {index} wraps the address space"),
            Self::Region { range, error } => write!(f, "EFI range {range}: {error}"),
        }
    }
}

/// A validated UEFI memory map.
#[derive(Debug, Clone, Copy)]
pub struct UefiMemoryMap<'a> {
    bytes: &'a [u8],
    desc_size: usize,
}

impl<'a> UefiMemoryMap<'a> {
    /// Check the buffer from `GetMemoryMap()` with its `DescriptorSize` and
    /// `DescriptorVersion`: every descriptor must be page aligned and not wrap.
    pub fn new(bytes: &'a [u8], desc_size: usize, desc_version: u32) -> Result<Self, UefiError> {
        if desc_version != DESCRIPTOR_VERSION {
            return Err(UefiError::UnsupportedVersion(desc_version));
        }
        if desc_size < DESCRIPTOR_MIN_SIZE || desc_size % 8 != 0 {
            return Err(UefiError::BadDescriptorSize(desc_size));
        }
        if bytes.len() % desc_size != 0 {
            return Err(UefiError::Truncated {
                len: bytes.len(),
                desc_size,
            });
        }
        let map = Self { bytes, desc_size };
        for (index, d) in map.descriptors().enumerate() {
            if d.phys_start & (PAGE_SIZE - 1) != 0 {
                return Err(UefiError::Misaligned { index });
            }
            if d.span().is_none() {
                return Err(UefiError::Wraps { index });
            }
        }
        Ok(map)
    }

    /// The descriptors, in firmware order.
    pub fn descriptors(&self) -> impl Iterator<Item = EfiDescriptor> + 'a {
        self.bytes
            .chunks_exact(self.desc_size)
            .map(EfiDescriptor::read)
    }

    /// The number of descriptors.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.desc_size
    }

    /// Whether the map has no descriptor.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What [`ingest`] did.
///
/// Byte counts add up entry by entry (overlapping entries count twice) and saturate at
/// `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UefiSummary {
    /// Bytes added as usable RAM (including ACPI reclaim and soft-reserved memory).
    pub ram: u64,
    /// Bytes added as no-map memory.
    pub nomap: u64,
    /// Bytes reserved (ACPI reclaim).
    pub reserved: u64,
    /// Bytes marked driver-managed (`EFI_MEMORY_SP`).
    pub driver_managed: u64,
    /// Bytes marked mirrored.
    pub mirror: u64,
    /// Descriptors skipped.
    pub skipped: usize,
    /// Bytes of memory descriptors dropped because they lie past the physical address limit.
    pub clipped: u64,
}

/// Apply `map` to `bm` per the module policy; memory goes to node 0.
pub fn ingest<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    map: &UefiMemoryMap<'_>,
) -> Result<UefiSummary, UefiError> {
    bm.atomically(|bm| apply(bm, map))
}

fn apply<const N: usize>(
    bm: &mut Bootmem<'_, N>,
    map: &UefiMemoryMap<'_>,
) -> Result<UefiSummary, UefiError> {
    let mut summary = UefiSummary::default();
    let fail = |(base, end): (u64, u64)| {
        move |error| UefiError::Region {
            range: raw_range(base, end),
            error,
        }
    };
    // Pass 1: memory.
    for d in map.descriptors() {
        let Some((base, end)) = d.span().filter(|(b, e)| b < e) else {
            continue;
        };
        let clipped_end = end.min(bm.phys_limit);
        if d.usage() != EfiUse::Skip {
            summary.clipped = summary.clipped.saturating_add(end - clipped_end.max(base));
        }
        let Some((base, end)) = bm.clip_to_phys_limit(base, end) else {
            if d.usage() == EfiUse::Skip {
                summary.skipped += 1;
            }
            continue;
        };
        let pa = PhysAddr::new(base);
        let size = end - base;
        let flags = match d.usage() {
            EfiUse::Skip => {
                summary.skipped += 1;
                continue;
            }
            EfiUse::NoMap => {
                summary.nomap = summary.nomap.saturating_add(size);
                RegionFlags::empty()
            }
            EfiUse::Ram | EfiUse::RamReserved => {
                summary.ram = summary.ram.saturating_add(size);
                RegionFlags::empty()
            }
        };
        bm.add_node(pa, size, NodeId::ZERO, flags)
            .map_err(fail((base, end)))?;
    }
    // Pass 2: flags and reservations, which override whatever pass 1 merged.
    for d in map.descriptors() {
        let Some((base, end)) = d.span().and_then(|(b, e)| bm.clip_to_phys_limit(b, e)) else {
            continue;
        };
        let pa = PhysAddr::new(base);
        let size = end - base;
        let usage = d.usage();
        if usage == EfiUse::Skip {
            continue;
        }
        if usage == EfiUse::NoMap {
            bm.mark(pa, size, RegionFlags::NOMAP)
                .map_err(fail((base, end)))?;
        }
        if usage == EfiUse::RamReserved {
            summary.reserved = summary.reserved.saturating_add(size);
            bm.reserve(pa, size).map_err(fail((base, end)))?;
        }
        if d.attribute & attribute::SP != 0 && usage != EfiUse::NoMap {
            summary.driver_managed = summary.driver_managed.saturating_add(size);
            bm.mark(pa, size, RegionFlags::DRIVER_MANAGED)
                .map_err(fail((base, end)))?;
        }
        if d.attribute & attribute::MORE_RELIABLE != 0 {
            summary.mirror = summary.mirror.saturating_add(size);
            bm.mark(pa, size, RegionFlags::MIRROR)
                .map_err(fail((base, end)))?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::memory_type::*;
    use super::*;
    use crate::{Bootmem, RangeFilter};
    use std::vec::Vec;

    const WB: u64 = attribute::WB | attribute::WT | attribute::WC | 1;

    /// An OVMF-like map with the firmware's 48-byte stride.
    fn ovmf_map(extra: &[EfiDescriptor]) -> Vec<u8> {
        let mut descs = std::vec![
            EfiDescriptor {
                ty: BOOT_SERVICES_CODE,
                phys_start: 0x0,
                virt_start: 0,
                pages: 0xa0,
                attribute: WB
            },
            EfiDescriptor {
                ty: CONVENTIONAL,
                phys_start: 0x10_0000,
                virt_start: 0,
                pages: 0x700,
                attribute: WB
            },
            EfiDescriptor {
                ty: ACPI_NVS,
                phys_start: 0x80_0000,
                virt_start: 0,
                pages: 0x8,
                attribute: WB
            },
            EfiDescriptor {
                ty: LOADER_CODE,
                phys_start: 0x80_8000,
                virt_start: 0,
                pages: 0x7f8,
                attribute: WB
            },
            EfiDescriptor {
                ty: ACPI_RECLAIM,
                phys_start: 0x100_0000,
                virt_start: 0,
                pages: 0x10,
                attribute: WB
            },
            EfiDescriptor {
                ty: RUNTIME_SERVICES_DATA,
                phys_start: 0x101_0000,
                virt_start: 0,
                pages: 0x10,
                attribute: WB | attribute::RUNTIME
            },
            EfiDescriptor {
                ty: CONVENTIONAL,
                phys_start: 0x102_0000,
                virt_start: 0,
                pages: 0x3efe0,
                attribute: WB
            },
            EfiDescriptor {
                ty: MMIO,
                phys_start: 0xffc0_0000,
                virt_start: 0,
                pages: 0x400,
                attribute: 1 | attribute::RUNTIME
            },
        ];
        descs.extend_from_slice(extra);
        let mut bytes = std::vec![0u8; descs.len() * 48];
        for (d, chunk) in descs.iter().zip(bytes.chunks_exact_mut(48)) {
            chunk[..40].copy_from_slice(&d.to_bytes());
            chunk[40..48].fill(0xaa); // firmware padding is ignored
        }
        bytes
    }

    #[test]
    fn map_rejects_bad_version_size_and_truncation() {
        let bytes = ovmf_map(&[]);
        assert_eq!(
            UefiMemoryMap::new(&bytes, 48, 2).unwrap_err(),
            UefiError::UnsupportedVersion(2)
        );
        assert_eq!(
            UefiMemoryMap::new(&bytes, 36, 1).unwrap_err(),
            UefiError::BadDescriptorSize(36)
        );
        assert!(matches!(
            UefiMemoryMap::new(&bytes[..bytes.len() - 8], 48, 1),
            Err(UefiError::Truncated { .. })
        ));
        let wrapping = ovmf_map(&[EfiDescriptor {
            ty: CONVENTIONAL,
            phys_start: 0xffff_ffff_ffff_0000,
            virt_start: 0,
            pages: 0x100,
            attribute: WB,
        }]);
        assert_eq!(
            UefiMemoryMap::new(&wrapping, 48, 1).unwrap_err(),
            UefiError::Wraps { index: 8 }
        );
    }

    #[test]
    fn ingest_follows_linux_policy() {
        let bytes = ovmf_map(&[
            EfiDescriptor {
                ty: CONVENTIONAL,
                phys_start: 0x1_0000_0000,
                virt_start: 0,
                pages: 0x1_0000,
                attribute: WB | attribute::MORE_RELIABLE,
            },
            EfiDescriptor {
                ty: CONVENTIONAL,
                phys_start: 0x2_0000_0000,
                virt_start: 0,
                pages: 0x1_0000,
                attribute: WB | attribute::SP,
            },
            EfiDescriptor {
                ty: PERSISTENT,
                phys_start: 0x3_0000_0000,
                virt_start: 0,
                pages: 0x1_0000,
                attribute: WB,
            },
        ]);
        let map = UefiMemoryMap::new(&bytes, 48, 1).unwrap();
        assert_eq!(map.len(), 11);
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &map).unwrap();
        bm.verify().unwrap();
        let regions: Vec<_> = bm
            .memory_regions()
            .iter()
            .map(|r| (r.base().as_u64(), r.end().as_u64(), r.flags()))
            .collect();
        assert_eq!(
            regions,
            [
                (0x0, 0xa_0000, RegionFlags::empty()),
                (0x10_0000, 0x80_0000, RegionFlags::empty()),
                (0x80_0000, 0x80_8000, RegionFlags::NOMAP),
                (0x80_8000, 0x101_0000, RegionFlags::empty()),
                (0x101_0000, 0x102_0000, RegionFlags::NOMAP),
                (0x102_0000, 0x4000_0000, RegionFlags::empty()),
                (0x1_0000_0000, 0x1_1000_0000, RegionFlags::MIRROR),
                (0x2_0000_0000, 0x2_1000_0000, RegionFlags::DRIVER_MANAGED),
            ]
        );
        // ACPI reclaim is memory but reserved.
        assert_eq!(
            bm.reserved_regions()[0].range().as_raw(),
            0x100_0000..0x101_0000
        );
        assert_eq!(s.reserved, 0x1_0000);
        assert_eq!(s.nomap, 0x1_8000);
        assert_eq!(s.skipped, 2);
        // Driver-managed and no-map memory is never free.
        assert!(bm
            .free_ranges(RangeFilter::ALLOCATABLE)
            .all(|fr| fr.flags & RegionFlags::NOT_ALLOCATABLE == RegionFlags::empty()));
    }

    #[test]
    fn uefi_descriptor_past_phys_limit_is_clipped() {
        let bytes = ovmf_map(&[EfiDescriptor {
            ty: CONVENTIONAL,
            phys_start: 1 << 60,
            virt_start: 0,
            pages: 1 << 40,
            attribute: WB,
        }]);
        let map = UefiMemoryMap::new(&bytes, 48, 1).unwrap();
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &map).unwrap();
        bm.verify().unwrap();
        assert_eq!(s.clipped, (1u64 << 40) * PAGE_SIZE);
        assert_eq!(bm.end_of_memory(), Some(PhysAddr::new(0x4000_0000)));
        assert!(bm.alloc(0x1000, 0x1000).unwrap().as_u64() < 0x4000_0000);
    }

    #[test]
    fn uefi_huge_overlapping_descriptors_saturate_the_summary() {
        let huge = EfiDescriptor {
            ty: CONVENTIONAL,
            phys_start: 0,
            virt_start: 0,
            pages: (u64::MAX >> 12) - 1,
            attribute: WB,
        };
        let bytes: Vec<u8> = [huge; 3].iter().flat_map(|d| d.to_bytes()).collect();
        let map = UefiMemoryMap::new(&bytes, 40, 1).unwrap();
        let mut bm: Bootmem = Bootmem::new();
        let s = ingest(&mut bm, &map).unwrap();
        assert_eq!(s.clipped, u64::MAX);
        assert_eq!(s.ram, 3 * crate::DEFAULT_PHYS_LIMIT);
        assert_eq!(
            bm.end_of_memory(),
            Some(PhysAddr::new(crate::DEFAULT_PHYS_LIMIT))
        );
    }

    #[test]
    fn uefi_failed_map_changes_nothing() {
        // Conventional descriptors with holes between them: more regions than the lists
        // hold, and no mapper to grow with.
        let descs: Vec<EfiDescriptor> = (1..20u64)
            .map(|i| EfiDescriptor {
                ty: CONVENTIONAL,
                phys_start: i << 24,
                virt_start: 0,
                pages: 1,
                attribute: WB | attribute::MORE_RELIABLE,
            })
            .collect();
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        let map = UefiMemoryMap::new(&bytes, 40, 1).unwrap();
        let mut bm: Bootmem<'_, 8> = Bootmem::new();
        bm.add(PhysAddr::new(0x10_0000), 0x1000).unwrap();
        bm.mark(PhysAddr::new(0x10_0000), 0x1000, RegionFlags::HOTPLUG)
            .unwrap();
        let before = (bm.memory_regions().to_vec(), bm.reserved_regions().to_vec());
        assert!(matches!(
            ingest(&mut bm, &map),
            Err(UefiError::Region {
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
    fn ram_without_write_back_is_kept_as_nomap() {
        let d = EfiDescriptor {
            ty: CONVENTIONAL,
            phys_start: 0x1000,
            virt_start: 0,
            pages: 1,
            attribute: attribute::WT,
        };
        assert_eq!(d.usage(), EfiUse::NoMap);
        let uncached = EfiDescriptor { attribute: 1, ..d };
        assert_eq!(uncached.usage(), EfiUse::Skip);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Garbage descriptors are rejected or ingested, never a panic, and bootmem stays
        /// consistent either way.
        #[test]
        fn arbitrary_descriptor_bytes_never_panic(
            descs in proptest::collection::vec(
                (0u32..20, 0u64..0x100, 0u64..0x40, proptest::prelude::any::<u64>()), 0..16),
            misalign in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            for &(ty, page, pages, attribute) in &descs {
                let d = EfiDescriptor {
                    ty,
                    phys_start: page * PAGE_SIZE + u64::from(misalign && page == 7),
                    virt_start: 0,
                    pages,
                    attribute,
                };
                bytes.extend_from_slice(&d.to_bytes());
                bytes.extend_from_slice(&[0u8; 8]);
            }
            if let Ok(map) = UefiMemoryMap::new(&bytes, 48, 1) {
                let mut bm: Bootmem = Bootmem::new();
                let _ = ingest(&mut bm, &map);
                proptest::prop_assert!(bm.verify().is_ok());
                proptest::prop_assert!(bm
                    .free_ranges(RangeFilter::ALLOCATABLE)
                    .all(|f| !f.flags.intersects(RegionFlags::NOT_ALLOCATABLE)));
            }
        }
    }
}
