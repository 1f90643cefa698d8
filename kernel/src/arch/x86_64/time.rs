//! Kernel time: the TSC calibrated once against the PIT, read as time since
//! boot. Under `--icount` the TSC counts retired instructions exactly.
//!
//! Nanoseconds since boot are `((tsc - tsc_base) * mult) >> 32` (128-bit
//! product; `mult` is ns per tick in 32.32 fixed point), the formula of the
//! vDSO ([`super::vdso`]), which gets the same values through
//! [`clock_params`]: system calls and vDSO calls interleave monotonically.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::vdso::{ClockParams, MULT_SHIFT};
use crate::arch::x86_64::{cpu, pit};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick, 32.32 fixed point (0 before calibration).
static TSC_MULT: AtomicU64 = AtomicU64::new(0);
/// Wall-clock seconds at boot (from the RTC), the origin of `CLOCK_REALTIME`.
static BOOT_UNIX_SECS: AtomicU64 = AtomicU64::new(0);

/// Reads the RTC once; `realtime_ns` counts from it.
pub fn read_wall_clock() -> Option<u64> {
    let secs = crate::arch::x86_64::rtc::read_unix_time()?;
    let up = uptime_ns().unwrap_or(0) / 1_000_000_000;
    BOOT_UNIX_SECS.store(secs.saturating_sub(up), Ordering::Relaxed);
    Some(secs)
}

/// `CLOCK_REALTIME` - `CLOCK_MONOTONIC` in nanoseconds.
fn realtime_offset_ns() -> u64 {
    BOOT_UNIX_SECS.load(Ordering::Relaxed) * 1_000_000_000
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
pub fn realtime_ns() -> u64 {
    realtime_offset_ns() + uptime_ns().unwrap_or(0)
}

/// Remembers the boot TSC value; call first thing so timestamps start at 0.
pub fn mark_boot() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
}

/// Calibrates the TSC; returns its frequency in Hz (0 if calibration failed).
pub fn calibrate() -> u64 {
    let hz = pit::calibrate_tsc_hz().unwrap_or(0);
    TSC_HZ.store(hz, Ordering::Relaxed);
    TSC_MULT.store(mult_for_hz(hz), Ordering::Relaxed);
    crate::lib::printk::register_clock(uptime_ns);
    hz
}

/// `(10^9 << 32) / hz`, saturated; 0 for an unknown frequency.
fn mult_for_hz(hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    u64::try_from((1_000_000_000u128 << MULT_SHIFT) / hz as u128).unwrap_or(u64::MAX)
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since [`mark_boot`], or `None` before calibration.
pub fn uptime_ns() -> Option<u64> {
    let mult = TSC_MULT.load(Ordering::Relaxed);
    if mult == 0 {
        return None;
    }
    let ticks = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    Some((ticks as u128 * mult as u128 >> MULT_SHIFT) as u64)
}

/// What the vDSO needs to compute the same clocks; `None` before calibration.
pub fn clock_params() -> Option<ClockParams> {
    let mult = TSC_MULT.load(Ordering::Relaxed);
    (mult != 0).then(|| ClockParams {
        tsc_base: BOOT_TSC.load(Ordering::Relaxed),
        mult,
        realtime_offset_ns: realtime_offset_ns(),
    })
}
