//! Fuzz mmkit-slab: an `Arbitrary` sequence of cache and kmalloc actions against a model of
//! live objects. After every action every cache is verified and every live object must hold
//! the bytes its owner wrote; refused frees must be refused with the expected error. Pages
//! come from the real buddy over two NUMA nodes (CPU 0 on node 0, CPU 1 on node 1), so
//! `Migrate` makes frees cross nodes, and RCU callbacks run when the fuzzer ends a grace
//! period.
#![no_main]

use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::{TestPageSource, TestRcu};
use mmkit_slab::{Cache, CacheConfig, CacheFlags, FreeError, Gfp, Kmalloc, ZERO_SIZE_PTR};

#[derive(Arbitrary, Debug)]
enum Action {
    Alloc {
        cache: u8,
        byte: u8,
    },
    AllocNode {
        cache: u8,
        node: u8,
        byte: u8,
    },
    KmallocNode {
        size: u16,
        node: u8,
        byte: u8,
    },
    Free {
        pick: u16,
    },
    Bulk {
        cache: u8,
        n: u8,
        byte: u8,
    },
    Kmalloc {
        size: u16,
        large: bool,
        kind: u8,
        zero: bool,
        byte: u8,
    },
    Kfree {
        pick: u16,
    },
    Krealloc {
        pick: u16,
        size: u16,
        byte: u8,
    },
    InteriorFree {
        pick: u16,
        offset: u16,
    },
    DoubleFreeDebug,
    Migrate {
        cpu: u8,
    },
    Shrink,
    DrainAll,
    GracePeriod,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    ptr: NonNull<u8>,
    len: usize,
    byte: u8,
    cache: Option<usize>,
}

fn fill(l: &Live) {
    // SAFETY: the model writes only objects it owns, within their size.
    unsafe { std::ptr::write_bytes(l.ptr.as_ptr(), l.byte, l.len) };
}

fn intact(l: &Live) -> bool {
    // SAFETY: the model reads only objects it owns, within their size.
    unsafe { std::slice::from_raw_parts(l.ptr.as_ptr(), l.len) }
        .iter()
        .all(|&b| b == l.byte)
}

const SIZES: [usize; 4] = [16, 100, 24, 512];

fn ctor(p: NonNull<u8>) {
    // SAFETY: constructor of the 100-byte cache: the slot is ours.
    unsafe { std::ptr::write_bytes(p.as_ptr(), 0x3c, 100) };
}

fuzz_target!(|actions: Vec<Action>| {
    let src = TestPageSource::numa_with_max_order(1 << 20, 2, &[0, 1], 6);
    let plat = HostPlatform::new(2);
    let rcu = TestRcu::new();
    let configs = [
        CacheConfig::new("plain", SIZES[0]),
        CacheConfig::new("ctor", SIZES[1]).ctor(ctor),
        CacheConfig::new("debug", SIZES[2]).flags(CacheFlags::DEBUG),
        CacheConfig::new("rcu", SIZES[3])
            .flags(CacheFlags::TYPESAFE_BY_RCU | CacheFlags::RECLAIM_ACCOUNT)
            .rcu(&rcu),
    ];
    let mut caches: Vec<_> = configs
        .iter()
        .map(|c| Cache::new(c, &src, &plat).expect("cache"))
        .collect();
    let mut k = Kmalloc::new(&src, &plat).expect("kmalloc");
    let mut live: Vec<Live> = Vec::new();

    for a in actions.into_iter().take(400) {
        match a {
            Action::Alloc { cache, byte } | Action::AllocNode { cache, byte, .. } => {
                let c = cache as usize % caches.len();
                let got = match a {
                    Action::AllocNode { node, .. } => caches[c].alloc_node(node as usize % 3),
                    _ => caches[c].alloc(),
                };
                if let Ok(ptr) = got {
                    let l = Live {
                        ptr,
                        len: SIZES[c],
                        byte,
                        cache: Some(c),
                    };
                    fill(&l);
                    live.push(l);
                }
            }
            Action::KmallocNode { size, node, byte } => {
                let size = size as usize % 20_000;
                if let Ok(ptr) = k.kmalloc_node(size, Gfp::empty(), node as usize % 3) {
                    if size == 0 {
                        assert_eq!(ptr, ZERO_SIZE_PTR);
                        continue;
                    }
                    let l = Live {
                        ptr,
                        len: size,
                        byte,
                        cache: None,
                    };
                    fill(&l);
                    live.push(l);
                }
            }
            Action::Free { pick } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_some())
                    .collect();
                if !cands.is_empty() {
                    let l = live.swap_remove(cands[pick as usize % cands.len()]);
                    // SAFETY: a live object of that cache, freed once.
                    unsafe { caches[l.cache.unwrap()].free(l.ptr) }.expect("free");
                }
            }
            Action::Bulk { cache, n, byte } => {
                let c = cache as usize % caches.len();
                let mut out = vec![None; n as usize % 64];
                if caches[c].alloc_bulk(&mut out).is_ok() {
                    for o in out {
                        let l = Live {
                            ptr: o.unwrap(),
                            len: SIZES[c],
                            byte,
                            cache: Some(c),
                        };
                        fill(&l);
                        live.push(l);
                    }
                } else {
                    assert!(
                        out.iter().all(Option::is_none),
                        "bulk failure leaves nothing"
                    );
                }
            }
            Action::Kmalloc {
                size,
                large,
                kind,
                zero,
                byte,
            } => {
                let size = if large {
                    size as usize * 4
                } else {
                    size as usize % 9000
                };
                let gfp = [Gfp::empty(), Gfp::RECLAIMABLE, Gfp::DMA][kind as usize % 3]
                    | if zero { Gfp::ZERO } else { Gfp::empty() };
                if let Ok(ptr) = k.kmalloc(size, gfp) {
                    if size == 0 {
                        assert_eq!(ptr, ZERO_SIZE_PTR);
                        continue;
                    }
                    if zero {
                        assert!(intact(&Live {
                            ptr,
                            len: size,
                            byte: 0,
                            cache: None
                        }));
                    }
                    if size.is_power_of_two() {
                        assert_eq!(ptr.as_ptr() as usize % size, 0);
                    }
                    let l = Live {
                        ptr,
                        len: size,
                        byte,
                        cache: None,
                    };
                    fill(&l);
                    live.push(l);
                }
            }
            Action::Kfree { pick } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_none())
                    .collect();
                if !cands.is_empty() {
                    let l = live.swap_remove(cands[pick as usize % cands.len()]);
                    // SAFETY: a live kmalloc allocation, freed once.
                    unsafe { k.kfree(l.ptr) }.expect("kfree");
                }
            }
            Action::Krealloc { pick, size, byte } => {
                let cands: Vec<usize> = (0..live.len())
                    .filter(|&j| live[j].cache.is_none())
                    .collect();
                if !cands.is_empty() {
                    let j = cands[pick as usize % cands.len()];
                    let old = live[j];
                    let size = size as usize;
                    // SAFETY: a live kmalloc allocation, given up on success only.
                    match unsafe { k.krealloc(old.ptr, size, Gfp::empty()) } {
                        Ok(p) if size == 0 => {
                            assert_eq!(p, ZERO_SIZE_PTR);
                            live.swap_remove(j);
                        }
                        Ok(p) => {
                            assert!(intact(&Live {
                                ptr: p,
                                len: old.len.min(size),
                                ..old
                            }));
                            let l = Live {
                                ptr: p,
                                len: size,
                                byte,
                                cache: None,
                            };
                            fill(&l);
                            live[j] = l;
                        }
                        Err(_) => assert!(intact(&old), "failed krealloc kept the old block"),
                    }
                }
            }
            Action::InteriorFree { pick, offset } => {
                if let Some(&l) = live.get(pick as usize % live.len().max(1)) {
                    // Interior pointers are proven only with the full proof (`HARDENED`).
                    if l.len > 1 && mmkit_slab::HARDENED {
                        let off = 1 + offset as usize % (l.len - 1);
                        let bad = NonNull::new(l.ptr.as_ptr().wrapping_add(off)).unwrap();
                        let r = match l.cache {
                            // SAFETY: an interior pointer is refused without change.
                            Some(c) => unsafe { caches[c].free(bad) },
                            // SAFETY: as above.
                            None => unsafe { k.kfree(bad) },
                        };
                        let want = if l.cache.is_none() && l.len > 8192 && off >= 4096 {
                            FreeError::NotSlabMemory
                        } else {
                            FreeError::Misaligned
                        };
                        assert_eq!(r, Err(want));
                    }
                }
            }
            Action::DoubleFreeDebug => {
                // The debug cache catches any double free.
                if let Ok(p) = caches[2].alloc() {
                    // SAFETY: freed once; the second free is refused.
                    unsafe {
                        caches[2].free(p).expect("free");
                        assert_eq!(caches[2].free(p), Err(FreeError::DoubleFree));
                    }
                }
            }
            Action::Migrate { cpu } => {
                plat.bind_current_thread(cpu as usize);
            }
            Action::Shrink => {
                caches.iter().for_each(|c| {
                    c.shrink();
                });
                k.shrink();
            }
            Action::DrainAll => {
                caches.iter_mut().for_each(|c| {
                    c.drain_all();
                });
                k.drain_all();
            }
            Action::GracePeriod => {
                // SAFETY: no RCU readers here.
                unsafe { rcu.advance() };
            }
        }
        for c in caches.iter_mut() {
            c.verify().expect("cache verify");
        }
        k.verify().expect("kmalloc verify");
        for l in &live {
            assert!(intact(l), "live object lost its bytes: {l:?}");
        }
        assert_eq!(
            caches[3].stats().rcu_pending_slabs,
            rcu.pending(),
            "RCU accounting"
        );
    }
    for l in live {
        match l.cache {
            // SAFETY: live, freed once.
            Some(c) => unsafe { caches[c].free(l.ptr) }.expect("free"),
            // SAFETY: as above.
            None => unsafe { k.kfree(l.ptr) }.expect("kfree"),
        }
    }
});
