//! The register frame every entry from interrupts, exceptions and `syscall`
//! saves (Linux `struct pt_regs`), and the vector numbers.

/// Register state saved by the entry stubs, lowest address first.
#[derive(Debug)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    /// CPU-pushed error code, or 0 for vectors that have none.
    pub error_code: u64,
    // Pushed by the CPU:
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Vector numbers.
pub struct Vector;

impl Vector {
    pub const DEBUG: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BREAKPOINT: u8 = 3;
    pub const DOUBLE_FAULT: u8 = 8;
    pub const PAGE_FAULT: u8 = 14;
    pub const MACHINE_CHECK: u8 = 18;
    /// The legacy PIC's IRQs 0-15 are remapped to these vectors.
    pub const PIC_BASE: u8 = 32;
}
