//! `oom`: running out of memory (the 2013 OOM/ENOMEM discussion). A system
//! call that cannot get memory must fail with ENOMEM and leave the process
//! alive; a page fault that cannot get memory must get the process killed
//! (SIGKILL from the OOM killer, shell status 137) while the kernel keeps
//! running. Never run this on a host you care about: it is excluded from
//! `run-on-host.sh`.
#![no_std]
#![no_main]

use user::fs::proc_field;
use user::sys::{errno::*, *};
use user::{check, check_ret, check_with, println};

user::entry!(main);

const MADV_POPULATE_WRITE: usize = 23;
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
        check_ret("munmap_after_enomem", munmap(a as usize, len), 0);
    }
    let free_after = proc_field(c"/proc/meminfo", b"MemFree:").unwrap_or(0);
    check_with(
        "memory_back_after_enomem",
        free_after + 4 * 1024 >= free_before,
        format_args!("MemFree {free_before} kB before, {free_after} kB after"),
    );
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
