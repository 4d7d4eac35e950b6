//! Helpers shared by the cache's unit tests.

extern crate std;

use core::ptr::NonNull;

use mmkit_addr::host::HostPlatform;

use crate::testing::TestPageSource;

pub(super) fn env() -> (TestPageSource, HostPlatform) {
    (TestPageSource::new(8 << 20), HostPlatform::new(1))
}

pub(super) fn fill(obj: NonNull<u8>, len: usize, byte: u8) {
    // SAFETY: tests only fill objects they own, within the object size.
    unsafe { core::ptr::write_bytes(obj.as_ptr(), byte, len) };
}

pub(super) fn read(obj: NonNull<u8>, i: usize) -> u8 {
    // SAFETY: tests only read objects they own, within the object size.
    unsafe { obj.as_ptr().add(i).read() }
}

/// CPU 0 on node 0, CPU 1 on node 1; run `f` on a thread bound to `cpu`.
pub(super) fn on_cpu<R: Send>(plat: &HostPlatform, cpu: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            plat.bind_current_thread(cpu);
            f()
        })
        .join()
        .unwrap()
    })
}
