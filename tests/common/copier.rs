//! A kernel's own mover for the facade tests: frame -> tag for every movable page it owns;
//! migration copies the block through the host map and moves the tag to the new frame.

use std::collections::HashMap;
use std::sync::Mutex;

use mmkit::addr::{Order, Pfn, PhysAddr};
use mmkit::buddy::{MoveError, Mover};
use mmkit::host::HostRam;

/// Owner of movable pages: frame -> tag; copies `4 KiB << order` through the map on migrate.
pub struct Copier<T> {
    pub mem: &'static HostRam,
    pub pages: Mutex<HashMap<u64, T>>,
}

impl<T> Copier<T> {
    /// A mover over `mem` owning no page yet.
    pub fn new(mem: &'static HostRam) -> Self {
        Self {
            mem,
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// The host address of frame `pfn`.
    pub fn ptr(&self, pfn: Pfn) -> *mut u8 {
        self.mem
            .ptr_of(PhysAddr::new(pfn.as_u64() * 4096))
            .unwrap()
            .as_ptr()
    }
}

impl<T: Send> Mover for Copier<T> {
    fn isolate(&self, pfn: Pfn, _: Order, _: u64) -> Result<(), MoveError> {
        match self.pages.lock().unwrap().contains_key(&pfn.as_u64()) {
            true => Ok(()),
            false => Err(MoveError::Refused),
        }
    }
    fn migrate(&self, src: Pfn, dst: Pfn, order: Order, private: u64) -> Result<u64, MoveError> {
        let mut t = self.pages.lock().unwrap();
        let tag = t.remove(&src.as_u64()).ok_or(MoveError::Refused)?;
        // SAFETY: both blocks are 2^order frames of this machine's memory, `src` isolated and
        // `dst` handed to us by the allocator; they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(self.ptr(src), self.ptr(dst), 4096 << order.get())
        };
        t.insert(dst.as_u64(), tag);
        Ok(private)
    }
    fn putback(&self, _: Pfn, _: Order, _: u64) {}
}
