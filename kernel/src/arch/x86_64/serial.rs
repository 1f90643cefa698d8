//! The COM1 serial line: kernel console output and interrupt-driven input.
//!
//! Output goes through one [`IrqSpinlock`] so lines from interrupt handlers
//! and normal code never interleave. Input arrives on IRQ 4: the handler
//! drains the UART into a small ring buffer that the console reads with
//! [`read_byte_blocking`], halting the CPU while the line is idle.

use core::fmt::{self, Write};

use uart_16550::SerialPort;

use crate::arch::x86_64::{cpu, pic};
use crate::lib::sync::IrqSpinlock;

const COM1: u16 = 0x3F8;
const INPUT_CAPACITY: usize = 256;

// SAFETY: 0x3F8 is COM1 on every PC-compatible machine QEMU emulates.
static PORT: IrqSpinlock<SerialPort> = IrqSpinlock::new(unsafe { SerialPort::new(COM1) });
static INPUT: IrqSpinlock<InputRing> = IrqSpinlock::new(InputRing::new());

/// Bytes received but not yet read; the oldest are kept when it overflows.
struct InputRing {
    buf: [u8; INPUT_CAPACITY],
    head: usize,
    len: usize,
    dropped: u64,
}

impl InputRing {
    const fn new() -> Self {
        Self { buf: [0; INPUT_CAPACITY], head: 0, len: 0, dropped: 0 }
    }

    fn push(&mut self, byte: u8) {
        if self.len == INPUT_CAPACITY {
            self.dropped += 1;
            return;
        }
        self.buf[(self.head + self.len) % INPUT_CAPACITY] = byte;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.buf[self.head];
        self.head = (self.head + 1) % INPUT_CAPACITY;
        self.len -= 1;
        Some(byte)
    }
}

/// Status polls without a new byte after which input typed before boot is
/// taken to be all in (each poll is a port read, a round trip to the device
/// model; QEMU hands over the next byte microseconds after one is read).
const QUIET_POLLS: u32 = 10_000;

/// Programs the UART (38400 8N1, FIFO with a 14-byte threshold, receive
/// interrupt; `uart_16550`'s `init`), which resets the FIFO.
///
/// Input typed before boot waits in the UART (QEMU holds the rest back until
/// it is read), and the reset would drop it: it is moved to the input ring
/// first, until the line has been quiet for [`QUIET_POLLS`] polls.
pub fn init() {
    let mut port = PORT.lock();
    let mut input = INPUT.lock();
    let mut quiet = 0;
    while quiet < QUIET_POLLS {
        quiet = if receive_all(&mut port, &mut input) > 0 { 0 } else { quiet + 1 };
    }
    drop(input);
    port.init();
    drop(port);
    crate::lib::printk::register_console(write_fmt);
}

/// Unmasks the receive interrupt at the PIC (after the IDT is live), then
/// drains the UART once, as Linux's `serial8250_startup` clears it: the PIC
/// latches edges, and a receive condition raised before `pic::init` (input
/// typed during boot) would hold IRQ 4 high with no edge to come.
pub fn enable_input_irq() {
    pic::unmask(pic::IRQ_COM1);
    handle_irq();
}

/// Writes formatted text to the serial line.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let _ = PORT.lock().write_fmt(args);
}

/// Writes raw bytes (for line editing).
pub fn write_bytes(bytes: &[u8]) {
    let mut port = PORT.lock();
    for &b in bytes {
        port.send_raw(b);
    }
}

/// IRQ 4: move every received byte into the input ring.
pub fn handle_irq() {
    receive_all(&mut PORT.lock(), &mut INPUT.lock());
}

/// Moves the bytes the UART holds into `input`; returns how many.
fn receive_all(port: &mut SerialPort, input: &mut InputRing) -> usize {
    let mut n = 0;
    while let Ok(byte) = port.try_receive() {
        input.push(byte);
        n += 1;
    }
    n
}

/// The next input byte, if one has arrived.
pub fn try_read_byte() -> Option<u8> {
    INPUT.lock().pop()
}

/// Waits (halting between interrupts) for the next input byte.
pub fn read_byte_blocking() -> u8 {
    loop {
        let was_enabled = crate::lib::sync::local_irq_save();
        if let Some(byte) = INPUT.lock().pop() {
            crate::lib::sync::local_irq_restore(was_enabled);
            return byte;
        }
        // `sti; hlt` is atomic, so an IRQ between the check and the halt
        // wakes us up instead of being missed.
        cpu::enable_irqs_and_halt();
        if !was_enabled {
            x86_64::instructions::interrupts::disable();
        }
    }
}

/// Breaks the output lock so an oops or panic report always gets out.
pub fn emergency_unlock() {
    if PORT.is_locked() {
        // SAFETY: called only on the way to stopping the machine; the holder
        // (interrupted on this CPU) never resumes.
        unsafe { PORT.force_unlock() };
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(input_ring_keeps_order_and_counts_overflow)];

fn input_ring_keeps_order_and_counts_overflow() -> crate::lib::ktest::KResult {
    let mut ring = InputRing::new();
    for i in 0..INPUT_CAPACITY + 3 {
        ring.push(i as u8);
    }
    crate::kassert_eq!(ring.dropped, 3);
    for i in 0..INPUT_CAPACITY {
        crate::kassert_eq!(ring.pop(), Some(i as u8));
    }
    crate::kassert_eq!(ring.pop(), None);
    Ok(())
}
