//! User FPU/SSE state (Linux `arch/x86/kernel/fpu`): the kernel itself is
//! built soft-float and never touches x87/SSE registers, so the registers
//! always hold the running user task's state. [`init`] turns SSE on for user
//! space (`CR4.OSFXSR`, `CR4.OSXMMEXCPT`, `CR0.MP`, no `CR0.EM`) and records a
//! clean state (after `fninit`, MXCSR = 0x1f80) that new tasks start from;
//! the scheduler saves and restores [`FpuState`] with `fxsave`/`fxrstor` on
//! every task switch.

use core::arch::asm;

use spin::Once;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// The 512-byte `fxsave` area (16-byte aligned).
#[derive(Clone)]
#[repr(C, align(16))]
pub struct FpuState([u8; 512]);

static INIT_STATE: Once<FpuState> = Once::new();

/// Enables SSE for user space and captures the initial state.
pub fn init() {
    // SAFETY: enabling FXSR/SSE exceptions and clearing emulation only lets
    // x87/SSE instructions run; every x86_64 CPU has SSE2.
    unsafe {
        Cr0::update(|c| {
            c.remove(Cr0Flags::EMULATE_COPROCESSOR);
            c.insert(Cr0Flags::MONITOR_COPROCESSOR);
        });
        Cr4::update(|c| c.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE));
    }
    INIT_STATE.call_once(|| {
        let mut state = FpuState([0; 512]);
        let mxcsr: u32 = 0x1f80;
        // SAFETY: SSE is enabled above; `fninit` and `ldmxcsr` reset the
        // registers; `fxsave` writes 512 bytes into the aligned buffer.
        unsafe {
            asm!("fninit", "ldmxcsr [{}]", in(reg) &mxcsr, options(nostack));
            asm!("fxsave64 [{}]", in(reg) state.0.as_mut_ptr(), options(nostack));
        }
        // `fninit` leaves the register contents: start every task with
        // zeroed x87 (bytes 32..160) and XMM (160..416) registers.
        state.0[32..416].fill(0);
        state
    });
}

impl FpuState {
    /// The state a new task starts with.
    pub fn initial() -> FpuState {
        INIT_STATE.get().cloned().unwrap_or(FpuState([0; 512]))
    }

    /// Saves the registers into `self`.
    pub fn save(&mut self) {
        // SAFETY: 512 writable, 16-byte-aligned bytes; SSE is enabled.
        unsafe { asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) }
    }

    /// Loads the registers from `self`.
    pub fn restore(&self) {
        // SAFETY: the area was written by `fxsave` (reserved bits valid).
        unsafe { asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack)) }
    }
}
