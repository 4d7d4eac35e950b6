//! The boot identity map (built in `boot.rs`) and the one edit the self-tests make to it.
//!
//! `boot_pd` holds 2048 entries mapping physical `[0, 4 GiB)` with 2 MiB pages, entry `i`
//! covering `[i * 2 MiB, (i + 1) * 2 MiB)`. [`set_block_writable`] flips the writable bit of
//! one entry and invalidates its TLB entry: enough to provoke and check a write-protection
//! fault. The kernel's own tables (identity plus a higher-half direct map, W^X kernel image),
//! built with mmkit-pgtable in [`crate::mmu`], replace these.

use core::arch::asm;

use mmkit_addr::PhysAddr;

use crate::platform::IDENTITY_LIMIT;

/// The size of one boot mapping.
pub const BLOCK_SIZE: u64 = 2 << 20;

/// Entries in the boot page directories (4 GiB / 2 MiB).
const ENTRIES: usize = (IDENTITY_LIMIT / BLOCK_SIZE) as usize;

/// Page-table entry bit: writable.
const PTE_WRITABLE: u64 = 1 << 1;

extern "C" {
    /// The four boot page directories, contiguous (`boot.rs`).
    static mut boot_pd: [u64; ENTRIES];
}

/// Why a block's permissions could not be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The address is not 2 MiB aligned.
    Misaligned(PhysAddr),
    /// The address is not below 4 GiB.
    OutsideIdentityMap(PhysAddr),
}

/// Make the 2 MiB identity block at `block` writable or read-only, and flush its TLB entry.
///
/// # Safety
/// While a block is read-only, nothing may write to it except through a fault-tolerant probe
/// (`traps::write_u8_nofault`): no kernel code, stack or data may live in it.
pub unsafe fn set_block_writable(block: PhysAddr, writable: bool) -> Result<(), BlockError> {
    if !block.is_aligned(BLOCK_SIZE) {
        return Err(BlockError::Misaligned(block));
    }
    if block.as_u64() >= IDENTITY_LIMIT {
        return Err(BlockError::OutsideIdentityMap(block));
    }
    let index = (block.as_u64() / BLOCK_SIZE) as usize;
    // SAFETY: `boot_pd` is the live page directory built in `boot.rs`; one CPU, and only this
    // function writes it after boot. The index is in bounds (checked above). The caller
    // promises nothing writes the block while it is read-only.
    unsafe {
        let entry = core::ptr::addr_of_mut!(boot_pd[index]);
        let old = entry.read_volatile();
        let new = if writable {
            old | PTE_WRITABLE
        } else {
            old & !PTE_WRITABLE
        };
        entry.write_volatile(new);
        asm!("invlpg [{}]", in(reg) block.as_u64(), options(nostack, preserves_flags));
    }
    Ok(())
}
