//! ELF64 x86_64 executables: validation and the plan for mapping them.
//!
//! Accepted are static executables: `ET_EXEC` (loaded at their link
//! addresses) and static PIE (`ET_DYN` without `PT_INTERP`, loaded at a load
//! bias the caller picks, e.g. [`ET_DYN_BASE`] like Linux). Anything with a
//! `PT_INTERP` (dynamically linked) is refused with
//! [`ElfError::DynamicallyLinked`].
//!
//! [`parse`] checks the header, that the program headers and every
//! `PT_LOAD` lie inside the file, that `p_filesz <= p_memsz`, that
//! `p_offset` and `p_vaddr` are congruent modulo the page size, and that the
//! segments are sorted, fit in user space, do not map page 0, and share no
//! page (each page gets one protection). `PT_GNU_STACK` is reported,
//! `PT_TLS`, `PT_NOTE`, `PT_DYNAMIC`, `PT_GNU_RELRO` and the rest are left to
//! the program. The result is a [`LoadPlan`]: which file bytes go where,
//! with which protection, and the values the auxiliary vector needs.

use alloc::vec::Vec;
use core::fmt;

use crate::PAGE_SIZE;

pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const EM_X86_64: u16 = 62;

pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;
pub const PT_PHDR: u32 = 6;
pub const PT_TLS: u32 = 7;
pub const PT_GNU_STACK: u32 = 0x6474_e551;

pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;

/// Linux's `ELF_ET_DYN_BASE` on x86_64 (2/3 of the 47-bit user space, page
/// aligned): where a static PIE goes without randomisation.
pub const ET_DYN_BASE: u64 = 0x5555_5555_4000;
/// End of user space (Linux's `TASK_SIZE_MAX`: 2^47 minus a guard page).
pub const USER_END: u64 = (1 << 47) - PAGE_SIZE;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF header.
    Truncated,
    /// No `\x7fELF` magic.
    NotElf,
    /// Not ELFCLASS64.
    NotElf64,
    /// Not little-endian.
    NotLittleEndian,
    /// `EI_VERSION` / `e_version` is not 1.
    BadVersion,
    NotX86_64 { machine: u16 },
    /// Neither `ET_EXEC` nor `ET_DYN` (e.g. an object file or core dump).
    NotExecutable { e_type: u16 },
    /// Has `PT_INTERP`: needs a dynamic linker, which is not supported.
    DynamicallyLinked,
    /// `e_phentsize` is not 56.
    BadPhentsize { phentsize: u16 },
    /// The program header table is empty or not inside the file.
    PhdrsOutsideFile,
    /// No `PT_LOAD` segment with a non-zero size.
    NoLoadSegments,
    /// Program header `index`: file bytes beyond the end of the file.
    SegmentOutsideFile { index: usize },
    /// Program header `index`: `p_filesz > p_memsz`.
    FileszExceedsMemsz { index: usize },
    /// Program header `index`: `p_offset % 4096 != p_vaddr % 4096`.
    Misaligned { index: usize },
    /// Program header `index`: address overflow, beyond [`USER_END`], or page 0.
    BadAddress { index: usize },
    /// Program header `index`: not above the previous segment's last page
    /// (overlapping, sharing a page, or unsorted).
    Overlap { index: usize },
    /// `e_entry` is not inside an executable segment.
    BadEntry { entry: u64 },
    /// The load bias for a PIE is not page aligned.
    BadLoadBias { bias: u64 },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated => write!(f, "file too short for an ELF header"),
            ElfError::NotElf => write!(f, "not an ELF file"),
            ElfError::NotElf64 => write!(f, "not a 64-bit ELF file"),
            ElfError::NotLittleEndian => write!(f, "not a little-endian ELF file"),
            ElfError::BadVersion => write!(f, "unknown ELF version"),
            ElfError::NotX86_64 { machine } => write!(f, "not an x86_64 executable (e_machine {})", machine),
            ElfError::NotExecutable { e_type } => write!(f, "not an executable (e_type {})", e_type),
            ElfError::DynamicallyLinked => {
                write!(f, "dynamically linked (has PT_INTERP): only static executables are supported")
            }
            ElfError::BadPhentsize { phentsize } => write!(f, "bad program header size {}", phentsize),
            ElfError::PhdrsOutsideFile => write!(f, "program headers missing or outside the file"),
            ElfError::NoLoadSegments => write!(f, "no loadable segments"),
            ElfError::SegmentOutsideFile { index } => write!(f, "segment {} extends past the end of the file", index),
            ElfError::FileszExceedsMemsz { index } => write!(f, "segment {}: p_filesz > p_memsz", index),
            ElfError::Misaligned { index } => write!(f, "segment {}: p_offset and p_vaddr differ modulo the page size", index),
            ElfError::BadAddress { index } => write!(f, "segment {}: address outside user space", index),
            ElfError::Overlap { index } => write!(f, "segment {} overlaps or shares a page with the previous one", index),
            ElfError::BadEntry { entry } => write!(f, "entry point {:#x} is not in an executable segment", entry),
            ElfError::BadLoadBias { bias } => write!(f, "load bias {:#x} is not page aligned", bias),
        }
    }
}

/// Static executable flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfKind {
    /// `ET_EXEC`: fixed addresses, load bias 0.
    Exec,
    /// `ET_DYN` without `PT_INTERP`: relocates itself, loaded at the bias.
    StaticPie,
}

/// Page protection of a segment (`PF_R`, `PF_W`, `PF_X`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Prot {
    fn from_flags(p_flags: u32) -> Prot {
        Prot { read: p_flags & PF_R != 0, write: p_flags & PF_W != 0, exec: p_flags & PF_X != 0 }
    }
}

/// One `PT_LOAD` segment, at its final (biased) address: the `memsz` bytes
/// at `vaddr` start with file bytes `offset..offset + filesz`, the rest
/// (bss) is zero. Pages `page_start()..page_end()` belong to this segment
/// only; the bytes of the first page before `vaddr` (and of the last page
/// after `vaddr + filesz`) come from the file as mmap would map them, or
/// may be zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub filesz: u64,
    pub offset: u64,
    pub prot: Prot,
}

impl Segment {
    /// First page address of the segment.
    pub fn page_start(&self) -> u64 {
        self.vaddr & !(PAGE_SIZE - 1)
    }

    /// End of the segment's last page (exclusive).
    pub fn page_end(&self) -> u64 {
        // parse() checked that vaddr + memsz <= USER_END, so this cannot overflow.
        (self.vaddr + self.memsz).next_multiple_of(PAGE_SIZE)
    }

    /// The file bytes to copy to `vaddr` (empty if `image` is not the parsed file).
    pub fn file_bytes<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        let (start, len) = (self.offset as usize, self.filesz as usize);
        image.get(start..start.saturating_add(len)).unwrap_or_default()
    }
}

/// Everything needed to map an executable and start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub kind: ElfKind,
    /// Entry point (biased).
    pub entry: u64,
    /// Added to every link-time address: 0 for `ET_EXEC`.
    pub load_bias: u64,
    /// The `PT_LOAD` segments with a non-zero size, ascending.
    pub segments: Vec<Segment>,
    /// Address of the program headers in memory (`AT_PHDR`): from `PT_PHDR`
    /// or else the `PT_LOAD` that contains `e_phoff`; 0 if neither (as Linux).
    pub phdr_vaddr: u64,
    /// `e_phentsize` (`AT_PHENT`).
    pub phent: u16,
    /// `e_phnum` (`AT_PHNUM`).
    pub phnum: u16,
    /// Page-aligned end of the highest segment: where the heap (brk) starts.
    pub brk_start: u64,
    /// `PT_GNU_STACK` asks for an executable stack (`PF_X`).
    pub exec_stack: bool,
}

/// Validates `image` and plans its loading. `dyn_bias` (page aligned) is
/// the load bias used if the image is a static PIE; ignored for `ET_EXEC`.
pub fn parse(image: &[u8], dyn_bias: u64) -> Result<LoadPlan, ElfError> {
    let ehdr = image.get(..EHDR_SIZE).ok_or(ElfError::Truncated)?;
    if ehdr[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if ehdr[4] != 2 {
        return Err(ElfError::NotElf64);
    }
    if ehdr[5] != 1 {
        return Err(ElfError::NotLittleEndian);
    }
    if ehdr[6] != 1 || u32_at(ehdr, 20) != Some(1) {
        return Err(ElfError::BadVersion);
    }
    let e_type = u16_at(ehdr, 16).unwrap_or_default();
    let machine = u16_at(ehdr, 18).unwrap_or_default();
    if machine != EM_X86_64 {
        return Err(ElfError::NotX86_64 { machine });
    }
    let (kind, load_bias) = match e_type {
        ET_EXEC => (ElfKind::Exec, 0),
        ET_DYN if dyn_bias % PAGE_SIZE != 0 => return Err(ElfError::BadLoadBias { bias: dyn_bias }),
        ET_DYN => (ElfKind::StaticPie, dyn_bias),
        _ => return Err(ElfError::NotExecutable { e_type }),
    };
    let e_entry = u64_at(ehdr, 24).unwrap_or_default();
    let e_phoff = u64_at(ehdr, 32).unwrap_or_default();
    let phent = u16_at(ehdr, 54).unwrap_or_default();
    let phnum = u16_at(ehdr, 56).unwrap_or_default();
    if usize::from(phent) != PHDR_SIZE {
        return Err(ElfError::BadPhentsize { phentsize: phent });
    }
    let table_len = PHDR_SIZE as u64 * u64::from(phnum);
    let table = usize::try_from(e_phoff)
        .ok()
        .and_then(|start| image.get(start..start.checked_add(table_len as usize)?))
        .filter(|t| !t.is_empty())
        .ok_or(ElfError::PhdrsOutsideFile)?;
    let phdrs: Vec<Phdr> = table.chunks_exact(PHDR_SIZE).map(Phdr::read).collect();

    // The clearest error first: a dynamic executable may be fine otherwise.
    if phdrs.iter().any(|p| p.p_type == PT_INTERP) {
        return Err(ElfError::DynamicallyLinked);
    }

    let mut segments: Vec<Segment> = Vec::new();
    let mut phdr_vaddr = None;
    let mut exec_stack = false;
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type {
            PT_LOAD if ph.p_memsz > 0 => {
                let segment = check_load(image, index, ph, load_bias)?;
                if segments.last().is_some_and(|prev| segment.page_start() < prev.page_end()) {
                    return Err(ElfError::Overlap { index });
                }
                segments.push(segment);
            }
            PT_PHDR => phdr_vaddr = Some(ph.p_vaddr.wrapping_add(load_bias)),
            PT_GNU_STACK => exec_stack = ph.p_flags & PF_X != 0,
            _ => {}
        }
    }
    let last = segments.last().ok_or(ElfError::NoLoadSegments)?;
    let brk_start = last.page_end();

    let phdr_vaddr = phdr_vaddr.or_else(|| {
        let ph = phdrs.iter().find(|p| {
            p.p_type == PT_LOAD
                && p.p_offset <= e_phoff
                && e_phoff.checked_add(table_len).is_some_and(|end| end <= p.p_offset.saturating_add(p.p_filesz))
        })?;
        Some(ph.p_vaddr.wrapping_add(e_phoff - ph.p_offset).wrapping_add(load_bias))
    });

    let entry = e_entry.wrapping_add(load_bias);
    if !segments.iter().any(|s| s.prot.exec && (s.vaddr..s.vaddr + s.memsz).contains(&entry)) {
        return Err(ElfError::BadEntry { entry });
    }
    Ok(LoadPlan {
        kind,
        entry,
        load_bias,
        segments,
        phdr_vaddr: phdr_vaddr.unwrap_or(0),
        phent,
        phnum,
        brk_start,
        exec_stack,
    })
}

fn check_load(image: &[u8], index: usize, ph: &Phdr, load_bias: u64) -> Result<Segment, ElfError> {
    if ph.p_filesz > ph.p_memsz {
        return Err(ElfError::FileszExceedsMemsz { index });
    }
    if ph.p_offset.checked_add(ph.p_filesz).is_none_or(|end| end > image.len() as u64) {
        return Err(ElfError::SegmentOutsideFile { index });
    }
    if ph.p_offset % PAGE_SIZE != ph.p_vaddr % PAGE_SIZE {
        return Err(ElfError::Misaligned { index });
    }
    let vaddr = ph.p_vaddr.checked_add(load_bias).ok_or(ElfError::BadAddress { index })?;
    let end = vaddr.checked_add(ph.p_memsz).ok_or(ElfError::BadAddress { index })?;
    if end > USER_END || vaddr < PAGE_SIZE {
        return Err(ElfError::BadAddress { index });
    }
    Ok(Segment { vaddr, memsz: ph.p_memsz, filesz: ph.p_filesz, offset: ph.p_offset, prot: Prot::from_flags(ph.p_flags) })
}

/// The fields of a program header this module uses.
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_filesz: u64,
    p_memsz: u64,
}

impl Phdr {
    /// `raw` is exactly [`PHDR_SIZE`] bytes (from `chunks_exact`).
    fn read(raw: &[u8]) -> Phdr {
        Phdr {
            p_type: u32_at(raw, 0).unwrap_or_default(),
            p_flags: u32_at(raw, 4).unwrap_or_default(),
            p_offset: u64_at(raw, 8).unwrap_or_default(),
            p_vaddr: u64_at(raw, 16).unwrap_or_default(),
            p_filesz: u64_at(raw, 32).unwrap_or_default(),
            p_memsz: u64_at(raw, 40).unwrap_or_default(),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    /// A program header for [`build`].
    #[derive(Clone, Copy)]
    pub struct Ph {
        pub p_type: u32,
        pub flags: u32,
        pub offset: u64,
        pub vaddr: u64,
        pub filesz: u64,
        pub memsz: u64,
    }

    pub fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Ph {
        Ph { p_type: PT_LOAD, flags, offset, vaddr, filesz, memsz }
    }

    /// An ELF image: header, program headers at 64, zero-filled to `len`.
    pub fn build(e_type: u16, entry: u64, phdrs: &[Ph], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(EHDR_SIZE + PHDR_SIZE * phdrs.len())];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little endian
        b[6] = 1; // EV_CURRENT
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, p) in phdrs.iter().enumerate() {
            let o = EHDR_SIZE + i * PHDR_SIZE;
            b[o..o + 4].copy_from_slice(&p.p_type.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&p.offset.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&p.vaddr.to_le_bytes());
            b[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
            b[o + 48..o + 56].copy_from_slice(&PAGE_SIZE.to_le_bytes());
        }
        b
    }

    /// Like a linker's output: headers + rodata, text, data + bss.
    pub fn typical(e_type: u16, base: u64) -> Vec<u8> {
        build(
            e_type,
            base + 0x1010,
            &[
                Ph { p_type: PT_PHDR, flags: PF_R, offset: 64, vaddr: base + 64, filesz: 0x150, memsz: 0x150 },
                load(PF_R, 0, base, 0x200, 0x200),
                load(PF_R | PF_X, 0x1000, base + 0x1000, 0x100, 0x100),
                load(PF_R | PF_W, 0x2100, base + 0x2100, 0x80, 0x3000),
                Ph { p_type: PT_TLS, flags: PF_R, offset: 0x2100, vaddr: base + 0x2100, filesz: 8, memsz: 16 },
                Ph { p_type: PT_GNU_STACK, flags: PF_R | PF_W, offset: 0, vaddr: 0, filesz: 0, memsz: 0 },
            ],
            0x2180,
        )
    }

    #[test]
    fn static_exec_at_link_addresses() {
        let image = typical(ET_EXEC, 0x40_0000);
        let plan = parse(&image, ET_DYN_BASE).unwrap();
        assert_eq!((plan.kind, plan.load_bias, plan.entry), (ElfKind::Exec, 0, 0x40_1010));
        assert_eq!((plan.phdr_vaddr, plan.phent, plan.phnum), (0x40_0040, 56, 6));
        assert_eq!(plan.segments.len(), 3);
        let data = plan.segments[2];
        assert_eq!((data.vaddr, data.memsz, data.filesz, data.offset), (0x40_2100, 0x3000, 0x80, 0x2100));
        assert_eq!(data.prot, Prot { read: true, write: true, exec: false });
        assert_eq!(plan.segments[1].prot, Prot { read: true, write: false, exec: true });
        assert_eq!(plan.brk_start, 0x40_6000);
        assert_eq!((data.page_start(), data.page_end()), (0x40_2000, 0x40_6000));
        assert_eq!(data.file_bytes(&image).len(), 0x80);
        assert!(!plan.exec_stack);
    }

    #[test]
    fn static_pie_is_biased() {
        let image = typical(ET_DYN, 0);
        let plan = parse(&image, ET_DYN_BASE).unwrap();
        assert_eq!((plan.kind, plan.load_bias), (ElfKind::StaticPie, ET_DYN_BASE));
        assert_eq!(plan.entry, ET_DYN_BASE + 0x1010);
        assert_eq!(plan.phdr_vaddr, ET_DYN_BASE + 64);
        assert_eq!(plan.segments[0].vaddr, ET_DYN_BASE);
        assert_eq!(plan.brk_start, ET_DYN_BASE + 0x6000);
        assert_eq!(parse(&image, 0x1234).unwrap_err(), ElfError::BadLoadBias { bias: 0x1234 });
        // Bias 0 would map page 0.
        assert_eq!(parse(&image, 0).unwrap_err(), ElfError::BadAddress { index: 1 });
    }

    #[test]
    fn phdr_address_from_the_load_covering_e_phoff() {
        let image = build(ET_EXEC, 0x40_1000, &[load(PF_R | PF_X, 0, 0x40_0000, 0x1100, 0x1100)], 0x1100);
        assert_eq!(parse(&image, 0).unwrap().phdr_vaddr, 0x40_0040);
        // Not covered: 0, as Linux.
        let image = build(ET_EXEC, 0x40_1000, &[load(PF_R | PF_X, 0x1000, 0x40_1000, 0x100, 0x100)], 0x1100);
        assert_eq!(parse(&image, 0).unwrap().phdr_vaddr, 0);
    }

    #[test]
    fn gnu_stack_and_ignored_headers() {
        let stack = |flags| Ph { p_type: PT_GNU_STACK, flags, offset: 0, vaddr: 0, filesz: 0, memsz: 0 };
        let note = Ph { p_type: PT_NOTE, flags: PF_R, offset: 0x10_0000, vaddr: 0, filesz: 1, memsz: 1 };
        let text = load(PF_R | PF_X, 0, 0x40_0000, 0x200, 0x200);
        let image = build(ET_EXEC, 0x40_0100, &[text, note, stack(PF_R | PF_W | PF_X)], 0x200);
        assert!(parse(&image, 0).unwrap().exec_stack);
        let image = build(ET_EXEC, 0x40_0100, &[text, stack(PF_R | PF_W)], 0x200);
        assert!(!parse(&image, 0).unwrap().exec_stack);
        // Empty PT_LOADs are skipped.
        let image = build(ET_EXEC, 0x40_0100, &[load(PF_R, 0, 0, 0, 0), text], 0x200);
        assert_eq!(parse(&image, 0).unwrap().segments.len(), 1);
    }

    #[test]
    fn header_errors() {
        let good = typical(ET_EXEC, 0x40_0000);
        assert_eq!(parse(&good[..63], 0), Err(ElfError::Truncated));
        let with = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            parse(&b, ET_DYN_BASE)
        };
        assert_eq!(with(0, b"\x7fELG"), Err(ElfError::NotElf));
        assert_eq!(with(4, &[1]), Err(ElfError::NotElf64));
        assert_eq!(with(5, &[2]), Err(ElfError::NotLittleEndian));
        assert_eq!(with(6, &[0]), Err(ElfError::BadVersion));
        assert_eq!(with(18, &3u16.to_le_bytes()), Err(ElfError::NotX86_64 { machine: 3 }));
        assert_eq!(with(16, &1u16.to_le_bytes()), Err(ElfError::NotExecutable { e_type: 1 }));
        assert_eq!(with(54, &32u16.to_le_bytes()), Err(ElfError::BadPhentsize { phentsize: 32 }));
        assert_eq!(with(56, &0u16.to_le_bytes()), Err(ElfError::PhdrsOutsideFile));
        assert_eq!(with(56, &200u16.to_le_bytes()), Err(ElfError::PhdrsOutsideFile));
        assert_eq!(with(32, &u64::MAX.to_le_bytes()), Err(ElfError::PhdrsOutsideFile));
        assert_eq!(with(24, &0x40_0010u64.to_le_bytes()), Err(ElfError::BadEntry { entry: 0x40_0010 }));
        // Truncating the file cuts the data segment's file bytes.
        assert_eq!(parse(&good[..0x2170], 0), Err(ElfError::SegmentOutsideFile { index: 3 }));
    }

    #[test]
    fn interpreter_is_refused_first() {
        let interp = Ph { p_type: PT_INTERP, flags: PF_R, offset: 0x100, vaddr: 0x100, filesz: 28, memsz: 28 };
        // Even with a broken PT_LOAD, the dynamic-linking error wins.
        let image = build(ET_DYN, 0x1000, &[interp, load(PF_R, 0, 0, 0x10, 0x8)], 0x200);
        assert_eq!(parse(&image, ET_DYN_BASE), Err(ElfError::DynamicallyLinked));
    }

    #[test]
    fn segment_errors() {
        let text = load(PF_R | PF_X, 0, 0x40_0000, 0x200, 0x200);
        let check = |second: Ph| parse(&build(ET_EXEC, 0x40_0100, &[text, second], 0x4000), 0);
        assert_eq!(check(load(PF_R, 0x1000, 0x40_1000, 0x200, 0x100)), Err(ElfError::FileszExceedsMemsz { index: 1 }));
        assert_eq!(check(load(PF_R, 0x3f00, 0x40_1f00, 0x200, 0x200)), Err(ElfError::SegmentOutsideFile { index: 1 }));
        assert_eq!(check(load(PF_R, u64::MAX, 0x40_1fff, 2, 2)), Err(ElfError::SegmentOutsideFile { index: 1 }));
        assert_eq!(check(load(PF_R, 0x1000, 0x40_1008, 0x10, 0x10)), Err(ElfError::Misaligned { index: 1 }));
        assert_eq!(check(load(PF_R, 0x1000, u64::MAX & !0xfff, 0x10, 0x2000)), Err(ElfError::BadAddress { index: 1 }));
        assert_eq!(check(load(PF_R, 0x1000, USER_END - 0x1000, 0x10, 0x2000)), Err(ElfError::BadAddress { index: 1 }));
        // Overlapping bytes, sharing the last page, and unsorted.
        assert_eq!(check(load(PF_R, 0x100, 0x40_0100, 0x10, 0x10)), Err(ElfError::Overlap { index: 1 }));
        assert_eq!(check(load(PF_R, 0x300, 0x40_0300, 0x10, 0x10)), Err(ElfError::Overlap { index: 1 }));
        assert_eq!(check(load(PF_R, 0x1000, 0x3f_f000, 0x10, 0x10)), Err(ElfError::Overlap { index: 1 }));
        // Right after the last page is fine, so is a huge bss.
        assert!(check(load(PF_R | PF_W, 0x1000, 0x40_1000, 0x10, 0x1000_0000)).is_ok());
        // Only non-executable segments: the entry is not executable.
        let image = build(ET_EXEC, 0x40_0100, &[load(PF_R, 0, 0x40_0000, 0x200, 0x200)], 0x200);
        assert_eq!(parse(&image, 0), Err(ElfError::BadEntry { entry: 0x40_0100 }));
        let image = build(ET_EXEC, 0, &[], 0x200);
        assert_eq!(parse(&image, 0), Err(ElfError::PhdrsOutsideFile));
        let stack = Ph { p_type: PT_GNU_STACK, flags: PF_R, offset: 0, vaddr: 0, filesz: 0, memsz: 0 };
        assert_eq!(parse(&build(ET_EXEC, 0, &[stack], 0x200), 0), Err(ElfError::NoLoadSegments));
    }

    #[test]
    fn random_mutations_never_panic() {
        let good = typical(ET_DYN, 0);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let mut b = good.clone();
            for _ in 0..(1 + next() % 6) {
                // Mostly hit the headers, where the interesting fields are.
                let i = (next() as usize) % if next() % 4 == 0 { b.len() } else { EHDR_SIZE + 6 * PHDR_SIZE };
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            for input in [&b[..], &b[..cut]] {
                if let Ok(plan) = parse(input, ET_DYN_BASE) {
                    for s in &plan.segments {
                        assert!(s.filesz <= s.memsz && s.vaddr + s.memsz <= USER_END);
                        assert_eq!(s.file_bytes(input).len() as u64, s.filesz);
                    }
                }
            }
        }
    }
}
