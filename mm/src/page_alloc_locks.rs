//! Holding the page allocator's locks on purpose.
//!
//! Lock order of the allocator (outermost first): a CPU's per-CPU list lock
//! (`zone.pcp[cpu]`), then the zone lock (`zone.area`); zones in index order.
//! [`PageAlloc::hold_locks`] takes exactly these locks, in this order, and
//! keeps them until the returned guard is dropped. The kernel uses it to put
//! an NMI on top of an allocator that "holds its locks" — the situation
//! `try_alloc_pages()` / `free_pages_nolock()` exist for.

use crate::page_alloc::{FreeArea, PageAlloc, NR_ZONES};
use crate::pcp::PcpGuard;
use crate::sync::{Platform, SpinGuard};

/// Every lock of one CPU's view of the allocator, in fixed arrays (taking the
/// locks must not allocate: the kernel heap would need the very locks held).
/// Released on drop in the reverse order of taking them, so each guard
/// restores the interrupt state saved when it was taken and interrupts come
/// back on only when the outermost lock goes.
#[must_use = "the locks are released when this guard is dropped"]
pub struct HeldLocks<'l, P: Platform> {
    pcp: [Option<PcpGuard<'l, P>>; NR_ZONES],
    zones: [Option<SpinGuard<'l, FreeArea, P>>; NR_ZONES],
}

impl<P: Platform> Drop for HeldLocks<'_, P> {
    fn drop(&mut self) {
        for zone in self.zones.iter_mut().rev() {
            drop(zone.take());
        }
        for pcp in self.pcp.iter_mut().rev() {
            drop(pcp.take());
        }
    }
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    /// Takes the per-CPU list lock of `cpu` and the zone lock of every zone.
    /// Any normal allocation on this CPU deadlocks while the guard lives (on a
    /// CPU-local platform it panics instead); only the `_nolock` paths may run.
    ///
    /// On a [`Platform::CPU_LOCAL`] platform only the current CPU's lists may be
    /// held (the per-CPU flag is never written by another CPU): `cpu` must be the
    /// current CPU, or this panics.
    pub fn hold_locks(&self, cpu: usize) -> HeldLocks<'_, P> {
        let cpu = cpu.min(self.nr_cpus - 1);
        let mut held = HeldLocks { pcp: [const { None }; NR_ZONES], zones: [const { None }; NR_ZONES] };
        for (slot, z) in held.pcp.iter_mut().zip(&self.zones) {
            let guard = self.pcp_lock_cpu(z, cpu);
            *slot = Some(guard.expect("hold_locks: on a CPU-local platform, only the current CPU's lists"));
        }
        for (slot, z) in held.zones.iter_mut().zip(&self.zones) {
            *slot = Some(z.area.lock());
        }
        held
    }
}
