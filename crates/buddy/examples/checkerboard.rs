//! compaction_test-style experiment: fill memory with movable order-0 pages that name a
//! mover, free a pattern of them, and measure how much of the free memory compaction turns
//! into order-9 (2 MiB) blocks, and at what cost (frames scanned and pages migrated per huge
//! page obtained, time per huge page).
//!
//! Patterns: every other page (Linux's selftest, which passes at one third), three of four
//! pages freed, one of four freed, and a random half. Run:
//! `cargo run --release -p mmkit-buddy --example checkerboard -- [--memory-mib N]`

use core::mem::MaybeUninit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use mmkit_addr::host::HostPlatform;
use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{
    memmap_len, BuddyAllocator, BuddyConfig, GfpFlags, MoveError, Mover, NodeInit, PageDesc,
};

/// The owner: page -> tag, repointed by migration.
#[derive(Default)]
struct Owner(Mutex<HashMap<u64, u64>>);

impl Mover for Owner {
    fn isolate(&self, pfn: Pfn, _: Order, _: u64) -> Result<(), MoveError> {
        if self.0.lock().unwrap().contains_key(&pfn.as_u64()) {
            Ok(())
        } else {
            Err(MoveError::Refused)
        }
    }
    fn migrate(&self, src: Pfn, dst: Pfn, _: Order, private: u64) -> Result<u64, MoveError> {
        let mut t = self.0.lock().unwrap();
        let tag = t.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
        t.insert(dst.as_u64(), tag);
        Ok(private)
    }
    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}

fn run(name: &str, memory_mib: u64, per_cpu: bool, keep: impl Fn(usize, u64) -> bool) {
    let ram = [PhysRange::from_start_size(PhysAddr::new(1 << 32), memory_mib << 20).unwrap()];
    let cfg = BuddyConfig {
        per_cpu_lists: per_cpu,
        ..BuddyConfig::default()
    };
    let mut memmap: Vec<MaybeUninit<PageDesc>> = (0..memmap_len(&ram, cfg.max_order))
        .map(|_| MaybeUninit::uninit())
        .collect();
    let mut pcp: Vec<MaybeUninit<mmkit_buddy::PerCpuPages>> =
        (0..mmkit_buddy::pcp_storage_len(1, 1))
            .map(|_| MaybeUninit::uninit())
            .collect();
    let mut nodes = [NodeInit {
        memory: &ram,
        distances: &[10],
        memmap: &mut memmap,
    }];
    let b = BuddyAllocator::new(HostPlatform::new(1), cfg, &mut nodes, &mut pcp).unwrap();
    b.free_boot_range(ram[0]).unwrap();
    b.finish_boot();
    let owner: &'static Owner = Box::leak(Box::default());
    let id = b.register_mover(owner).unwrap();
    let mut pages = Vec::new();
    while let Ok(p) = b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::ZERO) {
        pages.push(p);
    }
    pages.sort_unstable();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for (i, p) in pages.iter().enumerate() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if keep(i, rng) {
            owner.0.lock().unwrap().insert(p.as_u64(), i as u64);
            b.set_mover(*p, Order::ZERO, Some(id)).unwrap();
        } else {
            b.free_pages(*p, Order::ZERO).unwrap();
        }
    }
    b.drain_all_pages();
    let free = b.free_pages_at_order(0);
    let before = b.free_pages_at_order(9) >> 9;
    let start = Instant::now();
    b.compact_node(0).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let after = b.free_pages_at_order(9) >> 9;
    b.verify().unwrap();
    let s = b.compact_stats();
    let gained = (after - before).max(1) as f64;
    println!(
        "{:<26} {:>6.1}% {:>9} {:>9} {:>8.1}% {:>12.0} {:>10.0} {:>10.1}",
        name,
        100.0 * owner.0.lock().unwrap().len() as f64 / pages.len() as f64,
        before,
        after,
        100.0 * (after << 9) as f64 / free as f64,
        (s.compact_migrate_scanned + s.compact_free_scanned) as f64 / gained,
        s.pgmigrate_success as f64 / gained,
        secs * 1e6 / gained,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let memory_mib = args
        .iter()
        .position(|a| a == "--memory-mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024u64);
    println!(
        "{memory_mib} MiB filled with movable order-0 pages (each with a mover), a pattern \
         freed, then one full compaction pass\n"
    );
    println!(
        "{:<26} {:>7} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10}",
        "pattern (per-CPU lists)",
        "live",
        "2M before",
        "2M after",
        "of free",
        "scanned/2M",
        "moved/2M",
        "us/2M"
    );
    for per_cpu in [false, true] {
        let tag = if per_cpu { "on" } else { "off" };
        run(
            &format!("every other freed ({tag})"),
            memory_mib,
            per_cpu,
            |i, _| i % 2 == 1,
        );
        run(
            &format!("3 of 4 freed ({tag})"),
            memory_mib,
            per_cpu,
            |i, _| i % 4 == 3,
        );
        run(
            &format!("1 of 4 freed ({tag})"),
            memory_mib,
            per_cpu,
            |i, _| i % 4 != 3,
        );
        run(
            &format!("random half ({tag})"),
            memory_mib,
            per_cpu,
            |_, r| r % 2 == 0,
        );
    }
}
