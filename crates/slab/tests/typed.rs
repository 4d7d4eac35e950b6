//! Typed caches: constructed objects handed out as owning boxes.

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::{TestPageSource, TestRcu};
use mmkit_slab::{CacheConfig, CacheFlags, SlabBox, TypedCache};

#[derive(Debug, PartialEq)]
struct Inode {
    ino: u64,
    nlink: u32,
    name: [u8; 20],
}

impl Default for Inode {
    fn default() -> Self {
        Self {
            ino: u64::MAX,
            nlink: 1,
            name: [b'?'; 20],
        }
    }
}

#[test]
fn typed_cache_hands_out_constructed_objects() {
    let src = TestPageSource::new(8 << 20);
    let plat = HostPlatform::new(1);
    let mut cache: TypedCache<Inode, _, _> =
        TypedCache::new(CacheConfig::new("inode", 0), &src, &plat).unwrap();
    {
        let a = cache.alloc().unwrap();
        assert_eq!(*a, Inode::default());
        let mut b = cache
            .alloc_with(Inode {
                ino: 7,
                nlink: 2,
                name: [b'x'; 20],
            })
            .unwrap();
        b.nlink += 1;
        assert_eq!(b.nlink, 3);
        assert_eq!(
            SlabBox::as_ptr(&b).as_ptr() as usize % core::mem::align_of::<Inode>(),
            0
        );
        assert_eq!(cache.cache().live_objects(), 2);
    }
    assert_eq!(cache.cache().live_objects(), 0);
    cache.verify().unwrap();
    cache.destroy().unwrap();
    assert_eq!(src.frames_in_use(), 0);
}

#[test]
fn objects_are_recycled_in_the_state_their_owner_left() {
    let src = TestPageSource::new(8 << 20);
    let plat = HostPlatform::new(1);
    let cache: TypedCache<Inode, _, _> =
        TypedCache::new(CacheConfig::new("inode", 0), &src, &plat).unwrap();
    let mut a = cache.alloc().unwrap();
    a.ino = 42;
    let addr = SlabBox::as_ptr(&a);
    drop(a);
    let b = cache.alloc().unwrap();
    assert_eq!(SlabBox::as_ptr(&b), addr);
    assert_eq!(
        b.ino, 42,
        "constructed state persists across free (no re-construction)"
    );
}

#[test]
fn leaked_box_blocks_destroy() {
    let src = TestPageSource::new(8 << 20);
    let plat = HostPlatform::new(1);
    let cache: TypedCache<u64, _, _> = TypedCache::new(
        CacheConfig::new("u64", 0).flags(CacheFlags::RED_ZONE | CacheFlags::STORE_USER),
        &src,
        &plat,
    )
    .unwrap();
    let leaked: *mut u64 = SlabBox::leak(cache.alloc().unwrap());
    assert!(!leaked.is_null());
    let err = cache.destroy().unwrap_err();
    assert_eq!(err.leak.live_objects, 1);
    assert!(err.leak.owners[0].is_some());
}

#[test]
fn typesafe_by_rcu_typed_cache_round_trips() {
    let src = TestPageSource::new(8 << 20);
    let plat = HostPlatform::new(1);
    let rcu = TestRcu::new();
    let mut cache: TypedCache<Inode, _, _> = TypedCache::new(
        CacheConfig::new("rcu-inode", 0)
            .flags(CacheFlags::TYPESAFE_BY_RCU | CacheFlags::HWCACHE_ALIGN)
            .rcu(&rcu),
        &src,
        &plat,
    )
    .unwrap();
    // 32-byte objects: the cache line halved once (Linux calculate_alignment).
    assert_eq!(cache.cache().layout().align, 32);
    let boxes: Vec<_> = (0..300).map(|_| cache.alloc().unwrap()).collect();
    drop(boxes);
    cache.cache_mut().drain_all();
    cache.verify().unwrap();
    // SAFETY: no RCU readers in this test.
    unsafe { rcu.advance() };
    cache.destroy().unwrap();
    assert_eq!(src.frames_in_use(), 0);
}
