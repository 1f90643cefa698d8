//! The legacy 8259 programmable interrupt controller pair.
//!
//! IRQs 0-15 are remapped to vectors 32-47 (the CPU exceptions own 0-31).
//! Only the lines that have a handler are unmasked: IRQ 0 (PIT timer) and
//! IRQ 4 (COM1 receive). Spurious IRQs 7 and 15 are recognised through the
//! in-service register and not acknowledged, as Linux's `i8259.c` does.

use x86_64::instructions::port::Port;

use super::frame::Vector;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xA0;
const SLAVE_DATA: u16 = 0xA1;
const EOI: u8 = 0x20;
const READ_ISR: u8 = 0x0B;

pub const IRQ_TIMER: u8 = 0;
pub const IRQ_CASCADE: u8 = 2;
pub const IRQ_COM1: u8 = 4;

fn outb(port: u16, value: u8) {
    // SAFETY: the 8259 command/data ports; callers follow the ICW/OCW sequence.
    unsafe { Port::<u8>::new(port).write(value) };
    io_wait();
}

fn inb(port: u16) -> u8 {
    // SAFETY: reading the 8259 data/status ports has no side effect beyond the
    // register selected by the last OCW3.
    unsafe { Port::<u8>::new(port).read() }
}

/// A write to the unused port 0x80 gives the old PIC time to settle.
fn io_wait() {
    // SAFETY: port 0x80 is the POST diagnostic port; writes are harmless.
    unsafe { Port::<u8>::new(0x80).write(0) };
}

/// Remaps both PICs to vectors 32-47 and masks everything except the
/// cascade line; drivers unmask their line with [`unmask`].
pub fn init() {
    outb(MASTER_CMD, 0x11); // ICW1: edge triggered, cascade, ICW4 needed
    outb(SLAVE_CMD, 0x11);
    outb(MASTER_DATA, Vector::PIC_BASE); // ICW2: vector offsets
    outb(SLAVE_DATA, Vector::PIC_BASE + 8);
    outb(MASTER_DATA, 1 << IRQ_CASCADE); // ICW3: slave on IRQ 2
    outb(SLAVE_DATA, IRQ_CASCADE);
    outb(MASTER_DATA, 0x01); // ICW4: 8086 mode
    outb(SLAVE_DATA, 0x01);
    outb(MASTER_DATA, !(1 << IRQ_CASCADE));
    outb(SLAVE_DATA, 0xFF);
}

/// Unmasks one IRQ line.
pub fn unmask(irq: u8) {
    let (port, bit) = if irq < 8 { (MASTER_DATA, irq) } else { (SLAVE_DATA, irq - 8) };
    let mask = inb(port) & !(1 << bit);
    outb(port, mask);
}

/// Masks one IRQ line again (the profiler silences the fast PIT's IRQ 0).
pub fn mask(irq: u8) {
    let (port, bit) = if irq < 8 { (MASTER_DATA, irq) } else { (SLAVE_DATA, irq - 8) };
    let mask = inb(port) | (1 << bit);
    outb(port, mask);
}

/// Whether `vector` belongs to one of the two PICs.
pub fn owns_vector(vector: u8) -> bool {
    (Vector::PIC_BASE..Vector::PIC_BASE + 16).contains(&vector)
}

fn in_service(cmd_port: u16) -> u8 {
    outb(cmd_port, READ_ISR);
    inb(cmd_port)
}

/// Handles IRQ `vector`: calls the driver, then acknowledges the PIC(s).
/// Starts handling `vector`: its IRQ number, or `None` for a spurious IRQ 7
/// or 15 (no bit in service; the master still gets its EOI for the cascade).
pub fn irq_begin(vector: u8) -> Option<u8> {
    let irq = vector - Vector::PIC_BASE;
    if irq == 7 && in_service(MASTER_CMD) & 0x80 == 0 {
        return None;
    }
    if irq == 15 && in_service(SLAVE_CMD) & 0x80 == 0 {
        outb(MASTER_CMD, EOI); // the master did see the cascade line
        return None;
    }
    Some(irq)
}

/// Ends handling `irq` (end of interrupt to the controllers that saw it).
pub fn eoi(irq: u8) {
    if irq >= 8 {
        outb(SLAVE_CMD, EOI);
    }
    outb(MASTER_CMD, EOI);
}
