//! `segv`: reads an unmapped address and must be killed by SIGSEGV (shell
//! exit status 139). Reaching the summary means the fault was not delivered.
#![no_std]
#![no_main]

use user::{check_with, println};

user::entry!(main);

fn main() {
    println!("segv: reading unmapped address 0x1000, expecting SIGSEGV");
    // SAFETY: deliberately faulting; page 0x1000 is never mapped (below
    // vm.mmap_min_addr), so the kernel must kill the process here.
    let v = unsafe { user::mem::peek(0x1000) };
    check_with("segv_delivered", false, format_args!("read {v} from 0x1000"));
}
