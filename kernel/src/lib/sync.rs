//! Kernel locks.
//!
//! [`IrqSpinlock`] is Linux's `spin_lock_irqsave()`: a spin lock whose guard
//! also keeps local interrupts disabled, so a handler that takes the same lock
//! can never interrupt its holder and deadlock. Use it for anything an
//! interrupt handler touches (serial port, input ring, heap). Code that may run
//! in NMI context must only use [`IrqSpinlock::try_lock`].
//!
//! Lock order (outermost first): `heap` → `serial`. The console input ring is
//! only taken on its own.

use core::ops::{Deref, DerefMut};

use x86_64::instructions::interrupts;

/// Whether local interrupts are enabled (Linux `!irqs_disabled()`).
#[inline]
pub fn irqs_enabled() -> bool {
    interrupts::are_enabled()
}

/// Disables local interrupts; returns whether they were enabled (Linux
/// `local_irq_save`). The one hardware step locks need, taken straight from
/// the `x86_64` crate so that this bottom layer names nothing of `arch/`.
#[inline]
pub fn local_irq_save() -> bool {
    let was = irqs_enabled();
    interrupts::disable();
    was
}

/// Re-enables interrupts if `was_enabled` (Linux `local_irq_restore`).
#[inline]
pub fn local_irq_restore(was_enabled: bool) {
    if was_enabled {
        interrupts::enable();
    }
}

/// A spin lock that disables local interrupts while held.
pub struct IrqSpinlock<T> {
    inner: spin::Mutex<T>,
}

/// Guard of an [`IrqSpinlock`]; restores the saved interrupt state on drop.
pub struct IrqSpinlockGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    irqs_were_enabled: bool,
}

impl<T> IrqSpinlock<T> {
    pub const fn new(value: T) -> Self {
        Self { inner: spin::Mutex::new(value) }
    }

    /// Disables interrupts, then spins until the lock is free.
    pub fn lock(&self) -> IrqSpinlockGuard<'_, T> {
        let irqs_were_enabled = local_irq_save();
        IrqSpinlockGuard { guard: Some(self.inner.lock()), irqs_were_enabled }
    }

    /// Takes the lock only if it is free right now (NMI-safe).
    pub fn try_lock(&self) -> Option<IrqSpinlockGuard<'_, T>> {
        let irqs_were_enabled = local_irq_save();
        match self.inner.try_lock() {
            Some(guard) => Some(IrqSpinlockGuard { guard: Some(guard), irqs_were_enabled }),
            None => {
                local_irq_restore(irqs_were_enabled);
                None
            }
        }
    }

    /// Whether someone holds the lock (for diagnostics only).
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// Breaks the lock so the panic path can still print.
    ///
    /// # Safety
    /// The caller must guarantee the current holder never touches the data
    /// again (the panic handler: the holder is on this CPU and will not resume).
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded to the caller's contract above.
        unsafe { self.inner.force_unlock() }
    }
}

impl<T> Deref for IrqSpinlockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard is present until drop")
    }
}

impl<T> DerefMut for IrqSpinlockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard is present until drop")
    }
}

impl<T> Drop for IrqSpinlockGuard<'_, T> {
    fn drop(&mut self) {
        // Release the lock first, then re-enable interrupts (unlock; irqrestore).
        drop(self.guard.take());
        local_irq_restore(self.irqs_were_enabled);
    }
}

/// A `fn()` slot that interrupt or NMI context calls and normal code sets
/// or clears, using one atomic word (no lock, so it is NMI-safe).
pub struct FnHook(core::sync::atomic::AtomicUsize);

impl FnHook {
    pub const fn new() -> Self {
        Self(core::sync::atomic::AtomicUsize::new(0))
    }

    /// Installs (`Some`) or removes (`None`) the function.
    pub fn set(&self, hook: Option<fn()>) {
        self.0.store(hook.map_or(0, |f| f as usize), core::sync::atomic::Ordering::SeqCst);
    }

    /// Calls the installed function, if any.
    pub fn call(&self) {
        let raw = self.0.load(core::sync::atomic::Ordering::SeqCst);
        if raw != 0 {
            // SAFETY: the only non-zero values ever stored are `fn()` pointers (`set`).
            let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(raw) };
            f();
        }
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(irq_spinlock_disables_and_restores_interrupts)];

fn irq_spinlock_disables_and_restores_interrupts() -> crate::lib::ktest::KResult {
    let lock = IrqSpinlock::new(5u32);
    crate::kassert!(irqs_enabled(), "test runner runs with interrupts on");
    {
        let mut guard = lock.lock();
        *guard += 1;
        crate::kassert!(!irqs_enabled(), "interrupts must be off while the lock is held");
        crate::kassert!(lock.try_lock().is_none(), "try_lock must fail while held");
        crate::kassert!(!irqs_enabled(), "failed try_lock must not re-enable interrupts");
    }
    crate::kassert!(irqs_enabled(), "interrupts restored after unlock");
    crate::kassert_eq!(*lock.try_lock().expect("free lock"), 6);
    Ok(())
}
