//! Files: the read-only in-memory file system holding the initramfs, the
//! per-process descriptor tables, and the generated `/proc` files.

pub mod procfs;
pub mod ramfs;
