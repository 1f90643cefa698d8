//! Scoped allocation constraints: `memalloc_nofs_save()` / `memalloc_noio_save()`.
//!
//! Linux counterpart: `include/linux/sched/mm.h` (`current_gfp_context`,
//! `memalloc_nofs_save` / `memalloc_nofs_restore`, `memalloc_noio_save` /
//! `memalloc_noio_restore`, `memalloc_noreclaim_save`). Instead of sprinkling
//! `GFP_NOFS` through a file system, the code that must not recurse into the file
//! system marks a *scope*; every allocation made while the scope is alive loses
//! `__GFP_FS` (and for NOIO also `__GFP_IO`), whatever flags its call site passed —
//! including allocations made deep inside helpers that only know `GFP_KERNEL`, and
//! allocations through Rust's global allocator, which cannot take flags at all.
//!
//! # Ownership
//!
//! mm has no statics, so the per-task state is a [`MemallocScope`] value that the
//! kernel owns (one global whose state the scheduler swaps per task) and passes
//! by reference. Guards borrow it and must stay on the task that made them.
//!
//! # Nesting and drop order
//!
//! Linux saves the previous bit and restores it (`flags = (flags & ~NOFS) | old`),
//! which is correct only for LIFO restores: restoring an outer scope while an inner
//! one is still alive clears the bit under the inner scope's feet. Here every kind of
//! scope is a *depth counter* (8 bits each, four packed into one `AtomicU32`): a guard
//! increments on creation and decrements on drop, so the constraint holds exactly
//! while at least one guard of that kind lives — LIFO drops behave like Linux, and
//! out-of-order drops are also correct (no constraint is lifted early). A guard
//! created when its counter is saturated (255 live scopes, a bug in practice) does
//! not count and does not uncount: the constraint stays on anyway, because the other
//! 255 guards are alive.
//!
//! # One scope per task
//!
//! The kernel keeps one global `MemallocScope` and swaps its state at every task
//! switch ([`MemallocScope::switch_state`]), so each task has its own scope. An
//! interrupt handler runs under the scope of the task it interrupted (errs on the
//! safe side: fewer reclaim sources, never more). One CPU: with several, the state
//! would move to per-CPU storage.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::gfp::Gfp;

/// Linux `PF_MEMALLOC`: the task is in reclaim (may use reserves; must not recurse
/// into direct reclaim). Reported by [`MemallocScope::flags`].
pub const PF_MEMALLOC: u32 = 0x0000_0800;
/// Linux `PF_MEMALLOC_NOFS`: all allocations behave as `GFP_NOFS`.
pub const PF_MEMALLOC_NOFS: u32 = 0x0004_0000;
/// Linux `PF_MEMALLOC_NOIO`: all allocations behave as `GFP_NOIO`.
pub const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;

const FIELD_BITS: u32 = 8;
const FIELD_MAX: u32 = (1 << FIELD_BITS) - 1;

/// A kind of scope; each has its own depth counter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScopeKind {
    /// Strip `__GFP_FS` (Linux `PF_MEMALLOC_NOFS`).
    NoFs = 0,
    /// Strip `__GFP_IO` and `__GFP_FS` (Linux `PF_MEMALLOC_NOIO`).
    NoIo = 1,
    /// Inside reclaim: strip `__GFP_DIRECT_RECLAIM` so an allocation made by a
    /// shrinker never recurses into reclaim (Linux tests `PF_MEMALLOC` in the
    /// allocator for the same purpose).
    NoReclaim = 2,
    /// Strip `__GFP_HIGH`: no access to the reserve below the min watermark. No
    /// Linux counterpart (Linux has no allocator that adds `__GFP_HIGH` by itself):
    /// the kernel heap retries a failed allocation with `__GFP_HIGH` for Rust's
    /// infallible allocations, and [`MemallocScope::save_for_gfp`] opens this scope
    /// so that a fallible allocation on behalf of a caller without `__GFP_HIGH`
    /// (vmalloc's bookkeeping) does not get that retry.
    NoReserve = 3,
}

impl ScopeKind {
    const fn shift(self) -> u32 {
        self as u32 * FIELD_BITS
    }
}

/// The allocation-scope state of one task (Linux: the `PF_MEMALLOC_*` bits of
/// `current->flags`). The kernel owns it; mm code takes `&MemallocScope`.
#[derive(Debug, Default)]
pub struct MemallocScope {
    /// Four 8-bit depth counters: NOFS, NOIO, NORECLAIM, NORESERVE.
    depth: AtomicU32,
}

impl MemallocScope {
    /// No scope active.
    pub const fn new() -> MemallocScope {
        MemallocScope { depth: AtomicU32::new(0) }
    }

    /// Replaces the whole scope state (the packed depth counters) and returns
    /// the previous one. The scheduler calls this at every task switch, so
    /// one `MemallocScope` holds the running task's scope, as Linux keeps
    /// the bits in `current->flags`.
    pub fn switch_state(&self, next: u32) -> u32 {
        self.depth.swap(next, Ordering::AcqRel)
    }

    /// Live guards of `kind`.
    pub fn depth(&self, kind: ScopeKind) -> u32 {
        (self.depth.load(Ordering::Relaxed) >> kind.shift()) & FIELD_MAX
    }

    /// The scope as Linux `PF_MEMALLOC*` bits.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.depth(ScopeKind::NoFs) > 0 {
            f |= PF_MEMALLOC_NOFS;
        }
        if self.depth(ScopeKind::NoIo) > 0 {
            f |= PF_MEMALLOC_NOIO;
        }
        if self.depth(ScopeKind::NoReclaim) > 0 {
            f |= PF_MEMALLOC;
        }
        f
    }

    /// Whether the task is inside reclaim (a `NoReclaim` scope is alive).
    pub fn in_reclaim(&self) -> bool {
        self.depth(ScopeKind::NoReclaim) > 0
    }

    /// Linux `current_gfp_context`: `gfp` narrowed by every live scope. NOIO wins
    /// over NOFS (it strips both bits).
    pub fn current_gfp_context(&self, gfp: Gfp) -> Gfp {
        let mut gfp = gfp;
        if self.depth(ScopeKind::NoIo) > 0 {
            gfp -= Gfp::IO | Gfp::FS;
        } else if self.depth(ScopeKind::NoFs) > 0 {
            gfp -= Gfp::FS;
        }
        if self.depth(ScopeKind::NoReclaim) > 0 {
            gfp -= Gfp::DIRECT_RECLAIM;
        }
        if self.depth(ScopeKind::NoReserve) > 0 {
            gfp -= Gfp::HIGH;
        }
        gfp
    }

    /// Opens a scope of `kind` (the generic `memalloc_flags_save`).
    pub fn save(&self, kind: ScopeKind) -> MemallocGuard<'_> {
        let shift = kind.shift();
        let r = self.depth.fetch_update(Ordering::Acquire, Ordering::Relaxed, |v| {
            if (v >> shift) & FIELD_MAX == FIELD_MAX { None } else { Some(v + (1 << shift)) }
        });
        MemallocGuard { scope: self, kind, counted: r.is_ok() }
    }

    /// Opens the scopes needed so that *any* allocation made while the guard lives
    /// is at most as permissive as `gfp` (used by vmalloc around allocations that
    /// cannot take flags, like Linux `__vmalloc_area_node` around page-table
    /// allocations): NOIO if `gfp` lacks `__GFP_IO`, else NOFS if it lacks
    /// `__GFP_FS`, NORECLAIM if it lacks `__GFP_DIRECT_RECLAIM`, and NORESERVE if it
    /// lacks `__GFP_HIGH`.
    pub fn save_for_gfp(&self, gfp: Gfp) -> GfpScopeGuard<'_> {
        let io = if !gfp.contains(Gfp::IO) {
            Some(self.save(ScopeKind::NoIo))
        } else if !gfp.contains(Gfp::FS) {
            Some(self.save(ScopeKind::NoFs))
        } else {
            None
        };
        let reclaim = (!gfp.contains(Gfp::DIRECT_RECLAIM)).then(|| self.save(ScopeKind::NoReclaim));
        let reserve = (!gfp.contains(Gfp::HIGH)).then(|| self.save(ScopeKind::NoReserve));
        GfpScopeGuard { _io: io, _reclaim: reclaim, _reserve: reserve }
    }
}

/// A live scope; the constraint is lifted when the last guard of its kind drops
/// (Linux `memalloc_*_restore`).
#[must_use = "the scope ends as soon as the guard is dropped"]
#[derive(Debug)]
pub struct MemallocGuard<'s> {
    scope: &'s MemallocScope,
    kind: ScopeKind,
    counted: bool,
}

impl MemallocGuard<'_> {
    /// Which scope this guard holds.
    pub fn kind(&self) -> ScopeKind {
        self.kind
    }
}

impl Drop for MemallocGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.scope.depth.fetch_sub(1 << self.kind.shift(), Ordering::Release);
        }
    }
}

/// The guards of [`MemallocScope::save_for_gfp`].
#[must_use = "the scope ends as soon as the guard is dropped"]
#[derive(Debug)]
pub struct GfpScopeGuard<'s> {
    _io: Option<MemallocGuard<'s>>,
    _reclaim: Option<MemallocGuard<'s>>,
    _reserve: Option<MemallocGuard<'s>>,
}

/// Linux `memalloc_nofs_save`: until the guard drops, allocations lose `__GFP_FS`.
pub fn memalloc_nofs_save(scope: &MemallocScope) -> MemallocGuard<'_> {
    scope.save(ScopeKind::NoFs)
}

/// Linux `memalloc_noio_save`: until the guard drops, allocations lose `__GFP_IO`
/// and `__GFP_FS`.
pub fn memalloc_noio_save(scope: &MemallocScope) -> MemallocGuard<'_> {
    scope.save(ScopeKind::NoIo)
}

/// Linux `memalloc_noreclaim_save`: marks the task as being in reclaim; its
/// allocations never enter direct reclaim (no recursion from shrinkers).
pub fn memalloc_noreclaim_save(scope: &MemallocScope) -> MemallocGuard<'_> {
    scope.save(ScopeKind::NoReclaim)
}

/// Linux `current_gfp_context(flags)`.
pub fn current_gfp_context(scope: &MemallocScope, gfp: Gfp) -> Gfp {
    scope.current_gfp_context(gfp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfp::*;

    #[test]
    fn sched_mm_nofs_strips_fs_only() {
        let s = MemallocScope::new();
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_KERNEL);
        let g = memalloc_nofs_save(&s);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOFS);
        assert_eq!(current_gfp_context(&s, GFP_KERNEL | __GFP_ZERO), GFP_NOFS | __GFP_ZERO);
        assert_eq!(s.flags(), PF_MEMALLOC_NOFS);
        drop(g);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_KERNEL);
        assert_eq!(s.flags(), 0);
    }

    #[test]
    fn sched_mm_noio_strips_io_and_fs() {
        let s = MemallocScope::new();
        let _g = memalloc_noio_save(&s);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOIO);
        assert_eq!(s.current_gfp_context(GFP_NOFS), GFP_NOIO);
        // Atomic flags carry nothing to strip and keep their reserve bit.
        assert_eq!(s.current_gfp_context(GFP_ATOMIC), GFP_ATOMIC);
    }

    #[test]
    fn sched_mm_lifo_nesting_restores_each_level() {
        let s = MemallocScope::new();
        let a = memalloc_nofs_save(&s);
        {
            let b = memalloc_noio_save(&s);
            assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOIO);
            {
                let _c = memalloc_nofs_save(&s);
                assert_eq!(s.depth(ScopeKind::NoFs), 2);
                assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOIO);
            }
            assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOIO);
            drop(b);
        }
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOFS);
        drop(a);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_KERNEL);
    }

    #[test]
    fn sched_mm_out_of_order_drop_keeps_inner_scope() {
        // Linux's bit save/restore would clear NOFS when `outer` is restored first.
        let s = MemallocScope::new();
        let outer = memalloc_nofs_save(&s);
        let inner = memalloc_nofs_save(&s);
        drop(outer);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOFS, "inner scope still alive");
        drop(inner);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_KERNEL);

        let io = memalloc_noio_save(&s);
        let fs = memalloc_nofs_save(&s);
        drop(io);
        assert_eq!(s.current_gfp_context(GFP_KERNEL), GFP_NOFS);
        drop(fs);
        assert_eq!(s.flags(), 0);
    }

    #[test]
    fn sched_mm_saturated_counter_stays_balanced() {
        let s = MemallocScope::new();
        let guards: std::vec::Vec<_> = (0..FIELD_MAX + 5).map(|_| memalloc_nofs_save(&s)).collect();
        assert_eq!(s.depth(ScopeKind::NoFs), FIELD_MAX);
        assert_eq!(s.depth(ScopeKind::NoIo), 0, "no carry into the next counter");
        drop(guards);
        assert_eq!(s.depth(ScopeKind::NoFs), 0);
        assert_eq!(s.flags(), 0);
        // The top counter (NoReserve, bits 24..32) saturates the same way, without
        // overflowing the word.
        let reclaim = memalloc_noreclaim_save(&s);
        let guards: std::vec::Vec<_> = (0..FIELD_MAX + 5).map(|_| s.save(ScopeKind::NoReserve)).collect();
        assert_eq!(s.depth(ScopeKind::NoReserve), FIELD_MAX);
        assert_eq!(s.depth(ScopeKind::NoReclaim), 1, "no carry into the neighbour");
        assert_eq!(s.current_gfp_context(GFP_ATOMIC), GFP_NOWAIT);
        drop(guards);
        assert_eq!(s.depth(ScopeKind::NoReserve), 0);
        assert_eq!(s.current_gfp_context(GFP_ATOMIC), GFP_ATOMIC);
        drop(reclaim);
        assert_eq!(s.switch_state(0), 0);
    }

    #[test]
    fn sched_mm_save_for_gfp_mirrors_caller_flags() {
        let s = MemallocScope::new();
        for (gfp, expect) in [
            (GFP_KERNEL, GFP_KERNEL),
            (GFP_NOFS, GFP_NOFS),
            (GFP_NOIO, GFP_NOIO),
            (GFP_NOWAIT, GFP_NOWAIT),
            (GFP_ATOMIC, GFP_NOWAIT),
        ] {
            let g = s.save_for_gfp(gfp);
            assert_eq!(s.depth(ScopeKind::NoReserve), !gfp.contains(__GFP_HIGH) as u32);
            // What the global allocator (which only knows GFP_KERNEL) would use, and
            // its retry with the reserve (only for a caller that has __GFP_HIGH).
            assert_eq!(s.current_gfp_context(GFP_KERNEL), expect, "{gfp:?}");
            let retry = if gfp.contains(__GFP_HIGH) { expect | __GFP_HIGH } else { expect };
            assert_eq!(s.current_gfp_context(GFP_KERNEL | __GFP_HIGH), retry, "{gfp:?}");
            drop(g);
            assert_eq!(s.switch_state(0), 0, "every scope closed, NoReserve included");
        }
        let _r = memalloc_noreclaim_save(&s);
        assert!(s.in_reclaim());
        assert_eq!(s.flags(), PF_MEMALLOC);
        assert!(!gfpflags_allow_blocking(s.current_gfp_context(GFP_KERNEL)));
    }
}
