//! Page-fault resolution for anonymous memory, including transparent huge pages.
//!
//! Linux counterparts: `handle_mm_fault` / `__handle_mm_fault` /
//! `handle_pte_fault` / `do_anonymous_page` in `mm/memory.c`, `access_error` in
//! `arch/x86/mm/fault.c`, and `do_huge_pmd_anonymous_page` /
//! `thp_vma_allowable_order` in `mm/huge_memory.c` (the 2013-era per-process
//! `PR_SET_THP_DISABLE` flag included).
//!
//! [`handle_mm_fault`] is pure logic over a [`VmaTree`] and an
//! [`AddressSpace`]: the kernel's `#PF` handler reads CR2 and the error code,
//! calls it with the mm lock held, finishes the [`MmuGather`], and turns a
//! [`FaultError`] into `SIGSEGV` (user mode) or an oops (kernel mode, after its
//! exception-table lookup).
//!
//! * First touch of an anonymous VMA maps a page cleared through
//!   [`ClearPages::clear_page`], allocated `GFP_HIGHUSER_MOVABLE`.
//! * If the VMA covers the aligned 2 MiB range around the address and THP is
//!   allowed (global [`ThpMode`], `VM_HUGEPAGE` / `VM_NOHUGEPAGE`, the process's
//!   THP-disable flag), one order-9 page — movable, `GFP_TRANSHUGE(_LIGHT)` — is
//!   cleared with [`ClearPages::clear_huge_page`] (the faulting sub-page as the
//!   hint, so it is cleared last and stays cache-hot) and mapped by one PMD entry;
//!   a PTE table is deposited so a later split cannot fail. If the order-9
//!   allocation fails the fault falls back to a 4 KiB page.
//! * Shared anonymous VMAs (`MAP_SHARED | MAP_ANONYMOUS`) map the page of their
//!   [`Shmem`] object at the VMA's offset (Linux `shmem_fault` → `finish_fault`),
//!   allocated and cleared on first use; the entry does not own it.
//! * Special VMAs (`[vvar]`, `[vdso]`) map the kernel's frame at the VMA's
//!   offset (Linux `special_mapping_fault`); the entry does not own it.
//! * Writes to read-only VMAs, execution of non-exec VMAs and addresses outside
//!   every VMA are refused with a typed error.
//!
//! The PTE table is held with a walker reference ([`crate::pt_reclaim::PtRef`])
//! while the page is allocated and cleared, as in Qi Zheng's design.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, Pfn};
use crate::gfp::{GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_TRANSHUGE, GFP_TRANSHUGE_LIGHT, Gfp};
use crate::page::Rmap;
use crate::page_alloc::Pages;
use crate::pgtable::{
    AddressSpace, HPAGE_PMD_NR, HPAGE_PMD_ORDER, Level, MapError, PMD_SIZE, PageSize, Pte, PteFlags, PtAlloc, PtMem,
    SpaceKind, VirtAddr,
};
use crate::pgtable::RssKind;
use crate::pt_reclaim::TableAllocError;
use crate::shmem::{Shmem, ShmemError};
use crate::tlb::MmuGather;
use crate::vma::{ShmId, SpecialMapping, VmFlags, Vma, VmaKind, VmaTree};

/// Page-table pages for user space (Linux `GFP_PGTABLE_USER` without accounting).
pub const GFP_PGTABLE_USER: Gfp = GFP_KERNEL;

/// Clearing of new user pages, implemented by the kernel with its `clear` crate.
pub trait ClearPages {
    /// Zeroes one 4 KiB frame (cached stores).
    fn clear_page(&self, pfn: Pfn);
    /// Zeroes `nr_subpages` frames from `base`, clearing sub-page `hint_subpage`
    /// last (the one the faulting access touches) with the kernel's policy.
    fn clear_huge_page(&self, base: Pfn, nr_subpages: u64, hint_subpage: u64);
}

/// `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ThpMode {
    /// Every eligible anonymous VMA unless `MADV_NOHUGEPAGE`.
    Always = 0,
    /// Only VMAs with `MADV_HUGEPAGE`.
    Madvise = 1,
    /// Never.
    Never = 2,
}

/// The global THP knob and fault counters (Linux `/proc/vmstat` names).
#[derive(Debug)]
pub struct ThpCtl {
    mode: AtomicU8,
    /// `pgfault`.
    pub pgfault: AtomicU64,
    /// `thp_fault_alloc`.
    pub thp_fault_alloc: AtomicU64,
    /// `thp_fault_fallback`: the order-9 allocation failed.
    pub thp_fault_fallback: AtomicU64,
}

impl Default for ThpCtl {
    fn default() -> Self {
        Self::new(ThpMode::Always)
    }
}

impl ThpCtl {
    /// A knob set to `mode` (Linux's Kconfig default is `always`).
    pub const fn new(mode: ThpMode) -> ThpCtl {
        ThpCtl {
            mode: AtomicU8::new(mode as u8),
            pgfault: AtomicU64::new(0),
            thp_fault_alloc: AtomicU64::new(0),
            thp_fault_fallback: AtomicU64::new(0),
        }
    }
    /// Current mode.
    pub fn mode(&self) -> ThpMode {
        match self.mode.load(Relaxed) {
            0 => ThpMode::Always,
            1 => ThpMode::Madvise,
            _ => ThpMode::Never,
        }
    }
    /// Sets the mode.
    pub fn set_mode(&self, mode: ThpMode) {
        self.mode.store(mode as u8, Relaxed)
    }
    /// The sysfs rendering, e.g. `[always] madvise never`.
    pub fn mode_str(&self) -> &'static str {
        match self.mode() {
            ThpMode::Always => "[always] madvise never",
            ThpMode::Madvise => "always [madvise] never",
            ThpMode::Never => "always madvise [never]",
        }
    }
}

/// What kind of access faulted (from the x86 error code).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FaultAccess {
    /// A write (`X86_PF_WRITE`).
    pub write: bool,
    /// An instruction fetch (`X86_PF_INSTR`).
    pub exec: bool,
    /// From user mode (`X86_PF_USER`).
    pub user: bool,
}

impl FaultAccess {
    /// Decodes the `#PF` error code.
    pub const fn from_error_code(code: u64) -> FaultAccess {
        FaultAccess { write: code & 2 != 0, user: code & 4 != 0, exec: code & 16 != 0 }
    }
}

/// Per-process state the fault handler consults.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultEnv {
    /// `PR_SET_THP_DISABLE` (Linux `MMF_DISABLE_THP_COMPLETELY`): no huge pages.
    pub thp_disabled: bool,
    /// `PR_SET_THP_DISABLE` with `PR_THP_DISABLE_EXCEPT_ADVISED` (Linux
    /// `MMF_DISABLE_THP_EXCEPT_ADVISED`): huge pages only in `MADV_HUGEPAGE` VMAs.
    pub thp_disabled_except_advised: bool,
    /// `RLIMIT_STACK` for stack growth.
    pub stack_limit_bytes: u64,
}

impl Default for FaultEnv {
    fn default() -> Self {
        FaultEnv { thp_disabled: false, thp_disabled_except_advised: false, stack_limit_bytes: 8 << 20 }
    }
}

/// Why a fault could not be resolved. User mode: `SIGSEGV` (or OOM handling);
/// kernel mode without an exception-table fixup: an oops.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultError {
    /// Non-canonical, kernel-half, or a fault in a non-user address space.
    BadAddress,
    /// No VMA (and no stack to grow): `SEGV_MAPERR`.
    NoVma,
    /// The VMA forbids the access: `SEGV_ACCERR`.
    AccessDenied,
    /// A VMA kind this handler does not back yet (shared anonymous memory).
    Unsupported,
    /// No memory for the page or a page table (`VM_FAULT_OOM`).
    OutOfMemory,
}

impl FaultError {
    /// `si_code` for the `SIGSEGV` of a user fault: `SEGV_MAPERR` (1) or
    /// `SEGV_ACCERR` (2); `None` for out of memory.
    pub fn segv_code(self) -> Option<i32> {
        match self {
            FaultError::AccessDenied => Some(2),
            FaultError::OutOfMemory => None,
            _ => Some(1),
        }
    }
}

/// What the fault handler did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultOutcome {
    /// Mapped a new zeroed 4 KiB page.
    MappedPage(Pfn),
    /// Mapped a new zeroed 2 MiB page at PMD level (head frame).
    MappedHuge(Pfn),
    /// The entry already allowed the access (stale TLB or a racing fault).
    Spurious,
    /// A present entry got the permissions its VMA allows (write after mprotect).
    Upgraded,
}

/// Resolves a fault at `addr` in a user address space (Linux `handle_mm_fault`)
/// that has no shared anonymous objects: faults in `MAP_SHARED` anonymous VMAs
/// fail with [`FaultError::Unsupported`]. [`handle_mm_fault_shmem`] serves them.
#[allow(clippy::too_many_arguments)]
pub fn handle_mm_fault<A: PtAlloc, M: PtMem, C: ClearPages>(
    space: &mut AddressSpace<'_, A, M>,
    vmas: &mut VmaTree,
    addr: u64,
    access: FaultAccess,
    thp: &ThpCtl,
    env: &FaultEnv,
    clear: &C,
    tlb: &mut MmuGather,
) -> Result<FaultOutcome, FaultError> {
    handle_mm_fault_shmem(space, vmas, None, addr, access, thp, env, clear, tlb)
}

/// [`handle_mm_fault`] with the address space's shared anonymous objects, so
/// faults in `MAP_SHARED | MAP_ANONYMOUS` VMAs map the object's pages.
#[allow(clippy::too_many_arguments)]
pub fn handle_mm_fault_shmem<A: PtAlloc, M: PtMem, C: ClearPages>(
    space: &mut AddressSpace<'_, A, M>,
    vmas: &mut VmaTree,
    shmem: Option<&mut Shmem>,
    addr: u64,
    access: FaultAccess,
    thp: &ThpCtl,
    env: &FaultEnv,
    clear: &C,
    tlb: &mut MmuGather,
) -> Result<FaultOutcome, FaultError> {
    thp.pgfault.fetch_add(1, Relaxed);
    let va = VirtAddr::try_new(addr).ok_or(FaultError::BadAddress)?;
    if va.is_kernel_half() || space.kind() != SpaceKind::User {
        return Err(FaultError::BadAddress);
    }
    let vma = match vmas.vma_lookup(addr) {
        Some(v) => *v,
        None => vmas.expand_stack(addr, env.stack_limit_bytes).map_err(|_| FaultError::NoVma)?,
    };
    access_error(&vma, access)?;
    let prot = vm_get_page_prot(vma.flags);
    if let VmaKind::AnonShared(id) = vma.kind {
        let Some(shmem) = shmem else { return Err(FaultError::Unsupported) };
        if let Some(t) = space.translate(va) {
            return fault_on_present(space, va, t.level, t.flags, prot, access, tlb);
        }
        return do_shared_fault(space, shmem, &vma, id, va, prot, access, clear);
    }
    if let VmaKind::Special(m) = vma.kind {
        if let Some(t) = space.translate(va) {
            return fault_on_present(space, va, t.level, t.flags, prot, access, tlb);
        }
        return do_special_fault(space, &vma, m, va, prot);
    }
    if !thp_vma_allowable(&vma, addr, thp.mode(), env) {
        // One walk, as Linux's `__handle_mm_fault`: the tables on the way down,
        // then the PTE, present or not (`do_anonymous_page` sees which).
        return do_anonymous_page(space, va, prot, access, clear, tlb);
    }
    if let Some(t) = space.translate(va) {
        return fault_on_present(space, va, t.level, t.flags, prot, access, tlb);
    }
    if pmd_none(space, va) {
        match do_huge_pmd_anonymous_page(space, &vma, va, prot, access, thp, clear) {
            Ok(outcome) => return Ok(outcome),
            Err(HugeFallback::Fallback) => {}
            Err(HugeFallback::Error(e)) => return Err(e),
        }
    }
    do_anonymous_page(space, va, prot, access, clear, tlb)
}

/// Linux `access_error`: the VMA must allow the kind of access.
fn access_error(vma: &Vma, access: FaultAccess) -> Result<(), FaultError> {
    let f = vma.flags;
    let ok = if access.write {
        f.contains(VmFlags::WRITE)
    } else if access.exec {
        f.contains(VmFlags::EXEC)
    } else {
        f.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    };
    if ok { Ok(()) } else { Err(FaultError::AccessDenied) }
}

/// Leaf flags for a VMA (Linux `vm_get_page_prot` on x86): `PAGE_NONE`
/// ([`PteFlags::PROTNONE`], not present) for a VMA without any access.
pub fn vm_get_page_prot(flags: VmFlags) -> PteFlags {
    if !flags.intersects(VmFlags::ACCESS) {
        return PteFlags::PROTNONE | PteFlags::ACCESSED | PteFlags::NX;
    }
    let mut p = PteFlags::PRESENT | PteFlags::USER | PteFlags::ACCESSED;
    p.set(PteFlags::WRITABLE, flags.contains(VmFlags::WRITE));
    p.set(PteFlags::NX, !flags.contains(VmFlags::EXEC));
    p
}

/// The entry is present: a spurious fault, or a permission the VMA allows but the
/// entry lacks (Linux `do_wp_page` reusing an exclusive anonymous page).
fn fault_on_present<A: PtAlloc, M: PtMem>(
    space: &mut AddressSpace<'_, A, M>,
    va: VirtAddr,
    level: Level,
    have: PteFlags,
    prot: PteFlags,
    access: FaultAccess,
    tlb: &mut MmuGather,
) -> Result<FaultOutcome, FaultError> {
    let allowed = have.contains(PteFlags::PRESENT)
        && (!access.write || have.contains(PteFlags::WRITABLE))
        && (!access.exec || !have.contains(PteFlags::NX));
    if allowed {
        return Ok(FaultOutcome::Spurious);
    }
    let size = if level == Level::Pte { PAGE_SIZE } else { PMD_SIZE };
    let start = VirtAddr::try_new(va.as_u64() & !(size - 1)).ok_or(FaultError::BadAddress)?;
    space
        .protect(start, size, prot, GFP_PGTABLE_USER, tlb)
        .map_err(|_| FaultError::OutOfMemory)?;
    Ok(FaultOutcome::Upgraded)
}

/// Linux `thp_vma_allowable_order` + `thp_vma_suitable_order` for an anonymous
/// fault at `addr`.
pub fn thp_vma_allowable(vma: &Vma, addr: u64, mode: ThpMode, env: &FaultEnv) -> bool {
    if env.thp_disabled || vma.flags.contains(VmFlags::NOHUGEPAGE) {
        return false;
    }
    if env.thp_disabled_except_advised && !vma.flags.contains(VmFlags::HUGEPAGE) {
        return false;
    }
    let enabled = match mode {
        ThpMode::Always => true,
        ThpMode::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
        ThpMode::Never => false,
    };
    if !enabled || !matches!(vma.kind, VmaKind::AnonPrivate | VmaKind::Heap) {
        return false;
    }
    let haddr = addr & !(PMD_SIZE - 1);
    haddr >= vma.start && haddr.checked_add(PMD_SIZE).is_some_and(|end| end <= vma.end)
}

/// Whether nothing (no huge page, no PTE table) is mapped at the PMD slot of `va`.
fn pmd_none<A: PtAlloc, M: PtMem>(space: &AddressSpace<'_, A, M>, va: VirtAddr) -> bool {
    match space.find_entry(va.linear(), Level::Pmd) {
        None => true,
        Some((table, idx)) => !space.entry(table, idx).is_present(),
    }
}

enum HugeFallback {
    /// Use 4 KiB pages instead.
    Fallback,
    /// Give up.
    Error(FaultError),
}

/// Linux `do_huge_pmd_anonymous_page`.
fn do_huge_pmd_anonymous_page<A: PtAlloc, M: PtMem, C: ClearPages>(
    space: &mut AddressSpace<'_, A, M>,
    vma: &Vma,
    va: VirtAddr,
    prot: PteFlags,
    access: FaultAccess,
    thp: &ThpCtl,
    clear: &C,
) -> Result<FaultOutcome, HugeFallback> {
    let haddr = va.as_u64() & !(PMD_SIZE - 1);
    // Linux `vma_thp_gfp_mask` with defrag=madvise: direct reclaim/compaction
    // only for MADV_HUGEPAGE regions. Both are __GFP_MOVABLE.
    let gfp = if vma.flags.contains(VmFlags::HUGEPAGE) { GFP_TRANSHUGE } else { GFP_TRANSHUGE_LIGHT };
    let Ok(pages) = space.alloc.alloc_pages(gfp, HPAGE_PMD_ORDER) else {
        thp.thp_fault_fallback.fetch_add(1, Relaxed);
        return Err(HugeFallback::Fallback);
    };
    let pfn = pages.pfn();
    let hint = (va.as_u64() - haddr) >> PAGE_SHIFT;
    clear.clear_huge_page(pfn, HPAGE_PMD_NR, hint);
    let Some(pages) = make_anon(space, pages, haddr) else {
        return Err(HugeFallback::Error(FaultError::OutOfMemory));
    };
    let pfn_flags = fault_flags(prot, access);
    let hva = VirtAddr::try_new(haddr).ok_or(HugeFallback::Error(FaultError::BadAddress))?;
    match space.map(hva, pfn, PageSize::Size2M, pfn_flags, GFP_PGTABLE_USER) {
        Ok(()) => {
            let _ = pages.leak(); // owned by the PMD entry now
            thp.thp_fault_alloc.fetch_add(1, Relaxed);
            Ok(FaultOutcome::MappedHuge(pfn))
        }
        Err(e) => {
            unmake_anon(space, pages);
            Err(match e {
                MapError::NoMemory => HugeFallback::Error(FaultError::OutOfMemory),
                _ => HugeFallback::Fallback,
            })
        }
    }
}

/// Linux `do_anonymous_page`: a zeroed 4 KiB page under a referenced PTE table.
fn do_anonymous_page<A: PtAlloc, M: PtMem, C: ClearPages>(
    space: &mut AddressSpace<'_, A, M>,
    va: VirtAddr,
    prot: PteFlags,
    access: FaultAccess,
    clear: &C,
    tlb: &mut MmuGather,
) -> Result<FaultOutcome, FaultError> {
    let lin = va.linear();
    let r = match space.table_alloc(lin, Level::Pte, GFP_PGTABLE_USER) {
        Ok(r) => r,
        // A huge page maps it (mapped before THP was turned off for the range).
        Err(TableAllocError::Huge(_)) => {
            return match space.translate(va) {
                Some(t) => fault_on_present(space, va, t.level, t.flags, prot, access, tlb),
                None => Ok(FaultOutcome::Spurious),
            };
        }
        Err(TableAllocError::NoMemory(_)) => return Err(FaultError::OutOfMemory),
    };
    let idx = Level::Pte.index(lin);
    let pte = space.entry(r.table, idx);
    if pte.is_present() {
        // Mapped already: a protection or accessed/dirty fault on it.
        space.pt_put(r, tlb);
        return fault_on_present(space, va, Level::Pte, pte.flags(), prot, access, tlb);
    }
    let page = match space.alloc.alloc_pages(GFP_HIGHUSER_MOVABLE, 0) {
        Ok(p) => p,
        Err(_) => {
            // The walker reference may be the last thing holding new tables.
            space.pt_put(r, tlb);
            return Err(FaultError::OutOfMemory);
        }
    };
    let pfn = page.pfn();
    clear.clear_page(pfn);
    let Some(page) = make_anon(space, page, lin & !(PAGE_SIZE - 1)) else {
        space.pt_put(r, tlb);
        return Err(FaultError::OutOfMemory);
    };
    let flags = fault_flags(prot, access) | PteFlags::SOFT_ANON;
    space.set_entry(r.table, idx, Pte::new(pfn, flags));
    space.count_add(r.table, 1);
    space.add_rss(RssKind::Anon, 1);
    let _ = page.leak(); // owned by the PTE now
    space.pt_put(r, tlb);
    Ok(FaultOutcome::MappedPage(pfn))
}

/// Linux `shmem_fault` + `finish_fault`: maps the object's page at the VMA's
/// offset (allocated and cleared on first use) with an entry that does not own it.
#[allow(clippy::too_many_arguments)]
fn do_shared_fault<A: PtAlloc, M: PtMem, C: ClearPages>(
    space: &mut AddressSpace<'_, A, M>,
    shmem: &mut Shmem,
    vma: &Vma,
    id: ShmId,
    va: VirtAddr,
    prot: PteFlags,
    access: FaultAccess,
    clear: &C,
) -> Result<FaultOutcome, FaultError> {
    let pgoff = vma.pgoff_at(va.as_u64()).ok_or(FaultError::NoVma)?;
    let pfn = shmem.find_or_alloc(id, pgoff, space.alloc, clear).map_err(|e| match e {
        ShmemError::NoMemory(_) => FaultError::OutOfMemory,
        ShmemError::NoObject => FaultError::Unsupported,
    })?;
    let mut flags = prot | PteFlags::SOFT_SHMEM;
    flags.set(PteFlags::DIRTY, access.write);
    let page_va = VirtAddr::try_new(va.as_u64() & !(PAGE_SIZE - 1)).ok_or(FaultError::BadAddress)?;
    match space.map(page_va, pfn, PageSize::Size4K, flags, GFP_PGTABLE_USER) {
        Ok(()) => Ok(FaultOutcome::MappedPage(pfn)),
        // A racing fault mapped it first (cannot happen under the mm lock).
        Err(MapError::AlreadyMapped) => Ok(FaultOutcome::Spurious),
        // The page stays in the object; the next fault maps it.
        Err(_) => Err(FaultError::OutOfMemory),
    }
}

/// Linux `special_mapping_fault`: maps the kernel's frame at the VMA's offset
/// with an entry that does not own it.
fn do_special_fault<A: PtAlloc, M: PtMem>(
    space: &mut AddressSpace<'_, A, M>,
    vma: &Vma,
    m: &SpecialMapping,
    va: VirtAddr,
    prot: PteFlags,
) -> Result<FaultOutcome, FaultError> {
    let pgoff = vma.pgoff_at(va.as_u64()).ok_or(FaultError::NoVma)?;
    let pfn = m.frame(pgoff).ok_or(FaultError::BadAddress)?;
    let page_va = VirtAddr::try_new(va.as_u64() & !(PAGE_SIZE - 1)).ok_or(FaultError::BadAddress)?;
    match space.map(page_va, pfn, PageSize::Size4K, prot, GFP_PGTABLE_USER) {
        Ok(()) => Ok(FaultOutcome::MappedPage(pfn)),
        Err(MapError::AlreadyMapped) => Ok(FaultOutcome::Spurious),
        Err(_) => Err(FaultError::OutOfMemory),
    }
}

/// Accessed always, dirty on a write, and the entry owns an anonymous page.
fn fault_flags(prot: PteFlags, access: FaultAccess) -> PteFlags {
    let mut f = prot | PteFlags::SOFT_ANON;
    f.set(PteFlags::DIRTY, access.write);
    f
}

/// Declares `pages` an anonymous page mapped once at linear `lin` (Linux
/// `folio_add_new_anon_rmap`), movable through the space's movable ops if it has
/// them (Linux `__folio_set_anon` makes every anon folio migratable). On failure
/// the pages are freed.
fn make_anon<A: PtAlloc, M: PtMem>(space: &AddressSpace<'_, A, M>, pages: Pages, lin: u64) -> Option<Pages> {
    let rmap = Rmap { asid: space.asid, vpn: lin >> PAGE_SHIFT };
    let declared = space.alloc.page(pages.pfn()).map(|m| {
        m.set_anon(rmap)?;
        if let Some(ops) = space.anon_movable {
            // Cannot fail: the page is an owned anonymous head now.
            let _ = m.set_movable(ops);
        }
        Ok::<(), crate::page::PageStateError>(())
    });
    match declared {
        Some(Ok(())) => Some(pages),
        _ => {
            space.alloc.free_pages(pages);
            None
        }
    }
}

/// Undoes [`make_anon`] for a page that was never mapped and frees it.
fn unmake_anon<A: PtAlloc, M: PtMem>(space: &AddressSpace<'_, A, M>, pages: Pages) {
    if let Some(m) = space.alloc.page(pages.pfn()) {
        let _ = m.anon_add_mapcount(-1);
        let _ = m.clear_owner_state();
    }
    space.alloc.free_pages(pages);
}

#[cfg(test)]
mod tests;
