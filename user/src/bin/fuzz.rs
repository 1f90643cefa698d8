//! `fuzz [seed [iterations]]`: throws random arguments at every supported
//! syscall; the kernel must answer each with a result or `-errno`, never crash.
//!
//! Safety rules that keep the fuzzer alive (and the host intact):
//! - Destructive calls (munmap, mprotect, madvise, MAP_FIXED mmap) only get
//!   ranges inside a 64 MiB scratch reservation, below 0x10000, in the kernel
//!   half / non-canonical space, or wrapping past 2^64 (always rejected).
//! - Pointers the kernel writes through are this program's buffer, the
//!   scratch region, or addresses that cannot be user memory.
//! - Paths are fixed `/proc` names (nothing creatable) or invalid pointers;
//!   fds 0-2 only see writes with unreadable buffers, read-only ioctls and lseek.
//! - Mappings the kernel places are unmapped at once; fixed ones stay in the
//!   scratch or low region, both unmapped at the end.
//!
//! At the end it prints the errno histogram and checks that MemFree came back.
#![no_std]
#![no_main]

use core::ffi::CStr;

use user::fs::{field, proc_field, read_file};
use user::io::Ret;
use user::sys::{self, errno::*, nr, *};
use user::{check, check_ret, check_with, println, rt};

user::entry!(main);

const P: usize = PAGE_SIZE;
const SCRATCH_LEN: usize = 64 << 20;
/// Below vm.mmap_min_addr: unmapped, except what the fuzzer itself maps there.
const LOW_END: usize = 0x10000;
const BUF_LEN: usize = 4096;
const MAX_FDS: usize = 16;
const MAX_ERRNO: usize = 4095;
/// Tolerated MemFree loss: page-table, slab and page-cache noise.
const MEMFREE_SLACK_KB: u64 = 4096;

/// Read-only or nonexistent paths only: O_CREAT/O_TRUNC can do no harm.
const PATHS: [&CStr; 9] = [
    c"/proc/meminfo",
    c"/proc/self/status",
    c"/proc/self/maps",
    c"/proc/buddyinfo",
    c"/proc",
    c"/proc/self",
    c"/proc/nonexistent",
    c"/no/such/dir/x",
    c"",
];
/// Relative names, only ever resolved against a real or invalid dirfd, never AT_FDCWD.
const REL_PATHS: [&CStr; 3] = [c"meminfo", c"self/status", c"nonexistent"];

/// Data the kernel must never write to.
static CANARY: [u8; 64] = [0xa5; 64];

/// xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) as usize
    }

    fn below(&mut self, n: usize) -> usize {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

struct Fuzz {
    rng: Rng,
    scratch: usize,
    buf: [u8; BUF_LEN],
    iov: [Iovec; 8],
    fds: [usize; MAX_FDS],
    nfds: usize,
    calls: usize,
    ok: usize,
    bad_ret: usize,
    hist: [u32; 134],
    other_errno: usize,
}

fn main() {
    let seed = match (rt::arg(1), rt::auxv(rt::AT_RANDOM)) {
        (Some(_), _) => rt::arg_u64(1, 0),
        // SAFETY: AT_RANDOM points at 16 random bytes on the initial stack.
        (None, Some(random)) => unsafe { (random as *const u64).read_unaligned() },
        (None, None) => 1,
    };
    let iterations = rt::arg_u64(2, 20_000);
    println!("INFO seed {seed}, iterations {iterations}");

    let free_before = meminfo_free();
    let pid = sys::getpid();
    // SAFETY: querying the program break has no effect.
    let brk0 = unsafe { sys::brk(0) };
    let mut fs0 = 0usize;
    // SAFETY: `fs0` is writable for 8 bytes.
    unsafe { arch_prctl(ARCH_GET_FS, &mut fs0 as *mut usize as usize) };

    let scratch = map(SCRATCH_LEN, PROT_NONE, MAP_ANON_PRIVATE | MAP_NORESERVE);
    assert!(scratch > 0, "scratch mmap failed: {}", Ret(scratch));
    let mut f = Fuzz {
        rng: Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1),
        scratch: scratch as usize,
        buf: [0; BUF_LEN],
        iov: [Iovec { base: core::ptr::null(), len: 0 }; 8],
        fds: [0; MAX_FDS],
        nfds: 0,
        calls: 0,
        ok: 0,
        bad_ret: 0,
        hist: [0; 134],
        other_errno: 0,
    };
    for _ in 0..iterations {
        f.step();
        // SAFETY: restoring the values saved above; nothing here uses TLS
        // and the heap is unused, so the break may move freely.
        unsafe {
            arch_prctl(ARCH_SET_FS, fs0);
            sys::brk(brk0 as usize);
        }
    }
    f.report();

    check("fuzz_survived", true);
    check_ret("getpid_unchanged", sys::getpid(), pid);
    check("canary_intact", CANARY.iter().all(|&b| b == 0xa5));
    let (bad, enosys) = (f.bad_ret, f.hist[ENOSYS as usize]);
    check_with("valid_return_values", bad == 0, format_args!("{bad} results below -4095"));
    check_with("no_enosys", enosys == 0, format_args!("{enosys} ENOSYS"));
    // SAFETY: the break is back at its original value: querying has no effect.
    check_ret("brk_restored", unsafe { sys::brk(0) }, brk0);
    let mut fs = 0usize;
    // SAFETY: `fs` is writable for 8 bytes.
    unsafe { arch_prctl(ARCH_GET_FS, &mut fs as *mut usize as usize) };
    check("fs_restored", fs == fs0);
    for &fd in &f.fds[..f.nfds] {
        sys::close(fd);
    }
    // SAFETY: the scratch and low regions only hold the fuzzer's own mappings;
    // clear_child_tid is reset so nothing is written at exit.
    unsafe {
        check_ret("munmap_scratch", munmap(f.scratch, SCRATCH_LEN), 0);
        check_ret("munmap_low", munmap(0, LOW_END), 0);
        set_tid_address(0);
    }
    let free_after = memfree_settled(free_before);
    println!("INFO MemFree before {free_before} kB, after {free_after} kB");
    check_with(
        "memfree_recovered",
        free_after + MEMFREE_SLACK_KB >= free_before,
        format_args!("MemFree dropped by {} kB", free_before.saturating_sub(free_after)),
    );
}

/// Free memory once it is back within the slack of `before`, or after 5 s
/// (deferred frees, e.g. RCU-freed page tables, take a moment).
fn memfree_settled(before: u64) -> u64 {
    let mut start = Timespec::default();
    sys::clock_gettime(CLOCK_MONOTONIC, &mut start);
    let mut now = start;
    loop {
        let free = meminfo_free();
        if free + MEMFREE_SLACK_KB >= before || now.sec >= start.sec + 5 {
            return free;
        }
        sys::sched_yield();
        sys::clock_gettime(CLOCK_MONOTONIC, &mut now);
    }
}

/// Free memory in kB: MemFree plus, where /proc/zoneinfo exists (Linux),
/// the pages cached on per-CPU free lists, which MemFree leaves out.
fn meminfo_free() -> u64 {
    let mut zoneinfo = [0u8; 16384];
    let len = read_file(c"/proc/zoneinfo", &mut zoneinfo).max(0) as usize;
    let pcp_pages: u64 = zoneinfo[..len]
        .split(|&b| b == b'\n')
        .filter_map(|line| field(line.trim_ascii_start(), b"count:"))
        .sum();
    proc_field(c"/proc/meminfo", b"MemFree:").unwrap_or(0) + pcp_pages * 4
}

impl Fuzz {
    fn step(&mut self) {
        let r = match self.rng.below(21) {
            0 => self.read(),
            1 => self.write(),
            2 => self.writev(),
            3 => self.open(false),
            4 => self.open(true),
            5 => self.close(),
            6 => self.mmap(),
            7 => self.munmap(),
            8 => self.mprotect(),
            9 => self.madvise(),
            10 => self.brk(),
            11 => self.prctl(),
            12 => self.arch_prctl(),
            13 => self.ioctl(),
            14 => self.clock_gettime(),
            15 => sys::getpid(),
            16 => sys::sched_yield(),
            17 => self.lseek(),
            18 => self.pread(),
            19 => self.readv(),
            _ => self.set_tid_address(),
        };
        self.record(r);
    }

    fn record(&mut self, r: isize) {
        self.calls += 1;
        match -r {
            e if e <= 0 => self.ok += 1,
            e if e as usize > MAX_ERRNO => self.bad_ret += 1,
            e => match self.hist.get_mut(e as usize) {
                Some(n) => *n += 1,
                None => self.other_errno += 1,
            },
        }
    }

    fn report(&self) {
        println!("INFO calls {}, succeeded {}", self.calls, self.ok);
        for (e, &n) in self.hist.iter().enumerate().filter(|&(_, &n)| n > 0) {
            println!("INFO errno {}: {n}", Ret(-(e as isize)));
        }
        if self.other_errno > 0 {
            println!("INFO errno other: {}", self.other_errno);
        }
    }

    /// An address that can never be user memory: kernel half or non-canonical.
    fn fault_ptr(&mut self) -> usize {
        match self.rng.below(4) {
            0 => KERNEL_HALF | self.rng.next(),
            1 => (1 << 47) | (self.rng.next() >> 1),
            2 => usize::MAX - self.rng.below(64),
            _ => KERNEL_HALF,
        }
    }

    /// A pointer the kernel may write up to `len` bytes through, and `len`.
    fn out_buf(&mut self) -> (usize, usize) {
        match self.rng.below(5) {
            0 => (self.fault_ptr(), self.any_len()),
            1 => {
                let ptr = self.rng.below(LOW_END);
                (ptr, self.rng.below(LOW_END - ptr + 1))
            }
            2 => {
                let off = self.rng.below(SCRATCH_LEN);
                (self.scratch + off, self.rng.below(SCRATCH_LEN - off + 1).min(1 << 20))
            }
            _ => {
                let off = self.rng.below(BUF_LEN);
                (self.buf.as_mut_ptr() as usize + off, self.rng.below(BUF_LEN - off + 1))
            }
        }
    }

    /// Pointer for a small fixed-size output (timespec, u64, name): at most
    /// 64 bytes are written through it.
    fn out_ptr(&mut self) -> usize {
        match self.rng.below(4) {
            0 => self.fault_ptr(),
            1 => self.rng.below(LOW_END - 64),
            2 => self.scratch + self.rng.below(SCRATCH_LEN - 64),
            _ => self.buf.as_mut_ptr() as usize + self.rng.below(BUF_LEN - 64),
        }
    }

    fn any_len(&mut self) -> usize {
        match self.rng.below(8) {
            0 => 0,
            1 => self.rng.below(P * 4),
            2 => P * (1 + self.rng.below(16)),
            3 => 1 << (20 + self.rng.below(27)),
            4 => self.rng.pick(&[1 << 47, 1 << 63, usize::MAX, usize::MAX - P + 1]),
            5 => isize::MAX as usize,
            _ => self.rng.next(),
        }
    }

    /// A range destructive calls may hit (see the module doc).
    fn range(&mut self) -> (usize, usize) {
        let pages = |r: &mut Rng| P * r.pick(&[0, 1, 1, 2, 3, 4, 8, 16, 64, 512, SCRATCH_LEN / P]);
        let jitter = |r: &mut Rng| if r.chance(10) { r.below(P) } else { 0 };
        match self.rng.below(20) {
            0..=13 => {
                let off = P * self.rng.below(SCRATCH_LEN / P) + jitter(&mut self.rng);
                let len = (pages(&mut self.rng) + jitter(&mut self.rng)).min(SCRATCH_LEN - off);
                (self.scratch + off, len)
            }
            14..=16 => (self.fault_ptr() & !(P - 1), self.any_len()),
            17..=18 => {
                let addr = self.scratch + P * self.rng.below(SCRATCH_LEN / P);
                (addr, 0usize.wrapping_sub(addr) + self.rng.below(4 * P))
            }
            _ => {
                let addr = P * self.rng.below(LOW_END / P) + jitter(&mut self.rng);
                (addr, self.rng.below(LOW_END - addr + 1))
            }
        }
    }

    /// A descriptor other than 0-2: one the fuzzer opened, or one that cannot
    /// be open (so descriptors inherited from the parent are never touched).
    fn fd(&mut self) -> usize {
        if self.nfds > 0 && self.rng.chance(60) {
            return self.fds[self.rng.below(self.nfds)];
        }
        match self.rng.below(3) {
            0 => self.rng.pick(&[usize::MAX, 1 << 31, 0xffff_ffff, 0x8000_0000_0000_0003]),
            1 => (1 << 20) + self.rng.below(1 << 30),
            _ => self.rng.next() | (1 << 31),
        }
    }

    fn read(&mut self) -> isize {
        let fd = self.fd();
        let (ptr, len) = self.out_buf();
        // SAFETY: `ptr..ptr+len` is our buffer, the scratch region, low memory
        // or unmappable; fd is never 0-2 (no blocking on a terminal).
        unsafe { syscall3(nr::READ, fd, ptr, len) }
    }

    /// An offset: small, near the ends of `loff_t`, or anything.
    fn offset(&mut self) -> usize {
        let random = self.rng.next();
        let small = self.rng.below(1 << 16);
        self.rng.pick(&[0, small, usize::MAX, i64::MAX as usize, 1 << 63, random])
    }

    fn lseek(&mut self) -> isize {
        let fd = if self.rng.chance(10) { self.rng.below(3) } else { self.fd() };
        let (offset, whence) = (self.offset(), self.rng.pick(&[0, 1, 2, 3, 4, 5, 1 << 32, usize::MAX]));
        // SAFETY: moving a position touches no memory; on 0-2 it is ESPIPE.
        unsafe { syscall3(nr::LSEEK, fd, offset, whence) }
    }

    fn pread(&mut self) -> isize {
        let fd = self.fd();
        let (ptr, len) = self.out_buf();
        let offset = self.offset();
        // SAFETY: as in `read`.
        unsafe { syscall4(nr::PREAD64, fd, ptr, len, offset) }
    }

    fn readv(&mut self) -> isize {
        for i in 0..self.iov.len() {
            let (base, len) = self.out_buf();
            self.iov[i] = Iovec { base: base as *const u8, len };
        }
        let (fd, offset) = (self.fd(), self.offset());
        let n = self.iov.len();
        let cnt = self.rng.pick(&[0, 1, 2, n, 1025, usize::MAX]);
        let iov = if self.rng.chance(10) { self.fault_ptr() } else { self.iov.as_ptr() as usize };
        // SAFETY: every segment is an `out_buf` (ours, scratch, low or
        // unmappable); `cnt` never exceeds the array or is rejected (> 1024);
        // fd is never 0-2.
        unsafe {
            if self.rng.chance(50) {
                syscall5(nr::PREADV, fd, iov, cnt, offset, 0)
            } else {
                syscall3(nr::READV, fd, iov, cnt)
            }
        }
    }

    fn write(&mut self) -> isize {
        if self.rng.chance(30) {
            // To stdout/stderr only unreadable buffers (or nothing): no output.
            let (fd, ptr) = (1 + self.rng.below(2), self.fault_ptr());
            let len = if self.rng.chance(20) { 0 } else { self.any_len() };
            // SAFETY: the buffer cannot be read; nothing is printed.
            return unsafe { syscall3(nr::WRITE, fd, ptr, len) };
        }
        let fd = self.fd();
        let (ptr, len) = self.out_buf();
        // SAFETY: the kernel only reads the buffer; fd is never 0-2.
        unsafe { syscall3(nr::WRITE, fd, ptr, len) }
    }

    fn writev(&mut self) -> isize {
        let to_stdout = self.rng.chance(30);
        for i in 0..self.iov.len() {
            let (base, len) =
                if to_stdout { (self.fault_ptr(), self.any_len()) } else { self.out_buf() };
            self.iov[i] = Iovec { base: base as *const u8, len };
        }
        let (fd, cnt) = if to_stdout {
            (1 + self.rng.below(2), self.rng.pick(&[0, 1, 2, 8, 1025, usize::MAX]))
        } else {
            let random = self.rng.next();
            (self.fd(), self.rng.pick(&[0, 1, 3, 8, 1024, 1025, usize::MAX, random]))
        };
        let iov = if self.rng.chance(10) { self.fault_ptr() } else { self.iov.as_ptr() as usize };
        // SAFETY: the kernel only reads the iovecs and buffers; towards
        // stdout/stderr all buffers are unreadable and `cnt` never exceeds the
        // array (or is rejected as > 1024).
        unsafe { syscall3(nr::WRITEV, fd, iov, cnt) }
    }

    fn open(&mut self, at: bool) -> isize {
        const FLAGS: [usize; 12] = [
            O_WRONLY, O_RDWR, 3, O_CREAT, O_EXCL, O_TRUNC, 0o2000, 0o4000, O_DIRECTORY, 0o400000,
            0o10000000, 0o20200000,
        ];
        let mut flags = self.rng.pick(&[O_RDONLY, O_RDONLY, O_WRONLY, O_RDWR]);
        for _ in 0..self.rng.below(4) {
            flags |= self.rng.pick(&FLAGS);
        }
        if self.rng.chance(5) {
            flags = self.rng.next() & 0xffff_ffff & !(O_CREAT | O_TRUNC) | O_RDONLY;
        }
        let (dirfd, path) = if !at {
            (0, self.path(false))
        } else if self.rng.chance(50) {
            (AT_FDCWD, self.path(false))
        } else {
            (self.fd(), self.path(true))
        };
        let mode = self.rng.next() & 0o7777;
        // SAFETY: every path is a fixed name under /proc, a nonexistent one,
        // or an unreadable pointer: nothing can be created or truncated.
        let fd = unsafe {
            if at {
                syscall4(nr::OPENAT, dirfd, path, flags, mode)
            } else {
                syscall3(nr::OPEN, path, flags, mode)
            }
        };
        if fd > 2 {
            if self.nfds == MAX_FDS {
                self.nfds -= 1;
                sys::close(self.fds[self.nfds]);
            }
            self.fds[self.nfds] = fd as usize;
            self.nfds += 1;
        }
        fd
    }

    /// A path pointer: a fixed name (relative ones only if `relative_ok`) or unreadable.
    fn path(&mut self, relative_ok: bool) -> usize {
        match self.rng.below(10) {
            0 => self.fault_ptr(),
            1 => self.rng.below(LOW_END) & !0xfff,
            2..=4 if relative_ok => self.rng.pick(&REL_PATHS).as_ptr() as usize,
            _ => self.rng.pick(&PATHS).as_ptr() as usize,
        }
    }

    fn close(&mut self) -> isize {
        if self.nfds > 0 && self.rng.chance(60) {
            let i = self.rng.below(self.nfds);
            let fd = self.fds[i];
            self.nfds -= 1;
            self.fds[i] = self.fds[self.nfds];
            return sys::close(fd);
        }
        sys::close(self.fd())
    }

    fn prot(&mut self) -> usize {
        match self.rng.below(8) {
            0 => self.rng.next() & 0xffff_ffff,
            1 => self.rng.pick(&[0x0100_0000, 0x0200_0000, 0x0300_0000, 8, 0x10]) | PROT_READ,
            _ => self.rng.pick(&[PROT_NONE, PROT_READ, PROT_RW, PROT_READ | PROT_EXEC, 7]),
        }
    }

    fn mmap(&mut self) -> isize {
        // NORESERVE, GROWSDOWN, STACK, 32BIT, HUGETLB, DENYWRITE, NONBLOCK,
        // UNINITIALIZED, SYNC, EXECUTABLE.
        const EXTRA: [usize; 10] = [
            MAP_NORESERVE, MAP_GROWSDOWN, 0x20000, 0x40, 0x40000, 0x800, 0x10000, 0x400_0000,
            0x80000, 0x1000,
        ];
        const TYPES: [usize; 6] =
            [MAP_PRIVATE, MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, 0, 0xf];
        let mut flags = self.rng.pick(&TYPES);
        if self.rng.chance(90) {
            flags |= MAP_ANONYMOUS;
        }
        for _ in 0..self.rng.below(3) {
            flags |= self.rng.pick(&EXTRA);
        }
        let fixed = self.rng.chance(40);
        let (addr, len) = if fixed {
            flags |= if self.rng.chance(70) { MAP_FIXED } else { MAP_FIXED_NOREPLACE };
            self.range()
        } else {
            let hint = match self.rng.below(4) {
                0 => 0,
                1 => self.fault_ptr(),
                2 => self.scratch + self.rng.below(SCRATCH_LEN),
                _ => self.rng.next() & ((1 << 47) - 1),
            };
            (hint, self.any_len())
        };
        // Populating (MAP_POPULATE, MAP_LOCKED) only small lengths.
        if len <= 1 << 20 && self.rng.chance(10) {
            flags |= self.rng.pick(&[MAP_POPULATE, 0x2000]);
        }
        let anon_fd = flags & MAP_ANONYMOUS != 0 && self.rng.chance(80);
        let fd = if anon_fd { usize::MAX } else { self.fd() };
        let off = self.rng.pick(&[0, 0, P, 123, 1 << 40, usize::MAX & !(P - 1)]);
        let prot = self.prot();
        // SAFETY: MAP_FIXED only with `range()` (scratch, low, unmappable or
        // wrapping ranges); otherwise the kernel picks a free range.
        let r = unsafe { syscall6(nr::MMAP, addr, len, prot, flags, fd, off) };
        if r > 0 && !fixed {
            // SAFETY: the mapping was just created by this call.
            unsafe { munmap(r as usize, len) };
        }
        r
    }

    fn munmap(&mut self) -> isize {
        let (addr, len) = self.range();
        // SAFETY: `range()` never covers memory in use.
        unsafe { munmap(addr, len) }
    }

    fn mprotect(&mut self) -> isize {
        let (addr, len) = self.range();
        let prot = self.prot();
        // SAFETY: `range()` never covers memory in use.
        unsafe { mprotect(addr, len, prot) }
    }

    fn madvise(&mut self) -> isize {
        let (addr, len) = self.range();
        // Everything but MADV_HWPOISON/SOFT_OFFLINE (100, 101), which would
        // poison real host pages when run as root.
        let advice = match self.rng.below(10) {
            0 => self.rng.pick(&[102, 103, 999, usize::MAX]),
            1 => 26 + self.rng.below(74),
            _ => self.rng.below(26),
        };
        // SAFETY: `range()` never covers memory in use.
        unsafe { madvise(addr, len, advice) }
    }

    fn brk(&mut self) -> isize {
        // SAFETY: the heap is unused; the break is restored after every call.
        let cur = unsafe { sys::brk(0) } as usize;
        let target = match self.rng.below(5) {
            0 => 0,
            1 => cur + P * self.rng.below(4096) + self.rng.below(P),
            2 => cur.wrapping_sub(P * self.rng.below(4096)),
            3 => self.fault_ptr(),
            _ => self.rng.next(),
        };
        // SAFETY: as above.
        unsafe { sys::brk(target) }
    }

    fn prctl(&mut self) -> isize {
        const PR_GET_DUMPABLE: usize = 3;
        const PR_SET_VMA: usize = 0x5356_4d41;
        let opt = self.rng.pick(&[
            PR_SET_THP_DISABLE,
            PR_GET_THP_DISABLE,
            PR_SET_NAME,
            PR_GET_NAME,
            PR_GET_DUMPABLE,
            PR_SET_VMA,
            0,
            9999,
        ]);
        let mut arg = || match self.rng.below(4) {
            0 | 1 => 0,
            2 => self.rng.below(3),
            _ => self.out_ptr(),
        };
        let (a2, a3, a4, a5) = (arg(), arg(), arg(), arg());
        let a2 = if matches!(opt, PR_SET_NAME | PR_GET_NAME) { self.out_ptr() } else { a2 };
        // SAFETY: the options are harmless; pointers are from `out_ptr` (at
        // most 16 bytes written); PR_SET_VMA only names anonymous mappings.
        unsafe { prctl(opt, a2, a3, a4, a5) }
    }

    fn arch_prctl(&mut self) -> isize {
        let (code, arg) = match self.rng.below(4) {
            0 => (ARCH_GET_FS, self.out_ptr()),
            1 => (ARCH_GET_GS, self.out_ptr()),
            2 => {
                let values = [0, self.fault_ptr(), self.rng.next(), self.scratch];
                (ARCH_SET_FS, self.rng.pick(&values))
            }
            // Bit 31 set: never a defined code (e.g. shadow-stack enable).
            _ => (self.rng.next() | 0x8000_0000, self.out_ptr()),
        };
        // SAFETY: GET codes write 8 bytes through `out_ptr`; SET_FS is undone
        // after each step and nothing uses TLS.
        unsafe { arch_prctl(code, arg) }
    }

    fn ioctl(&mut self) -> isize {
        const FIOCLEX: usize = 0x5451;
        let (fd, req) = if self.rng.chance(30) {
            // Only queries on stdin/stdout/stderr: never change a terminal.
            (self.rng.below(3), self.rng.pick(&[TCGETS, TIOCGWINSZ, FIONREAD, FIOCLEX]))
        } else {
            let random = self.rng.next() & 0xffff_ffff;
            (self.fd(), self.rng.pick(&[TCGETS, TIOCGWINSZ, FIONREAD, FIOCLEX, random]))
        };
        let arg = self.out_ptr();
        // SAFETY: the requests write at most 60 bytes through `out_ptr` (64 of
        // room); random requests on /proc or invalid fds are rejected.
        unsafe { ioctl(fd, req, arg) }
    }

    fn clock_gettime(&mut self) -> isize {
        let clock = match self.rng.below(3) {
            0 => self.rng.below(12),
            1 => self.rng.pick(&[usize::MAX, usize::MAX - 5, 0x7fff_ffff, 1 << 32]),
            _ => self.rng.next(),
        };
        let ts = self.out_ptr();
        // SAFETY: writes 16 bytes through `out_ptr`.
        unsafe { syscall2(nr::CLOCK_GETTIME, clock, ts) }
    }

    fn set_tid_address(&mut self) -> isize {
        let ptr = match self.rng.below(3) {
            0 => 0,
            1 => self.fault_ptr(),
            _ => self.scratch + self.rng.below(SCRATCH_LEN),
        };
        // SAFETY: the kernel writes only at thread exit, by which time the
        // pointer was reset to 0 (or it is unmapped/unmappable).
        unsafe { set_tid_address(ptr) }
    }
}
