//! The `/proc` files: the same text the console commands print
//! (`meminfo`, `buddyinfo`, `pagetypeinfo`, `vmallocinfo`, `vmstat`), rendered
//! into a string when a process opens the file. `/proc/self/status` and
//! `/proc/self/maps` are rendered by the syscall layer from the caller's own
//! address space (see [`crate::entry::syscalls`]).

use alloc::string::String;
use core::fmt::{self, Write};

/// The system-wide files under `/proc` (paths without the leading `/`).
const FILES: &[&str] = &["proc/meminfo", "proc/buddyinfo", "proc/pagetypeinfo", "proc/vmallocinfo", "proc/vmstat"];
/// The per-process files under `/proc/self`.
const SELF_FILES: &[&str] = &["proc/self/status", "proc/self/maps"];

/// The writable sysctl file (Linux `/proc/sys/vm/drop_caches`, see
/// [`crate::memory::shrinker::drop_caches_sysctl`]).
pub const DROP_CACHES: &str = "proc/sys/vm/drop_caches";

/// Whether `path` (normalised, no leading `/`) names a `/proc` file.
pub fn exists(path: &str) -> bool {
    FILES.contains(&path) || SELF_FILES.contains(&path) || path == DROP_CACHES
}

/// A string that grows with fallible allocation: a write that cannot get
/// memory fails with `fmt::Error` instead of the kernel heap panicking (Linux
/// `seq_file` retries with a bigger buffer or returns ENOMEM).
#[derive(Default)]
pub struct TryString(String);

impl TryString {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Write for TryString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.try_reserve(s.len()).map_err(|_| fmt::Error)?;
        self.0.push_str(s);
        Ok(())
    }
}

/// Renders a system-wide `/proc` file (`None`: no such file, `ENOMEM`: the
/// text did not fit in the kernel heap).
pub fn generate(path: &str) -> Option<Result<String, mm::errno::Errno>> {
    let mut out = TryString::default();
    let pa = crate::memory::page_alloc::page_alloc();
    let r = match path {
        "proc/meminfo" => meminfo(&mut out),
        "proc/buddyinfo" => pa.buddyinfo(&mut out),
        "proc/pagetypeinfo" => pa.pagetypeinfo(&mut out),
        "proc/vmallocinfo" => crate::memory::vmalloc::vmallocinfo(&mut out),
        "proc/vmstat" => pa.vmstat(&mut out),
        _ => return None,
    };
    Some(r.map(|()| out.into_string()).map_err(|_| mm::errno::Errno::ENOMEM))
}

/// `/proc/meminfo`: the allocator's lines, page tables, and where the rest
/// of memory went.
pub fn meminfo(w: &mut impl Write) -> fmt::Result {
    if crate::memory::page_alloc::is_ready() {
        crate::memory::page_alloc::page_alloc().meminfo(w)?;
    }
    crate::memory::pgtable::PGTABLE_CTL.meminfo(w)?;
    let facts = crate::arch::x86_64::memmap::facts();
    let (_, boot, _) = crate::arch::x86_64::memmap::totals(&facts.regions);
    let (heap_used, heap_free) = crate::memory::heap::usage();
    let memmap_kb = crate::memory::page_alloc::metadata_frames_range().count() as u64 * mm::addr::PAGE_SIZE / 1024;
    let mut line = |name: &str, kb: u64| writeln!(w, "{:<16}{:>8} kB", name, kb);
    line("Slab:", crate::memory::slab::KMALLOC.stats().nr_slab_pages * mm::addr::PAGE_SIZE / 1024)?;
    line("StructPages:", memmap_kb)?;
    line("Bootloader:", boot / 1024)?;
    line("KernelImage:", facts.kernel_len / 1024)?;
    line("KernelStack:", facts.stack_len / 1024)?;
    line("EarlyHeapTotal:", (heap_used + heap_free) as u64 / 1024)?;
    line("EarlyHeapUsed:", heap_used as u64 / 1024)
}
