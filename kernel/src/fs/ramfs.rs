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

/// What an open file descriptor refers to.
#[derive(Debug)]
enum OpenFile {
    Console,
    Data { bytes: FileBytes, pos: usize, writable: bool },
    Dir,
    /// `/proc/sys/vm/drop_caches` opened for writing.
    DropCaches,
}

#[derive(Debug)]
enum FileBytes {
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl FileBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Static(b) => b,
            FileBytes::Owned(v) => v,
        }
    }
}

/// A process's file descriptors (Linux `files_struct`).
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
            Node::Dir => self.install(OpenFile::Dir),
            Node::File(_) if flags & O_DIRECTORY != 0 => Err(Errno::ENOTDIR),
            // Mode 0200 (sysctl permissions ignore root's DAC override): only a
            // write-only open.
            Node::File(_) if path == crate::fs::procfs::DROP_CACHES => match flags & O_ACCMODE {
                O_WRONLY => self.install(OpenFile::DropCaches),
                _ => Err(Errno::EACCES),
            },
            Node::File(_) if write || flags & O_TRUNC != 0 => Err(if is_proc { Errno::EACCES } else { Errno::EROFS }),
            Node::File(data) if !is_proc => {
                self.install(OpenFile::Data { bytes: FileBytes::Static(data), pos: 0, writable: false })
            }
            Node::File(_) => {
                let text = match path.strip_prefix("proc/self/") {
                    Some(_) => proc_self,
                    None => crate::fs::procfs::generate(&path),
                }
                .ok_or(Errno::ENOENT)??;
                self.install(OpenFile::Data { bytes: FileBytes::Owned(text.into_bytes()), pos: 0, writable: false })
            }
        }
    }

    /// Reads into `buf` from a file (not the console: see [`Self::is_console`]).
    pub fn read(&mut self, fd: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        match self.get(fd)? {
            OpenFile::Console => Err(Errno::EINVAL),
            OpenFile::Dir => Err(Errno::EISDIR),
            OpenFile::DropCaches => Err(Errno::EBADF),
            OpenFile::Data { bytes, pos, .. } => {
                let data = bytes.as_slice();
                let start = (*pos).min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                *pos = start + n;
                Ok(n)
            }
        }
    }

    /// Whether `fd` is the console (reads and writes go to the serial port).
    pub fn is_console(&mut self, fd: u64) -> Result<bool, Errno> {
        Ok(matches!(self.get(fd)?, OpenFile::Console))
    }

    /// Checks that `fd` may be written like the console (`write`, `writev`).
    pub fn check_writable(&mut self, fd: u64) -> Result<(), Errno> {
        match self.get(fd)? {
            OpenFile::Console => Ok(()),
            OpenFile::Data { writable: true, .. } => Ok(()),
            OpenFile::Dir => Err(Errno::EBADF),
            OpenFile::Data { .. } => Err(Errno::EBADF),
            // Only `write` with a whole number (see `sys_write`).
            OpenFile::DropCaches => Err(Errno::EINVAL),
        }
    }

    /// Whether `fd` is `/proc/sys/vm/drop_caches` opened for writing.
    pub fn is_drop_caches(&mut self, fd: u64) -> Result<bool, Errno> {
        Ok(matches!(self.get(fd)?, OpenFile::DropCaches))
    }

    pub fn close(&mut self, fd: u64) -> Result<(), Errno> {
        let slot = self.fds.get_mut(fd as usize).ok_or(Errno::EBADF)?;
        slot.take().map(|_| ()).ok_or(Errno::EBADF)
    }

    pub fn close_all(&mut self) {
        self.fds.clear();
    }
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(normalise_resolves_dots_and_refuses_bad_paths)];

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
