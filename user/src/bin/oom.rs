//! `oom`: running out of memory (the 2013 OOM/ENOMEM discussion). A system
//! call that cannot get memory must fail with ENOMEM and leave the process
//! alive; a page fault that cannot get memory must get the process killed
//! (SIGKILL from the OOM killer, shell status 137) while the kernel keeps
//! running. On the way, `MADV_FREE` pages must be dropped under that
//! pressure (before anything is killed) while a page written after the
//! advice keeps its data, and with memory full, splitting a mapping into
//! tens of thousands of VMAs must meet ENOMEM, not exhaust the kernel's own
//! memory. Never run this on a host you care about: it is
//! excluded from `run-on-host.sh`.
#![no_std]
#![no_main]

use user::fs::proc_field;
use user::sys::{errno::*, *};
use user::{check, check_ret, check_with, println};

user::entry!(main);

const MADV_FREE: usize = 8;
const MADV_POPULATE_WRITE: usize = 23;
/// The lazily freed region.
const LAZY_LEN: usize = 16 << 20;
const KIB: usize = 1024;

fn main() {
    let total_kb = proc_field(c"/proc/meminfo", b"MemTotal:").unwrap_or(0) as usize;
    check("meminfo_total_known", total_kb > 0);
    // Twice the RAM: can never be populated.
    let len = 2 * total_kb * KIB;
    let free_before = proc_field(c"/proc/meminfo", b"MemFree:").unwrap_or(0);
    let a = map(len, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    check("map_twice_ram_noreserve", a > 0);
    if a <= 0 {
        user::test::finish("oom");
    }
    // SAFETY: the range is this program's own fresh mapping.
    unsafe {
        check_ret("populate_write_beyond_ram_enomem", madvise(a as usize, len, MADV_POPULATE_WRITE), -ENOMEM);
        vma_splits_while_memory_is_full();
        check_ret("munmap_after_enomem", munmap(a as usize, len), 0);
    }
    let free_after = proc_field(c"/proc/meminfo", b"MemFree:").unwrap_or(0);
    check_with(
        "memory_back_after_enomem",
        free_after + 4 * 1024 >= free_before,
        format_args!("MemFree {free_before} kB before, {free_after} kB after"),
    );
    lazyfree_under_pressure(len);
    // Now take the same memory by touching it: no system call can fail, so
    // the OOM killer must end this process.
    let b = map(len, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    check("map_again", b > 0);
    println!("oom: touching {} MiB, expecting SIGKILL", len >> 20);
    let mut addr = b as usize;
    while addr < b as usize + len {
        // SAFETY: inside this program's own writable mapping.
        unsafe { (addr as *mut u8).write_volatile(1) };
        addr += PAGE_SIZE;
    }
    check_with("oom_killed", false, format_args!("touched {} MiB without being killed", len >> 20));
    user::test::finish("oom");
}

/// Fills a region, `MADV_FREE`s it, rewrites its first page, then touches
/// fresh memory until the kernel drops the clean lazy-free pages (detected by
/// an untouched one reading zero); stops before the OOM killer is needed.
fn lazyfree_under_pressure(len: usize) {
    let lazy = map(LAZY_LEN, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS);
    let hog = map(len, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    check("lazyfree_setup", lazy > 0 && hog > 0);
    if lazy <= 0 || hog <= 0 {
        return;
    }
    let (lazy, hog) = (lazy as usize, hog as usize);
    let probe = lazy + LAZY_LEN - PAGE_SIZE;
    // SAFETY: all addresses are inside this program's own writable mappings.
    unsafe {
        for p in (lazy..lazy + LAZY_LEN).step_by(PAGE_SIZE) {
            (p as *mut u8).write_volatile(0x5a);
        }
        check_ret("madv_free", madvise(lazy, LAZY_LEN, MADV_FREE), 0);
        (lazy as *mut u8).write_volatile(0x77);
        check("lazyfree_kept_without_pressure", (probe as *const u8).read_volatile() == 0x5a);
        let mut dropped = false;
        let mut addr = hog;
        while addr < hog + len {
            (addr as *mut u8).write_volatile(1);
            addr += PAGE_SIZE;
            if (addr - hog) % (256 * PAGE_SIZE) == 0 && (probe as *const u8).read_volatile() == 0 {
                dropped = true;
                break;
            }
        }
        check_with("lazyfree_dropped_under_pressure", dropped, format_args!("touched {} MiB", (addr - hog) >> 20));
        check("lazyfree_rewritten_page_kept", (lazy as *const u8).read_volatile() == 0x77);
        check_ret("lazyfree_munmap", munmap(hog, len), 0);
        check_ret("lazyfree_munmap_region", munmap(lazy, LAZY_LEN), 0);
    }
}

/// With memory full (the populated pages above are still mapped), splits one
/// mapping into tens of thousands of VMAs, each of which costs the kernel heap
/// memory: every `mprotect` must either succeed or fail with ENOMEM, and the
/// kernel must not run out of its own memory.
fn vma_splits_while_memory_is_full() {
    const SPLITS: usize = 30_000;
    let len = 2 * SPLITS * PAGE_SIZE;
    let m = map(len, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    check("split_region_mapped", m > 0);
    if m <= 0 {
        return;
    }
    let (mut done, mut enomem, mut other) = (0, 0, 0);
    for i in 0..SPLITS {
        // SAFETY: inside this program's own mapping; only permissions change.
        match unsafe { mprotect(m as usize + 2 * i * PAGE_SIZE, PAGE_SIZE, PROT_READ) } {
            0 => done += 1,
            r if r == -ENOMEM => enomem += 1,
            _ => other += 1,
        }
    }
    println!("oom: {done} VMA splits done, {enomem} refused with ENOMEM while memory was full");
    check_with(
        "vma_splits_succeed_or_enomem",
        other == 0 && done + enomem == SPLITS,
        format_args!("{done} split, {enomem} ENOMEM, {other} other errors"),
    );
    // SAFETY: this program's own mapping.
    check_ret("split_region_munmap", unsafe { munmap(m as usize, len) }, 0);
}
