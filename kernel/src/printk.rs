//! The `log` facade backend: every `log::info!` etc. becomes one serial line
//! prefixed with a Linux-`printk`-style timestamp (seconds since boot, from
//! the TSC) and the level, e.g. `[    0.004211] INFO  e820: ...`.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::{serial, time};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
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
        let ns = time::uptime_ns().unwrap_or(0);
        serial::write_fmt(format_args!(
            "[{:5}.{:06}] {} {}\n",
            ns / 1_000_000_000,
            ns % 1_000_000_000 / 1000,
            level,
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Installs the serial logger at `level`.
pub fn init(level: LevelFilter) {
    // A second call (there is none) would only keep the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// `printk!` for console output without timestamp or level (command output).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
