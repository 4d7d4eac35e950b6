//! The kernels as users of mmkit-buddy: bootmem's hand-off goes into a buddy allocator whose
//! descriptors live in memory bootmem kept, and pages of several orders are allocated,
//! written through the kernel's direct map, and freed.
//!
//! The kernel keeps [`storage_sizes`] bytes from bootmem (descriptor array and per-CPU
//! storage), turns them into slices ([`rawmem::uninit_slice`]) and calls [`run`] once its own
//! page tables are live, with the real platform (interrupt guard, CPU id) and the direct map
//! as the mapper. The checks, in order:
//!
//! 1. `buddy_takes_the_handoff`: every block of the hand-off enters through
//!    `free_boot_block`; the frames freed equal the hand-off's count, the allocator manages
//!    exactly that many, and `verify()` passes;
//! 2. `buddy_allocates_several_orders`: blocks of orders [`ORDERS`] come back naturally
//!    aligned, in RAM, clear of the kernel's ranges and of each other, and hold a pattern
//!    written through the mapper; all are freed and `verify()` passes;
//! 3. `buddy_refuses_double_free`;
//! 4. `buddy_zeroes_on_request`: a page filled with a pattern and freed, then a `ZERO`
//!    allocation, which must read as zeroes;
//!
//! and the `/proc/buddyinfo` view is printed. Then, with the buddy still up, the slab checks
//! ([`crate::slab_checks`]) run over it.
//!
//! This is the part of the facade's boot sequence (bootmem → memmap → zones → hand-off) the
//! kernels can run before the facade exists; the facade will take it over.

use core::fmt::Write;
use core::mem::{size_of, MaybeUninit};

use mmkit_addr::{align_up, IrqControl, Order, PhysMapper, PhysRange, PAGE_SIZE};
use mmkit_bootmem::Handoff;
use mmkit_buddy::{
    memmap_len, pcp_storage_len, BuddyAllocator, BuddyConfig, FreeError, GfpFlags, NodeInit,
    PageDesc, PerCpuPages,
};

use crate::harness::{CheckResult, Harness, Reason};
use crate::slab_checks::{self, BuddyPages};
use crate::{ensure, fail, rawmem};

/// The orders the allocation check asks for: single pages, per-CPU-list orders, a pageblock
/// (order 9) and the largest block (order 10).
pub const ORDERS: [u32; 6] = [0, 1, 3, 4, 9, 10];

/// The buddy configuration the kernels use: Linux's defaults (`max_order` 10, 2 MiB
/// pageblocks, DMA below 16 MiB, DMA32 below 4 GiB, per-CPU lists, mobility grouping).
pub fn config() -> BuddyConfig {
    BuddyConfig::default()
}

/// Bytes of descriptor array and of per-CPU storage the buddy needs for one node with `ram`
/// and one CPU, each rounded up to whole pages.
pub fn storage_sizes(ram: &[PhysRange]) -> (u64, u64) {
    let memmap = (memmap_len(ram, config().max_order) * size_of::<PageDesc>()) as u64;
    let pcp = (pcp_storage_len(1, 1) * size_of::<PerCpuPages>()) as u64;
    let page = |b: u64| align_up(b.max(1), PAGE_SIZE).unwrap_or(u64::MAX);
    (page(memmap), page(pcp))
}

/// The descriptor and per-CPU storage slices over the two ranges the kernel kept (sized by
/// [`storage_sizes`]), reached through `mapper`; `None` if a range is too small or not
/// reachable.
///
/// # Safety
/// The kernel owns both ranges for the rest of its life (bootmem kept them through the
/// hand-off), nothing else will ever access them, this is called once for them, and `mapper`
/// maps them RW for the rest of the kernel's life.
pub unsafe fn storage_slices(
    ram: &[PhysRange],
    memmap: PhysRange,
    pcp: PhysRange,
    mapper: &dyn PhysMapper,
) -> Option<Storage> {
    let memmap_entries = memmap_len(ram, config().max_order);
    let pcp_entries = pcp_storage_len(1, 1);
    if (memmap.len() as usize) < memmap_entries * size_of::<PageDesc>()
        || (pcp.len() as usize) < pcp_entries * size_of::<PerCpuPages>()
    {
        return None;
    }
    let (m, p) = (mapper.phys_to_virt(memmap)?, mapper.phys_to_virt(pcp)?);
    // SAFETY: page-aligned (bootmem allocations), large enough (checked), owned, exclusive
    // and mapped for the rest of the kernel's life (the caller's contract).
    unsafe {
        Some(Storage {
            memmap: rawmem::uninit_slice(m, memmap_entries),
            pcp: rawmem::uninit_slice(p, pcp_entries),
        })
    }
}

/// The buddy's storage, in memory the kernel owns for good.
pub struct Storage {
    /// Descriptor storage, at least `memmap_len` entries.
    pub memmap: &'static mut [MaybeUninit<PageDesc>],
    /// Per-CPU storage, at least `pcp_storage_len(1, 1)` entries.
    pub pcp: &'static mut [MaybeUninit<PerCpuPages>],
}

/// What the buddy sequence needs from the kernel.
pub struct BuddySetup<'a, P: IrqControl> {
    /// The platform hooks (CPU id, interrupt guard).
    pub platform: P,
    /// The node's RAM.
    pub ram: &'a [PhysRange],
    /// Descriptor and per-CPU storage.
    pub storage: Storage,
    /// How the kernel reaches any RAM page (its direct map).
    pub mapper: &'static dyn PhysMapper,
    /// The direct map's offset: `mapper` puts physical `pa` at `pa + direct_offset`.
    pub direct_offset: u64,
    /// Ranges no allocated block may overlap (kernel image, boot data, kept memory).
    pub avoid: &'a [PhysRange],
}

/// Run the buddy checks (module docs); returns whether the allocator came up. The allocator
/// is dropped at the end (its storage stays the kernel's): it is ~45 KiB, and passing it back
/// by value would cost the kernel's boot stack another copy.
#[inline(never)]
pub fn run<W: Write, P: IrqControl + Sync>(
    h: &mut Harness<W>,
    setup: BuddySetup<'_, P>,
    handoff: &Handoff<'_>,
    handed_off_pages: u64,
) -> bool {
    let BuddySetup {
        platform,
        ram,
        storage: Storage { memmap, pcp },
        mapper,
        direct_offset,
        avoid,
    } = setup;
    let mut buddy = None;
    h.run("buddy_takes_the_handoff", || {
        let mut nodes = [NodeInit {
            memory: ram,
            distances: &[10],
            memmap,
        }];
        let mut b = BuddyAllocator::new(platform, config(), &mut nodes, pcp)
            .map_err(|e| Reason::new(format_args!("new: {e:?}")))?;
        b.set_mapper(mapper);
        // The blocks, not the byte ranges they are cut from: the blocks leave out frame 0
        // and partial frames, as the hand-off promises.
        let mut freed = 0;
        for block in handoff.blocks() {
            b.free_boot_block(block.pfn, block.order).map_err(|e| {
                Reason::new(format_args!("free_boot_block({}): {e:?}", block.range()))
            })?;
            freed += block.order.pages();
        }
        b.finish_boot();
        ensure!(
            freed == handed_off_pages,
            "buddy took {freed} frames, the hand-off gave {handed_off_pages}"
        );
        ensure!(
            b.total_managed() == freed,
            "buddy manages {} frames, {freed} were freed into it",
            b.total_managed()
        );
        if let Err(e) = b.verify() {
            fail!("verify: {e:?}");
        }
        buddy = Some(b);
        Ok(())
    });
    let Some(buddy) = buddy else {
        return false;
    };
    h.run("buddy_allocates_several_orders", || {
        allocates_several_orders(&buddy, ram, mapper, avoid)
    });
    h.run("buddy_refuses_double_free", || refuses_double_free(&buddy));
    h.run("buddy_zeroes_on_request", || {
        zeroes_on_request(&buddy, mapper)
    });
    let _ = write!(h.out(), "{}", buddy.buddyinfo());
    // SAFETY: `mapper` is the kernel's direct map at `direct_offset` (the setup's contract),
    // reaching every frame the buddy manages.
    let pages = unsafe { BuddyPages::new(&buddy, mapper, direct_offset) };
    slab_checks::run(h, &pages, buddy.platform());
    true
}

fn block_range(pfn: mmkit_addr::Pfn, order: u32) -> Result<PhysRange, Reason> {
    PhysRange::from_pfns(pfn, 1 << order)
        .map_err(|e| Reason::new(format_args!("block at {pfn:?}: {e}")))
}

fn allocates_several_orders<P: IrqControl>(
    buddy: &BuddyAllocator<'static, P>,
    ram: &[PhysRange],
    mapper: &dyn PhysMapper,
    avoid: &[PhysRange],
) -> CheckResult {
    let mut got = [PhysRange::EMPTY; ORDERS.len()];
    for (slot, &order) in got.iter_mut().zip(&ORDERS) {
        let pfn = buddy
            .alloc_pages(GfpFlags::KERNEL, Order::new(order))
            .map_err(|e| Reason::new(format_args!("order {order}: {e:?}")))?;
        *slot = block_range(pfn, order)?;
    }
    for (i, (&r, &order)) in got.iter().zip(&ORDERS).enumerate() {
        ensure!(
            r.start().is_aligned(PAGE_SIZE << order),
            "order-{order} block {r} misaligned"
        );
        ensure!(
            ram.iter().any(|m| m.contains_range(&r)),
            "order-{order} block {r} not in RAM"
        );
        if let Some(a) = avoid.iter().find(|a| a.overlaps(&r)) {
            fail!("order-{order} block {r} overlaps {a}");
        }
        if let Some(o) = got[..i].iter().find(|o| o.overlaps(&r)) {
            fail!("order-{order} block {r} overlaps block {o}");
        }
        let Some(ptr) = mapper.phys_to_virt(r) else {
            fail!("order-{order} block {r} not reachable through the mapper");
        };
        // SAFETY: the buddy just allocated the block to this check; the mapper reaches it for
        // writing, page-aligned.
        unsafe { rawmem::write_read_pattern(ptr, (r.len() / 8) as usize, r.start().as_u64()) }?;
    }
    for (r, &order) in got.iter().zip(&ORDERS) {
        if let Err(e) = buddy.free_pages(r.start().pfn(), Order::new(order)) {
            fail!("free order-{order} block {r}: {e:?}");
        }
    }
    if let Err(e) = buddy.verify() {
        fail!("verify: {e:?}");
    }
    Ok(())
}

fn refuses_double_free<P: IrqControl>(buddy: &BuddyAllocator<'static, P>) -> CheckResult {
    let order = Order::new(2);
    let pfn = buddy
        .alloc_pages(GfpFlags::KERNEL, order)
        .map_err(|e| Reason::new(format_args!("alloc: {e:?}")))?;
    if let Err(e) = buddy.free_pages(pfn, order) {
        fail!("first free: {e:?}");
    }
    let second = buddy.free_pages(pfn, order);
    ensure!(
        second == Err(FreeError::DoubleFree),
        "second free gave {second:?}, expected DoubleFree"
    );
    if let Err(e) = buddy.verify() {
        fail!("verify: {e:?}");
    }
    Ok(())
}

fn zeroes_on_request<P: IrqControl>(
    buddy: &BuddyAllocator<'static, P>,
    mapper: &dyn PhysMapper,
) -> CheckResult {
    let order = Order::new(0);
    let words = (PAGE_SIZE / 8) as usize;
    let dirty = buddy
        .alloc_pages(GfpFlags::KERNEL, order)
        .map_err(|e| Reason::new(format_args!("alloc: {e:?}")))?;
    let dirty_range = block_range(dirty, 0)?;
    let Some(ptr) = mapper.phys_to_virt(dirty_range) else {
        fail!("{dirty_range} not reachable");
    };
    // SAFETY: allocated to this check, reachable for writing, page-aligned.
    unsafe { rawmem::write_read_pattern(ptr, words, dirty_range.start().as_u64()) }?;
    if let Err(e) = buddy.free_pages(dirty, order) {
        fail!("free: {e:?}");
    }
    let zeroed = buddy
        .alloc_pages(GfpFlags::KERNEL | GfpFlags::ZERO, order)
        .map_err(|e| Reason::new(format_args!("alloc ZERO: {e:?}")))?;
    let range = block_range(zeroed, 0)?;
    let Some(zptr) = mapper.phys_to_virt(range) else {
        fail!("{range} not reachable");
    };
    // SAFETY: allocated to this check, readable, page-aligned.
    let is_zero = unsafe { rawmem::is_zero(zptr, words) };
    let freed = buddy.free_pages(zeroed, order);
    ensure!(
        is_zero,
        "ZERO allocation {range} holds data (the freed dirty page was {dirty_range})"
    );
    ensure!(freed.is_ok(), "free: {freed:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::boxed::Box;
    use std::vec::Vec;

    use mmkit_addr::host::HostPlatform;
    use mmkit_addr::PhysAddr;
    use mmkit_bootmem::Bootmem;

    use crate::frames::WindowMapper;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// `len` bytes of zeroed host memory standing for physical `[0, len)`, aligned to 4 MiB
    /// so that every buddy block is aligned like its size at its host address (the slab's
    /// page-source contract), and a mapper for it with its offset. Leaked: the buddy's
    /// lifetime is `'static`.
    fn aligned_memory(len: u64) -> (&'static WindowMapper, u64) {
        let layout = std::alloc::Layout::from_size_align(len as usize, 4 << 20).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        let offset = ptr as u64;
        let range = PhysRange::from_start_size(PhysAddr::new(0), len).unwrap();
        // SAFETY: the allocation backs `[0, len)` at `pa + offset` and is never freed.
        let mapper = unsafe { WindowMapper::new(range, offset) };
        (Box::leak(Box::new(mapper)), offset)
    }

    fn leak_uninit<T>(n: usize) -> &'static mut [MaybeUninit<T>] {
        let v: Vec<MaybeUninit<T>> = (0..n).map(|_| MaybeUninit::uninit()).collect();
        Box::leak(v.into_boxed_slice())
    }

    #[test]
    fn the_sequence_passes_on_host_memory() {
        let (memory, offset) = aligned_memory(64 * MIB);
        let ram = [PhysRange::from_start_size(PhysAddr::new(0), 64 * MIB).unwrap()];
        let kernel = PhysRange::from_start_size(PhysAddr::new(MIB), MIB).unwrap();
        let mut bm: Bootmem<'static> = Bootmem::new();
        bm.add(PhysAddr::new(0), 64 * MIB).unwrap();
        bm.reserve(kernel.start(), kernel.len()).unwrap();
        let handoff = bm.handoff(Order::new(10));
        let pages: u64 = handoff.blocks().map(|b| b.order.pages()).sum();

        let (memmap_bytes, pcp_bytes) = storage_sizes(&ram);
        assert!(memmap_bytes >= 16 * (64 * MIB / PAGE_SIZE));
        let platform = HostPlatform::new(1);
        platform.bind_current_thread(0);
        let setup = BuddySetup {
            platform,
            ram: &ram,
            storage: Storage {
                memmap: leak_uninit(memmap_len(&ram, config().max_order)),
                pcp: leak_uninit(pcp_storage_len(1, 1)),
            },
            mapper: memory,
            direct_offset: offset,
            avoid: &[kernel],
        };
        assert!(pcp_bytes >= PAGE_SIZE);
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        assert!(run(&mut h, setup, &handoff, pages));
        assert!(h.finish().passed(), "{out}");
        assert!(out.contains("Node 0"), "{out}");
        assert!(out.contains("check kzalloc_zeroes ... ok"), "{out}");
        assert!(out.contains("kmalloc-"), "{out}");
    }

    #[test]
    fn a_wrong_page_count_fails_the_first_check() {
        let (memory, offset) = aligned_memory(16 * MIB);
        let ram = [PhysRange::from_start_size(PhysAddr::new(0), 16 * MIB).unwrap()];
        let mut bm: Bootmem<'static> = Bootmem::new();
        bm.add(PhysAddr::new(0), 16 * MIB).unwrap();
        let handoff = bm.handoff(Order::new(10));
        let platform = HostPlatform::new(1);
        platform.bind_current_thread(0);
        let setup = BuddySetup {
            platform,
            ram: &ram,
            storage: Storage {
                memmap: leak_uninit(memmap_len(&ram, config().max_order)),
                pcp: leak_uninit(pcp_storage_len(1, 1)),
            },
            mapper: memory,
            direct_offset: offset,
            avoid: &[],
        };
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        assert!(!run(&mut h, setup, &handoff, 12345));
        assert!(!h.finish().passed());
        assert!(out.contains("the hand-off gave 12345"), "{out}");
    }
}
