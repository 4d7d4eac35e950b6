//! # mmkit-addr: the vocabulary every mmkit crate speaks
//!
//! Physical and virtual addresses, page frame numbers, buddy orders, page sizes and half-open
//! address ranges, as `#[repr(transparent)]` newtypes with `const fn` constructors, alignment
//! helpers and *checked* arithmetic: nothing here wraps silently. An operation that could
//! overflow returns `Option`/`Result`; the few that cannot (alignment down, comparisons) return
//! the value directly.
//!
//! It also defines the **platform hooks** the allocators need from a kernel, as traits:
//!
//! * [`CpuTopology`] — the number of CPUs and the current CPU's id (for per-CPU lists);
//! * [`IrqControl`] — save-and-disable / restore of local interrupts, wrapped by the RAII
//!   [`IrqGuard`]; inside a guard the current context owns its CPU's per-CPU data;
//! * [`PhysMapper`] — phys→virt for memory the kernel can touch (zeroing, object storage).
//!
//! With the `std` feature, the `host` module implements them on a host:
//! [`host::HostPlatform`] the first two — threads are registered as CPUs, and the
//! "interrupt" guard is a re-entrant per-CPU lock, so tests and benches can run the per-CPU
//! code multi-threaded with the same exclusion a kernel gets from disabling interrupts;
//! `host::HostCpus` the same with a fixed CPU count and no allocation (for use under a
//! `#[global_allocator]`); `host::KernelCpus` the first two at a kernel's cost — one thread
//! bound per CPU, the guard a per-CPU nesting counter with no atomic read-modify-write or
//! fence, cross-CPU calls through an asymmetric barrier (`membarrier(2)`); and
//! `host::HostMemory` the third, over zeroed host memory standing for a stretch of physical
//! memory.
//!
//! ## Conventions
//! * The base page (frame) is 4 KiB: [`PAGE_SIZE`], [`PAGE_SHIFT`]. Other translation granules
//!   (16 KiB, 64 KiB) are [`PageSize`] values used by the page-table layer.
//! * Physical addresses are `u64` on every target; virtual addresses are `u64` too, so the same
//!   code describes a 64-bit target from a 32-bit or 64-bit host.
//! * Ranges are half-open, `[start, end)`, and never have `end < start`.
//!
// Links to items behind a feature resolve in the crate when the feature is on and go to
// docs.rs (built with all features) when it is off, so the docs build warning-free either way.
#![cfg_attr(feature = "std", doc = "[`host::HostPlatform`]: host::HostPlatform")]
#![cfg_attr(
    not(feature = "std"),
    doc = "[`host::HostPlatform`]: https://docs.rs/mmkit-addr/latest/mmkit_addr/host/struct.HostPlatform.html"
)]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod addr;
mod align;
mod order;
mod platform;
mod range;

#[cfg(any(test, feature = "std"))]
pub mod host;

pub use addr::{AddrError, Pfn, PhysAddr, VaHalf, VirtAddr};
pub use align::{align_down, align_up, is_aligned, is_power_of_two};
pub use order::{Order, PageSize};
pub use platform::{CpuTopology, IrqControl, IrqGuard, LinearWindow, OffsetMapper, PhysMapper};
pub use range::{PhysRange, RangeError, VirtRange};

/// log2 of the base page (frame) size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page (frame) size in bytes: 4 KiB.
///
/// ```
/// assert_eq!(mmkit_addr::PAGE_SIZE, 4096);
/// ```
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
