//! # mmkit-pgtable: arch-neutral page tables with x86_64 and aarch64 backends
//!
//! One trait describes an architecture's translation-table format ([`PagingFormat`]: levels,
//! index bits, leaf sizes per level, VA width and canonical form, entry encoding), one generic
//! [`PageTable`] implements the operations over any format, and two backends provide the
//! formats: [`arch::x86_64::X86_64`] (4- and 5-level) and [`arch::aarch64::Aarch64`] (4, 16 and
//! 64 KiB granules, 39–48-bit and 52-bit VA — with FEAT_LPA2 for the 4 and 16 KiB granules —,
//! TTBR0 and TTBR1 halves, optionally with FEAT_HAFDBS). Page sizes are values
//! ([`PageSize`](mmkit_addr::PageSize)), not type parameters.
//!
//! ## Operations
//! * [`PageTable::map`] — largest sizes alignment allows, or a forced size ([`MapSize`]);
//! * [`PageTable::unmap`] — splits huge/block mappings on partial unmap, unhooks emptied tables;
//! * [`PageTable::protect`] — an [`AttrChange`] over a mapped range, splitting likewise;
//! * [`PageTable::translate`], [`PageTable::walk`] (per-level callbacks and holes),
//!   [`PageTable::cursor`] (sequential iteration), [`PageTable::clear_accessed_dirty`],
//!   [`PageTable::copy_range_to`] (fork-style copy into another table);
//! * [`PageTable::update_leaves`] — the mutating cursor: a callback rewrites, remaps or
//!   removes each leaf of a range in one pass ([`PageTable::update_leaves_live`] does the
//!   break-before-make a live aarch64 table needs through a [`TlbInvalidate`]);
//! * [`PageTable::split_live`] — break-before-make split on live aarch64 tables;
//! * [`PageTable::verify`] — the invariant scanner.
//!
//! Range operations descend the tree once per range. Each change returns a `#[must_use]`
//! [`Flush`] token saying what to invalidate; tables emptied by unmap travel inside it and can
//! only be freed ([`PageTable::free_tables`]) after [`Flush::invalidate`], and only by the table
//! that unhooked them (another table refuses the list). Every error leaves the table exactly
//! as it was (plan, reserve frames, then apply).
//!
//! ## Memory and safety boundary
//! No allocation: table frames come from a [`FrameSource`] (the buddy in the facade, an arena
//! in host tests), and are read and written through a
//! [`PhysMapper`](mmkit_addr::PhysMapper); where the mapper reports a
//! [`LinearWindow`](mmkit_addr::LinearWindow) (a direct map), taken once when the table is
//! created, walks turn table addresses into pointers with one compare and one add instead of
//! a mapper call per level. All raw-memory code is in the private `raw`
//! module; the unsafe traits are [`FrameSource`] (frames are zeroed and exclusively ours),
//! [`PagingFormat`] (its encoding round-trips, since we write where it points) and
//! [`TlbInvalidate`] (an invalidation really happened, since frames are freed after it).
//! Hardware access lives in `arch::x86_64_hw` / `arch::aarch64_hw`, behind
//! `cfg(all(not(test), target_arch = "..."))`: the cfg names the architecture only, so a
//! non-test host build on x86_64 or aarch64 (a library, example or bench build) compiles the
//! matching module too. Its functions are `unsafe` and need CPL 0 / EL1, so only a kernel
//! calls them; unit tests never compile them.
//!
//! ## Cost
//! [`PageTable::translate`] and [`PageTable::translate_addr`] share one walk that tests for
//! the linear window once, unrolls for the common depths (4 and 5 levels) so a format with
//! arithmetic geometry indexes with immediate shifts (the canonical check too), and decodes
//! the leaf inside the unrolled loop where its level is a constant (the x86 attribute decode
//! is one table load for the low nine bits). Per level the dependent chain is the entry load,
//! the address mask and one add; the window range check runs beside it. Every check stays:
//! canonical address, absent and malformed entries, huge/block leaves at each level, the
//! window range check on every table address read from an entry.
//!
//! The range operations write leaf tables in one loop each: map fills a table from a
//! template computed once per table, protect remembers the attribute change per distinct
//! non-address bits and stores plainly where the hardware cannot write the entry
//! ([`PagingFormat::hw_may_update`]), unmap clears a partly covered table in one pass, and
//! copy clones whole source tables entry by entry. The crate README has the figures beside
//! the `x86_64` crate and `aarch64-paging`, and the commands that reproduce them.
//!
//! Table frames emptied entry by entry (a table unhooked because its last entry went) and
//! reserved frames never used go back through [`FrameSource::free_zeroed_table`]: a source
//! that keeps such frames apart hands them out again without clearing them (the default
//! forgets the hint and frees as usual).
//!
//! ## Shared leaf tables (fork-style copy)
//! [`PageTable::copy_range_to`] shares a whole source leaf table with the destination instead
//! of copying it when the table lies inside the range, the destination has nothing in its
//! slot, every leaf in it is read-only with nothing the hardware may write
//! ([`PagingFormat::hw_may_update`] false: x86 accessed set; aarch64 AF set without DBM), and
//! both trees' frame sources keep share counts in one pool ([`FrameSource::table_refs`]
//! returns a [`TableRefs`] of the same domain; the host arena does). The design decision:
//! the count lives with the frame source, not in the tables or the crate, because a kernel
//! already keeps per-frame state there (a page descriptor) and both trees must see one count;
//! a source without counts (the default `table_refs` = `None`) gets the old behaviour, every
//! table cloned. A copy does not share into or out of a table marked live on a
//! break-before-make format (aarch64): un-sharing replaces a table descriptor in place by one
//! pointing at an identical copy, and whether a live aarch64 table needs break-before-make
//! for that is not settled here (a tree that shares and is loaded later still un-shares in
//! place: an open point).
//!
//! A shared table is never written: map, protect, unmap, [`PageTable::update_leaves`],
//! [`PageTable::clear_accessed_dirty`] and a copy *into* a tree first give that tree private
//! copies of the shared leaf tables overlapping their range (copy-on-write of the table; two
//! frames each, reserved with the operation's own, so running out still changes nothing).
//! The tree lets go of the shared frame only after the operation's [`Flush`] was invalidated
//! — its reference travels in the token as a ticket frame, released by
//! [`PageTable::free_tables`] — because a stale walk cache of its address space could
//! otherwise reach a table the other tree, now its sole owner, writes in place.
//! [`PageTable::destroy`] invalidates everything and then drops one reference per leaf
//! table, freeing those it held last. Where this costs: un-sharing copies the table even for
//! an unmap that then discards the copy, and every writing operation on a tree that ever
//! shared walks its range once more to find shared tables.
//!
//! ## Address spaces
//! A table may carry an [`Asid`] ([`PageTable::set_asid`]); its [`Flush`] tokens then
//! invalidate in that address space only, unless the table may hold global leaves (see the
//! `flush` module docs on [`Flush::asid`]).
//!
//! ## Host testing
//! With feature `std`, [`host::TableArena`] supplies frames with double-free and leak
//! detection, and [`softmmu`] walks the raw tables as the hardware does, with a TLB model that
//! keeps stale translations until a flush token is invalidated through it.
//!
// Links to items behind a feature resolve in the crate when the feature is on and go to
// docs.rs (built with all features) when it is off, so the docs build warning-free either way.
#![cfg_attr(feature = "std", doc = "[`host::TableArena`]: host::TableArena")]
#![cfg_attr(feature = "std", doc = "[`softmmu`]: softmmu")]
#![cfg_attr(
    not(feature = "std"),
    doc = "[`host::TableArena`]: https://docs.rs/mmkit-pgtable/latest/mmkit_pgtable/host/struct.TableArena.html"
)]
#![cfg_attr(
    not(feature = "std"),
    doc = "[`softmmu`]: https://docs.rs/mmkit-pgtable/latest/mmkit_pgtable/softmmu/index.html"
)]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod attrs;
mod copy;
mod error;
mod flush;
mod format;
mod frame;
mod map;
mod protect;
mod raw;
mod share;
mod split;
mod table;
mod unmap;
mod update;
mod walk;

pub mod arch;

#[cfg(any(test, feature = "std"))]
pub mod host;
#[cfg(any(test, feature = "std"))]
pub mod model;
#[cfg(any(test, feature = "std"))]
pub mod softmmu;

#[cfg(test)]
mod tests;

pub use attrs::{AttrChange, Attrs, CachePolicy};
pub use error::{
    AttrError, CopyError, FreeTablesError, MapError, MergeFlushError, Misaligned, NewError,
    ProtectError, SplitError, UnmapError, VerifyError,
};
pub use flush::{Asid, Flush, FlushScope, FreedTables, TlbInvalidate, FLUSH_CEILING};
pub use format::{EntryKind, Level, PagingFormat, MAX_LEVELS};
pub use frame::{FrameSource, TableRefs};
pub use protect::Cleared;
pub use table::{MapSize, PageTable, Translation, VerifyReport};
pub use update::{LeafUpdate, UpdateError};
pub use walk::{Cursor, Visitor};

static_assertions::const_assert!(MAX_LEVELS == 5);
static_assertions::assert_eq_size!(u64, core::sync::atomic::AtomicU64);
