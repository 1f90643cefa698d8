//! The kernel's vmalloc area and its page tables.
//!
//! At boot the kernel moves from the bootloader's page tables to a PML4 that
//! `mm` owns (`AddressSpace::new_kernel`): `init_64` builds the direct map and
//! re-creates the image, stack and other boot mappings in it, and the PUD
//! tables of the whole vmalloc range are preallocated, so user address spaces created later share
//! every vmalloc mapping (Linux `preallocate_vmalloc_pages`).
//!
//! [`vmalloc`] / [`vfree`] wrap `mm::vmalloc::Vmalloc`: every allocation a
//! vmalloc call makes — data pages, page-table pages, bookkeeping — uses the
//! caller's GFP flags (the bookkeeping through the scoped-GFP heap). Faults
//! in a guard page are reported by [`describe_fault`].

use core::sync::atomic::{AtomicU64, Ordering};

use mm::addr::Pfn;
use mm::gfp::{Gfp, GFP_KERNEL};
use mm::pgtable::{AddressSpace, VirtAddr};
use mm::sched_mm::MemallocScope;
use mm::sync::SpinLock;
use mm::vmalloc::{Caller, ScopedHeap, VmArea, Vmalloc, VmallocAddr, VmallocDeps, VmallocError};
use spin::Once;

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::platform::KernelPlatform;
use crate::memory::page_alloc::{page_alloc, KernelPageAlloc};
use crate::memory::pgtable::{DirectMapPt, X86Tlb, PGTABLE_CTL};

pub type KernelSpace = AddressSpace<'static, KernelPageAlloc, DirectMapPt>;

static KERNEL_SPACE: Once<SpinLock<KernelSpace, KernelPlatform>> = Once::new();
static VMALLOC: Vmalloc<KernelPlatform> = Vmalloc::new();
/// The allocation scope of the (single) kernel task: `memalloc_nofs_save()`
/// and friends narrow every allocation made while their guard lives.
pub static MEMALLOC_SCOPE: MemallocScope = MemallocScope::new();
static PT_MEM: DirectMapPt = DirectMapPt;
static TLB: X86Tlb = X86Tlb;
static KERNEL_ROOT_PFN: AtomicU64 = AtomicU64::new(0);

/// Why the kernel page tables could not be set up.
pub enum InitError {
    NoMemory,
    Mappings(crate::memory::init_64::InitError),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoMemory => write!(f, "out of memory for the kernel page tables"),
            InitError::Mappings(e) => write!(f, "kernel mappings: {}", e),
        }
    }
}

/// Builds the kernel's own PML4 (direct map, image and the other boot
/// mappings through `init_64`, plus the vmalloc PUD tables) and switches to
/// it. Call once, after the page allocator is up and before any user address
/// space exists.
pub fn init(facts: &crate::arch::x86_64::memmap::BootFacts) -> Result<(), InitError> {
    let boot_root = Pfn::containing(cpu::page_table_root_phys());
    let mut space = AddressSpace::new_kernel(page_alloc(), &PT_MEM, &PGTABLE_CTL, GFP_KERNEL)
        .map_err(|_| InitError::NoMemory)?;
    let gbpages = cpu::features().gbpages;
    let mappings = crate::memory::init_64::init(&mut space, boot_root, facts, gbpages).map_err(InitError::Mappings)?;
    VMALLOC.preallocate_page_tables(&mut space, GFP_KERNEL).map_err(|_| InitError::NoMemory)?;
    let root = space.root();
    // SAFETY: the new root maps everything the boot root mapped in the kernel
    // half (same frames; the direct map at the same offset, covering at least
    // what the bootloader covered) plus the empty vmalloc tables. The lower
    // half held nothing the kernel uses.
    unsafe { cpu::write_cr3(root.phys_addr()) };
    KERNEL_ROOT_PFN.store(root.0, Ordering::SeqCst);
    KERNEL_SPACE.call_once(|| SpinLock::new(space));
    log::info!("kernel page tables at {}: {}", root, mappings);
    log::info!("vmalloc: range {:#x}-{:#x}", VMALLOC.range().0, VMALLOC.range().1);
    Ok(())
}

/// Runs `f` on the kernel's address space (with its lock held).
pub fn with_kernel_space<R>(f: impl FnOnce(&KernelSpace) -> R) -> R {
    f(&KERNEL_SPACE.get().expect("vmalloc::init ran at boot").lock())
}

/// The kernel's PML4 (what user address spaces copy their upper half from).
pub fn kernel_root() -> Option<Pfn> {
    match KERNEL_ROOT_PFN.load(Ordering::SeqCst) {
        0 => None,
        pfn => Some(Pfn(pfn)),
    }
}

fn with_deps<R>(f: impl FnOnce(&VmallocDeps<'_, KernelPageAlloc, SpinLock<KernelSpace, KernelPlatform>, ScopedHeap<'_>, X86Tlb>) -> R) -> R {
    let kernel_pt = KERNEL_SPACE.get().expect("vmalloc::init ran at boot");
    let book = ScopedHeap { scope: &MEMALLOC_SCOPE, nofail_stall: bookkeeping_stall };
    f(&VmallocDeps { alloc: page_alloc(), kernel_pt, book: &book, tlb: &TLB })
}

/// A `__GFP_NOFAIL` vmalloc keeps failing to allocate its bookkeeping.
fn bookkeeping_stall(gfp: Gfp, capacity: usize, tries: u64) {
    log::warn!("vmalloc: bookkeeping allocation loops for long: {} entries, mode:{:?}, {} tries (__GFP_NOFAIL keeps trying)", capacity, gfp, tries);
}

/// Linux `vmalloc(size)` with explicit flags: virtually contiguous, physically
/// scattered memory followed by a guard page.
#[track_caller]
pub fn vmalloc(size: usize, gfp: Gfp) -> Result<VmArea, VmallocError> {
    let caller = Caller::here();
    with_deps(|deps| VMALLOC.vmalloc(size, gfp, caller, deps))
}

/// Linux `vfree`: unmap, flush, free the pages (and emptied page tables).
pub fn vfree(area: VmArea) {
    if let Err(area) = with_deps(|deps| VMALLOC.vfree(area, deps)) {
        log::error!("vfree: {:#x} is not a vmalloc area; leaking it", area.addr().as_u64());
        core::mem::forget(area);
    }
}

/// Pages currently backing vmalloc areas.
pub fn nr_vmalloc_pages() -> u64 {
    VMALLOC.nr_vmalloc_pages()
}

/// Bytes of an area as a mutable slice.
///
/// # Safety
/// The caller owns `area` and no other reference to its memory exists.
pub unsafe fn area_bytes(area: &mut VmArea) -> &mut [u8] {
    // SAFETY: the area's pages are mapped at `addr()` for `nr_pages()` pages
    // and owned by the caller (contract above).
    unsafe { core::slice::from_raw_parts_mut(area.addr().as_u64() as *mut u8, (area.nr_pages() * 4096) as usize) }
}

/// A line for the oops report when `addr` is in the vmalloc range.
pub fn describe_fault(addr: u64) -> Option<alloc::string::String> {
    let va = VirtAddr::try_new(addr)?;
    Some(match VMALLOC.classify(va) {
        VmallocAddr::Outside => return None,
        VmallocAddr::Guard(area) => alloc::format!(
            "BUG: access to the vmalloc guard page at {:#x}: overflow off the end of area {:#x}-{:#x} ({}) allocated by {}",
            addr,
            area.start.as_u64(),
            area.mapped_end(),
            mm::addr::HumanBytes(area.mapped_end() - area.start.as_u64()),
            area.caller
        ),
        VmallocAddr::Unallocated => alloc::format!("BUG: access to unallocated vmalloc space at {:#x}", addr),
        VmallocAddr::Mapped(area) => alloc::format!("BUG: fault inside mapped vmalloc area {:#x} ({})", area.start.as_u64(), area.caller),
        VmallocAddr::Busy => alloc::format!("BUG: fault at vmalloc address {:#x} while the area list was locked", addr),
    })
}

/// `/proc/vmallocinfo` plus the vmalloc totals.
pub fn vmallocinfo(w: &mut impl core::fmt::Write) -> core::fmt::Result {
    VMALLOC.vmallocinfo(w)?;
    VMALLOC.meminfo(w)
}

pub const COMMANDS: &[crate::lib::command::Command] = &[
    crate::lib::command::Command {
        name: "vmallocinfo",
        args: "",
        help: "vmalloc areas, like /proc/vmallocinfo",
        run: |_| {
            let _ = vmallocinfo(&mut crate::lib::printk::Writer);
        },
    },
    crate::lib::command::Command {
        name: "vmalloc-bench",
        args: "[ROUNDS]",
        help: "TSC per vmalloc+vfree of 64 KiB and 1 MiB (instructions under --icount)",
        run: cmd_vmalloc_bench,
    },
];

/// Median TSC ticks of `rounds` vmalloc+vfree pairs of `size` bytes.
fn bench_pair(size: usize, rounds: usize) -> Option<u64> {
    let mut samples = alloc::vec::Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = cpu::rdtsc();
        let area = vmalloc(size, GFP_KERNEL).ok()?;
        vfree(area);
        samples.push(cpu::rdtsc() - t0);
    }
    samples.sort_unstable();
    samples.get(rounds / 2).copied()
}

/// Most rounds `vmalloc-bench` accepts (bounds its sample vector; a 1 MiB pair costs
/// about a million instructions).
const VMALLOC_BENCH_MAX_ROUNDS: usize = 10_000;

/// `vmalloc-bench [ROUNDS]`: median TSC ticks (instructions under `--icount`) of
/// ROUNDS (default 101) vmalloc+vfree pairs of 64 KiB and of 1 MiB.
fn cmd_vmalloc_bench(args: &str) {
    let word = crate::lib::command::single_arg(args);
    let Some(rounds) = crate::lib::command::count_arg("vmalloc-bench", "ROUNDS", word, 101, VMALLOC_BENCH_MAX_ROUNDS) else {
        return;
    };
    // One warm-up pair so the area list and page tables exist.
    let _ = bench_pair(4096, 1);
    for size in [64usize << 10, 1 << 20] {
        match bench_pair(size, rounds) {
            Some(ticks) => crate::println!(
                "vmalloc+vfree {:>5} KiB: median {} TSC ticks per pair, {} per page ({} rounds)",
                size >> 10,
                ticks,
                ticks / (size as u64 / 4096),
                rounds
            ),
            None => crate::println!("vmalloc-bench: vmalloc of {} KiB failed", size >> 10),
        }
    }
}
