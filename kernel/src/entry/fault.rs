//! The page-fault handler (Linux `arch/x86/mm/fault.c`): faults on user
//! addresses of the current address space go to `mm::mman::UserMm::handle_fault`
//! (demand paging, THP, shared anonymous memory, RSS accounting); anything it
//! cannot resolve, and every fault on a kernel address, becomes an oops.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::fault::{FaultAccess, FaultError};

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::frame::TrapFrame;
use crate::memory::pgtable::tlb_finish;

/// Faults resolved by mapping memory (Linux `pgfault` counts all faults).
pub static RESOLVED_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Error-code bits that no VMA can fix (reserved bit set, protection key).
const PF_RSVD: u64 = 1 << 3;
const PF_PK: u64 = 1 << 5;

/// Tries to resolve a `#PF`; `false` means the caller must oops.
pub fn do_page_fault(frame: &TrapFrame) -> bool {
    let addr = cpu::read_cr2();
    if addr >= crate::arch::x86_64::layout::KERNEL_HALF_START {
        // A user access to the kernel half is a plain SIGSEGV: no report
        // about kernel memory.
        if frame.cs & 3 == 0 {
            if let Some(report) = crate::memory::vmalloc::describe_fault(addr) {
                log::error!("{}", report);
            }
        }
        return false;
    }
    if frame.error_code & (PF_RSVD | PF_PK) != 0 {
        return false;
    }
    let access = FaultAccess::from_error_code(frame.error_code);
    let mut tlb = crate::memory::pgtable::tlb_gather();
    let ops = crate::memory::mm_struct::mm_ops();
    let result = crate::memory::mm_struct::with_current(|mm| mm.handle_fault(addr, access, &ops, &mut tlb));
    // Pages a failed fault freed go back only after the flush.
    tlb_finish(tlb);
    match result {
        Some(Ok(_)) => {
            RESOLVED_FAULTS.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(Err(FaultError::OutOfMemory)) if crate::task::sched::current_pid() != 0 => {
            // First this process's own clean MADV_FREE pages: the lazyfree
            // shrinker cannot reach them while the fault holds the mm.
            let mut tlb = crate::memory::pgtable::tlb_gather();
            let freed = crate::memory::mm_struct::with_current(|mm| mm.reclaim_lazyfree(&mut tlb)).unwrap_or(0);
            tlb_finish(tlb);
            if freed > 0 {
                return true;
            }
            // Then kill the largest process. `true`: another one dies, retry
            // the fault once it has exited; `false`: this one dies — a user
            // copy then fails with EFAULT and the task exits on its way out.
            crate::task::process::out_of_memory(frame.cs & 3 == 3)
        }
        Some(Err(e)) => {
            // The caller reports it: SIGSEGV for user mode, EFAULT for a user
            // copy, or an oops.
            log::debug!("page fault at {:#x} ({:?}): {}", addr, access, describe(e));
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
