//! Sizing ZONE_MOVABLE from `kernelcore=` / `movablecore=` (Linux
//! `find_zone_movable_pfns_for_nodes`).
//!
//! * A size is bytes or a percentage of all present memory; `movablecore` is turned into the
//!   kernel memory it leaves (`total - movablecore`, movablecore rounded up to a max-order
//!   block); with both, the larger kernel share wins.
//! * ZONE_MOVABLE is carved from the highest populated zone type of the machine: memory below
//!   that zone's start is always kernel memory (and counts toward the kernel share).
//! * The kernel share is spread evenly over the nodes with memory; a node too small for its
//!   share gives all its memory to the kernel and the remainder is spread again over the other
//!   nodes.
//! * Each node's ZONE_MOVABLE starts where its kernel share ends, rounded up to a max-order
//!   block, so zone boundaries never split a buddy block.

use mmkit_addr::PhysRange;

use crate::config::{BuddyConfig, CoreSize};
use crate::error::InitError;
use crate::MAX_NUMNODES;

fn core_pages(size: CoreSize, total: u64) -> Result<u64, InitError> {
    match size {
        CoreSize::Bytes(b) => Ok(b >> mmkit_addr::PAGE_SHIFT),
        CoreSize::Percent(p) if p <= 100 => Ok(total * u64::from(p) / 100),
        CoreSize::Percent(_) => Err(InitError::BadCoreSize),
    }
}

/// Iterate a node's whole-frame ranges in ascending order without allocating.
fn sorted_ranges(memory: &[PhysRange]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut last = 0u64;
    let mut first = true;
    core::iter::from_fn(move || {
        let next = memory
            .iter()
            .map(PhysRange::whole_pfns)
            .filter(|r| r.start < r.end && (first || r.start > last))
            .min_by_key(|r| r.start)?;
        first = false;
        last = next.start;
        Some((next.start, next.end))
    })
}

/// The first frame of ZONE_MOVABLE for each node (`None`: no movable zone there).
/// `usable_start` is the first frame of the highest populated zone type.
pub(crate) fn zone_movable_starts(
    nodes: &[&[PhysRange]],
    cfg: &BuddyConfig,
    usable_start: u64,
) -> Result<[Option<u64>; MAX_NUMNODES], InitError> {
    let mut out = [None; MAX_NUMNODES];
    let total: u64 = nodes
        .iter()
        .flat_map(|m| sorted_ranges(m))
        .map(|(s, e)| e - s)
        .sum();
    let max_pages = 1u64 << cfg.max_order;
    let from_kernelcore = cfg.kernelcore.map(|k| core_pages(k, total)).transpose()?;
    let from_movablecore = cfg
        .movablecore
        .map(|m| core_pages(m, total))
        .transpose()?
        .map(|m| total - (m.div_ceil(max_pages) * max_pages).min(total));
    let mut required = match (from_kernelcore, from_movablecore) {
        (None, None) => return Ok(out),
        (Some(k), None) => k,
        (None, Some(k)) => k,
        (Some(a), Some(b)) => a.max(b),
    };
    if required == 0 || required >= total {
        return Ok(out);
    }
    let mut movable = [0u64; MAX_NUMNODES];
    let mut usable_nodes = nodes
        .iter()
        .filter(|m| sorted_ranges(m).next().is_some())
        .count() as u64;
    while usable_nodes > 0 && required > 0 {
        let per_node = required / usable_nodes;
        for (nid, mem) in nodes.iter().enumerate() {
            if required == 0 {
                break;
            }
            let mut remaining = per_node.min(required).max(1);
            for (s, e) in sorted_ranges(mem) {
                let mut start = s.max(movable[nid]);
                if start >= e {
                    continue;
                }
                if start < usable_start {
                    let kernel = e.min(usable_start) - start;
                    remaining -= kernel.min(remaining);
                    required -= kernel.min(required);
                    if e <= usable_start {
                        movable[nid] = e;
                        continue;
                    }
                    start = usable_start;
                }
                let take = (e - start).min(remaining);
                movable[nid] = start + take;
                required -= take.min(required);
                remaining -= take;
                if remaining == 0 {
                    break;
                }
            }
        }
        usable_nodes -= 1;
        if required <= usable_nodes {
            break;
        }
    }
    for (nid, mem) in nodes.iter().enumerate() {
        let Some(last) = sorted_ranges(mem).map(|(_, e)| e).max() else {
            continue;
        };
        let start = movable[nid].max(usable_start).div_ceil(max_pages) * max_pages;
        if start < last {
            out[nid] = Some(start);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmkit_addr::PhysAddr;

    const MIB: u64 = 1 << 20;

    fn r(start_mib: u64, len_mib: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start_mib * MIB), len_mib * MIB).unwrap()
    }

    fn cfg(k: Option<CoreSize>, m: Option<CoreSize>) -> BuddyConfig {
        BuddyConfig {
            kernelcore: k,
            movablecore: m,
            ..BuddyConfig::default()
        }
    }

    #[test]
    fn no_option_no_movable_zone() {
        let mem = [r(0, 64)];
        let out = zone_movable_starts(&[&mem], &cfg(None, None), 0).unwrap();
        assert_eq!(out[0], None);
    }

    #[test]
    fn movablecore_takes_the_top_of_the_node_aligned() {
        let mem = [r(0, 64)];
        let out =
            zone_movable_starts(&[&mem], &cfg(None, Some(CoreSize::Bytes(16 * MIB))), 0).unwrap();
        assert_eq!(out[0], Some(48 * MIB / 4096));
        // 15 MiB rounds up to 16 MiB (a multiple of 4 MiB max-order blocks).
        let out =
            zone_movable_starts(&[&mem], &cfg(None, Some(CoreSize::Bytes(15 * MIB))), 0).unwrap();
        assert_eq!(out[0], Some(48 * MIB / 4096));
    }

    #[test]
    fn kernelcore_percent_is_spread_over_nodes() {
        let n0 = [r(0, 64)];
        let n1 = [r(64, 64)];
        let out =
            zone_movable_starts(&[&n0, &n1], &cfg(Some(CoreSize::Percent(50)), None), 0).unwrap();
        // 64 MiB of kernel memory split 32 + 32.
        assert_eq!(out[0], Some(32 * MIB / 4096));
        assert_eq!(out[1], Some(96 * MIB / 4096));
    }

    #[test]
    fn memory_below_the_movable_zone_type_counts_as_kernel() {
        let mem = [r(0, 64)];
        // Highest zone starts at 16 MiB: the first 16 MiB are kernel memory anyway.
        let out = zone_movable_starts(
            &[&mem],
            &cfg(Some(CoreSize::Bytes(24 * MIB)), None),
            16 * MIB / 4096,
        )
        .unwrap();
        assert_eq!(out[0], Some(24 * MIB / 4096));
    }

    #[test]
    fn larger_kernel_share_wins_when_both_given() {
        let mem = [r(0, 64)];
        let out = zone_movable_starts(
            &[&mem],
            &cfg(
                Some(CoreSize::Bytes(40 * MIB)),
                Some(CoreSize::Bytes(48 * MIB)),
            ),
            0,
        )
        .unwrap();
        assert_eq!(out[0], Some(40 * MIB / 4096));
    }

    #[test]
    fn bad_percent_is_rejected() {
        let mem = [r(0, 64)];
        assert_eq!(
            zone_movable_starts(&[&mem], &cfg(Some(CoreSize::Percent(101)), None), 0),
            Err(InitError::BadCoreSize)
        );
    }
}
