//! Entry laws, in the spirit of Linux's `debug_vm_pgtable`: for every format, level, address
//! and attribute set, encoding then decoding gives back what went in, and single-attribute
//! changes (mkold/mkyoung, wrprotect/mkwrite, mkclean/mkdirty, ...) change exactly that
//! attribute.

use proptest::prelude::*;

use super::{all_aarch64, all_x86};
use crate::{Attrs, CachePolicy, EntryKind, PagingFormat};
use mmkit_addr::PhysAddr;

fn arb_attrs() -> impl Strategy<Value = Attrs> {
    (any::<u32>(), 0u8..5, 0u8..16, any::<bool>()).prop_map(|(bits, cache, pkey, read)| {
        let flags = Attrs::from_bits_truncate(bits)
            .difference(Attrs::CACHE_FIELD)
            .difference(Attrs::PKEY_FIELD);
        let mut a = flags
            .with_cache(CachePolicy::ALL[cache as usize])
            .with_pkey(pkey);
        a.set(Attrs::READ, read || bits & 1 == 0);
        a
    })
}

/// Check every law for one format with one sample.
fn check_laws<F: PagingFormat + core::fmt::Debug>(
    f: &F,
    pa_seed: u64,
    count_seed: u32,
    attrs: Attrs,
) {
    let gran = f.granule().bytes();
    for (level, lv) in f.levels().iter().enumerate() {
        assert_eq!(f.kind(level, 0), EntryKind::Absent, "{f:?} level {level}");
        // Table entries.
        if level + 1 < f.depth() {
            let t = PhysAddr::new((pa_seed & ((1u64 << f.phys_bits()) - 1)) & !(gran - 1));
            let n = count_seed % (f.levels()[level + 1].entries() as u32 + 1);
            let e = f.make_table(level, t, n);
            assert_eq!(f.kind(level, e), EntryKind::Table);
            assert_eq!(f.table_addr(e), t);
            assert_eq!(f.table_count(e), n);
            let m = (n + 7) % (f.levels()[level + 1].entries() as u32 + 1);
            let e2 = f.set_table_count(e, m);
            assert_eq!(f.table_count(e2), m);
            assert_eq!(
                f.set_table_count(e2, n),
                e,
                "count change touches only the count"
            );
        }
        // Leaf entries.
        let Some(size) = lv.leaf else { continue };
        let pa = PhysAddr::new((pa_seed & ((1u64 << f.phys_bits()) - 1)) & !(size.bytes() - 1));
        let Ok(a) = f.normalize(attrs) else {
            assert!(
                !attrs.contains(Attrs::READ) || attrs.pkey() != 0,
                "{attrs:?} rejected"
            );
            continue;
        };
        assert_eq!(f.normalize(a), Ok(a), "normalize is idempotent");
        let e = f.make_leaf(level, pa, a);
        assert_eq!(f.kind(level, e), EntryKind::Leaf);
        assert_eq!(f.leaf_addr(level, e), pa);
        assert_eq!(f.leaf_attrs(level, e), a, "{f:?} level {level} raw {e:#x}");
        // What a `Translation` decodes later, from the key alone.
        for raw in [e, e ^ pa_seed, !e] {
            assert_eq!(
                F::decode_leaf_attrs(f.attrs_key(), level, raw),
                f.leaf_attrs(level, raw),
                "{f:?} level {level} raw {raw:#x}"
            );
        }
        assert!(!f.is_contiguous(e));
        // The address and the attributes are separate fields (the map and protect fast paths
        // rely on it).
        let (tmpl, oa) = (f.leaf_template(level, a), f.leaf_oa_bits(level, pa));
        assert_eq!(tmpl & oa, 0, "{f:?} level {level}");
        assert_eq!(tmpl | oa, e, "{f:?} level {level}");
        assert_eq!(oa & !f.leaf_oa_mask(level), 0, "{f:?} level {level}");
        assert_eq!(f.leaf_oa_mask(level) & tmpl, 0, "{f:?} level {level}");
        let moved = tmpl | f.leaf_oa_mask(level);
        assert_eq!(f.leaf_attrs(level, moved), a, "{f:?} level {level}");
        assert_eq!(f.kind(level, moved), EntryKind::Leaf);
        assert_eq!(f.leaf_addr(level, tmpl), PhysAddr::ZERO);
        assert_eq!(f.leaf_oa_bits(level, f.leaf_addr(level, e)), oa);
        let c = f.set_contiguous(e, true);
        if f.contiguous_run(level).is_some() {
            assert!(f.is_contiguous(c));
            assert_eq!(f.leaf_attrs(level, c), a);
            assert_eq!(f.set_contiguous(c, false), e);
        }
        // Single-flag laws: toggling one flag changes only that flag.
        for flag in [
            Attrs::ACCESSED,
            Attrs::DIRTY,
            Attrs::WRITE,
            Attrs::GLOBAL,
            Attrs::SW0,
            Attrs::SW1,
            Attrs::SW2,
        ] {
            let on = f.normalize(a | flag).unwrap();
            let off = f.normalize(a - flag).unwrap();
            let d_on = f.leaf_attrs(level, f.make_leaf(level, pa, on));
            let d_off = f.leaf_attrs(level, f.make_leaf(level, pa, off));
            assert!(d_on.contains(flag), "mk{flag:?}");
            assert!(!d_off.contains(flag), "clear {flag:?}");
        }
        for c in CachePolicy::ALL {
            let b = f.normalize(a.with_cache(c)).unwrap();
            assert_eq!(f.leaf_attrs(level, f.make_leaf(level, pa, b)).cache(), c);
        }
    }
}

/// The walk hooks (`index_of`, `leaf_size`, `leaf_span_mask`) say exactly what `levels()`
/// says, for every format, level and address: walks index tables with them.
fn check_walk_hooks<F: PagingFormat + core::fmt::Debug>(f: &F, va: u64) {
    for (level, lv) in f.levels().iter().enumerate() {
        assert_eq!(f.index_of(level, va), lv.index(va), "{f:?} level {level}");
        assert!(f.index_of(level, va) < lv.entries());
        assert_eq!(f.leaf_size(level), lv.leaf, "{f:?} level {level}");
        assert_eq!(f.leaf_span_mask(level), lv.entry_span() - 1);
    }
    // Near the canonical boundaries too, not only at random addresses.
    let top = f.levels()[0];
    let va_bits = top.shift + top.entries().trailing_zeros();
    for v in [
        va,
        va ^ (1 << (va_bits - 1)),
        va | (u64::MAX << (va_bits - 1)),
    ] {
        let v = mmkit_addr::VirtAddr::new(v);
        assert_eq!(
            f.is_canonical_at_depth(v, f.depth()),
            f.is_canonical(v),
            "{f:?} {v:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn walk_hooks_agree_with_levels(va in any::<u64>()) {
        for f in all_x86() {
            check_walk_hooks(&f, va);
        }
        for f in all_aarch64() {
            check_walk_hooks(&f, va);
        }
    }

    #[test]
    fn x86_entries_round_trip(pa in any::<u64>(), n in any::<u32>(), a in arb_attrs()) {
        for f in all_x86() {
            check_laws(&f, pa, n, a);
        }
    }

    #[test]
    fn aarch64_entries_round_trip(pa in any::<u64>(), n in any::<u32>(), a in arb_attrs()) {
        for f in all_aarch64() {
            check_laws(&f, pa, n, a.with_pkey(0));
        }
    }
}

#[test]
fn wrprotect_of_mkclean_is_neither_writable_nor_dirty() {
    // debug_vm_pgtable: !pte_dirty(pte_wrprotect(pte_mkclean(pte))).
    for f in all_x86() {
        let a = Attrs::KERNEL_RW;
        let e = f.make_leaf(
            3,
            PhysAddr::new(0x1000),
            f.normalize(a - Attrs::DIRTY - Attrs::WRITE).unwrap(),
        );
        let back = f.leaf_attrs(3, e);
        assert!(!back.contains(Attrs::DIRTY) && !back.contains(Attrs::WRITE));
    }
}
