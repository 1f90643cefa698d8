//! Shrinkers: caches that give memory back under pressure, and `drop_caches`.
//!
//! Linux counterparts: `mm/shrinker.c` (`shrinker_register`, `shrink_slab`,
//! `do_shrink_slab`), `include/linux/shrinker.h` (`count_objects` / `scan_objects`,
//! `SHRINK_STOP`, `SHRINK_EMPTY`, `DEFAULT_SEEKS`), `mm/vmscan.c` (`drop_slab`) and
//! `fs/drop_caches.c` with the 2013 logging patch (`"%s (%d): drop_caches: %d"`,
//! bit 4 silences the message).
//!
//! # GFP rules
//!
//! A shrinker declares what it needs with [`ShrinkerFlags`]: `FS` (it calls into a
//! file system, e.g. evicts inodes) and/or `IO` (it may start I/O). [`shrink_slab`]
//! skips `FS` shrinkers unless the request has `__GFP_FS`, and `IO` shrinkers unless
//! it has `__GFP_IO`. `GFP_NOIO` lacks both bits, so it skips both kinds (NOIO
//! implies NOFS). Linux leaves this check to each shrinker (`super_cache_scan`
//! returns `SHRINK_STOP` without `__GFP_FS`); doing it in the registry means a
//! shrinker cannot forget it. Callers pass the flags *after* the scoped narrowing
//! (`MemallocScope::current_gfp_context`), so a `memalloc_nofs_save` scope keeps FS
//! shrinkers away even from `GFP_KERNEL` call sites.
//!
//! # Registry and locking
//!
//! [`ShrinkerRegistry`] is a fixed-capacity array of `&'a dyn Shrinker` (the kernel:
//! `'static`, registered at boot) behind one IRQ-safe spin lock. **Rule: no callback
//! runs under the registry lock.** A scan takes the lock only to copy the (small,
//! `Copy`) list onto the stack, releases it, then calls `count_objects` /
//! `scan_objects`. So a shrinker may allocate, register or unregister shrinkers, or
//! re-enter reclaim without deadlocking on the registry. The price (Linux pays it
//! with SRCU instead) is that a scan already in progress may call a shrinker once
//! more after [`ShrinkerRegistry::unregister`] returned; shrinkers are `&'a` with the
//! registry's lifetime, so that call is memory-safe, and shrinkers must tolerate it
//! (return 0). The registry lock is a leaf: nothing else is locked while it is held.
//!
//! Each slot keeps Linux's `nr_deferred`: work a shrinker could not do (it returned
//! `SHRINK_STOP` or was skipped because of the GFP flags) is carried to the next scan
//! that may run it, capped at twice the freeable objects.

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::gfp::Gfp;
use crate::sync::{HostPlatform, Platform, SpinLock};

/// Most shrinkers the registry holds.
pub const MAX_SHRINKERS: usize = 32;
/// `scan_objects` result: the shrinker cannot make progress now (Linux `SHRINK_STOP`).
pub const SHRINK_STOP: u64 = u64::MAX;
/// `count_objects` result: nothing cached at all (Linux `SHRINK_EMPTY`).
pub const SHRINK_EMPTY: u64 = u64::MAX - 1;
/// Default cost of re-creating an object (Linux `DEFAULT_SEEKS`).
pub const DEFAULT_SEEKS: u32 = 2;
/// Default objects per `scan_objects` call (Linux `SHRINK_BATCH`).
pub const SHRINK_BATCH: u64 = 128;
/// Linux `DEF_PRIORITY`: the first reclaim pass scans `1/2^12` of each cache.
pub const DEF_PRIORITY: u32 = 12;

bitflags::bitflags! {
    /// What a shrinker needs from the allocation that triggered reclaim.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
    pub struct ShrinkerFlags: u32 {
        /// Calls into a file system: only with `__GFP_FS`.
        const FS = 1 << 0;
        /// May start I/O: only with `__GFP_IO`.
        const IO = 1 << 1;
    }
}

impl ShrinkerFlags {
    /// Whether a reclaim with `gfp` may call a shrinker with these flags.
    pub fn allowed_by(self, gfp: Gfp) -> bool {
        (!self.contains(ShrinkerFlags::FS) || gfp.contains(Gfp::FS))
            && (!self.contains(ShrinkerFlags::IO) || gfp.contains(Gfp::IO))
    }
}

/// Arguments of one shrinker call (Linux `struct shrink_control`).
#[derive(Clone, Copy, Debug)]
pub struct ShrinkControl {
    /// The (scope-narrowed) flags of the allocation that asked.
    pub gfp: Gfp,
    /// Objects to scan in this call.
    pub nr_to_scan: u64,
    /// Objects the shrinker looked at (it may set this; defaults to `nr_to_scan`).
    pub nr_scanned: u64,
}

/// A cache that can give memory back (Linux `struct shrinker`). Implemented by the
/// kernel's caches.
pub trait Shrinker: Sync {
    /// Name for `shrinker` debugging output (Linux `shrinker->name`).
    fn name(&self) -> &str;
    /// What the shrinker needs (see the module's GFP rules).
    fn flags(&self) -> ShrinkerFlags {
        ShrinkerFlags::empty()
    }
    /// Freeable objects now; 0 or [`SHRINK_EMPTY`] for none. Must be cheap and
    /// must not take locks the allocator may hold.
    fn count_objects(&self, sc: &ShrinkControl) -> u64;
    /// Frees up to `sc.nr_to_scan` objects; returns how many were freed, or
    /// [`SHRINK_STOP`] if it cannot make progress now.
    fn scan_objects(&self, sc: &mut ShrinkControl) -> u64;
    /// Cost of re-creating an object (Linux `seeks`); higher = scanned less.
    fn seeks(&self) -> u32 {
        DEFAULT_SEEKS
    }
    /// Objects per `scan_objects` call; 0 = [`SHRINK_BATCH`].
    fn batch(&self) -> u64 {
        0
    }
}

/// Handle of a registered shrinker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShrinkerId(usize);

/// Why [`ShrinkerRegistry::register`] refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterError {
    /// All [`MAX_SHRINKERS`] slots are taken.
    Full,
}

/// Why [`ShrinkerRegistry::drop_caches`] refused the value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DropCachesError {
    /// Not in `1..=7` (Linux: `-EINVAL`).
    InvalidValue,
}

/// What `drop_caches` did; the kernel prints `log` (if any) with `pr_info`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DropCachesReport {
    /// The value written.
    pub value: u32,
    /// Bit 1 was set: page cache dropped (there is no page cache yet: 0 pages).
    pub pagecache: bool,
    /// Bit 2 was set: every shrinker was asked to drop everything.
    pub slab: bool,
    /// Objects the shrinkers reported freed.
    pub slab_freed: u64,
    /// `"<who>: drop_caches: <value>"`, or `None` when bit 4 suppressed it.
    pub log: Option<String>,
}

type Slot<'a> = Option<&'a dyn Shrinker>;

/// The shrinker list (Linux `shrinker_list` + `shrinker_mutex`). See the module
/// docs for the locking rule.
pub struct ShrinkerRegistry<'a, P: Platform = HostPlatform> {
    slots: SpinLock<[Slot<'a>; MAX_SHRINKERS], P>,
    nr_deferred: [AtomicU64; MAX_SHRINKERS],
    /// `/proc/vmstat` `drop_pagecache`.
    drop_pagecache: AtomicU64,
    /// `/proc/vmstat` `drop_slab`.
    drop_slab: AtomicU64,
    /// `/proc/vmstat` `slabs_scanned`.
    slabs_scanned: AtomicU64,
}

impl<'a, P: Platform> Default for ShrinkerRegistry<'a, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, P: Platform> ShrinkerRegistry<'a, P> {
    /// An empty registry (usable in a `static`).
    pub const fn new() -> Self {
        ShrinkerRegistry {
            slots: SpinLock::new([None; MAX_SHRINKERS]),
            nr_deferred: [const { AtomicU64::new(0) }; MAX_SHRINKERS],
            drop_pagecache: AtomicU64::new(0),
            drop_slab: AtomicU64::new(0),
            slabs_scanned: AtomicU64::new(0),
        }
    }

    /// Adds a shrinker (Linux `shrinker_register`).
    pub fn register(&self, s: &'a dyn Shrinker) -> Result<ShrinkerId, RegisterError> {
        let mut slots = self.slots.lock();
        let i = slots.iter().position(Option::is_none).ok_or(RegisterError::Full)?;
        slots[i] = Some(s);
        self.nr_deferred[i].store(0, Relaxed);
        Ok(ShrinkerId(i))
    }

    /// Removes a shrinker (Linux `shrinker_free`). A scan that already copied the
    /// list may still call it once (see the module docs).
    pub fn unregister(&self, id: ShrinkerId) {
        self.slots.lock()[id.0] = None;
    }

    /// Registered shrinkers.
    pub fn len(&self) -> usize {
        self.slots.lock().iter().flatten().count()
    }

    /// Whether no shrinker is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the list; the lock is held only for the copy.
    fn snapshot(&self) -> [Slot<'a>; MAX_SHRINKERS] {
        *self.slots.lock()
    }

    /// Linux `shrink_slab`: asks every shrinker that `gfp` permits to scan
    /// `freeable >> priority` (scaled by `4 / seeks`, plus deferred work) objects;
    /// `priority` 0 asks for everything. Returns objects freed.
    pub fn shrink_slab(&self, gfp: Gfp, priority: u32) -> u64 {
        let mut freed = 0u64;
        for (i, s) in self.snapshot().iter().enumerate() {
            let Some(s) = *s else { continue };
            freed = freed.saturating_add(self.do_shrink_slab(i, s, gfp, priority));
        }
        freed
    }

    /// Linux `do_shrink_slab` for the shrinker in slot `i`.
    fn do_shrink_slab(&self, i: usize, s: &dyn Shrinker, gfp: Gfp, priority: u32) -> u64 {
        let mut sc = ShrinkControl { gfp, nr_to_scan: 0, nr_scanned: 0 };
        let freeable = s.count_objects(&sc);
        if freeable == 0 || freeable == SHRINK_EMPTY {
            return 0;
        }
        let seeks = u64::from(s.seeks());
        let delta = if seeks == 0 {
            freeable / 2
        } else {
            (freeable >> priority.min(63)).saturating_mul(4) / seeks
        };
        if !s.flags().allowed_by(gfp) {
            // Not allowed to run now: remember the work for a permitted caller.
            let cap = freeable.saturating_mul(2);
            let _ = self.nr_deferred[i].fetch_update(Relaxed, Relaxed, |d| Some(d.saturating_add(delta).min(cap)));
            return 0;
        }
        let deferred = self.nr_deferred[i].swap(0, Relaxed);
        let mut total_scan = deferred.saturating_add(delta).min(freeable.saturating_mul(2));
        let batch = if s.batch() == 0 { SHRINK_BATCH } else { s.batch() };
        let mut freed = 0u64;
        // Linux scans while `total_scan >= batch_size || total_scan >= freeable`.
        while total_scan >= batch || (total_scan > 0 && total_scan >= freeable) {
            let n = batch.min(total_scan);
            sc.nr_to_scan = n;
            sc.nr_scanned = n;
            let r = s.scan_objects(&mut sc);
            if r == SHRINK_STOP {
                break;
            }
            freed = freed.saturating_add(r);
            let scanned = sc.nr_scanned.clamp(1, n.max(1));
            self.slabs_scanned.fetch_add(scanned, Relaxed);
            total_scan -= scanned.min(total_scan);
        }
        // Unfinished work goes back to the deferred counter.
        let cap = freeable.saturating_mul(2);
        if total_scan > 0 {
            let _ = self.nr_deferred[i].fetch_update(Relaxed, Relaxed, |d| Some(d.saturating_add(total_scan).min(cap)));
        }
        freed
    }

    /// Linux `drop_slab`: scan everything at priority 0, repeating while the
    /// shrinkers keep freeing (`freed >> pass > 1`, at most 16 passes).
    pub fn drop_slab(&self) -> u64 {
        let mut total = 0u64;
        for shift in 0..16u32 {
            let freed = self.shrink_slab(crate::gfp::GFP_KERNEL, 0);
            total = total.saturating_add(freed);
            if freed >> shift <= 1 {
                break;
            }
        }
        total
    }

    /// A direct-reclaim pass for the page allocator's `AllocHooks::direct_reclaim`:
    /// priorities `DEF_PRIORITY` down to 0 until the shrinkers freed at least
    /// `2^order` objects. `gfp` must already be scope-narrowed. Returns objects
    /// freed (the kernel's page-backed caches count pages).
    pub fn direct_reclaim(&self, gfp: Gfp, order: usize) -> u64 {
        let want = 1u64 << order.min(63);
        let mut freed = 0u64;
        for priority in (0..=DEF_PRIORITY).rev() {
            freed = freed.saturating_add(self.shrink_slab(gfp, priority));
            if freed >= want {
                break;
            }
        }
        freed
    }

    /// Linux `drop_caches_sysctl_handler` (the console's `drop_caches N`):
    /// bit 1 drops the page cache, bit 2 the slab objects (every shrinker), bit 4
    /// suppresses the log line. `who` names the requester, e.g. `"console (1)"`,
    /// giving Linux's `"%s (%d): drop_caches: %d"`.
    pub fn drop_caches(&self, value: u32, who: &str) -> Result<DropCachesReport, DropCachesError> {
        if !(1..=7).contains(&value) {
            return Err(DropCachesError::InvalidValue);
        }
        let pagecache = value & 1 != 0;
        let slab = value & 2 != 0;
        if pagecache {
            // No page cache yet: nothing to drop, but count the event like Linux.
            self.drop_pagecache.fetch_add(1, Relaxed);
        }
        let slab_freed = if slab {
            self.drop_slab.fetch_add(1, Relaxed);
            self.drop_slab()
        } else {
            0
        };
        let log = (value & 4 == 0).then(|| {
            let mut s = String::new();
            let _ = write!(s, "{who}: drop_caches: {value}");
            s
        });
        Ok(DropCachesReport { value, pagecache, slab, slab_freed, log })
    }

    /// The `drop_pagecache`, `drop_slab` and `slabs_scanned` lines of `/proc/vmstat`.
    pub fn vmstat(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        writeln!(out, "drop_pagecache {}", self.drop_pagecache.load(Relaxed))?;
        writeln!(out, "drop_slab {}", self.drop_slab.load(Relaxed))?;
        writeln!(out, "slabs_scanned {}", self.slabs_scanned.load(Relaxed))
    }

    /// One line per shrinker: name, flags, freeable objects (for `GFP_KERNEL`),
    /// deferred work (like `/sys/kernel/debug/shrinker/*/count`).
    pub fn shrinker_info(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        for (i, s) in self.snapshot().iter().enumerate() {
            let Some(s) = *s else { continue };
            let sc = ShrinkControl { gfp: crate::gfp::GFP_KERNEL, nr_to_scan: 0, nr_scanned: 0 };
            let n = s.count_objects(&sc);
            let n = if n == SHRINK_EMPTY { 0 } else { n };
            writeln!(
                out,
                "{:<24} {:<5} objects {} deferred {}",
                s.name(),
                match (s.flags().contains(ShrinkerFlags::FS), s.flags().contains(ShrinkerFlags::IO)) {
                    (true, true) => "fs+io",
                    (true, false) => "fs",
                    (false, true) => "io",
                    (false, false) => "-",
                },
                n,
                self.nr_deferred[i].load(Relaxed)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfp::*;
    use crate::sched_mm::{MemallocScope, memalloc_nofs_save};
    use core::sync::atomic::AtomicU64;
    use std::boxed::Box;
    use std::string::ToString;

    /// A cache of `objects` objects; counts calls.
    struct Cache {
        name: &'static str,
        flags: ShrinkerFlags,
        objects: AtomicU64,
        scans: AtomicU64,
    }

    impl Cache {
        fn new(name: &'static str, flags: ShrinkerFlags, objects: u64) -> Cache {
            Cache { name, flags, objects: AtomicU64::new(objects), scans: AtomicU64::new(0) }
        }
    }

    impl Shrinker for Cache {
        fn name(&self) -> &str {
            self.name
        }
        fn flags(&self) -> ShrinkerFlags {
            self.flags
        }
        fn count_objects(&self, _: &ShrinkControl) -> u64 {
            self.objects.load(Relaxed)
        }
        fn scan_objects(&self, sc: &mut ShrinkControl) -> u64 {
            assert!(self.flags.allowed_by(sc.gfp), "{} called with {:?}", self.name, sc.gfp);
            self.scans.fetch_add(1, Relaxed);
            let n = sc.nr_to_scan.min(self.objects.load(Relaxed));
            self.objects.fetch_sub(n, Relaxed);
            n
        }
    }

    fn three() -> (Cache, Cache, Cache) {
        (
            Cache::new("plain", ShrinkerFlags::empty(), 1000),
            Cache::new("inode", ShrinkerFlags::FS, 1000),
            Cache::new("swapcache", ShrinkerFlags::IO, 1000),
        )
    }

    #[test]
    fn shrinker_nofs_skips_fs_shrinker_kernel_calls_it() {
        let (p, f, io) = three();
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        r.register(&p).unwrap();
        r.register(&f).unwrap();
        r.register(&io).unwrap();
        let freed = r.shrink_slab(GFP_NOFS, 0);
        assert_eq!(f.scans.load(Relaxed), 0, "NOFS must not call the FS shrinker");
        assert!(p.scans.load(Relaxed) > 0 && io.scans.load(Relaxed) > 0);
        assert_eq!(freed, 2000);
        let freed = r.shrink_slab(GFP_KERNEL, 0);
        assert!(f.scans.load(Relaxed) > 0, "KERNEL calls the FS shrinker");
        assert_eq!(freed, 1000);
    }

    #[test]
    fn shrinker_noio_skips_io_and_fs() {
        let (p, f, io) = three();
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        for s in [&p as &dyn Shrinker, &f, &io] {
            r.register(s).unwrap();
        }
        assert_eq!(r.shrink_slab(GFP_NOIO, 0), 1000);
        assert_eq!(f.scans.load(Relaxed) + io.scans.load(Relaxed), 0);
        // Atomic callers never get here (no direct reclaim), but the flags alone
        // would also exclude both kinds.
        assert_eq!(r.shrink_slab(GFP_ATOMIC, 0), 0);
        assert_eq!(f.scans.load(Relaxed) + io.scans.load(Relaxed), 0);
    }

    #[test]
    fn shrinker_scoped_nofs_keeps_fs_shrinker_away_from_kernel_callers() {
        let (_, f, _) = three();
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        r.register(&f).unwrap();
        let scope = MemallocScope::new();
        let g = memalloc_nofs_save(&scope);
        assert_eq!(r.shrink_slab(scope.current_gfp_context(GFP_KERNEL), 0), 0);
        drop(g);
        assert_eq!(r.shrink_slab(scope.current_gfp_context(GFP_KERNEL), 0), 1000);
    }

    #[test]
    fn shrinker_priority_scales_scan_and_defers_skipped_work() {
        let f = Cache::new("inode", ShrinkerFlags::FS, 1 << 16);
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        r.register(&f).unwrap();
        // DEF_PRIORITY: 65536 >> 12 = 16, * 4 / 2 = 32 < batch: no scan yet, deferred.
        assert_eq!(r.shrink_slab(GFP_KERNEL, DEF_PRIORITY), 0);
        // Priority 6: 1024 * 4 / 2 = 2048 plus the 32 deferred = 2080 → 16 batches.
        let freed = r.shrink_slab(GFP_KERNEL, 6);
        assert_eq!(freed, 2048);
        assert_eq!(f.scans.load(Relaxed), 16);
        // A NOFS pass defers the FS shrinker's share instead of running it.
        assert_eq!(r.shrink_slab(GFP_NOFS, 6), 0);
        let mut info = String::new();
        r.shrinker_info(&mut info).unwrap();
        assert!(info.contains("inode") && info.contains("fs") && !info.contains("deferred 0"), "{info}");
    }

    #[test]
    fn shrinker_stop_ends_the_scan() {
        struct Stuck(AtomicU64);
        impl Shrinker for Stuck {
            fn name(&self) -> &str {
                "stuck"
            }
            fn count_objects(&self, _: &ShrinkControl) -> u64 {
                500
            }
            fn scan_objects(&self, _: &mut ShrinkControl) -> u64 {
                self.0.fetch_add(1, Relaxed);
                SHRINK_STOP
            }
        }
        let s = Stuck(AtomicU64::new(0));
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        r.register(&s).unwrap();
        assert_eq!(r.shrink_slab(GFP_KERNEL, 0), 0);
        assert_eq!(s.0.load(Relaxed), 1);
    }

    #[test]
    fn shrinker_registry_capacity_and_unregister() {
        let c: &'static Cache = Box::leak(Box::new(Cache::new("c", ShrinkerFlags::empty(), 10)));
        let r: ShrinkerRegistry<'static> = ShrinkerRegistry::new();
        let ids: std::vec::Vec<_> = (0..MAX_SHRINKERS).map(|_| r.register(c).unwrap()).collect();
        assert_eq!(r.register(c), Err(RegisterError::Full));
        r.unregister(ids[3]);
        assert_eq!(r.len(), MAX_SHRINKERS - 1);
        assert!(r.register(c).is_ok());
    }

    #[test]
    fn shrinker_callbacks_run_without_the_registry_lock() {
        /// Registers another shrinker from inside its scan: deadlocks if the
        /// registry lock were held around callbacks.
        struct Reentrant {
            reg: &'static ShrinkerRegistry<'static>,
            other: &'static Cache,
        }
        impl Shrinker for Reentrant {
            fn name(&self) -> &str {
                "reentrant"
            }
            fn count_objects(&self, _: &ShrinkControl) -> u64 {
                assert!(self.reg.slots.try_lock().is_some(), "registry locked during count");
                1
            }
            fn scan_objects(&self, _: &mut ShrinkControl) -> u64 {
                let id = self.reg.register(self.other).unwrap();
                self.reg.unregister(id);
                1
            }
        }
        let reg: &'static ShrinkerRegistry<'static> = Box::leak(Box::new(ShrinkerRegistry::new()));
        let other: &'static Cache = Box::leak(Box::new(Cache::new("o", ShrinkerFlags::empty(), 0)));
        let re: &'static Reentrant = Box::leak(Box::new(Reentrant { reg, other }));
        reg.register(re).unwrap();
        assert_eq!(reg.shrink_slab(GFP_KERNEL, 0), 1);
    }

    #[test]
    fn shrinker_drop_caches_log_line_and_suppress_bit() {
        let (p, f, io) = three();
        let r: ShrinkerRegistry = ShrinkerRegistry::new();
        for s in [&p as &dyn Shrinker, &f, &io] {
            r.register(s).unwrap();
        }
        let rep = r.drop_caches(3, "console (1)").unwrap();
        assert_eq!(rep.log.as_deref(), Some("console (1): drop_caches: 3"));
        assert!(rep.pagecache && rep.slab);
        assert_eq!(rep.slab_freed, 3000, "drop_caches drops FS and IO caches too");
        assert_eq!(p.objects.load(Relaxed) + f.objects.load(Relaxed) + io.objects.load(Relaxed), 0);

        let rep = r.drop_caches(1, "sh").unwrap();
        assert_eq!(rep.log.as_deref(), Some("sh: drop_caches: 1"));
        assert!(rep.pagecache && !rep.slab && rep.slab_freed == 0);

        p.objects.store(7, Relaxed);
        let rep = r.drop_caches(2 | 4, "sh").unwrap();
        assert_eq!(rep.log, None, "bit 4 suppresses the message");
        assert_eq!(rep.slab_freed, 7);
        assert_eq!(r.drop_caches(4, "sh").unwrap().log, None);

        assert_eq!(r.drop_caches(0, "sh"), Err(DropCachesError::InvalidValue));
        assert_eq!(r.drop_caches(8, "sh"), Err(DropCachesError::InvalidValue));
        let mut v = String::new();
        r.vmstat(&mut v).unwrap();
        assert!(v.contains("drop_pagecache 2\n") && v.contains("drop_slab 2\n"), "{v}");
        assert_eq!("x".to_string(), "x");
    }

    /// The real page allocator under pressure: an FS cache holds the only free
    /// pages; a NOFS allocation must fail without touching it, a KERNEL one gets
    /// them back through `direct_reclaim`.
    #[test]
    fn shrinker_page_alloc_nofs_under_pressure() {
        use crate::addr::Pfn;
        use crate::page::PageMeta;
        use crate::page_alloc::{AllocConfig, AllocHooks, NoPhysMem, PageAlloc, Pages};
        use std::sync::{Mutex, OnceLock};

        struct PageCache {
            alloc: OnceLock<&'static PageAlloc<'static>>,
            pages: Mutex<std::vec::Vec<Pages>>,
            scans: AtomicU64,
        }
        impl Shrinker for PageCache {
            fn name(&self) -> &str {
                "fs-page-cache"
            }
            fn flags(&self) -> ShrinkerFlags {
                ShrinkerFlags::FS
            }
            fn count_objects(&self, _: &ShrinkControl) -> u64 {
                self.pages.lock().unwrap().len() as u64
            }
            fn scan_objects(&self, sc: &mut ShrinkControl) -> u64 {
                self.scans.fetch_add(1, Relaxed);
                let mut v = self.pages.lock().unwrap();
                let n = (sc.nr_to_scan as usize).min(v.len());
                let a = self.alloc.get().unwrap();
                for p in v.drain(..n) {
                    a.free_pages(p);
                }
                n as u64
            }
        }
        struct Hooks {
            reg: &'static ShrinkerRegistry<'static>,
        }
        impl AllocHooks for Hooks {
            fn direct_reclaim(&self, gfp: Gfp, order: usize) -> u64 {
                self.reg.direct_reclaim(gfp, order)
            }
        }
        let reg: &'static ShrinkerRegistry<'static> = Box::leak(Box::new(ShrinkerRegistry::new()));
        let cache: &'static PageCache = Box::leak(Box::new(PageCache {
            alloc: OnceLock::new(),
            pages: Mutex::new(std::vec::Vec::new()),
            scans: AtomicU64::new(0),
        }));
        reg.register(cache).unwrap();
        let hooks: &'static Hooks = Box::leak(Box::new(Hooks { reg }));
        let n = 1024u64;
        let meta: &'static [PageMeta] = Box::leak((0..n).map(|_| PageMeta::new()).collect::<std::vec::Vec<_>>().into_boxed_slice());
        let cfg = AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(1), ..AllocConfig::default() };
        let alloc: &'static PageAlloc<'static> =
            Box::leak(Box::new(PageAlloc::new(meta, Pfn(0), &[Pfn(0)..Pfn(n)], &NoPhysMem, hooks, cfg).unwrap()));
        cache.alloc.set(alloc).ok().unwrap();
        // Everything goes into the cache.
        let mut held = std::vec::Vec::new();
        while let Ok(p) = alloc.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0) {
            held.push(p);
        }
        cache.pages.lock().unwrap().extend(held);
        assert!(alloc.alloc_pages(GFP_NOWAIT | __GFP_NOWARN, 0).is_err());
        assert!(alloc.alloc_pages(GFP_NOFS | __GFP_NOWARN, 0).is_err(), "NOFS cannot reclaim the FS cache");
        assert_eq!(cache.scans.load(Relaxed), 0);
        let p = alloc.alloc_pages(GFP_KERNEL, 0).expect("KERNEL reclaims from the FS shrinker");
        assert!(cache.scans.load(Relaxed) > 0);
        alloc.free_pages(p);
        for p in cache.pages.lock().unwrap().drain(..) {
            alloc.free_pages(p);
        }
    }
}
