//! Global descriptor table and task-state segment.
//!
//! Layout (the order `syscall`/`sysret` will need later):
//!
//! | index | selector | segment            |
//! |-------|----------|--------------------|
//! | 1     | 0x08     | kernel code (64)   |
//! | 2     | 0x10     | kernel data        |
//! | 3     | 0x1b     | user data (RPL 3)  |
//! | 4     | 0x23     | user code (RPL 3)  |
//! | 5-6   | 0x28     | TSS (16 bytes)     |
//!
//! The TSS provides separate interrupt stacks (IST) so that a double fault
//! caused by a kernel stack overflow, or an NMI arriving at any moment, runs
//! on a known-good stack.

use core::ptr::{addr_of, addr_of_mut};

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS array) for double faults.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// IST slot for NMIs and machine checks.
pub const NMI_IST: u8 = 2;

const IST_STACK_SIZE: usize = 32 * 1024;

/// Only ever used through its address (the CPU writes to it).
#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);

/// Mutable because `rsp0` (the stack for interrupts from user mode) changes
/// on every task switch; see [`set_kernel_stack`].
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static TSS_INIT: Once<()> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

fn stack_top(stack: *const Stack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64
}

/// Builds and loads the GDT and TSS and reloads the segment registers.
pub fn init() {
    TSS_INIT.call_once(|| {
        // SAFETY: runs once, on the boot CPU, before the TSS is loaded; only
        // the addresses of the IST stacks are taken.
        unsafe {
            let tss = &mut *addr_of_mut!(TSS);
            tss.interrupt_stack_table[(DOUBLE_FAULT_IST - 1) as usize] = stack_top(addr_of!(DOUBLE_FAULT_STACK));
            tss.interrupt_stack_table[(NMI_IST - 1) as usize] = stack_top(addr_of!(NMI_STACK));
        }
    });
    // SAFETY: the TSS is a static; after this point it is only written
    // through `set_kernel_stack` (a single aligned store the CPU reads on a
    // privilege change), never through a Rust reference.
    let tss: &'static TaskStateSegment = unsafe { &*addr_of!(TSS) };
    let (gdt, sel) = GDT.call_once(|| build(tss));
    load(gdt, sel);
}

/// The kernel's GDT layout around `tss`: kernel code and data, then user
/// data and code (the order `syscall`/`sysret` need), then the TSS.
fn build(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, Selectors { kernel_code, kernel_data, user_data, user_code, tss })
}

/// Loads `gdt` on the calling CPU, reloads the segment registers and the task
/// register. `gdt` lives forever and its TSS belongs to this CPU alone (a
/// loaded TSS is marked busy).
fn load(gdt: &'static GlobalDescriptorTable, sel: &Selectors) {
    gdt.load();
    // SAFETY: the selectors index the GDT loaded just above, which lives for
    // the rest of the kernel's life; its TSS descriptor is not busy (per the
    // contract above).
    unsafe {
        CS::set_reg(sel.kernel_code);
        SS::set_reg(sel.kernel_data);
        DS::set_reg(sel.kernel_data);
        ES::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
}

/// An application processor's GDT, built by the boot CPU before it starts
/// the AP (so the AP itself needs no allocator) and loaded by the AP with
/// [`load_ap`].
pub struct ApGdt {
    gdt: &'static GlobalDescriptorTable,
    sel: Selectors,
}

/// Builds a GDT for an application processor: the boot CPU's layout (so the
/// selectors of [`selectors`] and the IDT's code selector hold on every CPU)
/// with that CPU's own TSS and IST stacks (a TSS descriptor is marked busy
/// when loaded, so CPUs cannot share one). Table, TSS and stacks come from the
/// heap and are never freed: a CPU, once up, stays up. `rsp0` stays 0 until
/// that CPU runs user tasks (it does not yet).
pub fn new_ap_gdt() -> ApGdt {
    use alloc::boxed::Box;
    use alloc::vec;
    let mut tss = TaskStateSegment::new();
    for ist in [DOUBLE_FAULT_IST, NMI_IST] {
        let stack: &'static mut [u8] = Box::leak(vec![0u8; IST_STACK_SIZE].into_boxed_slice());
        // The CPU aligns an IST stack pointer down to 16 bytes anyway.
        let top = (VirtAddr::from_ptr(stack.as_ptr()) + IST_STACK_SIZE as u64).align_down(16u64);
        tss.interrupt_stack_table[(ist - 1) as usize] = top;
    }
    let (gdt, sel) = build(Box::leak(Box::new(tss)));
    ApGdt { gdt: Box::leak(Box::new(gdt)), sel }
}

/// Loads an AP's GDT and TSS on the calling CPU and reloads the segment
/// registers. Each [`ApGdt`] must be loaded by one CPU only (its TSS becomes busy).
pub fn load_ap(g: &ApGdt) {
    load(g.gdt, &g.sel);
}

/// Sets the stack the CPU switches to on an interrupt or exception from
/// user mode (TSS `rsp0`): the top of the current task's kernel stack.
pub fn set_kernel_stack(top: u64) {
    // SAFETY: an aligned 8-byte store into the static TSS (packed, so written
    // unaligned-safe); the CPU reads rsp0 only on a ring 3 -> 0 transition,
    // which cannot happen while the kernel runs this store.
    unsafe {
        let slot = addr_of_mut!(TSS.privilege_stack_table[0]);
        slot.write_unaligned(VirtAddr::new(top));
    }
}

/// The selectors of the loaded GDT.
pub fn selectors() -> &'static Selectors {
    &GDT.get().expect("gdt::init ran").1
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(gdt_layout_fits_syscall_and_sysret)];

fn gdt_layout_fits_syscall_and_sysret() -> crate::lib::ktest::KResult {
    use x86_64::PrivilegeLevel::{Ring0, Ring3};
    let s = selectors();
    crate::kassert_eq!((s.kernel_code.rpl(), s.kernel_data.rpl()), (Ring0, Ring0));
    crate::kassert_eq!((s.user_code.rpl(), s.user_data.rpl()), (Ring3, Ring3));
    // syscall loads SS = STAR[47:32] + 8; sysret loads SS = STAR[63:48] + 8
    // and CS = STAR[63:48] + 16, so the data segments must sit just so.
    crate::kassert_eq!(s.kernel_data.index(), s.kernel_code.index() + 1);
    crate::kassert_eq!(s.user_code.index(), s.user_data.index() + 1);
    crate::kassert_eq!(CS::get_reg(), s.kernel_code);
    let task_register: u16;
    // SAFETY: `str` only reads the task register.
    unsafe { core::arch::asm!("str {0:x}", out(reg) task_register, options(nomem, nostack, preserves_flags)) };
    crate::kassert_eq!(task_register, s.tss.0);
    Ok(())
}
