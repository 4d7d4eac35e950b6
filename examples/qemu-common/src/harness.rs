//! A tiny self-test harness for a kernel with nothing but a serial port.
//!
//! Each check has a name and returns [`CheckResult`]; [`Harness::run`] prints
//! `check <name> ... ok` or `check <name> ... FAILED: <why>` (the name goes out *before* the
//! check runs, so a check that hangs or takes an unexpected exception is still attributable),
//! and [`Harness::finish`] prints exactly one summary line:
//!
//! * `mmkit-qemu: all N checks passed` — the line `scripts/qemu-test.sh` waits for; or
//! * `mmkit-qemu: F of N checks FAILED (first: <name>)`.
//!
//! A run with no checks at all is a failure: it proves nothing.
//!
//! Failure messages are formatted into a fixed buffer ([`Reason`]) because the kernels have no
//! heap while the checks run; a message longer than the buffer is cut at a character boundary
//! and ends in `...`.

use core::fmt::{self, Write};

/// The text of the summary line printed when every check passed, before the count.
pub const PASS_PREFIX: &str = "mmkit-qemu: all ";

/// Why a check failed: a message of at most [`Reason::CAPACITY`] bytes.
#[derive(Clone)]
pub struct Reason {
    buf: [u8; Reason::CAPACITY],
    len: u8,
    truncated: bool,
}

const _: () = assert!(Reason::CAPACITY <= u8::MAX as usize);

impl Reason {
    /// Bytes of message kept: enough for a sentence with a few hex addresses, small enough
    /// that a `CheckResult` stays cheap to return (clippy's `result_large_err` bound is 128).
    pub const CAPACITY: usize = 120;

    /// Format `args` into a new reason.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut reason = Self {
            buf: [0; Self::CAPACITY],
            len: 0,
            truncated: false,
        };
        // `write_str` below never fails; a too-long message is truncated instead.
        let _ = reason.write_fmt(args);
        reason
    }

    /// The message (possibly truncated).
    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 characters are ever copied in, so this cannot fail; fall back to an
        // empty message rather than panic if that promise were ever broken.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the message was cut to fit.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl Write for Reason {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let len = usize::from(self.len);
        let mut take = s.len().min(Self::CAPACITY - len);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[len..len + take].copy_from_slice(&s.as_bytes()[..take]);
        // CAPACITY fits in a u8, and len + take <= CAPACITY.
        self.len = (len + take) as u8;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({self})")
    }
}

/// What a check returns.
pub type CheckResult = Result<(), Reason>;

/// Fail the current check with a formatted reason unless `cond` holds.
///
/// ```
/// use mmkit_qemu_common::{ensure, harness::CheckResult};
/// fn positive(x: i32) -> CheckResult {
///     ensure!(x > 0, "{x} is not positive");
///     Ok(())
/// }
/// assert!(positive(1).is_ok());
/// assert_eq!(positive(-2).unwrap_err().as_str(), "-2 is not positive");
/// ```
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::harness::Reason::new(format_args!($($arg)+)));
        }
    };
}

/// Fail the current check with a formatted reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)+) => {
        return Err($crate::harness::Reason::new(format_args!($($arg)+)))
    };
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every one of `checks` checks passed (and there was at least one).
    Passed {
        /// How many checks ran.
        checks: u32,
    },
    /// `failed` of `checks` checks failed, or no check ran at all (`checks == 0`).
    Failed {
        /// How many checks failed.
        failed: u32,
        /// How many checks ran.
        checks: u32,
    },
}

impl Outcome {
    /// Whether the run passed.
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Passed { .. })
    }
}

/// Runs named checks and reports them on `out` (the serial port).
pub struct Harness<W: Write> {
    out: W,
    passed: u32,
    failed: u32,
    first_failure: Option<&'static str>,
}

impl<W: Write> Harness<W> {
    /// A harness reporting on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            passed: 0,
            failed: 0,
            first_failure: None,
        }
    }

    /// Run one check and print its result. Returns whether it passed.
    pub fn run(&mut self, name: &'static str, check: impl FnOnce() -> CheckResult) -> bool {
        // Output errors cannot be reported anywhere else; the summary still counts the check.
        let _ = write!(self.out, "check {name} ... ");
        match check() {
            Ok(()) => {
                self.passed += 1;
                let _ = writeln!(self.out, "ok");
                true
            }
            Err(reason) => {
                self.failed += 1;
                self.first_failure.get_or_insert(name);
                let _ = writeln!(self.out, "FAILED: {reason}");
                false
            }
        }
    }

    /// Record a check that was not run, and why (`check <name> ... skipped (<why>)`). Skipped
    /// checks count neither as passed nor as failed.
    pub fn skip(&mut self, name: &'static str, why: &str) {
        let _ = writeln!(self.out, "check {name} ... skipped ({why})");
    }

    /// The writer, for a check that wants to print details of what it saw.
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }

    /// Print the summary line and return the outcome.
    pub fn finish(mut self) -> Outcome {
        let checks = self.passed + self.failed;
        let outcome = if self.failed == 0 && checks > 0 {
            Outcome::Passed { checks }
        } else {
            Outcome::Failed {
                failed: self.failed,
                checks,
            }
        };
        let _ = match (outcome, self.first_failure) {
            (Outcome::Passed { checks }, _) => {
                writeln!(self.out, "{PASS_PREFIX}{checks} checks passed")
            }
            (Outcome::Failed { failed, checks }, Some(first)) => writeln!(
                self.out,
                "mmkit-qemu: {failed} of {checks} checks FAILED (first: {first})"
            ),
            (Outcome::Failed { .. }, None) => writeln!(self.out, "mmkit-qemu: no checks ran"),
        };
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CheckResult {
        Ok(())
    }

    fn bad(x: u32) -> CheckResult {
        ensure!(x == 1, "x was {x}");
        Ok(())
    }

    #[test]
    fn all_passing_checks_print_the_success_line() {
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        assert!(h.run("first", ok));
        assert!(h.run("second", || bad(1)));
        assert_eq!(h.finish(), Outcome::Passed { checks: 2 });
        assert_eq!(
            out,
            "check first ... ok\ncheck second ... ok\nmmkit-qemu: all 2 checks passed\n"
        );
    }

    #[test]
    fn one_failure_fails_the_run_and_names_the_first_failure() {
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        h.run("good", ok);
        assert!(!h.run("broken", || bad(7)));
        h.run("also_broken", || bad(8));
        let outcome = h.finish();
        assert_eq!(
            outcome,
            Outcome::Failed {
                failed: 2,
                checks: 3
            }
        );
        assert!(!outcome.passed());
        assert!(out.contains("check broken ... FAILED: x was 7\n"));
        assert!(out.ends_with("mmkit-qemu: 2 of 3 checks FAILED (first: broken)\n"));
        assert!(!out.contains(PASS_PREFIX));
    }

    #[test]
    fn skipped_checks_are_reported_but_not_counted() {
        let mut out = String::new();
        let mut h = Harness::new(&mut out);
        h.run("real", ok);
        h.skip("optional", "no parameter");
        assert_eq!(h.finish(), Outcome::Passed { checks: 1 });
        assert!(out.contains("check optional ... skipped (no parameter)\n"));
    }

    #[test]
    fn a_run_without_checks_fails() {
        let mut out = String::new();
        let outcome = Harness::new(&mut out).finish();
        assert!(!outcome.passed());
        assert_eq!(out, "mmkit-qemu: no checks ran\n");
    }

    #[test]
    fn long_reasons_are_truncated_at_a_char_boundary() {
        let long = "é".repeat(Reason::CAPACITY);
        let reason = Reason::new(format_args!("{long}"));
        assert!(reason.is_truncated());
        assert!(reason.as_str().len() <= Reason::CAPACITY);
        assert!(reason.as_str().chars().all(|c| c == 'é'));
        assert!(reason.to_string().ends_with("..."));
    }

    #[test]
    fn fail_macro_returns_the_formatted_reason() {
        fn always() -> CheckResult {
            fail!("code {}", 42);
        }
        assert_eq!(always().unwrap_err().as_str(), "code 42");
    }
}
