//! PASS/FAIL reporting and the closing summary line.
//!
//! Output format (stable, compared line by line against Linux):
//! `PASS name`, `FAIL name (details)`, `SKIP name (reason)`, and at exit
//! `<prog>: N passed, M failed`. Lines starting with `INFO` carry values that
//! legitimately differ between systems (addresses, counters, timings).

use core::fmt::{self, Display};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::io::Ret;
use crate::{println, sys};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Records and prints a boolean check; `details` explains a failure.
pub fn check_with(name: impl Display, ok: bool, details: fmt::Arguments) {
    if ok {
        PASSED.fetch_add(1, Relaxed);
        println!("PASS {name}");
    } else {
        FAILED.fetch_add(1, Relaxed);
        println!("FAIL {name} ({details})");
    }
}

/// Records and prints a boolean check.
pub fn check(name: impl Display, ok: bool) {
    check_with(name, ok, format_args!("condition false"));
}

/// Checks that a raw syscall result equals `want` (a value or `-errno`).
pub fn check_ret(name: impl Display, got: isize, want: isize) {
    check_with(name, got == want, format_args!("got {}, want {}", Ret(got), Ret(want)));
}

/// Checks that a raw syscall result is one of `wants`.
pub fn check_ret_in(name: impl Display, got: isize, wants: &[isize]) {
    check_with(name, wants.contains(&got), format_args!("got {}", Ret(got)));
}

/// Checks that a raw syscall result is not an error.
pub fn check_ok(name: impl Display, got: isize) {
    check_with(name, got >= 0, format_args!("got {}", Ret(got)));
}

/// Prints a skipped check (counts neither as passed nor failed).
pub fn skip(name: impl Display, reason: &str) {
    println!("SKIP {name} ({reason})");
}

/// Prints the summary line and exits: status 0 iff nothing failed.
pub fn finish(name: &str) -> ! {
    let (passed, failed) = (PASSED.load(Relaxed), FAILED.load(Relaxed));
    println!("{name}: {passed} passed, {failed} failed");
    sys::exit_group(if failed == 0 { 0 } else { 1 })
}
