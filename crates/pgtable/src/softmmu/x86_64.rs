//! The x86_64 page walker (Intel SDM vol. 3A ch. 4), with its own bit definitions.
//!
//! Models: 4- and 5-level paging, 1 GiB / 2 MiB pages (PS), reserved-bit checks (PS in PML4E
//! or PML5E, nonzero bits 13..n of a large-page address), RW and US ANDed and NX ORed over all
//! levels, CR0.WP = 1, CR4.SMEP = 1, CR4.SMAP = 1 (no EFLAGS.AC override), EFER.NXE = 1,
//! protection keys with PKRU = 0 (no restriction). Accessed is set in every entry used, dirty
//! in the leaf on a permitted write.

extern crate std;

use core::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

use mmkit_addr::{PhysAddr, PhysMapper, VirtAddr};

use super::{Access, Fault, Mode, Perms, WalkCache, Walked, Walker};

const MAXPHYADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Walks x86_64 tables rooted at a CR3 value.
pub struct X86Walker<'m, M: PhysMapper> {
    mem: &'m M,
    root: PhysAddr,
    levels: u32,
}

impl<'m, M: PhysMapper> X86Walker<'m, M> {
    /// A walker over `mem` for a `levels`-level (4 or 5) table at `root`.
    pub fn new(mem: &'m M, root: PhysAddr, levels: u32) -> Self {
        assert!(levels == 4 || levels == 5);
        Self { mem, root, levels }
    }

    fn entry(&self, table: u64, idx: u64) -> &AtomicU64 {
        let t = crate::raw::table_at(self.mem, PhysAddr::new(table), 4096)
            .expect("walker: table frame outside memory");
        &t[idx as usize]
    }
}

impl<M: PhysMapper> Walker for X86Walker<'_, M> {
    fn shifts(&self) -> Vec<u32> {
        std::vec![12, 21, 30]
    }

    fn walk_cached(
        &self,
        va: u64,
        access: Access,
        mode: Mode,
        update: bool,
        mut psc: Option<&mut WalkCache>,
    ) -> Result<Walked, Fault> {
        let va_bits = 12 + 9 * self.levels;
        if !VirtAddr::new(va).is_canonical_x86(va_bits) {
            return Err(Fault::NonCanonical);
        }
        let mut table = self.root.as_u64() & MAXPHYADDR_MASK;
        let (mut us, mut rw, mut nx) = (true, true, false);
        for level in 0..self.levels as usize {
            let shift = 12 + 9 * (self.levels - 1 - level as u32);
            let slot = self.entry(table, (va >> shift) & 511);
            let cached = psc.as_deref().and_then(|c| c.get(shift, va));
            let e = cached.unwrap_or_else(|| slot.load(Ordering::Acquire));
            if e & 1 == 0 {
                return Err(Fault::Translation { level });
            }
            us &= e & 4 != 0;
            rw &= e & 2 != 0;
            nx |= e >> 63 != 0;
            let ps = e & 0x80 != 0;
            let leaf = shift == 12 || (ps && (shift == 21 || shift == 30));
            if ps && shift > 30 {
                return Err(Fault::Reserved { level });
            }
            if leaf && shift > 12 {
                // Address bits 13..shift of a large page are reserved (bit 12 is PAT).
                let reserved = ((1u64 << shift) - 1) & !0x1fff;
                if e & reserved != 0 {
                    return Err(Fault::Reserved { level });
                }
            }
            if update && cached.is_none() {
                slot.fetch_or(0x20, Ordering::AcqRel);
            }
            if !leaf {
                if let Some(c) = psc.as_deref_mut() {
                    c.insert(shift, va, e);
                }
                table = e & MAXPHYADDR_MASK;
                continue;
            }
            let user_page = us;
            let perms = Perms {
                user_r: us,
                user_w: us && rw,
                user_x: us && !nx,
                kern_r: !user_page,
                kern_w: !user_page && rw,
                kern_x: !user_page && !nx,
            };
            let mut dirty = e & 0x40 != 0;
            if update && access == Access::Write && perms.allows(access, mode) {
                slot.fetch_or(0x40, Ordering::AcqRel);
                dirty = true;
            }
            let size_mask = (1u64 << shift) - 1;
            return Ok(Walked {
                page_va: va & !size_mask,
                page_pa: e & MAXPHYADDR_MASK & !size_mask,
                shift,
                perms,
                dirty,
                global: e & (1 << 8) != 0,
            });
        }
        unreachable!("the last level always ends the walk")
    }
}
