//! Everything that touches x86_64 hardware directly: descriptor tables, trap
//! and `syscall` entry, the legacy PIC and PIT, the local and I/O APIC, ACPI
//! tables, starting and parking the other CPUs, CPU feature control, the serial line, the TSC clock and the vDSO code that reads it in user mode, user-memory
//! access, the boot memory map and the address-space layout, QEMU's
//! debug-exit and fw_cfg devices. The rest of the kernel calls these through
//! small safe APIs; this layer calls up only through the [`upcall`] hooks
//! that `main` installs (page fault, signals, return to user, timer tick,
//! system calls).

pub mod acpi;
pub mod apic;
pub mod cpu;
pub mod entry_64;
pub mod fpu;
pub mod frame;
pub mod fw_cfg;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod layout;
pub mod memmap;
pub mod nmi;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod profile;
pub mod qemu;
pub mod rtc;
pub mod signal;
pub mod serial;
pub mod smpboot;
pub mod time;
pub mod trap;
pub mod uaccess;
pub mod upcall;
pub mod vdso;
