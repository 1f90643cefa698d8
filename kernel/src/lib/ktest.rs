//! The in-kernel test runner.
//!
//! Each subsystem lists its tests next to its code in a `KTESTS` slice built
//! with [`ktest!`]; the list of slices is built at the top (`ktests::SUITES`)
//! and handed to [`register`] at boot, so nothing here names a subsystem. A test returns
//! [`KResult`]: the `kassert!` macros return a [`TestFailure`] carrying the
//! message and location, so one failing test does not stop the others. A
//! panic inside a test is caught by the panic handler, which reports the test
//! as failed and prints the summary before ending the run.
//!
//! Output, one line per test and a final count that CI parses:
//!
//! ```text
//! test heap::heap_box_vec_and_string ... ok
//! test trap::breakpoint_is_handled_and_execution_resumes ... ok
//! 12 passed, 0 failed
//! ```

use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::{Mutex, Once};

use crate::println;

pub struct KTest {
    /// `module::function`, the name the filter matches against.
    pub name: &'static str,
    pub run: fn() -> KResult,
}

pub type KResult = Result<(), TestFailure>;

/// Why a test failed.
#[derive(Debug)]
pub struct TestFailure {
    pub message: String,
    pub file: &'static str,
    pub line: u32,
}

impl From<&str> for TestFailure {
    fn from(message: &str) -> Self {
        Self { message: message.into(), file: "", line: 0 }
    }
}

impl From<String> for TestFailure {
    fn from(message: String) -> Self {
        Self { message, file: "", line: 0 }
    }
}

/// Registers `function` as a test named after its module path.
#[macro_export]
macro_rules! ktest {
    ($f:ident) => {
        $crate::lib::ktest::KTest { name: $crate::lib::ktest::strip_crate(concat!(module_path!(), "::", stringify!($f))), run: $f }
    };
}

/// Fails the current test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! kassert {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::lib::ktest::TestFailure {
                message: alloc::format!("assertion `{}` failed: {}", stringify!($cond), format_args!($($msg)+)),
                file: file!(),
                line: line!(),
            });
        }
    };
}

/// Fails the current test unless `left == right`, printing both values.
#[macro_export]
macro_rules! kassert_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    return Err($crate::lib::ktest::TestFailure {
                        message: alloc::format!(
                            "assertion `{} == {}` failed\n    left: {:?}\n   right: {:?}",
                            stringify!($left), stringify!($right), l, r
                        ),
                        file: file!(),
                        line: line!(),
                    });
                }
            }
        }
    };
}

/// `kernel::heap::x` -> `heap::x` (const so names stay `&'static str`).
pub const fn strip_crate(path: &'static str) -> &'static str {
    let prefix = b"kernel::";
    let bytes = path.as_bytes();
    if bytes.len() < prefix.len() {
        return path;
    }
    let mut i = 0;
    while i < prefix.len() {
        if bytes[i] != prefix[i] {
            return path;
        }
        i += 1;
    }
    let (_, rest) = path.split_at(prefix.len());
    rest
}

/// Outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static CURRENT: Mutex<Option<&'static str>> = Mutex::new(None);
static SUITES: Once<&'static [&'static [KTest]]> = Once::new();

/// Registers the kernel's test suites (once, at boot).
pub fn register(suites: &'static [&'static [KTest]]) {
    SUITES.call_once(|| suites);
}

/// Iterates over every registered test.
pub fn all_tests() -> impl Iterator<Item = &'static KTest> {
    SUITES.get().copied().unwrap_or(&[]).iter().flat_map(|suite| suite.iter())
}

/// Runs every test whose name contains `filter` (all if `None`) and prints
/// one line per test and the `N passed, N failed` summary.
pub fn run(filter: Option<&str>) -> Summary {
    PASSED.store(0, Ordering::Relaxed);
    FAILED.store(0, Ordering::Relaxed);
    let selected = |t: &&KTest| filter.is_none_or(|f| t.name.contains(f));
    let count = all_tests().filter(selected).count();
    match filter {
        Some(f) => println!("running {} tests (filter \"{}\")", count, f),
        None => println!("running {} tests", count),
    }
    if count == 0 {
        println!("error: no test matches the filter");
        FAILED.store(1, Ordering::Relaxed);
    }
    for test in all_tests().filter(selected) {
        *CURRENT.lock() = Some(test.name);
        let result = (test.run)();
        *CURRENT.lock() = None;
        match result {
            Ok(()) => {
                PASSED.fetch_add(1, Ordering::Relaxed);
                println!("test {} ... ok", test.name);
            }
            Err(failure) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                println!("test {} ... FAILED", test.name);
                println!("    {} ({}:{})", failure.message, failure.file, failure.line);
            }
        }
    }
    let summary = Summary { passed: PASSED.load(Ordering::Relaxed), failed: FAILED.load(Ordering::Relaxed) };
    println!("{} passed, {} failed", summary.passed, summary.failed);
    summary
}

/// Called by the panic handler: if a test was running, report it as failed
/// and print the final summary (the remaining tests do not run).
pub fn report_panic_in_test() {
    // The panicking context may hold CURRENT; don't wait for it.
    let Some(current) = CURRENT.try_lock().and_then(|c| *c) else { return };
    let failed = FAILED.load(Ordering::Relaxed) + 1;
    println!("test {} ... FAILED (panicked)", current);
    println!("{} passed, {} failed", PASSED.load(Ordering::Relaxed), failed);
}
