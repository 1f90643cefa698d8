//! Linux error numbers (`include/uapi/asm-generic/errno-base.h` and
//! `errno.h`), as system calls return them: `-errno` in `rax`.

use core::fmt;

/// A Linux `errno` value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
pub enum Errno {
    EPERM = 1,
    ENOENT = 2,
    ESRCH = 3,
    EINTR = 4,
    EIO = 5,
    ENXIO = 6,
    E2BIG = 7,
    ENOEXEC = 8,
    EBADF = 9,
    ECHILD = 10,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    EBUSY = 16,
    EEXIST = 17,
    ENODEV = 19,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    ENFILE = 23,
    EMFILE = 24,
    ENOTTY = 25,
    EFBIG = 27,
    ENOSPC = 28,
    ESPIPE = 29,
    EROFS = 30,
    EPIPE = 32,
    ERANGE = 34,
    ENAMETOOLONG = 36,
    ENOSYS = 38,
    ELOOP = 40,
    EOVERFLOW = 75,
}

impl Errno {
    /// The value a system call returns in `rax` for this error.
    pub const fn as_ret(self) -> i64 {
        -(self as i32 as i64)
    }

    /// The symbolic name (`"ENOMEM"`).
    pub const fn name(self) -> &'static str {
        use Errno::*;
        match self {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            ESRCH => "ESRCH",
            EINTR => "EINTR",
            EIO => "EIO",
            ENXIO => "ENXIO",
            E2BIG => "E2BIG",
            ENOEXEC => "ENOEXEC",
            EBADF => "EBADF",
            ECHILD => "ECHILD",
            EAGAIN => "EAGAIN",
            ENOMEM => "ENOMEM",
            EACCES => "EACCES",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            EEXIST => "EEXIST",
            ENODEV => "ENODEV",
            ENOTDIR => "ENOTDIR",
            EISDIR => "EISDIR",
            EINVAL => "EINVAL",
            ENFILE => "ENFILE",
            EMFILE => "EMFILE",
            ENOTTY => "ENOTTY",
            EFBIG => "EFBIG",
            ENOSPC => "ENOSPC",
            ESPIPE => "ESPIPE",
            EROFS => "EROFS",
            EPIPE => "EPIPE",
            ERANGE => "ERANGE",
            ENAMETOOLONG => "ENAMETOOLONG",
            ENOSYS => "ENOSYS",
            ELOOP => "ELOOP",
            EOVERFLOW => "EOVERFLOW",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as i32)
    }
}

/// A system call's result: a non-negative value or an error.
pub type SysResult = Result<u64, Errno>;

/// Encodes a result for `rax`.
pub const fn sys_ret(r: SysResult) -> u64 {
    match r {
        Ok(v) => v,
        Err(e) => e.as_ret() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_returned_as_negative_numbers() {
        assert_eq!(sys_ret(Err(Errno::ENOMEM)), (-12i64) as u64);
        assert_eq!(sys_ret(Err(Errno::ENOSYS)), (-38i64) as u64);
        assert_eq!(sys_ret(Ok(7)), 7);
        assert_eq!(Errno::EFAULT.name(), "EFAULT");
    }
}
