//! Everything user space enters the kernel through: the page-fault handler,
//! the system-call table and its handlers (the MM calls in `sys_mm`, file
//! I/O and positions in `read_write`), and the ELF loader that builds a new
//! program's address space, with the vDSO it maps into each.

pub mod binfmt_elf;
pub mod fault;
pub mod read_write;
pub mod sys_mm;
pub mod syscalls;
pub mod vdso;
