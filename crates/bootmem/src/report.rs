//! The region report, after Linux's debugfs `memblock/memory` and `memblock/reserved` views:
//! one line per region with its index, inclusive range, size, node and flags, under a header
//! with the list's region count and total size.
//!
//! ```text
//! memory: 2 regions, 0x7ff7e000 bytes (2047 MiB)
//!    0: 0x0000000000001000..0x000000000009efff 0x000000000009e000 node 0 NONE
//!    1: 0x0000000000100000..0x000000007ffdffff 0x000000007fee0000 node 0 NONE
//! reserved: ...
//! ```

use core::fmt;

use crate::bootmem::Bootmem;
use crate::list::ListKind;
use crate::region::Region;

fn write_list(f: &mut fmt::Formatter<'_>, kind: ListKind, regions: &[Region]) -> fmt::Result {
    let total: u64 = regions.iter().map(Region::size).sum();
    writeln!(
        f,
        "{}: {} regions, {:#x} bytes ({} MiB)",
        kind.name(),
        regions.len(),
        total,
        total >> 20
    )?;
    for (i, r) in regions.iter().enumerate() {
        writeln!(
            f,
            "{:>4}: {:#018x}..{:#018x} {:#018x} node {:<2} {}",
            i,
            r.raw_base(),
            r.raw_end() - 1,
            r.size(),
            r.nid(),
            r.flags()
        )?;
    }
    Ok(())
}

/// Both lists, memory first.
pub(crate) fn write_lists(
    f: &mut fmt::Formatter<'_>,
    memory: &[Region],
    reserved: &[Region],
) -> fmt::Result {
    write_list(f, ListKind::Memory, memory)?;
    write_list(f, ListKind::Reserved, reserved)
}

impl<const N: usize> fmt::Display for Bootmem<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lists(f, self.memory_regions(), self.reserved_regions())
    }
}

impl<const N: usize> fmt::Debug for Bootmem<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bootmem")
            .field("memory", &self.memory_regions())
            .field("reserved", &self.reserved_regions())
            .field("bottom_up", &self.bottom_up)
            .field("limit", &self.current_limit())
            .field("hotplug", &self.hotplug)
            .field("mirror_first", &self.mirror_first)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use crate::{Bootmem, NodeId, RegionFlags};
    use mmkit_addr::PhysAddr;
    use std::string::ToString;

    #[test]
    fn report_lists_regions_like_memblock_debugfs() {
        let mut bm: Bootmem = Bootmem::new();
        bm.add(PhysAddr::new(0x1000), 0x9e000).unwrap();
        bm.add_node(
            PhysAddr::new(0x1_0000_0000),
            0x4000_0000,
            NodeId::new(1),
            RegionFlags::HOTPLUG,
        )
        .unwrap();
        bm.reserve(PhysAddr::new(0x2000), 0x1000).unwrap();
        let text = bm.to_string();
        let expected = "\
memory: 2 regions, 0x4009e000 bytes (1024 MiB)
   0: 0x0000000000001000..0x000000000009efff 0x000000000009e000 node 0  NONE
   1: 0x0000000100000000..0x000000013fffffff 0x0000000040000000 node 1  HOTPLUG
reserved: 1 regions, 0x1000 bytes (0 MiB)
   0: 0x0000000000002000..0x0000000000002fff 0x0000000000001000 node -  NONE
";
        assert_eq!(text, expected);
    }
}
