//! The host side of the kernel's sampling profiler (`boot --profile`).
//!
//! The kernel (`kernel/src/arch/x86_64/profile.rs`) samples the interrupted
//! instruction at a fixed rate from a PIT-driven NMI and, at power-off, prints
//! one line per unique stack, leaf first, in hex:
//!
//! ```text
//! prof: rate 10000 Hz (PIT divisor 119), image ffffffff80000000, 5802 NMIs in 0.580 s
//! prof: 14 K ffffffff800d0c6d;ffffffff800cbd00;ffffffff800a3f5a
//! prof: 3 U 401a2c
//! prof: 5802 samples (5640 kernel, 162 user, 0 dropped)
//! ```
//!
//! This module parses those lines ([`parse`]), names every kernel address with
//! the kernel ELF's symbol table and DWARF ([`ElfSymbols`], the `addr2line`
//! crate, Rust names demangled), and builds the report ([`fold`]): functions
//! by self samples (the symbol-table function the sampled RIP lies in, as
//! `perf report` counts them) and folded stacks (`root;...;leaf COUNT`, inlined
//! functions expanded and marked ` (inlined)`, as `perf script` does), which
//! [`write_flamegraph`] turns into an SVG with `inferno`. A user-mode sample
//! is the single frame `[user]` (user programs are not walked).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The runner's default rate (the kernel's `profile` default too).
pub const DEFAULT_RATE_HZ: u64 = 10_000;
/// The rates the kernel accepts (`MIN_RATE_HZ`/`MAX_RATE_HZ` in its
/// `arch/x86_64/profile.rs`: its tick rate, and 10% of the machine).
pub const RATES_HZ: std::ops::RangeInclusive<u64> = 100..=100_000;
/// How many functions the report lists.
pub const TOP_FUNCTIONS: usize = 25;
/// The frame user-mode samples get.
pub const USER_FRAME: &str = "[user]";

/// One unique stack the kernel printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    pub count: u64,
    pub user: bool,
    /// Leaf (the sampled RIP) first, then the return addresses.
    pub addrs: Vec<u64>,
}

/// The kernel's `prof: N samples (K kernel, U user, D dropped)` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub samples: u64,
    pub kernel: u64,
    pub user: u64,
    pub dropped: u64,
}

/// One dump of the kernel's profiler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub rate_hz: u64,
    /// Where the kernel image is mapped (the ELF's address 0 for a PIE kernel).
    pub image_base: u64,
    pub stacks: Vec<Stack>,
    pub summary: Summary,
}

/// Parses the last profiler dump in the serial output: the `prof: rate` header,
/// the stack lines after it and the summary line that closes it. Other lines
/// (log lines, program output) may be interleaved; `\r` is ignored.
pub fn parse(output: &str) -> Result<Profile, String> {
    let lines: Vec<&str> = output.lines().map(|l| l.trim_end_matches('\r')).collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("prof: rate "))
        .ok_or("no profile in the serial output (no 'prof: rate' line: was the kernel booted with profile=RATE?)")?;
    let mut profile = header(lines[start])?;
    let mut closed = false;
    for line in &lines[start + 1..] {
        let Some(rest) = line.strip_prefix("prof: ") else { continue };
        if rest.ends_with(" dropped)") {
            profile.summary = summary(rest).ok_or_else(|| format!("bad summary line '{}'", line))?;
            closed = true;
            break;
        }
        profile.stacks.push(stack(rest).ok_or_else(|| format!("bad profile line '{}'", line))?);
    }
    if !closed {
        return Err("the profile dump has no summary line (output cut short?)".into());
    }
    let counted: u64 = profile.stacks.iter().map(|s| s.count).sum();
    if counted != profile.summary.samples {
        return Err(format!("the stack lines count {} samples, the summary {}", counted, profile.summary.samples));
    }
    Ok(profile)
}

/// `prof: rate R Hz (PIT divisor D), image BASE, ...`
fn header(line: &str) -> Result<Profile, String> {
    let bad = || format!("bad profile header '{}'", line);
    let rest = line.strip_prefix("prof: rate ").ok_or_else(bad)?;
    let rate_hz = rest.split(' ').next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let base = rest.split_once(", image ").and_then(|(_, b)| b.split(',').next()).ok_or_else(bad)?;
    let image_base = u64::from_str_radix(base.trim(), 16).map_err(|_| bad())?;
    Ok(Profile { rate_hz, image_base, ..Profile::default() })
}

/// `COUNT K|U ADDR;ADDR;...` (hex addresses, leaf first).
fn stack(rest: &str) -> Option<Stack> {
    let mut words = rest.split(' ');
    let count = words.next()?.parse().ok()?;
    let user = match words.next()? {
        "K" => false,
        "U" => true,
        _ => return None,
    };
    let addrs = words.next()?.split(';').map(|a| u64::from_str_radix(a, 16).ok()).collect::<Option<Vec<u64>>>()?;
    (words.next().is_none() && !addrs.is_empty() && count > 0).then_some(Stack { count, user, addrs })
}

/// `N samples (K kernel, U user, D dropped)`
fn summary(rest: &str) -> Option<Summary> {
    let numbers: Vec<u64> = rest.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().ok()).collect::<Option<_>>()?;
    match numbers[..] {
        [samples, kernel, user, dropped] if samples == kernel + user => Some(Summary { samples, kernel, user, dropped }),
        _ => None,
    }
}

/// Names kernel addresses (run-time addresses, as the kernel printed them).
pub trait Symbolize {
    /// The function whose code holds `addr` (the symbol table's, so an inlined
    /// function is counted in the one it was inlined into), demangled.
    fn function(&self, addr: u64) -> String;
    /// The call chain at `addr`, outermost first: the function, then the
    /// inlined functions down to the innermost, those marked ` (inlined)`.
    /// `return_address`: `addr` follows a call (looked up at `addr - 1`).
    fn frames(&self, addr: u64, return_address: bool) -> Vec<String>;
}

/// Symbols from the kernel ELF (symbol table + DWARF, through `addr2line`).
pub struct ElfSymbols {
    loader: addr2line::Loader,
    /// Subtracted from a run-time address to get the ELF's address: the image
    /// base for a position-independent kernel (ELF type `ET_DYN`), else 0.
    bias: u64,
    cache: RefCell<HashMap<(u64, bool), Vec<String>>>,
}

impl ElfSymbols {
    /// Loads `elf`, a kernel that runs mapped at `image_base`.
    pub fn load(elf: &Path, image_base: u64) -> Result<ElfSymbols, String> {
        let bias = match elf_type(elf)? {
            ET_DYN => image_base,
            _ => 0,
        };
        let loader = addr2line::Loader::new(elf).map_err(|e| format!("{}: {}", elf.display(), e))?;
        Ok(ElfSymbols { loader, bias, cache: RefCell::new(HashMap::new()) })
    }

    /// The symbol-table name at ELF address `probe` (run-time `addr`).
    fn symbol_at(&self, addr: u64, probe: u64) -> String {
        match self.loader.find_symbol(probe) {
            Some(name) => demangle(name),
            None => format!("[unknown {:x}]", addr),
        }
    }
}

const ET_DYN: u16 = 3;

/// The ELF header's `e_type` (2 `ET_EXEC`, 3 `ET_DYN`).
fn elf_type(elf: &Path) -> Result<u16, String> {
    use std::io::Read;
    let mut head = [0u8; 18];
    std::fs::File::open(elf)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("{}: {}", elf.display(), e))?;
    if &head[..4] != b"\x7fELF" || head[5] != 1 {
        return Err(format!("{}: not a little-endian ELF file", elf.display()));
    }
    Ok(u16::from_le_bytes([head[16], head[17]]))
}

/// A Rust symbol without its hash (`kernel::kernel_main`), other names as they are.
pub fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

impl Symbolize for ElfSymbols {
    fn function(&self, addr: u64) -> String {
        self.symbol_at(addr, addr.wrapping_sub(self.bias))
    }

    fn frames(&self, addr: u64, return_address: bool) -> Vec<String> {
        if let Some(names) = self.cache.borrow().get(&(addr, return_address)) {
            return names.clone();
        }
        let probe = addr.wrapping_sub(self.bias).wrapping_sub(return_address as u64);
        // addr2line gives the innermost inlined function first.
        let mut names: Vec<String> = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(probe) {
            while let Ok(Some(frame)) = frames.next() {
                if let Some(name) = frame.function.as_ref().and_then(|f| f.demangle().ok()) {
                    names.push(name.into_owned());
                }
            }
        }
        names.reverse();
        if names.is_empty() {
            // No DWARF (the entry assembly): the symbol table's name.
            names.push(self.symbol_at(addr, probe));
        }
        for name in names.iter_mut().skip(1) {
            name.push_str(" (inlined)");
        }
        self.cache.borrow_mut().insert((addr, return_address), names.clone());
        names
    }
}

/// What the runner prints and draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub summary: Summary,
    pub rate_hz: u64,
    /// Functions by self samples, most first (ties by name).
    pub top: Vec<(String, u64)>,
    /// Folded stacks `root;...;leaf COUNT`, sorted.
    pub folded: Vec<String>,
}

/// Names every stack of `profile` with `symbols`.
pub fn fold(profile: &Profile, symbols: &impl Symbolize) -> Report {
    let mut selfs: HashMap<String, u64> = HashMap::new();
    let mut folded: HashMap<String, u64> = HashMap::new();
    for stack in &profile.stacks {
        let (leaf, frames) = if stack.user {
            (USER_FRAME.to_string(), vec![USER_FRAME.to_string()])
        } else {
            let mut frames = Vec::new();
            for (i, &addr) in stack.addrs.iter().enumerate().rev() {
                frames.extend(symbols.frames(addr, i > 0));
            }
            (symbols.function(stack.addrs[0]), frames)
        };
        *selfs.entry(leaf).or_default() += stack.count;
        // inferno splits frames at ';' and the count at the last space.
        let line = frames.iter().map(|f| short_name(f).replace(';', ",")).collect::<Vec<_>>().join(";");
        *folded.entry(line).or_default() += stack.count;
    }
    let mut top: Vec<(String, u64)> = selfs.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut folded: Vec<String> = folded.into_iter().map(|(stack, n)| format!("{} {}", stack, n)).collect();
    folded.sort();
    Report { summary: profile.summary, rate_hz: profile.rate_hz, top, folded }
}

impl Report {
    /// The summary and the top `n` functions by self samples, with their share.
    pub fn top_text(&self, n: usize) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "profile: {} samples at {} Hz ({} kernel, {} user, {} dropped)",
            s.samples, self.rate_hz, s.kernel, s.user, s.dropped
        );
        let _ = writeln!(out, "  {:>6} {:>8}  function (self samples)", "share", "samples");
        for (name, count) in self.top.iter().take(n) {
            let share = 100.0 * *count as f64 / s.samples.max(1) as f64;
            let _ = writeln!(out, "  {:>5.1}% {:>8}  {}", share, count, short_name(name));
        }
        out
    }
}

/// Writes the flame graph of `report` to `svg` with `title`.
pub fn write_flamegraph(report: &Report, title: &str, svg: &Path) -> Result<(), String> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "samples".into();
    // Colours from the function names: the same run draws the same picture.
    options.deterministic = true;
    // Frames narrower than a pixel are invisible anyway (inferno's default
    // keeps them down to 0.1 px); leaving them out keeps the SVG small. The
    // folded stacks have them all.
    options.min_width = 1.0;
    let file = std::fs::File::create(svg).map_err(|e| format!("{}: {}", svg.display(), e))?;
    let lines = report.folded.iter().map(String::as_str);
    inferno::flamegraph::from_lines(&mut options, lines, std::io::BufWriter::new(file))
        .map_err(|e| format!("flame graph {}: {}", svg.display(), e))
}

/// The folded stacks' file next to the SVG (`profile.svg` → `profile.folded`).
pub fn folded_path(svg: &Path) -> PathBuf {
    svg.with_extension("folded")
}

/// The whole runner step: parse the dump in `output`, symbolise with `elf`,
/// write `svg` and the folded stacks next to it; returns the report.
pub fn report(output: &str, elf: &Path, svg: &Path, title: &str) -> Result<Report, String> {
    let profile = parse(output)?;
    let symbols = ElfSymbols::load(elf, profile.image_base)?;
    let report = fold(&profile, &symbols);
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
    }
    let folded = folded_path(svg);
    let mut text = report.folded.join("\n");
    text.push('\n');
    std::fs::write(&folded, text).map_err(|e| format!("{}: {}", folded.display(), e))?;
    write_flamegraph(&report, title, svg)?;
    Ok(report)
}

/// Names longer than this are shortened by [`short_name`].
pub const SHORT_NAME_LEN: usize = 100;

/// Shortens a long name (over [`SHORT_NAME_LEN`] bytes) for the terminal and
/// the flame graph: generic arguments nested deeper than the first `<...>` are
/// elided as `..` (`<mm::mman::UserMm<..>>::mprotect`).
pub fn short_name(name: &str) -> Cow<'_, str> {
    if name.len() <= SHORT_NAME_LEN {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(100);
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => {
                depth += 1;
                if depth <= 1 {
                    out.push(c);
                } else if depth == 2 {
                    out.push_str("<..");
                }
            }
            '>' => {
                if depth <= 2 {
                    out.push(c);
                }
                depth = depth.saturating_sub(1);
            }
            _ if depth <= 1 => out.push(c),
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
[    0.14] INFO  profile: sampling at 10026 Hz
prof: rate 10026 Hz (PIT divisor 119), image ffffffff80000000, 7 NMIs in 0.001 s\r
prof: 4 K ffffffff80000010;ffffffff80000020;ffffffff80000030\r
some program output in between
prof: 2 K ffffffff80000011;ffffffff80000020\r
prof: 1 U 401a2c\r
prof: 7 samples (6 kernel, 1 user, 0 dropped)\r
MemTotal: 1 kB
";

    #[test]
    fn parses_the_last_dump() {
        let p = parse(DUMP).unwrap();
        assert_eq!((p.rate_hz, p.image_base), (10026, 0xffff_ffff_8000_0000));
        assert_eq!(p.summary, Summary { samples: 7, kernel: 6, user: 1, dropped: 0 });
        assert_eq!(p.stacks.len(), 3);
        assert_eq!(p.stacks[0], Stack { count: 4, user: false, addrs: vec![0xffff_ffff_8000_0010, 0xffff_ffff_8000_0020, 0xffff_ffff_8000_0030] });
        assert_eq!(p.stacks[2], Stack { count: 1, user: true, addrs: vec![0x401a2c] });
        // A later dump replaces an earlier one.
        let two = format!("{}prof: rate 100 Hz (PIT divisor 11931), image 0, 1 NMIs in 0.010 s\nprof: 1 U 1\nprof: 1 samples (0 kernel, 1 user, 3 dropped)\n", DUMP);
        let p = parse(&two).unwrap();
        assert_eq!((p.rate_hz, p.image_base, p.stacks.len(), p.summary.dropped), (100, 0, 1, 3));
    }

    #[test]
    fn rejects_broken_dumps_with_a_message() {
        assert!(parse("no profile here\n").unwrap_err().contains("profile=RATE"));
        let cut = DUMP.replace("prof: 7 samples (6 kernel, 1 user, 0 dropped)", "");
        assert!(parse(&cut).unwrap_err().contains("no summary"));
        let bad = DUMP.replace("prof: 1 U 401a2c", "prof: 1 X 401a2c");
        assert!(parse(&bad).unwrap_err().contains("bad profile line"));
        let bad = DUMP.replace("prof: 1 U 401a2c", "prof: 1 U 40zz");
        assert!(parse(&bad).unwrap_err().contains("bad profile line"));
        let wrong = DUMP.replace("prof: 4 K", "prof: 5 K");
        assert!(parse(&wrong).unwrap_err().contains("count 8 samples, the summary 7"));
        let bad = DUMP.replace("(6 kernel, 1 user", "(5 kernel, 1 user");
        assert!(parse(&bad).unwrap_err().contains("bad summary"));
        assert!(header("prof: rate fast Hz, image 0").is_err());
        assert!(header("prof: rate 10 Hz (PIT divisor 1), image xyz, 0 NMIs").is_err());
    }

    /// Names `0x..1N` as function `fN`; a return address `0x..2N` as the
    /// inlined chain `outer` → `inner;N` (a ';' to be replaced).
    struct Fake;
    impl Symbolize for Fake {
        fn function(&self, addr: u64) -> String {
            format!("f{:x}", addr & 0xff)
        }
        fn frames(&self, addr: u64, return_address: bool) -> Vec<String> {
            match addr & 0xf0 {
                0x20 => {
                    assert!(return_address, "a caller is a return address");
                    vec!["outer".into(), format!("[u8; {}] (inlined)", addr & 0xf)]
                }
                _ => vec![self.function(addr)],
            }
        }
    }

    #[test]
    fn folds_root_first_and_counts_self_samples_by_function() {
        let report = fold(&parse(DUMP).unwrap(), &Fake);
        assert_eq!(report.top, [("f10".to_string(), 4), ("f11".to_string(), 2), (USER_FRAME.to_string(), 1)]);
        let mut expected = vec![
            "f30;outer;[u8, 0] (inlined);f10 4".to_string(),
            "outer;[u8, 0] (inlined);f11 2".to_string(),
            "[user] 1".to_string(),
        ];
        expected.sort();
        assert_eq!(report.folded, expected);
        let text = report.top_text(2);
        assert!(text.starts_with("profile: 7 samples at 10026 Hz (6 kernel, 1 user, 0 dropped)\n"), "{}", text);
        assert!(text.contains("   57.1%        4  f10\n") && text.contains("   28.6%        2  f11\n"), "{}", text);
        assert!(!text.contains("[user]"), "only the top 2: {}", text);
    }

    #[test]
    fn long_generic_names_are_shortened() {
        let long = format!("<mm::mman::UserMm<mm::page_alloc::PageAlloc<{}>, kernel::memory::pgtable::DirectMapPt>>::mprotect", "x".repeat(60));
        assert_eq!(short_name(&long), "<mm::mman::UserMm<..>>::mprotect");
        assert_eq!(short_name("<alloc::vec::Vec<u8>>::push"), "<alloc::vec::Vec<u8>>::push");
        assert_eq!(demangle("_RNvCsbKNObxAyJfr_6kernel11kernel_main"), "kernel::kernel_main");
        assert_eq!(demangle("memmove"), "memmove");
    }

    /// The real kernel: `kernel_main`'s address from the ELF's symbol table,
    /// run-time address = image base + ELF address (the kernel is a PIE).
    #[test]
    fn names_a_real_kernel_function_from_the_kernel_elf() {
        use object::{Object, ObjectSymbol};
        let bytes = std::fs::read(crate::KERNEL_ELF).unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        let main = file.symbols().find(|s| s.name().is_ok_and(|n| demangle(n) == "kernel::kernel_main")).expect("kernel_main in the symbol table");
        let base = 0xffff_ffff_8000_0000;
        let symbols = ElfSymbols::load(Path::new(crate::KERNEL_ELF), base).unwrap();
        let addr = base + main.address() + 4;
        assert_eq!(symbols.function(addr), "kernel::kernel_main");
        let frames = symbols.frames(addr, false);
        assert_eq!(frames.first().map(String::as_str), Some("kernel::kernel_main"), "{:?}", frames);
        assert!(symbols.function(base - 0x1000).starts_with("[unknown"));
    }

    #[test]
    fn writes_a_flame_graph_and_the_folded_stacks() {
        let dir = std::env::temp_dir().join(format!("boot-profile-{}", std::process::id()));
        let svg = dir.join("p.svg");
        let report = fold(&parse(DUMP).unwrap(), &Fake);
        std::fs::create_dir_all(&dir).unwrap();
        write_flamegraph(&report, "test profile", &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("test profile") && text.contains("f10"), "{}", &text[..200]);
        assert_eq!(folded_path(&svg), dir.join("p.folded"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
