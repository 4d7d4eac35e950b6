//! Fuzz mmkit-bootmem: an `Arbitrary` sequence of add / remove / reserve / free / mark /
//! set-node / alloc / policy actions, replayed against the page-bitmap reference model the
//! proptest state machine uses (crates/bootmem/tests/common/page_model.rs): `verify()`, both
//! region lists, the free ranges and every allocation address are checked after each step, and
//! the hand-off blocks at the end.
//!
//! Inputs are action lists, so longer inputs reach deeper states; for a run longer than the
//! CI smoke test, let libFuzzer use long inputs at once:
//! `cargo fuzz run bootmem -- -max_total_time=300 -len_control=0 -max_len=1024`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/bootmem/tests/common/page_model.rs"]
mod page_model;

use page_model::{run, Op, PAGES};

#[derive(Arbitrary, Debug)]
enum Action {
    Add {
        start: u16,
        len: u8,
        nid: u8,
        flags: u8,
    },
    Remove {
        start: u16,
        len: u8,
    },
    Reserve {
        start: u16,
        len: u8,
    },
    Free {
        start: u16,
        len: u8,
    },
    Mark {
        start: u16,
        len: u8,
        flags: u8,
        set: bool,
    },
    SetNode {
        start: u16,
        len: u8,
        nid: u8,
    },
    Alloc {
        pages: u8,
        align_shift: u8,
        min: u16,
        max: u16,
        node: Option<u8>,
        exact: bool,
        zeroed: bool,
    },
    BottomUp(bool),
    Limit(u16),
    Hotplug(u8),
    MirrorFirst(bool),
}

/// A page span inside the modelled space, at least one page long.
fn span(start: u16, len: u8) -> (usize, usize) {
    let start = start as usize % PAGES;
    let len = (len as usize % 64).max(1).min(PAGES - start);
    (start, len)
}

impl Action {
    fn to_op(&self) -> Op {
        match *self {
            Action::Add {
                start,
                len,
                nid,
                flags,
            } => {
                let (start, len) = span(start, len);
                Op::Add {
                    start,
                    len,
                    nid: u16::from(nid % 3),
                    flags: flags % 8,
                }
            }
            Action::Remove { start, len } => {
                let (start, len) = span(start, len);
                Op::Remove { start, len }
            }
            Action::Reserve { start, len } => {
                let (start, len) = span(start, len);
                Op::Reserve { start, len }
            }
            Action::Free { start, len } => {
                let (start, len) = span(start, len);
                Op::Free { start, len }
            }
            Action::Mark {
                start,
                len,
                flags,
                set,
            } => {
                let (start, len) = span(start, len);
                Op::Mark {
                    start,
                    len,
                    flags: (flags % 7) + 1,
                    set,
                }
            }
            Action::SetNode { start, len, nid } => {
                let (start, len) = span(start, len);
                Op::SetNode {
                    start,
                    len,
                    nid: u16::from(nid % 3),
                }
            }
            Action::Alloc {
                pages,
                align_shift,
                min,
                max,
                node,
                exact,
                zeroed,
            } => Op::Alloc {
                pages: (pages as usize % 16).max(1),
                align_shift: u32::from(align_shift % 4),
                min: min as usize % PAGES,
                max: max as usize % (PAGES + 8),
                node: node.map(|n| u16::from(n % 3)),
                exact,
                zeroed,
            },
            Action::BottomUp(b) => Op::BottomUp(b),
            Action::Limit(page) => Op::Limit(PAGES / 2 + page as usize % (PAGES / 2 + 16)),
            Action::Hotplug(p) => Op::Hotplug(p % 3),
            Action::MirrorFirst(b) => Op::MirrorFirst(b),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    with_mapper: bool,
    max_order: u8,
    actions: Vec<Action>,
}

fuzz_target!(|input: Input| {
    let ops: Vec<Op> = input.actions.iter().take(200).map(Action::to_op).collect();
    if let Err(msg) = run(ops, input.with_mapper, u32::from(input.max_order % 12)) {
        panic!("{msg}");
    }
});
