//! The sampling profiler's NMI side (Linux `perf record` with the frame-pointer
//! unwinder, on a timer instead of a PMU counter): at a fixed rate it records
//! the interrupted RIP, whether it was user or kernel mode, and for kernel mode
//! the return addresses on the kernel stack, found by walking the RBP chain.
//!
//! # The sample clock: the PIT, routed through the I/O APIC as an NMI
//!
//! The PIT's channel 0 runs at the sampling rate and its line is delivered in
//! NMI mode ([`IoApic::route_as_nmi`], as Linux's old IO-APIC NMI watchdog did
//! and as the page allocator's NMI hammer test does). The channel runs as a
//! rate generator (mode 2), not as the tick's square wave (mode 3): QEMU's
//! PIT in mode 3 gives the edge-triggered I/O APIC pin two rising edges per
//! period (measured: 1160 NMIs in 0.58 s at 1000 Hz), in mode 2 exactly one.
//! The rate is `PIT_HZ / divisor` (10,000 Hz asked gives 10,026 Hz).
//! Why the PIT and not the local APIC timer at a high rate:
//!
//! * an NMI also samples code that runs with interrupts off — the allocator's
//!   locked sections, the trap and syscall paths, other interrupt handlers —
//!   which a maskable timer interrupt can only ever catch at the `sti` that
//!   ends them (the skid that makes such profiles lie);
//! * the local APIC timer's LVT entry has no NMI delivery mode (only LINT0/1,
//!   the performance counter and thermal entries do; TCG emulates no PMU), and
//!   it is the scheduler's tick;
//! * under `-icount` QEMU runs the PIT on virtual time, i.e. on retired
//!   instructions: a sample every `1e9 / rate` instructions, exactly and
//!   repeatably (the same run gives the same profile).
//!
//! While the profiler runs, IRQ 0 is masked at the 8259 (so the fast PIT does
//! not also raise 10,000 maskable interrupts a second) and the NMI handler
//! advances `jiffies` at `pit::HZ` instead; [`stop`] restores both. Tests that
//! reprogram the PIT themselves (the NMI hammer in `ktests/page_alloc.rs`, the
//! shrinker's) change the rate of a `ktest` run under the profiler, and the
//! hammer's final mask of the pin ends its sampling.
//!
//! # The ring
//!
//! NMI context must not allocate or take locks: the caller hands [`start`] a
//! buffer allocated beforehand (the `init` layer vmallocs it) and the NMI
//! appends variable-length records `[header, rip, caller1, caller2, ...]` at
//! an atomic index; a record that does not fit is dropped and counted. The
//! header has bit 63 set for a user-mode sample and the number of callers in
//! its low byte. Only CPU 0 runs and NMIs do not nest, so there is one writer.
//! [`published_words`] is the length of the complete prefix, safe to read
//! while sampling goes on.
//!
//! # The stack walk
//!
//! The kernel is built with `-C force-frame-pointers=yes` (`.cargo/config.toml`):
//! every kernel function keeps `[rbp]` = the caller's RBP and `[rbp+8]` = its
//! return address. The walk starts at the interrupted RBP and never faults: it
//! first decides which stack the interrupted RSP is on — the boot stack (task
//! 0) or the running task's kernel stack (`[top - size, top)`, the top being
//! the one `entry_64::set_kernel_stack` set) — and reads a frame only if it
//! lies between that RSP and that stack's top, 8-aligned, above the previous
//! one; a return address must lie in the kernel image; at most [`MAX_DEPTH`]
//! frames. A sample on any other stack (the IST stacks, the first instructions
//! of `syscall_entry`, which still run on the user stack) keeps just its RIP;
//! so does every user-mode sample (user programs are not walked). The
//! precompiled `core`/`alloc` have no frame pointers, so a sample inside one
//! of their functions misses its immediate caller; a sample in an exception
//! handler skips the interrupted function itself (the trap entry does not
//! link a frame for it). Linux's frame-pointer unwinder shares both.
//!
//! The dump ([`write_samples`]) aggregates identical stacks and prints one line
//! per unique stack, leaf first, in hex, then a summary:
//!
//! ```text
//! prof: rate 10027 Hz (PIT divisor 119), image ffffffff80000000, 23456 NMIs in 2.339 s
//! prof: 812 K ffffffff8004a1c3;ffffffff80051f20;ffffffff800123aa
//! prof: 95 U 401a2c
//! prof: 1234 samples (1139 kernel, 95 user, 0 dropped)
//! ```

use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::frame::TrapFrame;
use super::ioapic::{IoApic, IoApicError, PIT_IRQ};
use super::{apic, memmap, nmi, pic, pit};

/// Most return addresses kept per sample.
pub const MAX_DEPTH: usize = 32;
/// Default sampling rate (`profile` without `=RATE`).
pub const DEFAULT_RATE_HZ: u64 = 10_000;
/// Highest accepted rate: an NMI with a deep walk costs about a thousand
/// instructions, so 100 kHz already spends ~10% of the machine on sampling.
pub const MAX_RATE_HZ: u64 = 100_000;
/// Lowest accepted rate: `pit::HZ` (jiffies advance once per `rate / HZ` NMIs).
pub const MIN_RATE_HZ: u64 = pit::HZ;

const USER_BIT: u64 = 1 << 63;
const DEPTH_MASK: u64 = 0xff;

static RUNNING: AtomicBool = AtomicBool::new(false);
static BUF: AtomicPtr<u64> = AtomicPtr::new(core::ptr::null_mut());
static CAP_WORDS: AtomicUsize = AtomicUsize::new(0);
static HEAD: AtomicUsize = AtomicUsize::new(0);
static KERNEL_SAMPLES: AtomicU64 = AtomicU64::new(0);
static USER_SAMPLES: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// NMIs taken while running (samples + dropped) and the NMIs per jiffy.
static NMIS: AtomicU64 = AtomicU64::new(0);
static NMIS_PER_JIFFY: AtomicU64 = AtomicU64::new(1);
static PIT_PIN: AtomicU8 = AtomicU8::new(0);
static RATE_HZ: AtomicU64 = AtomicU64::new(0);
static DIVISOR: AtomicU64 = AtomicU64::new(0);
static START_NS: AtomicU64 = AtomicU64::new(0);
static STOP_NS: AtomicU64 = AtomicU64::new(0);
/// Where the walk may read and what it accepts as a return address.
static TASK_STACK_SIZE: AtomicU64 = AtomicU64::new(0);
static BOOT_STACK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static IMAGE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Why the profiler cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// It is already running.
    Running,
    /// The rate is outside `MIN_RATE_HZ..=MAX_RATE_HZ`.
    BadRate(u64),
    /// The buffer cannot hold even one record.
    BufferTooSmall,
    /// No local APIC to receive the NMIs.
    NoApic,
    /// No I/O APIC pin for the PIT.
    IoApic(IoApicError),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Running => write!(f, "already running"),
            ProfileError::BadRate(r) => write!(f, "rate {} Hz outside {}..={}", r, MIN_RATE_HZ, MAX_RATE_HZ),
            ProfileError::BufferTooSmall => write!(f, "buffer too small"),
            ProfileError::NoApic => write!(f, "no local APIC for the sampling NMI"),
            ProfileError::IoApic(e) => write!(f, "no I/O APIC pin for the PIT ({:?})", e),
        }
    }
}

/// What the profiler has counted (since the last [`start`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub kernel: u64,
    pub user: u64,
    pub dropped: u64,
    /// The rate the PIT really runs at (`PIT_HZ / divisor`).
    pub rate_hz: u64,
    pub divisor: u64,
    /// NMIs taken while sampling and the (virtual) time they span.
    pub nmis: u64,
    pub elapsed_ns: u64,
    pub running: bool,
}

/// Starts sampling at about `rate_hz` into `buf[..words]`; returns the rate the
/// PIT really runs at. `task_stack_size` is the size of every task's kernel
/// stack (the walk's bound on the running task's stack).
///
/// # Safety
/// `buf` must be valid for writes of `words` `u64`s until [`stop`] returns, and
/// nothing else may write it meanwhile; reads are allowed of the first
/// [`published_words`] words only.
pub unsafe fn start(buf: *mut u64, words: usize, rate_hz: u64, task_stack_size: u64) -> Result<u64, ProfileError> {
    if RUNNING.load(Ordering::SeqCst) {
        return Err(ProfileError::Running);
    }
    if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&rate_hz) {
        return Err(ProfileError::BadRate(rate_hz));
    }
    if buf.is_null() || words < 2 + MAX_DEPTH {
        return Err(ProfileError::BufferTooSmall);
    }
    if !apic::is_enabled() {
        return Err(ProfileError::NoApic);
    }
    let (io, pin) = IoApic::for_isa_irq(PIT_IRQ).map_err(ProfileError::IoApic)?;
    let facts = memmap::facts();
    BOOT_STACK[0].store(facts.stack_bottom, Ordering::Relaxed);
    BOOT_STACK[1].store(facts.stack_bottom.saturating_add(facts.stack_len), Ordering::Relaxed);
    IMAGE[0].store(facts.kernel_virt_addr, Ordering::Relaxed);
    IMAGE[1].store(facts.kernel_virt_addr.saturating_add(facts.kernel_len), Ordering::Relaxed);
    TASK_STACK_SIZE.store(task_stack_size, Ordering::Relaxed);
    BUF.store(buf, Ordering::Relaxed);
    CAP_WORDS.store(words, Ordering::Relaxed);
    HEAD.store(0, Ordering::Relaxed);
    for c in [&KERNEL_SAMPLES, &USER_SAMPLES, &DROPPED, &NMIS, &STOP_NS] {
        c.store(0, Ordering::Relaxed);
    }
    let divisor = (pit::PIT_HZ / rate_hz).max(1);
    let real_rate = pit::PIT_HZ / divisor;
    RATE_HZ.store(real_rate, Ordering::Relaxed);
    DIVISOR.store(divisor, Ordering::Relaxed);
    NMIS_PER_JIFFY.store((real_rate / pit::HZ).max(1), Ordering::Relaxed);
    PIT_PIN.store(pin, Ordering::Relaxed);
    START_NS.store(super::time::uptime_ns().unwrap_or(0), Ordering::Relaxed);
    // Everything above is published before the first NMI can see RUNNING.
    RUNNING.store(true, Ordering::SeqCst);
    nmi::set_sampler(Some(sample));
    pic::mask(pic::IRQ_TIMER);
    pit::set_rate_generator(rate_hz);
    if let Err(e) = io.route_as_nmi(pin, apic::id() as u8) {
        RUNNING.store(false, Ordering::SeqCst);
        nmi::set_sampler(None);
        pit::set_frequency(pit::HZ);
        pic::unmask(pic::IRQ_TIMER);
        return Err(ProfileError::IoApic(e));
    }
    Ok(real_rate)
}

/// Stops sampling: masks the PIT's NMI route, puts the PIT back at `pit::HZ`
/// on IRQ 0. When it returns, no NMI writes the buffer any more (one CPU: an
/// NMI that started has finished). Does nothing if not running.
pub fn stop() {
    if !RUNNING.load(Ordering::SeqCst) {
        return;
    }
    if let Ok((io, _)) = IoApic::for_isa_irq(PIT_IRQ) {
        io.mask(PIT_PIN.load(Ordering::Relaxed));
    }
    RUNNING.store(false, Ordering::SeqCst);
    nmi::set_sampler(None);
    STOP_NS.store(super::time::uptime_ns().unwrap_or(0), Ordering::Relaxed);
    pit::set_frequency(pit::HZ);
    pic::unmask(pic::IRQ_TIMER);
}

pub fn is_running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// Words of complete records at the start of the buffer.
pub fn published_words() -> usize {
    HEAD.load(Ordering::Acquire)
}

pub fn stats() -> Stats {
    let running = is_running();
    let start = START_NS.load(Ordering::Relaxed);
    let end = if running { super::time::uptime_ns().unwrap_or(0) } else { STOP_NS.load(Ordering::Relaxed) };
    Stats {
        kernel: KERNEL_SAMPLES.load(Ordering::Relaxed),
        user: USER_SAMPLES.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        rate_hz: RATE_HZ.load(Ordering::Relaxed),
        divisor: DIVISOR.load(Ordering::Relaxed),
        nmis: NMIS.load(Ordering::Relaxed),
        elapsed_ns: end.saturating_sub(start),
        running,
    }
}

/// The NMI sampler ([`nmi::set_sampler`], installed while running): records
/// one sample of the interrupted frame. NMI context: atomics and plain stores
/// into the ring only.
pub fn sample(frame: &TrapFrame) {
    if !RUNNING.load(Ordering::Acquire) {
        return;
    }
    let n = NMIS.fetch_add(1, Ordering::Relaxed) + 1;
    if n % NMIS_PER_JIFFY.load(Ordering::Relaxed) == 0 {
        pit::tick();
    }
    let user = frame.cs & 3 == 3;
    let mut record = [0u64; 2 + MAX_DEPTH];
    let depth = if user { 0 } else { walk(frame, &mut record[2..]) };
    record[0] = if user { USER_BIT } else { 0 } | depth as u64;
    record[1] = frame.rip;
    let len = 2 + depth;
    let head = HEAD.load(Ordering::Relaxed);
    if head + len > CAP_WORDS.load(Ordering::Relaxed) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let buf = BUF.load(Ordering::Relaxed);
    for (i, &word) in record[..len].iter().enumerate() {
        // SAFETY: `head + len <= CAP_WORDS`, and `start`'s caller keeps
        // `buf[..CAP_WORDS]` valid and unwritten by anyone else while RUNNING;
        // this NMI is the only writer (one CPU, NMIs do not nest) and readers
        // look only below HEAD, which is published after these stores.
        unsafe { buf.add(head + i).write_volatile(word) };
    }
    HEAD.store(head + len, Ordering::Release);
    if user { &USER_SAMPLES } else { &KERNEL_SAMPLES }.fetch_add(1, Ordering::Relaxed);
}

/// The stack the interrupted RSP is on, as `[rsp, top)`, if it is one whose
/// extent is known: the boot stack, or the running task's kernel stack.
fn stack_bounds(rsp: u64) -> Option<(u64, u64)> {
    let (boot_lo, boot_hi) = (BOOT_STACK[0].load(Ordering::Relaxed), BOOT_STACK[1].load(Ordering::Relaxed));
    if boot_lo <= rsp && rsp < boot_hi {
        return Some((rsp, boot_hi));
    }
    let top = super::entry_64::kernel_stack_top();
    let size = TASK_STACK_SIZE.load(Ordering::Relaxed);
    if top != 0 && size != 0 && top.wrapping_sub(size) <= rsp && rsp < top {
        return Some((rsp, top));
    }
    None
}

fn in_image(addr: u64) -> bool {
    IMAGE[0].load(Ordering::Relaxed) <= addr && addr < IMAGE[1].load(Ordering::Relaxed)
}

/// Follows the RBP chain of the interrupted kernel code into `out`; returns
/// how many return addresses it found. Reads only inside the interrupted stack.
fn walk(frame: &TrapFrame, out: &mut [u64]) -> usize {
    let Some((lo, hi)) = stack_bounds(frame.rsp) else { return 0 };
    let mut fp = frame.rbp;
    let mut n = 0;
    while n < out.len() {
        if fp < lo || fp % 8 != 0 || fp > hi.saturating_sub(16) {
            break;
        }
        // SAFETY: `[fp, fp + 16)` lies between the interrupted RSP and the top
        // of the stack it is on (checked just above), which is mapped kernel
        // stack memory; the interrupted code cannot change it while the NMI
        // runs on this, the only, CPU.
        let (next, ret) = unsafe { ((fp as *const u64).read_volatile(), ((fp + 8) as *const u64).read_volatile()) };
        if !in_image(ret) {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

/// One record of the ring: `(user, [rip, callers...])`, or `None` when `words`
/// ends inside a record.
fn split_record(words: &[u64]) -> Option<(bool, &[u64], &[u64])> {
    let (&header, rest) = words.split_first()?;
    let len = 1 + (header & DEPTH_MASK) as usize;
    if rest.len() < len {
        return None;
    }
    Some((header & USER_BIT != 0, &rest[..len], &rest[len..]))
}

/// Writes the samples in `words` (records as the NMI writes them), one line per
/// unique stack with its count (`prof: COUNT K|U rip;caller;...`, most samples
/// first), the `prof: rate ...` header before them and the summary after.
pub fn write_samples(words: &[u64], stats: &Stats, image_base: u64, w: &mut impl Write) -> fmt::Result {
    // A full ring holds hundreds of thousands of samples: each is sorted as the
    // 4-byte offset of its record, and only the unique stacks get a group, so
    // the memory asked for stays below a few MiB (and is asked for, not assumed).
    let mut nr_records = 0;
    let mut rest = words;
    while let Some((_, _, tail)) = split_record(rest) {
        nr_records += 1;
        rest = tail;
    }
    let mut records: Vec<u32> = Vec::new();
    if records.try_reserve_exact(nr_records).is_err() {
        return writeln!(w, "prof: no memory to sort {} samples", nr_records);
    }
    let mut rest = words;
    while let Some((_, _, tail)) = split_record(rest) {
        records.push((words.len() - rest.len()) as u32);
        rest = tail;
    }
    let record = |offset: u32| split_record(&words[offset as usize..]).map(|(user, stack, _)| (user, stack));
    records.sort_unstable_by_key(|&offset| record(offset));
    let nr_groups = 1 + records.windows(2).filter(|p| record(p[0]) != record(p[1])).count();
    let mut groups: Vec<(usize, bool, &[u64])> = Vec::new();
    if groups.try_reserve_exact(nr_groups).is_err() {
        return writeln!(w, "prof: no memory for {} unique stacks", nr_groups);
    }
    for (user, stack) in records.iter().filter_map(|&offset| record(offset)) {
        match groups.last_mut() {
            Some((count, u, s)) if *u == user && *s == stack => *count += 1,
            _ => groups.push((1, user, stack)),
        }
    }
    // Most samples first, equal counts in address order (kernel before user);
    // an unstable sort allocates nothing.
    groups.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| (a.1, a.2).cmp(&(b.1, b.2))));
    writeln!(
        w,
        "prof: rate {} Hz (PIT divisor {}), image {:x}, {} NMIs in {}.{:03} s{}",
        stats.rate_hz,
        stats.divisor,
        image_base,
        stats.nmis,
        stats.elapsed_ns / 1_000_000_000,
        stats.elapsed_ns / 1_000_000 % 1000,
        if stats.running { ", still running" } else { "" }
    )?;
    for &(count, user, stack) in &groups {
        write!(w, "prof: {} {} ", count, if user { 'U' } else { 'K' })?;
        for (i, addr) in stack.iter().enumerate() {
            write!(w, "{}{:x}", if i == 0 { "" } else { ";" }, addr)?;
        }
        writeln!(w)?;
    }
    let (kernel, user) = groups.iter().fold((0, 0), |(k, u), g| if g.1 { (k, u + g.0) } else { (k + g.0, u) });
    writeln!(w, "prof: {} samples ({} kernel, {} user, {} dropped)", kernel + user, kernel, user, stats.dropped)
}

pub const KTESTS: &[crate::lib::ktest::KTest] =
    &[crate::ktest!(profile_records_aggregate_into_lines), crate::ktest!(profile_walk_stays_on_the_stack)];

fn profile_records_aggregate_into_lines() -> crate::lib::ktest::KResult {
    use alloc::string::String;
    let k = 0xffff_ffff_8000_0000u64;
    // Three records of one kernel stack, one user sample, one shorter kernel
    // stack, and a torn record at the end (ignored).
    let words = [
        2, k + 0x10, k + 0x20, k + 0x30, //
        USER_BIT, 0x40_1000, //
        2, k + 0x10, k + 0x20, k + 0x30, //
        0, k + 0x10, //
        2, k + 0x10, k + 0x20, k + 0x30, //
        3, k,
    ];
    let stats = Stats { rate_hz: 10_027, divisor: 119, nmis: 6, elapsed_ns: 600_000, dropped: 1, ..Stats::default() };
    let mut out = String::new();
    write_samples(&words, &stats, k, &mut out).map_err(|_| "format error")?;
    let lines: Vec<&str> = out.lines().collect();
    crate::kassert_eq!(lines.len(), 5);
    crate::kassert_eq!(lines[0], "prof: rate 10027 Hz (PIT divisor 119), image ffffffff80000000, 6 NMIs in 0.000 s");
    crate::kassert_eq!(lines[1], "prof: 3 K ffffffff80000010;ffffffff80000020;ffffffff80000030");
    crate::kassert_eq!(lines[2], "prof: 1 K ffffffff80000010");
    crate::kassert_eq!(lines[3], "prof: 1 U 401000");
    crate::kassert_eq!(lines[4], "prof: 5 samples (4 kernel, 1 user, 1 dropped)");
    Ok(())
}

/// A walk from this function's own frame finds its caller chain inside the
/// image; a frame pointer outside the stack, or below the RSP, gives nothing.
fn profile_walk_stays_on_the_stack() -> crate::lib::ktest::KResult {
    let facts = memmap::facts();
    BOOT_STACK[0].store(facts.stack_bottom, Ordering::Relaxed);
    BOOT_STACK[1].store(facts.stack_bottom + facts.stack_len, Ordering::Relaxed);
    IMAGE[0].store(facts.kernel_virt_addr, Ordering::Relaxed);
    IMAGE[1].store(facts.kernel_virt_addr + facts.kernel_len, Ordering::Relaxed);
    let (rsp, rbp): (u64, u64);
    // SAFETY: reads two registers.
    unsafe { core::arch::asm!("mov {}, rsp", "mov {}, rbp", out(reg) rsp, out(reg) rbp) };
    let mut frame = TrapFrame {
        r15: 0, r14: 0, r13: 0, r12: 0, r11: 0, r10: 0, r9: 0, r8: 0, rbp, rdi: 0, rsi: 0, rdx: 0, rcx: 0,
        rbx: 0, rax: 0, vector: 2, error_code: 0, rip: 0, cs: 8, rflags: 0, rsp, ss: 0,
    };
    let mut out = [0u64; MAX_DEPTH];
    let n = walk(&frame, &mut out);
    crate::kassert!(n >= 2, "only {} frames from the test's own stack", n);
    crate::kassert!(out[..n].iter().all(|&a| in_image(a)), "a return address outside the image: {:x?}", &out[..n]);
    frame.rbp = 0x1000;
    crate::kassert_eq!(walk(&frame, &mut out), 0);
    frame.rbp = rsp - 64;
    crate::kassert_eq!(walk(&frame, &mut out), 0);
    frame.rbp = rbp;
    frame.rsp = 0xdead_0000;
    crate::kassert_eq!(walk(&frame, &mut out), 0);
    Ok(())
}
