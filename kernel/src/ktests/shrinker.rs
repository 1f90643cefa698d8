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
//! reclaim makes progress; `GFP_KERNEL` waits after a round without progress and
//! gets memory that an interrupt handler frees meanwhile, but does not wait with
//! interrupts off.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use mm::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOWAIT, __GFP_NOFAIL, __GFP_NORETRY, __GFP_NOWARN};
use mm::page_alloc::Pages;
use mm::sched_mm::{memalloc_nofs_save, memalloc_noreclaim_save};
use mm::shrinker::{ShrinkControl, Shrinker, ShrinkerFlags};

use crate::lib::ktest::KResult;
use crate::memory::page_alloc::page_alloc;
use crate::lib::sync::IrqSpinlock;
use crate::memory::page_alloc::MEMALLOC_SCOPE;
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

/// A shrinker with nothing to free that, once enabled, arms [`IRQ_RELEASE`] the
/// first time reclaim asks it for its count: memory arrives only after reclaim
/// has run, as when another context frees it while the allocation waits.
struct Waker {
    enabled: AtomicBool,
}

impl Shrinker for Waker {
    fn name(&self) -> &str {
        "test-waker"
    }
    fn flags(&self) -> ShrinkerFlags {
        ShrinkerFlags::empty()
    }
    fn count_objects(&self, _: &ShrinkControl) -> u64 {
        if self.enabled.swap(false, SeqCst) {
            RELEASE_ARMED.store(true, SeqCst);
        }
        0
    }
    fn scan_objects(&self, _: &mut ShrinkControl) -> u64 {
        0
    }
}

static WAKER: Waker = Waker { enabled: AtomicBool::new(false) };
/// Pages the timer interrupt frees once armed.
static IRQ_RELEASE: IrqSpinlock<Vec<Pages>> = IrqSpinlock::new(Vec::new());
static RELEASE_ARMED: AtomicBool = AtomicBool::new(false);
/// Timer interrupts that freed pages of [`IRQ_RELEASE`].
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// PIT tick hook (IRQ context): once armed, frees every page of [`IRQ_RELEASE`]
/// with `free_pages_nolock`, the any-context free.
fn release_from_irq() {
    if !RELEASE_ARMED.swap(false, SeqCst) {
        return;
    }
    // The holder of the lock runs with interrupts off, so it is never held here.
    let Some(mut pages) = IRQ_RELEASE.try_lock() else { return };
    if pages.is_empty() {
        return;
    }
    for p in pages.drain(..) {
        page_alloc().free_pages_nolock(p);
    }
    RELEASES.fetch_add(1, SeqCst);
}

/// The test pools and the waker, registered once (empty pools count 0: no
/// effect elsewhere).
fn registered() -> &'static PagePool {
    static ONCE: spin::Once<()> = spin::Once::new();
    ONCE.call_once(|| {
        for p in [&FS_POOL, &IO_POOL, &BUSY_POOL] {
            crate::memory::shrinker::register(p);
        }
        crate::memory::shrinker::register(&WAKER);
    });
    &FS_POOL
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(reclaim_honours_gfp_fs_and_nowait_and_scopes),
    crate::ktest!(reclaim_honours_gfp_noio_atomic_and_nofail),
    crate::ktest!(reclaim_noretry_stops_after_one_round),
    crate::ktest!(gfp_kernel_waits_for_memory_freed_while_it_sleeps),
];

/// Moves up to `n` pages from `held` into `list` (a pool's cache, or the pages
/// the timer interrupt frees).
fn stock(list: &IrqSpinlock<Vec<Pages>>, held: &mut Vec<Pages>, n: usize) {
    let mut pages = list.lock();
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
    let free0 = crate::memory::slab::nr_free_pages_settled();
    exhaust(GFP_KERNEL | __GFP_NORETRY, &mut held);
    // Move 1024 of the held pages into the FS shrinker's cache: freeable memory
    // that only an allocation allowed to enter the file system may reclaim.
    stock(&pool.pages, &mut held, 1024);
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
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

fn reclaim_honours_gfp_noio_atomic_and_nofail() -> KResult {
    // Scans the busy pool refuses (a reclaim round makes dozens).
    const REFUSALS: u64 = 200;
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
    let free0 = crate::memory::slab::nr_free_pages_settled();
    exhaust(GFP_KERNEL | __GFP_NORETRY, &mut held);
    stock(&FS_POOL.pages, &mut held, 256);
    stock(&IO_POOL.pages, &mut held, 256);
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
    // the only freeable memory in a pool that refuses its first REFUSALS scans.
    unstock(&FS_POOL, &mut held);
    unstock(&IO_POOL, &mut held);
    crate::ktests::page_alloc::take_every_frame(&mut held);
    let free_at_zero = a.stats().free();
    stock(&BUSY_POOL.pages, &mut held, busy_pages);
    BUSY_POOL.refusals.store(REFUSALS, SeqCst);
    let busy0 = scans(&BUSY_POOL);
    let waits0 = a.stats().reclaim_throttle;
    let plain = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0);
    let refusals_after_plain = BUSY_POOL.refusals.load(SeqCst);
    let nofail = a.alloc_pages(GFP_KERNEL | __GFP_NOFAIL | __GFP_NOWARN, 0);
    let refusals_after_nofail = BUSY_POOL.refusals.load(SeqCst);
    let busy_scans = scans(&BUSY_POOL) - busy0;
    let waits = a.stats().reclaim_throttle - waits0;
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
    kassert!(busy_scans > REFUSALS, "busy pool scanned only {} times", busy_scans);
    // A round without progress waits a tick: plain GFP_KERNEL's single round,
    // and NOFAIL's between its retries.
    kassert!(waits >= 2, "{} waits: NOFAIL did not wait between rounds without progress", waits);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
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
    let free0 = crate::memory::slab::nr_free_pages_settled();
    // Restocks the pool with POOL odd-pfn pages taken from a fully used memory.
    let refill = |held: &mut Vec<Pages>| {
        crate::ktests::page_alloc::take_every_frame(held);
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
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

/// `GFP_KERNEL` with every frame taken, no shrinker able to free anything, and
/// pages that a timer interrupt frees only after reclaim has run: the
/// allocation succeeds because a round without progress waits a tick before
/// its retry (Linux `reclaim_throttle`). The same request with interrupts off,
/// or inside the no-reclaim scope, does not wait, so it fails, and the wait is
/// counted as skipped.
fn gfp_kernel_waits_for_memory_freed_while_it_sleeps() -> KResult {
    let a = page_alloc();
    registered();
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    // Enough for GFP_KERNEL to pass the min watermark again.
    let min_pages: u64 = a.stats().zones.iter().map(|z| z.wmark[mm::page_alloc::Watermark::Min as usize]).sum();
    let release = min_pages as usize + 64;
    IRQ_RELEASE.lock().try_reserve(release).map_err(|_| "no heap for the release list")?;
    let free0 = crate::memory::slab::nr_free_pages_settled();
    // Ticks every millisecond, so the release comes well inside the 10 ms wait.
    crate::arch::x86_64::pit::set_frequency(1000);
    crate::arch::x86_64::pit::set_tick_hook(Some(release_from_irq));
    // 1. Interrupts on: the allocation waits, the tick frees, the retry succeeds.
    crate::ktests::page_alloc::take_every_frame(&mut held);
    let free_at_zero = a.stats().free();
    stock(&IRQ_RELEASE, &mut held, release);
    let (releases0, s0) = (RELEASES.load(SeqCst), a.stats());
    let t0 = crate::arch::x86_64::cpu::rdtsc();
    WAKER.enabled.store(true, SeqCst);
    let waited = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0);
    WAKER.enabled.store(false, SeqCst);
    let cycles = crate::arch::x86_64::cpu::rdtsc() - t0;
    let (releases1, s1) = (RELEASES.load(SeqCst), a.stats());
    // (If it did not wait, the release is still due: let it happen first.)
    wait_for_release(releases0);
    // 2. Interrupts off: no wait, so the pages are still held when it retries.
    crate::ktests::page_alloc::take_every_frame(&mut held);
    stock(&IRQ_RELEASE, &mut held, release);
    let atomic = {
        let irqs = crate::lib::sync::local_irq_save();
        WAKER.enabled.store(true, SeqCst);
        let r = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0);
        WAKER.enabled.store(false, SeqCst);
        crate::lib::sync::local_irq_restore(irqs);
        r
    };
    let s2 = a.stats();
    // The armed release happens at the next tick, now that interrupts are on.
    let releases2 = wait_for_release(RELEASES.load(SeqCst));
    // 3. Inside reclaim (a shrinker's own allocation: the no-reclaim scope) it
    //    does not wait either.
    crate::ktests::page_alloc::take_every_frame(&mut held);
    let in_reclaim = {
        let _reclaiming = memalloc_noreclaim_save(&MEMALLOC_SCOPE);
        a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0)
    };
    let s3 = a.stats();
    crate::arch::x86_64::pit::set_tick_hook(None);
    crate::arch::x86_64::pit::set_frequency(crate::arch::x86_64::pit::HZ);
    WAKER.enabled.store(false, SeqCst);
    RELEASE_ARMED.store(false, SeqCst);
    let results = [waited.is_ok(), atomic.is_ok(), in_reclaim.is_ok()];
    for p in [waited, atomic, in_reclaim].into_iter().flatten() {
        a.free_pages(p);
    }
    for p in held.drain(..).chain(IRQ_RELEASE.lock().drain(..)) {
        a.free_pages(p);
    }
    kassert!(free_at_zero < 64, "memory not exhausted: {} frames free", free_at_zero);
    kassert_eq!(results, [true, false, false]);
    kassert_eq!(releases1 - releases0, 1);
    kassert_eq!((s1.reclaim_throttle - s0.reclaim_throttle, s1.reclaim_throttle_skipped - s0.reclaim_throttle_skipped), (1, 0));
    kassert_eq!((s2.reclaim_throttle - s1.reclaim_throttle, s2.reclaim_throttle_skipped - s1.reclaim_throttle_skipped), (0, 1));
    kassert!(releases2 > releases1, "the armed release never ran");
    kassert_eq!((s3.reclaim_throttle - s2.reclaim_throttle, s3.reclaim_throttle_skipped - s2.reclaim_throttle_skipped), (0, 1));
    // The wait is one tick (10 ms); generous bound for a loaded host.
    let tick_cycles = crate::arch::x86_64::time::tsc_hz() / crate::task::sched::HZ;
    kassert!(cycles >= tick_cycles && cycles <= 20 * tick_cycles, "the allocation took {} cycles, a tick is {}", cycles, tick_cycles);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

/// Halts until the armed release has run (the count moved past `before`), or
/// for 100 interrupts if it is not armed; returns the count.
fn wait_for_release(before: u64) -> u64 {
    for _ in 0..100 {
        if RELEASES.load(SeqCst) != before || IRQ_RELEASE.lock().is_empty() {
            break;
        }
        crate::arch::x86_64::cpu::enable_irqs_and_halt();
    }
    RELEASES.load(SeqCst)
}
