//! Everything that touches x86_64 hardware directly: descriptor tables, trap
//! entry, the legacy PIC and PIT, CPU feature control, QEMU's debug-exit and
//! fw_cfg devices. The rest of the kernel calls these through small safe APIs.

pub mod acpi;
pub mod apic;
pub mod cpu;
pub mod fpu;
pub mod fw_cfg;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod pic;
pub mod pit;
pub mod qemu;
pub mod rtc;
pub mod syscall;
pub mod trap;
