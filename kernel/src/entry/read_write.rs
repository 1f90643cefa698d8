//! Reading, writing and positioning open files (Linux `fs/read_write.c`):
//! `read`, `write`, `readv`, `writev`, `lseek`, `pread64`, `pwrite64`,
//! `preadv` and `pwritev`, with Linux's argument checks in Linux's order.
//!
//! A read of a data file copies straight from the file's bytes (the
//! initramfs, or a `/proc` snapshot) to user space, one `copy_to_user` per
//! contiguous piece (at most [`COPY_CHUNK`], with a rescheduling point
//! between pieces). The bytes are lent out of the file table first
//! ([`crate::fs::ramfs::FdTable::read_begin`]), because the table sits under
//! the scheduler's lock and a fault on the user buffer may need that lock
//! (the OOM killer walks the tasks). A fault that stops the copy returns the
//! bytes copied so far, or `EFAULT` if there were none.
//!
//! `fd` arguments are C `unsigned int` as in Linux (the upper half of the
//! register is ignored), and so are `whence` and iovec counts.

use alloc::vec::Vec;

use mm::errno::{Errno, SysResult};

use crate::arch::x86_64::{cpu, serial, uaccess};
use crate::fs::ramfs::{FileBytes, ReadSource, WriteTarget};
use crate::task::sched::{self, with_files};

/// Linux `MAX_RW_COUNT`: one read or write moves at most this much.
pub const MAX_RW_COUNT: u64 = 0x7fff_f000;
/// Bounce-buffer size for the console.
const CHUNK: usize = 4096;
/// Largest piece of a file copied to user space without a rescheduling point.
const COPY_CHUNK: usize = 1 << 20;
/// Most iovecs per call (Linux `UIO_MAXIOV`).
const UIO_MAXIOV: u32 = 1024;
/// Longest write `/proc/sys/vm/drop_caches` takes.
const DROP_CACHES_MAX: usize = 32;

/// A descriptor argument: Linux's `unsigned int fd`.
fn fd_arg(fd: u64) -> u64 {
    fd as u32 as u64
}

/// Linux `rw_verify_area` for files with signed offsets: the count must fit
/// in `ssize_t` and the end of the range in `loff_t`.
fn verify_area(pos: i64, count: u64) -> Result<(), Errno> {
    if (count as i64) < 0 || pos < 0 || pos.wrapping_add(count as i64) < 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Copies `data[pos..]`, at most `count` bytes, to user address `buf`.
fn copy_file_to_user(data: &[u8], pos: i64, buf: u64, count: u64) -> Result<u64, Errno> {
    let src = usize::try_from(pos).ok().and_then(|p| data.get(p..)).unwrap_or(&[]);
    let len = src.len().min(usize::try_from(count).unwrap_or(usize::MAX));
    let mut done = 0;
    while done < len {
        let piece = &src[done..len.min(done + COPY_CHUNK)];
        let copied = uaccess::copy_to_user_partial(buf + done as u64, piece);
        done += copied;
        if copied < piece.len() {
            return if done > 0 { Ok(done as u64) } else { Err(Errno::EFAULT) };
        }
        if done < len {
            sched::cond_resched();
        }
    }
    Ok(done as u64)
}

/// Linux `vfs_read` from the user-pointer check on, for a data file.
fn read_at(bytes: &FileBytes, pos: i64, buf: u64, count: u64) -> Result<u64, Errno> {
    if !uaccess::access_ok(buf, count as usize) {
        return Err(Errno::EFAULT);
    }
    verify_area(pos, count)?;
    copy_file_to_user(bytes.as_slice(), pos, buf, count.min(MAX_RW_COUNT))
}

/// `read` and `pread64` (`pos` given) on `fd`.
fn do_read(fd: u64, buf: u64, count: u64, pos: Option<i64>) -> SysResult {
    let (bytes, at) = match with_files(|f| f.read_begin(fd, pos)) {
        Ok(ReadSource::File { bytes, pos }) => (bytes, pos),
        Ok(ReadSource::Console) => return read_console(buf, count.min(MAX_RW_COUNT)),
        // A directory: the user pointer is checked before the file is asked.
        Err(Errno::EISDIR) if !uaccess::access_ok(buf, count as usize) => return Err(Errno::EFAULT),
        Err(e) => return Err(e),
    };
    let r = read_at(&bytes, at, buf, count);
    // `read` moves the position; `pread` does not.
    let new_pos = match (pos, &r) {
        (None, Ok(n)) => Some(at + *n as i64),
        _ => None,
    };
    with_files(|f| Ok(f.read_end(fd, bytes, new_pos)))?;
    r
}

pub fn sys_read(fd: u64, buf: u64, count: u64) -> SysResult {
    do_read(fd_arg(fd), buf, count, None)
}

/// `pread64`: a negative offset is `EINVAL` before the descriptor is looked
/// at; the console is `ESPIPE`.
pub fn sys_pread64(fd: u64, buf: u64, count: u64, pos: u64) -> SysResult {
    let pos = pos as i64;
    if pos < 0 {
        return Err(Errno::EINVAL);
    }
    do_read(fd_arg(fd), buf, count, Some(pos))
}

/// `lseek`: returns the new position.
pub fn sys_lseek(fd: u64, offset: u64, whence: u64) -> SysResult {
    with_files(|f| f.lseek(fd_arg(fd), offset as i64, whence as u32)).map(|pos| pos as u64)
}

/// Console input: waits for at least one byte, then returns what is there.
fn read_console(buf: u64, count: u64) -> SysResult {
    if count == 0 {
        return Ok(0);
    }
    if !uaccess::access_ok(buf, count as usize) {
        return Err(Errno::EFAULT);
    }
    // What is there, at most one chunk (a short read, as from a tty).
    let want = count.min(CHUNK as u64) as usize;
    let mut kbuf = [0u8; CHUNK];
    let mut n = 0;
    while n == 0 {
        if sched::kill_pending() {
            return Err(Errno::EINTR);
        }
        // Interrupts off between the check and `sti; hlt`, so a byte that
        // arrives in between wakes the halt instead of being missed.
        x86_64::instructions::interrupts::disable();
        match serial::try_read_byte() {
            Some(b) => {
                kbuf[0] = b;
                n = 1;
            }
            None if sched::has_runnable() => sched::schedule(),
            None => cpu::enable_irqs_and_halt(),
        }
        cpu::enable_irqs();
    }
    while n < want {
        match serial::try_read_byte() {
            Some(b) => {
                kbuf[n] = b;
                n += 1;
            }
            None => break,
        }
    }
    uaccess::copy_to_user(buf, &kbuf[..n])?;
    Ok(n as u64)
}

pub fn sys_write(fd: u64, buf: u64, count: u64) -> SysResult {
    let fd = fd_arg(fd);
    match with_files(|f| f.write_target(fd, false))? {
        WriteTarget::Console => write_console(buf, count.min(MAX_RW_COUNT)),
        WriteTarget::DropCaches { pos } => {
            let n = write_drop_caches(&[(buf, count)], count, pos)?;
            with_files(|f| Ok(f.write_end(fd, pos + n as i64)))?;
            Ok(n)
        }
    }
}

/// `pwrite64`: as `pread64`; a file not open for writing (every data file
/// here) is `EBADF`, a `/proc` text file `ESPIPE`.
pub fn sys_pwrite64(fd: u64, buf: u64, count: u64, pos: u64) -> SysResult {
    let pos = pos as i64;
    if pos < 0 {
        return Err(Errno::EINVAL);
    }
    match with_files(|f| f.write_target(fd_arg(fd), true))? {
        WriteTarget::Console => Err(Errno::ESPIPE),
        WriteTarget::DropCaches { .. } => write_drop_caches(&[(buf, count)], count, pos),
    }
}

/// A write of the segments `segs` (`total` bytes in all) at position `pos`
/// to `/proc/sys/vm/drop_caches`: a decimal number (surrounding whitespace
/// allowed, at most 32 bytes), as Linux's `proc_dointvec_minmax`; the whole
/// write is consumed. At a non-zero position the write is ignored and
/// returns 0 (Linux's default `sysctl_writes_strict`).
fn write_drop_caches(segs: &[(u64, u64)], total: u64, pos: i64) -> SysResult {
    for &(base, len) in segs {
        if !uaccess::access_ok(base, len as usize) {
            return Err(Errno::EFAULT);
        }
    }
    verify_area(pos, total)?;
    if pos != 0 {
        return Ok(0);
    }
    let mut kbuf = [0u8; DROP_CACHES_MAX];
    let n = usize::try_from(total).ok().filter(|&n| n <= kbuf.len()).ok_or(Errno::EINVAL)?;
    let mut at = 0;
    for &(base, len) in segs {
        let len = len as usize;
        uaccess::copy_from_user(&mut kbuf[at..at + len], base)?;
        at += len;
    }
    let value = core::str::from_utf8(&kbuf[..n]).ok().and_then(|s| s.trim().parse::<u32>().ok()).ok_or(Errno::EINVAL)?;
    let pid = sched::current_pid();
    let mut who = crate::fs::procfs::TryString::default();
    // Formatted in place (fallibly), without copying the task's name first.
    let named = sched::with_current(|t| core::fmt::Write::write_fmt(&mut who, format_args!("{} ({pid})", t.name)));
    named.unwrap_or_else(|| core::fmt::Write::write_fmt(&mut who, format_args!("? ({pid})"))).map_err(|_| Errno::ENOMEM)?;
    crate::memory::shrinker::drop_caches_sysctl(value, &who.into_string()).map_err(|_| Errno::EINVAL)?;
    Ok(total)
}

/// Copies `count` bytes from user memory to the console; a bad pointer
/// after some bytes went out returns the short count, as Linux does.
fn write_console(buf: u64, count: u64) -> SysResult {
    if !uaccess::access_ok(buf, count as usize) {
        return Err(Errno::EFAULT);
    }
    let mut kbuf = [0u8; CHUNK];
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(CHUNK as u64) as usize;
        if let Err(e) = uaccess::copy_from_user(&mut kbuf[..n], buf + done) {
            return if done > 0 { Ok(done) } else { Err(e) };
        }
        serial::write_bytes(&kbuf[..n]);
        done += n as u64;
        sched::cond_resched();
    }
    Ok(done)
}

/// Linux `import_iovec`: the `(base, len)` pairs of `nr_segs` user iovecs
/// at `uvec` and their total. No segments is no error; more than
/// `UIO_MAXIOV` is `EINVAL`; an unreadable array `EFAULT`; a length negative
/// as `ssize_t` `EINVAL`, then a segment outside the user half `EFAULT`.
/// Lengths are cut so that the total is at most `MAX_RW_COUNT`.
fn import_iovec(uvec: u64, nr_segs: u32) -> Result<(Vec<(u64, u64)>, u64), Errno> {
    let mut segs = Vec::new();
    if nr_segs == 0 {
        return Ok((segs, 0));
    }
    if nr_segs > UIO_MAXIOV {
        return Err(Errno::EINVAL);
    }
    segs.try_reserve_exact(nr_segs as usize).map_err(|_| Errno::ENOMEM)?;
    for i in 0..nr_segs as u64 {
        let [base, len] = uaccess::get_user::<[u64; 2]>(uvec.wrapping_add(16 * i))?;
        segs.push((base, len));
    }
    if segs.iter().any(|&(_, len)| (len as i64) < 0) {
        return Err(Errno::EINVAL);
    }
    let mut total = 0;
    for (base, len) in segs.iter_mut() {
        if !uaccess::access_ok(*base, *len as usize) {
            return Err(Errno::EFAULT);
        }
        *len = (*len).min(MAX_RW_COUNT - total);
        total += *len;
    }
    Ok((segs, total))
}

/// `readv` and `preadv` (`pos` given; the caller has checked the offset and
/// the descriptor).
fn do_readv(fd: u64, uvec: u64, nr_segs: u32, pos: Option<i64>) -> SysResult {
    with_files(|f| f.is_console(fd))?;
    let (segs, total) = import_iovec(uvec, nr_segs)?;
    let (bytes, at) = match with_files(|f| f.read_begin(fd, pos)) {
        Ok(ReadSource::File { bytes, pos }) => (bytes, pos),
        // A tty returns what there is: here, into the first segment.
        Ok(ReadSource::Console) => {
            return match segs.iter().find(|s| s.1 > 0) {
                Some(&(base, len)) => read_console(base, len),
                None => Ok(0),
            };
        }
        Err(Errno::EISDIR) if total == 0 => return Ok(0),
        Err(e) => return Err(e),
    };
    let r = readv_at(&bytes, at, &segs, total);
    let new_pos = match (pos, &r) {
        (None, Ok(n)) => Some(at + *n as i64),
        _ => None,
    };
    with_files(|f| Ok(f.read_end(fd, bytes, new_pos)))?;
    r
}

/// Linux `do_iter_read` for a data file: segment after segment, stopping at
/// the end of the file or at a fault.
fn readv_at(bytes: &FileBytes, pos: i64, segs: &[(u64, u64)], total: u64) -> Result<u64, Errno> {
    if total == 0 {
        return Ok(0);
    }
    verify_area(pos, total)?;
    for_each_segment(segs, |base, len, done| copy_file_to_user(bytes.as_slice(), pos + done as i64, base, len))
}

/// Transfers segment after segment with `io(base, len, done so far)` (Linux's
/// `do_loop_readv_writev`): stops at a short segment; an error is returned
/// only when nothing was transferred, otherwise the count so far.
fn for_each_segment(segs: &[(u64, u64)], mut io: impl FnMut(u64, u64, u64) -> SysResult) -> SysResult {
    let mut done = 0u64;
    for &(base, len) in segs {
        match io(base, len, done) {
            Ok(n) => {
                done += n;
                if n < len {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

pub fn sys_readv(fd: u64, uvec: u64, nr_segs: u64) -> SysResult {
    do_readv(fd_arg(fd), uvec, nr_segs as u32, None)
}

/// `preadv(fd, iov, iovcnt, pos_l, pos_h)`: on 64-bit Linux the offset is
/// `pos_l` alone (`pos_from_hilo` shifts `pos_h` out entirely).
pub fn sys_preadv(fd: u64, uvec: u64, nr_segs: u64, pos_l: u64) -> SysResult {
    let pos = pos_l as i64;
    if pos < 0 {
        return Err(Errno::EINVAL);
    }
    let fd = fd_arg(fd);
    with_files(|f| f.check_positioned(fd, false))?;
    do_readv(fd, uvec, nr_segs as u32, Some(pos))
}

/// `writev` and `pwritev` (`pos` given).
fn do_writev(fd: u64, uvec: u64, nr_segs: u32, pos: Option<i64>) -> SysResult {
    let (segs, total) = import_iovec(uvec, nr_segs)?;
    let target = with_files(|f| f.write_target(fd, pos.is_some()))?;
    if total == 0 {
        return Ok(0);
    }
    match target {
        WriteTarget::Console => for_each_segment(&segs, |base, len, _| write_console(base, len)),
        WriteTarget::DropCaches { pos: file_pos } => {
            let n = write_drop_caches(&segs, total, pos.unwrap_or(file_pos))?;
            if pos.is_none() {
                with_files(|f| Ok(f.write_end(fd, file_pos + n as i64)))?;
            }
            Ok(n)
        }
    }
}

pub fn sys_writev(fd: u64, uvec: u64, nr_segs: u64) -> SysResult {
    let fd = fd_arg(fd);
    with_files(|f| f.is_console(fd))?;
    do_writev(fd, uvec, nr_segs as u32, None)
}

/// `pwritev`: as `preadv`.
pub fn sys_pwritev(fd: u64, uvec: u64, nr_segs: u64, pos_l: u64) -> SysResult {
    let pos = pos_l as i64;
    if pos < 0 {
        return Err(Errno::EINVAL);
    }
    let fd = fd_arg(fd);
    with_files(|f| f.check_positioned(fd, true))?;
    do_writev(fd, uvec, nr_segs as u32, Some(pos))
}
