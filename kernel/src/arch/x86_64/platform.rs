//! The `mm` crate's view of this CPU ([`mm::sync::Platform`]): how its locks
//! keep interrupts off (`pushf; cli` / `popf`, the same steps as the kernel's
//! `IrqSpinlock`) and whether per-CPU data is really CPU-local.

use mm::sync::Platform;

use crate::lib::sync::{local_irq_restore, local_irq_save};

/// The page allocator's view of the CPU.
pub struct KernelPlatform;

impl Platform for KernelPlatform {
    type IrqState = bool;
    /// One CPU, interrupts really off while a per-CPU list is held: its lists
    /// are touched only by itself (or an NMI on it), so a plain busy flag
    /// protects them (Linux `local_lock`), no `lock`-prefixed atomics.
    const CPU_LOCAL: bool = true;
    #[inline]
    fn irq_save() -> bool {
        local_irq_save()
    }
    #[inline]
    fn irq_restore(was_enabled: bool) {
        local_irq_restore(was_enabled)
    }
}

