//! Process life cycle: exit (Linux `do_exit`), fatal signals from faults
//! (`force_sig`), the out-of-memory killer (`oom_kill_process`), and waiting
//! for a process to finish.
//!
//! There is no signal delivery to handlers: a fatal signal ends the process
//! with status 128 + signal, as a shell reports it. Every exit prints one
//! line with the pid, the status, the peak RSS and the `VmPTE` the address
//! space had when it was torn down.

use core::fmt;

use crate::task::sched::{self, Pid};

pub use crate::arch::x86_64::signal::{SIGBUS, SIGFPE, SIGILL, SIGKILL, SIGSEGV, SIGTRAP};

/// How a process ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitStatus {
    /// `exit(n)`: the low 8 bits of n.
    Exited(u8),
    /// Killed by a signal.
    Signaled(u8),
}

impl ExitStatus {
    /// The status a shell shows (`$?`): n, or 128 + signal.
    pub fn shell_code(self) -> u8 {
        match self {
            ExitStatus::Exited(n) => n,
            ExitStatus::Signaled(s) => 128u8.saturating_add(s),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(n) => write!(f, "exited with status {}", n),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {} ({})", s, signal_name(*s)),
        }
    }
}

pub fn signal_name(sig: u8) -> &'static str {
    match sig {
        SIGILL => "SIGILL",
        SIGTRAP => "SIGTRAP",
        SIGBUS => "SIGBUS",
        SIGFPE => "SIGFPE",
        SIGKILL => "SIGKILL",
        SIGSEGV => "SIGSEGV",
        _ => "?",
    }
}

/// Ends the running process: tears down its address space (every page and
/// page-table page back to the allocator after the TLB flush), closes its
/// files, prints the exit line and switches away for good.
pub fn do_exit(status: ExitStatus) -> ! {
    let pid = sched::current_pid();
    assert!(pid != 0, "do_exit in task 0");
    if let Some(mm) = crate::memory::mm_struct::deactivate() {
        let (peak_kb, pte_kb) = (mm.hiwater_rss_kb(), mm.vm_pte_kb());
        sched::with_current(|t| {
            t.peak_rss_kb = peak_kb;
            t.exit_vm_pte_kb = pte_kb;
        });
        mm.destroy();
    }
    let line = sched::with_current(|t| {
        t.files.close_all();
        alloc::format!(
            "exit: pid {} ({}) {}, peak RSS {} kB, VmPTE {} kB",
            t.pid, t.name, status, t.peak_rss_kb, t.exit_vm_pte_kb
        )
    });
    if let Some(line) = line {
        log::info!("{}", line);
    }
    sched::set_current_zombie(status);
    sched::schedule();
    unreachable!("a zombie task was scheduled again");
}

/// Kills the running process with `sig` after a fault it caused in user
/// mode, logging what happened where.
pub fn force_sig(sig: u8, what: &str, addr: u64, rip: u64) -> ! {
    let pid = sched::current_pid();
    let name = sched::with_current(|t| t.name.clone()).unwrap_or_default();
    log::warn!(
        "pid {} ({}): {} at address {:#x}, rip {:#x}: {}",
        pid, name, signal_name(sig), addr, rip, what
    );
    do_exit(ExitStatus::Signaled(sig))
}

/// A page fault could not get memory: kill the process with the largest RSS
/// (Linux `out_of_memory` → `oom_kill_process`), logging the choice.
/// Returns whether the fault should be retried (another process is dying).
/// If the faulting process is the victim: from user mode it exits at once;
/// from a user copy in a system call it is marked (`false`: the copy fails,
/// and the task exits at its return to user mode, freeing the syscall's
/// buffers on the way).
pub fn out_of_memory(from_user: bool) -> bool {
    let current = sched::current_pid();
    let current_rss = crate::memory::mm_struct::with_current(|mm| mm.rss_kb()).unwrap_or(0);
    let mut victim: Option<(Pid, u64, alloc::string::String)> = None;
    let mut pending = None;
    sched::for_each_task(|t| {
        if matches!(t.state, sched::TaskState::Zombie(_)) {
            return;
        }
        if t.kill_pending.is_some() {
            pending = Some(t.pid);
            return;
        }
        let rss = if t.pid == current { current_rss } else { t.mm.as_ref().map_or(0, |m| m.rss_kb()) };
        if victim.as_ref().is_none_or(|v| rss > v.1) {
            victim = Some((t.pid, rss, t.name.clone()));
        }
    });
    let pid = match (pending, victim) {
        // A victim already chosen frees its memory when it next runs.
        (Some(p), _) => p,
        (None, Some((pid, rss, name))) => {
            log::error!(
                "Out of memory: killed process {} ({}) total-rss:{}kB; free pages {}",
                pid, name, rss, crate::memory::page_alloc::page_alloc().stats().free()
            );
            sched::send_kill(pid, SIGKILL);
            pid
        }
        (None, None) => return false,
    };
    if pid != current {
        sched::schedule();
        return true;
    }
    if from_user {
        let _ = sched::take_kill();
        do_exit(ExitStatus::Signaled(SIGKILL));
    }
    false
}

/// Task 0 waits for `pid` to exit, reaps it and returns its status.
pub fn wait(pid: Pid) -> Option<ExitStatus> {
    let mut status = None;
    sched::idle_until(|| {
        status = sched::reap(pid).map(|(s, _)| s);
        status.is_some() || sched::with_task(pid, |_| ()).is_none()
    });
    status
}
