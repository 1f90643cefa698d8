//! The console command type and the argument helpers commands share. Each
//! subsystem defines its `COMMANDS` next to its code; the console (above
//! every subsystem) lists the sets and runs the loop.

use crate::println;

/// One console command: `name args` in `help`, `run` with the rest of the line.
pub struct Command {
    pub name: &'static str,
    pub args: &'static str,
    pub help: &'static str,
    pub run: fn(args: &str),
}

/// A command's optional count argument: `default` when `word` is `None`, the number
/// when it is one in `1..=max`; otherwise prints `CMD: NAME must be 1..=MAX` and
/// returns `None`. The bound keeps a typed number from sizing an allocation or a loop
/// beyond what the command can do.
pub fn count_arg(cmd: &str, name: &str, word: Option<&str>, default: usize, max: usize) -> Option<usize> {
    match word.map(str::parse::<usize>) {
        None => Some(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Some(n),
        Some(_) => {
            println!("{cmd}: {name} must be 1..={max}");
            None
        }
    }
}

/// `args` as a single optional word (`None` if empty; several words stay one word, so
/// that a number parser rejects them).
pub fn single_arg(args: &str) -> Option<&str> {
    Some(args.trim()).filter(|a| !a.is_empty())
}
