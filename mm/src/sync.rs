//! A minimal IRQ-aware spin lock with `try_lock`, and the platform hooks it needs.
//!
//! Linux counterpart: `spin_lock_irqsave()` / `spin_trylock_irqsave()`. The lock is
//! generic over a [`Platform`] so the kernel plugs in `pushf; cli` / `popf` and the
//! current CPU id, while host tests use [`HostPlatform`] (no interrupts, CPU 0).
//! Only `try_lock` and atomics are used on the NMI-safe paths of the page allocator.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// What the memory-management code needs from the CPU it runs on.
pub trait Platform: 'static {
    /// Saved interrupt state (the kernel: RFLAGS.IF).
    type IrqState: Copy;
    /// Disables interrupts on this CPU and returns the previous state.
    fn irq_save() -> Self::IrqState;
    /// Restores the interrupt state returned by [`Platform::irq_save`].
    fn irq_restore(state: Self::IrqState);
    /// Index of the current CPU, `0..MAX_CPUS`. Used to pick the per-CPU page
    /// lists; a wrong answer costs only contention, never correctness, because
    /// every per-CPU list has its own lock.
    fn cpu_id() -> usize {
        0
    }
}

/// The host platform: no interrupts, every thread is CPU 0.
pub struct HostPlatform;

impl Platform for HostPlatform {
    type IrqState = ();
    #[inline(always)]
    fn irq_save() {}
    #[inline(always)]
    fn irq_restore(_: ()) {}
}

/// A test-and-test-and-set spin lock that disables interrupts while held.
pub struct SpinLock<T, P: Platform = HostPlatform> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
    _platform: PhantomData<fn() -> P>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time (acquire/release on
// `locked`), so sharing the lock between threads is sound whenever `T` may be sent.
unsafe impl<T: Send, P: Platform> Sync for SpinLock<T, P> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send, P: Platform> Send for SpinLock<T, P> {}

impl<T, P: Platform> SpinLock<T, P> {
    pub const fn new(data: T) -> Self {
        SpinLock { locked: AtomicBool::new(false), data: UnsafeCell::new(data), _platform: PhantomData }
    }

    /// Spins until the lock is free (`spin_lock_irqsave`).
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T, P> {
        let irq = P::irq_save();
        loop {
            if self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return SpinGuard { lock: self, irq };
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// One attempt, never waits (`spin_trylock_irqsave`): safe from NMI context.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T, P>> {
        let irq = P::irq_save();
        if self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            Some(SpinGuard { lock: self, irq })
        } else {
            P::irq_restore(irq);
            None
        }
    }

    /// Whether somebody holds the lock right now (a hint, for statistics and tests).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Holds a [`SpinLock`]; releases it and restores interrupts when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinGuard<'l, T, P: Platform> {
    lock: &'l SpinLock<T, P>,
    irq: P::IrqState,
}

impl<T, P: Platform> Deref for SpinGuard<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by us.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T, P: Platform> DerefMut for SpinGuard<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while `locked` is held by us, and `&mut self`
        // makes this the only reference derived from the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T, P: Platform> Drop for SpinGuard<'_, T, P> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        P::irq_restore(self.irq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_lock_fails_while_held() {
        let l: SpinLock<u32> = SpinLock::new(1);
        let mut g = l.lock();
        *g += 1;
        assert!(l.try_lock().is_none());
        drop(g);
        assert_eq!(*l.try_lock().unwrap(), 2);
    }
}
