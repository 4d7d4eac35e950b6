//! aarch64 hardware access: TLBI / DSB / ISB and the TTBRn / TCR / MAIR registers at EL1.
//!
//! Invalidation broadcasts to the inner-shareable domain, so one CPU's flush covers every
//! CPU of the system: `TLBI VAAE1IS` / `VAALE1IS` for a page in every address space,
//! `VAE1IS` / `VALE1IS` for a page in one ASID (and its global translation), `ASIDE1IS` for
//! one ASID, `VMALLE1IS` for everything. [`load_ttbr_asid`] loads a table with its ASID
//! (TCR_EL1.A1 = 0: the ASID comes from TTBR0_EL1).

use core::arch::asm;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::flush::{Asid, TlbInvalidate};

/// The TLBI operand for `va`: VA\[55:12\] in bits 43:0, `asid` in bits 63:48.
#[inline]
fn tlbi_operand(va: VirtAddr, asid: Asid) -> u64 {
    ((va.as_u64() >> 12) & ((1 << 44) - 1)) | (u64::from(asid.0) << 48)
}

/// Write TTBR0_EL1 with `root` and ASID `asid` (bits 63:48), then ISB. The TLB keeps the
/// entries of other ASIDs, so switching back needs no flush.
///
/// # Safety
/// As [`load_ttbr`] for the lower half; TCR_EL1.A1 must be 0 (the ASID comes from TTBR0)
/// and TCR_EL1.AS must allow `asid` (16 bits, or 8 with `asid < 256`). Every entry cached
/// under `asid` must still be valid for `root` (every token of its tables invalidated).
pub unsafe fn load_ttbr_asid(root: PhysAddr, asid: Asid) {
    let v = root.as_u64() | (u64::from(asid.0) << 48);
    // SAFETY: the caller guarantees EL1, a table matching TCR_EL1 and a valid ASID.
    unsafe { asm!("msr ttbr0_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

/// Write TTBR0_EL1 (`half_lower == true`) or TTBR1_EL1 with `root` (ASID 0), then ISB.
///
/// # Safety
/// Must run at EL1. `root` must be a complete table of the granule and size programmed in
/// TCR_EL1 for that half, keeping the executing code and data mapped, alive while loaded.
pub unsafe fn load_ttbr(root: PhysAddr, half_lower: bool) {
    let v = root.as_u64();
    // SAFETY: the caller guarantees EL1 and a table matching TCR_EL1.
    unsafe {
        if half_lower {
            asm!("msr ttbr0_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags));
        } else {
            asm!("msr ttbr1_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags));
        }
    }
}

/// Write MAIR_EL1 with [`MAIR_EL1`](super::aarch64::MAIR_EL1) and TCR_EL1 with `tcr`
/// (build it from [`Aarch64::tcr_half_bits`](super::aarch64::Aarch64::tcr_half_bits) of both
/// halves plus IPS), then ISB.
///
/// # Safety
/// Must run at EL1, with the MMU off or with values that keep the current mappings' meaning.
pub unsafe fn write_mair_tcr(tcr: u64) {
    let mair = super::aarch64::MAIR_EL1;
    // SAFETY: the caller guarantees EL1 and compatible values.
    unsafe {
        asm!("msr mair_el1, {}", "msr tcr_el1, {}", "isb", in(reg) mair, in(reg) tcr,
             options(nostack, preserves_flags))
    };
}

/// The inner-shareable TLB (every CPU), for tables loaded at EL1.
#[derive(Debug)]
pub struct InnerShareableTlb(());

impl InnerShareableTlb {
    /// # Safety
    /// Must be used at EL1 with the tables' translation regime.
    pub unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: TLBI VAAE1IS drops the translation and walk-cache entries for the address in
// every ASID on every CPU in the inner-shareable domain (VAALE1IS the leaf only), VAE1IS /
// VALE1IS those of one ASID (and global ones), ASIDE1IS every entry of one ASID, VMALLE1IS
// everything; `finish` waits for completion with DSB ISH before returning.
unsafe impl TlbInvalidate for InnerShareableTlb {
    fn invalidate_page(&mut self, va: VirtAddr, _size: PageSize, leaf_only: bool) {
        let op = tlbi_operand(va, Asid(0));
        // SAFETY: `new` requires EL1; TLBI only drops cached translations.
        unsafe {
            if leaf_only {
                asm!("tlbi vaale1is, {}", in(reg) op, options(nostack, preserves_flags));
            } else {
                asm!("tlbi vaae1is, {}", in(reg) op, options(nostack, preserves_flags));
            }
        }
    }

    fn invalidate_page_asid(&mut self, va: VirtAddr, _size: PageSize, leaf_only: bool, asid: Asid) {
        let op = tlbi_operand(va, asid);
        // SAFETY: `new` requires EL1; TLBI only drops cached translations.
        unsafe {
            if leaf_only {
                asm!("tlbi vale1is, {}", in(reg) op, options(nostack, preserves_flags));
            } else {
                asm!("tlbi vae1is, {}", in(reg) op, options(nostack, preserves_flags));
            }
        }
    }

    fn invalidate_asid(&mut self, asid: Asid) {
        let op = u64::from(asid.0) << 48;
        // SAFETY: `new` requires EL1; TLBI only drops cached translations.
        unsafe { asm!("tlbi aside1is, {}", in(reg) op, options(nostack, preserves_flags)) };
    }

    fn invalidate_all(&mut self) {
        // SAFETY: `new` requires EL1.
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
    }

    fn begin(&mut self) {
        // SAFETY: a barrier; makes table writes visible to the walker before the TLBIs.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    }

    fn finish(&mut self) {
        // SAFETY: barriers; wait for the TLBIs and resynchronize the instruction stream.
        unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
    }
}
