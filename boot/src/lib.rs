//! The host-side runner: boots the kernel's BIOS or UEFI disk image in QEMU.
//!
//! The disk images are built by this crate's build script from the kernel
//! artifact (`bootloader` 0.11.15). The runner passes the kernel command line
//! through QEMU's fw_cfg (`opt/kernel/cmdline`), attaches the `isa-debug-exit`
//! device, copies the serial console to the terminal while keeping a tail of
//! it, enforces a timeout, and maps the kernel's exit code to a process
//! status. Both `cargo run -p boot` (the `boot` binary) and the QEMU
//! integration tests in `tests/` use this library.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIOS_IMAGE: &str = env!("BIOS_IMAGE");
pub const UEFI_IMAGE: &str = env!("UEFI_IMAGE");
/// UEFI firmware shipped by Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// QEMU status for the kernel's `ExitCode::Success` (0x10 << 1 | 1).
pub const QEMU_EXIT_SUCCESS: i32 = 33;
/// QEMU status for the kernel's `ExitCode::Failure` (0x11 << 1 | 1).
pub const QEMU_EXIT_FAILURE: i32 = 35;
/// Default timeout for runs that end by themselves (`--batch`, `--ktest`).
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(300);
/// How many serial lines a timeout report shows.
pub const TAIL_LINES: usize = 25;

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub uefi: bool,
    /// `Some(None)`: all tests, `Some(Some(f))`: tests matching `f`.
    pub ktest: Option<Option<String>>,
    pub batch: bool,
    pub mem: String,
    pub smp: u32,
    pub timeout: Option<Duration>,
    pub gdb: bool,
    pub icount: bool,
    /// Extra words for the kernel command line (`--cmdline`).
    pub cmdline: Vec<String>,
    /// Console commands typed at the `mm> ` prompt, one per prompt, then
    /// `poweroff` (`--exec`).
    pub exec: Vec<String>,
    /// Passed to QEMU verbatim (everything after `--`).
    pub qemu_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            uefi: false,
            ktest: None,
            batch: false,
            mem: "512M".into(),
            smp: 1,
            timeout: None,
            gdb: false,
            icount: false,
            cmdline: Vec::new(),
            exec: Vec::new(),
            qemu_args: Vec::new(),
        }
    }
}

pub const USAGE: &str = "\
usage: boot [OPTIONS] [-- QEMU ARGS...]

Boots the kernel in QEMU with the serial console on this terminal.

options:
  --uefi             boot the UEFI image (default: BIOS)
  --ktest [FILTER]   run the in-kernel tests (those whose name contains FILTER)
  --batch            no console: power off after boot; exit status from the kernel
  --mem SIZE         guest RAM, QEMU syntax (default 512M)
  --smp N            number of CPUs (default 1)
  --timeout SECS     kill QEMU after SECS and report a hang (default 300 with
                     --batch/--ktest, none otherwise)
  --gdb              start QEMU's gdbstub on :1234 and wait for the debugger
  --icount           -icount shift=0: the guest TSC counts instructions exactly
  --cmdline WORDS    extra kernel command-line words (e.g. \"loglevel=debug\")
  --exec COMMAND     type COMMAND at the mm> prompt (repeatable), then poweroff
  -h, --help         this text

exit status: 0 kernel reported success, 1 kernel reported failure,
             2 timeout (hang), 3 QEMU died without the kernel's exit code";

/// Parses command-line arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{} needs a value", name));
        match arg.as_str() {
            "--uefi" => o.uefi = true,
            "--bios" => o.uefi = false,
            "--batch" => o.batch = true,
            "--gdb" => o.gdb = true,
            "--icount" => o.icount = true,
            "--mem" => o.mem = value("--mem")?,
            "--smp" => {
                let v = value("--smp")?;
                o.smp = v.parse().ok().filter(|&n| n >= 1).ok_or_else(|| format!("--smp: bad CPU count '{}'", v))?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: u64 = v.parse().map_err(|_| format!("--timeout: bad number of seconds '{}'", v))?;
                o.timeout = Some(Duration::from_secs(secs));
            }
            "--cmdline" => o.cmdline.extend(value("--cmdline")?.split_whitespace().map(String::from)),
            "--exec" => o.exec.push(value("--exec")?),
            "--ktest" => {
                let filter = match it.peek() {
                    Some(next) if !next.starts_with('-') => it.next(),
                    _ => None,
                };
                o.ktest = Some(filter);
            }
            "--" => {
                o.qemu_args.extend(it.by_ref());
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option '{}'", other)),
        }
    }
    Ok(o)
}

impl Options {
    /// Whether the run ends by itself (so a default timeout applies).
    pub fn ends_by_itself(&self) -> bool {
        self.batch || self.ktest.is_some() || !self.exec.is_empty()
    }

    /// The console script for `--exec`: each command at a prompt, then `poweroff`.
    pub fn exec_script(&self) -> Option<Vec<Step>> {
        if self.exec.is_empty() {
            return None;
        }
        let mut commands = self.exec.clone();
        if commands.last().map(String::as_str) != Some("poweroff") {
            commands.push("poweroff".into());
        }
        Some(commands.into_iter().map(|c| Step { expect: "mm> ".into(), send: format!("{}\n", c) }).collect())
    }

    pub fn effective_timeout(&self) -> Option<Duration> {
        self.timeout.or(if self.ends_by_itself() && !self.gdb { Some(DEFAULT_BATCH_TIMEOUT) } else { None })
    }

    /// The kernel command line this run passes through fw_cfg.
    pub fn kernel_cmdline(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        match &self.ktest {
            Some(Some(filter)) => words.push(format!("ktest={}", filter)),
            Some(None) => words.push("ktest".into()),
            None => {}
        }
        if self.batch {
            words.push("batch".into());
        }
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    /// The QEMU command for this run.
    pub fn qemu_command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        let image = if self.uefi { UEFI_IMAGE } else { BIOS_IMAGE };
        if self.uefi {
            cmd.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", OVMF_CODE)]);
            cmd.args(["-drive", &format!("if=pflash,format=raw,snapshot=on,file={}", OVMF_VARS)]);
        }
        // snapshot=on: writes go to a temporary overlay, so parallel runs can
        // share the image.
        cmd.args(["-drive", &format!("format=raw,snapshot=on,file={}", image)]);
        cmd.args(["-machine", "q35", "-cpu", "max", "-accel", "tcg"]);
        cmd.args(["-m", &self.mem, "-smp", &self.smp.to_string()]);
        cmd.args(["-serial", "stdio", "-display", "none", "-monitor", "none", "-no-reboot"]);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        // QEMU rejects an empty fw_cfg string; no file means an empty command line.
        let cmdline = self.kernel_cmdline();
        if !cmdline.is_empty() {
            // fw_cfg strings use ',' as the option separator: double it.
            cmd.args(["-fw_cfg", &format!("name=opt/kernel/cmdline,string={}", cmdline.replace(',', ",,"))]);
        }
        if self.icount {
            cmd.args(["-icount", "shift=0"]);
        }
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        cmd.args(&self.qemu_args);
        cmd
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel wrote the success code to the debug-exit device.
    Success,
    /// The kernel wrote the failure code (test failure, panic, oops).
    Failure,
    /// No exit within the timeout; the machine was killed.
    Timeout,
    /// QEMU ended some other way (triple fault reset, QEMU error, signal).
    Crashed(Option<i32>),
}

impl Outcome {
    /// The process exit status the `boot` binary reports.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Timeout => 2,
            Outcome::Crashed(_) => 3,
        }
    }

    fn from_qemu_status(code: Option<i32>) -> Outcome {
        match code {
            Some(QEMU_EXIT_SUCCESS) => Outcome::Success,
            Some(QEMU_EXIT_FAILURE) => Outcome::Failure,
            other => Outcome::Crashed(other),
        }
    }
}

/// A line-oriented script fed to the serial console: wait until `expect`
/// has appeared in the output (counting from the previous step), then send
/// `send`.
#[derive(Clone, Debug)]
pub struct Step {
    pub expect: String,
    pub send: String,
}

/// Everything a finished run produced.
#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    /// The complete serial output.
    pub output: String,
    pub elapsed: Duration,
}

impl Run {
    /// The last `n` lines of serial output.
    pub fn tail(&self, n: usize) -> Vec<&str> {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

/// Where serial output goes while the run is in progress.
pub enum Echo {
    /// Copy to this process's stdout (interactive use).
    Stdout,
    /// Keep it only in `Run::output` (tests).
    Quiet,
}

/// Boots QEMU and waits for the run to end.
///
/// stdin: with `script`, the runner types the script into the console;
/// without one, QEMU reads this process's stdin (interactive console).
pub fn run(options: &Options, script: Option<Vec<Step>>, echo: Echo) -> std::io::Result<Run> {
    let start = Instant::now();
    let mut cmd = options.qemu_command();
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd.stdin(if script.is_some() { Stdio::piped() } else { Stdio::inherit() });
    let mut child = cmd.spawn().map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot start qemu-system-x86_64 ({}); run `make setup`", e))
    })?;

    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = spawn_reader(&mut child, Arc::clone(&output), echo);
    let mut stdin = child.stdin.take();
    let mut steps: VecDeque<Step> = script.unwrap_or_default().into();
    let mut search_from = 0;
    let timeout = options.effective_timeout();

    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break Outcome::from_qemu_status(status.code());
        }
        if let (Some(step), Some(input)) = (steps.front(), stdin.as_mut()) {
            let out = output.lock().expect("reader thread never panics");
            let text = String::from_utf8_lossy(&out[search_from..]);
            if let Some(pos) = text.find(&step.expect) {
                search_from += text[..pos + step.expect.len()].len();
                drop(out);
                // The guest may already be gone; the exit status tells the story.
                let _ = input.write_all(step.send.as_bytes());
                let _ = input.flush();
                steps.pop_front();
            }
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Timeout;
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let _ = reader.join();
    let bytes = output.lock().expect("reader thread never panics").clone();
    Ok(Run { outcome, output: String::from_utf8_lossy(&bytes).into_owned(), elapsed: start.elapsed() })
}

fn spawn_reader(child: &mut Child, output: Arc<Mutex<Vec<u8>>>, echo: Echo) -> thread::JoinHandle<()> {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Echo::Stdout = echo {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    output.lock().expect("no panics while holding the lock").extend_from_slice(&buf[..n]);
                }
            }
        }
    })
}

/// Where the disk images are (for `--gdb` users and scripts).
pub fn images() -> (PathBuf, PathBuf) {
    (PathBuf::from(BIOS_IMAGE), PathBuf::from(UEFI_IMAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_option() {
        let o = parse_args(args("--uefi --ktest heap --batch --mem 1G --smp 2 --timeout 9 --gdb --icount -- -d int")).unwrap();
        assert!(o.uefi && o.batch && o.gdb && o.icount);
        assert_eq!(o.ktest, Some(Some("heap".into())));
        assert_eq!((o.mem.as_str(), o.smp, o.timeout), ("1G", 2, Some(Duration::from_secs(9))));
        assert_eq!(o.qemu_args, args("-d int"));
    }

    #[test]
    fn ktest_without_filter_and_cmdline() {
        let o = parse_args(args("--ktest --batch")).unwrap();
        assert_eq!(o.ktest, Some(None));
        assert_eq!(o.kernel_cmdline(), "ktest batch");
        let o = parse_args(args("--ktest mm,x")).unwrap();
        let cmd = format!("{:?}", o.qemu_command());
        assert!(cmd.contains("string=ktest=mm,,x"), "{}", cmd);
    }

    #[test]
    fn exec_types_commands_then_powers_off() {
        let o = parse_args(["--exec".to_string(), "ptstat".into(), "--exec".into(), "meminfo".into()]).unwrap();
        let script = o.exec_script().unwrap();
        let sent: Vec<&str> = script.iter().map(|s| s.send.as_str()).collect();
        assert_eq!(sent, ["ptstat\n", "meminfo\n", "poweroff\n"]);
        assert!(script.iter().all(|s| s.expect == "mm> "));
        assert_eq!(o.effective_timeout(), Some(DEFAULT_BATCH_TIMEOUT));
        assert!(Options::default().exec_script().is_none());
    }

    #[test]
    fn empty_cmdline_passes_no_fw_cfg_file() {
        let cmd = format!("{:?}", Options::default().qemu_command());
        assert!(!cmd.contains("fw_cfg"), "{}", cmd);
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        assert!(parse_args(args("--smp 0")).unwrap_err().contains("--smp"));
        assert!(parse_args(args("--timeout soon")).unwrap_err().contains("--timeout"));
        assert!(parse_args(args("--mem")).unwrap_err().contains("needs a value"));
        assert!(parse_args(args("--frobnicate")).unwrap_err().contains("unknown option"));
    }

    #[test]
    fn timeout_defaults_only_for_runs_that_end() {
        assert_eq!(Options::default().effective_timeout(), None);
        let o = parse_args(args("--batch")).unwrap();
        assert_eq!(o.effective_timeout(), Some(DEFAULT_BATCH_TIMEOUT));
        let o = parse_args(args("--ktest --gdb")).unwrap();
        assert_eq!(o.effective_timeout(), None);
    }

    #[test]
    fn qemu_status_mapping() {
        assert_eq!(Outcome::from_qemu_status(Some(33)), Outcome::Success);
        assert_eq!(Outcome::from_qemu_status(Some(35)), Outcome::Failure);
        // -no-reboot turns a triple fault into a clean QEMU exit: not a success.
        assert_eq!(Outcome::from_qemu_status(Some(0)), Outcome::Crashed(Some(0)));
        assert_eq!(Outcome::Crashed(None).exit_status(), 3);
    }
}
