//! Page-table frames for mmkit-pgtable before any page allocator exists.
//!
//! The kernels build their page tables after bootmem's hand-off, from memory bootmem kept for
//! them ([`crate::bootmem_checks::Outcome::kept`]). [`PoolFrames`] hands out that memory one
//! 4 KiB frame at a time (bump allocation, plus a small stack of returned frames, zeroed again
//! before reuse), and [`WindowMapper`] lets the page-table code reach exactly those frames —
//! no more — at a fixed offset. Both stay valid across the switch to the new tables as long
//! as the pool is mapped at the same place in the old and the new tables (the kernels keep
//! it identity-mapped).
//!
//! Invariants: `next` only grows, from the pool's start to its end; every frame below `next`
//! is either handed out or on the free stack; frames on the free stack are zeroed when taken.

use core::ptr::NonNull;

use mmkit_addr::{PageSize, PhysAddr, PhysMapper, PhysRange, PAGE_SIZE};
use mmkit_pgtable::FrameSource;

use crate::rawmem;

/// A [`PhysMapper`] for one physical window: `pa` is at `pa + offset` for `pa` in the window,
/// and nothing outside it is reachable.
#[derive(Debug, Clone, Copy)]
pub struct WindowMapper {
    window: PhysRange,
    offset: u64,
}

impl WindowMapper {
    /// A mapper for `window` at virtual `window.start() + offset`.
    ///
    /// # Safety
    /// Every byte of `window` must be mapped readable and writable at `pa + offset` for as
    /// long as the mapper is used, and `window.end() + offset` must not wrap.
    pub const unsafe fn new(window: PhysRange, offset: u64) -> Self {
        Self { window, offset }
    }
}

// SAFETY: `new`'s contract is the trait's promise for the window; ranges outside it get `None`.
unsafe impl PhysMapper for WindowMapper {
    fn phys_to_virt(&self, range: PhysRange) -> Option<NonNull<u8>> {
        if !self.window.contains_range(&range) {
            return None;
        }
        let va = range.start().as_u64().checked_add(self.offset)?;
        NonNull::new(va as usize as *mut u8)
    }
}

/// How many returned frames the pool remembers for reuse; more are leaked (a page table
/// frees few frames, and only when it unmaps).
const FREE_STACK: usize = 16;

/// 4 KiB table frames carved from one owned, zeroed range.
pub struct PoolFrames<'m> {
    pool: PhysRange,
    next: u64,
    free: [u64; FREE_STACK],
    free_len: usize,
    mapper: &'m dyn PhysMapper,
}

impl<'m> PoolFrames<'m> {
    /// A pool over `pool` (page-aligned), reached through `mapper` for zeroing reused frames.
    ///
    /// # Safety
    /// The caller owns `pool` for the life of the pool and of every table built from it
    /// (nothing else reads or writes it), `pool` is zero-filled, and `mapper` reaches all of
    /// it for writing.
    pub unsafe fn new(pool: PhysRange, mapper: &'m dyn PhysMapper) -> Self {
        Self {
            pool,
            next: pool.start().as_u64(),
            free: [0; FREE_STACK],
            free_len: 0,
            mapper,
        }
    }

    /// Frames handed out and not returned.
    pub fn frames_in_use(&self) -> u64 {
        (self.next - self.pool.start().as_u64()) / PAGE_SIZE - self.free_len as u64
    }

    /// Frames still available.
    pub fn frames_left(&self) -> u64 {
        (self.pool.end().as_u64() - self.next) / PAGE_SIZE + self.free_len as u64
    }
}

// SAFETY: fresh frames come from the owned, zeroed pool, each once (`next` only grows);
// reused frames were given back by `free_table` (so nothing references them) and are zeroed
// through the mapper before they are handed out again. All are 4 KiB and 4 KiB-aligned.
unsafe impl FrameSource for PoolFrames<'_> {
    fn alloc_table(&mut self, size: PageSize) -> Option<PhysAddr> {
        if size != PageSize::Size4K {
            return None;
        }
        if self.free_len > 0 {
            let frame = self.free[self.free_len - 1];
            let range = PhysRange::from_start_size(PhysAddr::new(frame), PAGE_SIZE).ok()?;
            let ptr = self.mapper.phys_to_virt(range)?;
            // SAFETY: the frame came back through `free_table`, so the pool owns it again and
            // nothing references it; the mapper reaches it for writing.
            unsafe { rawmem::zero(ptr, (PAGE_SIZE / 8) as usize) };
            self.free_len -= 1;
            return Some(PhysAddr::new(frame));
        }
        if self.next + PAGE_SIZE > self.pool.end().as_u64() {
            return None;
        }
        let frame = self.next;
        self.next += PAGE_SIZE;
        Some(PhysAddr::new(frame))
    }

    unsafe fn free_table(&mut self, frame: PhysAddr, _size: PageSize) {
        if self.free_len < FREE_STACK {
            self.free[self.free_len] = frame.as_u64();
            self.free_len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use mmkit_addr::host::HostMemory;
    use mmkit_addr::VirtAddr;
    use mmkit_pgtable::arch::x86_64::X86_64;
    use mmkit_pgtable::{Attrs, MapSize, PageTable};

    use super::*;

    fn pool(memory: &HostMemory, frames: u64) -> PhysRange {
        PhysRange::from_start_size(memory.range().start(), frames * PAGE_SIZE).unwrap()
    }

    #[test]
    fn window_mapper_reaches_only_its_window() {
        let window = PhysRange::from_start_size(PhysAddr::new(0x10_0000), 0x2000).unwrap();
        // SAFETY: only translated, never dereferenced.
        let m = unsafe { WindowMapper::new(window, 0x1000) };
        let inside = PhysRange::from_start_size(PhysAddr::new(0x10_1000), 0x1000).unwrap();
        assert_eq!(m.phys_to_virt(inside).unwrap().as_ptr() as usize, 0x10_2000);
        let straddling = PhysRange::from_start_size(PhysAddr::new(0x10_1000), 0x2000).unwrap();
        assert!(m.phys_to_virt(straddling).is_none());
    }

    #[test]
    fn pool_hands_out_each_frame_once_then_runs_dry() {
        let memory = HostMemory::new(PhysAddr::new(0x4000_0000), 4 * PAGE_SIZE);
        // SAFETY: the host buffer is zeroed and owned by this test.
        let mut frames = unsafe { PoolFrames::new(pool(&memory, 3), &memory) };
        let a = frames.alloc_table(PageSize::Size4K).unwrap();
        let b = frames.alloc_table(PageSize::Size4K).unwrap();
        let c = frames.alloc_table(PageSize::Size4K).unwrap();
        assert_eq!(
            [a.as_u64(), b.as_u64(), c.as_u64()],
            [0x4000_0000, 0x4000_1000, 0x4000_2000]
        );
        assert_eq!(frames.alloc_table(PageSize::Size4K), None);
        assert_eq!(frames.alloc_table(PageSize::Size2M), None);
        assert_eq!(frames.frames_in_use(), 3);
        assert_eq!(frames.frames_left(), 0);
    }

    #[test]
    fn reused_frames_come_back_zeroed() {
        let memory = HostMemory::new(PhysAddr::new(0x4000_0000), 2 * PAGE_SIZE);
        // SAFETY: the host buffer is zeroed and owned by this test.
        let mut frames = unsafe { PoolFrames::new(pool(&memory, 1), &memory) };
        let a = frames.alloc_table(PageSize::Size4K).unwrap();
        let ptr = memory.ptr_of(a).unwrap();
        // SAFETY: the frame is ours; dirty it as a table would.
        unsafe { ptr.as_ptr().write_bytes(0xab, PAGE_SIZE as usize) };
        // SAFETY: nothing references the frame.
        unsafe { frames.free_table(a, PageSize::Size4K) };
        assert_eq!(frames.frames_left(), 1);
        let again = frames.alloc_table(PageSize::Size4K).unwrap();
        assert_eq!(again, a);
        // SAFETY: the frame is ours again.
        assert!(unsafe { rawmem::is_zero(ptr, (PAGE_SIZE / 8) as usize) });
    }

    #[test]
    fn a_page_table_builds_from_the_pool() {
        let memory = HostMemory::new(PhysAddr::new(0x4000_0000), 16 * PAGE_SIZE);
        // SAFETY: the host buffer is zeroed and owned by this test.
        let frames = unsafe { PoolFrames::new(pool(&memory, 16), &memory) };
        let base = memory.range().start();
        let offset = (memory.ptr_of(base).unwrap().as_ptr() as u64).wrapping_sub(base.as_u64());
        // SAFETY: the host buffer backs the whole window at `base + offset`.
        let mapper = unsafe { WindowMapper::new(memory.range(), offset) };
        let mut pt = PageTable::new(X86_64::FOUR_LEVEL, mapper, frames).unwrap();
        let flush = pt
            .map(
                VirtAddr::new(0xffff_8880_0000_0000),
                PhysAddr::new(0x20_0000),
                4 << 20,
                Attrs::KERNEL_RW,
                MapSize::Largest,
            )
            .unwrap();
        assert_eq!(flush.freed_tables(), 0);
        let t = pt.translate(VirtAddr::new(0xffff_8880_0010_0000)).unwrap();
        assert_eq!(t.size, PageSize::Size2M);
        assert_eq!(
            t.pa_of(VirtAddr::new(0xffff_8880_0010_0000)).as_u64(),
            0x30_0000
        );
        assert!(pt.verify().is_ok());
        // Root, PDPT and PD.
        assert_eq!(pt.frames().frames_in_use(), 3);
    }
}
