//! A user address space as the rest of the kernel sees it (Linux `struct
//! mm_struct`): [`Mm`] wraps [`mm::mman::UserMm`] — page tables, VMAs, the
//! per-process MM flags, brk, shared anonymous objects, RSS counters and the
//! memory system calls (`mmap`, `munmap`, `mprotect`, `madvise`, `brk`,
//! `prctl` THP) — plus the "current" address space that the page-fault
//! handler resolves faults in (Linux `current->mm`, loaded into CR3 by
//! `switch_mm`).
//!
//! `Mm` dereferences to `UserMm`, so `mm.space`, `mm.vmas`, `mm.mmap(..)` etc.
//! work directly; [`mm_ops`] supplies the THP knob and the page clearer the
//! populate paths need. Tests create an [`Mm`], [`activate`] it, touch its
//! memory from the kernel through the `user_access_begin`/`end` window (SMAP),
//! and [`deactivate`] it again.
//!
//! Every address space gets a unique id (its ASID, recorded in the reverse map
//! of its anonymous pages) and marks those pages movable through
//! [`crate::memory::migrate`], so compaction can move them.

use alloc::boxed::Box;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU16, Ordering};

use mm::gfp::Gfp;
use mm::mman::{MmOps, UserMm};
use mm::vma::{linear_pgoff, MapFixed, VmFlags, VmaKind};

use crate::arch::x86_64::cpu;
use crate::memory::page_alloc::KernelPageAlloc;
use crate::memory::pgtable::{clear_ops, kernel_root, new_user_space, tlb_finish, DirectMapPt, KernelClear, THP};
use crate::lib::sync::IrqSpinlock;

/// The kernel's instance of the portable address space.
pub type KernelUserMm = UserMm<'static, KernelPageAlloc, DirectMapPt>;

pub struct Mm(KernelUserMm);

impl Deref for Mm {
    type Target = KernelUserMm;
    fn deref(&self) -> &KernelUserMm {
        &self.0
    }
}

impl DerefMut for Mm {
    fn deref_mut(&mut self) -> &mut KernelUserMm {
        &mut self.0
    }
}

/// The THP knob and page clearer for [`UserMm`]'s methods that fault pages in
/// (`mmap` with `MAP_POPULATE`, `madvise(MADV_POPULATE_*)`, `handle_fault`).
pub fn mm_ops() -> MmOps<'static, KernelClear> {
    MmOps { thp: &THP, clear: clear_ops() }
}

/// The next address-space id; 0 is never handed out.
static NEXT_ASID: AtomicU16 = AtomicU16::new(1);

/// A fresh address-space id (Linux `mm->context.ctx_id`, 16 bits here because
/// the reverse map stores 16). After 65535 address spaces the counter wraps and
/// an id may be shared with a long-lived one; migration stays correct because it
/// checks that the entry at the reverse-map address maps the page.
fn alloc_asid() -> u16 {
    let prev = NEXT_ASID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| Some(id.checked_add(1).unwrap_or(1)))
        .unwrap_or(1);
    prev.max(1)
}

impl Mm {
    /// An empty user address space (kernel half shared) with a new id, whose
    /// anonymous pages are movable.
    pub fn new(gfp: Gfp) -> Result<Box<Mm>, mm::pgtable::NewSpaceError> {
        let mut space = new_user_space(alloc_asid(), gfp)?;
        space.set_anon_movable_ops(crate::memory::migrate::anon_movable_ops());
        Ok(Box::new(Mm(UserMm::new(space))))
    }

    /// Tears the address space down: every page, shared-object page and
    /// page-table page goes back to the allocator after the TLB flush (Linux
    /// `exit_mmap`).
    pub fn destroy(self: Box<Self>) {
        let Mm(mm) = *self;
        let mut tlb = crate::memory::pgtable::tlb_gather();
        mm.destroy(&mut tlb);
        tlb_finish(tlb);
    }
}

/// The address space in CR3 (None: the kernel's boot page tables).
static CURRENT: IrqSpinlock<Option<Box<Mm>>> = IrqSpinlock::new(None);

/// Makes `mm` current: loads its page tables (`switch_mm`).
pub fn activate(mm: Box<Mm>) {
    let mut current = CURRENT.lock();
    assert!(current.is_none(), "activate: another address space is current");
    // SAFETY: the new PML4 copied the kernel half from the boot root, so the
    // kernel's code, stack and direct map stay mapped.
    unsafe { cpu::write_cr3(mm.space.root().phys_addr()) };
    *current = Some(mm);
}

/// Switches back to the kernel's page tables and returns the address space
/// that was current.
pub fn deactivate() -> Option<Box<Mm>> {
    let mut current = CURRENT.lock();
    // SAFETY: the boot root maps the kernel half like every user space.
    unsafe { cpu::write_cr3(kernel_root().phys_addr()) };
    current.take()
}

/// Why [`activate_anon`] could not set up its address space.
#[derive(Debug)]
pub enum ActivateError {
    NewSpace(mm::pgtable::NewSpaceError),
    Mmap(mm::vma::MapError),
}

impl core::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NewSpace(e) => write!(f, "new address space: {:?}", e),
            Self::Mmap(e) => write!(f, "mmap_region: {:?}", e),
        }
    }
}

/// A fresh address space with one private anonymous VMA `[start, start +
/// len)`, readable and writable plus `extra` flags, made current: the setting
/// of the kernel-side experiments (`ptreclaim-demo`) and of the ktests that
/// fault in user pages. [`destroy_current`] ends it.
pub fn activate_anon(start: u64, len: u64, extra: VmFlags) -> Result<(), ActivateError> {
    let mut mm = Mm::new(mm::gfp::GFP_KERNEL).map_err(ActivateError::NewSpace)?;
    let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::MAYREAD | VmFlags::MAYWRITE | extra;
    mm.vmas
        .mmap_region(start, len, flags, VmaKind::AnonPrivate, linear_pgoff(start), MapFixed::NoReplace)
        .map_err(ActivateError::Mmap)?;
    activate(mm);
    Ok(())
}

/// Switches back to the kernel's page tables and tears the address space
/// that was current down (nothing if there was none).
pub fn destroy_current() {
    if let Some(mm) = deactivate() {
        mm.destroy();
    }
}

/// Runs `f` on the current address space. `None` if there is none, or if
/// its lock is held (a fault taken while the mm is locked must not spin).
pub fn with_current<R>(f: impl FnOnce(&mut Mm) -> R) -> Option<R> {
    let mut guard = CURRENT.try_lock()?;
    guard.as_mut().map(|mm| f(mm))
}

/// Writes `value` to user address `addr` of the current address space
/// (faulting the page in if needed).
///
/// # Safety
/// `addr` must be 8-byte aligned and inside a writable VMA of the current
/// address space; otherwise the fault cannot be resolved and the kernel oopses.
pub unsafe fn put_user_u64(addr: u64, value: u64) {
    cpu::user_access_begin();
    // SAFETY: per the contract, a fault here is resolved by the fault handler.
    unsafe { (addr as *mut u64).write_volatile(value) };
    cpu::user_access_end();
}

/// Reads a `u64` from user address `addr` of the current address space.
///
/// # Safety
/// As for [`put_user_u64`], with a readable VMA.
pub unsafe fn get_user_u64(addr: u64) -> u64 {
    cpu::user_access_begin();
    // SAFETY: per the contract, a fault here is resolved by the fault handler.
    let v = unsafe { (addr as *const u64).read_volatile() };
    cpu::user_access_end();
    v
}
