//! GFP ("get free pages") flags: how an allocation may behave.
//!
//! Linux counterpart: `include/linux/gfp_types.h` and `gfp.h`. The bit values follow
//! Linux' order; the composite masks (`GFP_KERNEL`, `GFP_ATOMIC`, ...) are defined
//! exactly as in Linux so that code can be read side by side. Scoped `NOFS`/`NOIO`
//! (`memalloc_nofs_save`, `crate::sched_mm`) narrow these flags per task in
//! `current_gfp_context`; the allocator consults `__GFP_DIRECT_RECLAIM`, `__GFP_IO` and
//! `__GFP_FS` before calling its reclaim hook.

#![allow(non_upper_case_globals)]

use crate::pageblock::MigrateType;

bitflags::bitflags! {
    /// A set of GFP flags (`gfp_t`).
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
    pub struct Gfp: u32 {
        /// Allocate from the DMA32 zone (below 4 GiB) only.
        const DMA32 = 1 << 2;
        /// Highmem is meaningless on x86_64; kept so masks read like Linux.
        const HIGHMEM = 1 << 1;
        /// The pages can be migrated (page-block grouping by mobility).
        const MOVABLE = 1 << 3;
        /// The pages can be reclaimed by a shrinker (slab caches, page tables of caches).
        const RECLAIMABLE = 1 << 4;
        /// High priority: may dip below the `min` watermark (`GFP_ATOMIC`).
        const HIGH = 1 << 5;
        /// May start physical I/O to reclaim.
        const IO = 1 << 6;
        /// May call into file systems to reclaim.
        const FS = 1 << 7;
        /// Return zeroed pages.
        const ZERO = 1 << 8;
        /// May sleep and reclaim directly.
        const DIRECT_RECLAIM = 1 << 10;
        /// May wake kswapd.
        const KSWAPD_RECLAIM = 1 << 11;
        /// Do not report allocation failure.
        const NOWARN = 1 << 13;
        /// Try hard but may fail.
        const RETRY_MAYFAIL = 1 << 14;
        /// Must not fail: with direct reclaim, retry forever (see `alloc_pages`).
        const NOFAIL = 1 << 15;
        /// Give up early, do not retry reclaim/compaction.
        const NORETRY = 1 << 16;
        /// May use every memory reserve, watermarks ignored (Linux: for allocations
        /// that free memory, e.g. swap over network; here also the tests that must
        /// take every frame).
        const MEMALLOC = 1 << 17;
        /// Compound page (a single `Pages` of `order` > 0 always is one here).
        const COMP = 1 << 18;
        /// Do not use emergency reserves.
        const NOMEMALLOC = 1 << 19;
        /// Enforce the cpuset (user allocations).
        const HARDWALL = 1 << 20;
    }
}

pub const __GFP_DMA32: Gfp = Gfp::DMA32;
pub const __GFP_HIGHMEM: Gfp = Gfp::HIGHMEM;
pub const __GFP_MOVABLE: Gfp = Gfp::MOVABLE;
pub const __GFP_RECLAIMABLE: Gfp = Gfp::RECLAIMABLE;
pub const __GFP_HIGH: Gfp = Gfp::HIGH;
pub const __GFP_IO: Gfp = Gfp::IO;
pub const __GFP_FS: Gfp = Gfp::FS;
pub const __GFP_ZERO: Gfp = Gfp::ZERO;
pub const __GFP_DIRECT_RECLAIM: Gfp = Gfp::DIRECT_RECLAIM;
pub const __GFP_KSWAPD_RECLAIM: Gfp = Gfp::KSWAPD_RECLAIM;
pub const __GFP_RECLAIM: Gfp = Gfp::DIRECT_RECLAIM.union(Gfp::KSWAPD_RECLAIM);
pub const __GFP_NOWARN: Gfp = Gfp::NOWARN;
pub const __GFP_RETRY_MAYFAIL: Gfp = Gfp::RETRY_MAYFAIL;
pub const __GFP_NOFAIL: Gfp = Gfp::NOFAIL;
pub const __GFP_NORETRY: Gfp = Gfp::NORETRY;
pub const __GFP_MEMALLOC: Gfp = Gfp::MEMALLOC;
pub const __GFP_COMP: Gfp = Gfp::COMP;
pub const __GFP_NOMEMALLOC: Gfp = Gfp::NOMEMALLOC;
pub const __GFP_HARDWALL: Gfp = Gfp::HARDWALL;

/// Atomic context: cannot sleep, may use the reserve below `min`.
pub const GFP_ATOMIC: Gfp = __GFP_HIGH.union(__GFP_KSWAPD_RECLAIM);
/// Ordinary kernel allocation: may sleep, reclaim, do I/O and call file systems.
pub const GFP_KERNEL: Gfp = __GFP_RECLAIM.union(__GFP_IO).union(__GFP_FS);
/// Cannot sleep, no reserves.
pub const GFP_NOWAIT: Gfp = __GFP_KSWAPD_RECLAIM;
/// May reclaim but start no I/O.
pub const GFP_NOIO: Gfp = __GFP_RECLAIM;
/// May reclaim and do I/O but not call file systems.
pub const GFP_NOFS: Gfp = __GFP_RECLAIM.union(__GFP_IO);
/// Kernel memory that user space accesses directly.
pub const GFP_USER: Gfp = __GFP_RECLAIM.union(__GFP_IO).union(__GFP_FS).union(__GFP_HARDWALL);
/// Pages below 4 GiB for 32-bit DMA.
pub const GFP_DMA32: Gfp = __GFP_DMA32;
/// User pages that may be anywhere.
pub const GFP_HIGHUSER: Gfp = GFP_USER.union(__GFP_HIGHMEM);
/// User pages that the kernel can migrate (anonymous memory, page cache).
pub const GFP_HIGHUSER_MOVABLE: Gfp = GFP_HIGHUSER.union(__GFP_MOVABLE);
/// Transparent huge pages, light: no direct reclaim.
pub const GFP_TRANSHUGE_LIGHT: Gfp = GFP_HIGHUSER_MOVABLE
    .union(__GFP_COMP)
    .union(__GFP_NOMEMALLOC)
    .union(__GFP_NOWARN)
    .difference(__GFP_RECLAIM);
/// Transparent huge pages with direct reclaim/compaction.
pub const GFP_TRANSHUGE: Gfp = GFP_TRANSHUGE_LIGHT.union(__GFP_DIRECT_RECLAIM);

/// The migrate type an allocation with `gfp` asks for (Linux `gfp_migratetype()`).
#[inline]
pub const fn gfp_migratetype(gfp: Gfp) -> MigrateType {
    if gfp.contains(Gfp::MOVABLE) {
        MigrateType::Movable
    } else if gfp.contains(Gfp::RECLAIMABLE) {
        MigrateType::Reclaimable
    } else {
        MigrateType::Unmovable
    }
}

/// Whether the caller may sleep and reclaim (Linux `gfpflags_allow_blocking()`).
#[inline]
pub const fn gfpflags_allow_blocking(gfp: Gfp) -> bool {
    gfp.contains(Gfp::DIRECT_RECLAIM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_linux_composition() {
        assert!(GFP_KERNEL.contains(__GFP_DIRECT_RECLAIM | __GFP_IO | __GFP_FS));
        assert!(!GFP_NOFS.contains(__GFP_FS) && GFP_NOFS.contains(__GFP_IO));
        assert!(!GFP_NOIO.contains(__GFP_IO));
        assert!(GFP_ATOMIC.contains(__GFP_HIGH) && !gfpflags_allow_blocking(GFP_ATOMIC));
        assert!(!gfpflags_allow_blocking(GFP_TRANSHUGE_LIGHT));
        assert!(gfpflags_allow_blocking(GFP_TRANSHUGE));
    }

    #[test]
    fn migratetype_from_flags() {
        assert_eq!(gfp_migratetype(GFP_KERNEL), MigrateType::Unmovable);
        assert_eq!(gfp_migratetype(GFP_HIGHUSER_MOVABLE), MigrateType::Movable);
        assert_eq!(gfp_migratetype(GFP_KERNEL | __GFP_RECLAIMABLE), MigrateType::Reclaimable);
    }
}
