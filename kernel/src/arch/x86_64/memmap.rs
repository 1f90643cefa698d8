//! The physical memory map the bootloader handed over, kept for the life of
//! the kernel and printed the way Linux prints the firmware's e820 table:
//!
//! ```text
//! bootloader-provided physical RAM map:
//!   [mem 0x0000000000000000-0x000000000009efff] usable
//!   [mem 0x0000000000100000-0x00000000003fffff] bootloader (kernel, page tables, boot info)
//! ```
//!
//! followed by per-kind totals. `Bootloader` regions hold the kernel image,
//! its stack, the boot page tables and the boot info; only `usable` RAM is
//! free for the page allocator.

use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use bootloader_api::BootInfo;
use mm::addr::HumanBytes;
use spin::Once;

/// What the kernel keeps from `BootInfo`.
#[derive(Debug)]
pub struct BootFacts {
    /// Regions sorted by start address, adjacent regions of one kind merged.
    pub regions: Vec<MemoryRegion>,
    /// Virtual address where all physical memory is mapped (the direct map).
    pub physical_memory_offset: u64,
    pub kernel_phys_addr: u64,
    pub kernel_len: u64,
    pub kernel_virt_addr: u64,
    pub stack_bottom: u64,
    pub stack_len: u64,
    pub rsdp_addr: Option<u64>,
    pub ramdisk: Option<(u64, u64)>,
}

static FACTS: Once<BootFacts> = Once::new();

/// Where the direct map starts (Linux `page_offset_base`): a copy of
/// `BootFacts::physical_memory_offset` that [`phys_to_virt`], the hottest
/// reader (every page-table entry access), loads without the `Once` check.
static PAGE_OFFSET_BASE: AtomicU64 = AtomicU64::new(0);

/// Copies what the kernel needs out of `BootInfo`. Needs the heap.
pub fn init(boot_info: &BootInfo) -> &'static BootFacts {
    let facts = FACTS.call_once(|| {
        let mut regions: Vec<MemoryRegion> = boot_info.memory_regions.iter().copied().collect();
        regions.sort_unstable_by_key(|r| r.start);
        BootFacts {
            regions: merge_adjacent(regions),
            physical_memory_offset: boot_info.physical_memory_offset.into_option().unwrap_or(0),
            kernel_phys_addr: boot_info.kernel_addr,
            kernel_len: boot_info.kernel_len,
            kernel_virt_addr: boot_info.kernel_image_offset,
            stack_bottom: boot_info.kernel_stack_bottom,
            stack_len: boot_info.kernel_stack_len,
            rsdp_addr: boot_info.rsdp_addr.into_option(),
            ramdisk: boot_info.ramdisk_addr.into_option().map(|a| (a, boot_info.ramdisk_len)),
        }
    });
    PAGE_OFFSET_BASE.store(facts.physical_memory_offset, Ordering::Relaxed);
    facts
}

/// The boot facts; panics if called before [`init`] (a kernel bug).
pub fn facts() -> &'static BootFacts {
    FACTS.get().expect("memmap::init runs before anything asks for boot facts")
}

fn merge_adjacent(regions: Vec<MemoryRegion>) -> Vec<MemoryRegion> {
    let mut out: Vec<MemoryRegion> = Vec::with_capacity(regions.len());
    for r in regions {
        match out.last_mut() {
            Some(last) if last.kind == r.kind && last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// Linux-style name of a region kind (e820 names for BIOS types, the UEFI
/// memory type names for UEFI types).
pub fn kind_name(kind: MemoryRegionKind) -> &'static str {
    match kind {
        MemoryRegionKind::Usable => "usable",
        MemoryRegionKind::Bootloader => "bootloader (kernel, page tables, boot info)",
        MemoryRegionKind::UnknownBios(t) => match t {
            2 => "reserved",
            3 => "ACPI data",
            4 => "ACPI NVS",
            5 => "unusable",
            7 => "persistent (type 7)",
            _ => "BIOS type (unknown)",
        },
        MemoryRegionKind::UnknownUefi(t) => match t {
            0 => "reserved (EfiReservedMemoryType)",
            1 | 2 => "UEFI loader code/data",
            3 | 4 => "UEFI boot services code/data",
            5 | 6 => "UEFI runtime services code/data",
            8 => "unusable",
            9 => "ACPI data",
            10 => "ACPI NVS",
            11 | 12 => "MMIO",
            14 => "persistent",
            _ => "UEFI type (unknown)",
        },
        _ => "unknown",
    }
}

/// Total bytes per kind: (usable, bootloader, everything else).
pub fn totals(regions: &[MemoryRegion]) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for r in regions {
        let len = r.end.saturating_sub(r.start);
        match r.kind {
            MemoryRegionKind::Usable => t.0 += len,
            MemoryRegionKind::Bootloader => t.1 += len,
            _ => t.2 += len,
        }
    }
    t
}

/// Writes the memory map and the totals.
pub fn write_memmap(out: &mut impl Write, facts: &BootFacts) -> fmt::Result {
    writeln!(out, "bootloader-provided physical RAM map:")?;
    for r in &facts.regions {
        if r.end <= r.start {
            continue;
        }
        writeln!(out, "  [mem {:#018x}-{:#018x}] {}", r.start, r.end - 1, kind_name(r.kind))?;
    }
    let (usable, boot, other) = totals(&facts.regions);
    writeln!(
        out,
        "total: {} usable ({} pages), {} bootloader, {} in reserved/firmware ranges",
        HumanBytes(usable),
        usable / mm::addr::PAGE_SIZE,
        HumanBytes(boot),
        HumanBytes(other)
    )?;
    writeln!(
        out,
        "kernel image: phys {:#x}-{:#x} ({}), virt {:#x}; stack {:#x} ({}); direct map at {:#x}",
        facts.kernel_phys_addr,
        facts.kernel_phys_addr + facts.kernel_len,
        HumanBytes(facts.kernel_len),
        facts.kernel_virt_addr,
        facts.stack_bottom,
        HumanBytes(facts.stack_len),
        facts.physical_memory_offset
    )?;
    match facts.ramdisk {
        Some((addr, len)) => write!(out, "ramdisk: virt {:#x} ({})", addr, HumanBytes(len))?,
        None => write!(out, "ramdisk: none")?,
    }
    match facts.rsdp_addr {
        Some(rsdp) => writeln!(out, "; ACPI RSDP at {:#x}", rsdp),
        None => writeln!(out, "; no ACPI RSDP"),
    }
}

/// The direct-map address of physical address `phys` (the direct map covers
/// RAM and the low 4 GiB, see `init_64`).
#[inline]
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    let base = PAGE_OFFSET_BASE.load(Ordering::Relaxed);
    debug_assert!(base != 0, "phys_to_virt before memmap::init");
    (base + phys) as *mut u8
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(boot_info_memory_map_is_sane),
    crate::ktest!(kernel_lives_in_the_upper_half),
    crate::ktest!(kernel_image_is_not_in_usable_memory),
    crate::ktest!(direct_map_reaches_the_live_page_table),
];

fn boot_info_memory_map_is_sane() -> crate::lib::ktest::KResult {
    let f = facts();
    crate::kassert!(!f.regions.is_empty(), "empty memory map");
    for pair in f.regions.windows(2) {
        crate::kassert!(pair[0].end <= pair[1].start, "overlapping regions {:?} {:?}", pair[0], pair[1]);
    }
    let (usable, _, _) = totals(&f.regions);
    // QEMU's default machine has at least 128 MiB; the runner passes -m.
    crate::kassert!(usable >= 32 << 20, "only {} usable", HumanBytes(usable));
    crate::kassert!(usable < 1 << 40, "implausible usable RAM {}", HumanBytes(usable));
    crate::kassert!(f.physical_memory_offset != 0, "no direct map (Mapping::Dynamic requested)");
    Ok(())
}

fn kernel_image_is_not_in_usable_memory() -> crate::lib::ktest::KResult {
    let f = facts();
    let (k0, k1) = (f.kernel_phys_addr, f.kernel_phys_addr + f.kernel_len);
    crate::kassert!(f.kernel_len > 0, "kernel length 0");
    for r in f.regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        crate::kassert!(k1 <= r.start || k0 >= r.end, "kernel {:#x}-{:#x} inside usable {:?}", k0, k1, r);
    }
    Ok(())
}

fn direct_map_reaches_the_live_page_table() -> crate::lib::ktest::KResult {
    // Through the direct map, the PML4 in CR3 must contain the entry that maps
    // this very function: the map and the hardware agree.
    let pml4_phys = crate::arch::x86_64::cpu::page_table_root_phys();
    let pml4 = (facts().physical_memory_offset + pml4_phys) as *const u64;
    let here = direct_map_reaches_the_live_page_table as fn() -> crate::lib::ktest::KResult as usize as u64;
    let index = (here >> 39) & 511;
    // SAFETY: the direct map covers all physical memory and CR3 points at a
    // 4 KiB page-table page, so entry `index` (< 512) is readable.
    let entry = unsafe { pml4.add(index as usize).read_volatile() };
    crate::kassert!(entry & 1 == 1, "PML4 entry {} for {:#x} not present: {:#x}", index, here, entry);
    Ok(())
}

fn kernel_lives_in_the_upper_half() -> crate::lib::ktest::KResult {
    let f = facts();
    let code = kernel_lives_in_the_upper_half as fn() -> crate::lib::ktest::KResult as usize as u64;
    let stack = &f as *const _ as u64;
    for (what, addr) in [("code", code), ("stack", stack), ("direct map", f.physical_memory_offset)] {
        crate::kassert!(addr >= crate::arch::x86_64::layout::KERNEL_HALF_START, "{} at {:#x} is in the user half", what, addr);
    }
    Ok(())
}
