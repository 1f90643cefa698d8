//! The interactive serial console (`mm> ` prompt).
//!
//! A line editor (printable characters, backspace, Ctrl-C to drop the line)
//! feeds a table of commands. Later subsystems add their commands to
//! [`COMMANDS`]. Unknown commands get a one-line error; no input can crash
//! the console.

use alloc::string::String;

use crate::arch::x86_64::{qemu, serial};
use crate::lib::command::Command;
use crate::{print, println};

pub mod ptreclaim;
pub mod sysctl;

pub const PROMPT: &str = "mm> ";
const MAX_LINE: usize = 256;

/// Every command table; subsystems add theirs here.
pub const COMMAND_SETS: &[&[Command]] = &[COMMANDS, crate::memory::page_alloc::COMMANDS, crate::memory::ptdump::COMMANDS, crate::memory::vmalloc::COMMANDS, crate::memory::shrinker::COMMANDS, crate::memory::slab::COMMANDS, sysctl::COMMANDS, crate::init::userland::COMMANDS, crate::init::profile::COMMANDS, ptreclaim::COMMANDS];

pub const COMMANDS: &[Command] = &[
    Command { name: "help", args: "", help: "list the commands", run: cmd_help },
    Command { name: "meminfo", args: "", help: "memory usage, like /proc/meminfo", run: cmd_meminfo },
    Command { name: "memmap", args: "", help: "physical memory map from the bootloader", run: cmd_memmap },
    Command { name: "ktest", args: "[FILTER]", help: "run the in-kernel tests (matching FILTER)", run: cmd_ktest },
    Command { name: "uptime", args: "", help: "time since boot and timer ticks", run: cmd_uptime },
    Command { name: "poweroff", args: "", help: "power the machine off", run: cmd_poweroff },
];

fn all_commands() -> impl Iterator<Item = &'static Command> {
    COMMAND_SETS.iter().flat_map(|set| set.iter())
}

/// Runs one command line; returns false if the command is unknown.
pub fn execute(line: &str) -> bool {
    let line = line.trim();
    if line.is_empty() {
        return true;
    }
    let (name, args) = line.split_once(' ').unwrap_or((line, ""));
    match all_commands().find(|c| c.name == name) {
        Some(cmd) => {
            (cmd.run)(args.trim());
            true
        }
        None => {
            println!("mm: unknown command '{}' (try 'help')", name);
            false
        }
    }
}

/// The read-eval loop; never returns.
pub fn run() -> ! {
    println!("Type 'help' for the list of commands.");
    let mut line = String::with_capacity(MAX_LINE);
    loop {
        print!("{}", PROMPT);
        read_line(&mut line);
        execute(&line);
    }
}

/// Reads one line with echo and basic editing.
fn read_line(line: &mut String) {
    line.clear();
    loop {
        match serial::read_byte_blocking() {
            b'\r' | b'\n' => {
                serial::write_bytes(b"\n");
                return;
            }
            0x08 | 0x7f => {
                if line.pop().is_some() {
                    serial::write_bytes(b"\x08 \x08");
                }
            }
            0x03 => {
                serial::write_bytes(b"^C\n");
                line.clear();
                print!("{}", PROMPT);
            }
            b @ 0x20..=0x7e if line.len() < MAX_LINE => {
                line.push(b as char);
                serial::write_bytes(&[b]);
            }
            _ => {} // other control bytes, escape sequences, overlong lines
        }
    }
}

fn cmd_help(_: &str) {
    for c in all_commands() {
        let usage = if c.args.is_empty() { String::from(c.name) } else { alloc::format!("{} {}", c.name, c.args) };
        println!("  {:<28} {}", usage, c.help);
    }
}

/// `/proc/meminfo`-style lines (values in kB, like Linux): the page
/// allocator's counters, then what the kernel holds outside it.
fn cmd_meminfo(_: &str) {
    let _ = crate::fs::procfs::meminfo(&mut crate::lib::printk::Writer);
}

fn cmd_memmap(_: &str) {
    let _ = crate::arch::x86_64::memmap::write_memmap(&mut crate::lib::printk::Writer, crate::arch::x86_64::memmap::facts());
}

fn cmd_ktest(args: &str) {
    let filter = if args.is_empty() { None } else { Some(args) };
    crate::lib::ktest::run(filter);
}

fn cmd_uptime(_: &str) {
    let ns = crate::arch::x86_64::time::uptime_ns().unwrap_or(0);
    println!(
        "up {}.{:03} s, {} timer ticks, TSC {} MHz",
        ns / 1_000_000_000,
        ns % 1_000_000_000 / 1_000_000,
        crate::arch::x86_64::pit::jiffies(),
        crate::arch::x86_64::time::tsc_hz() / 1_000_000
    );
}

fn cmd_poweroff(_: &str) {
    crate::init::profile::finish();
    println!("Power down.");
    qemu::exit(qemu::ExitCode::Success);
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(console_rejects_unknown_commands),
    crate::ktest!(console_command_names_are_unique),
];

fn console_rejects_unknown_commands() -> crate::lib::ktest::KResult {
    crate::kassert!(!execute("frobnicate now"), "unknown command accepted");
    crate::kassert!(execute("   "), "empty line is not an error");
    crate::kassert!(execute("uptime"), "uptime is a command");
    Ok(())
}

fn console_command_names_are_unique() -> crate::lib::ktest::KResult {
    let all: alloc::vec::Vec<&Command> = all_commands().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            crate::kassert!(a.name != b.name, "duplicate command {}", a.name);
        }
    }
    Ok(())
}
