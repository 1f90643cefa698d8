//! Non-maskable interrupts (Linux `arch/x86/kernel/nmi.c`): counted, handed
//! with the interrupted frame to the sampler the profiler installs while it
//! runs (`profile.rs`), and to one hook that tests of NMI-safe code install.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::frame::TrapFrame;

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

/// The profiler's sampler, a `fn(&TrapFrame)` as a word (0: none).
static SAMPLER: AtomicUsize = AtomicUsize::new(0);

/// Installs (`Some`) or removes (`None`) the sampler, which gets every NMI's
/// interrupted frame before the hook runs. NMI context, like the hook.
pub fn set_sampler(sampler: Option<fn(&TrapFrame)>) {
    SAMPLER.store(sampler.map_or(0, |f| f as usize), Ordering::SeqCst);
}

pub fn handle_nmi(frame: &TrapFrame) {
    NMIS.fetch_add(1, Ordering::SeqCst);
    let raw = SAMPLER.load(Ordering::SeqCst);
    if raw != 0 {
        // SAFETY: the only non-zero values ever stored are `fn(&TrapFrame)`
        // pointers (`set_sampler`).
        let sampler: fn(&TrapFrame) = unsafe { core::mem::transmute::<usize, fn(&TrapFrame)>(raw) };
        sampler(frame);
    }
    NMI_HOOK.call();
}
