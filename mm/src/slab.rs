//! `kmalloc`: the slab small-object allocator on top of the page allocator.
//!
//! Linux counterpart: `mm/slub.c` and `mm/slab_common.c` — `struct kmem_cache` (one per
//! size class, [`KmemCache`]), `struct slab` (one or more contiguous pages cut into
//! equal objects), the per-CPU object cache (SLAB's `array_cache`, SLUB's per-CPU
//! freelist / 6.18 "sheaves"), `kmem_cache_node` (partial and empty slab lists under a
//! per-cache lock), `kmalloc_caches[]` and `kmalloc_index()` (sizes 8 B … 8 KiB,
//! including 96 and 192), `virt_to_slab()` (object address → `PageMeta` → slab), and
//! the `init_on_alloc` / `init_on_free` sanitization knobs (off by default).
//!
//! # Layout of a slab
//!
//! A slab is a block of `2^order` pages from a [`SlabPageProvider`]; its head
//! `PageMeta` is marked `Slab` with the cache id ([`PageMeta::set_slab`]). The first
//! bytes of the slab hold the slab descriptor ([`SlabHeader`]: list links, in-use count
//! and a bitmap of free objects, like the old SLAB's on-slab management); objects start
//! at the first multiple of their alignment after it. Power-of-two objects are aligned
//! to their size (Linux guarantee), 96 to 32 and 192 to 64, everything to
//! [`ARCH_KMALLOC_MINALIGN`]. This needs a [`DirectMap`] that maps a `2^order`-aligned
//! block (order ≤ [`MAX_SLAB_ORDER`]) to a `2^order`-page-aligned address, which both the
//! kernel's direct map and the host [`ArenaDirectMap`] do.
//!
//! # Fast path and locks
//!
//! Lock order: per-CPU array cache (`KmemCache::cpu_slab[cpu]`, irq-safe, indexed by
//! `Platform::cpu_id()` like the page allocator's pcp) → per-cache node lock
//! (`KmemCache::node`) → page allocator locks. `kmalloc`/`kfree` normally take only the
//! per-CPU lock. Slab pages are allocated with **no** slab lock held (the page
//! allocator may run shrinkers, which call [`Kmalloc::shrink`]); they are freed under the
//! node lock (the page allocator never calls back into the slab with its locks held).
//!
//! # Freed objects and error detection
//!
//! A free object carries a marker in its first word (like SLUB's free pointer). `kfree`
//! finds the slab through `PageMeta` (not trusting the pointer), checks that the pointer
//! is the start of an object, and if the marker is present confirms under the locks
//! whether the object is already free (double free, or a never-allocated object):
//! errors are returned and counted, memory is never touched for a refused free.
//! With `init_on_free` the object is zeroed on free except for that 8-byte marker,
//! which replaces the first word of the old contents (Linux keeps its free pointer the
//! same way); `init_on_alloc` / `__GFP_ZERO` zero the whole object on allocation.
//!
//! # Sizes
//!
//! `kmalloc(0)` returns [`ZERO_SIZE_PTR`] (address 16, never dereferenceable, `kfree`
//! accepts it), as Linux does. Sizes above [`KMALLOC_MAX_CACHE_SIZE`] return
//! [`KmallocError::TooLarge`]: `kvmalloc` falls back to the page allocator / vmalloc.

use core::alloc::Layout;
use core::fmt::{self, Write};
use core::num::NonZeroUsize;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::addr::{PAGE_SIZE, Pfn};
use crate::gfp::Gfp;
use crate::page::{PageMeta, PageState};
use crate::page_alloc::{AllocError, MAX_CPUS, PageAlloc, Pages};
use crate::sync::{HostPlatform, Platform, SpinLock};

/// Smallest object (Linux `KMALLOC_MIN_SIZE` on x86_64).
pub const KMALLOC_MIN_SIZE: usize = 8;
/// Largest size served by a kmalloc cache (Linux `KMALLOC_MAX_CACHE_SIZE` = 2 pages).
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
/// Minimum alignment of every kmalloc object (Linux `ARCH_KMALLOC_MINALIGN`).
pub const ARCH_KMALLOC_MINALIGN: usize = 8;
/// Number of size classes.
pub const NR_KMALLOC_CACHES: usize = 13;
/// Largest slab order used (Linux `slub_max_order` default 3).
pub const MAX_SLAB_ORDER: usize = 3;
/// Empty slabs kept per cache before further empty slabs go back to the page allocator
/// (Linux `min_partial`); the shrinker frees the kept ones.
pub const MAX_EMPTY_SLABS: u64 = 2;
/// Capacity of a per-CPU array cache.
const AC_CAPACITY: usize = 32;
/// Bytes reserved for the slab descriptor at the start of each slab.
const SLAB_HEADER_BYTES: usize = 128;
/// Bits in the free-object bitmap (enough for 496 objects of 8 bytes in one page).
const FREE_MAP_WORDS: usize = 8;

/// `kmalloc(0)`'s result (Linux `ZERO_SIZE_PTR`): non-null, never dereferenceable.
pub const ZERO_SIZE_PTR: NonNull<u8> = match NonZeroUsize::new(16) {
    Some(a) => NonNull::without_provenance(a),
    None => unreachable!(),
};

/// Size classes: (object size, slab order). Index = what [`kmalloc_index`] returns.
const KMALLOC_INFO: [(u32, u8); NR_KMALLOC_CACHES] = [
    (8, 0),
    (16, 0),
    (32, 0),
    (64, 0),
    (96, 0),
    (128, 0),
    (192, 0),
    (256, 1),
    (512, 2),
    (1024, 3),
    (2048, 3),
    (4096, 3),
    (8192, 3),
];

/// Linux `kmalloc_size_index[]`: class of sizes 1..=192, indexed by `(size - 1) / 8`.
const SIZE_INDEX: [u8; 24] = [0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6];

/// The size class serving `size` bytes (Linux `kmalloc_index`), `None` for 0 or > 8 KiB.
#[inline(always)]
pub const fn kmalloc_index(size: usize) -> Option<usize> {
    if size == 0 || size > KMALLOC_MAX_CACHE_SIZE {
        None
    } else if size <= 192 {
        Some(SIZE_INDEX[(size - 1) / 8] as usize)
    } else {
        // fls(size - 1): 193..=256 -> 8 -> class 7, ..., 4097..=8192 -> 13 -> class 12.
        Some((usize::BITS - (size - 1).leading_zeros()) as usize - 1)
    }
}

/// Object size of class `index` (Linux `kmalloc_size`).
pub const fn kmalloc_size(index: usize) -> usize {
    KMALLOC_INFO[index].0 as usize
}

/// Where slab pages come from. Implemented for [`PageAlloc`]; host tests wrap it to
/// record flags or inject failures.
pub trait SlabPageProvider: Sync {
    /// Allocates a slab of `2^order` pages with the kmalloc caller's flags.
    fn alloc_slab_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError>;
    /// Returns the pages of an empty slab (its head is back to plain "allocated").
    fn free_slab_pages(&self, pages: Pages);
    /// Metadata of frame `pfn` (Linux `pfn_to_page`), `None` if not described.
    fn slab_page(&self, pfn: Pfn) -> Option<&PageMeta>;
}

impl<P: Platform> SlabPageProvider for PageAlloc<'_, P> {
    #[inline]
    fn alloc_slab_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        self.alloc_pages(gfp, order)
    }
    #[inline]
    fn free_slab_pages(&self, pages: Pages) {
        self.free_pages(pages)
    }
    #[inline(always)]
    fn slab_page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.page(pfn)
    }
}

/// Virtual addresses of frames (the kernel: `phys_to_virt` over the direct map).
///
/// # Safety
/// For every frame the page provider hands out, `pfn_to_virt` returns the address of
/// that frame's 4 KiB of readable and writable memory, valid for as long as the slab
/// allocator exists, used by nobody else while the slab owns the frame; contiguous
/// frames map to contiguous addresses, and a block of `2^order` frames aligned to
/// `2^order` (order ≤ [`MAX_SLAB_ORDER`]) maps to an address aligned to `2^order`
/// pages. `virt_to_pfn` is the exact inverse and returns `None` for any address
/// outside the mapping.
pub unsafe trait DirectMap: Sync {
    /// Linux `pfn_to_virt`.
    fn pfn_to_virt(&self, pfn: Pfn) -> *mut u8;
    /// Linux `virt_to_pfn`, `None` outside the direct map.
    fn virt_to_pfn(&self, addr: usize) -> Option<Pfn>;
}

/// A host "direct map": `nr_pages` frames starting at `base_pfn`, backed by one heap
/// block aligned to `2^MAX_SLAB_ORDER` pages. For tests and benchmarks.
pub struct ArenaDirectMap {
    base_pfn: u64,
    nr_pages: u64,
    addr: usize,
}

impl ArenaDirectMap {
    const ALIGN: usize = (PAGE_SIZE as usize) << MAX_SLAB_ORDER;

    fn layout(nr_pages: u64) -> Layout {
        let bytes = (nr_pages.max(1) * PAGE_SIZE) as usize;
        Layout::from_size_align(bytes, Self::ALIGN).unwrap_or(Layout::new::<u8>())
    }

    /// Allocates zeroed backing memory for frames `base_pfn..base_pfn + nr_pages`.
    /// `None` if the heap cannot provide it.
    pub fn new(base_pfn: Pfn, nr_pages: u64) -> Option<ArenaDirectMap> {
        // SAFETY: the layout has a nonzero size (at least one page).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(Self::layout(nr_pages)) };
        (!ptr.is_null()).then(|| ArenaDirectMap { base_pfn: base_pfn.0, nr_pages, addr: ptr.expose_provenance() })
    }
}

impl Drop for ArenaDirectMap {
    fn drop(&mut self) {
        // SAFETY: `addr` came from `alloc_zeroed` with this very layout in `new`.
        unsafe { alloc::alloc::dealloc(core::ptr::with_exposed_provenance_mut(self.addr), Self::layout(self.nr_pages)) }
    }
}

// SAFETY: the arena is one heap block owned by `self` for its whole life, aligned to
// 2^MAX_SLAB_ORDER pages, mapped linearly (frame i at offset i * PAGE_SIZE), and
// `virt_to_pfn` checks the bounds; exclusivity follows from page-allocator ownership.
unsafe impl DirectMap for ArenaDirectMap {
    #[inline(always)]
    fn pfn_to_virt(&self, pfn: Pfn) -> *mut u8 {
        debug_assert!(pfn.0.wrapping_sub(self.base_pfn) < self.nr_pages);
        core::ptr::with_exposed_provenance_mut(self.addr + ((pfn.0 - self.base_pfn) * PAGE_SIZE) as usize)
    }
    #[inline(always)]
    fn virt_to_pfn(&self, addr: usize) -> Option<Pfn> {
        let off = addr.wrapping_sub(self.addr) as u64 / PAGE_SIZE;
        (addr >= self.addr && off < self.nr_pages).then_some(Pfn(self.base_pfn + off))
    }
}

/// Boot-time sanitization knobs (Linux `init_on_alloc=` / `init_on_free=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabConfig {
    /// Zero every object when it is allocated.
    pub init_on_alloc: bool,
    /// Zero every object when it is freed.
    pub init_on_free: bool,
}

/// Why `kmalloc` failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KmallocError {
    /// `size` > [`KMALLOC_MAX_CACHE_SIZE`] (or an alignment above 4 KiB): use the page
    /// allocator or vmalloc.
    TooLarge,
    /// The page allocator could not provide a new slab.
    NoMemory(AllocError),
}

/// Why `kfree` refused a pointer. Nothing was modified.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KfreeError {
    /// The address is not in a slab page of this allocator.
    NotSlab,
    /// Inside a slab, but not at the start of an object.
    Misaligned,
    /// The object is already free (double free, or never allocated).
    DoubleFree,
}

/// Per-CPU stack of free objects (Linux SLAB `struct array_cache`).
struct ArrayCache {
    avail: usize,
    entry: [usize; AC_CAPACITY],
}

impl ArrayCache {
    const fn new() -> ArrayCache {
        ArrayCache { avail: 0, entry: [0; AC_CAPACITY] }
    }
    #[inline(always)]
    fn pop(&mut self) -> Option<usize> {
        self.avail = self.avail.checked_sub(1)?;
        self.entry.get(self.avail).copied()
    }
}

/// Which node list a slab is on.
const LIST_FULL: u32 = 0;
const LIST_PARTIAL: u32 = 1;
const LIST_EMPTY: u32 = 2;

/// Doubly linked list of slabs through their headers (addresses; 0 = none).
#[derive(Default)]
struct SlabList {
    head: usize,
    nr: u64,
}

/// Per-cache lists and counters (Linux `struct kmem_cache_node`), under `KmemCache::node`.
struct KmemCacheNode {
    lists: [SlabList; 3],
    nr_slabs: u64,
    /// Objects not free in their slab (held by callers or by array caches).
    nr_inuse: u64,
}

/// The slab descriptor at the start of every slab (Linux `struct slab`).
#[repr(C)]
struct SlabHeader {
    magic: u64,
    pfn: u64,
    cache: u32,
    inuse: u32,
    next: usize,
    prev: usize,
    list: u32,
    _pad: u32,
    /// Bit set = object is free in the slab.
    free_map: [u64; FREE_MAP_WORDS],
}

const _: () = assert!(core::mem::size_of::<SlabHeader>() <= SLAB_HEADER_BYTES);

const SLAB_MAGIC: u64 = 0x51ab_c0de_0000_0000;
/// `PageMeta` owner word of a slab head: this tag | cache index.
const SLAB_ID_TAG: u64 = 0x6b6d_616c_6c00; // "kmall"
const FREE_MAGIC: u64 = 0x6b6b_6b6b_a5a5_0000; // POISON_FREE-ish

#[inline(always)]
fn free_marker(addr: usize) -> u64 {
    FREE_MAGIC ^ (addr as u64).rotate_left(29)
}

/// # Safety
/// `slab` is the header address of a live slab of this allocator, and the caller holds
/// that slab's cache node lock (or owns the slab exclusively, before it is published);
/// no other reference to the same header is alive.
#[inline(always)]
unsafe fn slab_header<'s>(slab: usize) -> &'s mut SlabHeader {
    // SAFETY: per the contract the header is valid, aligned (slabs are page aligned)
    // and exclusively ours while the node lock is held.
    unsafe { &mut *core::ptr::with_exposed_provenance_mut::<SlabHeader>(slab) }
}

/// The first word of an object, read atomically (a racing double free cannot make
/// this a data race).
///
/// # Safety
/// `addr` is an 8-aligned object address inside a live slab.
#[inline(always)]
unsafe fn obj_word(addr: usize) -> &'static AtomicU64 {
    // SAFETY: per the contract the word is valid and aligned; all accesses to the
    // marker word go through atomics.
    unsafe { AtomicU64::from_ptr(core::ptr::with_exposed_provenance_mut(addr)) }
}

/// Zeroes `len` bytes of an object.
///
/// # Safety
/// The caller owns the object `addr..addr + len` exclusively.
#[inline(always)]
unsafe fn obj_zero(addr: usize, len: usize) {
    // SAFETY: per the contract the range is valid and ours.
    unsafe { core::ptr::write_bytes(core::ptr::with_exposed_provenance_mut::<u8>(addr), 0, len) }
}

/// One size class (Linux `struct kmem_cache`).
pub struct KmemCache<P: Platform = HostPlatform> {
    name: &'static str,
    index: u32,
    size: u32,
    order: u8,
    /// Offset of object 0 from the slab start.
    offset: u32,
    objs_per_slab: u32,
    /// `ceil(2^32 / size)`: `off / size` as a multiply (Linux `reciprocal_divide`).
    reciprocal: u64,
    /// Array-cache tunables (Linux SLAB `limit` / `batchcount`).
    limit: u32,
    batch: u32,
    cpu_slab: [SpinLock<ArrayCache, P>; MAX_CPUS],
    node: SpinLock<KmemCacheNode, P>,
    /// Pages in empty slabs (read without the lock by `count_reclaimable`).
    empty_pages: AtomicU64,
}

const KMALLOC_NAMES: [&str; NR_KMALLOC_CACHES] = [
    "kmalloc-8", "kmalloc-16", "kmalloc-32", "kmalloc-64", "kmalloc-96", "kmalloc-128", "kmalloc-192",
    "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k",
];

impl<P: Platform> KmemCache<P> {
    const fn new(index: usize) -> KmemCache<P> {
        let (size, order) = KMALLOC_INFO[index];
        let align = 1u32 << size.trailing_zeros();
        let offset = if align as usize > SLAB_HEADER_BYTES { align } else { SLAB_HEADER_BYTES as u32 };
        let slab_bytes = (PAGE_SIZE as u32) << order;
        let limit = match size {
            0..=256 => 32,
            257..=1024 => 24,
            1025..=2048 => 16,
            2049..=4096 => 8,
            _ => 4,
        };
        KmemCache {
            name: KMALLOC_NAMES[index],
            index: index as u32,
            size,
            order,
            offset,
            objs_per_slab: (slab_bytes - offset) / size,
            reciprocal: (1u64 << 32).div_ceil(size as u64),
            limit,
            batch: limit.div_ceil(2),
            cpu_slab: [const { SpinLock::new(ArrayCache::new()) }; MAX_CPUS],
            node: SpinLock::new(KmemCacheNode { lists: [const { SlabList { head: 0, nr: 0 } }; 3], nr_slabs: 0, nr_inuse: 0 }),
            empty_pages: AtomicU64::new(0),
        }
    }

    /// Linux `kmem_cache::name`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Object size in bytes.
    pub fn object_size(&self) -> usize {
        self.size as usize
    }
    /// Objects per slab.
    pub fn objs_per_slab(&self) -> usize {
        self.objs_per_slab as usize
    }
    /// Pages per slab.
    pub fn pages_per_slab(&self) -> u64 {
        1 << self.order
    }

    #[inline(always)]
    fn slab_bytes(&self) -> usize {
        (PAGE_SIZE as usize) << self.order
    }
    /// Index of the object at `off` bytes from the slab start, if `off` is one's start.
    #[inline(always)]
    fn obj_index(&self, off: usize) -> Option<usize> {
        let rel = off.checked_sub(self.offset as usize)?;
        let idx = ((rel as u64 * self.reciprocal) >> 32) as usize;
        (idx * self.size as usize == rel && idx < self.objs_per_slab as usize).then_some(idx)
    }
    #[inline(always)]
    fn obj_addr(&self, slab: usize, idx: usize) -> usize {
        slab + self.offset as usize + idx * self.size as usize
    }
    #[inline(always)]
    fn cpu_cache(&self) -> &SpinLock<ArrayCache, P> {
        &self.cpu_slab[P::cpu_id() % MAX_CPUS]
    }
}

// ---------------------------------------------------------------- node lists

impl KmemCacheNode {
    fn list_add(&mut self, list: u32, slab: usize) {
        let l = &mut self.lists[list as usize];
        let old = l.head;
        // SAFETY: node lock held (we are `&mut KmemCacheNode` inside its guard); `slab`
        // and `old` are distinct live slabs of this cache.
        let h = unsafe { slab_header(slab) };
        h.list = list;
        h.prev = 0;
        h.next = old;
        if old != 0 {
            // SAFETY: as above.
            unsafe { slab_header(old) }.prev = slab;
        }
        l.head = slab;
        l.nr += 1;
    }

    fn list_del(&mut self, slab: usize) {
        // SAFETY: node lock held; `slab` is a live slab on one of this node's lists.
        let (list, next, prev) = {
            let h = unsafe { slab_header(slab) };
            (h.list, h.next, h.prev)
        };
        if next != 0 {
            // SAFETY: node lock held; list neighbours are live slabs of this cache.
            unsafe { slab_header(next) }.prev = prev;
        }
        if prev != 0 {
            // SAFETY: as above.
            unsafe { slab_header(prev) }.next = next;
        } else {
            self.lists[list as usize].head = next;
        }
        self.lists[list as usize].nr -= 1;
    }

    /// Puts `slab` on the list its in-use count says (partial / empty / full).
    fn relist(&mut self, slab: usize, objs_per_slab: u32) {
        // SAFETY: node lock held; `slab` is live.
        let (cur, inuse) = {
            let h = unsafe { slab_header(slab) };
            (h.list, h.inuse)
        };
        let want = match inuse {
            0 => LIST_EMPTY,
            n if n == objs_per_slab => LIST_FULL,
            _ => LIST_PARTIAL,
        };
        if want == cur {
            return;
        }
        if cur != LIST_FULL {
            self.list_del(slab);
        }
        if want == LIST_FULL {
            // SAFETY: node lock held; full slabs are on no list.
            unsafe { slab_header(slab) }.list = LIST_FULL;
        } else {
            self.list_add(want, slab);
        }
    }
}

/// Counters of a [`Kmalloc`] (Linux: parts of `/proc/vmstat` and `/proc/meminfo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabStats {
    /// Pages currently held by slabs (meminfo `Slab:` / 4 KiB).
    pub nr_slab_pages: u64,
    /// Refused frees of pointers that are not kmalloc objects (not slab / misaligned).
    pub invalid_frees: u64,
    /// Refused frees of objects that were already free.
    pub double_frees: u64,
}

/// The kmalloc caches (Linux `kmalloc_caches[]` + `kmalloc` / `kfree`).
pub struct Kmalloc<'a, A: SlabPageProvider, M: DirectMap, P: Platform = HostPlatform> {
    pages: &'a A,
    map: &'a M,
    caches: [KmemCache<P>; NR_KMALLOC_CACHES],
    init_on_alloc: AtomicBool,
    init_on_free: AtomicBool,
    nr_slab_pages: AtomicU64,
    invalid_frees: AtomicU64,
    double_frees: AtomicU64,
}

impl<'a, A: SlabPageProvider, M: DirectMap, P: Platform> Kmalloc<'a, A, M, P> {
    /// Creates empty caches over `pages` and `map` (Linux `create_kmalloc_caches`).
    /// `const`, so the kernel can place it in a static without a large stack frame.
    pub const fn new(pages: &'a A, map: &'a M, config: SlabConfig) -> Self {
        Kmalloc {
            pages,
            map,
            caches: [
                KmemCache::new(0),
                KmemCache::new(1),
                KmemCache::new(2),
                KmemCache::new(3),
                KmemCache::new(4),
                KmemCache::new(5),
                KmemCache::new(6),
                KmemCache::new(7),
                KmemCache::new(8),
                KmemCache::new(9),
                KmemCache::new(10),
                KmemCache::new(11),
                KmemCache::new(12),
            ],
            init_on_alloc: AtomicBool::new(config.init_on_alloc),
            init_on_free: AtomicBool::new(config.init_on_free),
            nr_slab_pages: AtomicU64::new(0),
            invalid_frees: AtomicU64::new(0),
            double_frees: AtomicU64::new(0),
        }
    }

    /// The sanitization knobs in effect.
    pub fn config(&self) -> SlabConfig {
        SlabConfig { init_on_alloc: self.init_on_alloc.load(Relaxed), init_on_free: self.init_on_free.load(Relaxed) }
    }

    /// Changes the sanitization knobs (the kernel applies its boot options
    /// `init_on_alloc=` / `init_on_free=` with this before heavy use).
    pub fn set_config(&self, config: SlabConfig) {
        self.init_on_alloc.store(config.init_on_alloc, Relaxed);
        self.init_on_free.store(config.init_on_free, Relaxed);
    }

    /// The caches, smallest first.
    pub fn caches(&self) -> &[KmemCache<P>; NR_KMALLOC_CACHES] {
        &self.caches
    }

    /// Counters.
    pub fn stats(&self) -> SlabStats {
        SlabStats {
            nr_slab_pages: self.nr_slab_pages.load(Relaxed),
            invalid_frees: self.invalid_frees.load(Relaxed),
            double_frees: self.double_frees.load(Relaxed),
        }
    }

    // ------------------------------------------------------------ allocation

    /// Allocates `size` bytes (Linux `kmalloc`). Slab pages, if needed, are allocated
    /// with `gfp` (minus `__GFP_ZERO`, which is applied to the object).
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        if size == 0 {
            return Ok(ZERO_SIZE_PTR);
        }
        let index = kmalloc_index(size).ok_or(KmallocError::TooLarge)?;
        self.kmem_cache_alloc(&self.caches[index], gfp)
    }

    /// `kmalloc(size, gfp | __GFP_ZERO)` (Linux `kzalloc`).
    pub fn kzalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        self.kmalloc(size, gfp | Gfp::ZERO)
    }

    /// Allocation for a `Layout` (the `#[global_allocator]` entry): the smallest class
    /// that is at least `size` and `align`, which is then aligned to `align`.
    pub fn kmalloc_layout(&self, layout: Layout, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        if layout.align() > PAGE_SIZE as usize {
            return Err(KmallocError::TooLarge);
        }
        let mut size = layout.size().max(layout.align());
        // 96 and 192 are only 32/64-aligned: a stricter alignment takes the next power of two.
        if kmalloc_index(size).is_some_and(|i| 1 << kmalloc_size(i).trailing_zeros() < layout.align()) {
            size = size.next_power_of_two();
        }
        self.kmalloc(size, gfp)
    }

    /// Allocates one object of `s` (Linux `kmem_cache_alloc`).
    #[inline(always)]
    fn kmem_cache_alloc(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        let fast = s.cpu_cache().lock().pop();
        let obj = match fast {
            Some(obj) => obj,
            None => self.slab_alloc_slow(s, gfp)?,
        };
        Ok(self.post_alloc(s, obj, gfp))
    }

    /// Clears the free marker, or zeroes the object (`__GFP_ZERO`, `init_on_alloc`).
    #[inline(always)]
    fn post_alloc(&self, s: &KmemCache<P>, obj: usize, gfp: Gfp) -> NonNull<u8> {
        if gfp.contains(Gfp::ZERO) || self.init_on_alloc.load(Relaxed) {
            // SAFETY: `obj` was just taken off a free list: it is ours, `size` bytes.
            unsafe { obj_zero(obj, s.size as usize) };
        } else {
            // SAFETY: `obj` is an 8-aligned object we own.
            unsafe { obj_word(obj) }.store(0, Relaxed);
        }
        // `obj` lies inside the direct map, which never contains address 0.
        NonNull::new(core::ptr::with_exposed_provenance_mut(obj)).unwrap_or(ZERO_SIZE_PTR)
    }

    /// Refills this CPU's array cache from the node lists, growing the cache by one slab
    /// (allocated with no lock held) when they are empty (Linux `___slab_alloc`).
    #[inline(never)]
    fn slab_alloc_slow(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<usize, KmallocError> {
        loop {
            {
                let mut ac = s.cpu_cache().lock();
                if let Some(obj) = ac.pop() {
                    return Ok(obj);
                }
                self.refill(s, &mut ac);
                if let Some(obj) = ac.pop() {
                    return Ok(obj);
                }
            }
            let slab = self.new_slab(s, gfp)?;
            s.node.lock().list_add(LIST_EMPTY, slab);
            s.empty_pages.fetch_add(s.pages_per_slab(), Relaxed);
        }
    }

    /// Moves up to `batch` free objects from partial (then empty) slabs into `ac`.
    fn refill(&self, s: &KmemCache<P>, ac: &mut ArrayCache) {
        let mut n = s.node.lock();
        let want = (s.batch as usize).min(AC_CAPACITY);
        while ac.avail < want {
            let slab = match (n.lists[LIST_PARTIAL as usize].head, n.lists[LIST_EMPTY as usize].head) {
                (0, 0) => break,
                (0, empty) => {
                    s.empty_pages.fetch_sub(s.pages_per_slab(), Relaxed);
                    empty
                }
                (partial, _) => partial,
            };
            // SAFETY: node lock held; `slab` is the head of one of its lists.
            let h = unsafe { slab_header(slab) };
            let mut taken = 0;
            for w in 0..FREE_MAP_WORDS {
                while h.free_map[w] != 0 && ac.avail < want {
                    let bit = h.free_map[w].trailing_zeros() as usize;
                    h.free_map[w] &= h.free_map[w] - 1;
                    ac.entry[ac.avail] = s.obj_addr(slab, w * 64 + bit);
                    ac.avail += 1;
                    taken += 1;
                }
            }
            h.inuse += taken;
            n.nr_inuse += taken as u64;
            n.relist(slab, s.objs_per_slab);
        }
    }

    /// Allocates and formats a new slab (Linux `allocate_slab`); returns its address.
    fn new_slab(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<usize, KmallocError> {
        let order = s.order as usize;
        let pages = self.pages.alloc_slab_pages(gfp.difference(Gfp::ZERO), order).map_err(KmallocError::NoMemory)?;
        let pfn = pages.pfn();
        let base = self.map.pfn_to_virt(pfn).expose_provenance();
        let marked = self.pages.slab_page(pfn).is_some_and(|m| m.set_slab(SLAB_ID_TAG | s.index as u64).is_ok());
        if !marked || base % s.slab_bytes() != 0 {
            if marked {
                self.unmark_slab(pfn);
            }
            self.pages.free_slab_pages(pages);
            return Err(KmallocError::NoMemory(AllocError::NoMemory));
        }
        let _ = pages.leak(); // owned by the slab now; re-created in `discard_slab`
        // SAFETY: the slab's pages were just allocated for us and are not published.
        let h = unsafe { slab_header(base) };
        *h = SlabHeader {
            magic: SLAB_MAGIC ^ pfn.0,
            pfn: pfn.0,
            cache: s.index,
            inuse: 0,
            next: 0,
            prev: 0,
            list: LIST_FULL,
            _pad: 0,
            free_map: [0; FREE_MAP_WORDS],
        };
        for i in 0..s.objs_per_slab as usize {
            h.free_map[i / 64] |= 1 << (i % 64);
            let obj = s.obj_addr(base, i);
            // SAFETY: inside our unpublished slab, 8-aligned.
            unsafe { obj_word(obj) }.store(free_marker(obj), Relaxed);
        }
        let mut n = s.node.lock();
        n.nr_slabs += 1;
        drop(n);
        self.nr_slab_pages.fetch_add(s.pages_per_slab(), Relaxed);
        Ok(base)
    }

    fn unmark_slab(&self, pfn: Pfn) -> bool {
        self.pages.slab_page(pfn).is_some_and(|m| m.clear_owner_state().is_ok())
    }

    /// Returns an empty slab (already off every list) to the page allocator (Linux
    /// `discard_slab`). Called with the node lock held.
    fn discard_slab(&self, s: &KmemCache<P>, n: &mut KmemCacheNode, slab: usize) {
        // SAFETY: node lock held; the slab is live and now on no list.
        let pfn = Pfn(unsafe { slab_header(slab) }.pfn);
        n.nr_slabs -= 1;
        self.nr_slab_pages.fetch_sub(s.pages_per_slab(), Relaxed);
        if self.unmark_slab(pfn) {
            self.pages.free_slab_pages(Pages::new(pfn, s.order as usize));
        }
    }

    // ------------------------------------------------------------------ free

    /// Frees an object (Linux `kfree`). Refuses, counts and reports pointers that are
    /// not live kmalloc objects; `ZERO_SIZE_PTR` is accepted and ignored.
    #[inline]
    pub fn kfree(&self, ptr: NonNull<u8>) -> Result<(), KfreeError> {
        let addr = ptr.as_ptr().expose_provenance();
        if addr == ZERO_SIZE_PTR.addr().get() {
            return Ok(());
        }
        let (s, slab) = self.virt_to_object(addr).inspect_err(|_| {
            self.invalid_frees.fetch_add(1, Relaxed);
        })?;
        // SAFETY: `addr` is the start of an object of a live slab (checked above).
        let word = unsafe { obj_word(addr) };
        if word.load(Relaxed) == free_marker(addr) && self.object_is_free(s, slab, addr) {
            self.double_frees.fetch_add(1, Relaxed);
            return Err(KfreeError::DoubleFree);
        }
        if self.init_on_free.load(Relaxed) {
            // SAFETY: the caller hands the live object back to us.
            unsafe { obj_zero(addr, s.size as usize) };
        }
        word.store(free_marker(addr), Relaxed);
        let mut ac = s.cpu_cache().lock();
        if ac.avail >= s.limit as usize {
            self.flush_array(s, &mut ac, s.batch as usize);
        }
        let i = ac.avail;
        ac.entry[i] = addr;
        ac.avail = i + 1;
        Ok(())
    }

    /// Usable size of a kmalloc object (Linux `ksize`).
    pub fn ksize(&self, ptr: NonNull<u8>) -> Result<usize, KfreeError> {
        if ptr == ZERO_SIZE_PTR {
            return Ok(0);
        }
        self.virt_to_object(ptr.as_ptr().expose_provenance()).map(|(s, _)| s.size as usize)
    }

    /// The cache and slab of the object starting at `addr` (Linux `virt_to_slab`, plus
    /// the object-boundary check of `check_valid_pointer`).
    #[inline(always)]
    fn virt_to_object(&self, addr: usize) -> Result<(&KmemCache<P>, usize), KfreeError> {
        let (s, slab) = self.virt_to_slab(addr)?;
        s.obj_index(addr - slab).ok_or(KfreeError::Misaligned)?;
        Ok((s, slab))
    }

    /// Finds the head `PageMeta` of the slab containing `addr`: the frame itself, or for
    /// a tail frame the `2^order`-aligned head of a multi-page slab.
    #[inline(always)]
    fn virt_to_slab(&self, addr: usize) -> Result<(&KmemCache<P>, usize), KfreeError> {
        let pfn = self.map.virt_to_pfn(addr).ok_or(KfreeError::NotSlab)?;
        for order in 0..=MAX_SLAB_ORDER {
            let head = Pfn(pfn.0 & !((1u64 << order) - 1));
            match self.pages.slab_page(head).ok_or(KfreeError::NotSlab)?.state() {
                PageState::Slab { cache, .. } => return self.slab_of(cache, head, pfn),
                PageState::Tail => continue,
                _ => return Err(KfreeError::NotSlab),
            }
        }
        Err(KfreeError::NotSlab)
    }

    #[inline(always)]
    fn slab_of(&self, id: u64, head: Pfn, pfn: Pfn) -> Result<(&KmemCache<P>, usize), KfreeError> {
        let index = id ^ SLAB_ID_TAG;
        let s = self.caches.get(index as usize).ok_or(KfreeError::NotSlab)?;
        if pfn.0 - head.0 >= s.pages_per_slab() {
            return Err(KfreeError::NotSlab);
        }
        Ok((s, self.map.pfn_to_virt(head).expose_provenance()))
    }

    /// Whether the object at `addr` is free: in its slab's free map, or on some CPU's
    /// array cache. Only asked when the free marker is present (the slow path).
    #[cold]
    fn object_is_free(&self, s: &KmemCache<P>, slab: usize, addr: usize) -> bool {
        for ac in &s.cpu_slab {
            let ac = ac.lock();
            if ac.entry[..ac.avail].contains(&addr) {
                return true;
            }
        }
        let n = s.node.lock();
        // The slab may have been discarded meanwhile if this is a stale pointer.
        let Ok((s2, slab2)) = self.virt_to_slab(addr) else { return true };
        if !core::ptr::eq(s, s2) || slab != slab2 {
            return true;
        }
        let Some(idx) = s.obj_index(addr - slab) else { return true };
        // SAFETY: node lock held (`n`), the slab is live (its PageMeta says so).
        let free = unsafe { slab_header(slab) }.free_map[idx / 64] & (1 << (idx % 64)) != 0;
        drop(n);
        free
    }

    /// Returns the oldest `count` objects of `ac` to their slabs (Linux
    /// `cache_flusharray`); slabs that become empty beyond [`MAX_EMPTY_SLABS`] are freed.
    fn flush_array(&self, s: &KmemCache<P>, ac: &mut ArrayCache, count: usize) {
        let count = count.min(ac.avail);
        let mut n = s.node.lock();
        for i in 0..count {
            self.free_to_slab(s, &mut n, ac.entry[i]);
        }
        ac.entry.copy_within(count..ac.avail, 0);
        ac.avail -= count;
    }

    /// Puts one object back into its slab's free map (node lock held).
    fn free_to_slab(&self, s: &KmemCache<P>, n: &mut KmemCacheNode, obj: usize) {
        let slab = obj & !(s.slab_bytes() - 1);
        let Some(idx) = s.obj_index(obj - slab) else { return };
        // SAFETY: node lock held; objects in array caches belong to live slabs of `s`.
        let h = unsafe { slab_header(slab) };
        debug_assert_eq!(h.magic, SLAB_MAGIC ^ h.pfn);
        h.free_map[idx / 64] |= 1 << (idx % 64);
        h.inuse -= 1;
        let now_empty = h.inuse == 0;
        n.nr_inuse -= 1;
        if now_empty && n.lists[LIST_EMPTY as usize].nr >= MAX_EMPTY_SLABS {
            if h.list != LIST_FULL {
                n.list_del(slab);
            }
            self.discard_slab(s, n, slab);
            return;
        }
        n.relist(slab, s.objs_per_slab);
        if now_empty {
            s.empty_pages.fetch_add(s.pages_per_slab(), Relaxed);
        }
    }

    // ------------------------------------------------------------- shrinking

    /// Returns every CPU's cached objects to their slabs (Linux `flush_all`).
    pub fn drain_cpu_caches(&self) {
        for s in &self.caches {
            for ac in &s.cpu_slab {
                let mut ac = ac.lock();
                let avail = ac.avail;
                if avail > 0 {
                    self.flush_array(s, &mut ac, avail);
                }
            }
        }
    }

    /// Shrinker `scan_objects`: drains the per-CPU caches and frees every empty slab
    /// (Linux `kmem_cache_shrink` on all kmalloc caches). Returns pages freed.
    pub fn shrink(&self) -> u64 {
        self.drain_cpu_caches();
        let mut freed = 0;
        for s in &self.caches {
            let mut n = s.node.lock();
            loop {
                let slab = n.lists[LIST_EMPTY as usize].head;
                if slab == 0 {
                    break;
                }
                n.list_del(slab);
                s.empty_pages.fetch_sub(s.pages_per_slab(), Relaxed);
                self.discard_slab(s, &mut n, slab);
                freed += s.pages_per_slab();
            }
        }
        freed
    }

    /// Shrinker `count_objects`: pages [`shrink`](Self::shrink) could free now — the
    /// empty slabs, plus an estimate for objects parked in per-CPU caches.
    pub fn count_reclaimable(&self) -> u64 {
        let mut pages = 0;
        for s in &self.caches {
            pages += s.empty_pages.load(Relaxed);
            let cached: u64 = s.cpu_slab.iter().filter_map(|ac| ac.try_lock().map(|a| a.avail as u64)).sum();
            pages += cached * s.size as u64 / PAGE_SIZE;
        }
        pages
    }

    // ---------------------------------------------------------- observability

    /// `/proc/slabinfo` (version 2.1). Active objects exclude those parked in per-CPU
    /// caches; active slabs are the non-empty ones.
    pub fn slabinfo(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "slabinfo - version: 2.1")?;
        writeln!(
            out,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
        )?;
        for s in self.caches.iter().rev() {
            let cached: u64 = s.cpu_slab.iter().map(|ac| ac.lock().avail as u64).sum();
            let (num_slabs, inuse, empty) = {
                let n = s.node.lock();
                (n.nr_slabs, n.nr_inuse, n.lists[LIST_EMPTY as usize].nr)
            };
            writeln!(
                out,
                "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
                s.name,
                inuse.saturating_sub(cached),
                num_slabs * s.objs_per_slab as u64,
                s.size,
                s.objs_per_slab,
                s.pages_per_slab(),
                s.limit,
                s.batch,
                0,
                num_slabs - empty,
                num_slabs,
                0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "slab/tests.rs"]
mod tests;
