//! Slab geometry: object alignment, where the free pointer and debug words go inside an
//! object's slot, the slab order, colouring, and the per-CPU array size. Pure arithmetic,
//! computed once at cache creation.
//!
//! ## A slab
//! A slab is a naturally aligned block of `2^order` frames (order 0..=[`MAX_SLAB_ORDER`]):
//!
//! ```text
//! | colour | slot 0 | slot 1 | ... | slot n-1 | leftover | header (HEADER_RESERVE bytes) |
//! ```
//!
//! The header sits at the end so the first slot starts on the block's natural alignment,
//! which is what makes power-of-two kmalloc objects naturally aligned.
//!
//! ## Off-slab headers
//! For objects of at least [`OFF_SLAB_MIN`] bytes whose slabs would lose an object (or more
//! than the header's share) to an in-slab header (the 1, 2, 4 and 8 KiB kmalloc classes lose
//! one in 32, 16, 8 and 4), the header goes *off slab*: into a header page of the cache
//! (`slab/header_pool.rs`, one page of headers serves 31 slabs), and the slots fill the
//! whole block, as in SLAB's `OFF_SLAB` caches. SLUB keeps the same data in `struct page`,
//! which a page source with one private word per frame cannot offer. Each new slab starts
//! its slots at the next *colour* (Bonwick 1994): a multiple of the cache line within the
//! leftover space, so the first objects of different slabs do not share cache sets.
//!
//! ## A slot
//! ```text
//! | object (size) | pad to 8 | red zone (8, RED_ZONE) | free ptr (8, if outside) | owner (16, STORE_USER) | pad | left red zone of the next object (8, RED_ZONE) |
//! ```
//!
//! With `RED_ZONE` the first object of a slab is preceded by `lead` bytes holding its left red
//! zone, so every object has 8 guarded bytes on both sides.
//!
//! The free pointer of a free object lives *inside* the object (in its middle, as SLUB does,
//! so a small overflow from the previous object does not hit it) unless the object's bytes must
//! survive while it is free: caches with a constructor (free objects stay constructed),
//! `TYPESAFE_BY_RCU` (readers may still look at a freed object) and `POISON` (the poison
//! pattern covers the object). Then it goes after the object.
//!
//! ## Order (SLUB's `calculate_order`)
//! Aim for at least `4 * (fls(nr_cpus) + 1)` objects per slab, then take the smallest order
//! at or above that whose leftover is at most 1/16 of the slab, else 1/8, 1/4, 1/2; else the
//! smallest order that holds one object.

#![deny(unsafe_code)]

use mmkit_addr::{Order, PAGE_SIZE};

use crate::flags::CacheFlags;

/// Largest slab order, as SLUB's default `slub_max_order` (`PAGE_ALLOC_COSTLY_ORDER`).
pub const MAX_SLAB_ORDER: u32 = 3;
/// Bytes reserved at the end of every slab for its header (none with an off-slab header);
/// also the size of an off-slab header slot.
pub const HEADER_RESERVE: usize = 128;
/// Smallest object size that may get an off-slab header (SLAB's `PAGE_SIZE >> 3`).
pub const OFF_SLAB_MIN: usize = 512;
/// The cache-line size assumed for `HWCACHE_ALIGN` and colouring.
pub const CACHE_LINE: usize = 64;
/// Smallest object alignment: a machine word, so the free pointer can live in an object.
pub const MIN_ALIGN: usize = 8;
/// Largest object alignment: the largest slab. Slabs are naturally aligned blocks, and a slot
/// of stride at least `align` fits only in a slab at least twice `align`, so every offset that
/// is a multiple of `align` is an aligned address.
pub const MAX_ALIGN: usize = (PAGE_SIZE as usize) << MAX_SLAB_ORDER;
/// Most objects one slab may hold (8-byte objects in an order-3 slab); bounds the scratch
/// bitmap of `verify()`.
pub const MAX_OBJECTS_PER_SLAB: usize = 4096;
/// Size of the right red zone after an object's (8-aligned) end.
pub const RED_ZONE_BYTES: usize = 8;
/// Size of the owner-tracking record: the allocating and the freeing source location.
pub const TRACK_BYTES: usize = 16;
/// Leftover fractions tried in turn when choosing the order; from SLUB's `calculate_order`.
const WASTE_FRACTIONS: [usize; 4] = [16, 8, 4, 2];

/// Per-CPU array capacity by object size: `(objects larger than this, capacity)`, first match
/// wins. From SLAB's `enable_cpucache` limits (120 / 54 / 24 / 8 / 1), which Linux's per-CPU
/// sheaves took over.
const CPU_ARRAY_LIMITS: [(usize, usize); 4] = [(128 * 1024, 1), (4096, 8), (1024, 24), (256, 54)];
/// Capacity for objects of 256 bytes or less.
pub(crate) const CPU_ARRAY_SMALL: usize = 120;

/// Why a geometry cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Object size 0.
    ZeroSize,
    /// Alignment not a power of two.
    BadAlign,
    /// Alignment larger than [`MAX_ALIGN`].
    AlignTooLarge,
    /// No slab of order up to [`MAX_SLAB_ORDER`] holds one object.
    ObjectTooLarge,
}

/// The geometry of a cache's slabs and objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabLayout {
    /// The caller's object size.
    pub object_size: usize,
    /// Object alignment (a power of two, at least [`MIN_ALIGN`]).
    pub align: usize,
    /// Distance between consecutive objects.
    pub stride: usize,
    /// `floor(2^32 / stride) + 1`: turns "which slot holds this offset" into a multiply
    /// (Linux `reciprocal_divide`), see [`SlabLayout::slot_of`].
    pub reciprocal: u64,
    /// Offset of the free pointer inside a slot.
    pub fp_offset: usize,
    /// Whether the free pointer lies outside the object's bytes.
    pub fp_outside: bool,
    /// Red zone `[start, end)` inside a slot, when `RED_ZONE`.
    pub red_zone: Option<(usize, usize)>,
    /// Bytes of red zone right before each object (0 without `RED_ZONE`).
    pub left_red_zone: usize,
    /// Bytes before the first slot (after the colour), holding the first object's left red
    /// zone.
    pub lead: usize,
    /// Offset of the owner record inside a slot, when `STORE_USER`.
    pub track_offset: Option<usize>,
    /// Whether free objects carry the poison pattern.
    pub poison: bool,
    /// Slab order.
    pub order: Order,
    /// Objects per slab.
    pub objects: usize,
    /// Colour step in bytes.
    pub colour_unit: usize,
    /// Number of distinct colours (at least 1).
    pub colours: usize,
    /// Per-CPU array capacity (0 for debug caches, which bypass the arrays).
    pub cpu_capacity: usize,
    /// Whether the slab header lives in a header page instead of the slab's last bytes.
    pub off_slab: bool,
}

/// Alignment for an object of `size` asked to be aligned to `align` (Linux
/// `calculate_alignment`): with `HWCACHE_ALIGN`, the cache line halved while the object fits
/// twice; never below [`MIN_ALIGN`].
pub const fn object_align(size: usize, align: usize, flags: CacheFlags) -> usize {
    let mut a = if align < MIN_ALIGN { MIN_ALIGN } else { align };
    if flags.contains(CacheFlags::HWCACHE_ALIGN) {
        let mut ralign = CACHE_LINE;
        while size <= ralign / 2 && ralign > MIN_ALIGN {
            ralign /= 2;
        }
        if ralign > a {
            a = ralign;
        }
    }
    a
}

/// `fls`: 1-based index of the highest set bit, 0 for 0.
const fn fls(x: usize) -> u32 {
    usize::BITS - x.leading_zeros()
}

const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Usable bytes of a slab of `order` with an in-slab header.
pub const fn usable_bytes(order: u32) -> usize {
    usable(order, HEADER_RESERVE)
}

/// Usable bytes of a slab of `order` when `reserve` bytes at its end hold the header.
const fn usable(order: u32, reserve: usize) -> usize {
    ((PAGE_SIZE as usize) << order) - reserve
}

fn objects_for(order: u32, stride: usize, lead: usize, reserve: usize) -> usize {
    (usable(order, reserve).saturating_sub(lead) / stride).min(MAX_OBJECTS_PER_SLAB)
}

/// SLUB's order choice for slots of `stride` bytes, `lead` bytes before the first slot, on a
/// machine with `nr_cpus` CPUs, with an in-slab header.
pub fn slab_order(stride: usize, lead: usize, nr_cpus: usize) -> Result<u32, LayoutError> {
    order_with(stride, lead, nr_cpus, HEADER_RESERVE)
}

/// [`slab_order`] for a slab whose last `reserve` bytes hold the header.
fn order_with(
    stride: usize,
    lead: usize,
    nr_cpus: usize,
    reserve: usize,
) -> Result<u32, LayoutError> {
    let objects_for = |order, stride, lead| objects_for(order, stride, lead, reserve);
    let usable_bytes = |order| usable(order, reserve);
    let max_objects = objects_for(MAX_SLAB_ORDER, stride, lead);
    if max_objects == 0 {
        return Err(LayoutError::ObjectTooLarge);
    }
    let min_objects = (4 * (fls(nr_cpus) as usize + 1)).min(max_objects);
    let mut min_order = 0;
    while min_order < MAX_SLAB_ORDER && objects_for(min_order, stride, lead) < min_objects {
        min_order += 1;
    }
    for fraction in WASTE_FRACTIONS {
        for order in min_order..=MAX_SLAB_ORDER {
            let n = objects_for(order, stride, lead);
            if n == 0 {
                continue;
            }
            let leftover = usable_bytes(order) - lead - n * stride;
            if leftover <= ((PAGE_SIZE as usize) << order) / fraction {
                return Ok(order);
            }
        }
    }
    // Unreachable in practice (fraction 1/2 always fits one object), kept total.
    (0..=MAX_SLAB_ORDER)
        .find(|&o| objects_for(o, stride, lead) > 0)
        .ok_or(LayoutError::ObjectTooLarge)
}

/// Per-CPU array capacity for objects of `size` bytes.
pub fn cpu_array_capacity(size: usize) -> usize {
    CPU_ARRAY_LIMITS
        .iter()
        .find(|&&(above, _)| size > above)
        .map_or(CPU_ARRAY_SMALL, |&(_, cap)| cap)
}

impl SlabLayout {
    /// The geometry of a cache of `size`-byte objects aligned to `align`.
    pub fn new(
        size: usize,
        align: usize,
        flags: CacheFlags,
        has_ctor: bool,
        nr_cpus: usize,
    ) -> Result<Self, LayoutError> {
        if size == 0 {
            return Err(LayoutError::ZeroSize);
        }
        if !align.is_power_of_two() && align != 0 {
            return Err(LayoutError::BadAlign);
        }
        if align > MAX_ALIGN {
            return Err(LayoutError::AlignTooLarge);
        }
        if size > usable(MAX_SLAB_ORDER, 0) {
            return Err(LayoutError::ObjectTooLarge);
        }
        let align = object_align(size, align, flags);
        let poison = flags.contains(CacheFlags::POISON)
            && !has_ctor
            && !flags.contains(CacheFlags::TYPESAFE_BY_RCU);
        let fp_outside = has_ctor || flags.contains(CacheFlags::TYPESAFE_BY_RCU) || poison;

        let size_words = align_up(size, 8);
        let mut off = size_words;
        let red_zone = if flags.contains(CacheFlags::RED_ZONE) {
            off += RED_ZONE_BYTES;
            Some((size, off))
        } else {
            None
        };
        let fp_offset = if fp_outside {
            off += 8;
            off - 8
        } else {
            // The middle of the object, word aligned (SLUB, since 6.2).
            (size_words / 2) & !7
        };
        let track_offset = if flags.contains(CacheFlags::STORE_USER) {
            off += TRACK_BYTES;
            Some(off - TRACK_BYTES)
        } else {
            None
        };
        // The left red zone of each object is the tail of the previous slot (reserved here)
        // or, for the first object, `lead` bytes in front of it.
        let left_red_zone = if flags.contains(CacheFlags::RED_ZONE) {
            off += RED_ZONE_BYTES;
            RED_ZONE_BYTES
        } else {
            0
        };
        let lead = if left_red_zone > 0 {
            align_up(left_red_zone, align)
        } else {
            0
        };
        let stride = align_up(off, align);
        let (order, objects, reserve) = Self::choose_header(stride, lead, nr_cpus, size)?;
        let colour_unit = if align > CACHE_LINE {
            align
        } else {
            CACHE_LINE
        };
        let leftover = usable(order, reserve) - lead - objects * stride;
        let colours = leftover / colour_unit + 1;
        let cpu_capacity = if flags.is_debug() {
            0
        } else {
            cpu_array_capacity(size)
        };
        Ok(Self {
            object_size: size,
            align,
            stride,
            reciprocal: (1u64 << 32) / stride as u64 + 1,
            fp_offset,
            fp_outside,
            red_zone,
            left_red_zone,
            lead,
            track_offset,
            poison,
            order: Order::new(order),
            objects,
            colour_unit,
            colours,
            cpu_capacity,
            off_slab: reserve == 0,
        })
    }

    /// Order, objects per slab and header reserve: the in-slab header unless an off-slab
    /// one packs the memory better (more object bytes per slab byte) for an object of at
    /// least [`OFF_SLAB_MIN`] bytes.
    fn choose_header(
        stride: usize,
        lead: usize,
        nr_cpus: usize,
        size: usize,
    ) -> Result<(u32, usize, usize), LayoutError> {
        let inline = order_with(stride, lead, nr_cpus, HEADER_RESERVE)
            .map(|o| (o, objects_for(o, stride, lead, HEADER_RESERVE)));
        if size < OFF_SLAB_MIN {
            let (o, n) = inline?;
            return Ok((o, n, HEADER_RESERVE));
        }
        let off = order_with(stride, lead, nr_cpus, 0)?;
        let off_n = objects_for(off, stride, lead, 0);
        match inline {
            // Compare n_in / 2^o_in with n_off / 2^o_off without division.
            Ok((o, n)) if n << off >= off_n << o => Ok((o, n, HEADER_RESERVE)),
            _ => Ok((off, off_n, 0)),
        }
    }

    /// Slot index of byte offset `off` from the first slot: `off / stride` by multiplication.
    /// Exact for every offset inside a slab: the error of the reciprocal is below
    /// `off / 2^32 < 2^-17`, less than the `1 / stride` gap to the next integer.
    #[inline]
    pub const fn slot_of(&self, off: usize) -> usize {
        ((off as u64 * self.reciprocal) >> 32) as usize
    }

    /// Bytes in one slab.
    pub const fn slab_bytes(&self) -> usize {
        (PAGE_SIZE as usize) << self.order.get()
    }

    /// Offset of the in-slab header from the slab start (the slab's end when the header is
    /// off slab).
    pub const fn header_offset(&self) -> usize {
        if self.off_slab {
            self.slab_bytes()
        } else {
            self.slab_bytes() - HEADER_RESERVE
        }
    }

    /// Offset of the colour area for colour number `colour` (taken modulo the colour count).
    pub const fn colour_offset(&self, colour: usize) -> usize {
        (colour % self.colours) * self.colour_unit
    }

    /// Offset of the first object of a slab with colour number `colour`.
    pub const fn first_object_offset(&self, colour: usize) -> usize {
        self.colour_offset(colour) + self.lead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize, flags: CacheFlags, ctor: bool) -> SlabLayout {
        SlabLayout::new(size, align, flags, ctor, 4).unwrap()
    }

    #[test]
    fn hwcache_align_halves_for_small_objects() {
        assert_eq!(object_align(100, 8, CacheFlags::HWCACHE_ALIGN), 64);
        assert_eq!(object_align(20, 8, CacheFlags::HWCACHE_ALIGN), 32);
        assert_eq!(object_align(8, 8, CacheFlags::HWCACHE_ALIGN), 8);
        assert_eq!(object_align(100, 8, CacheFlags::empty()), 8);
        assert_eq!(object_align(100, 256, CacheFlags::HWCACHE_ALIGN), 256);
        assert_eq!(object_align(3, 1, CacheFlags::empty()), MIN_ALIGN);
    }

    #[test]
    fn free_pointer_inside_plain_objects_in_the_middle() {
        let l = layout(64, 8, CacheFlags::empty(), false);
        assert!(!l.fp_outside);
        assert_eq!(l.fp_offset, 32);
        assert_eq!(l.stride, 64);
        let tiny = layout(8, 8, CacheFlags::empty(), false);
        assert_eq!((tiny.fp_offset, tiny.stride), (0, 8));
    }

    #[test]
    fn free_pointer_outside_when_object_must_stay_intact() {
        for (flags, ctor) in [
            (CacheFlags::empty(), true),
            (CacheFlags::TYPESAFE_BY_RCU, false),
            (CacheFlags::POISON, false),
        ] {
            let l = layout(64, 8, flags, ctor);
            assert!(l.fp_outside, "{flags:?} ctor={ctor}");
            assert!(l.fp_offset >= 64);
            assert!(l.fp_offset + 8 <= l.stride);
        }
    }

    #[test]
    fn poison_skipped_for_constructed_objects() {
        assert!(layout(64, 8, CacheFlags::POISON, false).poison);
        assert!(!layout(64, 8, CacheFlags::POISON, true).poison);
        assert!(
            !layout(
                64,
                8,
                CacheFlags::POISON | CacheFlags::TYPESAFE_BY_RCU,
                false
            )
            .poison
        );
    }

    #[test]
    fn debug_words_fit_in_slot_in_order() {
        let f = CacheFlags::RED_ZONE | CacheFlags::POISON | CacheFlags::STORE_USER;
        let l = layout(20, 8, f, false);
        let (rz_start, rz_end) = l.red_zone.unwrap();
        assert_eq!(rz_start, 20);
        assert_eq!(rz_end, 24 + RED_ZONE_BYTES);
        assert_eq!(l.fp_offset, rz_end);
        assert_eq!(l.track_offset, Some(rz_end + 8));
        assert_eq!(l.left_red_zone, RED_ZONE_BYTES);
        assert_eq!(l.stride, rz_end + 8 + TRACK_BYTES + RED_ZONE_BYTES);
        assert_eq!(l.lead, 8);
        assert_eq!(l.cpu_capacity, 0, "debug caches bypass per-CPU arrays");
    }

    #[test]
    fn order_respects_waste_limit_and_min_objects() {
        for size in [8usize, 24, 96, 192, 256, 700, 1024, 2048, 3000, 4096, 8192] {
            let l = layout(size, 8, CacheFlags::empty(), false);
            assert!(l.order.get() <= MAX_SLAB_ORDER);
            assert!(l.objects >= 1);
            assert!(l.objects * l.stride <= l.header_offset());
            let leftover = l.header_offset() - l.objects * l.stride;
            assert!(
                leftover * 2 <= l.slab_bytes(),
                "size {size}: leftover {leftover}"
            );
        }
        // 4 CPUs: at least 4 * (3 + 1) = 16 objects where an order-3 slab can hold them.
        let l = layout(1024, 8, CacheFlags::empty(), false);
        assert!(l.objects >= 16, "{l:?}");
        let small = layout(64, 8, CacheFlags::empty(), false);
        assert_eq!(small.order.get(), 0);
    }

    #[test]
    fn more_cpus_prefer_bigger_slabs() {
        let one = SlabLayout::new(512, 8, CacheFlags::empty(), false, 1).unwrap();
        let many = SlabLayout::new(512, 8, CacheFlags::empty(), false, 64).unwrap();
        assert!(many.order > one.order);
    }

    #[test]
    fn colours_cover_leftover_in_cache_lines() {
        let l = layout(200, 8, CacheFlags::empty(), false);
        let leftover = usable_bytes(l.order.get()) - l.objects * l.stride;
        assert_eq!(l.colours, leftover / CACHE_LINE + 1);
        for c in 0..l.colours * 2 {
            assert!(l.first_object_offset(c) + l.objects * l.stride <= l.header_offset());
            assert_eq!(l.colour_offset(c) % l.align, 0);
        }
    }

    #[test]
    fn rejects_impossible_geometries() {
        let f = CacheFlags::empty();
        assert_eq!(
            SlabLayout::new(0, 8, f, false, 1),
            Err(LayoutError::ZeroSize)
        );
        assert_eq!(
            SlabLayout::new(8, 3, f, false, 1),
            Err(LayoutError::BadAlign)
        );
        assert_eq!(
            SlabLayout::new(8, 2 * MAX_ALIGN, f, false, 1),
            Err(LayoutError::AlignTooLarge)
        );
        assert_eq!(
            SlabLayout::new(40000, 8, f, false, 1),
            Err(LayoutError::ObjectTooLarge)
        );
    }

    #[test]
    fn big_power_of_two_objects_get_off_slab_headers_and_full_slabs() {
        for size in [1024usize, 2048, 4096, 8192] {
            let l = layout(size, 8, CacheFlags::empty(), false);
            assert!(l.off_slab, "{size}");
            assert_eq!(
                l.objects * size,
                l.slab_bytes(),
                "{size}: slots fill the slab"
            );
            assert!(l.objects >= 4, "{size}");
            assert_eq!(l.header_offset(), l.slab_bytes());
            assert_eq!(l.first_object_offset(0), 0, "natural alignment kept");
        }
        // Small objects and sizes that lose nothing to the header keep it in the slab.
        for size in [64usize, 256, 3072] {
            assert!(
                !layout(size, 8, CacheFlags::empty(), false).off_slab,
                "{size}"
            );
        }
        // Objects as large as a whole order-3 slab fit once the header is off slab.
        let whole = layout(32768, 8, CacheFlags::empty(), false);
        assert!(whole.off_slab && whole.objects == 1);
    }

    #[test]
    fn reciprocal_slot_index_matches_division() {
        for size in [
            8usize, 24, 40, 56, 96, 100, 192, 200, 384, 1000, 1536, 3072, 6144, 8192,
        ] {
            let l = layout(size, 8, CacheFlags::empty(), false);
            for off in 0..l.slab_bytes() {
                assert_eq!(
                    l.slot_of(off),
                    off / l.stride,
                    "stride {} off {off}",
                    l.stride
                );
            }
        }
    }

    #[test]
    fn cpu_array_capacity_follows_size_table() {
        assert_eq!(cpu_array_capacity(8), 120);
        assert_eq!(cpu_array_capacity(256), 120);
        assert_eq!(cpu_array_capacity(257), 54);
        assert_eq!(cpu_array_capacity(2048), 24);
        assert_eq!(cpu_array_capacity(8192), 8);
    }
}
