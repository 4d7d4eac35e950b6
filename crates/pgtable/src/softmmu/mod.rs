//! Software MMUs: walk the raw tables as the hardware does, behind a TLB model.
//!
//! A [`Walker`] per architecture ([`x86_64::X86Walker`], [`aarch64::Aarch64Walker`]) decodes
//! descriptors with its *own* bit definitions (not the format's encoder, so the two check each
//! other), applies the architecture's permission rules (x86: RW/US ANDed and NX ORed across
//! levels, CR0.WP, SMEP, SMAP; aarch64: AP, UXN/PXN, EL0-writable implies PXN, PAN, the
//! hierarchical table controls, the access flag) and, where the hardware does, updates the
//! accessed/dirty bits in memory.
//!
//! [`SoftMmu`] caches every successful walk in a TLB keyed by page and size and serves later
//! accesses from it, *stale or not*, until a [`Flush`](crate::Flush) is invalidated through it
//! (it implements [`TlbInvalidate`]). A test that forgets a flush after unmap or protect
//! therefore sees the old translation and fails. Like the hardware, it never caches a fault,
//! and a fault drops the faulting page's entry. A walk cache ([`WalkCache`]) keeps every table
//! entry a walk followed and serves it instead of memory until an invalidation that is not
//! leaf-only covers it, so a flush that forgets to say "tables changed" walks into a freed
//! (and possibly reused) table.
//!
//! Both caches are tagged with the current address space ([`SoftMmu::set_asid`], as loading
//! CR3 with a PCID or TTBR0 with an ASID): a lookup uses only entries of the current
//! [`Asid`] and global translations (x86 G, aarch64 !nG), which carry no tag. The
//! ASID-scoped invalidations take the stricter reading of the hardware: they drop the
//! entries of that ASID and leave global ones, so a token that should have invalidated
//! globally but stayed in one address space leaves a stale global translation behind.

extern crate std;

use std::collections::HashMap;
use std::vec::Vec;

use mmkit_addr::{PageSize, PhysAddr, VirtAddr};

use crate::flush::{Asid, TlbInvalidate};

pub mod aarch64;
pub mod x86_64;

/// Kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Exec,
}

/// Privilege of the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// CPL 3 / EL0.
    User,
    /// CPL 0 / EL1.
    Kernel,
}

/// Why an access faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The address is outside every translated range.
    NonCanonical,
    /// No valid descriptor at this level.
    Translation {
        /// Level index from the root.
        level: usize,
    },
    /// A descriptor has reserved bits set or a type not allowed at its level.
    Reserved {
        /// Level index from the root.
        level: usize,
    },
    /// The access flag is clear (aarch64 without hardware AF management).
    AccessFlag,
    /// The mapping does not allow this access in this mode.
    Permission,
}

/// What a mapping allows, after combining every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    /// User read.
    pub user_r: bool,
    /// User write.
    pub user_w: bool,
    /// User execute.
    pub user_x: bool,
    /// Kernel read.
    pub kern_r: bool,
    /// Kernel write.
    pub kern_w: bool,
    /// Kernel execute.
    pub kern_x: bool,
}

impl Perms {
    /// Whether `access` in `mode` is allowed.
    pub fn allows(&self, access: Access, mode: Mode) -> bool {
        match (mode, access) {
            (Mode::User, Access::Read) => self.user_r,
            (Mode::User, Access::Write) => self.user_w,
            (Mode::User, Access::Exec) => self.user_x,
            (Mode::Kernel, Access::Read) => self.kern_r,
            (Mode::Kernel, Access::Write) => self.kern_w,
            (Mode::Kernel, Access::Exec) => self.kern_x,
        }
    }
}

/// A successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// First address of the page or block.
    pub page_va: u64,
    /// Its output address.
    pub page_pa: u64,
    /// log2 of its size.
    pub shift: u32,
    /// Effective permissions.
    pub perms: Perms,
    /// Whether a write may be served from the TLB without a new walk (x86: D already set).
    pub dirty: bool,
    /// Whether the translation is global (x86 G, aarch64 nG clear): cached untagged, used in
    /// every address space.
    pub global: bool,
}

/// A paging-structure (walk) cache: table entries the walker followed, keyed by the address
/// space they were cached in, the entry's VA shift and the address bits above it, served
/// instead of memory until invalidated.
#[derive(Debug, Default)]
pub struct WalkCache {
    entries: HashMap<(Asid, u32, u64), u64>,
    /// The address space lookups and fills use.
    current: Asid,
}

impl WalkCache {
    /// The cached table entry of the level indexed at `shift` for `va`, in the current
    /// address space.
    pub fn get(&self, shift: u32, va: u64) -> Option<u64> {
        self.entries
            .get(&(self.current, shift, va >> shift))
            .copied()
    }

    /// Remember a table entry the walker followed, in the current address space.
    pub fn insert(&mut self, shift: u32, va: u64, raw: u64) {
        self.entries.insert((self.current, shift, va >> shift), raw);
    }

    /// Drop every cached entry used to translate `va`, in every address space.
    pub fn drop_va(&mut self, va: u64) {
        self.entries
            .retain(|&(_, shift, prefix), _| va >> shift != prefix);
    }

    /// Drop the entries used to translate `va` in address space `asid`.
    pub fn drop_va_asid(&mut self, va: u64, asid: Asid) {
        self.entries
            .retain(|&(a, shift, prefix), _| a != asid || va >> shift != prefix);
    }

    /// Drop every entry of address space `asid`.
    pub fn drop_asid(&mut self, asid: Asid) {
        self.entries.retain(|&(a, _, _), _| a != asid);
    }

    /// Number of cached table entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A hardware table walker.
pub trait Walker {
    /// Walk for `va`, reading table (non-leaf) entries from `psc` when it has them and
    /// recording the ones read from memory into it. With `update`, set accessed (and, for a
    /// permitted write, dirty) bits as the hardware would.
    fn walk_cached(
        &self,
        va: u64,
        access: Access,
        mode: Mode,
        update: bool,
        psc: Option<&mut WalkCache>,
    ) -> Result<Walked, Fault>;

    /// Walk for `va` from memory only.
    fn walk(&self, va: u64, access: Access, mode: Mode, update: bool) -> Result<Walked, Fault> {
        self.walk_cached(va, access, mode, update, None)
    }

    /// The page and block sizes (log2) a walk can produce.
    fn shifts(&self) -> Vec<u32>;
}

/// A cached translation with its address space (`None`: global).
type Tagged = (Option<Asid>, Walked);

/// A walker plus a TLB that keeps stale entries until invalidated, tagged by address space.
pub struct SoftMmu<W: Walker> {
    walker: W,
    shifts: Vec<u32>,
    /// Per page and size: the translations cached, each with its address space (`None`:
    /// global).
    tlb: HashMap<(u64, u32), Vec<Tagged>>,
    psc: WalkCache,
    asid: Asid,
    /// Page invalidations received (every address space or one).
    pub page_invalidations: usize,
    /// Full invalidations received.
    pub full_invalidations: usize,
    /// Invalidations of one whole address space received.
    pub asid_invalidations: usize,
}

impl<W: Walker> SoftMmu<W> {
    /// An MMU with an empty TLB, in address space `Asid(0)`.
    pub fn new(walker: W) -> Self {
        let shifts = walker.shifts();
        Self {
            walker,
            shifts,
            tlb: HashMap::new(),
            psc: WalkCache::default(),
            asid: Asid(0),
            page_invalidations: 0,
            full_invalidations: 0,
            asid_invalidations: 0,
        }
    }

    /// The walker.
    pub fn walker(&self) -> &W {
        &self.walker
    }

    /// Replace the walker (e.g. a new root), keeping the TLB — as loading CR3 with global
    /// pages or switching TTBR without ASIDs would keep stale entries.
    pub fn set_walker(&mut self, walker: W) {
        self.walker = walker;
    }

    /// Switch to address space `asid` without invalidating anything (CR3 with the no-flush
    /// bit, TTBR0 with a new ASID): entries of other address spaces stay cached but are not
    /// used until it is current again; global ones are used everywhere.
    pub fn set_asid(&mut self, asid: Asid) {
        self.asid = asid;
        self.psc.current = asid;
    }

    /// The current address space.
    pub fn asid(&self) -> Asid {
        self.asid
    }

    /// Number of cached translations (every address space).
    pub fn tlb_entries(&self) -> usize {
        self.tlb.values().map(Vec::len).sum()
    }

    /// Number of cached table entries (the walk cache).
    pub fn walk_cache_entries(&self) -> usize {
        self.psc.len()
    }

    fn lookup(&self, va: u64) -> Option<Walked> {
        self.shifts.iter().find_map(|&s| {
            let key = (va & !((1u64 << s) - 1), s);
            self.tlb.get(&key).and_then(|v| {
                v.iter()
                    .find(|(tag, _)| tag.is_none() || *tag == Some(self.asid))
                    .map(|&(_, w)| w)
            })
        })
    }

    /// Drop the entries of `va` (of any size) that `keep` does not keep.
    fn drop_va_where(&mut self, va: u64, mut drop: impl FnMut(Option<Asid>) -> bool) {
        for &s in &self.shifts {
            let key = (va & !((1u64 << s) - 1), s);
            if let Some(v) = self.tlb.get_mut(&key) {
                v.retain(|&(tag, _)| !drop(tag));
                if v.is_empty() {
                    self.tlb.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, w: Walked) {
        let tag = if w.global { None } else { Some(self.asid) };
        let v = self.tlb.entry((w.page_va, w.shift)).or_default();
        v.retain(|&(t, _)| t != tag);
        v.push((tag, w));
    }

    /// Perform an access: from the TLB if cached (even if stale), else by a walk that fills it.
    /// Returns the physical address accessed.
    pub fn access(&mut self, va: VirtAddr, access: Access, mode: Mode) -> Result<PhysAddr, Fault> {
        let va = va.as_u64();
        let cached = self
            .lookup(va)
            .filter(|w| access != Access::Write || w.dirty || !w.perms.allows(access, mode));
        let w = match cached {
            Some(w) => w,
            None => match self
                .walker
                .walk_cached(va, access, mode, true, Some(&mut self.psc))
            {
                Ok(w) => {
                    self.insert(w);
                    w
                }
                Err(f) => {
                    // Like the hardware: a fault drops what this address space (and the
                    // global set) had cached for the page.
                    let asid = self.asid;
                    self.drop_va_where(va, |tag| tag.is_none() || tag == Some(asid));
                    return Err(f);
                }
            },
        };
        if !w.perms.allows(access, mode) {
            let asid = self.asid;
            self.drop_va_where(va, |tag| tag.is_none() || tag == Some(asid));
            return Err(Fault::Permission);
        }
        Ok(PhysAddr::new(w.page_pa + (va - w.page_va)))
    }

    /// Walk without the TLB and without touching accessed/dirty bits.
    pub fn peek(&self, va: VirtAddr, access: Access, mode: Mode) -> Result<Walked, Fault> {
        self.walker.walk(va.as_u64(), access, mode, false)
    }
}

// SAFETY: the model's only caches are `tlb` and `psc`; a page invalidation removes every entry
// containing the address (of any size, in every address space, or in the one named: its
// tagged entries and nothing global, the weakest the hardware does), an ASID invalidation
// every entry tagged with it, and invalidate_all everything.
unsafe impl<W: Walker> TlbInvalidate for SoftMmu<W> {
    fn invalidate_page(&mut self, va: VirtAddr, _size: PageSize, leaf_only: bool) {
        self.page_invalidations += 1;
        // As INVLPG / TLBI VAAE1: entries of any size that contain `va`, nothing else; the
        // walk cache too unless only leaves changed (TLBI VAALE1). (x86 INVLPG always drops
        // the walk cache; modelling the narrower aarch64 rule is the stricter test.)
        self.drop_va_where(va.as_u64(), |_| true);
        if !leaf_only {
            self.psc.drop_va(va.as_u64());
        }
    }

    fn invalidate_page_asid(&mut self, va: VirtAddr, _size: PageSize, leaf_only: bool, asid: Asid) {
        self.page_invalidations += 1;
        // As INVPCID type 0: the page's entries tagged `asid`; global ones stay.
        self.drop_va_where(va.as_u64(), |tag| tag == Some(asid));
        if !leaf_only {
            self.psc.drop_va_asid(va.as_u64(), asid);
        }
    }

    fn invalidate_asid(&mut self, asid: Asid) {
        self.asid_invalidations += 1;
        // As INVPCID type 1: everything tagged `asid`; global entries stay.
        self.tlb.retain(|_, v| {
            v.retain(|&(tag, _)| tag != Some(asid));
            !v.is_empty()
        });
        self.psc.drop_asid(asid);
    }

    fn invalidate_all(&mut self) {
        self.full_invalidations += 1;
        self.tlb.clear();
        self.psc = WalkCache {
            current: self.asid,
            ..WalkCache::default()
        };
    }
}
