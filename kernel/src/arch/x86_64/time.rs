//! Kernel time: the TSC calibrated once against the PIT, read as time since
//! boot. Under `--icount` the TSC counts retired instructions exactly.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::{cpu, pit};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// Wall-clock seconds at boot (from the RTC), the origin of `CLOCK_REALTIME`.
static BOOT_UNIX_SECS: AtomicU64 = AtomicU64::new(0);

/// Reads the RTC once; `realtime_ns` counts from it.
pub fn read_wall_clock() -> Option<u64> {
    let secs = crate::arch::x86_64::rtc::read_unix_time()?;
    let up = uptime_ns().unwrap_or(0) / 1_000_000_000;
    BOOT_UNIX_SECS.store(secs.saturating_sub(up), Ordering::Relaxed);
    Some(secs)
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
pub fn realtime_ns() -> u64 {
    BOOT_UNIX_SECS.load(Ordering::Relaxed) * 1_000_000_000 + uptime_ns().unwrap_or(0)
}

/// Remembers the boot TSC value; call first thing so timestamps start at 0.
pub fn mark_boot() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
}

/// Calibrates the TSC; returns its frequency in Hz (0 if calibration failed).
pub fn calibrate() -> u64 {
    let hz = pit::calibrate_tsc_hz().unwrap_or(0);
    TSC_HZ.store(hz, Ordering::Relaxed);
    crate::lib::printk::register_clock(uptime_ns);
    hz
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since [`mark_boot`], or `None` before calibration.
pub fn uptime_ns() -> Option<u64> {
    let hz = tsc_hz();
    if hz == 0 {
        return None;
    }
    let ticks = cpu::rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    Some((ticks as u128 * 1_000_000_000 / hz as u128) as u64)
}
