//! The runtime-knob type, named like Linux's `/proc/sys` entries
//! (`vm.defrag_mode`; Linux `struct ctl_table`). Each subsystem owns its
//! knobs; the table of all of them and the `sysctl` command live in the
//! console.

use alloc::string::String;

/// One knob: its name, the values it accepts, and how to read and set it.
pub struct Sysctl {
    pub name: &'static str,
    /// Accepted values, for the error message.
    pub values: &'static str,
    pub get: fn() -> String,
    pub set: fn(&str) -> Result<(), ()>,
}
