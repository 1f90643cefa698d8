//! The only way `arch/` calls the layers above it: a table of functions that
//! `main` installs once at boot (before interrupts can reach them), like the
//! fixed entry points Linux's `arch/x86` calls (`handle_mm_fault` through
//! `exc_page_fault`, `force_sig`, `exit_to_user_mode`, `scheduler_tick`,
//! `x64_sys_call`). Keeping them here means nothing in `arch/` names a
//! higher module.
//!
//! Until [`install`] runs, a page fault is unhandled (an oops), the timer
//! tick does nothing, and there is no user mode to return to or call from.

use spin::Once;

use super::frame::TrapFrame;

/// What the trap and `syscall` entry paths call above `arch/`.
pub struct Upcalls {
    /// A #PF: `true` if it was resolved (demand paging, a vmalloc fault);
    /// `false` sends it on to the exception fixups or the oops.
    pub page_fault: fn(&TrapFrame) -> bool,
    /// An exception in user mode: end the process with `signal`.
    pub force_sig: fn(signal: u8, what: &str, addr: u64, rip: u64) -> !,
    /// On every return to ring 3 from an interrupt (the switch point of
    /// preemption).
    pub return_to_user: fn(),
    /// The local APIC timer tick.
    pub timer_tick: fn(),
    /// A `syscall` instruction: number in `rax`, result back in `rax`.
    pub syscall: fn(&mut TrapFrame),
}

static UPCALLS: Once<Upcalls> = Once::new();

/// Installs the table (once, at boot; later calls are ignored).
pub fn install(upcalls: Upcalls) {
    UPCALLS.call_once(|| upcalls);
}

/// The installed table, if [`install`] has run.
#[inline]
pub fn get() -> Option<&'static Upcalls> {
    UPCALLS.get()
}
