//! Multi-threaded stress: threads as CPUs, objects allocated on one CPU and freed on another,
//! contents checked on the receiving side, invariants verified after the threads join.

use std::ptr::NonNull;
use std::sync::mpsc;

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{Cache, CacheConfig, CacheFlags, Gfp, Kmalloc};

const ROUNDS: usize = 20_000;

fn stamp(p: NonNull<u8>, len: usize, v: u64) {
    for i in (0..len / 8 * 8).step_by(8) {
        // SAFETY: the writer owns the object and `i + 8 <= len`.
        unsafe {
            p.as_ptr()
                .add(i)
                .cast::<u64>()
                .write_unaligned(v ^ i as u64)
        };
    }
}

fn check(p: NonNull<u8>, len: usize, v: u64) -> bool {
    (0..len / 8 * 8).step_by(8).all(|i| {
        // SAFETY: the receiver owns the object now and `i + 8 <= len`.
        unsafe { p.as_ptr().add(i).cast::<u64>().read_unaligned() == v ^ i as u64 }
    })
}

#[test]
fn cross_cpu_frees_keep_caches_consistent() {
    // Three CPUs for four threads: two threads share a CPU, as tasks do.
    cross_cpu(&TestPageSource::new(64 << 20));
}

#[test]
fn cross_node_frees_keep_per_node_lists_consistent() {
    // CPUs 0 and 1 on node 0, CPU 2 on node 1: objects sent from CPU 1 to CPU 2 and from
    // CPU 2 to the thread on CPU 0 are freed on the other node.
    let src = TestPageSource::numa(32 << 20, 2, &[0, 0, 1]);
    let (cache_nodes, kmalloc_nodes) = cross_cpu(&src);
    for n in 0..2 {
        assert!(
            cache_nodes[n] > 0 && kmalloc_nodes[n] > 0,
            "node {n} held slabs ({cache_nodes:?}, {kmalloc_nodes:?})"
        );
    }
}

/// Run the four-thread exchange; returns, per node, the slabs the cache and the kmalloc
/// caches held at the end (before draining).
fn cross_cpu(src: &TestPageSource) -> ([usize; 2], [usize; 2]) {
    let plat = HostPlatform::new(3);
    let mut cache = Cache::new(&CacheConfig::new("stress", 48), src, &plat).unwrap();
    let mut k = Kmalloc::new(src, &plat).unwrap();
    std::thread::scope(|s| {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = mpsc::sync_channel::<(usize, usize, u64, bool)>(256);
            senders.push(tx);
            receivers.push(rx);
        }
        // Thread t sends to thread (t + 1) % 4 and receives from (t + 3) % 4.
        let mut rxs: Vec<Option<mpsc::Receiver<_>>> = receivers.into_iter().map(Some).collect();
        for t in 0..4usize {
            let tx = senders[(t + 1) % 4].clone();
            let rx = rxs[t].take().unwrap();
            let (cache, k, plat) = (&cache, &k, &plat);
            s.spawn(move || {
                plat.bind_current_thread(t);
                let mut local = Vec::new();
                for r in 0..ROUNDS {
                    let v = ((t as u64) << 48) | r as u64;
                    if r % 2 == 0 {
                        let p = cache.alloc().unwrap();
                        stamp(p, 48, v);
                        tx.send((p.as_ptr() as usize, 48, v, true)).unwrap();
                    } else {
                        let size = 8 + (r * 37 + t * 11) % 3000;
                        let p = k.kmalloc(size, Gfp::empty()).unwrap();
                        stamp(p, size, v);
                        tx.send((p.as_ptr() as usize, size, v, false)).unwrap();
                    }
                    // Some objects stay local for a while, freed on this CPU.
                    let q = k.kmalloc(64, Gfp::empty()).unwrap();
                    stamp(q, 64, v);
                    local.push((q, v));
                    if local.len() > 100 {
                        for (q, v) in local.drain(..50) {
                            assert!(check(q, 64, v));
                            // SAFETY: allocated by this thread, freed once.
                            unsafe { k.kfree(q).unwrap() };
                        }
                    }
                    while let Ok((addr, len, v, from_cache)) = rx.try_recv() {
                        let p = NonNull::new(addr as *mut u8).unwrap();
                        assert!(check(p, len, v), "object corrupted in flight");
                        // SAFETY: ownership moved to this thread through the channel.
                        unsafe {
                            if from_cache {
                                cache.free(p).unwrap();
                            } else {
                                k.kfree(p).unwrap();
                            }
                        }
                    }
                }
                drop(tx);
                for (q, v) in local {
                    assert!(check(q, 64, v));
                    // SAFETY: as above.
                    unsafe { k.kfree(q).unwrap() };
                }
                for (addr, len, v, from_cache) in rx {
                    let p = NonNull::new(addr as *mut u8).unwrap();
                    assert!(check(p, len, v));
                    // SAFETY: as above.
                    unsafe {
                        if from_cache {
                            cache.free(p).unwrap();
                        } else {
                            k.kfree(p).unwrap();
                        }
                    }
                }
            });
        }
        drop(senders);
    });
    cache.verify().unwrap();
    k.verify().unwrap();
    assert_eq!(cache.live_objects(), 0);
    assert!(k.caches().all(|c| c.live_objects() == 0));
    let s = cache.stats();
    assert!(s.free_fastpath > 0 && s.alloc_fastpath > 0);
    let slabs = |n: usize| -> (usize, usize) {
        let held = |c: &Cache<'_, _, _>| {
            c.node_stats(n)
                .map_or(0, |x| x.partial_slabs + x.full_slabs)
        };
        (held(&cache), k.caches().map(held).sum())
    };
    let (c0, k0) = slabs(0);
    let (c1, k1) = slabs(1);
    cache.drain_all();
    k.drain_all();
    cache.verify().unwrap();
    k.verify().unwrap();
    cache.destroy().unwrap();
    drop(k);
    assert_eq!(src.frames_in_use(), 0);
    src.buddy().verify().unwrap();
    ([c0, c1], [k0, k1])
}

#[test]
fn concurrent_bulk_and_shrink_race_safely() {
    bulk_and_shrink(CacheFlags::empty(), 2000);
}

#[test]
fn concurrent_debug_cache_keeps_red_zones_and_poison() {
    // The debug path walks a freelist per free, so fewer rounds.
    bulk_and_shrink(CacheFlags::DEBUG, 300);
}

fn bulk_and_shrink(flags: CacheFlags, rounds: usize) {
    let src = TestPageSource::new(32 << 20);
    let plat = HostPlatform::new(4);
    let mut cache = Cache::new(&CacheConfig::new("bulk", 128).flags(flags), &src, &plat).unwrap();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (cache, plat) = (&cache, &plat);
            s.spawn(move || {
                plat.bind_current_thread(t);
                let mut out = [None; 33];
                for r in 0..rounds {
                    cache.alloc_bulk(&mut out).unwrap();
                    let objs: Vec<_> = out.iter().map(|o| o.unwrap()).collect();
                    for (i, &o) in objs.iter().enumerate() {
                        stamp(o, 128, (t * 1000 + i) as u64);
                    }
                    for (i, &o) in objs.iter().enumerate() {
                        assert!(check(o, 128, (t * 1000 + i) as u64));
                    }
                    // SAFETY: allocated above, each once.
                    unsafe { cache.free_bulk(&objs).unwrap() };
                    if r % 100 == t {
                        cache.shrink();
                    }
                }
            });
        }
    });
    cache.verify().unwrap();
    assert_eq!(cache.live_objects(), 0);
    assert_eq!(cache.stats().poison_corruptions, 0);
    cache.destroy().unwrap();
    assert_eq!(src.frames_in_use(), 0);
}
