//! kmalloc micro-benchmarks (rdtsc harness, `harness = false`).
//!
//! Run: `cargo bench -p mm --bench slab`. Prints Markdown tables: median cycles per
//! alloc+free pair (batches of 1000 pairs between `lfence; rdtsc; lfence`, 501 samples
//! per allocator — 11 for one whose pair costs over 100 000 cycles — the allocators'
//! batches interleaved so that machine noise hits them alike), ours vs `linked_list_allocator::Heap` and `talc` in the same run, fresh and
//! after a fragmenting warm-up, plus the cost of `init_on_free`. Ours is measured twice:
//! with the kernel's per-CPU lock discipline (`CPU_LOCAL`, a plain flag; sound here
//! because the benchmark is single-threaded) and with [`HostPlatform`] (an atomic
//! spin lock, what any host thread pays). See docs/benchmarks.md.
//!
//! `cargo bench -p mm --bench slab -- icount` runs a fixed number of pairs per
//! allocator in named functions (`icount_*`), for `valgrind --tool=callgrind`.

mod util;
use util::{fragment, pair_cycles2, pair_cycles4, CpuLocal};
use std::alloc::Layout;
use std::hint::black_box;

use mm::addr::Pfn;
use mm::gfp::GFP_KERNEL;
use mm::page::PageMeta;
use mm::page_alloc::{AllocConfig, NoHooks, NoPhysMem, PageAlloc};
use mm::slab::{ArenaDirectMap, Kmalloc, SlabConfig};
use mm::sync::{HostPlatform, Platform};

const NR_PAGES: u64 = 16384; // 64 MiB
const HEAP_BYTES: usize = 64 << 20;
const ICOUNT_PAIRS: usize = 100_000;

type Slab<P> = Kmalloc<'static, PageAlloc<'static, P>, ArenaDirectMap, P>;

fn slab<P: Platform>(config: SlabConfig) -> &'static Slab<P> {
    let metas = Box::leak((0..NR_PAGES).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
    let cfg = AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() };
    let pa: &'static PageAlloc<'static, P> =
        Box::leak(Box::new(PageAlloc::new(metas, Pfn(0), &[Pfn(0)..Pfn(NR_PAGES)], &NoPhysMem, &NoHooks, cfg).unwrap()));
    let map: &'static ArenaDirectMap = Box::leak(Box::new(ArenaDirectMap::new(Pfn(0), NR_PAGES).unwrap()));
    Box::leak(Box::new(Kmalloc::new(pa, map, config)))
}

fn heap_memory() -> &'static mut [u8] {
    Box::leak(vec![0u8; HEAP_BYTES].into_boxed_slice())
}

fn ll_heap() -> &'static mut linked_list_allocator::Heap {
    let mem = heap_memory();
    let heap = Box::leak(Box::new(linked_list_allocator::Heap::empty()));
    // SAFETY: `mem` is leaked, so it is valid and unused by anything else forever.
    unsafe { heap.init(mem.as_mut_ptr(), mem.len()) };
    heap
}

fn talc_heap() -> &'static mut talc::Talc<talc::ErrOnOom> {
    let mem = heap_memory();
    let t = Box::leak(Box::new(talc::Talc::new(talc::ErrOnOom)));
    // SAFETY: `mem` is leaked, so it is valid and unused by anything else forever.
    unsafe { t.claim(talc::Span::from(mem)).unwrap() };
    t
}

fn fragment_slab<P: Platform>(k: &'static Slab<P>) {
    fragment(|op| match op {
        Ok(l) => k.kmalloc(l.size(), GFP_KERNEL).ok(),
        Err((p, _)) => k.kfree(p).ok().and(None),
    });
}

#[inline(always)]
fn slab_pair<P: Platform>(k: &Slab<P>, size: usize) {
    let p = k.kmalloc(black_box(size), GFP_KERNEL).unwrap();
    k.kfree(black_box(p)).unwrap();
}

#[inline(always)]
fn ll_pair(ll: &mut linked_list_allocator::Heap, layout: Layout) {
    let p = ll.allocate_first_fit(black_box(layout)).unwrap();
    // SAFETY: `p` was just allocated from `ll` with `layout`.
    unsafe { ll.deallocate(black_box(p), layout) };
}

#[inline(always)]
fn talc_pair(tl: &mut talc::Talc<talc::ErrOnOom>, layout: Layout) {
    // SAFETY: the heap was claimed over leaked memory; `p` is freed with its layout.
    unsafe {
        let p = tl.malloc(black_box(layout)).unwrap();
        tl.free(black_box(p), layout);
    }
}

struct Row {
    size: usize,
    state: &'static str,
    local: f64,
    host: f64,
    ll: f64,
    talc: f64,
}

struct Heaps {
    local: &'static Slab<CpuLocal>,
    host: &'static Slab<HostPlatform>,
    ll: &'static mut linked_list_allocator::Heap,
    tl: &'static mut talc::Talc<talc::ErrOnOom>,
}

fn heaps(fragmented: bool) -> Heaps {
    let h = Heaps { local: slab(SlabConfig::default()), host: slab(SlabConfig::default()), ll: ll_heap(), tl: talc_heap() };
    if fragmented {
        fragment_slab(h.local);
        fragment_slab(h.host);
        fragment(|op| match op {
            Ok(l) => h.ll.allocate_first_fit(l).ok(),
            Err((p, l)) => {
                // SAFETY: `p` came from this heap with layout `l`.
                unsafe { h.ll.deallocate(p, l) };
                None
            }
        });
        fragment(|op| match op {
            // SAFETY: the heap was claimed over leaked memory.
            Ok(l) => unsafe { h.tl.malloc(l) }.ok(),
            // SAFETY: `p` came from this heap with layout `l`.
            Err((p, l)) => {
                unsafe { h.tl.free(p, l) };
                None
            }
        });
    }
    h
}

fn measure(size: usize, fragmented: bool) -> Row {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let h = heaps(fragmented);
    let (local, host, ll, tl) = (h.local, h.host, h.ll, h.tl);
    let [local, host, ll, talc] = pair_cycles4(
        || slab_pair(local, size),
        || slab_pair(host, size),
        || ll_pair(ll, layout),
        || talc_pair(tl, layout),
    );
    Row { size, state: if fragmented { "after warm-up" } else { "fresh" }, local, host, ll, talc }
}

fn init_on_free_cost(size: usize) -> [f64; 2] {
    let off: &'static Slab<CpuLocal> = slab(SlabConfig::default());
    let on: &'static Slab<CpuLocal> = slab(SlabConfig { init_on_free: true, init_on_alloc: false });
    pair_cycles2(|| slab_pair(off, size), || slab_pair(on, size))
}

#[inline(never)]
fn icount_ours_local(k: &Slab<CpuLocal>, size: usize) {
    for _ in 0..ICOUNT_PAIRS {
        slab_pair(k, size);
    }
}
#[inline(never)]
fn icount_ours_host(k: &Slab<HostPlatform>, size: usize) {
    for _ in 0..ICOUNT_PAIRS {
        slab_pair(k, size);
    }
}
#[inline(never)]
fn icount_ll(ll: &mut linked_list_allocator::Heap, layout: Layout) {
    for _ in 0..ICOUNT_PAIRS {
        ll_pair(ll, layout);
    }
}
#[inline(never)]
fn icount_talc(tl: &mut talc::Talc<talc::ErrOnOom>, layout: Layout) {
    for _ in 0..ICOUNT_PAIRS {
        talc_pair(tl, layout);
    }
}

/// Fixed work for instruction counting: `ICOUNT_PAIRS` fresh pairs per allocator and
/// size, each allocator in its own `icount_*` function (inclusive cost / 100 000 =
/// instructions per pair).
fn icount(size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let h = heaps(false);
    icount_ours_local(h.local, size);
    icount_ours_host(h.host, size);
    icount_ll(h.ll, layout);
    icount_talc(h.tl, layout);
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if let Some(size) = filter.as_deref().and_then(|f| f.strip_prefix("icount")) {
        icount(size.trim_start_matches(['-', '=']).parse().unwrap_or(32));
        return;
    }
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if want("pair") {
        println!(
            "| size | state | kmalloc+kfree, CPU-local lock | kmalloc+kfree, atomic lock | linked_list_allocator | talc | ll / ours | talc / ours | ll / ours (atomic) | talc / ours (atomic) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for fragmented in [false, true] {
            for size in [32, 256, 4096] {
                let r = measure(size, fragmented);
                println!(
                    "| {} B | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                    r.size,
                    r.state,
                    r.local,
                    r.host,
                    r.ll,
                    r.talc,
                    r.ll / r.local,
                    r.talc / r.local,
                    r.ll / r.host,
                    r.talc / r.host
                );
            }
        }
    }
    if want("init_on_free") {
        println!();
        println!("| size | init_on_free off | init_on_free on | extra cycles |");
        println!("|---|---|---|---|");
        for size in [32, 256, 4096] {
            let [off, on] = init_on_free_cost(size);
            println!("| {size} B | {off:.1} | {on:.1} | {:.1} |", on - off);
        }
    }
}
