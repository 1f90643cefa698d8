//! Fault injection for page allocations.
//!
//! Linux counterpart: `fail_page_alloc` (`mm/fail_page_alloc.c` on top of
//! `lib/fault-inject.c`) with its knobs `interval`, `probability`, `times`,
//! `min-order` and `ignore-gfp-wait`. Failures are deterministic: the random
//! fraction comes from a seeded xorshift generator, so a failing test replays.
//! `__GFP_NOFAIL` requests are never failed. Everything is atomics, so the check is
//! also safe on the `try_alloc_pages` path.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::gfp::Gfp;

/// `fail_page_alloc` attributes (Linux `struct fault_attr` + `fail_page_alloc`).
#[derive(Debug)]
pub struct FailPageAlloc {
    enabled: AtomicBool,
    /// Only every `interval`-th eligible call is considered (1 = every call).
    interval: AtomicU64,
    /// Per-million chance that a considered call fails.
    probability_ppm: AtomicU32,
    /// Failures left; negative = unlimited.
    times: AtomicI64,
    min_order: AtomicU32,
    /// Do not fail allocations that may sleep (Linux `ignore-gfp-wait`).
    ignore_gfp_reclaim: AtomicBool,
    rng: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
}

/// A configuration for [`FailPageAlloc::configure`].
#[derive(Clone, Copy, Debug)]
pub struct FaultAttr {
    pub interval: u64,
    pub probability_ppm: u32,
    pub times: i64,
    pub min_order: u32,
    pub ignore_gfp_reclaim: bool,
    pub seed: u64,
}

impl FaultAttr {
    /// Fail every `n`-th allocation.
    pub const fn every_nth(n: u64) -> FaultAttr {
        FaultAttr { interval: n, probability_ppm: 1_000_000, times: -1, min_order: 0, ignore_gfp_reclaim: false, seed: 1 }
    }
    /// Fail a pseudo-random `percent` of allocations, reproducibly from `seed`.
    pub const fn random_percent(percent: u32, seed: u64) -> FaultAttr {
        FaultAttr { interval: 1, probability_ppm: percent * 10_000, times: -1, min_order: 0, ignore_gfp_reclaim: false, seed }
    }
}

impl Default for FailPageAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl FailPageAlloc {
    pub const fn new() -> FailPageAlloc {
        FailPageAlloc {
            enabled: AtomicBool::new(false),
            interval: AtomicU64::new(1),
            probability_ppm: AtomicU32::new(0),
            times: AtomicI64::new(-1),
            min_order: AtomicU32::new(0),
            ignore_gfp_reclaim: AtomicBool::new(false),
            rng: AtomicU64::new(1),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Enables injection with `attr`.
    pub fn configure(&self, attr: FaultAttr) {
        self.interval.store(attr.interval.max(1), Relaxed);
        self.probability_ppm.store(attr.probability_ppm.min(1_000_000), Relaxed);
        self.times.store(attr.times, Relaxed);
        self.min_order.store(attr.min_order, Relaxed);
        self.ignore_gfp_reclaim.store(attr.ignore_gfp_reclaim, Relaxed);
        self.rng.store(attr.seed | 1, Relaxed);
        self.calls.store(0, Relaxed);
        self.enabled.store(true, Relaxed);
    }

    pub fn disable(&self) {
        self.enabled.store(false, Relaxed);
    }

    /// Allocations failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Relaxed)
    }

    /// Linux `should_fail_alloc_page`.
    #[inline]
    pub fn should_fail_alloc_page(&self, gfp: Gfp, order: usize) -> bool {
        if !self.enabled.load(Relaxed) {
            return false;
        }
        self.should_fail_slow(gfp, order)
    }

    #[cold]
    fn should_fail_slow(&self, gfp: Gfp, order: usize) -> bool {
        if gfp.contains(Gfp::NOFAIL)
            || (order as u32) < self.min_order.load(Relaxed)
            || (self.ignore_gfp_reclaim.load(Relaxed) && gfp.contains(Gfp::DIRECT_RECLAIM))
        {
            return false;
        }
        let n = self.calls.fetch_add(1, Relaxed) + 1;
        if n % self.interval.load(Relaxed) != 0 {
            return false;
        }
        let ppm = self.probability_ppm.load(Relaxed);
        if ppm < 1_000_000 {
            let r = self.next_random();
            if (r % 1_000_000) as u32 >= ppm {
                return false;
            }
        }
        // Consume one of `times` (negative = unlimited).
        let ok = self
            .times
            .fetch_update(Relaxed, Relaxed, |t| match t {
                t if t < 0 => Some(t),
                0 => None,
                t => Some(t - 1),
            })
            .is_ok();
        if ok {
            self.injected.fetch_add(1, Relaxed);
        }
        ok
    }

    /// xorshift64* step on the shared state.
    fn next_random(&self) -> u64 {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let old = self.rng.fetch_update(Relaxed, Relaxed, |x| Some(step(x))).unwrap_or(1);
        step(old).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfp::*;

    #[test]
    fn every_nth_and_nofail() {
        let f = FailPageAlloc::new();
        assert!(!f.should_fail_alloc_page(GFP_KERNEL, 0));
        f.configure(FaultAttr::every_nth(3));
        let fails: std::vec::Vec<bool> = (0..6).map(|_| f.should_fail_alloc_page(GFP_KERNEL, 0)).collect();
        assert_eq!(fails, [false, false, true, false, false, true]);
        for _ in 0..10 {
            assert!(!f.should_fail_alloc_page(GFP_KERNEL | __GFP_NOFAIL, 0));
        }
    }

    #[test]
    fn random_fraction_is_deterministic_and_bounded() {
        let run = |seed| {
            let f = FailPageAlloc::new();
            f.configure(FaultAttr::random_percent(10, seed));
            (0..10_000).filter(|_| f.should_fail_alloc_page(GFP_KERNEL, 0)).count()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert!((800..1200).contains(&a), "{a}");
    }

    #[test]
    fn min_order_and_times() {
        let f = FailPageAlloc::new();
        f.configure(FaultAttr { min_order: 2, times: 2, ..FaultAttr::every_nth(1) });
        assert!(!f.should_fail_alloc_page(GFP_KERNEL, 1));
        assert!(f.should_fail_alloc_page(GFP_KERNEL, 2));
        assert!(f.should_fail_alloc_page(GFP_KERNEL, 3));
        assert!(!f.should_fail_alloc_page(GFP_KERNEL, 3));
        assert_eq!(f.injected(), 2);
    }
}
