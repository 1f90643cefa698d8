//! The memory-management system calls of the running process: thin wrappers
//! that lock its address space and call `mm::mman::UserMm`, where the Linux
//! semantics (argument checks, errno values, splitting and merging VMAs,
//! populate, `MADV_FREE`, brk) live and are host-tested. Pages and page-table
//! pages that a call frees go back only after its TLB flush.
//!
//! Also here: `/proc/self/{status,maps}`, and the shrinker that drops
//! `MADV_FREE` pages of every process under memory pressure. The ELF loader
//! (`binfmt_elf`) builds a new address space through [`mmap`], [`mprotect`]
//! and [`with_mm`].

use alloc::string::String;
use core::fmt::Write;

use mm::errno::{Errno, SysResult};
use mm::shrinker::{ShrinkControl, Shrinker};
use mm::tlb::MmuGather;

use crate::memory::mm_struct::{self, mm_ops, Mm};
use crate::memory::pgtable::tlb_finish;
use crate::task::sched;

/// Runs `f` on the caller's address space with a gather that is flushed
/// afterwards. `EFAULT` if there is none (task 0).
pub fn with_mm(f: impl FnOnce(&mut Mm, &mut MmuGather) -> SysResult) -> SysResult {
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

// ----- MADV_FREE under memory pressure --------------------------------------------

/// Drops the clean `MADV_FREE` pages of every process (Linux reclaims lazy-free
/// pages from the LRU instead of swapping them). Uses only `try_lock`: it runs
/// inside allocations, maybe while the scheduler or an address space is locked.
pub struct LazyFreeShrinker;

pub static LAZYFREE_SHRINKER: LazyFreeShrinker = LazyFreeShrinker;

impl LazyFreeShrinker {
    fn for_each_mm(&self, mut f: impl FnMut(&mut Mm)) {
        mm_struct::with_current(|mm| f(mm));
        sched::try_for_each_mm(&mut f);
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
