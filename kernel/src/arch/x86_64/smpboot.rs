//! Bringing up the application processors (APs) and parking them: the first
//! step of SMP (Linux `arch/x86/kernel/smpboot.c` and
//! `arch/x86/realmode/rm/trampoline_64.S`).
//!
//! The boot CPU (BSP, CPU 0) copies a real-mode trampoline to four free pages
//! below 1 MiB and starts each enabled processor of the MADT with the Intel
//! SDM's MP initialisation sequence: INIT IPI, 10 ms, start-up IPI (SIPI) with
//! the trampoline's page number as vector, 200 µs, a second SIPI. Each AP
//! then checks in (an atomic counter) within [`CHECKIN_TIMEOUT_US`]; one that
//! does not is reported, not fatal.
//!
//! **Where the trampoline lives.** The page allocator never hands out frames
//! below 1 MiB (`memory::page_alloc` keeps them reserved), so nothing else
//! uses them. [`smp_init`] takes the highest 16 KiB window below 1 MiB that
//! the boot memory map marks usable (and not the first 64 KiB, the real-mode
//! IVT/BIOS data area): page 0 holds code, GDT and parameters, pages 1-3 a
//! temporary page table (PML4, PDPT, PD). The window stays reserved for the
//! trampoline for the kernel's life (a later CPU hot-add reuses it).
//!
//! **Paging on the way up.** The trampoline enables paging in 32-bit code, so
//! its CR3 must be below 4 GiB, and the instruction after `mov cr0` must be
//! identity-mapped. Like Linux's `trampoline_pgd`, the temporary PML4 maps the
//! low 2 MiB 1:1 (one 2 MiB page) and copies the kernel half (entries
//! 256-511) of the kernel's root; the 64-bit part of the trampoline jumps to
//! [`ap_start`] in the kernel image, which then loads the real kernel root
//! (which may be anywhere in physical memory). The temporary PML4 is in
//! low memory, so the 4 GiB limit always holds.
//!
//! **What the AP loads.** CR0, CR4 and EFER as the BSP has them (WP, PGE,
//! OSFXSR, SMEP/SMAP, NXE …; PCIDE only after the kernel root is loaded,
//! since it may not be set outside long mode), its own GDT and TSS with its
//! own IST stacks ([`gdt::new_ap_gdt`], built by the BSP beforehand), the
//! shared IDT, and its local APIC software-enabled. It then marks itself
//! online and parks in `cli; hlt` forever: nothing routes interrupts to APs
//! yet, and an NMI or INIT would find a valid IDT and TSS.
//!
//! APs are started one at a time with one shared parameter block. The AP
//! takes its stack with an atomic exchange (leaving 0); a CPU that wakes after
//! the BSP gave up finds 0 and halts in the trampoline instead of sharing a
//! stack. If an AP took its stack but never checked in, the BSP stops
//! starting further CPUs (the late AP might still read their parameters).

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use bootloader_api::info::MemoryRegionKind;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Efer;

use crate::arch::x86_64::{acpi, apic, cpu, gdt, idt, memmap, time};

/// CPUs this kernel tracks (the online mask is one `u64`).
pub const MAX_CPUS: usize = 64;
/// How long the BSP waits for an AP to check in: 5 s, as Linux's `do_boot_cpu`
/// (a vCPU thread of a loaded host may start late; only a dead AP costs it).
pub const CHECKIN_TIMEOUT_US: u64 = 5_000_000;
/// Size of each AP's boot stack (as a task's kernel stack).
pub const AP_STACK_SIZE: usize = 64 * 1024;

const PAGE_SIZE: u64 = 4096;
/// Trampoline code page + PML4 + PDPT + PD.
const TRAMPOLINE_PAGES: u64 = 4;
const LOW_MEMORY_END: u64 = 1 << 20;
const TRAMPOLINE_MIN: u64 = 0x1_0000;
const EFER_LMA: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const PTE_PRESENT_RW: u64 = 0b11;
const PTE_HUGE: u64 = 1 << 7;

/// Bit `n` set: logical CPU `n` is online (CPU 0 is the BSP).
static CPU_ONLINE_MASK: AtomicU64 = AtomicU64::new(0);
static NR_ONLINE: AtomicU32 = AtomicU32::new(0);
/// APIC id of each logical CPU (valid where the online bit is set).
static CPU_APIC_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// Parameters for the AP being started (one at a time), set by the BSP before
/// the INIT IPI and read by [`ap_start`].
static AP_CPU: AtomicU32 = AtomicU32::new(0);
static AP_GDT: AtomicPtr<gdt::ApGdt> = AtomicPtr::new(core::ptr::null_mut());
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);
static BSP_CR4: AtomicU64 = AtomicU64::new(0);

// The trampoline. Entered by a SIPI in real mode at CS = page << 8, IP = 0;
// addresses inside it are offsets from `smp_trampoline_start` (the copy's
// physical base is computed from CS into %esi). The BSP patches the GDT
// base, the two far-jump targets and the parameters in the copy.
core::arch::global_asm!(
    r#"
.pushsection .text.smp_trampoline, "ax"
.balign 16
.global smp_trampoline_start
smp_trampoline_start:
.code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    xor %esi, %esi
    mov %cs, %si
    shl $4, %esi
    lgdtl (smp_tr_gdt_desc - smp_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *(smp_tr_jmp32 - smp_trampoline_start)
.code32
.global smp_tr_start32
smp_tr_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov (smp_tr_cr4 - smp_trampoline_start)(%esi), %eax
    mov %eax, %cr4
    mov (smp_tr_pml4 - smp_trampoline_start)(%esi), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    mov (smp_tr_efer - smp_trampoline_start)(%esi), %eax
    mov (smp_tr_efer + 4 - smp_trampoline_start)(%esi), %edx
    wrmsr
    mov (smp_tr_cr0 - smp_trampoline_start)(%esi), %eax
    mov %eax, %cr0
    ljmpl *(smp_tr_jmp64 - smp_trampoline_start)(%esi)
.code64
.global smp_tr_start64
smp_tr_start64:
    mov %esi, %esi
    xor %eax, %eax
    xchg %rax, (smp_tr_stack - smp_trampoline_start)(%rsi)
    test %rax, %rax
    jz 2f
    mov %rax, %rsp
    and $-16, %rsp
    mov (smp_tr_entry - smp_trampoline_start)(%rsi), %rax
    call *%rax
2:
    cli
    hlt
    jmp 2b
.balign 8
.global smp_tr_gdt
smp_tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
.global smp_tr_gdt_desc
smp_tr_gdt_desc:
    .word 31
    .long 0
.balign 8
.global smp_tr_jmp32
smp_tr_jmp32:
    .long 0
    .word 0x08
.balign 8
.global smp_tr_jmp64
smp_tr_jmp64:
    .long 0
    .word 0x18
.balign 8
.global smp_tr_cr0
smp_tr_cr0:
    .long 0
.global smp_tr_cr4
smp_tr_cr4:
    .long 0
.global smp_tr_pml4
smp_tr_pml4:
    .long 0
.balign 8
.global smp_tr_efer
smp_tr_efer:
    .quad 0
.global smp_tr_stack
smp_tr_stack:
    .quad 0
.global smp_tr_entry
smp_tr_entry:
    .quad 0
.global smp_trampoline_end
smp_trampoline_end:
.code64
.popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_end: u8;
    static smp_tr_start32: u8;
    static smp_tr_start64: u8;
    static smp_tr_gdt: u8;
    static smp_tr_gdt_desc: u8;
    static smp_tr_jmp32: u8;
    static smp_tr_jmp64: u8;
    static smp_tr_cr0: u8;
    static smp_tr_cr4: u8;
    static smp_tr_pml4: u8;
    static smp_tr_efer: u8;
    static smp_tr_stack: u8;
    static smp_tr_entry: u8;
}

/// Offset of a trampoline symbol from the trampoline's start.
fn tr_off(sym: *const u8) -> u64 {
    sym as u64 - (&raw const smp_trampoline_start) as u64
}

/// Why the APs were not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    NoApic,
    NoMadt(acpi::AcpiError),
    /// No usable 16 KiB window below 1 MiB in the memory map.
    NoLowMemory,
    NoTscClock,
}

/// The highest usable `TRAMPOLINE_PAGES` window in [64 KiB, 1 MiB).
fn find_trampoline_window() -> Option<u64> {
    let size = TRAMPOLINE_PAGES * PAGE_SIZE;
    memmap::facts()
        .regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .filter_map(|r| {
            let start = r.start.max(TRAMPOLINE_MIN).next_multiple_of(PAGE_SIZE);
            let end = r.end.min(LOW_MEMORY_END) & !(PAGE_SIZE - 1);
            (end >= start + size).then(|| end - size)
        })
        .max()
}

/// Busy-waits `us` microseconds on the TSC.
fn udelay(us: u64) {
    let ticks = time::tsc_hz() / 1_000_000 * us;
    let start = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

fn mark_online(cpu_nr: u32, apic_id: u32) {
    CPU_APIC_ID[cpu_nr as usize].store(apic_id, Ordering::Relaxed);
    CPU_ONLINE_MASK.fetch_or(1 << cpu_nr, Ordering::Release);
    NR_ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// CPUs online (the BSP counts once [`smp_init`] ran).
pub fn nr_online() -> u32 {
    NR_ONLINE.load(Ordering::Acquire)
}

/// Bit `n` set: logical CPU `n` is online.
pub fn cpu_online_mask() -> u64 {
    CPU_ONLINE_MASK.load(Ordering::Acquire)
}

/// APIC id of online logical CPU `n`.
pub fn cpu_apic_id(n: usize) -> Option<u32> {
    (n < MAX_CPUS && cpu_online_mask() & (1 << n) != 0).then(|| CPU_APIC_ID[n].load(Ordering::Relaxed))
}

/// Starts every enabled processor of the MADT and parks it. `kernel_root` is
/// the physical address of the kernel's PML4; `alloc_stack` returns the top
/// of a fresh [`AP_STACK_SIZE`] kernel stack (never freed). Returns the
/// number of CPUs online, the BSP included; logs the `smp:` lines.
pub fn smp_init(kernel_root: u64, alloc_stack: &mut dyn FnMut() -> Option<u64>) -> Result<u32, SmpError> {
    if !apic::is_enabled() {
        return Err(SmpError::NoApic);
    }
    let bsp_apic_id = apic::id();
    if cpu_online_mask() == 0 {
        mark_online(0, bsp_apic_id);
    }
    let madt = acpi::madt().map_err(SmpError::NoMadt)?;
    if madt.nr_enabled <= 1 {
        log::info!("smp: the MADT lists {} CPU; running on CPU 0", madt.nr_enabled);
        return Ok(nr_online());
    }
    if time::tsc_hz() == 0 {
        return Err(SmpError::NoTscClock);
    }
    let base = find_trampoline_window().ok_or(SmpError::NoLowMemory)?;
    log::debug!("smp: trampoline at phys {:#x}, {} pages", base, TRAMPOLINE_PAGES);
    // SAFETY: `base` starts TRAMPOLINE_PAGES usable, page-aligned pages below
    // 1 MiB that the page allocator never hands out and nothing else uses;
    // the direct map covers them.
    unsafe { install_trampoline(base, kernel_root) };
    KERNEL_CR3.store(kernel_root, Ordering::Relaxed);
    BSP_CR4.store(Cr4::read_raw(), Ordering::Relaxed);
    let stack_slot = {
        let p = memmap::phys_to_virt(base + tr_off(&raw const smp_tr_stack)) as *const AtomicU64;
        // SAFETY: an 8-byte aligned slot in the trampoline page (direct map),
        // shared with the AP's `xchg`; valid for the kernel's life.
        unsafe { &*p }
    };
    let vector = (base / PAGE_SIZE) as u8;

    for apic_id in madt.enabled_apic_ids.iter().flatten().copied() {
        if apic_id == bsp_apic_id {
            continue;
        }
        let cpu_nr = nr_online();
        if cpu_nr as usize >= MAX_CPUS {
            log::warn!("smp: more than {} CPUs; APIC id {} and later stay off", MAX_CPUS, apic_id);
            break;
        }
        if apic_id >= 0xff {
            log::warn!("smp: APIC id {} needs x2APIC; not started", apic_id);
            continue;
        }
        let Some(stack_top) = alloc_stack() else {
            log::warn!("smp: no memory for a stack for APIC id {}", apic_id);
            break;
        };
        // Built here, by the BSP: the AP must not take locks or allocate.
        let ap_gdt = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt::new_ap_gdt()));
        AP_GDT.store(ap_gdt, Ordering::Relaxed);
        AP_CPU.store(cpu_nr, Ordering::Relaxed);
        stack_slot.store(stack_top, Ordering::SeqCst);

        apic::send_init(apic_id);
        udelay(10_000);
        apic::send_startup(apic_id, vector);
        udelay(200);
        apic::send_startup(apic_id, vector);

        let start = cpu::rdtsc();
        let timeout = time::tsc_hz() / 1_000_000 * CHECKIN_TIMEOUT_US;
        while nr_online() == cpu_nr && cpu::rdtsc().wrapping_sub(start) < timeout {
            // Halting (woken by the PIT) lets a single-threaded TCG run the AP now.
            if x86_64::instructions::interrupts::are_enabled() {
                cpu::enable_irqs_and_halt();
            } else {
                core::hint::spin_loop();
            }
        }
        if nr_online() == cpu_nr {
            // Take the stack back: a CPU that wakes later then halts in the trampoline.
            let untouched = stack_slot.swap(0, Ordering::SeqCst) != 0;
            log::warn!("smp: CPU with APIC id {} did not answer within {} ms", apic_id, CHECKIN_TIMEOUT_US / 1000);
            if !untouched {
                log::warn!("smp: it took its stack but never checked in; not starting further CPUs");
                break;
            }
        }
    }
    let mut ids = alloc::string::String::new();
    for n in 0..MAX_CPUS {
        if let Some(id) = cpu_apic_id(n) {
            if !ids.is_empty() {
                ids.push(',');
            }
            ids.push_str(&alloc::format!("{}", id));
        }
    }
    log::info!("smp: brought up {} CPUs (APIC ids {}); the APs are parked", nr_online(), ids);
    Ok(nr_online())
}

/// Copies the trampoline to `base` (phys), builds its page table, and fills
/// in the values the BSP's registers dictate.
///
/// # Safety
/// `base..base + TRAMPOLINE_PAGES * 4 KiB` must be page-aligned physical RAM
/// below 1 MiB, reachable through the direct map, used by nothing else.
unsafe fn install_trampoline(base: u64, kernel_root: u64) {
    let start = &raw const smp_trampoline_start;
    let len = tr_off(&raw const smp_trampoline_end) as usize;
    assert!(len as u64 <= PAGE_SIZE, "SMP trampoline larger than a page");
    let virt = memmap::phys_to_virt(base);
    // SAFETY: (caller) the window is ours; `len` fits in its first page.
    unsafe {
        core::ptr::write_bytes(virt, 0, (TRAMPOLINE_PAGES * PAGE_SIZE) as usize);
        core::ptr::copy_nonoverlapping(start, virt, len);
    }
    let put32 = |sym: *const u8, at: u64, v: u32| {
        // SAFETY: `sym` is a trampoline symbol, so base + offset + at lies in
        // the copy (first page); unaligned writes are fine for plain bytes.
        unsafe { (memmap::phys_to_virt(base + tr_off(sym) + at) as *mut u32).write_unaligned(v) }
    };
    let put64 = |sym: *const u8, v: u64| {
        // SAFETY: as for `put32`.
        unsafe { (memmap::phys_to_virt(base + tr_off(sym)) as *mut u64).write_unaligned(v) }
    };
    let (pml4, pdpt, pd) = (base + PAGE_SIZE, base + 2 * PAGE_SIZE, base + 3 * PAGE_SIZE);
    put32(&raw const smp_tr_gdt_desc, 2, (base + tr_off(&raw const smp_tr_gdt)) as u32);
    put32(&raw const smp_tr_jmp32, 0, (base + tr_off(&raw const smp_tr_start32)) as u32);
    put32(&raw const smp_tr_jmp64, 0, (base + tr_off(&raw const smp_tr_start64)) as u32);
    put32(&raw const smp_tr_cr0, 0, Cr0::read_raw() as u32);
    put32(&raw const smp_tr_cr4, 0, (Cr4::read_raw() & !Cr4Flags::PCID.bits()) as u32);
    put32(&raw const smp_tr_pml4, 0, pml4 as u32);
    put64(&raw const smp_tr_efer, (Efer::read_raw() & !EFER_LMA) | EFER_LME);
    put64(&raw const smp_tr_entry, ap_start as extern "C" fn() -> ! as usize as u64);

    let table = |phys: u64| memmap::phys_to_virt(phys) as *mut u64;
    // SAFETY: pml4/pdpt/pd are the window's pages 1-3 (zeroed above); the
    // kernel root is a live 4 KiB page-table page in the direct map, and
    // its upper half is only read.
    unsafe {
        table(pd).write(PTE_PRESENT_RW | PTE_HUGE); // 0-2 MiB, 1:1
        table(pdpt).write(pd | PTE_PRESENT_RW);
        table(pml4).write(pdpt | PTE_PRESENT_RW);
        for i in 256..512 {
            table(pml4).add(i).write(table(kernel_root).add(i).read_volatile());
        }
    }
}

/// Where an AP arrives from the trampoline: 64-bit mode on its own stack,
/// running on the temporary page table.
extern "C" fn ap_start() -> ! {
    let cr3 = KERNEL_CR3.load(Ordering::Relaxed);
    // SAFETY: the kernel root maps the kernel half exactly as the temporary
    // table does (its entries 256-511 were copied from it), so this code and
    // stack stay mapped; PCIDE may be set now that CR3's PCID field is 0 and
    // the CPU is in long mode, and the rest of CR4 is what the BSP runs with.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags));
        Cr4::write_raw(BSP_CR4.load(Ordering::Relaxed));
    }
    // SAFETY: the BSP leaked this ApGdt for this AP alone before starting it
    // and waits for it to check in before storing the next one.
    let ap_gdt = unsafe { &*AP_GDT.load(Ordering::Relaxed) };
    gdt::load_ap(ap_gdt);
    idt::init();
    let apic_ok = apic::enable_this_cpu();
    let apic_id = if apic_ok { apic::id() } else { u32::MAX };
    mark_online(AP_CPU.load(Ordering::Relaxed), apic_id);
    loop {
        // Parked: interrupts stay off; nothing is routed to APs yet.
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(online_cpus_match_the_madt)];

/// Every enabled processor of the MADT came up (run with `--smp 2` and more;
/// with one CPU it checks the BSP counts itself).
fn online_cpus_match_the_madt() -> crate::lib::ktest::KResult {
    let madt = acpi::madt().map_err(|e| alloc::format!("MADT: {:?}", e))?;
    let expected = madt.nr_enabled.min(MAX_CPUS as u32);
    crate::kassert_eq!(nr_online(), expected);
    crate::kassert_eq!(cpu_online_mask().count_ones(), expected);
    crate::kassert_eq!(cpu_apic_id(0), Some(apic::id()));
    for n in 1..expected as usize {
        let id = cpu_apic_id(n).ok_or("online CPU without APIC id")?;
        crate::kassert!(madt.enabled_apic_ids.contains(&Some(id)), "CPU {} has APIC id {} not in the MADT", n, id);
    }
    Ok(())
}
