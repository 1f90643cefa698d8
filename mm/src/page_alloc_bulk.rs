//! Freeing many blocks at once (Linux `free_unref_folios` / `release_pages`),
//! with the contiguous runs of the batch merged before they reach a free list.
//!
//! * **Per-CPU lists**: as long as this CPU's lists stay below their `high` mark,
//!   blocks go onto them through `free_pages`. Memory freed and soon allocated
//!   again (an `munmap`, then page faults) stays on the fast path, cache-hot, as
//!   in Linux. A batch that fits is freed this way and nothing else happens.
//! * **Merged into the buddy**: a larger batch is sorted by max-order block
//!   (`pfn >> MAX_ORDER`: 4 MiB of memory, 32 KiB of `PageMeta`), and each block's
//!   share is freed together. The share first fills the lists up to just below
//!   `high`; the rest, if it has at least [`BULK_MERGE_MIN`] handles, goes to the
//!   buddy as a list above `high` would hand it anyway:
//!   1. each handle is checked exactly as [`PageAlloc::free_pages`] checks it and
//!      recorded in a 1024-bit map of the block;
//!   2. under one zone lock, the map is cut into the largest aligned runs of freed
//!      frames (at most a page block, `2^PAGEBLOCK_ORDER`), and each run enters the
//!      buddy as *one* block through `__free_one_page`, which merges it with its
//!      free buddies by the usual rules (migrate types, isolated blocks).
//!
//!   Freeing `n` contiguous pages one by one costs `n - 1` free-list unlinks and
//!   links on scattered metadata to build the block that the map finds with a few
//!   word compares; a page with no neighbour in the batch is merged while its
//!   block's metadata is in the cache.
//!
//! The result (which frames are free, counters) equals freeing the batch with
//! `free_pages` in any order, up to where the free pages sit (buddy or per-CPU
//! list); after a drain the free lists are the same.

use core::sync::atomic::Ordering::Relaxed;

use crate::page::Kind;
use crate::page_alloc::{MAX_ORDER, PageAlloc, Pages};
use crate::pageblock::PAGEBLOCK_ORDER;
use crate::sync::Platform;
use alloc::vec::Vec;

/// `free_pages_bulk` sorts batches larger than this by max-order block; smaller
/// ones touch few enough metadata lines that grouping would not pay.
pub const BULK_SORT_MIN: usize = 64;

/// A max-order block's share of a batch may go through the run map to the buddy
/// from this many handles on; fewer are freed one by one (per-CPU lists).
pub const BULK_MERGE_MIN: usize = 8;

/// A `Vec` lent to [`PageAlloc::free_pages_bulk`]: the handles are freed and the
/// vector is left empty with its buffer, so a caller that must not allocate
/// (`MmuGather` on the way out of memory) can refill it.
pub struct DrainVec<'v>(pub &'v mut Vec<Pages>);

impl core::borrow::Borrow<[Pages]> for DrainVec<'_> {
    fn borrow(&self) -> &[Pages] {
        self.0
    }
}

impl core::borrow::BorrowMut<[Pages]> for DrainVec<'_> {
    fn borrow_mut(&mut self) -> &mut [Pages] {
        self.0
    }
}

impl<'v> IntoIterator for DrainVec<'v> {
    type Item = Pages;
    type IntoIter = alloc::vec::Drain<'v, Pages>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.drain(..)
    }
}

/// Frames per max-order block, and the words of the run map covering them.
const BLOCK_PAGES: usize = 1 << MAX_ORDER;
const MAP_WORDS: usize = BLOCK_PAGES / 64;

/// Metadata prefetch distance (handles) while checking a group.
const PREFETCH_AHEAD: usize = 8;
/// Handles whose metadata is prefetched together before they are freed one by one.
const PREFETCH_CHUNK: usize = 16;

/// Which frames of one max-order block a batch frees (bit `i`: frame `base + i`).
struct RunMap([u64; MAP_WORDS]);

impl RunMap {
    /// Marks the `2^order` frames at offset `off` (aligned to `2^order`).
    fn set(&mut self, off: usize, order: usize) {
        if order >= 6 {
            self.0[off / 64..(off + (1 << order)) / 64].fill(!0);
        } else {
            self.0[off / 64] |= low_bits(1 << order) << (off % 64);
        }
    }

    /// Whether all `2^order` frames at offset `off` (aligned) are marked.
    fn all_set(&self, off: usize, order: usize) -> bool {
        if order >= 6 {
            self.0[off / 64..(off + (1 << order)) / 64].iter().all(|&w| w == !0)
        } else {
            let m = low_bits(1 << order);
            (self.0[off / 64] >> (off % 64)) & m == m
        }
    }

    /// The marked frames cut into maximal aligned runs of at most `2^max_order`,
    /// lowest first, as `(offset, order)`. Every block that was [`set`](Self::set)
    /// lies inside one run (aligned power-of-two ranges nest or are disjoint, and
    /// a run starts at the first marked frame with the largest order that fits).
    fn runs(&self, max_order: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut off = 0;
        core::iter::from_fn(move || {
            while off < BLOCK_PAGES {
                let w = self.0[off / 64] >> (off % 64);
                if w == 0 {
                    off = (off / 64 + 1) * 64;
                    continue;
                }
                off += w.trailing_zeros() as usize;
                let mut order = if off == 0 { max_order } else { (off.trailing_zeros() as usize).min(max_order) };
                while !self.all_set(off, order) {
                    order -= 1;
                }
                let run = (off, order);
                off += 1 << order;
                return Some(run);
            }
            None
        })
    }
}

/// The lowest `n` bits set, `n <= 64`.
fn low_bits(n: usize) -> u64 {
    if n >= 64 { !0 } else { (1 << n) - 1 }
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    /// Frees many blocks (Linux `free_unref_folios` / `release_pages`) with the same
    /// checks as `free_pages` on each block (a bad or doubly freed block is
    /// reported through `AllocHooks::bad_page` and leaked, never applied twice)
    /// and the same counters.
    ///
    /// A batch that this CPU's per-CPU lists can take below `high` is freed block
    /// by block onto them. A larger one of more than [`BULK_SORT_MIN`] blocks is
    /// first sorted in place by max-order block (no allocation), so that each
    /// 4 MiB block's share is freed together while its metadata (32 KiB) is in
    /// L1/L2; what the lists cannot take is merged into the buddy in runs (see the
    /// module documentation).
    ///
    /// Takes the batch by value as anything that is both a mutable slice and an
    /// iterator of its elements (`Vec<Pages>`, `[Pages; N]`, [`DrainVec`]).
    pub fn free_pages_bulk<B>(&self, mut pages: B)
    where
        B: core::borrow::BorrowMut<[Pages]> + IntoIterator<Item = Pages>,
    {
        let batch = pages.borrow_mut();
        if batch.is_empty() {
            return;
        }
        let nr_pages: u64 = batch.iter().map(Pages::nr_pages).sum();
        if nr_pages <= self.zones.iter().map(|z| self.pcp_room(z)).min().unwrap_or(0) as u64 {
            // All of it fits on the per-CPU lists: nothing to sort or merge.
            self.free_each(batch);
        } else {
            self.free_grouped(batch);
        }
        // Every handle was consumed above, by its pfn and order.
        pages.into_iter().for_each(core::mem::forget);
    }

    /// Frees a batch by 4 MiB block: each block's share to the per-CPU lists while
    /// they have room, the rest merged into the buddy. Consumes the handles (the
    /// caller forgets them).
    fn free_grouped(&self, batch: &mut [Pages]) {
        if batch.len() > BULK_SORT_MIN {
            // In place, no allocation (`core`'s pattern-defeating quicksort); the key
            // has few distinct values (one per 4 MiB), which that sort handles well.
            batch.sort_unstable_by_key(|p| p.pfn().0 >> MAX_ORDER);
        }
        let batch: &[Pages] = batch;
        let mut i = 0;
        while i < batch.len() {
            let key = batch[i].pfn().0 >> MAX_ORDER;
            let n = batch[i..].iter().take_while(|p| p.pfn().0 >> MAX_ORDER == key).count();
            let group = &batch[i..i + n];
            i += n;
            if n < BULK_MERGE_MIN {
                self.free_each(group);
                continue;
            }
            // The handles that fit below `high` go to the per-CPU lists, the rest
            // is merged into the buddy.
            let mut room = self.pcp_room(&self.zones[self.zone_idx(key << MAX_ORDER)]) as u64;
            let to_pcp = group.iter().take_while(|p| room.checked_sub(p.nr_pages()).map(|r| room = r).is_some()).count();
            self.free_each(&group[..to_pcp]);
            match &group[to_pcp..] {
                rest if rest.len() >= BULK_MERGE_MIN => self.free_block_share_merged(rest),
                rest => self.free_each(rest),
            }
        }
    }

    /// `free_pages` on each block, the metadata of the next few prefetched first.
    /// Consumes the handles (the caller forgets them).
    fn free_each(&self, blocks: &[Pages]) {
        for chunk in blocks.chunks(PREFETCH_CHUNK) {
            for p in chunk {
                self.prefetch_meta(p.pfn().0);
            }
            for p in chunk {
                self.free_pages(Pages::new(p.pfn(), p.order()));
            }
        }
    }

    /// One max-order block's share of a batch: check and mark each handle, then
    /// free the runs into the buddy (see the module documentation).
    fn free_block_share_merged(&self, group: &[Pages]) {
        let base = group[0].pfn().0 & !(BLOCK_PAGES as u64 - 1);
        let mut map = RunMap([0; MAP_WORDS]);
        let mut marked = 0u64;
        for (k, p) in group.iter().enumerate() {
            if let Some(ahead) = group.get(k + PREFETCH_AHEAD) {
                self.prefetch_meta(ahead.pfn().0);
            }
            if p.order() > PAGEBLOCK_ORDER {
                // A whole max-order block (the only larger order): nothing to merge.
                self.free_pages(Pages::new(p.pfn(), p.order()));
                continue;
            }
            let Some((pfn, order)) = self.free_pages_prepare(Pages::new(p.pfn(), p.order()), false) else { continue };
            // No longer owned, so a second handle to it in this batch is refused by
            // `free_pages_prepare`; on no list until its run is freed below.
            self.meta(pfn).set_kind(Kind::Tail, 0);
            map.set((pfn - base) as usize, order);
            marked += 1;
        }
        if marked == 0 {
            return;
        }
        let z = &self.zones[self.zone_idx(base)];
        let mut a = self.lock_zone(z);
        for (off, order) in map.runs(PAGEBLOCK_ORDER) {
            let pfn = base + off as u64;
            self.__free_one_page(z, &mut a, pfn, order, self.block_mt(pfn));
        }
        // One `pgfree` per block handed in, as `free_pages` counts.
        self.events.pgfree.fetch_add(marked, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(set: &[(usize, usize)], max_order: usize) -> Vec<(usize, usize)> {
        let mut m = RunMap([0; MAP_WORDS]);
        for &(off, order) in set {
            m.set(off, order);
        }
        m.runs(max_order).collect()
    }

    #[test]
    fn run_map_cuts_maximal_aligned_runs() {
        assert_eq!(runs_of(&[], 9), []);
        // Everything: two page blocks.
        assert_eq!(runs_of(&[(0, 9), (512, 9)], 9), [(0, 9), (512, 9)]);
        // Frames 1..=6: 1 is odd, 2..4 an aligned pair, 4..=5 a pair, 6 single.
        let frames: Vec<(usize, usize)> = (1..=6).map(|f| (f, 0)).collect();
        assert_eq!(runs_of(&frames, 9), [(1, 0), (2, 1), (4, 1), (6, 0)]);
        // A word boundary: 60..68 is not aligned to 8 -> 60..64 (order 2), 64..68 (order 2).
        let frames: Vec<(usize, usize)> = (60..68).map(|f| (f, 0)).collect();
        assert_eq!(runs_of(&frames, 9), [(60, 2), (64, 2)]);
        // Whole words join up to the cap, and never beyond it.
        assert_eq!(runs_of(&[(128, 7), (256, 8)], 9), [(128, 7), (256, 8)]);
        assert_eq!(runs_of(&[(0, 9)], 3), (0..64).map(|i| (i * 8, 3)).collect::<Vec<_>>());
        // The last frame of the block.
        assert_eq!(runs_of(&[(1023, 0)], 9), [(1023, 0)]);
    }

    #[test]
    fn every_marked_block_lies_in_one_run() {
        // Random aligned blocks of orders 0..=9, disjoint; each must be inside a
        // single run, and the runs must cover exactly the marked frames.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut taken = [false; BLOCK_PAGES];
            let mut set = Vec::new();
            for _ in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let order = (seed % 10) as usize;
                let off = ((seed >> 8) as usize % BLOCK_PAGES) & !((1 << order) - 1);
                if taken[off..off + (1 << order)].iter().all(|t| !t) {
                    taken[off..off + (1 << order)].fill(true);
                    set.push((off, order));
                }
            }
            let runs = runs_of(&set, PAGEBLOCK_ORDER);
            let mut covered = [false; BLOCK_PAGES];
            for &(off, order) in &runs {
                assert_eq!(off % (1 << order), 0, "aligned");
                assert!(order <= PAGEBLOCK_ORDER);
                assert!(covered[off..off + (1 << order)].iter().all(|c| !c), "runs are disjoint");
                covered[off..off + (1 << order)].fill(true);
            }
            assert_eq!(covered, taken, "runs cover exactly the marked frames");
            for &(off, order) in &set {
                assert!(runs.iter().any(|&(r, ro)| r <= off && off + (1 << order) <= r + (1 << ro)), "block ({off}, {order}) split");
            }
        }
    }
}
