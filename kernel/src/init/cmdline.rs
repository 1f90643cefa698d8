//! The kernel command line, read from QEMU's fw_cfg file
//! `opt/kernel/cmdline` (the runner writes it; see `boot/`).
//!
//! Words, separated by spaces:
//!
//! | word               | meaning                                              |
//! |--------------------|------------------------------------------------------|
//! | `ktest`            | run every in-kernel test, then power off             |
//! | `ktest=FILTER`     | run the tests whose name contains FILTER             |
//! | `batch`            | no interactive console: power off after boot         |
//! | `loglevel=LEVEL`   | `error`, `warn`, `info` (default), `debug`, `trace`  |
//! | `init_on_alloc=0\|1`, `init_on_free=0\|1` | zero kmalloc objects on allocation / on free |
//! | `init=PATH`        | run PATH as the first process (`init=none`: no process; default `/init`, else the demo of `/bin`) |
//! | `profile[=RATE]`   | sample the kernel at RATE Hz (default 10000) until power-off, which prints the samples (`init/profile.rs`) |
//! | `selftest=WHAT`    | deliberately `panic`, `pagefault`, `hang` or `vmalloc-guard` (runner tests) |
//!
//! Unknown words are reported and ignored.

use alloc::string::String;
use alloc::vec::Vec;

use log::LevelFilter;

pub const FW_CFG_NAME: &str = "opt/kernel/cmdline";
const MAX_LEN: usize = 1024;

/// A deliberate failure used to test the runner's failure reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    Panic,
    PageFault,
    Hang,
    /// Read one byte past the end of a vmalloc area (its guard page).
    VmallocGuard,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub raw: String,
    /// `Some(None)`: all tests; `Some(Some(f))`: tests matching `f`.
    pub ktest: Option<Option<String>>,
    pub batch: bool,
    pub loglevel: Option<LevelFilter>,
    pub selftest: Option<SelfTest>,
    /// `init_on_alloc=0|1`: zero kmalloc objects on allocation (Linux boot option).
    pub init_on_alloc: bool,
    /// `init_on_free=0|1`: zero kmalloc objects on free.
    pub init_on_free: bool,
    /// `init=PATH`: the first user program (`Some("none")` disables it).
    pub init: Option<String>,
    /// `profile[=RATE]`: run the sampling profiler at RATE Hz from boot on.
    pub profile: Option<u64>,
    /// Words that were not understood (reported after the logger is up).
    pub unknown: Vec<String>,
}

impl Cmdline {
    pub fn parse(raw: &str) -> Cmdline {
        let mut c = Cmdline { raw: raw.into(), ..Cmdline::default() };
        for word in raw.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("ktest", v) => c.ktest = Some(v.filter(|f| !f.is_empty()).map(String::from)),
                ("batch", None) => c.batch = true,
                ("init", Some(v)) if !v.is_empty() => c.init = Some(v.into()),
                ("loglevel", Some(v)) => match parse_level(v) {
                    Some(l) => c.loglevel = Some(l),
                    None => c.unknown.push(word.into()),
                },
                ("profile", None) => c.profile = Some(crate::arch::x86_64::profile::DEFAULT_RATE_HZ),
                ("profile", Some(v)) => match v.parse::<u64>() {
                    Ok(rate) => c.profile = Some(rate),
                    Err(_) => c.unknown.push(word.into()),
                },
                ("init_on_alloc", Some(v @ ("0" | "1"))) => c.init_on_alloc = v == "1",
                ("init_on_free", Some(v @ ("0" | "1"))) => c.init_on_free = v == "1",
                ("selftest", Some("panic")) => c.selftest = Some(SelfTest::Panic),
                ("selftest", Some("pagefault")) => c.selftest = Some(SelfTest::PageFault),
                ("selftest", Some("hang")) => c.selftest = Some(SelfTest::Hang),
                ("selftest", Some("vmalloc-guard")) => c.selftest = Some(SelfTest::VmallocGuard),
                _ => c.unknown.push(word.into()),
            }
        }
        c
    }
}

fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Reads and parses the command line (empty if there is none).
pub fn read() -> Cmdline {
    let mut buf = [0u8; MAX_LEN];
    let len = crate::arch::x86_64::fw_cfg::read_file(FW_CFG_NAME, &mut buf).unwrap_or(0);
    let text = core::str::from_utf8(&buf[..len]).unwrap_or("");
    Cmdline::parse(text.trim_end_matches('\0'))
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(cmdline_parses_known_words),
    crate::ktest!(cmdline_keeps_unknown_words_for_the_report),
];

fn cmdline_parses_known_words() -> crate::lib::ktest::KResult {
    let c = Cmdline::parse("ktest=heap batch loglevel=debug");
    crate::kassert_eq!(c.ktest, Some(Some(String::from("heap"))));
    crate::kassert!(c.batch, "batch not set");
    crate::kassert_eq!(c.loglevel, Some(LevelFilter::Debug));
    crate::kassert_eq!(Cmdline::parse("ktest").ktest, Some(None));
    crate::kassert_eq!(Cmdline::parse("selftest=hang").selftest, Some(SelfTest::Hang));
    crate::kassert_eq!(Cmdline::parse("").ktest, None);
    crate::kassert_eq!(Cmdline::parse("init=/bin/hello").init.as_deref(), Some("/bin/hello"));
    let c = Cmdline::parse("init_on_free=1 init_on_alloc=0");
    crate::kassert!(c.init_on_free && !c.init_on_alloc && c.unknown.is_empty(), "init_on_* not parsed: {:?}", c);
    crate::kassert_eq!(Cmdline::parse("profile").profile, Some(crate::arch::x86_64::profile::DEFAULT_RATE_HZ));
    crate::kassert_eq!(Cmdline::parse("profile=2000").profile, Some(2000));
    crate::kassert_eq!(Cmdline::parse("profile=fast").unknown.len(), 1);
    Ok(())
}

fn cmdline_keeps_unknown_words_for_the_report() -> crate::lib::ktest::KResult {
    let c = Cmdline::parse("bogus loglevel=loud selftest=nothing batch=1");
    crate::kassert_eq!(c.unknown.len(), 4);
    crate::kassert!(!c.batch, "batch=1 is not the batch flag");
    Ok(())
}
