//! Migration of anonymous user pages (Linux `mm/migrate.c`: `migrate_pages` →
//! `try_to_migrate` / `remove_migration_ptes`, for one CPU): the allocator's
//! compaction and defrag mode move an anonymous page by asking its owner, the
//! [`MigrateOps`] registered here, to copy it and point its page-table entry at
//! the new frame.
//!
//! Every user address space ([`crate::memory::mm_struct::Mm::new`]) marks the anonymous
//! pages it faults in movable with these ops ([`anon_movable_ops`]); the page's
//! reverse map (`PageState::Anon { rmap: Rmap { asid, vpn }, .. }`) names the
//! address space by its unique id and the virtual page. [`AnonMigrateOps`]
//! looks for that address space among the running one (the `mm_struct` current
//! slot) and the parked tasks' ones, with `try_lock` only — compaction runs
//! inside allocations, perhaps while one of them is locked: a locked address
//! space simply keeps its pages in place this time. It then calls
//! `UserMm::migrate_anon_page`, which checks that the entry at the rmap address
//! really maps the page (so a stale or colliding id is harmless), copies the
//! contents, rewrites the entry and queues the address in a TLB gather, and
//! finishes the gather before the allocator frees the old frame:
//!
//! * the running address space: its root is in CR3, so the old translation is
//!   dropped with `invlpg` (a CR3 reload for a 2 MiB page);
//! * a parked one: its root is not in CR3, and switching away from it reloaded
//!   CR3 without PCIDs (this kernel enables none) and user entries are never
//!   global, so no TLB holds its translations and the gather finishes without a
//!   flush. (Flushing anyway would only drop translations of whatever space is
//!   loaded, which is harmless but useless.)
//!
//! What is not moved: pages of shared anonymous objects (never marked movable,
//! see `mm::mman`), split huge pages (mapped more than once), address spaces
//! being created or torn down (in no slot) or locked at the time.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mm::compaction::{MigrateOps, Migration};
use mm::page::{MovableOpsId, PageState};
use mm::pgtable::VirtAddr;
use mm::tlb::{MmuGather, TlbFlush};
use spin::Once;

use crate::memory::mm_struct::{self, Mm};
use crate::memory::page_alloc::page_alloc;
use crate::memory::pgtable::tlb_finish;

/// Pages moved (Linux `pgmigrate_success`).
pub static PGMIGRATE_SUCCESS: AtomicU64 = AtomicU64::new(0);
/// Migrations refused: address space not found, locked, or the checks failed
/// (Linux `pgmigrate_fail`).
pub static PGMIGRATE_FAIL: AtomicU64 = AtomicU64::new(0);

/// The owner callbacks of anonymous user pages.
pub struct AnonMigrateOps;

static ANON_MIGRATE_OPS: AnonMigrateOps = AnonMigrateOps;
static ANON_OPS_ID: Once<Option<MovableOpsId>> = Once::new();

/// The movable-ops id of anonymous user pages, registered with the page
/// allocator on first use. `None` if the allocator's registry is full (the
/// pages are then simply not movable).
/// Calls `f` on the address space of every parked task, or on none if the
/// task list is locked right now (it must not wait: compaction runs inside
/// allocations).
pub type ForEachParkedMm = fn(f: &mut dyn FnMut(&mut Mm));

/// The scheduler's walk over parked address spaces, installed by `main` (the
/// task layer sits above this one; Linux reaches them through `anon_vma`).
static PARKED_MMS: Once<ForEachParkedMm> = Once::new();

/// Installs the walk over parked address spaces.
pub fn set_parked_mms(walk: ForEachParkedMm) {
    PARKED_MMS.call_once(|| walk);
}

pub fn anon_movable_ops() -> Option<MovableOpsId> {
    *ANON_OPS_ID.call_once(|| {
        let id = page_alloc().register_movable_ops(&ANON_MIGRATE_OPS);
        if id.is_none() {
            log::warn!("migrate: no free movable-ops slot, anonymous pages stay unmovable");
        }
        id
    })
}

/// A parked address space's gather: nothing to flush (see the module docs).
struct ParkedTlb;

impl TlbFlush for ParkedTlb {
    fn flush_range(&self, _start: VirtAddr, _nr_pages: u64) {}
    fn flush_all(&self) {}
}

/// Tries the migration in `mm`; `running`: its root is in CR3.
fn migrate_in(mm: &mut Mm, m: &Migration<'_>, running: bool) -> bool {
    let mut tlb = MmuGather::new();
    let r = mm.migrate_anon_page(m, &mut tlb);
    // The gather holds only the address (no pages): it is flushed before the
    // allocator frees the old frame, right after we return.
    if running {
        tlb_finish(tlb);
    } else {
        tlb.finish(&ParkedTlb, page_alloc());
    }
    r.is_ok()
}

impl MigrateOps for AnonMigrateOps {
    fn migrate(&self, m: &Migration<'_>) {
        let Some(PageState::Anon { rmap, .. }) = page_alloc().page(m.old()).map(|p| p.state()) else {
            PGMIGRATE_FAIL.fetch_add(1, Relaxed);
            return;
        };
        let mut done = mm_struct::with_current(|mm| mm.space.asid() == rmap.asid && migrate_in(mm, m, true))
            .unwrap_or(false);
        if !done {
            if let Some(for_each_parked) = PARKED_MMS.get() {
                for_each_parked(&mut |mm| {
                    if !done && mm.space.asid() == rmap.asid {
                        done = migrate_in(mm, m, false);
                    }
                });
            }
        }
        if done { &PGMIGRATE_SUCCESS } else { &PGMIGRATE_FAIL }.fetch_add(1, Relaxed);
    }
}
