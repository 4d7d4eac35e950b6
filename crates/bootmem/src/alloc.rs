//! Early allocation: find free memory under constraints, then reserve it.
//!
//! Follows memblock's `memblock_alloc_range_nid` / `memblock_find_in_range_node`:
//! * the window is `[max(min, PAGE_SIZE), min(max, current limit))` — physical page 0 is
//!   never handed out, whatever the caller asks;
//! * free ranges are scanned top-down (highest fit first) by default, bottom-up (lowest fit
//!   first) after [`Bootmem::set_bottom_up`]; the walk starts at the window's edge (binary
//!   search), and an allocation lies inside one free range, so it never spans two memory
//!   regions;
//! * no-map and driver-managed memory is never used;
//! * the passes in [`PASSES`] relax the preferences one at a time: node first, then hotplug
//!   avoidance (only under [`HotplugPolicy::PreferOthers`]), then mirror;
//! * a found range is reserved before it is returned; freeing it is `free(addr, size)`.

use mmkit_addr::{align_down, align_up, is_power_of_two, PhysAddr, PAGE_SIZE};

use crate::bootmem::{raw_range, Bootmem, HotplugPolicy};
use crate::error::AllocError;
use crate::iter::RangeFilter;
use crate::region::{NodeId, RegionFlags};

/// What to allocate: size, alignment, window and node preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocRequest {
    size: u64,
    align: u64,
    min: u64,
    max: u64,
    node: Option<NodeId>,
    exact_node: bool,
}

impl AllocRequest {
    /// `size` bytes aligned to `align` (a power of two), anywhere below the current limit, on
    /// any node.
    pub const fn new(size: u64, align: u64) -> Self {
        Self {
            size,
            align,
            min: 0,
            max: u64::MAX,
            node: None,
            exact_node: false,
        }
    }

    /// Only at or above `min`.
    #[must_use]
    pub const fn above(mut self, min: PhysAddr) -> Self {
        self.min = min.as_u64();
        self
    }

    /// Only below `max` (exclusive; clipped to the current limit).
    #[must_use]
    pub const fn below(mut self, max: PhysAddr) -> Self {
        self.max = max.as_u64();
        self
    }

    /// Prefer node `nid`, falling back to any node (memblock's `memblock_alloc_try_nid`).
    #[must_use]
    pub const fn prefer_node(mut self, nid: NodeId) -> Self {
        self.node = Some(nid);
        self.exact_node = false;
        self
    }

    /// Only node `nid` (memblock's `memblock_alloc_exact_nid_raw`).
    #[must_use]
    pub const fn exact_node(mut self, nid: NodeId) -> Self {
        self.node = Some(nid);
        self.exact_node = true;
        self
    }

    /// The requested size.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The requested alignment.
    pub const fn align(&self) -> u64 {
        self.align
    }
}

/// One search pass: which memory it may use.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// Use the preferred node only (`false`: any node).
    preferred_node: bool,
    /// Use hotpluggable memory.
    hotplug: bool,
    /// Use mirrored memory only.
    mirror_only: bool,
}

/// The search passes in order, most preferred first (after `memblock_alloc_range_nid`, which
/// retries on any node, then without the mirror requirement). Passes that a request or the
/// bootmem's policy does not call for are skipped.
const PASSES: [Pass; 8] = {
    let mut passes = [Pass {
        preferred_node: true,
        hotplug: false,
        mirror_only: true,
    }; 8];
    let mut i = 0;
    while i < 8 {
        passes[i] = Pass {
            mirror_only: i < 4,
            hotplug: i % 4 >= 2,
            preferred_node: i % 2 == 0,
        };
        i += 1;
    }
    passes
};

impl<const N: usize> Bootmem<'_, N> {
    /// Allocate `size` bytes aligned to `align` anywhere below the current limit
    /// (memblock's `memblock_phys_alloc`). The memory is reserved and not zeroed.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<PhysAddr, AllocError> {
        self.alloc_request(&AllocRequest::new(size, align))
    }

    /// Allocate per `req` (memblock's `memblock_phys_alloc_range` / `_try_nid`). The memory is
    /// reserved and not zeroed.
    pub fn alloc_request(&mut self, req: &AllocRequest) -> Result<PhysAddr, AllocError> {
        let base = self.find_raw(req)?;
        self.reserve_raw(base, base + req.size)
            .map_err(AllocError::RegionsFull)?;
        Ok(PhysAddr::new(base))
    }

    /// Allocate per `req` and zero the memory through the mapper (memblock's `memblock_alloc`).
    #[allow(unsafe_code)]
    pub fn alloc_zeroed(&mut self, req: &AllocRequest) -> Result<PhysAddr, AllocError> {
        let base = self.find_raw(req)?;
        let mapper = self.mapper.ok_or(AllocError::NoMapper)?;
        let range = raw_range(base, base + req.size);
        let len = usize::try_from(req.size).map_err(|_| AllocError::Unmappable(range))?;
        let ptr = mapper
            .phys_to_virt(range)
            .ok_or(AllocError::Unmappable(range))?;
        self.reserve_raw(base, base + req.size)
            .map_err(AllocError::RegionsFull)?;
        // SAFETY: `ptr` is valid for `req.size` bytes of writes (the `PhysMapper` contract).
        // The range was free, so by `set_mapper`'s contract nothing else uses it, and it is now
        // reserved: this allocation owns it.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(PhysAddr::new(base))
    }

    /// Where [`alloc_request`](Self::alloc_request) would allocate, without reserving
    /// (memblock's `memblock_find_in_range_node`).
    pub fn find(&self, req: &AllocRequest) -> Result<PhysAddr, AllocError> {
        self.find_raw(req).map(PhysAddr::new)
    }

    fn find_raw(&self, req: &AllocRequest) -> Result<u64, AllocError> {
        if req.size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !is_power_of_two(req.align) {
            return Err(AllocError::BadAlignment(req.align));
        }
        let lo = req.min.max(PAGE_SIZE);
        let hi = req.max.min(self.limit);
        if hi <= lo || hi - lo < req.size {
            return Err(AllocError::ImpossibleWindow { min: lo, max: hi });
        }
        for pass in PASSES {
            if !self.pass_applies(&pass, req) {
                continue;
            }
            let filter = RangeFilter {
                node: if pass.preferred_node { req.node } else { None },
                require: if pass.mirror_only {
                    RegionFlags::MIRROR
                } else {
                    RegionFlags::empty()
                },
                exclude: if pass.hotplug {
                    RegionFlags::NOT_ALLOCATABLE
                } else {
                    RegionFlags::NOT_ALLOCATABLE | RegionFlags::HOTPLUG
                },
            };
            if let Some(base) = self.find_in(req, lo, hi, filter) {
                return Ok(base);
            }
        }
        Err(AllocError::NoFit {
            size: req.size,
            align: req.align,
        })
    }

    fn pass_applies(&self, pass: &Pass, req: &AllocRequest) -> bool {
        let node_ok = match req.node {
            // "Any node" passes only if the caller allows falling back; with no preference
            // the preferred-node pass already is the any-node pass.
            Some(_) => pass.preferred_node || !req.exact_node,
            None => pass.preferred_node,
        };
        let hotplug_ok = match self.hotplug {
            HotplugPolicy::Allow => pass.hotplug,
            HotplugPolicy::PreferOthers => true,
            HotplugPolicy::Avoid => !pass.hotplug,
        };
        let mirror_ok = self.mirror_first || !pass.mirror_only;
        node_ok && hotplug_ok && mirror_ok
    }

    fn find_in(&self, req: &AllocRequest, lo: u64, hi: u64, filter: RangeFilter) -> Option<u64> {
        let fits = |start: u64, end: u64| -> Option<u64> {
            let (s, e) = (start.max(lo), end.min(hi));
            if e <= s || e - s < req.size {
                return None;
            }
            if self.bottom_up {
                align_up(s, req.align).filter(|&c| c <= e - req.size)
            } else {
                Some(align_down(e - req.size, req.align)).filter(|&c| c >= s)
            }
        };
        if self.bottom_up {
            self.free_ranges(filter)
                .above_addr(lo)
                .take_while(|fr| fr.range.start().as_u64() < hi)
                .find_map(|fr| fits(fr.range.start().as_u64(), fr.range.end().as_u64()))
        } else {
            self.free_ranges_rev(filter)
                .below_addr(hi)
                .take_while(|fr| fr.range.end().as_u64() > lo)
                .find_map(|fr| fits(fr.range.start().as_u64(), fr.range.end().as_u64()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FreeError, RegionFlags};
    use mmkit_addr::host::HostMemory;

    const MIB: u64 = 1 << 20;

    fn pa(x: u64) -> PhysAddr {
        PhysAddr::new(x)
    }

    fn two_nodes() -> Bootmem<'static> {
        let mut bm: Bootmem = Bootmem::new();
        bm.add_node(pa(0), 16 * MIB, NodeId::ZERO, RegionFlags::empty())
            .unwrap();
        bm.add_node(pa(16 * MIB), 16 * MIB, NodeId::new(1), RegionFlags::empty())
            .unwrap();
        bm
    }

    #[test]
    fn alloc_is_top_down_by_default_and_bottom_up_on_request() {
        let mut bm = two_nodes();
        assert_eq!(bm.alloc(0x1000, 0x1000), Ok(pa(32 * MIB - 0x1000)));
        bm.set_bottom_up(true);
        assert_eq!(bm.alloc(0x1000, 0x1000), Ok(pa(0x1000)));
        bm.verify().unwrap();
    }

    #[test]
    fn alloc_never_returns_page_zero() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(pa(0), 0x2000).unwrap();
        bm.set_bottom_up(true);
        assert_eq!(bm.alloc(0x1000, 0x1000), Ok(pa(0x1000)));
        assert_eq!(
            bm.alloc(0x1000, 0x1000),
            Err(AllocError::NoFit {
                size: 0x1000,
                align: 0x1000
            })
        );
        // Asking for the first page explicitly is an impossible window, not page 0.
        assert!(matches!(
            bm.alloc_request(&AllocRequest::new(0x1000, 0x1000).below(pa(0x1000))),
            Err(AllocError::ImpossibleWindow { .. })
        ));
    }

    #[test]
    fn alloc_respects_alignment_and_window() {
        let mut bm = two_nodes();
        let req = AllocRequest::new(0x3000, 2 * MIB)
            .above(pa(3 * MIB))
            .below(pa(9 * MIB));
        // Top-down: the highest 2 MiB boundary with 12 KiB below 9 MiB.
        let got = bm.alloc_request(&req).unwrap();
        assert_eq!(got, pa(8 * MIB));
        assert!(bm.is_reserved(raw_range(8 * MIB, 8 * MIB + 0x3000)));
        bm.set_bottom_up(true);
        assert_eq!(bm.alloc_request(&req), Ok(pa(4 * MIB)));
    }

    #[test]
    fn alloc_prefers_node_then_falls_back_unless_exact() {
        let mut bm = two_nodes();
        let on0 = bm
            .alloc_request(&AllocRequest::new(MIB, MIB).prefer_node(NodeId::ZERO))
            .unwrap();
        assert_eq!(on0, pa(15 * MIB));
        // Node 1 is full: a preferring request falls back to node 0, an exact one fails.
        bm.reserve(pa(16 * MIB), 16 * MIB).unwrap();
        let fallback = AllocRequest::new(MIB, MIB).prefer_node(NodeId::new(1));
        assert_eq!(bm.alloc_request(&fallback), Ok(pa(14 * MIB)));
        let exact = AllocRequest::new(MIB, MIB).exact_node(NodeId::new(1));
        let before = bm.reserved_size();
        assert_eq!(
            bm.alloc_request(&exact),
            Err(AllocError::NoFit {
                size: MIB,
                align: MIB
            })
        );
        assert_eq!(bm.reserved_size(), before);
    }

    #[test]
    fn alloc_skips_nomap_and_driver_managed_memory() {
        let mut bm = two_nodes();
        bm.mark(pa(16 * MIB), 16 * MIB, RegionFlags::NOMAP).unwrap();
        bm.mark(pa(8 * MIB), 8 * MIB, RegionFlags::DRIVER_MANAGED)
            .unwrap();
        assert_eq!(bm.alloc(MIB, MIB), Ok(pa(7 * MIB)));
    }

    #[test]
    fn hotplug_policy_controls_hotpluggable_memory() {
        let mut bm = two_nodes();
        bm.mark(pa(16 * MIB), 16 * MIB, RegionFlags::HOTPLUG)
            .unwrap();
        assert_eq!(bm.find(&AllocRequest::new(MIB, MIB)), Ok(pa(31 * MIB)));
        bm.set_hotplug_policy(HotplugPolicy::PreferOthers);
        assert_eq!(bm.find(&AllocRequest::new(MIB, MIB)), Ok(pa(15 * MIB)));
        bm.reserve(pa(MIB), 15 * MIB).unwrap();
        // Nothing else fits: PreferOthers falls back, Avoid refuses.
        assert_eq!(bm.find(&AllocRequest::new(MIB, MIB)), Ok(pa(31 * MIB)));
        bm.set_hotplug_policy(HotplugPolicy::Avoid);
        assert!(matches!(
            bm.find(&AllocRequest::new(MIB, MIB)),
            Err(AllocError::NoFit { .. })
        ));
    }

    #[test]
    fn mirror_first_prefers_mirrored_memory_then_falls_back() {
        let mut bm = two_nodes();
        bm.mark(pa(4 * MIB), 2 * MIB, RegionFlags::MIRROR).unwrap();
        bm.set_mirror_first(true);
        assert_eq!(bm.alloc(MIB, MIB), Ok(pa(5 * MIB)));
        assert_eq!(bm.alloc(MIB, MIB), Ok(pa(4 * MIB)));
        assert_eq!(bm.alloc(MIB, MIB), Ok(pa(31 * MIB)));
    }

    #[test]
    fn current_limit_caps_allocations() {
        let mut bm = two_nodes();
        bm.set_current_limit(pa(8 * MIB));
        assert_eq!(bm.alloc(MIB, MIB), Ok(pa(7 * MIB)));
        assert!(matches!(
            bm.alloc_request(&AllocRequest::new(MIB, MIB).above(pa(8 * MIB))),
            Err(AllocError::ImpossibleWindow { .. })
        ));
    }

    #[test]
    fn bad_requests_are_rejected_without_change() {
        let mut bm = two_nodes();
        assert_eq!(bm.alloc(0, 0x1000), Err(AllocError::ZeroSize));
        assert_eq!(bm.alloc(0x1000, 3), Err(AllocError::BadAlignment(3)));
        assert_eq!(bm.alloc(0x1000, 0), Err(AllocError::BadAlignment(0)));
        assert!(matches!(
            bm.alloc(64 * MIB, 0x1000),
            Err(AllocError::NoFit { .. })
        ));
        assert!(bm.reserved_regions().is_empty());
    }

    #[test]
    fn allocation_is_freed_by_range_and_double_free_is_caught() {
        let mut bm = two_nodes();
        let a = bm.alloc(0x3000, 0x1000).unwrap();
        bm.free(a, 0x3000).unwrap();
        assert!(bm.reserved_regions().is_empty());
        assert!(matches!(bm.free(a, 0x3000), Err(FreeError::NotReserved(_))));
    }

    #[test]
    fn alloc_zeroed_clears_memory_through_the_mapper() {
        let host = HostMemory::new(pa(0), 4 * MIB);
        let mut bm: Bootmem<'_> = Bootmem::new();
        bm.add(pa(0), 4 * MIB).unwrap();
        assert_eq!(
            bm.alloc_zeroed(&AllocRequest::new(0x1000, 0x1000)),
            Err(AllocError::NoMapper)
        );
        // SAFETY: nothing else uses the host buffer.
        unsafe { bm.set_mapper(&host) };
        let dirty = host.ptr_of(pa(4 * MIB - 0x2000)).unwrap();
        // SAFETY: inside the host buffer, which only this test touches.
        unsafe { dirty.as_ptr().write_bytes(0xee, 0x2000) };
        let got = bm.alloc_zeroed(&AllocRequest::new(0x2000, 0x1000)).unwrap();
        assert_eq!(got, pa(4 * MIB - 0x2000));
        // SAFETY: the allocation is ours and inside the buffer.
        let bytes = unsafe { core::slice::from_raw_parts(dirty.as_ptr(), 0x2000) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn alloc_zeroed_outside_the_mapper_fails_without_reserving() {
        let host = HostMemory::new(pa(0), MIB);
        let mut bm: Bootmem<'_> = Bootmem::new();
        bm.add(pa(0), 4 * MIB).unwrap();
        // SAFETY: the mapper maps only its buffer; bootmem checks before writing.
        unsafe { bm.set_mapper(&host) };
        assert!(matches!(
            bm.alloc_zeroed(&AllocRequest::new(0x1000, 0x1000)),
            Err(AllocError::Unmappable(_))
        ));
        assert!(bm.reserved_regions().is_empty());
    }

    #[test]
    fn passes_table_orders_mirror_then_hotplug_then_node() {
        let order: [(bool, bool, bool); 8] = core::array::from_fn(|i| {
            let p = PASSES[i];
            (p.mirror_only, p.hotplug, p.preferred_node)
        });
        assert_eq!(
            order,
            [
                (true, false, true),
                (true, false, false),
                (true, true, true),
                (true, true, false),
                (false, false, true),
                (false, false, false),
                (false, true, true),
                (false, true, false),
            ]
        );
    }
}
