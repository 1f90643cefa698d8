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
use crate::pcp::PerCpuPages;
use crate::sync::{Platform, SpinGuard};

/// Every lock of one CPU's view of the allocator; released on drop.
#[must_use = "the locks are released when this guard is dropped"]
pub struct HeldLocks<'l, P: Platform> {
    _pcp: Vec<SpinGuard<'l, PerCpuPages, P>>,
    _zones: Vec<SpinGuard<'l, FreeArea, P>>,
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    /// Takes the per-CPU list lock of `cpu` and the zone lock of every zone.
    /// Any normal allocation on this CPU deadlocks while the guard lives; only
    /// the `_nolock` paths may run.
    pub fn hold_locks(&self, cpu: usize) -> HeldLocks<'_, P> {
        let cpu = cpu.min(self.nr_cpus - 1);
        let pcp = self.zones.iter().map(|z| z.pcp[cpu].lock()).collect();
        let zones = self.zones.iter().map(|z| z.area.lock()).collect();
        HeldLocks { _pcp: pcp, _zones: zones }
    }
}
