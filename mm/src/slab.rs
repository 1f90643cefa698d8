//! `kmalloc`: the slab small-object allocator on top of the page allocator.
//!
//! Linux counterpart: `mm/slub.c` and `mm/slab_common.c` — `struct kmem_cache` (one per
//! size class, [`KmemCache`]), `struct slab` (one or more contiguous pages cut into
//! equal objects), the per-CPU object cache (SLAB's `array_cache`, SLUB's per-CPU
//! freelist / 6.18 "sheaves"), `kmem_cache_node` (partial and empty slab lists under a
//! per-cache lock), `kmalloc_caches[]` and `kmalloc_index()` (sizes 8 B … 8 KiB,
//! including 96 and 192), `virt_to_slab()` (object address → `PageMeta` → slab),
//! `allocate_slab()` with its `oo_min` fallback, and the `init_on_alloc` /
//! `init_on_free` sanitization knobs (off by default).
//!
//! # Layout of a slab
//!
//! A slab is a block of `2^order` pages from a [`SlabPageProvider`]; its head
//! `PageMeta` is marked `Slab` with the cache index and the slab's order
//! ([`PageMeta::set_slab`]). The first bytes of the slab hold the slab descriptor
//! ([`SlabHeader`]: list links, order, object count, in-use count and a bitmap of free
//! objects, like the old SLAB's on-slab management); objects start at the first
//! multiple of their alignment after it. Power-of-two objects are aligned to their size
//! (Linux guarantee), 96 to 32 and 192 to 64, everything to [`ARCH_KMALLOC_MINALIGN`].
//! This needs a [`DirectMap`] that maps a `2^order`-aligned block (order ≤
//! [`MAX_SLAB_ORDER`]) to a `2^order`-page-aligned address, which both the kernel's
//! direct map and the host [`ArenaDirectMap`] do.
//!
//! # Slab order and the `oo_min` fallback
//!
//! Every cache has its preferred order (`oo`, up to [`MAX_SLAB_ORDER`]) and the minimum
//! order that holds one object (`oo_min`: 0 for every class up to 4 KiB, 1 for 8 KiB).
//! Like Linux's `allocate_slab`, a new slab is first asked for at `oo` with
//! `__GFP_NOWARN | __GFP_NORETRY` (and, for a caller that may reclaim, without
//! `__GFP_RECLAIM` and with `__GFP_NOMEMALLOC`: a fragmented zone must not trigger
//! reclaim or compaction, nor dip into reserves, for a size we do not need); if that
//! fails, it is asked for at `oo_min` with the caller's own flags, and the cache's
//! `order_fallback` counter (Linux `CONFIG_SLUB_STATS` `order_fallback`) goes up.
//! Each slab remembers its own order (in its `PageMeta` owner word and its header), so
//! slabs of different orders live side by side in one cache.
//!
//! When an `oo_min` slab has no room for the descriptor next to its one object — the
//! 4 KiB class in one page, the 8 KiB class in two — the slab is *single-object* and
//! has no descriptor at all (SLUB keeps all of it in `struct page`; here `PageMeta`
//! says cache and order, and one object needs nothing more): its object goes straight
//! to the caller, the slab is on no list (it is full while the object is out), and it
//! goes back to the page allocator as soon as the object returns to it.
//!
//! # Fast path and locks
//!
//! Lock order: per-CPU object cache (`KmemCache::cpu_slab[cpu]`, a [`LocalLock`] taken
//! with interrupts off, after which `Platform::cpu_id()` picks the CPU, like the page
//! allocator's pcp) → per-cache node lock (`KmemCache::node`) → page allocator locks.
//! `kmalloc`/`kfree` normally take only the per-CPU lock: on a
//! [`Platform::CPU_LOCAL`] platform (the kernel) that is a plain busy flag with
//! interrupts disabled, no `lock`-prefixed instruction (Linux `local_lock_irqsave`);
//! elsewhere (host threads) an atomic spin lock. The fast path is: size → class by
//! table (`kmalloc_index`), pop from / push to the per-CPU array; `kfree` finds the
//! slab through `PageMeta` (`virt_to_slab`) and checks the object boundary and the free
//! marker. No counters are updated there. Slab pages are allocated with **no** slab
//! lock held (the page allocator may run shrinkers, which call [`Kmalloc::shrink`]);
//! they are freed under the node lock (the page allocator never calls back into the
//! slab with its locks held).
//!
//! On a `CPU_LOCAL` platform only the owning CPU touches a per-CPU cache: a drain of
//! another CPU's cache ([`Kmalloc::drain_cpu_caches`]) only sets that cache's
//! `drain_req`, honoured by the owner at its next refill or flush (as the page
//! allocator's pcp does); other CPUs' caches are only read, as atomics, for the
//! double-free check and the statistics. A CPU id `>= MAX_CPUS` gets no per-CPU cache
//! there: its objects come from and go to the slabs under the node lock.
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
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::{Acquire, Relaxed, Release}};

use crate::addr::{PAGE_SIZE, Pfn};
use crate::gfp::Gfp;
use crate::page::{Kind, PageMeta};
use crate::page_alloc::{AllocError, MAX_CPUS, PageAlloc, Pages};
use crate::sync::{HostPlatform, LocalGuard, LocalLock, Platform, SpinLock};

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
/// Capacity of a per-CPU array cache (a power of two: indices are masked, not checked).
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

/// Size classes: (object size, preferred slab order `oo`). Index = what
/// [`kmalloc_index`] returns.
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
/// A table lookup up to 192 bytes, one `lzcnt` above: no search loop.
#[inline(always)]
pub const fn kmalloc_index(size: usize) -> Option<usize> {
    if size.wrapping_sub(1) < 192 {
        Some(SIZE_INDEX[(size - 1) / 8] as usize)
    } else if size.wrapping_sub(1) < KMALLOC_MAX_CACHE_SIZE {
        // fls(size - 1): 193..=256 -> 8 -> class 7, ..., 4097..=8192 -> 13 -> class 12.
        Some((usize::BITS - (size - 1).leading_zeros()) as usize - 1)
    } else {
        None
    }
}

/// Object size of class `index` (Linux `kmalloc_size`).
pub const fn kmalloc_size(index: usize) -> usize {
    KMALLOC_INFO[index].0 as usize
}

/// Flags of the first, preferred-order attempt of [`Kmalloc`]'s `allocate_slab`
/// (Linux: `(flags | __GFP_NOWARN | __GFP_NORETRY) & ~__GFP_NOFAIL`, and for callers
/// that may reclaim, `| __GFP_NOMEMALLOC` and `& ~__GFP_RECLAIM`). The `oo_min` retry
/// uses the caller's flags unchanged. `gfp` is the caller's, without `__GFP_ZERO`.
pub const fn slab_high_order_gfp(gfp: Gfp) -> Gfp {
    let g = gfp.union(Gfp::NOWARN).union(Gfp::NORETRY).difference(Gfp::NOFAIL);
    if g.contains(Gfp::DIRECT_RECLAIM) {
        g.union(Gfp::NOMEMALLOC).difference(Gfp::DIRECT_RECLAIM.union(Gfp::KSWAPD_RECLAIM))
    } else {
        g
    }
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
        // `page()` with one bounds check instead of two (the kfree fast path).
        self.meta.get(pfn.0.wrapping_sub(self.base_pfn) as usize)
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

/// Per-CPU stack of free objects (Linux SLAB `struct array_cache`; SLUB's
/// `kmem_cache_cpu` freelist plays the same role). Written only by the holder of the
/// owning [`CpuCache`]'s lock, with plain loads and stores; atomics only so that other
/// CPUs may take a racy snapshot (double-free check, statistics).
struct ArrayCache {
    avail: AtomicU32,
    entry: [AtomicUsize; AC_CAPACITY],
}

impl ArrayCache {
    const fn new() -> ArrayCache {
        ArrayCache { avail: AtomicU32::new(0), entry: [const { AtomicUsize::new(0) }; AC_CAPACITY] }
    }
    #[inline(always)]
    fn avail(&self) -> usize {
        self.avail.load(Relaxed) as usize
    }
    /// Holder only. `Release`, so a remote snapshot that reads `n` also sees the
    /// entries below `n` written before (a plain `mov` on x86).
    #[inline(always)]
    fn set_avail(&self, n: usize) {
        self.avail.store(n as u32, Release)
    }
    #[inline(always)]
    fn get(&self, i: usize) -> usize {
        self.entry[i % AC_CAPACITY].load(Relaxed)
    }
    #[inline(always)]
    fn set(&self, i: usize, obj: usize) {
        self.entry[i % AC_CAPACITY].store(obj, Relaxed)
    }
    /// Whether `obj` is cached here (a snapshot unless the caller holds the lock).
    fn contains(&self, obj: usize) -> bool {
        let n = (self.avail.load(Acquire) as usize).min(AC_CAPACITY);
        (0..n).any(|i| self.get(i) == obj)
    }
}

/// One CPU's object cache of one size class, protected by `lock`.
#[repr(align(64))]
struct CpuCache<P: Platform> {
    lock: LocalLock<(), P>,
    /// A remote [`Kmalloc::drain_cpu_caches`] asked the owner to flush (CPU-local
    /// platforms only).
    drain_req: AtomicBool,
    ac: ArrayCache,
}

impl<P: Platform> CpuCache<P> {
    const fn new() -> Self {
        CpuCache { lock: LocalLock::new(()), drain_req: AtomicBool::new(false), ac: ArrayCache::new() }
    }
}

/// A locked per-CPU cache.
type CpuGuard<'c, P> = (&'c CpuCache<P>, LocalGuard<'c, (), P>);

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
    /// Objects in all slabs (Linux `total_objects`).
    nr_objs: u64,
    /// Objects not free in their slab (held by callers or by array caches).
    nr_inuse: u64,
}

/// The slab descriptor at the start of every slab that has one (Linux `struct slab`).
#[repr(C)]
struct SlabHeader {
    magic: u64,
    pfn: u64,
    cache: u32,
    inuse: u32,
    next: usize,
    prev: usize,
    list: u32,
    /// This slab's order (`oo`, or `oo_min` after a fallback).
    order: u16,
    _pad: u16,
    /// Objects in this slab (Linux `slab->objects`).
    objects: u32,
    _pad2: u32,
    /// Bit set = object is free in the slab.
    free_map: [u64; FREE_MAP_WORDS],
}

const _: () = assert!(core::mem::size_of::<SlabHeader>() <= SLAB_HEADER_BYTES);

const SLAB_MAGIC: u64 = 0x51ab_c0de_0000_0000;
/// `PageMeta` owner word of a slab head ([`PageMeta::set_slab`]): this tag | order << 4
/// | cache index.
const SLAB_ID_TAG: u64 = 0x6b6d_616c_6c00; // "kmall"
/// The same id in the head's owner-free `lru_prev` word (one plain load for `kfree`).
const SLAB_HEAD_TAG: u32 = 0x5ab1_0000;
/// `lru_prev` of a slab's tail frame: this tag | distance to the head (Linux
/// `compound_head`), so `kfree` needs at most two `PageMeta` reads.
const SLAB_TAIL_TAG: u32 = 0x5ab7_0000;
const SLAB_TAG_MASK: u32 = 0xffff_0000;
const FREE_MAGIC: u64 = 0x6b6b_6b6b_a5a5_0000; // POISON_FREE-ish

const _: () = assert!(NR_KMALLOC_CACHES <= 16 && MAX_SLAB_ORDER < 4);

#[inline(always)]
const fn slab_id(index: u32, order: usize) -> u32 {
    (order as u32) << 4 | index
}

#[inline(always)]
fn free_marker(addr: usize) -> u64 {
    FREE_MAGIC ^ (addr as u64).rotate_left(29)
}

/// # Safety
/// `slab` is the header address of a live slab (with a header) of this allocator, and
/// the caller holds that slab's cache node lock (or owns the slab exclusively, before it
/// is published); no other reference to the same header is alive.
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

/// Where the objects of a slab of one order sit (Linux `kmem_cache_order_objects`).
#[derive(Clone, Copy, Debug)]
struct SlabGeo {
    /// Offset of object 0 from the slab start (0: single-object slab, no header).
    offset: u32,
    /// Objects per slab; 0 if this order cannot hold one object.
    objects: u32,
}

impl SlabGeo {
    const fn of(size: u32, order: usize) -> SlabGeo {
        let slab_bytes = (PAGE_SIZE as u32) << order;
        let align = 1u32 << size.trailing_zeros();
        let offset = if align as usize > SLAB_HEADER_BYTES { align } else { SLAB_HEADER_BYTES as u32 };
        if offset + size <= slab_bytes {
            SlabGeo { offset, objects: (slab_bytes - offset) / size }
        } else if size == slab_bytes {
            SlabGeo { offset: 0, objects: 1 }
        } else {
            SlabGeo { offset: 0, objects: 0 }
        }
    }
    /// A single-object slab without a descriptor.
    #[inline(always)]
    const fn headerless(self) -> bool {
        self.offset == 0
    }
}

/// One size class (Linux `struct kmem_cache`).
pub struct KmemCache<P: Platform = HostPlatform> {
    // Read-only after construction; the fast path reads `size`, `limit`,
    // `reciprocal` and `geo`.
    size: u32,
    /// Per-CPU array limit and flush batch (Linux SLAB `limit` / `batchcount`).
    limit: u32,
    /// `ceil(2^32 / size)`: `off / size` as a multiply (Linux `reciprocal_divide`).
    reciprocal: u64,
    /// Geometry by slab order.
    geo: [SlabGeo; MAX_SLAB_ORDER + 1],
    batch: u32,
    index: u32,
    /// Preferred order (Linux `oo`) and fallback order (Linux `min`, `oo_min`).
    order: u8,
    min_order: u8,
    name: &'static str,
    cpu_slab: [CpuCache<P>; MAX_CPUS],
    node: SpinLock<KmemCacheNode, P>,
    /// Pages in empty slabs (read without the lock by `count_reclaimable`).
    empty_pages: AtomicU64,
    /// Slabs allocated at `min_order` because `order` failed (Linux `ORDER_FALLBACK`).
    order_fallback: AtomicU64,
}

const KMALLOC_NAMES: [&str; NR_KMALLOC_CACHES] = [
    "kmalloc-8", "kmalloc-16", "kmalloc-32", "kmalloc-64", "kmalloc-96", "kmalloc-128", "kmalloc-192",
    "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k",
];

impl<P: Platform> KmemCache<P> {
    const fn new(index: usize) -> KmemCache<P> {
        let (size, order) = KMALLOC_INFO[index];
        let geo = [SlabGeo::of(size, 0), SlabGeo::of(size, 1), SlabGeo::of(size, 2), SlabGeo::of(size, 3)];
        let mut min_order = 0;
        while geo[min_order].objects == 0 {
            min_order += 1;
        }
        assert!(min_order <= order as usize && !geo[order as usize].headerless());
        let limit = match size {
            0..=256 => 32,
            257..=1024 => 24,
            1025..=2048 => 16,
            2049..=4096 => 8,
            _ => 4,
        };
        KmemCache {
            size,
            limit,
            reciprocal: (1u64 << 32).div_ceil(size as u64),
            geo,
            batch: limit.div_ceil(2),
            index: index as u32,
            order,
            min_order: min_order as u8,
            name: KMALLOC_NAMES[index],
            cpu_slab: [const { CpuCache::new() }; MAX_CPUS],
            node: SpinLock::new(KmemCacheNode {
                lists: [const { SlabList { head: 0, nr: 0 } }; 3],
                nr_slabs: 0,
                nr_objs: 0,
                nr_inuse: 0,
            }),
            empty_pages: AtomicU64::new(0),
            order_fallback: AtomicU64::new(0),
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
    /// Objects per slab of the preferred order.
    pub fn objs_per_slab(&self) -> usize {
        self.geo[self.order as usize].objects as usize
    }
    /// Pages per slab of the preferred order.
    pub fn pages_per_slab(&self) -> u64 {
        1 << self.order
    }
    /// Order of a fallback slab (Linux `oo_min`): the smallest that holds one object.
    pub fn min_order(&self) -> usize {
        self.min_order as usize
    }
    /// Objects per slab of the fallback order.
    pub fn objs_per_min_slab(&self) -> usize {
        self.geo[self.min_order as usize].objects as usize
    }
    /// Slabs allocated at [`min_order`](Self::min_order) because the preferred order
    /// failed (Linux `/sys/kernel/slab/<cache>/order_fallback`).
    pub fn order_fallback(&self) -> u64 {
        self.order_fallback.load(Relaxed)
    }

    /// Index of the object at `off` bytes from the start of a slab of `order`, if `off`
    /// is one's start.
    #[inline(always)]
    fn obj_index(&self, order: usize, off: usize) -> Option<usize> {
        let geo = self.geo[order % (MAX_SLAB_ORDER + 1)];
        let rel = off.checked_sub(geo.offset as usize)?;
        let idx = ((rel as u64 * self.reciprocal) >> 32) as usize;
        (idx * self.size as usize == rel && idx < geo.objects as usize).then_some(idx)
    }
    #[inline(always)]
    fn obj_addr(&self, order: usize, slab: usize, idx: usize) -> usize {
        slab + self.geo[order % (MAX_SLAB_ORDER + 1)].offset as usize + idx * self.size as usize
    }

    /// This CPU's cache, or `None` on a CPU-local platform for a CPU id beyond
    /// `MAX_CPUS` (no cache: sharing another CPU's flag would be unsound). Call with
    /// interrupts disabled.
    #[inline(always)]
    fn this_cpu(&self) -> Option<&CpuCache<P>> {
        let cpu = P::cpu_id();
        if cpu < MAX_CPUS {
            Some(&self.cpu_slab[cpu])
        } else if P::CPU_LOCAL {
            None
        } else {
            Some(&self.cpu_slab[cpu % MAX_CPUS])
        }
    }

    /// Locks this CPU's cache (Linux `local_lock_irqsave(&s->cpu_slab->lock)`).
    #[inline(always)]
    fn lock_this_cpu(&self) -> Option<CpuGuard<'_, P>> {
        let irq = P::irq_save();
        match self.this_cpu() {
            // SAFETY: interrupts are off since before the cpu id was read, and `c` is
            // the current CPU's cache (CPU-local platforms never get another's).
            Some(c) => Some((c, unsafe { c.lock.lock_saved(irq) })),
            None => {
                P::irq_restore(irq);
                None
            }
        }
    }

    /// Locks the cache of `cpu` if this context may: any CPU's on platforms with atomic
    /// locks, only the current CPU's on CPU-local platforms.
    fn lock_cpu(&self, cpu: usize) -> Option<CpuGuard<'_, P>> {
        let irq = P::irq_save();
        if P::CPU_LOCAL && P::cpu_id() != cpu {
            P::irq_restore(irq);
            return None;
        }
        let c = &self.cpu_slab[cpu];
        // SAFETY: CPU-local: interrupts off and `cpu` is the current CPU.
        Some((c, unsafe { c.lock.lock_saved(irq) }))
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
    fn relist(&mut self, slab: usize) {
        // SAFETY: node lock held; `slab` is live.
        let (cur, inuse, objects) = {
            let h = unsafe { slab_header(slab) };
            (h.list, h.inuse, h.objects)
        };
        let want = match inuse {
            0 => LIST_EMPTY,
            n if n == objects => LIST_FULL,
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

/// Counters of a [`Kmalloc`] (Linux: parts of `/proc/vmstat`, `/proc/meminfo` and the
/// `CONFIG_SLUB_STATS` files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabStats {
    /// Pages currently held by slabs (meminfo `Slab:` / 4 KiB).
    pub nr_slab_pages: u64,
    /// Refused frees of pointers that are not kmalloc objects (not slab / misaligned).
    pub invalid_frees: u64,
    /// Refused frees of objects that were already free.
    pub double_frees: u64,
    /// Slabs allocated at their cache's minimum order because the preferred order
    /// failed, all caches (Linux `order_fallback`, per cache in
    /// [`KmemCache::order_fallback`]).
    pub order_fallback: u64,
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

/// A slab found from an object address: its cache, start address and order.
type SlabRef<'k, P> = (&'k KmemCache<P>, usize, usize);

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
            order_fallback: self.caches.iter().map(|s| s.order_fallback()).sum(),
        }
    }

    // ------------------------------------------------------------ allocation

    /// Allocates `size` bytes (Linux `kmalloc`). Slab pages, if needed, are allocated
    /// with `gfp` (minus `__GFP_ZERO`, which is applied to the object).
    #[inline]
    pub fn kmalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        match kmalloc_index(size).and_then(|index| self.caches.get(index)) {
            Some(s) => self.kmem_cache_alloc(s, gfp),
            None if size == 0 => Ok(ZERO_SIZE_PTR),
            None => Err(KmallocError::TooLarge),
        }
    }

    /// `kmalloc(size, gfp | __GFP_ZERO)` (Linux `kzalloc`).
    pub fn kzalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        self.kmalloc(size, gfp | Gfp::ZERO)
    }

    /// Allocation for a `Layout` (the `#[global_allocator]` entry): the smallest class
    /// that is at least `size` and `align`, which is then aligned to `align`.
    #[inline]
    pub fn kmalloc_layout(&self, layout: Layout, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        if layout.align() > PAGE_SIZE as usize {
            return Err(KmallocError::TooLarge);
        }
        let Some(mut index) = kmalloc_index(layout.size().max(layout.align())) else {
            return Err(KmallocError::TooLarge);
        };
        // 96 and 192 are only 32/64-aligned: a stricter alignment takes the next class,
        // the next power of two (128, 256).
        if KMALLOC_INFO.get(index).is_some_and(|&(size, _)| 1usize << size.trailing_zeros() < layout.align()) {
            index += 1;
        }
        match self.caches.get(index) {
            Some(s) => self.kmem_cache_alloc(s, gfp),
            None => Err(KmallocError::TooLarge),
        }
    }

    /// Allocates one object of `s` (Linux `kmem_cache_alloc`): the fast path pops this
    /// CPU's array under its CPU-local lock.
    #[inline(always)]
    fn kmem_cache_alloc(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<NonNull<u8>, KmallocError> {
        if let Some((c, guard)) = s.lock_this_cpu() {
            let n = c.ac.avail();
            if n != 0 {
                let obj = c.ac.get(n - 1);
                c.ac.set_avail(n - 1);
                drop(guard);
                return Ok(self.post_alloc(s, obj, gfp));
            }
        }
        let obj = self.slab_alloc_slow(s, gfp)?;
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
            if let Some(obj) = self.get_partial(s) {
                return Ok(obj);
            }
            let (slab, order) = self.new_slab(s, gfp)?;
            let geo = s.geo[order];
            let mut n = s.node.lock();
            n.nr_slabs += 1;
            n.nr_objs += geo.objects as u64;
            if geo.headerless() {
                // The one object goes straight to the caller; the slab is full.
                n.nr_inuse += 1;
                return Ok(slab);
            }
            n.list_add(LIST_EMPTY, slab);
            s.empty_pages.fetch_add(1 << order, Relaxed);
        }
    }

    /// One object from this CPU's cache after refilling it from the node lists (or
    /// straight from the lists when this CPU has no cache). `None`: no free object in
    /// any slab of `s`.
    fn get_partial(&self, s: &KmemCache<P>) -> Option<usize> {
        let Some((c, _guard)) = s.lock_this_cpu() else {
            let mut n = s.node.lock();
            let mut got = None;
            self.take_objects(s, &mut n, 1, |obj| got = Some(obj));
            return got;
        };
        if c.drain_req.load(Relaxed) {
            c.drain_req.store(false, Relaxed);
            self.flush_array(s, c, c.ac.avail());
        }
        let mut n = c.ac.avail();
        if n == 0 {
            let want = (s.batch as usize).min(AC_CAPACITY);
            let mut node = s.node.lock();
            self.take_objects(s, &mut node, want, |obj| {
                c.ac.set(n, obj);
                n += 1;
            });
        }
        let obj = n.checked_sub(1).map(|i| c.ac.get(i));
        c.ac.set_avail(n.saturating_sub(1));
        obj
    }

    /// Takes up to `want` free objects out of partial (then empty) slabs and hands
    /// them to `put` (Linux `get_partial_node` + SLAB's `cache_alloc_refill`).
    fn take_objects(&self, s: &KmemCache<P>, n: &mut KmemCacheNode, want: usize, mut put: impl FnMut(usize)) {
        let mut left = want;
        while left > 0 {
            let slab = match (n.lists[LIST_PARTIAL as usize].head, n.lists[LIST_EMPTY as usize].head) {
                (0, 0) => break,
                (0, empty) => empty,
                (partial, _) => partial,
            };
            // SAFETY: node lock held; `slab` is the head of one of its lists.
            let h = unsafe { slab_header(slab) };
            if h.inuse == 0 {
                s.empty_pages.fetch_sub(1 << h.order, Relaxed);
            }
            let order = h.order as usize;
            let mut taken = 0;
            for w in 0..FREE_MAP_WORDS {
                while h.free_map[w] != 0 && left > 0 {
                    let bit = h.free_map[w].trailing_zeros() as usize;
                    h.free_map[w] &= h.free_map[w] - 1;
                    put(s.obj_addr(order, slab, w * 64 + bit));
                    left -= 1;
                    taken += 1;
                }
            }
            h.inuse += taken;
            n.nr_inuse += taken as u64;
            n.relist(slab);
        }
    }

    /// Gets the pages of a new slab (Linux `allocate_slab`): the preferred order with
    /// [`slab_high_order_gfp`], then `oo_min` with the caller's flags (counted in
    /// `order_fallback`). Returns the pages and their order.
    fn allocate_slab(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<(Pages, usize), KmallocError> {
        let (oo, min) = (s.order as usize, s.min_order as usize);
        if oo == min {
            return self.pages.alloc_slab_pages(gfp, oo).map(|p| (p, oo)).map_err(KmallocError::NoMemory);
        }
        if let Ok(pages) = self.pages.alloc_slab_pages(slab_high_order_gfp(gfp), oo) {
            return Ok((pages, oo));
        }
        // The preferred order may have failed only to fragmentation: try the minimum.
        let pages = self.pages.alloc_slab_pages(gfp, min).map_err(KmallocError::NoMemory)?;
        s.order_fallback.fetch_add(1, Relaxed);
        Ok((pages, min))
    }

    /// Allocates and formats a new slab (Linux `new_slab`); returns its address and
    /// order. The slab is formatted before its `PageMeta` marks it (publication), and
    /// is on no list yet.
    fn new_slab(&self, s: &KmemCache<P>, gfp: Gfp) -> Result<(usize, usize), KmallocError> {
        let (pages, order) = self.allocate_slab(s, gfp.difference(Gfp::ZERO))?;
        let pfn = pages.pfn();
        let base = self.map.pfn_to_virt(pfn).expose_provenance();
        let geo = s.geo[order];
        if base % ((PAGE_SIZE as usize) << order) != 0 {
            self.pages.free_slab_pages(pages);
            return Err(KmallocError::NoMemory(AllocError::NoMemory));
        }
        if !geo.headerless() {
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
                order: order as u16,
                _pad: 0,
                objects: geo.objects,
                _pad2: 0,
                free_map: [0; FREE_MAP_WORDS],
            };
            for i in 0..geo.objects as usize {
                h.free_map[i / 64] |= 1 << (i % 64);
                let obj = s.obj_addr(order, base, i);
                // SAFETY: inside our unpublished slab, 8-aligned.
                unsafe { obj_word(obj) }.store(free_marker(obj), Relaxed);
            }
        }
        // Tail frames point at the head, the head names cache and order; then the
        // `Slab` state publishes the slab.
        for d in 1..1u32 << order {
            if let Some(t) = self.pages.slab_page(Pfn(pfn.0 + d as u64)) {
                t.set_prev(SLAB_TAIL_TAG | d);
            }
        }
        let id = slab_id(s.index, order);
        let marked = self.pages.slab_page(pfn).is_some_and(|m| {
            m.set_prev(SLAB_HEAD_TAG | id);
            m.set_slab(SLAB_ID_TAG | id as u64).is_ok()
        });
        if !marked {
            self.clear_slab_links(pfn, order);
            self.pages.free_slab_pages(pages);
            return Err(KmallocError::NoMemory(AllocError::NoMemory));
        }
        let _ = pages.leak(); // owned by the slab now; re-created in `discard_slab`
        self.nr_slab_pages.fetch_add(1 << order, Relaxed);
        Ok((base, order))
    }

    /// Ends the `Slab` state of the head (so `kfree` no longer finds the slab), then
    /// clears the head and tail links.
    fn unmark_slab(&self, pfn: Pfn, order: usize) -> bool {
        let ok = self.pages.slab_page(pfn).is_some_and(|m| m.clear_owner_state().is_ok());
        self.clear_slab_links(pfn, order);
        ok
    }

    fn clear_slab_links(&self, pfn: Pfn, order: usize) {
        for d in 0..1u64 << order {
            if let Some(m) = self.pages.slab_page(Pfn(pfn.0 + d)) {
                m.set_prev(0);
            }
        }
    }

    /// Returns an empty slab of `order` (already off every list) to the page allocator
    /// (Linux `discard_slab`). Called with the node lock held.
    fn discard_slab(&self, s: &KmemCache<P>, n: &mut KmemCacheNode, slab: usize, order: usize) {
        let Some(pfn) = self.map.virt_to_pfn(slab) else { return };
        n.nr_slabs -= 1;
        n.nr_objs -= s.geo[order].objects as u64;
        self.nr_slab_pages.fetch_sub(1 << order, Relaxed);
        if self.unmark_slab(pfn, order) {
            self.pages.free_slab_pages(Pages::new(pfn, order));
        }
    }

    // ------------------------------------------------------------------ free

    /// Frees an object (Linux `kfree`). Refuses, counts and reports pointers that are
    /// not live kmalloc objects; `ZERO_SIZE_PTR` is accepted and ignored.
    #[inline(always)]
    pub fn kfree(&self, ptr: NonNull<u8>) -> Result<(), KfreeError> {
        let addr = ptr.as_ptr().expose_provenance();
        if addr == ZERO_SIZE_PTR.addr().get() {
            return Ok(());
        }
        let (s, slab, order) = match self.virt_to_object(addr) {
            Ok(found) => found,
            Err(e) => return Err(self.invalid_free(e)),
        };
        // SAFETY: `addr` is the start of an object of a live slab (checked above).
        let word = unsafe { obj_word(addr) };
        if word.load(Relaxed) == free_marker(addr) && self.object_is_free(s, slab, order, addr) {
            self.double_frees.fetch_add(1, Relaxed);
            return Err(KfreeError::DoubleFree);
        }
        if self.init_on_free.load(Relaxed) {
            // SAFETY: the caller hands the live object back to us.
            unsafe { obj_zero(addr, s.size as usize) };
        }
        word.store(free_marker(addr), Relaxed);
        match s.lock_this_cpu() {
            Some((c, _guard)) => {
                let n = c.ac.avail();
                if n < s.limit as usize {
                    c.ac.set(n, addr);
                    c.ac.set_avail(n + 1);
                } else {
                    self.cache_flusharray(s, c, addr);
                }
            }
            None => {
                let mut n = s.node.lock();
                self.free_to_slab(s, &mut n, addr);
            }
        }
        Ok(())
    }

    #[cold]
    fn invalid_free(&self, e: KfreeError) -> KfreeError {
        self.invalid_frees.fetch_add(1, Relaxed);
        e
    }

    /// The array is full: returns its oldest `batch` objects (all of them if a drain
    /// was requested) to their slabs, then caches `obj` (Linux `cache_flusharray`).
    /// The caller holds `c`'s lock.
    #[cold]
    #[inline(never)]
    fn cache_flusharray(&self, s: &KmemCache<P>, c: &CpuCache<P>, obj: usize) {
        let count = if c.drain_req.load(Relaxed) {
            c.drain_req.store(false, Relaxed);
            c.ac.avail()
        } else {
            s.batch as usize
        };
        self.flush_array(s, c, count);
        let n = c.ac.avail();
        c.ac.set(n, obj);
        c.ac.set_avail(n + 1);
    }

    /// Usable size of a kmalloc object (Linux `ksize`).
    pub fn ksize(&self, ptr: NonNull<u8>) -> Result<usize, KfreeError> {
        if ptr == ZERO_SIZE_PTR {
            return Ok(0);
        }
        self.virt_to_object(ptr.as_ptr().expose_provenance()).map(|(s, _, _)| s.size as usize)
    }

    /// The cache, slab and slab order of the object starting at `addr` (Linux
    /// `virt_to_slab`, plus the object-boundary check of `check_valid_pointer`).
    #[inline(always)]
    fn virt_to_object(&self, addr: usize) -> Result<SlabRef<'_, P>, KfreeError> {
        let (s, slab, order) = self.virt_to_slab(addr)?;
        s.obj_index(order, addr - slab).ok_or(KfreeError::Misaligned)?;
        Ok((s, slab, order))
    }

    /// Finds the slab containing `addr` through `PageMeta` (Linux `virt_to_slab`): the
    /// frame is the `Slab` head, or a tail whose link names the head. The head's kind
    /// and id decide; a tail link is only a hint (a stale word in some other block's
    /// tail cannot pass the head check, since blocks do not overlap).
    #[inline(always)]
    fn virt_to_slab(&self, addr: usize) -> Result<SlabRef<'_, P>, KfreeError> {
        let pfn = self.map.virt_to_pfn(addr).ok_or(KfreeError::NotSlab)?;
        let m = self.pages.slab_page(pfn).ok_or(KfreeError::NotSlab)?;
        let (head, hm) = match m.kind() {
            Kind::Slab => (pfn, m),
            Kind::Tail => self.slab_head_of_tail(pfn, m.prev())?,
            _ => return Err(KfreeError::NotSlab),
        };
        let id = hm.prev();
        let (index, order) = ((id & 0xf) as usize, (id >> 4 & 0xf) as usize);
        let s = self.caches.get(index).ok_or(KfreeError::NotSlab)?;
        if id & SLAB_TAG_MASK != SLAB_HEAD_TAG || order > MAX_SLAB_ORDER || pfn.0 - head.0 >= 1 << order {
            return Err(KfreeError::NotSlab);
        }
        // Contiguous frames map to contiguous addresses: no second translation.
        let slab = (addr & !(PAGE_SIZE as usize - 1)) - ((pfn.0 - head.0) as usize) * PAGE_SIZE as usize;
        Ok((s, slab, order))
    }

    /// The head of the slab whose tail frame `pfn` has the link `link`.
    #[inline(always)]
    fn slab_head_of_tail(&self, pfn: Pfn, link: u32) -> Result<(Pfn, &PageMeta), KfreeError> {
        if link & SLAB_TAG_MASK != SLAB_TAIL_TAG {
            return Err(KfreeError::NotSlab);
        }
        let head = Pfn(pfn.0.wrapping_sub((link & 7) as u64));
        match self.pages.slab_page(head) {
            Some(hm) if hm.kind() == Kind::Slab => Ok((head, hm)),
            _ => Err(KfreeError::NotSlab),
        }
    }

    /// Whether the object at `addr` is free: on some CPU's array cache, or in its slab's
    /// free map. Only asked when the free marker is present (the slow path). On a
    /// CPU-local platform other CPUs' arrays are read as a snapshot.
    #[cold]
    fn object_is_free(&self, s: &KmemCache<P>, slab: usize, order: usize, addr: usize) -> bool {
        for cpu in 0..MAX_CPUS {
            let cached = match s.lock_cpu(cpu) {
                Some((c, _guard)) => c.ac.contains(addr),
                None => s.cpu_slab[cpu].ac.contains(addr),
            };
            if cached {
                return true;
            }
        }
        let n = s.node.lock();
        // The slab may have been discarded meanwhile if this is a stale pointer.
        let Ok((s2, slab2, order2)) = self.virt_to_slab(addr) else { return true };
        if !core::ptr::eq(s, s2) || slab != slab2 || order != order2 {
            return true;
        }
        let Some(idx) = s.obj_index(order, addr - slab) else { return true };
        if s.geo[order].headerless() {
            // A single-object slab exists only while its object is out.
            return false;
        }
        // SAFETY: node lock held (`n`), the slab is live (its PageMeta says so).
        let free = unsafe { slab_header(slab) }.free_map[idx / 64] & (1 << (idx % 64)) != 0;
        drop(n);
        free
    }

    /// Returns the oldest `count` objects of `c`'s array to their slabs (Linux
    /// `free_block`); slabs that become empty beyond [`MAX_EMPTY_SLABS`] are freed.
    /// The caller holds `c`'s lock.
    fn flush_array(&self, s: &KmemCache<P>, c: &CpuCache<P>, count: usize) {
        let avail = c.ac.avail();
        let count = count.min(avail);
        if count == 0 {
            return;
        }
        let mut n = s.node.lock();
        for i in 0..count {
            self.free_to_slab(s, &mut n, c.ac.get(i));
        }
        drop(n);
        for i in count..avail {
            c.ac.set(i - count, c.ac.get(i));
        }
        c.ac.set_avail(avail - count);
    }

    /// Puts one object back into its slab (node lock held). The slab and its order come
    /// from `PageMeta`: a cache may hold slabs of its preferred and its minimum order.
    fn free_to_slab(&self, s: &KmemCache<P>, n: &mut KmemCacheNode, obj: usize) {
        let found = self.virt_to_slab(obj);
        let Ok((s2, slab, order)) = found else {
            debug_assert!(false, "cached object {obj:#x} not in a slab");
            return;
        };
        let Some(idx) = s.obj_index(order, obj - slab).filter(|_| core::ptr::eq(s, s2)) else {
            debug_assert!(false, "cached object {obj:#x} not an object of {}", s.name);
            return;
        };
        n.nr_inuse -= 1;
        if s.geo[order].headerless() {
            self.discard_slab(s, n, slab, order);
            return;
        }
        // SAFETY: node lock held; objects in array caches belong to live slabs of `s`.
        let h = unsafe { slab_header(slab) };
        debug_assert_eq!(h.magic, SLAB_MAGIC ^ h.pfn);
        h.free_map[idx / 64] |= 1 << (idx % 64);
        h.inuse -= 1;
        let now_empty = h.inuse == 0;
        if now_empty && n.lists[LIST_EMPTY as usize].nr >= MAX_EMPTY_SLABS {
            if h.list != LIST_FULL {
                n.list_del(slab);
            }
            self.discard_slab(s, n, slab, order);
            return;
        }
        n.relist(slab);
        if now_empty {
            s.empty_pages.fetch_add(1 << order, Relaxed);
        }
    }

    // ------------------------------------------------------------- shrinking

    /// Returns every CPU's cached objects to their slabs (Linux `flush_all`). On a
    /// CPU-local platform other CPUs' caches are only asked to drain (`drain_req`,
    /// honoured at their next refill or flush).
    pub fn drain_cpu_caches(&self) {
        for s in &self.caches {
            for cpu in 0..MAX_CPUS {
                match s.lock_cpu(cpu) {
                    Some((c, _guard)) => self.flush_array(s, c, c.ac.avail()),
                    None => {
                        let c = &s.cpu_slab[cpu];
                        if c.ac.avail.load(Relaxed) != 0 {
                            c.drain_req.store(true, Relaxed);
                        }
                    }
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
                // SAFETY: node lock held; `slab` was the head of the empty list.
                let order = unsafe { slab_header(slab) }.order as usize;
                s.empty_pages.fetch_sub(1 << order, Relaxed);
                self.discard_slab(s, &mut n, slab, order);
                freed += 1 << order;
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
            pages += self.cached_objects(s) * s.size as u64 / PAGE_SIZE;
        }
        pages
    }

    /// Objects parked in all CPUs' caches of `s` (a snapshot).
    fn cached_objects(&self, s: &KmemCache<P>) -> u64 {
        s.cpu_slab.iter().map(|c| c.ac.avail.load(Relaxed).min(AC_CAPACITY as u32) as u64).sum()
    }

    // ---------------------------------------------------------- observability

    /// `/proc/slabinfo` (version 2.1). Active objects exclude those parked in per-CPU
    /// caches; active slabs are the non-empty ones; `<pagesperslab>` and
    /// `<objperslab>` are those of the preferred order (fallback slabs are smaller).
    pub fn slabinfo(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "slabinfo - version: 2.1")?;
        writeln!(
            out,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
        )?;
        for s in self.caches.iter().rev() {
            let cached = self.cached_objects(s);
            let (num_slabs, num_objs, inuse, empty) = {
                let n = s.node.lock();
                (n.nr_slabs, n.nr_objs, n.nr_inuse, n.lists[LIST_EMPTY as usize].nr)
            };
            writeln!(
                out,
                "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
                s.name,
                inuse.saturating_sub(cached),
                num_objs,
                s.size,
                s.objs_per_slab(),
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

    /// The `CONFIG_SLUB_STATS` counter `order_fallback` of every cache that has one,
    /// one `name order_fallback N (order OO -> MIN)` line each (preferred order, then
    /// `oo_min`), then the total.
    pub fn slub_stats(&self, out: &mut impl Write) -> fmt::Result {
        for s in &self.caches {
            let n = s.order_fallback();
            if n != 0 {
                writeln!(out, "{:<17} order_fallback {} (order {} -> {})", s.name, n, s.order, s.min_order)?;
            }
        }
        writeln!(out, "order_fallback total {}", self.stats().order_fallback)
    }
}

#[cfg(test)]
#[path = "slab/tests.rs"]
mod tests;
