//! TLB shootdown batching: the `mmu_gather` of page-table changes.
//!
//! Linux counterpart: `mm/mmu_gather.c` and `include/asm-generic/tlb.h`
//! (`tlb_gather_mmu`, `tlb_flush_mmu`, `tlb_finish_mmu`, `tlb_remove_page`,
//! `tlb_remove_table`) plus the x86 policy of `flush_tlb_mm_range` in
//! `arch/x86/mm/tlb.c`: `invlpg` page by page up to
//! `tlb_single_page_flush_ceiling` (33) pages, a full flush above it.
//!
//! Every page-table change in [`crate::pgtable`] records into a [`MmuGather`]:
//! the virtual range whose translations went stale, and the pages (page-table
//! pages and released anonymous pages) that may be reused only once no TLB
//! or paging-structure cache can still reach them. Nothing is returned to the
//! allocator before [`MmuGather::finish`] has called the [`TlbFlush`]
//! implementation, which is what makes freeing page-table pages safe (Qi
//! Zheng's `pte_free_defer` / `tlb_remove_table` ordering).
//!
//! The gather is `#[must_use]`; dropping one that still holds work panics in
//! debug builds (a drop bomb, like [`Pages`]).

use alloc::vec::Vec;

use crate::addr::PAGE_SHIFT;
use crate::page_alloc::Pages;
use crate::pgtable::{PtAlloc, Quicklist, VirtAddr};

/// Linux x86 `tlb_single_page_flush_ceiling`: ranges of more pages than this are
/// flushed with a full flush instead of one `invlpg` per page.
pub const TLB_SINGLE_PAGE_FLUSH_CEILING: u64 = 33;

/// The hardware side of a TLB flush, implemented by the kernel (`invlpg`,
/// CR3 reload / `invpcid`) and by a recording fake in host tests.
pub trait TlbFlush {
    /// Invalidates the translations of the `nr_pages` pages from `start` (the
    /// kernel loops `invlpg`; the range never leaves `start`'s half, so
    /// `start + i * 4096` needs no wrap-around). Only called for at most
    /// [`single_page_flush_ceiling`](TlbFlush::single_page_flush_ceiling) pages.
    /// `invlpg` also drops all paging-structure-cache entries, so this covers
    /// freed page-table pages as well.
    fn flush_range(&self, start: VirtAddr, nr_pages: u64);
    /// Invalidates every non-global translation (and paging-structure caches).
    fn flush_all(&self);
    /// The ceiling knob; defaults to Linux's 33 pages.
    fn single_page_flush_ceiling(&self) -> u64 {
        TLB_SINGLE_PAGE_FLUSH_CEILING
    }
}

/// What [`MmuGather::finish`] will ask the hardware to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlushPlan {
    /// Nothing became stale.
    None,
    /// `invlpg` each of `nr_pages` pages from `start`.
    Range { start: VirtAddr, nr_pages: u64 },
    /// Full TLB flush.
    All,
}

/// Decides between per-page invalidation and a full flush (Linux
/// `flush_tlb_mm_range`): a range of more than `ceiling` pages is flushed whole.
/// `range` is `(start, nr_pages)`.
pub fn flush_plan(range: Option<(VirtAddr, u64)>, ceiling: u64) -> FlushPlan {
    match range {
        None => FlushPlan::None,
        Some((_, nr_pages)) if nr_pages > ceiling => FlushPlan::All,
        Some((start, nr_pages)) => FlushPlan::Range { start, nr_pages },
    }
}

/// Queued pages after which a gather with a [`BatchFlush`] hook flushes early
/// (Linux `MAX_GATHER_BATCH` pages per batch, then `tlb_flush_mmu`).
pub const GATHER_BATCH: usize = 512;

/// Flushes the TLB and frees what a gather queued so far, leaving it empty and
/// usable (the kernel's `tlb_flush_mmu`); called by the gather itself when
/// [`GATHER_BATCH`] pages are queued, so that tearing down a large mapping
/// needs no memory proportional to its size — it may run when memory is gone.
pub type BatchFlush = fn(&mut MmuGather);

/// A batch of page-table changes waiting for one TLB flush (Linux `struct
/// mmu_gather`). Create with [`MmuGather::new`] (or
/// [`MmuGather::with_batch_flush`]), pass `&mut` to the page-table operations,
/// end with [`MmuGather::finish`].
#[must_use = "an mmu_gather must be finished with a TLB flush (MmuGather::finish)"]
#[derive(Debug)]
pub struct MmuGather {
    /// Linear (48-bit, sign bits stripped) `[start, end)`; empty when `start >= end`.
    start: u64,
    end: u64,
    /// Some page-table page was unlinked (Linux `tlb->freed_tables`).
    freed_tables: bool,
    /// Linear address mapped by the first unlinked table: flushed when nothing
    /// else is, because any `invlpg` empties the paging-structure caches.
    table_va: u64,
    /// Page-table pages, freed after the flush (Linux `tlb_remove_table`).
    tables: PageBatch<0>,
    /// Page-table pages found all zero when unlinked: after the flush they may
    /// go to a [`Quicklist`] instead of the allocator.
    zeroed_tables: PageBatch<2>,
    /// Data pages whose last mapping went away (Linux `tlb_remove_page`).
    pages: PageBatch<2>,
    /// Early flush once [`GATHER_BATCH`] pages are queued (None: unbounded).
    batch_flush: Option<BatchFlush>,
}

impl MmuGather {
    /// An empty gather (Linux `tlb_gather_mmu`).
    #[inline]
    pub fn new() -> MmuGather {
        MmuGather {
            start: u64::MAX,
            end: 0,
            freed_tables: false,
            table_va: 0,
            tables: PageBatch::new(),
            zeroed_tables: PageBatch::new(),
            pages: PageBatch::new(),
            batch_flush: None,
        }
    }

    /// An empty gather that calls `flush` whenever [`GATHER_BATCH`] pages are
    /// queued.
    #[inline]
    pub fn with_batch_flush(flush: BatchFlush) -> MmuGather {
        let mut tlb = MmuGather::new();
        tlb.batch_flush = Some(flush);
        tlb
    }

    /// Moves everything queued so far into a new gather (which the caller
    /// must finish) and leaves `self` empty, keeping its batch hook.
    pub fn take_batch(&mut self) -> MmuGather {
        let mut fresh = MmuGather::new();
        fresh.batch_flush = self.batch_flush;
        let mut batch = core::mem::replace(self, fresh);
        batch.batch_flush = None;
        batch
    }

    #[inline]
    fn check_batch(&mut self) {
        if let Some(flush) = self.batch_flush {
            if self.pages.len() + self.nr_tables() >= GATHER_BATCH {
                flush(self);
            }
        }
    }

    /// Whether nothing has been recorded.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start >= self.end && !self.freed_tables && self.nr_tables() == 0 && self.pages.len() == 0
    }

    /// The range to flush as `(start, nr_pages)`, if any.
    #[inline]
    pub fn range(&self) -> Option<(VirtAddr, u64)> {
        if self.start < self.end {
            Some((VirtAddr::from_linear(self.start), (self.end - self.start) >> PAGE_SHIFT))
        } else if self.freed_tables {
            Some((VirtAddr::from_linear(self.table_va), 1))
        } else {
            None
        }
    }

    /// Whether page-table pages were unlinked (lazy-TLB CPUs must be flushed too).
    pub fn freed_tables(&self) -> bool {
        self.freed_tables
    }

    /// Page-table pages waiting for the flush.
    #[inline]
    pub fn nr_tables(&self) -> usize {
        self.tables.len() + self.zeroed_tables.len()
    }

    /// Data pages waiting for the flush.
    #[inline]
    pub fn nr_pages(&self) -> usize {
        self.pages.len()
    }

    /// Records that translations of `[start, end)` (linear addresses) are stale
    /// (Linux `tlb_flush_pte_range` / `tlb_flush_pmd_range`).
    #[inline]
    pub(crate) fn add_range(&mut self, start: u64, end: u64) {
        self.start = self.start.min(start);
        self.end = self.end.max(end);
    }

    /// Queues an unlinked page-table page that mapped linear address `va`
    /// (Linux `pte_free_tlb` → `tlb_remove_table`). If nothing else needs a
    /// flush, the page of `va` is flushed so the flush is never skipped: any
    /// `invlpg` also empties the paging-structure caches that could still point
    /// at the table. `zeroed`: every entry of the table is zero, so after the
    /// flush it may be kept for reuse ([`finish_into`](Self::finish_into)).
    #[inline]
    pub(crate) fn remove_table(&mut self, table: Pages, va: u64, zeroed: bool) {
        if !self.freed_tables {
            self.table_va = va;
        }
        self.freed_tables = true;
        if zeroed {
            self.zeroed_tables.push(table);
        } else {
            self.tables.push(table);
        }
        self.check_batch();
    }

    /// Queues a data page to free after the flush (Linux `tlb_remove_page`).
    #[inline]
    pub(crate) fn remove_page(&mut self, page: Pages) {
        self.pages.push(page);
        self.check_batch();
    }

    /// What the flush will do with the default or a given ceiling.
    pub fn plan(&self, ceiling: u64) -> FlushPlan {
        flush_plan(self.range(), ceiling)
    }

    /// Flushes, then frees every queued page (Linux `tlb_finish_mmu`). Returns
    /// what was flushed.
    pub fn finish(self, flush: &impl TlbFlush, alloc: &impl PtAlloc) -> FlushPlan {
        self.finish_into(flush, alloc, None)
    }

    /// [`finish`](Self::finish), keeping the zeroed page-table pages in
    /// `quicklist` while it has room (they are flushed by then).
    pub fn finish_into(mut self, flush: &impl TlbFlush, alloc: &impl PtAlloc, quicklist: Option<&Quicklist>) -> FlushPlan {
        if self.is_empty() {
            // Most faults change nothing that needs a flush: nothing to do.
            return FlushPlan::None;
        }
        let plan = self.plan(flush.single_page_flush_ceiling());
        match plan {
            FlushPlan::None => {}
            FlushPlan::Range { start, nr_pages } => flush.flush_range(start, nr_pages),
            FlushPlan::All => flush.flush_all(),
        }
        self.pages.free(alloc);
        if let Some(q) = quicklist {
            while let Some(t) = self.zeroed_tables.pop() {
                if let Err(t) = q.push(t) {
                    self.tables.push(t);
                    break;
                }
            }
        }
        self.zeroed_tables.free(alloc);
        self.tables.free(alloc);
        self.start = u64::MAX;
        self.end = 0;
        self.freed_tables = false;
        plan
    }
}

/// Pages of one kind waiting for the flush: the first `N` in the gather
/// itself (Linux keeps a local batch, `tlb->local`, for the same reason), the
/// rest in a vector, so that the common `MADV_DONTNEED` of a page or unlink
/// of a slot's tables allocates nothing. `N` stays small: every fault builds
/// a gather, and a large one costs more to build than it saves.
#[derive(Debug)]
struct PageBatch<const N: usize> {
    local: [Option<Pages>; N],
    nr_local: usize,
    more: Vec<Pages>,
}

impl<const N: usize> Default for PageBatch<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PageBatch<N> {
    #[inline]
    const fn new() -> Self {
        PageBatch { local: [const { None }; N], nr_local: 0, more: Vec::new() }
    }

    #[inline]
    fn len(&self) -> usize {
        self.nr_local + self.more.len()
    }

    #[inline]
    fn push(&mut self, page: Pages) {
        if self.nr_local < N {
            self.local[self.nr_local] = Some(page);
            self.nr_local += 1;
        } else {
            self.more.push(page);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<Pages> {
        if let Some(p) = self.more.pop() {
            return Some(p);
        }
        self.nr_local = self.nr_local.checked_sub(1)?;
        self.local[self.nr_local].take()
    }

    /// Frees everything, leaving the batch empty (the vector keeps its buffer).
    fn free(&mut self, alloc: &impl PtAlloc) {
        for p in self.local[..self.nr_local].iter_mut().filter_map(Option::take) {
            alloc.free_pages(p);
        }
        self.nr_local = 0;
        // In bulk: an unmapped range's pages are mostly contiguous runs, which
        // enter the buddy merged (`page_alloc_bulk`).
        alloc.free_pages_bulk(&mut self.more);
    }
}

impl Default for MmuGather {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MmuGather {
    fn drop(&mut self) {
        #[cfg(test)]
        if std::thread::panicking() {
            // Let the queued `Pages` leak quietly while a test is failing.
            core::mem::forget(core::mem::take(&mut self.tables));
            core::mem::forget(core::mem::take(&mut self.zeroed_tables));
            core::mem::forget(core::mem::take(&mut self.pages));
            return;
        }
        #[cfg(debug_assertions)]
        if !self.is_empty() {
            panic!("MmuGather dropped with pending work: call finish()");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;

    fn va(x: u64) -> VirtAddr {
        VirtAddr::try_new(x).unwrap()
    }

    #[test]
    fn threshold_picks_invlpg_or_full_flush() {
        assert_eq!(flush_plan(None, 33), FlushPlan::None);
        let r = |n: u64| Some((va(0x1000), n));
        assert_eq!(flush_plan(r(1), 33), FlushPlan::Range { start: va(0x1000), nr_pages: 1 });
        assert!(matches!(flush_plan(r(33), 33), FlushPlan::Range { .. }));
        assert_eq!(flush_plan(r(34), 33), FlushPlan::All);
        assert_eq!(flush_plan(r(512), 33), FlushPlan::All);
        assert_eq!(flush_plan(r(2), 1), FlushPlan::All);
    }

    #[test]
    fn range_merges_and_kernel_addresses_round_trip() {
        let mut g = MmuGather::new();
        assert!(g.is_empty());
        g.add_range(0x5000, 0x6000);
        g.add_range(0x2000, 0x3000);
        assert_eq!(g.range(), Some((va(0x2000), 4)));
        assert_eq!(g.plan(33), FlushPlan::Range { start: va(0x2000), nr_pages: 4 });
        let k = va(0xffff_8000_0000_0000).linear();
        g.add_range(k, k + PAGE_SIZE);
        assert_eq!(g.range().unwrap().0, va(0x2000));
        // Finish with nothing to free.
        struct Nop;
        impl TlbFlush for Nop {
            fn flush_range(&self, _: VirtAddr, _: u64) {}
            fn flush_all(&self) {}
        }
        struct NoAlloc;
        impl PtAlloc for NoAlloc {
            fn alloc_pages(&self, _: crate::gfp::Gfp, _: usize) -> Result<Pages, crate::page_alloc::AllocError> {
                Err(crate::page_alloc::AllocError::NoMemory)
            }
            fn free_pages(&self, p: Pages) {
                p.leak();
            }
            fn page(&self, _: crate::addr::Pfn) -> Option<&crate::page::PageMeta> {
                None
            }
        }
        assert_eq!(g.finish(&Nop, &NoAlloc), FlushPlan::All);
    }
}
