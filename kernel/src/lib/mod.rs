//! The bottom layer: kernel support code every other folder may use and that
//! uses nothing of the kernel above it — locks, `printk`, and the *types* of
//! the tables that higher layers fill in (tests, console commands, sysctls).
//! Lists of tests, commands and sysctls are registered from the top
//! (`main.rs`), never named here.

pub mod command;
pub mod ktest;
pub mod printk;
pub mod sync;
pub mod sysctl;
