//! Shared by the buddy examples: a one-node allocator with all its memory free, and the
//! workloads' xorshift generator.

use core::mem::MaybeUninit;

use mmkit_addr::host::HostPlatform;
use mmkit_addr::PhysRange;
use mmkit_buddy::{memmap_len, BuddyAllocator, BuddyConfig, NodeInit, PageDesc};

/// xorshift64: a fixed seed gives every configuration the same workload.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One node over `ram`, one CPU, no per-CPU storage, every frame freed and boot finished.
/// Its memmap is leaked (an example builds a handful).
pub fn one_node(ram: PhysRange, cfg: BuddyConfig) -> BuddyAllocator<'static, HostPlatform> {
    let ram: &'static [PhysRange] = Box::leak(Box::new([ram]));
    let memmap: &'static mut [MaybeUninit<PageDesc>] = Box::leak(
        (0..memmap_len(ram, cfg.max_order))
            .map(|_| MaybeUninit::uninit())
            .collect(),
    );
    let mut nodes = [NodeInit {
        memory: ram,
        distances: &[10],
        memmap,
    }];
    let b = BuddyAllocator::new(HostPlatform::new(1), cfg, &mut nodes, &mut []).unwrap();
    b.free_boot_range(ram[0]).unwrap();
    b.finish_boot();
    b
}
