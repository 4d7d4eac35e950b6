//! x86_64 hardware access: CR3 (with or without a PCID), INVLPG, INVPCID, global flush, the
//! PAT MSR.
//!
//! Everything here executes privileged instructions and must run at CPL 0. [`LocalTlb`]
//! assumes PCIDs are off (CR4.PCIDE = 0); with PCIDs on, [`PcidTlb`] invalidates by PCID with
//! INVPCID, so tokens of a table tagged with an [`Asid`] reach its entries whether or not
//! its address space is the current one.

use core::arch::asm;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::flush::{Asid, TlbInvalidate};

/// Load `root` into CR3 (PCID 0, PWT/PCD clear), switching address space.
///
/// # Safety
/// Must run at CPL 0. `root` must be the root of a complete 4- or 5-level table (matching
/// CR4.LA57) that maps the currently executing code, stack and data at their current
/// addresses, and it must stay alive while loaded.
pub unsafe fn load_cr3(root: PhysAddr) {
    // SAFETY: the caller guarantees CPL 0 and a table that keeps the current context mapped.
    unsafe { asm!("mov cr3, {}", in(reg) root.as_u64(), options(nostack, preserves_flags)) };
}

/// Load `root` into CR3 with PCID `pcid` (bits 0..12); with `keep` set (bit 63), the
/// TLB entries cached under that PCID are kept instead of flushed.
///
/// # Safety
/// As [`load_cr3`], and CR4.PCIDE must be set. With `keep`, every entry cached under `pcid`
/// must still be valid for `root` (every token of its tables invalidated).
pub unsafe fn load_cr3_pcid(root: PhysAddr, pcid: Asid, keep: bool) {
    let v = root.as_u64() | u64::from(pcid.0 & 0xfff) | (u64::from(keep) << 63);
    // SAFETY: the caller guarantees CPL 0, PCIDs on and a table that keeps the current
    // context mapped.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// INVPCID of `kind` (0: one address in `pcid`, 1: everything of `pcid` but global
/// translations, 2: everything, 3: everything but global translations).
///
/// # Safety
/// Must run at CPL 0 on a CPU with INVPCID (CPUID.(EAX=07H,ECX=0):EBX.INVPCID).
pub unsafe fn invpcid(kind: u64, pcid: Asid, va: VirtAddr) {
    let desc: [u64; 2] = [u64::from(pcid.0 & 0xfff), va.as_u64()];
    // SAFETY: the caller guarantees CPL 0 and INVPCID support; the descriptor lives on the
    // stack for the instruction; INVPCID only drops cached translations.
    unsafe {
        asm!("invpcid {}, [{}]", in(reg) kind, in(reg) desc.as_ptr(),
             options(nostack, preserves_flags, readonly))
    };
}

/// The current CR3 value.
///
/// # Safety
/// Must run at CPL 0.
pub unsafe fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees CPL 0; reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Program IA32_PAT with [`PAT_MSR`](super::x86_64::PAT_MSR), as the cache policies assume.
///
/// # Safety
/// Must run at CPL 0 on every CPU before mappings with non-WB policies are used, with caches
/// handled as the SDM prescribes for PAT changes (normally done once at boot).
pub unsafe fn write_pat() {
    let v = super::x86_64::PAT_MSR;
    // SAFETY: the caller guarantees CPL 0 and a safe point to change memory types.
    unsafe {
        asm!("wrmsr", in("ecx") 0x277u32, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// Invalidate the TLB entries and paging-structure caches for `va` on this CPU.
///
/// # Safety
/// Must run at CPL 0.
pub unsafe fn invlpg(va: VirtAddr) {
    // SAFETY: the caller guarantees CPL 0; INVLPG only drops cached translations.
    unsafe { asm!("invlpg [{}]", in(reg) va.as_u64(), options(nostack, preserves_flags)) };
}

/// Invalidate every TLB entry on this CPU, global ones included (toggle CR4.PGE).
///
/// # Safety
/// Must run at CPL 0 with interrupts disabled.
pub unsafe fn flush_all_including_global() {
    // SAFETY: the caller guarantees CPL 0 with interrupts off; clearing and restoring CR4.PGE
    // only flushes the TLB.
    unsafe {
        asm!(
            "mov {tmp}, cr4",
            "mov {orig}, {tmp}",
            "xor {tmp}, 0x80",
            "mov cr4, {tmp}",
            "mov cr4, {orig}",
            tmp = out(reg) _,
            orig = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}

/// This CPU's TLB, for tables that are live on this CPU only (shootdowns are the kernel's).
#[derive(Debug)]
pub struct LocalTlb(());

impl LocalTlb {
    /// # Safety
    /// Must be used at CPL 0 with interrupts disabled, and only for tables that no other CPU
    /// has loaded (otherwise the kernel must shoot down the other CPUs too).
    pub unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: INVLPG drops every translation and paging-structure cache entry for the address on
// this CPU, and the CR4.PGE toggle drops all of them; `new`'s contract rules out other CPUs.
unsafe impl TlbInvalidate for LocalTlb {
    fn invalidate_page(&mut self, va: VirtAddr, _size: PageSize, _leaf_only: bool) {
        // SAFETY: `LocalTlb::new` requires CPL 0.
        unsafe { invlpg(va) }
    }

    fn invalidate_all(&mut self) {
        // SAFETY: `LocalTlb::new` requires CPL 0 with interrupts disabled.
        unsafe { flush_all_including_global() }
    }
}

/// This CPU's TLB with PCIDs on, for tables live on this CPU only: ASID-scoped invalidations
/// use INVPCID for that PCID (current or not); the all-address-space ones INVLPG in the
/// current PCID plus INVPCID for every other (type 0 per page would miss other PCIDs, so a
/// page invalidation in every space drops everything but global translations, and then the
/// page's global translation with INVLPG).
#[derive(Debug)]
pub struct PcidTlb(());

impl PcidTlb {
    /// # Safety
    /// Must be used at CPL 0 with interrupts disabled, CR4.PCIDE set and INVPCID supported,
    /// and only for tables that no other CPU has loaded.
    pub unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: INVPCID type 0 drops the address's non-global translations and paging-structure
// caches of the PCID, type 1 every non-global one of the PCID, type 3 every non-global one
// of every PCID, type 2 everything; INVLPG the address's global translation; tokens use the
// PCID forms only when no global leaf may have changed (`Flush::asid`).
unsafe impl TlbInvalidate for PcidTlb {
    fn invalidate_page(&mut self, va: VirtAddr, _size: PageSize, _leaf_only: bool) {
        // SAFETY: `PcidTlb::new` requires CPL 0 and INVPCID.
        unsafe {
            invpcid(3, Asid(0), VirtAddr::new(0));
            invlpg(va);
        }
    }

    fn invalidate_all(&mut self) {
        // SAFETY: `PcidTlb::new` requires CPL 0 and INVPCID.
        unsafe { invpcid(2, Asid(0), VirtAddr::new(0)) }
    }

    fn invalidate_page_asid(
        &mut self,
        va: VirtAddr,
        _size: PageSize,
        _leaf_only: bool,
        asid: Asid,
    ) {
        // SAFETY: `PcidTlb::new` requires CPL 0 and INVPCID.
        unsafe { invpcid(0, asid, va) }
    }

    fn invalidate_asid(&mut self, asid: Asid) {
        // SAFETY: `PcidTlb::new` requires CPL 0 and INVPCID.
        unsafe { invpcid(1, asid, VirtAddr::new(0)) }
    }
}
