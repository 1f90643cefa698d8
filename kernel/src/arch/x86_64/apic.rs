//! The local APIC, used for inter-processor interrupts to this CPU (a
//! self-NMI for the NMI-safety tests of the page allocator). Its registers are
//! memory-mapped; they are reached through the direct map with volatile
//! accesses. Hardware interrupts still come through the legacy PIC, which the
//! firmware routes via LINT0 in virtual-wire mode; enabling the APIC keeps
//! that routing.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE_MSR: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;

const REG_ID: usize = 0x20;
const REG_SPURIOUS: usize = 0xF0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;

const SPURIOUS_VECTOR: u32 = 0xFF;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_NMI: u32 = 0b100 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;

/// Virtual address of the register page (0 until [`init`]).
static BASE: AtomicU64 = AtomicU64::new(0);

fn reg(offset: usize) -> *mut u32 {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "apic::init must run first");
    (base as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `reg` points into the APIC's 4 KiB register page, mapped by the
    // direct map; APIC registers are 32-bit and must be accessed volatile.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; writes to these registers only affect the local APIC.
    unsafe { reg(offset).write_volatile(value) }
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
    BASE.store(direct_map_offset + phys, Ordering::Relaxed);
    write(REG_SPURIOUS, SVR_ENABLE | SPURIOUS_VECTOR);
    log::info!("local APIC: id {} at phys {:#x}", id(), phys);
}

pub fn is_enabled() -> bool {
    BASE.load(Ordering::Relaxed) != 0
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Sends a non-maskable interrupt to this CPU and waits until the APIC has
/// accepted it. The NMI arrives as soon as the CPU can take it (it cannot be
/// masked by `cli`).
pub fn send_self_nmi() {
    // The "self" shorthand only allows fixed delivery; address ourselves by id.
    write(REG_ICR_HIGH, id() << 24);
    write(REG_ICR_LOW, ICR_DELIVERY_NMI | ICR_LEVEL_ASSERT);
    while read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// Spurious APIC interrupts need no EOI.
pub fn owns_spurious_vector(vector: u8) -> bool {
    vector as u32 == SPURIOUS_VECTOR
}

pub const KTESTS: &[crate::ktest::KTest] = &[crate::ktest!(self_nmi_is_delivered_even_with_interrupts_off)];

static HOOK_RUNS: AtomicU64 = AtomicU64::new(0);

fn count_hook_run() {
    HOOK_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn self_nmi_is_delivered_even_with_interrupts_off() -> crate::ktest::KResult {
    use super::trap::{set_nmi_hook, NMIS};
    crate::kassert!(is_enabled(), "no local APIC");
    let before = NMIS.load(Ordering::SeqCst);
    let hook_before = HOOK_RUNS.load(Ordering::SeqCst);
    set_nmi_hook(Some(count_hook_run));
    let irqs = super::cpu::local_irq_save();
    send_self_nmi();
    // The NMI is taken at the next instruction boundary, interrupts off or not.
    for _ in 0..1_000_000 {
        if NMIS.load(Ordering::SeqCst) > before {
            break;
        }
        core::hint::spin_loop();
    }
    let after = NMIS.load(Ordering::SeqCst);
    super::cpu::local_irq_restore(irqs);
    set_nmi_hook(None);
    crate::kassert_eq!(after, before + 1);
    crate::kassert_eq!(HOOK_RUNS.load(Ordering::SeqCst), hook_before + 1);
    Ok(())
}
