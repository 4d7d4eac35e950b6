//! The firmware memory map (from the device tree) and the kernel's own footprint.
//!
//! [`read_boot_info`] finds the device tree — `x0` at entry if it points at one, otherwise the
//! start of RAM where QEMU puts it for an ELF kernel — and reads it with
//! [`mmkit_qemu_common::dtb`] into a sorted [`MemoryMap`], with the command line and the PSCI
//! conduit. [`kernel_image`] is the loaded image, from the linker script's symbols.

use mmkit_addr::{PhysAddr, PhysRange};
use mmkit_qemu_common::dtb::{self, DtbError, DtbFacts};
use mmkit_qemu_common::memmap::MemoryMap;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Where RAM, and so the device tree of an ELF kernel, starts on QEMU's `virt` machine.
pub const VIRT_RAM_BASE: u64 = 0x4000_0000;

/// The physical range of the loaded kernel image, `.bss` (stack) included.
pub fn kernel_image() -> PhysRange {
    let start = core::ptr::addr_of!(__kernel_start) as u64;
    let end = core::ptr::addr_of!(__kernel_end) as u64;
    // The MMU is off, so these addresses are physical; the linker script orders them.
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap_or(PhysRange::EMPTY)
}

/// Where the device tree was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtbSource {
    /// `x0` at entry pointed at it.
    Register,
    /// `x0` did not; it was at the start of RAM.
    RamBase,
}

/// What the kernel keeps from the device tree.
pub struct BootInfo {
    /// RAM and reserved ranges, sorted.
    pub map: MemoryMap,
    /// The blob itself: memory to leave alone.
    pub dtb: PhysRange,
    /// The blob's bytes, for mmkit-bootmem's own device-tree ingestion.
    pub blob: &'static [u8],
    /// How the blob was found.
    pub dtb_source: DtbSource,
    /// `/chosen/bootargs`, `/psci/method` and counts.
    pub facts: DtbFacts<'static>,
}

/// The blob's size if a device tree starts at `addr`.
fn probe(addr: u64) -> Result<usize, DtbError> {
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err(DtbError::BadMagic(0));
    }
    let mut prefix = [0u8; dtb::HEADER_PREFIX];
    // SAFETY: with the MMU off every address is accessible; `addr` is either what QEMU left in
    // x0 or the start of RAM, both RAM on `virt`, and only the 8 header bytes are read.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, prefix.as_mut_ptr(), prefix.len()) };
    dtb::total_size(prefix)
}

/// Find and read the device tree; `x0` is the register's value at entry.
pub fn read_boot_info(x0: u64) -> Result<BootInfo, DtbError> {
    let (addr, size, dtb_source) = match probe(x0) {
        Ok(size) => (x0, size, DtbSource::Register),
        Err(_) => (VIRT_RAM_BASE, probe(VIRT_RAM_BASE)?, DtbSource::RamBase),
    };
    // SAFETY: the header at `addr` is valid and says the blob is `size` bytes; it lies in RAM
    // (identity with the MMU off) that nothing writes while the kernel runs.
    let blob: &'static [u8] = unsafe { core::slice::from_raw_parts(addr as *const u8, size) };
    let mut map = MemoryMap::new();
    let facts = dtb::read(blob, &mut map)?;
    map.sort();
    let dtb = PhysRange::from_start_size(PhysAddr::new(addr), size as u64)
        .map_err(|_| DtbError::Truncated)?;
    Ok(BootInfo {
        map,
        dtb,
        blob,
        dtb_source,
        facts,
    })
}
