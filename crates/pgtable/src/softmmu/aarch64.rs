//! The aarch64 stage-1 walker (Arm ARM D8), with its own bit definitions.
//!
//! Models: TTBR0/TTBR1 selection by the top VA bits and TnSZ, 4/16/64 KiB granules, start
//! level from the VA width, table / block / page descriptors (a block where none may be, or
//! `0b01` at level 3, is a translation fault), the hierarchical table controls (APTable,
//! UXNTable, PXNTable), AP\[2:1\], UXN, PXN, EL0-writable implies PXN, PAN = 1, and the access
//! flag without hardware management (AF = 0 faults; nothing is written to memory). The
//! contiguous hint is a TLB-size hint only and does not change translation.

extern crate std;

use core::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

use mmkit_addr::{PhysAddr, PhysMapper, VaHalf, VirtAddr};

use super::{Access, Fault, Mode, Perms, WalkCache, Walked, Walker};
use crate::arch::aarch64::{Aarch64, Granule};
use crate::format::PagingFormat;

/// Walks aarch64 stage-1 tables for both halves.
pub struct Aarch64Walker<'m, M: PhysMapper> {
    mem: &'m M,
    ttbr0: Option<(PhysAddr, Aarch64)>,
    ttbr1: Option<(PhysAddr, Aarch64)>,
}

impl<'m, M: PhysMapper> Aarch64Walker<'m, M> {
    /// A walker with TTBR0 and/or TTBR1 loaded (root and the regime's granule and size).
    pub fn new(
        mem: &'m M,
        ttbr0: Option<(PhysAddr, Aarch64)>,
        ttbr1: Option<(PhysAddr, Aarch64)>,
    ) -> Self {
        Self { mem, ttbr0, ttbr1 }
    }

    fn entry(&self, table: u64, bytes: u64, idx: u64) -> &AtomicU64 {
        let t = crate::raw::table_at(self.mem, PhysAddr::new(table), bytes)
            .expect("walker: table frame outside memory");
        &t[idx as usize]
    }
}

fn output_address(g: Granule, lpa2: bool, e: u64) -> u64 {
    if lpa2 {
        // TCR_EL1.DS = 1: OA[49:12] in 49:12, OA[51:50] in 9:8.
        let low = e & 0x0003_ffff_ffff_f000 & !((1u64 << g.shift()) - 1);
        return low | ((e >> 8) & 0b11) << 50;
    }
    let low = e & 0x0000_ffff_ffff_f000 & !((1u64 << g.shift()) - 1);
    match g {
        Granule::K64 => low | ((e >> 12) & 0xf) << 48,
        _ => low,
    }
}

impl<M: PhysMapper> Walker for Aarch64Walker<'_, M> {
    fn shifts(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [self.ttbr0, self.ttbr1]
            .iter()
            .flatten()
            .flat_map(|(_, f)| {
                f.levels()
                    .iter()
                    .filter_map(|l| l.leaf.map(|s| s.shift()))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn walk_cached(
        &self,
        va: u64,
        access: Access,
        mode: Mode,
        update: bool,
        mut psc: Option<&mut WalkCache>,
    ) -> Result<Walked, Fault> {
        let regime = [self.ttbr0, self.ttbr1]
            .into_iter()
            .flatten()
            .find(|(_, f)| {
                let want = f.half();
                VirtAddr::new(va).aarch64_half(f.va_bits()) == Some(want)
            });
        let Some((root, f)) = regime else {
            return Err(Fault::NonCanonical);
        };
        debug_assert!(matches!(f.half(), VaHalf::Lower | VaHalf::Upper));
        let g = f.granule_kind();
        let lpa2 = f.lpa2();
        let gs = g.shift();
        let per = gs - 3;
        let depth = f.levels().len() as u32;
        // The root's hardware level: -1 for a 52-bit VA with the 4 KiB granule (LPA2).
        let start = 4 - depth as i32;
        let mut table = root.as_u64();
        let (mut no_el0, mut ro_table, mut uxn_t, mut pxn_t) = (false, false, false, false);
        for level in 0..depth as usize {
            let hw = start + level as i32;
            let shift = gs + (3 - hw) as u32 * per;
            let bits = if level == 0 { f.va_bits() - shift } else { per };
            let idx = (va >> shift) & ((1u64 << bits) - 1);
            let cached = psc.as_deref().and_then(|c| c.get(shift, va));
            let mut e =
                cached.unwrap_or_else(|| self.entry(table, 1 << gs, idx).load(Ordering::Acquire));
            if e & 1 == 0 {
                return Err(Fault::Translation { level });
            }
            let is_table_bit = e & 2 != 0;
            if hw < 3 && is_table_bit {
                no_el0 |= e >> 61 & 1 != 0;
                ro_table |= e >> 62 & 1 != 0;
                uxn_t |= e >> 60 & 1 != 0;
                pxn_t |= e >> 59 & 1 != 0;
                if let Some(c) = psc.as_deref_mut() {
                    c.insert(shift, va, e);
                }
                table = output_address(g, lpa2, e);
                continue;
            }
            let block_ok = match (g, hw) {
                (_, 3) => is_table_bit,
                (Granule::K4, 1 | 2) | (Granule::K16, 2) | (Granule::K64, 2) => true,
                _ => false,
            };
            if !block_ok {
                return Err(Fault::Translation { level });
            }
            // FEAT_HAFDBS (TCR_EL1.HA, HD): the walker sets AF itself, and a write through a
            // DBM leaf with AP[2] set clears AP[2] (the dirty state) instead of faulting.
            let (af, ap_ro, dbm) = (1u64 << 10, 1u64 << 7, 1u64 << 51);
            let hafdbs = f.hw_access_dirty();
            if e & af == 0 {
                if !hafdbs {
                    return Err(Fault::AccessFlag);
                }
                if update {
                    e = self
                        .entry(table, 1 << gs, idx)
                        .fetch_or(af, Ordering::AcqRel)
                        | af;
                }
            }
            let ap1 = e & (1 << 6) != 0 && !no_el0;
            let dbm_on = hafdbs && e & dbm != 0;
            let may_write = match mode {
                Mode::User => ap1,
                Mode::Kernel => !ap1,
            };
            if dbm_on && e & ap_ro != 0 && access == Access::Write && update && may_write {
                if ro_table {
                    // The table forbids writes: the hardware faults without updating.
                } else {
                    let entry = self.entry(table, 1 << gs, idx);
                    e = entry.fetch_and(!ap_ro, Ordering::AcqRel) & !ap_ro;
                }
            }
            // A clean DBM leaf is writable (the first write makes it dirty).
            let ro = (e & ap_ro != 0 && !dbm_on) || ro_table;
            let uxn = e & (1 << 54) != 0 || uxn_t;
            let pxn = e & (1 << 53) != 0 || pxn_t;
            let el0_writable = ap1 && !ro;
            let perms = Perms {
                user_r: ap1,
                user_w: el0_writable,
                user_x: !uxn,
                kern_r: !ap1,
                kern_w: !ap1 && !ro,
                kern_x: !pxn && !el0_writable,
            };
            let size_mask = (1u64 << shift) - 1;
            return Ok(Walked {
                page_va: va & !size_mask,
                page_pa: output_address(g, lpa2, e) & !size_mask,
                shift,
                perms,
                // A clean DBM leaf: a write must walk again so the walker marks it dirty.
                dirty: !(dbm_on && e & ap_ro != 0),
                global: e & (1 << 11) == 0,
            });
        }
        Err(Fault::Translation {
            level: depth as usize,
        })
    }
}
