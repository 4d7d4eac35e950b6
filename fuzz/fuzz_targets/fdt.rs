//! Fuzz firmware ingestion (mmkit-bootmem `firmware`), device trees first: every input is fed
//! to `firmware::*::ingest` on a bootmem that already holds memory and a reservation, and to
//! `MmBuilder` booting a small host machine.
//!
//! * `Raw`: arbitrary bytes as a device-tree blob (mostly header and block errors);
//! * `Mutated`: a structurally valid blob written with `testing::FdtWriter` from fuzzed
//!   memory nodes, `/memreserve/` entries and `/reserved-memory` children, then corrupted
//!   byte by byte and word by word (reaching the structure-block and property checks);
//! * `E820` / `Uefi`: arbitrary maps through the same two paths.
//!
//! Checked: nothing panics; `verify()` holds after every ingest; a refused input leaves both
//! region lists and the free bytes exactly as they were; `boot()` either boots a machine that
//! passes `Mm::verify` or returns an error. The boots use a physical address limit at the end
//! of host RAM, as a kernel that knows its machine would; the plain ingest keeps the default.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit::host::{HostCpus, HostRam};
use mmkit::MmBuilder;
use mmkit_addr::{PhysAddr, PhysRange};
use mmkit_bootmem::firmware::e820::{self, E820Entry};
use mmkit_bootmem::firmware::{fdt, uefi};
use mmkit_bootmem::testing::FdtWriter;
use mmkit_bootmem::{Bootmem, RangeFilter, Region};

const MIB: u64 = 1 << 20;
/// The host machine booted per input: 16 MiB of RAM at 0.
const RAM: u64 = 16 * MIB;

#[derive(Arbitrary, Debug)]
struct ReservedChild {
    /// `Some((base, size))`: a static `reg`; `None`: a dynamic `size` region.
    reg: Option<(u32, u32)>,
    size: u32,
    alignment: Option<u32>,
    alloc_ranges: Vec<(u32, u32)>,
    no_map: bool,
    disabled: bool,
}

#[derive(Arbitrary, Debug)]
struct MemoryNode {
    /// `(base, size)` pairs in units of 64 KiB.
    reg: Vec<(u16, u16)>,
    numa_node: Option<u8>,
    hotpluggable: bool,
}

#[derive(Arbitrary, Debug)]
struct Tree {
    memory: Vec<MemoryNode>,
    memreserve: Vec<(u32, u32)>,
    reserved: Vec<ReservedChild>,
    /// `#size-cells` of `/reserved-memory`: 1 or 2 (others are errors, also worth a try).
    resmem_size_cells: u8,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Byte { at: u16, value: u8 },
    Ones { word: u16 },
    Truncate { len: u16 },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Mutated(Tree, Vec<Mutation>),
    E820(Vec<(u64, u64, u32)>),
    Uefi(Vec<(u32, u64, u64, u64)>),
}

fn cells64(x: u64) -> [u32; 2] {
    [(x >> 32) as u32, x as u32]
}

fn write_tree(t: &Tree) -> Vec<u8> {
    let mut b = FdtWriter::new();
    for &(a, s) in t.memreserve.iter().take(8) {
        b.memreserve(u64::from(a), u64::from(s));
    }
    b.begin("")
        .prop_u32s("#address-cells", &[2])
        .prop_u32s("#size-cells", &[2]);
    for (i, node) in t.memory.iter().take(8).enumerate() {
        let reg: Vec<u32> = node
            .reg
            .iter()
            .take(8)
            .flat_map(|&(base, size)| {
                let (base, size) = (u64::from(base) << 16, u64::from(size) << 16);
                cells64(base).into_iter().chain(cells64(size))
            })
            .collect();
        b.begin(&format!("memory@{i}"))
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &reg);
        if let Some(nid) = node.numa_node {
            b.prop_u32s("numa-node-id", &[u32::from(nid % 4)]);
        }
        if node.hotpluggable {
            b.prop("hotpluggable", &[]);
        }
        b.end();
    }
    let sc = u32::from(t.resmem_size_cells % 4);
    let num = |x: u32| -> Vec<u32> {
        match sc {
            1 => vec![x],
            2 => vec![0, x],
            _ => vec![x; sc as usize],
        }
    };
    b.begin("reserved-memory")
        .prop_u32s("#address-cells", &[1])
        .prop_u32s("#size-cells", &[sc]);
    for (i, c) in t.reserved.iter().take(8).enumerate() {
        b.begin(&format!("region{i}"));
        if let Some((base, size)) = c.reg {
            let mut reg = vec![base];
            reg.extend(num(size));
            b.prop_u32s("reg", &reg);
        } else {
            b.prop_u32s("size", &num(c.size));
        }
        if let Some(a) = c.alignment {
            b.prop_u32s("alignment", &num(a));
        }
        if !c.alloc_ranges.is_empty() {
            let r: Vec<u32> = c
                .alloc_ranges
                .iter()
                .take(4)
                .flat_map(|&(base, size)| std::iter::once(base).chain(num(size)))
                .collect();
            b.prop_u32s("alloc-ranges", &r);
        }
        if c.no_map {
            b.prop("no-map", &[]);
        }
        if c.disabled {
            b.prop_str("status", "disabled");
        }
        b.end();
    }
    b.end();
    b.end();
    b.finish()
}

fn mutate(blob: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations.iter().take(16) {
        match *m {
            Mutation::Byte { at, value } if !blob.is_empty() => {
                let i = usize::from(at) % blob.len();
                blob[i] = value;
            }
            Mutation::Ones { word } if blob.len() >= 4 => {
                let i = (usize::from(word) % (blob.len() / 4)) * 4;
                blob[i..i + 4].fill(0xff);
            }
            Mutation::Truncate { len } => blob.truncate(usize::from(len)),
            _ => {}
        }
    }
}

/// Everything observable about a bootmem.
fn snapshot(bm: &Bootmem) -> (Vec<Region>, Vec<Region>, u64) {
    let free = bm
        .free_ranges(RangeFilter::ALLOCATABLE)
        .map(|f| f.range.len())
        .sum();
    (
        bm.memory_regions().to_vec(),
        bm.reserved_regions().to_vec(),
        free,
    )
}

/// Ingest into a bootmem that already holds something; a refusal must change nothing.
fn ingest_checked<E: std::fmt::Debug>(ingest: impl FnOnce(&mut Bootmem) -> Result<(), E>) {
    let mut bm: Bootmem = Bootmem::new();
    bm.add(PhysAddr::new(0x10_0000), 0x100_0000).unwrap();
    bm.reserve(PhysAddr::new(0x20_0000), 0x1000).unwrap();
    let before = snapshot(&bm);
    let result = ingest(&mut bm);
    bm.verify().unwrap();
    if let Err(e) = result {
        assert_eq!(snapshot(&bm), before, "refused input {e:?} changed bootmem");
    }
}

/// Boot the host machine `mem` on the firmware input; an error is fine, a panic is not.
fn boot_checked<'m>(
    mem: &'m HostRam,
    feed: impl FnOnce(MmBuilder<'m, HostCpus<1>>) -> MmBuilder<'m, HostCpus<1>>,
) {
    // `HostCpus` owns no heap memory: a booted page allocator keeps its platform in boot
    // memory and never drops it, as in a kernel.
    // SAFETY: `mem` is the whole machine and nothing else uses it.
    let b = unsafe { MmBuilder::new(HostCpus::<1>::new(), mem) }
        .phys_limit(PhysAddr::new(RAM))
        .reserve(PhysRange::from_start_size(PhysAddr::new(0), 0x1000).unwrap());
    if let Ok(mut mm) = feed(b).boot() {
        mm.verify().unwrap();
    }
}

/// A fresh host machine: 16 MiB of RAM at 0.
fn machine() -> HostRam {
    HostRam::new(PhysAddr::new(0), RAM)
}

fn uefi_bytes(descs: &[(u32, u64, u64, u64)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(ty, start, pages, attribute) in descs.iter().take(32) {
        bytes.extend_from_slice(&(ty % 16).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&(start & !0xfff).to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&pages.to_le_bytes());
        bytes.extend_from_slice(&attribute.to_le_bytes());
    }
    bytes
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(_) | Input::Mutated(..) => {
            let blob = match input {
                Input::Raw(bytes) => bytes,
                Input::Mutated(tree, mutations) => {
                    let mut blob = write_tree(&tree);
                    mutate(&mut blob, &mutations);
                    blob
                }
                _ => unreachable!(),
            };
            ingest_checked(|bm| fdt::ingest(bm, &blob).map(drop));
            boot_checked(&machine(), |b| b.device_tree(&blob));
        }
        Input::E820(entries) => {
            let map: Vec<E820Entry> = entries
                .iter()
                .take(32)
                .map(|&(addr, size, kind)| E820Entry {
                    addr,
                    size,
                    kind: kind % 8,
                })
                .collect();
            ingest_checked(|bm| e820::ingest(bm, &map).map(drop));
            boot_checked(&machine(), |b| b.e820(&map));
        }
        Input::Uefi(descs) => {
            let bytes = uefi_bytes(&descs);
            if let Ok(map) = uefi::UefiMemoryMap::new(&bytes, 40, 1) {
                ingest_checked(|bm| uefi::ingest(bm, &map).map(drop));
                boot_checked(&machine(), |b| b.uefi(&map));
            }
        }
    }
});
