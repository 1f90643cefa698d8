//! Tiny runtime for the ring-3 test programs.
//!
//! The programs speak the Linux x86_64 syscall ABI only, so the same static
//! binaries run on Linux (the oracle) and on this kernel. Each program calls
//! [`entry!`] with its `main`; the runtime parses the initial stack, runs
//! `main`, prints `<prog>: N passed, M failed` and exits with status 0 iff
//! no check failed (101 on panic).
#![no_std]

pub mod fs;
pub mod io;
pub mod mem;
pub mod rt;
pub mod sys;
pub mod test;

pub use test::{check, check_ok, check_ret, check_ret_in, check_with, skip};

/// Defines the program's `_start`, which calls `main` through [`rt::start`].
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        extern "C" fn __user_entry(sp: *const usize) -> ! {
            // SAFETY: `_start` passes the untouched initial stack pointer.
            unsafe { $crate::rt::start(sp, env!("CARGO_BIN_NAME"), $main) }
        }

        /// Process entry point: passes the initial stack pointer on, with the
        /// stack realigned to 16 bytes as the C ABI requires at a call.
        // SAFETY: a naked entry point that only moves `rsp` into the first
        // argument register and calls a function that never returns.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub extern "C" fn _start() -> ! {
            core::arch::naked_asm!(
                "xor ebp, ebp",
                "mov rdi, rsp",
                "and rsp, -16",
                "call {entry}",
                "ud2",
                entry = sym __user_entry,
            )
        }
    };
}
