//! Per-CPU page lists: the order-0..=3 fast path.
//!
//! Linux counterpart: `struct per_cpu_pages` and `rmqueue_pcplist`,
//! `free_unref_page`, `rmqueue_bulk`, `free_pcppages_bulk`, `drain_pages` in
//! `mm/page_alloc.c`. One list per (order, pcp migrate type), singly linked through
//! `PageMeta::lru_next`. Lists are refilled `batch` pages at a time from the buddy
//! and trimmed by `batch` pages when they exceed `high`. The fast path touches only
//! this CPU's slot (flag/lock, list head, counters) and the page's metadata.
//!
//! # Protection (the pcp invariant)
//!
//! Each CPU's lists sit in a [`PcpSlot`] behind a [`LocalLock`], chosen at compile
//! time by [`Platform::CPU_LOCAL`]:
//!
//! * `CPU_LOCAL = false` (host threads; default): an atomic spin lock per CPU, as
//!   Linux >= 6.0's `pcp->lock`. Any thread may lock any CPU's lists (remote drain,
//!   `hold_locks(cpu)`, `check_consistency`); the NMI-safe paths use `try_lock`.
//! * `CPU_LOCAL = true` (Linux `local_lock_irqsave`): a plain busy flag (Relaxed
//!   load + Relaxed store, no `lock` prefix), set with interrupts disabled.
//!   **Invariant: a CPU's lists are only ever touched by that CPU** — with interrupts
//!   disabled, or from an NMI on it, which runs to completion. The cpu id is read
//!   after `irq_save`, so it cannot change under us. An NMI's `try_` path that finds
//!   the flag set fails (`try_alloc_pages` → `None`, `free_pages_nolock` → buddy or
//!   deferred list). Remote operations never touch another CPU's lists:
//!   `drain_pages(other)` only sets that CPU's `drain_req`, which the owner honours
//!   at its next refill/trim (Linux sends the drain to the owner as work instead);
//!   `hold_locks(cpu)` must name the current CPU; `check_consistency` walks only
//!   the current CPU's lists (others are trusted by their counters). A CPU id
//!   `>= nr_cpus` gets no lists at all (its requests go to the buddy), so two CPUs
//!   never share one slot's flag.
//!
//! Counters that others read (`count`, `pgalloc`, `pgfree`) are atomics in the
//! slot, written only by the holder with a Relaxed load + store (plain `mov`s).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::page::{Kind, NONE};
use crate::page_alloc::{ALLOC_TRYLOCK, Busy, FreeArea, PCP_MAX_ORDER, PageAlloc, Zone};
use crate::pageblock::{MIGRATE_PCPTYPES, MigrateType};
use crate::sync::{LocalGuard, LocalLock, Platform};

/// Blocks taken off the lists, prefetched, then merged together by `free_pcppages_bulk`.
const PIPE_CHUNK: usize = 32;

/// Number of per-CPU lists (Linux `NR_PCP_LISTS`).
pub const NR_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PCP_MAX_ORDER + 1);
const _: () = assert!(NR_PCP_LISTS <= 32, "free_pcppages_bulk keeps a u32 mask of the lists");

#[inline(always)]
fn order_to_pindex(mt: MigrateType, order: usize) -> usize {
    order * MIGRATE_PCPTYPES + mt.index()
}

/// The per-CPU lists of one zone on one CPU (Linux `struct per_cpu_pages`).
/// Protected by the slot's [`LocalLock`].
pub(crate) struct PerCpuPages {
    pub(crate) high: u32,
    pub(crate) batch: u32,
    pub(crate) lists: [u32; NR_PCP_LISTS],
}

/// One CPU's per-CPU lists of one zone, with the counters others may read.
#[repr(align(64))]
pub(crate) struct PcpSlot<P: Platform> {
    pub(crate) lock: LocalLock<PerCpuPages, P>,
    /// Pages on all lists. Written by the lock holder only.
    pub(crate) count: AtomicU32,
    /// Allocations / frees served here (summed into vmstat `pgalloc` / `pgfree`).
    pub(crate) pgalloc: AtomicU64,
    pub(crate) pgfree: AtomicU64,
    /// A remote `drain_pages` asked the owner to drain (CPU-local platforms).
    pub(crate) drain_req: AtomicBool,
}

impl<P: Platform> PcpSlot<P> {
    pub(crate) const fn new() -> Self {
        PcpSlot {
            lock: LocalLock::new(PerCpuPages::new()),
            count: AtomicU32::new(0),
            pgalloc: AtomicU64::new(0),
            pgfree: AtomicU64::new(0),
            drain_req: AtomicBool::new(false),
        }
    }
    /// Holder-only update of `count` (single writer: no atomic RMW needed).
    #[inline(always)]
    pub(crate) fn add_count(&self, delta: u32) {
        self.count.store(self.count.load(Relaxed).wrapping_add(delta), Relaxed);
    }
    #[inline(always)]
    fn inc(c: &AtomicU64) {
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
}

/// A locked slot: the slot (for its counters) and the guard over its lists.
pub(crate) type PcpGuard<'s, P> = (&'s PcpSlot<P>, LocalGuard<'s, PerCpuPages, P>);

impl PerCpuPages {
    pub(crate) const fn new() -> PerCpuPages {
        PerCpuPages { high: 0, batch: 1, lists: [NONE; NR_PCP_LISTS] }
    }

    pub(crate) fn set_batch_high(&mut self, batch: u32, high: u32) {
        self.batch = batch;
        self.high = high.max(batch);
    }
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    /// This CPU's slot index, or `None` if it has no lists (`cpu_id() >= nr_cpus`).
    /// Call with interrupts disabled on CPU-local platforms.
    #[inline(always)]
    fn this_cpu_slot(&self) -> Option<usize> {
        let cpu = P::cpu_id();
        if cpu < self.nr_cpus {
            Some(cpu)
        } else if P::CPU_LOCAL {
            None // never share another CPU's flag
        } else {
            Some(0) // an atomic lock: sharing costs only contention
        }
    }

    /// Locks the lists of `cpu` if this context may touch them: always on
    /// non-CPU-local platforms, otherwise only when `cpu` is the current CPU.
    pub(crate) fn pcp_lock_cpu<'s>(&self, z: &'s Zone<P>, cpu: usize) -> Option<PcpGuard<'s, P>> {
        if cpu >= self.nr_cpus {
            return None;
        }
        let irq = P::irq_save();
        if P::CPU_LOCAL && P::cpu_id() != cpu {
            P::irq_restore(irq);
            return None;
        }
        let slot = &z.pcp[cpu];
        // SAFETY: CPU-local: interrupts off and `cpu` is the current CPU.
        Some((slot, unsafe { slot.lock.lock_saved(irq) }))
    }

    /// Allocates from this CPU's list, refilling it from the buddy when empty
    /// (Linux `rmqueue_pcplist`). `Err(Busy)` in try-lock mode when the lists are
    /// taken, or when this CPU has no lists.
    #[inline]
    pub(crate) fn rmqueue_pcplist(&self, z: &Zone<P>, order: usize, mt: MigrateType, flags: u32) -> Result<Option<u64>, Busy> {
        let (slot, mut pcp) = self.pcp_lock_zone(z, flags & ALLOC_TRYLOCK != 0).ok_or(Busy)?;
        let pi = order_to_pindex(mt, order);
        if pcp.lists[pi] == NONE || slot.drain_req.load(Relaxed) {
            if slot.drain_req.load(Relaxed) {
                let n = slot.count.load(Relaxed);
                self.free_pcppages_bulk(z, slot, &mut pcp, n, flags & ALLOC_TRYLOCK != 0);
            }
            if pcp.lists[pi] == NONE {
                let batch = (pcp.batch >> order).max(1);
                if self.rmqueue_bulk(z, order, batch, mt, flags, slot, &mut pcp, pi) == 0 {
                    return Ok(None);
                }
            }
        }
        let idx = pcp.lists[pi];
        pcp.lists[pi] = self.meta[idx as usize].next();
        slot.add_count((1u32 << order).wrapping_neg());
        PcpSlot::<P>::inc(&slot.pgalloc);
        Ok(Some(self.pfn_of(idx)))
    }

    /// Locks this CPU's lists of `z` (`try_`: one attempt, for the NMI-safe paths).
    /// `None`: taken (try mode), or this CPU has no lists. The cpu id is read with
    /// interrupts already off, so on CPU-local platforms it is the CPU we stay on.
    #[inline(always)]
    fn pcp_lock_zone<'s>(&self, z: &'s Zone<P>, try_: bool) -> Option<PcpGuard<'s, P>> {
        let irq = P::irq_save();
        let Some(cpu) = self.this_cpu_slot() else {
            P::irq_restore(irq);
            return None;
        };
        let slot = &z.pcp[cpu];
        // SAFETY: interrupts are off since we read the cpu id, and `slot` is that CPU's.
        let g = unsafe { if try_ { slot.lock.try_lock_saved(irq)? } else { slot.lock.lock_saved(irq) } };
        Some((slot, g))
    }

    /// Pages this CPU's lists of zone `z` take before they reach `high` and are
    /// trimmed (0 if this CPU has none). A snapshot: the caller only uses it to
    /// choose a path.
    pub(crate) fn pcp_room(&self, z: &Zone<P>) -> u32 {
        let Some((slot, pcp)) = self.pcp_lock_zone(z, false) else { return 0 };
        pcp.high.saturating_sub(slot.count.load(Relaxed) + 1)
    }

    /// Pops a block off this CPU's list `(order, mt)` without refilling: the
    /// allocation fast path. `None` if the list is empty (or a drain is pending).
    #[inline(always)]
    pub(crate) fn pcp_pop(&self, z: &Zone<P>, order: usize, mt: MigrateType) -> Option<u64> {
        let (slot, mut pcp) = self.pcp_lock_zone(z, false)?;
        let pi = order_to_pindex(mt, order);
        let idx = pcp.lists[pi];
        if idx == NONE || (P::CPU_LOCAL && slot.drain_req.load(Relaxed)) {
            return None;
        }
        pcp.lists[pi] = self.meta_idx(idx).next();
        slot.add_count((1u32 << order).wrapping_neg());
        PcpSlot::<P>::inc(&slot.pgalloc);
        Some(self.pfn_of(idx))
    }

    /// Moves up to `count` blocks of `order` from the buddy to list `pi`
    /// (Linux `rmqueue_bulk`). Returns how many were moved.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn rmqueue_bulk(&self, z: &Zone<P>, order: usize, count: u32, mt: MigrateType, flags: u32, slot: &PcpSlot<P>, pcp: &mut PerCpuPages, pi: usize) -> u32 {
        let Some(mut a) = self.lock_zone_maybe(z, flags & ALLOC_TRYLOCK != 0) else { return 0 };
        let mut moved = 0;
        while moved < count {
            if order == 0
                && let Some((pfn, nr_pages)) = self.rmqueue_carve(z, &mut a, mt, count - moved)
            {
                for p in pfn..pfn + nr_pages as u64 {
                    let m = self.meta(p);
                    m.set_kind(Kind::Pcp, 0);
                    m.set_next(pcp.lists[pi]);
                    pcp.lists[pi] = self.idx(p);
                }
                slot.add_count(nr_pages);
                moved += nr_pages;
                continue;
            }
            let Some(pfn) = self.__rmqueue(z, &mut a, order, mt, flags) else { break };
            let m = self.meta(pfn);
            m.set_kind(Kind::Pcp, order);
            m.set_next(pcp.lists[pi]);
            pcp.lists[pi] = self.idx(pfn);
            slot.add_count(1 << order);
            moved += 1;
        }
        moved
    }

    /// For an order-0 refill: the smallest free block of type `mt`, or of it the
    /// largest power-of-two part that is at most `max` pages (the rest goes back
    /// to the free lists as `expand` does), as `(first pfn, pages)`. The caller
    /// puts every page of it on the list at once; Linux's `rmqueue_bulk` takes
    /// one page per `__rmqueue`, splitting the block a level at a time through
    /// the free lists. `None` when no block of `mt` is free (the caller falls
    /// back to `__rmqueue`, which may claim or steal).
    fn rmqueue_carve(&self, z: &Zone<P>, a: &mut FreeArea, mt: MigrateType, max: u32) -> Option<(u64, u32)> {
        debug_assert!(max > 0);
        let (pfn, cur) = self.take_smallest(z, a, 0, mt)?;
        let take = cur.min(max.ilog2() as usize);
        self.expand(z, a, pfn, take, cur, mt);
        Some((pfn, 1 << take))
    }

    /// Puts a freed block on this CPU's list, trimming it above `high` (Linux
    /// `free_unref_page`). Returns `false` when the caller must free to the buddy
    /// itself (block type without per-CPU lists, `nolock` and the lists are taken,
    /// or this CPU has no lists).
    #[inline(always)]
    pub(crate) fn free_unref_page(&self, z: &Zone<P>, pfn: u64, order: usize, nolock: bool) -> bool {
        // `pfn` was validated by `free_pages_prepare`, and its page block's first frame
        // is described too (`base_pfn` is 2^MAX_ORDER-aligned).
        let idx = self.idx(pfn);
        let block = idx & !(crate::pageblock::PAGEBLOCK_NR_PAGES as u32 - 1);
        let mt = self.meta_idx(block).block_migratetype_raw() as usize;
        if mt >= MIGRATE_PCPTYPES {
            return false; // HighAtomic / Isolate blocks go straight to the buddy.
        }
        let Some((slot, mut pcp)) = self.pcp_lock_zone(z, nolock) else { return false };
        let pi = order * MIGRATE_PCPTYPES + mt;
        let m = self.meta_idx(idx);
        m.set_kind(Kind::Pcp, order);
        m.set_next(pcp.lists[pi]);
        pcp.lists[pi] = idx;
        let count = slot.count.load(Relaxed) + (1 << order);
        slot.count.store(count, Relaxed);
        PcpSlot::<P>::inc(&slot.pgfree);
        if count >= pcp.high || (P::CPU_LOCAL && slot.drain_req.load(Relaxed)) {
            let batch = pcp.batch;
            self.free_pcppages_bulk(z, slot, &mut pcp, batch, nolock);
        }
        true
    }

    /// Returns at least `nr_pages` pages from the lists to the buddy, round-robin
    /// over the lists (Linux `free_pcppages_bulk`); everything if a drain was
    /// requested. In `nolock` mode gives up if the zone lock is taken (the list
    /// simply stays above `high` for a while).
    #[inline(never)]
    pub(crate) fn free_pcppages_bulk(&self, z: &Zone<P>, slot: &PcpSlot<P>, pcp: &mut PerCpuPages, mut nr_pages: u32, nolock: bool) {
        let Some(mut a) = self.lock_zone_maybe(z, nolock) else { return };
        if slot.drain_req.load(Relaxed) && slot.drain_req.swap(false, Relaxed) {
            nr_pages = slot.count.load(Relaxed);
        }
        // In chunks: take blocks off the lists (their metadata is cache-hot) and
        // prefetch the metadata merging will read (the buddies up to three orders up);
        // then prefetch the free-list neighbours of each first buddy (unlinking
        // writes them); then merge. Random frees touch scattered metadata; this lets
        // those cache misses overlap. Blocks waiting in a chunk are off every list
        // (kind `Tail`), so they merge only on their own turn; both locks are held.
        let mut buf = [(0u64, 0usize); PIPE_CHUNK];
        let mut pi = 0;
        let mut freed = 0;
        // Bit `i` set: list `i` is not empty (kept up to date by `pcp_pop_chunk`, the
        // only one changing the lists while we hold them), so the round robin jumps
        // straight to the next non-empty list instead of stepping over empty ones.
        let mut nonempty = pcp.lists.iter().enumerate().fold(0u32, |m, (i, &h)| m | ((h != NONE) as u32) << i);
        loop {
            let n = self.pcp_pop_chunk(slot, pcp, &mut pi, &mut nonempty, &mut freed, nr_pages, &mut buf);
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
    /// off the lists round-robin (the next non-empty list at or after `pi`, found in
    /// the `nonempty` mask), prefetching their buddies' metadata.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn pcp_pop_chunk(&self, slot: &PcpSlot<P>, pcp: &mut PerCpuPages, pi: &mut usize, nonempty: &mut u32, freed: &mut u32, nr_pages: u32, buf: &mut [(u64, usize); PIPE_CHUNK]) -> usize {
        let mut n = 0;
        while n < PIPE_CHUNK && *freed < nr_pages && slot.count.load(Relaxed) > 0 {
            if *nonempty == 0 {
                break; // `count` disagrees with the lists; `check_consistency` reports it
            }
            let at_or_after = *nonempty & (u32::MAX << *pi);
            *pi = if at_or_after != 0 { at_or_after } else { *nonempty }.trailing_zeros() as usize;
            let idx = pcp.lists[*pi];
            let m = &self.meta[idx as usize];
            let next = m.next();
            pcp.lists[*pi] = next;
            if next == NONE {
                *nonempty &= !(1 << *pi);
            }
            let order = *pi / MIGRATE_PCPTYPES;
            slot.add_count((1u32 << order).wrapping_neg());
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
    /// (Prefetching the neighbours of the next merge levels too measured slower.)
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

    /// Empties the lists of `cpu` in every zone (Linux `drain_pages`). On a
    /// CPU-local platform another CPU's lists are not touched: the drain is
    /// requested and done by that CPU at its next refill or trim (or its next
    /// allocation that misses the fast path).
    pub fn drain_pages(&self, cpu: usize) {
        for z in &self.zones {
            if cpu >= self.nr_cpus {
                continue;
            }
            match self.pcp_lock_cpu(z, cpu) {
                Some((slot, mut pcp)) => {
                    let n = slot.count.load(Relaxed);
                    self.free_pcppages_bulk(z, slot, &mut pcp, n, false);
                }
                None => {
                    z.pcp[cpu].drain_req.store(true, Relaxed);
                }
            }
        }
    }

    /// Empties every CPU's lists (Linux `drain_all_pages`); see [`PageAlloc::drain_pages`]
    /// for other CPUs on CPU-local platforms.
    pub fn drain_all_pages(&self) {
        for cpu in 0..self.nr_cpus {
            self.drain_pages(cpu);
        }
    }

    /// Pages on per-CPU lists of all CPUs of zone `z`, and the pcp alloc/free counts
    /// (a racy snapshot, as Linux's per-CPU counter sums).
    pub(crate) fn pcp_totals(&self, z: &Zone<P>) -> (u64, u64, u64) {
        let (mut pages, mut alloc, mut free) = (0, 0, 0);
        for slot in &z.pcp[..self.nr_cpus] {
            pages += slot.count.load(Relaxed) as u64;
            alloc += slot.pgalloc.load(Relaxed);
            free += slot.pgfree.load(Relaxed);
        }
        (pages, alloc, free)
    }
}
