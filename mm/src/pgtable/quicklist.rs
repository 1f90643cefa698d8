//! Zeroed page-table pages kept for the next table allocation (Linux's old
//! `quicklist`, `mm/quicklist.c`, which x86 used for page tables until 2.6.25
//! and other architectures until 5.4).
//!
//! Page-table reclaim frees a table as soon as it is empty, and a table is
//! empty exactly when every entry is zero: the page is already what
//! [`AddressSpace::alloc_table`](super::AddressSpace) would otherwise clear (a
//! 4 KiB `rep stosb`). A workload that touches a fresh 2 MiB slot and drops it
//! again (the Zheng experiment, mmbench's `sparse_slot_fault_dontneed`) frees
//! and allocates a PTE and a PMD table per round; with the quicklist both come
//! back without the allocator and without the clear.
//!
//! Rules, which keep a reused table safe:
//! * only a table unlinked because it was empty, checked to be all zero when it
//!   was unlinked, enters (the gather sorts them, [`MmuGather::remove_table`]);
//! * it enters only after the TLB flush of the gather that unlinked it
//!   ([`MmuGather::finish_into`]): no paging-structure cache can still point
//!   at it when it is linked again somewhere else;
//! * at most [`QUICKLIST_MAX`] pages (16 KiB); more are freed as before, and
//!   [`Quicklist::drain`] returns them all (memory pressure, `drop_caches`).
//!
//! The list is a few atomic slots, lock-free, so it is safe from any context
//! and on several CPUs (Linux kept one per CPU; so will this once CPUs have
//! their own lists). Its pages are counted in `/proc/meminfo` `Quicklists:`,
//! not in `PageTables:`.
//!
//! [`MmuGather::remove_table`]: crate::tlb::MmuGather
//! [`MmuGather::finish_into`]: crate::tlb::MmuGather::finish_into

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Pfn;
use crate::page_alloc::Pages;

/// Pages a quicklist keeps at most: a PTE and a PMD table per round of the
/// sparse-slot pattern, twice.
pub const QUICKLIST_MAX: usize = 4;

/// A bounded, lock-free stack of zeroed, flushed, unlinked page-table pages.
#[derive(Debug)]
pub struct Quicklist {
    /// `pfn + 1` of a kept page, 0 for an empty slot.
    slots: [AtomicU64; QUICKLIST_MAX],
}

impl Default for Quicklist {
    fn default() -> Self {
        Self::new()
    }
}

impl Quicklist {
    pub const fn new() -> Quicklist {
        Quicklist { slots: [const { AtomicU64::new(0) }; QUICKLIST_MAX] }
    }

    /// Keeps `table`, or gives it back when the list is full. The caller
    /// promises what the module docs list: zero-filled, unlinked, flushed.
    pub fn push(&self, table: Pages) -> Result<(), Pages> {
        debug_assert_eq!(table.order(), 0, "quicklist of order-0 page-table pages");
        let value = table.pfn().0 + 1;
        for slot in &self.slots {
            if slot.compare_exchange(0, value, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                let _ = table.leak(); // owned by the slot now
                return Ok(());
            }
        }
        Err(table)
    }

    /// A kept page, zero-filled, or `None`.
    pub fn pop(&self) -> Option<Pages> {
        for slot in &self.slots {
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let value = slot.swap(0, Ordering::AcqRel);
            if value != 0 {
                // SAFETY: the value was stored by `push`, which leaked the only
                // handle of that order-0 block; the swap took it out of the slot,
                // so no other `pop` can return it.
                return Some(unsafe { Pages::from_raw(Pfn(value - 1), 0) });
            }
        }
        None
    }

    /// Pages kept now.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count()
    }

    /// Whether no page is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands every kept page to `free`; returns how many.
    pub fn drain(&self, mut free: impl FnMut(Pages)) -> usize {
        let mut n = 0;
        while let Some(p) = self.pop() {
            free(p);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn keeps_at_most_max_pages_and_gives_each_back_once() {
        let q = Quicklist::new();
        for i in 0..QUICKLIST_MAX as u64 {
            assert!(q.push(Pages::new(Pfn(100 + i), 0)).is_ok());
        }
        let extra = q.push(Pages::new(Pfn(7), 0)).expect_err("full list refuses");
        assert_eq!(extra.leak(), Pfn(7));
        assert_eq!(q.len(), QUICKLIST_MAX);
        let mut seen: Vec<u64> = Vec::new();
        while let Some(p) = q.pop() {
            seen.push(p.leak().0);
        }
        seen.sort_unstable();
        assert_eq!(seen, (100..100 + QUICKLIST_MAX as u64).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn drain_returns_every_page() {
        let q = Quicklist::new();
        q.push(Pages::new(Pfn(1), 0)).unwrap();
        q.push(Pages::new(Pfn(0), 0)).unwrap(); // pfn 0 is a valid page too
        let mut freed = Vec::new();
        assert_eq!(q.drain(|p| freed.push(p.leak().0)), 2);
        freed.sort_unstable();
        assert_eq!(freed, [0, 1]);
        assert_eq!(q.drain(|p| { let _ = p.leak(); }), 0);
    }
}
