//! Host stand-ins for a machine (feature `std`): memory and platform hooks, from
//! [`mmkit_addr::host`].
//!
//! * [`HostRam`] is [`mmkit_addr::host::HostMemory`]: simulated physical memory whose virtual
//!   addresses keep the physical alignment of every block up to `HostMemory::ALIGN`, as a
//!   kernel's direct map does, taken zeroed and lazily from the host. The facade adds its
//!   [`KernelMap`](crate::KernelMap) implementation (the way back from a pointer to a physical address).
//! * [`HostCpus`] is a platform that never allocates, so it can sit under a
//!   `#[global_allocator]` built on [`GlobalMm`](crate::GlobalMm).
//! * [`KernelCpus`] never allocates either and costs what a kernel's platform does: each
//!   thread binds itself to one CPU, and the interrupt guard is a per-CPU counter.

pub use mmkit_addr::host::{BindError, CpuBinding, HostCpus, HostMemory as HostRam, KernelCpus};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::KernelMap;
    use mmkit_addr::{PhysAddr, PhysMapper, PhysRange, VirtAddr};

    #[test]
    fn host_ram_maps_both_ways() {
        let ram = HostRam::new(PhysAddr::new(0x20_0000), 8 << 20);
        let r = PhysRange::from_start_size(PhysAddr::new(0x40_0000), 0x1000).unwrap();
        let p = ram.phys_to_virt(r).unwrap();
        assert_eq!(
            ram.virt_to_phys(VirtAddr::new(p.as_ptr() as u64 + 3)),
            Some(PhysAddr::new(0x40_0003))
        );
        assert_eq!(ram.virt_to_phys(VirtAddr::new(8)), None);
    }
}
