//! Userland loading support, shared by the kernel and the host runner.
//!
//! * [`cpio`]: the Linux initramfs `newc` archive format: a zero-copy reader
//!   (kernel) and a writer (runner / build script).
//! * [`elf`]: validates a static x86_64 ELF executable (ET_EXEC or static
//!   PIE) and turns it into a [`elf::LoadPlan`] of segments to map.
//! * [`stack`]: the initial process stack (argc, argv, envp, auxv and the
//!   strings they point to) laid out exactly like Linux's
//!   `create_elf_tables`.
//! * [`vdso`]: the vDSO's ELF image (headers, dynamic symbols, versions)
//!   around the kernel's code.
//!
//! Everything is `#![no_std]` + `alloc`, free of `unsafe` and of global
//! state, and never panics on bad input: `cargo test -p exec` runs on the host.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cpio;
pub mod elf;
pub mod stack;
pub mod vdso;

/// The page size every module assumes (x86_64 base pages).
pub const PAGE_SIZE: u64 = 4096;
