//! `printk`: the `log` facade backend and the `print!`/`println!` macros.
//!
//! Every `log::info!` etc. becomes one console line prefixed with a
//! Linux-`printk`-style timestamp (seconds since boot) and the level, e.g.
//! `[    0.004211] INFO  e820: ...`. Like Linux's `register_console()`, the
//! device that prints and the clock that stamps are registered by the layer
//! that owns them (the serial driver and the TSC clock in `arch/`), so this
//! layer names no hardware. Output before registration is dropped.

use core::fmt;

use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Once;

/// Writes formatted text to the console device.
pub type ConsoleWrite = fn(fmt::Arguments<'_>);
/// Nanoseconds since boot, or `None` before the clock is calibrated.
pub type Clock = fn() -> Option<u64>;

static CONSOLE: Once<ConsoleWrite> = Once::new();
static CLOCK: Once<Clock> = Once::new();

/// Registers the console device (Linux `register_console`); the first wins.
pub fn register_console(write: ConsoleWrite) {
    CONSOLE.call_once(|| write);
}

/// Registers the clock of the timestamps; the first wins.
pub fn register_clock(clock: Clock) {
    CLOCK.call_once(|| clock);
}

/// Writes to the registered console (used by the macros).
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if let Some(write) = CONSOLE.get() {
        write(args);
    }
}

/// `fmt::Write` adapter for the console (for `write!`-style producers such
/// as the allocator's `/proc`-format tables).
pub struct Writer;

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_fmt(format_args!("{}", s));
        Ok(())
    }
}

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let ns = CLOCK.get().and_then(|clock| clock()).unwrap_or(0);
        write_fmt(format_args!(
            "[{:5}.{:06}] {} {}\n",
            ns / 1_000_000_000,
            ns % 1_000_000_000 / 1000,
            level,
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    // A second call (there is none) would only keep the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// `printk!` for console output without timestamp or level (command output).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::lib::printk::write_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::lib::printk::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
