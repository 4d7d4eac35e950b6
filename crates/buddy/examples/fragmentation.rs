//! Fragmentation experiment: how much free memory is still available as 2 MiB (order-9)
//! blocks after a long churn of mixed allocations, with grouping by mobility on, off, and
//! with a ZONE_MOVABLE.
//!
//! Workload (same seed for every configuration): 1 GiB of memory on one node; allocations
//! are 10% unmovable (`GFP_KERNEL`), 20% reclaimable (`GFP_KERNEL | __GFP_RECLAIMABLE`),
//! 70% movable (`GFP_HIGHUSER_MOVABLE`), of orders 0..=3 (mostly 0); the live set is churned
//! around 90% of memory by freeing random victims. At the end the movable and reclaimable
//! allocations are freed (reclaim / migration would do that) and we report the share of free
//! memory obtainable as order-9 blocks, and how many pageblocks hold unmovable pages.
//!
//! Run: `cargo run --release -p mmkit-buddy --example fragmentation`

use mmkit_addr::{Order, Pfn, PhysAddr, PhysRange};
use mmkit_buddy::{BuddyConfig, CoreSize, GfpFlags, MigrateType};

const MEMORY: u64 = 1 << 30;
const STEPS: usize = 400_000;

mod common;
use common::Rng;

struct Outcome {
    free_mib: u64,
    order9_share: f64,
    unmovable_blocks: u64,
    total_blocks: u64,
    unmovable_mib: u64,
}

fn run(name: &str, grouping: bool, movablecore: Option<CoreSize>) -> Outcome {
    let ram = [PhysRange::from_start_size(PhysAddr::new(0), MEMORY).unwrap()];
    let cfg = BuddyConfig {
        per_cpu_lists: false,
        mobility_grouping: grouping,
        movablecore,
        ..BuddyConfig::default()
    };
    let b = common::one_node(ram[0], cfg);
    let managed = b.total_managed();
    let movable_mib = b
        .zone_stats(0, mmkit_buddy::ZoneType::Movable)
        .map_or(0, |z| (z.managed * 4096) >> 20);

    let kinds = [
        (GfpFlags::KERNEL, MigrateType::Unmovable),
        (GfpFlags::KERNEL_RECLAIMABLE, MigrateType::Reclaimable),
        (GfpFlags::HIGHUSER_MOVABLE, MigrateType::Movable),
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut live: Vec<(u64, u32, MigrateType)> = Vec::new();
    let mut used = 0u64;
    for _ in 0..STEPS {
        let r = rng.next();
        if used < managed * 9 / 10 {
            let kind = match r % 10 {
                0 => 0,
                1 | 2 => 1,
                _ => 2,
            };
            let order = [0, 0, 0, 0, 0, 1, 2, 3][(r >> 8) as usize % 8];
            let (gfp, mt) = kinds[kind];
            if let Ok(p) = b.alloc_pages(gfp, Order::new(order)) {
                live.push((p.as_u64(), order, mt));
                used += 1 << order;
            }
        } else {
            let i = (r >> 16) as usize % live.len();
            let (p, o, _) = live.swap_remove(i);
            b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
            used -= 1 << o;
        }
    }
    // The workload frees (or reclaim/migration empties) everything but unmovable memory.
    let mut unmovable = 0;
    for (p, o, mt) in live {
        if mt == MigrateType::Unmovable {
            unmovable += 1u64 << o;
        } else {
            b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
        }
    }
    b.verify().unwrap();
    let free = b.total_free();
    let share = b.free_pages_at_order(9) as f64 / free as f64;
    let c = b.pageblock_census();
    let out = Outcome {
        free_mib: (free * 4096) >> 20,
        order9_share: share,
        unmovable_blocks: c.holding[MigrateType::Unmovable.index()],
        total_blocks: c.total,
        unmovable_mib: (unmovable * 4096) >> 20,
    };
    println!(
        "{:<32} {:>8} {:>9} {:>10} {:>11.1}% {:>8} / {:<6} {:>6.1}%",
        name,
        movable_mib,
        out.unmovable_mib,
        out.free_mib,
        out.order9_share * 100.0,
        out.unmovable_blocks,
        out.total_blocks,
        out.unmovable_blocks as f64 * 100.0 / out.total_blocks as f64,
    );
    out
}

fn main() {
    println!("1 GiB, {STEPS} churn steps at ~90% occupancy, then movable+reclaimable freed\n");
    println!(
        "{:<32} {:>8} {:>9} {:>10} {:>12} {:>17} {:>7}",
        "configuration",
        "MOVABLE",
        "unmov MiB",
        "free MiB",
        "free@order9",
        "blocks w/ unmov",
        "share"
    );
    let on = run("grouping on", true, None);
    let off = run("grouping off", false, None);
    let zm = run(
        "grouping on + ZONE_MOVABLE 50%",
        true,
        Some(CoreSize::Percent(50)),
    );
    let zm_off = run(
        "grouping off + ZONE_MOVABLE 50%",
        false,
        Some(CoreSize::Percent(50)),
    );
    println!();
    println!(
        "order-9 share: on/off = {:.1}x; with ZONE_MOVABLE: on {:.2}x of on, off {:.1}x of off",
        on.order9_share / off.order9_share.max(1e-9),
        zm.order9_share / on.order9_share.max(1e-9),
        zm_off.order9_share / off.order9_share.max(1e-9)
    );
}
