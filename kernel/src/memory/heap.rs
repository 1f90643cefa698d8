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
    crate::ktest!(heap_reports_exhaustion_as_error),
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

fn heap_reports_exhaustion_as_error() -> crate::lib::ktest::KResult {
    // Ask for more than the heap holds: the fallible API must say no, not panic.
    let mut v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    crate::kassert!(v.try_reserve_exact(EARLY_HEAP_SIZE * 2).is_err(), "oversized reservation succeeded");
    Ok(())
}
