//! Host tests of kmalloc: size classes, property test, error detection, sanitization,
//! GFP pass-through, page-allocator failure, multi-threaded stress.

use super::*;
use crate::fail_page_alloc::FaultAttr;
use crate::gfp::*;
use crate::page::PageState;
use crate::page_alloc::{AllocConfig, NoHooks, NoPhysMem};
use crate::sync::testing::{set_test_cpu, LocalCpu, ThreadCpu};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use std::sync::Mutex;

const NR_PAGES: u64 = 8192; // 32 MiB

type Alloc = PageAlloc<'static, HostPlatform>;

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

fn page_alloc(nr: u64) -> &'static Alloc {
    let metas = Box::leak((0..nr).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
    let cfg = AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(15), ..AllocConfig::default() };
    leak(PageAlloc::new(metas, Pfn(0), &[Pfn(0)..Pfn(nr)], &NoPhysMem, &NoHooks, cfg).unwrap())
}

fn arena(nr: u64) -> &'static ArenaDirectMap {
    leak(ArenaDirectMap::new(Pfn(0), nr).unwrap())
}

/// A page provider that records the flags of every slab allocation.
struct Recording {
    inner: &'static Alloc,
    gfps: Mutex<Vec<(Gfp, usize)>>,
}

impl SlabPageProvider for Recording {
    fn alloc_slab_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        self.gfps.lock().unwrap().push((gfp, order));
        self.inner.alloc_pages(gfp, order)
    }
    fn free_slab_pages(&self, pages: Pages) {
        self.inner.free_pages(pages)
    }
    fn slab_page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.inner.page(pfn)
    }
}

struct Env {
    pa: &'static Alloc,
    k: Box<Kmalloc<'static, Alloc, ArenaDirectMap>>,
    baseline: u64,
}

fn env(config: SlabConfig) -> Env {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    Env { pa, k: Box::new(Kmalloc::new(pa, arena(NR_PAGES), config)), baseline }
}

impl Env {
    fn assert_all_returned(&self) {
        self.k.shrink();
        assert_eq!(self.k.stats().nr_slab_pages, 0);
        assert_eq!(self.pa.stats().free(), self.baseline, "every slab page back in the page allocator");
    }
}

fn fill(p: NonNull<u8>, len: usize, byte: u8) {
    // SAFETY: `p` is a live object of at least `len` bytes owned by the test.
    unsafe { core::ptr::write_bytes(p.as_ptr(), byte, len) }
}

fn bytes(p: NonNull<u8>, len: usize) -> Vec<u8> {
    // SAFETY: `p` points into the arena, which stays mapped for the whole test; the
    // tests read freed objects only while no other thread allocates.
    unsafe { core::slice::from_raw_parts(p.as_ptr(), len) }.to_vec()
}

use crate::rng::XorShift64 as Rng;

/// Linux's alignment guarantee: power-of-two sizes aligned to their size, 96 to 32,
/// 192 to 64, everything to ARCH_KMALLOC_MINALIGN.
fn expected_align(class_size: usize) -> usize {
    1 << class_size.trailing_zeros()
}

#[test]
fn kmalloc_index_picks_smallest_class() {
    assert_eq!(kmalloc_index(0), None);
    assert_eq!(kmalloc_index(KMALLOC_MAX_CACHE_SIZE + 1), None);
    assert_eq!(kmalloc_index(usize::MAX), None);
    for size in 1..=KMALLOC_MAX_CACHE_SIZE {
        let i = kmalloc_index(size).unwrap();
        assert!(kmalloc_size(i) >= size, "size {size}");
        assert!(i == 0 || kmalloc_size(i - 1) < size, "size {size} not in the smallest class");
    }
    let sizes: Vec<usize> = (0..NR_KMALLOC_CACHES).map(kmalloc_size).collect();
    assert_eq!(sizes, [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192]);
}

#[test]
fn each_size_class_alloc_write_free() {
    let e = env(SlabConfig::default());
    for i in 0..NR_KMALLOC_CACHES {
        let size = kmalloc_size(i);
        let s = &e.k.caches()[i];
        assert!(s.objs_per_slab() >= 3, "{}", s.name());
        let n = s.objs_per_slab() * 2 + 1;
        let objs: Vec<_> = (0..n).map(|_| e.k.kmalloc(size, GFP_KERNEL).unwrap()).collect();
        for (j, p) in objs.iter().enumerate() {
            assert_eq!(p.as_ptr() as usize % expected_align(size), 0, "{} misaligned", s.name());
            assert_eq!(e.k.ksize(*p), Ok(size));
            fill(*p, size, j as u8);
        }
        for (j, p) in objs.iter().enumerate() {
            assert!(bytes(*p, size).iter().all(|&b| b == j as u8), "{} contents", s.name());
        }
        let mut sorted: Vec<usize> = objs.iter().map(|p| p.as_ptr() as usize).collect();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[1] - w[0] >= size), "{} overlap", s.name());
        for p in objs {
            e.k.kfree(p).unwrap();
        }
    }
    e.assert_all_returned();
}

#[test]
fn zero_size_and_too_large() {
    let e = env(SlabConfig::default());
    assert_eq!(e.k.kmalloc(0, GFP_KERNEL), Ok(ZERO_SIZE_PTR));
    assert_eq!(e.k.kfree(ZERO_SIZE_PTR), Ok(()));
    assert_eq!(e.k.ksize(ZERO_SIZE_PTR), Ok(0));
    assert_eq!(e.k.kmalloc(8193, GFP_KERNEL), Err(KmallocError::TooLarge));
    assert_eq!(e.k.kmalloc(usize::MAX, GFP_KERNEL), Err(KmallocError::TooLarge));
    let big_align = Layout::from_size_align(8, 8192).unwrap();
    assert_eq!(e.k.kmalloc_layout(big_align, GFP_KERNEL), Err(KmallocError::TooLarge));
    assert_eq!(e.k.stats().nr_slab_pages, 0);
}

#[test]
fn layout_alignment_is_honoured() {
    let e = env(SlabConfig::default());
    for (size, align) in [(1, 8), (24, 32), (96, 64), (100, 256), (3000, 4096), (8, 1)] {
        let p = e.k.kmalloc_layout(Layout::from_size_align(size, align).unwrap(), GFP_KERNEL).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0, "size {size} align {align}");
        assert!(e.k.ksize(p).unwrap() >= size);
        e.k.kfree(p).unwrap();
    }
    e.assert_all_returned();
}

/// Random alloc/free sequences across sizes: no overlap, alignment, contents kept,
/// and every page back after freeing everything and shrinking.
#[test]
fn random_alloc_free_property() {
    for seed in [1u64, 0xdead_beef, 42, 7777] {
        let e = env(SlabConfig::default());
        let mut rng = Rng(seed);
        let mut live: BTreeMap<usize, (usize, u8)> = BTreeMap::new();
        for step in 0..20_000 {
            if live.is_empty() || rng.next() % 100 < 55 {
                let size = match rng.next() % 4 {
                    0 => 1 + (rng.next() % 64) as usize,
                    1 => 1 + (rng.next() % 256) as usize,
                    2 => 1 + (rng.next() % 2048) as usize,
                    _ => 1 + (rng.next() % 8192) as usize,
                };
                let p = e.k.kmalloc(size, GFP_KERNEL).unwrap();
                let a = p.as_ptr() as usize;
                let class = kmalloc_size(kmalloc_index(size).unwrap());
                assert_eq!(a % expected_align(class).min(4096).max(8), 0, "alignment size {size}");
                if let Some((&prev, &(plen, _))) = live.range(..=a).next_back() {
                    assert!(prev + plen <= a, "overlaps previous object");
                }
                if let Some((&next, _)) = live.range(a..).next() {
                    assert!(a + size <= next, "overlaps next object");
                }
                let tag = (step % 251) as u8;
                fill(p, size, tag);
                live.insert(a, (size, tag));
            } else {
                let k = rng.next() as usize % live.len();
                let (&a, &(size, tag)) = live.iter().nth(k).unwrap();
                let p = NonNull::new(a as *mut u8).unwrap();
                assert!(bytes(p, size).iter().all(|&b| b == tag), "contents changed");
                e.k.kfree(p).unwrap();
                live.remove(&a);
            }
        }
        for (&a, &(size, tag)) in &live {
            let p = NonNull::new(a as *mut u8).unwrap();
            assert!(bytes(p, size).iter().all(|&b| b == tag));
            e.k.kfree(p).unwrap();
        }
        assert_eq!(e.k.stats().double_frees + e.k.stats().invalid_frees, 0);
        e.assert_all_returned();
    }
}

#[test]
fn double_free_is_detected_on_array_cache_and_in_slab() {
    let e = env(SlabConfig::default());
    let p = e.k.kmalloc(32, GFP_KERNEL).unwrap();
    let q = e.k.kmalloc(32, GFP_KERNEL).unwrap();
    e.k.kfree(p).unwrap();
    assert_eq!(e.k.kfree(p), Err(KfreeError::DoubleFree), "object on the per-CPU cache");
    e.k.drain_cpu_caches();
    assert_eq!(e.k.kfree(p), Err(KfreeError::DoubleFree), "object back in its slab");
    assert_eq!(e.k.stats().double_frees, 2);
    // Nothing was corrupted: the object is handed out once, not twice.
    let objs: Vec<usize> = (0..200).map(|_| e.k.kmalloc(32, GFP_KERNEL).unwrap().as_ptr() as usize).collect();
    let mut uniq = objs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), objs.len(), "an object was handed out twice");
    for a in objs {
        e.k.kfree(NonNull::new(a as *mut u8).unwrap()).unwrap();
    }
    e.k.kfree(q).unwrap();
    e.assert_all_returned();
}

#[test]
fn never_allocated_object_is_refused() {
    let e = env(SlabConfig::default());
    let p = e.k.kmalloc(64, GFP_KERNEL).unwrap();
    // The neighbour in the same slab was never handed out.
    let neighbour = NonNull::new((p.as_ptr() as usize + 64 * 10) as *mut u8).unwrap();
    assert_eq!(e.k.kfree(neighbour), Err(KfreeError::DoubleFree));
    e.k.kfree(p).unwrap();
    e.assert_all_returned();
}

#[test]
fn invalid_frees_are_refused() {
    let e = env(SlabConfig::default());
    let p = e.k.kmalloc(100, GFP_KERNEL).unwrap(); // kmalloc-128
    let inner = NonNull::new((p.as_ptr() as usize + 8) as *mut u8).unwrap();
    assert_eq!(e.k.kfree(inner), Err(KfreeError::Misaligned));
    // The slab descriptor area.
    let slab = p.as_ptr() as usize & !4095;
    assert_eq!(e.k.kfree(NonNull::new(slab as *mut u8).unwrap()), Err(KfreeError::Misaligned));
    // Not in the direct map at all.
    let mut local = 0u64;
    assert_eq!(e.k.kfree(NonNull::from(&mut local).cast()), Err(KfreeError::NotSlab));
    // A page of the page allocator that is not a slab.
    let pages = e.pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    let map_addr = e.k.map.pfn_to_virt(pages.pfn()) as usize;
    assert_eq!(e.k.kfree(NonNull::new((map_addr + 128) as *mut u8).unwrap()), Err(KfreeError::NotSlab));
    e.pa.free_pages(pages);
    // A tail page of a multi-page slab, misaligned.
    let big = e.k.kmalloc(1024, GFP_KERNEL).unwrap();
    let odd = NonNull::new((big.as_ptr() as usize + 4096 + 24) as *mut u8).unwrap();
    assert!(matches!(e.k.kfree(odd), Err(KfreeError::Misaligned | KfreeError::NotSlab)));
    assert_eq!(e.k.stats().invalid_frees, 5);
    // The object is untouched and still freeable.
    e.k.kfree(p).unwrap();
    e.k.kfree(big).unwrap();
    e.assert_all_returned();
}

#[test]
fn objects_in_tail_pages_are_found() {
    let e = env(SlabConfig::default());
    // kmalloc-1k uses order-3 slabs: allocate a whole slab, free them all (many are in
    // tail pages) after a drain so the frees go through virt_to_slab's tail probing.
    let n = e.k.caches()[kmalloc_index(1024).unwrap()].objs_per_slab();
    let objs: Vec<_> = (0..n).map(|_| e.k.kmalloc(1000, GFP_KERNEL).unwrap()).collect();
    let slab_pages: Vec<u64> = objs.iter().map(|p| (p.as_ptr() as usize / 4096) as u64).collect();
    assert!(slab_pages.iter().any(|&pg| pg % 8 != 0), "some objects live in tail pages");
    for p in objs {
        e.k.kfree(p).unwrap();
    }
    e.assert_all_returned();
}

#[test]
fn init_on_free_zeroes_freed_objects() {
    let e = env(SlabConfig { init_on_free: true, init_on_alloc: false });
    let p = e.k.kmalloc(256, GFP_KERNEL).unwrap();
    fill(p, 256, 0xAB);
    e.k.kfree(p).unwrap();
    let b = bytes(p, 256);
    assert!(b[8..].iter().all(|&x| x == 0), "init_on_free leaves old contents");
    assert_ne!(&b[..8], &[0xAB; 8], "the first word no longer holds old data");
    e.assert_all_returned();

    // Off by default: contents after the marker word survive a free.
    let e = env(SlabConfig::default());
    let p = e.k.kmalloc(256, GFP_KERNEL).unwrap();
    fill(p, 256, 0xAB);
    e.k.kfree(p).unwrap();
    assert!(bytes(p, 256)[8..].iter().all(|&x| x == 0xAB));
    e.assert_all_returned();
}

#[test]
fn gfp_zero_and_init_on_alloc_zero_objects() {
    for (config, gfp) in [
        (SlabConfig::default(), GFP_KERNEL | __GFP_ZERO),
        (SlabConfig { init_on_alloc: true, init_on_free: false }, GFP_KERNEL),
    ] {
        let e = env(config);
        let p = e.k.kmalloc(512, GFP_KERNEL).unwrap();
        fill(p, 512, 0xCD);
        e.k.kfree(p).unwrap();
        let q = e.k.kmalloc(500, gfp).unwrap();
        assert_eq!(p, q, "LIFO per-CPU cache hands the same object back");
        assert!(bytes(q, 512).iter().all(|&x| x == 0));
        e.k.kfree(q).unwrap();
        let z = e.k.kzalloc(16, GFP_KERNEL).unwrap();
        assert!(bytes(z, 16).iter().all(|&x| x == 0));
        e.k.kfree(z).unwrap();
        e.assert_all_returned();
    }
}

#[test]
fn gfp_flags_reach_the_page_allocator() {
    let pa = page_alloc(NR_PAGES);
    let rec = leak(Recording { inner: pa, gfps: Mutex::new(Vec::new()) });
    let k = Box::new(Kmalloc::<_, _, HostPlatform>::new(rec, arena(NR_PAGES), SlabConfig::default()));
    let cases = [(8, GFP_NOFS), (96, GFP_NOIO), (4096, GFP_NOWAIT), (192, GFP_ATOMIC), (64, GFP_KERNEL | __GFP_ZERO)];
    let mut objs = Vec::new();
    for (size, gfp) in cases {
        objs.push(k.kmalloc(size, gfp).unwrap());
        let (got, order) = *rec.gfps.lock().unwrap().last().unwrap();
        let s = &k.caches()[kmalloc_index(size).unwrap()];
        let caller = gfp.difference(__GFP_ZERO);
        // The preferred order is tried with NOWARN | NORETRY first (no reclaim) when a
        // smaller order could serve; single-order caches see the caller's flags.
        let want = if s.pages_per_slab() > 1 << s.min_order() { slab_high_order_gfp(caller) } else { caller };
        assert_eq!(got, want, "size {size}");
        assert_eq!(order, s.pages_per_slab().trailing_zeros() as usize);
    }
    assert_eq!(rec.gfps.lock().unwrap().len(), cases.len(), "one slab per class");
    for p in objs {
        k.kfree(p).unwrap();
    }
    k.shrink();
}

#[test]
fn page_allocator_failure_returns_error_and_leaks_nothing() {
    let e = env(SlabConfig::default());
    e.pa.fail.configure(FaultAttr::every_nth(1));
    for size in [8, 200, 8192] {
        assert_eq!(e.k.kmalloc(size, GFP_KERNEL), Err(KmallocError::NoMemory(AllocError::Injected)));
    }
    assert_eq!(e.k.stats().nr_slab_pages, 0);
    assert_eq!(e.pa.stats().free(), e.baseline);
    e.pa.fail.disable();

    // Random failures in the middle of a workload: errors only, and nothing leaks.
    e.pa.fail.configure(FaultAttr::random_percent(30, 9));
    let mut rng = Rng(5);
    let mut live = Vec::new();
    let mut failures = 0;
    for _ in 0..5000 {
        if live.is_empty() || rng.next() % 2 == 0 {
            match e.k.kmalloc(1 + (rng.next() % 8192) as usize, GFP_KERNEL) {
                Ok(p) => live.push(p),
                Err(err) => {
                    assert_eq!(err, KmallocError::NoMemory(AllocError::Injected));
                    failures += 1;
                }
            }
        } else {
            let i = rng.next() as usize % live.len();
            e.k.kfree(live.swap_remove(i)).unwrap();
        }
    }
    e.pa.fail.disable();
    assert!(failures > 0);
    for p in live {
        e.k.kfree(p).unwrap();
    }
    e.assert_all_returned();
}

#[test]
fn empty_slabs_are_capped_and_shrinkable() {
    let e = env(SlabConfig::default());
    let s = &e.k.caches()[kmalloc_index(64).unwrap()];
    let n = s.objs_per_slab() * 10;
    let objs: Vec<_> = (0..n).map(|_| e.k.kmalloc(64, GFP_KERNEL).unwrap()).collect();
    assert_eq!(e.k.stats().nr_slab_pages, 10);
    for p in objs {
        e.k.kfree(p).unwrap();
    }
    e.k.drain_cpu_caches();
    assert_eq!(e.k.stats().nr_slab_pages, MAX_EMPTY_SLABS, "only MAX_EMPTY_SLABS empty slabs kept");
    assert_eq!(e.k.count_reclaimable(), MAX_EMPTY_SLABS);
    assert_eq!(e.k.shrink(), MAX_EMPTY_SLABS);
    assert_eq!(e.k.count_reclaimable(), 0);
    assert_eq!(e.k.shrink(), 0);
    e.assert_all_returned();
}

#[test]
fn slabinfo_matches_linux_format() {
    let e = env(SlabConfig::default());
    let objs: Vec<_> = (0..5).map(|_| e.k.kmalloc(32, GFP_KERNEL).unwrap()).collect();
    e.k.kfree(objs[4]).unwrap();
    let mut out = String::new();
    e.k.slabinfo(&mut out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "slabinfo - version: 2.1");
    assert!(lines[1].starts_with("# name            <active_objs> <num_objs> <objsize>"));
    assert_eq!(lines.len(), 2 + NR_KMALLOC_CACHES);
    let l32 = lines.iter().find(|l| l.starts_with("kmalloc-32 ")).unwrap();
    let f: Vec<&str> = l32.split_whitespace().collect();
    assert_eq!(&f[1..6], &["4", "124", "32", "124", "1"], "{l32}");
    assert_eq!(f[6], ":");
    assert_eq!(f[7], "tunables");
    assert_eq!(&f[12..16], &["slabdata", "1", "1", "0"], "{l32}");
    assert!(lines.iter().any(|l| l.starts_with("kmalloc-8k ")));
    for p in &objs[..4] {
        e.k.kfree(*p).unwrap();
    }
    e.assert_all_returned();
}


/// The cross-CPU stress of two tests: one thread per CPU in `cpus` makes `steps`
/// random kmalloc (1..=`max_size` bytes, the first `check_len` of them filled with a
/// tag) / kfree (tag checked) steps with at most 64 objects live; every `handoff`
/// steps it sends half of its objects to the channel and frees what another
/// thread sent. Each frees what it still holds at the end. Returns the objects
/// left in the channel once every thread has finished.
struct Stress {
    steps: u32,
    max_size: usize,
    check_len: usize,
    handoff: u32,
}

fn cross_cpu_stress<P: Platform + 'static>(
    k: &'static Kmalloc<'static, Alloc, ArenaDirectMap, P>,
    cpus: core::ops::Range<usize>,
    seed: fn(usize) -> u64,
    st: Stress,
) -> Vec<usize> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let handles: Vec<_> = cpus
        .map(|cpu| {
            let (tx, rx) = (tx.clone(), rx.clone());
            std::thread::spawn(move || {
                set_test_cpu(cpu);
                let mut rng = Rng(seed(cpu));
                let mut live: Vec<(usize, usize, u8)> = Vec::new();
                for step in 0..st.steps {
                    let r = rng.next();
                    if live.len() < 64 && r % 3 != 0 {
                        let size = 1 + (rng.next() % st.max_size as u64) as usize;
                        let len = size.min(st.check_len);
                        let p = k.kmalloc(size, GFP_KERNEL).unwrap();
                        fill(p, len, cpu as u8 ^ step as u8);
                        live.push((p.as_ptr() as usize, len, cpu as u8 ^ step as u8));
                    } else if !live.is_empty() {
                        let (a, len, tag) = live.swap_remove(r as usize % live.len());
                        let p = NonNull::new(a as *mut u8).unwrap();
                        assert!(bytes(p, len).iter().all(|&b| b == tag), "contents");
                        k.kfree(p).unwrap();
                    }
                    if step % st.handoff == 0 {
                        // Objects allocated here are freed on another CPU.
                        tx.send(live.drain(..live.len() / 2).map(|(a, _, _)| a).collect()).unwrap();
                        let got = rx.lock().unwrap().try_recv();
                        for a in got.into_iter().flatten() {
                            k.kfree(NonNull::new(a as *mut u8).unwrap()).unwrap();
                        }
                    }
                }
                for (a, _, _) in live {
                    k.kfree(NonNull::new(a as *mut u8).unwrap()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    drop(tx);
    let rest = rx.lock().unwrap().iter().flatten().collect();
    rest
}

#[test]
fn multithreaded_stress_with_cross_cpu_frees() {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    let k: &'static Kmalloc<'static, Alloc, ArenaDirectMap, ThreadCpu> =
        leak(Kmalloc::new(pa, arena(NR_PAGES), SlabConfig { init_on_free: true, init_on_alloc: false }));
    let stress = Stress { steps: 30_000, max_size: 2048, check_len: usize::MAX, handoff: 5000 };
    for a in cross_cpu_stress(k, 0..4, |t| t as u64 * 7919 + 1, stress) {
        k.kfree(NonNull::new(a as *mut u8).unwrap()).unwrap();
    }
    assert_eq!(k.stats().double_frees + k.stats().invalid_frees, 0);
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(pa.stats().free(), baseline);
}

#[test]
fn page_meta_marks_slab_heads() {
    let e = env(SlabConfig::default());
    let p = e.k.kmalloc(2000, GFP_KERNEL).unwrap();
    let pfn = e.k.map.virt_to_pfn(p.as_ptr() as usize).unwrap();
    let head = Pfn(pfn.0 & !7);
    assert!(matches!(e.pa.page(head).unwrap().state(), PageState::Slab { .. }));
    e.k.kfree(p).unwrap();
    e.k.shrink();
    assert!(matches!(e.pa.page(head).unwrap().state(), PageState::Free { .. } | PageState::PcpFree { .. }));
    e.assert_all_returned();
}

// ------------------------------------------------------- oo_min fallback

/// A page allocator whose free memory is all order-0 blocks: every frame is allocated
/// one page at a time, then every odd frame is freed. Their even buddies stay
/// allocated, so nothing merges and every allocation above order 0 fails.
struct Fragmented {
    pa: &'static Alloc,
    /// The even frames still held, by pfn.
    held: BTreeMap<u64, Pages>,
}

fn fragmented() -> Fragmented {
    let pa = page_alloc(NR_PAGES);
    let mut held = BTreeMap::new();
    // Twice: the first pass may leave a page on a per-CPU list below its watermark.
    for _ in 0..2 {
        while let Ok(p) = pa.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0) {
            held.insert(p.pfn().0, p);
        }
        pa.drain_all_pages();
    }
    assert_eq!(pa.stats().free(), 0);
    let odd: Vec<u64> = held.keys().copied().filter(|pfn| pfn % 2 == 1).collect();
    for pfn in odd {
        pa.free_pages(held.remove(&pfn).unwrap());
    }
    pa.drain_all_pages();
    assert!(pa.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 1).is_err(), "no block above order 0 is free");
    assert!(pa.stats().free() > 1000);
    Fragmented { pa, held }
}

impl Drop for Fragmented {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl Fragmented {
    /// Frees the held frame `pfn` (even), making the order-1 block `pfn..pfn + 2` free.
    fn release_pair(&mut self, pfn: u64) {
        self.pa.free_pages(self.held.remove(&pfn).unwrap());
        self.pa.drain_all_pages();
    }
    /// Frees every held frame: memory is no longer fragmented.
    fn release_all(&mut self) {
        for (_, p) in core::mem::take(&mut self.held) {
            self.pa.free_pages(p);
        }
        self.pa.drain_all_pages();
    }
    fn kmalloc(&self) -> Box<Kmalloc<'static, Alloc, ArenaDirectMap>> {
        Box::new(Kmalloc::new(self.pa, arena(NR_PAGES), SlabConfig::default()))
    }
}

fn cache_of<'k, A: SlabPageProvider>(k: &'k Kmalloc<'static, A, ArenaDirectMap>, size: usize) -> &'k KmemCache {
    &k.caches()[kmalloc_index(size).unwrap()]
}

#[test]
fn min_order_geometry() {
    let pa = page_alloc(64);
    let k = Kmalloc::<_, _, HostPlatform>::new(pa, arena(64), SlabConfig::default());
    let got: Vec<(usize, usize, usize, usize)> = k
        .caches()
        .iter()
        .map(|s| (s.object_size(), s.pages_per_slab().trailing_zeros() as usize, s.min_order(), s.objs_per_min_slab()))
        .collect();
    assert_eq!(
        got,
        [
            (8, 0, 0, 496),
            (16, 0, 0, 248),
            (32, 0, 0, 124),
            (64, 0, 0, 62),
            (96, 0, 0, 41),
            (128, 0, 0, 31),
            (192, 0, 0, 20),
            (256, 1, 0, 15),
            (512, 2, 0, 7),
            (1024, 3, 0, 3),
            (2048, 3, 0, 1),
            (4096, 3, 0, 1),
            (8192, 3, 1, 1),
        ]
    );
    assert_eq!(
        slab_high_order_gfp(GFP_KERNEL),
        __GFP_IO | __GFP_FS | __GFP_NOWARN | __GFP_NORETRY | __GFP_NOMEMALLOC,
        "no reclaim, no reserves, no warning for the preferred order"
    );
    assert_eq!(slab_high_order_gfp(GFP_ATOMIC | __GFP_NOFAIL), GFP_ATOMIC | __GFP_NOWARN | __GFP_NORETRY);
}

#[test]
fn fragmented_memory_serves_every_class_up_to_4k_from_order0() {
    let f = fragmented();
    let k = f.kmalloc();
    let baseline = f.pa.stats().free();
    let mut objs = Vec::new();
    for i in 0..NR_KMALLOC_CACHES - 1 {
        let size = kmalloc_size(i);
        let p = k.kmalloc(size, GFP_KERNEL).unwrap_or_else(|e| panic!("kmalloc({size}) with order-0 memory: {e:?}"));
        assert_eq!(p.as_ptr() as usize % expected_align(size), 0, "size {size} misaligned");
        assert_eq!(k.ksize(p), Ok(size));
        fill(p, size, i as u8);
        objs.push((p, size, i as u8));
    }
    // 8 KiB needs two contiguous pages: a clean failure, nothing held.
    let before = (k.stats().nr_slab_pages, f.pa.stats().free());
    assert!(matches!(k.kmalloc(8192, GFP_KERNEL), Err(KmallocError::NoMemory(_))));
    assert_eq!((k.stats().nr_slab_pages, f.pa.stats().free()), before, "a failed kmalloc(8192) holds nothing");
    for s in k.caches() {
        let fell_back = s.pages_per_slab() > 1 && s.object_size() < 8192;
        assert_eq!(s.order_fallback(), fell_back as u64, "{}", s.name());
    }
    assert_eq!(k.stats().order_fallback, 5, "256, 512, 1k, 2k, 4k");
    // Every slab is a one-page slab.
    assert_eq!(k.stats().nr_slab_pages, (NR_KMALLOC_CACHES - 1) as u64);
    assert_eq!(f.pa.stats().free(), baseline - (NR_KMALLOC_CACHES - 1) as u64);
    for (p, size, tag) in objs {
        assert!(bytes(p, size).iter().all(|&b| b == tag), "size {size} contents");
        k.kfree(p).unwrap();
    }
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(f.pa.stats().free(), baseline, "every fallback slab back in the buddy");
}

#[test]
fn kmalloc_8k_needs_an_order1_block() {
    let mut f = fragmented();
    let k = f.kmalloc();
    assert!(matches!(k.kmalloc(8192, GFP_KERNEL), Err(KmallocError::NoMemory(_))));
    assert_eq!(cache_of(&k, 8192).order_fallback(), 0, "no slab, no fallback");
    let pfn = *f.held.keys().nth(100).unwrap();
    f.release_pair(pfn);
    let baseline = f.pa.stats().free();
    let p = k.kmalloc(8000, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize % 8192, 0);
    assert_eq!(k.map.virt_to_pfn(p.as_ptr() as usize), Some(Pfn(pfn)), "the only order-1 block");
    fill(p, 8192, 0x5a);
    assert_eq!(cache_of(&k, 8192).order_fallback(), 1);
    assert_eq!(k.stats().nr_slab_pages, 2);
    // The block is taken: a second 8 KiB object fails cleanly.
    assert!(matches!(k.kmalloc(8192, GFP_KERNEL), Err(KmallocError::NoMemory(_))));
    assert!(bytes(p, 8192).iter().all(|&b| b == 0x5a));
    k.kfree(p).unwrap();
    assert_eq!(k.kfree(p), Err(KfreeError::DoubleFree), "still on the per-CPU cache");
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(f.pa.stats().free(), baseline, "the single-object slab went back at once");
    assert_eq!(k.kfree(p), Err(KfreeError::NotSlab), "its pages are no slab any more");
    assert_eq!(k.stats().double_frees, 1);
}

#[test]
fn fallback_slab_objects_free_correctly_and_return_to_the_buddy() {
    let f = fragmented();
    let k = f.kmalloc();
    let baseline = f.pa.stats().free();
    let mut rng = Rng(99);
    for i in 0..NR_KMALLOC_CACHES - 1 {
        let s = &k.caches()[i];
        let size = s.object_size();
        // Several fallback slabs' worth, so objects span slabs and the node lists.
        let n = s.objs_per_min_slab() * 3 + 1;
        let mut objs: Vec<(NonNull<u8>, u8)> = (0..n)
            .map(|j| {
                let p = k.kmalloc(size, GFP_KERNEL).unwrap();
                fill(p, size, j as u8);
                (p, j as u8)
            })
            .collect();
        let mut addrs: Vec<usize> = objs.iter().map(|(p, _)| p.as_ptr() as usize).collect();
        addrs.sort();
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= size), "{} overlap", s.name());
        // Each one-page slab holds objs_per_min_slab objects.
        assert_eq!(k.stats().nr_slab_pages, (n.div_ceil(s.objs_per_min_slab())) as u64, "{}", s.name());
        while !objs.is_empty() {
            let (p, tag) = objs.swap_remove(rng.next() as usize % objs.len());
            assert!(bytes(p, size).iter().all(|&b| b == tag), "{} contents", s.name());
            assert_eq!(k.ksize(p), Ok(size));
            k.kfree(p).unwrap();
        }
        k.drain_cpu_caches();
        let headerless = s.objs_per_min_slab() == 1 && s.min_order() == 0 && size == 4096;
        let kept = if headerless { 0 } else { MAX_EMPTY_SLABS };
        assert_eq!(k.stats().nr_slab_pages, kept, "{}: empty slabs beyond the cap go back", s.name());
        k.shrink();
        assert_eq!(f.pa.stats().free(), baseline, "{}", s.name());
    }
    assert_eq!(k.stats().double_frees + k.stats().invalid_frees, 0);
    assert!(k.stats().order_fallback > 0);
}

#[test]
fn fallback_and_preferred_order_slabs_mix_in_one_cache() {
    let mut f = fragmented();
    let k = f.kmalloc();
    let mut live = Vec::new();
    for size in [256usize, 1000, 4096] {
        for _ in 0..20 {
            let p = k.kmalloc(size, GFP_KERNEL).unwrap();
            fill(p, size, size as u8);
            live.push((p, size));
        }
    }
    let fallbacks = k.stats().order_fallback;
    assert_eq!(fallbacks, 20 + 7 + 2, "4k: one page per object, 1k: 3 per page, 256: 15 per page");
    // Memory defragments: new slabs are of the preferred order again.
    f.release_all();
    for size in [256usize, 1000, 4096] {
        for _ in 0..40 {
            let p = k.kmalloc(size, GFP_KERNEL).unwrap();
            fill(p, size, size as u8);
            live.push((p, size));
        }
    }
    assert_eq!(k.stats().order_fallback, fallbacks, "no fallback without fragmentation");
    let mut pages: Vec<u64> = live
        .iter()
        .filter(|(_, size)| *size == 4096)
        .map(|(p, _)| k.map.virt_to_pfn(p.as_ptr() as usize).unwrap().0)
        .collect();
    pages.sort();
    assert!(pages.windows(2).any(|w| w[1] == w[0] + 1), "4k objects in order-3 slabs sit in adjacent pages");
    // Free in an interleaved order: objects of both slab orders in the same arrays.
    let mut rng = Rng(3);
    while !live.is_empty() {
        let (p, size) = live.swap_remove(rng.next() as usize % live.len());
        assert!(bytes(p, size).iter().all(|&b| b == size as u8));
        k.kfree(p).unwrap();
    }
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(f.pa.stats().free(), f.pa.managed_pages(), "all memory free again");
    assert_eq!(k.stats().double_frees + k.stats().invalid_frees, 0);
}

#[test]
fn double_and_invalid_frees_in_fallback_slabs() {
    let f = fragmented();
    let k = f.kmalloc();
    let a = k.kmalloc(1024, GFP_KERNEL).unwrap(); // header slab of order 0
    let b = k.kmalloc(4096, GFP_KERNEL).unwrap(); // single-object slab
    assert_eq!(k.stats().order_fallback, 2);
    // Inside an object, and the header area of the one-page 1k slab.
    let inner = NonNull::new((a.as_ptr() as usize + 8) as *mut u8).unwrap();
    assert_eq!(k.kfree(inner), Err(KfreeError::Misaligned));
    let hdr = NonNull::new((a.as_ptr() as usize & !4095) as *mut u8).unwrap();
    assert_eq!(k.kfree(hdr), Err(KfreeError::Misaligned));
    let inner4k = NonNull::new((b.as_ptr() as usize + 2048) as *mut u8).unwrap();
    assert_eq!(k.kfree(inner4k), Err(KfreeError::Misaligned));
    // A never-allocated neighbour in the 1k slab.
    let neighbour = NonNull::new((a.as_ptr() as usize + 1024) as *mut u8).unwrap();
    let other = if k.ksize(neighbour).is_ok() { neighbour } else { NonNull::new((a.as_ptr() as usize - 1024) as *mut u8).unwrap() };
    assert_eq!(k.kfree(other), Err(KfreeError::DoubleFree));
    k.kfree(a).unwrap();
    k.kfree(b).unwrap();
    assert_eq!(k.kfree(a), Err(KfreeError::DoubleFree));
    assert_eq!(k.kfree(b), Err(KfreeError::DoubleFree));
    k.drain_cpu_caches();
    assert_eq!(k.kfree(a), Err(KfreeError::DoubleFree), "back in its slab's free map");
    assert_eq!(k.kfree(b), Err(KfreeError::NotSlab), "single-object slab already freed");
    assert_eq!(k.stats().double_frees, 4);
    assert_eq!(k.stats().invalid_frees, 4);
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
}

/// Records every slab page request and fails those above `max_order`.
struct OrderLimited {
    inner: &'static Alloc,
    max_order: core::sync::atomic::AtomicUsize,
    calls: Mutex<Vec<(Gfp, usize)>>,
}

impl SlabPageProvider for OrderLimited {
    fn alloc_slab_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        self.calls.lock().unwrap().push((gfp, order));
        if order > self.max_order.load(Relaxed) {
            return Err(AllocError::NoMemory);
        }
        self.inner.alloc_pages(gfp, order)
    }
    fn free_slab_pages(&self, pages: Pages) {
        self.inner.free_pages(pages)
    }
    fn slab_page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.inner.page(pfn)
    }
}

#[test]
fn allocate_slab_tries_oo_quietly_then_oo_min_with_caller_flags() {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    let prov = leak(OrderLimited { inner: pa, max_order: 0.into(), calls: Mutex::new(Vec::new()) });
    let k = Box::new(Kmalloc::<_, _, HostPlatform>::new(prov, arena(NR_PAGES), SlabConfig::default()));
    let take = || core::mem::take(&mut *prov.calls.lock().unwrap());

    let p = k.kmalloc(1024, GFP_KERNEL | __GFP_ZERO).unwrap();
    assert_eq!(take(), [(slab_high_order_gfp(GFP_KERNEL), 3), (GFP_KERNEL, 0)]);
    let q = k.kmalloc(300, GFP_NOFS | __GFP_NOFAIL).unwrap();
    assert_eq!(
        take(),
        [(__GFP_IO | __GFP_NOWARN | __GFP_NORETRY | __GFP_NOMEMALLOC, 2), (GFP_NOFS | __GFP_NOFAIL, 0)],
        "NOFAIL only on the attempt that must not fail"
    );
    let r = k.kmalloc(64, GFP_ATOMIC).unwrap();
    assert_eq!(take(), [(GFP_ATOMIC, 0)], "order-0 caches: one attempt with the caller's flags");
    assert_eq!(k.stats().order_fallback, 2);

    // Both attempts fail: a clean error, nothing counted or held.
    let held = k.stats().nr_slab_pages;
    assert!(matches!(k.kmalloc(8192, GFP_KERNEL), Err(KmallocError::NoMemory(AllocError::NoMemory))));
    assert_eq!(take(), [(slab_high_order_gfp(GFP_KERNEL), 3), (GFP_KERNEL, 1)]);
    assert_eq!(cache_of(&k, 8192).order_fallback(), 0);
    assert_eq!(k.stats().nr_slab_pages, held);

    // Once order 3 works again, no fallback.
    prov.max_order.store(MAX_SLAB_ORDER, Relaxed);
    let big = k.kmalloc(8192, GFP_KERNEL).unwrap();
    assert_eq!(take(), [(slab_high_order_gfp(GFP_KERNEL), 3)]);
    assert_eq!(k.stats().order_fallback, 2);
    for o in [p, q, r, big] {
        k.kfree(o).unwrap();
    }
    k.shrink();
    assert_eq!(pa.stats().free(), baseline);
}

#[test]
fn slub_stats_lists_order_fallback() {
    let f = fragmented();
    let k = f.kmalloc();
    let p = k.kmalloc(4096, GFP_KERNEL).unwrap();
    let mut out = String::new();
    k.slub_stats(&mut out).unwrap();
    assert_eq!(out, "kmalloc-4k        order_fallback 1 (order 3 -> 0)\norder_fallback total 1\n");
    // slabinfo counts the one-object, one-page slab.
    let mut info = String::new();
    k.slabinfo(&mut info).unwrap();
    let l = info.lines().find(|l| l.starts_with("kmalloc-4k ")).unwrap();
    let fields: Vec<&str> = l.split_whitespace().collect();
    assert_eq!(&fields[1..3], &["1", "1"], "{l}");
    assert_eq!(&fields[13..15], &["1", "1"], "{l}");
    k.kfree(p).unwrap();
    k.shrink();
}

// ------------------------------------------------- CPU-local fast path


type LocalKmalloc = Kmalloc<'static, Alloc, ArenaDirectMap, LocalCpu>;

fn on_cpu<R: Send + 'static>(cpu: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        set_test_cpu(cpu);
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn cpu_local_platform_alloc_free_double_free_and_no_cache_cpu() {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    let k: &'static LocalKmalloc = leak(Kmalloc::new(pa, arena(NR_PAGES), SlabConfig::default()));
    on_cpu(3, move || {
        for i in 0..NR_KMALLOC_CACHES {
            let size = kmalloc_size(i);
            let objs: Vec<_> = (0..k.caches()[i].objs_per_slab() + 40).map(|_| k.kmalloc(size, GFP_KERNEL).unwrap()).collect();
            for (j, p) in objs.iter().enumerate() {
                fill(*p, size, j as u8);
            }
            for (j, p) in objs.iter().enumerate() {
                assert!(bytes(*p, size).iter().all(|&b| b == j as u8));
                k.kfree(*p).unwrap();
            }
            assert_eq!(k.kfree(objs[0]), Err(KfreeError::DoubleFree));
        }
        k.shrink();
    });
    // A CPU id beyond MAX_CPUS has no cache: straight to and from the slabs.
    on_cpu(MAX_CPUS + 5, move || {
        let p = k.kmalloc(100, GFP_KERNEL).unwrap();
        let q = k.kmalloc(100, GFP_KERNEL).unwrap();
        k.kfree(p).unwrap();
        assert_eq!(k.kfree(p), Err(KfreeError::DoubleFree), "in its slab's free map");
        k.kfree(q).unwrap();
        assert_eq!(k.cached_objects(&k.caches()[kmalloc_index(100).unwrap()]), 0);
        k.shrink();
    });
    assert_eq!(k.stats().double_frees, NR_KMALLOC_CACHES as u64 + 1);
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(pa.stats().free(), baseline);
}

#[test]
fn cpu_local_remote_drain_is_done_by_the_owner() {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    let k: &'static LocalKmalloc = leak(Kmalloc::new(pa, arena(NR_PAGES), SlabConfig::default()));
    let s = &k.caches()[kmalloc_index(64).unwrap()];
    let (to_owner, owner_rx) = std::sync::mpsc::channel::<()>();
    let (to_main, main_rx) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn(move || {
        set_test_cpu(5);
        let objs: Vec<_> = (0..40).map(|_| k.kmalloc(64, GFP_KERNEL).unwrap()).collect();
        for p in &objs[..3] {
            k.kfree(*p).unwrap();
        }
        to_main.send(()).unwrap();
        owner_rx.recv().unwrap();
        // A double free of an object on this CPU's cache, seen from here.
        assert_eq!(k.kfree(objs[0]), Err(KfreeError::DoubleFree));
        // 40 allocations took 3 batches of 16 (8 left), 3 frees: 11 cached. 21 frees
        // fill the array (limit 32); the next flushes it all, as requested, instead of
        // the oldest `batch`, and the last 15 frees stay cached: 16.
        for p in &objs[3..] {
            k.kfree(*p).unwrap();
        }
        to_main.send(()).unwrap();
        owner_rx.recv().unwrap();
        k.drain_cpu_caches(); // its own cache: drained at once
        to_main.send(()).unwrap();
    });
    set_test_cpu(0);
    main_rx.recv().unwrap();
    assert_eq!(k.cached_objects(s), 11);
    // A double free of an object cached on CPU 5, seen from CPU 0 (snapshot read).
    let cached = NonNull::new(s.cpu_slab[5].ac.get(0) as *mut u8).unwrap();
    assert_eq!(k.kfree(cached), Err(KfreeError::DoubleFree));
    k.drain_cpu_caches();
    assert!(s.cpu_slab[5].drain_req.load(Relaxed), "CPU 0 may only ask");
    assert_eq!(k.cached_objects(s), 11, "CPU 5's cache untouched");
    to_owner.send(()).unwrap();
    main_rx.recv().unwrap();
    assert!(!s.cpu_slab[5].drain_req.load(Relaxed));
    assert_eq!(k.cached_objects(s), 16, "drained by its owner (32 after a normal batch flush)");
    to_owner.send(()).unwrap();
    main_rx.recv().unwrap();
    owner.join().unwrap();
    assert_eq!(k.cached_objects(s), 0);
    assert_eq!(k.stats().double_frees, 2);
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(pa.stats().free(), baseline);
}

#[test]
fn cpu_local_multithreaded_stress() {
    let pa = page_alloc(NR_PAGES);
    let baseline = pa.stats().free();
    let k: &'static LocalKmalloc = leak(Kmalloc::new(pa, arena(NR_PAGES), SlabConfig::default()));
    let stress = Stress { steps: 20_000, max_size: 8192, check_len: 64, handoff: 4000 };
    let rest = cross_cpu_stress(k, 1..5, |cpu| cpu as u64 * 31 + 7, stress);
    on_cpu(1, move || {
        for a in rest {
            k.kfree(NonNull::new(a as *mut u8).unwrap()).unwrap();
        }
    });
    // Each CPU drains its own caches.
    for cpu in 0..5 {
        on_cpu(cpu, move || k.drain_cpu_caches());
    }
    assert_eq!(k.stats().double_frees + k.stats().invalid_frees, 0);
    k.shrink();
    assert_eq!(k.stats().nr_slab_pages, 0);
    assert_eq!(pa.stats().free(), baseline);
}
