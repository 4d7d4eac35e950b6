//! The exception fixup table: instructions that are *allowed* to fault.
//!
//! Linux lets code such as `copy_from_kernel_nofault` touch memory that may not be there: each
//! such instruction has an entry in `__ex_table` giving the address to resume at, and the fault
//! handler, before declaring a fault fatal, looks the faulting PC up in the table. The QEMU
//! kernels do the same so a self-test can provoke a fault on purpose (a write to a read-only
//! page, a read of an address nothing decodes) and check what the CPU reported.
//!
//! Entries are emitted by inline assembly into the `.ex_table` section (which the linker script
//! gathers between `__ex_table_start` and `__ex_table_end`) as two 64-bit absolute addresses:
//!
//! ```text
//! 3:  <instruction that may fault>
//! 4:
//!     .pushsection .ex_table, "a"
//!     .balign 8
//!     .quad 3b, 4b
//!     .popsection
//! ```

/// One entry: a faulting instruction's address and where to continue instead.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExEntry {
    /// Address of the instruction that may fault.
    pub fault_pc: u64,
    /// Address to resume at if it does.
    pub resume_pc: u64,
}

const _: () = assert!(core::mem::size_of::<ExEntry>() == 16);

/// The resume address for a fault at `pc`, if `pc` is in the table. The table is small and
/// unsorted (the linker keeps emission order), so this is a linear search.
pub fn search(table: &[ExEntry], pc: u64) -> Option<u64> {
    table.iter().find(|e| e.fault_pc == pc).map(|e| e.resume_pc)
}

/// A fault address that has more than one entry, if any. `search` takes the first match, so
/// a duplicate (the same faulting address emitted by two copies of an inlined function, whose
/// resume points lie in different frames) would resume in the wrong frame; the kernels check
/// their table with this at boot.
pub fn duplicate(table: &[ExEntry]) -> Option<u64> {
    table
        .iter()
        .enumerate()
        .find(|(i, e)| table[i + 1..].iter().any(|o| o.fault_pc == e.fault_pc))
        .map(|(_, e)| e.fault_pc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_finds_the_entry_for_the_faulting_pc_only() {
        let table = [
            ExEntry {
                fault_pc: 0x1000,
                resume_pc: 0x1004,
            },
            ExEntry {
                fault_pc: 0x2000,
                resume_pc: 0x2008,
            },
        ];
        assert_eq!(search(&table, 0x2000), Some(0x2008));
        assert_eq!(search(&table, 0x1000), Some(0x1004));
        assert_eq!(search(&table, 0x1004), None);
        assert_eq!(search(&[], 0x1000), None);
    }

    #[test]
    fn duplicate_fault_addresses_are_found() {
        let e = |f, r| ExEntry {
            fault_pc: f,
            resume_pc: r,
        };
        assert_eq!(duplicate(&[e(1, 2), e(3, 4)]), None);
        assert_eq!(duplicate(&[e(1, 2), e(3, 4), e(1, 9)]), Some(1));
        assert_eq!(duplicate(&[]), None);
    }
}
