//! The kernels as real users of mmkit-bootmem: the firmware's memory map goes in, the kernel
//! image and boot data are reserved, a few early allocations are taken (and checked), one is
//! freed twice to see the double free caught, and the hand-off is compared with a model.
//!
//! The kernel does the arch-specific part — feeding the raw firmware map to bootmem's own
//! ingestion (`firmware::e820` for PVH, `firmware::fdt` for the device tree) and giving it a
//! phys→virt mapper — through the two closures of [`run`], which runs these checks in order
//! as named harness checks and prints bootmem's region report before the hand-off:
//!
//! 1. [`ingested`]: bootmem's memory equals the RAM of the kernel's own [`MemoryMap`] (read by
//!    a different parser), and the firmware's reservations inside RAM are reserved;
//! 2. [`reserve_boot_ranges`]: the kernel image and boot data are reserved;
//! 3. [`allocations`]: top-down, aligned, low-window and bottom-up allocations land in
//!    memory, aligned, clear of every reserved range and of each other;
//! 4. [`zeroing`]: `alloc_zeroed` really zeroes (memory filled with a pattern, freed, and
//!    allocated again zeroed — the same range, top-down);
//! 5. [`double_free`]: freeing an allocation works once and is refused the second time;
//!    then [`run`] keeps memory for the kernel past the hand-off (the kernels keep one
//!    range: the pool their first page tables are built in);
//! 6. [`handoff`]: the blocks are sorted, disjoint, naturally aligned, clear of every reserved
//!    range, and cover exactly the pages a page-by-page model counts as free; the hand-off is
//!    returned (the host tests look at it; the kernels' facade boot starts again from the
//!    firmware map).
//!
//! The model of step 6 is deliberately naive: page `p` is free when it is not page 0, lies
//! wholly in a RAM region of the kernel's map, and touches no reserved range the kernel knows
//! of (its own reservations, its live allocations, the firmware's reserved regions, and the
//! region arrays bootmem may have moved into its own memory). A device tree asking bootmem to
//! allocate dynamic `/reserved-memory` regions would make the model disagree; QEMU's `virt`
//! tree has none.

use core::fmt::Write;

use mmkit_addr::{Order, PhysAddr, PhysMapper, PhysRange, PAGE_SIZE};
use mmkit_bootmem::{AllocRequest, Bootmem, FreeError, Handoff};

use crate::harness::{CheckResult, Harness, Reason};
use crate::memmap::{MemoryMap, RegionKind};
use crate::{ensure, fail, rawmem};

/// The largest block order the hand-off produces (4 MiB blocks, Linux's `MAX_PAGE_ORDER`).
pub const HANDOFF_MAX_ORDER: u32 = 10;

/// Early allocations the checks take: (size, alignment), top-down. Sized like what a kernel
/// takes early: a page table, a per-CPU area, a 2 MiB-aligned block for a memmap section.
const TOP_DOWN_REQUESTS: [(u64, u64); 3] = [(4096, 4096), (64 << 10, 64 << 10), (2 << 20, 2 << 20)];

/// The window of the "low" allocation, from the start of memory: the size of Linux's x86
/// `ZONE_DMA` (16 MiB), applied wherever RAM starts (1 GiB on aarch64 `virt`).
const LOW_WINDOW: u64 = 16 << 20;

/// How many ranges [`run`] can keep for the kernel.
pub const MAX_KEPT: usize = 4;

/// How many allocations [`allocations`] records, plus the ones [`run`] keeps for the kernel.
pub const ALLOCATIONS: usize = TOP_DOWN_REQUESTS.len() + 2 + MAX_KEPT;

/// The allocations [`allocations`] took, kept so later checks (and the model) know of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocations {
    ranges: [PhysRange; ALLOCATIONS],
    len: usize,
}

impl Allocations {
    /// The live allocations.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }

    fn push(&mut self, range: PhysRange) -> CheckResult {
        ensure!(
            self.len < ALLOCATIONS,
            "more than {ALLOCATIONS} allocations"
        );
        self.ranges[self.len] = range;
        self.len += 1;
        Ok(())
    }

    fn remove(&mut self, range: PhysRange) {
        if let Some(i) = self.ranges().iter().position(|r| *r == range) {
            self.ranges.copy_within(i + 1..self.len, i);
            self.len -= 1;
        }
    }
}

fn range(base: PhysAddr, size: u64) -> Result<PhysRange, Reason> {
    PhysRange::from_start_size(base, size)
        .map_err(|e| Reason::new(format_args!("allocation at {base:?}: {e}")))
}

/// What [`run`] leaves behind.
pub struct Outcome {
    /// The hand-off summary, if the hand-off check ran and passed.
    pub summary: Option<HandoffSummary>,
    /// The hand-off itself (its free ranges go to the page allocator), if the check passed.
    pub handoff: Option<Handoff<'static>>,
    /// The memory kept for the kernel, one range per requested size (zeroed if bootmem had a
    /// mapper), reserved through the hand-off and so owned by the kernel from then on; `None`
    /// where it could not be taken.
    pub kept: [Option<PhysRange>; MAX_KEPT],
}

/// Run the whole sequence on a fresh bootmem as harness checks named `bootmem_*`.
///
/// * `ingest` feeds the firmware map to bootmem (and says why if it cannot);
/// * `reserved` are the kernel's reservations (image, boot data, ...), reserved by step 2;
/// * `prepare` runs after the reservations and before any allocation: it sets the allocation
///   limit and gives bootmem its mapper (the caller's `unsafe` promise), returning the same
///   mapper for the zeroing check, or `None` to skip that check.
///
/// * `keep` sizes (page-aligned, at most [`MAX_KEPT`]) are allocated just before the hand-off
///   and stay reserved through it: memory the kernel keeps, such as its page-table frames.
///
/// Once a step fails, the steps that depend on it are skipped (reported as such).
#[inline(never)]
pub fn run<W: Write>(
    h: &mut Harness<W>,
    map: &MemoryMap,
    reserved: &[PhysRange],
    ingest: impl FnOnce(&mut Bootmem<'static>) -> CheckResult,
    prepare: impl FnOnce(&mut Bootmem<'static>) -> Option<&'static dyn PhysMapper>,
    keep: &[u64],
) -> Outcome {
    let mut outcome = Outcome {
        summary: None,
        handoff: None,
        kept: [None; MAX_KEPT],
    };
    let mut bm: Bootmem<'static> = Bootmem::new();
    let ingested_ok = h.run("bootmem_ingests_firmware_map", || {
        ingest(&mut bm)?;
        ingested(&bm, map)
    });
    if !ingested_ok {
        h.skip("bootmem_*", "ingestion failed");
        return outcome;
    }
    if !h.run("bootmem_reserves_boot_ranges", || {
        reserve_boot_ranges(&mut bm, reserved)
    }) {
        h.skip("bootmem_*", "reservations failed");
        return outcome;
    }
    let mapper = prepare(&mut bm);
    let mut allocs = Allocations::default();
    h.run("bootmem_allocations_avoid_reserved", || {
        allocations(&mut bm, reserved, &mut allocs)
    });
    match mapper {
        Some(mapper) => h.run("bootmem_alloc_zeroed_zeroes", || zeroing(&mut bm, mapper)),
        None => {
            h.skip("bootmem_alloc_zeroed_zeroes", "no mapper");
            true
        }
    };
    h.run("bootmem_free_refuses_double_free", || {
        double_free(&mut bm, &mut allocs)
    });
    if !keep.is_empty() {
        h.run("bootmem_keeps_memory_for_the_kernel", || {
            ensure!(
                keep.len() <= MAX_KEPT,
                "{} ranges to keep, at most {MAX_KEPT}",
                keep.len()
            );
            for (slot, &size) in outcome.kept.iter_mut().zip(keep) {
                *slot = Some(keep_for_kernel(
                    &mut bm,
                    size,
                    mapper.is_some(),
                    &mut allocs,
                )?);
            }
            Ok(())
        });
    }
    let _ = write!(h.out(), "{bm}");
    h.run("bootmem_handoff_matches_model", || {
        let (summary, handoff) = handoff(bm, map, reserved, &allocs)?;
        outcome.summary = Some(summary);
        outcome.handoff = Some(handoff);
        Ok(())
    });
    outcome
}

/// Allocate `size` bytes (zeroed when bootmem has a mapper) that stay reserved through the
/// hand-off, and record them in `allocs` so the model knows of them.
fn keep_for_kernel(
    bm: &mut Bootmem<'_>,
    size: u64,
    zeroed: bool,
    allocs: &mut Allocations,
) -> Result<PhysRange, Reason> {
    let req = AllocRequest::new(size, PAGE_SIZE);
    let base = if zeroed {
        bm.alloc_zeroed(&req)
    } else {
        bm.alloc_request(&req)
    }
    .map_err(|e| Reason::new(format_args!("keeping {size:#x} bytes: {e:?}")))?;
    let kept = range(base, size)?;
    ensure!(bm.is_reserved(kept), "{kept} not reserved");
    allocs.push(kept)?;
    Ok(kept)
}

impl core::fmt::Display for HandoffSummary {
    /// `N pages in M blocks; blocks per order: o0 o1 ... o10` (like one `/proc/buddyinfo` row).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} pages ({} MiB) in {} blocks; blocks per order 0..={HANDOFF_MAX_ORDER}:",
            self.pages,
            (self.pages * PAGE_SIZE) >> 20,
            self.blocks
        )?;
        for n in self.per_order {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

/// Step 1: bootmem's memory is the map's RAM, and the map's reserved ranges inside RAM are
/// reserved in bootmem.
pub fn ingested(bm: &Bootmem<'_>, map: &MemoryMap) -> CheckResult {
    if let Err(e) = bm.verify() {
        fail!("verify after ingest: {e:?}");
    }
    let ram = map.total(RegionKind::Ram);
    ensure!(
        bm.memory_size() == ram,
        "bootmem has {:#x} bytes of memory, the map {ram:#x}",
        bm.memory_size()
    );
    for r in map.ram() {
        ensure!(bm.is_memory(r), "RAM {r} is not memory in bootmem");
    }
    for r in map
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Reserved)
    {
        if map.is_ram(r.range) {
            ensure!(
                bm.is_reserved(r.range),
                "firmware reservation {} is not reserved in bootmem",
                r.range
            );
        }
    }
    Ok(())
}

/// Step 2: reserve `ranges` (kernel image, boot data; empty ones are skipped).
pub fn reserve_boot_ranges(bm: &mut Bootmem<'_>, ranges: &[PhysRange]) -> CheckResult {
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        if let Err(e) = bm.reserve(r.start(), r.len()) {
            fail!("reserve {r}: {e:?}");
        }
        ensure!(bm.is_reserved(*r), "{r} not reserved after reserve()");
    }
    if let Err(e) = bm.verify() {
        fail!("verify after reserving: {e:?}");
    }
    Ok(())
}

/// Check one fresh allocation and record it.
fn accept(
    bm: &Bootmem<'_>,
    got: PhysRange,
    align: u64,
    reserved: &[PhysRange],
    allocs: &mut Allocations,
) -> CheckResult {
    ensure!(
        got.start().is_aligned(align),
        "{got} not aligned to {align:#x}"
    );
    ensure!(got.start().as_u64() >= PAGE_SIZE, "{got} includes page 0");
    ensure!(bm.is_memory(got), "{got} is not memory");
    ensure!(bm.is_reserved(got), "{got} not reserved after allocation");
    if let Some(r) = reserved.iter().find(|r| r.overlaps(&got)) {
        fail!("{got} overlaps reserved {r}");
    }
    if let Some(r) = allocs.ranges().iter().find(|r| r.overlaps(&got)) {
        fail!("{got} overlaps earlier allocation {r}");
    }
    allocs.push(got)
}

/// Step 3: allocations of several shapes, each checked against memory, alignment, the
/// `reserved` ranges and the earlier ones; they are recorded in `allocs`.
pub fn allocations(
    bm: &mut Bootmem<'_>,
    reserved: &[PhysRange],
    allocs: &mut Allocations,
) -> CheckResult {
    for (size, align) in TOP_DOWN_REQUESTS {
        let base = bm
            .alloc(size, align)
            .map_err(|e| Reason::new(format_args!("alloc({size:#x}, {align:#x}): {e:?}")))?;
        accept(bm, range(base, size)?, align, reserved, allocs)?;
    }
    let lowest_top_down = allocs.ranges().iter().map(|r| r.start()).min();

    let Some(start) = bm.start_of_memory() else {
        fail!("bootmem has no memory");
    };
    let limit = start.as_u64().saturating_add(LOW_WINDOW);
    let low = AllocRequest::new(PAGE_SIZE, PAGE_SIZE).below(PhysAddr::new(limit));
    let base = bm
        .alloc_request(&low)
        .map_err(|e| Reason::new(format_args!("alloc below {limit:#x}: {e:?}")))?;
    let got = range(base, PAGE_SIZE)?;
    ensure!(got.end().as_u64() <= limit, "{got} not below {limit:#x}");
    accept(bm, got, PAGE_SIZE, reserved, allocs)?;

    bm.set_bottom_up(true);
    let bottom_up = bm.alloc(PAGE_SIZE, PAGE_SIZE);
    bm.set_bottom_up(false);
    let base = bottom_up.map_err(|e| Reason::new(format_args!("bottom-up alloc: {e:?}")))?;
    let got = range(base, PAGE_SIZE)?;
    ensure!(
        lowest_top_down.is_some_and(|low| got.start() < low),
        "bottom-up {got} is not below the top-down allocations"
    );
    accept(bm, got, PAGE_SIZE, reserved, allocs)?;

    if let Err(e) = bm.verify() {
        fail!("verify after allocating: {e:?}");
    }
    Ok(())
}

/// Step 4: `alloc_zeroed` zeroes. Needs the bootmem's mapper (`mapper` must be the same).
pub fn zeroing(bm: &mut Bootmem<'_>, mapper: &dyn PhysMapper) -> CheckResult {
    const SIZE: u64 = 2 * PAGE_SIZE;
    ensure!(bm.has_mapper(), "bootmem has no mapper");
    let first = bm
        .alloc(SIZE, PAGE_SIZE)
        .map_err(|e| Reason::new(format_args!("alloc: {e:?}")))?;
    let first = range(first, SIZE)?;
    let Some(ptr) = mapper.phys_to_virt(first) else {
        fail!("{first} not reachable through the mapper");
    };
    // SAFETY: bootmem just handed `first` out, so this check owns it; the mapper makes it
    // writable at `ptr`, which is page-aligned.
    unsafe { rawmem::write_read_pattern(ptr, (SIZE / 8) as usize, first.start().as_u64()) }?;
    if let Err(e) = bm.free(first.start(), SIZE) {
        fail!("free {first}: {e:?}");
    }
    let again = bm
        .alloc_zeroed(&AllocRequest::new(SIZE, PAGE_SIZE))
        .map_err(|e| Reason::new(format_args!("alloc_zeroed: {e:?}")))?;
    ensure!(
        again == first.start(),
        "alloc_zeroed chose {again:?}, not the range just freed at {first}"
    );
    // SAFETY: as above: the range is allocated to this check again, readable at `ptr`.
    let zero = unsafe { rawmem::is_zero(ptr, (SIZE / 8) as usize) };
    ensure!(zero, "alloc_zeroed left data in {first}");
    if let Err(e) = bm.free(first.start(), SIZE) {
        fail!("free {first} again: {e:?}");
    }
    Ok(())
}

/// Step 5: free the last allocation of `allocs`; a second free must be refused as
/// [`FreeError::NotReserved`] and leave bootmem consistent.
pub fn double_free(bm: &mut Bootmem<'_>, allocs: &mut Allocations) -> CheckResult {
    let Some(&victim) = allocs.ranges().last() else {
        fail!("no allocation to free");
    };
    if let Err(e) = bm.free(victim.start(), victim.len()) {
        fail!("first free of {victim}: {e:?}");
    }
    allocs.remove(victim);
    ensure!(
        !bm.is_reserved(victim),
        "{victim} still reserved after free"
    );
    let second = bm.free(victim.start(), victim.len());
    ensure!(
        matches!(second, Err(FreeError::NotReserved(_))),
        "second free of {victim} gave {second:?}, expected NotReserved"
    );
    if let Err(e) = bm.verify() {
        fail!("verify after the double free: {e:?}");
    }
    Ok(())
}

/// What [`handoff`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffSummary {
    /// Blocks handed off.
    pub blocks: u64,
    /// Pages handed off.
    pub pages: u64,
    /// Blocks of each order `0..=HANDOFF_MAX_ORDER`.
    pub per_order: [u64; HANDOFF_MAX_ORDER as usize + 1],
}

/// Step 6: hand off and compare with the page-by-page model. `reserved` are the kernel's own
/// reservations; `allocs` the live allocations. Returns the summary and the hand-off.
pub fn handoff<'m>(
    bm: Bootmem<'m>,
    map: &MemoryMap,
    reserved: &[PhysRange],
    allocs: &Allocations,
) -> Result<(HandoffSummary, Handoff<'m>), Reason> {
    let handoff = bm.handoff(Order::new(HANDOFF_MAX_ORDER));
    let arrays = handoff.region_arrays();
    let mut summary = HandoffSummary {
        blocks: 0,
        pages: 0,
        per_order: [0; HANDOFF_MAX_ORDER as usize + 1],
    };
    let mut previous_end = 0u64;
    for block in handoff.blocks() {
        let r = block.range();
        let order = block.order.get();
        ensure!(order <= HANDOFF_MAX_ORDER, "block {r} of order {order}");
        ensure!(
            block.pfn.as_u64() % block.order.pages() == 0,
            "block {r} of order {order} is not naturally aligned"
        );
        ensure!(block.pfn.as_u64() != 0, "page 0 handed off");
        ensure!(
            r.start().as_u64() >= previous_end,
            "block {r} overlaps or precedes the previous one"
        );
        previous_end = r.end().as_u64();
        let blocked = |x: &PhysRange| x.overlaps(&r);
        if let Some(x) = reserved.iter().chain(allocs.ranges()).find(|x| blocked(x)) {
            fail!("block {r} overlaps reserved {x}");
        }
        ensure!(map.is_ram(r), "block {r} is not RAM");
        summary.blocks += 1;
        summary.pages += block.order.pages();
        summary.per_order[order as usize] += 1;
    }
    ensure!(
        summary.pages == handoff.free_pages(),
        "blocks hold {} pages, free_pages() says {}",
        summary.pages,
        handoff.free_pages()
    );

    let firmware_reserved = map
        .regions()
        .iter()
        .filter(|r| r.kind != RegionKind::Ram)
        .map(|r| r.range);
    let model_reserved = |page: &PhysRange| {
        reserved
            .iter()
            .chain(allocs.ranges())
            .chain(arrays.iter().flatten())
            .copied()
            .chain(firmware_reserved.clone())
            .any(|x| x.overlaps(page))
    };
    let mut model_pages = 0u64;
    for ram in map.ram() {
        for pfn in ram.whole_pfns() {
            if pfn == 0 {
                continue;
            }
            let page = range(PhysAddr::new(pfn * PAGE_SIZE), PAGE_SIZE)?;
            if !model_reserved(&page) {
                model_pages += 1;
            }
        }
    }
    ensure!(
        summary.pages == model_pages,
        "hand-off gave {} pages, the model counts {model_pages} free",
        summary.pages
    );
    Ok((summary, handoff))
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use mmkit_addr::host::HostMemory;
    use mmkit_bootmem::firmware::e820::{self, E820Entry, E820Type};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// QEMU's PVH map for `-m 64M`, in both forms.
    fn firmware() -> ([E820Entry; 4], MemoryMap) {
        let entries = [
            E820Entry::new(0, 0x9fc00, E820Type::Ram),
            E820Entry::new(0x9fc00, 0x400, E820Type::Reserved),
            E820Entry::new(0x100000, 63 * MIB - 0x20000, E820Type::Ram),
            E820Entry::new(64 * MIB - 0x20000, 0x20000, E820Type::Reserved),
        ];
        let mut map = MemoryMap::new();
        for e in &entries {
            map.add(e.addr, e.size, RegionKind::from_e820(e.kind))
                .unwrap();
        }
        map.sort();
        (entries, map)
    }

    fn kernel() -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(MIB), 2 * MIB).unwrap()
    }

    #[test]
    fn the_whole_sequence_passes_on_a_correct_bootmem() {
        let (entries, map) = firmware();
        let memory = HostMemory::new(PhysAddr::new(0), 64 * MIB);
        let mut bm: Bootmem<'_> = Bootmem::new();
        // SAFETY: `memory` backs every byte of the map and nothing else uses it.
        unsafe { bm.set_mapper(&memory) };
        e820::ingest(&mut bm, &entries).unwrap();
        ingested(&bm, &map).unwrap();
        let reserved = [kernel()];
        reserve_boot_ranges(&mut bm, &reserved).unwrap();
        let mut allocs = Allocations::default();
        allocations(&mut bm, &reserved, &mut allocs).unwrap();
        assert_eq!(allocs.ranges().len(), ALLOCATIONS - MAX_KEPT);
        zeroing(&mut bm, &memory).unwrap();
        double_free(&mut bm, &mut allocs).unwrap();
        assert_eq!(allocs.ranges().len(), ALLOCATIONS - MAX_KEPT - 1);
        let (summary, _) = handoff(bm, &map, &reserved, &allocs).unwrap();
        assert!(summary.pages > 0);
        assert_eq!(summary.per_order.iter().sum::<u64>(), summary.blocks);
    }

    #[test]
    fn run_reports_every_step_and_returns_the_summary() {
        static MEMORY: std::sync::OnceLock<HostMemory> = std::sync::OnceLock::new();
        let memory: &'static HostMemory =
            MEMORY.get_or_init(|| HostMemory::new(PhysAddr::new(0), 64 * MIB));
        let (entries, map) = firmware();
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        let summary = run(
            &mut h,
            &map,
            &[kernel()],
            |bm| {
                e820::ingest(bm, &entries).map_err(|e| Reason::new(format_args!("{e:?}")))?;
                Ok(())
            },
            |bm| {
                // SAFETY: `memory` backs the whole map and only this test uses it.
                unsafe { bm.set_mapper(memory) };
                Some(memory)
            },
            &[64 << 10, 4096],
        );
        assert!(h.finish().passed(), "{out}");
        let kept = summary.kept[0].unwrap();
        assert_eq!(kept.len(), 64 << 10);
        assert!(!kept.overlaps(&kernel()));
        let other = summary.kept[1].unwrap();
        assert!(!other.overlaps(&kept));
        assert_eq!(summary.kept[2], None);
        let handoff = summary.handoff.unwrap();
        assert!(handoff.free_ranges().all(|f| !f.range.overlaps(&kept)));
        let summary = summary.summary.unwrap();
        assert!(out.contains("check bootmem_handoff_matches_model ... ok"));
        assert!(out.contains("memory: 2 regions"), "{out}");
        assert!(summary.to_string().contains(" in "));
    }

    #[test]
    fn run_stops_after_a_failed_ingest() {
        let (_, map) = firmware();
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        let outcome = run(&mut h, &map, &[], |_| Ok(()), |_| None, &[4096]);
        assert!(outcome.summary.is_none());
        assert!(outcome.handoff.is_none());
        assert_eq!(outcome.kept, [None; MAX_KEPT]);
        assert!(!h.finish().passed());
        assert!(
            out.contains("check bootmem_* ... skipped (ingestion failed)"),
            "{out}"
        );
    }

    #[test]
    fn allocations_work_when_memory_starts_high() {
        let mut bm: Bootmem<'_> = Bootmem::new();
        bm.add(PhysAddr::new(0x4000_0000), 512 * MIB).unwrap();
        let mut allocs = Allocations::default();
        allocations(&mut bm, &[], &mut allocs).unwrap();
        let low = allocs.ranges()[TOP_DOWN_REQUESTS.len()];
        assert!(low.end().as_u64() <= 0x4000_0000 + LOW_WINDOW, "{low}");
    }

    #[test]
    fn ingested_notices_missing_memory() {
        let (entries, map) = firmware();
        let mut bm: Bootmem<'_> = Bootmem::new();
        e820::ingest(&mut bm, &entries[..2]).unwrap();
        let err = ingested(&bm, &map).unwrap_err();
        assert!(err.as_str().contains("bytes of memory"), "{err}");
    }

    #[test]
    fn handoff_notices_an_unreserved_kernel() {
        let (entries, map) = firmware();
        let mut bm: Bootmem<'_> = Bootmem::new();
        e820::ingest(&mut bm, &entries).unwrap();
        // The kernel is not reserved in bootmem, so blocks cover it.
        let err = handoff(bm, &map, &[kernel()], &Allocations::default()).unwrap_err();
        assert!(err.as_str().contains("overlaps reserved"), "{err}");
    }

    #[test]
    fn handoff_notices_memory_the_map_does_not_have() {
        let (entries, map) = firmware();
        let mut bm: Bootmem<'_> = Bootmem::new();
        e820::ingest(&mut bm, &entries).unwrap();
        bm.add(PhysAddr::new(128 * MIB), 4 * MIB).unwrap();
        let err = handoff(bm, &map, &[], &Allocations::default()).unwrap_err();
        assert!(err.as_str().contains("is not RAM"), "{err}");
    }

    #[test]
    fn zeroing_needs_a_mapper() {
        let (entries, _) = firmware();
        let memory = HostMemory::new(PhysAddr::new(0), 64 * MIB);
        let mut bm: Bootmem<'_> = Bootmem::new();
        e820::ingest(&mut bm, &entries).unwrap();
        assert!(zeroing(&mut bm, &memory).is_err());
    }

    #[test]
    fn double_free_needs_an_allocation() {
        let mut bm: Bootmem<'_> = Bootmem::new();
        assert!(double_free(&mut bm, &mut Allocations::default()).is_err());
    }
}
