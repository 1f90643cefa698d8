//! Host tests of the page allocator (unit, property, fault-injection, NMI simulation).

use super::*;
use crate::compaction::{CompactResult, MigrateOps, Migration};
use crate::page_alloc_bulk::BULK_SORT_MIN;
use crate::fail_page_alloc::FaultAttr;
use crate::gfp::*;
use crate::page::{PageState, Rmap};
use crate::sync::testing::{set_test_cpu, LocalCpu};
use crate::vmstat::ConsistencyReport;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Vec-backed physical memory starting at `base`.
pub(crate) struct VecMem {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl VecMem {
    fn new(base: u64, nr_pages: u64) -> VecMem {
        VecMem { base, bytes: Mutex::new(vec![0xAA; (nr_pages * PAGE_SIZE) as usize]) }
    }
    fn range(&self, pfn: Pfn, nr: u64) -> core::ops::Range<usize> {
        let s = ((pfn.0 - self.base) * PAGE_SIZE) as usize;
        s..s + (nr * PAGE_SIZE) as usize
    }
    fn fill(&self, pfn: Pfn, byte: u8) {
        let r = self.range(pfn, 1);
        self.bytes.lock().unwrap()[r].fill(byte);
    }
    fn all_equal(&self, pfn: Pfn, nr: u64, byte: u8) -> bool {
        let r = self.range(pfn, nr);
        self.bytes.lock().unwrap()[r].iter().all(|&b| b == byte)
    }
}

impl PhysMem for VecMem {
    unsafe fn zero_frames(&self, pfn: Pfn, nr_pages: u64) {
        let r = self.range(pfn, nr_pages);
        self.bytes.lock().unwrap()[r].fill(0);
    }
    unsafe fn copy_frames(&self, src: Pfn, dst: Pfn, nr_pages: u64) {
        let (s, d) = (self.range(src, nr_pages), self.range(dst, nr_pages));
        self.bytes.lock().unwrap().copy_within(s, d.start);
    }
}

#[derive(Default)]
struct CountingHooks {
    warnings: Mutex<Vec<(Gfp, usize, AllocError)>>,
    bad: Mutex<Vec<Pfn>>,
}
impl AllocHooks for CountingHooks {
    fn warn_alloc(&self, gfp: Gfp, order: usize, err: AllocError) {
        self.warnings.lock().unwrap().push((gfp, order, err));
    }
    fn bad_page(&self, pfn: Pfn, _reason: &'static str) {
        self.bad.lock().unwrap().push(pfn);
    }
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

fn metas(n: u64) -> &'static [PageMeta] {
    Box::leak((0..n).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice())
}

fn cfg() -> AllocConfig {
    AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(15), ..AllocConfig::default() }
}

/// An allocator over `nr` frames at pfn 0, all usable.
fn simple(nr: u64, config: AllocConfig) -> PageAlloc<'static> {
    PageAlloc::<HostPlatform>::new(metas(nr), Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, leak(NoHooks), config).unwrap()
}

fn check(a: &PageAlloc<'_>) -> ConsistencyReport {
    a.check_consistency().unwrap_or_else(|e| panic!("inconsistent: {e:?}"))
}

/// Frees all, drains per-CPU lists, and checks that memory is back in maximal blocks.
fn assert_restored(a: &PageAlloc<'_>) {
    a.drain_all_pages();
    a.drain_deferred_frees();
    let rep = check(a);
    assert_eq!(rep.allocated, 0);
    assert_eq!(rep.free, a.managed_pages());
}

#[test]
fn init_frees_maximal_blocks() {
    let a = simple(4096, cfg());
    let s = a.stats();
    assert_eq!(s.managed(), 4096);
    assert_eq!(s.zones[0].nr_free[MAX_ORDER][MigrateType::Movable.index()], 4);
    assert_eq!(s.zones[0].blocks_by_mt[MigrateType::Movable.index()], 8);
    check(&a);
}

#[test]
fn init_with_holes_unaligned_ranges_and_two_zones() {
    // 8192 frames straddling 4 GiB: both zones populated.
    let base = DMA32_END_PFN - 4096;
    let meta = metas(8192);
    let usable = [Pfn(base + 3)..Pfn(base + 1000), Pfn(base + 1500)..Pfn(base + 6000), Pfn(base + 6001)..Pfn(base + 8191)];
    let a = PageAlloc::<HostPlatform>::new(meta, Pfn(base), &usable, &NoPhysMem, leak(NoHooks), cfg()).unwrap();
    let s = a.stats();
    assert_eq!(s.managed(), 997 + 4500 + 2190);
    assert_eq!(s.zones[0].managed, 997 + (4096 - 1500));
    assert_eq!(a.page(Pfn(base + 1)).unwrap().state(), PageState::Reserved);
    check(&a);
    // DMA32 requests come from below 4 GiB only.
    let p = a.alloc_pages(GFP_KERNEL | __GFP_DMA32, 0).unwrap();
    assert!(p.pfn().0 < DMA32_END_PFN);
    a.free_pages(p);
    let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    assert!(p.pfn().0 >= DMA32_END_PFN, "Normal is preferred");
    a.free_pages(p);
    assert_restored(&a);
}

#[test]
fn init_rejects_bad_input() {
    let m = metas(2048);
    let mk = |base, r: &[Range<Pfn>], c| PageAlloc::<HostPlatform>::new(m, Pfn(base), r, &NoPhysMem, &NoHooks, c).err();
    assert_eq!(mk(512, &[], cfg()), Some(InitError::MisalignedBase));
    assert_eq!(mk(0, &[Pfn(0)..Pfn(4000)], cfg()), Some(InitError::RangeOutsideMetadata));
    assert_eq!(mk(0, &[Pfn(0)..Pfn(100), Pfn(50)..Pfn(60)], cfg()), Some(InitError::OverlappingRanges));
    assert_eq!(mk(0, &[], AllocConfig { nr_cpus: 0, ..cfg() }), Some(InitError::BadCpuCount));
}

#[test]
fn every_order_is_aligned_and_freeing_restores() {
    let a = simple(8192, cfg());
    let mut live = Vec::new();
    for order in 0..=MAX_ORDER {
        let p = a.alloc_pages(GFP_KERNEL, order).unwrap();
        assert_eq!(p.pfn().0 % (1 << order), 0);
        assert!(matches!(a.page(p.pfn()).unwrap().state(), PageState::Allocated { order: o, refcount: 1, .. } if o as usize == order));
        live.push(p);
    }
    check(&a);
    assert_eq!(a.alloc_pages(GFP_KERNEL, MAX_ORDER + 1), Err(AllocError::InvalidOrder));
    for p in live {
        a.free_pages(p);
    }
    assert_restored(&a);
    assert_eq!(a.stats().zones[0].nr_free[MAX_ORDER].iter().sum::<u64>(), 8);
}

#[test]
fn exhaustion_is_a_value_and_nowarn_silences_it() {
    let hooks = leak(CountingHooks::default());
    let a = PageAlloc::<HostPlatform>::new(metas(1024), Pfn(0), &[Pfn(0)..Pfn(1024)], &NoPhysMem, hooks, cfg()).unwrap();
    let mut live = Vec::new();
    while let Ok(p) = a.alloc_pages(GFP_KERNEL, 0) {
        live.push(p);
    }
    assert_eq!(live.len(), 1024);
    assert_eq!(hooks.warnings.lock().unwrap().len(), 1);
    assert_eq!(a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0), Err(AllocError::NoMemory));
    assert_eq!(hooks.warnings.lock().unwrap().len(), 1, "__GFP_NOWARN is silent");
    for p in live {
        a.free_pages(p);
    }
    assert_restored(&a);
}

#[test]
fn gfp_atomic_dips_below_min() {
    // 100 pages; per-CPU batches of one page, so no refill strands pages on a list
    // and the buddy's free count shows exactly where each request stops.
    let config = AllocConfig { min_free_kbytes: Some(400), pcp_batch: Some(1), ..cfg() };
    let a = simple(2048, config);
    assert_eq!(a.stats().zones[0].wmark[Watermark::Min as usize], 100);
    let mut live = Vec::new();
    while let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0) {
        live.push(p);
    }
    let kernel_got = live.len();
    assert!(kernel_got <= 2048 - 100 && kernel_got > 2048 - 200, "{kernel_got}");
    // Linux 6.3+: GFP_NOWAIT (non-blocking, no __GFP_HIGH) gets no part of the
    // min reserve; GFP_ATOMIC may go down to 3/8 of it (min/2, then a quarter off).
    let buddy_free = |a: &PageAlloc<'_>| a.stats().zones[0].free;
    a.drain_all_pages();
    assert!(buddy_free(&a) <= 100);
    assert!(a.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0).is_err(), "GFP_NOWAIT stops at min");
    let mut atomic = 0;
    while let Ok(p) = a.alloc_pages(GFP_ATOMIC | __GFP_NOWARN, 0) {
        live.push(p);
        atomic += 1;
    }
    assert!(atomic > 0, "GFP_ATOMIC uses the reserve");
    assert_eq!(buddy_free(&a), 38, "GFP_ATOMIC stops at 100 - 50 - 12");
    // __GFP_NOFAIL without reclaim is not supported (Linux warns and fails): no
    // reserve beyond its flags'; __GFP_MEMALLOC ignores the watermarks.
    assert!(a.alloc_pages(GFP_NOWAIT | __GFP_NOFAIL | __GFP_NOWARN, 0).is_err());
    assert_eq!(buddy_free(&a), 38);
    live.push(a.alloc_pages(GFP_ATOMIC | __GFP_MEMALLOC, 0).expect("__GFP_MEMALLOC reaches below every watermark"));
    assert_eq!(buddy_free(&a), 37);
    for p in live {
        a.free_pages(p);
    }
    assert_restored(&a);
}

/// Linux `reserve_highatomic_pageblock` / `unreserve_highatomic_pageblock`: a
/// high-order atomic allocation that needed the slow path keeps its page block for
/// later ones (at most ~1 % of the zone plus one block), and a reclaiming request
/// that is about to fail gets the block back.
#[test]
fn high_order_atomic_allocations_reserve_a_block_and_pressure_releases_it() {
    let config = AllocConfig { min_free_kbytes: Some(400), ..cfg() };
    let a = simple(4096, config);
    let blocks = |a: &PageAlloc<'_>| a.stats().zones[0].blocks_by_mt[MigrateType::HighAtomic.index()];
    // Below the low watermark, so order-1 atomic requests take the slow path.
    let mut live = Vec::new();
    while let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 0) {
        live.push(p);
    }
    assert_eq!(blocks(&a), 0);
    let before = a.stats();
    let atomic: Vec<Pages> = (0..4).map(|_| a.alloc_pages(GFP_ATOMIC, 1).unwrap()).collect();
    let s = a.stats();
    assert_eq!(s.highatomic_reserve - before.highatomic_reserve, 1, "one block reserved");
    assert_eq!(blocks(&a), 1);
    assert_eq!(s.zones[0].reserved_highatomic, PAGEBLOCK_NR_PAGES);
    assert!(s.zones[0].reserved_highatomic <= 4096 / 100 + PAGEBLOCK_NR_PAGES, "within the cap");
    assert!(atomic.iter().all(|p| a.block_mt(p.pfn().0) == MigrateType::HighAtomic), "later ones served from it");
    // Our pages inside the reserved block go back to its (high-atomic) free lists.
    // Those free pages count only for requests with reserve access: the zone has
    // more than `low` free, but not for GFP_KERNEL (Linux
    // `__zone_watermark_unusable_free`).
    let block = atomic[0].pfn().0 & !(PAGEBLOCK_NR_PAGES - 1);
    let (inside, mut live): (Vec<Pages>, Vec<Pages>) = live.into_iter().partition(|p| p.pfn().0 & !(PAGEBLOCK_NR_PAGES - 1) == block);
    inside.into_iter().for_each(|p| a.free_pages(p));
    a.drain_all_pages();
    let z = &a.stats().zones[0];
    let ha_free = z.free_by_mt[MigrateType::HighAtomic.index()];
    let (min, low) = (z.wmark[Watermark::Min as usize], z.wmark[Watermark::Low as usize]);
    assert!(ha_free > 300 && z.free > low && z.free - ha_free <= min, "free {} of which high-atomic {}", z.free, ha_free);
    check(&a); // includes the lock-free nr_free_highatomic mirror
    let zone = &a.zones[0];
    assert!(!a.zone_watermark_fast(zone, 0, Watermark::Min as u32), "GFP_KERNEL may not count the reserve");
    assert!(a.zone_watermark_fast(zone, 0, Watermark::Min as u32 | ALLOC_NON_BLOCK), "reserve users may");
    // A reclaiming request that fails releases the block before giving up.
    let r = a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 0);
    assert_eq!(blocks(&a), 0, "pressure gave the reserved block back");
    live.extend(r.ok());
    assert_eq!(a.stats().zones[0].reserved_highatomic, 0);
    check(&a);
    for p in live.into_iter().chain(atomic) {
        a.free_pages(p);
    }
    assert_restored(&a);
}

#[test]
fn gfp_zero_zeroes() {
    let mem = leak(VecMem::new(0, 1024));
    let a = PageAlloc::<HostPlatform>::new(metas(1024), Pfn(0), &[Pfn(0)..Pfn(1024)], mem, leak(NoHooks), cfg()).unwrap();
    let p = a.alloc_pages(GFP_KERNEL | __GFP_ZERO, 2).unwrap();
    assert!(mem.all_equal(p.pfn(), 4, 0));
    let q = a.alloc_pages(GFP_KERNEL, 2).unwrap();
    assert!(mem.all_equal(q.pfn(), 4, 0xAA));
    a.free_pages(p);
    a.free_pages(q);
}

#[test]
fn pcp_batches_and_drains() {
    let a = simple(2048, cfg());
    let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    let s = a.stats();
    assert_eq!(s.zones[0].pcp, 14, "a batch of 15 was moved, one handed out");
    a.free_pages(p);
    assert_eq!(a.stats().zones[0].pcp, 15);
    // Freeing many order-0 pages trims the list at `high`.
    let live: Vec<_> = (0..400).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    for p in live {
        a.free_pages(p);
    }
    let s = a.stats();
    assert!(s.zones[0].pcp <= a.pcp_lock_cpu(&a.zones[0], 0).unwrap().1.high as u64);
    check(&a);
    a.drain_pages(0);
    assert_eq!(a.stats().zones[0].pcp, 0);
    assert_restored(&a);
}

/// An order-0 refill takes a free block of the wanted type whole (or its
/// largest power-of-two part within the batch): 15 pages come as 8 + 4 + 2 + 1
/// distinct pages, the buddy keeps the rest, and everything adds up.
#[test]
fn pcp_refill_carves_blocks_into_distinct_pages() {
    let a = simple(2048, cfg());
    let free = a.stats().free();
    let pages: Vec<_> = (0..15).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    assert_eq!(a.stats().zones[0].pcp, 0, "one batch of 15 served all 15");
    let mut pfns: Vec<u64> = pages.iter().map(|p| p.pfn().0).collect();
    pfns.sort_unstable();
    pfns.dedup();
    assert_eq!(pfns.len(), 15, "every page handed out once");
    assert_eq!(pfns[14] - pfns[0], 14, "carved from one block: contiguous");
    assert_eq!(a.stats().free(), free - 15);
    check(&a);
    for p in pages {
        a.free_pages(p);
    }
    a.drain_pages(0);
    assert_restored(&a);
}

#[test]
fn fallback_claims_or_steals_and_is_counted() {
    // 4 blocks: fill them with movable pages, then free most of one block.
    let a = simple(2048, AllocConfig { pcp_batch: Some(1), ..cfg() });
    let mut movable: Vec<_> = (0..2048).map(|_| a.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap()).collect();
    a.drain_all_pages();
    // Free 400 pages of the block at pfn 0 (>= half free): an unmovable request claims it.
    let (b0, rest): (Vec<_>, Vec<_>) = movable.drain(..).partition(|p| p.pfn().0 < 400);
    movable = rest;
    for p in b0 {
        a.free_pages(p);
    }
    a.drain_all_pages();
    let u = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    let s = a.stats();
    assert_eq!(s.fallback, 1);
    assert_eq!(s.claim_block, 1);
    assert_eq!(s.steal, 0);
    assert_eq!(s.polluting, 0);
    assert_eq!(a.block_mt(u.pfn().0), MigrateType::Unmovable);
    // Free 10 pages of the block at pfn 512 (< half free): a reclaimable request on an
    // exhausted own type steals one page (first fallback is Unmovable: its block is used
    // up to the claimed block, so it comes from the claimed block first; use up that).
    let mut unmov = vec![u];
    while a.stats().zones[0].free_by_mt[MigrateType::Unmovable.index()] > 0 {
        unmov.push(a.alloc_pages(GFP_KERNEL, 0).unwrap());
    }
    let (b1, rest): (Vec<_>, Vec<_>) = movable.drain(..).partition(|p| (512..522).contains(&p.pfn().0));
    movable = rest;
    for p in b1 {
        a.free_pages(p);
    }
    a.drain_all_pages();
    let before = a.stats();
    let r = a.alloc_pages(GFP_KERNEL | __GFP_RECLAIMABLE, 0).unwrap();
    let s = a.stats();
    assert_eq!(s.steal - before.steal, 1);
    assert_eq!(s.polluting - before.polluting, 1);
    assert_eq!(a.block_mt(r.pfn().0), MigrateType::Movable, "block not claimed");
    check(&a);
    for p in movable.into_iter().chain(unmov).chain([r]) {
        a.free_pages(p);
    }
    assert_restored(&a);
}

/// Pages that `rmqueue_bulk` steals from foreign blocks onto the requester's
/// per-CPU list are counted as polluting when the fast path hands them out, not
/// only the first one (the slow path's). Large enough for the fast path (free >
/// low + 1024).
#[test]
fn stolen_pages_served_by_the_pcp_fast_path_count_as_polluting() {
    let a = simple(16384, cfg());
    // Every block movable and 3/4 used: a fallback may only take pages.
    let all: Vec<Pages> = (0..16384).map(|_| a.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap()).collect();
    let mut kept = Vec::new();
    for (i, p) in all.into_iter().enumerate() {
        if i % 4 == 0 { a.free_pages(p) } else { kept.push(p) }
    }
    a.drain_all_pages();
    let before = a.stats();
    let unmov: Vec<Pages> = (0..100).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    let s = a.stats();
    let foreign = unmov.iter().filter(|p| a.block_mt(p.pfn().0) != MigrateType::Unmovable).count() as u64;
    assert!(s.steal > before.steal, "the unmovable requests fell back");
    assert!(foreign > 1, "several stolen pages served (batch > 1)");
    assert_eq!(s.polluting - before.polluting, foreign, "every foreign placement counted");
    for p in kept.into_iter().chain(unmov) {
        a.free_pages(p);
    }
    assert_restored(&a);
}

#[test]
fn high_order_fallback_claims_whole_blocks() {
    let a = simple(2048, cfg());
    let u = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    let s = a.stats();
    assert_eq!(s.claim_block, 2, "an order-10 block covers two page blocks");
    assert_eq!(s.polluting, 0);
    assert_eq!(s.zones[0].blocks_by_mt[MigrateType::Unmovable.index()], 2);
    a.free_pages(u);
    assert_restored(&a);
}

#[test]
fn bad_frees_are_reported_not_fatal() {
    let hooks = leak(CountingHooks::default());
    let a = PageAlloc::<HostPlatform>::new(metas(1024), Pfn(0), &[Pfn(0)..Pfn(1024)], &NoPhysMem, hooks, cfg()).unwrap();
    let p = a.alloc_pages(GFP_KERNEL, 1).unwrap();
    let pfn = p.pfn();
    a.free_pages(p);
    // SAFETY (test): deliberately forging a second handle to check the double-free guard.
    a.free_pages(unsafe { Pages::from_raw(pfn, 1) });
    a.free_pages(unsafe { Pages::from_raw(Pfn(5000), 0) });
    let q = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    a.free_pages(unsafe { Pages::from_raw(q.pfn(), 1) });
    assert_eq!(hooks.bad.lock().unwrap().len(), 3);
    // Mapped page tables are not freed.
    a.page(q.pfn()).unwrap().set_page_table().unwrap();
    a.page(q.pfn()).unwrap().pt_add_entries(1).unwrap();
    let qpfn = q.pfn();
    a.free_pages(q);
    assert_eq!(hooks.bad.lock().unwrap().len(), 4);
    assert_eq!(check(&a).allocated, 1, "leaked, never reused");
    a.page(qpfn).unwrap().pt_add_entries(-1).unwrap();
    // SAFETY: the refused free leaked the block; this is its only handle.
    a.free_pages(unsafe { Pages::from_raw(qpfn, 0) });
    assert_restored(&a);
}

#[test]
fn fault_injection_every_nth_and_nofail() {
    let a = simple(2048, cfg());
    a.fail.configure(FaultAttr::every_nth(4));
    let mut live = Vec::new();
    let mut failures = 0;
    for _ in 0..100 {
        match a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0) {
            Ok(p) => live.push(p),
            Err(AllocError::Injected) => failures += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(failures, 25);
    for _ in 0..20 {
        live.push(a.alloc_pages(GFP_KERNEL | __GFP_NOFAIL, 0).unwrap());
    }
    assert_eq!(a.stats().fault_injected, 25);
    a.fail.disable();
    for p in live {
        a.free_pages(p);
    }
    assert_restored(&a);
}

#[test]
fn fault_injection_random_fraction_callers_survive() {
    // A "caller" that allocates a buffer of pages and backs out cleanly on failure.
    fn build(a: &PageAlloc<'_>, n: usize) -> Result<Vec<Pages>, AllocError> {
        let mut v = Vec::new();
        for i in 0..n {
            match a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, i % 3) {
                Ok(p) => v.push(p),
                Err(e) => {
                    v.into_iter().for_each(|p| a.free_pages(p));
                    return Err(e);
                }
            }
        }
        Ok(v)
    }
    let a = simple(4096, cfg());
    a.fail.configure(FaultAttr { min_order: 1, ..FaultAttr::random_percent(5, 7) });
    let (mut ok, mut err) = (0, 0);
    for _ in 0..50 {
        match build(&a, 20) {
            Ok(v) => {
                ok += 1;
                v.into_iter().for_each(|p| a.free_pages(p));
            }
            Err(_) => err += 1,
        }
        check(&a);
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    assert_restored(&a);
}

#[test]
fn nmi_while_locks_held_defers_and_accounts() {
    let a = simple(2048, cfg());
    let held: Vec<_> = (0..8).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    let big = a.alloc_pages(GFP_KERNEL, 5).unwrap();
    let z = &a.zones[0];
    {
        // The "interrupted" context holds the per-CPU and zone locks.
        let _pcp = a.pcp_lock_cpu(z, 0).unwrap();
        let _zone = z.area.lock();
        // The "NMI": allocation fails at once, frees are deferred.
        assert!(a.try_alloc_pages(NUMA_NO_NODE, 0).is_none());
        assert!(a.try_alloc_pages(0, 3).is_none());
        for p in held {
            a.free_pages_nolock(p);
        }
        a.free_pages_nolock(big);
        assert_eq!(z.nr_deferred.load(Relaxed), 8 + 32);
    }
    let s = a.stats(); // takes the zone lock: drains
    assert_eq!(s.zones[0].deferred, 0);
    assert_eq!(s.deferred_free, 9);
    assert_restored(&a);
}

#[test]
fn try_alloc_pages_uses_pcp_or_zone_when_free() {
    let mem = leak(VecMem::new(0, 2048));
    let a = PageAlloc::<HostPlatform>::new(metas(2048), Pfn(0), &[Pfn(0)..Pfn(2048)], mem, leak(NoHooks), cfg()).unwrap();
    assert!(a.try_alloc_pages(1, 0).is_none(), "no such node");
    assert!(a.try_alloc_pages(0, 4).is_none(), "order > 3");
    let p = a.try_alloc_pages(0, 2).unwrap();
    assert!(mem.all_equal(p.pfn(), 4, 0), "zeroed");
    // Only the per-CPU lock held: the zone path is used.
    let q = {
        let _pcp = a.pcp_lock_cpu(&a.zones[0], 0).unwrap();
        a.try_alloc_pages(0, 0).unwrap()
    };
    // Only the zone lock held: the per-CPU list still serves (it was refilled above).
    let r = {
        let _zone = a.zones[0].area.lock();
        a.try_alloc_pages(0, 2).unwrap()
    };
    for x in [p, q, r] {
        a.free_pages_nolock(x);
    }
    assert_restored(&a);
}

#[test]
fn multithreaded_stress_with_nolock_pair() {
    let a: &'static PageAlloc<'static> = leak(simple(8192, AllocConfig { nr_cpus: 2, ..cfg() }));
    let stop = leak(core::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..3u64 {
        handles.push(std::thread::spawn(move || {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ t;
            let mut live: Vec<Pages> = Vec::new();
            for i in 0..20_000u64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let order = (rng % 4) as usize;
                if live.len() < 64 && rng % 3 != 0 {
                    let p = if t == 0 { a.try_alloc_pages(0, order) } else { a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, order).ok() };
                    live.extend(p);
                } else if let Some(p) = live.pop() {
                    if t == 0 || i % 5 == 0 { a.free_pages_nolock(p) } else { a.free_pages(p) }
                }
            }
            for p in live {
                a.free_pages_nolock(p);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    stop.store(true, Relaxed);
    assert_restored(a);
    let s = a.stats();
    assert_eq!(s.zones[0].free, 8192);
}

#[test]
fn observability_formats() {
    let a = simple(4096, cfg());
    let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    let mut out = String::new();
    a.buddyinfo(&mut out).unwrap();
    assert!(out.starts_with("Node 0, zone    DMA32 "), "{out}");
    assert_eq!(out.lines().count(), 1);
    assert_eq!(out.split_whitespace().count(), 4 + NR_PAGE_ORDERS);
    out.clear();
    a.pagetypeinfo(&mut out).unwrap();
    assert!(out.contains("Page block order: 9\nPages per block:  512\n"));
    assert!(out.contains("Node    0, zone    DMA32, type    Unmovable "), "{out}");
    // Linux: "%-43s " then "%6d " per order, rows "Node %4d, zone %8s, type %12s "
    // then "%6lu ": the order columns line up with the counts.
    let header = out.lines().find(|l| l.starts_with("Free pages count")).unwrap();
    let row = out.lines().find(|l| l.starts_with("Node    0, zone    DMA32, type      Movable")).unwrap();
    assert_eq!(header.find("     0 "), Some(44), "{header}");
    assert_eq!(header.len(), row.len(), "{header}\n{row}");
    assert!(out.contains("Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate"), "{out}");
    out.clear();
    a.meminfo(&mut out).unwrap();
    assert!(out.starts_with("MemTotal:          16384 kB\n"), "{out}");
    out.clear();
    a.pageblocks(&mut out).unwrap();
    let map: String = out.lines().nth(1).unwrap().split_whitespace().nth(1).unwrap().into();
    assert_eq!(map.matches('.').count(), 7, "{map}");
    assert_eq!(map.matches('u').count(), 1, "claimed unmovable block with one page used: {map}");
    out.clear();
    a.vmstat(&mut out).unwrap();
    assert!(out.contains("extfrag_fallback 1\n"));
    a.free_pages(p);
}

// ------------------------------------------------------------ compaction

/// A test owner of movable pages: keeps its handles in a map keyed by pfn.
struct Owner {
    pages: Mutex<BTreeMap<u64, Pages>>,
    /// Migrations the owner still agrees to; at zero it refuses (page busy or pinned).
    budget: core::sync::atomic::AtomicUsize,
}

impl MigrateOps for Owner {
    fn migrate(&self, m: &Migration<'_>) {
        if self.budget.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_err() {
            return;
        }
        let mut pages = self.pages.lock().unwrap();
        let Some(old) = pages.remove(&m.old().0) else { return };
        m.copy_contents();
        match m.exchange(old) {
            Ok(new) => {
                pages.insert(new.pfn().0, new);
            }
            Err(old) => {
                pages.insert(old.pfn().0, old);
            }
        }
    }
}

fn owner() -> &'static Owner {
    leak(Owner { pages: Mutex::new(BTreeMap::new()), budget: usize::MAX.into() })
}

/// Allocates `n` movable pages owned by `o`, marked movable with `id`; page `i` is
/// filled with the byte `i` and its rmap says `vpn: i`.
fn fill_movable(a: &PageAlloc<'static>, o: &Owner, id: MovableOpsId, mem: &VecMem, n: usize) {
    for i in 0..n {
        let p = a.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap();
        let m = a.page(p.pfn()).unwrap();
        m.set_anon(Rmap { asid: 1, vpn: i as u64 }).unwrap();
        m.set_movable(id).unwrap();
        mem.fill(p.pfn(), i as u8);
        o.pages.lock().unwrap().insert(p.pfn().0, p);
    }
}

/// Unmaps and frees the pages of `o` whose pfn satisfies `drop`.
fn free_owned(a: &PageAlloc<'_>, o: &Owner, drop: impl Fn(u64) -> bool) {
    let mut pages = o.pages.lock().unwrap();
    let gone: Vec<u64> = pages.keys().copied().filter(|&pfn| drop(pfn)).collect();
    for pfn in gone {
        let p = pages.remove(&pfn).unwrap();
        a.page(p.pfn()).unwrap().anon_add_mapcount(-1).unwrap();
        a.free_pages(p);
    }
}

/// The pages `o` holds as `(pfn, vpn)`, in pfn order, after checking that each is
/// still its anonymous page, mapped once, movable through `id`, with the content
/// `fill_movable` gave it (the low byte of its vpn).
fn owned_pages(a: &PageAlloc<'_>, o: &Owner, id: MovableOpsId, mem: &VecMem) -> Vec<(u64, u64)> {
    let pages = o.pages.lock().unwrap();
    pages
        .keys()
        .map(|&pfn| {
            let m = a.page(Pfn(pfn)).unwrap();
            assert_eq!(m.movable_ops(), Some(id), "pfn {pfn} movable through its owner");
            match m.state() {
                PageState::Anon { rmap, mapcount: 1, movable: true } => {
                    assert!(mem.all_equal(Pfn(pfn), 1, rmap.vpn as u8), "content follows the page");
                    (pfn, rmap.vpn)
                }
                s => panic!("pfn {pfn}: {s:?}"),
            }
        })
        .collect()
}

fn vpns(pages: &[(u64, u64)]) -> Vec<u64> {
    let mut v: Vec<u64> = pages.iter().map(|&(_, vpn)| vpn).collect();
    v.sort();
    v
}

/// 2048 frames of movable pages owned by one owner, of which every 4th is kept:
/// no page block is free, but three quarters of memory is.
fn fragmented_by_owner() -> (&'static PageAlloc<'static>, &'static Owner, MovableOpsId, &'static VecMem) {
    let mem = leak(VecMem::new(0, 2048));
    let a: &'static PageAlloc<'static> =
        leak(PageAlloc::<HostPlatform>::new(metas(2048), Pfn(0), &[Pfn(0)..Pfn(2048)], mem, leak(NoHooks), cfg()).unwrap());
    let o = owner();
    let id = a.register_movable_ops(o).unwrap();
    fill_movable(a, o, id, mem, 2048);
    free_owned(a, o, |pfn| pfn % 4 != 0);
    a.drain_all_pages();
    assert!(a.alloc_pages(GFP_TRANSHUGE_LIGHT, 9).is_err(), "fragmented");
    (a, o, id, mem)
}

#[test]
fn compaction_frees_blocks_and_preserves_contents() {
    let (a, o, id, mem) = fragmented_by_owner();
    let before = owned_pages(a, o, id, mem);
    let freed = a.compact_memory();
    assert!(freed >= 2, "freed {freed} blocks");
    check(a);
    // Every page kept its content and rmap after moving.
    let after = owned_pages(a, o, id, mem);
    assert_eq!(after.len(), 512);
    assert_eq!(vpns(&after), vpns(&before));
    let huge = a.alloc_pages(GFP_TRANSHUGE_LIGHT, 9).unwrap();
    a.free_pages(huge);
    assert!(a.stats().compact_migrated >= 512);
    free_owned(a, o, |_| true);
    assert_restored(a);
}

/// The event counters compaction moves: stall, success, fail, migrated.
fn compact_events(a: &PageAlloc<'_>) -> [u64; 4] {
    let s = a.stats();
    [s.compact_stall, s.compact_success, s.compact_fail, s.compact_migrated]
}

#[test]
fn compaction_aborts_when_the_owner_refuses_and_loses_nothing() {
    let (a, o, id, mem) = fragmented_by_owner();
    let zone = &a.zones[0];
    let before = owned_pages(a, o, id, mem);
    let zones = a.stats().zones;
    let [stall, success, fail, migrated] = compact_events(a);

    // Refused at the first page: nothing moved, the target page went back and the
    // isolated block got its type back, so every list and counter is as before.
    o.budget.store(0, Relaxed);
    assert_eq!(a.compact_zone(zone), CompactResult::Aborted);
    check(a);
    assert_eq!(owned_pages(a, o, id, mem), before, "every page stays where it was, with its owner");
    assert_eq!(a.stats().zones, zones, "free lists and page-block types restored");
    assert_eq!(a.stats().zones[0].blocks_by_mt[MigrateType::Isolate.index()], 0);
    assert_eq!(compact_events(a), [stall + 1, success, fail + 1, migrated]);
    assert_eq!(a.compact_memory(), 0, "compact_memory gives up instead of looping");
    assert_eq!(a.stats().zones, zones);

    // Refused after 5 pages: those 5 moved (content and rmap with them), the rest
    // stayed, and the block is no longer isolated.
    o.budget.store(5, Relaxed);
    let [stall, success, fail, _] = compact_events(a);
    assert_eq!(a.compact_zone(zone), CompactResult::Aborted);
    check(a);
    let partly = owned_pages(a, o, id, mem);
    assert_eq!(partly.len(), before.len(), "nothing lost");
    assert_eq!(vpns(&partly), vpns(&before));
    assert_eq!(before.iter().filter(|p| !partly.contains(p)).count(), 5, "exactly the agreed pages moved");
    assert_eq!(compact_events(a), [stall + 1, success, fail + 1, migrated + 5]);
    let after = a.stats().zones[0];
    assert_eq!((after.free, after.allocated), (zones[0].free, zones[0].allocated));
    assert_eq!(after.blocks_by_mt, zones[0].blocks_by_mt, "no block left isolated");

    // Once the owner agrees again the same block empties.
    o.budget.store(usize::MAX, Relaxed);
    assert_eq!(a.compact_zone(zone), CompactResult::Success);
    check(a);
    assert_eq!(vpns(&owned_pages(a, o, id, mem)), vpns(&before));
    free_owned(a, o, |_| true);
    assert_restored(a);
}

#[test]
fn defrag_mode_compacts_instead_of_polluting() {
    for defrag in [false, true] {
        let mem = leak(VecMem::new(0, 4096));
        let config = AllocConfig { defrag_mode: defrag, pcp_batch: Some(1), ..cfg() };
        let a: &'static PageAlloc<'static> =
            leak(PageAlloc::<HostPlatform>::new(metas(4096), Pfn(0), &[Pfn(0)..Pfn(4096)], mem, leak(NoHooks), config).unwrap());
        let o = owner();
        let id = a.register_movable_ops(o).unwrap();
        fill_movable(a, o, id, mem, 4096);
        // Free 1 of 4 pages everywhere: movable blocks are 75 % used, too full to claim.
        free_owned(a, o, |pfn| pfn % 4 == 0);
        a.drain_all_pages();
        let before = a.stats();
        let u: Vec<_> = (0..100).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
        let s = a.stats();
        if defrag {
            assert_eq!(s.polluting - before.polluting, 0, "defrag mode never pollutes");
            assert!(s.compact_success > before.compact_success);
        } else {
            assert!(s.polluting - before.polluting > 0, "without defrag, unmovable pages land in movable blocks");
        }
        check(a);
        for p in u {
            a.free_pages(p);
        }
        free_owned(a, o, |_| true);
        assert_restored(a);
    }
}

// -------------------------------------------------------------- property

#[derive(Clone, Debug)]
enum Op {
    Alloc { order: usize, kind: u8 },
    Free(usize),
    FreeNolock(usize),
    /// `free_pages_bulk` of the last `n % (live + 1)` live blocks.
    FreeBulk(usize),
    TryAlloc(usize),
    Drain,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![3 => 0..4usize, 1 => 4..=MAX_ORDER], 0..4u8).prop_map(|(order, kind)| Op::Alloc { order, kind }),
        3 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::FreeNolock),
        1 => any::<usize>().prop_map(Op::FreeBulk),
        1 => (0..5usize).prop_map(Op::TryAlloc),
        1 => Just(Op::Drain),
        1 => Just(Op::Compact),
    ]
}

fn run_ops(ops: &[Op], config: AllocConfig) {
    let nr = 4096;
    let usable = [Pfn(0)..Pfn(1500), Pfn(1600)..Pfn(nr)];
    let a: &'static PageAlloc<'static> =
        leak(PageAlloc::<HostPlatform>::new(metas(nr), Pfn(0), &usable, &NoPhysMem, leak(NoHooks), config).unwrap());
    let o = owner();
    let id = a.register_movable_ops(o).unwrap();
    let managed = a.managed_pages();
    let mut live: Vec<Pages> = Vec::new();
    for op in ops {
        match *op {
            Op::Alloc { order, kind } => {
                let gfp = [GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_RECLAIMABLE, GFP_ATOMIC][kind as usize];
                if let Ok(p) = a.alloc_pages(gfp | __GFP_NOWARN, order) {
                    if kind == 1 && order == 0 {
                        a.page(p.pfn()).unwrap().set_movable(id).unwrap();
                        o.pages.lock().unwrap().insert(p.pfn().0, p);
                    } else {
                        live.push(p);
                    }
                }
            }
            Op::Free(i) | Op::FreeNolock(i) if !live.is_empty() => {
                let p = live.swap_remove(i % live.len());
                if matches!(op, Op::Free(_)) { a.free_pages(p) } else { a.free_pages_nolock(p) }
            }
            Op::Free(_) | Op::FreeNolock(_) => {
                let mut pages = o.pages.lock().unwrap();
                if let Some((&k, _)) = pages.iter().next() {
                    let p = pages.remove(&k).unwrap();
                    drop(pages);
                    a.free_pages(p);
                }
            }
            Op::FreeBulk(n) => {
                let batch = live.split_off(live.len() - n % (live.len() + 1));
                a.free_pages_bulk(batch);
            }
            Op::TryAlloc(order) => live.extend(a.try_alloc_pages(0, order)),
            Op::Drain => a.drain_all_pages(),
            Op::Compact => {
                a.compact_memory();
            }
        }
        let rep = check(a);
        assert_eq!(rep.free + rep.pcp + rep.deferred + rep.allocated, managed);
        // Live allocations never overlap (and match the allocator's count).
        let mut ranges: Vec<Range<u64>> = live.iter().map(Pages::pfn_range).collect();
        ranges.extend(o.pages.lock().unwrap().values().map(Pages::pfn_range));
        ranges.sort_by_key(|r| r.start);
        for w in ranges.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap {w:?}");
        }
        assert_eq!(ranges.iter().map(|r| r.end - r.start).sum::<u64>(), rep.allocated);
        // Per-type counters agree with the block map.
        let s = a.stats();
        let mut blocks = [0u64; MIGRATE_TYPES];
        let mut b = 0;
        while b < nr {
            blocks[a.block_mt(b).index()] += 1;
            b += PAGEBLOCK_NR_PAGES;
        }
        assert_eq!(blocks, s.zones[0].blocks_by_mt);
    }
    for p in live {
        a.free_pages(p);
    }
    for (_, p) in core::mem::take(&mut *o.pages.lock().unwrap()) {
        a.free_pages(p);
    }
    assert_restored(a);
    // Maximal blocks: every order-10 aligned, fully usable 1024-frame span is one free block.
    let s = a.stats();
    assert_eq!(s.zones[0].nr_free[MAX_ORDER].iter().sum::<u64>(), 3, "{:?}", s.zones[0].nr_free);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(&ops, cfg());
    }

    #[test]
    fn random_ops_keep_invariants_defrag(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(&ops, AllocConfig { defrag_mode: true, ..cfg() });
    }

    #[test]
    fn random_ops_keep_invariants_no_grouping(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(&ops, AllocConfig { group_by_mobility: false, ..cfg() });
    }
}

#[test]
fn pages_handle_layout() {
    // No padding (no narrow-store/wide-load forwarding stalls); the order lives in a
    // niche, so Result/Option of a handle fit in two registers.
    assert_eq!(core::mem::size_of::<Pages>(), 16);
    assert_eq!(core::mem::size_of::<Result<Pages, AllocError>>(), 16);
    assert_eq!(core::mem::size_of::<Option<Pages>>(), 16);
    for order in 0..=MAX_ORDER {
        // SAFETY: never freed; only the accessors are exercised.
        let p = unsafe { Pages::from_raw(Pfn(1024), order) };
        assert_eq!((p.pfn(), p.order(), p.nr_pages()), (Pfn(1024), order, 1 << order));
        assert_eq!(std::format!("{p:?}"), std::format!("Pages {{ pfn: {:?}, order: {order} }}", Pfn(1024)));
        p.leak();
    }
}

#[test]
fn fast_path_keeps_watermarks_dma32_and_counters() {
    // Two zones: DMA32 (4 GiB) and a small Normal zone; GFP_DMA32 must stay below 4 GiB
    // even though the fast path serves the first eligible zone's per-CPU list.
    let base = DMA32_END_PFN - 4096;
    let a = PageAlloc::<HostPlatform>::new(metas(8192), Pfn(base), &[Pfn(base)..Pfn(base + 8192)], leak(NoPhysMem), leak(NoHooks), cfg()).unwrap();
    let mut held = Vec::new();
    for _ in 0..200 {
        let p = a.alloc_pages(GFP_KERNEL | __GFP_DMA32, 0).unwrap();
        assert!(p.pfn().0 < DMA32_END_PFN);
        held.push(p);
        let q = a.alloc_pages(GFP_KERNEL, 0).unwrap();
        assert!(q.pfn().0 >= DMA32_END_PFN, "Normal first");
        held.push(q);
    }
    let v = a.stats();
    assert_eq!(v.pgalloc, 400);
    for p in held {
        a.free_pages(p);
    }
    assert_eq!(a.stats().pgfree, 400);
    assert_restored(&a);
    // Below the low watermark the fast path steps aside: the full path refuses.
    let a = simple(2048, AllocConfig { min_free_kbytes: Some(4 * 1024), ..cfg() });
    let mut held = Vec::new();
    while let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0) {
        held.push(p);
    }
    let wmark_min = a.zones[0].wmark[Watermark::Min as usize];
    assert!(wmark_min > 0);
    assert!((held.len() as u64) < a.managed_pages(), "the reserve below min stays untouched");
    // What ordinary allocations can still take is (almost) nothing: at most the
    // per-CPU lists, which it does not count.
    assert_eq!(a.free_above_min(), 0);
    let some: Vec<_> = held.drain(..100).collect();
    a.free_pages_bulk(some);
    a.drain_all_pages();
    assert!(a.free_above_min() >= 100 - 1, "freed pages count again: {}", a.free_above_min());
    for p in held {
        a.free_pages(p);
    }
    assert_restored(&a);
}

#[test]
fn free_pages_bulk_equals_free_pages_and_reports_bad() {
    let hooks = leak(CountingHooks::default());
    let a = PageAlloc::<HostPlatform>::new(metas(8192), Pfn(0), &[Pfn(0)..Pfn(8192)], leak(NoPhysMem), hooks, cfg()).unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut pages: Vec<Pages> = Vec::new();
    for i in 0..3000u64 {
        let order = [0, 0, 0, 1, 2, 3, 5][(i % 7) as usize];
        if let Ok(p) = a.alloc_pages(if i % 2 == 0 { GFP_KERNEL } else { GFP_HIGHUSER_MOVABLE }, order) {
            pages.push(p);
        }
    }
    for i in (1..pages.len()).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        pages.swap(i, (rng % (i as u64 + 1)) as usize);
    }
    // A double free inside the batch is reported, not applied twice.
    let dup_pfn = pages[5].pfn();
    // SAFETY: deliberately a second handle to test the bad-page report.
    pages.push(unsafe { Pages::from_raw(dup_pfn, pages[5].order()) });
    let n = pages.len();
    a.free_pages_bulk(pages);
    assert_eq!(*hooks.bad.lock().unwrap(), vec![dup_pfn]);
    assert_eq!(a.stats().pgfree, n as u64 - 1);
    check(&a);
    a.free_pages_bulk(Vec::new());
    assert_restored(&a);
}

#[test]
fn pipelined_bulk_free_merges_everything() {
    // Batches far larger than the prefetch chunk, odd sizes, all orders <= 3.
    for batch in [1u32, 5, 31, 32, 33, 100] {
        let a = simple(16384, AllocConfig { pcp_batch: Some(batch), ..cfg() });
        let mut pages = Vec::new();
        for i in 0..6000usize {
            pages.push(a.alloc_pages(GFP_KERNEL, i % 4 / 3).unwrap());
        }
        for (i, p) in pages.into_iter().enumerate().rev() {
            if i % 3 == 0 { a.free_pages(p) } else { a.free_pages_nolock(p) }
            if i % 1000 == 0 {
                check(&a);
            }
        }
        assert_restored(&a);
    }
}

// ------------------------------------- bulk free grouped by max-order block

/// xorshift64 Fisher-Yates shuffle (deterministic).
fn shuffle<T>(v: &mut [T], seed: u64) {
    crate::rng::XorShift64(seed).shuffle(v)
}

/// Free blocks per order, summed over migrate types (independent of the order in
/// which blocks were freed, unlike the per-type split after mixed merges).
fn free_by_order(a: &PageAlloc<'_>) -> [u64; NR_PAGE_ORDERS] {
    let s = a.stats();
    core::array::from_fn(|o| s.zones.iter().map(|z| z.nr_free[o].iter().sum::<u64>()).sum())
}

#[test]
fn sorted_bulk_free_of_shuffled_batch_merges_back_like_free_pages() {
    // Two zones (the batch straddles 4 GiB), all three mergeable block types, orders
    // 0..=3 through the per-CPU lists and 4 / 9 straight to the buddy, every frame
    // allocated; then one shuffled batch, far above BULK_SORT_MIN.
    let base = DMA32_END_PFN - 8192;
    let nr = 16384;
    let mk = || PageAlloc::<HostPlatform>::new(metas(nr), Pfn(base), &[Pfn(base)..Pfn(base + nr)], &NoPhysMem, leak(NoHooks), cfg()).unwrap();
    let (bulk, single) = (mk(), mk());
    let gfps = [GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_RECLAIMABLE];
    let orders = [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 0, 0];
    let fill = |a: &PageAlloc<'static>| {
        let mut held = Vec::new();
        let mut i = 0usize;
        loop {
            let order = if i % 401 == 400 { 9 } else { orders[i % orders.len()] };
            match a.alloc_pages(gfps[i % 3] | __GFP_NOWARN, order) {
                Ok(p) => held.push(p),
                Err(_) if order > 0 => {}
                Err(_) => break,
            }
            i += 1;
        }
        held
    };
    let (mut b, mut s) = (fill(&bulk), fill(&single));
    assert_eq!(check(&bulk).allocated, nr, "every frame allocated");
    shuffle(&mut b, 7);
    shuffle(&mut s, 7);
    assert!(b.len() > BULK_SORT_MIN * 10);
    let n = b.len() as u64;
    let (before_b, before_s) = (bulk.stats(), single.stats());
    bulk.free_pages_bulk(b);
    for p in s {
        single.free_pages(p);
    }
    let (after_b, after_s) = (bulk.stats(), single.stats());
    assert_eq!(after_b.pgfree - before_b.pgfree, n);
    assert_eq!(after_s.pgfree - before_s.pgfree, n);
    assert_eq!(after_b.bad_page, 0);
    // Frees do not allocate, fall back or pollute.
    for (x, y) in [(after_b, before_b), (after_s, before_s)] {
        assert_eq!((x.pgalloc, x.fallback, x.polluting, x.steal, x.claim_block), (y.pgalloc, y.fallback, y.polluting, y.steal, y.claim_block));
    }
    // The per-CPU lists took what fits below `high`; the rest went to the buddy in
    // merged runs.
    let high = bulk.pcp_room(&bulk.zones[0]) as u64 + 1 + after_b.zones[0].pcp;
    let on_lists: u64 = after_b.zones.iter().map(|z| z.pcp).sum();
    assert!(on_lists > 0 && on_lists <= 2 * high, "{on_lists} on the lists, high {high}");
    check(&bulk);
    bulk.drain_all_pages();
    single.drain_all_pages();
    assert_restored(&bulk);
    assert_restored(&single);
    // Everything is back in maximal blocks, exactly as after the single frees.
    let f = free_by_order(&bulk);
    assert_eq!(f[MAX_ORDER], nr >> MAX_ORDER);
    assert_eq!(f, free_by_order(&single));
    let blocks: u64 = bulk.stats().zones.iter().map(|z| z.blocks_by_mt.iter().sum::<u64>()).sum();
    assert_eq!(blocks, nr / PAGEBLOCK_NR_PAGES);
}

#[test]
fn bulk_free_of_part_of_memory_equals_single_frees_after_drain() {
    // Part of the memory freed (so runs and lone pages mix), one page block
    // isolated meanwhile (its runs must land on the Isolate lists, unmerged with
    // its neighbours), against a twin freeing the same handles one by one.
    let nr = 8192;
    let (bulk, single) = (simple(nr, cfg()), simple(nr, cfg()));
    let gfps = [GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | __GFP_RECLAIMABLE];
    let fill = |a: &PageAlloc<'static>| {
        let mut held = Vec::new();
        for i in 0.. {
            match a.alloc_pages(gfps[i % 3] | __GFP_NOWARN, [0, 0, 1, 0, 2][i % 5]) {
                Ok(p) => held.push(p),
                Err(_) if i % 5 == 2 || i % 5 == 4 => {} // orders 1 and 2
                Err(_) => break,
            }
        }
        held
    };
    let (mut b, mut s) = (fill(&bulk), fill(&single));
    assert_eq!(check(&bulk).allocated, nr);
    let isolated = 3 * PAGEBLOCK_NR_PAGES;
    for a in [&bulk, &single] {
        let z = &a.zones[a.zone_idx(isolated)];
        let mut area = a.lock_zone(z);
        let mt = a.block_mt(isolated);
        a.move_freepages_block(z, &mut area, isolated, mt, MigrateType::Isolate);
    }
    shuffle(&mut b, 11);
    shuffle(&mut s, 11);
    // Keep every third handle: what is freed has gaps, lone pages and runs.
    let (mut kept_b, mut kept_s) = (Vec::new(), Vec::new());
    let (mut free_b, mut free_s) = (Vec::new(), Vec::new());
    for (i, (x, y)) in b.into_iter().zip(s).enumerate() {
        assert_eq!((x.pfn(), x.order()), (y.pfn(), y.order()), "twins allocate alike");
        if i % 3 == 0 { (kept_b.push(x), kept_s.push(y)) } else { (free_b.push(x), free_s.push(y)) };
    }
    let n = free_b.len() as u64;
    bulk.free_pages_bulk(free_b);
    for p in free_s {
        single.free_pages(p);
    }
    assert_eq!(bulk.stats().pgfree, single.stats().pgfree);
    assert!(n > 1000);
    check(&bulk);
    bulk.drain_all_pages();
    single.drain_all_pages();
    assert_eq!(free_by_order(&bulk), free_by_order(&single));
    for a in [&bulk, &single] {
        let s = a.stats();
        let iso: u64 = s.zones.iter().map(|z| z.free_by_mt[MigrateType::Isolate.index()]).sum();
        let in_block = (isolated..isolated + PAGEBLOCK_NR_PAGES).filter(|&p| a.meta(p).kind() == Kind::Buddy).map(|p| 1u64 << a.meta(p).order()).sum::<u64>();
        assert_eq!(iso, in_block, "the isolated block's free pages are on the Isolate lists");
        assert!(iso > 0);
    }
    for (x, y) in kept_b.into_iter().zip(kept_s) {
        bulk.free_pages(x);
        single.free_pages(y);
    }
    check(&bulk);
}

#[test]
fn bulk_free_fills_the_per_cpu_lists_before_merging() {
    let a = simple(8192, cfg());
    let pcp = || a.stats().zones.iter().map(|z| z.pcp).sum::<u64>();
    assert_eq!(pcp(), 0);
    let high = a.pcp_room(&a.zones[0]) as u64 + 1; // empty lists: room = high - 1
    let mut first: Vec<Pages> = (0..high + 30).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    let second = first.split_off(high as usize - 10); // 40 pages, room left for 10
    let block = |v: &[Pages]| v.iter().map(|p| p.pfn().0 >> MAX_ORDER).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(block(&first).len(), 1, "one 4 MiB share each");
    assert_eq!(block(&second).len(), 1);
    a.drain_all_pages();
    assert_eq!(pcp(), 0);
    // Fits below `high`: onto the per-CPU lists, for the next allocations.
    let n = first.len() as u64;
    a.free_pages_bulk(first);
    assert_eq!(pcp(), n);
    // Does not fit any more: the lists are filled up to just below `high` (no
    // trim), the other 31 pages are merged into the buddy.
    let before = check(&a).free;
    a.free_pages_bulk(second);
    assert_eq!(pcp(), high - 1);
    assert_eq!(check(&a).free - before, 31);
    check(&a);
    assert_restored(&a);
}

#[test]
fn sorted_bulk_free_refuses_double_and_foreign_frees_in_the_batch() {
    let hooks = leak(CountingHooks::default());
    let base = 1 << MAX_ORDER; // non-zero, so a pfn below the span can be forged
    let a = PageAlloc::<HostPlatform>::new(metas(8192), Pfn(base), &[Pfn(base)..Pfn(base + 8192)], leak(NoPhysMem), hooks, cfg()).unwrap();
    let mut pages: Vec<Pages> = (0..2000).map(|i| a.alloc_pages(if i % 2 == 0 { GFP_KERNEL } else { GFP_HIGHUSER_MOVABLE }, i % 3).unwrap()).collect();
    let mut expect_bad = Vec::new();
    // SAFETY (test): deliberately forged handles, to check that the bulk path
    // refuses them exactly as `free_pages` does.
    unsafe {
        for k in [3, 1000, 1999] {
            expect_bad.push(pages[k].pfn());
            pages.push(Pages::from_raw(pages[k].pfn(), pages[k].order())); // double free
        }
        expect_bad.push(Pfn(base + 8192 + 5));
        pages.push(Pages::from_raw(Pfn(base + 8192 + 5), 0)); // beyond the span
        expect_bad.push(Pfn(3));
        pages.push(Pages::from_raw(Pfn(3), 0)); // below the base
        expect_bad.push(Pfn(base + 8190));
        pages.push(Pages::from_raw(Pfn(base + 8190), 2)); // runs past the end
    }
    shuffle(&mut pages, 99);
    let n = pages.len() as u64;
    let pgfree = a.stats().pgfree;
    a.free_pages_bulk(pages);
    let mut bad = hooks.bad.lock().unwrap().clone();
    bad.sort();
    expect_bad.sort();
    assert_eq!(bad, expect_bad);
    assert_eq!(a.stats().bad_page, expect_bad.len() as u64);
    assert_eq!(a.stats().pgfree - pgfree, n - expect_bad.len() as u64);
    check(&a);
    assert_restored(&a);
    assert_eq!(free_by_order(&a)[MAX_ORDER], 8);
}

#[test]
fn bulk_free_takes_arrays_and_small_unsorted_batches() {
    let a = simple(4096, cfg());
    let arr: [Pages; 3] = core::array::from_fn(|i| a.alloc_pages(GFP_KERNEL, i).unwrap());
    let pcp = || a.stats().zones.iter().map(|z| z.pcp).sum::<u64>();
    let before = pcp();
    a.free_pages_bulk(arr);
    // Fewer than BULK_MERGE_MIN blocks of one 4 MiB: the per-CPU path, as `free_pages`.
    assert_eq!(pcp() - before, 1 + 2 + 4);
    let small: Vec<Pages> = (0..BULK_SORT_MIN).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    a.free_pages_bulk(small);
    assert_eq!(a.stats().pgfree, 3 + BULK_SORT_MIN as u64);
    assert_restored(&a);
}

// ------------------------------------------------------ GFP retry semantics

/// Hooks with a fake reclaimable "cache" of pages: `direct_reclaim` frees up to
/// `per_call` of them, but only from call number `free_from_call` on (earlier
/// calls report no progress unless `fake_progress`, which claims progress
/// without freeing anything).
struct CacheHooks {
    alloc: std::sync::OnceLock<&'static PageAlloc<'static>>,
    cache: Mutex<Vec<Pages>>,
    calls: AtomicU64,
    gfps: Mutex<Vec<Gfp>>,
    stalls: Mutex<Vec<u64>>,
    free_from_call: u64,
    per_call: usize,
    fake_progress: AtomicBool,
    /// `reclaim_throttle` calls, and whether they may wait: a wait frees
    /// `frees_while_waiting` cache pages (what another task or an interrupt
    /// handler would free while the caller sleeps).
    throttles: AtomicU64,
    can_wait: AtomicBool,
    frees_while_waiting: AtomicU64,
}
impl CacheHooks {
    fn free_cached(&self, n: u64) -> u64 {
        let a = self.alloc.get().unwrap();
        let mut freed = 0;
        for _ in 0..n {
            let Some(p) = self.cache.lock().unwrap().pop() else { break };
            freed += p.nr_pages();
            a.free_pages(p);
        }
        freed
    }
}
impl AllocHooks for CacheHooks {
    fn direct_reclaim(&self, gfp: Gfp, _order: usize) -> u64 {
        let call = self.calls.fetch_add(1, Relaxed) + 1;
        self.gfps.lock().unwrap().push(gfp);
        if call < self.free_from_call {
            return self.fake_progress.load(Relaxed) as u64;
        }
        let freed = self.free_cached(self.per_call as u64);
        if freed == 0 { self.fake_progress.load(Relaxed) as u64 } else { freed }
    }
    fn nofail_stall(&self, _gfp: Gfp, _order: usize, retries: u64) {
        self.stalls.lock().unwrap().push(retries);
    }
    fn reclaim_throttle(&self, _gfp: Gfp) -> bool {
        self.throttles.fetch_add(1, Relaxed);
        if !self.can_wait.load(Relaxed) {
            return false;
        }
        self.free_cached(self.frees_while_waiting.load(Relaxed));
        true
    }
}

/// An allocator with every page allocated: `cached` of them in the hooks' cache,
/// the rest returned as "held" pages.
fn under_pressure(cached: usize, free_from_call: u64, fake_progress: bool) -> (&'static PageAlloc<'static>, &'static CacheHooks, Vec<Pages>) {
    let hooks = leak(CacheHooks {
        alloc: std::sync::OnceLock::new(),
        cache: Mutex::new(Vec::new()),
        calls: AtomicU64::new(0),
        gfps: Mutex::new(Vec::new()),
        stalls: Mutex::new(Vec::new()),
        free_from_call,
        per_call: 8,
        fake_progress: AtomicBool::new(false),
        throttles: AtomicU64::new(0),
        can_wait: AtomicBool::new(false),
        frees_while_waiting: AtomicU64::new(0),
    });
    let a: &'static PageAlloc<'static> =
        leak(PageAlloc::<HostPlatform>::new(metas(1024), Pfn(0), &[Pfn(0)..Pfn(1024)], &NoPhysMem, hooks, cfg()).unwrap());
    hooks.alloc.set(a).ok().unwrap();
    let mut held = Vec::new();
    while let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0) {
        held.push(p);
    }
    assert_eq!(held.len(), 1024);
    hooks.cache.lock().unwrap().extend(held.drain(..cached));
    // Reset the counters of the fill (its last allocation reclaimed nothing).
    hooks.calls.store(0, Relaxed);
    hooks.throttles.store(0, Relaxed);
    hooks.gfps.lock().unwrap().clear();
    hooks.fake_progress.store(fake_progress, Relaxed);
    (a, hooks, held)
}

fn release(a: &PageAlloc<'_>, hooks: &CacheHooks, held: Vec<Pages>, got: impl IntoIterator<Item = Pages>) {
    for p in held.into_iter().chain(got).chain(hooks.cache.lock().unwrap().drain(..)) {
        a.free_pages(p);
    }
    assert_restored(a);
}

#[test]
fn gfp_kernel_reclaims_under_pressure_and_succeeds() {
    let (a, hooks, held) = under_pressure(16, 1, false);
    let p = a.alloc_pages(GFP_KERNEL, 0).expect("reclaim freed cache pages");
    assert!(hooks.calls.load(Relaxed) >= 1);
    assert!(hooks.gfps.lock().unwrap().iter().all(|&g| g == GFP_KERNEL), "the hook sees the caller's flags");
    // NOFS callers reach the hook with __GFP_FS cleared (the registry skips FS shrinkers).
    // (8 freed: 7 left after `p`; the 8th NOFS allocation needs reclaim again.)
    let qs: Vec<Pages> = (0..8).map(|_| a.alloc_pages(GFP_NOFS, 0).unwrap()).collect();
    assert_eq!(*hooks.gfps.lock().unwrap().last().unwrap(), GFP_NOFS);
    release(a, hooks, held, qs.into_iter().chain([p]));
}

#[test]
fn gfp_nowait_and_atomic_fail_fast_without_reclaim() {
    let (a, hooks, held) = under_pressure(16, 1, false);
    assert_eq!(a.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0).err(), Some(AllocError::NoMemory));
    assert_eq!(a.alloc_pages(GFP_ATOMIC | __GFP_NOWARN, 0).err(), Some(AllocError::NoMemory));
    assert_eq!(hooks.calls.load(Relaxed), 0, "no direct reclaim for non-blocking requests");
    release(a, hooks, held, []);
}

#[test]
fn gfp_noretry_reclaims_at_most_once() {
    // Reclaim "makes progress" but frees nothing: GFP_KERNEL retries up to the
    // bound, NORETRY exactly once.
    let (a, hooks, held) = under_pressure(0, 1, true);
    assert!(a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 0).is_err());
    assert_eq!(hooks.calls.load(Relaxed), 1);
    hooks.calls.store(0, Relaxed);
    assert!(a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0).is_err());
    assert_eq!(hooks.calls.load(Relaxed), MAX_RECLAIM_RETRIES as u64, "bounded retries while progress is reported");
    release(a, hooks, held, []);
}

#[test]
fn gfp_kernel_gives_up_without_progress() {
    // Reclaim would free only from its 5th call: GFP_KERNEL stops at the first
    // round without progress.
    let (a, hooks, held) = under_pressure(16, 5, false);
    assert!(a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0).is_err());
    assert_eq!(hooks.calls.load(Relaxed), 1);
    release(a, hooks, held, []);
}

#[test]
fn pgalloc_counts_buddy_allocations_like_pgfree_counts_frees() {
    let a = simple(4096, cfg());
    let s0 = a.stats();
    // Order 4 comes from the buddy; so does an NMI-style allocation that finds this
    // CPU's lists locked (the zone lock is free).
    let p = a.alloc_pages(GFP_KERNEL, 4).unwrap();
    let q = {
        let _pcp = a.pcp_lock_cpu(&a.zones[0], 0).unwrap();
        a.try_alloc_pages(NUMA_NO_NODE, 3).unwrap()
    };
    let r = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    let s1 = a.stats();
    a.free_pages(p);
    a.free_pages_nolock(q);
    a.free_pages(r);
    let s2 = a.stats();
    assert_eq!((s1.pgalloc - s0.pgalloc, s2.pgfree - s1.pgfree), (3, 3));
    assert_restored(&a);
}

#[test]
fn gfp_kernel_waits_after_a_round_without_progress_and_retries() {
    // Reclaim frees nothing, but memory is freed while the caller waits (by
    // another task, in the kernel): the retry after the wait succeeds.
    let (a, hooks, held) = under_pressure(16, u64::MAX, false);
    hooks.can_wait.store(true, Relaxed);
    hooks.frees_while_waiting.store(1, Relaxed);
    let s0 = a.stats();
    let p = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0).expect("memory freed during the wait");
    assert_eq!((hooks.calls.load(Relaxed), hooks.throttles.load(Relaxed)), (1, 1));
    let s1 = a.stats();
    assert_eq!((s1.reclaim_throttle - s0.reclaim_throttle, s1.reclaim_throttle_skipped - s0.reclaim_throttle_skipped), (1, 0));
    // A context that cannot sleep does not wait, so nothing was freed: it fails.
    hooks.can_wait.store(false, Relaxed);
    assert!(a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0).is_err());
    assert_eq!(hooks.throttles.load(Relaxed), 2);
    assert_eq!(a.stats().reclaim_throttle_skipped - s1.reclaim_throttle_skipped, 1);
    // Neither non-blocking requests nor __GFP_NORETRY wait.
    hooks.can_wait.store(true, Relaxed);
    assert!(a.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0).is_err());
    assert!(a.alloc_pages(GFP_ATOMIC | __GFP_NOWARN, 0).is_err());
    assert!(a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 0).is_err());
    assert_eq!(hooks.throttles.load(Relaxed), 2);
    // A round that made progress does not wait either (it retries at once).
    let (a2, hooks2, held2) = under_pressure(16, 1, false);
    hooks2.can_wait.store(true, Relaxed);
    let q = a2.alloc_pages(GFP_KERNEL, 0).unwrap();
    assert_eq!(hooks2.throttles.load(Relaxed), 0);
    release(a2, hooks2, held2, [q]);
    release(a, hooks, held, [p]);
}

#[test]
fn gfp_nofail_loops_until_reclaim_frees() {
    let (a, hooks, held) = under_pressure(16, 5, false);
    let p = a.alloc_pages(GFP_KERNEL | __GFP_NOFAIL, 0).expect("NOFAIL never fails");
    assert_eq!(hooks.calls.load(Relaxed), 5);
    assert_eq!(hooks.throttles.load(Relaxed), 4, "each round without progress asks to wait");
    assert!(hooks.stalls.lock().unwrap().is_empty());
    release(a, hooks, held, [p]);
    // Long loops are reported every NOFAIL_STALL_INTERVAL retries.
    let (a, hooks, held) = under_pressure(16, 2 * NOFAIL_STALL_INTERVAL + 1, false);
    let p = a.alloc_pages(GFP_KERNEL | __GFP_NOFAIL, 0).unwrap();
    assert_eq!(*hooks.stalls.lock().unwrap(), [NOFAIL_STALL_INTERVAL, 2 * NOFAIL_STALL_INTERVAL]);
    release(a, hooks, held, [p]);
}

// ------------------------------------------- CPU-local per-CPU list protection


fn local_alloc(nr: u64, nr_cpus: usize) -> &'static PageAlloc<'static, LocalCpu> {
    leak(PageAlloc::<LocalCpu>::new(metas(nr), Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, leak(NoHooks), AllocConfig { nr_cpus, ..cfg() }).unwrap())
}

#[test]
fn cpu_local_pcp_fast_path_and_nmi_on_held_lists() {
    let a = local_alloc(2048, 1);
    let pages: Vec<Pages> = (0..100).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    for p in pages {
        a.free_pages(p);
    }
    assert!(a.stats().zones[0].pcp > 0);
    let q = a.alloc_pages(GFP_KERNEL, 0).unwrap();
    {
        // The interrupted context holds the lists' flag and the zone lock; the "NMI"
        // sees the flag (same CPU), fails its allocation and defers its free.
        let _held = a.hold_locks(0);
        assert!(a.zones[0].pcp[0].lock.is_locked());
        assert!(a.try_alloc_pages(NUMA_NO_NODE, 0).is_none());
        a.free_pages_nolock(q);
        assert_eq!(a.zones[0].nr_deferred.load(Relaxed), 1);
    }
    assert!(!a.zones[0].pcp[0].lock.is_locked());
    a.drain_all_pages();
    a.drain_deferred_frees();
    let rep = a.check_consistency().unwrap();
    assert_eq!((rep.allocated, rep.free), (0, 2048));
}

#[test]
#[should_panic(expected = "current CPU")]
fn cpu_local_hold_locks_of_another_cpu_panics() {
    let a = local_alloc(1024, 2);
    let _held = a.hold_locks(1); // this thread is CPU 0
}

#[test]
fn cpu_local_remote_drain_is_a_request_done_by_the_owner() {
    let a = local_alloc(4096, 2);
    let pages: Vec<Pages> = (0..64).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
    // "CPU 1" frees them onto its own lists.
    let pfns: Vec<(u64, usize)> = pages.into_iter().map(|p| (p.leak().0, 0)).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            set_test_cpu(1);
            for &(pfn, order) in &pfns {
                // SAFETY: leaked above, freed once.
                a.free_pages(unsafe { Pages::from_raw(Pfn(pfn), order) });
            }
        });
    });
    let on_cpu1 = a.zones[0].pcp[1].count.load(Relaxed);
    assert_eq!(on_cpu1, 64);
    // CPU 0 cannot touch CPU 1's lists: the drain is only requested.
    a.drain_all_pages();
    assert_eq!(a.zones[0].pcp[1].count.load(Relaxed), 64);
    assert!(a.zones[0].pcp[1].drain_req.load(Relaxed));
    let rep = a.check_consistency().unwrap(); // trusts CPU 1's counter
    assert_eq!(rep.pcp, 64);
    // CPU 1's next allocation misses the fast path and drains first.
    std::thread::scope(|s| {
        s.spawn(|| {
            set_test_cpu(1);
            let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
            assert!(!a.zones[0].pcp[1].drain_req.load(Relaxed));
            a.free_pages(p);
            a.drain_pages(1);
            assert_eq!(a.zones[0].pcp[1].count.load(Relaxed), 0);
        });
    });
    let rep = a.check_consistency().unwrap();
    assert_eq!((rep.allocated, rep.pcp), (0, 0));
}

#[test]
fn cpu_local_cpu_without_lists_uses_the_buddy() {
    let a = local_alloc(1024, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            set_test_cpu(5); // >= nr_cpus: no per-CPU lists
            let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
            a.free_pages(p);
            assert!(a.try_alloc_pages(0, 0).is_some_and(|p| {
                a.free_pages_nolock(p);
                true
            }));
        });
    });
    let rep = a.check_consistency().unwrap();
    assert_eq!((rep.allocated, rep.pcp), (0, 0));
}

#[test]
fn cpu_local_two_cpus_hammer_own_lists_and_cross_free() {
    // Two "CPUs" (threads with distinct ids) allocate on their own lists and free
    // each other's pages (onto the freeing CPU's lists); the slow paths (refill,
    // trim, drain requests from the other CPU) run concurrently with the zone lock.
    let a = local_alloc(8192, 2);
    let (tx0, rx1) = std::sync::mpsc::channel::<(u64, usize)>();
    let (tx1, rx0) = std::sync::mpsc::channel::<(u64, usize)>();
    std::thread::scope(|s| {
        for (cpu, tx, rx) in [(0usize, tx0, rx0), (1, tx1, rx1)] {
            s.spawn(move || {
                set_test_cpu(cpu);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ cpu as u64;
                let mut mine = Vec::new();
                for i in 0..20_000u32 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let order = [0, 0, 0, 1, 3][(rng % 5) as usize];
                    if let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, order) {
                        mine.push(p);
                    }
                    if mine.len() > 64 || rng & 1 == 0 {
                        if let Some(p) = mine.pop() {
                            if rng & 2 == 0 {
                                let o = p.order();
                                let _ = tx.send((p.leak().0, o));
                            } else {
                                a.free_pages(p);
                            }
                        }
                    }
                    while let Ok((pfn, o)) = rx.try_recv() {
                        // SAFETY: sent once by the other CPU after leaking it.
                        a.free_pages(unsafe { Pages::from_raw(Pfn(pfn), o) });
                    }
                    if i % 5000 == 0 {
                        a.drain_all_pages(); // own lists now, a request for the other
                    }
                }
                drop(tx);
                for p in mine {
                    a.free_pages(p);
                }
                // Wait for the other CPU's last pages, then drain our own lists.
                for (pfn, o) in rx {
                    // SAFETY: as above.
                    a.free_pages(unsafe { Pages::from_raw(Pfn(pfn), o) });
                }
                a.drain_pages(cpu);
            });
        }
    });
    a.drain_deferred_frees();
    let rep = a.check_consistency().unwrap();
    assert_eq!((rep.allocated, rep.pcp, rep.free), (0, 0, 8192));
}
