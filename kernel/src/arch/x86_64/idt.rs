//! The interrupt descriptor table: one interrupt gate per vector, pointing at
//! the equally spaced entry stubs of [`super::entry_64`] (the entry for vector
//! `v` is `trap_stubs + 16 * v`); #DF, NMI and #MC run on their own IST stacks.

use core::mem::size_of;

use spin::Once;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::entry_64::{trap_stubs, STUB_SIZE};
use super::gdt;
use super::frame::Vector;

/// One 16-byte gate descriptor (Intel SDM vol. 3, 6.14.1).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct GateDescriptor {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (interrupts off on entry).
const INTERRUPT_GATE: u8 = 0x8E;
/// Same, but reachable from ring 3 with `int n` (breakpoint).
const USER_INTERRUPT_GATE: u8 = 0xEE;

impl GateDescriptor {
    fn new(handler: u64, selector: u16, ist: u8, type_attr: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist,
            type_attr,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([GateDescriptor; 256]);

static IDT: Once<Idt> = Once::new();

/// Builds the IDT (all 256 vectors go through `trap_dispatch`) and loads it.
pub fn init() {
    let idt = IDT.call_once(|| {
        // Only the address of the stub block is taken.
        let base = &raw const trap_stubs as u64;
        let cs = gdt::selectors().kernel_code.0;
        let mut entries = [GateDescriptor::default(); 256];
        for (vector, entry) in entries.iter_mut().enumerate() {
            let ist = match vector as u8 {
                Vector::DOUBLE_FAULT => gdt::DOUBLE_FAULT_IST,
                Vector::NMI | Vector::MACHINE_CHECK => gdt::NMI_IST,
                _ => 0,
            };
            let attr = if vector as u8 == Vector::BREAKPOINT { USER_INTERRUPT_GATE } else { INTERRUPT_GATE };
            *entry = GateDescriptor::new(base + vector as u64 * STUB_SIZE, cs, ist, attr);
        }
        Idt(entries)
    });
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT lives in a static for the kernel's lifetime and every
    // entry points at a valid stub in the kernel code segment.
    unsafe { lidt(&pointer) };
}
