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
    /// `true` promises Linux's `local_lock` discipline, which lets the page allocator
    /// protect a CPU's per-CPU lists with a plain flag instead of a `lock`-prefixed
    /// atomic (see [`LocalLock`]):
    ///
    /// 1. `cpu_id()` is exact (`< MAX_CPUS` of the allocator) and cannot change while
    ///    interrupts are disabled by [`Platform::irq_save`];
    /// 2. between `irq_save()` and `irq_restore()` nothing else runs on this CPU except
    ///    an NMI, and an NMI runs to completion before the interrupted code resumes
    ///    (NMIs do not nest; they only call the allocator's `try_`/`_nolock` paths).
    ///
    /// A platform where code may be preempted or migrated with "interrupts disabled"
    /// (host threads) must keep the default `false`: every per-CPU list set then has
    /// an atomic spin lock, and any thread may touch any CPU's lists.
    const CPU_LOCAL: bool = false;
}

/// The host platform: no interrupts, every thread is CPU 0 (so `CPU_LOCAL` is
/// `false`: host threads share "CPU 0"'s lists under an atomic lock).
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

/// Per-CPU data protection (Linux `local_lock_irqsave` + the `pcp->lock` trylock the
/// NMI-safe paths use), specialised at compile time by [`Platform::CPU_LOCAL`]:
///
/// * `CPU_LOCAL = false`: an atomic test-and-set spin lock (same as [`SpinLock`]).
/// * `CPU_LOCAL = true`: a plain `busy` flag, written with a Relaxed load and a Relaxed
///   store (no `lock` prefix), with interrupts disabled. Invariant: **only the owning
///   CPU ever takes it** (the caller guarantees this; see
///   `PageAlloc::pcp_lock_cpu`). Then the only code that can observe the flag in the
///   middle of a critical section is an NMI on the same CPU; a CPU sees its own
///   stores in program order, so a `try_lock` from that NMI reads `busy == true` and
///   fails. A compiler fence keeps the data accesses inside the busy window.
///   `lock()` on a busy flag can only be a re-entry from NMI context (a bug, it
///   would deadlock) and panics.
pub struct LocalLock<T, P: Platform = HostPlatform> {
    busy: AtomicBool,
    data: UnsafeCell<T>,
    _platform: PhantomData<fn() -> P>,
}

// SAFETY: as `SpinLock`: one holder at a time gets `&mut T` (atomic lock, or for
// CPU-local platforms the busy flag plus the owner-CPU-only rule).
unsafe impl<T: Send, P: Platform> Sync for LocalLock<T, P> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send, P: Platform> Send for LocalLock<T, P> {}

impl<T, P: Platform> LocalLock<T, P> {
    pub const fn new(data: T) -> Self {
        LocalLock { busy: AtomicBool::new(false), data: UnsafeCell::new(data), _platform: PhantomData }
    }

    /// Exclusive access without locking (`&mut self` proves nobody else has it).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Takes the lock, waiting for it on non-CPU-local platforms. `irq` is the state
    /// returned by the caller's own [`Platform::irq_save`] (done *before* the caller
    /// picked this CPU's lock); the guard restores it.
    ///
    /// # Safety
    /// If `P::CPU_LOCAL`: interrupts have been disabled since the caller read
    /// `P::cpu_id()`, and this lock belongs to that CPU (the owner-only rule).
    #[inline(always)]
    pub unsafe fn lock_saved(&self, irq: P::IrqState) -> LocalGuard<'_, T, P> {
        if P::CPU_LOCAL {
            if self.busy.load(Ordering::Relaxed) {
                local_lock_reentered();
            }
            self.busy.store(true, Ordering::Relaxed);
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            return LocalGuard { lock: self, irq };
        }
        loop {
            if self.busy.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return LocalGuard { lock: self, irq };
            }
            while self.busy.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// One attempt, never waits: safe from NMI context. On failure restores `irq`.
    ///
    /// # Safety
    /// As [`LocalLock::lock_saved`].
    #[inline(always)]
    pub unsafe fn try_lock_saved(&self, irq: P::IrqState) -> Option<LocalGuard<'_, T, P>> {
        let ok = if P::CPU_LOCAL {
            let free = !self.busy.load(Ordering::Relaxed);
            if free {
                self.busy.store(true, Ordering::Relaxed);
                core::sync::atomic::compiler_fence(Ordering::SeqCst);
            }
            free
        } else {
            self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
        };
        if ok {
            Some(LocalGuard { lock: self, irq })
        } else {
            P::irq_restore(irq);
            None
        }
    }

    /// Whether somebody holds the lock right now (a hint).
    pub fn is_locked(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }
}

#[cold]
#[inline(never)]
fn local_lock_reentered() -> ! {
    panic!("per-CPU data re-entered on its own CPU (normal allocator path called from NMI context?)")
}

/// Holds a [`LocalLock`]; releases it and restores interrupts when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LocalGuard<'l, T, P: Platform> {
    lock: &'l LocalLock<T, P>,
    irq: P::IrqState,
}

impl<T, P: Platform> Deref for LocalGuard<'_, T, P> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while we hold the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T, P: Platform> DerefMut for LocalGuard<'_, T, P> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as `deref`, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T, P: Platform> Drop for LocalGuard<'_, T, P> {
    #[inline(always)]
    fn drop(&mut self) {
        if P::CPU_LOCAL {
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            self.lock.busy.store(false, Ordering::Relaxed);
        } else {
            self.lock.busy.store(false, Ordering::Release);
        }
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

    struct LocalCpu;
    impl Platform for LocalCpu {
        type IrqState = ();
        fn irq_save() {}
        fn irq_restore(_: ()) {}
        const CPU_LOCAL: bool = true;
    }

    #[test]
    fn local_lock_both_modes() {
        // SAFETY (all calls): one thread, the only "CPU".
        unsafe {
            let l: LocalLock<u32> = LocalLock::new(1);
            let mut g = l.lock_saved(());
            *g += 1;
            assert!(l.try_lock_saved(()).is_none() && l.is_locked());
            drop(g);
            assert_eq!(*l.try_lock_saved(()).unwrap(), 2);
            let c: LocalLock<u32, LocalCpu> = LocalLock::new(1);
            let mut g = c.lock_saved(());
            *g += 1;
            assert!(c.try_lock_saved(()).is_none(), "an NMI on top of the owner sees the flag");
            drop(g);
            assert!(!c.is_locked());
            assert_eq!(*c.try_lock_saved(()).unwrap(), 2);
        }
    }

    #[test]
    #[should_panic(expected = "re-entered")]
    fn local_lock_reentry_panics() {
        let c: LocalLock<u32, LocalCpu> = LocalLock::new(1);
        // SAFETY: one thread, the only "CPU".
        let _g = unsafe { c.lock_saved(()) };
        let _h = unsafe { c.lock_saved(()) };
    }
}

/// Platforms for host tests that need several "CPUs": each test thread sets its
/// own CPU id with [`set_test_cpu`](testing::set_test_cpu).
#[cfg(test)]
pub(crate) mod testing {
    use super::Platform;

    std::thread_local! {
        static TEST_CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    /// Makes the calling thread "CPU" `cpu` for [`ThreadCpu`] and [`LocalCpu`].
    pub(crate) fn set_test_cpu(cpu: usize) {
        TEST_CPU.with(|c| c.set(cpu));
    }

    /// CPU id per thread; per-CPU data behind the atomic lock (threads may share an id).
    pub(crate) struct ThreadCpu;
    impl Platform for ThreadCpu {
        type IrqState = ();
        fn irq_save() {}
        fn irq_restore(_: ()) {}
        fn cpu_id() -> usize {
            TEST_CPU.with(|c| c.get())
        }
    }

    /// Keeps the `CPU_LOCAL` promise on the host, like the kernel: each thread sets
    /// its own CPU id and no two threads use one at the same time, so per-CPU data
    /// is protected by a plain flag, without `lock`-prefixed atomics.
    pub(crate) struct LocalCpu;
    impl Platform for LocalCpu {
        type IrqState = ();
        fn irq_save() {}
        fn irq_restore(_: ()) {}
        fn cpu_id() -> usize {
            TEST_CPU.with(|c| c.get())
        }
        const CPU_LOCAL: bool = true;
    }
}
