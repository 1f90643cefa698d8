//! Tasks: the scheduler (run queue, context switch, timer tick, sleeping)
//! and processes (creation, signals, exit and reaping).

pub mod process;
pub mod sched;
