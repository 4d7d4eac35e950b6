//! How long `MmBuilder::boot` takes, and the first `kmalloc` after it, as RAM grows and as
//! holes grow between two small banks of RAM:
//!
//! ```text
//! cargo run --release --example boot_time                  # 1, 4, 16 and 64 GiB; holes
//! cargo run --release --example boot_time -- 256           # one size, in GiB
//! ```
//!
//! The simulated RAM is host memory mapped lazily (`HostRam`), so only the frames boot
//! touches are faulted in: the page descriptors (16 bytes per frame of each node's span), the
//! page-owner table (one byte per frame from the first to the last frame) and the boot
//! structures. Each figure is the best of three boots on one CPU; the host's page faults on
//! those structures are part of it, as a kernel's cache misses on them would be.
//!
//! The hole rows boot two 512 MiB banks, one at 0 and one after a hole of the given size:
//! every frame of the hole still gets a descriptor and an owner byte today, which is what
//! issue 15's sparse memmap is to remove.

use std::time::{Duration, Instant};

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::MmBuilder;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Boot once on `banks` of RAM inside a machine whose physical span is `span` bytes; returns
/// the boot time and the first kmalloc's time.
fn boot_once(span: u64, banks: &[(u64, u64)]) -> (Duration, Duration) {
    // Leaked: a booted `Mm` borrows its RAM for good, and a kernel never tears one down.
    let ram: &'static HostRam = Box::leak(Box::new(HostRam::new(PhysAddr::new(0), span)));
    // SAFETY: `ram` is the whole simulated machine, used by nothing else, and lives forever.
    let mut b = unsafe { MmBuilder::new(HostPlatform::new(1), ram) };
    for &(start, len) in banks {
        let r = PhysRange::from_start_size(PhysAddr::new(start), len).expect("a valid bank");
        b = b.memory(r);
    }
    let t = Instant::now();
    let mm = b.boot().expect("boot");
    let booted = t.elapsed();
    let t = Instant::now();
    let p = mm.kmalloc(64, GfpFlags::KERNEL).expect("memory");
    let first = t.elapsed();
    // SAFETY: `p` came from `mm` just above and is not used again.
    unsafe { mm.kfree(p) }.expect("a valid free");
    // Keep the machine as a kernel would (dropping 64 GiB of descriptors costs time too).
    std::mem::forget(mm);
    (booted, first)
}

fn best_of_three(span: u64, banks: &[(u64, u64)]) -> (Duration, Duration) {
    (0..3)
        .map(|_| boot_once(span, banks))
        .min_by_key(|&(b, _)| b)
        .expect("three runs")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let sizes: Vec<u64> = match std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        Some(g) => vec![g],
        None => vec![1, 4, 16, 64],
    };
    println!("RAM       boot (ms)   per GiB (ms)   first kmalloc (µs)");
    for g in &sizes {
        // RAM from 1 MiB, as a PC's.
        let (b, k) = best_of_three(g * GIB, &[(MIB, g * GIB - MIB)]);
        println!(
            "{:>4} GiB  {:>9.2}   {:>12.2}   {:>18.1}",
            g,
            ms(b),
            ms(b) / *g as f64,
            k.as_secs_f64() * 1e6
        );
    }
    if std::env::args().nth(1).is_some() {
        return;
    }
    println!();
    println!("two 512 MiB banks around a hole of   boot (ms)");
    for hole in [0u64, 16, 64] {
        let second = 512 * MIB + hole * GIB;
        let span = second + 512 * MIB;
        let (b, _) = best_of_three(span, &[(MIB, 511 * MIB), (second, 512 * MIB)]);
        println!("{:>32} GiB   {:>9.2}", hole, ms(b));
    }
}
