//! The kernels as users of mmkit-slab: kmalloc and an object cache on top of the buddy.
//!
//! [`BuddyPages`] is the slab's [`PageSource`] over a live [`BuddyAllocator`]: blocks come from
//! the buddy, their kernel address from the kernel's direct map, and the per-frame private
//! word lives in the buddy's page descriptors — the glue the facade will own. [`run`] (called
//! by [`crate::buddy_checks::run`] while the buddy is up) then checks:
//!
//! 1. `kmalloc_serves_every_size`: one allocation of every size in [`SIZES`] (all kmalloc
//!    classes, and page-backed sizes above the largest class); each is distinct, at least
//!    as large as asked (`ksize`), naturally aligned up to 8 bytes, and holds a pattern
//!    written through it; all freed; `verify()`;
//! 2. `kzalloc_zeroes`: a dirtied object freed, then `kzalloc` of the same size reads as zero;
//! 3. `cache_hands_out_aligned_distinct_objects`: a 200-byte, 64-byte-aligned cache gives
//!    [`CACHE_OBJECTS`] objects spanning several slabs, aligned and pairwise disjoint; all
//!    freed; `verify()`; the cache is destroyed;
//!
//! and prints the kmalloc `/proc/slabinfo` view.

use core::fmt::Write;
use core::ptr::NonNull;

use mmkit_addr::{IrqControl, Order, Pfn, PhysAddr, PhysMapper, PhysRange, PAGE_SHIFT};
use mmkit_buddy::{BuddyAllocator, GfpFlags};
use mmkit_slab::{Cache, CacheConfig, Gfp, Kmalloc, PageBlock, PageSource};

use crate::harness::{CheckResult, Harness, Reason};
use crate::{ensure, fail, rawmem};

/// The sizes `kmalloc_serves_every_size` asks for: every Linux kmalloc class (8 B to 8 KiB,
/// with the 96 and 192 byte ones) and two page-backed sizes.
pub const SIZES: [usize; 15] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536,
];

/// Objects the cache check allocates (several 4 KiB slabs of 200-byte objects).
pub const CACHE_OBJECTS: usize = 100;

/// The slab's page source over the buddy and the kernel's direct map.
pub struct BuddyPages<'b, P: IrqControl> {
    buddy: &'b BuddyAllocator<'static, P>,
    mapper: &'b dyn PhysMapper,
    /// `virtual = physical + offset` in the direct map.
    offset: u64,
}

impl<'b, P: IrqControl> BuddyPages<'b, P> {
    /// A page source handing out `buddy`'s blocks at their direct-map addresses.
    ///
    /// # Safety
    /// `mapper` must map every frame the buddy manages RW at `pa + offset` (the kernel's direct
    /// map), for as long as the source is used.
    pub unsafe fn new(
        buddy: &'b BuddyAllocator<'static, P>,
        mapper: &'b dyn PhysMapper,
        offset: u64,
    ) -> Self {
        Self {
            buddy,
            mapper,
            offset,
        }
    }
}

// SAFETY: blocks come from the buddy, which gives each allocated block to one owner until it is
// freed, naturally aligned; the direct map (`new`'s contract) maps it contiguously and RW at an
// address aligned like the block (the offset is a multiple of every block size, checked in
// `alloc_pages`). The private words are the buddy's per-descriptor words, which it clears on
// allocation and reports only for allocated frames (`page_private` answers 0 otherwise).
// `virt_to_pfn` inverts the direct map. The buddy is Sync for Sync platforms.
unsafe impl<P: IrqControl + Sync> PageSource for BuddyPages<'_, P> {
    fn alloc_pages(&self, order: Order, gfp: Gfp) -> Option<PageBlock> {
        let mut flags = GfpFlags::KERNEL;
        if gfp.contains(Gfp::RECLAIMABLE) {
            flags |= GfpFlags::RECLAIMABLE;
        }
        if gfp.contains(Gfp::DMA) {
            flags |= GfpFlags::DMA;
        }
        let pfn = self.buddy.alloc_pages(flags, order).ok()?;
        let range = PhysRange::from_pfns(pfn, order.pages()).ok()?;
        let ptr = self.mapper.phys_to_virt(range);
        match ptr {
            Some(ptr) if (ptr.as_ptr() as u64).is_multiple_of(order.bytes()) => {
                Some(PageBlock { pfn, ptr })
            }
            _ => {
                // Unreachable or misaligned in the direct map: give the block back.
                let _ = self.buddy.free_pages(pfn, order);
                None
            }
        }
    }

    unsafe fn free_pages(&self, block: PageBlock, order: Order) {
        // The slab frees only what it allocated (the caller's contract); a refusal would be a
        // slab bug, and there is nobody to report it to here.
        let _ = self.buddy.free_pages(block.pfn, order);
    }

    fn set_page_private(&self, pfn: Pfn, value: u64) {
        let _ = self.buddy.set_page_private(pfn, value);
    }

    fn page_private(&self, pfn: Pfn) -> u64 {
        self.buddy.page_private(pfn).unwrap_or(0)
    }

    fn virt_to_pfn(&self, addr: NonNull<u8>) -> Option<Pfn> {
        let pa = (addr.as_ptr() as u64).checked_sub(self.offset)?;
        let pfn = PhysAddr::new(pa).pfn();
        // Only addresses the direct map really translates back to this frame.
        let page = PhysRange::from_pfns(pfn, 1).ok()?;
        let va = self.mapper.phys_to_virt(page)?.as_ptr() as u64;
        (va == (addr.as_ptr() as u64) & !((1 << PAGE_SHIFT) - 1)).then_some(pfn)
    }
}

/// Run the slab checks (module docs) over `pages`.
pub fn run<W: Write, P: IrqControl + Sync>(
    h: &mut Harness<W>,
    pages: &BuddyPages<'_, P>,
    platform: &P,
) {
    let mut kmalloc = None;
    h.run("kmalloc_creates_its_caches", || {
        let k = Kmalloc::new(pages, platform).map_err(|e| Reason::new(format_args!("{e:?}")))?;
        kmalloc = Some(k);
        Ok(())
    });
    let Some(mut kmalloc) = kmalloc else {
        h.skip("kmalloc_*", "no kmalloc caches");
        return;
    };
    h.run("kmalloc_serves_every_size", || {
        serves_every_size(&mut kmalloc)
    });
    h.run("kzalloc_zeroes", || kzalloc_zeroes(&kmalloc));
    h.run("cache_hands_out_aligned_distinct_objects", || {
        cache_objects(pages, platform)
    });
    let _ = write!(h.out(), "{kmalloc}");
}

fn serves_every_size<S: PageSource, P: IrqControl>(k: &mut Kmalloc<'_, S, P>) -> CheckResult {
    let mut got: [Option<NonNull<u8>>; SIZES.len()] = [None; SIZES.len()];
    let mut result = Ok(());
    for (slot, &size) in got.iter_mut().zip(&SIZES) {
        match k.kmalloc(size, Gfp::empty()) {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                result = Err(Reason::new(format_args!("kmalloc({size}): {e:?}")));
                break;
            }
        }
    }
    if result.is_ok() {
        result = check_objects(k, &got);
    }
    for p in got.iter().flatten() {
        // SAFETY: every pointer came from this kmalloc above and is not used after this.
        if let Err(e) = unsafe { k.kfree(*p) } {
            return Err(Reason::new(format_args!("kfree({p:p}): {e:?}")));
        }
    }
    result?;
    if let Err(e) = k.verify() {
        fail!("verify: {e:?}");
    }
    Ok(())
}

fn check_objects<S: PageSource, P: IrqControl>(
    k: &Kmalloc<'_, S, P>,
    got: &[Option<NonNull<u8>>],
) -> CheckResult {
    for (i, (p, &size)) in got.iter().zip(&SIZES).enumerate() {
        let Some(p) = *p else {
            fail!("no object for size {size}");
        };
        let addr = p.as_ptr() as usize;
        ensure!(
            addr.is_multiple_of(size.min(8)),
            "kmalloc({size}) = {p:p} is misaligned"
        );
        // SAFETY: `p` is a live allocation from `k`.
        let usable = unsafe { k.ksize(p) };
        ensure!(
            usable.is_ok_and(|u| u >= size),
            "ksize of kmalloc({size}) is {usable:?}"
        );
        for (j, (q, &other)) in got[..i].iter().zip(&SIZES).enumerate() {
            if let Some(q) = *q {
                let q = q.as_ptr() as usize;
                ensure!(
                    addr + size <= q || q + other <= addr,
                    "kmalloc({size}) at {addr:#x} overlaps object {j} ({other} bytes at {q:#x})"
                );
            }
        }
        // SAFETY: `size` bytes at `p` are this check's allocation, 8-byte aligned (sizes
        // below 8 do not occur), so the pattern fits in whole words.
        unsafe { rawmem::write_read_pattern(p, size / 8, addr as u64) }?;
    }
    Ok(())
}

fn kzalloc_zeroes<S: PageSource, P: IrqControl>(k: &Kmalloc<'_, S, P>) -> CheckResult {
    const SIZE: usize = 256;
    let dirty = k
        .kmalloc(SIZE, Gfp::empty())
        .map_err(|e| Reason::new(format_args!("kmalloc: {e:?}")))?;
    // SAFETY: a live 256-byte allocation, 8-byte aligned.
    unsafe { rawmem::write_read_pattern(dirty, SIZE / 8, 0x5a) }?;
    // SAFETY: from `k`, not used afterwards.
    if let Err(e) = unsafe { k.kfree(dirty) } {
        fail!("kfree: {e:?}");
    }
    let zeroed = k
        .kzalloc(SIZE, Gfp::empty())
        .map_err(|e| Reason::new(format_args!("kzalloc: {e:?}")))?;
    // SAFETY: a live 256-byte allocation, 8-byte aligned.
    let is_zero = unsafe { rawmem::is_zero(zeroed, SIZE / 8) };
    // SAFETY: from `k`, not used afterwards.
    let freed = unsafe { k.kfree(zeroed) };
    ensure!(
        is_zero,
        "kzalloc({SIZE}) at {zeroed:p} holds data (the dirtied object was {dirty:p})"
    );
    ensure!(freed.is_ok(), "kfree: {freed:?}");
    Ok(())
}

fn cache_objects<S: PageSource, P: IrqControl>(pages: &S, platform: &P) -> CheckResult {
    const SIZE: usize = 200;
    const ALIGN: usize = 64;
    let config = CacheConfig::new("mmkit_qemu_test", SIZE).align(ALIGN);
    let mut cache = Cache::new(&config, pages, platform)
        .map_err(|e| Reason::new(format_args!("create: {e:?}")))?;
    let mut objs: [Option<NonNull<u8>>; CACHE_OBJECTS] = [None; CACHE_OBJECTS];
    let mut result = Ok(());
    for slot in objs.iter_mut() {
        match cache.alloc() {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                result = Err(Reason::new(format_args!("alloc: {e:?}")));
                break;
            }
        }
    }
    if result.is_ok() {
        result = (|| {
            let mut sorted = [0usize; CACHE_OBJECTS];
            for (s, p) in sorted.iter_mut().zip(objs.iter().flatten()) {
                let a = p.as_ptr() as usize;
                ensure!(
                    a.is_multiple_of(ALIGN),
                    "object {a:#x} not {ALIGN}-byte aligned"
                );
                *s = a;
            }
            sorted.sort_unstable();
            for w in sorted.windows(2) {
                ensure!(
                    w[0] + SIZE <= w[1],
                    "objects at {:#x} and {:#x} overlap",
                    w[0],
                    w[1]
                );
            }
            Ok(())
        })();
    }
    for p in objs.iter().flatten() {
        // SAFETY: each object came from this cache above and is not used afterwards.
        if let Err(e) = unsafe { cache.free(*p) } {
            return Err(Reason::new(format_args!("free({p:p}): {e:?}")));
        }
    }
    result?;
    if let Err(e) = cache.verify() {
        fail!("verify: {e:?}");
    }
    if let Err(e) = cache.destroy() {
        fail!("destroy: {e:?}");
    }
    Ok(())
}
