//! Small file helpers on top of open/read/close, mostly for `/proc` files.

use core::ffi::CStr;

use crate::sys;

/// Reads up to `buf.len()` bytes of the file at `path`; returns the length or `-errno`.
pub fn read_file(path: &CStr, buf: &mut [u8]) -> isize {
    let fd = sys::open(path, sys::O_RDONLY | sys::O_CLOEXEC);
    if fd < 0 {
        return fd;
    }
    let mut len = 0;
    while len < buf.len() {
        let rest = &mut buf[len..];
        // SAFETY: `rest` is writable for its length.
        let n = unsafe { sys::read(fd as usize, rest.as_mut_ptr(), rest.len()) };
        if n < 0 {
            sys::close(fd as usize);
            return n;
        }
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    sys::close(fd as usize);
    len as isize
}

/// Reads the whole file at `path` in chunks, calling `f` on each; returns the
/// total size or `-errno`.
pub fn for_each_chunk(path: &CStr, mut f: impl FnMut(&[u8])) -> isize {
    let fd = sys::open(path, sys::O_RDONLY | sys::O_CLOEXEC);
    if fd < 0 {
        return fd;
    }
    let mut buf = [0u8; 4096];
    let mut total = 0;
    let ret = loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { sys::read(fd as usize, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break if n < 0 { n } else { total };
        }
        f(&buf[..n as usize]);
        total += n;
    };
    sys::close(fd as usize);
    ret
}

/// Number of lines in the file at `path` (e.g. VMAs in `/proc/self/maps`), or `-errno`.
pub fn count_lines(path: &CStr) -> isize {
    let mut lines = 0;
    let ret = for_each_chunk(path, |c| lines += c.iter().filter(|&&b| b == b'\n').count() as isize);
    if ret < 0 { ret } else { lines }
}

/// Parses a decimal (or `0x`-prefixed hexadecimal) number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    let text = core::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, radix).ok()
}

/// In `key: value` text (as in `/proc/self/status`), the first number after
/// the line starting with `key`, e.g. `field(status, b"VmPTE:")` → kB.
pub fn field(text: &[u8], key: &[u8]) -> Option<u64> {
    let line = text.split(|&b| b == b'\n').find(|l| l.starts_with(key))?;
    let rest = &line[key.len()..];
    let start = rest.iter().position(u8::is_ascii_digit)?;
    let len = rest[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    parse_u64(&rest[start..start + len])
}

/// Field `key` of the `key: value` file at `path` (`/proc/self/status`, `/proc/meminfo`).
pub fn proc_field(path: &CStr, key: &[u8]) -> Option<u64> {
    let mut buf = [0u8; 8192];
    let n = read_file(path, &mut buf);
    if n < 0 {
        return None;
    }
    field(&buf[..n as usize], key)
}
