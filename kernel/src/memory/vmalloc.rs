//! The kernel's vmalloc area and its page tables.
//!
//! At boot `init_64` moves the kernel to a PML4 that `mm` owns; [`init`] then
//! preallocates the PUD tables of the whole vmalloc range in it, so user
//! address spaces created later share every vmalloc mapping (Linux
//! `preallocate_vmalloc_pages`).
//!
//! [`vmalloc`] / [`vfree`] wrap `mm::vmalloc::Vmalloc`: every allocation a
//! vmalloc call makes — data pages, page-table pages, bookkeeping — uses the
//! caller's GFP flags (the bookkeeping through the scoped-GFP heap). Faults
//! in a guard page are reported by [`describe_fault`].

use mm::gfp::{Gfp, GFP_KERNEL};
use mm::pgtable::VirtAddr;
use mm::vmalloc::{Caller, ScopedHeap, VmArea, Vmalloc, VmallocAddr, VmallocDeps, VmallocError};
use mm::sync::SpinLock;

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::platform::KernelPlatform;
use crate::memory::init_64::{kernel_space, KernelSpace};
use crate::memory::page_alloc::{page_alloc, KernelPageAlloc, MEMALLOC_SCOPE};
use crate::memory::pgtable::X86Tlb;

static VMALLOC: Vmalloc<KernelPlatform> = Vmalloc::new();
static TLB: X86Tlb = X86Tlb;

/// Preallocates the PUD tables of the whole vmalloc range in the kernel's
/// address space (Linux `preallocate_vmalloc_pages`), so user address spaces
/// created later share every vmalloc mapping. Call once, after
/// `init_64::init` and before any user address space exists.
pub fn init() -> Result<(), mm::pt_reclaim::PreallocError> {
    VMALLOC.preallocate_page_tables(&mut kernel_space().lock(), GFP_KERNEL)?;
    log::info!("vmalloc: range {:#x}-{:#x}", VMALLOC.range().0, VMALLOC.range().1);
    Ok(())
}

fn with_deps<R>(f: impl FnOnce(&VmallocDeps<'_, KernelPageAlloc, SpinLock<KernelSpace, KernelPlatform>, ScopedHeap<'_>, X86Tlb>) -> R) -> R {
    let kernel_pt = kernel_space();
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
