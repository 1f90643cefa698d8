//! Formatted output to stdout through `write(2)`.
//!
//! Each `print!` formats into a stack buffer and issues as few `write` calls as
//! possible (one per call for lines shorter than the buffer), so lines from a
//! program are never torn.

use core::fmt::{self, Write};

use crate::sys;

const BUF_LEN: usize = 512;

struct LineBuf {
    buf: [u8; BUF_LEN],
    len: usize,
}

impl LineBuf {
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.len {
            let n = sys::write(1, &self.buf[done..self.len]);
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        self.len = 0;
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == BUF_LEN {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Implementation of [`print!`](crate::print); not meant to be called directly.
pub fn print_fmt(args: fmt::Arguments) {
    let mut out = LineBuf { buf: [0; BUF_LEN], len: 0 };
    // LineBuf::write_str never fails.
    let _ = out.write_fmt(args);
    out.flush();
}

/// Displays a byte string, replacing non-printable bytes with `?`.
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for &b in self.0 {
            let c = if (0x20..0x7f).contains(&b) { b as char } else { '?' };
            f.write_char(c)?;
        }
        Ok(())
    }
}

/// Displays a raw syscall result: `-ENAME` for known errors, small values in
/// decimal, addresses in hexadecimal.
pub struct Ret(pub isize);

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match sys::errno_name(-self.0) {
            Some(name) if self.0 < 0 => write!(f, "-{name}"),
            _ if self.0 < 0 => write!(f, "-errno{}", -self.0),
            _ if self.0 < 4096 => write!(f, "{}", self.0),
            _ => write!(f, "{:#x}", self.0),
        }
    }
}

/// Prints to stdout.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::io::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line to stdout.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::io::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
