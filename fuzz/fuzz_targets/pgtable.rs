//! Fuzz mmkit-pgtable: an `Arbitrary` format choice and sequence of map / unmap / protect /
//! mutating-cursor / frame-limit actions and range operations with extreme addresses and lengths, replayed by `mmkit_pgtable::model::run` — the same machine as the
//! proptest state machine: `verify()`, the reference model, `translate` and the software MMU
//! (with its stale-keeping TLB) are checked after every step, and every table frame must be
//! back in the arena at the end. Even-length sequences reach the tables through the arena's
//! linear window (the walk fast path), odd-length ones through `phys_to_virt` calls.
//!
//! The shared mode replays map / unmap / protect / mutating-cursor / fork-style copy actions
//! on two tables over one arena with share counts (`mmkit_pgtable::model::run_shared`), so
//! copies share read-only leaf tables and later writes on either side un-share them: both
//! sides are checked against their own models after every step, and tearing both down (in
//! either order) must free every frame exactly once.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit_addr::VaHalf;
use mmkit_pgtable::arch::aarch64::{Aarch64, Granule};
use mmkit_pgtable::arch::x86_64::X86_64;
use mmkit_pgtable::model::{run, run_shared, HostFormat, Op, ShareOp, SHARE_TABLES};

#[derive(Arbitrary, Debug)]
enum Format {
    X86FourLevel,
    X86FiveLevel,
    Aarch64 {
        granule: u8,
        va_bits: u8,
        upper: bool,
        hafdbs: bool,
        lpa2: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum Action {
    Map {
        start: u16,
        pages: u16,
        pa_page: u16,
        attrs: u8,
        forced: Option<u8>,
    },
    Unmap {
        start: u16,
        pages: u16,
    },
    Protect {
        start: u16,
        pages: u16,
        change: u8,
    },
    Limit(Option<u8>),
    Update {
        start: u16,
        pages: u16,
        rule: u8,
    },
    Extreme {
        op: u8,
        va: u8,
        len: u8,
        pa: u8,
    },
}

/// One step of the shared mode: on which side, which pages (whole leaf tables when `whole`:
/// what a copy can share), and a flag (read-only map, protect to writable).
#[derive(Arbitrary, Debug)]
struct SharedAction {
    kind: u8,
    side: bool,
    whole: bool,
    start: u16,
    pages: u16,
    flag: bool,
}

impl SharedAction {
    fn to_op(&self, per: u64) -> ShareOp {
        let (a, n) = if self.whole {
            let t = u64::from(self.start) % SHARE_TABLES;
            (t * per, per * (1 + u64::from(self.pages) % 2))
        } else {
            (u64::from(self.start), u64::from(self.pages % 16) + 1)
        };
        let s = usize::from(self.side);
        match self.kind % 5 {
            0 => ShareOp::Map(s, a, n, self.flag),
            1 => ShareOp::Unmap(s, a, n),
            2 => ShareOp::Protect(s, a, n, self.flag),
            3 => ShareOp::Update(s, a, n),
            _ => ShareOp::Copy(s, a, n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mode {
    Single(Vec<Action>),
    Shared {
        actions: Vec<SharedAction>,
        order: bool,
    },
}

fn drive<F: HostFormat>(f: F, mode: &Mode) {
    match mode {
        Mode::Single(actions) => {
            let ops: Vec<Op> = actions.iter().take(64).map(Action::to_op).collect();
            run(f, &ops);
        }
        Mode::Shared { actions, order } => {
            let per = f.levels()[f.depth() - 1].entries() as u64;
            let ops: Vec<ShareOp> = actions.iter().take(24).map(|a| a.to_op(per)).collect();
            run_shared(f, &ops, *order);
        }
    }
}

impl Action {
    fn to_op(&self) -> Op {
        match *self {
            Action::Map {
                start,
                pages,
                pa_page,
                attrs,
                forced,
            } => Op::Map {
                start: start.into(),
                pages: pages.into(),
                pa_page: pa_page.into(),
                attrs,
                forced,
            },
            Action::Unmap { start, pages } => Op::Unmap {
                start: start.into(),
                pages: pages.into(),
            },
            Action::Protect {
                start,
                pages,
                change,
            } => Op::Protect {
                start: start.into(),
                pages: pages.into(),
                change,
            },
            Action::Limit(l) => Op::Limit(l),
            Action::Update { start, pages, rule } => Op::Update {
                start: start.into(),
                pages: pages.into(),
                rule,
            },
            Action::Extreme { op, va, len, pa } => Op::Extreme { op, va, len, pa },
        }
    }
}

fuzz_target!(|input: (Format, Mode)| {
    let (format, mode) = input;
    match format {
        Format::X86FourLevel => drive(X86_64::FOUR_LEVEL, &mode),
        Format::X86FiveLevel => drive(X86_64::FIVE_LEVEL, &mode),
        Format::Aarch64 {
            granule,
            va_bits,
            upper,
            hafdbs,
            lpa2,
        } => {
            let granule = Granule::ALL[granule as usize % 3];
            let lpa2 = lpa2 && granule != Granule::K64;
            let widths: &[u32] = match granule {
                Granule::K64 => &[39, 42, 48, 52],
                _ if lpa2 => &[39, 47, 48, 52],
                _ => &[39, 40, 47, 48],
            };
            let va_bits = widths[va_bits as usize % widths.len()];
            let half = if upper { VaHalf::Upper } else { VaHalf::Lower };
            let f = if lpa2 {
                Aarch64::new_lpa2(granule, va_bits, half)
            } else {
                Aarch64::new(granule, va_bits, half)
            };
            drive(
                f.expect("supported width").with_hw_access_dirty(hafdbs),
                &mode,
            );
        }
    }
});
