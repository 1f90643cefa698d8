//! Non-maskable interrupts (Linux `arch/x86/kernel/nmi.c`): counted, and
//! handed to one hook that tests of NMI-safe code install.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::lib::sync::FnHook;

/// Non-maskable interrupts taken.
pub static NMIS: AtomicU64 = AtomicU64::new(0);

/// Code to run on every NMI (set by subsystems that test NMI safety).
static NMI_HOOK: FnHook = FnHook::new();

/// Installs (`Some`) or removes (`None`) the NMI hook. The hook runs in NMI
/// context: it may only use atomics and `try_lock`.
pub fn set_nmi_hook(hook: Option<fn()>) {
    NMI_HOOK.set(hook);
}

pub fn handle_nmi() {
    NMIS.fetch_add(1, Ordering::SeqCst);
    NMI_HOOK.call();
}
