//! The alignment sweep through the facade: every size 1..=8192 with every power-of-two
//! alignment up to a page, through `kmalloc_aligned`, `GlobalMm` (as `GlobalAlloc`) and
//! allocator-api2, on three CPUs at once, with a window of live objects so consecutive
//! requests land in different slots, colours and slabs. Power-of-two sizes must come back
//! naturally aligned, every block at least as aligned as its layout, and its bytes intact
//! until it is freed. Afterwards the allocator is verified and no dealloc reported misuse.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::VecDeque;
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::{HostCpus, HostRam};
use mmkit::{GlobalMm, Mm, MmBuilder};

const CPUS: usize = 3;
const LIVE: usize = 300;
const MAX_SIZE: usize = 8192;
const MAX_SHIFT: u32 = 12;

static MM: GlobalMm<HostCpus<CPUS>> = GlobalMm::new();

#[derive(Clone, Copy)]
enum Via {
    Kmalloc,
    Global,
    Api2,
}

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    via: Via,
    byte: u8,
}

fn mm() -> &'static Mm<'static, HostCpus<CPUS>> {
    MM.get().unwrap_or_else(|| {
        let ram: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), 256 << 20)));
        let memory =
            PhysRange::from_start_size(PhysAddr::new(0x10_0000), (256 << 20) - 0x10_0000).unwrap();
        // SAFETY: `ram` is the whole simulated machine, used by nothing else, and lives
        // forever.
        let mm = unsafe { MmBuilder::new(HostCpus::<CPUS>::new(), ram) }
            .memory(memory)
            .boot()
            .expect("boot");
        // A concurrent first call may have won; either way one `Mm` is installed.
        let _ = MM.init(mm);
        MM.get().unwrap()
    })
}

fn alloc(via: Via, layout: Layout) -> NonNull<u8> {
    let mm = mm();
    let p = match via {
        Via::Kmalloc => mm
            .kmalloc_aligned(layout.size(), layout.align(), GfpFlags::KERNEL)
            .ok(),
        // SAFETY: the layout has a non-zero size.
        Via::Global => NonNull::new(unsafe { MM.alloc(layout) }),
        Via::Api2 => mm.allocate(layout).ok().map(|s| s.cast()),
    };
    p.unwrap_or_else(|| panic!("allocation of {layout:?} failed"))
}

fn free(l: Live) {
    // SAFETY: the sweep owns the block, reads within its size, and frees it once, through
    // the interface that allocated it.
    unsafe {
        let bytes = core::slice::from_raw_parts(l.ptr.as_ptr(), l.layout.size());
        assert!(
            bytes.iter().all(|&b| b == l.byte),
            "{:p} ({:?}) overwritten",
            l.ptr,
            l.layout
        );
        match l.via {
            Via::Kmalloc => mm().kfree(l.ptr).unwrap(),
            Via::Global => MM.dealloc(l.ptr.as_ptr(), l.layout),
            Via::Api2 => mm().deallocate(l.ptr, l.layout),
        }
    }
}

fn sweep(cpu: usize) {
    let mut live = VecDeque::with_capacity(LIVE + 1);
    for size in (1..=MAX_SIZE).filter(|s| s % CPUS == cpu) {
        for shift in 0..=MAX_SHIFT {
            for via in [Via::Kmalloc, Via::Global, Via::Api2] {
                let layout = Layout::from_size_align(size, 1 << shift).unwrap();
                let p = alloc(via, layout);
                let want = if size.is_power_of_two() {
                    layout.align().max(size)
                } else {
                    layout.align()
                };
                assert_eq!(
                    p.as_ptr() as usize % want,
                    0,
                    "{layout:?} through {} gave {p:p}",
                    match via {
                        Via::Kmalloc => "kmalloc_aligned",
                        Via::Global => "GlobalMm",
                        Via::Api2 => "allocator-api2",
                    }
                );
                let byte = (size as u8) ^ (shift as u8);
                // SAFETY: the block is ours and at least `size` bytes long.
                unsafe { core::ptr::write_bytes(p.as_ptr(), byte, size) };
                live.push_back(Live {
                    ptr: p,
                    layout,
                    via,
                    byte,
                });
                while live.len() > LIVE {
                    free(live.pop_front().unwrap());
                }
            }
        }
    }
    live.into_iter().for_each(free);
}

#[test]
fn every_size_and_alignment_through_kmalloc_global_alloc_and_allocator_api2() {
    let mm = mm();
    std::thread::scope(|s| {
        for cpu in 0..CPUS {
            s.spawn(move || sweep(cpu));
        }
    });
    assert_eq!(mm.dealloc_errors(), 0);
    mm.buddy().verify().unwrap();
}
