//! Page-allocator micro-benchmarks (rdtsc harness, `harness = false`).
//!
//! Run: `cargo bench -p mm --bench page_alloc`. Prints a Markdown table; medians over
//! repeated batches, ratios measured in the same run. See docs/benchmarks.md.

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

#[inline(always)]
fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: lfence and rdtsc have no memory effects; x86_64 always has both.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn metas(n: u64) -> &'static [PageMeta] {
    Box::leak((0..n).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice())
}

fn new_alloc(nr: u64) -> Alloc {
    PageAlloc::new(metas(nr), Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, &NoHooks, AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() }).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
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

fn main() {
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. order-0 pair on the per-CPU fast path vs buddy_system_allocator.
    let a = Box::leak(Box::new(new_alloc(65536)));
    let ours = pair_cycles(
        || {
            let p = a.alloc_pages(GFP_KERNEL, 0).unwrap();
            a.free_pages(black_box(p));
        },
        301,
        2000,
    );
    let mut fa = FrameAllocator::<32>::new();
    fa.add_frame(0, 65536);
    // Fragment it a little, like a running system (its alloc walks BTreeSets).
    let held: Vec<usize> = (0..4096).map(|_| fa.alloc(1).unwrap()).collect();
    for f in held.iter().step_by(2) {
        fa.dealloc(*f, 1);
    }
    let peer = pair_cycles(
        || {
            let f = fa.alloc(1).unwrap();
            fa.dealloc(black_box(f), 1);
        },
        301,
        2000,
    );
    // And our allocator in the same fragmented-ish state.
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
        301,
        2000,
    );
    keep.into_iter().for_each(|p| a.free_pages(p));
    rows.push(("order-0 alloc+free pair, pcp fast path (median cycles)".into(), format!("{ours:.1}")));
    rows.push(("same, after 4096-page fragmentation (median cycles)".into(), format!("{ours_frag:.1}")));
    rows.push(("buddy_system_allocator FrameAllocator alloc(1)+dealloc (median cycles)".into(), format!("{peer:.1}")));
    rows.push(("ratio FrameAllocator / ours (same run)".into(), format!("{:.1}x", peer / ours)));

    // 2. free 256 Ki order-0 pages in random order (with merging), ns per page.
    let nr = 256 * 1024;
    let big = Box::leak(Box::new(new_alloc(nr + 1024)));
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut frees = Vec::new();
    let mut peer_frees = Vec::new();
    for rep in 0..5 {
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
        let _ = rep;
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
    let (f_ours, f_peer) = (median(frees), median(peer_frees));
    rows.push(("free 256 Ki order-0 pages, random order, merging (median ns/page)".into(), format!("{f_ours:.1}")));
    rows.push(("same with FrameAllocator (median ns/page)".into(), format!("{f_peer:.1}")));

    // 3. one order-9 allocation from a fragmented-but-feasible state.
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

    // 4. metadata and init.
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

    println!("| benchmark | result |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
