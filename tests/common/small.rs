//! A small machine for the facade tests: 63 MiB of RAM at 1 MiB, one CPU.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::host::HostRam;
use mmkit::{Mm, MmBuilder};

const MIB: u64 = 1 << 20;

/// Boot `mem` (at least 64 MiB from physical 0) with RAM at `[1 MiB, 64 MiB)`.
pub fn boot(mem: &'static HostRam) -> Mm<'static, HostPlatform> {
    let ram = PhysRange::from_start_size(PhysAddr::new(MIB), 63 * MIB).unwrap();
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(1), mem) }
        .memory(ram)
        .boot()
        .expect("boot")
}
