//! Compaction: empty a page block by migrating its movable pages elsewhere.
//!
//! Linux counterpart: `mm/compaction.c` (`compact_zone`, `isolate_migratepages`,
//! `start_isolate_page_range`) and `mm/migrate.c` with `struct movable_operations`.
//! Here compaction works one page block at a time: it picks the page block whose used
//! pages are all movable and fewest, marks it `Isolate` so nothing is allocated from
//! it, asks each page's owner to move the page to a free frame in another movable
//! block, and returns the now-free block to the buddy as one order-9 block. It runs
//! for costly-order allocations that may sleep and, in defrag mode (Johannes
//! Weiner's `vm.defrag_mode`), before any allocation falls back to a foreign block
//! type. Owner callbacks run without allocator locks held.
//!
//! [`PageAlloc::migrate_page`] moves one given movable block (any order, huge
//! pages included) to a freshly allocated one through the same callbacks (Linux
//! `migrate_pages` on a single folio with `alloc_migration_target`).
//!
//! The owners: anonymous user pages (the kernel registers callbacks that find the
//! address space by the page's rmap and call
//! [`AddressSpace::migrate_anon_page`](crate::pgtable::AddressSpace::migrate_anon_page)),
//! and test owners on the host.

use core::cell::Cell;
use core::sync::atomic::Ordering::Relaxed;

use crate::addr::Pfn;
use crate::gfp::{__GFP_NORETRY, __GFP_NOWARN, GFP_HIGHUSER_MOVABLE, Gfp};
use crate::page::Kind;
use crate::page_alloc::{PageAlloc, Pages, PhysMem, Zone};
use crate::pageblock::{MigrateType, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use crate::sync::Platform;

/// How an owner moves its pages (Linux `struct movable_operations`). Registered with
/// `PageAlloc::register_movable_ops`; pages opt in with `PageMeta::set_movable`.
pub trait MigrateOps: Sync {
    /// Moves the owner's use of `m.old()` to `m.new()`: under the owner's own locks,
    /// copy the contents ([`Migration::copy_contents`]), rewrite every reference (for
    /// anonymous pages: the PTE, then flush the TLB), and trade the old handle for the
    /// new one with [`Migration::exchange`]. Returning without exchanging refuses the
    /// migration (page busy, pinned, already freed); the allocator then gives up.
    ///
    /// Runs inside allocations (direct compaction): it must not allocate with
    /// reclaim, and must take its locks with `try_lock` (the caller may hold them).
    fn migrate(&self, m: &Migration<'_>);
}

/// One page being migrated; handed to [`MigrateOps::migrate`].
pub struct Migration<'m> {
    mem: &'m dyn PhysMem,
    old: Pfn,
    new: Pfn,
    order: u8,
    done: Cell<bool>,
}

impl Migration<'_> {
    pub fn old(&self) -> Pfn {
        self.old
    }
    pub fn new_pfn(&self) -> Pfn {
        self.new
    }
    pub fn order(&self) -> usize {
        self.order as usize
    }
    /// Copies the frames `old` → `new`. Call while the owner keeps `old` stable.
    pub fn copy_contents(&self) {
        // SAFETY: `new` was taken off the free lists for this migration and is owned
        // by the allocator until `exchange`; `old` belongs to the owner, who calls this
        // from `migrate` while holding it stable (the trait's contract).
        unsafe { self.mem.copy_frames(self.old, self.new, 1 << self.order) };
    }
    /// Commits the migration: consumes the handle of `old`, returns one for `new`.
    /// Returns the handle unchanged (`Err`) if it is not the page being migrated.
    pub fn exchange(&self, old: Pages) -> Result<Pages, Pages> {
        if old.pfn() != self.old || old.order() != self.order as usize || self.done.get() {
            return Err(old);
        }
        old.leak();
        self.done.set(true);
        // SAFETY: `new` is a block of this order taken off the free lists for this
        // migration; `done` guarantees this handle is created once.
        Ok(unsafe { Pages::from_raw(self.new, self.order as usize) })
    }
}

/// Why [`PageAlloc::migrate_page`] did not move a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MigrateError {
    /// Not the head of an owned block marked movable with registered callbacks.
    NotMovable,
    /// No free block of that order for the copy.
    NoMemory,
    /// The owner did not exchange the page (busy, unmapped meanwhile, not found).
    Refused,
}

/// Target of [`PageAlloc::migrate_page`] (Linux `alloc_migration_target`: user
/// movable memory, but one reclaim round at most and no warning).
const GFP_MIGRATE_TARGET: Gfp = GFP_HIGHUSER_MOVABLE.union(__GFP_NORETRY).union(__GFP_NOWARN);

/// Outcome of compacting one page block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CompactResult {
    /// A whole page block was freed.
    Success,
    /// No block has only movable pages, or too little room to move them.
    NoCandidate,
    /// An owner refused or no target page was available; the block was restored.
    Aborted,
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    /// Picks the page block with the fewest used pages that are all movable, and
    /// isolates it (Linux `isolate_migratepages` + `start_isolate_page_range`).
    /// Returns `(block_pfn, previous type)`.
    fn isolate_candidate(&self, z: &Zone<P>) -> Option<(u64, MigrateType)> {
        let mut a = self.lock_zone(z);
        let mut best: Option<(u64, u64, u64)> = None; // (block, used, free)
        let mut block = z.start_pfn;
        'blocks: while block < z.end_pfn {
            let start = block;
            block += PAGEBLOCK_NR_PAGES;
            if !self.block_mt(start).is_mergeable() || start + PAGEBLOCK_NR_PAGES > z.end_pfn {
                continue;
            }
            let (mut used, mut free, mut p) = (0, 0, start);
            while p < start + PAGEBLOCK_NR_PAGES {
                let m = self.meta(p);
                let (kind, order) = (m.kind(), m.order());
                match kind {
                    Kind::Buddy if order >= PAGEBLOCK_ORDER => continue 'blocks,
                    Kind::Buddy => free += 1 << order,
                    k if k.is_owned() && m.movable_ops().is_some() && order < PAGEBLOCK_ORDER => used += 1 << order,
                    _ => continue 'blocks, // unmovable, reserved, per-CPU or deferred
                }
                p += 1 << order;
            }
            if used > 0 && best.is_none_or(|(_, u, _)| used < u) {
                best = Some((start, used, free));
            }
        }
        let (start, used, free) = best?;
        let mt = self.block_mt(start);
        // Room for the pages outside this block, without splitting whole free blocks.
        let movable = MigrateType::Movable.index();
        let mut room: u64 = (0..PAGEBLOCK_ORDER).map(|o| a.nr_free[o][movable] << o).sum();
        if mt == MigrateType::Movable {
            room = room.saturating_sub(free);
        }
        if room < used {
            return None;
        }
        self.move_freepages_block(z, &mut a, start, mt, MigrateType::Isolate);
        Some((start, mt))
    }

    /// A free block of `2^order` from the Movable lists below page-block order (so
    /// compaction never splits a whole free block to fill another).
    fn compaction_target(&self, z: &Zone<P>, order: usize) -> Option<u64> {
        let mut a = self.lock_zone(z);
        let mt = MigrateType::Movable;
        for cur in order..PAGEBLOCK_ORDER {
            let head = a.head[cur][mt.index()];
            if head != crate::page::NONE {
                let pfn = self.pfn_of(head);
                self.del_from_free_list(z, &mut a, pfn, cur, mt);
                let mut high = cur;
                while high > order {
                    high -= 1;
                    self.add_to_free_list(z, &mut a, pfn + (1 << high), high, mt);
                }
                return Some(pfn);
            }
        }
        None
    }

    fn free_to_buddy(&self, z: &Zone<P>, pfn: u64, order: usize) {
        self.meta(pfn).set_kind(Kind::Tail, 0);
        let mut a = self.lock_zone(z);
        self.__free_one_page(z, &mut a, pfn, order, self.block_mt(pfn));
    }

    /// Frees one page block of zone `z` by migration (Linux `compact_zone`, one block).
    pub(crate) fn compact_zone(&self, z: &Zone<P>) -> CompactResult {
        self.events.compact_stall.fetch_add(1, Relaxed);
        let Some((start, old_mt)) = self.isolate_candidate(z) else {
            self.events.compact_fail.fetch_add(1, Relaxed);
            return CompactResult::NoCandidate;
        };
        let mut ok = true;
        let mut p = start;
        while ok && p < start + PAGEBLOCK_NR_PAGES {
            let m = self.meta(p);
            let (kind, order) = (m.kind(), m.order());
            if !kind.is_owned() {
                p += if kind == Kind::Buddy { 1 << order } else { 1 };
                continue;
            }
            let ops = m.movable_ops().and_then(|id| self.movable_ops.lock()[id.0 as usize]);
            let (Some(ops), Some(new)) = (ops, ops.and_then(|_| self.compaction_target(z, order))) else {
                ok = false;
                break;
            };
            self.meta(new).prep_allocated(order, MigrateType::Movable);
            let mig = Migration { mem: self.mem, old: Pfn(p), new: Pfn(new), order: order as u8, done: Cell::new(false) };
            ops.migrate(&mig);
            if mig.done.get() {
                self.meta(new).copy_owner_state(m);
                self.free_to_buddy(z, p, order);
                self.events.compact_migrated.fetch_add(1, Relaxed);
            } else {
                self.free_to_buddy(z, new, order);
                ok = false;
            }
            p += 1 << order;
        }
        // Undo the isolation; a fully free block is re-freed so it can merge further.
        let mut a = self.lock_zone(z);
        self.move_freepages_block(z, &mut a, start, MigrateType::Isolate, old_mt);
        let m = self.meta(start);
        let whole = m.kind() == Kind::Buddy && m.order() >= PAGEBLOCK_ORDER;
        if whole {
            self.del_from_free_list(z, &mut a, start, PAGEBLOCK_ORDER, old_mt);
            self.__free_one_page(z, &mut a, start, PAGEBLOCK_ORDER, old_mt);
            self.events.compact_success.fetch_add(1, Relaxed);
            CompactResult::Success
        } else {
            self.events.compact_fail.fetch_add(1, Relaxed);
            let _ = ok;
            CompactResult::Aborted
        }
    }

    /// Moves the movable block whose head is `pfn` to a newly allocated block of
    /// the same order (Linux `migrate_pages` on one folio, `MIGRATE_SYNC`): asks
    /// its owner through its registered [`MigrateOps`], and on success hands the
    /// owner's state to the new head and frees the old block. Returns the new
    /// head. On any error nothing changed and nothing leaked. Call without
    /// allocator locks and outside the owner's locks (the callback takes them).
    pub fn migrate_page(&self, pfn: Pfn) -> Result<Pfn, MigrateError> {
        let m = self.page(pfn).ok_or(MigrateError::NotMovable)?;
        if !m.kind().is_owned() {
            return Err(MigrateError::NotMovable);
        }
        let order = m.order();
        let ops = m
            .movable_ops()
            .and_then(|id| self.movable_ops.lock()[id.0 as usize])
            .ok_or(MigrateError::NotMovable)?;
        let new = self.alloc_pages(GFP_MIGRATE_TARGET, order).map_err(|_| MigrateError::NoMemory)?;
        let mig = Migration { mem: self.mem, old: pfn, new: new.pfn(), order: order as u8, done: Cell::new(false) };
        ops.migrate(&mig);
        if !mig.done.get() {
            self.free_pages(new);
            return Err(MigrateError::Refused);
        }
        // The owner holds the handle `exchange` made for the new block.
        let new_pfn = new.leak();
        self.meta(new_pfn.0).copy_owner_state(m);
        m.clear_migrated();
        // SAFETY: the owner traded its handle of `pfn` in through `exchange`
        // (`done`), which leaked it; no other handle of the block exists.
        self.free_pages(unsafe { Pages::from_raw(pfn, order) });
        Ok(new_pfn)
    }

    /// Direct compaction for an allocation: drains per-CPU lists (their pages keep
    /// blocks from merging) and frees one page block in the first zone that can.
    pub(crate) fn compact_for_allocation(&self, gfp: Gfp) -> bool {
        self.drain_all_pages();
        let zonelist: &[usize] = if gfp.contains(Gfp::DMA32) { &[0] } else { &[1, 0] };
        zonelist.iter().any(|&zi| {
            let z = &self.zones[zi];
            z.managed_pages > 0 && self.compact_zone(z) == CompactResult::Success
        })
    }

    /// Compacts every zone until no block can be freed (Linux
    /// `/proc/sys/vm/compact_memory`). Returns the number of page blocks freed.
    pub fn compact_memory(&self) -> u64 {
        self.drain_all_pages();
        let mut freed = 0;
        for z in &self.zones {
            let mut budget = (z.end_pfn - z.start_pfn) / PAGEBLOCK_NR_PAGES + 1;
            while budget > 0 && z.managed_pages > 0 && self.compact_zone(z) == CompactResult::Success {
                freed += 1;
                budget -= 1;
            }
        }
        freed
    }
}
