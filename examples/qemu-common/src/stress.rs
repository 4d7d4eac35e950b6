//! The cross-CPU stress self-test both kernels run once their CPUs are up (issue 13).
//!
//! Every CPU runs [`worker`] on the same [`Mm`] at once: a fixed number of randomised
//! operations (kmalloc/kfree of many sizes, a shared typed cache, `alloc_pages` of orders 0-3
//! in the three mobility types, vmalloc/vfree with writes through the mapping, slab shrinks
//! that reach every CPU through `run_on_cpu`), and objects handed to other CPUs through a
//! shared lock-free [`Ring`] to be freed there (remote frees). Every live allocation carries a
//! content pattern unique to it ([`rawmem::pattern`] of a base no other allocation shares),
//! checked before it is freed: memory handed out twice, or written through a stale mapping,
//! shows up as a pattern mismatch.
//!
//! Afterwards the boot CPU, with the others idle, calls [`drain_ring`], then [`quiesce`]
//! (every CPU's slab and page caches drained on that CPU) and compares a [`Snapshot`] with the
//! one taken before the run: free memory, slab, pages, vmalloc and page-table figures must be
//! back where they were.
//!
//! What a kernel supplies is in [`StressHooks`]: its TLB invalidation for vmalloc (a
//! shootdown on SMP), how to reach a vmalloc address, and where to count "inside mmkit" for
//! its interrupt statistics.

use core::cell::UnsafeCell;
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use mmkit::addr::{IrqControl, Order, VirtAddr, PAGE_SIZE};
use mmkit::buddy::GfpFlags;
use mmkit::pgtable::{PagingFormat, TlbInvalidate};
use mmkit::slab::{CacheConfig, KmallocKind, SlabBox};
use mmkit::{MemInfo, Mm, MmTypedCache, PageAllocator};

use crate::harness::{CheckResult, Harness, Reason};
use crate::rawmem;
use crate::smp::MAX_CPUS;
use crate::{ensure, fail};

/// Slots in the shared ring of objects waiting for a remote free.
pub const RING_SLOTS: usize = 64;

/// Objects handed from one CPU to another to be freed there. A slot holds an object's address
/// or 0; pushing and popping are single atomic operations, so no lock is needed.
pub struct Ring {
    slots: [AtomicUsize; RING_SLOTS],
}

impl Ring {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicUsize::new(0) }; RING_SLOTS],
        }
    }

    /// Put `addr` (not 0) in a free slot, searching from `hint`; `false` if the ring is full.
    pub fn push(&self, addr: usize, hint: usize) -> bool {
        (0..RING_SLOTS).any(|i| {
            let slot = &self.slots[(hint + i) % RING_SLOTS];
            slot.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Take an object out, searching from `hint`.
    pub fn pop(&self, hint: usize) -> Option<usize> {
        (0..RING_SLOTS).find_map(|i| {
            let addr = self.slots[(hint + i) % RING_SLOTS].swap(0, Ordering::AcqRel);
            (addr != 0).then_some(addr)
        })
    }
}

impl Default for Ring {
    fn default() -> Self {
        Self::new()
    }
}

/// The object type of the shared typed cache: a pattern the worker checks before freeing.
#[derive(Debug, Default)]
pub struct Tagged {
    tag: u64,
    words: [u64; 7],
}

impl Tagged {
    fn fill(&mut self, tag: u64) {
        self.tag = tag;
        for (i, w) in self.words.iter_mut().enumerate() {
            *w = rawmem::pattern(tag, i as u64);
        }
    }

    fn intact(&self, tag: u64) -> bool {
        self.tag == tag
            && self
                .words
                .iter()
                .enumerate()
                .all(|(i, &w)| w == rawmem::pattern(tag, i as u64))
    }
}

/// What the kernel provides to the workers.
pub trait StressHooks: Sync {
    /// The TLB invalidation vmalloc and vfree use (on SMP: every CPU's TLB).
    type Tlb: TlbInvalidate;
    /// An invalidator for one vmalloc call on this CPU.
    fn tlb(&self) -> Self::Tlb;
    /// A pointer through which `pages` pages of the live vmalloc area at `va` can be written,
    /// or `None` if the kernel page table is not loaded (a host test), in which case the
    /// worker writes each page through its direct-map address instead.
    fn vmalloc_ptr(&self, va: VirtAddr) -> Option<NonNull<u8>>;
    /// The worker is about to call into mmkit (interrupts taken until [`leave_mm`] count as
    /// taken inside mmkit).
    ///
    /// [`leave_mm`]: StressHooks::leave_mm
    fn enter_mm(&self);
    /// The call into mmkit returned.
    fn leave_mm(&self);
    /// Write `value` at `va` on the calling CPU, reporting a fault instead of dying from it:
    /// `Some(true)` written, `Some(false)` faulted, `None` if the kernel cannot tell (a host
    /// test). The caller owns the byte if it is writable.
    fn write_nofault(&self, va: VirtAddr, value: u8) -> Option<bool> {
        let _ = (va, value);
        None
    }
}

/// How much work each CPU does.
#[derive(Debug, Clone, Copy)]
pub struct StressConfig {
    /// Operations per CPU.
    pub ops: u64,
    /// Mixed into every CPU's random sequence.
    pub seed: u64,
}

/// One CPU's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuReport {
    /// Operations done.
    pub ops: u64,
    /// kmalloc calls.
    pub kmallocs: u64,
    /// Objects this CPU took from the ring and freed that another CPU allocated.
    pub remote_frees: u64,
    /// Typed-cache allocations.
    pub typed: u64,
    /// `alloc_pages` calls.
    pub pages: u64,
    /// vmalloc calls.
    pub vmallocs: u64,
    /// kmalloc shrinks (each a `run_on_cpu` to every CPU).
    pub shrinks: u64,
}

impl CpuReport {
    /// Field-wise sum.
    pub fn add(&mut self, r: &CpuReport) {
        self.ops += r.ops;
        self.kmallocs += r.kmallocs;
        self.remote_frees += r.remote_frees;
        self.typed += r.typed;
        self.pages += r.pages;
        self.vmallocs += r.vmallocs;
        self.shrinks += r.shrinks;
    }
}

impl fmt::Display for CpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops: {} kmalloc, {} remote frees, {} typed, {} alloc_pages, {} vmalloc, {} shrinks",
            self.ops,
            self.kmallocs,
            self.remote_frees,
            self.typed,
            self.pages,
            self.vmallocs,
            self.shrinks
        )
    }
}

/// Tiny xorshift generator: enough randomness for operation mixes, the same sequence for the
/// same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Live allocations a worker keeps of each kind.
const LIVE: usize = 16;
/// Largest kmalloc size the worker asks for, in 64-bit words (8 KiB).
const MAX_KMALLOC_WORDS: u64 = 1024;
/// Largest vmalloc area, in pages.
const MAX_VMALLOC_PAGES: u64 = 4;

/// A kmalloc object: word 0 holds its size in words (low half) and the CPU that allocated it
/// (high half), word 1 its pattern base, the rest the pattern — so a remote CPU can check
/// it knowing only its address.
struct KObj(NonNull<u8>);

impl KObj {
    /// Fill a fresh object of `words` words (at least 2) allocated on `cpu` with `base`.
    ///
    /// # Safety
    /// `ptr` is a live allocation of at least `words * 8` bytes the caller owns.
    unsafe fn init(ptr: NonNull<u8>, words: usize, cpu: usize, base: u64) -> Result<Self, Reason> {
        // SAFETY: the caller's allocation, at least `words` words, 8-byte aligned (kmalloc).
        unsafe {
            rawmem::store_word(ptr, 0, words as u64 | (cpu as u64) << 32);
            rawmem::store_word(ptr, 1, base);
            rawmem::write_read_pattern(ptr.byte_add(16), words - 2, base)?;
        }
        Ok(Self(ptr))
    }

    /// Check the object's header and pattern; returns the CPU that allocated it.
    ///
    /// # Safety
    /// The object is live and was made by [`KObj::init`].
    unsafe fn check(&self) -> Result<usize, Reason> {
        // SAFETY: the caller's contract: a live object at least 2 words long.
        let (head, base) = unsafe { (rawmem::load_word(self.0, 0), rawmem::load_word(self.0, 1)) };
        let (words, cpu) = (head & 0xffff_ffff, (head >> 32) as usize);
        ensure!(
            (2..=MAX_KMALLOC_WORDS).contains(&words),
            "object {:p} header says {words} words: overwritten",
            self.0
        );
        // SAFETY: as above; `words` is the size it was made with.
        unsafe { rawmem::check_pattern(self.0.byte_add(16), words as usize - 2, base) }?;
        Ok(cpu)
    }
}

type TypedBox<'c, 'm, P> = SlabBox<'c, 'm, Tagged, PageAllocator<'m, P>, P>;

struct Block {
    pfn: mmkit::addr::Pfn,
    order: Order,
    ptr: NonNull<u8>,
    base: u64,
}

struct Area {
    va: VirtAddr,
    pages: u64,
    base: u64,
}

fn mm_call<H: StressHooks, R>(hooks: &H, f: impl FnOnce() -> R) -> R {
    hooks.enter_mm();
    let r = f();
    hooks.leave_mm();
    r
}

/// Run `cfg.ops` random operations on `mm` as CPU `cpu`, then free everything this CPU still
/// holds (objects left in `ring` are for other CPUs, or [`drain_ring`]). Fails at the first
/// allocation failure, refused free or damaged pattern.
pub fn worker<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    typed: &MmTypedCache<'_, Tagged, P>,
    ring: &Ring,
    cfg: &StressConfig,
    cpu: usize,
    hooks: &H,
) -> Result<CpuReport, Reason> {
    let mut rng = Rng::new(cfg.seed ^ (cpu as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut r = CpuReport::default();
    let mut objs: [Option<KObj>; LIVE] = [const { None }; LIVE];
    let mut boxes: [Option<(TypedBox<'_, '_, P>, u64)>; LIVE] = [const { None }; LIVE];
    let mut blocks: [Option<Block>; LIVE] = [const { None }; LIVE];
    let mut areas: [Option<Area>; 4] = [const { None }; 4];
    // Pattern bases unique to this CPU and allocation.
    let mut serial = (cpu as u64) << 40;
    let mut base = || {
        serial += 1;
        serial.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };

    let result = (|| -> CheckResult {
        while r.ops < cfg.ops {
            r.ops += 1;
            let slot = rng.below(LIVE as u64) as usize;
            match rng.below(100) {
                // kmalloc / kfree
                0..=34 => match objs[slot].take() {
                    Some(o) => {
                        free_kobj(mm, hooks, o)?;
                    }
                    None => {
                        let words = 2 + rng.below(MAX_KMALLOC_WORDS - 1) as usize;
                        let p = mm_call(hooks, || mm.kmalloc(words * 8, GfpFlags::KERNEL))
                            .map_err(|e| {
                                Reason::new(format_args!("kmalloc({}): {e:?}", words * 8))
                            })?;
                        r.kmallocs += 1;
                        // SAFETY: a fresh kmalloc object of `words * 8` bytes.
                        objs[slot] = Some(unsafe { KObj::init(p, words, cpu, base()) }?);
                    }
                },
                // hand an object to another CPU, or free one another CPU handed over
                35..=49 => {
                    if rng.below(2) == 0 {
                        if let Some(o) = objs[slot].take() {
                            if !ring
                                .push(o.0.as_ptr() as usize, rng.below(RING_SLOTS as u64) as usize)
                            {
                                objs[slot] = Some(o);
                            }
                        }
                    } else if let Some(addr) = ring.pop(rng.below(RING_SLOTS as u64) as usize) {
                        let Some(p) = NonNull::new(addr as *mut u8) else {
                            fail!("null in the ring");
                        };
                        if free_kobj(mm, hooks, KObj(p))? != cpu {
                            r.remote_frees += 1;
                        }
                    }
                }
                // typed cache
                50..=64 => match boxes[slot].take() {
                    Some((b, tag)) => {
                        ensure!(b.intact(tag), "typed object {:p} damaged", &*b);
                        mm_call(hooks, || SlabBox::free(b))
                            .map_err(|e| Reason::new(format_args!("typed free: {e:?}")))?;
                    }
                    None => {
                        let mut b = mm_call(hooks, || typed.alloc())
                            .map_err(|e| Reason::new(format_args!("typed alloc: {e:?}")))?;
                        let tag = base();
                        b.fill(tag);
                        boxes[slot] = Some((b, tag));
                        r.typed += 1;
                    }
                },
                // pages
                65..=89 => match blocks[slot].take() {
                    Some(b) => free_block(mm, hooks, b)?,
                    None => {
                        let order = Order::new(rng.below(4) as u32);
                        let gfp = match rng.below(3) {
                            0 => GfpFlags::KERNEL,
                            1 => GfpFlags::KERNEL | GfpFlags::MOVABLE,
                            _ => GfpFlags::KERNEL_RECLAIMABLE,
                        };
                        let pfn = mm_call(hooks, || mm.alloc_pages(gfp, order)).map_err(|e| {
                            Reason::new(format_args!("alloc_pages({order:?}): {e:?}"))
                        })?;
                        r.pages += 1;
                        let Some(ptr) = mm.page_address(pfn, order) else {
                            fail!("no address for pfn {pfn:?}");
                        };
                        let b = Block {
                            pfn,
                            order,
                            ptr,
                            base: base(),
                        };
                        let words = (order.pages() * PAGE_SIZE / 8) as usize;
                        // SAFETY: the block is this worker's, mapped RW at `ptr`.
                        unsafe { rawmem::write_read_pattern(b.ptr, words, b.base) }?;
                        blocks[slot] = Some(b);
                    }
                },
                // vmalloc
                90..=98 => {
                    let a = slot % areas.len();
                    match areas[a].take() {
                        Some(area) => free_area(mm, hooks, area)?,
                        None => {
                            let pages = 1 + rng.below(MAX_VMALLOC_PAGES);
                            let mut tlb = hooks.tlb();
                            let va = mm_call(hooks, || {
                                mm.vmalloc((pages * PAGE_SIZE) as usize, &mut tlb)
                            })
                            .map_err(|e| Reason::new(format_args!("vmalloc: {e:?}")))?;
                            r.vmallocs += 1;
                            let area = Area {
                                va,
                                pages,
                                base: base(),
                            };
                            area_pattern(mm, hooks, &area, true)?;
                            areas[a] = Some(area);
                        }
                    }
                }
                // shrink: every CPU's kmalloc arrays drained on that CPU
                _ => {
                    if rng.below(4) == 0 {
                        mm_call(hooks, || mm.kmalloc_shrink());
                        r.shrinks += 1;
                    }
                }
            }
        }
        Ok(())
    })();

    // Give everything back, failure or not (the first failure is what is reported).
    let mut cleanup: CheckResult = Ok(());
    for o in objs.iter_mut().filter_map(Option::take) {
        cleanup = cleanup.and(free_kobj(mm, hooks, o).map(|_| ()));
    }
    for (b, tag) in boxes.iter_mut().filter_map(Option::take) {
        if !b.intact(tag) {
            cleanup = cleanup.and(Err(Reason::new(format_args!("typed object damaged"))));
        }
        if let Err(e) = mm_call(hooks, || SlabBox::free(b)) {
            cleanup = cleanup.and(Err(Reason::new(format_args!("typed free: {e:?}"))));
        }
    }
    for b in blocks.iter_mut().filter_map(Option::take) {
        cleanup = cleanup.and(free_block(mm, hooks, b));
    }
    for a in areas.iter_mut().filter_map(Option::take) {
        cleanup = cleanup.and(free_area(mm, hooks, a));
    }
    result.and(cleanup).map(|()| r)
}

/// Check and free `o`; returns the CPU that allocated it.
fn free_kobj<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    o: KObj,
) -> Result<usize, Reason> {
    // SAFETY: `o` is a live object made by `KObj::init`, owned by the caller.
    let cpu = unsafe { o.check() }?;
    // SAFETY: a live kmalloc object nobody uses any more.
    mm_call(hooks, || unsafe { mm.kfree(o.0) })
        .map_err(|e| Reason::new(format_args!("kfree({:p}): {e:?}", o.0)))?;
    Ok(cpu)
}

fn free_block<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    b: Block,
) -> CheckResult {
    let words = (b.order.pages() * PAGE_SIZE / 8) as usize;
    // SAFETY: the block is the caller's, mapped at `ptr`, and was filled with `base`.
    unsafe { rawmem::check_pattern(b.ptr, words, b.base) }?;
    mm_call(hooks, || mm.free_pages(b.pfn, b.order))
        .map_err(|e| Reason::new(format_args!("free_pages({:?}): {e:?}", b.pfn)))
}

/// Write (or check) the area's pattern page by page, through the mapping when the kernel
/// gives one, through the direct map of `vmalloc_to_pfn` otherwise.
fn area_pattern<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    area: &Area,
    write: bool,
) -> CheckResult {
    let words = (PAGE_SIZE / 8) as usize;
    for i in 0..area.pages {
        let va = VirtAddr::new(area.va.as_u64() + i * PAGE_SIZE);
        let ptr = match hooks.vmalloc_ptr(va) {
            Some(p) => p,
            None => {
                let Some(pfn) = mm.vmalloc_to_pfn(va) else {
                    fail!("vmalloc page {va:?} has no frame");
                };
                let Some(p) = mm.page_address(pfn, Order::ZERO) else {
                    fail!("no address for vmalloc frame {pfn:?}");
                };
                p
            }
        };
        let base = area.base ^ i;
        // SAFETY: the page belongs to the caller's live area, mapped RW at `ptr`.
        unsafe {
            if write {
                rawmem::write_read_pattern(ptr, words, base)?;
            } else {
                rawmem::check_pattern(ptr, words, base)?;
            }
        }
    }
    Ok(())
}

fn free_area<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    area: Area,
) -> CheckResult {
    area_pattern(mm, hooks, &area, false)?;
    let mut tlb = hooks.tlb();
    mm_call(hooks, || mm.vfree(area.va, &mut tlb))
        .map_err(|e| Reason::new(format_args!("vfree({:?}): {e:?}", area.va)))
}

/// What a timer handler does on each tick (interrupt context, `GFP_ATOMIC`): a 64-byte
/// kmalloc written with `stamp` and checked, kfree, and an order-0 page allocated and freed.
/// Returns whether every step worked.
pub fn atomic_round<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>, stamp: u64) -> bool {
    let mut ok = true;
    match mm.kmalloc(64, GfpFlags::ATOMIC) {
        Ok(p) => {
            // SAFETY: a fresh 64-byte object, ours until the kfree below.
            unsafe {
                rawmem::store_word(p, 0, stamp);
                ok &= rawmem::load_word(p, 0) == stamp;
            }
            // SAFETY: the object is live and unused from here on.
            ok &= unsafe { mm.kfree(p) }.is_ok();
        }
        Err(_) => ok = false,
    }
    match mm.alloc_pages(GfpFlags::ATOMIC, Order::ZERO) {
        Ok(pfn) => ok &= mm.free_pages(pfn, Order::ZERO).is_ok(),
        Err(_) => ok = false,
    }
    ok
}

/// Shrink the `kmalloc-64` cache `rounds` times in a row (every CPU's array drained on that
/// CPU, then the node lists), with a kmalloc/kfree of 64 bytes between shrinks, while the
/// caller's timer ticks fast and its handler allocates 64 bytes with `GFP_ATOMIC`: the
/// handler's refill of its just-drained array meets `shrink` holding the node lock. Before
/// the slab took its node locks with interrupts off, this hung within milliseconds on the
/// aarch64 kernel (the handler spinning in the refill on the lock its own CPU held); now it
/// must simply finish. Returns the ticks the caller's CPU took meanwhile, read by `ticks`.
pub fn shrink_under_interrupts<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
    rounds: u32,
    ticks: impl Fn() -> u64,
) -> Result<u64, Reason> {
    let Some(cache) = mm.kmalloc_caches().cache_for(64, KmallocKind::Normal) else {
        fail!("no kmalloc-64 cache");
    };
    let before = ticks();
    for _ in 0..rounds {
        let p = mm
            .kmalloc(64, GfpFlags::KERNEL)
            .map_err(|e| Reason::new(format_args!("kmalloc(64): {e:?}")))?;
        // SAFETY: a live object nobody else uses.
        unsafe { mm.kfree(p) }.map_err(|e| Reason::new(format_args!("kfree: {e:?}")))?;
        cache.shrink();
    }
    Ok(ticks() - before)
}

/// Create every kmalloc cache the workers can use (caches are made on first use, and their
/// descriptors stay), so [`Snapshot`]s taken afterwards do not count them.
pub fn warm_up<P: IrqControl, F: PagingFormat>(mm: &Mm<'_, P, F>) -> CheckResult {
    for words in 2..=MAX_KMALLOC_WORDS as usize {
        for gfp in [GfpFlags::KERNEL, GfpFlags::ATOMIC] {
            let p = mm
                .kmalloc(words * 8, gfp)
                .map_err(|e| Reason::new(format_args!("kmalloc({}): {e:?}", words * 8)))?;
            // SAFETY: a live kmalloc object nobody else uses.
            unsafe { mm.kfree(p) }.map_err(|e| Reason::new(format_args!("kfree: {e:?}")))?;
        }
    }
    Ok(())
}

/// Free what the workers left in the ring, checking each object. Returns how many.
pub fn drain_ring<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    ring: &Ring,
    hooks: &H,
) -> Result<u64, Reason> {
    let mut n = 0;
    while let Some(addr) = ring.pop(0) {
        let Some(p) = NonNull::new(addr as *mut u8) else {
            fail!("null in the ring");
        };
        free_kobj(mm, hooks, KObj(p))?;
        n += 1;
    }
    Ok(n)
}

/// Give every cached object and page back: every CPU's kmalloc and `typed` arrays drained
/// on that CPU (`run_on_cpu`, inside the slab's shrink), empty slabs released, then every
/// CPU's per-CPU page lists drained (`drain_all_pages`, which takes each list's lock). Call
/// with interrupts on, the workers finished. Returns how many of the CPUs `online` names
/// the platform could not reach (0 when all were; ids without a CPU, as sparse APIC ids
/// leave, are not asked).
///
/// Not `run_on_cpu(cpu, drain_local_pages)`: the host platforms run the function on the
/// calling thread, whose CPU id stays the caller's, so "local" there means the caller's.
pub fn quiesce<P: IrqControl, F: PagingFormat>(
    mm: &Mm<'_, P, F>,
    typed: &MmTypedCache<'_, Tagged, P>,
    online: impl Fn(usize) -> bool,
) -> usize {
    mm.kmalloc_shrink();
    typed.cache().shrink();
    mm.buddy().drain_all_pages();
    let platform = mm.platform();
    (0..platform.nr_cpus())
        .filter(|&cpu| online(cpu) && !platform.run_on_cpu(cpu, &|| {}))
        .count()
}

/// What [`run_on_every_cpu`] needs from the kernel.
pub trait SmpKernel {
    /// The hooks one CPU's worker uses.
    type Hooks: StressHooks + Default;
    /// Run `job(cpu)` on every online CPU at once, outside interrupt context, the caller's
    /// share on the caller, and return when all are done.
    fn run_everywhere(&self, job: fn(usize));
    /// Let the timer handlers allocate, or stop them and wait until none is allocating.
    fn set_timer_allocations(&self, on: bool);
    /// The caller's CPU id.
    fn this_cpu(&self) -> usize;
    /// Whether CPU `cpu` runs (ids without a CPU, or CPUs not started, do not).
    fn online(&self, cpu: usize) -> bool;
    /// The full `verify` of the `Mm`, with the other CPUs idle and their timer handlers not
    /// allocating (as they are when this is called).
    fn verify_stopped(&self) -> CheckResult;
    /// CPU `cpu`'s counters (`None` for a CPU without a per-CPU area).
    fn cpu_stats(&self, cpu: usize) -> Option<crate::smp::StatsSnapshot>;
}

/// The shared state of one stress run, reached by every CPU's job through [`RUN`].
struct StressRun<'m, P: IrqControl + 'static, F: PagingFormat + 'static> {
    mm: &'m Mm<'static, P, F>,
    typed: MmTypedCache<'static, Tagged, P>,
    ring: Ring,
    cfg: StressConfig,
    results: [UnsafeCell<Option<Result<CpuReport, Reason>>>; MAX_CPUS],
}

// SAFETY: each CPU writes only its own `results` slot, and the boot CPU reads them only after
// `run_everywhere` returned (every job finished, with release/acquire on the job counter);
// the rest is shared through `&` and is `Sync` (`Mm`, the typed cache, the ring of atomics).
unsafe impl<P: IrqControl, F: PagingFormat> Sync for StressRun<'_, P, F> {}

/// The run in progress (a `StressRun<P, F>` of the `P`, `F` that `job::<P, F, H>` names).
static RUN: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

fn job<P: IrqControl + 'static, F: PagingFormat + 'static, H: StressHooks + Default>(cpu: usize) {
    let run = RUN.load(Ordering::Acquire);
    if run.is_null() || cpu >= MAX_CPUS {
        return;
    }
    // SAFETY: `run_on_every_cpu::<P, F, _>` published a `StressRun<P, F>` and keeps it alive
    // until every job returned; it publishes only this instantiation of `job`.
    let run = unsafe { &*run.cast::<StressRun<'_, P, F>>() };
    let r = worker(run.mm, &run.typed, &run.ring, &run.cfg, cpu, &H::default());
    // SAFETY: this CPU's own slot (see `StressRun`'s `Sync`).
    unsafe { *run.results[cpu].get() = Some(r) };
}

/// The whole cross-CPU stress test (module docs) on `mm`, every CPU of `kernel` running
/// `cfg.ops` operations with the timers allocating; per-CPU figures and totals go to `out`.
pub fn run_on_every_cpu<P, F, K>(
    mm: &'static Mm<'static, P, F>,
    kernel: &K,
    cfg: StressConfig,
    out: &mut impl fmt::Write,
) -> CheckResult
where
    P: IrqControl + 'static,
    F: PagingFormat + 'static,
    K: SmpKernel,
{
    let typed = mm
        .typed_cache::<Tagged>(CacheConfig::new("stress_tagged", size_of::<Tagged>()))
        .map_err(|e| Reason::new(format_args!("typed cache: {e:?}")))?;
    let run = StressRun {
        mm,
        typed,
        ring: Ring::new(),
        cfg,
        results: [const { UnsafeCell::new(None) }; MAX_CPUS],
    };
    let hooks = K::Hooks::default();
    warm_up(mm)?;
    // A short round so the typed cache's slabs and the per-CPU caches exist before the
    // "before" figures.
    let warm = StressConfig { ops: 200, seed: 1 };
    worker(mm, &run.typed, &run.ring, &warm, kernel.this_cpu(), &hooks)?;
    // Timer handlers cache pages on their CPU: quiet while the figures are taken.
    kernel.set_timer_allocations(false);
    drain_ring(mm, &run.ring, &hooks)?;
    ensure!(
        quiesce(mm, &run.typed, |c| kernel.online(c)) == 0,
        "a CPU was not reachable for the drain"
    );
    let before = Snapshot::of(&mm.meminfo());
    kernel.set_timer_allocations(true);

    RUN.store(
        core::ptr::addr_of!(run).cast_mut().cast(),
        Ordering::Release,
    );
    kernel.run_everywhere(job::<P, F, K::Hooks>);
    RUN.store(core::ptr::null_mut(), Ordering::Release);

    let mut total = CpuReport::default();
    let mut first_failure = None;
    for (cpu, slot) in run.results.iter().enumerate() {
        // SAFETY: every job has finished (`run_everywhere` returned).
        let Some(result) = (unsafe { &*slot.get() }) else {
            continue;
        };
        match result {
            Ok(r) => {
                let _ = writeln!(out, "mmkit-qemu: stress cpu {cpu}: {r}");
                total.add(r);
            }
            Err(e) => {
                let _ = writeln!(out, "mmkit-qemu: stress cpu {cpu}: FAILED: {}", e.as_str());
                first_failure.get_or_insert(Reason::new(format_args!("cpu {cpu}: {}", e.as_str())));
            }
        }
    }
    let _ = writeln!(out, "mmkit-qemu: stress total: {total}");
    if let Some(e) = first_failure {
        return Err(e);
    }
    kernel.set_timer_allocations(false);
    let left = drain_ring(mm, &run.ring, &hooks)?;
    ensure!(
        quiesce(mm, &run.typed, |c| kernel.online(c)) == 0,
        "a CPU was not reachable for the drain"
    );
    let after = Snapshot::of(&mm.meminfo());
    let _ = writeln!(
        out,
        "mmkit-qemu: stress: {left} objects left in the ring freed; free {} KiB before and after",
        after.free_kb
    );
    let unchanged = before.unchanged(&after);
    let verified = unchanged.and_then(|()| kernel.verify_stopped());
    kernel.set_timer_allocations(true);
    verified
}

/// The end both kernels' SMP parts share: `smp_stress_every_cpu` ([`run_on_every_cpu`],
/// skipped when `shootdown_ok` is false: stale translations would let the workers write
/// freed memory), then the timer handlers stopped, and every CPU's counters printed. Returns
/// their sum, for the kernel's own last check.
pub fn stress_and_report<W, P, F, K>(
    h: &mut Harness<W>,
    mm: &'static Mm<'static, P, F>,
    kernel: &K,
    shootdown_ok: bool,
    cfg: StressConfig,
    out: &mut impl fmt::Write,
) -> crate::smp::StatsSnapshot
where
    W: fmt::Write,
    P: IrqControl + 'static,
    F: PagingFormat + 'static,
    K: SmpKernel,
{
    if shootdown_ok {
        h.run("smp_stress_every_cpu", || {
            run_on_every_cpu(mm, kernel, cfg, out)
        });
    } else {
        h.skip(
            "smp_stress_every_cpu",
            "TLB invalidation does not reach every CPU",
        );
    }
    kernel.set_timer_allocations(false);
    let mut total = crate::smp::StatsSnapshot::default();
    for cpu in 0..MAX_CPUS {
        let Some(s) = kernel.cpu_stats(cpu) else {
            continue;
        };
        let _ = writeln!(
            out,
            "mmkit-qemu: cpu {cpu}: {} timer interrupts, {} of them inside mmkit calls, {} timer allocation rounds ({} failed), {} IPIs sent, {} cross-CPU calls run",
            s.ticks, s.ticks_in_mm, s.timer_allocs, s.timer_failures, s.ipis_sent, s.calls_run
        );
        total.add(&s);
    }
    let _ = writeln!(
        out,
        "mmkit-qemu: all CPUs: {} timer interrupts, {} inside mmkit calls, {} IPIs sent, {} calls run",
        total.ticks, total.ticks_in_mm, total.ipis_sent, total.calls_run
    );
    total
}

/// Whether a TLB shootdown reaches the other CPUs, after an unmap and after a `protect`:
/// map frame A at a vmalloc address (`vmap`), let CPU `other` read it (its TLB now holds the
/// translation), unmap, map frame B at the same address and let `other` read again: it must
/// see B. Then make B's mapping read-only (`protect` on the kernel table, flushed through the
/// hooks' TLB) and let `other` write: it must fault. With a shootdown that skips the other
/// CPUs, `other` still reads A, or writes B, through its stale TLB entry. The kernel page
/// table must be live on every CPU (no host test can run this).
pub fn shootdown_reaches<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    other: usize,
) -> CheckResult {
    let mut frames = [None; 2];
    let mut result = Ok(());
    for (i, f) in frames.iter_mut().enumerate() {
        let got = mm.alloc_pages(GfpFlags::KERNEL, Order::ZERO).map(|pfn| {
            mm.page_address(pfn, Order::ZERO).map(|p| {
                // SAFETY: a fresh page of ours, mapped at `p`.
                unsafe { rawmem::store_word(p, 0, 0xa000 + i as u64) };
                pfn
            })
        });
        match got {
            Ok(Some(pfn)) => *f = Some(pfn),
            other => result = Err(Reason::new(format_args!("frame {i}: {other:?}"))),
        }
    }
    if let (Ok(()), [Some(a), Some(b)]) = (&result, frames) {
        result = remap_seen_by(mm, hooks, other, a, b);
    }
    for pfn in frames.into_iter().flatten() {
        let _ = mm.free_pages(pfn, Order::ZERO);
    }
    result
}

fn remap_seen_by<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    other: usize,
    a: mmkit::addr::Pfn,
    b: mmkit::addr::Pfn,
) -> CheckResult {
    let attrs = mmkit::pgtable::Attrs::KERNEL_RW;
    let read_on_other = |va: VirtAddr| {
        let seen = core::sync::atomic::AtomicU64::new(0);
        let reached = mm.platform().run_on_cpu(other, &|| {
            if let Some(p) = hooks.vmalloc_ptr(va) {
                // SAFETY: `va` maps a page of ours while this runs.
                seen.store(unsafe { rawmem::load_word(p, 0) }, Ordering::SeqCst);
            }
        });
        reached.then(|| seen.load(Ordering::SeqCst))
    };
    let va = mm
        .vmap(&[a], attrs, &mut hooks.tlb())
        .map_err(|e| Reason::new(format_args!("vmap: {e:?}")))?;
    let first = read_on_other(va);
    mm.vunmap(va, &mut hooks.tlb())
        .map_err(|e| Reason::new(format_args!("vunmap: {e:?}")))?;
    let again = mm
        .vmap(&[b], attrs, &mut hooks.tlb())
        .map_err(|e| Reason::new(format_args!("vmap: {e:?}")))?;
    let second = read_on_other(again);
    let protected = protect_seen_by(mm, hooks, other, again);
    mm.vunmap(again, &mut hooks.tlb())
        .map_err(|e| Reason::new(format_args!("vunmap: {e:?}")))?;
    ensure!(
        first == Some(0xa000),
        "CPU {other} read {first:x?} through {va:?}, frame A holds 0xa000"
    );
    ensure!(
        again == va,
        "the second vmap went to {again:?}, not {va:?}: nothing to compare"
    );
    ensure!(
        second == Some(0xa001),
        "CPU {other} read {second:x?} at {va:?} after the remap to frame B (0xa001): a stale TLB entry"
    );
    protected
}

/// Make the page at `va` (mapped writable, just read by `other`) read-only and see a write on
/// `other` fault.
fn protect_seen_by<P: IrqControl, F: PagingFormat, H: StressHooks>(
    mm: &Mm<'_, P, F>,
    hooks: &H,
    other: usize,
    va: VirtAddr,
) -> CheckResult {
    use mmkit::pgtable::{AttrChange, Attrs};
    let write_on_other = || {
        let outcome = core::sync::atomic::AtomicU8::new(0);
        let reached = mm.platform().run_on_cpu(other, &|| {
            // The byte written is the one there (frame B's word 0 is 0xa001).
            let code = match hooks.write_nofault(VirtAddr::new(va.as_u64()), 0x01) {
                None => 3,
                Some(true) => 1,
                Some(false) => 2,
            };
            outcome.store(code, Ordering::SeqCst);
        });
        (reached, outcome.load(Ordering::SeqCst))
    };
    let (reached, before) = write_on_other();
    ensure!(reached, "CPU {other} not reached");
    if before == 3 {
        return Ok(()); // the kernel cannot probe writes
    }
    ensure!(
        before == 1,
        "CPU {other} could not write {va:?} before the protect"
    );
    let change = AttrChange::flags(Attrs::empty(), Attrs::WRITE);
    let protected = mm.with_page_table(|pt| {
        let flush = pt.protect(va, PAGE_SIZE, change)?;
        let freed = flush.invalidate(&mut hooks.tlb());
        let _ = pt.free_tables(freed);
        Ok::<(), mmkit::pgtable::ProtectError>(())
    });
    match protected {
        Some(Ok(())) => {}
        other => fail!("protect {va:?} read-only: {other:?}"),
    }
    let (_, after) = write_on_other();
    ensure!(
        after == 2,
        "CPU {other} wrote {va:?} after it was made read-only: a stale TLB entry"
    );
    Ok(())
}

/// The figures that must be the same before and after the stress run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Free memory (zones plus per-CPU lists), KiB.
    pub free_kb: u64,
    /// Of that, on per-CPU lists.
    pub pcp_kb: u64,
    /// Slab pages.
    pub slab_kb: u64,
    /// `alloc_pages` memory per mobility.
    pub pages_kb: [u64; 3],
    /// vmalloc frames.
    pub vmalloc_kb: u64,
    /// Page-table frames.
    pub page_tables_kb: u64,
}

impl Snapshot {
    /// Take the figures from `meminfo`.
    pub fn of(m: &MemInfo) -> Self {
        Self {
            free_kb: m.free_kb,
            pcp_kb: m.pcp_kb,
            slab_kb: m.slab_kb,
            pages_kb: m.pages_kb,
            vmalloc_kb: m.vmalloc_used_kb,
            page_tables_kb: m.page_tables_kb,
        }
    }

    /// Fail unless `after` equals `self`, naming the first figure that moved.
    pub fn unchanged(&self, after: &Snapshot) -> CheckResult {
        let figures = [
            ("free", self.free_kb, after.free_kb),
            ("per-CPU", self.pcp_kb, after.pcp_kb),
            ("slab", self.slab_kb, after.slab_kb),
            ("unmovable pages", self.pages_kb[0], after.pages_kb[0]),
            ("movable pages", self.pages_kb[1], after.pages_kb[1]),
            ("reclaimable pages", self.pages_kb[2], after.pages_kb[2]),
            ("vmalloc", self.vmalloc_kb, after.vmalloc_kb),
            ("page tables", self.page_tables_kb, after.page_tables_kb),
        ];
        for (what, before, now) in figures {
            ensure!(
                before == now,
                "{what} memory: {before} KiB before, {now} KiB after"
            );
        }
        Ok(())
    }
}

/// A host stand-in for a kernel's SMP half, for the tests here and in `deferred`: threads
/// bound to CPUs `0..cpus` of a global `Mm` run each job at once.
#[cfg(test)]
pub(crate) mod host_kernel {
    use super::*;
    use mmkit::addr::host::HostPlatform;
    use mmkit::pgtable::arch::x86_64::X86_64;
    use mmkit::NotLoaded;

    /// The global `Mm` type the host tests install.
    pub(crate) type HostGlobal = mmkit::GlobalMm<HostPlatform, X86_64>;

    /// Hooks for host workers: no live table, no counting.
    #[derive(Default)]
    pub(crate) struct ThreadHooks;

    impl StressHooks for ThreadHooks {
        type Tlb = NotLoaded;
        fn tlb(&self) -> NotLoaded {
            // SAFETY: the host table is never loaded into an MMU.
            unsafe { NotLoaded::new() }
        }
        fn vmalloc_ptr(&self, _va: VirtAddr) -> Option<NonNull<u8>> {
            None
        }
        fn enter_mm(&self) {}
        fn leave_mm(&self) {}
    }

    /// Threads bound to CPUs `0..cpus` of `global` stand in for the kernel's CPUs; the
    /// caller is CPU 0.
    pub(crate) struct Threads {
        global: &'static HostGlobal,
        cpus: usize,
    }

    impl Threads {
        pub(crate) fn new(global: &'static HostGlobal, cpus: usize) -> Self {
            Self { global, cpus }
        }
    }

    impl SmpKernel for Threads {
        type Hooks = ThreadHooks;
        fn run_everywhere(&self, job: fn(usize)) {
            let global = self.global;
            std::thread::scope(|s| {
                for cpu in 1..self.cpus {
                    s.spawn(move || {
                        global.get().unwrap().platform().bind_current_thread(cpu);
                        job(cpu);
                    });
                }
                job(0);
            });
        }
        fn set_timer_allocations(&self, _on: bool) {}
        fn this_cpu(&self) -> usize {
            0
        }
        fn online(&self, cpu: usize) -> bool {
            cpu < self.cpus
        }
        fn verify_stopped(&self) -> CheckResult {
            // SAFETY: the worker threads have finished; nothing else uses the allocator.
            match unsafe { self.global.verify_stopped() } {
                Some(Ok(())) => Ok(()),
                other => Err(Reason::new(format_args!("{other:?}"))),
            }
        }
        fn cpu_stats(&self, cpu: usize) -> Option<crate::smp::StatsSnapshot> {
            (cpu < self.cpus).then(crate::smp::StatsSnapshot::default)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_kernel::{HostGlobal, Threads};
    use super::*;
    use mmkit::addr::host::HostPlatform;
    use mmkit::addr::{PhysAddr, PhysRange, VirtRange};
    use mmkit::host::HostRam;
    use mmkit::pgtable::arch::x86_64::X86_64;
    use mmkit::slab::CacheConfig;
    use mmkit::{MmBuilder, NotLoaded};
    use std::sync::atomic::AtomicU64;

    const MIB: u64 = 1 << 20;

    struct HostHooks {
        calls: AtomicU64,
    }

    impl StressHooks for HostHooks {
        type Tlb = NotLoaded;
        fn tlb(&self) -> NotLoaded {
            // SAFETY: the host table is never loaded into an MMU.
            unsafe { NotLoaded::new() }
        }
        fn vmalloc_ptr(&self, _va: VirtAddr) -> Option<NonNull<u8>> {
            None
        }
        fn enter_mm(&self) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        fn leave_mm(&self) {}
    }

    fn host_mm(mem: &HostRam, cpus: usize) -> Mm<'_, HostPlatform, X86_64> {
        let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 63 * MIB).unwrap();
        let window =
            VirtRange::from_start_size(VirtAddr::new(0xffff_c900_0000_0000), 1 << 30).unwrap();
        // SAFETY: `mem` stands for the whole map and nothing else uses it.
        unsafe { MmBuilder::new(HostPlatform::new(cpus), mem) }
            .memory(ram)
            .vmalloc_area(X86_64::FOUR_LEVEL, window)
            .boot()
            .unwrap()
    }

    #[test]
    fn four_cpus_stress_and_give_everything_back() {
        let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
        let mm = host_mm(&mem, 4);
        let typed = mm
            .typed_cache::<Tagged>(CacheConfig::new("stress", core::mem::size_of::<Tagged>()))
            .unwrap();
        let ring = Ring::new();
        let hooks = HostHooks {
            calls: AtomicU64::new(0),
        };
        let cfg = StressConfig { ops: 3000, seed: 7 };
        // Warm up the caches the run will use, so the "before" figures include them.
        warm_up(&mm).unwrap();
        std::thread::scope(|s| {
            for cpu in 0..4 {
                let (mm, typed, ring, hooks) = (&mm, &typed, &ring, &hooks);
                s.spawn(move || {
                    mm.platform().bind_current_thread(cpu);
                    let warm = StressConfig { ops: 300, seed: 1 };
                    worker(mm, typed, ring, &warm, cpu, hooks).unwrap();
                });
            }
        });
        drain_ring(&mm, &ring, &hooks).unwrap();
        assert_eq!(quiesce(&mm, &typed, |_| true), 0);
        let before = Snapshot::of(&mm.meminfo());
        let reports: Vec<CpuReport> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|cpu| {
                    let (mm, typed, ring, hooks) = (&mm, &typed, &ring, &hooks);
                    s.spawn(move || {
                        mm.platform().bind_current_thread(cpu);
                        worker(mm, typed, ring, &cfg, cpu, hooks)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        drain_ring(&mm, &ring, &hooks).unwrap();
        assert_eq!(quiesce(&mm, &typed, |_| true), 0);
        let after = Snapshot::of(&mm.meminfo());
        before.unchanged(&after).unwrap();
        assert!(reports.iter().all(|r| r.ops == 3000), "{reports:?}");
        assert!(
            reports.iter().map(|r| r.remote_frees).sum::<u64>() > 0,
            "{reports:?}"
        );
        assert!(reports
            .iter()
            .all(|r| r.vmallocs > 0 && r.pages > 0 && r.typed > 0));
        drop(typed);
        let mut mm = mm;
        mm.verify().unwrap();
    }

    static GLOBAL: HostGlobal = mmkit::GlobalMm::new();

    #[test]
    fn the_whole_run_passes_on_four_threads_and_reports_each_cpu() {
        let mem: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 64 * MIB)));
        let mm = GLOBAL.init(host_mm(mem, 4)).ok().unwrap();
        mm.platform().bind_current_thread(0);
        let mut out = String::new();
        let cfg = StressConfig { ops: 1000, seed: 3 };
        run_on_every_cpu(mm, &Threads::new(&GLOBAL, 4), cfg, &mut out).unwrap();
        for cpu in 0..4 {
            assert!(
                out.contains(&format!("stress cpu {cpu}: 1000 ops")),
                "{out}"
            );
        }
        assert!(out.contains("stress total: 4000 ops"), "{out}");
    }

    #[test]
    fn a_damaged_object_is_reported_on_free() {
        let mem = HostRam::new(PhysAddr::new(0), 64 * MIB);
        let mm = host_mm(&mem, 1);
        let hooks = HostHooks {
            calls: AtomicU64::new(0),
        };
        let p = mm.kmalloc(64, GfpFlags::KERNEL).unwrap();
        // SAFETY: a fresh 64-byte object.
        let o = unsafe { KObj::init(p, 8, 0, 42) }.unwrap();
        // Another "owner" writes into it, as a double hand-out would.
        // SAFETY: the object is live and ours.
        unsafe { rawmem::store_word(p, 5, 0) };
        let ring = Ring::new();
        assert!(ring.push(o.0.as_ptr() as usize, 3));
        let err = drain_ring(&mm, &ring, &hooks).unwrap_err();
        assert!(err.as_str().contains("reads 0x0"), "{err:?}");
    }

    #[test]
    fn ring_hands_each_object_out_once() {
        let ring = Ring::new();
        for a in 1..=RING_SLOTS {
            assert!(ring.push(a * 8, a));
        }
        assert!(!ring.push(4096, 0), "full");
        let mut seen: Vec<usize> = (0..RING_SLOTS).map(|i| ring.pop(i).unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=RING_SLOTS).map(|a| a * 8).collect::<Vec<_>>());
        assert_eq!(ring.pop(0), None);
    }
}
