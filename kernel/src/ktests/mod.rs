//! In-kernel tests that need more than one layer (allocator under real
//! memory, page tables with real TLB flushes, shrinkers with real tasks), and
//! [`SUITES`], the list of every test suite in the kernel, which `main`
//! registers with the runner in `lib::ktest`.

mod kvmalloc;
mod migrate;
mod page_alloc;
mod shrinker;
mod vm;
mod vmalloc;

use crate::lib::ktest::KTest;

/// Every suite of the kernel; `main` registers it. The order is the run
/// order (memory first, while the machine is fresh).
pub const SUITES: &[&[KTest]] = &[
    crate::arch::x86_64::memmap::KTESTS,
    crate::memory::heap::KTESTS,
    crate::memory::slab::KTESTS,
    kvmalloc::KTESTS,
    page_alloc::KTESTS,
    vm::KTESTS,
    migrate::KTESTS,
    vmalloc::KTESTS,
    shrinker::KTESTS,
    crate::lib::sync::KTESTS,
    crate::arch::x86_64::serial::KTESTS,
    crate::arch::x86_64::gdt::KTESTS,
    crate::arch::x86_64::trap::KTESTS,
    crate::arch::x86_64::pit::KTESTS,
    crate::arch::x86_64::profile::KTESTS,
    crate::arch::x86_64::acpi::KTESTS,
    crate::arch::x86_64::apic::KTESTS,
    crate::arch::x86_64::smpboot::KTESTS,
    crate::arch::x86_64::rtc::KTESTS,
    crate::init::userland::KTESTS,
    crate::init::cmdline::KTESTS,
    crate::console::sysctl::KTESTS,
    crate::fs::ramfs::KTESTS,
    crate::memory::clear_page::KTESTS,
    crate::console::KTESTS,
];
