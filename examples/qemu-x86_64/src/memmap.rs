//! The firmware memory map and the kernel's own footprint.
//!
//! [`read_boot_info`] copies what the kernel needs out of QEMU's `hvm_start_info` (see
//! [`mmkit_qemu_common::pvh`]): the e820 map as a sorted [`MemoryMap`], the command line, and
//! the physical ranges of the boot data itself so later allocation can keep clear of them.
//! [`kernel_image`] is the loaded image, from the linker script's symbols.

use mmkit_addr::{PhysAddr, PhysRange};
use mmkit_qemu_common::acpi::{self, AcpiError, MadtCpus};
use mmkit_qemu_common::memmap::MemoryMap;
use mmkit_qemu_common::pvh::{self, HvmMemmapEntry, HvmStartInfo, PvhError};

use crate::platform::IDENTITY_LIMIT;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range of the loaded kernel image, `.bss` (stack, page tables) included.
pub fn kernel_image() -> PhysRange {
    let start = core::ptr::addr_of!(__kernel_start) as u64;
    let end = core::ptr::addr_of!(__kernel_end) as u64;
    // The linker script puts `__kernel_end` after `__kernel_start`; the kernel runs
    // identity-mapped, so these virtual addresses are physical ones.
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap_or(PhysRange::EMPTY)
}

/// Longest command line read (QEMU's PVH loader has no limit; Linux's x86 one is 2048).
const CMDLINE_MAX: usize = 2048;

/// What the kernel keeps from the start info.
pub struct BootInfo {
    /// The e820 map, sorted.
    pub map: MemoryMap,
    /// `-append` text ("" when absent or not UTF-8).
    pub cmdline: &'static str,
    /// Where the start info, its memory map and the command line are: memory to leave alone.
    pub boot_data: [PhysRange; 3],
    /// The raw PVH memory map, for mmkit-bootmem's own e820 ingestion.
    pub firmware_table: &'static [HvmMemmapEntry],
    /// The CPUs (APIC ids) of the ACPI MADT, read before any check writes memory.
    pub cpus: Result<MadtCpus, AcpiError>,
}

/// Why the start info could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// The start info is malformed.
    Pvh(PvhError),
    /// A pointer in it lies outside the identity map, where the kernel cannot read.
    Unreachable(u64),
    /// The memory map is not aligned for its entries.
    Misaligned(u64),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Pvh(e) => write!(f, "{e}"),
            Self::Unreachable(a) => write!(f, "boot data at {a:#x} is outside the identity map"),
            Self::Misaligned(a) => write!(f, "PVH memory map at {a:#x} is misaligned"),
        }
    }
}

fn reachable(start: u64, len: u64) -> Result<PhysRange, BootInfoError> {
    match PhysRange::from_start_size(PhysAddr::new(start), len) {
        Ok(r) if r.end().as_u64() <= IDENTITY_LIMIT => Ok(r),
        _ => Err(BootInfoError::Unreachable(start)),
    }
}

/// Read QEMU's start info at physical `start_info`.
pub fn read_boot_info(start_info: u64) -> Result<BootInfo, BootInfoError> {
    let info_range = reachable(start_info, core::mem::size_of::<HvmStartInfo>() as u64)?;
    // SAFETY: the range is inside the identity map (checked), and PVH guarantees `%ebx` points
    // at a start info, which nothing writes while the kernel runs; `read_unaligned` copes with
    // any alignment.
    let info = unsafe { (start_info as *const HvmStartInfo).read_unaligned() };
    let entries = info.memmap_len().map_err(BootInfoError::Pvh)?;
    let table_bytes = (entries * core::mem::size_of::<HvmMemmapEntry>()) as u64;
    let table_range = reachable(info.memmap_paddr, table_bytes)?;

    if info.memmap_paddr % core::mem::align_of::<HvmMemmapEntry>() as u64 != 0 {
        return Err(BootInfoError::Misaligned(info.memmap_paddr));
    }
    // SAFETY: the table lies inside the identity map (checked above), is aligned (checked),
    // holds `entries` initialised entries per the PVH ABI, and nothing writes it.
    let table =
        unsafe { core::slice::from_raw_parts(info.memmap_paddr as *const HvmMemmapEntry, entries) };
    let mut map = MemoryMap::new();
    pvh::read_memmap(table, &mut map).map_err(BootInfoError::Pvh)?;
    map.sort();

    let (cmdline, cmdline_range) = read_cmdline(info.cmdline_paddr)?;
    let cpus = read_madt(&map, info.rsdp_paddr);
    Ok(BootInfo {
        map,
        cmdline,
        boot_data: [info_range, table_range, cmdline_range],
        firmware_table: table,
        cpus,
    })
}

/// The MADT's CPUs, from the RSDP the start info names (or the one in the BIOS area). The
/// tables are read through the boot identity map, and only inside regions the firmware map
/// lists below 4 GiB: ACPI tables sit in reserved or ACPI regions, and a pointer into a hole
/// the map does not list is an error, never a read.
fn read_madt(map: &MemoryMap, rsdp: u64) -> Result<MadtCpus, AcpiError> {
    let read = |pa: u64, len: usize| -> Option<&'static [u8]> {
        let end = pa.checked_add(len as u64)?;
        let inside = map
            .regions()
            .iter()
            .any(|r| r.range.start().as_u64() <= pa && end <= r.range.end().as_u64());
        if !inside || pa < 0x1000 || end > IDENTITY_LIMIT {
            return None;
        }
        // SAFETY: `[pa, end)` lies inside the boot identity map (below 4 GiB, not page 0) and
        // inside one region of the firmware's memory map (not an unlisted device hole);
        // nothing writes the firmware's tables while the kernel reads them, and `read_madt`
        // runs before any check writes memory.
        Some(unsafe { core::slice::from_raw_parts(pa as *const u8, len) })
    };
    let at = acpi::find_rsdp(read, rsdp)?;
    acpi::madt_cpus(read, at)
}

fn read_cmdline(paddr: u64) -> Result<(&'static str, PhysRange), BootInfoError> {
    if paddr == 0 {
        return Ok(("", PhysRange::EMPTY));
    }
    let range = reachable(paddr, CMDLINE_MAX as u64)?;
    // SAFETY: the command line is inside the identity map (checked for CMDLINE_MAX bytes) and
    // is never written after boot; the slice is only searched for its NUL terminator.
    let bytes = unsafe { core::slice::from_raw_parts(paddr as *const u8, CMDLINE_MAX) };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(CMDLINE_MAX);
    let text = core::str::from_utf8(&bytes[..len]).unwrap_or("");
    let used = PhysRange::from_start_size(range.start(), len as u64 + 1).unwrap_or(range);
    Ok((text, used))
}
