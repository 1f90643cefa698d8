//! The `sysctl` console command over the table of every runtime knob:
//! `sysctl` lists them, `sysctl NAME` shows one, `sysctl NAME=VALUE` sets one.

use alloc::string::String;

use crate::lib::command::Command;
use crate::lib::sysctl::Sysctl;
use crate::println;

pub const SYSCTLS: &[Sysctl] = &[
    crate::memory::page_alloc::SYSCTL_DEFRAG_MODE,
    crate::memory::clear_page::SYSCTL_CLEAR_HUGE_POLICY,
    crate::memory::pgtable::SYSCTL_PT_RECLAIM,
    crate::memory::pgtable::SYSCTL_THP,
];

/// Why `sysctl` refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum SysctlError {
    Unknown,
    BadValue { accepted: &'static str },
}

/// Sets `name` to `value`.
pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    let s = SYSCTLS.iter().find(|s| s.name == name).ok_or(SysctlError::Unknown)?;
    (s.set)(value).map_err(|()| SysctlError::BadValue { accepted: s.values })
}

/// Current value of `name`.
pub fn read(name: &str) -> Option<String> {
    SYSCTLS.iter().find(|s| s.name == name).map(|s| (s.get)())
}

pub const COMMANDS: &[Command] = &[Command {
    name: "sysctl",
    args: "[NAME[=VALUE]]",
    help: "show or set runtime knobs (list them with no argument)",
    run: cmd_sysctl,
}];

fn cmd_sysctl(args: &str) {
    if args.is_empty() {
        for s in SYSCTLS {
            println!("{} = {}", s.name, (s.get)());
        }
        return;
    }
    let (name, value) = match args.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (args, None),
    };
    let result = match value {
        Some(v) => write(name, v),
        None => Ok(()),
    };
    match (result, read(name)) {
        (Ok(()), Some(current)) => println!("{} = {}", name, current),
        (Err(SysctlError::BadValue { accepted }), _) => {
            println!("sysctl: invalid value for {} (accepted: {})", name, accepted)
        }
        _ => println!("sysctl: unknown setting '{}' (try 'sysctl' for the list)", name),
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(sysctl_rejects_unknown_names_and_bad_values)];

fn sysctl_rejects_unknown_names_and_bad_values() -> crate::lib::ktest::KResult {
    crate::kassert_eq!(write("vm.no_such_knob", "1"), Err(SysctlError::Unknown));
    crate::kassert!(matches!(write("vm.defrag_mode", "2"), Err(SysctlError::BadValue { .. })), "defrag_mode=2 accepted");
    let before = read("vm.defrag_mode").ok_or("vm.defrag_mode missing")?;
    crate::kassert!(write("vm.defrag_mode", "1").is_ok(), "defrag_mode=1 refused");
    crate::kassert_eq!(read("vm.defrag_mode").as_deref(), Some("1"));
    crate::kassert!(write("vm.defrag_mode", &before).is_ok(), "restore refused");
    Ok(())
}
