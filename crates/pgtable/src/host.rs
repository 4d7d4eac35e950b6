//! Host scaffolding: a table-frame arena over [`HostMemory`] that catches misuse.
//!
//! [`TableArena`] stands in for a stretch of physical memory and hands out table frames of
//! one size (the granule). It zeroes frames on allocation (except frames given back through
//! [`FrameSource::free_zeroed_table`], which it checks to be all zeroes when they come back),
//! panics on a double free or a free of a frame it never gave out (test scaffolding: the trait
//! method is `unsafe` and such a call is a bug in the page-table layer), can be limited to simulate running out of memory, and
//! reports outstanding frames so tests can assert that nothing leaked.
//! [`ArenaRef`] is the cheap `Copy` handle a [`PageTable`](crate::PageTable) holds as both its
//! [`PhysMapper`] and its [`FrameSource`].

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use mmkit_addr::host::HostMemory;
use mmkit_addr::{LinearWindow, PageSize, PhysAddr, PhysMapper, PhysRange};

use crate::frame::{FrameSource, TableRefs};
use crate::raw;

struct ArenaState {
    allocated: Vec<bool>,
    /// Frames known to be all zeroes (given back through `free_zeroed_table`, checked then):
    /// allocation hands them out without clearing them again.
    zeroed: Vec<bool>,
    zeroed_frees: usize,
    /// Trees holding each frame beyond the first (share counts, `TableRefs`).
    extra_refs: Vec<u32>,
    /// Whether handles report share counts (`FrameSource::table_refs`).
    sharing: bool,
    free: Vec<usize>,
    outstanding: usize,
    limit: usize,
    allocs: usize,
    frees: usize,
}

/// Host memory handing out zeroed table frames of one size.
pub struct TableArena {
    mem: HostMemory,
    frame: PageSize,
    state: Mutex<ArenaState>,
    /// Whether handles report the buffer as a [`LinearWindow`] (tests run the page-table
    /// code both through the window fast path and through `phys_to_virt` calls).
    window: AtomicBool,
}

impl TableArena {
    /// An arena of `frames` frames of `frame` bytes, standing for physical memory at `base`
    /// (which must be aligned to `frame`).
    pub fn new(base: PhysAddr, frame: PageSize, frames: usize) -> Self {
        assert!(
            base.is_aligned(frame.bytes()),
            "arena base must be frame-aligned"
        );
        let mem = HostMemory::new(base, frame.bytes() * frames as u64);
        // HostMemory aligns its buffer to 4 KiB only; frames are addressed physically, so
        // alignment of the host buffer does not matter beyond the entry size.
        Self {
            mem,
            frame,
            state: Mutex::new(ArenaState {
                allocated: std::vec![false; frames],
                zeroed: std::vec![false; frames],
                zeroed_frees: 0,
                extra_refs: std::vec![0; frames],
                sharing: true,
                free: (0..frames).rev().collect(),
                outstanding: 0,
                limit: usize::MAX,
                allocs: 0,
                frees: 0,
            }),
            window: AtomicBool::new(true),
        }
    }

    /// Whether handles report the whole buffer as a linear window (the default) or make
    /// every access go through [`PhysMapper::phys_to_virt`]. Either is a correct mapper, so
    /// this may change at any time; a [`PageTable`](crate::PageTable) takes the window once,
    /// when it is created, so this picks the path of tables created afterwards.
    pub fn set_linear_window(&self, on: bool) {
        self.window.store(on, Ordering::Relaxed);
    }

    /// A handle to use as a page table's mapper and frame source.
    pub fn handle(&self) -> ArenaRef<'_> {
        ArenaRef(self)
    }

    /// The frame size.
    pub fn frame_size(&self) -> PageSize {
        self.frame
    }

    /// Frames allocated and not freed.
    pub fn outstanding(&self) -> usize {
        self.lock().outstanding
    }

    /// Total allocations and frees so far.
    pub fn counters(&self) -> (usize, usize) {
        let s = self.lock();
        (s.allocs, s.frees)
    }

    /// Frames given back as zeroed ([`FrameSource::free_zeroed_table`]), each checked to be
    /// all zeroes, so far.
    pub fn zeroed_frees(&self) -> usize {
        self.lock().zeroed_frees
    }

    /// Whether handles keep share counts ([`FrameSource::table_refs`]; the default), so
    /// fork-style copies between tables of this arena share read-only leaf tables, or not
    /// (copies clone every table).
    pub fn set_sharing(&self, on: bool) {
        self.lock().sharing = on;
    }

    /// Frames currently held by more than one tree.
    pub fn shared_frames(&self) -> usize {
        self.lock().extra_refs.iter().filter(|&&n| n > 0).count()
    }

    /// Allow at most `limit` outstanding frames (to simulate running out).
    pub fn set_limit(&self, limit: usize) {
        self.lock().limit = limit;
    }

    /// The memory, for mappers and software MMUs.
    pub fn memory(&self) -> &HostMemory {
        &self.mem
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArenaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index_of(&self, pa: PhysAddr) -> Option<usize> {
        let off = pa.offset_from(self.mem.range().start())?;
        if off % self.frame.bytes() != 0 {
            return None;
        }
        let i = (off / self.frame.bytes()) as usize;
        (i < self.lock().allocated.len()).then_some(i)
    }

    fn alloc(&self, size: PageSize) -> Option<PhysAddr> {
        assert_eq!(size, self.frame, "arena serves one frame size");
        let (i, zeroed) = {
            let mut s = self.lock();
            if s.outstanding >= s.limit {
                return None;
            }
            let i = s.free.pop()?;
            s.allocated[i] = true;
            s.outstanding += 1;
            s.allocs += 1;
            (i, core::mem::replace(&mut s.zeroed[i], false))
        };
        let pa = PhysAddr::new(self.mem.range().start().as_u64() + i as u64 * self.frame.bytes());
        let t = raw::table_at(&self.mem, pa, self.frame.bytes()).expect("arena frame reachable");
        if !zeroed {
            raw::zero(t);
        }
        Some(pa)
    }

    fn free_zeroed(&self, pa: PhysAddr, size: PageSize) {
        let t = raw::table_at(&self.mem, pa, size.bytes());
        if let Some(k) = t.and_then(|t| t.iter().position(|e| raw::load_entry(e) != 0)) {
            panic!("table frame {pa:?} freed as zeroed has a non-zero entry {k}");
        }
        self.free(pa, size);
        let i = self.index_of(pa).expect("checked by free");
        let mut s = self.lock();
        s.zeroed[i] = true;
        s.zeroed_frees += 1;
    }

    fn free(&self, pa: PhysAddr, size: PageSize) {
        assert_eq!(size, self.frame, "freed with a different size");
        let i = match self.index_of(pa) {
            Some(i) => i,
            None => panic!("free of {pa:?}, which this arena never handed out"),
        };
        let mut s = self.lock();
        assert!(s.allocated[i], "double free of table frame {pa:?}");
        assert_eq!(
            s.extra_refs[i], 0,
            "free of table frame {pa:?}, which other trees still share"
        );
        s.allocated[i] = false;
        s.free.push(i);
        s.outstanding -= 1;
        s.frees += 1;
    }
}

/// A `Copy` handle on a [`TableArena`]: mapper and frame source in one.
#[derive(Clone, Copy)]
pub struct ArenaRef<'a>(&'a TableArena);

impl ArenaRef<'_> {
    /// The arena.
    pub fn arena(&self) -> &TableArena {
        self.0
    }
}

// SAFETY: delegates to `HostMemory`, which keeps the mapping promise for its whole buffer for
// as long as it lives; the arena (and so the memory) outlives the handle. The window is the
// buffer: for a non-empty range inside `[base, base + len)`, `HostMemory::phys_to_virt`
// returns `ptr + (start - base)`, which is `start + (ptr - base)` (wrapping).
unsafe impl PhysMapper for ArenaRef<'_> {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        self.0.mem.phys_to_virt(range)
    }

    fn linear_window(&self) -> Option<LinearWindow> {
        if !self.0.window.load(Ordering::Relaxed) {
            return None;
        }
        let r = self.0.mem.range();
        let host = self.0.mem.ptr_of(r.start())?.as_ptr() as u64;
        Some(LinearWindow {
            start: r.start().as_u64(),
            end: r.end().as_u64(),
            offset: host.wrapping_sub(r.start().as_u64()),
        })
    }
}

// SAFETY: frames come from the arena's free list (so they are exclusively the caller's until
// freed), are `frame`-sized and -aligned physically (the base is aligned and frames are
// consecutive), and are zeroed just before being returned unless they came back through
// `free_zeroed_table`, which checked that every entry was zero (and nothing wrote them since:
// they were free).
unsafe impl FrameSource for ArenaRef<'_> {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        self.0.alloc(size)
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, size: PageSize) {
        self.0.free(frame, size)
    }

    /// Checks that the frame is all zeroes (panics otherwise, as for a double free), then
    /// keeps it aside so the next allocation of it skips the clearing.
    unsafe fn free_zeroed_table(&mut self, frame: PhysAddr, size: PageSize) {
        self.0.free_zeroed(frame, size)
    }

    fn table_refs(&self) -> Option<&dyn TableRefs> {
        self.0.lock().sharing.then_some(self as &dyn TableRefs)
    }
}

// SAFETY: every handle of one arena reports the arena's address as its domain and keeps the
// counts in the arena, which frees its frames through any handle; `put` returns `true` only
// when no extra reference is left, once per allocation (a later `free` checks the count).
unsafe impl TableRefs for ArenaRef<'_> {
    fn domain(&self) -> u64 {
        self.0 as *const TableArena as u64
    }

    fn count(&self, frame: PhysAddr) -> u32 {
        let i = self.0.index_of(frame).expect("a frame of this arena");
        let s = self.0.lock();
        assert!(s.allocated[i], "share count of free frame {frame:?}");
        s.extra_refs[i] + 1
    }

    fn get(&self, frame: PhysAddr) {
        let i = self.0.index_of(frame).expect("a frame of this arena");
        let mut s = self.0.lock();
        assert!(s.allocated[i], "sharing free frame {frame:?}");
        s.extra_refs[i] += 1;
    }

    fn put(&self, frame: PhysAddr) -> bool {
        let i = self.0.index_of(frame).expect("a frame of this arena");
        let mut s = self.0.lock();
        assert!(
            s.allocated[i],
            "dropping a reference to free frame {frame:?}"
        );
        if s.extra_refs[i] == 0 {
            return true;
        }
        s.extra_refs[i] -= 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_zeroes_counts_and_limits() {
        let a = TableArena::new(PhysAddr::new(0x10_0000), PageSize::Size4K, 4);
        let mut h = a.handle();
        let f = h.alloc_table(PageSize::Size4K).unwrap();
        assert_eq!(a.outstanding(), 1);
        a.set_limit(1);
        assert!(h.alloc_table(PageSize::Size4K).is_none());
        // SAFETY: `f` came from this arena and is unused.
        unsafe { h.free_table(f, PageSize::Size4K) };
        assert_eq!(a.outstanding(), 0);
        assert_eq!(a.counters(), (1, 1));
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn arena_catches_double_free() {
        let a = TableArena::new(PhysAddr::new(0x10_0000), PageSize::Size4K, 2);
        let mut h = a.handle();
        let f = h.alloc_table(PageSize::Size4K).unwrap();
        // SAFETY: deliberately wrong, to show the arena catches it; the frame is not used.
        unsafe {
            h.free_table(f, PageSize::Size4K);
            h.free_table(f, PageSize::Size4K);
        }
    }
}
