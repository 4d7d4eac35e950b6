//! Self-test checks both kernels run the same way: they look only at the memory map, the
//! kernel's own layout, the command line and the platform hooks, so they live here and are
//! tested on the host against hand-made maps and a fake platform.

use mmkit_addr::{IrqControl, PhysMapper, PhysRange};

use crate::cmdline;
use crate::harness::CheckResult;
use crate::memmap::{MemoryMap, RegionKind};
use crate::{ensure, fail};

/// The command-line parameter carrying the RAM size QEMU was started with (`-m`).
pub const EXPECT_MEM_PARAM: &str = "mmkit.expect_mem";

/// How much RAM firmware may keep for itself below what `-m` asked for and still count as
/// "matching": QEMU's x86 map loses the legacy hole below 1 MiB (384 KiB + the EBDA) and, with
/// SeaBIOS, a few hundred KiB at the top of low RAM for ACPI tables.
pub const FIRMWARE_SLACK: u64 = 4 << 20;

/// The command-line parameter with which the boot script injects a failure, to prove that
/// each way of failing is reported (see [`Injection`]).
pub const INJECT_PARAM: &str = "mmkit.inject";

/// A failure injected on purpose (`mmkit.inject=check|panic|fault|shootdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// One extra check that fails.
    Check,
    /// A panic after the checks, before the summary line.
    Panic,
    /// An access that faults with no exception-table entry, after the checks.
    Fault,
    /// TLB shootdowns skip the other CPUs (the cross-CPU protocol broken): the SMP
    /// self-test must notice the stale translations.
    Shootdown,
}

/// The injection requested on `cmdline`: `Ok(None)` without the parameter, `Err(value)` for a
/// value that names no injection.
pub fn injection(cmdline: &str) -> Result<Option<Injection>, &str> {
    match cmdline::param(cmdline, INJECT_PARAM) {
        None => Ok(None),
        Some("check") => Ok(Some(Injection::Check)),
        Some("panic") => Ok(Some(Injection::Panic)),
        Some("fault") => Ok(Some(Injection::Fault)),
        Some("shootdown") => Ok(Some(Injection::Shootdown)),
        Some(other) => Err(other),
    }
}

/// The deepest the boot stack may get, in percent of its size, before
/// [`stack_has_headroom`] fails: what is left is the margin for paths the checks do not take
/// (panics, exception handlers on top of the deepest call).
pub const STACK_LIMIT_PERCENT: u64 = 75;

/// The boot stack used `used` of `size` bytes: fail above [`STACK_LIMIT_PERCENT`].
pub fn stack_has_headroom(used: u64, size: u64) -> CheckResult {
    ensure!(
        used * 100 <= size * STACK_LIMIT_PERCENT,
        "boot stack used {} of {} KiB (limit {STACK_LIMIT_PERCENT}%)",
        used >> 10,
        size >> 10
    );
    Ok(())
}

/// The map is sorted and sane (RAM present, RAM regions disjoint).
pub fn memmap_is_sane(map: &MemoryMap) -> CheckResult {
    if let Err(problem) = map.check() {
        fail!("{problem}");
    }
    Ok(())
}

/// The RAM the map reports is what QEMU was told to give (`mmkit.expect_mem=` on the command
/// line), less at most [`FIRMWARE_SLACK`]. `None` when the parameter is absent: the caller
/// then skips the check.
pub fn ram_matches_command_line(map: &MemoryMap, cmdline: &str) -> Option<CheckResult> {
    let value = cmdline::param(cmdline, EXPECT_MEM_PARAM)?;
    Some(ram_matches(map, value))
}

fn ram_matches(map: &MemoryMap, value: &str) -> CheckResult {
    let Some(expected) = cmdline::parse_size(value) else {
        fail!("{EXPECT_MEM_PARAM}={value} is not a size");
    };
    let ram = map.total(RegionKind::Ram);
    ensure!(
        ram <= expected && ram + FIRMWARE_SLACK >= expected,
        "map has {ram:#x} bytes of RAM, QEMU was given {expected:#x}"
    );
    Ok(())
}

/// `range` (named `what` in the failure message) lies wholly in RAM.
pub fn range_is_ram(map: &MemoryMap, range: PhysRange, what: &str) -> CheckResult {
    ensure!(map.is_ram(range), "{what} {range} is not inside RAM");
    Ok(())
}

/// Interrupt guards nest: starting with interrupts enabled, an outer and an inner guard both
/// disable them, dropping the inner one leaves them disabled, dropping the outer one enables
/// them again, and the guard reports CPU 0 (the kernels run on the boot CPU only).
/// `interrupts_enabled` reads the real flag (RFLAGS.IF, PSTATE.I).
pub fn irq_guard_nests<P: IrqControl>(
    platform: &P,
    interrupts_enabled: impl Fn() -> bool,
) -> CheckResult {
    ensure!(
        interrupts_enabled(),
        "interrupts not enabled before the test"
    );
    ensure!(
        platform.nr_cpus() == 1,
        "{} CPUs, expected 1",
        platform.nr_cpus()
    );
    {
        let outer = platform.irq_save();
        ensure!(outer.cpu() == 0, "guard on CPU {}", outer.cpu());
        ensure!(!interrupts_enabled(), "outer guard left interrupts enabled");
        {
            let _inner = platform.irq_save();
            ensure!(!interrupts_enabled(), "inner guard left interrupts enabled");
        }
        ensure!(
            !interrupts_enabled(),
            "dropping the inner guard enabled interrupts inside the outer one"
        );
    }
    ensure!(
        interrupts_enabled(),
        "dropping the outer guard did not enable interrupts again"
    );
    Ok(())
}

/// The kernel's direct-map hook reaches `ram` at the expected virtual address (`ram.start()`
/// plus `offset`) and refuses a range that ends above `limit`.
pub fn mapper_translates<M: PhysMapper>(
    mapper: &M,
    offset: u64,
    limit: u64,
    ram: PhysRange,
) -> CheckResult {
    let Some(va) = mapper.phys_to_virt(ram) else {
        fail!("{ram} not reachable through the mapper");
    };
    let expected = ram.start().as_u64().wrapping_add(offset);
    ensure!(
        va.as_ptr() as usize as u64 == expected,
        "{ram} mapped at {:p}, expected {expected:#x}",
        va.as_ptr()
    );
    if let Ok(beyond) = PhysRange::from_start_size(mmkit_addr::PhysAddr::new(limit), 4096) {
        ensure!(
            mapper.phys_to_virt(beyond).is_none(),
            "{beyond} beyond the mapper's limit was translated"
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use core::cell::Cell;

    use mmkit_addr::{CpuTopology, OffsetMapper, PhysAddr};

    use super::*;

    fn map_512m() -> MemoryMap {
        let mut m = MemoryMap::new();
        m.add(0, 0x9fc00, RegionKind::Ram).unwrap();
        m.add(0x9fc00, 0x400, RegionKind::Reserved).unwrap();
        m.add(0x100000, 0x1fee0000, RegionKind::Ram).unwrap();
        m.add(0x1ffe0000, 0x20000, RegionKind::Reserved).unwrap();
        m
    }

    #[test]
    fn ram_check_accepts_the_expected_size_less_firmware_holes() {
        let m = map_512m();
        assert!(ram_matches_command_line(&m, "mmkit.expect_mem=512M")
            .unwrap()
            .is_ok());
    }

    #[test]
    fn ram_check_rejects_a_different_size_and_a_bad_value() {
        let m = map_512m();
        let wrong = ram_matches_command_line(&m, "mmkit.expect_mem=1G").unwrap();
        assert!(wrong
            .unwrap_err()
            .as_str()
            .contains("QEMU was given 0x40000000"));
        assert!(ram_matches_command_line(&m, "mmkit.expect_mem=256M")
            .unwrap()
            .is_err());
        assert!(ram_matches_command_line(&m, "mmkit.expect_mem=lots")
            .unwrap()
            .is_err());
        assert!(ram_matches_command_line(&m, "console=ttyS0").is_none());
    }

    #[test]
    fn stack_check_allows_three_quarters() {
        assert!(stack_has_headroom(48 << 10, 64 << 10).is_ok());
        let err = stack_has_headroom(49 << 10, 64 << 10).unwrap_err();
        assert!(err.as_str().contains("used 49 of 64 KiB"), "{err}");
    }

    #[test]
    fn injection_parses_known_values_and_rejects_others() {
        assert_eq!(injection("quiet"), Ok(None));
        assert_eq!(injection("mmkit.inject=check"), Ok(Some(Injection::Check)));
        assert_eq!(
            injection("a mmkit.inject=panic"),
            Ok(Some(Injection::Panic))
        );
        assert_eq!(
            injection("mmkit.inject=fault b"),
            Ok(Some(Injection::Fault))
        );
        assert_eq!(
            injection("mmkit.inject=shootdown"),
            Ok(Some(Injection::Shootdown))
        );
        assert_eq!(injection("mmkit.inject=boom"), Err("boom"));
    }

    #[test]
    fn sanity_and_range_checks_report_problems() {
        let mut m = map_512m();
        m.sort();
        assert!(memmap_is_sane(&m).is_ok());
        let kernel = PhysRange::from_start_size(PhysAddr::new(0x100000), 0x40000).unwrap();
        assert!(range_is_ram(&m, kernel, "kernel").is_ok());
        let hole = PhysRange::from_start_size(PhysAddr::new(0x9f000), 0x2000).unwrap();
        let err = range_is_ram(&m, hole, "kernel").unwrap_err();
        assert!(err.as_str().starts_with("kernel [0x"));
        assert!(memmap_is_sane(&MemoryMap::new()).is_err());
    }

    /// A one-CPU platform whose "interrupt flag" is a cell, with a switch that breaks
    /// `restore` so the check can be seen to fail.
    struct FakeCpu {
        enabled: Cell<bool>,
        broken_restore: bool,
    }

    // SAFETY: test-only, used from one thread; one CPU with id 0.
    unsafe impl CpuTopology for FakeCpu {
        fn nr_cpus(&self) -> usize {
            1
        }
        fn current_cpu(&self) -> usize {
            0
        }
    }
    // SAFETY: test-only and single-threaded (the `Sync` below is never exercised across threads).
    unsafe impl Sync for FakeCpu {}

    // SAFETY: single-threaded test platform; sections nest because guards drop in order.
    unsafe impl IrqControl for FakeCpu {
        type State = bool;
        fn save_disable(&self) -> bool {
            self.enabled.replace(false)
        }
        unsafe fn restore(&self, state: bool) {
            if !self.broken_restore {
                self.enabled.set(state);
            }
        }
    }

    #[test]
    fn irq_guard_check_passes_on_a_correct_platform_and_catches_a_broken_one() {
        let good = FakeCpu {
            enabled: Cell::new(true),
            broken_restore: false,
        };
        assert!(irq_guard_nests(&good, || good.enabled.get()).is_ok());
        let broken = FakeCpu {
            enabled: Cell::new(true),
            broken_restore: true,
        };
        let err = irq_guard_nests(&broken, || broken.enabled.get()).unwrap_err();
        assert!(err.as_str().contains("did not enable interrupts again"));
        let off = FakeCpu {
            enabled: Cell::new(false),
            broken_restore: false,
        };
        assert!(irq_guard_nests(&off, || off.enabled.get()).is_err());
    }

    #[test]
    fn mapper_check_verifies_offset_and_limit() {
        let ram = PhysRange::from_start_size(PhysAddr::new(0x4000_0000), 0x1000).unwrap();
        // SAFETY: the mapper is only asked to translate, never dereferenced.
        let good = unsafe { OffsetMapper::new(0x1000_0000_0000, 1 << 32) };
        assert!(mapper_translates(&good, 0x1000_0000_0000, 1 << 32, ram).is_ok());
        assert!(mapper_translates(&good, 0, 1 << 32, ram).is_err());
        // SAFETY: as above.
        let short = unsafe { OffsetMapper::new(0, 0x4000_0000) };
        assert!(mapper_translates(&short, 0, 0x4000_0000, ram).is_err());
    }
}
