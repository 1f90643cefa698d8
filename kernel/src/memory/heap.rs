//! The early kernel heap: a fixed 4 MiB region in `.bss` managed by
//! `linked_list_allocator`, so `alloc` (Box, Vec, String) works from the first
//! line of `kernel_main`. Once the page allocator is up, the
//! `#[global_allocator]` (`slab.rs`) serves new allocations from `kmalloc`
//! and the page allocator; blocks allocated here before that are still freed
//! here ([`owns`]).

use core::alloc::Layout;
use core::ptr::{addr_of_mut, NonNull};

use linked_list_allocator::Heap;

use crate::lib::sync::IrqSpinlock;

pub const EARLY_HEAP_SIZE: usize = 4 * 1024 * 1024;

#[repr(align(4096))]
struct HeapArea(#[allow(dead_code)] [u8; EARLY_HEAP_SIZE]); // used through its address

static mut EARLY_HEAP_AREA: HeapArea = HeapArea([0; EARLY_HEAP_SIZE]);

static HEAP: IrqSpinlock<Heap> = IrqSpinlock::new(Heap::empty());

/// Allocates from the early heap (null when it is exhausted).
pub fn alloc(layout: Layout) -> *mut u8 {
    HEAP.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

/// Frees an early-heap block.
///
/// # Safety
/// `ptr` came from [`alloc`] with the same `layout` and is not used again.
pub unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
    if let Some(ptr) = NonNull::new(ptr) {
        // SAFETY: per the contract, `ptr` is a live block of this heap with `layout`.
        unsafe { HEAP.lock().deallocate(ptr, layout) }
    }
}

/// Whether `ptr` lies in the early heap's area.
pub fn owns(ptr: *mut u8) -> bool {
    let start = addr_of_mut!(EARLY_HEAP_AREA) as usize;
    (start..start + EARLY_HEAP_SIZE).contains(&(ptr as usize))
}

/// Hands the `.bss` area to the allocator. Must run once, before any allocation.
pub fn init() {
    // SAFETY: called once at boot before any allocation; the area is a static
    // used by nothing else, so the heap owns it exclusively from now on.
    unsafe {
        let start = addr_of_mut!(EARLY_HEAP_AREA) as *mut u8;
        HEAP.lock().init(start, EARLY_HEAP_SIZE);
    }
}

/// (used, free) bytes of the early heap.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(heap_box_vec_and_string),
    crate::ktest!(heap_reuses_freed_memory),
    crate::ktest!(heap_exhaustion_is_an_error_and_everything_comes_back),
];

fn heap_box_vec_and_string() -> crate::lib::ktest::KResult {
    use alloc::{boxed::Box, string::String, vec::Vec};
    let b = Box::new(0xdead_beef_u64);
    crate::kassert_eq!(*b, 0xdead_beef);
    let v: Vec<u64> = (0..10_000).collect();
    crate::kassert_eq!(v.iter().sum::<u64>(), 10_000 * 9_999 / 2);
    let mut s = String::new();
    for i in 0..100 {
        core::fmt::Write::write_fmt(&mut s, format_args!("{} ", i)).map_err(|_| "fmt")?;
    }
    crate::kassert!(s.starts_with("0 1 2 ") && s.ends_with("99 "), "string content: {}", s);
    Ok(())
}

fn heap_reuses_freed_memory() -> crate::lib::ktest::KResult {
    // Small (slab) and large (page allocator) blocks: after freeing, the free
    // page count is back where it was.
    let free_before = crate::memory::slab::nr_free_pages_settled();
    for i in 0..1000 {
        let v = alloc::vec![0u8; 64 * 1024];
        let w = alloc::vec![1u8; 8 + i % 500];
        crate::kassert_eq!(v.len() + w.len(), 64 * 1024 + 8 + i % 500);
    }
    crate::kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Block sizes of [`heap_exhaustion_is_an_error_and_everything_comes_back`],
/// largest first: 1 MiB and 64 KiB blocks come from the page allocator, 4 KiB
/// and 64 B ones from kmalloc slabs.
const EXHAUST_SIZES: [usize; 4] = [1 << 20, 64 << 10, 4 << 10, 64];

/// Handle slots beyond one per managed page: the 64 B objects the partial
/// kmalloc-64 slabs may still hold when no page is left.
const EXHAUST_EXTRA_HANDLES: usize = 16 * 1024;

fn exhaust_layout(size: usize) -> Result<Layout, crate::lib::ktest::TestFailure> {
    Layout::from_size_align(size, 8).map_err(|_| "bad layout".into())
}

fn heap_exhaustion_is_an_error_and_everything_comes_back() -> crate::lib::ktest::KResult {
    use alloc::vec::Vec;
    let a = crate::memory::page_alloc::page_alloc();
    // Fill the kernel heap (the global allocator after boot) through the
    // fallible API until it says no, at every size in turn, so that the heap is
    // full for small objects too. Every handle slot is reserved first: no heap
    // allocation may be needed once memory is gone, and nothing may allocate
    // until everything is freed again (so the checks come at the end).
    let mut held: Vec<NonNull<u8>> = Vec::new();
    held.try_reserve_exact(a.managed_pages() as usize + EXHAUST_EXTRA_HANDLES).map_err(|_| "no heap for the handles")?;
    let layouts = [
        exhaust_layout(EXHAUST_SIZES[0])?,
        exhaust_layout(EXHAUST_SIZES[1])?,
        exhaust_layout(EXHAUST_SIZES[2])?,
        exhaust_layout(EXHAUST_SIZES[3])?,
    ];
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let mut ends = [0usize; EXHAUST_SIZES.len()];
    let mut refused = [false; EXHAUST_SIZES.len()];
    for (stage, layout) in layouts.iter().enumerate() {
        while held.len() < held.capacity() {
            // SAFETY: every layout has a non-zero size. `alloc` is the raw
            // fallible entry: null on failure, no `handle_alloc_error`.
            match NonNull::new(unsafe { alloc::alloc::alloc(*layout) }) {
                Some(p) => held.push(p),
                None => {
                    refused[stage] = true;
                    break;
                }
            }
        }
        ends[stage] = held.len();
    }
    let left_above_min = a.free_above_min();
    // With the heap full, `Vec`'s fallible API reports an error at any size.
    let mut probe: Vec<u8> = Vec::new();
    let vec_small_refused = probe.try_reserve_exact(64).is_err();
    let vec_large_refused = probe.try_reserve_exact(1 << 20).is_err();
    drop(probe);
    let mut start = 0;
    for (stage, layout) in layouts.iter().enumerate() {
        for p in &held[start..ends[stage]] {
            // SAFETY: `p` came from `alloc(*layout)` in this stage and is freed
            // exactly once (the handles are cleared right after).
            unsafe { alloc::alloc::dealloc(p.as_ptr(), *layout) };
        }
        start = ends[stage];
    }
    held.clear();
    let free_after = crate::memory::slab::nr_free_pages_settled();
    // Healthy again: small and large fallible allocations succeed.
    let mut small: Vec<u8> = Vec::new();
    let mut large: Vec<u8> = Vec::new();
    let recovered = small.try_reserve_exact(64).is_ok() && large.try_reserve_exact(1 << 20).is_ok();
    drop((small, large));
    drop(held);
    let counts: [usize; EXHAUST_SIZES.len()] = core::array::from_fn(|i| ends[i] - if i == 0 { 0 } else { ends[i - 1] });
    let bytes: usize = counts.iter().zip(EXHAUST_SIZES).map(|(n, size)| n * size).sum();
    crate::println!(
        "    heap full after {} x 1 MiB, {} x 64 KiB, {} x 4 KiB, {} x 64 B ({} MiB of {} MiB free); {} pages above min left",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        bytes >> 20,
        (free_before * mm::addr::PAGE_SIZE) >> 20,
        left_above_min
    );
    crate::kassert!(refused == [true; EXHAUST_SIZES.len()], "a stage ran out of handle slots before the heap refused: {:?}", counts);
    crate::kassert!(counts[0] > 0, "not a single 1 MiB block on a fresh heap");
    crate::kassert_eq!(left_above_min, 0);
    crate::kassert!(vec_small_refused && vec_large_refused, "try_reserve succeeded on a full heap");
    crate::kassert!(recovered, "no allocation succeeds after freeing everything");
    crate::kassert_eq!(free_after, free_before);
    a.check_consistency().map_err(|e| alloc::format!("allocator inconsistent: {:?}", e))?;
    Ok(())
}
