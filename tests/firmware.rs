//! Booting on firmware maps that lie: memory past the physical address limit, corrupt device
//! trees, reserved-memory nodes that cannot be honoured. The machine boots on the memory that
//! is real, or the builder reports an error value; nothing panics.

use mmkit::addr::host::HostPlatform;
use mmkit::addr::{PhysAddr, PhysRange};
use mmkit::bootmem::firmware::e820::{E820Entry, E820Type};
use mmkit::host::HostRam as HostMemory;
use mmkit::{Mm, MmBuilder};

const MIB: u64 = 1 << 20;
/// The simulated machine: 64 MiB of RAM at 0.
const RAM: u64 = 64 * MIB;

fn builder(mem: &HostMemory) -> MmBuilder<'_, HostPlatform> {
    // SAFETY: `mem` is the whole simulated machine and nothing else uses it.
    unsafe { MmBuilder::new(HostPlatform::new(2), mem) }
        .reserve(PhysRange::from_start_size(PhysAddr::new(2 * MIB), 2 * MIB).unwrap())
}

fn assert_boots_on_real_memory(mm: &mut Mm<'_, HostPlatform>) {
    let summary = mm.boot_summary();
    assert_eq!(summary.memory_bytes, RAM - MIB);
    assert_eq!(summary.span, (MIB / 4096, RAM / 4096));
    mm.verify().unwrap();
}

#[test]
fn e820_ram_past_phys_limit_is_clipped_and_the_machine_boots() {
    let mem = HostMemory::new(PhysAddr::new(0), RAM);
    let map = [
        E820Entry::new(MIB, RAM - MIB, E820Type::Ram),
        // Firmware garbage: RAM at 1 << 60, entirely past the 52-bit limit.
        E820Entry::new(1 << 60, 1 << 40, E820Type::Ram),
    ];
    let b = builder(&mem).e820(&map);
    assert_eq!(b.clipped_bytes(), 1 << 40);
    let mut mm = b.boot().expect("boots on the real memory");
    assert_boots_on_real_memory(&mut mm);
}

#[test]
fn e820_entry_to_the_top_of_memory_boots_with_the_machine_limit() {
    let mem = HostMemory::new(PhysAddr::new(0), RAM);
    // One RAM entry from 1 MiB to the top of the 64-bit space.
    let map = [E820Entry::new(MIB, u64::MAX - MIB, E820Type::Ram)];
    let b = builder(&mem).phys_limit(PhysAddr::new(RAM)).e820(&map);
    assert_eq!(b.clipped_bytes(), u64::MAX - RAM);
    let mut mm = b.boot().expect("boots on the real memory");
    assert_boots_on_real_memory(&mut mm);
}

#[test]
fn e820_wrapping_entry_is_an_error_not_a_panic() {
    let mem = HostMemory::new(PhysAddr::new(0), RAM);
    let map = [
        E820Entry::new(MIB, RAM - MIB, E820Type::Ram),
        E820Entry::new(u64::MAX - 0xfff, 0x2000, E820Type::Ram),
    ];
    let Err(err) = builder(&mem).e820(&map).boot() else {
        panic!("a wrapping entry must be refused");
    };
    assert_eq!(
        err,
        mmkit::BootError::E820(mmkit::bootmem::firmware::e820::E820Error::Wraps { index: 1 })
    );
}

#[cfg(feature = "fdt")]
mod device_tree {
    use super::*;
    use mmkit::bootmem::firmware::fdt::{BlobFault, BlobPart, FdtError};
    use mmkit::BootError;
    use mmkit_bootmem::testing::FdtWriter;

    fn tree(extra_reserved: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
        let mut b = FdtWriter::new();
        b.begin("")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2]);
        b.begin("memory@100000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, MIB as u32, 0, (RAM - MIB) as u32])
            .end();
        b.begin("memory@1000000000000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0x1000_0000, 0, 0x100, 0])
            .end();
        b.begin("reserved-memory")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2]);
        extra_reserved(&mut b);
        b.end();
        b.end();
        b.finish()
    }

    #[test]
    fn device_tree_memory_past_phys_limit_is_clipped() {
        let mem = HostMemory::new(PhysAddr::new(0), RAM);
        let blob = tree(|_| {});
        let b = builder(&mem).device_tree(&blob);
        assert_eq!(b.clipped_bytes(), 0x100 << 32);
        assert_boots_on_real_memory(&mut b.boot().unwrap());
    }

    #[test]
    fn corrupt_device_tree_is_a_boot_error() {
        let mem = HostMemory::new(PhysAddr::new(0), RAM);
        let mut blob = tree(|_| {});
        blob[8..12].copy_from_slice(&(1u32 << 20).to_be_bytes());
        let Err(err) = builder(&mem).device_tree(&blob).boot() else {
            panic!("a corrupt device tree must be refused");
        };
        assert!(matches!(
            err,
            BootError::Fdt(FdtError::Header(BlobFault::Block {
                part: BlobPart::Structure,
                ..
            }))
        ));
    }

    #[test]
    fn bad_reserved_alignment_is_a_boot_error_and_adds_no_memory() {
        let mem = HostMemory::new(PhysAddr::new(0), RAM);
        let blob = tree(|b| {
            b.begin("pool")
                .prop_u32s("size", &[0, 0x1000])
                .prop_u32s("alignment", &[0, 3])
                .end();
        });
        let mut b = builder(&mem).device_tree(&blob);
        assert!(b.bootmem_mut().memory_regions().is_empty());
        assert!(matches!(
            b.boot().err().unwrap(),
            BootError::Fdt(FdtError::BadAlignment { align: 3, .. })
        ));
    }
}

#[test]
fn e820_entry_to_the_top_of_memory_boots_on_what_the_kernel_map_reaches() {
    // The firmware map: one RAM entry from 64 MiB to the top of the 64-bit space.
    // Clipped at the 52-bit limit, it still claims petabytes; the builder keeps what its map
    // reaches, so the machine boots on its 64 MiB and says how much it dropped.
    let mem = HostMemory::new(PhysAddr::new(0), RAM);
    let map = [
        E820Entry::new(MIB, 63 * MIB, E820Type::Ram),
        E820Entry::new(64 * MIB, u64::MAX - 64 * MIB, E820Type::Ram),
    ];
    let b = builder(&mem).e820(&map);
    let clipped = b.clipped_bytes();
    assert_eq!(clipped, u64::MAX - (1 << 52));
    let mut mm = b.boot().expect("boots on the real memory");
    assert_boots_on_real_memory(&mut mm);
    let dropped = mm.boot_summary().dropped_bytes;
    assert_eq!(dropped, clipped.saturating_add((1 << 52) - RAM));
}
