//! `proc_test`: open/openat/read/write/close on `/proc` files and the
//! file-descriptor error rules; file positions (`lseek`, `pread64`,
//! `pwrite64`, `readv`, `preadv`, `pwritev`) on an initramfs file, a `/proc`
//! file and the console.
#![no_std]
#![no_main]

use core::ffi::CStr;

use user::fs::{field, for_each_chunk, read_file};
use user::io::Ret;
use user::sys::{self, errno::*, *};
use user::{check, check_ok, check_ret, check_ret_in, check_with, println, skip};

user::entry!(main);

/// The files every system under test must provide, with short check names.
const FILES: [(&CStr, &str); 6] = [
    (c"/proc/meminfo", "meminfo"),
    (c"/proc/buddyinfo", "buddyinfo"),
    (c"/proc/pagetypeinfo", "pagetypeinfo"),
    (c"/proc/vmallocinfo", "vmallocinfo"),
    (c"/proc/self/status", "self_status"),
    (c"/proc/self/maps", "self_maps"),
];

fn main() {
    for (path, name) in FILES {
        read_whole(path, name);
    }
    contents();
    errors();
    create_rules();
    fd_reuse();
    drop_caches();
    motd();
    positions();
    proc_positions();
}

/// Writes `bytes` to `/proc/sys/vm/drop_caches` on a fresh descriptor (Linux
/// ignores a sysctl write at a non-zero offset).
fn write_drop_caches(bytes: &[u8]) -> isize {
    let fd = sys::open(c"/proc/sys/vm/drop_caches", O_WRONLY);
    if fd < 0 {
        return fd;
    }
    let r = sys::write(fd as usize, bytes);
    sys::close(fd as usize);
    r
}

/// The sysctl that asks every shrinker to drop what it can; the kernel logs
/// "proc_test (PID): drop_caches: 2". Needs root on Linux. (Mainline Linux also
/// refuses values above 4; the host kernel these programs were checked on
/// accepts them, so that is not tested here.)
fn drop_caches() {
    match sys::open(c"/proc/sys/vm/drop_caches", O_WRONLY) {
        fd if fd == -EACCES => return skip("drop_caches_write_2", "not root"),
        fd if fd >= 0 => {
            sys::close(fd as usize);
        }
        _ => {}
    }
    check_ret("drop_caches_write_2", write_drop_caches(b"2\n"), 2);
    check_ret("drop_caches_write_0_einval", write_drop_caches(b"0"), -EINVAL);
    check_ret("drop_caches_write_text_einval", write_drop_caches(b"two"), -EINVAL);
    // Mode 0200, and sysctl permissions ignore root's DAC override.
    check_ret("drop_caches_read_eacces", sys::open(c"/proc/sys/vm/drop_caches", O_RDONLY), -EACCES);
}

/// Opens `path` with open and with openat, reads it to the end, closes it.
fn read_whole(path: &CStr, name: &str) {
    let fd = sys::open(path, O_RDONLY);
    check_ok(format_args!("open_{name}"), fd);
    if fd >= 0 {
        let fd = fd as usize;
        let mut buf = [0u8; 1000];
        let mut total = 0;
        let last = loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { sys::read(fd, buf.as_mut_ptr(), buf.len()) };
            if n <= 0 {
                break n;
            }
            total += n;
        };
        check_with(
            format_args!("read_{name}_to_eof"),
            last == 0 && total > 0,
            format_args!("last {}, total {total}", Ret(last)),
        );
        check_ret(format_args!("close_{name}"), sys::close(fd), 0);
    }
    let fd = sys::openat(AT_FDCWD, path, O_RDONLY);
    check_ok(format_args!("openat_{name}"), fd);
    sys::close(fd as usize);
}

fn contents() {
    let mut buf = [0u8; 8192];
    let n = read_file(c"/proc/meminfo", &mut buf).max(0) as usize;
    let meminfo = &buf[..n];
    let total = field(meminfo, b"MemTotal:");
    let free = field(meminfo, b"MemFree:");
    check("meminfo_has_memtotal", total.is_some_and(|t| t > 0));
    check("meminfo_free_below_total", matches!((free, total), (Some(f), Some(t)) if f <= t));

    let n = read_file(c"/proc/self/status", &mut buf).max(0) as usize;
    let pid = field(&buf[..n], b"Pid:");
    check_with("status_pid_is_getpid", pid == Some(sys::getpid() as u64), format_args!("{pid:?}"));

    let n = read_file(c"/proc/self/maps", &mut buf).max(0) as usize;
    check("maps_first_vma_at_0x400000", buf[..n].starts_with(b"00400000-"));

    let mut pagetype = false;
    for_each_chunk(c"/proc/pagetypeinfo", |c| pagetype |= c.windows(7).any(|w| w == b"Movable"));
    check("pagetypeinfo_mentions_movable", pagetype);
}

fn errors() {
    let fd = sys::open(c"/proc/meminfo", O_RDONLY);
    check_ok("errors_setup", fd);
    let fd = fd as usize;
    let mut buf = [0u8; 16];
    // SAFETY (all reads below): `buf` is writable for 16 bytes; the other
    // pointers are invalid and must be rejected by the kernel.
    unsafe {
        check_ret("read_len0", sys::read(fd, buf.as_mut_ptr(), 0), 0);
        check_ret("read_kernel_ptr_efault", sys::read(fd, KERNEL_HALF as *mut u8, 16), -EFAULT);
        check_ret("read_unmapped_ptr_efault", sys::read(fd, 0x1000 as *mut u8, 16), -EFAULT);
        check_ret("read_bad_fd_ebadf", sys::read(999, buf.as_mut_ptr(), 16), -EBADF);
        check_ret("read_fd_minus1_ebadf", sys::read(usize::MAX, buf.as_mut_ptr(), 16), -EBADF);
    }
    check_ret("write_rdonly_fd_ebadf", sys::write(fd, b"x"), -EBADF);
    check_ret("close_once", sys::close(fd), 0);
    check_ret("close_twice_ebadf", sys::close(fd), -EBADF);
    // SAFETY: the fd is closed; the kernel must reject it.
    check_ret("read_closed_fd_ebadf", unsafe { sys::read(fd, buf.as_mut_ptr(), 16) }, -EBADF);
    check_ret("close_minus1_ebadf", sys::close(usize::MAX), -EBADF);

    check_ret("open_missing_enoent", sys::open(c"/proc/does-not-exist", O_RDONLY), -ENOENT);
    check_ret("open_missing_dir_enoent", sys::open(c"/no/such/dir/file", O_RDONLY), -ENOENT);
    check_ret("open_empty_path_enoent", sys::open(c"", O_RDONLY), -ENOENT);
    check_ret("openat_missing_enoent", sys::openat(AT_FDCWD, c"/proc/nope", O_RDONLY), -ENOENT);
    // SAFETY: invalid path pointers; the kernel must reject them.
    unsafe {
        let r = sys::syscall3(nr::OPEN, KERNEL_HALF, O_RDONLY, 0);
        check_ret("open_kernel_ptr_efault", r, -EFAULT);
        let r = sys::syscall3(nr::OPEN, 0x1000, O_RDONLY, 0);
        check_ret("open_unmapped_ptr_efault", r, -EFAULT);
    }
    let fd = sys::openat(999, c"/proc/meminfo", O_RDONLY);
    check_ok("openat_absolute_ignores_dirfd", fd);
    sys::close(fd as usize);
    check_ret("openat_relative_bad_dirfd_ebadf", sys::openat(999, c"meminfo", O_RDONLY), -EBADF);
}

fn create_rules() {
    // Linux (as root) opens /proc/meminfo for writing and fails the write with
    // EIO; a system without root privileges refuses the open instead. The two
    // outcomes have different check names so that the oracle comparison sees
    // which one happened (tests/linux-differences.txt lists ours).
    let fd = sys::open(c"/proc/meminfo", O_WRONLY | O_CREAT);
    if fd >= 0 {
        println!("INFO open(/proc/meminfo, O_WRONLY|O_CREAT) succeeds, write fails");
        check_ret("meminfo_write_opens_then_eio", sys::write(fd as usize, b"x"), -EIO);
        sys::close(fd as usize);
    } else {
        println!("INFO open(/proc/meminfo, O_WRONLY|O_CREAT) = {}", Ret(fd));
        check_ret_in("meminfo_write_open_refused", fd, &[-EACCES, -EROFS]);
    }
    let excl = O_WRONLY | O_CREAT | O_EXCL;
    check_ret("create_excl_existing_eexist", sys::open(c"/proc/meminfo", excl), -EEXIST);
    check_ret("create_in_proc_enoent", sys::open(c"/proc/newfile", O_WRONLY | O_CREAT), -ENOENT);
    check_ret("directory_flag_on_file_enotdir", sys::open(c"/proc/meminfo", O_DIRECTORY), -ENOTDIR);
    check_ret("write_open_dir_eisdir", sys::open(c"/proc", O_WRONLY), -EISDIR);
}

fn fd_reuse() {
    let a = sys::open(c"/proc/meminfo", O_RDONLY);
    let b = sys::open(c"/proc/self/status", O_RDONLY);
    check("two_opens_distinct_fds", a >= 0 && b == a + 1);
    sys::close(a as usize);
    let c = sys::open(c"/proc/buddyinfo", O_RDONLY);
    check_ret("open_reuses_lowest_fd", c, a);
    sys::close(b as usize);
    sys::close(c as usize);
}

fn motd() {
    let mut buf = [0u8; 4096];
    match read_file(c"/etc/motd", &mut buf) {
        n if n == -ENOENT => skip("read_etc_motd", "no /etc/motd"),
        n => check_with("read_etc_motd", n > 0, format_args!("got {}", Ret(n))),
    }
}

/// A file every system under test has: this program (argv[0], which is
/// `/bin/proc_test` in the initramfs of both kernels).
fn self_exe() -> &'static CStr {
    user::rt::arg_cstr(0).unwrap_or(c"/bin/proc_test")
}
const HEAD_LEN: usize = 4096;

/// `lseek`, `pread64`, `pwrite64`, `readv`, `preadv` and `pwritev` on an
/// initramfs file, a `/proc` file, the console and bad descriptors: where
/// the position goes, what does not move it, and every errno. The console
/// checks use stdout (the serial console in QEMU; a pipe in a host run:
/// unseekable both).
fn positions() {
    let fd = sys::open(self_exe(), O_RDONLY);
    check_ok("pos_open_self", fd);
    if fd < 0 {
        return;
    }
    let fd = fd as usize;
    let mut head = [0u8; HEAD_LEN];
    // SAFETY (all reads below): the buffers are writable for the lengths
    // given; other pointers are invalid and must be rejected.
    let n = unsafe { sys::read(fd, head.as_mut_ptr(), HEAD_LEN) };
    check_ret("pos_read_head", n, HEAD_LEN as isize);
    check_ret("lseek_cur_after_read", sys::lseek(fd, 0, SEEK_CUR), HEAD_LEN as isize);

    // The size two ways: SEEK_END, and reading a second descriptor to EOF.
    let size = sys::lseek(fd, 0, SEEK_END);
    let mut total = 0isize;
    let fd2 = sys::open(self_exe(), O_RDONLY);
    let mut chunk = [0u8; 1000];
    loop {
        let n = unsafe { sys::read(fd2 as usize, chunk.as_mut_ptr(), chunk.len()) };
        if n <= 0 {
            break;
        }
        total += n;
    }
    sys::close(fd2 as usize);
    check_with("lseek_end_is_size", size > HEAD_LEN as isize && size == total, format_args!("{}, read {total}", Ret(size)));
    let size = size as i64;
    let mut buf = [0u8; 64];
    check_ret("read_after_lseek_end_eof", unsafe { sys::read(fd, buf.as_mut_ptr(), 16) }, 0);

    check_ret("lseek_set", sys::lseek(fd, 100, SEEK_SET), 100);
    check_ret("lseek_cur_query", sys::lseek(fd, 0, SEEK_CUR), 100);
    check_ret("lseek_cur_forward", sys::lseek(fd, 10, SEEK_CUR), 110);
    check_ret("lseek_cur_back", sys::lseek(fd, -10, SEEK_CUR), 100);
    let n = unsafe { sys::read(fd, buf.as_mut_ptr(), 16) };
    check("read_after_lseek_reads_there", n == 16 && buf[..16] == head[100..116]);
    check_ret("read_moves_position", sys::lseek(fd, 0, SEEK_CUR), 116);
    check_ret("lseek_end_minus_16", sys::lseek(fd, -16, SEEK_END), (size - 16) as isize);
    check_ret("read_tail_16", unsafe { sys::read(fd, buf.as_mut_ptr(), 64) }, 16);
    check_ret("lseek_past_end", sys::lseek(fd, size + 1000, SEEK_SET), (size + 1000) as isize);
    check_ret("read_past_end_eof", unsafe { sys::read(fd, buf.as_mut_ptr(), 16) }, 0);
    check_ret("read_past_end_keeps_position", sys::lseek(fd, 0, SEEK_CUR), (size + 1000) as isize);

    // Errors leave the position alone.
    sys::lseek(fd, 100, SEEK_SET);
    check_ret("lseek_negative_einval", sys::lseek(fd, -1, SEEK_SET), -EINVAL);
    check_ret("lseek_cur_before_start_einval", sys::lseek(fd, -101, SEEK_CUR), -EINVAL);
    check_ret("lseek_end_before_start_einval", sys::lseek(fd, -size - 1, SEEK_END), -EINVAL);
    check_ret("lseek_cur_overflow_einval", sys::lseek(fd, i64::MAX, SEEK_CUR), -EINVAL);
    check_ret("lseek_end_overflow_einval", sys::lseek(fd, i64::MAX, SEEK_END), -EINVAL);
    check_ret("lseek_whence_5_einval", sys::lseek(fd, 0, 5), -EINVAL);
    check_ret("lseek_errors_keep_position", sys::lseek(fd, 0, SEEK_CUR), 100);
    // whence is an `unsigned int`: the upper half of the register is ignored.
    check_ret("lseek_whence_upper_bits_ignored", sys::lseek(fd, 7, 1 << 32), 7);
    check_ret("lseek_bad_fd_ebadf", sys::lseek(999, 0, SEEK_SET), -EBADF);
    check_ret("lseek_bad_fd_bad_whence_ebadf", sys::lseek(999, 0, 99), -EBADF);
    check_ret("lseek_console_espipe", sys::lseek(1, 0, SEEK_CUR), -ESPIPE);
    check_ret("lseek_console_bad_whence_einval", sys::lseek(1, 0, 99), -EINVAL);

    // A file without holes: data wherever the file is, the hole at its end.
    check_ret("seek_data_0", sys::lseek(fd, 0, SEEK_DATA), 0);
    check_ret("seek_data_mid", sys::lseek(fd, 100, SEEK_DATA), 100);
    check_ret("seek_hole_is_size", sys::lseek(fd, 0, SEEK_HOLE), size as isize);
    check_ret("seek_data_at_end_enxio", sys::lseek(fd, size, SEEK_DATA), -ENXIO);
    check_ret("seek_hole_past_end_enxio", sys::lseek(fd, size + 1, SEEK_HOLE), -ENXIO);
    check_ret("seek_data_negative_enxio", sys::lseek(fd, -1, SEEK_DATA), -ENXIO);

    // pread: at the offset given, the position stays.
    sys::lseek(fd, 50, SEEK_SET);
    let n = unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, 200) };
    check("pread_reads_at_offset", n == 16 && buf[..16] == head[200..216]);
    check_ret("pread_keeps_position", sys::lseek(fd, 0, SEEK_CUR), 50);
    check_ret("pread_tail_short", unsafe { sys::pread(fd, buf.as_mut_ptr(), 64, size - 10) }, 10);
    check_ret("pread_at_end_eof", unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, size) }, 0);
    check_ret("pread_past_end_eof", unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, size + 100) }, 0);
    check_ret("pread_len0", unsafe { sys::pread(fd, buf.as_mut_ptr(), 0, 0) }, 0);
    check_ret("pread_negative_einval", unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, -1) }, -EINVAL);
    check_ret("pread_negative_bad_fd_einval", unsafe { sys::pread(999, buf.as_mut_ptr(), 16, -1) }, -EINVAL);
    check_ret("pread_end_overflow_einval", unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, i64::MAX - 5) }, -EINVAL);
    check_ret("pread_bad_fd_ebadf", unsafe { sys::pread(999, buf.as_mut_ptr(), 16, 0) }, -EBADF);
    check_ret("pread_console_espipe", unsafe { sys::pread(1, buf.as_mut_ptr(), 16, 0) }, -ESPIPE);
    check_ret("pread_kernel_ptr_efault", unsafe { sys::pread(fd, KERNEL_HALF as *mut u8, 16, 0) }, -EFAULT);
    check_ret("pread_unmapped_ptr_efault", unsafe { sys::pread(fd, 0x1000 as *mut u8, 16, 0) }, -EFAULT);
    check_ret("pread_errors_keep_position", sys::lseek(fd, 0, SEEK_CUR), 50);
    fault_midway(fd, &head);

    // pwrite: nothing here is open for writing.
    check_ret("pwrite_rdonly_ebadf", sys::pwrite(fd, b"x", 0), -EBADF);
    check_ret("pwrite_negative_einval", sys::pwrite(fd, b"x", -1), -EINVAL);
    check_ret("pwrite_bad_fd_ebadf", sys::pwrite(999, b"x", 0), -EBADF);
    check_ret("pwrite_console_espipe", sys::pwrite(1, b"x", 0), -ESPIPE);

    vectors(fd, &head);
    let dir = sys::open(c"/bin", O_RDONLY | O_DIRECTORY);
    check_ok("pos_open_dir", dir);
    check_ret("read_dir_eisdir", unsafe { sys::read(dir as usize, buf.as_mut_ptr(), 16) }, -EISDIR);
    check_ret("pread_dir_eisdir", unsafe { sys::pread(dir as usize, buf.as_mut_ptr(), 16, 0) }, -EISDIR);
    // (SEEK_END and SEEK_DATA on a directory depend on its file system:
    // EINVAL on tmpfs, as here; ext4 answers them.)
    check_ret("dir_lseek_set", sys::lseek(dir as usize, 2, SEEK_SET), 2);
    sys::close(dir as usize);
    // A /proc directory (generic_file_llseek, size 0).
    let dir = sys::open(c"/proc", O_RDONLY | O_DIRECTORY);
    check_ret("proc_dir_lseek_end", sys::lseek(dir as usize, 5, SEEK_END), 5);
    check_ret("proc_dir_seek_data_enxio", sys::lseek(dir as usize, 0, SEEK_DATA), -ENXIO);
    check_ret("proc_dir_lseek_negative_einval", sys::lseek(dir as usize, -1, SEEK_SET), -EINVAL);
    sys::close(dir as usize);
    sys::close(fd);
    check_ret("lseek_closed_fd_ebadf", sys::lseek(fd, 0, SEEK_SET), -EBADF);
}

/// A read into a buffer whose second page is not mapped: the bytes up to the
/// hole, then a short count; nothing at all is `EFAULT`.
fn fault_midway(fd: usize, head: &[u8]) {
    let p = sys::map(2 * PAGE_SIZE, PROT_RW, MAP_ANON_PRIVATE);
    if p < 0 {
        return check_ok("pread_fault_setup", p);
    }
    let p = p as usize;
    // SAFETY: the second page of our own fresh mapping; nothing uses it.
    unsafe { sys::munmap(p + PAGE_SIZE, PAGE_SIZE) };
    let at = p + PAGE_SIZE - 100;
    let n = unsafe { sys::pread(fd, at as *mut u8, 200, 0) };
    // SAFETY: the first page is mapped and readable.
    let got = unsafe { core::slice::from_raw_parts(at as *const u8, 100) };
    check_with("pread_fault_midway_short", n == 100 && got == &head[..100], format_args!("got {}", Ret(n)));
    sys::lseek(fd, 0, SEEK_SET);
    let n = unsafe { sys::read(fd, at as *mut u8, 200) };
    check_ret("read_fault_midway_short", n, 100);
    check_ret("read_fault_midway_moves_position", sys::lseek(fd, 0, SEEK_CUR), 100);
    let n = unsafe { sys::read(fd, (p + PAGE_SIZE) as *mut u8, 16) };
    check_ret("read_fault_at_start_efault", n, -EFAULT);
    check_ret("read_efault_keeps_position", sys::lseek(fd, 0, SEEK_CUR), 100);
    // SAFETY: our own mapping, no longer used.
    unsafe { sys::munmap(p, PAGE_SIZE) };
}

/// `readv`, `preadv` and `pwritev`.
fn vectors(fd: usize, head: &[u8]) {
    let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
    let iov = [Iovec { base: a.as_mut_ptr(), len: 8 }, Iovec { base: b.as_mut_ptr(), len: 8 }];
    sys::lseek(fd, 0, SEEK_SET);
    // SAFETY (all vector reads): the segments are `a` and `b` or invalid.
    let n = unsafe { sys::readv(fd, &iov) };
    check("readv_two_segments", n == 16 && a == head[..8] && b == head[8..16]);
    check_ret("readv_moves_position", sys::lseek(fd, 0, SEEK_CUR), 16);
    check_ret("readv_zero_segments", unsafe { sys::readv(fd, &[]) }, 0);
    let n = unsafe { sys::preadv(fd, &iov, 300) };
    check("preadv_reads_at_offset", n == 16 && a == head[300..308] && b == head[308..316]);
    check_ret("preadv_keeps_position", sys::lseek(fd, 0, SEEK_CUR), 16);
    check_ret("preadv_negative_einval", unsafe { sys::preadv(fd, &iov, -1) }, -EINVAL);
    check_ret("preadv_console_espipe", unsafe { sys::preadv(1, &iov, 0) }, -ESPIPE);
    check_ret("preadv_bad_fd_ebadf", unsafe { sys::preadv(999, &iov, 0) }, -EBADF);

    let negative = [Iovec { base: a.as_mut_ptr(), len: 8 }, Iovec { base: b.as_mut_ptr(), len: usize::MAX }];
    check_ret("readv_negative_len_einval", unsafe { sys::readv(fd, &negative) }, -EINVAL);
    let bad = [Iovec { base: a.as_mut_ptr(), len: 8 }, Iovec { base: KERNEL_HALF as *const u8, len: 8 }];
    check_ret("readv_kernel_segment_efault", unsafe { sys::readv(fd, &bad) }, -EFAULT);
    let r = unsafe { sys::syscall3(nr::READV, fd, KERNEL_HALF, 1) };
    check_ret("readv_kernel_array_efault", r, -EFAULT);
    let r = unsafe { sys::syscall3(nr::READV, fd, iov.as_ptr() as usize, 1025) };
    check_ret("readv_1025_segments_einval", r, -EINVAL);
    let r = unsafe { sys::syscall3(nr::READV, 999, iov.as_ptr() as usize, 1025) };
    check_ret("readv_bad_fd_first_ebadf", r, -EBADF);
    check_ret("readv_errors_keep_position", sys::lseek(fd, 0, SEEK_CUR), 16);
    sys::lseek(fd, 0, SEEK_END);
    check_ret("readv_at_eof", unsafe { sys::readv(fd, &iov) }, 0);

    let out = [Iovec { base: b"x".as_ptr(), len: 1 }];
    check_ret("pwritev_rdonly_ebadf", sys::pwritev(fd, &out, 0), -EBADF);
    check_ret("pwritev_negative_einval", sys::pwritev(fd, &out, -1), -EINVAL);
    check_ret("pwritev_console_espipe", sys::pwritev(1, &out, 0), -ESPIPE);
}

/// A `/proc` file (Linux `seq_file`): SEEK_SET and SEEK_CUR anywhere, also
/// past the end; no SEEK_END, SEEK_DATA or SEEK_HOLE.
fn proc_positions() {
    let fd = sys::open(c"/proc/self/maps", O_RDONLY);
    check_ok("proc_pos_open", fd);
    if fd < 0 {
        return;
    }
    let fd = fd as usize;
    let mut head = [0u8; 64];
    let mut buf = [0u8; 16];
    // SAFETY (all reads below): the buffers are writable for the lengths given.
    let n = unsafe { sys::read(fd, head.as_mut_ptr(), head.len()) };
    check_ret("proc_read_head", n, head.len() as isize);
    check_ret("proc_lseek_set", sys::lseek(fd, 10, SEEK_SET), 10);
    let n = unsafe { sys::read(fd, buf.as_mut_ptr(), 16) };
    check("proc_read_after_lseek", n == 16 && buf == head[10..26]);
    check_ret("proc_lseek_cur_query", sys::lseek(fd, 0, SEEK_CUR), 26);
    check_ret("proc_lseek_cur", sys::lseek(fd, 5, SEEK_CUR), 31);
    check_ret("proc_lseek_end_einval", sys::lseek(fd, 0, SEEK_END), -EINVAL);
    check_ret("proc_seek_data_einval", sys::lseek(fd, 0, SEEK_DATA), -EINVAL);
    check_ret("proc_seek_hole_einval", sys::lseek(fd, 0, SEEK_HOLE), -EINVAL);
    check_ret("proc_lseek_negative_einval", sys::lseek(fd, -1, SEEK_SET), -EINVAL);
    check_ret("proc_lseek_cur_negative_einval", sys::lseek(fd, -32, SEEK_CUR), -EINVAL);
    check_ret("proc_errors_keep_position", sys::lseek(fd, 0, SEEK_CUR), 31);
    let n = unsafe { sys::pread(fd, buf.as_mut_ptr(), 16, 20) };
    check("proc_pread_at_offset", n == 16 && buf == head[20..36]);
    check_ret("proc_pread_keeps_position", sys::lseek(fd, 0, SEEK_CUR), 31);
    check_ret("proc_lseek_past_end", sys::lseek(fd, 1 << 20, SEEK_SET), 1 << 20);
    check_ret("proc_read_past_end_eof", unsafe { sys::read(fd, buf.as_mut_ptr(), 16) }, 0);
    // The largest position (seq_lseek has no size limit; an initramfs file's
    // depends on the file system): a read there would end beyond loff_t.
    check_ret("proc_lseek_set_max", sys::lseek(fd, i64::MAX, SEEK_SET), i64::MAX as isize);
    check_ret("proc_read_at_max_einval", unsafe { sys::read(fd, buf.as_mut_ptr(), 16) }, -EINVAL);
    check_ret("proc_read_len0_at_max", unsafe { sys::read(fd, buf.as_mut_ptr(), 0) }, 0);
    // Linux's seq_open clears FMODE_PWRITE.
    check_ret("proc_pwrite_espipe", sys::pwrite(fd, b"x", 0), -ESPIPE);
    let out = [Iovec { base: b"x".as_ptr(), len: 1 }];
    check_ret("proc_pwritev_espipe", sys::pwritev(fd, &out, 0), -ESPIPE);
    check_ret("proc_write_ebadf", sys::write(fd, b"x"), -EBADF);
    sys::close(fd);

    match sys::open(c"/proc/sys/vm/drop_caches", O_WRONLY) {
        fd if fd >= 0 => {
            let r = unsafe { sys::pread(fd as usize, buf.as_mut_ptr(), 16, 0) };
            check_ret("drop_caches_pread_ebadf", r, -EBADF);
            check_ret("drop_caches_lseek_set", sys::lseek(fd as usize, 3, SEEK_SET), 3);
            check_ret("drop_caches_seek_data_enxio", sys::lseek(fd as usize, 0, SEEK_DATA), -ENXIO);
            sys::close(fd as usize);
        }
        _ => skip("drop_caches_pread_ebadf", "not root"),
    }
}
