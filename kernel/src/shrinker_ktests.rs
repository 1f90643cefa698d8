//! In-kernel tests of GFP reclaim semantics under real memory pressure: a
//! `GFP_NOFS` allocation does not call a file-system shrinker but a
//! `GFP_KERNEL` one does; `GFP_NOWAIT` fails without reclaiming; the scoped
//! `memalloc_nofs_save()` turns a `GFP_KERNEL` allocation into a NOFS one.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use mm::gfp::{Gfp, GFP_KERNEL, GFP_NOFS, GFP_NOWAIT, __GFP_NORETRY, __GFP_NOWARN};
use mm::page_alloc::Pages;
use mm::sched_mm::memalloc_nofs_save;
use mm::shrinker::{ShrinkControl, Shrinker, ShrinkerFlags};

use crate::ktest::KResult;
use crate::page_alloc::page_alloc;
use crate::sync::IrqSpinlock;
use crate::vmalloc::MEMALLOC_SCOPE;
use crate::{kassert, kassert_eq};

/// A cache of pages kept "just in case", given back when reclaim asks.
struct PagePool {
    name: &'static str,
    flags: ShrinkerFlags,
    pages: IrqSpinlock<Vec<Pages>>,
    scans: AtomicU64,
}

impl Shrinker for PagePool {
    fn name(&self) -> &str {
        self.name
    }
    fn flags(&self) -> ShrinkerFlags {
        self.flags
    }
    fn count_objects(&self, _: &ShrinkControl) -> u64 {
        // try_lock: never spin on a lock the interrupted context may hold.
        self.pages.try_lock().map_or(0, |p| p.len() as u64)
    }
    fn scan_objects(&self, sc: &mut ShrinkControl) -> u64 {
        self.scans.fetch_add(1, SeqCst);
        let Some(mut pages) = self.pages.try_lock() else { return mm::shrinker::SHRINK_STOP };
        let mut freed = 0;
        while freed < sc.nr_to_scan {
            let Some(p) = pages.pop() else { break };
            page_alloc().free_pages(p);
            freed += 1;
        }
        freed
    }
}

static FS_POOL: PagePool =
    PagePool { name: "test-fs-pool", flags: ShrinkerFlags::FS, pages: IrqSpinlock::new(Vec::new()), scans: AtomicU64::new(0) };

fn registered() -> &'static PagePool {
    static ONCE: spin::Once<()> = spin::Once::new();
    ONCE.call_once(|| {
        crate::shrinker::register(&FS_POOL);
    });
    &FS_POOL
}

pub const KTESTS: &[crate::ktest::KTest] = &[crate::ktest!(reclaim_honours_gfp_fs_and_nowait_and_scopes)];

/// Allocates order-0 pages until `gfp` fails.
fn exhaust(gfp: Gfp, held: &mut Vec<Pages>) {
    while let Ok(p) = page_alloc().alloc_pages(gfp | __GFP_NOWARN, 0) {
        held.push(p);
    }
}

fn reclaim_honours_gfp_fs_and_nowait_and_scopes() -> KResult {
    let a = page_alloc();
    let pool = registered();
    // Every heap allocation happens before memory runs out: a kernel-heap
    // allocation under pressure would itself reclaim (GFP_KERNEL).
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    let mut nowait_held: Vec<Pages> = Vec::new();
    nowait_held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    pool.pages.lock().try_reserve(1024).map_err(|_| "no heap for the pool")?;
    let free0 = crate::slab::nr_free_pages_settled();
    exhaust(GFP_KERNEL | __GFP_NORETRY, &mut held);
    // Move 1024 of the held pages into the FS shrinker's cache: freeable memory
    // that only an allocation allowed to enter the file system may reclaim.
    {
        let mut pages = pool.pages.lock();
        for _ in 0..1024 {
            if let Some(p) = held.pop() {
                pages.push(p);
            }
        }
    }
    let scans0 = pool.scans.load(SeqCst);
    let nofs = a.alloc_pages(GFP_NOFS | __GFP_NOWARN, 0);
    let scans_after_nofs = pool.scans.load(SeqCst);
    let scoped = {
        let _nofs = memalloc_nofs_save(&MEMALLOC_SCOPE);
        a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0)
    };
    let scans_after_scoped = pool.scans.load(SeqCst);
    // GFP_NOWAIT may dip into the reserve below `min` (as in Linux), but it
    // must never reclaim: drain that reserve too and watch the shrinker.
    exhaust(GFP_NOWAIT, &mut nowait_held);
    let nowait_after_exhaustion = a.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0);
    let scans_after_nowait = pool.scans.load(SeqCst);
    for p in nowait_held.drain(..) {
        a.free_pages(p);
    }
    let kernel = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0);
    let scans_after_kernel = pool.scans.load(SeqCst);
    let results = [nofs.is_ok(), scoped.is_ok(), nowait_after_exhaustion.is_ok(), kernel.is_ok()];
    for p in [nowait_after_exhaustion, nofs, scoped, kernel].into_iter().flatten() {
        a.free_pages(p);
    }
    for p in held.drain(..) {
        a.free_pages(p);
    }
    for p in pool.pages.lock().drain(..) {
        a.free_pages(p);
    }
    kassert_eq!(results, [false, false, false, true]);
    kassert_eq!(scans_after_nofs, scans0);
    kassert_eq!(scans_after_scoped, scans0);
    kassert_eq!(scans_after_nowait, scans0);
    kassert!(scans_after_kernel > scans0, "GFP_KERNEL did not call the FS shrinker");
    kassert_eq!(crate::slab::nr_free_pages_settled(), free0);
    Ok(())
}
