//! Compaction racing allocation: worker threads (as CPUs) allocate movable blocks that name a
//! mover and unmovable ones, write their tag into every frame of a simulated memory, and free
//! them, while another thread compacts, migrates and verifies. The mover copies the frames
//! and repoints the owner's table, as a kernel's would. At the end every live block still
//! holds its tag in every frame, nothing was handed out twice, and after freeing everything
//! the free count is what it was.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use common::{build, mib, TestBuddy};
use mmkit_addr::{Order, Pfn};
use mmkit_buddy::{BuddyConfig, FreeError, GfpFlags, MigrateError, MoveError, Mover, ZoneType};

const FRAMES: usize = 64 * 256;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
struct Block {
    pfn: u64,
    order: u32,
    isolated: bool,
}

/// The owner of every movable block: tag -> block, and the frames' simulated contents.
struct Owner {
    blocks: Mutex<(HashMap<u64, Block>, HashMap<u64, u64>)>,
    memory: Vec<AtomicU64>,
    moved: AtomicU64,
}

impl Owner {
    fn write(&self, pfn: u64, order: u32, tag: u64) {
        for f in pfn..pfn + (1 << order) {
            self.memory[f as usize].store(tag, Relaxed);
        }
    }
    fn holds(&self, pfn: u64, order: u32, tag: u64) -> bool {
        (pfn..pfn + (1 << order)).all(|f| self.memory[f as usize].load(Relaxed) == tag)
    }
}

impl Mover for Owner {
    fn isolate(&self, pfn: Pfn, order: Order, _: u64) -> Result<(), MoveError> {
        let mut g = self.blocks.lock().unwrap();
        let (by_tag, by_pfn) = &mut *g;
        let tag = *by_pfn.get(&pfn.as_u64()).ok_or(MoveError::Refused)?;
        let b = by_tag.get_mut(&tag).ok_or(MoveError::Refused)?;
        assert_eq!(b.order, order.get());
        assert!(!b.isolated, "isolated twice");
        b.isolated = true;
        Ok(())
    }
    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError> {
        let mut g = self.blocks.lock().unwrap();
        let (by_tag, by_pfn) = &mut *g;
        let tag = by_pfn.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
        let (s, d, o) = (src.as_u64(), dst.as_u64(), order.get());
        assert!(
            self.holds(s, o, tag),
            "source lost its contents before the move"
        );
        for i in 0..1u64 << o {
            let v = self.memory[(s + i) as usize].load(Relaxed);
            self.memory[(d + i) as usize].store(v, Relaxed);
        }
        by_pfn.insert(d, tag);
        let b = by_tag.get_mut(&tag).unwrap();
        b.pfn = d;
        b.isolated = false;
        self.moved.fetch_add(1, Relaxed);
        Ok(private)
    }
    fn putback(&self, pfn: Pfn, _: Order, _: u64) {
        let mut g = self.blocks.lock().unwrap();
        let (by_tag, by_pfn) = &mut *g;
        if let Some(tag) = by_pfn.get(&pfn.as_u64()) {
            by_tag.get_mut(tag).unwrap().isolated = false;
        }
    }
}

fn free_frames(b: &TestBuddy) -> u64 {
    ZoneType::ALL
        .iter()
        .filter_map(|&z| b.zone_stats(0, z))
        .map(|s| s.free)
        .sum()
}

/// Free a block of ours, waiting while it is isolated or being migrated.
fn release(b: &TestBuddy, owner: &Owner, tag: u64) {
    let (pfn, order) = loop {
        let mut g = owner.blocks.lock().unwrap();
        let (by_tag, by_pfn) = &mut *g;
        let blk = by_tag[&tag];
        if blk.isolated {
            drop(g);
            std::thread::yield_now();
            continue;
        }
        by_tag.remove(&tag);
        by_pfn.remove(&blk.pfn);
        break (blk.pfn, blk.order);
    };
    assert!(
        owner.holds(pfn, order, tag),
        "block {tag} lost its contents"
    );
    loop {
        match b.free_pages(Pfn::new(pfn), Order::new(order)) {
            Ok(()) => break,
            // A migration claimed it just before we took it out of the table; its isolate
            // will find nothing and end the migration.
            Err(FreeError::Migrating) => std::thread::yield_now(),
            Err(e) => panic!("free of {pfn:#x}: {e:?}"),
        }
    }
}

fn race(cfg: BuddyConfig, workers: usize, iters: usize) {
    let b: &'static TestBuddy = Box::leak(Box::new(build(&[&[mib(0, 64)]], cfg, workers)));
    let owner: &'static Owner = Box::leak(Box::new(Owner {
        blocks: Mutex::new((HashMap::new(), HashMap::new())),
        memory: (0..FRAMES).map(|_| AtomicU64::new(0)).collect(),
        moved: AtomicU64::new(0),
    }));
    let id = b.register_mover(owner).unwrap();
    b.drain_all_pages();
    let free_at_start = free_frames(b);
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut passes = 0u64;
            while !stop.load(Relaxed) {
                let z = if passes % 2 == 0 {
                    ZoneType::Dma32
                } else {
                    ZoneType::Dma
                };
                let order = [None, Some(3), Some(9)][(passes % 3) as usize];
                b.compact_zone(0, z, order).unwrap();
                b.verify().unwrap();
                passes += 1;
            }
            passes
        })
    };
    let handles: Vec<_> = (0..workers)
        .map(|t| {
            std::thread::spawn(move || {
                b.platform().bind_current_thread(t);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut mine: Vec<u64> = Vec::new();
                let mut pinned: Vec<(u64, u32, u64)> = Vec::new();
                for i in 0..iters {
                    let r = rng.next();
                    let tag = ((t as u64) << 48) | i as u64 | 1 << 40;
                    if r % 100 < 55 {
                        let order = (r >> 8) as u32 % 4;
                        let unmovable = r % 9 == 0;
                        let gfp = if unmovable {
                            GfpFlags::KERNEL
                        } else {
                            GfpFlags::MOVABLE
                        };
                        let Ok(p) = b.alloc_pages(gfp, Order::new(order)) else {
                            continue;
                        };
                        let pfn = p.as_u64();
                        if unmovable {
                            owner.write(pfn, order, tag);
                            pinned.push((pfn, order, tag));
                            continue;
                        }
                        // Table first, then the mover id: a block is movable only once
                        // its owner can find it.
                        {
                            let mut g = owner.blocks.lock().unwrap();
                            owner.write(pfn, order, tag);
                            g.0.insert(
                                tag,
                                Block {
                                    pfn,
                                    order,
                                    isolated: false,
                                },
                            );
                            g.1.insert(pfn, tag);
                        }
                        b.set_mover(p, Order::new(order), Some(id)).unwrap();
                        mine.push(tag);
                    } else if r % 100 < 90 && !mine.is_empty() {
                        let tag = mine.swap_remove((r >> 16) as usize % mine.len());
                        release(b, owner, tag);
                    } else if !pinned.is_empty() {
                        let (pfn, order, tag) =
                            pinned.swap_remove((r >> 16) as usize % pinned.len());
                        assert!(owner.holds(pfn, order, tag));
                        b.free_pages(Pfn::new(pfn), Order::new(order)).unwrap();
                    }
                }
                (mine, pinned)
            })
        })
        .collect();
    let left: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Relaxed);
    let passes = compactor.join().unwrap();
    assert!(passes > 0);
    eprintln!(
        "passes {passes}, moved during the race {}",
        owner.moved.load(Relaxed)
    );
    b.verify().unwrap();
    // One more full pass with nothing racing, then a direct migration of each survivor.
    b.compact_node(0).unwrap();
    let survivors: Vec<(u64, u64, u32)> = {
        let g = owner.blocks.lock().unwrap();
        g.0.iter()
            .map(|(&t, blk)| (t, blk.pfn, blk.order))
            .collect()
    };
    for &(tag, pfn, order) in &survivors {
        assert!(owner.holds(pfn, order, tag), "block {tag:#x} at {pfn:#x}");
        match b.migrate_block(Pfn::new(pfn), Order::new(order), None) {
            Ok(_) | Err(MigrateError::NoTarget) => {}
            Err(e) => panic!("migrating a quiet block: {e:?}"),
        }
    }
    assert!(owner.moved.load(Relaxed) > 0, "nothing ever moved");
    for (mine, pinned) in left {
        for tag in mine {
            release(b, owner, tag);
        }
        for (pfn, order, tag) in pinned {
            assert!(owner.holds(pfn, order, tag));
            b.free_pages(Pfn::new(pfn), Order::new(order)).unwrap();
        }
    }
    b.drain_all_pages();
    b.verify().unwrap();
    assert_eq!(free_frames(b), free_at_start, "every frame came back");
    let s = b.compact_stats();
    assert!(s.pgmigrate_success >= owner.moved.load(Relaxed));
}

#[test]
fn compaction_races_allocation_on_per_cpu_lists() {
    race(BuddyConfig::default(), 2, 20_000);
}

#[test]
fn compaction_races_allocation_on_the_zone_path() {
    race(
        BuddyConfig {
            per_cpu_lists: false,
            ..BuddyConfig::default()
        },
        3,
        15_000,
    );
}
