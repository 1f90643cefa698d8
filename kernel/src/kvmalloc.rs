//! `kvmalloc()`: physically contiguous memory if it is cheap to get, virtually
//! contiguous memory (vmalloc) otherwise (Linux `mm/util.c`).
//!
//! The contiguous attempt (kmalloc up to 8 KiB, the page allocator above)
//! runs with `kmalloc_gfp_adjust`'s flags: above a page, no warning and no
//! hard retrying. If it fails, vmalloc gets the caller's own flags, which it
//! honours for every allocation it makes. [`kvmalloc_array`] and
//! [`kvmalloc_struct`] compute sizes with overflow checks and refuse an
//! overflowing request instead of returning a short buffer.

use core::ptr::NonNull;

use mm::gfp::Gfp;
use mm::overflow::{array_size, kvmalloc_fallback, kvmalloc_gfp_for_kmalloc, struct_size, NoFallback};
use mm::page_alloc::{Pages, MAX_ORDER};
use mm::slab::KMALLOC_MAX_CACHE_SIZE;
use mm::vmalloc::VmArea;

use crate::page_alloc::page_alloc;
use crate::slab::KMALLOC;

/// Memory from [`kvmalloc`]; give it back with [`kvfree`].
#[must_use = "kvmalloc memory must be returned with kvfree()"]
pub enum KvMem {
    /// A kmalloc object of `size` bytes.
    Slab { ptr: NonNull<u8>, size: usize },
    /// A physically contiguous block from the page allocator.
    Pages { pages: Pages, size: usize },
    /// A vmalloc area.
    Vmalloc(VmArea),
}

/// Why `kvmalloc` failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KvmallocError {
    /// `n * size` or `header + n * elem` does not fit in `usize`.
    Overflow,
    /// Neither contiguous memory nor vmalloc could serve the request.
    NoMemory,
    /// The contiguous attempt failed and vmalloc may not be used.
    NoFallback(NoFallback),
}

impl KvMem {
    /// Bytes usable by the caller.
    pub fn size(&self) -> usize {
        match self {
            KvMem::Slab { size, .. } | KvMem::Pages { size, .. } => *size,
            KvMem::Vmalloc(area) => area.size_bytes(),
        }
    }

    /// Whether the memory came from vmalloc (Linux `is_vmalloc_addr`).
    pub fn is_vmalloc(&self) -> bool {
        matches!(self, KvMem::Vmalloc(_))
    }

    /// The memory as bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (ptr, len) = match self {
            KvMem::Slab { ptr, size } => (ptr.as_ptr(), *size),
            KvMem::Pages { pages, size } => (crate::memmap::phys_to_virt(pages.phys_addr()), *size),
            KvMem::Vmalloc(area) => (area.addr().as_u64() as *mut u8, area.size_bytes()),
        };
        // SAFETY: `self` owns `len` bytes at `ptr` (an object, a block mapped
        // by the direct map, or a mapped vmalloc area) for as long as it lives.
        unsafe { core::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// The contiguous attempt: kmalloc up to 8 KiB, the page allocator above.
fn kmalloc_node(size: usize, gfp: Gfp) -> Option<KvMem> {
    if size <= KMALLOC_MAX_CACHE_SIZE {
        return KMALLOC.kmalloc(size, gfp).ok().map(|ptr| KvMem::Slab { ptr, size });
    }
    let order = crate::slab::large_order(size);
    if order > MAX_ORDER {
        return None;
    }
    page_alloc().alloc_pages(gfp, order).ok().map(|pages| KvMem::Pages { pages, size })
}

/// Linux `kvmalloc(size, gfp)`.
#[track_caller]
pub fn kvmalloc(size: usize, gfp: Gfp) -> Result<KvMem, KvmallocError> {
    if let Some(mem) = kmalloc_node(size, kvmalloc_gfp_for_kmalloc(gfp, size)) {
        return Ok(mem);
    }
    let vgfp = kvmalloc_fallback(gfp, size).map_err(KvmallocError::NoFallback)?;
    crate::vmalloc::vmalloc(size, vgfp).map(KvMem::Vmalloc).map_err(|_| KvmallocError::NoMemory)
}

/// Linux `kvmalloc_array(n, size, gfp)`: `n` elements of `size` bytes.
#[track_caller]
pub fn kvmalloc_array(n: usize, size: usize, gfp: Gfp) -> Result<KvMem, KvmallocError> {
    kvmalloc(array_size(n, size).ok_or(KvmallocError::Overflow)?, gfp)
}

/// A header of `header` bytes followed by `n` elements of `elem` bytes
/// (Linux `kvmalloc(struct_size(p, member, n), gfp)`).
#[track_caller]
pub fn kvmalloc_struct(header: usize, n: usize, elem: usize, gfp: Gfp) -> Result<KvMem, KvmallocError> {
    kvmalloc(struct_size(header, n, elem).ok_or(KvmallocError::Overflow)?, gfp)
}

/// Linux `kvfree`: frees memory of either kind.
pub fn kvfree(mem: KvMem) {
    match mem {
        KvMem::Slab { ptr, .. } => {
            if let Err(e) = KMALLOC.kfree(ptr) {
                log::error!("kvfree({:p}): {:?}", ptr, e);
            }
        }
        KvMem::Pages { pages, .. } => page_alloc().free_pages(pages),
        KvMem::Vmalloc(area) => crate::vmalloc::vfree(area),
    }
}

pub const KTESTS: &[crate::ktest::KTest] = &[
    crate::ktest!(kvmalloc_prefers_contiguous_memory),
    crate::ktest!(kvmalloc_falls_back_to_vmalloc_when_memory_is_fragmented),
    crate::ktest!(kvmalloc_falls_back_to_vmalloc_under_real_fragmentation),
    crate::ktest!(kvmalloc_helpers_refuse_overflowing_sizes),
];

fn kvmalloc_prefers_contiguous_memory() -> crate::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    let mut small = kvmalloc(200, GFP_KERNEL).map_err(|_| "kvmalloc 200 B")?;
    let mut big = kvmalloc(64 << 10, GFP_KERNEL).map_err(|_| "kvmalloc 64 KiB")?;
    let kinds = (matches!(small, KvMem::Slab { .. }), matches!(big, KvMem::Pages { .. }));
    small.as_mut_slice().fill(1);
    big.as_mut_slice().fill(2);
    let sizes = (small.size(), big.size());
    kvfree(small);
    kvfree(big);
    crate::kassert_eq!(kinds, (true, true));
    crate::kassert_eq!(sizes, (200, 64 << 10));
    Ok(())
}

/// `kvmalloc(size, gfp)`, every byte written, `kvfree`: whether it was vmalloc
/// memory and its size (`(false, 0)` if it failed).
fn kvmalloc_use_and_free(size: usize, gfp: Gfp) -> (bool, usize) {
    match kvmalloc(size, gfp) {
        Ok(mut m) => {
            let kind = (m.is_vmalloc(), m.size());
            m.as_mut_slice().fill(0x5a);
            kvfree(m);
            kind
        }
        Err(_) => (false, 0),
    }
}

fn kvmalloc_falls_back_to_vmalloc_when_memory_is_fragmented() -> crate::ktest::KResult {
    use mm::fail_page_alloc::FaultAttr;
    use mm::gfp::{GFP_KERNEL, __GFP_NORETRY, __GFP_NOWARN};
    let a = page_alloc();
    crate::vmalloc_ktests::warm_up();
    let free0 = crate::slab::nr_free_pages_settled();
    // Fragmentation as kvmalloc sees it: no block of order >= 4 (64 KiB) can
    // be had, while single pages can (fail_page_alloc with a minimum order,
    // the way Linux tests this fallback).
    a.fail.configure(FaultAttr { min_order: 4, ..FaultAttr::every_nth(1) });
    let contiguous = a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 4);
    let fragmented = contiguous.is_err();
    if let Ok(p) = contiguous {
        a.free_pages(p);
    }
    let (is_vmalloc, size) = kvmalloc_use_and_free(64 << 10, GFP_KERNEL);
    a.fail.disable();
    crate::kassert!(fragmented, "the order-4 allocation was not refused");
    crate::kassert!(is_vmalloc && size == 64 << 10, "kvmalloc did not fall back to vmalloc ({} bytes)", size);
    crate::kassert!(crate::slab::nr_free_pages_settled() >= free0, "pages lost");
    Ok(())
}

/// The same fallback with memory really fragmented: every page allocated
/// (unmovable, so compaction cannot help), then only the even pfns freed, so no
/// two buddies are free and no block above order 0 exists anywhere.
fn kvmalloc_falls_back_to_vmalloc_under_real_fragmentation() -> crate::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    let a = page_alloc();
    crate::vmalloc_ktests::warm_up();
    let mut held: alloc::vec::Vec<Pages> = alloc::vec::Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    let free0 = crate::slab::nr_free_pages_settled();
    // Every frame, so that no free block is left anywhere.
    crate::page_alloc_ktests::take_every_frame(&mut held);
    // Free the even pfns in place (no allocation while memory is exhausted).
    let mut i = 0;
    while i < held.len() {
        if held[i].pfn().0 % 2 == 0 {
            a.free_pages(held.swap_remove(i));
        } else {
            i += 1;
        }
    }
    let kept = held.len();
    a.drain_all_pages();
    let s = a.stats();
    let high_order_free: u64 = s.zones.iter().map(|z| (1..=MAX_ORDER).map(|o| z.nr_free[o].iter().sum::<u64>()).sum::<u64>()).sum();
    let order0_free: u64 = s.zones.iter().map(|z| z.nr_free[0].iter().sum::<u64>()).sum();
    let (is_vmalloc, size) = kvmalloc_use_and_free(64 << 10, GFP_KERNEL);
    for p in held.drain(..) {
        a.free_pages(p);
    }
    crate::kassert!(kept > 1000, "only {} pages kept", kept);
    crate::kassert!(high_order_free == 0, "{} blocks above order 0 still free", high_order_free);
    crate::kassert!(order0_free > 1000, "only {} free pages", order0_free);
    crate::kassert!(is_vmalloc && size == 64 << 10, "kvmalloc did not fall back to vmalloc ({} bytes)", size);
    crate::kassert_eq!(crate::slab::nr_free_pages_settled(), free0);
    Ok(())
}

fn kvmalloc_helpers_refuse_overflowing_sizes() -> crate::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    crate::kassert!(matches!(kvmalloc_array(usize::MAX / 8 + 1, 16, GFP_KERNEL), Err(KvmallocError::Overflow)), "array overflow accepted");
    crate::kassert!(matches!(kvmalloc_struct(64, usize::MAX / 4, 8, GFP_KERNEL), Err(KvmallocError::Overflow)), "struct overflow accepted");
    let mut m = kvmalloc_struct(16, 100, 8, GFP_KERNEL).map_err(|_| "kvmalloc_struct")?;
    let size = m.size();
    m.as_mut_slice()[size - 1] = 0xff;
    kvfree(m);
    crate::kassert_eq!(size, 16 + 800);
    Ok(())
}
