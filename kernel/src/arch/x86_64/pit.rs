//! The 8254 programmable interval timer: the periodic tick on IRQ 0 and the
//! one-shot on channel 2 that calibrates the TSC at boot (as Linux's
//! `pit_calibrate_tsc()` does).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use super::{cpu, pic};

/// Input clock of the PIT in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Periodic tick rate (Linux `HZ`).
pub const HZ: u64 = 100;

const CHANNEL0: u16 = 0x40;
const CHANNEL2: u16 = 0x42;
const COMMAND: u16 = 0x43;
const GATE_PORT: u16 = 0x61;

static JIFFIES: AtomicU64 = AtomicU64::new(0);

fn outb(port: u16, value: u8) {
    // SAFETY: PIT and speaker-gate ports; used only by this module.
    unsafe { Port::<u8>::new(port).write(value) };
}

fn inb(port: u16) -> u8 {
    // SAFETY: reading the speaker-gate port has no side effects.
    unsafe { Port::<u8>::new(port).read() }
}

/// Number of timer ticks since [`init`].
pub fn jiffies() -> u64 {
    JIFFIES.load(Ordering::Relaxed)
}

/// Extra work for every tick (tests that hammer a subsystem from interrupt context).
static TICK_HOOK: crate::lib::sync::FnHook = crate::lib::sync::FnHook::new();

/// Installs (`Some`) or removes (`None`) the tick hook. It runs in IRQ
/// context with interrupts off.
pub fn set_tick_hook(hook: Option<fn()>) {
    TICK_HOOK.set(hook);
}

/// Called from the IRQ 0 handler.
pub fn tick() {
    JIFFIES.fetch_add(1, Ordering::Relaxed);
    TICK_HOOK.call();
}

/// Programs channel 0 as a square wave of `hz` interrupts per second.
pub fn set_frequency(hz: u64) {
    program_channel0(hz, 0x36); // channel 0, lobyte/hibyte, mode 3, binary
}

/// Programs channel 0 as a rate generator (mode 2: the output drops for one
/// input clock per period), `hz` periods per second.
pub fn set_rate_generator(hz: u64) {
    program_channel0(hz, 0x34); // channel 0, lobyte/hibyte, mode 2, binary
}

fn program_channel0(hz: u64, command: u8) {
    let divisor = (PIT_HZ / hz.clamp(19, PIT_HZ)) as u16;
    let irqs = crate::lib::sync::local_irq_save();
    outb(COMMAND, command);
    outb(CHANNEL0, divisor as u8);
    outb(CHANNEL0, (divisor >> 8) as u8);
    crate::lib::sync::local_irq_restore(irqs);
}

/// Starts channel 0 at `HZ` and unmasks IRQ 0.
pub fn init() {
    set_frequency(HZ);
    pic::unmask(pic::IRQ_TIMER);
}

/// Measures TSC ticks per second against a 10 ms one-shot on channel 2.
/// Returns `None` if the PIT never fires (broken or absent).
pub fn calibrate_tsc_hz() -> Option<u64> {
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    // Gate on (bit 0), speaker off (bit 1).
    outb(GATE_PORT, (inb(GATE_PORT) & !0x02) | 0x01);
    outb(COMMAND, 0xB0); // channel 2, lobyte/hibyte, mode 0 (one-shot)
    outb(CHANNEL2, count as u8);
    outb(CHANNEL2, (count >> 8) as u8);
    let start = cpu::rdtsc();
    let mut spins: u64 = 0;
    // Bit 5 of port 0x61 mirrors channel 2's output, which goes high at 0.
    while inb(GATE_PORT) & 0x20 == 0 {
        spins += 1;
        if spins > 100_000_000 {
            return None;
        }
    }
    let elapsed = cpu::rdtsc() - start;
    Some(elapsed * 1000 / MS)
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(timer_interrupts_arrive_while_halted)];

fn timer_interrupts_arrive_while_halted() -> crate::lib::ktest::KResult {
    crate::kassert!(crate::lib::sync::irqs_enabled(), "interrupts are off in the test runner");
    let start = jiffies();
    // Each `hlt` returns on the next interrupt; 5 ticks take 50 ms at HZ=100.
    for _ in 0..10_000 {
        if jiffies() >= start + 5 {
            break;
        }
        x86_64::instructions::hlt();
    }
    crate::kassert!(jiffies() >= start + 5, "timer stuck at {} jiffies (start {})", jiffies(), start);
    Ok(())
}
