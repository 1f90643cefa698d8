//! Raw Linux x86_64 system calls: numbers, constants and thin wrappers.
//!
//! Every wrapper returns the raw kernel result: a value `>= 0` on success or
//! `-errno` on failure. Only the syscalls the kernel under test implements are
//! named here (plus [`syscall0`] for probing unknown numbers).

use core::arch::asm;

/// Syscall numbers (x86_64).
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const OPEN: usize = 2;
    pub const CLOSE: usize = 3;
    pub const LSEEK: usize = 8;
    pub const MMAP: usize = 9;
    pub const MPROTECT: usize = 10;
    pub const MUNMAP: usize = 11;
    pub const BRK: usize = 12;
    pub const IOCTL: usize = 16;
    pub const PREAD64: usize = 17;
    pub const PWRITE64: usize = 18;
    pub const READV: usize = 19;
    pub const WRITEV: usize = 20;
    pub const SCHED_YIELD: usize = 24;
    pub const MADVISE: usize = 28;
    pub const GETPID: usize = 39;
    pub const EXIT: usize = 60;
    pub const PRCTL: usize = 157;
    pub const ARCH_PRCTL: usize = 158;
    pub const SET_TID_ADDRESS: usize = 218;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const PREADV: usize = 295;
    pub const PWRITEV: usize = 296;
}

/// errno values used by the tests.
pub mod errno {
    pub const EPERM: isize = 1;
    pub const ENOENT: isize = 2;
    pub const ESRCH: isize = 3;
    pub const EIO: isize = 5;
    pub const ENXIO: isize = 6;
    pub const E2BIG: isize = 7;
    pub const EBADF: isize = 9;
    pub const EAGAIN: isize = 11;
    pub const ENOMEM: isize = 12;
    pub const EACCES: isize = 13;
    pub const EFAULT: isize = 14;
    pub const EEXIST: isize = 17;
    pub const ENOTDIR: isize = 20;
    pub const EISDIR: isize = 21;
    pub const ENODEV: isize = 19;
    pub const EINVAL: isize = 22;
    pub const EMFILE: isize = 24;
    pub const ENOTTY: isize = 25;
    pub const EFBIG: isize = 27;
    pub const ESPIPE: isize = 29;
    pub const EROFS: isize = 30;
    pub const ERANGE: isize = 34;
    pub const ENAMETOOLONG: isize = 36;
    pub const ENOSYS: isize = 38;
    pub const ELOOP: isize = 40;
    pub const EOVERFLOW: isize = 75;
    pub const EOPNOTSUPP: isize = 95;
}

/// Symbolic name of an errno value, if it is one the tests know.
pub fn errno_name(e: isize) -> Option<&'static str> {
    use errno::*;
    Some(match e {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EEXIST => "EEXIST",
        ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR",
        ENODEV => "ENODEV",
        EINVAL => "EINVAL",
        EMFILE => "EMFILE",
        ENOTTY => "ENOTTY",
        EFBIG => "EFBIG",
        ESPIPE => "ESPIPE",
        EROFS => "EROFS",
        ERANGE => "ERANGE",
        ENAMETOOLONG => "ENAMETOOLONG",
        ENOSYS => "ENOSYS",
        ELOOP => "ELOOP",
        EOVERFLOW => "EOVERFLOW",
        EOPNOTSUPP => "EOPNOTSUPP",
        _ => return None,
    })
}

pub const PAGE_SIZE: usize = 4096;

pub const PROT_NONE: usize = 0;
pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const PROT_EXEC: usize = 4;
pub const PROT_RW: usize = PROT_READ | PROT_WRITE;

pub const MAP_SHARED: usize = 0x01;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_SHARED_VALIDATE: usize = 0x03;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_GROWSDOWN: usize = 0x100;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MAP_POPULATE: usize = 0x8000;
pub const MAP_FIXED_NOREPLACE: usize = 0x10_0000;
/// `MAP_PRIVATE | MAP_ANONYMOUS`, the common case.
pub const MAP_ANON_PRIVATE: usize = MAP_PRIVATE | MAP_ANONYMOUS;

pub const MADV_NORMAL: usize = 0;
pub const MADV_RANDOM: usize = 1;
pub const MADV_SEQUENTIAL: usize = 2;
pub const MADV_WILLNEED: usize = 3;
pub const MADV_DONTNEED: usize = 4;
pub const MADV_FREE: usize = 8;
pub const MADV_MERGEABLE: usize = 12;
pub const MADV_UNMERGEABLE: usize = 13;
pub const MADV_HUGEPAGE: usize = 14;
pub const MADV_NOHUGEPAGE: usize = 15;
pub const MADV_POPULATE_READ: usize = 22;
pub const MADV_POPULATE_WRITE: usize = 23;

pub const O_RDONLY: usize = 0;
pub const O_WRONLY: usize = 1;
pub const O_RDWR: usize = 2;
pub const O_CREAT: usize = 0o100;
pub const O_EXCL: usize = 0o200;
pub const O_TRUNC: usize = 0o1000;
pub const O_DIRECTORY: usize = 0o200000;
pub const O_CLOEXEC: usize = 0o2000000;
/// `openat` dirfd meaning "relative to the current directory".
pub const AT_FDCWD: usize = -100isize as usize;

pub const SEEK_SET: usize = 0;
pub const SEEK_CUR: usize = 1;
pub const SEEK_END: usize = 2;
pub const SEEK_DATA: usize = 3;
pub const SEEK_HOLE: usize = 4;

pub const TCGETS: usize = 0x5401;
pub const TIOCGWINSZ: usize = 0x5413;
pub const FIONREAD: usize = 0x541b;

pub const PR_SET_NAME: usize = 15;
pub const PR_GET_NAME: usize = 16;
pub const PR_SET_THP_DISABLE: usize = 41;
pub const PR_GET_THP_DISABLE: usize = 42;

pub const ARCH_SET_FS: usize = 0x1002;
pub const ARCH_GET_FS: usize = 0x1003;
pub const ARCH_GET_GS: usize = 0x1004;

pub const CLOCK_REALTIME: usize = 0;
pub const CLOCK_MONOTONIC: usize = 1;

/// First address of the kernel half of the canonical address space.
pub const KERNEL_HALF: usize = 0xffff_8000_0000_0000;

/// `struct timespec`.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub base: *const u8,
    pub len: usize,
}

/// Raw syscall with no arguments.
///
/// # Safety
/// The call must not break memory the program relies on (e.g. unmap it).
#[inline(always)]
pub unsafe fn syscall0(n: usize) -> isize {
    let ret: isize;
    // SAFETY: `syscall` clobbers only rax, rcx and r11, all declared; the
    // caller guarantees the call's side effects are sound.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with one argument. See [`syscall0`] for the contract.
///
/// # Safety
/// Pointer arguments must be valid for what the kernel does with them, and the
/// call must not break memory the program relies on.
#[inline(always)]
pub unsafe fn syscall1(n: usize, a1: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the argument.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with two arguments.
///
/// # Safety
/// As for [`syscall1`].
#[inline(always)]
pub unsafe fn syscall2(n: usize, a1: usize, a2: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with three arguments.
///
/// # Safety
/// As for [`syscall1`].
#[inline(always)]
pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with four arguments.
///
/// # Safety
/// As for [`syscall1`].
#[inline(always)]
pub unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with five arguments.
///
/// # Safety
/// As for [`syscall1`].
#[inline(always)]
pub unsafe fn syscall5(n: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Raw syscall with six arguments.
///
/// # Safety
/// As for [`syscall1`].
#[inline(always)]
pub unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: as in `syscall0`; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// `read(2)`.
///
/// # Safety
/// `buf` must be writable for `len` bytes, or be an address the test expects
/// the kernel to reject.
pub unsafe fn read(fd: usize, buf: *mut u8, len: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall3(nr::READ, fd, buf as usize, len) }
}

/// `write(2)` of a byte slice.
pub fn write(fd: usize, buf: &[u8]) -> isize {
    // SAFETY: the slice is readable for its length; the kernel only reads it.
    unsafe { syscall3(nr::WRITE, fd, buf.as_ptr() as usize, buf.len()) }
}

/// `lseek(2)`: returns the new position or `-errno`.
pub fn lseek(fd: usize, offset: i64, whence: usize) -> isize {
    // SAFETY: moving a file position affects no memory.
    unsafe { syscall3(nr::LSEEK, fd, offset as usize, whence) }
}

/// `pread64(2)`: does not move the file position.
///
/// # Safety
/// As for [`read`].
pub unsafe fn pread(fd: usize, buf: *mut u8, len: usize, offset: i64) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall4(nr::PREAD64, fd, buf as usize, len, offset as usize) }
}

/// `pwrite64(2)` of a byte slice.
pub fn pwrite(fd: usize, buf: &[u8], offset: i64) -> isize {
    // SAFETY: the slice is readable for its length; the kernel only reads it.
    unsafe { syscall4(nr::PWRITE64, fd, buf.as_ptr() as usize, buf.len(), offset as usize) }
}

/// `readv(2)`.
///
/// # Safety
/// Every segment must be writable for its length, or be an address the test
/// expects the kernel to reject.
pub unsafe fn readv(fd: usize, iov: &[Iovec]) -> isize {
    // SAFETY: forwarded contract; the iovec array itself is readable.
    unsafe { syscall3(nr::READV, fd, iov.as_ptr() as usize, iov.len()) }
}

/// `preadv(2)` (the offset's high half, `pos_h`, is 0).
///
/// # Safety
/// As for [`readv`].
pub unsafe fn preadv(fd: usize, iov: &[Iovec], offset: i64) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall5(nr::PREADV, fd, iov.as_ptr() as usize, iov.len(), offset as usize, 0) }
}

/// `pwritev(2)` (the offset's high half is 0).
pub fn pwritev(fd: usize, iov: &[Iovec], offset: i64) -> isize {
    // SAFETY: as for `writev`: the kernel only reads the buffers.
    unsafe { syscall5(nr::PWRITEV, fd, iov.as_ptr() as usize, iov.len(), offset as usize, 0) }
}

/// `open(2)`; `path` must be NUL-terminated (e.g. `c"/proc/meminfo"`).
pub fn open(path: &core::ffi::CStr, flags: usize) -> isize {
    // SAFETY: the path is a valid C string; mode 0 is used for O_CREAT.
    unsafe { syscall3(nr::OPEN, path.as_ptr() as usize, flags, 0) }
}

/// `openat(2)` with mode 0.
pub fn openat(dirfd: usize, path: &core::ffi::CStr, flags: usize) -> isize {
    // SAFETY: the path is a valid C string.
    unsafe { syscall4(nr::OPENAT, dirfd, path.as_ptr() as usize, flags, 0) }
}

/// `close(2)`.
pub fn close(fd: usize) -> isize {
    // SAFETY: closing a descriptor affects no memory.
    unsafe { syscall1(nr::CLOSE, fd) }
}

/// `mmap(2)`.
///
/// # Safety
/// With `MAP_FIXED` the range must not cover memory still in use.
pub unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: usize,
    flags: usize,
    fd: usize,
    off: usize,
) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr::MMAP, addr, len, prot, flags, fd, off) }
}

/// `mmap(2)` of a new anonymous-or-not mapping placed by the kernel (no
/// address hint, fd -1, offset 0). Never replaces existing mappings.
pub fn map(len: usize, prot: usize, flags: usize) -> isize {
    assert!(flags & MAP_FIXED == 0, "map() must not replace mappings");
    // SAFETY: without MAP_FIXED the kernel picks a free range.
    unsafe { mmap(0, len, prot, flags, usize::MAX, 0) }
}

/// `munmap(2)`.
///
/// # Safety
/// The range must not cover memory still in use.
pub unsafe fn munmap(addr: usize, len: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall2(nr::MUNMAP, addr, len) }
}

/// `mprotect(2)`.
///
/// # Safety
/// The range must not cover memory that is used in a way the new protection forbids.
pub unsafe fn mprotect(addr: usize, len: usize, prot: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall3(nr::MPROTECT, addr, len, prot) }
}

/// `madvise(2)`.
///
/// # Safety
/// Destructive advice (DONTNEED, FREE) must only hit memory whose contents may be lost.
pub unsafe fn madvise(addr: usize, len: usize, advice: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall3(nr::MADVISE, addr, len, advice) }
}

/// Raw `brk(2)`: returns the new (or unchanged) program break.
///
/// # Safety
/// Shrinking must not release heap memory still in use.
pub unsafe fn brk(addr: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall1(nr::BRK, addr) }
}

/// `prctl(2)` with all five arguments.
///
/// # Safety
/// Pointer arguments must be valid for the chosen option.
pub unsafe fn prctl(opt: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall5(nr::PRCTL, opt, a2, a3, a4, a5) }
}

/// `arch_prctl(2)`.
///
/// # Safety
/// For GET codes `arg` must be writable for 8 bytes; SET_FS must not break TLS in use.
pub unsafe fn arch_prctl(code: usize, arg: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall2(nr::ARCH_PRCTL, code, arg) }
}

/// `ioctl(2)`.
///
/// # Safety
/// `arg` must be valid for the request.
pub unsafe fn ioctl(fd: usize, req: usize, arg: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall3(nr::IOCTL, fd, req, arg) }
}

/// `writev(2)`.
pub fn writev(fd: usize, iov: &[Iovec]) -> isize {
    // SAFETY: the iovec array is readable; its buffers are the caller's to vouch
    // for, and the kernel only reads them (bad ones yield EFAULT).
    unsafe { syscall3(nr::WRITEV, fd, iov.as_ptr() as usize, iov.len()) }
}

/// `clock_gettime(2)` into a `Timespec`.
pub fn clock_gettime(clock: usize, ts: &mut Timespec) -> isize {
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { syscall2(nr::CLOCK_GETTIME, clock, ts as *mut Timespec as usize) }
}

/// `set_tid_address(2)`: returns the caller's thread id.
///
/// # Safety
/// The kernel writes 0 to `addr` at thread exit.
pub unsafe fn set_tid_address(addr: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall1(nr::SET_TID_ADDRESS, addr) }
}

/// `sched_yield(2)`.
pub fn sched_yield() -> isize {
    // SAFETY: no arguments, no memory effects.
    unsafe { syscall0(nr::SCHED_YIELD) }
}

/// `getpid(2)`.
pub fn getpid() -> isize {
    // SAFETY: no arguments, no memory effects.
    unsafe { syscall0(nr::GETPID) }
}

/// `exit_group(2)`.
pub fn exit_group(status: i32) -> ! {
    // SAFETY: ends the process; nothing runs afterwards.
    unsafe { syscall1(nr::EXIT_GROUP, status as usize) };
    // exit_group cannot return; trap if a broken kernel lets it.
    loop {
        // SAFETY: plain `exit` of this thread is the fallback.
        unsafe { syscall1(nr::EXIT, status as usize) };
    }
}
