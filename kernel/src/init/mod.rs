//! Boot-time policy above the subsystems: the kernel command line and the
//! first user processes (`init=`, the demo, the console's `run`); the
//! sampling profiler's ring and commands (`profile=RATE`).

pub mod cmdline;
pub mod profile;
pub mod userland;
