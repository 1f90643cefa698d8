//! Trap handling: the saved register frame, the dispatcher every vector goes
//! through, and the exception report (Linux's `die()`/oops output).
//!
//! Recoverable events (breakpoint, debug, hardware interrupts) return to the
//! interrupted code. Every other CPU exception prints a full report (vector
//! name, error code, RIP, CR2 for page faults, all registers) and ends the run
//! with a failure exit code: an unexpected exception is never silent.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use super::frame::{TrapFrame, Vector};
use super::{cpu, pic, qemu};

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection fault (#GP)",
    "page fault (#PF)",
    "reserved (15)",
    "x87 floating-point error (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point exception (#XM)",
    "virtualization exception (#VE)",
    "control protection exception (#CP)",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "hypervisor injection exception (#HV)",
    "VMM communication exception (#VC)",
    "security exception (#SX)",
    "reserved (31)",
];

/// Number of `int3` breakpoints handled (tests check recovery with it).
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts on vectors nobody claimed (spurious IRQ 7/15 included).
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Called by `trap_common` with the saved frame of every interrupt and exception.
pub extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    // Interrupt gates keep RFLAGS.AC: user space (`popf`) or an interrupted
    // user copy must not leave SMAP open for the handler (Linux `ASM_CLAC`).
    cpu::user_access_end();
    let vector = frame.vector as u8;
    match vector {
        Vector::BREAKPOINT => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            log::debug!("breakpoint at {:#x}", frame.rip);
        }
        Vector::DEBUG => log::debug!("debug trap at {:#x}", frame.rip),
        Vector::NMI => super::nmi::handle_nmi(frame),
        Vector::PAGE_FAULT => {
            // A failed user copy resumes at its fixup and returns EFAULT.
            let handled = super::upcall::get().is_some_and(|u| (u.page_fault)(frame));
            if !handled && (from_user(frame) || !super::uaccess::fixup(frame)) {
                user_fault_or_die(frame)
            }
        }
        0..=31 => user_fault_or_die(frame),
        super::apic::TIMER_VECTOR => super::apic::handle_timer(),
        v if pic::owns_vector(v) => match pic::irq_begin(v) {
            Some(irq) => {
                handle_legacy_irq(irq);
                pic::eoi(irq);
            }
            None => {
                SPURIOUS.fetch_add(1, Ordering::Relaxed);
            }
        },
        v if super::apic::owns_spurious_vector(v) => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
            log::warn!("unexpected interrupt on vector {}", vector);
        }
    }
    // Never switch tasks on an IST stack (NMI, #MC, #DF): a later NMI would
    // overwrite the parked frame. The next ordinary return to user mode
    // switches instead.
    let ist = matches!(vector, Vector::NMI | Vector::MACHINE_CHECK | Vector::DOUBLE_FAULT);
    if from_user(frame) && !ist {
        if let Some(upcalls) = super::upcall::get() {
            (upcalls.return_to_user)();
        }
    }
}

/// The devices behind the legacy PIC's IRQ lines.
fn handle_legacy_irq(irq: u8) {
    match irq {
        pic::IRQ_TIMER => super::pit::tick(),
        pic::IRQ_COM1 => super::serial::handle_irq(),
        _ => log::warn!("unhandled IRQ {}", irq),
    }
}

/// Whether the frame was interrupted in ring 3.
pub fn from_user(frame: &TrapFrame) -> bool {
    frame.cs & 3 == 3
}

/// An exception in user mode kills the process with the matching signal
/// (Linux `force_sig`); in kernel mode it is an oops.
fn user_fault_or_die(frame: &TrapFrame) {
    // #DF and #MC run on IST stacks: always fatal for the machine.
    if !from_user(frame) || matches!(frame.vector as u8, Vector::DOUBLE_FAULT | Vector::MACHINE_CHECK) {
        die(frame)
    }
    let signal = match frame.vector as u8 {
        0 | 16 | 19 => super::signal::SIGFPE,
        6 => super::signal::SIGILL,
        3 | 1 => super::signal::SIGTRAP,
        17 => super::signal::SIGBUS,
        _ => super::signal::SIGSEGV,
    };
    let name = EXCEPTION_NAMES.get(frame.vector as usize).copied().unwrap_or("exception");
    let addr = if frame.vector == Vector::PAGE_FAULT as u64 { cpu::read_cr2() } else { 0 };
    match super::upcall::get() {
        Some(upcalls) => (upcalls.force_sig)(signal, name, addr, frame.rip),
        // No process layer yet: no user mode either.
        None => die(frame),
    }
}

/// Prints the oops report for an unrecoverable exception and ends the run.
fn die(frame: &TrapFrame) -> ! {
    // The report must get out even if the serial lock was held when the
    // exception hit (e.g. a fault inside the logger).
    super::serial::emergency_unlock();
    log::error!("{}", Oops(frame));
    qemu::exit(qemu::ExitCode::Failure)
}

/// The oops text for a frame.
pub struct Oops<'a>(pub &'a TrapFrame);

impl fmt::Display for Oops<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fr = self.0;
        let name = EXCEPTION_NAMES.get(fr.vector as usize).copied().unwrap_or("interrupt");
        let mode = if fr.cs & 3 == 0 { "kernel" } else { "user" };
        writeln!(f, "Oops: {} (vector {}) in {} mode, error code {:#x}", name, fr.vector, mode, fr.error_code)?;
        if fr.vector == Vector::PAGE_FAULT as u64 {
            writeln!(f, "  fault address (CR2): {:#018x}  [{}]", cpu::read_cr2(), PageFaultError(fr.error_code))?;
        }
        writeln!(f, "  RIP: {:#06x}:{:#018x}  RFLAGS: {:#010x}", fr.cs, fr.rip, fr.rflags)?;
        writeln!(f, "  RSP: {:#06x}:{:#018x}  CR3: {:#018x}", fr.ss, fr.rsp, cpu::read_cr3())?;
        writeln!(f, "  RAX: {:#018x} RBX: {:#018x} RCX: {:#018x}", fr.rax, fr.rbx, fr.rcx)?;
        writeln!(f, "  RDX: {:#018x} RSI: {:#018x} RDI: {:#018x}", fr.rdx, fr.rsi, fr.rdi)?;
        writeln!(f, "  RBP: {:#018x} R8:  {:#018x} R9:  {:#018x}", fr.rbp, fr.r8, fr.r9)?;
        writeln!(f, "  R10: {:#018x} R11: {:#018x} R12: {:#018x}", fr.r10, fr.r11, fr.r12)?;
        write!(f, "  R13: {:#018x} R14: {:#018x} R15: {:#018x}", fr.r13, fr.r14, fr.r15)
    }
}

/// Decoded page-fault error code (Intel SDM vol. 3, 4.7).
pub struct PageFaultError(pub u64);

impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let what = if e & 1 != 0 { "protection violation" } else { "not-present page" };
        let access = if e & 16 != 0 {
            "instruction fetch"
        } else if e & 2 != 0 {
            "write"
        } else {
            "read"
        };
        let mode = if e & 4 != 0 { "user" } else { "supervisor" };
        write!(f, "{} {} of a {}", mode, access, what)?;
        if e & 8 != 0 {
            write!(f, ", reserved bit set")?;
        }
        if e & 32 != 0 {
            write!(f, ", protection key")?;
        }
        Ok(())
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(breakpoint_is_handled_and_execution_resumes),
    crate::ktest!(page_fault_error_code_is_decoded),
];

fn breakpoint_is_handled_and_execution_resumes() -> crate::lib::ktest::KResult {
    let before = BREAKPOINTS.load(Ordering::Relaxed);
    x86_64::instructions::interrupts::int3();
    x86_64::instructions::interrupts::int3();
    crate::kassert_eq!(BREAKPOINTS.load(Ordering::Relaxed), before + 2);
    Ok(())
}

fn page_fault_error_code_is_decoded() -> crate::lib::ktest::KResult {
    use alloc::format;
    crate::kassert_eq!(format!("{}", PageFaultError(0b00010)), "supervisor write of a not-present page");
    crate::kassert_eq!(format!("{}", PageFaultError(0b10101)), "user instruction fetch of a protection violation");
    Ok(())
}
