//! In-kernel tests of GFP reclaim semantics under real memory pressure: a
//! `GFP_NOFS` allocation does not call a file-system shrinker but a
//! `GFP_KERNEL` one does; `GFP_NOWAIT` fails without reclaiming; the scoped
//! `memalloc_nofs_save()` turns a `GFP_KERNEL` allocation into a NOFS one;
//! `GFP_NOIO` calls neither FS nor IO shrinkers while `GFP_NOFS` may call an IO
//! one; `GFP_ATOMIC` succeeds below the level where `GFP_NOWAIT` fails, without
//! reclaim; `__GFP_NOFAIL` succeeds, with memory fully exhausted (the tests take
//! every frame with `__GFP_MEMALLOC`), once a shrinker that refused many times
//! gives its pages back, where plain `GFP_KERNEL` fails;
//! `__GFP_NORETRY` stops after one reclaim round where `GFP_KERNEL` goes on while
//! reclaim makes progress.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use mm::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOWAIT, __GFP_NOFAIL, __GFP_NORETRY, __GFP_NOWARN};
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
    /// Scan calls still to be answered with "freed nothing" (a cache whose objects
    /// are busy for a while).
    refusals: AtomicU64,
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
        if self.refusals.fetch_update(SeqCst, SeqCst, |r| r.checked_sub(1)).is_ok() {
            return 0;
        }
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

const fn pool(name: &'static str, flags: ShrinkerFlags) -> PagePool {
    PagePool { name, flags, pages: IrqSpinlock::new(Vec::new()), scans: AtomicU64::new(0), refusals: AtomicU64::new(0) }
}

static FS_POOL: PagePool = pool("test-fs-pool", ShrinkerFlags::FS);
static IO_POOL: PagePool = pool("test-io-pool", ShrinkerFlags::IO);
static BUSY_POOL: PagePool = pool("test-busy-pool", ShrinkerFlags::empty());

/// The three test pools, registered once (empty pools count 0: no effect elsewhere).
fn registered() -> &'static PagePool {
    static ONCE: spin::Once<()> = spin::Once::new();
    ONCE.call_once(|| {
        for p in [&FS_POOL, &IO_POOL, &BUSY_POOL] {
            crate::shrinker::register(p);
        }
    });
    &FS_POOL
}

pub const KTESTS: &[crate::ktest::KTest] = &[
    crate::ktest!(reclaim_honours_gfp_fs_and_nowait_and_scopes),
    crate::ktest!(reclaim_honours_gfp_noio_atomic_and_nofail),
    crate::ktest!(reclaim_noretry_stops_after_one_round),
];

/// Moves up to `n` pages from `held` into `pool`'s cache.
fn stock(pool: &PagePool, held: &mut Vec<Pages>, n: usize) {
    let mut pages = pool.pages.lock();
    for _ in 0..n {
        match held.pop() {
            Some(p) => pages.push(p),
            None => break,
        }
    }
}

/// Moves every page of `pool`'s cache back to `held` (no page is freed).
fn unstock(pool: &PagePool, held: &mut Vec<Pages>) {
    held.extend(pool.pages.lock().drain(..));
}

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
    // GFP_NOWAIT gets no part of the reserve below `min` (Linux 6.3+) and must
    // never reclaim: take what it can and watch the shrinker.
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

fn reclaim_honours_gfp_noio_atomic_and_nofail() -> KResult {
    let a = page_alloc();
    registered();
    let scans = |p: &PagePool| p.scans.load(SeqCst);
    // All heap memory the test needs, reserved before memory runs out.
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    // NOFAIL may use half of the min reserve, no more: the busy pool must hold more
    // than that for NOFAIL to succeed once it gives its pages back.
    let min_pages: u64 = a.stats().zones.iter().map(|z| z.wmark[mm::page_alloc::Watermark::Min as usize]).sum();
    let busy_pages = min_pages as usize + 256;
    for p in [&FS_POOL, &IO_POOL] {
        p.pages.lock().try_reserve(512).map_err(|_| "no heap for the pools")?;
    }
    BUSY_POOL.pages.lock().try_reserve(busy_pages).map_err(|_| "no heap for the pools")?;
    let free0 = crate::slab::nr_free_pages_settled();
    exhaust(GFP_KERNEL | __GFP_NORETRY, &mut held);
    stock(&FS_POOL, &mut held, 256);
    stock(&IO_POOL, &mut held, 256);
    let (fs0, io0) = (scans(&FS_POOL), scans(&IO_POOL));
    // GFP_NOIO implies NOFS: neither pool may be asked.
    let noio = a.alloc_pages(GFP_NOIO | __GFP_NOWARN, 0);
    let (fs_noio, io_noio) = (scans(&FS_POOL), scans(&IO_POOL));
    // GFP_NOFS may start I/O: the IO pool gives pages back, the FS pool is left alone.
    let nofs = a.alloc_pages(GFP_NOFS | __GFP_NOWARN, 0);
    let (fs_nofs, io_nofs) = (scans(&FS_POOL), scans(&IO_POOL));
    // Down to where GFP_NOWAIT fails; GFP_ATOMIC (__GFP_HIGH) still has a reserve,
    // and neither reclaims.
    exhaust(GFP_NOWAIT, &mut held);
    let nowait = a.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0);
    let atomic = a.alloc_pages(GFP_ATOMIC | __GFP_NOWARN, 0);
    let (fs_atomic, io_atomic) = (scans(&FS_POOL), scans(&IO_POOL));
    // __GFP_NOFAIL: every free frame taken (reserves included, `__GFP_MEMALLOC`),
    // the only freeable memory in a pool that refuses its first 200 scans.
    unstock(&FS_POOL, &mut held);
    unstock(&IO_POOL, &mut held);
    crate::page_alloc_ktests::take_every_frame(&mut held);
    let free_at_zero = a.stats().free();
    stock(&BUSY_POOL, &mut held, busy_pages);
    BUSY_POOL.refusals.store(200, SeqCst);
    let busy0 = scans(&BUSY_POOL);
    let plain = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0);
    let refusals_after_plain = BUSY_POOL.refusals.load(SeqCst);
    let nofail = a.alloc_pages(GFP_KERNEL | __GFP_NOFAIL | __GFP_NOWARN, 0);
    let refusals_after_nofail = BUSY_POOL.refusals.load(SeqCst);
    let busy_scans = scans(&BUSY_POOL) - busy0;
    BUSY_POOL.refusals.store(0, SeqCst);
    // Give everything back before judging (a failed check may allocate).
    let results = [noio.is_ok(), nofs.is_ok(), nowait.is_ok(), atomic.is_ok(), plain.is_ok(), nofail.is_ok()];
    for p in [noio, nofs, nowait, atomic, plain, nofail].into_iter().flatten() {
        a.free_pages(p);
    }
    for p in held.drain(..) {
        a.free_pages(p);
    }
    for pool in [&FS_POOL, &IO_POOL, &BUSY_POOL] {
        for p in pool.pages.lock().drain(..) {
            a.free_pages(p);
        }
    }
    kassert_eq!(results, [false, true, false, true, false, true]);
    kassert!((fs_noio, io_noio) == (fs0, io0), "GFP_NOIO called an FS or IO shrinker");
    kassert!(fs_nofs == fs0, "GFP_NOFS called the FS shrinker");
    kassert!(io_nofs > io0, "GFP_NOFS did not call the IO shrinker");
    kassert!((fs_atomic, io_atomic) == (fs_nofs, io_nofs), "GFP_NOWAIT/GFP_ATOMIC reclaimed");
    kassert!(free_at_zero < 64, "memory not exhausted: {} frames free", free_at_zero);
    kassert!(refusals_after_plain > 0, "plain GFP_KERNEL kept retrying (it must give up)");
    kassert!(refusals_after_nofail == 0, "NOFAIL succeeded without waiting for the busy pool");
    kassert!(busy_scans > 200, "busy pool scanned only {} times", busy_scans);
    kassert_eq!(crate::slab::nr_free_pages_settled(), free0);
    Ok(())
}

/// An order-2 request that reclaim cannot satisfy although every round frees
/// pages (the pool holds only odd pfns, whose buddies stay allocated): with
/// `__GFP_NORETRY` one round, so the pool loses one scan's worth; plain
/// `GFP_KERNEL` keeps going while there is progress and empties the pool.
fn reclaim_noretry_stops_after_one_round() -> KResult {
    const POOL: usize = 1024;
    let a = page_alloc();
    registered();
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    BUSY_POOL.pages.lock().try_reserve(POOL).map_err(|_| "no heap for the pool")?;
    let free0 = crate::slab::nr_free_pages_settled();
    // Restocks the pool with POOL odd-pfn pages taken from a fully used memory.
    let refill = |held: &mut Vec<Pages>| {
        crate::page_alloc_ktests::take_every_frame(held);
        let mut pool = BUSY_POOL.pages.lock();
        let mut i = 0;
        while i < held.len() && pool.len() < POOL {
            if held[i].pfn().0 % 2 == 1 {
                pool.push(held.swap_remove(i));
            } else {
                i += 1;
            }
        }
    };
    refill(&mut held);
    let stocked = BUSY_POOL.pages.lock().len();
    let noretry = a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 2);
    let freed_noretry = stocked - BUSY_POOL.pages.lock().len();
    refill(&mut held);
    let restocked = BUSY_POOL.pages.lock().len();
    let kernel = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 2);
    let freed_kernel = restocked - BUSY_POOL.pages.lock().len();
    let results = [noretry.is_ok(), kernel.is_ok()];
    for p in [noretry, kernel].into_iter().flatten() {
        a.free_pages(p);
    }
    for p in held.drain(..) {
        a.free_pages(p);
    }
    for p in BUSY_POOL.pages.lock().drain(..) {
        a.free_pages(p);
    }
    kassert!(stocked == POOL && restocked == POOL, "pool stocked with {} / {} pages", stocked, restocked);
    kassert_eq!(results, [false, false]);
    kassert!(freed_noretry > 0, "the NORETRY round freed nothing");
    kassert!(freed_kernel >= 4 * freed_noretry, "GFP_KERNEL freed {} pages, NORETRY {}", freed_kernel, freed_noretry);
    kassert_eq!(crate::slab::nr_free_pages_settled(), free0);
    Ok(())
}
