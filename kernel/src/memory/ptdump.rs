//! Page-table inspection on the console (Linux `mm/ptdump.c` and the
//! `PageTables:` accounting): `ptstat` counts page-table pages per level in
//! the kernel's and the current process's address spaces, `ptdump ADDR`
//! prints every level's entry on the walk to an address.

use mm::pgtable::VirtAddr;

use crate::lib::command::Command;
use crate::lib::printk::Writer;
use crate::memory::init_64::with_kernel_space;
use crate::memory::mm_struct::with_current;
use crate::memory::pgtable::PGTABLE_CTL;
use crate::{print, println};

pub const COMMANDS: &[Command] = &[
    Command { name: "ptstat", args: "", help: "page-table pages per level and total", run: cmd_ptstat },
    Command { name: "ptdump", args: "ADDR", help: "walk the page tables to ADDR", run: cmd_ptdump },
];

fn cmd_ptstat(_: &str) {
    let mut w = Writer;
    let _ = PGTABLE_CTL.meminfo(&mut w);
    with_kernel_space(|k| {
        print!("kernel address space (root {}): ", k.root());
        let _ = k.write_ptstat(&mut Writer);
        if let Ok(c) = k.census() {
            println!("  leaves: 4 KiB {}  2 MiB {}  1 GiB {}", c.leaves[0], c.leaves[1], c.leaves[2]);
        }
    });
    let shown = with_current(|mm| {
        println!("current user address space (root {}):", mm.space.root());
        let _ = mm.space.write_ptstat(&mut Writer);
    });
    if shown.is_none() {
        println!("no user address space is current (the kernel's page tables are in CR3)");
    }
}

fn cmd_ptdump(args: &str) {
    let parsed = args.trim().strip_prefix("0x").map_or_else(|| args.trim().parse::<u64>().ok(), |h| u64::from_str_radix(h, 16).ok());
    let Some(va) = parsed.and_then(VirtAddr::try_new) else {
        return println!("ptdump: need a canonical virtual address, e.g. ptdump 0xffffffff80000000");
    };
    let mut w = Writer;
    let done = with_current(|mm| mm.space.ptdump(va, &mut Writer));
    if done.is_none() {
        let _ = with_kernel_space(|k| k.ptdump(va, &mut w));
    }
}
