//! The kernel side of the `mm` page tables: page-table pages are reached
//! through the direct map ([`DirectMapPt`]), TLB invalidation is `invlpg` or
//! a CR3 reload ([`X86Tlb`]), new user pages are cleared by the `clear`
//! crate ([`KernelClear`]). Also the system-wide knobs: `vm.pt_reclaim`
//! (free empty page-table pages) and `transparent_hugepage`.
//!
//! The kernel half (PML4 entries 256..511: direct map, image, stack, vmalloc)
//! is built by `init_64` and `vmalloc` in an mm-owned PML4; user address
//! spaces copy those entries.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::addr::{Pfn, PAGE_SIZE};
use mm::fault::{ClearPages, ThpCtl, ThpMode};
use mm::pgtable::{AddressSpace, PgtableCtl, PtMem, VirtAddr, PTRS_PER_TABLE};
use mm::shrinker::{ShrinkControl, Shrinker};
use mm::tlb::{FlushPlan, MmuGather, TlbFlush};

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::memmap;
use crate::memory::page_alloc::{page_alloc, KernelPageAlloc};

/// Page-table pages through the direct map.
pub struct DirectMapPt;

fn entry_ptr(table: Pfn, index: usize) -> *mut u64 {
    assert!(index < PTRS_PER_TABLE, "page-table index {} out of range", index);
    (memmap::phys_to_virt(table.phys_addr()) as *mut u64).wrapping_add(index)
}

impl PtMem for DirectMapPt {
    fn read_entry(&self, table: Pfn, index: usize) -> u64 {
        // SAFETY: mm passes only page-table frames it allocated (or the boot
        // root) and index < 512 (checked): the entry is in RAM, mapped by the
        // direct map, 8-byte aligned. Volatile: the CPU sets A/D bits.
        unsafe { entry_ptr(table, index).read_volatile() }
    }

    fn write_entry(&self, table: Pfn, index: usize, value: u64) {
        // SAFETY: as in `read_entry`; a single aligned 64-bit store, so the
        // hardware walker never sees a torn entry.
        unsafe { entry_ptr(table, index).write_volatile(value) }
    }

    fn table_is_zero(&self, table: Pfn) -> bool {
        // SAFETY: as in `read_entry`, for the whole 4 KiB table (512 aligned
        // entries). Plain reads: the table is unlinked and all its entries
        // were cleared, so no walker sets A/D bits in it any more.
        let entries = unsafe { &*(entry_ptr(table, 0) as *const [u64; PTRS_PER_TABLE]) };
        entries.iter().fold(0, |acc, &e| acc | e) == 0
    }

    fn zero_table(&self, table: Pfn) {
        // SAFETY: a freshly allocated page-table frame owned by mm.
        unsafe { clear::clear_page(memmap::phys_to_virt(table.phys_addr())) }
    }

    fn xchg_entry(&self, table: Pfn, index: usize, value: u64) -> u64 {
        // SAFETY: as in `read_entry`: an 8-byte aligned entry in RAM that the
        // kernel only accesses with single 64-bit loads and stores, so viewing it
        // as an atomic is sound. A locked `xchg`, so accessed/dirty bits another
        // CPU's page walker sets between our read and our write are not lost.
        unsafe { AtomicU64::from_ptr(entry_ptr(table, index)) }.swap(value, Ordering::SeqCst)
    }
}

/// `invlpg` for small ranges, a CR3 reload for everything else.
pub struct X86Tlb;

impl TlbFlush for X86Tlb {
    fn flush_range(&self, start: VirtAddr, nr_pages: u64) {
        for i in 0..nr_pages {
            cpu::invlpg(start.as_u64() + i * PAGE_SIZE);
        }
    }

    fn flush_all(&self) {
        // SAFETY: reloading the current root changes no mapping.
        unsafe { cpu::write_cr3(cpu::read_cr3()) }
    }
}

/// New user pages are cleared with the kernel's clearing policy.
pub struct KernelClear;

impl ClearPages for KernelClear {
    fn clear_page(&self, pfn: Pfn) {
        // SAFETY: the fault handler owns the freshly allocated frame.
        unsafe { crate::memory::clear_page::clear_frames(pfn, 0, None) }
    }

    fn clear_huge_page(&self, base: Pfn, nr_subpages: u64, hint_subpage: u64) {
        let order = nr_subpages.trailing_zeros() as usize;
        // SAFETY: the fault handler owns the freshly allocated block.
        unsafe { crate::memory::clear_page::clear_frames(base, order, Some(hint_subpage as usize)) }
    }
}

pub static PGTABLE_CTL: PgtableCtl = PgtableCtl::new();
pub static THP: ThpCtl = ThpCtl::new(ThpMode::Madvise);
static PT_MEM: DirectMapPt = DirectMapPt;
static TLB: X86Tlb = X86Tlb;
static CLEAR: KernelClear = KernelClear;

pub type UserSpace = AddressSpace<'static, KernelPageAlloc, DirectMapPt>;

/// The kernel's page-table root, whose upper half every user address space
/// shares (set up by `vmalloc::init` at boot).
pub fn kernel_root() -> Pfn {
    crate::memory::init_64::kernel_root().expect("vmalloc::init builds the kernel page tables at boot")
}

/// A new user address space sharing the kernel half.
pub fn new_user_space(asid: u16, gfp: mm::gfp::Gfp) -> Result<UserSpace, mm::pgtable::NewSpaceError> {
    AddressSpace::new_user(page_alloc(), &PT_MEM, &PGTABLE_CTL, Some(kernel_root()), asid, gfp)
}

/// A gather for user address spaces that flushes and frees every
/// `GATHER_BATCH` pages (Linux `tlb_flush_mmu`), so tearing down a large
/// mapping needs no memory even when none is left.
pub fn tlb_gather() -> MmuGather {
    MmuGather::with_batch_flush(|tlb| {
        tlb_finish(tlb.take_batch());
    })
}

/// Flushes the TLB for what `tlb` gathered, then frees the gathered pages
/// (zeroed page-table pages go to the quicklist while it has room).
pub fn tlb_finish(tlb: MmuGather) -> FlushPlan {
    tlb.finish_into(&TLB, page_alloc(), Some(&PGTABLE_CTL.quicklist))
}

/// Gives the quicklist's zeroed page-table pages back under memory pressure
/// (and on `drop_caches`).
struct QuicklistShrinker;

impl Shrinker for QuicklistShrinker {
    fn name(&self) -> &str {
        "pgtable-quicklist"
    }
    fn count_objects(&self, _: &ShrinkControl) -> u64 {
        PGTABLE_CTL.quicklist.len() as u64
    }
    fn scan_objects(&self, _: &mut ShrinkControl) -> u64 {
        PGTABLE_CTL.quicklist.drain(|p| page_alloc().free_pages(p)) as u64
    }
}

pub static QUICKLIST_SHRINKER: &dyn Shrinker = &QuicklistShrinker;

pub fn clear_ops() -> &'static KernelClear {
    &CLEAR
}

fn thp_mode_name() -> alloc::string::String {
    alloc::string::String::from(THP.mode_str())
}

/// `vm.pt_reclaim`: free empty page-table pages on unmap / MADV_DONTNEED.
pub const SYSCTL_PT_RECLAIM: crate::lib::sysctl::Sysctl = crate::lib::sysctl::Sysctl {
    name: "vm.pt_reclaim",
    values: "0, 1",
    get: || alloc::format!("{}", PGTABLE_CTL.pt_reclaim() as u8),
    set: |v| match v {
        "0" | "1" => {
            PGTABLE_CTL.set_pt_reclaim(v == "1");
            Ok(())
        }
        _ => Err(()),
    },
};

/// `transparent_hugepage`: always, madvise (default) or never.
pub const SYSCTL_THP: crate::lib::sysctl::Sysctl = crate::lib::sysctl::Sysctl {
    name: "transparent_hugepage",
    values: "always, madvise, never",
    get: thp_mode_name,
    set: |v| {
        let mode = match v {
            "always" => ThpMode::Always,
            "madvise" => ThpMode::Madvise,
            "never" => ThpMode::Never,
            _ => return Err(()),
        };
        THP.set_mode(mode);
        Ok(())
    },
};
