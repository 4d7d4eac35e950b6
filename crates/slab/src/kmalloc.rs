//! `kmalloc` and friends: general-purpose allocation by size.
//!
//! Sizes up to [`KMALLOC_MAX_CACHE_SIZE`] are served by one of the [`KMALLOC_CLASSES`]
//! caches, in three sets chosen by GFP flags, as in Linux: `kmalloc-*` (normal),
//! `kmalloc-rcl-*` ([`Gfp::RECLAIMABLE`], reclaimable slab pages) and `dma-kmalloc-*`
//! ([`Gfp::DMA`]). Larger sizes get a block of the smallest sufficient order straight from the
//! page source; the block's head frame records the order in its private word, so `kfree` and
//! `ksize` work on any pointer `kmalloc` returned.
//!
//! * Zero-size requests return [`ZERO_SIZE_PTR`], which is non-null, never dereferenceable,
//!   and accepted by `kfree` / `ksize` / `krealloc`.
//! * Power-of-two sizes are naturally aligned: power-of-two classes are created with their
//!   size as alignment, so their strides, slab colours and debug padding are all multiples of
//!   it inside naturally aligned slabs; large blocks are aligned to their size.
//! * When the page source is out of memory, `kmalloc` shrinks every kmalloc cache (this CPU's
//!   arrays and the empty slabs kept for reuse) and retries once, so pages parked in one size
//!   class serve another before the caller sees [`AllocError::OutOfMemory`].
//! * `kmalloc_aligned` honours any power-of-two alignment by rounding the size up to a power of
//!   two at least the alignment.

use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mmkit_addr::{IrqControl, Pfn, PAGE_SIZE};

use crate::cache::{Cache, CacheConfig};
use crate::error::{AllocError, CreateError, FreeError, VerifyError};
use crate::flags::{CacheFlags, Gfp};
use crate::page_source::{PageBlock, PageSource};
use spin::Once;

use crate::slab::{self, PageKind, PRIVATE_LARGE};
use crate::stats::SLABINFO_HEADER;

/// The kmalloc size classes: Linux's `kmalloc_info` (8 ... 8192, with 96 and 192) refined to
/// 8, 16, 24, 32, 48, 64 and then four classes per doubling from 64 bytes up (jemalloc's
/// spacing: 80, 96, 112, 128, then 160 ... 256, up to 5120, 6144, 7168, 8192). The extra
/// classes are there because the heap-efficiency bench (benches/slab.rs) showed them paying:
/// with Linux's table a request is rounded up by a quarter on average (76% of a 4 MiB heap in
/// use at the first failure for requests of 4..200 bytes, against 88% for talc); with four
/// steps per doubling the rounding costs about 10%. Power-of-two requests still get their
/// power-of-two class, so they stay naturally aligned. Classes up to 192 are multiples of 8
/// and above it multiples of 32, which is what the index tables below rely on.
///
/// ```
/// use mmkit_slab::{KMALLOC_CLASSES, NR_CLASSES};
/// assert_eq!(KMALLOC_CLASSES[..6], [8, 16, 24, 32, 48, 64]);
/// // From 64 up: four classes per doubling, each a quarter of the lower power of two apart.
/// for w in KMALLOC_CLASSES[5..].windows(2) {
///     let base = 1 << w[0].ilog2();
///     assert_eq!(w[1] - w[0], base / 4);
/// }
/// assert_eq!(KMALLOC_CLASSES[NR_CLASSES - 1], 8192);
/// ```
pub const KMALLOC_CLASSES: [usize; NR_CLASSES] = [
    8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896,
    1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192,
];
/// Number of size classes.
pub const NR_CLASSES: usize = 34;
/// Largest size served by a slab cache (Linux `KMALLOC_MAX_CACHE_SIZE`, two pages).
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
/// Largest size served at all: the largest block order of the page-source contract we assume
/// (`MAX_PAGE_ORDER` = 10, 4 MiB).
pub const KMALLOC_MAX_SIZE: usize = (PAGE_SIZE as usize) << 10;

/// What `kmalloc(0)` returns (Linux `ZERO_SIZE_PTR`, address 16).
pub const ZERO_SIZE_PTR: NonNull<u8> = {
    let p = 16 as *mut u8;
    // SAFETY: 16 is not null.
    unsafe { NonNull::new_unchecked(p) }
};

/// The smallest class holding `size` bytes, by linear search (for building the tables).
const fn smallest_class(size: usize) -> u8 {
    let mut c = 0;
    while c + 1 < NR_CLASSES && KMALLOC_CLASSES[c] < size {
        c += 1;
    }
    c as u8
}

/// Class index for sizes 1..=192 by `(size - 1) / 8` (Linux `size_index`), so the odd classes
/// 96 and 192 need no search.
const SMALL_INDEX: [u8; 24] = {
    let mut t = [0u8; 24];
    let mut i = 0;
    while i < 24 {
        t[i] = smallest_class((i + 1) * 8);
        i += 1;
    }
    t
};

/// Class index for sizes 193..=8192 by `(size - 1) / 32`. Exact because every class above
/// 192 bytes is a multiple of 32, so no class boundary falls inside a bucket.
const LARGE_INDEX: [u8; KMALLOC_MAX_CACHE_SIZE / 32] = {
    let mut t = [0u8; KMALLOC_MAX_CACHE_SIZE / 32];
    let mut i = 0;
    while i < t.len() {
        t[i] = smallest_class((i + 1) * 32);
        i += 1;
    }
    t
};

/// Whether every class fits the bucket width of its index table (8 up to 192, 32 above) and
/// the classes ascend.
const fn classes_fit_index_tables() -> bool {
    let mut c = 0;
    while c < NR_CLASSES {
        let size = KMALLOC_CLASSES[c];
        let step = if size <= 192 { 8 } else { 32 };
        if size % step != 0 || (c > 0 && KMALLOC_CLASSES[c - 1] >= size) {
            return false;
        }
        c += 1;
    }
    true
}

static_assertions::const_assert!(classes_fit_index_tables());
static_assertions::const_assert!(KMALLOC_CLASSES[NR_CLASSES - 1] == KMALLOC_MAX_CACHE_SIZE);

/// The alignment a kmalloc class is created with (Linux `create_boot_cache`): a power-of-two
/// class is aligned to its size, so that neither slab colouring nor debug padding can move
/// its objects off their natural alignment; other classes take the minimum.
const fn natural_align(size: usize) -> usize {
    if size.is_power_of_two() {
        size
    } else {
        0
    }
}

static_assertions::const_assert!(KMALLOC_MAX_CACHE_SIZE <= crate::layout::MAX_ALIGN);

/// The three kmalloc cache sets (Linux `enum kmalloc_cache_type`, the common three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmallocKind {
    /// `kmalloc-*`.
    Normal = 0,
    /// `kmalloc-rcl-*`: slab pages allocated as reclaimable.
    Reclaim = 1,
    /// `dma-kmalloc-*`: slab pages from the DMA zone.
    Dma = 2,
}

const NR_KINDS: usize = 3;

/// Cache names, per kind and class (as `/proc/slabinfo` shows them).
const NAMES: [[&str; NR_CLASSES]; NR_KINDS] = [
    [
        "kmalloc-8",
        "kmalloc-16",
        "kmalloc-24",
        "kmalloc-32",
        "kmalloc-48",
        "kmalloc-64",
        "kmalloc-80",
        "kmalloc-96",
        "kmalloc-112",
        "kmalloc-128",
        "kmalloc-160",
        "kmalloc-192",
        "kmalloc-224",
        "kmalloc-256",
        "kmalloc-320",
        "kmalloc-384",
        "kmalloc-448",
        "kmalloc-512",
        "kmalloc-640",
        "kmalloc-768",
        "kmalloc-896",
        "kmalloc-1k",
        "kmalloc-1280",
        "kmalloc-1536",
        "kmalloc-1792",
        "kmalloc-2k",
        "kmalloc-2560",
        "kmalloc-3k",
        "kmalloc-3584",
        "kmalloc-4k",
        "kmalloc-5k",
        "kmalloc-6k",
        "kmalloc-7k",
        "kmalloc-8k",
    ],
    [
        "kmalloc-rcl-8",
        "kmalloc-rcl-16",
        "kmalloc-rcl-24",
        "kmalloc-rcl-32",
        "kmalloc-rcl-48",
        "kmalloc-rcl-64",
        "kmalloc-rcl-80",
        "kmalloc-rcl-96",
        "kmalloc-rcl-112",
        "kmalloc-rcl-128",
        "kmalloc-rcl-160",
        "kmalloc-rcl-192",
        "kmalloc-rcl-224",
        "kmalloc-rcl-256",
        "kmalloc-rcl-320",
        "kmalloc-rcl-384",
        "kmalloc-rcl-448",
        "kmalloc-rcl-512",
        "kmalloc-rcl-640",
        "kmalloc-rcl-768",
        "kmalloc-rcl-896",
        "kmalloc-rcl-1k",
        "kmalloc-rcl-1280",
        "kmalloc-rcl-1536",
        "kmalloc-rcl-1792",
        "kmalloc-rcl-2k",
        "kmalloc-rcl-2560",
        "kmalloc-rcl-3k",
        "kmalloc-rcl-3584",
        "kmalloc-rcl-4k",
        "kmalloc-rcl-5k",
        "kmalloc-rcl-6k",
        "kmalloc-rcl-7k",
        "kmalloc-rcl-8k",
    ],
    [
        "dma-kmalloc-8",
        "dma-kmalloc-16",
        "dma-kmalloc-24",
        "dma-kmalloc-32",
        "dma-kmalloc-48",
        "dma-kmalloc-64",
        "dma-kmalloc-80",
        "dma-kmalloc-96",
        "dma-kmalloc-112",
        "dma-kmalloc-128",
        "dma-kmalloc-160",
        "dma-kmalloc-192",
        "dma-kmalloc-224",
        "dma-kmalloc-256",
        "dma-kmalloc-320",
        "dma-kmalloc-384",
        "dma-kmalloc-448",
        "dma-kmalloc-512",
        "dma-kmalloc-640",
        "dma-kmalloc-768",
        "dma-kmalloc-896",
        "dma-kmalloc-1k",
        "dma-kmalloc-1280",
        "dma-kmalloc-1536",
        "dma-kmalloc-1792",
        "dma-kmalloc-2k",
        "dma-kmalloc-2560",
        "dma-kmalloc-3k",
        "dma-kmalloc-3584",
        "dma-kmalloc-4k",
        "dma-kmalloc-5k",
        "dma-kmalloc-6k",
        "dma-kmalloc-7k",
        "dma-kmalloc-8k",
    ],
];

/// The class index serving `size` bytes (1..=8192), or `None` for larger sizes.
///
/// ```
/// use mmkit_slab::{class_index, KMALLOC_CLASSES};
/// assert_eq!(KMALLOC_CLASSES[class_index(100).unwrap()], 112);
/// assert_eq!(KMALLOC_CLASSES[class_index(300).unwrap()], 320);
/// assert_eq!(KMALLOC_CLASSES[class_index(8192).unwrap()], 8192);
/// assert_eq!(class_index(8193), None);
/// ```
pub const fn class_index(size: usize) -> Option<usize> {
    if size == 0 {
        Some(0)
    } else if size <= 192 {
        Some(SMALL_INDEX[(size - 1) / 8] as usize)
    } else if size <= KMALLOC_MAX_CACHE_SIZE {
        Some(LARGE_INDEX[(size - 1) / 32] as usize)
    } else {
        None
    }
}

impl KmallocKind {
    /// The set GFP flags select (DMA wins over reclaimable, as in Linux's `kmalloc_type`).
    pub const fn from_gfp(gfp: Gfp) -> Self {
        if gfp.contains(Gfp::DMA) {
            Self::Dma
        } else if gfp.contains(Gfp::RECLAIMABLE) {
            Self::Reclaim
        } else {
            Self::Normal
        }
    }
}

/// Why `krealloc` failed; the old allocation is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KreallocError {
    /// The old pointer was refused.
    Free(FreeError),
    /// No memory for the new size.
    Alloc(AllocError),
}

impl fmt::Display for KreallocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Default)]
struct LargeCounters {
    allocs: AtomicU64,
    frees: AtomicU64,
    frames: AtomicU64,
}

/// The kmalloc caches of one system.
pub struct Kmalloc<'a, S: PageSource, P: IrqControl> {
    /// Each cache is created on its first use (see [`Kmalloc::new`]).
    sets: [[Once<Cache<'a, S, P>>; NR_CLASSES]; NR_KINDS],
    src: &'a S,
    platform: &'a P,
    /// Flags every cache is created with.
    flags: CacheFlags,
    large: LargeCounters,
}

impl<S: PageSource, P: IrqControl> fmt::Debug for Kmalloc<'_, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kmalloc")
            .field("large_live", &self.large_live())
            .finish_non_exhaustive()
    }
}

impl<'a, S: PageSource, P: IrqControl> Kmalloc<'a, S, P> {
    /// The kmalloc family: [`NR_CLASSES`] caches each of normal, reclaimable and DMA. Each
    /// cache is created on its first use (its descriptor block, with the per-CPU arrays,
    /// costs a page or more), so a kernel pays only for the classes and kinds it uses;
    /// creating one can fail for lack of memory, which that allocation reports. Nothing is
    /// allocated here.
    pub fn new(src: &'a S, platform: &'a P) -> Result<Self, CreateError> {
        Self::with_flags(src, platform, CacheFlags::empty())
    }

    /// [`new`](Self::new) with extra flags on every cache (for example debug flags, as the
    /// `slub_debug=` boot option does). The flags are checked here, on a throw-away layout,
    /// so a bad combination is reported now rather than by every later allocation.
    pub fn with_flags(src: &'a S, platform: &'a P, flags: CacheFlags) -> Result<Self, CreateError> {
        for &size in &KMALLOC_CLASSES {
            crate::layout::SlabLayout::new(
                size,
                natural_align(size),
                flags,
                false,
                platform.nr_cpus().max(1),
            )?;
        }
        Ok(Self {
            sets: core::array::from_fn(|_| core::array::from_fn(|_| Once::new())),
            src,
            platform,
            flags,
            large: LargeCounters::default(),
        })
    }

    /// The cache of `kind` and `class`, created now (with `ctx`'s context bits for its
    /// descriptor block) if this is its first use.
    #[inline]
    fn cache(&self, kind: usize, class: usize, ctx: Gfp) -> Result<&Cache<'a, S, P>, AllocError> {
        let slot = &self.sets[kind][class];
        match slot.get() {
            Some(c) => Ok(c),
            None => self.create(slot, kind, class, ctx),
        }
    }

    #[cold]
    #[inline(never)]
    fn create<'s>(
        &'s self,
        slot: &'s Once<Cache<'a, S, P>>,
        kind: usize,
        class: usize,
        ctx: Gfp,
    ) -> Result<&'s Cache<'a, S, P>, AllocError> {
        slot.try_call_once(|| {
            let mut f = self.flags;
            let mut gfp = Gfp::empty();
            match kind {
                1 => f |= CacheFlags::RECLAIM_ACCOUNT,
                2 => gfp = Gfp::DMA,
                _ => {}
            }
            let size = KMALLOC_CLASSES[class];
            let config = CacheConfig::new(NAMES[kind][class], size)
                .align(natural_align(size))
                .flags(f)
                .gfp(gfp)
                .kmalloc_slot((kind * NR_CLASSES + class) as u16);
            Cache::new_in_context(&config, self.src, self.platform, ctx)
        })
        .map_err(|_| AllocError::OutOfMemory)
    }

    /// The cache of `kind` serving `size` bytes, if a cache serves it (created now if this
    /// is its first use; `None` also when that fails).
    pub fn cache_for(&self, size: usize, kind: KmallocKind) -> Option<&Cache<'a, S, P>> {
        self.cache(kind as usize, class_index(size)?, Gfp::empty())
            .ok()
    }

    /// Every cache created so far, normal set first.
    pub fn caches(&self) -> impl Iterator<Item = &Cache<'a, S, P>> {
        self.sets.iter().flatten().filter_map(Once::get)
    }

    /// `kmalloc(size, Gfp::empty())` served from this CPU's array, for callers with a slow
    /// path of their own (the facade's `GlobalAlloc`): the class from a table, the class's
    /// cache, one pop. `None` when that does not serve it: `size` is 0 or above
    /// [`KMALLOC_MAX_CACHE_SIZE`], the class has no cache yet, the cache keeps no per-CPU
    /// arrays (debug flags), or the array is empty. The caller then calls
    /// [`kmalloc`](Self::kmalloc), which refills, grows, retries and reports errors.
    #[inline(always)]
    pub fn kmalloc_cached(&self, size: usize) -> Option<NonNull<u8>> {
        if size.wrapping_sub(1) >= KMALLOC_MAX_CACHE_SIZE {
            return None;
        }
        let class = class_index(size)?;
        debug_assert!(class < NR_CLASSES);
        // SAFETY: `class_index` returns entries of its tables, which `smallest_class` fills
        // with indices below `NR_CLASSES`: no bounds check on the fast path.
        let slot = unsafe { self.sets[KmallocKind::Normal as usize].get_unchecked(class) };
        slot.get()?.alloc_fast()
    }

    /// Allocate `size` bytes (`kmalloc`).
    ///
    /// A request for the normal set without [`Gfp::ZERO`] tries
    /// [`kmalloc_cached`](Self::kmalloc_cached) first (a table lookup and one pop); the
    /// context bits matter only when a slab must grow, which that never does.
    #[track_caller]
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        if !gfp.intersects(Gfp::DMA | Gfp::RECLAIMABLE | Gfp::ZERO) {
            if let Some(p) = self.kmalloc_cached(size) {
                return Ok(p);
            }
        }
        self.kmalloc_slow(size, gfp)
    }

    /// [`kmalloc`](Self::kmalloc) past the fast path: cache creation, refill, growth, the
    /// shrink-and-retry on out-of-memory, large allocations, debug caches.
    #[track_caller]
    #[inline(never)]
    fn kmalloc_slow(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        match self.kmalloc_once(size, gfp, None) {
            Err(AllocError::OutOfMemory) => self.kmalloc_after_shrink(size, gfp, None),
            r => r,
        }
    }

    /// Allocate `size` bytes from memory of node `node` where there is some
    /// (`kmalloc_node`); see [`Cache::alloc_node`].
    #[track_caller]
    pub fn kmalloc_node(
        &self,
        size: usize,
        gfp: Gfp,
        node: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        match self.kmalloc_once(size, gfp, Some(node)) {
            Err(AllocError::OutOfMemory) => self.kmalloc_after_shrink(size, gfp, Some(node)),
            r => r,
        }
    }

    /// Out of pages: give back what every cache holds unused (this CPU's arrays, empty slabs
    /// kept as `min_partial`) and try once more if that freed anything. Memory parked in one
    /// size class is then not lost to another, which is what the heap-efficiency bench
    /// measures (Linux gets the same effect from slab shrinkers under direct reclaim). Other
    /// CPUs are not called: the caller may have interrupts off.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn kmalloc_after_shrink(
        &self,
        size: usize,
        gfp: Gfp,
        node: Option<usize>,
    ) -> Result<NonNull<u8>, AllocError> {
        if self.caches().map(Cache::shrink_this_cpu).sum::<u64>() == 0 {
            return Err(AllocError::OutOfMemory);
        }
        self.kmalloc_once(size, gfp, node)
    }

    #[track_caller]
    #[inline]
    fn kmalloc_once(
        &self,
        size: usize,
        gfp: Gfp,
        node: Option<usize>,
    ) -> Result<NonNull<u8>, AllocError> {
        if size == 0 {
            return Ok(ZERO_SIZE_PTR);
        }
        match class_index(size) {
            Some(class) => {
                let cache = self.cache(KmallocKind::from_gfp(gfp) as usize, class, gfp)?;
                match node {
                    None => cache.alloc_flags(gfp),
                    Some(n) => cache.alloc_node_flags(n, gfp),
                }
            }
            None => self.alloc_large(size, gfp, node),
        }
    }

    /// Allocate `size` zeroed bytes (`kzalloc`).
    #[track_caller]
    pub fn kzalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        self.kmalloc(size, gfp | Gfp::ZERO)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two).
    #[track_caller]
    pub fn kmalloc_aligned(
        &self,
        size: usize,
        align: usize,
        gfp: Gfp,
    ) -> Result<NonNull<u8>, AllocError> {
        if !align.is_power_of_two() {
            return Err(AllocError::BadAlign);
        }
        // Large allocations start on a page: any alignment up to a page is theirs already.
        let large = size > KMALLOC_MAX_CACHE_SIZE && align as u64 <= PAGE_SIZE;
        if align <= crate::layout::MIN_ALIGN || size == 0 || large {
            return self.kmalloc(size, gfp);
        }
        let size = size
            .max(align)
            .checked_next_power_of_two()
            .ok_or(AllocError::TooLarge)?;
        self.kmalloc(size, gfp)
    }

    fn alloc_large(
        &self,
        size: usize,
        gfp: Gfp,
        node: Option<usize>,
    ) -> Result<NonNull<u8>, AllocError> {
        if size > KMALLOC_MAX_SIZE {
            return Err(AllocError::TooLarge);
        }
        // Exactly the frames needed (Linux `alloc_pages_exact`), not the power of two.
        let frames = (size as u64).div_ceil(PAGE_SIZE);
        let node = match node {
            Some(n) => n,
            None => self.src.cpu_node(self.platform.current_cpu()),
        };
        let block = self
            .src
            .alloc_pages_exact(node, frames, gfp - Gfp::ZERO)
            .ok_or(AllocError::OutOfMemory)?;
        self.src
            .set_page_private(block.pfn, (frames << 8) | PRIVATE_LARGE);
        // Other frames say "nothing here", so a pointer into them is refused rather than read
        // through whatever a previous owner of the frame left in its word. A read is cheaper
        // than a store through the source, and the buddy's exact allocations come with every
        // word already 0.
        for i in 1..frames {
            if let Some(pfn) = block.pfn.checked_add_frames(i) {
                if self.src.page_private(pfn) != 0 {
                    self.src.set_page_private(pfn, 0);
                }
            }
        }
        if gfp.contains(Gfp::ZERO) {
            // SAFETY: the `frames` frames are ours.
            unsafe { slab::zero_bytes(block.ptr, (frames * PAGE_SIZE) as usize) };
        }
        self.large.allocs.fetch_add(1, Relaxed);
        self.large.frames.fetch_add(frames, Relaxed);
        Ok(block.ptr)
    }

    /// The cache that owns a slab: the kmalloc cache in the slot the slab's tag names, if
    /// that cache is the one the slab's header names (so a slab of any other cache, this
    /// `Kmalloc`'s or not, is refused).
    #[inline(always)]
    fn cache_of(&self, slab: slab::SlabPtr) -> Result<&Cache<'a, S, P>, FreeError> {
        // Slot `kind * NR_CLASSES + class` is the flattened index: no division on the free path.
        match self
            .sets
            .as_flattened()
            .get(slab.tag() as usize)
            .and_then(Once::get)
        {
            Some(cache) if cache.id() == slab.cache_id() => Ok(cache),
            _ => Err(FreeError::WrongCache),
        }
    }

    /// Free what `kmalloc` returned (`kfree`). A pointer that is not a live kmalloc
    /// allocation is refused where detectable (see [`FreeError`]) and nothing changes.
    ///
    /// # Safety
    /// Either `ptr` is [`ZERO_SIZE_PTR`] (a no-op), or a live allocation of this `Kmalloc`
    /// owned by the caller and not used after this call, or a misuse this call detects, which
    /// is defined (an error, nothing changed): every misuse [`Cache::free`] detects, for the
    /// kmalloc cache `ptr` points into (a pointer into a slab of a cache that is not one of
    /// this `Kmalloc`'s is [`FreeError::WrongCache`]); for large allocations, a pointer into
    /// the first page that is not its start ([`FreeError::Misaligned`]), into a later page,
    /// or to a block already freed and not reallocated ([`FreeError::NotSlabMemory`]).
    /// What stays undefined is what [`Cache::free`] lists, and freeing a large block again
    /// after its frames were handed out anew.
    #[track_caller]
    #[inline]
    pub unsafe fn kfree(&self, ptr: NonNull<u8>) -> Result<(), FreeError> {
        if ptr == ZERO_SIZE_PTR {
            return Ok(());
        }
        // SAFETY: caller's contract: if `ptr` is a slab object, the caller owns it.
        match unsafe { slab::lookup(self.src, ptr) } {
            PageKind::Slab(s) => {
                let cache = self.cache_of(s)?;
                // SAFETY: `s` is `ptr`'s slab and names `cache`; caller's contract.
                unsafe { cache.free_in_own_slab(s, ptr, Location::caller()) }
            }
            // SAFETY: caller's contract.
            PageKind::Large(pfn, frames) => unsafe { self.kfree_large(ptr, pfn, frames) },
            PageKind::Unknown => Err(FreeError::NotSlabMemory),
        }
    }

    /// `kfree` of a large allocation whose head frame `pfn` says it has `frames` frames; out
    /// of line, so that the slab-object path stays small enough to inline.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree); `lookup` returned `Large(pfn, frames)` for `ptr`.
    #[cold]
    #[inline(never)]
    unsafe fn kfree_large(&self, ptr: NonNull<u8>, pfn: Pfn, frames: u64) -> Result<(), FreeError> {
        if ptr.as_ptr() as usize % PAGE_SIZE as usize != 0 {
            return Err(FreeError::Misaligned);
        }
        self.src.set_page_private(pfn, 0);
        // SAFETY: the first frame's private word says a large kmalloc of `frames`
        // frames starts at `pfn` and `ptr` is its first byte; the caller gives it up.
        unsafe { self.src.free_pages_exact(PageBlock { pfn, ptr }, frames) };
        self.large.frees.fetch_add(1, Relaxed);
        self.large.frames.fetch_sub(frames, Relaxed);
        Ok(())
    }

    /// Usable size of a kmalloc allocation (`ksize`): the class size, or the whole block for
    /// large allocations; 0 for [`ZERO_SIZE_PTR`].
    ///
    /// # Safety
    /// If `ptr` is a kmalloc allocation, it is live and owned by the caller for the call.
    pub unsafe fn ksize(&self, ptr: NonNull<u8>) -> Result<usize, FreeError> {
        if ptr == ZERO_SIZE_PTR {
            return Ok(0);
        }
        // SAFETY: caller's contract.
        match unsafe { slab::lookup(self.src, ptr) } {
            PageKind::Slab(s) => {
                let cache = self.cache_of(s)?;
                s.object_index(cache.layout(), ptr)?;
                Ok(cache.object_size())
            }
            PageKind::Large(_, frames) if ptr.as_ptr() as usize % PAGE_SIZE as usize == 0 => {
                Ok((frames * PAGE_SIZE) as usize)
            }
            PageKind::Large(..) => Err(FreeError::Misaligned),
            PageKind::Unknown => Err(FreeError::NotSlabMemory),
        }
    }

    /// Resize (`krealloc`): a large block changes its frame count in place when the page
    /// source can (shrinking gives the frames past the new size back; growing takes the
    /// frames after it if they are free); otherwise in place when the usable size suffices,
    /// else allocate, copy the old usable bytes and free the old allocation. Size 0 frees and returns
    /// [`ZERO_SIZE_PTR`]. On error the old allocation is untouched.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree): `ptr` is given up on success.
    #[track_caller]
    pub unsafe fn krealloc(
        &self,
        ptr: NonNull<u8>,
        new_size: usize,
        gfp: Gfp,
    ) -> Result<NonNull<u8>, KreallocError> {
        // SAFETY: caller's contract.
        let old = unsafe { self.ksize(ptr) }.map_err(KreallocError::Free)?;
        if new_size == 0 {
            // SAFETY: caller's contract.
            unsafe { self.kfree(ptr) }.map_err(KreallocError::Free)?;
            return Ok(ZERO_SIZE_PTR);
        }
        if let Some(done) = self.krealloc_large_in_place(ptr, old, new_size, gfp) {
            return Ok(done);
        }
        if new_size <= old {
            return Ok(ptr);
        }
        let new = self.kmalloc(new_size, gfp).map_err(KreallocError::Alloc)?;
        // SAFETY: the caller owns `old` bytes at `ptr`; `new` is fresh and larger; distinct
        // allocations do not overlap.
        unsafe { slab::copy_bytes(ptr, new, old) };
        if gfp.contains(Gfp::ZERO) {
            // `kmalloc` zeroed the whole new object before the copy; nothing left to do.
        }
        // SAFETY: caller's contract; `ptr` passed `ksize`, so this cannot be refused except
        // for a red zone broken by the caller, in which case we keep the new block too.
        if let Err(e) = unsafe { self.kfree(ptr) } {
            // SAFETY: `new` was allocated above and never handed out.
            let _ = unsafe { self.kfree(new) };
            return Err(KreallocError::Free(e));
        }
        Ok(new)
    }

    /// `krealloc` of a large block (`old` bytes, a whole number of frames) to `new_size`
    /// bytes where it is, through the page source's
    /// [`resize_pages_exact`](PageSource::resize_pages_exact): shrinking to fewer frames
    /// gives the rest back (a large block stays a large block, however small the new size),
    /// growing takes the frames after it if they are free. `None` when `ptr` is not a large
    /// block, the frame count does not change, or the source cannot resize in place.
    fn krealloc_large_in_place(
        &self,
        ptr: NonNull<u8>,
        old: usize,
        new_size: usize,
        gfp: Gfp,
    ) -> Option<NonNull<u8>> {
        if old <= KMALLOC_MAX_CACHE_SIZE || new_size > KMALLOC_MAX_SIZE {
            return None;
        }
        let old_frames = old as u64 / PAGE_SIZE;
        let frames = (new_size as u64).div_ceil(PAGE_SIZE);
        if frames == old_frames {
            return None;
        }
        // SAFETY: `ksize` said `ptr` is a live large block of `old` bytes, so its first frame
        // is its head and its word holds `old_frames`.
        let PageKind::Large(pfn, n) = (unsafe { slab::lookup(self.src, ptr) }) else {
            return None;
        };
        debug_assert_eq!(n, old_frames);
        let block = PageBlock { pfn, ptr };
        // SAFETY: `(block, old_frames)` is the live exact allocation `kmalloc_large` made (or
        // a resize of it); the caller gives up the frames past `frames` on success.
        if !unsafe { self.src.resize_pages_exact(block, old_frames, frames) } {
            return None;
        }
        self.src
            .set_page_private(pfn, (frames << 8) | PRIVATE_LARGE);
        for i in old_frames.min(frames).max(1)..frames {
            if let Some(p) = pfn.checked_add_frames(i) {
                if self.src.page_private(p) != 0 {
                    self.src.set_page_private(p, 0);
                }
            }
        }
        if frames > old_frames {
            self.large.frames.fetch_add(frames - old_frames, Relaxed);
            if gfp.contains(Gfp::ZERO) {
                // SAFETY: the frames past `old` bytes are ours now.
                unsafe {
                    slab::zero_bytes(ptr.add(old), ((frames - old_frames) * PAGE_SIZE) as usize)
                };
            }
        } else {
            self.large.frames.fetch_sub(old_frames - frames, Relaxed);
        }
        Some(ptr)
    }

    /// Large allocations currently live.
    pub fn large_live(&self) -> u64 {
        self.large
            .allocs
            .load(Relaxed)
            .wrapping_sub(self.large.frees.load(Relaxed))
    }

    /// Frames held by live large allocations.
    pub fn large_frames(&self) -> u64 {
        self.large.frames.load(Relaxed)
    }

    /// Shrink every cache (every reachable CPU's arrays and all empty slabs, see
    /// [`Cache::shrink`]); returns frames released.
    pub fn shrink(&self) -> u64 {
        self.caches().map(Cache::shrink).sum()
    }

    /// Drain every CPU's arrays of every cache and release empty slabs.
    pub fn drain_all(&mut self) -> u64 {
        self.sets
            .iter_mut()
            .flatten()
            .filter_map(Once::get_mut)
            .map(Cache::drain_all)
            .sum()
    }

    /// Verify every cache.
    pub fn verify(&mut self) -> Result<(), VerifyError> {
        self.sets
            .iter_mut()
            .flatten()
            .filter_map(Once::get_mut)
            .try_for_each(Cache::verify)
    }
}

impl<S: PageSource, P: IrqControl> fmt::Display for Kmalloc<'_, S, P> {
    /// `/proc/slabinfo` for the kmalloc caches, header included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SLABINFO_HEADER)?;
        for c in self.caches() {
            fmt::Display::fmt(c, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_index_picks_the_tightest_class() {
        for size in 1..=KMALLOC_MAX_CACHE_SIZE {
            let c = class_index(size).unwrap();
            assert!(KMALLOC_CLASSES[c] >= size, "size {size}");
            assert!(
                c == 0 || KMALLOC_CLASSES[c - 1] < size,
                "size {size} not tightest"
            );
        }
        assert_eq!(KMALLOC_CLASSES[class_index(96).unwrap()], 96);
        assert_eq!(KMALLOC_CLASSES[class_index(97).unwrap()], 112);
        assert_eq!(KMALLOC_CLASSES[class_index(193).unwrap()], 224);
        assert_eq!(KMALLOC_CLASSES[class_index(257).unwrap()], 320);
        assert_eq!(KMALLOC_CLASSES[class_index(4097).unwrap()], 5120);
        assert_eq!(class_index(8193), None);
    }

    #[test]
    fn power_of_two_sizes_get_power_of_two_classes() {
        for shift in 3..=13 {
            let size = 1usize << shift;
            assert_eq!(KMALLOC_CLASSES[class_index(size).unwrap()], size);
        }
    }

    #[test]
    fn classes_are_at_most_a_quarter_apart_from_48_bytes() {
        for pair in KMALLOC_CLASSES.windows(2).filter(|p| p[0] >= 48) {
            assert!(4 * (pair[1] - pair[0]) <= pair[1], "{pair:?}");
        }
    }

    /// Every slot of every colour of every power-of-two class sits on its natural alignment
    /// (slab blocks are naturally aligned, so an offset aligned to the size is enough), with
    /// and without debug flags, for machines of 1 to 64 CPUs (the CPU count picks the order).
    #[test]
    fn power_of_two_classes_are_naturally_aligned_in_every_colour() {
        use crate::layout::SlabLayout;
        let flag_sets = [
            CacheFlags::empty(),
            CacheFlags::RED_ZONE,
            CacheFlags::POISON | CacheFlags::RED_ZONE | CacheFlags::STORE_USER,
            CacheFlags::RECLAIM_ACCOUNT,
        ];
        for &size in KMALLOC_CLASSES.iter().filter(|s| s.is_power_of_two()) {
            let want = size;
            for flags in flag_sets {
                for cpus in [1, 2, 3, 4, 8, 64] {
                    let l = SlabLayout::new(size, natural_align(size), flags, false, cpus).unwrap();
                    for colour in 0..=l.colours {
                        for slot in 0..l.objects {
                            let off = l.first_object_offset(colour) + slot * l.stride;
                            assert_eq!(
                                off % want,
                                0,
                                "kmalloc-{size} {flags:?} cpus {cpus} colour {colour} slot {slot}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gfp_selects_kind() {
        assert_eq!(KmallocKind::from_gfp(Gfp::empty()), KmallocKind::Normal);
        assert_eq!(
            KmallocKind::from_gfp(Gfp::RECLAIMABLE),
            KmallocKind::Reclaim
        );
        assert_eq!(
            KmallocKind::from_gfp(Gfp::DMA | Gfp::RECLAIMABLE),
            KmallocKind::Dma
        );
    }
}
