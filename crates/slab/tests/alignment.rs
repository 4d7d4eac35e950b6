//! The alignment sweep: every size 1..=8192 with every power-of-two alignment up to a page
//! through `kmalloc_aligned`, on several CPUs at once, with enough objects live per class that
//! every colour and every slot position of its slabs is handed out. Power-of-two sizes must
//! come back naturally aligned (Linux's kmalloc promise), every object at least as aligned as
//! asked, and every object's bytes must survive until it is freed.

use std::collections::VecDeque;
use std::ptr::NonNull;

use mmkit_addr::host::HostPlatform;
use mmkit_slab::testing::TestPageSource;
use mmkit_slab::{CacheFlags, Gfp, Kmalloc, KmallocKind, KMALLOC_CLASSES, KMALLOC_MAX_CACHE_SIZE};

const CPUS: usize = 3;
const LIVE: usize = 256;
const MAX_SHIFT: u32 = 12;

struct Live {
    ptr: NonNull<u8>,
    len: usize,
    byte: u8,
}

fn fill(p: NonNull<u8>, len: usize, b: u8) {
    // SAFETY: the sweep writes only objects it owns, within their size.
    unsafe { core::ptr::write_bytes(p.as_ptr(), b, len) };
}

fn intact(l: &Live) -> bool {
    // SAFETY: the sweep reads only objects it owns, within their size.
    unsafe { core::slice::from_raw_parts(l.ptr.as_ptr(), l.len) }
        .iter()
        .all(|&x| x == l.byte)
}

/// What an object of `size` bytes asked at `align` must be aligned to.
fn required(size: usize, align: usize) -> usize {
    if size.is_power_of_two() {
        align.max(size)
    } else {
        align
    }
}

fn check_and_keep(
    k: &Kmalloc<'_, TestPageSource, HostPlatform>,
    live: &mut VecDeque<Live>,
    size: usize,
    align: usize,
    byte: u8,
    window: usize,
) {
    let p = k
        .kmalloc_aligned(size, align, Gfp::empty())
        .unwrap_or_else(|e| panic!("kmalloc_aligned({size}, {align}): {e:?}"));
    let want = required(size, align);
    assert_eq!(
        p.as_ptr() as usize % want,
        0,
        "kmalloc_aligned({size}, {align}) = {p:p} not {want}-aligned"
    );
    // SAFETY: `p` was just allocated.
    assert!(unsafe { k.ksize(p) }.unwrap() >= size);
    fill(p, size, byte);
    live.push_back(Live {
        ptr: p,
        len: size,
        byte,
    });
    while live.len() > window {
        release(k, live.pop_front().unwrap());
    }
}

fn release(k: &Kmalloc<'_, TestPageSource, HostPlatform>, l: Live) {
    assert!(
        intact(&l),
        "object {:p} of {} bytes overwritten",
        l.ptr,
        l.len
    );
    // SAFETY: allocated by the sweep and freed once.
    unsafe { k.kfree(l.ptr) }.unwrap();
}

/// Every class, at its natural alignment, with every colour and slot of its slabs reached:
/// `colours + 1` slabs' worth of objects live at once (each new slab takes the next colour).
fn every_slot_of_every_colour(k: &Kmalloc<'_, TestPageSource, HostPlatform>, cpu: usize) {
    for &class in &KMALLOC_CLASSES {
        let layout = *k.cache_for(class, KmallocKind::Normal).unwrap().layout();
        let n = (layout.colours + 1) * layout.objects;
        let mut live = VecDeque::with_capacity(n);
        for i in 0..n {
            let align = if class.is_power_of_two() { class } else { 8 };
            check_and_keep(k, &mut live, class, align.min(4096), (i + cpu) as u8, n);
        }
        live.into_iter().for_each(|l| release(k, l));
    }
}

/// Every size in `sizes` with every power-of-two alignment up to a page, `LIVE` objects kept
/// live so consecutive requests land in different slots.
fn every_size_and_alignment(
    k: &Kmalloc<'_, TestPageSource, HostPlatform>,
    sizes: impl Iterator<Item = usize>,
) {
    let mut live = VecDeque::with_capacity(LIVE + 1);
    for size in sizes {
        for shift in 0..=MAX_SHIFT {
            check_and_keep(
                k,
                &mut live,
                size,
                1 << shift,
                size as u8 ^ shift as u8,
                LIVE,
            );
        }
    }
    live.into_iter().for_each(|l| release(k, l));
}

fn sweep(flags: CacheFlags) {
    let src = TestPageSource::new(96 << 20);
    let plat = HostPlatform::new(CPUS);
    let mut k = Kmalloc::with_flags(&src, &plat, flags).unwrap();
    std::thread::scope(|s| {
        for cpu in 0..CPUS {
            let (k, plat) = (&k, &plat);
            s.spawn(move || {
                plat.bind_current_thread(cpu);
                every_slot_of_every_colour(k, cpu);
                every_size_and_alignment(
                    k,
                    (1..=KMALLOC_MAX_CACHE_SIZE).filter(|s| s % CPUS == cpu),
                );
            });
        }
    });
    k.verify().unwrap();
}

#[test]
fn every_size_and_alignment_is_honoured_on_several_cpus() {
    sweep(CacheFlags::empty());
}

#[test]
fn every_size_and_alignment_is_honoured_with_debug_checks() {
    sweep(CacheFlags::RED_ZONE | CacheFlags::POISON | CacheFlags::STORE_USER);
}
