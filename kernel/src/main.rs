//! Kernel entry and boot flow, the top of the layers (`docs/architecture.md`:
//! `lib` < `arch` < `memory` < `fs` < `task` < `entry` < `init` < `console` <
//! `ktests` < here). Only this file connects a lower layer to a higher one:
//! it installs the hooks through which `arch/` and `memory/` call up, and
//! registers the test suites with the runner.
//!
//! `kernel_main` brings the machine up in a fixed order (serial and clock,
//! descriptor tables, heap, CPU protections, interrupts, memory map), then
//! does what the command line asks: run the in-kernel tests, power off after
//! boot (`batch`), or offer the `mm> ` console.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
// `lib/` is the bottom layer's folder (as in Linux), not a library crate root.
#![allow(special_module_name)]

extern crate alloc;

mod arch;
mod console;
mod entry;
mod fs;
mod init;
mod ktests;
mod lib;
mod memory;
mod task;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::{entry_point, BootInfo};
use log::LevelFilter;

use arch::x86_64::layout::{KERNEL_HALF_START, KERNEL_IMAGE_BASE};
use arch::x86_64::upcall::{self, Upcalls};
use arch::x86_64::{apic, cpu, entry_64, fpu, gdt, idt, memmap, pic, pit, qemu, serial, smpboot, time};
use entry::{fault, sys_mm, syscalls};
use init::cmdline::{self, SelfTest};
use init::userland;
use lib::{ktest, printk};
use memory::{clear_page, heap, page_alloc, shrinker, slab, vmalloc};
use task::{process, sched};

/// Stack for the boot CPU; the tests and the console run on it.
const KERNEL_STACK_SIZE: u64 = 512 * 1024;

/// Everything the bootloader maps for the kernel (image, stack, boot info,
/// direct map) goes into the upper half, so user address spaces can share it
/// by copying PML4 entries 256..511.
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.kernel_base = Mapping::FixedAddress(KERNEL_IMAGE_BASE);
    config.mappings.dynamic_range_start = Some(KERNEL_HALF_START);
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = KERNEL_STACK_SIZE;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    time::mark_boot();
    serial::init();
    let tsc_hz = time::calibrate();
    printk::init(LevelFilter::Info);
    log::info!("mm kernel {} booting", env!("CARGO_PKG_VERSION"));

    install_hooks();
    gdt::init();
    idt::init();
    heap::init();
    let cmdline = cmdline::read();
    if let Some(level) = cmdline.loglevel {
        log::set_max_level(level);
    }
    log::info!("command line: \"{}\"", cmdline.raw);
    for word in &cmdline.unknown {
        log::warn!("command line: ignoring unknown word \"{}\"", word);
    }

    let vendor = cpu::vendor();
    let prot = cpu::enable_protections();
    log::info!(
        "CPU: {}, TSC {}.{:03} MHz; protections: NX {}, WP {}, SMEP {}, SMAP {}",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        tsc_hz / 1_000_000,
        tsc_hz / 1000 % 1000,
        on_off(prot.nx),
        on_off(prot.wp),
        on_off(prot.smep),
        on_off(prot.smap)
    );

    pic::init();
    pit::init();
    serial::enable_input_irq();
    cpu::enable_irqs();
    log::info!("interrupts on: PIC remapped to vectors 32-47, PIT at {} Hz, COM1 receive IRQ", pit::HZ);

    let facts = memmap::init(boot_info);
    let _ = memmap::write_memmap(&mut printk::Writer, facts);
    if let Err(e) = page_alloc::init(facts) {
        panic!("cannot set up the page allocator: {}", e);
    }
    clear_page::init();
    if let Err(e) = memory::init_64::init(facts) {
        panic!("cannot set up the kernel page tables: {}", e);
    }
    if let Err(e) = vmalloc::init() {
        panic!("cannot preallocate the vmalloc page tables: {:?}", e);
    }
    slab::init(mm::slab::SlabConfig { init_on_alloc: cmdline.init_on_alloc, init_on_free: cmdline.init_on_free });
    apic::init(facts.physical_memory_offset);
    entry_64::init();
    fpu::init();
    bring_up_cpus();
    shrinker::register(&sys_mm::LAZYFREE_SHRINKER);
    shrinker::register(memory::pgtable::QUICKLIST_SHRINKER);
    match apic::start_timer(sched::HZ) {
        Some(hz) => log::info!("APIC timer: {} kHz input, {} Hz scheduler tick", hz / 1000, sched::HZ),
        None => log::warn!("no APIC timer: user processes are not preempted"),
    }
    if time::read_wall_clock().is_none() {
        log::warn!("RTC unreadable: CLOCK_REALTIME counts from 1970");
    }
    if let Err(e) = entry::vdso::init() {
        log::warn!("no vDSO: {}", e);
    }
    init_initramfs(facts);
    if let Some(rate) = cmdline.profile {
        init::profile::start_from_cmdline(rate);
    }

    if let Some(test) = cmdline.selftest {
        run_selftest(test);
    }
    if let Some(filter) = &cmdline.ktest {
        let summary = ktest::run(filter.as_deref());
        init::profile::finish();
        qemu::exit(if summary.failed == 0 { qemu::ExitCode::Success } else { qemu::ExitCode::Failure });
    }
    let init_status = userland::run_init(cmdline.init.as_deref());
    if cmdline.batch {
        init::profile::finish();
        console::execute("meminfo");
        if let Some(status) = init_status {
            // The runner turns this line into its exit status.
            log::info!("init exited with status {}", status);
        }
        log::info!("batch mode: boot complete, powering off");
        qemu::exit(qemu::ExitCode::Success);
    }
    console::run()
}

/// Connects the layers that call upwards: the traps and the `syscall` entry
/// in `arch/` (Linux's fixed entry points), the allocator's reclaim wait,
/// migration's walk over parked address spaces, and the test runner's list of
/// suites. Nothing below `main` names these.
fn install_hooks() {
    upcall::install(Upcalls {
        page_fault: fault::do_page_fault,
        force_sig: process::force_sig,
        return_to_user: sched::return_to_user,
        timer_tick: sched::timer_tick,
        syscall: syscalls::dispatch,
    });
    page_alloc::set_sleep_hook(sched::schedule_timeout_uninterruptible);
    memory::migrate::set_parked_mms(sched::try_for_each_mm);
    ktest::register(ktests::SUITES);
}

/// Says how many CPUs the firmware lists, and that only the boot CPU runs.
fn bring_up_cpus() {
    let Some(root) = memory::init_64::kernel_root() else {
        log::warn!("smp: no kernel page table; running on CPU 0 only");
        return;
    };
    // AP boot stacks: physically contiguous blocks from the page allocator,
    // used through the direct map and never freed (a parked CPU keeps its
    // stack). Not vmalloc'd: no guard page, but a stack parked for the
    // kernel's life in the vmalloc range would share page-table pages with
    // later areas (the vmalloc ktests expect an empty neighbourhood); a
    // parked AP uses well under a page of it.
    let mut alloc_stack = || {
        let order = (smpboot::AP_STACK_SIZE / 4096).trailing_zeros() as usize;
        let pages = page_alloc::page_alloc().alloc_pages(mm::gfp::GFP_KERNEL, order).ok()?;
        let pfn = pages.leak();
        Some(memmap::phys_to_virt(pfn.phys_addr()) as u64 + smpboot::AP_STACK_SIZE as u64)
    };
    if let Err(e) = smpboot::smp_init(root.0 << 12, &mut alloc_stack) {
        log::warn!("smp: APs not started ({:?}); running on CPU 0 only", e);
    }
}

/// Reads the bootloader's ramdisk as the initramfs (Linux `populate_rootfs`).
fn init_initramfs(facts: &memmap::BootFacts) {
    let bytes: &'static [u8] = match facts.ramdisk {
        // SAFETY: the bootloader mapped the ramdisk at this address in the
        // kernel half, in frames it reports as used; nothing writes them.
        Some((addr, len)) if len > 0 => unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) },
        _ => &[],
    };
    match fs::ramfs::init(bytes) {
        Ok(n) => log::info!("initramfs: {} entries, {} KiB", n, bytes.len() / 1024),
        Err(e) => log::error!("initramfs: {} (continuing without it)", e),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Deliberate failures that prove the runner reports crashes and hangs.
fn run_selftest(test: SelfTest) {
    log::warn!("selftest: deliberately triggering {:?}", test);
    match test {
        SelfTest::Panic => panic!("selftest: deliberate panic"),
        SelfTest::PageFault => {
            // An address in the non-canonical-free but unmapped low range.
            let bad = 0xdead_b000 as *const u64;
            // SAFETY: deliberately unsound: this read must fault and the
            // exception handler must end the run with an oops report.
            let value = unsafe { bad.read_volatile() };
            log::error!("selftest: read {:#x} from an unmapped address", value);
        }
        SelfTest::VmallocGuard => {
            let area = vmalloc::vmalloc(3 * 4096, mm::gfp::GFP_KERNEL).expect("selftest: vmalloc of 12 KiB");
            let past_end = (area.addr().as_u64() + 3 * 4096) as *const u8;
            // SAFETY: deliberately unsound: the byte after the area is its
            // guard page; the fault handler must report it and oops.
            let value = unsafe { past_end.read_volatile() };
            log::error!("selftest: read {:#x} from a vmalloc guard page", value);
        }
        SelfTest::Hang => loop {
            cpu::enable_irqs_and_halt();
        },
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    serial::emergency_unlock();
    match info.location() {
        Some(loc) => println!("Kernel panic - not syncing: {} at {}:{}:{}", info.message(), loc.file(), loc.line(), loc.column()),
        None => println!("Kernel panic - not syncing: {}", info.message()),
    }
    ktest::report_panic_in_test();
    qemu::exit(qemu::ExitCode::Failure)
}
