//! The vDSO's code and its data page (Linux `arch/x86/entry/vdso/`:
//! `vclock_gettime.c` and the `vdso_data` of `[vvar]`).
//!
//! The functions below run in user mode. They are position-independent
//! machine code that the kernel copies into the `[vdso]` page (at
//! [`exec::vdso::TEXT_OFFSET`]); they read the clock parameters
//! ([`VdsoData`]) RIP-relative from the `[vvar]` page mapped right below it,
//! and the TSC with `rdtsc`, so `clock_gettime`, `gettimeofday` and `time`
//! never enter the kernel. The result is the same function of the TSC as the
//! kernel's own clock ([`super::time::uptime_ns`]): nanoseconds since boot =
//! `((tsc - tsc_base) * mult) >> 32` with a 128-bit product, plus the
//! wall-clock offset for the `CLOCK_REALTIME` clocks, so the vDSO and the
//! system calls interleave monotonically.
//!
//! Exports (all of version `LINUX_2.6`, each also under its plain name as a
//! weak alias, like Linux's): `__vdso_clock_gettime`, `__vdso_gettimeofday`,
//! `__vdso_time`, `__vdso_clock_getres`. A clock the vDSO does not serve
//! (the CPU-time clocks, invalid ids) and every call before the TSC is
//! calibrated go to the real system call from inside the vDSO, as Linux's
//! fallbacks do, so errors (`EINVAL`) are the system call's. As on Linux, a
//! bad `timespec` pointer is written directly: the caller gets `SIGSEGV`,
//! not `EFAULT`.
//!
//! The data page is written by the kernel only, under a sequence count
//! (even = stable; the reader retries while it is odd or changed).

use core::mem::offset_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use exec::vdso::{Export, TEXT_OFFSET};

/// The clock parameters in the `[vvar]` page (Linux `struct vdso_data`).
#[repr(C)]
pub struct VdsoData {
    /// Sequence count: odd while the kernel updates the fields below.
    pub seq: AtomicU32,
    /// [`VCLOCK_TSC`] once the TSC is calibrated, [`VCLOCK_NONE`] before
    /// (every call then takes the system call).
    pub clock_mode: AtomicU32,
    /// TSC value at boot (time 0 of `CLOCK_MONOTONIC`).
    pub tsc_base: AtomicU64,
    /// Nanoseconds per TSC tick as a 32.32 fixed-point number.
    pub mult: AtomicU64,
    /// `CLOCK_REALTIME` - `CLOCK_MONOTONIC`, in nanoseconds.
    pub realtime_offset_ns: AtomicU64,
}

pub const VCLOCK_NONE: u32 = 0;
pub const VCLOCK_TSC: u32 = 1;
/// The fixed-point shift of [`VdsoData::mult`].
pub const MULT_SHIFT: u32 = 32;

/// The clock values the kernel publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockParams {
    pub tsc_base: u64,
    pub mult: u64,
    pub realtime_offset_ns: u64,
}

impl VdsoData {
    /// Publishes `params` (or, with `None`, sends every call to the system
    /// call) under the sequence count (Linux `vdso_write_begin/end`). Only
    /// the boot CPU runs, so the count's odd state is never observed
    /// concurrently; the retry loop covers a future SMP or `settimeofday`.
    pub fn publish(&self, params: Option<ClockParams>) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Release);
        core::sync::atomic::fence(Ordering::Release);
        if let Some(p) = params {
            self.tsc_base.store(p.tsc_base, Ordering::Relaxed);
            self.mult.store(p.mult, Ordering::Relaxed);
            self.realtime_offset_ns.store(p.realtime_offset_ns, Ordering::Relaxed);
        }
        let mode = if params.is_some() { VCLOCK_TSC } else { VCLOCK_NONE };
        self.clock_mode.store(mode, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

const _: () = assert!(core::mem::size_of::<VdsoData>() <= 4096);

/// Distance from the first code byte back to the start of `[vvar]`.
const VVAR_DISTANCE: usize = 4096 + TEXT_OFFSET;

// The clock ids the vDSO serves (Linux VDSO_HRES | VDSO_COARSE | VDSO_RAW):
// REALTIME 0, MONOTONIC 1, MONOTONIC_RAW 4, REALTIME_COARSE 5,
// MONOTONIC_COARSE 6, BOOTTIME 7 (bit mask 0xf3); of these, 0 and 5 add the
// wall-clock offset (mask 0x21). The others go to the system call.
core::arch::global_asm!(
    r#"
    .pushsection .rodata.vdso_text, "a"
    .balign 16
    .globl vdso_text_start
vdso_text_start:
.Lvdso_start:

    // ns = vread_ns(ecx = clock id): nanoseconds of that clock in rax.
    // Clobbers rdx, r8, r9. Retries while the kernel updates [vvar].
.Lvread_ns:
    movl  .Lvvar_seq(%rip), %r8d
    testl $1, %r8d
    jnz   .Lvread_busy
    lfence
    rdtsc
    shlq  $32, %rdx
    orq   %rdx, %rax
    subq  .Lvvar_tsc_base(%rip), %rax
    mulq  .Lvvar_mult(%rip)
    shrdq ${shift}, %rdx, %rax
    movl  $0x21, %r9d
    btl   %ecx, %r9d
    jnc   1f
    addq  .Lvvar_realtime(%rip), %rax
1:  cmpl  .Lvvar_seq(%rip), %r8d
    jne   .Lvread_ns
    ret
.Lvread_busy:
    pause
    jmp   .Lvread_ns

    // int __vdso_clock_gettime(clockid_t clk, struct timespec *ts)
    .globl vdso_clock_gettime
vdso_clock_gettime:
    cmpl  $7, %edi
    ja    .Lcgt_syscall
    movl  $0xf3, %eax
    btl   %edi, %eax
    jnc   .Lcgt_syscall
    cmpl  ${vclock_none}, .Lvvar_mode(%rip)
    je    .Lcgt_syscall
    movl  %edi, %ecx
    call  .Lvread_ns
    xorl  %edx, %edx
    movl  $1000000000, %ecx
    divq  %rcx
    movq  %rax, (%rsi)
    movq  %rdx, 8(%rsi)
    xorl  %eax, %eax
    ret
.Lcgt_syscall:
    movslq %edi, %rdi
    movl  $228, %eax
    syscall
    ret

    // int __vdso_gettimeofday(struct timeval *tv, struct timezone *tz)
    .globl vdso_gettimeofday
vdso_gettimeofday:
    cmpl  ${vclock_none}, .Lvvar_mode(%rip)
    je    .Lgtod_syscall
    testq %rdi, %rdi
    jz    1f
    xorl  %ecx, %ecx
    call  .Lvread_ns
    xorl  %edx, %edx
    movl  $1000, %ecx
    divq  %rcx
    xorl  %edx, %edx
    movl  $1000000, %ecx
    divq  %rcx
    movq  %rax, (%rdi)
    movq  %rdx, 8(%rdi)
1:  testq %rsi, %rsi
    jz    2f
    movq  $0, (%rsi)
2:  xorl  %eax, %eax
    ret
.Lgtod_syscall:
    movl  $96, %eax
    syscall
    ret

    // time_t __vdso_time(time_t *t)
    .globl vdso_time
vdso_time:
    cmpl  ${vclock_none}, .Lvvar_mode(%rip)
    je    .Ltime_syscall
    xorl  %ecx, %ecx
    call  .Lvread_ns
    xorl  %edx, %edx
    movl  $1000000000, %ecx
    divq  %rcx
    testq %rdi, %rdi
    jz    1f
    movq  %rax, (%rdi)
1:  ret
.Ltime_syscall:
    movl  $201, %eax
    syscall
    ret

    // int __vdso_clock_getres(clockid_t clk, struct timespec *res): 1 ns
    // for every clock served here (the TSC clock; the coarse clocks are
    // as precise here).
    .globl vdso_clock_getres
vdso_clock_getres:
    cmpl  $7, %edi
    ja    .Lgetres_syscall
    movl  $0xf3, %eax
    btl   %edi, %eax
    jnc   .Lgetres_syscall
    cmpl  ${vclock_none}, .Lvvar_mode(%rip)
    je    .Lgetres_syscall
    testq %rsi, %rsi
    jz    1f
    movq  $0, (%rsi)
    movq  $1, 8(%rsi)
1:  xorl  %eax, %eax
    ret
.Lgetres_syscall:
    movslq %edi, %rdi
    movl  $229, %eax
    syscall
    ret

    .globl vdso_text_end
vdso_text_end:

    // [vvar] fields, relative to the code's first byte.
    .set .Lvvar, .Lvdso_start - {vvar_distance}
    .set .Lvvar_seq, .Lvvar + {seq}
    .set .Lvvar_mode, .Lvvar + {mode}
    .set .Lvvar_tsc_base, .Lvvar + {tsc_base}
    .set .Lvvar_mult, .Lvvar + {mult}
    .set .Lvvar_realtime, .Lvvar + {realtime}
    .popsection
    "#,
    shift = const MULT_SHIFT,
    vclock_none = const VCLOCK_NONE,
    vvar_distance = const VVAR_DISTANCE,
    seq = const offset_of!(VdsoData, seq),
    mode = const offset_of!(VdsoData, clock_mode),
    tsc_base = const offset_of!(VdsoData, tsc_base),
    mult = const offset_of!(VdsoData, mult),
    realtime = const offset_of!(VdsoData, realtime_offset_ns),
    options(att_syntax)
);

unsafe extern "C" {
    static vdso_text_start: u8;
    static vdso_text_end: u8;
    static vdso_clock_gettime: u8;
    static vdso_gettimeofday: u8;
    static vdso_time: u8;
    static vdso_clock_getres: u8;
}

/// The vDSO's code (to be placed at [`TEXT_OFFSET`] of the image).
pub fn text() -> &'static [u8] {
    let start = &raw const vdso_text_start;
    let len = (&raw const vdso_text_end as usize) - start as usize;
    // SAFETY: the two labels delimit the bytes of the global_asm! block
    // above, in the kernel's read-only data for its whole lifetime.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The exported functions and their offsets in [`text`], in Linux's names.
pub fn exports() -> [Export<'static>; 8] {
    let start = &raw const vdso_text_start as usize;
    let cgt = &raw const vdso_clock_gettime as usize - start;
    let gtod = &raw const vdso_gettimeofday as usize - start;
    let time = &raw const vdso_time as usize - start;
    let getres = &raw const vdso_clock_getres as usize - start;
    let e = |name, offset, weak| Export { name, offset, weak };
    [
        e("__vdso_clock_gettime", cgt, false),
        e("clock_gettime", cgt, true),
        e("__vdso_gettimeofday", gtod, false),
        e("gettimeofday", gtod, true),
        e("__vdso_time", time, false),
        e("time", time, true),
        e("__vdso_clock_getres", getres, false),
        e("clock_getres", getres, true),
    ]
}
