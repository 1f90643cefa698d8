//! CPU control: enabling interrupts and halting (saving and restoring the
//! interrupt flag is `lib::sync`'s, next to the locks that need it), feature detection, protection bits
//! (NX, WP, SMEP, SMAP), the time-stamp counter and halting.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count, _rdtsc};

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

pub fn enable_irqs() {
    x86_64::instructions::interrupts::enable();
}

/// Atomically enables interrupts and halts until the next one (`sti; hlt`),
/// so a wake-up that arrives between the caller's check and the halt is not lost.
pub fn enable_irqs_and_halt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and has no side effects.
    unsafe { _rdtsc() }
}

/// Page-fault linear address (CR2).
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects; we run at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Physical address of the current PML4 (CR3 without its flag bits).
pub fn page_table_root_phys() -> u64 {
    read_cr3() & 0x000f_ffff_ffff_f000
}

/// Current page-table root (CR3).
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects; we run at CPL 0.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Opens a user-memory access window: with SMAP on, `stac` lets the kernel
/// touch user pages until [`user_access_end`] (Linux `user_access_begin`).
pub fn user_access_begin() {
    if Cr4::read().contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION) {
        // SAFETY: `stac` only sets RFLAGS.AC; SMAP is on, so the CPU has it.
        unsafe { asm!("stac", options(nomem, nostack)) };
    }
}

/// Closes the window opened by [`user_access_begin`] (`clac`).
pub fn user_access_end() {
    if Cr4::read().contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION) {
        // SAFETY: `clac` only clears RFLAGS.AC; SMAP is on, so the CPU has it.
        unsafe { asm!("clac", options(nomem, nostack)) };
    }
}

/// Loads a new page-table root (`mov cr3`), which also flushes every
/// non-global TLB entry.
///
/// # Safety
/// `root_phys` must be a PML4 that maps the kernel half exactly like the
/// current one (code, stack, direct map), or the next instruction faults.
pub unsafe fn write_cr3(root_phys: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { asm!("mov cr3, {}", in(reg) root_phys, options(nostack, preserves_flags)) };
}

/// Invalidates the TLB entry of one page (`invlpg`).
pub fn invlpg(addr: u64) {
    // SAFETY: invlpg only drops cached translations; any address is allowed.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// The protection features this CPU offers and which of them are on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protections {
    pub nx: bool,
    pub wp: bool,
    pub smep: bool,
    pub smap: bool,
}

/// What CPUID says about the features the kernel cares about.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuFeatures {
    pub nx: bool,
    /// 1 GiB pages (`pdpe1gb`, CPUID 0x8000_0001 EDX bit 26).
    pub gbpages: bool,
    pub smep: bool,
    pub smap: bool,
}

pub fn features() -> CpuFeatures {
    // Leaves above the reported maximum are not queried.
    let max_leaf = __cpuid(0).eax;
    let max_ext = __cpuid(0x8000_0000).eax;
    let leaf7 = if max_leaf >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
    let ext1 = if max_ext >= 0x8000_0001 { __cpuid(0x8000_0001).edx } else { 0 };
    CpuFeatures { nx: ext1 & (1 << 20) != 0, gbpages: ext1 & (1 << 26) != 0, smep: leaf7 & (1 << 7) != 0, smap: leaf7 & (1 << 20) != 0 }
}

/// CPU vendor string from CPUID leaf 0, e.g. `GenuineIntel`.
pub fn vendor() -> [u8; 12] {
    let r = __cpuid(0);
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

/// Turns on no-execute pages, kernel write protection, and SMEP/SMAP where
/// the CPU has them. Returns what is now on.
///
/// The bootloader maps nothing user-accessible, so SMEP/SMAP cannot trip
/// over existing mappings. `rdtsc` stays allowed in user mode (CR4.TSD
/// clear, as on Linux): the vDSO reads the clock with it.
pub fn enable_protections() -> Protections {
    let f = features();
    // SAFETY: setting EFER.NXE only allows the NX bit in page tables; setting
    // CR0.WP makes the kernel honour read-only pages; SMEP/SMAP only forbid
    // kernel access to user pages, and no user pages exist yet; clearing
    // CR4.TSD only lets user mode read the TSC.
    unsafe {
        if f.nx {
            Efer::update(|e| e.insert(EferFlags::NO_EXECUTE_ENABLE));
        }
        Cr0::update(|c| c.insert(Cr0Flags::WRITE_PROTECT));
        Cr4::update(|c| {
            c.remove(Cr4Flags::TIMESTAMP_DISABLE);
            if f.smep {
                c.insert(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION);
            }
            if f.smap {
                c.insert(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION);
            }
        });
    }
    current_protections()
}

/// Reads back the control registers.
pub fn current_protections() -> Protections {
    let cr4 = Cr4::read();
    Protections {
        nx: Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE),
        wp: Cr0::read().contains(Cr0Flags::WRITE_PROTECT),
        smep: cr4.contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION),
        smap: cr4.contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION),
    }
}
