//! vmalloc: virtually contiguous, physically scattered kernel allocations.
//!
//! Linux counterpart: `mm/vmalloc.c` (`alloc_vmap_area`, `__vmalloc_node_range`,
//! `__vmalloc_area_node`, `vm_area_alloc_pages`, `vmap_pages_range`, `vfree`,
//! `/proc/vmallocinfo`'s `s_show`) with Michal Hocko's 2021 series applied: every
//! allocation vmalloc makes honours the caller's GFP flags.
//!
//! # What this module owns
//!
//! * The vmap-area allocator of `[VMALLOC_START, VMALLOC_END)` (or any kernel-half
//!   range given to [`Vmalloc::with_range`]): a list of busy areas sorted by address.
//!   Every area is followed by one unmapped guard page (Linux: `size += PAGE_SIZE`
//!   unless `VM_NO_GUARD`), so the next area never starts right after the previous
//!   one's last mapped page. Free space is the gaps between busy areas, so freeing
//!   an area merges it with its free neighbours by construction, and `vfree` never
//!   allocates. Lowest-address first fit, like Linux.
//! * [`Vmalloc::vmalloc`] / [`Vmalloc::vzalloc`] / [`Vmalloc::vfree`] on top of the
//!   page allocator ([`PtAlloc`]) and the kernel page tables ([`KernelPageTables`]).
//! * `vmallocinfo` and the `Vmalloc*` lines of `/proc/meminfo`.
//!
//! # GFP flow (the Linux bug being fixed)
//!
//! `vmalloc(size, gfp)` makes four kinds of allocations, all with the caller's flags:
//!
//! 1. the area record (busy-list growth) and 2. the page array (`area->pages`):
//!    heap bookkeeping, through [`VmallocBookkeeping::try_vec`] with
//!    `gfp & GFP_RECLAIM_MASK` (Linux passes the same mask to `kmem_cache_alloc`);
//! 3. the data pages: `alloc_pages(gfp, 0)` (with `__GFP_ZERO` for `vzalloc`);
//! 4. page-table pages: [`AddressSpace::map`] gets the same `gfp` (minus
//!    `__GFP_ZERO`: tables are always zeroed), not a hard-coded `GFP_KERNEL`.
//!
//! Heap bookkeeping cannot pass flags through Rust's global allocator, so the
//! kernel's [`VmallocBookkeeping`] ([`ScopedHeap`]) opens a scope from the flags
//! ([`MemallocScope::save_for_gfp`]: NOIO/NOFS/no-reclaim) and uses the fallible
//! `try_reserve_exact`; the kernel's `#[global_allocator]` computes its flags as
//! `scope.current_gfp_context(GFP_KERNEL)`, so the allocation is never more
//! permissive than the caller allowed, and fails (instead of aborting) on OOM.
//! Those two allocations also happen *outside* every vmalloc lock (the busy list
//! grows by allocating a larger vector first and swapping it in under the lock,
//! Linux's "preload" pattern), so they may reclaim.
//!
//! # `__GFP_NOFAIL`
//!
//! As in Linux, `__GFP_NOFAIL` with direct reclaim never fails for lack of memory:
//! the data pages and page tables loop in the page allocator, and the bookkeeping
//! is retried until it succeeds, with [`VmallocBookkeeping::nofail_stall`] every
//! [`NOFAIL_STALL_INTERVAL`] tries (the kernel logs it). Without reclaim
//! (`GFP_NOWAIT | __GFP_NOFAIL`, which Linux does not support either) the
//! bookkeeping gets [`NOFAIL_NORECLAIM_TRIES`] tries. Requests that can never be
//! satisfied still fail whatever the flags, as in Linux: a size beyond all managed
//! memory (`VmallocError::TooLarge`, Linux "exceeds total pages") or beyond the
//! range, and an exhausted virtual range.
//!
//! # Failure and cleanup
//!
//! Any failure undoes everything done so far, in reverse: mapped pages are
//! unmapped into an [`MmuGather`], the gather is flushed (freeing page-table pages
//! the unmap emptied), data pages are freed, the page array is dropped and the
//! area removed. Nothing leaks; the tests inject a failure at every allocation.
//!
//! # Locks
//!
//! `Vmalloc::areas` (Linux `vmap_area_lock`) is a leaf lock: no allocation, page
//! table operation, TLB flush or callback runs under it. The kernel page-table lock
//! (inside [`KernelPageTables`]) is taken once per map and per unmap, never while
//! holding `areas`; page-table pages are allocated under it, so shrinkers must not
//! call vmalloc / vfree (they would re-take it). A VA range is reused only after
//! the TLB flush that covers its old mappings (the record is removed last).
//!
//! The kernel must preallocate the PUD tables of the whole range
//! ([`Vmalloc::preallocate_page_tables`], Linux `preallocate_vmalloc_pages`)
//! before creating user address spaces: the kernel PML4 entries are copied into
//! every user PML4 and are never changed afterwards.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::{self, Write};
use core::panic::Location;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, Pfn};
use crate::gfp::{Gfp, gfpflags_allow_blocking};
use crate::page_alloc::{AllocError, Pages};
use crate::pgtable::{AddressSpace, MapError, PageSize, PteFlags, PtAlloc, PtMem, VirtAddr};
use crate::pt_reclaim::PreallocError;
use crate::sched_mm::MemallocScope;
use crate::sync::{HostPlatform, Platform, SpinLock};
use crate::tlb::{MmuGather, TlbFlush};

/// First address of the vmalloc range (Linux x86_64 4-level `VMALLOC_START`).
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// Size of the vmalloc range: 32 TiB (Linux `VMALLOC_SIZE_TB_L4`).
pub const VMALLOC_SIZE: u64 = 32 << 40;
/// One past the last address of the vmalloc range.
pub const VMALLOC_END: u64 = VMALLOC_START + VMALLOC_SIZE;

/// Linux `GFP_RECLAIM_MASK`: the flags that matter for bookkeeping allocations.
pub const GFP_RECLAIM_MASK: Gfp = Gfp::DIRECT_RECLAIM
    .union(Gfp::KSWAPD_RECLAIM)
    .union(Gfp::HIGH)
    .union(Gfp::IO)
    .union(Gfp::FS)
    .union(Gfp::NOWARN)
    .union(Gfp::RETRY_MAYFAIL)
    .union(Gfp::NOFAIL)
    .union(Gfp::NORETRY)
    .union(Gfp::NOMEMALLOC);

/// Linux `PAGE_KERNEL`: what vmalloc maps with.
pub const PAGE_KERNEL: PteFlags = PteFlags::WRITABLE
    .union(PteFlags::ACCESSED)
    .union(PteFlags::DIRTY)
    .union(PteFlags::GLOBAL)
    .union(PteFlags::NX);

/// Attempts for `__GFP_NOFAIL` bookkeeping that may not reclaim, before it fails
/// (with reclaim it retries until it succeeds).
pub const NOFAIL_NORECLAIM_TRIES: u64 = 16;
/// `__GFP_NOFAIL` bookkeeping tries between two [`VmallocBookkeeping::nofail_stall`]
/// calls.
pub const NOFAIL_STALL_INTERVAL: u64 = 1000;

/// Whether `va` lies in the default vmalloc range (Linux `is_vmalloc_addr`).
pub const fn is_vmalloc_addr(va: VirtAddr) -> bool {
    va.as_u64() >= VMALLOC_START && va.as_u64() < VMALLOC_END
}

/// Who allocated an area (Linux: the return address printed with `%pS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A function name; printed as `name+0x0/0x0` (no symbol table yet).
    Symbol(&'static str),
    /// A source location (see [`Caller::here`]); printed as `file:line`.
    Location(&'static Location<'static>),
}

impl Caller {
    /// The source location of the call (`#[track_caller]`).
    #[track_caller]
    pub fn here() -> Caller {
        Caller::Location(Location::caller())
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Symbol(s) => write!(f, "{s}+0x0/0x0"),
            Caller::Location(l) => write!(f, "{}:{}", l.file(), l.line()),
        }
    }
}

/// Why vmalloc failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmallocError {
    /// Zero size, or the size overflows when rounded to pages.
    InvalidSize,
    /// Larger than the whole range, or than all managed memory.
    TooLarge,
    /// No free virtual range large enough (plus guard page).
    NoVirtualSpace,
    /// A bookkeeping allocation (area list or page array) failed.
    NoBookkeepingMemory,
    /// A data page could not be allocated.
    NoMemory(AllocError),
    /// Mapping failed (a page-table page could not be allocated, or, a bug, the
    /// range was already mapped).
    Map(MapError),
}

/// How vmalloc's heap bookkeeping is allocated, honouring `gfp`. The kernel uses
/// [`ScopedHeap`]; tests inject failures.
pub trait VmallocBookkeeping {
    /// An empty vector with room for exactly `capacity` elements, allocated no more
    /// permissively than `gfp` allows, or an error (never an abort):
    /// `AllocError::InvalidOrder` for a size that can never be allocated (not
    /// retried), `NoMemory` otherwise.
    fn try_vec<T>(&self, gfp: Gfp, capacity: usize) -> Result<Vec<T>, AllocError>;
    /// A `__GFP_NOFAIL` bookkeeping allocation has failed `tries` times and goes on
    /// (Linux's "loops for long" warning). Default: nothing.
    fn nofail_stall(&self, _gfp: Gfp, _capacity: usize, _tries: u64) {}
}

/// The kernel's bookkeeping: the global allocator under a scope made from `gfp`.
/// Requires the kernel's `#[global_allocator]` to allocate with
/// `scope.current_gfp_context(GFP_KERNEL)`.
pub struct ScopedHeap<'s> {
    /// The current task's allocation scope.
    pub scope: &'s MemallocScope,
    /// Reports a `__GFP_NOFAIL` bookkeeping stall (the kernel logs it):
    /// `(gfp, capacity, tries)`.
    pub nofail_stall: fn(Gfp, usize, u64),
}

impl VmallocBookkeeping for ScopedHeap<'_> {
    fn try_vec<T>(&self, gfp: Gfp, capacity: usize) -> Result<Vec<T>, AllocError> {
        // A size no allocator can give (Rust's limit): retrying cannot help.
        if capacity.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
            return Err(AllocError::InvalidOrder);
        }
        let _scope = self.scope.save_for_gfp(gfp);
        let mut v = Vec::new();
        v.try_reserve_exact(capacity).map_err(|_| AllocError::NoMemory)?;
        Ok(v)
    }
    fn nofail_stall(&self, gfp: Gfp, capacity: usize, tries: u64) {
        (self.nofail_stall)(gfp, capacity, tries)
    }
}

/// The kernel page tables as vmalloc needs them; each call takes the kernel
/// page-table lock once. Implemented for a [`SpinLock`] or a [`RefCell`] around
/// the kernel [`AddressSpace`].
pub trait KernelPageTables {
    /// Maps `pages[i]` (order 0) at `va + i * PAGE_SIZE` with `flags`, allocating
    /// page-table pages with `gfp`. On error returns how many pages were mapped
    /// (all of them still mapped; the caller unmaps) and why.
    fn map_pages(&self, va: VirtAddr, pages: &[Pages], flags: PteFlags, gfp: Gfp) -> Result<(), (usize, MapError)>;
    /// Unmaps `nr_pages` 4 KiB pages from `va` into `tlb` (emptied page-table pages
    /// are queued there when the page-table reclaim knob is on).
    fn unmap_pages(&self, va: VirtAddr, nr_pages: u64, tlb: &mut MmuGather);
}

fn map_pages_in<A: PtAlloc, M: PtMem>(
    space: &mut AddressSpace<'_, A, M>,
    va: VirtAddr,
    pages: &[Pages],
    flags: PteFlags,
    gfp: Gfp,
) -> Result<(), (usize, MapError)> {
    for (i, p) in pages.iter().enumerate() {
        let at = VirtAddr::try_new(va.as_u64() + ((i as u64) << PAGE_SHIFT)).ok_or((i, MapError::OutOfRange))?;
        space.map(at, p.pfn(), PageSize::Size4K, flags, gfp).map_err(|e| (i, e))?;
    }
    Ok(())
}

fn unmap_pages_in<A: PtAlloc, M: PtMem>(space: &mut AddressSpace<'_, A, M>, va: VirtAddr, nr_pages: u64, tlb: &mut MmuGather) {
    if nr_pages == 0 {
        return;
    }
    // Only 4 KiB leaves live here, so no split (and no allocation) can happen.
    let r = space.unmap(va, nr_pages << PAGE_SHIFT, Gfp::empty(), tlb);
    debug_assert!(r.is_ok(), "vmalloc unmap failed: {r:?}");
}

impl<A: PtAlloc, M: PtMem, P: Platform> KernelPageTables for SpinLock<AddressSpace<'_, A, M>, P> {
    fn map_pages(&self, va: VirtAddr, pages: &[Pages], flags: PteFlags, gfp: Gfp) -> Result<(), (usize, MapError)> {
        map_pages_in(&mut self.lock(), va, pages, flags, gfp)
    }
    fn unmap_pages(&self, va: VirtAddr, nr_pages: u64, tlb: &mut MmuGather) {
        unmap_pages_in(&mut self.lock(), va, nr_pages, tlb)
    }
}

impl<A: PtAlloc, M: PtMem> KernelPageTables for RefCell<AddressSpace<'_, A, M>> {
    fn map_pages(&self, va: VirtAddr, pages: &[Pages], flags: PteFlags, gfp: Gfp) -> Result<(), (usize, MapError)> {
        map_pages_in(&mut self.borrow_mut(), va, pages, flags, gfp)
    }
    fn unmap_pages(&self, va: VirtAddr, nr_pages: u64, tlb: &mut MmuGather) {
        unmap_pages_in(&mut self.borrow_mut(), va, nr_pages, tlb)
    }
}

/// What a `vmalloc` call uses: the page allocator for data pages (the one the
/// gather frees page-table pages to), the kernel page tables, the bookkeeping
/// allocator and the TLB.
pub struct VmallocDeps<'d, A, K, B, F> {
    /// Data pages (and the allocator page-table pages are returned to).
    pub alloc: &'d A,
    /// The kernel page tables.
    pub kernel_pt: &'d K,
    /// Heap bookkeeping.
    pub book: &'d B,
    /// TLB flushes.
    pub tlb: &'d F,
}

/// One busy vmap area (Linux `struct vmap_area` + `struct vm_struct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmapAreaInfo {
    /// First address.
    pub start: VirtAddr,
    /// Bytes reserved, guard page included (Linux `vm->size`).
    pub size: u64,
    /// Pages mapped (0 while the area is being set up).
    pub nr_pages: u64,
    /// Who allocated it.
    pub caller: Caller,
}

impl VmapAreaInfo {
    /// One past the last mapped byte (the guard page starts here).
    pub fn mapped_end(&self) -> u64 {
        self.start.as_u64() + (self.nr_pages << PAGE_SHIFT)
    }
}

/// A live vmalloc allocation. Consumed by [`Vmalloc::vfree`]; dropping it leaks its
/// pages (their `Pages` handles panic in debug builds).
#[must_use = "vmalloc memory must be freed with vfree()"]
#[derive(Debug)]
pub struct VmArea {
    start: VirtAddr,
    size_bytes: usize,
    pages: Vec<Pages>,
}

impl VmArea {
    /// The first byte.
    pub fn addr(&self) -> VirtAddr {
        self.start
    }
    /// The size asked for.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
    /// Backing pages.
    pub fn nr_pages(&self) -> u64 {
        self.pages.len() as u64
    }
    /// Frame backing page `i` (Linux `vmalloc_to_page`).
    pub fn pfn(&self, i: usize) -> Option<Pfn> {
        self.pages.get(i).map(Pages::pfn)
    }
}

/// Where an address falls relative to the vmalloc areas (for the fault report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmallocAddr {
    /// Not in this vmalloc range.
    Outside,
    /// In the range but in no area.
    Unallocated,
    /// In the mapped part of an area.
    Mapped(VmapAreaInfo),
    /// In the guard page after an area: an overflow off its end.
    Guard(VmapAreaInfo),
    /// The area list is locked (the fault happened inside vmalloc itself).
    Busy,
}

/// The vmalloc range and its busy areas (Linux `vmap_area_root` +
/// `vmap_area_lock`). The kernel keeps one in a `static`.
pub struct Vmalloc<P: Platform = HostPlatform> {
    start: u64,
    end: u64,
    /// Busy areas sorted by `start`; never reallocated under the lock.
    areas: SpinLock<Vec<VmapAreaInfo>, P>,
    /// Pages currently backing vmalloc areas.
    nr_vmalloc_pages: AtomicU64,
}

impl<P: Platform> Default for Vmalloc<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// `x` rounded up to `align` (a power of two), `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl<P: Platform> Vmalloc<P> {
    /// The Linux range `[VMALLOC_START, VMALLOC_END)`.
    pub const fn new() -> Self {
        Vmalloc { start: VMALLOC_START, end: VMALLOC_END, areas: SpinLock::new(Vec::new()), nr_vmalloc_pages: AtomicU64::new(0) }
    }

    /// Another kernel-half range; `None` unless page aligned, non-empty and inside
    /// one half (`end` may be the canonical address after the range).
    pub const fn with_range(start: VirtAddr, end: VirtAddr) -> Option<Self> {
        let (s, e) = (start.as_u64(), end.as_u64());
        if !start.is_kernel_half() || !end.is_kernel_half() || s % PAGE_SIZE != 0 || e % PAGE_SIZE != 0 || e <= s {
            return None;
        }
        Some(Vmalloc { start: s, end: e, areas: SpinLock::new(Vec::new()), nr_vmalloc_pages: AtomicU64::new(0) })
    }

    /// The range as `(start, end)` (`end` is exclusive).
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Allocates the PUD tables for the whole range in the kernel space (Linux
    /// `preallocate_vmalloc_pages`); call at boot, before any user space exists.
    pub fn preallocate_page_tables<A: PtAlloc, M: PtMem>(
        &self,
        kspace: &mut AddressSpace<'_, A, M>,
        gfp: Gfp,
    ) -> Result<(), PreallocError> {
        let start = VirtAddr::try_new(self.start).ok_or(PreallocError::BadRange)?;
        kspace.preallocate_top_level(start, self.end - self.start, gfp)
    }

    /// Pages backing vmalloc areas now.
    pub fn nr_vmalloc_pages(&self) -> u64 {
        self.nr_vmalloc_pages.load(Relaxed)
    }

    /// Busy areas (copies, for tests and the console).
    pub fn areas(&self) -> Vec<VmapAreaInfo> {
        self.areas.lock().clone()
    }

    /// Linux `vmalloc(size)`: `size` bytes, page granular, with `gfp` for every
    /// allocation (see the module docs). The memory is not zeroed unless `gfp`
    /// has `__GFP_ZERO`.
    pub fn vmalloc<A: PtAlloc, K: KernelPageTables, B: VmallocBookkeeping, F: TlbFlush>(
        &self,
        size: usize,
        gfp: Gfp,
        caller: Caller,
        deps: &VmallocDeps<'_, A, K, B, F>,
    ) -> Result<VmArea, VmallocError> {
        self.vmalloc_prot(size, gfp, PAGE_KERNEL, caller, deps)
    }

    /// Linux `vzalloc`: [`vmalloc`](Self::vmalloc) of zeroed memory (the data
    /// pages are allocated with `__GFP_ZERO`).
    pub fn vzalloc<A: PtAlloc, K: KernelPageTables, B: VmallocBookkeeping, F: TlbFlush>(
        &self,
        size: usize,
        gfp: Gfp,
        caller: Caller,
        deps: &VmallocDeps<'_, A, K, B, F>,
    ) -> Result<VmArea, VmallocError> {
        self.vmalloc_prot(size, gfp | Gfp::ZERO, PAGE_KERNEL, caller, deps)
    }

    /// Linux `__vmalloc_node_range` with a protection (e.g. without NX for module
    /// text).
    pub fn vmalloc_prot<A: PtAlloc, K: KernelPageTables, B: VmallocBookkeeping, F: TlbFlush>(
        &self,
        size: usize,
        gfp: Gfp,
        prot: PteFlags,
        caller: Caller,
        deps: &VmallocDeps<'_, A, K, B, F>,
    ) -> Result<VmArea, VmallocError> {
        let bytes = align_up(size as u64, PAGE_SIZE).ok_or(VmallocError::InvalidSize)?;
        if bytes == 0 {
            return Err(VmallocError::InvalidSize);
        }
        let nr_pages = bytes >> PAGE_SHIFT;
        // Plus the guard page.
        let area_size = bytes.checked_add(PAGE_SIZE).ok_or(VmallocError::TooLarge)?;
        if area_size > self.end - self.start || nr_pages > deps.alloc.totalram_pages() {
            return Err(VmallocError::TooLarge);
        }
        let book_gfp = gfp & GFP_RECLAIM_MASK;

        // 1. The virtual range (may grow the busy list: bookkeeping allocation).
        let start = self.alloc_vmap_area(area_size, book_gfp, caller, deps.book)?;
        let va = VirtAddr::try_new(start).ok_or(VmallocError::NoVirtualSpace)?;

        // 2. The page array (bookkeeping allocation).
        let mut pages: Vec<Pages> = match try_vec_nofail(deps.book, book_gfp, nr_pages as usize) {
            Ok(v) => v,
            Err(_) => {
                self.remove_area(start);
                return Err(VmallocError::NoBookkeepingMemory);
            }
        };

        // 3. The data pages.
        for _ in 0..nr_pages {
            match deps.alloc.alloc_pages(gfp, 0) {
                Ok(p) => {
                    if let Some(meta) = deps.alloc.page(p.pfn()) {
                        let _ = meta.set_vmalloc(start);
                    }
                    pages.push(p); // within capacity: no allocation
                }
                Err(e) => {
                    self.free_data_pages(deps.alloc, pages);
                    self.remove_area(start);
                    return Err(VmallocError::NoMemory(e));
                }
            }
        }

        // 4. The mappings, page tables allocated with the caller's flags.
        if let Err((mapped, e)) = deps.kernel_pt.map_pages(va, &pages, prot, gfp - Gfp::ZERO) {
            let mut tlb = MmuGather::new();
            deps.kernel_pt.unmap_pages(va, mapped as u64, &mut tlb);
            let _ = tlb.finish(deps.tlb, deps.alloc);
            self.free_data_pages(deps.alloc, pages);
            self.remove_area(start);
            return Err(VmallocError::Map(e));
        }

        self.nr_vmalloc_pages.fetch_add(nr_pages, Relaxed);
        let mut areas = self.areas.lock();
        if let Ok(i) = areas.binary_search_by_key(&start, |a| a.start.as_u64()) {
            areas[i].nr_pages = nr_pages;
        }
        drop(areas);
        Ok(VmArea { start: va, size_bytes: size, pages })
    }

    /// Linux `vfree`: unmaps the area, flushes the TLB (page-table pages the unmap
    /// emptied are freed after the flush), frees the data pages, then releases the
    /// virtual range. Hands the area back if it does not belong to this range.
    pub fn vfree<A: PtAlloc, K: KernelPageTables, B: VmallocBookkeeping, F: TlbFlush>(
        &self,
        area: VmArea,
        deps: &VmallocDeps<'_, A, K, B, F>,
    ) -> Result<(), VmArea> {
        let start = area.start.as_u64();
        let known = {
            let areas = self.areas.lock();
            areas
                .binary_search_by_key(&start, |a| a.start.as_u64())
                .is_ok_and(|i| areas[i].nr_pages == area.pages.len() as u64)
        };
        if !known {
            return Err(area);
        }
        let mut tlb = MmuGather::new();
        deps.kernel_pt.unmap_pages(area.start, area.pages.len() as u64, &mut tlb);
        let _ = tlb.finish(deps.tlb, deps.alloc);
        self.nr_vmalloc_pages.fetch_sub(area.pages.len() as u64, Relaxed);
        self.free_data_pages(deps.alloc, area.pages);
        // Last: the range may be reused only after the flush above.
        self.remove_area(start);
        Ok(())
    }

    fn free_data_pages<A: PtAlloc>(&self, alloc: &A, pages: Vec<Pages>) {
        for p in pages {
            if let Some(meta) = alloc.page(p.pfn()) {
                let _ = meta.clear_owner_state();
            }
            alloc.free_pages(p);
        }
    }

    /// Linux `alloc_vmap_area`: reserves `size` bytes (guard included), lowest
    /// address first. Grows the busy list outside the lock when it is full.
    fn alloc_vmap_area<B: VmallocBookkeeping>(&self, size: u64, gfp: Gfp, caller: Caller, book: &B) -> Result<u64, VmallocError> {
        loop {
            {
                let mut areas = self.areas.lock();
                if areas.len() < areas.capacity() {
                    let (idx, start) = self.find_gap(&areas, size).ok_or(VmallocError::NoVirtualSpace)?;
                    let va = VirtAddr::try_new(start).ok_or(VmallocError::NoVirtualSpace)?;
                    areas.insert(idx, VmapAreaInfo { start: va, size, nr_pages: 0, caller });
                    return Ok(start);
                }
            }
            // Full: allocate a larger list without the lock ("preload"), swap it in.
            let cap = self.areas.lock().capacity();
            let mut bigger: Vec<VmapAreaInfo> =
                try_vec_nofail(book, gfp, (cap * 2).max(16)).map_err(|_| VmallocError::NoBookkeepingMemory)?;
            let old = {
                let mut areas = self.areas.lock();
                if bigger.capacity() > areas.capacity() {
                    bigger.extend(areas.drain(..)); // within capacity: no allocation
                    core::mem::replace(&mut *areas, bigger)
                } else {
                    bigger // somebody else grew it meanwhile
                }
            };
            drop(old); // freed outside the lock
        }
    }

    /// First fit: the index to insert at and the start address.
    fn find_gap(&self, areas: &[VmapAreaInfo], size: u64) -> Option<(usize, u64)> {
        let mut cursor = self.start;
        for (i, a) in areas.iter().enumerate() {
            if a.start.as_u64() - cursor >= size {
                return Some((i, cursor));
            }
            cursor = a.start.as_u64() + a.size;
        }
        (self.end - cursor >= size).then_some((areas.len(), cursor))
    }

    /// Releases the range starting at `start` (never allocates).
    fn remove_area(&self, start: u64) {
        let mut areas = self.areas.lock();
        if let Ok(i) = areas.binary_search_by_key(&start, |a| a.start.as_u64()) {
            areas.remove(i);
        }
    }

    /// Which area `va` belongs to, for the page-fault report ("BUG: vmalloc guard
    /// page hit"). Uses `try_lock`: safe from the fault handler.
    pub fn classify(&self, va: VirtAddr) -> VmallocAddr {
        let a = va.as_u64();
        if a < self.start || a >= self.end {
            return VmallocAddr::Outside;
        }
        let Some(areas) = self.areas.try_lock() else { return VmallocAddr::Busy };
        let i = areas.partition_point(|x| x.start.as_u64() <= a);
        if i == 0 {
            return VmallocAddr::Unallocated;
        }
        let area = areas[i - 1];
        if a < area.mapped_end() {
            VmallocAddr::Mapped(area)
        } else if a < area.start.as_u64() + area.size {
            VmallocAddr::Guard(area)
        } else {
            VmallocAddr::Unallocated
        }
    }

    /// `/proc/vmallocinfo`: one line per area, Linux format:
    /// `0xffffc90000000000-0xffffc90000005000   20480 caller+0x0/0x0 pages=4 vmalloc`.
    /// Written under the area lock: `out` must not allocate through vmalloc.
    pub fn vmallocinfo(&self, out: &mut impl Write) -> fmt::Result {
        let areas = self.areas.lock();
        for a in areas.iter() {
            write!(out, "0x{:016x}-0x{:016x} {:>7} {}", a.start.as_u64(), a.start.as_u64() + a.size, a.size, a.caller)?;
            if a.nr_pages > 0 {
                write!(out, " pages={}", a.nr_pages)?;
            }
            writeln!(out, " vmalloc")?;
        }
        Ok(())
    }

    /// The `VmallocTotal:`, `VmallocUsed:` and `VmallocChunk:` lines of
    /// `/proc/meminfo` (Linux prints 0 for the chunk since 4.0).
    pub fn meminfo(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "VmallocTotal:   {:>8} kB", (self.end - self.start) >> 10)?;
        writeln!(out, "VmallocUsed:    {:>8} kB", self.nr_vmalloc_pages() * (PAGE_SIZE >> 10))?;
        writeln!(out, "VmallocChunk:   {:>8} kB", 0)
    }
}

/// `book.try_vec`, once; for `__GFP_NOFAIL` until it succeeds if `gfp` may reclaim
/// (reporting a stall every [`NOFAIL_STALL_INTERVAL`] tries), else
/// [`NOFAIL_NORECLAIM_TRIES`] times.
fn try_vec_nofail<T, B: VmallocBookkeeping>(book: &B, gfp: Gfp, capacity: usize) -> Result<Vec<T>, AllocError> {
    let max_tries = match (gfp.contains(Gfp::NOFAIL), gfpflags_allow_blocking(gfp)) {
        (false, _) => 1,
        (true, false) => NOFAIL_NORECLAIM_TRIES,
        (true, true) => u64::MAX,
    };
    let mut tries = 0;
    loop {
        let e = match book.try_vec(gfp, capacity) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        tries += 1;
        if tries >= max_tries || e == AllocError::InvalidOrder {
            return Err(e);
        }
        if tries % NOFAIL_STALL_INTERVAL == 0 {
            book.nofail_stall(gfp, capacity, tries);
        }
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests;
