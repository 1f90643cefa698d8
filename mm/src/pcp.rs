//! Per-CPU page lists: the order-0..=3 fast path.
//!
//! Linux counterpart: `struct per_cpu_pages` and `rmqueue_pcplist`,
//! `free_unref_page`, `rmqueue_bulk`, `free_pcppages_bulk`, `drain_pages` in
//! `mm/page_alloc.c`. One list per (order, pcp migrate type), singly linked through
//! `PageMeta::lru_next`. Lists are refilled `batch` pages at a time from the buddy
//! and trimmed by `batch` pages when they exceed `high`. As in Linux >= 6.0 each
//! list set has its own spin lock, taken with `try_lock` by the NMI-safe paths; the
//! fast path touches only this lock, the list and the page's metadata.

use core::sync::atomic::Ordering::Relaxed;

use crate::page::{Kind, NONE};
use crate::page_alloc::{ALLOC_TRYLOCK, Busy, PCP_MAX_ORDER, PageAlloc, Zone};
use crate::pageblock::{MIGRATE_PCPTYPES, MigrateType};
use crate::sync::Platform;

/// Blocks taken off the lists, prefetched, then merged together by `free_pcppages_bulk`.
const PIPE_CHUNK: usize = 32;

/// Number of per-CPU lists (Linux `NR_PCP_LISTS`).
pub const NR_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PCP_MAX_ORDER + 1);

#[inline(always)]
fn order_to_pindex(mt: MigrateType, order: usize) -> usize {
    order * MIGRATE_PCPTYPES + mt.index()
}

/// The per-CPU lists of one zone on one CPU (Linux `struct per_cpu_pages`).
#[repr(align(64))]
pub(crate) struct PerCpuPages {
    /// Pages on all lists.
    pub(crate) count: u32,
    pub(crate) high: u32,
    pub(crate) batch: u32,
    pub(crate) lists: [u32; NR_PCP_LISTS],
    pub(crate) list_len: [u32; NR_PCP_LISTS],
    /// Allocations / frees served here (summed into vmstat `pgalloc` / `pgfree`).
    pub(crate) pgalloc: u64,
    pub(crate) pgfree: u64,
}

impl PerCpuPages {
    pub(crate) const fn new() -> PerCpuPages {
        PerCpuPages {
            count: 0,
            high: 0,
            batch: 1,
            lists: [NONE; NR_PCP_LISTS],
            list_len: [0; NR_PCP_LISTS],
            pgalloc: 0,
            pgfree: 0,
        }
    }

    pub(crate) fn set_batch_high(&mut self, batch: u32, high: u32) {
        self.batch = batch;
        self.high = high.max(batch);
    }
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    #[inline(always)]
    fn this_cpu(&self) -> usize {
        let cpu = P::cpu_id();
        if cpu < self.nr_cpus { cpu } else { 0 } // no division on the fast path
    }

    /// Allocates from this CPU's list, refilling it from the buddy when empty
    /// (Linux `rmqueue_pcplist`). `Err(Busy)` only in try-lock mode.
    #[inline]
    pub(crate) fn rmqueue_pcplist(&self, z: &Zone<P>, order: usize, mt: MigrateType, flags: u32) -> Result<Option<u64>, Busy> {
        let lock = &z.pcp[self.this_cpu()];
        let mut pcp = if flags & ALLOC_TRYLOCK != 0 { lock.try_lock().ok_or(Busy)? } else { lock.lock() };
        let pi = order_to_pindex(mt, order);
        if pcp.lists[pi] == NONE {
            let batch = (pcp.batch >> order).max(1);
            if self.rmqueue_bulk(z, order, batch, mt, flags, &mut pcp, pi) == 0 {
                return Ok(None);
            }
        }
        let idx = pcp.lists[pi];
        pcp.lists[pi] = self.meta[idx as usize].next();
        pcp.list_len[pi] -= 1;
        pcp.count -= 1 << order;
        pcp.pgalloc += 1;
        Ok(Some(self.pfn_of(idx)))
    }

    /// Pops a block off this CPU's list `(order, mt)` without refilling: the
    /// allocation fast path. `None` if the list is empty.
    #[inline(always)]
    pub(crate) fn pcp_pop(&self, z: &Zone<P>, order: usize, mt: MigrateType) -> Option<u64> {
        let mut pcp = z.pcp[self.this_cpu()].lock();
        let pi = order_to_pindex(mt, order);
        let idx = pcp.lists[pi];
        if idx == NONE {
            return None;
        }
        pcp.lists[pi] = self.meta[idx as usize].next();
        pcp.list_len[pi] -= 1;
        pcp.count -= 1 << order;
        pcp.pgalloc += 1;
        Some(self.pfn_of(idx))
    }

    /// Moves up to `count` blocks of `order` from the buddy to list `pi`
    /// (Linux `rmqueue_bulk`). Returns how many were moved.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn rmqueue_bulk(&self, z: &Zone<P>, order: usize, count: u32, mt: MigrateType, flags: u32, pcp: &mut PerCpuPages, pi: usize) -> u32 {
        let Some(mut a) = self.lock_zone_maybe(z, flags & ALLOC_TRYLOCK != 0) else { return 0 };
        let mut moved = 0;
        while moved < count {
            let Some(pfn) = self.__rmqueue(z, &mut a, order, mt, flags) else { break };
            let m = self.meta(pfn);
            m.set_kind(Kind::Pcp, order);
            m.set_next(pcp.lists[pi]);
            pcp.lists[pi] = self.idx(pfn);
            pcp.list_len[pi] += 1;
            pcp.count += 1 << order;
            moved += 1;
        }
        moved
    }

    /// Puts a freed block on this CPU's list, trimming it above `high` (Linux
    /// `free_unref_page`). Returns `false` when the caller must free to the buddy
    /// itself (block type without per-CPU lists, or `nolock` and the lock is taken).
    #[inline(always)]
    pub(crate) fn free_unref_page(&self, z: &Zone<P>, pfn: u64, order: usize, nolock: bool) -> bool {
        let mt = self.block_mt(pfn);
        if mt.index() >= MIGRATE_PCPTYPES {
            return false; // HighAtomic / Isolate blocks go straight to the buddy.
        }
        let lock = &z.pcp[self.this_cpu()];
        let mut pcp = if nolock {
            match lock.try_lock() {
                Some(p) => p,
                None => return false,
            }
        } else {
            lock.lock()
        };
        let pi = order_to_pindex(mt, order);
        let m = self.meta(pfn);
        m.set_kind(Kind::Pcp, order);
        m.set_next(pcp.lists[pi]);
        pcp.lists[pi] = self.idx(pfn);
        pcp.list_len[pi] += 1;
        pcp.count += 1 << order;
        pcp.pgfree += 1;
        if pcp.count >= pcp.high {
            let batch = pcp.batch;
            self.free_pcppages_bulk(z, &mut pcp, batch, nolock);
        }
        true
    }

    /// Returns at least `nr_pages` pages from the lists to the buddy, round-robin
    /// over the lists (Linux `free_pcppages_bulk`). In `nolock` mode gives up if the
    /// zone lock is taken (the list simply stays above `high` for a while).
    #[inline(never)]
    pub(crate) fn free_pcppages_bulk(&self, z: &Zone<P>, pcp: &mut PerCpuPages, nr_pages: u32, nolock: bool) {
        let Some(mut a) = self.lock_zone_maybe(z, nolock) else { return };
        // In chunks: take blocks off the lists (their metadata is cache-hot) and
        // prefetch the metadata merging will read (the buddies up to three orders up);
        // then prefetch the free-list neighbours of each first buddy (unlinking
        // writes them); then merge. Random frees touch scattered metadata; this lets
        // those cache misses overlap. Blocks waiting in a chunk are off every list
        // (kind `Tail`), so they merge only on their own turn; both locks are held.
        let mut buf = [(0u64, 0usize); PIPE_CHUNK];
        let mut pi = 0;
        let mut freed = 0;
        loop {
            let n = self.pcp_pop_chunk(pcp, &mut pi, &mut freed, nr_pages, &mut buf);
            if n == 0 {
                break;
            }
            self.prefetch_neighbours(&buf[..n]);
            for &(pfn, order) in &buf[..n] {
                self.__free_one_page(z, &mut a, pfn, order, self.block_mt(pfn));
            }
        }
    }

    /// Takes up to `PIPE_CHUNK` blocks (at most `nr_pages - freed` pages' worth)
    /// off the lists round-robin, prefetching their buddies' metadata.
    #[inline(always)]
    fn pcp_pop_chunk(&self, pcp: &mut PerCpuPages, pi: &mut usize, freed: &mut u32, nr_pages: u32, buf: &mut [(u64, usize); PIPE_CHUNK]) -> usize {
        let mut n = 0;
        while n < PIPE_CHUNK && *freed < nr_pages && pcp.count > 0 {
            while pcp.lists[*pi] == NONE {
                *pi = (*pi + 1) % NR_PCP_LISTS;
            }
            let idx = pcp.lists[*pi];
            let m = &self.meta[idx as usize];
            pcp.lists[*pi] = m.next();
            pcp.list_len[*pi] -= 1;
            let order = *pi / MIGRATE_PCPTYPES;
            pcp.count -= 1 << order;
            *freed += 1 << order;
            let pfn = self.pfn_of(idx);
            m.set_kind(Kind::Tail, 0);
            self.prefetch_meta(pfn ^ (1 << order));
            self.prefetch_meta(pfn ^ (2 << order));
            self.prefetch_meta(pfn ^ (4 << order));
            buf[n] = (pfn, order);
            n += 1;
            *pi = (*pi + 1) % NR_PCP_LISTS;
        }
        n
    }

    /// Prefetches the free-list neighbours of each block's buddy, if it is free.
    #[inline(always)]
    fn prefetch_neighbours(&self, blocks: &[(u64, usize)]) {
        for &(pfn, order) in blocks {
            let buddy = pfn ^ (1 << order);
            if !self.in_span(buddy) {
                continue;
            }
            let bm = self.meta(buddy);
            if bm.kind() == Kind::Buddy {
                let (next, prev) = (bm.next(), bm.prev());
                if next != NONE {
                    self.prefetch_meta(self.pfn_of(next));
                }
                if prev != NONE {
                    self.prefetch_meta(self.pfn_of(prev));
                }
            }
        }
    }

    /// Empties the lists of `cpu` in every zone (Linux `drain_pages`).
    pub fn drain_pages(&self, cpu: usize) {
        for z in &self.zones {
            if let Some(lock) = z.pcp.get(cpu) {
                let mut pcp = lock.lock();
                let n = pcp.count;
                self.free_pcppages_bulk(z, &mut pcp, n, false);
            }
        }
    }

    /// Empties every CPU's lists (Linux `drain_all_pages`).
    pub fn drain_all_pages(&self) {
        for cpu in 0..self.nr_cpus {
            self.drain_pages(cpu);
        }
    }

    /// Pages on per-CPU lists of all CPUs of zone `z`, and the pcp alloc/free counts.
    pub(crate) fn pcp_totals(&self, z: &Zone<P>) -> (u64, u64, u64) {
        let (mut pages, mut alloc, mut free) = (0, 0, 0);
        for lock in &z.pcp[..self.nr_cpus] {
            let pcp = lock.lock();
            pages += pcp.count as u64;
            alloc += pcp.pgalloc;
            free += pcp.pgfree;
        }
        let _ = Relaxed;
        (pages, alloc, free)
    }
}
