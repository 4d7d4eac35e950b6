//! A proptest state machine: random operations on several caches and a kmalloc instance,
//! checked against a model of live objects. After every step `verify()` runs on every cache
//! and every live object must still hold the bytes its owner wrote.

use core::ptr::NonNull;

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::{TestPageSource, TestRcu};
use mmkit_slab::{Cache, CacheConfig, CacheFlags, FreeError, Gfp, Kmalloc, ZERO_SIZE_PTR};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    CacheAlloc {
        cache: usize,
        byte: u8,
    },
    CacheFree {
        pick: usize,
    },
    CacheAllocNode {
        cache: usize,
        node: usize,
        byte: u8,
    },
    CacheBulk {
        cache: usize,
        n: usize,
        byte: u8,
    },
    Kmalloc {
        size: usize,
        kind: u8,
        zero: bool,
        byte: u8,
    },
    Kfree {
        pick: usize,
    },
    Krealloc {
        pick: usize,
        size: usize,
        byte: u8,
    },
    BadFree {
        pick: usize,
        offset: usize,
    },
    Migrate {
        cpu: usize,
    },
    Shrink,
    DrainAll,
    GracePeriod,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, any::<u8>()).prop_map(|(cache, byte)| Op::CacheAlloc { cache, byte }),
        3 => any::<usize>().prop_map(|pick| Op::CacheFree { pick }),
        1 => (0..4usize, 0..3usize, any::<u8>())
            .prop_map(|(cache, node, byte)| Op::CacheAllocNode { cache, node, byte }),
        1 => (0..4usize, 0..40usize, any::<u8>())
            .prop_map(|(cache, n, byte)| Op::CacheBulk { cache, n, byte }),
        4 => (prop_oneof![0..300usize, 0..9000usize, 0..40_000usize], 0..3u8, any::<bool>(), any::<u8>())
            .prop_map(|(size, kind, zero, byte)| Op::Kmalloc { size, kind, zero, byte }),
        3 => any::<usize>().prop_map(|pick| Op::Kfree { pick }),
        2 => (any::<usize>(), prop_oneof![0..12_000usize, 8_000..40_000usize], any::<u8>())
            .prop_map(|(pick, size, byte)| Op::Krealloc { pick, size, byte }),
        1 => (any::<usize>(), 0..64usize).prop_map(|(pick, offset)| Op::BadFree { pick, offset }),
        1 => (0..3usize).prop_map(|cpu| Op::Migrate { cpu }),
        1 => Just(Op::Shrink),
        1 => Just(Op::DrainAll),
        1 => Just(Op::GracePeriod),
    ]
}

/// A live object in the model.
#[derive(Debug, Clone, Copy)]
struct Live {
    ptr: NonNull<u8>,
    len: usize,
    byte: u8,
    /// `Some(cache)` for cache objects, `None` for kmalloc.
    cache: Option<usize>,
}

fn fill(l: &Live) {
    // SAFETY: the model only writes objects it owns, within their size.
    unsafe { core::ptr::write_bytes(l.ptr.as_ptr(), l.byte, l.len) };
}

fn intact(l: &Live) -> bool {
    // SAFETY: the model only reads objects it owns, within their size.
    unsafe { core::slice::from_raw_parts(l.ptr.as_ptr(), l.len) }
        .iter()
        .all(|&b| b == l.byte)
}

const SIZES: [usize; 4] = [40, 72, 24, 200];

fn ctor(p: NonNull<u8>) {
    // SAFETY: constructor of a 72-byte cache: the slot is ours.
    unsafe { core::ptr::write_bytes(p.as_ptr(), 0x77, 72) };
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Two nodes: CPUs 0 and 1 on node 0, CPU 2 on node 1, so `Migrate` moves the model
    // between nodes and frees cross them.
    let src = TestPageSource::numa(8 << 20, 2, &[0, 0, 1]);
    let plat = HostPlatform::new(3);
    let rcu = TestRcu::new();
    let configs = [
        CacheConfig::new("plain", SIZES[0]),
        CacheConfig::new("ctor", SIZES[1])
            .ctor(ctor)
            .flags(CacheFlags::HWCACHE_ALIGN),
        CacheConfig::new("debug", SIZES[2]).flags(CacheFlags::DEBUG),
        CacheConfig::new("rcu", SIZES[3])
            .flags(CacheFlags::TYPESAFE_BY_RCU)
            .rcu(&rcu),
    ];
    let mut caches: Vec<Cache<'_, _, _>> = configs
        .iter()
        .map(|c| Cache::new(c, &src, &plat).unwrap())
        .collect();
    let mut k = Kmalloc::new(&src, &plat).unwrap();
    let mut live: Vec<Live> = Vec::new();

    for op in ops {
        match op {
            Op::CacheAlloc { cache, byte } | Op::CacheAllocNode { cache, byte, .. } => {
                let ptr = match op {
                    Op::CacheAllocNode { node, .. } => caches[cache].alloc_node(node),
                    _ => caches[cache].alloc(),
                }
                .unwrap();
                if cache == 1 {
                    // HWCACHE_ALIGN: 72-byte objects are cache-line aligned.
                    prop_assert!(ptr.as_ptr() as usize % 64 == 0);
                }
                let l = Live {
                    ptr,
                    len: SIZES[cache],
                    byte,
                    cache: Some(cache),
                };
                fill(&l);
                live.push(l);
            }
            Op::CacheFree { pick } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_some())
                    .collect();
                if !cands.is_empty() {
                    let j = cands[pick % cands.len()];
                    let l = live.swap_remove(j);
                    // SAFETY: a live object of that cache, freed once.
                    unsafe { caches[l.cache.unwrap()].free(l.ptr) }.unwrap();
                }
            }
            Op::CacheBulk { cache, n, byte } => {
                let mut out = vec![None; n];
                caches[cache].alloc_bulk(&mut out).unwrap();
                let ptrs: Vec<NonNull<u8>> = out.iter().map(|o| o.unwrap()).collect();
                for &p in &ptrs {
                    fill(&Live {
                        ptr: p,
                        len: SIZES[cache],
                        byte,
                        cache: Some(cache),
                    });
                }
                // Free half back in bulk, keep the rest.
                let (back, keep) = ptrs.split_at(n / 2);
                // SAFETY: just allocated, each freed once.
                unsafe { caches[cache].free_bulk(back) }.unwrap();
                for &p in keep {
                    live.push(Live {
                        ptr: p,
                        len: SIZES[cache],
                        byte,
                        cache: Some(cache),
                    });
                }
            }
            Op::Kmalloc {
                size,
                kind,
                zero,
                byte,
            } => {
                let gfp = [Gfp::empty(), Gfp::RECLAIMABLE, Gfp::DMA][kind as usize]
                    | if zero { Gfp::ZERO } else { Gfp::empty() };
                let ptr = k.kmalloc(size, gfp).unwrap();
                if size == 0 {
                    prop_assert_eq!(ptr, ZERO_SIZE_PTR);
                    continue;
                }
                // SAFETY: allocated above.
                let usable = unsafe { k.ksize(ptr) }.unwrap();
                prop_assert!(usable >= size);
                let l = Live {
                    ptr,
                    len: size,
                    byte,
                    cache: None,
                };
                if zero {
                    let zeroed = Live {
                        byte: 0,
                        len: usable,
                        ..l
                    };
                    prop_assert!(intact(&zeroed), "kzalloc memory not zeroed");
                }
                fill(&l);
                live.push(l);
            }
            Op::Kfree { pick } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_none())
                    .collect();
                if !cands.is_empty() {
                    let l = live.swap_remove(cands[pick % cands.len()]);
                    // SAFETY: a live kmalloc allocation, freed once.
                    unsafe { k.kfree(l.ptr) }.unwrap();
                }
            }
            Op::Krealloc { pick, size, byte } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_none())
                    .collect();
                if !cands.is_empty() {
                    let j = cands[pick % cands.len()];
                    let old = live[j];
                    // SAFETY: a live kmalloc allocation, given up on success.
                    let new = unsafe { k.krealloc(old.ptr, size, Gfp::empty()) }.unwrap();
                    if size == 0 {
                        prop_assert_eq!(new, ZERO_SIZE_PTR);
                        live.swap_remove(j);
                    } else {
                        let kept = Live {
                            ptr: new,
                            len: old.len.min(size),
                            ..old
                        };
                        prop_assert!(intact(&kept), "krealloc lost contents");
                        let l = Live {
                            ptr: new,
                            len: size,
                            byte,
                            cache: None,
                        };
                        fill(&l);
                        live[j] = l;
                    }
                }
            }
            Op::BadFree { pick, offset } => {
                if let Some(&l) = live.get(pick % live.len().max(1)) {
                    // Interior pointers are proven only with the full proof (`HARDENED`).
                    if l.len > 1 && mmkit_slab::HARDENED {
                        // An interior pointer of a live object: refused, nothing changes.
                        let bad =
                            NonNull::new(l.ptr.as_ptr().wrapping_add(1 + offset % (l.len - 1)))
                                .unwrap();
                        let r = match l.cache {
                            // SAFETY: refused without any change (checked below).
                            Some(c) => unsafe { caches[c].free(bad) },
                            // SAFETY: as above.
                            None => unsafe { k.kfree(bad) },
                        };
                        prop_assert_eq!(r, Err(FreeError::Misaligned));
                    }
                }
            }
            Op::Migrate { cpu } => {
                plat.bind_current_thread(cpu);
            }
            Op::Shrink => {
                for c in &caches {
                    c.shrink();
                }
                k.shrink();
            }
            Op::DrainAll => {
                for c in &mut caches {
                    c.drain_all();
                }
                k.drain_all();
            }
            Op::GracePeriod => {
                // SAFETY: no RCU readers in this model.
                unsafe { rcu.advance() };
            }
        }
        for c in &mut caches {
            c.verify()
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", c.name())))?;
        }
        k.verify()
            .map_err(|e| TestCaseError::fail(format!("kmalloc: {e}")))?;
        for l in &live {
            prop_assert!(intact(l), "object {:?} lost its bytes", l);
        }
        prop_assert_eq!(
            caches[3].stats().rcu_pending_slabs,
            rcu.pending(),
            "slabs waiting for RCU are exactly the queued callbacks"
        );
        let per_cache: Vec<usize> = (0..caches.len())
            .map(|c| live.iter().filter(|l| l.cache == Some(c)).count())
            .collect();
        for (c, n) in caches.iter().zip(per_cache) {
            prop_assert_eq!(c.live_objects(), n, "{} live count", c.name());
        }
    }
    for l in live.drain(..) {
        match l.cache {
            // SAFETY: live objects, freed once.
            Some(c) => unsafe { caches[c].free(l.ptr) }.unwrap(),
            // SAFETY: as above.
            None => unsafe { k.kfree(l.ptr) }.unwrap(),
        }
    }
    // SAFETY: no readers.
    unsafe { rcu.advance() };
    for c in caches {
        // Destroying drains the per-CPU arrays; in the RCU cache that parks the emptied
        // slabs for one more grace period, so the first attempt may report them.
        if let Err(e) = c.destroy() {
            prop_assert_eq!(e.leak.live_objects, 0);
            prop_assert!(e.leak.rcu_pending_slabs > 0);
            // SAFETY: no readers.
            unsafe { rcu.advance() };
            e.cache
                .destroy()
                .map_err(|e| TestCaseError::fail(format!("destroy: {}", e.leak)))?;
        }
    }
    drop(k);
    prop_assert_eq!(src.frames_in_use(), 0, "every page returned");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn caches_and_kmalloc_match_model(ops in proptest::collection::vec(op(), 1..160)) {
        run(ops)?;
    }
}
