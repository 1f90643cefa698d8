//! The initial process stack, laid out like Linux's `create_elf_tables`.
//!
//! From the top of the stack down:
//!
//! ```text
//! top - 8        8 zero bytes (Linux reserves a NULL pointer slot at the top)
//!                execfn string (AT_EXECFN points here)
//!                envp strings, argv strings (argv[0] lowest), each NUL-terminated
//!                (align down to 16)
//!                platform string "x86_64\0" (AT_PLATFORM)
//!                16 random bytes (AT_RANDOM)
//!                padding so that rsp is 16-byte aligned
//!                auxv: (type, value) pairs ending with AT_NULL
//!                NULL, envp[envc-1] .. envp[0]
//!                NULL, argv[argc-1] .. argv[0]
//! rsp            argc
//! ```
//!
//! [`build`] returns the bytes from `rsp` up to `top`, ready to copy into the
//! stack mapping; the program starts with `rsp` pointing at `argc`.
//!
//! The auxiliary vector, in Linux's order: `AT_SYSINFO_EHDR` (the vDSO's ELF
//! header, x86's `ARCH_DLINFO`; left out when there is no vDSO), `AT_HWCAP` 0, `AT_PAGESZ` 4096,
//! `AT_CLKTCK` 100, `AT_PHDR`, `AT_PHENT`, `AT_PHNUM`, `AT_BASE` 0 (no
//! interpreter), `AT_FLAGS` 0, `AT_ENTRY`, `AT_UID`/`AT_EUID`/`AT_GID`/
//! `AT_EGID` 0, `AT_SECURE` 0, `AT_RANDOM`, `AT_EXECFN`, `AT_PLATFORM`
//! ("x86_64"), `AT_NULL`.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::elf::LoadPlan;

pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;

/// Longest single argument or environment string, NUL included (Linux's
/// `MAX_ARG_STRLEN`, 32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Largest stack image (strings and pointers): Linux allows a quarter of the
/// 8 MiB stack limit.
pub const MAX_STACK_IMAGE: u64 = 2 << 20;

/// The platform string Linux reports on x86_64.
pub const PLATFORM: &str = "x86_64";

/// Why the stack image cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackError {
    /// A string is longer than [`MAX_ARG_STRLEN`] (`E2BIG`).
    ArgTooLong,
    /// Everything together exceeds [`MAX_STACK_IMAGE`] (`E2BIG`).
    TooLarge,
    /// A string contains a NUL byte (`EINVAL`).
    NulInString,
    /// The image does not fit below `top` (`EFAULT`).
    BadTop,
}

impl StackError {
    /// The Linux errno `execve` would return.
    pub fn errno(&self) -> i32 {
        match self {
            StackError::ArgTooLong | StackError::TooLarge => 7, // E2BIG
            StackError::NulInString => 22,                    // EINVAL
            StackError::BadTop => 14,                         // EFAULT
        }
    }
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackError::ArgTooLong => write!(f, "argument list too long (one string over {} bytes)", MAX_ARG_STRLEN),
            StackError::TooLarge => write!(f, "argument list too long (over {} bytes in all)", MAX_STACK_IMAGE),
            StackError::NulInString => write!(f, "NUL byte inside an argument or environment string"),
            StackError::BadTop => write!(f, "stack image does not fit below the stack top"),
        }
    }
}

/// What the auxiliary vector needs from the executable and the caller.
/// `AT_RANDOM`, `AT_EXECFN` and `AT_PLATFORM` point into the image; the
/// other entries are fixed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuxvInfo<'a> {
    /// `AT_PHDR`: the program headers in memory ([`LoadPlan::phdr_vaddr`]).
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    /// `AT_ENTRY`: the program's entry point.
    pub entry: u64,
    /// The path the program was run as (`AT_EXECFN`).
    pub execfn: &'a str,
    /// Copied to the stack for `AT_RANDOM` (the C library's stack canary seed).
    pub random: [u8; 16],
    /// `AT_SYSINFO_EHDR`: where the vDSO is mapped; 0 leaves the entry out.
    pub sysinfo_ehdr: u64,
}

impl<'a> AuxvInfo<'a> {
    /// The values from `plan`, with `execfn` and `random`.
    pub fn new(plan: &LoadPlan, execfn: &'a str, random: [u8; 16]) -> Self {
        AuxvInfo {
            phdr: plan.phdr_vaddr,
            phent: plan.phent.into(),
            phnum: plan.phnum.into(),
            entry: plan.entry,
            execfn,
            random,
            sysinfo_ehdr: 0,
        }
    }
}

/// A built stack image covering `[low, top)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialStack {
    /// The bytes of `[low, top)`.
    pub bytes: Vec<u8>,
    /// Initial stack pointer: points at argc, 16-byte aligned.
    pub rsp: u64,
    /// Lowest address of the image (equal to `rsp`).
    pub low: u64,
    /// Addresses of the argv and envp pointer arrays and of the auxv.
    pub argv: u64,
    pub envp: u64,
    pub auxv: u64,
    /// Address of the 16 random bytes (`AT_RANDOM`).
    pub random: u64,
    /// Address of the execfn string (`AT_EXECFN`).
    pub execfn: u64,
}

/// Builds the initial stack below `top` (the end of the stack mapping).
pub fn build<A: AsRef<[u8]>, E: AsRef<[u8]>>(
    top: u64,
    argv: &[A],
    envp: &[E],
    info: &AuxvInfo,
) -> Result<InitialStack, StackError> {
    let (execfn, platform, random) = (info.execfn.as_bytes(), PLATFORM.as_bytes(), &info.random);
    let argv: Vec<&[u8]> = argv.iter().map(AsRef::as_ref).collect();
    let envp: Vec<&[u8]> = envp.iter().map(AsRef::as_ref).collect();
    for s in argv.iter().chain(&envp).chain([&execfn, &platform]) {
        if s.contains(&0) {
            return Err(StackError::NulInString);
        }
        if s.len() >= MAX_ARG_STRLEN {
            return Err(StackError::ArgTooLong);
        }
    }
    let limit = top.saturating_sub(MAX_STACK_IMAGE);
    // Moves the cursor down by `n` bytes, failing beyond the size limit.
    let down = |p: u64, n: u64| -> Result<u64, StackError> {
        match p.checked_sub(n) {
            Some(q) if q >= limit => Ok(q),
            Some(_) => Err(StackError::TooLarge),
            None => Err(StackError::BadTop),
        }
    };
    let c_len = |s: &[u8]| s.len() as u64 + 1;

    // Strings: bprm->p starts one pointer below the top; the file name is
    // copied first, then envp and argv, each from the last string down.
    let mut p = down(top, 8)?;
    p = down(p, c_len(execfn))?;
    let execfn_addr = p;
    let mut env_addrs = vec![0; envp.len()];
    for (addr, s) in env_addrs.iter_mut().zip(&envp).rev() {
        p = down(p, c_len(s))?;
        *addr = p;
    }
    let mut arg_addrs = vec![0; argv.len()];
    for (addr, s) in arg_addrs.iter_mut().zip(&argv).rev() {
        p = down(p, c_len(s))?;
        *addr = p;
    }

    // create_elf_tables: align, platform string, random bytes.
    p &= !15;
    p = down(p, c_len(platform))?;
    let platform_addr = p;
    p = down(p, 16)?;
    let random_addr = p;

    let vdso = [(AT_SYSINFO_EHDR, info.sysinfo_ehdr)];
    let vdso = if info.sysinfo_ehdr != 0 { &vdso[..] } else { &[] };
    let auxv: Vec<(u64, u64)> = vdso.iter().copied().chain([
        (AT_HWCAP, 0),
        (AT_PAGESZ, crate::PAGE_SIZE),
        (AT_CLKTCK, 100),
        (AT_PHDR, info.phdr),
        (AT_PHENT, info.phent),
        (AT_PHNUM, info.phnum),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, info.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_RANDOM, random_addr),
        (AT_EXECFN, execfn_addr),
        (AT_PLATFORM, platform_addr),
        (AT_NULL, 0),
    ]).collect();

    // argc, argv[] + NULL, envp[] + NULL, then auxv; rsp rounded down to 16.
    let words = (1 + argv.len() as u64 + 1 + envp.len() as u64 + 1).checked_add(2 * auxv.len() as u64);
    let bytes = words.and_then(|w| w.checked_mul(8)).ok_or(StackError::TooLarge)?;
    let rsp = down(p, bytes)? & !15;
    if rsp < limit {
        return Err(StackError::TooLarge);
    }

    let mut image = Image { low: rsp, bytes: vec![0; (top - rsp) as usize] };
    let mut words: Vec<u64> = Vec::with_capacity((bytes / 8) as usize);
    words.push(argv.len() as u64);
    words.extend(&arg_addrs);
    words.push(0);
    words.extend(&env_addrs);
    words.push(0);
    for (key, value) in &auxv {
        words.extend([key, value]);
    }
    for (i, w) in words.iter().enumerate() {
        image.put(rsp + 8 * i as u64, &w.to_le_bytes());
    }
    for (addr, s) in arg_addrs.iter().zip(&argv).chain(env_addrs.iter().zip(&envp)) {
        image.put(*addr, s);
    }
    image.put(execfn_addr, execfn);
    image.put(platform_addr, platform);
    image.put(random_addr, random);

    let argv_addr = rsp + 8;
    let envp_addr = argv_addr + 8 * (argv.len() as u64 + 1);
    let auxv_addr = envp_addr + 8 * (envp.len() as u64 + 1);
    Ok(InitialStack {
        bytes: image.bytes,
        rsp,
        low: rsp,
        argv: argv_addr,
        envp: envp_addr,
        auxv: auxv_addr,
        random: random_addr,
        execfn: execfn_addr,
    })
}

/// The stack bytes `[low, low + bytes.len())`; strings keep their NUL from
/// the zero fill.
struct Image {
    low: u64,
    bytes: Vec<u8>,
}

impl Image {
    fn put(&mut self, addr: u64, data: &[u8]) {
        let start = (addr - self.low) as usize;
        self.bytes[start..start + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf;
    use alloc::string::String;

    const TOP: u64 = 0x7fff_ffff_f000;

    fn info(execfn: &str, random: [u8; 16]) -> AuxvInfo<'_> {
        let plan = elf::parse(&elf::tests::typical(elf::ET_DYN, 0), elf::ET_DYN_BASE).unwrap();
        AuxvInfo::new(&plan, execfn, random)
    }

    /// Reads the image back like a C runtime would.
    struct Reader<'a>(&'a InitialStack, u64);

    impl Reader<'_> {
        fn word(&self, addr: u64) -> u64 {
            let i = (addr - self.1) as usize;
            u64::from_le_bytes(self.0.bytes[i..i + 8].try_into().unwrap())
        }
        fn string(&self, addr: u64) -> String {
            let i = (addr - self.1) as usize;
            let len = self.0.bytes[i..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8(self.0.bytes[i..i + len].to_vec()).unwrap()
        }
        fn strings(&self, mut addr: u64) -> Vec<String> {
            let mut out = Vec::new();
            while self.word(addr) != 0 {
                out.push(self.string(self.word(addr)));
                addr += 8;
            }
            out
        }
        fn auxv(&self, mut addr: u64) -> Vec<(u64, u64)> {
            let mut out = Vec::new();
            loop {
                let (k, v) = (self.word(addr), self.word(addr + 8));
                out.push((k, v));
                if k == AT_NULL {
                    return out;
                }
                addr += 16;
            }
        }
    }

    #[test]
    fn layout_reads_back_like_linux() {
        let random = [7u8; 16];
        let s = build(TOP, &["/bin/hello", "-v"], &["HOME=/", "TERM=vt100"], &info("/bin/hello", random)).unwrap();
        assert_eq!(s.rsp % 16, 0);
        assert_eq!((s.low, s.bytes.len() as u64), (s.rsp, TOP - s.rsp));
        let r = Reader(&s, s.low);
        assert_eq!(r.word(s.rsp), 2, "argc");
        assert_eq!(r.strings(s.argv), ["/bin/hello", "-v"]);
        assert_eq!(s.envp, s.argv + 3 * 8);
        assert_eq!(r.strings(s.envp), ["HOME=/", "TERM=vt100"]);
        assert_eq!(s.auxv, s.envp + 3 * 8);
        let auxv = r.auxv(s.auxv);
        let get = |key| auxv.iter().find(|(k, _)| *k == key).map(|&(_, v)| v);
        let keys: Vec<u64> = auxv.iter().map(|&(k, _)| k).collect();
        assert_eq!(keys, [16, 6, 17, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 23, 25, 31, 15, 0], "Linux's order");
        assert_eq!(get(AT_PHDR), Some(elf::ET_DYN_BASE + 64));
        assert_eq!((get(AT_PHENT), get(AT_PHNUM), get(AT_PAGESZ), get(AT_CLKTCK)), (Some(56), Some(6), Some(4096), Some(100)));
        assert_eq!(get(AT_ENTRY), Some(elf::ET_DYN_BASE + 0x1010));
        assert_eq!(get(AT_BASE), Some(0));
        assert_eq!(get(AT_RANDOM), Some(s.random));
        assert_eq!(&s.bytes[(s.random - s.low) as usize..][..16], &random);
        assert_eq!(r.string(get(AT_EXECFN).unwrap()), "/bin/hello");
        assert_eq!(r.string(get(AT_PLATFORM).unwrap()), "x86_64");

        // Strings: argv lowest, then envp, then execfn right below the
        // 8-byte NULL slot at the top.
        assert_eq!(s.execfn, TOP - 8 - 11);
        assert_eq!(&s.bytes[s.bytes.len() - 8..], &[0; 8]);
        let argv0 = r.word(s.argv);
        let env1 = r.word(s.envp + 8);
        assert_eq!(env1 + 11, s.execfn);
        assert_eq!(argv0, TOP - 8 - 11 - 11 - 7 - 3 - 11);
        // Platform string sits right below the 16-byte-aligned string area,
        // the random bytes right below it.
        assert_eq!(get(AT_PLATFORM), Some((argv0 & !15) - 7));
        assert_eq!(s.random, (argv0 & !15) - 7 - 16);
        // The auxv ends at most 15 bytes below the random bytes.
        let auxv_end = s.auxv + 16 * auxv.len() as u64;
        assert!(auxv_end <= s.random && s.random - auxv_end < 16);
    }

    #[test]
    fn vdso_address_comes_first_like_linux() {
        let mut a = info("/bin/hello", [0; 16]);
        a.sysinfo_ehdr = 0x7fff_f7ff_e000;
        let s = build(TOP, &["/bin/hello"], &[""; 0], &a).unwrap();
        let auxv = Reader(&s, s.low).auxv(s.auxv);
        assert_eq!(auxv[0], (AT_SYSINFO_EHDR, 0x7fff_f7ff_e000));
        assert_eq!(auxv[1].0, AT_HWCAP);
        assert_eq!(auxv.len(), 19);
        let auxv_end = s.auxv + 16 * auxv.len() as u64;
        assert!(auxv_end <= s.random && s.random - auxv_end < 16);
    }

    #[test]
    fn empty_argv_and_envp() {
        let s = build::<&str, &str>(TOP, &[], &[], &info("", [0; 16])).unwrap();
        let r = Reader(&s, s.low);
        assert_eq!(s.rsp % 16, 0);
        assert_eq!(r.word(s.rsp), 0);
        assert_eq!(r.word(s.argv), 0);
        assert_eq!(r.word(s.envp), 0);
        assert_eq!(r.auxv(s.auxv).len(), 18);
    }

    #[test]
    fn rsp_is_aligned_for_every_shape() {
        let args = ["a", "bb", "ccc", "dddd", "eeeee"];
        for argc in 0..=args.len() {
            for envc in 0..=args.len() {
                for top in [TOP, TOP - 8, TOP - 3] {
                    let s = build(top, &args[..argc], &args[..envc], &info("/x", [1; 16])).unwrap();
                    assert_eq!(s.rsp % 16, 0);
                    assert_eq!(s.rsp + s.bytes.len() as u64, top);
                    let r = Reader(&s, s.low);
                    assert_eq!(r.strings(s.argv), &args[..argc]);
                    assert_eq!(r.strings(s.envp), &args[..envc]);
                }
            }
        }
    }

    #[test]
    fn errors() {
        let a = info("", [0; 16]);
        let long = "x".repeat(MAX_ARG_STRLEN);
        assert_eq!(build(TOP, &[long.as_str()], &[""; 0], &a), Err(StackError::ArgTooLong));
        let ok = "x".repeat(MAX_ARG_STRLEN - 1);
        assert!(build(TOP, &[ok.as_str()], &[""; 0], &a).is_ok());
        let many = vec!["y".repeat(100_000); 21];
        assert_eq!(build(TOP, &many, &[""; 0], &a), Err(StackError::TooLarge));
        let pointers = vec![""; 300_000];
        assert_eq!(build(TOP, &pointers, &[""; 0], &a), Err(StackError::TooLarge));
        assert_eq!(build(TOP, &["a\0b"], &[""; 0], &a), Err(StackError::NulInString));
        assert_eq!(build(TOP, &[""; 0], &["A=\0"], &a), Err(StackError::NulInString));
        assert_eq!(build(64, &["abc"], &[""; 0], &a), Err(StackError::BadTop));
        assert_eq!(build(TOP, &["a"], &[""; 0], &info("x\0", [0; 16])), Err(StackError::NulInString));
        assert_eq!(StackError::TooLarge.errno(), 7);
    }
}
