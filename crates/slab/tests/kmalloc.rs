//! kmalloc behaviour over the strict test page source.

use core::ptr::NonNull;

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{
    AllocError, CacheFlags, FreeError, Gfp, Kmalloc, KmallocKind, KreallocError, KMALLOC_CLASSES,
    KMALLOC_MAX_CACHE_SIZE, ZERO_SIZE_PTR,
};

fn env() -> (TestPageSource, HostPlatform) {
    (TestPageSource::new(32 << 20), HostPlatform::new(2))
}

fn fill(p: NonNull<u8>, len: usize, b: u8) {
    // SAFETY: tests fill only allocations they own, within their size.
    unsafe { core::ptr::write_bytes(p.as_ptr(), b, len) };
}

fn all(p: NonNull<u8>, len: usize, b: u8) -> bool {
    // SAFETY: tests read only allocations they own, within their size.
    unsafe { core::slice::from_raw_parts(p.as_ptr(), len) }
        .iter()
        .all(|&x| x == b)
}

#[test]
fn zero_size_returns_distinct_non_null_token() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let z = k.kmalloc(0, Gfp::empty()).unwrap();
    assert_eq!(z, ZERO_SIZE_PTR);
    assert_ne!(z.as_ptr() as usize, 0);
    // SAFETY: ZERO_SIZE_PTR is accepted by kfree/ksize.
    unsafe {
        assert_eq!(k.ksize(z), Ok(0));
        k.kfree(z).unwrap();
    }
    let real = k.kmalloc(1, Gfp::empty()).unwrap();
    assert_ne!(real, z);
    // SAFETY: allocated above.
    unsafe { k.kfree(real).unwrap() };
}

#[test]
fn every_size_gets_its_class_and_power_of_two_sizes_are_naturally_aligned() {
    let (src, plat) = env();
    let mut k = Kmalloc::new(&src, &plat).unwrap();
    for size in (1..=9000).step_by(7).chain(KMALLOC_CLASSES) {
        let p = k.kmalloc(size, Gfp::empty()).unwrap();
        // SAFETY: allocated above.
        let usable = unsafe { k.ksize(p) }.unwrap();
        assert!(usable >= size);
        if size <= 8192 {
            assert!(KMALLOC_CLASSES.contains(&usable));
        }
        if size.is_power_of_two() {
            assert_eq!(
                p.as_ptr() as usize % size,
                0,
                "size {size} not naturally aligned"
            );
        }
        fill(p, usable, 0xee);
        // SAFETY: allocated above.
        unsafe { k.kfree(p).unwrap() };
    }
    k.verify().unwrap();
}

#[test]
fn large_allocations_come_from_pages_and_are_tracked() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let before = src.frames_in_use();
    // Exactly the 5 frames 20,000 bytes need (`alloc_pages_exact`), at the start of the
    // 8-frame block that covers them; the other 3 are free again.
    let p = k.kmalloc(20_000, Gfp::empty()).unwrap();
    assert_eq!(src.frames_in_use(), before + 5);
    assert_eq!(p.as_ptr() as usize % (8 * 4096), 0);
    let q = k.kmalloc(12_000, Gfp::empty()).unwrap();
    assert_eq!(src.frames_in_use(), before + 8);
    // SAFETY: allocated above; the second kfree and the interior pointer are refused.
    unsafe {
        assert_eq!(k.ksize(p), Ok(20480));
        assert_eq!(k.ksize(q), Ok(12288));
        k.kfree(q).unwrap();
        assert_eq!(k.kfree(p.add(4096)), Err(FreeError::NotSlabMemory));
        assert_eq!(k.large_live(), 1);
        k.kfree(p).unwrap();
        assert_eq!(k.kfree(p), Err(FreeError::NotSlabMemory));
    }
    assert_eq!(src.frames_in_use(), before);
    assert_eq!(k.large_live(), 0);
    assert_eq!(
        k.kmalloc(usize::MAX / 2, Gfp::empty()),
        Err(AllocError::TooLarge)
    );
}

#[test]
fn large_krealloc_resizes_in_place_when_it_can() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let before = src.frames_in_use();
    let p = k.kmalloc(30_000, Gfp::empty()).unwrap();
    fill(p, 30_000, 0x5a);
    assert_eq!(src.frames_in_use(), before + 8);
    // SAFETY: every pointer passed is the live allocation the previous call returned.
    unsafe {
        // Shrinking gives the frames past the new size back where it is.
        let q = k.krealloc(p, 9_000, Gfp::empty()).unwrap();
        assert_eq!(q, p);
        assert_eq!(k.ksize(q), Ok(3 * 4096));
        assert_eq!(src.frames_in_use(), before + 3);
        assert_eq!(k.large_frames(), 3);
        assert!(all(q, 9_000, 0x5a));
        // Growing takes the frame after it, free since the shrink, and zeroes it.
        let r = k.krealloc(q, 16_000, Gfp::ZERO).unwrap();
        assert_eq!(r, p);
        assert_eq!(k.ksize(r), Ok(4 * 4096));
        assert_eq!(src.frames_in_use(), before + 4);
        assert!(all(r, 9_000, 0x5a));
        assert!(all(r.add(3 * 4096), 4096, 0));
        // A pointer into the frames given back is refused; the block frees with its size.
        assert_eq!(k.kfree(p.add(4 * 4096)), Err(FreeError::NotSlabMemory));
        k.kfree(r).unwrap();
    }
    assert_eq!(src.frames_in_use(), before);
    assert_eq!(k.large_frames(), 0);
    assert_eq!(k.large_live(), 0);
}

#[test]
fn kzalloc_zeroes_recycled_memory() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    for size in [24, 100, 5000, 70_000] {
        let p = k.kmalloc(size, Gfp::empty()).unwrap();
        fill(p, size, 0xab);
        // SAFETY: allocated above.
        unsafe { k.kfree(p).unwrap() };
        let z = k.kzalloc(size, Gfp::empty()).unwrap();
        assert!(all(z, size, 0), "kzalloc({size}) not zeroed");
        // SAFETY: allocated above.
        unsafe { k.kfree(z).unwrap() };
    }
}

#[test]
fn alignment_requests_are_honoured() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    for align in [1usize, 2, 8, 16, 32, 64, 256, 4096, 16384] {
        for size in [1usize, 24, 96, 200, 3000] {
            let p = k.kmalloc_aligned(size, align, Gfp::empty()).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0, "size {size} align {align}");
            // SAFETY: allocated above.
            unsafe { k.kfree(p).unwrap() };
        }
    }
    assert_eq!(
        k.kmalloc_aligned(8, 24, Gfp::empty()),
        Err(AllocError::BadAlign)
    );
}

#[test]
fn krealloc_grows_by_copy_shrinks_in_place_and_frees_at_zero() {
    let (src, plat) = env();
    let mut k = Kmalloc::new(&src, &plat).unwrap();
    let p = k.kmalloc(50, Gfp::empty()).unwrap();
    fill(p, 50, 0x11);
    // SAFETY: each call gives up the pointer it receives and the test uses only the result.
    unsafe {
        let same = k.krealloc(p, 60, Gfp::empty()).unwrap();
        assert_eq!(same, p, "64-byte class already fits 60");
        let big = k.krealloc(same, 10_000, Gfp::empty()).unwrap();
        assert_ne!(big, p);
        assert!(all(big, 50, 0x11), "contents copied");
        let small = k.krealloc(big, 16, Gfp::empty()).unwrap();
        assert_eq!(small, big);
        let gone = k.krealloc(small, 0, Gfp::empty()).unwrap();
        assert_eq!(gone, ZERO_SIZE_PTR);
        let fresh = k.krealloc(ZERO_SIZE_PTR, 8, Gfp::empty()).unwrap();
        let mut local = 0u8;
        assert_eq!(
            k.krealloc(NonNull::from(&mut local), 8, Gfp::empty()),
            Err(KreallocError::Free(FreeError::NotSlabMemory))
        );
        k.kfree(fresh).unwrap();
    }
    assert_eq!(k.large_live(), 0);
    k.verify().unwrap();
}

#[test]
fn gfp_flags_pick_reclaimable_and_dma_sets() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let r = k.kmalloc(64, Gfp::RECLAIMABLE).unwrap();
    let d = k.kmalloc(64, Gfp::DMA).unwrap();
    let n = k.kmalloc(64, Gfp::empty()).unwrap();
    assert_eq!(src.reclaimable_blocks(), 1);
    assert_eq!(src.dma_blocks(), 1);
    let rc = k.cache_for(64, KmallocKind::Reclaim).unwrap();
    assert_eq!(rc.name(), "kmalloc-rcl-64");
    assert!(rc.flags().contains(CacheFlags::RECLAIM_ACCOUNT));
    assert_eq!(rc.live_objects(), 1);
    assert_eq!(k.cache_for(64, KmallocKind::Dma).unwrap().live_objects(), 1);
    assert_eq!(
        k.cache_for(64, KmallocKind::Normal).unwrap().live_objects(),
        1
    );
    // SAFETY: allocated above; kfree finds each one's cache from the pointer alone.
    unsafe {
        k.kfree(r).unwrap();
        k.kfree(d).unwrap();
        k.kfree(n).unwrap();
    }
}

#[test]
fn kfree_refuses_pointers_kmalloc_did_not_return() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let other =
        mmkit_slab::Cache::new(&mmkit_slab::CacheConfig::new("own", 64), &src, &plat).unwrap();
    let foreign = other.alloc().unwrap();
    let p = k.kmalloc(100, Gfp::empty()).unwrap();
    let mut local = 0u64;
    // SAFETY: every kfree below is refused and changes nothing.
    unsafe {
        assert_eq!(k.kfree(foreign), Err(FreeError::WrongCache));
        // Interior pointers are proven only with the full proof (debug or `hardened`).
        if mmkit_slab::HARDENED {
            assert_eq!(k.kfree(p.add(8)), Err(FreeError::Misaligned));
        }
        assert_eq!(
            k.kfree(NonNull::from(&mut local).cast()),
            Err(FreeError::NotSlabMemory)
        );
        assert_eq!(k.ksize(p.add(1)), Err(FreeError::Misaligned));
    }
    // SAFETY: allocated above.
    unsafe {
        k.kfree(p).unwrap();
        other.free(foreign).unwrap();
    }
}

#[test]
fn slabinfo_lists_every_kmalloc_cache_created() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    assert_eq!(k.caches().count(), 0, "caches come with their first use");
    let p = k.kmalloc(96, Gfp::empty()).unwrap();
    assert_eq!(
        k.to_string().lines().count(),
        3,
        "header lines and kmalloc-96"
    );
    for kind in [KmallocKind::Normal, KmallocKind::Reclaim, KmallocKind::Dma] {
        for &size in &KMALLOC_CLASSES {
            assert!(k.cache_for(size, kind).is_some());
        }
    }
    let report = k.to_string();
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("slabinfo - version: 2.1"));
    assert!(lines.next().unwrap().starts_with("# name"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 3 * mmkit_slab::NR_CLASSES);
    let line96 = rest.iter().find(|l| l.starts_with("kmalloc-96 ")).unwrap();
    let cols: Vec<&str> = line96.split_whitespace().collect();
    assert_ne!(cols[1], "0", "an active object is counted");
    assert_eq!(cols[3], "96");
    // SAFETY: allocated above.
    unsafe { k.kfree(p).unwrap() };
}

#[test]
fn debug_kmalloc_catches_overflow_into_red_zone() {
    let (src, plat) = env();
    let k = Kmalloc::with_flags(&src, &plat, CacheFlags::RED_ZONE | CacheFlags::POISON).unwrap();
    let p = k.kmalloc(32, Gfp::empty()).unwrap();
    // SAFETY: deliberate one-byte overflow into our own slot's red zone.
    unsafe { p.as_ptr().add(32).write(1) };
    // SAFETY: refused, nothing changes.
    let r = unsafe { k.kfree(p) };
    assert_eq!(r, Err(FreeError::RedZoneCorrupted { offset: 32 }));
}

#[test]
fn drop_returns_every_page() {
    let (src, plat) = env();
    {
        let k = Kmalloc::new(&src, &plat).unwrap();
        let ps: Vec<_> = (1..300)
            .map(|i| k.kmalloc(i * 13, Gfp::empty()).unwrap())
            .collect();
        for p in ps {
            // SAFETY: allocated above.
            unsafe { k.kfree(p).unwrap() };
        }
    }
    assert_eq!(src.frames_in_use(), 0);
}

#[test]
fn out_of_pages_takes_back_pages_parked_in_other_classes() {
    let (src, plat) = env();
    let mut k = Kmalloc::new(&src, &plat).unwrap();
    // kmalloc-64 exists (its descriptor is not what this test is about).
    assert!(k.cache_for(64, KmallocKind::Normal).is_some());
    let base = src.frames_in_use();
    src.set_limit(base + 16);
    let mut small = Vec::new();
    while let Ok(p) = k.kmalloc(64, Gfp::empty()) {
        small.push(p);
    }
    assert!(small.len() > 16, "the 16 frames held 64-byte objects");
    for p in small {
        // SAFETY: allocated above, freed once.
        unsafe { k.kfree(p).unwrap() };
    }
    let parked = src.frames_in_use() - base;
    assert!(parked > 0, "kmalloc-64 keeps empty slabs and its CPU array");
    // All 16 frames in one block: only there once kmalloc-64 gives its pages back.
    let big = k
        .kmalloc(16 * 4096, Gfp::empty())
        .expect("parked pages reclaimed");
    assert_eq!(src.frames_in_use() - base, 16);
    // SAFETY: allocated just above.
    unsafe { k.kfree(big).unwrap() };
    assert_eq!(
        k.kmalloc(32 * 4096, Gfp::empty()),
        Err(AllocError::OutOfMemory),
        "nothing to reclaim: the failure is reported"
    );
    k.verify().unwrap();
}

/// After every class, kind and large size has been used from two CPUs and everything is
/// freed, a shrink gives every frame back to the page source: the slabs, the off-slab header
/// pages and the large blocks, so only the caches' own descriptors stay (created by the
/// first round, which sets the figure the second must return to).
#[test]
fn free_everything_and_shrink_returns_every_frame() {
    let (src, plat) = env();
    let k = Kmalloc::new(&src, &plat).unwrap();
    let mut before = None;
    for _round in 0..2 {
        use_everything_and_shrink(&k, &plat);
        let now = src.frames_in_use();
        assert_eq!(
            *before.get_or_insert(now),
            now,
            "frames kept after free + shrink"
        );
    }
    assert_eq!(k.caches().count(), 3 * mmkit_slab::NR_CLASSES);
}

fn use_everything_and_shrink(k: &Kmalloc<'_, TestPageSource, HostPlatform>, plat: &HostPlatform) {
    let kinds = [Gfp::empty(), Gfp::RECLAIMABLE, Gfp::DMA];
    let mut live: Vec<NonNull<u8>> = Vec::new();
    for cpu in 0..2 {
        plat.bind_current_thread(cpu);
        for gfp in kinds {
            for &size in KMALLOC_CLASSES.iter().chain(&[9000, 20_000, 70_000]) {
                for _ in 0..9 {
                    live.push(k.kmalloc(size, gfp).unwrap());
                }
            }
        }
    }
    for p in live {
        // SAFETY: allocated above, freed once.
        unsafe { k.kfree(p).unwrap() };
    }
    assert!(k.shrink() > 0);
}

#[test]
fn the_cached_fast_path_serves_only_what_a_cpu_array_holds() {
    let (src, plat) = env();
    let mut k = Kmalloc::new(&src, &plat).unwrap();
    // Nothing is created before first use, and sizes outside the classes never qualify.
    assert_eq!(k.kmalloc_cached(64), None);
    assert_eq!(k.kmalloc_cached(0), None);
    assert_eq!(k.kmalloc_cached(KMALLOC_MAX_CACHE_SIZE + 1), None);
    assert_eq!(k.kmalloc_cached(usize::MAX), None);
    let warm = k.kmalloc(64, Gfp::empty()).unwrap();
    // SAFETY: ours, freed once; it now sits in this CPU's array.
    unsafe { k.kfree(warm).unwrap() };
    assert_eq!(k.kmalloc_cached(1), None, "kmalloc-8 is not created yet");
    let mut got = Vec::new();
    for size in [49, 60, 64] {
        let p = k
            .kmalloc_cached(size)
            .expect("the warm class serves from its array");
        assert_eq!(p.as_ptr() as usize % 64, 0, "kmalloc-64 is 64-aligned");
        // SAFETY: kmalloc memory of at least `size` bytes.
        assert_eq!(unsafe { k.ksize(p) }, Ok(64));
        got.push(p);
    }
    assert!(got.windows(2).all(|w| w[0] != w[1]));
    for p in got {
        // SAFETY: each is ours and freed once.
        unsafe { k.kfree(p).unwrap() };
    }
    k.verify().unwrap();

    // Caches with debug flags keep no per-CPU arrays: always the full path.
    let (src, plat) = env();
    let mut d = Kmalloc::with_flags(&src, &plat, CacheFlags::RED_ZONE).unwrap();
    let p = d.kmalloc(64, Gfp::empty()).unwrap();
    // SAFETY: ours, freed once.
    unsafe { d.kfree(p).unwrap() };
    assert_eq!(d.kmalloc_cached(64), None);
    d.verify().unwrap();
}
