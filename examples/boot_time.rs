//! How long `MmBuilder::boot` takes, and the first `kmalloc` after it, as RAM grows; then the
//! same with deferred memmap initialisation (`MmBuilder::deferred_init`) up to 1 TiB, and
//! how long completing it takes on one and on two threads; then two small banks around
//! holes of up to 1 TiB:
//!
//! ```text
//! cargo run --release --example boot_time                  # 1 GiB .. 1 TiB; holes
//! cargo run --release --example boot_time -- 256           # one size, in GiB
//! ```
//!
//! The simulated RAM is host memory mapped lazily (`HostRam`, `MAP_NORESERVE` past what the
//! host has), so only the frames boot touches are faulted in: the page descriptors (16
//! bytes per frame of each present 4 MiB section, a 4-byte entry per section of the span),
//! the page-owner table (one byte per frame of each present section) and the boot
//! structures. Each figure is the best of three; each machine is unmapped after its run
//! (outside the timed part), so the 1 TiB rows need ~4.3 GiB of host memory at a time.
//!
//! The deferred rows split the RAM into two NUMA nodes of equal size and initialise
//! [`EAGER_FRAMES`] frames of each at boot. "boot to kmalloc" is the boot plus the first
//! `kmalloc`; completion (`Mm::complete_deferred_init`, on one thread node after node, or
//! on two, one per node, each bound to its own CPU) is given per GiB of RAM twice: *cold*,
//! the first boot on fresh host memory, where the host faults in (and zeroes) every page of
//! descriptors and owner bytes as completion first writes it; and *warm*, a second boot on
//! the same host memory, whose metadata lands on the same, already mapped pages (what a
//! kernel sees: RAM that is simply there). Warm is bound by memory bandwidth: 16 + 2 bytes
//! written per frame.
//!
//! The hole rows boot two 512 MiB banks, one at 1 MiB and one after a hole of the given
//! size, without and with deferral: with the sparse memmap a hole costs a 4-byte table
//! entry per 4 MiB section in the memmap and in the owner table, nothing per frame.

use std::time::{Duration, Instant};

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::buddy::GfpFlags;
use mmkit::host::HostRam;
use mmkit::{Mm, MmBuilder};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Frames of each node initialised at boot in the deferred rows: 128 MiB (Linux keeps at
/// least a memory section, 128 MiB on x86-64, per node).
const EAGER_FRAMES: u64 = 32768;

fn bank(start: u64, len: u64) -> PhysRange {
    PhysRange::from_start_size(PhysAddr::new(start), len).expect("a valid bank")
}

/// Boot once on `banks` of RAM inside a machine whose physical span is `span` bytes; returns
/// the boot time and the first kmalloc's time.
fn boot_once(span: u64, banks: &[(u64, u64)]) -> (Duration, Duration) {
    let ram = HostRam::new(PhysAddr::new(0), span);
    // SAFETY: `ram` is the whole simulated machine, used by nothing else, and outlives
    // every use of the `Mm` (which is forgotten, never dropped, before `ram` goes).
    let mut b = unsafe { MmBuilder::new(HostPlatform::new(1), &ram) };
    for &(start, len) in banks {
        b = b.memory(bank(start, len));
    }
    let t = Instant::now();
    let mm = b.boot().expect("boot");
    let booted = t.elapsed();
    let t = Instant::now();
    let p = mm.kmalloc(64, GfpFlags::KERNEL).expect("memory");
    let first = t.elapsed();
    // SAFETY: `p` came from `mm` just above and is not used again.
    unsafe { mm.kfree(p) }.expect("a valid free");
    // Keep the allocator as a kernel would (never torn down); only the host memory goes.
    std::mem::forget(mm);
    (booted, first)
}

/// Complete every node of `mm` on `threads` threads (1: node after node; 2: one per node).
fn complete(mm: &Mm<'_, HostPlatform>, threads: usize) {
    let nodes = mm.boot_summary().nr_nodes;
    if threads == 1 {
        for node in 0..nodes {
            let _ = mm.complete_deferred_init(node);
        }
        return;
    }
    std::thread::scope(|s| {
        for node in 0..nodes {
            s.spawn(move || {
                mm.platform().bind_current_thread(node);
                let _ = mm.complete_deferred_init(node);
            });
        }
    });
}

/// What one deferred boot measured.
#[derive(Clone, Copy)]
struct Deferred {
    /// Boot plus the first kmalloc.
    first: Duration,
    /// Completion, descriptor and owner-table memory faulted in by the host as it goes.
    cold: Duration,
    /// Completion of a second boot on the same host memory: the same metadata pages, now
    /// faulted in (what a kernel sees: RAM that is just there).
    warm: Duration,
}

/// Boot `banks` (inside a `span`-byte machine) as two nodes split at `split` with deferral,
/// kmalloc once and complete on `threads` threads; then boot the same machine again and
/// complete it again (warm).
fn deferred_once(span: u64, banks: &[(u64, u64)], split: u64, threads: usize) -> Deferred {
    let ram = HostRam::new(PhysAddr::new(0), span);
    let run = || {
        // SAFETY: as in `boot_once`; the second boot on `ram` starts after the first `Mm` is
        // done with (forgotten, never used again).
        let mut b = unsafe { MmBuilder::new(HostPlatform::new(2), &ram) };
        for &(start, len) in banks {
            b = b.memory(bank(start, len));
        }
        let b = b
            .node(1, bank(split, span - split))
            .deferred_init(EAGER_FRAMES);
        let t = Instant::now();
        let mm = b.boot().expect("boot");
        let p = mm.kmalloc(64, GfpFlags::KERNEL).expect("memory");
        let first = t.elapsed();
        // SAFETY: `p` came from `mm` just above and is not used again.
        unsafe { mm.kfree(p) }.expect("a valid free");
        let t = Instant::now();
        complete(&mm, threads);
        let done = t.elapsed();
        assert_eq!(mm.deferred_frames(), 0, "completed");
        std::mem::forget(mm);
        (first, done)
    };
    let (first, cold) = run();
    let (_, warm) = run();
    Deferred { first, cold, warm }
}

/// The best of three runs, per figure.
fn best_deferred(run: impl Fn() -> Deferred) -> Deferred {
    let runs: Vec<Deferred> = (0..3).map(|_| run()).collect();
    Deferred {
        first: runs.iter().map(|r| r.first).min().expect("runs"),
        cold: runs.iter().map(|r| r.cold).min().expect("runs"),
        warm: runs.iter().map(|r| r.warm).min().expect("runs"),
    }
}

fn best_of_three<T: Copy>(run: impl Fn() -> (Duration, T)) -> (Duration, T) {
    (0..3)
        .map(|_| run())
        .min_by_key(|&(b, _)| b)
        .expect("three runs")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let one: Option<u64> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let (eager, deferred): (Vec<u64>, Vec<u64>) = match one {
        Some(g) => (vec![g], vec![g]),
        None => (vec![1, 4, 16, 64, 256], vec![1, 4, 16, 64, 256, 1024]),
    };
    println!("RAM       boot (ms)   per GiB (ms)   first kmalloc (µs)");
    for g in &eager {
        // RAM from 1 MiB, as a PC's.
        let (b, k) = best_of_three(|| boot_once(g * GIB, &[(MIB, g * GIB - MIB)]));
        println!(
            "{:>4} GiB  {:>9.2}   {:>12.2}   {:>18.1}",
            g,
            ms(b),
            ms(b) / *g as f64,
            k.as_secs_f64() * 1e6
        );
    }
    println!();
    println!(
        "deferred init, two nodes, {} MiB each at boot; completion in ms per GiB, cold (host \
         faults the metadata pages in) and warm (pages already there)",
        EAGER_FRAMES * 4096 / MIB
    );
    println!("RAM       boot to kmalloc (ms)   1 thread cold   warm   2 threads cold   warm");
    for g in &deferred {
        let span = g * GIB;
        let banks = [(MIB, span - MIB)];
        let one = best_deferred(|| deferred_once(span, &banks, span / 2, 1));
        let two = best_deferred(|| deferred_once(span, &banks, span / 2, 2));
        let per = |d: Duration| ms(d) / *g as f64;
        println!(
            "{:>4} GiB  {:>20.2}   {:>13.2}   {:>4.2}   {:>14.2}   {:>4.2}",
            g,
            ms(one.first.min(two.first)),
            per(one.cold),
            per(one.warm),
            per(two.cold),
            per(two.warm)
        );
    }
    if one.is_some() {
        return;
    }
    println!();
    println!("two 512 MiB banks around a hole of   boot (ms)   deferred boot to kmalloc (ms)");
    for hole in [0u64, 16, 64, 1024] {
        let second = 512 * MIB + hole * GIB;
        let span = second + 512 * MIB;
        let banks = [(MIB, 511 * MIB), (second, 512 * MIB)];
        let (b, _) = best_of_three(|| boot_once(span, &banks));
        let d = best_deferred(|| deferred_once(span, &banks, second, 1));
        println!("{:>32} GiB   {:>9.2}   {:>29.2}", hole, ms(b), ms(d.first));
    }
}
