//! Multi-threaded stress: threads as CPUs allocate through their per-CPU lists, free locally
//! and remotely (blocks passed to another thread), drain, while another thread runs
//! `verify()`. A shared frame map checks that no frame is ever handed out twice.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};

use common::{build, mib};
use mmkit_addr::{Order, Pfn};
use mmkit_buddy::{BuddyConfig, GfpFlags};

const FLAGS: [GfpFlags; 4] = [
    GfpFlags::KERNEL,
    GfpFlags::HIGHUSER_MOVABLE,
    GfpFlags::KERNEL_RECLAIMABLE,
    GfpFlags::ATOMIC,
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn take(map: &[AtomicU8], pfn: u64, order: u32) {
    for f in pfn..pfn + (1 << order) {
        let was = map[f as usize].swap(1, Ordering::AcqRel);
        assert_eq!(was, 0, "frame {f:#x} handed out twice");
    }
}

fn give(map: &[AtomicU8], pfn: u64, order: u32) {
    for f in pfn..pfn + (1 << order) {
        map[f as usize].store(0, Ordering::Release);
    }
}

fn stress(threads: usize, cpus: usize, iters: usize) {
    let b = Arc::new(build(&[&[mib(16, 48)]], BuddyConfig::default(), cpus));
    let managed = b.total_managed();
    let map: Arc<Vec<AtomicU8>> = Arc::new((0..64 * 256).map(|_| AtomicU8::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // Another thread verifies, drains every CPU's lists and takes contiguous runs while
    // the workers allocate (isolation and remote drains racing the per-CPU fast path).
    let verifier = {
        let (b, stop, map) = (b.clone(), stop.clone(), map.clone());
        std::thread::spawn(move || {
            let (mut runs, mut contig) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                b.verify().unwrap();
                b.drain_all_pages();
                if let Ok(p) = b.alloc_contig_pages(600, GfpFlags::HIGHUSER_MOVABLE, 0) {
                    for f in p.as_u64()..p.as_u64() + 600 {
                        take(&map, f, 0);
                    }
                    for f in p.as_u64()..p.as_u64() + 600 {
                        give(&map, f, 0);
                    }
                    b.free_contig_range(p, 600).unwrap();
                    contig += 1;
                }
                runs += 1;
            }
            (runs, contig)
        })
    };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<(u64, u32)>()).unzip();
    let mut handles = Vec::new();
    for (t, rx) in rxs.into_iter().enumerate() {
        let (b, map) = (b.clone(), map.clone());
        let tx = txs[(t + 1) % threads].clone();
        handles.push(std::thread::spawn(move || {
            b.platform().bind_current_thread(t);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
            let mut mine: Vec<(u64, u32)> = Vec::new();
            for i in 0..iters {
                let r = rng.next();
                match r % 8 {
                    0..=3 => {
                        let order = [0, 0, 0, 1, 2, 3, 5, 9][(r >> 8) as usize % 8];
                        let flags = FLAGS[(r >> 16) as usize % FLAGS.len()];
                        if let Ok(p) = b.alloc_pages(flags, Order::new(order)) {
                            take(&map, p.as_u64(), order);
                            mine.push((p.as_u64(), order));
                        }
                    }
                    4 | 5 if !mine.is_empty() => {
                        let (p, o) = mine.swap_remove((r >> 8) as usize % mine.len());
                        give(&map, p, o);
                        b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
                    }
                    6 if !mine.is_empty() => {
                        // Hand the block to another thread, which frees it on its CPU.
                        let blk = mine.swap_remove((r >> 8) as usize % mine.len());
                        let _ = tx.send(blk);
                    }
                    _ => {}
                }
                while let Ok((p, o)) = rx.try_recv() {
                    give(&map, p, o);
                    b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
                }
                if i % 997 == 0 {
                    b.drain_local_pages();
                }
            }
            drop(tx);
            for (p, o) in mine {
                give(&map, p, o);
                b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
            }
            rx
        }));
    }
    drop(txs);
    let rxs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for rx in rxs {
        while let Ok((p, o)) = rx.try_recv() {
            give(&map, p, o);
            b.free_pages(Pfn::new(p), Order::new(o)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, contig) = verifier.join().unwrap();
    assert!(runs > 0);
    eprintln!("verify/drain rounds: {runs}, contiguous runs taken: {contig}");
    b.drain_all_pages();
    b.verify().unwrap();
    assert_eq!(b.total_free(), managed, "every frame came back");
}

#[test]
fn threads_on_their_own_cpus_never_share_a_frame() {
    stress(4, 4, 4000);
}

#[test]
fn threads_sharing_cpus_never_share_a_frame() {
    stress(4, 2, 3000);
}
