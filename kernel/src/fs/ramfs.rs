//! A read-only in-memory file system and per-process file descriptors.
//!
//! The tree holds the initramfs members (Linux's `newc` cpio, handed over by
//! the bootloader as its ramdisk; the bytes stay where the bootloader put
//! them) and the `/proc` files of [`crate::fs::procfs`], which are generated when
//! they are opened (a snapshot, like `seq_file` on the first read).
//!
//! File descriptors 0, 1 and 2 are the serial console. The one writable file is
//! the sysctl `/proc/sys/vm/drop_caches` (write-only, as Linux's mode 0200; every
//! write is handed to [`crate::memory::shrinker::drop_caches_sysctl`]).
//! Errors are Linux's: `ENOENT`, `ENOTDIR`, `EISDIR`, `EROFS` (creating or
//! writing on this file system), `EACCES` (opening another `/proc` file for
//! writing), `EEXIST` (`O_CREAT | O_EXCL` on an existing file), `EBADF`, `EMFILE`.
//!
//! Every descriptor but the console has a file position (Linux `f_pos`), moved
//! by each kind of file's `llseek` as Linux's: initramfs files as tmpfs
//! (`generic_file_llseek_size`; no holes), `/proc` text files as `seq_lseek`,
//! initramfs directories as `dcache_dir_lseek`, `/proc` directories as
//! `generic_file_llseek` (size 0), `drop_caches` as `default_llseek`. The
//! system calls that use positions are in [`crate::entry::read_write`]; this
//! module never touches user memory (see [`FdTable`]).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use exec::cpio::Archive;
use mm::errno::Errno;
use spin::Once;

/// Largest number of open files per process (`RLIMIT_NOFILE`).
pub const NR_OPEN: usize = 256;
/// Longest path accepted (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

pub const O_ACCMODE: u64 = 3;
pub const O_WRONLY: u64 = 1;
pub const O_RDWR: u64 = 2;
pub const O_CREAT: u64 = 0o100;
pub const O_EXCL: u64 = 0o200;
pub const O_TRUNC: u64 = 0o1000;
pub const O_DIRECTORY: u64 = 0o200000;

#[derive(Clone, Copy, Debug)]
enum Node {
    File(&'static [u8]),
    Dir,
}

static TREE: Once<BTreeMap<String, Node>> = Once::new();

/// Builds the tree from the initramfs (may be empty).
pub fn init(initramfs: &'static [u8]) -> Result<usize, exec::cpio::CpioError> {
    let mut tree = BTreeMap::new();
    tree.insert(String::new(), Node::Dir);
    let mut count = 0;
    if !initramfs.is_empty() {
        let archive = Archive::parse(initramfs)?;
        for e in archive.entries() {
            let node = if e.is_dir() {
                Node::Dir
            } else if e.is_file() {
                Node::File(e.data)
            } else {
                continue;
            };
            // Parent directories exist even if the archive omits them.
            let mut prefix = e.name;
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                tree.entry(String::from(parent)).or_insert(Node::Dir);
                prefix = parent;
            }
            tree.insert(String::from(e.name), node);
            count += 1;
        }
    }
    for dir in ["proc", "proc/self", "proc/sys", "proc/sys/vm"] {
        tree.insert(String::from(dir), Node::Dir);
    }
    TREE.call_once(|| tree);
    Ok(count)
}

/// Normalises an absolute or root-relative path: `.`, `..` and repeated `/`
/// resolved; result without leading `/` (`"bin/hello"`, `""` for `/`).
pub fn normalise(path: &str) -> Result<String, Errno> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    // The result is never longer than `path`: one fallible reservation, no growth
    // (a full kernel heap gives ENOMEM, not a panic).
    let mut out = String::new();
    out.try_reserve_exact(path.len()).map_err(|_| Errno::ENOMEM)?;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    Ok(out)
}

/// The regular files under `dir` (for the demo: every program in `/bin`).
pub fn list_files(dir: &str) -> Vec<String> {
    let Some(tree) = TREE.get() else { return Vec::new() };
    let dir = dir.trim_matches('/');
    let prefix = if dir.is_empty() { String::new() } else { alloc::format!("{}/", dir) };
    tree.iter()
        .filter(|(p, n)| matches!(n, Node::File(_)) && p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
        .map(|(p, _)| alloc::format!("/{}", p))
        .collect()
}

/// The contents of an initramfs file.
pub fn read_file(path: &str) -> Result<&'static [u8], Errno> {
    match lookup(&normalise(path)?)? {
        Node::File(data) => Ok(data),
        Node::Dir => Err(Errno::EISDIR),
    }
}

fn lookup(path: &str) -> Result<Node, Errno> {
    let tree = TREE.get().ok_or(Errno::ENOENT)?;
    if let Some(node) = tree.get(path) {
        return Ok(*node);
    }
    if crate::fs::procfs::exists(path) {
        return Ok(Node::File(&[]));
    }
    // A file used as a directory is ENOTDIR, not ENOENT.
    let mut prefix = path;
    while let Some((parent, _)) = prefix.rsplit_once('/') {
        if let Some(Node::File(_)) = tree.get(parent) {
            return Err(Errno::ENOTDIR);
        }
        prefix = parent;
    }
    Err(Errno::ENOENT)
}

/// Linux `lseek` whence values.
pub const SEEK_SET: u32 = 0;
pub const SEEK_CUR: u32 = 1;
pub const SEEK_END: u32 = 2;
pub const SEEK_DATA: u32 = 3;
pub const SEEK_HOLE: u32 = 4;
/// The largest whence (Linux `SEEK_MAX`); anything above is `EINVAL`.
pub const SEEK_MAX: u32 = SEEK_HOLE;

/// What an open file descriptor refers to. Positions are Linux `loff_t`
/// (`f_pos`), never negative.
#[derive(Debug)]
enum OpenFile {
    /// A tty: not seekable (`ESPIPE` for `lseek`, `pread`, `pwrite`).
    Console,
    Data { bytes: FileBytes, pos: i64, seek: SeekKind },
    /// `proc`: a `/proc` directory (Linux `generic_file_llseek`, size 0);
    /// else an initramfs directory (`dcache_dir_lseek`).
    Dir { pos: i64, proc: bool },
    /// `/proc/sys/vm/drop_caches` opened for writing.
    DropCaches { pos: i64 },
}

/// Which `llseek` a data file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeekKind {
    /// An initramfs file (Linux: tmpfs `shmem_file_llseek`, i.e.
    /// `generic_file_llseek_size` for SET/CUR/END; no holes, so DATA is the
    /// offset and HOLE the size, `ENXIO` at or past the end).
    Generic,
    /// A `/proc` text file (Linux `seq_lseek`: SET and CUR only, to any
    /// non-negative offset, also past the end).
    Seq,
}

/// The bytes of a data file: in the initramfs, or a `/proc` snapshot.
#[derive(Debug)]
pub enum FileBytes {
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl FileBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Static(b) => b,
            FileBytes::Owned(v) => v,
        }
    }

    /// Lends the bytes out of the file table: a static slice is copied, a
    /// snapshot moved out (the table keeps an empty one until
    /// [`Self::give_back`]).
    fn lend(&mut self) -> FileBytes {
        match self {
            FileBytes::Static(b) => FileBytes::Static(b),
            FileBytes::Owned(v) => FileBytes::Owned(core::mem::take(v)),
        }
    }

    fn give_back(&mut self, lent: FileBytes) {
        if let (FileBytes::Owned(slot), FileBytes::Owned(v)) = (self, lent) {
            *slot = v;
        }
    }
}

/// What a read of a descriptor goes to ([`FdTable::read_begin`]).
#[derive(Debug)]
pub enum ReadSource {
    /// The console: `read` waits for input; not seekable.
    Console,
    /// A data file's bytes, lent out of the table, and the position to read
    /// at. Hand them back with [`FdTable::read_end`].
    File { bytes: FileBytes, pos: i64 },
}

/// What a write to a descriptor goes to ([`FdTable::write_target`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTarget {
    Console,
    /// `/proc/sys/vm/drop_caches`, and its file position.
    DropCaches { pos: i64 },
}

/// A process's file descriptors (Linux `files_struct`).
///
/// The table lives in the task, under the scheduler's lock: an IRQ-safe spin
/// lock that the page-fault path can need (the OOM killer walks every task).
/// So no copy to or from user space happens inside an `FdTable` method: a read
/// borrows the file's bytes with [`Self::read_begin`], copies them with the
/// lock dropped, and returns them with [`Self::read_end`]. Only the task itself
/// uses its table, and it is inside that system call meanwhile.
#[derive(Debug, Default)]
pub struct FdTable {
    fds: Vec<Option<OpenFile>>,
}

impl FdTable {
    /// 0, 1 and 2 on the console.
    pub fn with_console() -> FdTable {
        FdTable { fds: alloc::vec![Some(OpenFile::Console), Some(OpenFile::Console), Some(OpenFile::Console)] }
    }

    fn get(&mut self, fd: u64) -> Result<&mut OpenFile, Errno> {
        self.fds.get_mut(fd as usize).and_then(|f| f.as_mut()).ok_or(Errno::EBADF)
    }

    fn install(&mut self, file: OpenFile) -> Result<u64, Errno> {
        if let Some(i) = self.fds.iter().position(|f| f.is_none()) {
            self.fds[i] = Some(file);
            return Ok(i as u64);
        }
        if self.fds.len() >= NR_OPEN {
            return Err(Errno::EMFILE);
        }
        self.fds.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        self.fds.push(Some(file));
        Ok(self.fds.len() as u64 - 1)
    }

    /// `open(path, flags)`; `proc_self` is the caller's rendering of the
    /// `/proc/self/*` file `path` names, if it names one.
    pub fn open(&mut self, path: &str, flags: u64, proc_self: Option<Result<String, Errno>>) -> Result<u64, Errno> {
        let path = normalise(path)?;
        let write = matches!(flags & O_ACCMODE, O_WRONLY | O_RDWR);
        let is_proc = path == "proc" || path.starts_with("proc/");
        let creat = flags & O_CREAT != 0;
        let node = match lookup(&path) {
            // procfs cannot create files at all; elsewhere the fs is read-only.
            Err(Errno::ENOENT) if creat => return Err(if is_proc { Errno::ENOENT } else { Errno::EROFS }),
            r => r?,
        };
        if creat && flags & O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        match node {
            Node::Dir if write => Err(Errno::EISDIR),
            Node::Dir => self.install(OpenFile::Dir { pos: 0, proc: is_proc }),
            Node::File(_) if flags & O_DIRECTORY != 0 => Err(Errno::ENOTDIR),
            // Mode 0200 (sysctl permissions ignore root's DAC override): only a
            // write-only open.
            Node::File(_) if path == crate::fs::procfs::DROP_CACHES => match flags & O_ACCMODE {
                O_WRONLY => self.install(OpenFile::DropCaches { pos: 0 }),
                _ => Err(Errno::EACCES),
            },
            Node::File(_) if write || flags & O_TRUNC != 0 => Err(if is_proc { Errno::EACCES } else { Errno::EROFS }),
            Node::File(data) if !is_proc => {
                self.install(OpenFile::Data { bytes: FileBytes::Static(data), pos: 0, seek: SeekKind::Generic })
            }
            Node::File(_) => {
                let text = match path.strip_prefix("proc/self/") {
                    Some(_) => proc_self,
                    None => crate::fs::procfs::generate(&path),
                }
                .ok_or(Errno::ENOENT)??;
                let bytes = FileBytes::Owned(text.into_bytes());
                self.install(OpenFile::Data { bytes, pos: 0, seek: SeekKind::Seq })
            }
        }
    }

    /// Starts a read of `fd` (Linux `vfs_read` up to the copy): at `pos`
    /// (`pread`), or else at the file position. `EISDIR` for a directory,
    /// `EBADF` for a descriptor not open for reading; the console has no
    /// position (`ESPIPE` if `pos` is given).
    pub fn read_begin(&mut self, fd: u64, pos: Option<i64>) -> Result<ReadSource, Errno> {
        match self.get(fd)? {
            OpenFile::Console if pos.is_some() => Err(Errno::ESPIPE),
            OpenFile::Console => Ok(ReadSource::Console),
            OpenFile::Dir { .. } => Err(Errno::EISDIR),
            OpenFile::DropCaches { .. } => Err(Errno::EBADF),
            OpenFile::Data { bytes, pos: file_pos, .. } => {
                Ok(ReadSource::File { bytes: bytes.lend(), pos: pos.unwrap_or(*file_pos) })
            }
        }
    }

    /// Ends a read begun by [`Self::read_begin`]: returns the lent bytes
    /// and, for `read`/`readv`, sets the file position to `new_pos`.
    pub fn read_end(&mut self, fd: u64, lent: FileBytes, new_pos: Option<i64>) {
        if let Ok(OpenFile::Data { bytes, pos, .. }) = self.get(fd) {
            bytes.give_back(lent);
            if let Some(p) = new_pos {
                *pos = p;
            }
        }
    }

    /// What a write to `fd` goes to: `EBADF` unless it was opened for
    /// writing (no initramfs or `/proc` data file can be). `positioned`: a
    /// `pwrite`, which the console refuses with `ESPIPE`.
    pub fn write_target(&mut self, fd: u64, positioned: bool) -> Result<WriteTarget, Errno> {
        match self.get(fd)? {
            OpenFile::Console if positioned => Err(Errno::ESPIPE),
            OpenFile::Console => Ok(WriteTarget::Console),
            OpenFile::DropCaches { pos } => Ok(WriteTarget::DropCaches { pos: *pos }),
            // Linux `seq_open` clears FMODE_PWRITE.
            OpenFile::Data { seek: SeekKind::Seq, .. } if positioned => Err(Errno::ESPIPE),
            OpenFile::Data { .. } | OpenFile::Dir { .. } => Err(Errno::EBADF),
        }
    }

    /// Sets the file position of `/proc/sys/vm/drop_caches` after a `write`.
    pub fn write_end(&mut self, fd: u64, new_pos: i64) {
        if let Ok(OpenFile::DropCaches { pos }) = self.get(fd) {
            *pos = new_pos;
        }
    }

    /// Checks that `fd` takes an explicit position (Linux `FMODE_PREAD` for
    /// `preadv`, `FMODE_PWRITE` for `pwritev` if `write`): `ESPIPE` for the
    /// console, and for writes to `/proc` text files (Linux `seq_open` clears
    /// FMODE_PWRITE).
    pub fn check_positioned(&mut self, fd: u64, write: bool) -> Result<(), Errno> {
        match self.get(fd)? {
            OpenFile::Console => Err(Errno::ESPIPE),
            OpenFile::Data { seek: SeekKind::Seq, .. } if write => Err(Errno::ESPIPE),
            _ => Ok(()),
        }
    }

    /// `lseek(fd, offset, whence)` (Linux `ksys_lseek` and each file's
    /// `llseek`); returns the new position. A `whence` above `SEEK_MAX` is
    /// `EINVAL` before the file is asked; the console is `ESPIPE`.
    pub fn lseek(&mut self, fd: u64, offset: i64, whence: u32) -> Result<i64, Errno> {
        let file = self.get(fd)?;
        if whence > SEEK_MAX {
            return Err(Errno::EINVAL);
        }
        let (pos, new) = match file {
            OpenFile::Console => return Err(Errno::ESPIPE),
            OpenFile::Data { bytes, pos, seek: SeekKind::Generic } => {
                let size = bytes.as_slice().len() as i64;
                let new = generic_llseek(*pos, size, offset, whence)?;
                (pos, new)
            }
            OpenFile::Dir { pos, proc: true } => {
                let new = generic_llseek(*pos, 0, offset, whence)?;
                (pos, new)
            }
            OpenFile::Data { pos, seek: SeekKind::Seq, .. } | OpenFile::Dir { pos, proc: false } => {
                let new = set_or_cur_llseek(*pos, offset, whence)?;
                (pos, new)
            }
            // Linux `default_llseek`; a sysctl file's size is 0.
            OpenFile::DropCaches { pos } => {
                let new = default_llseek(*pos, 0, offset, whence)?;
                (pos, new)
            }
        };
        *pos = new;
        Ok(new)
    }

    /// Whether `fd` is the console (reads and writes go to the serial port).
    pub fn is_console(&mut self, fd: u64) -> Result<bool, Errno> {
        Ok(matches!(self.get(fd)?, OpenFile::Console))
    }

    pub fn close(&mut self, fd: u64) -> Result<(), Errno> {
        let slot = self.fds.get_mut(fd as usize).ok_or(Errno::EBADF)?;
        slot.take().map(|_| ()).ok_or(Errno::EBADF)
    }

    pub fn close_all(&mut self) {
        self.fds.clear();
    }
}

/// Linux `generic_file_llseek_size` with `maxsize` `MAX_LFS_FILESIZE`
/// (`i64::MAX`, so only a negative result is `EINVAL`) and `eof` the file
/// size, as tmpfs uses it; SEEK_DATA/SEEK_HOLE as for a file without holes.
/// Offsets add with wrapping as in the kernel's C (`-fno-strict-overflow`):
/// an overflow comes out negative and is `EINVAL`.
fn generic_llseek(pos: i64, size: i64, offset: i64, whence: u32) -> Result<i64, Errno> {
    let new = match whence {
        SEEK_SET => offset,
        SEEK_CUR if offset == 0 => return Ok(pos),
        SEEK_CUR => pos.wrapping_add(offset),
        SEEK_END => size.wrapping_add(offset),
        // Compared unsigned: a negative offset is past the end too.
        SEEK_DATA | SEEK_HOLE if offset as u64 >= size as u64 => return Err(Errno::ENXIO),
        SEEK_DATA => offset,
        SEEK_HOLE => size,
        _ => return Err(Errno::EINVAL),
    };
    if new < 0 { Err(Errno::EINVAL) } else { Ok(new) }
}

/// Linux `seq_lseek` (the `/proc` text files) and `dcache_dir_lseek`
/// (directories): SEEK_SET and SEEK_CUR to any non-negative position.
fn set_or_cur_llseek(pos: i64, offset: i64, whence: u32) -> Result<i64, Errno> {
    let new = match whence {
        SEEK_SET => offset,
        SEEK_CUR => pos.wrapping_add(offset),
        _ => return Err(Errno::EINVAL),
    };
    if new < 0 { Err(Errno::EINVAL) } else { Ok(new) }
}

/// Linux `default_llseek` (the sysctl files): SEEK_DATA and SEEK_HOLE
/// compare signed, so a negative offset is `EINVAL` rather than `ENXIO`.
fn default_llseek(pos: i64, size: i64, offset: i64, whence: u32) -> Result<i64, Errno> {
    let new = match whence {
        SEEK_END => size.wrapping_add(offset),
        SEEK_CUR if offset == 0 => return Ok(pos),
        SEEK_CUR => pos.wrapping_add(offset),
        SEEK_DATA | SEEK_HOLE if offset >= size => return Err(Errno::ENXIO),
        SEEK_HOLE => size,
        _ => offset,
    };
    if new < 0 { Err(Errno::EINVAL) } else { Ok(new) }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(normalise_resolves_dots_and_refuses_bad_paths),
    crate::ktest!(llseek_follows_linux),
];

fn llseek_follows_linux() -> crate::lib::ktest::KResult {
    use Errno::{EINVAL, ENXIO};
    // (pos, size, offset, whence) -> tmpfs, seq_file, default_llseek.
    let cases: &[((i64, i64, i64, u32), Result<i64, Errno>, Result<i64, Errno>, Result<i64, Errno>)] = &[
        ((5, 100, 7, SEEK_SET), Ok(7), Ok(7), Ok(7)),
        ((5, 100, 200, SEEK_SET), Ok(200), Ok(200), Ok(200)),
        ((5, 100, -1, SEEK_SET), Err(EINVAL), Err(EINVAL), Err(EINVAL)),
        ((5, 100, 3, SEEK_CUR), Ok(8), Ok(8), Ok(8)),
        ((5, 100, -6, SEEK_CUR), Err(EINVAL), Err(EINVAL), Err(EINVAL)),
        ((5, 100, i64::MAX, SEEK_CUR), Err(EINVAL), Err(EINVAL), Err(EINVAL)),
        ((5, 100, 0, SEEK_END), Ok(100), Err(EINVAL), Ok(100)),
        ((5, 100, -101, SEEK_END), Err(EINVAL), Err(EINVAL), Err(EINVAL)),
        ((5, 100, i64::MAX, SEEK_END), Err(EINVAL), Err(EINVAL), Err(EINVAL)),
        ((5, 100, 99, SEEK_DATA), Ok(99), Err(EINVAL), Ok(99)),
        ((5, 100, 100, SEEK_DATA), Err(ENXIO), Err(EINVAL), Err(ENXIO)),
        ((5, 100, -1, SEEK_DATA), Err(ENXIO), Err(EINVAL), Err(EINVAL)),
        ((5, 100, 10, SEEK_HOLE), Ok(100), Err(EINVAL), Ok(100)),
        ((5, 100, 100, SEEK_HOLE), Err(ENXIO), Err(EINVAL), Err(ENXIO)),
    ];
    for &((pos, size, offset, whence), generic, seq, default) in cases {
        let args = (pos, size, offset, whence);
        let got = (generic_llseek(pos, size, offset, whence), set_or_cur_llseek(pos, offset, whence), default_llseek(pos, size, offset, whence));
        crate::kassert!(got == (generic, seq, default), "llseek{args:?} = {got:?}, want {:?}", (generic, seq, default));
    }
    Ok(())
}

fn normalise_resolves_dots_and_refuses_bad_paths() -> crate::lib::ktest::KResult {
    for (path, want) in [
        ("/", ""),
        ("/bin/hello", "bin/hello"),
        ("bin//./hello/", "bin/hello"),
        ("/a/b/../c", "a/c"),
        ("/a/../../b", "b"),
        ("/a/b/c/../..", "a"),
        ("..", ""),
        ("/proc/self/../self/maps", "proc/self/maps"),
    ] {
        let got = normalise(path);
        crate::kassert!(got.as_deref() == Ok(want), "normalise({path:?}) = {got:?}, want {want:?}");
    }
    crate::kassert_eq!(normalise(""), Err(Errno::ENOENT));
    let long = "a/".repeat(PATH_MAX / 2);
    crate::kassert_eq!(normalise(&long), Err(Errno::ENAMETOOLONG));
    Ok(())
}
