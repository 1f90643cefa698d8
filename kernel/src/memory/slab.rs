//! `kmalloc` in the kernel and the `#[global_allocator]`.
//!
//! The `mm::slab` caches (8 B .. 8 KiB) are instantiated over the page
//! allocator and the direct map. The global allocator ([`KernelHeap`]) sends
//! `Box`/`Vec`/`String` allocations to:
//!
//! - the early `.bss` heap until the page allocator is up (and frees blocks
//!   from there back to it);
//! - `kmalloc` for sizes up to 8 KiB;
//! - the page allocator for larger blocks (up to 4 MiB, order 10).
//!
//! A slab's preferred order (up to 3) is tried without reclaim first; when
//! fragmentation defeats it, `mm::slab` falls back to the minimum order
//! (`oo_min`, counted as `order_fallback`, shown by `slabinfo`), so a 4 KiB
//! kmalloc only needs one free page. The per-CPU caches use the CPU-local lock
//! (`KernelPlatform::CPU_LOCAL`): interrupts off and a plain flag, no atomics.
//!
//! Every allocation uses `GFP_KERNEL` narrowed by the current
//! `memalloc_nofs/noio` scope, which is how vmalloc's bookkeeping honours its
//! caller's flags. Empty slabs are given back by the slab shrinker.
//!
//! Linux counterparts: `mm/slub.c` (`kmalloc`, `kfree`), `kmalloc_large`,
//! `/proc/slabinfo`.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};

use mm::addr::{Pfn, PAGE_SHIFT, PAGE_SIZE};
use mm::gfp::{Gfp, GFP_KERNEL, __GFP_HIGH};
use mm::page::PageMeta;
use mm::page_alloc::{AllocError, Pages, MAX_ORDER};
use mm::shrinker::{ShrinkControl, Shrinker};
use mm::slab::{DirectMap, Kmalloc, SlabConfig, SlabPageProvider, KMALLOC_MAX_CACHE_SIZE};

use crate::arch::x86_64::memmap;
use crate::arch::x86_64::platform::KernelPlatform;
use crate::memory::page_alloc::page_alloc;
use crate::memory::page_alloc::MEMALLOC_SCOPE;

/// Slab pages come from the kernel's page allocator.
pub struct SlabPages;

impl SlabPageProvider for SlabPages {
    #[inline]
    fn alloc_slab_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        page_alloc().alloc_pages(gfp, order)
    }
    #[inline]
    fn free_slab_pages(&self, pages: Pages) {
        page_alloc().free_pages(pages)
    }
    #[inline(always)]
    fn slab_page(&self, pfn: Pfn) -> Option<&PageMeta> {
        page_alloc().page(pfn)
    }
}

/// Frames through the kernel's direct map.
pub struct KernelDirectMap;

// SAFETY: the direct map maps every physical frame at `offset + phys`
// (contiguous, so aligned blocks stay aligned), for the kernel's lifetime;
// `virt_to_pfn` is its inverse and rejects addresses outside the frames the
// page allocator describes.
unsafe impl DirectMap for KernelDirectMap {
    #[inline]
    fn pfn_to_virt(&self, pfn: Pfn) -> *mut u8 {
        memmap::phys_to_virt(pfn.phys_addr())
    }
    #[inline(always)]
    fn virt_to_pfn(&self, addr: usize) -> Option<Pfn> {
        let offset = memmap::facts().physical_memory_offset as usize;
        let pfn = Pfn((addr.checked_sub(offset)? >> PAGE_SHIFT) as u64);
        page_alloc().page(pfn).map(|_| pfn)
    }
}

static SLAB_PAGES: SlabPages = SlabPages;
static DIRECT_MAP: KernelDirectMap = KernelDirectMap;

/// The kernel's kmalloc caches.
pub static KMALLOC: Kmalloc<'static, SlabPages, KernelDirectMap, KernelPlatform> =
    Kmalloc::new(&SLAB_PAGES, &DIRECT_MAP, SlabConfig { init_on_alloc: false, init_on_free: false });

/// Set once the page allocator can serve the global allocator.
static READY: AtomicBool = AtomicBool::new(false);

/// Gives empty slabs back to the page allocator under memory pressure.
struct SlabShrinker;

impl Shrinker for SlabShrinker {
    fn name(&self) -> &str {
        "kmalloc-slabs"
    }
    fn count_objects(&self, _: &ShrinkControl) -> u64 {
        KMALLOC.count_reclaimable()
    }
    fn scan_objects(&self, _: &mut ShrinkControl) -> u64 {
        KMALLOC.shrink()
    }
}

static SLAB_SHRINKER: SlabShrinker = SlabShrinker;

/// Switches the global allocator to kmalloc and registers the slab shrinker;
/// `config` carries the `init_on_alloc=` / `init_on_free=` boot options.
pub fn init(config: SlabConfig) {
    KMALLOC.set_config(config);
    crate::memory::shrinker::register(&SLAB_SHRINKER);
    READY.store(true, Ordering::SeqCst);
    log::info!(
        "slab: kmalloc caches 8 B .. {} KiB now serve the kernel heap (init_on_alloc={}, init_on_free={})",
        KMALLOC_MAX_CACHE_SIZE / 1024,
        config.init_on_alloc as u8,
        config.init_on_free as u8
    );
}

fn is_kmalloc_layout(layout: Layout) -> bool {
    layout.size() <= KMALLOC_MAX_CACHE_SIZE && layout.align() <= PAGE_SIZE as usize
}

/// Page order of a block of `size` bytes from the page allocator (Linux
/// `get_order`).
pub fn large_order(size: usize) -> usize {
    let pages = size.div_ceil(PAGE_SIZE as usize).max(1);
    pages.next_power_of_two().trailing_zeros() as usize
}

/// The kernel's `#[global_allocator]`.
pub struct KernelHeap;

#[global_allocator]
static HEAP: KernelHeap = KernelHeap;

// SAFETY: each block comes from exactly one backing allocator and goes back
// to the same one: early-heap blocks are recognised by address, the rest by
// their layout (small: kmalloc, which finds the slab from the address; large:
// the page-allocator block of the layout's order at that address).
/// One attempt of the kernel heap: kmalloc caches, or whole pages above them.
fn heap_alloc(layout: Layout, gfp: Gfp) -> *mut u8 {
    if is_kmalloc_layout(layout) {
        return KMALLOC.kmalloc_layout(layout, gfp).map_or(core::ptr::null_mut(), |p| p.as_ptr());
    }
    let order = large_order(layout.size());
    if order > MAX_ORDER || layout.align() > (PAGE_SIZE as usize) << order {
        return core::ptr::null_mut();
    }
    match page_alloc().alloc_pages(gfp, order) {
        Ok(pages) => memmap::phys_to_virt(pages.leak().phys_addr()),
        Err(_) => core::ptr::null_mut(),
    }
}

unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !READY.load(Ordering::Acquire) {
            return crate::memory::heap::alloc(layout);
        }
        let gfp = MEMALLOC_SCOPE.current_gfp_context(GFP_KERNEL);
        // Most Rust allocations cannot fail gracefully (a failed `Box::new`
        // panics), so a failure is retried once with access to the reserve
        // below the min watermark (`__GFP_HIGH`), which user pages never get:
        // a process that eats all memory meets the OOM killer, and the kernel
        // can still allocate what killing it takes. A `NoReserve` scope (a
        // fallible allocation for a caller without `__GFP_HIGH`, e.g. vmalloc's
        // bookkeeping) strips the bit: no retry then.
        let ptr = heap_alloc(layout, gfp);
        let retry = MEMALLOC_SCOPE.current_gfp_context(GFP_KERNEL | __GFP_HIGH);
        if ptr.is_null() && retry != gfp { heap_alloc(layout, retry) } else { ptr }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if crate::memory::heap::owns(ptr) {
            // SAFETY: an early-heap block, handed out with this layout.
            return unsafe { crate::memory::heap::dealloc(ptr, layout) };
        }
        if is_kmalloc_layout(layout) {
            if let Some(p) = core::ptr::NonNull::new(ptr) {
                if let Err(e) = KMALLOC.kfree(p) {
                    log::error!("kfree({:p}): {:?}", ptr, e);
                }
            }
            return;
        }
        let Some(pfn) = DIRECT_MAP.virt_to_pfn(ptr as usize) else {
            return log::error!("dealloc({:p}): not a kernel heap address", ptr);
        };
        // SAFETY: `alloc` leaked exactly this block (pfn, order of the layout).
        page_alloc().free_pages(unsafe { Pages::from_raw(pfn, large_order(layout.size())) });
    }
}

/// Free pages once the slab caches have given back their empty slabs and the
/// page-table quicklist its zeroed tables: the number tests compare before
/// and after (kernel heap objects allocated and freed in between may otherwise
/// leave an empty slab cached, an emptied page table a quicklist page).
pub fn nr_free_pages_settled() -> u64 {
    let _ = KMALLOC.shrink();
    crate::memory::pgtable::PGTABLE_CTL.quicklist.drain(|p| page_alloc().free_pages(p));
    page_alloc().stats().free()
}

pub const COMMANDS: &[crate::lib::command::Command] = &[
    crate::lib::command::Command {
        name: "slabinfo",
        args: "",
        help: "kmalloc caches, like /proc/slabinfo, then the order_fallback counters",
        run: |_| {
            let _ = KMALLOC.slabinfo(&mut crate::lib::printk::Writer);
            let _ = KMALLOC.slub_stats(&mut crate::lib::printk::Writer);
        },
    },
    crate::lib::command::Command {
        name: "kmalloc-bench",
        args: "[ROUNDS]",
        help: "TSC per kmalloc+kfree pair vs linked_list_allocator (instructions under --icount)",
        run: cmd_kmalloc_bench,
    },
];

/// Pairs per timed batch of `kmalloc-bench`.
const BENCH_BATCH: u64 = 1000;
/// Most batches per allocator `kmalloc-bench` accepts (bounds its sample vectors).
const BENCH_MAX_ROUNDS: usize = 10_000;

/// TSC ticks of one batch of `BENCH_BATCH` pairs.
fn bench_batch(pair: &mut impl FnMut()) -> u64 {
    let t0 = crate::arch::x86_64::cpu::rdtsc();
    for _ in 0..BENCH_BATCH {
        pair();
    }
    crate::arch::x86_64::cpu::rdtsc() - t0
}

/// `kmalloc-bench [ROUNDS]`: median TSC ticks (instructions under `--icount`) per
/// `kmalloc` + `kfree` pair of 32, 256 and 4096 bytes — the kernel's own
/// configuration: CPU-local lock with `pushf; cli` / `popf`, the real direct map
/// and `struct page` array — against a `linked_list_allocator::Heap` over 1 MiB,
/// their batches of 1000 pairs interleaved, ROUNDS (default 51) batches each.
fn cmd_kmalloc_bench(args: &str) {
    let word = crate::lib::command::single_arg(args);
    let Some(rounds) = crate::lib::command::count_arg("kmalloc-bench", "ROUNDS", word, 51, BENCH_MAX_ROUNDS) else {
        return;
    };
    let Ok(pages) = page_alloc().alloc_pages(GFP_KERNEL, 8) else {
        return crate::println!("kmalloc-bench: no 1 MiB block for the comparison heap");
    };
    let mut ll = linked_list_allocator::Heap::empty();
    // SAFETY: the 1 MiB block is ours until it is freed below, after the last use of
    // `ll`; it is mapped by the direct map.
    unsafe { ll.init(memmap::phys_to_virt(pages.phys_addr()), 1 << 20) };
    for size in [32usize, 256, 4096] {
        let Ok(layout) = Layout::from_size_align(size, 8) else { continue };
        let mut ours = || {
            if let Ok(p) = KMALLOC.kmalloc(core::hint::black_box(size), GFP_KERNEL) {
                let _ = KMALLOC.kfree(core::hint::black_box(p));
            }
        };
        let mut theirs = || {
            if let Ok(p) = ll.allocate_first_fit(core::hint::black_box(layout)) {
                // SAFETY: `p` was just allocated from `ll` with `layout`.
                unsafe { ll.deallocate(core::hint::black_box(p), layout) };
            }
        };
        bench_batch(&mut ours);
        bench_batch(&mut theirs);
        let (mut a, mut b) = (alloc::vec::Vec::with_capacity(rounds), alloc::vec::Vec::with_capacity(rounds));
        for _ in 0..rounds {
            a.push(bench_batch(&mut ours));
            b.push(bench_batch(&mut theirs));
        }
        a.sort_unstable();
        b.sort_unstable();
        let (ka, kb) = (a[rounds / 2], b[rounds / 2]);
        let per = |t: u64| (t / BENCH_BATCH, t % BENCH_BATCH / 100);
        let ((ai, af), (bi, bf)) = (per(ka), per(kb));
        let ratio = kb * 100 / ka.max(1);
        crate::println!(
            "kmalloc+kfree {:>4} B: median {}.{} TSC ticks per pair; linked_list_allocator {}.{} ({}.{:02}x ours) ({} rounds)",
            size,
            ai,
            af,
            bi,
            bf,
            ratio / 100,
            ratio % 100,
            rounds
        );
    }
    page_alloc().free_pages(pages);
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(kmalloc_serves_every_size_class_from_real_pages),
    crate::ktest!(global_allocator_is_kmalloc_after_boot),
    crate::ktest!(kfree_refuses_double_and_foreign_frees),
    crate::ktest!(slab_shrinker_returns_empty_slabs),
    crate::ktest!(init_on_alloc_and_init_on_free_zero_objects),
];

fn init_on_alloc_and_init_on_free_zero_objects() -> crate::lib::ktest::KResult {
    let saved = KMALLOC.config();
    // init_on_alloc: a reused object comes back zeroed without __GFP_ZERO.
    KMALLOC.set_config(SlabConfig { init_on_alloc: true, init_on_free: false });
    let p = KMALLOC.kmalloc(128, GFP_KERNEL).map_err(|_| "kmalloc")?;
    // SAFETY: a live 128-byte object.
    unsafe { core::ptr::write_bytes(p.as_ptr(), 0xee, 128) };
    let _ = KMALLOC.kfree(p);
    let q = KMALLOC.kmalloc(128, GFP_KERNEL).map_err(|_| "kmalloc")?;
    // SAFETY: a live 128-byte object.
    let zeroed_on_alloc = unsafe { core::slice::from_raw_parts(q.as_ptr(), 128) }.iter().all(|&b| b == 0);
    // init_on_free: everything but the 8-byte free marker is zero after kfree.
    KMALLOC.set_config(SlabConfig { init_on_alloc: false, init_on_free: true });
    // SAFETY: a live 128-byte object.
    unsafe { core::ptr::write_bytes(q.as_ptr(), 0xee, 128) };
    let _ = KMALLOC.kfree(q);
    // SAFETY: reading a freed object's bytes in the slab page (still mapped,
    // owned by the slab) only to check the sanitization.
    let zeroed_on_free = unsafe { core::slice::from_raw_parts(q.as_ptr().add(8), 120) }.iter().all(|&b| b == 0);
    KMALLOC.set_config(saved);
    crate::kassert!(zeroed_on_alloc, "init_on_alloc left old contents");
    crate::kassert!(zeroed_on_free, "init_on_free left old contents");
    Ok(())
}

/// Rust's `Box`/`Vec` use kmalloc once the page allocator is up: the memory is
/// not in the early heap, and its frame is a slab page (small) or an allocated
/// block (above 8 KiB).
fn global_allocator_is_kmalloc_after_boot() -> crate::lib::ktest::KResult {
    use mm::page::PageState;
    let state_of = |p: *const u8| DIRECT_MAP.virt_to_pfn(p as usize).and_then(|pfn| page_alloc().page(pfn)).map(|m| m.state());
    let small = alloc::boxed::Box::new([0x5au8; 64]);
    let small_ptr = small.as_ptr();
    let big: alloc::vec::Vec<u8> = alloc::vec![0xa5; 64 << 10];
    let big_ptr = big.as_ptr();
    crate::kassert!(READY.load(Ordering::Acquire), "the slab is not serving the heap");
    crate::kassert!(!crate::memory::heap::owns(small_ptr as *mut u8) && !crate::memory::heap::owns(big_ptr as *mut u8), "early heap used");
    let small_state = state_of(small_ptr);
    crate::kassert!(matches!(small_state, Some(PageState::Slab { .. })), "64-byte Box on {:?}", small_state);
    let size = core::ptr::NonNull::new(small_ptr as *mut u8).map(|p| KMALLOC.ksize(p));
    crate::kassert!(size == Some(Ok(64)), "ksize of the Box: {:?}", size);
    let big_state = state_of(big_ptr);
    crate::kassert!(matches!(big_state, Some(PageState::Allocated { order: 4, .. })), "64 KiB Vec on {:?}", big_state);
    Ok(())
}

fn kmalloc_serves_every_size_class_from_real_pages() -> crate::lib::ktest::KResult {
    let mut ptrs = alloc::vec::Vec::new();
    for size in [8usize, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192] {
        let p = KMALLOC.kmalloc(size, GFP_KERNEL).map_err(|_| "kmalloc failed")?;
        // SAFETY: a fresh object of `size` bytes.
        unsafe { core::ptr::write_bytes(p.as_ptr(), size as u8, size) };
        ptrs.push((p, size));
    }
    let mut ok = true;
    for &(p, size) in &ptrs {
        // SAFETY: still allocated, `size` bytes.
        ok &= unsafe { core::slice::from_raw_parts(p.as_ptr(), size) }.iter().all(|&b| b == size as u8);
        ok &= (p.as_ptr() as usize) % size.next_power_of_two().min(64) == 0 || size == 96 || size == 192;
        ok &= KMALLOC.kfree(p).is_ok();
    }
    crate::kassert!(ok, "object contents, alignment or kfree wrong");
    crate::kassert!(matches!(KMALLOC.kmalloc(8193, GFP_KERNEL), Err(mm::slab::KmallocError::TooLarge)), "8193 B accepted");
    Ok(())
}

fn kfree_refuses_double_and_foreign_frees() -> crate::lib::ktest::KResult {
    let before = KMALLOC.stats();
    let p = KMALLOC.kmalloc(64, GFP_KERNEL).map_err(|_| "kmalloc")?;
    crate::kassert!(KMALLOC.kfree(p).is_ok(), "first kfree refused");
    crate::kassert!(KMALLOC.kfree(p).is_err(), "double free accepted");
    let q = KMALLOC.kmalloc(64, GFP_KERNEL).map_err(|_| "kmalloc")?;
    // SAFETY: only the address is formed; kfree must refuse it without touching memory.
    let inside = unsafe { core::ptr::NonNull::new_unchecked(q.as_ptr().add(8)) };
    crate::kassert!(KMALLOC.kfree(inside).is_err(), "misaligned free accepted");
    crate::kassert!(KMALLOC.kfree(q).is_ok(), "kfree refused");
    let after = KMALLOC.stats();
    crate::kassert_eq!(after.double_frees, before.double_frees + 1);
    crate::kassert_eq!(after.invalid_frees, before.invalid_frees + 1);
    Ok(())
}

fn slab_shrinker_returns_empty_slabs() -> crate::lib::ktest::KResult {
    let _ = KMALLOC.shrink();
    let free0 = crate::memory::slab::nr_free_pages_settled();
    let mut objs = alloc::vec::Vec::new();
    for _ in 0..2000 {
        objs.push(KMALLOC.kmalloc(512, GFP_KERNEL).map_err(|_| "kmalloc")?);
    }
    let held = free0 - crate::memory::slab::nr_free_pages_settled();
    for p in objs {
        let _ = KMALLOC.kfree(p);
    }
    let freed = crate::memory::shrinker::SHRINKERS.drop_slab();
    crate::kassert!(held >= 2000 * 512 / 4096, "2000 objects of 512 B held only {} pages", held);
    crate::kassert!(freed > 0, "the slab shrinker freed nothing");
    crate::kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}
