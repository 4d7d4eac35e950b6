//! What the aarch64 kernel needs from a flattened device tree, read with the `fdt` crate.
//!
//! * RAM: the `reg` ranges of every root child whose name is `memory` / `memory@...` or whose
//!   `device_type` is `"memory"` → [`RegionKind::Ram`].
//! * Reserved: the `reg` ranges of `/reserved-memory` children (both `no-map` and reusable
//!   ones; children with only `size`/`alloc-ranges` are dynamic requests, not reservations yet,
//!   and are skipped), and the `/memreserve/` block → [`RegionKind::Reserved`]. These lie inside
//!   RAM, which [`MemoryMap`] allows.
//! * `/chosen/bootargs` (QEMU's `-append`) and the PSCI conduit from `/psci/method`;
//! * the CPUs' MPIDRs from `/cpus/cpu@*/reg`, and a GICv2's distributor and CPU interface.
//!
//! The blob itself is not in any of these lists (Linux reserves it separately with
//! `early_init_fdt_reserve_self`); the kernel excludes `[blob, blob + total_size)` itself.
//!
//! The `fdt` crate trusts the blob's `#address-cells`/`#size-cells` and panics on a malformed
//! cell count; firmware-provided trees are trusted input here, and a panic in the kernel is
//! reported on the serial port as a failure.

use core::fmt;

use fdt::Fdt;

use crate::memmap::{AddRegionError, MemoryMap, RegionKind};

/// The FDT header magic, big-endian in the blob.
pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// Bytes of header needed by [`total_size`].
pub const HEADER_PREFIX: usize = 8;

/// How PSCI calls are made (`/psci/method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciConduit {
    /// `hvc #0`: a hypervisor (or QEMU without EL2/EL3 emulation) implements PSCI.
    Hvc,
    /// `smc #0`: secure firmware implements PSCI.
    Smc,
}

/// Why a device tree could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtbError {
    /// The first word is not [`FDT_MAGIC`].
    BadMagic(u32),
    /// The blob is shorter than its header says, or than a header.
    Truncated,
    /// There is no root node.
    NoRoot,
    /// A `reg` property could not be decoded (more than two cells per number).
    BadReg,
    /// A range could not be added to the memory map.
    Map(AddRegionError),
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "device tree magic {m:#x}, expected {FDT_MAGIC:#x}"),
            Self::Truncated => f.write_str("device tree truncated"),
            Self::NoRoot => f.write_str("device tree has no root node"),
            Self::BadReg => f.write_str("a reg property has more than two cells per number"),
            Self::Map(e) => write!(f, "device tree range: {e}"),
        }
    }
}

/// What [`read`] found besides the ranges it added to the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtbFacts<'a> {
    /// The blob's `totalsize`.
    pub total_size: usize,
    /// `/chosen/bootargs`, if present.
    pub bootargs: Option<&'a str>,
    /// The PSCI conduit, if `/psci` names a known method.
    pub psci: Option<PsciConduit>,
    /// How many RAM ranges were added.
    pub ram_ranges: usize,
    /// How many reserved ranges were added.
    pub reserved_ranges: usize,
    /// The CPUs under `/cpus` (their `reg`: the MPIDR affinity fields).
    pub cpus: DtCpus,
    /// A GICv2 (`arm,cortex-a15-gic` or `arm,gic-400`): distributor and CPU interface bases.
    pub gic_v2: Option<(u64, u64)>,
}

/// The CPUs a device tree lists, in tree order (at most [`DtCpus::CAPACITY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtCpus {
    mpidrs: [u64; DtCpus::CAPACITY],
    len: usize,
    /// CPU nodes beyond the capacity, not recorded.
    pub dropped: usize,
}

impl DtCpus {
    /// How many CPUs are recorded.
    pub const CAPACITY: usize = 16;

    const fn new() -> Self {
        Self {
            mpidrs: [0; Self::CAPACITY],
            len: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, mpidr: u64) {
        if self.len < Self::CAPACITY {
            self.mpidrs[self.len] = mpidr;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The recorded MPIDR values.
    pub fn mpidrs(&self) -> &[u64] {
        &self.mpidrs[..self.len]
    }
}

/// The blob's `totalsize` from its first [`HEADER_PREFIX`] bytes, after checking the magic:
/// how much memory to treat as the blob before building a slice over it.
pub fn total_size(prefix: [u8; HEADER_PREFIX]) -> Result<usize, DtbError> {
    let magic = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let size = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    // A header alone is 40 bytes; anything smaller is corrupt.
    if size < 40 {
        return Err(DtbError::Truncated);
    }
    Ok(size)
}

/// Add the RAM and reserved ranges of `blob` to `map` and return the other facts.
pub fn read<'a>(blob: &'a [u8], map: &mut MemoryMap) -> Result<DtbFacts<'a>, DtbError> {
    let prefix: [u8; HEADER_PREFIX] = blob
        .get(..HEADER_PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or(DtbError::Truncated)?;
    total_size(prefix)?;
    let fdt = Fdt::new(blob).map_err(|e| match e {
        fdt::FdtError::BadMagic => DtbError::BadMagic(0),
        _ => DtbError::Truncated,
    })?;
    let root = fdt.find_node("/").ok_or(DtbError::NoRoot)?;

    let mut facts = DtbFacts {
        total_size: fdt.total_size(),
        bootargs: None,
        psci: None,
        ram_ranges: 0,
        reserved_ranges: 0,
        cpus: DtCpus::new(),
        gic_v2: None,
    };

    for node in root.children() {
        let named_memory = node.name == "memory" || node.name.starts_with("memory@");
        let typed_memory = node
            .property("device_type")
            .and_then(|p| p.as_str())
            .is_some_and(|t| t == "memory");
        if named_memory || typed_memory {
            facts.ram_ranges += add_reg(node, RegionKind::Ram, map)?;
        }
    }
    if let Some(reserved) = fdt.find_node("/reserved-memory") {
        for child in reserved.children() {
            if child.property("reg").is_some() {
                facts.reserved_ranges += add_reg(child, RegionKind::Reserved, map)?;
            }
        }
    }
    for r in fdt.memory_reservations() {
        if r.size() > 0 {
            map.add(
                r.address() as usize as u64,
                r.size() as u64,
                RegionKind::Reserved,
            )
            .map_err(DtbError::Map)?;
            facts.reserved_ranges += 1;
        }
    }

    facts.bootargs = fdt
        .find_node("/chosen")
        .and_then(|c| c.property("bootargs"))
        .and_then(|p| p.as_str());
    facts.psci = fdt
        .find_node("/psci")
        .and_then(|p| p.property("method"))
        .and_then(|m| m.as_str())
        .and_then(|m| match m {
            "hvc" => Some(PsciConduit::Hvc),
            "smc" => Some(PsciConduit::Smc),
            _ => None,
        });
    if let Some(cpus) = fdt.find_node("/cpus") {
        for cpu in cpus.children() {
            let is_cpu = cpu
                .property("device_type")
                .and_then(|p| p.as_str())
                .is_some_and(|t| t == "cpu");
            if let (true, Some(mut reg)) = (is_cpu, cpu.reg()) {
                if let Some(r) = reg.next() {
                    facts.cpus.push(r.starting_address as usize as u64);
                }
            }
        }
    }
    facts.gic_v2 = fdt
        .find_compatible(&["arm,cortex-a15-gic", "arm,gic-400"])
        .and_then(|gic| {
            let mut reg = gic.reg()?;
            let dist = reg.next()?.starting_address as usize as u64;
            let cpu = reg.next()?.starting_address as usize as u64;
            Some((dist, cpu))
        });
    Ok(facts)
}

/// Add every non-empty `reg` range of `node` as `kind`; returns how many were added.
fn add_reg(
    node: fdt::node::FdtNode<'_, '_>,
    kind: RegionKind,
    map: &mut MemoryMap,
) -> Result<usize, DtbError> {
    let mut added = 0;
    for region in node.reg().ok_or(DtbError::BadReg)? {
        let size = region.size.unwrap_or(0) as u64;
        if size == 0 {
            continue;
        }
        map.add(region.starting_address as usize as u64, size, kind)
            .map_err(DtbError::Map)?;
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmkit_bootmem::testing::FdtWriter as Builder;

    /// The shape of QEMU's `virt` tree, plus a reserved-memory node and a memreserve entry.
    fn virt_like() -> Vec<u8> {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2])
            .begin("psci")
            .prop_str("method", "hvc")
            .end()
            .begin("memory@40000000")
            .prop_str("device_type", "memory")
            .prop_u32s("reg", &[0, 0x4000_0000, 0, 0x2000_0000])
            .end()
            .begin("reserved-memory")
            .prop_u32s("#address-cells", &[2])
            .prop_u32s("#size-cells", &[2])
            .begin("fw@5fe00000")
            .prop_u32s("reg", &[0, 0x5fe0_0000, 0, 0x20_0000])
            .prop("no-map", &[])
            .end()
            .begin("cma")
            .prop_u32s("size", &[0, 0x100_0000])
            .end()
            .end()
            .begin("chosen")
            .prop_str("bootargs", "mmkit.expect_mem=512M")
            .end()
            .begin("intc@8000000")
            .prop_str("compatible", "arm,cortex-a15-gic")
            .prop_u32s(
                "reg",
                &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x0801_0000, 0, 0x1_0000],
            )
            .end()
            .begin("cpus")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[0])
            .begin("cpu@0")
            .prop_str("device_type", "cpu")
            .prop_u32s("reg", &[0])
            .end()
            .begin("cpu@1")
            .prop_str("device_type", "cpu")
            .prop_u32s("reg", &[1])
            .end()
            .begin("cpu-map")
            .end()
            .end()
            .end();
        b.memreserve(0x4800_0000, 0x1000).finish()
    }

    #[test]
    fn read_finds_memory_reserved_ranges_bootargs_and_psci() {
        let blob = virt_like();
        let mut map = MemoryMap::new();
        let facts = read(&blob, &mut map).unwrap();
        assert_eq!(facts.total_size, blob.len());
        assert_eq!(facts.bootargs, Some("mmkit.expect_mem=512M"));
        assert_eq!(facts.psci, Some(PsciConduit::Hvc));
        assert_eq!(facts.cpus.mpidrs(), &[0, 1]);
        assert_eq!(facts.gic_v2, Some((0x0800_0000, 0x0801_0000)));
        assert_eq!(facts.ram_ranges, 1);
        assert_eq!(facts.reserved_ranges, 2);
        map.sort();
        assert_eq!(map.check(), Ok(()));
        assert_eq!(map.total(RegionKind::Ram), 0x2000_0000);
        assert_eq!(map.total(RegionKind::Reserved), 0x20_0000 + 0x1000);
        let first = map.regions()[0];
        assert_eq!(first.range.start().as_u64(), 0x4000_0000);
        assert_eq!(first.kind, RegionKind::Ram);
    }

    #[test]
    fn read_accepts_one_cell_addresses_and_several_memory_nodes() {
        let mut b = Builder::new();
        b.begin("")
            .prop_u32s("#address-cells", &[1])
            .prop_u32s("#size-cells", &[1])
            .begin("memory@0")
            .prop_u32s("reg", &[0x0, 0x1000_0000, 0x2000_0000, 0x1000_0000])
            .end()
            .begin("memory")
            .prop_u32s("reg", &[0x8000_0000, 0x100_0000])
            .end()
            .end();
        let blob = b.finish();
        let mut map = MemoryMap::new();
        let facts = read(&blob, &mut map).unwrap();
        assert_eq!(facts.ram_ranges, 3);
        assert_eq!(facts.psci, None);
        assert_eq!(facts.bootargs, None);
        assert_eq!(facts.cpus.mpidrs(), &[] as &[u64]);
        assert_eq!(facts.gic_v2, None);
        assert_eq!(map.total(RegionKind::Ram), 0x2100_0000);
    }

    #[test]
    fn read_rejects_bad_magic_and_truncated_blobs() {
        let mut blob = virt_like();
        let mut map = MemoryMap::new();
        assert_eq!(read(&blob[..4], &mut map), Err(DtbError::Truncated));
        assert_eq!(
            read(&blob[..blob.len() - 1], &mut map),
            Err(DtbError::Truncated)
        );
        blob[0] = 0;
        assert!(matches!(read(&blob, &mut map), Err(DtbError::BadMagic(_))));
        assert!(map.is_empty());
    }

    #[test]
    fn total_size_checks_the_magic_and_a_minimum_size() {
        let blob = virt_like();
        let prefix: [u8; 8] = blob[..8].try_into().unwrap();
        assert_eq!(total_size(prefix), Ok(blob.len()));
        let mut bad = prefix;
        bad[3] = 0;
        assert!(matches!(total_size(bad), Err(DtbError::BadMagic(_))));
        let mut tiny = prefix;
        tiny[4..].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(total_size(tiny), Err(DtbError::Truncated));
    }

    #[test]
    fn a_full_memory_map_is_reported() {
        let blob = virt_like();
        let mut map = MemoryMap::new();
        for i in 0..MemoryMap::CAPACITY as u64 {
            map.add(i << 32, 0x1000, RegionKind::Reserved).unwrap();
        }
        assert_eq!(
            read(&blob, &mut map),
            Err(DtbError::Map(AddRegionError::Full))
        );
    }
}
