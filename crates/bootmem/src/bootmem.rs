//! The [`Bootmem`] value: two region lists and the operations that edit them.
//!
//! ## Model
//! *Memory* is what firmware says exists; *reserved* is what is in use. Free memory is memory
//! minus reserved, minus regions flagged [`RegionFlags::NOT_ALLOCATABLE`]. Both lists are
//! sorted, non-overlapping and merged (see [`crate::list`]); ranges are byte-granular.
//!
//! ## Atomicity
//! Every operation first validates its input, then counts the slots it needs, then grows the
//! list if needed, then applies the change — and the apply step cannot fail. Growing either
//! completes or changes nothing. So every error leaves the bootmem exactly as it was.
//!
//! ## Growing the arrays (memblock's `memblock_double_array`)
//! A list starts in an inline array of `N` slots. When an operation needs more, bootmem picks
//! the smallest power-of-two multiple of the capacity that holds the result plus two slots of
//! slack, finds free memory for it top-down below the current limit (avoiding the range the
//! pending operation is about), maps it through the [`PhysMapper`] given to
//! [`Bootmem::set_mapper`], copies the list there, reserves the new array and frees the old
//! one if it was itself allocated. The slack pays for those two reserved-list edits. Growing
//! the memory list needs room in the reserved list, so the reserved list is grown first,
//! avoiding the space already chosen for the memory array. Without a mapper, or without free
//! memory, the operation fails with `RegionsFull` and nothing changes. The arrays stay reserved
//! until after the hand-off ([`Handoff::region_arrays`](crate::Handoff::region_arrays)); a
//! `reserve`, `free` or `remove` that touches them is refused.
//!
//! ## No lock
//! A `Bootmem` is edited through `&mut self`: boot code is single-threaded, and a kernel that
//! keeps it in a `static` wraps it in the lock of its choice.

use core::mem::size_of;

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange, PAGE_SIZE};

use crate::error::{FreeError, GrowError, RegionError};
use crate::iter::{FreeRanges, FreeRangesRev, RangeFilter};
use crate::list::{ListKind, RegionList};
use crate::region::{NodeId, Region, RegionFlags};

/// The initial capacity of each list, as memblock's `INIT_MEMBLOCK_REGIONS`.
///
/// ```
/// use mmkit_bootmem::{Bootmem, ListKind, DEFAULT_REGIONS};
/// assert_eq!(DEFAULT_REGIONS, 128);
/// let bm: Bootmem = Bootmem::new();
/// assert_eq!(bm.capacity(ListKind::Reserved), DEFAULT_REGIONS);
/// ```
pub const DEFAULT_REGIONS: usize = 128;

/// The default physical address limit: 52 address bits, the most any x86_64 (`MAXPHYADDR`)
/// or aarch64 (`FEAT_LPA`) machine can address. Firmware ingestion clips memory at the
/// limit set with [`Bootmem::set_phys_limit`], this one by default.
///
/// ```
/// assert_eq!(mmkit_bootmem::DEFAULT_PHYS_LIMIT, 1 << 52);
/// ```
pub const DEFAULT_PHYS_LIMIT: u64 = 1 << 52;

/// Slots kept spare when an array grows: reserving the new array and freeing the old one may
/// each add one reserved region.
const GROW_SLACK: usize = 2;

/// Whether allocations may use memory flagged [`RegionFlags::HOTPLUG`].
///
/// Linux with `movable_node` never places boot allocations in hotpluggable memory, so that it
/// stays removable; [`HotplugPolicy::PreferOthers`] is the softer variant that uses it only when
/// nothing else fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HotplugPolicy {
    /// Hotpluggable memory is ordinary memory (Linux without `movable_node`).
    #[default]
    Allow,
    /// Use hotpluggable memory only when no other memory satisfies a request.
    PreferOthers,
    /// Never allocate from hotpluggable memory (Linux with `movable_node`).
    Avoid,
}

/// A memblock-style early allocator over two region lists of initial capacity `N`.
///
/// ```
/// use mmkit_addr::PhysAddr;
/// use mmkit_bootmem::Bootmem;
///
/// let mut bm: Bootmem = Bootmem::new();
/// bm.add(PhysAddr::new(0x10_0000), 0x100_0000).unwrap();
/// bm.reserve(PhysAddr::new(0x20_0000), 0x40_0000).unwrap(); // the kernel image
/// let pa = bm.alloc(0x1000, 0x1000).unwrap();
/// assert_eq!(pa, PhysAddr::new(0x110_0000 - 0x1000)); // top-down
/// ```
pub struct Bootmem<'m, const N: usize = DEFAULT_REGIONS> {
    pub(crate) memory: RegionList<N>,
    pub(crate) reserved: RegionList<N>,
    pub(crate) bottom_up: bool,
    pub(crate) limit: u64,
    pub(crate) hotplug: HotplugPolicy,
    pub(crate) mirror_first: bool,
    pub(crate) mapper: Option<&'m dyn PhysMapper>,
    pub(crate) phys_limit: u64,
    /// An [`atomically`](Bootmem::atomically) block is running: edits carry the transaction
    /// bookkeeping flags.
    txn: bool,
}

impl<const N: usize> Default for Bootmem<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Validate `(base, size)` into raw `[base, end)`.
pub(crate) fn span(base: PhysAddr, size: u64) -> Result<(u64, u64), (bool, u64, u64)> {
    if size == 0 {
        return Err((true, base.as_u64(), size));
    }
    match base.as_u64().checked_add(size) {
        Some(end) => Ok((base.as_u64(), end)),
        None => Err((false, base.as_u64(), size)),
    }
}

fn region_span(base: PhysAddr, size: u64) -> Result<(u64, u64), RegionError> {
    span(base, size).map_err(|(zero, base, size)| {
        if zero {
            RegionError::ZeroSize
        } else {
            RegionError::Wraps { base, size }
        }
    })
}

pub(crate) fn raw_range(base: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(base), PhysAddr::new(end)).unwrap_or(PhysRange::EMPTY)
}

impl<'m, const N: usize> Bootmem<'m, N> {
    /// An empty bootmem: no memory, nothing reserved, top-down, no limit, no mapper. `const`, so
    /// it can initialise a `static`.
    pub const fn new() -> Self {
        Self {
            memory: RegionList::new(),
            reserved: RegionList::new(),
            bottom_up: false,
            limit: u64::MAX,
            hotplug: HotplugPolicy::Allow,
            mirror_first: false,
            mapper: None,
            phys_limit: DEFAULT_PHYS_LIMIT,
            txn: false,
        }
    }

    /// Give bootmem a way to reach physical memory: it is used to grow the region arrays into
    /// bootmem-allocated memory and by [`alloc_zeroed`](Self::alloc_zeroed).
    ///
    /// # Safety
    /// From this call until the bootmem (and its [`Handoff`](crate::Handoff)) is dropped,
    /// every byte that is *free* in this bootmem — in the memory list, not reserved, not
    /// [`RegionFlags::NOT_ALLOCATABLE`] — must be real memory that nothing else reads or
    /// writes, except through allocations this bootmem hands out. In other words: add only
    /// memory that exists, and reserve everything in use (kernel image, firmware tables, boot
    /// stacks) before the next allocation. Bootmem then writes only memory it has just taken
    /// out of the free set.
    #[allow(unsafe_code)]
    pub unsafe fn set_mapper(&mut self, mapper: &'m dyn PhysMapper) {
        self.mapper = Some(mapper);
    }

    /// Whether a mapper was given.
    pub fn has_mapper(&self) -> bool {
        self.mapper.is_some()
    }

    /// Allocate from the bottom up instead of top-down (memblock's `memblock_set_bottom_up`).
    pub fn set_bottom_up(&mut self, bottom_up: bool) {
        self.bottom_up = bottom_up;
    }

    /// Whether allocations go bottom-up.
    pub fn is_bottom_up(&self) -> bool {
        self.bottom_up
    }

    /// Allocations end below `limit` (memblock's `memblock_set_current_limit`): typically the
    /// end of what the early page tables map.
    pub fn set_current_limit(&mut self, limit: PhysAddr) {
        self.limit = limit.as_u64();
    }

    /// The current allocation limit (`u64::MAX`: none).
    pub fn current_limit(&self) -> PhysAddr {
        PhysAddr::new(self.limit)
    }

    /// Firmware ingestion ([`crate::firmware`]) clips memory and reservations at `end`, the
    /// first byte the CPU cannot address (Linux trims memblock at `1 << PHYS_MASK_SHIFT` the
    /// same way). Ranges given to [`add`](Self::add) and friends directly are not clipped.
    pub fn set_phys_limit(&mut self, end: PhysAddr) {
        self.phys_limit = end.as_u64();
    }

    /// The physical address limit ([`DEFAULT_PHYS_LIMIT`] unless set).
    pub fn phys_limit(&self) -> PhysAddr {
        PhysAddr::new(self.phys_limit)
    }

    /// `[base, end)` clipped at the physical address limit; `None` if nothing is left.
    pub(crate) fn clip_to_phys_limit(&self, base: u64, end: u64) -> Option<(u64, u64)> {
        let end = end.min(self.phys_limit);
        (base < end).then_some((base, end))
    }

    /// Run `edits` all-or-nothing: if it returns an error, every change it made through
    /// [`add_node`](Self::add_node), [`reserve`](Self::reserve), [`mark`](Self::mark) and the
    /// allocation functions is undone and the bootmem is as it was (firmware ingestion is
    /// built on this). Region arrays that grew on the way stay grown; that is invisible except
    /// for [`capacity`](Self::capacity) and the arrays' own reservations.
    ///
    /// How: while the block runs, bytes it adds to either list carry a private flag and flags
    /// it sets are recorded in private shadow bits, so such regions do not merge with older
    /// ones — so, as between any two unmerged regions, an allocation inside the block does
    /// not straddle older memory and memory the block added. A growing array is never placed
    /// in memory the block added. At the end the
    /// bookkeeping is dropped (commit) or the marked regions are removed and the shadowed
    /// flags cleared (rollback); neither needs a free slot, so neither can fail. `remove`,
    /// `free` of older reservations, `clear` and `set_node` are not undone and are not used
    /// inside a block.
    pub(crate) fn atomically<T, E>(
        &mut self,
        edits: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        debug_assert!(!self.txn, "atomically blocks do not nest");
        self.txn = true;
        let result = edits(self);
        self.txn = false;
        let committed = result.is_ok();
        for list in [&mut self.memory, &mut self.reserved] {
            if committed {
                list.settle(|_| true, RegionFlags::txn_committed);
            } else {
                list.settle(
                    |r| !r.flags().contains(RegionFlags::TXN_NEW),
                    RegionFlags::txn_undone,
                );
            }
        }
        result
    }

    /// The flags new bytes get: `flags`, plus the transaction mark inside a transaction.
    fn txn_flags(&self, flags: RegionFlags) -> RegionFlags {
        if self.txn {
            flags | RegionFlags::TXN_NEW
        } else {
            flags
        }
    }

    /// How allocations treat [`RegionFlags::HOTPLUG`] memory.
    pub fn set_hotplug_policy(&mut self, policy: HotplugPolicy) {
        self.hotplug = policy;
    }

    /// Try [`RegionFlags::MIRROR`] memory before any other (Linux's `mirrored_kernelcore`).
    pub fn set_mirror_first(&mut self, on: bool) {
        self.mirror_first = on;
    }

    /// The memory regions, sorted (available before the hand-off, to size nodes and zones).
    pub fn memory_regions(&self) -> &[Region] {
        self.memory.regions()
    }

    /// The reserved regions, sorted.
    pub fn reserved_regions(&self) -> &[Region] {
        self.reserved.regions()
    }

    /// Bytes of memory (memblock's `memblock_phys_mem_size`).
    pub fn memory_size(&self) -> u64 {
        self.memory.total()
    }

    /// Bytes reserved, including reservations outside memory.
    pub fn reserved_size(&self) -> u64 {
        self.reserved.total()
    }

    /// Slots available in a list before it must grow.
    pub fn capacity(&self, list: ListKind) -> usize {
        self.list(list).capacity()
    }

    /// The lowest memory address (memblock's `memblock_start_of_DRAM`).
    pub fn start_of_memory(&self) -> Option<PhysAddr> {
        self.memory.regions().first().map(Region::base)
    }

    /// The end of the highest memory region (memblock's `memblock_end_of_DRAM`).
    pub fn end_of_memory(&self) -> Option<PhysAddr> {
        self.memory.regions().last().map(Region::end)
    }

    /// The range a node's memory spans, holes included (what zone sizing needs).
    pub fn node_span(&self, nid: NodeId) -> Option<PhysRange> {
        let regions = self.memory.regions();
        let first = regions.iter().find(|r| r.nid() == nid)?;
        let last = regions.iter().rev().find(|r| r.nid() == nid)?;
        Some(raw_range(first.raw_base(), last.raw_end()))
    }

    /// Whether every byte of `range` is memory.
    pub fn is_memory(&self, range: PhysRange) -> bool {
        self.memory
            .covers(range.start().as_u64(), range.end().as_u64())
    }

    /// Whether any byte of `range` is reserved.
    pub fn is_reserved(&self, range: PhysRange) -> bool {
        self.reserved
            .overlaps(range.start().as_u64(), range.end().as_u64())
    }

    /// The physical memory of the region arrays bootmem allocated from itself (memory list,
    /// reserved list); `None` while a list is still in its inline array.
    pub fn region_arrays(&self) -> [Option<PhysRange>; 2] {
        [self.memory.external_phys(), self.reserved.external_phys()]
    }

    /// Free ranges in ascending order.
    pub fn free_ranges(&self, filter: RangeFilter) -> FreeRanges<'_> {
        FreeRanges::new(self.memory.regions(), self.reserved.regions(), filter)
    }

    /// Free ranges in descending order.
    pub fn free_ranges_rev(&self, filter: RangeFilter) -> FreeRangesRev<'_> {
        FreeRangesRev::new(self.memory.regions(), self.reserved.regions(), filter)
    }

    /// Add memory on node 0 with no flags (memblock's `memblock_add`). Parts that are already
    /// memory keep their node and flags.
    pub fn add(&mut self, base: PhysAddr, size: u64) -> Result<(), RegionError> {
        self.add_node(base, size, NodeId::ZERO, RegionFlags::empty())
    }

    /// Add memory on node `nid` with `flags` (memblock's `memblock_add_node`). Overlapping and
    /// unsorted input is fine: parts that are already memory keep their node and flags, and
    /// touching compatible regions merge.
    pub fn add_node(
        &mut self,
        base: PhysAddr,
        size: u64,
        nid: NodeId,
        flags: RegionFlags,
    ) -> Result<(), RegionError> {
        let (base, end) = region_span(base, size)?;
        let flags = self.txn_flags(flags);
        let extra = self.memory.slots_to_add(base, end, flags, nid);
        self.make_room(ListKind::Memory, extra, (base, end))?;
        self.memory.add_range(base, end, flags, nid);
        Ok(())
    }

    /// Remove `[base, base + size)` from memory (memblock's `memblock_remove`); bytes that are
    /// not memory are ignored. Refused if it would remove memory holding bootmem's own arrays.
    pub fn remove(&mut self, base: PhysAddr, size: u64) -> Result<(), RegionError> {
        let (base, end) = region_span(base, size)?;
        self.refuse_array_overlap(base, end)
            .map_err(RegionError::OverlapsRegionArray)?;
        let extra = self.memory.slots_to_remove(base, end);
        self.make_room(ListKind::Memory, extra, (base, end))?;
        self.memory.remove_range(base, end);
        Ok(())
    }

    /// Mark `[base, base + size)` in use (memblock's `memblock_reserve`). The range need not be
    /// memory, and may overlap earlier reservations.
    pub fn reserve(&mut self, base: PhysAddr, size: u64) -> Result<(), RegionError> {
        let (base, end) = region_span(base, size)?;
        self.refuse_array_overlap(base, end)
            .map_err(RegionError::OverlapsRegionArray)?;
        self.reserve_raw(base, end)
            .map_err(|cause| RegionError::RegionsFull {
                list: ListKind::Reserved,
                cause,
            })
    }

    /// Reserve raw `[base, end)`, growing the reserved list if needed.
    pub(crate) fn reserve_raw(&mut self, base: u64, end: u64) -> Result<(), GrowError> {
        let flags = self.txn_flags(RegionFlags::empty());
        let extra = self.reserved.slots_to_add(base, end, flags, NodeId::NONE);
        self.make_room_raw(ListKind::Reserved, extra, &[(base, end)])?;
        self.reserved.add_range(base, end, flags, NodeId::NONE);
        Ok(())
    }

    /// Un-reserve `[base, base + size)` (memblock's `memblock_phys_free`): how an early
    /// allocation is given back. Every byte must be reserved, so double frees are caught.
    pub fn free(&mut self, base: PhysAddr, size: u64) -> Result<(), FreeError> {
        let (base, end) = span(base, size).map_err(|(zero, base, size)| {
            if zero {
                FreeError::ZeroSize
            } else {
                FreeError::Wraps { base, size }
            }
        })?;
        self.refuse_array_overlap(base, end)
            .map_err(FreeError::OverlapsRegionArray)?;
        if !self.reserved.covers(base, end) {
            return Err(FreeError::NotReserved(raw_range(base, end)));
        }
        let extra = self.reserved.slots_to_remove(base, end);
        self.make_room_raw(ListKind::Reserved, extra, &[(base, end)])
            .map_err(FreeError::RegionsFull)?;
        self.reserved.remove_range(base, end);
        Ok(())
    }

    /// Set `flags` on the memory in `[base, base + size)` (memblock's `memblock_mark_*`),
    /// splitting regions at the ends; bytes that are not memory are ignored.
    pub fn mark(
        &mut self,
        base: PhysAddr,
        size: u64,
        flags: RegionFlags,
    ) -> Result<(), RegionError> {
        let txn = self.txn;
        self.update_memory(base, size, |r| {
            let mut new = r.flags() | flags;
            if txn {
                new |= RegionFlags::txn_shadow(flags - r.flags());
            }
            r.set_flags(new)
        })
    }

    /// Clear `flags` on the memory in `[base, base + size)` (memblock's `memblock_clear_*`).
    pub fn clear(
        &mut self,
        base: PhysAddr,
        size: u64,
        flags: RegionFlags,
    ) -> Result<(), RegionError> {
        debug_assert!(!self.txn, "clear is not undone by a transaction");
        self.update_memory(base, size, |r| r.set_flags(r.flags() - flags))
    }

    /// Move the memory in `[base, base + size)` to node `nid` (memblock's `memblock_set_node`).
    pub fn set_node(&mut self, base: PhysAddr, size: u64, nid: NodeId) -> Result<(), RegionError> {
        self.update_memory(base, size, |r| r.set_nid(nid))
    }

    fn update_memory(
        &mut self,
        base: PhysAddr,
        size: u64,
        update: impl Fn(&mut Region),
    ) -> Result<(), RegionError> {
        let (base, end) = region_span(base, size)?;
        let extra = self.memory.slots_to_isolate(base, end);
        self.make_room(ListKind::Memory, extra, (base, end))?;
        self.memory.update_range(base, end, update);
        Ok(())
    }

    pub(crate) fn list(&self, kind: ListKind) -> &RegionList<N> {
        match kind {
            ListKind::Memory => &self.memory,
            ListKind::Reserved => &self.reserved,
        }
    }

    fn list_mut(&mut self, kind: ListKind) -> &mut RegionList<N> {
        match kind {
            ListKind::Memory => &mut self.memory,
            ListKind::Reserved => &mut self.reserved,
        }
    }

    /// The first region array that `[base, end)` overlaps, as an error value.
    fn refuse_array_overlap(&self, base: u64, end: u64) -> Result<(), PhysRange> {
        for array in self.region_arrays().into_iter().flatten() {
            if array.start().as_u64() < end && base < array.end().as_u64() {
                return Err(array);
            }
        }
        Ok(())
    }

    fn make_room(
        &mut self,
        kind: ListKind,
        extra: usize,
        pending: (u64, u64),
    ) -> Result<(), RegionError> {
        self.make_room_raw(kind, extra, &[pending])
            .map_err(|cause| RegionError::RegionsFull { list: kind, cause })
    }

    /// Make sure `kind` has `extra` free slots, growing it if needed; `avoid` are ranges the
    /// new array must not take (the pending operation's range, a sibling array being placed).
    #[allow(unsafe_code)]
    pub(crate) fn make_room_raw(
        &mut self,
        kind: ListKind,
        extra: usize,
        avoid: &[(u64, u64)],
    ) -> Result<(), GrowError> {
        let list = self.list(kind);
        let need = list
            .len()
            .checked_add(extra)
            .ok_or(GrowError::CapacityOverflow)?;
        if need <= list.capacity() {
            return Ok(());
        }
        let mapper = self.mapper.ok_or(GrowError::NoMapper)?;
        let mut cap = list.capacity().max(1);
        while cap < need + GROW_SLACK {
            cap = cap.checked_mul(2).ok_or(GrowError::CapacityOverflow)?;
        }
        let bytes = (cap as u64)
            .checked_mul(size_of::<Region>() as u64)
            .and_then(|b| mmkit_addr::align_up(b, PAGE_SIZE))
            .ok_or(GrowError::CapacityOverflow)?;
        let base = self
            .find_top_down_avoiding(bytes, avoid)
            .ok_or(GrowError::NoMemory)?;
        let phys = raw_range(base, base + bytes);
        let ptr = mapper
            .phys_to_virt(phys)
            .ok_or(GrowError::Unmappable(phys))?;
        if kind == ListKind::Memory {
            // Recording the new memory array (and freeing the old one) edits the reserved list:
            // make room there first, keeping clear of the space just chosen. This is the last
            // step that can fail, and it changes nothing when it does.
            let mut avoid_too = [(0, 0); 4];
            let n = avoid.len().min(3);
            avoid_too[..n].copy_from_slice(&avoid[..n]);
            avoid_too[n] = (base, base + bytes);
            self.make_room_raw(ListKind::Reserved, GROW_SLACK, &avoid_too[..=n])?;
        }
        let len = self.list(kind).len();
        // SAFETY: `ptr` maps `phys` for `bytes >= cap * size_of::<Region>()` bytes (the
        // `PhysMapper` contract) and is page-aligned, so aligned for `Region`. `phys` was free
        // memory (memory, not reserved, allocatable), which `set_mapper`'s contract says nobody
        // else uses; it is reserved just below, before anything else can allocate, and
        // `reserve`/`free`/`remove` refuse to touch it afterwards. It cannot overlap the current
        // array, which is either inline or reserved. `len` is the list's length, within both
        // capacities.
        let old = unsafe { self.list_mut(kind).store_mut().move_to(ptr, cap, phys, len) };
        self.reserved
            .add_range(base, base + bytes, RegionFlags::empty(), NodeId::NONE);
        if let Some(old) = old {
            self.reserved
                .remove_range(old.start().as_u64(), old.end().as_u64());
        }
        Ok(())
    }

    /// The highest page-aligned free block of `bytes` below the current limit that overlaps
    /// none of `avoid`.
    fn find_top_down_avoiding(&self, bytes: u64, avoid: &[(u64, u64)]) -> Option<u64> {
        for fr in self.free_ranges_rev(RangeFilter::ALLOCATABLE) {
            if fr.flags.contains(RegionFlags::TXN_NEW) {
                // A transaction may still roll this memory back.
                continue;
            }
            let lo = fr.range.start().as_u64().max(PAGE_SIZE);
            let mut hi = fr.range.end().as_u64().min(self.limit);
            while hi > lo && hi - lo >= bytes {
                let cand = mmkit_addr::align_down(hi - bytes, PAGE_SIZE);
                if cand < lo {
                    break;
                }
                match avoid.iter().find(|&&(s, e)| s < cand + bytes && cand < e) {
                    // Slide below the obstacle and try again inside this free range.
                    Some(&(s, _)) => hi = s,
                    None => return Some(cand),
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use mmkit_addr::host::HostMemory;
    use std::vec::Vec;

    fn pa(x: u64) -> PhysAddr {
        PhysAddr::new(x)
    }

    fn ranges(regions: &[Region]) -> Vec<(u64, u64)> {
        regions
            .iter()
            .map(|r| (r.base().as_u64(), r.end().as_u64()))
            .collect()
    }

    #[test]
    fn new_is_const_and_usable_as_static() {
        static EMPTY: Bootmem<'static> = Bootmem::new();
        assert!(EMPTY.memory_regions().is_empty());
        assert_eq!(EMPTY.capacity(ListKind::Memory), DEFAULT_REGIONS);
        EMPTY.verify().unwrap();
    }

    #[test]
    fn zero_size_and_wrapping_ranges_are_rejected() {
        let mut bm: Bootmem = Bootmem::new();
        assert_eq!(bm.add(pa(0x1000), 0), Err(RegionError::ZeroSize));
        assert_eq!(
            bm.reserve(pa(u64::MAX - 10), 20),
            Err(RegionError::Wraps {
                base: u64::MAX - 10,
                size: 20
            })
        );
        assert_eq!(bm.free(pa(0x1000), 0), Err(FreeError::ZeroSize));
        assert!(bm.memory_regions().is_empty() && bm.reserved_regions().is_empty());
    }

    #[test]
    fn unsorted_overlapping_adds_merge() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x5000), 0x3000).unwrap();
        bm.add(pa(0x1000), 0x2000).unwrap();
        bm.add(pa(0x2000), 0x4000).unwrap();
        bm.verify().unwrap();
        assert_eq!(ranges(bm.memory_regions()), [(0x1000, 0x8000)]);
        assert_eq!(bm.memory_size(), 0x7000);
    }

    #[test]
    fn add_over_existing_memory_keeps_its_node() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add_node(pa(0x4000), 0x1000, NodeId::new(3), RegionFlags::empty())
            .unwrap();
        bm.add(pa(0x0), 0x10000).unwrap();
        assert_eq!(bm.memory_regions()[1].nid(), NodeId::new(3));
        assert_eq!(bm.memory_regions().len(), 3);
        bm.verify().unwrap();
    }

    #[test]
    fn remove_splits_a_region() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x0), 0x10000).unwrap();
        bm.remove(pa(0x4000), 0x1000).unwrap();
        assert_eq!(
            ranges(bm.memory_regions()),
            [(0, 0x4000), (0x5000, 0x10000)]
        );
        bm.verify().unwrap();
    }

    #[test]
    fn free_of_unreserved_bytes_is_refused_as_double_free() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x0), 0x10000).unwrap();
        bm.reserve(pa(0x2000), 0x2000).unwrap();
        bm.free(pa(0x2000), 0x1000).unwrap();
        let before = ranges(bm.reserved_regions());
        assert_eq!(
            bm.free(pa(0x2000), 0x1000),
            Err(FreeError::NotReserved(raw_range(0x2000, 0x3000)))
        );
        assert_eq!(ranges(bm.reserved_regions()), before);
    }

    #[test]
    fn mark_splits_and_clear_merges_back() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0x0), 0x10000).unwrap();
        bm.mark(pa(0x4000), 0x2000, RegionFlags::NOMAP).unwrap();
        assert_eq!(bm.memory_regions().len(), 3);
        assert_eq!(bm.memory_regions()[1].flags(), RegionFlags::NOMAP);
        bm.clear(pa(0x4000), 0x2000, RegionFlags::NOMAP).unwrap();
        assert_eq!(ranges(bm.memory_regions()), [(0, 0x10000)]);
        bm.set_node(pa(0x8000), 0x8000, NodeId::new(1)).unwrap();
        assert_eq!(
            bm.node_span(NodeId::new(1)),
            Some(raw_range(0x8000, 0x10000))
        );
        assert_eq!(bm.node_span(NodeId::ZERO), Some(raw_range(0, 0x8000)));
        assert_eq!(bm.node_span(NodeId::new(2)), None);
        bm.verify().unwrap();
    }

    /// Fill a list with `n` separate regions (every other page).
    fn fragment(
        bm: &mut Bootmem<'_, 4>,
        kind: ListKind,
        base: u64,
        n: u64,
    ) -> Result<(), RegionError> {
        for i in 0..n {
            let at = pa(base + i * 0x2000);
            match kind {
                ListKind::Memory => bm.add(at, 0x1000)?,
                ListKind::Reserved => bm.reserve(at, 0x1000)?,
            }
        }
        Ok(())
    }

    #[test]
    fn full_list_without_mapper_is_an_error_that_changes_nothing() {
        let mut bm: Bootmem<'_, 4> = Bootmem::new();
        fragment(&mut bm, ListKind::Memory, 0x10_0000, 4).unwrap();
        let before = ranges(bm.memory_regions());
        assert_eq!(
            bm.add(pa(0x1000), 0x1000),
            Err(RegionError::RegionsFull {
                list: ListKind::Memory,
                cause: GrowError::NoMapper
            })
        );
        assert_eq!(ranges(bm.memory_regions()), before);
        // An add that merges into an existing region needs no slot and still works.
        bm.add(pa(0x10_1000), 0x1000).unwrap();
        bm.verify().unwrap();
    }

    #[test]
    fn failed_transaction_undoes_its_edits_but_keeps_grown_arrays() {
        let host = HostMemory::new(pa(0), 0x100_0000);
        let mut bm: Bootmem<'_, 4> = Bootmem::new();
        // SAFETY: nothing else uses the host buffer.
        unsafe { bm.set_mapper(&host) };
        bm.add(pa(0x80_0000), 0x80_0000).unwrap();
        bm.mark(pa(0x80_0000), 0x1000, RegionFlags::MIRROR).unwrap();
        bm.reserve(pa(0x90_0000), 0x1000).unwrap();
        let memory = ranges(bm.memory_regions());
        let flags: Vec<_> = bm.memory_regions().iter().map(|r| r.flags()).collect();
        let r: Result<(), ()> = bm.atomically(|bm| {
            // Enough separate ranges to grow both arrays, edits over old and new bytes.
            for i in 0..12 {
                bm.add(pa(0x10_0000 + i * 0x2000), 0x1000).unwrap();
                bm.reserve(pa(0xa0_0000 + i * 0x2000), 0x1000).unwrap();
            }
            bm.mark(
                pa(0x80_0000),
                0x10_0000,
                RegionFlags::NOMAP | RegionFlags::MIRROR,
            )
            .unwrap();
            bm.alloc(0x1000, 0x1000).unwrap();
            Err(())
        });
        assert_eq!(r, Err(()));
        bm.verify().unwrap();
        assert!(bm.capacity(ListKind::Memory) > 4 && bm.capacity(ListKind::Reserved) > 4);
        assert_eq!(ranges(bm.memory_regions()), memory);
        let after: Vec<_> = bm.memory_regions().iter().map(|r| r.flags()).collect();
        assert_eq!(after, flags, "only MIRROR, which was there before, stays");
        // The reserved list holds the old reservation plus the arrays that grew.
        let arrays: u64 = bm.region_arrays().iter().flatten().map(|a| a.len()).sum();
        assert_eq!(bm.reserved_size(), 0x1000 + arrays);
        // A committed transaction leaves no bookkeeping behind: regions merge as usual.
        bm.atomically(|bm| bm.add(pa(0x100_0000 - 0x1000), 0x1000))
            .unwrap();
        assert!(bm
            .memory_regions()
            .iter()
            .all(|r| r.flags().bits() & 0xffff_0000 == 0));
    }

    #[test]
    fn full_lists_grow_into_self_allocated_memory() {
        let host = HostMemory::new(pa(0), 0x100_0000);
        let mut bm: Bootmem<'_, 4> = Bootmem::new();
        // SAFETY: nothing else uses the host buffer.
        unsafe { bm.set_mapper(&host) };
        bm.add(pa(0x80_0000), 0x80_0000).unwrap();
        fragment(&mut bm, ListKind::Memory, 0x10_0000, 40).unwrap();
        fragment(&mut bm, ListKind::Reserved, 0x80_0000, 40).unwrap();
        bm.verify().unwrap();
        assert!(bm.capacity(ListKind::Memory) >= 41);
        assert!(bm.capacity(ListKind::Reserved) >= 42);
        let [mem_array, res_array] = bm.region_arrays();
        let (mem_array, res_array) = (mem_array.unwrap(), res_array.unwrap());
        assert!(bm.is_reserved(mem_array) && bm.is_reserved(res_array));
        // Old arrays were freed: only the two live arrays and our 40 reservations remain.
        let reserved_bytes = 40 * 0x1000 + mem_array.len() + res_array.len();
        assert_eq!(bm.reserved_size(), reserved_bytes);
        // The arrays cannot be freed, reserved over, or removed from memory.
        assert_eq!(
            bm.free(mem_array.start(), 0x1000),
            Err(FreeError::OverlapsRegionArray(mem_array))
        );
        assert_eq!(
            bm.reserve(res_array.start(), 1),
            Err(RegionError::OverlapsRegionArray(res_array))
        );
        assert_eq!(
            bm.remove(res_array.start(), 1),
            Err(RegionError::OverlapsRegionArray(res_array))
        );
        // Moving the value keeps the lists intact.
        let moved = bm;
        moved.verify().unwrap();
        assert_eq!(moved.memory_regions().len(), 41);
    }

    #[test]
    fn growth_without_free_memory_fails_cleanly() {
        let host = HostMemory::new(pa(0), 0x10_0000);
        let mut bm: Bootmem<'_, 4> = Bootmem::new();
        // SAFETY: nothing else uses the host buffer.
        unsafe { bm.set_mapper(&host) };
        fragment(&mut bm, ListKind::Memory, 0x1000, 4).unwrap();
        bm.reserve(pa(0), 0x10_0000).unwrap();
        let before = ranges(bm.memory_regions());
        assert_eq!(
            bm.add(pa(0x20_0000), 0x1000),
            Err(RegionError::RegionsFull {
                list: ListKind::Memory,
                cause: GrowError::NoMemory
            })
        );
        assert_eq!(ranges(bm.memory_regions()), before);
        bm.verify().unwrap();
    }

    #[test]
    fn growth_into_unmappable_memory_fails_cleanly() {
        let host = HostMemory::new(pa(0x100_0000), 0x10_0000);
        let mut bm: Bootmem<'_, 4> = Bootmem::new();
        // SAFETY: the mapper maps only its own buffer; bootmem asks before it writes.
        unsafe { bm.set_mapper(&host) };
        fragment(&mut bm, ListKind::Memory, 0x1000, 4).unwrap();
        assert!(matches!(
            bm.add(pa(0x20_0000), 0x1000),
            Err(RegionError::RegionsFull {
                list: ListKind::Memory,
                cause: GrowError::Unmappable(_)
            })
        ));
        assert_eq!(bm.memory_regions().len(), 4);
    }

    /// One edit inside a transaction, in pages of a 16 MiB space.
    #[derive(Debug, Clone)]
    enum TxnOp {
        Add(u64, u64, u8),
        Reserve(u64, u64),
        Mark(u64, u64, u8),
        Alloc(u64, u32),
    }

    fn txn_op() -> impl proptest::strategy::Strategy<Value = TxnOp> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..4096, 1u64..64, 0u8..8).prop_map(|(p, n, f)| TxnOp::Add(p, n, f)),
            (0u64..4096, 1u64..64).prop_map(|(p, n)| TxnOp::Reserve(p, n)),
            (0u64..4096, 1u64..64, 0u8..16).prop_map(|(p, n, f)| TxnOp::Mark(p, n, f)),
            (1u64..32, 0u32..4).prop_map(|(n, a)| TxnOp::Alloc(n, a)),
        ]
    }

    fn run_txn_op<const N: usize>(bm: &mut Bootmem<'_, N>, op: &TxnOp) {
        let flags = |f: u8| RegionFlags::from_bits_truncate(u32::from(f));
        // Errors (lists full, no fit) are part of the test: they must not leak either.
        let _ = match *op {
            TxnOp::Add(p, n, f) => bm
                .add_node(
                    pa(p << 12),
                    n << 12,
                    NodeId::new(u16::from(f % 2)),
                    flags(f / 2),
                )
                .map_err(drop),
            TxnOp::Reserve(p, n) => bm.reserve(pa(p << 12), n << 12).map_err(drop),
            TxnOp::Mark(p, n, f) => bm.mark(pa(p << 12), n << 12, flags(f)).map_err(drop),
            TxnOp::Alloc(n, a) => bm.alloc(n << 12, 0x1000 << a).map(drop).map_err(drop),
        };
    }

    /// The bytes `regions` cover, minus `skip`, page by page (with node and flags).
    fn pages(regions: &[Region], skip: &[PhysRange]) -> Vec<(u64, u16, u32)> {
        regions
            .iter()
            .flat_map(|r| {
                (r.base().as_u64()..r.end().as_u64())
                    .step_by(0x1000)
                    .map(move |p| (p, r.nid().get(), r.flags().bits()))
            })
            .filter(|&(p, _, _)| !skip.iter().any(|a| a.contains(pa(p))))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// A failed transaction leaves both lists as they were (apart from region arrays that
        /// grew), whatever it did; a committed one leaves no bookkeeping bits behind.
        #[test]
        fn transaction_rollback_restores_every_region(
            setup in proptest::collection::vec(txn_op(), 0..24),
            edits in proptest::collection::vec(txn_op(), 0..48),
            commit in proptest::prelude::any::<bool>(),
        ) {
            let host = HostMemory::new(pa(0), 0x100_0000);
            let mut bm: Bootmem<'_, 4> = Bootmem::new();
            // SAFETY: nothing else uses the host buffer.
            unsafe { bm.set_mapper(&host) };
            bm.add(pa(0x80_0000), 0x80_0000).unwrap();
            for op in &setup {
                run_txn_op(&mut bm, op);
            }
            let arrays_before: Vec<_> = bm.region_arrays().into_iter().flatten().collect();
            let memory = pages(bm.memory_regions(), &[]);
            let reserved = bm.reserved_regions().to_vec();
            let r = bm.atomically(|bm| {
                for op in &edits {
                    run_txn_op(bm, op);
                }
                if commit { Ok(()) } else { Err(()) }
            });
            bm.verify().unwrap();
            for r in bm.memory_regions().iter().chain(bm.reserved_regions()) {
                proptest::prop_assert_eq!(r.flags().bits() & 0xffff_0000, 0);
            }
            if r.is_err() {
                proptest::prop_assert_eq!(pages(bm.memory_regions(), &[]), memory);
                let mut arrays: Vec<_> = bm.region_arrays().into_iter().flatten().collect();
                arrays.extend(arrays_before);
                // Reservations other than the region arrays (old or new) are as they were.
                proptest::prop_assert_eq!(
                    pages(bm.reserved_regions(), &arrays),
                    pages(&reserved, &arrays)
                );
            }
        }
    }
}
