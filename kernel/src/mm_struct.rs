//! A user address space as the rest of the kernel sees it (Linux `struct
//! mm_struct`): page tables, VMAs and the per-process MM flags, plus the
//! "current" address space that the page-fault handler resolves faults in
//! (Linux `current->mm`, loaded into CR3 by `switch_mm`).
//!
//! Until processes exist (the userland issue), tests create an [`Mm`],
//! [`activate`] it, touch its memory from the kernel through the
//! `user_access_begin`/`end` window (SMAP), and [`deactivate`] it again.

use alloc::boxed::Box;

use mm::fault::FaultEnv;
use mm::gfp::Gfp;
use mm::tlb::MmuGather;
use mm::vma::VmaTree;

use crate::arch::x86_64::cpu;
use crate::pgtable::{kernel_root, new_user_space, tlb_finish, UserSpace};
use crate::sync::IrqSpinlock;

pub struct Mm {
    pub space: UserSpace,
    pub vmas: VmaTree,
    pub env: FaultEnv,
}

impl Mm {
    /// An empty user address space (kernel half shared).
    pub fn new(asid: u16, gfp: Gfp) -> Result<Box<Mm>, mm::pgtable::NewSpaceError> {
        Ok(Box::new(Mm { space: new_user_space(asid, gfp)?, vmas: VmaTree::new(), env: FaultEnv::default() }))
    }

    /// Tears the address space down: every page and page-table page goes
    /// back to the allocator after the TLB flush (Linux `exit_mmap`).
    pub fn destroy(self: Box<Self>) {
        let mm = *self;
        let mut tlb = MmuGather::new();
        mm.space.destroy(&mut tlb);
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
