//! The host-side runner: boots the kernel's BIOS or UEFI disk image in QEMU.
//!
//! The disk images are built by this crate's build script from the kernel
//! artifact (`bootloader` 0.11.15). The runner passes the kernel command line
//! through QEMU's fw_cfg (`opt/kernel/cmdline`), attaches the `isa-debug-exit`
//! device, copies the serial console to the terminal while keeping a tail of
//! it, enforces a timeout, and maps the kernel's exit code to a process
//! status. Both `cargo run -p boot` (the `boot` binary) and the QEMU
//! integration tests in `tests/` use this library.
//!
//! The built-in images carry the default initramfs (see `build.rs`) as the
//! bootloader's ramdisk; `--initrd DIR` / `--initrd-file FILE` build fresh
//! images with another one in a temporary directory for the run.
//!
//! `--profile[=RATE]` runs the kernel's sampling profiler and turns its dump
//! into a top list and a flame graph (see [`profile`]).
//!
//! `--linux` boots the Linux peer instead (see [`linux`]): Linux itself in
//! the same QEMU, running the same programs from the same initramfs.
//! `--mmbench` runs `/bin/mmbench` on both under `-icount` and prints the
//! costs side by side (see [`mmbench`]).

pub mod image;
pub mod linux;
pub mod profile;
pub mod mmbench;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIOS_IMAGE: &str = env!("BIOS_IMAGE");
pub const UEFI_IMAGE: &str = env!("UEFI_IMAGE");
/// The default initramfs (cpio `newc`) inside the built-in images.
pub const INITRAMFS: &str = env!("INITRAMFS");
/// The kernel ELF the images boot.
pub const KERNEL_ELF: &str = env!("KERNEL_ELF");
/// Where `--profile` writes its flame graph without `--profile-out`, under
/// the workspace (the folded stacks go next to it, `profile.folded`).
pub const DEFAULT_PROFILE_OUT: &str = "target/profile.svg";
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
/// QEMU's CPU model for both kernels. TCG's `max` CPU has LA57; our kernel
/// uses 4-level paging, while Linux 6.1 would switch to 5-level paging (a
/// 56-bit user address space, so `mmap` at 2^47 would succeed there) and has
/// no `no5lvl` parameter to refuse it. Without LA57 both see the same CPU and
/// give user space the same 47 bits.
pub const CPU: &str = "max,la57=off";

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
    /// Host directory packed into the initramfs for this run (`--initrd`).
    pub initrd: Option<PathBuf>,
    /// Ready cpio archive used as the initramfs for this run (`--initrd-file`).
    pub initrd_file: Option<PathBuf>,
    /// The first user program: kernel command line `init=PATH` (`--init`).
    pub init: Option<String>,
    /// Passed to QEMU verbatim (everything after `--`).
    pub qemu_args: Vec<String>,
    /// Boot the Linux peer instead of our kernel (`--linux`).
    pub linux: bool,
    /// Run the kernel's sampling profiler at this rate (`--profile[=RATE]`).
    pub profile: Option<u64>,
    /// The flame graph's file (`--profile-out`; default [`DEFAULT_PROFILE_OUT`]).
    pub profile_out: Option<PathBuf>,
    /// Run `/bin/mmbench` on the Linux peer and on this kernel and print
    /// the side-by-side table (`--mmbench`, see [`mmbench`]).
    pub mmbench: bool,
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
            initrd: None,
            initrd_file: None,
            init: None,
            qemu_args: Vec::new(),
            linux: false,
            profile: None,
            profile_out: None,
            mmbench: false,
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
  --init PATH        run PATH as the first user process (kernel init=PATH);
                     default: /init if the initramfs has one, else the demo
                     that runs every program in /bin
  --initrd DIR       boot with DIR (recursively, modes kept) packed as the
                     initramfs instead of the built-in one (/bin, /etc/motd)
  --initrd-file FILE boot with FILE, a cpio newc archive, as the initramfs
  --linux            boot the Linux peer (fetched by `make setup`) instead, with
                     the same initramfs plus /linux-init, which runs the --init
                     program (default /init) or each --exec \"run PATH [ARGS]\",
                     prints \"init exited with status N\" and powers off; the
                     same QEMU flags (--mem, --smp, --icount, --timeout, --gdb);
                     --cmdline words go to Linux's command line
  --profile[=RATE]   sample the kernel RATE times a second (default 10000; the
                     PIT as an NMI, exact under --icount) from boot to power-off;
                     the runner prints the top 25 functions by self samples and
                     writes a flame graph (with --batch, --ktest or --exec)
  --profile-out FILE the flame graph's SVG (default target/profile.svg); the
                     folded stacks go next to it (FILE with .folded)
  --mmbench          run /bin/mmbench under -icount on the Linux peer, then on
                     this kernel (same QEMU machine, --mem 1G unless given,
                     one run each) and print the instructions per operation
                     side by side as a Markdown table with ratios
  -h, --help         this text

exit status: 0 kernel reported success, 1 kernel reported failure,
             2 timeout (hang), 3 QEMU died without the kernel's exit code;
             N if the kernel reported success after \"init exited with status N\"
             (batch mode; 128+SIG when a signal killed init)";

/// Parses command-line arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut o = Options::default();
    let mut mem_given = false;
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{} needs a value", name));
        match arg.as_str() {
            "--uefi" => o.uefi = true,
            "--bios" => o.uefi = false,
            "--batch" => o.batch = true,
            "--gdb" => o.gdb = true,
            "--icount" => o.icount = true,
            "--mem" => {
                o.mem = value("--mem")?;
                mem_given = true;
            }
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
            "--init" => o.init = Some(value("--init")?),
            "--initrd" => o.initrd = Some(value("--initrd")?.into()),
            "--initrd-file" => o.initrd_file = Some(value("--initrd-file")?.into()),
            "--linux" => o.linux = true,
            "--profile" => o.profile = Some(profile::DEFAULT_RATE_HZ),
            "--profile-out" => o.profile_out = Some(value("--profile-out")?.into()),
            p if p.starts_with("--profile=") => {
                let v = &p["--profile=".len()..];
                let rate = v.parse().ok().filter(|r| profile::RATES_HZ.contains(r)).ok_or_else(|| {
                    format!("--profile: bad rate '{}' (samples per second, {}..={})", v, profile::RATES_HZ.start(), profile::RATES_HZ.end())
                })?;
                o.profile = Some(rate);
            }
            "--mmbench" => o.mmbench = true,
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
    if o.initrd.is_some() && o.initrd_file.is_some() {
        return Err("--initrd and --initrd-file exclude each other".into());
    }
    if o.init.as_deref().is_some_and(|p| p.is_empty() || p.contains(char::is_whitespace)) {
        return Err("--init: need a path without spaces".into());
    }
    if o.profile_out.is_some() && o.profile.is_none() {
        return Err("--profile-out needs --profile".into());
    }
    if o.mmbench {
        let conflicting = [
            (o.linux, "--linux"),
            (o.uefi, "--uefi"),
            (o.ktest.is_some(), "--ktest"),
            (!o.exec.is_empty(), "--exec"),
            (o.init.is_some(), "--init"),
            (o.gdb, "--gdb"),
            (o.profile.is_some(), "--profile"),
        ];
        if let Some((_, name)) = conflicting.iter().find(|(set, _)| *set) {
            return Err(format!("--mmbench runs both kernels with its own settings: no {}", name));
        }
        if !mem_given {
            o.mem = mmbench::DEFAULT_MEM.into();
        }
    }
    if o.linux {
        if o.profile.is_some() {
            return Err("--linux: --profile samples our kernel only".into());
        }
        if o.uefi {
            return Err("--linux boots with QEMU's -kernel: no --uefi".into());
        }
        if o.ktest.is_some() {
            return Err("--linux: the in-kernel tests are ours only (no --ktest)".into());
        }
        if o.init.is_some() && !o.exec.is_empty() {
            return Err("--linux: give --init PATH or --exec \"run PATH\", not both".into());
        }
        o.linux_exec_commands()?;
    }
    Ok(o)
}

impl Options {
    /// Whether the run ends by itself (so a default timeout applies).
    pub fn ends_by_itself(&self) -> bool {
        self.batch || self.ktest.is_some() || !self.exec.is_empty() || self.linux
    }

    /// The console script for `--exec`: each command at a prompt, then `poweroff`.
    /// None for `--linux` (linux-init runs the commands itself).
    pub fn exec_script(&self) -> Option<Vec<Step>> {
        if self.exec.is_empty() || self.linux {
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
        if let Some(init) = &self.init {
            words.push(format!("init={}", init));
        }
        if let Some(rate) = self.profile {
            words.push(format!("profile={}", rate));
        }
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    /// `--exec` commands as argv lists for linux-init: each must be
    /// `run PATH [ARGS]`; a final `poweroff` is allowed (linux-init powers off
    /// anyway).
    fn linux_exec_commands(&self) -> Result<Vec<Vec<String>>, String> {
        let mut commands = Vec::new();
        for (i, line) in self.exec.iter().enumerate() {
            let words: Vec<String> = line.split_whitespace().map(String::from).collect();
            match words.first().map(String::as_str) {
                Some("run") if words.len() > 1 => commands.push(words[1..].to_vec()),
                Some("poweroff") if i + 1 == self.exec.len() && words.len() == 1 => {}
                _ => return Err(format!("--linux: --exec '{}': only \"run PATH [ARGS]\" works on Linux", line)),
            }
        }
        Ok(commands)
    }

    /// What linux-init runs: `--init PATH`, else the `--exec` commands, else
    /// `/init` when the initramfs has one (Linux has no demo).
    pub fn linux_commands(&self, initramfs_has_init: bool) -> Result<Vec<Vec<String>>, String> {
        if let Some(init) = &self.init {
            return Ok(vec![vec![init.clone()]]);
        }
        let commands = self.linux_exec_commands()?;
        if !commands.is_empty() {
            return Ok(commands);
        }
        if initramfs_has_init {
            return Ok(vec![vec!["/init".into()]]);
        }
        Err("--linux: nothing to run: give --init PATH or --exec \"run PATH [ARGS]\" (Linux has no demo)".into())
    }

    /// The initramfs of this run (cpio `newc` bytes): `--initrd` packed,
    /// `--initrd-file` read and checked, or the built-in one.
    pub fn initramfs_bytes(&self) -> std::io::Result<Vec<u8>> {
        match (&self.initrd, &self.initrd_file) {
            (Some(dir), _) => image::pack_dir(dir)
                .map_err(|e| std::io::Error::new(e.kind(), format!("--initrd {}: {}", dir.display(), e))),
            (None, Some(file)) => {
                let bytes = std::fs::read(file)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("--initrd-file {}: {}", file.display(), e)))?;
                if let Err(e) = exec::cpio::Archive::parse(&bytes) {
                    let msg = format!("--initrd-file {}: not a cpio newc archive ({})", file.display(), e);
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
                }
                Ok(bytes)
            }
            (None, None) => std::fs::read(INITRAMFS),
        }
    }

    /// For `--linux`: writes the Linux peer's initramfs (this run's
    /// initramfs plus linux-init) into a temporary directory and returns it
    /// with the QEMU command that boots `peer` with it.
    pub fn linux_command(&self, peer: &linux::Peer) -> std::io::Result<(TempImage, Command)> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        let base = self.initramfs_bytes()?;
        let has_init = exec::cpio::Archive::parse(&base).map(|a| a.get("init").is_some_and(|e| e.is_file()));
        let has_init = has_init.map_err(|e| invalid(format!("initramfs: {}", e)))?;
        let append = linux::append_line(&self.cmdline, &self.linux_commands(has_init).map_err(invalid)?).map_err(invalid)?;
        let mut temp = TempImage::create_dir()?;
        temp.image = temp.dir.join("initramfs-linux.cpio");
        std::fs::write(&temp.image, linux::initramfs(&base).map_err(invalid)?)?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.arg("-kernel").arg(&peer.vmlinuz).arg("-initrd").arg(&temp.image).args(["-append", &append]);
        self.common_qemu_args(&mut cmd);
        Ok((temp, cmd))
    }

    /// The QEMU command for this run with the built-in disk image.
    pub fn qemu_command(&self) -> Command {
        self.qemu_command_for(Path::new(if self.uefi { UEFI_IMAGE } else { BIOS_IMAGE }))
    }

    /// The QEMU command for this run booting `image`.
    pub fn qemu_command_for(&self, image: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        if self.uefi {
            cmd.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", OVMF_CODE)]);
            cmd.args(["-drive", &format!("if=pflash,format=raw,snapshot=on,file={}", OVMF_VARS)]);
        }
        // snapshot=on: writes go to a temporary overlay, so parallel runs can
        // share the image.
        cmd.args(["-drive", &format!("format=raw,snapshot=on,file={}", image.display())]);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        // QEMU rejects an empty fw_cfg string; no file means an empty command line.
        let cmdline = self.kernel_cmdline();
        if !cmdline.is_empty() {
            // fw_cfg strings use ',' as the option separator: double it.
            cmd.args(["-fw_cfg", &format!("name=opt/kernel/cmdline,string={}", cmdline.replace(',', ",,"))]);
        }
        self.common_qemu_args(&mut cmd);
        cmd
    }

    /// The QEMU flags both kernels get: machine, CPU, memory, CPUs, serial
    /// console, `-icount`, `--gdb`, and the `-- ARGS`.
    fn common_qemu_args(&self, cmd: &mut Command) {
        cmd.args(["-machine", "q35", "-cpu", CPU, "-accel", "tcg"]);
        cmd.args(["-m", &self.mem, "-smp", &self.smp.to_string()]);
        cmd.args(["-serial", "stdio", "-display", "none", "-monitor", "none", "-no-reboot"]);
        if self.icount {
            cmd.args(["-icount", "shift=0"]);
        }
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        cmd.args(&self.qemu_args);
    }

    /// Builds the disk image for `--initrd` / `--initrd-file` (BIOS or UEFI
    /// as the run needs); `None` when the built-in image will do.
    pub fn custom_image(&self) -> std::io::Result<Option<TempImage>> {
        if self.initrd.is_none() && self.initrd_file.is_none() {
            return Ok(None);
        }
        let temp = TempImage::create_dir()?;
        let ramdisk = match (&self.initrd, &self.initrd_file) {
            (None, Some(file)) => {
                self.initramfs_bytes()?; // checks the format
                file.clone()
            }
            _ => {
                let path = temp.dir.join("initramfs.cpio");
                std::fs::write(&path, self.initramfs_bytes()?)?;
                path
            }
        };
        image::create_disk_image(Path::new(KERNEL_ELF), Some(&ramdisk), self.uefi, &temp.image)
            .map_err(std::io::Error::other)?;
        Ok(Some(temp))
    }
}

/// A disk image (or, for `--linux`, the Linux peer's initramfs) built for
/// one run, in its own temporary directory that is removed on drop.
#[derive(Debug)]
pub struct TempImage {
    dir: PathBuf,
    /// The disk image or initramfs (inside the temporary directory).
    pub image: PathBuf,
}

impl TempImage {
    fn create_dir() -> std::io::Result<TempImage> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("mm-boot-{}-{}-{}", std::process::id(), nanos, COUNT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir)?;
        Ok(TempImage { image: dir.join("disk.img"), dir })
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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
    /// The process exit status the `boot` binary reports: the outcome's
    /// status, except that a successful run whose kernel printed
    /// `init exited with status N` reports N.
    pub fn exit_status(&self) -> i32 {
        match (&self.outcome, init_exit_status(&self.output)) {
            (Outcome::Success, Some(status)) => status,
            (outcome, _) => outcome.exit_status(),
        }
    }

    /// The last `n` lines of serial output.
    pub fn tail(&self, n: usize) -> Vec<&str> {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

/// The N of the last `init exited with status N` line in the serial output
/// (0..=255; the kernel reports 128+SIG for a signal).
pub fn init_exit_status(output: &str) -> Option<i32> {
    const MARK: &str = "init exited with status ";
    let line = output.lines().rev().find(|l| l.contains(MARK))?;
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok().filter(|n| (0..=255).contains(n))
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
///
/// With `--linux` the script is ignored (linux-init runs the `--exec`
/// commands) and the outcome comes from [`linux::outcome`].
pub fn run(options: &Options, script: Option<Vec<Step>>, echo: Echo) -> std::io::Result<Run> {
    // Lives until QEMU has exited (the image is opened with snapshot=on).
    let custom;
    let mut cmd = if options.linux {
        let peer = linux::Peer::find().map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let (temp, cmd) = options.linux_command(&peer)?;
        custom = Some(temp);
        cmd
    } else {
        custom = options.custom_image()?;
        match &custom {
            Some(temp) => options.qemu_command_for(&temp.image),
            None => options.qemu_command(),
        }
    };
    let script = if options.linux { None } else { script };
    let start = Instant::now();
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

    // Some(QEMU's exit status), or None for a timeout.
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status.code());
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
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let _ = reader.join();
    drop(custom);
    let bytes = output.lock().expect("reader thread never panics").clone();
    let output = String::from_utf8_lossy(&bytes).into_owned();
    let outcome = match ended {
        None => Outcome::Timeout,
        Some(code) if options.linux => linux::outcome(code, &output),
        Some(code) => Outcome::from_qemu_status(code),
    };
    Ok(Run { outcome, output, elapsed: start.elapsed() })
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

/// A QEMU memory size (`512M`, `1G`, `2048`: MiB without a suffix) in MiB.
pub fn mem_mib(size: &str) -> Option<u64> {
    let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len()));
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "M" | "m" | "MB" | "MiB" => Some(n),
        "G" | "g" | "GB" | "GiB" => n.checked_mul(1024),
        "T" | "t" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

impl Options {
    /// The flame graph's path for `--profile`.
    pub fn profile_svg(&self) -> PathBuf {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
        self.profile_out.clone().unwrap_or_else(|| workspace.join(DEFAULT_PROFILE_OUT))
    }
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
    fn profile_options_reach_the_kernel_command_line() {
        let o = parse_args(args("--batch --profile --init /bin/hello")).unwrap();
        assert_eq!(o.profile, Some(profile::DEFAULT_RATE_HZ));
        assert_eq!(o.kernel_cmdline(), "batch init=/bin/hello profile=10000");
        assert!(o.profile_svg().ends_with("target/profile.svg") && o.profile_svg().is_absolute());
        let o = parse_args(args("--profile=2500 --profile-out /tmp/x.svg")).unwrap();
        assert_eq!((o.profile, o.profile_out.as_deref()), (Some(2500), Some(Path::new("/tmp/x.svg"))));
        assert_eq!(o.profile_svg(), PathBuf::from("/tmp/x.svg"));
        assert!(parse_args(args("--profile=0")).unwrap_err().contains("100..=100000"));
        assert!(parse_args(args("--profile=100001")).unwrap_err().contains("bad rate"));
        assert!(parse_args(args("--profile=100")).is_ok());
        assert!(parse_args(args("--profile=lots")).unwrap_err().contains("bad rate"));
        assert!(parse_args(args("--profile-out a.svg")).unwrap_err().contains("needs --profile"));
        assert!(parse_args(args("--linux --profile")).unwrap_err().contains("--linux"));
        assert!(USAGE.contains("--profile[=RATE]") && USAGE.contains("--profile-out FILE"));
    }

    #[test]
    fn qemu_status_mapping() {
        assert_eq!(Outcome::from_qemu_status(Some(33)), Outcome::Success);
        assert_eq!(Outcome::from_qemu_status(Some(35)), Outcome::Failure);
        // -no-reboot turns a triple fault into a clean QEMU exit: not a success.
        assert_eq!(Outcome::from_qemu_status(Some(0)), Outcome::Crashed(Some(0)));
        assert_eq!(Outcome::Crashed(None).exit_status(), 3);
    }

    #[test]
    fn init_and_initrd_options() {
        let o = parse_args(args("--batch --init /bin/hello --initrd /tmp/root --cmdline loglevel=debug")).unwrap();
        assert_eq!(o.init.as_deref(), Some("/bin/hello"));
        assert_eq!(o.initrd, Some(PathBuf::from("/tmp/root")));
        assert_eq!(o.kernel_cmdline(), "batch init=/bin/hello loglevel=debug");
        let o = parse_args(args("--initrd-file x.cpio")).unwrap();
        assert_eq!(o.initrd_file, Some(PathBuf::from("x.cpio")));
        assert!(parse_args(args("--initrd a --initrd-file b")).unwrap_err().contains("exclude"));
        assert!(parse_args(["--init".to_string(), "/bin/a b".into()]).unwrap_err().contains("--init"));
        assert!(parse_args(args("--init")).unwrap_err().contains("needs a value"));
        assert!(USAGE.contains("--initrd DIR") && USAGE.contains("--init PATH") && USAGE.contains("--initrd-file FILE"));
    }

    #[test]
    fn init_exit_status_is_parsed_from_the_serial_output() {
        let log = "[    1.5] INFO  demo: 9 passed, 0 failed\r\n[    1.6] INFO  init exited with status 139\r\n[    1.7] INFO  batch mode\n";
        assert_eq!(init_exit_status(log), Some(139));
        assert_eq!(init_exit_status("init exited with status 0"), Some(0));
        assert_eq!(init_exit_status("init exited with status 3\x1b[0m\n"), Some(3));
        // The last report wins.
        assert_eq!(init_exit_status("init exited with status 1\ninit exited with status 2\n"), Some(2));
        assert_eq!(init_exit_status("init exited with status 256"), None);
        assert_eq!(init_exit_status("init exited with status -1"), None);
        assert_eq!(init_exit_status("init exited with status \n"), None);
        assert_eq!(init_exit_status("batch mode: boot complete"), None);
    }

    #[test]
    fn run_exit_status_uses_the_init_status_only_on_success() {
        let run = |outcome, output: &str| Run { outcome, output: output.into(), elapsed: Duration::ZERO };
        assert_eq!(run(Outcome::Success, "init exited with status 7\n").exit_status(), 7);
        assert_eq!(run(Outcome::Success, "init exited with status 0\n").exit_status(), 0);
        assert_eq!(run(Outcome::Success, "no init\n").exit_status(), 0);
        assert_eq!(run(Outcome::Failure, "init exited with status 0\nKernel panic").exit_status(), 1);
        assert_eq!(run(Outcome::Timeout, "init exited with status 0\n").exit_status(), 2);
        assert_eq!(run(Outcome::Crashed(Some(0)), "init exited with status 0\n").exit_status(), 3);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("boot-test-{}-{}", name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pack_dir_keeps_tree_modes_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let root = scratch("pack");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc/empty")).unwrap();
        std::fs::write(root.join("init"), b"\x7fELF").unwrap();
        std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(root.join("bin/tool"), b"tool").unwrap();
        std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("etc/motd"), b"hi\n").unwrap();
        std::fs::set_permissions(root.join("etc/motd"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(root.join("etc/empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/link")).unwrap();

        let bytes = image::pack_dir(&root).unwrap();
        let archive = exec::cpio::Archive::parse(&bytes).unwrap();
        let names: Vec<&str> = archive.entries().map(|e| e.name).collect();
        assert_eq!(names, ["bin", "bin/link", "bin/tool", "etc", "etc/empty", "etc/motd", "init"]);
        let init = archive.get("/init").unwrap();
        assert!(init.is_file());
        assert_eq!((init.permissions(), init.data), (0o750, &b"\x7fELF"[..]));
        assert_eq!(archive.get("bin/tool").unwrap().permissions(), 0o755);
        assert_eq!(archive.get("etc/motd").unwrap().data, b"hi\n");
        let empty = archive.get("etc/empty").unwrap();
        assert!(empty.is_dir() && empty.permissions() == 0o700);
        let link = archive.get("bin/link").unwrap();
        assert!(link.is_symlink() && link.data == b"tool");
        assert!(image::pack_dir(&root.join("missing")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn default_initramfs_has_bin_and_motd_but_no_init() {
        let bytes = std::fs::read(INITRAMFS).unwrap();
        let archive = exec::cpio::Archive::parse(&bytes).unwrap();
        assert!(archive.get("etc/motd").is_some_and(|e| e.is_file()));
        assert!(archive.get("init").is_none());
        let bins: Vec<_> = archive.entries().filter(|e| e.name.starts_with("bin/") && e.is_file()).collect();
        assert!(!bins.is_empty());
        for bin in bins {
            assert_eq!(bin.permissions(), 0o755, "{}", bin.name);
            let plan = exec::elf::parse(bin.data, exec::elf::ET_DYN_BASE);
            assert!(plan.is_ok(), "{}: {:?}", bin.name, plan);
        }
    }

    #[test]
    fn linux_options_parse_and_refuse_what_linux_cannot_do() {
        let o = parse_args(args("--linux --init /bin/hello --mem 1G --smp 2 --icount")).unwrap();
        assert!(o.linux && o.icount);
        assert_eq!(o.linux_commands(false).unwrap(), vec![vec!["/bin/hello".to_string()]]);
        assert!(o.exec_script().is_none());
        assert_eq!(o.effective_timeout(), Some(DEFAULT_BATCH_TIMEOUT), "a Linux run ends by itself");
        assert!(parse_args(args("--linux --uefi --init /x")).unwrap_err().contains("--uefi"));
        assert!(parse_args(args("--linux --ktest")).unwrap_err().contains("--ktest"));
        let exec = |words: &[&str]| parse_args(words.iter().map(|w| w.to_string()));
        assert!(exec(&["--linux", "--init", "/x", "--exec", "run /y"]).unwrap_err().contains("not both"));
        assert!(exec(&["--linux", "--exec", "meminfo"]).unwrap_err().contains("only \"run PATH [ARGS]\""));
        assert!(exec(&["--linux", "--exec", "poweroff", "--exec", "run /x"]).is_err());
        let o = exec(&["--linux", "--exec", "run /bin/fuzz 7 10", "--exec", "run /bin/hello", "--exec", "poweroff"]).unwrap();
        assert_eq!(o.linux_commands(false).unwrap(), vec![args("/bin/fuzz 7 10"), args("/bin/hello")]);
        // Nothing named: /init if the initramfs has one (Linux has no demo).
        let o = parse_args(args("--linux")).unwrap();
        assert_eq!(o.linux_commands(true).unwrap(), vec![args("/init")]);
        assert!(o.linux_commands(false).unwrap_err().contains("nothing to run"));
        assert!(USAGE.contains("--linux"));
    }

    #[test]
    fn linux_append_line_passes_one_word_per_command() {
        let line = linux::append_line(&args("loglevel=4"), &[args("/bin/fuzz 7 10"), args("/bin/hello")]).unwrap();
        assert_eq!(
            line,
            "console=ttyS0 rdinit=/linux-init quiet panic=-1 transparent_hugepage=madvise loglevel=4 -- /bin/fuzz,7,10 /bin/hello"
        );
        assert!(linux::append_line(&[], &[args("bin/hello")]).unwrap_err().contains("absolute path"));
        assert!(linux::append_line(&[], &[args("/bin/x a,b")]).unwrap_err().contains("bad word"));
        assert!(linux::append_line(&[], &[]).is_err());
        let many = vec![args("/bin/hello"); linux::MAX_COMMANDS + 1];
        assert!(linux::append_line(&[], &many).unwrap_err().contains("CONFIG_INIT_ENV_ARG_LIMIT"));
        assert!(linux::append_line(&[], &many[1..]).is_ok());
    }

    #[test]
    fn linux_initramfs_is_the_runs_archive_plus_linux_init() {
        let base = std::fs::read(INITRAMFS).unwrap();
        let bytes = linux::initramfs(&base).unwrap();
        assert_eq!(&bytes[..base.len()], &base[..], "the run's archive comes first, unchanged");
        let archive = exec::cpio::Archive::parse(&bytes).unwrap();
        let init = archive.get(linux::INIT_PATH).expect("linux-init appended");
        assert!(init.is_file() && init.permissions() == 0o755);
        assert_eq!(init.data, &std::fs::read(linux::LINUX_INIT).unwrap()[..]);
        assert!(archive.get("bin/hello").is_some() && archive.get("etc/motd").is_some());
        assert!(archive.get("init").is_none(), "no /init: linux-init lives at {}", linux::INIT_PATH);
    }

    #[test]
    fn linux_outcome_comes_from_the_serial_output() {
        let done = "hello: 1 passed, 0 failed\r\ninit exited with status 0\r\n[    2.1] reboot: Power down\r\n";
        assert_eq!(linux::outcome(Some(0), done), Outcome::Success);
        assert_eq!(linux::outcome(Some(0), "[ 1.0] Kernel panic - not syncing: Attempted to kill init!"), Outcome::Failure);
        assert_eq!(linux::outcome(Some(0), "no init line"), Outcome::Crashed(Some(0)));
        assert_eq!(linux::outcome(Some(1), done), Outcome::Crashed(Some(1)));
        let run = Run { outcome: linux::outcome(Some(0), "init exited with status 139\n"), output: "init exited with status 139\n".into(), elapsed: Duration::ZERO };
        assert_eq!(run.exit_status(), 139);
    }

    #[test]
    fn linux_peer_is_found_by_its_version_file() {
        let dir = scratch("peer");
        assert!(linux::Peer::in_dir(&dir).unwrap_err().contains("make setup"));
        std::fs::write(dir.join("VERSION"), "6.1.0-50-cloud-amd64\nlinux-image-6.1.0-50-cloud-amd64-unsigned 6.1.176-1\n").unwrap();
        assert!(linux::Peer::in_dir(&dir).unwrap_err().contains("no vmlinuz"));
        std::fs::write(dir.join("vmlinuz"), b"MZ").unwrap();
        let peer = linux::Peer::in_dir(&dir).unwrap();
        assert_eq!(peer.release, "6.1.0-50-cloud-amd64");
        assert_eq!(peer.describe(), "6.1.0-50-cloud-amd64 (linux-image-6.1.0-50-cloud-amd64-unsigned 6.1.176-1)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_kernels_get_the_same_machine() {
        let o = parse_args(args("--linux --init /bin/hello --mem 1G --smp 2 --icount -- -d int")).unwrap();
        let peer = linux::Peer { vmlinuz: "/peer/vmlinuz".into(), release: "r".into(), package: String::new() };
        let (temp, cmd) = o.linux_command(&peer).unwrap();
        let linux = format!("{:?}", cmd);
        let ours = format!("{:?}", Options { linux: false, ..o.clone() }.qemu_command());
        let common = "\"-machine\" \"q35\" \"-cpu\" \"max,la57=off\" \"-accel\" \"tcg\" \"-m\" \"1G\" \"-smp\" \"2\"";
        assert!(linux.contains(common) && ours.contains(common), "{}\n{}", linux, ours);
        for flag in ["\"-icount\" \"shift=0\"", "\"-no-reboot\"", "\"-d\" \"int\""] {
            assert!(linux.contains(flag) && ours.contains(flag), "{}", flag);
        }
        assert!(linux.contains("\"-kernel\" \"/peer/vmlinuz\"") && linux.contains(&temp.image.display().to_string()));
        assert!(linux.contains("rdinit=/linux-init") && linux.contains("-- /bin/hello"));
        assert!(temp.image.is_file());
        let dir = temp.dir().to_path_buf();
        drop(temp);
        assert!(!dir.exists(), "temporary directory left behind");
    }

    #[test]
    fn mem_sizes_in_mib() {
        assert_eq!(mem_mib("512M"), Some(512));
        assert_eq!(mem_mib("1G"), Some(1024));
        assert_eq!(mem_mib("2048"), Some(2048));
        assert_eq!(mem_mib("lots"), None);
    }

    #[test]
    fn initrd_builds_a_temporary_image_and_removes_it() {
        let root = scratch("initrd");
        std::fs::write(root.join("motd"), b"x").unwrap();
        let o = Options { initrd: Some(root.clone()), ..Options::default() };
        let temp = o.custom_image().unwrap().expect("an image for --initrd");
        assert!(std::fs::metadata(&temp.image).unwrap().len() > 0);
        let cmd = format!("{:?}", o.qemu_command_for(&temp.image));
        assert!(cmd.contains(&temp.image.display().to_string()), "{}", cmd);
        let dir = temp.dir().to_path_buf();
        drop(temp);
        assert!(!dir.exists(), "temporary directory left behind");
        assert!(Options::default().custom_image().unwrap().is_none());

        // --initrd-file must be a newc archive.
        std::fs::write(root.join("bad.cpio"), b"not an archive").unwrap();
        let o = Options { initrd_file: Some(root.join("bad.cpio")), ..Options::default() };
        assert!(o.custom_image().unwrap_err().to_string().contains("not a cpio newc archive"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
