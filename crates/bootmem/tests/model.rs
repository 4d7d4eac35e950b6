//! Proptest state machine: random add / remove / reserve / free / mark / set-node / alloc
//! sequences against the page-bitmap model in `common/page_model.rs`, with `verify()` and a
//! full comparison after every step and the hand-off checked at the end.

#[path = "common/page_model.rs"]
mod page_model;

use page_model::{run, Op, PAGES};
use proptest::prelude::*;

fn op_strategy() -> impl Strategy<Value = Op> {
    // Starts lean towards page 0 and low memory, where the page-0 rule and the edges live.
    let start = prop_oneof![1 => Just(0usize), 2 => 0..32usize, 5 => 0..PAGES];
    let span = (start.clone(), 1..64usize).prop_map(|(s, l)| (s, l.min(PAGES - s).max(1)));
    let max = prop_oneof![1 => Just(PAGES + 8), 1 => 0..PAGES + 8];
    prop_oneof![
        6 => (span.clone(), 0..3u16, 0..8u8).prop_map(|((start, len), nid, flags)| Op::Add { start, len, nid, flags }),
        2 => span.clone().prop_map(|(start, len)| Op::Remove { start, len }),
        4 => span.clone().prop_map(|(start, len)| Op::Reserve { start, len }),
        4 => span.clone().prop_map(|(start, len)| Op::Free { start, len }),
        2 => (span.clone(), 1..8u8, any::<bool>()).prop_map(|((start, len), flags, set)| Op::Mark { start, len, flags, set }),
        1 => (span, 0..3u16).prop_map(|((start, len), nid)| Op::SetNode { start, len, nid }),
        8 => (1..16usize, 0..4u32, start, max, proptest::option::of(0..3u16), any::<bool>(), any::<bool>())
            .prop_map(|(pages, align_shift, min, max, node, exact, zeroed)| Op::Alloc { pages, align_shift, min, max, node, exact, zeroed }),
        2 => any::<bool>().prop_map(Op::BottomUp),
        1 => (PAGES / 2..PAGES + 16).prop_map(Op::Limit),
        1 => (0..3u8).prop_map(Op::Hotplug),
        1 => any::<bool>().prop_map(Op::MirrorFirst),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn bootmem_matches_page_model_with_growth(ops in proptest::collection::vec(op_strategy(), 1..80), max_order in 0u32..12) {
        run(ops, true, max_order).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn bootmem_matches_page_model_without_mapper(ops in proptest::collection::vec(op_strategy(), 1..60), max_order in 0u32..12) {
        run(ops, false, max_order).map_err(TestCaseError::fail)?;
    }
}
