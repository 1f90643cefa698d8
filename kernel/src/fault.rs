//! The page-fault handler (Linux `arch/x86/mm/fault.c`): faults on user
//! addresses of the current address space go to `mm::fault::handle_mm_fault`
//! (demand paging, THP); anything it cannot resolve, and every fault on a
//! kernel address, becomes an oops.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::fault::{handle_mm_fault, FaultAccess, FaultError};
use mm::tlb::MmuGather;

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::trap::TrapFrame;
use crate::pgtable::{clear_ops, tlb_finish, THP};

/// Faults resolved by mapping memory (Linux `pgfault` counts all faults).
pub static RESOLVED_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Error-code bits that no VMA can fix (reserved bit set, protection key).
const PF_RSVD: u64 = 1 << 3;
const PF_PK: u64 = 1 << 5;

/// Tries to resolve a `#PF`; `false` means the caller must oops.
pub fn do_page_fault(frame: &TrapFrame) -> bool {
    let addr = cpu::read_cr2();
    if addr >= crate::KERNEL_HALF_START {
        if let Some(report) = crate::vmalloc::describe_fault(addr) {
            log::error!("{}", report);
        }
        return false;
    }
    if frame.error_code & (PF_RSVD | PF_PK) != 0 {
        return false;
    }
    let access = FaultAccess::from_error_code(frame.error_code);
    let mut tlb = MmuGather::new();
    let result = crate::mm_struct::with_current(|mm| {
        handle_mm_fault(&mut mm.space, &mut mm.vmas, addr, access, &THP, &mm.env, clear_ops(), &mut tlb)
    });
    // Pages a failed fault freed go back only after the flush.
    tlb_finish(tlb);
    match result {
        Some(Ok(_)) => {
            RESOLVED_FAULTS.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(Err(e)) => {
            log::error!("page fault at {:#x} ({:?}): {}", addr, access, describe(e));
            false
        }
        None => {
            log::error!("page fault at {:#x}: no user address space is current (or it is locked)", addr);
            false
        }
    }
}

fn describe(e: FaultError) -> &'static str {
    match e {
        FaultError::BadAddress => "bad address",
        FaultError::NoVma => "no VMA maps it (SEGV_MAPERR)",
        FaultError::AccessDenied => "the VMA forbids this access (SEGV_ACCERR)",
        FaultError::Unsupported => "VMA kind not supported by the fault handler",
        FaultError::OutOfMemory => "out of memory",
    }
}
