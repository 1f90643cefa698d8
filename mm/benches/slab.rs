//! kmalloc micro-benchmarks (rdtsc harness, `harness = false`).
//!
//! Run: `cargo bench -p mm --bench slab`. Prints a Markdown table: median cycles per
//! alloc+free pair (batches of 1000 pairs between `lfence; rdtsc; lfence`, 501 samples),
//! ours vs `linked_list_allocator::Heap` and `talc` in the same run, fresh and after a
//! fragmenting warm-up, plus the cost of `init_on_free`. See docs/benchmarks.md.

mod util;
use util::{median, rdtsc, Rng};
use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;

use mm::addr::Pfn;
use mm::gfp::GFP_KERNEL;
use mm::page::PageMeta;
use mm::page_alloc::{AllocConfig, NoHooks, NoPhysMem, PageAlloc};
use mm::slab::{ArenaDirectMap, Kmalloc, SlabConfig};
use mm::sync::HostPlatform;

const NR_PAGES: u64 = 16384; // 64 MiB
const HEAP_BYTES: usize = 64 << 20;
const SAMPLES: usize = 501;
const BATCH: usize = 1000;

type Alloc = PageAlloc<'static, HostPlatform>;
type Slab = Kmalloc<'static, Alloc, ArenaDirectMap, HostPlatform>;


/// Median cycles per pair over `SAMPLES` batches of `BATCH` pairs.
fn pair_cycles(mut pair: impl FnMut()) -> f64 {
    for _ in 0..BATCH * 4 {
        pair();
    }
    let v = (0..SAMPLES)
        .map(|_| {
            let t0 = rdtsc();
            for _ in 0..BATCH {
                pair();
            }
            (rdtsc() - t0) as f64 / BATCH as f64
        })
        .collect();
    median(v)
}

fn slab(config: SlabConfig) -> &'static Slab {
    let metas = Box::leak((0..NR_PAGES).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
    let cfg = AllocConfig { min_free_kbytes: Some(0), ..AllocConfig::default() };
    let pa: &'static Alloc =
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


/// Mixed-size warm-up: 20000 allocations of 8..2048 bytes, every other one freed.
/// `op(Ok(layout))` allocates, `op(Err((ptr, layout)))` frees.
fn fragment(mut op: impl FnMut(Result<Layout, (NonNull<u8>, Layout)>) -> Option<NonNull<u8>>) {
    let mut rng = Rng(12345);
    let mut v = Vec::new();
    for _ in 0..20_000 {
        let l = Layout::from_size_align(8 + (rng.next() % 2040) as usize, 8).unwrap();
        v.push((op(Ok(l)).unwrap(), l));
    }
    for (i, (p, l)) in v.into_iter().enumerate() {
        if i % 2 == 0 {
            op(Err((p, l)));
        } else {
            let _ = p; // stays live for the rest of the run
        }
    }
}

struct Row {
    size: usize,
    state: &'static str,
    ours: f64,
    ll: f64,
    talc: f64,
}

fn measure(size: usize, fragmented: bool) -> Row {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let k = slab(SlabConfig::default());
    let ll = ll_heap();
    let tl = talc_heap();
    if fragmented {
        fragment(|op| match op {
            Ok(l) => k.kmalloc(l.size(), GFP_KERNEL).ok(),
            Err((p, _)) => k.kfree(p).ok().and(None),
        });
        fragment(|op| match op {
            Ok(l) => ll.allocate_first_fit(l).ok(),
            Err((p, l)) => {
                // SAFETY: `p` came from this heap with layout `l`.
                unsafe { ll.deallocate(p, l) };
                None
            }
        });
        fragment(|op| match op {
            // SAFETY: the heap was claimed over leaked memory.
            Ok(l) => unsafe { tl.malloc(l) }.ok(),
            // SAFETY: `p` came from this heap with layout `l`.
            Err((p, l)) => {
                unsafe { tl.free(p, l) };
                None
            }
        });
    }
    let ours = pair_cycles(|| {
        let p = k.kmalloc(black_box(size), GFP_KERNEL).unwrap();
        k.kfree(black_box(p)).unwrap();
    });
    let llc = pair_cycles(|| {
        let p = ll.allocate_first_fit(black_box(layout)).unwrap();
        // SAFETY: `p` was just allocated from `ll` with `layout`.
        unsafe { ll.deallocate(black_box(p), layout) };
    });
    let tc = pair_cycles(|| {
        // SAFETY: the heap was claimed over leaked memory; `p` is freed with its layout.
        unsafe {
            let p = tl.malloc(black_box(layout)).unwrap();
            tl.free(black_box(p), layout);
        }
    });
    Row { size, state: if fragmented { "after warm-up" } else { "fresh" }, ours, ll: llc, talc: tc }
}

fn init_on_free_cost(size: usize) -> (f64, f64) {
    let off = slab(SlabConfig::default());
    let on = slab(SlabConfig { init_on_free: true, init_on_alloc: false });
    let run = |k: &'static Slab| {
        pair_cycles(|| {
            let p = k.kmalloc(black_box(size), GFP_KERNEL).unwrap();
            k.kfree(black_box(p)).unwrap();
        })
    };
    (run(off), run(on))
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if want("pair") {
        println!("| size | state | kmalloc+kfree | linked_list_allocator | talc | ll / ours | talc / ours |");
        println!("|---|---|---|---|---|---|---|");
        for fragmented in [false, true] {
            for size in [32, 256, 4096] {
                let r = measure(size, fragmented);
                println!(
                    "| {} B | {} | {:.1} | {:.1} | {:.1} | {:.1}x | {:.2}x |",
                    r.size,
                    r.state,
                    r.ours,
                    r.ll,
                    r.talc,
                    r.ll / r.ours,
                    r.talc / r.ours
                );
            }
        }
    }
    if want("init_on_free") {
        println!();
        println!("| size | init_on_free off | init_on_free on | extra cycles |");
        println!("|---|---|---|---|");
        for size in [32, 256, 4096] {
            let (off, on) = init_on_free_cost(size);
            println!("| {size} B | {off:.1} | {on:.1} | {:.1} |", on - off);
        }
    }
}
