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

/// The number of `ktest!(` registrations in the kernel source
/// (`kernel/src/**/*.rs`; comment lines, such as the macro's own docs, do not
/// count). Every one must run: a test registered in a module whose `KTESTS`
/// is missing from `SUITES` would otherwise be dropped silently.
fn registered_ktests() -> usize {
    count_ktest_registrations(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/src"))
}

fn count_ktest_registrations(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path, count: &mut usize) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {}", dir.display(), e)).collect();
        entries.sort_by_key(|e| e.as_ref().map(|e| e.path()).ok());
        for entry in entries {
            let path = entry.expect("readable directory").path();
            if path.is_dir() {
                walk(&path, count);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {}", path.display(), e));
                *count += text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| l.matches("ktest!(").count())
                    .sum::<usize>();
            }
        }
    }
    let mut count = 0;
    walk(dir, &mut count);
    count
}

#[test]
fn ktest_registrations_are_counted_in_every_kernel_source_file() {
    let root = scratch_dir("ktest-count");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("top.rs"), "pub const KTESTS: &[KTest] = &[crate::ktest!(one), crate::ktest!(two)];\n").unwrap();
    std::fs::write(root.join("a/b/deep.rs"), "/// `crate::ktest!(doc_example)`\n    // ktest!(commented_out)\n    crate::ktest!(three),\n").unwrap();
    std::fs::write(root.join("a/notes.txt"), "ktest!(not_rust)").unwrap();
    assert_eq!(count_ktest_registrations(&root), 3);
    std::fs::remove_dir_all(&root).unwrap();
    assert!(registered_ktests() > 0);
    assert_eq!(ktests_running("running 62 tests\ntest a ... ok\n"), Some(62));
    assert_eq!(ktests_running("running 3 tests (filter \"heap::\")"), Some(3));
}

/// The N of the runner's `running N tests` line.
fn ktests_running(output: &str) -> Option<usize> {
    let line = output.lines().find(|l| l.starts_with("running ") && l.contains(" tests"))?;
    line["running ".len()..].split(' ').next()?.parse().ok()
}

/// A full ktest run: every registered test ran and passed.
fn assert_every_ktest_passed(run: &Run) {
    let registered = registered_ktests();
    let (passed, failed) = summary(&run.output).expect("summary line");
    assert_eq!(run.outcome, Outcome::Success);
    assert_eq!(failed, 0, "{} passed, {} failed", passed, failed);
    assert_eq!(ktests_running(&run.output), Some(registered), "registered ktest!s that the runner does not know");
    assert_eq!(passed, registered, "{} ktest!( registrations in kernel/src, {} passed", registered, passed);
    assert_eq!(run.output.lines().filter(|l| l.starts_with("test ") && l.ends_with(" ... ok")).count(), registered);
}

#[test]
fn ktests_pass_under_bios() {
    let run = ktest(false, None);
    assert_every_ktest_passed(&run);
}

#[test]
fn ktests_pass_under_uefi() {
    let run = ktest(true, None);
    assert_every_ktest_passed(&run);
    assert!(run.output.contains("UEFI"), "UEFI memory types expected in the memory map");
}

#[test]
fn ktest_filter_selects_by_name() {
    let run = ktest(false, Some("heap::"));
    assert_eq!(run.outcome, Outcome::Success);
    assert_eq!(summary(&run.output), Some((3, 0)));
    assert!(run.output.contains("test memory::heap::heap_box_vec_and_string ... ok"));
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

/// Input sent before the kernel has booted (piped into `make run` during the
/// build) reaches the prompt whole: serial init must not reset the UART's
/// receive buffer, where QEMU parks the first byte. The machine has two CPUs,
/// and the kernel brings up both. (BIOS only: under UEFI the firmware's
/// console reads what is typed while it runs.)
#[test]
fn input_typed_before_boot_survives_and_extra_cpus_are_reported() {
    let script = vec![step("", "uptime\npoweroff\n")];
    let run = boot(Options { smp: 2, ..console_options() }, Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("mm> uptime\nup "), "the first command arrived damaged");
    assert!(run.output.contains("Power down."));
    assert!(run.output.contains("smp: brought up 2 CPUs (APIC ids 0,1); the APs are parked"));
}

/// The application processors come up (INIT-SIPI-SIPI through the real-mode
/// trampoline) and park, under both firmwares; the in-kernel test checks that
/// every enabled MADT processor is online.
#[test]
fn application_processors_are_brought_up_and_parked_bios_and_uefi() {
    for uefi in [false, true] {
        let options = Options { uefi, smp: 2, ktest: Some(Some("smpboot".into())), ..Options::default() };
        let run = boot(options, None);
        assert_eq!(run.outcome, Outcome::Success, "uefi={}: {}", uefi, run.output);
        assert!(run.output.contains("smp: brought up 2 CPUs (APIC ids 0,1); the APs are parked"), "uefi={}", uefi);
        assert!(run.output.contains("online_cpus_match_the_madt ... ok"), "uefi={}", uefi);
        assert_eq!(summary(&run.output), Some((1, 0)), "uefi={}", uefi);
    }
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

/// `--profile`: the PIT's NMI samples the whole init run (exact under
/// `--icount`), the kernel dumps at power-off, and the runner names the
/// sampled functions from the kernel ELF and draws the flame graph.
#[test]
fn profile_samples_the_kernel_and_the_runner_names_its_functions() {
    let dir = scratch_dir("profile");
    let svg = dir.join("hello.svg");
    let run = run_init(Options {
        init: Some("/bin/hello".into()),
        icount: true,
        profile: Some(20_000),
        profile_out: Some(svg.clone()),
        ..Options::default()
    });
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("profile: sampling at 20223 Hz"), "profiler not started at PIT_HZ / 59");
    let report = boot::profile::report(&run.output, std::path::Path::new(boot::KERNEL_ELF), &svg, "hello").unwrap();
    eprint!("{}", report.top_text(boot::profile::TOP_FUNCTIONS));
    let s = report.summary;
    assert!(s.samples > 0 && s.kernel > 0, "{:?}", s);
    assert_eq!(s.dropped, 0);
    let named = report.top.iter().take(boot::profile::TOP_FUNCTIONS).filter(|(f, _)| ["kernel::", "mm::", "alloc::"].iter().any(|p| f.contains(p)));
    assert!(named.count() > 0, "no kernel function in the top list: {:?}", report.top);
    assert!(report.top.iter().all(|(f, _)| !f.starts_with("[unknown")), "unsymbolised samples: {:?}", report.top);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    assert!(std::fs::read_to_string(boot::profile::folded_path(&svg)).unwrap().lines().count() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
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

/// mmbench (user/c/mmbench.c) runs to its end on this kernel with every
/// operation a number or `unsupported`: a quick run (at most 8 operations
/// per round). The benchmark itself is `boot --mmbench` (docs/benchmarks.md);
/// no test asserts on its numbers.
#[test]
fn mmbench_runs_every_operation_to_done() {
    let script = vec![step("mm> ", "run /bin/mmbench 8\n"), step("/bin/mmbench: exited with status", "poweroff\n")];
    // The program itself takes about a second of guest time; the timeout
    // leaves room for the boot on a loaded machine.
    let run = boot(Options { timeout: Some(Duration::from_secs(300)), ..console_options() }, Some(script));
    assert_eq!(run.outcome, Outcome::Success);
    let report = boot::mmbench::parse(&run.output);
    assert!(report.done, "no 'mmbench: done'");
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../user/c/mmbench.c")).unwrap();
    let table = source.split("static const struct op ops[] = {").nth(1).expect("the ops table").split("};").next().unwrap();
    let names: Vec<&str> = table.lines().filter_map(|l| l.split('"').nth(1)).collect();
    let printed: Vec<&str> = report.ops.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(printed, names, "one line per operation, in order");
    for (name, cost) in &report.ops {
        let ok = matches!(cost, boot::mmbench::Cost::Ns(_)) || *cost == boot::mmbench::Cost::Other("unsupported".into());
        assert!(ok, "mmbench: {}: {}", name, cost);
    }
    assert!(run.output.contains("/bin/mmbench: exited with status 0"));
}

// ---- Linux itself as the oracle --------------------------------------------------------------
//
// The Linux peer (`boot --linux`, fetched by `make setup`) runs the very same binaries from the same
// initramfs in the same QEMU; its verdict lines are the reference. Deliberate differences are
// listed, with their reasons, in tests/linux-differences.txt.

/// Arguments for programs whose default run is long; the same on both kernels.
const ORACLE_ARGS: &[(&str, &str)] =
    &[("fuzz", "7 5000"), ("ptreclaim", "2048"), ("mmbench", "8"), ("mmbench_pie", "8")];
/// Run last, in this order: they fault or fill the memory.
const ORACLE_LAST: &[&str] = &["segv", "oom"];
const DIFFERENCES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/linux-differences.txt");

/// The programs of `/bin` in the built-in initramfs.
fn initramfs_programs() -> Vec<String> {
    let bytes = std::fs::read(boot::INITRAMFS).expect("built-in initramfs");
    let archive = exec::cpio::Archive::parse(&bytes).expect("built-in initramfs is a newc archive");
    let mut names: Vec<String> = archive
        .entries()
        .filter(|e| e.is_file())
        .filter_map(|e| e.name.strip_prefix("bin/").map(String::from))
        .collect();
    names.sort();
    names
}

/// The programs the source defines: every `[[bin]]` of user/Cargo.toml and
/// every user/c/NAME.c as NAME and NAME_pie.
fn source_programs() -> Vec<String> {
    let user = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../user");
    let manifest = std::fs::read_to_string(user.join("Cargo.toml")).expect("user/Cargo.toml");
    let mut names: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect();
    for entry in std::fs::read_dir(user.join("c")).expect("user/c") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "c") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            names.push(format!("{}_pie", stem));
            names.push(stem);
        }
    }
    names.sort();
    names
}

/// The oracle's commands, `PATH [ARGS]`: every program of the initramfs,
/// ORACLE_LAST at the end.
fn oracle_commands(programs: &[String]) -> Vec<String> {
    let mut ordered: Vec<&String> = programs.iter().filter(|p| !ORACLE_LAST.contains(&p.as_str())).collect();
    ordered.extend(ORACLE_LAST.iter().filter_map(|last| programs.iter().find(|p| p == last)));
    ordered
        .into_iter()
        .map(|p| match ORACLE_ARGS.iter().find(|(name, _)| name == p) {
            Some((_, args)) => format!("/bin/{} {}", p, args),
            None => format!("/bin/{}", p),
        })
        .collect()
}

/// One entry of tests/linux-differences.txt: `PROGRAM: CHECK-PREFIX  # reason`.
#[derive(Debug)]
struct Difference {
    program: String,
    /// Matches the verdict lines whose check name starts with it.
    check_prefix: String,
    reason: String,
}

fn parse_differences(text: &str) -> Result<Vec<Difference>, String> {
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("linux-differences.txt:{}: {}: {:?}", i + 1, why, line);
        let (entry, reason) = line.split_once('#').ok_or_else(|| bad("no '# reason'"))?;
        let (program, check) = entry.split_once(':').ok_or_else(|| bad("no 'PROGRAM:'"))?;
        let (program, check, reason) = (program.trim(), check.trim(), reason.trim());
        if program.is_empty() || check.is_empty() || check.contains(char::is_whitespace) || reason.is_empty() {
            return Err(bad("want 'PROGRAM: CHECK-PREFIX  # reason'"));
        }
        list.push(Difference { program: program.into(), check_prefix: check.into(), reason: reason.into() });
    }
    Ok(list)
}

fn linux_differences() -> Vec<Difference> {
    let text = std::fs::read_to_string(DIFFERENCES_FILE).expect("tests/linux-differences.txt");
    parse_differences(&text).unwrap_or_else(|e| panic!("{}", e))
}

/// What one program printed on one kernel.
#[derive(Clone, Debug, Default, PartialEq)]
struct ProgramRun {
    /// PASS/FAIL/SKIP lines, in order.
    verdicts: Vec<String>,
    /// `prog: N passed, M failed`, if printed.
    summary: Option<String>,
    /// `exited with status N` / `killed by signal S (NAME)`.
    status: Option<String>,
}

/// The check name of a verdict line (`PASS name`, `FAIL name (details)`).
fn check_name(verdict: &str) -> &str {
    verdict.split(' ').nth(1).unwrap_or("")
}

/// The part of `output` from the line `start` up to the next line starting
/// with one of `ends`, parsed for the program at `path`.
fn program_run(output: &str, start: &str, ends: &[&str], path: &str) -> Option<ProgramRun> {
    let mut lines = output.lines().map(|l| l.trim_end_matches('\r')).skip_while(|l| *l != start);
    lines.next()?;
    let mut run = ProgramRun::default();
    let status_prefix = format!("{}: ", path);
    for line in lines.take_while(|l| !ends.iter().any(|e| l.starts_with(e))) {
        if line.starts_with("PASS ") || line.starts_with("FAIL ") || line.starts_with("SKIP ") {
            run.verdicts.push(line.into());
        } else if summary(line).is_some() {
            run.summary = Some(line.into());
        } else if let Some(status) = line.strip_prefix(&status_prefix) {
            run.status = Some(status.into());
        }
    }
    Some(run)
}

/// Compares one program's runs on our kernel and on Linux, leaving out the
/// verdict lines `listed` names (which must still differ). Returns the problems.
fn compare_with_linux(program: &str, ours: &ProgramRun, linux: &ProgramRun, listed: &[&Difference]) -> Vec<String> {
    let mut problems = Vec::new();
    let is_listed = |v: &String| listed.iter().any(|d| check_name(v).starts_with(&d.check_prefix));
    let unlisted = |run: &ProgramRun| -> Vec<String> { run.verdicts.iter().filter(|v| !is_listed(v)).cloned().collect() };
    let (ours_rest, linux_rest) = (unlisted(ours), unlisted(linux));
    if ours_rest != linux_rest {
        let only = |a: &[String], b: &[String]| a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>();
        problems.push(format!(
            "{}: verdicts differ (not listed in linux-differences.txt): only here {:?}, only on Linux {:?}",
            program,
            only(&ours_rest, &linux_rest),
            only(&linux_rest, &ours_rest)
        ));
    }
    for (kernel, rest) in [("here", &ours_rest), ("on Linux", &linux_rest)] {
        for v in rest.iter().filter(|v| !v.starts_with("PASS ")) {
            problems.push(format!("{}: {} {} (not listed in linux-differences.txt)", program, v, kernel));
        }
    }
    for d in listed {
        let matching = |run: &ProgramRun| -> Vec<String> {
            run.verdicts.iter().filter(|v| check_name(v).starts_with(&d.check_prefix)).cloned().collect()
        };
        let (here, there) = (matching(ours), matching(linux));
        if here.is_empty() && there.is_empty() {
            problems.push(format!("{}: listed difference '{}' matches no verdict line", program, d.check_prefix));
        } else if here == there {
            problems.push(format!(
                "{}: listed difference '{}' no longer occurs (both print {:?}): remove it from linux-differences.txt",
                program, d.check_prefix, here
            ));
        }
    }
    // Each summary must count its own PASS and FAIL lines; the counts then
    // agree with Linux's once the listed lines are left out.
    let mut counted = Vec::new();
    for (kernel, run) in [("here", ours), ("on Linux", linux)] {
        let pass = run.verdicts.iter().filter(|v| v.starts_with("PASS ")).count();
        let fail = run.verdicts.iter().filter(|v| v.starts_with("FAIL ")).count();
        let listed_pass = run.verdicts.iter().filter(|v| v.starts_with("PASS ") && is_listed(v)).count();
        match run.summary.as_deref() {
            Some(line) => {
                if summary(line) != Some((pass, fail)) {
                    problems.push(format!("{}: {:?} {} but {} PASS and {} FAIL lines", program, line, kernel, pass, fail));
                }
                let want = if fail == 0 { "exited with status 0" } else { "exited with status 1" };
                if run.status.as_deref() != Some(want) {
                    problems.push(format!("{}: {:?} {}, want {:?}", program, run.status, kernel, want));
                }
                counted.push(Some((line.split(':').next().unwrap_or("").to_owned(), pass - listed_pass)));
            }
            None => counted.push(None),
        }
    }
    match (&counted[0], &counted[1]) {
        (Some(here), Some(there)) if here != there => problems.push(format!(
            "{}: summaries disagree modulo the listed lines: {:?} here, {:?} on Linux",
            program, here, there
        )),
        (Some(_), None) | (None, Some(_)) => {
            problems.push(format!("{}: summary {:?} here, {:?} on Linux", program, ours.summary, linux.summary))
        }
        (None, None) if ours.status != linux.status => {
            problems.push(format!("{}: {:?} here, {:?} on Linux", program, ours.status, linux.status))
        }
        _ => {}
    }
    if ours.status.is_none() || linux.status.is_none() {
        problems.push(format!("{}: no exit status line (here {:?}, on Linux {:?})", program, ours.status, linux.status));
    }
    problems
}

#[test]
fn linux_differences_are_well_formed_and_the_comparison_enforces_them() {
    // The file parses, names programs that exist, and gives reasons.
    let programs = source_programs();
    for d in linux_differences() {
        assert!(programs.contains(&d.program), "linux-differences.txt: no program {:?}", d.program);
        assert!(d.reason.len() >= 10, "linux-differences.txt: {}: {}: reason too short", d.program, d.check_prefix);
    }
    assert!(parse_differences("prog: check").is_err(), "an entry without a reason must be refused");
    assert!(parse_differences("prog check  # why").is_err());
    assert!(parse_differences("prog: two words  # why").is_err());

    let run = |verdicts: &[&str], status: &str| {
        let pass = verdicts.iter().filter(|v| v.starts_with("PASS")).count();
        let fail = verdicts.iter().filter(|v| v.starts_with("FAIL")).count();
        ProgramRun {
            verdicts: verdicts.iter().map(|v| v.to_string()).collect(),
            summary: Some(format!("p: {} passed, {} failed", pass, fail)),
            status: Some(status.into()),
        }
    };
    let ok = "exited with status 0";
    let same = run(&["PASS a", "PASS b"], ok);
    assert!(compare_with_linux("p", &same, &same, &[]).is_empty());
    // An unlisted difference fails, in either direction.
    let linux_fails = run(&["PASS a", "FAIL b (x)"], "exited with status 1");
    assert!(!compare_with_linux("p", &same, &linux_fails, &[]).is_empty());
    let only_here = run(&["PASS a", "PASS b", "PASS c"], ok);
    assert!(!compare_with_linux("p", &only_here, &same, &[]).is_empty());
    // Listed, it is left out of the comparison (summaries and statuses too) ...
    let listed = parse_differences("p: b  # Linux 6.1 lacks it\np: c  # beyond Linux").unwrap();
    assert_eq!(compare_with_linux("p", &same, &linux_fails, &[&listed[0]]), Vec::<String>::new());
    assert_eq!(compare_with_linux("p", &only_here, &same, &[&listed[1]]), Vec::<String>::new());
    // ... but must still occur.
    let gone = compare_with_linux("p", &same, &same, &[&listed[0]]);
    assert!(gone.iter().any(|p| p.contains("no longer occurs")), "{:?}", gone);
    // A failed check fails even when both kernels fail it; so does a lying summary.
    assert!(!compare_with_linux("p", &linux_fails, &linux_fails, &[]).is_empty());
    let mut lying = same.clone();
    lying.summary = Some("p: 3 passed, 0 failed".into());
    assert!(!compare_with_linux("p", &lying, &lying, &[]).is_empty());
    // Killed programs (no summary) must end the same way.
    let killed = ProgramRun { status: Some("killed by signal 11 (SIGSEGV)".into()), ..ProgramRun::default() };
    assert!(compare_with_linux("segv", &killed, &killed, &[]).is_empty());
    let survived = ProgramRun { status: Some(ok.into()), ..ProgramRun::default() };
    assert!(!compare_with_linux("segv", &killed, &survived, &[]).is_empty());
}

/// Linux is the oracle: every program of the initramfs runs on our kernel (at
/// the console) and on the pinned Linux peer in the same QEMU (one boot each,
/// in parallel), and they must print the same verdict lines, summaries and exit
/// statuses, except for the differences listed in tests/linux-differences.txt.
#[test]
fn user_programs_print_the_same_verdicts_as_on_linux() {
    let peer = boot::linux::Peer::find().unwrap_or_else(|e| panic!("{}", e));
    eprintln!("linux peer: {}", peer.describe());
    let programs = initramfs_programs();
    let missing: Vec<String> = source_programs().into_iter().filter(|p| !programs.contains(p)).collect();
    assert!(missing.is_empty(), "programs missing from the initramfs (musl-gcc?): {:?}", missing);
    let commands = oracle_commands(&programs);
    let differences = linux_differences();

    // No program here depends on THP, so both run with the default 512 MiB
    // (Linux turns THP off below 512 MiB: give both 1G once one does).
    let mut script: Vec<Step> = commands.iter().map(|c| step("mm> ", &format!("run {}\n", c))).collect();
    script.push(step("mm> ", "poweroff\n"));
    let ours_options = Options { timeout: Some(Duration::from_secs(420)), ..console_options() };
    let linux_batches: Vec<Options> = commands
        .chunks(boot::linux::MAX_COMMANDS)
        .map(|chunk| Options {
            linux: true,
            exec: chunk.iter().map(|c| format!("run {}", c)).collect(),
            timeout: Some(Duration::from_secs(300)),
            ..Options::default()
        })
        .collect();
    let (ours, linux_runs) = std::thread::scope(|s| {
        let ours = s.spawn(|| boot(ours_options, Some(script)));
        let linux: Vec<Run> = linux_batches.into_iter().map(|o| boot(o, None)).collect();
        (ours.join().expect("our kernel's run"), linux)
    });
    let qemu_secs = ours.elapsed.as_secs_f64() + linux_runs.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>();
    eprintln!("oracle: {} programs, QEMU time {:.1} s (ours {:.1} s)", commands.len(), qemu_secs, ours.elapsed.as_secs_f64());
    assert_eq!(ours.outcome, Outcome::Success);
    for run in &linux_runs {
        assert_eq!(run.outcome, Outcome::Success, "the Linux peer did not power off cleanly");
    }
    let linux_output: String = linux_runs.iter().map(|r| r.output.as_str()).collect();

    let mut problems = Vec::new();
    for command in &commands {
        let path = command.split(' ').next().unwrap();
        let name = path.trim_start_matches("/bin/");
        let here = program_run(&ours.output, &format!("mm> run {}", command), &["mm> "], path);
        let there = program_run(&linux_output, &format!("linux-init: run {}", command), &["linux-init: run ", "init exited with status "], path);
        let (Some(here), Some(there)) = (here, there) else {
            problems.push(format!("{}: did not run (here: {}, on Linux: {})", name, ours.output.contains(command), linux_output.contains(command)));
            continue;
        };
        let listed: Vec<&Difference> = differences.iter().filter(|d| d.program == name).collect();
        problems.extend(compare_with_linux(name, &here, &there, &listed));
    }
    for d in &differences {
        if !programs.contains(&d.program) {
            problems.push(format!("linux-differences.txt names {:?}, which is not in /bin", d.program));
        }
    }
    if std::env::var_os("ORACLE_HOST").is_some() {
        host_second_opinion(&commands, &linux_output);
    }
    assert!(problems.is_empty(), "our kernel and Linux {} disagree:\n  {}", peer.release, problems.join("\n  "));
}

/// `boot --linux` with an initramfs that has its own `/init` runs it (through
/// linux-init) and reports how it ended, as our kernel does: here the segv
/// program, killed by SIGSEGV, gives status 139.
#[test]
fn linux_peer_runs_the_initramfs_init_and_reports_its_status() {
    use std::os::unix::fs::PermissionsExt;
    let peer = boot::linux::Peer::find().unwrap_or_else(|e| panic!("{}", e));
    eprintln!("linux peer: {}", peer.describe());
    let root = scratch_dir("linux-initrd");
    std::fs::write(root.join("init"), builtin_program("segv")).unwrap();
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = boot(Options { linux: true, initrd: Some(root.clone()), timeout: Some(Duration::from_secs(180)), ..Options::default() }, None);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(run.outcome, Outcome::Success);
    assert!(run.output.contains("segv: reading unmapped address 0x1000, expecting SIGSEGV"));
    assert_eq!(boot::init_exit_status(&run.output), Some(139));
    assert_eq!(run.exit_status(), 139);
    assert!(run.output.contains("reboot: Power down"));
}

/// `ORACLE_HOST=1`: also runs the programs on this host's kernel and prints
/// (as notes, never failures) where its verdicts differ from the Linux peer's.
/// `oom` is never run on the host.
fn host_second_opinion(commands: &[String], linux_output: &str) {
    use std::os::unix::fs::PermissionsExt;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("second opinion: this host's Linux {}", release.trim());
    let dir = scratch_dir("host-oracle");
    for command in commands {
        let words: Vec<&str> = command.split(' ').collect();
        let name = words[0].trim_start_matches("/bin/");
        if name == "oom" {
            continue;
        }
        let path = dir.join(name);
        std::fs::write(&path, builtin_program(name)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&path).args(&words[1..]).env_clear().output().expect("run on the host");
        let host = String::from_utf8_lossy(&out.stdout);
        let host = program_run(&format!("start\n{}", host), "start", &[], words[0]).unwrap_or_default();
        let peer = program_run(linux_output, &format!("linux-init: run {}", command), &["linux-init: run "], words[0])
            .unwrap_or_default();
        if host.verdicts != peer.verdicts || host.summary != peer.summary {
            let only = |a: &[String], b: &[String]| a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>();
            eprintln!(
                "note: {}: host {:?}, peer {:?}; only on the host {:?}, only on the peer {:?}",
                name,
                host.summary,
                peer.summary,
                only(&host.verdicts, &peer.verdicts),
                only(&peer.verdicts, &host.verdicts)
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
