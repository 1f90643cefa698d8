//! The memory-management system calls of one process: `mmap`, `munmap`,
//! `mprotect`, `madvise`, `brk` and `prctl(PR_{SET,GET}_THP_DISABLE)`, over a
//! [`UserMm`] (Linux `struct mm_struct` without its locks).
//!
//! Linux is the specification: the argument checks, their order and the errno
//! values follow `mmap(2)` / `mm/mmap.c` (`ksys_mmap_pgoff`, `do_mmap`,
//! `__get_unmapped_area`, `SYSCALL_DEFINE1(brk)`), `mm/vma.c`
//! (`do_vmi_munmap`), `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`),
//! `mm/madvise.c` (`do_madvise`, `madvise_walk_vmas`, `madvise_populate`) and
//! `kernel/sys.c` (`prctl_set_thp_disable`). The syscall layer only decodes
//! registers, calls one method with the caller's [`MmuGather`], finishes the
//! gather (TLB flush, then the freed pages go back) and encodes the
//! [`SysResult`] with [`crate::errno::sys_ret`].
//!
//! What [`UserMm`] owns besides the page tables ([`AddressSpace`]) and the VMAs
//! ([`VmaTree`]): the per-process fault knobs ([`FaultEnv`], where
//! `PR_SET_THP_DISABLE` lands), the brk state, the shared anonymous objects
//! ([`Shmem`]), the `MADV_FREE` lazy-free ranges and the `/proc/PID/status`
//! counters. The resident-set counters themselves live in the address space
//! ([`AddressSpace::rss_pages`]), which updates them whenever a leaf entry comes
//! or goes, so they stay exact whoever changes the page tables.
//!
//! Decisions where this kernel cannot or does not do what Linux does (each is
//! also noted at the code):
//! * no file can be mapped: `mmap` without `MAP_ANONYMOUS` fails with `EBADF`
//!   (what Linux returns for a descriptor that is not open). A syscall layer that
//!   has open descriptors should return `ENODEV` itself for an open descriptor
//!   that cannot be mapped, after the offset check.
//! * `MAP_HUGETLB` fails with `ENOMEM` (Linux with `vm.nr_hugepages = 0`), or
//!   `EINVAL` for an unknown huge page size; `MAP_DROPPABLE` is `EINVAL` (Linux
//!   before 6.11).
//! * `MAP_LOCKED` is honoured (`VM_LOCKED`, populated) without an
//!   `RLIMIT_MEMLOCK` check, as for a `CAP_IPC_LOCK` process; `RLIMIT_DATA` and
//!   `RLIMIT_AS` are unlimited.
//! * `MADV_WILLNEED` does nothing on anonymous memory (Linux only swaps in);
//!   `MADV_COLD` / `MADV_PAGEOUT` only check the VMA (there is no swap);
//!   `MADV_COLLAPSE`, `MADV_GUARD_INSTALL` and `MADV_GUARD_REMOVE` fail with
//!   `EINVAL`; `MADV_HWPOISON` / `MADV_SOFT_OFFLINE` are unknown advice
//!   (`CONFIG_MEMORY_FAILURE=n`).
//! * `MADV_FREE` pages are dropped by [`UserMm::reclaim_lazyfree`], which the
//!   kernel's shrinker calls under memory pressure.
//! * The fork and KSM advice is accepted but only recorded until this kernel has
//!   `fork` and KSM: `MADV_DONTFORK` / `MADV_DOFORK`, `MADV_WIPEONFORK` /
//!   `MADV_KEEPONFORK` and `MADV_MERGEABLE` / `MADV_UNMERGEABLE` return 0 and
//!   set or clear `VM_DONTCOPY`, `VM_WIPEONFORK` and `VM_MERGEABLE` in the
//!   [`Vma::flags`] of the VMAs in the range ([`FlagAdvice`]), splitting and
//!   merging VMAs like any flag change (so a split can fail with `ENOMEM` at
//!   `max_map_count`). Nothing acts on these flags yet (they only keep VMAs
//!   from merging, as any flag difference does): no page is copied, skipped or
//!   wiped (there is no `fork`) and none is merged or unmerged (there is no
//!   KSM). The checks are Linux's: `MADV_WIPEONFORK` on a shared VMA is
//!   `EINVAL` (VMAs of the range before it keep the flag, as in
//!   `madvise_walk_vmas`), `MADV_DOFORK` on `VM_IO` is `EINVAL` (no mapping
//!   has `VM_IO` here), and
//!   `MADV_MERGEABLE` leaves shared and `VM_SPECIAL` VMAs unchanged and returns
//!   0 (`vma_ksm_compatible`); a Linux built without `CONFIG_KSM` would reject
//!   both KSM advices with `EINVAL` instead. The flags are visible through
//!   [`UserMm::vmas`] (the host tests check them) but not to user space:
//!   `/proc/PID/maps` shows only the split, and there is no `/proc/PID/smaps`
//!   with its `VmFlags:` line.
//!
//! Compaction moves this address space's private anonymous pages (4 KiB pages
//! and PMD-mapped huge pages) through [`UserMm::migrate_anon_page`], called from
//! the kernel's `MigrateOps` (Linux `migrate_pages` → `try_to_migrate` /
//! `remove_migration_ptes`). Pages of shared anonymous objects and split huge
//! pages are refused: they are not marked movable / are mapped more than once.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, align_down, align_up, is_aligned};
use crate::compaction::Migration;
use crate::errno::{Errno, SysResult};
use crate::fault::{
    self, ClearPages, FaultAccess, FaultEnv, FaultError, FaultOutcome, GFP_PGTABLE_USER, ThpCtl, vm_get_page_prot,
};
use crate::pgtable::{AddressSpace, MigrateAnonError, PMD_SIZE, PteFlags, PtAlloc, PtMem, RssKind, VirtAddr};
use crate::shmem::Shmem;
use crate::tlb::MmuGather;
use crate::vma::{
    self, FlagAdvice, MadviseError, MapFixed, TASK_SIZE, UnmapError, VmFlags, Vma, VmaKind, VmaTree, linear_pgoff,
};

// ---------------------------------------------------------------------------
// Linux UAPI constants (x86_64).
// ---------------------------------------------------------------------------

/// `PROT_NONE`.
pub const PROT_NONE: u64 = 0x0;
/// `PROT_READ`.
pub const PROT_READ: u64 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 0x4;
/// `PROT_SEM`: accepted and ignored.
pub const PROT_SEM: u64 = 0x8;
/// `PROT_GROWSDOWN` (`mprotect` only): extend the change down to the start of
/// a grows-down VMA.
pub const PROT_GROWSDOWN: u64 = 0x0100_0000;
/// `PROT_GROWSUP` (`mprotect` only; no VMA grows up on x86).
pub const PROT_GROWSUP: u64 = 0x0200_0000;

/// `MAP_SHARED`.
pub const MAP_SHARED: u64 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u64 = 0x02;
/// `MAP_SHARED_VALIDATE` (file mappings only: `EINVAL` for anonymous ones).
pub const MAP_SHARED_VALIDATE: u64 = 0x03;
/// `MAP_DROPPABLE` (Linux 6.11; not supported here).
pub const MAP_DROPPABLE: u64 = 0x08;
/// `MAP_TYPE`: the mask of the mapping type.
pub const MAP_TYPE: u64 = 0x0f;
/// `MAP_FIXED`.
pub const MAP_FIXED: u64 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_32BIT`: place the mapping in the second GiB.
pub const MAP_32BIT: u64 = 0x40;
/// `MAP_GROWSDOWN`.
pub const MAP_GROWSDOWN: u64 = 0x0100;
/// `MAP_DENYWRITE` (ignored).
pub const MAP_DENYWRITE: u64 = 0x0800;
/// `MAP_EXECUTABLE` (ignored).
pub const MAP_EXECUTABLE: u64 = 0x1000;
/// `MAP_LOCKED`.
pub const MAP_LOCKED: u64 = 0x2000;
/// `MAP_NORESERVE`.
pub const MAP_NORESERVE: u64 = 0x4000;
/// `MAP_POPULATE`.
pub const MAP_POPULATE: u64 = 0x8000;
/// `MAP_NONBLOCK`: with `MAP_POPULATE`, do not populate.
pub const MAP_NONBLOCK: u64 = 0x1_0000;
/// `MAP_STACK`: no huge pages (`VM_NOHUGEPAGE`, Linux 6.7).
pub const MAP_STACK: u64 = 0x2_0000;
/// `MAP_HUGETLB`.
pub const MAP_HUGETLB: u64 = 0x4_0000;
/// `MAP_SYNC` (ignored for anonymous memory).
pub const MAP_SYNC: u64 = 0x8_0000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// `MAP_UNINITIALIZED` (ignored).
pub const MAP_UNINITIALIZED: u64 = 0x400_0000;
/// Shift of the huge page size (log2) in `MAP_HUGETLB` flags.
pub const MAP_HUGE_SHIFT: u32 = 26;
/// Mask of the huge page size after the shift.
pub const MAP_HUGE_MASK: u64 = 0x3f;

/// `MADV_NORMAL`.
pub const MADV_NORMAL: i32 = 0;
/// `MADV_RANDOM`.
pub const MADV_RANDOM: i32 = 1;
/// `MADV_SEQUENTIAL`.
pub const MADV_SEQUENTIAL: i32 = 2;
/// `MADV_WILLNEED`.
pub const MADV_WILLNEED: i32 = 3;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: i32 = 4;
/// `MADV_FREE`.
pub const MADV_FREE: i32 = 8;
/// `MADV_REMOVE`.
pub const MADV_REMOVE: i32 = 9;
/// `MADV_DONTFORK`.
pub const MADV_DONTFORK: i32 = 10;
/// `MADV_DOFORK`.
pub const MADV_DOFORK: i32 = 11;
/// `MADV_MERGEABLE`.
pub const MADV_MERGEABLE: i32 = 12;
/// `MADV_UNMERGEABLE`.
pub const MADV_UNMERGEABLE: i32 = 13;
/// `MADV_HUGEPAGE`.
pub const MADV_HUGEPAGE: i32 = 14;
/// `MADV_NOHUGEPAGE`.
pub const MADV_NOHUGEPAGE: i32 = 15;
/// `MADV_DONTDUMP`.
pub const MADV_DONTDUMP: i32 = 16;
/// `MADV_DODUMP`.
pub const MADV_DODUMP: i32 = 17;
/// `MADV_WIPEONFORK`.
pub const MADV_WIPEONFORK: i32 = 18;
/// `MADV_KEEPONFORK`.
pub const MADV_KEEPONFORK: i32 = 19;
/// `MADV_COLD`.
pub const MADV_COLD: i32 = 20;
/// `MADV_PAGEOUT`.
pub const MADV_PAGEOUT: i32 = 21;
/// `MADV_POPULATE_READ`.
pub const MADV_POPULATE_READ: i32 = 22;
/// `MADV_POPULATE_WRITE`.
pub const MADV_POPULATE_WRITE: i32 = 23;
/// `MADV_DONTNEED_LOCKED`.
pub const MADV_DONTNEED_LOCKED: i32 = 24;
/// `MADV_COLLAPSE`.
pub const MADV_COLLAPSE: i32 = 25;
/// `MADV_GUARD_INSTALL`.
pub const MADV_GUARD_INSTALL: i32 = 102;
/// `MADV_GUARD_REMOVE`.
pub const MADV_GUARD_REMOVE: i32 = 103;

/// `PR_SET_THP_DISABLE`.
pub const PR_SET_THP_DISABLE: i32 = 41;
/// `PR_GET_THP_DISABLE`.
pub const PR_GET_THP_DISABLE: i32 = 42;
/// `PR_THP_DISABLE_EXCEPT_ADVISED` (arg3 of `PR_SET_THP_DISABLE`, Linux 6.18):
/// huge pages stay allowed in `MADV_HUGEPAGE` regions.
pub const PR_THP_DISABLE_EXCEPT_ADVISED: u64 = 1 << 1;

/// The window `MAP_32BIT` mappings are placed in (x86 `find_start_end`).
const MAP_32BIT_WINDOW: (u64, u64) = (0x4000_0000, 0x8000_0000);

// ---------------------------------------------------------------------------
// Errno conversions of the VMA tree's errors.
// ---------------------------------------------------------------------------

impl From<vma::MapError> for Errno {
    fn from(e: vma::MapError) -> Errno {
        match e {
            vma::MapError::ZeroLength | vma::MapError::Unaligned => Errno::EINVAL,
            vma::MapError::OutOfRange | vma::MapError::MapCountExceeded => Errno::ENOMEM,
            vma::MapError::PgoffOverflow => Errno::EOVERFLOW,
            vma::MapError::BelowMmapMinAddr => Errno::EPERM,
            vma::MapError::Exists => Errno::EEXIST,
        }
    }
}

impl From<UnmapError> for Errno {
    fn from(e: UnmapError) -> Errno {
        match e {
            UnmapError::Unaligned | UnmapError::ZeroLength | UnmapError::OutOfRange => Errno::EINVAL,
            UnmapError::MapCountExceeded => Errno::ENOMEM,
        }
    }
}

impl From<MadviseError> for Errno {
    fn from(e: MadviseError) -> Errno {
        match e {
            MadviseError::Unaligned | MadviseError::OutOfRange | MadviseError::InvalidForVma => Errno::EINVAL,
            MadviseError::MapCountExceeded => Errno::ENOMEM,
        }
    }
}

// ---------------------------------------------------------------------------
// The address space.
// ---------------------------------------------------------------------------

/// What the populate paths need to fault pages in: the global THP knob and the
/// page clearer.
pub struct MmOps<'o, C: ClearPages> {
    /// `/sys/kernel/mm/transparent_hugepage` and the fault counters.
    pub thp: &'o ThpCtl,
    /// Clears new user pages.
    pub clear: &'o C,
}

/// One user address space (Linux `struct mm_struct`, minus locking: the kernel
/// keeps it behind the mm lock and passes `&mut`).
pub struct UserMm<'a, A: PtAlloc, M: PtMem> {
    /// The page tables and resident-set counters.
    pub space: AddressSpace<'a, A, M>,
    /// The VMAs.
    pub vmas: VmaTree,
    /// Per-process fault knobs (THP disable, stack limit).
    pub env: FaultEnv,
    shmem: Shmem,
    start_brk: u64,
    brk: u64,
    start_code: u64,
    end_code: u64,
    /// `hiwater_vm`: the largest `total_vm` seen, in pages.
    hiwater_vm: u64,
    /// `MADV_FREE` ranges not yet reclaimed: start → end, disjoint, not adjacent.
    lazyfree: BTreeMap<u64, u64>,
}

impl<'a, A: PtAlloc, M: PtMem> UserMm<'a, A, M> {
    /// An address space over `space` (a fresh user page-table tree) with no VMAs.
    pub fn new(space: AddressSpace<'a, A, M>) -> Self {
        UserMm {
            space,
            vmas: VmaTree::new(),
            env: FaultEnv::default(),
            shmem: Shmem::new(),
            start_brk: 0,
            brk: 0,
            start_code: 0,
            end_code: 0,
            hiwater_vm: 0,
            lazyfree: BTreeMap::new(),
        }
    }

    /// The shared anonymous objects.
    pub fn shmem(&self) -> &Shmem {
        &self.shmem
    }

    /// Tears the address space down (Linux `exit_mmap`): every page, page-table
    /// page and shared object page is queued in `tlb` and goes back to the
    /// allocator after its flush.
    pub fn destroy(self, tlb: &mut MmuGather) {
        let UserMm { space, shmem, .. } = self;
        space.destroy(tlb);
        shmem.destroy(tlb);
    }

    // ----- page faults -------------------------------------------------------------

    /// Resolves a page fault at `addr` (Linux `handle_mm_fault`), shared anonymous
    /// memory included. The resident-set counters follow the page tables.
    pub fn handle_fault<C: ClearPages>(
        &mut self,
        addr: u64,
        access: FaultAccess,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> Result<FaultOutcome, FaultError> {
        let r = fault::handle_mm_fault_shmem(
            &mut self.space,
            &mut self.vmas,
            Some(&mut self.shmem),
            addr,
            access,
            ops.thp,
            &self.env,
            ops.clear,
            tlb,
        );
        // A fault below a grows-down VMA may have grown it.
        self.update_hiwater_vm();
        r
    }

    // ----- migration ---------------------------------------------------------------

    /// Moves one anonymous page of this address space for compaction (Linux
    /// `migrate_pages` → `try_to_migrate` / `remove_migration_ptes`); see
    /// [`AddressSpace::migrate_anon_page`] for the checks. Pages of the shared
    /// anonymous objects ([`Shmem`]) are never migrated: they are not marked
    /// movable (they pin their page block, like Linux's unmovable pins), and the
    /// call refuses them with [`MigrateAnonError::NotAnon`]. The caller holds
    /// this address space's lock and finishes `tlb` before returning to the
    /// allocator.
    pub fn migrate_anon_page(&mut self, m: &Migration<'_>, tlb: &mut MmuGather) -> Result<(), MigrateAnonError> {
        self.space.migrate_anon_page(m, tlb)
    }

    // ----- mmap --------------------------------------------------------------------

    /// The `mmap` system call (x86 `sys_mmap` → `ksys_mmap_pgoff` → `do_mmap`):
    /// maps `len` bytes of anonymous memory and returns the address. Only
    /// `MAP_ANONYMOUS` mappings exist here; see the module documentation for the
    /// `fd` and `MAP_HUGETLB` decisions. Unknown `prot` bits are ignored, as
    /// Linux's `mmap` does (only `mprotect` rejects them); unknown flags are
    /// ignored; `MAP_SHARED_VALIDATE` is `EINVAL` for anonymous memory (Linux
    /// validates extension flags only for files).
    #[allow(clippy::too_many_arguments)]
    pub fn mmap<C: ClearPages>(
        &mut self,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        fd: i64,
        off: u64,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> SysResult {
        // sys_mmap: the byte offset must be page aligned, whatever is mapped.
        if !is_aligned(off, PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // ksys_mmap_pgoff: a file mapping needs an open descriptor; none can be.
        let _ = fd;
        if flags & MAP_ANONYMOUS == 0 {
            return Err(Errno::EBADF);
        }
        let mut hugetlb = false;
        if flags & MAP_HUGETLB != 0 {
            // hstate_sizelog: 0 (default), 2 MiB or 1 GiB pages exist.
            let log = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
            if !matches!(log, 0 | 21 | 30) {
                return Err(Errno::EINVAL);
            }
            hugetlb = true;
        }
        self.do_mmap(addr, len, prot, flags, off >> PAGE_SHIFT, hugetlb, ops, tlb)
    }

    /// Linux `do_mmap` for anonymous memory, checks in Linux's order.
    #[allow(clippy::too_many_arguments)]
    fn do_mmap<C: ClearPages>(
        &mut self,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        pgoff: u64,
        hugetlb: bool,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> SysResult {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
        let hint = if fixed { addr } else { self.round_hint_to_min(addr) };
        let len = align_up(len, PAGE_SIZE).filter(|&l| l != 0).ok_or(Errno::ENOMEM)?;
        if pgoff.checked_add(len >> PAGE_SHIFT).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        if self.vmas.map_count() > self.vmas.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        let mut vm_flags = calc_vm_prot_bits(prot) | calc_vm_flag_bits(flags) | VmFlags::MAY_ALL;
        let addr = self.get_unmapped_area(hint, len, flags, fixed)?;
        // Cannot overflow: get_unmapped_area checked addr <= TASK_SIZE - len.
        let end = addr + len;
        if flags & MAP_FIXED_NOREPLACE != 0 && self.vmas.find_vma_intersection(addr, end).is_some() {
            return Err(Errno::EEXIST);
        }
        let shared = match flags & MAP_TYPE {
            MAP_SHARED if vm_flags.contains(VmFlags::GROWSDOWN) => return Err(Errno::EINVAL),
            MAP_SHARED => true,
            MAP_PRIVATE => false,
            // MAP_SHARED_VALIDATE (anonymous), MAP_DROPPABLE, 0 and the rest.
            _ => return Err(Errno::EINVAL),
        };
        if hugetlb {
            // hugetlbfs_file_mmap cannot reserve from an empty pool.
            return Err(Errno::ENOMEM);
        }
        if flags & MAP_NORESERVE != 0 {
            vm_flags |= VmFlags::NORESERVE;
        }
        if shared {
            vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        // mmap_region: accountable_mapping.
        if vm_flags & (VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE) == VmFlags::WRITE {
            vm_flags |= VmFlags::ACCOUNT;
        }
        let (kind, pgoff) = if shared {
            (VmaKind::AnonShared(self.shmem.create()), 0)
        } else {
            (VmaKind::AnonPrivate, linear_pgoff(addr))
        };
        let mapped = match self.vmas.mmap_region(addr, len, vm_flags, kind, pgoff, MapFixed::Replace) {
            Ok(m) => m,
            Err(e) => {
                if let VmaKind::AnonShared(id) = kind {
                    // Never mapped: drops the empty object.
                    self.shmem.unmap_ref(id, 0, tlb);
                }
                return Err(e.into());
            }
        };
        if let VmaKind::AnonShared(id) = kind {
            self.shmem.map_ref(id, len >> PAGE_SHIFT);
        }
        self.zap_removed(&mapped.replaced, tlb);
        self.update_hiwater_vm();
        if vm_flags.contains(VmFlags::LOCKED) || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE {
            self.mm_populate(addr, end, ops, tlb);
        }
        Ok(addr)
    }

    /// Linux `round_hint_to_min`.
    fn round_hint_to_min(&self, hint: u64) -> u64 {
        let hint = align_down(hint, PAGE_SIZE);
        let min = self.vmas.mmap_min_addr();
        if hint != 0 && hint < min { align_up(min, PAGE_SIZE).unwrap_or(min) } else { hint }
    }

    /// Linux `__get_unmapped_area` with x86's `arch_get_unmapped_area(_topdown)`.
    fn get_unmapped_area(&self, hint: u64, len: u64, flags: u64, fixed: bool) -> Result<u64, Errno> {
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        let addr = if fixed {
            hint
        } else if flags & MAP_32BIT != 0 {
            let (low, high) = MAP_32BIT_WINDOW;
            self.vmas.get_unmapped_area_bottomup(hint, len, low, high).ok_or(Errno::ENOMEM)?
        } else {
            // Larger private anonymous mappings are THP aligned
            // (thp_get_unmapped_area); shared ones take shmem's path, which
            // aligns only for huge shmem (off by default).
            let thp_align = hint == 0 && flags & MAP_SHARED == 0 && is_aligned(len, PMD_SIZE);
            let align = if thp_align { PMD_SIZE } else { PAGE_SIZE };
            self.vmas.get_unmapped_area(hint, len, align).map_err(|_| Errno::ENOMEM)?
        };
        if addr > TASK_SIZE - len {
            return Err(Errno::ENOMEM);
        }
        if !is_aligned(addr, PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        if addr < self.vmas.mmap_min_addr() {
            return Err(Errno::EPERM);
        }
        Ok(addr)
    }

    /// Linux `mm_populate` (`__mm_populate` with errors ignored): faults in
    /// `[start, end)` VMA by VMA, writable private VMAs with write faults,
    /// everything else with read faults, skipping inaccessible VMAs.
    fn mm_populate<C: ClearPages>(&mut self, start: u64, end: u64, ops: &MmOps<'_, C>, tlb: &mut MmuGather) {
        let vmas: Vec<Vma> = self.vmas.vmas_in_range(start, end).copied().collect();
        for v in vmas {
            if v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) || !v.is_accessible() {
                continue;
            }
            let write = v.flags.contains(VmFlags::WRITE) && !v.flags.contains(VmFlags::SHARED);
            // An error ends this VMA; the next one is tried (ignore_errors).
            let _ = self.populate_range(start.max(v.start), end.min(v.end), write, ops, tlb);
        }
    }

    /// Faults in every page of `[s, e)` (inside one VMA) for reading or writing
    /// (Linux `__get_user_pages` with `FOLL_TOUCH`), so later accesses of that
    /// kind take no fault. Pages already mapped suitably are only touched.
    fn populate_range<C: ClearPages>(
        &mut self,
        s: u64,
        e: u64,
        write: bool,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> Result<(), FaultError> {
        let mut addr = s;
        while addr < e {
            if let Some(next) = self.populated(addr, write) {
                addr = next;
                continue;
            }
            let access = FaultAccess { write, exec: false, user: true };
            self.handle_fault(addr, access, ops, tlb)?;
            // Normally mapped now; if not, move on rather than loop.
            addr = self.populated(addr, write).unwrap_or(addr + PAGE_SIZE);
        }
        Ok(())
    }

    /// If `addr` is mapped so that the access needs no fault, touches the leaf
    /// (accessed, and dirty for a write) and returns the end of the leaf.
    fn populated(&mut self, addr: u64, write: bool) -> Option<u64> {
        let va = VirtAddr::try_new(addr)?;
        let t = self.space.translate(va)?;
        if !t.flags.contains(PteFlags::PRESENT) || (write && !t.flags.contains(PteFlags::WRITABLE)) {
            return None;
        }
        self.space.touch(va, write);
        let span = t.level.entry_span();
        Some(align_down(addr, span).saturating_add(span))
    }

    // ----- munmap ------------------------------------------------------------------

    /// The `munmap` system call (Linux `__vm_munmap` → `do_vmi_munmap`): `EINVAL`
    /// for an unaligned `addr`, a zero `len` or a range leaving the user half;
    /// holes are fine. Pages and emptied page-table pages are freed after `tlb`'s
    /// flush; a shared object goes with its last mapping.
    pub fn munmap(&mut self, addr: u64, len: u64, tlb: &mut MmuGather) -> SysResult {
        let removed = self.vmas.do_munmap(addr, len)?;
        self.zap_removed(&removed, tlb);
        Ok(0)
    }

    /// Unmaps the pages of VMA parts that were removed from the tree and drops
    /// what referred to them (lazy-free ranges, shared-object references).
    fn zap_removed(&mut self, removed: &[Vma], tlb: &mut MmuGather) {
        for v in removed {
            if let Some(va) = VirtAddr::try_new(v.start) {
                // Cannot fail: the range is in the user half and every huge page in
                // it is anonymous with a deposited table for the split.
                let r = self.space.unmap(va, v.len_bytes(), GFP_PGTABLE_USER, tlb);
                debug_assert!(r.is_ok(), "zap of {:#x}-{:#x}: {r:?}", v.start, v.end);
            }
            range_remove(&mut self.lazyfree, v.start, v.end);
            if let VmaKind::AnonShared(id) = v.kind {
                self.shmem.unmap_ref(id, v.nr_pages(), tlb);
            }
        }
    }

    // ----- mprotect ----------------------------------------------------------------

    /// The `mprotect` system call (Linux `do_mprotect_pkey` / `mprotect_fixup`).
    /// VMAs are changed in address order; a VMA lacking a `VM_MAY*` bit (`EACCES`)
    /// or a hole (`ENOMEM`) stops the walk with the VMAs before it already changed,
    /// as in Linux. Present entries get the new permissions at once (upgrades
    /// included; `PROT_NONE` entries stop being present).
    pub fn mprotect(&mut self, start: u64, len: u64, prot: u64, tlb: &mut MmuGather) -> SysResult {
        let grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !(PROT_GROWSDOWN | PROT_GROWSUP);
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(Errno::EINVAL);
        }
        if !is_aligned(start, PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(0);
        }
        let end = align_up(len, PAGE_SIZE)
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e > start)
            .ok_or(Errno::ENOMEM)?;
        // arch_validate_prot (generic): read, write, exec and PROT_SEM.
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let first = *self.vmas.find_vma_intersection(start, end).ok_or(Errno::ENOMEM)?;
        let mut start = start;
        if grows & PROT_GROWSDOWN != 0 {
            start = first.start;
            if !first.flags.contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else {
            if first.start > start {
                return Err(Errno::ENOMEM);
            }
            if grows & PROT_GROWSUP != 0 {
                // No VM_GROWSUP on x86.
                return Err(Errno::EINVAL);
            }
        }
        let new_access = calc_vm_prot_bits(prot);
        let vmas: Vec<Vma> = self.vmas.vmas_in_range(start, end).copied().collect();
        let mut tmp = first.start;
        let mut nstart = start;
        for v in vmas {
            if v.start != tmp {
                return Err(Errno::ENOMEM);
            }
            let mut newflags = new_access | (v.flags - VmFlags::ACCESS);
            if !newflags.missing_may_bits().is_empty() {
                return Err(Errno::EACCES);
            }
            tmp = v.end.min(end);
            // mprotect_fixup: a private mapping made writable is accounted.
            if newflags.contains(VmFlags::WRITE)
                && !v.flags.intersects(VmFlags::ACCOUNT | VmFlags::WRITE | VmFlags::SHARED | VmFlags::NORESERVE)
            {
                newflags |= VmFlags::ACCOUNT;
            }
            if newflags != v.flags {
                self.change_vma_flags(nstart, tmp, newflags, tlb)?;
            }
            nstart = tmp;
        }
        if tmp < end {
            return Err(Errno::ENOMEM);
        }
        Ok(0)
    }

    /// Sets the flags of the mapped range `[s, e)` (inside one VMA) to `newflags`,
    /// splitting and merging VMAs, and rewrites the present entries' permissions.
    fn change_vma_flags(&mut self, s: u64, e: u64, newflags: VmFlags, tlb: &mut MmuGather) -> Result<(), Errno> {
        let _ = self.vmas.madvise_with(s, e - s, |_| Ok(newflags))?;
        let va = VirtAddr::try_new(s).ok_or(Errno::ENOMEM)?;
        self.space
            .protect(va, e - s, vm_get_page_prot(newflags), GFP_PGTABLE_USER, tlb)
            .map_err(|_| Errno::ENOMEM)
    }

    // ----- madvise -----------------------------------------------------------------

    /// The `madvise` system call (Linux `do_madvise`). `advice` is the raw
    /// register: Linux's `int behavior` keeps its low 32 bits. Unknown advice and
    /// an unaligned `start` are `EINVAL`; `len` rounding past the end of the
    /// address space is `EINVAL`; a zero length does nothing. Advice applies to
    /// the mapped parts of the range in address order; holes make the call return
    /// `ENOMEM` afterwards, and a VMA the advice is invalid for stops it with
    /// `EINVAL`, as in Linux's `madvise_walk_vmas`. `MADV_POPULATE_*` stop at the
    /// first hole with `ENOMEM` (Linux `madvise_populate`).
    pub fn madvise<C: ClearPages>(
        &mut self,
        start: u64,
        len: u64,
        advice: u64,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> SysResult {
        let behavior = advice as u32 as i32;
        let Some(visit) = Visit::of(behavior) else {
            return Err(Errno::EINVAL);
        };
        if !is_aligned(start, PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // len rounding up past 2^64 is Linux's "len_in && !len"; start + len
        // wrapping is "end < start".
        let end = align_up(len, PAGE_SIZE)
            .and_then(|l| start.checked_add(l))
            .ok_or(Errno::EINVAL)?;
        if end == start {
            return Ok(0);
        }
        match visit {
            Visit::Populate { write } => self.madvise_populate(start, end, write, ops, tlb).map(|()| 0),
            Visit::Unsupported => Err(Errno::EINVAL),
            _ => self.madvise_walk_vmas(start, end, visit, tlb),
        }
    }

    /// Linux `madvise_walk_vmas`: applies `visit` to each mapped part of
    /// `[start, end)` in order; `ENOMEM` at the end if there were holes.
    fn madvise_walk_vmas(&mut self, start: u64, end: u64, visit: Visit, tlb: &mut MmuGather) -> SysResult {
        let mut cursor = start;
        let mut unmapped = false;
        // One lookup per VMA instead of a collected list: an advice changes
        // only VMAs below `cursor` (or merges one with the next, which then
        // starts below `cursor`), so the next one is found from there.
        while cursor < end {
            let Some(v) = self.vmas.find_vma(cursor).filter(|v| v.start < end).copied() else { break };
            if v.start > cursor {
                unmapped = true;
            }
            let (s, e) = (cursor.max(v.start), end.min(v.end));
            self.madvise_vma(&v, s, e, visit, tlb)?;
            cursor = e;
        }
        if unmapped || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(0)
    }

    /// One advice on the part `[s, e)` of VMA `v` (Linux `madvise_vma_behavior`).
    fn madvise_vma(&mut self, v: &Vma, s: u64, e: u64, visit: Visit, tlb: &mut MmuGather) -> Result<(), Errno> {
        let va = VirtAddr::try_new(s).ok_or(Errno::ENOMEM)?;
        match visit {
            Visit::Flags(advice) => {
                let _ = self.vmas.madvise_with(s, e - s, |cur| advice.new_flags(cur))?;
            }
            Visit::WillNeed => {}
            Visit::Cold => {
                // can_madv_lru_vma; there is no LRU or swap to act on.
                if v.flags.intersects(VmFlags::LOCKED | VmFlags::PFNMAP) {
                    return Err(Errno::EINVAL);
                }
            }
            Visit::DontNeed { locked_ok } => {
                dontneed_free_valid(v, locked_ok)?;
                self.space
                    .madvise_dontneed(va, e - s, GFP_PGTABLE_USER, tlb)
                    .map_err(|_| Errno::ENOMEM)?;
                range_remove(&mut self.lazyfree, s, e);
            }
            Visit::Free => {
                dontneed_free_valid(v, false)?;
                // madvise_free_single_vma: anonymous VMAs only.
                if matches!(v.kind, VmaKind::AnonShared(_) | VmaKind::Special(_)) {
                    return Err(Errno::EINVAL);
                }
                let marked = self
                    .space
                    .mkclean_anon(va, e - s, GFP_PGTABLE_USER, tlb)
                    .map_err(|_| Errno::ENOMEM)?;
                if marked > 0 {
                    range_insert(&mut self.lazyfree, s, e);
                }
            }
            Visit::Remove => {
                // madvise_remove: shared writable file (here: shmem) mappings only.
                if v.flags.contains(VmFlags::LOCKED) {
                    return Err(Errno::EINVAL);
                }
                let VmaKind::AnonShared(id) = v.kind else {
                    return Err(Errno::EINVAL);
                };
                if !v.flags.contains(VmFlags::SHARED | VmFlags::MAYWRITE) {
                    return Err(Errno::EACCES);
                }
                self.space.unmap(va, e - s, GFP_PGTABLE_USER, tlb).map_err(|_| Errno::ENOMEM)?;
                let pgoff = v.pgoff_at(s).ok_or(Errno::EINVAL)?;
                self.shmem.punch_hole(id, pgoff, (e - s) >> PAGE_SHIFT, tlb);
            }
            Visit::Populate { .. } | Visit::Unsupported => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    /// Linux `madvise_populate` (`faultin_page_range` with `FOLL_MADV_POPULATE`):
    /// no VMA at an address is `ENOMEM`, a VMA lacking the permission (or
    /// `VM_IO`/`VM_PFNMAP`) is `EINVAL`, a fault that cannot be resolved is
    /// `EFAULT` (`ENOMEM` when out of memory). Pages before the failure stay
    /// populated.
    fn madvise_populate<C: ClearPages>(
        &mut self,
        start: u64,
        end: u64,
        write: bool,
        ops: &MmOps<'_, C>,
        tlb: &mut MmuGather,
    ) -> Result<(), Errno> {
        let mut addr = start;
        while addr < end {
            let v = *self.vmas.vma_lookup(addr).ok_or(Errno::ENOMEM)?;
            // check_vma_flags without FOLL_FORCE.
            let need = if write { VmFlags::WRITE } else { VmFlags::READ };
            if v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) || !v.flags.contains(need) {
                return Err(Errno::EINVAL);
            }
            let e = end.min(v.end);
            self.populate_range(addr, e, write, ops, tlb).map_err(|f| match f {
                FaultError::OutOfMemory => Errno::ENOMEM,
                _ => Errno::EFAULT,
            })?;
            addr = e;
        }
        Ok(())
    }

    /// Drops the pages marked by `MADV_FREE` that were not written since (Linux:
    /// reclaim of lazyfree folios). Call it from a shrinker under memory pressure.
    /// Pages whose entry was dirtied again keep their data and stop being lazily
    /// freed. Every range is consumed. Returns the number of base pages unmapped;
    /// the memory returns after `tlb`'s flush (a split huge page only once all of
    /// its 512 entries are gone).
    pub fn reclaim_lazyfree(&mut self, tlb: &mut MmuGather) -> u64 {
        let ranges = core::mem::take(&mut self.lazyfree);
        let mut freed = 0u64;
        for (s, e) in ranges {
            if let Some(va) = VirtAddr::try_new(s)
                && let Ok(n) = self.space.zap_clean_anon(va, e - s, tlb)
            {
                freed = freed.saturating_add(n);
            }
        }
        freed
    }

    /// Bytes of address space with lazily freed pages waiting for
    /// [`reclaim_lazyfree`](Self::reclaim_lazyfree), in pages (an upper bound of
    /// what it can drop: a shrinker's `count_objects`).
    pub fn lazyfree_pages(&self) -> u64 {
        self.lazyfree.iter().map(|(s, e)| (e - s) >> PAGE_SHIFT).sum()
    }

    // ----- brk ---------------------------------------------------------------------

    /// Sets the start of the heap (and the break) right after the loaded image,
    /// as the ELF loader does (`mm->start_brk = mm->brk`), rounded up to a page.
    /// `EINVAL` if that is above the user address space.
    pub fn set_brk_start(&mut self, addr: u64) -> Result<(), Errno> {
        let start = align_up(addr, PAGE_SIZE).filter(|&a| a <= TASK_SIZE).ok_or(Errno::EINVAL)?;
        self.start_brk = start;
        self.brk = start;
        Ok(())
    }

    /// `mm->start_brk`.
    pub fn start_brk(&self) -> u64 {
        self.start_brk
    }

    /// The current break (`mm->brk`).
    pub fn current_brk(&self) -> u64 {
        self.brk
    }

    /// The `brk` system call (Linux `SYSCALL_DEFINE1(brk)`): returns the new
    /// break on success and the old one on failure, never an errno. Below
    /// `start_brk` it only reports the break (`brk(0)`); shrinking unmaps;
    /// growing needs the range free up to one page below the next mapping (the
    /// stack guard gap below a grows-down one).
    pub fn brk<C: ClearPages>(&mut self, brk: u64, ops: &MmOps<'_, C>, tlb: &mut MmuGather) -> u64 {
        let _ = ops; // populate only for mlockall(MCL_FUTURE), which is not implemented
        let origbrk = self.brk;
        if brk < self.start_brk {
            return origbrk;
        }
        let (Some(newbrk), Some(oldbrk)) = (align_up(brk, PAGE_SIZE), align_up(origbrk, PAGE_SIZE)) else {
            return origbrk;
        };
        if oldbrk == newbrk {
            self.brk = brk;
            return brk;
        }
        if brk <= origbrk {
            // Always allow shrinking; something must be mapped there.
            if self.vmas.find_vma_intersection(newbrk, oldbrk).is_none() {
                return origbrk;
            }
            return match self.munmap(newbrk, oldbrk - newbrk, tlb) {
                Ok(_) => {
                    self.brk = brk;
                    brk
                }
                Err(_) => origbrk,
            };
        }
        // check_brk_limits: get_unmapped_area(MAP_FIXED) of the growth.
        let len = newbrk - oldbrk;
        if len > TASK_SIZE || oldbrk > TASK_SIZE - len || oldbrk < self.vmas.mmap_min_addr() {
            return origbrk;
        }
        // Keep a page (or the stack guard gap) free below the next mapping.
        let limit = newbrk.saturating_add(PAGE_SIZE).saturating_add(self.vmas.stack_guard_gap());
        if let Some(next) = self.vmas.find_vma_intersection(oldbrk, limit)
            && newbrk.saturating_add(PAGE_SIZE) > next.start_gap(self.vmas.stack_guard_gap())
        {
            return origbrk;
        }
        // do_brk_flags.
        if self.vmas.map_count() > self.vmas.max_map_count() {
            return origbrk;
        }
        let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL | VmFlags::ACCOUNT;
        let r = self.vmas.mmap_region(oldbrk, len, flags, VmaKind::Heap, linear_pgoff(oldbrk), MapFixed::NoReplace);
        if r.is_err() {
            return origbrk;
        }
        self.brk = brk;
        self.update_hiwater_vm();
        brk
    }

    // ----- prctl -------------------------------------------------------------------

    /// `prctl(option, arg2, arg3, arg4, arg5)` for the options this module owns
    /// (`PR_SET_THP_DISABLE`, `PR_GET_THP_DISABLE`); `None` for any other option.
    /// `option` is the raw register (Linux's `int option`).
    pub fn prctl(&mut self, option: u64, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> Option<SysResult> {
        match option as u32 as i32 {
            PR_SET_THP_DISABLE => Some(self.prctl_set_thp_disable(arg2, arg3, arg4, arg5)),
            PR_GET_THP_DISABLE => Some(self.prctl_get_thp_disable(arg2, arg3, arg4, arg5)),
            _ => None,
        }
    }

    /// `PR_SET_THP_DISABLE` (Linux `prctl_set_thp_disable`): `arg2` non-zero
    /// disables THP for this address space; `arg3` may be
    /// [`PR_THP_DISABLE_EXCEPT_ADVISED`] when disabling, nothing else; `arg4` and
    /// `arg5` must be zero (`EINVAL`). Affects later faults only.
    pub fn prctl_set_thp_disable(&mut self, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> SysResult {
        if arg4 != 0 || arg5 != 0 {
            return Err(Errno::EINVAL);
        }
        let disable = arg2 != 0;
        if (!disable && arg3 != 0) || arg3 & !PR_THP_DISABLE_EXCEPT_ADVISED != 0 {
            return Err(Errno::EINVAL);
        }
        self.env.thp_disabled = disable && arg3 == 0;
        self.env.thp_disabled_except_advised = disable && arg3 != 0;
        Ok(0)
    }

    /// `PR_GET_THP_DISABLE`: 1 if disabled, `1 | PR_THP_DISABLE_EXCEPT_ADVISED`
    /// if disabled except where advised, else 0; every argument must be zero.
    pub fn prctl_get_thp_disable(&self, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> SysResult {
        if arg2 != 0 || arg3 != 0 || arg4 != 0 || arg5 != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(if self.env.thp_disabled {
            1
        } else if self.env.thp_disabled_except_advised {
            1 | PR_THP_DISABLE_EXCEPT_ADVISED
        } else {
            0
        })
    }

    // ----- reporting ---------------------------------------------------------------

    /// Records the code segment for `VmExe:` / `VmLib:` (`mm->start_code`,
    /// `mm->end_code`; the ELF loader sets them).
    pub fn set_code_range(&mut self, start_code: u64, end_code: u64) {
        self.start_code = start_code;
        self.end_code = end_code.max(start_code);
    }

    /// Resident pages, all kinds (`VmRSS:`; a PMD-mapped huge page counts 512).
    pub fn rss_pages(&self) -> u64 {
        self.space.total_rss_pages()
    }

    /// The most resident pages this address space ever had (`VmHWM:`).
    pub fn hiwater_rss_pages(&self) -> u64 {
        self.space.hiwater_rss_pages()
    }

    /// [`rss_pages`](Self::rss_pages) in KiB.
    pub fn rss_kb(&self) -> u64 {
        self.rss_pages() << (PAGE_SHIFT - 10)
    }

    /// [`hiwater_rss_pages`](Self::hiwater_rss_pages) in KiB.
    pub fn hiwater_rss_kb(&self) -> u64 {
        self.hiwater_rss_pages() << (PAGE_SHIFT - 10)
    }

    /// Page-table memory in KiB (`VmPTE:`).
    pub fn vm_pte_kb(&self) -> u64 {
        self.space.pgtables_bytes() >> 10
    }

    /// The largest mapped size seen, in pages (`VmPeak:`).
    pub fn hiwater_vm_pages(&self) -> u64 {
        self.hiwater_vm.max(self.vmas.total_vm_pages())
    }

    fn update_hiwater_vm(&mut self) {
        self.hiwater_vm = self.hiwater_vm_pages();
    }

    /// The memory lines of `/proc/PID/status` (Linux `task_mem` and
    /// `task_thp_status`), e.g. `VmRSS:\t    1234 kB`.
    pub fn write_status(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let (mut data, mut stack, mut exec, mut locked) = (0u64, 0u64, 0u64, 0u64);
        for v in self.vmas.iter() {
            let f = v.flags;
            let pages = v.nr_pages();
            // vm_stat_account: is_data_mapping / is_stack_mapping / is_exec_mapping.
            if f & (VmFlags::WRITE | VmFlags::SHARED | VmFlags::GROWSDOWN) == VmFlags::WRITE {
                data += pages;
            }
            if f.contains(VmFlags::GROWSDOWN) {
                stack += pages;
            }
            if f & (VmFlags::EXEC | VmFlags::WRITE | VmFlags::GROWSDOWN) == VmFlags::EXEC {
                exec += pages;
            }
            if f.contains(VmFlags::LOCKED) {
                locked += pages;
            }
        }
        let text_bytes = (align_up(self.end_code, PAGE_SIZE).unwrap_or(self.end_code) - align_down(self.start_code, PAGE_SIZE))
            .min(exec << PAGE_SHIFT);
        let lib_bytes = (exec << PAGE_SHIFT) - text_bytes;
        let kb = |pages: u64| pages << (PAGE_SHIFT - 10);
        let lines: [(&str, u64); 15] = [
            ("VmPeak", kb(self.hiwater_vm_pages())),
            ("VmSize", kb(self.vmas.total_vm_pages())),
            ("VmLck", kb(locked)),
            ("VmPin", 0),
            ("VmHWM", kb(self.hiwater_rss_pages())),
            ("VmRSS", kb(self.rss_pages())),
            ("RssAnon", kb(self.space.rss_pages(RssKind::Anon))),
            ("RssFile", 0),
            ("RssShmem", kb(self.space.rss_pages(RssKind::Shmem))),
            ("VmData", kb(data)),
            ("VmStk", kb(stack)),
            ("VmExe", text_bytes >> 10),
            ("VmLib", lib_bytes >> 10),
            ("VmPTE", self.vm_pte_kb()),
            ("VmSwap", 0),
        ];
        for (name, value) in lines {
            writeln!(out, "{name}:\t{value:>8} kB")?;
        }
        writeln!(out, "THP_enabled:\t{}", u8::from(!self.env.thp_disabled))
    }

    /// `/proc/PID/maps`.
    pub fn write_maps(&self, out: &mut impl fmt::Write) -> fmt::Result {
        self.vmas.write_maps(out)
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// What `madvise` does per VMA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Visit {
    /// Only `vm_flags` change (for the fork and KSM advice too: nothing acts on
    /// those flags yet, see the module doc).
    Flags(FlagAdvice),
    /// `MADV_WILLNEED`: nothing to read ahead for anonymous memory.
    WillNeed,
    /// `MADV_COLD` / `MADV_PAGEOUT`: no LRU, no swap.
    Cold,
    /// `MADV_DONTNEED` (`locked_ok`: `MADV_DONTNEED_LOCKED`).
    DontNeed { locked_ok: bool },
    /// `MADV_FREE`.
    Free,
    /// `MADV_REMOVE`.
    Remove,
    /// `MADV_POPULATE_READ` / `_WRITE`.
    Populate { write: bool },
    /// Valid advice this kernel does not implement (`EINVAL`).
    Unsupported,
}

impl Visit {
    /// Linux `madvise_behavior_valid` and the dispatch of `madvise_vma_behavior`.
    fn of(behavior: i32) -> Option<Visit> {
        Some(match behavior {
            MADV_NORMAL => Visit::Flags(FlagAdvice::Normal),
            MADV_RANDOM => Visit::Flags(FlagAdvice::Random),
            MADV_SEQUENTIAL => Visit::Flags(FlagAdvice::Sequential),
            MADV_WILLNEED => Visit::WillNeed,
            MADV_DONTNEED => Visit::DontNeed { locked_ok: false },
            MADV_DONTNEED_LOCKED => Visit::DontNeed { locked_ok: true },
            MADV_FREE => Visit::Free,
            MADV_REMOVE => Visit::Remove,
            MADV_DONTFORK => Visit::Flags(FlagAdvice::DontFork),
            MADV_DOFORK => Visit::Flags(FlagAdvice::DoFork),
            MADV_MERGEABLE => Visit::Flags(FlagAdvice::Mergeable),
            MADV_UNMERGEABLE => Visit::Flags(FlagAdvice::Unmergeable),
            MADV_HUGEPAGE => Visit::Flags(FlagAdvice::HugePage),
            MADV_NOHUGEPAGE => Visit::Flags(FlagAdvice::NoHugePage),
            MADV_DONTDUMP => Visit::Flags(FlagAdvice::DontDump),
            MADV_DODUMP => Visit::Flags(FlagAdvice::DoDump),
            MADV_WIPEONFORK => Visit::Flags(FlagAdvice::WipeOnFork),
            MADV_KEEPONFORK => Visit::Flags(FlagAdvice::KeepOnFork),
            MADV_COLD | MADV_PAGEOUT => Visit::Cold,
            MADV_POPULATE_READ => Visit::Populate { write: false },
            MADV_POPULATE_WRITE => Visit::Populate { write: true },
            MADV_COLLAPSE | MADV_GUARD_INSTALL | MADV_GUARD_REMOVE => Visit::Unsupported,
            _ => return None,
        })
    }
}

/// Linux `madvise_dontneed_free_valid_vma`: not on `VM_PFNMAP`, nor on
/// `VM_LOCKED` unless `MADV_DONTNEED_LOCKED`.
fn dontneed_free_valid(v: &Vma, locked_ok: bool) -> Result<(), Errno> {
    let mut forbidden = VmFlags::PFNMAP;
    if !locked_ok {
        forbidden |= VmFlags::LOCKED;
    }
    if v.flags.intersects(forbidden) { Err(Errno::EINVAL) } else { Ok(()) }
}

/// Linux `calc_vm_prot_bits`: unknown bits are ignored.
fn calc_vm_prot_bits(prot: u64) -> VmFlags {
    let mut f = VmFlags::empty();
    f.set(VmFlags::READ, prot & PROT_READ != 0);
    f.set(VmFlags::WRITE, prot & PROT_WRITE != 0);
    f.set(VmFlags::EXEC, prot & PROT_EXEC != 0);
    f
}

/// Linux `calc_vm_flag_bits` for anonymous memory.
fn calc_vm_flag_bits(flags: u64) -> VmFlags {
    let mut f = VmFlags::empty();
    f.set(VmFlags::GROWSDOWN, flags & MAP_GROWSDOWN != 0);
    f.set(VmFlags::LOCKED, flags & MAP_LOCKED != 0);
    f.set(VmFlags::NOHUGEPAGE, flags & MAP_STACK != 0);
    f
}

/// Adds `[s, e)` to a set of disjoint, non-adjacent ranges.
fn range_insert(set: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
    let (mut lo, mut hi) = (s, e);
    // Ranges touching [lo, hi], merged one at a time (no allocation); an
    // existing range that already covers [s, e) leaves the set as it is.
    while let Some((&a, &b)) = set.range(..=hi).next_back().filter(|&(_, &end)| end >= lo) {
        if a <= s && b >= e {
            return;
        }
        set.remove(&a);
        lo = lo.min(a);
        hi = hi.max(b);
    }
    set.insert(lo, hi);
}

/// Removes `[s, e)` from a set of disjoint ranges.
fn range_remove(set: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
    if set.is_empty() {
        return; // the common case, and a range search of an empty map is not free
    }
    // Last range starting below e and ending above s, until none is left; the
    // pieces put back end at s or start at e, so they are not found again.
    while let Some((&a, &b)) = set.range(..e).next_back().filter(|&(_, &end)| end > s) {
        set.remove(&a);
        if a < s {
            set.insert(a, s);
        }
        if b > e {
            set.insert(e, b);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod migrate_tests;
