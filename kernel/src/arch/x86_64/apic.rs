//! The local APIC, used for inter-processor interrupts to this CPU (a
//! self-NMI for the NMI-safety tests of the page allocator) and for the
//! scheduler's periodic timer (calibrated against the TSC). Its registers are
//! memory-mapped; they are reached through the direct map as
//! `volatile::VolatilePtr`s made by one accessor ([`reg`]), one per register
//! of the [`Reg`] list. Hardware interrupts still come through the legacy PIC, which the
//! firmware routes via LINT0 in virtual-wire mode; enabling the APIC keeps
//! that routing.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use volatile::VolatilePtr;
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE_MSR: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// The local APIC registers this driver uses: 32-bit registers at their
/// offsets in the 4 KiB register page (all 16-byte aligned).
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
enum Reg {
    Id = 0x20,
    Eoi = 0xB0,
    Spurious = 0xF0,
    IcrLow = 0x300,
    IcrHigh = 0x310,
    LvtTimer = 0x320,
    TimerInitial = 0x380,
    TimerCurrent = 0x390,
    TimerDivide = 0x3E0,
}

/// Vector of the local APIC timer (Linux `LOCAL_TIMER_VECTOR`).
pub const TIMER_VECTOR: u8 = 0xEC;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0b0011;

/// APIC timer interrupts taken.
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

const SPURIOUS_VECTOR: u32 = 0xFF;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_NMI: u32 = 0b100 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;
const ICR_DELIVERY_INIT: u32 = 0b101 << 8;
const ICR_DELIVERY_STARTUP: u32 = 0b110 << 8;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;

/// The register page in the direct map (null until [`init`]).
static BASE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Register `r` of the local APIC, for volatile reads and writes. Panics
/// before [`init`] found the APIC (a kernel bug: callers check [`is_enabled`]).
fn reg(r: Reg) -> VolatilePtr<'static, u32> {
    let base = NonNull::new(BASE.load(Ordering::Relaxed)).expect("apic::init must run first");
    // SAFETY: `base` is the APIC's 4 KiB register page, which the direct map
    // maps for the kernel's lifetime (`init` stores it once); every `Reg` is a
    // 4-byte aligned 32-bit register inside that page. Device memory: no Rust
    // reference to it exists, so volatile accesses through the pointer alias
    // nothing, and accessing these registers only affects the local APIC.
    unsafe { VolatilePtr::new(base.byte_add(r as usize).cast::<u32>()) }
}

/// Finds the local APIC (through the direct map at `direct_map_offset`)
/// and software-enables it.
pub fn init(direct_map_offset: u64) {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU (all have an APIC).
    let msr = unsafe { Msr::new(IA32_APIC_BASE_MSR).read() };
    if msr & APIC_BASE_ENABLE == 0 {
        log::warn!("local APIC disabled by firmware; self-NMIs unavailable");
        return;
    }
    let phys = msr & 0x000f_ffff_ffff_f000;
    BASE.store((direct_map_offset + phys) as *mut u8, Ordering::Relaxed);
    reg(Reg::Spurious).write(SVR_ENABLE | SPURIOUS_VECTOR);
    log::info!("local APIC: id {} at phys {:#x}", id(), phys);
}

/// Software-enables the local APIC of the calling CPU (an application
/// processor: [`init`] found the register page on the boot CPU, and every
/// CPU's APIC sits at the same physical address). Returns false if the
/// firmware left this CPU's APIC disabled or [`init`] found none.
pub fn enable_this_cpu() -> bool {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let msr = unsafe { Msr::new(IA32_APIC_BASE_MSR).read() };
    if msr & APIC_BASE_ENABLE == 0 || !is_enabled() {
        return false;
    }
    reg(Reg::Spurious).write(SVR_ENABLE | SPURIOUS_VECTOR);
    true
}

/// Writes the ICR (destination first: writing the low half sends) and waits
/// until the APIC has sent the IPI.
fn send_ipi(apic_id: u32, low: u32) {
    reg(Reg::IcrHigh).write(apic_id << 24);
    reg(Reg::IcrLow).write(low);
    while reg(Reg::IcrLow).read() & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// INIT IPI to `apic_id` (assert, then the level de-assert older APICs
/// want; Linux `wakeup_secondary_cpu_via_init`). xAPIC ids only (< 255).
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, ICR_DELIVERY_INIT | ICR_TRIGGER_LEVEL | ICR_LEVEL_ASSERT);
    send_ipi(apic_id, ICR_DELIVERY_INIT | ICR_TRIGGER_LEVEL);
}

/// Start-up IPI to `apic_id`: the CPU starts in real mode at
/// `vector << 12` (a page below 1 MiB).
pub fn send_startup(apic_id: u32, vector: u8) {
    send_ipi(apic_id, ICR_DELIVERY_STARTUP | vector as u32);
}

pub fn is_enabled() -> bool {
    !BASE.load(Ordering::Relaxed).is_null()
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    reg(Reg::Id).read() >> 24
}

/// Sends a non-maskable interrupt to this CPU and waits until the APIC has
/// accepted it. The NMI arrives as soon as the CPU can take it (it cannot be
/// masked by `cli`).
pub fn send_self_nmi() {
    // The "self" shorthand only allows fixed delivery; address ourselves by id.
    reg(Reg::IcrHigh).write(id() << 24);
    reg(Reg::IcrLow).write(ICR_DELIVERY_NMI | ICR_LEVEL_ASSERT);
    while reg(Reg::IcrLow).read() & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// Starts the APIC timer in periodic mode, `hz` interrupts per second.
/// The timer's input clock is measured against the TSC over 10 ms.
/// Returns the measured timer frequency (counts per second), or `None`
/// without an APIC or a calibrated TSC.
pub fn start_timer(hz: u64) -> Option<u64> {
    let tsc_hz = crate::arch::x86_64::time::tsc_hz();
    if !is_enabled() || tsc_hz == 0 || hz == 0 {
        return None;
    }
    reg(Reg::TimerDivide).write(DIVIDE_BY_16);
    reg(Reg::LvtTimer).write(LVT_MASKED | TIMER_VECTOR as u32);
    reg(Reg::TimerInitial).write(u32::MAX);
    let start = super::cpu::rdtsc();
    while super::cpu::rdtsc() - start < tsc_hz / 100 {
        core::hint::spin_loop();
    }
    let counted = (u32::MAX - reg(Reg::TimerCurrent).read()) as u64;
    let timer_hz = counted * 100;
    let initial = (timer_hz / hz).clamp(1, u32::MAX as u64) as u32;
    reg(Reg::LvtTimer).write(LVT_PERIODIC | TIMER_VECTOR as u32);
    reg(Reg::TimerInitial).write(initial);
    Some(timer_hz)
}

/// Handles a timer interrupt: counts it, acknowledges it, and asks the
/// scheduler to preempt the running task at its next return to user mode.
pub fn handle_timer() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    reg(Reg::Eoi).write(0);
    if let Some(upcalls) = super::upcall::get() {
        (upcalls.timer_tick)();
    }
}

/// Spurious APIC interrupts need no EOI.
pub fn owns_spurious_vector(vector: u8) -> bool {
    vector as u32 == SPURIOUS_VECTOR
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(self_nmi_is_delivered_even_with_interrupts_off)];

static HOOK_RUNS: AtomicU64 = AtomicU64::new(0);

fn count_hook_run() {
    HOOK_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn self_nmi_is_delivered_even_with_interrupts_off() -> crate::lib::ktest::KResult {
    use super::nmi::{set_nmi_hook, NMIS};
    crate::kassert!(is_enabled(), "no local APIC");
    let before = NMIS.load(Ordering::SeqCst);
    let hook_before = HOOK_RUNS.load(Ordering::SeqCst);
    set_nmi_hook(Some(count_hook_run));
    let irqs = crate::lib::sync::local_irq_save();
    send_self_nmi();
    // The NMI is taken at the next instruction boundary, interrupts off or not.
    for _ in 0..1_000_000 {
        if NMIS.load(Ordering::SeqCst) > before {
            break;
        }
        core::hint::spin_loop();
    }
    let after = NMIS.load(Ordering::SeqCst);
    crate::lib::sync::local_irq_restore(irqs);
    set_nmi_hook(None);
    crate::kassert_eq!(after, before + 1);
    crate::kassert_eq!(HOOK_RUNS.load(Ordering::SeqCst), hook_before + 1);
    Ok(())
}
