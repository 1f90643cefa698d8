//! Boots the real kernel images in QEMU and checks what the serial console
//! shows and how the run ends. Each test is one QEMU run (a few seconds
//! under TCG).

use std::time::Duration;

use boot::{Options, Outcome, Run, Step};

fn boot(options: Options, script: Option<Vec<Step>>) -> Run {
    let run = boot::run(&options, script, boot::Echo::Quiet).expect("QEMU starts (run `make setup`)");
    eprintln!("---- serial output ({:?}, {:.1} s) ----\n{}", run.outcome, run.elapsed.as_secs_f64(), run.output);
    run
}

fn ktest(uefi: bool, filter: Option<&str>) -> Run {
    boot(Options { uefi, ktest: Some(filter.map(String::from)), ..Options::default() }, None)
}

fn selftest(what: &str, timeout_secs: u64) -> Run {
    let options = Options {
        batch: true,
        cmdline: vec![format!("selftest={}", what)],
        timeout: Some(Duration::from_secs(timeout_secs)),
        ..Options::default()
    };
    boot(options, None)
}

/// Parses the last `[name: ]N passed, M failed` line.
fn summary(output: &str) -> Option<(usize, usize)> {
    let line = output.lines().rev().find(|l| l.ends_with(" failed") && l.contains(" passed, "))?;
    let (passed, failed) = line.split_once(" passed, ")?;
    // The count is the last word before " passed" ("prog: 7 passed, ...").
    let passed = passed.rsplit(' ').next()?;
    Some((passed.parse().ok()?, failed.trim_end_matches(" failed").parse().ok()?))
}

/// Interactive boot straight to the console (`init=none`: no demo first).
fn console_options() -> Options {
    Options { timeout: Some(Duration::from_secs(120)), cmdline: vec!["init=none".into()], ..Options::default() }
}

fn step(expect: &str, send: &str) -> Step {
    Step { expect: expect.into(), send: send.into() }
}

#[test]
fn ktests_pass_under_bios() {
    let run = ktest(false, None);
    let (passed, failed) = summary(&run.output).expect("summary line");
    assert_eq!(run.outcome, Outcome::Success);
    assert!(passed > 0 && failed == 0, "{} passed, {} failed", passed, failed);
}

#[test]
fn ktests_pass_under_uefi() {
    let run = ktest(true, None);
    let (passed, failed) = summary(&run.output).expect("summary line");
    assert_eq!(run.outcome, Outcome::Success);
    assert!(passed > 0 && failed == 0, "{} passed, {} failed", passed, failed);
    assert!(run.output.contains("UEFI"), "UEFI memory types expected in the memory map");
}

#[test]
fn ktest_filter_selects_by_name() {
    let run = ktest(false, Some("heap::"));
    assert_eq!(run.outcome, Outcome::Success);
    assert_eq!(summary(&run.output), Some((3, 0)));
    assert!(run.output.contains("test heap::heap_box_vec_and_string ... ok"));
    assert!(!run.output.contains("test memmap::"), "filter let other tests run");
}

#[test]
fn ktest_filter_matching_nothing_fails() {
    let run = ktest(false, Some("no_such_test_anywhere"));
    assert_eq!(run.outcome, Outcome::Failure);
    assert!(run.output.contains("no test matches"));
}

#[test]
fn boot_prints_memory_map_and_powers_off_in_batch_mode() {
    let run = boot(Options { batch: true, cmdline: vec!["init=none".into()], ..Options::default() }, None);
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("bootloader-provided physical RAM map:"));
    assert!(run.output.contains("] usable"));
    assert!(run.output.contains("protections: NX on, WP on"));
    assert!(run.output.contains("MemTotal:"));
}

#[test]
fn panic_is_reported_as_failure_with_its_message() {
    let run = selftest("panic", 120);
    assert_eq!(run.outcome, Outcome::Failure);
    assert!(run.output.contains("Kernel panic - not syncing: selftest: deliberate panic at kernel/src/main.rs"));
}

#[test]
fn kernel_page_fault_prints_an_oops_and_fails() {
    let run = selftest("pagefault", 120);
    assert_eq!(run.outcome, Outcome::Failure);
    assert!(run.output.contains("Oops: page fault (#PF) (vector 14) in kernel mode"));
    assert!(run.output.contains("fault address (CR2): 0x00000000deadb000"));
    assert!(run.output.contains("supervisor read of a not-present page"));
    assert!(run.output.contains("RAX: "));
}

#[test]
fn hang_is_reported_as_timeout_with_the_last_lines() {
    // Generous: under load, firmware + bootloader alone can take many seconds
    // under TCG (45 s once passed without a single line while other QEMU runs
    // and builds shared the two cores); the run idles in `hlt` meanwhile.
    let run = selftest("hang", 90);
    assert_eq!(run.outcome, Outcome::Timeout);
    assert!(run.tail(boot::TAIL_LINES).iter().any(|l| l.contains("deliberately triggering Hang")));
}

#[test]
fn console_answers_meminfo_and_rejects_unknown_commands() {
    let script = vec![
        step("mm> ", "meminfo\n"),
        step("mm> ", "frobnicate\n"),
        step("mm> ", "memmap\n"),
        step("mm> ", "poweroff\n"),
    ];
    let run = boot(console_options(), Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    let after_meminfo = run.output.split("mm> meminfo").nth(1).expect("command echoed");
    let first_line = after_meminfo.lines().nth(1).unwrap_or("");
    assert!(first_line.starts_with("MemTotal:") && first_line.ends_with(" kB"), "got {:?}", first_line);
    assert!(run.output.contains("mm: unknown command 'frobnicate' (try 'help')"));
    assert!(run.output.contains("Power down."));
}

#[test]
fn console_shows_allocator_state_in_linux_formats() {
    let script = vec![
        step("mm> ", "buddyinfo\n"),
        step("mm> ", "pagetypeinfo\n"),
        step("mm> ", "pageblocks\n"),
        step("mm> ", "vmstat\n"),
        step("mm> ", "sysctl vm.defrag_mode=1\n"),
        step("mm> ", "sysctl\n"),
        step("mm> ", "ptstat\n"),
        step("mm> ", "ptdump 0xffffffff80000000\n"),
        step("mm> ", "ptdump 0x8000000000000\n"),
        step("mm> ", "vmallocinfo\n"),
        step("mm> ", "vmalloc-bench 3\n"),
        step("mm> ", "vmalloc-bench 99999999999999\n"),
        step("mm> ", "kmalloc-bench 0\n"),
        step("mm> ", "slabinfo\n"),
        step("mm> ", "drop_caches 3\n"),
        step("mm> ", "drop_caches 6\n"),
        step("mm> ", "drop_caches 9\n"),
        step("mm> ", "poweroff\n"),
    ];
    let run = boot(console_options(), Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("Node 0, zone    DMA32"), "buddyinfo line missing");
    assert!(run.output.contains("Free pages count per migrate type at order"));
    assert!(run.output.contains("Number of blocks type"));
    assert!(run.output.contains("pgalloc"));
    assert!(run.output.contains("vm.defrag_mode = 1"));
    assert!(run.output.contains("vm.pt_reclaim = 1"));
    assert!(run.output.contains("transparent_hugepage = always [madvise] never"));
    assert!(run.output.contains("PageTables:"));
    assert!(run.output.contains("PML4[511] = "), "ptdump of the kernel image missing");
    assert!(run.output.contains("ptdump: need a canonical virtual address"), "non-canonical address accepted");
    assert!(run.output.contains("VmallocUsed:"), "vmallocinfo summary missing");
    assert!(run.output.contains("vmalloc+vfree  1024 KiB: median"), "vmalloc-bench output missing");
    // A count beyond the bound is refused (it used to size a vector: a kernel panic).
    assert!(run.output.contains("vmalloc-bench: ROUNDS must be 1..=10000"));
    assert!(run.output.contains("kmalloc-bench: ROUNDS must be 1..=10000"));
    assert!(run.output.contains("slabinfo - version: 2.1"), "slabinfo header missing");
    // drop_caches logs who asked and the value, unless bit 4 is set.
    assert_eq!(run.output.matches("console (1): drop_caches: 3").count(), 1);
    assert_eq!(run.output.matches(": drop_caches: 6").count(), 0, "bit 4 must silence the log line");
    assert!(run.output.contains("drop_caches: invalid value 9"));
}

#[test]
fn fragmentation_command_prints_the_same_tables_as_the_host() {
    use mm::fragtest::{self, FragConfig};
    let script = vec![
        step("mm> ", "fragmentation 2\n"),
        step("mm> ", "fragmentation 0\n"),
        step("mm> ", "fragmentation 2 half\n"),
        step("mm> ", "poweroff\n"),
    ];
    let run = boot(console_options(), Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    let output = run.output.replace("\r\n", "\n");
    // The same library on the host, same configuration: the kernel must print the
    // very same tables (the workload is deterministic).
    let cfg = FragConfig::quarter(2);
    let results: Vec<_> = fragtest::configurations()
        .into_iter()
        .map(|(name, config)| fragtest::run(name, &cfg, config, |_| {}).expect("host run"))
        .collect();
    let mut expected = String::new();
    fragtest::report(&results, cfg.thp_burst, &mut expected).unwrap();
    assert!(output.contains(expected.trim()), "kernel tables differ from the host's:\n{expected}");
    assert!(output.contains("simulation on a private allocator (32 MiB of page metadata only"));
    assert!(output.contains("grouping + defrag mode: round 1 2\n"), "progress per round missing");
    assert!(output.contains("fragmentation: ROUNDS must be 1..=50"));
    assert!(output.contains("fragmentation: usage: fragmentation [ROUNDS] [full]"));
}

#[test]
fn vmalloc_guard_page_access_is_reported_clearly() {
    let run = selftest("vmalloc-guard", 120);
    assert_eq!(run.outcome, Outcome::Failure);
    assert!(run.output.contains("BUG: access to the vmalloc guard page"), "no guard-page report");
    assert!(run.output.contains("overflow off the end of area"));
    assert!(run.output.contains("Oops: page fault (#PF)"));
}

/// A user program from the built-in initramfs (`/bin/NAME`).
fn builtin_program(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(boot::INITRAMFS).expect("built-in initramfs");
    let archive = exec::cpio::Archive::parse(&bytes).expect("built-in initramfs is a newc archive");
    archive.get(&format!("bin/{}", name)).unwrap_or_else(|| panic!("no /bin/{} in the initramfs", name)).data.to_vec()
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qemu-tests-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_init(options: Options) -> Run {
    boot(Options { batch: true, timeout: Some(Duration::from_secs(180)), ..options }, None)
}

#[test]
fn init_from_the_builtin_initramfs_exits_0() {
    let run = run_init(Options { init: Some("/bin/hello".into()), ..Options::default() });
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("hello from ring 3"));
    assert_eq!(boot::init_exit_status(&run.output), Some(0));
    assert_eq!(run.exit_status(), 0);
}

#[test]
fn initrd_dir_is_the_root_and_a_killed_init_sets_the_runner_status() {
    use std::os::unix::fs::PermissionsExt;
    // Only in this directory: the built-in segv program under another name.
    let root = scratch_dir("initrd");
    std::fs::create_dir(root.join("sbin")).unwrap();
    std::fs::write(root.join("sbin/crash"), builtin_program("segv")).unwrap();
    std::fs::set_permissions(root.join("sbin/crash"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = run_init(Options { initrd: Some(root.clone()), init: Some("/sbin/crash".into()), ..Options::default() });
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(run.outcome, Outcome::Success);
    // SIGSEGV (11) kills it: 128 + 11.
    assert_eq!(boot::init_exit_status(&run.output), Some(139));
    assert_eq!(run.exit_status(), 139);
}

#[test]
fn initrd_file_with_an_init_runs_it_by_default() {
    let dir = scratch_dir("initrd-file");
    let mut cpio = exec::cpio::Writer::new();
    cpio.file("init", 0o755, &builtin_program("hello")).unwrap();
    cpio.file("etc/motd", 0o644, b"from --initrd-file\n").unwrap();
    let file = dir.join("initramfs.cpio");
    std::fs::write(&file, cpio.finish()).unwrap();
    let run = run_init(Options { initrd_file: Some(file), ..Options::default() });
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("hello from ring 3"), "/init did not run");
    assert_eq!(run.exit_status(), 0);
}

/// The PASS/FAIL/SKIP lines and summaries a test program prints, in order
/// (INFO lines and kernel log lines vary and are left out).
fn verdict_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            l.starts_with("PASS ") || l.starts_with("FAIL ") || l.starts_with("SKIP ") || summary(l).is_some()
        })
        .map(String::from)
        .collect()
}

#[test]
fn demo_runs_every_user_program_sequentially_and_at_once() {
    let run = boot(Options { batch: true, timeout: Some(Duration::from_secs(600)), ..Options::default() }, None);
    assert_eq!(run.outcome, Outcome::Success);
    let fails: Vec<&str> = run.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(fails.is_empty(), "failed checks: {:#?}", fails);
    assert!(run.output.contains("demo: running 3 programs at once"));
    let demo = run.output.lines().find(|l| l.starts_with("demo: ") && l.ends_with(" failed")).expect("demo summary");
    let (passed, failed) = summary(demo).expect("demo summary counts");
    assert_eq!(failed, 0, "{}", demo);
    assert!(passed >= 16, "only {} programs passed", passed);
    // Static PIE binaries (ET_DYN, self-relocating musl) start like ET_EXEC ones.
    assert!(run.output.contains("(mmap_c_pie) exited with status 0"));
    // Preemption: madvise_test, started after mmap_test, finishes first
    // although mmap_test alone takes several times longer.
    let at_once = run.output.split("demo: running 3 programs at once").nth(1).expect("concurrent part");
    let first = |name: &str| at_once.find(&format!("({}) exited", name)).expect("exit line");
    assert!(first("madvise_test") < first("mmap_test"), "no interleaving: programs ran one after another");
    // The faulting program is killed with SIGSEGV, the memory hog by the OOM killer.
    assert!(run.output.contains("(segv) killed by signal 11 (SIGSEGV)"));
    assert!(run.output.contains("Out of memory: killed process"));
    assert!(run.output.contains("(oom) killed by signal 9 (SIGKILL)"));
    // A process that writes /proc/sys/vm/drop_caches is named in the log line.
    assert!(
        run.output.lines().any(|l| l.contains("proc_test (") && l.ends_with("): drop_caches: 2")),
        "no drop_caches line naming proc_test"
    );
    // MADV_FREE pages went first, before anything was killed.
    assert!(run.output.contains("PASS lazyfree_dropped_under_pressure"));
    assert!(run.output.contains("PASS lazyfree_rewritten_page_kept"));
    // Every program printed its exit line with peak RSS and VmPTE.
    assert!(run.output.lines().filter(|l| l.contains("exit: pid ") && l.contains(" kB, VmPTE ")).count() >= 16);
    assert_eq!(boot::init_exit_status(&run.output), Some(0));
    assert_eq!(run.exit_status(), 0);
}

#[test]
fn fuzzer_leaves_the_kernel_and_its_console_working() {
    let script = vec![
        step("mm> ", "run /bin/fuzz 7 30000\n"),
        step("/bin/fuzz: exited with status", "meminfo\n"),
        step("MemFree:", "run /bin/hello\n"),
        step("/bin/hello: exited with status 0", "poweroff\n"),
    ];
    let run = boot(Options { timeout: Some(Duration::from_secs(300)), ..console_options() }, Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("fuzz: 10 passed, 0 failed"), "fuzzer checks failed");
    assert!(run.output.contains("calls 30000"));
    assert!(!run.output.contains("Oops"));
}

/// Linux is the oracle: the same static binaries run on this host and in the
/// kernel must print the same verdict lines. A program that does not pass on
/// the host (an older host kernel, say) cannot serve as a reference and is
/// skipped with a note; at least one program must be compared.
#[test]
fn user_programs_print_the_same_verdicts_as_on_linux() {
    use std::os::unix::fs::PermissionsExt;
    const PROGRAMS: &[&str] =
        &["hello", "mmap_test", "madvise_test", "brk_prctl_test", "mmap_c", "madvise_c", "mmap_c_pie", "madvise_c_pie"];
    let dir = scratch_dir("oracle");
    let mut reference = Vec::new();
    for name in PROGRAMS {
        let bytes = std::fs::read(boot::INITRAMFS).expect("built-in initramfs");
        let archive = exec::cpio::Archive::parse(&bytes).expect("newc archive");
        let Some(entry) = archive.get(&format!("bin/{}", name)) else {
            eprintln!("note: /bin/{} is not in the initramfs (musl-gcc missing?)", name);
            continue;
        };
        let path = dir.join(name);
        std::fs::write(&path, entry.data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&path).env_clear().output().expect("run on the host");
        let lines = verdict_lines(&String::from_utf8_lossy(&out.stdout));
        if !out.status.success() || lines.iter().any(|l| l.starts_with("FAIL")) {
            eprintln!("note: {} does not pass on this host; not used as a reference", name);
            continue;
        }
        reference.push((*name, lines));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!reference.is_empty(), "no program passes on the host: no oracle");
    let mut script: Vec<Step> = reference.iter().map(|(n, _)| step("mm> ", &format!("run /bin/{}\n", n))).collect();
    script.push(step("mm> ", "poweroff\n"));
    let run = boot(Options { timeout: Some(Duration::from_secs(300)), ..console_options() }, Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    // Split the kernel's output at each `run` command.
    for (name, want) in &reference {
        let marker = format!("mm> run /bin/{}", name);
        let part = run.output.split(&marker).nth(1).unwrap_or_else(|| panic!("{} did not run", name));
        let part = part.split("mm> ").next().unwrap_or("");
        assert_eq!(&verdict_lines(part), want, "{}: kernel and Linux disagree", name);
    }
}
