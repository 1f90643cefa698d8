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

use crate::memory::page_alloc::page_alloc;
use crate::memory::slab::KMALLOC;

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
            KvMem::Pages { pages, size } => (crate::arch::x86_64::memmap::phys_to_virt(pages.phys_addr()), *size),
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
    let order = crate::memory::slab::large_order(size);
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
    crate::memory::vmalloc::vmalloc(size, vgfp).map(KvMem::Vmalloc).map_err(|_| KvmallocError::NoMemory)
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
        KvMem::Vmalloc(area) => crate::memory::vmalloc::vfree(area),
    }
}
