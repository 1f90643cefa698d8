//! The sampling profiler's owner: `profile[=RATE]` on the command line starts it
//! after boot (the runner's `--profile[=RATE]`), the console's `profile`
//! command starts, stops and dumps it, and power-off in batch mode (and the
//! `poweroff` command) dumps what it recorded. The NMI side, the stack walk
//! and the output format are in [`crate::arch::x86_64::profile`]; this module
//! owns the sample ring, a vmalloc area allocated when sampling starts (NMI
//! context cannot allocate) and kept, with its samples, until the next start.
//!
//! The dump is a block of `prof: ` lines on the console that the runner turns
//! into a top list and a flame graph with the kernel ELF's symbols
//! (`boot/src/profile.rs`).

use alloc::format;
use alloc::string::String;

use mm::gfp::GFP_KERNEL;
use mm::vmalloc::VmArea;

use crate::arch::x86_64::layout::KERNEL_IMAGE_BASE;
use crate::arch::x86_64::profile::{self as nmi_profile, DEFAULT_RATE_HZ};
use crate::lib::command::Command;
use crate::memory::vmalloc;
use crate::println;
use crate::task::sched;

/// Size of the sample ring: about 8 MiB / (16 + 8 * depth) bytes a sample,
/// some 60,000 samples of typical depth (6 s at 10 kHz); the dump counts the
/// samples that did not fit as dropped.
pub const BUFFER_BYTES: usize = 8 << 20;

/// The ring of the last run (`None` before the first start). Normal context
/// only: interrupt handlers never take it.
static BUFFER: spin::Mutex<Option<VmArea>> = spin::Mutex::new(None);

/// Starts sampling at about `rate_hz` into a fresh ring (the previous run's
/// samples are dropped); returns the rate the PIT really runs at.
pub fn start(rate_hz: u64) -> Result<u64, String> {
    let mut buffer = BUFFER.lock();
    if nmi_profile::is_running() {
        return Err("already running (profile stop first)".into());
    }
    if let Some(old) = buffer.take() {
        vmalloc::vfree(old);
    }
    let area = vmalloc::vmalloc(BUFFER_BYTES, GFP_KERNEL).map_err(|e| format!("no memory for the ring: {:?}", e))?;
    let words = area.size_bytes() / 8;
    let ptr = area.addr().as_u64() as *mut u64;
    // SAFETY: the area is mapped for `size_bytes` and owned here; it stays in
    // BUFFER (not freed or written by anyone else) until `stop` has returned:
    // every path that frees it (`start` above) first finds the profiler stopped.
    match unsafe { nmi_profile::start(ptr, words, rate_hz, sched::KERNEL_STACK_SIZE as u64) } {
        Ok(rate) => {
            *buffer = Some(area);
            Ok(rate)
        }
        Err(e) => {
            vmalloc::vfree(area);
            Err(format!("{}", e))
        }
    }
}

/// [`start`] for the command line: logs the outcome.
pub fn start_from_cmdline(rate_hz: u64) {
    match start(rate_hz) {
        Ok(rate) => log::info!(
            "profile: sampling at {} Hz (PIT as NMI through the I/O APIC) into {} MiB, until power-off",
            rate,
            BUFFER_BYTES >> 20
        ),
        Err(e) => log::warn!("profile: cannot start: {}", e),
    }
}

/// Stops sampling (the samples stay for [`dump`]).
pub fn stop() {
    nmi_profile::stop();
}

/// Prints the samples recorded so far (see the arch module for the format).
pub fn dump() {
    let buffer = BUFFER.lock();
    let Some(area) = buffer.as_ref() else {
        println!("prof: no samples: the profiler never ran (boot with profile=RATE or type 'profile start')");
        return;
    };
    let stats = nmi_profile::stats();
    let words = nmi_profile::published_words().min(area.size_bytes() / 8);
    // SAFETY: the first `published_words` words of the ring are complete
    // records that the NMI never writes again; the area stays mapped while
    // BUFFER's lock is held.
    let samples = unsafe { core::slice::from_raw_parts(area.addr().as_u64() as *const u64, words) };
    let _ = nmi_profile::write_samples(samples, &stats, KERNEL_IMAGE_BASE, &mut crate::lib::printk::Writer);
}

/// At power-off: stop and dump, if the profiler ran since boot.
pub fn finish() {
    if BUFFER.lock().is_some() {
        stop();
        dump();
    }
}

pub const COMMANDS: &[Command] = &[Command {
    name: "profile",
    args: "[start [RATE]|stop|dump]",
    help: "sampling profiler: state; start (default 10000 Hz), stop, print the samples",
    run: cmd_profile,
}];

fn cmd_profile(args: &str) {
    let mut words = args.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None, _, _) => {
            let s = nmi_profile::stats();
            println!(
                "profile: {}, {} samples ({} kernel, {} user, {} dropped) at {} Hz",
                if s.running { "running" } else { "stopped" },
                s.kernel + s.user,
                s.kernel,
                s.user,
                s.dropped,
                s.rate_hz
            );
        }
        (Some("start"), rate, None) => {
            let rate = match rate.map(str::parse::<u64>) {
                None => DEFAULT_RATE_HZ,
                Some(Ok(r)) => r,
                Some(Err(_)) => return println!("profile: RATE must be a number of Hz"),
            };
            match start(rate) {
                Ok(r) => println!("profile: sampling at {} Hz", r),
                Err(e) => println!("profile: cannot start: {}", e),
            }
        }
        (Some("stop"), None, _) => {
            stop();
            let s = nmi_profile::stats();
            println!("profile: stopped, {} samples", s.kernel + s.user);
        }
        (Some("dump"), None, _) => dump(),
        _ => println!("usage: profile [start [RATE]|stop|dump]"),
    }
}
