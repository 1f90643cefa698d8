//! Holding the page allocator's locks on purpose.
//!
//! Lock order of the allocator (outermost first): a CPU's per-CPU list lock
//! (`zone.pcp[cpu]`), then the zone lock (`zone.area`); zones in index order.
//! [`PageAlloc::hold_locks`] takes exactly these locks, in this order, and
//! keeps them until the returned guard is dropped. The kernel uses it to put
//! an NMI on top of an allocator that "holds its locks" — the situation
//! `try_alloc_pages()` / `free_pages_nolock()` exist for.

use alloc::vec::Vec;

use crate::page_alloc::{FreeArea, PageAlloc};
use crate::pcp::PcpGuard;
use crate::sync::{Platform, SpinGuard};

/// Every lock of one CPU's view of the allocator; released on drop, in the
/// reverse order of taking them (fields drop in declaration order), so each
/// guard restores the interrupt state saved when it was taken.
#[must_use = "the locks are released when this guard is dropped"]
pub struct HeldLocks<'l, P: Platform> {
    _zones: Vec<SpinGuard<'l, FreeArea, P>>,
    _pcp: Vec<PcpGuard<'l, P>>,
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
        let pcp = self
            .zones
            .iter()
            .map(|z| self.pcp_lock_cpu(z, cpu).expect("hold_locks: on a CPU-local platform, only the current CPU's lists"))
            .collect();
        let zones = self.zones.iter().map(|z| z.area.lock()).collect();
        HeldLocks { _zones: zones, _pcp: pcp }
    }
}
