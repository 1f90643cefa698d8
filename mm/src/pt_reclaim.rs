//! Freeing empty page-table pages, and the references that keep tables alive.
//!
//! Linux counterpart: Qi Zheng's "free user PTE page table pages" series (the
//! original refcount design of 2021, `pte_tryget` / `pte_put`; the merged 2024
//! version is `mm/pt_reclaim.c` with `pte_free_defer` / `try_to_free_pte`).
//!
//! # Design
//!
//! Each page-table page's [`PageMeta`](crate::page::PageMeta) holds one counter
//! (`pt_add_entries`): **live entries + walker references**. Installing an entry
//! adds one, clearing one subtracts one (range operations add the difference once
//! per table). A walker that needs a table to stay put while it does something
//! else — the fault handler allocating and clearing a page — takes a [`PtRef`],
//! which adds one more; [`AddressSpace::pt_put`] drops it.
//!
//! When an unmap / `MADV_DONTNEED` leaves a table's count at zero, the table is
//! unlinked from its parent entry, queued in the [`MmuGather`] and returned to the
//! allocator only after the TLB flush. The parent's count drops by one, so the
//! check cascades: empty PTE → PMD → PUD tables are all freed (Linux frees PTE
//! tables only). The PML4 is never freed this way, and in the kernel space no PML4
//! entry is ever cleared (user spaces copied it). A table whose count is held up
//! by a walker reference is not freed by the unmap; the walker's `pt_put` frees it
//! (and cascades) when it drops the last reference.
//!
//! # Why a table cannot vanish under a walker
//!
//! In the kernel an address space is changed with the mm lock held; Linux lets
//! `MADV_DONTNEED` and faults run concurrently under the *read* lock, which is
//! why the count includes walker references. Here every path that can free a
//! table (`unmap`, `pt_put`) needs `&mut AddressSpace`, i.e. the lock, and frees
//! a table only when its count is zero; a `PtRef` keeps the count above zero, so
//! the table outlives the reference even across lock drops. The host tests model
//! this by holding a `PtRef` across an `unmap` of the whole range.
//!
//! The knob ([`PgtableCtl::set_pt_reclaim`]) turns freeing off (counts are still
//! kept, so the cost of the bookkeeping alone can be measured); teardown always
//! frees.

use crate::addr::Pfn;
use crate::gfp::Gfp;
use crate::page_alloc::AllocError;
use crate::pgtable::{AddressSpace, Level, PgtableCtl, PtAlloc, PtMem, SpaceKind, VirtAddr, ZapMode};
use crate::tlb::MmuGather;

/// A walker's reference on a page-table page (Linux `pte_tryget`). Not `Clone`;
/// give it back with [`AddressSpace::pt_put`]. Forgetting it only pins the table.
#[must_use = "a table reference must be returned with pt_put()"]
#[derive(Debug, PartialEq, Eq)]
pub struct PtRef {
    pub(crate) table: Pfn,
    pub(crate) level: Level,
    /// A linear address inside the table's span (finds the path back to the root).
    pub(crate) lin: u64,
}

impl PtRef {
    /// The referenced table.
    pub fn table(&self) -> Pfn {
        self.table
    }
    /// Its level.
    pub fn level(&self) -> Level {
        self.level
    }
}

/// Why [`AddressSpace::table_alloc`] could not provide a table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TableAllocError {
    /// A huge leaf at this level covers the address.
    Huge(Level),
    /// Allocation failed (nothing was changed).
    NoMemory(AllocError),
}

/// Errors of [`AddressSpace::preallocate_top_level`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PreallocError {
    /// Called on a user space.
    NotKernelSpace,
    /// Unaligned, empty or outside the kernel half.
    BadRange,
    /// A PUD table could not be allocated (those allocated so far stay).
    NoMemory,
}

/// Tables found by [`AddressSpace::census`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Census {
    /// Tables reachable per level: [PTE, PMD, PUD].
    pub tables: [u64; 3],
    /// Present leaf entries: [4 KiB, 2 MiB, 1 GiB].
    pub leaves: [u64; 3],
    /// Reachable tables with no entries (what reclaim would free).
    pub empty_tables: u64,
}

/// A table whose count disagrees with its present entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CountMismatch {
    pub table: Pfn,
    pub level: Level,
    pub counted: u32,
    pub present: u32,
}

impl<'a, A: PtAlloc, M: PtMem> AddressSpace<'a, A, M> {
    /// The table of `target` level containing linear `lin`, allocating the missing
    /// levels with `gfp` (Linux `__pud_alloc` / `__pmd_alloc` / `__pte_alloc`), with
    /// a walker reference taken. Atomic: all missing tables are allocated before
    /// any is linked, so a failure leaves nothing behind.
    pub(crate) fn table_alloc(&mut self, lin: u64, target: Level, gfp: Gfp) -> Result<PtRef, TableAllocError> {
        let mut table = self.root;
        let mut level = Level::Pml4;
        while level != target {
            let e = self.entry(table, level.index(lin));
            if !e.is_present() {
                break;
            }
            if level != Level::Pml4 && e.is_huge() {
                return Err(TableAllocError::Huge(level));
            }
            table = e.pfn();
            level = level.child().ok_or(TableAllocError::Huge(level))?;
        }
        // Allocate every missing level first.
        let missing = level as usize - target as usize;
        let mut new = [Pfn(0); 3];
        let mut l = level;
        for i in 0..missing {
            l = l.child().unwrap_or(Level::Pte);
            match self.alloc_table(gfp, l) {
                Ok(t) => new[i] = t,
                Err(err) => {
                    let mut fl = level;
                    for &t in &new[..i] {
                        fl = fl.child().unwrap_or(Level::Pte);
                        self.free_table_now(t, fl);
                    }
                    return Err(TableAllocError::NoMemory(err));
                }
            }
        }
        // Link them top-down.
        let flags = self.table_flags();
        for &t in &new[..missing] {
            self.set_entry(table, level.index(lin), crate::pgtable::Pte::new(t, flags));
            self.count_add(table, 1);
            table = t;
            level = level.child().unwrap_or(Level::Pte);
        }
        self.count_add(table, 1);
        Ok(PtRef { table, level: target, lin })
    }

    /// Takes a reference on the existing PTE table mapping `va` without allocating
    /// (Linux `pte_offset_map` / `pte_tryget`). `None` if there is none.
    pub fn pte_table_get(&self, va: VirtAddr) -> Option<PtRef> {
        let lin = va.linear();
        let (table, _) = self.find_entry(lin, Level::Pte)?;
        self.count_add(table, 1);
        Some(PtRef { table, level: Level::Pte, lin })
    }

    /// Drops a walker reference (Linux `pte_put`). If the table is then empty and
    /// reclaim is on, it is unlinked and freed after `tlb`'s flush, cascading up.
    pub fn pt_put(&mut self, r: PtRef, tlb: &mut MmuGather) {
        if self.count_add(r.table, -1) == 0 && self.ctl.pt_reclaim() {
            self.free_empty_tables(r.lin, r.level, tlb);
        }
    }

    /// Drops a reference on a table known to hold at least one entry.
    pub(crate) fn pt_put_nonempty(&mut self, r: PtRef) {
        let n = self.count_add(r.table, -1);
        debug_assert!(n > 0, "pt_put_nonempty on an empty table");
    }

    /// Unlinks the empty table of `level` on the path to `lin` and every ancestor
    /// it leaves empty, stopping below the PML4 (and below the kernel's PML4
    /// entries). Each unlinked table is queued in `tlb`.
    pub(crate) fn free_empty_tables(&mut self, lin: u64, level: Level, tlb: &mut MmuGather) {
        // path[l] = table of level l on the way to `lin`.
        let mut path = [self.root; 5];
        let mut table = self.root;
        let mut l = Level::Pml4;
        while l != level {
            let e = self.entry(table, l.index(lin));
            if !e.is_present() || (l != Level::Pml4 && e.is_huge()) {
                return;
            }
            table = e.pfn();
            l = match l.child() {
                Some(c) => c,
                None => return,
            };
            path[l as usize] = table;
        }
        let mode = ZapMode { reclaim: true, teardown: false };
        let mut l = level;
        while let Some(parent_level) = l.parent() {
            let t = path[l as usize];
            if self.live_entries(t) != 0 || !self.may_unlink(parent_level, mode) {
                return;
            }
            let parent = path[parent_level as usize];
            self.set_entry(parent, parent_level.index(lin), crate::pgtable::Pte::NONE);
            self.count_add(parent, -1);
            let span_start = lin & !(parent_level.entry_span() - 1);
            self.release_table(t, l, span_start, tlb);
            l = parent_level;
        }
    }

    /// Walks every table of this space's half and checks each count against its
    /// present entries (no walker references may be outstanding). Returns what it
    /// found; used by tests and the `ptstat` console command.
    pub fn census(&self) -> Result<Census, CountMismatch> {
        let mut c = Census::default();
        let (lo, hi) = self.half();
        let first = Level::Pml4.index(lo);
        let last = Level::Pml4.index(hi - 1);
        let mut present = 0u32;
        for i in first..=last {
            let e = self.entry(self.root, i);
            if e.is_present() {
                present += 1;
                self.census_table(e.pfn(), Level::Pud, &mut c)?;
            }
        }
        // The kernel root also counts entries; a user root counts only its half.
        let counted = self.live_entries(self.root);
        if counted != present {
            return Err(CountMismatch { table: self.root, level: Level::Pml4, counted, present });
        }
        Ok(c)
    }

    fn census_table(&self, table: Pfn, level: Level, c: &mut Census) -> Result<(), CountMismatch> {
        c.tables[level as usize - 1] += 1;
        let mut present = 0u32;
        for i in 0..crate::pgtable::PTRS_PER_TABLE {
            let e = self.entry(table, i);
            if !e.is_present() {
                continue;
            }
            present += 1;
            match level.child() {
                Some(child) if !e.is_huge() => self.census_table(e.pfn(), child, c)?,
                _ => c.leaves[level as usize - 1] += 1,
            }
        }
        if present == 0 {
            c.empty_tables += 1;
        }
        let counted = self.live_entries(table);
        if counted != present {
            return Err(CountMismatch { table, level, counted, present });
        }
        Ok(())
    }

    /// Allocates the PUD tables for every PML4 slot of `[va, va + len)` in the
    /// kernel space (Linux `preallocate_vmalloc_pages`), so user spaces created
    /// later share them. Only meaningful for [`SpaceKind::Kernel`].
    pub fn preallocate_top_level(&mut self, va: VirtAddr, len: u64, gfp: Gfp) -> Result<(), PreallocError> {
        if self.kind != SpaceKind::Kernel {
            return Err(PreallocError::NotKernelSpace);
        }
        let (start, end) = self
            .check_range(va, len, crate::addr::PAGE_SIZE)
            .map_err(|_| PreallocError::BadRange)?;
        let span = Level::Pml4.entry_span();
        let mut lin = start & !(span - 1);
        while lin < end {
            match self.table_alloc(lin, Level::Pud, gfp) {
                Ok(r) => {
                    // The PUD table may be empty: drop the reference without freeing.
                    self.count_add(r.table, -1);
                }
                Err(TableAllocError::NoMemory(_)) => return Err(PreallocError::NoMemory),
                Err(TableAllocError::Huge(_)) => {}
            }
            lin += span;
        }
        Ok(())
    }
}

/// Convenience for the console: a one-line summary of the system counters.
pub fn write_pt_reclaim_state(ctl: &PgtableCtl, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    writeln!(
        out,
        "pt_reclaim {} page tables {} pages",
        if ctl.pt_reclaim() { "on" } else { "off" },
        ctl.nr_pagetable_pages()
    )
}
