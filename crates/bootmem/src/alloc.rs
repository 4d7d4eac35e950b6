//! Early allocation: find free memory under constraints, then reserve it.
//!
//! Follows memblock's `memblock_alloc_range_nid` / `memblock_find_in_range_node`:
//! * the window is `[max(min, PAGE_SIZE), min(max, current limit))` — physical page 0 is
//!   never handed out, whatever the caller asks;
//! * free ranges are scanned top-down (highest fit first) by default, bottom-up (lowest fit
//!   first) after [`Bootmem::set_bottom_up`]; an allocation lies inside one free range, so it
//!   never spans two memory regions;
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
                .skip_while(|fr| fr.range.end().as_u64() <= lo)
                .take_while(|fr| fr.range.start().as_u64() < hi)
                .find_map(|fr| fits(fr.range.start().as_u64(), fr.range.end().as_u64()))
        } else {
            self.free_ranges_rev(filter)
                .skip_while(|fr| fr.range.start().as_u64() >= hi)
                .take_while(|fr| fr.range.end().as_u64() > lo)
                .find_map(|fr| fits(fr.range.start().as_u64(), fr.range.end().as_u64()))
        }
    }
}
