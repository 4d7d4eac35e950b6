//! Contiguous allocation with migration: how many 2 MiB runs `alloc_contig_pages` gets out
//! of memory full of movable pages, against how many the free memory could make.
//!
//! Workload (same seed for every row): one node of `--memory-mib` MiB. Memory is filled with
//! movable blocks (orders 0 and 2, one in four of order 2) that all name a mover (the
//! workload's own table, repointed on migration as a kernel's rmap would be), until the
//! allocator refuses. Then blocks chosen at random are freed until the movable blocks hold
//! the row's *occupancy* of managed memory (50%: half of them freed at random). Then
//! `alloc_contig_pages(512)` is called until it fails, in one of three modes:
//!
//! * `free only`: a request that may not block (`GFP_MOVABLE` without direct reclaim) takes
//!   runs that are already free, as `alloc_contig_pages` did before migration;
//! * `migrate, no compaction`: `GFP_HIGHUSER_MOVABLE`, which migrates movable blocks out of
//!   the cheapest candidate runs, with `BuddyConfig::compaction` off;
//! * `migrate`: the same with compaction on (the default; `alloc_contig_pages` does not
//!   compact, but the allocations that fill memory may);
//! * `compact+migrate`: `compact_node` first (time shown apart), then as `migrate`.
//!
//! *Possible* is the free memory in whole runs (free frames ÷ 512): every allocated block has
//! a mover, so that is what migration could free at best. The table gives runs obtained,
//! possible, the share, migrations per run obtained, and the time per `alloc_contig_pages`
//! call that succeeded.
//!
//! Run: `cargo run --release -p mmkit-buddy --example contig -- [--memory-mib N]`

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{BuddyConfig, GfpFlags, IsolateError, MoveError, Mover};

mod common;
use common::Rng;

/// The workload's movable blocks: frame -> order. Migration moves the entry.
#[derive(Default)]
struct Owner(Mutex<HashMap<u64, u32>>);

impl Mover for Owner {
    fn isolate(&self, pfn: Pfn, order: Order, _: u64) -> Result<(), MoveError> {
        match self.0.lock().unwrap().get(&pfn.as_u64()) {
            Some(&o) if o == order.get() => Ok(()),
            _ => Err(MoveError::Refused),
        }
    }
    fn migrate(&self, src: Pfn, dst: Pfn, _: Order, private: u64) -> Result<u64, MoveError> {
        let mut t = self.0.lock().unwrap();
        let o = t.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
        t.insert(dst.as_u64(), o);
        Ok(private)
    }
    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    FreeOnly,
    MigrateNoCompaction,
    Migrate,
    CompactMigrate,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::FreeOnly => "free only",
            Mode::MigrateNoCompaction => "migrate, no compaction",
            Mode::Migrate => "migrate",
            Mode::CompactMigrate => "compact+migrate",
        }
    }
}

struct Row {
    obtained: u64,
    possible: u64,
    migrations: u64,
    us_per_run: f64,
    compact_ms: f64,
    /// The error that ended the run of requests.
    stop: IsolateError,
}

fn run(memory_mib: u64, occupancy: u64, mode: Mode) -> Row {
    let ram = [PhysRange::from_start_size(PhysAddr::new(1 << 32), memory_mib << 20).unwrap()];
    let cfg = BuddyConfig {
        per_cpu_lists: false,
        compaction: mode != Mode::MigrateNoCompaction,
        ..BuddyConfig::default()
    };
    let b = common::one_node(ram[0], cfg);
    let owner: &'static Owner = Box::leak(Box::default());
    let mover = b.register_mover(owner).unwrap();
    let managed = b.total_managed();

    // Fill until the allocator refuses.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut blocks: Vec<(u64, u32)> = Vec::new();
    let mut held = 0u64;
    loop {
        let order = if rng.next() % 4 == 0 { 2 } else { 0 };
        let Ok(p) = b.alloc_pages(GfpFlags::HIGHUSER_MOVABLE, Order::new(order)) else {
            if order == 0 {
                break;
            }
            continue;
        };
        owner.0.lock().unwrap().insert(p.as_u64(), order);
        b.set_mover(p, Order::new(order), Some(mover)).unwrap();
        blocks.push((p.as_u64(), order));
        held += 1 << order;
    }
    // Free at random down to the occupancy.
    let target = managed * occupancy / 100;
    while held > target && !blocks.is_empty() {
        let i = (rng.next() % blocks.len() as u64) as usize;
        let (p, o) = blocks.swap_remove(i);
        owner.0.lock().unwrap().remove(&p);
        b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
        held -= 1 << o;
    }
    let possible = b.total_free() / 512;

    let mut compact_ms = 0.0;
    if mode == Mode::CompactMigrate {
        let t = Instant::now();
        b.compact_node(0).unwrap();
        compact_ms = t.elapsed().as_secs_f64() * 1e3;
    }
    let gfp = match mode {
        Mode::FreeOnly => GfpFlags::MOVABLE,
        _ => GfpFlags::HIGHUSER_MOVABLE,
    };
    let (moved_before, _) = b.migrate_counts();
    let (mut obtained, mut secs) = (0u64, 0.0f64);
    let stop = loop {
        let t = Instant::now();
        match b.alloc_contig_pages(512, gfp, 0) {
            Ok(_) => {
                secs += t.elapsed().as_secs_f64();
                obtained += 1;
            }
            Err(e) => break e,
        }
    };
    let migrations = b.migrate_counts().0 - moved_before;
    b.verify().unwrap();
    assert_eq!(
        owner.0.lock().unwrap().len(),
        blocks.len(),
        "no movable block lost"
    );
    Row {
        obtained,
        possible,
        migrations,
        us_per_run: if obtained > 0 {
            secs * 1e6 / obtained as f64
        } else {
            0.0
        },
        compact_ms,
        stop,
    }
}

fn main() {
    let mut memory_mib = 256;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--memory-mib" => memory_mib = args.next().and_then(|v| v.parse().ok()).unwrap(),
            _ => panic!("unknown argument {a}"),
        }
    }
    println!("alloc_contig_pages(512) on {memory_mib} MiB full of movable blocks with a mover");
    println!();
    println!(
        "| occupancy | mode                   | runs obtained | runs possible | obtained % | migrations/run | µs/run | compaction ms | stopped by |"
    );
    println!(
        "|----------:|------------------------|--------------:|--------------:|-----------:|---------------:|-------:|--------------:|------------|"
    );
    for occupancy in [50, 70, 90] {
        for mode in [
            Mode::FreeOnly,
            Mode::MigrateNoCompaction,
            Mode::Migrate,
            Mode::CompactMigrate,
        ] {
            let r = run(memory_mib, occupancy, mode);
            let share = if r.possible > 0 {
                100.0 * r.obtained as f64 / r.possible as f64
            } else {
                0.0
            };
            let per_run = if r.obtained > 0 {
                r.migrations as f64 / r.obtained as f64
            } else {
                0.0
            };
            println!(
                "| {occupancy:>8}% | {:<22} | {:>13} | {:>13} | {share:>9.1}% | {per_run:>14.1} | {:>6.0} | {:>13.1} | {:?} |",
                mode.name(),
                r.obtained,
                r.possible,
                r.us_per_run,
                r.compact_ms,
                r.stop,
            );
        }
    }
}
