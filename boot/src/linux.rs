//! The Linux peer (`boot --linux`): Linux itself, booted in the same QEMU
//! (same CPU model, memory, CPUs, `-icount`) with the same initramfs, runs
//! the same static programs. It is the reproducible oracle of the
//! user-program tests (`tests/boot.rs`) and the peer for in-guest costs.
//!
//! `scripts/setup.sh` fetches one pinned Debian kernel,
//! `linux-image-6.1.0-50-cloud-amd64-unsigned` (or the newest 6.1 cloud
//! kernel if the mirror dropped it), into `target/linux/`: `vmlinuz`,
//! `config`, and `VERSION` (the release, then the package and its version).
//! `LINUX_PEER_DIR` points the runner elsewhere.
//!
//! The runner appends `/linux-init` (`user/linux/linux_init.c`, built by the
//! build script) to a copy of the initramfs — Linux unpacks concatenated cpio
//! archives, as our kernel does — and boots
//! `-kernel vmlinuz -initrd COPY -append "console=ttyS0 rdinit=/linux-init
//! quiet ... -- COMMAND..."`, each COMMAND one word, the path and arguments
//! joined by commas (`/bin/fuzz,7,3000`). linux-init runs the commands,
//! prints `init exited with status N` like our kernel, and powers off.

use std::path::{Path, PathBuf};

use crate::Outcome;

/// The Linux peer's init, built by the build script (empty without musl-gcc).
pub const LINUX_INIT: &str = env!("LINUX_INIT");
/// Where linux-init lives in the Linux peer's initramfs (not `/init`: an
/// initramfs given with `--initrd` may have its own, which linux-init then runs).
pub const INIT_PATH: &str = "/linux-init";
/// Where `scripts/setup.sh` puts the kernel (unless `LINUX_PEER_DIR` is set).
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/linux");
/// Joins a command's path and arguments into one word for linux-init.
pub const SEPARATOR: char = ',';
/// Linux hands init at most CONFIG_INIT_ENV_ARG_LIMIT (32) argv entries,
/// argv[0] included, and panics ("Too many boot init vars") beyond: at most
/// this many commands per boot.
pub const MAX_COMMANDS: usize = 31;
/// linux-init's limit on the words of one command.
pub const MAX_COMMAND_WORDS: usize = 64;
/// x86 COMMAND_LINE_SIZE.
pub const MAX_APPEND_LEN: usize = 2047;

/// Kernel command-line words every Linux peer run starts with; `--cmdline`
/// words follow them. `quiet` keeps Linux's boot log (and its KERN_INFO
/// lines such as `segfault at ...`) off the console, so only errors and the
/// programs' output show; `panic=-1` turns a panic into a reboot, which
/// `-no-reboot` turns into a QEMU exit; THP in `madvise` mode is our
/// kernel's default (`transparent_hugepage = always [madvise] never`).
pub const BASE_APPEND: &[&str] =
    &["console=ttyS0", "rdinit=/linux-init", "quiet", "panic=-1", "transparent_hugepage=madvise"];

/// A Linux kernel fetched by `scripts/setup.sh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub vmlinuz: PathBuf,
    /// `uname -r`, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    /// The Debian package and version it came from.
    pub package: String,
}

impl Peer {
    /// The peer in `LINUX_PEER_DIR`, else in [`DEFAULT_DIR`].
    pub fn find() -> Result<Peer, String> {
        let dir = std::env::var_os("LINUX_PEER_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        Peer::in_dir(&dir)
    }

    pub fn in_dir(dir: &Path) -> Result<Peer, String> {
        let missing = |what: &str| {
            format!("no Linux peer in {} ({}): run `make setup` (scripts/setup.sh fetches it)", dir.display(), what)
        };
        let version = std::fs::read_to_string(dir.join("VERSION")).map_err(|_| missing("no VERSION file"))?;
        let mut lines = version.lines().map(str::trim);
        let release = lines.next().filter(|l| !l.is_empty()).ok_or_else(|| missing("empty VERSION file"))?;
        let package = lines.next().unwrap_or("").to_owned();
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.is_file() {
            return Err(missing("no vmlinuz"));
        }
        Ok(Peer { vmlinuz, release: release.to_owned(), package })
    }

    /// `6.1.0-50-cloud-amd64 (linux-image-6.1.0-50-cloud-amd64-unsigned 6.1.176-1)`.
    pub fn describe(&self) -> String {
        if self.package.is_empty() {
            self.release.clone()
        } else {
            format!("{} ({})", self.release, self.package)
        }
    }
}

/// The command line for a Linux peer run: [`BASE_APPEND`], `extra`, then
/// `--` and one word per command for linux-init (path and arguments joined
/// by [`SEPARATOR`]).
pub fn append_line(extra: &[String], commands: &[Vec<String>]) -> Result<String, String> {
    if commands.is_empty() || commands.iter().any(|c| c.is_empty()) {
        return Err("--linux: no program to run".into());
    }
    if commands.len() > MAX_COMMANDS {
        return Err(format!(
            "--linux: {} programs, Linux passes init at most {} words (CONFIG_INIT_ENV_ARG_LIMIT)",
            commands.len(),
            MAX_COMMANDS
        ));
    }
    let mut init_words: Vec<String> = Vec::new();
    for command in commands {
        if !command[0].starts_with('/') {
            return Err(format!("--linux: '{}': need an absolute path", command[0]));
        }
        if command.len() > MAX_COMMAND_WORDS {
            return Err(format!("--linux: {}: more than {} arguments", command[0], MAX_COMMAND_WORDS - 1));
        }
        let bad = |w: &&String| w.is_empty() || w.contains(|c: char| c.is_whitespace() || c == SEPARATOR || c == '"');
        if let Some(bad) = command.iter().find(bad) {
            return Err(format!("--linux: bad word '{}' (no spaces, quotes or '{}')", bad, SEPARATOR));
        }
        init_words.push(command.join(&SEPARATOR.to_string()));
    }
    let mut words: Vec<&str> = BASE_APPEND.to_vec();
    words.extend(extra.iter().map(String::as_str));
    words.push("--");
    words.extend(init_words.iter().map(String::as_str));
    let line = words.join(" ");
    if line.len() > MAX_APPEND_LEN {
        return Err(format!("--linux: kernel command line of {} bytes, Linux takes {}", line.len(), MAX_APPEND_LEN));
    }
    Ok(line)
}

/// `base` (a cpio newc archive) followed by an archive holding linux-init.
pub fn initramfs(base: &[u8]) -> Result<Vec<u8>, String> {
    if LINUX_INIT.is_empty() {
        return Err("--linux: linux-init was not built (musl-gcc missing: run `make setup`)".into());
    }
    let init = std::fs::read(LINUX_INIT).map_err(|e| format!("{}: {}", LINUX_INIT, e))?;
    let mut archive = exec::cpio::Writer::new();
    archive.file(INIT_PATH.trim_start_matches('/'), 0o755, &init).map_err(|e| e.to_string())?;
    let mut bytes = base.to_vec();
    // Each archive starts 4-byte aligned; NULs in between are skipped.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend_from_slice(&archive.finish());
    Ok(bytes)
}

/// How a Linux peer run ended: QEMU exits with status 0 both after
/// linux-init's power-off and after a panic (`panic=-1` + `-no-reboot`), so
/// the serial output decides.
pub fn outcome(qemu_status: Option<i32>, output: &str) -> Outcome {
    let panicked = output.contains("Kernel panic - not syncing");
    match qemu_status {
        Some(0) if panicked => Outcome::Failure,
        Some(0) if crate::init_exit_status(output).is_some() => Outcome::Success,
        other => Outcome::Crashed(other),
    }
}
