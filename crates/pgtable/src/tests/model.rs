//! The proptest state machine: random map / unmap / protect / mutating-cursor / frame-limit /
//! extreme-argument sequences replayed
//! by [`crate::model::run`] against the reference model (see that module for what is checked
//! after every step). Ranges are drawn small-and-anywhere or around block boundaries, so
//! splits, huge mappings and contiguous runs all occur.

use mmkit_addr::VaHalf;
use proptest::prelude::*;

use crate::arch::aarch64::{Aarch64, Granule};
use crate::arch::x86_64::X86_64;
use crate::model::{run, Op, ATTRS};

/// A range of pages: small and anywhere, or around block boundaries.
fn arb_range(window: u64, block: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0..window, 1u64..40).prop_map(move |(s, n)| (s, n.min(window - s))),
        (0..window / block, 0u64..3, 1u64..=2, 0u64..3).prop_map(move |(b, off, m, extra)| {
            let s = (b * block + off).min(window - 1);
            (s, (m * block + extra).min(window - s))
        }),
    ]
}

fn arb_op(window: u64, block: u64, nsizes: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (arb_range(window, block), any::<bool>(), 0u64..4, 0u8..ATTRS.len() as u8, proptest::option::weighted(0.25, 0..nsizes))
            .prop_map(move |((start, pages), congruent, pa_block, attrs, forced)| Op::Map {
                start,
                pages,
                pa_page: if congruent { pa_block * block + start % block } else { pa_block * block + 7 },
                attrs,
                forced,
            }),
        3 => arb_range(window, block).prop_map(|(start, pages)| Op::Unmap { start, pages }),
        3 => (arb_range(window, block), any::<u8>()).prop_map(|((start, pages), change)| Op::Protect { start, pages, change }),
        2 => (arb_range(window, block), any::<u8>()).prop_map(|((start, pages), rule)| Op::Update { start, pages, rule }),
        1 => proptest::option::of(0u8..3).prop_map(Op::Limit),
        1 => any::<[u8; 4]>().prop_map(|[op, va, len, pa]| Op::Extreme { op, va, len, pa }),
    ]
}

fn ops(window: u64, block: u64, nsizes: u8) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(arb_op(window, block, nsizes), 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn x86_64_4level_matches_model(v in ops(1024, 512, 3)) {
        run(X86_64::FOUR_LEVEL, &v);
    }

    #[test]
    fn x86_64_5level_matches_model(v in ops(1024, 512, 3)) {
        run(X86_64::FIVE_LEVEL, &v);
    }

    #[test]
    fn aarch64_4k_48bit_ttbr0_matches_model(v in ops(1024, 512, 3)) {
        run(Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap(), &v);
    }

    #[test]
    fn aarch64_4k_39bit_ttbr1_matches_model(v in ops(1024, 512, 3)) {
        run(Aarch64::new(Granule::K4, 39, VaHalf::Upper).unwrap(), &v);
    }

    #[test]
    fn aarch64_4k_48bit_hafdbs_matches_model(v in ops(1024, 512, 3)) {
        run(Aarch64::new(Granule::K4, 48, VaHalf::Lower).unwrap().with_hw_access_dirty(true), &v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn aarch64_16k_47bit_matches_model(v in ops(4096, 2048, 2)) {
        run(Aarch64::new(Granule::K16, 47, VaHalf::Lower).unwrap(), &v);
    }

    #[test]
    fn aarch64_64k_52bit_matches_model(v in ops(16384, 8192, 2)) {
        run(Aarch64::new(Granule::K64, 52, VaHalf::Upper).unwrap(), &v);
    }

    #[test]
    fn aarch64_4k_52bit_lpa2_matches_model(v in ops(1024, 512, 3)) {
        run(Aarch64::new_lpa2(Granule::K4, 52, VaHalf::Upper).unwrap(), &v);
    }

    #[test]
    fn aarch64_16k_52bit_lpa2_matches_model(v in ops(4096, 2048, 2)) {
        run(Aarch64::new_lpa2(Granule::K16, 52, VaHalf::Lower).unwrap(), &v);
    }

    #[test]
    fn aarch64_16k_48bit_hafdbs_matches_model(v in ops(4096, 2048, 2)) {
        run(Aarch64::new(Granule::K16, 48, VaHalf::Upper).unwrap().with_hw_access_dirty(true), &v);
    }
}
