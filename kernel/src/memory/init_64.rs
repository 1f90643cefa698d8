//! The kernel's own mappings, built by `mm` (Linux `arch/x86/mm/init_64.c`).
//!
//! The bootloader hands over page tables that map the kernel image, its stack,
//! the boot info, the ramdisk and all physical memory. At boot the kernel
//! rebuilds all of it in the PML4 that `mm` owns, so every kernel page-table
//! page is counted, accounted in `PageTables:` and walked by the same code as
//! user tables:
//!
//! - the **direct map** (Linux `kernel_physical_mapping_init`): physical
//!   memory from 0 up to the end of the highest RAM region (usable or
//!   bootloader-owned), and at least the low 4 GiB so the firmware tables and
//!   the APICs' MMIO pages are covered, at the bootloader's offset, with 1 GiB
//!   pages where the CPU has `pdpe1gb` and the offset is 1 GiB aligned, else
//!   2 MiB pages; writable, never executable. Reserved ranges above 4 GiB
//!   (QEMU reports 1 TiB of them at 0xfd_0000_0000) are not mapped;
//! - every **other boot mapping** is re-created leaf by leaf with its frame
//!   and size. The kernel image (the top 2 GiB, Linux `__START_KERNEL_map`)
//!   keeps the per-segment permissions the bootloader derived from the ELF
//!   program headers; everything else (stack, boot info, ramdisk) becomes
//!   non-executable.
//!
//! The boot tables are no longer reachable afterwards; their frames stay in
//! the bootloader's reserved regions.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::info::MemoryRegionKind;

use mm::addr::{HumanBytes, Pfn, PAGE_SHIFT};
use mm::gfp::GFP_KERNEL;
use mm::sync::SpinLock;
use spin::Once;
use mm::pgtable::{AddressSpace, walk_leaves, Leaf, MapError, PageSize, PteFlags, VirtAddr, KERNEL_PML4_START, PMD_SIZE, PTRS_PER_TABLE, PUD_SIZE};
use mm::vmalloc::{VMALLOC_END, VMALLOC_START};

use crate::arch::x86_64::layout::{DIRECT_MAP_MIN_END, KERNEL_IMAGE_BASE};
use crate::arch::x86_64::memmap::BootFacts;
use crate::memory::pgtable::{DirectMapPt, PGTABLE_CTL};
use crate::arch::x86_64::cpu;
use crate::arch::x86_64::platform::KernelPlatform;
use crate::memory::page_alloc::{page_alloc, KernelPageAlloc};


/// The kernel's address space: the upper half every user space shares.
pub type KernelSpace = AddressSpace<'static, KernelPageAlloc, DirectMapPt>;

static KERNEL_SPACE: Once<SpinLock<KernelSpace, KernelPlatform>> = Once::new();
static KERNEL_ROOT_PFN: AtomicU64 = AtomicU64::new(0);
static PT_MEM: DirectMapPt = DirectMapPt;

/// Why the kernel page tables could not be set up.
pub enum BootError {
    NoMemory,
    Mappings(InitError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NoMemory => write!(f, "out of memory for the kernel page tables"),
            BootError::Mappings(e) => write!(f, "kernel mappings: {}", e),
        }
    }
}

/// Builds the kernel's own PML4 (the direct map, the image and the other boot
/// mappings) and switches to it. Call once, after the page allocator is up
/// and before any user address space exists.
pub fn init(facts: &BootFacts) -> Result<(), BootError> {
    let boot_root = Pfn::containing(cpu::page_table_root_phys());
    let mut space = AddressSpace::new_kernel(page_alloc(), &PT_MEM, &PGTABLE_CTL, GFP_KERNEL)
        .map_err(|_| BootError::NoMemory)?;
    let gbpages = cpu::features().gbpages;
    let mappings = build_mappings(&mut space, boot_root, facts, gbpages).map_err(BootError::Mappings)?;
    let root = space.root();
    // SAFETY: the new root maps everything the boot root mapped in the kernel
    // half (same frames; the direct map at the same offset, covering at least
    // what the bootloader covered). The lower half held nothing the kernel uses.
    unsafe { cpu::write_cr3(root.phys_addr()) };
    KERNEL_ROOT_PFN.store(root.0, Ordering::SeqCst);
    KERNEL_SPACE.call_once(|| SpinLock::new(space));
    log::info!("kernel page tables at {}: {}", root, mappings);
    Ok(())
}

/// The kernel's address space and its lock; panics before [`init`].
pub fn kernel_space() -> &'static SpinLock<KernelSpace, KernelPlatform> {
    KERNEL_SPACE.get().expect("init_64::init builds the kernel page tables at boot")
}

/// Runs `f` on the kernel's address space (with its lock held).
pub fn with_kernel_space<R>(f: impl FnOnce(&KernelSpace) -> R) -> R {
    f(&kernel_space().lock())
}

/// The kernel's PML4 (what user address spaces copy their upper half from).
pub fn kernel_root() -> Option<Pfn> {
    match KERNEL_ROOT_PFN.load(Ordering::SeqCst) {
        0 => None,
        pfn => Some(Pfn(pfn)),
    }
}

/// Flags kept from a boot leaf: permissions and caching.
const KEPT_FLAGS: PteFlags = PteFlags::WRITABLE.union(PteFlags::NX).union(PteFlags::GLOBAL).union(PteFlags::PWT).union(PteFlags::PCD);

/// What [`init`] built.
#[derive(Clone, Copy, Debug)]
pub struct KernelMappings {
    pub direct_map_start: u64,
    pub direct_map_bytes: u64,
    pub direct_map_page: PageSize,
    /// Pages of the image: read-only + executable (text), read-only (rodata),
    /// writable (data, bss).
    pub image_text_pages: u64,
    pub image_ro_pages: u64,
    pub image_rw_pages: u64,
    /// Bytes of the other boot mappings (stack, boot info, ramdisk).
    pub other_bytes: u64,
}

/// Why the kernel mappings could not be built.
#[derive(Debug)]
pub enum InitError {
    /// The direct-map offset is not even 2 MiB aligned.
    UnalignedDirectMap { offset: u64 },
    /// The bootloader mapped something in the vmalloc range.
    VmallocRangeInUse { va: u64 },
    Map { va: u64, error: MapError },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::UnalignedDirectMap { offset } => write!(f, "direct-map offset {:#x} is not 2 MiB aligned", offset),
            InitError::VmallocRangeInUse { va } => write!(f, "the bootloader mapped {:#x}, inside the vmalloc range", va),
            InitError::Map { va, error } => write!(f, "mapping {:#x} failed: {:?}", va, error),
        }
    }
}

/// Builds the direct map and re-creates the other boot mappings of `boot_root`
/// in `space` (the kernel's PML4, not yet in CR3).
fn build_mappings(space: &mut KernelSpace, boot_root: Pfn, facts: &BootFacts, gbpages: bool) -> Result<KernelMappings, InitError> {
    let offset = facts.physical_memory_offset;
    let page = match gbpages && offset % PUD_SIZE == 0 {
        true => PageSize::Size1G,
        false if offset % PMD_SIZE == 0 => PageSize::Size2M,
        false => return Err(InitError::UnalignedDirectMap { offset }),
    };
    let is_ram = |kind| matches!(kind, MemoryRegionKind::Usable | MemoryRegionKind::Bootloader);
    let ram_end = facts.regions.iter().filter(|r| is_ram(r.kind)).map(|r| r.end).max().unwrap_or(0);
    let bytes = ram_end.max(DIRECT_MAP_MIN_END).next_multiple_of(page.bytes());
    let flags = PteFlags::WRITABLE | PteFlags::NX | PteFlags::GLOBAL;
    let va = VirtAddr::try_new(offset).ok_or(InitError::Map { va: offset, error: MapError::OutOfRange })?;
    let mut tlb = mm::tlb::MmuGather::new();
    let r = space.map_range(va, Pfn(0), bytes, page, flags, GFP_KERNEL, &mut tlb);
    // Nothing was mapped before, so there is nothing to flush; a failed map
    // rolled back and its tables go back through the gather.
    let _ = crate::memory::pgtable::tlb_finish(tlb);
    r.map_err(|error| InitError::Map { va: offset, error })?;

    let mut m = KernelMappings {
        direct_map_start: offset,
        direct_map_bytes: bytes,
        direct_map_page: page,
        image_text_pages: 0,
        image_ro_pages: 0,
        image_rw_pages: 0,
        other_bytes: 0,
    };
    let direct_map = offset..offset + bytes;
    let mut result = Ok(());
    walk_leaves(&DirectMapPt, boot_root, KERNEL_PML4_START..PTRS_PER_TABLE, &mut |leaf: Leaf| {
        let va = leaf.va.as_u64();
        // The boot direct map (the leaves that map `va - offset`) is replaced
        // by ours, including what it mapped of reserved ranges beyond it.
        let boot_direct_map = va.checked_sub(offset) == Some(leaf.pfn.phys_addr());
        if result.is_err() || direct_map.contains(&va) || boot_direct_map {
            return;
        }
        if (VMALLOC_START..VMALLOC_END).contains(&va) {
            result = Err(InitError::VmallocRangeInUse { va });
            return;
        }
        let mut flags = leaf.flags & KEPT_FLAGS;
        let pages = leaf.size.bytes() >> PAGE_SHIFT;
        if va >= KERNEL_IMAGE_BASE {
            match (flags.contains(PteFlags::WRITABLE), flags.contains(PteFlags::NX)) {
                (false, false) => m.image_text_pages += pages,
                (false, true) => m.image_ro_pages += pages,
                // Data; a writable and executable leaf (the bootloader makes
                // none for an ELF segment) would lose its execute permission.
                (true, _) => {
                    flags |= PteFlags::NX;
                    m.image_rw_pages += pages;
                }
            }
        } else {
            flags |= PteFlags::NX;
            m.other_bytes += leaf.size.bytes();
        }
        if let Err(error) = space.map(leaf.va, leaf.pfn, leaf.size, flags, GFP_KERNEL) {
            result = Err(InitError::Map { va, error });
        }
    });
    result.map(|()| m)
}

impl fmt::Display for KernelMappings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "direct map {:#x}-{:#x} ({}) with {} pages; image: {} text (RX), {} rodata (R), {} data (RW, NX); other boot mappings {} (NX)",
            self.direct_map_start,
            self.direct_map_start + self.direct_map_bytes - 1,
            HumanBytes(self.direct_map_bytes),
            match self.direct_map_page {
                PageSize::Size1G => "1 GiB",
                PageSize::Size2M => "2 MiB",
                PageSize::Size4K => "4 KiB",
            },
            HumanBytes(self.image_text_pages << PAGE_SHIFT),
            HumanBytes(self.image_ro_pages << PAGE_SHIFT),
            HumanBytes(self.image_rw_pages << PAGE_SHIFT),
            HumanBytes(self.other_bytes)
        )
    }
}
