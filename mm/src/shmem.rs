//! Shared anonymous memory: the objects behind `MAP_SHARED | MAP_ANONYMOUS`.
//!
//! Linux counterpart: `mm/shmem.c` as used by `shmem_zero_setup` — every shared
//! anonymous mapping gets an unlinked tmpfs file (`/dev/zero (deleted)` in
//! `/proc/PID/maps`), and its pages live in that file's page cache, indexed by
//! page offset, independent of any page table. Here a [`Shmem`] table owns the
//! objects of one address space, each a map from page offset to an owned frame
//! ([`Pages`]).
//!
//! * The fault handler asks [`Shmem::find_or_alloc`] for the page at a VMA's
//!   offset (Linux `shmem_get_folio`) and maps it with a
//!   [`PteFlags::SOFT_SHMEM`](crate::pgtable::PteFlags::SOFT_SHMEM) entry, which
//!   does not own the page: unmapping it (`munmap`, `MADV_DONTNEED`) drops only the
//!   translation, and the next access maps the same page again — the data stays.
//! * An object lives as long as some VMA maps part of it (Linux: as long as a VMA
//!   holds the file). The table counts the VMA pages referring to each object
//!   ([`Shmem::map_ref`] / [`Shmem::unmap_ref`]); splitting and merging VMAs does
//!   not change that sum, unmapping subtracts what went away. When it reaches
//!   zero every page of the object is queued for freeing after the TLB flush.
//! * `MADV_REMOVE` punches a hole ([`Shmem::punch_hole`], Linux
//!   `shmem_fallocate(FALLOC_FL_PUNCH_HOLE)`): the pages of that offset range
//!   are freed and read back as zeroes.
//!
//! Objects are per address space: without `fork` or `mremap` one mapping is all
//! that can refer to them. Sharing between processes would move the table behind
//! a lock and the frames to refcounted ownership.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::Pfn;
use crate::fault::ClearPages;
use crate::gfp::GFP_HIGHUSER_MOVABLE;
use crate::page_alloc::{AllocError, Pages};
use crate::pgtable::PtAlloc;
use crate::tlb::MmuGather;
use crate::vma::ShmId;

/// One shared anonymous object (Linux: the shmem inode and its page cache).
#[derive(Debug, Default)]
struct ShmObject {
    /// Pages present in the object, by page offset.
    pages: BTreeMap<u64, Pages>,
    /// VMA pages referring to the object (its "file reference").
    vma_pages: u64,
}

/// The shared anonymous objects of one address space.
#[derive(Debug, Default)]
pub struct Shmem {
    objects: BTreeMap<ShmId, ShmObject>,
    /// Next inode number to hand out.
    next_ino: u64,
}

impl Shmem {
    /// No objects.
    pub fn new() -> Shmem {
        Shmem { objects: BTreeMap::new(), next_ino: 1 }
    }

    /// Creates an empty object referred to by no VMA yet (Linux
    /// `shmem_kernel_file_setup`). Ids are never reused within one table.
    pub fn create(&mut self) -> ShmId {
        let id = ShmId(self.next_ino.max(1));
        self.next_ino = id.0.saturating_add(1);
        self.objects.insert(id, ShmObject::default());
        id
    }

    /// Number of live objects.
    pub fn nr_objects(&self) -> usize {
        self.objects.len()
    }

    /// Pages held by all objects (Linux `Shmem:` in meminfo, per mm).
    pub fn nr_pages(&self) -> u64 {
        self.objects.values().map(|o| o.pages.len() as u64).sum()
    }

    /// Pages held by object `id` (0 if it does not exist).
    pub fn object_pages(&self, id: ShmId) -> u64 {
        self.objects.get(&id).map_or(0, |o| o.pages.len() as u64)
    }

    /// Whether object `id` exists.
    pub fn contains(&self, id: ShmId) -> bool {
        self.objects.contains_key(&id)
    }

    /// Records that a new VMA maps `nr_pages` pages of `id`.
    pub fn map_ref(&mut self, id: ShmId, nr_pages: u64) {
        if let Some(o) = self.objects.get_mut(&id) {
            o.vma_pages = o.vma_pages.saturating_add(nr_pages);
        }
    }

    /// Records that `nr_pages` VMA pages of `id` were unmapped. When none remain
    /// the object is destroyed and its pages queued in `tlb`, freed after the
    /// flush (the caller has already zapped the translations into the same
    /// gather). An object no VMA ever mapped (`map_ref` never called) goes too.
    pub fn unmap_ref(&mut self, id: ShmId, nr_pages: u64, tlb: &mut MmuGather) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        o.vma_pages = o.vma_pages.saturating_sub(nr_pages);
        if o.vma_pages == 0
            && let Some(o) = self.objects.remove(&id)
        {
            for p in o.pages.into_values() {
                tlb.remove_page(p);
            }
        }
    }

    /// The page at `pgoff` of object `id`, allocating and clearing it on first
    /// use (Linux `shmem_get_folio_gfp` with `SGP_CACHE`). The object keeps the
    /// page; the caller maps it without taking ownership.
    pub fn find_or_alloc<A: PtAlloc, C: ClearPages>(
        &mut self,
        id: ShmId,
        pgoff: u64,
        alloc: &A,
        clear: &C,
    ) -> Result<Pfn, ShmemError> {
        let o = self.objects.get_mut(&id).ok_or(ShmemError::NoObject)?;
        if let Some(p) = o.pages.get(&pgoff) {
            return Ok(p.pfn());
        }
        let page = alloc.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).map_err(|e: AllocError| ShmemError::NoMemory(e))?;
        clear.clear_page(page.pfn());
        let pfn = page.pfn();
        o.pages.insert(pgoff, page);
        Ok(pfn)
    }

    /// The page at `pgoff` of `id` if it exists (Linux `filemap_get_folio`).
    pub fn lookup(&self, id: ShmId, pgoff: u64) -> Option<Pfn> {
        self.objects.get(&id)?.pages.get(&pgoff).map(Pages::pfn)
    }

    /// Frees the pages of `id` at offsets `[pgoff, pgoff + nr_pages)` after the
    /// flush (Linux `shmem_fallocate` with `FALLOC_FL_PUNCH_HOLE`). The caller
    /// has zapped every translation of them into `tlb`.
    pub fn punch_hole(&mut self, id: ShmId, pgoff: u64, nr_pages: u64, tlb: &mut MmuGather) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        let end = pgoff.saturating_add(nr_pages);
        let keys: Vec<u64> = o.pages.range(pgoff..end).map(|(&k, _)| k).collect();
        for k in keys {
            if let Some(p) = o.pages.remove(&k) {
                tlb.remove_page(p);
            }
        }
    }

    /// Queues every page of every object for freeing after `tlb`'s flush (the
    /// address space is being torn down).
    pub fn destroy(mut self, tlb: &mut MmuGather) {
        for (_, o) in core::mem::take(&mut self.objects) {
            for p in o.pages.into_values() {
                tlb.remove_page(p);
            }
        }
    }
}

/// Why [`Shmem::find_or_alloc`] failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShmemError {
    /// The VMA names an object that does not exist (a bug, not user input).
    NoObject,
    /// No memory for the page.
    NoMemory(AllocError),
}
