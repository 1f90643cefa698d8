//! Page-allocator micro-benchmarks (rdtsc harness, `harness = false`).
//!
//! Run: `cargo bench -p mm --bench page_alloc`. Prints a Markdown table; medians over
//! repeated batches, ratios measured in the same run. See docs/benchmarks.md.

mod util;
use util::{median, rdtsc, CpuLocal, Rng};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use buddy_system_allocator::FrameAllocator;
use mm::addr::Pfn;
use mm::compaction::{MigrateOps, Migration};
use mm::gfp::*;
use mm::page::{PageMeta, Rmap, metadata_frames};
use mm::page_alloc::{AllocConfig, NoHooks, NoPhysMem, PageAlloc, Pages};
use mm::sync::HostPlatform;

type Alloc = PageAlloc<'static, HostPlatform>;

fn new_alloc_local(nr: u64) -> PageAlloc<'static, CpuLocal> {
    PageAlloc::new(metas(nr), Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, &NoHooks, AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() }).unwrap()
}


fn metas(n: u64) -> &'static [PageMeta] {
    Box::leak((0..n).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice())
}

fn new_alloc(nr: u64) -> Alloc {
    PageAlloc::new(metas(nr), Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, &NoHooks, AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() }).unwrap()
}


/// Cycles per alloc+free pair, median of `batches` batches of `n` pairs.
fn pair_cycles(mut pair: impl FnMut(), batches: usize, n: usize) -> f64 {
    for _ in 0..n * 4 {
        pair();
    }
    let v = (0..batches)
        .map(|_| {
            let t0 = rdtsc();
            for _ in 0..n {
                pair();
            }
            (rdtsc() - t0) as f64 / n as f64
        })
        .collect();
    median(v)
}

struct Owner(Mutex<BTreeMap<u64, Pages>>);
impl MigrateOps for Owner {
    fn migrate(&self, m: &Migration<'_>) {
        let mut map = self.0.lock().unwrap();
        if let Some(old) = map.remove(&m.old().0) {
            m.copy_contents();
            match m.exchange(old) {
                Ok(new) => map.insert(new.pfn().0, new),
                Err(old) => map.insert(old.pfn().0, old),
            };
        }
    }
}

/// Metadata for `n` frames. With `huge`, in a 2 MiB-aligned region advised for
/// transparent huge pages, as the kernel's direct map maps it (bootloader 0.11 maps
/// physical memory with 2 MiB pages); otherwise in ordinary 4 KiB-page heap memory.
fn metas_in(n: u64, huge: bool) -> &'static [PageMeta] {
    if !huge {
        return metas(n);
    }
    const HUGE: usize = 2 << 20;
    let bytes = (n as usize * size_of::<PageMeta>()).next_multiple_of(HUGE);
    let layout = std::alloc::Layout::from_size_align(bytes, HUGE).unwrap();
    unsafe extern "C" {
        fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
    }
    // SAFETY: layout has a non-zero size; the whole region is zeroed before the slice
    // is made, and an all-zero PageMeta is valid (all atomics, documented as
    // `Reserved`); madvise only changes the backing of our own mapping. Not
    // `alloc_zeroed`: that would touch the pages (as 4 KiB pages) before the advice.
    unsafe {
        let p = std::alloc::alloc(layout);
        assert!(!p.is_null());
        madvise(p, bytes, 14 /* MADV_HUGEPAGE */);
        p.write_bytes(0, bytes); // also faults it in now, not inside a timed loop
        std::slice::from_raw_parts(p as *const PageMeta, n as usize)
    }
}

/// `AnonHugePages` of this process (kB), to show whether THP took effect.
fn anon_huge_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("AnonHugePages:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    // `cargo bench -p mm --bench page_alloc -- pair` runs only the rows whose group matches.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let run = |group: &str| filter.as_deref().is_none_or(|f| group.contains(f));
    let mut rows: Vec<(String, String)> = Vec::new();
    if filter.as_deref() == Some("profile-pair-local") {
        let a = Box::leak(Box::new(new_alloc_local(65536)));
        for _ in 0..100_000_000 {
            let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
            a.free_pages(black_box(p));
        }
        return;
    }
    if filter.as_deref() == Some("profile-pair") {
        // For `perf stat` / `perf record`: only our fast-path pair, 10^8 times.
        let a = Box::leak(Box::new(new_alloc(65536)));
        for _ in 0..100_000_000 {
            let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
            a.free_pages(black_box(p));
        }
        return;
    }

    // 1. order-0 pair on the per-CPU fast path vs buddy_system_allocator, same harness
    //    (median of 501 samples of 1000 pairs), both allocators in two states.
    if run("pair") {
        const SAMPLES: usize = 501;
        const PAIRS: usize = 1000;
        let a = Box::leak(Box::new(new_alloc(65536)));
        let ours = pair_cycles(
            || {
                let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
                a.free_pages(black_box(p));
            },
            SAMPLES,
            PAIRS,
        );
        // The peer fresh: one 65536-frame block, so alloc(1) splits 16 times and
        // dealloc merges 16 times (its worst case; shown for completeness).
        let mut fa_fresh = FrameAllocator::<32>::new();
        fa_fresh.add_frame(0, 65536);
        let peer_fresh = pair_cycles(
            || {
                let f = fa_fresh.alloc(1).unwrap();
                fa_fresh.dealloc(black_box(f), 1);
            },
            SAMPLES,
            PAIRS,
        );
        // Fragment both a little, like a running system: 4096 single frames
        // allocated, every other one freed again (2048 free order-0 holes).
        let mut fa = FrameAllocator::<32>::new();
        fa.add_frame(0, 65536);
        let held: Vec<usize> = (0..4096).map(|_| fa.alloc(1).unwrap()).collect();
        for f in held.iter().step_by(2) {
            fa.dealloc(*f, 1);
        }
        let peer = pair_cycles(
            || {
                let f = fa.alloc(1).unwrap();
                fa.dealloc(black_box(f), 1);
            },
            SAMPLES,
            PAIRS,
        );
        let mut ours_held: Vec<Pages> = (0..4096).map(|_| a.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
        let mut keep = Vec::new();
        for (i, p) in ours_held.drain(..).enumerate() {
            if i % 2 == 0 { a.free_pages(p) } else { keep.push(p) }
        }
        let ours_frag = pair_cycles(
            || {
                let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
                a.free_pages(black_box(p));
            },
            SAMPLES,
            PAIRS,
        );
        keep.into_iter().for_each(|p| a.free_pages(p));
        // The same with the CPU-local (flag-protected) per-CPU lists.
        let l = Box::leak(Box::new(new_alloc_local(65536)));
        let mut held_l: Vec<Pages> = (0..4096).map(|_| l.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
        let mut keep_l = Vec::new();
        for (i, p) in held_l.drain(..).enumerate() {
            if i % 2 == 0 { l.free_pages(p) } else { keep_l.push(p) }
        }
        let local_frag = pair_cycles(
            || {
                let p = l.alloc_pages(GFP_KERNEL, 0).unwrap();
                l.free_pages(black_box(p));
            },
            SAMPLES,
            PAIRS,
        );
        keep_l.into_iter().for_each(|p| l.free_pages(p));
        rows.push(("order-0 alloc+free pair, pcp fast path, fresh (median cycles)".into(), format!("{ours:.1}")));
        rows.push(("same, after 4096-page fragmentation (median cycles)".into(), format!("{ours_frag:.1}")));
        rows.push(("FrameAllocator alloc(1)+dealloc, after the same fragmentation (median cycles)".into(), format!("{peer:.1}")));
        rows.push(("FrameAllocator alloc(1)+dealloc, fresh 65536-frame block (median cycles)".into(), format!("{peer_fresh:.1}")));
        rows.push(("ratio FrameAllocator / ours, both fragmented (same run)".into(), format!("{:.1}x", peer / ours_frag)));
        rows.push(("ratio FrameAllocator / ours, both fresh (same run)".into(), format!("{:.1}x", peer_fresh / ours)));
        rows.push(("order-0 pair, CPU-local pcp flag (no lock prefix), after the same fragmentation (median cycles)".into(), format!("{local_frag:.1}")));
        rows.push(("ratio FrameAllocator / ours CPU-local, both fragmented (same run)".into(), format!("{:.1}x", peer / local_frag)));
    }

    // 2. free 256 Ki order-0 pages in random order (with merging), ns per page.
    //    Timed: the frees and the final drain of the per-CPU lists.
    if run("free") {
        let nr = 256 * 1024;
        for huge in [true, false] {
            let big: &'static Alloc = Box::leak(Box::new(
                PageAlloc::new(metas_in(nr + 1024, huge), Pfn(0), &[Pfn(0)..Pfn(nr + 1024)], &NoPhysMem, &NoHooks, AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() }).unwrap(),
            ));
            let mut rng = Rng(0x1234_5678_9abc_def1);
            let mut frees = Vec::new();
            let mut bulk_frees = Vec::new();
            let mut peer_frees = Vec::new();
            let (mut half_loop, mut half_bulk) = (Vec::new(), Vec::new());
            for _rep in 0..7 {
                let mut pages: Vec<Pages> = (0..nr).map(|_| big.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
                for i in (1..pages.len()).rev() {
                    pages.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                let t = Instant::now();
                for p in pages {
                    big.free_pages(p);
                }
                big.drain_all_pages();
                frees.push(t.elapsed().as_nanos() as f64 / nr as f64);
                assert_eq!(big.check_consistency().unwrap().allocated, 0);
                // The same through free_pages_bulk (groups the batch by max-order block, then
                // frees it with the next blocks' metadata prefetched).
                let mut pages: Vec<Pages> = (0..nr).map(|_| big.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
                for i in (1..pages.len()).rev() {
                    pages.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                let t = Instant::now();
                big.free_pages_bulk(pages);
                big.drain_all_pages();
                bulk_frees.push(t.elapsed().as_nanos() as f64 / nr as f64);
                assert_eq!(big.check_consistency().unwrap().allocated, 0);
                // A random half of all pages (fewer runs: a pair of buddies is both in
                // the half a quarter of the time), loop and bulk on the same half; the
                // other half is freed untimed.
                for bulk in [false, true] {
                    let mut pages: Vec<Pages> = (0..nr).map(|_| big.alloc_pages(GFP_KERNEL, 0).unwrap()).collect();
                    for i in (1..pages.len()).rev() {
                        pages.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                    }
                    let rest = pages.split_off(nr as usize / 2);
                    let t = Instant::now();
                    if bulk {
                        big.free_pages_bulk(pages);
                    } else {
                        pages.into_iter().for_each(|p| big.free_pages(p));
                    }
                    big.drain_all_pages();
                    let ns = t.elapsed().as_nanos() as f64 / (nr / 2) as f64;
                    if bulk { half_bulk.push(ns) } else { half_loop.push(ns) }
                    big.free_pages_bulk(rest);
                    big.drain_all_pages();
                    assert_eq!(big.check_consistency().unwrap().allocated, 0);
                }
                if huge {
                    continue;
                }
                let mut fa = FrameAllocator::<32>::new();
                fa.add_frame(0, nr as usize);
                let mut fr: Vec<usize> = (0..nr).map(|_| fa.alloc(1).unwrap()).collect();
                for i in (1..fr.len()).rev() {
                    fr.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                let t = Instant::now();
                for f in fr {
                    fa.dealloc(f, 1);
                }
                peer_frees.push(t.elapsed().as_nanos() as f64 / nr as f64);
            }
            if huge {
                rows.push((format!("free 256 Ki order-0 pages, random order, merging, free_pages loop, metadata on 2 MiB pages (median ns/page; AnonHugePages {} kB)", anon_huge_kb()), format!("{:.1}", median(frees))));
                rows.push(("same, free_pages_bulk, metadata on 2 MiB pages (median ns/page)".into(), format!("{:.1}", median(bulk_frees))));
                rows.push(("a random half of them, free_pages loop, 2 MiB pages (median ns/page)".into(), format!("{:.1}", median(half_loop))));
                rows.push(("a random half of them, free_pages_bulk, 2 MiB pages (median ns/page)".into(), format!("{:.1}", median(half_bulk))));
            } else {
                rows.push(("same, free_pages loop, metadata on 4 KiB pages (median ns/page)".into(), format!("{:.1}", median(frees))));
                rows.push(("same, free_pages_bulk, metadata on 4 KiB pages (median ns/page)".into(), format!("{:.1}", median(bulk_frees))));
                rows.push(("a random half of them, free_pages loop, 4 KiB pages (median ns/page)".into(), format!("{:.1}", median(half_loop))));
                rows.push(("a random half of them, free_pages_bulk, 4 KiB pages (median ns/page)".into(), format!("{:.1}", median(half_bulk))));
                rows.push(("same with FrameAllocator (median ns/page)".into(), format!("{:.1}", median(peer_frees))));
            }
        }
    }

    // 3. one order-9 allocation from a fragmented-but-feasible state.
    if run("order9") {
    //    (a) one free order-9 block exists among many small free fragments;
    let a3 = Box::leak(Box::new(new_alloc(65536)));
    let pages: Vec<Pages> = (0..65536 - 1024).map(|_| a3.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap()).collect();
    let mut keep = Vec::new();
    for (i, p) in pages.into_iter().enumerate() {
        if i % 3 == 0 { a3.free_pages(p) } else { keep.push(p) }
    }
    a3.drain_all_pages();
    let direct = median(
        (0..101)
            .map(|_| {
                let t0 = rdtsc();
                let p = a3.alloc_pages(GFP_TRANSHUGE_LIGHT, 9).unwrap();
                let c = rdtsc() - t0;
                a3.free_pages(p);
                c as f64
            })
            .collect(),
    );
    keep.into_iter().for_each(|p| a3.free_pages(p));
    rows.push(("order-9 alloc, free order-9 block exists, 21k fragments (median cycles)".into(), format!("{direct:.0}")));
    //    (b) no free order-9 block, feasible only by compacting 3/4-free movable blocks.
    let mut compacted = Vec::new();
    for _ in 0..11 {
        let a4: &'static Alloc = Box::leak(Box::new(new_alloc(16384)));
        let owner: &'static Owner = Box::leak(Box::new(Owner(Mutex::new(BTreeMap::new()))));
        let id = a4.register_movable_ops(owner).unwrap();
        for i in 0..16384u64 {
            let p = a4.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap();
            let m = a4.page(p.pfn()).unwrap();
            m.set_anon(Rmap { asid: 1, vpn: i }).unwrap();
            m.set_movable(id).unwrap();
            owner.0.lock().unwrap().insert(p.pfn().0, p);
        }
        let victims: Vec<u64> = owner.0.lock().unwrap().keys().copied().filter(|p| p % 4 != 0).collect();
        for v in victims {
            let p = owner.0.lock().unwrap().remove(&v).unwrap();
            a4.page(p.pfn()).unwrap().anon_add_mapcount(-1).unwrap();
            a4.free_pages(p);
        }
        a4.drain_all_pages();
        let t0 = rdtsc();
        let p = a4.alloc_pages(GFP_TRANSHUGE, 9).unwrap();
        compacted.push((rdtsc() - t0) as f64);
        p.leak();
    }
    rows.push(("order-9 alloc needing compaction of 128 pages (median cycles)".into(), format!("{:.0}", median(compacted))));

    }

    // 4. metadata and init.
    if run("init") {
    rows.push(("metadata bytes per 4 KiB frame".into(), format!("{} ({:.2} %)", size_of::<PageMeta>(), size_of::<PageMeta>() as f64 / 40.96)));
    rows.push(("metadata frames per GiB".into(), format!("{}", metadata_frames(1 << 18))));
    let m = metas(1 << 18);
    let inits: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            let a = PageAlloc::<HostPlatform>::new(m, Pfn(0), &[Pfn(0)..Pfn(1 << 18)], &NoPhysMem, &NoHooks, AllocConfig::default()).unwrap();
            let e = t.elapsed().as_secs_f64() * 1e3;
            black_box(a);
            e
        })
        .collect();
    rows.push(("init time per GiB (median ms)".into(), format!("{:.2}", median(inits))));
    }

    println!("| benchmark | result |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
