//! Tasks and the round-robin scheduler (a much smaller `kernel/sched/`).
//!
//! Every user process is one [`Task`] with its own kernel stack (vmalloc'd,
//! so an overflow hits a guard page, like Linux's `VMAP_STACK`). Task 0 is
//! the boot CPU's original context (the console, the tests, and the idle
//! loop); it runs only when no user task is runnable.
//!
//! The kernel is not preemptible: the local APIC timer ([`timer_tick`]) only
//! sets `need_resched`, and the task is switched at its next return to user
//! mode ([`return_to_user`]), or when it yields, blocks or exits.
//!
//! A switch ([`schedule`]) saves the previous task's user FS base, FPU/SSE
//! registers, `memalloc_nofs/noio` scope and its
//! address space (the [`crate::memory::mm_struct`] "current" slot), loads the next
//! ones, points TSS `rsp0` and the syscall stack at the next kernel stack, and
//! swaps stacks in `switch_to` (callee-saved registers only, as the C ABI
//! allows). A new task's stack is prepared so that its first switch "returns"
//! into `trap_return` with a [`TrapFrame`] that enters ring 3.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use mm::gfp::GFP_KERNEL;
use mm::vmalloc::VmArea;
use x86_64::registers::model_specific::FsBase;
use x86_64::VirtAddr;

use crate::arch::x86_64::fpu::FpuState;
use crate::arch::x86_64::{cpu, entry_64};
use crate::arch::x86_64::frame::TrapFrame;
use crate::fs::ramfs::FdTable;
use crate::memory::mm_struct::Mm;
use crate::task::process::ExitStatus;
use crate::lib::sync::IrqSpinlock;

pub type Pid = u32;

/// Scheduler ticks per second (the time slice is 1/HZ).
pub const HZ: u64 = 100;

/// Size of a task's kernel stack.
pub const KERNEL_STACK_SIZE: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskState {
    Runnable,
    /// Exited; waits for [`reap`].
    Zombie(ExitStatus),
}

/// One process (one thread each).
pub struct Task {
    pub pid: Pid,
    pub name: String,
    pub state: TaskState,
    /// The address space while the task is not running (while it runs, it is
    /// the `mm_struct` current slot).
    pub mm: Option<Box<Mm>>,
    pub files: FdTable,
    /// `set_tid_address` pointer.
    pub clear_child_tid: u64,
    /// Set by the OOM killer: the task exits at its next return to user mode.
    pub kill_pending: Option<u8>,
    /// Statistics kept for the exit line.
    pub peak_rss_kb: u64,
    pub exit_vm_pte_kb: u64,
    fs_base: u64,
    /// The task's `memalloc_nofs/noio` scope while it is not running.
    memalloc: u32,
    fpu: Box<FpuState>,
    saved_rsp: u64,
    kstack: Option<VmArea>,
}

struct Scheduler {
    tasks: BTreeMap<Pid, Box<Task>>,
    runqueue: VecDeque<Pid>,
    next_pid: Pid,
}

static SCHED: IrqSpinlock<Scheduler> =
    IrqSpinlock::new(Scheduler { tasks: BTreeMap::new(), runqueue: VecDeque::new(), next_pid: 1 });
static CURRENT: AtomicU32 = AtomicU32::new(0);
static NEED_RESCHED: AtomicBool = AtomicBool::new(false);
/// Task 0's stack pointer while another task runs.
static mut IDLE_RSP: u64 = 0;
/// Task 0's memalloc scope while another task runs.
static IDLE_MEMALLOC: AtomicU32 = AtomicU32::new(0);
/// The scope state loaded at the last switch into a user task (for tests).
pub static LAST_USER_MEMALLOC: AtomicU32 = AtomicU32::new(0);

global_asm!(
    r#"
    .section .text
    .global switch_to
    // rdi = where to save the current RSP, rsi = the next task's RSP.
    // RFLAGS travels with the task too (IF, and AC must not leak).
switch_to:
    pushfq
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    popfq
    ret
    "#
);

unsafe extern "C" {
    fn switch_to(save_rsp: *mut u64, next_rsp: u64);
    static trap_return: u8;
}

/// The running task's pid (0: the boot/idle context).
pub fn current_pid() -> Pid {
    CURRENT.load(Ordering::Relaxed)
}

/// Runs `f` on the running user task (None in task 0).
pub fn with_current<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    let pid = current_pid();
    let mut s = SCHED.lock();
    s.tasks.get_mut(&pid).map(|t| f(t))
}

/// Runs `f` on the running task's file table (Linux `current->files`);
/// `EBADF` in task 0, which has none. The scheduler's lock is held meanwhile:
/// `f` must not touch user memory.
pub fn with_files<R>(f: impl FnOnce(&mut FdTable) -> Result<R, mm::errno::Errno>) -> Result<R, mm::errno::Errno> {
    with_current(|t| f(&mut t.files)).unwrap_or(Err(mm::errno::Errno::EBADF))
}

/// Runs `f` on task `pid`.
pub fn with_task<R>(pid: Pid, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    SCHED.lock().tasks.get_mut(&pid).map(|t| f(t))
}

/// Runs `f` over every task (for `ps`, the OOM killer).
pub fn for_each_task(mut f: impl FnMut(&mut Task)) {
    for t in SCHED.lock().tasks.values_mut() {
        f(t)
    }
}

/// Like [`for_each_task`], but does nothing if the scheduler lock is taken
/// (for callers inside allocations, such as shrinkers).
pub fn try_for_each_task(mut f: impl FnMut(&mut Task)) {
    if let Some(mut s) = SCHED.try_lock() {
        for t in s.tasks.values_mut() {
            f(t)
        }
    }
}

/// [`try_for_each_task`] over the tasks' address spaces (the walk migration
/// uses to find a parked task's pages).
pub fn try_for_each_mm(f: &mut dyn FnMut(&mut Mm)) {
    try_for_each_task(|t| {
        if let Some(mm) = t.mm.as_mut() {
            f(mm)
        }
    });
}

/// Creates a runnable task that starts in user mode at `entry` with stack
/// pointer `user_rsp`, in address space `mm`.
pub fn spawn(name: &str, mm: Box<Mm>, files: FdTable, entry: u64, user_rsp: u64) -> Result<Pid, mm::vmalloc::VmallocError> {
    let kstack = match crate::memory::vmalloc::vmalloc(KERNEL_STACK_SIZE, GFP_KERNEL) {
        Ok(k) => k,
        Err(e) => {
            mm.destroy();
            return Err(e);
        }
    };
    let top = kstack.addr().as_u64() + KERNEL_STACK_SIZE as u64;
    let frame = TrapFrame {
        r15: 0, r14: 0, r13: 0, r12: 0, r11: 0, r10: 0, r9: 0, r8: 0, rbp: 0, rdi: 0, rsi: 0, rdx: 0, rcx: 0,
        rbx: 0, rax: 0, vector: 0, error_code: 0,
        rip: entry,
        cs: crate::arch::x86_64::gdt::selectors().user_code.0 as u64,
        rflags: 0x202,
        rsp: user_rsp,
        ss: crate::arch::x86_64::gdt::selectors().user_data.0 as u64,
    };
    let frame_at = top - size_of::<TrapFrame>() as u64;
    // Below the frame: switch_to's return address, RFLAGS (interrupts off
    // until `iretq` loads the frame's) and six callee-saved registers.
    let ret_at = frame_at - 8;
    let flags_at = ret_at - 8;
    let saved_rsp = flags_at - 6 * 8;
    // SAFETY: the new stack is ours alone, mapped and large enough; the
    // frame and the switch_to context are written inside it.
    unsafe {
        (frame_at as *mut TrapFrame).write(frame);
        (ret_at as *mut u64).write(&raw const trap_return as u64);
        (flags_at as *mut u64).write(0x2);
        core::ptr::write_bytes(saved_rsp as *mut u64, 0, 6);
    }
    let mut s = SCHED.lock();
    let pid = s.next_pid;
    s.next_pid += 1;
    let task = Task {
        pid,
        name: name.into(),
        state: TaskState::Runnable,
        mm: Some(mm),
        files,
        clear_child_tid: 0,
        kill_pending: None,
        peak_rss_kb: 0,
        exit_vm_pte_kb: 0,
        fs_base: 0,
        memalloc: 0,
        fpu: Box::new(FpuState::initial()),
        saved_rsp,
        kstack: Some(kstack),
    };
    s.tasks.insert(pid, Box::new(task));
    s.runqueue.push_back(pid);
    Ok(pid)
}

/// Timer interrupt: the running task has used its time slice.
pub fn timer_tick() {
    if current_pid() != 0 {
        NEED_RESCHED.store(true, Ordering::Relaxed);
    }
}

/// Switches tasks now if the time slice is over (Linux `cond_resched`):
/// for long loops in system calls. The caller must hold no lock.
pub fn cond_resched() {
    if NEED_RESCHED.swap(false, Ordering::Relaxed) {
        schedule();
    }
}

/// Sleeps for about `ticks` scheduler ticks (Linux
/// `schedule_timeout_uninterruptible`): other runnable user tasks run
/// meanwhile; with none, or from task 0 (which the scheduler resumes only when
/// no user task is runnable), the CPU halts between interrupts, whose handlers
/// may free memory. Returns `false` at once, without waiting, when the caller
/// cannot sleep: interrupts off (the kernel's locks disable them, and so do
/// interrupt and NMI gates; by convention, nothing enforces that a lock held
/// with interrupts on is never met here), or no timer has ticked yet.
pub fn schedule_timeout_uninterruptible(ticks: u64) -> bool {
    let tsc_hz = crate::arch::x86_64::time::tsc_hz();
    if !crate::lib::sync::irqs_enabled() || tsc_hz == 0 || crate::arch::x86_64::pit::jiffies() == 0 {
        return false;
    }
    let deadline = cpu::rdtsc().saturating_add(ticks.saturating_mul(tsc_hz / HZ));
    while cpu::rdtsc() < deadline {
        if current_pid() != 0 && has_runnable() {
            schedule();
        } else {
            cpu::enable_irqs_and_halt();
        }
    }
    true
}

/// Tasks whose `kill_pending` is set (Linux checks `TIF_SIGPENDING` in the
/// task's flags on every return to user; here one counter for all tasks):
/// zero on the common path, so [`return_to_user`] looks the task up only when
/// some task has a kill pending. Changed only with [`send_kill`] and
/// [`take_kill`] (a reaped task with one still set keeps it counted: the hint
/// then costs a lookup, never a missed kill).
static NR_KILL_PENDING: AtomicUsize = AtomicUsize::new(0);

/// Marks task `pid` to die with `sig` on its next return to user (the OOM
/// killer's choice). `false` if there is no such task.
pub fn send_kill(pid: Pid, sig: u8) -> bool {
    with_task(pid, |t| {
        if t.kill_pending.replace(sig).is_none() {
            NR_KILL_PENDING.fetch_add(1, Ordering::Relaxed);
        }
    })
    .is_some()
}

/// Takes the running task's pending kill, if any.
pub fn take_kill() -> Option<u8> {
    if NR_KILL_PENDING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let sig = with_current(|t| t.kill_pending.take()).flatten();
    if sig.is_some() {
        NR_KILL_PENDING.fetch_sub(1, Ordering::Relaxed);
    }
    sig
}

/// Whether the running task has been chosen by the OOM killer.
pub fn kill_pending() -> bool {
    NR_KILL_PENDING.load(Ordering::Relaxed) != 0 && with_current(|t| t.kill_pending.is_some()).unwrap_or(false)
}

/// Called on every return to user mode (interrupt or syscall exit): delivers
/// a pending OOM kill and switches tasks if the time slice is over.
pub fn return_to_user() {
    if let Some(sig) = take_kill() {
        crate::task::process::do_exit(ExitStatus::Signaled(sig));
    }
    if NEED_RESCHED.swap(false, Ordering::Relaxed) {
        schedule();
    }
}

/// Whether any user task is runnable.
pub fn has_runnable() -> bool {
    !SCHED.lock().runqueue.is_empty()
}

/// Switches to the next runnable task (round robin); task 0 runs when no
/// user task is runnable. Returns when the caller is scheduled again.
pub fn schedule() {
    let irqs = crate::lib::sync::local_irq_save();
    let prev = current_pid();
    let mut s = SCHED.lock();
    let prev_runnable = s.tasks.get(&prev).is_some_and(|t| t.state == TaskState::Runnable);
    if prev != 0 && prev_runnable {
        s.runqueue.push_back(prev);
    }
    let next = s.runqueue.pop_front().unwrap_or(0);
    if next == prev {
        drop(s);
        crate::lib::sync::local_irq_restore(irqs);
        return;
    }
    // Each task keeps its own memalloc scope (Linux: `current->flags`).
    let next_memalloc = match s.tasks.get(&next) {
        Some(t) => t.memalloc,
        None => IDLE_MEMALLOC.load(Ordering::Relaxed),
    };
    if next != 0 {
        LAST_USER_MEMALLOC.store(next_memalloc, Ordering::Relaxed);
    }
    let prev_memalloc = crate::memory::page_alloc::MEMALLOC_SCOPE.switch_state(next_memalloc);
    match s.tasks.get_mut(&prev) {
        Some(t) => t.memalloc = prev_memalloc,
        None => IDLE_MEMALLOC.store(prev_memalloc, Ordering::Relaxed),
    }
    // Park the previous task's address space and FS base.
    let prev_mm = crate::memory::mm_struct::deactivate();
    let prev_rsp_slot: *mut u64 = match s.tasks.get_mut(&prev) {
        Some(t) => {
            t.fs_base = FsBase::read().as_u64();
            t.fpu.save();
            if prev_runnable {
                t.mm = prev_mm;
            }
            &mut t.saved_rsp
        }
        // Only the address of task 0's slot is taken.
        None => &raw mut IDLE_RSP,
    };
    let next_rsp = match s.tasks.get_mut(&next) {
        Some(t) => {
            if let Some(mm) = t.mm.take() {
                crate::memory::mm_struct::activate(mm);
            }
            FsBase::write(VirtAddr::new_truncate(t.fs_base));
            t.fpu.restore();
            let top = t.kstack.as_ref().map(|k| k.addr().as_u64() + KERNEL_STACK_SIZE as u64).unwrap_or(0);
            entry_64::set_kernel_stack(top);
            t.saved_rsp
        }
        // SAFETY: task 0's slot was written when it last switched away.
        None => unsafe { IDLE_RSP },
    };
    CURRENT.store(next, Ordering::Relaxed);
    drop(s);
    // SAFETY: tasks are boxed (their slots do not move) and are only freed by
    // `reap` once they are zombies, which never run again; `next_rsp` was
    // saved by switch_to or prepared by `spawn`. Interrupts stay off until
    // the next task restores its own flags.
    unsafe { switch_to(prev_rsp_slot, next_rsp) };
    crate::lib::sync::local_irq_restore(irqs);
}

/// Removes a zombie task and frees its kernel stack; returns its exit status.
pub fn reap(pid: Pid) -> Option<(ExitStatus, Box<Task>)> {
    assert_eq!(current_pid(), 0, "only task 0 reaps");
    let mut s = SCHED.lock();
    let TaskState::Zombie(status) = s.tasks.get(&pid)?.state else { return None };
    let mut task = s.tasks.remove(&pid)?;
    drop(s);
    if let Some(k) = task.kstack.take() {
        crate::memory::vmalloc::vfree(k);
    }
    Some((status, task))
}

/// Marks the running task dead. Its address space must already be gone.
pub fn set_current_zombie(status: ExitStatus) {
    with_current(|t| t.state = TaskState::Zombie(status));
}

/// Task 0 waits (halting between interrupts, letting user tasks run) until
/// `done()` holds.
pub fn idle_until(mut done: impl FnMut() -> bool) {
    assert_eq!(current_pid(), 0, "only task 0 idles");
    while !done() {
        if has_runnable() {
            schedule();
        } else {
            cpu::enable_irqs_and_halt();
        }
    }
}
