//! `hello`: process start-up state and the simple syscalls.
//!
//! Prints argv and the environment size, then checks the auxiliary vector,
//! getpid, clock_gettime, ioctl on a non-tty, arch_prctl(ARCH_SET_FS),
//! set_tid_address, sched_yield, writev, bad fds/pointers and that an unknown
//! syscall number yields ENOSYS.
#![no_std]
#![no_main]

use user::io::Bytes;
use user::rt::{self, AT_ENTRY, AT_PAGESZ, AT_PHDR, AT_PHENT, AT_PHNUM, AT_RANDOM};
use user::sys::{self, errno::*, nr, Iovec, Timespec};
use user::{check, check_ok, check_ret, check_with, println};

user::entry!(main);

fn main() {
    println!("hello from ring 3");
    println!("argc: {}", rt::argc());
    for i in 0..rt::argc() {
        let arg = rt::arg(i).unwrap_or_default();
        // argv[0] is a path that depends on where the program was started.
        let shown = if i == 0 { arg.rsplit(|&b| b == b'/').next().unwrap_or(arg) } else { arg };
        println!("argv[{i}]: {}", Bytes(shown));
    }
    println!("INFO envc: {}", rt::env_count());

    auxv_checks();
    clock_checks();
    fd_checks();
    tls_checks();

    let pid = sys::getpid();
    check("getpid_positive", pid > 0);
    // SAFETY: 0 disables clear_child_tid; nothing is written at exit.
    let tid = unsafe { sys::set_tid_address(0) };
    check_ret("set_tid_address_returns_pid", tid, pid);
    check_ret("sched_yield", sys::sched_yield(), 0);
    // SAFETY: unknown syscall numbers have no effect.
    check_ret("unknown_syscall_400_enosys", unsafe { sys::syscall0(400) }, -ENOSYS);
    // SAFETY: as above (335/336 are uretprobe/uprobe on recent Linux: avoid them).
    check_ret("unknown_syscall_minus1_enosys", unsafe { sys::syscall0(usize::MAX) }, -ENOSYS);
    // SAFETY: as above.
    check_ret("unknown_syscall_huge_enosys", unsafe { sys::syscall0(0x10_0000) }, -ENOSYS);
}

fn auxv_checks() {
    let pagesz = rt::auxv(AT_PAGESZ);
    check_with("auxv_pagesz_4096", pagesz == Some(4096), format_args!("{pagesz:?}"));
    let random = rt::auxv(AT_RANDOM).unwrap_or(0);
    check("auxv_random_nonnull", random != 0);
    if random != 0 {
        // SAFETY: AT_RANDOM points at 16 readable bytes on the initial stack.
        let bytes = unsafe { core::slice::from_raw_parts(random as *const u8, 16) };
        check("auxv_random_not_all_zero", bytes.iter().any(|&b| b != 0));
    }
    check_with(
        "auxv_entry_is_start",
        rt::auxv(AT_ENTRY) == Some(entry_addr()),
        format_args!("AT_ENTRY {:?}, _start {:#x}", rt::auxv(AT_ENTRY), entry_addr()),
    );
    let phdr = rt::auxv(AT_PHDR).unwrap_or(0);
    let phnum = rt::auxv(AT_PHNUM).unwrap_or(0);
    check("auxv_phent_56", rt::auxv(AT_PHENT) == Some(56));
    check_with("auxv_phnum_plausible", (1..64).contains(&phnum), format_args!("phnum {phnum}"));
    check("auxv_phdr_nonnull", phdr != 0);
    if phdr == 0 || !(1..64).contains(&phnum) {
        return;
    }
    // Each program header is 56 bytes: p_type (u32) at 0, p_vaddr at 16, p_memsz at 40.
    // SAFETY: AT_PHDR/AT_PHNUM describe the program headers the kernel mapped.
    let phdrs = unsafe { core::slice::from_raw_parts(phdr as *const [u64; 7], phnum) };
    const PT_LOAD: u64 = 1;
    let in_load = |addr: usize| {
        phdrs.iter().any(|p| {
            let addr = addr as u64;
            p[0] as u32 as u64 == PT_LOAD && (p[2]..p[2] + p[5]).contains(&addr)
        })
    };
    check("auxv_phdr_in_pt_load", in_load(phdr));
    check("auxv_entry_in_pt_load", in_load(entry_addr()));
}

fn clock_checks() {
    let mut t0 = Timespec::default();
    check_ret("clock_gettime_monotonic", sys::clock_gettime(sys::CLOCK_MONOTONIC, &mut t0), 0);
    check("clock_gettime_nsec_range", (0..1_000_000_000).contains(&t0.nsec));
    let mut t1 = t0;
    let mut spins = 0;
    while t1 <= t0 && spins < 10_000_000 {
        sys::clock_gettime(sys::CLOCK_MONOTONIC, &mut t1);
        spins += 1;
    }
    check("clock_gettime_monotonic_increases", t1 > t0);
    let mut rt = Timespec::default();
    check_ret("clock_gettime_realtime", sys::clock_gettime(sys::CLOCK_REALTIME, &mut rt), 0);
    check("clock_realtime_after_2020", rt.sec > 1_577_836_800);
    check_ret("clock_gettime_bad_clock_einval", sys::clock_gettime(12345, &mut t1), -EINVAL);
    // SAFETY: the kernel must reject the kernel-half pointer without writing.
    let r = unsafe { sys::syscall2(nr::CLOCK_GETTIME, sys::CLOCK_MONOTONIC, sys::KERNEL_HALF) };
    check_ret("clock_gettime_kernel_ptr_efault", r, -EFAULT);
    // SAFETY: page 0x1000 is unmapped; the kernel must reject it.
    let r = unsafe { sys::syscall2(nr::CLOCK_GETTIME, sys::CLOCK_MONOTONIC, 0x1000) };
    check_ret("clock_gettime_unmapped_ptr_efault", r, -EFAULT);
}

fn fd_checks() {
    let fd = sys::open(c"/proc/self/status", sys::O_RDONLY);
    check_ok("open_proc_self_status", fd);
    if fd >= 0 {
        let mut termios = [0u8; 64];
        // SAFETY: TCGETS would write at most sizeof(struct termios) = 60 bytes.
        let r = unsafe { sys::ioctl(fd as usize, sys::TCGETS, termios.as_mut_ptr() as usize) };
        check_ret("ioctl_tcgets_regular_file_enotty", r, -ENOTTY);
        check_ret("close_status", sys::close(fd as usize), 0);
    }
    let msg = b"writev: ok\n";
    let iov = [
        Iovec { base: msg.as_ptr(), len: 8 },
        Iovec { base: msg[8..].as_ptr(), len: 0 },
        Iovec { base: msg[8..].as_ptr(), len: 3 },
    ];
    check_ret("writev_total_length", sys::writev(1, &iov), msg.len() as isize);
    check_ret("writev_bad_fd_ebadf", sys::writev(999, &iov), -EBADF);
    let bad = [Iovec { base: sys::KERNEL_HALF as *const u8, len: 16 }];
    check_ret("writev_kernel_ptr_efault", sys::writev(1, &bad), -EFAULT);
    check_ret("write_bad_fd_ebadf", sys::write(999, b"x"), -EBADF);
    // SAFETY: the kernel must reject the kernel-half pointer without reading.
    let r = unsafe { sys::syscall3(nr::WRITE, 1, sys::KERNEL_HALF, 8) };
    check_ret("write_kernel_ptr_efault", r, -EFAULT);
    check_ret("write_zero_len", sys::write(1, b""), 0);
}

/// A TLS block whose first word points to itself, as the x86_64 TLS ABI expects.
#[repr(C, align(64))]
struct Tls {
    this: usize,
    value: u64,
}

fn tls_checks() {
    let mut tls = Tls { this: 0, value: 0x1234_5678_9abc_def0 };
    tls.this = &tls as *const Tls as usize;
    // SAFETY: this program does not use thread-local storage, so pointing %fs
    // at a stack block (restored to 0 below, before it goes out of scope) is sound.
    let r = unsafe { sys::arch_prctl(sys::ARCH_SET_FS, tls.this) };
    check_ret("arch_prctl_set_fs", r, 0);
    let (self_ptr, value): (usize, u64);
    // SAFETY: %fs now points at `tls`; both loads stay inside it.
    unsafe {
        core::arch::asm!("mov {}, fs:0", "mov {}, fs:8", out(reg) self_ptr, out(reg) value,
                         options(nostack, readonly));
    }
    check("fs_0_reads_self_pointer", self_ptr == tls.this);
    check("fs_8_reads_value", value == tls.value);
    let mut got = 0usize;
    // SAFETY: `got` is writable for 8 bytes.
    let r = unsafe { sys::arch_prctl(sys::ARCH_GET_FS, &mut got as *mut usize as usize) };
    check("arch_prctl_get_fs", r == 0 && got == tls.this);
    // SAFETY: a kernel-half base is rejected without effect.
    let r = unsafe { sys::arch_prctl(sys::ARCH_SET_FS, sys::KERNEL_HALF) };
    check_ret("arch_prctl_set_fs_kernel_eperm", r, -EPERM);
    // SAFETY: unknown codes have no effect.
    check_ret("arch_prctl_unknown_einval", unsafe { sys::arch_prctl(0x9999, 0) }, -EINVAL);
    // SAFETY: resetting the base to 0 before `tls` dies; nothing uses %fs.
    check_ret("arch_prctl_reset_fs", unsafe { sys::arch_prctl(sys::ARCH_SET_FS, 0) }, 0);
}

/// Address of this program's `_start`.
fn entry_addr() -> usize {
    _start as *const () as usize
}
