//! # mmkit-slab: slab object caches and kmalloc
//!
//! SLUB-style object caches for a `no_std` kernel, with no heap: every byte comes from a
//! [`PageSource`] (the buddy allocator, in a kernel), and per-CPU exclusion comes from the
//! platform's [`IrqControl`](mmkit_addr::IrqControl).
//!
//! * [`Cache`]: `kmem_cache_create` / `alloc` / `alloc_node` / `free` / bulk / `shrink` /
//!   `destroy`, with constructors, `HWCACHE_ALIGN`, `RECLAIM_ACCOUNT`, `TYPESAFE_BY_RCU`
//!   (slab pages freed from the kernel's [`Rcu::call_rcu`] callback), and the debug flags
//!   (consistency checks, red zones, poison, owner tracking). Slabs are kept on per-node
//!   partial lists ([`PageSource::cpu_node`] / [`PageSource::pfn_node`]); a CPU array that
//!   fills hands its oldest half whole to its node's depot, where a CPU whose array ran
//!   empty takes it back whole (Linux's barn of sheaves); `shrink` drains every CPU's array
//!   through [`IrqControl::run_on_cpu`](mmkit_addr::IrqControl::run_on_cpu) and every depot;
//!   big objects get off-slab headers so their slots fill the slab.
//! * [`TypedCache`] / [`SlabBox`]: a cache of `T` handing out owned, constructed objects.
//! * [`Kmalloc`]: `kmalloc` / `kmalloc_node` / `kzalloc` / `kfree` / `ksize` / `krealloc`
//!   over Linux's size classes (refined to four per doubling from 64 bytes), with
//!   reclaimable and DMA sets, each cache created on its first use, and large allocations of
//!   exactly the pages they need ([`PageSource::alloc_pages_exact`]).
//! * GFP context: [`Gfp::NOWAIT`] / [`Gfp::HIGH`] / [`Gfp::ATOMIC`] on an allocation reach
//!   the pages a cache grows with ([`Cache::alloc_flags`]).
//! * `verify()` invariant scanners, [`CacheStats`], and `/proc/slabinfo` via `Display`.
//!
//! ```
//! use mmkit_addr::host::HostPlatform;
//! use mmkit_slab::testing::TestPageSource;
//! use mmkit_slab::{Cache, CacheConfig, CacheFlags, Gfp, Kmalloc};
//!
//! let pages = TestPageSource::new(8 << 20); // the real buddy over host memory
//! let cpus = HostPlatform::new(2);           // in a kernel: CPU id + interrupt control
//! let dentries = Cache::new(
//!     &CacheConfig::new("dentry", 192).flags(CacheFlags::HWCACHE_ALIGN),
//!     &pages,
//!     &cpus,
//! )
//! .expect("descriptor pages");
//! let d = dentries.alloc().expect("memory");
//! assert_eq!(d.as_ptr() as usize % 64, 0);
//! // SAFETY: `d` came from `dentries` and is not used again.
//! unsafe { dentries.free(d) }.expect("a valid free");
//!
//! let k = Kmalloc::new(&pages, &cpus).expect("descriptor pages");
//! let p = k.kzalloc(100, Gfp::empty()).expect("memory");
//! // SAFETY: `p` came from `k`.
//! assert_eq!(unsafe { k.ksize(p) }, Ok(112));
//! // SAFETY: as above, and `p` is not used again.
//! unsafe { k.kfree(p) }.expect("a valid free");
//! ```
//!
//! ## How it fits together
//! ```text
//! Kmalloc ──> Cache (handle) ──> descriptor block (percpu): config, node locks, CPU arrays,
//!                                   │                           depot magazines
//!           CPU arrays (lock-free fast path) <──> NodeLists per node (slab/node.rs)
//!                                   │               depot: whole batches between CPUs
//!                                   │               partial / full
//!                                   │               └─ HeaderPool: off-slab headers
//!                               PageSource: slab blocks + per-frame private word + nodes
//!                               Rcu: call_rcu for TYPESAFE_BY_RCU slabs
//! ```
//!
//! ## Map of the crate
//! | module | concept | unsafe code |
//! |---|---|---|
//! | [`layout`] | slab geometry and the policy tables | denied |
//! | `config` | [`CacheConfig`]: creation parameters | denied |
//! | `cache` | [`Cache`] handle and descriptor; `cache/` holds one file per path: `alloc`, `free`, `debug`, `slabs` (grow and release), `lifecycle`, `verify`, `report` | the path files call contracts; `report` denied |
//! | `slab` | slab memory; `slab/` holds the header and lookup, `freelist`, `node` (partial / full lists), `list`, `detached` (release, RCU), `header_pool`, `debug` (poison, red zones, owner records) | raw memory |
//! | `percpu` | the descriptor block, the per-CPU arrays and the node depots | raw memory |
//! | `kmalloc` | [`Kmalloc`] over the size classes, large allocations from the page source | unsafe API, calls contracts |
//! | `typed` | [`TypedCache`] / [`SlabBox`] | reads and writes a `T` through its slot |
//! | `page_source` | the [`PageSource`] and [`Rcu`] contracts | declares unsafe traits |
//! | `stats`, `flags`, `error` | [`CacheStats`] and slabinfo, [`CacheFlags`] / [`Gfp`], error enums | denied |
//! | `testing` (feature) | the real buddy as a host page source, and a hand-driven RCU | implements the contracts over host memory it owns |
//!
//! Raw memory is read and written only in `slab` (slab pages and header pages) and `percpu`
//! (the descriptor block), plus `typed`'s reads and writes of a `T` through its box (and, in
//! host builds, `testing`'s own memory and RCU queue). The `cache` paths and `kmalloc` only
//! call into them (and into the page source), each call with a `// SAFETY:` argument
//! pointing at the contract. `unsafe_code` is denied crate-wide outside unit tests; a module
//! that needs it carries an `allow` on its `mod` line (the cache paths in `cache/mod.rs`,
//! which otherwise allows it only on `Cache`'s `Send` / `Sync` and the descriptor borrow).
//!
//! ## Performance
//! Instructions per `kmalloc` + `kfree` of a cached object, counted by callgrind with
//! `examples/hotloop.rs` (repeatable on a shared host, unlike timings; peers get the same
//! loop over an 8 MiB arena, without a lock). mmkit's pages come from the real mmkit-buddy,
//! and every `kfree` validates its pointer through the buddy's page descriptors:
//!
//! | size | mmkit, host platform | mmkit, `KernelCpus` | same, `hardened` | talc | linked_list | buddy_system | glibc |
//! |------|----------------------|---------------------|------------------|------|-------------|--------------|-------|
//! | 8    | 214 (280)            | 151 (230)           | 171 (265)        | 227  | 173         | 145          | 142   |
//! | 64   | 214 (280)            | 151 (230)           | 171 (265)        | 226  | 173         | 84           | 145   |
//! | 256  | 214 (284)            | 151 (234)           | 171 (269)        | 228  | 173         | 84           | 145   |
//! | 4096 | 216 (377)            | 149 (327)           | 169 (362)        | 238  | 173         | 84           | 325   |
//!
//! (3 Dec, release builds; in brackets the same day's figures before the fast-path rework
//! below, and the 25 Nov figures were 307 / 311 / 401 on the host platform.) About 65 of the
//! host figure is `HostPlatform`'s guard (a thread-local CPU id and a compare-exchange /
//! fetch-sub pair per section); `KernelCpus` (`mmkit_addr::host`) is one thread bound per
//! CPU with a plain counter as the guard, what a kernel's interrupt disable costs. The full
//! pointer proof on free ([`HARDENED`]: the header's magic and the object index; on in debug
//! builds, in release with the `hardened` feature) costs 20 instructions per pair. Build the
//! `hardened` column with `--features hardened`.
//!
//! What the rework changed (each step's figures are in its commit message): each fast path
//! is one pop or push behind one branch, with debug caches, refills, flushes, double frees
//! and remote nodes in out-of-line slow paths (a debug cache's arrays have no room, so it
//! needs no test of its own); `kmalloc` tries the class table and one pop before anything
//! else; `kfree` checks the kmalloc slot with one compare against the handle; the test page source reads the
//! frame's word in one descriptor load (`page_private_fast`, as the facade's does) where it
//! walked to the block head (the old 4 KiB column paid ~90 for that walk); `KernelCpus`
//! enters a section with one store, one load and one branch. What is left of a pair on
//! `KernelCpus`: ~45 for the allocation (class table, cache, guard, pop) and ~100 for the
//! free, of which ~35 are the page-source lookup (`virt_to_pfn`, then the buddy's
//! descriptor: node, bounds, state, word) and ~20 the header and kmalloc-slot checks.
//!
//! Fewer instructions did not buy the same share of time: the pair is bound by a chain of
//! dependent loads (pointer, frame word, slab header, descriptor, CPU array, array slot; the
//! next allocation waits on the array count the free stored). The array's address is now
//! computed from the descriptor's and a free reaches the descriptor through the header, one
//! load less each; still, 20 M pairs of `hotloop mmkit-kernel 64` take 0.31 s of user time
//! where they took 0.34 s before the rework (talc 0.22 s, glibc 0.15 s, same run).
//!
//! Objects that cross CPUs (`examples/handoff.rs`: CPU 0 allocates 256, CPU 1 frees them,
//! one thread moving between the CPUs of a `KernelCpus<2>`) travel through the node depot in
//! whole batches: 183 instructions per pair at 64 B and 215 at 1 KiB (257 and 336 before the
//! fast-path rework, 414 and 669 before the depot; talc on the same batches 235 and 247).
//!
//! In talc's random-actions workload at max 200 mmkit runs 1.6x talc's
//! instructions and 3.2x its L1 data misses per action (callgrind `--cache-sim`): each
//! operation touches the cache descriptor, the CPU array, the frame's private word and the
//! slab header, spread over a dozen caches, where talc touches one chunk and its neighbours.
//! Heap-efficiency and timing ratios against the peers are in `benches/slab.rs`.
//!
//! ## Safety boundary
//! Allocation is safe. Freeing takes a raw pointer and is `unsafe`: the caller promises the
//! pointer is a live allocation of that cache (or kmalloc) and is not used afterwards, *or*
//! one of the misuses the allocator detects. Those are defined: refused with an error and no
//! state change — pointers outside any slab, in another cache's slab, not at an object start,
//! the object most recently freed on this CPU freed again (every double free in debug
//! caches, while the slab is still the cache's), and broken red zones. Other double frees and
//! use after free remain undefined ([`Cache::free`] lists both). [`SlabBox`] is the safe
//! owner type.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]
// Unsafe code is fenced (see "Safety boundary" above): each module that has any says so with
// an `allow` on its declaration, here or in `cache`; everything else denies it (unit tests
// are exempt: they free through the unsafe API and poke at object bytes).
#![cfg_attr(not(test), deny(unsafe_code))]

mod cache;
mod config;
mod error;
mod flags;
#[allow(unsafe_code)]
// `kfree` / `ksize` / `krealloc` contracts; calls into `slab` and the source; the class-table index on the fast path
mod kmalloc;
pub mod layout;
#[allow(unsafe_code)] // declares the unsafe `PageSource` and `Rcu` traits
mod page_source;
#[allow(unsafe_code)] // raw memory: the descriptor block and the per-CPU arrays
mod percpu;
#[allow(unsafe_code)] // raw memory: slab pages, headers, freelists, debug bytes, header pages
mod slab;
mod stats;
#[allow(unsafe_code)] // writes, reads and frees a `T` through its slot
mod typed;

#[cfg(feature = "testing")]
#[allow(unsafe_code)] // implements the unsafe traits over host memory
pub mod testing;

/// Whether every free proves its pointer in full: the slab header's magic and that the
/// pointer starts an object. Always with debug assertions, and in release builds with the
/// `hardened` feature. Without it a release build still finds the slab through the page
/// source's word, refuses pointers outside slab memory and into another cache's slabs, and
/// catches the CPU's last object freed twice, but a pointer into a slab that does not start
/// an object is undefined behaviour (Linux checks no more without its debug options). Debug
/// caches always check. The crate docs give what the proof costs.
pub const HARDENED: bool = cfg!(any(debug_assertions, feature = "hardened"));

pub use cache::{
    Cache, CacheConfig, Ctor, DestroyError, LeakReport, LEAK_OWNERS, MAX_NODES, NAME_MAX,
    PARTIAL_BOUNDS,
};
pub use error::{AllocError, CreateError, FreeError, VerifyError};
pub use flags::{CacheFlags, DebugLetters, Gfp};
pub use kmalloc::{
    class_index, Kmalloc, KmallocKind, KreallocError, KMALLOC_CLASSES, KMALLOC_MAX_CACHE_SIZE,
    KMALLOC_MAX_SIZE, NR_CLASSES, ZERO_SIZE_PTR,
};
pub use layout::{LayoutError, SlabLayout};
pub use page_source::{PageBlock, PageSource, Rcu, RcuCallback, RcuHead};
pub use stats::{CacheStats, NodeStats, SlabInfoLine, SLABINFO_HEADER};
pub use typed::{SlabBox, TypedCache};
