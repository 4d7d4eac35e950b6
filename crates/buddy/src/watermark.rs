//! Watermarks, lowmem reserve and per-CPU list sizes, computed as Linux computes them
//! (`mm/page_alloc.c`: `calculate_min_free_kbytes`, `__setup_per_zone_wmarks`,
//! `setup_per_zone_lowmem_reserve`, `zone_pcp_update`).
//!
//! * `min_free_kbytes = sqrt(lowmem_kB * 16)`, clamped to 128 KiB..=256 MiB, where lowmem is
//!   every zone but ZONE_MOVABLE;
//! * each lowmem zone's min watermark is its share of `min_free_kbytes` by managed size;
//!   ZONE_MOVABLE's min is `managed / 1024` clamped to 32..=128 pages;
//! * `delta = max(share / 4, managed * watermark_scale_factor / 10000)`, `low = min + delta`,
//!   `high = low + delta`;
//! * `protection[j]` of zone `i` (j > i) = managed pages of zones `i+1..=j` / ratio[i].

use core::sync::atomic::Ordering::Relaxed;

use crate::pcp::{zone_batchsize, zone_highsize};
use crate::zone::{Zone, ZoneType, NR_ZONES};

/// Linux `SWAP_CLUSTER_MAX`, the floor of ZONE_MOVABLE's min watermark.
const SWAP_CLUSTER_MAX: u64 = 32;

/// Integer square root (floor).
fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Newton's method from above converges to the floor. Start at or above the root but at
    // most 2^32 (the root of any `u64` is below it), so `r + x / r` cannot overflow.
    let mut r = x.min(1 << 32);
    let mut y = (r + x / r) / 2;
    while y < r {
        r = y;
        y = (r + x / r) / 2;
    }
    r
}

/// Linux `calculate_min_free_kbytes` for `lowmem_pages` managed pages outside ZONE_MOVABLE.
/// The products saturate: counts too large for them get the 256 MiB ceiling, as they would.
///
/// ```
/// assert_eq!(mmkit_buddy::default_min_free_kbytes(u64::MAX), 262_144);
/// assert_eq!(mmkit_buddy::default_min_free_kbytes(0), 128);
/// ```
pub fn default_min_free_kbytes(lowmem_pages: u64) -> u64 {
    let lowmem_kb = lowmem_pages.saturating_mul(4);
    isqrt(lowmem_kb.saturating_mul(16)).clamp(128, 262_144)
}

/// Recompute watermarks, lowmem reserve and per-CPU sizes for every zone in `zones`
/// (all zones of all nodes), given `min_free_kbytes` (or the default) and the scale factor.
pub(crate) fn setup_zones<'a, 'm: 'a>(
    zones: impl Iterator<Item = &'a [Zone<'m>; NR_ZONES]> + Clone,
    min_free_kbytes: Option<u64>,
    scale_factor: u32,
    ratios: &[u32; NR_ZONES],
    nr_cpus: usize,
) {
    let lowmem: u64 = zones
        .clone()
        .flat_map(|zs| zs.iter())
        .filter(|z| z.ty != ZoneType::Movable)
        .map(|z| z.managed.load(Relaxed))
        .sum();
    let min_kb = min_free_kbytes.unwrap_or_else(|| default_min_free_kbytes(lowmem));
    let pages_min = min_kb / 4;
    for zs in zones {
        for z in zs.iter() {
            let managed = z.managed.load(Relaxed);
            let share = if lowmem == 0 {
                0
            } else {
                (u128::from(pages_min) * u128::from(managed) / u128::from(lowmem)) as u64
            };
            let min = if z.ty == ZoneType::Movable {
                (managed / 1024).clamp(SWAP_CLUSTER_MAX, 128)
            } else {
                share
            };
            let min = if managed == 0 { 0 } else { min };
            let delta = (share / 4).max(managed * u64::from(scale_factor) / 10_000);
            z.wmark[0].store(min, Relaxed);
            z.wmark[1].store(min + delta, Relaxed);
            z.wmark[2].store(min + 2 * delta, Relaxed);
            let batch = zone_batchsize(managed);
            z.pcp_batch.store(batch, Relaxed);
            z.pcp_high
                .store(zone_highsize(min + delta, managed, batch, nr_cpus), Relaxed);
        }
        setup_lowmem_reserve(zs, ratios);
    }
}

/// Linux `setup_per_zone_lowmem_reserve` for the zones of one node.
pub(crate) fn setup_lowmem_reserve(zs: &[Zone<'_>; NR_ZONES], ratios: &[u32; NR_ZONES]) {
    for i in 0..NR_ZONES {
        let mut upper = 0;
        for j in 0..NR_ZONES {
            let v = if j <= i {
                0
            } else {
                let m = zs[j].managed.load(Relaxed);
                upper += m;
                if ratios[i] == 0 || m == 0 {
                    0
                } else {
                    upper / u64::from(ratios[i])
                }
            };
            zs[i].lowmem_reserve[j].store(v, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_kbytes_follows_sqrt_rule() {
        // 1 GiB of lowmem: sqrt(1048576 * 16) = 4096 KiB.
        assert_eq!(default_min_free_kbytes(262_144), 4096);
        assert_eq!(default_min_free_kbytes(16), 128, "clamped up");
        assert_eq!(default_min_free_kbytes(1 << 40), 262_144, "clamped down");
    }

    #[test]
    fn isqrt_is_exact_floor() {
        for x in [
            0,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            1 << 40,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let (r, x) = (u128::from(isqrt(x)), u128::from(x));
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
    }

    fn zones_with(managed: [u64; NR_ZONES]) -> [Zone<'static>; NR_ZONES] {
        core::array::from_fn(|i| {
            let z = Zone::new(ZoneType::ALL[i], 0, 0, 0);
            z.managed.store(managed[i], Relaxed);
            z
        })
    }

    #[test]
    fn watermarks_split_min_by_size_and_add_deltas() {
        let zs = zones_with([4000, 258_144, 0, 0]);
        setup_zones(core::iter::once(&zs), Some(4096), 10, &[256, 256, 32, 0], 1);
        // pages_min 1024 split 4000 : 258144.
        let dma_min = 1024 * 4000 / 262_144;
        assert_eq!(zs[0].wmark[0].load(Relaxed), dma_min);
        let d32_min = 1024 * 258_144 / 262_144;
        assert_eq!(zs[1].wmark[0].load(Relaxed), d32_min);
        let delta = (d32_min / 4).max(258_144 * 10 / 10_000);
        assert_eq!(zs[1].wmark[1].load(Relaxed), d32_min + delta);
        assert_eq!(zs[1].wmark[2].load(Relaxed), d32_min + 2 * delta);
    }

    #[test]
    fn lowmem_reserve_protects_lower_zones() {
        let zs = zones_with([4000, 100_000, 200_000, 50_000]);
        setup_lowmem_reserve(&zs, &[256, 256, 32, 0]);
        let p = |i: usize, j: usize| zs[i].lowmem_reserve[j].load(Relaxed);
        assert_eq!(p(0, 0), 0);
        assert_eq!(p(0, 1), 100_000 / 256);
        assert_eq!(p(0, 2), 300_000 / 256);
        assert_eq!(p(0, 3), 350_000 / 256);
        assert_eq!(p(2, 3), 50_000 / 32);
        assert_eq!(p(3, 3), 0);
    }
}
