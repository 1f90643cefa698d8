//! The memory-management system calls of the running process: thin wrappers
//! that lock its address space and call `mm::mman::UserMm`, where the Linux
//! semantics (argument checks, errno values, splitting and merging VMAs,
//! populate, `MADV_FREE`, brk) live and are host-tested. Pages and page-table
//! pages that a call frees go back only after its TLB flush.
//!
//! Also here: the program loader's helpers (map a segment, the `[stack]`
//! VMA, the first brk), `/proc/self/{status,maps}`, and the shrinker that
//! drops `MADV_FREE` pages of every process under memory pressure.

use alloc::string::String;
use core::fmt::Write;

use mm::errno::{Errno, SysResult};
use mm::mman::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE};
use mm::shrinker::{ShrinkControl, Shrinker};
use mm::tlb::MmuGather;
use mm::vma::{linear_pgoff, MapFixed, VmFlags, VmaKind};

use crate::memory::mm_struct::{self, mm_ops, Mm};
use crate::memory::pgtable::tlb_finish;
use crate::task::sched;

/// Runs `f` on the caller's address space with a gather that is flushed
/// afterwards. `EFAULT` if there is none (task 0).
fn with_mm(f: impl FnOnce(&mut Mm, &mut MmuGather) -> SysResult) -> SysResult {
    let mut tlb = crate::memory::pgtable::tlb_gather();
    let r = mm_struct::with_current(|mm| f(mm, &mut tlb)).unwrap_or(Err(Errno::EFAULT));
    tlb_finish(tlb);
    r
}

/// Free pages above the min watermark the kernel wants before a call may add
/// VMAs: each VMA costs kernel heap (tree nodes, and now and then a new slab of
/// up to 32 KiB), which must not come out of the reserve below `min`.
const VMA_GROWTH_HEADROOM_PAGES: u64 = 256;

/// Whether the kernel's own memory is short: user pages have taken free
/// memory down to the min watermark (a `MADV_POPULATE_WRITE` that failed with
/// ENOMEM leaves it there) and reclaim cannot give enough back, so new kernel
/// objects would have to live on the `__GFP_HIGH` reserve.
fn kernel_memory_short() -> bool {
    let pa = crate::memory::page_alloc::page_alloc();
    if pa.free_above_min() >= VMA_GROWTH_HEADROOM_PAGES {
        return false;
    }
    crate::memory::shrinker::direct_reclaim(mm::gfp::GFP_KERNEL, 0);
    pa.free_above_min() < VMA_GROWTH_HEADROOM_PAGES
}

/// [`with_mm`] for the calls that can add VMAs (mmap, munmap and mprotect or
/// madvise of part of a VMA, brk). While the kernel is short of memory the call
/// may not raise the VMA count: `max_map_count` is lowered to the current
/// count for its duration, so it fails with ENOMEM exactly as at the limit
/// (Linux's answer too) instead of draining the reserve the kernel heap needs.
fn with_mm_bounded(f: impl FnOnce(&mut Mm, &mut MmuGather) -> SysResult) -> SysResult {
    if !kernel_memory_short() {
        return with_mm(f);
    }
    with_mm(|mm, tlb| {
        let (max, count) = (mm.vmas.max_map_count(), mm.vmas.map_count());
        mm.vmas.set_max_map_count(count.min(max));
        let r = f(mm, tlb);
        mm.vmas.set_max_map_count(max);
        r
    })
}

pub fn mmap(addr: u64, len: u64, prot: u64, flags: u64, fd: u64, off: u64) -> SysResult {
    with_mm_bounded(|mm, tlb| mm.mmap(addr, len, prot, flags, fd as i64, off, &mm_ops(), tlb))
}

pub fn munmap(addr: u64, len: u64) -> SysResult {
    with_mm_bounded(|mm, tlb| mm.munmap(addr, len, tlb))
}

pub fn mprotect(addr: u64, len: u64, prot: u64) -> SysResult {
    with_mm_bounded(|mm, tlb| mm.mprotect(addr, len, prot, tlb))
}

pub fn madvise(addr: u64, len: u64, advice: u64) -> SysResult {
    with_mm_bounded(|mm, tlb| mm.madvise(addr, len, advice, &mm_ops(), tlb))
}

/// `brk` never fails with an errno: it returns the (old or new) break.
pub fn brk(addr: u64) -> u64 {
    with_mm_bounded(|mm, tlb| Ok(mm.brk(addr, &mm_ops(), tlb))).unwrap_or(0)
}

/// `prctl`: the THP options; any other option is `EINVAL`, as Linux answers
/// an unknown option.
pub fn prctl(option: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> SysResult {
    with_mm(|mm, _| mm.prctl(option, a2, a3, a4, a5).unwrap_or(Err(Errno::EINVAL)))
}

/// `/proc/self/status` and `/proc/self/maps` of the caller.
/// `ENOMEM` when the kernel heap cannot hold the text (it is rendered with
/// fallible allocation: a large `maps` must not exhaust the kernel).
pub fn proc_self(name: &str) -> Option<Result<String, Errno>> {
    let (pid, comm) = (sched::current_pid(), sched::with_current(|t| t.name.clone())?);
    let mut out = crate::fs::procfs::TryString::default();
    let r = mm_struct::with_current(|mm| match name {
        "status" => Some(
            write!(out, "Name:\t{}\nState:\tR (running)\nTgid:\t{}\nPid:\t{}\nPPid:\t0\n", comm, pid, pid)
                .and_then(|()| mm.write_status(&mut out)),
        ),
        "maps" => Some(mm.write_maps(&mut out)),
        _ => None,
    })??;
    Some(r.map(|()| out.into_string()).map_err(|_| Errno::ENOMEM))
}

// ----- the program loader's helpers (on the current, new address space) ------

/// Maps `[start, start + len)` private anonymous, readable and writable.
pub fn map_fixed_anon(start: u64, len: u64) -> Result<(), Errno> {
    mmap(start, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, u64::MAX, 0).map(|_| ())
}

/// Gives `[start, start + len)` its final protection.
pub fn protect(start: u64, len: u64, read: bool, write: bool, exec: bool) -> Result<(), Errno> {
    let prot = (read as u64 * PROT_READ) | (write as u64 * PROT_WRITE) | (exec as u64 * PROT_EXEC);
    mprotect(start, len, prot).map(|_| ())
}

/// Sets the program break to just after the loaded image; records the
/// text range for `/proc/self/status`.
pub fn set_brk_start(brk: u64, code: (u64, u64)) -> Result<(), Errno> {
    with_mm(|mm, _| {
        mm.set_code_range(code.0, code.1);
        mm.set_brk_start(brk).map(|_| 0)
    })
    .map(|_| ())
}

/// The `[stack]` VMA: readable, writable, growing down on faults.
pub fn map_stack(start: u64, len: u64) -> Result<(), Errno> {
    let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL | VmFlags::GROWSDOWN;
    with_mm(|mm, _| {
        mm.vmas
            .mmap_region(start, len, flags, VmaKind::Stack, linear_pgoff(start), MapFixed::NoReplace)
            .map(|_| 0)
            .map_err(|_| Errno::ENOMEM)
    })
    .map(|_| ())
}

// ----- MADV_FREE under memory pressure --------------------------------------------

/// Drops the clean `MADV_FREE` pages of every process (Linux reclaims lazy-free
/// pages from the LRU instead of swapping them). Uses only `try_lock`: it runs
/// inside allocations, maybe while the scheduler or an address space is locked.
pub struct LazyFreeShrinker;

pub static LAZYFREE_SHRINKER: LazyFreeShrinker = LazyFreeShrinker;

impl LazyFreeShrinker {
    fn for_each_mm(&self, mut f: impl FnMut(&mut Mm)) {
        mm_struct::with_current(|mm| f(mm));
        sched::try_for_each_task(|t| {
            if let Some(mm) = t.mm.as_mut() {
                f(mm)
            }
        });
    }
}

impl Shrinker for LazyFreeShrinker {
    fn name(&self) -> &str {
        "lazyfree"
    }

    fn count_objects(&self, _sc: &ShrinkControl) -> u64 {
        let mut n = 0;
        self.for_each_mm(|mm| n += mm.lazyfree_pages());
        n
    }

    fn scan_objects(&self, _sc: &mut ShrinkControl) -> u64 {
        let mut freed = 0;
        self.for_each_mm(|mm| {
            let mut tlb = crate::memory::pgtable::tlb_gather();
            freed += mm.reclaim_lazyfree(&mut tlb);
            tlb_finish(tlb);
        });
        freed
    }
}
