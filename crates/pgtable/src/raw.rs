//! The only module that turns physical table addresses into memory.
//!
//! A table is viewed as a slice of `AtomicU64` entries: hardware walkers and (on x86) the
//! hardware's accessed/dirty updates may touch entries concurrently with us, so every access is
//! a single atomic load, store or read-modify-write, never a torn or cached plain access.
//!
//! Freed tables waiting for a TLB flush are linked through their entry 0, encoded as an
//! *invalid* entry on both architectures (bit 0 clear, bit 1 set), so a stale walk-cache entry
//! that still reaches such a table before the flush sees a fault, never a mapping we did not
//! make.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use mmkit_addr::{PhysAddr, PhysMapper, PhysRange};

/// Link value for the last table of a freed-table list.
const LINK_END: u64 = 0b10;
/// Mark in a link: every other entry of the linked table is 0 (it was emptied entry by entry
/// before it was unhooked), so clearing the link leaves a zeroed frame. Still an invalid
/// encoding on both architectures (bit 0 clear).
const ZEROED: u64 = 0b100;
/// Mark in a link: the linked frame is a ticket ([`crate::share`]): entry 1 names a shared
/// table whose reference is dropped when the list is freed.
const TICKET: u64 = 0b1000;

/// The entries of the table frame at `pa` (`bytes` long), or `None` if the mapper cannot reach
/// it or the address is misaligned.
#[inline(always)]
pub(crate) fn table_at<M: PhysMapper>(
    mapper: &M,
    pa: PhysAddr,
    bytes: u64,
) -> Option<&[AtomicU64]> {
    if !pa.is_aligned(bytes) {
        return None;
    }
    let range = PhysRange::from_start_size(pa, bytes).ok()?;
    let ptr = mapper.phys_to_virt(range)?;
    if ptr.as_ptr() as usize % core::mem::align_of::<AtomicU64>() != 0 {
        return None;
    }
    // SAFETY: the `PhysMapper` contract makes `ptr` valid for reads and writes of `bytes` bytes
    // for as long as `mapper` (which the returned borrow outlives not) is alive; the alignment is
    // checked above; table frames are only ever accessed through atomics (this module, the
    // software MMU and the hardware), so shared `&AtomicU64` views are sound.
    Some(unsafe {
        core::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU64>(), (bytes / 8) as usize)
    })
}

/// A mapper's [`LinearWindow`](mmkit_addr::LinearWindow), pre-checked for table frames of
/// one size: a `bytes`-aligned frame at `pa` lies inside it exactly when `pa - lo <= span`
/// (wrapping), and is at virtual `pa + offset` (wrapping), 8-aligned. The pointer is computed
/// from `pa` directly, not from the range check's difference, so a walk's dependent chain per
/// level is the entry load, the address mask and one add; the check runs beside it.
///
/// Taken once when a [`PageTable`](crate::PageTable) is created: by the `PhysMapper`
/// contract, every pointer the window promised then stays valid for as long as the mapper
/// lives, so it need not be asked again per operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    lo: u64,
    span: u64,
    /// What to add to a physical address inside the window to get its virtual address.
    offset: u64,
}

impl Window {
    /// The window of `mapper` for frames of `bytes` (a power of two, at least 8), if it has
    /// one that holds at least one frame.
    pub(crate) fn of<M: PhysMapper>(mapper: &M, bytes: u64) -> Option<Self> {
        let w = mapper.linear_window()?;
        // Frames are `bytes`-aligned, so an 8-aligned offset keeps entries aligned.
        if w.offset % core::mem::align_of::<AtomicU64>() as u64 != 0 {
            return None;
        }
        let last_start = w.end.checked_sub(bytes)?;
        let span = last_start.checked_sub(w.start)?;
        Some(Self {
            lo: w.start,
            span,
            offset: w.offset,
        })
    }
}

/// Table frames of one size reached through one mapper: through its [`Window`] with one
/// compare and one add where it has one, through [`PhysMapper::phys_to_virt`] elsewhere.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'m, M> {
    mapper: &'m M,
    bytes: u64,
    window: Option<Window>,
}

impl<'m, M: PhysMapper> Tables<'m, M> {
    /// Frames of `bytes` through `mapper`.
    ///
    /// # Safety
    /// `window` is `None` or what [`Window::of`]`(mapper, bytes)` returned for this same
    /// mapper (at any earlier point of its life).
    #[inline(always)]
    pub(crate) unsafe fn new(mapper: &'m M, bytes: u64, window: Option<Window>) -> Self {
        Self {
            mapper,
            bytes,
            window,
        }
    }

    /// The entries of the table frame at `pa`, or `unreachable(pa)` if the mapper cannot
    /// reach it or the address is misaligned (the window path returns a slice the optimiser
    /// knows to be there, with no `Option` to test per level).
    #[inline(always)]
    pub(crate) fn get_or(
        &self,
        pa: PhysAddr,
        unreachable: impl FnOnce(PhysAddr) -> &'m [AtomicU64],
    ) -> &'m [AtomicU64] {
        match self.windowed() {
            Some(w) => w.get_or(pa, unreachable),
            None => outside_window_or(self.mapper, pa, self.bytes, unreachable),
        }
    }

    /// Whether the mapper reaches the frame at `pa`.
    pub(crate) fn reaches(&self, pa: PhysAddr) -> bool {
        table_at(self.mapper, pa, self.bytes).is_some()
    }

    /// The same frames, seen through the window, if the mapper has one: a walk tests for the
    /// window once and then pays no `Option` test per level.
    #[inline(always)]
    pub(crate) fn windowed(&self) -> Option<Windowed<'m, M>> {
        Some(Windowed {
            mapper: self.mapper,
            bytes: self.bytes,
            window: self.window?,
        })
    }
}

/// [`Tables`] whose mapper has a [`Window`].
#[derive(Clone, Copy)]
pub(crate) struct Windowed<'m, M> {
    mapper: &'m M,
    bytes: u64,
    /// Taken from `mapper` for frames of `bytes` (only [`Tables::windowed`] builds this, from
    /// a `Tables` whose construction promised that).
    window: Window,
}

impl<'m, M: PhysMapper> Windowed<'m, M> {
    /// [`Tables::get_or`]: one compare and one add inside the window, an out-of-line mapper
    /// call outside it.
    #[inline(always)]
    pub(crate) fn get_or(
        &self,
        pa: PhysAddr,
        unreachable: impl FnOnce(PhysAddr) -> &'m [AtomicU64],
    ) -> &'m [AtomicU64] {
        let w = self.window;
        let a = pa.as_u64();
        let above_lo = a.wrapping_sub(w.lo);
        if a % self.bytes == 0 && above_lo <= w.span {
            let va = a.wrapping_add(w.offset);
            // SAFETY: the window came from `self.mapper` for this frame size (the field's
            // invariant, from `Tables::new`'s contract); `[a, a + bytes)` is non-empty and
            // inside it (`lo <= a` and `a + bytes <= end`, checked in `Window::of`), so by the
            // `PhysMapper::linear_window` contract `phys_to_virt` returned (or would have)
            // exactly `a + offset` (wrapping) for it, which is `va`: valid for reads and writes of `bytes` bytes while the mapper
            // (borrowed for `'m`) lives, non-null, and 8-aligned (`a` is `bytes`-aligned and
            // `offset` 8-aligned). Table frames are only accessed through atomics, as in
            // `table_at`.
            return unsafe {
                core::slice::from_raw_parts(
                    va as usize as *const AtomicU64,
                    (self.bytes / 8) as usize,
                )
            };
        }
        outside_window_or(self.mapper, pa, self.bytes, unreachable)
    }
}

/// [`table_at`] as a slice whose length the optimiser sees, or `unreachable(pa)`.
#[inline(always)]
fn outside_window_or<'m, M: PhysMapper>(
    mapper: &'m M,
    pa: PhysAddr,
    bytes: u64,
    unreachable: impl FnOnce(PhysAddr) -> &'m [AtomicU64],
) -> &'m [AtomicU64] {
    match table_outside_window(mapper, pa, bytes) {
        // SAFETY: `table_outside_window` returns the start of the slice `table_at` gave for
        // this mapper (borrowed for `'m`) and size: `bytes / 8` entries, valid as explained
        // there. Rebuilding the slice here, rather than returning it, lets the optimiser see
        // its length.
        Some(p) => unsafe { core::slice::from_raw_parts(p.as_ptr(), (bytes / 8) as usize) },
        None => unreachable(pa),
    }
}

/// The start of [`table_at`]`(mapper, pa, bytes)`, for frames outside the linear window:
/// kept out of line so a walk's hot path (the window) carries no mapper call and no
/// registers saved for one.
#[inline(never)]
fn table_outside_window<M: PhysMapper>(
    mapper: &M,
    pa: PhysAddr,
    bytes: u64,
) -> Option<NonNull<AtomicU64>> {
    table_at(mapper, pa, bytes).map(|t| NonNull::from(t).cast())
}

/// Read an entry.
#[inline]
pub(crate) fn load(t: &[AtomicU64], i: usize) -> u64 {
    t[i].load(Ordering::Relaxed)
}

/// Read one entry of a table slice being iterated.
#[inline]
pub(crate) fn load_entry(e: &AtomicU64) -> u64 {
    e.load(Ordering::Relaxed)
}

/// Write one entry of a table slice being iterated (nothing walks through it yet).
#[inline]
pub(crate) fn store_entry(e: &AtomicU64, v: u64) {
    e.store(v, Ordering::Relaxed)
}

/// Clear one entry of a table slice being iterated.
#[inline]
pub(crate) fn clear_entry(e: &AtomicU64) {
    e.store(0, Ordering::Relaxed)
}

/// Write an entry that the hardware may not be walking through yet, or clear one.
#[inline]
pub(crate) fn store(t: &[AtomicU64], i: usize, v: u64) {
    t[i].store(v, Ordering::Relaxed)
}

/// Write entry `k` of `t` as `entry(k)`, for every entry of `t` (a run of slots nothing may
/// walk through yet: map's fill loop).
#[inline(always)]
pub(crate) fn fill(t: &[AtomicU64], mut entry: impl FnMut(usize) -> u64) {
    for (k, e) in t.iter().enumerate() {
        e.store(entry(k), Ordering::Relaxed);
    }
}

/// Install an entry that publishes a table filled just before (release ordering, so the
/// child's entries are visible before the pointer to it).
#[inline]
pub(crate) fn publish(t: &[AtomicU64], i: usize, v: u64) {
    t[i].store(v, Ordering::Release)
}

/// Atomically replace bits: `new = f(old)`, retried if the hardware changed the entry (for
/// example by setting accessed/dirty) in between. Returns the old value.
#[inline]
pub(crate) fn update(t: &[AtomicU64], i: usize, mut f: impl FnMut(u64) -> u64) -> u64 {
    let mut old = t[i].load(Ordering::Relaxed);
    loop {
        match t[i].compare_exchange_weak(old, f(old), Ordering::AcqRel, Ordering::Relaxed) {
            Ok(v) => return v,
            Err(v) => old = v,
        }
    }
}

/// Zero a whole table (host arena).
#[cfg(any(test, feature = "std"))]
pub(crate) fn zero(t: &[AtomicU64]) {
    for e in t {
        e.store(0, Ordering::Relaxed);
    }
}

/// Link a detached table to the next one of a list (`None` ends the list), keeping the
/// table's [`ZEROED`] mark.
#[inline]
pub(crate) fn set_link(t: &[AtomicU64], next: Option<PhysAddr>) {
    let mark = t[0].load(Ordering::Relaxed) & (ZEROED | TICKET);
    let v = match next {
        Some(pa) => pa.as_u64() | LINK_END,
        None => LINK_END,
    };
    t[0].store(v | mark, Ordering::Relaxed);
}

/// Start a table's link (the end of a list), marking whether every entry but the link is 0.
#[inline]
pub(crate) fn init_link(t: &[AtomicU64], zeroed: bool) {
    let mark = if zeroed { ZEROED } else { 0 };
    t[0].store(LINK_END | mark, Ordering::Relaxed);
}

/// The next table of a list.
#[inline]
pub(crate) fn link(t: &[AtomicU64]) -> Option<PhysAddr> {
    let v = t[0].load(Ordering::Relaxed) & !(ZEROED | TICKET);
    if v == LINK_END {
        None
    } else {
        Some(PhysAddr::new(v & !LINK_END))
    }
}

/// Start a ticket's link (the end of a list).
#[inline]
pub(crate) fn init_ticket_link(t: &[AtomicU64]) {
    t[0].store(LINK_END | TICKET, Ordering::Relaxed);
}

/// Whether a linked frame is a ticket.
#[inline]
pub(crate) fn is_ticket(t: &[AtomicU64]) -> bool {
    t[0].load(Ordering::Relaxed) & TICKET != 0
}

/// Whether a linked table was marked zeroed by [`init_link`]: every entry but the link is 0.
#[inline]
pub(crate) fn is_marked_zeroed(t: &[AtomicU64]) -> bool {
    t[0].load(Ordering::Relaxed) & ZEROED != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::TableArena;
    use mmkit_addr::PageSize;

    /// The window fast path hands out exactly the slices `phys_to_virt` does, and falls back
    /// (to the same answer) outside the window and for misaligned frames.
    #[test]
    fn window_fast_path_agrees_with_phys_to_virt() {
        let base = 0x20_0000u64;
        let arena = TableArena::new(PhysAddr::new(base), PageSize::Size4K, 4);
        let h = arena.handle();
        let probes = [
            base - 4096,
            base,
            base + 8,
            base + 4096,
            base + 3 * 4096,
            base + 4 * 4096,
            base + 3 * 4096 + 8,
            0,
        ];
        for on in [true, false] {
            arena.set_linear_window(on);
            let w = Window::of(&h, 4096);
            assert_eq!(w.is_some(), on);
            // SAFETY: `w` was just taken from `h` for this frame size.
            let t = unsafe { Tables::new(&h, 4096, w) };
            for pa in probes {
                let pa = PhysAddr::new(pa);
                let want = table_at(&h, pa, 4096).map(|s| (s.as_ptr(), s.len()));
                let got = Some(t.get_or(pa, |_| &[])).filter(|s| !s.is_empty());
                let got = got.map(|s| (s.as_ptr(), s.len()));
                assert_eq!(got, want, "{pa:?} window {on}");
            }
        }
        // A window too small for one frame is not used.
        arena.set_linear_window(true);
        assert!(Window::of(&h, 8 * 4096).is_none());
    }
}
