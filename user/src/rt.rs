//! Process start-up: the initial stack (argc, argv, envp, auxv) and the
//! panic handler.
//!
//! Linux enters `_start` (defined per program by [`crate::entry!`]) with `rsp`
//! pointing at `argc`, followed by `argv[0..argc]`, a NULL, the environment
//! pointers, a NULL, and the auxiliary vector of `(key, value)` pairs ending
//! with `AT_NULL`.

use core::ffi::CStr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::sys;

pub const AT_NULL: usize = 0;
pub const AT_PHDR: usize = 3;
pub const AT_PHENT: usize = 4;
pub const AT_PHNUM: usize = 5;
pub const AT_PAGESZ: usize = 6;
pub const AT_ENTRY: usize = 9;
pub const AT_RANDOM: usize = 25;

/// Address of the initial stack (`&argc`), set once by [`start`].
static STACK: AtomicUsize = AtomicUsize::new(0);

/// The initial-stack words starting at index `i` (argc is index 0).
fn word(i: usize) -> usize {
    let sp = STACK.load(Relaxed) as *const usize;
    // SAFETY: `start` stored the kernel-provided stack pointer; callers only
    // index within argc/argv/envp/auxv, which the kernel laid out contiguously.
    unsafe { *sp.add(i) }
}

/// Number of command-line arguments.
pub fn argc() -> usize {
    word(0)
}

/// Argument `i`, if present.
pub fn arg(i: usize) -> Option<&'static [u8]> {
    if i >= argc() {
        return None;
    }
    // SAFETY: argv[i] (i < argc) is a NUL-terminated string on the initial
    // stack, which lives for the whole process.
    Some(unsafe { CStr::from_ptr(word(1 + i) as *const core::ffi::c_char) }.to_bytes())
}

/// Argument `i` as the C string it is, if present.
pub fn arg_cstr(i: usize) -> Option<&'static CStr> {
    if i >= argc() {
        return None;
    }
    // SAFETY: as in `arg`.
    Some(unsafe { CStr::from_ptr(word(1 + i) as *const core::ffi::c_char) })
}

/// Index of `envp[0]` in the initial stack.
fn env_start() -> usize {
    argc() + 2
}

/// Number of environment strings.
pub fn env_count() -> usize {
    (env_start()..).take_while(|&i| word(i) != 0).count()
}

/// Value of auxiliary-vector entry `key`, if present.
pub fn auxv(key: usize) -> Option<usize> {
    let mut i = env_start() + env_count() + 1;
    loop {
        match word(i) {
            AT_NULL => return None,
            k if k == key => return Some(word(i + 1)),
            _ => i += 2,
        }
    }
}

/// Parses argument `i` as a decimal number, falling back to `default`.
pub fn arg_u64(i: usize, default: u64) -> u64 {
    arg(i).and_then(crate::fs::parse_u64).unwrap_or(default)
}

/// Rust-side entry: records the initial stack, runs `main`, then prints the
/// test summary and exits. Called from the `_start` defined by [`crate::entry!`].
///
/// # Safety
/// `sp` must be the initial stack pointer the kernel gave `_start`.
pub unsafe fn start(sp: *const usize, name: &str, main: fn()) -> ! {
    STACK.store(sp as usize, Relaxed);
    main();
    crate::test::finish(name)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::println!("PANIC {}", info);
    sys::exit_group(101)
}
