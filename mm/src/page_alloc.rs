//! The buddy page allocator: zones, free lists per (order, migrate type), watermarks,
//! fallback / block claiming, and the `alloc_pages` / `free_pages` API.
//!
//! Linux counterpart: `mm/page_alloc.c` (6.15 structure: `__rmqueue_smallest`,
//! `__rmqueue_claim` with `try_to_claim_block`, `__rmqueue_steal`, `__free_one_page`,
//! `zone_watermark_ok`, `get_page_from_freelist`, `__alloc_pages_slowpath`) plus the
//! `try_alloc_pages` / `free_pages_nolock` pair for any context.
//!
//! # Locks
//!
//! Order: per-CPU list lock (`Zone::pcp[cpu]`) → zone lock (`Zone::area`) → movable-ops
//! registry. The deferred-free list is lock-free (push with CAS, drained by swapping the
//! whole head out while holding the zone lock, so there is no ABA). Owner callbacks
//! (`MigrateOps`, `AllocHooks`) are never called with an allocator lock held.
//!
//! # Accounting
//!
//! Every managed frame is, at any time, in exactly one of: a buddy free list, a per-CPU
//! list, the deferred list, or an owned block (`Pages`). Per zone,
//! `managed = buddy free + pcp + deferred + allocated`.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::addr::{PAGE_SIZE, Pfn};
use crate::compaction::MigrateOps;
use crate::fail_page_alloc::FailPageAlloc;
use crate::gfp::{Gfp, gfp_migratetype, gfpflags_allow_blocking};
use crate::page::{Kind, MovableOpsId, NONE, PageMeta};
use crate::pageblock::{
    MIGRATE_TYPES, MigrateType, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER, fallbacks, pageblock_start_pfn,
};
use crate::pcp::PcpSlot;
use crate::sync::{HostPlatform, Platform, SpinGuard, SpinLock};

/// Largest order (Linux `MAX_PAGE_ORDER`): 2^10 pages = 4 MiB.
pub const MAX_ORDER: usize = 10;
/// Number of orders (Linux `NR_PAGE_ORDERS`).
pub const NR_PAGE_ORDERS: usize = MAX_ORDER + 1;
/// Highest order served by per-CPU lists (Linux `PAGE_ALLOC_COSTLY_ORDER`).
pub const PCP_MAX_ORDER: usize = 3;
/// Per-CPU lists exist for CPUs `0..MAX_CPUS`.
pub const MAX_CPUS: usize = 16;
/// Number of zones.
pub const NR_ZONES: usize = 2;
/// `nid` meaning "any node" for [`PageAlloc::try_alloc_pages`].
pub const NUMA_NO_NODE: i32 = -1;
/// Up to this many owners may register migration callbacks.
pub const MAX_MOVABLE_OPS: usize = 7;

/// First frame above the DMA32 zone (4 GiB).
const DMA32_END_PFN: u64 = 1 << (32 - crate::addr::PAGE_SHIFT);

/// A memory zone (Linux `enum zone_type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ZoneType {
    /// Below 4 GiB.
    Dma32 = 0,
    /// Everything else.
    Normal = 1,
}

impl ZoneType {
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
        }
    }
}

/// Watermark index (Linux `enum zone_watermarks`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Watermark {
    Min = 0,
    Low = 1,
    High = 2,
}

// Internal allocation flags (Linux `ALLOC_*` in mm/internal.h).
pub(crate) const ALLOC_WMARK_MASK: u32 = 0x3;
pub(crate) const ALLOC_NO_WATERMARKS: u32 = 0x4;
pub(crate) const ALLOC_NON_BLOCK: u32 = 0x40;
/// `__GFP_HIGH`: half of the min reserve (Linux ≥ 6.3 `ALLOC_MIN_RESERVE`, formerly
/// `ALLOC_HIGH`); also what a reclaiming `__GFP_NOFAIL` request gets.
pub(crate) const ALLOC_MIN_RESERVE: u32 = 0x80;
pub(crate) const ALLOC_NOFRAGMENT: u32 = 0x100;
pub(crate) const ALLOC_HIGHATOMIC: u32 = 0x200;
pub(crate) const ALLOC_TRYLOCK: u32 = 0x400;
const ALLOC_RESERVES: u32 = ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE | ALLOC_HIGHATOMIC;

/// Physical memory access the allocator needs for `__GFP_ZERO` and migration.
/// The kernel implements it over its direct map, host tests over a `Vec`.
pub trait PhysMem: Sync {
    /// Fills `nr_pages` frames starting at `pfn` with zeroes.
    ///
    /// # Safety
    /// The caller owns the frames exclusively for the duration of the call.
    unsafe fn zero_frames(&self, pfn: Pfn, nr_pages: u64);
    /// Copies `nr_pages` frames from `src` to `dst`.
    ///
    /// # Safety
    /// The caller owns `dst` exclusively and keeps `src` stable during the call.
    unsafe fn copy_frames(&self, src: Pfn, dst: Pfn, nr_pages: u64);
}

/// A `PhysMem` for memory nobody reads (benchmarks, tests without `__GFP_ZERO`).
pub struct NoPhysMem;
impl PhysMem for NoPhysMem {
    unsafe fn zero_frames(&self, _: Pfn, _: u64) {}
    unsafe fn copy_frames(&self, _: Pfn, _: Pfn, _: u64) {}
}

/// Callbacks into the rest of the kernel. All methods have no-op defaults.
pub trait AllocHooks: Sync {
    /// An allocation failed without `__GFP_NOWARN` (Linux `warn_alloc`).
    fn warn_alloc(&self, _gfp: Gfp, _order: usize, _err: AllocError) {}
    /// A free found inconsistent metadata (Linux `bad_page`); the block is leaked.
    fn bad_page(&self, _pfn: Pfn, _reason: &'static str) {}
    /// Direct reclaim (the kernel's shrinker registry): try to free memory; returns
    /// pages freed (0 = no progress). Only called when the caller's GFP flags allow
    /// direct reclaim (`__GFP_DIRECT_RECLAIM`); the implementation must honour
    /// `__GFP_FS` / `__GFP_IO` in `gfp`. Never called with an allocator lock held.
    fn direct_reclaim(&self, _gfp: Gfp, _order: usize) -> u64 {
        0
    }
    /// A `__GFP_NOFAIL` allocation has looped `retries` times without success
    /// (called every [`NOFAIL_STALL_INTERVAL`] retries; Linux warns "page allocation
    /// stalls" / "loops for long"). It keeps retrying after the call.
    fn nofail_stall(&self, _gfp: Gfp, _order: usize, _retries: u64) {}
    /// A direct-reclaim round freed nothing: wait a little so that other tasks and
    /// interrupt handlers can free memory before the allocator retries (Linux
    /// `reclaim_throttle(pgdat, VMSCAN_THROTTLE_NOPROGRESS)`, a sleep of one jiffy).
    /// Only called for callers that may block (`__GFP_DIRECT_RECLAIM`, not
    /// `__GFP_NORETRY`), never with an allocator lock held. Returns whether it waited;
    /// `false` when the context cannot sleep (interrupts off, a spin lock held, no
    /// scheduler). The default (host) cannot.
    fn reclaim_throttle(&self, _gfp: Gfp) -> bool {
        false
    }
}

/// Reclaim rounds without progress before a reclaiming allocation gives up
/// (Linux `MAX_RECLAIM_RETRIES`).
pub const MAX_RECLAIM_RETRIES: u32 = 16;
/// `__GFP_NOFAIL` retries between two [`AllocHooks::nofail_stall`] calls.
pub const NOFAIL_STALL_INTERVAL: u64 = 1000;

/// Hooks that do nothing.
pub struct NoHooks;
impl AllocHooks for NoHooks {}

/// Why `alloc_pages` failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AllocError {
    /// `order` > [`MAX_ORDER`].
    InvalidOrder,
    /// No zone could satisfy the request within its watermarks.
    NoMemory,
    /// `fail_page_alloc` fault injection failed the request on purpose.
    Injected,
}

/// Why `PageAlloc::new` refused the memory description.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InitError {
    /// `first_pfn` is not a multiple of 2^MAX_ORDER pages.
    MisalignedBase,
    /// More frames than u32 indices can link.
    TooManyFrames,
    /// A usable range lies (partly) outside the frames the metadata describes.
    RangeOutsideMetadata,
    /// Two usable ranges overlap.
    OverlappingRanges,
    /// `nr_cpus` is 0 or larger than [`MAX_CPUS`].
    BadCpuCount,
}

/// Tunables (Linux sysctls).
#[derive(Clone, Copy, Debug)]
pub struct AllocConfig {
    /// CPUs that get per-CPU lists (`1..=MAX_CPUS`).
    pub nr_cpus: usize,
    /// Group pages by mobility (Linux `page_group_by_mobility_disabled == 0`).
    pub group_by_mobility: bool,
    /// `vm.defrag_mode`: compact before falling back to a foreign block type.
    pub defrag_mode: bool,
    /// `vm.min_free_kbytes`; `None` = Linux' default `sqrt(16 * lowmem_kb)`.
    pub min_free_kbytes: Option<u64>,
    /// Per-CPU batch; `None` = Linux' `zone_batchsize` (63 for zones >= 256 MiB).
    pub pcp_batch: Option<u32>,
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig { nr_cpus: 1, group_by_mobility: true, defrag_mode: false, min_free_kbytes: None, pcp_batch: None }
    }
}

/// An owned block of `2^order` frames. Not `Clone`; give it back with
/// [`PageAlloc::free_pages`] (or [`Pages::leak`] to keep it forever). Dropping it is a
/// leak and panics in debug builds (a drop bomb).
///
/// Layout: `order + 1` is kept in a full `NonZeroU64`, so `Pages` has no padding
/// (copies never mix a narrow store with a wide load, which stalls store-to-load
/// forwarding) and `Result<Pages, AllocError>` / `Option<Pages>` fit in two registers.
#[must_use = "pages must be returned with free_pages() or leak()"]
#[derive(PartialEq, Eq)]
pub struct Pages {
    pfn: Pfn,
    order_plus_1: core::num::NonZeroU64,
}

impl core::fmt::Debug for Pages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pages").field("pfn", &self.pfn).field("order", &self.order()).finish()
    }
}

impl Pages {
    #[inline(always)]
    pub(crate) const fn new(pfn: Pfn, order: usize) -> Pages {
        Pages { pfn, order_plus_1: core::num::NonZeroU64::MIN.saturating_add(order as u64) }
    }
    #[inline(always)]
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }
    #[inline(always)]
    pub fn order(&self) -> usize {
        (self.order_plus_1.get() - 1) as usize
    }
    pub fn nr_pages(&self) -> u64 {
        1 << self.order()
    }
    pub fn phys_addr(&self) -> u64 {
        self.pfn.phys_addr()
    }
    /// Frames covered.
    pub fn pfn_range(&self) -> Range<u64> {
        self.pfn.0..self.pfn.0 + self.nr_pages()
    }
    /// Gives up the handle without freeing (memory kept for the kernel's lifetime, or
    /// recorded elsewhere by pfn, e.g. in a page-table entry). Returns the pfn.
    pub fn leak(self) -> Pfn {
        let pfn = self.pfn;
        core::mem::forget(self);
        pfn
    }
    /// Re-creates the handle of a block that was [`leak`](Pages::leak)ed.
    ///
    /// # Safety
    /// `pfn`/`order` describe a block obtained from this allocator whose handle was
    /// leaked, and no other handle to it exists (otherwise it would be freed twice).
    pub unsafe fn from_raw(pfn: Pfn, order: usize) -> Pages {
        Pages::new(pfn, order)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        #[cfg(test)]
        if std::thread::panicking() {
            return;
        }
        #[cfg(debug_assertions)]
        panic!("leaked {} pages at {}: Pages must be passed to free_pages()", self.nr_pages(), self.pfn);
    }
}

/// Buddy free lists of one zone (Linux `struct free_area[]` + zone counters).
pub(crate) struct FreeArea {
    pub(crate) head: [[u32; MIGRATE_TYPES]; NR_PAGE_ORDERS],
    pub(crate) nr_free: [[u64; MIGRATE_TYPES]; NR_PAGE_ORDERS],
    pub(crate) nr_free_pages: u64,
    pub(crate) nr_free_by_mt: [u64; MIGRATE_TYPES],
    pub(crate) nr_blocks_by_mt: [u64; MIGRATE_TYPES],
    pub(crate) nr_reserved_highatomic: u64,
}

impl FreeArea {
    const fn new() -> FreeArea {
        FreeArea {
            head: [[NONE; MIGRATE_TYPES]; NR_PAGE_ORDERS],
            nr_free: [[0; MIGRATE_TYPES]; NR_PAGE_ORDERS],
            nr_free_pages: 0,
            nr_free_by_mt: [0; MIGRATE_TYPES],
            nr_blocks_by_mt: [0; MIGRATE_TYPES],
            nr_reserved_highatomic: 0,
        }
    }

    /// What the lock-free `Zone` mirrors hold: free pages usable for watermarks
    /// (all but Isolate) and, of those, the ones in high-atomic reserve blocks.
    pub(crate) fn watermark_free(&self) -> (u64, u64) {
        let usable = self.nr_free_pages - self.nr_free_by_mt[MigrateType::Isolate.index()];
        (usable, self.nr_free_by_mt[MigrateType::HighAtomic.index()])
    }
}

/// One zone (Linux `struct zone`).
pub struct Zone<P: Platform> {
    pub(crate) ztype: ZoneType,
    /// Frames `[start_pfn, end_pfn)` of the zone that the metadata covers.
    pub(crate) start_pfn: u64,
    pub(crate) end_pfn: u64,
    pub(crate) managed_pages: u64,
    pub(crate) wmark: [u64; 3],
    /// `wmark[Low] + 1024`: above it, the fast path needs no other watermark check.
    pub(crate) fast_mark: u64,
    pub(crate) area: SpinLock<FreeArea, P>,
    pub(crate) pcp: [PcpSlot<P>; MAX_CPUS],
    /// Mirror of buddy free pages usable for watermarks (excludes Isolate), read without lock.
    pub(crate) nr_free: AtomicU64,
    /// Mirror of the free pages in high-atomic reserve blocks (Linux
    /// `nr_free_highatomic`): unusable for requests without `ALLOC_RESERVES`.
    pub(crate) nr_free_highatomic: AtomicU64,
    /// Head of the lock-free deferred-free stack (metadata index), `NONE` if empty.
    pub(crate) deferred_head: AtomicU32,
    pub(crate) nr_deferred: AtomicU64,
}

/// Event counters (Linux `/proc/vmstat` names). Fast-path counters live per CPU.
#[derive(Default)]
pub(crate) struct Events {
    pub(crate) pgalloc: AtomicU64,
    pub(crate) pgfree: AtomicU64,
    pub(crate) alloc_fail: AtomicU64,
    pub(crate) allocstall: AtomicU64,
    pub(crate) fallback: AtomicU64,
    pub(crate) claim_block: AtomicU64,
    pub(crate) steal: AtomicU64,
    pub(crate) polluting: AtomicU64,
    pub(crate) compact_stall: AtomicU64,
    pub(crate) compact_success: AtomicU64,
    pub(crate) compact_fail: AtomicU64,
    pub(crate) compact_migrated: AtomicU64,
    pub(crate) deferred_free: AtomicU64,
    pub(crate) trylock_fail: AtomicU64,
    pub(crate) bad_page: AtomicU64,
    pub(crate) highatomic_reserve: AtomicU64,
    /// Reclaim rounds without progress after which the allocation waited.
    pub(crate) reclaim_throttle: AtomicU64,
    /// Such rounds whose caller could not wait (atomic context).
    pub(crate) reclaim_throttle_skipped: AtomicU64,
}

/// The physical page allocator (one NUMA node).
pub struct PageAlloc<'a, P: Platform = HostPlatform> {
    pub(crate) meta: &'a [PageMeta],
    pub(crate) base_pfn: u64,
    pub(crate) zones: [Zone<P>; NR_ZONES],
    pub(crate) mem: &'a dyn PhysMem,
    pub(crate) hooks: &'a dyn AllocHooks,
    pub(crate) nr_cpus: usize,
    /// First zone of the default zonelist: Normal if populated, else DMA32.
    pub(crate) fast_zone: usize,
    pub(crate) group_by_mobility: bool,
    pub(crate) defrag_mode: AtomicBool,
    pub(crate) movable_ops: SpinLock<[Option<&'a dyn MigrateOps>; MAX_MOVABLE_OPS], P>,
    pub(crate) events: Events,
    /// Fault injection (Linux `fail_page_alloc`), off by default.
    pub fail: FailPageAlloc,
}

/// Where `__rmqueue` found the pages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    Own,
    Claimed,
    Stolen,
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    // ------------------------------------------------------------------ init

    /// Builds the allocator over `meta`, which describes frames
    /// `first_pfn .. first_pfn + meta.len()`, and frees every frame of `usable`
    /// (ranges of pfns; anything not listed stays `Reserved`). O(frames).
    pub fn new(
        meta: &'a [PageMeta],
        first_pfn: Pfn,
        usable: &[Range<Pfn>],
        mem: &'a dyn PhysMem,
        hooks: &'a dyn AllocHooks,
        config: AllocConfig,
    ) -> Result<Self, InitError> {
        if first_pfn.0 % (1 << MAX_ORDER) != 0 {
            return Err(InitError::MisalignedBase);
        }
        if meta.len() as u64 >= NONE as u64 {
            return Err(InitError::TooManyFrames);
        }
        if config.nr_cpus == 0 || config.nr_cpus > MAX_CPUS {
            return Err(InitError::BadCpuCount);
        }
        let end_pfn = first_pfn.0 + meta.len() as u64;
        for r in usable {
            if r.start.0 < first_pfn.0 || r.end.0 > end_pfn {
                return Err(InitError::RangeOutsideMetadata);
            }
        }
        let zone = |ztype: ZoneType, lo: u64, hi: u64| Zone {
            ztype,
            start_pfn: lo,
            end_pfn: hi.max(lo),
            managed_pages: 0,
            wmark: [0; 3],
            fast_mark: u64::MAX,
            area: SpinLock::new(FreeArea::new()),
            pcp: core::array::from_fn(|_| PcpSlot::new()),
            nr_free: AtomicU64::new(0),
            nr_free_highatomic: AtomicU64::new(0),
            deferred_head: AtomicU32::new(NONE),
            nr_deferred: AtomicU64::new(0),
        };
        let dma_end = end_pfn.min(DMA32_END_PFN).max(first_pfn.0);
        let mut this = PageAlloc {
            meta,
            base_pfn: first_pfn.0,
            zones: [zone(ZoneType::Dma32, first_pfn.0, dma_end), zone(ZoneType::Normal, dma_end, end_pfn)],
            mem,
            hooks,
            nr_cpus: config.nr_cpus,
            fast_zone: ZoneType::Dma32 as usize,
            group_by_mobility: config.group_by_mobility,
            defrag_mode: AtomicBool::new(config.defrag_mode),
            movable_ops: SpinLock::new([None; MAX_MOVABLE_OPS]),
            events: Events::default(),
            fail: FailPageAlloc::new(),
        };
        // memmap_init: every frame Reserved, every page block Movable (as Linux).
        for m in meta {
            m.reset();
        }
        for z in &this.zones {
            let mut a = z.area.lock();
            let mut pfn = z.start_pfn;
            while pfn < z.end_pfn {
                this.meta(pfn).set_block_migratetype(MigrateType::Movable);
                a.nr_blocks_by_mt[MigrateType::Movable.index()] += 1;
                pfn += PAGEBLOCK_NR_PAGES;
            }
        }
        // memblock_free_all: hand every usable frame to the buddy in maximal blocks.
        for r in usable {
            let mut pfn = r.start.0;
            while pfn < r.end.0 {
                let zi = this.zone_idx(pfn);
                let limit = r.end.0.min(this.zones[zi].end_pfn);
                let align = if pfn == 0 { MAX_ORDER } else { pfn.trailing_zeros() as usize };
                let fit = (63 - (limit - pfn).leading_zeros()) as usize;
                let order = align.min(fit).min(MAX_ORDER);
                for p in pfn..pfn + (1 << order) {
                    if this.meta(p).kind() != Kind::Reserved {
                        return Err(InitError::OverlappingRanges);
                    }
                    this.meta(p).set_kind(Kind::Tail, 0);
                }
                let z = &this.zones[zi];
                let mut a = z.area.lock();
                let mt = this.block_mt(pfn);
                this.__free_one_page(z, &mut a, pfn, order, mt);
                drop(a);
                this.zones[zi].managed_pages += 1 << order;
                pfn += 1 << order;
            }
        }
        if this.zones[ZoneType::Normal as usize].managed_pages != 0 {
            this.fast_zone = ZoneType::Normal as usize;
        }
        let total_managed: u64 = this.zones.iter().map(|z| z.managed_pages).sum();
        let min_free_kb = config.min_free_kbytes.unwrap_or_else(|| default_min_free_kbytes(total_managed));
        let min_free_pages = min_free_kb * 1024 / PAGE_SIZE;
        for z in &mut this.zones {
            if total_managed == 0 {
                break;
            }
            let min = min_free_pages * z.managed_pages / total_managed;
            let delta = (min / 4).max(z.managed_pages * 10 / 10_000);
            z.wmark = [min, min + delta, min + 2 * delta];
            z.fast_mark = z.wmark[Watermark::Low as usize] + (1 << 10);
            let batch = config.pcp_batch.unwrap_or_else(|| zone_batchsize(z.managed_pages)).max(1);
            let high = (batch * 6).max(4 * PAGEBLOCK_NR_PAGES as u32 / 8);
            for slot in &mut z.pcp {
                slot.lock.get_mut().set_batch_high(batch, high);
            }
        }
        Ok(this)
    }

    // ------------------------------------------------------------ helpers

    #[inline(always)]
    pub(crate) fn meta(&self, pfn: u64) -> &PageMeta {
        &self.meta[(pfn - self.base_pfn) as usize]
    }
    /// Metadata by index, for indices taken from the allocator's own lists (always
    /// in bounds: every list entry was made by `idx()` of a described frame).
    #[inline(always)]
    pub(crate) fn meta_idx(&self, idx: u32) -> &PageMeta {
        debug_assert!((idx as usize) < self.meta.len());
        // SAFETY: see above; list entries are only ever created from in-span pfns.
        unsafe { self.meta.get_unchecked(idx as usize) }
    }
    #[inline(always)]
    pub(crate) fn idx(&self, pfn: u64) -> u32 {
        (pfn - self.base_pfn) as u32
    }
    #[inline(always)]
    pub(crate) fn pfn_of(&self, idx: u32) -> u64 {
        self.base_pfn + idx as u64
    }
    #[inline(always)]
    pub(crate) fn zone_idx(&self, pfn: u64) -> usize {
        (pfn >= DMA32_END_PFN) as usize
    }
    #[inline(always)]
    pub(crate) fn block_mt(&self, pfn: u64) -> MigrateType {
        self.meta(pageblock_start_pfn(Pfn(pfn)).0).block_migratetype()
    }
    /// Hints the CPU to load the metadata of `pfn` (if described) into the cache:
    /// bulk paths issue these ahead of the accesses so the cache misses of
    /// randomly scattered `PageMeta`s overlap instead of queueing.
    #[inline(always)]
    pub(crate) fn prefetch_meta(&self, pfn: u64) {
        if let Some(_m) = self.meta.get(pfn.wrapping_sub(self.base_pfn) as usize) {
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            // SAFETY: a prefetch is only a hint (no architectural effect, never faults);
            // `prefetcht0` exists on every x86_64 CPU, so the `sse` target feature of
            // the intrinsic is always present even where the kernel disables SSE codegen.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    _m as *const PageMeta as *const i8,
                )
            };
        }
    }
    pub(crate) fn in_span(&self, pfn: u64) -> bool {
        pfn >= self.base_pfn && pfn - self.base_pfn < self.meta.len() as u64
    }

    /// The metadata of frame `pfn`, if this allocator describes it.
    pub fn page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.in_span(pfn.0).then(|| self.meta(pfn.0))
    }

    /// Frames `first_pfn..end` described by the metadata.
    pub fn pfn_span(&self) -> Range<Pfn> {
        Pfn(self.base_pfn)..Pfn(self.base_pfn + self.meta.len() as u64)
    }

    /// Frames managed by the allocator (all zones).
    pub fn managed_pages(&self) -> u64 {
        self.zones.iter().map(|z| z.managed_pages).sum()
    }

    /// Free pages above the min watermarks, summed over the zones: what ordinary
    /// (`GFP_KERNEL`, `GFP_USER`) allocations can still take before only the
    /// reserves below `min` remain (Linux `zone_page_state(NR_FREE_PAGES) -
    /// min_wmark_pages`). Pages on the per-CPU lists are not counted.
    pub fn free_above_min(&self) -> u64 {
        self.zones.iter().map(|z| z.nr_free.load(Relaxed).saturating_sub(z.wmark[Watermark::Min as usize])).sum()
    }

    /// Switches `vm.defrag_mode`.
    pub fn set_defrag_mode(&self, on: bool) {
        self.defrag_mode.store(on, Relaxed);
    }

    /// Whether `vm.defrag_mode` is on.
    pub fn defrag_mode(&self) -> bool {
        self.defrag_mode.load(Relaxed)
    }

    /// Registers the migration callbacks of a movable-page owner (Linux
    /// `movable_operations`). Pages marked with the returned id via
    /// [`PageMeta::set_movable`] can be moved by compaction.
    pub fn register_movable_ops(&self, ops: &'a dyn MigrateOps) -> Option<MovableOpsId> {
        let mut reg = self.movable_ops.lock();
        let slot = reg.iter().position(|s| s.is_none())?;
        reg[slot] = Some(ops);
        Some(MovableOpsId(slot as u8))
    }

    // ------------------------------------------------------- free lists

    #[inline]
    fn sync_nr_free(&self, z: &Zone<P>, a: &FreeArea) {
        let (usable, highatomic) = a.watermark_free();
        z.nr_free.store(usable, Relaxed);
        z.nr_free_highatomic.store(highatomic, Relaxed);
    }

    pub(crate) fn add_to_free_list(&self, z: &Zone<P>, a: &mut FreeArea, pfn: u64, order: usize, mt: MigrateType) {
        let idx = self.idx(pfn);
        let m = self.meta(pfn);
        let head = a.head[order][mt.index()];
        m.set_kind(Kind::Buddy, order);
        m.clear_refcount();
        m.set_prev(NONE);
        m.set_next(head);
        if head != NONE {
            self.meta[head as usize].set_prev(idx);
        }
        a.head[order][mt.index()] = idx;
        a.nr_free[order][mt.index()] += 1;
        a.nr_free_pages += 1 << order;
        a.nr_free_by_mt[mt.index()] += 1 << order;
        self.sync_nr_free(z, a);
    }

    /// Unlinks a free block; its head becomes a `Tail` until the caller re-marks it.
    pub(crate) fn del_from_free_list(&self, z: &Zone<P>, a: &mut FreeArea, pfn: u64, order: usize, mt: MigrateType) {
        let m = self.meta(pfn);
        debug_assert_eq!((m.kind(), m.order()), (Kind::Buddy, order));
        let (next, prev) = (m.next(), m.prev());
        if next != NONE {
            self.meta[next as usize].set_prev(prev);
        }
        if prev != NONE {
            self.meta[prev as usize].set_next(next);
        } else {
            a.head[order][mt.index()] = next;
        }
        m.set_kind(Kind::Tail, 0);
        a.nr_free[order][mt.index()] -= 1;
        a.nr_free_pages -= 1 << order;
        a.nr_free_by_mt[mt.index()] -= 1 << order;
        self.sync_nr_free(z, a);
    }

    /// Sets the type of the block(s) covering `[pfn, pfn + 2^order)` (Linux
    /// `set_pageblock_migratetype` / `change_pageblock_range`).
    pub(crate) fn set_pageblock_range(&self, a: &mut FreeArea, pfn: u64, order: usize, mt: MigrateType) {
        let start = pageblock_start_pfn(Pfn(pfn)).0;
        let nr_blocks = 1u64 << order.saturating_sub(PAGEBLOCK_ORDER);
        for b in 0..nr_blocks {
            let m = self.meta(start + b * PAGEBLOCK_NR_PAGES);
            let old = m.block_migratetype();
            a.nr_blocks_by_mt[old.index()] -= 1;
            a.nr_blocks_by_mt[mt.index()] += 1;
            m.set_block_migratetype(mt);
        }
    }

    /// Splits a block of `2^high` at `pfn` down to `2^low`, putting the upper halves
    /// on the `mt` lists (Linux `expand`).
    pub(crate) fn expand(&self, z: &Zone<P>, a: &mut FreeArea, pfn: u64, low: usize, mut high: usize, mt: MigrateType) {
        while high > low {
            high -= 1;
            self.add_to_free_list(z, a, pfn + (1 << high), high, mt);
        }
    }

    /// Frees a block into the buddy lists, merging with free buddies
    /// (Linux `__free_one_page`). `mt` is the type of the block at `pfn`.
    pub(crate) fn __free_one_page(&self, z: &Zone<P>, a: &mut FreeArea, mut pfn: u64, mut order: usize, mt: MigrateType) {
        while order < MAX_ORDER {
            let buddy = pfn ^ (1 << order);
            if !self.in_span(buddy) {
                break;
            }
            let bm = self.meta(buddy);
            if bm.kind() != Kind::Buddy || bm.order() != order {
                break;
            }
            let buddy_mt = if order >= PAGEBLOCK_ORDER { self.block_mt(buddy) } else { mt };
            if buddy_mt != mt && (!mt.is_mergeable() || !buddy_mt.is_mergeable()) {
                break;
            }
            self.del_from_free_list(z, a, buddy, order, buddy_mt);
            if buddy_mt != mt {
                self.set_pageblock_range(a, buddy, order, mt);
            }
            pfn &= !(1 << order);
            order += 1;
        }
        self.add_to_free_list(z, a, pfn, order, mt);
    }

    /// Counts free pages (in buddy lists) and pages allocated as movable in the page
    /// block of `pfn` (Linux `prep_move_freepages_block`). Returns `(free, movable)`.
    pub(crate) fn count_block(&self, pfn: u64) -> (u64, u64) {
        let (mut free, mut movable) = (0, 0);
        let start = pageblock_start_pfn(Pfn(pfn)).0;
        let end = (start + PAGEBLOCK_NR_PAGES).min(self.base_pfn + self.meta.len() as u64);
        let mut p = start;
        while p < end {
            let m = self.meta(p);
            let kind = m.kind();
            let n = if matches!(kind, Kind::Tail | Kind::Reserved) { 1 } else { 1u64 << m.order() };
            if kind == Kind::Buddy {
                free += n;
            } else if kind.is_owned() && m.alloc_migratetype() == MigrateType::Movable {
                movable += n;
            }
            p += n;
        }
        (free, movable)
    }

    /// Moves the buddy-free blocks of the page block at `pfn` from the `from` lists to
    /// the `to` lists and retypes the block (Linux `move_freepages_block`).
    pub(crate) fn move_freepages_block(&self, z: &Zone<P>, a: &mut FreeArea, pfn: u64, from: MigrateType, to: MigrateType) {
        let start = pageblock_start_pfn(Pfn(pfn)).0;
        let end = (start + PAGEBLOCK_NR_PAGES).min(self.base_pfn + self.meta.len() as u64);
        let mut p = start;
        while p < end {
            let m = self.meta(p);
            let kind = m.kind();
            let order = m.order();
            if kind == Kind::Buddy {
                self.del_from_free_list(z, a, p, order, from);
                self.add_to_free_list(z, a, p, order, to);
            }
            p += if matches!(kind, Kind::Tail | Kind::Reserved) { 1 } else { 1 << order };
        }
        self.set_pageblock_range(a, start, 0, to);
    }

    // ------------------------------------------------------------ __rmqueue

    pub(crate) fn __rmqueue_smallest(&self, z: &Zone<P>, a: &mut FreeArea, order: usize, mt: MigrateType) -> Option<u64> {
        let (pfn, cur) = self.take_smallest(z, a, order, mt)?;
        self.expand(z, a, pfn, order, cur, mt);
        Some(pfn)
    }

    /// Takes the smallest free block of type `mt` and at least `order` off its
    /// list; returns it and its order (the caller splits it with `expand`).
    pub(crate) fn take_smallest(&self, z: &Zone<P>, a: &mut FreeArea, order: usize, mt: MigrateType) -> Option<(u64, usize)> {
        let cur = (order..NR_PAGE_ORDERS).find(|&o| a.head[o][mt.index()] != NONE)?;
        let pfn = self.pfn_of(a.head[cur][mt.index()]);
        self.del_from_free_list(z, a, pfn, cur, mt);
        Some((pfn, cur))
    }

    /// Whether a fallback of a free block of `order` may claim its page block
    /// (Linux `should_try_claim_block`).
    fn should_try_claim_block(&self, order: usize, start_mt: MigrateType) -> bool {
        order >= PAGEBLOCK_ORDER / 2
            || start_mt != MigrateType::Movable
            || !self.group_by_mobility
    }

    /// First fallback type with a free block of exactly `order`
    /// (Linux `find_suitable_fallback`).
    fn find_suitable_fallback(&self, a: &FreeArea, order: usize, start_mt: MigrateType) -> Option<MigrateType> {
        fallbacks(start_mt).iter().copied().find(|mt| a.head[order][mt.index()] != NONE)
    }

    /// Takes over the page block of a fallback free block when it is mostly free or
    /// compatible, then allocates from it (Linux `try_to_claim_block`).
    fn try_to_claim_block(
        &self,
        z: &Zone<P>,
        a: &mut FreeArea,
        pfn: u64,
        cur_order: usize,
        order: usize,
        start_mt: MigrateType,
        block_mt: MigrateType,
    ) -> Option<u64> {
        if cur_order >= PAGEBLOCK_ORDER {
            self.del_from_free_list(z, a, pfn, cur_order, block_mt);
            self.set_pageblock_range(a, pfn, cur_order, start_mt);
            self.expand(z, a, pfn, order, cur_order, start_mt);
            self.events.claim_block.fetch_add(1 << (cur_order - PAGEBLOCK_ORDER), Relaxed);
            return Some(pfn);
        }
        let (free, movable) = self.count_block(pfn);
        let alike = if start_mt == MigrateType::Movable {
            movable
        } else if block_mt == MigrateType::Movable {
            // Unmovable/reclaimable in a movable block: what is neither free nor
            // movable must be of a non-movable kind, i.e. alike.
            PAGEBLOCK_NR_PAGES - free - movable
        } else {
            0
        };
        if free + alike >= PAGEBLOCK_NR_PAGES / 2 || !self.group_by_mobility {
            self.move_freepages_block(z, a, pfn, block_mt, start_mt);
            self.events.claim_block.fetch_add(1, Relaxed);
            return self.__rmqueue_smallest(z, a, order, start_mt);
        }
        None
    }

    fn __rmqueue_claim(&self, z: &Zone<P>, a: &mut FreeArea, order: usize, start_mt: MigrateType, flags: u32) -> Option<u64> {
        let min_order = if flags & ALLOC_NOFRAGMENT != 0 { order.max(PAGEBLOCK_ORDER) } else { order };
        for cur in (min_order..NR_PAGE_ORDERS).rev() {
            if !self.should_try_claim_block(cur, start_mt) {
                break;
            }
            let Some(fmt) = self.find_suitable_fallback(a, cur, start_mt) else { continue };
            let pfn = self.pfn_of(a.head[cur][fmt.index()]);
            if let Some(page) = self.try_to_claim_block(z, a, pfn, cur, order, start_mt, fmt) {
                return Some(page);
            }
        }
        None
    }

    /// Takes just the pages from a foreign block, leaving its type alone
    /// (Linux `__rmqueue_steal`): the polluting fallback.
    fn __rmqueue_steal(&self, z: &Zone<P>, a: &mut FreeArea, order: usize, start_mt: MigrateType) -> Option<u64> {
        for cur in order..NR_PAGE_ORDERS {
            let Some(fmt) = self.find_suitable_fallback(a, cur, start_mt) else { continue };
            let pfn = self.pfn_of(a.head[cur][fmt.index()]);
            self.del_from_free_list(z, a, pfn, cur, fmt);
            self.expand(z, a, pfn, order, cur, fmt);
            return Some(pfn);
        }
        None
    }

    /// Takes a block of `2^order` of type `mt` off the free lists, falling back to
    /// other types as Linux does (Linux `__rmqueue`). Zone lock held.
    pub(crate) fn __rmqueue(&self, z: &Zone<P>, a: &mut FreeArea, order: usize, mt: MigrateType, flags: u32) -> Option<u64> {
        let (pfn, how) = if let Some(p) = self.__rmqueue_smallest(z, a, order, mt) {
            (p, Placement::Own)
        } else if let Some(p) = self.__rmqueue_claim(z, a, order, mt, flags) {
            (p, Placement::Claimed)
        } else if flags & ALLOC_NOFRAGMENT == 0 {
            (self.__rmqueue_steal(z, a, order, mt)?, Placement::Stolen)
        } else {
            return None;
        };
        if how != Placement::Own {
            self.events.fallback.fetch_add(1, Relaxed);
        }
        if how == Placement::Stolen {
            self.events.steal.fetch_add(1, Relaxed);
        }
        Some(pfn)
    }

    /// Zone lock, draining the deferred-free list once held.
    pub(crate) fn lock_zone<'s>(&'s self, z: &'s Zone<P>) -> SpinGuard<'s, FreeArea, P> {
        let mut a = z.area.lock();
        self.drain_deferred(z, &mut a);
        a
    }

    /// Zone lock, or only one try at it when `trylock` (NMI-safe paths).
    pub(crate) fn lock_zone_maybe<'s>(&'s self, z: &'s Zone<P>, trylock: bool) -> Option<SpinGuard<'s, FreeArea, P>> {
        if !trylock {
            return Some(self.lock_zone(z));
        }
        let Some(mut a) = z.area.try_lock() else {
            self.events.trylock_fail.fetch_add(1, Relaxed);
            return None;
        };
        self.drain_deferred(z, &mut a);
        Some(a)
    }

    /// Frees everything `free_pages_nolock` deferred. Single consumer (zone lock
    /// held): swapping the whole stack out means no node is ever popped alone, so
    /// the Treiber stack has no ABA problem.
    fn drain_deferred(&self, z: &Zone<P>, a: &mut FreeArea) {
        if z.deferred_head.load(Relaxed) == NONE {
            return;
        }
        let mut idx = z.deferred_head.swap(NONE, Acquire);
        while idx != NONE {
            let m = &self.meta[idx as usize];
            let next = m.next();
            let pfn = self.pfn_of(idx);
            let order = m.order();
            m.set_kind(Kind::Tail, 0);
            z.nr_deferred.fetch_sub(1 << order, Relaxed);
            self.__free_one_page(z, a, pfn, order, self.block_mt(pfn));
            idx = next;
        }
    }

    /// Pushes a block on the deferred-free stack (lock-free, any context).
    fn defer_free(&self, z: &Zone<P>, pfn: u64, order: usize) {
        let idx = self.idx(pfn);
        let m = self.meta(pfn);
        m.set_kind(Kind::Deferred, order);
        z.nr_deferred.fetch_add(1 << order, Relaxed);
        self.events.deferred_free.fetch_add(1, Relaxed);
        let mut head = z.deferred_head.load(Relaxed);
        loop {
            m.set_next(head);
            match z.deferred_head.compare_exchange_weak(head, idx, Release, Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    // ---------------------------------------------------------- watermarks

    /// Linux `__zone_watermark_ok` on a free-page snapshot.
    /// `free_highatomic`: free pages in high-atomic reserve blocks, not usable
    /// without `ALLOC_RESERVES` (Linux `__zone_watermark_unusable_free`).
    pub(crate) fn zone_watermark_ok(&self, order: usize, mark: u64, flags: u32, free_pages: u64, free_highatomic: u64) -> bool {
        let mut min = mark;
        let mut free = free_pages as i64 - ((1i64 << order) - 1);
        if flags & ALLOC_RESERVES != 0 {
            // Linux 6.3+: `__GFP_HIGH` reaches half of the min reserve, and a
            // non-blocking `__GFP_HIGH` (GFP_ATOMIC) a quarter more; a bare
            // non-blocking request (GFP_NOWAIT) gets no cut at all — it only may
            // count the high-atomic reserve as free.
            if flags & ALLOC_MIN_RESERVE != 0 {
                min -= min / 2;
                if flags & ALLOC_NON_BLOCK != 0 {
                    min -= min / 4;
                }
            }
        } else {
            free -= free_highatomic as i64;
        }
        free > min as i64
    }

    #[inline]
    pub(crate) fn zone_watermark_fast(&self, z: &Zone<P>, order: usize, flags: u32) -> bool {
        if flags & ALLOC_NO_WATERMARKS != 0 {
            return true;
        }
        let mark = z.wmark[(flags & ALLOC_WMARK_MASK) as usize];
        let free = z.nr_free.load(Relaxed);
        let highatomic = z.nr_free_highatomic.load(Relaxed);
        // Fast accept, as Linux does for order-0 well above the mark (the reserve
        // counted as unusable, as for a caller without reserves).
        if order == 0 && free.saturating_sub(highatomic) > mark + (1 << 10) {
            return true;
        }
        self.zone_watermark_ok(order, mark, flags, free, highatomic)
    }
}

/// Linux `calculate_min_free_kbytes`: sqrt(16 * lowmem_kb), clamped to [128, 262144].
fn default_min_free_kbytes(managed_pages: u64) -> u64 {
    let kb = managed_pages * (PAGE_SIZE / 1024);
    isqrt(kb * 16).clamp(128, 262_144)
}

fn isqrt(n: u64) -> u64 {
    // Newton's method on integers (no floating point in the kernel).
    if n < 2 {
        return n;
    }
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

/// Linux `zone_batchsize`: about a quarter of 1/1024 of the zone, at most 256 KiB'
/// worth, rounded to 2^n - 1.
fn zone_batchsize(managed_pages: u64) -> u32 {
    let mut batch = (managed_pages / 1024).min(256 * 1024 / PAGE_SIZE * 4) / 4;
    batch = batch.max(1);
    let b = batch + batch / 2;
    ((1u64 << (63 - b.leading_zeros())) - 1).max(1) as u32
}

/// Result of a per-CPU list attempt in try-lock mode.
pub(crate) struct Busy;

impl<'a, P: Platform> PageAlloc<'a, P> {
    // --------------------------------------------------------- allocation

    /// The free-list type for a request of mobility `mt`.
    #[inline(always)]
    pub(crate) fn list_mt(&self, mt: MigrateType) -> MigrateType {
        if self.group_by_mobility { mt } else { MigrateType::Movable }
    }

    /// Linux `rmqueue_buddy`: straight from the buddy lists under the zone lock.
    fn rmqueue_buddy(&self, z: &Zone<P>, order: usize, mt: MigrateType, flags: u32) -> Option<u64> {
        let mut a = self.lock_zone_maybe(z, flags & ALLOC_TRYLOCK != 0)?;
        let mut page = None;
        if flags & ALLOC_HIGHATOMIC != 0 && order > 0 {
            page = self.__rmqueue_smallest(z, &mut a, order, MigrateType::HighAtomic);
        }
        if page.is_none() {
            page = self.__rmqueue(z, &mut a, order, mt, flags);
        }
        if page.is_none() && flags & ALLOC_NON_BLOCK != 0 {
            page = self.__rmqueue_smallest(z, &mut a, order, MigrateType::HighAtomic);
        }
        if page.is_some() {
            // (Per-CPU list allocations count in their slot.)
            self.events.pgalloc.fetch_add(1, Relaxed);
        }
        page
    }

    /// Linux `rmqueue`: per-CPU list for small orders, buddy otherwise.
    #[inline]
    fn rmqueue(&self, z: &Zone<P>, order: usize, mt: MigrateType, flags: u32) -> Option<u64> {
        if order <= PCP_MAX_ORDER {
            match self.rmqueue_pcplist(z, order, mt, flags) {
                Ok(page) => return page,
                Err(Busy) => {} // try-lock mode and the per-CPU lock is taken
            }
        }
        self.rmqueue_buddy(z, order, mt, flags)
    }

    /// Counts an allocation of mobility `real_mt` placed in a block of type
    /// `block_mt` (raw) as polluting unless the types agree or the block is the
    /// high-order atomic reserve (which serves every type).
    #[inline(always)]
    fn count_polluting(&self, block_mt: u32, real_mt: MigrateType) {
        if block_mt != real_mt as u32 && block_mt != MigrateType::HighAtomic as u32 {
            self.events.polluting.fetch_add(1, Relaxed);
        }
    }

    /// Linux `prep_new_page`: state, pollution accounting, zeroing.
    #[inline]
    fn prep_new_page(&self, pfn: u64, order: usize, gfp: Gfp, real_mt: MigrateType) {
        self.meta(pfn).prep_allocated(order, real_mt);
        self.count_polluting(self.block_mt(pfn) as u32, real_mt);
        if gfp.contains(Gfp::ZERO) {
            // SAFETY: the block was just taken off the free lists; nobody else owns it.
            unsafe { self.mem.zero_frames(Pfn(pfn), 1 << order) };
        }
    }

    /// Linux `get_page_from_freelist`: walk the zone list, check watermarks, take pages.
    fn get_page_from_freelist(&self, gfp: Gfp, order: usize, flags: u32, real_mt: MigrateType) -> Option<u64> {
        let zonelist: &[usize] = if gfp.contains(Gfp::DMA32) { &[0] } else { &[1, 0] };
        let mt = self.list_mt(real_mt);
        for &zi in zonelist {
            let z = &self.zones[zi];
            if z.managed_pages == 0 || !self.zone_watermark_fast(z, order, flags) {
                continue;
            }
            if let Some(pfn) = self.rmqueue(z, order, mt, flags) {
                self.prep_new_page(pfn, order, gfp, real_mt);
                if flags & ALLOC_HIGHATOMIC != 0 && order > 0 && flags & ALLOC_TRYLOCK == 0 {
                    self.reserve_highatomic_pageblock(z, pfn);
                }
                return Some(pfn);
            }
        }
        None
    }

    /// Linux `gfp_to_alloc_flags` (slow path).
    fn gfp_to_alloc_flags(&self, gfp: Gfp, order: usize) -> u32 {
        let mut flags = Watermark::Min as u32;
        if gfp.contains(Gfp::HIGH) {
            flags |= ALLOC_MIN_RESERVE;
        }
        if !gfpflags_allow_blocking(gfp) && !gfp.contains(Gfp::NOMEMALLOC) {
            flags |= ALLOC_NON_BLOCK;
            if order > 0 {
                flags |= ALLOC_HIGHATOMIC;
            }
        }
        flags
    }

    /// Allocates `2^order` contiguous frames (Linux `alloc_pages`).
    #[inline]
    pub fn alloc_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        if order > MAX_ORDER {
            return Err(self.alloc_failed(gfp, order, AllocError::InvalidOrder));
        }
        if self.fail.should_fail_alloc_page(gfp, order) {
            return Err(self.alloc_failed(gfp, order, AllocError::Injected));
        }
        let pfn = match self.alloc_pages_pcp_fast(gfp, order) {
            Some(pfn) => pfn,
            None => self.alloc_pages_nofast(gfp, order)?,
        };
        Ok(Pages::new(Pfn(pfn), order))
    }

    /// The common case of `get_page_from_freelist`, inlined into callers: a small
    /// order, the first eligible zone comfortably above its low watermark, and a
    /// block on this CPU's list. Accepts only what the full path would accept
    /// (`free > low + 1024` implies `__zone_watermark_ok` for orders <= 3, and a
    /// non-empty list never reaches `__rmqueue`, so defrag mode does not matter);
    /// `None` sends the caller down the full path, which re-does every check.
    #[inline(always)]
    fn alloc_pages_pcp_fast(&self, gfp: Gfp, order: usize) -> Option<u64> {
        if order > PCP_MAX_ORDER {
            return None;
        }
        let zi = if gfp.contains(Gfp::DMA32) { ZoneType::Dma32 as usize } else { self.fast_zone };
        let z = &self.zones[zi];
        if z.nr_free.load(Relaxed).saturating_sub(z.nr_free_highatomic.load(Relaxed)) <= z.fast_mark {
            return None;
        }
        let real_mt = gfp_migratetype(gfp);
        let list_mt = self.list_mt(real_mt);
        let pfn = self.pcp_pop(z, order, list_mt)?;
        if list_mt == real_mt {
            // The list's type is not always the block's: `rmqueue_bulk` puts pages
            // that `__rmqueue` stole from a foreign block on the requester's list.
            // So the pollution check stays (one read of the block's type); only the
            // bounds checks of `prep_new_page` are skipped (`pfn` came off a list).
            let idx = self.idx(pfn);
            self.meta_idx(idx).prep_allocated(order, real_mt);
            let block = idx & !(crate::pageblock::PAGEBLOCK_NR_PAGES as u32 - 1);
            self.count_polluting(self.meta_idx(block).block_migratetype_raw(), real_mt);
            if gfp.contains(Gfp::ZERO) {
                // SAFETY: the block was just taken off the per-CPU list; nobody else owns it.
                unsafe { self.mem.zero_frames(Pfn(pfn), 1 << order) };
            }
        } else {
            self.prep_new_page(pfn, order, gfp, real_mt);
        }
        Some(pfn)
    }

    /// `alloc_pages` after the per-CPU fast path missed.
    #[inline(never)]
    fn alloc_pages_nofast(&self, gfp: Gfp, order: usize) -> Result<u64, AllocError> {
        let real_mt = gfp_migratetype(gfp);
        let mut flags = Watermark::Low as u32;
        if self.defrag_mode.load(Relaxed) {
            flags |= ALLOC_NOFRAGMENT;
        }
        match self.get_page_from_freelist(gfp, order, flags, real_mt) {
            Some(pfn) => Ok(pfn),
            None => self.__alloc_pages_slowpath(gfp, order, real_mt),
        }
    }

    /// Linux `__alloc_pages_slowpath`, without kswapd: min watermark, reserves,
    /// direct compaction, then the reclaim/retry loop:
    ///
    /// * no `__GFP_DIRECT_RECLAIM` (`GFP_NOWAIT`, `GFP_ATOMIC`): never reclaims or
    ///   waits; after the reserves it may use (ATOMIC: below `min`) it fails;
    /// * reclaim allowed (`GFP_KERNEL`, `GFP_NOFS`, `GFP_NOIO`, ...): each round calls
    ///   `AllocHooks::direct_reclaim(gfp, order)`; a round that freed nothing then
    ///   waits (`AllocHooks::reclaim_throttle`: the kernel sleeps a tick, so other
    ///   tasks and interrupt handlers can free memory); then it retries, drains the
    ///   per-CPU lists, retries; it goes on while reclaim makes progress, at most
    ///   [`MAX_RECLAIM_RETRIES`] rounds (Linux `should_reclaim_retry`);
    /// * `__GFP_NORETRY`: one reclaim round, without the wait, then fail;
    /// * `__GFP_NOFAIL` (with reclaim): never fails — loops reclaim (+ wait) + drain +
    ///   retry (each round also with half of the min reserve, `ALLOC_MIN_RESERVE`,
    ///   never without watermarks) until it succeeds, calling `AllocHooks::nofail_stall`
    ///   every [`NOFAIL_STALL_INTERVAL`] retries. Without reclaim, NOFAIL is not
    ///   supported (Linux warns and fails): it fails like its flags without NOFAIL;
    /// * `__GFP_MEMALLOC` (without `__GFP_NOMEMALLOC`): one try ignoring the
    ///   watermarks before reclaim (Linux `ALLOC_NO_WATERMARKS`).
    ///
    /// The fragmenting fallbacks that defrag mode holds back, and the release of the
    /// high-atomic reserve, are tried before a reclaiming caller gives up.
    fn __alloc_pages_slowpath(&self, gfp: Gfp, order: usize, real_mt: MigrateType) -> Result<u64, AllocError> {
        self.events.allocstall.fetch_add(1, Relaxed);
        let defrag = self.defrag_mode.load(Relaxed);
        let mut flags = self.gfp_to_alloc_flags(gfp, order);
        if defrag {
            flags |= ALLOC_NOFRAGMENT;
        }
        let try_get = |flags: u32| self.get_page_from_freelist(gfp, order, flags, real_mt);
        if let Some(p) = try_get(flags) {
            return Ok(p);
        }
        // Last resorts before failing: fragmenting fallbacks (defrag mode), then the
        // high-atomic reserve.
        let last_resort = |flags: &mut u32| {
            if *flags & ALLOC_NOFRAGMENT != 0 {
                *flags &= !ALLOC_NOFRAGMENT;
                if let Some(p) = try_get(*flags) {
                    return Some(p);
                }
            }
            if self.unreserve_highatomic_pageblock(real_mt) {
                return try_get(*flags);
            }
            None
        };
        // Linux `__gfp_pfmemalloc_flags`: `__GFP_MEMALLOC` (unless `__GFP_NOMEMALLOC`)
        // may use every reserve, watermarks ignored.
        if gfp.contains(Gfp::MEMALLOC) && !gfp.contains(Gfp::NOMEMALLOC) {
            if let Some(p) = try_get(flags | ALLOC_NO_WATERMARKS) {
                return Ok(p);
            }
        }
        if !gfpflags_allow_blocking(gfp) {
            // Also with `__GFP_NOFAIL`: Linux does not support it without reclaim
            // (it warns and fails).
            if let Some(p) = last_resort(&mut flags) {
                return Ok(p);
            }
            return Err(self.alloc_failed(gfp, order, AllocError::NoMemory));
        }
        // Direct compaction: for costly orders (as Linux), and in defrag mode before
        // any fragmenting fallback.
        if order > PCP_MAX_ORDER || defrag {
            for _ in 0..2 {
                if !self.compact_for_allocation(gfp) {
                    break;
                }
                if let Some(p) = try_get(flags) {
                    return Ok(p);
                }
            }
        }
        let nofail = gfp.contains(Gfp::NOFAIL);
        let noretry = gfp.contains(Gfp::NORETRY);
        let mut rounds = 0u32;
        let mut retries = 0u64;
        loop {
            let progress = self.hooks.direct_reclaim(gfp, order);
            let waited = progress == 0 && !noretry && self.reclaim_throttle(gfp);
            if let Some(p) = try_get(flags) {
                return Ok(p);
            }
            self.drain_all_pages();
            if let Some(p) = try_get(flags) {
                return Ok(p);
            }
            rounds += 1;
            if nofail {
                if let Some(p) = last_resort(&mut flags) {
                    return Ok(p);
                }
                // Linux: "give some access to memory reserves normally used for
                // high priority non-blocking allocations but do not use
                // ALLOC_NO_WATERMARKS" — half of the min reserve, then keep reclaiming.
                if let Some(p) = try_get(flags | ALLOC_MIN_RESERVE) {
                    return Ok(p);
                }
                retries += 1;
                if retries % NOFAIL_STALL_INTERVAL == 0 {
                    self.hooks.nofail_stall(gfp, order, retries);
                }
                if !waited {
                    core::hint::spin_loop();
                }
                continue;
            }
            if noretry || progress == 0 || rounds >= MAX_RECLAIM_RETRIES {
                break;
            }
        }
        if let Some(p) = last_resort(&mut flags) {
            return Ok(p);
        }
        Err(self.alloc_failed(gfp, order, AllocError::NoMemory))
    }

    /// Asks the kernel to wait after a reclaim round without progress; counts
    /// whether it could. Returns whether it waited.
    #[cold]
    fn reclaim_throttle(&self, gfp: Gfp) -> bool {
        let waited = self.hooks.reclaim_throttle(gfp);
        let counter = if waited { &self.events.reclaim_throttle } else { &self.events.reclaim_throttle_skipped };
        counter.fetch_add(1, Relaxed);
        waited
    }

    #[cold]
    fn alloc_failed(&self, gfp: Gfp, order: usize, err: AllocError) -> AllocError {
        self.events.alloc_fail.fetch_add(1, Relaxed);
        if !gfp.contains(Gfp::NOWARN) {
            self.hooks.warn_alloc(gfp, order, err);
        }
        err
    }

    /// Any-context allocation (Linux `try_alloc_pages`): only try-locks and atomics.
    /// Returns zeroed unmovable pages, or `None` at once when a lock is taken, memory
    /// is low, `order > PCP_MAX_ORDER`, or `nid` is not this node (0 / `NUMA_NO_NODE`).
    pub fn try_alloc_pages(&self, nid: i32, order: usize) -> Option<Pages> {
        if (nid != 0 && nid != NUMA_NO_NODE) || order > PCP_MAX_ORDER {
            return None;
        }
        let gfp = Gfp::NOWARN | Gfp::ZERO | Gfp::NOMEMALLOC;
        if self.fail.should_fail_alloc_page(gfp, order) {
            self.events.alloc_fail.fetch_add(1, Relaxed);
            return None;
        }
        let flags = ALLOC_TRYLOCK | Watermark::Low as u32;
        let pfn = self.get_page_from_freelist(gfp, order, flags, MigrateType::Unmovable)?;
        Some(Pages::new(Pfn(pfn), order))
    }

    // --------------------------------------------------------------- free

    /// Checks the head of a block being freed (Linux `free_page_is_bad`); on a bad
    /// page reports it and returns `None` (the block is leaked, never reused).
    /// With `claim` (`free_pages_nolock`), the head is taken over with a
    /// compare-and-swap, so two racing `free_pages_nolock` calls of the same block (a
    /// misused `from_raw`) cannot both succeed. The locked paths (`free_pages`, the
    /// bulk free) do not claim, to keep the compare-and-swap off the fast path: a
    /// `free_pages` interrupted between this check and its list insertion by an NMI
    /// that frees the same block would link it twice. Only a duplicated handle can do
    /// that (`Pages` is not `Clone`).
    #[inline(always)]
    pub(crate) fn free_pages_prepare(&self, pages: Pages, claim: bool) -> Option<(u64, usize)> {
        let (pfn, order) = (pages.pfn.0, pages.order());
        core::mem::forget(pages);
        let i = pfn.wrapping_sub(self.base_pfn);
        let len = self.meta.len() as u64;
        if i < len && (1u64 << order) <= len - i {
            // SAFETY: `i < len` just checked.
            let m = unsafe { self.meta.get_unchecked(i as usize) };
            if m.free_ok(order) && (!claim || m.take_owned(Kind::Tail).is_some()) {
                return Some((pfn, order));
            }
        }
        self.free_page_is_bad(pfn, order);
        None
    }

    /// Reports a refused free (Linux `bad_page`); the block is leaked.
    #[cold]
    #[inline(never)]
    fn free_page_is_bad(&self, pfn: u64, order: usize) {
        let reason = if !self.in_span(pfn) || !self.in_span(pfn + (1 << order) - 1) {
            "pfn outside this allocator"
        } else {
            // `free_ok` passed but the claiming CAS lost: somebody freed it meanwhile.
            self.meta(pfn).free_bad_reason(order).unwrap_or("freed concurrently (double free)")
        };
        self.events.bad_page.fetch_add(1, Relaxed);
        self.hooks.bad_page(Pfn(pfn), reason);
    }

    /// Returns a block to the allocator (Linux `__free_pages`).
    #[inline]
    pub fn free_pages(&self, pages: Pages) {
        let Some((pfn, order)) = self.free_pages_prepare(pages, false) else { return };
        let z = &self.zones[self.zone_idx(pfn)];
        if order <= PCP_MAX_ORDER && self.free_unref_page(z, pfn, order, false) {
            return;
        }
        self.free_pages_buddy(z, pfn, order);
    }

    /// `free_pages` of a block that does not go to a per-CPU list.
    #[inline(never)]
    pub(crate) fn free_pages_buddy(&self, z: &Zone<P>, pfn: u64, order: usize) {
        self.meta(pfn).set_kind(Kind::Tail, 0);
        let mut a = self.lock_zone(z);
        self.__free_one_page(z, &mut a, pfn, order, self.block_mt(pfn));
        self.events.pgfree.fetch_add(1, Relaxed);
    }

    /// Any-context free (Linux `free_pages_nolock`): per-CPU list or buddy if their
    /// lock is free, otherwise the lock-free deferred list, drained by the next
    /// operation that takes the zone lock.
    pub fn free_pages_nolock(&self, pages: Pages) {
        let Some((pfn, order)) = self.free_pages_prepare(pages, true) else { return };
        let z = &self.zones[self.zone_idx(pfn)];
        if order <= PCP_MAX_ORDER && self.free_unref_page(z, pfn, order, true) {
            return;
        }
        if let Some(mut a) = self.lock_zone_maybe(z, true) {
            self.meta(pfn).set_kind(Kind::Tail, 0);
            self.__free_one_page(z, &mut a, pfn, order, self.block_mt(pfn));
            self.events.pgfree.fetch_add(1, Relaxed);
            return;
        }
        self.events.pgfree.fetch_add(1, Relaxed);
        self.defer_free(z, pfn, order);
    }

    /// Frees what is waiting on the deferred lists now (normally done by the next
    /// locked operation).
    pub fn drain_deferred_frees(&self) {
        for z in &self.zones {
            drop(self.lock_zone(z));
        }
    }

    // -------------------------------------------------- high-atomic reserve

    /// Linux `reserve_highatomic_pageblock`: keep the block of a successful high-order
    /// atomic allocation for later ones (up to ~1% of the zone).
    fn reserve_highatomic_pageblock(&self, z: &Zone<P>, pfn: u64) {
        let max = z.managed_pages / 100 + PAGEBLOCK_NR_PAGES;
        let Some(mut a) = self.lock_zone_maybe(z, true) else { return };
        let mt = self.block_mt(pfn);
        if a.nr_reserved_highatomic >= max || !mt.is_mergeable() {
            return;
        }
        self.move_freepages_block(z, &mut a, pfn, mt, MigrateType::HighAtomic);
        a.nr_reserved_highatomic += PAGEBLOCK_NR_PAGES;
        self.events.highatomic_reserve.fetch_add(1, Relaxed);
    }

    /// Linux `unreserve_highatomic_pageblock`: give one reserved block with free pages
    /// back to `mt` under pressure. Returns whether one was released.
    fn unreserve_highatomic_pageblock(&self, mt: MigrateType) -> bool {
        for z in &self.zones {
            let mut a = self.lock_zone(z);
            if a.nr_reserved_highatomic == 0 {
                continue;
            }
            for order in 0..NR_PAGE_ORDERS {
                let head = a.head[order][MigrateType::HighAtomic.index()];
                if head != NONE {
                    let pfn = self.pfn_of(head);
                    let to = if mt.is_mergeable() { mt } else { MigrateType::Movable };
                    self.move_freepages_block(z, &mut a, pfn, MigrateType::HighAtomic, to);
                    a.nr_reserved_highatomic -= PAGEBLOCK_NR_PAGES.min(a.nr_reserved_highatomic);
                    return true;
                }
            }
        }
        false
    }
}


#[cfg(test)]
#[path = "page_alloc_tests.rs"]
mod tests;
