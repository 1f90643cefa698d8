//! Loading a static ELF program into a new process (Linux
//! `fs/binfmt_elf.c`: `load_elf_binary` and `create_elf_tables`).
//!
//! The host-tested `exec` crate validates the file and plans the layout
//! (segments, entry, `AT_PHDR`, the first `brk`) and builds the initial stack
//! image (argc, argv, envp, auxv and their strings). This module carries the
//! plan out in a fresh address space, using the same `mmap`/`mprotect` code
//! as the system calls: every segment is mapped writable and anonymous, the
//! file bytes are copied in, the rest stays zero (`.bss`), and then the
//! segment gets its final protection. The stack is a `[stack]` VMA that grows
//! down on faults; `[vvar]` and `[vdso]` come from [`crate::entry::vdso`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use exec::elf::{self, ElfError, ET_DYN_BASE};
use exec::stack::{AuxvInfo, StackError};
use mm::errno::Errno;
use mm::gfp::GFP_KERNEL;
use mm::mman::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE};
use mm::vma::{linear_pgoff, MapFixed, VmFlags, VmaKind};

use crate::fs::ramfs::{self, FdTable};
use crate::memory::mm_struct::{self, Mm};
use crate::task::sched::{self, Pid};
use crate::arch::x86_64::uaccess;
use crate::entry::sys_mm::{mmap, mprotect, with_mm};

/// Top of the user stack (Linux `STACK_TOP` without randomisation).
pub const STACK_TOP: u64 = mm::vma::TASK_SIZE;
/// Size of the stack VMA at exec; it grows on demand up to `RLIMIT_STACK`.
const STACK_INITIAL: u64 = 128 * 1024;
/// Largest argv + envp (Linux `MAX_ARG_STRLEN`-ish bound for this kernel).
const MAX_ARG_BYTES: usize = 128 * 1024;

#[derive(Debug)]
pub enum ExecError {
    /// The file could not be read (`ENOENT`, `EISDIR`, ...).
    File(Errno),
    Elf(ElfError),
    Stack(StackError),
    /// Setting up the address space failed (out of memory, usually).
    Mm(Errno),
    NoKernelStack,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::File(e) => write!(f, "{}", e),
            ExecError::Elf(e) => write!(f, "bad ELF file: {}", e),
            ExecError::Stack(e) => write!(f, "cannot build the stack: {}", e),
            ExecError::Mm(e) => write!(f, "cannot set up the address space: {}", e),
            ExecError::NoKernelStack => write!(f, "no memory for a kernel stack"),
        }
    }
}

/// Creates a process running `argv[0]` (a path in the initramfs) with the
/// given arguments and environment; it starts at the next scheduling point.
pub fn spawn(argv: &[&str], envp: &[String]) -> Result<Pid, ExecError> {
    let path = *argv.first().ok_or(ExecError::File(Errno::EINVAL))?;
    let image = ramfs::read_file(path).map_err(ExecError::File)?;
    let plan = elf::parse(image, ET_DYN_BASE).map_err(ExecError::Elf)?;
    let mm = Mm::new(GFP_KERNEL).map_err(|_| ExecError::Mm(Errno::ENOMEM))?;
    // Build the address space with it current, so the copies below go
    // through the ordinary user-access path (and its fault handling).
    assert_eq!(sched::current_pid(), 0, "exec from task 0 only");
    mm_struct::activate(mm);
    let loaded = load(image, &plan, argv, envp);
    let mm = mm_struct::deactivate().expect("the new mm is current");
    let (entry, rsp) = match loaded {
        Ok(v) => v,
        Err(e) => {
            mm.destroy();
            return Err(e);
        }
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    sched::spawn(name, mm, FdTable::with_console(), entry, rsp).map_err(|_| ExecError::NoKernelStack)
}

/// Maps the segments and the stack into the current (new) address space.
/// Returns the entry point and the initial stack pointer.
fn load(image: &[u8], plan: &elf::LoadPlan, argv: &[&str], envp: &[String]) -> Result<(u64, u64), ExecError> {
    for seg in &plan.segments {
        let (start, end) = (seg.page_start(), seg.page_end());
        map_fixed_anon(start, end - start).map_err(ExecError::Mm)?;
        uaccess::copy_to_user(seg.vaddr, seg.file_bytes(image)).map_err(ExecError::Mm)?;
        protect(start, end - start, seg.prot.read, seg.prot.write, seg.prot.exec).map_err(ExecError::Mm)?;
    }
    let text = plan.segments.iter().find(|s| s.prot.exec).map_or((0, 0), |s| (s.vaddr, s.vaddr + s.memsz));
    set_brk_start(plan.brk_start, text).map_err(ExecError::Mm)?;
    map_stack(STACK_TOP - STACK_INITIAL, STACK_INITIAL).map_err(ExecError::Mm)?;
    let vdso = crate::entry::vdso::map_into_current().map_err(ExecError::Mm)?;

    let argv: Vec<&str> = argv.to_vec();
    let envp: Vec<&str> = envp.iter().map(String::as_str).collect();
    let bytes: usize = argv.iter().chain(envp.iter()).map(|s| s.len() + 1).sum();
    if bytes > MAX_ARG_BYTES {
        return Err(ExecError::Stack(StackError::TooLarge));
    }
    let info = AuxvInfo { sysinfo_ehdr: vdso, ..AuxvInfo::new(plan, argv[0], random_bytes()) };
    let stack = exec::stack::build(STACK_TOP, &argv, &envp, &info).map_err(ExecError::Stack)?;
    uaccess::copy_to_user(stack.low, &stack.bytes).map_err(ExecError::Mm)?;
    Ok((plan.entry, stack.rsp))
}

/// 16 bytes for `AT_RANDOM`, mixed from the TSC.
fn random_bytes() -> [u8; 16] {
    let mut x = crate::arch::x86_64::cpu::rdtsc() | 1;
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        // xorshift64*: good enough to seed a user PRNG, not for secrets.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out
}

// ----- building the new address space (the current one) ------------------------

/// Maps `[start, start + len)` private anonymous, readable and writable.
pub fn map_fixed_anon(start: u64, len: u64) -> Result<(), Errno> {
    mmap(start, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, u64::MAX, 0).map(|_| ())
}

/// Gives `[start, start + len)` its final protection.
pub fn protect(start: u64, len: u64, read: bool, write: bool, exec: bool) -> Result<(), Errno> {
    let prot = (read as u64 * PROT_READ) | (write as u64 * PROT_WRITE) | (exec as u64 * PROT_EXEC);
    mprotect(start, len, prot).map(|_| ())
}

/// Sets the program break to just after the loaded image; records the
/// text range for `/proc/self/status`.
pub fn set_brk_start(brk: u64, code: (u64, u64)) -> Result<(), Errno> {
    with_mm(|mm, _| {
        mm.set_code_range(code.0, code.1);
        mm.set_brk_start(brk).map(|_| 0)
    })
    .map(|_| ())
}

/// The `[stack]` VMA: readable, writable, growing down on faults.
pub fn map_stack(start: u64, len: u64) -> Result<(), Errno> {
    let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL | VmFlags::GROWSDOWN;
    with_mm(|mm, _| {
        mm.vmas
            .mmap_region(start, len, flags, VmaKind::Stack, linear_pgoff(start), MapFixed::NoReplace)
            .map(|_| 0)
            .map_err(|_| Errno::ENOMEM)
    })
    .map(|_| ())
}
