//! Starting user programs: the first process after boot (`/init`, or the
//! command line's `init=PATH`, or else the built-in demo that runs every
//! program in `/bin`), and the console commands `run` and `ps`.
//!
//! The demo runs the programs one after another, then a few of them at once
//! (preempted by the APIC timer), checks each exit status (0; `SIGSEGV` for
//! programs named `segv*`, which fault on purpose; `SIGKILL` for `oom*`,
//! which the OOM killer must end), and prints a summary
//! line `demo: N passed, M failed`. In `batch` mode the kernel powers off
//! afterwards and prints `init exited with status N`, which the runner turns
//! into its own exit status.

use alloc::string::String;
use alloc::vec::Vec;

use crate::task::process::{self, ExitStatus, SIGKILL, SIGSEGV};
use crate::entry::binfmt_elf::{self as exec};
use crate::fs::ramfs;
use crate::task::sched;
use crate::println;

/// Programs the demo also runs side by side at the end.
const CONCURRENT: &[&str] = &["/bin/hello", "/bin/mmap_test", "/bin/madvise_test"];

/// Runs `argv[0]` with `argv` and waits for it.
pub fn run_program(argv: &[&str]) -> Result<ExitStatus, exec::ExecError> {
    let pid = exec::spawn(argv, &default_env())?;
    Ok(process::wait(pid).unwrap_or(ExitStatus::Signaled(process::SIGKILL)))
}

fn default_env() -> Vec<String> {
    alloc::vec![String::from("PATH=/bin"), String::from("HOME=/"), String::from("TERM=dumb")]
}

/// The exit status a demo program must end with: programs named `segv*`
/// fault on purpose, `oom*` exhaust memory and meet the OOM killer.
fn expected(path: &str) -> ExitStatus {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.starts_with("segv") {
        ExitStatus::Signaled(SIGSEGV)
    } else if name.starts_with("oom") {
        ExitStatus::Signaled(SIGKILL)
    } else {
        ExitStatus::Exited(0)
    }
}

/// Runs every program in `/bin` in turn, then [`CONCURRENT`] at once.
/// Returns the number of failures.
pub fn demo() -> usize {
    let programs = ramfs::list_files("/bin");
    println!("demo: running {} programs from /bin", programs.len());
    let mut failed = Vec::new();
    let mut passed = 0;
    for path in &programs {
        match run_program(&[path.as_str()]) {
            Ok(status) if status == expected(path) => passed += 1,
            Ok(status) => failed.push(alloc::format!("{} ({})", path, status)),
            Err(e) => failed.push(alloc::format!("{} (cannot start: {})", path, e)),
        }
    }
    // Several processes at once: each must still pass.
    let together: Vec<&str> = CONCURRENT.iter().copied().filter(|p| programs.iter().any(|q| q == p)).collect();
    if !together.is_empty() {
        println!("demo: running {} programs at once", together.len());
        let env = default_env();
        let pids: Vec<(usize, Result<sched::Pid, exec::ExecError>)> =
            together.iter().enumerate().map(|(i, p)| (i, exec::spawn(&[p], &env))).collect();
        for (i, pid) in pids {
            let path = together[i];
            match pid.map(process::wait) {
                Ok(Some(status)) if status == expected(path) => passed += 1,
                Ok(status) => failed.push(alloc::format!("{} concurrently ({:?})", path, status)),
                Err(e) => failed.push(alloc::format!("{} concurrently (cannot start: {})", path, e)),
            }
        }
    }
    for f in &failed {
        println!("demo: FAILED {}", f);
    }
    println!("demo: {} passed, {} failed", passed, failed.len());
    failed.len()
}

/// Runs the first process as the command line asks. Returns the status for
/// the `init exited` line, or `None` if no process was run.
pub fn run_init(init: Option<&str>) -> Option<u8> {
    let path = match init {
        Some("none") => return None,
        Some(p) => Some(String::from(p)),
        None if ramfs::read_file("/init").is_ok() => Some(String::from("/init")),
        None => None,
    };
    match path {
        Some(p) => match run_program(&[p.as_str()]) {
            Ok(status) => Some(status.shell_code()),
            Err(e) => {
                log::error!("cannot run init {}: {}", p, e);
                Some(127)
            }
        },
        None if ramfs::list_files("/bin").is_empty() => None,
        None => Some((demo() > 0) as u8),
    }
}

pub const COMMANDS: &[crate::lib::command::Command] = &[
    crate::lib::command::Command { name: "run", args: "PATH [ARGS]", help: "run a program from the initramfs and wait for it", run: cmd_run },
    crate::lib::command::Command { name: "demo", args: "", help: "run every program in /bin (and some at once)", run: |_| { demo(); } },
    crate::lib::command::Command { name: "ls", args: "[DIR]", help: "list the files in an initramfs directory", run: cmd_ls },
];

fn cmd_run(args: &str) {
    let argv: Vec<&str> = args.split_ascii_whitespace().collect();
    if argv.is_empty() {
        println!("usage: run PATH [ARGS]");
        return;
    }
    match run_program(&argv) {
        Ok(status) => println!("{}: {}", argv[0], status),
        Err(e) => println!("run: {}: {}", argv[0], e),
    }
}

fn cmd_ls(args: &str) {
    let dir = if args.is_empty() { "/" } else { args };
    for f in ramfs::list_files(dir) {
        println!("{}", f);
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(process_exit_statuses_and_no_pages_leak),
    crate::ktest!(memalloc_scope_is_per_task),
];

/// Runs two programs (one exits 0, one is killed by SIGSEGV) and checks
/// their statuses and that every page they used came back.
fn process_exit_statuses_and_no_pages_leak() -> crate::lib::ktest::KResult {
    crate::kassert!(ramfs::read_file("/bin/hello").is_ok(), "no /bin/hello in the initramfs");
    // Warm up once: the first process grows kernel caches (slab, vmalloc).
    let _ = run_program(&["/bin/hello"]);
    let before = crate::memory::slab::nr_free_pages_settled();
    let hello = run_program(&["/bin/hello"]);
    crate::kassert!(matches!(hello, Ok(ExitStatus::Exited(0))), "hello: {:?}", hello.map_err(|e| alloc::format!("{}", e)));
    let segv = run_program(&["/bin/segv"]);
    crate::kassert!(matches!(segv, Ok(ExitStatus::Signaled(SIGSEGV))), "segv: {:?}", segv.map_err(|e| alloc::format!("{}", e)));
    crate::kassert_eq!(crate::memory::slab::nr_free_pages_settled(), before);
    let missing = run_program(&["/bin/no-such-program"]);
    crate::kassert!(missing.is_err(), "a missing program started");
    Ok(())
}

/// A NOFS scope opened by task 0 must not follow the scheduler into a user
/// task, and must still be in force when task 0 runs again.
fn memalloc_scope_is_per_task() -> crate::lib::ktest::KResult {
    use mm::sched_mm::{memalloc_nofs_save, ScopeKind};
    let scope = &crate::memory::page_alloc::MEMALLOC_SCOPE;
    let guard = memalloc_nofs_save(scope);
    let status = run_program(&["/bin/hello"]);
    let in_user_task = sched::LAST_USER_MEMALLOC.load(core::sync::atomic::Ordering::Relaxed);
    let back_in_task0 = scope.depth(ScopeKind::NoFs);
    drop(guard);
    crate::kassert!(matches!(status, Ok(ExitStatus::Exited(0))), "hello did not run");
    crate::kassert_eq!(in_user_task, 0);
    crate::kassert_eq!(back_in_task0, 1);
    Ok(())
}
