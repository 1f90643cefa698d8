//! `boot --mmbench`: runs `/bin/mmbench` (`user/c/mmbench.c`) under
//! `-icount shift=0` on the Linux peer and on this kernel, one QEMU run
//! after the other with the same machine (`--mem 1G` unless given), and
//! prints the instructions per operation side by side as a Markdown table
//! with the ratio ours / Linux.
//!
//! Under `-icount shift=0` one guest nanosecond is one guest instruction,
//! so the `CLOCK_MONOTONIC` deltas mmbench reports are instruction counts
//! on both kernels (QEMU counts each iteration of a `rep` string
//! instruction as one instruction).

use std::time::Duration;

use crate::{Echo, Options, Outcome, Run};

/// The program both kernels run.
pub const PROGRAM: &str = "/bin/mmbench";
/// Guest RAM unless `--mem` is given: Linux turns THP off below 512 MiB,
/// and `thp_dontneed` needs huge pages.
pub const DEFAULT_MEM: &str = "1G";
/// Per run, unless `--timeout` is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
const PREFIX: &str = "mmbench: ";
const DONE: &str = "mmbench: done";

/// One operation's result as mmbench printed it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cost {
    /// Nanoseconds (= instructions under `-icount shift=0`) per operation.
    Ns(u64),
    /// `unsupported`, `error ERRNO`, `no-thp (...)`: shown as printed.
    Other(String),
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cost::Ns(n) => f.write_str(&thousands(*n)),
            Cost::Other(s) => f.write_str(s),
        }
    }
}

/// The `mmbench:` lines of one run, in the order printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub ops: Vec<(String, Cost)>,
    /// Whether `mmbench: done` was printed.
    pub done: bool,
}

impl Report {
    pub fn get(&self, name: &str) -> Option<&Cost> {
        self.ops.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// Parses the `mmbench: NAME: COST` lines (and `mmbench: done`) out of a
/// serial log; other lines (kernel messages, `\r`) are ignored. Text may
/// precede `mmbench:` on a line (a kernel log line interleaved without a
/// newline), so the last occurrence on the line counts.
pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for line in output.lines() {
        let line = line.trim_end_matches('\r').trim_end();
        let Some(at) = line.rfind(PREFIX) else { continue };
        let line = &line[at..];
        if line == DONE {
            report.done = true;
            continue;
        }
        let Some((name, value)) = line[PREFIX.len()..].split_once(": ") else { continue };
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        let value = value.trim();
        let cost = match value.parse::<u64>() {
            Ok(n) => Cost::Ns(n),
            Err(_) => Cost::Other(value.to_owned()),
        };
        report.ops.push((name.to_owned(), cost));
    }
    report
}

/// `12345678` -> `12,345,678`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// ours / Linux to two decimals, when both are numbers (and Linux's is not 0).
pub fn ratio(linux: Option<&Cost>, ours: Option<&Cost>) -> String {
    match (linux, ours) {
        (Some(Cost::Ns(l)), Some(Cost::Ns(o))) if *l > 0 => format!("{:.2}", *o as f64 / *l as f64),
        _ => "—".into(),
    }
}

/// The Markdown table: one row per operation (this kernel's order, then
/// any only Linux printed), `—` where a side printed nothing.
pub fn table(linux: &Report, ours: &Report) -> String {
    let mut names: Vec<&str> = ours.ops.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in &linux.ops {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let cell = |c: Option<&Cost>| c.map(Cost::to_string).unwrap_or_else(|| "—".into());
    let mut out = String::from("| operation | Linux 6.1 | this kernel | ratio |\n|---|---:|---:|---:|\n");
    for name in names {
        let (l, o) = (linux.get(name), ours.get(name));
        out.push_str(&format!("| `{}` | {} | {} | {} |\n", name, cell(l), cell(o), ratio(l, o)));
    }
    out
}

/// The Options of one side's run: `base` (from the command line) with
/// `-icount`, batch mode and init `/bin/mmbench`.
pub fn side_options(base: &Options, linux: bool) -> Options {
    Options {
        linux,
        mmbench: false,
        icount: true,
        batch: true,
        init: Some(PROGRAM.into()),
        timeout: base.timeout.or(Some(DEFAULT_TIMEOUT)),
        ..base.clone()
    }
}

/// `QEMU emulator version 7.2.22 (...)`, or why not.
pub fn qemu_version() -> String {
    match std::process::Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned(),
        Err(e) => format!("qemu-system-x86_64 --version: {}", e),
    }
}

/// Runs both sides, prints the table on stdout (progress and problems on
/// stderr) and returns the exit status: 0 when both runs ended with
/// `mmbench: done` and status 0.
pub fn main(base: &Options) -> i32 {
    let peer = match crate::linux::Peer::find() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("boot: {}", e);
            return 3;
        }
    };
    let mut status = 0;
    let mut reports = Vec::new();
    for (linux, label) in [(true, "Linux peer"), (false, "this kernel")] {
        let options = side_options(base, linux);
        eprintln!("mmbench: running {} on {} (--icount --batch --mem {} --init {}) ...", PROGRAM, label, options.mem, PROGRAM);
        let run: Run = match crate::run(&options, None, Echo::Quiet) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("boot: {}", e);
                return 3;
            }
        };
        let report = parse(&run.output);
        eprintln!("mmbench: {} finished in {:.1} s: {:?}, exit status {}", label, run.elapsed.as_secs_f64(), run.outcome, run.exit_status());
        if run.outcome != Outcome::Success || run.exit_status() != 0 || !report.done {
            eprintln!("mmbench: {} did not finish cleanly; last serial lines:", label);
            for line in run.tail(crate::TAIL_LINES) {
                eprintln!("  | {}", line);
            }
            status = 1;
        }
        reports.push(report);
    }
    println!(
        "{}; -icount shift=0, -m {}, {} CPU; Linux peer {}",
        qemu_version(),
        base.mem,
        base.smp,
        peer.describe()
    );
    println!();
    print!("{}", table(&reports[0], &reports[1]));
    println!();
    println!("Instructions per operation (median of 5 rounds; under -icount shift=0 one guest ns is one");
    println!("instruction); ratio = this kernel / Linux. QEMU counts each iteration of `rep stos`/`rep movs`");
    println!("as one instruction.");
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "\
[    0.5] INFO  command line: \"batch init=/bin/mmbench\"\r
mmbench: getpid: 412\r
mmbench: fault_4k: 7001\r
[    1.0] WARN  something\r
mmbench: pread_4k: unsupported\r
mmbench: thp_dontneed: 12345678\r
mmbench: done\r
[    2.0] INFO  init exited with status 0\r
";
    const LINUX: &str = "\
mmbench: getpid: 206
mmbench: fault_4k: 3500
mmbench: pread_4k: 5000
mmbench: thp_dontneed: no-thp (AnonHugePages +0 kB of 65536 kB)
mmbench: only_linux: error 22
init exited with status 0
";

    #[test]
    fn parses_costs_words_and_done() {
        let r = parse(OURS);
        assert!(r.done);
        assert_eq!(r.get("getpid"), Some(&Cost::Ns(412)));
        assert_eq!(r.get("pread_4k"), Some(&Cost::Other("unsupported".into())));
        assert_eq!(r.ops.len(), 4);
        let l = parse(LINUX);
        assert!(!l.done);
        assert_eq!(l.get("thp_dontneed"), Some(&Cost::Other("no-thp (AnonHugePages +0 kB of 65536 kB)".into())));
        assert_eq!(l.get("only_linux"), Some(&Cost::Other("error 22".into())));
        // A kernel message glued to the front of a line does not hide it.
        let r = parse("[ 1.0] INFO  xmmbench: getpid: 5\nmmbench: bad name: 3\nmmbench: nocolon\n");
        assert_eq!(r.ops, vec![("getpid".to_string(), Cost::Ns(5))]);
    }

    #[test]
    fn table_has_a_row_per_operation_with_ratios() {
        let t = table(&parse(LINUX), &parse(OURS));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| operation | Linux 6.1 | this kernel | ratio |");
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| `getpid` | 206 | 412 | 2.00 |");
        assert_eq!(lines[3], "| `fault_4k` | 3,500 | 7,001 | 2.00 |");
        assert_eq!(lines[4], "| `pread_4k` | 5,000 | unsupported | — |");
        assert_eq!(lines[5], "| `thp_dontneed` | no-thp (AnonHugePages +0 kB of 65536 kB) | 12,345,678 | — |");
        assert_eq!(lines[6], "| `only_linux` | error 22 | — | — |");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn ratio_and_thousands() {
        assert_eq!(ratio(Some(&Cost::Ns(3)), Some(&Cost::Ns(1))), "0.33");
        assert_eq!(ratio(Some(&Cost::Ns(0)), Some(&Cost::Ns(1))), "—");
        assert_eq!(ratio(None, Some(&Cost::Ns(1))), "—");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn both_sides_run_the_same_machine_under_icount() {
        let base = crate::parse_args(["--mmbench".to_string()]).unwrap();
        assert!(base.mmbench && base.mem == DEFAULT_MEM);
        let (linux, ours) = (side_options(&base, true), side_options(&base, false));
        for o in [&linux, &ours] {
            assert!(o.icount && o.batch && !o.mmbench);
            assert_eq!(o.init.as_deref(), Some(PROGRAM));
            assert_eq!((o.mem.as_str(), o.smp), ("1G", 1));
            assert_eq!(o.effective_timeout(), Some(DEFAULT_TIMEOUT));
        }
        assert!(linux.linux && !ours.linux);
        let base = crate::parse_args(["--mmbench", "--mem", "2G", "--timeout", "60"].map(String::from)).unwrap();
        let o = side_options(&base, true);
        assert_eq!((o.mem.as_str(), o.timeout), ("2G", Some(Duration::from_secs(60))));
        assert!(crate::parse_args(["--mmbench", "--linux"].map(String::from)).unwrap_err().contains("--mmbench"));
        assert!(crate::parse_args(["--mmbench", "--init", "/x"].map(String::from)).unwrap_err().contains("--mmbench"));
        assert!(crate::USAGE.contains("--mmbench"));
    }
}
