//! Shared measuring helpers of the `mm` benchmarks: a serialised TSC read,
//! the median, a tiny deterministic PRNG, the kernel's CPU-local platform, and the
//! pair harness (interleaved batches of pairs) and the fragmenting warm-up of the heap
//! benchmarks. Each bench uses a part of it.
#![allow(dead_code)]

use std::alloc::Layout;
use std::ptr::NonNull;

/// The time-stamp counter, fenced on both sides so the measured code cannot
/// move across the read.
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: lfence and rdtsc have no memory effects; x86_64 always has both.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

/// Median of the samples (sorts them).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// xorshift64: reproducible pseudo-random numbers.
pub use mm::rng::XorShift64 as Rng;

/// The kernel's configuration on the host: one CPU whose per-CPU lists and caches
/// are protected by a plain flag (`CPU_LOCAL`, Linux `local_lock`) instead of an
/// atomic lock. Sound here because the benchmarks are single-threaded (the promise
/// of `Platform::CPU_LOCAL`: only this "CPU" touches its lists). Interrupt
/// disabling is a no-op on the host (the kernel pays `pushf; cli` / `popf`).
pub struct CpuLocal;
impl mm::sync::Platform for CpuLocal {
    type IrqState = ();
    #[inline(always)]
    fn irq_save() {}
    #[inline(always)]
    fn irq_restore(_: ()) {}
    const CPU_LOCAL: bool = true;
}

/// Mixed-size warm-up: 20000 allocations of 8..2048 bytes, every other one freed.
/// `op(Ok(layout))` allocates, `op(Err((ptr, layout)))` frees.
pub fn fragment(mut op: impl FnMut(Result<Layout, (NonNull<u8>, Layout)>) -> Option<NonNull<u8>>) {
    let mut rng = Rng(12345);
    let mut v = Vec::new();
    for _ in 0..20_000 {
        let l = Layout::from_size_align(8 + (rng.next() % 2040) as usize, 8).unwrap();
        v.push((op(Ok(l)).unwrap(), l));
    }
    for (i, (p, l)) in v.into_iter().enumerate() {
        if i % 2 == 0 {
            op(Err((p, l)));
        } else {
            let _ = p; // stays live for the rest of the run
        }
    }
}


/// Samples (batches) per contender in the pair harness.
pub const SAMPLES: usize = 501;
/// Pairs per batch between two TSC reads.
pub const BATCH: usize = 1000;

/// Cycles per pair of one batch.
#[inline(always)]
pub fn batch_cycles(pair: &mut impl FnMut()) -> f64 {
    let t0 = rdtsc();
    for _ in 0..BATCH {
        pair();
    }
    (rdtsc() - t0) as f64 / BATCH as f64
}

/// Above this many cycles per pair in the warm-up, an allocator gets only
/// [`SLOW_SAMPLES`] batches (linked_list_allocator's fragmented 4 KiB pair costs ~3M
/// cycles: 501 batches of it would take ~10 minutes).
const SLOW_PAIR_CYCLES: f64 = 100_000.0;
const SLOW_SAMPLES: usize = 11;

/// Median cycles per pair of four allocators, their batches interleaved.
pub fn pair_cycles4(mut a: impl FnMut(), mut b: impl FnMut(), mut c: impl FnMut(), mut d: impl FnMut()) -> [f64; 4] {
    let mut warm = [0.0f64; 4];
    for _ in 0..4 {
        warm[0] = batch_cycles(&mut a);
        warm[1] = batch_cycles(&mut b);
        warm[2] = batch_cycles(&mut c);
        warm[3] = batch_cycles(&mut d);
    }
    let n = warm.map(|w| if w > SLOW_PAIR_CYCLES { SLOW_SAMPLES } else { SAMPLES });
    let mut v: [Vec<f64>; 4] = Default::default();
    for i in 0..SAMPLES {
        if i < n[0] {
            v[0].push(batch_cycles(&mut a));
        }
        if i < n[1] {
            v[1].push(batch_cycles(&mut b));
        }
        if i < n[2] {
            v[2].push(batch_cycles(&mut c));
        }
        if i < n[3] {
            v[3].push(batch_cycles(&mut d));
        }
    }
    v.map(median)
}

/// Median cycles per pair of two allocators, their batches interleaved.
pub fn pair_cycles2(mut a: impl FnMut(), mut b: impl FnMut()) -> [f64; 2] {
    for _ in 0..4 {
        batch_cycles(&mut a);
        batch_cycles(&mut b);
    }
    let mut v: [Vec<f64>; 2] = Default::default();
    for _ in 0..SAMPLES {
        v[0].push(batch_cycles(&mut a));
        v[1].push(batch_cycles(&mut b));
    }
    v.map(median)
}

