//! The `syscall` instruction's entry point (Linux `entry_SYSCALL_64`).
//!
//! [`init`] programs the MSRs: `EFER.SCE` on, `STAR` with the kernel and user
//! segment bases (see the GDT layout in [`super::gdt`]), `LSTAR` pointing at
//! `syscall_entry`, `FMASK` clearing IF/TF/DF/AC/NT on entry, and
//! `KERNEL_GS_BASE` pointing at this CPU's [`PerCpu`] area.
//!
//! `syscall_entry` runs with the user's stack and GS: it `swapgs`es to the
//! per-CPU area, saves the user RSP there, switches to the current task's
//! kernel stack, and builds the same [`TrapFrame`] an interrupt from user mode
//! would (vector [`SYSCALL_VECTOR`]). The dispatcher gets the frame (number in
//! `rax`, arguments in `rdi rsi rdx r10 r8 r9`, result back in `rax`), and the
//! return goes through the common `trap_return` path with `iretq`, which also
//! restores RCX/R11 exactly as `syscall` left them (Linux does the same when
//! `sysret` is unsafe, e.g. for a non-canonical RIP).

use core::arch::global_asm;
use core::ptr::addr_of;

use x86_64::registers::model_specific::{Efer, EferFlags, GsBase, KernelGsBase, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::VirtAddr;

use super::gdt;
use super::trap::TrapFrame;

/// `TrapFrame::vector` of a frame built by `syscall_entry`.
pub const SYSCALL_VECTOR: u64 = 0x100;

/// This CPU's data reached through GS in the entry code (Linux `cpu_tss` /
/// `pcpu_hot`). Offsets are used by the assembly: keep the layout.
#[repr(C)]
pub struct PerCpu {
    /// Top of the running task's kernel stack (offset 0).
    pub kernel_rsp: u64,
    /// Scratch slot for the user RSP during entry (offset 8).
    pub user_rsp: u64,
}

/// The boot CPU's per-CPU area; written by the entry code and [`set_kernel_stack`].
static mut PER_CPU: PerCpu = PerCpu { kernel_rsp: 0, user_rsp: 0 };

global_asm!(
    r#"
    .section .text
    .global syscall_entry
syscall_entry:
    swapgs
    mov gs:[8], rsp
    mov rsp, gs:[0]
    push {user_ss}
    push qword ptr gs:[8]
    push r11
    push {user_cs}
    push rcx
    push 0
    push {vector}
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {dispatch}
    jmp trap_return
    "#,
    user_ss = const 0x1b,
    user_cs = const 0x23,
    vector = const SYSCALL_VECTOR,
    dispatch = sym syscall_dispatch_entry,
);

unsafe extern "C" {
    fn syscall_entry();
}

extern "C" fn syscall_dispatch_entry(frame: &mut TrapFrame) {
    crate::syscalls::dispatch(frame);
}

/// Enables `syscall` and points it at `syscall_entry`.
pub fn init() {
    let s = gdt::selectors();
    // The entry code pushes these selectors as literals.
    assert_eq!((s.user_data.0, s.user_code.0), (0x1b, 0x23), "GDT layout changed");
    // SAFETY: the selectors come from the loaded GDT in the order syscall and
    // sysret need (checked by the gdt ktest); LSTAR points at the entry code
    // above; GS bases only matter after `swapgs`, which the entry paths pair.
    unsafe {
        Star::write(s.user_code, s.user_data, s.kernel_code, s.kernel_data).expect("STAR selectors");
        LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
        SFMask::write(
            RFlags::INTERRUPT_FLAG
                | RFlags::TRAP_FLAG
                | RFlags::DIRECTION_FLAG
                | RFlags::ALIGNMENT_CHECK
                | RFlags::NESTED_TASK
                | RFlags::IOPL_LOW
                | RFlags::IOPL_HIGH,
        );
        // Kernel mode runs with GS = per-CPU area; KERNEL_GS_BASE holds the
        // user's GS base (0) until the first `swapgs` towards user mode.
        GsBase::write(VirtAddr::from_ptr(addr_of!(PER_CPU)));
        KernelGsBase::write(VirtAddr::zero());
        Efer::update(|e| e.insert(EferFlags::SYSTEM_CALL_EXTENSIONS));
    }
}

/// Sets the kernel stack for the next entry from user mode: TSS `rsp0` for
/// interrupts and the per-CPU slot for `syscall`.
pub fn set_kernel_stack(top: u64) {
    gdt::set_kernel_stack(top);
    // SAFETY: single CPU; the entry code reads this slot only on a syscall
    // from user mode, which cannot run concurrently with this store.
    unsafe { (&raw mut PER_CPU.kernel_rsp).write_volatile(top) };
}
