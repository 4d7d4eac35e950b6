//! Shared scaffolding for the integration tests: allocators over leaked host storage.
#![allow(dead_code)]

use core::mem::MaybeUninit;

use mmkit_addr::host::HostPlatform;
use mmkit_addr::{PhysAddr, PhysRange};
use mmkit_buddy::{
    memmap_len, pcp_storage_len, BuddyAllocator, BuddyConfig, NodeInit, PageDesc, PerCpuPages,
};

/// The allocator type the tests use.
pub type TestBuddy = BuddyAllocator<'static, HostPlatform>;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// `[start, start + len)` in MiB.
pub fn mib(start_mib: u64, len_mib: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start_mib * MIB), len_mib * MIB).unwrap()
}

/// An allocator over `nodes` with every range freed and watermarks computed.
pub fn build(nodes: &[&[PhysRange]], cfg: BuddyConfig, cpus: usize) -> TestBuddy {
    build_freeing(nodes, cfg, cpus, &[])
}

/// As [`build`], but the ranges in `keep` (of any node) stay reserved: present memory the
/// boot allocator never handed over.
pub fn build_freeing(
    nodes: &[&[PhysRange]],
    cfg: BuddyConfig,
    cpus: usize,
    keep: &[PhysRange],
) -> TestBuddy {
    let nr = nodes.len();
    let dists: Vec<Vec<u8>> = (0..nr)
        .map(|i| (0..nr).map(|j| if i == j { 10 } else { 20 }).collect())
        .collect();
    let mut inits = Vec::new();
    for (i, mem) in nodes.iter().enumerate() {
        let len = memmap_len(mem, cfg.max_order);
        let mm: &'static mut [MaybeUninit<PageDesc>] =
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
    let b = BuddyAllocator::new(HostPlatform::new(cpus), cfg, &mut inits, pcp).unwrap();
    for mem in nodes {
        for r in mem.iter().filter(|r| !keep.contains(r)) {
            b.free_boot_range(*r).unwrap();
        }
    }
    b.finish_boot();
    b
}

pub mod owner;
