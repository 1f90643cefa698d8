//! The loop every range operation on page tables shares (Linux's
//! `zap_pte_range`, `change_pte_range`, `madvise_free_pte_range` ...): the
//! present entries of one table that a linear range `[s, e)` touches, with the
//! part of the range each one covers.
//!
//! Unlike Linux, every table here counts its present entries
//! ([`AddressSpace::live_entries`], kept for page-table reclaim), so the walk
//! stops as soon as it has met as many present entries as the table holds: in
//! a sparse table (one page written in a 2 MiB slot, then `MADV_DONTNEED` of the
//! slot) it reads one entry instead of 512. The count is read once, when the
//! walk starts; callers may clear entries as they go. A table whose count is
//! raised by walker references, or one outside the count's rules (a boot
//! table), is simply scanned to the end of the range.

use super::{AddressSpace, Level, Pte, PtAlloc, PtMem};
use crate::addr::Pfn;
use crate::page::PageState;

/// Entries a walk must span before it consults the table's count.
const COUNTED_WALK_MIN: usize = 16;

/// One present entry met by a [`RangeWalk`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Index in the table.
    pub idx: usize,
    /// The entry as read.
    pub pte: Pte,
    /// Linear range the entry maps.
    pub start: u64,
    pub end: u64,
    /// The part of the walked range inside it.
    pub lo: u64,
    pub hi: u64,
    /// Whether it maps a page (PTE level, or a huge page) rather than a table.
    pub leaf: bool,
}

impl Slot {
    /// Whether the walked range covers the whole entry.
    #[inline]
    pub fn covered(&self) -> bool {
        self.lo == self.start && self.hi == self.end
    }
}

/// Cursor over the present entries of `table` (at `level`) within `[s, e)`.
/// It borrows nothing, so the caller may change the space between steps.
pub(crate) struct RangeWalk {
    table: Pfn,
    level: Level,
    s: u64,
    e: u64,
    base: u64,
    idx: usize,
    last: usize,
    /// Present entries the table may still hold beyond those met; `None` when
    /// the table keeps no count.
    left: Option<u32>,
}

impl RangeWalk {
    /// A walk of `table` over `[s, e)` (non-empty, inside the table's span).
    #[inline]
    pub fn new<A: PtAlloc, M: PtMem>(space: &AddressSpace<'_, A, M>, table: Pfn, level: Level, s: u64, e: u64) -> Self {
        debug_assert!(s < e, "empty range walk {s:#x}..{e:#x}");
        let (idx, last) = (level.index(s), level.index(e - 1));
        // Reading the count costs more than a few entries: only for long walks.
        let left = match last - idx >= COUNTED_WALK_MIN {
            true => match space.alloc.page(table).map(|m| m.state()) {
                Some(PageState::PageTable { live_entries }) => Some(live_entries),
                _ => None,
            },
            false => None,
        };
        RangeWalk { table, level, s, e, base: s & !(level.table_span() - 1), idx, last, left }
    }

    /// The next present entry, or `None` at the end of the range or once the
    /// table can hold no further present entry.
    #[inline(always)]
    pub fn next<A: PtAlloc, M: PtMem>(&mut self, space: &AddressSpace<'_, A, M>) -> Option<Slot> {
        while self.idx <= self.last && self.left != Some(0) {
            let idx = self.idx;
            self.idx += 1;
            let pte = space.entry(self.table, idx);
            if !pte.is_present() {
                continue;
            }
            if let Some(left) = self.left.as_mut() {
                *left -= 1;
            }
            let start = self.base + idx as u64 * self.level.entry_span();
            let end = start + self.level.entry_span();
            let leaf = self.level == Level::Pte || (self.level != Level::Pml4 && pte.is_huge());
            return Some(Slot { idx, pte, start, end, lo: self.s.max(start), hi: self.e.min(end), leaf });
        }
        None
    }
}
