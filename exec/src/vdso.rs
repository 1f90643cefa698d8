//! The vDSO image: the small ELF shared object the kernel maps into every
//! process as `[vdso]` (Linux `arch/x86/entry/vdso/`, whose `vdso2c` turns a
//! linked `vdso64.so` into a byte array). Here the kernel supplies the code
//! (position-independent machine code, see the kernel's
//! `arch/x86_64/vdso.rs`) and [`build`] wraps it in the ELF structures a C
//! library's vDSO lookup reads: musl's `__vdsosym` walks the program headers
//! for `PT_LOAD` (load bias = image address + `p_offset` - `p_vaddr`) and
//! `PT_DYNAMIC`, then uses `DT_STRTAB`, `DT_SYMTAB`, `DT_HASH` (the symbol
//! count is `nchain`), `DT_VERSYM` and `DT_VERDEF` to find, say,
//! `__vdso_clock_gettime` of version `LINUX_2.6`.
//!
//! Layout of the one page (linked at 0, so file offsets are addresses):
//!
//! ```text
//! 0x000  ELF header
//! 0x040  program headers: PT_LOAD (the whole page, R+X), PT_DYNAMIC
//!        .hash (SysV: nbucket, nchain, buckets, chains)
//!        .dynsym (a null symbol, then one per export)
//!        .dynstr
//!        .gnu.version (versym, one u16 per symbol)
//!        .gnu.version_d (verdefs: the base "linux-vdso.so.1", then LINUX_2.6)
//!        .dynamic
//! TEXT_OFFSET  the code
//! ```
//!
//! There are no section headers (`e_shnum` 0): loaders use the program
//! headers and the dynamic section only.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::PAGE_SIZE;

/// Where the code starts in the image. The code reads the `[vvar]` page,
/// mapped right below the vDSO page, at `PAGE_SIZE + TEXT_OFFSET` bytes below
/// its first byte.
pub const TEXT_OFFSET: usize = 0x600;
/// Size of the image: one page.
pub const IMAGE_SIZE: usize = PAGE_SIZE as usize;
/// The vDSO's `DT_SONAME` and base version name, as on Linux.
pub const SONAME: &str = "linux-vdso.so.1";
/// The version of every exported symbol (Linux x86_64).
pub const VERSION: &str = "LINUX_2.6";

pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const DT_NULL: u64 = 0;
pub const DT_HASH: u64 = 4;
pub const DT_STRTAB: u64 = 5;
pub const DT_SYMTAB: u64 = 6;
pub const DT_STRSZ: u64 = 10;
pub const DT_SYMENT: u64 = 11;
pub const DT_SONAME: u64 = 14;
pub const DT_VERSYM: u64 = 0x6fff_fff0;
pub const DT_VERDEF: u64 = 0x6fff_fffc;
pub const DT_VERDEFNUM: u64 = 0x6fff_fffd;
pub const STT_FUNC: u8 = 2;
pub const STB_GLOBAL: u8 = 1;
pub const STB_WEAK: u8 = 2;
pub const VER_FLG_BASE: u16 = 1;
const SYM_SIZE: usize = 24;
const PHDR_SIZE: usize = 56;
/// Section index given to defined symbols (any non-zero value: "defined";
/// there is no section table).
const SHN_TEXT: u16 = 1;

/// One exported function: `name` at byte `offset` of the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export<'a> {
    pub name: &'a str,
    pub offset: usize,
    /// A weak alias (`clock_gettime` for `__vdso_clock_gettime`), as Linux's
    /// vDSO exports them.
    pub weak: bool,
}

/// Why [`build`] cannot make the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VdsoError {
    /// The tables do not fit below [`TEXT_OFFSET`].
    TablesTooLarge,
    /// The code does not fit in the page after [`TEXT_OFFSET`].
    TextTooLarge,
    /// An export lies outside the code, or its name is empty or has a NUL.
    BadExport,
}

impl fmt::Display for VdsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VdsoError::TablesTooLarge => write!(f, "vDSO symbol tables do not fit below offset {:#x}", TEXT_OFFSET),
            VdsoError::TextTooLarge => write!(f, "vDSO code larger than {} bytes", IMAGE_SIZE - TEXT_OFFSET),
            VdsoError::BadExport => write!(f, "vDSO export outside the code or with a bad name"),
        }
    }
}

/// The SysV ELF hash (`elf_hash`), used by `.hash` and `vd_hash`.
pub fn elf_hash(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 4).wrapping_add(c as u32);
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}

/// Builds the [`IMAGE_SIZE`]-byte image: `text` at [`TEXT_OFFSET`], each
/// export a `STT_FUNC` symbol of version [`VERSION`].
pub fn build(text: &[u8], exports: &[Export]) -> Result<Vec<u8>, VdsoError> {
    if text.len() > IMAGE_SIZE - TEXT_OFFSET {
        return Err(VdsoError::TextTooLarge);
    }
    if exports.iter().any(|e| e.offset >= text.len() || e.name.is_empty() || e.name.contains('\0')) {
        return Err(VdsoError::BadExport);
    }
    let nsyms = exports.len() + 1;

    // String table: "\0", the soname, the version, then the symbol names.
    let mut strtab = vec![0u8];
    let mut add_str = |s: &str| {
        let at = strtab.len() as u32;
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        at
    };
    let soname_at = add_str(SONAME);
    let version_at = add_str(VERSION);
    let name_at: Vec<u32> = exports.iter().map(|e| add_str(e.name)).collect();

    // Offsets of the tables (each 8-byte aligned).
    let align8 = |x: usize| (x + 7) & !7;
    let phnum = 2;
    let hash_off = 64 + phnum * PHDR_SIZE;
    let nbucket = nsyms.max(1);
    let hash_len = 4 * (2 + nbucket + nsyms);
    let sym_off = align8(hash_off + hash_len);
    let str_off = sym_off + SYM_SIZE * nsyms;
    let versym_off = align8(str_off + strtab.len());
    let verdef_off = align8(versym_off + 2 * nsyms);
    let verdef_len = 2 * (20 + 8);
    let dyn_off = align8(verdef_off + verdef_len);
    let dynamic: [(u64, u64); 10] = [
        (DT_HASH, hash_off as u64),
        (DT_STRTAB, str_off as u64),
        (DT_SYMTAB, sym_off as u64),
        (DT_STRSZ, strtab.len() as u64),
        (DT_SYMENT, SYM_SIZE as u64),
        (DT_SONAME, soname_at as u64),
        (DT_VERSYM, versym_off as u64),
        (DT_VERDEF, verdef_off as u64),
        (DT_VERDEFNUM, 2),
        (DT_NULL, 0),
    ];
    let dyn_len = 16 * dynamic.len();
    if dyn_off + dyn_len > TEXT_OFFSET {
        return Err(VdsoError::TablesTooLarge);
    }

    let mut img = Writer(vec![0u8; IMAGE_SIZE]);
    // ELF header.
    img.put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    img.u16(16, 3); // ET_DYN
    img.u16(18, 62); // EM_X86_64
    img.u32(20, 1); // EV_CURRENT
    img.u64(24, 0); // e_entry
    img.u64(32, 64); // e_phoff
    img.u64(40, 0); // e_shoff
    img.u16(52, 64); // e_ehsize
    img.u16(54, PHDR_SIZE as u16);
    img.u16(56, phnum as u16);
    img.u16(58, 64); // e_shentsize
    // Program headers: (type, flags, offset = vaddr, size, align).
    let phdrs = [
        (PT_LOAD, 5u32, 0usize, IMAGE_SIZE, PAGE_SIZE), // R+X
        (PT_DYNAMIC, 4, dyn_off, dyn_len, 8),           // R
    ];
    for (i, &(ty, flags, off, size, align)) in phdrs.iter().enumerate() {
        let p = 64 + i * PHDR_SIZE;
        img.u32(p, ty);
        img.u32(p + 4, flags);
        img.u64(p + 8, off as u64); // p_offset
        img.u64(p + 16, off as u64); // p_vaddr
        img.u64(p + 24, off as u64); // p_paddr
        img.u64(p + 32, size as u64); // p_filesz
        img.u64(p + 40, size as u64); // p_memsz
        img.u64(p + 48, align);
    }
    // .hash: bucket[h % nbucket] heads a chain of symbol indices.
    img.u32(hash_off, nbucket as u32);
    img.u32(hash_off + 4, nsyms as u32);
    let bucket = |b: usize| hash_off + 8 + 4 * b;
    let chain = |i: usize| hash_off + 8 + 4 * nbucket + 4 * i;
    for (i, e) in exports.iter().enumerate().rev() {
        let sym = i + 1;
        let b = elf_hash(e.name.as_bytes()) as usize % nbucket;
        let head = img.get_u32(bucket(b));
        img.u32(chain(sym), head);
        img.u32(bucket(b), sym as u32);
    }
    // .dynsym.
    for (i, e) in exports.iter().enumerate() {
        let s = sym_off + SYM_SIZE * (i + 1);
        let bind = if e.weak { STB_WEAK } else { STB_GLOBAL };
        img.u32(s, name_at[i]);
        img.put(s + 4, &[(bind << 4) | STT_FUNC, 0]);
        img.u16(s + 6, SHN_TEXT);
        img.u64(s + 8, (TEXT_OFFSET + e.offset) as u64);
        img.u64(s + 16, 0);
    }
    img.put(str_off, &strtab);
    // .gnu.version: 0 (local) for the null symbol, 2 (LINUX_2.6) for the rest.
    for i in 1..nsyms {
        img.u16(versym_off + 2 * i, 2);
    }
    // .gnu.version_d: two Verdef + Verdaux pairs.
    for (i, (flags, name, name_at)) in [(VER_FLG_BASE, SONAME, soname_at), (0, VERSION, version_at)].iter().enumerate() {
        let d = verdef_off + 28 * i;
        img.u16(d, 1); // vd_version
        img.u16(d + 2, *flags);
        img.u16(d + 4, i as u16 + 1); // vd_ndx
        img.u16(d + 6, 1); // vd_cnt
        img.u32(d + 8, elf_hash(name.as_bytes()));
        img.u32(d + 12, 20); // vd_aux
        img.u32(d + 16, if i == 0 { 28 } else { 0 }); // vd_next
        img.u32(d + 20, *name_at); // vda_name
        img.u32(d + 24, 0); // vda_next
    }
    for (i, &(tag, val)) in dynamic.iter().enumerate() {
        img.u64(dyn_off + 16 * i, tag);
        img.u64(dyn_off + 16 * i + 8, val);
    }
    img.put(TEXT_OFFSET, text);
    Ok(img.0)
}

/// Little-endian stores into the image.
struct Writer(Vec<u8>);

impl Writer {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
    fn get_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap_or([0; 4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORTS: [Export; 4] = [
        Export { name: "__vdso_clock_gettime", offset: 0, weak: false },
        Export { name: "clock_gettime", offset: 0, weak: true },
        Export { name: "__vdso_time", offset: 0x40, weak: false },
        Export { name: "__vdso_gettimeofday", offset: 0x80, weak: false },
    ];

    fn rd<const N: usize>(img: &[u8], at: usize) -> [u8; N] {
        img[at..at + N].try_into().unwrap()
    }
    fn u16_(img: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(rd(img, at))
    }
    fn u32_(img: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(rd(img, at))
    }
    fn u64_(img: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(rd(img, at))
    }
    fn cstr(img: &[u8], at: usize) -> &str {
        let len = img[at..].iter().position(|&b| b == 0).unwrap();
        core::str::from_utf8(&img[at..at + len]).unwrap()
    }

    /// musl's `__vdsosym` (src/internal/vdso.c), step by step, with the
    /// image "mapped" at address `eh`: returns the symbol's address.
    fn musl_vdsosym(img: &[u8], eh: u64, vername: &str, name: &str) -> Option<u64> {
        let phoff = u64_(img, 32) as usize;
        let (phent, phnum) = (u16_(img, 54) as usize, u16_(img, 56) as usize);
        let (mut dynv, mut base) = (None, None);
        for i in 0..phnum {
            let ph = phoff + i * phent;
            match u32_(img, ph) {
                PT_LOAD => base = Some(eh + u64_(img, ph + 8) - u64_(img, ph + 16)),
                PT_DYNAMIC => dynv = Some(u64_(img, ph + 8) as usize),
                _ => {}
            }
        }
        let (dynv, base) = (dynv?, base?);
        let off = |p: u64| (base + p - eh) as usize; // address -> index into img
        let (mut strings, mut syms, mut hash, mut versym, mut verdef) = (None, None, None, None, None);
        let mut i = dynv;
        while u64_(img, i) != 0 {
            let p = off(u64_(img, i + 8));
            match u64_(img, i) {
                DT_STRTAB => strings = Some(p),
                DT_SYMTAB => syms = Some(p),
                DT_HASH => hash = Some(p),
                DT_VERSYM => versym = Some(p),
                DT_VERDEF => verdef = Some(p),
                _ => {}
            }
            i += 16;
        }
        let (strings, syms, hash) = (strings?, syms?, hash?);
        let versym = if verdef.is_none() { None } else { versym };
        for i in 0..u32_(img, hash + 4) as usize {
            let s = syms + SYM_SIZE * i;
            let info = img[s + 4];
            if (1u32 << (info & 0xf)) & (1 << 0 | 1 << 1 | 1 << 2 | 1 << 5) == 0 {
                continue;
            }
            if (1u32 << (info >> 4)) & (1 << 1 | 1 << 2 | 1 << 10) == 0 {
                continue;
            }
            if u16_(img, s + 6) == 0 || cstr(img, strings + u32_(img, s) as usize) != name {
                continue;
            }
            if let Some(versym) = versym {
                // checkver
                let vsym = u16_(img, versym + 2 * i) & 0x7fff;
                let mut def = verdef?;
                loop {
                    if u16_(img, def + 2) & VER_FLG_BASE == 0 && u16_(img, def + 4) & 0x7fff == vsym {
                        break;
                    }
                    if u32_(img, def + 16) == 0 {
                        return None;
                    }
                    def += u32_(img, def + 16) as usize;
                }
                let aux = def + u32_(img, def + 12) as usize;
                if cstr(img, strings + u32_(img, aux) as usize) != vername {
                    continue;
                }
            }
            return Some(base + u64_(img, s + 8));
        }
        None
    }

    /// The SysV hash lookup a dynamic linker does (glibc `do_lookup_x`).
    fn hash_lookup(img: &[u8], name: &str) -> Option<u64> {
        let (hash, syms, strings) = (0x40 + 2 * 56, find_dyn(img, DT_SYMTAB), find_dyn(img, DT_STRTAB));
        assert_eq!(find_dyn(img, DT_HASH), hash);
        let nbucket = u32_(img, hash) as usize;
        let mut i = u32_(img, hash + 8 + 4 * (elf_hash(name.as_bytes()) as usize % nbucket)) as usize;
        while i != 0 {
            let s = syms + SYM_SIZE * i;
            if cstr(img, strings + u32_(img, s) as usize) == name {
                return Some(u64_(img, s + 8));
            }
            i = u32_(img, hash + 8 + 4 * nbucket + 4 * i) as usize;
        }
        None
    }

    fn find_dyn(img: &[u8], tag: u64) -> usize {
        let dynv = u64_(img, 64 + 56 + 8) as usize;
        let mut i = dynv;
        while u64_(img, i) != DT_NULL {
            if u64_(img, i) == tag {
                return u64_(img, i + 8) as usize;
            }
            i += 16;
        }
        panic!("no dynamic tag {tag:#x}");
    }

    #[test]
    fn musl_finds_every_export_at_its_code_offset() {
        let text = [0xc3u8; 0x100];
        let img = build(&text, &EXPORTS).unwrap();
        assert_eq!(img.len(), IMAGE_SIZE);
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!((u16_(&img, 16), u16_(&img, 18)), (3, 62), "ET_DYN, x86_64");
        let eh = 0x7fff_f7ff_d000;
        for e in EXPORTS {
            let want = eh + (TEXT_OFFSET + e.offset) as u64;
            assert_eq!(musl_vdsosym(&img, eh, VERSION, e.name), Some(want), "{}", e.name);
            assert_eq!(hash_lookup(&img, e.name), Some((TEXT_OFFSET + e.offset) as u64), "{}", e.name);
        }
        assert_eq!(musl_vdsosym(&img, eh, "LINUX_2.5", "__vdso_time"), None, "version checked");
        assert_eq!(musl_vdsosym(&img, eh, VERSION, "__vdso_getcpu"), None);
        assert_eq!(hash_lookup(&img, "__vdso_getcpu"), None);
        assert_eq!(&img[TEXT_OFFSET..TEXT_OFFSET + text.len()], &text);
        assert!(img[TEXT_OFFSET + text.len()..].iter().all(|&b| b == 0));
        assert_eq!(cstr(&img, find_dyn(&img, DT_STRTAB) + find_dyn(&img, DT_SONAME)), SONAME);
    }

    #[test]
    fn symbols_are_global_or_weak_functions_of_version_2() {
        let img = build(&[0x90; 0x100], &EXPORTS).unwrap();
        let (syms, versym) = (find_dyn(&img, DT_SYMTAB), find_dyn(&img, DT_VERSYM));
        assert_eq!(&img[syms..syms + SYM_SIZE], &[0; SYM_SIZE], "null symbol first");
        for (i, e) in EXPORTS.iter().enumerate() {
            let s = syms + SYM_SIZE * (i + 1);
            let bind = if e.weak { STB_WEAK } else { STB_GLOBAL };
            assert_eq!(img[s + 4], bind << 4 | STT_FUNC);
            assert_eq!(u16_(&img, versym + 2 * (i + 1)), 2);
        }
        assert_eq!(u16_(&img, versym), 0);
    }

    #[test]
    fn elf_hash_matches_known_values() {
        assert_eq!(elf_hash(b""), 0);
        // The System V ABI algorithm computed independently (and LINUX_2.6's
        // vd_hash as `readelf -V` shows it for Linux's vdso64.so).
        assert_eq!(elf_hash(b"LINUX_2.6"), 0x3ae75f6);
        assert_eq!(elf_hash(b"linux-vdso.so.1"), 0xdeebfa1);
        assert_eq!(elf_hash(b"__vdso_clock_gettime"), 0xd35ec75);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let big = vec![0u8; IMAGE_SIZE - TEXT_OFFSET + 1];
        assert_eq!(build(&big, &EXPORTS[..1]), Err(VdsoError::TextTooLarge));
        let outside = [Export { name: "f", offset: 16, weak: false }];
        assert_eq!(build(&[0; 16], &outside), Err(VdsoError::BadExport));
        let nul = [Export { name: "a\0b", offset: 0, weak: false }];
        assert_eq!(build(&[0; 16], &nul), Err(VdsoError::BadExport));
        let names: Vec<alloc::string::String> = (0..40).map(|i| alloc::format!("__vdso_function_number_{i}")).collect();
        let many: Vec<Export> = names.iter().map(|n| Export { name: n, offset: 0, weak: false }).collect();
        assert_eq!(build(&[0; 16], &many), Err(VdsoError::TablesTooLarge));
        assert!(build(&[0; 16], &[]).is_ok());
    }
}
