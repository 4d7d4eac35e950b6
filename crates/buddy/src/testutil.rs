//! Test scaffolding: allocators over leaked host storage.

extern crate std;

use core::mem::MaybeUninit;
use std::boxed::Box;
use std::vec::Vec;

use mmkit_addr::host::HostPlatform;
use mmkit_addr::{PhysAddr, PhysRange};

use crate::{memmap_len, pcp_storage_len, BuddyAllocator, BuddyConfig, NodeInit, PerCpuPages};

pub(crate) type TestBuddy = BuddyAllocator<'static, HostPlatform>;

pub(crate) const MIB: u64 = 1 << 20;

/// `[start_mib, start_mib + len_mib)` MiB.
pub(crate) fn mib(start_mib: u64, len_mib: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start_mib * MIB), len_mib * MIB).unwrap()
}

/// An allocator over `nodes` (memory not yet freed).
pub(crate) fn build_reserved(nodes: &[&[PhysRange]], cfg: BuddyConfig, cpus: usize) -> TestBuddy {
    let nr = nodes.len();
    let mut inits: Vec<NodeInit<'static, '_>> = Vec::new();
    let dists: Vec<Vec<u8>> = (0..nr)
        .map(|i| {
            (0..nr)
                .map(|j| if i == j { 10 } else { 20 + j as u8 })
                .collect()
        })
        .collect();
    for (i, mem) in nodes.iter().enumerate() {
        let len = memmap_len(mem, cfg.max_order);
        let mm: &'static mut [MaybeUninit<crate::PageDesc>] =
            Box::leak((0..len).map(|_| MaybeUninit::uninit()).collect());
        inits.push(NodeInit {
            memory: mem,
            distances: &dists[i],
            memmap: mm,
        });
    }
    let pcp: &'static mut [MaybeUninit<PerCpuPages>] = Box::leak(
        (0..pcp_storage_len(nr, cpus))
            .map(|_| MaybeUninit::uninit())
            .collect(),
    );
    BuddyAllocator::new(HostPlatform::new(cpus), cfg, &mut inits, pcp).unwrap()
}

/// An allocator over `nodes` with all memory freed and watermarks set.
pub(crate) fn build(nodes: &[&[PhysRange]], cfg: BuddyConfig, cpus: usize) -> TestBuddy {
    let b = build_reserved(nodes, cfg, cpus);
    for mem in nodes {
        for r in mem.iter() {
            b.free_boot_range(*r).unwrap();
        }
    }
    b.finish_boot();
    b.verify().unwrap();
    b
}

/// Config without per-CPU lists (deterministic zone-path behaviour).
pub(crate) fn no_pcp() -> BuddyConfig {
    BuddyConfig {
        per_cpu_lists: false,
        ..BuddyConfig::default()
    }
}

/// The extreme values every caller-supplied count and frame number is tried with.
pub(crate) const EXTREMES: [u64; 4] = [0, 1, u64::MAX - 1, u64::MAX];

/// Extreme frame numbers: [`EXTREMES`] plus the edges of the 52-bit physical space and of the
/// largest frame number whose address fits a `u64`.
pub(crate) const EXTREME_PFNS: [u64; 8] = [
    0,
    1,
    u64::MAX - 1,
    u64::MAX,
    (1 << 40) - 1,
    1 << 40,
    (u64::MAX >> 12) - 1,
    u64::MAX >> 12,
];

/// What a refused call must leave exactly as it was.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    free: u64,
    pcp: u64,
    managed: u64,
    buddyinfo: std::string::String,
    pagetypeinfo: std::string::String,
}

/// The counters and reports of `b`, after checking every invariant.
pub(crate) fn snapshot(b: &TestBuddy) -> Snapshot {
    b.verify().unwrap();
    Snapshot {
        free: b.total_free(),
        pcp: b.total_pcp(),
        managed: b.total_managed(),
        buddyinfo: std::format!("{}", b.buddyinfo()),
        pagetypeinfo: std::format!("{}", b.pagetypeinfo()),
    }
}
