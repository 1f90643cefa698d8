//! The system-call table: Linux x86_64 numbers and argument registers
//! (`rdi rsi rdx r10 r8 r9`), results in `rax` with errors as `-errno`.
//!
//! This module decodes arguments, copies user memory with
//! [`crate::arch::x86_64::uaccess`], and calls the subsystem that does the work: the file
//! table ([`crate::fs::ramfs`]; reads, writes and positions in
//! [`crate::entry::read_write`]), the scheduler, and — for `mmap`, `munmap`,
//! `mprotect`, `madvise`, `brk` and `prctl` — the host-tested `mm::mman`
//! through [`crate::entry::sys_mm`]. An unknown number returns `-ENOSYS` and is
//! logged once.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::errno::{Errno, SysResult, sys_ret};
use x86_64::registers::model_specific::FsBase;
use x86_64::VirtAddr;

use crate::arch::x86_64::cpu;
use crate::entry::read_write as rw;
use crate::arch::x86_64::frame::TrapFrame;
use crate::task::process::{self, ExitStatus};
use crate::task::sched::{self, with_files};
use crate::arch::x86_64::uaccess;

pub const SYS_READ: u64 = 0;
pub const SYS_WRITE: u64 = 1;
pub const SYS_OPEN: u64 = 2;
pub const SYS_CLOSE: u64 = 3;
pub const SYS_LSEEK: u64 = 8;
pub const SYS_MMAP: u64 = 9;
pub const SYS_MPROTECT: u64 = 10;
pub const SYS_MUNMAP: u64 = 11;
pub const SYS_BRK: u64 = 12;
pub const SYS_IOCTL: u64 = 16;
pub const SYS_PREAD64: u64 = 17;
pub const SYS_PWRITE64: u64 = 18;
pub const SYS_READV: u64 = 19;
pub const SYS_WRITEV: u64 = 20;
pub const SYS_SCHED_YIELD: u64 = 24;
pub const SYS_MADVISE: u64 = 28;
pub const SYS_GETPID: u64 = 39;
pub const SYS_EXIT: u64 = 60;
pub const SYS_PRCTL: u64 = 157;
pub const SYS_ARCH_PRCTL: u64 = 158;
pub const SYS_SET_TID_ADDRESS: u64 = 218;
pub const SYS_GETTIMEOFDAY: u64 = 96;
pub const SYS_TIME: u64 = 201;
pub const SYS_CLOCK_GETTIME: u64 = 228;
pub const SYS_CLOCK_GETRES: u64 = 229;
pub const SYS_EXIT_GROUP: u64 = 231;
pub const SYS_OPENAT: u64 = 257;
pub const SYS_PREADV: u64 = 295;
pub const SYS_PWRITEV: u64 = 296;

const AT_FDCWD: i64 = -100;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;

/// Numbers already reported as unimplemented: a bit per number below 1024,
/// and the last word's top bit stands for every number above.
static ENOSYS_SEEN: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// Entry from `syscall_entry` with the user registers in `frame`.
pub fn dispatch(frame: &mut TrapFrame) {
    // Interrupts were masked by FMASK; the kernel runs with them on.
    cpu::enable_irqs();
    let (a0, a1, a2, a3, a4, a5) = (frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9);
    let nr = frame.rax;
    let result = match nr {
        SYS_READ => rw::sys_read(a0, a1, a2),
        SYS_WRITE => rw::sys_write(a0, a1, a2),
        SYS_LSEEK => rw::sys_lseek(a0, a1, a2),
        SYS_PREAD64 => rw::sys_pread64(a0, a1, a2, a3),
        SYS_PWRITE64 => rw::sys_pwrite64(a0, a1, a2, a3),
        SYS_READV => rw::sys_readv(a0, a1, a2),
        SYS_PREADV => rw::sys_preadv(a0, a1, a2, a3),
        SYS_PWRITEV => rw::sys_pwritev(a0, a1, a2, a3),
        SYS_OPEN => sys_openat(AT_FDCWD as u64, a0, a1),
        SYS_OPENAT => sys_openat(a0, a1, a2),
        SYS_CLOSE => with_files(|f| f.close(a0).map(|_| 0)),
        SYS_WRITEV => rw::sys_writev(a0, a1, a2),
        SYS_IOCTL => with_files(|f| f.is_console(a0).and(Err(Errno::ENOTTY))),
        SYS_MMAP => crate::entry::sys_mm::mmap(a0, a1, a2, a3, a4, a5),
        SYS_MUNMAP => crate::entry::sys_mm::munmap(a0, a1),
        SYS_MPROTECT => crate::entry::sys_mm::mprotect(a0, a1, a2),
        SYS_MADVISE => crate::entry::sys_mm::madvise(a0, a1, a2),
        SYS_BRK => Ok(crate::entry::sys_mm::brk(a0)),
        SYS_PRCTL => crate::entry::sys_mm::prctl(a0, a1, a2, a3, a4),
        SYS_ARCH_PRCTL => sys_arch_prctl(a0, a1),
        SYS_SET_TID_ADDRESS => {
            sched::with_current(|t| t.clear_child_tid = a0);
            Ok(sched::current_pid() as u64)
        }
        SYS_CLOCK_GETTIME => sys_clock_gettime(a0, a1),
        SYS_CLOCK_GETRES => sys_clock_getres(a0, a1),
        SYS_GETTIMEOFDAY => sys_gettimeofday(a0, a1),
        SYS_TIME => sys_time(a0),
        SYS_SCHED_YIELD => {
            sched::schedule();
            Ok(0)
        }
        SYS_GETPID => Ok(sched::current_pid() as u64),
        SYS_EXIT | SYS_EXIT_GROUP => process::do_exit(ExitStatus::Exited(a0 as u8)),
        _ => {
            report_enosys(nr);
            Err(Errno::ENOSYS)
        }
    };
    frame.rax = sys_ret(result);
    sched::return_to_user();
    x86_64::instructions::interrupts::disable();
}

fn report_enosys(nr: u64) {
    let (word, bit) = if nr < 1024 { ((nr / 64) as usize, nr % 64) } else { (15, 63) };
    let first = ENOSYS_SEEN[word].fetch_or(1 << bit, Ordering::Relaxed) & (1 << bit) == 0;
    if first {
        let name = sched::with_current(|t| t.name.clone()).unwrap_or_default();
        log::warn!("pid {} ({}): unimplemented system call {} returns ENOSYS", sched::current_pid(), name, nr);
    }
}

fn sys_openat(dirfd: u64, path: u64, flags: u64) -> SysResult {
    let path = uaccess::strncpy_from_user(path, crate::fs::ramfs::PATH_MAX)?;
    if !path.starts_with('/') && dirfd as i64 != AT_FDCWD {
        // Only absolute paths and the (root) working directory are supported.
        with_files(|f| f.is_console(dirfd))?;
        return Err(Errno::ENOTDIR);
    }
    // Rendered before the file table is locked: it reads the task and its mm.
    let proc_self = crate::fs::ramfs::normalise(&path)?.strip_prefix("proc/self/").and_then(crate::entry::sys_mm::proc_self);
    with_files(|f| f.open(&path, flags, proc_self))
}

fn sys_arch_prctl(code: u64, addr: u64) -> SysResult {
    match code {
        ARCH_SET_FS => {
            // The FS base must be a canonical user address.
            if addr >= mm::vma::TASK_SIZE {
                return Err(Errno::EPERM);
            }
            FsBase::write(VirtAddr::new_truncate(addr));
            Ok(0)
        }
        ARCH_GET_FS => {
            uaccess::put_user(addr, &FsBase::read().as_u64())?;
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

const CLOCK_REALTIME: u64 = 0;
const CLOCK_MONOTONIC: u64 = 1;
const CLOCK_PROCESS_CPUTIME_ID: u64 = 2;
const CLOCK_THREAD_CPUTIME_ID: u64 = 3;
const CLOCK_MONOTONIC_RAW: u64 = 4;
const CLOCK_REALTIME_COARSE: u64 = 5;
const CLOCK_MONOTONIC_COARSE: u64 = 6;
const CLOCK_BOOTTIME: u64 = 7;

/// The clock ids this kernel knows (`EINVAL` for the others).
fn clock_valid(clock: u64) -> Result<(), Errno> {
    match clock {
        CLOCK_REALTIME | CLOCK_MONOTONIC | CLOCK_PROCESS_CPUTIME_ID | CLOCK_THREAD_CPUTIME_ID
        | CLOCK_MONOTONIC_RAW | CLOCK_REALTIME_COARSE | CLOCK_MONOTONIC_COARSE | CLOCK_BOOTTIME => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

// The vDSO (arch/x86_64/vdso.rs) computes the same clocks in user mode and
// calls these for what it does not serve.
fn sys_clock_gettime(clock: u64, tp: u64) -> SysResult {
    clock_valid(clock)?;
    // Wall-clock clocks count from the RTC reading at boot, the others from boot.
    let ns = match clock {
        CLOCK_REALTIME | CLOCK_REALTIME_COARSE => crate::arch::x86_64::time::realtime_ns(),
        _ => crate::arch::x86_64::time::uptime_ns().unwrap_or(0),
    };
    uaccess::put_user(tp, &[ns / 1_000_000_000, ns % 1_000_000_000])?;
    Ok(0)
}

/// Every clock reads the TSC, the coarse ones too: 1 ns. A null `res` is allowed.
fn sys_clock_getres(clock: u64, res: u64) -> SysResult {
    clock_valid(clock)?;
    if res != 0 {
        uaccess::put_user(res, &[0u64, 1])?;
    }
    Ok(0)
}

/// `CLOCK_REALTIME` in microseconds; the time zone (if asked for) is UTC with
/// no DST, Linux's `sys_tz` until someone sets it.
fn sys_gettimeofday(tv: u64, tz: u64) -> SysResult {
    if tv != 0 {
        let us = crate::arch::x86_64::time::realtime_ns() / 1000;
        uaccess::put_user(tv, &[us / 1_000_000, us % 1_000_000])?;
    }
    if tz != 0 {
        uaccess::put_user(tz, &[0i32, 0])?;
    }
    Ok(0)
}

/// Seconds since the epoch, also stored at `tloc` unless it is null.
fn sys_time(tloc: u64) -> SysResult {
    let secs = crate::arch::x86_64::time::realtime_ns() / 1_000_000_000;
    if tloc != 0 {
        uaccess::put_user(tloc, &secs)?;
    }
    Ok(secs)
}
