//! Boot-time policy above the subsystems: the kernel command line and the
//! first user processes (`init=`, the demo, the console's `run`).

pub mod cmdline;
pub mod userland;
