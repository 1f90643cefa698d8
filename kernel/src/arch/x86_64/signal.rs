//! Signal numbers of the x86_64 ABI (Linux
//! `arch/x86/include/uapi/asm/signal.h`): the traps here pick one for a user
//! exception, and the process layer reports and delivers them.

pub const SIGILL: u8 = 4;
pub const SIGTRAP: u8 = 5;
pub const SIGBUS: u8 = 7;
pub const SIGFPE: u8 = 8;
pub const SIGKILL: u8 = 9;
pub const SIGSEGV: u8 = 11;
