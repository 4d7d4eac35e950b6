//! Fragmentation under pressure: memory held nearly full while unmovable demand keeps
//! growing, the case where grouping by mobility alone falls apart.
//!
//! Workload (same seed for every configuration): one node; allocations are unmovable
//! (`GFP_KERNEL`: kmalloc-like, mostly order 0, some order 1..3, long-lived, a few freed),
//! reclaimable and movable (orders 0..=3, mostly 0). The unmovable target grows linearly
//! from 2% to `--unmovable` of memory over the run; the rest is filled with reclaimable and
//! movable memory up to `--occupancy`, and "reclaim" frees the oldest reclaimable and movable
//! allocations whenever memory is above it (`--random-reclaim`% of the victims anywhere in the
//! list instead). Every movable allocation names a mover (the
//! workload's own table), so migration can move it. At the end the movable and reclaimable
//! memory is freed and the run reports:
//!
//! * the share of free memory obtainable as order-9 (2 MiB) blocks;
//! * the spread ratio: share of pageblocks holding any unmovable page ÷ share of memory that
//!   is unmovable (1.0 = perfectly packed);
//! * compaction's counters and the time the churn took.
//!
//! Run: `cargo run --release -p mmkit-buddy --example pressure -- [--memory-mib N]
//! [--occupancy PCT] [--unmovable PCT] [--steps N] [--lifetime N] [--random-reclaim PCT]
//! [--only 0|1|2]`

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{BuddyConfig, GfpFlags, MigrateType, MoveError, Mover};

mod common;
use common::Rng;

/// The workload's table of movable blocks: allocation id -> frame, and back. Migration
/// repoints it, as a kernel's page owner (an rmap) would.
#[derive(Default)]
struct Table {
    pfn_of: HashMap<u64, u64>,
    id_of: HashMap<u64, u64>,
}

#[derive(Default)]
struct Owner(Mutex<Table>);

impl Mover for Owner {
    fn isolate(&self, pfn: Pfn, _: Order, _: u64) -> Result<(), MoveError> {
        if self.0.lock().unwrap().id_of.contains_key(&pfn.as_u64()) {
            Ok(())
        } else {
            Err(MoveError::Refused)
        }
    }
    fn migrate(&self, src: Pfn, dst: Pfn, _: Order, private: u64) -> Result<u64, MoveError> {
        let mut t = self.0.lock().unwrap();
        let id = t.id_of.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
        t.id_of.insert(dst.as_u64(), id);
        t.pfn_of.insert(id, dst.as_u64());
        Ok(private)
    }
    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}

#[derive(Clone, Copy)]
struct Params {
    memory_mib: u64,
    occupancy: u64,
    unmovable: u64,
    steps: usize,
    /// Steps an unmovable allocation lives before it may be freed.
    lifetime: u64,
    /// Percentage of reclaim victims taken at random rather than oldest first.
    random_reclaim: u64,
}

struct Outcome {
    order9: f64,
    spread: f64,
    unmovable_share: f64,
    secs: f64,
    migrated: u64,
}

fn run(name: &str, p: Params, grouping: bool, compaction: bool) -> Outcome {
    let bytes = p.memory_mib << 20;
    let ram = [PhysRange::from_start_size(PhysAddr::new(1 << 32), bytes).unwrap()];
    let cfg = BuddyConfig {
        per_cpu_lists: false,
        mobility_grouping: grouping,
        compaction,
        ..BuddyConfig::default()
    };
    let b = common::one_node(ram[0], cfg);
    let owner: &'static Owner = Box::leak(Box::default());
    let mover = b.register_mover(owner).unwrap();
    let managed = b.total_managed();

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Unmovable blocks: (pfn, order, step allocated).
    let mut unmovable: Vec<(u64, u32, usize)> = Vec::new();
    let mut unmovable_pages = 0u64;
    // Reclaimable and movable blocks, oldest first: (id, order, type, pfn for reclaimable).
    let mut lru: VecDeque<(u64, u32, MigrateType, u64)> = VecDeque::new();
    let mut used = 0u64;
    let mut next_id = 0u64;
    let start = Instant::now();
    for step in 0..p.steps {
        // The kernel's kcompactd thread, woken now and then (with compaction on).
        if compaction && step % 2000 == 0 && b.kcompactd_pending(0) {
            b.kcompactd_step(0).unwrap();
        }
        let r = rng.next();
        let grown = 2 + (p.unmovable.saturating_sub(2)) * step as u64 / p.steps as u64;
        let unmovable_target = managed * grown / 100;
        // A few unmovable frees: objects older than their lifetime go at random.
        if r % 16 == 0 && !unmovable.is_empty() {
            let i = (r >> 20) as usize % unmovable.len();
            let (pfn, o, born) = unmovable[i];
            if (step - born) as u64 > p.lifetime {
                unmovable.swap_remove(i);
                b.free_pages(Pfn::new(pfn), Order::new(o)).unwrap();
                unmovable_pages -= 1 << o;
                used -= 1 << o;
            }
        }
        if used >= managed * p.occupancy / 100 {
            // Reclaim: the oldest reclaimable / movable allocations go.
            while used >= managed * (p.occupancy - 1) / 100 {
                // Reclaim takes the oldest, except that `random_reclaim`% of the victims
                // are anywhere in the list (pages of short and mixed lifetimes).
                let r = rng.next();
                let victim = if r % 100 < p.random_reclaim && !lru.is_empty() {
                    let i = (r >> 8) as usize % lru.len();
                    lru.swap_remove_back(i)
                } else {
                    lru.pop_front()
                };
                let Some((id, o, mt, pfn)) = victim else {
                    break;
                };
                let pfn = if mt == MigrateType::Movable {
                    let mut t = owner.0.lock().unwrap();
                    let pfn = t.pfn_of.remove(&id).unwrap();
                    t.id_of.remove(&pfn);
                    pfn
                } else {
                    pfn
                };
                b.free_pages(Pfn::new(pfn), Order::new(o)).unwrap();
                used -= 1 << o;
            }
            continue;
        }
        let want_unmovable = unmovable_pages < unmovable_target;
        let (gfp, mt) = if want_unmovable && r % 4 != 0 {
            (GfpFlags::KERNEL, MigrateType::Unmovable)
        } else if r % 10 < 3 {
            (GfpFlags::KERNEL_RECLAIMABLE, MigrateType::Reclaimable)
        } else {
            (GfpFlags::HIGHUSER_MOVABLE, MigrateType::Movable)
        };
        let order = [0, 0, 0, 0, 0, 0, 1, 2, 3][(r >> 8) as usize % 9];
        let Ok(pfn) = b.alloc_pages(gfp, Order::new(order)) else {
            continue;
        };
        used += 1 << order;
        match mt {
            MigrateType::Unmovable => {
                unmovable.push((pfn.as_u64(), order, step));
                unmovable_pages += 1 << order;
            }
            MigrateType::Movable => {
                let id = next_id;
                next_id += 1;
                {
                    let mut t = owner.0.lock().unwrap();
                    t.pfn_of.insert(id, pfn.as_u64());
                    t.id_of.insert(pfn.as_u64(), id);
                }
                b.set_mover(pfn, Order::new(order), Some(mover)).unwrap();
                lru.push_back((id, order, mt, 0));
            }
            _ => lru.push_back((0, order, mt, pfn.as_u64())),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    b.verify().unwrap();
    // Reclaim and migration empty everything but unmovable memory.
    for (id, o, mt, pfn) in lru {
        let pfn = if mt == MigrateType::Movable {
            owner.0.lock().unwrap().pfn_of[&id]
        } else {
            pfn
        };
        b.free_pages(Pfn::new(pfn), Order::new(o)).unwrap();
    }
    b.verify().unwrap();
    let free = b.total_free();
    let order9 = b.free_pages_at_order(9) as f64 / free as f64;
    let c = b.pageblock_census();
    let holding = c.holding[MigrateType::Unmovable.index()] as f64 / c.total as f64;
    let unmovable_share = unmovable_pages as f64 / managed as f64;
    let s = b.compact_stats();
    let out = Outcome {
        order9,
        spread: holding / unmovable_share.max(1e-9),
        unmovable_share,
        secs,
        migrated: s.pgmigrate_success,
    };
    println!(
        "{:<34} {:>6.1}% {:>10.1}% {:>7.2} {:>8.2}s {:>10} {:>10}",
        name,
        out.unmovable_share * 100.0,
        out.order9 * 100.0,
        out.spread,
        out.secs,
        out.migrated,
        s.compact_evacuated,
    );
    out
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let p = Params {
        memory_mib: arg(&args, "--memory-mib", 1024),
        occupancy: arg(&args, "--occupancy", 95),
        unmovable: arg(&args, "--unmovable", 12),
        steps: arg(&args, "--steps", 600_000) as usize,
        lifetime: arg(&args, "--lifetime", 200_000),
        random_reclaim: arg(&args, "--random-reclaim", 50),
    };
    println!(
        "{} MiB, {} steps at {}% occupancy, unmovable demand growing to {}%, unmovable \
         lifetime {} steps, {}% of reclaim at random; then movable+reclaimable freed\n",
        p.memory_mib, p.steps, p.occupancy, p.unmovable, p.lifetime, p.random_reclaim
    );
    println!(
        "{:<34} {:>7} {:>11} {:>7} {:>9} {:>10} {:>10}",
        "configuration", "unmov", "free@order9", "spread", "churn", "migrated", "evacuated"
    );
    // `--only N` runs one configuration (for profilers): 0 off, 1 on without compaction, 2 on.
    let only = arg(&args, "--only", u64::MAX);
    let configs = [
        ("grouping off", false, false),
        ("grouping on, compaction off", true, false),
        ("grouping on, compaction on", true, true),
    ];
    for (i, (name, grouping, compaction)) in configs.into_iter().enumerate() {
        if only == u64::MAX || only == i as u64 {
            run(name, p, grouping, compaction);
        }
    }
}
