//! The little of ACPI the kernel reads: the MADT ("APIC" table), for where the
//! I/O APIC is, which global system interrupt (GSI) an ISA line arrives on,
//! and how many CPUs the machine has (Linux `acpi_parse_ioapic`,
//! `acpi_parse_int_src_ovr`, `acpi_parse_lapic` / `acpi_parse_x2apic`).
//!
//! The walk: RSDP (address from the bootloader; checksum, and the extended
//! checksum for revision 2+) → XSDT (revision 2+, 64-bit entries) or RSDT
//! (32-bit entries) → the table with signature `APIC` → its entries. Every
//! table's length and checksum are checked before its contents are used, and
//! every read stays inside the table's length: firmware bytes are input, a bad
//! table is an [`AcpiError`], never a panic. Tables are read through the direct
//! map, which covers at least the low 4 GiB, where firmware puts them; a table
//! beyond that is refused.

use crate::arch::x86_64::layout::DIRECT_MAP_MIN_END;
use crate::arch::x86_64::memmap;

/// Longest table accepted (QEMU's MADT is about 120 bytes).
const MAX_TABLE_LEN: u32 = 64 * 1024;
const SDT_HEADER_LEN: usize = 36;
/// MADT: local APIC address (4) and flags (4) precede the entries.
const MADT_ENTRIES_OFFSET: usize = SDT_HEADER_LEN + 8;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_X2APIC: u8 = 9;
/// Local (x2)APIC entry flags: enabled, or online capable (may be enabled later).
const MADT_CPU_USABLE: u32 = 0b11;
const MADT_CPU_ENABLED: u32 = 0b01;
/// At most this many CPUs' APIC ids are kept (more are counted, not recorded).
pub const MAX_MADT_CPUS: usize = 64;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
/// At most this many I/O APICs and overrides are kept.
const MAX_IOAPICS: usize = 4;
const MAX_OVERRIDES: usize = 16;

/// Why the MADT could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The bootloader found no RSDP.
    NoRsdp,
    /// A table lies (partly) outside the direct-mapped low 4 GiB.
    Unmapped(u64),
    /// A signature, length or checksum is wrong.
    BadTable(&'static str),
    /// The root table lists no MADT.
    NoMadt,
}

/// An I/O APIC as the MADT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicEntry {
    pub id: u8,
    pub phys_addr: u64,
    /// First GSI of its pins.
    pub gsi_base: u32,
}

/// An interrupt source override: ISA line `source` arrives on `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    pub source: u8,
    pub gsi: u32,
    /// MPS INTI flags (polarity, trigger mode).
    pub flags: u16,
}

/// What the kernel takes from the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Madt {
    pub local_apic_addr: u64,
    pub ioapics: [Option<IoApicEntry>; MAX_IOAPICS],
    pub overrides: [Option<InterruptOverride>; MAX_OVERRIDES],
    /// Usable CPUs: local APIC and x2APIC entries enabled or online capable.
    pub nr_cpus: u32,
    /// APIC ids of the enabled processors (flag bit 0), in MADT order; the
    /// first `nr_enabled` (capped at [`MAX_MADT_CPUS`]) slots are `Some`.
    /// Online-capable but disabled entries are not started (Linux does the same
    /// until hot-add).
    pub enabled_apic_ids: [Option<u32>; MAX_MADT_CPUS],
    /// Enabled processors (all of them, even beyond [`MAX_MADT_CPUS`]).
    pub nr_enabled: u32,
}

impl Madt {
    /// The GSI of ISA line `irq`: its override, else identity-mapped.
    pub fn isa_gsi(&self, irq: u8) -> u32 {
        self.overrides.iter().flatten().find(|o| o.source == irq).map_or(irq as u32, |o| o.gsi)
    }

    /// The I/O APIC whose pins include `gsi`, and the pin.
    pub fn ioapic_for_gsi(&self, gsi: u32) -> Option<(IoApicEntry, u32)> {
        // The highest base at or below `gsi` (the chip's pin count is in the chip).
        self.ioapics.iter().flatten().filter(|io| io.gsi_base <= gsi).max_by_key(|io| io.gsi_base).map(|io| (*io, gsi - io.gsi_base))
    }
}

/// `len` bytes of physical memory at `phys`, through the direct map.
fn phys_bytes(phys: u64, len: usize) -> Result<&'static [u8], AcpiError> {
    match phys.checked_add(len as u64) {
        Some(end) if end <= DIRECT_MAP_MIN_END && phys != 0 => {}
        _ => return Err(AcpiError::Unmapped(phys)),
    }
    // SAFETY: the direct map covers the low 4 GiB (checked above) for the whole
    // life of the kernel; firmware tables are never written after boot, and u8
    // has no alignment or validity requirement.
    Ok(unsafe { core::slice::from_raw_parts(memmap::phys_to_virt(phys), len) })
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A whole system description table at `phys` (header first, for its length),
/// its length and checksum checked.
fn sdt(phys: u64) -> Result<&'static [u8], AcpiError> {
    let header = phys_bytes(phys, SDT_HEADER_LEN)?;
    let len = le_u32(header, 4).unwrap_or(0);
    if !(SDT_HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&len) {
        return Err(AcpiError::BadTable("table length"));
    }
    let table = phys_bytes(phys, len as usize)?;
    if !checksum_ok(table) {
        return Err(AcpiError::BadTable("table checksum"));
    }
    Ok(table)
}

/// Physical addresses of the tables the RSDP's root table lists.
fn root_entries(rsdp_phys: u64) -> Result<(&'static [u8], usize), AcpiError> {
    let rsdp = phys_bytes(rsdp_phys, 20)?;
    if &rsdp[..8] != b"RSD PTR " || !checksum_ok(rsdp) {
        return Err(AcpiError::BadTable("RSDP"));
    }
    if rsdp[15] >= 2 {
        let ext = phys_bytes(rsdp_phys, 36)?;
        let xsdt = le_u64(ext, 24).unwrap_or(0);
        if checksum_ok(ext) && xsdt != 0 {
            let table = sdt(xsdt)?;
            if &table[..4] != b"XSDT" {
                return Err(AcpiError::BadTable("XSDT signature"));
            }
            return Ok((table, 8));
        }
    }
    let table = sdt(le_u32(rsdp, 16).unwrap_or(0) as u64)?;
    if &table[..4] != b"RSDT" {
        return Err(AcpiError::BadTable("RSDT signature"));
    }
    Ok((table, 4))
}

/// Finds and parses the MADT.
pub fn madt() -> Result<Madt, AcpiError> {
    let rsdp = memmap::facts().rsdp_addr.ok_or(AcpiError::NoRsdp)?;
    let (root, width) = root_entries(rsdp)?;
    for entry in root[SDT_HEADER_LEN..].chunks_exact(width) {
        let phys = if width == 8 { le_u64(entry, 0) } else { le_u32(entry, 0).map(u64::from) };
        let Some(phys) = phys else { continue };
        // A listed table we cannot read is skipped, as long as another is the MADT.
        let Ok(header) = phys_bytes(phys, 4) else { continue };
        if header == b"APIC" {
            return parse_madt(sdt(phys)?);
        }
    }
    Err(AcpiError::NoMadt)
}

/// The MADT's I/O APIC, override and CPU entries (other types are skipped).
fn parse_madt(t: &[u8]) -> Result<Madt, AcpiError> {
    let mut madt = Madt {
        local_apic_addr: le_u32(t, SDT_HEADER_LEN).ok_or(AcpiError::BadTable("MADT length"))? as u64,
        ioapics: [None; MAX_IOAPICS],
        overrides: [None; MAX_OVERRIDES],
        nr_cpus: 0,
        enabled_apic_ids: [None; MAX_MADT_CPUS],
        nr_enabled: 0,
    };
    let mut at = MADT_ENTRIES_OFFSET;
    let (mut nr_io, mut nr_ovr) = (0, 0);
    while at + 2 <= t.len() {
        let (kind, len) = (t[at], t[at + 1] as usize);
        if len < 2 || at + len > t.len() {
            return Err(AcpiError::BadTable("MADT entry length"));
        }
        let e = &t[at..at + len];
        match kind {
            // (Entries too short for their type are skipped: the reads give None.)
            MADT_IO_APIC if nr_io < MAX_IOAPICS => {
                if let (Some(addr), Some(gsi_base)) = (le_u32(e, 4), le_u32(e, 8)) {
                    madt.ioapics[nr_io] = Some(IoApicEntry { id: e[2], phys_addr: addr as u64, gsi_base });
                    nr_io += 1;
                }
            }
            MADT_LOCAL_APIC | MADT_LOCAL_X2APIC => {
                // Type 0: processor uid (1), APIC id (1), flags (4).
                // Type 9: reserved (2), x2APIC id (4), flags (4), uid (4).
                let (id, flags) = if kind == MADT_LOCAL_APIC {
                    (e.get(3).map(|&id| id as u32), le_u32(e, 4))
                } else {
                    (le_u32(e, 4), le_u32(e, 8))
                };
                if flags.is_some_and(|f| f & MADT_CPU_USABLE != 0) {
                    madt.nr_cpus += 1;
                }
                if let (Some(id), Some(f)) = (id, flags) {
                    if f & MADT_CPU_ENABLED != 0 {
                        if let Some(slot) = madt.enabled_apic_ids.get_mut(madt.nr_enabled as usize) {
                            *slot = Some(id);
                        }
                        madt.nr_enabled += 1;
                    }
                }
            }
            // Bus 0 is ISA, the only bus ACPI defines.
            MADT_INTERRUPT_OVERRIDE if nr_ovr < MAX_OVERRIDES && e.get(2) == Some(&0) => {
                if let (Some(gsi), Some(flags)) = (le_u32(e, 4), le_u16(e, 8)) {
                    madt.overrides[nr_ovr] = Some(InterruptOverride { source: e[3], gsi, flags });
                    nr_ovr += 1;
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(madt)
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(madt_names_the_ioapic_and_the_timer_override),
    crate::ktest!(madt_parser_refuses_bad_entries),
];

/// QEMU's `pc` machine (under SeaBIOS and OVMF alike): one I/O APIC at the
/// architectural address with GSI base 0, and ISA IRQ 0 (the PIT) on GSI 2.
fn madt_names_the_ioapic_and_the_timer_override() -> crate::lib::ktest::KResult {
    let madt = madt().map_err(|e| alloc::format!("MADT: {:?}", e))?;
    crate::kassert_eq!(madt.local_apic_addr, 0xfee0_0000);
    let (io, pin) = madt.ioapic_for_gsi(madt.isa_gsi(0)).ok_or("no I/O APIC for the PIT's GSI")?;
    crate::kassert_eq!((io.phys_addr, io.gsi_base), (0xfec0_0000, 0));
    crate::kassert_eq!(pin, 2);
    // Lines without an override are identity-mapped.
    crate::kassert_eq!(madt.isa_gsi(1), 1);
    crate::kassert!(madt.nr_cpus >= 1, "no CPU in the MADT");
    Ok(())
}

/// Hand-made MADTs: truncated or zero-length entries are errors, short entries
/// of known types are skipped, unknown types are skipped.
fn madt_parser_refuses_bad_entries() -> crate::lib::ktest::KResult {
    let mut t = alloc::vec![0u8; MADT_ENTRIES_OFFSET];
    t[SDT_HEADER_LEN..SDT_HEADER_LEN + 4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
    // An I/O APIC (id 3, at 0xfec01000, GSI base 24), a too-short x2APIC entry, an
    // unknown type 0x7f, an override of IRQ 0 to GSI 2, and a too-short I/O APIC entry.
    t.extend_from_slice(&[1, 12, 3, 0, 0x00, 0x10, 0xc0, 0xfe, 24, 0, 0, 0]);
    t.extend_from_slice(&[9, 4, 0xaa, 0xbb]);
    t.extend_from_slice(&[0x7f, 4, 0xaa, 0xbb]);
    // CPUs: an enabled local APIC, a disabled one, an online-capable x2APIC.
    t.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&[0, 8, 1, 1, 0, 0, 0, 0]);
    t.extend_from_slice(&[9, 16, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0]);
    t.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 5, 0]);
    t.extend_from_slice(&[1, 4, 7, 0]);
    // A two-byte override (too short even for its bus byte).
    t.extend_from_slice(&[2, 2]);
    let m = parse_madt(&t).map_err(|e| alloc::format!("{:?}", e))?;
    crate::kassert_eq!(m.ioapics[0], Some(IoApicEntry { id: 3, phys_addr: 0xfec0_1000, gsi_base: 24 }));
    crate::kassert_eq!(m.ioapics[1], None);
    crate::kassert_eq!(m.overrides[0], Some(InterruptOverride { source: 0, gsi: 2, flags: 5 }));
    crate::kassert_eq!(m.overrides[1], None);
    crate::kassert_eq!(m.nr_cpus, 2);
    // Only the enabled local APIC (id 0) is enabled; the x2APIC one is online capable.
    crate::kassert_eq!(m.nr_enabled, 1);
    crate::kassert_eq!(&m.enabled_apic_ids[..2], &[Some(0), None]);
    crate::kassert_eq!(m.ioapic_for_gsi(2), None);
    crate::kassert_eq!(m.ioapic_for_gsi(26).map(|(_, pin)| pin), Some(2));
    let mut truncated = t.clone();
    truncated.extend_from_slice(&[1, 12, 0]);
    crate::kassert_eq!(parse_madt(&truncated), Err(AcpiError::BadTable("MADT entry length")));
    let mut zero = t.clone();
    zero.extend_from_slice(&[5, 0]);
    crate::kassert_eq!(parse_madt(&zero), Err(AcpiError::BadTable("MADT entry length")));
    crate::kassert_eq!(parse_madt(&t[..SDT_HEADER_LEN + 2]), Err(AcpiError::BadTable("MADT length")));
    Ok(())
}
